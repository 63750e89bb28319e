//! `herald-lab soak`: speakers idle with Services announced while the machine's cores are kept
//! busy, counting what a false failure detection leaves behind — suspicions, refutations,
//! deaths, ownership changes — from each speaker's `/metrics` over the whole window, and which
//! Services changed owner. The target is 0 deaths and 0 ownership changes: a busy node must
//! not look like a dead one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use herald_config::ServiceL2Status;
use kube::Api;
use kube::api::ListParams;
use serde::Serialize;

use crate::lab::{Lab, LabError};

/// What to run.
#[derive(Debug, Clone)]
pub struct Soak {
    /// How long the idle window lasts.
    pub window: Duration,
    /// LoadBalancer Services announced during the window.
    pub services: usize,
    /// Threads spinning on the host during the window (0: none).
    pub busy_threads: usize,
}

/// The counters a false detection moves, as one speaker exports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Counters {
    pub suspicions: f64,
    pub refutations: f64,
    pub deaths: f64,
    pub ownership_changes: f64,
}

impl Counters {
    /// Reads them from a speaker's Prometheus text.
    pub fn scrape(exposition: &str) -> Result<Counters, String> {
        let read =
            |name: &str| sample_sum(exposition, name).ok_or_else(|| format!("{name} is not in the speaker's /metrics"));
        Ok(Counters {
            suspicions: read("herald_membership_suspicions_total")?,
            refutations: read("herald_membership_refutations_total")?,
            deaths: read("herald_membership_confirmed_deaths_total")?,
            // No series until the first change: absent means none.
            ownership_changes: sample_sum(exposition, "herald_speaker_ownership_changes_total").unwrap_or(0.0),
        })
    }

    fn since(&self, before: &Counters) -> Counters {
        Counters {
            suspicions: self.suspicions - before.suspicions,
            refutations: self.refutations - before.refutations,
            deaths: self.deaths - before.deaths,
            ownership_changes: self.ownership_changes - before.ownership_changes,
        }
    }
}

/// The sum of every sample of metric `name` (all label sets), or `None` if it has none.
/// `name` may also be one series as exported, labels included (`name{label="value"}`).
pub fn sample_sum(exposition: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let metric = if name.contains('{') {
            series
        } else {
            series.split('{').next().unwrap_or_default()
        };
        if metric == name
            && let Ok(value) = value.parse::<f64>()
        {
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

/// The outcome of a soak.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub window_seconds: f64,
    pub services: usize,
    pub busy_threads: usize,
    /// The 1-minute load average at the end of the window.
    pub load_average: Option<f64>,
    /// Per node (node1 first), what moved during the window.
    pub per_node: BTreeMap<String, Counters>,
    /// Services whose announcing node at the end differs from the start.
    pub services_moved: Vec<String>,
    /// 0 deaths, 0 ownership changes, no Service moved.
    pub target_met: bool,
}

/// Each announced Service (by name) and the nodes announcing it.
async fn owners(lab: &Lab) -> Result<BTreeMap<String, Vec<String>>, LabError> {
    let api: Api<ServiceL2Status> = Api::namespaced(lab.client(), herald_config::deploy::NAMESPACE);
    let list = api.list(&ListParams::default()).await.map_err(|source| LabError::Api {
        what: "listing ServiceL2Statuses".into(),
        source,
    })?;
    let mut owners: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for status in list.items.into_iter().filter_map(|s| s.status) {
        owners.entry(status.service_name).or_default().push(status.node);
    }
    for nodes in owners.values_mut() {
        nodes.sort();
    }
    Ok(owners)
}

async fn counters(lab: &Lab) -> Result<Vec<Counters>, LabError> {
    lab.speaker_metrics()
        .await?
        .iter()
        .map(|text| Counters::scrape(text).map_err(LabError::Metrics))
        .collect()
}

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

const SERVICE_YAML: &str = "apiVersion: v1
kind: Service
metadata: {name: NAME, namespace: default}
spec:
  type: LoadBalancer
  selector: {app: soak}
  ports: [{name: http, port: 80, targetPort: 8080}]
";

/// Runs the soak in `lab` (3 nodes with speakers).
pub async fn run(lab: &Lab, soak: &Soak, say: &dyn Fn(&str)) -> Result<SoakReport, LabError> {
    lab.kubectl_apply(crate::story::POOL_YAML).await?;
    let labels = BTreeMap::from([("app".to_string(), "soak".to_string())]);
    lab.add_backend(1, "soak-echo", labels).await?;
    let names: Vec<String> = (0..soak.services).map(|i| format!("soak-{i}")).collect();
    for name in &names {
        lab.kubectl_apply(&SERVICE_YAML.replace("NAME", name)).await?;
    }
    // Every Service announced by exactly one node, unchanged for 5 s.
    let settle_deadline = Instant::now() + Duration::from_secs(90);
    let mut stable_since: Option<(Instant, BTreeMap<String, Vec<String>>)> = None;
    let start_owners = loop {
        let now = owners(lab).await?;
        let complete = names.iter().all(|n| now.get(n).is_some_and(|o| o.len() == 1));
        match &stable_since {
            Some((since, seen)) if complete && *seen == now && since.elapsed() >= Duration::from_secs(5) => break now,
            Some((_, seen)) if complete && *seen == now => {}
            _ => stable_since = complete.then(|| (Instant::now(), now.clone())),
        }
        if Instant::now() > settle_deadline {
            return Err(LabError::Timeout {
                what: format!("{} Services each announced by one node, stable for 5 s", soak.services),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    say(&format!(
        "{} Services announced; idle for {:.0} s with {} busy threads",
        soak.services,
        soak.window.as_secs_f64(),
        soak.busy_threads
    ));

    let before = counters(lab).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let spinners: Vec<_> = (0..soak.busy_threads)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    let started = Instant::now();
    let mut last_report = Instant::now();
    let result = async {
        while started.elapsed() < soak.window {
            tokio::time::sleep(Duration::from_secs(1).min(soak.window.saturating_sub(started.elapsed()))).await;
            if last_report.elapsed() >= Duration::from_secs(60) {
                last_report = Instant::now();
                let now = counters(lab).await?;
                let moved: f64 = now.iter().zip(&before).map(|(n, b)| n.since(b).ownership_changes).sum();
                let deaths: f64 = now.iter().zip(&before).map(|(n, b)| n.since(b).deaths).sum();
                say(&format!(
                    "{:.0} s: load {:.1}, deaths {deaths}, ownership changes {moved}",
                    started.elapsed().as_secs_f64(),
                    load_average().unwrap_or(0.0)
                ));
            }
        }
        let after = counters(lab).await?;
        let end_owners = owners(lab).await?;
        Ok::<_, LabError>((after, end_owners))
    }
    .await;
    let load = load_average();
    stop.store(true, Ordering::Relaxed);
    for spinner in spinners {
        if spinner.join().is_err() {
            tracing::warn!("a load spinner panicked");
        }
    }
    let (after, end_owners) = result?;

    let per_node: BTreeMap<String, Counters> = after
        .iter()
        .zip(&before)
        .enumerate()
        .map(|(i, (a, b))| (format!("node{}", i + 1), a.since(b)))
        .collect();
    let services_moved: Vec<String> = names
        .iter()
        .filter(|n| start_owners.get(*n) != end_owners.get(*n))
        .cloned()
        .collect();
    let target_met =
        services_moved.is_empty() && per_node.values().all(|c| c.deaths == 0.0 && c.ownership_changes == 0.0);
    Ok(SoakReport {
        window_seconds: started.elapsed().as_secs_f64(),
        services: soak.services,
        busy_threads: soak.busy_threads,
        load_average: load,
        per_node,
        services_moved,
        target_met,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_every_label_set_and_a_missing_counter_is_an_error() {
        let text = "# TYPE herald_membership_suspicions counter\nherald_membership_suspicions_total 2\nherald_membership_refutations_total 1\nherald_membership_confirmed_deaths_total 0\nherald_speaker_ownership_changes_total{direction=\"gained\"} 3\nherald_speaker_ownership_changes_total{direction=\"lost\"} 1\n";
        let c = Counters::scrape(text).unwrap();
        assert_eq!(
            c,
            Counters {
                suspicions: 2.0,
                refutations: 1.0,
                deaths: 0.0,
                ownership_changes: 4.0
            }
        );
        assert!(Counters::scrape("herald_membership_suspicions_total 2\n").is_err());
        let none = text.replace("herald_speaker_ownership_changes_total", "other");
        assert_eq!(Counters::scrape(&none).unwrap().ownership_changes, 0.0);
        assert_eq!(sample_sum("a_total 1\na_totalx 5\n", "a_total"), Some(1.0));
        assert_eq!(
            sample_sum(text, "herald_speaker_ownership_changes_total{direction=\"lost\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample_sum(text, "herald_speaker_ownership_changes_total{direction=\"x\"}"),
            None
        );
    }
}
