//! IP sharing between Services: the `herald.io/allow-shared-ip` key, the backend that traffic
//! on the address reaches, the ports used, and the rule that decides whether two Services may
//! hold one address.

use std::collections::BTreeMap;
use std::fmt;

use thiserror::Error;

pub use herald_config::service::Protocol;

/// One protocol + port pair a Service listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePort {
    pub protocol: Protocol,
    pub port: u16,
}

impl ServicePort {
    pub fn new(protocol: Protocol, port: u16) -> Self {
        ServicePort { protocol, port }
    }
}

impl fmt::Display for ServicePort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.protocol, self.port)
    }
}

/// Where traffic to the address ends up, as far as sharing is concerned.
///
/// With `externalTrafficPolicy: Local` only nodes running a backend pod may announce the
/// address, so two Services sharing it must select the same pods, or one of them would be
/// announced from nodes that do not run its backends. With `Cluster` any node can forward,
/// so the selector does not matter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Backend {
    #[default]
    Cluster,
    Local {
        selector: BTreeMap<String, String>,
    },
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Cluster => f.write_str("externalTrafficPolicy Cluster"),
            Backend::Local { selector } if selector.is_empty() => {
                f.write_str("externalTrafficPolicy Local with no selector")
            }
            Backend::Local { selector } => {
                let pairs: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "externalTrafficPolicy Local with selector {}", pairs.join(","))
            }
        }
    }
}

/// What the allocator needs to know about a Service to decide whether it may share.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SharingInfo {
    /// The `herald.io/allow-shared-ip` annotation; `None` when absent or empty.
    pub key: Option<String>,
    pub backend: Backend,
    pub ports: Vec<ServicePort>,
}

impl SharingInfo {
    /// A Service that does not share, listening on `ports`.
    pub fn exclusive(ports: Vec<ServicePort>) -> Self {
        SharingInfo {
            key: None,
            backend: Backend::Cluster,
            ports,
        }
    }

    /// A Service that shares under `key`, listening on `ports`, with a `Cluster` backend.
    pub fn shared(key: &str, ports: Vec<ServicePort>) -> Self {
        SharingInfo {
            key: Some(key.to_string()),
            backend: Backend::Cluster,
            ports,
        }
    }
}

/// Why a Service may not join another on an address (the other Service is named by the caller).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ShareRefusal {
    #[error("this Service has no herald.io/allow-shared-ip annotation")]
    NoKeyHere,
    #[error("that Service has no herald.io/allow-shared-ip annotation")]
    NoKeyThere,
    #[error("the herald.io/allow-shared-ip keys differ ({ours:?} on this Service, {theirs:?} on that one)")]
    DifferentKey { ours: String, theirs: String },
    #[error(
        "the backends differ ({ours} on this Service, {theirs} on that one); Services sharing an address with externalTrafficPolicy Local must select the same pods"
    )]
    DifferentBackend { ours: Backend, theirs: Backend },
    #[error("both use port {port}")]
    PortInUse { port: ServicePort },
}

/// Whether a Service described by `ours` may join one described by `theirs` on one address.
/// The key and backend rules compare the two; ports must not collide (TCP/53 and UDP/53 do
/// not).
pub fn may_share(ours: &SharingInfo, theirs: &SharingInfo) -> Result<(), ShareRefusal> {
    let ours_key = ours.key.as_deref().ok_or(ShareRefusal::NoKeyHere)?;
    let theirs_key = theirs.key.as_deref().ok_or(ShareRefusal::NoKeyThere)?;
    if ours_key != theirs_key {
        return Err(ShareRefusal::DifferentKey {
            ours: ours_key.to_string(),
            theirs: theirs_key.to_string(),
        });
    }
    if ours.backend != theirs.backend {
        return Err(ShareRefusal::DifferentBackend {
            ours: ours.backend.clone(),
            theirs: theirs.backend.clone(),
        });
    }
    if let Some(port) = ours.ports.iter().find(|p| theirs.ports.contains(p)) {
        return Err(ShareRefusal::PortInUse { port: *port });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(port: u16) -> ServicePort {
        ServicePort::new(Protocol::Tcp, port)
    }

    #[test]
    fn sharing_rules() {
        let a = SharingInfo::shared("k", vec![tcp(80)]);
        assert_eq!(may_share(&a, &SharingInfo::shared("k", vec![tcp(443)])), Ok(()));
        assert_eq!(
            may_share(&a, &SharingInfo::shared("k", vec![ServicePort::new(Protocol::Udp, 80)])),
            Ok(())
        );
        assert_eq!(
            may_share(&a, &SharingInfo::shared("k", vec![tcp(80)])),
            Err(ShareRefusal::PortInUse { port: tcp(80) })
        );
        assert_eq!(
            may_share(&SharingInfo::exclusive(vec![]), &a),
            Err(ShareRefusal::NoKeyHere)
        );
        assert_eq!(
            may_share(&a, &SharingInfo::exclusive(vec![])),
            Err(ShareRefusal::NoKeyThere)
        );
        let local = |app: &str| Backend::Local {
            selector: [("app".to_string(), app.to_string())].into(),
        };
        let mut b = SharingInfo::shared("k", vec![tcp(443)]);
        b.backend = local("x");
        let mut c = SharingInfo::shared("k", vec![tcp(8443)]);
        c.backend = local("x");
        assert_eq!(may_share(&b, &c), Ok(()));
        c.backend = local("y");
        assert!(matches!(may_share(&b, &c), Err(ShareRefusal::DifferentBackend { .. })));
    }

    #[test]
    fn refusal_messages() {
        let msg = |r: ShareRefusal| r.to_string();
        assert_eq!(
            msg(ShareRefusal::DifferentKey {
                ours: "a".into(),
                theirs: "b".into()
            }),
            "the herald.io/allow-shared-ip keys differ (\"a\" on this Service, \"b\" on that one)"
        );
        assert_eq!(
            msg(ShareRefusal::DifferentBackend {
                ours: Backend::Local {
                    selector: [("app".to_string(), "web".to_string())].into()
                },
                theirs: Backend::Cluster
            }),
            "the backends differ (externalTrafficPolicy Local with selector app=web on this Service, externalTrafficPolicy Cluster on that one); Services sharing an address with externalTrafficPolicy Local must select the same pods"
        );
        assert_eq!(msg(ShareRefusal::PortInUse { port: tcp(80) }), "both use port TCP/80");
    }
}
