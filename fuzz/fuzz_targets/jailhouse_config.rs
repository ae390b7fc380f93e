//! Parses arbitrary bytes as a Jailhouse system config and as a cell config,
//! runs the checker on whatever parses, and checks that writing a strictly
//! parsed config reproduces the input bytes. Strictly parsed configs also
//! go through the C decompiler, which must either refuse or produce text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oxemu_jailhouse::builder::{CellBuilder, SystemBuilder};
use oxemu_jailhouse::model::{mem, Arch};
use oxemu_jailhouse::{
    check, parse_cell, parse_system, write_cell, write_system, ConfigSet, ParseOptions,
};

const STRICT: ParseOptions = ParseOptions { lenient: false };
const LENIENT: ParseOptions = ParseOptions { lenient: true };

fn host_system(arch: Arch) -> oxemu_jailhouse::model::SystemConfig {
    let root = CellBuilder::new("root", arch)
        .cpus(0xff)
        .mem_1to1(0, 0x8000_0000, mem::READ | mem::WRITE)
        .build();
    if arch.is_arm() {
        SystemBuilder::gicv3(root, 0x7fc0_0000, 0x40_0000, 0x0800_0000, 0x080a_0000, 25).build()
    } else {
        SystemBuilder::x86(root, 0x3a00_0000, 0x60_0000, 0x608, 256)
            .pci(0xb000_0000, 0xff, false, 0)
            .build()
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = parse_system(data, "fuzz", STRICT) {
        assert!(p.warnings.is_empty());
        assert_eq!(write_system(&p.config), data);
        let _ = oxemu_jailhouse::decompile::system_to_c(&p.config);
    }
    if let Ok(p) = parse_system(data, "fuzz", LENIENT) {
        let _ = check(&ConfigSet::new(p.config, vec![]));
    }
    if let Ok(p) = parse_cell(data, "fuzz", STRICT) {
        assert_eq!(write_cell(&p.config), data);
        let _ = oxemu_jailhouse::decompile::cell_to_c(&p.config);
    }
    if let Ok(p) = parse_cell(data, "fuzz", LENIENT) {
        // Twice, so that every between-cells rule sees a conflicting peer.
        let set = ConfigSet::new(host_system(p.config.arch), vec![p.config.clone(), p.config]);
        let _ = check(&set);
    }
});
