//! `config dump --format=c`: binary -> C -> gcc/objcopy (Jailhouse's
//! configs/Makefile recipe) -> the same bytes, for every config the tests
//! build (qemu-x86 with all its demo cells, qemu-arm64, the TI J721E board
//! with its inmate and Linux cells) and for crafted corner cases.
//!
//! The C is compiled against `tests/c_headers`, a minimal stand-in for
//! Jailhouse's headers (layouts and constant names only), so no network or
//! Jailhouse checkout is needed. Needs gcc and objcopy; the tests say so and
//! skip only when gcc itself is missing.

mod support;

use oxemu_jailhouse::decompile::{cell_to_c, system_to_c};
use oxemu_jailhouse::model::*;
use oxemu_jailhouse::{parse_cell, parse_system, write_cell, write_system, ParseOptions};
use std::path::Path;
use std::process::Command;

fn have_gcc() -> bool {
    let ok = Command::new("gcc").arg("--version").output().is_ok();
    if !ok {
        eprintln!("SKIPPED: gcc is not installed; the C round trip needs gcc and objcopy");
    }
    ok
}

/// Compiles `src` as Jailhouse's configs/Makefile does and returns the binary.
fn compile(dir: &Path, name: &str, src: &str) -> Vec<u8> {
    let inc = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/c_headers");
    let c = dir.join(format!("{name}.c"));
    let o = dir.join(format!("{name}.o"));
    let cell = dir.join(format!("{name}.cell"));
    std::fs::write(&c, src).unwrap();
    let out = Command::new("gcc")
        .args([
            "-c",
            "-O2",
            "-Werror",
            "-Wall",
            "-Wextra",
            "-D__LINUX_COMPILER_TYPES_H",
            "-I",
            inc,
        ])
        .arg(&c)
        .arg("-o")
        .arg(&o)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gcc failed on {name}:\n{}\n--- source ---\n{src}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("objcopy")
        .args(["-O", "binary", "--remove-section=.note.gnu.property"])
        .arg(&o)
        .arg(&cell)
        .output()
        .expect("objcopy (binutils) is installed next to gcc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&cell).unwrap()
}

fn round_trip(dir: &Path, name: &str, is_system: bool, bytes: &[u8]) {
    let opts = ParseOptions::default();
    let src = if is_system {
        system_to_c(&parse_system(bytes, name, opts).unwrap().config).unwrap()
    } else {
        cell_to_c(&parse_cell(bytes, name, opts).unwrap().config).unwrap()
    };
    let back = compile(dir, name.trim_end_matches(".cell"), &src);
    if back != bytes {
        let at = back.iter().zip(bytes).position(|(a, b)| a != b);
        panic!(
            "{name}: C round trip differs (sizes {} vs {}, first difference at {at:?})\n{src}",
            back.len(),
            bytes.len()
        );
    }
}

#[test]
fn every_built_config_round_trips_through_c() {
    if !have_gcc() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let all = support::all_configs();
    assert!(all.len() >= 13);
    for (name, is_system, bytes) in all {
        round_trip(d.path(), name, is_system, &bytes);
    }
}

#[test]
fn output_is_in_jailhouse_style() {
    let src = system_to_c(&support::qemu_x86()).unwrap();
    for want in [
        "#include <jailhouse/types.h>\n#include <jailhouse/cell-config.h>\n",
        "struct {\n\tstruct jailhouse_system header;\n\t__u64 cpus[1];\n",
        "} __attribute__((packed)) config = {\n\t.header = {\n",
        ".signature = JAILHOUSE_SYSTEM_SIGNATURE,",
        ".architecture = JAILHOUSE_X86,",
        ".revision = JAILHOUSE_CONFIG_REVISION,",
        ".cpu_set_size = sizeof(config.cpus),",
        ".num_memory_regions = ARRAY_SIZE(config.mem_regions),",
        ".name = \"QEMU-VM\",",
        "JAILHOUSE_MEM_READ | JAILHOUSE_MEM_WRITE",
        "PIO_RANGE(",
        ".type = JAILHOUSE_PCI_TYPE_IVSHMEM,",
        ".type = JAILHOUSE_CON_TYPE_8250,",
    ] {
        assert!(src.contains(want), "missing {want:?} in\n{src}");
    }
    let src = cell_to_c(&support::linux_x86_demo()).unwrap();
    for want in [
        "\tstruct jailhouse_cell_desc cell;\n",
        ".signature = JAILHOUSE_CELL_DESC_SIGNATURE,",
        "{ 0 },",
        "JAILHOUSE_SHMEM_PROTO_VIRTIO_FRONT + VIRTIO_DEV_BLOCK",
        ".flags = JAILHOUSE_CELL_PASSIVE_COMMREG |",
        "JAILHOUSE_MEM_COMM_REGION",
    ] {
        assert!(src.contains(want), "missing {want:?} in\n{src}");
    }
}

/// Fields that the builder never sets: odd CPU-set sizes, raw bytes of the
/// root cell's embedded header, a name with bytes after its NUL and a
/// 32-byte name without one, padding, unknown flag bits, both IOMMU
/// unions, MMU-500 stream ids, extended capabilities, every array type.
#[test]
fn corner_cases_round_trip_through_c() {
    if !have_gcc() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut sys = support::qemu_x86();
    sys.root_cell.root_desc_header = *b"JH\xffLL\x02\x34\x12";
    sys.root_cell.name_raw[10] = b'"';
    sys.root_cell.name_raw[12] = 0x81;
    sys.root_cell.id = 7;
    sys.root_cell.cpu_set = vec![0xf, 0, 0x80];
    sys.root_cell.memory_regions[0].flags |= 1 << 40 | mem::IO_32 | mem::NO_HUGEPAGES;
    sys.root_cell.cache_regions.push(CacheRegion {
        start: 1,
        size: 3,
        kind: 0x7,
        padding: 9,
        flags: 3,
    });
    sys.root_cell.pci_caps.push(PciCapability {
        id: 0x8010,
        start: 0x100,
        len: 4,
        flags: 2,
    });
    sys.root_cell.stream_ids = vec![0x1_0870, 0];
    sys.flags = 0x81;
    if let ArchPlatform::X86(x) = &mut sys.platform.arch {
        x.padding = 5;
        x.apic_mode = 2;
    }
    sys.platform.iommu_units[0] = IommuUnit {
        kind: iommu_type::AMD,
        base: 0xfeb8_0000,
        size: 0x80000,
        extra: [0x02, 0x00, 0x40, 0x64, 0x78, 0x56, 0x34, 0x12, 0, 0, 0, 0],
    };
    sys.platform.iommu_units[3] = IommuUnit {
        kind: 9,
        base: 1,
        size: 2,
        extra: [0xab; 12],
    };
    sys.debug_console.kind = 0x77;
    sys.debug_console.flags = 0x2003 | 0x40;
    round_trip(d.path(), "corner-sys.cell", true, &write_system(&sys));

    let mut cell = support::j721e_inmate();
    cell.name_raw = [b'x'; 32];
    cell.cpu_set = vec![0x2; 16];
    cell.flags |= 0x1000 | cell_flags::AARCH32;
    cell.pci_devices[0].msi_flags = 3;
    cell.pci_devices[0].kind = 0x42;
    cell.pci_devices[0].shmem_protocol = 0xc003;
    cell.pci_devices.push(PciDevice::default());
    cell.pio_regions.push(PioRegion {
        base: 0x3f8,
        length: 8,
    });
    cell.irqchips.push(Irqchip::default());
    cell.stream_ids = vec![0xffff_ffff, 5];
    round_trip(d.path(), "corner-cell.cell", false, &write_cell(&cell));

    // An MMU-500 system writes stream ids as .mmu500.id / .mmu500.mask_out.
    let mut arm = support::j721e();
    arm.platform.iommu_units[0].kind = iommu_type::ARM_MMU500;
    arm.root_cell.stream_ids = vec![0x870 | 0xf << 16, 0x860];
    let src = system_to_c(&arm).unwrap();
    assert!(
        src.contains("{ .mmu500.id = 0x870, .mmu500.mask_out = 0xf },"),
        "{src}"
    );
    round_trip(d.path(), "mmu500.cell", true, &write_system(&arm));
}

#[test]
fn bytes_c_cannot_express_are_refused() {
    let mut cell = support::j721e_inmate();
    cell.pci_devices[0].msi_flags = 0x84;
    let e = cell_to_c(&cell).unwrap_err().to_string();
    assert!(e.starts_with("cannot write as C: pci_devices[0]:"), "{e}");
    let mut sys = support::qemu_x86();
    if let ArchPlatform::X86(x) = &mut sys.platform.arch {
        x.tail[3] = 1;
    }
    let e = system_to_c(&sys).unwrap_err().to_string();
    assert!(e.contains("platform_info"), "{e}");
}

#[test]
fn cli_dump_format_c_round_trips_and_refuses_trailing_data() {
    if !have_gcc() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let bytes = write_cell(&support::ivshmem_demo());
    let f = d.path().join("ivshmem-demo.cell");
    std::fs::write(&f, &bytes).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_oxemu-jailhouse"))
        .args(["config", "dump", "--format=c"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let src = String::from_utf8(out.stdout).unwrap();
    assert_eq!(compile(d.path(), "from-cli", &src), bytes);

    let mut junk = bytes.clone();
    junk.push(1);
    std::fs::write(&f, &junk).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_oxemu-jailhouse"))
        .args(["config", "dump", "--format=c", "--lenient"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot carry trailing data"));
}

/// Configs with single bytes changed (every field of the headers and
/// entries gets hit over the sweep): whatever parses strictly is either
/// refused by the decompiler or compiles back to exactly those bytes.
#[test]
fn byte_flipped_configs_round_trip_or_are_refused() {
    if !have_gcc() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let opts = ParseOptions::default();
    let (mut compiled, mut refused) = (0, 0);
    for (name, is_system, bytes) in [
        ("qemu-x86.cell", true, write_system(&support::qemu_x86())),
        ("k3-j721e-evm.cell", true, write_system(&support::j721e())),
        (
            "linux-x86-demo.cell",
            false,
            write_cell(&support::linux_x86_demo()),
        ),
    ] {
        // 12 positions per config, spread over the whole file (prime stride).
        for k in 0..12usize {
            let pos = (k * 7919 + 13) % bytes.len();
            let mut b = bytes.clone();
            b[pos] ^= 0xa5;
            let src = if is_system {
                match parse_system(&b, name, opts) {
                    Ok(p) => system_to_c(&p.config),
                    Err(_) => continue,
                }
            } else {
                match parse_cell(&b, name, opts) {
                    Ok(p) => cell_to_c(&p.config),
                    Err(_) => continue,
                }
            };
            match src {
                Ok(src) => {
                    let back = compile(d.path(), &format!("flip{pos}"), &src);
                    assert_eq!(back, b, "{name} with byte {pos} flipped");
                    compiled += 1;
                }
                Err(_) => refused += 1,
            }
        }
    }
    assert!(compiled >= 20, "compiled {compiled}, refused {refused}");
}
