//! Real programs under oxemu-x86_64 and natively: stdout, stderr and exit status must match,
//! under `-cpu qemu64` and `-cpu Haswell` (so that glibc picks different string functions).

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

const MODELS: [&str; 2] = ["qemu64", "Haswell"];

fn input() -> Vec<u8> {
    let mut s = String::new();
    let mut x: u32 = 12345;
    for _ in 0..3000 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        s.push_str(&format!("{} line {}\n", x >> 8, x % 97));
    }
    s.into_bytes()
}

fn run(cmd: &mut Command, stdin: &[u8]) -> (Vec<u8>, Vec<u8>, Option<i32>, Option<i32>) {
    let mut c = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut i = c.stdin.take().unwrap();
    let data = stdin.to_vec();
    let w = std::thread::spawn(move || {
        let _ = i.write_all(&data);
    });
    let out = c.wait_with_output().unwrap();
    w.join().unwrap();
    (
        out.stdout,
        out.stderr,
        out.status.code(),
        out.status.signal(),
    )
}

fn compare(prog: &str, args: &[&str], stdin: &[u8]) {
    let native = run(Command::new(prog).args(args), stdin);
    for m in MODELS {
        let ours = run(
            Command::new(env!("CARGO_BIN_EXE_oxemu-x86_64"))
                .args(["-cpu", m, prog])
                .args(args),
            stdin,
        );
        assert_eq!(
            String::from_utf8_lossy(&ours.1),
            String::from_utf8_lossy(&native.1),
            "{prog} {args:?} -cpu {m}: stderr"
        );
        assert!(
            ours.0 == native.0,
            "{prog} {args:?} -cpu {m}: stdout differs ({} vs {} bytes)",
            ours.0.len(),
            native.0.len()
        );
        assert_eq!(
            (ours.2, ours.3),
            (native.2, native.3),
            "{prog} {args:?} -cpu {m}: exit status"
        );
    }
}

fn tmpfile(name: &str, data: &[u8]) -> String {
    let p = std::env::temp_dir().join(format!("oxemu-dbt-{}-{name}", std::process::id()));
    std::fs::write(&p, data).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn coreutils() {
    let f = tmpfile("in", &input());
    compare("/bin/true", &[], b"");
    compare("/bin/false", &[], b"");
    compare("/bin/echo", &["hello", "world"], b"");
    compare(
        "/bin/ls",
        &["-la", "/usr/lib/x86_64-linux-gnu/gconv/../.."],
        b"",
    );
    compare("/usr/bin/sort", &[&f], b"");
    compare("/usr/bin/sort", &["-n", "-r"], &input());
    compare("/usr/bin/sha256sum", &[&f], b"");
    compare("/usr/bin/base64", &[&f], b"");
    compare("/usr/bin/wc", &[&f], b"");
    compare("/usr/bin/tr", &["a-z0-9", "A-Zj-s"], &input());
    compare("/bin/ls", &["/nonexistent"], b"");
    std::fs::remove_file(&f).unwrap();
}

#[test]
fn gzip_grep_find_python() {
    let f = tmpfile("gz", &input());
    compare("/bin/gzip", &["-9c", &f], b"");
    let gz = run(Command::new("/bin/gzip").args(["-9c", &f]), b"").0;
    compare("/bin/gzip", &["-dc"], &gz);
    compare("/bin/grep", &["-E", "^[0-9]+5 line (1|2)[0-9]$", &f], b"");
    compare("/bin/grep", &["-c", "-i", "LINE 4"], &input());
    compare(
        "/usr/bin/find",
        &["/usr/share/doc/coreutils", "-name", "*.gz"],
        b"",
    );
    compare("/usr/bin/python3", &["-S", "-c", "import hashlib\nprint(sum(i*i for i in range(20000)), hashlib.sha256(b'x'*1000).hexdigest())"], b"");
    std::fs::remove_file(&f).unwrap();
}

fn gcc(name: &str, src: &str) -> String {
    let c = tmpfile(&format!("{name}.c"), src.as_bytes());
    let exe = c.trim_end_matches(".c").to_string();
    let st = Command::new("gcc")
        .args(["-O2", "-o", &exe, &c])
        .status()
        .expect("gcc is needed");
    assert!(st.success());
    std::fs::remove_file(&c).unwrap();
    exe
}

#[test]
fn static_and_faulting_programs() {
    let hello = r#"#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) { char b[64]; strcpy(b, argv[0]); printf("%d %zu %s\n", argc, strlen(b), argv[argc-1]); return 3; }"#;
    let exe = gcc("hello", hello);
    compare(&exe, &["a", "bb"], b"");
    let st = tmpfile("hello-static.c", hello.as_bytes());
    let exe_s = st.trim_end_matches(".c").to_string();
    assert!(Command::new("gcc")
        .args(["-O2", "-static", "-o", &exe_s, &st])
        .status()
        .unwrap()
        .success());
    compare(&exe_s, &["x"], b"");
    // A jump into unmapped memory, and an undefined instruction: killed as natively.
    let bad = gcc(
        "bad",
        r#"#include <stdlib.h>
int main(int argc, char **argv) { if (argv[1][0] == 's') ((void (*)(void))0x1234)(); else __builtin_trap(); return 0; }"#,
    );
    compare(&bad, &["segv"], b"");
    compare(&bad, &["ill"], b"");
    for p in [exe, exe_s, st, bad] {
        let _ = std::fs::remove_file(p);
    }
}
