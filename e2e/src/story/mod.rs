//! The user's story, told in the lab: apply a pool, create a Service, reach it from outside,
//! fault the owner (its speaker killed or its Pod deleted, a rolling restart, its cable
//! pulled), measure the failover. [`demo`] tells it once with commentary
//! (`herald-lab demo`); [`failover_bench`] repeats one fault of the owner (`--fault`) many times and reports
//! percentiles (`herald-lab failover-bench`).
//!
//! A failover is measured at the client, on the wire: a probe in the client namespace opens a
//! new HTTP connection to the Service every 10 ms, and `tcpdump` there records the gratuitous
//! ARP of the new owner. Both use the host's clock, as does the kill.

pub mod garp;
pub mod keepalive;
pub mod timeline;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herald_config::ServiceL2Status;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::ListParams;
use serde::Serialize;
use tokio::io::AsyncBufReadExt;

use crate::lab::probe::{ProbeConfig, ProbeSample};
use crate::lab::{Lab, LabError, Signal};

/// The sample pool, advertisement and Service the story applies with kubectl.
pub const POOL_YAML: &str = include_str!("../../demo/pool.yaml");
pub const SERVICE_YAML: &str = include_str!("../../demo/service.yaml");
/// The demo's backends: a Deployment of the lab's echo image.
pub const WEB_YAML: &str = include_str!("../../demo/web.yaml");
/// Name and namespace of the demo Service.
pub const SERVICE: (&str, &str) = ("default", "web");

/// One measured failover.
#[derive(Debug, Clone, Serialize)]
pub struct Failover {
    /// What was done to the owner.
    pub fault: Fault,
    pub old_owner: String,
    pub new_owner: Option<String>,
    /// The fault (a kill, for the demo: the names stay) → the new owner's first gratuitous
    /// ARP at the client.
    pub kill_to_garp_ms: Option<f64>,
    /// The fault → the first request that succeeded after the first one that failed after it
    /// (or, if none failed, the first that succeeded after it).
    pub kill_to_traffic_ms: Option<f64>,
    /// Requests sent during the measurement and how many failed.
    pub requests: usize,
    pub failed_requests: usize,
    /// Longest stretch of failed requests, first failure to next success.
    pub longest_gap_ms: f64,
    /// When each failed request was sent, in ms from the fault.
    pub failed_at_ms: Vec<f64>,
    /// For the timeline: (ms since the kill, answered).
    #[serde(skip)]
    pub marks: Vec<(f64, bool)>,
}

/// Wall-clock time in ms, the clock `tcpdump -tt` stamps the gratuitous ARPs with.
pub fn unix_ms_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// The demo Service's first IPv4 LoadBalancer address, waiting up to `timeout`.
pub async fn wait_for_ip(lab: &Lab, timeout: Duration) -> Result<IpAddr, LabError> {
    let api: Api<Service> = Api::namespaced(lab.client(), SERVICE.0);
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(service) = api.get(SERVICE.1).await
            && let Some(ip) = herald_config::service::ingress_ips(&service)
                .into_iter()
                .find(IpAddr::is_ipv4)
        {
            return Ok(ip);
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout {
                what: format!("an external IP on Service {}/{}", SERVICE.0, SERVICE.1),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node announcing the demo Service (from its `ServiceL2Status`), optionally waiting until
/// it is not `other_than`.
pub async fn wait_for_owner(lab: &Lab, other_than: Option<&str>, timeout: Duration) -> Result<String, LabError> {
    let api: Api<ServiceL2Status> = Api::namespaced(lab.client(), herald_config::deploy::NAMESPACE);
    let deadline = Instant::now() + timeout;
    let mut last_seen = String::from("no list answered");
    loop {
        if let Ok(list) = api.list(&ListParams::default()).await {
            let owners: Vec<String> = list
                .items
                .iter()
                .filter_map(|s| s.status.as_ref())
                .filter(|s| s.service_namespace == SERVICE.0 && s.service_name == SERVICE.1)
                .map(|s| s.node.clone())
                .collect();
            if let [owner] = owners.as_slice()
                && other_than != Some(owner.as_str())
            {
                return Ok(owner.clone());
            }
            last_seen = format!("{owners:?}");
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout {
                what: format!(
                    "one node announcing {}/{} (last seen: {last_seen})",
                    SERVICE.0, SERVICE.1
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node announcing the demo Service once it has stayed the same for `quiet` (speakers
/// that just started may still be reporting their interfaces, and the owner can move once).
pub async fn wait_for_stable_owner(lab: &Lab, quiet: Duration, timeout: Duration) -> Result<String, LabError> {
    let deadline = Instant::now() + timeout;
    let mut current = wait_for_owner(lab, None, timeout).await?;
    let mut since = Instant::now();
    while since.elapsed() < quiet {
        if Instant::now() >= deadline {
            return Err(LabError::Timeout {
                what: format!("a stable owner for {}/{}", SERVICE.0, SERVICE.1),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let owner = wait_for_owner(lab, None, deadline.saturating_duration_since(Instant::now())).await?;
        if owner != current {
            current = owner;
            since = Instant::now();
        }
    }
    Ok(current)
}

/// The MAC of a node's lab interface.
pub async fn node_mac(lab: &Lab, node: usize) -> Result<String, LabError> {
    let ns = lab.node_namespace(node)?.to_string();
    let out = lab.exec_in(&ns, &["cat", "/sys/class/net/eth0/address"]).await?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The node whose MAC the client's neighbour entry for `ip` holds (the node it sends to), if
/// the entry exists and names a lab node.
pub async fn node_answering(lab: &Lab, ip: IpAddr) -> Result<Option<String>, LabError> {
    let client = lab.client_namespace().to_string();
    let out = lab
        .exec_in(&client, &["ip", "neigh", "show", &ip.to_string(), "dev", "eth0"])
        .await?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let Some(mac) = text.split_whitespace().skip_while(|w| *w != "lladdr").nth(1) else {
        return Ok(None);
    };
    for node in 1..=lab.node_count() {
        if node_mac(lab, node).await?.eq_ignore_ascii_case(mac) {
            return Ok(Some(lab.node(node)?.name.clone()));
        }
    }
    Ok(None)
}

/// What happens to the node announcing the Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// SIGKILL of its speaker's process (a crash; the kubelet restarts the container).
    Kill,
    /// SIGTERM of its speaker's process (a graceful handoff; the kubelet restarts the container).
    Term,
    /// `kubectl delete pod` of its speaker: SIGTERM and a graceful handoff; the DaemonSet
    /// makes a new Pod.
    PodDelete,
    /// `kubectl delete pod --grace-period=0 --force` of its speaker: killed at once.
    PodForceDelete,
    /// `kubectl rollout restart daemonset/herald-speaker`: every speaker replaced, one node
    /// at a time, while the client keeps probing (the worst gap is what counts).
    RolloutRestart,
    /// The node's cable pulled at the switch: nothing on it is reachable, nothing it sends
    /// arrives (power loss or a dead uplink, as its peers see it).
    NodeLoss,
    /// Its speaker frozen with SIGSTOP: connections stay open, nothing answers (a hung node
    /// as far as Herald is concerned; its eBPF programs keep forwarding).
    NodeFreeze,
}

impl Fault {
    /// The name `--fault` takes.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Term => "term",
            Fault::PodDelete => "pod-delete",
            Fault::PodForceDelete => "pod-force-delete",
            Fault::RolloutRestart => "rollout-restart",
            Fault::NodeLoss => "node-loss",
            Fault::NodeFreeze => "node-freeze",
        }
    }

    /// What the timeline calls the moment of the fault.
    pub fn describe(self, node: &str) -> String {
        match self {
            Fault::Kill => format!("SIGKILL speaker on {node}"),
            Fault::Term => format!("SIGTERM speaker on {node}"),
            Fault::PodDelete => format!("kubectl delete pod (speaker on {node})"),
            Fault::PodForceDelete => format!("kubectl delete pod --force (speaker on {node})"),
            Fault::RolloutRestart => "kubectl rollout restart daemonset/herald-speaker".into(),
            Fault::NodeLoss => format!("{node}'s cable pulled"),
            Fault::NodeFreeze => format!("speaker on {node} frozen (SIGSTOP)"),
        }
    }

    /// How long the client probes after the fault.
    fn probe_for(self) -> Duration {
        match self {
            // Three nodes, one at a time: each old speaker hands off and exits, the new one
            // starts and passes its readiness probe (every 5 s) before the next is replaced.
            Fault::RolloutRestart => Duration::from_secs(40),
            _ => Duration::from_millis(2500),
        }
    }

    async fn inject(self, lab: &Lab, node: usize) -> Result<(), LabError> {
        match self {
            Fault::Kill => lab.kill_speaker(node, Signal::Kill).await.map(drop),
            Fault::Term => lab.kill_speaker(node, Signal::Term).await.map(drop),
            Fault::PodDelete => lab.delete_speaker_pod(node, false).await.map(drop),
            Fault::PodForceDelete => lab.delete_speaker_pod(node, true).await.map(drop),
            Fault::RolloutRestart => lab
                .kubectl(&[
                    "-n",
                    herald_config::deploy::NAMESPACE,
                    "rollout",
                    "restart",
                    "daemonset/herald-speaker",
                ])
                .await
                .map(drop),
            Fault::NodeLoss => lab.set_cable(node, false).await,
            Fault::NodeFreeze => lab.kill_speaker(node, Signal::Stop).await.map(drop),
        }
    }

    /// Undoes the fault (the kubelet restarts a killed speaker, the DaemonSet replaces a
    /// deleted Pod).
    async fn heal(self, lab: &Lab, node: usize) -> Result<(), LabError> {
        match self {
            Fault::Kill | Fault::Term | Fault::PodDelete | Fault::PodForceDelete => Ok(()),
            Fault::RolloutRestart => wait_speakers_ready(lab).await,
            Fault::NodeLoss => lab.set_cable(node, true).await,
            Fault::NodeFreeze => lab.kill_speaker(node, Signal::Cont).await.map(drop),
        }
    }
}

/// The gratuitous ARPs the lab's client sees (`tcpdump` in its namespace), from
/// [`GarpCapture::start`] until [`GarpCapture::finish`].
pub struct GarpCapture {
    tcpdump: tokio::process::Child,
    seen: tokio::task::JoinHandle<Vec<garp::Gratuitous>>,
}

impl GarpCapture {
    pub fn start(lab: &Lab) -> Result<GarpCapture, LabError> {
        let mut tcpdump = lab
            .command_in(lab.client_namespace(), "tcpdump")?
            .args(["-l", "-tt", "-n", "-e", "-i", "eth0", "arp"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| LabError::Spawn {
                program: "tcpdump".into(),
                source,
            })?;
        let stdout = tcpdump.stdout.take().expect("stdout is piped");
        let seen = tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            let mut seen = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(g) = garp::parse_line(&line) {
                    seen.push(g);
                }
            }
            seen
        });
        Ok(GarpCapture { tcpdump, seen })
    }

    /// Stops `tcpdump` and returns what it saw, in order.
    pub async fn finish(mut self) -> Vec<garp::Gratuitous> {
        herald_testkit::cleanup("stopping tcpdump", self.tcpdump.start_kill());
        herald_testkit::cleanup("waiting for tcpdump", self.tcpdump.wait().await);
        self.seen.await.unwrap_or_default()
    }
}

/// Applies `fault` to the node announcing the demo Service while a probe sends a request
/// every 10 ms, measures the failover at the client, then heals the fault.
pub async fn measure_failover(lab: &Lab, ip: IpAddr, fault: Fault) -> Result<Failover, LabError> {
    let old_owner = wait_for_stable_owner(lab, Duration::from_millis(800), Duration::from_secs(15)).await?;
    let old_node = lab.node_index(&old_owner)?;
    let mut macs = BTreeMap::new();
    for node in 1..=lab.node_count() {
        macs.insert(node_mac(lab, node).await?, lab.node(node)?.name.clone());
    }
    let old_mac = node_mac(lab, old_node).await?;

    let client = lab.client_namespace().to_string();
    let capture = GarpCapture::start(lab)?;
    let probe_config = ProbeConfig {
        target: SocketAddr::new(ip, 80),
        interval: Duration::from_millis(10),
        duration: Duration::from_millis(1000) + fault.probe_for(),
        timeout: Duration::from_millis(250),
    };
    // tcpdump needs a moment to attach before the kill.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let probe = lab.start_probe(&client, &probe_config)?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let killed_at = unix_ms_now();
    fault.inject(lab, old_node).await?;
    let samples = probe.finish().await;
    fault.heal(lab, old_node).await?;
    let samples = samples?;
    let garps = capture.finish().await;

    // The first announcement after the kill from another node is the takeover; who sent it
    // is the new owner (the victim's restarted speaker may win the IP back later).
    let takeover = garps
        .iter()
        .filter(|g| g.address == ip.to_string() && g.sender_mac != old_mac)
        .map(|g| (g.at_unix_s * 1000.0 - killed_at, g.sender_mac.clone()))
        .find(|(ms, _)| *ms >= 0.0);
    let kill_to_garp_ms = takeover.as_ref().map(|(ms, _)| *ms);
    let new_owner = takeover.and_then(|(_, mac)| macs.get(&mac).cloned());
    if new_owner.is_none() {
        tracing::warn!(?macs, ?garps, "no takeover seen at the client");
    }
    Ok(Failover {
        fault,
        ..summarize(old_owner, new_owner, &samples, killed_at, kill_to_garp_ms)
    })
}

/// Failover numbers from probe samples, placed on the kill's clock (Unix ms, host clock); the
/// fault is recorded as a kill unless the caller says otherwise.
pub fn summarize(
    old_owner: String,
    new_owner: Option<String>,
    samples: &[ProbeSample],
    killed_at_unix_ms: f64,
    kill_to_garp_ms: Option<f64>,
) -> Failover {
    let mut marks: Vec<(f64, bool)> = samples
        .iter()
        .map(|s| (s.sent_unix_ms - killed_at_unix_ms, s.ok()))
        .collect();
    marks.sort_by(|a, b| a.0.total_cmp(&b.0));
    let failed_requests = marks.iter().filter(|(_, ok)| !ok).count();
    let mut longest_gap_ms: f64 = 0.0;
    let mut gap_start: Option<f64> = None;
    for &(t, ok) in &marks {
        match (ok, gap_start) {
            (false, None) => gap_start = Some(t),
            (true, Some(start)) => {
                longest_gap_ms = longest_gap_ms.max(t - start);
                gap_start = None;
            }
            _ => {}
        }
    }
    // The outage the kill caused ends with the first answer after the first failure that
    // follows it; with no failure, traffic flowed from the first answer after the kill.
    let first_failure_after_kill = marks.iter().find(|(t, ok)| *t >= 0.0 && !ok).map(|(t, _)| *t);
    let kill_to_traffic_ms = marks
        .iter()
        .find(|(t, ok)| *ok && *t >= first_failure_after_kill.unwrap_or(0.0))
        .map(|(t, _)| *t);
    Failover {
        fault: Fault::Kill,
        old_owner,
        new_owner,
        kill_to_garp_ms,
        kill_to_traffic_ms,
        requests: marks.len(),
        failed_requests,
        longest_gap_ms,
        failed_at_ms: marks
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(t, _)| (t * 10.0).round() / 10.0)
            .collect(),
        marks,
    }
}

/// Percentile (nearest rank) of `values`; `None` when empty.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let mut sorted: Vec<f64> = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

/// Writes the timeline SVG of one failover.
pub fn write_timeline(path: &Path, failover: &Failover) -> std::io::Result<()> {
    let marks: Vec<timeline::Mark> = failover
        .marks
        .iter()
        .map(|&(at_ms, ok)| timeline::Mark { at_ms, ok })
        .collect();
    let mut events = vec![timeline::Event {
        at_ms: 0.0,
        label: failover.fault.describe(&failover.old_owner),
        colour: "#000000",
    }];
    if let Some(garp) = failover.kill_to_garp_ms {
        events.push(timeline::Event {
            at_ms: garp,
            label: format!(
                "gratuitous ARP from {} (+{garp:.0} ms)",
                failover.new_owner.as_deref().unwrap_or("new owner")
            ),
            colour: "#0969da",
        });
    }
    let start = failover.marks.first().map(|m| m.0).unwrap_or(-1000.0);
    let end = failover.marks.last().map(|m| m.0).unwrap_or(2500.0);
    let title = format!(
        "Herald failover: {} requests, {} failed, longest gap {:.0} ms",
        failover.requests, failover.failed_requests, failover.longest_gap_ms
    );
    std::fs::write(path, timeline::render(&title, &marks, &events, start, end))
}

/// Puts the demo's Service and its backends in the lab, applied with kubectl as a user would:
/// the pool and advertisement, the echo Deployment (two replicas on two nodes, from
/// kube-controller-manager's ReplicaSet, run by the lab's kubelet) and the Service.
pub async fn apply_demo_objects(lab: &Lab, say: &dyn Fn(&str)) -> Result<(), LabError> {
    say("kubectl apply -f e2e/demo/pool.yaml   # an IPAddressPool on the lab's segment and an L2Advertisement");
    say(lab.kubectl_apply(POOL_YAML).await?.trim());
    say("kubectl apply -f e2e/demo/web.yaml   # the echo backends: a Deployment, two replicas");
    say(lab.kubectl_apply(WEB_YAML).await?.trim());
    lab.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await?;
    say(lab
        .kubectl(&["get", "pods", "-l", "app=web", "-o", "wide"])
        .await?
        .trim());
    say("kubectl apply -f e2e/demo/service.yaml   # type: LoadBalancer, port 80 -> 8080");
    say(lab.kubectl_apply(SERVICE_YAML).await?.trim());
    Ok(())
}

/// `herald-lab demo`: the story once, with commentary; returns the failover measured.
pub async fn demo(lab: &Lab, out_dir: &Path, say: &dyn Fn(&str)) -> Result<Failover, LabError> {
    apply_demo_objects(lab, say).await?;
    let asked = Instant::now();
    let ip = wait_for_ip(lab, Duration::from_secs(20)).await?;
    say(&format!(
        "Service default/web got {ip} in {} ms:",
        asked.elapsed().as_millis()
    ));
    say(lab.kubectl(&["get", "service", "web", "-o", "wide"]).await?.trim());

    let client = lab.client_namespace().to_string();
    let url = format!("http://{ip}/");
    let owner = wait_for_stable_owner(lab, Duration::from_millis(800), Duration::from_secs(20)).await?;
    let answer = reach(lab, &client, &url).await?;
    say(&format!("from the client namespace: curl {url} -> {}", answer.trim()));
    say("kubectl get servicel2status -A   # who announces what");
    say(lab.kubectl(&["get", "servicel2status", "-A"]).await?.trim());
    say(&format!(
        "kubectl -n herald-system delete pod --grace-period=0 --force <the speaker on {owner}>   # a crash, as Kubernetes users cause one, while the client opens a connection every 10 ms ..."
    ));
    let failover = measure_failover(lab, ip, Fault::PodForceDelete).await?;
    say(&format!(
        "new owner: {}; gratuitous ARP reached the client {} after the deletion; {} of {} requests failed (longest gap {:.0} ms); traffic flowing {} after it",
        failover.new_owner.as_deref().unwrap_or("none"),
        fmt_ms(failover.kill_to_garp_ms),
        failover.failed_requests,
        failover.requests,
        failover.longest_gap_ms,
        fmt_ms(failover.kill_to_traffic_ms),
    ));
    say(lab.kubectl(&["get", "servicel2status", "-A"]).await?.trim());
    say("kubectl get events --field-selector involvedObject.name=web   # what Herald told the user");
    say(lab
        .kubectl(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=web",
            "-o",
            "custom-columns=REASON:.reason,FROM:.reportingComponent,MESSAGE:.message",
        ])
        .await?
        .trim());

    std::fs::create_dir_all(out_dir).map_err(|source| LabError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let svg = out_dir.join("failover-timeline.svg");
    let json = out_dir.join("failover-summary.json");
    write_timeline(&svg, &failover).map_err(|source| LabError::Io {
        path: svg.clone(),
        source,
    })?;
    let summary = serde_json::to_string_pretty(&failover).unwrap_or_default();
    std::fs::write(&json, summary).map_err(|source| LabError::Io {
        path: json.clone(),
        source,
    })?;
    say(&format!("timeline: {}  summary: {}", svg.display(), json.display()));
    wait_speakers_ready(lab).await?;
    say("kubectl -n herald-system get pods -o wide   # the DaemonSet replaced the deleted speaker Pod");
    say(lab
        .kubectl(&["-n", herald_config::deploy::NAMESPACE, "get", "pods", "-o", "wide"])
        .await?
        .trim());

    // Second act: the disaster users fear. A killed speaker never stops traffic (its pinned
    // eBPF keeps forwarding on a healthy node); a lost node does, until another answers.
    // Every speaker is back and ready (above); wait for the address's usual owner.
    let owner = wait_for_stable_owner(lab, Duration::from_millis(1500), Duration::from_secs(30)).await?;
    // And a connection the client keeps open, to a pod the lost node does not run.
    let established = keepalive::KeepAlive::start_off(lab, ip, &owner).await?;
    if let Some((_, first, node)) = &established {
        say(&format!(
            "the client also keeps one connection open (curl, keep-alive, a request every 100 ms) to {} on {node}",
            first.pod
        ));
    }
    say(&format!(
        "now the node itself: pulling {owner}'s cable while the client opens a connection every 10 ms ..."
    ));
    let lost = measure_failover(lab, ip, Fault::NodeLoss).await?;
    say(&format!(
        "new owner: {}; gratuitous ARP reached the client {} after the cable was pulled; traffic flowing again {} after it; {} of {} requests failed (longest gap {:.0} ms)",
        lost.new_owner.as_deref().unwrap_or("none"),
        fmt_ms(lost.kill_to_garp_ms),
        fmt_ms(lost.kill_to_traffic_ms),
        lost.failed_requests,
        lost.requests,
        lost.longest_gap_ms,
    ));
    if let Some((connection, _, _)) = established {
        let answers = connection.stop().await;
        say(&match keepalive::broken(&answers) {
            None => format!(
                "the open connection carried on through the node loss: {} requests on one connection, none failed, longest gap {} ms",
                answers.len(),
                keepalive::longest_gap(&answers).as_millis()
            ),
            Some(why) => format!("the open connection did not survive the node loss: {why}"),
        });
    }
    let svg = out_dir.join("node-loss-timeline.svg");
    write_timeline(&svg, &lost).map_err(|source| LabError::Io {
        path: svg.clone(),
        source,
    })?;
    say(&format!("timeline of the node loss: {}", svg.display()));
    Ok(failover)
}

/// `kubectl rollout status daemonset/herald-speaker`: every speaker Pod runs and is ready.
pub async fn wait_speakers_ready(lab: &Lab) -> Result<(), LabError> {
    lab.rollout_status(herald_config::deploy::NAMESPACE, "daemonset/herald-speaker")
        .await
}

/// `curl` from the client namespace, retried for a few seconds while the first ARP and the
/// service map settle.
pub async fn reach(lab: &Lab, ns: &str, url: &str) -> Result<String, LabError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = lab.exec_in(ns, &["curl", "-s", "-m", "1", url]).await;
        match out {
            Ok(out) if out.status.success() && !out.stdout.is_empty() => {
                return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(out) => {
                return Err(LabError::Command {
                    command: format!("curl {url}"),
                    status: out.status.code(),
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
            Err(e) => return Err(e),
        }
    }
}

fn fmt_ms(ms: Option<f64>) -> String {
    ms.map(|ms| format!("{ms:.0} ms"))
        .unwrap_or_else(|| "never".to_string())
}

/// What `herald-lab failover-bench --json` writes.
#[derive(Debug, Serialize)]
pub struct BenchSummary {
    pub fault: Fault,
    pub rounds: usize,
    pub kill_to_garp_ms: Percentiles,
    pub kill_to_traffic_ms: Percentiles,
    pub failed_requests_total: usize,
    pub requests_total: usize,
    pub longest_gap_ms: f64,
    pub failovers: Vec<Failover>,
}

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
    pub samples: usize,
}

impl Percentiles {
    /// Nearest-rank p50, p99 and the maximum of `values`.
    pub fn of(values: &[f64]) -> Percentiles {
        Percentiles {
            p50: percentile(values, 50.0),
            p99: percentile(values, 99.0),
            max: values.iter().copied().reduce(f64::max),
            samples: values.len(),
        }
    }
}

/// `herald-lab failover-bench`: `rounds` faults of the current owner, each after the previous
/// victim recovered and the cluster settled.
pub async fn failover_bench(
    lab: &Lab,
    rounds: usize,
    fault: Fault,
    say: &dyn Fn(&str),
) -> Result<BenchSummary, LabError> {
    apply_demo_objects(lab, say).await?;
    let ip = wait_for_ip(lab, Duration::from_secs(20)).await?;
    let client = lab.client_namespace().to_string();
    reach(lab, &client, &format!("http://{ip}/")).await?;
    let mut failovers = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        let failover = measure_failover(lab, ip, fault).await?;
        say(&format!(
            "round {round}/{rounds}: {} -> {}: garp {} traffic {} failed {}/{}",
            failover.old_owner,
            failover.new_owner.as_deref().unwrap_or("none"),
            fmt_ms(failover.kill_to_garp_ms),
            fmt_ms(failover.kill_to_traffic_ms),
            failover.failed_requests,
            failover.requests
        ));
        // Let the kubelet restart the victim (or the DaemonSet replace it) and the cluster
        // settle before the next fault. The victim's speaker ranks highest for this IP and wins
        // it back once it has settled; wait for that, so the next round hits the real owner.
        wait_speakers_ready(lab).await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let owner = wait_for_stable_owner(lab, Duration::from_millis(1000), Duration::from_secs(20)).await?;
            if owner == failover.old_owner || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        failovers.push(failover);
    }
    let garp: Vec<f64> = failovers.iter().filter_map(|f| f.kill_to_garp_ms).collect();
    let traffic: Vec<f64> = failovers.iter().filter_map(|f| f.kill_to_traffic_ms).collect();
    Ok(BenchSummary {
        fault,
        rounds,
        kill_to_garp_ms: Percentiles::of(&garp),
        kill_to_traffic_ms: Percentiles::of(&traffic),
        failed_requests_total: failovers.iter().map(|f| f.failed_requests).sum(),
        requests_total: failovers.iter().map(|f| f.requests).sum(),
        longest_gap_ms: failovers.iter().map(|f| f.longest_gap_ms).fold(0.0, f64::max),
        failovers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample sent `sent_ms` after the probe started at Unix ms 1,000,000.
    fn sample(sent_ms: f64, ok: bool) -> ProbeSample {
        ProbeSample {
            sent_ms,
            sent_unix_ms: 1_000_000.0 + sent_ms,
            latency_ms: ok.then_some(1.0),
            backend: ok.then(|| "web-1".to_string()),
            error: (!ok).then(|| "timeout".to_string()),
        }
    }

    #[test]
    fn a_gap_is_measured_from_first_failure_to_next_success() {
        // Probe started 1000 ms before the kill; requests every 10 ms fail from +20 to +290.
        let samples: Vec<ProbeSample> = (0..200)
            .map(|i| {
                let t = i as f64 * 10.0;
                sample(t, !(1020.0..1300.0).contains(&t))
            })
            .collect();
        let f = summarize("node1".into(), Some("node2".into()), &samples, 1_001_000.0, Some(250.0));
        assert_eq!(f.failed_requests, 28);
        assert_eq!(f.longest_gap_ms, 280.0);
        assert_eq!(f.kill_to_traffic_ms, Some(300.0));
        assert_eq!(f.kill_to_garp_ms, Some(250.0));
    }

    #[test]
    fn no_failure_means_traffic_right_after_the_kill() {
        let samples: Vec<ProbeSample> = (0..100).map(|i| sample(i as f64 * 10.0, true)).collect();
        let f = summarize("a".into(), None, &samples, 1_000_500.0, None);
        assert_eq!((f.failed_requests, f.longest_gap_ms), (0, 0.0));
        assert_eq!(f.kill_to_traffic_ms, Some(0.0));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(10.0));
        assert_eq!(percentile(&values, 99.0), Some(20.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
