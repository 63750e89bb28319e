//! A set of `u128` values stored as sorted, disjoint, non-adjacent inclusive intervals.
//!
//! This is the allocator's free list: "lowest free value" is the first entry, taking one value
//! splits at most one interval, giving one back merges with at most two neighbours. Every
//! operation is `O(log k)` in the number of intervals `k`, whatever the number of values, so an
//! IPv6 /64 (2^64 values) costs one entry.

use std::collections::BTreeMap;

/// Invariants (checked by [`IntervalSet::check`]):
/// - every entry `start -> end` has `start <= end`;
/// - entries neither overlap nor touch: for consecutive entries `a -> b`, `c -> d`, `b + 1 < c`;
/// - `len` is the number of values in the set, saturating at `u128::MAX` (only a set holding all
///   2^128 values saturates; its count is then off by one, which no pool can reach in practice:
///   it would be `::/0`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IntervalSet {
    intervals: BTreeMap<u128, u128>,
    len: u128,
}

/// Number of values in `start..=end`, saturating.
fn span(start: u128, end: u128) -> u128 {
    (end - start).saturating_add(1)
}

impl IntervalSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of values in the set (saturating, see the type's invariants).
    pub fn len(&self) -> u128 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.intervals.is_empty()
    }

    /// Number of stored intervals (memory use, not values).
    pub fn interval_count(&self) -> usize {
        self.intervals.len()
    }

    /// The intervals in increasing order, as inclusive `(start, end)` pairs.
    pub fn intervals(&self) -> impl Iterator<Item = (u128, u128)> + '_ {
        self.intervals.iter().map(|(&start, &end)| (start, end))
    }

    /// The smallest value in the set.
    pub fn first(&self) -> Option<u128> {
        self.intervals.keys().next().copied()
    }

    /// The interval holding `value`, if any.
    fn interval_of(&self, value: u128) -> Option<(u128, u128)> {
        let (&start, &end) = self.intervals.range(..=value).next_back()?;
        (value <= end).then_some((start, end))
    }

    pub fn contains(&self, value: u128) -> bool {
        self.interval_of(value).is_some()
    }

    /// Whether every value of `start..=end` is in the set.
    pub fn contains_range(&self, start: u128, end: u128) -> bool {
        self.interval_of(start).is_some_and(|(_, e)| end <= e)
    }

    /// Adds `start..=end` (values already present are fine), merging with touching intervals.
    /// Does nothing if `start > end`.
    pub fn insert_range(&mut self, start: u128, end: u128) {
        if start > end {
            return;
        }
        let (mut lo, mut hi) = (start, end);
        // An interval starting at or before `lo` that reaches `lo - 1` or beyond absorbs us.
        if let Some((&s, &e)) = self.intervals.range(..=lo).next_back()
            && e.saturating_add(1) >= lo
        {
            lo = s;
            hi = hi.max(e);
            self.intervals.remove(&s);
            self.len = self.len.saturating_sub(span(s, e));
        }
        // Intervals starting inside `lo..=hi + 1` are absorbed too.
        loop {
            // Nothing starts exactly at `lo` any more: the step above absorbed such an entry.
            let next = self.intervals.range(lo..).next().map(|(&s, &e)| (s, e));
            match next {
                Some((s, e)) if s <= hi.saturating_add(1) => {
                    hi = hi.max(e);
                    self.intervals.remove(&s);
                    self.len = self.len.saturating_sub(span(s, e));
                }
                _ => break,
            }
        }
        self.intervals.insert(lo, hi);
        self.len = self.len.saturating_add(span(lo, hi));
    }

    /// Adds one value. Returns whether it was absent.
    pub fn insert(&mut self, value: u128) -> bool {
        if self.contains(value) {
            return false;
        }
        self.insert_range(value, value);
        true
    }

    /// Removes one value, splitting its interval. Returns whether it was present.
    pub fn remove(&mut self, value: u128) -> bool {
        let Some((start, end)) = self.interval_of(value) else {
            return false;
        };
        self.intervals.remove(&start);
        if start < value {
            self.intervals.insert(start, value - 1);
        }
        if value < end {
            self.intervals.insert(value + 1, end);
        }
        self.len = self.len.saturating_sub(1);
        true
    }

    /// Checks the invariants; returns a description of the first violation.
    pub fn check(&self) -> Result<(), String> {
        let mut previous_end: Option<u128> = None;
        let mut count: u128 = 0;
        for (&start, &end) in &self.intervals {
            if start > end {
                return Err(format!("interval {start}..={end} is reversed"));
            }
            if let Some(prev) = previous_end
                && prev.saturating_add(1) >= start
            {
                return Err(format!(
                    "interval starting at {start} touches or overlaps one ending at {prev}"
                ));
            }
            previous_end = Some(end);
            count = count.saturating_add(span(start, end));
        }
        if count != self.len {
            return Err(format!("len is {} but the intervals hold {count}", self.len));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn split_and_merge() {
        let mut set = IntervalSet::new();
        set.insert_range(10, 20);
        assert_eq!(set.len(), 11);
        assert!(set.remove(15));
        assert_eq!(set.intervals().collect::<Vec<_>>(), [(10, 14), (16, 20)]);
        assert!(!set.remove(15));
        assert!(set.remove(10));
        assert_eq!(set.first(), Some(11));
        assert!(set.insert(15));
        assert!(set.insert(10));
        assert_eq!(set.intervals().collect::<Vec<_>>(), [(10, 20)]);
        set.check().unwrap();
    }

    #[test]
    fn overlapping_and_adjacent_inserts_merge() {
        let mut set = IntervalSet::new();
        set.insert_range(0, 3);
        set.insert_range(8, 9);
        set.insert_range(4, 7);
        assert_eq!(set.intervals().collect::<Vec<_>>(), [(0, 9)]);
        set.insert_range(2, 12);
        set.insert_range(20, 30);
        set.insert_range(13, 19);
        assert_eq!(set.intervals().collect::<Vec<_>>(), [(0, 30)]);
        assert_eq!(set.len(), 31);
        set.check().unwrap();
    }

    #[test]
    fn extremes_do_not_overflow() {
        let mut set = IntervalSet::new();
        set.insert_range(u128::MAX - 1, u128::MAX);
        set.insert_range(0, 0);
        assert!(set.remove(u128::MAX));
        assert!(set.contains(u128::MAX - 1));
        set.check().unwrap();
        // The whole space: the count saturates (documented), the intervals stay right.
        set.insert_range(0, u128::MAX);
        assert_eq!(set.len(), u128::MAX);
        assert!(set.remove(0));
        assert_eq!(set.first(), Some(1));
        assert_eq!(set.intervals().collect::<Vec<_>>(), [(1, u128::MAX)]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        InsertRange(u8, u8),
        Remove(u8),
        Insert(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u8>(), 0u8..16).prop_map(|(a, w)| Op::InsertRange(a, a.saturating_add(w))),
            any::<u8>().prop_map(Op::Remove),
            any::<u8>().prop_map(Op::Insert),
        ]
    }

    proptest! {
        /// The interval set behaves exactly like a plain `BTreeSet` of its values.
        #[test]
        fn matches_a_naive_set(ops in proptest::collection::vec(op(), 0..200)) {
            let mut set = IntervalSet::new();
            let mut model = BTreeSet::new();
            for op in ops {
                match op {
                    Op::InsertRange(a, b) => {
                        set.insert_range(a as u128, b as u128);
                        model.extend(a..=b);
                    }
                    Op::Remove(v) => prop_assert_eq!(set.remove(v as u128), model.remove(&v)),
                    Op::Insert(v) => prop_assert_eq!(set.insert(v as u128), model.insert(v)),
                }
                prop_assert!(set.check().is_ok(), "{:?}", set.check());
                prop_assert_eq!(set.len(), model.len() as u128);
                prop_assert_eq!(set.first(), model.first().map(|&v| v as u128));
            }
            for v in 0..=255u8 {
                prop_assert_eq!(set.contains(v as u128), model.contains(&v));
            }
        }
    }
}
