//! oxemu-nbd's image options that change what is exported (`-o/--offset`,
//! `-l/--load-snapshot`), each compared with qemu-nbd 7.2 serving the same image.

mod common;

use common::{run, run_ok, start, BIN};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `qemu-nbd ARGS IMAGE` on a unix socket in `dir`, killed on drop.
struct QemuNbd(std::process::Child, std::path::PathBuf);

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qemu_nbd(dir: &Path, args: &[&str], image: &Path) -> QemuNbd {
    let sock = dir.join(format!("q-{}.sock", rand::random::<u32>()));
    let child = Command::new("qemu-nbd")
        .arg("-k")
        .arg(&sock)
        .args(args)
        .arg(image)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn qemu-nbd");
    let t = Instant::now();
    while !sock.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "qemu-nbd did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    QemuNbd(child, sock)
}

/// The whole export read back through `qemu-img convert` to a raw file, and its size.
fn export_bytes(dir: &Path, uri: &str, tag: &str) -> Vec<u8> {
    let out = dir.join(format!("{tag}.out"));
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            uri,
            out.to_str().unwrap(),
        ],
    );
    std::fs::read(out).unwrap()
}

fn unix_uri(sock: &Path) -> String {
    format!("nbd+unix:///?socket={}", sock.display())
}

#[test]
fn offset_exports_the_image_from_there_on_like_qemu_nbd() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("disk.raw");
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&img, &data).unwrap();
    for off in ["1048576", "0x100000", "512"] {
        let ours = start(d.path(), false, &["-f", "raw", "-o", off, "-r", "-t"], &img);
        let theirs = qemu_nbd(d.path(), &["-f", "raw", "-o", off, "-r", "-t"], &img);
        let a = export_bytes(d.path(), &ours.uri(""), "ours");
        let b = export_bytes(d.path(), &unix_uri(&theirs.1), "theirs");
        assert_eq!(a.len(), b.len(), "export size with -o {off}");
        assert!(a == b, "export contents differ with -o {off}");
        let skip = if off == "512" { 512 } else { 1 << 20 };
        assert_eq!(&a[..], &data[skip..]);
    }
    // A malformed offset is refused before serving, as by qemu-nbd.
    let o = run(
        BIN,
        &["-o", "12x", "-k", "/nonexistent/s", img.to_str().unwrap()],
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Invalid offset '12x'"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn load_snapshot_exports_the_snapshot_read_only_like_qemu_nbd() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("disk.qcow2");
    let p = img.to_str().unwrap();
    run_ok("qemu-img", &["create", "-q", "-f", "qcow2", p, "4M"]);
    run_ok("qemu-io", &["-f", "qcow2", "-c", "write -P 0x11 0 1M", p]);
    run_ok("qemu-img", &["snapshot", "-c", "snap1", p]);
    run_ok("qemu-io", &["-f", "qcow2", "-c", "write -P 0x22 0 2M", p]);
    for spec in ["snap1", "snapshot.name=snap1", "1"] {
        let ours = start(d.path(), false, &["-f", "qcow2", "-l", spec, "-t"], &img);
        let theirs = qemu_nbd(d.path(), &["-f", "qcow2", "-l", spec, "-t"], &img);
        let a = export_bytes(d.path(), &ours.uri(""), "ours");
        let b = export_bytes(d.path(), &unix_uri(&theirs.1), "theirs");
        assert!(a == b, "snapshot {spec}: exports differ");
        assert!(
            a[..1 << 20].iter().all(|&x| x == 0x11),
            "snapshot {spec} data"
        );
        assert!(a[1 << 20..].iter().all(|&x| x == 0), "snapshot {spec} tail");
        // Read-only, as qemu-nbd -l: a write is refused.
        let w = run(
            "qemu-io",
            &["-f", "raw", "-c", "write 0 512", &ours.uri("")],
        );
        let text =
            String::from_utf8_lossy(&w.stdout).to_string() + &String::from_utf8_lossy(&w.stderr);
        assert!(
            !w.status.success() || text.contains("failed"),
            "write to a snapshot export was accepted: {text}"
        );
    }
    // The active image is untouched.
    let cur = run_ok("qemu-io", &["-f", "qcow2", "-c", "read -P 0x22 0 2M", p]);
    assert!(!cur.contains("Pattern verification failed"), "{cur}");
}
