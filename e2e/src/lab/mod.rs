//! A small bare-metal cluster on one machine, built from network namespaces, running
//! Herald's real binaries against a real Kubernetes control plane. Demos, benchmarks and
//! end-to-end scenarios are written on top of [`Lab`].
//!
//! # What `Lab::up` builds
//! - namespaces and addresses as in [`plan`]: an L2 segment (bridge in `<prefix>-seg`)
//!   joining `<prefix>-client` and `<prefix>-node1..N`, pods behind nodes on per-node pod
//!   CIDRs with host-gw routes, IPv4 and IPv6 everywhere;
//! - the control plane ([`controlplane`]: etcd, kube-apiserver, kube-controller-manager,
//!   kube-scheduler) on the host's loopback (admin kubeconfig, for kubectl) and, through
//!   [`relay`], at 10.203.0.1:6443 inside the lab;
//! - one Node per node namespace, with the lab's [`kubelet`] running every Pod bound to it
//!   (Herald's from its image's binaries, the echo backends from `herald-lab`'s), its Lease
//!   renewed, its Pods' status reported;
//! - Herald installed as users install it ([`install`]): `kubectl apply -k` of `config/deploy`
//!   with a lab overlay (scenario flags, text logs), then `kubectl rollout status` of the
//!   controller Deployment and the speaker DaemonSet. Herald reaches the API server with
//!   in-cluster configuration from its ServiceAccount token, as in any cluster.
//!
//! [`Lab::start_probe`] runs a steady client ([`probe`]) for failover measurements.
//!
//! Backends ([`Lab::add_backend`]) are echo Pods bound to a node, so kube-controller-manager's
//! EndpointSlices follow their readiness. LoadBalancer addresses for L2 mode come from the
//! segment, e.g. a pool `10.203.0.200/29` + `fd00:203::200/125`.
//!
//! # Scenario shape
//! ```no_run
//! # async fn demo() -> Result<(), herald_e2e::lab::LabError> {
//! use herald_e2e::lab::{Lab, LabConfig, Signal};
//! let lab = Lab::up(LabConfig::new("hlab")).await?;
//! lab.add_backend(1, "web-a", [("app".to_string(), "web".to_string())].into()).await?;
//! lab.kubectl_apply("...IPAddressPool, L2Advertisement, Service...").await?;
//! let out = lab.exec_in(lab.client_namespace(), &["curl", "-s", "http://10.203.0.200/"]).await?;
//! let probe = lab.start_probe(lab.client_namespace(), &herald_e2e::lab::ProbeConfig {
//!     target: "10.203.0.200:80".parse().unwrap(),
//!     interval: std::time::Duration::from_millis(10),
//!     duration: std::time::Duration::from_secs(5),
//!     timeout: std::time::Duration::from_millis(300),
//! })?;
//! let old = lab.kill_speaker(1, Signal::Kill).await?; // or lab.set_cable(1, false)
//! let outage = herald_e2e::lab::summarize(&probe.finish().await?).longest_outage_ms;
//! lab.wait_speaker_restart(1, old, std::time::Duration::from_secs(5)).await?; // the kubelet restarted it
//! lab.down().await?;
//! # Ok(()) }
//! ```

pub mod binaries;
pub mod container;
pub mod controlplane;
pub mod echo;
pub mod foreground;
pub mod install;
pub mod kubelet;
mod net;
pub mod objects;
pub mod plan;
pub mod probe;
pub mod relay;
pub mod state;
pub mod supervisor;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use herald_config::deploy;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;

use kubelet::{Kubelet, KubeletConfig, PodInfo};

pub use binaries::{BIN_DIR_ENV, Binaries};
pub use controlplane::{CONTROLPLANE_DIR_ENV, ControlPlane, ControlPlaneBinaries, ControlPlaneConfig};
pub use plan::{LabPlan, NodePlan, PlanError, PodPlan};
pub use probe::{ProbeConfig, ProbeSample, ProbeSummary, summarize};
pub use state::{CleanupReport, DEFAULT_STATE_ROOT, StateDir, cleanup};
pub use supervisor::Signal;

use supervisor::{ProcessSpec, Supervised};

/// How long `up` waits for the API relay, and `add_backend` for an echo server to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `exec_in` lets a command run.
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The lab needs root (namespaces, veths).
    #[error("the lab needs root (network namespaces and veth pairs); run it with sudo")]
    NotRoot,
    /// A command-line tool the lab drives is missing.
    #[error("`{tool}` is not installed (needed for {why}); `make deps` installs it")]
    MissingTool {
        /// The tool.
        tool: String,
        /// What it is for.
        why: String,
    },
    /// Herald's binaries are not built.
    #[error(
        "Herald binaries missing: {missing:?} (searched {searched:?}); run `cargo build --workspace --bins` first, or set HERALD_BIN_DIR"
    )]
    BinariesMissing {
        /// Directories searched.
        searched: Vec<PathBuf>,
        /// Files not found.
        missing: Vec<String>,
    },
    /// The filesystem of the lab's state is nearly full.
    #[error(
        "only {free_mib} MiB free for the lab's state at {dir}; it needs {need_mib} MiB (free some space, or pass another --state-root)"
    )]
    NoSpace {
        /// The state directory.
        dir: PathBuf,
        /// Free space there.
        free_mib: u64,
        /// What the lab needs.
        need_mib: u64,
    },
    /// A lab with this prefix is running.
    #[error("a lab with prefix {prefix:?} is running (pid {pid}); stop it or run `herald-lab down --prefix {prefix}`")]
    AlreadyRunning {
        /// The prefix.
        prefix: String,
        /// Its owner process.
        pid: u32,
    },
    /// The prefix, node count or pod name does not fit the plan.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// No such node.
    #[error("the lab has nodes 1..={count}, not {node}")]
    UnknownNode {
        /// Requested node.
        node: usize,
        /// Node count.
        count: usize,
    },
    /// No node has this name.
    #[error("the lab has no node called {0:?}")]
    UnknownNodeName(String),
    /// No such backend, or one with this name exists.
    #[error("backend {name:?}: {problem}")]
    Backend {
        /// The backend.
        name: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// `exec_in` was given no program.
    #[error("no command given")]
    EmptyCommand,
    /// A namespace that is not part of this lab.
    #[error("namespace {0:?} is not part of this lab")]
    ForeignNamespace(String),
    /// A command failed.
    #[error("`{command}` failed (exit {status:?}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit code.
        status: Option<i32>,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A program could not be started.
    #[error("cannot run {program}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A component of the control plane did not turn healthy in time: what its own log said.
    #[error("{component} did not turn healthy at {url} in time (started {starts} times); the end of {log}:\n{tail}")]
    Unhealthy {
        /// The component.
        component: String,
        /// The health endpoint asked.
        url: String,
        /// How many times the supervisor started it (more than one: it kept exiting).
        starts: u32,
        /// Its log file.
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },
    /// Something did not happen in time.
    #[error("timed out waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
    },
    /// A file operation failed.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An API request failed.
    #[error("{what}")]
    Api {
        /// What the lab was doing.
        what: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The control plane's binaries are not built (or not where they were looked for).
    #[error("the lab's Kubernetes control plane is not available: {why}")]
    ControlPlaneMissing {
        /// What is missing.
        why: String,
    },
    /// The lab's certificates could not be made.
    #[error("lab PKI")]
    Pki(#[source] controlplane::pki::PkiError),
    /// A component's `/metrics` lacks what the lab reads from it.
    #[error("/metrics: {0}")]
    Metrics(String),
    /// A supervised process is not running right now.
    #[error("{process} is not running")]
    NotRunning {
        /// The process.
        process: String,
    },
}

/// Receives one line per long step of [`Lab::up`] (and other slow operations).
pub type Progress = Arc<dyn Fn(&str) + Send + Sync>;

/// How to build a lab.
#[derive(Clone)]
pub struct LabConfig {
    /// Namespace and state-directory prefix (`[a-z][a-z0-9]*`, ≤ 10 chars).
    pub prefix: String,
    /// Number of nodes.
    pub nodes: usize,
    /// Parent of the state directory.
    pub state_root: PathBuf,
    /// Binaries to run; None finds them with [`Binaries::locate`].
    pub binaries: Option<Binaries>,
    /// Control-plane binaries; None finds them with [`ControlPlaneBinaries::locate`].
    pub control_plane: Option<ControlPlaneBinaries>,
    /// Install Herald with `kubectl apply -k` at all (false: a bare cluster, for installing it
    /// another way, e.g. with helm).
    pub install_herald: bool,
    /// Install herald-controller's Deployment (false: a lab for tests that run the controller
    /// in process).
    pub start_controller: bool,
    /// The kubelet's first restart back-off for a container that exited, and the pause before
    /// a lab process (API relay, control plane) restarts.
    pub restart_delay: Duration,
    /// The kubelet's back-off doubles up to this (a real kubelet: 10 s doubling to 5 min).
    pub restart_backoff_limit: Duration,
    /// Extra `herald-speaker` flags (e.g. membership timings).
    pub speaker_args: Vec<String>,
    /// Extra `herald-controller` flags.
    pub controller_args: Vec<String>,
    /// Set `HERALD_LOG_FORMAT=json` for Herald's processes.
    pub json_logs: bool,
    /// `HERALD_LOG` filter for Herald's processes (e.g. `debug`).
    pub log_filter: Option<String>,
    /// Install the speaker DaemonSet (false: a lab for controller-only scenarios).
    pub start_speakers: bool,
    /// Mount a bpf filesystem in the state directory: what `hostPath: /sys/fs/bpf` is on the
    /// lab's nodes (inside `ip netns exec`, `/sys/fs/bpf` is not one).
    pub bpf_filesystem: bool,
    /// Where progress lines go; None is silent.
    pub progress: Option<Progress>,
}

impl LabConfig {
    /// Three nodes under `prefix`, state in `/run/herald-lab`, restart back-off 1 s doubling
    /// to 10 s.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            nodes: 3,
            state_root: PathBuf::from(DEFAULT_STATE_ROOT),
            binaries: None,
            control_plane: None,
            install_herald: true,
            start_controller: true,
            restart_delay: Duration::from_secs(1),
            restart_backoff_limit: Duration::from_secs(10),
            speaker_args: Vec::new(),
            controller_args: Vec::new(),
            json_logs: false,
            log_filter: None,
            start_speakers: true,
            bpf_filesystem: true,
            progress: None,
        }
    }
}

impl Default for LabConfig {
    fn default() -> Self {
        Self::new("hlab")
    }
}

/// A running backend pod.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackendInfo {
    /// Pod name (namespace `default`).
    pub name: String,
    /// Node number.
    pub node: usize,
    /// Its network namespace.
    pub namespace: String,
    /// Pod IPv4 address.
    pub ipv4: Ipv4Addr,
    /// Pod IPv6 address.
    pub ipv6: Ipv6Addr,
    /// Labels of its Pod object.
    pub labels: BTreeMap<String, String>,
}

/// A running `herald-lab probe` (see [`Lab::start_probe`]); killed if dropped.
pub struct ProbeRun {
    child: tokio::process::Child,
    reader: tokio::task::JoinHandle<String>,
    deadline: Instant,
}

impl ProbeRun {
    /// Waits for the probe to finish its duration and returns its samples (in completion order).
    pub async fn finish(mut self) -> Result<Vec<ProbeSample>, LabError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let status = match tokio::time::timeout(left, self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(source)) => {
                return Err(LabError::Spawn {
                    program: "herald-lab probe".into(),
                    source,
                });
            }
            Err(_) => {
                return Err(LabError::Timeout {
                    what: "herald-lab probe to finish".into(),
                });
            }
        };
        let text = (&mut self.reader).await.unwrap_or_default();
        if !status.success() {
            let mut stderr = String::new();
            if let Some(mut err) = self.child.stderr.take() {
                use tokio::io::AsyncReadExt;
                // Whatever could be read is still worth reporting.
                err.read_to_string(&mut stderr).await.ok();
            }
            return Err(LabError::Command {
                command: "herald-lab probe".into(),
                status: status.code(),
                stderr: stderr.trim().to_string(),
            });
        }
        Ok(probe::parse_samples(&text))
    }
}

/// What `herald-lab up --json` writes: enough to drive the lab from scripts.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LabInfo {
    /// Prefix.
    pub prefix: String,
    /// State directory.
    pub state_dir: PathBuf,
    /// Kubeconfig for the host (kubectl).
    pub kubeconfig: PathBuf,
    /// API server URL on the host.
    pub api_url: String,
    /// API server URL inside the lab.
    pub lab_api_url: String,
    /// Control-plane binaries running.
    pub control_plane: ControlPlaneBinaries,
    /// Namespaces and addresses.
    pub plan: LabPlan,
    /// Binaries running.
    pub binaries: Binaries,
    /// Pid of the leading controller replica.
    pub controller_pid: Option<u32>,
    /// Speaker pids by node (index 0 is node1).
    pub speaker_pids: Vec<Option<u32>>,
    /// Every Pod the lab's kubelet runs: `namespace/name` on node (pid).
    pub pods: Vec<String>,
    /// Backends.
    pub backends: Vec<BackendInfo>,
}

/// A running lab. Drop cleans up best-effort; [`Lab::down`] cleans up and reports.
pub struct Lab {
    plan: LabPlan,
    config: LabConfig,
    state: StateDir,
    binaries: Binaries,
    control_plane: ControlPlane,
    /// Renews every Node's Lease, as each node's kubelet would.
    heartbeats: tokio::task::JoinHandle<()>,
    unix_relay: tokio::task::JoinHandle<()>,
    relay: Supervised,
    /// Runs every Pod bound to a lab node.
    kubelet: Kubelet,
    client: kube::Client,
    torn_down: AtomicBool,
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Fails unless running as root with every tool the lab drives.
pub fn check_prerequisites() -> Result<(), LabError> {
    if effective_uid() != Some(0) {
        return Err(LabError::NotRoot);
    }
    let tools = [
        ("ip", "namespaces, links, addresses (iproute2)"),
        ("sysctl", "forwarding in node namespaces (procps)"),
        ("kill", "signalling lab processes (procps)"),
        ("curl", "readiness probes from inside the lab"),
    ];
    for (tool, why) in tools {
        let found = std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            return Err(LabError::MissingTool {
                tool: tool.to_string(),
                why: why.to_string(),
            });
        }
    }
    Ok(())
}

impl Lab {
    /// Builds the lab and starts everything; on failure removes what it built.
    pub async fn up(config: LabConfig) -> Result<Lab, LabError> {
        let plan = LabPlan::new(&config.prefix, config.nodes)?;
        check_prerequisites()?;
        let binaries = match &config.binaries {
            Some(b) => b.clone(),
            None => Binaries::locate()?,
        };
        let control_plane = match &config.control_plane {
            Some(b) => b.clone(),
            None => ControlPlaneBinaries::locate()?,
        };
        let state = StateDir::new(&config.state_root, &plan.prefix);
        if let Some(pid) = state.live_owner() {
            return Err(LabError::AlreadyRunning {
                prefix: plan.prefix.clone(),
                pid,
            });
        }
        let say = |line: &str| {
            if let Some(progress) = &config.progress {
                progress(line);
            }
        };
        if state.root().exists() || !state::lab_namespaces(&plan.prefix).await?.is_empty() {
            say("removing the leftovers of an earlier lab with this prefix");
            cleanup(&plan.prefix, &config.state_root).await?;
        }
        match Self::build(config.clone(), plan, binaries, control_plane, state, &say).await {
            Ok(lab) => Ok(lab),
            Err(e) => {
                say("start failed; removing what was built");
                state::cleanup_blocking(&config.prefix, &config.state_root);
                Err(e)
            }
        }
    }

    async fn build(
        config: LabConfig,
        plan: LabPlan,
        binaries: Binaries,
        control_plane: ControlPlaneBinaries,
        state: StateDir,
        say: &(dyn Fn(&str) + Sync),
    ) -> Result<Lab, LabError> {
        state.create()?;
        state.write_owner()?;
        say(&format!(
            "creating namespaces {}-{{seg,client,node1..{}}}, bridge, veths, routes",
            plan.prefix,
            plan.nodes.len()
        ));
        net::build_base(&plan).await?;

        let mut control_plane_config = ControlPlaneConfig::new(IpAddr::V4(plan.bridge_v4), control_plane);
        control_plane_config.restart_delay = config.restart_delay;
        let control_plane = ControlPlane::start(&state, control_plane_config, say).await?;
        std::fs::copy(control_plane.admin_kubeconfig(), state.kubeconfig()).map_err(|source| LabError::Io {
            path: state.kubeconfig(),
            source,
        })?;
        let client = control_plane.client();
        let unix_relay = relay::bind_unix_to_tcp(&state.api_socket(), control_plane.api_addr())
            .await
            .map_err(|source| LabError::Io {
                path: state.api_socket(),
                source,
            })?;
        let relay = Supervised::start(ProcessSpec {
            name: "api-relay".into(),
            netns: Some(plan.segment_namespace.clone()),
            program: binaries.lab.clone(),
            args: vec![
                "relay".into(),
                "--listen".into(),
                plan.api_address().to_string(),
                "--unix".into(),
                state.api_socket().display().to_string(),
            ],
            env: vec![("RUST_LOG".into(), "warn".into())],
            log_file: state.log("api-relay"),
            pid_file: state.pid("api-relay"),
            restart_delay: config.restart_delay,
        });
        let lab_url = format!("https://{}", plan.api_address());
        let first_node = &plan.nodes[0];
        say(&format!("checking {lab_url} from {}", first_node.namespace));
        wait_https_ok(
            &first_node.namespace,
            &format!("{lab_url}/healthz"),
            control_plane.ca_file(),
            READY_TIMEOUT,
        )
        .await?;

        say(&format!(
            "registering {} Nodes; the lab's kubelet runs what is bound to them",
            plan.nodes.len()
        ));
        objects::register_nodes(&client, &plan.nodes).await?;
        let heartbeats = tokio::spawn(kubelet::heartbeat(client.clone(), plan.nodes.clone()));
        if config.bpf_filesystem
            && let Err(e) = state::mount_bpf(&state)
        {
            say(&format!("warning: no bpf filesystem for the speakers' dataplane: {e}"));
        }
        let kubelet = Kubelet::start(
            client.clone(),
            KubeletConfig {
                plan: plan.clone(),
                state: state.clone(),
                images: binaries.images(),
                lab_binary: binaries.lab.clone(),
                api_host: plan.api_address().ip(),
                api_port: plan.api_address().port(),
                restart_delay: config.restart_delay,
                max_backoff: config.restart_backoff_limit.max(config.restart_delay),
            },
        );

        let lab = Lab {
            plan,
            config,
            state,
            binaries,
            control_plane,
            heartbeats,
            unix_relay,
            relay,
            kubelet,
            client,
            torn_down: AtomicBool::new(false),
        };
        lab.install(say, &lab_url).await?;
        lab.write_info().await?;
        Ok(lab)
    }

    /// Installs Herald as users do, unless the config says not to: `kubectl apply -k` of the
    /// lab's overlay on `config/deploy`, Herald's CRDs established, then `kubectl rollout
    /// status` of the workloads installed. Also writes kubeconfigs of Herald's ServiceAccounts
    /// for tools.
    async fn install(&self, say: &(dyn Fn(&str) + Sync), lab_url: &str) -> Result<(), LabError> {
        let config = &self.config;
        if !config.install_herald {
            // Pods need their namespace's `default` ServiceAccount, which kube-controller-manager creates.
            return objects::wait_service_account(&self.client, objects::BACKEND_NAMESPACE, "default").await;
        }
        let overlay = install::Overlay {
            controller: config.start_controller,
            speakers: config.start_speakers,
            controller_args: config.controller_args.clone(),
            speaker_args: config.speaker_args.clone(),
            json_logs: config.json_logs,
            log_filter: config.log_filter.clone(),
        };
        let overlay_dir = self.state.root().join("deploy");
        std::fs::create_dir_all(&overlay_dir).map_err(|source| LabError::Io {
            path: overlay_dir.clone(),
            source,
        })?;
        let deploy = objects::deploy_dir();
        let deploy = deploy
            .canonicalize()
            .map_err(|source| LabError::Io { path: deploy, source })?;
        let base = install::relative_path(&overlay_dir, &deploy);
        write_file(
            &overlay_dir.join("kustomization.yaml"),
            &install::kustomization(&base, &overlay),
        )?;
        say(&format!(
            "kubectl apply -k {} (config/deploy with the lab's overlay)",
            overlay_dir.display()
        ));
        let overlay_arg = overlay_dir.display().to_string();
        self.kubectl_within(&["apply", "-k", &overlay_arg], None, Duration::from_secs(60))
            .await?;
        let crds: Vec<String> = herald_config::crds::all()
            .into_iter()
            .filter_map(|(_, crd)| crd.metadata.name)
            .map(|name| format!("crd/{name}"))
            .collect();
        let mut wait = vec!["wait", "--for=condition=Established", "--timeout=30s"];
        wait.extend(crds.iter().map(String::as_str));
        self.kubectl_within(&wait, None, Duration::from_secs(40)).await?;
        for (namespace, account) in [(deploy::NAMESPACE, "default"), (objects::BACKEND_NAMESPACE, "default")] {
            objects::wait_service_account(&self.client, namespace, account).await?;
        }
        say("issuing ServiceAccount tokens for herald-controller and herald-speaker (kubeconfigs for tools)");
        for account in [deploy::CONTROLLER, deploy::SPEAKER] {
            self.control_plane
                .service_account_kubeconfig(
                    deploy::NAMESPACE,
                    account,
                    lab_url,
                    &self.state.service_account_kubeconfig(account),
                )
                .await?;
        }
        for (wanted, workload) in [
            (config.start_controller, "deployment/herald-controller"),
            (config.start_speakers, "daemonset/herald-speaker"),
        ] {
            if wanted {
                say(&format!("kubectl rollout status {workload}"));
                self.rollout_status(deploy::NAMESPACE, workload).await?;
            }
        }
        Ok(())
    }

    /// `kubectl -n NAMESPACE rollout status WORKLOAD`: waits (at most 120 s, what a rollout
    /// needs on a loaded 2-core machine, with room) until every replica is updated and ready.
    pub async fn rollout_status(&self, namespace: &str, workload: &str) -> Result<(), LabError> {
        self.kubectl_within(
            &["-n", namespace, "rollout", "status", workload, "--timeout=120s"],
            None,
            Duration::from_secs(130),
        )
        .await
        .map(drop)
    }

    /// The namespace and address plan.
    pub fn plan(&self) -> &LabPlan {
        &self.plan
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.plan.prefix
    }

    /// The state directory (logs, kubeconfigs, pid files).
    pub fn state_dir(&self) -> &Path {
        self.state.root()
    }

    /// The log file of a lab process (`api-relay`, `audit`, `kube-apiserver`…) or of a Pod's
    /// container (`pod-<namespace>-<name>`; [`PodInfo::log`] has it too).
    pub fn log_path(&self, process: &str) -> PathBuf {
        self.state.log(process)
    }

    /// Kubeconfig for the host (127.0.0.1): what `export KUBECONFIG=` should name.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.state.kubeconfig()
    }

    /// Kubeconfig of Herald's ServiceAccount `account` (`herald-controller`, `herald-speaker`)
    /// for use inside the lab (the in-lab API address).
    pub fn service_account_kubeconfig_path(&self, account: &str) -> PathBuf {
        self.state.service_account_kubeconfig(account)
    }

    /// The API server URL on the host.
    pub fn api_url(&self) -> String {
        format!("https://{}", self.control_plane.api_addr())
    }

    /// An admin kube-rs client (host side); it keeps working across [`Lab::restart_apiserver`].
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// A kube-rs client on the host authenticated as Herald's ServiceAccount `account`
    /// (`herald-controller`, `herald-speaker`): it has exactly the RBAC of `config/deploy`.
    pub async fn service_account_client(&self, account: &str) -> Result<kube::Client, LabError> {
        self.control_plane
            .service_account_client(deploy::NAMESPACE, account)
            .await
    }

    /// The control plane.
    pub fn control_plane(&self) -> &ControlPlane {
        &self.control_plane
    }

    /// The binaries the lab runs.
    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.plan.nodes.len()
    }

    /// The plan of node `node` (1-based).
    pub fn node(&self, node: usize) -> Result<&NodePlan, LabError> {
        self.plan.node(node).ok_or(LabError::UnknownNode {
            node,
            count: self.plan.nodes.len(),
        })
    }

    /// The number of the node called `name` (e.g. from a ServiceL2Status's `status.node`).
    pub fn node_index(&self, name: &str) -> Result<usize, LabError> {
        self.plan
            .nodes
            .iter()
            .find(|n| n.name == name)
            .map(|n| n.index)
            .ok_or(LabError::UnknownNodeName(name.to_string()))
    }

    /// The network namespace of node `node` (1-based).
    pub fn node_namespace(&self, node: usize) -> Result<&str, LabError> {
        Ok(self.node(node)?.namespace.as_str())
    }

    /// The external client's namespace.
    pub fn client_namespace(&self) -> &str {
        &self.plan.client_namespace
    }

    /// The segment namespace (bridge, API relay, controller).
    pub fn segment_namespace(&self) -> &str {
        &self.plan.segment_namespace
    }

    fn check_namespace(&self, ns: &str) -> Result<(), LabError> {
        if LabPlan::owns_namespace(&self.plan.prefix, ns) {
            Ok(())
        } else {
            Err(LabError::ForeignNamespace(ns.to_string()))
        }
    }

    /// A command that runs `program` inside lab namespace `ns`, for long-running or
    /// streaming uses (client loops, benchmarks). Killed when dropped.
    pub fn command_in(
        &self,
        ns: &str,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> Result<tokio::process::Command, LabError> {
        self.check_namespace(ns)?;
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(program)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        Ok(cmd)
    }

    /// Runs `args` inside lab namespace `ns` (at most 30 s) and returns its output,
    /// whatever the exit status.
    pub async fn exec_in(&self, ns: &str, args: &[&str]) -> Result<Output, LabError> {
        let (program, rest) = args.split_first().ok_or(LabError::EmptyCommand)?;
        let mut cmd = self.command_in(ns, program)?;
        cmd.args(rest);
        match tokio::time::timeout(EXEC_TIMEOUT, cmd.output()).await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(source)) => Err(LabError::Spawn {
                program: program.to_string(),
                source,
            }),
            Err(_) => Err(LabError::Timeout {
                what: format!("`{}` in {ns}", args.join(" ")),
            }),
        }
    }

    /// `GET url` with curl from inside namespace `ns`: the body, or an error
    /// when the request fails or answers with an error status.
    pub async fn http_get_in(&self, ns: &str, url: &str) -> Result<String, LabError> {
        let output = self.exec_in(ns, &["curl", "-sSf", "--max-time", "5", url]).await?;
        if !output.status.success() {
            return Err(LabError::Command {
                command: format!("curl {url} (in {ns})"),
                status: output.status.code(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The leading controller replica's `/metrics` text.
    pub async fn controller_metrics(&self) -> Result<String, LabError> {
        let leader = self.controller_leader().await.ok_or_else(|| LabError::NotRunning {
            process: "a leading herald-controller replica".into(),
        })?;
        let ip = leader.ips.first().copied().ok_or_else(|| LabError::NotRunning {
            process: format!("pod {}", leader.name),
        })?;
        let url = format!(
            "http://{}/metrics",
            std::net::SocketAddr::new(ip, deploy::CONTROLLER_METRICS_PORT)
        );
        self.http_get_in(&leader.netns, &url).await
    }

    /// Each speaker's `/metrics` text, node 1 first.
    pub async fn speaker_metrics(&self) -> Result<Vec<String>, LabError> {
        let mut texts = Vec::new();
        for node in 1..=self.node_count() {
            texts.push(self.speaker_metrics_of(node).await?);
        }
        Ok(texts)
    }

    /// Node `node`'s speaker's `/metrics` text (from the node, as a scraper there would).
    pub async fn speaker_metrics_of(&self, node: usize) -> Result<String, LabError> {
        let ns = self.node_namespace(node)?.to_string();
        let url = format!("http://127.0.0.1:{}/metrics", deploy::SPEAKER_METRICS_PORT);
        self.http_get_in(&ns, &url).await
    }

    /// A `kubectl` command on the host kubeconfig, with its own cache and HOME in the
    /// state directory (so it never reads the user's config). Killed when dropped.
    pub fn kubectl_command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = self.host_command("kubectl");
        cmd.args(args);
        cmd
    }

    /// `program` on the host with the environment [`Lab::kubectl_command`] gives kubectl
    /// (KUBECONFIG, HOME, cache), so any kubectl it runs talks to this lab. Killed when dropped.
    pub fn host_command(&self, program: &str) -> tokio::process::Command {
        let home = self.state.root().join("kubectl-home");
        let mut cmd = tokio::process::Command::new(program);
        cmd.env("KUBECONFIG", self.kubeconfig_path())
            .env("HOME", &home)
            .env("KUBECACHEDIR", home.join("cache"))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `kubectl args...` (at most 30 s) and returns its stdout; fails on a non-zero exit.
    pub async fn kubectl(&self, args: &[&str]) -> Result<String, LabError> {
        self.kubectl_within(args, None, EXEC_TIMEOUT).await
    }

    /// `kubectl apply -f -` with `yaml` on stdin; returns kubectl's stdout.
    pub async fn kubectl_apply(&self, yaml: &str) -> Result<String, LabError> {
        self.kubectl_within(&["apply", "-f", "-"], Some(yaml), EXEC_TIMEOUT)
            .await
    }

    /// `kubectl args…` with `input` on stdin, for at most `limit`; its stdout, or an error with
    /// its stderr.
    async fn kubectl_within(&self, args: &[&str], input: Option<&str>, limit: Duration) -> Result<String, LabError> {
        use tokio::io::AsyncWriteExt;
        let mut cmd = self.kubectl_command(args);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if input.is_some() {
            cmd.stdin(std::process::Stdio::piped());
        }
        let run = async {
            let mut child = cmd.spawn().map_err(|source| LabError::Spawn {
                program: "kubectl".into(),
                source,
            })?;
            if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
                stdin
                    .write_all(text.as_bytes())
                    .await
                    .map_err(|source| LabError::Spawn {
                        program: "kubectl".into(),
                        source,
                    })?;
            }
            child.wait_with_output().await.map_err(|source| LabError::Spawn {
                program: "kubectl".into(),
                source,
            })
        };
        let output = tokio::time::timeout(limit, run).await.map_err(|_| LabError::Timeout {
            what: format!("kubectl {}", args.join(" ")),
        })??;
        if !output.status.success() {
            return Err(LabError::Command {
                command: format!("kubectl {}", args.join(" ")),
                status: output.status.code(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Starts `herald-lab probe` in lab namespace `ns` (usually the client's): a new HTTP
    /// connection to `config.target` every `config.interval` for `config.duration`.
    /// Collect the samples with [`ProbeRun::finish`].
    pub fn start_probe(&self, ns: &str, config: &ProbeConfig) -> Result<ProbeRun, LabError> {
        let mut cmd = self.command_in(ns, &self.binaries.lab)?;
        cmd.args([
            "probe".to_string(),
            "--target".to_string(),
            config.target.to_string(),
            "--interval-ms".to_string(),
            config.interval.as_millis().to_string(),
            "--duration-ms".to_string(),
            config.duration.as_millis().to_string(),
            "--timeout-ms".to_string(),
            config.timeout.as_millis().to_string(),
        ])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| LabError::Spawn {
            program: "herald-lab probe".into(),
            source,
        })?;
        // Read as the probe writes, so a full pipe never stalls it.
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut text = String::new();
            // A broken pipe keeps what was read; the probe's exit status tells the rest.
            stdout.read_to_string(&mut text).await.ok();
            text
        });
        Ok(ProbeRun {
            child,
            reader,
            deadline: Instant::now() + config.duration + config.timeout + Duration::from_secs(10),
        })
    }

    /// The lab's kubelet (every Pod it runs, their processes and addresses).
    pub fn kubelet(&self) -> &Kubelet {
        &self.kubelet
    }

    fn is_speaker_on(pod: &PodInfo, node: &str) -> bool {
        pod.namespace == deploy::NAMESPACE
            && pod.node == node
            && pod.labels.get(deploy::COMPONENT_LABEL).map(String::as_str) == Some("speaker")
            && !pod.terminating
    }

    /// The speaker Pod on node `node` (the one not being deleted), if the DaemonSet has one there.
    pub fn speaker_pod(&self, node: usize) -> Result<Option<PodInfo>, LabError> {
        let name = self.node(node)?.name.clone();
        Ok(self.kubelet.pods().into_iter().find(|p| Self::is_speaker_on(p, &name)))
    }

    /// Pid of node `node`'s speaker, if it runs right now.
    pub fn speaker_pid(&self, node: usize) -> Result<Option<u32>, LabError> {
        Ok(self.speaker_pod(node)?.and_then(|p| p.pid))
    }

    /// Sends `signal` to node `node`'s speaker process and returns the pid signalled; if the
    /// process exits, the kubelet restarts the container (restartCount goes up).
    pub async fn kill_speaker(&self, node: usize, signal: Signal) -> Result<u32, LabError> {
        let pod = self.speaker_pod(node)?.ok_or_else(|| LabError::NotRunning {
            process: format!("the speaker on node{node}"),
        })?;
        self.kubelet.signal(&pod.namespace, &pod.name, signal).await
    }

    /// `kubectl delete pod` of node `node`'s speaker (`--grace-period=0 --force` when
    /// `force`), without waiting; returns the Pod's name. The DaemonSet makes a new one.
    pub async fn delete_speaker_pod(&self, node: usize, force: bool) -> Result<String, LabError> {
        let pod = self.speaker_pod(node)?.ok_or_else(|| LabError::NotRunning {
            process: format!("the speaker on node{node}"),
        })?;
        let mut args = vec![
            "-n",
            deploy::NAMESPACE,
            "delete",
            "pod",
            pod.name.as_str(),
            "--wait=false",
        ];
        if force {
            args.extend(["--grace-period=0", "--force"]);
        }
        self.kubectl(&args).await?;
        Ok(pod.name)
    }

    /// Waits until a speaker runs on node `node` with a pid other than `old_pid` (restarted
    /// by the kubelet, or a new Pod from the DaemonSet).
    pub async fn wait_speaker_restart(&self, node: usize, old_pid: u32, timeout: Duration) -> Result<u32, LabError> {
        let name = self.node(node)?.name.clone();
        self.kubelet
            .wait_for(&format!("the speaker on {name} to (re)start"), timeout, |pods| {
                pods.iter()
                    .filter(|p| Self::is_speaker_on(p, &name))
                    .find_map(|p| p.pid.filter(|pid| *pid != old_pid))
            })
            .await
    }

    /// The controller Pods running now (not being deleted).
    pub fn controller_pods(&self) -> Vec<PodInfo> {
        self.kubelet
            .pods()
            .into_iter()
            .filter(|p| {
                p.namespace == deploy::NAMESPACE
                    && p.labels.get(deploy::COMPONENT_LABEL).map(String::as_str) == Some("controller")
                    && !p.terminating
            })
            .collect()
    }

    /// The leading controller replica (its `/metrics` says `herald_controller_leader 1`).
    pub async fn controller_leader(&self) -> Option<PodInfo> {
        for pod in self.controller_pods() {
            let Some(ip) = pod.ips.first() else { continue };
            let url = format!("http://{ip}:{}/metrics", deploy::CONTROLLER_METRICS_PORT);
            if let Ok(text) = self.http_get_in(&pod.netns, &url).await
                && text.lines().any(|l| l.trim() == "herald_controller_leader 1")
            {
                return Some(pod);
            }
        }
        None
    }

    /// Pid of the leading controller replica, if one leads right now.
    pub async fn controller_pid(&self) -> Option<u32> {
        self.controller_leader().await.and_then(|p| p.pid)
    }

    /// Waits (at most `timeout`) until a controller replica leads whose Pod is not one of
    /// `not`; returns it.
    pub async fn wait_controller_leader(&self, not: &[String], timeout: Duration) -> Result<PodInfo, LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.controller_leader().await
                && !not.contains(&leader.uid)
                && leader.pid.is_some()
            {
                return Ok(leader);
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: "a herald-controller replica to lead".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `kubectl rollout restart deployment/herald-controller` and waits for the rollout and
    /// for a new replica to lead; returns its pid.
    pub async fn restart_controller(&self) -> Result<u32, LabError> {
        let old: Vec<String> = self.controller_pods().into_iter().map(|p| p.uid).collect();
        self.kubectl(&[
            "-n",
            deploy::NAMESPACE,
            "rollout",
            "restart",
            "deployment/herald-controller",
        ])
        .await?;
        self.rollout_status(deploy::NAMESPACE, "deployment/herald-controller")
            .await?;
        let leader = self.wait_controller_leader(&old, Duration::from_secs(60)).await?;
        leader.pid.ok_or(LabError::NotRunning {
            process: "herald-controller".into(),
        })
    }

    /// Takes node `node`'s own uplink (`eth0` in its namespace) down or up: the node sees
    /// its NIC go down. Bringing it up restores its addresses and routes.
    pub async fn set_uplink(&self, node: usize, up: bool) -> Result<(), LabError> {
        net::set_node_uplink(&self.plan, self.node(node)?, up).await
    }

    /// Takes the bridge side of node `node`'s cable down or up: the node sees carrier loss
    /// while its interface stays administratively up.
    pub async fn set_cable(&self, node: usize, connected: bool) -> Result<(), LabError> {
        net::set_bridge_port(&self.plan, self.node(node)?, connected).await
    }

    /// Stops kube-apiserver; in-lab clients see refused connections.
    pub async fn stop_apiserver(&self) {
        self.control_plane.stop_apiserver().await;
    }

    /// Starts kube-apiserver again and waits until it is ready.
    pub async fn start_apiserver(&self) -> Result<(), LabError> {
        self.control_plane.start_apiserver().await
    }

    /// Restarts kube-apiserver (watches end; clients must resume).
    pub async fn restart_apiserver(&self) -> Result<(), LabError> {
        self.control_plane.restart_apiserver().await
    }

    /// Restarts etcd under the running kube-apiserver and waits until the API is ready again.
    pub async fn restart_etcd(&self) -> Result<(), LabError> {
        self.control_plane.restart_etcd().await
    }

    /// Creates an echo backend Pod `name` in `default` bound to node `node`, with `labels`
    /// (plus `app=<name>` unless `app` is given), and waits until the kubelet runs it and its
    /// readiness probe passes.
    pub async fn add_backend(
        &self,
        node: usize,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<BackendInfo, LabError> {
        let node_plan = self.node(node)?.clone();
        plan::validate_pod_name(name)?;
        let mut labels = labels;
        labels.entry("app".into()).or_insert_with(|| name.to_string());
        let pod = objects::backend_pod_object(name, &node_plan, &labels);
        objects::create_backend_pod(&self.client, &pod).await?;
        let ready = self
            .kubelet
            .wait_for(&format!("backend {name} to run and be ready"), READY_TIMEOUT, |pods| {
                pods.iter()
                    .find(|p| p.namespace == objects::BACKEND_NAMESPACE && p.name == name && p.ready)
                    .cloned()
            })
            .await;
        match ready {
            Ok(pod) => backend_info(&pod, node),
            Err(e) => {
                // Leave nothing half-made behind.
                if let Err(cleanup) = self.remove_backend(name).await {
                    tracing::warn!(error = %cleanup, backend = name, "removing a half-made backend");
                }
                Err(e)
            }
        }
    }

    /// Makes a backend's readiness probe fail or pass again (its server keeps running) and
    /// waits until its Pod's Ready condition follows: EndpointSlices follow that.
    pub async fn set_backend_ready(&self, name: &str, ready: bool) -> Result<(), LabError> {
        let pod = self.backend_pod(name)?;
        let ip = pod.ips.first().copied().ok_or_else(|| LabError::NotRunning {
            process: format!("backend {name}"),
        })?;
        let url = format!("http://{}/readyz", std::net::SocketAddr::new(ip, plan::ECHO_HTTP_PORT));
        let body = if ready { "true" } else { "false" };
        let out = self
            .exec_in(
                &pod.netns,
                &["curl", "-sSf", "--max-time", "5", "-X", "PUT", "--data", body, &url],
            )
            .await?;
        if !out.status.success() {
            return Err(LabError::Command {
                command: format!("curl -X PUT {url}"),
                status: out.status.code(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        self.kubelet
            .wait_for(&format!("backend {name}'s Pod Ready={ready}"), READY_TIMEOUT, |pods| {
                pods.iter()
                    .any(|p| p.namespace == objects::BACKEND_NAMESPACE && p.name == name && p.ready == ready)
                    .then_some(())
            })
            .await
    }

    fn backend_pod(&self, name: &str) -> Result<PodInfo, LabError> {
        self.kubelet
            .pod(objects::BACKEND_NAMESPACE, name)
            .ok_or(LabError::Backend {
                name: name.to_string(),
                problem: "no such backend",
            })
    }

    /// The backend called `name`.
    pub async fn backend(&self, name: &str) -> Result<BackendInfo, LabError> {
        let pod = self.backend_pod(name)?;
        backend_info(&pod, self.node_index(&pod.node)?)
    }

    /// Pid of a backend's echo server, if it runs right now.
    pub async fn backend_pid(&self, name: &str) -> Result<Option<u32>, LabError> {
        Ok(self.backend_pod(name)?.pid)
    }

    /// Sends `signal` to a backend's echo server; the kubelet restarts it if it exits (its
    /// Pod is not Ready until the probe passes again).
    pub async fn kill_backend(&self, name: &str, signal: Signal) -> Result<u32, LabError> {
        self.kubelet.signal(objects::BACKEND_NAMESPACE, name, signal).await
    }

    /// Every backend Pod (namespace `default`) the kubelet runs.
    pub async fn backends(&self) -> Vec<BackendInfo> {
        self.kubelet
            .pods()
            .iter()
            .filter(|p| p.namespace == objects::BACKEND_NAMESPACE && !p.terminating)
            .filter_map(|p| backend_info(p, self.node_index(&p.node).ok()?).ok())
            .collect()
    }

    /// Deletes a backend Pod and waits until the kubelet has stopped it and finished the
    /// deletion.
    pub async fn remove_backend(&self, name: &str) -> Result<(), LabError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), objects::BACKEND_NAMESPACE);
        match pods.delete(name, &kube::api::DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => {
                return Err(LabError::Api {
                    what: format!("deleting pod {name}"),
                    source,
                });
            }
        }
        self.kubelet
            .wait_for(&format!("backend {name} to be gone"), READY_TIMEOUT, |pods| {
                (!pods
                    .iter()
                    .any(|p| p.namespace == objects::BACKEND_NAMESPACE && p.name == name))
                .then_some(())
            })
            .await
    }

    /// A description of the running lab.
    pub async fn info(&self) -> LabInfo {
        LabInfo {
            prefix: self.plan.prefix.clone(),
            state_dir: self.state.root().to_path_buf(),
            kubeconfig: self.kubeconfig_path(),
            api_url: self.api_url(),
            lab_api_url: format!("https://{}", self.plan.api_address()),
            control_plane: self.control_plane.config().binaries.clone(),
            plan: self.plan.clone(),
            binaries: self.binaries.clone(),
            controller_pid: self.controller_pid().await,
            speaker_pids: (1..=self.node_count())
                .map(|n| self.speaker_pid(n).ok().flatten())
                .collect(),
            pods: self
                .kubelet
                .pods()
                .iter()
                .map(|p| format!("{}/{} on {} (pid {})", p.namespace, p.name, p.node, p.pid.unwrap_or(0)))
                .collect(),
            backends: self.backends().await,
        }
    }

    async fn write_info(&self) -> Result<(), LabError> {
        let text = serde_json::to_string_pretty(&self.info().await).unwrap_or_default();
        write_file(&self.state.info(), &text)
    }

    /// Stops every Pod's container (SIGTERM, then SIGKILL after 5 s), the API server and
    /// the relays, deletes every namespace and the state directory.
    pub async fn down(self) -> Result<CleanupReport, LabError> {
        self.torn_down.store(true, Ordering::SeqCst);
        self.heartbeats.abort();
        self.kubelet.shutdown(Duration::from_secs(5)).await;
        self.relay.stop().await;
        self.control_plane.stop().await;
        self.unix_relay.abort();
        cleanup(&self.config.prefix, &self.config.state_root).await
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.torn_down.load(Ordering::SeqCst) {
            return;
        }
        self.unix_relay.abort();
        self.heartbeats.abort();
        if std::thread::panicking() {
            self.print_log_tails(40);
        }
        self.kubelet.kill_now();
        self.relay.kill_now();
        self.control_plane.kill_now();
        state::cleanup_blocking(&self.config.prefix, &self.config.state_root);
    }
}

impl Lab {
    /// Prints the last `lines` lines of Herald's Pods' logs to stderr: a test that fails
    /// takes the state directory with it, and CI keeps only what the test printed.
    fn print_log_tails(&self, lines: usize) {
        for pod in self.kubelet.pods() {
            if pod.namespace != deploy::NAMESPACE {
                continue;
            }
            let Ok(tail) = state::log_tail(&pod.log, lines) else {
                continue;
            };
            eprintln!("---- the end of {} ----\n{tail}", pod.log.display());
        }
        // What each speaker says about itself: why it is not ready, and its view of peers.
        for node in 1..=self.node_count() {
            let Ok(ns) = self.node_namespace(node) else { continue };
            for (path, keep) in [("/readyz", None), ("/metrics", Some("herald_membership_members"))] {
                let out = std::process::Command::new("ip")
                    .args(["netns", "exec", ns, "curl", "-sS", "--max-time", "2"])
                    .arg(format!("http://127.0.0.1:{}{path}", deploy::SPEAKER_METRICS_PORT))
                    .output();
                let text = match out {
                    Ok(out) => format!(
                        "{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    ),
                    Err(e) => e.to_string(),
                };
                eprintln!("---- node{node} speaker {path} ----");
                for line in text.lines().filter(|l| keep.is_none_or(|k| l.starts_with(k))) {
                    eprintln!("{line}");
                }
            }
        }
    }
}

fn backend_info(pod: &PodInfo, node: usize) -> Result<BackendInfo, LabError> {
    let v4 = pod.ips.iter().find_map(|ip| match ip {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    });
    let v6 = pod.ips.iter().find_map(|ip| match ip {
        IpAddr::V6(v6) => Some(*v6),
        IpAddr::V4(_) => None,
    });
    match (v4, v6) {
        (Some(ipv4), Some(ipv6)) => Ok(BackendInfo {
            name: pod.name.clone(),
            node,
            namespace: pod.netns.clone(),
            ipv4,
            ipv6,
            labels: pod.labels.clone(),
        }),
        _ => Err(LabError::NotRunning {
            process: format!("backend {} (no addresses yet)", pod.name),
        }),
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), LabError> {
    std::fs::write(path, text).map_err(|source| LabError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Polls the https `url` (whose certificate `ca` signed) with curl from inside `ns` until it
/// answers 2xx, for at most `timeout`.
async fn wait_https_ok(ns: &str, url: &str, ca: &Path, timeout: Duration) -> Result<(), LabError> {
    let ca = ca.display().to_string();
    wait_ok_with(ns, url, &["--cacert", &ca], timeout).await
}

async fn wait_ok_with(ns: &str, url: &str, extra: &[&str], timeout: Duration) -> Result<(), LabError> {
    let deadline = Instant::now() + timeout;
    let mut args = vec!["netns", "exec", ns, "curl", "-sf", "-o", "/dev/null", "--max-time", "1"];
    args.extend_from_slice(extra);
    args.push(url);
    loop {
        let out = net::run_unchecked("ip", &args).await?;
        if out.status.success() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout {
                what: format!("{url} to answer from {ns}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
