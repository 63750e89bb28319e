//! Election: which node announces each LoadBalancer IP, as a pure function of who is eligible.
//!
//! Every speaker runs the same computation over its own view of the cluster, so as long as the
//! views agree the owners agree, without any further coordination.
//!
//! # Rule
//! The owner of an election unit (one IP; every Service sharing that IP is the same unit) is
//! the eligible node with the highest *rendezvous score* `score(node, ip)`; the runner-up is the
//! eligible node with the second highest score. Scores are the first 8 bytes (big-endian) of
//! `SHA-256(node ‖ 0x00 ‖ ip)`, where `ip` is the address in its canonical text form
//! (`Ipv4Addr`/`Ipv6Addr` `Display`). SHA-256 is fixed by a standard, so every node, version
//! and architecture computes the same scores; equal scores (astronomically unlikely) are broken
//! by the larger node name, so the order is total.
//!
//! Rendezvous hashing moves as little as possible: a node that stops being eligible moves only
//! the units it owned (each to its runner-up), and a node that becomes eligible takes only the
//! units where it now ranks first. Nothing else changes hands.
//!
//! # Rejoining nodes
//! A node back from a partition in which it was cut off from most of the cluster says so in
//! its gossiped state for a hold time (see `membership`, "Rejoining"). It stays eligible, but ranks
//! after every candidate that is not rejoining: the units it would win stay with their current
//! owners until the hold ends, and go back to it once, instead of following every flap of the
//! link that just came back. Among rejoining nodes (a whole cluster back from a switch restart)
//! the usual order holds, so a unit never goes without an owner because of the hold.
//!
//! # Runner-up and close watching
//! The runner-up of a unit is the node that takes it over when the owner fails, so it is the
//! node that must notice that failure first: [`watch_targets`] gives, for one node, the owners
//! of the units for which it is the runner-up; the membership layer probes those at a fast rate
//! and everybody else slowly.
//!
//! # Partitions
//! During a network partition each side elects among the nodes it can see, so both sides may
//! announce the same IP (each for the clients on its side). When the partition heals, the
//! membership layer merges the views (see `membership`) and the owners agree again.
pub mod eligibility;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::IpAddr;

use sha2::{Digest, Sha256};

/// One election unit: a LoadBalancer IP (all Services sharing it are announced together).
pub type Unit = IpAddr;

/// Rendezvous score of `node` for `ip`: higher wins. Stable across nodes, versions and
/// architectures (see the module docs for the exact definition).
pub fn rendezvous_score(node: &str, ip: IpAddr) -> u64 {
    NodeHasher::new(node).score(ip)
}

/// SHA-256 state after `node ‖ 0x00`, reused for every IP of a bulk election.
#[derive(Clone)]
struct NodeHasher {
    prefix: Sha256,
}

impl NodeHasher {
    fn new(node: &str) -> Self {
        let mut prefix = Sha256::new();
        prefix.update(node.as_bytes());
        prefix.update([0u8]);
        NodeHasher { prefix }
    }

    fn score(&self, ip: IpAddr) -> u64 {
        self.score_text(IpText::new(ip).as_bytes())
    }

    fn score_text(&self, ip_text: &[u8]) -> u64 {
        let mut hasher = self.prefix.clone();
        hasher.update(ip_text);
        let digest = hasher.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    }
}

/// The canonical text of an IP (at most 39 bytes), formatted without allocating.
struct IpText {
    text: [u8; 48],
    len: usize,
}

impl IpText {
    fn new(ip: IpAddr) -> Self {
        let mut text = [0u8; 48];
        let mut cursor = std::io::Cursor::new(&mut text[..]);
        write!(cursor, "{ip}").expect("an IP's text fits in 48 bytes");
        let len = usize::try_from(cursor.position()).unwrap_or(0);
        IpText { text, len }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.text[..self.len]
    }
}

/// The winner of one unit and the node that would win without it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ownership {
    /// Node that announces the unit.
    pub owner: String,
    /// Node that takes over if the owner becomes ineligible; `None` with a single candidate.
    pub runner_up: Option<String>,
}

/// A candidate's place: nodes that are not rejoining first, then the higher score, then the
/// larger name (the derived order compares the fields in this order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Place<'a> {
    settled: bool,
    score: u64,
    node: &'a str,
}

/// Owner and runner-up of `ip` among `candidates` (duplicates are ignored), none of them
/// rejoining; `None` when there is no candidate.
pub fn rank<'a>(ip: IpAddr, candidates: impl IntoIterator<Item = &'a str>) -> Option<Ownership> {
    rank_scored(
        candidates.into_iter().map(|node| (rendezvous_score(node, ip), node)),
        &BTreeSet::new(),
    )
}

/// [`rank`] for callers that computed (or memoized) the scores: `(rendezvous_score(node, ip),
/// node)` pairs of one IP; the nodes in `rejoining` rank after the others.
pub fn rank_scored<'a>(
    scored: impl IntoIterator<Item = (u64, &'a str)>,
    rejoining: &BTreeSet<String>,
) -> Option<Ownership> {
    let mut first: Option<Place> = None;
    let mut second: Option<Place> = None;
    for (score, node) in scored {
        let settled = !rejoining.contains(node);
        push_candidate(&mut first, &mut second, Place { settled, score, node });
    }
    first.map(|top| Ownership {
        owner: top.node.to_string(),
        runner_up: second.map(|p| p.node.to_string()),
    })
}

fn push_candidate<'a>(first: &mut Option<Place<'a>>, second: &mut Option<Place<'a>>, candidate: Place<'a>) {
    match *first {
        None => *first = Some(candidate),
        Some(top) if top.node == candidate.node => {}
        Some(top) if candidate > top => {
            *second = Some(top);
            *first = Some(candidate);
        }
        Some(_) => match *second {
            Some(s) if s.node == candidate.node || s > candidate => {}
            _ => *second = Some(candidate),
        },
    }
}

/// Elects every unit: `eligible` maps each unit to the nodes allowed to announce it (see
/// [`eligibility`]); the nodes in `rejoining` rank after the others. Units with no eligible
/// node are absent from the result: nobody announces them.
pub fn elect(eligible: &BTreeMap<Unit, BTreeSet<String>>, rejoining: &BTreeSet<String>) -> BTreeMap<Unit, Ownership> {
    // Hash each node name once (most clusters have far fewer nodes than IPs), reuse the list
    // of hashers while consecutive units have the same eligible set (the common case), and
    // format each IP once.
    let mut hashers: BTreeMap<&str, NodeHasher> = BTreeMap::new();
    let mut last_set: Option<&BTreeSet<String>> = None;
    let mut row: Vec<(&str, bool, NodeHasher)> = Vec::new();
    let mut result = BTreeMap::new();
    for (&ip, nodes) in eligible {
        if last_set != Some(nodes) {
            row = nodes
                .iter()
                .map(|n| {
                    let hasher = hashers.entry(n.as_str()).or_insert_with(|| NodeHasher::new(n));
                    (n.as_str(), !rejoining.contains(n), hasher.clone())
                })
                .collect();
            last_set = Some(nodes);
        }
        let text = IpText::new(ip);
        let mut first = None;
        let mut second = None;
        for (node, settled, hasher) in &row {
            let score = hasher.score_text(text.as_bytes());
            push_candidate(
                &mut first,
                &mut second,
                Place {
                    settled: *settled,
                    score,
                    node,
                },
            );
        }
        if let Some(top) = first {
            result.insert(
                ip,
                Ownership {
                    owner: top.node.to_string(),
                    runner_up: second.map(|p| p.node.to_string()),
                },
            );
        }
    }
    result
}

/// Units owned by `node` in an election result.
pub fn owned_by(node: &str, result: &BTreeMap<Unit, Ownership>) -> BTreeSet<Unit> {
    result
        .iter()
        .filter(|(_, o)| o.owner == node)
        .map(|(ip, _)| *ip)
        .collect()
}

/// Nodes that `node` must watch closely: the owners of the units for which it is the
/// runner-up, i.e. the nodes whose failure it must detect first because it takes over.
pub fn watch_targets(node: &str, result: &BTreeMap<Unit, Ownership>) -> BTreeSet<String> {
    result
        .values()
        .filter(|o| o.runner_up.as_deref() == Some(node))
        .map(|o| o.owner.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32.wrapping_add(i)))
    }

    fn nodes(n: usize) -> BTreeSet<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    fn units(count: u32, eligible: &BTreeSet<String>) -> BTreeMap<Unit, BTreeSet<String>> {
        (0..count).map(|i| (ip(i), eligible.clone())).collect()
    }

    /// The election with nobody rejoining.
    fn elect(eligible: &BTreeMap<Unit, BTreeSet<String>>) -> BTreeMap<Unit, Ownership> {
        super::elect(eligible, &BTreeSet::new())
    }

    #[test]
    fn a_rejoining_node_ranks_after_the_others_and_wins_only_alone() {
        let all = nodes(3);
        let before = elect(&units(300, &all));
        let back = BTreeSet::from(["node-0".to_string()]);
        let held = super::elect(&units(300, &all), &back);
        let without = elect(&units(300, &nodes(3).into_iter().filter(|n| n != "node-0").collect()));
        // With two settled nodes, owner and runner-up are those of the election without it.
        assert_eq!(held, without);
        assert!(
            before.values().any(|o| o.owner == "node-0"),
            "it wins somewhere when settled"
        );
        // Alone, or with everybody rejoining, the usual order holds: nobody goes without.
        let alone = super::elect(&units(50, &back), &back);
        assert!(alone.values().all(|o| o.owner == "node-0"));
        assert_eq!(super::elect(&units(300, &all), &all), before);
        let ranked = rank_scored(all.iter().map(|n| (rendezvous_score(n, ip(7)), n.as_str())), &back).unwrap();
        assert_eq!(&ranked, &held[&ip(7)]);
    }

    #[test]
    fn score_is_pinned_so_all_versions_agree() {
        // Changing this value changes every owner in a mixed-version cluster: don't.
        let score = rendezvous_score("node-a", "192.0.2.10".parse().unwrap());
        let expected = {
            let digest = Sha256::digest(b"node-a\x00192.0.2.10");
            u64::from_be_bytes(digest[..8].try_into().unwrap())
        };
        assert_eq!(score, expected);
        assert_eq!(score, 0x03ce_e128_cc31_49c2, "pinned value {score:#x}");
    }

    #[test]
    fn no_candidate_means_no_owner() {
        assert_eq!(rank(ip(1), []), None);
        let eligible = BTreeMap::from([(ip(1), BTreeSet::new())]);
        assert!(elect(&eligible).is_empty());
    }

    #[test]
    fn single_candidate_has_no_runner_up() {
        let o = rank(ip(1), ["a"]).unwrap();
        assert_eq!(o.owner, "a");
        assert_eq!(o.runner_up, None);
    }

    #[test]
    fn rank_and_elect_agree_and_duplicates_are_ignored() {
        let all = nodes(5);
        let result = elect(&units(200, &all));
        for (unit, ownership) in &result {
            let doubled = all.iter().chain(all.iter()).map(String::as_str);
            assert_eq!(rank(*unit, doubled).as_ref(), Some(ownership));
            assert_ne!(ownership.runner_up.as_deref(), Some(ownership.owner.as_str()));
        }
    }

    #[test]
    fn distribution_over_three_nodes_is_roughly_uniform() {
        let result = elect(&units(3000, &nodes(3)));
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for o in result.values() {
            *counts.entry(o.owner.as_str()).or_default() += 1;
        }
        assert_eq!(counts.len(), 3);
        for (node, count) in counts {
            assert!((850..=1150).contains(&count), "{node} owns {count} of 3000");
        }
    }

    #[test]
    fn watch_targets_are_owners_of_units_where_node_is_runner_up() {
        let result = elect(&units(100, &nodes(4)));
        for node in nodes(4) {
            let targets = watch_targets(&node, &result);
            assert!(!targets.contains(&node));
            for (unit, o) in &result {
                if o.runner_up.as_deref() == Some(node.as_str()) {
                    assert!(targets.contains(&o.owner), "{unit}");
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn election_is_deterministic_and_order_free(
            mut names in proptest::collection::vec("[a-z]{1,8}", 1..8),
            seeds in proptest::collection::vec(any::<u32>(), 1..40),
        ) {
            let eligible: BTreeMap<Unit, BTreeSet<String>> = seeds
                .iter()
                .map(|s| (ip(*s), names.iter().cloned().collect()))
                .collect();
            let once = elect(&eligible);
            prop_assert_eq!(&once, &elect(&eligible));
            names.reverse();
            for (unit, o) in &once {
                let ranked = rank(*unit, names.iter().map(String::as_str));
                prop_assert_eq!(Some(o), ranked.as_ref());
            }
        }

        #[test]
        fn removing_a_node_moves_only_its_units_to_their_runner_up(
            count in 2usize..8,
            removed in 0usize..8,
            seeds in proptest::collection::vec(any::<u32>(), 1..60),
        ) {
            let all = nodes(count);
            let removed = format!("node-{}", removed % count);
            let mut rest = all.clone();
            rest.remove(&removed);
            let before = elect(&seeds.iter().map(|s| (ip(*s), all.clone())).collect());
            let after = elect(&seeds.iter().map(|s| (ip(*s), rest.clone())).collect());
            for (unit, old) in &before {
                let new = &after[unit];
                if old.owner == removed {
                    prop_assert_eq!(Some(&new.owner), old.runner_up.as_ref());
                } else {
                    prop_assert_eq!(&new.owner, &old.owner);
                }
            }
        }

        #[test]
        fn adding_a_node_moves_units_only_to_it(
            count in 1usize..8,
            seeds in proptest::collection::vec(any::<u32>(), 1..60),
        ) {
            let before_nodes = nodes(count);
            let mut after_nodes = before_nodes.clone();
            after_nodes.insert("newcomer".to_string());
            let before = elect(&seeds.iter().map(|s| (ip(*s), before_nodes.clone())).collect());
            let after = elect(&seeds.iter().map(|s| (ip(*s), after_nodes.clone())).collect());
            for (unit, old) in &before {
                let new = &after[unit];
                prop_assert!(new.owner == old.owner || new.owner == "newcomer");
            }
        }
    }
}
