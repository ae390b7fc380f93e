//! Malformed images give errors naming the field and the offset, never a panic.

mod common;

use common::*;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use oxemu_block::{BlockDriverExt, EventLoop, FileOptions};
use oxemu_qcow2::{open_image, ImageOptions, Repair};

fn qemu_image(dir: &Path, name: &str, opts: &str) -> PathBuf {
    let p = dir.join(name);
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            opts,
            p.to_str().unwrap(),
            "4M",
        ],
    );
    run(
        "qemu-io",
        &["-c", "write -P 0x42 0 64k", p.to_str().unwrap()],
    );
    p
}

fn patch(p: &Path, off: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

fn be64_at(p: &Path, off: u64) -> u64 {
    let f = std::fs::File::open(p).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, off).unwrap();
    u64::from_be_bytes(b)
}

/// Opens and reads the first cluster; returns the error text.
fn open_and_read_err(p: &Path) -> String {
    let lp = EventLoop::with_defaults().unwrap();
    lp.block_on(async {
        let mut o = ImageOptions::default();
        o.file = FileOptions::new(p);
        o.file.read_only = true;
        let img = open_image(p, None, &o).await.map_err(|e| e.to_string())?;
        let mut b = vec![0u8; 65536];
        img.driver
            .read_at(0, &mut b)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    })
    .expect_err("malformed image was accepted")
}

#[test]
fn truncated_header_is_refused_naming_the_header() {
    let d = tempfile::tempdir().unwrap();
    let p = qemu_image(d.path(), "t.qcow2", "cluster_size=64k");
    let data = std::fs::read(&p).unwrap();
    std::fs::write(&p, &data[..60]).unwrap();
    let e = open_and_read_err(&p);
    assert!(e.contains("header") && e.contains("offset 0x0"), "{e}");
    std::fs::write(&p, &data[..90]).unwrap();
    let e = open_and_read_err(&p);
    assert!(e.contains("offset 0x48"), "{e}");
}

#[test]
fn l1_entry_past_eof_names_the_l1_entry_offset() {
    let d = tempfile::tempdir().unwrap();
    let p = qemu_image(d.path(), "l1.qcow2", "cluster_size=64k");
    let l1 = be64_at(&p, 40);
    patch(&p, l1, &(0x8000_0000_0100_0000u64).to_be_bytes());
    let e = open_and_read_err(&p);
    assert!(
        e.contains("L1 entry") && e.contains(&format!("{l1:#x}")),
        "{e}"
    );
}

#[test]
fn l2_entry_past_eof_names_the_l2_entry() {
    let d = tempfile::tempdir().unwrap();
    let p = qemu_image(d.path(), "l2.qcow2", "cluster_size=64k");
    let l1 = be64_at(&p, 40);
    let l2 = be64_at(&p, l1) & 0x00ff_ffff_ffff_fe00;
    patch(&p, l2, &(0x8000_0000_4000_0000u64).to_be_bytes());
    // Reads of it see zeroes, as QEMU's do (a truncated image stays readable)...
    let o = std::process::Command::new("qemu-io")
        .args(["-c", "read -P 0 0 64k", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("failed"));
    let lp = EventLoop::with_defaults().unwrap();
    let e = lp.block_on(async {
        let mut o = ImageOptions::default();
        o.file = FileOptions::new(&p);
        let img = open_image(&p, None, &o).await.unwrap();
        let mut buf = vec![1u8; 65536];
        img.driver.read_at(0, &mut buf).await.unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        // ...but a write in place, which would grow the file to 1 GiB, is refused.
        img.driver
            .write_at(0, &[2u8; 4096])
            .await
            .unwrap_err()
            .to_string()
    });
    assert!(e.contains("L2 entry") && e.contains("past the end"), "{e}");
}

#[test]
fn absurd_header_fields_are_refused_naming_the_field() {
    let d = tempfile::tempdir().unwrap();
    let cases: [(u64, &[u8], &str); 5] = [
        (20, &30u32.to_be_bytes(), "cluster_bits"),
        (36, &0x1000_0000u32.to_be_bytes(), "l1_size"),
        // QEMU's words for a size whose L1 index overflows.
        (24, &(1u64 << 62).to_be_bytes(), "Image is too big"),
        (56, &0x0100_0000u32.to_be_bytes(), "refcount_table_clusters"),
        (96, &9u32.to_be_bytes(), "refcount_order"),
    ];
    for (off, bytes, field) in cases {
        let p = qemu_image(d.path(), &format!("{field}.qcow2"), "cluster_size=64k");
        patch(&p, off, bytes);
        let e = open_and_read_err(&p);
        assert!(
            e.contains(field) && (field.contains(' ') || e.contains(&format!("offset {off:#x}"))),
            "{field}: {e}"
        );
    }
}

#[test]
fn unknown_incompatible_feature_is_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let p = qemu_image(d.path(), "f.qcow2", "cluster_size=64k");
    patch(&p, 72, &(1u64 << 40).to_be_bytes());
    let e = open_and_read_err(&p);
    assert!(
        e.contains("Unsupported qcow2 feature") && e.contains("10000000000"),
        "{e}"
    );
}

#[test]
fn backing_chain_cycle_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a.qcow2");
    let b = d.path().join("b.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", a.to_str().unwrap(), "1M"],
    );
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "a.qcow2",
            "-F",
            "qcow2",
            b.to_str().unwrap(),
        ],
    );
    run(
        "qemu-img",
        &[
            "rebase",
            "-u",
            "-b",
            "b.qcow2",
            "-F",
            "qcow2",
            a.to_str().unwrap(),
        ],
    );
    let e = open_and_read_err(&b);
    assert!(e.contains("cycle"), "{e}");
}

#[test]
fn refcount_overflow_is_reported_as_corruption_by_check() {
    let d = tempfile::tempdir().unwrap();
    let p = qemu_image(d.path(), "rc1.qcow2", "cluster_size=4k,refcount_bits=1");
    // Make guest cluster 1 share guest cluster 0's host cluster: two references, but a
    // 1-bit refcount cannot count them.
    let l1 = be64_at(&p, 40);
    let l2 = be64_at(&p, l1) & 0x00ff_ffff_ffff_fe00;
    let e0 = be64_at(&p, l2);
    patch(&p, l2 + 8, &e0.to_be_bytes());
    let lp = EventLoop::with_defaults().unwrap();
    let r = lp.block_on(async {
        let img = open(&p, true).await;
        img.qcow2.unwrap().check(Repair::None).await.unwrap()
    });
    assert!(r.corruptions > 0, "{r:?}");
    assert!(r.messages.iter().any(|m| m.contains("refcount")), "{r:?}");
}
