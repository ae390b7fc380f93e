//! No false positives on realistic config sets, and byte-exact round trips.

mod support;

use oxemu_jailhouse::{check, parse_cell, parse_system, write_cell, write_system, ParseOptions};

#[test]
fn realistic_board_sets_have_no_findings() {
    let mut failures = Vec::new();
    for (name, set) in support::clean_sets() {
        for f in check(&set) {
            failures.push(format!("{name}: {}", f.to_human()));
        }
    }
    assert!(
        failures.is_empty(),
        "unexpected findings:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_built_config_round_trips_byte_identically() {
    for (file, is_system, bytes) in support::all_configs() {
        let again = if is_system {
            write_system(
                &parse_system(&bytes, file, ParseOptions::default())
                    .unwrap()
                    .config,
            )
        } else {
            write_cell(
                &parse_cell(&bytes, file, ParseOptions::default())
                    .unwrap()
                    .config,
            )
        };
        assert_eq!(again, bytes, "{file} changed in a parse/write round trip");
    }
}

#[test]
fn parsed_configs_equal_the_built_ones() {
    let sys = support::qemu_x86();
    let parsed = parse_system(
        &write_system(&sys),
        "qemu-x86.cell",
        ParseOptions::default(),
    )
    .unwrap();
    assert_eq!(parsed.config, sys);
    assert!(parsed.warnings.is_empty());
    let cell = support::j721e_linux();
    assert_eq!(
        parse_cell(&write_cell(&cell), "linux.cell", ParseOptions::default())
            .unwrap()
            .config,
        cell
    );
}

#[test]
fn layout_sizes_match_cell_config_h() {
    // qemu-x86.c: header (488) + cpus (8) + 31 mem (32) + 1 irqchip (32)
    // + 13 pio (4) + 12 pci devices (56) + 16 caps (8)
    let bytes = write_system(&support::qemu_x86());
    assert_eq!(
        bytes.len(),
        488 + 8 + 31 * 32 + 32 + 13 * 4 + 12 * 56 + 16 * 8
    );
    assert_eq!(&bytes[..8], b"JHSYS\x00\x0e\x00");
    // apic-demo.c: desc (132) + cpus (8) + 2 mem + 1 cache (12) + 3 pio
    let cell = write_cell(&support::apic_demo());
    assert_eq!(cell.len(), 132 + 8 + 2 * 32 + 12 + 3 * 4);
    assert_eq!(&cell[..8], b"JHCLL\x00\x0e\x00");
    assert_eq!(&write_cell(&support::j721e_inmate())[..6], b"JHCLL\x02");
}

#[test]
fn j721e_inmate_and_linux_together_conflict_on_cpu_and_memory() {
    // Both demo cells of the J721E use CPU 1 and the same RAM: they are
    // alternatives, and running them together must be reported.
    let set = oxemu_jailhouse::ConfigSet::new(
        support::j721e(),
        vec![support::j721e_inmate(), support::j721e_linux()],
    );
    let rules: Vec<&str> = check(&set).iter().map(|f| f.rule).collect();
    assert!(rules.contains(&"cpu-overlap-between-cells"), "{rules:?}");
    assert!(rules.contains(&"mem-overlap-between-cells"), "{rules:?}");
    assert!(!rules.contains(&"root-cpu-starvation"));
}

/// Regenerates the fuzz seed corpus from the builder-made configs:
/// `cargo test -p oxemu-jailhouse --test boards -- --ignored write_fuzz_seed_corpus`.
#[test]
#[ignore = "writes files into fuzz/corpus; run by hand to regenerate the seeds"]
fn write_fuzz_seed_corpus() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/jailhouse_config");
    std::fs::create_dir_all(&dir).unwrap();
    let keep = [
        "qemu-x86.cell",
        "apic-demo.cell",
        "ivshmem-demo.cell",
        "linux-x86-demo.cell",
        "k3-j721e-evm.cell",
        "k3-j721e-evm-inmate-demo.cell",
    ];
    for (file, _, bytes) in support::all_configs() {
        if keep.contains(&file) {
            std::fs::write(dir.join(file), bytes).unwrap();
        }
    }
}
