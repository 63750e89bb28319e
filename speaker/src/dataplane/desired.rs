//! Desired service map: from plain descriptions of Services, their endpoints and this node,
//! the frontends this node forwards and the backends behind each. Pure; no I/O.
//!
//! The wiring builds the inputs from Kubernetes objects:
//! - [`ServiceInput`] from a `type: LoadBalancer` Service: its LoadBalancer IPs (those this node
//!   may receive traffic for — passing every IP is harmless, traffic only arrives at the owner),
//!   its ports, its `externalTrafficPolicy`, and the endpoints of all its EndpointSlices;
//! - [`NodeInput`] from this node: its name (as in `EndpointSlice.endpoints[].nodeName`), the
//!   addresses NodePorts are served on, how remote backends are reached ([`Forwarding`]) and
//!   which other nodes take tunnelled (DSR) traffic.
//!
//! Rules (as kube-proxy):
//! - an endpoint port belongs to a service port when their names and protocols are equal (the
//!   EndpointSlice controller has already resolved `targetPort` into it);
//! - backends are the `ready` endpoints; when none is ready, the `serving && terminating` ones;
//! - `Local` policy keeps only endpoints on this node, and that choice is made among them alone;
//! - frontends of one address family only get backends of that family;
//! - backends on a node whose speaker was declared dead by silence ([`NodeInput::dead_nodes`])
//!   are *draining*: established flows keep them, new flows go to the others (unless every
//!   backend is draining). Losing a node thus stops new connections from going to its pods
//!   within the membership's detection time, not after Kubernetes marks the endpoints not ready
//!   (40 s and more); the node takes new flows again once its speaker is back;
//! - a frontend with no backend is left out, so its traffic meets the kernel as without Herald.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// A port's protocol; the dataplane translates TCP and UDP (see `cluster::facts`).
pub use herald_config::service::Protocol;

/// `spec.externalTrafficPolicy`: with `Cluster`, a remote endpoint is reached as
/// [`Forwarding`] says; with `Local`, only endpoints on this node are used.
pub use herald_config::service::TrafficPolicy;

/// One entry of `Service.spec.ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Port name ("" when the Service has a single unnamed port).
    pub name: String,
    pub protocol: Protocol,
    /// The port on the LoadBalancer IPs.
    pub port: u16,
    /// The NodePort, if allocated (`allocateLoadBalancerNodePorts` may turn them off).
    pub node_port: Option<u16>,
}

/// One port of an endpoint (`EndpointSlice.ports[]`, which apply to every endpoint of a slice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPort {
    /// Equal to the service port's name it serves.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// One address of `EndpointSlice.endpoints[]` with its slice's ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInput {
    pub ip: IpAddr,
    /// `nodeName`; `None` counts as remote.
    pub node: Option<String>,
    /// `conditions.ready` (a missing condition counts as true, as in Kubernetes).
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
    pub ports: Vec<EndpointPort>,
}

/// A Service as the dataplane needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInput {
    pub namespace: String,
    pub name: String,
    /// LoadBalancer IPs to forward (both families for dual-stack Services).
    pub load_balancer_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub traffic_policy: TrafficPolicy,
    /// `loadBalancerSourceRanges`: `None` admits every client to the LoadBalancer IPs, `Some`
    /// only those in the listed networks (NodePorts are not restricted, as with kube-proxy).
    pub source_ranges: Option<Vec<IpNet>>,
    /// `herald.io/forwarding`: how this Service's remote backends are reached; `None` for the
    /// node's [`NodeInput::forwarding`].
    pub forwarding: Option<Forwarding>,
    pub endpoints: Vec<EndpointInput>,
}

/// How a node reaches a backend on another node (`Cluster` policy): the node's default in
/// [`NodeInput::forwarding`], a Service's own in [`ServiceInput::forwarding`]. DSR is used for
/// backends on nodes listed in [`NodeInput::tunnel_peers`]; others are reached with SNAT.
pub use herald_config::service::Forwarding;

/// This node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeInput {
    /// Node name, compared with [`EndpointInput::node`].
    pub name: String,
    /// Addresses NodePorts are served on (and the source of SNAT and tunnels to remote
    /// backends: the first one of each family).
    pub addresses: Vec<IpAddr>,
    pub forwarding: Forwarding,
    /// Other nodes whose dataplane takes tunnelled traffic, with their addresses.
    pub tunnel_peers: BTreeMap<String, Vec<IpAddr>>,
    /// Nodes whose speaker the membership declared dead by silence (the node itself is
    /// probably gone; a speaker that crashed on a live host is not listed): their backends are
    /// draining.
    pub dead_nodes: BTreeSet<String>,
}

/// A frontend: traffic to this address, port and protocol is load-balanced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", SocketAddr::new(self.addr, self.port), self.protocol)
    }
}

/// Whether a frontend is a LoadBalancer IP or a NodePort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    LoadBalancer,
    NodePort,
}

/// A backend of a frontend.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub addr: SocketAddr,
    pub path: BackendPath,
    /// Keeps its established flows but takes no new ones (its node was declared dead).
    pub draining: bool,
}

/// How packets reach a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackendPath {
    /// On this node: only the destination is rewritten; the backend sees the client.
    Local,
    /// On another node, with the client's source translated to `source` (this node).
    Snat { source: IpAddr },
    /// On another node, through a tunnel from `source` (this node) to `node` (the backend's).
    Dsr { source: IpAddr, node: IpAddr },
}

/// What a frontend forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendTarget {
    /// `namespace/name` of the Service (metrics label).
    pub service: String,
    pub kind: FrontendKind,
    /// Sorted, without duplicates, never empty, never all draining.
    pub backends: Vec<Backend>,
    /// Clients admitted (networks of the frontend's family), `None` for everyone. An empty
    /// list admits no one (the Service lists only networks of the other family).
    pub source_ranges: Option<Vec<IpNet>>,
}

/// The whole desired service map of this node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Desired {
    pub frontends: BTreeMap<Frontend, FrontendTarget>,
}

/// Builds the desired service map. When two Services claim the same frontend (a conflict the
/// controller should have refused), the one whose `namespace/name` sorts first wins; a Service
/// listed twice counts once (its first entry).
///
/// The whole-list reference that [`DesiredState`] is tested and benchmarked against; the
/// speaker itself keeps a [`DesiredState`] (feature `testing`).
#[cfg(any(test, feature = "testing"))]
pub fn desired<S: std::borrow::Borrow<ServiceInput>>(services: &[S], node: &NodeInput) -> Desired {
    let mut sorted: Vec<&ServiceInput> = services.iter().map(std::borrow::Borrow::borrow).collect();
    sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    sorted.dedup_by(|a, b| (&a.namespace, &a.name) == (&b.namespace, &b.name));
    let mut frontends = BTreeMap::new();
    for svc in sorted {
        for (frontend, target) in frontends_of(svc, node) {
            frontends.entry(frontend).or_insert(target);
        }
    }
    Desired { frontends }
}

/// The frontends one Service asks for, before conflicts with other Services are settled.
fn frontends_of(svc: &ServiceInput, node: &NodeInput) -> BTreeMap<Frontend, FrontendTarget> {
    let service = format!("{}/{}", svc.namespace, svc.name);
    let mut frontends = BTreeMap::new();
    for port in &svc.ports {
        let mut addrs: Vec<(IpAddr, u16, FrontendKind)> = svc
            .load_balancer_ips
            .iter()
            .map(|&ip| (ip, port.port, FrontendKind::LoadBalancer))
            .collect();
        if let Some(node_port) = port.node_port {
            addrs.extend(node.addresses.iter().map(|&ip| (ip, node_port, FrontendKind::NodePort)));
        }
        for (addr, fport, kind) in addrs {
            let backends = backends_for(svc, port, addr.is_ipv4(), node, kind);
            if backends.is_empty() {
                continue;
            }
            let frontend = Frontend {
                addr,
                port: fport,
                protocol: port.protocol,
            };
            let source_ranges = match kind {
                FrontendKind::LoadBalancer => svc.source_ranges.as_ref().map(|ranges| {
                    let mut of_family: Vec<IpNet> = ranges
                        .iter()
                        .filter(|n| n.addr().is_ipv4() == addr.is_ipv4())
                        .copied()
                        .collect();
                    of_family.sort();
                    of_family.dedup();
                    of_family
                }),
                FrontendKind::NodePort => None,
            };
            frontends.entry(frontend).or_insert_with(|| FrontendTarget {
                service: service.clone(),
                kind,
                backends,
                source_ranges,
            });
        }
    }
    frontends
}

/// `namespace` and `name` of a Service.
type ServiceKey = (String, String);

/// What [`DesiredState::update`] changed: the new target of every frontend it touched, `None`
/// for one that is gone.
pub type DesiredChanges = BTreeMap<Frontend, Option<FrontendTarget>>;

/// The desired service map, kept up to date one Service at a time: a pass in which one Service changed
/// derives that Service again, not all of them. Given the same Services and node it holds
/// exactly what the whole-list `desired` builds from them (a property test checks it).
#[derive(Debug, Default)]
pub struct DesiredState {
    /// The node the frontends were derived for; a change derives everything again.
    node: Option<NodeInput>,
    /// Every Service, with the frontends it claims.
    services: BTreeMap<ServiceKey, (Arc<ServiceInput>, Vec<Frontend>)>,
    /// Frontend → the Services claiming it and what each wants; the first key wins.
    claims: BTreeMap<Frontend, BTreeMap<ServiceKey, FrontendTarget>>,
}

impl DesiredState {
    /// Takes the whole list of Services (unchanged ones are recognised by pointer, else by
    /// value) and returns the frontends whose target may have changed.
    pub fn update(&mut self, services: &[Arc<ServiceInput>], node: &NodeInput) -> DesiredChanges {
        let mut touched: BTreeSet<Frontend> = BTreeSet::new();
        if self.node.as_ref() != Some(node) {
            touched.extend(self.claims.keys().copied());
            self.services.clear();
            self.claims.clear();
            self.node = Some(node.clone());
        }
        let mut sorted: Vec<&Arc<ServiceInput>> = services.iter().collect();
        sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        sorted.dedup_by(|a, b| (&a.namespace, &a.name) == (&b.namespace, &b.name));

        // Walk the old and the new list side by side (both sorted by key).
        let mut gone: Vec<ServiceKey> = Vec::new();
        let mut fresh: Vec<&Arc<ServiceInput>> = Vec::new();
        let mut old = self.services.iter_mut().peekable();
        for svc in sorted {
            let key = (&svc.namespace, &svc.name);
            while let Some((removed, _)) = old.next_if(|((namespace, name), _)| (namespace, name) < key) {
                gone.push(removed.clone());
            }
            match old.next_if(|((namespace, name), _)| (namespace, name) == key) {
                Some((_, (held, _))) if Arc::ptr_eq(held, svc) => {}
                // Equal but a new allocation: keep the new pointer for the next pass.
                Some((_, (held, _))) if **held == **svc => *held = Arc::clone(svc),
                Some((changed, _)) => {
                    gone.push(changed.clone());
                    fresh.push(svc);
                }
                None => fresh.push(svc),
            }
        }
        gone.extend(old.map(|(key, _)| key.clone()));

        for key in gone {
            let Some((_, claimed)) = self.services.remove(&key) else {
                continue;
            };
            for frontend in claimed {
                if let Some(claimants) = self.claims.get_mut(&frontend) {
                    claimants.remove(&key);
                    if claimants.is_empty() {
                        self.claims.remove(&frontend);
                    }
                }
                touched.insert(frontend);
            }
        }
        for svc in fresh {
            let key = (svc.namespace.clone(), svc.name.clone());
            let frontends = frontends_of(svc, node);
            let claimed: Vec<Frontend> = frontends.keys().copied().collect();
            for (frontend, target) in frontends {
                self.claims.entry(frontend).or_default().insert(key.clone(), target);
                touched.insert(frontend);
            }
            self.services.insert(key, (Arc::clone(svc), claimed));
        }
        touched
            .into_iter()
            .map(|frontend| (frontend, self.target(&frontend).cloned()))
            .collect()
    }

    /// What `frontend` forwards to now.
    fn target(&self, frontend: &Frontend) -> Option<&FrontendTarget> {
        self.claims
            .get(frontend)
            .and_then(|claimants| claimants.values().next())
    }

    /// The whole desired service map.
    pub fn desired(&self) -> Desired {
        Desired {
            frontends: self
                .claims
                .keys()
                .filter_map(|frontend| Some((*frontend, self.target(frontend)?.clone())))
                .collect(),
        }
    }
}

fn backends_for(
    svc: &ServiceInput,
    port: &ServicePort,
    ipv4: bool,
    node: &NodeInput,
    kind: FrontendKind,
) -> Vec<Backend> {
    let is_local = |e: &EndpointInput| e.node.as_deref() == Some(node.name.as_str());
    let candidates: Vec<(&EndpointInput, u16)> = svc
        .endpoints
        .iter()
        .filter(|e| e.ip.is_ipv4() == ipv4)
        .filter(|e| svc.traffic_policy == TrafficPolicy::Cluster || is_local(e))
        .filter_map(|e| {
            e.ports
                .iter()
                .find(|p| p.name == port.name && p.protocol == port.protocol)
                .map(|p| (e, p.port))
        })
        .collect();
    let ready: Vec<_> = candidates.iter().filter(|(e, _)| e.ready).collect();
    let chosen: Vec<_> = if ready.is_empty() {
        candidates.iter().filter(|(e, _)| e.serving && e.terminating).collect()
    } else {
        ready
    };
    let source = node.addresses.iter().copied().find(|a| a.is_ipv4() == ipv4);
    let forwarding = svc.forwarding.unwrap_or(node.forwarding);
    let path = |e: &EndpointInput| -> Option<BackendPath> {
        if is_local(e) {
            return Some(BackendPath::Local);
        }
        // Without an address of the family this node cannot reach a remote backend.
        let source = source?;
        let tunnel_end = e
            .node
            .as_ref()
            .and_then(|n| node.tunnel_peers.get(n))
            .and_then(|addrs| addrs.iter().copied().find(|a| a.is_ipv4() == ipv4));
        // A NodePort is this node's own address: another node cannot answer from it, and has
        // no frontend for it to take the tunnelled packet in.
        Some(match (forwarding, tunnel_end, kind) {
            (Forwarding::Dsr, Some(end), FrontendKind::LoadBalancer) => BackendPath::Dsr { source, node: end },
            _ => BackendPath::Snat { source },
        })
    };
    let mut backends: Vec<Backend> = chosen
        .into_iter()
        .filter_map(|&(e, p)| {
            Some(Backend {
                addr: SocketAddr::new(e.ip, p),
                path: path(e)?,
                draining: e.node.as_ref().is_some_and(|n| node.dead_nodes.contains(n)),
            })
        })
        .collect();
    backends.sort();
    backends.dedup_by(|a, b| a.addr == b.addr);
    // Draining every backend would leave new flows nowhere: then all of them take new flows.
    if backends.iter().all(|b| b.draining) {
        for b in &mut backends {
            b.draining = false;
        }
    }
    backends
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn node() -> NodeInput {
        NodeInput {
            name: "node-a".into(),
            addresses: vec![ip("192.168.1.10"), ip("fd00::10")],
            forwarding: Forwarding::Snat,
            tunnel_peers: BTreeMap::new(),
            dead_nodes: BTreeSet::new(),
        }
    }

    fn endpoint(addr: &str, node: &str, ready: bool) -> EndpointInput {
        EndpointInput {
            ip: ip(addr),
            node: Some(node.into()),
            ready,
            serving: ready,
            terminating: false,
            ports: vec![EndpointPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080,
            }],
        }
    }

    fn service(policy: TrafficPolicy, endpoints: Vec<EndpointInput>) -> ServiceInput {
        ServiceInput {
            namespace: "default".into(),
            name: "web".into(),
            load_balancer_ips: vec![ip("203.0.113.7")],
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: Some(30080),
            }],
            traffic_policy: policy,
            source_ranges: None,
            forwarding: None,
            endpoints,
        }
    }

    fn fe(addr: &str, port: u16) -> Frontend {
        Frontend {
            addr: ip(addr),
            port,
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn cluster_policy_uses_every_ready_endpoint_and_snats_remote_ones() {
        let svc = service(
            TrafficPolicy::Cluster,
            vec![
                endpoint("10.244.1.5", "node-a", true),
                endpoint("10.244.2.5", "node-b", true),
                endpoint("10.244.2.6", "node-b", false),
            ],
        );
        let d = desired(&[svc], &node());
        assert_eq!(d.frontends.len(), 2, "LB IP + NodePort on the IPv4 node address: {d:?}");
        let target = &d.frontends[&fe("203.0.113.7", 80)];
        assert_eq!(target.kind, FrontendKind::LoadBalancer);
        assert_eq!(target.service, "default/web");
        assert_eq!(
            target.backends,
            vec![
                Backend {
                    addr: "10.244.1.5:8080".parse().unwrap(),
                    path: BackendPath::Local,
                    draining: false,
                },
                Backend {
                    addr: "10.244.2.5:8080".parse().unwrap(),
                    path: BackendPath::Snat {
                        source: ip("192.168.1.10")
                    },
                    draining: false,
                },
            ]
        );
        assert_eq!(d.frontends[&fe("192.168.1.10", 30080)].kind, FrontendKind::NodePort);
    }

    #[test]
    fn local_policy_keeps_only_local_endpoints_without_snat() {
        let svc = service(
            TrafficPolicy::Local,
            vec![
                endpoint("10.244.1.5", "node-a", true),
                endpoint("10.244.2.5", "node-b", true),
            ],
        );
        let d = desired(&[svc], &node());
        let target = &d.frontends[&fe("203.0.113.7", 80)];
        assert_eq!(
            target.backends,
            vec![Backend {
                addr: "10.244.1.5:8080".parse().unwrap(),
                path: BackendPath::Local,
                draining: false,
            }]
        );
    }

    #[test]
    fn local_policy_without_local_endpoints_has_no_frontend() {
        let svc = service(TrafficPolicy::Local, vec![endpoint("10.244.2.5", "node-b", true)]);
        assert!(desired(&[svc], &node()).frontends.is_empty());
    }

    #[test]
    fn terminating_serving_endpoints_only_when_nothing_is_ready() {
        let mut term = endpoint("10.244.1.9", "node-a", false);
        term.serving = true;
        term.terminating = true;
        let svc = service(
            TrafficPolicy::Cluster,
            vec![term.clone(), endpoint("10.244.1.5", "node-a", true)],
        );
        let d = desired(&[svc], &node());
        assert_eq!(d.frontends[&fe("203.0.113.7", 80)].backends.len(), 1);
        let svc = service(TrafficPolicy::Cluster, vec![term]);
        let d = desired(&[svc], &node());
        assert_eq!(
            d.frontends[&fe("203.0.113.7", 80)].backends[0].addr,
            "10.244.1.9:8080".parse().unwrap()
        );
    }

    #[test]
    fn endpoint_ports_match_by_name_and_protocol() {
        let mut svc = service(TrafficPolicy::Cluster, vec![endpoint("10.244.1.5", "node-a", true)]);
        svc.ports.push(ServicePort {
            name: "dns".into(),
            protocol: Protocol::Udp,
            port: 53,
            node_port: None,
        });
        svc.endpoints[0].ports.push(EndpointPort {
            name: "dns".into(),
            protocol: Protocol::Udp,
            port: 5353,
        });
        let d = desired(&[svc], &node());
        let udp = Frontend {
            addr: ip("203.0.113.7"),
            port: 53,
            protocol: Protocol::Udp,
        };
        assert_eq!(d.frontends[&udp].backends[0].addr.port(), 5353);
    }

    #[test]
    fn dual_stack_frontends_get_backends_of_their_family() {
        let mut svc = service(
            TrafficPolicy::Cluster,
            vec![
                endpoint("10.244.1.5", "node-a", true),
                endpoint("fd00:244:1::5", "node-b", true),
            ],
        );
        svc.load_balancer_ips.push(ip("2001:db8::7"));
        let d = desired(&[svc], &node());
        assert_eq!(d.frontends.len(), 4);
        let v6 = &d.frontends[&fe("2001:db8::7", 80)];
        assert_eq!(
            v6.backends,
            vec![Backend {
                addr: "[fd00:244:1::5]:8080".parse().unwrap(),
                path: BackendPath::Snat { source: ip("fd00::10") },
                draining: false,
            }]
        );
        assert_eq!(d.frontends[&fe("fd00::10", 30080)].kind, FrontendKind::NodePort);
    }

    #[test]
    fn backends_on_dead_nodes_drain_unless_every_backend_is_on_one() {
        let svc = service(
            TrafficPolicy::Cluster,
            vec![
                endpoint("10.244.1.5", "node-a", true),
                endpoint("10.244.2.5", "node-b", true),
                endpoint("10.244.3.5", "node-c", true),
            ],
        );
        let mut node = node();
        node.dead_nodes = BTreeSet::from(["node-b".to_string(), "node-c".to_string()]);
        let d = desired(std::slice::from_ref(&svc), &node);
        let draining: Vec<(String, bool)> = d.frontends[&fe("203.0.113.7", 80)]
            .backends
            .iter()
            .map(|b| (b.addr.to_string(), b.draining))
            .collect();
        assert_eq!(
            draining,
            [
                ("10.244.1.5:8080".to_string(), false),
                ("10.244.2.5:8080".to_string(), true),
                ("10.244.3.5:8080".to_string(), true),
            ]
        );
        // The path does not change: a draining backend's established flows keep going.
        let alive = desired(std::slice::from_ref(&svc), &self::node());
        assert_eq!(
            alive.frontends[&fe("203.0.113.7", 80)].backends[1].path,
            d.frontends[&fe("203.0.113.7", 80)].backends[1].path
        );

        // Only backends on dead nodes: they all take new flows rather than none.
        let svc = service(
            TrafficPolicy::Cluster,
            vec![
                endpoint("10.244.2.5", "node-b", true),
                endpoint("10.244.3.5", "node-c", true),
            ],
        );
        let d = desired(&[svc], &node);
        assert!(d.frontends[&fe("203.0.113.7", 80)].backends.iter().all(|b| !b.draining));
    }

    #[test]
    fn dsr_tunnels_to_peers_that_take_it_and_snats_to_the_rest() {
        let svc = service(
            TrafficPolicy::Cluster,
            vec![
                endpoint("10.244.1.5", "node-a", true),
                endpoint("10.244.2.5", "node-b", true),
                endpoint("10.244.3.5", "node-c", true),
            ],
        );
        let mut node = node();
        node.forwarding = Forwarding::Dsr;
        node.tunnel_peers
            .insert("node-b".into(), vec![ip("fd00::11"), ip("192.168.1.11")]);
        let paths = load_balancer_paths(&svc, &node);
        let source = ip("192.168.1.10");
        assert_eq!(
            paths,
            vec![
                BackendPath::Local,
                BackendPath::Dsr {
                    source,
                    node: ip("192.168.1.11")
                },
                BackendPath::Snat { source },
            ],
            "node-b takes tunnels (its IPv4 address is the end); node-c does not"
        );
        let d = desired(std::slice::from_ref(&svc), &node);
        let node_port = &d.frontends[&fe("192.168.1.10", 30080)];
        assert!(
            node_port
                .backends
                .iter()
                .all(|b| !matches!(b.path, BackendPath::Dsr { .. })),
            "a NodePort is reached with SNAT: {node_port:?}"
        );
        node.forwarding = Forwarding::Snat;
        assert!(
            load_balancer_paths(&svc, &node)
                .iter()
                .all(|p| !matches!(p, BackendPath::Dsr { .. })),
            "SNAT mode never tunnels"
        );
    }

    /// How the backends of the Service's LoadBalancer frontend (203.0.113.7:80) are reached.
    fn load_balancer_paths(svc: &ServiceInput, node: &NodeInput) -> Vec<BackendPath> {
        desired(std::slice::from_ref(svc), node).frontends[&fe("203.0.113.7", 80)]
            .backends
            .iter()
            .map(|b| b.path)
            .collect()
    }

    #[test]
    fn a_services_own_forwarding_overrides_the_nodes() {
        let mut svc = service(TrafficPolicy::Cluster, vec![endpoint("10.244.2.5", "node-b", true)]);
        let mut node = node();
        node.tunnel_peers.insert("node-b".into(), vec![ip("192.168.1.11")]);
        let source = ip("192.168.1.10");
        let dsr = BackendPath::Dsr {
            source,
            node: ip("192.168.1.11"),
        };
        let snat = BackendPath::Snat { source };
        for (node_mode, own, want) in [
            (Forwarding::Snat, None, snat),
            (Forwarding::Snat, Some(Forwarding::Dsr), dsr),
            (Forwarding::Dsr, None, dsr),
            (Forwarding::Dsr, Some(Forwarding::Snat), snat),
        ] {
            node.forwarding = node_mode;
            svc.forwarding = own;
            assert_eq!(
                load_balancer_paths(&svc, &node),
                vec![want],
                "node {node_mode:?}, Service {own:?}"
            );
        }
    }

    #[test]
    fn a_remote_backend_needs_a_source_address_of_its_family() {
        let svc = service(TrafficPolicy::Cluster, vec![endpoint("10.244.2.5", "node-b", true)]);
        let mut node = node();
        node.addresses = vec![ip("fd00::10")];
        assert!(desired(&[svc], &node).frontends.is_empty());
    }

    #[test]
    fn source_ranges_restrict_load_balancer_frontends_of_their_family_only() {
        let mut svc = service(TrafficPolicy::Cluster, vec![endpoint("10.244.1.5", "node-a", true)]);
        svc.load_balancer_ips.push(ip("2001:db8::7"));
        svc.endpoints.push(endpoint("fd00:244:1::5", "node-a", true));
        svc.source_ranges = Some(vec![
            "198.51.100.0/24".parse().unwrap(),
            "198.51.100.0/24".parse().unwrap(),
        ]);
        let d = desired(&[svc], &node());
        assert_eq!(
            d.frontends[&fe("203.0.113.7", 80)].source_ranges,
            Some(vec!["198.51.100.0/24".parse().unwrap()])
        );
        assert_eq!(
            d.frontends[&fe("2001:db8::7", 80)].source_ranges,
            Some(vec![]),
            "only IPv4 networks listed: no IPv6 client is admitted"
        );
        assert_eq!(
            d.frontends[&fe("192.168.1.10", 30080)].source_ranges,
            None,
            "NodePorts stay open"
        );
    }

    #[test]
    fn conflicting_frontends_go_to_the_first_service_by_name() {
        let a = service(TrafficPolicy::Cluster, vec![endpoint("10.244.1.5", "node-a", true)]);
        let mut b = a.clone();
        b.name = "aaa".into();
        b.endpoints = vec![endpoint("10.244.1.6", "node-a", true)];
        let d = desired(&[a, b], &node());
        assert_eq!(d.frontends[&fe("203.0.113.7", 80)].service, "default/aaa");
    }

    fn small_service(name: u8, ips: &[u8], endpoints: &[(u8, bool)]) -> Arc<ServiceInput> {
        let mut svc = service(
            TrafficPolicy::Cluster,
            endpoints
                .iter()
                .map(|&(e, ready)| {
                    let node = if e % 2 == 0 { "node-a" } else { "node-b" };
                    endpoint(&format!("10.244.0.{e}"), node, ready)
                })
                .collect(),
        );
        svc.name = format!("svc-{name}");
        svc.load_balancer_ips = ips.iter().map(|i| ip(&format!("203.0.113.{i}"))).collect();
        Arc::new(svc)
    }

    #[test]
    fn an_update_reports_the_frontends_a_changed_service_claims() {
        let mut state = DesiredState::default();
        let a = small_service(1, &[1], &[(1, true)]);
        let b = small_service(2, &[2], &[(2, true)]);
        let all = state.update(&[a.clone(), b.clone()], &node());
        assert_eq!(all.len(), 3, "two LB frontends and the shared NodePort: {all:?}");
        assert!(state.update(&[a.clone(), b.clone()], &node()).is_empty());
        let b2 = small_service(2, &[2], &[(4, true)]);
        let changed = state.update(&[a.clone(), b2], &node());
        assert_eq!(
            changed.keys().copied().collect::<Vec<_>>(),
            [fe("192.168.1.10", 30080), fe("203.0.113.2", 80)],
            "b's frontends, not a's LoadBalancer IP"
        );
        assert_eq!(
            changed[&fe("192.168.1.10", 30080)].as_ref().map(|t| t.service.as_str()),
            Some("default/svc-1"),
            "the NodePort both claim stays a's (a sorts first)"
        );
        let gone = state.update(&[a], &node());
        assert_eq!(gone.get(&fe("203.0.113.2", 80)), Some(&None));
    }

    proptest::proptest! {
        /// After any sequence of updates (Services added, changed, removed, claiming each
        /// other's addresses; the node changing), the state is what `desired` builds from
        /// scratch, and the update named every frontend whose target changed.
        #[test]
        fn updates_keep_what_desired_builds_from_scratch(
            steps in proptest::collection::vec(
                (
                    proptest::collection::vec(
                        (0u8..5, proptest::collection::vec(1u8..4, 1..3), proptest::collection::vec((1u8..6, proptest::bool::ANY), 0..3)),
                        0..5,
                    ),
                    proptest::bool::ANY,
                ),
                1..8,
            )
        ) {
            let mut state = DesiredState::default();
            let mut before = Desired::default();
            let mut kept: BTreeMap<u8, Arc<ServiceInput>> = BTreeMap::new();
            for (services, node_b_dead) in steps {
                let mut node = node();
                if node_b_dead {
                    node.dead_nodes.insert("node-b".into());
                }
                // Reuse the Arc of an unchanged Service, as the speaker's caches do.
                let list: Vec<Arc<ServiceInput>> = services
                    .iter()
                    .map(|(name, ips, endpoints)| {
                        let fresh = small_service(*name, ips, endpoints);
                        match kept.get(name) {
                            Some(old) if **old == *fresh => old.clone(),
                            _ => fresh,
                        }
                    })
                    .collect();
                kept = services.iter().map(|(name, _, _)| *name).zip(list.iter().cloned()).collect();
                let changes = state.update(&list, &node);
                let after = desired(&list, &node);
                proptest::prop_assert_eq!(&state.desired(), &after);
                for frontend in before.frontends.keys().chain(after.frontends.keys()) {
                    if before.frontends.get(frontend) != after.frontends.get(frontend) {
                        proptest::prop_assert_eq!(changes.get(frontend), Some(&after.frontends.get(frontend).cloned()));
                    }
                }
                for (frontend, target) in &changes {
                    proptest::prop_assert_eq!(target.as_ref(), after.frontends.get(frontend));
                }
                before = after;
            }
        }
    }
}
