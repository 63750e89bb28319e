//! Membership: which speakers are alive, and what each says about its own health, learned
//! speaker-to-speaker (SWIM-style: probes as UDP datagrams, full state over gRPC, see [`udp`])
//! so it keeps working while the API server is down.
//!
//! # Layout
//! - [`state`]: the SWIM state machine, pure and driven by calls with the current time; it
//!   returns the messages to send as [`state::Effect`]s. The simulation and the runtime drive
//!   the same code.
//! - [`auth`]: HMAC-SHA256 envelopes and replay rejection.
//! - [`transport`]: [`transport::PeerTransport`] (client side), its tonic implementation and
//!   an in-memory one, plus the tonic `Membership` service.
//! - [`udp`]: probes as UDP datagrams on the same port, falling back to gRPC per peer: the
//!   transport speakers use.
//! - [`runtime`]: the tokio task that runs the state machine with real time; the wiring's API.
//! - [`metrics`]: Prometheus metrics.
//!
//! # Failure detection
//! Each speaker probes (Ping → Ack) the nodes it was told to *watch closely* (the owners of
//! the IPs for which it is the runner-up, see `election::watch_targets`) every
//! [`MembershipConfig::watch_probe_interval`] (40 ms), and everybody else round-robin, one
//! probe per [`MembershipConfig::probe_interval`] (1 s) in total, so traffic grows with the
//! number of IPs watched, not with the square of the cluster size. A watched member heard
//! from within the last watch interval (any message: its own probe of us, an Ack) is not
//! probed until an interval after that, so two nodes that watch each other take turns. Dead members stay in the
//! slow round-robin so that partitions heal.
//!
//! A probe without Ack within [`MembershipConfig::probe_timeout`] (50 ms) makes the member
//! `Suspect` and starts a local suspicion timer ([`MembershipConfig::suspicion_timeout`],
//! 70 ms). While it runs the speaker keeps pinging the suspect directly every
//! [`MembershipConfig::suspicion_probe_interval`] (50 ms) and asks
//! [`MembershipConfig::indirect_probes`] (3) other members to ping it (PingReq), twice. Any sign
//! of life (an Ack, even late; a successful PingReq; any message from the suspect) cancels the
//! timer; otherwise the member is declared `Dead`. Worst case from a lost node to `Dead` at the
//! runner-up: watch interval + probe timeout + suspicion timeout plus timer granularity. A live
//! member is declared dead only after answering nothing, directly or through three helpers, for
//! at least probe timeout + suspicion timeout.
//!
//! A crashed speaker on a live host is told apart: its host refuses datagrams and connections
//! to the port (ICMP port unreachable or a TCP reset, seen as ECONNREFUSED,
//! [`state::CallFailure::Refused`]). Our refused probe starts the suspicion and
//! asks the helpers at once; a helper whose ping is refused too confirms the death without
//! waiting for the timeout (with no helper, a second refused probe of ours does). So a crash
//! costs one watch interval plus a few round trips. A partition or a lost node never produces
//! a refusal and always takes the silent path; a helper that reaches the member cancels the
//! suspicion as usual.
//!
//! `Suspect` still counts as live for the election: a single lost packet never moves an IP.
//! A suspicion learned from gossip starts no timer: only a speaker's own failed probes, or a
//! `Dead` claim from one, kill a member. A `Dead` claim about a member this speaker heard from
//! within the last suspicion timeout is downgraded to `Suspect` (after a partition heals, the
//! runner-up that sees its owner alive does not give in to the other side's stale claim).
//!
//! # Incarnations and gossip
//! Every member's state carries an incarnation number that only the member itself raises: to
//! refute a suspicion or death claim about itself (it then also pings the speaker it heard the
//! claim from), to announce new health (an interface went down, the announcer stopped), and to
//! leave. Updates are ordered by (incarnation, Alive < Suspect < Dead < Left). Every message
//! starts its gossip with the sender's own state, always carries the sender's view of the
//! receiver when that is not `Alive` (so the receiver refutes at once), and piggybacks up to
//! [`MembershipConfig::gossip_per_message`] recent changes, each retransmitted
//! `gossip_retransmit_mult × ⌈log2(n+1)⌉` times, to that many different members (a node
//! probing the same owners every few tens of milliseconds would otherwise spend a change's
//! transmissions on them alone). A death this node declares itself is sent to every live
//! member at once: all dataplanes must stop sending new flows to a lost node's pods together
//! (see `dataplane::desired`). A full-state `Sync` runs with a few peers at
//! start, with a member that comes back from `Dead`, and with a random member every
//! [`MembershipConfig::sync_interval`].
//!
//! # Leaving
//! `leave()` raises the incarnation, sets the local state `Left` and pings every live member
//! directly (bounded by [`MembershipConfig::leave_timeout`]), so their elections move the IPs
//! at once instead of after a detection period.
//!
//! # Partitions
//! During a partition each side declares the other side dead and elects among the nodes it
//! sees: both sides may announce the same IP. Dead members keep being probed in the slow
//! round-robin; when a probe crosses the healed link, the probed node learns it was declared
//! dead, refutes with a higher incarnation and pings back, both sides exchange full state
//! (`Sync`), and the refutations spread by gossip, ending dual ownership.
//!
//! # Rejoining
//! A node cut off from most of the cluster (more than half of the non-departed members,
//! itself included, are dead in its view) marks itself `rejoining` in its own gossiped state
//! from then on until [`MembershipConfig::rejoin_hold`] after that ends; a suspicion or death
//! claim it refutes in that time starts the hold again. It marks itself before anyone can hear
//! it, so its first message across a healed link already says so. Elections rank a rejoining
//! node after every other candidate (`election`), so the IPs it owned stay with their new
//! owners while the link that just came back may still drop a probe or two, and return to it
//! once when the hold ends. Only the minority side holds; from inside, losing most of the
//! cluster looks the same, so a node whose peers all died also holds once they return.
//!
//! A node that knows it was the one cut off (its health listed no usable interface) doubts
//! the deaths it saw meanwhile: when an interface is back, those members are suspected again
//! and probed at once, so it does not announce every IP the moment its link returns, before
//! their first message arrives. Those really dead die again after a suspicion timeout.
//!
//! # Startup
//! A fresh speaker knows its peers' addresses but not their health, so it would elect itself
//! everywhere. [`MembershipView::settled`] turns true once the first `Sync` with one of up to
//! [`MembershipConfig::initial_sync_peers`] peers answered, or the peer list is empty; the
//! wiring should announce nothing before that. Silence is no answer: while the peers asked
//! time out or refuse (they may be starting too), the speaker asks others every probe
//! interval and settles alone only after [`MembershipConfig::settle_alone_after`]; if every
//! peer rejected our messages as unauthenticated (wrong key), it never settles. A view that
//! settled with an empty list before any contact (an unsynced API cache) turns unsettled when
//! peers are listed, until the exchange with them ends; the first contact after settling
//! alone is a full `Sync`.
//!
//! # Authentication
//! See [`auth`]: messages without a valid HMAC under the speakers' keys, replays and messages
//! addressed to another node are dropped and counted before they reach the state machine.
//! Clocks need not agree: a peer's clock offset is only counted and logged beyond
//! [`MembershipConfig::clock_skew_warning`].
pub mod auth;
pub mod metrics;
pub mod runtime;
#[cfg(any(test, feature = "testing"))]
pub mod sim;
pub mod state;
pub mod transport;
pub mod udp;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

pub use metrics::MembershipMetrics;
pub use runtime::{Membership, MembershipError};

/// A speaker's state as others see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// A probe failed and it was not yet confirmed dead; still counts as live.
    Suspect,
    /// Confirmed dead: no answer, directly or indirectly, within the suspicion timeout.
    Dead,
    /// Left on purpose.
    Left,
}

impl MemberState {
    /// Whether the member counts as a live speaker for the election (`Alive` or `Suspect`).
    pub fn is_live(self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Suspect)
    }

    /// Short stable name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Dead => "dead",
            MemberState::Left => "left",
        }
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A speaker's own view of whether it can serve the traffic it would own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeHealth {
    /// The ARP/NDP announcer is running.
    pub announcer_ready: bool,
    /// The eBPF dataplane is running (false in announce-only mode).
    pub dataplane_ready: bool,
    /// Interfaces that are up and usable for announcing: the node-wide selection, used for
    /// advertisements that name no interface.
    pub interfaces: BTreeSet<String>,
    /// Interfaces that could announce but are outside the node-wide selection (excluded by
    /// name, or enslaved to a bond or bridge): used where an advertisement names them.
    pub other_interfaces: BTreeSet<String>,
}

/// Another speaker, as listed from the API (speaker Pods / Nodes).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peer {
    /// Node name.
    pub node: String,
    /// Its membership gRPC address.
    pub address: SocketAddr,
}

/// One member in a [`MembershipView`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Membership gRPC address.
    pub address: SocketAddr,
    /// Current state.
    pub state: MemberState,
    /// Incarnation of that state.
    pub incarnation: u64,
    /// Health it gossiped; `None` until heard.
    pub health: Option<NodeHealth>,
    /// This node declared it dead because its host refused connections to its speaker: the
    /// process died, the node is up (its pods and pinned programs still work). False for a
    /// death by silence or one learned from gossip.
    pub host_up: bool,
    /// It is cut off from most of the cluster, or back from that less than its hold ago:
    /// elections rank it after every other candidate (see "Rejoining" in the module docs).
    pub rejoining: bool,
}

/// What membership currently knows, including the local node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MembershipView {
    /// Local node name.
    pub local: String,
    /// Every known member, the local node included.
    pub members: BTreeMap<String, MemberInfo>,
    /// The first state exchange with peers finished (see the module docs, "Startup").
    pub settled: bool,
    /// Times peers may have declared this node dead, as far as it can tell: claims of its
    /// death it heard (one per incarnation claimed), and stalls long enough for peers to
    /// declare it (it could not run). Peers that did may have moved its IPs and switched the
    /// network to their MACs while this node, perhaps frozen, never saw itself lose them: a
    /// rise means it must announce its IPs again.
    pub presumed_dead: u64,
}

impl MembershipView {
    /// Names of members that count as live (`Alive` or `Suspect`).
    pub fn live_nodes(&self) -> BTreeSet<String> {
        self.members
            .iter()
            .filter(|(_, m)| m.state.is_live())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// State of `node`, if known.
    pub fn state_of(&self, node: &str) -> Option<MemberState> {
        self.members.get(node).map(|m| m.state)
    }

    /// Health of `node`, if known.
    pub fn health_of(&self, node: &str) -> Option<&NodeHealth> {
        self.members.get(node).and_then(|m| m.health.as_ref())
    }

    /// Names of members marked rejoining: the election ranks them after the others.
    pub fn rejoining_nodes(&self) -> BTreeSet<String> {
        self.members
            .iter()
            .filter(|(_, m)| m.rejoining)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// Membership settings. The speaker's flags set the addresses (`--peer-port`,
/// `--advertise-address`) and the failure-detection timings (`--probe-interval`,
/// `--watch-probe-interval`, `--probe-timeout`, `--suspicion-timeout`, `--rejoin-hold`); the
/// other fields keep their defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct MembershipConfig {
    /// Address the gRPC server listens on, and the UDP socket for probes is bound to (the
    /// speaker binds its advertise address and `--peer-port`; `Default`: `0.0.0.0:7946`). A
    /// specific address makes probe replies leave from the address peers sent to; with a
    /// wildcard they leave from the one the route picks, which peers drop if it differs.
    pub listen: SocketAddr,
    /// Address other speakers reach this one at, as gossiped; `None`: the bound address.
    /// Peers listed by the API are always dialled at the API's address, so a wildcard here
    /// only matters for speakers the API does not list.
    pub advertise_address: Option<SocketAddr>,
    /// Interval of the slow round-robin probe: one probe per interval in total, across all
    /// members not watched closely, dead ones included (`--probe-interval`, 1 s).
    pub probe_interval: Duration,
    /// Interval between probes of each closely watched member (`--watch-probe-interval`,
    /// 40 ms).
    pub watch_probe_interval: Duration,
    /// Time to wait for an Ack before suspecting (`--probe-timeout`, 50 ms).
    pub probe_timeout: Duration,
    /// Time from suspicion to death unless the suspect shows a sign of life
    /// (`--suspicion-timeout`, 70 ms).
    pub suspicion_timeout: Duration,
    /// Interval of direct re-probes of a suspect (50 ms).
    pub suspicion_probe_interval: Duration,
    /// Members asked to probe a suspect on our behalf, per round (3).
    pub indirect_probes: usize,
    /// Interval of the full-state exchange with one random member (30 s).
    pub sync_interval: Duration,
    /// Gossiped state changes per message, besides the sender's own (8).
    pub gossip_per_message: usize,
    /// Each change is retransmitted `mult × ⌈log2(members+1)⌉` times
    /// (3).
    pub gossip_retransmit_mult: u32,
    /// A peer whose clock differs from ours by more is counted and logged, nothing else (1 s).
    pub clock_skew_warning: Duration,
    /// Bound on a graceful leave (500 ms).
    pub leave_timeout: Duration,
    /// Peers asked for a full state exchange at start (3).
    pub initial_sync_peers: usize,
    /// Least time between two ticks of the runtime (5 ms): it ticks at the core's next
    /// deadline ([`Core::next_deadline`](state::Core::next_deadline)), at most this often.
    pub tick: Duration,
    /// Silence from every peer asked for its state at start for this long lets the view
    /// settle alone (10 s); before that the speaker keeps asking and announces nothing.
    pub settle_alone_after: Duration,
    /// How long a node back from a minority partition ranks after the others
    /// (`--rejoin-hold`, 3 s; 0 turns it off).
    pub rejoin_hold: Duration,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, herald_config::deploy::SPEAKER_PEER_PORT)),
            advertise_address: None,
            probe_interval: Duration::from_secs(1),
            watch_probe_interval: Duration::from_millis(40),
            probe_timeout: Duration::from_millis(50),
            suspicion_timeout: Duration::from_millis(70),
            suspicion_probe_interval: Duration::from_millis(50),
            indirect_probes: 3,
            sync_interval: Duration::from_secs(30),
            gossip_per_message: 8,
            gossip_retransmit_mult: 3,
            clock_skew_warning: Duration::from_secs(1),
            leave_timeout: Duration::from_millis(500),
            initial_sync_peers: 3,
            tick: Duration::from_millis(5),
            rejoin_hold: Duration::from_secs(3),
            settle_alone_after: Duration::from_secs(10),
        }
    }
}
