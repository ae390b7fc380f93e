//! Realistic config sets built with the builder API.
//!
//! x86: mirrors Jailhouse's configs/x86/qemu-x86.c and the demo cells
//! apic, tiny, ioapic, pci, e1000, smp, ivshmem and linux-x86-demo.
//! arm64: mirrors configs/arm64/k3-j721e-evm*.c (GICv3, SMMUv3 and TI PVUs),
//! with the root cell's peripheral windows split around the GIC and IOMMU
//! MMIO, as a correct config must be.
#![allow(dead_code)]

pub mod check;

use oxemu_jailhouse::builder::{CellBuilder, SystemBuilder};
use oxemu_jailhouse::model::{
    cell_flags as cf, iommu_type, mem, Arch, Cell, Console, PciDevice, SystemConfig, CACHE_L3,
};
use oxemu_jailhouse::ConfigSet;

pub const R: u64 = mem::READ;
pub const W: u64 = mem::WRITE;
pub const X: u64 = mem::EXECUTE;
pub const DMA: u64 = mem::DMA;
pub const IO: u64 = mem::IO;
pub const RS: u64 = mem::ROOTSHARED;
pub const LOAD: u64 = mem::LOADABLE;
pub const RAM: u64 = R | W | X | DMA;

const CAP_PM: u16 = 0x01;
const CAP_MSI: u16 = 0x05;
const CAP_EXP: u16 = 0x10;
const CAP_MSIX: u16 = 0x11;
const CAP_SATA: u16 = 0x12;
const EXT: u16 = 0x8000;
const CAPS_WRITE: u16 = 1;
const PROTO_VETH: u16 = 0x0001;
const VIRTIO_FRONT: u16 = 0x8000;
const VIRTIO_BACK: u16 = 0xc000;
const VIRTIO_BLOCK: u16 = 2;
const VIRTIO_CONSOLE: u16 = 3;

fn ivshmem_bdf(dev: u16) -> u16 {
    0x100 | (dev << 3)
}

/// configs/x86/qemu-x86.c
pub fn qemu_x86() -> SystemConfig {
    let root = CellBuilder::new("QEMU-VM", Arch::X86)
        .cpus(0xf)
        // IVSHMEM virtio-blk back-end
        .mem_1to1(0x3f00_0000, 0x1000, R)
        .mem_1to1(0x3f00_1000, 0xdf000, R | W)
        .mem_zero()
        .mem_zero()
        // IVSHMEM virtio-con back-end
        .mem_1to1(0x3f0e_0000, 0x1000, R)
        .mem_1to1(0x3f0e_1000, 0xf000, R | W)
        .mem_zero()
        .mem_zero()
        // IVSHMEM demo
        .mem_1to1(0x3f0f_0000, 0x1000, R)
        .mem_1to1(0x3f0f_1000, 0x9000, R | W)
        .mem_1to1(0x3f0f_a000, 0x2000, R | W)
        .mem_1to1(0x3f0f_c000, 0x2000, R)
        .mem_1to1(0x3f0f_e000, 0x2000, R)
        // IVSHMEM networking
        .shmem_net_regions(0x3f10_0000, 0)
        .mem_1to1(0, 0x3a00_0000, RAM)
        .mem_1to1(0x3a60_0000, 0x4a0_0000, RAM)
        .mem_1to1(0x3f20_0000, 0xddf000, RAM)
        .mem_1to1(0x3ffd_f000, 0x21000, R)
        .mem_1to1(0xfd00_0000, 0x100_0000, R | W)
        .mem_1to1(0xfe20_0000, 0x4000, R | W)
        .mem_1to1(0xfea0_0000, 0x40000, R | W)
        .mem_1to1(0xfea4_0000, 0x20000, R | W)
        .mem_1to1(0xfea6_0000, 0x20000, R | W)
        .mem_1to1(0xfea9_1000, 0x3000, R | W)
        .mem_1to1(0xfea9_4000, 0x4000, R | W)
        .mem_1to1(0xfea9_8000, 0x1000, R | W)
        .mem_1to1(0xfea9_a000, 0x1000, R | W)
        .mem_1to1(0xfed0_0000, 0x1000, R | W)
        .irqchip(0xfec0_0000, 0xff00, 0, [0xffffff, 0, 0, 0])
        .pio(0x0, 0x1f)
        .pio(0x40, 0x4)
        .pio(0x60, 0x2)
        .pio(0x64, 0x1)
        .pio(0x70, 0x2)
        .pio(0x1ce, 0x3)
        .pio(0x2f8, 0x8)
        .pio(0x3b0, 0x30)
        .pio(0x3f0, 0x8)
        .pio(0x402, 0x1)
        .pio(0xcd0, 0x8)
        .pio(0x5658, 0x4)
        .pio(0xd000, 0xff)
        .pci(PciDevice::physical(0, 0x0008))
        .pci(
            PciDevice::physical(0, 0x0010)
                .with_bars([0xfffe0000, 0xfffe0000, 0xffffffe0, 0xffffc000, 0, 0])
                .with_caps(5, 6)
                .with_msi(1, true, false)
                .with_msix(5, 0xfea9_0000, 0x1000),
        )
        .pci(
            PciDevice::bridge(0, 0x0018)
                .with_bars([0xffffff00, 0, 0, 0, 0, 0])
                .with_caps(11, 5)
                .with_msi(1, true, true),
        )
        .pci(
            PciDevice::physical(0, 0x00d8)
                .with_caps(0, 2)
                .with_msi(1, true, false),
        )
        .pci(PciDevice::physical(0, 0x00f8))
        .pci(
            PciDevice::physical(0, 0x00fa)
                .with_caps(2, 2)
                .with_msi(1, true, false),
        )
        .pci(PciDevice::physical(0, 0x00fb))
        .pci(
            PciDevice::physical(0, 0x00ff)
                .with_bars([0xffffffe0, 0xfffff000, 0, 0, 0xffffc000, 0xffffffff])
                .with_caps(4, 1)
                .with_msix(2, 0xfea9_b000, 0x1000),
        )
        .pci(PciDevice {
            num_msix_vectors: 2,
            ..PciDevice::ivshmem(0, ivshmem_bdf(0x0c), 0, 0, 2, VIRTIO_BACK + VIRTIO_BLOCK)
        })
        .pci(PciDevice {
            num_msix_vectors: 3,
            ..PciDevice::ivshmem(0, ivshmem_bdf(0x0d), 4, 0, 2, VIRTIO_BACK + VIRTIO_CONSOLE)
        })
        .pci(PciDevice {
            num_msix_vectors: 16,
            ..PciDevice::ivshmem(0, ivshmem_bdf(0x0e), 8, 0, 3, 0)
        })
        .pci(PciDevice {
            num_msix_vectors: 2,
            ..PciDevice::ivshmem(0, ivshmem_bdf(0x0f), 13, 0, 2, PROTO_VETH)
        })
        .cap(CAP_MSI, 0x60, 14, CAPS_WRITE)
        .cap(0, 0x40, 0x10, CAPS_WRITE)
        .cap(CAP_SATA, 0xa8, 2, 0)
        .cap(CAP_MSI, 0x80, 14, CAPS_WRITE)
        .cap(CAP_MSIX, 0x98, 12, CAPS_WRITE)
        .cap(CAP_PM, 0xc8, 8, CAPS_WRITE)
        .cap(CAP_MSI, 0xd0, 14, CAPS_WRITE)
        .cap(CAP_EXP, 0xe0, 20, CAPS_WRITE)
        .cap(CAP_MSIX, 0xa0, 12, CAPS_WRITE)
        .cap(0x01 | EXT, 0x100, 4, 0)
        .cap(0x03 | EXT, 0x140, 4, 0)
        .cap(CAP_MSI, 0x8c, 0x18, CAPS_WRITE)
        .cap(CAP_PM, 0x84, 0x8, CAPS_WRITE)
        .cap(CAP_EXP, 0x48, 0x3c, 0)
        .cap(0xc, 0x40, 0x02, 0)
        .cap(0x01 | EXT, 0x100, 0x40, 0)
        .build();
    SystemBuilder::x86(root, 0x3a00_0000, 0x60_0000, 0x608, 256)
        .flags(1)
        .debug_console(Console::uart8250_pio(0x3f8))
        .pci(0xb000_0000, 0xff, false, 0)
        .iommu(iommu_type::INTEL, 0xfed9_0000, 0x1000)
        .build()
}

fn demo_base(name: &str, cpus: u64, phys: u64) -> CellBuilder {
    CellBuilder::new(name, Arch::X86)
        .flags(cf::PASSIVE_COMMREG | cf::VIRTUAL_CONSOLE_PERMITTED)
        .console(Console::uart8250_pio(0x3f8))
        .cpus(cpus)
        .mem(phys, 0, 0x10_0000, R | W | X | LOAD)
        .comm_region(0x10_0000)
}

/// configs/x86/apic-demo.c
pub fn apic_demo() -> Cell {
    demo_base("apic-demo", 0x8, 0x3ef0_0000)
        .flags(cf::VIRTUAL_CONSOLE_PERMITTED)
        .cache(0, 2, CACHE_L3, 0)
        .pio(0x2f8, 8)
        .pio(0x3f8, 8)
        .pio(0xe010, 8)
        .build()
}

/// configs/x86/tiny-demo.c
pub fn tiny_demo() -> Cell {
    demo_base("tiny-demo", 0x4, 0x3ee0_0000)
        .flags(cf::PASSIVE_COMMREG | cf::TEST_DEVICE | cf::VIRTUAL_CONSOLE_PERMITTED)
        .cache(2, 1, CACHE_L3, 0)
        .pio(0x2f8, 8)
        .pio(0x3f8, 8)
        .pio(0xe010, 8)
        .build()
}

/// configs/x86/ioapic-demo.c
pub fn ioapic_demo() -> Cell {
    demo_base("ioapic-demo", 0x4, 0x3ee0_0000)
        .irqchip(0xfec0_0000, 0xff01, 0, [0x200, 0, 0, 0])
        .pio(0x2f8, 8)
        .pio(0x3f8, 8)
        .pio(0x600, 4)
        .pio(0x800, 4)
        .pio(0xe010, 8)
        .build()
}

/// configs/x86/pci-demo.c
pub fn pci_demo() -> Cell {
    demo_base("pci-demo", 0x4, 0x3ee0_0000)
        .mem_1to1(0xfebd_4000, 0x4000, R | W)
        .pio(0x2f8, 8)
        .pio(0x3f8, 8)
        .pio(0xe010, 8)
        .pci(
            PciDevice::physical(0, 0x00d8)
                .with_caps(0, 1)
                .with_msi(1, true, false),
        )
        .cap(CAP_MSI, 0x60, 14, CAPS_WRITE)
        .build()
}

/// configs/x86/e1000-demo.c
pub fn e1000_demo() -> Cell {
    let mut c = demo_base("e1000-demo", 0x4, 0x3ee0_0000)
        .mem_1to1(0xfebc_0000, 0x20000, R | W)
        .pio(0x2f8, 8)
        .pio(0x3f8, 8)
        .pio(0xc000, 0x3f)
        .pio(0xe000, 8)
        .pci(
            PciDevice::physical(0, 0x00c8)
                .with_caps(0, 1)
                .with_msi(1, true, false),
        )
        .cap(CAP_MSI, 0xd0, 14, CAPS_WRITE)
        .build();
    c.memory_regions[0].flags |= DMA;
    c
}

/// configs/x86/smp-demo.c
pub fn smp_demo() -> Cell {
    demo_base("smp-demo", 0xe, 0x3ee0_0000)
        .pio(0x2f8, 8)
        .pio(0x3f8, 8)
        .pio(0xe010, 8)
        .build()
}

/// configs/x86/ivshmem-demo.c
pub fn ivshmem_demo() -> Cell {
    CellBuilder::new("ivshmem-demo", Arch::X86)
        .flags(cf::PASSIVE_COMMREG | cf::VIRTUAL_CONSOLE_PERMITTED)
        .console(Console::uart8250_pio(0x3f8))
        .cpus(0b0010)
        .mem_1to1(0x3f0f_0000, 0x1000, R | RS)
        .mem_1to1(0x3f0f_1000, 0x9000, R | W | RS)
        .mem_1to1(0x3f0f_a000, 0x2000, R | RS)
        .mem_1to1(0x3f0f_c000, 0x2000, R | W | RS)
        .mem_1to1(0x3f0f_e000, 0x2000, R | RS)
        .mem(0x3ee0_0000, 0, 0x10_0000, R | W | X | LOAD)
        .comm_region(0x10_0000)
        .pio(0x2f8, 8)
        .pio(0x3f8, 8)
        .pci(PciDevice {
            num_msix_vectors: 16,
            ..PciDevice::ivshmem(0, ivshmem_bdf(0x0e), 0, 1, 3, 0)
        })
        .build()
}

/// configs/x86/linux-x86-demo.c (without CONFIG_QEMU_E1000E_ASSIGNMENT)
pub fn linux_x86_demo() -> Cell {
    CellBuilder::new("linux-x86-demo", Arch::X86)
        .flags(cf::PASSIVE_COMMREG | cf::VIRTUAL_CONSOLE_PERMITTED)
        .cpus(0b1100)
        .mem_1to1(0x3f00_0000, 0x1000, R | RS)
        .mem_1to1(0x3f00_1000, 0xdf000, R | W | RS)
        .mem_zero()
        .mem_zero()
        .mem_1to1(0x3f0e_0000, 0x1000, R | RS)
        .mem_1to1(0x3f0e_1000, 0xf000, R | W | RS)
        .mem_zero()
        .mem_zero()
        .mem_1to1(0x3f0f_0000, 0x1000, R | RS)
        .mem_1to1(0x3f0f_1000, 0x9000, R | W | RS)
        .mem_1to1(0x3f0f_a000, 0x2000, R | RS)
        .mem_1to1(0x3f0f_c000, 0x2000, R | RS)
        .mem_1to1(0x3f0f_e000, 0x2000, R | W | RS)
        .shmem_net_regions(0x3f10_0000, 1)
        .mem(0x3a60_0000, 0, 0x10_0000, RAM | LOAD)
        .comm_region(0x10_0000)
        .mem(0x3a70_0000, 0x20_0000, 0x470_0000, RAM | LOAD)
        .cache(0, 2, CACHE_L3, 0)
        .irqchip(0xfec0_0000, 0xff00, 0, [(1 << 3) | (1 << 4), 0, 0, 0])
        .pio(0x2f8, 8)
        .pio(0x3f8, 8)
        .pio(0xe010, 8)
        .pci(PciDevice {
            num_msix_vectors: 2,
            ..PciDevice::ivshmem(0, ivshmem_bdf(0x0c), 0, 1, 2, VIRTIO_FRONT + VIRTIO_BLOCK)
        })
        .pci(PciDevice {
            num_msix_vectors: 3,
            ..PciDevice::ivshmem(0, ivshmem_bdf(0x0d), 4, 1, 2, VIRTIO_FRONT + VIRTIO_CONSOLE)
        })
        .pci(PciDevice {
            num_msix_vectors: 16,
            ..PciDevice::ivshmem(0, ivshmem_bdf(0x0e), 8, 2, 3, 0)
        })
        .pci(PciDevice {
            num_msix_vectors: 2,
            ..PciDevice::ivshmem(0, ivshmem_bdf(0x0f), 13, 1, 2, PROTO_VETH)
        })
        .cap(CAP_PM, 0xc8, 8, CAPS_WRITE)
        .cap(CAP_MSI, 0xd0, 14, CAPS_WRITE)
        .cap(CAP_EXP, 0xe0, 20, CAPS_WRITE)
        .cap(CAP_MSIX, 0xa0, 12, CAPS_WRITE)
        .cap(0x01 | EXT, 0x100, 4, 0)
        .cap(0x03 | EXT, 0x140, 4, 0)
        .build()
}

const J721E_CON: u16 = 0x0002; // 8250
const MDR_QUIRK: u16 = 0x2000;
const INTX_64K: [u32; 6] = [0xffff0000, 0, 0, 0, 0, 0];

fn j721e_ivshmem(bdf: u16, start: u32, dev_id: u8, protocol: u16) -> PciDevice {
    PciDevice {
        bar_mask: INTX_64K,
        ..PciDevice::ivshmem(4, bdf, start, dev_id, 2, protocol)
    }
}

/// configs/arm64/k3-j721e-evm.c, with "Most peripherals" and "MAIN NAVSS"
/// split so that the GIC distributor/redistributors, the SMMUv3 and the PVUs
/// stay unmapped.
pub fn j721e() -> SystemConfig {
    let io = R | W | IO;
    let root = CellBuilder::new("k3-j721e-evm", Arch::Arm64)
        .cpus(0x3)
        .vpci_irq_base(191 - 32)
        .mem_1to1(0x8_9fe0_0000, 0x10000, R)
        .mem_1to1(0x8_9fe1_0000, 0x10000, R | W)
        .mem_1to1(0x8_9fe2_0000, 0x10000, R | W)
        .mem_1to1(0x8_9fe3_0000, 0x10000, R)
        .shmem_net_regions(0x8_9fe4_0000, 0)
        .mem_1to1(0x0010_0000, 0x0002_0000, io) // ctrl mmr
        .mem_1to1(0x0060_0000, 0x0003_2000, io) // gpio
        .mem_1to1(0x0090_0000, 0x0001_2000, io) // serdes
        .mem_1to1(0x00a4_0000, 0x0000_1000, io) // timesync router
        .mem_1to1(0x0100_0000, 0x0080_0000, io) // peripherals below GICD
        .mem_1to1(0x01a0_0000, 0x0a50_3000, io) // peripherals above the GIC
        .mem_1to1(0x3080_0000, 0x0078_0000, io) // MAIN NAVSS below the PVUs
        .mem_1to1(0x30f8_4000, 0x0567_c000, io) // MAIN NAVSS up to the SMMU
        .mem_1to1(0x3670_0000, 0x05d0_0000, io) // MAIN NAVSS above the SMMU
        .mem_1to1(0x0d00_0000, 0x0100_0000, io) // PCIe core
        .mem_1to1(0x1000_0000, 0x1000_0000, R | W | DMA) // PCIe DAT
        .mem_1to1(0x6480_0000, 0x0080_0000, io) // C71
        .mem_1to1(0x4d_8080_0000, 0x0080_0000, io) // C66_0
        .mem_1to1(0x4d_8180_0000, 0x0080_0000, io) // C66_1
        .mem_1to1(0x4e_2000_0000, 0x0008_0000, io) // GPU
        .mem_1to1(0x2838_0000, 0x0388_0000, io) // MCU NAVSS
        .mem_1to1(0x4020_0000, 0x0099_9000, io)
        .mem_1to1(0x40f0_0000, 0x0002_0000, io)
        .mem_1to1(0x4100_0000, 0x0002_0000, io)
        .mem_1to1(0x4140_0000, 0x0002_0000, io)
        .mem_1to1(0x41c0_0000, 0x0010_0000, R | W | DMA)
        .mem_1to1(0x4204_0000, 0x030c_0000, io)
        .mem_1to1(0x4510_0000, 0x00c2_4000, io)
        .mem_1to1(0x4600_0000, 0x0020_0000, io)
        .mem_1to1(0x4700_0000, 0x0006_9000, io)
        .mem_1to1(0x5000_0000, 0x1000_0000, R | W | DMA)
        .mem_1to1(0x5_0000_0000, 0x1_0000_0000, R | W | DMA)
        .mem_1to1(0x7_0000_0000, 0x1_0000_0000, R | W | DMA)
        .mem_1to1(0x8000_0000, 0x8000_0000, RAM | LOAD)
        .mem_1to1(0x8_8000_0000, 0x1fa0_0000, RAM | LOAD)
        .mem_1to1(0x8_9ff4_0000, 0x10000, R | W | X | LOAD)
        .mem_1to1(0x8_a000_0000, 0x6000_0000, R | W | X | LOAD)
        .irqchip(0x0180_0000, 0, 32, [!0; 4])
        .irqchip(0x0180_0000, 0, 160, [!0; 4])
        .irqchip(0x0180_0000, 0, 288, [!0; 4])
        .irqchip(0x0180_0000, 0, 416, [!0; 4])
        .irqchip(0x0180_0000, 0, 544, [!0; 4])
        .irqchip(0x0180_0000, 0, 800, [!0; 4])
        .pci(j721e_ivshmem(0, 0, 0, 0))
        .pci(j721e_ivshmem(1 << 3, 4, 0, PROTO_VETH));
    let mut root = root;
    for sid in [0x0002, 0xf002] {
        root = root.stream_id(sid);
    }
    for base in [0x0100u32, 0x4100, 0x8100] {
        let n = if base == 0x0100 { 16 } else { 6 };
        for i in 0..n {
            root = root.stream_id(base + i);
        }
    }
    SystemBuilder::gicv3(
        root.build(),
        0x8_9fa0_0000,
        0x40_0000,
        0x0180_0000,
        0x0190_0000,
        25,
    )
    .flags(1)
    .debug_console(Console::uart_mmio(
        J721E_CON,
        0x0280_0000,
        0x1000,
        MDR_QUIRK,
    ))
    .pci(0x7600_0000, 0, true, 4)
    .iommu(iommu_type::SMMUV3, 0x3660_0000, 0x10_0000)
    .pvu(0x30f8_0000, 0x1000, 0x3600_0000, 0x40000)
    .pvu(0x30f8_1000, 0x1000, 0x3604_0000, 0x40000)
    .pvu(0x30f8_3000, 0x1000, 0x360c_0000, 0x40000)
    .build()
}

fn j721e_demo_shmem(b: CellBuilder) -> CellBuilder {
    b.mem_1to1(0x8_9fe0_0000, 0x10000, R | RS)
        .mem_1to1(0x8_9fe1_0000, 0x10000, R | W | RS)
        .mem_1to1(0x8_9fe2_0000, 0x10000, R | RS)
        .mem_1to1(0x8_9fe3_0000, 0x10000, R | W | RS)
}

/// configs/arm64/k3-j721e-evm-inmate-demo.c
pub fn j721e_inmate() -> Cell {
    let b = CellBuilder::new("inmate-demo", Arch::Arm64)
        .flags(cf::PASSIVE_COMMREG)
        .vpci_irq_base(195 - 32)
        .console(Console {
            divider: 0x1b,
            ..Console::uart_mmio(J721E_CON, 0x0281_0000, 0, MDR_QUIRK)
        })
        .cpus(0x2);
    j721e_demo_shmem(b)
        .mem_1to1(0x0281_0000, 0x10000, R | W | IO)
        .mem(0x8_9ff4_0000, 0, 0x10000, R | W | X | LOAD)
        .comm_region(0x8000_0000)
        .irqchip(0x0180_0000, 0, 160, [0, 0x8, 0, 0])
        .pci(j721e_ivshmem(0, 0, 1, 0))
        .build()
}

/// configs/arm64/k3-j721e-evm-linux-demo.c
pub fn j721e_linux() -> Cell {
    let io = R | W | IO;
    let b = CellBuilder::new("k3-j721e-evm-linux-demo", Arch::Arm64)
        .flags(cf::PASSIVE_COMMREG)
        .vpci_irq_base(195 - 32)
        .console(Console {
            divider: 0x1b,
            ..Console::uart_mmio(J721E_CON, 0x0281_0000, 0, 0)
        })
        .cpus(0x2);
    j721e_demo_shmem(b)
        .shmem_net_regions(0x8_9fe4_0000, 1)
        .mem_1to1(0x0010_0000, 0x20000, io | RS)
        .mem_1to1(0x0281_0000, 0x1000, io)
        .mem_1to1(0x04f8_0000, 0x1000, io | RS)
        .mem_1to1(0x04f8_8000, 0x1000, io | RS)
        .mem_1to1(0x0411_4000, 0x1000, io)
        .mem_1to1(0x0640_0000, 0x30000, io)
        .mem_1to1(0x0061_0000, 0x1000, io)
        .mem_1to1(0x0061_1000, 0x1000, io)
        .mem_1to1(0x3240_f000, 0x5000, io)
        .mem_1to1(0x3280_f000, 0x5000, io)
        .mem_1to1(0x32c0_f000, 0x5000, io)
        .mem(0x8_9ff4_0000, 0, 0x10000, R | W | X | LOAD)
        .mem_1to1(0x8_a000_0000, 0x6000_0000, RAM | LOAD)
        .comm_region(0x8000_0000)
        .irqchip(0x0180_0000, 0, 32, [0x8, 0x80, 0, 0x0200_4100])
        .irqchip(0x0180_0000, 0, 160, [0, 0x78, 0x2, 0])
        .irqchip(0x0180_0000, 0, 416, [0xffff_ff00, 0, 0, 0])
        .irqchip(0x0180_0000, 0, 544, [0, 0, 0, 0])
        .pci(j721e_ivshmem(0, 0, 1, 0))
        .pci(j721e_ivshmem(1 << 3, 4, 1, PROTO_VETH))
        .stream_id(0x0003)
        .stream_id(0xf003)
        .build()
}

/// Sets of cells that Jailhouse can run together, each with its name.
pub fn clean_sets() -> Vec<(&'static str, ConfigSet)> {
    let x = qemu_x86;
    vec![
        ("qemu-x86 alone", ConfigSet::new(x(), vec![])),
        ("qemu-arm64 alone", ConfigSet::new(qemu_arm64(), vec![])),
        (
            "qemu-x86 + apic + tiny",
            ConfigSet::new(x(), vec![apic_demo(), tiny_demo()]),
        ),
        (
            "qemu-x86 + apic + ioapic",
            ConfigSet::new(x(), vec![apic_demo(), ioapic_demo()]),
        ),
        (
            "qemu-x86 + apic + pci",
            ConfigSet::new(x(), vec![apic_demo(), pci_demo()]),
        ),
        (
            "qemu-x86 + apic + e1000",
            ConfigSet::new(x(), vec![apic_demo(), e1000_demo()]),
        ),
        ("qemu-x86 + smp", ConfigSet::new(x(), vec![smp_demo()])),
        (
            "qemu-x86 + ivshmem + linux",
            ConfigSet::new(x(), vec![ivshmem_demo(), linux_x86_demo()]),
        ),
        ("j721e alone", ConfigSet::new(j721e(), vec![])),
        (
            "j721e + inmate",
            ConfigSet::new(j721e(), vec![j721e_inmate()]),
        ),
        (
            "j721e + linux",
            ConfigSet::new(j721e(), vec![j721e_linux()]),
        ),
    ]
}

/// configs/arm64/qemu-arm64.c (QEMU virt, GICv3, 16 CPUs, virtual PCI host in domain 1).
pub fn qemu_arm64() -> SystemConfig {
    let intx = [0xffff_f000, 0, 0, 0, 0, 0];
    let root = CellBuilder::new("qemu-arm64", Arch::Arm64)
        .cpus(0xffff)
        .vpci_irq_base(128 - 32)
        .mem_1to1(0x7faf_0000, 0x1000, R)
        .mem_1to1(0x7faf_1000, 0x9000, R | W)
        .mem_1to1(0x7faf_a000, 0x2000, R | W)
        .mem_1to1(0x7faf_c000, 0x2000, R)
        .mem_1to1(0x7faf_e000, 0x2000, R)
        .shmem_net_regions(0x7fb0_0000, 0)
        .mem_1to1(0x0900_0000, 0x3700_0000, R | W | IO)
        .mem_1to1(0x4000_0000, 0x3fa1_0000, R | W | X)
        .mem_1to1(0x40_1000_0000, 0x1000_0000, R | W | IO)
        .irqchip(0x0800_0000, 0, 32, [0xffff_ffff; 4])
        .pci(PciDevice {
            bar_mask: intx,
            ..PciDevice::ivshmem(1, 0, 0, 0, 3, 0)
        })
        .pci(PciDevice {
            bar_mask: intx,
            ..PciDevice::ivshmem(1, 1 << 3, 5, 0, 2, PROTO_VETH)
        })
        .build();
    SystemBuilder::gicv3(root, 0x7fc0_0000, 0x40_0000, 0x0800_0000, 0x080a_0000, 25)
        .flags(1)
        .debug_console(Console::uart_mmio(0x0003, 0x0900_0000, 0x1000, 0))
        .pci(0x08e0_0000, 0, true, 1)
        .build()
}

/// Every config the support module builds: (file name, is_system, bytes).
pub fn all_configs() -> Vec<(&'static str, bool, Vec<u8>)> {
    use oxemu_jailhouse::{write_cell, write_system};
    let mut v = vec![
        ("qemu-x86.cell", true, write_system(&qemu_x86())),
        ("k3-j721e-evm.cell", true, write_system(&j721e())),
        ("qemu-arm64.cell", true, write_system(&qemu_arm64())),
    ];
    for (n, c) in [
        ("apic-demo.cell", apic_demo()),
        ("tiny-demo.cell", tiny_demo()),
        ("ioapic-demo.cell", ioapic_demo()),
        ("pci-demo.cell", pci_demo()),
        ("e1000-demo.cell", e1000_demo()),
        ("smp-demo.cell", smp_demo()),
        ("ivshmem-demo.cell", ivshmem_demo()),
        ("linux-x86-demo.cell", linux_x86_demo()),
        ("k3-j721e-evm-inmate-demo.cell", j721e_inmate()),
        ("k3-j721e-evm-linux-demo.cell", j721e_linux()),
    ] {
        v.push((n, false, write_cell(&c)));
    }
    v
}
