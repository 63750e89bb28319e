//! The allocator's errors, one variant per rule. Messages go verbatim into Kubernetes Events on
//! the Service, so each says which rule refused and names the addresses, pools and Services
//! involved.

use std::fmt;
use std::net::IpAddr;

use herald_config::address::{AddressError, IpFamily};
use thiserror::Error;

use super::request::ServiceKey;
use super::sharing::ShareRefusal;

/// Why an allocation request (or a pool definition) was refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum AllocError {
    /// The message includes the address error's: it is shown alone, in Events.
    #[error("IPAddressPool {pool:?}: {error}")]
    BadPoolAddress { pool: String, error: AddressError },
    #[error("IPAddressPool {pool:?} (named by the herald.io/address-pool annotation) does not exist")]
    UnknownPool { pool: String },
    #[error("IPAddressPool {pool:?} (named by the herald.io/address-pool annotation) is invalid: {rule}")]
    InvalidPool { pool: String, rule: String },
    #[error("IPAddressPool {pool:?} may not serve {service}: its serviceAllocation {restriction}")]
    PoolNotAllowed {
        pool: String,
        service: ServiceKey,
        restriction: String,
    },
    #[error("no free {family} address left in IPAddressPool {pool:?}")]
    PoolExhausted { pool: String, family: IpFamily },
    #[error("IPAddressPool {pool:?} has no {family} addresses")]
    PoolLacksFamily { pool: String, family: IpFamily },
    #[error(
        "the Service requires dual stack (ipFamilyPolicy RequireDualStack) but IPAddressPool {pool:?} has only {family} addresses"
    )]
    PoolNotDualStack { pool: String, family: IpFamily },
    #[error(
        "no IPAddressPool may give this Service an address automatically: none has autoAssign enabled and a serviceAllocation (if any) that admits it; name a pool with herald.io/address-pool or an address with herald.io/loadBalancerIPs"
    )]
    NoEligiblePool,
    #[error("no free {} in any IPAddressPool this Service may use (tried {})", families_text(.families), PoolList(.tried))]
    AllPoolsExhausted {
        families: Vec<IpFamily>,
        tried: Vec<String>,
    },
    #[error("{ip} is not in any IPAddressPool")]
    IpNotInAnyPool { ip: IpAddr },
    #[error("{ip} is not in IPAddressPool {pool:?} named by the herald.io/address-pool annotation")]
    IpNotInRequestedPool { ip: IpAddr, pool: String },
    #[error("{ip} is in use by {holder} and cannot be shared: {reason}")]
    IpInUse {
        ip: IpAddr,
        holder: ServiceKey,
        /// Boxed: it can hold two label selectors, and errors should stay small.
        reason: Box<ShareRefusal>,
    },
    #[error("{ip} is an {family} address but the Service's ipFamilies allow only {}", families_list(.allowed))]
    FamilyMismatch {
        ip: IpAddr,
        family: IpFamily,
        allowed: Vec<IpFamily>,
    },
    #[error("{count} addresses requested; at most two are allowed, one IPv4 and one IPv6")]
    TooManyIps { count: usize },
    #[error("{first} and {second} are both {family} addresses; request at most one address per family")]
    TwoIpsOfOneFamily {
        first: IpAddr,
        second: IpAddr,
        family: IpFamily,
    },
    #[error("{ip} ends in .0 or .255 and IPAddressPool {pool:?} has avoidBuggyIPs enabled")]
    BuggyIp { ip: IpAddr, pool: String },
    #[error(
        "{first} (IPAddressPool {first_pool:?}) and {second} (IPAddressPool {second_pool:?}) are in different pools; a dual-stack Service's addresses must come from one pool"
    )]
    IpsInDifferentPools {
        first: IpAddr,
        first_pool: String,
        second: IpAddr,
        second_pool: String,
    },
    #[error(
        "the Service requires dual stack (ipFamilyPolicy RequireDualStack) but requests only {ip}; request one IPv4 and one IPv6 address"
    )]
    DualStackNeedsTwoIps { ip: IpAddr },
    #[error("no addresses given")]
    NoAddresses,
    #[error("spec.ipFamilies is empty, so the Service's IP family is unknown")]
    NoIpFamilies,
    #[error(transparent)]
    Annotation(#[from] herald_config::annotations::AnnotationError),
    #[error("unknown IP family {family:?} in spec.ipFamilies (expected IPv4 or IPv6)")]
    BadIpFamily { family: String },
    #[error("unknown ipFamilyPolicy {policy:?} (expected SingleStack, PreferDualStack or RequireDualStack)")]
    BadFamilyPolicy { policy: String },
    #[error("unknown port protocol {protocol:?} in spec.ports (expected TCP, UDP or SCTP)")]
    BadProtocol { protocol: String },
    #[error("port {port} in spec.ports is out of range (1-65535)")]
    BadPort { port: i32 },
}

impl AllocError {
    /// Every value [`AllocError::reason`] returns.
    pub const REASONS: [&'static str; 12] = [
        "invalid_pool",
        "unknown_pool",
        "pool_not_allowed",
        "pool_exhausted",
        "pool_lacks_family",
        "no_eligible_pool",
        "ip_not_in_pool",
        "ip_in_use",
        "family_mismatch",
        "buggy_ip",
        "bad_request",
        "bad_service",
    ];

    /// The rule that refused, as a stable label value (`herald_controller_allocation_failures_total`).
    pub fn reason(&self) -> &'static str {
        use AllocError::*;
        match self {
            BadPoolAddress { .. } | InvalidPool { .. } => "invalid_pool",
            UnknownPool { .. } => "unknown_pool",
            PoolNotAllowed { .. } => "pool_not_allowed",
            PoolExhausted { .. } | AllPoolsExhausted { .. } => "pool_exhausted",
            PoolLacksFamily { .. } | PoolNotDualStack { .. } => "pool_lacks_family",
            NoEligiblePool => "no_eligible_pool",
            IpNotInAnyPool { .. } | IpNotInRequestedPool { .. } => "ip_not_in_pool",
            IpInUse { .. } => "ip_in_use",
            FamilyMismatch { .. } => "family_mismatch",
            BuggyIp { .. } => "buggy_ip",
            TooManyIps { .. }
            | TwoIpsOfOneFamily { .. }
            | IpsInDifferentPools { .. }
            | DualStackNeedsTwoIps { .. }
            | NoAddresses
            | Annotation(_) => "bad_request",
            NoIpFamilies | BadIpFamily { .. } | BadFamilyPolicy { .. } | BadProtocol { .. } | BadPort { .. } => {
                "bad_service"
            }
        }
    }
}

/// `IPv4 address`, `IPv4 and IPv6 addresses`.
fn families_text(families: &[IpFamily]) -> String {
    match families {
        [one] => format!("{one} address"),
        many => format!("{} addresses", families_list(many)),
    }
}

/// `IPv4`, `IPv4 and IPv6`.
fn families_list(families: &[IpFamily]) -> String {
    families.iter().map(|f| f.as_k8s()).collect::<Vec<_>>().join(" and ")
}

/// Pool names, quoted and comma-separated.
struct PoolList<'a>(&'a [String]);

impl fmt::Display for PoolList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, name) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name:?}")?;
        }
        Ok(())
    }
}

/// Why [`crate::allocator::Allocator::set_pools`] took a Service's addresses away.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DisplacedReason {
    #[error("{ip} is no longer in any IPAddressPool")]
    NotInAnyPool { ip: IpAddr },
    #[error("{ip} ends in .0 or .255 and IPAddressPool {pool:?} now has avoidBuggyIPs enabled")]
    BuggyIp { ip: IpAddr, pool: String },
    #[error("its addresses are now in different IPAddressPools ({}); a Service's addresses must come from one pool", PoolList(.pools))]
    SplitAcrossPools { pools: Vec<String> },
}

/// A Service that lost its addresses in a pool change; the controller should allocate again
/// (or report) and emit an Event with [`Displaced`]'s message.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{service} lost {}: {reason}", ips_text(.ips))]
pub struct Displaced {
    pub service: ServiceKey,
    pub ips: Vec<IpAddr>,
    pub reason: DisplacedReason,
}

fn ips_text(ips: &[IpAddr]) -> String {
    ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>().join(" and ")
}
