//! What a Service asks of the allocator ([`ServiceRequest`]), built from a `v1.Service` by
//! [`ServiceRequest::from_service`], and what it gets back ([`Allocation`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use herald_config::address::IpFamily;
use herald_config::annotations::parse_service_annotations;
use herald_config::service::{TrafficPolicy, traffic_policy};
use k8s_openapi::api::core::v1::Service;

use super::error::AllocError;
use super::sharing::{Backend, Protocol, ServicePort, SharingInfo};

/// A Service's identity: `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `spec.ipFamilyPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FamilyPolicy {
    /// One address, of the first family in `ipFamilies`.
    #[default]
    SingleStack,
    /// Every family in `ipFamilies` that one pool can give now; at least one.
    PreferDualStack,
    /// One IPv4 and one IPv6 address from one pool, or nothing.
    RequireDualStack,
}

impl FamilyPolicy {
    pub fn from_k8s(s: &str) -> Option<Self> {
        match s {
            "SingleStack" => Some(FamilyPolicy::SingleStack),
            "PreferDualStack" => Some(FamilyPolicy::PreferDualStack),
            "RequireDualStack" => Some(FamilyPolicy::RequireDualStack),
            _ => None,
        }
    }
}

impl fmt::Display for FamilyPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FamilyPolicy::SingleStack => "SingleStack",
            FamilyPolicy::PreferDualStack => "PreferDualStack",
            FamilyPolicy::RequireDualStack => "RequireDualStack",
        })
    }
}

/// Everything the allocator needs to know about one Service.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceRequest {
    pub key: ServiceKey,
    /// Labels of the Service's namespace (for `serviceAllocation.namespaceSelectors`).
    pub namespace_labels: BTreeMap<String, String>,
    /// The Service's own labels (for `serviceAllocation.serviceSelectors`).
    pub labels: BTreeMap<String, String>,
    /// `spec.ipFamilies`, primary first; the order of the returned addresses.
    pub ip_families: Vec<IpFamily>,
    pub family_policy: FamilyPolicy,
    /// `herald.io/loadBalancerIPs` or `spec.loadBalancerIP`; empty for "any address".
    pub requested_ips: Vec<IpAddr>,
    /// `herald.io/address-pool`.
    pub pool: Option<String>,
    pub sharing: SharingInfo,
}

impl Default for ServiceKey {
    fn default() -> Self {
        ServiceKey::new("default", "")
    }
}

impl ServiceRequest {
    /// A single-stack request for any address of `family`, with no ports, labels or sharing.
    pub fn auto(key: ServiceKey, family: IpFamily) -> Self {
        ServiceRequest {
            key,
            ip_families: vec![family],
            ..Default::default()
        }
    }

    /// Reads a Service: annotations, `spec.loadBalancerIP`, `ipFamilies`, `ipFamilyPolicy`,
    /// `externalTrafficPolicy`, `selector`, `ports`. `namespace_labels` are the labels of the
    /// Service's namespace. Does not look at `type` or `loadBalancerClass`: deciding whether
    /// Herald handles the Service is the caller's job.
    pub fn from_service(service: &Service, namespace_labels: BTreeMap<String, String>) -> Result<Self, AllocError> {
        let meta = &service.metadata;
        let key = ServiceKey::new(
            meta.namespace.clone().unwrap_or_else(|| "default".to_string()),
            meta.name.clone().unwrap_or_default(),
        );
        let spec = service.spec.clone().unwrap_or_default();
        // herald_config reads Herald's annotations and MetalLB's spellings of them.
        let annotations = parse_service_annotations(
            meta.annotations.as_ref().unwrap_or(&BTreeMap::new()),
            spec.load_balancer_ip.as_deref(),
        )?;
        let requested_ips = annotations.requested_ips;

        let ip_families = spec
            .ip_families
            .iter()
            .flatten()
            .map(|f| IpFamily::from_k8s(f).ok_or_else(|| AllocError::BadIpFamily { family: f.clone() }))
            .collect::<Result<Vec<_>, _>>()?;
        let family_policy = match spec.ip_family_policy.as_deref() {
            None => FamilyPolicy::SingleStack,
            Some(p) => {
                FamilyPolicy::from_k8s(p).ok_or_else(|| AllocError::BadFamilyPolicy { policy: p.to_string() })?
            }
        };
        let backend = if traffic_policy(service) == TrafficPolicy::Local {
            Backend::Local {
                selector: spec.selector.clone().unwrap_or_default(),
            }
        } else {
            Backend::Cluster
        };
        let ports = spec
            .ports
            .iter()
            .flatten()
            .map(|p| {
                let protocol = Protocol::from_k8s(p.protocol.as_deref()).ok_or_else(|| AllocError::BadProtocol {
                    protocol: p.protocol.clone().unwrap_or_default(),
                })?;
                let port = u16::try_from(p.port).map_err(|_| AllocError::BadPort { port: p.port })?;
                Ok(ServicePort::new(protocol, port))
            })
            .collect::<Result<Vec<_>, AllocError>>()?;

        Ok(ServiceRequest {
            key,
            namespace_labels,
            labels: meta.labels.clone().unwrap_or_default(),
            ip_families,
            family_policy,
            requested_ips,
            pool: annotations.pool,
            sharing: SharingInfo {
                key: annotations.sharing_key,
                backend,
                ports,
            },
        })
    }
}

/// What a Service holds: its addresses in `ipFamilies` order (the order for
/// `status.loadBalancer.ingress`) and the pool they come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub ips: Vec<IpAddr>,
    pub pool: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort as K8sPort, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn service(annotations: &[(&str, &str)], spec: ServiceSpec) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                labels: Some([("team".to_string(), "a".to_string())].into()),
                ..Default::default()
            },
            spec: Some(spec),
            status: None,
        }
    }

    #[test]
    fn reads_annotations_and_spec() {
        let spec = ServiceSpec {
            ip_families: Some(vec!["IPv6".into(), "IPv4".into()]),
            ip_family_policy: Some("RequireDualStack".into()),
            external_traffic_policy: Some("Local".into()),
            selector: Some([("app".to_string(), "web".to_string())].into()),
            ports: Some(vec![
                K8sPort {
                    port: 53,
                    protocol: Some("UDP".into()),
                    ..Default::default()
                },
                K8sPort {
                    port: 80,
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let svc = service(
            &[
                (herald_config::annotations::LOAD_BALANCER_IPS, "fd00::1, 10.0.0.1"),
                (herald_config::annotations::ADDRESS_POOL, "blue"),
                (herald_config::annotations::ALLOW_SHARED_IP, "k"),
            ],
            spec,
        );
        let req = ServiceRequest::from_service(&svc, BTreeMap::new()).unwrap();
        assert_eq!(req.key, ServiceKey::new("shop", "web"));
        assert_eq!(req.ip_families, [IpFamily::V6, IpFamily::V4]);
        assert_eq!(req.family_policy, FamilyPolicy::RequireDualStack);
        assert_eq!(
            req.requested_ips,
            ["fd00::1".parse::<IpAddr>().unwrap(), "10.0.0.1".parse().unwrap()]
        );
        assert_eq!(req.pool.as_deref(), Some("blue"));
        assert_eq!(req.sharing.key.as_deref(), Some("k"));
        assert_eq!(
            req.sharing.ports,
            [ServicePort::new(Protocol::Udp, 53), ServicePort::new(Protocol::Tcp, 80)]
        );
        assert!(matches!(req.sharing.backend, Backend::Local { .. }));
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let msg = |annotations: &[(&str, &str)], spec: ServiceSpec| {
            ServiceRequest::from_service(&service(annotations, spec), BTreeMap::new())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            msg(
                &[(herald_config::annotations::LOAD_BALANCER_IPS, "10.0.0.1,banana")],
                ServiceSpec::default()
            ),
            "herald.io/loadBalancerIPs: \"banana\" is not an IP address"
        );
        assert_eq!(
            msg(
                &[(herald_config::annotations::LOAD_BALANCER_IPS, "10.0.0.1")],
                ServiceSpec {
                    load_balancer_ip: Some("10.0.0.2".into()),
                    ..Default::default()
                }
            ),
            "both herald.io/loadBalancerIPs and spec.loadBalancerIP are set; use only herald.io/loadBalancerIPs (spec.loadBalancerIP is deprecated by Kubernetes)"
        );
        assert_eq!(
            msg(
                &[],
                ServiceSpec {
                    ip_families: Some(vec!["IPv5".into()]),
                    ..Default::default()
                }
            ),
            "unknown IP family \"IPv5\" in spec.ipFamilies (expected IPv4 or IPv6)"
        );
        assert_eq!(
            msg(
                &[],
                ServiceSpec {
                    ports: Some(vec![K8sPort {
                        port: 70000,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }
            ),
            "port 70000 in spec.ports is out of range (1-65535)"
        );
    }
}
