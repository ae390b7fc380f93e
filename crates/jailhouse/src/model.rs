//! In-memory model of Jailhouse configuration revision 14.
//!
//! Every struct mirrors one packed C struct of Jailhouse's
//! `include/jailhouse/cell-config.h` field by field, including padding and
//! union bytes, so that writing a parsed config reproduces the input bytes.

/// `JAILHOUSE_CONFIG_REVISION` this crate reads and writes.
pub const CONFIG_REVISION: u16 = 14;
/// Signature of a system config (`JAILHOUSE_SYSTEM_SIGNATURE`).
pub const SYSTEM_SIGNATURE: &[u8; 5] = b"JHSYS";
/// Signature of a cell config (`JAILHOUSE_CELL_DESC_SIGNATURE`).
pub const CELL_SIGNATURE: &[u8; 5] = b"JHCLL";
/// Revision-13 (and older) system signature, 6 bytes and no architecture byte.
pub const SYSTEM_SIGNATURE_REV13: &[u8; 6] = b"JHSYST";
/// Revision-13 (and older) cell signature, 6 bytes and no architecture byte.
pub const CELL_SIGNATURE_REV13: &[u8; 6] = b"JHCELL";

/// Size of `struct jailhouse_cell_desc`.
pub const CELL_DESC_SIZE: usize = 132;
/// Size of `struct jailhouse_system` including the embedded root cell descriptor.
pub const SYSTEM_SIZE: usize = 488;
/// Size of `struct jailhouse_memory`.
pub const MEMORY_SIZE: usize = 32;
/// Size of `struct jailhouse_cache`.
pub const CACHE_SIZE: usize = 12;
/// Size of `struct jailhouse_irqchip`.
pub const IRQCHIP_SIZE: usize = 32;
/// Size of `struct jailhouse_pio`.
pub const PIO_SIZE: usize = 4;
/// Size of `struct jailhouse_pci_device`.
pub const PCI_DEVICE_SIZE: usize = 56;
/// Size of `struct jailhouse_pci_capability`.
pub const PCI_CAP_SIZE: usize = 8;
/// Size of `union jailhouse_stream_id`.
pub const STREAM_ID_SIZE: usize = 4;
/// Size of `struct jailhouse_iommu`.
pub const IOMMU_SIZE: usize = 28;
/// Size of `struct jailhouse_console`.
pub const CONSOLE_SIZE: usize = 32;
/// `JAILHOUSE_MAX_IOMMU_UNITS`.
pub const MAX_IOMMU_UNITS: usize = 8;

/// Memory region flags (`JAILHOUSE_MEM_*`).
pub mod mem {
    /// Readable.
    pub const READ: u64 = 0x0001;
    /// Writable.
    pub const WRITE: u64 = 0x0002;
    /// Executable.
    pub const EXECUTE: u64 = 0x0004;
    /// Reachable by device DMA (IOMMU mapping).
    pub const DMA: u64 = 0x0008;
    /// MMIO, not RAM.
    pub const IO: u64 = 0x0010;
    /// The cell's communication region (virtual only, provided by the hypervisor).
    pub const COMM_REGION: u64 = 0x0020;
    /// The root cell may load images into it while the cell is stopped.
    pub const LOADABLE: u64 = 0x0040;
    /// Stays mapped in the root cell when handed to a non-root cell.
    pub const ROOTSHARED: u64 = 0x0080;
    /// Do not map with huge pages.
    pub const NO_HUGEPAGES: u64 = 0x0100;
    /// Sub-page MMIO with unaligned access.
    pub const IO_UNALIGNED: u64 = 0x8000;
    /// Sub-page MMIO, 8-bit access permitted.
    pub const IO_8: u64 = 1 << 16;
    /// Sub-page MMIO, 16-bit access permitted.
    pub const IO_16: u64 = 2 << 16;
    /// Sub-page MMIO, 32-bit access permitted.
    pub const IO_32: u64 = 4 << 16;
    /// Sub-page MMIO, 64-bit access permitted.
    pub const IO_64: u64 = 8 << 16;
}

/// PCI device types (`JAILHOUSE_PCI_TYPE_*`).
pub mod pci_type {
    /// A physical endpoint.
    pub const DEVICE: u8 = 1;
    /// A physical bridge.
    pub const BRIDGE: u8 = 2;
    /// A virtual ivshmem device emulated by the hypervisor.
    pub const IVSHMEM: u8 = 3;
}

/// IOMMU unit types (`JAILHOUSE_IOMMU_*`); 0 marks an unused slot.
pub mod iommu_type {
    /// Unused slot.
    pub const UNUSED: u32 = 0;
    /// AMD-Vi.
    pub const AMD: u32 = 1;
    /// Intel VT-d.
    pub const INTEL: u32 = 2;
    /// ARM SMMUv3.
    pub const SMMUV3: u32 = 3;
    /// TI peripheral virtualization unit.
    pub const PVU: u32 = 4;
    /// ARM MMU-500 (SMMUv2).
    pub const ARM_MMU500: u32 = 5;
}

/// Cell flags (`JAILHOUSE_CELL_*`).
pub mod cell_flags {
    /// The cell does not actively use the comm region.
    pub const PASSIVE_COMMREG: u32 = 0x1;
    /// The cell gets the hypervisor's test device.
    pub const TEST_DEVICE: u32 = 0x2;
    /// arm64 cell running in AArch32 mode.
    pub const AARCH32: u32 = 0x4;
    /// The inmate may use the debug putc hypercall.
    pub const VIRTUAL_CONSOLE_PERMITTED: u32 = 0x4000_0000;
    /// The inmate should use the virtual console.
    pub const VIRTUAL_CONSOLE_ACTIVE: u32 = 0x8000_0000;
}

/// CPU architecture byte of revision-14 configs (`JAILHOUSE_X86` ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// `JAILHOUSE_X86` (0).
    X86,
    /// `JAILHOUSE_ARM` (1).
    Arm,
    /// `JAILHOUSE_ARM64` (2).
    Arm64,
}

impl Arch {
    /// Decodes the architecture byte; `None` for values Jailhouse does not define.
    pub fn from_byte(b: u8) -> Option<Arch> {
        match b {
            0 => Some(Arch::X86),
            1 => Some(Arch::Arm),
            2 => Some(Arch::Arm64),
            _ => None,
        }
    }

    /// The architecture byte written to the file.
    pub fn to_byte(self) -> u8 {
        match self {
            Arch::X86 => 0,
            Arch::Arm => 1,
            Arch::Arm64 => 2,
        }
    }

    /// Name as used by Jailhouse's tools (`x86`, `arm`, `arm64`).
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86 => "x86",
            Arch::Arm => "arm",
            Arch::Arm64 => "arm64",
        }
    }

    /// True for arm and arm64, which share the GIC platform info.
    pub fn is_arm(self) -> bool {
        matches!(self, Arch::Arm | Arch::Arm64)
    }
}

/// `struct jailhouse_memory`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemRegion {
    /// Host-physical start.
    pub phys_start: u64,
    /// Guest-physical start as seen by the cell.
    pub virt_start: u64,
    /// Size in bytes.
    pub size: u64,
    /// `JAILHOUSE_MEM_*` flags.
    pub flags: u64,
}

impl MemRegion {
    /// True when `flag` (one or more `mem::*` bits) is fully set.
    pub fn has(&self, flag: u64) -> bool {
        self.flags & flag == flag
    }

    /// True for the all-zero entry (`{ 0 }`).
    pub fn is_zero(&self) -> bool {
        *self == MemRegion::default()
    }

    /// Physical range `[start, end)` as u128 so that it never overflows.
    pub fn phys_range(&self) -> (u128, u128) {
        (
            self.phys_start as u128,
            self.phys_start as u128 + self.size as u128,
        )
    }

    /// Guest range `[start, end)` as u128 so that it never overflows.
    pub fn virt_range(&self) -> (u128, u128) {
        (
            self.virt_start as u128,
            self.virt_start as u128 + self.size as u128,
        )
    }
}

/// `struct jailhouse_cache`: a CAT cache partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheRegion {
    /// First capacity bitmask bit.
    pub start: u32,
    /// Number of bits.
    pub size: u32,
    /// `JAILHOUSE_CACHE_L3_CODE` / `_DATA` bits.
    pub kind: u8,
    /// Padding byte, kept for byte-exact round trips.
    pub padding: u8,
    /// `JAILHOUSE_CACHE_ROOTSHARED`.
    pub flags: u16,
}

/// Cache type bit for L3 code.
pub const CACHE_L3_CODE: u8 = 0x01;
/// Cache type bit for L3 data.
pub const CACHE_L3_DATA: u8 = 0x02;
/// Cache type for unified L3.
pub const CACHE_L3: u8 = 0x03;
/// Cache region flag: shared with the root cell.
pub const CACHE_ROOTSHARED: u16 = 0x0001;

/// `struct jailhouse_irqchip`: an IOAPIC (x86) or GIC distributor (arm).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Irqchip {
    /// MMIO address of the chip.
    pub address: u64,
    /// IOAPIC id (x86, with the IOMMU source id), unused on arm.
    pub id: u32,
    /// Interrupt number of bit 0 of `pin_bitmap`.
    pub pin_base: u32,
    /// 128 pins starting at `pin_base`.
    pub pin_bitmap: [u32; 4],
}

impl Irqchip {
    /// Absolute interrupt numbers this entry grants, in ascending order.
    pub fn pins(&self) -> impl Iterator<Item = u64> + '_ {
        (0..128u64)
            .filter(|bit| self.pin_bitmap[(bit / 32) as usize] & (1 << (bit % 32)) != 0)
            .map(|bit| self.pin_base as u64 + bit)
    }

    /// True for the all-zero entry.
    pub fn is_zero(&self) -> bool {
        *self == Irqchip::default()
    }
}

/// `struct jailhouse_pio`: an x86 port range passed through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PioRegion {
    /// First port.
    pub base: u16,
    /// Number of ports.
    pub length: u16,
}

impl PioRegion {
    /// Port range `[start, end)`.
    pub fn range(&self) -> (u32, u32) {
        (self.base as u32, self.base as u32 + self.length as u32)
    }
}

/// `struct jailhouse_pci_device`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PciDevice {
    /// `pci_type::*`.
    pub kind: u8,
    /// Index into the system's IOMMU units.
    pub iommu: u8,
    /// PCI domain (segment).
    pub domain: u16,
    /// Bus/device/function.
    pub bdf: u16,
    /// BAR size masks.
    pub bar_mask: [u32; 6],
    /// First index into the cell's PCI capability array.
    pub caps_start: u16,
    /// Number of capabilities.
    pub num_caps: u16,
    /// MSI vectors.
    pub num_msi_vectors: u8,
    /// Bit field byte: bit 0 `msi_64bits`, bit 1 `msi_maskable`, rest kept as is.
    pub msi_flags: u8,
    /// MSI-X vectors.
    pub num_msix_vectors: u16,
    /// Size of the MSI-X table region.
    pub msix_region_size: u16,
    /// Physical address of the MSI-X table.
    pub msix_address: u64,
    /// First memory region index of an ivshmem device's shared memory.
    pub shmem_regions_start: u32,
    /// ivshmem peer id of this cell.
    pub shmem_dev_id: u8,
    /// Maximum ivshmem peers.
    pub shmem_peers: u8,
    /// ivshmem protocol.
    pub shmem_protocol: u16,
}

impl PciDevice {
    /// `msi_64bits` bit.
    pub fn msi_64bits(&self) -> bool {
        self.msi_flags & 1 != 0
    }

    /// `msi_maskable` bit.
    pub fn msi_maskable(&self) -> bool {
        self.msi_flags & 2 != 0
    }

    /// True for a hypervisor-emulated ivshmem device.
    pub fn is_ivshmem(&self) -> bool {
        self.kind == pci_type::IVSHMEM
    }

    /// `DDDD:BB:DD.F` style name; the domain is omitted when 0, like lspci.
    pub fn bdf_name(&self) -> String {
        bdf_name(self.domain, self.bdf)
    }

    /// Number of memory regions an ivshmem device uses: state table, R/W
    /// section and one output section per peer.
    pub fn shmem_region_count(&self) -> u64 {
        2 + self.shmem_peers as u64
    }

    /// True for the all-zero entry.
    pub fn is_zero(&self) -> bool {
        *self == PciDevice::default()
    }
}

/// Formats a PCI address as `BB:DD.F`, prefixed with `DDDD:` for domains other than 0.
pub fn bdf_name(domain: u16, bdf: u16) -> String {
    let s = format!("{:02x}:{:02x}.{:x}", bdf >> 8, (bdf >> 3) & 0x1f, bdf & 7);
    if domain == 0 {
        s
    } else {
        format!("{domain:04x}:{s}")
    }
}

/// A stream id as people write it: for ARM MMU-500 (`mmu500` true) the
/// union's `id` and `mask_out` halves as `0x870/0xf` (id/mask), otherwise
/// the 32-bit id, e.g. `0x5001`.
pub fn stream_id_name(raw: u32, mmu500: bool) -> String {
    if mmu500 {
        format!("{:#x}/{:#x}", raw & 0xffff, raw >> 16)
    } else {
        format!("{raw:#x}")
    }
}

/// `struct jailhouse_pci_capability`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PciCapability {
    /// Capability id, `| 0x8000` for extended capabilities.
    pub id: u16,
    /// Offset in config space.
    pub start: u16,
    /// Length in bytes.
    pub len: u16,
    /// `JAILHOUSE_PCICAPS_WRITE`.
    pub flags: u16,
}

/// `struct jailhouse_console`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Console {
    /// Port or MMIO address.
    pub address: u64,
    /// MMIO size.
    pub size: u32,
    /// `JAILHOUSE_CON_TYPE_*`.
    pub kind: u16,
    /// `JAILHOUSE_CON_*` flags.
    pub flags: u16,
    /// UART divider.
    pub divider: u32,
    /// Clock gate number.
    pub gate_nr: u32,
    /// Clock gate register.
    pub clock_reg: u64,
}

/// `struct jailhouse_iommu`; the 12 union bytes are kept raw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IommuUnit {
    /// `iommu_type::*`, 0 for an unused slot.
    pub kind: u32,
    /// MMIO base.
    pub base: u64,
    /// MMIO size.
    pub size: u32,
    /// The `amd` / `tipvu` union, raw little-endian bytes.
    pub extra: [u8; 12],
}

impl IommuUnit {
    /// True when the slot is in use.
    pub fn is_used(&self) -> bool {
        self.kind != iommu_type::UNUSED
    }

    /// `tipvu.tlb_base` and `tipvu.tlb_size` (meaningful for PVU units).
    pub fn pvu_tlb(&self) -> (u64, u32) {
        let base = u64::from_le_bytes(self.extra[0..8].try_into().unwrap_or([0; 8]));
        let size = u32::from_le_bytes(self.extra[8..12].try_into().unwrap_or([0; 4]));
        (base, size)
    }

    /// `amd.bdf`, `amd.base_cap`, `amd.msi_cap`, `amd.features`.
    pub fn amd(&self) -> (u16, u8, u8, u32) {
        let bdf = u16::from_le_bytes([self.extra[0], self.extra[1]]);
        let features = u32::from_le_bytes(self.extra[4..8].try_into().unwrap_or([0; 4]));
        (bdf, self.extra[2], self.extra[3], features)
    }

    /// Name of the unit type.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            iommu_type::UNUSED => "unused",
            iommu_type::AMD => "AMD",
            iommu_type::INTEL => "Intel VT-d",
            iommu_type::SMMUV3 => "SMMUv3",
            iommu_type::PVU => "TI PVU",
            iommu_type::ARM_MMU500 => "ARM MMU-500",
            _ => "unknown",
        }
    }
}

/// x86 part of the platform info union.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct X86Platform {
    /// ACPI PM timer port.
    pub pm_timer_address: u16,
    /// `JAILHOUSE_APIC_MODE_*`.
    pub apic_mode: u8,
    /// Padding byte.
    pub padding: u8,
    /// VT-d interrupt remapping limit.
    pub vtd_interrupt_limit: u32,
    /// TSC frequency.
    pub tsc_khz: u32,
    /// APIC timer frequency.
    pub apic_khz: u32,
    /// Union bytes beyond the x86 struct (the arm member is larger).
    pub tail: [u8; 28],
}

/// arm/arm64 part of the platform info union.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArmPlatform {
    /// GIC maintenance interrupt.
    pub maintenance_irq: u8,
    /// 2 or 3.
    pub gic_version: u8,
    /// Padding bytes.
    pub padding: [u8; 2],
    /// Distributor.
    pub gicd_base: u64,
    /// CPU interface (GICv2).
    pub gicc_base: u64,
    /// Hypervisor interface (GICv2).
    pub gich_base: u64,
    /// Virtual CPU interface (GICv2).
    pub gicv_base: u64,
    /// First redistributor (GICv3).
    pub gicr_base: u64,
}

/// The architecture-specific union of the platform info.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchPlatform {
    /// Decoded as x86.
    X86(X86Platform),
    /// Decoded as arm/arm64.
    Arm(ArmPlatform),
}

/// `platform_info` of `struct jailhouse_system`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformInfo {
    /// Start of the PCI MMCONFIG (ECAM) window, 0 when absent.
    pub pci_mmconfig_base: u64,
    /// Last bus of the MMCONFIG window.
    pub pci_mmconfig_end_bus: u8,
    /// The PCI host bridge is emulated by the hypervisor.
    pub pci_is_virtual: u8,
    /// PCI domain of the virtual host bridge.
    pub pci_domain: u16,
    /// Exactly [`MAX_IOMMU_UNITS`] slots.
    pub iommu_units: [IommuUnit; MAX_IOMMU_UNITS],
    /// Architecture-specific part.
    pub arch: ArchPlatform,
}

impl PlatformInfo {
    /// Size of the MMCONFIG window in bytes (1 MiB per bus).
    pub fn mmconfig_size(&self) -> u64 {
        (self.pci_mmconfig_end_bus as u64 + 1) << 20
    }
}

/// `struct jailhouse_cell_desc` and the arrays that follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    /// Architecture byte of the header (for the root cell: the system's).
    pub arch: Arch,
    /// Raw signature, architecture and revision bytes of the root cell's
    /// embedded descriptor, which Jailhouse ignores (usually all zero); kept
    /// for byte-exact round trips. Non-root cells always carry `JHCLL`, their
    /// architecture and revision 14, and this field is ignored for them.
    pub root_desc_header: [u8; 8],
    /// Raw name field (NUL-padded).
    pub name_raw: [u8; 32],
    /// Set by the driver; kept for round trips.
    pub id: u32,
    /// `cell_flags::*`.
    pub flags: u32,
    /// Interrupt base of virtual PCI devices (arm).
    pub vpci_irq_base: u32,
    /// Reset address of the cell's CPUs.
    pub cpu_reset_address: u64,
    /// Timeout for cell messages.
    pub msg_reply_timeout: u64,
    /// Cell console.
    pub console: Console,
    /// CPU bitmap, `cpu_set_size` bytes, little-endian.
    pub cpu_set: Vec<u8>,
    /// Memory regions.
    pub memory_regions: Vec<MemRegion>,
    /// CAT cache partitions.
    pub cache_regions: Vec<CacheRegion>,
    /// Interrupt controllers and the pins granted.
    pub irqchips: Vec<Irqchip>,
    /// Port ranges (x86).
    pub pio_regions: Vec<PioRegion>,
    /// PCI devices.
    pub pci_devices: Vec<PciDevice>,
    /// PCI capabilities referenced by the devices.
    pub pci_caps: Vec<PciCapability>,
    /// IOMMU stream ids (arm), raw 32-bit values.
    pub stream_ids: Vec<u32>,
}

impl Cell {
    /// The name up to the first NUL, lossily decoded.
    pub fn name(&self) -> String {
        let end = self.name_raw.iter().position(|&b| b == 0).unwrap_or(32);
        String::from_utf8_lossy(&self.name_raw[..end]).into_owned()
    }

    /// CPU numbers set in the CPU bitmap, ascending.
    pub fn cpus(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for (i, byte) in self.cpu_set.iter().enumerate() {
            for bit in 0..8 {
                if byte & (1 << bit) != 0 {
                    out.push(i as u32 * 8 + bit);
                }
            }
        }
        out
    }

    /// Size in bytes of this cell's descriptor plus arrays.
    pub fn encoded_size(&self) -> usize {
        CELL_DESC_SIZE
            + self.cpu_set.len()
            + self.memory_regions.len() * MEMORY_SIZE
            + self.cache_regions.len() * CACHE_SIZE
            + self.irqchips.len() * IRQCHIP_SIZE
            + self.pio_regions.len() * PIO_SIZE
            + self.pci_devices.len() * PCI_DEVICE_SIZE
            + self.pci_caps.len() * PCI_CAP_SIZE
            + self.stream_ids.len() * STREAM_ID_SIZE
    }
}

/// `struct jailhouse_system` with its root cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemConfig {
    /// `JAILHOUSE_SYS_*` flags.
    pub flags: u32,
    /// Memory reserved for the hypervisor.
    pub hypervisor_memory: MemRegion,
    /// Hypervisor debug console.
    pub debug_console: Console,
    /// Platform information.
    pub platform: PlatformInfo,
    /// The root cell; its `arch` is the system's architecture.
    pub root_cell: Cell,
}

impl SystemConfig {
    /// The system's architecture.
    pub fn arch(&self) -> Arch {
        self.root_cell.arch
    }

    /// IOMMU units in use, with their slot index.
    pub fn used_iommus(&self) -> impl Iterator<Item = (usize, &IommuUnit)> {
        self.platform
            .iommu_units
            .iter()
            .enumerate()
            .filter(|(_, u)| u.is_used())
    }
}

/// A cell name padded into the 32-byte name field (truncated to 31 bytes).
pub fn name_field(name: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    let bytes = name.as_bytes();
    let n = bytes.len().min(31);
    out[..n].copy_from_slice(&bytes[..n]);
    out
}
