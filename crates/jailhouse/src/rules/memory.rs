//! Memory-region rules.

use super::intervals::{first_gap, merge, overlapping_pairs, Tagged};
use super::{finding, physical_regions, region_line, shmem_members, At, CellView, ConfigSet};
use crate::finding::Finding;
use crate::model::*;
use std::collections::BTreeSet;

/// Physical intervals of the regions that take part in physical checks.
fn phys_intervals(cell: &Cell) -> Vec<Tagged> {
    physical_regions(cell)
        .map(|(i, m)| (m.phys_range().0, m.phys_range().1, i))
        .collect()
}

pub(super) fn check(set: &ConfigSet, out: &mut Vec<Finding>) {
    let views = set.views();
    for v in &views {
        in_cell(*v, out);
    }
    let reserved = reserved_ranges(set);
    let reserved_iv: Vec<Tagged> = reserved
        .iter()
        .enumerate()
        .map(|(k, r)| (r.start as u128, r.start as u128 + r.size as u128, k))
        .collect();
    for v in &views {
        for (i, k) in overlapping_pairs(&phys_intervals(v.cell), Some(&reserved_iv)) {
            let (m, r) = (&v.cell.memory_regions[i], &reserved[k]);
            let at = At {
                view: *v,
                array: Some("memory_regions"),
                index: Some(i as u64),
                address: Some(m.phys_start),
            };
            let msg = format!("memory region {i} of {} overlaps {}", v.cell.name(), r.name);
            let end = (r.start as u128 + r.size as u128).saturating_sub(1);
            let d = vec![
                region_line(i, m),
                format!("{}: {:#x}-{:#x}", r.name, r.start, end),
            ];
            out.push(finding(r.rule, at, msg, d));
        }
    }
    between_cells(&views, out);
    loadable(&views, out);
    msix(&views, out);
}

/// Overlaps inside one cell, physical and virtual.
fn in_cell(v: CellView, out: &mut Vec<Finding>) {
    let regions = &v.cell.memory_regions;
    for (i, j) in overlapping_pairs(&phys_intervals(v.cell), None) {
        let (a, b) = (&regions[i], &regions[j]);
        let at = At {
            view: v,
            array: Some("memory_regions"),
            index: Some(j as u64),
            address: Some(b.phys_start),
        };
        let msg = format!(
            "memory regions {i} and {j} of {} overlap physically",
            v.cell.name()
        );
        out.push(
            finding(
                "mem-phys-overlap-in-cell",
                at,
                msg,
                vec![region_line(i, a), region_line(j, b)],
            )
            .with_other(v.cell.name(), Some("memory_regions"), Some(i as u64)),
        );
    }
    let virt: Vec<Tagged> = regions
        .iter()
        .enumerate()
        .map(|(i, m)| (m.virt_range().0, m.virt_range().1, i))
        .collect();
    for (i, j) in overlapping_pairs(&virt, None) {
        let (a, b) = (&regions[i], &regions[j]);
        let at = At {
            view: v,
            array: Some("memory_regions"),
            index: Some(j as u64),
            address: Some(b.virt_start),
        };
        let msg = format!(
            "memory regions {i} and {j} of {} overlap in the cell's address space",
            v.cell.name()
        );
        out.push(
            finding(
                "mem-virt-overlap-in-cell",
                at,
                msg,
                vec![region_line(i, a), region_line(j, b)],
            )
            .with_other(v.cell.name(), Some("memory_regions"), Some(i as u64)),
        );
    }
}

struct Reserved {
    rule: &'static str,
    name: String,
    start: u64,
    size: u64,
}

/// Physical ranges that no cell may map: hypervisor memory, MMCONFIG,
/// IOMMU units, and the interrupt controllers the hypervisor emulates.
fn reserved_ranges(set: &ConfigSet) -> Vec<Reserved> {
    let sys = &set.system;
    let mut v = Vec::new();
    let mut push = |rule, name: String, start, size| {
        if size > 0 {
            v.push(Reserved {
                rule,
                name,
                start,
                size,
            });
        }
    };
    let hv = &sys.hypervisor_memory;
    push(
        "mem-overlap-hypervisor",
        "hypervisor memory".into(),
        hv.phys_start,
        hv.size,
    );
    let p = &sys.platform;
    if p.pci_mmconfig_base != 0 {
        push(
            "mem-overlap-mmconfig",
            "PCI MMCONFIG window".into(),
            p.pci_mmconfig_base,
            p.mmconfig_size(),
        );
    }
    for (i, u) in sys.used_iommus() {
        push(
            "mem-overlap-iommu",
            format!("IOMMU unit {i} ({})", u.kind_name()),
            u.base,
            u.size as u64,
        );
    }
    match &p.arch {
        ArchPlatform::Arm(a) if a.gic_version == 2 => {
            // A base of 0 means "not configured" (no GIC lives at address 0).
            for (name, base, size) in [
                ("GICD", a.gicd_base, 0x1000),
                ("GICC", a.gicc_base, 0x2000),
                ("GICH", a.gich_base, 0x2000),
                ("GICV", a.gicv_base, 0x2000),
            ] {
                if base != 0 {
                    push("mem-overlap-gic", name.into(), base, size);
                }
            }
        }
        ArchPlatform::Arm(a) if a.gic_version == 3 => {
            push("mem-overlap-gic", "GICD".into(), a.gicd_base, 0x10000);
            // One 128 KiB redistributor frame pair per CPU, contiguous from gicr_base.
            let cpus = sys.root_cell.cpus().last().map_or(1, |&c| c as u64 + 1);
            push(
                "mem-overlap-gic",
                format!("GICR frames of {cpus} CPUs"),
                a.gicr_base,
                cpus * 0x20000,
            );
        }
        ArchPlatform::Arm(_) => {}
        ArchPlatform::X86(_) => {
            push("mem-overlap-xapic", "xAPIC".into(), 0xfee0_0000, 0x1000);
            let mut seen = BTreeSet::new();
            for c in std::iter::once(&sys.root_cell).chain(&set.cells) {
                for chip in &c.irqchips {
                    if chip.address != 0 && seen.insert(chip.address) {
                        push(
                            "mem-overlap-ioapic",
                            format!("IOAPIC {:#x}", chip.id),
                            chip.address,
                            0x1000,
                        );
                    }
                }
            }
        }
    }
    v
}

/// True when region `ia` of `a` and region `ib` of `b` may legally share
/// memory; `sa`/`sb` are the cells' ivshmem memberships ([`shmem_members`]).
fn declared_shared(
    a: &Cell,
    ia: usize,
    sa: &[Option<u16>],
    b: &Cell,
    ib: usize,
    sb: &[Option<u16>],
) -> bool {
    let (ma, mb) = (&a.memory_regions[ia], &b.memory_regions[ib]);
    if ma.has(mem::ROOTSHARED) && mb.has(mem::ROOTSHARED) {
        return true;
    }
    matches!((sa[ia], sb[ib]), (Some(x), Some(y)) if x == y)
}

/// Non-root cells must not share memory unless declared shared. Overlap
/// with root-cell memory is the normal hand-over at cell creation.
fn between_cells(views: &[CellView], out: &mut Vec<Finding>) {
    let members: Vec<Vec<Option<u16>>> = views.iter().map(|v| shmem_members(v.cell)).collect();
    let intervals: Vec<Vec<Tagged>> = views.iter().map(|v| phys_intervals(v.cell)).collect();
    for (ai, a) in views.iter().enumerate().skip(1) {
        for (bi, b) in views.iter().enumerate().skip(ai + 1) {
            let mut pairs: Vec<(usize, usize)> =
                overlapping_pairs(&intervals[bi], Some(&intervals[ai]))
                    .into_iter()
                    .filter(|&(ib, ia)| {
                        !declared_shared(a.cell, ia, &members[ai], b.cell, ib, &members[bi])
                    })
                    .collect();
            pairs.sort_unstable();
            for (ib, ia) in pairs {
                let (ma, mb) = (&a.cell.memory_regions[ia], &b.cell.memory_regions[ib]);
                let at = At {
                    view: *b,
                    array: Some("memory_regions"),
                    index: Some(ib as u64),
                    address: Some(mb.phys_start),
                };
                let msg = format!(
                    "memory region {ib} of {} overlaps memory region {ia} of {} without being shared",
                    b.cell.name(),
                    a.cell.name()
                );
                let d = vec![
                    format!("{}: {}", b.cell.name(), region_line(ib, mb)),
                    format!("{}: {}", a.cell.name(), region_line(ia, ma)),
                    "declare shared memory with ROOTSHARED in both cells or as regions of one ivshmem device".into(),
                ];
                out.push(finding("mem-overlap-between-cells", at, msg, d).with_other(
                    a.cell.name(),
                    Some("memory_regions"),
                    Some(ia as u64),
                ));
            }
        }
    }
}

/// The root cell loads images into LOADABLE regions, so it must map all of them.
fn loadable(views: &[CellView], out: &mut Vec<Finding>) {
    let root = views[0].cell;
    let covered = merge(
        physical_regions(root)
            .map(|(_, m)| m.phys_range())
            .collect(),
    );
    for v in views.iter().skip(1) {
        for (i, m) in physical_regions(v.cell).filter(|(_, m)| m.has(mem::LOADABLE)) {
            if let Some(gap) = first_gap(&covered, m.phys_range()) {
                let at = At {
                    view: *v,
                    array: Some("memory_regions"),
                    index: Some(i as u64),
                    address: Some(m.phys_start),
                };
                let msg = format!(
                    "loadable memory region {i} of {} is not reachable by the root cell",
                    v.cell.name()
                );
                let d = vec![
                    region_line(i, m),
                    format!(
                        "first address not mapped in root cell {}: {gap:#x}",
                        root.name()
                    ),
                ];
                out.push(finding("loadable-unreachable", at, msg, d).with_other(
                    root.name(),
                    None,
                    None,
                ));
            }
        }
    }
}

/// MSI-X tables must stay intercepted: no cell may map their pages.
fn msix(views: &[CellView], out: &mut Vec<Finding>) {
    let mut tables: BTreeSet<(u128, u128, u16, u16)> = BTreeSet::new();
    for v in views {
        for d in v
            .cell
            .pci_devices
            .iter()
            .filter(|d| !d.is_ivshmem() && d.msix_region_size > 0)
        {
            let start = (d.msix_address & !0xfff) as u128;
            let end = (d.msix_address as u128 + d.msix_region_size as u128 + 0xfff) & !0xfff;
            tables.insert((start, end, d.domain, d.bdf));
        }
    }
    let tables: Vec<(u128, u128, u16, u16)> = tables.into_iter().collect();
    let table_iv: Vec<Tagged> = tables
        .iter()
        .enumerate()
        .map(|(k, t)| (t.0, t.1, k))
        .collect();
    for v in views {
        for (i, k) in overlapping_pairs(&phys_intervals(v.cell), Some(&table_iv)) {
            let (m, (start, end, domain, bdf)) = (&v.cell.memory_regions[i], tables[k]);
            let name = bdf_name(domain, bdf);
            let at = At {
                view: *v,
                array: Some("memory_regions"),
                index: Some(i as u64),
                address: Some(start as u64),
            };
            let msg = format!(
                "MSI-X region of PCI device {name} directly mapped into {}",
                v.cell.name()
            );
            let d = vec![
                region_line(i, m),
                format!("MSI-X table pages of {name}: {start:#x}-{:#x}", end - 1),
            ];
            out.push(finding("msix-mapped", at, msg, d));
        }
    }
}
