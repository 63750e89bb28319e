//! A picture of the shipped Grafana dashboard (`config/grafana/herald.json`) drawn from a lab's
//! real metrics, for people who want to see it before they import it: every panel's queries
//! are evaluated ([`eval`]) over scrapes of the controller and every speaker recorded while
//! the lab serves traffic and loses owners, and drawn as an SVG grid (time series as lines,
//! stats as numbers). `herald-lab dashboard` records and writes it.

pub mod eval;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::lab::{Lab, LabError};
use eval::{Scrape, Vector, evaluate, parse_exposition};

/// One panel of the dashboard.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    /// Its title.
    pub title: String,
    /// `timeseries`, `stat`, `bargauge`.
    pub kind: String,
    /// Its queries.
    pub exprs: Vec<String>,
}

/// The panels of a dashboard, in order (rows skipped).
pub fn panels(dashboard: &Value) -> Vec<Panel> {
    dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["type"] != "row")
        .map(|p| Panel {
            title: p["title"].as_str().unwrap_or_default().to_string(),
            kind: p["type"].as_str().unwrap_or("timeseries").to_string(),
            exprs: p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t["expr"].as_str().map(str::to_string))
                .collect(),
        })
        .collect()
}

/// Grafana's interval variables for scrapes every second.
fn with_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "10s")
        .replace("$__interval", "1s")
        .replace("$__range", "5m")
}

/// A series' name in a legend: its label values.
fn legend(labels: &eval::Labels) -> String {
    let parts: Vec<&str> = labels
        .iter()
        .filter(|(k, _)| k.as_str() != "__name__")
        .map(|(_, v)| v.as_str())
        .collect();
    if parts.is_empty() {
        "value".into()
    } else {
        parts.join(" ")
    }
}

/// Every panel evaluated at every scrape: panel → series → points (seconds, value).
pub type Evaluated = Vec<(Panel, Vec<(String, Vec<(f64, f64)>)>)>;

/// Evaluates every query of every panel at every scrape of `history`.
pub fn evaluate_panels(panels: &[Panel], history: &[Scrape]) -> Result<Evaluated, String> {
    let mut out = Vec::new();
    for panel in panels {
        let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for expr in &panel.exprs {
            let text = with_variables(expr);
            // A panel of several queries names each series after its metric too.
            let query = if panel.exprs.len() > 1 {
                crate::observability::metric_names(expr)
                    .ok()
                    .and_then(|names| names.into_iter().next())
                    .map(|name| format!("{} ", name.trim_start_matches("herald_")))
                    .unwrap_or_default()
            } else {
                String::new()
            };
            for (at, scrape) in history.iter().enumerate() {
                let vector: Vector =
                    evaluate(&text, history, at).map_err(|e| format!("panel {:?}: {expr}: {e}", panel.title))?;
                for (labels, value) in vector {
                    let name = format!("{query}{}", legend(&labels));
                    match series.iter_mut().find(|(n, _)| *n == name) {
                        Some((_, points)) => points.push((scrape.at, value)),
                        None => series.push((name, vec![(scrape.at, value)])),
                    }
                }
            }
        }
        out.push((panel.clone(), series));
    }
    Ok(out)
}

const COLOURS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The evaluated panels as an SVG grid, `columns` wide; `events` are marked on every time
/// series (seconds, label).
pub fn render(title: &str, evaluated: &Evaluated, duration: f64, events: &[(f64, String)], columns: usize) -> String {
    let mut svg = String::new();
    write_svg(&mut svg, title, evaluated, duration, events, columns).expect("formatting into a String cannot fail");
    svg
}

fn write_svg(
    svg: &mut String,
    title: &str,
    evaluated: &Evaluated,
    duration: f64,
    events: &[(f64, String)],
    columns: usize,
) -> std::fmt::Result {
    let (w, h, pad) = (420.0, 200.0, 10.0);
    let rows = evaluated.len().div_ceil(columns.max(1));
    let width = columns as f64 * (w + pad) + pad;
    let height = rows as f64 * (h + pad) + pad + 30.0;
    write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="#111217"/><text x="{pad}" y="22" fill="#d8d9da" font-size="15">{}</text>"##,
        escape(title)
    )?;
    for (i, (panel, series)) in evaluated.iter().enumerate() {
        let x0 = pad + (i % columns) as f64 * (w + pad);
        let y0 = 30.0 + pad + (i / columns) as f64 * (h + pad);
        write!(
            svg,
            r##"<g transform="translate({x0},{y0})"><rect width="{w}" height="{h}" fill="#181b1f" stroke="#2c3235"/><text x="8" y="16" fill="#d8d9da" font-weight="bold">{}</text>"##,
            escape(&panel.title)
        )?;
        let (px, py, pw, ph) = (40.0, 26.0, w - 50.0, h - 70.0);
        if panel.kind == "stat" || panel.kind == "bargauge" {
            for (j, (name, points)) in series.iter().take(6).enumerate() {
                let last = points.last().map(|p| p.1).unwrap_or(f64::NAN);
                write!(
                    svg,
                    r##"<text x="16" y="{}" fill="{}" font-size="18">{name}: {}</text>"##,
                    py + 28.0 + j as f64 * 24.0,
                    COLOURS[j % COLOURS.len()],
                    format_value(last)
                )?;
            }
            if series.is_empty() {
                write!(svg, r##"<text x="16" y="{}" fill="#8e8e8e">no data</text>"##, py + 28.0)?;
            }
            svg.push_str("</g>");
            continue;
        }
        let max = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|v| v.1))
            .filter(|v| v.is_finite())
            .fold(0.0_f64, f64::max);
        let top = if max > 0.0 { max * 1.1 } else { 1.0 };
        let sx = |t: f64| px + pw * (t / duration.max(1.0)).clamp(0.0, 1.0);
        let sy = |v: f64| py + ph - ph * (v / top).clamp(0.0, 1.0);
        write!(
            svg,
            r##"<line x1="{px}" y1="{}" x2="{}" y2="{}" stroke="#2c3235"/><text x="4" y="{}" fill="#8e8e8e">{}</text><text x="4" y="{}" fill="#8e8e8e">0</text>"##,
            py + ph,
            px + pw,
            py + ph,
            py + 8.0,
            format_value(top),
            py + ph
        )?;
        for (k, (t, label)) in events.iter().enumerate() {
            let x = sx(*t);
            // Events close together take turns above each other.
            let label_y = py + 8.0 + (k % 2) as f64 * 10.0;
            write!(
                svg,
                r##"<line x1="{x}" y1="{py}" x2="{x}" y2="{}" stroke="#e02f44" stroke-dasharray="3,3"/><text x="{}" y="{}" fill="#e02f44" font-size="9">{}</text>"##,
                py + ph,
                x + 2.0,
                label_y,
                escape(label),
            )?;
        }
        for (j, (name, points)) in series.iter().enumerate() {
            let colour = COLOURS[j % COLOURS.len()];
            let path: Vec<String> = points
                .iter()
                .filter(|(_, v)| v.is_finite())
                .map(|(t, v)| format!("{:.1},{:.1}", sx(*t), sy(*v)))
                .collect();
            if !path.is_empty() {
                write!(
                    svg,
                    r##"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"##,
                    path.join(" ")
                )?;
            }
            // A series seen only now and then (a split, a drop) shows as dots.
            if path.len() < 5 {
                for point in &path {
                    let (x, y) = point.split_once(',').unwrap_or(("0", "0"));
                    write!(svg, r##"<circle cx="{x}" cy="{y}" r="2.5" fill="{colour}"/>"##)?;
                }
            }
            if j < 6 {
                write!(
                    svg,
                    r##"<rect x="{}" y="{}" width="8" height="8" fill="{colour}"/><text x="{}" y="{}" fill="#c7d0d9">{}</text>"##,
                    8.0 + (j % 3) as f64 * 136.0,
                    h - 36.0 + (j / 3) as f64 * 14.0,
                    20.0 + (j % 3) as f64 * 136.0,
                    h - 28.0 + (j / 3) as f64 * 14.0,
                    escape(&name.chars().take(22).collect::<String>())
                )?;
            }
        }
        if series.is_empty() {
            write!(
                svg,
                r##"<text x="{}" y="{}" fill="#8e8e8e">no data</text>"##,
                px + 8.0,
                py + 30.0
            )?;
        }
        svg.push_str("</g>");
    }
    svg.push_str("</svg>\n");
    Ok(())
}

fn format_value(v: f64) -> String {
    if !v.is_finite() {
        "—".into()
    } else if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Scrapes the leading controller and every speaker once (`instance`: `controller`,
/// `node1`…); a component that does not answer is left out of this scrape.
pub async fn scrape(lab: &Lab, at: f64) -> Scrape {
    let mut samples = Vec::new();
    if let Ok(text) = lab.controller_metrics().await {
        samples.extend(parse_exposition(&text, "controller"));
    }
    for node in 1..=lab.node_count() {
        if let Ok(text) = lab.speaker_metrics_of(node).await {
            samples.extend(parse_exposition(&text, &format!("node{node}")));
        }
    }
    Scrape { at, samples }
}

/// Scrapes every `every` until `duration` passed, running `during` meanwhile (the faults);
/// returns the scrapes and what `during` returned.
pub async fn record<T>(
    lab: &Lab,
    duration: Duration,
    every: Duration,
    during: impl std::future::Future<Output = Result<T, LabError>>,
) -> Result<(Vec<Scrape>, T), LabError> {
    let started = Instant::now();
    let recording = async {
        let mut history = Vec::new();
        while started.elapsed() < duration {
            let tick = Instant::now();
            history.push(scrape(lab, started.elapsed().as_secs_f64()).await);
            tokio::time::sleep(every.saturating_sub(tick.elapsed())).await;
        }
        history
    };
    let (history, result) = tokio::join!(recording, during);
    Ok((history, result?))
}

/// `herald-lab dashboard`: the demo's Service under a steady client for 75 s, its owner's
/// speaker Pod force-deleted at 20 s and, once every speaker is back, the owner node's cable
/// pulled for 5 s at 45 s; every panel of `dashboard` drawn from the scrapes, written to `out`.
pub async fn snapshot(lab: &Lab, dashboard: &Value, out: &std::path::Path, say: &dyn Fn(&str)) -> Result<(), LabError> {
    use crate::story;
    story::apply_demo_objects(lab, say).await?;
    let ip = story::wait_for_ip(lab, Duration::from_secs(20)).await?;
    let client = lab.client_namespace().to_string();
    story::reach(lab, &client, &format!("http://{ip}/")).await?;
    let duration = Duration::from_secs(75);
    let probe = lab.start_probe(
        &client,
        &crate::lab::ProbeConfig {
            target: std::net::SocketAddr::new(ip, 80),
            interval: Duration::from_millis(20),
            duration,
            timeout: Duration::from_millis(300),
        },
    )?;
    say("recording the controller's and every speaker's /metrics every second for 75 s");
    let t0 = Instant::now();
    let faults = async {
        let mut events = Vec::new();
        tokio::time::sleep(Duration::from_secs(20).saturating_sub(t0.elapsed())).await;
        let owner = story::wait_for_stable_owner(lab, Duration::from_millis(800), Duration::from_secs(10)).await?;
        let node = lab.node_index(&owner)?;
        events.push((t0.elapsed().as_secs_f64(), format!("pod --force {owner}")));
        say(&format!("kubectl delete pod --force: the speaker on {owner}"));
        lab.delete_speaker_pod(node, true).await?;
        tokio::time::sleep(Duration::from_secs(45).saturating_sub(t0.elapsed())).await;
        story::wait_speakers_ready(lab).await?;
        let owner = story::wait_for_stable_owner(lab, Duration::from_millis(800), Duration::from_secs(10)).await?;
        let node = lab.node_index(&owner)?;
        events.push((t0.elapsed().as_secs_f64(), format!("cable out {owner}")));
        say(&format!("pulling {owner}'s cable for 5 s"));
        lab.set_cable(node, false).await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        lab.set_cable(node, true).await?;
        events.push((t0.elapsed().as_secs_f64(), "cable in".to_string()));
        Ok(events)
    };
    let (history, events) = record(lab, duration, Duration::from_secs(1), faults).await?;
    let summary = crate::lab::summarize(&probe.finish().await?);
    let evaluated = evaluate_panels(&panels(dashboard), &history).map_err(LabError::Metrics)?;
    let title = format!(
        "Herald dashboard (config/grafana/herald.json) drawn from a lab: {} requests, {} failed",
        summary.requests, summary.failed
    );
    let svg = render(&title, &evaluated, duration.as_secs_f64(), &events, 3);
    std::fs::write(out, svg).map_err(|source| LabError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    say(&format!("wrote {} ({} scrapes)", out.display(), history.len()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_panel_is_evaluated_and_drawn() {
        let path = crate::observability::config_dir().join("grafana/herald.json");
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let panels = panels(&dashboard);
        assert!(panels.len() >= 20, "{}", panels.len());
        let exposition = |owned: u32, replies: u32| {
            format!(
                "herald_speaker_owned_ips {owned}\nherald_layer2_responses_sent_total{{ip=\"10.0.0.1\"}} {replies}\n\
                 herald_allocator_addresses_in_use{{pool=\"lab\",family=\"ipv4\"}} 1\n\
                 herald_allocator_addresses_available{{pool=\"lab\",family=\"ipv4\"}} 39\n\
                 herald_speaker_pass_seconds_bucket{{le=\"0.01\"}} 3\nherald_speaker_pass_seconds_bucket{{le=\"+Inf\"}} {replies}\n"
            )
        };
        let history: Vec<Scrape> = (0..30)
            .map(|i| Scrape {
                at: f64::from(i),
                samples: parse_exposition(&exposition(u32::from(i < 15), 10 + i * 3), "node1"),
            })
            .collect();
        let evaluated = evaluate_panels(&panels, &history).expect("every query is in the evaluated subset");
        let owned = evaluated
            .iter()
            .find(|(p, _)| p.title == "Owned IPs per node")
            .expect("the panel");
        assert_eq!(owned.1.len(), 1, "{:?}", owned.1);
        assert_eq!(owned.1[0].1.last().map(|p| p.1), Some(0.0));
        let svg = render("t", &evaluated, 30.0, &[(15.0, "fault".into())], 3);
        assert!(svg.starts_with("<svg") && svg.contains("Owned IPs per node") && svg.contains("fault"));
        assert!(svg.matches("<polyline").count() > 3, "lines are drawn");
    }
}
