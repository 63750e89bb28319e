//! `herald-lab bench-allocation`: how fast herald-controller gives addresses to many Services
//! created at once on the real control plane, as a CI system would create them.
//!
//! A lab with one node and no speakers by default (allocation only) and one big pool; with
//! `--speaker-idle-seconds`, three nodes with speakers, whose idle CPU, single-change latency
//! and (with `--endpoints`) the whole announce-and-program path are measured too; `clients`
//! kube-rs clients create `services` LoadBalancer Services concurrently (without node ports,
//! so Kubernetes' 2,768-port range is no limit); a watch notes when each Service's address
//! appears. Reported: create rate, latency per Service (create answered → address seen),
//! time from the last create to the last address, the controller's CPU time (from
//! `/proc/<pid>/stat`) and its API requests per Service (from kube-apiserver's audit log).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::watcher;
use serde_json::json;

use crate::lab::{Lab, LabError};
use crate::story::Percentiles;

/// The benchmark's shape.
#[derive(Debug, Clone)]
pub struct AllocationBench {
    /// Services to create.
    pub services: usize,
    /// Concurrent creating clients.
    pub clients: usize,
    /// After the addresses: how long to measure the idle speakers' CPU (zero: the lab runs
    /// no speakers).
    pub speaker_idle: Duration,
    /// With speakers: Services changed one at a time after the idle measurement, to measure
    /// how long a single change takes to be applied at this size.
    pub single_changes: usize,
    /// With speakers: every Service selects one echo backend (in the lab's backend namespace),
    /// so kube-controller-manager gives each an EndpointSlice and the speakers elect owners,
    /// announce, write ServiceL2Status and program the eBPF maps for all of them.
    pub endpoints: bool,
}

/// What one run measured.
#[derive(Debug, serde::Serialize)]
pub struct AllocationReport {
    /// Services created.
    pub services: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Wall time of all creates, seconds.
    pub create_seconds: f64,
    /// Creates per second.
    pub creates_per_second: f64,
    /// Create answered → address seen in a watch, milliseconds.
    pub latency_ms: Percentiles,
    /// Last create answered → last address seen, seconds.
    pub last_create_to_all_allocated_seconds: f64,
    /// herald-controller's CPU time during the run, seconds (user + system).
    pub controller_cpu_seconds: f64,
    /// herald-controller's API requests during the run, per Service.
    pub controller_requests_per_service: f64,
    /// herald-controller's API requests during the run by verb and resource.
    pub controller_requests: BTreeMap<String, usize>,
    /// Addresses handed out more than once (must be 0).
    pub duplicate_addresses: usize,
    /// Last address seen → the speakers quiet (no watched change applied for
    /// [`SPEAKERS_QUIET`]), seconds: kube-controller-manager writes EndpointSlices well after
    /// the Services (its API client is rate-limited), and the speakers take each one in.
    pub speaker_settle_seconds: f64,
    /// CPU of each idle speaker while nothing changes, percent of one core (empty without speakers).
    pub speaker_idle_cpu_percent: Vec<f64>,
    /// Per speaker, over the single changes: watched change arrived → pass applied
    /// (`herald_speaker_change_apply_seconds`), in milliseconds.
    pub speaker_change_apply_ms: Vec<HistogramDelta>,
    /// Per speaker, the passes over the same window (`herald_speaker_pass_seconds`).
    pub speaker_pass_ms: Vec<HistogramDelta>,
}

/// How long the speakers must apply no watched change before they count as idle.
pub const SPEAKERS_QUIET: Duration = Duration::from_secs(10);
/// At most this long waiting for them (10,000 EndpointSlices take kube-controller-manager
/// several minutes).
const SPEAKERS_QUIET_LIMIT: Duration = Duration::from_secs(30 * 60);

/// Waits until, for [`SPEAKERS_QUIET`], no speaker applied a watched change (its
/// `herald_speaker_change_apply_seconds` count stayed) and none wrote to the API server (the
/// audit log): each writes a ServiceL2Status per Service it announces, long after the Services
/// exist when there are thousands.
async fn wait_until_speakers_quiet(lab: &Lab) -> Result<(), LabError> {
    let started = Instant::now();
    let audit_path = lab.log_path("audit");
    let mut audit_offset = std::fs::metadata(&audit_path).map(|m| m.len()).unwrap_or(0);
    let (mut last, mut since) = (Vec::new(), Instant::now());
    while started.elapsed() < SPEAKERS_QUIET_LIMIT {
        let counts: Vec<u64> = lab
            .speaker_metrics()
            .await?
            .iter()
            .map(|text| scrape_histogram(text, "herald_speaker_change_apply_seconds").count)
            .collect();
        // A rotated log starts again from nothing.
        if std::fs::metadata(&audit_path).map_or(0, |m| m.len()) < audit_offset {
            audit_offset = 0;
        }
        let fresh = read_from(&audit_path, audit_offset);
        // Only whole lines: the last may still be being written.
        let complete = fresh.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        audit_offset += complete as u64;
        let wrote = speaker_writes(&String::from_utf8_lossy(&fresh[..complete])) > 0;
        if counts != last || wrote {
            (last, since) = (counts, Instant::now());
        } else if since.elapsed() >= SPEAKERS_QUIET {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(LabError::Timeout {
        what: format!(
            "the speakers to apply no change for {} s (they still did after {} s)",
            SPEAKERS_QUIET.as_secs(),
            SPEAKERS_QUIET_LIMIT.as_secs()
        ),
    })
}

/// What a Prometheus histogram recorded between two scrapes: count, mean, and the bucket
/// bounds that hold the median and the 99th percentile (a histogram knows no more).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HistogramDelta {
    pub count: u64,
    pub mean_ms: Option<f64>,
    /// Upper bound of the bucket holding the median, ms (`None`: above the last bound).
    pub p50_at_most_ms: Option<f64>,
    pub p99_at_most_ms: Option<f64>,
}

/// A histogram as scraped: cumulative counts by upper bound (seconds), sum and count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scraped {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

/// Reads histogram `name` from Prometheus text exposition.
pub fn scrape_histogram(text: &str, name: &str) -> Scraped {
    let mut scraped = Scraped::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if let Some(labels) = series.strip_prefix(&format!("{name}_bucket{{")) {
            let bound = labels
                .split(',')
                .find_map(|l| l.strip_prefix("le=\""))
                .and_then(|b| b.trim_end_matches('}').trim_end_matches('"').parse::<f64>().ok());
            if let (Some(bound), Ok(count)) = (bound, value.parse::<u64>()) {
                scraped.buckets.push((bound, count));
            }
        } else if series == format!("{name}_sum") {
            scraped.sum = value.parse().unwrap_or_default();
        } else if series == format!("{name}_count") {
            scraped.count = value.parse().unwrap_or_default();
        }
    }
    scraped
}

impl Scraped {
    /// What was recorded after `before`.
    pub fn since(&self, before: &Scraped) -> HistogramDelta {
        let count = self.count.saturating_sub(before.count);
        let cumulative: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .map(|(bound, n)| {
                let earlier = before.buckets.iter().find(|(b, _)| b == bound).map_or(0, |(_, n)| *n);
                (*bound, n.saturating_sub(earlier))
            })
            .collect();
        // The bound of the first bucket holding at least `rank` observations.
        let at_most = |quantile: f64| -> Option<f64> {
            if count == 0 {
                return None;
            }
            let rank = ((quantile * count as f64).ceil() as u64).max(1);
            cumulative
                .iter()
                .find(|(_, n)| *n >= rank)
                .map(|(bound, _)| bound * 1e3)
                .filter(|b| b.is_finite())
        };
        HistogramDelta {
            count,
            mean_ms: (count > 0).then(|| (self.sum - before.sum) / count as f64 * 1e3),
            p50_at_most_ms: at_most(0.5),
            p99_at_most_ms: at_most(0.99),
        }
    }
}

const NAMESPACE: &str = "bench";
const ADVERTISEMENT: &str = "apiVersion: herald.io/v1beta1
kind: L2Advertisement
metadata: {name: bench, namespace: herald-system}
spec: {}
";
const POOL: &str = "apiVersion: herald.io/v1beta1
kind: IPAddressPool
metadata: {name: bench, namespace: herald-system}
spec:
  addresses: [10.100.0.0/16]
";

/// CPU time (user + system) of process `pid` so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    cpu_seconds_in(&stat).unwrap_or_else(|| panic!("/proc/{pid}/stat has no CPU times: {stat:?}"))
}

/// CPU time in a `/proc/<pid>/stat` line: fields 14 and 15, counted after the parenthesised
/// command name (which may itself hold spaces and parentheses).
fn cpu_seconds_in(stat: &str) -> Option<f64> {
    let (_, after) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    // Linux reports in USER_HZ, 100 on every architecture Herald runs on.
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// herald-controller's requests in the audit log, by "verb resource".
fn controller_requests(audit: &str) -> BTreeMap<String, usize> {
    requests_of(audit, "system:serviceaccount:herald-system:herald-controller")
}

/// What was appended to `path` after `offset` bytes (nothing if it cannot be read).
fn read_from(path: &std::path::Path, offset: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut fresh = Vec::new();
    if let Ok(mut file) = std::fs::File::open(path)
        && file.seek(SeekFrom::Start(offset)).is_ok()
    {
        // A short or failed read keeps what it read and leaves the rest for the next call.
        file.read_to_end(&mut fresh).ok();
    }
    fresh
}

/// The speakers' writes in an audit log excerpt (their ServiceL2Status objects and Events).
fn speaker_writes(audit: &str) -> usize {
    requests_of(audit, "system:serviceaccount:herald-system:herald-speaker")
        .iter()
        .filter(|(request, _)| {
            ["create ", "update ", "patch ", "delete "]
                .iter()
                .any(|verb| request.starts_with(verb))
        })
        .map(|(_, n)| n)
        .sum()
}

/// The requests `user` made, by verb and resource, in an audit log excerpt.
fn requests_of(audit: &str, user: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in audit.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if event["stage"] != "ResponseComplete" || event["user"]["username"] != user {
            continue;
        }
        let object = &event["objectRef"];
        let mut resource = object["resource"].as_str().unwrap_or("-").to_string();
        if let Some(sub) = object["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        *counts
            .entry(format!("{} {resource}", event["verb"].as_str().unwrap_or("?")))
            .or_insert(0) += 1;
    }
    counts
}

fn service(name: &str, namespace: &str, selector: Option<&str>) -> Service {
    let mut spec = json!({
        "type": "LoadBalancer",
        "allocateLoadBalancerNodePorts": false,
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
    });
    if let Some(app) = selector {
        spec["selector"] = json!({"app": app});
    }
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }))
    .expect("a Service literal")
}

/// When each Service (by name) was first seen with addresses, and those addresses.
type FirstAddresses = HashMap<String, (Instant, Vec<String>)>;

/// Runs the benchmark in `lab` (which runs herald-controller).
pub async fn allocation(lab: &Lab, bench: &AllocationBench, say: &dyn Fn(&str)) -> Result<AllocationReport, LabError> {
    let pid = lab.controller_pid().await.ok_or(LabError::NotRunning {
        process: "herald-controller".into(),
    })?;
    let (namespace, selector) = if bench.endpoints {
        lab.kubectl_apply(ADVERTISEMENT).await?;
        let labels = BTreeMap::from([("app".to_string(), "bench".to_string())]);
        lab.add_backend(1, "bench-echo", labels).await?;
        (crate::lab::objects::BACKEND_NAMESPACE, Some("bench"))
    } else {
        lab.kubectl(&["create", "namespace", NAMESPACE]).await?;
        (NAMESPACE, None)
    };
    lab.kubectl_apply(POOL).await?;
    let audit_path = lab.log_path("audit");
    let audit_offset = std::fs::metadata(&audit_path).map(|m| m.len()).unwrap_or(0);

    // Watch first, so no address is missed.
    let api: Api<Service> = Api::namespaced(lab.client(), namespace);
    let seen: Arc<std::sync::Mutex<FirstAddresses>> = Arc::default();
    let watch = {
        let seen = seen.clone();
        let stream = watcher(api.clone(), watcher::Config::default());
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let services: Vec<Service> = match event {
                    Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => vec![s],
                    _ => continue,
                };
                for svc in services {
                    let ips: Vec<String> = herald_config::service::ingress_ips(&svc)
                        .iter()
                        .map(ToString::to_string)
                        .collect();
                    if !ips.is_empty() {
                        let name = svc.metadata.name.clone().unwrap_or_default();
                        seen.lock()
                            .expect("not poisoned")
                            .entry(name)
                            .or_insert((Instant::now(), ips));
                    }
                }
            }
        })
    };
    let cpu_before = cpu_seconds(pid);
    say(&format!(
        "creating {} Services with {} clients",
        bench.services, bench.clients
    ));
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut creators = Vec::new();
    for _ in 0..bench.clients.max(1) {
        let (api, next, total) = (api.clone(), next.clone(), bench.services);
        creators.push(tokio::spawn(async move {
            let mut answered = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, kube::Error>(answered);
                }
                let name = format!("svc-{i:05}");
                api.create(&PostParams::default(), &service(&name, namespace, selector))
                    .await?;
                answered.push((name, Instant::now()));
            }
        }));
    }
    let mut created: HashMap<String, Instant> = HashMap::new();
    for creator in creators {
        let answered = creator
            .await
            .map_err(|e| LabError::Timeout {
                what: format!("a creating client ({e})"),
            })?
            .map_err(|source| LabError::Api {
                what: "creating Services".into(),
                source,
            })?;
        created.extend(answered);
    }
    let create_seconds = started.elapsed().as_secs_f64();
    let last_create = created.values().max().copied().unwrap_or(started);
    say(&format!("created in {create_seconds:.1} s; waiting for every address"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.lock().expect("not poisoned").len() < bench.services {
        if Instant::now() > deadline {
            watch.abort();
            return Err(LabError::Timeout {
                what: format!(
                    "addresses for {} Services ({} seen)",
                    bench.services,
                    seen.lock().expect("not poisoned").len()
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watch.abort();
    let cpu = cpu_seconds(pid) - cpu_before;
    let seen = seen.lock().expect("not poisoned").clone();
    let last_seen = seen.values().map(|(t, _)| *t).max().unwrap_or(last_create);
    let latencies: Vec<f64> = created
        .iter()
        .filter_map(|(name, answered)| {
            let (at, _) = seen.get(name)?;
            // An address seen before the create's answer arrived counts as 0.
            Some(at.saturating_duration_since(*answered).as_secs_f64() * 1e3)
        })
        .collect();
    let mut addresses = HashSet::new();
    let duplicate_addresses = seen
        .values()
        .flat_map(|(_, ips)| ips.iter())
        .filter(|ip| !addresses.insert((*ip).clone()))
        .count();
    // Let the audit log's writer catch up before reading it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fresh = read_from(&audit_path, audit_offset);
    let fresh = String::from_utf8_lossy(&fresh);
    let requests = controller_requests(&fresh);
    let total: usize = requests.values().sum();
    let mut speaker_settle_seconds = 0.0;
    let speaker_idle_cpu_percent = if bench.speaker_idle.is_zero() {
        Vec::new()
    } else {
        // Let the speakers take in every Service and EndpointSlice first, then measure them
        // doing nothing.
        say(&format!(
            "waiting until the speakers apply no change for {} s, then measuring them idle",
            SPEAKERS_QUIET.as_secs()
        ));
        let settle_started = Instant::now();
        wait_until_speakers_quiet(lab).await?;
        speaker_settle_seconds = settle_started.elapsed().as_secs_f64();
        say(&format!("quiet after {speaker_settle_seconds:.0} s; measuring idle"));
        let pids: Vec<u32> = (1..=lab.node_count())
            .filter_map(|n| lab.speaker_pid(n).ok().flatten())
            .collect();
        let before: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p)).collect();
        tokio::time::sleep(bench.speaker_idle).await;
        pids.iter()
            .zip(before)
            .map(|(pid, b)| (cpu_seconds(*pid) - b) / bench.speaker_idle.as_secs_f64() * 100.0)
            .collect()
    };
    let (mut speaker_change_apply_ms, mut speaker_pass_ms) = (Vec::new(), Vec::new());
    if !bench.speaker_idle.is_zero() && bench.single_changes > 0 {
        say(&format!(
            "changing {} Services one at a time (port 80 → 81), 1 s apart",
            bench.single_changes
        ));
        let before = lab.speaker_metrics().await?;
        for k in 0..bench.single_changes {
            let name = format!("svc-{:05}", k * bench.services / bench.single_changes);
            let patch =
                json!({"spec": {"ports": [{"name": "http", "port": 81, "protocol": "TCP", "targetPort": 8080}]}});
            api.patch(
                &name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .map_err(|source| LabError::Api {
                what: format!("changing Service {name}"),
                source,
            })?;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let after = lab.speaker_metrics().await?;
        for (before, after) in before.iter().zip(&after) {
            for (name, out) in [
                ("herald_speaker_change_apply_seconds", &mut speaker_change_apply_ms),
                ("herald_speaker_pass_seconds", &mut speaker_pass_ms),
            ] {
                out.push(scrape_histogram(after, name).since(&scrape_histogram(before, name)));
            }
        }
    }
    Ok(AllocationReport {
        services: bench.services,
        clients: bench.clients,
        create_seconds,
        creates_per_second: bench.services as f64 / create_seconds.max(1e-9),
        latency_ms: Percentiles::of(&latencies),
        last_create_to_all_allocated_seconds: last_seen.saturating_duration_since(last_create).as_secs_f64(),
        controller_cpu_seconds: cpu,
        controller_requests_per_service: total as f64 / bench.services.max(1) as f64,
        controller_requests: requests,
        duplicate_addresses,
        speaker_settle_seconds,
        speaker_idle_cpu_percent,
        speaker_change_apply_ms,
        speaker_pass_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_deltas_give_count_mean_and_bucket_bounds() {
        let text = |b: [u64; 4], sum: f64| {
            format!(
                "# TYPE herald_speaker_pass_seconds histogram\n\
                 herald_speaker_pass_seconds_sum {sum}\n\
                 herald_speaker_pass_seconds_count {}\n\
                 herald_speaker_pass_seconds_bucket{{le=\"0.01\"}} {}\n\
                 herald_speaker_pass_seconds_bucket{{le=\"0.05\"}} {}\n\
                 herald_speaker_pass_seconds_bucket{{le=\"0.1\"}} {}\n\
                 herald_speaker_pass_seconds_bucket{{le=\"+Inf\"}} {}\n\
                 herald_speaker_change_apply_seconds_count 99\n",
                b[3], b[0], b[1], b[2], b[3]
            )
        };
        let name = "herald_speaker_pass_seconds";
        let before = scrape_histogram(&text([5, 5, 5, 5], 0.5), name);
        assert_eq!(before.count, 5);
        assert_eq!(before.buckets.len(), 4);
        // 100 more: 60 under 10 ms, 39 more under 50 ms, 1 above 100 ms.
        let after = scrape_histogram(&text([65, 104, 104, 105], 2.5), name);
        let delta = after.since(&before);
        assert_eq!(delta.count, 100);
        assert!((delta.mean_ms.unwrap() - 20.0).abs() < 1e-9);
        assert_eq!(delta.p50_at_most_ms, Some(10.0));
        assert_eq!(delta.p99_at_most_ms, Some(50.0));
        // The slowest one is above every finite bound: the 100th percentile is unknown.
        assert_eq!(after.since(&after).count, 0);
        assert_eq!(after.since(&after).p50_at_most_ms, None);
    }

    #[test]
    fn cpu_time_is_read_after_the_command_name() {
        // A command name with spaces and parentheses must not shift the fields.
        let stat = "1234 (herald (x) y) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0";
        assert_eq!(cpu_seconds_in(stat), Some(3.0));
        assert_eq!(cpu_seconds_in("1234 (short) S 1 2"), None, "too few fields");
        assert_eq!(cpu_seconds_in("no parenthesis"), None);
        // The kernel's own format parses (this process's times may still be 0 ticks).
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(cpu_seconds_in(&own).is_some(), "{own}");
    }

    #[test]
    fn requests_are_counted_for_the_controller_only() {
        let audit = r#"{"stage":"ResponseComplete","verb":"patch","user":{"username":"system:serviceaccount:herald-system:herald-controller"},"objectRef":{"resource":"services","subresource":"status"}}
{"stage":"ResponseComplete","verb":"create","user":{"username":"system:serviceaccount:herald-system:herald-controller"},"objectRef":{"resource":"events","apiGroup":"events.k8s.io"}}
{"stage":"ResponseComplete","verb":"list","user":{"username":"system:serviceaccount:herald-system:herald-speaker"},"objectRef":{"resource":"services"}}
{"stage":"ResponseStarted","verb":"watch","user":{"username":"system:serviceaccount:herald-system:herald-controller"},"objectRef":{"resource":"services"}}"#;
        let counts = controller_requests(audit);
        assert_eq!(
            counts,
            BTreeMap::from([
                ("create events".to_string(), 1),
                ("patch services/status".to_string(), 1)
            ])
        );
    }

    #[test]
    fn only_the_speakers_writes_keep_them_from_being_quiet() {
        let line = |verb: &str, user: &str| {
            format!(
                r#"{{"stage":"ResponseComplete","verb":"{verb}","user":{{"username":"system:serviceaccount:herald-system:{user}"}},"objectRef":{{"resource":"servicel2statuses"}}}}"#
            )
        };
        let reads = [
            line("list", "herald-speaker"),
            line("watch", "herald-speaker"),
            line("patch", "herald-controller"),
        ];
        assert_eq!(speaker_writes(&reads.join("\n")), 0);
        let writes = [
            line("create", "herald-speaker"),
            line("patch", "herald-speaker"),
            line("delete", "herald-speaker"),
        ];
        assert_eq!(speaker_writes(&writes.join("\n")), 3);
    }
}
