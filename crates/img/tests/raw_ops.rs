//! map, compare, convert, resize and check on raw images, against qemu-img 7.2 and
//! qemu-io on the same files.

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

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A 4 MiB raw image (made by qemu-img) with data at 1 MiB and 2 MiB.
fn sample(dir: &tempfile::TempDir) -> String {
    let img = dir.path().join("a.raw").display().to_string();
    assert!(qemu_img(&["create", "-q", "-f", "raw", &img, "4M"])
        .status
        .success());
    let o = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 7 1M 64k",
            "-c",
            "write -P 9 2M 4k",
            &img,
        ],
    );
    assert!(o.status.success(), "{}", err(&o));
    img
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("oxemu-img-ops")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

#[test]
fn map_output_matches_qemu_img_in_human_and_json() {
    let d = tmp();
    let img = sample(&d);
    for args in [
        vec!["map", "-f", "raw"],
        vec!["map", "-f", "raw", "--output=json"],
    ] {
        let mut a = args.clone();
        a.push(&img);
        let ours = oxemu(&a);
        assert!(ours.status.success(), "{}", err(&ours));
        assert_eq!(out(&ours), out(&qemu_img(&a)), "{args:?}");
    }
}

#[test]
fn convert_output_is_identical_for_qemu_img_compare_and_sparse() {
    let d = tmp();
    let img = sample(&d);
    let dst = d.path().join("b.raw").display().to_string();
    let o = oxemu(&["convert", "-f", "raw", "-O", "raw", &img, &dst]);
    assert!(o.status.success(), "{}", err(&o));
    let c = qemu_img(&["compare", &img, &dst]);
    assert!(c.status.success(), "{}", out(&c));
    let m = qemu_img(&["map", "--output=json", &dst]);
    let map: serde_json::Value = serde_json::from_slice(&m.stdout).unwrap();
    let data: u64 = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    assert!(
        data <= (128 << 10),
        "zero ranges were written: {data} bytes of data"
    );
}

#[test]
fn compare_reports_first_mismatch_and_exit_codes_like_qemu_img() {
    let d = tmp();
    let a = sample(&d);
    let b = d.path().join("b.raw").display().to_string();
    std::fs::copy(&a, &b).unwrap();
    let same = oxemu(&["compare", &a, &b]);
    assert_eq!(same.status.code(), Some(0));
    assert_eq!(out(&same), "Images are identical.\n");
    assert!(
        run("qemu-io", &["-f", "raw", "-c", "write -P 1 3000000 1", &b])
            .status
            .success()
    );
    let ours = oxemu(&["compare", &a, &b]);
    let theirs = qemu_img(&["compare", &a, &b]);
    assert_eq!(ours.status.code(), Some(1));
    assert_eq!(out(&ours), out(&theirs));
    assert!(qemu_img(&["resize", "-q", "-f", "raw", &b, "8M"])
        .status
        .success());
    std::fs::copy(&a, &b).unwrap();
    assert!(qemu_img(&["resize", "-q", "-f", "raw", &b, "8M"])
        .status
        .success());
    assert_eq!(oxemu(&["compare", &a, &b]).status.code(), Some(0));
    let strict = oxemu(&["compare", "-s", &a, &b]);
    assert_eq!(strict.status.code(), Some(1));
    assert_eq!(out(&strict), out(&qemu_img(&["compare", "-s", &a, &b])));
    let missing = oxemu(&["compare", &a, "/nonexistent/x.raw"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(err(&missing).contains("Could not open '/nonexistent/x.raw'"));
}

#[test]
fn resize_grows_and_shrinks_only_with_shrink_flag() {
    let d = tmp();
    let img = sample(&d);
    let o = oxemu(&["resize", "-f", "raw", &img, "+4M"]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), "Image resized.\n");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 8 << 20);
    let refused = oxemu(&["resize", "-f", "raw", &img, "-1M"]);
    assert!(!refused.status.success());
    assert!(err(&refused).contains("--shrink"));
    let o = oxemu(&["resize", "-f", "raw", "--shrink", &img, "-6M"]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 2 << 20);
    let bad = oxemu(&["resize", "-f", "raw", &img, "12Q"]);
    assert!(!bad.status.success());
    assert_eq!(err(&bad).lines().count(), 1, "{}", err(&bad));
}

#[test]
fn check_on_raw_is_unsupported_with_qemu_img_exit_code() {
    let d = tmp();
    let img = sample(&d);
    let ours = oxemu(&["check", &img]);
    let theirs = qemu_img(&["check", &img]);
    assert_eq!(ours.status.code(), theirs.status.code());
    assert!(err(&ours).contains("does not support checks"));
}

#[test]
fn convert_into_existing_target_with_n_zeroes_stale_data() {
    let d = tmp();
    let img = sample(&d);
    let dst = d.path().join("old.raw").display().to_string();
    assert!(qemu_img(&["create", "-q", "-f", "raw", &dst, "4M"])
        .status
        .success());
    assert!(
        run("qemu-io", &["-f", "raw", "-c", "write -P 85 0 4M", &dst])
            .status
            .success()
    );
    let o = oxemu(&["convert", "-n", "-p", "-O", "raw", &img, &dst]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).ends_with("    (100.00/100%)\r\n"), "{}", out(&o));
    let c = qemu_img(&["compare", &img, &dst]);
    assert!(c.status.success(), "{}", out(&c));
}
