//! Runs the lab's own processes (the control plane, the API relay; Pods are the
//! [`kubelet`](super::kubelet)'s): each one in its network namespace (`ip netns exec`) or on
//! the host, output appended to a log file, restarted after a delay whenever it exits while it
//! should be running, and stopped with SIGTERM then SIGKILL.
//!
//! Every child gets its own process group, so the Ctrl-C a terminal sends to `herald-lab
//! up` reaches the lab only, and the lab decides how its children stop. The current pid
//! is kept in a pid file, so `herald-lab down` can end the children of a lab that crashed.

use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use super::LabError;

/// How long a process gets between SIGTERM and SIGKILL when the lab stops it.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A signal the lab can send to a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Signal {
    /// SIGTERM: graceful stop (a pod deletion).
    Term,
    /// SIGKILL: crash (OOM kill, node power loss as far as the process is concerned).
    Kill,
    /// SIGINT.
    Int,
    /// SIGSTOP: freeze (a hung process: sockets stay open, nothing answers).
    Stop,
    /// SIGCONT: thaw after [`Signal::Stop`].
    Cont,
}

impl Signal {
    /// The name `kill -s` takes.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
            Signal::Int => "INT",
            Signal::Stop => "STOP",
            Signal::Cont => "CONT",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIG{}", self.name())
    }
}

/// Sends `signal` to `pid` with kill(1); the lab forbids unsafe code, so no kill(2) here.
pub(crate) async fn send_signal(pid: u32, signal: Signal) -> Result<(), LabError> {
    super::net::run("kill", &["-s", signal.name(), &pid.to_string()])
        .await
        .map(|_| ())
}

/// Blocking variant of [`send_signal`] for `Drop`: a process already gone is no error, and a
/// `kill` that cannot run is printed.
pub(crate) fn send_signal_blocking(pid: u32, signal: Signal) {
    herald_testkit::cleanup(
        format!("sending {} to {pid}", signal.name()),
        std::process::Command::new("kill")
            .args(["-s", signal.name(), &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status(),
    );
}

/// What to run and where.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// Name in logs and of the log and pid files, e.g. `speaker-node1`.
    pub name: String,
    /// Network namespace to run in; None runs in the lab's own namespace.
    pub netns: Option<String>,
    /// Executable.
    pub program: PathBuf,
    /// Arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Log file (stdout and stderr, appended across restarts).
    pub log_file: PathBuf,
    /// File holding the current pid while the process runs.
    pub pid_file: PathBuf,
    /// Pause between an exit and the restart.
    pub restart_delay: Duration,
}

struct Shared {
    spec: ProcessSpec,
    /// Whether the process should be running.
    wanted: watch::Sender<bool>,
    /// The running process's pid.
    pid: watch::Sender<Option<u32>>,
    /// How many times the process was started.
    starts: AtomicU32,
}

/// A supervised process. Dropping it kills the process (tokio's kill-on-drop) once the
/// supervising task ends; call [`Supervised::shutdown`] for a graceful stop.
pub struct Supervised {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Supervised {
    /// Starts supervising (the first start happens at once).
    pub fn start(spec: ProcessSpec) -> Self {
        Self::supervise(spec, true)
    }

    /// Supervises a process that stays stopped until [`Supervised::resume`].
    pub fn stopped(spec: ProcessSpec) -> Self {
        Self::supervise(spec, false)
    }

    fn supervise(spec: ProcessSpec, running: bool) -> Self {
        let shared = Arc::new(Shared {
            spec,
            wanted: watch::channel(running).0,
            pid: watch::channel(None).0,
            starts: AtomicU32::new(0),
        });
        let task = tokio::spawn(supervise(shared.clone()));
        Self { shared, task }
    }

    /// The process name.
    pub fn name(&self) -> &str {
        &self.shared.spec.name
    }

    /// The log file.
    pub fn log_file(&self) -> &std::path::Path {
        &self.shared.spec.log_file
    }

    /// The pid of the running process, if it runs.
    pub fn pid(&self) -> Option<u32> {
        *self.shared.pid.borrow()
    }

    /// Follows the pid: `Some` while a process runs, `None` between runs.
    pub fn subscribe_pid(&self) -> watch::Receiver<Option<u32>> {
        self.shared.pid.subscribe()
    }

    /// How many times the process was started so far.
    pub fn starts(&self) -> u32 {
        self.shared.starts.load(Ordering::SeqCst)
    }

    /// Sends a signal to the running process; the supervisor restarts it if it exits.
    pub async fn signal(&self, signal: Signal) -> Result<u32, LabError> {
        let pid = self.pid().ok_or_else(|| LabError::NotRunning {
            process: self.name().to_string(),
        })?;
        send_signal(pid, signal).await?;
        Ok(pid)
    }

    /// Waits until a process runs whose pid is not `old`, for at most `timeout`.
    pub async fn wait_for_new_pid(&self, old: Option<u32>, timeout: Duration) -> Result<u32, LabError> {
        let mut rx = self.shared.pid.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|p| p.is_some() && *p != old)).await;
        match waited {
            Ok(Ok(pid)) => Ok(pid.expect("checked by the predicate")),
            _ => Err(LabError::Timeout {
                what: format!("{} to (re)start", self.name()),
            }),
        }
    }

    /// Waits until a process runs, for at most `timeout`.
    pub async fn wait_running(&self, timeout: Duration) -> Result<u32, LabError> {
        self.wait_for_new_pid(None, timeout).await
    }

    /// Stops the process (SIGTERM, SIGKILL after a grace period) and keeps it stopped.
    pub async fn stop(&self) {
        self.shared.wanted.send_replace(false);
        let mut rx = self.shared.pid.subscribe();
        if tokio::time::timeout(STOP_GRACE + Duration::from_secs(2), rx.wait_for(Option::is_none))
            .await
            .is_err()
        {
            tracing::warn!(process = %self.shared.spec.name, "still running after SIGKILL");
        }
    }

    /// Lets a stopped process run again (at once, without the restart delay).
    pub fn resume(&self) {
        self.shared.wanted.send_replace(true);
    }

    /// Stops the process and ends supervision.
    pub async fn shutdown(self) {
        self.stop().await;
        // Drop aborts the supervising task.
    }

    /// Best-effort synchronous kill for `Drop` paths.
    pub fn kill_now(&self) {
        self.shared.wanted.send_replace(false);
        if let Some(pid) = self.pid() {
            send_signal_blocking(pid, Signal::Kill);
        }
        self.task.abort();
        herald_testkit::cleanup(
            format!("removing {}", self.shared.spec.pid_file.display()),
            std::fs::remove_file(&self.shared.spec.pid_file),
        );
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Appends one line from the lab itself to a process's log file.
fn note(spec: &ProcessSpec, line: &str) {
    append_note(&spec.log_file, "herald-lab", line);
}

/// Appends `line`, timestamped and marked as written by `who`, to the log file `log` (best
/// effort): the lab's words beside a process's own output.
pub(crate) fn append_note(log: &std::path::Path, who: &str, line: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
        // A note that cannot be written is lost; the process's own log still has its story.
        writeln!(f, "{now} [{who}] {line}").ok();
    }
}

fn spawn(spec: &ProcessSpec) -> std::io::Result<tokio::process::Child> {
    let mut cmd = match &spec.netns {
        Some(ns) => {
            let mut cmd = tokio::process::Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(&spec.program);
            cmd
        }
        None => tokio::process::Command::new(&spec.program),
    };
    cmd.args(&spec.args).envs(spec.env.iter().map(|(k, v)| (k, v)));
    spawn_logged(cmd, &spec.log_file)
}

/// Starts `cmd` as a lab child: no stdin, stdout and stderr appended to `log`, its own process
/// group (a terminal's Ctrl-C reaches the lab only) and killed if its handle is dropped.
pub(crate) fn spawn_logged(
    mut cmd: tokio::process::Command,
    log: &std::path::Path,
) -> std::io::Result<tokio::process::Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .process_group(0)
        .kill_on_drop(true);
    cmd.spawn()
}

/// Resolves once the flag equals `value` (true) or its sender is gone (false). The
/// borrow guard of `wait_for` is not `Send`, so it is dropped here, inside.
async fn wait_until(flag: &mut watch::Receiver<bool>, value: bool) -> bool {
    flag.wait_for(|v| *v == value).await.is_ok()
}

async fn supervise(shared: Arc<Shared>) {
    let spec = &shared.spec;
    let mut wanted = shared.wanted.subscribe();
    loop {
        if !wait_until(&mut wanted, true).await {
            return;
        }
        let mut child = match spawn(spec) {
            Ok(child) => child,
            Err(e) => {
                tracing::warn!(process = %spec.name, error = %e, "cannot start; retrying");
                note(spec, &format!("cannot start: {e}"));
                tokio::time::sleep(spec.restart_delay).await;
                continue;
            }
        };
        // `ip netns exec` execs the program, so the child's pid is the program's pid.
        let pid = child.id();
        let starts = shared.starts.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(pid) = pid
            && let Err(e) = std::fs::write(&spec.pid_file, format!("{pid}\n"))
        {
            tracing::warn!(error = %e, file = %spec.pid_file.display(), "cannot record the process's pid");
        }
        shared.pid.send_replace(pid);
        note(spec, &format!("started pid {} (start #{starts})", pid.unwrap_or(0)));
        tracing::debug!(process = %spec.name, pid, starts, "started");

        let status = tokio::select! {
            status = child.wait() => status,
            _ = wait_until(&mut wanted, false) => {
                if let Some(pid) = pid {
                    // A process already gone fails the signal; the wait below finds that out.
                    send_signal(pid, Signal::Term).await.ok();
                }
                match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                    Ok(status) => status,
                    Err(_) => {
                        tracing::warn!(process = %spec.name, pid, "no exit within the grace period after SIGTERM; sending SIGKILL");
                        note(spec, &format!("no exit {STOP_GRACE:?} after SIGTERM; sending SIGKILL"));
                        // An exited child fails the kill; the wait returns its status.
                        child.start_kill().ok();
                        child.wait().await
                    }
                }
            }
        };
        herald_testkit::cleanup(
            format!("removing {}", spec.pid_file.display()),
            std::fs::remove_file(&spec.pid_file),
        );
        shared.pid.send_replace(None);
        let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
        if *wanted.borrow() {
            tracing::warn!(
                process = %spec.name,
                pid,
                %status,
                delay_ms = spec.restart_delay.as_millis() as u64,
                "exited; restarting after the delay"
            );
            note(
                spec,
                &format!(
                    "pid {} exited ({status}); restarting in {:?}",
                    pid.unwrap_or(0),
                    spec.restart_delay
                ),
            );
            // The delay ends early on a stop request, which cancels the restart.
            tokio::time::timeout(spec.restart_delay, wait_until(&mut wanted, false))
                .await
                .ok();
        } else {
            note(spec, &format!("pid {} stopped ({status})", pid.unwrap_or(0)));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    struct Scratch(PathBuf);
    impl Scratch {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("herald-supervisor-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            herald_testkit::cleanup(
                format!("removing {}", self.0.display()),
                std::fs::remove_dir_all(&self.0),
            );
        }
    }

    fn spec(dir: &Scratch, script: &str, delay: Duration) -> ProcessSpec {
        ProcessSpec {
            name: "test".into(),
            netns: None,
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), script.into()],
            env: vec![("GREETING".into(), "hello".into())],
            log_file: dir.0.join("test.log"),
            pid_file: dir.0.join("test.pid"),
            restart_delay: delay,
        }
    }

    #[tokio::test]
    async fn a_process_that_exits_is_restarted_after_the_delay() {
        let dir = Scratch::new("restart");
        let process = Supervised::start(spec(&dir, "echo $GREETING; exit 3", Duration::from_millis(300)));
        let first = process.wait_running(Duration::from_secs(5)).await.unwrap();
        let started = Instant::now();
        let second = process
            .wait_for_new_pid(Some(first), Duration::from_secs(5))
            .await
            .unwrap();
        assert_ne!(first, second);
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "{:?}",
            started.elapsed()
        );
        process.shutdown().await;
        let log = std::fs::read_to_string(dir.0.join("test.log")).unwrap();
        assert!(log.contains("hello"), "{log}");
        assert!(log.contains("exited (exit status: 3); restarting in 300ms"), "{log}");
    }

    #[tokio::test]
    async fn signals_restart_and_stop_keeps_it_down() {
        let dir = Scratch::new("signal");
        let process = Supervised::start(spec(&dir, "exec sleep 30", Duration::from_millis(100)));
        let pid = process.wait_running(Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.0.join("test.pid")).unwrap().trim(),
            pid.to_string()
        );
        assert_eq!(process.signal(Signal::Kill).await.unwrap(), pid);
        let restarted = process
            .wait_for_new_pid(Some(pid), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(process.starts(), 2);

        process.stop().await;
        assert_eq!(process.pid(), None);
        assert!(!std::path::Path::new(&format!("/proc/{restarted}")).exists());
        assert!(!dir.0.join("test.pid").exists());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(process.starts(), 2, "a stopped process stays stopped");
        assert!(matches!(
            process.signal(Signal::Term).await,
            Err(LabError::NotRunning { .. })
        ));

        process.resume();
        let resumed = process.wait_running(Duration::from_secs(5)).await.unwrap();
        assert_ne!(resumed, restarted);
        process.shutdown().await;
    }

    #[test]
    fn signal_names() {
        assert_eq!(Signal::Kill.to_string(), "SIGKILL");
        assert_eq!(Signal::Stop.name(), "STOP");
    }
}
