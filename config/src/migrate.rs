//! MetalLB's layer-2 configuration rewritten as Herald's (`herald-controller migrate`).
//!
//! MetalLB's `metallb.io/v1beta1` `IPAddressPool` and `L2Advertisement` have the same fields as
//! Herald's, so most of a migration is a change of API group and namespace; Services keep
//! their spec and have their `metallb.io/…` / `metallb.universe.tf/…` annotations renamed.
//! What matters is everything else: an object Herald cannot serve as MetalLB did is refused
//! with the reason (BGP, BFD, communities, fields Herald does not have), a soft setting Herald
//! has no equivalent for is dropped with a note, and every behaviour difference that applies to
//! the input is listed, so nothing changes silently.
//!
//! The input is whatever a user has: files written for MetalLB, or `kubectl get … -o yaml`
//! output (a `List` counts by its items; what the API server fills in is dropped).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Map, Value, json};

use crate::address::{AddressError, parse_address_entry};
use crate::annotations::{
    ADDRESS_POOL, ALLOW_SHARED_IP, IP_ALLOCATED_FROM_POOL, LOAD_BALANCER_IPS, parse_service_annotations,
};

/// The namespace MetalLB reads its configuration from by default.
pub const METALLB_NAMESPACE: &str = "metallb-system";
const METALLB_API_VERSION: &str = "metallb.io/v1beta1";
const METALLB_PREFIXES: [&str; 2] = ["metallb.io/", "metallb.universe.tf/"];

/// Where the configuration comes from and goes to.
#[derive(Debug, Clone)]
pub struct Namespaces<'a> {
    /// MetalLB's namespace: objects elsewhere were never served by MetalLB.
    pub from: &'a str,
    /// Herald's controller namespace.
    pub to: &'a str,
}

/// One object and something to know about it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Note {
    /// `Kind namespace/name`, or a description of the objects concerned.
    pub object: String,
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

/// The result of a migration.
#[derive(Debug, Default)]
pub struct Migration {
    /// Herald objects to apply, in input order.
    pub objects: Vec<Value>,
    /// MetalLB objects Herald cannot serve as MetalLB did; none of them is in `objects`.
    pub refused: Vec<Note>,
    /// Behaviour that differs once Herald serves the migrated objects (including settings
    /// that were dropped).
    pub differences: Vec<Note>,
    /// Objects that are not MetalLB configuration, or need no change.
    pub left_out: Vec<Note>,
}

/// Rewrites MetalLB configuration and Services as Herald's; see the module documentation.
pub fn migrate(documents: &[Value], namespaces: &Namespaces) -> Migration {
    let mut migration = Migration::default();
    let mut auto_pools = Vec::new();
    let mut requesting_services = Vec::new();
    for doc in crate::yaml::objects(documents) {
        let Some(kind) = doc["kind"].as_str() else {
            migration.left_out.push(note("a document", "has no kind".into()));
            continue;
        };
        let api_version = doc["apiVersion"].as_str().unwrap_or_default();
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        let namespace = doc["metadata"]["namespace"].as_str();
        let label = match namespace {
            Some(ns) => format!("{kind} {ns}/{name}"),
            None => format!("{kind} {name}"),
        };
        let is_metallb = api_version.starts_with("metallb.io/");
        match (kind, is_metallb) {
            ("IPAddressPool" | "L2Advertisement", true) => {
                let result = if api_version != METALLB_API_VERSION {
                    Err(format!(
                        "apiVersion {api_version}: migrate reads {METALLB_API_VERSION}, the version MetalLB serves these kinds at"
                    ))
                } else if name.is_empty() {
                    Err("has no metadata.name, so it cannot be applied".into())
                } else if namespace.is_some_and(|ns| ns != namespaces.from) {
                    Err(format!(
                        "MetalLB reads its configuration only from {} (--from-namespace), so it never served this object",
                        namespaces.from
                    ))
                } else if kind == "IPAddressPool" {
                    pool(doc, &label, &mut migration.differences)
                } else {
                    advertisement(doc, &label, &mut migration.differences)
                };
                match result {
                    Ok(spec) => {
                        if kind == "IPAddressPool"
                            && spec["autoAssign"] != Value::Bool(false)
                            && spec.get("serviceAllocation").is_none()
                        {
                            auto_pools.push(name.to_string());
                        }
                        let metadata = metadata(&doc["metadata"], Some(namespaces.to), |_| true);
                        migration.objects.push(json!({
                            "apiVersion": format!("{}/{}", crate::GROUP, crate::VERSION),
                            "kind": kind,
                            "metadata": metadata,
                            "spec": spec,
                        }));
                    }
                    Err(reason) => migration.refused.push(note(&label, reason)),
                }
            }
            (_, true) => match refusal(kind) {
                Refusal::Refuse(reason) => migration.refused.push(note(&label, reason.into())),
                Refusal::LeaveOut(reason) => migration.left_out.push(note(&label, reason.into())),
            },
            ("ConfigMap", false) if namespace.unwrap_or(namespaces.from) == namespaces.from && name == "config" => {
                migration.refused.push(note(
                    &label,
                    "MetalLB's ConfigMap configuration (before v0.13) is not read by migrate: convert it to metallb.io custom resources with MetalLB's configmaptocrs tool first, then migrate those".into(),
                ));
            }
            ("Service", false) if api_version == "v1" => match service(doc, &label, &mut migration.differences) {
                ServiceOutcome::Rewritten(service, requests) => {
                    if requests {
                        requesting_services.push(label.clone());
                    }
                    migration.objects.push(service);
                }
                ServiceOutcome::Unchanged => migration
                    .left_out
                    .push(note(&label, "no MetalLB annotations: nothing to change".into())),
                ServiceOutcome::Refused(reason) => migration.refused.push(note(&label, reason)),
            },
            _ => migration
                .left_out
                .push(note(&label, "not MetalLB configuration".into())),
        }
    }
    auto_pools.sort();
    if auto_pools.len() > 1 {
        migration.differences.push(note(
            &format!("IPAddressPools {}", auto_pools.join(", ")),
            "Services that name no pool get an address from the first of these pools by name that has one free; MetalLB picks among them in no defined order".into(),
        ));
    }
    if !requesting_services.is_empty() {
        migration.differences.push(note(
            &requesting_services.join(", "),
            "when a change to a requested address or pool cannot be honoured, Herald keeps the Service's current address and says why in an Event; MetalLB removes the address first".into(),
        ));
    }
    migration
}

fn note(object: &str, message: String) -> Note {
    Note {
        object: object.to_string(),
        message,
    }
}

enum Refusal {
    Refuse(&'static str),
    LeaveOut(&'static str),
}

/// What happens to a `metallb.io` kind other than a pool or an L2 advertisement.
fn refusal(kind: &str) -> Refusal {
    match kind {
        "BGPPeer" => Refusal::Refuse(
            "Herald announces addresses with ARP and NDP on the nodes' links (layer 2) and does not speak BGP; keep MetalLB (or another BGP speaker) for routed announcements",
        ),
        "BGPAdvertisement" => Refusal::Refuse(
            "Herald does not speak BGP, so there is nothing to advertise over it; announce the pools with an L2Advertisement instead if the nodes share a layer-2 segment with the clients",
        ),
        "Community" => Refusal::Refuse("BGP communities have no meaning without BGP, which Herald does not speak"),
        "BFDProfile" => Refusal::Refuse(
            "BFD profiles tune BGP sessions, which Herald does not have; Herald detects node loss with its own probes between speakers",
        ),
        "FRRConfiguration" => Refusal::Refuse("FRR configuration is for BGP, which Herald does not speak"),
        "ServiceL2Status" | "ServiceBGPStatus" => Refusal::LeaveOut(
            "status written by MetalLB's speakers; Herald's speakers write their own herald.io ServiceL2Status",
        ),
        _ => Refusal::Refuse("a metallb.io kind Herald has no equivalent for"),
    }
}

/// Metadata for the new object: name, labels and annotations the user wrote; what the API
/// server fills in (uid, resourceVersion, managedFields, …) and kubectl's record of the last
/// apply are dropped.
fn metadata(metadata: &Value, namespace: Option<&str>, keep_annotation: impl Fn(&str) -> bool) -> Value {
    let mut out = Map::new();
    out.insert("name".into(), metadata["name"].clone());
    if let Some(ns) = namespace.or(metadata["namespace"].as_str()) {
        out.insert("namespace".into(), ns.into());
    }
    if let Some(labels) = metadata["labels"].as_object().filter(|l| !l.is_empty()) {
        out.insert("labels".into(), Value::Object(labels.clone()));
    }
    let annotations: Map<String, Value> = metadata["annotations"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| *k != "kubectl.kubernetes.io/last-applied-configuration" && keep_annotation(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !annotations.is_empty() {
        out.insert("annotations".into(), Value::Object(annotations));
    }
    Value::Object(out)
}

/// The spec's fields, refusing any Herald does not have (`allowed`, and for nested objects
/// `nested` names the allowed fields of each).
fn known_fields(
    spec: &Value,
    allowed: &[&str],
    nested: &[(&str, &[&str])],
    dropped: &[&str],
) -> Result<Map<String, Value>, String> {
    let empty = Map::new();
    // An object without a spec is one with every field at its default, as the API server
    // would store it.
    let spec = match spec {
        Value::Null => &empty,
        Value::Object(spec) => spec,
        _ => return Err("spec is not an object".into()),
    };
    let mut out = Map::new();
    for (key, value) in spec {
        if dropped.contains(&key.as_str()) {
            continue;
        }
        if !allowed.contains(&key.as_str()) {
            return Err(format!(
                "spec.{key}: Herald has no such field, and leaving it out would change what the object does"
            ));
        }
        if let Some((_, fields)) = nested.iter().find(|(k, _)| *k == key)
            && let Some(inner) = value.as_object()
            && let Some(unknown) = inner.keys().find(|k| !fields.contains(&k.as_str()))
        {
            return Err(format!(
                "spec.{key}.{unknown}: Herald has no such field, and leaving it out would change what the object does"
            ));
        }
        out.insert(key.clone(), value.clone());
    }
    Ok(out)
}

fn pool(doc: &Value, label: &str, differences: &mut Vec<Note>) -> Result<Value, String> {
    let mut spec = known_fields(
        &doc["spec"],
        &["addresses", "autoAssign", "avoidBuggyIPs", "serviceAllocation"],
        &[(
            "serviceAllocation",
            &["priority", "namespaces", "namespaceSelectors", "serviceSelectors"],
        )],
        &[],
    )?;
    // MetalLB silently widens a CIDR with host bits to its network; Herald refuses it, so the
    // migrated pool names the network MetalLB actually served.
    if let Some(addresses) = spec.get_mut("addresses").and_then(Value::as_array_mut) {
        for entry in addresses.iter_mut() {
            let Some(text) = entry.as_str() else { continue };
            if let Err(AddressError::HostBitsSet { network, .. }) = parse_address_entry(text) {
                differences.push(note(
                    label,
                    format!(
                        "{text:?} has host bits set: MetalLB serves the whole prefix, so it is written as {network} (Herald refuses host bits)"
                    ),
                ));
                *entry = Value::String(network.to_string());
            }
        }
    }
    Ok(Value::Object(spec))
}

fn advertisement(doc: &Value, label: &str, differences: &mut Vec<Note>) -> Result<Value, String> {
    let spec = known_fields(
        &doc["spec"],
        &[
            "ipAddressPools",
            "ipAddressPoolSelectors",
            "nodeSelectors",
            "interfaces",
            "serviceSelectors",
        ],
        &[],
        &["preferredNodeSelectors"],
    )?;
    if doc["spec"]
        .get("preferredNodeSelectors")
        .and_then(Value::as_array)
        .is_some_and(|p| !p.is_empty())
    {
        differences.push(note(
            label,
            "spec.preferredNodeSelectors dropped: Herald spreads addresses over the eligible nodes by hashing, and moves an address only when its owner fails; restrict where it is announced with nodeSelectors".into(),
        ));
    }
    Ok(Value::Object(spec))
}

enum ServiceOutcome {
    /// The rewritten Service, and whether it requests an address or a pool.
    Rewritten(Value, bool),
    Unchanged,
    Refused(String),
}

/// MetalLB's annotations and their Herald names; `None`: written by MetalLB's controller,
/// Herald's writes its own.
fn herald_annotation(suffix: &str) -> Option<Option<&'static str>> {
    match suffix {
        "loadBalancerIPs" => Some(Some(LOAD_BALANCER_IPS)),
        "address-pool" => Some(Some(ADDRESS_POOL)),
        "allow-shared-ip" => Some(Some(ALLOW_SHARED_IP)),
        "ip-allocated-from-pool" => Some(None),
        _ => None,
    }
}

fn service(doc: &Value, label: &str, differences: &mut Vec<Note>) -> ServiceOutcome {
    let annotations: BTreeMap<String, String> = doc["metadata"]["annotations"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect();
    if doc["spec"]["type"] == "LoadBalancer"
        && let Some(class) = doc["spec"]["loadBalancerClass"].as_str()
        && class != crate::DEFAULT_LB_CLASS
    {
        differences.push(note(
            label,
            format!(
                "spec.loadBalancerClass is {class:?}, which cannot be changed on an existing Service: run herald-controller and herald-speaker with --lb-class {class}, or re-create the Service with class {} or none",
                crate::DEFAULT_LB_CLASS
            ),
        ));
    }
    let metallb: Vec<(&String, &str)> = annotations
        .keys()
        .filter_map(|k| METALLB_PREFIXES.iter().find_map(|p| k.strip_prefix(p)).map(|s| (k, s)))
        .collect();
    if metallb.is_empty() {
        return ServiceOutcome::Unchanged;
    }
    // Herald's own reading of the annotations judges conflicts (two spellings that disagree,
    // both an annotation and spec.loadBalancerIP): what it refuses, migrate refuses.
    let parsed = match parse_service_annotations(&annotations, doc["spec"]["loadBalancerIP"].as_str()) {
        Ok(parsed) => parsed,
        Err(e) => return ServiceOutcome::Refused(e.to_string()),
    };
    let mut renamed = BTreeMap::new();
    for (key, suffix) in &metallb {
        match herald_annotation(suffix) {
            Some(Some(herald)) => {
                renamed.insert(herald.to_string(), annotations[*key].clone());
            }
            Some(None) => {}
            None => differences.push(note(
                label,
                format!("annotation {key} has no Herald equivalent and is kept as is; Herald ignores it"),
            )),
        }
    }
    let known: BTreeSet<&String> = metallb
        .iter()
        .filter(|(_, suffix)| herald_annotation(suffix).is_some())
        .map(|(k, _)| *k)
        .collect();
    let mut metadata = metadata(&doc["metadata"], None, |k| {
        !known.contains(&k.to_string()) && k != IP_ALLOCATED_FROM_POOL
    });
    let map = metadata.as_object_mut().expect("metadata is an object");
    let annotations = map
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .expect("annotations is an object");
    for (key, value) in renamed {
        annotations.insert(key, Value::String(value));
    }
    if annotations.is_empty() {
        map.remove("annotations");
    }
    let mut service = Map::new();
    service.insert("apiVersion".into(), "v1".into());
    service.insert("kind".into(), "Service".into());
    service.insert("metadata".into(), metadata);
    service.insert("spec".into(), doc["spec"].clone());
    let requests = !parsed.requested_ips.is_empty() || parsed.pool.is_some();
    ServiceOutcome::Rewritten(Value::Object(service), requests)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: Namespaces = Namespaces {
        from: METALLB_NAMESPACE,
        to: "herald-system",
    };

    fn run(yaml: &str) -> Migration {
        migrate(&crate::yaml::documents(yaml).unwrap(), &NS)
    }

    #[test]
    fn a_pool_and_an_advertisement_change_group_and_namespace_and_keep_their_spec() {
        let m = run(r#"
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata:
  name: first
  namespace: metallb-system
  labels: {tier: edge}
  uid: 0f6c
  resourceVersion: "812"
  creationTimestamp: "2026-01-01T00:00:00Z"
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: "{}"
    owner: netops
spec:
  addresses: [192.168.10.0/24, "192.168.11.1-192.168.11.9"]
  autoAssign: false
  serviceAllocation: {priority: 10, namespaces: [web]}
status: {assignedIPv4: 3}
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: edge, namespace: metallb-system}
spec:
  ipAddressPools: [first]
  interfaces: [eth1]
  nodeSelectors: [{matchLabels: {edge: "true"}}]
"#);
        assert!(m.refused.is_empty() && m.differences.is_empty(), "{m:?}");
        assert_eq!(
            m.objects,
            vec![
                json!({"apiVersion": "herald.io/v1beta1", "kind": "IPAddressPool",
                       "metadata": {"name": "first", "namespace": "herald-system",
                                    "labels": {"tier": "edge"}, "annotations": {"owner": "netops"}},
                       "spec": {"addresses": ["192.168.10.0/24", "192.168.11.1-192.168.11.9"],
                                "autoAssign": false,
                                "serviceAllocation": {"priority": 10, "namespaces": ["web"]}}}),
                json!({"apiVersion": "herald.io/v1beta1", "kind": "L2Advertisement",
                       "metadata": {"name": "edge", "namespace": "herald-system"},
                       "spec": {"ipAddressPools": ["first"], "interfaces": ["eth1"],
                                "nodeSelectors": [{"matchLabels": {"edge": "true"}}]}}),
            ]
        );
    }

    #[test]
    fn bgp_kinds_are_refused_each_with_its_reason_and_the_rest_still_migrates() {
        let m = run(r#"
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: tor, namespace: metallb-system}
spec: {myASN: 64500, peerASN: 64501, peerAddress: 10.0.0.1}
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: bgp, namespace: metallb-system}
---
apiVersion: metallb.io/v1beta1
kind: Community
metadata: {name: c, namespace: metallb-system}
---
apiVersion: metallb.io/v1beta1
kind: BFDProfile
metadata: {name: fast, namespace: metallb-system}
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: p}
spec: {addresses: [10.1.0.0/28]}
"#);
        let refused: Vec<&str> = m.refused.iter().map(|n| n.object.as_str()).collect();
        assert_eq!(
            refused,
            [
                "BGPPeer metallb-system/tor",
                "BGPAdvertisement metallb-system/bgp",
                "Community metallb-system/c",
                "BFDProfile metallb-system/fast"
            ]
        );
        assert!(m.refused[0].message.contains("does not speak BGP"), "{}", m.refused[0]);
        assert!(m.refused[3].message.contains("BFD"), "{}", m.refused[3]);
        assert_eq!(m.objects.len(), 1);
        assert_eq!(m.objects[0]["metadata"]["namespace"], "herald-system");
    }

    #[test]
    fn fields_herald_lacks_refuse_the_object_and_preferred_nodes_are_dropped_with_a_note() {
        let m = run(r#"
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: p}
spec: {addresses: [10.1.0.0/28], serviceAllocation: {priority: 1, weight: 3}}
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: a}
spec: {ipAddressPools: [p], futureField: true}
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: b}
spec:
  preferredNodeSelectors: [{weight: 10, preference: {matchLabels: {zone: a}}}]
"#);
        assert_eq!(m.refused.len(), 2, "{m:?}");
        assert!(
            m.refused[0]
                .message
                .starts_with("spec.serviceAllocation.weight: Herald has no such field")
        );
        assert!(
            m.refused[1]
                .message
                .starts_with("spec.futureField: Herald has no such field")
        );
        assert_eq!(m.objects.len(), 1);
        assert_eq!(m.objects[0]["spec"], json!({}));
        assert_eq!(m.differences.len(), 1);
        assert!(
            m.differences[0]
                .message
                .starts_with("spec.preferredNodeSelectors dropped")
        );
    }

    #[test]
    fn objects_outside_metallbs_namespace_and_other_versions_are_refused() {
        let m = run(r#"
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: stray, namespace: default}
spec: {addresses: [10.1.0.0/28]}
---
apiVersion: metallb.io/v1alpha1
kind: IPAddressPool
metadata: {name: old}
spec: {addresses: [10.1.0.0/28]}
"#);
        assert_eq!(m.refused.len(), 2);
        assert!(m.refused[0].message.contains("only from metallb-system"));
        assert!(m.refused[1].message.contains("apiVersion metallb.io/v1alpha1"));
        assert!(m.objects.is_empty());
    }

    #[test]
    fn a_cidr_with_host_bits_becomes_the_network_metallb_served() {
        let m = run(
            "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: p}\nspec: {addresses: [10.20.30.40/24]}\n",
        );
        assert_eq!(m.objects[0]["spec"]["addresses"], json!(["10.20.30.0/24"]));
        assert_eq!(m.differences.len(), 1);
        assert!(m.differences[0].message.contains("written as 10.20.30.0/24"));
    }

    #[test]
    fn several_auto_assign_pools_are_told_how_herald_chooses() {
        let m = run(r#"
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: b}
spec: {addresses: [10.1.0.0/28]}
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: a}
spec: {addresses: [10.2.0.0/28]}
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: manual}
spec: {addresses: [10.3.0.0/28], autoAssign: false}
"#);
        assert_eq!(m.differences.len(), 1, "{m:?}");
        assert_eq!(m.differences[0].object, "IPAddressPools a, b");
    }

    #[test]
    fn services_get_herald_annotations_and_keep_everything_else() {
        let m = run(r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata:
    name: web
    namespace: shop
    resourceVersion: "9"
    annotations:
      metallb.universe.tf/loadBalancerIPs: 192.168.10.7
      metallb.universe.tf/allow-shared-ip: shop
      metallb.io/ip-allocated-from-pool: first
      metallb.universe.tf/unknown-knob: "x"
      team: shop
  spec: {type: LoadBalancer, ports: [{port: 80, protocol: TCP}], selector: {app: web}}
  status: {loadBalancer: {ingress: [{ip: 192.168.10.7}]}}
- apiVersion: v1
  kind: Service
  metadata: {name: plain, namespace: shop}
  spec: {type: ClusterIP}
"#);
        assert!(m.refused.is_empty(), "{m:?}");
        assert_eq!(
            m.objects,
            vec![json!({"apiVersion": "v1", "kind": "Service",
                        "metadata": {"name": "web", "namespace": "shop",
                                     "annotations": {"herald.io/loadBalancerIPs": "192.168.10.7",
                                                     "herald.io/allow-shared-ip": "shop",
                                                     "metallb.universe.tf/unknown-knob": "x",
                                                     "team": "shop"}},
                        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}],
                                 "selector": {"app": "web"}}})]
        );
        let differences: Vec<String> = m.differences.iter().map(ToString::to_string).collect();
        assert_eq!(differences.len(), 2, "{differences:?}");
        assert!(differences[0].contains("unknown-knob has no Herald equivalent"));
        assert!(differences[1].starts_with("Service shop/web: when a change to a requested address"));
        assert_eq!(
            m.left_out,
            [note(
                "Service shop/plain",
                "no MetalLB annotations: nothing to change".into()
            )]
        );
    }

    #[test]
    fn a_service_herald_would_refuse_is_refused_with_herald_message() {
        let m = run(r#"
apiVersion: v1
kind: Service
metadata:
  name: both
  annotations: {metallb.io/loadBalancerIPs: 10.0.0.1, metallb.universe.tf/loadBalancerIPs: 10.0.0.2}
spec: {type: LoadBalancer}
"#);
        assert_eq!(m.refused.len(), 1);
        assert!(m.refused[0].message.contains("disagree"), "{}", m.refused[0]);
        assert!(m.objects.is_empty());
    }

    #[test]
    fn a_service_of_another_class_is_told_how_to_keep_it() {
        let m = run(r#"
apiVersion: v1
kind: Service
metadata: {name: s, namespace: default, annotations: {metallb.io/address-pool: first}}
spec: {type: LoadBalancer, loadBalancerClass: metallb}
"#);
        assert!(
            m.differences[0].message.contains("--lb-class metallb"),
            "{:?}",
            m.differences
        );
        assert_eq!(
            m.objects[0]["metadata"]["annotations"],
            json!({"herald.io/address-pool": "first"})
        );
    }

    #[test]
    fn the_legacy_configmap_and_other_kinds() {
        let m = run(r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: config, namespace: metallb-system}
data: {config: "address-pools: []"}
---
apiVersion: metallb.io/v1beta1
kind: ServiceL2Status
metadata: {name: l2-x, namespace: metallb-system}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: controller, namespace: metallb-system}
"#);
        assert_eq!(m.refused.len(), 1);
        assert!(m.refused[0].message.contains("configmaptocrs"));
        assert_eq!(m.left_out.len(), 2);
        assert!(m.objects.is_empty());
    }
}
