//! Real NBD clients (qemu-img, qemu-io, nbdinfo, nbdcopy) against `oxemu-nbd` over
//! unix sockets and TCP.

mod common;
use common::*;

fn both_transports(f: impl Fn(bool)) {
    f(false);
    f(true);
}

#[test]
fn qemu_img_info_compare_convert_over_unix_and_tcp() {
    both_transports(|tcp| {
        let d = tempfile::tempdir().unwrap();
        let img = make_image(d.path());
        let srv = start(d.path(), tcp, &["-t", "-e", "0"], &img);
        let uri = srv.uri("");
        let info = run_ok("qemu-img", &["info", &uri]);
        assert!(
            info.contains("virtual size: 4 MiB (4194304 bytes)"),
            "{info}"
        );
        let cmp = run_ok(
            "qemu-img",
            &[
                "compare",
                "-f",
                "raw",
                "-F",
                "raw",
                img.to_str().unwrap(),
                &uri,
            ],
        );
        assert!(cmp.contains("Images are identical"), "{cmp}");
        let out = d.path().join("copy.raw");
        run_ok(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "raw",
                &uri,
                out.to_str().unwrap(),
            ],
        );
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&img).unwrap());
    });
}

#[test]
fn qemu_io_writes_reach_the_image_and_read_back() {
    both_transports(|tcp| {
        let d = tempfile::tempdir().unwrap();
        let img = make_image(d.path());
        let srv = start(d.path(), tcp, &["-t", "-e", "0"], &img);
        let uri = srv.uri("");
        run_ok(
            "qemu-io",
            &[
                "-f",
                "raw",
                "-c",
                "write -P 0xa5 2M 128k",
                "-c",
                "write -P 0x5a -f 3M 4k",
                &uri,
            ],
        );
        let o = run_ok(
            "qemu-io",
            &[
                "-f",
                "raw",
                "-c",
                "read -P 0xa5 2M 128k",
                "-c",
                "read -P 0x5a 3M 4k",
                &uri,
            ],
        );
        assert!(!o.contains("Pattern verification failed"), "{o}");
        drop(srv);
        let data = std::fs::read(&img).unwrap();
        assert!(data[2 << 20..(2 << 20) + (128 << 10)]
            .iter()
            .all(|&b| b == 0xa5));
        assert!(data[3 << 20..(3 << 20) + 4096].iter().all(|&b| b == 0x5a));
    });
}

#[test]
fn qemu_io_write_to_read_only_export_fails() {
    let d = tempfile::tempdir().unwrap();
    let img = make_image(d.path());
    let srv = start(d.path(), false, &["-t", "-r"], &img);
    let o = run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 1 0 4k", &srv.uri("")],
    );
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() || text.contains("write failed"),
        "{text}"
    );
    assert!(
        text.contains("read-only")
            || text.contains("Permission denied")
            || text.contains("Operation not permitted"),
        "{text}"
    );
}

#[test]
fn nbdinfo_list_shows_export_name_and_description() {
    both_transports(|tcp| {
        let d = tempfile::tempdir().unwrap();
        let img = make_image(d.path());
        let srv = start(
            d.path(),
            tcp,
            &["-t", "-e", "0", "-x", "disk0", "-D", "test disk"],
            &img,
        );
        let o = run_ok("nbdinfo", &["--list", &srv.uri("")]);
        assert!(o.contains("export=\"disk0\""), "{o}");
        assert!(o.contains("description: test disk"), "{o}");
        assert!(o.contains("export-size: 4194304"), "{o}");
    });
}

#[test]
fn nbdinfo_map_reports_data_holes_and_allocation_depth() {
    both_transports(|tcp| {
        let d = tempfile::tempdir().unwrap();
        let img = make_image(d.path());
        let srv = start(d.path(), tcp, &["-t", "-e", "0", "-A"], &img);
        let uri = srv.uri("");
        let map = run_ok("nbdinfo", &["--map", &uri]);
        let lines: Vec<Vec<&str>> = map
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines[0][..4], ["0", "1048576", "0", "data"], "{map}");
        assert_eq!(lines.last().unwrap()[2..], ["3", "hole,zero"], "{map}");
        let total: u64 = lines.iter().map(|l| l[1].parse::<u64>().unwrap()).sum();
        assert_eq!(total, 4 << 20);
        let depth = run_ok("nbdinfo", &["--map=qemu:allocation-depth", &uri]);
        let total: u64 = depth
            .lines()
            .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(total, 4 << 20, "{depth}");
        let ctx = run_ok("nbdinfo", &["--list", &uri]);
        assert!(
            ctx.contains("qemu:allocation-depth") && ctx.contains("base:allocation"),
            "{ctx}"
        );
    });
}

#[test]
fn nbdcopy_copies_both_ways() {
    both_transports(|tcp| {
        let d = tempfile::tempdir().unwrap();
        let img = make_image(d.path());
        let srv = start(d.path(), tcp, &["-t", "-e", "0"], &img);
        let uri = srv.uri("");
        let out = d.path().join("out.raw");
        run_ok("nbdcopy", &[&uri, out.to_str().unwrap()]);
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&img).unwrap());
        let src = d.path().join("src.raw");
        let pattern: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &pattern).unwrap();
        run_ok("nbdcopy", &[src.to_str().unwrap(), &uri]);
        drop(srv);
        assert_eq!(std::fs::read(&img).unwrap(), pattern);
    });
}

#[test]
fn server_exits_after_the_last_client_without_persistent() {
    let d = tempfile::tempdir().unwrap();
    let img = make_image(d.path());
    let mut srv = start(d.path(), false, &[], &img);
    run_ok("qemu-img", &["info", &srv.uri("")]);
    let st = srv
        .wait_exit()
        .expect("oxemu-nbd did not exit after its client left");
    assert!(st.success());
    assert!(!srv.sock.as_ref().unwrap().exists(), "socket not removed");
}

#[test]
fn qcow2_image_is_exported_byte_identical() {
    let d = tempfile::tempdir().unwrap();
    let q = d.path().join("disk.qcow2");
    run_ok(
        "qemu-img",
        &["create", "-f", "qcow2", q.to_str().unwrap(), "4M"],
    );
    run_ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x3c 512k 1M",
            q.to_str().unwrap(),
        ],
    );
    let sock = d.path().join("q.sock");
    let mut child = std::process::Command::new(BIN)
        .args([
            "-t",
            "-r",
            "-k",
            sock.to_str().unwrap(),
            q.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while !sock.exists() && t.elapsed() < std::time::Duration::from_secs(10) {
        if let Some(st) = child.try_wait().unwrap() {
            let mut e = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut e).unwrap();
            panic!("oxemu-nbd exited ({st}) instead of exporting the qcow2 image: {e}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let out = d.path().join("back.raw");
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &uri,
            out.to_str().unwrap(),
        ],
    );
    let exp = d.path().join("exp.raw");
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            q.to_str().unwrap(),
            exp.to_str().unwrap(),
        ],
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&exp).unwrap());
}

/// Bytes the file takes on disk.
fn disk_usage(p: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

/// Trims pass down to the file only with `--discard=unmap`, as with qemu-nbd: then a
/// qcow2 image gives the freed clusters' storage back to the file system.
#[test]
fn discard_mode_decides_whether_trims_free_storage_in_a_qcow2_image() {
    let d = tempfile::tempdir().unwrap();
    for (mode, freed) in [
        (None, false),
        (Some("--discard=ignore"), false),
        (Some("--discard=unmap"), true),
    ] {
        let q = d.path().join("t.qcow2");
        let _ = std::fs::remove_file(&q);
        run_ok(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", q.to_str().unwrap(), "16M"],
        );
        let mut args = vec!["-t", "-f", "qcow2"];
        args.extend(mode);
        let srv = start(d.path(), false, &args, &q);
        let uri = srv.uri("");
        run_ok("qemu-io", &["-f", "raw", "-c", "write -P 7 0 8M", &uri]);
        run_ok("qemu-io", &["-f", "raw", "-c", "flush", &uri]);
        let before = disk_usage(&q);
        run_ok(
            "qemu-io",
            &["-f", "raw", "-c", "discard 0 4M", "-c", "flush", &uri],
        );
        let out = run_ok(
            "qemu-io",
            &[
                "-f",
                "raw",
                "-c",
                "read -P 0 0 4M",
                "-c",
                "read -P 7 4M 4M",
                &uri,
            ],
        );
        assert!(!out.contains("verification failed"), "{mode:?}: {out}");
        drop(srv);
        let after = disk_usage(&q);
        if freed {
            assert!(
                after + (3 << 20) < before,
                "{mode:?}: {before} -> {after} bytes on disk"
            );
        } else {
            assert!(
                after >= before,
                "{mode:?}: {before} -> {after} bytes on disk"
            );
        }
        run_ok("qemu-img", &["check", q.to_str().unwrap()]);
        // The freed clusters are reused: new data lands and reads back.
        run_ok("qemu-io", &["-c", "write -P 9 0 4M", q.to_str().unwrap()]);
        run_ok("qemu-img", &["check", q.to_str().unwrap()]);
    }
    let o = run(BIN, &["--discard=bogus", "x.img"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("Invalid discard mode"));
}
