//! Benchmark of the eBPF service map against kube-proxy-style iptables DNAT and a direct path,
//! side by side on one namespace topology (run as root):
//!
//! ```text
//! cargo bench -p herald-speaker --bench dataplane
//! ```
//!
//! Paths, each from its own client source address (a backend's TIME_WAIT sockets from one path
//! must not meet the SYNs of another):
//! - herald:   client → 2 VIPs of one Service (node1, Herald TC programs, N Services in the maps) → pod1-x
//! - iptables: client → 2 VIPs of one Service (node2, `KUBE-SERVICES`/`KUBE-SVC-*`/`KUBE-SEP-*` nat rules for
//!   N Services, two endpoints each picked with `statistic --mode random`) → pod2-x
//! - direct:   client → pod1-1 / pod1-2 (each connection to one of them at random) routed
//!   through node1, no translation
//!
//! The measured Service sits in the middle of `KUBE-SERVICES` (kube-proxy orders its rules by
//! hash, so a Service is on average halfway down). Load: T client threads doing
//! connect / one request / read to EOF / close (`Connection: close`) for D seconds per path,
//! paths alternating in a rotating order, R rounds. Reported: the median rate and latency over
//! rounds, and the median of the per-round ratios to the direct path (the machine's load
//! drifts between rounds; within a round the paths see the same). Environment:
//! `HERALD_BENCH_SIZES` (default `1,1000,10000`), `HERALD_BENCH_SECS` (1),
//! `HERALD_BENCH_ROUNDS` (12), `HERALD_BENCH_THREADS` (4), `HERALD_BENCH_IPTABLES_SERVICES`
//! (pins the iptables rule count to separate its effect).

#[path = "../tests/dataplane_support/mod.rs"]
mod dataplane_support;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dataplane_support::start_dataplane;
use herald_speaker::dataplane::{
    EndpointInput, EndpointPort, NodeInput, Protocol, ServiceInput, ServicePort, TrafficPolicy, desired,
};
use herald_testkit::routed::{RoutedLab, Sample, load, serve_http, spread_flows};

const PORT: u16 = 80;
const TARGET: u16 = 8080;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The i-th filler Service's VIP (outside the lab's LAN; never hit).
fn filler_vip(i: usize) -> IpAddr {
    Ipv4Addr::new(
        10,
        210 + (i / 62_500) as u8,
        ((i / 250) % 250) as u8,
        (i % 250 + 1) as u8,
    )
    .into()
}

/// n Services with two endpoints on `node`; the one in the middle has the `target_vips`.
fn services(lab: &RoutedLab, n: usize, target_vips: &[IpAddr], node: u8) -> Vec<ServiceInput> {
    let endpoints: Vec<EndpointInput> = (1..=2)
        .map(|j| EndpointInput {
            ip: lab.pod_addr(node, j, false),
            node: Some(format!("node{node}")),
            ready: true,
            serving: true,
            terminating: false,
            ports: vec![EndpointPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: TARGET,
            }],
        })
        .collect();
    (0..n)
        .map(|i| ServiceInput {
            namespace: "bench".into(),
            name: format!("svc-{i}"),
            load_balancer_ips: if i == n / 2 {
                target_vips.to_vec()
            } else {
                vec![filler_vip(i)]
            },
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: PORT,
                node_port: None,
            }],
            traffic_policy: TrafficPolicy::Cluster,
            source_ranges: None,
            forwarding: None,
            endpoints: endpoints.clone(),
        })
        .collect()
}

/// kube-proxy's iptables shape for `svcs`, as one `iptables-restore` input.
fn iptables_rules(svcs: &[ServiceInput]) -> String {
    let mut chains = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n");
    let mut rules =
        String::from("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n");
    for (i, svc) in svcs.iter().enumerate() {
        let svc_chain = format!("KUBE-SVC-{i:016X}");
        chains.push_str(&format!(":{svc_chain} - [0:0]\n"));
        for ip in &svc.load_balancer_ips {
            rules.push_str(&format!(
                "-A KUBE-SERVICES -d {ip}/32 -p tcp -m comment --comment \"{}/{}:http loadbalancer IP\" -m tcp --dport {PORT} -j {svc_chain}\n",
                svc.namespace, svc.name
            ));
        }
        let n = svc.endpoints.len();
        for (e, ep) in svc.endpoints.iter().enumerate() {
            let sep = format!("KUBE-SEP-{i:014X}{e:02X}");
            chains.push_str(&format!(":{sep} - [0:0]\n"));
            if e + 1 < n {
                let p = 1.0 / (n - e) as f64;
                rules.push_str(&format!(
                    "-A {svc_chain} -m statistic --mode random --probability {p:.11} -j {sep}\n"
                ));
            } else {
                rules.push_str(&format!("-A {svc_chain} -j {sep}\n"));
            }
            rules.push_str(&format!(
                "-A {sep} -p tcp -m tcp -j DNAT --to-destination {}:{TARGET}\n",
                ep.ip
            ));
        }
    }
    chains + &rules + "COMMIT\n"
}

fn iptables_restore(ns: &str, rules: &str) -> Duration {
    let t0 = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "iptables-restore"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("iptables-restore");
    child.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "iptables-restore failed");
    t0.elapsed()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    #[allow(unsafe_code)]
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("dataplane bench: needs root (network namespaces, eBPF, iptables)");
        return;
    }
    let sizes: Vec<usize> = std::env::var("HERALD_BENCH_SIZES")
        .unwrap_or_else(|_| "1,1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let secs: u64 = env_or("HERALD_BENCH_SECS", 1);
    let rounds: usize = env_or("HERALD_BENCH_ROUNDS", 12);
    let threads: usize = env_or("HERALD_BENCH_THREADS", 4);

    let mut lab = RoutedLab::new(2);
    for i in 1..=2 {
        for j in 1..=2 {
            lab.add_pod(i, j);
            serve_http(&lab, i, j, TARGET);
        }
    }
    for m in [0, 2] {
        lab.route_vip_to_node(m, 1);
    }
    for m in [1, 3] {
        lab.route_vip_to_node(m, 2);
    }
    lab.route_pods_via(1, 1);
    let mut dp = start_dataplane(&lab, 1).expect("eBPF dataplane");

    // Every path has two destinations for its client threads, each from its own source
    // address, and two backends behind them. (Two threads sharing one destination are markedly
    // slower on the client side than one destination each; and one source towards two VIPs of
    // the same backends would reuse source ports, colliding at the backend — with any DNAT.)
    let herald_vips = [lab.vip(0, false), lab.vip(2, false)];
    let iptables_vips = [lab.vip(1, false), lab.vip(3, false)];
    let herald_to: Vec<SocketAddr> = herald_vips.iter().map(|ip| SocketAddr::new(*ip, PORT)).collect();
    let iptables_to: Vec<SocketAddr> = iptables_vips.iter().map(|ip| SocketAddr::new(*ip, PORT)).collect();
    let direct_to = [
        SocketAddr::new(lab.pod_addr(1, 1, false), TARGET),
        SocketAddr::new(lab.pod_addr(1, 2, false), TARGET),
    ];
    let c = |m| lab.client_addr(m, false);
    let paths = [
        ("herald", vec![(c(1), herald_to[0]), (c(4), herald_to[1])]),
        ("iptables", vec![(c(2), iptables_to[0]), (c(5), iptables_to[1])]),
        // Each thread's connections spread over both pods at random, as the Services spread
        // theirs (see `spread_flows`).
        ("direct", spread_flows(&[c(3), c(6)], &direct_to, 1024)),
    ];
    let node1 = NodeInput {
        name: "node1".into(),
        addresses: vec![lab.node_addr(1, false)],
        ..NodeInput::default()
    };

    println!("| Services | path | new conns/s | ratio to direct | p50 | p99 | errors | time to program all Services |");
    println!("|---|---|---|---|---|---|---|---|");
    for &n in &sizes {
        // Herald: from empty maps to n Services, then one endpoint change.
        dp.apply(&Default::default()).unwrap();
        let herald_svcs = services(&lab, n, &herald_vips, 1);
        let t0 = Instant::now();
        let d = desired(&herald_svcs, &node1);
        dp.apply(&d).unwrap();
        let herald_program = t0.elapsed();
        let mut changed = herald_svcs.clone();
        changed[0].endpoints.pop();
        let t0 = Instant::now();
        let stats = dp.apply(&desired(&changed, &node1)).unwrap();
        let herald_update = t0.elapsed();
        dp.apply(&d).unwrap();
        eprintln!("n={n}: herald programmed in {herald_program:?}; one endpoint change {herald_update:?} ({stats:?})");

        // HERALD_BENCH_IPTABLES_SERVICES pins the iptables rule count (to separate its effect).
        let iptables_n = std::env::var("HERALD_BENCH_IPTABLES_SERVICES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(n);
        let iptables_svcs = services(&lab, iptables_n, &iptables_vips, 2);
        let rules = iptables_rules(&iptables_svcs);
        let iptables_program = iptables_restore(&lab.node(2), &rules);
        eprintln!(
            "n={n}: iptables-restore of {} rules took {iptables_program:?}",
            rules.lines().count()
        );

        // Warm up neighbour caches and conntrack on every path.
        for (_, flows) in &paths {
            load(&lab, flows, 1, 2);
        }
        let mut results: Vec<Vec<Sample>> = vec![Vec::new(), Vec::new(), Vec::new()];
        for round in 0..rounds {
            // Rotate the order each round so drift in the machine's load hits every path alike.
            for k in 0..paths.len() {
                let p = (k + round) % paths.len();
                let (name, flows) = &paths[p];
                let s = load(&lab, flows, secs, threads);
                eprintln!(
                    "n={n} round {round} {name}: {:.0} conns/s p50 {} µs p99 {} µs errors {}",
                    s.conns_per_sec, s.p50_us, s.p99_us, s.errors
                );
                results[p].push(s);
            }
        }
        for (p, (name, _)) in paths.iter().enumerate() {
            let rate = median(results[p].iter().map(|s| s.conns_per_sec).collect());
            // Ratio within each round (same machine load), then the median over rounds.
            let ratio = median(
                results[p]
                    .iter()
                    .zip(&results[2])
                    .map(|(s, d)| s.conns_per_sec / d.conns_per_sec)
                    .collect(),
            );
            let p50 = median(results[p].iter().map(|s| s.p50_us as f64).collect());
            let p99 = median(results[p].iter().map(|s| s.p99_us as f64).collect());
            let errors: usize = results[p].iter().map(|s| s.errors).sum();
            let program = match *name {
                "herald" => format!(
                    "{:.1} ms (one endpoint change: {:.2} ms)",
                    ms(herald_program),
                    ms(herald_update)
                ),
                "iptables" => format!("{:.1} ms (`iptables-restore`)", ms(iptables_program)),
                _ => "—".into(),
            };
            println!("| {n} | {name} | {rate:.0} | {ratio:.2} | {p50:.0} µs | {p99:.0} µs | {errors} | {program} |");
        }
        let herald_vs_iptables = median(
            results[0]
                .iter()
                .zip(&results[1])
                .map(|(h, i)| h.conns_per_sec / i.conns_per_sec)
                .collect(),
        );
        println!("| {n} | herald ÷ iptables | {herald_vs_iptables:.2} (median of per-round ratios) | | | | | |");
        // Clear the nat table before the next size so its restore starts from scratch.
        iptables_restore(&lab.node(2), "*nat\nCOMMIT\n");
    }
    dp.shutdown().unwrap();
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
