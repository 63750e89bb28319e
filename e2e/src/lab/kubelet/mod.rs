//! The lab's kubelet: what a kubelet does for each lab node, except that the containers are
//! processes of this machine (as kwok does for simulated nodes, but the Pods really run).
//!
//! - [`lease`]: each Node's Lease in `kube-node-lease`, renewed as a kubelet does;
//! - [`Kubelet`]: watches every Pod bound to a lab node (by kube-scheduler, a DaemonSet or
//!   `spec.nodeName`) and runs it ([`worker`]): a sandbox (the node's network namespace for
//!   `hostNetwork`, otherwise a namespace of its own behind the node with an address from
//!   the node's pod CIDR), volumes (the projected ServiceAccount token from the TokenRequest
//!   API, refreshed before it expires; ConfigMaps, Secrets, downward API, `hostPath`,
//!   `emptyDir`), the container's command with its resolved environment, user and exactly its
//!   capabilities ([`pod_spec`]), readiness and liveness probes, restarts with back-off, and
//!   the Pod's status ([`status`]); on deletion SIGTERM, the grace period, SIGKILL, then it
//!   finishes the deletion.
//!
//! Containers run through `herald-lab container` inside `ip netns exec` (which gives every
//! process a private mount namespace): it bind-mounts the volumes, makes `/` read-only when
//! asked, and execs the program through `setpriv` with the Pod's user and capabilities.

pub mod lease;
pub mod pod_spec;
pub mod status;
mod worker;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::watch;

use super::LabError;
use super::plan::LabPlan;
use super::supervisor::{Signal, send_signal};
pub use lease::heartbeat;
use pod_spec::Images;

/// How the lab's kubelet runs Pods.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// The lab's nodes and pod addresses.
    pub plan: LabPlan,
    /// The lab's state directory: logs, pid files, Pod volumes, node-private `hostPath`s, and
    /// the bpf filesystem that `hostPath: /sys/fs/bpf` is.
    pub state: super::StateDir,
    /// The images the lab can run.
    pub images: Images,
    /// `herald-lab` itself (`herald-lab container` starts each container).
    pub lab_binary: PathBuf,
    /// Where Pods reach the API server (`KUBERNETES_SERVICE_HOST`/`_PORT`): the lab has no
    /// kube-proxy, so this is the API relay the `kubernetes` Service would lead to.
    pub api_host: IpAddr,
    /// Its port.
    pub api_port: u16,
    /// First restart back-off (the kubelet's is 10 s).
    pub restart_delay: Duration,
    /// Back-off limit (the kubelet's is 5 min).
    pub max_backoff: Duration,
}

/// One Pod the kubelet runs, as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// Node name.
    pub node: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Its network namespace (the node's for `hostNetwork`).
    pub netns: String,
    /// Its addresses, IPv4 first (empty until the sandbox is up).
    pub ips: Vec<IpAddr>,
    /// The container's process, while it runs.
    pub pid: Option<u32>,
    /// Container restarts.
    pub restarts: i32,
    /// Ready (probe passed).
    pub ready: bool,
    /// Being deleted.
    pub terminating: bool,
    /// The container's log file.
    pub log: PathBuf,
}

struct Entry {
    info: PodInfo,
    /// The Pod as last seen; None once it is gone from the API.
    updates: watch::Sender<Option<Pod>>,
    task: tokio::task::JoinHandle<()>,
}

/// What workers share with the kubelet.
struct Shared {
    config: KubeletConfig,
    client: kube::Client,
    pods: Mutex<BTreeMap<String, Entry>>,
    /// Pod slots taken per node (pod addresses are `.10 + slot`).
    slots: Mutex<BTreeMap<usize, BTreeSet<usize>>>,
    /// Bumped on every change of any PodInfo, for waiters.
    changes: watch::Sender<u64>,
    /// Set when the nodes shut down: every container gets this grace period.
    shutdown: watch::Sender<Option<Duration>>,
}

impl Shared {
    fn update(&self, uid: &str, change: impl FnOnce(&mut PodInfo)) {
        if let Some(entry) = self.pods.lock().expect("kubelet registry").get_mut(uid) {
            change(&mut entry.info);
        }
        self.changes.send_modify(|n| *n += 1);
    }

    fn take_slot(&self, node: usize) -> Option<usize> {
        let mut slots = self.slots.lock().expect("kubelet slots");
        let taken = slots.entry(node).or_default();
        let slot = (1..=200).find(|s| !taken.contains(s))?;
        taken.insert(slot);
        Some(slot)
    }

    fn release_slot(&self, node: usize, slot: usize) {
        if let Some(taken) = self.slots.lock().expect("kubelet slots").get_mut(&node) {
            taken.remove(&slot);
        }
    }

    fn finished(&self, uid: &str) {
        self.pods.lock().expect("kubelet registry").remove(uid);
        self.changes.send_modify(|n| *n += 1);
    }
}

/// The kubelet of every lab node. Dropping it kills every container at once.
pub struct Kubelet {
    shared: Arc<Shared>,
    watch: tokio::task::JoinHandle<()>,
}

impl Kubelet {
    /// Starts watching Pods bound to the lab's nodes.
    pub fn start(client: kube::Client, config: KubeletConfig) -> Kubelet {
        let shared = Arc::new(Shared {
            config,
            client,
            pods: Mutex::new(BTreeMap::new()),
            slots: Mutex::new(BTreeMap::new()),
            changes: watch::channel(0).0,
            shutdown: watch::channel(None).0,
        });
        let watch = tokio::spawn(watch_pods(shared.clone()));
        Kubelet { shared, watch }
    }

    /// Every Pod it runs now.
    pub fn pods(&self) -> Vec<PodInfo> {
        self.shared
            .pods
            .lock()
            .expect("kubelet registry")
            .values()
            .map(|e| e.info.clone())
            .collect()
    }

    /// The Pod `namespace/name`, if this kubelet runs it.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<PodInfo> {
        self.pods()
            .into_iter()
            .find(|p| p.namespace == namespace && p.name == name && !p.terminating)
    }

    /// Waits (at most `timeout`) until `check` finds something in the Pods it runs.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&[PodInfo]) -> Option<T>,
    ) -> Result<T, LabError> {
        let deadline = Instant::now() + timeout;
        let mut changes = self.shared.changes.subscribe();
        loop {
            changes.borrow_and_update();
            if let Some(found) = check(&self.pods()) {
                return Ok(found);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, changes.changed()).await.is_err() {
                return Err(LabError::Timeout { what: what.to_string() });
            }
        }
    }

    /// Sends `signal` to the container of `namespace/name`; returns the pid signalled. A
    /// container that exits is restarted as its Pod's `restartPolicy` says.
    pub async fn signal(&self, namespace: &str, name: &str, signal: Signal) -> Result<u32, LabError> {
        let pid = self
            .pod(namespace, name)
            .and_then(|p| p.pid)
            .ok_or_else(|| LabError::NotRunning {
                process: format!("pod {namespace}/{name}"),
            })?;
        send_signal(pid, signal).await?;
        Ok(pid)
    }

    /// Shuts the nodes down: every container gets SIGTERM, then SIGKILL after `grace`, and its
    /// worker ends without restarting it or touching its Pod in the API (the lab is going away).
    pub async fn shutdown(&self, grace: Duration) {
        self.watch.abort();
        self.shared.shutdown.send_replace(Some(grace));
        if let Err(error) = self
            .wait_for("every container to stop", grace + Duration::from_secs(5), |pods| {
                pods.is_empty().then_some(())
            })
            .await
        {
            tracing::warn!(%error, "shutting the lab's kubelet down; killing what is left");
        }
        self.kill_now();
    }

    /// SIGKILLs every container and ends every worker (for `Drop` paths).
    pub fn kill_now(&self) {
        self.watch.abort();
        let mut pods = self.shared.pods.lock().expect("kubelet registry");
        for entry in pods.values() {
            entry.task.abort();
            if let Some(pid) = entry.info.pid {
                super::supervisor::send_signal_blocking(pid, Signal::Kill);
            }
        }
        pods.clear();
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// Follows every Pod and hands those bound to a lab node to their workers. After a
/// re-list (the API server restarted), Pods that vanished meanwhile count as deleted.
async fn watch_pods(shared: Arc<Shared>) {
    let nodes: BTreeMap<String, usize> = shared
        .config
        .plan
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.index))
        .collect();
    let api: Api<Pod> = Api::all(shared.client.clone());
    let config = watcher::Config::default().fields("spec.nodeName!=");
    let mut events = watcher(api, config).boxed();
    let mut listed: Option<BTreeSet<String>> = None;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::debug!(error = %e, "kubelet: pod watch failed; the watcher retries");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        match event {
            watcher::Event::Init => listed = Some(BTreeSet::new()),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if let Some(seen) = &mut listed {
                    seen.insert(uid.clone());
                }
                let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
                let Some(&index) = nodes.get(&node) else {
                    continue;
                };
                let mut pods = shared.pods.lock().expect("kubelet registry");
                if let Some(entry) = pods.get_mut(&uid) {
                    entry.info.terminating |= pod.metadata.deletion_timestamp.is_some();
                    entry.updates.send_replace(Some(pod));
                    shared.changes.send_modify(|n| *n += 1);
                } else if pod.metadata.deletion_timestamp.is_none() && !is_finished(&pod) {
                    let (updates, receiver) = watch::channel(Some(pod.clone()));
                    let info = worker::initial_info(&shared, &pod, &node);
                    let endings = worker::Endings {
                        pod: receiver,
                        node: shared.shutdown.subscribe(),
                    };
                    let task = tokio::spawn(worker::run(shared.clone(), pod, index, endings));
                    pods.insert(uid, Entry { info, updates, task });
                    drop(pods);
                    shared.changes.send_modify(|n| *n += 1);
                }
            }
            watcher::Event::Delete(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if let Some(entry) = shared.pods.lock().expect("kubelet registry").get_mut(&uid) {
                    entry.info.terminating = true;
                    entry.updates.send_replace(None);
                }
            }
            watcher::Event::InitDone => {
                if let Some(seen) = listed.take() {
                    for entry in shared.pods.lock().expect("kubelet registry").values_mut() {
                        if !seen.contains(&entry.info.uid) {
                            entry.info.terminating = true;
                            entry.updates.send_replace(None);
                        }
                    }
                }
            }
        }
    }
}

/// A Pod whose containers ended for good (phase Succeeded or Failed): nothing to run.
fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}
