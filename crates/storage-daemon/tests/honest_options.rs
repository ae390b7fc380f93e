//! Options that must act, not just parse: an export's `writethrough=on`, and
//! `aio-max-batch` for `aio=native`, observed in the daemon's system calls (strace);
//! iothread polling knobs oxemu cannot honour are refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_oxemu-storage-daemon");

fn image(dir: &Path) -> PathBuf {
    let p = dir.join("a.img");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(&p)
        .arg("2M")
        .status()
        .expect("qemu-img");
    assert!(st.success());
    p
}

/// Runs the daemon under strace with one file node (`file_opts` appended to its
/// options) exported over NBD (`export_opts` appended), sends `cmds` with a
/// write-back qemu-io, stops the daemon with SIGTERM, and counts its calls of each of
/// `syscalls`.
fn count_calls(
    file_opts: &str,
    export_opts: &str,
    cmds: &[String],
    syscalls: &[&str],
) -> Vec<usize> {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let sock = dir.path().join("n.sock");
    let log = dir.path().join("strace.log");
    let pidfile = dir.path().join("d.pid");
    let mut d = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-e",
            &format!("trace={}", syscalls.join(",")),
            "-o",
        ])
        .arg(&log)
        .arg(BIN)
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=f0,filename={}{file_opts}",
            img.display()
        ))
        .arg("--nbd-server")
        .arg(format!("addr.type=unix,addr.path={}", sock.display()))
        .arg("--export")
        .arg(format!(
            "type=nbd,id=e0,node-name=f0,name=d,writable=on{export_opts}"
        ))
        .arg("--pidfile")
        .arg(&pidfile)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("strace (installed by scripts/install-deps)");
    let t = Instant::now();
    while !(sock.exists() && pidfile.exists()) {
        if t.elapsed() > Duration::from_secs(20) {
            let _ = d.kill();
            panic!("daemon did not start");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut args = vec![
        "-t".to_string(),
        "writeback".into(),
        "-f".into(),
        "raw".into(),
    ];
    for c in cmds {
        args.push("-c".into());
        args.push(c.clone());
    }
    args.push(format!("nbd+unix:///d?socket={}", sock.display()));
    let out = Command::new("timeout")
        .arg("30")
        .arg("qemu-io")
        .args(&args)
        .output()
        .expect("qemu-io");
    // The daemon itself, not strace, gets the SIGTERM; strace ends with it.
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: plain kill(2) of the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let t = Instant::now();
    while d.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(20) {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = d.kill();
            panic!("daemon did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    syscalls
        .iter()
        .map(|s| {
            text.lines()
                .filter(|l| l.contains(&format!("{s}(")))
                .count()
        })
        .collect()
}

fn writes(n: usize, aio: bool) -> Vec<String> {
    let mut v: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "{} -P {} {} 4k",
                if aio { "aio_write" } else { "write" },
                i + 1,
                i * 8192
            )
        })
        .collect();
    if aio {
        v.push("aio_flush".into());
    }
    v
}

#[test]
fn export_writethrough_makes_each_write_durable() {
    let syncs = |opt: &str| count_calls("", opt, &writes(8, false), &["fdatasync", "fsync"]);
    let on: usize = syncs(",writethrough=on").iter().sum();
    let off: usize = syncs(",writethrough=off").iter().sum();
    assert!(on >= 8, "writethrough=on: {on} syncs for 8 writes");
    assert!(off < 8, "writethrough=off: {off} syncs for 8 writes");
}

#[test]
fn aio_max_batch_bounds_the_io_submit_batch_of_aio_native() {
    // 16 concurrent writes with aio=native and one request per io_submit: at least 16
    // calls.
    let n = count_calls(
        ",aio=native,cache.direct=on,aio-max-batch=1",
        "",
        &writes(16, true),
        &["io_submit"],
    );
    assert!(
        n[0] >= 16,
        "aio-max-batch=1: {} io_submit calls for 16 writes",
        n[0]
    );
}

#[test]
fn unsupported_iothread_polling_knobs_are_refused() {
    let out = Command::new(BIN)
        .args(["--object", "iothread,id=io0,poll-grow=2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("poll-grow") && e.contains("not supported"),
        "{e}"
    );
}
