//! oxemu-img against qemu-img 7.2: output shapes, bench with every engine, bad input.

use std::path::Path;
use std::process::{Command, Output};

fn oxemu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oxemu-img"))
        .args(args)
        .output()
        .unwrap()
}

fn qemu_img(args: &[&str]) -> Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is installed by scripts/install-deps")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// O_DIRECT needs a real file system, not tmpfs.
fn disk_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("oxemu-img")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

fn p(dir: &tempfile::TempDir, name: &str) -> String {
    dir.path().join(name).display().to_string()
}

#[test]
fn create_accepts_qemu_size_suffixes_and_info_json_matches_qemu_img() {
    let d = disk_dir();
    let ours = p(&d, "ours.img");
    let theirs = p(&d, "theirs.img");
    for (img, size) in [(&ours, "1536M"), (&theirs, "1536M")] {
        let o = if img == &ours {
            oxemu(&["create", "-f", "raw", img, size])
        } else {
            qemu_img(&["create", "-f", "raw", img, size])
        };
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(std::fs::metadata(&ours).unwrap().len(), 1536 << 20);
    let mut a: serde_json::Value =
        serde_json::from_slice(&oxemu(&["info", "--output=json", &theirs]).stdout).unwrap();
    let mut b: serde_json::Value =
        serde_json::from_slice(&qemu_img(&["info", "--output=json", &theirs]).stdout).unwrap();
    // Same image, same fields and values.
    for v in [&mut a, &mut b] {
        v.as_object_mut().unwrap().remove("actual-size");
    }
    assert_eq!(a, b);
    let human = stdout(&oxemu(&["info", &ours]));
    assert!(
        human.contains("virtual size: 1.5 GiB (1610612736 bytes)"),
        "{human}"
    );
    assert!(human.contains("file format: raw"), "{human}");
}

#[test]
fn bench_prints_qemu_lines_for_every_engine() {
    let d = disk_dir();
    let img = p(&d, "b.img");
    assert!(oxemu(&["create", "-f", "raw", &img, "16M"])
        .status
        .success());
    for (aio, cache) in [
        ("threads", "writeback"),
        ("native", "none"),
        ("io_uring", "writeback"),
        ("io_uring", "none"),
    ] {
        for write in [false, true] {
            let mut args = vec![
                "bench", "-f", "raw", "-c", "2000", "-d", "16", "-i", aio, "-t", cache,
            ];
            if write {
                args.extend(["-w", "--pattern=170", "--flush-interval=100"]);
            }
            args.push(&img);
            let o = oxemu(&args);
            let out = stdout(&o);
            assert!(o.status.success(), "{aio} {cache}: {}", stderr(&o));
            let rw = if write { "write" } else { "read" };
            assert!(out.starts_with(&format!(
                "Sending 2000 {rw} requests, 4096 bytes each, 16 in parallel (starting at offset 0, step size 4096)\n"
            )), "{out}");
            assert!(
                out.lines()
                    .any(|l| l.starts_with("Run completed in ") && l.ends_with(" seconds.")),
                "{out}"
            );
            assert!(out.contains("IOPS: ") && out.contains("MiB/s"), "{out}");
        }
    }
    // The writes really landed: 2000 x 4 KiB = the first 8000 KiB carry the pattern.
    let data = std::fs::read(&img).unwrap();
    assert!(data[..2000 * 4096].iter().all(|&b| b == 170));
    assert!(data[2000 * 4096..].iter().all(|&b| b == 0));
}

#[test]
fn bench_wraps_offsets_around_the_image_like_qemu_img() {
    let d = disk_dir();
    let img = p(&d, "w.img");
    assert!(oxemu(&["create", "-f", "raw", &img, "64k"])
        .status
        .success());
    // 40 writes of 4 KiB with step 8 KiB starting at 4 KiB wrap twice around 64 KiB.
    let o = oxemu(&[
        "bench",
        "-w",
        "-c",
        "40",
        "-d",
        "4",
        "-o",
        "4096",
        "-S",
        "8192",
        "--pattern=1",
        &img,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let data = std::fs::read(&img).unwrap();
    for blk in 0..16 {
        let expect = if blk % 2 == 1 { 1 } else { 0 };
        assert!(
            data[blk * 4096..][..4096].iter().all(|&b| b == expect),
            "block {blk}"
        );
    }
}

fn assert_one_line_error(o: &Output, needle: &str) {
    assert!(!o.status.success(), "expected failure");
    let e = stderr(o);
    assert!(!e.contains("panicked"), "{e}");
    let first = e.lines().next().unwrap_or("");
    assert!(
        first.starts_with("oxemu-img: ") && first.contains(needle),
        "{e}"
    );
    assert!(e.lines().count() <= 2, "{e}");
}

#[test]
fn bad_input_gives_one_line_errors() {
    let d = disk_dir();
    let img = p(&d, "x.img");
    assert!(oxemu(&["create", "-f", "raw", &img, "1M"]).status.success());
    assert_one_line_error(
        &oxemu(&["bench", &p(&d, "missing.img")]),
        "No such file or directory",
    );
    assert_one_line_error(
        &oxemu(&["bench", "--foo", &img]),
        "unrecognized option '--foo'",
    );
    assert_one_line_error(&oxemu(&["bench", "-s", "0", &img]), "Invalid buffer size");
    assert_one_line_error(
        &oxemu(&["bench", "-t", "none", "-s", "1000", &img]),
        "alignment that cache=none requires",
    );
    assert_one_line_error(
        &oxemu(&["bench", "-t", "none", "-o", "100", &img]),
        "offset (-o) 100",
    );
    assert_one_line_error(
        &oxemu(&["bench", "-i", "native", &img]),
        "requires cache.direct=on",
    );
    assert_one_line_error(
        &oxemu(&["bench", "-i", "bogus", &img]),
        "Invalid aio option",
    );
    assert_one_line_error(&oxemu(&["bench", "-c", "x", &img]), "Invalid request count");
    assert_one_line_error(
        &oxemu(&["bench", "--flush-interval=3", &img]),
        "only available in write tests",
    );
    assert_one_line_error(
        &oxemu(&["create", "-f", "raw", &p(&d, "y.img"), "1Q"]),
        "Invalid image size",
    );
    assert_one_line_error(
        &oxemu(&["create", "-f", "raw", &p(&d, "y.img"), "16E"]),
        "less than 8 EiB",
    );
    assert_one_line_error(&oxemu(&["frobnicate"]), "Command not found");
    let empty = p(&d, "empty.img");
    assert!(oxemu(&["create", "-f", "raw", &empty, "0"])
        .status
        .success());
    assert_one_line_error(&oxemu(&["bench", &empty]), "empty");
    assert!(Path::new(&empty).exists());
}

#[test]
fn write_bench_on_image_held_by_qemu_io_follows_qemu_img_locking() {
    let d = disk_dir();
    for fmt in ["raw", "qcow2"] {
        let img = p(&d, &format!("l.{fmt}"));
        assert!(oxemu(&["create", "-f", fmt, &img, "1M"]).status.success());
        // qemu-io keeps the image open read-write while it waits on stdin.
        let mut child = Command::new("qemu-io")
            .args(["-f", fmt, &img])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
        let args = ["bench", "-f", fmt, "-w", "-c", "10", &img];
        let o = oxemu(&args);
        let q = Command::new("qemu-img").args(args).output().unwrap();
        drop(child.stdin.take());
        let _ = child.wait();
        if fmt == "raw" {
            // qemu-io shares a raw image's write permission, so qemu-img may write too.
            assert!(q.status.success());
            assert!(o.status.success(), "{}", stderr(&o));
        } else {
            // qcow2 metadata is never shared: both refuse.
            assert!(!q.status.success());
            assert_one_line_error(&o, "Failed to get \"write\" lock");
            assert!(stderr(&o).contains("Is another process using the image"));
        }
    }
}
