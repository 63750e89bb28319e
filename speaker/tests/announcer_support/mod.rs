//! The announcer's part of the L2 lab ([`herald_testkit::l2`]), for its tests and the ARP
//! flood bench. The announcer runs in a node namespace as a child process: the test (or bench)
//! binary re-executes itself under `ip netns exec <node> …` in helper mode ([`run_helper`]),
//! which gives it the namespace's links and its own `/sys`, and is driven by text lines on
//! stdin. Separate processes also give the announcer's RSS on its own.
// Each test or bench that includes this uses part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use herald_speaker::announcer::{AnnounceTarget, Announcer, AnnouncerConfig};
use herald_speaker::links::{self, InterfacePolicy, LinkWatch, SystemInterfaces};

/// Environment variable that turns a re-executed test/bench binary into an announcer helper.
pub const HELPER_ENV: &str = "HERALD_ANNOUNCER_HELPER";
/// Comma-separated explicit interface list for the helper (empty: default selection).
pub const HELPER_INTERFACES_ENV: &str = "HERALD_ANNOUNCER_INTERFACES";
/// Comma-separated burst offsets in milliseconds for the helper (empty: the default burst).
pub const HELPER_BURST_ENV: &str = "HERALD_ANNOUNCER_BURST_MS";
/// Nice value for the helper's reader threads (`AnnouncerConfig::reader_nice`).
pub const HELPER_READER_NICE_ENV: &str = "HERALD_ANNOUNCER_READER_NICE";

/// An announcer helper process in a node namespace.
pub struct Helper {
    child: Child,
    stdin: ChildStdin,
    /// Lines of the helper's stdout, read by a thread so waits can time out.
    lines: mpsc::Receiver<String>,
    /// Usable interfaces reported at start.
    pub usable: String,
}

impl Helper {
    /// Starts `exe args…` (this binary in helper mode) inside `ns`.
    pub fn start(ns: &str, exe_args: &[String], interfaces: &str, burst_ms: &str) -> Helper {
        Helper::start_wrapped(ns, &[], exe_args, interfaces, burst_ms)
    }

    /// Like [`Helper::start`], with `wrapper` (e.g. `nice -n -10`) in front of the binary.
    pub fn start_wrapped(ns: &str, wrapper: &[&str], exe_args: &[String], interfaces: &str, burst_ms: &str) -> Helper {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(wrapper)
            .arg(exe)
            .args(exe_args)
            .env(HELPER_ENV, "1")
            .env(HELPER_INTERFACES_ENV, interfaces)
            .env(HELPER_BURST_ENV, burst_ms)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn helper");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (line_tx, lines) = mpsc::channel();
        std::thread::spawn(move || forward_lines(stdout, &line_tx));
        let mut helper = Helper {
            child,
            stdin,
            lines,
            usable: String::new(),
        };
        helper.usable = helper.expect_line("ready");
        helper
    }

    /// Reads lines until one starting with `HERALD <word>`; returns the rest. Bounded: the
    /// helper answers every command at once, and exits (EOF) if anything goes wrong.
    fn expect_line(&mut self, word: &str) -> String {
        let prefix = format!("HERALD {word}");
        let deadline = Instant::now() + HELPER_ANSWER_TIMEOUT;
        for _ in 0..1000 {
            let wait = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(wait) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("helper silent for {HELPER_ANSWER_TIMEOUT:?}, want {prefix}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!("helper exited while waiting for {prefix}"),
            };
            // The test harness may print "test … ... " on the same line before ours.
            if let Some(at) = line.find(&prefix) {
                return line[at + prefix.len()..].trim().to_string();
            }
        }
        panic!("helper never said {prefix}");
    }

    fn command(&mut self, line: &str, answer: &str) -> String {
        writeln!(self.stdin, "{line}").expect("write helper");
        self.stdin.flush().expect("flush helper");
        self.expect_line(answer)
    }

    /// Replaces the owned set; returns once the helper's `set_owned` returned.
    pub fn own(&mut self, ips: &[&str]) {
        self.command(&format!("own {}", ips.join(" ")), "ok");
    }

    /// Owns `count` consecutive IPv4 addresses from `first`.
    pub fn own_range(&mut self, first: Ipv4Addr, count: u32) {
        self.command(&format!("own-range {first} {count}"), "ok");
    }

    /// (VmRSS, VmHWM) in kB.
    pub fn rss_kb(&mut self) -> (u64, u64) {
        let answer = self.command("rss", "rss");
        let mut numbers = answer.split_whitespace().map(|n| n.parse().unwrap_or(0));
        (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
    }

    /// The helper's usable interfaces right now, comma-separated.
    pub fn usable_now(&mut self) -> String {
        self.command("usable", "usable")
    }

    /// The interfaces outside the node-wide selection that an advertisement may name.
    pub fn others_now(&mut self) -> String {
        self.command("others", "others")
    }

    /// (CPU time, time spent runnable but waiting for a CPU) of all the helper's threads, in
    /// nanoseconds, from `/proc/self/task/*/schedstat`.
    pub fn cpu_and_wait_ns(&mut self) -> (u64, u64) {
        let answer = self.command("sched", "sched");
        let mut numbers = answer.split_whitespace().map(|n| n.parse().unwrap_or(0));
        (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
    }

    /// The helper's status line (debug text).
    pub fn status(&mut self) -> String {
        self.command("status", "status")
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        // The helper may have exited already; it is killed below if not.
        writeln!(self.stdin, "quit").and_then(|()| self.stdin.flush()).ok();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        herald_testkit::cleanup("killing the announcer helper", self.child.kill());
        herald_testkit::cleanup("waiting for the announcer helper", self.child.wait());
    }
}

/// The longest the helper may take to answer a command (starting includes opening links).
const HELPER_ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// Sends each line of `stdout` to `lines` until EOF or the receiver is gone.
fn forward_lines(stdout: BufReader<ChildStdout>, lines: &mpsc::Sender<String>) {
    for line in stdout.lines() {
        let Ok(line) = line else { return };
        if lines.send(line).is_err() {
            return;
        }
    }
}

fn vm_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Sums (CPU time, run-queue wait) over this process's threads.
fn thread_times_ns() -> (u64, u64) {
    let mut totals = (0, 0);
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        let mut fields = text.split_whitespace().map(|n| n.parse::<u64>().unwrap_or(0));
        totals.0 += fields.next().unwrap_or(0);
        totals.1 += fields.next().unwrap_or(0);
    }
    totals
}

/// Helper mode: runs an announcer in this process, driven by lines on stdin:
/// `own <ip>…`, `own-range <first-ipv4> <count>`, `status`, `rss`, `quit`.
pub fn run_helper() {
    let explicit = std::env::var(HELPER_INTERFACES_ENV).unwrap_or_default();
    let explicit: Vec<String> = explicit
        .split(',')
        .filter(|name| !name.is_empty())
        .map(String::from)
        .collect();
    let mut config = AnnouncerConfig {
        interfaces: InterfacePolicy {
            explicit: (!explicit.is_empty()).then_some(explicit),
            ..InterfacePolicy::default()
        },
        ..AnnouncerConfig::default()
    };
    config.reader_nice = std::env::var(HELPER_READER_NICE_ENV)
        .ok()
        .and_then(|nice| nice.parse().ok());
    let burst = std::env::var(HELPER_BURST_ENV).unwrap_or_default();
    if !burst.is_empty() {
        config.schedule.burst = burst
            .split(',')
            .map(|ms| Duration::from_millis(ms.parse().expect("burst offset in ms")))
            .collect();
    }
    let link_watch = LinkWatch::start(SystemInterfaces, links::POLL_INTERVAL).expect("list the links");
    let announcer = Announcer::start(config, link_watch.subscribe()).expect("start announcer");
    println!("HERALD ready {}", announcer.usable_interfaces().join(","));
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let mut words = line.split_whitespace();
        match words.next() {
            Some("own") => {
                let owned: BTreeMap<IpAddr, AnnounceTarget> = words
                    .map(|ip| (ip.parse().expect("ip"), AnnounceTarget::default()))
                    .collect();
                announcer.set_owned(owned);
                println!("HERALD ok");
            }
            Some("own-range") => {
                let first: Ipv4Addr = words.next().and_then(|ip| ip.parse().ok()).expect("first ip");
                let count: u32 = words.next().and_then(|n| n.parse().ok()).expect("count");
                let owned = (0..count)
                    .map(|offset| {
                        (
                            IpAddr::V4(Ipv4Addr::from(u32::from(first) + offset)),
                            AnnounceTarget::default(),
                        )
                    })
                    .collect();
                announcer.set_owned(owned);
                println!("HERALD ok");
            }
            Some("status") => {
                let status = announcer.status();
                println!(
                    "HERALD status usable={:?} announced={} errors={:?}",
                    status.usable_interfaces,
                    status.announced.len(),
                    status.link_errors
                );
            }
            Some("usable") => println!("HERALD usable {}", announcer.usable_interfaces().join(",")),
            Some("others") => println!("HERALD others {}", announcer.other_interfaces().join(",")),
            Some("sched") => {
                let (cpu, wait) = thread_times_ns();
                println!("HERALD sched {cpu} {wait}");
            }
            Some("rss") => println!("HERALD rss {} {}", vm_kb("VmRSS:"), vm_kb("VmHWM:")),
            Some("quit") => break,
            _ => println!("HERALD error unknown command {line:?}"),
        }
        std::io::stdout().flush().expect("write to the test through stdout");
    }
    announcer.shutdown();
}
