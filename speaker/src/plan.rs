//! One pass of the speaker's loop as a pure function: from the cluster's objects, the
//! membership view and this node's own state to what this node must do — peers to talk to,
//! health to gossip, IPs to announce (and where), members to watch closely, and the
//! `ServiceL2Status` objects to show.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use herald_config::L2AdvertisementSpec;
use herald_config::last_valid::PoolInUse;
use k8s_openapi::api::core::v1::Node;

use crate::announcer::AnnounceTarget;
use crate::cluster::facts::{self, ServiceDerived};
use crate::election::eligibility::{
    EligibilityOptions, Ineligible, NodeFacts, UnitEligibility, UnitFacts, unit_eligibility,
};
use crate::election::{Ownership, elect, watch_targets};
use crate::membership::{MemberState, MembershipView, NodeHealth, Peer};
use crate::status::PlannedServices;

/// Everything one pass reads.
pub struct Inputs<'a> {
    pub node: &'a str,
    pub peer_port: u16,
    pub nodes: &'a [&'a Node],
    /// The nodes that run a speaker ([`facts::speaker_nodes`]): the only peers. `None`: every
    /// node is a peer.
    pub speaker_nodes: Option<&'a BTreeSet<String>>,
    /// Every Service Herald handles, derived ([`facts::FactsCache`]).
    pub services: &'a [Arc<ServiceDerived>],
    /// Pools and advertisements in use ([`crate::cluster::in_use`]): an object edited into an
    /// invalid spec is here with its last valid spec, one never valid is not.
    pub pools: &'a [PoolInUse],
    pub advertisements: &'a [L2AdvertisementSpec],
    pub view: &'a MembershipView,
    pub local_health: &'a NodeHealth,
    /// This speaker forwards with the eBPF dataplane, so owners must have theirs running.
    pub require_dataplane: bool,
}

/// Everything one pass decides.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Every other speaker's address (nodes that run one).
    pub peers: Vec<Peer>,
    /// Owner (and runner-up) of every unit that has an eligible node.
    pub ownership: BTreeMap<IpAddr, Ownership>,
    /// Per unit, nodes that may not announce it and why (for logs).
    pub ineligible: BTreeMap<IpAddr, Arc<BTreeMap<String, Ineligible>>>,
    /// IPs this node announces, with the interfaces to announce them on.
    pub owned: BTreeMap<IpAddr, AnnounceTarget>,
    /// Owners this node would take over from: probe them closely.
    pub watch_closely: BTreeSet<String>,
    /// Services this node announces and their IPs, for `ServiceL2Status` and Events (with the
    /// links the announcer really answers on, see [`crate::status::really_announced`]).
    pub announced: PlannedServices,
    /// Services as the dataplane forwards them.
    pub services: Vec<Arc<crate::dataplane::ServiceInput>>,
    /// Other nodes whose dataplane takes tunnelled (DSR) traffic: members not known to run
    /// announce-only, with their Node addresses. A member declared dead or gone stays one: its
    /// pinned programs keep decapsulating after its speaker stops, so the flows tunnelled there
    /// keep their path (and their backend) whether the node is gone or only its speaker.
    pub tunnel_peers: BTreeMap<String, Vec<IpAddr>>,
    /// Nodes whose speaker this node's membership declared dead by silence (the node is
    /// probably gone, not only its speaker): the dataplane sends them no new flows
    /// ([`crate::dataplane::desired`]).
    pub dead_nodes: BTreeSet<String>,
}

/// One pass with nothing remembered: [`Planner::plan`] on a new planner.
pub fn plan(inputs: &Inputs<'_>) -> Plan {
    Planner::default().plan(inputs)
}

/// Computes plans, remembering each unit's eligibility and election between passes: a unit is
/// judged again only when one of its Services changed (a new [`ServiceDerived`]) or something
/// every unit depends on did (the nodes, their members' state and health, the pools and
/// advertisements in use). So a pass after one Service changed judges one unit, not 10,000.
/// Every plan equals the one [`plan`] computes from the same inputs.
#[derive(Debug, Default)]
pub struct Planner {
    /// What every remembered unit was judged against.
    context: Option<UnitContext>,
    units: HashMap<IpAddr, JudgedUnit>,
}

#[derive(Debug, PartialEq)]
struct UnitContext {
    nodes: Vec<NodeFacts>,
    pools: Vec<PoolInUse>,
    advertisements: Vec<L2AdvertisementSpec>,
    require_dataplane: bool,
}

#[derive(Debug)]
struct JudgedUnit {
    /// The Services sharing the IP when it was judged (compared by identity).
    services: Vec<Arc<ServiceDerived>>,
    /// `None` when no pool in use lists the IP.
    judged: Option<Judged>,
}

#[derive(Debug)]
struct Judged {
    eligible: BTreeMap<String, BTreeSet<String>>,
    ineligible: Arc<BTreeMap<String, Ineligible>>,
    ownership: Option<Ownership>,
    /// `(namespace, name)` of the unit's Services.
    services: Vec<(String, String)>,
}

fn same_services(a: &[Arc<ServiceDerived>], b: &[&Arc<ServiceDerived>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
}

impl Planner {
    pub fn plan(&mut self, inputs: &Inputs<'_>) -> Plan {
        let peers = inputs
            .nodes
            .iter()
            .filter(|n| n.metadata.name.as_deref() != Some(inputs.node))
            .filter(|n| {
                let name = n.metadata.name.as_deref().unwrap_or_default();
                inputs.speaker_nodes.is_none_or(|speakers| speakers.contains(name))
            })
            .filter_map(|n| {
                let address = facts::node_address(n)?;
                Some(Peer {
                    node: n.metadata.name.clone()?,
                    address: SocketAddr::new(address, inputs.peer_port),
                })
            })
            .collect();

        let node_facts: Vec<_> = inputs
            .nodes
            .iter()
            .map(|n| {
                let name = n.metadata.name.as_deref().unwrap_or_default();
                let member = inputs.view.members.get(name).map(|m| {
                    let mut m = m.clone();
                    // Our own health is fresher than what we last gossiped.
                    if name == inputs.node {
                        m.health = Some(inputs.local_health.clone());
                    }
                    m
                });
                facts::node_facts(n, member.as_ref())
            })
            .collect();
        let context = UnitContext {
            nodes: node_facts,
            pools: inputs.pools.to_vec(),
            advertisements: inputs.advertisements.to_vec(),
            require_dataplane: inputs.require_dataplane,
        };
        if self.context.as_ref() != Some(&context) {
            self.units.clear();
            self.context = Some(context);
        }
        let context = self.context.as_ref().expect("set above");

        // Judge the units that are new or whose Services changed; elect them together.
        let by_ip = facts::by_ip(inputs.services);
        let mut fresh: Vec<(UnitFacts, UnitEligibility, &[&Arc<ServiceDerived>])> = Vec::new();
        for (ip, sharing) in &by_ip {
            let ip = *ip;
            if self.units.get(&ip).is_some_and(|u| same_services(&u.services, sharing)) {
                continue;
            }
            match facts::unit(ip, sharing, &context.pools) {
                Some(unit) => {
                    let options = EligibilityOptions {
                        require_dataplane: context.require_dataplane,
                    };
                    let outcome = unit_eligibility(&unit, &context.nodes, &context.advertisements, options);
                    fresh.push((unit, outcome, sharing));
                }
                None => {
                    let services = sharing.iter().map(|s| Arc::clone(s)).collect();
                    self.units.insert(ip, JudgedUnit { services, judged: None });
                }
            }
        }
        let rejoining: BTreeSet<String> = context
            .nodes
            .iter()
            .filter(|n| n.rejoining)
            .map(|n| n.name.clone())
            .collect();
        let mut elected = elect(
            &fresh
                .iter()
                .map(|(u, e, _)| (u.ip, e.eligible.keys().cloned().collect()))
                .collect(),
            &rejoining,
        );
        for (unit, outcome, sharing) in fresh {
            let services = unit
                .services
                .iter()
                .map(|s| {
                    let (namespace, name) = s.name.split_once('/').unwrap_or(("", &s.name));
                    (namespace.to_string(), name.to_string())
                })
                .collect();
            self.units.insert(
                unit.ip,
                JudgedUnit {
                    services: sharing.iter().map(|s| Arc::clone(s)).collect(),
                    judged: Some(Judged {
                        eligible: outcome.eligible,
                        ineligible: Arc::new(outcome.ineligible),
                        ownership: elected.remove(&unit.ip),
                        services,
                    }),
                },
            );
        }
        // Every current IP is remembered now; anything more is an IP no Service has any more.
        if self.units.len() > by_ip.len() {
            let current: HashSet<IpAddr> = by_ip.iter().map(|(ip, _)| *ip).collect();
            self.units.retain(|ip, _| current.contains(ip));
        }

        // Collected in IP order, then built in bulk.
        let mut ownership = Vec::with_capacity(by_ip.len());
        let mut ineligible = Vec::with_capacity(by_ip.len());
        let mut owned = Vec::new();
        let mut announced: PlannedServices = BTreeMap::new();
        for (ip, _) in &by_ip {
            let Some(judged) = self.units.get(ip).and_then(|u| u.judged.as_ref()) else {
                continue;
            };
            ineligible.push((*ip, judged.ineligible.clone()));
            let Some(owner) = &judged.ownership else { continue };
            ownership.push((*ip, owner.clone()));
            if owner.owner != inputs.node {
                continue;
            }
            let interfaces: Vec<String> = judged
                .eligible
                .get(inputs.node)
                .map(|set| set.iter().cloned().collect())
                .unwrap_or_default();
            owned.push((
                *ip,
                AnnounceTarget {
                    interfaces: Some(interfaces),
                },
            ));
            for key in &judged.services {
                announced.entry(key.clone()).or_default().push(*ip);
            }
        }
        let ownership: BTreeMap<IpAddr, Ownership> = ownership.into_iter().collect();
        let tunnel_peers = inputs
            .nodes
            .iter()
            .filter_map(|n| {
                let name = n.metadata.name.as_deref()?;
                let member = inputs.view.members.get(name)?;
                // Every speaker runs the dataplane unless told otherwise, and a peer's health
                // can take a while to be heard after start-up: only a peer known to run
                // without one (announce-only) is reached with SNAT instead.
                let takes_tunnels = name != inputs.node && member.health.as_ref().is_none_or(|h| h.dataplane_ready);
                let addresses = facts::node_addresses(n);
                (takes_tunnels && !addresses.is_empty()).then(|| (name.to_string(), addresses))
            })
            .collect();
        let dead_nodes = inputs
            .view
            .members
            .iter()
            // A dead speaker on a live host (it refused our connections) keeps its pods:
            // draining them would only break their flows when the IPs move.
            .filter(|(name, m)| m.state == MemberState::Dead && !m.host_up && name.as_str() != inputs.node)
            .map(|(name, _)| name.clone())
            .collect();
        Plan {
            tunnel_peers,
            dead_nodes,
            services: inputs.services.iter().filter_map(|s| s.forwarded.clone()).collect(),
            peers,
            watch_closely: watch_targets(inputs.node, &ownership),
            ineligible: ineligible.into_iter().collect(),
            ownership,
            owned: owned.into_iter().collect(),
            announced,
        }
    }
}

/// A change of owner of one IP, with the reason the old owner lost it when it is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerChange {
    pub ip: IpAddr,
    pub from: Option<String>,
    pub to: Option<String>,
    pub reason: String,
}

/// Owner changes between two passes, for logs and metrics.
pub fn owner_changes(before: &BTreeMap<IpAddr, Ownership>, after: &Plan) -> Vec<OwnerChange> {
    // Both maps are sorted: walk them together, allocating only for changes.
    let mut old = before.iter().peekable();
    let mut new = after.ownership.iter().peekable();
    let mut differing: Vec<(IpAddr, Option<&str>, Option<&str>)> = Vec::new();
    loop {
        let (ip, from, to) = match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some((a, _)), Some((b, _))) if a == b => {
                let ((ip, from), (_, to)) = (old.next().expect("peeked"), new.next().expect("peeked"));
                (*ip, Some(from.owner.as_str()), Some(to.owner.as_str()))
            }
            (Some((a, _)), Some((b, _))) if a > b => {
                let (ip, to) = new.next().expect("peeked");
                (*ip, None, Some(to.owner.as_str()))
            }
            (Some(_), _) => {
                let (ip, from) = old.next().expect("peeked");
                (*ip, Some(from.owner.as_str()), None)
            }
            (None, Some(_)) => {
                let (ip, to) = new.next().expect("peeked");
                (*ip, None, Some(to.owner.as_str()))
            }
        };
        if from != to {
            differing.push((ip, from, to));
        }
    }
    differing
        .into_iter()
        .map(|(ip, from, to)| (ip, from.map(str::to_string), to.map(str::to_string)))
        .map(|(ip, from, to)| {
            let reason = match &from {
                None => "new eligible owner".to_string(),
                Some(old) => match after.ineligible.get(&ip).and_then(|m| m.get(old)) {
                    Some(why) => format!("{old} is not eligible: {why}"),
                    None if !after.ineligible.contains_key(&ip) && to.is_none() => {
                        "the IP is no longer announced".into()
                    }
                    None => format!("{} ranks higher", to.clone().unwrap_or_default()),
                },
            };
            OwnerChange { ip, from, to, reason }
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cluster::in_use::ConfigMemory;
    use crate::membership::{MemberInfo, MemberState};
    use herald_config::{IPAddressPool, IPAddressPoolSpec, L2Advertisement};
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;
    use std::cell::RefCell;

    pub(crate) fn node(name: &str, ip: &str) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}))
        .unwrap()
    }

    pub(crate) fn service(name: &str, ip: &str, policy: &str) -> Service {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": policy, "ports": [{"port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}}))
        .unwrap()
    }

    pub(crate) fn slice(service: &str, nodes: &[&str]) -> EndpointSlice {
        let endpoints: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| json!({"addresses": [format!("10.244.0.{}", i + 1)], "nodeName": n, "conditions": {"ready": true}}))
            .collect();
        serde_json::from_value(
            json!({"metadata": {"name": format!("{service}-1"), "namespace": "default",
            "labels": {"kubernetes.io/service-name": service}}, "addressType": "IPv4", "endpoints": endpoints}),
        )
        .unwrap()
    }

    /// Pool `p`: 10.80.0.0/24, auto-assigned.
    pub(crate) fn pool() -> IPAddressPool {
        IPAddressPool::new("p", IPAddressPoolSpec::with_addresses(["10.80.0.0/24"]))
    }

    pub(crate) fn view(states: &[(&str, MemberState)]) -> MembershipView {
        let health = NodeHealth {
            announcer_ready: true,
            dataplane_ready: false,
            interfaces: ["eth0".to_string()].into(),
            ..Default::default()
        };
        MembershipView {
            presumed_dead: 0,
            local: "n1".into(),
            members: states
                .iter()
                .map(|(n, s)| {
                    (
                        n.to_string(),
                        MemberInfo {
                            address: "127.0.0.1:7946".parse().unwrap(),
                            state: *s,
                            incarnation: 1,
                            health: Some(health.clone()),
                            host_up: false,
                            rejoining: false,
                        },
                    )
                })
                .collect(),
            settled: true,
        }
    }

    struct World {
        nodes: Vec<Node>,
        services: Vec<Service>,
        slices: Vec<EndpointSlice>,
        pools: Vec<IPAddressPool>,
        advertisements: Vec<L2Advertisement>,
        /// What the speaker remembers between passes (shared by every node's plan here).
        memory: RefCell<ConfigMemory>,
    }

    impl World {
        fn new(policy: &str, endpoint_nodes: &[&str]) -> World {
            World {
                nodes: vec![
                    node("n1", "10.203.0.11"),
                    node("n2", "10.203.0.12"),
                    node("n3", "10.203.0.13"),
                ],
                services: vec![service("web", "10.80.0.1", policy), service("dns", "10.80.0.1", policy)],
                slices: vec![slice("web", endpoint_nodes), slice("dns", endpoint_nodes)],
                pools: vec![pool()],
                advertisements: vec![L2Advertisement::new("all", Default::default())],
                memory: RefCell::default(),
            }
        }

        fn plan_for(&self, me: &str, view: &MembershipView) -> Plan {
            self.plan_with_speakers(me, view, None)
        }

        fn plan_with_speakers(&self, me: &str, view: &MembershipView, speakers: Option<&BTreeSet<String>>) -> Plan {
            let health = NodeHealth {
                announcer_ready: true,
                dataplane_ready: false,
                interfaces: ["eth0".to_string()].into(),
                ..Default::default()
            };
            let in_use = self.memory.borrow_mut().judge(
                &self.pools,
                &self.advertisements,
                Timestamp::from_second(1_000).unwrap(),
            );
            plan(&Inputs {
                node: me,
                peer_port: 7946,
                nodes: &self.nodes.iter().collect::<Vec<_>>(),
                speaker_nodes: speakers,
                services: &facts::FactsCache::new().derive_all(
                    &self.services.iter().collect::<Vec<_>>(),
                    &self.slices.iter().collect::<Vec<_>>(),
                    "herald.io/l2",
                ),
                pools: &in_use.pools,
                advertisements: &in_use.advertisements,
                view,
                local_health: &health,
                require_dataplane: false,
            })
        }
    }

    fn ip() -> IpAddr {
        "10.80.0.1".parse().unwrap()
    }

    #[test]
    fn tunnels_go_to_peers_not_known_to_run_announce_only_dead_or_alive() {
        let world = World::new("Cluster", &["n2"]);
        let mut view = view(&[
            ("n1", MemberState::Alive),
            ("n2", MemberState::Alive),
            ("n3", MemberState::Dead),
        ]);
        // The view's health says announce-only (dataplane_ready false) for everyone.
        assert!(world.plan_for("n1", &view).tunnel_peers.is_empty());
        view.members.get_mut("n2").unwrap().health = None;
        view.members.get_mut("n3").unwrap().health = None;
        let plan = world.plan_for("n1", &view);
        let peers: Vec<&String> = plan.tunnel_peers.keys().collect();
        assert_eq!(
            peers,
            ["n2", "n3"],
            "health not heard yet counts as a dataplane, dead n3's pinned one too; n1 itself does not"
        );
        assert_eq!(plan.dead_nodes, BTreeSet::from(["n3".to_string()]));
        // Dead by refusal: the host is up, its pods keep taking flows.
        view.members.get_mut("n3").unwrap().host_up = true;
        assert!(world.plan_for("n1", &view).dead_nodes.is_empty());
        view.members.get_mut("n3").unwrap().host_up = false;
        assert_eq!(plan.tunnel_peers["n2"], vec!["10.203.0.12".parse::<IpAddr>().unwrap()]);
        view.members.get_mut("n2").unwrap().health = Some(NodeHealth {
            announcer_ready: true,
            dataplane_ready: true,
            interfaces: Default::default(),
            ..Default::default()
        });
        assert_eq!(world.plan_for("n1", &view).tunnel_peers.len(), 2);
    }

    #[test]
    fn exactly_one_node_owns_a_shared_ip_and_reports_both_services() {
        let world = World::new("Cluster", &["n1"]);
        let all_alive = view(&[
            ("n1", MemberState::Alive),
            ("n2", MemberState::Alive),
            ("n3", MemberState::Alive),
        ]);
        let plans: Vec<Plan> = ["n1", "n2", "n3"]
            .iter()
            .map(|n| world.plan_for(n, &all_alive))
            .collect();
        let owners: Vec<usize> = (0..3).filter(|i| plans[*i].owned.contains_key(&ip())).collect();
        assert_eq!(owners.len(), 1, "one owner");
        let owner = &plans[owners[0]];
        assert_eq!(
            owner.owned[&ip()].interfaces.as_deref(),
            Some(&["eth0".to_string()][..])
        );
        let services: Vec<String> = owner.announced.keys().map(|(_, n)| n.clone()).collect();
        assert_eq!(services, ["dns", "web"]);
        // Every node agrees on the owner, and peers exclude the node itself.
        assert!(plans.iter().all(|p| p.ownership[&ip()] == owner.ownership[&ip()]));
        assert_eq!(plans[0].peers.len(), 2);
        assert_eq!(plans[0].peers[0].address, "10.203.0.12:7946".parse().unwrap());
        // Only nodes that run a speaker are peers: n3 runs none (a nodeSelector left it out).
        let speakers = BTreeSet::from(["n1".to_string(), "n2".to_string()]);
        let plan = world.plan_with_speakers("n1", &all_alive, Some(&speakers));
        let peers: Vec<&str> = plan.peers.iter().map(|p| p.node.as_str()).collect();
        assert_eq!(peers, ["n2"]);
    }

    #[test]
    fn a_dead_owner_hands_over_to_its_runner_up_who_was_watching_it() {
        let world = World::new("Cluster", &["n1"]);
        let all_alive = view(&[
            ("n1", MemberState::Alive),
            ("n2", MemberState::Alive),
            ("n3", MemberState::Alive),
        ]);
        let before = world.plan_for("n1", &all_alive).ownership[&ip()].clone();
        let runner_up = before.runner_up.clone().expect("runner-up");
        assert!(
            world
                .plan_for(&runner_up, &all_alive)
                .watch_closely
                .contains(&before.owner)
        );

        let mut states: Vec<(&str, MemberState)> = vec![
            ("n1", MemberState::Alive),
            ("n2", MemberState::Alive),
            ("n3", MemberState::Alive),
        ];
        for s in &mut states {
            if s.0 == before.owner {
                s.1 = MemberState::Dead;
            }
        }
        let after = world.plan_for(&runner_up, &view(&states));
        assert!(after.owned.contains_key(&ip()));
        let changes = owner_changes(&world.plan_for("n1", &all_alive).ownership, &after);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].reason, format!("{} is not eligible: not_live", before.owner));
    }

    #[test]
    fn local_policy_owner_has_a_local_endpoint_and_no_endpoint_means_no_owner() {
        let world = World::new("Local", &["n3"]);
        let all_alive = view(&[
            ("n1", MemberState::Alive),
            ("n2", MemberState::Alive),
            ("n3", MemberState::Alive),
        ]);
        assert_eq!(world.plan_for("n1", &all_alive).ownership[&ip()].owner, "n3");
        let empty = World::new("Cluster", &[]);
        let p = empty.plan_for("n1", &all_alive);
        assert!(p.ownership.is_empty() && p.owned.is_empty());
    }

    fn all_alive() -> MembershipView {
        view(&[
            ("n1", MemberState::Alive),
            ("n2", MemberState::Alive),
            ("n3", MemberState::Alive),
        ])
    }

    #[test]
    fn a_pool_edited_into_an_invalid_spec_stays_announced() {
        let mut world = World::new("Cluster", &["n1"]);
        let before = world.plan_for("n1", &all_alive()).ownership;
        assert!(before.contains_key(&ip()));

        world.pools[0].spec.addresses = vec!["10.80.0.0/244".into()];
        let after = world.plan_for("n1", &all_alive());
        assert_eq!(after.ownership, before, "the last valid spec keeps the IP announced");

        // Deleting the pool is what stops the announcement.
        world.pools.clear();
        assert!(world.plan_for("n1", &all_alive()).ownership.is_empty());
        // A pool that was never valid announces nothing.
        world.pools = vec![IPAddressPool::new(
            "p",
            IPAddressPoolSpec::with_addresses(["10.80.0.0/244"]),
        )];
        assert!(world.plan_for("n1", &all_alive()).ownership.is_empty());
    }

    #[test]
    fn an_advertisement_edited_into_an_invalid_spec_keeps_its_last_valid_spec() {
        let mut world = World::new("Cluster", &["n1"]);
        let only_n2: herald_config::L2AdvertisementSpec =
            serde_json::from_value(json!({"nodeSelectors": [{"matchLabels": {"kubernetes.io/hostname": "n2"}}]}))
                .unwrap();
        for node in &mut world.nodes {
            let name = node.metadata.name.clone().unwrap();
            node.metadata.labels = Some([("kubernetes.io/hostname".to_string(), name)].into());
        }
        world.advertisements = vec![L2Advertisement::new("edge", only_n2)];
        assert_eq!(world.plan_for("n1", &all_alive()).ownership[&ip()].owner, "n2");

        // An invalid edit (a repeated interface) that would also move the announcement to n3
        // if it were used: the last valid spec stays, n2 keeps announcing.
        world.advertisements[0].spec = serde_json::from_value(json!({
            "nodeSelectors": [{"matchLabels": {"kubernetes.io/hostname": "n3"}}],
            "interfaces": ["eth0", "eth0"]
        }))
        .unwrap();
        assert_eq!(world.plan_for("n1", &all_alive()).ownership[&ip()].owner, "n2");

        // An advertisement that was never valid is not used (this one would select every node).
        world.advertisements.push(L2Advertisement::new(
            "broken",
            serde_json::from_value(json!({"interfaces": ["eth0", "eth0"]})).unwrap(),
        ));
        assert_eq!(world.plan_for("n1", &all_alive()).ownership[&ip()].owner, "n2");
        world.advertisements.remove(0);
        assert!(world.plan_for("n1", &all_alive()).ownership.is_empty());
    }

    #[test]
    fn owner_changes_list_ips_gained_lost_and_moved_in_order() {
        let own = |owner: &str| Ownership {
            owner: owner.to_string(),
            runner_up: None,
        };
        let ip = |last: u8| IpAddr::from([10, 80, 0, last]);
        let before = BTreeMap::from([
            (ip(1), own("n1")),
            (ip(2), own("n1")),
            (ip(4), own("n2")),
            (ip(6), own("n3")),
        ]);
        let after = Plan {
            ownership: BTreeMap::from([
                (ip(2), own("n2")),
                (ip(3), own("n1")),
                (ip(4), own("n2")),
                (ip(7), own("n1")),
            ]),
            ..Plan::default()
        };
        let changes: Vec<(IpAddr, Option<String>, Option<String>)> = owner_changes(&before, &after)
            .into_iter()
            .map(|c| (c.ip, c.from, c.to))
            .collect();
        let s = |n: &str| Some(n.to_string());
        assert_eq!(
            changes,
            vec![
                (ip(1), s("n1"), None),
                (ip(2), s("n1"), s("n2")),
                (ip(3), None, s("n1")),
                (ip(6), s("n3"), None),
                (ip(7), None, s("n1")),
            ]
        );
    }

    /// One change to the world of [`a_remembering_planner_plans_what_a_fresh_one_does`].
    #[derive(Clone, Debug)]
    enum Change {
        /// Service `i` moves to IP `10.80.0.<ip>` (few IPs, so Services share them).
        Address(usize, u8),
        /// Service `i` switches between `Cluster` and `Local`.
        Policy(usize),
        /// Service `i`'s endpoints move to the nodes in the mask.
        Endpoints(usize, u8),
        /// Service `i` is deleted, or created again.
        Toggle(usize),
        /// Member `n` (1-3) dies, or comes back.
        Member(usize),
        /// The pool covers every test address, or only the lower half.
        Pool(bool),
    }

    fn change() -> impl proptest::strategy::Strategy<Value = Change> {
        use proptest::prelude::*;
        prop_oneof![
            (0..6usize, 1..5u8).prop_map(|(i, ip)| Change::Address(i, ip)),
            (0..6usize).prop_map(Change::Policy),
            (0..6usize, 0..8u8).prop_map(|(i, m)| Change::Endpoints(i, m)),
            (0..6usize).prop_map(Change::Toggle),
            (1..4usize).prop_map(Change::Member),
            any::<bool>().prop_map(Change::Pool),
        ]
    }

    proptest::proptest! {
        #[test]
        fn a_remembering_planner_plans_what_a_fresh_one_does(changes in proptest::collection::vec(change(), 1..40)) {
            let names = ["n1", "n2", "n3"];
            let mut version = 0u64;
            let mut bump = || { version += 1; version.to_string() };
            // Per Service: (ip, Local?, endpoint node mask, exists), objects rebuilt on change.
            let mut state: Vec<(u8, bool, u8, bool)> = (0..6).map(|i| (1 + (i % 4) as u8, false, 0b001 << (i % 3), true)).collect();
            let mut services: Vec<Service> = Vec::new();
            let mut slices: Vec<EndpointSlice> = Vec::new();
            let mut rebuild = |state: &[(u8, bool, u8, bool)], services: &mut Vec<Service>, slices: &mut Vec<EndpointSlice>, changed: Option<usize>| {
                let old_services = std::mem::take(services);
                let old_slices = std::mem::take(slices);
                for (i, (ip, local, mask, exists)) in state.iter().enumerate() {
                    if !exists { continue; }
                    let name = format!("s{i}");
                    let keep = changed != Some(i);
                    let old = old_services.iter().find(|s| s.metadata.name.as_deref() == Some(&name));
                    let old_slice = old_slices.iter().find(|s| s.metadata.name.as_deref() == Some(&format!("{name}-1")));
                    match (keep, old, old_slice) {
                        (true, Some(svc), Some(sl)) => { services.push(svc.clone()); slices.push(sl.clone()); }
                        _ => {
                            let mut svc = service(&name, &format!("10.80.0.{ip}"), if *local { "Local" } else { "Cluster" });
                            svc.metadata.uid = Some(format!("uid-{i}"));
                            svc.metadata.resource_version = Some(bump());
                            let on: Vec<&str> = (0..3).filter(|b| mask & (1 << b) != 0).map(|b| names[b]).collect();
                            let mut sl = slice(&name, &on);
                            sl.metadata.resource_version = Some(bump());
                            services.push(svc);
                            slices.push(sl);
                        }
                    }
                }
            };
            rebuild(&state, &mut services, &mut slices, None);
            let mut states = [MemberState::Alive; 3];
            let mut whole_pool = true;
            let mut cache = facts::FactsCache::new();
            let mut planner = Planner::default();
            let mut memory = ConfigMemory::default();
            let health = NodeHealth {
                announcer_ready: true,
                dataplane_ready: false,
                interfaces: ["eth0".to_string()].into(),
                ..Default::default()
            };
            let nodes = World::new("Cluster", &[]).nodes;
            let advertisements = vec![L2Advertisement::new("all", Default::default())];
            for step in changes {
                let changed = match step {
                    Change::Address(i, ip) => { state[i].0 = ip; Some(i) }
                    Change::Policy(i) => { state[i].1 = !state[i].1; Some(i) }
                    Change::Endpoints(i, mask) => { state[i].2 = mask; Some(i) }
                    Change::Toggle(i) => { state[i].3 = !state[i].3; Some(i) }
                    Change::Member(n) => {
                        states[n - 1] = if states[n - 1] == MemberState::Alive { MemberState::Dead } else { MemberState::Alive };
                        None
                    }
                    Change::Pool(whole) => { whole_pool = whole; None }
                };
                rebuild(&state, &mut services, &mut slices, changed);
                let pools = vec![IPAddressPool::new("p", IPAddressPoolSpec::with_addresses([if whole_pool { "10.80.0.0/24" } else { "10.80.0.0/31" }]))];
                let in_use = memory.judge(&pools, &advertisements, Timestamp::from_second(1_000).unwrap());
                let members: Vec<(&str, MemberState)> = names.iter().copied().zip(states).collect();
                let view = view(&members);
                let derived = cache.derive_all(
                    &services.iter().collect::<Vec<_>>(),
                    &slices.iter().collect::<Vec<_>>(),
                    "herald.io/l2",
                );
                let inputs = Inputs {
                    node: "n1",
                    peer_port: 7946,
                    nodes: &nodes.iter().collect::<Vec<_>>(),
                    speaker_nodes: None,
                    services: &derived,
                    pools: &in_use.pools,
                    advertisements: &in_use.advertisements,
                    view: &view,
                    local_health: &health,
                    require_dataplane: false,
                };
                proptest::prop_assert_eq!(planner.plan(&inputs), plan(&inputs));
            }
        }
    }
}
