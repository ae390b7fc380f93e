//! Writer for revision-14 binary configs, the exact inverse of [`crate::parse`].

use crate::model::*;

struct Writer(Vec<u8>);

impl Writer {
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn mem(&mut self, m: &MemRegion) {
        self.u64(m.phys_start);
        self.u64(m.virt_start);
        self.u64(m.size);
        self.u64(m.flags);
    }
    fn console(&mut self, c: &Console) {
        self.u64(c.address);
        self.u32(c.size);
        self.u16(c.kind);
        self.u16(c.flags);
        self.u32(c.divider);
        self.u32(c.gate_nr);
        self.u64(c.clock_reg);
    }
}

/// Encodes a system config with its root cell.
///
/// Guarantees: the output has the revision-14 layout with `JHSYS`, the root
/// cell's architecture byte and revision 14, and the header counts equal the
/// array lengths; `parse_system(write_system(c))` yields `c`.
pub fn write_system(sys: &SystemConfig) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(
        SYSTEM_SIZE - CELL_DESC_SIZE + sys.root_cell.encoded_size(),
    ));
    w.bytes(SYSTEM_SIGNATURE);
    w.u8(sys.arch().to_byte());
    w.u16(CONFIG_REVISION);
    w.u32(sys.flags);
    w.mem(&sys.hypervisor_memory);
    w.console(&sys.debug_console);
    let p = &sys.platform;
    w.u64(p.pci_mmconfig_base);
    w.u8(p.pci_mmconfig_end_bus);
    w.u8(p.pci_is_virtual);
    w.u16(p.pci_domain);
    for u in &p.iommu_units {
        w.u32(u.kind);
        w.u64(u.base);
        w.u32(u.size);
        w.bytes(&u.extra);
    }
    match &p.arch {
        ArchPlatform::X86(x) => {
            w.u16(x.pm_timer_address);
            w.u8(x.apic_mode);
            w.u8(x.padding);
            w.u32(x.vtd_interrupt_limit);
            w.u32(x.tsc_khz);
            w.u32(x.apic_khz);
            w.bytes(&x.tail);
        }
        ArchPlatform::Arm(a) => {
            w.u8(a.maintenance_irq);
            w.u8(a.gic_version);
            w.bytes(&a.padding);
            for v in [
                a.gicd_base,
                a.gicc_base,
                a.gich_base,
                a.gicv_base,
                a.gicr_base,
            ] {
                w.u64(v);
            }
        }
    }
    w.bytes(&sys.root_cell.root_desc_header);
    write_cell_body(&mut w, &sys.root_cell);
    w.0
}

/// Encodes a non-root cell config (`JHCLL`, the cell's architecture, revision 14).
///
/// Guarantees: header counts equal the array lengths and
/// `parse_cell(write_cell(c))` yields `c` (except `root_desc_header`, which
/// non-root cells do not carry).
pub fn write_cell(cell: &Cell) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(cell.encoded_size()));
    w.bytes(CELL_SIGNATURE);
    w.u8(cell.arch.to_byte());
    w.u16(CONFIG_REVISION);
    write_cell_body(&mut w, cell);
    w.0
}

/// Writes everything of a descriptor after signature/architecture/revision.
fn write_cell_body(w: &mut Writer, c: &Cell) {
    w.bytes(&c.name_raw);
    w.u32(c.id);
    w.u32(c.flags);
    for n in [
        c.cpu_set.len(),
        c.memory_regions.len(),
        c.cache_regions.len(),
        c.irqchips.len(),
        c.pio_regions.len(),
        c.pci_devices.len(),
        c.pci_caps.len(),
        c.stream_ids.len(),
    ] {
        w.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
    w.u32(c.vpci_irq_base);
    w.u64(c.cpu_reset_address);
    w.u64(c.msg_reply_timeout);
    w.console(&c.console);
    w.bytes(&c.cpu_set);
    for m in &c.memory_regions {
        w.mem(m);
    }
    for cr in &c.cache_regions {
        w.u32(cr.start);
        w.u32(cr.size);
        w.u8(cr.kind);
        w.u8(cr.padding);
        w.u16(cr.flags);
    }
    for i in &c.irqchips {
        w.u64(i.address);
        w.u32(i.id);
        w.u32(i.pin_base);
        for b in i.pin_bitmap {
            w.u32(b);
        }
    }
    for p in &c.pio_regions {
        w.u16(p.base);
        w.u16(p.length);
    }
    for d in &c.pci_devices {
        w.u8(d.kind);
        w.u8(d.iommu);
        w.u16(d.domain);
        w.u16(d.bdf);
        for b in d.bar_mask {
            w.u32(b);
        }
        w.u16(d.caps_start);
        w.u16(d.num_caps);
        w.u8(d.num_msi_vectors);
        w.u8(d.msi_flags);
        w.u16(d.num_msix_vectors);
        w.u16(d.msix_region_size);
        w.u64(d.msix_address);
        w.u32(d.shmem_regions_start);
        w.u8(d.shmem_dev_id);
        w.u8(d.shmem_peers);
        w.u16(d.shmem_protocol);
    }
    for cap in &c.pci_caps {
        w.u16(cap.id);
        w.u16(cap.start);
        w.u16(cap.len);
        w.u16(cap.flags);
    }
    for s in &c.stream_ids {
        w.u32(*s);
    }
}
