//! Image locks follow what a node's users need, as in QEMU's block layer: each
//! setting runs in qemu-storage-daemon 7.2 and in oxemu-storage-daemon, and qemu-io /
//! qemu-img on the same image must be let in or refused the same way by both.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const OXEMU: &str = env!("CARGO_BIN_EXE_oxemu-storage-daemon");
const QEMU: &str = "qemu-storage-daemon";

/// A daemon started with `--daemonize`, killed on drop.
struct Daemon {
    pidfile: std::path::PathBuf,
}

impl Daemon {
    /// Starts `bin` with `args`; `Err(stderr)` when it refuses to start.
    fn start(bin: &str, dir: &Path, tag: &str, args: &[String]) -> Result<Daemon, String> {
        let pidfile = dir.join(format!("{tag}.pid"));
        let out = Command::new(bin)
            .args(args)
            .arg("--pidfile")
            .arg(&pidfile)
            .arg("--daemonize")
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Daemon { pidfile })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(p) = std::fs::read_to_string(&self.pidfile) {
            let pid: i32 = p.trim().parse().unwrap();
            // SAFETY: plain syscall.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let t = Instant::now();
            while self.pidfile.exists() && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Whether each probe gets in: qemu-io read-write on the raw image, read-write and
/// read-only on the qcow2 image, and qemu-img info on the qcow2 image.
fn probes(dir: &Path) -> Vec<String> {
    let raw = dir.join("d.raw");
    let qcow2 = dir.join("d.qcow2");
    let run = |args: &[&str], img: &Path| {
        let out = Command::new(args[0])
            .args(&args[1..])
            .arg(img)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        // The verdict and QEMU's lock message, without the program's name.
        match text.find("Failed to get") {
            Some(i) => text[i..].lines().next().unwrap().to_string(),
            None if out.status.success() => "ok".into(),
            None => format!("failed: {text}"),
        }
    };
    vec![
        run(&["qemu-io", "-f", "raw", "-c", "write 0 512"], &raw),
        run(&["qemu-io", "-f", "qcow2", "-c", "write 0 512"], &qcow2),
        run(
            &["qemu-io", "-r", "-f", "qcow2", "-c", "read 0 512"],
            &qcow2,
        ),
        run(&["qemu-img", "info", "-f", "qcow2"], &qcow2),
    ]
}

fn fresh(dir: &Path) {
    for (f, fmt) in [("d.raw", "raw"), ("d.qcow2", "qcow2")] {
        let _ = std::fs::remove_file(dir.join(f));
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", fmt])
            .arg(dir.join(f))
            .arg("1M")
            .status()
            .unwrap();
        assert!(st.success());
    }
}

fn args(dir: &Path, spec: &str) -> Vec<String> {
    let d = dir.display();
    spec.replace("DIR", &d.to_string())
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn locks_follow_users_as_in_qemu() {
    let settings = [
        "--blockdev driver=file,node-name=f,filename=DIR/d.raw",
        "--blockdev driver=file,node-name=f,filename=DIR/d.raw,read-only=on",
        "--blockdev driver=file,node-name=f,filename=DIR/d.raw \
         --nbd-server addr.type=unix,addr.path=DIR/s.sock --export type=nbd,id=e,node-name=f",
        "--blockdev driver=file,node-name=f,filename=DIR/d.raw \
         --nbd-server addr.type=unix,addr.path=DIR/s.sock \
         --export type=nbd,id=e,node-name=f,writable=on",
        "--blockdev driver=file,node-name=f,filename=DIR/d.raw \
         --blockdev driver=raw,node-name=r,file=f \
         --nbd-server addr.type=unix,addr.path=DIR/s.sock \
         --export type=nbd,id=e,node-name=r,writable=on",
        "--blockdev driver=file,node-name=f,filename=DIR/d.qcow2 \
         --blockdev driver=qcow2,node-name=q,file=f",
        "--blockdev driver=file,node-name=f,filename=DIR/d.qcow2,read-only=on \
         --blockdev driver=qcow2,node-name=q,file=f,read-only=on",
        "--blockdev driver=file,node-name=f,filename=DIR/d.qcow2 \
         --blockdev driver=qcow2,node-name=q,file=f \
         --nbd-server addr.type=unix,addr.path=DIR/s.sock --export type=nbd,id=e,node-name=q",
        "--blockdev driver=file,node-name=f,filename=DIR/d.qcow2,read-only=on \
         --blockdev driver=qcow2,node-name=q,file=f,read-only=on \
         --nbd-server addr.type=unix,addr.path=DIR/s.sock --export type=nbd,id=e,node-name=q",
        "--blockdev driver=file,node-name=f,filename=DIR/d.qcow2,force-share=on,read-only=on \
         --blockdev driver=qcow2,node-name=q,file=f,read-only=on",
    ];
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    for spec in settings {
        let a = args(dir, spec);
        let mut seen = Vec::new();
        for bin in [QEMU, OXEMU] {
            fresh(dir);
            let _g =
                Daemon::start(bin, dir, "d", &a).unwrap_or_else(|e| panic!("{bin} {spec}: {e}"));
            seen.push(probes(dir));
        }
        assert_eq!(
            seen[1], seen[0],
            "oxemu (left) and QEMU (right) differ for: {spec}"
        );
    }
}

#[test]
fn two_daemons_share_what_qemu_shares() {
    // Read-only exports of one raw image by two daemons, and a read-write one next
    // to a read-only one: QEMU's exports share everything.
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let one = |sock: &str, w: &str| {
        args(
            dir,
            &format!(
                "--blockdev driver=file,node-name=f,filename=DIR/d.raw \
                 --nbd-server addr.type=unix,addr.path=DIR/{sock} \
                 --export type=nbd,id=e,node-name=f,writable={w}"
            ),
        )
    };
    for (w1, w2) in [("off", "off"), ("on", "off"), ("on", "on")] {
        let mut seen = Vec::new();
        for bin in [QEMU, OXEMU] {
            fresh(dir);
            let a = Daemon::start(bin, dir, "a", &one("a.sock", w1));
            let b = Daemon::start(bin, dir, "b", &one("b.sock", w2));
            seen.push((a.is_ok(), b.is_ok()));
        }
        assert_eq!(
            seen[1], seen[0],
            "writable={w1}/{w2}: oxemu (left), QEMU (right)"
        );
        assert_eq!(seen[1], (true, true));
    }
    // A read-write qcow2 node in one daemon refuses the same image in another.
    let q = |tag: &str| {
        args(
            dir,
            &format!(
                "--blockdev driver=file,node-name=f{tag},filename=DIR/d.qcow2 \
                 --blockdev driver=qcow2,node-name=q{tag},file=f{tag}"
            ),
        )
    };
    for bin in [QEMU, OXEMU] {
        fresh(dir);
        let _a = Daemon::start(bin, dir, "a", &q("a")).unwrap();
        let e = Daemon::start(bin, dir, "b", &q("b"))
            .err()
            .unwrap_or_default();
        assert!(e.contains("Failed to get \"write\" lock"), "{bin}: {e}");
    }
}
