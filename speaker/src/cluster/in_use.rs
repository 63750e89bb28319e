//! Which pools and advertisements the speaker uses: the current spec of each valid one, and the
//! last valid spec of one edited into an invalid spec, so a bad edit never stops an
//! announcement. An object that was never valid is not used. The rule is
//! [`herald_config::last_valid`], the one the controller allocates by; this module keeps the
//! speaker's memory of last valid specs (lost on restart) and logs verdicts when they change.

use std::collections::BTreeMap;

use herald_config::last_valid::{LastValid, PoolInUse, Verdict, judge_advertisements, judge_pools};
use herald_config::{IPAddressPool, IPAddressPoolSpec, L2Advertisement, L2AdvertisementSpec};
use k8s_openapi::jiff::Timestamp;

/// What one pass of the speaker uses.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InUse {
    /// By name.
    pub pools: Vec<PoolInUse>,
    /// By name of their advertisement.
    pub advertisements: Vec<L2AdvertisementSpec>,
}

/// The speaker's memory of Herald's configuration across passes.
#[derive(Debug, Default)]
pub struct ConfigMemory {
    pools: LastValid<IPAddressPoolSpec>,
    advertisements: LastValid<L2AdvertisementSpec>,
    /// The message last logged per (kind, name) of an object that is not valid.
    reported: BTreeMap<(&'static str, String), String>,
}

impl ConfigMemory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Judges the current objects against what was last valid and returns what to use.
    pub fn judge<'a>(
        &mut self,
        pools: impl IntoIterator<Item = &'a IPAddressPool>,
        advertisements: impl IntoIterator<Item = &'a L2Advertisement>,
        now: Timestamp,
    ) -> InUse {
        let pool_set = judge_pools(pools, &mut self.pools, now);
        let advertisement_set = judge_advertisements(advertisements, &mut self.advertisements, now);
        let verdicts = pool_set
            .verdicts
            .iter()
            .map(|(name, v)| ("IPAddressPool", name, not_valid(v)))
            .chain(
                advertisement_set
                    .verdicts
                    .iter()
                    .map(|(name, v)| ("L2Advertisement", name, not_valid(v))),
            );
        let mut reported = BTreeMap::new();
        for (kind, name, verdict) in verdicts {
            let key = (kind, name.clone());
            let Some((message, in_use)) = verdict else {
                if self.reported.contains_key(&key) {
                    tracing::info!(kind, %name, "valid again; using its current spec");
                }
                continue;
            };
            if self.reported.get(&key) != Some(&message) {
                if in_use {
                    tracing::warn!(kind, %name, %message, "invalid; announcing from its last valid spec");
                } else {
                    tracing::warn!(kind, %name, %message, "invalid; not used");
                }
            }
            reported.insert(key, message);
        }
        self.reported = reported;
        InUse {
            pools: pool_set.in_use,
            advertisements: advertisement_set.in_use.into_iter().map(|a| a.spec).collect(),
        }
    }
}

/// The message of a verdict that is not [`Verdict::Valid`], and whether a spec is in use.
fn not_valid<E: std::fmt::Display>(verdict: &Verdict<E>) -> Option<(String, bool)> {
    (!matches!(verdict, Verdict::Valid)).then(|| (verdict.to_string(), verdict.in_use()))
}
