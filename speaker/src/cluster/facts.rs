//! Kubernetes objects → the plain facts election works on ([`UnitFacts`], [`NodeFacts`]).
//! Pure functions: the speaker's watches hand in what they hold; tests hand in literals.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use herald_config::IPAddressPool;
use herald_config::address::IpRange;
use herald_config::annotations::IP_ALLOCATED_FROM_POOL;
use herald_config::service::{handles, ingress_ips};
use herald_config::validation::validate_pools;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

use crate::election::eligibility::{NodeFacts, PoolFacts, ServiceFacts, TrafficPolicy, UnitFacts};
use crate::membership::{MemberState, NodeHealth};

/// The label EndpointSlices carry naming their Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One election unit per LoadBalancer IP of a handled Service, with every Service sharing it.
/// An IP that is in no valid pool is not Herald's to announce and yields no unit.
pub fn units<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: &[&EndpointSlice],
    pools: &[IPAddressPool],
    lb_class: &str,
) -> Vec<UnitFacts> {
    let ranges: Vec<(String, BTreeMap<String, String>, Vec<IpRange>)> = {
        let verdicts = validate_pools(pools);
        pools
            .iter()
            .filter_map(|p| {
                let ranges = verdicts.get(&p.name_any())?.as_ref().ok()?.clone();
                Some((p.name_any(), p.labels().clone(), ranges))
            })
            .collect()
    };
    let mut slices_by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        if let Some(service) = slice.labels().get(SERVICE_NAME_LABEL) {
            slices_by_service
                .entry((slice.namespace().unwrap_or_default(), service.clone()))
                .or_default()
                .push(slice);
        }
    }
    let mut by_ip: BTreeMap<IpAddr, UnitFacts> = BTreeMap::new();
    for service in services {
        if !handles(service, lb_class) {
            continue;
        }
        let namespace = service.namespace().unwrap_or_default();
        let name = service.name_any();
        let slices = slices_by_service
            .get(&(namespace.clone(), name.clone()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let facts = service_facts(service, slices);
        for ip in ingress_ips(service) {
            let named_pool = service.annotations().get(IP_ALLOCATED_FROM_POOL);
            let pool = ranges
                .iter()
                .filter(|(_, _, r)| r.iter().any(|r| r.contains(ip)))
                .find(|(n, _, _)| named_pool.is_none_or(|p| p == n))
                .or_else(|| ranges.iter().find(|(_, _, r)| r.iter().any(|r| r.contains(ip))));
            let Some((pool_name, pool_labels, _)) = pool else {
                tracing::debug!(service = %format!("{namespace}/{name}"), %ip, "address in no valid pool; not announced");
                continue;
            };
            by_ip
                .entry(ip)
                .or_insert_with(|| UnitFacts {
                    ip,
                    pool: PoolFacts {
                        name: pool_name.clone(),
                        labels: pool_labels.clone(),
                    },
                    services: Vec::new(),
                })
                .services
                .push(facts.clone());
        }
    }
    by_ip.into_values().collect()
}

/// Endpoints of one Service: serving anywhere, and the nodes with a ready one. A missing
/// condition counts as true, as the EndpointSlice API defines.
pub fn service_facts(service: &Service, slices: &[&EndpointSlice]) -> ServiceFacts {
    let mut has_serving_endpoint = false;
    let mut ready_endpoint_nodes = BTreeSet::new();
    for endpoint in slices.iter().flat_map(|s| s.endpoints.iter().flatten()) {
        let conditions = endpoint.conditions.clone().unwrap_or_default();
        let ready = conditions.ready.unwrap_or(true);
        let serving = conditions.serving.unwrap_or(ready);
        has_serving_endpoint |= serving;
        if ready && let Some(node) = &endpoint.node_name {
            ready_endpoint_nodes.insert(node.clone());
        }
    }
    let local = service
        .spec
        .as_ref()
        .and_then(|s| s.external_traffic_policy.as_deref())
        .is_some_and(|p| p == "Local");
    ServiceFacts {
        name: format!("{}/{}", service.namespace().unwrap_or_default(), service.name_any()),
        labels: service.labels().clone(),
        traffic_policy: if local {
            TrafficPolicy::Local
        } else {
            TrafficPolicy::Cluster
        },
        has_serving_endpoint,
        ready_endpoint_nodes,
    }
}

/// A Node as election sees it, joined with what membership knows of its speaker.
pub fn node_facts(node: &Node, member: Option<(MemberState, Option<NodeHealth>)>) -> NodeFacts {
    let network_unavailable = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "NetworkUnavailable" && c.status == "True");
    let (member_state, health) = match member {
        Some((state, health)) => (Some(state), health),
        None => (None, None),
    };
    NodeFacts {
        name: node.name_any(),
        labels: node.labels().clone(),
        network_unavailable,
        member_state,
        health,
    }
}

/// The address peers reach a node's speaker at: its first `InternalIP` (the speaker runs in
/// the host network namespace), else its first address of any type.
pub fn node_address(node: &Node) -> Option<IpAddr> {
    let addresses = node.status.as_ref()?.addresses.as_ref()?;
    addresses
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .or_else(|| addresses.first())
        .and_then(|a| a.address.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_config::IPAddressPoolSpec;
    use serde_json::json;

    fn service(name: &str, extra: serde_json::Value) -> Service {
        let mut svc = json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}}
        });
        for (k, v) in extra.as_object().unwrap() {
            svc[k].as_object_mut().unwrap().extend(v.as_object().unwrap().clone());
        }
        serde_json::from_value(svc).unwrap()
    }

    fn slice(service: &str, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{service}-x"), "namespace": "default",
                         "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": "IPv4",
            "endpoints": endpoints
        }))
        .unwrap()
    }

    fn pool(name: &str, addresses: &[&str]) -> IPAddressPool {
        IPAddressPool::new(
            name,
            IPAddressPoolSpec {
                addresses: addresses.iter().map(|s| s.to_string()).collect(),
                auto_assign: true,
                avoid_buggy_ips: false,
                service_allocation: None,
            },
        )
    }

    #[test]
    fn services_sharing_an_ip_form_one_unit() {
        let a = service("a", json!({}));
        let b = service("b", json!({}));
        let other_class = service("c", json!({"spec": {"loadBalancerClass": "x/y"}}));
        let pools = [pool("p", &["10.0.0.0/24"])];
        let units = units([&a, &b, &other_class], &[], &pools, "herald.io/l2");
        assert_eq!(units.len(), 1);
        assert_eq!(units[0].pool.name, "p");
        let names: Vec<&str> = units[0].services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["default/a", "default/b"]);
    }

    #[test]
    fn addresses_outside_every_valid_pool_are_not_announced() {
        let a = service("a", json!({}));
        assert!(units([&a], &[], &[pool("p", &["10.9.0.0/24"])], "herald.io/l2").is_empty());
        // An invalid pool does not count even if it lists the address.
        assert!(units([&a], &[], &[pool("bad", &["10.0.0.1/24"])], "herald.io/l2").is_empty());
    }

    #[test]
    fn endpoints_give_serving_and_local_readiness() {
        let svc = service("web", json!({"spec": {"externalTrafficPolicy": "Local"}}));
        let s = slice(
            "web",
            json!([
                {"addresses": ["10.1.0.5"], "nodeName": "n1", "conditions": {"ready": true}},
                {"addresses": ["10.1.0.6"], "nodeName": "n2", "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.1.0.7"], "nodeName": "n3", "conditions": {"ready": false, "serving": false}}
            ]),
        );
        let facts = service_facts(&svc, &[&s]);
        assert_eq!(facts.traffic_policy, TrafficPolicy::Local);
        assert!(facts.has_serving_endpoint);
        assert_eq!(facts.ready_endpoint_nodes, BTreeSet::from(["n1".to_string()]));
        let none = service_facts(&svc, &[]);
        assert!(!none.has_serving_endpoint);
    }

    #[test]
    fn node_conditions_and_addresses() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": {"zone": "a"}},
            "status": {
                "conditions": [{"type": "NetworkUnavailable", "status": "True"}],
                "addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.203.0.11"}]
            }
        }))
        .unwrap();
        let facts = node_facts(&node, Some((MemberState::Alive, None)));
        assert!(facts.network_unavailable);
        assert_eq!(facts.member_state, Some(MemberState::Alive));
        assert_eq!(node_address(&node), Some("10.203.0.11".parse().unwrap()));
    }
}
