//! The lab's state directory (`/run/herald-lab/<prefix>/` by default) and the cleanup
//! that works from it alone, so `herald-lab down` also clears up after a lab that crashed.
//!
//! Layout: `kubeconfig` (admin, host, 127.0.0.1), `kubeconfig.<account>` (Herald's
//! ServiceAccounts, inside the lab, bridge address), `controlplane/` (PKI, etcd data,
//! component kubeconfigs), `api.sock` (relay socket), `lab.pid` (pid and executable of the process that owns the lab), `lab.json`
//! (what `up` built), `logs/<process>.log`, `pids/<process>.pid`, `deploy/` (the overlay
//! `up` applies), `pods/<uid>/` and `nodes/<node>/` (the kubelet's volumes and `hostPath`s), `bpf/` (a bpf
//! filesystem mounted for the speakers' pins: `ip netns exec` gives each process a fresh
//! `/sys`, so `/sys/fs/bpf` is no bpf filesystem there).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::LabError;
use super::net;
use super::plan::LabPlan;
use super::supervisor::{Signal, send_signal};

/// Default parent of every lab's state directory.
pub const DEFAULT_STATE_ROOT: &str = "/run/herald-lab";

/// Free space a lab needs where its state lives: etcd preallocates 64 MiB per write-ahead-log
/// segment and snapshots its database; the components' and Pods' logs grow with the run.
pub const MIN_FREE_MIB: u64 = 1024;

/// The available MiB in `df --output=avail -B1M`'s answer (a header line, then the number).
fn free_mib(df_output: &str) -> Option<u64> {
    df_output.lines().nth(1)?.trim().parse().ok()
}

/// Paths inside one lab's state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// `<state_root>/<prefix>`.
    pub fn new(state_root: &Path, prefix: &str) -> Self {
        Self {
            root: state_root.join(prefix),
        }
    }
    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// Host kubeconfig (127.0.0.1).
    pub fn kubeconfig(&self) -> PathBuf {
        self.root.join("kubeconfig")
    }
    /// In-lab kubeconfig (bridge address) of Herald's ServiceAccount `account`.
    pub fn service_account_kubeconfig(&self, account: &str) -> PathBuf {
        self.root.join(format!("kubeconfig.{account}"))
    }
    /// Unix socket of the API relay.
    pub fn api_socket(&self) -> PathBuf {
        self.root.join("api.sock")
    }
    /// Pid and executable of the lab's owner process.
    pub fn lab_pid(&self) -> PathBuf {
        self.root.join("lab.pid")
    }
    /// Description of the running lab (JSON).
    pub fn info(&self) -> PathBuf {
        self.root.join("lab.json")
    }
    /// Mount point of the lab's bpf filesystem (speakers pin their maps under it).
    pub fn bpf(&self) -> PathBuf {
        self.root.join("bpf")
    }
    /// What the lab's kubelet keeps for the Pod with UID `uid` (its volumes).
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join("pods").join(uid)
    }
    /// Where node `node`'s `hostPath`s are (nodes share the machine's filesystem otherwise).
    pub fn node_root(&self, node: &str) -> PathBuf {
        self.root.join("nodes").join(node)
    }
    /// Log file of a process.
    pub fn log(&self, process: &str) -> PathBuf {
        self.root.join("logs").join(format!("{process}.log"))
    }
    /// Pid file of a process.
    pub fn pid(&self, process: &str) -> PathBuf {
        self.root.join("pids").join(format!("{process}.pid"))
    }

    /// Creates the directory tree.
    /// Creates the directory, and refuses a filesystem too full for etcd's write-ahead log and
    /// the lab's logs: a full disk otherwise shows up as etcd never turning healthy.
    pub fn create(&self) -> Result<(), LabError> {
        for dir in [self.root.clone(), self.root.join("logs"), self.root.join("pids")] {
            std::fs::create_dir_all(&dir).map_err(|source| LabError::Io { path: dir, source })?;
        }
        let df = std::process::Command::new("df")
            .args(["--output=avail", "-B1M"])
            .arg(&self.root)
            .output()
            .map_err(|source| LabError::Spawn {
                program: "df".into(),
                source,
            })?;
        let text = String::from_utf8_lossy(&df.stdout);
        match free_mib(&text) {
            Some(free_mib) if free_mib < MIN_FREE_MIB => Err(LabError::NoSpace {
                dir: self.root.clone(),
                free_mib,
                need_mib: MIN_FREE_MIB,
            }),
            Some(_) => Ok(()),
            None => Err(LabError::Command {
                command: format!("df --output=avail -B1M {}", self.root.display()),
                status: df.status.code(),
                stderr: format!("{}{text}", String::from_utf8_lossy(&df.stderr)),
            }),
        }
    }

    /// Records the current process as the lab's owner.
    pub fn write_owner(&self) -> Result<(), LabError> {
        let exe = std::fs::read_link("/proc/self/exe").unwrap_or_default();
        let text = format!("{}\n{}\n", std::process::id(), exe.display());
        std::fs::write(self.lab_pid(), text).map_err(|source| LabError::Io {
            path: self.lab_pid(),
            source,
        })
    }

    /// The recorded owner's pid if that process still runs the recorded executable (a
    /// reused pid does not count). May be the current process.
    pub fn live_owner(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.lab_pid()).ok()?;
        let mut lines = text.lines();
        let pid: u32 = lines.next()?.trim().parse().ok()?;
        let exe = lines.next().unwrap_or_default();
        let running = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        (running.display().to_string() == exe).then_some(pid)
    }

    /// Pids from `pids/*.pid` whose process still runs something of Herald's.
    fn recorded_children(&self) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir(self.root.join("pids")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|t| t.trim().parse::<u32>().ok())
            .filter(|pid| is_herald_process(*pid))
            .collect()
    }
}

/// Whether `path` is a mount point (per /proc/self/mounts).
fn is_mount_point(path: &Path) -> bool {
    let target = path.display().to_string();
    std::fs::read_to_string("/proc/self/mounts")
        .map(|mounts| {
            mounts
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(target.as_str()))
        })
        .unwrap_or(false)
}

/// Unmounts the lab's bpf filesystem if it is mounted (lazily: a process that still
/// holds it does not block the cleanup).
fn unmount_bpf(state: &StateDir) {
    let path = state.bpf();
    while is_mount_point(&path) {
        let unmounted = std::process::Command::new("umount")
            .arg("-l")
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            break;
        }
    }
}

/// Mounts a bpf filesystem at the lab's `bpf/` directory; returns it.
pub fn mount_bpf(state: &StateDir) -> Result<PathBuf, LabError> {
    let path = state.bpf();
    std::fs::create_dir_all(&path).map_err(|source| LabError::Io {
        path: path.clone(),
        source,
    })?;
    if !is_mount_point(&path) {
        let output = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|source| LabError::Spawn {
                program: "mount".into(),
                source,
            })?;
        if !output.status.success() {
            return Err(LabError::Command {
                command: format!("mount -t bpf bpf {}", path.display()),
                status: output.status.code(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
    }
    Ok(path)
}

/// Whether `pid` runs a Herald executable (guards against signalling a reused pid).
fn is_herald_process(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("herald"))
        .unwrap_or(false)
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// What a cleanup removed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CleanupReport {
    /// The lab's owner process, asked to stop with SIGTERM.
    pub owner_stopped: Option<u32>,
    /// Processes killed.
    pub killed: Vec<u32>,
    /// Namespaces deleted.
    pub namespaces: Vec<String>,
    /// Whether the state directory was removed.
    pub state_dir_removed: bool,
}

/// Namespaces that belong to the lab with `prefix`.
pub async fn lab_namespaces(prefix: &str) -> Result<Vec<String>, LabError> {
    Ok(net::list_namespaces()
        .await?
        .into_iter()
        .filter(|ns| LabPlan::owns_namespace(prefix, ns))
        .collect())
}

/// Removes everything of the lab with `prefix`: asks a live owner process to stop (it
/// cleans up itself; SIGKILL after 15 s), kills recorded children and every process left
/// in the lab's namespaces, deletes the namespaces and the state directory.
pub async fn cleanup(prefix: &str, state_root: &Path) -> Result<CleanupReport, LabError> {
    super::plan::validate_prefix(prefix)?;
    let state = StateDir::new(state_root, prefix);
    let mut report = CleanupReport::default();
    // The current process cleans up its own lab itself (Lab::down); never signal it.
    if let Some(owner) = state.live_owner().filter(|pid| *pid != std::process::id()) {
        report.owner_stopped = Some(owner);
        // An owner that exited meanwhile fails the signal; the loop below sees it gone.
        send_signal(owner, Signal::Term).await.ok();
        let deadline = Instant::now() + Duration::from_secs(15);
        while process_exists(owner) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if process_exists(owner)
            && let Err(error) = send_signal(owner, Signal::Kill).await
        {
            tracing::warn!(%error, pid = owner, "killing the lab's owner");
        }
    }
    for pid in state.recorded_children() {
        if send_signal(pid, Signal::Kill).await.is_ok() {
            report.killed.push(pid);
        }
    }
    let namespaces = lab_namespaces(prefix).await?;
    for ns in &namespaces {
        for pid in net::namespace_pids(ns).await {
            if pid != std::process::id() && send_signal(pid, Signal::Kill).await.is_ok() {
                report.killed.push(pid);
            }
        }
    }
    // Killed processes may take a moment to leave; a namespace is deleted either way
    // (its name goes at once, the kernel frees it when the last process is gone).
    let deadline = Instant::now() + Duration::from_secs(5);
    while report.killed.iter().any(|p| process_exists(*p)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut first_error = None;
    for ns in namespaces {
        match net::delete_namespace(&ns).await {
            Ok(()) => report.namespaces.push(ns),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    unmount_bpf(&state);
    if state.root().exists() {
        std::fs::remove_dir_all(state.root()).map_err(|source| LabError::Io {
            path: state.root().to_path_buf(),
            source,
        })?;
        report.state_dir_removed = true;
    }
    report.killed.sort_unstable();
    report.killed.dedup();
    match first_error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// Removes every lab under `state_root` whose owner process is gone (a crashed `up`, a
/// killed test run), leaving running labs alone. Returns what each removal did.
pub async fn cleanup_stale(state_root: &Path) -> Result<Vec<(String, CleanupReport)>, LabError> {
    let entries = match std::fs::read_dir(state_root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(LabError::Io {
                path: state_root.to_path_buf(),
                source,
            });
        }
    };
    let mut prefixes: Vec<String> = entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|name| super::plan::validate_prefix(name).is_ok())
        .collect();
    prefixes.sort();
    let mut removed = Vec::new();
    for prefix in prefixes {
        if StateDir::new(state_root, &prefix).live_owner().is_none() {
            removed.push((prefix.clone(), cleanup(&prefix, state_root).await?));
        }
    }
    Ok(removed)
}

/// Blocking best-effort variant of [`cleanup`] for `Drop` (no owner handling: the caller
/// is the owner).
pub fn cleanup_blocking(prefix: &str, state_root: &Path) {
    let state = StateDir::new(state_root, prefix);
    let run = |args: &[&str]| {
        std::process::Command::new("ip")
            .args(args)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let mut pids = state.recorded_children();
    let namespaces: Vec<String> = run(&["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| LabPlan::owns_namespace(prefix, ns))
        .map(str::to_string)
        .collect();
    for ns in &namespaces {
        pids.extend(
            run(&["netns", "pids", ns])
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    for pid in pids.into_iter().filter(|p| *p != std::process::id()) {
        super::supervisor::send_signal_blocking(pid, Signal::Kill);
    }
    for ns in &namespaces {
        run(&["netns", "del", ns]);
    }
    unmount_bpf(&state);
    herald_testkit::cleanup(
        format!("removing {}", state.root().display()),
        std::fs::remove_dir_all(state.root()),
    );
}

/// The last `lines` lines of a log file: a failure's explanation, printed before the state
/// directory that holds the log is cleaned up.
pub(crate) fn log_tail(path: &Path, lines: usize) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let all: Vec<&str> = text.lines().collect();
    Ok(all[all.len().saturating_sub(lines)..].join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_read_from_dfs_second_line() {
        assert_eq!(free_mib("Avail\n  17408\n"), Some(17408));
        assert_eq!(free_mib(" Avail\n0\n"), Some(0));
        assert_eq!(free_mib("Avail\n"), None);
        assert_eq!(free_mib("df: /nowhere: No such file or directory\n"), None);
    }

    #[test]
    fn a_log_tail_is_the_last_lines_or_all_of_a_short_log() {
        let dir = std::env::temp_dir().join(format!("herald-log-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("etcd.log");
        std::fs::write(&log, "one\ntwo\nthree\n").unwrap();
        assert_eq!(log_tail(&log, 2).unwrap(), "two\nthree");
        assert_eq!(log_tail(&log, 10).unwrap(), "one\ntwo\nthree");
        assert!(log_tail(&dir.join("missing.log"), 2).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
