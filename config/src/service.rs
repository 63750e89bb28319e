//! What Herald reads from a `v1.Service`: whether Herald handles it, its traffic policy, how
//! its remote backends are reached, and its current addresses.

use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;

/// Whether Herald handles the Service: `type: LoadBalancer` with no `loadBalancerClass` or
/// with `lb_class`.
pub fn handles(service: &Service, lb_class: &str) -> bool {
    let Some(spec) = &service.spec else { return false };
    spec.type_.as_deref() == Some("LoadBalancer")
        && spec
            .load_balancer_class
            .as_deref()
            .is_none_or(|class| class == lb_class)
}

/// A port's protocol, as in `Service.spec.ports[].protocol` and `EndpointSlice.ports[].protocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// `TCP`, `UDP` or `SCTP`; unset is `TCP`, as Kubernetes defaults it; `None` for anything
    /// else.
    pub fn from_k8s(protocol: Option<&str>) -> Option<Self> {
        match protocol.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// IANA protocol number, as in the IP header.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// `spec.externalTrafficPolicy`: which nodes may receive a LoadBalancer Service's traffic and
/// which endpoints they send it to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrafficPolicy {
    /// Any node receives it and forwards it to any ready endpoint.
    #[default]
    Cluster,
    /// Only nodes with a ready endpoint of their own receive it, and keep it on the node: the
    /// client's source address is preserved.
    Local,
}

/// The Service's `spec.externalTrafficPolicy` (`Cluster` when unset, as Kubernetes defaults it).
pub fn traffic_policy(service: &Service) -> TrafficPolicy {
    let policy = service.spec.as_ref().and_then(|s| s.external_traffic_policy.as_deref());
    if policy == Some("Local") {
        TrafficPolicy::Local
    } else {
        TrafficPolicy::Cluster
    }
}

/// How the node that receives a LoadBalancer Service's traffic reaches a backend on another
/// node (`Cluster` policy). The speakers' `--forwarding` sets it for every Service;
/// [`FORWARDING_ANNOTATION`] for one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Forwarding {
    /// Direct server return: the client's packet goes unchanged through a tunnel to the
    /// backend's node, which replies to the client itself. Backends see the client's address,
    /// and a flow survives the loss of the node that owns the IP.
    #[default]
    Dsr,
    /// The client's source becomes the receiving node's address, so replies come back through
    /// it (for networks where DSR cannot work).
    Snat,
}

/// Sets one Service's [`Forwarding`] (`dsr` or `snat`) over the speakers' `--forwarding`.
pub const FORWARDING_ANNOTATION: &str = "herald.io/forwarding";

/// A value of [`FORWARDING_ANNOTATION`] that names no mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{FORWARDING_ANNOTATION}: {value:?} is neither \"dsr\" nor \"snat\"; the speakers' --forwarding applies")]
pub struct BadForwarding {
    pub value: String,
}

/// The Service's own [`Forwarding`]: `Ok(None)` when it has no [`FORWARDING_ANNOTATION`].
pub fn forwarding(service: &Service) -> Result<Option<Forwarding>, BadForwarding> {
    let Some(value) = service
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(FORWARDING_ANNOTATION))
    else {
        return Ok(None);
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "dsr" => Ok(Some(Forwarding::Dsr)),
        "snat" => Ok(Some(Forwarding::Snat)),
        _ => Err(BadForwarding { value: value.clone() }),
    }
}

/// The addresses in `status.loadBalancer.ingress`, in order; hostnames are ignored.
pub fn ingress_ips(service: &Service) -> Vec<IpAddr> {
    service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref().and_then(|ip| ip.parse().ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn protocol_defaults_to_tcp_and_names_what_kubernetes_writes() {
        for (text, want) in [
            (None, Some(Protocol::Tcp)),
            (Some("TCP"), Some(Protocol::Tcp)),
            (Some("UDP"), Some(Protocol::Udp)),
            (Some("SCTP"), Some(Protocol::Sctp)),
            (Some("tcp"), None),
            (Some("ICMP"), None),
        ] {
            assert_eq!(Protocol::from_k8s(text), want, "{text:?}");
            if let (Some(text), Some(protocol)) = (text, want) {
                assert_eq!(protocol.to_string(), text);
            }
        }
    }

    #[test]
    fn forwarding_comes_from_the_annotation_and_a_bad_value_is_named() {
        let annotated = |value: &str| {
            serde_json::from_value::<Service>(json!({
                "metadata": {"name": "web", "annotations": {FORWARDING_ANNOTATION: value}}
            }))
            .unwrap()
        };
        assert_eq!(forwarding(&svc(json!({}))), Ok(None));
        assert_eq!(forwarding(&annotated("dsr")), Ok(Some(Forwarding::Dsr)));
        assert_eq!(forwarding(&annotated(" SNAT ")), Ok(Some(Forwarding::Snat)));
        let bad = forwarding(&annotated("direct")).unwrap_err();
        assert_eq!(
            bad.to_string(),
            "herald.io/forwarding: \"direct\" is neither \"dsr\" nor \"snat\"; the speakers' --forwarding applies"
        );
    }

    #[test]
    fn traffic_policy_is_local_only_when_it_says_so() {
        for (policy, want) in [
            (json!("Local"), TrafficPolicy::Local),
            (json!("Cluster"), TrafficPolicy::Cluster),
            (json!(null), TrafficPolicy::Cluster),
        ] {
            assert_eq!(
                traffic_policy(&svc(json!({"externalTrafficPolicy": policy}))),
                want,
                "{policy}"
            );
        }
    }

    fn svc(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": "s"}, "spec": spec,
            "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}, {"hostname": "lb.example"}, {"ip": "fd00::1"}]}}}))
        .unwrap()
    }

    #[test]
    fn handles_load_balancers_of_no_class_or_ours() {
        assert!(handles(&svc(json!({"type": "LoadBalancer"})), "herald.io/l2"));
        assert!(handles(
            &svc(json!({"type": "LoadBalancer", "loadBalancerClass": "herald.io/l2"})),
            "herald.io/l2"
        ));
        assert!(!handles(
            &svc(json!({"type": "LoadBalancer", "loadBalancerClass": "other/x"})),
            "herald.io/l2"
        ));
        assert!(!handles(&svc(json!({"type": "NodePort"})), "herald.io/l2"));
    }

    #[test]
    fn ingress_ips_skip_hostnames() {
        let ips: Vec<String> = ingress_ips(&svc(json!({}))).iter().map(ToString::to_string).collect();
        assert_eq!(ips, ["10.0.0.1", "fd00::1"]);
    }
}
