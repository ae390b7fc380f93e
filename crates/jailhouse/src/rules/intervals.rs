//! Output-sensitive interval intersection, so that a crafted config with
//! hundreds of thousands of entries cannot make the checker quadratic.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Most pairs one rule reports for one list (or pair of lists). Real configs
/// have a handful; the cap bounds work and output on crafted input.
pub(crate) const MAX_PAIRS: usize = 256;

/// A half-open interval `[start, end)` tagged with its array index.
pub(crate) type Tagged = (u128, u128, usize);

/// Intersecting pairs between `a` and `b` as `(index in a, index in b)`, or,
/// with `b = None`, within `a` as `(lower index, higher index)`. Empty
/// intervals never intersect. Sorted, at most [`MAX_PAIRS`] pairs.
pub(crate) fn overlapping_pairs(a: &[Tagged], b: Option<&[Tagged]>) -> Vec<(usize, usize)> {
    let mut events: Vec<(u128, u128, u8, usize)> =
        a.iter().map(|&(s, e, i)| (s, e, 0, i)).collect();
    if let Some(b) = b {
        events.extend(b.iter().map(|&(s, e, i)| (s, e, 1, i)));
    }
    events.retain(|e| e.0 < e.1);
    events.sort_unstable();
    let mut active: [BinaryHeap<Reverse<(u128, usize)>>; 2] =
        [BinaryHeap::new(), BinaryHeap::new()];
    let mut pairs = Vec::new();
    'events: for (start, end, set, idx) in events {
        for heap in &mut active {
            while heap.peek().is_some_and(|Reverse((e, _))| *e <= start) {
                heap.pop();
            }
        }
        // Everything still active started no later and ends after `start`.
        let other = if b.is_some() { 1 - set as usize } else { 0 };
        for Reverse((_, j)) in active[other].iter() {
            let pair = match (b.is_some(), set) {
                (false, _) => (idx.min(*j), idx.max(*j)),
                (true, 0) => (idx, *j),
                (true, _) => (*j, idx),
            };
            pairs.push(pair);
            if pairs.len() >= MAX_PAIRS {
                break 'events;
            }
        }
        active[set as usize].push(Reverse((end, idx)));
    }
    pairs.sort_unstable();
    pairs.dedup();
    pairs
}

/// Sorted, disjoint, non-adjacent union of the intervals.
pub(crate) fn merge(mut ranges: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    ranges.retain(|r| r.0 < r.1);
    ranges.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// First address of `range` not covered by `merged` (output of [`merge`]).
pub(crate) fn first_gap(merged: &[(u128, u128)], range: (u128, u128)) -> Option<u128> {
    if range.0 >= range.1 {
        return None;
    }
    let i = merged.partition_point(|r| r.0 <= range.0);
    match i.checked_sub(1).map(|i| merged[i]) {
        Some((_, e)) if e > range.0 => (e < range.1).then_some(e),
        _ => Some(range.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_within_one_list_and_between_two() {
        let a = [(0, 10, 0), (5, 15, 1), (20, 30, 2), (29, 29, 3)];
        assert_eq!(overlapping_pairs(&a, None), vec![(0, 1)]);
        let b = [(14, 21, 0), (30, 40, 1), (0, 1, 2)];
        assert_eq!(
            overlapping_pairs(&a, Some(&b)),
            vec![(0, 2), (1, 0), (2, 0)]
        );
    }

    #[test]
    fn pair_count_is_capped() {
        let nested: Vec<Tagged> = (0..10_000).map(|i| (i as u128, 1_000_000, i)).collect();
        assert_eq!(overlapping_pairs(&nested, None).len(), MAX_PAIRS);
    }

    #[test]
    fn first_gap_walks_adjacent_and_overlapping_ranges() {
        let covered = merge(vec![
            (0x0, 0x1000),
            (0x1000, 0x3000),
            (0x2000, 0x4000),
            (0x5000, 0x6000),
        ]);
        assert_eq!(covered, vec![(0, 0x4000), (0x5000, 0x6000)]);
        assert_eq!(first_gap(&covered, (0x0, 0x4000)), None);
        assert_eq!(first_gap(&covered, (0x800, 0x4800)), Some(0x4000));
        assert_eq!(first_gap(&covered, (0x4800, 0x5800)), Some(0x4800));
        assert_eq!(first_gap(&covered, (0x5000, 0x6000)), None);
        assert_eq!(first_gap(&[], (0x10, 0x20)), Some(0x10));
    }
}
