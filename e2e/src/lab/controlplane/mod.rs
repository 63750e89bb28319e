//! The lab's Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager and
//! kube-scheduler, the real binaries built from their Go modules by
//! `e2e/controlplane/build.sh` (`make deps`), run as supervised processes on the host's
//! loopback and started in dependency order, each waited for on its health endpoint.
//!
//! It is set up as a real cluster is: TLS with a CA generated per lab ([`pki`]), client
//! certificates for the admin and the two controllers, a service-account issuer and signing
//! key, `--authorization-mode=Node,RBAC` and the default admission plugins. Herald's binaries
//! get ServiceAccount tokens from the TokenRequest API ([`ControlPlane::service_account_kubeconfig`]),
//! so the RBAC in `config/deploy` is what they are allowed.
//!
//! Files, under the lab's state directory: `controlplane/pki/`, `controlplane/etcd/` (data),
//! `controlplane/*.kubeconfig`; logs and pid files with the lab's (`logs/etcd.log`, …), and
//! `logs/audit.log`: kube-apiserver's audit log of every request Herald's ServiceAccounts make
//! (metadata level, one JSON object per line), which is how the lab checks that the RBAC in
//! `config/deploy` is exactly what Herald calls.

pub mod kubeconfig;
pub mod pki;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::api::PostParams;

use self::kubeconfig::{Credentials, kubeconfig_yaml};
use self::pki::{ClientIdentity, Pki, PkiFiles, PkiPlan};
use super::LabError;
use super::state::StateDir;
use super::supervisor::{ProcessSpec, Supervised};

/// Environment variable naming the directory holding the control plane's binaries (default:
/// what `e2e/controlplane/build.sh --locate` prints).
pub const CONTROLPLANE_DIR_ENV: &str = "HERALD_CONTROLPLANE_DIR";

/// How long each component gets to turn healthy after it starts.
const COMPONENT_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Lifetime requested for Herald's ServiceAccount tokens (a lab lives far shorter).
const TOKEN_SECONDS: i64 = 24 * 3600;
/// The users whose requests the audit log records: every ServiceAccount in Herald's namespace.
const AUDITED_GROUP: &str = "system:serviceaccounts:herald-system";

/// kube-apiserver's audit policy: metadata of every request by Herald's ServiceAccounts.
pub fn audit_policy() -> String {
    format!(
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n  - level: Metadata\n    userGroups: [\"{AUDITED_GROUP}\"]\n  - level: None\n"
    )
}

/// Paths of the control plane's executables.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ControlPlaneBinaries {
    /// `etcd`.
    pub etcd: PathBuf,
    /// `kube-apiserver`.
    pub apiserver: PathBuf,
    /// `kube-controller-manager`.
    pub controller_manager: PathBuf,
    /// `kube-scheduler`.
    pub scheduler: PathBuf,
}

impl ControlPlaneBinaries {
    /// The binaries in `dir`, if all four are there.
    pub fn in_dir(dir: &Path) -> Result<Self, LabError> {
        let found = Self {
            etcd: dir.join("etcd"),
            apiserver: dir.join("kube-apiserver"),
            controller_manager: dir.join("kube-controller-manager"),
            scheduler: dir.join("kube-scheduler"),
        };
        let missing = super::binaries::missing_files(&[
            &found.etcd,
            &found.apiserver,
            &found.controller_manager,
            &found.scheduler,
        ]);
        if missing.is_empty() {
            Ok(found)
        } else {
            Err(LabError::ControlPlaneMissing {
                why: format!("missing {}", missing.join(", ")),
            })
        }
    }

    /// `HERALD_CONTROLPLANE_DIR`, else the cache `e2e/controlplane/build.sh` built into
    /// (it is asked with `--locate`, which never builds).
    pub fn locate() -> Result<Self, LabError> {
        if let Some(dir) = std::env::var_os(CONTROLPLANE_DIR_ENV).filter(|d| !d.is_empty()) {
            return Self::in_dir(Path::new(&dir));
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("controlplane/build.sh");
        let output = std::process::Command::new("bash")
            .arg(&script)
            .arg("--locate")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|source| LabError::Spawn {
                program: script.display().to_string(),
                source,
            })?;
        if !output.status.success() {
            return Err(LabError::ControlPlaneMissing {
                why: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let dir = stdout.lines().last().unwrap_or_default().trim();
        Self::in_dir(Path::new(dir))
    }
}

/// What the control plane must serve.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// The address nodes reach the API server at (written to the `kubernetes` Service's
    /// endpoints and the serving certificate).
    pub advertise_address: IpAddr,
    /// Service ClusterIP ranges, IPv4 first (dual stack).
    pub service_cidrs: Vec<ipnet::IpNet>,
    /// Pause before a component that exited is started again.
    pub restart_delay: Duration,
    /// The executables.
    pub binaries: ControlPlaneBinaries,
}

impl ControlPlaneConfig {
    /// Dual-stack service ranges 10.96.0.0/16 and fd00:96::/112.
    pub fn new(advertise_address: IpAddr, binaries: ControlPlaneBinaries) -> Self {
        Self {
            advertise_address,
            service_cidrs: vec![
                "10.96.0.0/16".parse().expect("valid CIDR"),
                "fd00:96::/112".parse().expect("valid CIDR"),
            ],
            restart_delay: Duration::from_secs(1),
            binaries,
        }
    }

    /// The ClusterIPs of the `kubernetes` Service: the first address of each range.
    pub fn kubernetes_service_ips(&self) -> Vec<IpAddr> {
        self.service_cidrs
            .iter()
            .filter_map(|net| match net {
                ipnet::IpNet::V4(v4) => u32::from(v4.network())
                    .checked_add(1)
                    .map(|n| IpAddr::V4(Ipv4Addr::from(n))),
                ipnet::IpNet::V6(v6) => u128::from(v6.network())
                    .checked_add(1)
                    .map(|n| IpAddr::V6(std::net::Ipv6Addr::from(n))),
            })
            .collect()
    }
}

/// Loopback ports of the components.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Ports {
    /// etcd clients.
    pub etcd_client: u16,
    /// etcd peers.
    pub etcd_peer: u16,
    /// kube-apiserver (HTTPS).
    pub apiserver: u16,
    /// kube-controller-manager's health/metrics port.
    pub controller_manager: u16,
    /// kube-scheduler's health/metrics port.
    pub scheduler: u16,
}

impl Ports {
    /// Five ports free on 127.0.0.1 right now (held together while chosen, so distinct).
    fn pick() -> Result<Ports, LabError> {
        let listeners = (0..5)
            .map(|_| std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| LabError::Io {
                path: PathBuf::from("127.0.0.1:0"),
                source,
            })?;
        let port = |i: usize| listeners[i].local_addr().map(|a| a.port()).unwrap_or(0);
        Ok(Ports {
            etcd_client: port(0),
            etcd_peer: port(1),
            apiserver: port(2),
            controller_manager: port(3),
            scheduler: port(4),
        })
    }
}

/// The admin identity (cluster-admin through `system:masters`).
const ADMIN: &str = "admin";
const CONTROLLER_MANAGER: &str = "kube-controller-manager";
const SCHEDULER: &str = "kube-scheduler";

/// A running control plane. Dropping it kills its processes (see [`ControlPlane::kill_now`]).
pub struct ControlPlane {
    config: ControlPlaneConfig,
    dir: PathBuf,
    ports: Ports,
    files: PkiFiles,
    etcd: Supervised,
    apiserver: Supervised,
    controller_manager: Supervised,
    scheduler: Supervised,
    client: kube::Client,
    started_in: Duration,
}

impl ControlPlane {
    /// Generates the PKI and kubeconfigs under `state`, starts etcd → kube-apiserver →
    /// kube-controller-manager → kube-scheduler, and returns once each reports healthy.
    pub async fn start(
        state: &StateDir,
        config: ControlPlaneConfig,
        say: &(dyn Fn(&str) + Sync),
    ) -> Result<ControlPlane, LabError> {
        let started = Instant::now();
        let dir = state.root().join("controlplane");
        let ports = Ports::pick()?;
        let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST), config.advertise_address];
        ips.extend(config.kubernetes_service_ips());
        let plan = PkiPlan::new(
            ips,
            vec![
                ClientIdentity::new(ADMIN, "herald-lab-admin", &["system:masters"]),
                ClientIdentity::new(CONTROLLER_MANAGER, "system:kube-controller-manager", &[]),
                ClientIdentity::new(SCHEDULER, "system:kube-scheduler", &[]),
            ],
        );
        let files = Pki::generate(&plan)
            .map_err(LabError::Pki)?
            .write(&dir.join("pki"))
            .map_err(LabError::Pki)?;
        let host_url = format!("https://127.0.0.1:{}", ports.apiserver);
        write_file(&dir.join("audit-policy.yaml"), &audit_policy())?;
        for identity in [ADMIN, CONTROLLER_MANAGER, SCHEDULER] {
            let (cert, key) = files.client(identity);
            write_file(
                &dir.join(format!("{identity}.kubeconfig")),
                &kubeconfig_yaml(
                    &host_url,
                    &files.ca_cert,
                    identity,
                    &Credentials::ClientCert { cert, key },
                ),
            )?;
        }

        let spec = |name: &str, program: &Path, args: Vec<String>| ProcessSpec {
            name: name.to_string(),
            netns: None,
            program: program.to_path_buf(),
            args,
            env: Vec::new(),
            log_file: state.log(name),
            pid_file: state.pid(name),
            restart_delay: config.restart_delay,
        };
        say(&format!("starting etcd (client port {})", ports.etcd_client));
        let etcd = Supervised::start(spec("etcd", &config.binaries.etcd, etcd_args(&dir, &ports)));
        wait_healthy(&etcd, &format!("http://127.0.0.1:{}/health", ports.etcd_client), &[]).await?;

        say(&format!("starting kube-apiserver on {host_url}"));
        let apiserver = Supervised::start(spec(
            "kube-apiserver",
            &config.binaries.apiserver,
            apiserver_args(
                &config,
                &files,
                &ports,
                &dir.join("audit-policy.yaml"),
                &state.log("audit"),
            ),
        ));
        let (admin_cert, admin_key) = files.client(ADMIN);
        let admin_auth = curl_client_auth(&files.ca_cert, &admin_cert, &admin_key);
        wait_healthy(&apiserver, &format!("{host_url}/readyz"), &admin_auth).await?;

        say("starting kube-controller-manager and kube-scheduler");
        let controller_manager = Supervised::start(spec(
            "kube-controller-manager",
            &config.binaries.controller_manager,
            controller_manager_args(&config, &dir, &files, &ports),
        ));
        let scheduler = Supervised::start(spec(
            "kube-scheduler",
            &config.binaries.scheduler,
            scheduler_args(&dir, &ports),
        ));
        let insecure = ["-k".to_string()];
        wait_healthy(
            &controller_manager,
            &format!("https://127.0.0.1:{}/healthz", ports.controller_manager),
            &insecure,
        )
        .await?;
        wait_healthy(
            &scheduler,
            &format!("https://127.0.0.1:{}/healthz", ports.scheduler),
            &insecure,
        )
        .await?;

        let client = client_from(&dir.join(format!("{ADMIN}.kubeconfig"))).await?;
        let started_in = started.elapsed();
        say(&format!("control plane ready in {:.1} s", started_in.as_secs_f64()));
        Ok(ControlPlane {
            config,
            dir,
            ports,
            files,
            etcd,
            apiserver,
            controller_manager,
            scheduler,
            client,
            started_in,
        })
    }

    /// An admin kube-rs client on the host (127.0.0.1).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The admin kubeconfig on the host (127.0.0.1): what `export KUBECONFIG=` names.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join(format!("{ADMIN}.kubeconfig"))
    }

    /// The API server's address on the host.
    pub fn api_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports.apiserver))
    }

    /// The cluster CA certificate file.
    pub fn ca_file(&self) -> &Path {
        &self.files.ca_cert
    }

    /// The component ports.
    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// How long [`ControlPlane::start`] took until every component was healthy.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &ControlPlaneConfig {
        &self.config
    }

    /// Asks the TokenRequest API for a token of ServiceAccount `namespace/name` and writes a
    /// kubeconfig at `path` for `server` (e.g. the in-lab `https://10.203.0.1:6443`) with it.
    pub async fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        server: &str,
        path: &Path,
    ) -> Result<(), LabError> {
        let token = self.service_account_token(namespace, name).await?;
        write_file(
            path,
            &kubeconfig_yaml(
                server,
                &self.files.ca_cert,
                &format!("system:serviceaccount:{namespace}:{name}"),
                &Credentials::Token(token),
            ),
        )
    }

    /// A token for ServiceAccount `namespace/name` from the TokenRequest API.
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> Result<String, LabError> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(TOKEN_SECONDS),
                ..Default::default()
            }),
            ..Default::default()
        };
        let issued = accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .map_err(|source| LabError::Api {
                what: format!("requesting a token for ServiceAccount {namespace}/{name}"),
                source,
            })?;
        issued
            .status
            .and_then(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| LabError::Timeout {
                what: format!("a token for ServiceAccount {namespace}/{name} (the response had none)"),
            })
    }

    /// A kube-rs client on the host authenticated as ServiceAccount `namespace/name`.
    pub async fn service_account_client(&self, namespace: &str, name: &str) -> Result<kube::Client, LabError> {
        let path = self.dir.join(format!("{namespace}-{name}.host.kubeconfig"));
        let server = format!("https://{}", self.api_addr());
        self.service_account_kubeconfig(namespace, name, &server, &path).await?;
        client_from(&path).await
    }

    /// Stops kube-apiserver (SIGTERM); clients see refused connections until it starts again.
    pub async fn stop_apiserver(&self) {
        self.apiserver.stop().await;
    }

    /// Starts kube-apiserver after [`ControlPlane::stop_apiserver`] and waits until it is ready.
    pub async fn start_apiserver(&self) -> Result<(), LabError> {
        self.apiserver.resume();
        let (cert, key) = self.files.client(ADMIN);
        wait_healthy(
            &self.apiserver,
            &format!("https://{}/readyz", self.api_addr()),
            &curl_client_auth(&self.files.ca_cert, &cert, &key),
        )
        .await
    }

    /// Restarts kube-apiserver (watches end; clients must resume).
    pub async fn restart_apiserver(&self) -> Result<(), LabError> {
        self.stop_apiserver().await;
        self.start_apiserver().await
    }

    /// Restarts etcd (the API server's storage goes away for the restart) and waits until
    /// the API server is ready again.
    pub async fn restart_etcd(&self) -> Result<(), LabError> {
        self.etcd.stop().await;
        self.etcd.resume();
        wait_healthy(
            &self.etcd,
            &format!("http://127.0.0.1:{}/health", self.ports.etcd_client),
            &[],
        )
        .await?;
        let (cert, key) = self.files.client(ADMIN);
        wait_healthy(
            &self.apiserver,
            &format!("https://{}/readyz", self.api_addr()),
            &curl_client_auth(&self.files.ca_cert, &cert, &key),
        )
        .await
    }

    /// Pid of each component that runs right now, by name.
    pub fn pids(&self) -> Vec<(&str, Option<u32>)> {
        self.components().map(|p| (p.name(), p.pid())).collect()
    }

    fn components(&self) -> impl Iterator<Item = &Supervised> {
        [&self.scheduler, &self.controller_manager, &self.apiserver, &self.etcd].into_iter()
    }

    /// Stops every component, controllers first, etcd last.
    pub async fn stop(&self) {
        futures::future::join(self.scheduler.stop(), self.controller_manager.stop()).await;
        self.apiserver.stop().await;
        self.etcd.stop().await;
    }

    /// Best-effort synchronous kill of every component (for `Drop` paths).
    pub fn kill_now(&self) {
        for process in self.components() {
            process.kill_now();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill_now();
    }
}

fn flag(name: &str, value: impl std::fmt::Display) -> String {
    format!("--{name}={value}")
}

fn etcd_args(dir: &Path, ports: &Ports) -> Vec<String> {
    let client = format!("http://127.0.0.1:{}", ports.etcd_client);
    let peer = format!("http://127.0.0.1:{}", ports.etcd_peer);
    vec![
        flag("name", "lab"),
        flag("data-dir", dir.join("etcd").display()),
        flag("listen-client-urls", &client),
        flag("advertise-client-urls", &client),
        flag("listen-peer-urls", &peer),
        flag("initial-advertise-peer-urls", &peer),
        flag("initial-cluster", format!("lab={peer}")),
        // The state directory is on tmpfs and a lab's data is disposable.
        "--unsafe-no-fsync".to_string(),
        flag("log-level", "warn"),
    ]
}

fn apiserver_args(
    config: &ControlPlaneConfig,
    files: &PkiFiles,
    ports: &Ports,
    audit_policy: &Path,
    audit_log: &Path,
) -> Vec<String> {
    let cidrs: Vec<String> = config.service_cidrs.iter().map(ToString::to_string).collect();
    vec![
        flag("etcd-servers", format!("http://127.0.0.1:{}", ports.etcd_client)),
        flag("bind-address", "127.0.0.1"),
        flag("secure-port", ports.apiserver),
        flag("advertise-address", config.advertise_address),
        flag("tls-cert-file", files.apiserver_cert.display()),
        flag("tls-private-key-file", files.apiserver_key.display()),
        flag("client-ca-file", files.ca_cert.display()),
        flag("service-account-issuer", "https://kubernetes.default.svc.cluster.local"),
        flag("service-account-key-file", files.service_account_public.display()),
        flag("service-account-signing-key-file", files.service_account_key.display()),
        flag("service-cluster-ip-range", cidrs.join(",")),
        flag("service-node-port-range", "30000-32767"),
        flag("authorization-mode", "Node,RBAC"),
        // On top of the default plugins, as kubeadm enables it.
        flag("enable-admission-plugins", "NodeRestriction"),
        flag("allow-privileged", "true"),
        flag("profiling", "false"),
        flag("audit-policy-file", audit_policy.display()),
        flag("audit-log-path", audit_log.display()),
        flag("audit-log-format", "json"),
        // One file for the lab's life: the rbac test and bench-allocation read what was appended
        // after an offset, and the default rotation at 100 MB (reached at a few thousand
        // Services) left them reading an empty new file.
        flag("audit-log-maxsize", AUDIT_LOG_MAX_MB),
    ]
}

/// The audit log's size limit in MB, far above what a lab writes.
const AUDIT_LOG_MAX_MB: u32 = 1_000_000;

fn controller_manager_args(config: &ControlPlaneConfig, dir: &Path, files: &PkiFiles, ports: &Ports) -> Vec<String> {
    let kubeconfig = dir.join(format!("{CONTROLLER_MANAGER}.kubeconfig"));
    let cidrs: Vec<String> = config.service_cidrs.iter().map(ToString::to_string).collect();
    vec![
        flag("kubeconfig", kubeconfig.display()),
        flag("authentication-kubeconfig", kubeconfig.display()),
        flag("authorization-kubeconfig", kubeconfig.display()),
        flag("bind-address", "127.0.0.1"),
        flag("secure-port", ports.controller_manager),
        // One instance: no lease to wait for after a restart.
        flag("leader-elect", "false"),
        // Every controller under its own ServiceAccount, as in kubeadm clusters.
        flag("use-service-account-credentials", "true"),
        flag("service-account-private-key-file", files.service_account_key.display()),
        flag("root-ca-file", files.ca_cert.display()),
        flag("cluster-signing-cert-file", files.ca_cert.display()),
        flag("cluster-signing-key-file", files.dir.join("ca.key").display()),
        flag("service-cluster-ip-range", cidrs.join(",")),
        flag("controllers", "*"),
    ]
}

fn scheduler_args(dir: &Path, ports: &Ports) -> Vec<String> {
    let kubeconfig = dir.join(format!("{SCHEDULER}.kubeconfig"));
    vec![
        flag("kubeconfig", kubeconfig.display()),
        flag("authentication-kubeconfig", kubeconfig.display()),
        flag("authorization-kubeconfig", kubeconfig.display()),
        flag("bind-address", "127.0.0.1"),
        flag("secure-port", ports.scheduler),
        flag("leader-elect", "false"),
    ]
}

fn curl_client_auth(ca: &Path, cert: &Path, key: &Path) -> Vec<String> {
    vec![
        "--cacert".into(),
        ca.display().to_string(),
        "--cert".into(),
        cert.display().to_string(),
        "--key".into(),
        key.display().to_string(),
    ]
}

/// Polls `url` with curl (extra arguments `auth`) until it answers 2xx, for at most
/// [`COMPONENT_READY_TIMEOUT`].
async fn wait_healthy(component: &Supervised, url: &str, auth: &[String]) -> Result<(), LabError> {
    let deadline = Instant::now() + COMPONENT_READY_TIMEOUT;
    // Loopback never goes through a proxy, whatever the environment says.
    let mut args: Vec<&str> = vec!["-sf", "-o", "/dev/null", "--max-time", "2", "--noproxy", "*"];
    args.extend(auth.iter().map(String::as_str));
    args.push(url);
    loop {
        if super::net::run_unchecked("curl", &args).await?.status.success() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let log = component.log_file().to_path_buf();
            return Err(LabError::Unhealthy {
                component: component.name().to_string(),
                url: url.to_string(),
                starts: component.starts(),
                tail: super::state::log_tail(&log, 20).unwrap_or_else(|e| format!("(cannot read it: {e})")),
                log,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn client_from(kubeconfig: &Path) -> Result<kube::Client, LabError> {
    let text = std::fs::read_to_string(kubeconfig).map_err(|source| LabError::Io {
        path: kubeconfig.to_path_buf(),
        source,
    })?;
    let parsed = kube::config::Kubeconfig::from_yaml(&text).map_err(|e| LabError::ControlPlaneMissing {
        why: format!("cannot read {}: {e}", kubeconfig.display()),
    })?;
    let config = kube::Config::from_custom_kubeconfig(parsed, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| LabError::ControlPlaneMissing {
            why: format!("cannot use {}: {e}", kubeconfig.display()),
        })?;
    kube::Client::try_from(config).map_err(|source| LabError::Api {
        what: format!("building a client from {}", kubeconfig.display()),
        source,
    })
}

fn write_file(path: &Path, text: &str) -> Result<(), LabError> {
    std::fs::write(path, text).map_err(|source| LabError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab_config() -> ControlPlaneConfig {
        ControlPlaneConfig::new(
            "10.203.0.1".parse().unwrap(),
            ControlPlaneBinaries {
                etcd: "etcd".into(),
                apiserver: "a".into(),
                controller_manager: "c".into(),
                scheduler: "s".into(),
            },
        )
    }

    #[test]
    fn the_audit_policy_records_herald_and_nothing_else() {
        let policy: serde_json::Value = serde_yaml::from_str(&audit_policy()).unwrap();
        assert_eq!(policy["kind"], "Policy");
        assert_eq!(policy["rules"][0]["level"], "Metadata");
        assert_eq!(policy["rules"][0]["userGroups"][0], AUDITED_GROUP);
        assert_eq!(policy["rules"][1]["level"], "None");
    }

    #[test]
    fn the_kubernetes_service_takes_the_first_address_of_each_range() {
        let config = lab_config();
        let ips: Vec<String> = config
            .kubernetes_service_ips()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(ips, ["10.96.0.1", "fd00:96::1"]);
    }

    #[test]
    fn apiserver_flags_name_the_lab_files_and_dual_stack_ranges() {
        let config = lab_config();
        let files = PkiFiles::in_dir(Path::new("/lab/pki"));
        let ports = Ports {
            etcd_client: 1,
            etcd_peer: 2,
            apiserver: 3,
            controller_manager: 4,
            scheduler: 5,
        };
        let args = apiserver_args(
            &config,
            &files,
            &ports,
            Path::new("/lab/audit-policy.yaml"),
            Path::new("/lab/logs/audit.log"),
        );
        for want in [
            "--etcd-servers=http://127.0.0.1:1",
            "--secure-port=3",
            "--advertise-address=10.203.0.1",
            "--service-cluster-ip-range=10.96.0.0/16,fd00:96::/112",
            "--authorization-mode=Node,RBAC",
            "--service-account-signing-key-file=/lab/pki/sa.key",
            "--client-ca-file=/lab/pki/ca.crt",
            "--audit-log-path=/lab/logs/audit.log",
            "--audit-log-maxsize=1000000",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} missing from {args:?}");
        }
    }
}
