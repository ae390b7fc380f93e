//! One test per rule: the clean set passes, and a set mutated to break exactly
//! that rule reports exactly that finding at the right cell, index and address.

mod support;

use oxemu_jailhouse::builder::{CellBuilder, SystemBuilder};
use oxemu_jailhouse::model::*;
use oxemu_jailhouse::{check, ConfigSet, Severity, RULES};
use support::check::*;
use support::*;

#[test]
fn every_rule_has_a_test_that_checks_its_json_form() {
    // Every rule test goes through assert_at, which checks the JSON schema;
    // trailing-data comes from the parser and is checked in tests/cli.rs.
    let src = [include_str!("rules.rs"), include_str!("ivshmem_rules.rs")].concat();
    for r in RULES.iter().filter(|r| r.id != "trailing-data") {
        let call = format!("\"{}\",", r.id);
        let tested = src.match_indices(&call).any(|(i, _)| {
            let before = &src[..i];
            let last_call = before.rfind("assert_at(").unwrap_or(0);
            before[last_call..].len() < 40
        });
        assert!(tested, "no assert_at test for rule {}", r.id);
    }
}

fn apic_mem(set: &mut ConfigSet, phys: u64, virt: u64, size: u64, flags: u64) {
    set.cells[0].memory_regions.push(MemRegion {
        phys_start: phys,
        virt_start: virt,
        size,
        flags,
    });
}

#[test]
fn arch_mismatch_of_a_cell_is_reported() {
    let f = only_finding(x86(vec![apic_demo(), tiny_demo()]), |s| {
        s.cells[1].arch = Arch::Arm64
    });
    assert_at(&f, "arch-mismatch", "tiny-demo", None, None, None);
}

#[test]
fn arch_mismatch_stops_the_check() {
    // An arm64 inmate next to qemu-x86: its GIC distributor would read as an
    // IOAPIC pin claim and its RAM as unloadable. Only the mismatch counts.
    let mut set = x86(vec![apic_demo()]);
    set.cells.push(j721e_inmate());
    set.cell_files = vec!["apic-demo.cell".into(), "inmate-demo.cell".into()];
    set.system_file = "qemu-x86.cell".into();
    let err = set.verify_arch().unwrap_err();
    assert_eq!(
        err.to_string(),
        "inmate-demo.cell: cell inmate-demo is built for arm64 (architecture byte at offset 5), \
         but the system config qemu-x86.cell is for x86; Jailhouse refuses to create such a cell"
    );
    let f = check(&set);
    assert_eq!(f.len(), 1, "{}", human(&f));
    assert_at(&f[0], "arch-mismatch", "inmate-demo", None, None, None);
}

#[test]
fn physical_overlap_inside_a_cell_is_reported() {
    let f = only_finding(x86(vec![apic_demo(), tiny_demo()]), |s| {
        apic_mem(s, 0x3ef8_0000, 0x20_0000, 0x1000, R | W)
    });
    assert_at(
        &f,
        "mem-phys-overlap-in-cell",
        "apic-demo",
        Some("memory_regions"),
        Some(2),
        Some(0x3ef8_0000),
    );
}

#[test]
fn virtual_overlap_inside_a_cell_is_reported() {
    let f = only_finding(x86(vec![apic_demo(), tiny_demo()]), |s| {
        apic_mem(s, 0xfebd_4000, 0x8_0000, 0x1000, R | W)
    });
    assert_at(
        &f,
        "mem-virt-overlap-in-cell",
        "apic-demo",
        Some("memory_regions"),
        Some(2),
        Some(0x8_0000),
    );
}

#[test]
fn hypervisor_memory_in_a_cell_is_reported() {
    let f = only_finding(x86(vec![apic_demo()]), |s| {
        apic_mem(s, 0x3a00_0000, 0x20_0000, 0x1000, R | W)
    });
    assert_at(
        &f,
        "mem-overlap-hypervisor",
        "apic-demo",
        Some("memory_regions"),
        Some(2),
        Some(0x3a00_0000),
    );
}

#[test]
fn mmconfig_window_in_a_cell_is_reported() {
    let f = only_finding(x86(vec![apic_demo()]), |s| {
        apic_mem(s, 0xb010_0000, 0x20_0000, 0x1000, R | W)
    });
    assert_at(
        &f,
        "mem-overlap-mmconfig",
        "apic-demo",
        Some("memory_regions"),
        Some(2),
        Some(0xb010_0000),
    );
}

#[test]
fn iommu_mmio_in_a_cell_is_reported() {
    let f = only_finding(x86(vec![apic_demo()]), |s| {
        apic_mem(s, 0xfed9_0000, 0x20_0000, 0x1000, R | W)
    });
    assert_at(
        &f,
        "mem-overlap-iommu",
        "apic-demo",
        Some("memory_regions"),
        Some(2),
        Some(0xfed9_0000),
    );
}

#[test]
fn xapic_page_in_a_cell_is_reported() {
    let f = only_finding(x86(vec![apic_demo()]), |s| {
        apic_mem(s, 0xfee0_0000, 0x20_0000, 0x1000, R | W)
    });
    assert_at(
        &f,
        "mem-overlap-xapic",
        "apic-demo",
        Some("memory_regions"),
        Some(2),
        Some(0xfee0_0000),
    );
}

#[test]
fn ioapic_page_in_a_cell_is_reported() {
    let f = only_finding(x86(vec![apic_demo()]), |s| {
        apic_mem(s, 0xfec0_0000, 0x20_0000, 0x1000, R | W)
    });
    assert_at(
        &f,
        "mem-overlap-ioapic",
        "apic-demo",
        Some("memory_regions"),
        Some(2),
        Some(0xfec0_0000),
    );
}

#[test]
fn gicv3_redistributor_of_a_later_cpu_in_a_cell_is_reported() {
    // The frame of CPU 1 (gicr_base + 0x20000): Jailhouse's checker only looks at CPU 0's.
    let set = ConfigSet::new(j721e(), vec![j721e_inmate()]);
    let f = only_finding(set, |s| {
        s.cells[0].memory_regions.push(MemRegion {
            phys_start: 0x0192_0000,
            virt_start: 0x0192_0000,
            size: 0x10000,
            flags: R | W | IO,
        })
    });
    assert_at(
        &f,
        "mem-overlap-gic",
        "inmate-demo",
        Some("memory_regions"),
        Some(7),
        Some(0x0192_0000),
    );
    assert!(
        f.details
            .iter()
            .any(|d| d.contains("GICR frames of 2 CPUs")),
        "{}",
        f.to_human()
    );
}

#[test]
fn gicv3_distributor_in_the_root_cell_is_reported() {
    // The unmodified J721E config maps the GIC through its "Most peripherals" window.
    let f = only_finding(ConfigSet::new(j721e(), vec![]), |s| {
        s.system.root_cell.memory_regions.push(MemRegion {
            phys_start: 0x0180_0000,
            virt_start: 0x0180_0000,
            size: 0x1000,
            flags: R | W | IO,
        })
    });
    assert_at(
        &f,
        "mem-overlap-gic",
        "k3-j721e-evm",
        Some("memory_regions"),
        Some(40),
        Some(0x0180_0000),
    );
}

fn gicv2_system(extra: Option<MemRegion>) -> SystemConfig {
    let mut root = CellBuilder::new("Ultra96", Arch::Arm64)
        .cpus(0xf)
        .mem_1to1(0, 0x7fa1_0000, R | W | X)
        .mem_1to1(0xfd00_0000, 0x80_0000, R | W | IO)
        .irqchip(0xf901_0000, 0, 32, [!0; 4])
        .build();
    root.memory_regions.extend(extra);
    SystemBuilder::gicv2(
        root,
        0x7fc0_0000,
        0x40_0000,
        [0xf901_0000, 0xf902_f000, 0xf904_0000, 0xf906_f000],
        25,
    )
    .iommu(iommu_type::ARM_MMU500, 0xfd80_0000, 0x20000)
    .build()
}

#[test]
fn gicv2_cpu_interface_in_a_cell_is_reported() {
    let set = ConfigSet::new(gicv2_system(None), vec![]);
    let f = only_finding(set, |s| {
        let m = MemRegion {
            phys_start: 0xf902_0000,
            virt_start: 0xf902_0000,
            size: 0x10000,
            flags: R | W | IO,
        };
        s.system = gicv2_system(Some(m));
    });
    assert_at(
        &f,
        "mem-overlap-gic",
        "Ultra96",
        Some("memory_regions"),
        Some(2),
        Some(0xf902_0000),
    );
    assert!(f.message.contains("GICC"), "{}", f.to_human());
}

#[test]
fn unknown_gic_version_is_reported() {
    let f = only_finding(ConfigSet::new(j721e(), vec![]), |s| {
        if let ArchPlatform::Arm(a) = &mut s.system.platform.arch {
            a.gic_version = 4;
        }
    });
    assert_at(&f, "gic-version-invalid", "k3-j721e-evm", None, None, None);
}

#[test]
fn root_cell_left_without_cpus_is_reported() {
    let f = only_finding(x86(vec![smp_demo()]), |s| {
        s.cells[0].cpu_set = 0xfu64.to_le_bytes().to_vec()
    });
    assert_at(
        &f,
        "root-cpu-starvation",
        "QEMU-VM",
        Some("cpu_set"),
        None,
        None,
    );
    assert_eq!(f.other_cell.as_deref(), Some("smp-demo"));
}

#[test]
fn root_cpu_starvation_names_the_cell_taking_the_last_cpu() {
    // qemu-x86 (CPUs 0-3) with apic-demo (CPU 3) and tiny-demo (CPU 2) is
    // fine; a linux-x86-demo moved to CPUs 0 and 1 takes the last two.
    let f = only_finding(x86(vec![apic_demo(), tiny_demo()]), |s| {
        let mut linux = linux_x86_demo();
        linux.cpu_set = 0b0011u64.to_le_bytes().to_vec();
        linux.memory_regions.clear();
        linux.pci_devices.clear();
        linux.pci_caps.clear();
        linux.irqchips.clear();
        linux.cache_regions.clear();
        s.cells.push(linux);
    });
    assert_at(
        &f,
        "root-cpu-starvation",
        "QEMU-VM",
        Some("cpu_set"),
        None,
        None,
    );
    assert_eq!(
        f.message,
        "root cell QEMU-VM is left without a CPU: cell linux-x86-demo takes its last CPU 0, 1"
    );
    assert_eq!(f.other_cell.as_deref(), Some("linux-x86-demo"));
    assert_eq!(f.other_array, Some("cpu_set"));
    assert_eq!(f.other_index, Some(0));
}

#[test]
fn cpu_claimed_by_two_non_root_cells_is_reported() {
    let f = only_finding(x86(vec![apic_demo(), tiny_demo()]), |s| {
        s.cells[1].cpu_set = 0xcu64.to_le_bytes().to_vec()
    });
    assert_at(
        &f,
        "cpu-overlap-between-cells",
        "tiny-demo",
        Some("cpu_set"),
        Some(3),
        None,
    );
}

#[test]
fn cpu_missing_from_the_root_cell_is_reported() {
    let f = only_finding(x86(vec![apic_demo()]), |s| {
        s.cells[0].cpu_set = 0x10u64.to_le_bytes().to_vec()
    });
    assert_at(
        &f,
        "cpu-not-in-root",
        "apic-demo",
        Some("cpu_set"),
        Some(4),
        None,
    );
}

#[test]
fn memory_shared_by_two_non_root_cells_without_declaration_is_reported() {
    let f = only_finding(x86(vec![apic_demo(), tiny_demo()]), |s| {
        s.cells[1].memory_regions[0].phys_start = 0x3ef0_0000
    });
    assert_at(
        &f,
        "mem-overlap-between-cells",
        "tiny-demo",
        Some("memory_regions"),
        Some(0),
        Some(0x3ef0_0000),
    );
}

#[test]
fn memory_declared_rootshared_in_both_cells_may_be_shared() {
    let mut set = x86(vec![apic_demo(), tiny_demo()]);
    for c in &mut set.cells {
        c.memory_regions.push(MemRegion {
            phys_start: 0x3f0f_0000,
            virt_start: 0x20_0000,
            size: 0x1000,
            flags: R | RS,
        });
    }
    assert_eq!(check(&set), vec![]);
    // Without ROOTSHARED on one side it is a conflict.
    set.cells[1].memory_regions[2].flags = R;
    let f = check(&set);
    assert_eq!(f.len(), 1, "{}", human(&f));
    assert_at(
        &f[0],
        "mem-overlap-between-cells",
        "tiny-demo",
        Some("memory_regions"),
        Some(2),
        Some(0x3f0f_0000),
    );
}

#[test]
fn root_cell_ram_handed_to_a_non_root_cell_is_not_a_finding() {
    // apic-demo's RAM lies inside the root cell's "RAM (inmates)" region.
    let set = x86(vec![apic_demo()]);
    let root_ram = &set.system.root_cell.memory_regions[18];
    let cell_ram = &set.cells[0].memory_regions[0];
    assert!(
        root_ram.phys_start <= cell_ram.phys_start
            && cell_ram.phys_start + cell_ram.size <= root_ram.phys_start + root_ram.size
    );
    assert_eq!(check(&set), vec![]);
}

#[test]
fn msix_table_mapped_into_the_root_cell_is_reported() {
    let f = only_finding(x86(vec![]), |s| {
        s.system.root_cell.memory_regions.push(MemRegion {
            phys_start: 0xfea9_0000,
            virt_start: 0xfea9_0000,
            size: 0x1000,
            flags: R | W,
        })
    });
    assert_at(
        &f,
        "msix-mapped",
        "QEMU-VM",
        Some("memory_regions"),
        Some(31),
        Some(0xfea9_0000),
    );
    assert_eq!(
        f.message,
        "MSI-X region of PCI device 00:02.0 directly mapped into QEMU-VM"
    );
}

#[test]
fn msix_table_mapped_into_a_non_root_cell_is_reported() {
    let f = only_finding(x86(vec![apic_demo()]), |s| {
        apic_mem(s, 0xfea9_b000, 0xfea9_b000, 0x1000, R | W)
    });
    assert_at(
        &f,
        "msix-mapped",
        "apic-demo",
        Some("memory_regions"),
        Some(2),
        Some(0xfea9_b000),
    );
    assert_eq!(
        f.message,
        "MSI-X region of PCI device 00:1f.7 directly mapped into apic-demo"
    );
}

#[test]
fn pci_config_ports_passed_through_are_reported() {
    let f = only_finding(x86(vec![apic_demo()]), |s| {
        s.cells[0].pio_regions.push(PioRegion {
            base: 0xcf8,
            length: 8,
        })
    });
    assert_at(
        &f,
        "pio-pci-config",
        "apic-demo",
        Some("pio_regions"),
        Some(3),
        Some(0xcf8),
    );
}

#[test]
fn pci_config_data_ports_alone_are_named_as_such() {
    // A cell granting only the data ports 0xcfc-0xcff (PIO_RANGE(0xcfc, 4)).
    let f = only_finding(x86(vec![apic_demo()]), |s| {
        s.cells[0].pio_regions.push(PioRegion {
            base: 0xcfc,
            length: 4,
        })
    });
    assert_at(
        &f,
        "pio-pci-config",
        "apic-demo",
        Some("pio_regions"),
        Some(3),
        Some(0xcfc),
    );
    assert_eq!(
        f.message,
        "PCI config ports 0xcfc-0xcff passed through to apic-demo"
    );
    assert!(
        !f.to_human().contains("0xcf8-0xcff passed"),
        "{}",
        f.to_human()
    );
}

#[test]
fn pit_passed_through_to_a_non_root_cell_is_reported() {
    let f = only_finding(x86(vec![apic_demo()]), |s| {
        s.cells[0].pio_regions.push(PioRegion {
            base: 0x40,
            length: 4,
        })
    });
    assert_at(
        &f,
        "pio-critical-port",
        "apic-demo",
        Some("pio_regions"),
        Some(3),
        Some(0x40),
    );
    assert!(f.message.contains("PIT"));
}

#[test]
fn irq_pin_claimed_by_two_non_root_cells_is_reported() {
    let f = only_finding(x86(vec![apic_demo(), ioapic_demo()]), |s| {
        s.cells[0].irqchips.push(Irqchip {
            address: 0xfec0_0000,
            id: 0xff01,
            pin_base: 0,
            pin_bitmap: [1 << 9, 0, 0, 0],
        })
    });
    assert_at(
        &f,
        "irqchip-pin-overlap-between-cells",
        "ioapic-demo",
        Some("irqchips"),
        Some(0),
        Some(0xfec0_0000),
    );
    assert!(f.message.contains("pin 9"));
}

#[test]
fn pci_device_in_two_non_root_cells_is_reported() {
    let f = only_finding(x86(vec![apic_demo(), pci_demo()]), |s| {
        s.cells[0].pci_devices.push(PciDevice::physical(0, 0x00d8))
    });
    assert_at(
        &f,
        "pci-device-in-two-cells",
        "pci-demo",
        Some("pci_devices"),
        Some(0),
        None,
    );
    assert!(f.message.contains("00:1b.0"));
}

#[test]
fn overlapping_cache_partitions_are_reported() {
    let f = only_finding(x86(vec![apic_demo(), tiny_demo()]), |s| {
        s.cells[1].cache_regions[0].start = 1
    });
    assert_at(
        &f,
        "cache-overlap-between-cells",
        "tiny-demo",
        Some("cache_regions"),
        Some(0),
        Some(1),
    );
}

fn arm_pair(system: SystemConfig, sid_a: u32, sid_b: u32) -> ConfigSet {
    let a = CellBuilder::new("cell-a", Arch::Arm64)
        .cpus(0x2)
        .stream_id(sid_a)
        .build();
    let b = CellBuilder::new("cell-b", Arch::Arm64)
        .cpus(0x4)
        .stream_id(sid_b)
        .build();
    ConfigSet::new(system, vec![a, b])
}

#[test]
fn stream_id_claimed_by_two_non_root_cells_is_reported() {
    let mut sys = j721e();
    sys.root_cell.cpu_set = 0x7u64.to_le_bytes().to_vec();
    let f = only_finding(arm_pair(sys, 0x0100, 0x0101), |s| {
        s.cells[1].stream_ids[0] = 0x0100
    });
    assert_at(
        &f,
        "stream-id-conflict",
        "cell-b",
        Some("stream_ids"),
        Some(0),
        Some(0x0100),
    );
}

#[test]
fn mmu500_stream_ids_collide_through_their_masks() {
    // id 0x871 with mask_out 0x1 also matches 0x870.
    let f = only_finding(arm_pair(gicv2_system(None), 0x870, 0x872), |s| {
        s.cells[1].stream_ids[0] = 0x871 | 0x1 << 16
    });
    assert_at(
        &f,
        "stream-id-conflict",
        "cell-b",
        Some("stream_ids"),
        Some(0),
        Some(0x1_0871),
    );
    // Stream ids read as MMU-500 id/mask_out, not as the raw union value.
    assert_eq!(
        f.message,
        "stream id 0x871/0x1 (MMU-500 id/mask_out) of cell-b is also claimed by cell-a"
    );
    assert_eq!(
        f.details,
        vec!["cell-a: stream_ids[0] = 0x870/0x0".to_string()]
    );
    assert_eq!(f.other_cell.as_deref(), Some("cell-a"));
    assert_eq!(
        (f.other_array, f.other_index),
        (Some("stream_ids"), Some(0))
    );
}

#[test]
fn all_zero_array_entry_is_a_warning() {
    let f = only_finding(x86(vec![apic_demo()]), |s| {
        s.cells[0].pio_regions.push(PioRegion::default())
    });
    assert_at(
        &f,
        "zero-entry",
        "apic-demo",
        Some("pio_regions"),
        Some(3),
        None,
    );
    assert_eq!(f.severity, Severity::Warning);
}

#[test]
fn zero_memory_region_outside_ivshmem_sets_is_a_warning() {
    let f = only_finding(x86(vec![apic_demo()]), |s| {
        s.cells[0].memory_regions.push(MemRegion::default())
    });
    assert_at(
        &f,
        "zero-entry",
        "apic-demo",
        Some("memory_regions"),
        Some(2),
        None,
    );
}

#[test]
fn pci_caps_beyond_the_array_are_reported() {
    let f = only_finding(x86(vec![apic_demo(), pci_demo()]), |s| {
        s.cells[1].pci_devices[0].num_caps = 2
    });
    assert_at(
        &f,
        "pci-caps-out-of-range",
        "pci-demo",
        Some("pci_devices"),
        Some(0),
        None,
    );
}

#[test]
fn shmem_regions_beyond_the_array_are_reported() {
    let set = x86(vec![ivshmem_demo(), linux_x86_demo()]);
    let f = only_finding(set, |s| s.cells[0].pci_devices[0].shmem_regions_start = 5);
    assert_at(
        &f,
        "shmem-regions-out-of-range",
        "ivshmem-demo",
        Some("pci_devices"),
        Some(0),
        None,
    );
}

#[test]
fn unconfigured_iommu_unit_is_reported() {
    let f = only_finding(x86(vec![apic_demo(), pci_demo()]), |s| {
        s.cells[1].pci_devices[0].iommu = 1
    });
    assert_at(
        &f,
        "iommu-index-out-of-range",
        "pci-demo",
        Some("pci_devices"),
        Some(0),
        None,
    );
}

#[test]
fn loadable_region_outside_root_memory_is_reported() {
    let f = only_finding(x86(vec![apic_demo()]), |s| {
        s.cells[0].memory_regions[0].phys_start = 0x4000_0000
    });
    assert_at(
        &f,
        "loadable-unreachable",
        "apic-demo",
        Some("memory_regions"),
        Some(0),
        Some(0x4000_0000),
    );
}

#[test]
fn loadable_region_partly_outside_root_memory_is_reported() {
    // The root cell's memory ends at 0x40000000 (ACPI tables are the last
    // region); a loadable region crossing that end is only partly reachable.
    let f = only_finding(x86(vec![apic_demo()]), |s| {
        s.cells[0].memory_regions[0].phys_start = 0x3ffd_0000
    });
    assert_at(
        &f,
        "loadable-unreachable",
        "apic-demo",
        Some("memory_regions"),
        Some(0),
        Some(0x3ffd_0000),
    );
    assert!(f.details[1].contains("0x40000000"), "{}", f.to_human());
}

#[test]
fn every_rule_id_is_unique_and_kebab_case() {
    for (i, r) in RULES.iter().enumerate() {
        assert!(
            r.id.chars()
                .all(|c| c.is_ascii_lowercase() || c == '-' || c.is_ascii_digit()),
            "{}",
            r.id
        );
        assert!(
            RULES[i + 1..].iter().all(|o| o.id != r.id),
            "duplicate {}",
            r.id
        );
    }
}

#[test]
fn duplicate_cell_name_is_reported() {
    let f = only_finding(x86(vec![apic_demo(), tiny_demo()]), |s| {
        s.cells[1].name_raw = name_field("apic-demo")
    });
    assert_at(&f, "cell-name-duplicate", "apic-demo", None, None, None);
}
