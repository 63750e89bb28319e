//! What Herald's network-namespace tests and benches share (the Kubernetes lab, `herald-e2e`,
//! builds on the same `ip netns` conventions asynchronously):
//! - whether a privileged test may run: root and the tools it drives, and under `CI=true` it
//!   must (a missing one fails the test instead of skipping it);
//! - running commands, on the host or inside a namespace;
//! - [`Namespaces`]: network namespaces deleted when dropped (also on panic), and those a
//!   killed test process left behind removed by the next one;
//! - [`Segment`]: a switch that namespaces plug into, whose cables can be pulled;
//! - threads inside a namespace ([`in_netns`], [`enter_netns`]);
//! - [`cleanup`]: a clean-up step that reports what it could not undo instead of panicking;
//! - [`yaml_files`]: the manifests in a folder, for tests that read every sample;
//! - topologies: [`l2`] (a client and nodes on one switch) and [`routed`] (a client, nodes
//!   and their pods, routed).
use std::process::Command;

pub mod l2;
pub mod routed;

/// Why a privileged test cannot run here (not root, a tool missing), if it cannot.
pub fn missing_prerequisite(tools: &[&str]) -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        return Some("not running as root (network namespaces and eBPF need it)".into());
    }
    for tool in tools {
        let found = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
        if !found {
            return Some(format!("`{tool}` not found on PATH (make deps installs it)"));
        }
    }
    None
}

/// Whether `test` may run: true when root and `tools` are there; otherwise [`skip`].
pub fn may_run(test: &str, tools: &[&str]) -> bool {
    match missing_prerequisite(tools) {
        None => true,
        Some(reason) => {
            skip(test, reason);
            false
        }
    }
}

/// `test` cannot run here for `reason`: under `CI=true` that fails it loudly (CI must run every
/// test); elsewhere it prints why, and the caller returns.
pub fn skip(test: &str, reason: impl std::fmt::Display) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: {reason}, and CI=true forbids skipping");
    }
    eprintln!("SKIP {test}: {reason}");
}

/// Runs `program args…` and returns its stdout; panics with its output if it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("running {program} {args:?}: {error}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `program args…` inside namespace `ns` and returns its stdout, whether or not it
/// succeeded (probes that are expected to fail read their output too).
pub fn run_in(ns: &str, program: &str, args: &[&str]) -> String {
    let output = Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("running {program} in {ns}: {error}"));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Moves the calling thread into network namespace `ns` (a name under `/run/netns`, or a
/// path). Sockets it opens afterwards, and threads it spawns, live there.
pub fn enter_netns(ns: &str) {
    use std::os::fd::AsRawFd;
    let path = if ns.starts_with('/') {
        ns.to_string()
    } else {
        format!("/run/netns/{ns}")
    };
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: setns on a valid fd we own; it only changes this thread's network namespace.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// Runs `f` on a new thread inside namespace `ns` and returns its result.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns);
        f()
    })
    .join()
    .expect("thread in netns panicked")
}

/// Network namespaces named `<prefix>-<role>`, deleted (last made first) when dropped or by
/// [`Namespaces::delete_all`].
///
/// A prefix starts with a kind and the test process's pid (`<kind>-<pid>-…`, see
/// [`Namespaces::new`]): namespaces whose process is gone (a test killed before its drop ran)
/// are removed by the next [`Namespaces::new`] of that kind.
pub struct Namespaces {
    prefix: String,
    created: Vec<String>,
}

impl Namespaces {
    /// Namespaces of kind `kind` (e.g. `hrl-dp`) for this process, told apart by `instance`;
    /// removes the namespaces of that kind whose process has exited.
    pub fn new(kind: &str, instance: impl std::fmt::Display) -> Namespaces {
        remove_orphans(kind);
        Namespaces {
            prefix: format!("{kind}-{}-{instance}", std::process::id()),
            created: Vec::new(),
        }
    }

    /// `<kind>-<pid>-<instance>`: what every name starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The name of the namespace for `role` (made or not).
    pub fn name(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// Makes the namespace for `role`, with its loopback up, and returns its name.
    pub fn add(&mut self, role: &str) -> String {
        let name = self.name(role);
        run("ip", &["netns", "add", &name]);
        self.created.push(name.clone());
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// Deletes every namespace made so far, last made first (their links go with them).
    pub fn delete_all(&mut self) {
        while let Some(ns) = self.created.pop() {
            delete_netns(&ns);
        }
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        self.delete_all();
    }
}

/// A layer-2 segment: bridge `br0` in a namespace of its own (the switch) that forwards and
/// floods at once (no STP delay, no multicast snooping). Namespaces plug in through veth
/// pairs, whose switch side is the port a cable can be pulled from.
pub struct Segment {
    switch: String,
}

impl Segment {
    /// Makes the bridge in namespace `switch` (which must exist).
    pub fn new(switch: &str) -> Segment {
        run("ip", &["-n", switch, "link", "add", "br0", "type", "bridge"]);
        run(
            "ip",
            &[
                "-n",
                switch,
                "link",
                "set",
                "br0",
                "type",
                "bridge",
                "forward_delay",
                "0",
                "mcast_snooping",
                "0",
            ],
        );
        run("ip", &["-n", switch, "link", "set", "br0", "up"]);
        Segment {
            switch: switch.to_string(),
        }
    }

    /// The switch's namespace.
    pub fn switch(&self) -> &str {
        &self.switch
    }

    /// Plugs namespace `ns` in: its link `link` with address `mac`, up, reaches the switch
    /// through port `port` (at most 15 characters).
    pub fn plug(&self, ns: &str, link: &str, mac: &str, port: &str) {
        let sw = self.switch.as_str();
        run(
            "ip",
            &[
                "-n", sw, "link", "add", port, "type", "veth", "peer", "name", link, "netns", ns,
            ],
        );
        run("ip", &["-n", sw, "link", "set", port, "master", "br0", "up"]);
        run("ip", &["-n", ns, "link", "set", link, "address", mac, "up"]);
    }

    /// Pulls the cable of `port` at the switch (`connected: false`), or plugs it back in: the
    /// namespace behind it keeps its addresses and routes, and what it sends meanwhile is lost.
    pub fn set_cable(&self, port: &str, connected: bool) {
        let state = if connected { "up" } else { "down" };
        run("ip", &["-n", &self.switch, "link", "set", port, state]);
    }
}

/// Adds `address/prefix` to `link` in namespace `ns` (IPv6 without duplicate address
/// detection, so it is usable at once).
pub fn add_address(ns: &str, link: &str, address: std::net::IpAddr, prefix: u8) {
    let cidr = format!("{address}/{prefix}");
    let mut args = vec!["-n", ns, "addr", "add", cidr.as_str(), "dev", link];
    if address.is_ipv6() {
        args.push("nodad");
    }
    run("ip", &args);
}

/// Deletes namespace `name`; a namespace already gone is fine, and any other failure is
/// printed (this runs in `Drop`, so it must not panic; a leaked namespace shows in the output).
fn delete_netns(name: &str) {
    match Command::new("ip").args(["netns", "delete", name]).output() {
        Ok(output) if output.status.success() => {}
        Ok(output) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            if !stderr.contains("No such file") {
                eprintln!("deleting network namespace {name}: {}", stderr.trim());
            }
        }
        Err(error) => eprintln!("deleting network namespace {name}: running ip: {error}"),
    }
}

/// A clean-up step that may find nothing left to do (a missing file or process is what it
/// wanted) and must not panic (it runs in `Drop`, and after a test has failed): any other
/// failure is printed, so a leak shows in the test's output.
pub fn cleanup<T>(what: impl std::fmt::Display, result: std::io::Result<T>) {
    match result {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => eprintln!("cleanup: {what}: {error}"),
        _ => {}
    }
}

/// The `.yaml` files in `dir`, sorted by name; panics if `dir` cannot be read.
pub fn yaml_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// The pid in a name made by [`Namespaces::new`] of kind `kind`, if it is one.
fn owner_pid(kind: &str, name: &str) -> Option<u32> {
    let rest = name.strip_prefix(kind)?.strip_prefix('-')?;
    rest.split('-').next()?.parse().ok()
}

/// Deletes the namespaces of kind `kind` whose test process has exited.
fn remove_orphans(kind: &str) {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten().take(10_000) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if owner_pid(kind, &name).is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            delete_netns(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn only_names_of_the_kind_with_a_pid_have_an_owner() {
        assert_eq!(owner_pid("hrl-dp", "hrl-dp-4242-7-node1"), Some(4242));
        assert_eq!(owner_pid("hrl-dp", "hrl-dpx-4242-7-node1"), None);
        assert_eq!(owner_pid("hrl-dp", "hrl-dp-lab-node1"), None);
        assert_eq!(owner_pid("hrl-ann", "hrl-dp-4242-7-node1"), None);
    }
}
