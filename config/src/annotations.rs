//! The Service annotations Herald's allocator reads (`herald.io/loadBalancerIPs`,
//! `herald.io/address-pool`, `herald.io/allow-shared-ip`) and writes
//! (`herald.io/ip-allocated-from-pool`). The speakers' `herald.io/forwarding` is read in
//! [`crate::service::forwarding`].
//!
//! MetalLB's spellings (`metallb.io/…`, `metallb.universe.tf/…`) are read too, so a cluster can
//! move from MetalLB without editing its Services; each use is reported as deprecated.

use std::collections::BTreeMap;
use std::net::IpAddr;

use thiserror::Error;

use crate::address::IpFamily;

/// Addresses the Service asks for, comma-separated, at most one per family.
pub const LOAD_BALANCER_IPS: &str = "herald.io/loadBalancerIPs";
/// The pool the Service's addresses must come from.
pub const ADDRESS_POOL: &str = "herald.io/address-pool";
/// Services with the same non-empty key may share an address.
pub const ALLOW_SHARED_IP: &str = "herald.io/allow-shared-ip";
/// Written by the controller: the pool the Service's addresses came from.
pub const IP_ALLOCATED_FROM_POOL: &str = "herald.io/ip-allocated-from-pool";

/// Older spellings accepted for each annotation Herald reads, newest first.
const LEGACY_PREFIXES: [&str; 2] = ["metallb.io/", "metallb.universe.tf/"];

/// A MetalLB-spelled annotation found on a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeprecatedAnnotation {
    pub found: String,
    pub replacement: &'static str,
}

impl std::fmt::Display for DeprecatedAnnotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "annotation {} is deprecated, use {} instead",
            self.found, self.replacement
        )
    }
}

/// What a Service asks of the allocator through its annotations and `spec.loadBalancerIP`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceAnnotations {
    /// Requested addresses, at most one per family, in the order written.
    pub requested_ips: Vec<IpAddr>,
    /// Requested pool.
    pub pool: Option<String>,
    /// Sharing key; `None` when absent or empty.
    pub sharing_key: Option<String>,
    /// MetalLB spellings in use, to be reported to the user.
    pub deprecated: Vec<DeprecatedAnnotation>,
}

/// Why a Service's annotations cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AnnotationError {
    #[error("{annotation}: {value:?} is not an IP address")]
    BadIp { annotation: String, value: String },
    #[error("{annotation}: {count} addresses requested, at most 2 (one IPv4 and one IPv6) are allowed")]
    TooManyIps { annotation: String, count: usize },
    #[error("{annotation}: {first} and {second} are both {family}; request at most one address per family")]
    SameFamilyTwice {
        annotation: String,
        first: IpAddr,
        second: IpAddr,
        family: IpFamily,
    },
    #[error(
        "both {annotation} and spec.loadBalancerIP are set; use only {annotation} (spec.loadBalancerIP is deprecated by Kubernetes)"
    )]
    BothRequestForms { annotation: String },
    #[error("spec.loadBalancerIP: {value:?} is not an IP address")]
    BadSpecIp { value: String },
    #[error("{annotation} is empty; remove it or name a pool")]
    EmptyPool { annotation: String },
    #[error("{first} ({first_value:?}) and {second} ({second_value:?}) disagree; remove the deprecated one")]
    ConflictingSpellings {
        first: String,
        first_value: String,
        second: String,
        second_value: String,
    },
}

/// Reads Herald's annotations (or MetalLB's spellings of them) and `spec.loadBalancerIP`.
pub fn parse_service_annotations(
    annotations: &BTreeMap<String, String>,
    spec_load_balancer_ip: Option<&str>,
) -> Result<ServiceAnnotations, AnnotationError> {
    let mut deprecated = Vec::new();
    let ips = lookup(annotations, LOAD_BALANCER_IPS, &mut deprecated)?;
    let pool = lookup(annotations, ADDRESS_POOL, &mut deprecated)?;
    let sharing = lookup(annotations, ALLOW_SHARED_IP, &mut deprecated)?;

    let spec_ip = spec_load_balancer_ip.map(str::trim).filter(|s| !s.is_empty());
    let requested_ips = match (ips, spec_ip) {
        (Some((name, _)), Some(_)) => {
            return Err(AnnotationError::BothRequestForms { annotation: name });
        }
        (Some((name, value)), None) => parse_ip_list(&name, &value)?,
        (None, Some(value)) => vec![value.parse().map_err(|_| AnnotationError::BadSpecIp {
            value: value.to_string(),
        })?],
        (None, None) => Vec::new(),
    };
    let pool = match pool {
        Some((name, value)) if value.trim().is_empty() => {
            return Err(AnnotationError::EmptyPool { annotation: name });
        }
        Some((_, value)) => Some(value.trim().to_string()),
        None => None,
    };
    let sharing_key = sharing.map(|(_, v)| v.trim().to_string()).filter(|v| !v.is_empty());
    Ok(ServiceAnnotations {
        requested_ips,
        pool,
        sharing_key,
        deprecated,
    })
}

/// Finds `herald.io/<name>` or an older spelling of it; two spellings with different values are
/// an error rather than a silent preference.
fn lookup(
    annotations: &BTreeMap<String, String>,
    key: &'static str,
    deprecated: &mut Vec<DeprecatedAnnotation>,
) -> Result<Option<(String, String)>, AnnotationError> {
    let suffix = key.trim_start_matches("herald.io/");
    let mut found: Option<(String, String)> = annotations.get(key).map(|v| (key.to_string(), v.clone()));
    for prefix in LEGACY_PREFIXES {
        let legacy = format!("{prefix}{suffix}");
        let Some(value) = annotations.get(&legacy) else {
            continue;
        };
        deprecated.push(DeprecatedAnnotation {
            found: legacy.clone(),
            replacement: key,
        });
        match &found {
            Some((first, first_value)) if first_value.trim() != value.trim() => {
                return Err(AnnotationError::ConflictingSpellings {
                    first: first.clone(),
                    first_value: first_value.clone(),
                    second: legacy,
                    second_value: value.clone(),
                });
            }
            Some(_) => {}
            None => found = Some((legacy, value.clone())),
        }
    }
    Ok(found)
}

fn parse_ip_list(annotation: &str, value: &str) -> Result<Vec<IpAddr>, AnnotationError> {
    let parts: Vec<&str> = value.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if parts.len() > 2 {
        return Err(AnnotationError::TooManyIps {
            annotation: annotation.to_string(),
            count: parts.len(),
        });
    }
    let mut ips: Vec<IpAddr> = Vec::with_capacity(parts.len());
    for part in parts {
        let ip: IpAddr = part.parse().map_err(|_| AnnotationError::BadIp {
            annotation: annotation.to_string(),
            value: part.to_string(),
        })?;
        if let Some(first) = ips.iter().find(|other| IpFamily::of(**other) == IpFamily::of(ip)) {
            return Err(AnnotationError::SameFamilyTwice {
                annotation: annotation.to_string(),
                first: *first,
                second: ip,
                family: IpFamily::of(ip),
            });
        }
        ips.push(ip);
    }
    Ok(ips)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn err(pairs: &[(&str, &str)], spec_ip: Option<&str>) -> String {
        parse_service_annotations(&ann(pairs), spec_ip).unwrap_err().to_string()
    }

    #[test]
    fn reads_herald_annotations() {
        let parsed = parse_service_annotations(
            &ann(&[
                (LOAD_BALANCER_IPS, "10.0.0.5, fd00::5"),
                (ADDRESS_POOL, "prod"),
                (ALLOW_SHARED_IP, "web"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(
            parsed.requested_ips,
            ["10.0.0.5".parse::<IpAddr>().unwrap(), "fd00::5".parse().unwrap()]
        );
        assert_eq!(parsed.pool.as_deref(), Some("prod"));
        assert_eq!(parsed.sharing_key.as_deref(), Some("web"));
        assert!(parsed.deprecated.is_empty());
    }

    #[test]
    fn spec_load_balancer_ip_is_a_request() {
        let parsed = parse_service_annotations(&BTreeMap::new(), Some("10.1.1.1")).unwrap();
        assert_eq!(parsed.requested_ips, ["10.1.1.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            err(&[], Some("ten")),
            "spec.loadBalancerIP: \"ten\" is not an IP address"
        );
    }

    #[test]
    fn metallb_spellings_are_accepted_and_reported() {
        let parsed = parse_service_annotations(
            &ann(&[
                ("metallb.universe.tf/address-pool", "old"),
                ("metallb.io/allow-shared-ip", "k"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(parsed.pool.as_deref(), Some("old"));
        assert_eq!(parsed.sharing_key.as_deref(), Some("k"));
        let messages: Vec<String> = parsed.deprecated.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                "annotation metallb.universe.tf/address-pool is deprecated, use herald.io/address-pool instead",
                "annotation metallb.io/allow-shared-ip is deprecated, use herald.io/allow-shared-ip instead",
            ]
        );
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            err(&[(LOAD_BALANCER_IPS, "10.0.0.1,10.0.0.2,fd00::1")], None),
            "herald.io/loadBalancerIPs: 3 addresses requested, at most 2 (one IPv4 and one IPv6) are allowed"
        );
        assert_eq!(
            err(&[(LOAD_BALANCER_IPS, "10.0.0.1,10.0.0.2")], None),
            "herald.io/loadBalancerIPs: 10.0.0.1 and 10.0.0.2 are both IPv4; request at most one address per family"
        );
        assert_eq!(
            err(&[(LOAD_BALANCER_IPS, "10.0.0.1")], Some("10.0.0.1")),
            "both herald.io/loadBalancerIPs and spec.loadBalancerIP are set; use only herald.io/loadBalancerIPs (spec.loadBalancerIP is deprecated by Kubernetes)"
        );
        assert_eq!(
            err(&[("metallb.io/loadBalancerIPs", "x")], None),
            "metallb.io/loadBalancerIPs: \"x\" is not an IP address"
        );
        assert_eq!(
            err(&[(ADDRESS_POOL, " ")], None),
            "herald.io/address-pool is empty; remove it or name a pool"
        );
        assert_eq!(
            err(&[(ADDRESS_POOL, "a"), ("metallb.io/address-pool", "b")], None),
            "herald.io/address-pool (\"a\") and metallb.io/address-pool (\"b\") disagree; remove the deprecated one"
        );
    }

    #[test]
    fn empty_sharing_key_means_no_sharing() {
        let parsed = parse_service_annotations(&ann(&[(ALLOW_SHARED_IP, "")]), None).unwrap();
        assert_eq!(parsed.sharing_key, None);
    }
}
