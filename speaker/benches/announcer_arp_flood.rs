//! ARP flood load test of the layer-2 announcer (a bench binary, not a timed test).
//!
//! Builds the namespace lab (client + node A on a bridge), runs the announcer in node A as a
//! separate process owning 10,000 IPv4 addresses, and floods ARP requests for them from the
//! client with a raw (AF_PACKET) socket at a fixed rate. Reports replies/s, reply latency
//! measured on the wire (tcpdump capture timestamps on the client's link, nanosecond
//! precision) and in the flooding process, and the announcer process's RSS.
//!
//! Run as root: `cargo bench -p herald-speaker --bench announcer_arp_flood`
//! (`HERALD_FLOOD_RATE`, `HERALD_FLOOD_SECS`, `HERALD_FLOOD_IPS` change the defaults 10000/s,
//! 5 s, 10000 IPs; `HERALD_FLOOD_READER_NICE=-10` sets the announcer's `reader_nice`).
//! Without root or tcpdump it prints why and exits 0.

#[path = "../tests/announcer_support/mod.rs"]
mod announcer_support;

use std::collections::HashMap;
use std::io::Read;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use announcer_support::{HELPER_ENV, HELPER_READER_NICE_ENV, Helper, run_helper};
use herald_speaker::announcer::{MacAddr, arp};
use herald_testkit::cleanup;
use herald_testkit::l2::{CLIENT_MAC, CLIENT_V4, L2Lab};
use herald_testkit::missing_prerequisite;

const FIRST_VIP: Ipv4Addr = Ipv4Addr::new(10, 204, 0, 0);

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::var_os(HELPER_ENV).is_some() {
        run_helper();
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|arg| arg == "--flood") {
        flood(&args[at + 1..]);
        return;
    }
    if let Some(reason) = missing_prerequisite(&["ip", "tcpdump"]) {
        println!("announcer_arp_flood: skipped: {reason}");
        return;
    }
    orchestrate();
}

/// Percentile of sorted nanoseconds, in microseconds.
fn percentile_us(sorted: &[u64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[at] as f64 / 1000.0
}

fn orchestrate() {
    let rate = env_number("HERALD_FLOOD_RATE", 10_000);
    let seconds = env_number("HERALD_FLOOD_SECS", 5);
    let ips = env_number("HERALD_FLOOD_IPS", 10_000) as u32;
    let lab = L2Lab::new(false);
    // HERALD_FLOOD_READER_NICE=-10 sets `AnnouncerConfig::reader_nice`, to tell the
    // announcer's own cost from the time its reader waits behind other load for a CPU.
    let nice = std::env::var("HERALD_FLOOD_READER_NICE").unwrap_or_default();
    let nice_env = format!("{HELPER_READER_NICE_ENV}={nice}");
    let wrapper: Vec<&str> = if nice.is_empty() {
        vec![]
    } else {
        vec!["env", &nice_env]
    };
    let mut announcer = Helper::start_wrapped(&lab.node_a, &wrapper, &[], "veth-lan", "");
    let (rss_idle, _) = announcer.rss_kb();
    let owned_at = Instant::now();
    announcer.own_range(FIRST_VIP, ips);
    let set_owned_took = owned_at.elapsed();
    // Let the gratuitous burst for every IP (last repeat at 4 s, 10,000 frames per repeat)
    // finish before measuring.
    std::thread::sleep(Duration::from_millis(6000));
    let (rss_owned, _) = announcer.rss_kb();

    let capture = format!("/tmp/hrl-ann-flood-{}.pcap", std::process::id());
    let mut tcpdump = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.client,
            "tcpdump",
            "-i",
            "lan0",
            "-n",
            "-s",
            "64",
            "-B",
            "65536",
        ])
        .args(["--time-stamp-precision=nano", "-w", &capture, "arp"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tcpdump");
    std::thread::sleep(Duration::from_millis(1500));

    let (cpu_before, wait_before) = announcer.cpu_and_wait_ns();
    let exe = std::env::current_exe().unwrap();
    let flood_output = Command::new("ip")
        .args(["netns", "exec", &lab.client])
        .arg(exe)
        .args([
            "--flood",
            &rate.to_string(),
            &seconds.to_string(),
            &FIRST_VIP.to_string(),
            &ips.to_string(),
        ])
        .output()
        .expect("run flood");
    let flood_report = String::from_utf8_lossy(&flood_output.stdout).into_owned();
    let (cpu_after, wait_after) = announcer.cpu_and_wait_ns();
    let (rss_after, rss_peak) = announcer.rss_kb();
    let announcer_status = announcer.status();
    drop(announcer);

    std::thread::sleep(Duration::from_millis(500));
    cleanup(
        "stopping tcpdump",
        Command::new("kill").args(["-INT", &tcpdump.id().to_string()]).status(),
    );
    let mut tcpdump_stderr = String::new();
    if let Some(mut stderr) = tcpdump.stderr.take() {
        cleanup("reading tcpdump's stderr", stderr.read_to_string(&mut tcpdump_stderr));
    }
    cleanup("waiting for tcpdump", tcpdump.wait());
    let wire = wire_latencies(&capture, FIRST_VIP, ips);
    cleanup("removing the capture", std::fs::remove_file(&capture));

    println!("## announcer_arp_flood");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("owned IPs: {ips}; set_owned took {set_owned_took:?}; flood {rate} req/s for {seconds} s");
    println!(
        "reader_nice: {}; load average before the flood: {}",
        if nice.is_empty() { "none" } else { &nice },
        load.trim()
    );
    print!("{flood_report}");
    match wire {
        Some((requests, mut latencies)) => {
            latencies.sort_unstable();
            println!(
                "wire (tcpdump in client netns): requests {requests}, answered {} ({:.2}%), replies/s {:.0}, latency p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, max {:.1} µs",
                latencies.len(),
                100.0 * latencies.len() as f64 / requests.max(1) as f64,
                latencies.len() as f64 / seconds as f64,
                percentile_us(&latencies, 0.5),
                percentile_us(&latencies, 0.9),
                percentile_us(&latencies, 0.99),
                percentile_us(&latencies, 0.999),
                percentile_us(&latencies, 1.0),
            );
        }
        None => println!("wire: capture unreadable"),
    }
    let tcpdump_summary: Vec<&str> = tcpdump_stderr.lines().filter(|line| line.contains("packets")).collect();
    println!("tcpdump: {}", tcpdump_summary.join("; "));
    println!(
        "announcer RSS: idle {} kB, {ips} IPs owned {} kB, after flood {} kB, peak (VmHWM) {} kB",
        rss_idle, rss_owned, rss_after, rss_peak
    );
    let requests = (rate * seconds).max(1);
    println!(
        "announcer CPU during the flood: {:.0} ms ({:.1} µs per request); its threads waited {:.0} ms runnable for a CPU",
        (cpu_after - cpu_before) as f64 / 1e6,
        (cpu_after - cpu_before) as f64 / 1e3 / requests as f64,
        (wait_after - wait_before) as f64 / 1e6,
    );
    println!("announcer status: {announcer_status}");
}

/// Pairs each ARP request on the wire with the next reply for the same IP; returns (requests
/// seen, latencies in ns). Reads the classic pcap format tcpdump writes (nanosecond magic).
fn wire_latencies(path: &str, first: Ipv4Addr, count: u32) -> Option<(usize, Vec<u64>)> {
    let bytes = std::fs::read(path).ok()?;
    let magic = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?);
    let fraction_ns = match magic {
        0xa1b2_3c4d => 1,
        0xa1b2_c3d4 => 1000,
        _ => return None,
    };
    let client: MacAddr = CLIENT_MAC.parse().ok()?;
    let in_range = |ip: Ipv4Addr| (u32::from(ip).wrapping_sub(u32::from(first))) < count;
    let mut pending: HashMap<Ipv4Addr, u64> = HashMap::new();
    let mut requests = 0;
    let mut latencies = Vec::new();
    let mut at = 24;
    while let Some(header) = bytes.get(at..at + 16) {
        let seconds = u64::from(u32::from_le_bytes(header[0..4].try_into().ok()?));
        let fraction = u64::from(u32::from_le_bytes(header[4..8].try_into().ok()?));
        let captured = u32::from_le_bytes(header[8..12].try_into().ok()?) as usize;
        let frame = bytes.get(at + 16..at + 16 + captured)?;
        at += 16 + captured;
        let time = seconds * 1_000_000_000 + fraction * fraction_ns;
        let Ok(packet) = arp::parse(frame) else { continue };
        if packet.operation == arp::OP_REQUEST && packet.sender_mac == client && in_range(packet.target_ip) {
            requests += 1;
            pending.insert(packet.target_ip, time);
        } else if packet.operation == arp::OP_REPLY
            && packet.target_mac == client
            && let Some(sent) = pending.remove(&packet.sender_ip)
        {
            latencies.push(time.saturating_sub(sent));
        }
    }
    Some((requests, latencies))
}

/// Flood mode (runs inside the client namespace): `--flood <rate> <seconds> <first-ip> <count>`.
/// Sends ARP requests for first..first+count round-robin at `rate`, and times replies in
/// this process (send call to receive return).
fn flood(args: &[String]) {
    let rate: u64 = args[0].parse().expect("rate");
    let seconds: u64 = args[1].parse().expect("seconds");
    let first: Ipv4Addr = args[2].parse().expect("first ip");
    let count: u32 = args[3].parse().expect("count");
    let client_mac: MacAddr = CLIENT_MAC.parse().unwrap();
    let client_ip: Ipv4Addr = CLIENT_V4.parse().unwrap();

    let interface = pnet_datalink::interfaces()
        .into_iter()
        .find(|interface| interface.name == "lan0")
        .expect("client link lan0");
    let config = pnet_datalink::Config {
        read_timeout: Some(Duration::from_millis(50)),
        read_buffer_size: 1 << 16,
        write_buffer_size: 1 << 16,
        promiscuous: false,
        ..pnet_datalink::Config::default()
    };
    let pnet_datalink::Channel::Ethernet(mut sender, mut receiver) =
        pnet_datalink::channel(&interface, config).expect("open lan0")
    else {
        panic!("not an Ethernet channel");
    };

    let origin = Instant::now();
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicBool::new(false));
    let collector = {
        let (sent_at, done) = (Arc::clone(&sent_at), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut latencies = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let Ok(frame) = receiver.next() else { continue };
                let now = origin.elapsed().as_nanos() as u64;
                let Ok(reply) = arp::parse(frame) else { continue };
                let index = u32::from(reply.sender_ip).wrapping_sub(u32::from(first));
                if reply.operation == arp::OP_REPLY && reply.target_mac == client_mac && index < count {
                    let sent = sent_at[index as usize].swap(0, Ordering::Relaxed);
                    if sent != 0 {
                        latencies.push(now.saturating_sub(sent));
                    }
                }
            }
            latencies
        })
    };

    let total = rate * seconds;
    let mut send_errors = 0u64;
    for sequence in 0..total {
        let due = Duration::from_nanos(sequence * 1_000_000_000 / rate);
        // Sleep, never spin: on a 2-vCPU machine a spinning sender would steal the CPU the
        // announcer under test needs. Late wake-ups are caught up by sending back-to-back.
        let left = due.saturating_sub(origin.elapsed());
        if !left.is_zero() {
            std::thread::sleep(left);
        }
        let index = (sequence % u64::from(count)) as u32;
        let request = arp::build(&arp::ArpFrame {
            ethernet_destination: MacAddr::BROADCAST,
            ethernet_source: client_mac,
            operation: arp::OP_REQUEST,
            sender_mac: client_mac,
            sender_ip: client_ip,
            target_mac: MacAddr::ZERO,
            target_ip: Ipv4Addr::from(u32::from(first) + index),
        });
        sent_at[index as usize].store(origin.elapsed().as_nanos().max(1) as u64, Ordering::Relaxed);
        if !matches!(sender.send_to(&request, None), Some(Ok(()))) {
            send_errors += 1;
        }
    }
    let sending_took = origin.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    done.store(true, Ordering::Relaxed);
    let mut latencies = collector.join().expect("collector");
    latencies.sort_unstable();
    println!(
        "flood process: sent {total} in {sending_took:.2?} ({:.0}/s, {send_errors} send errors), replies {} ({:.0}/s), latency in process p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        total as f64 / sending_took.as_secs_f64(),
        latencies.len(),
        latencies.len() as f64 / sending_took.as_secs_f64(),
        percentile_us(&latencies, 0.5),
        percentile_us(&latencies, 0.99),
        percentile_us(&latencies, 1.0),
    );
}
