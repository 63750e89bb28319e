//! Eligibility: which nodes may announce an election unit, and why the others may not.
//!
//! A pure function over plain data; the wiring builds the inputs from Kubernetes objects
//! (Nodes, `L2Advertisement`s, Services, EndpointSlices) and from the membership view.
//!
//! A node is eligible for a unit when all of these hold (checked in this order; the first
//! failing check is the reported [`Ineligible`] reason):
//! 1. its speaker is live in the membership view: `Alive` or `Suspect`. A suspected node still
//!    counts as live until it is confirmed dead, so a single lost probe never moves an IP; the
//!    confirmation takes one suspicion timeout (see `membership`);
//! 2. it is not labelled [`herald_config::EXCLUDE_FROM_LB_LABEL`];
//! 3. its `NetworkUnavailable` condition is not `True`;
//! 4. its speaker gossiped health, with the announcer ready (and the dataplane ready when the
//!    speaker runs with the dataplane);
//! 5. for at least one Service of the unit, some `L2Advertisement` selects the unit's pool,
//!    the Service (when it has `serviceSelectors`) and the node (through `nodeSelectors`), and
//!    the node has a usable interface for it: one of its gossiped node-wide interfaces, or,
//!    when the advertisement names `interfaces`, one of those that the node can announce on
//!    (even outside its node-wide selection, as the announcer honours the names);
//! 6. that Service has a serving endpoint somewhere (none anywhere: nobody announces), and
//!    with `externalTrafficPolicy: Local`, a ready endpoint on this node.
//!
//! When several Services share the IP, the node is eligible if it is eligible for any of them;
//! the reason reported for an ineligible node is the one of the Service that passed the most
//! checks.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use herald_config::EXCLUDE_FROM_LB_LABEL;
use herald_config::advertisement::L2AdvertisementSpec;

use crate::membership::{MemberState, NodeHealth};

/// What the eligibility rule needs to know about one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// Node name (= member name in membership).
    pub name: String,
    /// The Node's labels.
    pub labels: BTreeMap<String, String>,
    /// The Node's `NetworkUnavailable` condition is `True`.
    pub network_unavailable: bool,
    /// The node's speaker state in the membership view; `None` when unknown.
    pub member_state: Option<MemberState>,
    /// Health its speaker gossiped; `None` until heard.
    pub health: Option<NodeHealth>,
    /// Back from a minority partition: eligible, but ranked after every other candidate
    /// (see [`super::elect`]).
    pub rejoining: bool,
}

/// The `IPAddressPool` an IP was allocated from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolFacts {
    /// Pool name.
    pub name: String,
    /// Pool labels (for `ipAddressPoolSelectors`).
    pub labels: BTreeMap<String, String>,
}

pub use herald_config::service::TrafficPolicy;

/// One Service using the unit's IP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceFacts {
    /// `namespace/name`, for logs.
    pub name: String,
    /// The Service's labels (for `serviceSelectors`).
    pub labels: BTreeMap<String, String>,
    /// Its `externalTrafficPolicy`.
    pub traffic_policy: TrafficPolicy,
    /// Whether any endpoint of the Service is serving, on any node.
    pub has_serving_endpoint: bool,
    /// Nodes with a ready endpoint of the Service.
    pub ready_endpoint_nodes: BTreeSet<String>,
}

/// One election unit: an IP and every Service that uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitFacts {
    /// The LoadBalancer IP.
    pub ip: IpAddr,
    /// Pool it came from.
    pub pool: PoolFacts,
    /// Services sharing it (at least one).
    pub services: Vec<ServiceFacts>,
}

/// Why a node may not announce a unit, in the order the checks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ineligible {
    /// Its speaker is dead, left, or unknown to membership.
    NotLive,
    /// Labelled `node.kubernetes.io/exclude-from-external-load-balancers`.
    ExcludedByLabel,
    /// Its `NetworkUnavailable` condition is `True`.
    NetworkUnavailable,
    /// Its speaker has not gossiped any health yet.
    NoHealth,
    /// Its ARP/NDP announcer is not running.
    AnnouncerNotReady,
    /// Its eBPF dataplane is not running (only checked when the dataplane is required).
    DataplaneNotReady,
    /// No `L2Advertisement` selects the unit's pool and Service.
    NoAdvertisement,
    /// Advertisements select the pool and Service, but none selects this node.
    NodeNotSelected,
    /// Selected, but none of its up interfaces is allowed by the advertisements.
    NoUsableInterface,
    /// No Service of the unit has a serving endpoint anywhere.
    NoServingEndpoint,
    /// `externalTrafficPolicy: Local` and no ready endpoint on this node.
    NoLocalEndpoint,
}

impl Ineligible {
    /// Short stable name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Ineligible::NotLive => "not_live",
            Ineligible::ExcludedByLabel => "excluded_by_label",
            Ineligible::NetworkUnavailable => "network_unavailable",
            Ineligible::NoHealth => "no_health",
            Ineligible::AnnouncerNotReady => "announcer_not_ready",
            Ineligible::DataplaneNotReady => "dataplane_not_ready",
            Ineligible::NoAdvertisement => "no_advertisement",
            Ineligible::NodeNotSelected => "node_not_selected",
            Ineligible::NoUsableInterface => "no_usable_interface",
            Ineligible::NoServingEndpoint => "no_serving_endpoint",
            Ineligible::NoLocalEndpoint => "no_local_endpoint",
        }
    }
}

impl fmt::Display for Ineligible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Settings of the rule that do not come from Kubernetes objects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EligibilityOptions {
    /// The speaker forwards with the eBPF dataplane, so a node must have it ready to own IPs
    /// (false in announce-only mode).
    pub require_dataplane: bool,
}

/// Outcome of the rule for one unit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitEligibility {
    /// Eligible nodes, each with the interfaces it would announce on.
    pub eligible: BTreeMap<String, BTreeSet<String>>,
    /// Ineligible nodes with the reason.
    pub ineligible: BTreeMap<String, Ineligible>,
}

/// Applies the rule to one unit and every node.
pub fn unit_eligibility(
    unit: &UnitFacts,
    nodes: &[NodeFacts],
    advertisements: &[L2AdvertisementSpec],
    options: EligibilityOptions,
) -> UnitEligibility {
    let mut outcome = UnitEligibility::default();
    for node in nodes {
        match node_eligibility(unit, node, advertisements, options) {
            Ok(interfaces) => {
                outcome.eligible.insert(node.name.clone(), interfaces);
            }
            Err(reason) => {
                outcome.ineligible.insert(node.name.clone(), reason);
            }
        }
    }
    outcome
}

/// Applies the rule to every unit.
pub fn eligibility(
    units: &[UnitFacts],
    nodes: &[NodeFacts],
    advertisements: &[L2AdvertisementSpec],
    options: EligibilityOptions,
) -> BTreeMap<IpAddr, UnitEligibility> {
    units
        .iter()
        .map(|u| (u.ip, unit_eligibility(u, nodes, advertisements, options)))
        .collect()
}

/// The input of [`super::elect`]: eligible node names per unit.
pub fn candidates(outcome: &BTreeMap<IpAddr, UnitEligibility>) -> BTreeMap<IpAddr, BTreeSet<String>> {
    outcome
        .iter()
        .map(|(ip, e)| (*ip, e.eligible.keys().cloned().collect()))
        .collect()
}

/// Whether `node` may announce `unit`; `Ok` carries the interfaces to announce on.
pub fn node_eligibility(
    unit: &UnitFacts,
    node: &NodeFacts,
    advertisements: &[L2AdvertisementSpec],
    options: EligibilityOptions,
) -> Result<BTreeSet<String>, Ineligible> {
    if !node.member_state.is_some_and(MemberState::is_live) {
        return Err(Ineligible::NotLive);
    }
    if node.labels.contains_key(EXCLUDE_FROM_LB_LABEL) {
        return Err(Ineligible::ExcludedByLabel);
    }
    if node.network_unavailable {
        return Err(Ineligible::NetworkUnavailable);
    }
    let health = node.health.as_ref().ok_or(Ineligible::NoHealth)?;
    if !health.announcer_ready {
        return Err(Ineligible::AnnouncerNotReady);
    }
    if options.require_dataplane && !health.dataplane_ready {
        return Err(Ineligible::DataplaneNotReady);
    }
    let mut interfaces = BTreeSet::new();
    // The reason of the Service that got furthest through the checks.
    let mut best_reason = Ineligible::NoAdvertisement;
    for service in &unit.services {
        match service_eligibility(unit, service, node, health, advertisements) {
            Ok(found) => interfaces.extend(found),
            Err(reason) => best_reason = best_reason.max(reason),
        }
    }
    if interfaces.is_empty() {
        Err(best_reason)
    } else {
        Ok(interfaces)
    }
}

fn service_eligibility(
    unit: &UnitFacts,
    service: &ServiceFacts,
    node: &NodeFacts,
    health: &NodeHealth,
    advertisements: &[L2AdvertisementSpec],
) -> Result<BTreeSet<String>, Ineligible> {
    let matching: Vec<&L2AdvertisementSpec> = advertisements
        .iter()
        .filter(|a| a.selects_pool(&unit.pool.name, &unit.pool.labels) && a.selects_service(&service.labels))
        .collect();
    if matching.is_empty() {
        return Err(Ineligible::NoAdvertisement);
    }
    let selecting: Vec<&&L2AdvertisementSpec> = matching.iter().filter(|a| a.selects_node(&node.labels)).collect();
    if selecting.is_empty() {
        return Err(Ineligible::NodeNotSelected);
    }
    // An advertisement that names interfaces may use them even outside the node-wide
    // selection, as the announcer does; one that names none gets the node-wide selection.
    let mut interfaces = BTreeSet::new();
    for advertisement in selecting {
        if advertisement.interfaces.is_empty() {
            interfaces.extend(health.interfaces.iter().cloned());
        } else {
            interfaces.extend(
                health
                    .interfaces
                    .iter()
                    .chain(&health.other_interfaces)
                    .filter(|interface| advertisement.interfaces.contains(*interface))
                    .cloned(),
            );
        }
    }
    if interfaces.is_empty() {
        return Err(Ineligible::NoUsableInterface);
    }
    if !service.has_serving_endpoint {
        return Err(Ineligible::NoServingEndpoint);
    }
    if service.traffic_policy == TrafficPolicy::Local && !service.ready_endpoint_nodes.contains(&node.name) {
        return Err(Ineligible::NoLocalEndpoint);
    }
    Ok(interfaces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn healthy(interfaces: &[&str]) -> NodeHealth {
        NodeHealth {
            announcer_ready: true,
            dataplane_ready: true,
            interfaces: interfaces.iter().map(|i| i.to_string()).collect(),
            ..Default::default()
        }
    }

    fn node(name: &str) -> NodeFacts {
        NodeFacts {
            name: name.into(),
            labels: labels(&[("zone", "a")]),
            network_unavailable: false,
            member_state: Some(MemberState::Alive),
            health: Some(healthy(&["eth0"])),
            rejoining: false,
        }
    }

    fn unit() -> UnitFacts {
        UnitFacts {
            ip: "192.0.2.1".parse().unwrap(),
            pool: PoolFacts {
                name: "default".into(),
                labels: labels(&[("tier", "public")]),
            },
            services: vec![ServiceFacts {
                name: "ns/web".into(),
                labels: labels(&[("app", "web")]),
                traffic_policy: TrafficPolicy::Cluster,
                has_serving_endpoint: true,
                ready_endpoint_nodes: ["n1".to_string()].into(),
            }],
        }
    }

    fn every_pool() -> L2AdvertisementSpec {
        L2AdvertisementSpec::default()
    }

    fn selector(key: &str, value: &str) -> LabelSelector {
        LabelSelector {
            match_labels: Some(labels(&[(key, value)])),
            ..Default::default()
        }
    }

    fn check(unit: &UnitFacts, node: &NodeFacts, ads: &[L2AdvertisementSpec]) -> Result<Vec<String>, Ineligible> {
        node_eligibility(unit, node, ads, EligibilityOptions::default()).map(|i| i.into_iter().collect())
    }

    #[test]
    fn healthy_advertised_node_is_eligible_on_its_interfaces() {
        assert_eq!(check(&unit(), &node("n1"), &[every_pool()]), Ok(vec!["eth0".into()]));
    }

    #[test]
    fn each_reason_is_reported() {
        let ads = [every_pool()];
        type Mutation = Box<dyn Fn(&mut UnitFacts, &mut NodeFacts)>;
        let cases: Vec<(Ineligible, Mutation)> = vec![
            (
                Ineligible::NotLive,
                Box::new(|_, n| n.member_state = Some(MemberState::Dead)),
            ),
            (
                Ineligible::NotLive,
                Box::new(|_, n| n.member_state = Some(MemberState::Left)),
            ),
            (Ineligible::NotLive, Box::new(|_, n| n.member_state = None)),
            (
                Ineligible::ExcludedByLabel,
                Box::new(|_, n| {
                    n.labels.insert(EXCLUDE_FROM_LB_LABEL.into(), String::new());
                }),
            ),
            (
                Ineligible::NetworkUnavailable,
                Box::new(|_, n| n.network_unavailable = true),
            ),
            (Ineligible::NoHealth, Box::new(|_, n| n.health = None)),
            (
                Ineligible::AnnouncerNotReady,
                Box::new(|_, n| n.health.as_mut().unwrap().announcer_ready = false),
            ),
            (
                Ineligible::NoUsableInterface,
                Box::new(|_, n| n.health.as_mut().unwrap().interfaces.clear()),
            ),
            (
                Ineligible::NoServingEndpoint,
                Box::new(|u, _| u.services[0].has_serving_endpoint = false),
            ),
            (
                Ineligible::NoLocalEndpoint,
                Box::new(|u, _| {
                    u.services[0].traffic_policy = TrafficPolicy::Local;
                    u.services[0].ready_endpoint_nodes.clear();
                }),
            ),
        ];
        for (expected, mutate) in cases {
            let (mut u, mut n) = (unit(), node("n1"));
            mutate(&mut u, &mut n);
            assert_eq!(check(&u, &n, &ads), Err(expected));
        }
    }

    #[test]
    fn suspect_counts_as_live() {
        let mut n = node("n1");
        n.member_state = Some(MemberState::Suspect);
        assert!(check(&unit(), &n, &[every_pool()]).is_ok());
    }

    #[test]
    fn dataplane_is_required_only_when_configured() {
        let mut n = node("n1");
        n.health.as_mut().unwrap().dataplane_ready = false;
        assert!(check(&unit(), &n, &[every_pool()]).is_ok());
        let required = EligibilityOptions {
            require_dataplane: true,
        };
        assert_eq!(
            node_eligibility(&unit(), &n, &[every_pool()], required),
            Err(Ineligible::DataplaneNotReady)
        );
    }

    #[test]
    fn advertisements_select_pool_service_and_node() {
        let u = unit();
        let n = node("n1");
        let other_pool = L2AdvertisementSpec {
            ip_address_pools: vec!["other".into()],
            ..Default::default()
        };
        assert_eq!(check(&u, &n, &[]), Err(Ineligible::NoAdvertisement));
        assert_eq!(check(&u, &n, &[other_pool]), Err(Ineligible::NoAdvertisement));
        let other_service = L2AdvertisementSpec {
            service_selectors: vec![selector("app", "db")],
            ..Default::default()
        };
        assert_eq!(check(&u, &n, &[other_service]), Err(Ineligible::NoAdvertisement));
        let other_zone = L2AdvertisementSpec {
            ip_address_pool_selectors: vec![selector("tier", "public")],
            node_selectors: vec![selector("zone", "b")],
            ..Default::default()
        };
        assert_eq!(
            check(&u, &n, std::slice::from_ref(&other_zone)),
            Err(Ineligible::NodeNotSelected)
        );
        let this_zone = L2AdvertisementSpec {
            node_selectors: vec![selector("zone", "a")],
            service_selectors: vec![selector("app", "web")],
            ..Default::default()
        };
        assert!(check(&u, &n, &[other_zone, this_zone]).is_ok());
    }

    #[test]
    fn advertisement_interfaces_restrict_the_node_interfaces() {
        let mut n = node("n1");
        n.health = Some(healthy(&["eth0", "eth1", "bond0"]));
        let eth1 = L2AdvertisementSpec {
            interfaces: vec!["eth1".into(), "eth9".into()],
            ..Default::default()
        };
        assert_eq!(check(&unit(), &n, &[eth1]), Ok(vec!["eth1".into()]));
        let missing = L2AdvertisementSpec {
            interfaces: vec!["eth9".into()],
            ..Default::default()
        };
        assert_eq!(check(&unit(), &n, &[missing]), Err(Ineligible::NoUsableInterface));
    }

    #[test]
    fn an_interface_named_by_the_advertisement_counts_even_outside_the_node_wide_selection() {
        let mut n = node("n1");
        n.health = Some(NodeHealth {
            other_interfaces: ["br0".to_string(), "docker0".to_string()].into(),
            ..healthy(&["eth0"])
        });
        let br0 = L2AdvertisementSpec {
            interfaces: vec!["br0".into()],
            ..Default::default()
        };
        assert_eq!(check(&unit(), &n, &[br0]), Ok(vec!["br0".into()]));
        // Without names, only the node-wide selection.
        assert_eq!(check(&unit(), &n, &[every_pool()]), Ok(vec!["eth0".into()]));
    }

    #[test]
    fn shared_ip_is_eligible_through_any_service_and_reports_the_furthest_reason() {
        let mut u = unit();
        let mut local = u.services[0].clone();
        local.name = "ns/api".into();
        local.traffic_policy = TrafficPolicy::Local;
        local.ready_endpoint_nodes = ["n2".to_string()].into();
        u.services.push(local);
        let ads = [every_pool()];
        assert!(check(&u, &node("n1"), &ads).is_ok());
        u.services[0].has_serving_endpoint = false;
        assert_eq!(check(&u, &node("n1"), &ads), Err(Ineligible::NoLocalEndpoint));
        assert!(check(&u, &node("n2"), &ads).is_ok());
    }

    #[test]
    fn no_serving_endpoint_means_nobody_announces() {
        let mut u = unit();
        u.services[0].has_serving_endpoint = false;
        let nodes = [node("n1"), node("n2")];
        let outcome = eligibility(&[u.clone()], &nodes, &[every_pool()], Default::default());
        let elected = super::super::elect(&candidates(&outcome), &BTreeSet::new());
        assert!(elected.is_empty());
        assert_eq!(outcome[&u.ip].ineligible.len(), 2);
        assert!(
            outcome[&u.ip]
                .ineligible
                .values()
                .all(|r| *r == Ineligible::NoServingEndpoint)
        );
    }
}
