//! Probes as UDP datagrams: [`UdpProbeTransport`] (the [`PeerTransport`] speakers use), the
//! server loop that answers datagrams, and [`ProbePaths`], the rule that decides per peer
//! whether a probe goes over UDP or gRPC.
//!
//! A speaker probes every owner it backs up every 40 ms. Over gRPC each probe is an HTTP/2
//! stream on both sides; as a datagram it is one send and one receive: 28 µs of CPU per round
//! trip against 171 µs over gRPC (BENCHMARKS.md, "probes as datagrams"). Sync, and anything
//! larger than [`MAX_DATAGRAM`], stays on gRPC.
//!
//! Each peer gets its own connected socket. A host with nothing on the port answers a datagram
//! with ICMP port unreachable, which the kernel reports on a connected socket as
//! `ECONNREFUSED`: a crashed speaker is told apart from a lost node as with TCP. (Kernels
//! rate-limit those ICMP messages per destination, by default one a second after a burst of
//! six: enough for the few probes a crash takes to confirm.) The server answers from the
//! address and port the request was sent to, because it is bound to the speaker's advertised
//! address, as the gRPC server is.
//!
//! UDP may be filtered where TCP is not (a firewall opened for the TCP port only). A peer
//! whose UDP probe went unanswered is probed over gRPC from then on, and UDP is tried again
//! after [`FIRST_RETRY`]; each time a retry goes unanswered while gRPC answered in between, the
//! wait doubles up to [`LONGEST_RETRY`] and a warning says to open the port. A retry that goes
//! unanswered costs one suspicion, which the next (gRPC) probe cancels. A refused retry (the
//! peer runs a speaker from before UDP probes) never arrived, so it is sent again over gRPC
//! at once.
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_proto::membership::v1::datagram::Body;
use herald_proto::membership::v1::datagram_error::Reason;
use herald_proto::membership::v1::{Datagram, DatagramError, Envelope};
use prost::Message as _;
use tokio::net::UdpSocket;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinHandle;

use super::metrics::MembershipMetrics;
use super::state::Rpc;
use super::transport::{BoxFuture, EnvelopeHandler, GrpcTransport, MAX_CHANNELS, PeerTransport, TransportError};

/// Largest datagram sent or accepted. Probes are a few hundred bytes (the sender's state and
/// up to eight gossiped changes); one that does not fit goes over gRPC.
pub const MAX_DATAGRAM: usize = 16 * 1024;
/// Room for the datagram's own fields around the envelope.
const DATAGRAM_OVERHEAD: usize = 32;
/// How long after an unanswered UDP probe a peer is tried over UDP again.
pub const FIRST_RETRY: Duration = Duration::from_secs(10);
/// The longest wait between UDP retries to a peer that answers only over gRPC.
pub const LONGEST_RETRY: Duration = Duration::from_secs(300);
/// A peer's socket not used for this long is closed (the slow round-robin reaches each member
/// every cluster-size seconds; watched owners are probed every few tens of milliseconds).
const IDLE_SOCKET: Duration = Duration::from_secs(60);
/// Requests the server works on at once; more are dropped (their callers time out).
const SERVER_REQUESTS: usize = 1024;
/// A request not answered by then is dropped by the server.
const SERVER_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Which way one call goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// A datagram to a peer that answered them.
    Udp,
    /// A datagram to a peer not known to answer them (never tried, or the retry after one
    /// went unanswered). If it is refused, nothing listens on the peer's UDP port (a speaker
    /// from before UDP probes): it never arrived, and goes again over gRPC.
    UdpTrial,
    /// gRPC.
    Grpc,
}

/// What is known of one peer's UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PeerUdp {
    /// It answered a datagram.
    Answering,
    /// A datagram went unanswered: gRPC until `retry_at`, then one datagram.
    Unanswered {
        retry_at: Instant,
        /// The wait that led to `retry_at`.
        wait: Duration,
        /// gRPC answered since the datagram went unanswered.
        grpc_answered: bool,
        /// The retry is out.
        retrying: bool,
    },
}

/// Per peer, whether probes go over UDP or gRPC (see the module documentation). Pure: the
/// caller passes the time and reports outcomes.
#[derive(Debug, Default)]
pub struct ProbePaths {
    peers: HashMap<SocketAddr, PeerUdp>,
}

impl ProbePaths {
    /// The way a call of `rpc` with an envelope of `envelope_len` bytes to `address` goes.
    pub fn choose(&mut self, address: SocketAddr, rpc: Rpc, envelope_len: usize, now: Instant) -> Path {
        if rpc == Rpc::Sync || envelope_len + DATAGRAM_OVERHEAD > MAX_DATAGRAM {
            return Path::Grpc;
        }
        match self.peers.get_mut(&address) {
            None => Path::UdpTrial,
            Some(PeerUdp::Answering) => Path::Udp,
            Some(PeerUdp::Unanswered { retry_at, retrying, .. }) if now >= *retry_at && !*retrying => {
                *retrying = true;
                Path::UdpTrial
            }
            Some(PeerUdp::Unanswered { .. }) => Path::Grpc,
        }
    }

    /// A datagram to `address` was answered.
    pub fn udp_answered(&mut self, address: SocketAddr) {
        self.bound(address);
        self.peers.insert(address, PeerUdp::Answering);
    }

    /// A datagram to `address` went unanswered (no reply in time, a reply too large for a
    /// datagram, or, on a trial, refused). Returns true when this looks like UDP filtered
    /// between us: a retry went unanswered while gRPC answered since the last one.
    pub fn udp_unanswered(&mut self, address: SocketAddr, now: Instant) -> bool {
        self.bound(address);
        let (wait, filtered) = match self.peers.get(&address) {
            Some(PeerUdp::Unanswered {
                wait,
                grpc_answered: true,
                retrying: true,
                ..
            }) => ((*wait * 2).min(LONGEST_RETRY), true),
            // The peer may be gone altogether: no reason to wait longer next time.
            _ => (FIRST_RETRY, false),
        };
        self.peers.insert(
            address,
            PeerUdp::Unanswered {
                retry_at: now + wait,
                wait,
                grpc_answered: false,
                retrying: false,
            },
        );
        filtered
    }

    /// A gRPC call to `address` was answered.
    pub fn grpc_answered(&mut self, address: SocketAddr) {
        if let Some(PeerUdp::Unanswered { grpc_answered, .. }) = self.peers.get_mut(&address) {
            *grpc_answered = true;
        }
    }

    /// Keeps the table bounded like the transport's channels.
    fn bound(&mut self, address: SocketAddr) {
        if self.peers.len() >= MAX_CHANNELS
            && !self.peers.contains_key(&address)
            && let Some(any) = self.peers.keys().next().copied()
        {
            self.peers.remove(&any);
        }
    }
}

/// How a datagram call ended, short of a reply envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
enum UdpFailure {
    Timeout,
    Refused,
    TooLarge,
    Rejected(String),
    Failed(String),
}

/// What a peer socket's receiver hands a waiting call.
#[derive(Clone, Debug)]
enum Received {
    Reply(Option<Body>),
    Refused,
    Error(String),
}

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<Received>>>>;

/// A connected socket to one peer and the task that receives its replies.
struct PeerSocket {
    socket: Arc<UdpSocket>,
    waiting: Waiting,
    receiver: JoinHandle<()>,
    last_used: Instant,
}

impl Drop for PeerSocket {
    fn drop(&mut self) {
        self.receiver.abort();
    }
}

impl PeerSocket {
    /// A socket connected to `address` (created within a tokio runtime).
    fn connect(address: SocketAddr) -> std::io::Result<PeerSocket> {
        let local: SocketAddr = match address {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = std::net::UdpSocket::bind(local)?;
        socket.connect(address)?;
        socket.set_nonblocking(true)?;
        let socket = Arc::new(UdpSocket::from_std(socket)?);
        let waiting = Waiting::default();
        let receiver = tokio::spawn(receive_replies(socket.clone(), waiting.clone()));
        Ok(PeerSocket {
            socket,
            waiting,
            receiver,
            last_used: Instant::now(),
        })
    }
}

/// Hands each reply on `socket` to the call waiting for it; an error on the socket (the ICMP
/// a closed port sends back) ends every call waiting on it.
async fn receive_replies(socket: Arc<UdpSocket>, waiting: Waiting) {
    let mut buffer = vec![0; MAX_DATAGRAM];
    loop {
        let received = socket.recv(&mut buffer).await;
        let (call_id, outcome) = match received {
            Ok(length) => match Datagram::decode(&buffer[..length]) {
                Ok(datagram) => (Some(datagram.call_id), Received::Reply(datagram.body)),
                Err(_) => continue,
            },
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => (None, Received::Refused),
            Err(error) => (None, Received::Error(error.to_string())),
        };
        let socket_error = matches!(outcome, Received::Error(_));
        {
            let mut waiting = waiting.lock().unwrap_or_else(|e| e.into_inner());
            match call_id {
                Some(id) => {
                    if let Some(call) = waiting.remove(&id) {
                        // The caller may have given up.
                        drop(call.send(outcome));
                    }
                }
                None => {
                    for (_, call) in waiting.drain() {
                        drop(call.send(outcome.clone()));
                    }
                }
            }
        }
        if socket_error {
            // Not a per-datagram error: do not spin on it.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The client side of datagrams: one connected socket per peer.
struct UdpClient {
    sockets: Mutex<HashMap<SocketAddr, PeerSocket>>,
    next_call: std::sync::atomic::AtomicU64,
}

impl UdpClient {
    fn new() -> Self {
        UdpClient {
            sockets: Mutex::default(),
            next_call: std::sync::atomic::AtomicU64::new(rand::random()),
        }
    }

    async fn call(
        &self,
        address: SocketAddr,
        rpc: Rpc,
        envelope: Envelope,
        timeout: Duration,
    ) -> Result<Envelope, UdpFailure> {
        let call_id = self.next_call.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body = match rpc {
            Rpc::Ping => Body::Ping(envelope),
            Rpc::PingReq => Body::PingReq(envelope),
            Rpc::Sync => return Err(UdpFailure::Failed("Sync is not sent as a datagram".into())),
        };
        let request = Datagram {
            call_id,
            body: Some(body),
        }
        .encode_to_vec();
        let (answer, answered) = oneshot::channel();
        let (socket, waiting) = {
            let mut sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if !sockets.contains_key(&address) {
                sockets.retain(|_, peer| now.duration_since(peer.last_used) < IDLE_SOCKET);
                if sockets.len() >= MAX_CHANNELS
                    && let Some(any) = sockets.keys().next().copied()
                {
                    sockets.remove(&any);
                }
                let peer = PeerSocket::connect(address).map_err(|e| UdpFailure::Failed(e.to_string()))?;
                sockets.insert(address, peer);
            }
            let peer = sockets
                .get_mut(&address)
                .unwrap_or_else(|| unreachable!("inserted above"));
            peer.last_used = now;
            peer.waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(call_id, answer);
            (peer.socket.clone(), peer.waiting.clone())
        };
        let forget = || {
            waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(&call_id);
        };
        if let Err(error) = socket.send(&request).await {
            forget();
            return Err(if error.kind() == std::io::ErrorKind::ConnectionRefused {
                UdpFailure::Refused
            } else {
                UdpFailure::Failed(error.to_string())
            });
        }
        let received = match tokio::time::timeout(timeout, answered).await {
            Ok(Ok(received)) => received,
            // The socket was closed under the call (idle sweep): as lost.
            Ok(Err(_)) => return Err(UdpFailure::Timeout),
            Err(_elapsed) => {
                forget();
                return Err(UdpFailure::Timeout);
            }
        };
        match received {
            Received::Reply(Some(Body::Reply(envelope))) => Ok(envelope),
            Received::Reply(Some(Body::Error(DatagramError { reason, message }))) => {
                Err(match Reason::try_from(reason) {
                    Ok(Reason::Rejected) => UdpFailure::Rejected(message),
                    Ok(Reason::TooLarge) => UdpFailure::TooLarge,
                    _ => UdpFailure::Failed(message),
                })
            }
            Received::Reply(_) => Err(UdpFailure::Failed("the reply datagram holds no reply".into())),
            Received::Refused => Err(UdpFailure::Refused),
            Received::Error(message) => Err(UdpFailure::Failed(message)),
        }
    }
}

/// The [`PeerTransport`] speakers use: probes as datagrams where the peer answers them,
/// everything else over [`GrpcTransport`] (module documentation).
#[derive(Clone)]
pub struct UdpProbeTransport {
    grpc: GrpcTransport,
    udp: Arc<UdpClient>,
    paths: Arc<Mutex<ProbePaths>>,
    metrics: MembershipMetrics,
}

impl UdpProbeTransport {
    /// Datagrams for probes, and `grpc` for the rest; calls counted in `metrics`.
    pub fn new(grpc: GrpcTransport, metrics: MembershipMetrics) -> Self {
        UdpProbeTransport {
            grpc,
            udp: Arc::new(UdpClient::new()),
            paths: Arc::default(),
            metrics,
        }
    }

    fn paths(&self) -> std::sync::MutexGuard<'_, ProbePaths> {
        self.paths.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn over_grpc(
        &self,
        address: SocketAddr,
        rpc: Rpc,
        envelope: Envelope,
        timeout: Duration,
    ) -> Result<Envelope, TransportError> {
        self.metrics.call_over("grpc");
        let result = self.grpc.call(address, rpc, envelope, timeout).await;
        if result.is_ok() {
            self.paths().grpc_answered(address);
        }
        result
    }

    async fn over_udp(
        &self,
        address: SocketAddr,
        rpc: Rpc,
        envelope: Envelope,
        timeout: Duration,
        trial: bool,
    ) -> Result<Envelope, TransportError> {
        let started = Instant::now();
        // A refused trial goes again over gRPC: keep the envelope for it.
        let resend = trial.then(|| envelope.clone());
        self.metrics.call_over("udp");
        let failure = match self.udp.call(address, rpc, envelope, timeout).await {
            Ok(reply) => {
                self.paths().udp_answered(address);
                return Ok(reply);
            }
            Err(failure) => failure,
        };
        match failure {
            // It never arrived: nothing listens on the UDP port.
            UdpFailure::Refused if let Some(envelope) = resend => {
                self.paths().udp_unanswered(address, Instant::now());
                let left = timeout.saturating_sub(started.elapsed());
                self.over_grpc(address, rpc, envelope, left).await
            }
            UdpFailure::Refused => Err(TransportError::Refused { address }),
            UdpFailure::Timeout | UdpFailure::TooLarge => {
                if self.paths().udp_unanswered(address, Instant::now()) {
                    tracing::warn!(
                        peer = %address,
                        "the peer answers membership probes over gRPC (TCP) but not over UDP; probing it over gRPC, which costs more CPU: open UDP on the peer port between nodes"
                    );
                }
                Err(if failure == UdpFailure::TooLarge {
                    TransportError::Failed {
                        address,
                        message: "the reply does not fit in a datagram".into(),
                    }
                } else {
                    TransportError::Timeout { address, timeout }
                })
            }
            UdpFailure::Rejected(message) => Err(TransportError::Rejected { address, message }),
            UdpFailure::Failed(message) => Err(TransportError::Failed { address, message }),
        }
    }
}

impl PeerTransport for UdpProbeTransport {
    fn call(
        &self,
        address: SocketAddr,
        rpc: Rpc,
        envelope: Envelope,
        timeout: Duration,
    ) -> BoxFuture<Result<Envelope, TransportError>> {
        let path = self
            .paths()
            .choose(address, rpc, envelope.encoded_len(), Instant::now());
        let transport = self.clone();
        Box::pin(async move {
            match path {
                Path::Grpc => transport.over_grpc(address, rpc, envelope, timeout).await,
                Path::Udp => transport.over_udp(address, rpc, envelope, timeout, false).await,
                Path::UdpTrial => transport.over_udp(address, rpc, envelope, timeout, true).await,
            }
        })
    }
}

/// Answers the datagrams arriving on `socket` with `handler` until `stop` turns true. Each
/// request is served in its own task (a PingReq waits for the relayed probe).
pub async fn serve(socket: UdpSocket, handler: Arc<dyn EnvelopeHandler>, mut stop: watch::Receiver<bool>) {
    let socket = Arc::new(socket);
    let in_flight = Arc::new(Semaphore::new(SERVER_REQUESTS));
    let mut buffer = vec![0; MAX_DATAGRAM];
    loop {
        let received = tokio::select! {
            received = socket.recv_from(&mut buffer) => received,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        let (length, from) = match received {
            Ok(received) => received,
            Err(error) => {
                tracing::debug!(%error, "receiving a membership datagram");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(Datagram { call_id, body }) = Datagram::decode(&buffer[..length]) else {
            continue;
        };
        let (rpc, envelope) = match body {
            Some(Body::Ping(envelope)) => (Rpc::Ping, envelope),
            Some(Body::PingReq(envelope)) => (Rpc::PingReq, envelope),
            _ => continue,
        };
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            continue;
        };
        let (socket, handler) = (socket.clone(), handler.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let Ok(answer) = tokio::time::timeout(SERVER_REQUEST_TIMEOUT, handler.handle(rpc, envelope)).await else {
                return;
            };
            let answered = answer.is_ok();
            let body = match answer {
                Ok(reply) if reply.encoded_len() + DATAGRAM_OVERHEAD > MAX_DATAGRAM => error(Reason::TooLarge, ""),
                Ok(reply) => Body::Reply(reply),
                Err(status) if status.code() == tonic::Code::Unauthenticated => {
                    error(Reason::Rejected, status.message())
                }
                Err(status) => error(Reason::Failed, status.message()),
            };
            let reply = Datagram {
                call_id,
                body: Some(body),
            }
            .encode_to_vec();
            // Anyone can send a request from a forged source: what they get for it without the
            // key (an error) must not be a larger datagram at the forged address.
            if !answered && reply.len() > length {
                return;
            }
            if let Err(error) = socket.send_to(&reply, from).await {
                tracing::debug!(%error, peer = %from, "answering a membership datagram");
            }
        });
    }
}

fn error(reason: Reason, message: &str) -> Body {
    Body::Error(DatagramError {
        reason: reason.into(),
        message: message.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "10.0.0.2:7946".parse().unwrap()
    }

    #[test]
    fn probes_go_as_datagrams_until_one_goes_unanswered() {
        let mut paths = ProbePaths::default();
        let now = Instant::now();
        assert_eq!(paths.choose(peer(), Rpc::Ping, 300, now), Path::UdpTrial);
        assert_eq!(paths.choose(peer(), Rpc::PingReq, 300, now), Path::UdpTrial);
        paths.udp_answered(peer());
        assert_eq!(paths.choose(peer(), Rpc::Ping, 300, now), Path::Udp);
        assert!(!paths.udp_unanswered(peer(), now));
        assert_eq!(paths.choose(peer(), Rpc::Ping, 300, now), Path::Grpc);
        assert_eq!(paths.choose(peer(), Rpc::Ping, 300, now + FIRST_RETRY / 2), Path::Grpc);
    }

    #[test]
    fn sync_and_large_envelopes_go_over_grpc() {
        let mut paths = ProbePaths::default();
        let now = Instant::now();
        assert_eq!(paths.choose(peer(), Rpc::Sync, 300, now), Path::Grpc);
        assert_eq!(paths.choose(peer(), Rpc::Ping, MAX_DATAGRAM, now), Path::Grpc);
        assert_eq!(
            paths.choose(peer(), Rpc::Ping, MAX_DATAGRAM - DATAGRAM_OVERHEAD, now),
            Path::UdpTrial
        );
    }

    #[test]
    fn one_retry_at_a_time_after_the_wait() {
        let mut paths = ProbePaths::default();
        let now = Instant::now();
        paths.udp_unanswered(peer(), now);
        let later = now + FIRST_RETRY;
        assert_eq!(paths.choose(peer(), Rpc::Ping, 300, later), Path::UdpTrial);
        // Other probes while the retry is out go over gRPC.
        assert_eq!(paths.choose(peer(), Rpc::Ping, 300, later), Path::Grpc);
        paths.udp_answered(peer());
        assert_eq!(paths.choose(peer(), Rpc::Ping, 300, later), Path::Udp);
    }

    #[test]
    fn the_wait_doubles_only_while_grpc_answers_and_says_udp_looks_filtered() {
        let mut paths = ProbePaths::default();
        let mut now = Instant::now();
        paths.udp_unanswered(peer(), now);
        let mut wait = FIRST_RETRY;
        for _ in 0..8 {
            now += wait;
            paths.grpc_answered(peer());
            assert_eq!(paths.choose(peer(), Rpc::Ping, 300, now), Path::UdpTrial);
            assert!(paths.udp_unanswered(peer(), now), "gRPC answers, UDP does not");
            wait = (wait * 2).min(LONGEST_RETRY);
            assert_eq!(
                paths.choose(peer(), Rpc::Ping, 300, now + wait - Duration::from_millis(1)),
                Path::Grpc
            );
        }
        assert_eq!(wait, LONGEST_RETRY);
        // A peer that answers nothing at all (gone) is retried at the first wait again.
        now += wait;
        assert_eq!(paths.choose(peer(), Rpc::Ping, 300, now), Path::UdpTrial);
        assert!(!paths.udp_unanswered(peer(), now));
        assert_eq!(paths.choose(peer(), Rpc::Ping, 300, now + FIRST_RETRY), Path::UdpTrial);
    }

    #[test]
    fn peers_are_independent() {
        let mut paths = ProbePaths::default();
        let now = Instant::now();
        let other: SocketAddr = "[fd00::3]:7946".parse().unwrap();
        paths.udp_unanswered(peer(), now);
        assert_eq!(paths.choose(other, Rpc::Ping, 300, now), Path::UdpTrial);
        assert_eq!(paths.choose(peer(), Rpc::Ping, 300, now), Path::Grpc);
    }

    /// Answers every request with its own envelope, or as unauthenticated when it has no MAC.
    struct Echo;

    impl EnvelopeHandler for Echo {
        fn handle(&self, _rpc: Rpc, envelope: Envelope) -> BoxFuture<Result<Envelope, tonic::Status>> {
            Box::pin(async move {
                if envelope.mac.is_empty() {
                    Err(tonic::Status::unauthenticated("bad MAC"))
                } else {
                    Ok(envelope)
                }
            })
        }
    }

    /// A peer on 127.0.0.1: gRPC on a TCP port and, on the same UDP port, `udp`'s choice.
    enum Udp {
        Serving,
        /// A bound socket that never answers (UDP filtered on the way).
        Silent,
        /// Nothing bound (a speaker from before UDP probes).
        Closed,
    }

    struct Peer {
        address: SocketAddr,
        stop: watch::Sender<bool>,
        _silent: Option<UdpSocket>,
    }

    async fn peer_with(udp: Udp) -> Peer {
        use herald_proto::membership::v1::membership_server::MembershipServer;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        let handler: Arc<dyn EnvelopeHandler> = Arc::new(Echo);
        let mut silent = None;
        match udp {
            Udp::Serving => {
                let socket = UdpSocket::bind(address).await.unwrap();
                tokio::spawn(serve(socket, handler.clone(), stopped.clone()));
            }
            Udp::Silent => silent = Some(UdpSocket::bind(address).await.unwrap()),
            Udp::Closed => {}
        }
        let mut grpc_stopped = stopped;
        let service = MembershipServer::new(super::super::transport::MembershipService::new(handler));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), async move {
                    drop(grpc_stopped.wait_for(|s| *s).await)
                }),
        );
        Peer {
            address,
            stop,
            _silent: silent,
        }
    }

    fn transport() -> (UdpProbeTransport, MembershipMetrics) {
        let metrics = MembershipMetrics::default();
        let transport = UdpProbeTransport::new(GrpcTransport::new(Duration::from_millis(500)), metrics.clone());
        (transport, metrics)
    }

    fn envelope(payload: &[u8]) -> Envelope {
        Envelope {
            payload: payload.to_vec(),
            mac: vec![1; 32],
            next_mac: Vec::new(),
        }
    }

    fn calls(metrics: &MembershipMetrics, transport: &'static str) -> u64 {
        metrics.calls_over_count(transport)
    }

    const TIMEOUT: Duration = Duration::from_millis(300);

    async fn three_probes_answered(transport: &UdpProbeTransport, address: SocketAddr) {
        for round in 0..3u8 {
            let reply = transport
                .call(address, Rpc::Ping, envelope(&[round]), TIMEOUT)
                .await
                .unwrap();
            assert_eq!(reply.payload, [round]);
        }
    }

    #[tokio::test]
    async fn probes_are_answered_as_datagrams_and_sync_over_grpc() {
        let peer = peer_with(Udp::Serving).await;
        let (transport, metrics) = transport();
        three_probes_answered(&transport, peer.address).await;
        let reply = transport
            .call(peer.address, Rpc::PingReq, envelope(b"r"), TIMEOUT)
            .await;
        assert_eq!(reply.unwrap().payload, b"r");
        assert_eq!((calls(&metrics, "udp"), calls(&metrics, "grpc")), (4, 0));
        let reply = transport.call(peer.address, Rpc::Sync, envelope(b"s"), TIMEOUT).await;
        assert_eq!(reply.unwrap().payload, b"s");
        assert_eq!((calls(&metrics, "udp"), calls(&metrics, "grpc")), (4, 1));
        // The peer's UDP rejection of a probe-sized message reaches the caller as one.
        let mut unsigned = envelope(&[0; 300]);
        unsigned.mac.clear();
        let rejected = transport.call(peer.address, Rpc::Ping, unsigned, TIMEOUT).await;
        assert!(
            matches!(rejected, Err(TransportError::Rejected { ref message, .. }) if message == "bad MAC"),
            "{rejected:?}"
        );
        // A forged request smaller than the rejection gets none (no amplified reflection).
        let mut tiny = envelope(b"x");
        tiny.mac.clear();
        let unanswered = transport.call(peer.address, Rpc::Ping, tiny, TIMEOUT).await;
        assert!(
            matches!(unanswered, Err(TransportError::Timeout { .. })),
            "{unanswered:?}"
        );
        peer.stop.send_replace(true);
    }

    #[tokio::test]
    async fn a_speaker_that_answered_datagrams_and_died_is_refused() {
        let peer = peer_with(Udp::Serving).await;
        let (transport, _) = transport();
        transport
            .call(peer.address, Rpc::Ping, envelope(b"a"), TIMEOUT)
            .await
            .unwrap();
        peer.stop.send_replace(true);
        // The server ends a moment later: wait (bounded) until its port is free.
        for _ in 0..100 {
            if std::net::UdpSocket::bind(peer.address).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let outcome = transport.call(peer.address, Rpc::Ping, envelope(b"b"), TIMEOUT).await;
        assert_eq!(outcome, Err(TransportError::Refused { address: peer.address }));
    }

    #[tokio::test]
    async fn a_peer_without_udp_is_probed_over_grpc_without_a_lost_probe() {
        let peer = peer_with(Udp::Closed).await;
        let (transport, metrics) = transport();
        three_probes_answered(&transport, peer.address).await;
        // One refused datagram, then every probe over gRPC.
        assert_eq!((calls(&metrics, "udp"), calls(&metrics, "grpc")), (1, 3));
        peer.stop.send_replace(true);
    }

    #[tokio::test]
    async fn a_peer_whose_udp_is_filtered_is_probed_over_grpc_after_one_lost_probe() {
        let peer = peer_with(Udp::Silent).await;
        let (transport, metrics) = transport();
        let lost = transport.call(peer.address, Rpc::Ping, envelope(b"a"), TIMEOUT).await;
        assert_eq!(
            lost,
            Err(TransportError::Timeout {
                address: peer.address,
                timeout: TIMEOUT
            })
        );
        three_probes_answered(&transport, peer.address).await;
        assert_eq!((calls(&metrics, "udp"), calls(&metrics, "grpc")), (1, 3));
        peer.stop.send_replace(true);
    }
}
