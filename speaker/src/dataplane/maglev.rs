//! Maglev consistent hashing: one lookup table per frontend mapping a flow-hash slot to a backend.
//!
//! Every node builds the same table from the same backend names (the backends' `ip:port`) with
//! the same fixed seed, so a flow hashed by the eBPF program lands on the same backend whichever
//! node receives it, and a change to the backend set moves few flows (Eisenbud et al., NSDI 2016).
//!
//! Table size: [`MAGLEV_TABLE_SIZE`] = 1021, a prime (every skip is coprime with it, so each
//! backend's permutation visits every slot). With up to ~100 backends per frontend each backend
//! gets within one or two slots of M/N, i.e. within a few percent of an even share; the row is
//! 4 KiB, so 10,000 frontends take 40 MiB of kernel memory. Removing one of N backends moves its
//! own ~M/N slots plus, for the others, at most about 2·M/N more (the property tests check
//! 3·M/N + 2 %): Maglev's disruption grows as N approaches M/100. Established flows do not
//! move at all: the conntrack map keeps them on their backend. Must equal
//! `HERALD_MAGLEV_SIZE` in `bpf/lib/common.h`.

/// Slots in one frontend's table (prime).
pub const MAGLEV_TABLE_SIZE: usize = 1021;

/// Fixed seeds of the two name hashes; changing them reshuffles every flow on every node.
const OFFSET_SEED: u64 = 0x6865_7261_6c64_0001;
const SKIP_SEED: u64 = 0x6865_7261_6c64_0002;

/// A stable 64-bit hash of `bytes` (FNV-1a folded through a splitmix64 finaliser). Unlike
/// `std`'s `DefaultHasher` it is specified here and never changes between Rust releases.
fn stable_hash(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Builds the table for `names` (the backends' stable names). Each entry is an index into
/// `names`. The result does not depend on the order of `names`: backends are filled in name
/// order. Returns an empty table when there are no backends. Duplicate names share one
/// backend's turn (the first index wins).
pub fn maglev_table<S: AsRef<[u8]>>(names: &[S]) -> Vec<u32> {
    let m = MAGLEV_TABLE_SIZE as u64;
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by(|&a, &b| names[a].as_ref().cmp(names[b].as_ref()).then(a.cmp(&b)));
    order.dedup_by(|a, b| names[*a].as_ref() == names[*b].as_ref());
    if order.is_empty() {
        return Vec::new();
    }
    // (current position, skip) of each backend's permutation: slot_j = (offset + j*skip) mod M.
    let mut walkers: Vec<(u64, u64)> = order
        .iter()
        .map(|&i| {
            let name = names[i].as_ref();
            (
                stable_hash(OFFSET_SEED, name) % m,
                stable_hash(SKIP_SEED, name) % (m - 1) + 1,
            )
        })
        .collect();
    let mut table = vec![u32::MAX; MAGLEV_TABLE_SIZE];
    let mut filled = 0;
    'fill: loop {
        for (k, walker) in walkers.iter_mut().enumerate() {
            // Next slot of this backend's permutation that is still free.
            let mut slot = walker.0;
            while table[slot as usize] != u32::MAX {
                slot = (slot + walker.1) % m;
            }
            table[slot as usize] = order[k] as u32;
            walker.0 = (slot + walker.1) % m;
            filled += 1;
            if filled == MAGLEV_TABLE_SIZE {
                break 'fill;
            }
        }
    }
    table
}

/// Like [`maglev_table`], with some backends *draining*: they keep no slot, and every other
/// backend keeps exactly the slots it has in the table of all `names`. A draining backend's
/// slots are handed out as the table of the remaining backends hands them out, so they spread
/// evenly and every node that drains the same backends builds the same table. Flows hashed to
/// a backend that is not draining land where they would without the draining — a node that
/// takes over an IP while another node is declared dead picks the same backends as the old
/// owner did for every flow that was not on the dead node. When every backend (or none) is
/// draining, this is the plain table.
pub fn maglev_table_draining<S: AsRef<[u8]>>(names: &[S], draining: &[bool]) -> Vec<u32> {
    assert_eq!(names.len(), draining.len(), "one draining flag per backend");
    let full = maglev_table(names);
    let remaining: Vec<usize> = (0..names.len()).filter(|&i| !draining[i]).collect();
    if remaining.is_empty() || remaining.len() == names.len() {
        return full;
    }
    let remaining_names: Vec<&[u8]> = remaining.iter().map(|&i| names[i].as_ref()).collect();
    let without = maglev_table(&remaining_names);
    full.iter()
        .zip(&without)
        .map(|(&b, &w)| {
            if draining[b as usize] {
                remaining[w as usize] as u32
            } else {
                b
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.244.{}.{}:8080", i / 250, i % 250 + 1))
            .collect()
    }

    fn counts(table: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &b in table {
            c[b as usize] += 1;
        }
        c
    }

    #[test]
    fn empty_backends_give_empty_table() {
        assert!(maglev_table::<&str>(&[]).is_empty());
    }

    #[test]
    fn single_backend_owns_every_slot() {
        assert!(maglev_table(&["10.0.0.1:80"]).iter().all(|&b| b == 0));
    }

    #[test]
    fn table_does_not_depend_on_input_order() {
        let t = maglev_table(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
        let again = maglev_table(&["10.0.0.3:80", "10.0.0.1:80", "10.0.0.2:80"]);
        let remap = [2u32, 0, 1];
        assert_eq!(t, again.iter().map(|&i| remap[i as usize]).collect::<Vec<_>>());
    }

    #[test]
    fn draining_none_or_all_is_the_plain_table() {
        let n = names(5);
        assert_eq!(maglev_table_draining(&n, &[false; 5]), maglev_table(&n));
        assert_eq!(maglev_table_draining(&n, &[true; 5]), maglev_table(&n));
    }

    proptest! {
        #[test]
        fn draining_keeps_every_other_backends_slots_and_spreads_its_own(
            n in 2usize..60,
            mask in proptest::collection::vec(any::<bool>(), 60),
        ) {
            let all = names(n);
            let draining: Vec<bool> = mask[..n].to_vec();
            let live = draining.iter().filter(|d| !**d).count();
            prop_assume!(live > 0 && live < n);
            let full = maglev_table(&all);
            let t = maglev_table_draining(&all, &draining);
            prop_assert_eq!(t.len(), MAGLEV_TABLE_SIZE);
            for (slot, (&before, &after)) in full.iter().zip(&t).enumerate() {
                prop_assert!(!draining[after as usize], "slot {} still goes to a draining backend", slot);
                if !draining[before as usize] {
                    prop_assert_eq!(before, after, "slot {} of a live backend moved", slot);
                }
            }
            // Spread: nobody gets much more than an even share of the live ones.
            let c = counts(&t, n);
            let even = MAGLEV_TABLE_SIZE as f64 / live as f64;
            for (i, &x) in c.iter().enumerate() {
                if !draining[i] {
                    prop_assert!((x as f64) <= even * 1.25 + 3.0, "counts {:?}", c);
                }
            }
        }

        #[test]
        fn every_slot_is_filled_and_balanced(n in 1usize..100) {
            let t = maglev_table(&names(n));
            prop_assert_eq!(t.len(), MAGLEV_TABLE_SIZE);
            let c = counts(&t, n);
            let even = MAGLEV_TABLE_SIZE as f64 / n as f64;
            for &x in &c {
                // Maglev gives each backend floor or ceil of M/N slots, give or take one.
                prop_assert!((x as f64 - even).abs() <= 2.0 + even * 0.03, "counts {:?}", c);
            }
        }

        #[test]
        fn removing_one_backend_moves_few_other_slots(n in 3usize..60, victim_seed in 0usize..1000) {
            let all = names(n);
            let victim = victim_seed % n;
            let before = maglev_table(&all);
            let rest: Vec<String> = all.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, s)| s.clone()).collect();
            let after = maglev_table(&rest);
            let mut moved_others = 0;
            for (slot, &b) in before.iter().enumerate() {
                if b as usize == victim {
                    continue;
                }
                if rest[after[slot] as usize] != all[b as usize] {
                    moved_others += 1;
                }
            }
            // The victim's own ~M/N slots must move; of the others a few times that at most
            // (Maglev trades a little disruption for balance; the ratio grows with N/M).
            let limit = 3 * MAGLEV_TABLE_SIZE / n + MAGLEV_TABLE_SIZE / 50;
            prop_assert!(moved_others <= limit, "moved {} other slots (limit {})", moved_others, limit);
        }
    }
}
