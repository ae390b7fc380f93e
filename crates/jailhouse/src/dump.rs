//! Readable text form of configs (`oxemu-jailhouse config dump`).

use crate::model::*;
use crate::rules::mem_flags;
use std::fmt::Write;

fn console(out: &mut String, label: &str, c: &Console) {
    let _ = writeln!(
        out,
        "{label}: type {:#x}, flags {:#x}, address {:#x}, size {:#x}, divider {:#x}, gate {}, clock_reg {:#x}",
        c.kind, c.flags, c.address, c.size, c.divider, c.gate_nr, c.clock_reg
    );
}

/// Formats a system config and its root cell.
pub fn dump_system(sys: &SystemConfig) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "System config (revision {CONFIG_REVISION}, {})",
        sys.arch().name()
    );
    let _ = writeln!(o, "flags: {:#x}", sys.flags);
    let h = &sys.hypervisor_memory;
    let _ = writeln!(
        o,
        "hypervisor memory: phys {:#x}, size {:#x}",
        h.phys_start, h.size
    );
    console(&mut o, "debug console", &sys.debug_console);
    let p = &sys.platform;
    let _ = writeln!(
        o,
        "PCI: mmconfig {:#x} (end bus {:#x}), virtual {}, domain {:#x}",
        p.pci_mmconfig_base, p.pci_mmconfig_end_bus, p.pci_is_virtual, p.pci_domain
    );
    for (i, u) in sys.used_iommus() {
        let _ = write!(
            o,
            "iommu[{i}]: {} base {:#x} size {:#x}",
            u.kind_name(),
            u.base,
            u.size
        );
        match u.kind {
            iommu_type::AMD => {
                let (bdf, base_cap, msi_cap, features) = u.amd();
                let _ = write!(o, ", bdf {}, base_cap {base_cap:#x}, msi_cap {msi_cap:#x}, features {features:#x}", bdf_name(0, bdf));
            }
            iommu_type::PVU => {
                let (tb, ts) = u.pvu_tlb();
                let _ = write!(o, ", tlb {tb:#x} size {ts:#x}");
            }
            _ => {}
        }
        o.push('\n');
    }
    match &p.arch {
        ArchPlatform::X86(x) => {
            let _ = writeln!(
                o,
                "x86: pm_timer {:#x}, apic_mode {}, vtd_interrupt_limit {}, tsc_khz {}, apic_khz {}",
                x.pm_timer_address, x.apic_mode, x.vtd_interrupt_limit, x.tsc_khz, x.apic_khz
            );
        }
        ArchPlatform::Arm(a) => {
            let _ = writeln!(
                o,
                "arm: GICv{}, maintenance irq {}, gicd {:#x}, gicc {:#x}, gich {:#x}, gicv {:#x}, gicr {:#x}",
                a.gic_version, a.maintenance_irq, a.gicd_base, a.gicc_base, a.gich_base, a.gicv_base, a.gicr_base
            );
        }
    }
    o.push_str("root cell:\n");
    o += &dump_cell_body(&sys.root_cell);
    o
}

/// Formats a non-root cell config.
pub fn dump_cell(cell: &Cell) -> String {
    format!(
        "Cell config (revision {CONFIG_REVISION}, {})\n{}",
        cell.arch.name(),
        dump_cell_body(cell)
    )
}

fn dump_cell_body(c: &Cell) -> String {
    let mut o = String::new();
    let cpus: Vec<String> = c.cpus().iter().map(u32::to_string).collect();
    let _ = writeln!(o, "name: {}", c.name());
    let _ = writeln!(o, "flags: {:#x}", c.flags);
    let _ = writeln!(
        o,
        "cpus: {} ({} byte set)",
        cpus.join(", "),
        c.cpu_set.len()
    );
    let _ = writeln!(
        o,
        "vpci_irq_base: {}, cpu_reset_address: {:#x}, msg_reply_timeout: {}",
        c.vpci_irq_base, c.cpu_reset_address, c.msg_reply_timeout
    );
    console(&mut o, "console", &c.console);
    let _ = writeln!(o, "memory regions ({}):", c.memory_regions.len());
    for (i, m) in c.memory_regions.iter().enumerate() {
        let _ = writeln!(
            o,
            "  [{i}] phys {:#x} virt {:#x} size {:#x} flags {}",
            m.phys_start,
            m.virt_start,
            m.size,
            mem_flags(m.flags)
        );
    }
    let _ = writeln!(o, "cache regions ({}):", c.cache_regions.len());
    for (i, r) in c.cache_regions.iter().enumerate() {
        let _ = writeln!(
            o,
            "  [{i}] start {} size {} type {:#x} flags {:#x}",
            r.start, r.size, r.kind, r.flags
        );
    }
    let _ = writeln!(o, "irqchips ({}):", c.irqchips.len());
    for (i, q) in c.irqchips.iter().enumerate() {
        let b = q.pin_bitmap;
        let _ = writeln!(
            o,
            "  [{i}] address {:#x} id {:#x} pin_base {} bitmap {:#010x} {:#010x} {:#010x} {:#010x}",
            q.address, q.id, q.pin_base, b[0], b[1], b[2], b[3]
        );
    }
    let _ = writeln!(o, "pio regions ({}):", c.pio_regions.len());
    for (i, p) in c.pio_regions.iter().enumerate() {
        let _ = writeln!(o, "  [{i}] base {:#x} length {:#x}", p.base, p.length);
    }
    let _ = writeln!(o, "pci devices ({}):", c.pci_devices.len());
    for (i, d) in c.pci_devices.iter().enumerate() {
        let kind = match d.kind {
            pci_type::DEVICE => "device",
            pci_type::BRIDGE => "bridge",
            pci_type::IVSHMEM => "ivshmem",
            _ => "unknown",
        };
        let _ = write!(
            o,
            "  [{i}] {} {kind} iommu {} caps {}+{} msi {}{}{} msix {} at {:#x} size {:#x}",
            d.bdf_name(),
            d.iommu,
            d.caps_start,
            d.num_caps,
            d.num_msi_vectors,
            if d.msi_64bits() { " 64bit" } else { "" },
            if d.msi_maskable() { " maskable" } else { "" },
            d.num_msix_vectors,
            d.msix_address,
            d.msix_region_size
        );
        if d.is_ivshmem() {
            let _ = write!(
                o,
                " shmem regions {}+{} id {}/{} protocol {:#x}",
                d.shmem_regions_start,
                d.shmem_region_count(),
                d.shmem_dev_id,
                d.shmem_peers,
                d.shmem_protocol
            );
        }
        o.push('\n');
    }
    let _ = writeln!(o, "pci caps ({}):", c.pci_caps.len());
    for (i, p) in c.pci_caps.iter().enumerate() {
        let _ = writeln!(
            o,
            "  [{i}] id {:#x} start {:#x} len {} flags {:#x}",
            p.id, p.start, p.len, p.flags
        );
    }
    let _ = writeln!(o, "stream ids ({}):", c.stream_ids.len());
    for (i, s) in c.stream_ids.iter().enumerate() {
        let _ = writeln!(o, "  [{i}] {s:#x}");
    }
    o
}
