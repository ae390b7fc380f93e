//! `config check --jailhouse-src DIR file.c ...`: C configs compiled with
//! gcc/objcopy as Jailhouse's configs/Makefile does, then checked.
//!
//! The Jailhouse tree is faked from `tests/c_headers` (the include layout
//! Jailhouse has: include/, hypervisor/include/, hypervisor/arch/ARCH/include),
//! so no checkout or network is needed. Skips only when gcc is missing.

mod support;

use oxemu_jailhouse::decompile::{cell_to_c, system_to_c};
use oxemu_jailhouse::{write_cell, write_system};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn have_gcc() -> bool {
    let ok = Command::new("gcc").arg("--version").output().is_ok();
    if !ok {
        eprintln!("SKIPPED: gcc is not installed; --jailhouse-src needs gcc and objcopy");
    }
    ok
}

fn fake_tree(root: &Path) -> PathBuf {
    let hdr = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c_headers/jailhouse");
    let tree = root.join("jailhouse");
    for (dir, file) in [
        ("include/jailhouse", "cell-config.h"),
        ("hypervisor/include/jailhouse", "types.h"),
    ] {
        std::fs::create_dir_all(tree.join(dir)).unwrap();
        std::fs::copy(hdr.join(file), tree.join(dir).join(file)).unwrap();
    }
    for arch in ["x86", "arm64", "arm-common"] {
        std::fs::create_dir_all(tree.join("hypervisor/arch").join(arch).join("include")).unwrap();
    }
    tree
}

fn check(args: &[&str], path_env: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_oxemu-jailhouse"));
    c.args(["config", "check"]).args(args);
    if let Some(p) = path_env {
        c.env("PATH", p);
    }
    c.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn c_configs_are_compiled_and_checked_like_their_binaries() {
    if !have_gcc() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let tree = fake_tree(d.path());
    let x86 = d.path().join("configs/x86");
    std::fs::create_dir_all(&x86).unwrap();
    let put = |name: &str, text: String| {
        let p = x86.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let sys = put("qemu-x86.c", system_to_c(&support::qemu_x86()).unwrap());
    let tiny = put("tiny-demo.c", cell_to_c(&support::tiny_demo()).unwrap());
    let ioapic = put("ioapic-demo.c", cell_to_c(&support::ioapic_demo()).unwrap());
    let src = tree.to_str().unwrap();
    let out = check(&["--jailhouse-src", src, &sys, &tiny, &ioapic], None);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("[mem-overlap-between-cells]"), "{stdout}");
    assert!(stdout.contains("[cpu-overlap-between-cells]"), "{stdout}");
    assert!(
        stdout.contains("(") && stdout.contains("ioapic-demo.c)"),
        "{stdout}"
    );

    // The same set as binaries gives the same findings.
    let bin = |name: &str, bytes: Vec<u8>| {
        let p = x86.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_string()
    };
    let bsys = bin("qemu-x86.cell", write_system(&support::qemu_x86()));
    let btiny = bin("tiny-demo.cell", write_cell(&support::tiny_demo()));
    let bioapic = bin("ioapic-demo.cell", write_cell(&support::ioapic_demo()));
    let out_bin = check(&[&bsys, &btiny, &bioapic], None);
    assert_eq!(stdout.replace(".c)", ".cell)"), text(&out_bin.stdout));

    // A clean pair exits 0; mixed C and binary inputs are fine.
    let apic = put("apic-demo.c", cell_to_c(&support::apic_demo()).unwrap());
    let out = check(&["--jailhouse-src", src, &sys, &apic, &btiny], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

#[test]
fn missing_headers_gcc_or_option_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let c = d.path().join("qemu-x86.c");
    std::fs::write(&c, system_to_c(&support::qemu_x86()).unwrap()).unwrap();
    let c = c.to_str().unwrap();

    let out = check(&[c], None);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        format!("oxemu-jailhouse: {c}: C source; pass --jailhouse-src DIR to compile it against Jailhouse's headers\n")
    );

    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = check(&["--jailhouse-src", empty.to_str().unwrap(), c], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr)
            .contains("not a Jailhouse source tree: include/jailhouse/cell-config.h is missing"),
        "{}",
        text(&out.stderr)
    );

    let tree = fake_tree(d.path());
    let out = check(
        &["--jailhouse-src", tree.to_str().unwrap(), c],
        Some("/nonexistent"),
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "oxemu-jailhouse: gcc not found in PATH; --jailhouse-src compiles C configs with gcc and objcopy\n"
    );

    let out = check(
        &[
            "--jailhouse-src",
            tree.to_str().unwrap(),
            "--arch",
            "arm",
            c,
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no headers for architecture arm"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_c_config_that_does_not_compile_shows_gccs_message() {
    if !have_gcc() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let tree = fake_tree(d.path());
    let c = d.path().join("broken.c");
    let src = system_to_c(&support::qemu_x86())
        .unwrap()
        .replace("JAILHOUSE_MEM_READ", "JAILHOUSE_MEM_RAED");
    std::fs::write(&c, src).unwrap();
    let out = check(
        &[
            "--jailhouse-src",
            tree.to_str().unwrap(),
            c.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    let e = text(&out.stderr);
    assert!(e.contains("broken.c: gcc failed"), "{e}");
    assert!(e.contains("JAILHOUSE_MEM_RAED"), "{e}");
}
