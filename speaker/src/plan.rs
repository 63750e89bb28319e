//! One pass of the speaker's loop as a pure function: from the cluster's objects, the
//! membership view and this node's own state to what this node must do — peers to talk to,
//! health to gossip, IPs to announce (and where), members to watch closely, and the
//! `ServiceL2Status` objects to show.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use herald_config::L2AdvertisementSpec;
use herald_config::last_valid::PoolInUse;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::announcer::AnnounceTarget;
use crate::cluster::facts;
use crate::election::eligibility::{EligibilityOptions, Ineligible, UnitEligibility, candidates, eligibility};
use crate::election::{Ownership, elect, owned_by, watch_targets};
use crate::membership::{MembershipView, NodeHealth, Peer};
use crate::status::{Announced, AnnouncedServices};

/// Everything one pass reads.
pub struct Inputs<'a> {
    pub node: &'a str,
    pub lb_class: &'a str,
    pub peer_port: u16,
    pub nodes: &'a [&'a Node],
    pub services: &'a [&'a Service],
    pub endpoint_slices: &'a [&'a EndpointSlice],
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
    /// Every other node's speaker address.
    pub peers: Vec<Peer>,
    /// Owner (and runner-up) of every unit that has an eligible node.
    pub ownership: BTreeMap<IpAddr, Ownership>,
    /// Per unit, nodes that may not announce it and why (for logs).
    pub ineligible: BTreeMap<IpAddr, BTreeMap<String, Ineligible>>,
    /// IPs this node announces, with the interfaces to announce them on.
    pub owned: BTreeMap<IpAddr, AnnounceTarget>,
    /// Owners this node would take over from: probe them closely.
    pub watch_closely: BTreeSet<String>,
    /// Services this node announces, for `ServiceL2Status` and Events.
    pub announced: AnnouncedServices,
    /// Services as the dataplane forwards them.
    pub services: Vec<crate::dataplane::ServiceInput>,
}

pub fn plan(inputs: &Inputs<'_>) -> Plan {
    let peers = inputs
        .nodes
        .iter()
        .filter(|n| n.metadata.name.as_deref() != Some(inputs.node))
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
                // Our own health is fresher than what we last gossiped.
                let health = if name == inputs.node {
                    Some(inputs.local_health.clone())
                } else {
                    m.health.clone()
                };
                (m.state, health)
            });
            facts::node_facts(n, member)
        })
        .collect();
    let units = facts::units(
        inputs.services.iter().copied(),
        inputs.endpoint_slices,
        inputs.pools,
        inputs.lb_class,
    );
    let outcome: BTreeMap<IpAddr, UnitEligibility> = eligibility(
        &units,
        &node_facts,
        inputs.advertisements,
        EligibilityOptions {
            require_dataplane: inputs.require_dataplane,
        },
    );
    let ownership = elect(&candidates(&outcome));

    let mine = owned_by(inputs.node, &ownership);
    let mut owned = BTreeMap::new();
    let mut announced: AnnouncedServices = BTreeMap::new();
    for unit in units.iter().filter(|u| mine.contains(&u.ip)) {
        let interfaces: Vec<String> = outcome[&unit.ip]
            .eligible
            .get(inputs.node)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default();
        owned.insert(
            unit.ip,
            AnnounceTarget {
                interfaces: Some(interfaces.clone()),
            },
        );
        for service in &unit.services {
            let (namespace, name) = service.name.split_once('/').unwrap_or(("", &service.name));
            let entry = announced
                .entry((namespace.to_string(), name.to_string()))
                .or_insert_with(|| Announced {
                    ips: Vec::new(),
                    interfaces: Vec::new(),
                });
            entry.ips.push(unit.ip);
            for interface in &interfaces {
                if !entry.interfaces.contains(interface) {
                    entry.interfaces.push(interface.clone());
                }
            }
        }
    }
    Plan {
        services: facts::service_inputs(inputs.services, inputs.endpoint_slices, inputs.lb_class),
        peers,
        watch_closely: watch_targets(inputs.node, &ownership),
        ineligible: outcome.into_iter().map(|(ip, e)| (ip, e.ineligible)).collect(),
        ownership,
        owned,
        announced,
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
    let ips: BTreeSet<IpAddr> = before.keys().chain(after.ownership.keys()).copied().collect();
    ips.into_iter()
        .filter_map(|ip| {
            let from = before.get(&ip).map(|o| o.owner.clone());
            let to = after.ownership.get(&ip).map(|o| o.owner.clone());
            if from == to {
                return None;
            }
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
            Some(OwnerChange { ip, from, to, reason })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::in_use::ConfigMemory;
    use crate::membership::{MemberInfo, MemberState};
    use herald_config::{IPAddressPool, IPAddressPoolSpec, L2Advertisement};
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;
    use std::cell::RefCell;

    fn node(name: &str, ip: &str) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}))
        .unwrap()
    }

    fn service(name: &str, ip: &str, policy: &str) -> Service {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": policy, "ports": [{"port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}}))
        .unwrap()
    }

    fn slice(service: &str, nodes: &[&str]) -> EndpointSlice {
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

    fn view(states: &[(&str, MemberState)]) -> MembershipView {
        let health = NodeHealth {
            announcer_ready: true,
            dataplane_ready: false,
            interfaces: ["eth0".to_string()].into(),
        };
        MembershipView {
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
                pools: vec![IPAddressPool::new(
                    "p",
                    IPAddressPoolSpec {
                        addresses: vec!["10.80.0.0/24".into()],
                        auto_assign: true,
                        avoid_buggy_ips: false,
                        service_allocation: None,
                    },
                )],
                advertisements: vec![L2Advertisement::new("all", Default::default())],
                memory: RefCell::default(),
            }
        }

        fn plan_for(&self, me: &str, view: &MembershipView) -> Plan {
            let health = NodeHealth {
                announcer_ready: true,
                dataplane_ready: false,
                interfaces: ["eth0".to_string()].into(),
            };
            let in_use = self.memory.borrow_mut().judge(
                &self.pools,
                &self.advertisements,
                Timestamp::from_second(1_000).unwrap(),
            );
            plan(&Inputs {
                node: me,
                lb_class: "herald.io/l2",
                peer_port: 7946,
                nodes: &self.nodes.iter().collect::<Vec<_>>(),
                services: &self.services.iter().collect::<Vec<_>>(),
                endpoint_slices: &self.slices.iter().collect::<Vec<_>>(),
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
            IPAddressPoolSpec {
                addresses: vec!["10.80.0.0/244".into()],
                auto_assign: true,
                avoid_buggy_ips: false,
                service_allocation: None,
            },
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
}
