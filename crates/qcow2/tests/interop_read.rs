//! Images made and written by qemu-img/qemu-io read back byte-identical through oxemu.

mod common;

use common::*;
use std::path::Path;

fn qemu_io(img: &Path, cmds: &[&str]) {
    let mut args = vec![];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(img.to_str().unwrap());
    run("qemu-io", &args);
}

fn assert_same(img: &Path, dir: &Path) {
    let want = qemu_raw(img, dir);
    let got = oxemu_read_all(img);
    assert_eq!(want.len(), got.len());
    if let Some(i) = (0..want.len()).find(|&i| want[i] != got[i]) {
        panic!("{}: first difference at byte {i:#x}", img.display());
    }
}

fn written(dir: &Path, name: &str, opts: &str, size: &str) -> std::path::PathBuf {
    let img = dir.join(name);
    run("qemu-img", &["create", "-q", "-f", "qcow2", "-o", opts, img.to_str().unwrap(), size]);
    qemu_io(&img, &[
        "write -P 0x11 0 70k",
        "write -P 0x22 1M 3k",
        "write -z 2M 128k",
        "write -P 0x33 3000k 513",
        "write -P 0x44 5M 1M",
        "discard 5M 64k",
    ]);
    img
}

#[test]
fn qemu_written_images_read_identically_for_every_cluster_size() {
    let d = tempfile::tempdir().unwrap();
    for cs in ["512", "4k", "64k", "2M"] {
        let img = written(d.path(), &format!("cs{cs}.qcow2"), &format!("cluster_size={cs}"), "8M");
        assert_same(&img, d.path());
    }
}

#[test]
fn qemu_written_extended_l2_images_read_identically() {
    let d = tempfile::tempdir().unwrap();
    for cs in ["64k", "2M"] {
        let img = written(d.path(), &format!("ext{cs}.qcow2"), &format!("cluster_size={cs},extended_l2=on"), "8M");
        assert_same(&img, d.path());
    }
}

#[test]
fn compressed_images_from_qemu_img_convert_read_identically() {
    let d = tempfile::tempdir().unwrap();
    let src = written(d.path(), "src.qcow2", "cluster_size=64k", "8M");
    for (name, opt) in [("zlib.qcow2", "compression_type=zlib"), ("zstd.qcow2", "compression_type=zstd")] {
        let dst = d.path().join(name);
        run("qemu-img", &["convert", "-c", "-O", "qcow2", "-o", opt, src.to_str().unwrap(), dst.to_str().unwrap()]);
        assert_same(&dst, d.path());
    }
}

#[test]
fn backing_chain_of_depth_four_reads_identically() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.raw");
    std::fs::write(&base, vec![0x5a; 4 << 20]).unwrap();
    let mut prev = ("base.raw".to_string(), "raw");
    for i in 0..3 {
        let name = format!("l{i}.qcow2");
        let img = d.path().join(&name);
        run("qemu-img", &["create", "-q", "-f", "qcow2", "-b", &prev.0, "-F", prev.1, img.to_str().unwrap(), "6M"]);
        qemu_io(&img, &[&format!("write -P {} {}k 5k", 0x60 + i, 100 + i * 300), &format!("write -z {}k 64k", 1024 * (i + 1))]);
        prev = (name, "qcow2");
    }
    assert_same(&d.path().join("l2.qcow2"), d.path());
}
