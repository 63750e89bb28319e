//! The SWIM state machine: pure, no I/O and no clock of its own.
//!
//! The driver (the tokio runtime, or the deterministic simulation) calls [`Core::tick`] with
//! the current time, hands it every authenticated message ([`Core::handle_request`],
//! [`Core::handle_response`], [`Core::handle_failure`]) and carries out the
//! [`Effect`]s it returns: requests to send (each with a [`RequestId`] whose response or
//! failure must be reported back) and deferred replies (to a PingReq, once the relayed ping
//! finished). The protocol itself is described in the parent module.
//!
//! This file holds the core's state and its entry points ([`Core::tick`], peers, health,
//! leave, the view); the rest is one file per concern, each adding methods to [`Core`]:
//! - `startup`: the first full-state exchanges, settling the view, rejoining;
//! - `probing`: direct, round-robin and indirect probes, suspicion, expiry of requests;
//! - `inbound`: requests, responses and failures that arrive;
//! - `gossip`: what messages carry and how updates about members are applied;
//! - `codec`: member states and health to and from the protocol's messages.
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use herald_proto::membership::v1 as pb;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{RngExt, SeedableRng};

use super::{MemberInfo, MemberState, MembershipConfig, MembershipView, NodeHealth, Peer};

mod codec;
mod gossip;
mod inbound;
mod probing;
mod startup;

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
    /// Claims that we were dead, one per incarnation claimed.
    pub death_claims: u64,
    /// Ticks so late that peers could have declared us dead meanwhile (see
    /// `Core::notice_stall`).
    pub stalls: u64,
    /// Members that died in our view while we had no interface, suspected again when one
    /// came back (see `Core::set_local_health`).
    pub doubted_deaths: u64,
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
        /// The target's incarnation when the probe left: a failure says nothing about a
        /// newer one (it refuted a suspicion, or spoke up, after the probe left).
        incarnation: u64,
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
    /// The peer's host refused the datagram or connection: it is up and nothing listens on
    /// the speaker's port, so the speaker process is gone. A partition never looks like this.
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
    startup: Startup,
    /// Some authenticated message from a peer arrived.
    had_contact: bool,
    view_dirty: bool,
    /// Cut off from most of the cluster, or back from it: we rank after the others until
    /// then (see the module docs, "Rejoining").
    rejoining_until: Option<Instant>,
    /// The highest incarnation of ours a peer claimed dead.
    dead_claimed: Option<u64>,
    /// Members that died in our view while our health listed no interface (we may have been
    /// the one cut off, a cable pulled on our side): doubted when one comes back.
    deaths_while_linkless: BTreeSet<String>,
    stats: CoreStats,
}

/// How long the view may stay unsettled before the core warns (and then again as often).
const UNSETTLED_WARN_EVERY: Duration = Duration::from_secs(10);

/// How far the core is in starting up (see the parent module, "Startup").
#[derive(Debug)]
enum Startup {
    /// No peer list from the API yet: the core cannot know whom to ask, and does nothing.
    AwaitingPeers,
    /// Peers are listed: the protocol starts at the next tick.
    PeersListed,
    /// Asking peers for their state; the view is not settled and the speaker stays unready.
    Syncing(Syncing),
    /// A first exchange ended, or nobody answered for the settle-alone time.
    Settled,
}

/// The initial full-state exchanges of an unsettled view.
#[derive(Debug)]
struct Syncing {
    /// When the view turned unsettled (start, or new peers before any contact).
    since: Instant,
    /// One failed for another reason than our messages being rejected.
    failed_plainly: bool,
    /// All of them failed: ask again at this time.
    retry_at: Option<Instant>,
    /// When the warning that the view does not settle was last logged: it keeps the speaker
    /// unready, and its log should say what it is waiting for.
    warned: Option<Instant>,
}

impl Syncing {
    fn since(since: Instant) -> Syncing {
        Syncing {
            since,
            failed_plainly: false,
            retry_at: None,
            warned: None,
        }
    }
}

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
            deaths_while_linkless: BTreeSet::new(),
            startup: Startup::AwaitingPeers,
            had_contact: false,
            view_dirty: true,
            rejoining_until: None,
            dead_claimed: None,
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
            settled: self.settled(),
            presumed_dead: self.stats.death_claims + self.stats.stalls,
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
        if matches!(self.startup, Startup::AwaitingPeers) {
            self.startup = Startup::PeersListed;
        }
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
        if self.started() && !self.leaving && !added.is_empty() {
            if self.had_contact {
                // Joiners: learn their state now rather than at the next slow probe.
                for node in added.iter().take(self.config.initial_sync_peers.max(1)) {
                    self.request_sync(node, now, false);
                }
            } else {
                // (Re)starts the settle-alone clock.
                match &mut self.startup {
                    Startup::Syncing(syncing) => syncing.since = now,
                    _ => {
                        self.startup = Startup::Syncing(Syncing::since(now));
                        self.view_dirty = true;
                    }
                }
                added.shuffle(&mut self.rng);
                for node in added.iter().take(self.config.initial_sync_peers.max(1)) {
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
    ///
    /// When an interface comes back after none was usable, the members that died in our view
    /// meanwhile are suspected again and probed at once: with our cable pulled, silence
    /// said nothing about them. Taken for dead, they left this node the only candidate for
    /// every IP, and it announced them all the moment its link was back, before their first
    /// message could arrive, moving clients away from the real owners. Those really dead are
    /// declared so again after a suspicion timeout.
    pub fn set_local_health(&mut self, health: NodeHealth, now: Instant) {
        if health == self.health {
            return;
        }
        let links_back = self.linkless() && !health.interfaces.is_empty();
        self.health = health;
        self.incarnation += 1;
        self.queue_gossip(self.node.clone());
        self.view_dirty = true;
        if links_back {
            self.doubt_deaths_while_linkless(now);
        }
    }

    /// Our health lists no usable interface.
    fn linkless(&self) -> bool {
        self.health.interfaces.is_empty()
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
        match self.startup {
            Startup::AwaitingPeers => return,
            Startup::PeersListed => self.start(now),
            Startup::Syncing(_) | Startup::Settled => {}
        }
        self.expire_pending(now);
        if self.leaving {
            return;
        }
        self.notice_stall(now);
        if self.initial_sync_retry().is_some_and(|t| now >= t) {
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
        match self.startup {
            Startup::AwaitingPeers => return None,
            Startup::PeersListed => return Some(now),
            Startup::Syncing(_) | Startup::Settled => {}
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
        let unsettled_warning = match &self.startup {
            Startup::Syncing(syncing) => Some(syncing.warned.unwrap_or(syncing.since) + UNSETTLED_WARN_EVERY),
            _ => None,
        };
        // While cut off, every tick moves the end of the rejoin hold (see `track_rejoin`):
        // keep ticking, so the hold ends a hold's time after the last tick that saw it.
        let cut_off = !self.config.rejoin_hold.is_zero() && self.cut_off().is_some();
        pending
            .flatten()
            .chain(suspicions.flatten())
            .chain(self.watch.values().copied())
            .chain(self.slow_next)
            .chain(self.next_sync)
            .chain(self.initial_sync_retry())
            .chain(unsettled_warning)
            .chain(self.rejoining_until)
            .chain(cut_off.then_some(now))
            .min()
    }

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
        if to == MemberState::Dead && self.linkless() {
            self.deaths_while_linkless.insert(node.to_string());
        } else {
            self.deaths_while_linkless.remove(node);
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

#[cfg(test)]
mod tests;
