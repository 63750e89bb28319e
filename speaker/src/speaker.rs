//! The speaker's decisions, one step at a time, without I/O: from what the cluster's objects,
//! the membership view and this node's health show, what to announce, whom to probe, what to
//! program into the dataplane and what to report. [`crate::run`] feeds [`Speaker::step`] and
//! carries out its [`Actions`]; tests call it directly.
//!
//! A step is cheap when nothing changed: only a quiet tick (no watched object, view or
//! interface changed since the last pass) may skip the pass, and only when the last pass was
//! complete, this node's health is the same, and the last pass is recent ([`FULL_PASS_EVERY`]).
//! A pass itself is incremental: a pass woken by watch events derives again only the Services
//! they name ([`FactsCache`]), and only the units whose Services changed are judged and
//! elected again ([`Planner`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_config::{IPAddressPool, L2Advertisement};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;

use crate::cluster::facts::{self, Changes, FactsCache};
use crate::cluster::in_use::ConfigMemory;
use crate::election::Ownership;
use crate::membership::{MembershipView, NodeHealth};
use crate::plan::{Inputs, OwnerChange, Plan, Planner, owner_changes};

/// How often an idle speaker passes anyway: a safety net, since every input that can change
/// the plan also wakes it. A full pass reads every object (0.1–0.17 s of CPU at 10,000
/// Services; the loop's passes were a fifth of an idle speaker's CPU samples at that size
/// when this came once a minute), so it is rare: every five minutes, the resync period
/// Kubernetes controllers commonly use.
pub const FULL_PASS_EVERY: Duration = Duration::from_secs(300);

/// The watched objects as the speaker's caches hold them ([`crate::cluster::Cluster`]), and
/// what changed since a pass last looked.
pub trait ClusterState {
    /// Every watch has had its first full list.
    fn synced(&self) -> bool;
    fn nodes(&self) -> Vec<Arc<Node>>;
    fn pools(&self) -> Vec<Arc<IPAddressPool>>;
    fn advertisements(&self) -> Vec<Arc<L2Advertisement>>;
    /// The speaker Pods (`--speaker-selector`).
    fn speaker_pods(&self) -> Vec<Arc<Pod>>;
    fn services(&self) -> Vec<Arc<Service>>;
    fn endpoint_slices(&self) -> Vec<Arc<EndpointSlice>>;
    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>>;
    fn endpoint_slice(&self, namespace: &str, name: &str) -> Option<Arc<EndpointSlice>>;
    /// The Services and EndpointSlices changed since the last call (everything, the first time
    /// and after a watch relisted).
    fn take_changes(&self) -> Changes;
    /// When the oldest change since the last call arrived, if any.
    fn take_pending(&self) -> Option<Instant>;
}

/// What the speaker is, for its whole life.
#[derive(Clone, Debug)]
pub struct SpeakerConfig {
    /// This node's name.
    pub node: String,
    /// Every speaker's gRPC port.
    pub peer_port: u16,
    /// The `spec.loadBalancerClass` handled besides Services with no class.
    pub lb_class: String,
    /// This speaker forwards with the eBPF dataplane, so owners must have theirs running.
    pub require_dataplane: bool,
    /// Where peers reach this speaker: the dataplane's node address when the Node lists none.
    pub advertise: IpAddr,
}

/// What a step sees besides the cluster's objects.
#[derive(Clone, Debug)]
pub struct Observation<'a> {
    /// Something woke the loop (a watched object, the view, the interfaces), not its timer.
    pub woken_by_input: bool,
    pub view: &'a MembershipView,
    /// This node's health as peers hear it.
    pub health: &'a NodeHealth,
    /// The node-wide interfaces the announcer uses.
    pub usable_interfaces: &'a [String],
    pub now: Instant,
    /// The wall clock, for the time an object's last valid spec is kept from.
    pub wall: Timestamp,
}

/// What one pass decided; [`crate::run`] carries it out in this order.
#[derive(Debug)]
pub struct Actions {
    /// The whole plan. When `announce` is set, the speaker keeps `ownership` (to tell the next
    /// pass's owner changes) and it is empty here.
    pub plan: Plan,
    /// When the oldest change this pass applies arrived (for the change-latency metric).
    pub pending_since: Option<Instant>,
    /// The dataplane's node inputs, once the caches synced and the view settled (before, the
    /// pinned maps keep what the previous speaker programmed).
    pub dataplane: Option<DataplaneInputs>,
    /// Membership is given the peers and the nodes to watch closely (`plan.peers`,
    /// `plan.watch_closely`) once the Node cache synced: an empty list before would make it
    /// settle alone and elect itself everywhere.
    pub set_peers: bool,
    /// Announce `plan.owned` and report `plan.announced`, once the caches synced and the view
    /// settled: before, this node does not know who else is alive.
    pub announce: Option<Announce>,
    /// The speaker selector finds no speaker on this node (every Node is taken for a peer);
    /// said once.
    pub selector_finds_no_speaker: bool,
}

/// The dataplane's node-wide inputs for one pass (its Services are `plan.services`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneInputs {
    /// Interfaces the programs attach to: the node-wide ones and any an advertisement names.
    pub interfaces: Vec<String>,
    /// This node's addresses (from its Node object, else the advertise address).
    pub addresses: Vec<IpAddr>,
}

/// What changed in who announces what.
#[derive(Debug, Default)]
pub struct Announce {
    /// IPs whose owner changed since the last announcing pass.
    pub owner_changes: Vec<OwnerChange>,
    /// Peers had declared this node dead (it refuted it since the last pass) and may have
    /// taken its IPs: announce them again.
    pub announce_again: bool,
}

/// The last time the speaker passed.
#[derive(Clone, Debug)]
struct LastPass {
    at: Instant,
    /// This node's health as the pass saw it.
    health: NodeHealth,
    /// Caches synced, view settled and dataplane healthy: nothing was waiting to be retried.
    complete: bool,
}

/// The speaker's memory between steps.
#[derive(Debug)]
pub struct Speaker {
    config: SpeakerConfig,
    config_memory: ConfigMemory,
    facts: FactsCache,
    planner: Planner,
    /// Owners as the last announcing pass saw them.
    ownership: BTreeMap<IpAddr, Ownership>,
    last_pass: Option<LastPass>,
    presumed_dead_seen: u64,
    warned_speaker_selector: bool,
}

impl Speaker {
    pub fn new(config: SpeakerConfig) -> Speaker {
        Speaker {
            config,
            config_memory: ConfigMemory::new(),
            facts: FactsCache::new(),
            planner: Planner::default(),
            ownership: BTreeMap::new(),
            last_pass: None,
            presumed_dead_seen: 0,
            warned_speaker_selector: false,
        }
    }

    /// Whether this step must pass (derive, plan, act).
    fn pass_needed(&self, seen: &Observation<'_>) -> bool {
        let Some(last) = &self.last_pass else { return true };
        seen.woken_by_input
            || !last.complete
            || last.health != *seen.health
            || seen.now.saturating_duration_since(last.at) >= FULL_PASS_EVERY
    }

    /// One step: `None` when nothing can have changed since the last pass.
    pub fn step(&mut self, cluster: &impl ClusterState, seen: &Observation<'_>) -> Option<Actions> {
        if !self.pass_needed(seen) {
            return None;
        }
        let pending_since = cluster.take_pending();
        let synced = cluster.synced();
        let node = self.config.node.as_str();
        let nodes = cluster.nodes();
        let pools = cluster.pools();
        let advertisements = cluster.advertisements();
        let in_use = self.config_memory.judge(
            pools.iter().map(|p| &**p),
            advertisements.iter().map(|a| &**a),
            seen.wall,
        );
        // Passes woken by watch events derive only what the events name; the timer's passes
        // (the safety net, retries) and relists read everything.
        let changes = cluster.take_changes();
        let derived = if changes.everything || !seen.woken_by_input {
            self.facts.derive_all(
                &cluster.services().iter().map(|s| &**s).collect::<Vec<_>>(),
                &cluster.endpoint_slices().iter().map(|s| &**s).collect::<Vec<_>>(),
                &self.config.lb_class,
            )
        } else {
            self.facts.derive_changed(
                &changes,
                |namespace, name| cluster.service(namespace, name),
                |namespace, name| cluster.endpoint_slice(namespace, name),
                &self.config.lb_class,
            )
        };
        let speakers = facts::speaker_nodes(cluster.speaker_pods().iter().map(|p| &**p));
        // A selector that does not find this very speaker is wrong: talk to every node rather
        // than to nobody (alone, this node would announce everything).
        let speakers_found = speakers.contains(node);
        let selector_finds_no_speaker = !speakers_found && synced && !self.warned_speaker_selector;
        self.warned_speaker_selector |= selector_finds_no_speaker;
        let mut plan = self.planner.plan(&Inputs {
            node,
            peer_port: self.config.peer_port,
            nodes: &nodes.iter().map(|n| &**n).collect::<Vec<_>>(),
            speaker_nodes: speakers_found.then_some(&speakers),
            services: &derived,
            pools: &in_use.pools,
            advertisements: &in_use.advertisements,
            view: seen.view,
            local_health: seen.health,
            require_dataplane: self.config.require_dataplane,
        });
        let ready = synced && seen.view.settled;
        let dataplane = ready.then(|| DataplaneInputs {
            interfaces: dataplane_interfaces(seen.usable_interfaces, &plan),
            addresses: nodes
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(node))
                .map(|n| facts::node_addresses(n))
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| vec![self.config.advertise]),
        });
        let announce = ready.then(|| {
            let announce = Announce {
                owner_changes: owner_changes(&self.ownership, &plan),
                announce_again: seen.view.presumed_dead > self.presumed_dead_seen && !plan.owned.is_empty(),
            };
            self.presumed_dead_seen = self.presumed_dead_seen.max(seen.view.presumed_dead);
            self.ownership = std::mem::take(&mut plan.ownership);
            announce
        });
        self.last_pass = Some(LastPass {
            at: seen.now,
            health: seen.health.clone(),
            complete: ready && seen.health.dataplane_ready,
        });
        Some(Actions {
            plan,
            pending_since,
            dataplane,
            set_peers: synced,
            announce,
            selector_finds_no_speaker,
        })
    }
}

/// Where the dataplane's programs attach: the node-wide interfaces, and any other interface
/// an advertisement has this node announce on (its IPs' traffic arrives there).
fn dataplane_interfaces(usable: &[String], plan: &Plan) -> Vec<String> {
    let named = plan
        .owned
        .values()
        .flat_map(|target| target.interfaces.iter().flatten());
    let all: BTreeSet<&String> = usable.iter().chain(named).collect();
    all.into_iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use k8s_openapi::api::core::v1::Node;

    use super::*;
    use crate::membership::MemberState;
    use crate::membership::sim::healthy;
    use crate::plan::tests::{node, pool, service, slice, view};

    /// The caches as a test sets them; changes are noted by [`World::touch`].
    struct World {
        synced: bool,
        nodes: Vec<Arc<Node>>,
        services: Vec<Arc<Service>>,
        slices: Vec<Arc<EndpointSlice>>,
        pools: Vec<Arc<IPAddressPool>>,
        advertisements: Vec<Arc<L2Advertisement>>,
        changes: RefCell<Changes>,
        pending: RefCell<Option<Instant>>,
    }

    impl World {
        fn new() -> World {
            World {
                synced: true,
                nodes: ["n1", "n2", "n3"]
                    .iter()
                    .enumerate()
                    .map(|(i, n)| Arc::new(node(n, &format!("10.203.0.{}", 11 + i))))
                    .collect(),
                services: (1..=8)
                    .map(|i| Arc::new(service(&format!("s{i}"), &format!("10.80.0.{i}"), "Cluster")))
                    .collect(),
                slices: (1..=8)
                    .map(|i| Arc::new(slice(&format!("s{i}"), &["n1", "n2", "n3"])))
                    .collect(),
                pools: vec![Arc::new(pool())],
                advertisements: vec![Arc::new(L2Advertisement::new("all", Default::default()))],
                changes: RefCell::new(Changes::default()),
                pending: RefCell::new(None),
            }
        }

        /// Service `name` changed (its object is already replaced in `services`).
        fn touch(&self, name: &str, at: Instant) {
            self.changes
                .borrow_mut()
                .services
                .insert(("default".to_string(), name.to_string()));
            self.pending.borrow_mut().get_or_insert(at);
        }
    }

    impl ClusterState for World {
        fn synced(&self) -> bool {
            self.synced
        }
        fn nodes(&self) -> Vec<Arc<Node>> {
            self.nodes.clone()
        }
        fn pools(&self) -> Vec<Arc<IPAddressPool>> {
            self.pools.clone()
        }
        fn advertisements(&self) -> Vec<Arc<L2Advertisement>> {
            self.advertisements.clone()
        }
        fn speaker_pods(&self) -> Vec<Arc<Pod>> {
            Vec::new()
        }
        fn services(&self) -> Vec<Arc<Service>> {
            self.services.clone()
        }
        fn endpoint_slices(&self) -> Vec<Arc<EndpointSlice>> {
            self.slices.clone()
        }
        fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
            let found = |s: &&Arc<Service>| {
                s.metadata.namespace.as_deref() == Some(namespace) && s.metadata.name.as_deref() == Some(name)
            };
            self.services.iter().find(found).cloned()
        }
        fn endpoint_slice(&self, namespace: &str, name: &str) -> Option<Arc<EndpointSlice>> {
            let found = |s: &&Arc<EndpointSlice>| {
                s.metadata.namespace.as_deref() == Some(namespace) && s.metadata.name.as_deref() == Some(name)
            };
            self.slices.iter().find(found).cloned()
        }
        fn take_changes(&self) -> Changes {
            std::mem::replace(&mut self.changes.borrow_mut(), Changes::none())
        }
        fn take_pending(&self) -> Option<Instant> {
            self.pending.borrow_mut().take()
        }
    }

    fn speaker(node: &str) -> Speaker {
        Speaker::new(SpeakerConfig {
            node: node.to_string(),
            peer_port: 7946,
            lb_class: herald_config::DEFAULT_LB_CLASS.to_string(),
            require_dataplane: false,
            advertise: "10.203.0.11".parse().unwrap(),
        })
    }

    fn all_alive(local: &str) -> MembershipView {
        MembershipView {
            local: local.to_string(),
            ..view(&[
                ("n1", MemberState::Alive),
                ("n2", MemberState::Alive),
                ("n3", MemberState::Alive),
            ])
        }
    }

    fn observe<'a>(view: &'a MembershipView, health: &'a NodeHealth, woken: bool, now: Instant) -> Observation<'a> {
        const INTERFACES: &[String] = &[];
        Observation {
            woken_by_input: woken,
            view,
            health,
            usable_interfaces: INTERFACES,
            now,
            wall: Timestamp::from_second(1_000).unwrap(),
        }
    }

    #[test]
    fn every_ip_is_announced_by_exactly_one_of_the_speakers_stepping_on_the_same_world() {
        let world = World::new();
        let health = healthy();
        let now = Instant::now();
        let mut owners: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
        for me in ["n1", "n2", "n3"] {
            *world.changes.borrow_mut() = Changes::default();
            let view = all_alive(me);
            let actions = speaker(me)
                .step(&world, &observe(&view, &health, true, now))
                .expect("a first pass");
            assert!(actions.set_peers && actions.dataplane.is_some());
            let announce = actions.announce.expect("synced and settled: announce");
            assert!(!announce.announce_again);
            assert_eq!(
                announce
                    .owner_changes
                    .iter()
                    .filter(|c| c.to.as_deref() == Some(me))
                    .count(),
                actions.plan.owned.len(),
                "each IP {me} takes is a change from nobody"
            );
            for ip in actions.plan.owned.keys() {
                owners.entry(*ip).or_default().push(me.to_string());
            }
        }
        assert_eq!(owners.len(), 8, "{owners:?}");
        assert!(owners.values().all(|o| o.len() == 1), "{owners:?}");
    }

    #[test]
    fn nothing_is_announced_or_programmed_before_the_caches_sync_and_the_view_settles() {
        let mut world = World::new();
        let health = healthy();
        let now = Instant::now();
        let unsettled = MembershipView {
            settled: false,
            ..all_alive("n1")
        };
        let mut n1 = speaker("n1");
        let actions = n1.step(&world, &observe(&unsettled, &health, true, now)).unwrap();
        assert!(actions.set_peers, "membership needs the peers to settle");
        assert!(actions.announce.is_none() && actions.dataplane.is_none());

        world.synced = false;
        let settled = all_alive("n1");
        let actions = n1.step(&world, &observe(&settled, &health, true, now)).unwrap();
        assert!(
            !actions.set_peers,
            "an unsynced Node cache would make membership settle alone"
        );
        assert!(actions.announce.is_none() && actions.dataplane.is_none());
    }

    #[test]
    fn only_a_quiet_tick_after_a_complete_pass_with_the_same_health_skips_the_pass() {
        let world = World::new();
        let health = healthy();
        let view = all_alive("n1");
        let t0 = Instant::now();
        let soon = t0 + Duration::from_secs(1);
        let mut n1 = speaker("n1");
        assert!(
            n1.step(&world, &observe(&view, &health, false, t0)).is_some(),
            "the first pass"
        );
        assert!(
            n1.step(&world, &observe(&view, &health, false, soon)).is_none(),
            "a quiet tick"
        );
        assert!(
            n1.step(&world, &observe(&view, &health, true, soon)).is_some(),
            "an input changed"
        );
        let degraded = NodeHealth {
            dataplane_ready: false,
            ..healthy()
        };
        assert!(
            n1.step(&world, &observe(&view, &degraded, false, soon)).is_some(),
            "health changed"
        );
        assert!(
            n1.step(&world, &observe(&view, &degraded, false, soon)).is_some(),
            "an unhealthy dataplane waits to be retried"
        );
        let later = soon + FULL_PASS_EVERY - Duration::from_millis(1);
        assert!(
            n1.step(&world, &observe(&view, &health, false, soon)).is_some(),
            "recovered"
        );
        assert!(
            n1.step(&world, &observe(&view, &health, false, later)).is_none(),
            "before the safety net"
        );
        assert!(
            n1.step(&world, &observe(&view, &health, false, soon + FULL_PASS_EVERY))
                .is_some(),
            "the safety net"
        );
    }

    #[test]
    fn a_changed_service_is_applied_from_its_own_change_and_owners_move_off_a_dead_node() {
        let mut world = World::new();
        let health = healthy();
        let now = Instant::now();
        let mut n1 = speaker("n1");
        let everyone = all_alive("n1");
        n1.step(&world, &observe(&everyone, &health, true, now)).unwrap();

        // s1 moves to an address that no Service had: whoever owns it, its change says so.
        world.services[0] = Arc::new(service("s1", "10.80.0.100", "Cluster"));
        let changed_at = now + Duration::from_millis(5);
        world.touch("s1", changed_at);
        let actions = n1.step(&world, &observe(&everyone, &health, true, now)).unwrap();
        assert_eq!(actions.pending_since, Some(changed_at));
        let changes = &actions.announce.as_ref().unwrap().owner_changes;
        let new_ip: IpAddr = "10.80.0.100".parse().unwrap();
        let old_ip: IpAddr = "10.80.0.1".parse().unwrap();
        assert!(
            changes.iter().any(|c| c.ip == new_ip && c.from.is_none()),
            "{changes:?}"
        );
        assert!(changes.iter().any(|c| c.ip == old_ip && c.to.is_none()), "{changes:?}");
        assert_eq!(changes.len(), 2, "nothing else moved: {changes:?}");
        let owned_before = actions.plan.owned.len();

        // n2 and n3 die: n1 takes every IP, each a change from its old owner.
        let alone = MembershipView {
            local: "n1".into(),
            ..view(&[
                ("n1", MemberState::Alive),
                ("n2", MemberState::Dead),
                ("n3", MemberState::Dead),
            ])
        };
        let actions = n1.step(&world, &observe(&alone, &health, true, now)).unwrap();
        assert_eq!(actions.plan.owned.len(), 8);
        let taken = &actions.announce.as_ref().unwrap().owner_changes;
        assert_eq!(taken.len(), 8 - owned_before, "{taken:?}");
        assert!(
            taken.iter().all(|c| c.to.as_deref() == Some("n1") && c.from.is_some()),
            "{taken:?}"
        );
    }

    #[test]
    fn a_refuted_death_has_the_owned_ips_announced_again_once() {
        let world = World::new();
        let health = healthy();
        let now = Instant::now();
        let mut n1 = speaker("n1");
        let alone = MembershipView {
            local: "n1".into(),
            ..view(&[("n1", MemberState::Alive)])
        };
        let first = n1.step(&world, &observe(&alone, &health, true, now)).unwrap();
        assert!(!first.announce.unwrap().announce_again);
        let refuted = MembershipView {
            presumed_dead: 1,
            ..alone.clone()
        };
        let again = n1.step(&world, &observe(&refuted, &health, true, now)).unwrap();
        assert!(again.announce.unwrap().announce_again);
        let after = n1.step(&world, &observe(&refuted, &health, true, now)).unwrap();
        assert!(!after.announce.unwrap().announce_again, "once per refutation");
    }
}
