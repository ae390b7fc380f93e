//! Opt-in cross-check against configs compiled from Jailhouse's own sources
//! (see NOTES.md). Run with
//! `scripts/compile-jailhouse-configs.sh JAILHOUSE_SRC DIR` and then
//! `OXEMU_JAILHOUSE_REAL_CONFIGS=DIR/x86 OXEMU_JAILHOUSE_REAL_CONFIGS_ARM64=DIR/arm64 \
//! cargo test -p oxemu-jailhouse --test real_jailhouse -- --ignored`.

mod support;

use oxemu_jailhouse::{
    check, parse_cell, parse_system, write_cell, write_system, ConfigSet, ParseOptions,
};

fn dir() -> std::path::PathBuf {
    std::env::var_os("OXEMU_JAILHOUSE_REAL_CONFIGS")
        .expect("set OXEMU_JAILHOUSE_REAL_CONFIGS to the directory of compiled .cell files")
        .into()
}

#[test]
#[ignore = "needs configs compiled from Jailhouse sources"]
fn builder_mirrors_are_byte_identical_to_compiled_x86_configs() {
    let d = dir();
    let opts = ParseOptions::default();
    let real_sys = std::fs::read(d.join("qemu-x86.cell")).unwrap();
    assert_eq!(
        write_system(
            &parse_system(&real_sys, "qemu-x86.cell", opts)
                .unwrap()
                .config
        ),
        real_sys
    );
    assert_eq!(
        write_system(&support::qemu_x86()),
        real_sys,
        "qemu-x86 mirror differs"
    );
    let cells = [
        ("apic-demo", support::apic_demo()),
        ("tiny-demo", support::tiny_demo()),
        ("ioapic-demo", support::ioapic_demo()),
        ("pci-demo", support::pci_demo()),
        ("e1000-demo", support::e1000_demo()),
        ("smp-demo", support::smp_demo()),
        ("ivshmem-demo", support::ivshmem_demo()),
        ("linux-x86-demo", support::linux_x86_demo()),
    ];
    let mut parsed = Vec::new();
    for (name, built) in cells {
        let file = format!("{name}.cell");
        let real = std::fs::read(d.join(&file)).unwrap();
        let cell = parse_cell(&real, &file, opts).unwrap().config;
        assert_eq!(write_cell(&cell), real, "{name} round trip");
        assert_eq!(write_cell(&built), real, "{name} mirror differs");
        parsed.push(cell);
    }
    let sys = parse_system(&real_sys, "qemu-x86.cell", opts)
        .unwrap()
        .config;
    let set = ConfigSet::new(sys, vec![parsed[6].clone(), parsed[7].clone()]);
    assert_eq!(check(&set), vec![]);
}

/// The J721E demo-cell mirrors are unmodified, so they must match Jailhouse's
/// compiled files byte for byte; the root-cell mirror deliberately splits the
/// peripheral windows around the GIC and IOMMUs, so instead the checker must
/// report exactly those mappings (and the unused trailing array entries) on
/// the upstream root cell.
#[test]
#[ignore = "needs configs compiled from Jailhouse sources"]
fn j721e_mirrors_match_compiled_arm64_configs() {
    let d = std::env::var_os("OXEMU_JAILHOUSE_REAL_CONFIGS_ARM64")
        .expect("set OXEMU_JAILHOUSE_REAL_CONFIGS_ARM64 to the arm64 directory")
        .into_string()
        .unwrap();
    let d = std::path::Path::new(&d);
    for (name, built) in [
        ("k3-j721e-evm-inmate-demo", support::j721e_inmate()),
        ("k3-j721e-evm-linux-demo", support::j721e_linux()),
    ] {
        let real = std::fs::read(d.join(format!("{name}.cell"))).unwrap();
        assert_eq!(write_cell(&built), real, "{name} mirror differs");
    }
    let real = std::fs::read(d.join("qemu-arm64.cell")).unwrap();
    assert_eq!(
        write_system(&support::qemu_arm64()),
        real,
        "qemu-arm64 mirror differs"
    );
    let real = std::fs::read(d.join("k3-j721e-evm.cell")).unwrap();
    let sys = parse_system(&real, "k3-j721e-evm.cell", ParseOptions::default())
        .unwrap()
        .config;
    assert_eq!(write_system(&sys), real);
    let mut rules: Vec<&str> = check(&ConfigSet::new(sys, vec![]))
        .iter()
        .map(|f| f.rule)
        .collect();
    rules.sort_unstable();
    rules.dedup();
    assert_eq!(
        rules,
        ["mem-overlap-gic", "mem-overlap-iommu", "zero-entry"]
    );
}
