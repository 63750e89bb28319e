//! The SWIM state machine: pure, no I/O and no clock of its own.
//!
//! The driver (the tokio runtime, or the deterministic simulation) calls [`Core::tick`] with
//! the current time, hands it every authenticated message ([`Core::handle_request`],
//! [`Core::handle_response`], [`Core::handle_failure`]) and carries out the
//! [`Effect`]s it returns: requests to send (each with a [`RequestId`] whose response or
//! failure must be reported back) and deferred replies (to a PingReq, once the relayed ping
//! finished). The protocol itself is described in the parent module.
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use herald_proto::membership::v1 as pb;
use pb::message::Body;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{RngExt, SeedableRng};

use super::{MemberInfo, MemberState, MembershipConfig, MembershipView, NodeHealth, Peer};

/// Identifies a request sent by [`Effect::Request`]; its outcome goes back to the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// Identifies a received request whose reply the core will give later ([`Effect::Reply`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplyToken(pub u64);

/// The three RPCs of the `Membership` service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rpc {
    /// Direct probe (also used to push news: refutations, leave).
    Ping,
    /// Indirect probe through a helper.
    PingReq,
    /// Full state exchange.
    Sync,
}

impl Rpc {
    /// Short stable name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Rpc::Ping => "ping",
            Rpc::PingReq => "ping_req",
            Rpc::Sync => "sync",
        }
    }
}

/// Something the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Send `message` to `to` at `address` and report the response with
    /// [`Core::handle_response`] or the failure with [`Core::handle_failure`]. The core
    /// applies its own timeouts; `timeout` only bounds how long the driver keeps the call open.
    Request {
        /// Correlates the outcome.
        id: RequestId,
        /// Destination node.
        to: String,
        /// Destination address.
        address: SocketAddr,
        /// Which RPC.
        rpc: Rpc,
        /// Message without sender stamp (the authenticator adds it).
        message: pb::Message,
        /// Give up on the call after this long.
        timeout: Duration,
    },
    /// Answer the request that got [`Inbound::Deferred`] with this token.
    Reply {
        /// Which request.
        token: ReplyToken,
        /// The reply.
        message: pb::Message,
    },
}

/// What to do with a received request.
#[derive(Clone, Debug, PartialEq)]
pub enum Inbound {
    /// Answer at once with this message.
    Reply(pb::Message),
    /// The answer comes later as an [`Effect::Reply`] with this token.
    Deferred(ReplyToken),
    /// Not a request (e.g. an Ack sent as one): answer with an error.
    Invalid,
}

/// A member changed state: for logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberEvent {
    /// The member.
    pub node: String,
    /// Previous state; `None` for a new member.
    pub from: Option<MemberState>,
    /// New state.
    pub to: MemberState,
    /// Incarnation of the new state.
    pub incarnation: u64,
    /// Why.
    pub reason: &'static str,
}

/// Counters the core keeps (the driver counts messages).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Suspicions started by our own failed probes.
    pub suspicions: u64,
    /// Local suspicions cancelled by a sign of life.
    pub suspicions_cleared: u64,
    /// Members we declared dead ourselves.
    pub confirmed_dead: u64,
    /// Of those, members whose host refused connections (a dead process), confirmed before the
    /// suspicion timeout.
    pub refused_deaths: u64,
    /// Times we raised our incarnation to refute a claim about us.
    pub refutations: u64,
    /// Of those, claims that we were dead.
    pub deaths_refuted: u64,
    /// Gossip entries dropped as invalid (bad address or state, absurd incarnation).
    pub invalid_updates: u64,
    /// New members heard of through gossip and not learned, because [`MAX_UNLISTED_MEMBERS`]
    /// members nobody listed are known already.
    pub unlisted_ignored: u64,
}

#[derive(Clone, Debug)]
struct Member {
    address: SocketAddr,
    incarnation: u64,
    state: MemberState,
    health: Option<NodeHealth>,
    /// Last authenticated message from the member itself.
    last_heard: Option<Instant>,
    /// Listed by the wiring's peer list. Members nobody listed (learned from gossip) are
    /// bounded and forgotten once not live.
    listed: bool,
    /// We declared it dead because its host refused connections: the node is up.
    host_up: bool,
    /// It says it is back from a minority partition (see the module docs, "Rejoining").
    rejoining: bool,
}

#[derive(Clone, Debug)]
enum Pending {
    /// Our direct ping. After `fail_at` it counts as failed, but a late Ack until `expire_at`
    /// is still a sign of life.
    Probe {
        target: String,
        sent_at: Instant,
        fail_at: Instant,
        expire_at: Instant,
        failed: bool,
    },
    /// Our PingReq to a helper about `target`.
    Indirect { target: String, expire_at: Instant },
    /// Our ping to `target` on behalf of a PingReq.
    Relay {
        token: ReplyToken,
        target: String,
        fail_at: Instant,
    },
    /// A Sync, Notify or Leave ping: only its reply's gossip matters.
    Exchange { expire_at: Instant, initial: bool },
}

#[derive(Clone, Debug)]
struct LocalSuspicion {
    incarnation: u64,
    deadline: Instant,
    next_direct: Instant,
    next_indirect: Instant,
    indirect_rounds: u32,
    /// Our own probes the member's host refused (see [`CallFailure::Refused`]).
    refused: u32,
    /// Helpers whose ping the member's host refused too.
    refused_to_helpers: u32,
    /// The refusals confirmed the death before the deadline.
    refusal_confirmed: bool,
    /// When the last round of PingReqs went out.
    last_indirect: Option<Instant>,
}

/// How a call failed at the transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallFailure {
    /// The peer's host refused the connection: it is up and nothing listens on the speaker's
    /// port, so the speaker process is gone. A partition never looks like this.
    Refused,
    /// Anything else: no answer in time, a reset, an error status.
    Other,
}

/// A change still being spread by gossip.
#[derive(Clone, Debug)]
struct QueuedGossip {
    /// Transmissions left, each to a member that has not had it from us yet: a node that
    /// probes the same owners many times a second would otherwise spend them all on those.
    left: u32,
    sent_to: BTreeSet<String>,
}

/// Rounds of PingReqs during one suspicion.
const INDIRECT_ROUNDS: u32 = 2;
/// Members learned from gossip that the peer list does not name, at most: they are joiners the
/// API cache has not shown yet, and a holder of the key could otherwise invent endless ones.
pub const MAX_UNLISTED_MEMBERS: usize = 1024;
/// Incarnations above this are nonsense (they start at a Unix time in ms and rise by one per
/// refutation); taking one would make the next refutation overflow.
pub const MAX_INCARNATION: u64 = 1 << 53;

/// The membership state machine of one speaker.
#[derive(Debug)]
pub struct Core {
    config: MembershipConfig,
    node: String,
    address: SocketAddr,
    incarnation: u64,
    health: NodeHealth,
    leaving: bool,
    members: BTreeMap<String, Member>,
    /// node (possibly ourselves) → the news about it still to spread.
    gossip: BTreeMap<String, QueuedGossip>,
    /// Closely watched nodes → time of their next probe.
    watch: BTreeMap<String, Instant>,
    slow_next: Option<Instant>,
    slow_order: Vec<String>,
    next_sync: Option<Instant>,
    pending: BTreeMap<RequestId, Pending>,
    suspicions: BTreeMap<String, LocalSuspicion>,
    /// Nodes that told us a claim about us we refuted: ping them with the refutation.
    refute_to: BTreeSet<String>,
    next_id: u64,
    next_token: u64,
    effects: Vec<Effect>,
    events: Vec<MemberEvent>,
    rng: StdRng,
    started: bool,
    peers_known: bool,
    /// Some authenticated message from a peer arrived.
    had_contact: bool,
    settled: bool,
    initial_syncs: usize,
    /// An initial sync failed for another reason than our messages being rejected.
    initial_sync_failed_plainly: bool,
    /// Every initial sync was rejected (wrong secret?): try again at this time.
    initial_sync_retry: Option<Instant>,
    view_dirty: bool,
    /// When the view last turned unsettled (start, or new peers before any contact), and when
    /// a warning about it was last logged: a view that does not settle keeps the speaker
    /// unready, and its log should say what it is waiting for.
    unsettled_since: Option<Instant>,
    unsettled_warned: Option<Instant>,
    /// Cut off from most of the cluster, or back from it: we rank after the others until
    /// then (see the module docs, "Rejoining").
    rejoining_until: Option<Instant>,
    stats: CoreStats,
}

/// How long the view may stay unsettled before the core warns (and then again as often).
const UNSETTLED_WARN_EVERY: Duration = Duration::from_secs(10);

impl Core {
    /// A core for `node`, reachable at `address`. `incarnation` should grow across restarts
    /// (the runtime uses the start time in ms) so a restarted speaker overrides stale claims;
    /// `seed` drives every random choice (helpers, round-robin order).
    pub fn new(
        config: MembershipConfig,
        node: impl Into<String>,
        address: SocketAddr,
        incarnation: u64,
        health: NodeHealth,
        seed: u64,
    ) -> Self {
        Core {
            config,
            node: node.into(),
            address,
            incarnation,
            health,
            leaving: false,
            members: BTreeMap::new(),
            gossip: BTreeMap::new(),
            watch: BTreeMap::new(),
            slow_next: None,
            slow_order: Vec::new(),
            next_sync: None,
            pending: BTreeMap::new(),
            suspicions: BTreeMap::new(),
            refute_to: BTreeSet::new(),
            next_id: 1,
            next_token: 1,
            effects: Vec::new(),
            events: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
            started: false,
            peers_known: false,
            had_contact: false,
            settled: false,
            initial_syncs: 0,
            initial_sync_failed_plainly: false,
            initial_sync_retry: None,
            view_dirty: true,
            unsettled_since: None,
            unsettled_warned: None,
            rejoining_until: None,
            stats: CoreStats::default(),
        }
    }

    /// Local node name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Our current incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Counters.
    pub fn stats(&self) -> CoreStats {
        self.stats
    }

    /// Takes the effects produced since the last call.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// Takes the member state changes since the last call.
    pub fn take_events(&mut self) -> Vec<MemberEvent> {
        std::mem::take(&mut self.events)
    }

    /// Whether the view changed since the last [`Core::view`] (cheap check for drivers).
    pub fn view_changed(&self) -> bool {
        self.view_dirty
    }

    /// The current view (the local node included); clears [`Core::view_changed`].
    pub fn view(&mut self) -> MembershipView {
        self.view_dirty = false;
        let mut members: BTreeMap<String, MemberInfo> = self
            .members
            .iter()
            .map(|(name, m)| {
                (
                    name.clone(),
                    MemberInfo {
                        address: m.address,
                        state: m.state,
                        incarnation: m.incarnation,
                        health: m.health.clone(),
                        host_up: m.host_up,
                        rejoining: m.rejoining,
                    },
                )
            })
            .collect();
        members.insert(
            self.node.clone(),
            MemberInfo {
                address: self.address,
                state: self.local_state(),
                incarnation: self.incarnation,
                health: Some(self.health.clone()),
                host_up: true,
                rejoining: self.rejoining_until.is_some(),
            },
        );
        MembershipView {
            local: self.node.clone(),
            members,
            settled: self.settled,
            deaths_refuted: self.stats.deaths_refuted,
        }
    }

    /// State of `node` (not the local node).
    pub fn member_state(&self, node: &str) -> Option<MemberState> {
        self.members.get(node).map(|m| m.state)
    }

    /// Whether `node` (this one included) is rejoining in our view.
    pub fn is_rejoining(&self, node: &str) -> bool {
        if node == self.node {
            self.rejoining_until.is_some()
        } else {
            self.members.get(node).is_some_and(|m| m.rejoining)
        }
    }

    fn local_state(&self) -> MemberState {
        if self.leaving {
            MemberState::Left
        } else {
            MemberState::Alive
        }
    }

    // ----- inputs from the wiring -----

    /// Replaces the peer list from the API: unknown peers are added (live, health unknown,
    /// to be probed), addresses are updated, and dead or left members the list no longer
    /// names are forgotten. Live members missing from the list stay until they die or leave.
    ///
    /// The first call also starts the protocol (before it the core cannot know whom to ask).
    /// Newly listed peers get a full state exchange at once. If the view settled before this
    /// speaker heard from anybody (e.g. the first list was empty because the API cache was not
    /// synced yet), newly listed peers make it unsettled again until that exchange ends: a
    /// speaker must not elect itself everywhere just because its first peer list was empty.
    pub fn set_peers(&mut self, peers: &[Peer], now: Instant) {
        self.peers_known = true;
        let mut added = Vec::new();
        let listed: BTreeSet<&str> = peers.iter().map(|p| p.node.as_str()).collect();
        for peer in peers {
            if peer.node == self.node {
                continue;
            }
            match self.members.get_mut(&peer.node) {
                Some(member) => {
                    member.listed = true;
                    if member.address != peer.address {
                        member.address = peer.address;
                        self.view_dirty = true;
                    }
                }
                None => {
                    self.members.insert(
                        peer.node.clone(),
                        Member {
                            address: peer.address,
                            incarnation: 0,
                            state: MemberState::Alive,
                            health: None,
                            last_heard: None,
                            listed: true,
                            host_up: false,
                            rejoining: false,
                        },
                    );
                    self.event(&peer.node, None, MemberState::Alive, 0, "listed by the API");
                    added.push(peer.node.clone());
                }
            }
        }
        if self.started && !self.leaving && !added.is_empty() {
            if self.had_contact {
                // Joiners: learn their state now rather than at the next slow probe.
                for node in added.iter().take(self.config.initial_sync_peers.max(1)) {
                    self.request_sync(node, now, false);
                }
            } else {
                self.settled = false;
                self.unsettled_since = Some(now);
                self.view_dirty = true;
                added.shuffle(&mut self.rng);
                for node in added.iter().take(self.config.initial_sync_peers.max(1)) {
                    self.initial_syncs += 1;
                    self.request_sync(node, now, true);
                }
            }
        }
        let forgotten: Vec<String> = self
            .members
            .iter()
            .filter(|(name, m)| !m.state.is_live() && !listed.contains(name.as_str()))
            .map(|(name, _)| name.clone())
            .collect();
        for name in forgotten {
            self.members.remove(&name);
            self.watch.remove(&name);
            self.gossip.remove(&name);
            self.view_dirty = true;
        }
    }

    /// Sets our own health; a change raises our incarnation and is gossiped.
    pub fn set_local_health(&mut self, health: NodeHealth) {
        if health == self.health {
            return;
        }
        self.health = health;
        self.incarnation += 1;
        self.queue_gossip(self.node.clone());
        self.view_dirty = true;
    }

    /// Sets the nodes to probe at the fast rate (the owners of the IPs we are runner-up for).
    pub fn watch_closely(&mut self, nodes: &BTreeSet<String>, now: Instant) {
        self.watch.retain(|n, _| nodes.contains(n));
        let interval = self.config.watch_probe_interval;
        for node in nodes {
            if *node == self.node || self.watch.contains_key(node) {
                continue;
            }
            // A random phase spreads probes of many targets over the interval.
            let phase = self.random_duration(interval);
            self.watch.insert(node.clone(), now + phase);
        }
    }

    /// Leaves on purpose: raises the incarnation, turns `Left` and pings every live member
    /// with the news. Afterwards the core only answers requests.
    pub fn leave(&mut self, now: Instant) {
        if self.leaving {
            return;
        }
        self.leaving = true;
        self.incarnation += 1;
        self.view_dirty = true;
        self.suspicions.clear();
        self.ping_every_live_member(now, self.config.leave_timeout);
    }

    // ----- time -----

    /// Advances timers: probes, probe timeouts, suspicions, syncs.
    pub fn tick(&mut self, now: Instant) {
        if !self.started {
            if !self.peers_known {
                return;
            }
            self.start(now);
        }
        self.expire_pending(now);
        if self.leaving {
            return;
        }
        if self.initial_sync_retry.is_some_and(|t| now >= t) && self.initial_syncs == 0 {
            self.send_initial_syncs(now);
        }
        self.warn_if_unsettled(now);
        self.track_rejoin(now);
        self.run_suspicions(now);
        self.probe_watched(now);
        self.probe_round_robin(now);
        if self.next_sync.is_some_and(|t| now >= t) {
            self.next_sync = Some(now + self.config.sync_interval);
            let live: Vec<String> = self.live_members().collect();
            if let Some(target) = live.choose(&mut self.rng).cloned() {
                self.request_sync(&target, now, false);
            }
        }
    }

    /// The earliest time [`Core::tick`] has something to do, so a runtime can sleep until then
    /// instead of ticking at a fixed rate; `None`: nothing until an input arrives (an input can
    /// make it earlier: ask again after one). At or before `now` means at once.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        if !self.started {
            return self.peers_known.then_some(now);
        }
        let pending = self.pending.values().flat_map(|pending| match pending {
            Pending::Probe {
                fail_at,
                expire_at,
                failed,
                ..
            } => [(!*failed).then_some(*fail_at), Some(*expire_at)],
            Pending::Relay { fail_at, .. } => [Some(*fail_at), None],
            Pending::Indirect { expire_at, .. } | Pending::Exchange { expire_at, .. } => [Some(*expire_at), None],
        });
        if self.leaving {
            return pending.flatten().min();
        }
        let suspicions = self.suspicions.values().flat_map(|suspicion| {
            [
                Some(suspicion.deadline),
                Some(suspicion.next_direct),
                (suspicion.indirect_rounds < INDIRECT_ROUNDS).then_some(suspicion.next_indirect),
            ]
        });
        let unsettled_warning = self
            .unsettled_since
            .filter(|_| !self.settled)
            .map(|since| self.unsettled_warned.unwrap_or(since) + UNSETTLED_WARN_EVERY);
        // While cut off, every tick moves the end of the rejoin hold (see `track_rejoin`):
        // keep ticking, so the hold ends a hold's time after the last tick that saw it.
        let cut_off = !self.config.rejoin_hold.is_zero() && self.cut_off().is_some();
        pending
            .flatten()
            .chain(suspicions.flatten())
            .chain(self.watch.values().copied())
            .chain(self.slow_next)
            .chain(self.next_sync)
            .chain(self.initial_sync_retry.filter(|_| self.initial_syncs == 0))
            .chain(unsettled_warning)
            .chain(self.rejoining_until)
            .chain(cut_off.then_some(now))
            .min()
    }

    fn start(&mut self, now: Instant) {
        self.started = true;
        self.unsettled_since = Some(now);
        self.slow_next = Some(now + self.random_duration(self.config.probe_interval));
        self.next_sync = Some(now + self.config.sync_interval);
        self.send_initial_syncs(now);
    }

    fn send_initial_syncs(&mut self, now: Instant) {
        self.initial_sync_failed_plainly = false;
        self.initial_sync_retry = None;
        let mut peers: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.state != MemberState::Left)
            .map(|(n, _)| n.clone())
            .collect();
        peers.shuffle(&mut self.rng);
        peers.truncate(self.config.initial_sync_peers);
        if peers.is_empty() {
            self.settle();
        }
        for peer in peers {
            self.initial_syncs += 1;
            self.request_sync(&peer, now, true);
        }
    }

    /// An initial sync ended without an answer. Silence is not an answer: peers starting at
    /// the same time (a fresh install) do not listen yet, and a node that settled alone would
    /// announce everything. Once all have ended, the speaker asks again (other peers, at
    /// random) every probe interval, and settles alone only after
    /// [`MembershipConfig::settle_alone_after`] of silence (every other speaker really down,
    /// or this node cut off). Refusals as unauthenticated never settle it: a speaker that
    /// nobody accepts (wrong key) is not alone.
    fn initial_sync_failed(&mut self, now: Instant, rejected: bool) {
        self.initial_syncs = self.initial_syncs.saturating_sub(1);
        if !rejected {
            self.initial_sync_failed_plainly = true;
        }
        if self.initial_syncs > 0 || self.settled {
            return;
        }
        let waited = self
            .unsettled_since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
        if self.initial_sync_failed_plainly && waited >= self.config.settle_alone_after {
            tracing::warn!(
                node = %self.node,
                waited_ms = waited.as_millis() as u64,
                "no peer answered: settling alone (every other speaker is down, or this node is cut off)"
            );
            self.settle();
            return;
        }
        if !self.initial_sync_failed_plainly {
            tracing::warn!(
                node = %self.node,
                "every peer asked for its state rejected our messages (is the shared key the same?); not settling"
            );
        }
        self.initial_sync_retry = Some(now + self.config.probe_interval);
    }

    fn settle(&mut self) {
        if !self.settled {
            self.settled = true;
            self.view_dirty = true;
            self.unsettled_since = None;
            self.unsettled_warned = None;
        }
    }

    fn warn_if_unsettled(&mut self, now: Instant) {
        let Some(since) = self.unsettled_since.filter(|_| !self.settled) else {
            return;
        };
        let last = self.unsettled_warned.unwrap_or(since);
        if now.saturating_duration_since(last) < UNSETTLED_WARN_EVERY {
            return;
        }
        self.unsettled_warned = Some(now);
        let exchanges = self
            .pending
            .values()
            .filter(|p| matches!(p, Pending::Exchange { initial: true, .. }))
            .count();
        tracing::warn!(
            node = %self.node,
            waited_s = now.saturating_duration_since(since).as_secs(),
            initial_syncs = self.initial_syncs,
            initial_exchanges_pending = exchanges,
            retry_scheduled = self.initial_sync_retry.is_some(),
            had_contact = self.had_contact,
            members = self.members.len(),
            "membership view not settled yet: this speaker stays unready and announces nothing until the first state exchange with a peer ends"
        );
    }

    fn expire_pending(&mut self, now: Instant) {
        let mut failed_probes = Vec::new();
        let mut failed_relays = Vec::new();
        let mut expired = Vec::new();
        let mut initial_expired = 0;
        for (id, pending) in self.pending.iter_mut() {
            match pending {
                Pending::Probe {
                    target,
                    sent_at,
                    fail_at,
                    expire_at,
                    failed,
                } => {
                    if !*failed && now >= *fail_at {
                        *failed = true;
                        failed_probes.push((target.clone(), *sent_at));
                    }
                    if now >= *expire_at {
                        expired.push(*id);
                    }
                }
                Pending::Relay { token, target, fail_at } => {
                    if now >= *fail_at {
                        failed_relays.push((*token, target.clone()));
                        expired.push(*id);
                    }
                }
                Pending::Indirect { expire_at, .. } => {
                    if now >= *expire_at {
                        expired.push(*id);
                    }
                }
                Pending::Exchange { expire_at, initial } => {
                    if now >= *expire_at {
                        expired.push(*id);
                        if *initial {
                            initial_expired += 1;
                        }
                    }
                }
            }
        }
        for id in expired {
            self.pending.remove(&id);
        }
        for _ in 0..initial_expired {
            self.initial_sync_failed(now, false);
        }
        for (token, target) in failed_relays {
            self.reply_relay(token, &target, false, false);
        }
        for (target, sent_at) in failed_probes {
            self.probe_failed(&target, sent_at, now);
        }
    }

    fn probe_failed(&mut self, target: &str, sent_at: Instant, now: Instant) {
        tracing::debug!(local = %self.node, member = %target, "probe failed");
        if self.leaving || self.suspicions.contains_key(target) {
            return;
        }
        let Some(member) = self.members.get(target) else {
            return;
        };
        // Heard from it after this probe left: the probe (or its Ack) was lost, the member
        // is not silent.
        if !member.state.is_live() || member.last_heard.is_some_and(|t| t >= sent_at) {
            return;
        }
        let incarnation = member.incarnation;
        self.stats.suspicions += 1;
        if member.state == MemberState::Alive {
            self.set_state(target, MemberState::Suspect, incarnation, "probe timed out");
            self.queue_gossip(target.to_string());
        }
        self.suspicions.insert(
            target.to_string(),
            LocalSuspicion {
                incarnation,
                deadline: now + self.config.suspicion_timeout,
                next_direct: now,
                next_indirect: now,
                indirect_rounds: 0,
                refused: 0,
                refused_to_helpers: 0,
                refusal_confirmed: false,
                last_indirect: None,
            },
        );
        self.run_suspicions(now);
    }

    /// The host of a suspected member refused a connection to its speaker, ours or a
    /// helper's. A dead process is confirmed by two observers instead of by the suspicion
    /// timeout: our refused probe and a helper's, or (with nobody to help) two of ours.
    fn refusal(&mut self, target: &str, by_helper: bool, now: Instant) {
        let helpers = self
            .members
            .iter()
            .filter(|(n, m)| m.state.is_live() && n.as_str() != target && n.as_str() != self.node)
            .count();
        let Some(suspicion) = self.suspicions.get_mut(target) else {
            return;
        };
        if by_helper {
            suspicion.refused_to_helpers += 1;
        } else {
            suspicion.refused += 1;
        }
        let confirmed =
            suspicion.refused > 0 && (suspicion.refused_to_helpers > 0 || (helpers == 0 && suspicion.refused > 1));
        if confirmed {
            suspicion.deadline = now;
            suspicion.refusal_confirmed = true;
        } else if !by_helper && suspicion.last_indirect.is_some_and(|t| t < now) {
            // The helpers were asked before our first refusal (the suspicion began with a reset
            // or a timeout): their connections may have failed the same way. Ask again now.
            suspicion.next_indirect = now;
        }
        self.run_suspicions(now);
    }

    fn run_suspicions(&mut self, now: Instant) {
        let mut dead = Vec::new();
        let mut direct = Vec::new();
        let mut indirect = Vec::new();
        let half = self.config.suspicion_timeout / INDIRECT_ROUNDS;
        for (target, suspicion) in self.suspicions.iter_mut() {
            if now >= suspicion.deadline {
                dead.push((target.clone(), suspicion.incarnation, suspicion.refusal_confirmed));
                continue;
            }
            if now >= suspicion.next_direct {
                suspicion.next_direct = now + self.config.suspicion_probe_interval;
                direct.push((target.clone(), suspicion.deadline));
            }
            if suspicion.indirect_rounds < INDIRECT_ROUNDS && now >= suspicion.next_indirect {
                suspicion.indirect_rounds += 1;
                suspicion.next_indirect = now + half;
                suspicion.last_indirect = Some(now);
                indirect.push((target.clone(), suspicion.deadline));
            }
        }
        let mut declared = Vec::new();
        for (target, incarnation, refused) in dead {
            self.suspicions.remove(&target);
            let still_current = self
                .members
                .get(&target)
                .is_some_and(|m| m.state.is_live() && m.incarnation == incarnation);
            if still_current {
                self.stats.confirmed_dead += 1;
                let reason = if refused {
                    self.stats.refused_deaths += 1;
                    "its host refused connections to the speaker, to us and to a helper"
                } else {
                    "no ack, direct or indirect, within the suspicion timeout"
                };
                self.set_state(&target, MemberState::Dead, incarnation, reason);
                if let Some(member) = self.members.get_mut(&target) {
                    member.host_up = refused;
                }
                self.queue_gossip(target.clone());
                declared.push(target);
            }
        }
        if !declared.is_empty() {
            self.announce_deaths(&declared, now);
        }
        for (target, deadline) in direct {
            self.send_probe(&target, now, deadline);
        }
        for (target, deadline) in indirect {
            self.send_indirect(&target, now, deadline);
        }
    }

    /// Tells every live member at once about deaths we declared, instead of waiting for the
    /// news to ride on ordinary messages (up to a slow probe interval away): every node's
    /// dataplane must drain a lost node's backends at about the same time, or a node that
    /// receives tunnelled flows picks differently from the owner that sent them.
    fn announce_deaths(&mut self, dead: &[String], now: Instant) {
        let targets: Vec<(String, SocketAddr)> = self
            .members
            .iter()
            .filter(|(n, m)| m.state.is_live() && !dead.contains(n) && n.as_str() != self.node)
            .map(|(n, m)| (n.clone(), m.address))
            .collect();
        let timeout = self.config.probe_timeout;
        for (target, address) in targets {
            self.request_ping_exchange(&target, address, now, timeout);
        }
    }

    fn probe_watched(&mut self, now: Instant) {
        let interval = self.config.watch_probe_interval;
        let due: Vec<String> = self
            .watch
            .iter_mut()
            .filter(|(_, next)| now >= **next)
            .map(|(node, next)| {
                *next += interval;
                if *next < now {
                    *next = now + interval;
                }
                node.clone()
            })
            .collect();
        for node in due {
            let live = self.members.get(&node).is_some_and(|m| m.state.is_live());
            if live && !self.suspicions.contains_key(&node) {
                let expire = now + self.config.probe_timeout + self.config.suspicion_timeout;
                self.send_probe(&node, now, expire);
            }
        }
    }

    fn probe_round_robin(&mut self, now: Instant) {
        let Some(next) = self.slow_next else { return };
        if now < next {
            return;
        }
        self.slow_next = Some(now + self.config.probe_interval);
        // Skip members watched closely (unless dead: those are probed here), left ones and
        // those under suspicion; try at most one full round.
        for _ in 0..=self.members.len() {
            let target = match self.slow_order.pop() {
                Some(t) => t,
                None => {
                    self.slow_order = self.members.keys().cloned().collect();
                    self.slow_order.shuffle(&mut self.rng);
                    match self.slow_order.pop() {
                        Some(t) => t,
                        None => return,
                    }
                }
            };
            let Some(member) = self.members.get(&target) else {
                continue;
            };
            let skip = member.state == MemberState::Left
                || (member.state.is_live() && self.watch.contains_key(&target))
                || self.suspicions.contains_key(&target);
            if !skip {
                let expire = now + self.config.probe_timeout + self.config.suspicion_timeout;
                self.send_probe(&target, now, expire);
                return;
            }
        }
    }

    // ----- sending -----

    fn next_request_id(&mut self) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        id
    }

    fn send_probe(&mut self, target: &str, now: Instant, expire_at: Instant) {
        let Some(address) = self.members.get(target).map(|m| m.address) else {
            return;
        };
        let id = self.next_request_id();
        let fail_at = now + self.config.probe_timeout;
        self.pending.insert(
            id,
            Pending::Probe {
                target: target.to_string(),
                sent_at: now,
                fail_at,
                expire_at: expire_at.max(fail_at),
                failed: false,
            },
        );
        let message = self.message(Some(target), Body::Ping(pb::Ping {}));
        self.effects.push(Effect::Request {
            id,
            to: target.to_string(),
            address,
            rpc: Rpc::Ping,
            message,
            timeout: expire_at.max(fail_at) - now,
        });
    }

    fn send_indirect(&mut self, target: &str, now: Instant, expire_at: Instant) {
        let Some(target_address) = self.members.get(target).map(|m| m.address) else {
            return;
        };
        let candidates: Vec<String> = self.live_members().filter(|n| n != target).collect();
        let helpers: Vec<String> = candidates
            .sample(&mut self.rng, self.config.indirect_probes)
            .cloned()
            .collect();
        let timeout_ms = u32::try_from(self.config.probe_timeout.as_millis()).unwrap_or(u32::MAX);
        for helper in helpers {
            let Some(address) = self.members.get(&helper).map(|m| m.address) else {
                continue;
            };
            let id = self.next_request_id();
            self.pending.insert(
                id,
                Pending::Indirect {
                    target: target.to_string(),
                    expire_at,
                },
            );
            let message = self.message(
                Some(&helper),
                Body::PingReq(pb::PingReq {
                    target: target.to_string(),
                    target_address: target_address.to_string(),
                    timeout_ms,
                }),
            );
            self.effects.push(Effect::Request {
                id,
                to: helper,
                address,
                rpc: Rpc::PingReq,
                message,
                timeout: expire_at.saturating_duration_since(now),
            });
        }
    }

    fn request_sync(&mut self, target: &str, now: Instant, initial: bool) {
        let Some(address) = self.members.get(target).map(|m| m.address) else {
            return;
        };
        let id = self.next_request_id();
        let timeout = self.config.probe_timeout * 4;
        self.pending.insert(
            id,
            Pending::Exchange {
                expire_at: now + timeout,
                initial,
            },
        );
        let mut message = self.message(Some(target), Body::SyncRequest(pb::SyncRequest::default()));
        message.body = Some(Body::SyncRequest(pb::SyncRequest {
            members: self.full_state(),
        }));
        self.effects.push(Effect::Request {
            id,
            to: target.to_string(),
            address,
            rpc: Rpc::Sync,
            message,
            timeout,
        });
    }

    fn request_ping_exchange(&mut self, target: &str, address: SocketAddr, now: Instant, timeout: Duration) {
        let id = self.next_request_id();
        self.pending.insert(
            id,
            Pending::Exchange {
                expire_at: now + timeout,
                initial: false,
            },
        );
        let message = self.message(Some(target), Body::Ping(pb::Ping {}));
        self.effects.push(Effect::Request {
            id,
            to: target.to_string(),
            address,
            rpc: Rpc::Ping,
            message,
            timeout,
        });
    }

    fn reply_relay(&mut self, token: ReplyToken, target: &str, reachable: bool, refused: bool) {
        let message = self.message(
            None,
            Body::PingReqResult(pb::PingReqResult {
                target: target.to_string(),
                reachable,
                refused,
            }),
        );
        self.effects.push(Effect::Reply { token, message });
    }

    /// A message to `to` with our gossip: our own state first, then our view of the receiver
    /// when it is not `Alive`, then the most urgent queued changes.
    fn message(&mut self, to: Option<&str>, body: Body) -> pb::Message {
        let mut gossip = vec![self.self_update()];
        if let Some(to) = to
            && let Some(member) = self.members.get(to)
            && member.state != MemberState::Alive
        {
            gossip.push(update_of(to, member));
        }
        if !self.gossip.is_empty() {
            let mut queued: Vec<(u32, String)> = self
                .gossip
                .iter()
                // The receiver knows its own state best, and needs no news twice.
                .filter(|(n, q)| Some(n.as_str()) != to && !to.is_some_and(|to| q.sent_to.contains(to)))
                .map(|(n, q)| (q.left, n.clone()))
                .collect();
            // Most transmissions left first: the newest changes.
            queued.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            for (_, node) in queued.into_iter().take(self.config.gossip_per_message) {
                if let Some(queued) = self.gossip.get_mut(&node) {
                    queued.left -= 1;
                    if let Some(to) = to {
                        queued.sent_to.insert(to.to_string());
                    }
                    if queued.left == 0 {
                        self.gossip.remove(&node);
                    }
                }
                // Our own state is always first.
                if node == self.node {
                    continue;
                }
                if let Some(member) = self.members.get(&node) {
                    gossip.push(update_of(&node, member));
                }
            }
        }
        pb::Message {
            gossip,
            body: Some(body),
            ..Default::default()
        }
    }

    fn self_update(&self) -> pb::MemberUpdate {
        pb::MemberUpdate {
            node: self.node.clone(),
            address: self.address.to_string(),
            incarnation: self.incarnation,
            state: state_to_pb(self.local_state()) as i32,
            health: Some(health_to_pb(&self.health)),
            rejoining: self.rejoining_until.is_some(),
        }
    }

    fn full_state(&self) -> Vec<pb::MemberUpdate> {
        let mut all = vec![self.self_update()];
        all.extend(self.members.iter().map(|(n, m)| update_of(n, m)));
        all
    }

    fn queue_gossip(&mut self, node: String) {
        let members = self.members.len() as u32 + 1;
        let log = u32::BITS - members.leading_zeros();
        let transmissions = self.config.gossip_retransmit_mult.max(1) * log.max(1);
        self.gossip.insert(
            node,
            QueuedGossip {
                left: transmissions,
                sent_to: BTreeSet::new(),
            },
        );
    }

    // ----- receiving -----

    /// Handles an authenticated request.
    pub fn handle_request(&mut self, message: pb::Message, now: Instant) -> Inbound {
        let sender = message.sender.clone();
        self.absorb(&message, now);
        let inbound = match message.body {
            Some(Body::Ping(_)) => Inbound::Reply(self.message(Some(&sender), Body::Ack(pb::Ack {}))),
            Some(Body::PingReq(req)) => self.relay(req, now),
            Some(Body::SyncRequest(req)) => {
                for update in &req.members {
                    self.apply_update(update, &sender, now);
                }
                let mut reply = self.message(Some(&sender), Body::SyncReply(pb::SyncReply::default()));
                reply.body = Some(Body::SyncReply(pb::SyncReply {
                    members: self.full_state(),
                }));
                Inbound::Reply(reply)
            }
            _ => Inbound::Invalid,
        };
        self.send_refutations(now);
        inbound
    }

    fn relay(&mut self, req: pb::PingReq, now: Instant) -> Inbound {
        let token = ReplyToken(self.next_token);
        self.next_token += 1;
        if req.target == self.node {
            self.reply_relay(token, &req.target, true, false);
            return Inbound::Deferred(token);
        }
        // Only a member we know, at the address we know: never an address a caller supplies.
        let Some(address) = self.members.get(&req.target).map(|m| m.address) else {
            self.reply_relay(token, &req.target, false, false);
            return Inbound::Deferred(token);
        };
        let wait = Duration::from_millis(u64::from(req.timeout_ms)).min(self.config.probe_timeout);
        let id = self.next_request_id();
        self.pending.insert(
            id,
            Pending::Relay {
                token,
                target: req.target.clone(),
                fail_at: now + wait,
            },
        );
        let message = self.message(Some(&req.target), Body::Ping(pb::Ping {}));
        self.effects.push(Effect::Request {
            id,
            to: req.target,
            address,
            rpc: Rpc::Ping,
            message,
            timeout: wait,
        });
        Inbound::Deferred(token)
    }

    /// Handles the authenticated response to request `id`.
    pub fn handle_response(&mut self, id: RequestId, message: pb::Message, now: Instant) {
        let sender = message.sender.clone();
        self.absorb(&message, now);
        match (self.pending.get(&id).cloned(), &message.body) {
            (Some(Pending::Probe { target, .. }), Some(Body::Ack(_))) if target == sender => {
                self.pending.remove(&id);
            }
            (Some(Pending::Relay { token, target, .. }), Some(Body::Ack(_))) if target == sender => {
                self.pending.remove(&id);
                self.reply_relay(token, &target, true, false);
            }
            (Some(Pending::Indirect { target, .. }), Some(Body::PingReqResult(result))) if result.target == target => {
                self.pending.remove(&id);
                if result.reachable {
                    self.sign_of_life(&target, "a helper reached it");
                } else if result.refused {
                    self.refusal(&target, true, now);
                }
            }
            (Some(Pending::Exchange { initial, .. }), body) => {
                self.pending.remove(&id);
                if let Some(Body::SyncReply(reply)) = body {
                    for update in &reply.members {
                        self.apply_update(update, &sender, now);
                    }
                }
                if initial {
                    self.initial_syncs = self.initial_syncs.saturating_sub(1);
                    self.settle();
                }
            }
            _ => {}
        }
        self.send_refutations(now);
    }

    /// The request `id` failed at the transport (refused, reset, timed out): a probe counts
    /// as failed now instead of at its timeout.
    pub fn handle_failure(&mut self, id: RequestId, failure: CallFailure, now: Instant) {
        let refused = failure == CallFailure::Refused;
        match self.pending.get_mut(&id) {
            Some(Pending::Probe {
                failed,
                target,
                sent_at,
                ..
            }) => {
                let already_failed = *failed;
                *failed = true;
                let (target, sent_at) = (target.clone(), *sent_at);
                self.pending.remove(&id);
                if !already_failed {
                    self.probe_failed(&target, sent_at, now);
                }
                if refused {
                    self.refusal(&target, false, now);
                }
            }
            Some(Pending::Relay { token, target, .. }) => {
                let (token, target) = (*token, target.clone());
                self.pending.remove(&id);
                self.reply_relay(token, &target, false, refused);
            }
            Some(Pending::Exchange { initial, .. }) => {
                let initial = *initial;
                self.pending.remove(&id);
                if initial {
                    self.initial_sync_failed(now, false);
                }
            }
            Some(Pending::Indirect { .. }) => {
                self.pending.remove(&id);
            }
            None => {}
        }
    }

    /// The peer refused request `id` as unauthenticated (it has another secret, or we do).
    /// Like [`Core::handle_failure`], except that an initial sync refused this way does not
    /// count towards settling the view.
    pub fn handle_rejected(&mut self, id: RequestId, now: Instant) {
        if let Some(Pending::Exchange { initial: true, .. }) = self.pending.get(&id) {
            self.pending.remove(&id);
            self.initial_sync_failed(now, true);
        } else {
            self.handle_failure(id, CallFailure::Other, now);
        }
    }

    /// Takes in what every message says: the sender is alive (its own state comes first in
    /// the gossip), and the gossip.
    fn absorb(&mut self, message: &pb::Message, now: Instant) {
        // First contact after settling alone: learn everything this peer knows now, not
        // piece by piece from gossip.
        if !self.had_contact && self.settled && self.started && !self.leaving {
            self.request_sync(&message.sender, now, false);
        }
        self.had_contact = true;
        let sender = message.sender.as_str();
        for update in &message.gossip {
            self.apply_update(update, sender, now);
        }
        if let Some(member) = self.members.get_mut(sender) {
            member.last_heard = Some(now);
        }
        self.sign_of_life(sender, "a message from it");
    }

    /// Direct or indirect proof that `node` is alive: cancels our death timer for it. Its
    /// state returns to `Alive` only through its refutation (a higher incarnation).
    fn sign_of_life(&mut self, node: &str, evidence: &'static str) {
        if self.suspicions.remove(node).is_some() {
            self.stats.suspicions_cleared += 1;
            tracing::debug!(local = %self.node, member = %node, evidence, "suspicion cancelled by a sign of life");
        }
    }

    fn apply_update(&mut self, update: &pb::MemberUpdate, from: &str, now: Instant) {
        let Some(state) = state_from_pb(update.state) else {
            self.stats.invalid_updates += 1;
            return;
        };
        if update.incarnation > MAX_INCARNATION {
            self.stats.invalid_updates += 1;
            return;
        }
        if update.node == self.node {
            self.about_us(state, update.incarnation, from, now);
            return;
        }
        let Ok(address) = update.address.parse::<SocketAddr>() else {
            self.stats.invalid_updates += 1;
            return;
        };
        if update.node.is_empty() {
            self.stats.invalid_updates += 1;
            return;
        }
        let health = update.health.as_ref().map(health_from_pb);
        let is_sender = update.node == from;
        let Some(member) = self.members.get_mut(&update.node) else {
            if self.members.values().filter(|m| !m.listed).count() >= MAX_UNLISTED_MEMBERS {
                self.stats.unlisted_ignored += 1;
                return;
            }
            self.members.insert(
                update.node.clone(),
                Member {
                    address,
                    incarnation: update.incarnation,
                    state,
                    health,
                    last_heard: is_sender.then_some(now),
                    listed: false,
                    host_up: false,
                    rejoining: update.rejoining,
                },
            );
            self.event(&update.node, None, state, update.incarnation, "learned from gossip");
            self.queue_gossip(update.node.clone());
            return;
        };
        let newer = update.incarnation > member.incarnation;
        let same = update.incarnation == member.incarnation;
        let old_state = member.state;
        // SWIM order: a higher incarnation wins; at equal incarnation Suspect beats Alive and
        // Dead/Left beat both. Left is final for an incarnation.
        let accept = match state {
            MemberState::Alive => newer,
            MemberState::Suspect => newer || (same && old_state == MemberState::Alive),
            MemberState::Dead => (newer || same) && old_state.is_live(),
            MemberState::Left => (newer || same) && old_state != MemberState::Left,
        };
        if !accept {
            return;
        }
        let mut state = state;
        let mut reason = match (state, is_sender) {
            (MemberState::Left, _) => "left the cluster",
            (_, true) => "its own message",
            (_, false) => "gossip",
        };
        let mut spread = true;
        let heard_recently = member
            .last_heard
            .is_some_and(|t| now.saturating_duration_since(t) < self.config.suspicion_timeout);
        if state == MemberState::Dead && heard_recently {
            // We heard from it more recently than anyone could have confirmed its death: keep
            // it live and let it refute (our messages to it carry the claim).
            if old_state == MemberState::Suspect && !newer {
                return;
            }
            state = MemberState::Suspect;
            reason = "dead claim contradicted by recent contact";
            spread = false;
        }
        if newer {
            // The API's peer list is authoritative for addresses; gossip only fills in members
            // it does not list, and never with a wildcard address.
            if !member.listed && !address.ip().is_unspecified() {
                member.address = address;
            }
            member.incarnation = update.incarnation;
            if health.is_some() {
                member.health = health;
            }
            member.rejoining = update.rejoining;
            self.view_dirty = true;
        }
        if state != old_state {
            self.set_state(&update.node, state, update.incarnation, reason);
        }
        if spread {
            self.queue_gossip(update.node.clone());
        }
        if !state.is_live() {
            self.suspicions.remove(&update.node);
        } else if newer && self.suspicions.remove(&update.node).is_some() {
            // Refuted.
            self.stats.suspicions_cleared += 1;
        }
        if !old_state.is_live() && state.is_live() && !self.leaving {
            // Back from the dead (restart or healed partition): exchange full state.
            self.request_sync(&update.node, now, false);
        }
    }

    fn about_us(&mut self, state: MemberState, incarnation: u64, from: &str, now: Instant) {
        if self.leaving {
            return;
        }
        let refute = match state {
            MemberState::Alive => incarnation > self.incarnation,
            _ => incarnation >= self.incarnation,
        };
        if !refute {
            return;
        }
        self.incarnation = incarnation.saturating_add(1);
        self.stats.refutations += 1;
        if state == MemberState::Dead {
            self.stats.deaths_refuted += 1;
        }
        self.view_dirty = true;
        self.queue_gossip(self.node.clone());
        if state != MemberState::Alive && from != self.node {
            self.refute_to.insert(from.to_string());
        }
        tracing::info!(
            node = %self.node,
            claim = %state,
            claimed_by = %from,
            incarnation = self.incarnation,
            "refuting a claim about this speaker"
        );
        // A claim while the link that came back still flaps: hold on from now.
        if self.rejoining_until.is_some() && state != MemberState::Alive {
            self.rejoining_until = Some(now + self.config.rejoin_hold);
        }
    }

    /// Follows whether we are cut off from most of the cluster (more than half of the
    /// non-departed members, this node included, dead in our view): from then on and for the
    /// hold time after it ends, this node says it is rejoining. It says so before anyone can
    /// hear it, so its first message across the healed link (whatever raised its incarnation:
    /// a refutation, or its interface coming back) already carries it.
    /// Most members (counting ourselves, not counting those that left) are dead to us: the
    /// members present and the dead, if so.
    fn cut_off(&self) -> Option<(usize, usize)> {
        let (present, dead) = self.members.values().fold((1, 0), |(present, dead), m| match m.state {
            MemberState::Left => (present, dead),
            MemberState::Dead => (present + 1, dead + 1),
            MemberState::Alive | MemberState::Suspect => (present + 1, dead),
        });
        (dead * 2 > present).then_some((present, dead))
    }

    fn track_rejoin(&mut self, now: Instant) {
        let hold = self.config.rejoin_hold;
        if !hold.is_zero()
            && let Some((present, dead)) = self.cut_off()
        {
            if self.rejoining_until.is_none() {
                self.incarnation += 1;
                self.queue_gossip(self.node.clone());
                self.view_dirty = true;
                tracing::info!(
                    node = %self.node,
                    dead,
                    members = present,
                    hold_ms = hold.as_millis() as u64,
                    "cut off from most of the cluster: once back, this node leaves its IPs to the others until the hold ends"
                );
            }
            self.rejoining_until = Some(now + hold);
        } else if self.rejoining_until.is_some_and(|until| now >= until) {
            self.rejoining_until = None;
            self.incarnation += 1;
            self.queue_gossip(self.node.clone());
            self.view_dirty = true;
            tracing::info!(node = %self.node, "rejoin hold over: this node takes back the IPs it ranks first for");
            // Tell everyone at once, as a leave does: this node announces from now on, and the
            // current owners must stop now, not when a slow probe carries the news.
            self.ping_every_live_member(now, self.config.probe_timeout);
        }
    }

    /// Pings every live member directly: our latest state reaches them all at once.
    fn ping_every_live_member(&mut self, now: Instant, timeout: Duration) {
        let targets: Vec<(String, SocketAddr)> = self
            .members
            .iter()
            .filter(|(_, m)| m.state.is_live())
            .map(|(n, m)| (n.clone(), m.address))
            .collect();
        for (target, address) in targets {
            self.request_ping_exchange(&target, address, now, timeout);
        }
    }

    fn send_refutations(&mut self, now: Instant) {
        let targets = std::mem::take(&mut self.refute_to);
        for target in targets {
            if let Some(address) = self.members.get(&target).map(|m| m.address) {
                let timeout = self.config.probe_timeout;
                self.request_ping_exchange(&target, address, now, timeout);
            }
        }
    }

    // ----- helpers -----

    fn set_state(&mut self, node: &str, to: MemberState, incarnation: u64, reason: &'static str) {
        let Some(member) = self.members.get_mut(node) else {
            return;
        };
        let from = member.state;
        member.state = to;
        member.incarnation = incarnation;
        member.host_up = false;
        self.view_dirty = true;
        if !to.is_live() {
            self.suspicions.remove(node);
        }
        self.event(node, Some(from), to, incarnation, reason);
    }

    fn event(
        &mut self,
        node: &str,
        from: Option<MemberState>,
        to: MemberState,
        incarnation: u64,
        reason: &'static str,
    ) {
        self.view_dirty = true;
        tracing::info!(
            local = %self.node,
            member = %node,
            from = from.map(MemberState::as_str).unwrap_or("unknown"),
            to = %to,
            incarnation,
            reason,
            "member state changed"
        );
        self.events.push(MemberEvent {
            node: node.to_string(),
            from,
            to,
            incarnation,
            reason,
        });
    }

    fn live_members(&self) -> impl Iterator<Item = String> + '_ {
        self.members
            .iter()
            .filter(|(_, m)| m.state.is_live())
            .map(|(n, _)| n.clone())
    }

    fn random_duration(&mut self, max: Duration) -> Duration {
        let max_us = u64::try_from(max.as_micros()).unwrap_or(u64::MAX).max(1);
        Duration::from_micros(self.rng.random_range(0..max_us))
    }
}

fn update_of(node: &str, member: &Member) -> pb::MemberUpdate {
    pb::MemberUpdate {
        node: node.to_string(),
        address: member.address.to_string(),
        incarnation: member.incarnation,
        state: state_to_pb(member.state) as i32,
        health: member.health.as_ref().map(health_to_pb),
        rejoining: member.rejoining,
    }
}

fn state_to_pb(state: MemberState) -> pb::MemberState {
    match state {
        MemberState::Alive => pb::MemberState::Alive,
        MemberState::Suspect => pb::MemberState::Suspect,
        MemberState::Dead => pb::MemberState::Dead,
        MemberState::Left => pb::MemberState::Left,
    }
}

fn state_from_pb(value: i32) -> Option<MemberState> {
    match pb::MemberState::try_from(value).ok()? {
        pb::MemberState::Alive => Some(MemberState::Alive),
        pb::MemberState::Suspect => Some(MemberState::Suspect),
        pb::MemberState::Dead => Some(MemberState::Dead),
        pb::MemberState::Left => Some(MemberState::Left),
        pb::MemberState::Unspecified => None,
    }
}

fn health_to_pb(health: &NodeHealth) -> pb::NodeHealth {
    pb::NodeHealth {
        announcer_ready: health.announcer_ready,
        dataplane_ready: health.dataplane_ready,
        interfaces: health.interfaces.iter().cloned().collect(),
        other_interfaces: health.other_interfaces.iter().cloned().collect(),
    }
}

fn health_from_pb(health: &pb::NodeHealth) -> NodeHealth {
    NodeHealth {
        announcer_ready: health.announcer_ready,
        dataplane_ready: health.dataplane_ready,
        interfaces: health.interfaces.iter().cloned().collect(),
        other_interfaces: health.other_interfaces.iter().cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "node-a";

    fn address(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 7946))
    }

    fn healthy() -> NodeHealth {
        NodeHealth {
            announcer_ready: true,
            dataplane_ready: true,
            interfaces: ["eth0".to_string()].into(),
            ..Default::default()
        }
    }

    /// The timings these tests are written for (the defaults are tuned independently).
    fn config() -> MembershipConfig {
        MembershipConfig {
            watch_probe_interval: Duration::from_millis(100),
            probe_timeout: Duration::from_millis(120),
            suspicion_timeout: Duration::from_millis(180),
            suspicion_probe_interval: Duration::from_millis(50),
            ..MembershipConfig::default()
        }
    }

    /// The peer list of [`core`]: `node-b` and `node-c`.
    fn listed_peers() -> Vec<Peer> {
        vec![
            Peer {
                node: "node-b".into(),
                address: address(2),
            },
            Peer {
                node: "node-c".into(),
                address: address(3),
            },
        ]
    }

    /// `node-a` knowing `node-b` and `node-c` from the peer list.
    fn core() -> (Core, Instant) {
        let now = Instant::now();
        let mut core = Core::new(config(), A, address(1), 5, healthy(), 7);
        core.set_peers(&listed_peers(), now);
        (core, now)
    }

    #[test]
    fn an_empty_first_peer_list_does_not_leave_the_view_settled() {
        let now = Instant::now();
        let mut core = Core::new(MembershipConfig::default(), A, address(1), 5, healthy(), 7);
        core.set_peers(&[], now);
        core.tick(now);
        assert!(core.view().settled, "alone: settled at once");
        let later = now + Duration::from_millis(10);
        core.set_peers(
            &[Peer {
                node: "node-b".into(),
                address: address(2),
            }],
            later,
        );
        assert!(!core.view().settled, "peers appeared before any contact");
        let sync = requests(&core.take_effects())
            .into_iter()
            .find(|(_, to, rpc)| to == "node-b" && *rpc == Rpc::Sync)
            .expect("initial sync with the new peer");
        let reply = pb::Message {
            sender: "node-b".into(),
            gossip: vec![update("node-b", 1, MemberState::Alive)],
            body: Some(Body::SyncReply(pb::SyncReply::default())),
            ..Default::default()
        };
        core.handle_response(sync.0, reply, later);
        let view = core.view();
        assert!(view.settled);
        assert!(view.health_of("node-b").is_some());
    }

    fn update(node: &str, incarnation: u64, state: MemberState) -> pb::MemberUpdate {
        let i = node.bytes().last().map_or(9, |b| b - b'a' + 1);
        pb::MemberUpdate {
            node: node.into(),
            address: address(i).to_string(),
            incarnation,
            state: state_to_pb(state) as i32,
            health: Some(health_to_pb(&healthy())),
            rejoining: false,
        }
    }

    /// A Ping from `sender` (alive at incarnation 1) carrying `gossip`.
    fn ping_from(sender: &str, gossip: Vec<pb::MemberUpdate>) -> pb::Message {
        let mut all = vec![update(sender, 1, MemberState::Alive)];
        all.extend(gossip);
        pb::Message {
            sender: sender.into(),
            gossip: all,
            body: Some(Body::Ping(pb::Ping {})),
            ..Default::default()
        }
    }

    fn ack_from(sender: &str, incarnation: u64) -> pb::Message {
        pb::Message {
            sender: sender.into(),
            gossip: vec![update(sender, incarnation, MemberState::Alive)],
            body: Some(Body::Ack(pb::Ack {})),
            ..Default::default()
        }
    }

    fn requests(effects: &[Effect]) -> Vec<(RequestId, String, Rpc)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Request { id, to, rpc, .. } => Some((*id, to.clone(), *rpc)),
                Effect::Reply { .. } => None,
            })
            .collect()
    }

    #[test]
    fn updates_follow_incarnation_order() {
        let (mut core, now) = core();
        let gossip = |core: &mut Core, u: pb::MemberUpdate| {
            core.handle_request(ping_from("node-c", vec![u]), now);
        };
        gossip(&mut core, update("node-b", 3, MemberState::Alive));
        assert_eq!(core.member_state("node-b"), Some(MemberState::Alive));
        gossip(&mut core, update("node-b", 3, MemberState::Suspect));
        assert_eq!(core.member_state("node-b"), Some(MemberState::Suspect));
        // Same incarnation: Alive does not clear a suspicion; a refutation (higher) does.
        gossip(&mut core, update("node-b", 3, MemberState::Alive));
        assert_eq!(core.member_state("node-b"), Some(MemberState::Suspect));
        gossip(&mut core, update("node-b", 4, MemberState::Alive));
        assert_eq!(core.member_state("node-b"), Some(MemberState::Alive));
        // Stale news is ignored.
        gossip(&mut core, update("node-b", 2, MemberState::Dead));
        assert_eq!(core.member_state("node-b"), Some(MemberState::Alive));
        gossip(&mut core, update("node-b", 4, MemberState::Dead));
        assert_eq!(core.member_state("node-b"), Some(MemberState::Dead));
        gossip(&mut core, update("node-b", 4, MemberState::Alive));
        assert_eq!(core.member_state("node-b"), Some(MemberState::Dead));
        // Back from the dead with a higher incarnation: alive again, and a full sync with it.
        core.take_effects();
        gossip(&mut core, update("node-b", 5, MemberState::Alive));
        assert_eq!(core.member_state("node-b"), Some(MemberState::Alive));
        let sent = requests(&core.take_effects());
        assert!(sent.iter().any(|(_, to, rpc)| to == "node-b" && *rpc == Rpc::Sync));
        gossip(&mut core, update("node-b", 5, MemberState::Left));
        assert_eq!(core.member_state("node-b"), Some(MemberState::Left));
        gossip(&mut core, update("node-b", 5, MemberState::Dead));
        assert_eq!(core.member_state("node-b"), Some(MemberState::Left));
    }

    #[test]
    fn claims_about_itself_are_refuted_and_the_claimer_is_told() {
        let (mut core, now) = core();
        let before = core.incarnation();
        let reply = core.handle_request(ping_from("node-b", vec![update(A, before, MemberState::Suspect)]), now);
        assert_eq!(core.incarnation(), before + 1);
        assert_eq!(core.view().deaths_refuted, 0, "a suspicion moves no IP");
        assert_eq!(core.stats().refutations, 1);
        let Inbound::Reply(reply) = reply else {
            panic!("a ping is answered at once");
        };
        assert_eq!(reply.gossip[0].node, A);
        assert_eq!(reply.gossip[0].incarnation, before + 1);
        let sent = requests(&core.take_effects());
        assert!(sent.iter().any(|(_, to, rpc)| to == "node-b" && *rpc == Rpc::Ping));
        // An old claim does not raise it again.
        core.handle_request(ping_from("node-c", vec![update(A, before, MemberState::Dead)]), now);
        assert_eq!(core.incarnation(), before + 1);
        assert_eq!(core.view().deaths_refuted, 0);
        // A current claim that it died: peers may have taken its IPs; the view says so.
        core.handle_request(ping_from("node-c", vec![update(A, before + 1, MemberState::Dead)]), now);
        assert_eq!(core.incarnation(), before + 2);
        assert_eq!(core.view().deaths_refuted, 1);
    }

    #[test]
    fn dead_claim_about_a_member_heard_from_just_now_is_downgraded() {
        let (mut core, now) = core();
        core.handle_request(ping_from("node-b", vec![]), now);
        let later = now + Duration::from_millis(50);
        core.handle_request(ping_from("node-c", vec![update("node-b", 1, MemberState::Dead)]), later);
        assert_eq!(core.member_state("node-b"), Some(MemberState::Suspect));
        // Long after the last contact the claim stands.
        let much_later = now + Duration::from_secs(2);
        core.handle_request(
            ping_from("node-c", vec![update("node-b", 2, MemberState::Dead)]),
            much_later,
        );
        assert_eq!(core.member_state("node-b"), Some(MemberState::Dead));
    }

    /// Ticks every 5 ms from `from` for `span`, answering nothing.
    fn run(core: &mut Core, from: Instant, span: Duration) -> Vec<Effect> {
        let mut effects = Vec::new();
        let mut t = from;
        while t <= from + span {
            core.tick(t);
            effects.extend(core.take_effects());
            t += Duration::from_millis(5);
        }
        effects
    }

    #[test]
    fn unanswered_probes_suspect_then_kill_a_watched_member() {
        let (mut core, now) = core();
        core.watch_closely(&["node-b".to_string()].into(), now);
        let effects = run(&mut core, now, Duration::from_millis(240));
        assert_eq!(core.member_state("node-b"), Some(MemberState::Suspect));
        // Indirect probes went to the only other member.
        assert!(
            requests(&effects)
                .iter()
                .any(|(_, to, rpc)| to == "node-c" && *rpc == Rpc::PingReq)
        );
        run(&mut core, now + Duration::from_millis(245), Duration::from_millis(300));
        assert_eq!(core.member_state("node-b"), Some(MemberState::Dead));
        assert_eq!(core.stats().confirmed_dead, 1);
        assert!(
            !core.view().members["node-b"].host_up,
            "silence says nothing of the host"
        );
    }

    /// Ticks only at the core's next deadline (at most every 5 ms), as the runtime does;
    /// returns the effects and how many ticks it took.
    fn run_at_deadlines(core: &mut Core, from: Instant, span: Duration) -> (Vec<Effect>, usize) {
        let (mut effects, mut ticks, mut last) = (Vec::new(), 0, None::<Instant>);
        while let Some(deadline) = core.next_deadline(last.unwrap_or(from)) {
            let t = last.map_or(deadline, |last| deadline.max(last + Duration::from_millis(5)));
            if t > from + span {
                break;
            }
            core.tick(t);
            effects.extend(core.take_effects());
            (ticks, last) = (ticks + 1, Some(t));
        }
        (effects, ticks)
    }

    #[test]
    fn ticking_at_the_next_deadline_does_what_ticking_every_5_ms_does() {
        let (mut every, now) = core();
        let (mut at_deadlines, _) = core();
        for core in [&mut every, &mut at_deadlines] {
            core.watch_closely(&["node-b".to_string()].into(), now);
        }
        let span = Duration::from_millis(1_500);
        let by_grid = run(&mut every, now, span);
        let (by_deadline, ticks) = run_at_deadlines(&mut at_deadlines, now, span);
        // The same requests; the order of two due within the same 5 ms may differ.
        let sent = |effects: &[Effect]| -> Vec<(String, Rpc)> {
            let mut sent: Vec<(String, Rpc)> = requests(effects).into_iter().map(|(_, to, rpc)| (to, rpc)).collect();
            sent.sort();
            sent
        };
        assert_eq!(sent(&by_deadline), sent(&by_grid));
        assert_eq!(at_deadlines.member_state("node-b"), Some(MemberState::Dead));
        assert_eq!(at_deadlines.stats(), every.stats());
        assert!(ticks * 4 < 300, "{ticks} ticks instead of 300");
    }

    fn ping_req_result(sender: &str, target: &str, reachable: bool, refused: bool) -> pb::Message {
        pb::Message {
            sender: sender.into(),
            gossip: vec![update(sender, 1, MemberState::Alive)],
            body: Some(Body::PingReqResult(pb::PingReqResult {
                target: target.into(),
                reachable,
                refused,
            })),
            ..Default::default()
        }
    }

    /// The first probe of the watched `node-b` is refused; returns the PingReqs then sent and
    /// the time of the refusal.
    fn refused_probe(core: &mut Core, now: Instant) -> (Vec<RequestId>, Instant) {
        core.watch_closely(&["node-b".to_string()].into(), now);
        // The first probe goes out within one interval (at a random phase).
        let now = now + config().watch_probe_interval;
        core.tick(now);
        let (probe, _, _) = requests(&core.take_effects())
            .into_iter()
            .find(|(_, to, rpc)| to == "node-b" && *rpc == Rpc::Ping)
            .expect("a probe");
        core.handle_failure(probe, CallFailure::Refused, now + Duration::from_millis(1));
        let asked: Vec<RequestId> = requests(&core.take_effects())
            .into_iter()
            .filter(|(_, to, rpc)| to == "node-c" && *rpc == Rpc::PingReq)
            .map(|(id, _, _)| id)
            .collect();
        assert!(!asked.is_empty(), "a refusal asks the helpers at once");
        (asked, now + Duration::from_millis(1))
    }

    #[test]
    fn a_refused_probe_confirmed_by_a_helper_kills_at_once() {
        let (mut core, start) = core();
        let (asked, now) = refused_probe(&mut core, start);
        assert_eq!(
            core.member_state("node-b"),
            Some(MemberState::Suspect),
            "one refusal alone is not enough"
        );
        core.handle_response(
            asked[0],
            ping_req_result("node-c", "node-b", false, true),
            now + Duration::from_millis(3),
        );
        assert_eq!(core.member_state("node-b"), Some(MemberState::Dead));
        assert_eq!((core.stats().confirmed_dead, core.stats().refused_deaths), (1, 1));
        assert!(
            core.view().members["node-b"].host_up,
            "its node is up, only the speaker died"
        );
    }

    #[test]
    fn a_refused_probe_the_helper_cannot_confirm_waits_for_the_suspicion_timeout() {
        let config = config();
        for helper_says in [
            ping_req_result("node-c", "node-b", false, false),
            ping_req_result("node-c", "node-b", true, false),
        ] {
            let (mut core, start) = core();
            let reachable = matches!(&helper_says.body, Some(Body::PingReqResult(r)) if r.reachable);
            let (asked, now) = refused_probe(&mut core, start);
            // A helper that timed out (a partition between it and the target) confirms nothing;
            // one that reached the target clears the suspicion.
            core.handle_response(asked[0], helper_says, now + Duration::from_millis(3));
            let before_deadline = now + config.suspicion_timeout - Duration::from_millis(5);
            run(
                &mut core,
                now + Duration::from_millis(5),
                before_deadline - now - Duration::from_millis(5),
            );
            assert_eq!(core.member_state("node-b"), Some(MemberState::Suspect));
            assert_eq!(core.stats().suspicions_cleared, u64::from(reachable));
            assert_eq!(core.stats().refused_deaths, 0);
        }
    }

    #[test]
    fn a_late_ack_during_suspicion_prevents_the_death() {
        let (mut core, now) = core();
        core.watch_closely(&["node-b".to_string()].into(), now);
        let effects = run(&mut core, now, Duration::from_millis(240));
        assert_eq!(core.member_state("node-b"), Some(MemberState::Suspect));
        let (first_probe, _, _) = requests(&effects)
            .into_iter()
            .find(|(_, to, rpc)| to == "node-b" && *rpc == Rpc::Ping)
            .expect("a probe");
        // The answer to the first probe arrives after its timeout (an overloaded peer), and
        // from then on the peer answers every probe at once.
        let mut t = now + Duration::from_millis(245);
        core.handle_response(first_probe, ack_from("node-b", 1), t);
        while t < now + Duration::from_secs(1) {
            core.tick(t);
            for (id, to, rpc) in requests(&core.take_effects()) {
                if to == "node-b" && rpc == Rpc::Ping {
                    core.handle_response(id, ack_from("node-b", 1), t);
                }
            }
            t += Duration::from_millis(5);
        }
        assert_eq!(core.member_state("node-b"), Some(MemberState::Alive));
        // (node-c, which never answers, is rightly declared dead meanwhile.)
        let events = core.take_events();
        assert!(
            !events.iter().any(|e| e.node == "node-b" && e.to == MemberState::Dead),
            "{events:?}"
        );
    }

    #[test]
    fn ping_req_is_relayed_and_answered() {
        let (mut core, now) = core();
        let request = pb::Message {
            sender: "node-b".into(),
            gossip: vec![update("node-b", 1, MemberState::Alive)],
            body: Some(Body::PingReq(pb::PingReq {
                target: "node-c".into(),
                target_address: address(3).to_string(),
                timeout_ms: 100,
            })),
            ..Default::default()
        };
        let Inbound::Deferred(token) = core.handle_request(request.clone(), now) else {
            panic!("a ping-req is answered later");
        };
        let effects = core.take_effects();
        let (relayed, _, _) = requests(&effects)
            .into_iter()
            .find(|(_, to, rpc)| to == "node-c" && *rpc == Rpc::Ping)
            .expect("relayed ping");
        core.handle_response(relayed, ack_from("node-c", 1), now);
        let replies: Vec<_> = core
            .take_effects()
            .into_iter()
            .filter_map(|e| match e {
                Effect::Reply { token, message } => Some((token, message.body)),
                Effect::Request { .. } => None,
            })
            .collect();
        assert_eq!(
            replies,
            vec![(
                token,
                Some(Body::PingReqResult(pb::PingReqResult {
                    target: "node-c".into(),
                    reachable: true,
                    refused: false,
                }))
            )]
        );
        // Unanswered: reported unreachable after the timeout.
        let Inbound::Deferred(token) = core.handle_request(request, now) else {
            panic!("deferred");
        };
        core.take_effects();
        core.tick(now + Duration::from_millis(120));
        let unreachable = core.take_effects().into_iter().any(|e| {
            matches!(e, Effect::Reply { token: t, message } if t == token
            && message.body == Some(Body::PingReqResult(pb::PingReqResult {
                target: "node-c".into(),
                reachable: false,
                refused: false,
            })))
        });
        assert!(unreachable);
    }

    #[test]
    fn health_change_raises_the_incarnation_and_leave_raises_it_again() {
        let (mut core, now) = core();
        let before = core.incarnation();
        core.set_local_health(healthy());
        assert_eq!(core.incarnation(), before, "no change, no new incarnation");
        core.set_local_health(NodeHealth::default());
        assert_eq!(core.incarnation(), before + 1);
        // Make node-b live and known, then leave: every live member is told.
        core.handle_request(ping_from("node-b", vec![]), now);
        core.take_effects();
        core.leave(now);
        assert_eq!(core.incarnation(), before + 2);
        let sent = requests(&core.take_effects());
        assert!(sent.iter().any(|(_, to, _)| to == "node-b"));
        assert!(sent.iter().any(|(_, to, _)| to == "node-c"));
        assert_eq!(core.view().members[A].state, MemberState::Left);
    }

    #[test]
    fn gossip_with_bad_address_or_state_is_ignored() {
        let (mut core, now) = core();
        let mut bad_address = update("node-x", 1, MemberState::Alive);
        bad_address.address = "not an address".into();
        let mut bad_state = update("node-y", 1, MemberState::Alive);
        bad_state.state = 42;
        core.handle_request(ping_from("node-b", vec![bad_address, bad_state]), now);
        assert_eq!(core.member_state("node-x"), None);
        assert_eq!(core.member_state("node-y"), None);
        assert_eq!(core.stats().invalid_updates, 2);
    }

    #[test]
    fn a_ping_req_about_a_stranger_dials_nobody() {
        let (mut core, now) = core();
        core.take_effects();
        let request = pb::Message {
            sender: "node-b".into(),
            gossip: vec![update("node-b", 1, MemberState::Alive)],
            body: Some(Body::PingReq(pb::PingReq {
                target: "somewhere".into(),
                target_address: "192.0.2.1:22".into(),
                timeout_ms: 100,
            })),
            ..Default::default()
        };
        let Inbound::Deferred(token) = core.handle_request(request, now) else {
            panic!("deferred");
        };
        let effects = core.take_effects();
        assert!(
            requests(&effects).is_empty(),
            "nothing dialled: {:?}",
            requests(&effects)
        );
        assert!(
            effects
                .iter()
                .any(|e| matches!(e, Effect::Reply { token: t, message } if *t == token
            && matches!(&message.body, Some(Body::PingReqResult(r)) if !r.reachable)))
        );
        // A known target is probed at the address we know, whatever the caller says.
        let request = pb::Message {
            sender: "node-b".into(),
            body: Some(Body::PingReq(pb::PingReq {
                target: "node-c".into(),
                target_address: "192.0.2.1:22".into(),
                timeout_ms: 100,
            })),
            ..Default::default()
        };
        core.handle_request(request, now);
        let dialled: Vec<SocketAddr> = core
            .take_effects()
            .into_iter()
            .filter_map(|e| match e {
                Effect::Request { address, .. } => Some(address),
                Effect::Reply { .. } => None,
            })
            .collect();
        assert_eq!(dialled, vec![address(3)]);
    }

    #[test]
    fn absurd_incarnations_are_ignored_and_a_refutation_cannot_overflow() {
        let (mut core, now) = core();
        core.handle_request(
            ping_from("node-b", vec![update("node-c", u64::MAX, MemberState::Dead)]),
            now,
        );
        assert_eq!(core.member_state("node-c"), Some(MemberState::Alive));
        core.handle_request(
            ping_from("node-b", vec![update(A, u64::MAX, MemberState::Suspect)]),
            now,
        );
        assert_eq!(core.incarnation(), 5, "no refutation of a nonsense claim");
        assert_eq!(core.stats().invalid_updates, 2);
        core.handle_request(
            ping_from("node-b", vec![update(A, MAX_INCARNATION, MemberState::Suspect)]),
            now,
        );
        assert_eq!(core.incarnation(), MAX_INCARNATION + 1);
    }

    #[test]
    fn members_only_gossip_names_are_bounded_and_forgotten_once_dead() {
        let (mut core, now) = core();
        let ghost = |i: usize, state| pb::MemberUpdate {
            node: format!("ghost-{i}"),
            address: SocketAddr::from(([10, 1, (i / 256) as u8, (i % 256) as u8], 7946)).to_string(),
            ..update("node-z", 1, state)
        };
        let strangers: Vec<pb::MemberUpdate> = (0..MAX_UNLISTED_MEMBERS + 100)
            .map(|i| ghost(i, MemberState::Alive))
            .collect();
        for chunk in strangers.chunks(50) {
            core.handle_request(ping_from("node-b", chunk.to_vec()), now);
        }
        let known = core.view().members.len();
        assert_eq!(known, 3 + MAX_UNLISTED_MEMBERS, "a, b, c and the bound");
        assert_eq!(core.stats().unlisted_ignored, 100);
        // Once dead, members nobody lists are forgotten at the next peer list.
        let dead: Vec<pb::MemberUpdate> = (0..MAX_UNLISTED_MEMBERS).map(|i| ghost(i, MemberState::Dead)).collect();
        for chunk in dead.chunks(50) {
            core.handle_request(ping_from("node-b", chunk.to_vec()), now);
        }
        core.set_peers(&listed_peers(), now);
        assert_eq!(core.view().members.len(), 3);
    }

    /// The initial Syncs `core` has outstanding.
    fn initial_sync_requests(core: &mut Core) -> Vec<RequestId> {
        requests(&core.take_effects())
            .into_iter()
            .filter(|(_, _, rpc)| *rpc == Rpc::Sync)
            .map(|(id, _, _)| id)
            .collect()
    }

    #[test]
    fn silence_does_not_settle_the_view_until_the_settle_alone_time() {
        let (mut core, now) = core();
        core.tick(now);
        let mut at = now;
        // Peers starting too: their hosts refuse, then time out; the speaker keeps asking.
        for round in 0..5 {
            let ids = initial_sync_requests(&mut core);
            assert!(!ids.is_empty(), "round {round}: asked again");
            for (i, id) in ids.into_iter().enumerate() {
                let failure = if i == 0 {
                    CallFailure::Refused
                } else {
                    CallFailure::Other
                };
                core.handle_failure(id, failure, at);
            }
            assert!(!core.view().settled, "round {round}: silence is no answer");
            at += core.config.probe_interval;
            core.tick(at);
        }
        // One answer settles it at once.
        let id = initial_sync_requests(&mut core)[0];
        let reply = pb::Message {
            sender: "node-b".into(),
            gossip: vec![update("node-b", 1, MemberState::Alive)],
            body: Some(Body::SyncReply(pb::SyncReply::default())),
            ..Default::default()
        };
        core.handle_response(id, reply, at);
        assert!(core.view().settled);
    }

    #[test]
    fn after_the_settle_alone_time_silence_settles_and_the_first_contact_is_a_full_sync() {
        let (mut core, now) = core();
        core.tick(now);
        let mut at = now;
        while !core.view().settled {
            assert!(at - now <= core.config.settle_alone_after + core.config.probe_interval * 2);
            for id in initial_sync_requests(&mut core) {
                core.handle_failure(id, CallFailure::Other, at);
            }
            at += core.config.probe_interval;
            core.tick(at);
        }
        assert!(
            at - now >= core.config.settle_alone_after,
            "settled alone after {:?}",
            at - now
        );
        core.take_effects();
        // node-c's speaker comes up and pings: this node asks it for everything it knows.
        core.handle_request(ping_from("node-c", vec![]), at);
        let sent = requests(&core.take_effects());
        assert!(
            sent.iter().any(|(_, to, rpc)| to == "node-c" && *rpc == Rpc::Sync),
            "{sent:?}"
        );
    }
}
