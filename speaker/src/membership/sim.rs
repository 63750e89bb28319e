//! Deterministic simulation of many speakers' membership cores in one process: virtual time,
//! seeded randomness, an in-memory network with latency, loss, partitions and slow nodes, and
//! each node's election over its own view. Used by the scenario tests and the benchmark.
//!
//! Every message is sealed and opened with [`super::auth`], so authentication is exercised
//! too. A killed node is a black hole (its host vanished); a rejected message gets an error
//! reply, as the gRPC server gives.
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use herald_proto::membership::v1::Envelope;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::auth::{Authenticator, Boot, KeyRing, Rejection, SecretKey};
use super::state::{CallFailure, Core, Effect, Inbound, ReplyToken, RequestId, Rpc};
use super::{MemberState, MembershipConfig, NodeHealth, Peer};
use crate::election::{Ownership, Unit, rank_scored, rendezvous_score};

/// Memoized rendezvous scores: the simulation re-elects very often, in debug builds.
#[derive(Default)]
struct ScoreMemo {
    scores: HashMap<String, HashMap<Unit, u64>>,
}

impl ScoreMemo {
    fn rank(&mut self, unit: Unit, candidates: &[String], rejoining: &BTreeSet<String>) -> Option<Ownership> {
        let mut scored = Vec::with_capacity(candidates.len());
        for node in candidates {
            if !self.scores.contains_key(node) {
                self.scores.insert(node.clone(), HashMap::new());
            }
            let per_node = self.scores.get_mut(node).expect("inserted above");
            let score = *per_node.entry(unit).or_insert_with(|| rendezvous_score(node, unit));
            scored.push((score, node.as_str()));
        }
        rank_scored(scored, rejoining)
    }
}

/// Wall clock of the simulated world at virtual time zero (Unix ms).
const EPOCH_UNIX_MS: i64 = 1_800_000_000_000;

/// Settings of a simulation.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of speakers, named `node-0`… .
    pub nodes: usize,
    /// Number of election units (IPs `10.x.y.z`).
    pub units: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Probability that a message (request or reply) is lost.
    pub loss: f64,
    /// One-way latency: base.
    pub latency: Duration,
    /// One-way latency: uniform jitter added to the base.
    pub jitter: Duration,
    /// Membership settings of every node.
    pub membership: MembershipConfig,
    /// Each node re-elects over its own view (when false, one election over the true set of
    /// running nodes feeds everybody's close-watch set: cheaper, for large benchmarks).
    pub per_node_election: bool,
    /// Virtual tick of every core.
    pub tick: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 3,
            units: 30,
            seed: 1,
            loss: 0.0,
            latency: Duration::from_micros(300),
            jitter: Duration::from_micros(400),
            membership: MembershipConfig::default(),
            per_node_election: true,
            tick: Duration::from_millis(5),
        }
    }
}

/// Message counters of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeCounters {
    /// Requests and replies sent, by RPC.
    pub sent: BTreeMap<&'static str, u64>,
    /// Requests and replies received and accepted, by RPC.
    pub received: BTreeMap<&'static str, u64>,
    /// Received messages rejected by authentication, by reason.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Bytes of envelopes sent (payload + MAC; no gRPC/HTTP/2/TCP framing).
    pub bytes_sent: u64,
    /// Accepted messages whose sender's clock was off by more than the warning threshold.
    pub clock_skewed: u64,
}

impl NodeCounters {
    /// All messages sent.
    pub fn total_sent(&self) -> u64 {
        self.sent.values().sum()
    }
}

struct SimNode {
    name: String,
    core: Core,
    auth: Authenticator,
    running: bool,
    /// Stopped, but its host is up: connections to it are refused ([`Simulation::crash`]).
    refusing: bool,
    deferred: HashMap<ReplyToken, (usize, RequestId, Rpc)>,
    owned: BTreeSet<Unit>,
    counters: NodeCounters,
    /// Extra delay of every reply this node sends (a slow, overloaded speaker).
    reply_delay: Duration,
    /// This node's wall clock minus the simulation's.
    clock_offset_ms: i64,
    election_dirty: bool,
}

enum Event {
    Request {
        from: usize,
        to: usize,
        id: RequestId,
        rpc: Rpc,
        envelope: Envelope,
    },
    Reply {
        to: usize,
        id: RequestId,
        rpc: Rpc,
        envelope: Envelope,
    },
    Failure {
        to: usize,
        id: RequestId,
        failure: CallFailure,
    },
    Rejected {
        to: usize,
        id: RequestId,
    },
}

/// The simulated cluster.
pub struct Simulation {
    config: SimConfig,
    start: Instant,
    now: Instant,
    next_tick: Instant,
    nodes: Vec<SimNode>,
    by_address: HashMap<SocketAddr, usize>,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    events: HashMap<u64, Event>,
    next_event: u64,
    rng: StdRng,
    /// Partition group per node; messages cross groups only when equal.
    groups: Vec<u32>,
    units: Vec<Unit>,
    scores: ScoreMemo,
    peers: Vec<Peer>,
}

fn node_address(index: usize) -> SocketAddr {
    let index = u32::try_from(index).unwrap_or(u32::MAX);
    SocketAddr::from((Ipv4Addr::from(0x0a64_0000u32.wrapping_add(index)), 7946))
}

fn envelope_size(envelope: &Envelope) -> u64 {
    (envelope.payload.len() + envelope.mac.len()) as u64
}

/// A ready node announcing on `eth0` with its dataplane running (also the unit tests' fixture).
pub(crate) fn healthy() -> NodeHealth {
    NodeHealth {
        announcer_ready: true,
        dataplane_ready: true,
        interfaces: ["eth0".to_string()].into(),
        ..Default::default()
    }
}

impl Simulation {
    /// A cluster where every node has the same secret and every node's peer list names all
    /// the others.
    pub fn new(config: SimConfig) -> Self {
        let start = Instant::now();
        let mut rng = StdRng::seed_from_u64(config.seed);
        let key = SecretKey::new(b"simulated shared secret".to_vec());
        let peers: Vec<Peer> = (0..config.nodes)
            .map(|i| Peer {
                node: format!("node-{i}"),
                address: node_address(i),
            })
            .collect();
        let mut nodes = Vec::with_capacity(config.nodes);
        for peer in &peers {
            let mut core = Core::new(
                config.membership.clone(),
                peer.node.clone(),
                peer.address,
                1,
                healthy(),
                rng.random(),
            );
            core.set_peers(&peers, start);
            nodes.push(SimNode {
                name: peer.node.clone(),
                core,
                auth: Authenticator::new(
                    KeyRing::single(key.clone()),
                    peer.node.clone(),
                    Boot {
                        id: rng.random(),
                        started_unix_ms: EPOCH_UNIX_MS,
                    },
                ),
                running: true,
                refusing: false,
                deferred: HashMap::new(),
                owned: BTreeSet::new(),
                counters: NodeCounters::default(),
                reply_delay: Duration::ZERO,
                clock_offset_ms: 0,
                election_dirty: true,
            });
        }
        let units = (0..config.units)
            .map(|i| {
                let i = u32::try_from(i).unwrap_or(u32::MAX);
                IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32.wrapping_add(i)))
            })
            .collect();
        let by_address = (0..config.nodes).map(|i| (node_address(i), i)).collect();
        let groups = vec![0; config.nodes];
        let mut sim = Simulation {
            config,
            start,
            now: start,
            next_tick: start,
            nodes,
            by_address,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            next_event: 0,
            rng,
            groups,
            units,
            scores: ScoreMemo::default(),
            peers,
        };
        if !sim.config.per_node_election {
            sim.global_election();
        }
        sim
    }

    /// Virtual time elapsed since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Index of `node-i`.
    pub fn name(&self, index: usize) -> &str {
        &self.nodes[index].name
    }

    /// Runs the world for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        let until = self.now + duration;
        self.run_until(until, |_| false);
    }

    /// Runs until `done` holds (checked after every tick) or `limit` passed; returns the
    /// virtual time it took, or `None` at the limit.
    pub fn run_until_true(&mut self, limit: Duration, done: impl FnMut(&Simulation) -> bool) -> Option<Duration> {
        let started = self.now;
        let until = self.now + limit;
        if self.run_until(until, done) {
            Some(self.now - started)
        } else {
            None
        }
    }

    fn run_until(&mut self, until: Instant, mut done: impl FnMut(&Simulation) -> bool) -> bool {
        loop {
            let next_event = self.queue.peek().map(|Reverse((t, _))| *t);
            if next_event.is_some_and(|t| t < self.next_tick) {
                let Some(Reverse((at, id))) = self.queue.pop() else {
                    continue;
                };
                if at > until {
                    self.queue.push(Reverse((at, id)));
                    self.now = until;
                    return false;
                }
                self.now = at;
                if let Some(event) = self.events.remove(&id) {
                    self.deliver(event);
                }
                continue;
            }
            if self.next_tick > until {
                self.now = until;
                return false;
            }
            self.now = self.next_tick;
            self.next_tick += self.config.tick;
            for index in 0..self.nodes.len() {
                if self.nodes[index].running {
                    let now = self.now;
                    self.nodes[index].core.tick(now);
                    self.flush(index);
                }
            }
            if self.config.per_node_election {
                self.elect_dirty();
            }
            if done(self) {
                return true;
            }
        }
    }

    /// The caller `to` learns one way later that its request `id` failed.
    fn fail_back(&mut self, to: usize, id: RequestId, failure: CallFailure) {
        let at = self.now + self.one_way();
        self.schedule(at, Event::Failure { to, id, failure });
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        let id = self.next_event;
        self.next_event += 1;
        self.events.insert(id, event);
        self.queue.push(Reverse((at, id)));
    }

    fn one_way(&mut self) -> Duration {
        let jitter_us = u64::try_from(self.config.jitter.as_micros()).unwrap_or(0);
        let jitter = if jitter_us == 0 {
            0
        } else {
            self.rng.random_range(0..jitter_us)
        };
        self.config.latency + Duration::from_micros(jitter)
    }

    /// Whether a message from `a` to `b` makes it (partition and random loss).
    fn passes(&mut self, a: usize, b: usize) -> bool {
        if self.groups[a] != self.groups[b] {
            return false;
        }
        !(self.config.loss > 0.0 && self.rng.random_bool(self.config.loss))
    }

    /// Node `index`'s wall clock.
    fn unix_ms(&self, index: usize) -> i64 {
        EPOCH_UNIX_MS
            + i64::try_from(self.elapsed().as_millis()).unwrap_or(i64::MAX)
            + self.nodes[index].clock_offset_ms
    }

    /// Carries out the effects of node `index`.
    fn flush(&mut self, index: usize) {
        let effects = self.nodes[index].core.take_effects();
        if self.nodes[index].core.view_changed() {
            self.nodes[index].election_dirty = true;
        }
        for effect in effects {
            match effect {
                Effect::Request {
                    id,
                    to,
                    address,
                    rpc,
                    message,
                    ..
                } => {
                    let envelope = self.nodes[index].auth.seal(message, &to, self.unix_ms(index));
                    *self.nodes[index].counters.sent.entry(rpc.as_str()).or_default() += 1;
                    self.nodes[index].counters.bytes_sent += envelope_size(&envelope);
                    let Some(&to) = self.by_address.get(&address) else {
                        continue;
                    };
                    if self.passes(index, to) {
                        let at = self.now + self.one_way();
                        self.schedule(
                            at,
                            Event::Request {
                                from: index,
                                to,
                                id,
                                rpc,
                                envelope,
                            },
                        );
                    }
                }
                Effect::Reply { token, message } => {
                    if let Some((to, id, rpc)) = self.nodes[index].deferred.remove(&token) {
                        let envelope = self.nodes[index]
                            .auth
                            .seal(message, &self.nodes[to].name, self.unix_ms(index));
                        self.send_reply(index, to, id, rpc, envelope);
                    }
                }
            }
        }
    }

    fn send_reply(&mut self, from: usize, to: usize, id: RequestId, rpc: Rpc, envelope: Envelope) {
        *self.nodes[from].counters.sent.entry(rpc.as_str()).or_default() += 1;
        self.nodes[from].counters.bytes_sent += envelope_size(&envelope);
        if self.passes(from, to) {
            let at = self.now + self.one_way() + self.nodes[from].reply_delay;
            self.schedule(at, Event::Reply { to, id, rpc, envelope });
        }
    }

    fn reject(&mut self, index: usize, rejection: Rejection) {
        *self.nodes[index]
            .counters
            .rejected
            .entry(rejection.as_str())
            .or_default() += 1;
    }

    /// Opens `envelope` at node `to` as its runtime does, counting a skewed sender's clock.
    fn open(&mut self, to: usize, envelope: &Envelope) -> Result<herald_proto::membership::v1::Message, Rejection> {
        let opened = self.nodes[to].auth.open(envelope, self.now, self.unix_ms(to))?;
        if opened.clock_off_by_more_than(self.config.membership.clock_skew_warning) {
            self.nodes[to].counters.clock_skewed += 1;
        }
        Ok(opened.message)
    }

    fn deliver(&mut self, event: Event) {
        let now = self.now;
        match event {
            Event::Request {
                from,
                to,
                id,
                rpc,
                envelope,
            } => {
                if !self.nodes[to].running {
                    if self.nodes[to].refusing {
                        // The host answers the connection attempt with a reset.
                        self.fail_back(from, id, CallFailure::Refused);
                    }
                    return;
                }
                let message = match self.open(to, &envelope) {
                    Ok(m) => m,
                    Err(rejection) => {
                        // The gRPC server answers `Unauthenticated`.
                        self.reject(to, rejection);
                        let at = now + self.one_way();
                        self.schedule(at, Event::Rejected { to: from, id });
                        return;
                    }
                };
                *self.nodes[to].counters.received.entry(rpc.as_str()).or_default() += 1;
                match self.nodes[to].core.handle_request(message, now) {
                    Inbound::Reply(reply) => {
                        let envelope = self.nodes[to]
                            .auth
                            .seal(reply, &self.nodes[from].name, self.unix_ms(to));
                        self.send_reply(to, from, id, rpc, envelope);
                    }
                    Inbound::Deferred(token) => {
                        self.nodes[to].deferred.insert(token, (from, id, rpc));
                    }
                    Inbound::Invalid => self.fail_back(from, id, CallFailure::Other),
                }
                self.flush(to);
            }
            Event::Reply { to, id, rpc, envelope } => {
                if !self.nodes[to].running {
                    return;
                }
                match self.open(to, &envelope) {
                    Ok(message) => {
                        *self.nodes[to].counters.received.entry(rpc.as_str()).or_default() += 1;
                        self.nodes[to].core.handle_response(id, message, now);
                    }
                    Err(rejection) => {
                        self.reject(to, rejection);
                        self.nodes[to].core.handle_failure(id, CallFailure::Other, now);
                    }
                }
                self.flush(to);
            }
            Event::Failure { to, id, failure } => {
                if self.nodes[to].running {
                    self.nodes[to].core.handle_failure(id, failure, now);
                    self.flush(to);
                }
            }
            Event::Rejected { to, id } => {
                if self.nodes[to].running {
                    self.nodes[to].core.handle_rejected(id, now);
                    self.flush(to);
                }
            }
        }
    }

    /// Nodes each node considers candidates (live in its view, healthy), and those of them
    /// that are rejoining; `None` while the node itself is unsettled.
    fn candidates_of(&mut self, index: usize) -> Option<(Vec<String>, BTreeSet<String>)> {
        let view = self.nodes[index].core.view();
        if !view.settled {
            return None;
        }
        let candidates: Vec<String> = view
            .members
            .iter()
            .filter(|(_, m)| {
                m.state.is_live()
                    && m.health
                        .as_ref()
                        .is_some_and(|h| h.announcer_ready && !h.interfaces.is_empty())
            })
            .map(|(n, _)| n.clone())
            .collect();
        Some((candidates, view.rejoining_nodes()))
    }

    fn elect_dirty(&mut self) {
        for index in 0..self.nodes.len() {
            if !self.nodes[index].running || !self.nodes[index].election_dirty {
                continue;
            }
            self.nodes[index].election_dirty = false;
            let Some((candidates, rejoining)) = self.candidates_of(index) else {
                continue;
            };
            let me = self.nodes[index].name.clone();
            let mut owned = BTreeSet::new();
            let mut watch = BTreeSet::new();
            for unit in self.units.clone() {
                let ranked = self.scores.rank(unit, &candidates, &rejoining);
                if let Some(Ownership { owner, runner_up }) = ranked {
                    if owner == me {
                        owned.insert(unit);
                    } else if runner_up.as_deref() == Some(me.as_str()) {
                        watch.insert(owner);
                    }
                }
            }
            self.nodes[index].owned = owned;
            let now = self.now;
            self.nodes[index].core.watch_closely(&watch, now);
        }
    }

    fn global_election(&mut self) {
        let running: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.running)
            .map(|n| n.name.clone())
            .collect();
        let mut watch: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut owned: BTreeMap<String, BTreeSet<Unit>> = BTreeMap::new();
        for unit in self.units.clone() {
            if let Some(o) = self.scores.rank(unit, &running, &BTreeSet::new()) {
                owned.entry(o.owner.clone()).or_default().insert(unit);
                if let Some(r) = o.runner_up {
                    watch.entry(r).or_default().insert(o.owner);
                }
            }
        }
        let now = self.now;
        for node in &mut self.nodes {
            node.owned = owned.remove(&node.name).unwrap_or_default();
            let targets = watch.remove(&node.name).unwrap_or_default();
            node.core.watch_closely(&targets, now);
        }
    }

    // ----- faults -----

    /// Stops node `index` abruptly: it neither sends nor answers anything (the node is lost,
    /// or frozen).
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].running = false;
        self.nodes[index].refusing = false;
        self.nodes[index].owned.clear();
        if !self.config.per_node_election {
            self.global_election();
        }
    }

    /// Node `index`'s speaker process dies while its host stays up: like [`Simulation::kill`],
    /// except that its host refuses connections to it.
    pub fn crash(&mut self, index: usize) {
        self.kill(index);
        self.nodes[index].refusing = true;
    }

    /// Starts node `index` again as a new process: new boot id, fresh state, an incarnation
    /// above any it had (the runtime uses the clock for that).
    pub fn restart(&mut self, index: usize) {
        let incarnation = 2 + u64::try_from(self.elapsed().as_millis()).unwrap_or(u64::MAX - 2);
        let mut core = Core::new(
            self.config.membership.clone(),
            self.nodes[index].name.clone(),
            node_address(index),
            incarnation,
            healthy(),
            self.rng.random(),
        );
        core.set_peers(&self.peers, self.now);
        // A restarted speaker reads the Secret as it is now: the keys this node last took.
        let auth = Authenticator::new(
            self.nodes[index].auth.keys(),
            self.nodes[index].name.clone(),
            Boot {
                id: self.rng.random(),
                started_unix_ms: self.unix_ms(index),
            },
        );
        let node = &mut self.nodes[index];
        node.core = core;
        node.auth = auth;
        node.running = true;
        node.refusing = false;
        node.deferred.clear();
        node.owned.clear();
        node.election_dirty = true;
        if !self.config.per_node_election {
            self.global_election();
        }
    }

    /// Node `index` starts a graceful leave (it keeps answering until [`Simulation::kill`]).
    pub fn leave(&mut self, index: usize) {
        let now = self.now;
        self.nodes[index].core.leave(now);
        self.flush(index);
        self.nodes[index].owned.clear();
    }

    /// Splits the network: nodes in `side` only talk among themselves, the rest likewise.
    pub fn partition(&mut self, side: &[usize]) {
        for (i, group) in self.groups.iter_mut().enumerate() {
            *group = u32::from(side.contains(&i));
        }
    }

    /// Ends every partition.
    pub fn heal(&mut self) {
        self.groups.iter_mut().for_each(|g| *g = 0);
    }

    /// Every reply of node `index` is delayed by `delay` (an overloaded speaker).
    pub fn slow_down(&mut self, index: usize, delay: Duration) {
        self.nodes[index].reply_delay = delay;
    }

    /// Gives node `index` another secret (a misconfigured or hostile speaker).
    pub fn change_secret(&mut self, index: usize, secret: &[u8]) {
        let started = self.unix_ms(index);
        let node = &mut self.nodes[index];
        node.auth = Authenticator::new(
            KeyRing::single(SecretKey::new(secret.to_vec())),
            node.name.clone(),
            Boot {
                id: self.rng.random(),
                started_unix_ms: started,
            },
        );
    }

    /// Node `index` takes the Secret's keys as they are now (one step of a rotation), without
    /// restarting.
    pub fn set_keys(&mut self, index: usize, keys: KeyRing) {
        let now = self.now;
        self.nodes[index].auth.set_keys(keys, now);
    }

    /// Sets node `index`'s wall clock `offset_ms` away from the others' (positive: ahead).
    pub fn set_clock_offset(&mut self, index: usize, offset_ms: i64) {
        self.nodes[index].clock_offset_ms = offset_ms;
    }

    /// Sets the health node `index` gossips.
    pub fn set_health(&mut self, index: usize, health: NodeHealth) {
        let now = self.now;
        self.nodes[index].core.set_local_health(health, now);
        self.nodes[index].election_dirty = true;
    }

    // ----- observations -----

    /// Whether node `index` settled its view (see the membership docs, "Startup").
    pub fn is_settled(&mut self, index: usize) -> bool {
        self.nodes[index].core.view().settled
    }

    /// Whether node `index` is running.
    pub fn is_running(&self, index: usize) -> bool {
        self.nodes[index].running
    }

    /// State of `node` in the view of `observer`.
    pub fn state_seen_by(&self, observer: usize, node: usize) -> Option<MemberState> {
        self.nodes[observer].core.member_state(&self.nodes[node].name)
    }

    /// Whether `observer` sees `node` (itself included) rejoining after a partition.
    pub fn rejoining_seen_by(&self, observer: usize, node: usize) -> bool {
        self.nodes[observer].core.is_rejoining(&self.nodes[node].name)
    }

    /// The units each running node believes it owns.
    pub fn claims(&self) -> BTreeMap<Unit, Vec<usize>> {
        let mut claims: BTreeMap<Unit, Vec<usize>> = self.units.iter().map(|u| (*u, Vec::new())).collect();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.running {
                for unit in &node.owned {
                    claims.entry(*unit).or_default().push(i);
                }
            }
        }
        claims
    }

    /// Every unit is claimed by exactly one running node.
    pub fn one_owner_per_unit(&self) -> bool {
        self.claims().values().all(|owners| owners.len() == 1)
    }

    /// Units claimed by node `index`.
    pub fn owned_by(&self, index: usize) -> &BTreeSet<Unit> {
        &self.nodes[index].owned
    }

    /// Whether every running node sees every running node live and every stopped node not
    /// live.
    pub fn views_agree(&self) -> bool {
        self.nodes.iter().enumerate().filter(|(_, n)| n.running).all(|(i, _)| {
            self.nodes
                .iter()
                .enumerate()
                .all(|(j, other)| i == j || self.state_seen_by(i, j).is_some_and(|s| s.is_live() == other.running))
        })
    }

    /// Deaths declared by the nodes' own failed probes, summed over observers (in a run
    /// where nobody stops, every one is a false death).
    pub fn confirmed_deaths(&self) -> u64 {
        self.nodes.iter().map(|n| n.core.stats().confirmed_dead).sum()
    }

    /// Message counters of node `index`.
    pub fn counters(&self, index: usize) -> &NodeCounters {
        &self.nodes[index].counters
    }

    /// Core counters of node `index`.
    pub fn core_stats(&self, index: usize) -> super::state::CoreStats {
        self.nodes[index].core.stats()
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}
