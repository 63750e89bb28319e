//! The failover timeline as an SVG picture: one mark per request (green answered, red
//! failed) over time, with the kill and the takeover marked. Pure: samples in, SVG text out.

use std::fmt::Write;

/// One request on the timeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mark {
    /// When it was sent, in ms on the timeline's clock.
    pub at_ms: f64,
    pub ok: bool,
}

/// An event drawn as a vertical line with a label.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub at_ms: f64,
    pub label: String,
    pub colour: &'static str,
}

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

/// Renders `marks` and `events` between `start_ms` and `end_ms` (ms on the same clock).
pub fn render(title: &str, marks: &[Mark], events: &[Event], start_ms: f64, end_ms: f64) -> String {
    let mut svg = String::new();
    write_svg(&mut svg, title, marks, events, start_ms, end_ms).expect("formatting into a String cannot fail");
    svg
}

fn write_svg(
    svg: &mut String,
    title: &str,
    marks: &[Mark],
    events: &[Event],
    start_ms: f64,
    end_ms: f64,
) -> std::fmt::Result {
    let span = (end_ms - start_ms).max(1.0);
    let x = |t: f64| LEFT + (t - start_ms).clamp(0.0, span) / span * (WIDTH - LEFT - RIGHT);
    let ok_y = TOP + 40.0;
    let failed_y = TOP + 110.0;
    writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    )?;
    writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#)?;
    writeln!(
        svg,
        r#"<text x="{LEFT}" y="24" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    )?;
    writeln!(
        svg,
        r##"<text x="8" y="{}" fill="#1a7f37">answered</text>"##,
        ok_y + 4.0
    )?;
    writeln!(
        svg,
        r##"<text x="8" y="{}" fill="#cf222e">failed</text>"##,
        failed_y + 4.0
    )?;
    // Time axis with a tick every second (or every 100 ms on short spans).
    let axis_y = HEIGHT - BOTTOM + 10.0;
    writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{axis_y}" x2="{}" y2="{axis_y}" stroke="#555"/>"##,
        WIDTH - RIGHT
    )?;
    let step = if span > 3000.0 { 1000.0 } else { 100.0 };
    let mut tick = (start_ms / step).ceil() * step;
    while tick <= end_ms {
        let tx = x(tick);
        writeln!(
            svg,
            r##"<line x1="{tx:.1}" y1="{axis_y}" x2="{tx:.1}" y2="{}" stroke="#555"/>"##,
            axis_y + 5.0
        )?;
        writeln!(
            svg,
            r#"<text x="{tx:.1}" y="{}" text-anchor="middle">{:.1}s</text>"#,
            axis_y + 18.0,
            (tick - start_ms) / 1000.0
        )?;
        tick += step;
    }
    for mark in marks {
        let (y, colour) = if mark.ok {
            (ok_y, "#1a7f37")
        } else {
            (failed_y, "#cf222e")
        };
        writeln!(
            svg,
            r#"<rect x="{:.1}" y="{}" width="2" height="16" fill="{colour}"/>"#,
            x(mark.at_ms) - 1.0,
            y - 8.0
        )?;
    }
    for (i, event) in events.iter().enumerate() {
        let ex = x(event.at_ms);
        writeln!(
            svg,
            r#"<line x1="{ex:.1}" y1="{TOP}" x2="{ex:.1}" y2="{axis_y}" stroke="{}" stroke-dasharray="4 3"/>"#,
            event.colour
        )?;
        writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" fill="{}">{}</text>"#,
            ex + 4.0,
            TOP + 8.0 + 14.0 * i as f64,
            event.colour,
            escape(&event.label)
        )?;
    }
    svg.push_str("</svg>\n");
    Ok(())
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_request_and_event() {
        let marks = [
            Mark { at_ms: 0.0, ok: true },
            Mark { at_ms: 10.0, ok: false },
            Mark { at_ms: 20.0, ok: true },
        ];
        let events = [Event {
            at_ms: 5.0,
            label: "SIGKILL <speaker>".into(),
            colour: "#000",
        }];
        let svg = render("Failover", &marks, &events, 0.0, 30.0);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("fill=\"#1a7f37\"/>").count(), 2, "two answered marks");
        assert_eq!(svg.matches("fill=\"#cf222e\"/>").count(), 1, "one failed mark");
        assert!(svg.contains("SIGKILL &lt;speaker&gt;"), "labels are escaped");
    }
}
