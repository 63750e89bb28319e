//! Pools as the allocator sees them: a parsed `IPAddressPool` ([`Pool`]) and its per-family
//! address space ([`FamilySpace`]) with the free set, capacity and counters.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use herald_config::address::{IpFamily, IpRange, from_u128, is_buggy_ip, parse_address_entry, to_u128};
use herald_config::pool::{IPAddressPoolSpec, ServiceAllocation};
use herald_config::selector;

use super::error::AllocError;
use super::free_set::IntervalSet;

/// One `IPAddressPool`, parsed: what the allocator needs from the custom resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    pub name: String,
    pub ranges: Vec<IpRange>,
    pub auto_assign: bool,
    pub avoid_buggy_ips: bool,
    pub service_allocation: Option<ServiceAllocation>,
}

impl Pool {
    /// A pool with these address ranges, `autoAssign: true`, no buggy-IP avoidance, no
    /// `serviceAllocation`.
    pub fn new(name: impl Into<String>, ranges: Vec<IpRange>) -> Self {
        Pool {
            name: name.into(),
            ranges,
            auto_assign: true,
            avoid_buggy_ips: false,
            service_allocation: None,
        }
    }

    /// Parses `spec.addresses` with [`parse_address_entry`]; the first bad entry is the error.
    /// Cross-pool rules (overlaps, selector syntax) are `herald_config::validation`'s job.
    pub fn from_spec(name: &str, spec: &IPAddressPoolSpec) -> Result<Self, AllocError> {
        let ranges = spec
            .addresses
            .iter()
            .map(|entry| {
                parse_address_entry(entry).map_err(|error| AllocError::BadPoolAddress {
                    pool: name.to_string(),
                    error,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pool {
            name: name.to_string(),
            ranges,
            auto_assign: spec.auto_assign,
            avoid_buggy_ips: spec.avoid_buggy_ips,
            service_allocation: spec.service_allocation.clone(),
        })
    }

    /// Whether `serviceAllocation` lets a Service in `namespace` (labelled `namespace_labels`)
    /// with `service_labels` use this pool. No `serviceAllocation`, or one with only a priority,
    /// lets everyone in. `namespaces` and `namespaceSelectors` are alternatives (either may
    /// admit the namespace); when both a namespace rule and `serviceSelectors` are set, both must
    /// hold.
    pub fn admits(
        &self,
        namespace: &str,
        namespace_labels: &BTreeMap<String, String>,
        service_labels: &BTreeMap<String, String>,
    ) -> bool {
        let Some(sa) = &self.service_allocation else {
            return true;
        };
        sa.allows_namespace(namespace, namespace_labels) && sa.allows_service(service_labels)
    }

    /// The restriction in words, for [`AllocError::PoolNotAllowed`].
    pub(crate) fn restriction_text(&self) -> String {
        let Some(sa) = &self.service_allocation else {
            return "admits every Service".to_string();
        };
        let mut namespace_rules = Vec::new();
        if !sa.namespaces.is_empty() {
            let word = if sa.namespaces.len() == 1 {
                "namespace"
            } else {
                "namespaces"
            };
            namespace_rules.push(format!("in {word} {}", sa.namespaces.join(", ")));
        }
        for s in &sa.namespace_selectors {
            namespace_rules.push(format!("in namespaces labelled {}", selector::to_string(s)));
        }
        let label_rules: Vec<String> = sa
            .service_selectors
            .iter()
            .map(|s| format!("labelled {}", selector::to_string(s)))
            .collect();
        match (namespace_rules.is_empty(), label_rules.is_empty()) {
            (true, true) => "admits every Service".to_string(),
            (false, true) => format!("admits only Services {}", namespace_rules.join(" or ")),
            (true, false) => format!("admits only Services {}", label_rules.join(" or ")),
            (false, false) => format!(
                "admits only Services {} that are also {}",
                namespace_rules.join(" or "),
                label_rules.join(" or ")
            ),
        }
    }

    /// Rank among the pools whose `serviceAllocation` admits a Service: lower first, 0 last.
    pub(crate) fn priority_rank(&self) -> Option<(bool, i32)> {
        self.service_allocation
            .as_ref()
            .map(|sa| (sa.priority == 0, sa.priority))
    }
}

/// How addresses of one family map to the free set's integers.
///
/// With `avoidBuggyIPs`, IPv4 addresses ending in `.0`/`.255` are simply not representable: the
/// 254 usable addresses of every /24 are numbered densely. The free set then never holds a
/// buggy address, so "lowest free" stays one lookup, and capacity counts come out right
/// without special cases (a /24 has 254, a /25 at .128 has 127).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Plain,
    SkipBuggyV4,
}

const USABLE_PER_V4_BLOCK: u128 = 254;

impl Encoding {
    pub fn for_pool(family: IpFamily, avoid_buggy_ips: bool) -> Self {
        if family == IpFamily::V4 && avoid_buggy_ips {
            Encoding::SkipBuggyV4
        } else {
            Encoding::Plain
        }
    }

    /// The index of an address, or `None` if this encoding excludes it.
    pub fn encode(self, ip: IpAddr) -> Option<u128> {
        match self {
            Encoding::Plain => Some(to_u128(ip)),
            Encoding::SkipBuggyV4 => {
                if is_buggy_ip(ip) || !ip.is_ipv4() {
                    return None;
                }
                let raw = to_u128(ip);
                Some((raw >> 8) * USABLE_PER_V4_BLOCK + (raw & 0xff) - 1)
            }
        }
    }

    /// Inverse of [`Encoding::encode`].
    pub fn decode(self, family: IpFamily, index: u128) -> IpAddr {
        match self {
            Encoding::Plain => from_u128(family, index),
            Encoding::SkipBuggyV4 => {
                let raw = ((index / USABLE_PER_V4_BLOCK) << 8) | (index % USABLE_PER_V4_BLOCK + 1);
                from_u128(IpFamily::V4, raw)
            }
        }
    }

    /// The indices of the representable addresses of `first..=last` (raw integers), or `None`
    /// when there are none.
    pub fn encode_range(self, first: u128, last: u128) -> Option<(u128, u128)> {
        match self {
            Encoding::Plain => Some((first, last)),
            Encoding::SkipBuggyV4 => {
                let up = match first & 0xff {
                    0 => first + 1,
                    255 => first + 2,
                    _ => first,
                };
                let down = match last & 0xff {
                    255 => last.checked_sub(1)?,
                    0 => last.checked_sub(2)?,
                    _ => last,
                };
                if up > down || up > u32::MAX as u128 {
                    return None;
                }
                let index = |raw: u128| (raw >> 8) * USABLE_PER_V4_BLOCK + (raw & 0xff) - 1;
                Some((index(up), index(down)))
            }
        }
    }
}

/// One family of one pool: which addresses it has, which are free, how many it has handed out.
///
/// Invariants (checked by the allocator's `verify`):
/// - `raw` holds the pool's addresses of this family as plain integers (buggy ones included);
/// - `members` holds the encoded indices of the usable ones; `free ⊆ members`;
/// - an address is in `free` iff it is usable here and no Service holds it;
/// - `assigned` is the number of held addresses attributed to this pool and family.
#[derive(Clone, Debug)]
pub struct FamilySpace {
    pub family: IpFamily,
    pub encoding: Encoding,
    pub raw: IntervalSet,
    pub members: IntervalSet,
    pub free: IntervalSet,
    pub assigned: u128,
}

impl FamilySpace {
    fn new(family: IpFamily, avoid_buggy_ips: bool, ranges: &[IpRange]) -> Self {
        let encoding = Encoding::for_pool(family, avoid_buggy_ips);
        let mut raw = IntervalSet::new();
        let mut members = IntervalSet::new();
        for range in ranges.iter().filter(|r| r.family() == family) {
            let (first, last) = (to_u128(range.first()), to_u128(range.last()));
            raw.insert_range(first, last);
            if let Some((lo, hi)) = encoding.encode_range(first, last) {
                members.insert_range(lo, hi);
            }
        }
        FamilySpace {
            family,
            encoding,
            free: members.clone(),
            raw,
            members,
            assigned: 0,
        }
    }

    /// Whether the pool lists `ip` (usable or not).
    pub fn lists(&self, ip: IpAddr) -> bool {
        IpFamily::of(ip) == self.family && self.raw.contains(to_u128(ip))
    }

    /// Whether `ip` is listed and usable (not excluded by `avoidBuggyIPs`).
    pub fn usable(&self, ip: IpAddr) -> bool {
        self.lists(ip) && self.encoding.encode(ip).is_some()
    }

    pub fn is_free(&self, ip: IpAddr) -> bool {
        IpFamily::of(ip) == self.family && self.encoding.encode(ip).is_some_and(|i| self.free.contains(i))
    }

    pub fn lowest_free(&self) -> Option<IpAddr> {
        self.free.first().map(|i| self.encoding.decode(self.family, i))
    }

    /// Marks `ip` as held. Returns whether it was free here.
    pub fn take(&mut self, ip: IpAddr) -> bool {
        self.encoding.encode(ip).is_some_and(|i| self.free.remove(i))
    }

    /// Marks `ip` as free again if it is usable here.
    pub fn give_back(&mut self, ip: IpAddr) {
        if self.usable(ip)
            && let Some(i) = self.encoding.encode(ip)
        {
            self.free.insert(i);
        }
    }
}

/// A pool with its two family spaces, as held by the allocator.
#[derive(Clone, Debug)]
pub struct PoolState {
    pub pool: Pool,
    pub v4: FamilySpace,
    pub v6: FamilySpace,
}

impl PoolState {
    pub fn new(pool: Pool) -> Self {
        PoolState {
            v4: FamilySpace::new(IpFamily::V4, pool.avoid_buggy_ips, &pool.ranges),
            v6: FamilySpace::new(IpFamily::V6, pool.avoid_buggy_ips, &pool.ranges),
            pool,
        }
    }

    pub fn space(&self, family: IpFamily) -> &FamilySpace {
        match family {
            IpFamily::V4 => &self.v4,
            IpFamily::V6 => &self.v6,
        }
    }

    pub fn space_mut(&mut self, family: IpFamily) -> &mut FamilySpace {
        match family {
            IpFamily::V4 => &mut self.v4,
            IpFamily::V6 => &mut self.v6,
        }
    }

    pub fn name(&self) -> &str {
        &self.pool.name
    }

    pub fn stats(&self) -> PoolStats {
        let clamp = |n: u128| i64::try_from(n).unwrap_or(i64::MAX);
        PoolStats {
            assigned_v4: clamp(self.v4.assigned),
            assigned_v6: clamp(self.v6.assigned),
            available_v4: clamp(self.v4.free.len()),
            available_v6: clamp(self.v6.free.len()),
        }
    }
}

/// A pool's counters, as published in `IPAddressPool.status`. Addresses, not Services: an
/// address shared by three Services counts once. Values above `i64::MAX` (IPv6 prefixes of /65
/// or wider) are reported as `i64::MAX`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub assigned_v4: i64,
    pub assigned_v6: i64,
    pub available_v4: i64,
    pub available_v6: i64,
}

impl fmt::Display for PoolStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IPv4 {} assigned, {} available; IPv6 {} assigned, {} available",
            self.assigned_v4, self.available_v4, self.assigned_v6, self.available_v6
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buggy_encoding_counts_like_metallb() {
        let count = |first: &str, last: &str| {
            let (a, b) = (to_u128(first.parse().unwrap()), to_u128(last.parse().unwrap()));
            Encoding::SkipBuggyV4
                .encode_range(a, b)
                .map_or(0, |(lo, hi)| hi - lo + 1)
        };
        assert_eq!(count("1.2.3.0", "1.2.3.255"), 254);
        assert_eq!(count("2.3.4.128", "2.3.4.255"), 127);
        assert_eq!(count("1.2.3.0", "1.2.3.1"), 1);
        assert_eq!(count("1.2.3.255", "1.2.4.0"), 0);
        assert_eq!(count("255.255.255.255", "255.255.255.255"), 0);
        assert_eq!(count("0.0.0.0", "0.0.0.0"), 0);
    }

    proptest! {
        #[test]
        fn buggy_encoding_is_a_monotone_bijection(a in any::<u32>(), b in any::<u32>()) {
            let enc = Encoding::SkipBuggyV4;
            let (ia, ib) = (IpAddr::V4(a.into()), IpAddr::V4(b.into()));
            match (enc.encode(ia), enc.encode(ib)) {
                (Some(x), Some(y)) => {
                    prop_assert_eq!(x.cmp(&y), a.cmp(&b));
                    prop_assert_eq!(enc.decode(IpFamily::V4, x), ia);
                }
                (None, _) => prop_assert!(is_buggy_ip(ia)),
                (_, None) => prop_assert!(is_buggy_ip(ib)),
            }
            // encode_range covers exactly the usable addresses of a short range.
            let (lo, hi) = (a.min(b), a.min(b).saturating_add(600).min(a.max(b)));
            let usable = (lo..=hi).filter(|&x| !is_buggy_ip(IpAddr::V4(x.into()))).count() as u128;
            let encoded = enc.encode_range(lo as u128, hi as u128).map_or(0, |(x, y)| y - x + 1);
            prop_assert_eq!(encoded, usable);
        }
    }
}
