//! The `oxemu-jailhouse` binary on config files in a temp dir.

mod support;

use oxemu_jailhouse::model::MemRegion;
use oxemu_jailhouse::{write_cell, write_system};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_oxemu-jailhouse"))
}

fn put(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn run(args: &[&Path], extra: &[&str]) -> Output {
    let mut c = bin();
    c.args(["config", "check"]).args(args).args(extra);
    c.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn clean_set_exits_0_and_says_so() {
    let d = tempfile::tempdir().unwrap();
    let sys = put(
        d.path(),
        "qemu-x86.cell",
        &write_system(&support::qemu_x86()),
    );
    let a = put(
        d.path(),
        "ivshmem-demo.cell",
        &write_cell(&support::ivshmem_demo()),
    );
    let b = put(
        d.path(),
        "linux-x86-demo.cell",
        &write_cell(&support::linux_x86_demo()),
    );
    let out = run(&[&sys, &a, &b], &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("  Root cell:     QEMU-VM ("), "{stdout}");
    assert!(
        stdout.contains("  Non-root cell: linux-x86-demo ("),
        "{stdout}"
    );
    assert!(stdout.ends_with("No findings.\n"), "{stdout}");
}

fn msix_system() -> Vec<u8> {
    let mut sys = support::qemu_x86();
    sys.root_cell.memory_regions.push(MemRegion {
        phys_start: 0xfea9_0000,
        virt_start: 0xfea9_0000,
        size: 0x1000,
        flags: 3,
    });
    write_system(&sys)
}

#[test]
fn findings_exit_1_with_one_line_per_finding_and_details() {
    let d = tempfile::tempdir().unwrap();
    let sys = put(d.path(), "sys.cell", &msix_system());
    let out = run(&[&sys], &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    let i = lines
        .iter()
        .position(|l| *l == "Error: MSI-X region of PCI device 00:02.0 directly mapped into QEMU-VM [msix-mapped]")
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        lines[i + 1].starts_with("  in cell 'QEMU-VM' ("),
        "{stdout}"
    );
    assert!(
        lines[i + 1].ends_with("memory_regions[31], address 0xfea90000"),
        "{stdout}"
    );
    assert!(
        lines[i + 3].contains("MSI-X table pages of 00:02.0: 0xfea90000-0xfea90fff"),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("1 findings (1 errors, 0 warnings)\n"),
        "{stdout}"
    );
}

#[test]
fn json_output_carries_rule_severity_cell_index_and_address() {
    let d = tempfile::tempdir().unwrap();
    let sys = put(d.path(), "sys.cell", &msix_system());
    let apic = put(d.path(), "apic.cell", &write_cell(&support::apic_demo()));
    let out = run(&[&sys, &apic], &["--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["errors"], 1);
    assert_eq!(v["warnings"], 0);
    assert_eq!(v["architecture"], "x86");
    assert_eq!(v["cells"][0]["name"], "apic-demo");
    let f = &v["findings"][0];
    assert_eq!(f["rule"], "msix-mapped");
    assert_eq!(f["severity"], "error");
    assert_eq!(f["cell"], "QEMU-VM");
    assert_eq!(f["array"], "memory_regions");
    assert_eq!(f["index"], 31);
    assert_eq!(f["address"], 0xfea9_0000u64);
    assert_eq!(f["file"], sys.to_str().unwrap());
}

#[test]
fn json_output_of_a_clean_set_has_no_findings() {
    let d = tempfile::tempdir().unwrap();
    let sys = put(d.path(), "j721e.cell", &write_system(&support::j721e()));
    let cell = put(d.path(), "linux.cell", &write_cell(&support::j721e_linux()));
    let out = run(&[&sys, &cell], &["--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["findings"].as_array().unwrap().len(), 0);
    assert_eq!(v["architecture"], "arm64");
}

#[test]
fn truncated_file_exits_2_naming_file_structure_index_and_offset() {
    let d = tempfile::tempdir().unwrap();
    let sys = put(d.path(), "sys.cell", &write_system(&support::qemu_x86()));
    let full = write_cell(&support::apic_demo());
    let cut = put(d.path(), "apic.cell", &full[..132 + 8 + 40]);
    let out = run(&[&sys, &cut], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}: memory_regions[1] at byte offset 172: file ends at byte 180",
            cut.display()
        )),
        "{err}"
    );
}

#[test]
fn revision_13_config_exits_2_naming_the_revision() {
    let d = tempfile::tempdir().unwrap();
    let mut old = vec![0u8; 500];
    old[..6].copy_from_slice(b"JHSYST");
    old[6] = 13;
    let sys = put(d.path(), "old.cell", &old);
    let out = run(&[&sys], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("config revision 13"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn wrong_kind_and_wrong_magic_exit_2() {
    let d = tempfile::tempdir().unwrap();
    let cell = put(d.path(), "apic.cell", &write_cell(&support::apic_demo()));
    let out = run(&[&cell], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("wrong kind of config"),
        "{}",
        text(&out.stderr)
    );
    let junk = put(d.path(), "junk.cell", b"#!/bin/sh\necho hello\n");
    let out = run(&[&junk], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not a Jailhouse config"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&[&d.path().join("missing.cell")], &[]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&[Path::new("/dev/zero")], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("/dev/zero: larger than 16 MiB"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&[&junk], &["--format", "json"]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("junk.cell: jailhouse_system at byte offset 0"),
        "{v}"
    );
}

#[test]
fn trailing_data_exits_2_unless_lenient_makes_it_a_warning() {
    let d = tempfile::tempdir().unwrap();
    let sys = put(d.path(), "sys.cell", &write_system(&support::qemu_x86()));
    let mut bytes = write_cell(&support::smp_demo());
    bytes.extend_from_slice(b"junk");
    let cell = put(d.path(), "smp.cell", &bytes);
    let out = run(&[&sys, &cell], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("4 bytes of trailing data"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&[&sys, &cell], &["--lenient"]);
    let stdout = text(&out.stdout);
    // A warning is printed but does not change the exit code...
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("Warning: "), "{stdout}");
    assert!(stdout.contains("[trailing-data]"), "{stdout}");
    assert!(
        stdout.ends_with("1 findings (0 errors, 1 warnings)\n"),
        "{stdout}"
    );
    // ...unless --strict counts warnings as errors.
    let out = run(&[&sys, &cell], &["--lenient", "--strict"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.ends_with("1 findings (0 errors, 1 warnings; --strict: warnings count as errors)\n"),
        "{stdout}"
    );
}

#[test]
fn dump_prints_a_readable_config() {
    let d = tempfile::tempdir().unwrap();
    let sys = put(d.path(), "sys.cell", &write_system(&support::qemu_x86()));
    let out = bin().args(["config", "dump"]).arg(&sys).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let s = text(&out.stdout);
    assert!(s.starts_with("System config (revision 14, x86)\n"), "{s}");
    assert!(
        s.contains("iommu[0]: Intel VT-d base 0xfed90000 size 0x1000"),
        "{s}"
    );
    assert!(s.contains("name: QEMU-VM"), "{s}");
    assert!(
        s.contains(
            "  [1] 00:02.0 device iommu 0 caps 5+6 msi 1 64bit msix 5 at 0xfea90000 size 0x1000"
        ),
        "{s}"
    );
    let cell = put(
        d.path(),
        "inmate.cell",
        &write_cell(&support::j721e_inmate()),
    );
    let out = bin().args(["config", "dump"]).arg(&cell).output().unwrap();
    let s = text(&out.stdout);
    assert!(
        s.starts_with("Cell config (revision 14, arm64)\nname: inmate-demo\n"),
        "{s}"
    );
    assert!(
        s.contains("  [6] phys 0x0 virt 0x80000000 size 0x1000 flags READ | WRITE | COMM_REGION"),
        "{s}"
    );
    let bad = put(
        d.path(),
        "bad.cell",
        &write_cell(&support::j721e_inmate())[..100],
    );
    let out = bin().args(["config", "dump"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn arch_mismatch_is_bad_input_that_stops_the_check() {
    // Like upstream imx8dxl-inmate-demo-aarch32 (JAILHOUSE_ARM) checked
    // against an arm64 system, and an arm64 inmate against qemu-x86.
    let d = tempfile::tempdir().unwrap();
    let arm64 = put(d.path(), "j721e.cell", &write_system(&support::j721e()));
    let mut aarch32 = support::j721e_inmate();
    aarch32.arch = oxemu_jailhouse::model::Arch::Arm;
    let a32 = put(d.path(), "aarch32.cell", &write_cell(&aarch32));
    let out = run(&[&arm64, &a32], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert_eq!(
        text(&out.stderr),
        format!(
            "oxemu-jailhouse: {}: cell inmate-demo is built for arm (architecture byte at offset 5), \
             but the system config {} is for arm64; Jailhouse refuses to create such a cell\n",
            a32.display(),
            arm64.display()
        )
    );
    assert_eq!(text(&out.stdout), "");

    let x86 = put(
        d.path(),
        "qemu-x86.cell",
        &write_system(&support::qemu_x86()),
    );
    let inmate = put(
        d.path(),
        "inmate.cell",
        &write_cell(&support::j721e_inmate()),
    );
    let out = run(&[&x86, &inmate], &["--format", "json"]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let e = v["error"].as_str().unwrap();
    assert!(e.contains("is built for arm64"), "{e}");
    assert!(
        !text(&out.stdout).contains("ioapic"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn json_carries_both_sides_of_a_conflict_and_the_trailing_data_warning() {
    let d = tempfile::tempdir().unwrap();
    let sys = put(d.path(), "sys.cell", &write_system(&support::qemu_x86()));
    let apic = put(d.path(), "apic.cell", &write_cell(&support::apic_demo()));
    let mut tiny = support::tiny_demo();
    tiny.cpu_set = 0b1100u64.to_le_bytes().to_vec(); // apic-demo has CPU 3
    let mut bytes = write_cell(&tiny);
    bytes.extend_from_slice(b"junk");
    let tiny = put(d.path(), "tiny.cell", &bytes);
    let out = run(&[&sys, &apic, &tiny], &["--format", "json", "--lenient"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["errors"].as_u64(), v["warnings"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(v["strict"], false);
    let f = &v["findings"];
    assert_eq!(f[0]["rule"], "trailing-data");
    assert_eq!(f[0]["severity"], "warning");
    assert_eq!(f[0]["address"], bytes.len() as u64 - 4);
    assert!(f[0]["other_cell"].is_null());
    assert_eq!(f[1]["rule"], "cpu-overlap-between-cells");
    assert_eq!(f[1]["cell"], "tiny-demo");
    assert_eq!(f[1]["array"], "cpu_set");
    assert_eq!(f[1]["index"], 3);
    assert_eq!(f[1]["other_cell"], "apic-demo");
    assert_eq!(f[1]["other_array"], "cpu_set");
    assert_eq!(f[1]["other_index"], 3);
}
