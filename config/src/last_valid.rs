//! Serving from the last valid spec: a bad edit moves nothing.
//!
//! An `IPAddressPool` or `L2Advertisement` that was valid and is then edited into something
//! invalid (a typo in one range, a broken selector) keeps being used as it last was valid, so
//! no Service loses or changes its address and no announcement stops because of a typo. Only a
//! valid edit changes what is in use, so only a valid edit can shrink a pool; deleting the
//! object is the deliberate way to stop using it. An object that was never valid is not used.
//!
//! [`LastValid`] is the memory: per object name, the spec in use, the object's uid (an object
//! deleted and created again under the same name starts afresh) and since when that spec is in
//! use. [`judge_pools`] and [`judge_advertisements`] are pure functions from the current
//! objects and that memory to what is in use and one [`Verdict`] per object; they update the
//! memory. The controller and the speaker each keep one memory per kind and call these, so
//! both serve the same specs. The memory lives in the process: an object that is invalid when
//! a controller or speaker starts has never been valid as far as that process knows.
//!
//! # Pools as a set
//! Pools are judged oldest first (by `creationTimestamp`, then name), as in
//! [`validate_pools`](crate::validation::validate_pools), and overlap checks use the ranges in
//! use, never a refused spec. A pool's current spec is accepted if it is valid alone and
//! overlaps neither the ranges in use of the older pools nor the ranges that newer pools hold
//! from their last valid specs. Otherwise its last valid spec stays in use (verdict
//! [`Verdict::Stale`], with the rule the edit broke); a pool with no valid past is refused. So
//! of two new overlapping pools the newer is refused, and an edit that would take addresses a
//! working pool holds is refused too, whichever pool is older. The ranges in use never overlap.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::address::IpRange;
use crate::advertisement::{L2Advertisement, L2AdvertisementSpec};
use crate::pool::{IPAddressPool, IPAddressPoolSpec};
use crate::validation::{L2AdvertisementError, PoolError, validate_l2_advertisement, validate_pool};

/// A spec that was found valid and is (or was last) in use.
#[derive(Debug, Clone, PartialEq)]
pub struct Remembered<S> {
    /// `metadata.uid` of the object the spec was read from.
    pub uid: Option<String>,
    pub spec: S,
    /// When this spec went into use.
    pub since: Timestamp,
}

/// The last valid spec of each object of one kind, by name.
#[derive(Debug, Clone, PartialEq)]
pub struct LastValid<S> {
    entries: BTreeMap<String, Remembered<S>>,
}

impl<S> Default for LastValid<S> {
    fn default() -> Self {
        LastValid {
            entries: BTreeMap::new(),
        }
    }
}

impl<S: Clone + PartialEq> LastValid<S> {
    pub fn new() -> Self {
        Self::default()
    }

    /// The remembered spec of the object `name`, if it was read from the object with `uid`.
    pub fn get(&self, name: &str, uid: Option<&str>) -> Option<&Remembered<S>> {
        self.entries.get(name).filter(|r| r.uid.as_deref() == uid)
    }

    /// Records `spec` as valid and in use; an unchanged spec keeps its `since`.
    fn accept(&mut self, name: &str, uid: Option<&str>, spec: &S, now: Timestamp) {
        if self.get(name, uid).is_some_and(|r| r.spec == *spec) {
            return;
        }
        self.entries.insert(
            name.to_string(),
            Remembered {
                uid: uid.map(str::to_string),
                spec: spec.clone(),
                since: now,
            },
        );
    }

    /// Given every current object (name, uid, current spec, verdict): remembers the valid ones'
    /// current specs, keeps the stale ones' last valid specs and forgets the refused and the
    /// deleted.
    fn update<'a, E>(
        &mut self,
        current: impl IntoIterator<Item = (String, Option<&'a str>, &'a S, &'a Verdict<E>)>,
        now: Timestamp,
    ) where
        S: 'a,
        E: 'a,
    {
        let mut kept = BTreeMap::new();
        for (name, uid, spec, verdict) in current {
            match verdict {
                Verdict::Valid => self.accept(&name, uid, spec, now),
                Verdict::Stale { .. } => {}
                Verdict::Refused { .. } => {
                    self.entries.remove(&name);
                    continue;
                }
            }
            if let Some(entry) = self.entries.remove(&name) {
                kept.insert(name, entry);
            }
        }
        self.entries = kept;
    }
}

/// How an object's current spec was judged, and which spec is in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<E> {
    /// The current spec is valid and in use.
    Valid,
    /// The current spec breaks `error`; the last valid spec, in use since `since`, still is.
    Stale { error: E, since: Timestamp },
    /// The current spec breaks `error` and the object has no valid past: it is not used.
    Refused { error: E },
}

impl<E> Verdict<E> {
    /// Whether some spec of the object is in use.
    pub fn in_use(&self) -> bool {
        !matches!(self, Verdict::Refused { .. })
    }

    /// The rule the current spec breaks, if any.
    pub fn error(&self) -> Option<&E> {
        match self {
            Verdict::Valid => None,
            Verdict::Stale { error, .. } | Verdict::Refused { error } => Some(error),
        }
    }
}

/// `valid`, the rule broken, or the rule broken and `; using the last valid spec from <RFC 3339
/// time>`.
impl<E: fmt::Display> fmt::Display for Verdict<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Valid => f.write_str("valid"),
            Verdict::Stale { error, since } => write!(f, "{error}; using the last valid spec from {since:.0}"),
            Verdict::Refused { error } => write!(f, "{error}"),
        }
    }
}

/// A pool as it is used: its current spec or, when that is invalid, its last valid one.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolInUse {
    pub name: String,
    /// The object's current labels (advertisements select pools by them).
    pub labels: BTreeMap<String, String>,
    pub spec: IPAddressPoolSpec,
    /// `spec.addresses`, parsed, in the order written.
    pub ranges: Vec<IpRange>,
}

/// The outcome of judging the pools: what is in use and every pool's verdict.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PoolSet {
    /// By name.
    pub in_use: Vec<PoolInUse>,
    pub verdicts: BTreeMap<String, Verdict<PoolError>>,
}

/// Addresses of one pool, entry by entry: what overlap checks compare against.
struct Claim {
    pool: String,
    entry: String,
    range: IpRange,
}

fn claims(pool: &str, spec: &IPAddressPoolSpec, ranges: &[IpRange]) -> impl Iterator<Item = Claim> {
    spec.addresses.iter().zip(ranges).map(move |(entry, range)| Claim {
        pool: pool.to_string(),
        entry: entry.clone(),
        range: *range,
    })
}

/// The first of `ranges` (parsed from `spec.addresses`) that overlaps a claim, as an error.
fn check_claims<'a>(
    spec: &IPAddressPoolSpec,
    ranges: &[IpRange],
    claims: impl Iterator<Item = &'a Claim> + Clone,
) -> Result<(), PoolError> {
    for (index, range) in ranges.iter().enumerate() {
        if let Some(other) = claims.clone().find(|c| c.range.overlaps(range)) {
            return Err(PoolError::OverlapsPool {
                index,
                entry: spec.addresses[index].clone(),
                other_pool: other.pool.clone(),
                other_entry: other.entry.clone(),
            });
        }
    }
    Ok(())
}

/// Judges the pools as a set against `memory` (see the module documentation), updates it and
/// returns what is in use.
pub fn judge_pools<'a>(
    pools: impl IntoIterator<Item = &'a IPAddressPool>,
    memory: &mut LastValid<IPAddressPoolSpec>,
    now: Timestamp,
) -> PoolSet {
    let mut ordered: Vec<&IPAddressPool> = pools.into_iter().collect();
    ordered.sort_by(|a, b| {
        let key = |p: &IPAddressPool| (p.metadata.creation_timestamp.as_ref().map(|t| t.0), p.name_any());
        key(a).cmp(&key(b))
    });
    // What each pool holds from its last valid spec (re-parsed; it was valid alone).
    let held: Vec<Option<(Remembered<IPAddressPoolSpec>, Vec<IpRange>)>> = ordered
        .iter()
        .map(|p| {
            let name = p.name_any();
            let remembered = memory.get(&name, p.metadata.uid.as_deref())?.clone();
            let ranges = validate_pool(&name, &remembered.spec).ok()?;
            Some((remembered, ranges))
        })
        .collect();
    let held_claims: Vec<Vec<Claim>> = ordered
        .iter()
        .zip(&held)
        .map(|(p, h)| match h {
            Some((r, ranges)) => claims(&p.name_any(), &r.spec, ranges).collect(),
            None => Vec::new(),
        })
        .collect();

    let mut accepted: Vec<Claim> = Vec::new();
    let mut in_use = BTreeMap::new();
    let mut verdicts = BTreeMap::new();
    for (i, pool) in ordered.iter().enumerate() {
        let name = pool.name_any();
        let current = validate_pool(&name, &pool.spec).and_then(|ranges| {
            let newer_held = held_claims[i + 1..].iter().flatten();
            check_claims(&pool.spec, &ranges, accepted.iter().chain(newer_held))?;
            Ok(ranges)
        });
        let (spec, ranges, verdict) = match (current, &held[i]) {
            (Ok(ranges), _) => (pool.spec.clone(), ranges, Verdict::Valid),
            // The ranges in use never overlap, so this holds unless the memory is from another
            // set of pools; then the pool is refused rather than overlap another.
            (Err(error), Some((remembered, ranges)))
                if check_claims(&remembered.spec, ranges, accepted.iter()).is_ok() =>
            {
                (
                    remembered.spec.clone(),
                    ranges.clone(),
                    Verdict::Stale {
                        error,
                        since: remembered.since,
                    },
                )
            }
            (Err(error), _) => {
                verdicts.insert(name, Verdict::Refused { error });
                continue;
            }
        };
        accepted.extend(claims(&name, &spec, &ranges));
        in_use.insert(
            name.clone(),
            PoolInUse {
                name: name.clone(),
                labels: pool.labels().clone(),
                spec,
                ranges,
            },
        );
        verdicts.insert(name, verdict);
    }
    memory.update(
        ordered.iter().filter_map(|p| {
            let name = p.name_any();
            let verdict = verdicts.get(&name)?;
            Some((name, p.metadata.uid.as_deref(), &p.spec, verdict))
        }),
        now,
    );
    PoolSet {
        in_use: in_use.into_values().collect(),
        verdicts,
    }
}

/// An advertisement as it is used: its current spec or, when that is invalid, its last valid one.
#[derive(Debug, Clone, PartialEq)]
pub struct AdvertisementInUse {
    pub name: String,
    pub spec: L2AdvertisementSpec,
}

/// The outcome of judging the advertisements: what is in use and every one's verdict.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AdvertisementSet {
    /// By name.
    pub in_use: Vec<AdvertisementInUse>,
    pub verdicts: BTreeMap<String, Verdict<L2AdvertisementError>>,
}

/// Judges each advertisement against `memory` (they have no set rules), updates it and
/// returns what is in use.
pub fn judge_advertisements<'a>(
    advertisements: impl IntoIterator<Item = &'a L2Advertisement>,
    memory: &mut LastValid<L2AdvertisementSpec>,
    now: Timestamp,
) -> AdvertisementSet {
    let mut all: Vec<&L2Advertisement> = advertisements.into_iter().collect();
    all.sort_by_key(|a| a.name_any());
    let mut set = AdvertisementSet::default();
    for adv in &all {
        let name = adv.name_any();
        let (spec, verdict) = match validate_l2_advertisement(&adv.spec) {
            Ok(()) => (Some(adv.spec.clone()), Verdict::Valid),
            Err(error) => match memory.get(&name, adv.metadata.uid.as_deref()) {
                Some(r) => (Some(r.spec.clone()), Verdict::Stale { error, since: r.since }),
                None => (None, Verdict::Refused { error }),
            },
        };
        if let Some(spec) = spec {
            set.in_use.push(AdvertisementInUse {
                name: name.clone(),
                spec,
            });
        }
        set.verdicts.insert(name, verdict);
    }
    memory.update(
        all.iter().filter_map(|a| {
            let name = a.name_any();
            let verdict = set.verdicts.get(&name)?;
            Some((name, a.metadata.uid.as_deref(), &a.spec, verdict))
        }),
        now,
    );
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta, Time};

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn pool(name: &str, created_secs: i64, addresses: &[&str]) -> IPAddressPool {
        let mut p = IPAddressPool::new(name, IPAddressPoolSpec::with_addresses(addresses.iter().copied()));
        p.metadata = ObjectMeta {
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            creation_timestamp: Some(Time(at(created_secs))),
            ..Default::default()
        };
        p
    }

    fn addresses_in_use(set: &PoolSet, name: &str) -> Option<Vec<String>> {
        set.in_use
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.spec.addresses.clone())
    }

    #[test]
    fn a_typo_in_a_valid_pool_keeps_its_last_valid_spec() {
        let mut memory = LastValid::new();
        let good = pool("p", 1, &["10.203.0.200-10.203.0.239"]);
        let first = judge_pools([&good], &mut memory, at(1_000));
        assert_eq!(first.verdicts["p"], Verdict::Valid);

        let typo = pool("p", 1, &["10.203.0.200-10.203.0.2399"]);
        let second = judge_pools([&typo], &mut memory, at(2_000));
        assert_eq!(
            addresses_in_use(&second, "p"),
            Some(vec!["10.203.0.200-10.203.0.239".to_string()]),
            "the last valid ranges stay in use"
        );
        let verdict = &second.verdicts["p"];
        assert!(matches!(verdict, Verdict::Stale { since, .. } if *since == at(1_000)));
        assert_eq!(
            verdict.to_string(),
            format!(
                "{}; using the last valid spec from 1970-01-01T00:16:40Z",
                verdict.error().unwrap()
            )
        );
        assert!(verdict.to_string().starts_with("spec.addresses[0]: "));

        // Still stale on the next pass, still from the same time.
        let third = judge_pools([&typo], &mut memory, at(3_000));
        assert!(matches!(&third.verdicts["p"], Verdict::Stale { since, .. } if *since == at(1_000)));

        // A valid edit is what changes (and may shrink) the pool.
        let smaller = pool("p", 1, &["10.203.0.200-10.203.0.209"]);
        let fourth = judge_pools([&smaller], &mut memory, at(4_000));
        assert_eq!(fourth.verdicts["p"], Verdict::Valid);
        assert_eq!(
            addresses_in_use(&fourth, "p"),
            Some(vec!["10.203.0.200-10.203.0.209".to_string()])
        );
        assert_eq!(memory.get("p", Some("uid-p")).map(|r| r.since), Some(at(4_000)));
    }

    #[test]
    fn a_pool_never_valid_is_not_used() {
        let mut memory = LastValid::new();
        let set = judge_pools([&pool("bad", 1, &["10.0.0.9-10.0.0.1"])], &mut memory, at(1));
        assert!(set.in_use.is_empty());
        assert!(matches!(set.verdicts["bad"], Verdict::Refused { .. }));
        assert!(memory.get("bad", Some("uid-bad")).is_none());
    }

    #[test]
    fn deleting_or_recreating_a_pool_forgets_its_past() {
        let mut memory = LastValid::new();
        judge_pools([&pool("p", 1, &["10.0.0.0/24"])], &mut memory, at(1));
        // Deleted: forgotten, so a later invalid pool of that name is refused.
        judge_pools([], &mut memory, at(2));
        let set = judge_pools([&pool("p", 3, &["bad"])], &mut memory, at(3));
        assert!(matches!(set.verdicts["p"], Verdict::Refused { .. }));

        // Deleted and created again between two looks (another uid): no past either.
        judge_pools([&pool("q", 1, &["10.1.0.0/24"])], &mut memory, at(4));
        let mut recreated = pool("q", 5, &["bad"]);
        recreated.metadata.uid = Some("another".into());
        let set = judge_pools([&recreated], &mut memory, at(5));
        assert!(matches!(set.verdicts["q"], Verdict::Refused { .. }));
    }

    #[test]
    fn an_invalid_edit_never_makes_pools_overlap() {
        let mut memory = LastValid::new();
        let a = pool("a", 1, &["10.0.0.0/24"]);
        let b = pool("b", 2, &["10.0.1.0/24"]);
        judge_pools([&a, &b], &mut memory, at(1));

        // The newer pool grows into the older one's addresses: refused, keeps its last spec.
        let b_grown = pool("b", 2, &["10.0.1.0/24", "10.0.0.128/25"]);
        let set = judge_pools([&a, &b_grown], &mut memory, at(2));
        assert_eq!(set.verdicts["a"], Verdict::Valid);
        assert_eq!(
            set.verdicts["b"].error().map(ToString::to_string).as_deref(),
            Some(
                "spec.addresses[1] (10.0.0.128/25) overlaps 10.0.0.0/24 of pool \"a\"; an address may belong to one pool only"
            )
        );
        assert_eq!(addresses_in_use(&set, "b"), Some(vec!["10.0.1.0/24".to_string()]));

        // The older pool grows into the newer one's addresses: refused as well, nothing moves.
        let a_grown = pool("a", 1, &["10.0.0.0/23"]);
        let set = judge_pools([&a_grown, &b], &mut memory, at(3));
        assert!(matches!(&set.verdicts["a"], Verdict::Stale { .. }));
        assert!(
            set.verdicts["a"]
                .to_string()
                .contains("overlaps 10.0.1.0/24 of pool \"b\"")
        );
        assert_eq!(addresses_in_use(&set, "a"), Some(vec!["10.0.0.0/24".to_string()]));
        assert_eq!(set.verdicts["b"], Verdict::Valid);

        // A pool with a typo still holds its last valid addresses: a new pool cannot take them.
        let a_typo = pool("a", 1, &["10.0.0.0/244"]);
        let c = pool("c", 4, &["10.0.0.0/25"]);
        let set = judge_pools([&a_typo, &b, &c], &mut memory, at(4));
        assert!(matches!(&set.verdicts["a"], Verdict::Stale { .. }));
        assert!(matches!(&set.verdicts["c"], Verdict::Refused { .. }));
        assert!(
            set.verdicts["c"]
                .to_string()
                .contains("overlaps 10.0.0.0/24 of pool \"a\"")
        );
    }

    #[test]
    fn of_two_new_overlapping_pools_the_newer_is_refused() {
        let mut memory = LastValid::new();
        let set = judge_pools(
            [
                &pool("newer", 2, &["10.0.0.128/25"]),
                &pool("older", 1, &["10.0.0.0/24"]),
            ],
            &mut memory,
            at(1),
        );
        assert_eq!(set.verdicts["older"], Verdict::Valid);
        assert!(matches!(set.verdicts["newer"], Verdict::Refused { .. }));
        // Once the older one shrinks out of the way, the newer one is valid.
        let set = judge_pools(
            [
                &pool("newer", 2, &["10.0.0.128/25"]),
                &pool("older", 1, &["10.0.0.0/25"]),
            ],
            &mut memory,
            at(2),
        );
        assert_eq!(set.verdicts["older"], Verdict::Valid);
        assert_eq!(set.verdicts["newer"], Verdict::Valid);
    }

    fn advertisement(name: &str, spec: L2AdvertisementSpec) -> L2Advertisement {
        let mut a = L2Advertisement::new(name, spec);
        a.metadata.uid = Some(format!("uid-{name}"));
        a
    }

    #[test]
    fn an_invalid_edit_of_an_advertisement_keeps_its_last_valid_spec() {
        let mut memory = LastValid::new();
        let valid = L2AdvertisementSpec {
            ip_address_pools: vec!["p".into()],
            node_selectors: vec![LabelSelector {
                match_labels: Some([("role".to_string(), "edge".to_string())].into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let set = judge_advertisements([&advertisement("edge", valid.clone())], &mut memory, at(10));
        assert_eq!(set.verdicts["edge"], Verdict::Valid);

        let broken = L2AdvertisementSpec {
            node_selectors: vec![LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "role".into(),
                    operator: "Within".into(),
                    values: Some(vec!["edge".into()]),
                }]),
                ..Default::default()
            }],
            ..valid.clone()
        };
        let never_valid = L2AdvertisementSpec {
            interfaces: vec!["eth0".into(), "eth0".into()],
            ..Default::default()
        };
        let set = judge_advertisements(
            [&advertisement("edge", broken), &advertisement("other", never_valid)],
            &mut memory,
            at(20),
        );
        assert_eq!(
            set.in_use,
            [AdvertisementInUse {
                name: "edge".into(),
                spec: valid
            }]
        );
        assert!(matches!(&set.verdicts["edge"], Verdict::Stale { since, .. } if *since == at(10)));
        assert!(
            set.verdicts["edge"]
                .to_string()
                .ends_with("; using the last valid spec from 1970-01-01T00:00:10Z")
        );
        assert!(matches!(set.verdicts["other"], Verdict::Refused { .. }));
    }
}
