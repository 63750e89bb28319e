//! Sustained new connections through a LoadBalancer IP to a backend on another node, side by
//! side with the direct path to the same backends, minute by minute (run as root):
//!
//! ```text
//! cargo bench -p herald-speaker --bench dataplane_soak
//! ```
//!
//! Topology: a client and two nodes on a bridge, two HTTP backends behind node 2. The herald
//! path: client → LB IP → node 1 (owner, Herald's programs) → node 2's pods, in the forwarding
//! mode under test (`HERALD_SOAK_FORWARDING`: `dsr`, the default, or `snat`). The direct path:
//! client → node 1 → node 2 → the same pods, routed by the kernels with no translation (the
//! same hops; Herald's programs on both nodes see the packets and pass them), each client
//! thread's connections spread over the pods at random as Maglev spreads the herald path's.
//! Both paths run at the same time for the whole soak, each with its own T client threads
//! (`HERALD_SOAK_THREADS`, 2) and its own 16 client source addresses (so the client's ports
//! never run out and no path meets the other's TIME_WAIT sockets); every
//! connection is connect / one request / read to EOF / close. Reported per minute: each
//! path's rate, failures, latency, the ratio herald ÷ direct, and node 1's conntrack (live
//! flows and drops). `HERALD_SOAK_MINUTES` (10) sets the length. Before the soak, the
//! throughput of one long-lived upload (the direction the tunnel carries) through the LB IP
//! and directly, alternating, `HERALD_SOAK_STREAM_ROUNDS` (3) rounds of 5 s each; and, with
//! `HERALD_SOAK_SOLO_ROUNDS` (0) set, each path alone in alternating rounds of
//! `HERALD_SOAK_SOLO_SECONDS` (5) with the machine's CPU time per connection.
//! `HERALD_SOAK_CALIBRATE=1` sends the herald half's connections by the direct path too (from
//! its own sources, spread the same way): the ratio's spread between two identical paths, the
//! noise against which a per-minute target is read.

#[path = "../tests/dataplane_support/mod.rs"]
mod dataplane_support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use dataplane_support::{dataplane_config, start_dataplane};
use herald_speaker::dataplane::{
    EndpointInput, EndpointPort, Forwarding, Protocol, ServiceInput, ServicePort, TrafficPolicy,
};
use herald_testkit::routed::{RoutedLab, load, serve_http, spread_flows};
use herald_testkit::run;

const PORT: u16 = 80;
const TARGET: u16 = 8080;
/// Port of the pods' sink (reads and discards) and of the Service in front of it.
const SINK: u16 = 9000;
/// Client addresses per path.
const SOURCES: u8 = 16;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    #[allow(unsafe_code)]
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("dataplane soak: needs root (network namespaces, eBPF)");
        return;
    }
    let minutes: u64 = env_or("HERALD_SOAK_MINUTES", 10);
    let threads: usize = env_or("HERALD_SOAK_THREADS", 2);
    let forwarding = match std::env::var("HERALD_SOAK_FORWARDING").as_deref() {
        Ok("snat") => Forwarding::Snat,
        _ => Forwarding::Dsr,
    };

    let mut lab = RoutedLab::new(2);
    for j in 1..=2 {
        lab.add_pod(2, j);
        serve_http(&lab, 2, j, TARGET);
        serve_sink(&lab, 2, j);
    }
    // Client sources 10.. for herald, 30.. for direct (the lab gives the client .100–.107).
    for m in (10..10 + 2 * SOURCES).chain([50, 51]) {
        run(
            "ip",
            &[
                "-n",
                &lab.client(),
                "addr",
                "add",
                &format!("{}/24", lab.client_addr(m, false)),
                "dev",
                "eth0",
            ],
        );
    }
    lab.route_vip_to_node(0, 1);
    lab.route_pods_via(2, 1);
    let mut config1 = dataplane_config(&lab, 1);
    config1.forwarding = forwarding;
    let mut dp1 = herald_testkit::in_netns(&lab.node(1), move || {
        herald_speaker::dataplane::Dataplane::start(config1)
    })
    .expect("node 1's dataplane");
    let mut dp2 = start_dataplane(&lab, 2).expect("node 2's dataplane");
    dp1.set_tunnel_peers([("node2".to_string(), vec![lab.node_addr(2, false)])].into());
    dp2.set_tunnel_peers([("node1".to_string(), vec![lab.node_addr(1, false)])].into());
    let service = ServiceInput {
        namespace: "bench".into(),
        name: "soak".into(),
        load_balancer_ips: vec![lab.vip(0, false)],
        ports: vec![
            ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: PORT,
                node_port: None,
            },
            ServicePort {
                name: "sink".into(),
                protocol: Protocol::Tcp,
                port: SINK,
                node_port: None,
            },
        ],
        traffic_policy: TrafficPolicy::Cluster,
        source_ranges: None,
        forwarding: None,
        endpoints: (1..=2)
            .map(|j| EndpointInput {
                ip: lab.pod_addr(2, j, false),
                node: Some("node2".into()),
                ready: true,
                serving: true,
                terminating: false,
                ports: vec![
                    EndpointPort {
                        name: "http".into(),
                        protocol: Protocol::Tcp,
                        port: TARGET,
                    },
                    EndpointPort {
                        name: "sink".into(),
                        protocol: Protocol::Tcp,
                        port: SINK,
                    },
                ],
            })
            .collect(),
    };
    for dp in [&mut dp1, &mut dp2] {
        dp.apply_services(&[Arc::new(service.clone())]).unwrap();
    }
    let vip = SocketAddr::new(lab.vip(0, false), PORT);
    let herald_sources: Vec<IpAddr> = (0..SOURCES).map(|m| lab.client_addr(10 + m, false)).collect();
    // The direct path spreads each client thread's connections over both pods at random, as
    // Maglev spreads the translated path's (see `spread_flows`).
    let direct_sources: Vec<IpAddr> = (0..SOURCES).map(|m| lab.client_addr(10 + SOURCES + m, false)).collect();
    let pods: Vec<SocketAddr> = (1..=2)
        .map(|j| SocketAddr::new(lab.pod_addr(2, j, false), TARGET))
        .collect();
    let direct = spread_flows(&direct_sources, &pods, 64 * SOURCES as usize);
    let calibrate = std::env::var_os("HERALD_SOAK_CALIBRATE").is_some_and(|v| v == "1");
    let herald: Vec<(IpAddr, SocketAddr)> = if calibrate {
        spread_flows(&herald_sources, &pods, 64 * SOURCES as usize)
    } else {
        herald_sources.iter().map(|&source| (source, vip)).collect()
    };
    // Warm neighbour caches on both paths.
    load(&lab, &herald, 1, 1);
    load(&lab, &direct, 1, 1);

    println!(
        "forwarding {forwarding:?}, {threads} client threads per path, {SOURCES} source addresses per path, {minutes} min"
    );
    if calibrate {
        println!("calibration: the herald half takes the direct path too");
    }
    let stream_rounds: usize = env_or("HERALD_SOAK_STREAM_ROUNDS", 3);
    println!("| stream round | through the LB IP (MB/s) | direct (MB/s) | ratio |");
    println!("|---|---|---|---|");
    for round in 1..=stream_rounds {
        let through = upload(
            &lab,
            lab.client_addr(50, false),
            SocketAddr::new(lab.vip(0, false), SINK),
        );
        let direct = upload(
            &lab,
            lab.client_addr(51, false),
            SocketAddr::new(lab.pod_addr(2, 1, false), SINK),
        );
        println!("| {round} | {through:.0} | {direct:.0} | {:.2} |", through / direct);
    }
    // Each path alone, alternating short rounds: the machine's CPU time per connection, the
    // cost that the side-by-side minutes below show only as a share of contended CPUs.
    let solo_rounds: usize = env_or("HERALD_SOAK_SOLO_ROUNDS", 0);
    let solo_secs: u64 = env_or("HERALD_SOAK_SOLO_SECONDS", 5);
    if solo_rounds > 0 {
        println!(
            "| solo round | herald conns/s | direct conns/s | herald CPU µs per conn | direct CPU µs per conn | CPU ratio direct ÷ herald |"
        );
        println!("|---|---|---|---|---|---|");
    }
    let mut cost_ratios = Vec::new();
    for round in 1..=solo_rounds {
        let [(h_rate, h_cost), (d_rate, d_cost)] = [&herald, &direct].map(|flows| {
            let before = busy_cpu_ns();
            let sample = load(&lab, flows, solo_secs, threads);
            let busy = busy_cpu_ns() - before;
            (
                sample.conns_per_sec,
                busy as f64 / (sample.conns_per_sec * solo_secs as f64) / 1e3,
            )
        });
        cost_ratios.push(d_cost / h_cost);
        println!(
            "| {round} | {h_rate:.0} | {d_rate:.0} | {h_cost:.1} | {d_cost:.1} | {:.2} |",
            d_cost / h_cost
        );
    }
    if !cost_ratios.is_empty() {
        cost_ratios.sort_by(f64::total_cmp);
        println!(
            "median CPU ratio direct ÷ herald: {:.2}",
            cost_ratios[cost_ratios.len() / 2]
        );
    }
    println!(
        "| minute | herald conns/s | herald failed | direct conns/s | direct failed | ratio | herald p50 / p99 | direct p50 / p99 | node 1 flows (established / new / reverse) | drops |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let start = Instant::now();
    let mut ratios = Vec::new();
    for minute in 1..=minutes {
        let (h, d) = std::thread::scope(|s| {
            let h = s.spawn(|| load(&lab, &herald, 60, threads));
            let d = s.spawn(|| load(&lab, &direct, 60, threads));
            (h.join().unwrap(), d.join().unwrap())
        });
        let flows = dp1.sweep_flows().expect("sweep");
        let events = dp1.flow_events();
        let drops: u64 = [
            "no_backend",
            "no_snat_port",
            "tunnel_not_local",
            "rewrite_failed",
            "no_route",
        ]
        .iter()
        .map(|k| events[k])
        .sum();
        let ratio = h.conns_per_sec / d.conns_per_sec;
        ratios.push(ratio);
        println!(
            "| {minute} | {:.0} | {} | {:.0} | {} | {ratio:.2} | {} / {} µs | {} / {} µs | {} / {} / {} | {drops} |",
            h.conns_per_sec,
            h.errors,
            d.conns_per_sec,
            d.errors,
            h.p50_us,
            h.p99_us,
            d.p50_us,
            d.p99_us,
            flows.established,
            flows.new,
            flows.reverse,
        );
    }
    let worst = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "lowest minute ratio {worst:.2} over {:.0} s\nnode 1 events {:?}\nnode 2 events {:?}",
        start.elapsed().as_secs_f64(),
        dp1.flow_events(),
        dp2.flow_events()
    );
    dp1.shutdown().unwrap();
    dp2.shutdown().unwrap();
}

/// A server in pod (i, j) on [`SINK`] that reads every connection to its end.
fn serve_sink(lab: &RoutedLab, i: u8, j: u8) {
    let path = format!("/run/netns/{}", lab.pod(i, j));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        herald_testkit::enter_netns(&path);
        let listener = std::net::TcpListener::bind(("0.0.0.0", SINK)).unwrap();
        tx.send(()).unwrap();
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                // Draining ends when the client closes or resets; either is fine.
                std::io::copy(&mut stream, &mut std::io::sink()).ok();
            });
        }
    });
    rx.recv_timeout(std::time::Duration::from_secs(5)).expect("sink ready");
}

/// MB/s written on one connection from `from` to `to` for 5 s (the sink reads as fast as it can).
fn upload(lab: &RoutedLab, from: IpAddr, to: SocketAddr) -> f64 {
    use std::io::Write;
    herald_testkit::in_netns(&lab.client(), move || {
        let fd = herald_testkit::routed::tcp_socket_bound(from).expect("socket");
        let mut stream =
            herald_testkit::routed::connect_timeout(fd, to, std::time::Duration::from_secs(2)).expect("connect");
        let chunk = vec![0u8; 64 * 1024];
        let start = Instant::now();
        let mut bytes = 0usize;
        while start.elapsed() < std::time::Duration::from_secs(5) {
            stream.write_all(&chunk).expect("upload");
            bytes += chunk.len();
        }
        bytes as f64 / start.elapsed().as_secs_f64() / 1e6
    })
}

/// CPU time the whole machine spent busy (all CPUs, everything but idle and iowait), in ns.
fn busy_cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .expect("cpu line")
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().expect("a number"))
        .collect();
    // user nice system idle iowait irq softirq steal ..., in clock ticks.
    let busy: u64 = fields
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    busy * (1_000_000_000 / ticks_per_sec)
}
