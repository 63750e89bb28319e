//! Validation of `IPAddressPool`s and `L2Advertisement`s as pure functions.
//!
//! Each rule yields one error variant whose message tells the user what is wrong and where. A
//! pool is judged alone first ([`validate_pool`]) and then against the pools accepted before it
//! ([`validate_pools`]): when two pools overlap, the newer one is refused, so adding a bad pool
//! never takes addresses away from one that already works. What happens to a pool that was
//! valid and is edited into an invalid spec (its last valid spec stays in use) is
//! [`crate::last_valid`]'s part.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::Timestamp;
use thiserror::Error;

use crate::address::{AddressError, IpRange, parse_address_entry};
use crate::advertisement::L2AdvertisementSpec;
use crate::last_valid::{LastValid, Verdict, judge_pools};
use crate::pool::{IPAddressPool, IPAddressPoolSpec};
use crate::selector::{self, SelectorError};

/// Why a pool is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PoolError {
    #[error("metadata.name is empty: a pool needs a name")]
    MissingName,
    #[error("spec.addresses is empty: a pool needs at least one CIDR or range")]
    NoAddresses,
    /// The message includes the address error's: it is shown alone, in status conditions.
    #[error("spec.addresses[{index}]: {error}")]
    BadAddress { index: usize, error: AddressError },
    #[error("spec.addresses[{second}] ({second_entry}) overlaps spec.addresses[{first}] ({first_entry})")]
    OverlapWithin {
        first: usize,
        first_entry: String,
        second: usize,
        second_entry: String,
    },
    #[error(
        "spec.addresses[{index}] ({entry}) overlaps {other_entry} of pool {other_pool:?}; an address may belong to one pool only"
    )]
    OverlapsPool {
        index: usize,
        entry: String,
        other_pool: String,
        other_entry: String,
    },
    #[error("spec.serviceAllocation.namespaces lists {namespace:?} more than once")]
    DuplicateNamespace { namespace: String },
    #[error("spec.serviceAllocation.{field}[{index}]: {error}")]
    BadSelector {
        field: &'static str,
        index: usize,
        error: SelectorError,
    },
    #[error("spec.serviceAllocation.{field}[{index}] repeats {field}[{first}] ({selector})")]
    DuplicateSelector {
        field: &'static str,
        index: usize,
        first: usize,
        selector: String,
    },
}

/// Why an `L2Advertisement` is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum L2AdvertisementError {
    #[error("spec.ipAddressPools lists {pool:?} more than once")]
    DuplicatePool { pool: String },
    #[error("spec.{field}[{index}]: {error}")]
    BadSelector {
        field: &'static str,
        index: usize,
        error: SelectorError,
    },
    #[error("spec.{field}[{index}] repeats {field}[{first}] ({selector})")]
    DuplicateSelector {
        field: &'static str,
        index: usize,
        first: usize,
        selector: String,
    },
    #[error("spec.interfaces[{index}]: {name:?} is not a Linux interface name ({why})")]
    BadInterface {
        index: usize,
        name: String,
        why: &'static str,
    },
    #[error("spec.interfaces lists {name:?} more than once")]
    DuplicateInterface { name: String },
}

/// Herald reads its configuration from one namespace, like MetalLB reads `metallb-system`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "{kind} objects are read only from namespace {controller_namespace:?}; this one is in {namespace:?} and is ignored"
)]
pub struct WrongNamespace {
    pub kind: String,
    pub namespace: String,
    pub controller_namespace: String,
}

/// Whether an object of Herald's configuration lives where Herald reads it.
pub fn check_namespace(kind: &str, namespace: &str, controller_namespace: &str) -> Result<(), WrongNamespace> {
    if namespace == controller_namespace {
        Ok(())
    } else {
        Err(WrongNamespace {
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            controller_namespace: controller_namespace.to_string(),
        })
    }
}

/// Checks one pool on its own and returns its address ranges in the order written.
pub fn validate_pool(name: &str, spec: &IPAddressPoolSpec) -> Result<Vec<IpRange>, PoolError> {
    if name.is_empty() {
        return Err(PoolError::MissingName);
    }
    if spec.addresses.is_empty() {
        return Err(PoolError::NoAddresses);
    }
    let mut ranges: Vec<IpRange> = Vec::with_capacity(spec.addresses.len());
    for (index, entry) in spec.addresses.iter().enumerate() {
        let range = parse_address_entry(entry).map_err(|error| PoolError::BadAddress { index, error })?;
        if let Some(first) = ranges.iter().position(|r| r.overlaps(&range)) {
            return Err(PoolError::OverlapWithin {
                first,
                first_entry: spec.addresses[first].clone(),
                second: index,
                second_entry: entry.clone(),
            });
        }
        ranges.push(range);
    }
    if let Some(alloc) = &spec.service_allocation {
        let mut seen = BTreeSet::new();
        for namespace in &alloc.namespaces {
            if !seen.insert(namespace) {
                return Err(PoolError::DuplicateNamespace {
                    namespace: namespace.clone(),
                });
            }
        }
        check_selectors("namespaceSelectors", &alloc.namespace_selectors).map_err(|e| e.into_pool_error())?;
        check_selectors("serviceSelectors", &alloc.service_selectors).map_err(|e| e.into_pool_error())?;
    }
    Ok(ranges)
}

/// Checks a set of pools: each alone, then against the pools accepted before it. Pools are taken
/// oldest first (by `creationTimestamp`, then name), so the newer of two overlapping pools is the
/// one refused. Returns every pool's verdict by name. This is [`judge_pools`] with no memory of
/// earlier valid specs: the controller and the speaker call that, keeping the memory.
pub fn validate_pools(pools: &[IPAddressPool]) -> BTreeMap<String, Result<Vec<IpRange>, PoolError>> {
    let set = judge_pools(pools, &mut LastValid::new(), Timestamp::UNIX_EPOCH);
    let mut ranges: BTreeMap<String, Vec<IpRange>> = set.in_use.into_iter().map(|p| (p.name, p.ranges)).collect();
    set.verdicts
        .into_iter()
        .map(|(name, verdict)| {
            let result = match verdict {
                Verdict::Valid => Ok(ranges.remove(&name).unwrap_or_default()),
                Verdict::Stale { error, .. } | Verdict::Refused { error } => Err(error),
            };
            (name, result)
        })
        .collect()
}

/// Checks one `L2Advertisement`.
pub fn validate_l2_advertisement(spec: &L2AdvertisementSpec) -> Result<(), L2AdvertisementError> {
    let mut seen = BTreeSet::new();
    for pool in &spec.ip_address_pools {
        if !seen.insert(pool) {
            return Err(L2AdvertisementError::DuplicatePool { pool: pool.clone() });
        }
    }
    for (field, selectors) in [
        ("ipAddressPoolSelectors", &spec.ip_address_pool_selectors),
        ("nodeSelectors", &spec.node_selectors),
        ("serviceSelectors", &spec.service_selectors),
    ] {
        check_selectors(field, selectors).map_err(|e| e.into_l2_error())?;
    }
    let mut seen = BTreeSet::new();
    for (index, name) in spec.interfaces.iter().enumerate() {
        if let Some(why) = interface_name_problem(name) {
            return Err(L2AdvertisementError::BadInterface {
                index,
                name: name.clone(),
                why,
            });
        }
        if !seen.insert(name) {
            return Err(L2AdvertisementError::DuplicateInterface { name: name.clone() });
        }
    }
    Ok(())
}

/// A selector-list problem, before it is placed in the pool or advertisement error type.
enum SelectorListError {
    Bad {
        field: &'static str,
        index: usize,
        error: SelectorError,
    },
    Duplicate {
        field: &'static str,
        index: usize,
        first: usize,
        selector: String,
    },
}

impl SelectorListError {
    fn into_pool_error(self) -> PoolError {
        match self {
            SelectorListError::Bad { field, index, error } => PoolError::BadSelector { field, index, error },
            SelectorListError::Duplicate {
                field,
                index,
                first,
                selector,
            } => PoolError::DuplicateSelector {
                field,
                index,
                first,
                selector,
            },
        }
    }

    fn into_l2_error(self) -> L2AdvertisementError {
        match self {
            SelectorListError::Bad { field, index, error } => L2AdvertisementError::BadSelector { field, index, error },
            SelectorListError::Duplicate {
                field,
                index,
                first,
                selector,
            } => L2AdvertisementError::DuplicateSelector {
                field,
                index,
                first,
                selector,
            },
        }
    }
}

/// Every selector valid, and no selector listed twice (a repeat is always a copy-paste slip).
fn check_selectors(field: &'static str, selectors: &[LabelSelector]) -> Result<(), SelectorListError> {
    for (index, sel) in selectors.iter().enumerate() {
        selector::validate(sel).map_err(|error| SelectorListError::Bad { field, index, error })?;
        if let Some(first) = selectors[..index].iter().position(|earlier| earlier == sel) {
            return Err(SelectorListError::Duplicate {
                field,
                index,
                first,
                selector: selector::to_string(sel),
            });
        }
    }
    Ok(())
}

/// Linux accepts at most 15 bytes, no `/`, no whitespace, and not `.` or `..`.
fn interface_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name.len() > 15 {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("reserved name")
    } else if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        Some("contains '/', ':' or whitespace")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::ServiceAllocation;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, Time};

    fn spec(addresses: &[&str]) -> IPAddressPoolSpec {
        IPAddressPoolSpec::with_addresses(addresses.iter().copied())
    }

    fn pool_err(addresses: &[&str]) -> String {
        validate_pool("p", &spec(addresses)).unwrap_err().to_string()
    }

    fn labels(k: &str, v: &str) -> LabelSelector {
        LabelSelector {
            match_labels: Some([(k.to_string(), v.to_string())].into()),
            ..Default::default()
        }
    }

    fn pool(name: &str, created_secs: i64, addresses: &[&str]) -> IPAddressPool {
        let mut p = IPAddressPool::new(name, spec(addresses));
        p.metadata = ObjectMeta {
            name: Some(name.into()),
            creation_timestamp: Some(Time(k8s_openapi::jiff::Timestamp::from_second(created_secs).unwrap())),
            ..Default::default()
        };
        p
    }

    #[test]
    fn pool_address_rules() {
        assert_eq!(
            validate_pool("", &spec(&["10.0.0.0/24"])).unwrap_err().to_string(),
            "metadata.name is empty: a pool needs a name"
        );
        assert_eq!(
            pool_err(&[]),
            "spec.addresses is empty: a pool needs at least one CIDR or range"
        );
        assert_eq!(
            pool_err(&["10.0.0.0/24", "100.200.300.400/24"]),
            "spec.addresses[1]: \"100.200.300.400/24\" is not a valid CIDR (expected e.g. 192.168.10.0/24 or fd00::/120)"
        );
        assert_eq!(
            pool_err(&["10.0.0.10-10.0.0.1"]),
            "spec.addresses[0]: \"10.0.0.10-10.0.0.1\" is a reversed range: the first address must not be after the last"
        );
        assert_eq!(
            pool_err(&["10.0.0.1-fd00::1"]),
            "spec.addresses[0]: \"10.0.0.1-fd00::1\" mixes IPv4 and IPv6: a range must stay within one family"
        );
        assert_eq!(
            pool_err(&["10.0.0.0/24", "10.0.0.128-10.0.1.5"]),
            "spec.addresses[1] (10.0.0.128-10.0.1.5) overlaps spec.addresses[0] (10.0.0.0/24)"
        );
        let ranges = validate_pool("p", &spec(&["10.0.0.0/24", "fd00::/64", "10.0.1.1 - 10.0.1.1"])).unwrap();
        assert_eq!(ranges.len(), 3);
    }

    #[test]
    fn pool_service_allocation_rules() {
        let mut s = spec(&["10.0.0.0/24"]);
        s.service_allocation = Some(ServiceAllocation {
            namespaces: vec!["a".into(), "b".into(), "a".into()],
            ..Default::default()
        });
        assert_eq!(
            validate_pool("p", &s).unwrap_err().to_string(),
            "spec.serviceAllocation.namespaces lists \"a\" more than once"
        );
        s.service_allocation = Some(ServiceAllocation {
            namespace_selectors: vec![labels("team", "a"), labels("team", "a")],
            ..Default::default()
        });
        assert_eq!(
            validate_pool("p", &s).unwrap_err().to_string(),
            "spec.serviceAllocation.namespaceSelectors[1] repeats namespaceSelectors[0] (team=a)"
        );
        s.service_allocation = Some(ServiceAllocation {
            service_selectors: vec![LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "foo".into(),
                    operator: "In".into(),
                    values: Some(vec!["bar".into(), "bar".into()]),
                }]),
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(
            validate_pool("p", &s).unwrap_err().to_string(),
            "spec.serviceAllocation.serviceSelectors[0]: matchExpressions for key \"foo\": value \"bar\" is listed more than once"
        );
    }

    #[test]
    fn newer_overlapping_pool_is_refused_and_older_kept() {
        let verdicts = validate_pools(&[
            pool("newer", 200, &["10.0.0.128/25"]),
            pool("older", 100, &["10.0.0.0/24"]),
            pool("elsewhere", 300, &["10.1.0.0/24"]),
        ]);
        assert!(verdicts["older"].is_ok());
        assert!(verdicts["elsewhere"].is_ok());
        assert_eq!(
            verdicts["newer"].as_ref().unwrap_err().to_string(),
            "spec.addresses[0] (10.0.0.128/25) overlaps 10.0.0.0/24 of pool \"older\"; an address may belong to one pool only"
        );
    }

    #[test]
    fn identical_cidrs_in_two_pools_overlap() {
        let verdicts = validate_pools(&[pool("a", 1, &["10.0.0.0/8"]), pool("b", 1, &["10.0.0.0/8"])]);
        assert!(verdicts["a"].is_ok());
        assert!(verdicts["b"].is_err());
    }

    #[test]
    fn refused_pool_does_not_block_later_pools() {
        let verdicts = validate_pools(&[pool("a", 1, &["10.0.0.0/24", "bad"]), pool("b", 2, &["10.0.0.0/24"])]);
        assert!(verdicts["a"].is_err());
        assert!(verdicts["b"].is_ok(), "a refused pool must not reserve its addresses");
    }

    #[test]
    fn namespace_rule() {
        assert!(check_namespace("IPAddressPool", "herald-system", "herald-system").is_ok());
        assert_eq!(
            check_namespace("IPAddressPool", "default", "herald-system")
                .unwrap_err()
                .to_string(),
            "IPAddressPool objects are read only from namespace \"herald-system\"; this one is in \"default\" and is ignored"
        );
    }

    #[test]
    fn advertisement_rules() {
        let err = |s: L2AdvertisementSpec| validate_l2_advertisement(&s).unwrap_err().to_string();
        assert_eq!(
            err(L2AdvertisementSpec {
                ip_address_pools: vec!["testPool".into(), "testPool".into()],
                ..Default::default()
            }),
            "spec.ipAddressPools lists \"testPool\" more than once"
        );
        assert_eq!(
            err(L2AdvertisementSpec {
                node_selectors: vec![labels("first", "true"), labels("first", "true")],
                ..Default::default()
            }),
            "spec.nodeSelectors[1] repeats nodeSelectors[0] (first=true)"
        );
        assert_eq!(
            err(L2AdvertisementSpec {
                ip_address_pool_selectors: vec![labels("a", "b"), labels("a", "b")],
                ..Default::default()
            }),
            "spec.ipAddressPoolSelectors[1] repeats ipAddressPoolSelectors[0] (a=b)"
        );
        assert_eq!(
            err(L2AdvertisementSpec {
                service_selectors: vec![labels("a", "not valid")],
                ..Default::default()
            }),
            "spec.serviceSelectors[0]: invalid label value \"not valid\" for key \"a\": a value must be empty or at most 63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric"
        );
        assert_eq!(
            err(L2AdvertisementSpec {
                interfaces: vec!["eth0".into(), "a-very-long-interface-name".into()],
                ..Default::default()
            }),
            "spec.interfaces[1]: \"a-very-long-interface-name\" is not a Linux interface name (longer than 15 bytes)"
        );
        assert_eq!(
            err(L2AdvertisementSpec {
                interfaces: vec!["eth0".into(), "eth0".into()],
                ..Default::default()
            }),
            "spec.interfaces lists \"eth0\" more than once"
        );
        assert!(validate_l2_advertisement(&L2AdvertisementSpec::default()).is_ok());
    }
}
