//! CPU, port, interrupt, cache and stream-id rules.

use super::intervals::{overlapping_pairs, Tagged};
use super::{finding, At, CellView, ConfigSet};
use crate::finding::Finding;
use crate::model::*;
use std::collections::{BTreeSet, HashMap, HashSet};

/// One `arch-mismatch` finding per cell built for another architecture.
pub(super) fn arch_mismatches(set: &ConfigSet, out: &mut Vec<Finding>) {
    let arch = set.system.arch();
    for v in set.views().iter().skip(1) {
        if v.cell.arch != arch {
            let at = At {
                view: *v,
                array: None,
                index: None,
                address: None,
            };
            let msg = format!(
                "cell {} is built for {}, the system for {}",
                v.cell.name(),
                v.cell.arch.name(),
                arch.name()
            );
            out.push(
                finding(
                    "arch-mismatch",
                    at,
                    msg,
                    vec!["architecture byte at offset 5 of the cell config".into()],
                )
                .with_other(set.system.root_cell.name(), None, None),
            );
        }
    }
}

/// Cell names and the GIC version.
pub(super) fn check_arch(set: &ConfigSet, out: &mut Vec<Finding>) {
    let views = set.views();
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, v) in views.iter().enumerate() {
        match names.get(&v.cell.name()) {
            Some(&first) => {
                let at = At {
                    view: *v,
                    array: None,
                    index: None,
                    address: None,
                };
                let other = if views[first].file.is_empty() {
                    format!("cell {first} of the set")
                } else {
                    views[first].file.to_string()
                };
                let msg = format!("cell name {} is used twice", v.cell.name());
                out.push(
                    finding(
                        "cell-name-duplicate",
                        at,
                        msg,
                        vec![format!("first used by {other}")],
                    )
                    .with_other(views[first].cell.name(), None, None),
                );
            }
            None => {
                names.insert(v.cell.name(), i);
            }
        }
    }
    if let ArchPlatform::Arm(a) = &set.system.platform.arch {
        if a.gic_version != 2 && a.gic_version != 3 {
            let at = At {
                view: set.views()[0],
                array: None,
                index: None,
                address: None,
            };
            let msg = format!("unknown GIC version {} in the system config", a.gic_version);
            out.push(finding(
                "gic-version-invalid",
                at,
                msg,
                vec!["platform_info.arm.gic_version must be 2 or 3".into()],
            ));
        }
    }
}

pub(super) fn check(set: &ConfigSet, out: &mut Vec<Finding>) {
    let views = set.views();
    cpus(&views, out);
    pio(&views, out);
    irq_pins(&views, out);
    caches(&views, out);
    stream_ids(set, &views, out);
}

/// At most this many CPU numbers are listed in one message.
const MAX_LISTED_CPUS: usize = 16;

fn cpu_list(cpus: &[u32]) -> String {
    let mut s = cpus
        .iter()
        .take(MAX_LISTED_CPUS)
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if cpus.len() > MAX_LISTED_CPUS {
        s += &format!(" and {} more", cpus.len() - MAX_LISTED_CPUS);
    }
    s
}

/// CPU numbers set in `a` and (with `mask`) filtered bytewise, linear in the set size.
fn cpus_where(a: &[u8], mut keep: impl FnMut(usize, u8) -> u8) -> Vec<u32> {
    let mut out = Vec::new();
    for (i, &byte) in a.iter().enumerate() {
        let bits = keep(i, byte);
        for bit in 0..8 {
            if bits & (1 << bit) != 0 {
                out.push(i as u32 * 8 + bit);
            }
        }
    }
    out
}

fn byte(set: &[u8], i: usize) -> u8 {
    set.get(i).copied().unwrap_or(0)
}

fn cpus(views: &[CellView], out: &mut Vec<Finding>) {
    let root = views[0];
    let root_set = &root.cell.cpu_set;
    let root_cpus = cpus_where(root_set, |_, b| b);
    let mut taken: Vec<u8> = vec![0; root_set.len()];
    // The non-root cell whose CPUs take the root cell's last one, in set order.
    let mut last_taker: Option<(CellView, Vec<u32>)> = None;
    for (ai, a) in views.iter().enumerate().skip(1) {
        let a_set = &a.cell.cpu_set;
        let foreign = cpus_where(a_set, |i, b| b & !byte(root_set, i));
        if let Some(&first) = foreign.first() {
            let at = At {
                view: *a,
                array: Some("cpu_set"),
                index: Some(first as u64),
                address: None,
            };
            let msg = format!(
                "cell {} claims CPU {} which the root cell does not have",
                a.cell.name(),
                cpu_list(&foreign)
            );
            let d = vec![format!(
                "root cell {} CPUs: {}",
                root.cell.name(),
                cpu_list(&root_cpus)
            )];
            out.push(finding("cpu-not-in-root", at, msg, d).with_other(
                root.cell.name(),
                Some("cpu_set"),
                None,
            ));
        }
        for b in views.iter().skip(ai + 1) {
            let common = cpus_where(&b.cell.cpu_set, |i, x| x & byte(a_set, i));
            if let Some(&first) = common.first() {
                let at = At {
                    view: *b,
                    array: Some("cpu_set"),
                    index: Some(first as u64),
                    address: None,
                };
                let msg = format!(
                    "cells {} and {} both claim CPU {}",
                    a.cell.name(),
                    b.cell.name(),
                    cpu_list(&common)
                );
                out.push(
                    finding("cpu-overlap-between-cells", at, msg, vec![]).with_other(
                        a.cell.name(),
                        Some("cpu_set"),
                        Some(first as u64),
                    ),
                );
            }
        }
        let before = cpus_where(root_set, |i, b| b & !taken[i]);
        for (i, t) in taken.iter_mut().enumerate() {
            *t |= byte(a_set, i);
        }
        if last_taker.is_none() && !before.is_empty() {
            let after_empty = cpus_where(root_set, |i, b| b & !taken[i]).is_empty();
            if after_empty {
                last_taker = Some((*a, before));
            }
        }
    }
    if root_cpus.is_empty() && views.len() > 1 {
        let at = At {
            view: root,
            array: Some("cpu_set"),
            index: None,
            address: None,
        };
        let msg = format!("root cell {} has no CPU at all", root.cell.name());
        out.push(finding("root-cpu-starvation", at, msg, vec![]));
    }
    if let Some((taker, last)) = last_taker {
        let at = At {
            view: root,
            array: Some("cpu_set"),
            index: None,
            address: None,
        };
        let msg = format!(
            "root cell {} is left without a CPU: cell {} takes its last CPU {}",
            root.cell.name(),
            taker.cell.name(),
            cpu_list(&last)
        );
        let d = vec![format!(
            "root cell CPUs: {}, all taken by non-root cells",
            cpu_list(&root_cpus)
        )];
        let first = last.first().map(|&c| c as u64);
        out.push(finding("root-cpu-starvation", at, msg, d).with_other(
            taker.cell.name(),
            Some("cpu_set"),
            first,
        ));
    }
}

/// Ports of PCI config mechanism #1 (address 0xcf8-0xcfb, data 0xcfc-0xcff);
/// the hypervisor must intercept them.
const PCI_CONFIG_PORTS: (u32, u32, &str) = (0xcf8, 0xd00, "PCI config");

/// Platform ports shared by the whole machine; only the root cell may own them.
const CRITICAL_PORTS: [(u32, u32, &str); 7] = [
    (0x20, 0x22, "master PIC"),
    (0xa0, 0xa2, "slave PIC"),
    (0x40, 0x44, "PIT"),
    (0x61, 0x62, "port B / NMI status"),
    (0x70, 0x72, "RTC/CMOS and NMI mask"),
    (0x4d0, 0x4d2, "ELCR"),
    (0x64, 0x65, "i8042 command/reset"),
];

/// `0x61` for one port, `0xcfc-0xcff` for a range.
fn port_span(start: u32, end: u32) -> String {
    if end - start == 1 {
        format!("{start:#x}")
    } else {
        format!("{start:#x}-{:#x}", end - 1)
    }
}

fn pio(views: &[CellView], out: &mut Vec<Finding>) {
    for v in views {
        for (i, p) in v.cell.pio_regions.iter().enumerate() {
            let (s, e) = p.range();
            let mut hit = |rule, (cs, ce, name): (u32, u32, &str)| {
                if s < ce && cs < e {
                    // Name the ports actually passed through, not the whole block.
                    let (hs, he) = (s.max(cs), e.min(ce));
                    let at = At {
                        view: *v,
                        array: Some("pio_regions"),
                        index: Some(i as u64),
                        address: Some(hs as u64),
                    };
                    let plural = if he - hs == 1 { "port" } else { "ports" };
                    let msg = format!(
                        "{name} {plural} {} passed through to {}",
                        port_span(hs, he),
                        v.cell.name()
                    );
                    let d = vec![
                        format!("pio_regions[{i}]: ports {}", port_span(s, e)),
                        format!("{name} ports: {}", port_span(cs, ce)),
                    ];
                    out.push(finding(rule, at, msg, d));
                }
            };
            hit("pio-pci-config", PCI_CONFIG_PORTS);
            if !v.root {
                for c in CRITICAL_PORTS {
                    hit("pio-critical-port", c);
                }
            }
        }
    }
}

/// Pins of an irqchip entry as (chip address, 32-pin block number, bits),
/// at most eight words per entry whatever its `pin_base` alignment.
fn pin_words(chip: &Irqchip) -> impl Iterator<Item = ((u64, u64), u32)> + '_ {
    chip.pin_bitmap
        .iter()
        .enumerate()
        .filter(|(_, w)| **w != 0)
        .flat_map(move |(k, &w)| {
            let first = chip.pin_base as u64 + 32 * k as u64;
            let (block, shift) = (first / 32, (first % 32) as u32);
            let low = w << shift;
            let high = if shift == 0 { 0 } else { w >> (32 - shift) };
            [
                ((chip.address, block), low),
                ((chip.address, block + 1), high),
            ]
            .into_iter()
            .filter(|(_, bits)| *bits != 0)
        })
}

/// Pins claimed by one cell, per (chip address, 32-pin block): all bits,
/// plus the entries that first claimed them (at most 32 per block).
type ClaimedPins = HashMap<(u64, u64), (u32, Vec<(u32, usize)>)>;

fn irq_pins(views: &[CellView], out: &mut Vec<Finding>) {
    let claimed: Vec<ClaimedPins> = views
        .iter()
        .map(|v| {
            let mut m: ClaimedPins = HashMap::new();
            for (ci, chip) in v.cell.irqchips.iter().enumerate() {
                for (key, bits) in pin_words(chip) {
                    let e = m.entry(key).or_default();
                    let new = bits & !e.0;
                    if new != 0 {
                        e.0 |= new;
                        e.1.push((new, ci));
                    }
                }
            }
            m
        })
        .collect();
    for (ai, a) in views.iter().enumerate().skip(1) {
        for b in views.iter().skip(ai + 1) {
            for (ib, chip) in b.cell.irqchips.iter().enumerate() {
                let mut shared: Vec<u64> = Vec::new();
                let mut other_index = None;
                for ((addr, block), bits) in pin_words(chip) {
                    let Some((have, firsts)) = claimed[ai].get(&(addr, block)) else {
                        continue;
                    };
                    let common = bits & have;
                    if common != 0 && other_index.is_none() {
                        let low = common & common.wrapping_neg();
                        other_index = firsts.iter().find(|(b, _)| b & low != 0).map(|e| e.1);
                    }
                    shared.extend(
                        (0..32)
                            .filter(|i| common & (1 << i) != 0)
                            .map(|i| block * 32 + i),
                    );
                }
                if let Some(&pin) = shared.first() {
                    let list: Vec<String> = shared.iter().map(u64::to_string).collect();
                    let at = At {
                        view: *b,
                        array: Some("irqchips"),
                        index: Some(ib as u64),
                        address: Some(chip.address),
                    };
                    let msg = format!(
                        "interrupt pin {pin} of irqchip {:#x} claimed by {} and {}",
                        chip.address,
                        a.cell.name(),
                        b.cell.name()
                    );
                    out.push(
                        finding(
                            "irqchip-pin-overlap-between-cells",
                            at,
                            msg,
                            vec![format!("shared pins: {}", list.join(", "))],
                        )
                        .with_other(
                            a.cell.name(),
                            Some("irqchips"),
                            other_index.map(|i| i as u64),
                        ),
                    );
                }
            }
        }
    }
}

fn caches(views: &[CellView], out: &mut Vec<Finding>) {
    // Cache partitions as capacity-bit intervals, one list per type bit.
    let per_bit = |c: &Cell, bit: u8| -> Vec<Tagged> {
        c.cache_regions
            .iter()
            .enumerate()
            .filter(|(_, r)| r.kind & bit != 0)
            .map(|(i, r)| (r.start as u128, r.start as u128 + r.size as u128, i))
            .collect()
    };
    for (ai, a) in views.iter().enumerate().skip(1) {
        for b in views.iter().skip(ai + 1) {
            let mut pairs = BTreeSet::new();
            for bit in [CACHE_L3_CODE, CACHE_L3_DATA] {
                pairs.extend(overlapping_pairs(
                    &per_bit(b.cell, bit),
                    Some(&per_bit(a.cell, bit)),
                ));
            }
            for (ib, ia) in pairs {
                let (ca, cb) = (&a.cell.cache_regions[ia], &b.cell.cache_regions[ib]);
                let (a0, a1) = (ca.start as u64, ca.start as u64 + ca.size as u64);
                let (b0, b1) = (cb.start as u64, cb.start as u64 + cb.size as u64);
                let at = At {
                    view: *b,
                    array: Some("cache_regions"),
                    index: Some(ib as u64),
                    address: Some(cb.start as u64),
                };
                let msg = format!(
                    "cache partition {ib} of {} overlaps cache partition {ia} of {}",
                    b.cell.name(),
                    a.cell.name()
                );
                let d = vec![
                    format!(
                        "{}: bits {}-{} type {:#x}",
                        b.cell.name(),
                        b0,
                        b1 - 1,
                        cb.kind
                    ),
                    format!(
                        "{}: bits {}-{} type {:#x}",
                        a.cell.name(),
                        a0,
                        a1 - 1,
                        ca.kind
                    ),
                ];
                out.push(
                    finding("cache-overlap-between-cells", at, msg, d).with_other(
                        a.cell.name(),
                        Some("cache_regions"),
                        Some(ia as u64),
                    ),
                );
            }
        }
    }
}

/// Whether two stream ids select a common device. MMU-500 entries are
/// `id | mask_out << 16` with 15-bit fields; other IOMMUs compare exactly.
/// The pairwise reference for [`Claimed`].
#[cfg(test)]
fn sids_collide(a: u32, b: u32, mmu500: bool) -> bool {
    if mmu500 {
        let mask = ((a >> 16) | (b >> 16)) & 0x7fff;
        (a ^ b) & 0x7fff & !mask == 0
    } else {
        a == b
    }
}

/// Number of distinct 15-bit MMU-500 stream ids.
const MMU500_IDS: usize = 1 << 15;

/// An MMU-500 entry with the masked-out id bits cleared, so equal keys match equal ids.
fn mmu500_key(entry: u32) -> u32 {
    let mask = (entry >> 16) & 0x7fff;
    mask << 16 | (entry & 0x7fff & !mask)
}

/// Every MMU-500 stream id an entry (`id | mask_out << 16`) matches.
fn mmu500_matches(entry: u32) -> impl Iterator<Item = usize> {
    let mask = ((entry >> 16) & 0x7fff) as usize;
    let base = (entry & 0x7fff) as usize & !mask;
    // Enumerate the submasks of `mask`: at most 2^15 per distinct entry.
    let mut sub = Some(mask);
    std::iter::from_fn(move || {
        let s = sub?;
        sub = if s == 0 { None } else { Some((s - 1) & mask) };
        Some(base | s)
    })
}

/// For one cell: which stream ids it claims, in a form that answers
/// "does this entry collide?" in time independent of the cell's size.
enum Claimed {
    Exact(HashMap<u32, usize>),
    Mmu500(Vec<Option<usize>>),
}

impl Claimed {
    fn new(ids: &[u32], mmu500: bool) -> Claimed {
        if !mmu500 {
            let mut m = HashMap::new();
            for (i, &s) in ids.iter().enumerate() {
                m.entry(s).or_insert(i);
            }
            return Claimed::Exact(m);
        }
        // Entries with the same mask and the same id outside the mask match
        // the same ids; after this dedup each mask has at most
        // 2^(15 - popcount) bases, so enumeration costs at most 2^15 per mask.
        let mut distinct: HashMap<u32, usize> = HashMap::new();
        for (i, &s) in ids.iter().enumerate() {
            distinct.entry(mmu500_key(s)).or_insert(i);
        }
        let mut covered = vec![None; MMU500_IDS];
        for (&key, &i) in &distinct {
            for id in mmu500_matches(key) {
                // Keep the lowest entry index, independent of hash order.
                if covered[id].map_or(true, |j| j > i) {
                    covered[id] = Some(i);
                }
            }
        }
        Claimed::Mmu500(covered)
    }

    /// Index of an entry of this cell that collides with `entry`.
    fn collides(&self, entry: u32) -> Option<usize> {
        match self {
            Claimed::Exact(m) => m.get(&entry).copied(),
            Claimed::Mmu500(covered) => mmu500_matches(entry).find_map(|id| covered[id]),
        }
    }
}

fn stream_ids(set: &ConfigSet, views: &[CellView], out: &mut Vec<Finding>) {
    let mmu500 = set
        .system
        .used_iommus()
        .any(|(_, u)| u.kind == iommu_type::ARM_MMU500);
    for (ai, a) in views.iter().enumerate().skip(1) {
        if a.cell.stream_ids.is_empty() {
            continue;
        }
        let claimed = Claimed::new(&a.cell.stream_ids, mmu500);
        for b in views.iter().skip(ai + 1) {
            let mut seen = HashSet::new();
            for (ib, &sb) in b.cell.stream_ids.iter().enumerate() {
                if !seen.insert(if mmu500 { mmu500_key(sb) } else { sb }) {
                    continue;
                }
                if let Some(ia) = claimed.collides(sb) {
                    let sa = a.cell.stream_ids[ia];
                    let at = At {
                        view: *b,
                        array: Some("stream_ids"),
                        index: Some(ib as u64),
                        address: Some(sb as u64),
                    };
                    let (nb, na) = (stream_id_name(sb, mmu500), stream_id_name(sa, mmu500));
                    let kind = if mmu500 { " (MMU-500 id/mask_out)" } else { "" };
                    let msg = format!(
                        "stream id {nb}{kind} of {} is also claimed by {}",
                        b.cell.name(),
                        a.cell.name()
                    );
                    let d = vec![format!("{}: stream_ids[{ia}] = {na}", a.cell.name())];
                    out.push(finding("stream-id-conflict", at, msg, d).with_other(
                        a.cell.name(),
                        Some("stream_ids"),
                        Some(ia as u64),
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{sids_collide, Claimed};

    #[test]
    fn claimed_sets_agree_with_pairwise_comparison() {
        // Deterministic pseudo-random entries with small ids and masks so
        // that collisions happen often.
        let mut x: u32 = 0x1234_5678;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for round in 0..200 {
            let mmu500 = round % 2 == 0;
            let a: Vec<u32> = (0..8)
                .map(|_| (next() & 0x3f) | (next() & 0x7) << 16)
                .collect();
            let b: Vec<u32> = (0..8)
                .map(|_| (next() & 0x3f) | (next() & 0x7) << 16)
                .collect();
            let claimed = Claimed::new(&a, mmu500);
            for &sb in &b {
                let want = a.iter().position(|&sa| sids_collide(sa, sb, mmu500));
                assert_eq!(
                    claimed.collides(sb).is_some(),
                    want.is_some(),
                    "{a:x?} vs {sb:#x}"
                );
                if let Some(i) = claimed.collides(sb) {
                    assert!(sids_collide(a[i], sb, mmu500));
                }
            }
        }
    }

    #[test]
    fn pin_words_split_unaligned_pin_bases() {
        use crate::model::Irqchip;
        let chip = Irqchip {
            address: 1,
            id: 0,
            pin_base: 40,
            pin_bitmap: [0x8000_0001, 0, 0, 1],
        };
        let words: Vec<_> = super::pin_words(&chip).collect();
        // Pin 40 and pin 71 (block 1 and 2), pin 136 (block 4).
        assert_eq!(
            words,
            vec![((1, 1), 1 << 8), ((1, 2), 1 << 7), ((1, 4), 1 << 8)]
        );
        let pins: Vec<u64> = chip.pins().collect();
        assert_eq!(pins, vec![40, 71, 136]);
    }

    #[test]
    fn mmu500_masks_widen_the_match_and_other_iommus_compare_exactly() {
        assert!(sids_collide(0x870, 0x870, false));
        assert!(!sids_collide(0x870, 0x871, false));
        assert!(!sids_collide(0x870, 0x871, true));
        assert!(sids_collide(0x870, 0x871 | 1 << 16, true));
        assert!(sids_collide(0x870 | 0xf << 16, 0x87f, true));
        assert!(!sids_collide(0x870 | 0xf << 16, 0x880, true));
        // Bit 15 is outside the 15-bit id field.
        assert!(sids_collide(0x8870, 0x0870, true));
    }
}
