//! Prometheus metrics of membership (names below are without the registry's prefix).
//!
//! - `membership_members{state}`: members by state, the local node included;
//! - `membership_messages_sent_total{rpc}` / `membership_messages_received_total{rpc}`:
//!   requests and replies, by RPC;
//! - `membership_rejected_messages_total{reason}`: received messages dropped by
//!   authentication (`bad_mac`, `malformed`, `from_self`, `wrong_receiver`, `replay`);
//! - `membership_clock_skewed_messages_total`: accepted messages whose sender's clock differed
//!   from ours by more than [`MembershipConfig::clock_skew_warning`](super::MembershipConfig)
//!   (counted, never rejected);
//! - `membership_keys`: keys each message is signed with (2 while a rotation is under way);
//! - `membership_transport_errors_total{rpc}`: calls that failed or timed out;
//! - `membership_calls_total{transport}`: calls made as UDP datagrams (`udp`) and over gRPC
//!   (`grpc`): probes go over gRPC only to peers whose UDP went unanswered;
//! - `membership_suspicions_total`: suspicions started by this node's failed probes;
//! - `membership_confirmed_deaths_total`: members this node declared dead;
//! - `membership_refused_deaths_total`: of those, members whose host refused connections to
//!   the speaker (a dead process), to this node and to a helper;
//! - `membership_refutations_total`: claims about this node it refuted;
//! - `membership_stalls_total`: times this speaker could not run for longer than peers take to
//!   declare a node dead (each makes it announce its IPs again);
//! - `membership_doubted_deaths_total`: members that died in this node's view while it had no
//!   usable interface, suspected again and probed when one came back;
//! - `membership_state_changes_total{to}`: member state changes seen, by new state.
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::auth::Rejection;
use super::state::{CoreStats, MemberEvent, Rpc};
use super::{MemberState, MembershipView};

type Labels = [(&'static str, &'static str); 1];

/// Handles on every membership metric; clones share the same series.
#[derive(Clone, Debug, Default)]
pub struct MembershipMetrics {
    members: Family<Labels, Gauge>,
    sent: Family<Labels, Counter>,
    received: Family<Labels, Counter>,
    rejected: Family<Labels, Counter>,
    transport_errors: Family<Labels, Counter>,
    calls: Family<Labels, Counter>,
    suspicions: Counter,
    confirmed_deaths: Counter,
    refused_deaths: Counter,
    refutations: Counter,
    stalls: Counter,
    doubted_deaths: Counter,
    state_changes: Family<Labels, Counter>,
    clock_skewed: Counter,
    keys: Gauge,
}

impl MembershipMetrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        for reason in Rejection::ALL {
            // Every reason's series exists from the start, at 0.
            drop(self.rejected.get_or_create(&[("reason", reason.as_str())]));
        }
        registry.register(
            "membership_members",
            "Members by state, the local node included",
            self.members.clone(),
        );
        registry.register(
            "membership_messages_sent",
            "Membership requests and replies sent, by RPC",
            self.sent.clone(),
        );
        registry.register(
            "membership_messages_received",
            "Authenticated membership requests and replies received, by RPC",
            self.received.clone(),
        );
        registry.register(
            "membership_rejected_messages",
            "Received membership messages dropped by authentication, by reason",
            self.rejected.clone(),
        );
        for transport in ["udp", "grpc"] {
            drop(self.calls.get_or_create(&[("transport", transport)]));
        }
        registry.register(
            "membership_calls",
            "Membership calls made, by transport (udp: probes as datagrams; grpc: Sync, and probes to peers whose UDP went unanswered)",
            self.calls.clone(),
        );
        registry.register(
            "membership_transport_errors",
            "Membership calls that failed or timed out, by RPC",
            self.transport_errors.clone(),
        );
        registry.register(
            "membership_suspicions",
            "Suspicions started by this node's failed probes",
            self.suspicions.clone(),
        );
        registry.register(
            "membership_confirmed_deaths",
            "Members this node declared dead",
            self.confirmed_deaths.clone(),
        );
        registry.register(
            "membership_refused_deaths",
            "Members this node declared dead because their host refused connections to the speaker, to this node and to a helper",
            self.refused_deaths.clone(),
        );
        registry.register(
            "membership_refutations",
            "Suspicion or death claims about this node that it refuted",
            self.refutations.clone(),
        );
        registry.register(
            "membership_stalls",
            "Times this speaker could not run (frozen, a paused VM, starved) for longer than peers take to declare a node dead; each makes it announce its IPs again",
            self.stalls.clone(),
        );
        registry.register(
            "membership_doubted_deaths",
            "Members that died in this node's view while it had no usable interface (its own cable pulled, say), suspected again and probed when one came back",
            self.doubted_deaths.clone(),
        );
        registry.register(
            "membership_state_changes",
            "Member state changes seen by this node, by new state",
            self.state_changes.clone(),
        );
        registry.register(
            "membership_clock_skewed_messages",
            "Accepted messages whose sender's clock differed from ours by more than the warning threshold",
            self.clock_skewed.clone(),
        );
        registry.register(
            "membership_keys",
            "Keys each message is signed with (2 while a key rotation is under way)",
            self.keys.clone(),
        );
    }

    pub(crate) fn skewed_message(&self) {
        self.clock_skewed.inc();
    }

    pub(crate) fn keys(&self, count: usize) {
        self.keys.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub(crate) fn sent(&self, rpc: Rpc) {
        self.sent.get_or_create(&[("rpc", rpc.as_str())]).inc();
    }

    pub(crate) fn received(&self, rpc: Rpc) {
        self.received.get_or_create(&[("rpc", rpc.as_str())]).inc();
    }

    pub(crate) fn rejected(&self, reason: Rejection) {
        self.rejected.get_or_create(&[("reason", reason.as_str())]).inc();
    }

    /// A call went out over `transport` (`udp` or `grpc`).
    pub(crate) fn call_over(&self, transport: &'static str) {
        self.calls.get_or_create(&[("transport", transport)]).inc();
    }

    pub(crate) fn transport_error(&self, rpc: Rpc) {
        self.transport_errors.get_or_create(&[("rpc", rpc.as_str())]).inc();
    }

    pub(crate) fn events(&self, events: &[MemberEvent]) {
        for event in events {
            self.state_changes.get_or_create(&[("to", event.to.as_str())]).inc();
        }
    }

    /// Adds what the core counted since `before`.
    pub(crate) fn stats(&self, before: CoreStats, after: CoreStats) {
        self.suspicions
            .inc_by(after.suspicions.saturating_sub(before.suspicions));
        self.confirmed_deaths
            .inc_by(after.confirmed_dead.saturating_sub(before.confirmed_dead));
        self.refused_deaths
            .inc_by(after.refused_deaths.saturating_sub(before.refused_deaths));
        self.refutations
            .inc_by(after.refutations.saturating_sub(before.refutations));
        self.stalls.inc_by(after.stalls.saturating_sub(before.stalls));
        self.doubted_deaths
            .inc_by(after.doubted_deaths.saturating_sub(before.doubted_deaths));
    }

    pub(crate) fn view(&self, view: &MembershipView) {
        for state in [
            MemberState::Alive,
            MemberState::Suspect,
            MemberState::Dead,
            MemberState::Left,
        ] {
            let count = view.members.values().filter(|m| m.state == state).count();
            self.members
                .get_or_create(&[("state", state.as_str())])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// Value of `membership_clock_skewed_messages_total` (for tests).
    pub fn clock_skewed_count(&self) -> u64 {
        self.clock_skewed.get()
    }

    /// Value of `membership_rejected_messages_total{reason}` (for tests).
    pub fn rejected_count(&self, reason: Rejection) -> u64 {
        self.rejected.get_or_create(&[("reason", reason.as_str())]).get()
    }

    /// Value of `membership_messages_sent_total{rpc}` (for tests and benchmarks).
    pub fn sent_count(&self, rpc: Rpc) -> u64 {
        self.sent.get_or_create(&[("rpc", rpc.as_str())]).get()
    }

    /// Value of `membership_calls_total{transport}` (`udp` or `grpc`; for tests and
    /// benchmarks).
    pub fn calls_over_count(&self, transport: &'static str) -> u64 {
        self.calls.get_or_create(&[("transport", transport)]).get()
    }
}
