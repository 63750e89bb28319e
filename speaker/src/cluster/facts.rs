//! Kubernetes objects → the plain facts election works on ([`UnitFacts`], [`NodeFacts`]).
//! Pure functions: the speaker's watches hand in what they hold; tests hand in literals.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use herald_config::annotations::IP_ALLOCATED_FROM_POOL;
use herald_config::last_valid::PoolInUse;
use herald_config::service::{handles, ingress_ips};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

use crate::dataplane as dp;
use crate::election::eligibility::{NodeFacts, PoolFacts, ServiceFacts, TrafficPolicy, UnitFacts};
use crate::membership::{MemberState, NodeHealth};

/// The label EndpointSlices carry naming their Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// EndpointSlices by the `(namespace, name)` of the Service they belong to.
fn slices_by_service<'a>(slices: &[&'a EndpointSlice]) -> BTreeMap<(String, String), Vec<&'a EndpointSlice>> {
    let mut by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        if let Some(service) = slice.labels().get(SERVICE_NAME_LABEL) {
            by_service
                .entry((slice.namespace().unwrap_or_default(), service.clone()))
                .or_default()
                .push(slice);
        }
    }
    by_service
}

/// One election unit per LoadBalancer IP of a handled Service, with every Service sharing it.
/// An IP that is in no pool in use (see [`super::in_use`]) is not Herald's to announce and
/// yields no unit.
pub fn units<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: &[&EndpointSlice],
    pools: &[PoolInUse],
    lb_class: &str,
) -> Vec<UnitFacts> {
    let lists = |pool: &PoolInUse, ip: IpAddr| pool.ranges.iter().any(|r| r.contains(ip));
    let slices_by_service = slices_by_service(slices);
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
            let pool = pools
                .iter()
                .filter(|p| lists(p, ip))
                .find(|p| named_pool.is_none_or(|n| *n == p.name))
                .or_else(|| pools.iter().find(|p| lists(p, ip)));
            let Some(pool) = pool else {
                tracing::debug!(service = %format!("{namespace}/{name}"), %ip, "address in no pool in use; not announced");
                continue;
            };
            by_ip
                .entry(ip)
                .or_insert_with(|| UnitFacts {
                    ip,
                    pool: PoolFacts {
                        name: pool.name.clone(),
                        labels: pool.labels.clone(),
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

/// Services as the eBPF dataplane needs them: LoadBalancer IPs of the Services Herald handles
/// (every node programs every IP, so a node that takes an IP over forwards it at once) and the
/// NodePorts of every Service that has them, with their endpoints.
pub fn service_inputs(services: &[&Service], slices: &[&EndpointSlice], lb_class: &str) -> Vec<dp::ServiceInput> {
    let slices_by_service = slices_by_service(slices);
    let mut inputs = Vec::new();
    for service in services {
        let Some(spec) = &service.spec else { continue };
        let load_balancer_ips = if handles(service, lb_class) {
            ingress_ips(service)
        } else {
            Vec::new()
        };
        let ports: Vec<dp::ServicePort> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(dp::ServicePort {
                    name: p.name.clone().unwrap_or_default(),
                    protocol: dp_protocol(p.protocol.as_deref())?,
                    port: u16::try_from(p.port).ok()?,
                    node_port: p.node_port.and_then(|n| u16::try_from(n).ok()),
                })
            })
            .collect();
        if ports.is_empty() || (load_balancer_ips.is_empty() && ports.iter().all(|p| p.node_port.is_none())) {
            continue;
        }
        let key = (service.namespace().unwrap_or_default(), service.name_any());
        let endpoints = slices_by_service
            .get(&key)
            .into_iter()
            .flatten()
            .flat_map(|slice| {
                let ports: Vec<dp::EndpointPort> = slice
                    .ports
                    .iter()
                    .flatten()
                    .filter_map(|p| {
                        Some(dp::EndpointPort {
                            name: p.name.clone().unwrap_or_default(),
                            protocol: dp_protocol(p.protocol.as_deref())?,
                            port: u16::try_from(p.port?).ok()?,
                        })
                    })
                    .collect();
                slice.endpoints.iter().flatten().flat_map(move |endpoint| {
                    let conditions = endpoint.conditions.clone().unwrap_or_default();
                    let ready = conditions.ready.unwrap_or(true);
                    let ports = ports.clone();
                    endpoint.addresses.iter().filter_map(move |address| {
                        Some(dp::EndpointInput {
                            ip: address.parse().ok()?,
                            node: endpoint.node_name.clone(),
                            ready,
                            serving: conditions.serving.unwrap_or(ready),
                            terminating: conditions.terminating.unwrap_or(false),
                            ports: ports.clone(),
                        })
                    })
                })
            })
            .collect();
        let local = spec.external_traffic_policy.as_deref() == Some("Local");
        inputs.push(dp::ServiceInput {
            namespace: key.0,
            name: key.1,
            load_balancer_ips,
            ports,
            traffic_policy: if local {
                dp::TrafficPolicy::Local
            } else {
                dp::TrafficPolicy::Cluster
            },
            endpoints,
        });
    }
    inputs
}

fn dp_protocol(protocol: Option<&str>) -> Option<dp::Protocol> {
    match protocol.unwrap_or("TCP") {
        "TCP" => Some(dp::Protocol::Tcp),
        "UDP" => Some(dp::Protocol::Udp),
        _ => None,
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

/// Every address in a Node's status that is an IP (NodePorts are served on these).
pub fn node_addresses(node: &Node) -> Vec<IpAddr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

/// The address peers reach a node's speaker at: its first `InternalIP` (the speaker runs in
/// the host network namespace), else its first address of any type that is an IP.
pub fn node_address(node: &Node) -> Option<IpAddr> {
    let addresses = node.status.as_ref()?.addresses.as_ref()?;
    let ips = || {
        addresses
            .iter()
            .filter_map(|a| Some((a.type_.as_str(), a.address.parse::<IpAddr>().ok()?)))
    };
    ips()
        .find(|(kind, _)| *kind == "InternalIP")
        .or_else(|| ips().next())
        .map(|(_, ip)| ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_config::last_valid::{LastValid, judge_pools};
    use herald_config::{IPAddressPool, IPAddressPoolSpec};
    use k8s_openapi::jiff::Timestamp;
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

    fn in_use(pools: &[IPAddressPool]) -> Vec<PoolInUse> {
        judge_pools(pools, &mut LastValid::new(), Timestamp::UNIX_EPOCH).in_use
    }

    #[test]
    fn services_sharing_an_ip_form_one_unit() {
        let a = service("a", json!({}));
        let b = service("b", json!({}));
        let other_class = service("c", json!({"spec": {"loadBalancerClass": "x/y"}}));
        let pools = in_use(&[pool("p", &["10.0.0.0/24"])]);
        let units = units([&a, &b, &other_class], &[], &pools, "herald.io/l2");
        assert_eq!(units.len(), 1);
        assert_eq!(units[0].pool.name, "p");
        let names: Vec<&str> = units[0].services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["default/a", "default/b"]);
    }

    #[test]
    fn addresses_outside_every_valid_pool_are_not_announced() {
        let a = service("a", json!({}));
        assert!(units([&a], &[], &in_use(&[pool("p", &["10.9.0.0/24"])]), "herald.io/l2").is_empty());
        // An invalid pool does not count even if it lists the address.
        assert!(units([&a], &[], &in_use(&[pool("bad", &["10.0.0.1/24"])]), "herald.io/l2").is_empty());
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
    fn dataplane_inputs_carry_lb_ips_node_ports_and_endpoint_ports() {
        let mut svc = service("web", json!({"spec": {"externalTrafficPolicy": "Local"}}));
        svc.spec.as_mut().unwrap().ports = Some(vec![
            serde_json::from_value(json!({"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"})).unwrap(),
        ]);
        let mut s = slice(
            "web",
            json!([{"addresses": ["10.244.1.5"], "nodeName": "n1", "conditions": {"ready": true}}]),
        );
        s.ports = Some(vec![
            serde_json::from_value(json!({"name": "http", "port": 8080, "protocol": "TCP"})).unwrap(),
        ]);
        let other_class = service("other", json!({"spec": {"loadBalancerClass": "x/y"}}));
        let inputs = service_inputs(&[&svc, &other_class], &[&s], "herald.io/l2");
        assert_eq!(
            inputs.len(),
            1,
            "the other class's Service has no LB IP of ours and no NodePort"
        );
        let web = &inputs[0];
        assert_eq!(web.load_balancer_ips, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(web.ports[0].node_port, Some(30080));
        assert_eq!(web.traffic_policy, dp::TrafficPolicy::Local);
        assert_eq!(web.endpoints.len(), 1);
        assert_eq!(web.endpoints[0].ports[0].port, 8080);
        assert_eq!(web.endpoints[0].node.as_deref(), Some("n1"));
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
