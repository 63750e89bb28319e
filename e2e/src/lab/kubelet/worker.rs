//! One Pod's life on a lab node: sandbox, volumes, the container and its restarts, probes,
//! status, and the end (graceful or forced deletion).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Resource};
use tokio::sync::watch;

use super::pod_spec::{self, ContainerPlan, FileContent, HttpProbe, PodFacts, References, VolumeSource};
use super::status::{ContainerState, PodReport, pod_status};
use super::{PodInfo, Shared};
use crate::lab::net;
use crate::lab::plan::PodPlan;
use crate::lab::supervisor::{Signal, append_note, send_signal, spawn_logged};

/// How often a container that cannot be configured yet (a missing Secret) is retried.
const CONFIG_RETRY: Duration = Duration::from_secs(2);
/// How often a status patch that failed (API server restarting) is retried.
const STATUS_RETRY: Duration = Duration::from_secs(1);

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The name of a Pod's log and pid files: `pod-<namespace>-<name>`.
fn process_name(pod: &Pod) -> String {
    format!(
        "pod-{}-{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

fn host_network(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_network) == Some(true)
}

/// What the registry shows for a Pod before its worker has done anything.
pub(super) fn initial_info(shared: &Shared, pod: &Pod, node: &str) -> PodInfo {
    PodInfo {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        node: node.to_string(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        netns: String::new(),
        ips: Vec::new(),
        pid: None,
        restarts: 0,
        ready: false,
        terminating: false,
        log: shared.config.state.log(&process_name(pod)),
    }
}

/// How a Pod is to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Deleted with a grace period: SIGTERM, then SIGKILL after it; then the deletion is
    /// finished in the API.
    Graceful(Duration),
    /// Gone from the API (forced deletion): SIGKILL at once.
    Now,
    /// The node shuts down (the lab goes down): SIGTERM, SIGKILL after the grace period, and
    /// the Pod is left in the API, as a kubelet's graceful node shutdown leaves it.
    NodeShutdown(Duration),
}

impl Ending {
    /// The grace period between SIGTERM and SIGKILL; None: SIGKILL at once.
    fn grace(self) -> Option<Duration> {
        match self {
            Ending::Graceful(grace) | Ending::NodeShutdown(grace) => Some(grace),
            Ending::Now => None,
        }
    }
}

fn ending(update: &Option<Pod>) -> Option<Ending> {
    match update {
        None => Some(Ending::Now),
        Some(pod) if pod.metadata.deletion_timestamp.is_some() => {
            let seconds = pod
                .metadata
                .deletion_grace_period_seconds
                .or_else(|| pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
                .unwrap_or(30);
            Some(if seconds <= 0 {
                Ending::Now
            } else {
                Ending::Graceful(Duration::from_secs(seconds as u64))
            })
        }
        Some(_) => None,
    }
}

/// What can end a Pod: its object (None once gone from the API) and the node's shutdown
/// (the grace period every container gets).
pub(super) struct Endings {
    pub(super) pod: watch::Receiver<Option<Pod>>,
    pub(super) node: watch::Receiver<Option<Duration>>,
}

/// Resolves when the Pod is being deleted or the node shuts down.
async fn ending_requested(endings: &mut Endings) -> Ending {
    loop {
        if let Some(grace) = *endings.node.borrow_and_update() {
            return Ending::NodeShutdown(grace);
        }
        if let Some(e) = ending(&endings.pod.borrow_and_update()) {
            return e;
        }
        tokio::select! {
            changed = endings.pod.changed() => if changed.is_err() { return Ending::Now },
            changed = endings.node.changed() => if changed.is_err() { return Ending::Now },
        }
    }
}

struct Sandbox {
    netns: String,
    ips: Vec<IpAddr>,
    /// Its own namespace and slot (not for `hostNetwork`).
    own: Option<PodPlan>,
}

struct Worker {
    shared: Arc<Shared>,
    pod: Pod,
    uid: String,
    node: usize,
    endings: Endings,
    report: PodReport,
    /// The last status patch failed.
    dirty: bool,
    /// The container's process while it runs.
    pid: Option<u32>,
    log: PathBuf,
    pid_file: PathBuf,
    dir: PathBuf,
    /// Writes the Events a kubelet writes (reporting controller `kubelet`, instance the node).
    events: Recorder,
}

/// Runs the Pod until it is deleted, then finishes the deletion and removes what it made.
pub(super) async fn run(shared: Arc<Shared>, pod: Pod, node: usize, endings: Endings) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let node_plan = shared.config.plan.nodes[node - 1].clone();
    let container = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .cloned()
        .unwrap_or_default();
    let name = process_name(&pod);
    let mut worker = Worker {
        report: PodReport {
            phase: "Pending",
            host_ips: vec![node_plan.ipv4.to_string(), node_plan.ipv6.to_string()],
            pod_ips: Vec::new(),
            start_time: now(),
            container: container.name.clone(),
            image: container.image.clone().unwrap_or_default(),
            state: ContainerState::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            },
            last_state: None,
            restart_count: 0,
            ready: false,
            container_id: None,
            ready_since: now(),
        },
        dirty: false,
        pid: None,
        log: shared.config.state.log(&name),
        pid_file: shared.config.state.pid(&name),
        dir: shared.config.state.pod_dir(&uid),
        events: Recorder::new(
            shared.client.clone(),
            Reporter {
                controller: "kubelet".into(),
                instance: Some(node_plan.name.clone()),
            },
        ),
        shared,
        pod,
        uid,
        node,
        endings,
    };
    worker.patch_status().await;
    let sandbox = match worker.sandbox().await {
        Ok(sandbox) => Some(sandbox),
        Err(e) => {
            worker.note(&format!("cannot create the pod sandbox: {e}"));
            worker.waiting("CreatePodSandboxError", Some(e.to_string())).await;
            None
        }
    };
    let ending = match &sandbox {
        Some(sandbox) => worker.live(sandbox).await,
        None => ending_requested(&mut worker.endings).await,
    };
    worker.finish(sandbox, ending).await;
}

impl Worker {
    fn note(&self, line: &str) {
        append_note(&self.log, "herald-lab kubelet", line);
    }

    /// An Event on the Pod, as `kubectl describe pod` shows a kubelet's. Written in the
    /// background, as a kubelet's event broadcaster does: never delays what it reports.
    fn event(&self, warning: bool, reason: &str, action: &str, note: String) {
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        let (recorder, reference) = (self.events.clone(), self.pod.object_ref(&()));
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::debug!(error = %e, reason = %event.reason, "kubelet: cannot write an Event");
            }
        });
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(
            self.shared.client.clone(),
            self.pod.metadata.namespace.as_deref().unwrap_or("default"),
        )
    }

    /// Publishes the report: to the registry at once (what the lab reads), then to the API.
    async fn patch_status(&mut self) {
        let (ready, restarts) = (self.report.ready, self.report.restart_count);
        let pid = self.pid;
        let ips: Vec<IpAddr> = self.report.pod_ips.iter().filter_map(|ip| ip.parse().ok()).collect();
        self.shared.update(&self.uid, |info| {
            info.ready = ready;
            info.restarts = restarts;
            info.pid = pid;
            info.ips = ips;
        });
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        let patch = pod_status(&self.report);
        let result = self
            .pods()
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        self.dirty = match result {
            Ok(_) => false,
            // The Pod is gone: nothing left to report to.
            Err(kube::Error::Api(s)) if s.code == 404 => false,
            Err(e) => {
                tracing::debug!(pod = %name, error = %e, "kubelet: status patch failed; retrying");
                true
            }
        };
    }

    async fn waiting(&mut self, reason: &str, message: Option<String>) {
        self.report.state = ContainerState::Waiting {
            reason: reason.into(),
            message,
        };
        self.set_ready(false);
        self.patch_status().await;
    }

    fn set_ready(&mut self, ready: bool) {
        if self.report.ready != ready {
            self.report.ready = ready;
            self.report.ready_since = now();
        }
    }

    async fn sandbox(&mut self) -> Result<Sandbox, crate::lab::LabError> {
        let node = self.shared.config.plan.nodes[self.node - 1].clone();
        let sandbox = if host_network(&self.pod) {
            Sandbox {
                netns: node.namespace.clone(),
                ips: vec![node.ipv4.into(), node.ipv6.into()],
                own: None,
            }
        } else {
            let slot = self.shared.take_slot(self.node).ok_or(crate::lab::LabError::Plan(
                crate::lab::PlanError::PodCidrFull { node: self.node },
            ))?;
            let plan = self.shared.config.plan.pod(self.node, slot, &format!("p{slot}"))?;
            if let Err(e) = net::add_pod(&node, &plan).await {
                if let Err(error) = net::delete_namespace(&plan.namespace).await {
                    tracing::warn!(%error, namespace = %plan.namespace, "removing a half-made pod namespace");
                }
                self.shared.release_slot(self.node, slot);
                return Err(e);
            }
            Sandbox {
                netns: plan.namespace.clone(),
                ips: vec![plan.ipv4.into(), plan.ipv6.into()],
                own: Some(plan),
            }
        };
        self.report.pod_ips = sandbox.ips.iter().map(IpAddr::to_string).collect();
        let netns = sandbox.netns.clone();
        self.shared.update(&self.uid, |info| info.netns = netns);
        self.patch_status().await;
        Ok(sandbox)
    }

    fn facts(&self, sandbox: &Sandbox) -> PodFacts {
        let node = &self.shared.config.plan.nodes[self.node - 1];
        PodFacts {
            node_name: node.name.clone(),
            host_ips: self.report.host_ips.clone(),
            pod_ips: sandbox.ips.iter().map(IpAddr::to_string).collect(),
            api_host: self.shared.config.api_host.to_string(),
            api_port: self.shared.config.api_port,
        }
    }

    /// Fetches what the Pod refers to; missing objects are left out (the plan says what is
    /// missing, and whether that is allowed).
    async fn references(&self) -> References {
        let namespace = self.pod.metadata.namespace.as_deref().unwrap_or("default");
        let (secrets, config_maps) = pod_spec::referenced_objects(&self.pod);
        let mut refs = References::default();
        let secret_api: Api<Secret> = Api::namespaced(self.shared.client.clone(), namespace);
        for name in secrets {
            if let Ok(Some(secret)) = secret_api.get_opt(&name).await {
                let data = secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect();
                refs.secrets.insert(name, data);
            }
        }
        let cm_api: Api<ConfigMap> = Api::namespaced(self.shared.client.clone(), namespace);
        for name in config_maps {
            if let Ok(Some(cm)) = cm_api.get_opt(&name).await {
                refs.config_maps.insert(name, cm.data.unwrap_or_default());
            }
        }
        refs
    }

    /// Until deleted: configure, run, restart.
    async fn live(&mut self, sandbox: &Sandbox) -> Ending {
        let facts = self.facts(sandbox);
        // Configuration: retried while something it needs is missing.
        let (plan, volumes) = loop {
            let refs = self.references().await;
            let prepared = pod_spec::volumes(&self.pod, &facts, &refs).and_then(|volumes| {
                let plan = pod_spec::container_plan(&self.pod, &facts, &refs, &self.shared.config.images)?;
                Ok((plan, volumes))
            });
            match prepared {
                Ok(prepared) => break prepared,
                Err(e) => {
                    self.note(&format!("cannot configure the container: {e}"));
                    self.event(true, "Failed", "Configure", format!("Error: {e}"));
                    self.waiting("CreateContainerConfigError", Some(e.to_string())).await;
                    let wait = tokio::time::timeout(CONFIG_RETRY, ending_requested(&mut self.endings));
                    if let Ok(ending) = wait.await {
                        return ending;
                    }
                }
            }
        };
        let mounts = match self.prepare_volumes(&volumes, &plan).await {
            Ok(mounts) => mounts,
            Err(e) => {
                self.note(&format!("cannot prepare the volumes: {e}"));
                self.event(true, "FailedMount", "Mount", e.clone());
                self.waiting("CreateContainerError", Some(e)).await;
                return ending_requested(&mut self.endings).await;
            }
        };
        self.event(
            false,
            "Pulled",
            "Pull",
            format!(
                "Container image \"{}\" is this lab's build (its programs run from the build's binaries)",
                plan.image
            ),
        );
        let refresher = self.spawn_token_refresh(&volumes);
        let ending = self.run_container(sandbox, &plan, &mounts).await;
        if let Some(task) = refresher {
            task.abort();
        }
        ending
    }

    /// Writes every volume's files, creates `emptyDir`s and node `hostPath`s; returns the
    /// bind mounts (`host path`, `container path`, read-only).
    async fn prepare_volumes(
        &self,
        volumes: &BTreeMap<String, VolumeSource>,
        plan: &ContainerPlan,
    ) -> Result<Vec<(PathBuf, PathBuf, bool)>, String> {
        let node = &self.shared.config.plan.nodes[self.node - 1];
        let node_root = self.shared.config.state.node_root(&node.name);
        let mut sources = BTreeMap::new();
        for (name, volume) in volumes {
            let dir = match volume {
                VolumeSource::HostPath(path) => pod_spec::host_path(path, &node_root, &self.shared.config.state.bpf()),
                VolumeSource::EmptyDir | VolumeSource::Files(_) => self.dir.join("volumes").join(name),
            };
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            if let VolumeSource::Files(files) = volume {
                for file in files {
                    let content = match &file.content {
                        FileContent::Literal(text) => text.clone(),
                        FileContent::Token {
                            audience,
                            expiration_seconds,
                        } => self
                            .token(audience.clone(), *expiration_seconds)
                            .await
                            .map_err(|e| format!("token for {}: {e}", file.path))?,
                    };
                    write_atomically(&dir.join(&file.path), &content).map_err(|e| format!("{}: {e}", file.path))?;
                }
            }
            sources.insert(name.clone(), dir);
        }
        Ok(plan
            .mounts
            .iter()
            .filter_map(|m| {
                sources
                    .get(&m.volume)
                    .map(|s| (s.clone(), m.target.clone(), m.read_only))
            })
            .collect())
    }

    async fn token(&self, audience: Option<String>, expiration_seconds: i64) -> Result<String, kube::Error> {
        token_for(&self.shared.client, &self.pod, audience, expiration_seconds).await
    }

    /// Refreshes every projected token at 80 % of its lifetime, as the kubelet does.
    fn spawn_token_refresh(&self, volumes: &BTreeMap<String, VolumeSource>) -> Option<tokio::task::JoinHandle<()>> {
        let mut tokens = Vec::new();
        for (name, volume) in volumes {
            if let VolumeSource::Files(files) = volume {
                for file in files {
                    if let FileContent::Token {
                        audience,
                        expiration_seconds,
                    } = &file.content
                    {
                        let path = self.dir.join("volumes").join(name).join(&file.path);
                        tokens.push((path, audience.clone(), *expiration_seconds));
                    }
                }
            }
        }
        if tokens.is_empty() {
            return None;
        }
        let (client, pod) = (self.shared.client.clone(), self.pod.clone());
        Some(tokio::spawn(async move {
            let shortest = tokens.iter().map(|t| t.2).min().unwrap_or(3600).max(60);
            let period = Duration::from_secs((shortest as u64) * 4 / 5);
            loop {
                tokio::time::sleep(period).await;
                for (path, audience, expiration) in &tokens {
                    match token_for(&client, &pod, audience.clone(), *expiration).await {
                        Ok(token) => {
                            if let Err(e) = write_atomically(path, &token) {
                                tracing::warn!(error = %e, path = %path.display(), "kubelet: writing a refreshed token failed");
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, path = %path.display(), "kubelet: token refresh failed"),
                    }
                }
            }
        }))
    }

    fn launch(
        &self,
        sandbox: &Sandbox,
        plan: &ContainerPlan,
        mounts: &[(PathBuf, PathBuf, bool)],
    ) -> std::io::Result<tokio::process::Child> {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", &sandbox.netns])
            .arg(&self.shared.config.lab_binary)
            .arg("container");
        for (source, target, read_only) in mounts {
            let mode = if *read_only { "ro" } else { "rw" };
            cmd.arg("--mount")
                .arg(format!("{}:{}:{mode}", source.display(), target.display()));
        }
        if plan.read_only_root {
            cmd.arg("--read-only-root");
        }
        for arg in pod_spec::setpriv_args(plan) {
            cmd.arg(format!("--setpriv={arg}"));
        }
        cmd.arg("--").arg(&plan.program).args(&plan.args);
        cmd.env_clear().envs(plan.env.iter().map(|(k, v)| (k, v)));
        spawn_logged(cmd, &self.log)
    }

    /// Runs the container, restarting it as `restartPolicy` says, until the Pod is deleted.
    async fn run_container(
        &mut self,
        sandbox: &Sandbox,
        plan: &ContainerPlan,
        mounts: &[(PathBuf, PathBuf, bool)],
    ) -> Ending {
        let policy = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        let grace = Duration::from_secs(
            self.pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30)
                .max(0) as u64,
        );
        let config = self.shared.config.clone();
        let mut backoff = config.restart_delay;
        loop {
            let mut child = match self.launch(sandbox, plan, mounts) {
                Ok(child) => child,
                Err(e) => {
                    self.note(&format!("cannot start the container: {e}"));
                    self.waiting("RunContainerError", Some(e.to_string())).await;
                    if let Ok(ending) = tokio::time::timeout(backoff, ending_requested(&mut self.endings)).await {
                        return ending;
                    }
                    continue;
                }
            };
            let pid = child.id().unwrap_or(0);
            if let Err(e) = std::fs::write(&self.pid_file, format!("{pid}\n")) {
                tracing::warn!(error = %e, file = %self.pid_file.display(), "kubelet: cannot record the container's pid");
            }
            let started = Instant::now();
            let started_at = now();
            self.note(&format!("started pid {pid} (restart #{})", self.report.restart_count));
            self.event(false, "Started", "Start", format!("Started container {}", plan.name));
            self.report.phase = "Running";
            self.report.state = ContainerState::Running {
                started_at: started_at.clone(),
            };
            self.report.container_id = Some(format!("herald-lab://{pid}"));
            self.pid = Some(pid);
            self.set_ready(plan.readiness.is_none());
            self.patch_status().await;

            let (ready_tx, mut ready_rx) = watch::channel(plan.readiness.is_none());
            // Never fires without a liveness probe.
            let (unhealthy_tx, mut unhealthy_rx) = tokio::sync::oneshot::channel::<()>();
            let mut probes = Vec::new();
            if let Some(probe) = &plan.readiness {
                probes.push(tokio::spawn(run_probe(sandbox.netns.clone(), probe.clone(), ready_tx)));
            }
            if let Some(probe) = &plan.liveness {
                let (alive_tx, mut alive_rx) = watch::channel(true);
                probes.push(tokio::spawn(run_probe(sandbox.netns.clone(), probe.clone(), alive_tx)));
                probes.push(tokio::spawn(async move {
                    while alive_rx.changed().await.is_ok() {
                        if !*alive_rx.borrow_and_update() {
                            // Nobody listens once the container is being torn down.
                            unhealthy_tx.send(()).ok();
                            return;
                        }
                    }
                }));
            }
            enum Outcome {
                Exited(std::io::Result<std::process::ExitStatus>),
                Ending(Ending),
                Unhealthy,
            }
            let outcome = loop {
                let retry = async {
                    if self.dirty {
                        tokio::time::sleep(STATUS_RETRY).await;
                    } else {
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    status = child.wait() => break Outcome::Exited(status),
                    ending = ending_requested(&mut self.endings) => break Outcome::Ending(ending),
                    Ok(()) = &mut unhealthy_rx => break Outcome::Unhealthy,
                    Ok(()) = ready_rx.changed() => {
                        let ready = *ready_rx.borrow_and_update();
                        if !ready && self.report.ready {
                            self.event(true, "Unhealthy", "Probe", "Readiness probe failed".into());
                        }
                        self.set_ready(ready);
                        self.patch_status().await;
                    }
                    () = retry => self.patch_status().await,
                }
            };
            for probe in probes {
                probe.abort();
            }
            let (status, ending) = match outcome {
                Outcome::Exited(status) => (status, None),
                Outcome::Ending(ending) => {
                    self.event(false, "Killing", "Kill", format!("Stopping container {}", plan.name));
                    (stop(&mut child, pid, ending).await, Some(ending))
                }
                Outcome::Unhealthy => {
                    self.note("liveness probe failed; restarting the container");
                    self.event(
                        false,
                        "Killing",
                        "Kill",
                        format!("Container {} failed liveness probe, will be restarted", plan.name),
                    );
                    (stop(&mut child, pid, Ending::Graceful(grace)).await, None)
                }
            };
            herald_testkit::cleanup(
                format!("removing {}", self.pid_file.display()),
                std::fs::remove_file(&self.pid_file),
            );
            self.pid = None;
            let (exit_code, signal) = match &status {
                Ok(s) => match (s.code(), s.signal()) {
                    (Some(code), _) => (code, None),
                    (None, Some(sig)) => (128 + sig, Some(sig)),
                    (None, None) => (1, None),
                },
                Err(_) => (1, None),
            };
            self.note(&format!("pid {pid} exited with {exit_code}"));
            let terminated = ContainerState::Terminated {
                exit_code,
                signal,
                reason: ContainerState::terminated_reason(exit_code).into(),
                started_at,
                finished_at: now(),
            };
            self.set_ready(false);
            if let Some(ending) = ending {
                self.report.state = terminated;
                self.patch_status().await;
                return ending;
            }
            let restart = match policy.as_str() {
                "Never" => false,
                "OnFailure" => exit_code != 0,
                _ => true,
            };
            self.report.last_state = Some(terminated.clone());
            if !restart {
                self.report.phase = if exit_code == 0 { "Succeeded" } else { "Failed" };
                self.report.state = terminated;
                self.patch_status().await;
                return ending_requested(&mut self.endings).await;
            }
            // CrashLoopBackOff: the delay doubles up to the limit and starts over after a
            // run twice as long as the limit.
            if started.elapsed() >= config.max_backoff * 2 {
                backoff = config.restart_delay;
            }
            self.report.restart_count += 1;
            self.event(
                true,
                "BackOff",
                "Restart",
                format!("Back-off {backoff:?} restarting failed container {}", plan.name),
            );
            self.report.state = ContainerState::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: Some(format!("back-off {backoff:?} restarting failed container")),
            };
            self.patch_status().await;
            if let Ok(ending) = tokio::time::timeout(backoff, ending_requested(&mut self.endings)).await {
                return ending;
            }
            backoff = (backoff * 2).min(config.max_backoff);
        }
    }

    /// Finishes the deletion in the API and removes the sandbox and the Pod's files.
    async fn finish(self, sandbox: Option<Sandbox>, ending: Ending) {
        let finish_in_api = match ending {
            Ending::Graceful(_) => true,
            // Forced: the object is gone already, unless the watch only stopped.
            Ending::Now => self.endings.pod.borrow().is_some(),
            Ending::NodeShutdown(_) => false,
        };
        if finish_in_api {
            let name = self.pod.metadata.name.clone().unwrap_or_default();
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(self.uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match self.pods().delete(&name, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => tracing::warn!(pod = %name, error = %e, "kubelet: cannot finish the deletion"),
            }
        }
        if let Some(own) = sandbox.and_then(|s| s.own) {
            if let Err(error) = net::delete_namespace(&own.namespace).await {
                tracing::warn!(%error, namespace = %own.namespace, "removing a pod's namespace");
            }
            self.shared.release_slot(self.node, own.slot);
        }
        herald_testkit::cleanup(
            format!("removing {}", self.dir.display()),
            std::fs::remove_dir_all(&self.dir),
        );
        self.note("pod removed");
        self.shared.finished(&self.uid);
    }
}

/// SIGTERM, the grace period, SIGKILL (or SIGKILL at once); the exit status.
async fn stop(
    child: &mut tokio::process::Child,
    pid: u32,
    ending: Ending,
) -> std::io::Result<std::process::ExitStatus> {
    if let Some(grace) = ending.grace() {
        // A process already gone fails the signal; the wait finds that out.
        send_signal(pid, Signal::Term).await.ok();
        if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
            return status;
        }
    }
    // An exited child fails the kill; the wait returns its status.
    child.start_kill().ok();
    child.wait().await
}

/// A token of the Pod's ServiceAccount bound to the Pod.
async fn token_for(
    client: &kube::Client,
    pod: &Pod,
    audience: Option<String>,
    expiration_seconds: i64,
) -> Result<String, kube::Error> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: audience.map(|a| vec![a]),
            expiration_seconds: Some(expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let response = api
        .create_token_request(&account, &PostParams::default(), &request)
        .await?;
    Ok(response.status.and_then(|s| s.token).unwrap_or_default())
}

/// Replaces `path` by a file with `content` (readable by the container's user), so a
/// reader never sees half of it.
fn write_atomically(path: &Path, content: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("herald-lab-tmp");
    std::fs::write(&tmp, content)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, path)
}

/// Probes `probe.url` from inside `netns` forever, publishing whether it passes (after
/// `success_threshold` successes / `failure_threshold` failures in a row).
async fn run_probe(netns: String, probe: HttpProbe, passing: watch::Sender<bool>) {
    tokio::time::sleep(probe.initial_delay).await;
    let (mut successes, mut failures) = (0u32, 0u32);
    loop {
        let timeout = probe.timeout.as_secs().max(1).to_string();
        let ok = net::run_unchecked(
            "ip",
            &[
                "netns",
                "exec",
                &netns,
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                &timeout,
                &probe.url,
            ],
        )
        .await
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse::<u16>().ok())
        .is_some_and(|code| (200..400).contains(&code));
        if ok {
            successes += 1;
            failures = 0;
            if successes >= probe.success_threshold {
                passing.send_if_modified(|p| !std::mem::replace(p, true));
            }
        } else {
            failures += 1;
            successes = 0;
            if failures >= probe.failure_threshold {
                passing.send_if_modified(|p| std::mem::replace(p, false));
            }
        }
        tokio::time::sleep(probe.period).await;
    }
}
