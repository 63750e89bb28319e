//! The membership runtime: a tokio task that drives [`Core`] with real time, a tonic server
//! for the `Membership` service, and the handle the speaker's wiring uses.
//!
//! ```text
//! let membership = Membership::start(config, "node-a", key, health, &mut registry, &mut tasks).await?;
//! membership.set_peers(peers);                 // from the API, on every change
//! membership.set_local_health(health);         // whenever the announcer/interfaces change
//! membership.watch_closely(owners_i_back_up);  // election::watch_targets(node, &result)
//! let mut view = membership.view();            // watch::Receiver<MembershipView>
//! ...
//! membership.leave().await;                    // on SIGTERM, before exiting
//! ```
//!
//! Its parts (the driver, the UDP and gRPC servers) run in the caller's [`Tasks`], which
//! says when one of them ends while the speaker runs.
//!
//! The core sits behind a `std` mutex held only for synchronous calls, never across an
//! `.await`; every call into it is followed by carrying out its effects (spawning one task per
//! outgoing request), publishing the view if it changed, and updating metrics.
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_config::process::Tasks;
use herald_proto::membership::v1::membership_server::MembershipServer;
use herald_proto::membership::v1::{Envelope, Message};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tonic::Status;
use tonic::transport::server::TcpIncoming;

use super::auth::{Authenticator, Boot, KeyRing, Opened, unix_ms_now};
use super::metrics::MembershipMetrics;
use super::state::{CallFailure, Core, Effect, Inbound, ReplyToken, Rpc};
#[cfg(any(test, feature = "testing"))]
use super::transport::MemoryNetwork;
use super::transport::{
    BoxFuture, EnvelopeHandler, GrpcTransport, MAX_MESSAGE_BYTES, MembershipService, PeerTransport, TransportError,
};
use super::udp::{self, UdpProbeTransport};
use super::{MembershipConfig, MembershipView, NodeHealth, Peer};

/// Why membership could not start.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The gRPC port could not be bound.
    #[error("binding the membership gRPC server to {address}")]
    Bind {
        /// Address from the config.
        address: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The UDP port for probes (the gRPC server's address and port) could not be bound.
    #[error("binding the membership UDP socket to {address}")]
    BindUdp {
        /// The gRPC server's bound address.
        address: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

struct Shared {
    config: MembershipConfig,
    core: Mutex<Core>,
    auth: Authenticator,
    transport: Arc<dyn PeerTransport>,
    deferred: Mutex<HashMap<ReplyToken, oneshot::Sender<Message>>>,
    view: watch::Sender<MembershipView>,
    metrics: MembershipMetrics,
    /// Set only by the test tooling (`Membership::kill`, `hang`, feature `testing`): behave
    /// like a vanished host.
    killed: AtomicBool,
    last_skew_warning: Mutex<Option<Instant>>,
    /// When the driver means to tick next (`None`: not before an input). Taken with `core`
    /// held, so a call that makes the core's next deadline earlier always sees it and wakes
    /// the driver through `wake`.
    planned_tick: Mutex<Option<Instant>>,
    wake: tokio::sync::Notify,
}

impl Shared {
    /// Runs `f` on the core, then carries out what it produced.
    fn with_core<R>(self: &Arc<Self>, f: impl FnOnce(&mut Core) -> R) -> R {
        let (result, effects) = {
            let mut core = self.core.lock().unwrap_or_else(|e| e.into_inner());
            let before = core.stats();
            let result = f(&mut core);
            let events = core.take_events();
            self.metrics.events(&events);
            self.metrics.stats(before, core.stats());
            if core.view_changed() {
                self.publish(core.view());
            }
            let next = core.next_deadline(Instant::now());
            let mut planned = self.planned_tick.lock().unwrap_or_else(|e| e.into_inner());
            if sooner(next, *planned) {
                *planned = next;
                self.wake.notify_one();
            }
            (result, core.take_effects())
        };
        self.dispatch(effects);
        result
    }

    /// Publishes `view`. Called with the core locked, so views go out in the order the core
    /// changed: published after letting go of it, an older view could land last and stand
    /// until the next change (a peer's end of its rejoin hold went unseen for 37 s, and two
    /// nodes announced its IP). Readers only clone the view out of the channel, never calling
    /// back into membership while they hold it.
    fn publish(&self, view: MembershipView) {
        self.metrics.view(&view);
        self.view.send_replace(view);
    }

    /// When the driver ticks next: the core's next deadline, but at most one tick per
    /// `spacing` ([`MembershipConfig::tick`]) after the last one.
    fn plan_tick(&self, last_tick: Option<Instant>, spacing: Duration) -> Option<Instant> {
        let core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        let at = core
            .next_deadline(Instant::now())
            .map(|deadline| last_tick.map_or(deadline, |last| deadline.max(last + spacing)));
        *self.planned_tick.lock().unwrap_or_else(|e| e.into_inner()) = at;
        at
    }

    fn dispatch(self: &Arc<Self>, effects: Vec<Effect>) -> Vec<JoinHandle<()>> {
        let mut calls = Vec::new();
        if self.killed.load(Ordering::SeqCst) {
            return calls;
        }
        for effect in effects {
            match effect {
                Effect::Request {
                    id,
                    to,
                    address,
                    rpc,
                    message,
                    timeout,
                } => {
                    let envelope = self.auth.seal(message, &to, unix_ms_now());
                    self.metrics.sent(rpc);
                    let shared = self.clone();
                    calls.push(tokio::spawn(async move {
                        let outcome = shared.transport.call(address, rpc, envelope, timeout).await;
                        if shared.killed.load(Ordering::SeqCst) {
                            return;
                        }
                        enum Outcome {
                            Reply(Message),
                            Failed(CallFailure),
                            Rejected,
                        }
                        let outcome = match outcome {
                            Ok(envelope) => match shared.auth.open(&envelope, Instant::now(), unix_ms_now()) {
                                Ok(opened) => {
                                    shared.metrics.received(rpc);
                                    shared.check_clock(&opened);
                                    Outcome::Reply(opened.message)
                                }
                                Err(rejection) => {
                                    shared.metrics.rejected(rejection);
                                    tracing::debug!(peer = %to, %rejection, "rejected reply");
                                    Outcome::Failed(CallFailure::Other)
                                }
                            },
                            Err(error @ TransportError::Rejected { .. }) => {
                                shared.metrics.transport_error(rpc);
                                tracing::warn!(peer = %to, %error, "peer rejected our message: is the shared secret the same?");
                                Outcome::Rejected
                            }
                            Err(error) => {
                                shared.metrics.transport_error(rpc);
                                tracing::debug!(peer = %to, rpc = rpc.as_str(), %error, "membership call failed");
                                Outcome::Failed(match error {
                                    TransportError::Refused { .. } => CallFailure::Refused,
                                    _ => CallFailure::Other,
                                })
                            }
                        };
                        shared.with_core(|core| match outcome {
                            Outcome::Reply(message) => core.handle_response(id, message, Instant::now()),
                            Outcome::Failed(failure) => core.handle_failure(id, failure, Instant::now()),
                            Outcome::Rejected => core.handle_rejected(id, Instant::now()),
                        });
                    }));
                }
                Effect::Reply { token, message } => {
                    let waiting = self.deferred.lock().unwrap_or_else(|e| e.into_inner()).remove(&token);
                    if let Some(waiting) = waiting {
                        // The caller may have given up; nothing to do then.
                        drop(waiting.send(message));
                    }
                }
            }
        }
        calls
    }

    async fn serve(self: Arc<Self>, rpc: Rpc, envelope: Envelope) -> Result<Envelope, Status> {
        if self.killed.load(Ordering::SeqCst) {
            // A vanished host: the caller hears nothing and times out.
            std::future::pending::<()>().await;
        }
        let message = match self.auth.open(&envelope, Instant::now(), unix_ms_now()) {
            Ok(opened) => {
                self.check_clock(&opened);
                opened.message
            }
            Err(rejection) => {
                self.metrics.rejected(rejection);
                tracing::debug!(%rejection, "rejected request");
                return Err(Status::unauthenticated(rejection.to_string()));
            }
        };
        if !rpc_matches(rpc, &message) {
            return Err(Status::invalid_argument("message body does not match the RPC"));
        }
        self.metrics.received(rpc);
        let caller = message.sender.clone();
        let shared = self.clone();
        let inbound = self.with_core(move |core| match core.handle_request(message, Instant::now()) {
            Inbound::Reply(reply) => Ok(reply),
            Inbound::Deferred(token) => {
                let (sender, receiver) = oneshot::channel();
                shared
                    .deferred
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(token, sender);
                Err(Some((token, receiver)))
            }
            Inbound::Invalid => Err(None),
        });
        let reply = match inbound {
            Ok(reply) => reply,
            Err(Some((token, receiver))) => {
                // The core answers a PingReq within its probe timeout; wait a little longer.
                let wait = self.config.probe_timeout * 2;
                match tokio::time::timeout(wait, receiver).await {
                    Ok(Ok(reply)) => reply,
                    _ => {
                        self.deferred.lock().unwrap_or_else(|e| e.into_inner()).remove(&token);
                        return Err(Status::deadline_exceeded("relayed probe did not finish"));
                    }
                }
            }
            Err(None) => return Err(Status::invalid_argument("not a request")),
        };
        if self.killed.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.metrics.sent(rpc);
        Ok(self.auth.seal(reply, &caller, unix_ms_now()))
    }

    /// Clocks do not matter to membership, but a node whose clock is off makes logs and Events
    /// hard to read: count such messages, and say so now and then.
    fn check_clock(&self, opened: &Opened) {
        if !opened.clock_off_by_more_than(self.config.clock_skew_warning) {
            return;
        }
        self.metrics.skewed_message();
        let mut last = self.last_skew_warning.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|at| at.elapsed() >= SKEW_WARNING_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(
                peer = %opened.message.sender,
                offset_ms = opened.clock_offset_ms,
                "a peer's clock differs from ours by more than {:?} (membership does not depend on it; check NTP)",
                self.config.clock_skew_warning
            );
        }
    }
}

/// Calls served at once per peer connection.
const SERVER_CALLS_PER_CONNECTION: usize = 32;
/// A call not answered by then is ended by the server.
const SERVER_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// At most one clock-skew warning per this interval.
const SKEW_WARNING_EVERY: Duration = Duration::from_secs(60);

fn rpc_matches(rpc: Rpc, message: &Message) -> bool {
    use herald_proto::membership::v1::message::Body;
    matches!(
        (rpc, &message.body),
        (Rpc::Ping, Some(Body::Ping(_)))
            | (Rpc::PingReq, Some(Body::PingReq(_)))
            | (Rpc::Sync, Some(Body::SyncRequest(_)))
    )
}

struct Handler(Arc<Shared>);

impl EnvelopeHandler for Handler {
    fn handle(&self, rpc: Rpc, envelope: Envelope) -> BoxFuture<Result<Envelope, Status>> {
        Box::pin(self.0.clone().serve(rpc, envelope))
    }
}

/// A running membership: the handle the wiring keeps. Dropping it stops nothing; call
/// [`Membership::leave`] then [`Membership::shutdown`].
pub struct Membership {
    shared: Arc<Shared>,
    view: watch::Receiver<MembershipView>,
    local_addr: SocketAddr,
    /// The driver, then the servers (when serving): what the tests' `hang` and `kill` abort.
    parts: Vec<AbortHandle>,
    /// Each part holds a clone until it ends, so `parts_done` closes once they all have.
    part_running: mpsc::Sender<()>,
    parts_done: mpsc::Receiver<()>,
    stop: watch::Sender<bool>,
}

/// `a` comes before `b`, where `None` is never.
fn sooner(a: Option<Instant>, b: Option<Instant>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a < b,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Random per process start: tells a restarted speaker's messages from replays of the old
/// one's.
fn random_boot_id() -> u64 {
    rand::random()
}

/// The failure-detection timings in effect, as `herald_membership_timing_seconds{setting}`:
/// what decides how fast a lost node is noticed, readable without the DaemonSet's arguments.
fn register_timings(config: &MembershipConfig, registry: &mut Registry) {
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    let timings = Family::<Vec<(&'static str, &'static str)>, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for (setting, value) in [
        ("probe_interval", config.probe_interval),
        ("watch_probe_interval", config.watch_probe_interval),
        ("probe_timeout", config.probe_timeout),
        ("suspicion_timeout", config.suspicion_timeout),
        ("suspicion_probe_interval", config.suspicion_probe_interval),
    ] {
        timings
            .get_or_create(&vec![("setting", setting)])
            .set(value.as_secs_f64());
    }
    registry.register(
        "membership_timing_seconds",
        "Failure-detection timings in effect (--probe-interval, --watch-probe-interval, --probe-timeout, --suspicion-timeout; the suspicion probe interval is fixed)",
        timings,
    );
}

impl Membership {
    /// Binds the gRPC server on `config.listen`, registers the metrics in `registry` and starts
    /// the protocol as `node`, authenticating with `key`, with `health` as this node's health
    /// from the first message on (peers must not hear a made-up one while the caller is still
    /// starting up). Peers are probed once [`Membership::set_peers`] gave them.
    pub async fn start(
        config: MembershipConfig,
        node: &str,
        keys: impl Into<KeyRing>,
        health: NodeHealth,
        registry: &mut Registry,
        tasks: &mut Tasks,
    ) -> Result<Membership, MembershipError> {
        let metrics = MembershipMetrics::default();
        metrics.register(registry);
        register_timings(&config, registry);
        Self::start_with_metrics(config, node, keys, health, metrics, tasks).await
    }

    /// [`Membership::start`] with metrics the caller registered (or not).
    pub async fn start_with_metrics(
        config: MembershipConfig,
        node: &str,
        keys: impl Into<KeyRing>,
        health: NodeHealth,
        metrics: MembershipMetrics,
        tasks: &mut Tasks,
    ) -> Result<Membership, MembershipError> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| MembershipError::Bind {
                address: config.listen,
                source,
            })?;
        let bound = listener.local_addr().map_err(|source| MembershipError::Bind {
            address: config.listen,
            source,
        })?;
        let advertised = match config.advertise_address {
            Some(address) => address,
            None => bound,
        };
        // Probes answer from the address they were sent to because this is the gRPC server's
        // address, which the speaker binds to its advertised one.
        let datagrams = tokio::net::UdpSocket::bind(bound)
            .await
            .map_err(|source| MembershipError::BindUdp { address: bound, source })?;
        let transport = Arc::new(UdpProbeTransport::new(
            GrpcTransport::new(config.probe_timeout),
            metrics.clone(),
        ));
        let mut membership = Self::assemble(config, node, advertised, keys.into(), metrics, transport, tasks);
        // Before the server answers anyone.
        membership.set_local_health(health);
        let handler: Arc<dyn EnvelopeHandler> = Arc::new(Handler(membership.shared.clone()));
        let service = MembershipServer::new(MembershipService::new(handler.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let udp_server = udp::serve(datagrams, handler, membership.stop.subscribe());
        membership.spawn_part(tasks, "membership UDP server", udp_server);
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let mut stop = membership.stop.subscribe();
        let server = async move {
            let shutdown = async move {
                // Stopped, or the membership is gone: either way the server ends.
                drop(stop.wait_for(|stopped| *stopped).await);
            };
            // A peer gets a few calls at a time and a bounded wait; a misbehaving one cannot
            // hold the server (every legitimate call ends within a probe timeout or a Sync).
            let result = tonic::transport::Server::builder()
                .concurrency_limit_per_connection(SERVER_CALLS_PER_CONNECTION)
                .max_concurrent_streams(Some(SERVER_CALLS_PER_CONNECTION as u32))
                .timeout(SERVER_CALL_TIMEOUT)
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await;
            if let Err(error) = result {
                tracing::error!(%error, "membership gRPC server failed");
            }
        };
        membership.spawn_part(tasks, "membership gRPC server", server);
        Ok(membership)
    }

    /// A membership on an in-memory [`MemoryNetwork`] at `address` (tests, no sockets).
    #[cfg(any(test, feature = "testing"))]
    pub fn start_in_memory(
        config: MembershipConfig,
        node: &str,
        address: SocketAddr,
        keys: impl Into<KeyRing>,
        network: &MemoryNetwork,
        tasks: &mut Tasks,
    ) -> Membership {
        let transport = Arc::new(network.clone());
        let mut membership = Self::assemble(
            config,
            node,
            address,
            keys.into(),
            MembershipMetrics::default(),
            transport,
            tasks,
        );
        membership.local_addr = address;
        network.register(address, Arc::new(Handler(membership.shared.clone())));
        membership
    }

    fn assemble(
        config: MembershipConfig,
        node: &str,
        advertised: SocketAddr,
        keys: KeyRing,
        metrics: MembershipMetrics,
        transport: Arc<dyn PeerTransport>,
        tasks: &mut Tasks,
    ) -> Membership {
        metrics.keys(keys.signing_keys());
        let boot_id = random_boot_id();
        // Start above any incarnation a previous run of this node reached (it raised its own
        // at most a few times per second).
        let incarnation = u64::try_from(unix_ms_now()).unwrap_or(0);
        let mut core = Core::new(
            config.clone(),
            node,
            advertised,
            incarnation,
            NodeHealth::default(),
            boot_id,
        );
        let (view_tx, view_rx) = watch::channel(core.view());
        let shared = Arc::new(Shared {
            auth: Authenticator::new(
                keys,
                node,
                Boot {
                    id: boot_id,
                    started_unix_ms: unix_ms_now(),
                },
            ),
            config: config.clone(),
            core: Mutex::new(core),
            transport,
            deferred: Mutex::default(),
            view: view_tx,
            metrics,
            killed: AtomicBool::new(false),
            last_skew_warning: Mutex::new(None),
            planned_tick: Mutex::new(None),
            wake: tokio::sync::Notify::new(),
        });
        let (stop, mut stopped) = watch::channel(false);
        let driver_shared = shared.clone();
        let tick = config.tick;
        // The driver sleeps until the core's next deadline (an idle speaker wakes for its
        // probes, not 200 times a second); a call that brings a deadline forward wakes it.
        let driver = async move {
            let mut last_tick = None;
            loop {
                let at = driver_shared.plan_tick(last_tick, tick);
                let due = async {
                    match at {
                        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = due => {
                        let now = Instant::now();
                        last_tick = Some(now);
                        driver_shared.with_core(|core| core.tick(now));
                    }
                    _ = driver_shared.wake.notified() => {}
                    _ = stopped.wait_for(|s| *s) => break,
                }
            }
        };
        let (part_running, parts_done) = mpsc::channel(1);
        let mut membership = Membership {
            shared,
            view: view_rx,
            local_addr: advertised,
            parts: Vec::new(),
            part_running,
            parts_done,
            stop,
        };
        membership.spawn_part(tasks, "membership driver", driver);
        membership
    }

    /// Runs `part` in `tasks`: should it end while the speaker runs, peers no longer hear from
    /// this node or it no longer probes them, and `tasks` says so (the speaker then stops).
    fn spawn_part(&mut self, tasks: &mut Tasks, name: &'static str, part: impl Future<Output = ()> + Send + 'static) {
        let running = self.part_running.clone();
        let handle = tasks.spawn(name, async move {
            part.await;
            drop(running);
        });
        self.parts.push(handle);
    }

    /// The view of live members and their health; changes whenever a member changes state or
    /// health, or the view becomes settled.
    pub fn view(&self) -> watch::Receiver<MembershipView> {
        self.view.clone()
    }

    /// The address this node advertises (with the port actually bound).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Metrics handles.
    pub fn metrics(&self) -> &MembershipMetrics {
        &self.shared.metrics
    }

    /// Takes the speakers' keys as the Secret holds them now (a rotation's steps); the key a
    /// change replaced stays accepted for a while (see [`auth`](super::auth)).
    pub fn set_keys(&self, keys: KeyRing) {
        let count = keys.signing_keys();
        if self.shared.auth.set_keys(keys, Instant::now()) {
            self.shared.metrics.keys(count);
            tracing::info!(keys = count, "took the speakers' keys from the Secret");
        }
    }

    /// The keys this speaker signs with now.
    pub fn keys(&self) -> KeyRing {
        self.shared.auth.keys()
    }

    /// Sets the peers listed by the API (see [`Core::set_peers`]). The first call starts the
    /// protocol.
    pub fn set_peers(&self, peers: Vec<Peer>) {
        self.shared.with_core(|core| core.set_peers(&peers, Instant::now()));
    }

    /// Sets this node's health; a change is gossiped with a raised incarnation.
    pub fn set_local_health(&self, health: NodeHealth) {
        self.shared
            .with_core(|core| core.set_local_health(health, Instant::now()));
    }

    /// Sets the members to probe at the fast rate (`election::watch_targets`).
    pub fn watch_closely(&self, nodes: BTreeSet<String>) {
        self.shared.with_core(|core| core.watch_closely(&nodes, Instant::now()));
    }

    /// Leaves gracefully: tells every live member directly and waits for their answers, at
    /// most [`MembershipConfig::leave_timeout`]. Keeps answering afterwards until
    /// [`Membership::shutdown`].
    pub async fn leave(&self) {
        let deadline = tokio::time::Instant::now() + self.shared.config.leave_timeout;
        let calls = {
            let mut core = self.shared.core.lock().unwrap_or_else(|e| e.into_inner());
            core.leave(Instant::now());
            let effects = core.take_effects();
            self.shared.publish(core.view());
            drop(core);
            self.shared.dispatch(effects)
        };
        tracing::info!(peers = calls.len(), "left the membership");
        for call in calls {
            if tokio::time::timeout_at(deadline, call).await.is_err() {
                break;
            }
        }
    }

    /// Stops the driver and the servers (in-flight calls finish), waiting for them at most 2 s.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        let Membership {
            part_running,
            mut parts_done,
            ..
        } = self;
        drop(part_running);
        // Nothing is ever sent: `recv` returns once every part has dropped its sender.
        if tokio::time::timeout(Duration::from_secs(2), parts_done.recv())
            .await
            .is_err()
        {
            tracing::warn!("membership's driver and servers did not stop within 2 s");
        }
    }

    /// Simulates a host that vanished without a trace (for tests): from now on nothing is
    /// sent and received requests are never answered (no connection reset), so peers only
    /// notice through their timeouts.
    #[cfg(any(test, feature = "testing"))]
    pub fn hang(&self) {
        self.shared.killed.store(true, Ordering::SeqCst);
        // The first part is the driver; the servers keep accepting and never answering.
        if let Some(driver) = self.parts.first() {
            driver.abort();
        }
    }

    /// Simulates a crashed process (for tests): nothing is sent or answered any more, and
    /// the driver and server tasks are aborted, which drops their connections.
    #[cfg(any(test, feature = "testing"))]
    pub fn kill(&self) {
        self.shared.killed.store(true, Ordering::SeqCst);
        self.stop.send_replace(true);
        for part in &self.parts {
            part.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::auth::SecretKey;

    #[tokio::test]
    async fn a_part_that_ends_is_named_by_the_tasks_and_shutdown_waits_for_the_rest() {
        let mut tasks = Tasks::default();
        let membership = Membership::start_in_memory(
            MembershipConfig::default(),
            "node-a",
            "127.0.0.1:7946".parse().unwrap(),
            SecretKey::new(b"k".to_vec()),
            &MemoryNetwork::default(),
            &mut tasks,
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(50), tasks.ended())
                .await
                .is_err(),
            "nothing ends while it runs"
        );
        membership.parts[0].abort();
        let ended = tokio::time::timeout(Duration::from_secs(5), tasks.ended())
            .await
            .expect("the driver's end is reported");
        assert_eq!(ended.task, "membership driver");
        tokio::time::timeout(Duration::from_secs(5), membership.shutdown())
            .await
            .expect("shutdown returns once every part has ended");
    }

    /// Two calls that change the view at about the same time, from two threads (a peer's
    /// message on a gRPC task, the speaker's health on another): the view published last must
    /// be the core's latest. Publishing after letting go of the core let the older view land
    /// last, and it stood until the next change (in the lab: a peer's end of its rejoin hold
    /// unseen for 37 s, two owners for an IP).
    #[test]
    fn the_view_published_last_is_the_latest_even_when_changes_race() {
        const ROUNDS: usize = 3_000;
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let _entered = runtime.enter();
        let mut tasks = Tasks::default();
        let membership = Arc::new(Membership::start_in_memory(
            MembershipConfig::default(),
            "node-a",
            "127.0.0.1:7946".parse().unwrap(),
            SecretKey::new(b"k".to_vec()),
            &MemoryNetwork::default(),
            &mut tasks,
        ));
        let view = membership.view();
        let health = |round: usize, thread: usize| NodeHealth {
            announcer_ready: true,
            interfaces: [format!("eth{round}-{thread}")].into(),
            ..Default::default()
        };
        let mut stale = 0;
        for round in 0..ROUNDS {
            let start = Arc::new(std::sync::Barrier::new(2));
            let threads: Vec<_> = (0..2)
                .map(|thread| {
                    let (membership, start) = (membership.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        membership.set_local_health(health(round, thread));
                    })
                })
                .collect();
            for thread in threads {
                thread.join().unwrap();
            }
            let latest = membership.shared.core.lock().unwrap().view();
            if *view.borrow() != latest {
                stale += 1;
            }
        }
        assert_eq!(
            stale, 0,
            "rounds of {ROUNDS} whose published view was older than the core's"
        );
    }
}
