//! The guest's view of its address space: which ranges it mapped, with which protection.
//!
//! The translator only translates code from ranges the guest mapped executable, and refuses
//! guest `munmap`/`mprotect`/`MAP_FIXED` requests that would touch translator memory.

use std::collections::BTreeMap;

/// Page size.
pub const PAGE: u64 = 4096;

/// Rounds `x` down to a page boundary.
pub fn page_down(x: u64) -> u64 {
    x & !(PAGE - 1)
}

/// Rounds `x` up to a page boundary (saturating).
pub fn page_up(x: u64) -> u64 {
    x.saturating_add(PAGE - 1) & !(PAGE - 1)
}

/// One guest mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// One past the last byte.
    pub end: u64,
    /// `PROT_*` bits as the guest asked for them.
    pub prot: i32,
}

/// The set of guest mappings, non-overlapping, keyed by start address.
#[derive(Debug, Default)]
pub struct GuestMap {
    map: BTreeMap<u64, Region>,
}

impl GuestMap {
    /// Removes `[lo, hi)` from the map, splitting regions at the edges.
    pub fn remove(&mut self, lo: u64, hi: u64) {
        if lo >= hi {
            return;
        }
        let keys: Vec<u64> = self
            .map
            .range(..hi)
            .rev()
            .take_while(|(_, r)| r.end > lo)
            .map(|(k, _)| *k)
            .collect();
        // Regions that start before hi and end after lo overlap; the take_while above stops at
        // the first that ends at or before lo, which is safe because regions do not overlap.
        for k in keys {
            let r = self.map.remove(&k).unwrap();
            if k < lo {
                self.map.insert(
                    k,
                    Region {
                        end: lo,
                        prot: r.prot,
                    },
                );
            }
            if r.end > hi {
                self.map.insert(
                    hi,
                    Region {
                        end: r.end,
                        prot: r.prot,
                    },
                );
            }
        }
    }

    /// Records `[lo, hi)` as mapped with `prot`, replacing what was there.
    pub fn insert(&mut self, lo: u64, hi: u64, prot: i32) {
        self.remove(lo, hi);
        if lo < hi {
            self.map.insert(lo, Region { end: hi, prot });
        }
    }

    /// Whether every byte of `[lo, hi)` is a guest mapping.
    pub fn covers(&self, lo: u64, hi: u64) -> bool {
        let mut at = lo;
        while at < hi {
            match self.find(at) {
                Some((_, r)) => at = r.end,
                None => return false,
            }
        }
        true
    }

    /// Sets the protection of `[lo, hi)`, which must be covered.
    pub fn protect(&mut self, lo: u64, hi: u64, prot: i32) {
        let parts: Vec<(u64, u64)> = self.parts(lo, hi);
        for (a, b) in parts {
            self.insert(a, b, prot);
        }
    }

    /// The pieces of `[lo, hi)` that are guest mappings.
    pub fn parts(&self, lo: u64, hi: u64) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        if let Some((s, r)) = self.find(lo) {
            v.push((s.max(lo), r.end.min(hi)));
        }
        for (s, r) in self.map.range(lo..hi) {
            if *s != lo || v.is_empty() {
                v.push((*s, r.end.min(hi)));
            }
        }
        v.dedup();
        v
    }

    /// The region containing `addr`.
    pub fn find(&self, addr: u64) -> Option<(u64, Region)> {
        self.map
            .range(..=addr)
            .next_back()
            .filter(|(_, r)| r.end > addr)
            .map(|(s, r)| (*s, *r))
    }

    /// All regions in address order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Region)> + '_ {
        self.map.iter().map(|(s, r)| (*s, *r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_protect() {
        let mut m = GuestMap::default();
        m.insert(0x1000, 0x5000, 3);
        m.protect(0x2000, 0x3000, 5);
        assert_eq!(
            m.find(0x2800).unwrap(),
            (
                0x2000,
                Region {
                    end: 0x3000,
                    prot: 5
                }
            )
        );
        assert_eq!(m.find(0x1000).unwrap().1.end, 0x2000);
        assert_eq!(
            m.find(0x4fff).unwrap(),
            (
                0x3000,
                Region {
                    end: 0x5000,
                    prot: 3
                }
            )
        );
        m.remove(0x1800, 0x4800);
        assert!(m.find(0x2000).is_none());
        assert!(m.covers(0x1000, 0x1800));
        assert!(!m.covers(0x1000, 0x1900));
        assert_eq!(
            m.parts(0, 0x10000),
            vec![(0x1000, 0x1800), (0x4800, 0x5000)]
        );
    }
}
