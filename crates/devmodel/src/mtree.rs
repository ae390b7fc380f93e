//! `info mtree` and `info mtree -f`, printed as QEMU 7.2 prints them.

use std::fmt::Write;

use crate::memory::{Memory, RegionId, RegionKind};

fn type_name(m: &Memory, id: RegionId, depth: u32) -> &'static str {
    let Some(r) = m.region(id) else { return "i/o" };
    match &r.kind {
        RegionKind::Alias { target, .. } if depth < 64 => type_name(m, *target, depth + 1),
        RegionKind::Ram { readonly: true, .. } => "rom",
        RegionKind::Ram { .. } => "ram",
        _ => "i/o",
    }
}

/// The last address of a region of `size` bytes starting at `start` (QEMU's
/// `MR_SIZE`: a zero-sized region ends where it starts).
fn end(start: u128, size: u128) -> u64 {
    (start + size.saturating_sub(1)) as u64
}

/// Groups address spaces by root, in creation order of each group's first member.
fn groups(m: &Memory) -> Vec<(RegionId, Vec<String>)> {
    let mut g: Vec<(RegionId, Vec<String>)> = Vec::new();
    for a in m.address_spaces() {
        match g.iter_mut().find(|(r, _)| *r == a.root) {
            Some((_, names)) => names.push(a.name.clone()),
            None => g.push((a.root, vec![a.name.clone()])),
        }
    }
    g
}

/// `info mtree`: every address space's region tree, then the regions that aliases
/// point into.
pub fn info_mtree(m: &Memory) -> String {
    let mut out = String::new();
    let mut aliased: Vec<RegionId> = Vec::new();
    for (root, mut names) in groups(m) {
        names.sort();
        for n in &names {
            let _ = writeln!(out, "address-space: {n}");
        }
        print_region(m, root, 1, 0, &mut aliased, &mut out);
        out.push('\n');
    }
    let mut i = 0;
    while i < aliased.len() {
        let id = aliased[i];
        i += 1;
        let Some(r) = m.region(id) else { continue };
        let _ = writeln!(out, "memory-region: {}", r.name);
        print_region(m, id, 1, 0, &mut aliased, &mut out);
        out.push('\n');
    }
    out
}

fn print_region(
    m: &Memory,
    id: RegionId,
    level: usize,
    base: u128,
    aliased: &mut Vec<RegionId>,
    out: &mut String,
) {
    let Some(r) = m.region(id) else { return };
    let (addr, prio) = match r.placement {
        Some(p) if level > 1 => (p.addr as u128, p.priority),
        _ => (0, 0),
    };
    let start = base + addr;
    let dis = if r.enabled { "" } else { " [disabled]" };
    out.push_str(&"  ".repeat(level));
    match &r.kind {
        RegionKind::Alias { target, offset } => {
            let tname = m.region(*target).map_or("", |t| t.name.as_str());
            let _ = writeln!(
                out,
                "{:016x}-{:016x} (prio {prio}, {}): alias {} @{tname} {:016x}-{:016x}{dis}",
                start as u64,
                end(start, r.size),
                type_name(m, id, 0),
                r.name,
                offset,
                end(*offset as u128, r.size),
            );
            if !aliased.contains(target) {
                aliased.push(*target);
            }
        }
        _ => {
            let _ = writeln!(
                out,
                "{:016x}-{:016x} (prio {prio}, {}): {}{dis}",
                start as u64,
                end(start, r.size),
                type_name(m, id, 0),
                r.name,
            );
        }
    }
    // Children by address, higher priority first at equal addresses.
    let mut subs: Vec<(u64, i32, usize, RegionId)> = r
        .subregions
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let p = m.region(*s)?.placement?;
            Some((p.addr, -p.priority, i, *s))
        })
        .collect();
    subs.sort();
    for (_, _, _, s) in subs {
        print_region(m, s, level + 1, start, aliased, out);
    }
}

/// QEMU's `memory_region_get_flatview_root`: descends through a lone enabled
/// child at offset 0 that fits, and through aliases of a whole region.
fn flatview_root(m: &Memory, mut id: RegionId) -> Option<RegionId> {
    for _ in 0..64 {
        let r = m.region(id)?;
        if !r.enabled {
            return None;
        }
        match &r.kind {
            RegionKind::Alias { target, offset } => {
                if *offset == 0 && m.region(*target).is_some_and(|t| r.size >= t.size) {
                    id = *target;
                    continue;
                }
                return Some(id);
            }
            RegionKind::Container => {
                let en: Vec<RegionId> = r
                    .subregions
                    .iter()
                    .copied()
                    .filter(|s| m.region(*s).is_some_and(|x| x.enabled))
                    .collect();
                match en.as_slice() {
                    [] => return None,
                    [c] => {
                        let cr = m.region(*c)?;
                        if cr.placement.is_some_and(|p| p.addr == 0) && r.size >= cr.size {
                            id = *c;
                            continue;
                        }
                        return Some(id);
                    }
                    _ => return Some(id),
                }
            }
            _ => return Some(id),
        }
    }
    Some(id)
}

/// `info mtree -f`: the flattened view of each address space.
pub fn info_mtree_flat(m: &Memory) -> String {
    let mut out = String::new();
    for (n, (root, names)) in groups(m).into_iter().enumerate() {
        let _ = writeln!(out, "FlatView #{n}");
        let rname = m.region(root).map_or("", |r| r.name.as_str());
        for a in &names {
            let _ = writeln!(out, " AS \"{a}\", root: {rname}");
        }
        match flatview_root(m, root).and_then(|r| m.region(r)) {
            Some(r) => {
                let _ = writeln!(out, " Root memory region: {}", r.name);
            }
            None => out.push_str(" No rendered FlatView\n"),
        }
        let view = m.view(root);
        for f in view.iter() {
            let Some(r) = m.region(f.region) else {
                continue;
            };
            let prio = r.placement.map_or(0, |p| p.priority);
            let _ = write!(
                out,
                "  {:016x}-{:016x} (prio {prio}, {}): {}",
                f.start as u64,
                (f.end - 1) as u64,
                type_name(m, f.region, 0),
                r.name
            );
            if f.offset_in_region != 0 {
                let _ = write!(out, " @{:016x}", f.offset_in_region);
            }
            out.push('\n');
        }
        out.push('\n');
    }
    out
}
