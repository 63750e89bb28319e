//! The lab's naming and address plan: which namespaces exist, what their interfaces are
//! called and which addresses and routes they get. Pure functions of the prefix and the
//! node count, so the whole plan is unit-tested without root.
//!
//! # Plan (node `n` counts from 1, pod `p` counts from 1 per node)
//! | namespace            | interface | IPv4            | IPv6              |
//! |----------------------|-----------|-----------------|-------------------|
//! | `<prefix>-seg`       | `br0`     | 10.203.0.1/24   | fd00:203::1/64    |
//! | `<prefix>-client`    | `eth0`    | 10.203.0.100/24 | fd00:203::100/64  |
//! | `<prefix>-node<n>`   | `eth0`    | 10.203.0.1n/24  | fd00:203::1n/64   |
//! | `<prefix>-n<n>-<pod>`| `eth0`    | 10.244.n.(10+p)/32 | fd00:244:n::(10+p)/128 |
//!
//! Interfaces are created directly inside their namespaces, so their names only need to
//! be unique per namespace: the bridge ports in `<prefix>-seg` are `node<n>` and `client`,
//! a node's pod-side veths are `pod<p>`. Node-side pod veths all carry the pod gateway
//! (10.244.n.1/32, fd00:244:n::1/128) and pods route everything through it (Calico
//! style), so pods on one node talk through the node too. Nodes route other nodes' pod
//! CIDRs via those nodes' segment addresses (host-gw); the client does the same, as a
//! data-centre router with learned pod routes would.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

/// Longest accepted prefix: keeps namespace names short and readable in `ip netns`.
pub const MAX_PREFIX_LEN: usize = 10;
/// The interface Herald's speaker announces on in every node namespace.
pub const NODE_UPLINK: &str = "eth0";
/// The bridge in the segment namespace.
pub const BRIDGE: &str = "br0";
/// Port the API server relay listens on at the bridge address.
pub const API_PORT: u16 = 6443;
/// HTTP port of every backend echo server.
pub const ECHO_HTTP_PORT: u16 = 8080;
/// UDP port of every backend echo server.
pub const ECHO_UDP_PORT: u16 = 5353;

/// Why a prefix or node count cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The prefix is empty, too long or has characters other than `[a-z0-9]`.
    #[error(
        "lab prefix {0:?} must be 1..={MAX_PREFIX_LEN} characters of [a-z0-9] starting with a letter (no '-': it separates the prefix from the rest of a namespace name)"
    )]
    BadPrefix(String),
    /// Node numbers must fit one octet of the segment plan.
    #[error("a lab has 1..=50 nodes, not {0}")]
    BadNodeCount(usize),
    /// Pod names become namespace names.
    #[error("backend name {0:?} must be 1..=40 characters of [a-z0-9-]")]
    BadPodName(String),
    /// At most 200 pods per node fit the per-node /24.
    #[error("node {node} has no room for another pod (at most 200)")]
    PodCidrFull {
        /// The node.
        node: usize,
    },
}

/// Checks a lab prefix: `[a-z][a-z0-9]*`, at most [`MAX_PREFIX_LEN`] characters.
pub fn validate_prefix(prefix: &str) -> Result<(), PlanError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX_LEN
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(PlanError::BadPrefix(prefix.to_string()))
    }
}

/// Checks a backend (pod) name: `[a-z0-9-]`, at most 40 characters.
pub fn validate_pod_name(name: &str) -> Result<(), PlanError> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(PlanError::BadPodName(name.to_string()))
    }
}

/// Addresses of one node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodePlan {
    /// 1-based node number.
    pub index: usize,
    /// Kubernetes Node name, `node<n>`.
    pub name: String,
    /// Network namespace, `<prefix>-node<n>`.
    pub namespace: String,
    /// Bridge port in the segment namespace that leads to this node.
    pub bridge_port: String,
    /// Segment address (InternalIP).
    pub ipv4: Ipv4Addr,
    /// Segment address (InternalIP).
    pub ipv6: Ipv6Addr,
    /// Pod CIDR, 10.244.n.0/24.
    pub pod_cidr_v4: ipnet::Ipv4Net,
    /// Pod CIDR, fd00:244:n::/64.
    pub pod_cidr_v6: ipnet::Ipv6Net,
    /// Gateway the node's pods route through.
    pub pod_gateway_v4: Ipv4Addr,
    /// Gateway the node's pods route through.
    pub pod_gateway_v6: Ipv6Addr,
}

/// Addresses of one backend pod.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PodPlan {
    /// Pod name (also the `app` label unless the caller overrides it).
    pub name: String,
    /// 1-based node number.
    pub node: usize,
    /// 1-based pod slot on that node.
    pub slot: usize,
    /// Network namespace, `<prefix>-n<n>-<name>`.
    pub namespace: String,
    /// Node-side veth in the node namespace, `pod<slot>`.
    pub node_side: String,
    /// Pod address.
    pub ipv4: Ipv4Addr,
    /// Pod address.
    pub ipv6: Ipv6Addr,
}

/// The whole lab plan.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LabPlan {
    /// Namespace and file prefix.
    pub prefix: String,
    /// Namespace holding the bridge, the API relay and the controller.
    pub segment_namespace: String,
    /// Namespace of the external client.
    pub client_namespace: String,
    /// Bridge address (gateway of the segment, API relay, controller).
    pub bridge_v4: Ipv4Addr,
    /// Bridge address.
    pub bridge_v6: Ipv6Addr,
    /// Client address.
    pub client_v4: Ipv4Addr,
    /// Client address.
    pub client_v6: Ipv6Addr,
    /// Segment prefix length for IPv4.
    pub segment_v4: ipnet::Ipv4Net,
    /// Segment prefix for IPv6.
    pub segment_v6: ipnet::Ipv6Net,
    /// The nodes, in order.
    pub nodes: Vec<NodePlan>,
}

/// Builds the numbers of [`LabPlan`]: segment 10.203.0.0/24 and fd00:203::/64.
const SEGMENT_V4: [u8; 3] = [10, 203, 0];

fn segment_v6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x203, 0, 0, 0, 0, 0, last)
}

/// Reads a decimal number as hex digits, so `fd00:203::11` mirrors `10.203.0.11`.
fn decimal_as_hex(n: usize) -> u16 {
    u16::from_str_radix(&n.to_string(), 16).unwrap_or(0)
}

impl LabPlan {
    /// The plan for `nodes` nodes under `prefix`.
    pub fn new(prefix: &str, nodes: usize) -> Result<Self, PlanError> {
        validate_prefix(prefix)?;
        if !(1..=50).contains(&nodes) {
            return Err(PlanError::BadNodeCount(nodes));
        }
        let [a, b, c] = SEGMENT_V4;
        let nodes = (1..=nodes)
            .map(|n| {
                let octet = u8::try_from(n).unwrap_or(u8::MAX);
                let n16 = decimal_as_hex(n);
                NodePlan {
                    index: n,
                    name: format!("node{n}"),
                    namespace: format!("{prefix}-node{n}"),
                    bridge_port: format!("node{n}"),
                    ipv4: Ipv4Addr::new(a, b, c, 10 + octet),
                    ipv6: segment_v6(decimal_as_hex(10 + n)),
                    pod_cidr_v4: ipnet::Ipv4Net::new(Ipv4Addr::new(10, 244, octet, 0), 24).expect("valid /24"),
                    pod_cidr_v6: ipnet::Ipv6Net::new(Ipv6Addr::new(0xfd00, 0x244, n16, 0, 0, 0, 0, 0), 64)
                        .expect("valid /64"),
                    pod_gateway_v4: Ipv4Addr::new(10, 244, octet, 1),
                    pod_gateway_v6: Ipv6Addr::new(0xfd00, 0x244, n16, 0, 0, 0, 0, 1),
                }
            })
            .collect();
        Ok(Self {
            prefix: prefix.to_string(),
            segment_namespace: format!("{prefix}-seg"),
            client_namespace: format!("{prefix}-client"),
            bridge_v4: Ipv4Addr::new(a, b, c, 1),
            bridge_v6: segment_v6(1),
            client_v4: Ipv4Addr::new(a, b, c, 100),
            client_v6: segment_v6(0x100),
            segment_v4: ipnet::Ipv4Net::new(Ipv4Addr::new(a, b, c, 0), 24).expect("valid /24"),
            segment_v6: ipnet::Ipv6Net::new(segment_v6(0), 64).expect("valid /64"),
            nodes,
        })
    }

    /// The node numbered `n` (1-based).
    pub fn node(&self, n: usize) -> Option<&NodePlan> {
        n.checked_sub(1).and_then(|i| self.nodes.get(i))
    }

    /// Every namespace the plan creates up front (pods come later).
    pub fn base_namespaces(&self) -> Vec<String> {
        let mut all = vec![self.segment_namespace.clone(), self.client_namespace.clone()];
        all.extend(self.nodes.iter().map(|n| n.namespace.clone()));
        all
    }

    /// Whether a namespace name belongs to a lab with this prefix.
    pub fn owns_namespace(prefix: &str, namespace: &str) -> bool {
        namespace.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('-'))
    }

    /// Where the API relay listens (in the segment namespace), as written in the in-lab kubeconfig.
    pub fn api_address(&self) -> SocketAddr {
        SocketAddr::from((self.bridge_v4, API_PORT))
    }

    /// Where the controller serves metrics and health.
    pub fn controller_metrics_address(&self) -> SocketAddr {
        SocketAddr::from((self.bridge_v4, herald_config::deploy::CONTROLLER_METRICS_PORT))
    }

    /// The plan of the pod in `slot` (1-based) on node `node`.
    pub fn pod(&self, node: usize, slot: usize, name: &str) -> Result<PodPlan, PlanError> {
        validate_pod_name(name)?;
        let node_plan = self.node(node).ok_or(PlanError::BadNodeCount(node))?;
        if !(1..=200).contains(&slot) {
            return Err(PlanError::PodCidrFull { node });
        }
        let host = u8::try_from(10 + slot).map_err(|_| PlanError::PodCidrFull { node })?;
        let v4 = node_plan.pod_cidr_v4.network().octets();
        let v6 = node_plan.pod_cidr_v6.network().segments();
        Ok(PodPlan {
            name: name.to_string(),
            node,
            slot,
            namespace: format!("{}-n{node}-{name}", self.prefix),
            node_side: format!("veth{slot}"),
            ipv4: Ipv4Addr::new(v4[0], v4[1], v4[2], host),
            ipv6: Ipv6Addr::new(v6[0], v6[1], v6[2], 0, 0, 0, 0, decimal_as_hex(10 + slot)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert!(validate_prefix("hlab").is_ok());
        assert!(validate_prefix("hl12341").is_ok());
        for bad in ["", "Hlab", "h-lab", "1lab", "hlab_x", "abcdefghijk"] {
            assert_eq!(validate_prefix(bad), Err(PlanError::BadPrefix(bad.into())), "{bad}");
        }
    }

    #[test]
    fn addresses_mirror_between_families() {
        let plan = LabPlan::new("hlab", 3).unwrap();
        assert_eq!(plan.segment_namespace, "hlab-seg");
        assert_eq!(plan.client_namespace, "hlab-client");
        let n2 = plan.node(2).unwrap();
        assert_eq!(n2.namespace, "hlab-node2");
        assert_eq!(n2.ipv4.to_string(), "10.203.0.12");
        assert_eq!(n2.ipv6.to_string(), "fd00:203::12");
        assert_eq!(n2.pod_cidr_v4.to_string(), "10.244.2.0/24");
        assert_eq!(n2.pod_cidr_v6.to_string(), "fd00:244:2::/64");
        assert_eq!(n2.pod_gateway_v6.to_string(), "fd00:244:2::1");
        assert_eq!(plan.client_v6.to_string(), "fd00:203::100");
        assert_eq!(plan.api_address().to_string(), "10.203.0.1:6443");
        assert!(plan.node(0).is_none() && plan.node(4).is_none());
        let pod = plan.pod(2, 3, "web-a").unwrap();
        assert_eq!(pod.namespace, "hlab-n2-web-a");
        assert_eq!(pod.node_side, "veth3");
        assert_eq!(pod.ipv4.to_string(), "10.244.2.13");
        assert_eq!(pod.ipv6.to_string(), "fd00:244:2::13");
    }

    #[test]
    fn node_count_and_pod_names_are_checked() {
        assert_eq!(LabPlan::new("hlab", 0), Err(PlanError::BadNodeCount(0)));
        assert_eq!(LabPlan::new("hlab", 51), Err(PlanError::BadNodeCount(51)));
        let plan = LabPlan::new("hlab", 1).unwrap();
        assert!(plan.pod(1, 1, "Web").is_err());
        assert!(plan.pod(1, 1, "-web").is_err());
        assert!(plan.pod(2, 1, "web").is_err());
        assert_eq!(plan.pod(1, 201, "web"), Err(PlanError::PodCidrFull { node: 1 }));
    }

    #[test]
    fn namespace_ownership_needs_the_separator() {
        assert!(LabPlan::owns_namespace("hl1", "hl1-seg"));
        assert!(!LabPlan::owns_namespace("hl1", "hl12-seg"));
        assert!(!LabPlan::owns_namespace("hl1", "hl1"));
    }

    #[test]
    fn fifty_nodes_fit() {
        let plan = LabPlan::new("hlab", 50).unwrap();
        assert_eq!(plan.node(50).unwrap().ipv4.to_string(), "10.203.0.60");
        assert_eq!(plan.node(50).unwrap().ipv6.to_string(), "fd00:203::60");
    }
}
