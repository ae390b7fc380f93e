//! PCI, ivshmem, index-range and zero-entry rules.

use super::{finding, region_line, shmem_members, At, CellView, ConfigSet};
use crate::finding::Finding;
use crate::model::*;
use std::collections::HashMap;

pub(super) fn check(set: &ConfigSet, out: &mut Vec<Finding>) {
    let views = set.views();
    for v in &views {
        indices(set, *v, out);
        zero_entries(*v, out);
    }
    two_cells(&views, out);
    ivshmem(&views, out);
}

fn dev_at<'a>(v: CellView<'a>, i: usize) -> At<'a> {
    At {
        view: v,
        array: Some("pci_devices"),
        index: Some(i as u64),
        address: None,
    }
}

fn indices(set: &ConfigSet, v: CellView, out: &mut Vec<Finding>) {
    let cell = v.cell;
    let configured: Vec<usize> = set.system.used_iommus().map(|(i, _)| i).collect();
    for (i, d) in cell.pci_devices.iter().enumerate() {
        let name = d.bdf_name();
        if d.num_caps > 0 && d.caps_start as usize + d.num_caps as usize > cell.pci_caps.len() {
            let msg = format!(
                "capabilities of PCI device {name} in {} are out of range",
                cell.name()
            );
            let det = vec![format!(
                "caps_start {} + num_caps {} > {} entries in pci_caps",
                d.caps_start,
                d.num_caps,
                cell.pci_caps.len()
            )];
            out.push(finding("pci-caps-out-of-range", dev_at(v, i), msg, det));
        }
        if d.is_ivshmem()
            && d.shmem_regions_start as u64 + d.shmem_region_count()
                > cell.memory_regions.len() as u64
        {
            let msg = format!(
                "shared-memory regions of ivshmem device {name} in {} are out of range",
                cell.name()
            );
            let det = vec![format!(
                "shmem_regions_start {} + 2 + shmem_peers {} > {} memory regions",
                d.shmem_regions_start,
                d.shmem_peers,
                cell.memory_regions.len()
            )];
            out.push(finding(
                "shmem-regions-out-of-range",
                dev_at(v, i),
                msg,
                det,
            ));
        }
        if !d.is_ivshmem() && !configured.is_empty() && !configured.contains(&(d.iommu as usize)) {
            let msg = format!(
                "PCI device {name} in {} names IOMMU unit {} which is not configured",
                cell.name(),
                d.iommu
            );
            let det = vec![format!("configured IOMMU units: {configured:?}")];
            out.push(finding("iommu-index-out-of-range", dev_at(v, i), msg, det));
        }
    }
}

fn zero_entries(v: CellView, out: &mut Vec<Finding>) {
    let c = v.cell;
    let mut report = |array: &'static str, i: usize| {
        let at = At {
            view: v,
            array: Some(array),
            index: Some(i as u64),
            address: None,
        };
        let msg = format!("{array}[{i}] of {} is all zero", c.name());
        out.push(finding(
            "zero-entry",
            at,
            msg,
            vec![
                "an all-zero entry usually means an element is missing or the array is oversized"
                    .into(),
            ],
        ));
    };
    let members = shmem_members(c);
    for (i, m) in c.memory_regions.iter().enumerate() {
        if m.is_zero() && members[i].is_none() {
            report("memory_regions", i);
        }
    }
    for (i, e) in c.cache_regions.iter().enumerate() {
        if *e == CacheRegion::default() {
            report("cache_regions", i);
        }
    }
    for (i, e) in c.irqchips.iter().enumerate() {
        if e.is_zero() {
            report("irqchips", i);
        }
    }
    for (i, e) in c.pio_regions.iter().enumerate() {
        if *e == PioRegion::default() {
            report("pio_regions", i);
        }
    }
    for (i, e) in c.pci_devices.iter().enumerate() {
        if e.is_zero() {
            report("pci_devices", i);
        }
    }
    for (i, e) in c.pci_caps.iter().enumerate() {
        if *e == PciCapability::default() {
            report("pci_caps", i);
        }
    }
}

/// A physical device can be owned by the root cell and handed to one
/// non-root cell, but never by two non-root cells.
fn two_cells(views: &[CellView], out: &mut Vec<Finding>) {
    let physical = |c: &Cell| -> HashMap<(u16, u16), usize> {
        let mut m = HashMap::new();
        for (i, d) in c.pci_devices.iter().enumerate() {
            if !d.is_ivshmem() && !d.is_zero() {
                m.entry((d.domain, d.bdf)).or_insert(i);
            }
        }
        m
    };
    let owned: Vec<HashMap<(u16, u16), usize>> = views.iter().map(|v| physical(v.cell)).collect();
    for (ai, a) in views.iter().enumerate().skip(1) {
        for b in views.iter().skip(ai + 1) {
            for (ib, db) in b
                .cell
                .pci_devices
                .iter()
                .enumerate()
                .filter(|(_, d)| !d.is_ivshmem() && !d.is_zero())
            {
                if let Some(&ia) = owned[ai].get(&(db.domain, db.bdf)) {
                    let msg = format!(
                        "PCI device {} assigned to both {} and {}",
                        db.bdf_name(),
                        a.cell.name(),
                        b.cell.name()
                    );
                    out.push(
                        finding("pci-device-in-two-cells", dev_at(*b, ib), msg, vec![]).with_other(
                            a.cell.name(),
                            Some("pci_devices"),
                            Some(ia as u64),
                        ),
                    );
                }
            }
        }
    }
}

/// Protocol with virtio front/back folded together (peers use the two halves).
fn protocol_class(p: u16) -> u16 {
    if p >= 0x8000 {
        0x8000 | (p & 0x3fff)
    } else {
        p
    }
}

struct Peer<'a> {
    view: CellView<'a>,
    index: usize,
    dev: &'a PciDevice,
}

fn ivshmem(views: &[CellView], out: &mut Vec<Finding>) {
    let mut groups: Vec<Vec<Peer>> = Vec::new();
    for v in views {
        for (i, d) in v
            .cell
            .pci_devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.is_ivshmem())
        {
            let peer = Peer {
                view: *v,
                index: i,
                dev: d,
            };
            // The hypervisor's ivshmem_init links endpoints by bdf alone.
            match groups.iter_mut().find(|g| g[0].dev.bdf == d.bdf) {
                Some(g) => g.push(peer),
                None => groups.push(vec![peer]),
            }
        }
    }
    for g in &groups {
        peers(g, out);
        for p in g {
            write_access(p, out);
        }
    }
}

fn regions_in_range(p: &Peer) -> bool {
    p.dev.shmem_regions_start as u64 + p.dev.shmem_region_count()
        <= p.view.cell.memory_regions.len() as u64
}

fn peers(g: &[Peer], out: &mut Vec<Finding>) {
    let first = &g[0];
    let mut ids: HashMap<u8, usize> = HashMap::new();
    for (n, p) in g.iter().enumerate() {
        let d = p.dev;
        let name = d.bdf_name();
        let cell = p.view.cell.name();
        let mut problems = Vec::new();
        // The peer the problem is relative to (`g` index), for other_* fields.
        let mut other: Option<usize> = None;
        if d.shmem_dev_id >= d.shmem_peers {
            problems.push(format!(
                "shmem_dev_id {} is not below shmem_peers {}",
                d.shmem_dev_id, d.shmem_peers
            ));
        }
        if n > 0 && d.shmem_peers != first.dev.shmem_peers {
            problems.push(format!(
                "shmem_peers {} but {} says {}",
                d.shmem_peers,
                first.view.cell.name(),
                first.dev.shmem_peers
            ));
            other = Some(0);
        }
        if n > 0 && protocol_class(d.shmem_protocol) != protocol_class(first.dev.shmem_protocol) {
            problems.push(format!(
                "shmem_protocol {:#x} but {} uses {:#x}",
                d.shmem_protocol,
                first.view.cell.name(),
                first.dev.shmem_protocol
            ));
            other = Some(0);
        }
        if let Some(&k) = ids.get(&d.shmem_dev_id) {
            problems.push(format!(
                "peer id {} is also used by {}",
                d.shmem_dev_id,
                g[k].view.cell.name()
            ));
            other.get_or_insert(k);
        } else {
            ids.insert(d.shmem_dev_id, n);
        }
        if !problems.is_empty() {
            if n > 0 && d.domain != first.dev.domain {
                problems.push(format!(
                    "linked to {} device {} by bdf alone (the hypervisor ignores the domain)",
                    first.view.cell.name(),
                    first.dev.bdf_name()
                ));
            }
            let msg = format!("ivshmem device {name} in {cell} is inconsistent with its peers");
            let mut f = finding(
                "ivshmem-peer-mismatch",
                dev_at(p.view, p.index),
                msg,
                problems,
            );
            if let Some(k) = other {
                f = f.with_other(
                    g[k].view.cell.name(),
                    Some("pci_devices"),
                    Some(g[k].index as u64),
                );
            }
            out.push(f);
            continue;
        }
        if n > 0 && regions_in_range(p) && regions_in_range(first) {
            region_mismatch(first, p, out);
        }
    }
}

fn region_mismatch(first: &Peer, p: &Peer, out: &mut Vec<Finding>) {
    for k in 0..p.dev.shmem_region_count() as usize {
        let ia = first.dev.shmem_regions_start as usize + k;
        let ib = p.dev.shmem_regions_start as usize + k;
        let (ma, mb) = (
            &first.view.cell.memory_regions[ia],
            &p.view.cell.memory_regions[ib],
        );
        if ma.phys_start != mb.phys_start || ma.size != mb.size {
            let at = At {
                view: p.view,
                array: Some("memory_regions"),
                index: Some(ib as u64),
                address: Some(mb.phys_start),
            };
            let section = match k {
                0 => "state table".to_string(),
                1 => "read/write section".to_string(),
                _ => format!("output section of peer {}", k - 2),
            };
            let msg = format!(
                "ivshmem device {} in {}: {section} differs from {}",
                p.dev.bdf_name(),
                p.view.cell.name(),
                first.view.cell.name()
            );
            let d = vec![
                format!("{}: {}", p.view.cell.name(), region_line(ib, mb)),
                format!("{}: {}", first.view.cell.name(), region_line(ia, ma)),
            ];
            out.push(finding("ivshmem-region-mismatch", at, msg, d).with_other(
                first.view.cell.name(),
                Some("memory_regions"),
                Some(ia as u64),
            ));
        }
    }
}

/// The state table is read-only for everyone, and each output section is
/// writable only by its own peer.
fn write_access(p: &Peer, out: &mut Vec<Finding>) {
    if !regions_in_range(p) || p.dev.shmem_dev_id >= p.dev.shmem_peers {
        return;
    }
    for k in 0..p.dev.shmem_region_count() as usize {
        let i = p.dev.shmem_regions_start as usize + k;
        let m = &p.view.cell.memory_regions[i];
        let foreign_output = k >= 2 && k - 2 != p.dev.shmem_dev_id as usize;
        if m.size != 0 && m.has(mem::WRITE) && (k == 0 || foreign_output) {
            let what = if k == 0 {
                "the state table".to_string()
            } else {
                format!("the output section of peer {}", k - 2)
            };
            let at = At {
                view: p.view,
                array: Some("memory_regions"),
                index: Some(i as u64),
                address: Some(m.phys_start),
            };
            let msg = format!(
                "peer {} of ivshmem device {} in {} can write {what}",
                p.dev.shmem_dev_id,
                p.dev.bdf_name(),
                p.view.cell.name()
            );
            out.push(finding(
                "ivshmem-write-access",
                at,
                msg,
                vec![region_line(i, m)],
            ));
        }
    }
}
