//! OFD image locks interoperate with QEMU in both directions.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use oxemu_block::{EventLoop, FileOptions};
use oxemu_qcow2::{open_image, ImageOptions};

#[test]
fn qemu_io_cannot_write_while_oxemu_holds_the_image() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("l.qcow2");
    run("qemu-img", &["create", "-q", "-f", "qcow2", p.to_str().unwrap(), "1M"]);
    let lp = EventLoop::with_defaults().unwrap();
    lp.block_on(async {
        let _img = open(&p, false).await;
        let out = Command::new("qemu-io").args(["-c", "write 0 512", p.to_str().unwrap()]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() || err.contains("lock"), "qemu-io wrote: {err}");
        assert!(err.contains("Failed to get \"write\" lock"), "{err}");
    });
    // Released on drop: qemu-io can write now.
    run("qemu-io", &["-c", "write 0 512", p.to_str().unwrap()]);
}

#[test]
fn oxemu_cannot_open_for_writing_while_qemu_io_holds_the_image() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("q.qcow2");
    run("qemu-img", &["create", "-q", "-f", "qcow2", p.to_str().unwrap(), "1M"]);
    let mut q = Command::new("qemu-io")
        .arg(&p)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = q.stdin.take().unwrap();
    let mut out = BufReader::new(q.stdout.take().unwrap());
    // Once qemu-io answers a command, the image is open and locked.
    stdin.write_all(b"write 0 512\n").unwrap();
    let mut line = String::new();
    while !line.contains("wrote") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "qemu-io exited");
    }
    let lp = EventLoop::with_defaults().unwrap();
    let res = lp.block_on(async {
        let mut o = ImageOptions::default();
        o.file = FileOptions::new(&p);
        open_image(&p, None, &o).await.map(|_| ())
    });
    let e = res.expect_err("oxemu opened an image qemu-io holds for writing").to_string();
    assert!(e.contains("lock"), "{e}");
    // Read-only with force-share still works, as with qemu-img -U.
    lp.block_on(async {
        let mut o = ImageOptions::default();
        o.file = FileOptions::new(&p);
        o.file.read_only = true;
        o.file.force_share = true;
        open_image(&p, None, &o).await.map(|_| ()).unwrap();
    });
    stdin.write_all(b"quit\n").unwrap();
    drop(stdin);
    q.wait().unwrap();
}
