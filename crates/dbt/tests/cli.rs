//! The binary's handling of bad input: options and corrupt ELF files.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_oxemu-x86_64"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().expect("exited, not killed"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn corrupt_elf_names_the_field() {
    let dir = std::env::temp_dir().join(format!("oxemu-dbt-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut elf = std::fs::read("/bin/true").unwrap();
    elf[18] = 0x28; // e_machine = ARM
    let p = dir.join("bad-machine");
    std::fs::write(&p, &elf).unwrap();
    let (code, err) = run(&[p.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("bad e_machine at offset 0x12"), "{err}");
    let short = dir.join("short");
    std::fs::write(&short, &std::fs::read("/bin/true").unwrap()[..40]).unwrap();
    let (code, err) = run(&[short.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("truncated: ELF header"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_options_are_refused() {
    let (code, err) = run(&["-cpu", "z80", "/bin/true"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown CPU model 'z80'"), "{err}");
    let (code, err) = run(&["-d", "everything", "/bin/true"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown log item"), "{err}");
    let (code, _) = run(&["-nosuch", "/bin/true"]);
    assert_eq!(code, 1);
}

#[test]
fn parses_real_debian_binaries() {
    let ls = oxemu_dbt::elf::parse(&std::fs::read("/bin/ls").unwrap()).unwrap();
    assert_eq!(ls.etype, oxemu_dbt::elf::ET_DYN);
    assert_eq!(ls.interp.as_deref(), Some("/lib64/ld-linux-x86-64.so.2"));
    assert!(ls.phdr_vaddr.is_some());
    let ld = oxemu_dbt::elf::parse(&std::fs::read("/lib64/ld-linux-x86-64.so.2").unwrap()).unwrap();
    assert_eq!(ld.interp, None);
    assert!(ld
        .segments
        .iter()
        .any(|s| s.flags & oxemu_dbt::elf::PF_X != 0));
}
