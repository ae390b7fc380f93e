//! The CPU models against the real peer: `qemu-x86_64 -cpu MODEL` running a CPUID dumper.
//! Needs gcc and qemu-x86_64 (Debian qemu-user 7.2); fails if either is missing.

use oxemu_dbt::cpu::CpuModel;
use std::process::Command;

const DUMPER: &str = r#"
#include <stdio.h>
#include <cpuid.h>
int main(void) {
    unsigned leaves[] = {0, 1, 6, 7, 0x80000000, 0x80000001, 0x80000002, 0x80000003, 0x80000004, 0x80000008};
    for (unsigned i = 0; i < sizeof leaves / sizeof leaves[0]; i++) {
        unsigned a, b, c, d;
        __cpuid_count(leaves[i], 0, a, b, c, d);
        printf("%x %x %x %x %x\n", leaves[i], a, b, c, d);
    }
    return 0;
}
"#;

fn dumper() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("oxemu-dbt-cpuid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("cpuid.c");
    std::fs::write(&src, DUMPER).unwrap();
    let exe = dir.join("cpuid");
    let st = Command::new("gcc")
        .args(["-O", "-static", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("gcc is needed");
    assert!(st.success());
    exe
}

fn qemu(model: &str, exe: &std::path::Path) -> Vec<[u32; 5]> {
    let out = Command::new("qemu-x86_64")
        .args(["-cpu", model])
        .arg(exe)
        .output()
        .expect("qemu-x86_64 (Debian qemu-user) is needed");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Vec<u32> = l
                .split(' ')
                .map(|x| u32::from_str_radix(x, 16).unwrap())
                .collect();
            [v[0], v[1], v[2], v[3], v[4]]
        })
        .collect()
}

#[test]
fn models_match_qemu_x86_64() {
    let exe = dumper();
    for name in ["qemu64", "Haswell", "Skylake-Server"] {
        let m = CpuModel::by_name(name).unwrap();
        for [leaf, a, b, c, d] in qemu(name, &exe) {
            let ours = m.cpuid(leaf, 0);
            if name == "Skylake-Server" && leaf == 7 {
                // Ours adds QEMU's AVX-512/rdseed bits, which TCG 7.2 filters out.
                assert_eq!(ours[1] & b, b, "{name} leaf 7 ebx must include qemu's bits");
                assert_eq!(ours[1] & !b, 0xd007_0000, "{name} leaf 7 extra bits");
                continue;
            }
            if name == "Skylake-Server" && leaf == 0x8000_0001 {
                assert_eq!(ours[2] & !c, 1 << 8, "{name}: only 3dnowprefetch added");
                assert_eq!([ours[0], ours[1], ours[3]], [a, b, d]);
                continue;
            }
            assert_eq!(ours, [a, b, c, d], "{name} leaf {leaf:#x}");
        }
    }
    std::fs::remove_dir_all(exe.parent().unwrap()).unwrap();
}
