//! Crafted configs with tens of thousands of entries are checked in
//! near-linear time (each check below would take hours if a rule compared
//! all pairs), and the number of findings per rule stays bounded.

mod support;

use oxemu_jailhouse::model::*;
use oxemu_jailhouse::{check, parse_cell, write_cell, ConfigSet, ParseOptions};

const N: usize = 20_000;

fn crowded_cell(name: &str, cpus: u64) -> Cell {
    let mut c = oxemu_jailhouse::builder::CellBuilder::new(name, Arch::X86)
        .cpus(cpus)
        .build();
    // Nested regions: every pair overlaps physically and virtually.
    c.memory_regions = (0..N as u64)
        .map(|i| MemRegion {
            phys_start: 0x4000_0000 + i * 0x1000,
            virt_start: i * 0x1000,
            size: 0x1000_0000,
            flags: 3,
        })
        .collect();
    c.irqchips = (0..N as u64)
        .map(|i| Irqchip {
            address: 0xfec0_0000 + (i % 64) * 0x1000,
            id: 0,
            pin_base: 0,
            pin_bitmap: [!0; 4],
        })
        .collect();
    c.cache_regions = (0..N as u32)
        .map(|i| CacheRegion {
            start: i % 20,
            size: 4,
            kind: CACHE_L3,
            padding: 0,
            flags: 0,
        })
        .collect();
    c.stream_ids = (0..N as u32)
        .map(|i| (i % 0x8000) | ((i % 7) << 16))
        .collect();
    c.pci_devices = (0..N as u16)
        .map(|i| PciDevice::ivshmem(0, i % 8, 0, (i % 200) as u8, 4, 0))
        .collect();
    c.pio_regions = (0..N as u16)
        .map(|i| PioRegion { base: i, length: 8 })
        .collect();
    c
}

#[test]
fn huge_crafted_cells_are_checked_without_quadratic_blowup() {
    let a = crowded_cell("crowded-a", 0x2);
    let b = crowded_cell("crowded-b", 0x4);
    // Also through the parser: the counts are honest, so it must accept it.
    let bytes = write_cell(&a);
    assert_eq!(
        parse_cell(&bytes, "a.cell", ParseOptions::default())
            .unwrap()
            .config,
        a
    );
    let mut sys = support::qemu_x86();
    sys.platform.iommu_units[1] = IommuUnit {
        kind: iommu_type::ARM_MMU500,
        base: 0x1_0000_0000,
        size: 0x1000,
        extra: [0; 12],
    };
    let findings = check(&ConfigSet::new(sys, vec![a, b]));
    let count = |rule: &str| findings.iter().filter(|f| f.rule == rule).count();
    assert!(count("mem-phys-overlap-in-cell") > 0 && count("mem-phys-overlap-in-cell") <= 2 * 256);
    assert!(count("mem-overlap-between-cells") > 0 && count("mem-overlap-between-cells") <= 256);
    assert!(count("irqchip-pin-overlap-between-cells") > 0);
    assert!(
        count("cache-overlap-between-cells") > 0 && count("cache-overlap-between-cells") <= 256
    );
    assert!(count("stream-id-conflict") > 0);
    assert!(count("ivshmem-peer-mismatch") > 0);
}
