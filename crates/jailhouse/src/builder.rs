//! A small builder API to construct configs in code (used by tests, the fuzz
//! seed corpus and anyone generating configs).
//!
//! The built structs are the plain model types with public fields, so a test
//! can build a clean config and then mutate exactly one field.

use crate::model::*;

/// Builds a [`Cell`] (root or non-root).
#[derive(Debug, Clone)]
pub struct CellBuilder {
    cell: Cell,
}

impl CellBuilder {
    /// Starts a cell named `name` (truncated to 31 bytes) for `arch`.
    pub fn new(name: &str, arch: Arch) -> CellBuilder {
        CellBuilder {
            cell: Cell {
                arch,
                root_desc_header: [0; 8],
                name_raw: name_field(name),
                id: 0,
                flags: 0,
                vpci_irq_base: 0,
                cpu_reset_address: 0,
                msg_reply_timeout: 0,
                console: Console::default(),
                cpu_set: Vec::new(),
                memory_regions: Vec::new(),
                cache_regions: Vec::new(),
                irqchips: Vec::new(),
                pio_regions: Vec::new(),
                pci_devices: Vec::new(),
                pci_caps: Vec::new(),
                stream_ids: Vec::new(),
            },
        }
    }

    /// Sets the CPU set to a 64-bit mask (`__u64 cpus[1]`, as Jailhouse's configs do).
    pub fn cpus(mut self, mask: u64) -> Self {
        self.cell.cpu_set = mask.to_le_bytes().to_vec();
        self
    }

    /// Sets the cell flags (`cell_flags::*`).
    pub fn flags(mut self, flags: u32) -> Self {
        self.cell.flags = flags;
        self
    }

    /// Sets the console.
    pub fn console(mut self, console: Console) -> Self {
        self.cell.console = console;
        self
    }

    /// Sets `vpci_irq_base`.
    pub fn vpci_irq_base(mut self, base: u32) -> Self {
        self.cell.vpci_irq_base = base;
        self
    }

    /// Appends a memory region.
    pub fn mem(mut self, phys_start: u64, virt_start: u64, size: u64, flags: u64) -> Self {
        self.cell.memory_regions.push(MemRegion {
            phys_start,
            virt_start,
            size,
            flags,
        });
        self
    }

    /// Appends an identity-mapped memory region.
    pub fn mem_1to1(self, phys_start: u64, size: u64, flags: u64) -> Self {
        self.mem(phys_start, phys_start, size, flags)
    }

    /// Appends an all-zero memory region (`{ 0 }`), as used for unused ivshmem sections.
    pub fn mem_zero(mut self) -> Self {
        self.cell.memory_regions.push(MemRegion::default());
        self
    }

    /// Appends the cell's communication region at guest address `virt`.
    pub fn comm_region(self, virt: u64) -> Self {
        self.mem(0, virt, 0x1000, mem::READ | mem::WRITE | mem::COMM_REGION)
    }

    /// Appends the four regions of `JAILHOUSE_SHMEM_NET_REGIONS(start, dev_id)`.
    pub fn shmem_net_regions(self, start: u64, dev_id: u8) -> Self {
        let rs = mem::READ | mem::ROOTSHARED;
        let w = |id| if dev_id == id { mem::WRITE } else { 0 };
        self.mem_1to1(start, 0x1000, rs)
            .mem_zero()
            .mem_1to1(start + 0x1000, 0x7f000, rs | w(0))
            .mem_1to1(start + 0x80000, 0x7f000, rs | w(1))
    }

    /// Appends a cache partition.
    pub fn cache(mut self, start: u32, size: u32, kind: u8, flags: u16) -> Self {
        self.cell.cache_regions.push(CacheRegion {
            start,
            size,
            kind,
            padding: 0,
            flags,
        });
        self
    }

    /// Appends an irqchip entry.
    pub fn irqchip(mut self, address: u64, id: u32, pin_base: u32, pin_bitmap: [u32; 4]) -> Self {
        self.cell.irqchips.push(Irqchip {
            address,
            id,
            pin_base,
            pin_bitmap,
        });
        self
    }

    /// Appends a port range (`PIO_RANGE(base, length)`).
    pub fn pio(mut self, base: u16, length: u16) -> Self {
        self.cell.pio_regions.push(PioRegion { base, length });
        self
    }

    /// Appends a PCI device.
    pub fn pci(mut self, dev: PciDevice) -> Self {
        self.cell.pci_devices.push(dev);
        self
    }

    /// Appends a PCI capability.
    pub fn cap(mut self, id: u16, start: u16, len: u16, flags: u16) -> Self {
        self.cell.pci_caps.push(PciCapability {
            id,
            start,
            len,
            flags,
        });
        self
    }

    /// Appends a raw stream id.
    pub fn stream_id(mut self, id: u32) -> Self {
        self.cell.stream_ids.push(id);
        self
    }

    /// Appends an MMU-500 stream id with its mask.
    pub fn stream_id_mmu500(self, id: u16, mask_out: u16) -> Self {
        self.stream_id(id as u32 | (mask_out as u32) << 16)
    }

    /// Finishes the cell.
    pub fn build(self) -> Cell {
        self.cell
    }
}

/// Constructors for PCI device entries.
impl PciDevice {
    /// A physical endpoint at `domain`/`bdf` with no BARs, caps or MSI.
    pub fn physical(domain: u16, bdf: u16) -> PciDevice {
        PciDevice {
            kind: pci_type::DEVICE,
            domain,
            bdf,
            ..PciDevice::default()
        }
    }

    /// A physical bridge.
    pub fn bridge(domain: u16, bdf: u16) -> PciDevice {
        PciDevice {
            kind: pci_type::BRIDGE,
            domain,
            bdf,
            ..PciDevice::default()
        }
    }

    /// An ivshmem device using memory regions from `regions_start`.
    pub fn ivshmem(
        domain: u16,
        bdf: u16,
        regions_start: u32,
        dev_id: u8,
        peers: u8,
        protocol: u16,
    ) -> PciDevice {
        PciDevice {
            kind: pci_type::IVSHMEM,
            domain,
            bdf,
            bar_mask: [0xffff_f000, 0xffff_f000, 0, 0, 0, 0],
            shmem_regions_start: regions_start,
            shmem_dev_id: dev_id,
            shmem_peers: peers,
            shmem_protocol: protocol,
            ..PciDevice::default()
        }
    }

    /// Sets the capability range.
    pub fn with_caps(mut self, caps_start: u16, num_caps: u16) -> Self {
        self.caps_start = caps_start;
        self.num_caps = num_caps;
        self
    }

    /// Sets MSI vectors and the `msi_64bits` / `msi_maskable` bits.
    pub fn with_msi(mut self, vectors: u8, is_64bit: bool, maskable: bool) -> Self {
        self.num_msi_vectors = vectors;
        self.msi_flags = is_64bit as u8 | (maskable as u8) << 1;
        self
    }

    /// Sets MSI-X vectors and the table region.
    pub fn with_msix(mut self, vectors: u16, address: u64, region_size: u16) -> Self {
        self.num_msix_vectors = vectors;
        self.msix_address = address;
        self.msix_region_size = region_size;
        self
    }

    /// Sets the BAR masks.
    pub fn with_bars(mut self, bar_mask: [u32; 6]) -> Self {
        self.bar_mask = bar_mask;
        self
    }

    /// Sets the IOMMU unit index.
    pub fn with_iommu(mut self, iommu: u8) -> Self {
        self.iommu = iommu;
        self
    }
}

/// Builds a [`SystemConfig`].
#[derive(Debug, Clone)]
pub struct SystemBuilder {
    sys: SystemConfig,
}

impl SystemBuilder {
    fn new(root: Cell, arch: ArchPlatform, hv_phys: u64, hv_size: u64) -> SystemBuilder {
        SystemBuilder {
            sys: SystemConfig {
                flags: 0,
                hypervisor_memory: MemRegion {
                    phys_start: hv_phys,
                    virt_start: 0,
                    size: hv_size,
                    flags: 0,
                },
                debug_console: Console::default(),
                platform: PlatformInfo {
                    pci_mmconfig_base: 0,
                    pci_mmconfig_end_bus: 0,
                    pci_is_virtual: 0,
                    pci_domain: 0,
                    iommu_units: [IommuUnit::default(); MAX_IOMMU_UNITS],
                    arch,
                },
                root_cell: root,
            },
        }
    }

    /// An x86 system with hypervisor memory at `hv_phys` and the given root cell.
    pub fn x86(
        root: Cell,
        hv_phys: u64,
        hv_size: u64,
        pm_timer_address: u16,
        vtd_interrupt_limit: u32,
    ) -> SystemBuilder {
        let x86 = X86Platform {
            pm_timer_address,
            apic_mode: 0,
            padding: 0,
            vtd_interrupt_limit,
            tsc_khz: 0,
            apic_khz: 0,
            tail: [0; 28],
        };
        SystemBuilder::new(root, ArchPlatform::X86(x86), hv_phys, hv_size)
    }

    /// An arm/arm64 system with a GICv3 (distributor and first redistributor).
    pub fn gicv3(
        root: Cell,
        hv_phys: u64,
        hv_size: u64,
        gicd_base: u64,
        gicr_base: u64,
        maintenance_irq: u8,
    ) -> SystemBuilder {
        let arm = ArmPlatform {
            maintenance_irq,
            gic_version: 3,
            gicd_base,
            gicr_base,
            ..ArmPlatform::default()
        };
        SystemBuilder::new(root, ArchPlatform::Arm(arm), hv_phys, hv_size)
    }

    /// An arm/arm64 system with a GICv2 (`[gicd, gicc, gich, gicv]`).
    pub fn gicv2(
        root: Cell,
        hv_phys: u64,
        hv_size: u64,
        gic: [u64; 4],
        maintenance_irq: u8,
    ) -> SystemBuilder {
        let arm = ArmPlatform {
            maintenance_irq,
            gic_version: 2,
            gicd_base: gic[0],
            gicc_base: gic[1],
            gich_base: gic[2],
            gicv_base: gic[3],
            ..ArmPlatform::default()
        };
        SystemBuilder::new(root, ArchPlatform::Arm(arm), hv_phys, hv_size)
    }

    /// Sets the system flags.
    pub fn flags(mut self, flags: u32) -> Self {
        self.sys.flags = flags;
        self
    }

    /// Sets the debug console.
    pub fn debug_console(mut self, console: Console) -> Self {
        self.sys.debug_console = console;
        self
    }

    /// Sets the PCI MMCONFIG window, virtual-host-bridge flag and domain.
    pub fn pci(mut self, mmconfig_base: u64, end_bus: u8, is_virtual: bool, domain: u16) -> Self {
        let p = &mut self.sys.platform;
        p.pci_mmconfig_base = mmconfig_base;
        p.pci_mmconfig_end_bus = end_bus;
        p.pci_is_virtual = is_virtual as u8;
        p.pci_domain = domain;
        self
    }

    /// Puts an IOMMU unit into the first free slot (ignored when all 8 are used).
    pub fn iommu(mut self, kind: u32, base: u64, size: u32) -> Self {
        self.push_iommu(IommuUnit {
            kind,
            base,
            size,
            extra: [0; 12],
        });
        self
    }

    /// Puts a TI PVU unit with its TLB region into the first free slot.
    pub fn pvu(mut self, base: u64, size: u32, tlb_base: u64, tlb_size: u32) -> Self {
        let mut extra = [0u8; 12];
        extra[..8].copy_from_slice(&tlb_base.to_le_bytes());
        extra[8..].copy_from_slice(&tlb_size.to_le_bytes());
        self.push_iommu(IommuUnit {
            kind: iommu_type::PVU,
            base,
            size,
            extra,
        });
        self
    }

    fn push_iommu(&mut self, unit: IommuUnit) {
        if let Some(slot) = self
            .sys
            .platform
            .iommu_units
            .iter_mut()
            .find(|u| !u.is_used())
        {
            *slot = unit;
        }
    }

    /// Finishes the system config.
    pub fn build(self) -> SystemConfig {
        self.sys
    }
}

/// Console helpers matching the values Jailhouse configs use.
impl Console {
    /// An 8250 UART on port `port` (`JAILHOUSE_CON_ACCESS_PIO`).
    pub fn uart8250_pio(port: u16) -> Console {
        Console {
            address: port as u64,
            kind: 0x0002,
            ..Console::default()
        }
    }

    /// An MMIO UART of `kind` at `address` with 4-byte register distance.
    pub fn uart_mmio(kind: u16, address: u64, size: u32, extra_flags: u16) -> Console {
        Console {
            address,
            size,
            kind,
            flags: 0x0001 | 0x0002 | extra_flags,
            ..Console::default()
        }
    }
}
