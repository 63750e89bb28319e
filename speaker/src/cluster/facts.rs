//! Kubernetes objects → the plain facts election works on ([`UnitFacts`], [`NodeFacts`]).
//! Pure functions: the speaker's watches hand in what they hold; tests hand in literals.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use herald_config::annotations::IP_ALLOCATED_FROM_POOL;
use herald_config::last_valid::PoolInUse;
use herald_config::service::{handles, ingress_ips, traffic_policy};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

use crate::dataplane as dp;
use crate::election::eligibility::{NodeFacts, PoolFacts, ServiceFacts, UnitFacts};
use crate::membership::MemberInfo;

/// The label EndpointSlices carry naming their Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// EndpointSlices by the `(namespace, name)` of the Service they belong to.
fn slices_by_service<'a>(slices: &[&'a EndpointSlice]) -> HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>> {
    let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        if let Some(service) = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) {
            by_service
                .entry((
                    slice.metadata.namespace.as_deref().unwrap_or_default(),
                    service.as_str(),
                ))
                .or_default()
                .push(slice);
        }
    }
    by_service
}

/// What the speaker derives from one Service Herald handles and its EndpointSlices.
#[derive(Debug, PartialEq)]
pub struct ServiceDerived {
    /// Its LoadBalancer IPs (from its status).
    pub ips: Vec<IpAddr>,
    /// The pool its `ip-allocated-from-pool` annotation names.
    pub named_pool: Option<String>,
    /// What election needs to know of it.
    pub facts: ServiceFacts,
    /// The Service as the dataplane forwards it; `None` with nothing to forward (no TCP/UDP
    /// port, or neither a LoadBalancer IP nor a NodePort).
    pub forwarded: Option<Arc<dp::ServiceInput>>,
}

/// Derives a Service's facts; `None` for a Service Herald does not handle.
pub fn derive(service: &Service, slices: &[&EndpointSlice], lb_class: &str) -> Option<ServiceDerived> {
    if !handles(service, lb_class) {
        return None;
    }
    Some(ServiceDerived {
        ips: ingress_ips(service),
        named_pool: service.annotations().get(IP_ALLOCATED_FROM_POOL).cloned(),
        facts: service_facts(service, slices),
        forwarded: service_input(service, slices).map(Arc::new),
    })
}

/// A Service or EndpointSlice: `(namespace, name)`.
pub type ObjectKey = (String, String);

/// What the watches saw change since the loop last looked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// A watch (re)listed, or nothing was looked at yet: anything may have changed.
    pub everything: bool,
    /// Services applied or deleted.
    pub services: BTreeSet<ObjectKey>,
    /// EndpointSlices applied or deleted.
    pub slices: BTreeSet<ObjectKey>,
}

impl Default for Changes {
    fn default() -> Self {
        Changes {
            everything: true,
            services: BTreeSet::new(),
            slices: BTreeSet::new(),
        }
    }
}

impl Changes {
    /// Nothing changed yet.
    pub fn none() -> Self {
        Changes {
            everything: false,
            ..Changes::default()
        }
    }
}

/// The derived facts of every Service, kept across the speaker's passes. A full pass
/// ([`FactsCache::derive_all`]: at start, after a watch relists, and as the loop's safety net)
/// reads every Service but derives again only those whose resourceVersion, or whose
/// EndpointSlices' resourceVersions, changed; a pass after watch events
/// ([`FactsCache::derive_changed`]) touches only the Services the events name. So a pass after
/// one change at 10,000 Services derives one Service, not 10,000.
#[derive(Debug, Default)]
pub struct FactsCache {
    /// By Service.
    entries: BTreeMap<ObjectKey, CacheEntry>,
    /// EndpointSlice → the Service it belongs to (its `kubernetes.io/service-name` label).
    slice_owner: HashMap<ObjectKey, ObjectKey>,
    /// Service → names of its EndpointSlices.
    slices_of: HashMap<ObjectKey, BTreeSet<String>>,
    pass: u64,
}

#[derive(Debug)]
struct CacheEntry {
    /// resourceVersions of the Service and of its slices (`None`: not versioned, so derived
    /// again on every full pass).
    versions: Option<Versions>,
    /// `None` for a Service Herald does not handle.
    derived: Option<Arc<ServiceDerived>>,
    /// The last full pass that saw the Service.
    seen: u64,
}

#[derive(Debug)]
struct Versions {
    service: String,
    /// `(name, resourceVersion)` of its slices, sorted by name.
    slices: Vec<(String, String)>,
}

impl Versions {
    /// Whether `service` and `slices` are the versions recorded (without allocating: this
    /// runs for every Service on every full pass).
    fn are(&self, service: &Service, slices: &[&EndpointSlice]) -> bool {
        service.metadata.resource_version.as_deref() == Some(self.service.as_str())
            && slices.len() == self.slices.len()
            && slices.iter().all(|s| {
                let (Some(name), Some(version)) = (&s.metadata.name, &s.metadata.resource_version) else {
                    return false;
                };
                self.slices
                    .binary_search_by(|(n, _)| n.as_str().cmp(name))
                    .is_ok_and(|i| self.slices[i].1 == *version)
            })
    }
}

fn versions(service: &Service, slices: &[&EndpointSlice]) -> Option<Versions> {
    let mut of_slices = slices
        .iter()
        .map(|s| Some((s.metadata.name.clone()?, s.metadata.resource_version.clone()?)))
        .collect::<Option<Vec<_>>>()?;
    of_slices.sort();
    Some(Versions {
        service: service.metadata.resource_version.clone()?,
        slices: of_slices,
    })
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectKey {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The Service an EndpointSlice belongs to.
fn owner_of(slice: &EndpointSlice) -> Option<ObjectKey> {
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((slice.metadata.namespace.clone().unwrap_or_default(), service.clone()))
}

impl FactsCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// The derived facts of every handled Service in `services` (by namespace and name),
    /// reusing what is unchanged since the last call and forgetting Services that are gone.
    pub fn derive_all(
        &mut self,
        services: &[&Service],
        slices: &[&EndpointSlice],
        lb_class: &str,
    ) -> Vec<Arc<ServiceDerived>> {
        self.pass += 1;
        self.slice_owner.clear();
        self.slices_of.clear();
        for slice in slices {
            if let Some(owner) = owner_of(slice) {
                self.slices_of
                    .entry(owner.clone())
                    .or_default()
                    .insert(slice.metadata.name.clone().unwrap_or_default());
                self.slice_owner.insert(key_of(&slice.metadata), owner);
            }
        }
        let slices_by_service = slices_by_service(slices);
        for service in services {
            let slices = slices_by_service
                .get(&(
                    service.metadata.namespace.as_deref().unwrap_or_default(),
                    service.metadata.name.as_deref().unwrap_or_default(),
                ))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let key = key_of(&service.metadata);
            match self.entries.get_mut(&key) {
                Some(entry) if entry.versions.as_ref().is_some_and(|v| v.are(service, slices)) => {
                    entry.seen = self.pass;
                }
                _ => {
                    let entry = CacheEntry {
                        versions: versions(service, slices),
                        derived: derive(service, slices, lb_class).map(Arc::new),
                        seen: self.pass,
                    };
                    self.entries.insert(key, entry);
                }
            }
        }
        let pass = self.pass;
        self.entries.retain(|_, e| e.seen == pass);
        self.derived()
    }

    /// [`FactsCache::derive_all`] after only `changes` (without `everything`): derives again
    /// the Services they name and those whose EndpointSlices they name, reading the current
    /// objects through `service` and `slice` (the watch stores).
    pub fn derive_changed(
        &mut self,
        changes: &Changes,
        service: impl Fn(&str, &str) -> Option<Arc<Service>>,
        slice: impl Fn(&str, &str) -> Option<Arc<EndpointSlice>>,
        lb_class: &str,
    ) -> Vec<Arc<ServiceDerived>> {
        let mut dirty = changes.services.clone();
        for key in &changes.slices {
            if let Some(old) = self.slice_owner.remove(key) {
                if let Some(names) = self.slices_of.get_mut(&old) {
                    names.remove(&key.1);
                }
                dirty.insert(old);
            }
            if let Some(owner) = slice(&key.0, &key.1).as_deref().and_then(owner_of) {
                self.slices_of.entry(owner.clone()).or_default().insert(key.1.clone());
                self.slice_owner.insert(key.clone(), owner.clone());
                dirty.insert(owner);
            }
        }
        for key in dirty {
            let Some(current) = service(&key.0, &key.1) else {
                self.entries.remove(&key);
                continue;
            };
            let slices: Vec<Arc<EndpointSlice>> = self
                .slices_of
                .get(&key)
                .into_iter()
                .flatten()
                .filter_map(|name| slice(&key.0, name))
                .collect();
            let slices: Vec<&EndpointSlice> = slices.iter().map(|s| &**s).collect();
            let entry = CacheEntry {
                versions: versions(&current, &slices),
                derived: derive(&current, &slices, lb_class).map(Arc::new),
                seen: self.pass,
            };
            self.entries.insert(key, entry);
        }
        self.derived()
    }

    /// Every handled Service, by namespace and name.
    fn derived(&self) -> Vec<Arc<ServiceDerived>> {
        self.entries.values().filter_map(|e| e.derived.clone()).collect()
    }
}

/// Handled Services by LoadBalancer IP, in IP order (the Services sharing an IP in input
/// order).
pub fn by_ip(services: &[Arc<ServiceDerived>]) -> Vec<(IpAddr, Vec<&Arc<ServiceDerived>>)> {
    let mut pairs: Vec<(IpAddr, &Arc<ServiceDerived>)> = services
        .iter()
        .flat_map(|s| s.ips.iter().map(move |&ip| (ip, s)))
        .collect();
    // Stable: Services sharing an IP keep their input order.
    pairs.sort_by_key(|(ip, _)| *ip);
    let mut grouped: Vec<(IpAddr, Vec<&Arc<ServiceDerived>>)> = Vec::with_capacity(pairs.len());
    for (ip, service) in pairs {
        match grouped.last_mut() {
            Some((last, sharing)) if *last == ip => sharing.push(service),
            _ => grouped.push((ip, vec![service])),
        }
    }
    grouped
}

/// The election unit of `ip`, shared by `services`: the pool is the one the first Service's
/// annotation names if it lists the IP, else the first pool in use that lists it. A Service
/// whose IP is in no pool in use (see [`super::in_use`]) is not Herald's to announce; an IP
/// with no such Service yields no unit.
pub fn unit(ip: IpAddr, services: &[&Arc<ServiceDerived>], pools: &[PoolInUse]) -> Option<UnitFacts> {
    let lists = |pool: &PoolInUse| pool.ranges.iter().any(|r| r.contains(ip));
    let mut unit: Option<UnitFacts> = None;
    for service in services {
        let named_pool = service.named_pool.as_ref();
        let pool = pools
            .iter()
            .filter(|p| lists(p))
            .find(|p| named_pool.is_none_or(|n| *n == p.name))
            .or_else(|| pools.iter().find(|p| lists(p)));
        let Some(pool) = pool else {
            tracing::debug!(service = %service.facts.name, %ip, "address in no pool in use; not announced");
            continue;
        };
        unit.get_or_insert_with(|| UnitFacts {
            ip,
            pool: PoolFacts {
                name: pool.name.clone(),
                labels: pool.labels.clone(),
            },
            services: Vec::new(),
        })
        .services
        .push(service.facts.clone());
    }
    unit
}

/// Every election unit: one per LoadBalancer IP of a handled Service ([`unit()`]).
pub fn units(services: &[Arc<ServiceDerived>], pools: &[PoolInUse]) -> Vec<UnitFacts> {
    by_ip(services)
        .into_iter()
        .filter_map(|(ip, sharing)| unit(ip, &sharing, pools))
        .collect()
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
    ServiceFacts {
        name: format!("{}/{}", service.namespace().unwrap_or_default(), service.name_any()),
        labels: service.labels().clone(),
        traffic_policy: traffic_policy(service),
        has_serving_endpoint,
        ready_endpoint_nodes,
    }
}

/// A Service as the eBPF dataplane forwards it: its LoadBalancer IPs (every node programs
/// every IP, so a node that takes an IP over forwards it at once), NodePorts, source ranges
/// and endpoints. Only Services Herald handles get here ([`derive()`]); others, NodePorts
/// included, are left to kube-proxy.
pub fn service_input(service: &Service, slices: &[&EndpointSlice]) -> Option<dp::ServiceInput> {
    let spec = service.spec.as_ref()?;
    let load_balancer_ips = ingress_ips(service);
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
        return None;
    }
    let endpoints = slices
        .iter()
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
    Some(dp::ServiceInput {
        namespace: service.namespace().unwrap_or_default(),
        name: service.name_any(),
        load_balancer_ips,
        ports,
        traffic_policy: traffic_policy(service),
        source_ranges: source_ranges(service),
        // A value that names no mode leaves the node's (the controller reports it as an Event).
        forwarding: herald_config::service::forwarding(service).ok().flatten(),
        endpoints,
    })
}

/// The annotation kube-proxy reads when `spec.loadBalancerSourceRanges` is empty.
pub const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// Who may reach the Service's LoadBalancer IPs: `spec.loadBalancerSourceRanges`, else the
/// annotation (comma-separated), as kube-proxy reads them; `None` when neither restricts.
/// The API server validates both; should an entry still not parse, it is left out, and a list
/// of which nothing parses admits no one rather than everyone.
pub fn source_ranges(service: &Service) -> Option<Vec<ipnet::IpNet>> {
    let from_spec: Vec<String> = service
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_source_ranges.clone())
        .unwrap_or_default();
    let listed: Vec<String> = if from_spec.is_empty() {
        service
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SOURCE_RANGES_ANNOTATION))
            .map(|v| {
                v.split(',')
                    .map(|r| r.trim().to_string())
                    .filter(|r| !r.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    } else {
        from_spec
    };
    if listed.is_empty() {
        return None;
    }
    Some(
        listed
            .iter()
            .filter_map(|r| r.trim().parse::<ipnet::IpNet>().ok().map(|n| n.trunc()))
            .collect(),
    )
}

/// The protocols the dataplane translates: TCP and UDP. An SCTP port is left out, so its
/// traffic meets the kernel (kube-proxy) as without Herald.
fn dp_protocol(protocol: Option<&str>) -> Option<dp::Protocol> {
    dp::Protocol::from_k8s(protocol).filter(|p| matches!(p, dp::Protocol::Tcp | dp::Protocol::Udp))
}

/// A Node as election sees it, joined with what membership knows of its speaker.
pub fn node_facts(node: &Node, member: Option<&MemberInfo>) -> NodeFacts {
    let network_unavailable = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "NetworkUnavailable" && c.status == "True");
    NodeFacts {
        name: node.name_any(),
        labels: node.labels().clone(),
        network_unavailable,
        member_state: member.map(|m| m.state),
        health: member.and_then(|m| m.health.clone()),
        rejoining: member.is_some_and(|m| m.rejoining),
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

/// The nodes that run a speaker: those of the `pods` (the speaker Pods) that are running.
pub fn speaker_nodes<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> BTreeSet<String> {
    pods.into_iter()
        .filter(|pod| pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|pod| pod.spec.as_ref()?.node_name.clone())
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
    use crate::membership::MemberState;
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
        IPAddressPool::new(name, IPAddressPoolSpec::with_addresses(addresses.iter().copied()))
    }

    fn derived(services: &[&Service], slices: &[&EndpointSlice]) -> Vec<Arc<ServiceDerived>> {
        FactsCache::new().derive_all(services, slices, "herald.io/l2")
    }

    fn forwarded(services: &[&Service], slices: &[&EndpointSlice]) -> Vec<Arc<dp::ServiceInput>> {
        derived(services, slices)
            .iter()
            .filter_map(|d| d.forwarded.clone())
            .collect()
    }

    fn versioned<T: kube::Resource>(mut object: T, uid: &str, version: &str) -> T {
        object.meta_mut().uid = Some(uid.to_string());
        object.meta_mut().resource_version = Some(version.to_string());
        object
    }

    #[test]
    fn a_full_pass_derives_a_service_again_only_when_it_or_a_slice_changed() {
        let mut cache = FactsCache::new();
        let endpoints = json!([{"addresses": ["10.1.0.5"], "nodeName": "n1"}]);
        let web = versioned(service("web", json!({})), "u1", "10");
        let web_slice = versioned(slice("web", endpoints.clone()), "s1", "11");
        let first = cache.derive_all(&[&web], &[&web_slice], "herald.io/l2");
        let again = cache.derive_all(&[&web], &[&web_slice], "herald.io/l2");
        assert!(Arc::ptr_eq(&first[0], &again[0]), "nothing changed: the same facts");
        // A new slice version (an endpoint went unready) is derived again.
        let unready = versioned(
            slice(
                "web",
                json!([{"addresses": ["10.1.0.5"], "nodeName": "n1", "conditions": {"ready": false}}]),
            ),
            "s1",
            "12",
        );
        let changed = cache.derive_all(&[&web], &[&unready], "herald.io/l2");
        assert!(!Arc::ptr_eq(&first[0], &changed[0]));
        assert!(changed[0].facts.ready_endpoint_nodes.is_empty());
        // So is a new Service version, and a Service that went away is forgotten.
        let moved = versioned(
            service(
                "web",
                json!({"status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.2"}]}}}),
            ),
            "u1",
            "13",
        );
        let changed = cache.derive_all(&[&moved], &[&unready], "herald.io/l2");
        assert_eq!(changed[0].ips, vec!["10.0.0.2".parse::<IpAddr>().unwrap()]);
        assert!(cache.derive_all(&[], &[], "herald.io/l2").is_empty());
        assert!(cache.entries.is_empty());
        // Objects without a version are derived again on every full pass.
        let bare = service("bare", json!({}));
        let first = cache.derive_all(&[&bare], &[], "herald.io/l2");
        let again = cache.derive_all(&[&bare], &[], "herald.io/l2");
        assert!(!Arc::ptr_eq(&first[0], &again[0]));
        // A Service Herald does not handle is remembered as such and yields nothing.
        let other = versioned(
            service("other", json!({"spec": {"loadBalancerClass": "x/y"}})),
            "u2",
            "1",
        );
        assert!(cache.derive_all(&[&other], &[], "herald.io/l2").is_empty());
        assert_eq!(cache.entries.len(), 1);
    }

    /// Services and slices as the watch stores hold them, by `(namespace, name)`.
    #[derive(Default)]
    struct Stores {
        services: BTreeMap<ObjectKey, Arc<Service>>,
        slices: BTreeMap<ObjectKey, Arc<EndpointSlice>>,
        version: u64,
    }

    impl Stores {
        fn put_service(&mut self, changes: &mut Changes, mut object: Service) {
            self.version += 1;
            object.metadata.resource_version = Some(self.version.to_string());
            let key = key_of(&object.metadata);
            changes.services.insert(key.clone());
            self.services.insert(key, Arc::new(object));
        }
        fn put_slice(&mut self, changes: &mut Changes, name: &str, mut object: EndpointSlice) {
            self.version += 1;
            object.metadata.name = Some(name.to_string());
            object.metadata.resource_version = Some(self.version.to_string());
            let key = key_of(&object.metadata);
            changes.slices.insert(key.clone());
            self.slices.insert(key, Arc::new(object));
        }
        fn derive_changed(&self, cache: &mut FactsCache, changes: &Changes) -> Vec<Arc<ServiceDerived>> {
            cache.derive_changed(
                changes,
                |ns, n| self.services.get(&(ns.to_string(), n.to_string())).cloned(),
                |ns, n| self.slices.get(&(ns.to_string(), n.to_string())).cloned(),
                "herald.io/l2",
            )
        }
        fn derive_all(&self) -> Vec<Arc<ServiceDerived>> {
            FactsCache::new().derive_all(
                &self.services.values().map(|s| &**s).collect::<Vec<_>>(),
                &self.slices.values().map(|s| &**s).collect::<Vec<_>>(),
                "herald.io/l2",
            )
        }
    }

    fn values(derived: &[Arc<ServiceDerived>]) -> Vec<&ServiceDerived> {
        derived.iter().map(|d| &**d).collect()
    }

    #[test]
    fn deriving_only_what_changed_gives_what_a_full_pass_gives() {
        let mut stores = Stores::default();
        let mut changes = Changes::none();
        for name in ["a", "b", "c"] {
            stores.put_service(&mut changes, service(name, json!({})));
            let endpoints = json!([{"addresses": ["10.1.0.5"], "nodeName": "n1"}]);
            stores.put_slice(&mut changes, &format!("{name}-1"), slice(name, endpoints));
        }
        let mut cache = FactsCache::new();
        cache.derive_all(
            &stores.services.values().map(|s| &**s).collect::<Vec<_>>(),
            &stores.slices.values().map(|s| &**s).collect::<Vec<_>>(),
            "herald.io/l2",
        );
        let before = stores.derive_changed(&mut cache, &Changes::none());
        assert_eq!(values(&before), values(&stores.derive_all()));

        // b's endpoint goes unready; c gets a second slice; a's slice is relabelled to c.
        let mut changes = Changes::none();
        let unready = json!([{"addresses": ["10.1.0.6"], "nodeName": "n2", "conditions": {"ready": false}}]);
        stores.put_slice(&mut changes, "b-1", slice("b", unready));
        let more = json!([{"addresses": ["10.1.0.7"], "nodeName": "n3"}]);
        stores.put_slice(&mut changes, "c-2", slice("c", more));
        let moved = json!([{"addresses": ["10.1.0.5"], "nodeName": "n1"}]);
        stores.put_slice(&mut changes, "a-1", slice("c", moved));
        let after = stores.derive_changed(&mut cache, &changes);
        assert_eq!(values(&after), values(&stores.derive_all()));
        assert!(after[0].facts.ready_endpoint_nodes.is_empty(), "a lost its slice");

        // A slice and a Service deleted; a new Service created.
        let mut changes = Changes::none();
        stores.slices.remove(&("default".to_string(), "c-2".to_string()));
        changes.slices.insert(("default".to_string(), "c-2".to_string()));
        stores.services.remove(&("default".to_string(), "b".to_string()));
        changes.services.insert(("default".to_string(), "b".to_string()));
        stores.put_service(&mut changes, service("d", json!({})));
        let after = stores.derive_changed(&mut cache, &changes);
        assert_eq!(values(&after), values(&stores.derive_all()));
        let names: Vec<&str> = after.iter().map(|d| d.facts.name.as_str()).collect();
        assert_eq!(names, ["default/a", "default/c", "default/d"]);

        // What did not change keeps its facts (the planner relies on their identity).
        let unchanged = stores.derive_changed(&mut cache, &Changes::none());
        assert!(after.iter().zip(&unchanged).all(|(x, y)| Arc::ptr_eq(x, y)));
    }

    fn in_use(pools: &[IPAddressPool]) -> Vec<PoolInUse> {
        judge_pools(pools, &mut LastValid::new(), Timestamp::UNIX_EPOCH).in_use
    }

    #[test]
    fn a_services_forwarding_annotation_reaches_the_dataplane_and_a_bad_one_is_ignored() {
        let with = |value: &str| {
            let svc = service(
                "a",
                json!({"metadata": {"annotations": {herald_config::service::FORWARDING_ANNOTATION: value}}}),
            );
            service_input(&svc, &[]).expect("forwarded").forwarding
        };
        assert_eq!(with("snat"), Some(dp::Forwarding::Snat));
        assert_eq!(with("dsr"), Some(dp::Forwarding::Dsr));
        assert_eq!(with("sometimes"), None, "a bad value leaves the node's mode");
        assert_eq!(service_input(&service("a", json!({})), &[]).unwrap().forwarding, None);
    }

    #[test]
    fn source_ranges_come_from_the_spec_else_the_annotation_and_fail_closed() {
        let open = service("a", json!({}));
        assert_eq!(source_ranges(&open), None);
        let annotated = service(
            "a",
            json!({"metadata": {"annotations": {SOURCE_RANGES_ANNOTATION: "198.51.100.0/24, 2001:db8::/64"}}}),
        );
        assert_eq!(
            source_ranges(&annotated),
            Some(vec![
                "198.51.100.0/24".parse().unwrap(),
                "2001:db8::/64".parse().unwrap()
            ])
        );
        let both = service(
            "a",
            json!({"metadata": {"annotations": {SOURCE_RANGES_ANNOTATION: "198.51.100.0/24"}},
                   "spec": {"loadBalancerSourceRanges": ["192.0.2.9/24"]}}),
        );
        assert_eq!(
            source_ranges(&both),
            Some(vec!["192.0.2.0/24".parse().unwrap()]),
            "the field wins over the annotation; host bits are dropped"
        );
        let garbage = service("a", json!({"spec": {"loadBalancerSourceRanges": ["not-a-cidr"]}}));
        assert_eq!(source_ranges(&garbage), Some(vec![]), "nothing parses: admit no one");
    }

    #[test]
    fn services_herald_does_not_handle_are_left_to_kube_proxy_nodeports_included() {
        let other = service(
            "other",
            json!({"spec": {"loadBalancerClass": "example.com/other", "ports": [{"port": 80, "nodePort": 30080}]}}),
        );
        let ours = service("ours", json!({"spec": {"ports": [{"port": 80, "nodePort": 30081}]}}));
        let inputs = forwarded(&[&other, &ours], &[]);
        let names: Vec<&str> = inputs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ours"]);
    }

    #[test]
    fn services_sharing_an_ip_form_one_unit() {
        let a = service("a", json!({}));
        let b = service("b", json!({}));
        let other_class = service("c", json!({"spec": {"loadBalancerClass": "x/y"}}));
        let pools = in_use(&[pool("p", &["10.0.0.0/24"])]);
        let units = units(&derived(&[&a, &b, &other_class], &[]), &pools);
        assert_eq!(units.len(), 1);
        assert_eq!(units[0].pool.name, "p");
        let names: Vec<&str> = units[0].services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["default/a", "default/b"]);
    }

    #[test]
    fn addresses_outside_every_valid_pool_are_not_announced() {
        let a = service("a", json!({}));
        assert!(units(&derived(&[&a], &[]), &in_use(&[pool("p", &["10.9.0.0/24"])])).is_empty());
        // An invalid pool does not count even if it lists the address.
        assert!(units(&derived(&[&a], &[]), &in_use(&[pool("bad", &["10.0.0.1/24"])])).is_empty());
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
        assert_eq!(facts.traffic_policy, herald_config::service::TrafficPolicy::Local);
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
            serde_json::from_value(json!({"name": "sig", "port": 3868, "nodePort": 30868, "protocol": "SCTP"}))
                .unwrap(),
        ]);
        let mut s = slice(
            "web",
            json!([{"addresses": ["10.244.1.5"], "nodeName": "n1", "conditions": {"ready": true}}]),
        );
        s.ports = Some(vec![
            serde_json::from_value(json!({"name": "http", "port": 8080, "protocol": "TCP"})).unwrap(),
            serde_json::from_value(json!({"name": "sig", "port": 3868, "protocol": "SCTP"})).unwrap(),
        ]);
        let other_class = service("other", json!({"spec": {"loadBalancerClass": "x/y"}}));
        let inputs = forwarded(&[&svc, &other_class], &[&s]);
        assert_eq!(
            inputs.len(),
            1,
            "the other class's Service has no LB IP of ours and no NodePort"
        );
        let web = &inputs[0];
        assert_eq!(web.load_balancer_ips, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(web.ports.len(), 1, "SCTP is left to kube-proxy: {:?}", web.ports);
        assert_eq!(web.ports[0].node_port, Some(30080));
        assert_eq!(web.traffic_policy, dp::TrafficPolicy::Local);
        assert_eq!(web.endpoints.len(), 1);
        assert_eq!(web.endpoints[0].ports.len(), 1, "{:?}", web.endpoints[0].ports);
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
        let member = MemberInfo {
            address: "10.203.0.11:7946".parse().unwrap(),
            state: MemberState::Alive,
            incarnation: 1,
            health: None,
            host_up: true,
            rejoining: true,
        };
        let facts = node_facts(&node, Some(&member));
        assert!(facts.rejoining);
        assert!(facts.network_unavailable);
        assert_eq!(facts.member_state, Some(MemberState::Alive));
        assert_eq!(node_address(&node), Some("10.203.0.11".parse().unwrap()));
    }

    #[test]
    fn speakers_are_the_nodes_of_running_speaker_pods() {
        let pod = |node: &str, phase: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": format!("herald-speaker-{node}")},
                "spec": {"nodeName": node, "containers": []},
                "status": {"phase": phase},
            }))
            .unwrap()
        };
        let unscheduled: Pod =
            serde_json::from_value(json!({"metadata": {"name": "x"}, "status": {"phase": "Pending"}})).unwrap();
        let pods = [
            pod("n1", "Running"),
            pod("n2", "Pending"),
            pod("n3", "Running"),
            pod("n4", "Failed"),
            unscheduled,
        ];
        assert_eq!(
            speaker_nodes(&pods),
            BTreeSet::from(["n1".to_string(), "n3".to_string()])
        );
    }
}
