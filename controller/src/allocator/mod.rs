//! LoadBalancer IP allocation: pools in, addresses out. Pure and synchronous (no Kubernetes
//! I/O); the reconciler feeds it pools and Services and writes the results back.
//!
//! # Layout
//! - [`free_set`]: interval sets of `u128`, the free lists.
//! - [`pool`]: [`Pool`] (a parsed `IPAddressPool`) and its per-family address space.
//! - [`request`]: [`ServiceRequest`] (built from a `v1.Service`) and [`Allocation`].
//! - [`sharing`]: the `allow-shared-ip` rule.
//! - [`error`]: [`AllocError`] and [`Displaced`], with user-facing messages.
//!
//! # Using it from the controller
//! 1. Build pools with [`Pool::from_spec`] and hand them to [`Allocator::set_pools`]; every
//!    returned [`Displaced`] is a Service that lost its addresses (allocate it again, emit an
//!    Event with the message). Name the pools refused by validation with
//!    [`Allocator::set_invalid_pools`], so Services naming them learn why.
//! 2. On start, before allocating anything new, call [`Allocator::restore`] with each Service's
//!    current `status.loadBalancer.ingress` addresses, so no address changes hands.
//! 3. For each Service: [`Allocator::allocate`] with [`ServiceRequest::from_service`]; on
//!    deletion (or when it stops being a LoadBalancer) [`Allocator::release`].
//! 4. Publish [`Allocator::pool_stats`] in each `IPAddressPool.status`.
//!
//! ```
//! use herald_config::address::IpFamily;
//! use herald_config::pool::IPAddressPoolSpec;
//! use herald_controller::allocator::{Allocator, Pool, ServiceKey, ServiceRequest};
//!
//! let spec = IPAddressPoolSpec::with_addresses(["192.168.10.0/30", "fd00:10::/120"]);
//! let mut allocator = Allocator::new();
//! let displaced = allocator.set_pools(vec![Pool::from_spec("blue", &spec)?]);
//! assert!(displaced.is_empty());
//!
//! let web = ServiceRequest::auto(ServiceKey::new("shop", "web"), IpFamily::V4);
//! let allocation = allocator.allocate(&web)?;
//! assert_eq!(allocation.ips, ["192.168.10.0".parse::<std::net::IpAddr>()?]);
//! assert_eq!(allocation.pool, "blue");
//! assert_eq!(allocator.pool_stats("blue").map(|s| s.available_v4), Some(3));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Rules
//! - Explicit addresses (`herald.io/loadBalancerIPs`, `spec.loadBalancerIP`): at most one per
//!   family, of families allowed by `ipFamilies`/`ipFamilyPolicy`, all in one pool, admitted by
//!   that pool's `serviceAllocation`, not `.0`/`.255` if it has `avoidBuggyIPs`, and free or
//!   shareable. `autoAssign: false` pools serve them.
//! - Named pool (`herald.io/address-pool`): only that pool, which must exist, be in use and
//!   admit the Service; never spills over.
//! - Automatic: `autoAssign` pools whose `serviceAllocation` admits the Service, by priority
//!   (lower first, 0 last, ties by name), then pools without `serviceAllocation` by name. A
//!   pool with a `serviceAllocation` never serves as the unrestricted fallback.
//! - Inside a pool: a Service with a sharing key first joins the lowest address already shared
//!   under that key that it may share; otherwise the lowest free address.
//! - Dual stack: every address of a Service comes from one pool. `RequireDualStack` gets both
//!   families or an error; `PreferDualStack` gets every family one pool can give now (a pool
//!   with both families is preferred), and the missing one is added by a later `allocate` when
//!   that pool gains it.
//! - Idempotent: a Service whose current addresses still satisfy its request keeps them (also in
//!   automatic mode, even if a lower address was freed or a higher-priority pool appeared). A
//!   Service whose request changed gets the new addresses only if the new request can be
//!   satisfied; otherwise it keeps the old ones and gets the error. (MetalLB's controller drops
//!   the old address first; Herald does not take an address away because of a typo.)
//!
//! # Invariants (checked by [`Allocator::verify`], which the property tests call after every step)
//! - An address is held by one Service, or by several that pairwise satisfy
//!   [`sharing::may_share`].
//! - Every held address is listed and usable in the pool it is attributed to; every Service's
//!   addresses are of distinct families.
//! - For every pool and family, an address is in the free set iff it is usable there and held
//!   by nobody; `assigned` counts held addresses attributed to the pool; so both counters equal
//!   a recount.
//!
//! # Overlapping pools
//! Validation refuses them, but the allocator still works: an address listed by several pools is
//! held at most once (holding it removes it from every pool's free set), it is attributed to the
//! first pool by name that can serve the request, and each overlapped pool's `available` counter
//! excludes addresses held through the other pool (so `assigned + available` can be less than
//! the pool's size). Lookups then scan the pools instead of using the range index.
//!
//! # Cost
//! `n` held addresses, `P` pools, `k` free intervals in a pool: allocate / release / restore are
//! `O(log k + log P)` plus `O(P)` for choosing among pools in automatic mode; nothing scans
//! addresses. `set_pools` is `O(n log k)`.

pub mod error;
pub mod free_set;
pub mod pool;
pub mod request;
pub mod sharing;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use herald_config::address::{IpFamily, to_u128};

pub use error::{AllocError, Displaced, DisplacedReason};
pub use pool::{Pool, PoolStats};
pub use request::{Allocation, FamilyPolicy, ServiceKey, ServiceRequest};
pub use sharing::{Backend, Protocol, ServicePort, ShareRefusal, SharingInfo};

use pool::PoolState;

/// A held address: the pool it counts against and the Services holding it.
#[derive(Clone, Debug)]
struct AddressUse {
    pool: usize,
    users: Vec<ServiceKey>,
}

/// What one Service holds.
#[derive(Clone, Debug)]
struct Holding {
    ips: Vec<IpAddr>,
    pool: usize,
    sharing: SharingInfo,
}

/// Why a pool could not give a Service what it asked for.
#[derive(Clone, Copy, Debug)]
enum PickFailure {
    Lacks(IpFamily),
    Exhausted(IpFamily),
}

fn family_slot(family: IpFamily) -> usize {
    match family {
        IpFamily::V4 => 0,
        IpFamily::V6 => 1,
    }
}

/// The address allocator. See the module documentation for rules and invariants.
#[derive(Clone, Debug, Default)]
pub struct Allocator {
    /// Sorted by name, names unique.
    pools: Vec<PoolState>,
    pool_by_name: HashMap<String, usize>,
    /// Per family, raw range start -> (range end, pool). Used only when no two pools overlap.
    range_index: [BTreeMap<u128, (u128, usize)>; 2],
    overlapping: bool,
    uses: HashMap<IpAddr, AddressUse>,
    holdings: HashMap<ServiceKey, Holding>,
    /// Held addresses by the sharing key of their holders.
    shared_by_key: HashMap<String, BTreeSet<IpAddr>>,
    /// Pools that exist but are not used, with the rule each breaks.
    invalid_pools: BTreeMap<String, String>,
}

impl Allocator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the pool set. Allocations whose addresses are all usable in one of the new pools
    /// are kept and attributed to it (their previous pool if it still qualifies, else the first
    /// by name): renaming or splitting a pool moves nobody. The others are dropped and returned,
    /// sorted by Service. Pools with a duplicate name after the first are ignored (validation
    /// refuses them).
    pub fn set_pools(&mut self, mut pools: Vec<Pool>) -> Vec<Displaced> {
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        pools.dedup_by(|later, first| later.name == first.name);
        let old_names: Vec<String> = self.pools.iter().map(|p| p.name().to_string()).collect();

        self.pools = pools.into_iter().map(PoolState::new).collect();
        self.pool_by_name = self
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name().to_string(), i))
            .collect();
        self.rebuild_range_index();
        self.uses.clear();
        self.shared_by_key.clear();

        let mut old: Vec<(ServiceKey, Holding)> = std::mem::take(&mut self.holdings).into_iter().collect();
        old.sort_by(|a, b| a.0.cmp(&b.0));
        let mut displaced = Vec::new();
        for (key, holding) in old {
            let previous_pool = old_names.get(holding.pool).map(String::as_str);
            match self.home_for(&holding.ips, previous_pool) {
                Ok(pool) => self.attach(key, Holding { pool, ..holding }),
                Err(reason) => displaced.push(Displaced {
                    service: key,
                    ips: holding.ips,
                    reason,
                }),
            }
        }
        displaced
    }

    /// Names the pools that exist but are invalid and not used, with the rule each breaks, so a
    /// Service that names one ([`AllocError::InvalidPool`]) is told why instead of being told the
    /// pool does not exist. Replaces the previous list; a name also given to
    /// [`Allocator::set_pools`] is served as usual.
    pub fn set_invalid_pools(&mut self, pools: BTreeMap<String, String>) {
        self.invalid_pools = pools;
    }

    /// The pool that can keep all of `ips` after a pool change.
    fn home_for(&self, ips: &[IpAddr], previous_pool: Option<&str>) -> Result<usize, DisplacedReason> {
        let mut common: Option<Vec<usize>> = None;
        let mut first_pools = Vec::new();
        for &ip in ips {
            let listing = self.pools_listing(ip);
            let Some(&first) = listing.first() else {
                return Err(DisplacedReason::NotInAnyPool { ip });
            };
            let usable: Vec<usize> = listing
                .into_iter()
                .filter(|&p| self.pools[p].space(IpFamily::of(ip)).usable(ip))
                .collect();
            let Some(&first_usable) = usable.first() else {
                return Err(DisplacedReason::BuggyIp {
                    ip,
                    pool: self.pools[first].name().to_string(),
                });
            };
            first_pools.push(self.pools[first_usable].name().to_string());
            common = Some(match common {
                None => usable,
                Some(c) => c.into_iter().filter(|p| usable.contains(p)).collect(),
            });
        }
        let common = common.unwrap_or_default();
        common
            .iter()
            .copied()
            .find(|&p| Some(self.pools[p].name()) == previous_pool)
            .or_else(|| common.first().copied())
            .ok_or(DisplacedReason::SplitAcrossPools { pools: first_pools })
    }

    fn rebuild_range_index(&mut self) {
        let mut index: [BTreeMap<u128, (u128, usize)>; 2] = Default::default();
        let mut overlapping = false;
        for (p, state) in self.pools.iter().enumerate() {
            for space in [&state.v4, &state.v6] {
                let map = &mut index[family_slot(space.family)];
                for (start, end) in space.raw.intervals() {
                    let before = map.range(..=end).next_back().map(|(&s, &(e, _))| (s, e));
                    if before.is_some_and(|(_, e)| e >= start) {
                        overlapping = true;
                    }
                    map.insert(start, (end, p));
                }
            }
        }
        self.range_index = index;
        self.overlapping = overlapping;
    }

    /// Pools listing `ip` (usable or not), in name order.
    fn pools_listing(&self, ip: IpAddr) -> Vec<usize> {
        let family = IpFamily::of(ip);
        if self.overlapping {
            return (0..self.pools.len())
                .filter(|&p| self.pools[p].space(family).lists(ip))
                .collect();
        }
        let value = to_u128(ip);
        self.range_index[family_slot(family)]
            .range(..=value)
            .next_back()
            .filter(|(_, (end, _))| value <= *end)
            .map(|(_, &(_, p))| vec![p])
            .unwrap_or_default()
    }

    fn pool_index(&self, name: &str) -> Result<usize, AllocError> {
        self.pool_by_name
            .get(name)
            .copied()
            .ok_or_else(|| match self.invalid_pools.get(name) {
                Some(rule) => AllocError::InvalidPool {
                    pool: name.to_string(),
                    rule: rule.clone(),
                },
                None => AllocError::UnknownPool { pool: name.to_string() },
            })
    }

    fn admits(&self, pool: usize, req: &ServiceRequest) -> bool {
        self.pools[pool]
            .pool
            .admits(&req.key.namespace, &req.namespace_labels, &req.labels)
    }

    fn not_allowed(&self, pool: usize, req: &ServiceRequest) -> AllocError {
        let state = &self.pools[pool];
        AllocError::PoolNotAllowed {
            pool: state.name().to_string(),
            service: req.key.clone(),
            restriction: state.pool.restriction_text(),
        }
    }

    /// Gives the Service what its request asks for, or explains why not (and then leaves it
    /// holding what it held before). See the module documentation for the rules.
    pub fn allocate(&mut self, req: &ServiceRequest) -> Result<Allocation, AllocError> {
        let wanted = wanted_families(req)?;
        if !req.requested_ips.is_empty() {
            check_requested_families(req, &wanted)?;
        }
        let previous = self.detach(&req.key);
        let choice = if req.requested_ips.is_empty() {
            self.choose_automatic(req, &wanted, previous.as_ref())
        } else {
            self.choose_explicit(req, &req.requested_ips, true)
        };
        self.commit(req, choice, previous)
    }

    /// Records that the Service already holds `ips` (from its `status.loadBalancer.ingress`),
    /// for rebuilding state on start. Lenient about the request: the addresses only need to be
    /// in one pool, usable there (not excluded by `avoidBuggyIPs`) and free or shareable with
    /// their other holders; `ipFamilies`, `serviceAllocation` and `autoAssign` are left to the
    /// following [`Allocator::allocate`], which keeps the addresses if the request allows them.
    /// If the request names a pool that lists the addresses, they are attributed to it.
    pub fn restore(&mut self, req: &ServiceRequest, ips: &[IpAddr]) -> Result<Allocation, AllocError> {
        check_distinct_families(ips)?;
        let previous = self.detach(&req.key);
        let choice = self.choose_explicit(req, ips, false);
        self.commit(req, choice, previous)
    }

    fn commit(
        &mut self,
        req: &ServiceRequest,
        choice: Result<(usize, Vec<IpAddr>), AllocError>,
        previous: Option<Holding>,
    ) -> Result<Allocation, AllocError> {
        match choice {
            Ok((pool, mut ips)) => {
                // Primary family first, as in `ipFamilies`.
                ips.sort_by_key(|ip| req.ip_families.iter().position(|f| *f == IpFamily::of(*ip)));
                self.attach(
                    req.key.clone(),
                    Holding {
                        ips: ips.clone(),
                        pool,
                        sharing: req.sharing.clone(),
                    },
                );
                Ok(Allocation {
                    ips,
                    pool: self.pools[pool].name().to_string(),
                })
            }
            Err(error) => {
                if let Some(previous) = previous {
                    self.attach(req.key.clone(), previous);
                }
                Err(error)
            }
        }
    }

    /// Frees everything the Service holds (shared addresses stay with their other holders).
    /// Returns what it held.
    pub fn release(&mut self, key: &ServiceKey) -> Option<Allocation> {
        let holding = self.detach(key)?;
        Some(Allocation {
            pool: self.pools[holding.pool].name().to_string(),
            ips: holding.ips,
        })
    }

    /// `strict`: the request's `herald.io/address-pool` must list the addresses and the pool's
    /// `serviceAllocation` must admit the Service. Otherwise both only guide attribution.
    fn choose_explicit(
        &self,
        req: &ServiceRequest,
        ips: &[IpAddr],
        strict: bool,
    ) -> Result<(usize, Vec<IpAddr>), AllocError> {
        let named = match (&req.pool, strict) {
            (Some(name), true) => Some(self.pool_index(name)?),
            (Some(name), false) => self.pool_by_name.get(name).copied(),
            (None, _) => None,
        };
        let mut listings = Vec::with_capacity(ips.len());
        for &ip in ips {
            let listing = self.pools_listing(ip);
            if listing.is_empty() {
                return Err(AllocError::IpNotInAnyPool { ip });
            }
            if strict
                && let Some(named) = named
                && !listing.contains(&named)
            {
                return Err(AllocError::IpNotInRequestedPool {
                    ip,
                    pool: self.pools[named].name().to_string(),
                });
            }
            listings.push(listing);
        }
        let Some((first_listing, rest)) = listings.split_first() else {
            return Err(AllocError::NoAddresses);
        };
        let common: Vec<usize> = first_listing
            .iter()
            .copied()
            .filter(|p| rest.iter().all(|l| l.contains(p)))
            .collect();
        if common.is_empty() {
            return Err(AllocError::IpsInDifferentPools {
                first: ips[0],
                first_pool: self.pools[first_listing[0]].name().to_string(),
                second: ips[1],
                second_pool: self.pools[listings[1][0]].name().to_string(),
            });
        }
        // Several candidates only with overlapping pools: prefer one that can actually serve.
        let serves = |p: usize| ips.iter().all(|ip| self.pools[p].space(IpFamily::of(*ip)).usable(*ip));
        let pool = named
            .filter(|n| common.contains(n))
            .or_else(|| common.iter().copied().find(|&p| self.admits(p, req) && serves(p)))
            .or_else(|| common.iter().copied().find(|&p| self.admits(p, req)))
            .unwrap_or(common[0]);
        if strict && !self.admits(pool, req) {
            return Err(self.not_allowed(pool, req));
        }
        for &ip in ips {
            if !self.pools[pool].space(IpFamily::of(ip)).usable(ip) {
                return Err(AllocError::BuggyIp {
                    ip,
                    pool: self.pools[pool].name().to_string(),
                });
            }
            self.check_shareable(ip, req)?;
        }
        Ok((pool, ips.to_vec()))
    }

    /// Whether the Service may hold `ip` given who else holds it.
    fn check_shareable(&self, ip: IpAddr, req: &ServiceRequest) -> Result<(), AllocError> {
        let Some(address_use) = self.uses.get(&ip) else {
            return Ok(());
        };
        for holder in address_use.users.iter().filter(|u| **u != req.key) {
            let Some(theirs) = self.holdings.get(holder) else {
                continue;
            };
            sharing::may_share(&req.sharing, &theirs.sharing).map_err(|reason| AllocError::IpInUse {
                ip,
                holder: holder.clone(),
                reason: Box::new(reason),
            })?;
        }
        Ok(())
    }

    fn choose_automatic(
        &self,
        req: &ServiceRequest,
        wanted: &[IpFamily],
        previous: Option<&Holding>,
    ) -> Result<(usize, Vec<IpAddr>), AllocError> {
        let need_all = req.family_policy != FamilyPolicy::PreferDualStack;
        if let Some(name) = &req.pool {
            let pool = self.pool_index(name)?;
            if !self.admits(pool, req) {
                return Err(self.not_allowed(pool, req));
            }
            return self
                .pick_in_pool(pool, req, wanted, need_all, previous)
                .map(|ips| (pool, ips))
                .map_err(|failure| self.pick_error(pool, req, failure));
        }
        let candidates = self.automatic_candidates(req);
        if candidates.is_empty() {
            return Err(AllocError::NoEligiblePool);
        }
        // Stay in the pool the Service already uses while it qualifies: no renumbering.
        if let Some(previous) = previous
            && candidates.contains(&previous.pool)
            && let Ok(ips) = self.pick_in_pool(previous.pool, req, wanted, need_all, Some(previous))
        {
            return Ok((previous.pool, ips));
        }
        for &pool in &candidates {
            if !self.could_serve(pool, req, wanted, true, previous) {
                continue;
            }
            if let Ok(ips) = self.pick_in_pool(pool, req, wanted, true, previous) {
                return Ok((pool, ips));
            }
        }
        if !need_all {
            for &pool in &candidates {
                if !self.could_serve(pool, req, wanted, false, previous) {
                    continue;
                }
                if let Ok(ips) = self.pick_in_pool(pool, req, wanted, false, previous) {
                    return Ok((pool, ips));
                }
            }
        }
        Err(AllocError::AllPoolsExhausted {
            families: wanted.to_vec(),
            tried: candidates.iter().map(|&p| self.pools[p].name().to_string()).collect(),
        })
    }

    /// A cheap test that is false only when [`Allocator::pick_in_pool`] would surely fail: with
    /// no previous addresses and no sharing key, a pool can only serve from its free sets. Skips
    /// full pools quickly when there are many.
    fn could_serve(
        &self,
        pool: usize,
        req: &ServiceRequest,
        wanted: &[IpFamily],
        need_all: bool,
        previous: Option<&Holding>,
    ) -> bool {
        if previous.is_some() || req.sharing.key.is_some() {
            return true;
        }
        let state = &self.pools[pool];
        let has_free = |family: &IpFamily| !state.space(*family).free.is_empty();
        if need_all {
            wanted.iter().all(has_free)
        } else {
            wanted.iter().any(has_free)
        }
    }

    /// `autoAssign` pools in the order automatic allocation tries them for this Service.
    fn automatic_candidates(&self, req: &ServiceRequest) -> Vec<usize> {
        let mut restricted = Vec::new();
        let mut open = Vec::new();
        for (p, state) in self.pools.iter().enumerate() {
            if !state.pool.auto_assign {
                continue;
            }
            match state.pool.priority_rank() {
                None => open.push(p),
                Some(rank) if self.admits(p, req) => restricted.push((rank, p)),
                Some(_) => {}
            }
        }
        // Stable on (rank, index): equal priorities stay in name order.
        restricted.sort();
        restricted.into_iter().map(|(_, p)| p).chain(open).collect()
    }

    /// Addresses for `wanted` families from one pool: the Service's previous address of that
    /// family if still usable, else an address shared under its key, else the lowest free one.
    fn pick_in_pool(
        &self,
        pool: usize,
        req: &ServiceRequest,
        wanted: &[IpFamily],
        need_all: bool,
        previous: Option<&Holding>,
    ) -> Result<Vec<IpAddr>, PickFailure> {
        let state = &self.pools[pool];
        // Vec::new does not allocate: trying a full pool costs no allocation.
        let mut picked = Vec::new();
        let mut first_failure = None;
        for &family in wanted {
            let space = state.space(family);
            if space.members.is_empty() {
                first_failure.get_or_insert(PickFailure::Lacks(family));
                continue;
            }
            let reused = previous
                .and_then(|p| p.ips.iter().copied().find(|ip| IpFamily::of(*ip) == family))
                .filter(|&ip| space.usable(ip) && self.check_shareable(ip, req).is_ok());
            let ip = reused
                .or_else(|| self.joinable_shared(pool, family, req))
                .or_else(|| space.lowest_free());
            match ip {
                Some(ip) => picked.push(ip),
                None => {
                    first_failure.get_or_insert(PickFailure::Exhausted(family));
                }
            }
        }
        match first_failure {
            Some(failure) if need_all || picked.is_empty() => Err(failure),
            _ => Ok(picked),
        }
    }

    /// The lowest address of `family` in `pool` already shared under the request's key that the
    /// Service may join. Work is bounded by the number of addresses shared under that key.
    fn joinable_shared(&self, pool: usize, family: IpFamily, req: &ServiceRequest) -> Option<IpAddr> {
        let key = req.sharing.key.as_deref()?;
        let space = self.pools[pool].space(family);
        self.shared_by_key
            .get(key)?
            .iter()
            .copied()
            .find(|&ip| space.usable(ip) && self.check_shareable(ip, req).is_ok())
    }

    fn pick_error(&self, pool: usize, req: &ServiceRequest, failure: PickFailure) -> AllocError {
        let state = &self.pools[pool];
        let name = state.name().to_string();
        match failure {
            PickFailure::Exhausted(family) => AllocError::PoolExhausted { pool: name, family },
            PickFailure::Lacks(family) => {
                let other = match family {
                    IpFamily::V4 => IpFamily::V6,
                    IpFamily::V6 => IpFamily::V4,
                };
                if req.family_policy == FamilyPolicy::RequireDualStack && !state.space(other).members.is_empty() {
                    AllocError::PoolNotDualStack {
                        pool: name,
                        family: other,
                    }
                } else {
                    AllocError::PoolLacksFamily { pool: name, family }
                }
            }
        }
    }

    /// Makes `key` hold `holding.ips`. The caller has checked that this is allowed.
    fn attach(&mut self, key: ServiceKey, holding: Holding) {
        for &ip in &holding.ips {
            if let Some(address_use) = self.uses.get_mut(&ip) {
                if !address_use.users.contains(&key) {
                    address_use.users.push(key.clone());
                }
                continue;
            }
            let family = IpFamily::of(ip);
            for p in self.pools_listing(ip) {
                self.pools[p].space_mut(family).take(ip);
            }
            self.pools[holding.pool].space_mut(family).assigned += 1;
            self.uses.insert(
                ip,
                AddressUse {
                    pool: holding.pool,
                    users: vec![key.clone()],
                },
            );
            if let Some(sharing_key) = &holding.sharing.key {
                self.shared_by_key.entry(sharing_key.clone()).or_default().insert(ip);
            }
        }
        self.holdings.insert(key, holding);
    }

    /// Removes what `key` holds, freeing addresses nobody else holds.
    fn detach(&mut self, key: &ServiceKey) -> Option<Holding> {
        let holding = self.holdings.remove(key)?;
        for &ip in &holding.ips {
            let Some(address_use) = self.uses.get_mut(&ip) else {
                continue;
            };
            address_use.users.retain(|k| k != key);
            if !address_use.users.is_empty() {
                continue;
            }
            let pool = address_use.pool;
            self.uses.remove(&ip);
            let family = IpFamily::of(ip);
            let space = self.pools[pool].space_mut(family);
            space.assigned = space.assigned.saturating_sub(1);
            for p in self.pools_listing(ip) {
                self.pools[p].space_mut(family).give_back(ip);
            }
            if let Some(sharing_key) = &holding.sharing.key
                && let Some(set) = self.shared_by_key.get_mut(sharing_key)
            {
                set.remove(&ip);
                if set.is_empty() {
                    self.shared_by_key.remove(sharing_key);
                }
            }
        }
        Some(holding)
    }

    /// The counters of a pool, or `None` if no pool has that name.
    pub fn pool_stats(&self, pool: &str) -> Option<PoolStats> {
        self.pool_by_name.get(pool).map(|&p| self.pools[p].stats())
    }

    /// The pool names, sorted.
    pub fn pool_names(&self) -> impl Iterator<Item = &str> {
        self.pools.iter().map(|p| p.name())
    }

    /// The pool the Service's addresses come from.
    pub fn pool_of(&self, key: &ServiceKey) -> Option<&str> {
        self.holdings.get(key).map(|h| self.pools[h.pool].name())
    }

    /// The Service's addresses, primary family first.
    pub fn ips_of(&self, key: &ServiceKey) -> Option<&[IpAddr]> {
        self.holdings.get(key).map(|h| h.ips.as_slice())
    }

    /// The Services holding `ip` (several when shared), in the order they got it.
    pub fn holders_of(&self, ip: IpAddr) -> &[ServiceKey] {
        self.uses.get(&ip).map_or(&[], |u| u.users.as_slice())
    }

    /// Every Service holding addresses, sorted (deterministic order for callers that act on each).
    pub fn services(&self) -> Vec<ServiceKey> {
        let mut keys: Vec<ServiceKey> = self.holdings.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Number of Services holding addresses.
    pub fn service_count(&self) -> usize {
        self.holdings.len()
    }

    /// Checks every invariant in the module documentation by recounting; returns the first
    /// violation. `O(n log n)`; meant for tests and debugging.
    pub fn verify(&self) -> Result<(), String> {
        for state in &self.pools {
            for space in [&state.v4, &state.v6] {
                let at = format!("pool {:?} {}", state.name(), space.family);
                space.free.check().map_err(|e| format!("{at} free set: {e}"))?;
                space.members.check().map_err(|e| format!("{at} members: {e}"))?;
                if let Some((s, e)) = space
                    .free
                    .intervals()
                    .find(|&(s, e)| !space.members.contains_range(s, e))
                {
                    return Err(format!("{at}: free interval {s}..={e} is not in the pool"));
                }
            }
        }
        let mut assigned = vec![[0u128; 2]; self.pools.len()];
        let mut held_usable = vec![[0u128; 2]; self.pools.len()];
        let mut keyed = 0usize;
        for (&ip, address_use) in &self.uses {
            let family = IpFamily::of(ip);
            if address_use.users.is_empty() {
                return Err(format!("{ip} is recorded as held by nobody"));
            }
            let Some(state) = self.pools.get(address_use.pool) else {
                return Err(format!("{ip} is attributed to a pool that does not exist"));
            };
            if !state.space(family).usable(ip) {
                return Err(format!(
                    "{ip} is attributed to pool {:?} which cannot serve it",
                    state.name()
                ));
            }
            assigned[address_use.pool][family_slot(family)] += 1;
            for (state, counts) in self.pools.iter().zip(held_usable.iter_mut()) {
                let space = state.space(family);
                if space.usable(ip) {
                    counts[family_slot(family)] += 1;
                }
                if space.is_free(ip) {
                    return Err(format!("{ip} is held but free in pool {:?}", state.name()));
                }
            }
            let mut key_of_address = None;
            for (i, user) in address_use.users.iter().enumerate() {
                let Some(holding) = self.holdings.get(user) else {
                    return Err(format!("{ip} is held by {user}, which holds nothing"));
                };
                if !holding.ips.contains(&ip) {
                    return Err(format!("{ip} lists {user} as holder but {user} does not hold it"));
                }
                key_of_address = holding.sharing.key.clone();
                for other in &address_use.users[i + 1..] {
                    let Some(theirs) = self.holdings.get(other) else {
                        return Err(format!("{ip} is held by {other}, which holds nothing"));
                    };
                    if let Err(reason) = sharing::may_share(&holding.sharing, &theirs.sharing) {
                        return Err(format!(
                            "{ip} is held by {user} and {other}, which may not share: {reason}"
                        ));
                    }
                }
            }
            if let Some(k) = key_of_address {
                keyed += 1;
                if !self.shared_by_key.get(&k).is_some_and(|s| s.contains(&ip)) {
                    return Err(format!("{ip} is shared under {k:?} but missing from the sharing index"));
                }
            }
        }
        let indexed: usize = self.shared_by_key.values().map(BTreeSet::len).sum();
        if indexed != keyed {
            return Err(format!(
                "sharing index holds {indexed} addresses, {keyed} are held under a key"
            ));
        }
        for (key, holding) in &self.holdings {
            let families: BTreeSet<IpFamily> = holding.ips.iter().map(|ip| IpFamily::of(*ip)).collect();
            if families.len() != holding.ips.len() || holding.ips.is_empty() {
                return Err(format!("{key} holds {:?}: not one address per family", holding.ips));
            }
            for ip in &holding.ips {
                if !self.uses.get(ip).is_some_and(|u| u.users.contains(key)) {
                    return Err(format!(
                        "{key} holds {ip} but the address is not recorded as held by it"
                    ));
                }
                if !self.pools[holding.pool].space(IpFamily::of(*ip)).usable(*ip) {
                    return Err(format!(
                        "{key} holds {ip} from pool {:?}, which cannot serve it",
                        self.pools[holding.pool].name()
                    ));
                }
            }
        }
        for (p, state) in self.pools.iter().enumerate() {
            for space in [&state.v4, &state.v6] {
                let slot = family_slot(space.family);
                if space.assigned != assigned[p][slot] {
                    return Err(format!(
                        "pool {:?} {}: assigned counter {} but {} held addresses",
                        state.name(),
                        space.family,
                        space.assigned,
                        assigned[p][slot]
                    ));
                }
                let expected_free = space.members.len().checked_sub(held_usable[p][slot]);
                if Some(space.free.len()) != expected_free {
                    return Err(format!(
                        "pool {:?} {}: {} free but {} usable addresses minus {} held",
                        state.name(),
                        space.family,
                        space.free.len(),
                        space.members.len(),
                        held_usable[p][slot]
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The families the Service should get, primary first.
fn wanted_families(req: &ServiceRequest) -> Result<Vec<IpFamily>, AllocError> {
    let mut families: Vec<IpFamily> = Vec::with_capacity(2);
    for &family in &req.ip_families {
        if !families.contains(&family) {
            families.push(family);
        }
    }
    let Some(&primary) = families.first() else {
        return Err(AllocError::NoIpFamilies);
    };
    Ok(match req.family_policy {
        FamilyPolicy::SingleStack => vec![primary],
        FamilyPolicy::PreferDualStack => families,
        FamilyPolicy::RequireDualStack => {
            for family in [IpFamily::V4, IpFamily::V6] {
                if !families.contains(&family) {
                    families.push(family);
                }
            }
            families
        }
    })
}

fn check_distinct_families(ips: &[IpAddr]) -> Result<(), AllocError> {
    match ips {
        [] => Err(AllocError::NoAddresses),
        [first, second] if IpFamily::of(*first) == IpFamily::of(*second) => Err(AllocError::TwoIpsOfOneFamily {
            first: *first,
            second: *second,
            family: IpFamily::of(*first),
        }),
        [_] | [_, _] => Ok(()),
        more => Err(AllocError::TooManyIps { count: more.len() }),
    }
}

fn check_requested_families(req: &ServiceRequest, wanted: &[IpFamily]) -> Result<(), AllocError> {
    let ips = &req.requested_ips;
    check_distinct_families(ips)?;
    for &ip in ips {
        let family = IpFamily::of(ip);
        if !wanted.contains(&family) {
            return Err(AllocError::FamilyMismatch {
                ip,
                family,
                allowed: wanted.to_vec(),
            });
        }
    }
    if let [only] = ips.as_slice()
        && req.family_policy == FamilyPolicy::RequireDualStack
    {
        return Err(AllocError::DualStackNeedsTwoIps { ip: *only });
    }
    Ok(())
}
