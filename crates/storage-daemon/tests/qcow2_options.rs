//! qcow2 node options that must act: `lazy-refcounts` (QEMU's runtime override of the
//! header's compatible bit), side by side with qemu-storage-daemon 7.2.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const OXEMU: &str = env!("CARGO_BIN_EXE_oxemu-storage-daemon");

fn img(dir: &Path, name: &str, compat: &str) -> String {
    let p = dir.join(name);
    let st = Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("compat={compat}"),
        ])
        .arg(&p)
        .arg("1M")
        .status()
        .unwrap();
    assert!(st.success());
    p.display().to_string()
}

fn dirty(p: &str) -> bool {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json", p])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["dirty-flag"].as_bool().unwrap_or(false)
}

/// Starts `bin` exporting qcow2 `p` with `opts` on the qcow2 node, writes through
/// NBD, and returns (dirty while serving, dirty after SIGTERM).
fn serve_and_write(bin: &str, dir: &Path, p: &str, opts: &str) -> (bool, bool) {
    let sock = dir.join("s.sock");
    let pid = dir.join("d.pid");
    let st = Command::new(bin)
        .arg("--blockdev")
        .arg(format!("driver=file,node-name=f,filename={p}"))
        .arg("--blockdev")
        .arg(format!("driver=qcow2,node-name=q,file=f{opts}"))
        .arg("--nbd-server")
        .arg(format!("addr.type=unix,addr.path={}", sock.display()))
        .args([
            "--export",
            "type=nbd,id=e,node-name=q,name=d,writable=on",
            "--daemonize",
            "--pidfile",
        ])
        .arg(&pid)
        .status()
        .unwrap();
    assert!(st.success(), "{bin}");
    let uri = format!("nbd+unix:///d?socket={}", sock.display());
    let st = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write 0 64k", &uri])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let during = dirty(p);
    let n: i32 = std::fs::read_to_string(&pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: plain syscall.
    unsafe { libc::kill(n, libc::SIGTERM) };
    let t = Instant::now();
    while pid.exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    (during, dirty(p))
}

#[test]
fn lazy_refcounts_option_as_qemu() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    for bin in ["qemu-storage-daemon", OXEMU] {
        // On for this open of an image without the bit: dirty while in use, clean after.
        let p = img(dir, "v3.qcow2", "1.1");
        assert_eq!(
            serve_and_write(bin, dir, &p, ",lazy-refcounts=on"),
            (true, false),
            "{bin}"
        );
        // Off: never dirty.
        let p = img(dir, "v3.qcow2", "1.1");
        assert_eq!(
            serve_and_write(bin, dir, &p, ",lazy-refcounts=off"),
            (false, false),
            "{bin}"
        );
        // A v2 image cannot have them: QEMU's error.
        let p = img(dir, "v2.qcow2", "0.10");
        let out = Command::new(bin)
            .args([
                "--blockdev",
                &format!("driver=file,node-name=f,filename={p}"),
            ])
            .args([
                "--blockdev",
                "driver=qcow2,node-name=q,file=f,lazy-refcounts=on",
            ])
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bin}");
        assert!(
            e.contains(
                "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level"
            ),
            "{bin}: {e}"
        );
    }
}
