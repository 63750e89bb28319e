//! What kube-apiserver and kube-controller-manager compute for Services, done here the
//! same way: Service defaulting with cluster-IP and node-port allocation, and the
//! EndpointSlices derived from the Pods a Service selects. Pure functions over typed
//! k8s-openapi objects; the server wires them to the store.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use super::selectors::LabelSelector;
use super::status::Cause;

/// Address ranges the server allocates from.
#[derive(Debug, Clone)]
pub struct ServiceNetwork {
    /// IPv4 service CIDR (first family when both exist).
    pub ipv4: Option<Ipv4Net>,
    /// IPv6 service CIDR.
    pub ipv6: Option<Ipv6Net>,
    /// Inclusive node port range.
    pub node_ports: (i32, i32),
}

impl Default for ServiceNetwork {
    fn default() -> Self {
        Self {
            ipv4: "10.96.0.0/12".parse().ok(),
            ipv6: "fd00:10:96::/112".parse().ok(),
            node_ports: (30000, 32767),
        }
    }
}

/// Cluster IPs and node ports in use by other Services.
#[derive(Debug, Clone, Default)]
pub struct InUse {
    /// Allocated cluster IPs.
    pub cluster_ips: HashSet<IpAddr>,
    /// Allocated node ports (including health-check node ports).
    pub node_ports: HashSet<i32>,
}

impl InUse {
    /// Adds everything a stored Service object holds, reading the JSON directly (this
    /// runs over every Service on each Service write, so it avoids typed decoding).
    pub fn add_json(&mut self, svc: &Value) {
        let ips = svc
            .pointer("/spec/clusterIPs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        for ip in ips.chain(svc.pointer("/spec/clusterIP")) {
            if let Some(addr) = ip.as_str().and_then(|s| s.parse().ok()) {
                self.cluster_ips.insert(addr);
            }
        }
        for port in svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(np) = port.get("nodePort").and_then(Value::as_i64) {
                self.node_ports.insert(np as i32);
            }
        }
        if let Some(hc) = svc.pointer("/spec/healthCheckNodePort").and_then(Value::as_i64) {
            self.node_ports.insert(hc as i32);
        }
    }
}

fn family_of(ip: &str) -> Option<&'static str> {
    match ip.parse::<IpAddr>().ok()? {
        IpAddr::V4(_) => Some("IPv4"),
        IpAddr::V6(_) => Some("IPv6"),
    }
}

fn cidr_for(net: &ServiceNetwork, family: &str) -> Option<IpNet> {
    match family {
        "IPv4" => net.ipv4.map(IpNet::V4),
        _ => net.ipv6.map(IpNet::V6),
    }
}

/// First free address of the family's CIDR, skipping the network address and the first
/// host (kube-apiserver reserves it for the `kubernetes` Service).
fn allocate_ip(cidr: IpNet, used: &HashSet<IpAddr>) -> Option<IpAddr> {
    let network = cidr.network();
    cidr.hosts()
        .filter(|ip| *ip != network)
        .skip(1)
        .take(1 << 20)
        .find(|ip| !used.contains(ip))
}

fn uses_node_ports(type_: &str) -> bool {
    matches!(type_, "NodePort" | "LoadBalancer")
}

/// Fills in what kube-apiserver defaults and allocates for a Service being created
/// (`old` is None) or updated. `in_use` must not include this Service itself.
pub fn default_service(
    svc: &mut Service,
    old: Option<&Service>,
    in_use: &InUse,
    net: &ServiceNetwork,
) -> Result<(), Vec<Cause>> {
    let mut causes = Vec::new();
    let old_spec = old.and_then(|o| o.spec.clone()).unwrap_or_default();
    let spec = svc.spec.get_or_insert_with(Default::default);
    let type_ = spec.type_.get_or_insert_with(|| "ClusterIP".into()).clone();
    if !matches!(
        type_.as_str(),
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        causes.push(Cause::invalid("spec.type", format!("Unsupported value: {type_:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"")));
        return Err(causes);
    }
    spec.session_affinity.get_or_insert_with(|| "None".into());
    let external_name = type_ == "ExternalName";

    // Ports.
    let ports = spec.ports.get_or_insert_with(Vec::new);
    if ports.is_empty() && !external_name && spec.cluster_ip.as_deref() != Some("None") {
        causes.push(Cause::required("spec.ports"));
    }
    let many = ports.len() > 1;
    let mut names = HashSet::new();
    let mut seen_ports = HashSet::new();
    for (i, p) in ports.iter_mut().enumerate() {
        let protocol = p.protocol.get_or_insert_with(|| "TCP".into()).clone();
        if !matches!(protocol.as_str(), "TCP" | "UDP" | "SCTP") {
            causes.push(Cause::invalid(
                format!("spec.ports[{i}].protocol"),
                format!("Unsupported value: {protocol:?}"),
            ));
        }
        if !(1..=65535).contains(&p.port) {
            causes.push(Cause::invalid(
                format!("spec.ports[{i}].port"),
                format!("Invalid value: {}: must be between 1 and 65535, inclusive", p.port),
            ));
        }
        if !seen_ports.insert((p.port, protocol)) {
            causes.push(Cause::duplicate(
                format!("spec.ports[{i}]"),
                format!("Duplicate value: port {}", p.port),
            ));
        }
        let name = p.name.clone().unwrap_or_default();
        if many && name.is_empty() {
            causes.push(Cause::required(format!("spec.ports[{i}].name")));
        } else if !name.is_empty() && !names.insert(name.clone()) {
            causes.push(Cause::duplicate(
                format!("spec.ports[{i}].name"),
                format!("Duplicate value: {name:?}"),
            ));
        }
        if p.target_port.is_none() || p.target_port == Some(IntOrString::Int(0)) {
            p.target_port = Some(IntOrString::Int(p.port));
        }
    }
    if external_name {
        if spec.external_name.as_deref().unwrap_or_default().is_empty() {
            causes.push(Cause::required("spec.externalName"));
        }
        spec.cluster_ip = None;
        spec.cluster_ips = None;
        spec.ip_families = None;
        spec.ip_family_policy = None;
    } else {
        spec.internal_traffic_policy.get_or_insert_with(|| "Cluster".into());
        assign_cluster_ips(spec, &old_spec, in_use, net, &mut causes);
    }

    // Node ports.
    if uses_node_ports(&type_) {
        spec.external_traffic_policy.get_or_insert_with(|| "Cluster".into());
        let allocate = type_ == "NodePort" || *spec.allocate_load_balancer_node_ports.get_or_insert(true);
        let mut taken: HashSet<i32> = in_use.node_ports.clone();
        let (lo, hi) = net.node_ports;
        let ports = spec.ports.get_or_insert_with(Vec::new);
        for (i, p) in ports.iter_mut().enumerate() {
            let protocol = p.protocol.clone().unwrap_or_default();
            if let Some(np) = p.node_port {
                let kept = old_spec.ports.iter().flatten().any(|o| o.node_port == Some(np));
                if !(lo..=hi).contains(&np) {
                    causes.push(Cause::invalid(format!("spec.ports[{i}].nodePort"), format!("Invalid value: {np}: provided port is not in the valid range. The range of valid ports is {lo}-{hi}")));
                } else if !kept && in_use.node_ports.contains(&np) {
                    causes.push(Cause::invalid(
                        format!("spec.ports[{i}].nodePort"),
                        format!("Invalid value: {np}: provided port is already allocated"),
                    ));
                }
                taken.insert(np);
                continue;
            }
            let previous = old_spec
                .ports
                .iter()
                .flatten()
                .find(|o| o.port == p.port && o.protocol.clone().unwrap_or_else(|| "TCP".into()) == protocol)
                .and_then(|o| o.node_port);
            if let Some(np) = previous {
                p.node_port = Some(np);
                taken.insert(np);
            } else if allocate {
                match (lo..=hi).find(|n| !taken.contains(n)) {
                    Some(np) => {
                        p.node_port = Some(np);
                        taken.insert(np);
                    }
                    None => causes.push(Cause::invalid(format!("spec.ports[{i}].nodePort"), "range is full")),
                }
            }
        }
        if type_ == "LoadBalancer" && spec.external_traffic_policy.as_deref() == Some("Local") {
            if spec.health_check_node_port.is_none() {
                spec.health_check_node_port = old_spec
                    .health_check_node_port
                    .or_else(|| (lo..=hi).find(|n| !taken.contains(n)));
            }
        } else {
            spec.health_check_node_port = None;
        }
    } else {
        // Leaving NodePort/LoadBalancer releases the node ports (dropTypeDependentFields).
        for p in spec.ports.iter_mut().flatten() {
            p.node_port = None;
        }
        spec.external_traffic_policy = None;
        spec.health_check_node_port = None;
        spec.allocate_load_balancer_node_ports = None;
    }
    if type_ != "LoadBalancer" {
        spec.load_balancer_class = None;
    }
    if causes.is_empty() { Ok(()) } else { Err(causes) }
}

fn assign_cluster_ips(
    spec: &mut k8s_openapi::api::core::v1::ServiceSpec,
    old: &k8s_openapi::api::core::v1::ServiceSpec,
    in_use: &InUse,
    net: &ServiceNetwork,
    causes: &mut Vec<Cause>,
) {
    // Requested IPs: clusterIPs wins, clusterIP is its first element.
    let mut requested: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
    if requested.is_empty()
        && let Some(ip) = spec.cluster_ip.clone().filter(|s| !s.is_empty())
    {
        requested.push(ip);
    }
    let old_ips: Vec<String> = old
        .cluster_ips
        .clone()
        .unwrap_or_else(|| old.cluster_ip.iter().cloned().collect());
    if !old_ips.is_empty() {
        if requested.is_empty() {
            requested = old_ips.clone();
        } else if requested.first() != old_ips.first() {
            causes.push(Cause::invalid(
                "spec.clusterIPs[0]",
                "Invalid value: field is immutable",
            ));
            return;
        }
        if spec.ip_families.is_none() {
            spec.ip_families = old.ip_families.clone();
        }
        if spec.ip_family_policy.is_none() {
            spec.ip_family_policy = old.ip_family_policy.clone();
        }
    }
    let headless = requested.first().map(String::as_str) == Some("None");
    let policy = spec
        .ip_family_policy
        .get_or_insert_with(|| "SingleStack".into())
        .clone();
    if !matches!(policy.as_str(), "SingleStack" | "PreferDualStack" | "RequireDualStack") {
        causes.push(Cause::invalid(
            "spec.ipFamilyPolicy",
            format!("Unsupported value: {policy:?}"),
        ));
        return;
    }
    let configured: Vec<&str> = [net.ipv4.map(|_| "IPv4"), net.ipv6.map(|_| "IPv6")]
        .into_iter()
        .flatten()
        .collect();
    let mut families: Vec<String> = spec.ip_families.clone().unwrap_or_default();
    if families.is_empty() {
        let from_ips: Vec<String> = requested
            .iter()
            .filter_map(|ip| family_of(ip))
            .map(str::to_string)
            .collect();
        families = if !from_ips.is_empty() {
            from_ips
        } else {
            configured.first().map(|f| vec![f.to_string()]).unwrap_or_default()
        };
    }
    for (i, f) in families.iter().enumerate() {
        if !configured.contains(&f.as_str()) {
            causes.push(Cause::invalid(
                format!("spec.ipFamilies[{i}]"),
                format!("Unsupported value: {f:?}: not configured on this cluster"),
            ));
            return;
        }
    }
    match policy.as_str() {
        "SingleStack" => {
            if families.len() > 1 {
                causes.push(Cause::invalid(
                    "spec.ipFamilies",
                    "Invalid value: when ipFamilyPolicy is SingleStack, only one ipFamily may be specified",
                ));
                return;
            }
        }
        _ => {
            if families.len() == 1 {
                if let Some(other) = configured.iter().find(|f| **f != families[0]) {
                    families.push(other.to_string());
                } else if policy == "RequireDualStack" {
                    causes.push(Cause::invalid(
                        "spec.ipFamilyPolicy",
                        "Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services",
                    ));
                    return;
                }
            }
        }
    }
    spec.ip_families = Some(families.clone());
    if headless {
        spec.cluster_ip = Some("None".into());
        spec.cluster_ips = Some(vec!["None".into()]);
        return;
    }
    let mut assigned = Vec::new();
    for (i, family) in families.iter().enumerate() {
        let Some(cidr) = cidr_for(net, family) else {
            continue;
        };
        match requested.get(i) {
            Some(ip) => {
                let Ok(addr) = ip.parse::<IpAddr>() else {
                    causes.push(Cause::invalid(
                        format!("spec.clusterIPs[{i}]"),
                        format!("Invalid value: {ip:?}: must be a valid IP address"),
                    ));
                    return;
                };
                let kept = old_ips.contains(ip);
                if family_of(ip) != Some(family.as_str()) || !cidr.contains(&addr) {
                    causes.push(Cause::invalid(format!("spec.clusterIPs[{i}]"), format!("Invalid value: {ip:?}: failed to allocate IP {ip}: provided IP is not in the valid range. The range of valid IPs is {cidr}")));
                    return;
                }
                if !kept && in_use.cluster_ips.contains(&addr) {
                    causes.push(Cause::invalid(
                        format!("spec.clusterIPs[{i}]"),
                        format!("Invalid value: {ip:?}: failed to allocate IP {ip}: provided IP is already allocated"),
                    ));
                    return;
                }
                assigned.push(ip.clone());
            }
            None => match allocate_ip(cidr, &in_use.cluster_ips) {
                Some(ip) => assigned.push(ip.to_string()),
                None => {
                    causes.push(Cause::invalid(format!("spec.clusterIPs[{i}]"), "range is full"));
                    return;
                }
            },
        }
    }
    spec.cluster_ip = assigned.first().cloned();
    spec.cluster_ips = Some(assigned);
}

/// (name, protocol, resolved port) of each Service port for one Pod: endpoints with
/// equal resolved ports share a slice.
type ResolvedPorts = Vec<(Option<String>, String, i32)>;

/// One EndpointSlice the controller wants for a Service.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredSlice {
    /// `IPv4` or `IPv6`.
    pub address_type: String,
    /// Ports (resolved target ports).
    pub ports: Vec<EndpointPort>,
    /// Endpoints, sorted by pod name.
    pub endpoints: Vec<Endpoint>,
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(pod: &Pod, family: &str) -> Option<String> {
    let status = pod.status.as_ref()?;
    let ips: Vec<String> = match &status.pod_ips {
        Some(list) if !list.is_empty() => list.iter().map(|p| p.ip.clone()).collect(),
        _ => status.pod_ip.iter().cloned().collect(),
    };
    ips.into_iter().find(|ip| family_of(ip) == Some(family))
}

fn resolve_target_port(pod: &Pod, target: &IntOrString) -> Option<i32> {
    match target {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(name) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

/// The EndpointSlices the endpointslice controller maintains for `svc`, from the Pods of
/// its namespace (`pods`). Empty when the Service has no selector (then slices are the
/// user's business). A Service selecting nothing gets one empty slice per family.
pub fn desired_endpoint_slices(svc: &Service, pods: &[Pod]) -> Vec<DesiredSlice> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let selector_map: serde_json::Map<String, Value> = selector.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let selector = LabelSelector::from_map(&selector_map);
    let families = spec
        .ip_families
        .clone()
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| vec!["IPv4".into()]);
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let mut selected: Vec<&Pod> = pods
        .iter()
        .filter(|p| {
            let labels = p.metadata.labels.as_ref().map(|l| json!(l));
            selector.matches(labels.as_ref())
        })
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .collect();
    selected.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));

    let mut slices: Vec<DesiredSlice> = Vec::new();
    for family in &families {
        let mut groups: BTreeMap<ResolvedPorts, Vec<Endpoint>> = BTreeMap::new();
        for pod in &selected {
            let Some(ip) = pod_ip(pod, family) else {
                continue;
            };
            let ports: Vec<(Option<String>, String, i32)> = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|sp| {
                    let target = sp.target_port.clone().unwrap_or(IntOrString::Int(sp.port));
                    let port = resolve_target_port(pod, &target)?;
                    Some((
                        sp.name.clone(),
                        sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        port,
                    ))
                })
                .collect();
            let terminating = pod.metadata.deletion_timestamp.is_some();
            let ready = pod_ready(pod);
            let endpoint = Endpoint {
                addresses: vec![ip],
                conditions: Some(EndpointConditions {
                    ready: Some((ready || publish_not_ready) && !terminating),
                    serving: Some(ready || publish_not_ready),
                    terminating: Some(terminating),
                }),
                node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    namespace: pod.metadata.namespace.clone(),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            groups.entry(ports).or_default().push(endpoint);
        }
        if groups.is_empty() {
            slices.push(DesiredSlice {
                address_type: family.clone(),
                ports: Vec::new(),
                endpoints: Vec::new(),
            });
        }
        for (ports, endpoints) in groups {
            let ports = ports
                .into_iter()
                .map(|(name, protocol, port)| EndpointPort {
                    name: Some(name.unwrap_or_default()),
                    protocol: Some(protocol),
                    port: Some(port),
                    app_protocol: None,
                })
                .collect();
            slices.push(DesiredSlice {
                address_type: family.clone(),
                ports,
                endpoints,
            });
        }
    }
    slices
}

/// Label kube-controller-manager puts on the slices it manages.
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

/// The full EndpointSlice object for `desired`, owned by `svc` (name left to the caller).
pub fn endpoint_slice_object(svc: &Service, desired: &DesiredSlice) -> Value {
    let name = svc.metadata.name.clone().unwrap_or_default();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "namespace": svc.metadata.namespace,
            "generateName": format!("{name}-"),
            "labels": {
                "kubernetes.io/service-name": name,
                "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
            },
            "ownerReferences": [{
                "apiVersion": "v1",
                "kind": "Service",
                "name": name,
                "uid": svc.metadata.uid,
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "addressType": desired.address_type,
        "endpoints": desired.endpoints,
        "ports": if desired.ports.is_empty() { Value::Null } else { json!(desired.ports) },
    })
}

/// Whether an existing slice already has `desired`'s content.
pub fn slice_matches(existing: &Value, desired_object: &Value) -> bool {
    let norm = |v: &Value| if v.is_null() { json!([]) } else { v.clone() };
    existing["addressType"] == desired_object["addressType"]
        && norm(&existing["endpoints"]) == norm(&desired_object["endpoints"])
        && norm(&existing["ports"]) == norm(&desired_object["ports"])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(v: Value) -> Service {
        serde_json::from_value(v).expect("service")
    }

    fn lb() -> Service {
        svc(json!({"metadata": {"name": "web", "namespace": "default", "uid": "u1"},
            "spec": {"type": "LoadBalancer", "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}, {"name": "metrics", "port": 9090}]}}))
    }

    #[test]
    fn defaults_and_allocates_for_load_balancer() {
        let mut s = lb();
        default_service(&mut s, None, &InUse::default(), &ServiceNetwork::default()).expect("valid");
        let spec = s.spec.expect("spec");
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.2"));
        assert_eq!(spec.ip_families, Some(vec!["IPv4".to_string()]));
        assert_eq!(spec.ip_family_policy.as_deref(), Some("SingleStack"));
        assert_eq!(spec.session_affinity.as_deref(), Some("None"));
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Cluster"));
        assert_eq!(spec.internal_traffic_policy.as_deref(), Some("Cluster"));
        let ports = spec.ports.expect("ports");
        assert_eq!(ports[0].node_port, Some(30000));
        assert_eq!(ports[1].node_port, Some(30001));
        assert_eq!(ports[1].protocol.as_deref(), Some("TCP"));
        assert_eq!(ports[1].target_port, Some(IntOrString::Int(9090)));
    }

    #[test]
    fn avoids_used_addresses_and_rejects_collisions() {
        let mut first = lb();
        default_service(&mut first, None, &InUse::default(), &ServiceNetwork::default()).expect("valid");
        let mut in_use = InUse::default();
        in_use.add_json(&serde_json::to_value(&first).expect("json"));
        let mut second = lb();
        default_service(&mut second, None, &in_use, &ServiceNetwork::default()).expect("valid");
        let spec = second.spec.expect("spec");
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.3"));
        assert_eq!(spec.ports.expect("ports")[0].node_port, Some(30002));

        let mut colliding = lb();
        if let Some(p) = colliding.spec.as_mut().and_then(|s| s.ports.as_mut()) {
            p[0].node_port = Some(30000);
        }
        let causes = default_service(&mut colliding, None, &in_use, &ServiceNetwork::default()).expect_err("collision");
        assert_eq!(causes[0].field, "spec.ports[0].nodePort");
        assert!(causes[0].message.contains("already allocated"));
    }

    #[test]
    fn update_keeps_allocations_and_type_change_releases_ports() {
        let mut created = lb();
        default_service(&mut created, None, &InUse::default(), &ServiceNetwork::default()).expect("valid");
        let mut updated = lb();
        default_service(
            &mut updated,
            Some(&created),
            &InUse::default(),
            &ServiceNetwork::default(),
        )
        .expect("valid");
        assert_eq!(
            updated.spec.as_ref().and_then(|s| s.cluster_ip.clone()),
            created.spec.as_ref().and_then(|s| s.cluster_ip.clone())
        );
        assert_eq!(
            updated
                .spec
                .as_ref()
                .and_then(|s| s.ports.as_ref())
                .map(|p| p[0].node_port),
            Some(Some(30000))
        );
        let mut to_cluster_ip = updated.clone();
        if let Some(s) = to_cluster_ip.spec.as_mut() {
            s.type_ = Some("ClusterIP".into());
        }
        default_service(
            &mut to_cluster_ip,
            Some(&updated),
            &InUse::default(),
            &ServiceNetwork::default(),
        )
        .expect("valid");
        let spec = to_cluster_ip.spec.expect("spec");
        assert!(spec.ports.expect("ports").iter().all(|p| p.node_port.is_none()));
        assert_eq!(spec.external_traffic_policy, None);
        let mut changed_ip = updated.clone();
        if let Some(s) = changed_ip.spec.as_mut() {
            s.cluster_ip = Some("10.96.0.50".into());
            s.cluster_ips = None;
        }
        assert!(
            default_service(
                &mut changed_ip,
                Some(&updated),
                &InUse::default(),
                &ServiceNetwork::default()
            )
            .is_err()
        );
    }

    #[test]
    fn dual_stack_policies() {
        let mut s = svc(
            json!({"metadata": {"name": "d"}, "spec": {"ipFamilyPolicy": "RequireDualStack", "ports": [{"port": 80}]}}),
        );
        default_service(&mut s, None, &InUse::default(), &ServiceNetwork::default()).expect("valid");
        let spec = s.spec.expect("spec");
        assert_eq!(spec.ip_families, Some(vec!["IPv4".to_string(), "IPv6".to_string()]));
        assert_eq!(
            spec.cluster_ips,
            Some(vec!["10.96.0.2".to_string(), "fd00:10:96::2".to_string()])
        );
        let mut v6 = svc(
            json!({"metadata": {"name": "d"}, "spec": {"ipFamilies": ["IPv6"], "ipFamilyPolicy": "PreferDualStack", "ports": [{"port": 80}]}}),
        );
        default_service(&mut v6, None, &InUse::default(), &ServiceNetwork::default()).expect("valid");
        assert_eq!(
            v6.spec.expect("spec").ip_families,
            Some(vec!["IPv6".to_string(), "IPv4".to_string()])
        );
        let v4_only = ServiceNetwork {
            ipv6: None,
            ..ServiceNetwork::default()
        };
        let mut req = svc(
            json!({"metadata": {"name": "d"}, "spec": {"ipFamilyPolicy": "RequireDualStack", "ports": [{"port": 80}]}}),
        );
        assert!(default_service(&mut req, None, &InUse::default(), &v4_only).is_err());
    }

    #[test]
    fn validation_reports_causes() {
        let mut s =
            svc(json!({"metadata": {"name": "bad"}, "spec": {"ports": [{"port": 80}, {"port": 70000, "name": "x"}]}}));
        let causes = default_service(&mut s, None, &InUse::default(), &ServiceNetwork::default()).expect_err("invalid");
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert!(fields.contains(&"spec.ports[0].name"));
        assert!(fields.contains(&"spec.ports[1].port"));
    }

    fn pod(name: &str, ip: &str, ready: bool, node: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"podIPs": [{"ip": ip}], "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        }))
        .expect("pod")
    }

    #[test]
    fn endpoint_slices_from_pods() {
        let mut s = lb();
        default_service(&mut s, None, &InUse::default(), &ServiceNetwork::default()).expect("valid");
        let mut terminating = pod("c", "10.0.0.3", true, "n2");
        terminating.metadata.deletion_timestamp = serde_json::from_value(json!("2026-01-01T00:00:00Z")).ok();
        let other: Pod = serde_json::from_value(
            json!({"metadata": {"name": "x", "labels": {"app": "db"}}, "status": {"podIP": "10.0.0.9"}}),
        )
        .expect("pod");
        let no_ip = Pod {
            status: None,
            ..pod("d", "", true, "n1")
        };
        let pods = vec![
            pod("b", "10.0.0.2", false, "n1"),
            pod("a", "10.0.0.1", true, "n1"),
            terminating,
            other,
            no_ip,
            pod("v6", "fd00::1", true, "n1"),
        ];
        let slices = desired_endpoint_slices(&s, &pods);
        assert_eq!(slices.len(), 1);
        let slice = &slices[0];
        assert_eq!(slice.address_type, "IPv4");
        let ports: Vec<(Option<String>, Option<i32>)> = slice.ports.iter().map(|p| (p.name.clone(), p.port)).collect();
        assert_eq!(
            ports,
            vec![(Some("http".into()), Some(8080)), (Some("metrics".into()), Some(9090))]
        );
        let names: Vec<String> = slice
            .endpoints
            .iter()
            .filter_map(|e| e.target_ref.as_ref()?.name.clone())
            .collect();
        assert_eq!(names, vec!["a", "b", "c"]);
        let cond = |i: usize| slice.endpoints[i].conditions.clone().expect("conditions");
        assert_eq!(
            (cond(0).ready, cond(0).serving, cond(0).terminating),
            (Some(true), Some(true), Some(false))
        );
        assert_eq!((cond(1).ready, cond(1).serving), (Some(false), Some(false)));
        assert_eq!(
            (cond(2).ready, cond(2).serving, cond(2).terminating),
            (Some(false), Some(true), Some(true))
        );
        assert_eq!(slice.endpoints[0].node_name.as_deref(), Some("n1"));

        let empty = desired_endpoint_slices(&s, &[]);
        assert_eq!(empty.len(), 1);
        assert!(empty[0].endpoints.is_empty());
        let object = endpoint_slice_object(&s, &slices[0]);
        assert_eq!(object["metadata"]["labels"]["kubernetes.io/service-name"], "web");
        assert_eq!(object["metadata"]["ownerReferences"][0]["uid"], "u1");
        assert!(slice_matches(&object, &object));
    }
}
