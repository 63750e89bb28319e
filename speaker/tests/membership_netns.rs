//! Membership's gRPC transport on real links: a speaker's port on node1, calls from node2,
//! and node1's cable pulled at the switch for longer than TCP's retransmission timer takes to
//! back off. Once the cable is back and ping answers again, the next call must get its answer:
//! a connection left stalled behind that timer kept every call to a reachable peer failing for
//! seconds (in the lab: a suspect/refute storm and a node's news unheard).
//!
//! Needs root, `ip` and `ping`; under `CI=true` their absence fails the test, elsewhere it is skipped
//! with the reason printed.

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_proto::membership::v1::Envelope;
use herald_proto::membership::v1::membership_server::MembershipServer;
use herald_speaker::membership::state::Rpc;
use herald_speaker::membership::transport::{
    BoxFuture, EnvelopeHandler, GrpcTransport, MembershipService, PeerTransport, TransportError,
};
use herald_testkit::routed::RoutedLab;
use herald_testkit::{enter_netns, may_run};

const PORT: u16 = 7946;
/// How long the cable stays out: the connection's retransmissions back off to seconds apart.
const OUTAGE: Duration = Duration::from_secs(8);
/// Calls during the outage, as a speaker probes: one per address every interval, each given
/// up after the interval.
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// What the first call after the network is back may take: a new connection needs a round
/// trip or two; a stalled one waits for its next retransmission (seconds away).
const AFTER_HEAL: Duration = Duration::from_secs(1);

/// Answers every call with the envelope it got.
struct Echo;

impl EnvelopeHandler for Echo {
    fn handle(&self, _: Rpc, envelope: Envelope) -> BoxFuture<Result<Envelope, tonic::Status>> {
        Box::pin(async move { Ok(envelope) })
    }
}

/// Serves [`Echo`] on `[::]:PORT` (IPv4 too) in namespace `ns` until `stop` fires, with
/// Nagle off as the speaker's server has it.
fn serve_echo(ns: String, stop: tokio::sync::oneshot::Receiver<()>) -> std::thread::JoinHandle<()> {
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        enter_netns(&ns);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, PORT)))
                .await
                .expect("bind the echo server");
            bound_tx.send(()).unwrap();
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            tonic::transport::Server::builder()
                .add_service(MembershipServer::new(MembershipService::new(Arc::new(Echo))))
                .serve_with_incoming_shutdown(incoming, async {
                    // A dropped sender stops the server too.
                    stop.await.ok();
                })
                .await
                .expect("echo server");
        });
    });
    bound_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("echo server bound");
    thread
}

/// One call to `to`, given up after `timeout`.
async fn call(transport: &GrpcTransport, to: SocketAddr, timeout: Duration) -> Result<(), TransportError> {
    let envelope = Envelope {
        payload: b"ping".to_vec(),
        ..Default::default()
    };
    let reply = transport.call(to, Rpc::Ping, envelope, timeout).await?;
    assert_eq!(reply.payload, b"ping", "the echo");
    Ok(())
}

#[test]
fn a_peer_answers_again_as_soon_as_its_cable_is_back() {
    if !may_run("a_peer_answers_again_as_soon_as_its_cable_is_back", &["ip", "ping"]) {
        return;
    }
    let lab = Arc::new(RoutedLab::new(2));
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let server = serve_echo(lab.node(1), stopped);
    let peers = [
        SocketAddr::new(lab.node_addr(1, false), PORT),
        SocketAddr::new(lab.node_addr(1, true), PORT),
    ];
    let client_lab = lab.clone();
    let outcome = std::thread::spawn(move || {
        let lab = client_lab;
        enter_netns(&lab.node(2));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let transport = GrpcTransport::new(Duration::from_millis(200));
            for peer in peers {
                let mut answered = false;
                for _ in 0..50 {
                    if call(&transport, peer, Duration::from_millis(500)).await.is_ok() {
                        answered = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                assert!(answered, "{peer} never answered before the cable was pulled");
            }
            lab.set_cable(1, false);
            let cut = Instant::now();
            let mut answered_while_out = 0;
            while cut.elapsed() < OUTAGE {
                for peer in peers {
                    if call(&transport, peer, PROBE_EVERY).await.is_ok() {
                        answered_while_out += 1;
                    }
                }
            }
            lab.set_cable(1, true);
            // The link carries packets again (and the neighbours are resolved) once ping
            // answers: from then on only the connection's state can hold the call up.
            for peer in peers {
                let reached = (0..30).any(|_| {
                    std::process::Command::new("ping")
                        .args(["-c1", "-W1", "-i0.2", &peer.ip().to_string()])
                        .output()
                        .is_ok_and(|o| o.status.success())
                });
                assert!(reached, "{} never answered ping after the cable was back", peer.ip());
            }
            let healed = Instant::now();
            let mut after_heal = Vec::new();
            for peer in peers {
                let result = call(&transport, peer, AFTER_HEAL).await;
                after_heal.push((peer, result, healed.elapsed()));
            }
            (answered_while_out, after_heal)
        })
    })
    .join();
    stop.send(()).expect("the echo server is still serving");
    server.join().expect("echo server thread");
    let (answered_while_out, after_heal) = outcome.expect("client thread");
    assert_eq!(answered_while_out, 0, "calls answered while the cable was out");
    for (peer, result, at) in after_heal {
        eprintln!("{peer}: {result:?} {at:?} after the cable was back");
        assert!(
            result.is_ok(),
            "the first call to {peer} after its cable was back (out for {OUTAGE:?}) got no answer: {}",
            result.unwrap_err()
        );
    }
}
