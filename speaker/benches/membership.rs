//! Membership and election benchmark.
//!
//! 1. Simulation at the default settings (virtual time, so the numbers do not depend on the
//!    machine): messages and bytes sent per node per second for 3, 50 and 500 speakers,
//!    measured over one virtual minute after a 10 s warm-up.
//! 2. Criterion: election of 10,000 IPs over 50 eligible nodes, and one rendezvous score.
//! 3. Criterion: the CPU time (user + system, of the whole process: caller and answering
//!    server together) of one probe round trip over loopback, as a gRPC call and as a UDP
//!    datagram, with a server that answers each request with its own envelope (sealing,
//!    opening and the state machine cost the same on either path and are left out).
//!
//! `cargo bench -p herald-speaker --bench membership [-- probe]`
use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use herald_proto::membership::v1::Envelope;
use herald_proto::membership::v1::membership_server::MembershipServer;
use herald_speaker::election::{self, Unit};
use herald_speaker::membership::MembershipMetrics;
use herald_speaker::membership::sim::{SimConfig, Simulation};
use herald_speaker::membership::state::Rpc;
use herald_speaker::membership::transport::{
    BoxFuture, EnvelopeHandler, GrpcTransport, MembershipService, PeerTransport,
};
use herald_speaker::membership::udp::{self, UdpProbeTransport};

fn simulation_report() {
    println!("membership traffic at the defaults (virtual minute after 10 s warm-up)");
    println!("speakers | IPs | msgs sent/node/s mean | max | bytes sent/node/s mean | suspicions | wall time");
    for (nodes, units) in [(3, 30), (50, 100), (500, 100), (500, 1000)] {
        let wall = Instant::now();
        let mut sim = Simulation::new(SimConfig {
            nodes,
            units,
            seed: 7,
            per_node_election: nodes <= 50,
            ..Default::default()
        });
        sim.run_for(Duration::from_secs(10));
        let before: Vec<(u64, u64)> = (0..nodes)
            .map(|i| (sim.counters(i).total_sent(), sim.counters(i).bytes_sent))
            .collect();
        let suspicions_before: u64 = (0..nodes).map(|i| sim.core_stats(i).suspicions).sum();
        sim.run_for(Duration::from_secs(60));
        let rates: Vec<(f64, f64)> = (0..nodes)
            .map(|i| {
                let c = sim.counters(i);
                (
                    (c.total_sent() - before[i].0) as f64 / 60.0,
                    (c.bytes_sent - before[i].1) as f64 / 60.0,
                )
            })
            .collect();
        let mean_msgs = rates.iter().map(|r| r.0).sum::<f64>() / nodes as f64;
        let max_msgs = rates.iter().map(|r| r.0).fold(0.0, f64::max);
        let mean_bytes = rates.iter().map(|r| r.1).sum::<f64>() / nodes as f64;
        let suspicions: u64 = (0..nodes).map(|i| sim.core_stats(i).suspicions).sum::<u64>() - suspicions_before;
        println!(
            "{nodes:>8} | {units:>4} | {mean_msgs:>21.1} | {max_msgs:>5.1} | {mean_bytes:>22.0} | {suspicions:>10} | {:.1?}",
            wall.elapsed()
        );
    }
}

fn units(count: u32) -> Vec<Unit> {
    (0..count)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + i)))
        .collect()
}

fn election_benchmarks(c: &mut Criterion) {
    let nodes: BTreeSet<String> = (0..50).map(|i| format!("node-{i}")).collect();
    let eligible: BTreeMap<Unit, BTreeSet<String>> = units(10_000).into_iter().map(|u| (u, nodes.clone())).collect();
    c.bench_function("elect 10000 IPs x 50 nodes", |b| {
        b.iter(|| black_box(election::elect(black_box(&eligible), &BTreeSet::new())))
    });
    c.bench_function("rendezvous score of one (node, IP)", |b| {
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
        b.iter(|| black_box(election::rendezvous_score(black_box("node-17"), black_box(ip))))
    });
}

/// Answers every request with its own envelope.
struct Echo;

impl EnvelopeHandler for Echo {
    fn handle(&self, _rpc: Rpc, envelope: Envelope) -> BoxFuture<Result<Envelope, tonic::Status>> {
        Box::pin(async move { Ok(envelope) })
    }
}

/// User + system CPU time of this process so far.
fn process_cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a rusage into the pointer it is given, which is valid.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

fn probe_benchmarks(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let (address, _stop): (SocketAddr, _) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind TCP");
        let address = listener.local_addr().expect("bound address");
        let socket = tokio::net::UdpSocket::bind(address).await.expect("bind UDP");
        let handler: Arc<dyn EnvelopeHandler> = Arc::new(Echo);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(udp::serve(socket, handler.clone(), stopped));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(MembershipServer::new(MembershipService::new(handler)))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))),
        );
        (address, stop)
    });
    // A probe's size: the sender's state and a few gossiped changes.
    let envelope = Envelope {
        payload: vec![7; 300],
        mac: vec![1; 32],
        next_mac: Vec::new(),
    };
    let timeout = Duration::from_secs(1);
    let transports: [(&str, Arc<dyn PeerTransport>); 2] = [
        ("grpc", Arc::new(GrpcTransport::new(timeout))),
        (
            "udp",
            Arc::new(UdpProbeTransport::new(
                GrpcTransport::new(timeout),
                MembershipMetrics::default(),
            )),
        ),
    ];
    let mut group = c.benchmark_group("probe round trip, CPU of both sides");
    for (name, transport) in transports {
        group.bench_function(name, |b| {
            b.iter_custom(|rounds| {
                let started = process_cpu_time();
                runtime.block_on(async {
                    for _ in 0..rounds {
                        let reply = transport.call(address, Rpc::Ping, envelope.clone(), timeout).await;
                        black_box(reply.expect("the echo server answers"));
                    }
                });
                process_cpu_time() - started
            })
        });
    }
    group.finish();
}

fn main() {
    // `HERALD_BENCH_SKIP_SIM=1` runs only the criterion part.
    if std::env::var_os("HERALD_BENCH_SKIP_SIM").is_none() {
        simulation_report();
    }
    let mut criterion = Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    election_benchmarks(&mut criterion);
    probe_benchmarks(&mut criterion);
    criterion.final_summary();
}
