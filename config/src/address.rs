//! IP address ranges as written in `IPAddressPool.spec.addresses`: CIDRs (`10.0.0.0/24`) and
//! inclusive ranges (`10.0.0.10-10.0.0.20`, spaces around the dash allowed), IPv4 and IPv6.
//!
//! Every entry becomes one [`IpRange`]: an inclusive `first..=last` interval within one family.
//! The allocator works on these intervals directly, so large IPv6 prefixes are never enumerated.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;
use thiserror::Error;

/// An IP family, in the spelling Kubernetes uses in `spec.ipFamilies`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// The name used in Kubernetes objects (`IPv4`, `IPv6`).
    pub fn as_k8s(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }

    pub fn from_k8s(s: &str) -> Option<Self> {
        match s {
            "IPv4" => Some(IpFamily::V4),
            "IPv6" => Some(IpFamily::V6),
            _ => None,
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_k8s())
    }
}

/// Why one `spec.addresses` entry cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AddressError {
    #[error("address entry is empty")]
    Empty,
    #[error("{entry:?} is not a valid CIDR (expected e.g. 192.168.10.0/24 or fd00::/120)")]
    BadCidr { entry: String },
    #[error(
        "{entry:?} has host bits set: did you mean {network} (the whole prefix) or {address}/{host_len} (only that address)?"
    )]
    HostBitsSet {
        entry: String,
        network: IpNet,
        address: IpAddr,
        host_len: u8,
    },
    #[error("{entry:?}: {part:?} is not a valid IP address")]
    BadRangeAddress { entry: String, part: String },
    #[error("{entry:?} is a reversed range: the first address must not be after the last")]
    ReversedRange { entry: String },
    #[error("{entry:?} mixes IPv4 and IPv6: a range must stay within one family")]
    MixedFamilies { entry: String },
}

/// An inclusive interval of addresses of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpRange {
    first: IpAddr,
    last: IpAddr,
}

impl IpRange {
    /// `first..=last`; both of one family and `first <= last`.
    pub fn new(first: IpAddr, last: IpAddr) -> Option<Self> {
        (IpFamily::of(first) == IpFamily::of(last) && first <= last).then_some(IpRange { first, last })
    }

    pub fn single(ip: IpAddr) -> Self {
        IpRange { first: ip, last: ip }
    }

    pub fn from_net(net: IpNet) -> Self {
        IpRange {
            first: net.network(),
            last: net.broadcast(),
        }
    }

    pub fn first(&self) -> IpAddr {
        self.first
    }

    pub fn last(&self) -> IpAddr {
        self.last
    }

    pub fn family(&self) -> IpFamily {
        IpFamily::of(self.first)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        IpFamily::of(ip) == self.family() && self.first <= ip && ip <= self.last
    }

    pub fn overlaps(&self, other: &IpRange) -> bool {
        self.family() == other.family() && self.first <= other.last && other.first <= self.last
    }

    /// Number of addresses, saturating at `u128::MAX` (only `::/0` saturates).
    pub fn size(&self) -> u128 {
        (to_u128(self.last) - to_u128(self.first)).saturating_add(1)
    }

    /// The smallest list of CIDRs covering exactly this range, in address order.
    pub fn to_cidrs(&self) -> Vec<IpNet> {
        let max_len: u32 = match self.family() {
            IpFamily::V4 => 32,
            IpFamily::V6 => 128,
        };
        let mut out = Vec::new();
        let mut start = to_u128(self.first);
        let end = to_u128(self.last);
        loop {
            // Largest aligned block starting at `start` that does not pass `end`.
            let align = if start == 0 {
                max_len
            } else {
                start.trailing_zeros().min(max_len)
            };
            let mut bits = align;
            while bits > 0 && block_last(start, bits) > end {
                bits -= 1;
            }
            let prefix = (max_len - bits) as u8;
            let net = IpNet::new(from_u128(self.family(), start), prefix).expect("prefix within family length");
            out.push(net);
            let last = block_last(start, bits);
            if last >= end {
                return out;
            }
            start = last + 1;
        }
    }
}

fn block_last(start: u128, bits: u32) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        start | ((1u128 << bits) - 1)
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_cidrs().as_slice() {
            [net] => write!(f, "{net}"),
            _ => write!(f, "{}-{}", self.first, self.last),
        }
    }
}

impl FromStr for IpRange {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_address_entry(s)
    }
}

/// Parses one `spec.addresses` entry.
///
/// A CIDR must be written exactly (no surrounding spaces) and name a network: `10.0.0.5/24` is
/// refused rather than silently widened to `10.0.0.0/24`, because the two readings differ by 255
/// addresses handed to Services. A range may have spaces around the dash.
pub fn parse_address_entry(entry: &str) -> Result<IpRange, AddressError> {
    if entry.trim().is_empty() {
        return Err(AddressError::Empty);
    }
    if let Some((a, b)) = entry.split_once('-') {
        let parse = |part: &str| {
            IpAddr::from_str(part.trim()).map_err(|_| AddressError::BadRangeAddress {
                entry: entry.to_string(),
                part: part.trim().to_string(),
            })
        };
        let (first, last) = (parse(a)?, parse(b)?);
        if IpFamily::of(first) != IpFamily::of(last) {
            return Err(AddressError::MixedFamilies {
                entry: entry.to_string(),
            });
        }
        return IpRange::new(first, last).ok_or_else(|| AddressError::ReversedRange {
            entry: entry.to_string(),
        });
    }
    let net = IpNet::from_str(entry).map_err(|_| AddressError::BadCidr {
        entry: entry.to_string(),
    })?;
    if net.addr() != net.network() {
        return Err(AddressError::HostBitsSet {
            entry: entry.to_string(),
            network: net.trunc(),
            address: net.addr(),
            host_len: net.max_prefix_len(),
        });
    }
    Ok(IpRange::from_net(net))
}

/// The address as an integer, for interval arithmetic across both families.
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Inverse of [`to_u128`]; `value` must fit the family.
pub fn from_u128(family: IpFamily, value: u128) -> IpAddr {
    match family {
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::from(value as u32)),
        IpFamily::V6 => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

/// MetalLB's "buggy" IPv4 addresses: ones ending in `.0` or `.255`, which some old network
/// equipment treats as network/broadcast addresses whatever the real prefix.
pub fn is_buggy_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => matches!(v4.octets()[3], 0 | 255),
        IpAddr::V6(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_cidrs_and_ranges() {
        let r = parse_address_entry("10.0.0.0/30").unwrap();
        assert_eq!((r.first(), r.last()), (ip("10.0.0.0"), ip("10.0.0.3")));
        let r = parse_address_entry("10.0.0.10 - 10.0.0.20").unwrap();
        assert_eq!((r.first(), r.last(), r.size()), (ip("10.0.0.10"), ip("10.0.0.20"), 11));
        let r = parse_address_entry("fd00::1-fd00::1").unwrap();
        assert_eq!(r.size(), 1);
        assert_eq!(parse_address_entry("fd00::/64").unwrap().size(), 1 << 64);
        assert_eq!(parse_address_entry("::/0").unwrap().size(), u128::MAX);
    }

    #[test]
    fn error_messages_name_the_problem() {
        let msg = |s: &str| parse_address_entry(s).unwrap_err().to_string();
        assert_eq!(msg(""), "address entry is empty");
        assert_eq!(
            msg("10.0.0.0/33"),
            "\"10.0.0.0/33\" is not a valid CIDR (expected e.g. 192.168.10.0/24 or fd00::/120)"
        );
        assert_eq!(
            msg(" 10.0.0.0/24"),
            "\" 10.0.0.0/24\" is not a valid CIDR (expected e.g. 192.168.10.0/24 or fd00::/120)"
        );
        assert_eq!(
            msg("10.20.30.40/24"),
            "\"10.20.30.40/24\" has host bits set: did you mean 10.20.30.0/24 (the whole prefix) or 10.20.30.40/32 (only that address)?"
        );
        assert_eq!(
            msg("10.0.0.9-10.0.0.1"),
            "\"10.0.0.9-10.0.0.1\" is a reversed range: the first address must not be after the last"
        );
        assert_eq!(
            msg("10.0.0.1-fd00::1"),
            "\"10.0.0.1-fd00::1\" mixes IPv4 and IPv6: a range must stay within one family"
        );
        assert_eq!(
            msg("10.0.0.1-banana"),
            "\"10.0.0.1-banana\": \"banana\" is not a valid IP address"
        );
    }

    #[test]
    fn ranges_split_into_minimal_cidrs() {
        let cidrs = |s: &str| {
            parse_address_entry(s)
                .unwrap()
                .to_cidrs()
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(cidrs("10.0.0.0/24"), ["10.0.0.0/24"]);
        assert_eq!(
            cidrs("10.0.0.1-10.0.0.6"),
            ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]
        );
        assert_eq!(cidrs("0.0.0.0-255.255.255.255"), ["0.0.0.0/0"]);
        assert_eq!(cidrs("::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), ["::/0"]);
    }

    #[test]
    fn buggy_ips_are_v4_dot_zero_and_dot_255() {
        assert!(is_buggy_ip(ip("10.0.1.0")));
        assert!(is_buggy_ip(ip("10.0.1.255")));
        assert!(!is_buggy_ip(ip("10.0.1.1")));
        assert!(!is_buggy_ip(ip("fd00::ff")));
    }

    proptest! {
        #[test]
        fn cidr_split_covers_exactly_the_range(a in any::<u32>(), b in any::<u32>()) {
            let (lo, hi) = (a.min(b), a.max(b));
            let range = IpRange::new(IpAddr::V4(lo.into()), IpAddr::V4(hi.into())).unwrap();
            let nets = range.to_cidrs();
            prop_assert!(nets.len() <= 62);
            let mut next = lo as u128;
            for net in &nets {
                prop_assert_eq!(to_u128(net.network()), next);
                next = to_u128(net.broadcast()) + 1;
            }
            prop_assert_eq!(next, hi as u128 + 1);
        }

        #[test]
        fn overlap_is_symmetric_and_matches_containment(a in 0u32..64, b in 0u32..64, c in 0u32..64, d in 0u32..64) {
            let mk = |x: u32, y: u32| IpRange::new(IpAddr::V4(x.min(y).into()), IpAddr::V4(x.max(y).into())).unwrap();
            let (r1, r2) = (mk(a, b), mk(c, d));
            let brute = (0u32..64).any(|x| r1.contains(IpAddr::V4(x.into())) && r2.contains(IpAddr::V4(x.into())));
            prop_assert_eq!(r1.overlaps(&r2), brute);
            prop_assert_eq!(r2.overlaps(&r1), brute);
        }
    }
}
