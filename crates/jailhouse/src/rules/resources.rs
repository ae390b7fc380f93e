//! CPU, port, interrupt, cache and stream-id rules.

use super::{finding, At, CellView, ConfigSet};
use crate::finding::Finding;
use crate::model::*;

pub(super) fn check_arch(set: &ConfigSet, out: &mut Vec<Finding>) {
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
            out.push(finding(
                "arch-mismatch",
                at,
                msg,
                vec!["architecture byte at offset 5 of the cell config".into()],
            ));
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

fn cpu_list(cpus: &[u32]) -> String {
    cpus.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn cpus(views: &[CellView], out: &mut Vec<Finding>) {
    let root = views[0];
    let root_cpus = root.cell.cpus();
    let mut taken: Vec<u32> = Vec::new();
    for (ai, a) in views.iter().enumerate().skip(1) {
        let a_cpus = a.cell.cpus();
        let foreign: Vec<u32> = a_cpus
            .iter()
            .copied()
            .filter(|c| !root_cpus.contains(c))
            .collect();
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
            out.push(finding("cpu-not-in-root", at, msg, d));
        }
        for b in views.iter().skip(ai + 1) {
            let common: Vec<u32> = b
                .cell
                .cpus()
                .into_iter()
                .filter(|c| a_cpus.contains(c))
                .collect();
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
                out.push(finding("cpu-overlap-between-cells", at, msg, vec![]));
            }
        }
        taken.extend(a_cpus);
    }
    if views.len() > 1 && root_cpus.iter().all(|c| taken.contains(c)) {
        let at = At {
            view: root,
            array: Some("cpu_set"),
            index: None,
            address: None,
        };
        let msg = format!("root cell {} is left without a CPU", root.cell.name());
        let d = vec![format!(
            "root cell CPUs: {}, all taken by non-root cells",
            cpu_list(&root_cpus)
        )];
        out.push(finding("root-cpu-starvation", at, msg, d));
    }
}

/// Ports the PCI config mechanism #1 uses; the hypervisor must intercept them.
const PCI_CONFIG_PORTS: (u32, u32, &str) = (0xcf8, 0xd00, "PCI config ports 0xcf8-0xcff");

/// Platform ports shared by the whole machine; only the root cell may own them.
const CRITICAL_PORTS: [(u32, u32, &str); 7] = [
    (0x20, 0x22, "master PIC (0x20-0x21)"),
    (0xa0, 0xa2, "slave PIC (0xa0-0xa1)"),
    (0x40, 0x44, "PIT (0x40-0x43)"),
    (0x61, 0x62, "port B / NMI status (0x61)"),
    (0x70, 0x72, "RTC/CMOS and NMI mask (0x70-0x71)"),
    (0x4d0, 0x4d2, "ELCR (0x4d0-0x4d1)"),
    (0x64, 0x65, "i8042 command/reset port (0x64)"),
];

fn pio(views: &[CellView], out: &mut Vec<Finding>) {
    for v in views {
        for (i, p) in v.cell.pio_regions.iter().enumerate() {
            let (s, e) = p.range();
            let mut hit = |rule, (cs, ce, name): (u32, u32, &str)| {
                if s < ce && cs < e {
                    let at = At {
                        view: *v,
                        array: Some("pio_regions"),
                        index: Some(i as u64),
                        address: Some(p.base as u64),
                    };
                    let msg = format!("{name} passed through to {}", v.cell.name());
                    let d = vec![format!("pio_regions[{i}]: ports {:#x}-{:#x}", s, e - 1)];
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

/// Absolute pins of every irqchip entry, keyed by chip address.
fn pins(cell: &Cell) -> Vec<(usize, u64, u64)> {
    cell.irqchips
        .iter()
        .enumerate()
        .flat_map(|(i, c)| c.pins().map(move |p| (i, c.address, p)))
        .collect()
}

fn irq_pins(views: &[CellView], out: &mut Vec<Finding>) {
    for (ai, a) in views.iter().enumerate().skip(1) {
        let a_pins = pins(a.cell);
        for b in views.iter().skip(ai + 1) {
            let mut reported = Vec::new();
            for (ib, addr, pin) in pins(b.cell) {
                if a_pins.iter().any(|&(_, aa, ap)| aa == addr && ap == pin)
                    && !reported.contains(&ib)
                {
                    reported.push(ib);
                    let all: Vec<String> = pins(b.cell)
                        .into_iter()
                        .filter(|&(i, ad, p)| {
                            i == ib && a_pins.iter().any(|&(_, aa, ap)| aa == ad && ap == p)
                        })
                        .map(|(_, _, p)| p.to_string())
                        .collect();
                    let at = At {
                        view: *b,
                        array: Some("irqchips"),
                        index: Some(ib as u64),
                        address: Some(addr),
                    };
                    let msg = format!(
                        "interrupt pin {pin} of irqchip {addr:#x} claimed by {} and {}",
                        a.cell.name(),
                        b.cell.name()
                    );
                    out.push(finding(
                        "irqchip-pin-overlap-between-cells",
                        at,
                        msg,
                        vec![format!("shared pins: {}", all.join(", "))],
                    ));
                }
            }
        }
    }
}

fn caches(views: &[CellView], out: &mut Vec<Finding>) {
    for (ai, a) in views.iter().enumerate().skip(1) {
        for b in views.iter().skip(ai + 1) {
            for (ib, cb) in b.cell.cache_regions.iter().enumerate() {
                for (ia, ca) in a.cell.cache_regions.iter().enumerate() {
                    let (a0, a1) = (ca.start as u64, ca.start as u64 + ca.size as u64);
                    let (b0, b1) = (cb.start as u64, cb.start as u64 + cb.size as u64);
                    if ca.kind & cb.kind != 0 && a0 < b1 && b0 < a1 {
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
                        out.push(finding("cache-overlap-between-cells", at, msg, d));
                    }
                }
            }
        }
    }
}

/// Whether two stream ids select a common device. MMU-500 entries are
/// `id | mask_out << 16` with 15-bit fields; other IOMMUs compare exactly.
fn sids_collide(a: u32, b: u32, mmu500: bool) -> bool {
    if mmu500 {
        let mask = ((a >> 16) | (b >> 16)) & 0x7fff;
        (a ^ b) & 0x7fff & !mask == 0
    } else {
        a == b
    }
}

fn stream_ids(set: &ConfigSet, views: &[CellView], out: &mut Vec<Finding>) {
    let mmu500 = set
        .system
        .used_iommus()
        .any(|(_, u)| u.kind == iommu_type::ARM_MMU500);
    for (ai, a) in views.iter().enumerate().skip(1) {
        for b in views.iter().skip(ai + 1) {
            for (ib, &sb) in b.cell.stream_ids.iter().enumerate() {
                if let Some((ia, &sa)) = a
                    .cell
                    .stream_ids
                    .iter()
                    .enumerate()
                    .find(|(_, &sa)| sids_collide(sa, sb, mmu500))
                {
                    let at = At {
                        view: *b,
                        array: Some("stream_ids"),
                        index: Some(ib as u64),
                        address: Some(sb as u64),
                    };
                    let msg = format!(
                        "stream id {sb:#x} of {} is also claimed by {}",
                        b.cell.name(),
                        a.cell.name()
                    );
                    let d = vec![format!(
                        "{}: stream_ids[{ia}] = {sa:#x}{}",
                        a.cell.name(),
                        if mmu500 { " (MMU-500 id/mask)" } else { "" }
                    )];
                    out.push(finding("stream-id-conflict", at, msg, d));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sids_collide;

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
