//! The rules engine: consistency rules over a set of configs.
//!
//! Ownership semantics follow the hypervisor: the root cell initially owns
//! every resource it lists; creating a non-root cell moves that cell's
//! resources (memory, CPUs, PCI devices, interrupt pins, stream ids) from the
//! root cell to it. So a non-root cell reusing root-cell resources is normal,
//! while two non-root cells claiming the same resource is a conflict unless
//! the resource is declared shared.

mod intervals;
mod memory;
mod pci;
mod resources;

use crate::finding::{Finding, Severity};
use crate::model::*;

/// A system config plus the non-root cells that will be active together.
#[derive(Debug, Clone)]
pub struct ConfigSet {
    /// The system config with its root cell.
    pub system: SystemConfig,
    /// File name of the system config (for reports).
    pub system_file: String,
    /// Non-root cells.
    pub cells: Vec<Cell>,
    /// File names of the non-root cells, parallel to `cells` (may be shorter).
    pub cell_files: Vec<String>,
}

impl ConfigSet {
    /// A set without file names.
    pub fn new(system: SystemConfig, cells: Vec<Cell>) -> ConfigSet {
        ConfigSet {
            system,
            system_file: String::new(),
            cells,
            cell_files: Vec::new(),
        }
    }

    /// Checks that every non-root cell is built for the system's
    /// architecture. Jailhouse's driver refuses any other cell, and checking
    /// it anyway would read one architecture's structures as another's (a
    /// GIC distributor as an IOAPIC), so a mismatch is an input error.
    pub fn verify_arch(&self) -> Result<(), ArchMismatch> {
        let arch = self.system.arch();
        for (i, c) in self.cells.iter().enumerate() {
            if c.arch != arch {
                return Err(ArchMismatch {
                    file: self.cell_files.get(i).cloned().unwrap_or_default(),
                    cell: c.name(),
                    cell_arch: c.arch,
                    system_file: self.system_file.clone(),
                    system_arch: arch,
                });
            }
        }
        Ok(())
    }

    /// Root cell first, then the non-root cells in order.
    pub(crate) fn views(&self) -> Vec<CellView<'_>> {
        let mut v = vec![CellView {
            cell: &self.system.root_cell,
            file: &self.system_file,
            root: true,
        }];
        for (i, c) in self.cells.iter().enumerate() {
            let file = self.cell_files.get(i).map(String::as_str).unwrap_or("");
            v.push(CellView {
                cell: c,
                file,
                root: false,
            });
        }
        v
    }
}

/// A non-root cell built for another architecture than the system config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}cell {cell} is built for {} (architecture byte at offset 5), but the system config{} is for {}; Jailhouse refuses to create such a cell", file_prefix(.file), .cell_arch.name(), file_suffix(.system_file), .system_arch.name())]
pub struct ArchMismatch {
    /// File of the cell (empty when checked in memory).
    pub file: String,
    /// Name of the cell.
    pub cell: String,
    /// The cell's architecture.
    pub cell_arch: Arch,
    /// File of the system config (empty when checked in memory).
    pub system_file: String,
    /// The system's architecture.
    pub system_arch: Arch,
}

fn file_prefix(f: &str) -> String {
    if f.is_empty() {
        String::new()
    } else {
        format!("{f}: ")
    }
}

fn file_suffix(f: &str) -> String {
    if f.is_empty() {
        String::new()
    } else {
        format!(" {f}")
    }
}

/// A cell with where it came from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CellView<'a> {
    pub cell: &'a Cell,
    pub file: &'a str,
    pub root: bool,
}

/// Description of one rule.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct RuleInfo {
    /// Stable identifier.
    pub id: &'static str,
    /// Severity of its findings.
    pub severity: Severity,
    /// What it checks.
    pub summary: &'static str,
    /// Whether Jailhouse's own `jailhouse config check` checks this too.
    pub in_jailhouse: bool,
}

const fn rule(
    id: &'static str,
    severity: Severity,
    summary: &'static str,
    in_jailhouse: bool,
) -> RuleInfo {
    RuleInfo {
        id,
        severity,
        summary,
        in_jailhouse,
    }
}

use Severity::{Error as E, Warning as W};

/// Every rule the checker runs.
pub const RULES: &[RuleInfo] = &[
    rule("arch-mismatch", E, "a cell config's architecture differs from the system config's", true),
    rule("cell-name-duplicate", E, "two cells of the set have the same name (the driver refuses the second)", false),
    rule("mem-phys-overlap-in-cell", E, "two memory regions of one cell overlap physically", true),
    rule("mem-virt-overlap-in-cell", E, "two memory regions of one cell overlap in the cell's address space", true),
    rule("mem-overlap-hypervisor", E, "a memory region overlaps the hypervisor's memory", true),
    rule("mem-overlap-mmconfig", E, "a memory region maps the PCI MMCONFIG window, which the hypervisor must intercept", true),
    rule("mem-overlap-iommu", E, "a memory region maps the MMIO of an IOMMU unit", true),
    rule("mem-overlap-gic", E, "a memory region maps the GIC distributor, CPU/hyp/virtual interface or any redistributor frame", true),
    rule("mem-overlap-xapic", E, "a memory region maps the xAPIC page", true),
    rule("mem-overlap-ioapic", E, "a memory region maps an IOAPIC", true),
    rule("gic-version-invalid", E, "the system config names a GIC version other than 2 or 3", true),
    rule("root-cpu-starvation", E, "the non-root cells take every CPU of the root cell", false),
    rule("cpu-overlap-between-cells", E, "two non-root cells claim the same CPU", false),
    rule("cpu-not-in-root", E, "a non-root cell claims a CPU the system (root cell) does not have", false),
    rule("mem-overlap-between-cells", E, "memory of two non-root cells overlaps without being declared shared", false),
    rule("msix-mapped", E, "the MSI-X table page of a passed-through PCI device is mapped directly into a cell", false),
    rule("pio-pci-config", E, "a cell gets direct access to the PCI config ports 0xcf8-0xcff", false),
    rule("pio-critical-port", E, "a non-root cell gets direct access to PIC, PIT, port B, RTC, ELCR or i8042 ports", false),
    rule("irqchip-pin-overlap-between-cells", E, "two non-root cells claim the same interrupt pin", false),
    rule("pci-device-in-two-cells", E, "one physical PCI device (domain:bdf) is assigned to two non-root cells", false),
    rule("cache-overlap-between-cells", E, "cache partitions of two non-root cells overlap", false),
    rule("stream-id-conflict", E, "two non-root cells claim the same IOMMU stream id", false),
    rule("zero-entry", W, "an array entry is all zero (a missing element), outside ivshmem region sets", false),
    rule("pci-caps-out-of-range", E, "caps_start/num_caps of a PCI device point outside the capability array", false),
    rule("shmem-regions-out-of-range", E, "shmem_regions_start/shmem_peers of an ivshmem device point outside the memory regions", false),
    rule("iommu-index-out-of-range", E, "a PCI device names an IOMMU unit that is not configured", false),
    rule("loadable-unreachable", E, "a LOADABLE region of a non-root cell is not fully covered by root-cell memory", false),
    rule("ivshmem-peer-mismatch", E, "ivshmem peers disagree on peer count or protocol, reuse a peer id, or the id exceeds the peer count", false),
    rule("ivshmem-region-mismatch", E, "ivshmem peers map different shared-memory regions for the same device", false),
    rule("ivshmem-write-access", E, "an ivshmem peer can write the state table or another peer's output section", false),
    rule("trailing-data", W, "the file is longer than its header counts say (only reported with --lenient)", false),
];

/// Severity of a rule id; `Error` for unknown ids.
pub fn severity_of(id: &str) -> Severity {
    RULES
        .iter()
        .find(|r| r.id == id)
        .map_or(Severity::Error, |r| r.severity)
}

/// Builds a finding at a cell.
pub(crate) struct At<'a> {
    pub view: CellView<'a>,
    pub array: Option<&'static str>,
    pub index: Option<u64>,
    pub address: Option<u64>,
}

pub(crate) fn finding(
    rule: &'static str,
    at: At,
    message: String,
    details: Vec<String>,
) -> Finding {
    Finding {
        rule,
        severity: severity_of(rule),
        cell: at.view.cell.name(),
        file: at.view.file.to_string(),
        array: at.array,
        index: at.index,
        address: at.address,
        other_cell: None,
        other_array: None,
        other_index: None,
        message,
        details,
    }
}

/// Runs every rule over the set.
///
/// Guarantees: deterministic order (rule groups in a fixed order, cells in
/// set order, entries in array order) and no panics on any parsed input.
///
/// A set that fails [`ConfigSet::verify_arch`] gets only its
/// `arch-mismatch` findings: the other rules would misread the cells.
/// (The command line refuses such a set as bad input before checking.)
pub fn check(set: &ConfigSet) -> Vec<Finding> {
    let mut out = Vec::new();
    if set.verify_arch().is_err() {
        resources::arch_mismatches(set, &mut out);
        return out;
    }
    resources::check_arch(set, &mut out);
    memory::check(set, &mut out);
    resources::check(set, &mut out);
    pci::check(set, &mut out);
    out
}

/// Names of the set flags of a memory region, e.g. `READ | WRITE`.
pub fn mem_flags(flags: u64) -> String {
    const NAMES: [(u64, &str); 10] = [
        (mem::READ, "READ"),
        (mem::WRITE, "WRITE"),
        (mem::EXECUTE, "EXECUTE"),
        (mem::DMA, "DMA"),
        (mem::IO, "IO"),
        (mem::COMM_REGION, "COMM_REGION"),
        (mem::LOADABLE, "LOADABLE"),
        (mem::ROOTSHARED, "ROOTSHARED"),
        (mem::NO_HUGEPAGES, "NO_HUGEPAGES"),
        (mem::IO_UNALIGNED, "IO_UNALIGNED"),
    ];
    let mut parts: Vec<String> = NAMES
        .iter()
        .filter(|(f, _)| flags & f != 0)
        .map(|(_, n)| n.to_string())
        .collect();
    let rest = flags & !NAMES.iter().fold(0, |a, (f, _)| a | f);
    if rest != 0 {
        parts.push(format!("{rest:#x}"));
    }
    if parts.is_empty() {
        "0".into()
    } else {
        parts.join(" | ")
    }
}

/// One-line description of a memory region.
pub(crate) fn region_line(index: usize, m: &MemRegion) -> String {
    format!(
        "memory_regions[{index}]: phys {:#x}-{:#x}, virt {:#x}, size {:#x}, flags {}",
        m.phys_start,
        (m.phys_start as u128 + m.size as u128).saturating_sub(1),
        m.virt_start,
        m.size,
        mem_flags(m.flags)
    )
}

/// Memory regions that take part in physical-address checks: the comm
/// region is virtual only (its phys_start is meaningless) and empty regions
/// map nothing.
pub(crate) fn physical_regions(cell: &Cell) -> impl Iterator<Item = (usize, &MemRegion)> {
    cell.memory_regions
        .iter()
        .enumerate()
        .filter(|(_, m)| m.size != 0 && !m.has(mem::COMM_REGION))
}

/// For every memory region of `cell`, the ivshmem device (its bdf) whose
/// shared-memory region set contains it, if any. Linear in the array sizes
/// (each device covers at most 2 + 255 regions).
///
/// Devices are keyed by bdf alone: the hypervisor's `ivshmem_init` links the
/// endpoints of different cells by comparing only the bdf, whatever their
/// `domain` says.
pub(crate) fn shmem_members(cell: &Cell) -> Vec<Option<u16>> {
    let mut out = vec![None; cell.memory_regions.len()];
    for d in cell.pci_devices.iter().filter(|d| d.is_ivshmem()) {
        let start = d.shmem_regions_start as u64;
        for i in start..(start + d.shmem_region_count()).min(out.len() as u64) {
            out[i as usize].get_or_insert(d.bdf);
        }
    }
    out
}
