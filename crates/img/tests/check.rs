//! `oxemu-img check` against qemu-img 7.2 check on the same images: VM state,
//! internal snapshots, hand-corrupted metadata, repairs (-r leaks / -r all), the
//! corrupt bit and dirty lazy-refcount images.

use std::process::{Command, Output};

fn run(prog: &str, args: &[&str]) -> Output {
    Command::new(prog).args(args).output().unwrap()
}

fn oxemu(args: &[&str]) -> Output {
    run(env!("CARGO_BIN_EXE_oxemu-img"), args)
}

fn qemu_img(args: &[&str]) -> Output {
    run("qemu-img", args)
}

fn qemu_io(img: &str, cmds: &[&str]) {
    let mut a = Vec::new();
    for c in cmds {
        a.push("-c");
        a.push(c);
    }
    a.push(img);
    let o = run("qemu-io", &a);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("oxemu-img-check")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

fn path(d: &tempfile::TempDir, n: &str) -> String {
    d.path().join(n).display().to_string()
}

fn create(img: &str, opts: &str, size: &str) {
    let mut a = vec!["create", "-q", "-f", "qcow2"];
    if !opts.is_empty() {
        a.extend(["-o", opts]);
    }
    a.extend([img, size]);
    let o = qemu_img(&a);
    assert!(o.status.success(), "{}", text(&o.stderr));
}

/// `check --output=json` of either tool: exit code and the JSON without the file name.
fn json_check(ours: bool, img: &str, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut a = vec!["check", "--output=json"];
    a.extend(extra);
    a.push(img);
    let o = if ours { oxemu(&a) } else { qemu_img(&a) };
    let mut v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {} {}", text(&o.stdout), text(&o.stderr)));
    v.as_object_mut().unwrap().remove("filename");
    (o.status.code(), v)
}

/// Asserts both tools report the same (exit code, counters) and the same finding
/// lines (qemu-img's own `qemu-img:` lines aside); returns our stderr.
fn same_check(img: &str) -> String {
    let ours = oxemu(&["check", img]);
    let theirs = qemu_img(&["check", img]);
    let lines = |o: &Output| -> Vec<String> {
        let mut v: Vec<String> = text(&o.stderr)
            .lines()
            .filter(|l| !l.starts_with("qemu-img:") && !l.starts_with("oxemu-img:"))
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        text(&ours.stdout),
        text(&theirs.stdout),
        "{}",
        text(&ours.stderr)
    );
    assert_eq!(lines(&ours), lines(&theirs));
    assert_eq!(ours.status.code(), theirs.status.code());
    assert_eq!(json_check(true, img, &[]), json_check(false, img, &[]));
    text(&ours.stderr)
}

fn qemu_clean(img: &str) {
    let o = qemu_img(&["check", img]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

fn read_u64(img: &str, off: u64) -> u64 {
    let b = std::fs::read(img).unwrap();
    u64::from_be_bytes(b[off as usize..off as usize + 8].try_into().unwrap())
}

fn write_u64(img: &str, off: u64, v: u64) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    f.write_all(&v.to_be_bytes()).unwrap();
}

const COPIED: u64 = 1 << 63;
const OFFSET: u64 = 0x00ff_ffff_ffff_fe00;

/// Offset of the first L2 table (from L1 entry 0).
fn first_l2(img: &str) -> u64 {
    read_u64(img, read_u64(img, 40)) & OFFSET
}

#[test]
fn vm_state_clusters_are_neither_leaks_nor_freed_by_repair() {
    let d = tmp();
    let img = path(&d, "vmstate.qcow2");
    create(&img, "", "64M");
    qemu_io(&img, &["write -b 0 4k", "write -P 7 0 64k"]);
    assert!(same_check(&img).is_empty());
    let o = oxemu(&["check", "-r", "leaks", &img]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    qemu_clean(&img);
    let o = oxemu(&["check", "-r", "all", &img]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    qemu_clean(&img);
    // The VM state still reads back.
    let o = run("qemu-io", &["-c", "read -b 0 4k", &img]);
    assert!(o.status.success());
}

fn snapshot_image(img: &str) {
    create(img, "cluster_size=4096", "16M");
    qemu_io(img, &["write -P 1 0 64k", "write -b 0 8k"]);
    assert!(qemu_img(&["snapshot", "-c", "s1", img]).status.success());
    qemu_io(img, &["write -P 2 32k 128k", "discard 1M 64k"]);
    assert!(qemu_img(&["snapshot", "-c", "second", img])
        .status
        .success());
    qemu_io(img, &["write -P 3 4M 64k", "write -z 0 4k"]);
    assert!(qemu_img(&["snapshot", "-c", "s3", img]).status.success());
    assert!(qemu_img(&["snapshot", "-d", "second", img])
        .status
        .success());
    qemu_io(img, &["write -P 4 8k 8k"]);
}

#[test]
fn snapshot_images_are_checked_like_qemu_img() {
    let d = tmp();
    let img = path(&d, "snap.qcow2");
    snapshot_image(&img);
    assert!(same_check(&img).is_empty());
    for r in ["leaks", "all"] {
        let (code, v) = json_check(true, &img, &["-r", r]);
        assert_eq!(code, Some(0), "{v}");
        qemu_clean(&img);
    }
    // A leak next to the snapshots is found and repaired alone.
    let end = std::fs::metadata(&img).unwrap().len();
    let rt = read_u64(&img, 48);
    let rb = read_u64(&img, rt);
    let c = end / 4096;
    let b = std::fs::read(&img).unwrap();
    let cur = u16::from_be_bytes([b[(rb + 2 * c) as usize], b[(rb + 2 * c) as usize + 1]]);
    assert_eq!(cur, 0);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(end + 4096)
        .unwrap();
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.seek(SeekFrom::Start(rb + 2 * c)).unwrap();
        f.write_all(&1u16.to_be_bytes()).unwrap();
    }
    let e = same_check(&img);
    assert!(
        e.contains(&format!("Leaked cluster {c} refcount=1 reference=0")),
        "{e}"
    );
    let (code, _) = json_check(true, &img, &["-r", "leaks"]);
    assert_eq!(code, Some(0));
    qemu_clean(&img);
}

/// Corrupts a copy of a small image with `f`, compares both checkers on it, then
/// repairs one copy with each tool (`-r all`) and compares the results (and, when
/// qemu-img can repair it, that the image is then clean).
fn corrupted(name: &str, opts: &str, repairable: bool, f: impl Fn(&str)) -> String {
    let d = tmp();
    let a = path(&d, &format!("{name}-a.qcow2"));
    create(&a, opts, "16M");
    qemu_io(&a, &["write -P 1 0 192k", "write -P 2 4M 64k"]);
    f(&a);
    let b = path(&d, &format!("{name}-b.qcow2"));
    std::fs::copy(&a, &b).unwrap();
    let found = same_check(&a);
    let ours = json_check(true, &a, &["-r", "all"]);
    let theirs = json_check(false, &b, &["-r", "all"]);
    assert_eq!(ours, theirs, "{found}");
    if repairable {
        qemu_clean(&a);
    } else {
        assert_eq!(json_check(false, &a, &[]), json_check(false, &b, &[]));
    }
    found
}

#[test]
fn l2_entry_far_past_the_end_of_the_file_is_found() {
    let e = corrupted("far", "", false, |img| {
        let l2 = first_l2(img);
        write_u64(img, l2 + 8, (1u64 << 40) | COPIED);
    });
    assert!(
        e.contains("exceeding the end of the file by one cluster or more"),
        "{e}"
    );
}

#[test]
fn l1_entry_without_copied_is_found_and_fixed() {
    let e = corrupted("l1copied", "", true, |img| {
        let l1 = read_u64(img, 40);
        write_u64(img, l1, read_u64(img, l1) & !COPIED);
    });
    assert!(
        e.contains("ERROR OFLAG_COPIED L2 cluster: l1_index=0"),
        "{e}"
    );
}

#[test]
fn refcount_block_referenced_twice_is_found_and_rebuilt() {
    let e = corrupted("twice", "cluster_size=512", true, |img| {
        let rt = read_u64(img, 48);
        write_u64(img, rt + 8, read_u64(img, rt));
    });
    assert!(e.contains("ERROR refcount block 1 refcount=2"), "{e}");
}

#[test]
fn missing_refcount_block_is_rebuilt() {
    let e = corrupted("norefblock", "cluster_size=512", true, |img| {
        let rt = read_u64(img, 48);
        write_u64(img, rt + 8, 0);
    });
    assert!(e.contains("refcount=0 reference=1"), "{e}");
}

#[test]
fn unaligned_zero_cluster_is_cleared_by_repair() {
    let e = corrupted("unaligned", "", true, |img| {
        let l2 = first_l2(img);
        let data = read_u64(img, l2 + 16) & OFFSET;
        write_u64(img, l2 + 16, (data + 512) | COPIED | 1);
    });
    assert!(
        e.contains("Preallocated cluster is not properly aligned"),
        "{e}"
    );
}

#[test]
fn image_marked_corrupt_is_repaired_and_unmarked() {
    let d = tmp();
    let img = path(&d, "corrupt.qcow2");
    create(&img, "", "16M");
    qemu_io(&img, &["write -P 1 0 128k"]);
    let l1 = read_u64(&img, 40);
    write_u64(&img, l1, read_u64(&img, l1) & !COPIED);
    write_u64(&img, 72, read_u64(&img, 72) | 2);
    let o = oxemu(&["check", "-r", "all", &img]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    assert!(text(&o.stderr).contains("Repairing OFLAG_COPIED L2 cluster"));
    assert_eq!(read_u64(&img, 72) & 2, 0, "corrupt bit still set");
    qemu_clean(&img);
}

#[test]
fn dirty_lazy_refcount_image_is_reported_then_repaired_like_qemu_img() {
    let d = tmp();
    let a = path(&d, "lazy-a.qcow2");
    create(&a, "lazy_refcounts=on", "16M");
    let o = run("qemu-io", &["-c", "write -P 1 0 256k", "-c", "abort", &a]);
    assert!(!o.status.success());
    assert_eq!(read_u64(&a, 72) & 1, 1, "dirty bit not set");
    let b = path(&d, "lazy-b.qcow2");
    std::fs::copy(&a, &b).unwrap();
    let e = same_check(&a);
    assert!(e.contains("ERROR cluster"), "{e}");
    let ours = oxemu(&["check", "-r", "all", &a]);
    let theirs = qemu_img(&["check", "-r", "all", &b]);
    assert_eq!(text(&ours.stdout), text(&theirs.stdout).replace(&b, &a));
    assert_eq!(ours.status.code(), theirs.status.code());
    assert!(
        text(&ours.stderr).contains("Repairing cluster"),
        "{}",
        text(&ours.stderr)
    );
    assert_eq!(read_u64(&a, 72) & 1, 0, "dirty bit still set");
    qemu_clean(&a);
}

#[test]
fn persistent_bitmap_clusters_are_neither_leaks_nor_freed_by_repair() {
    let d = tmp();
    let img = path(&d, "bm.qcow2");
    create(&img, "", "64M");
    for args in [
        vec!["bitmap", "--add", &img, "b0"],
        vec!["bitmap", "--add", "-g", "512", &img, "b1"],
    ] {
        let o = qemu_img(&args);
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    // Writes through qemu-io mark the bitmaps dirty: their tables get data clusters.
    qemu_io(&img, &["write -P 1 0 8M"]);
    same_check(&img);
    for fix in ["leaks", "all"] {
        let o = oxemu(&["check", "-r", fix, &img]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        qemu_clean(&img);
    }
    // The bitmaps are still there and consistent for QEMU.
    let info = text(&qemu_img(&["info", &img]).stdout);
    assert!(info.contains("name: b1"), "{info}");
}
