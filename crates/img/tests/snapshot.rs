//! `oxemu-img snapshot` and the snapshot list of `oxemu-img info` against qemu-img 7.2
//! on the same images: listings byte for byte, error messages, and snapshots made by
//! one tool applied and deleted by the other with `qemu-img check` clean throughout.

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

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("oxemu-img-snap")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

fn path(d: &tempfile::TempDir, n: &str) -> String {
    d.path().join(n).display().to_string()
}

fn qemu_io(img: &str, cmds: &[&str]) {
    let mut a = Vec::new();
    for c in cmds {
        a.push("-c");
        a.push(c);
    }
    a.push(img);
    let out = ok(run("qemu-io", &a));
    assert!(
        !out.contains("Pattern verification failed"),
        "{cmds:?}: {out}"
    );
}

fn check_clean(img: &str) {
    let o = qemu_img(&["check", "--output=json", img]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for k in ["corruptions", "leaks", "check-errors"] {
        assert_eq!(v.get(k).and_then(|x| x.as_u64()).unwrap_or(0), 0, "{v}");
    }
}

/// Both tools give the same exit status and the same stderr (tool name aside).
fn same_failure(args: &[&str]) {
    let q = qemu_img(args);
    let o = oxemu(args);
    assert_eq!(q.status.code(), o.status.code(), "{args:?}: {}", err(&o));
    // qemu-img warns about probed raw images first; compare the final line.
    let last = |s: String| s.lines().last().unwrap_or("").to_string();
    assert_eq!(
        last(err(&q).replace("qemu-img", "oxemu-img")),
        last(err(&o)),
        "{args:?}"
    );
}

/// Rewrites fields of the `n`th snapshot table entry: VM clock, VM state size
/// (64-bit extra field) and icount.
fn patch_entry(img: &str, n: usize, vm_clock: u64, vm_state: u64, icount: u64) {
    let mut b = std::fs::read(img).unwrap();
    let be64 = |b: &[u8], o: usize| u64::from_be_bytes(b[o..o + 8].try_into().unwrap());
    let mut off = be64(&b, 64) as usize;
    for _ in 0..n {
        let id = u16::from_be_bytes([b[off + 12], b[off + 13]]) as usize;
        let name = u16::from_be_bytes([b[off + 14], b[off + 15]]) as usize;
        let extra = u32::from_be_bytes(b[off + 36..off + 40].try_into().unwrap()) as usize;
        off = (off + 40 + extra + id + name).next_multiple_of(8);
    }
    b[off + 24..off + 32].copy_from_slice(&vm_clock.to_be_bytes());
    b[off + 32..off + 36].copy_from_slice(&(vm_state as u32).to_be_bytes());
    b[off + 40..off + 48].copy_from_slice(&vm_state.to_be_bytes());
    b[off + 56..off + 64].copy_from_slice(&icount.to_be_bytes());
    std::fs::write(img, b).unwrap();
}

#[test]
fn snapshot_list_and_info_match_qemu_img_byte_for_byte() {
    let d = tmp();
    let img = path(&d, "a.qcow2");
    ok(qemu_img(&["create", "-q", "-f", "qcow2", &img, "1M"]));
    qemu_io(&img, &["write -P 1 0 64k"]);
    let long = "n".repeat(300);
    for name in ["s1", "a_name_wider_than_the_column", &long, "s1"] {
        ok(qemu_img(&["snapshot", "-c", name, &img]));
    }
    // A VM clock, a VM state size and an unknown icount (-1), as a VM's savevm writes.
    patch_entry(&img, 1, 3_723_456_789_000, 1536, u64::MAX);
    patch_entry(&img, 2, 90_061_001_000_000, 5 << 30, 42);
    check_clean(&img);
    let q = ok(qemu_img(&["snapshot", "-l", &img]));
    assert_eq!(ok(oxemu(&["snapshot", "-l", &img])), q);
    assert!(q.contains("01:02:03.456") && q.contains("1.5 KiB"), "{q}");
    // Dates are local time, in whatever zone TZ names.
    let tz = |prog: &str| {
        ok(Command::new(prog)
            .args(["snapshot", "-l", &img])
            .env("TZ", "Asia/Kolkata")
            .output()
            .unwrap())
    };
    let qt = tz("qemu-img");
    assert_ne!(qt, q);
    assert_eq!(tz(env!("CARGO_BIN_EXE_oxemu-img")), qt);
    // -l opens read-only, so -U works next to a writer too.
    assert_eq!(ok(oxemu(&["snapshot", "-U", "-l", &img])), q);
    let qi = ok(qemu_img(&["info", &img]));
    let oi = ok(oxemu(&["info", &img]));
    let snaps = |s: &str| {
        s.lines()
            .skip_while(|l| !l.starts_with("Snapshot list:"))
            .take_while(|l| !l.starts_with("Format specific"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(!snaps(&qi).is_empty());
    assert_eq!(snaps(&oi), snaps(&qi));
    let qj: serde_json::Value =
        serde_json::from_str(&ok(qemu_img(&["info", "--output=json", &img]))).unwrap();
    let oj: serde_json::Value =
        serde_json::from_str(&ok(oxemu(&["info", "--output=json", &img]))).unwrap();
    assert_eq!(oj["snapshots"], qj["snapshots"]);
    assert_eq!(qj["snapshots"][1].get("icount"), None);
    // No snapshots: -l prints nothing, info has no list.
    let e = path(&d, "e.qcow2");
    ok(qemu_img(&["create", "-q", "-f", "qcow2", &e, "1M"]));
    assert_eq!(ok(oxemu(&["snapshot", "-l", &e])), "");
    assert!(!ok(oxemu(&["info", &e])).contains("Snapshot list"));
    assert!(ok(oxemu(&["info", "--output=json", &e]))
        .find("snapshots")
        .is_none());
}

#[test]
fn snapshots_made_by_either_tool_are_applied_and_deleted_by_the_other() {
    let d = tmp();
    let img = path(&d, "b.qcow2");
    ok(qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4k",
        &img,
        "4M",
    ]));
    qemu_io(&img, &["write -P 1 0 3M"]);
    ok(oxemu(&["snapshot", "-c", "one", &img]));
    check_clean(&img);
    qemu_io(&img, &["write -P 2 1M 1M"]);
    ok(qemu_img(&["snapshot", "-c", "two", &img]));
    qemu_io(&img, &["write -P 3 0 4k"]);
    // Both list the same table (ids 1 and 2).
    let q = ok(qemu_img(&["snapshot", "-l", &img]));
    assert_eq!(ok(oxemu(&["snapshot", "-l", &img])), q);
    assert!(
        q.contains("\n1         one") && q.contains("\n2         two"),
        "{q}"
    );

    ok(oxemu(&["snapshot", "-a", "one", &img]));
    check_clean(&img);
    qemu_io(&img, &["read -P 1 0 3M", "read -P 0 3M 1M"]);
    // By id too.
    ok(oxemu(&["snapshot", "-a", "2", &img]));
    check_clean(&img);
    qemu_io(
        &img,
        &["read -P 1 0 1M", "read -P 2 1M 1M", "read -P 1 2M 1M"],
    );
    ok(qemu_img(&["snapshot", "-a", "one", &img]));
    qemu_io(&img, &["read -P 1 0 3M"]);

    ok(oxemu(&["snapshot", "-q", "-d", "one", &img]));
    check_clean(&img);
    ok(oxemu(&["snapshot", "-c", "three", &img]));
    // The next id is one more than the largest.
    let l = ok(qemu_img(&["snapshot", "-l", &img]));
    assert!(l.contains("\n3         three"), "{l}");
    ok(qemu_img(&["snapshot", "-d", "two", &img]));
    ok(oxemu(&["snapshot", "-d", "three", &img]));
    check_clean(&img);
    assert_eq!(ok(qemu_img(&["snapshot", "-l", &img])), "");
    qemu_io(&img, &["read -P 1 0 3M"]);
    // Names are cut to 255 bytes, as qemu-img does.
    let long = "x".repeat(300);
    ok(oxemu(&["snapshot", "-c", &long, &img]));
    let l = ok(qemu_img(&["snapshot", "-l", &img]));
    assert!(l.contains(&format!(" {} ", "x".repeat(255))), "{l}");
    ok(qemu_img(&["snapshot", "-d", &long[..255], &img]));
    // Duplicate names are allowed, as in qemu-img; ids stay unique.
    ok(oxemu(&["snapshot", "-c", "dup", &img]));
    ok(oxemu(&["snapshot", "-c", "dup", &img]));
    let l = ok(qemu_img(&["snapshot", "-l", &img]));
    assert!(
        l.contains("\n1         dup") && l.contains("\n2         dup"),
        "{l}"
    );
    check_clean(&img);
}

#[test]
fn snapshot_errors_match_qemu_img() {
    let d = tmp();
    let img = path(&d, "c.qcow2");
    ok(qemu_img(&["create", "-q", "-f", "qcow2", &img, "1M"]));
    ok(qemu_img(&["snapshot", "-c", "s1", &img]));
    let raw = path(&d, "r.raw");
    ok(qemu_img(&["create", "-q", "-f", "raw", &raw, "1M"]));
    let r1 = path(&d, "r1.qcow2");
    ok(qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "refcount_bits=1",
        &r1,
        "1M",
    ]));
    qemu_io(&r1, &["write 0 64k"]);
    for args in [
        &["snapshot", "-a", "nope", &img][..],
        &["snapshot", "-d", "nope", &img],
        // -d looks for a name, not an id.
        &["snapshot", "-d", "1", &img],
        &["snapshot", "-l", "-c", "x", &img],
        &["snapshot", "-c", "x"],
        &["snapshot", "-c"],
        &["snapshot", "-l", &img, &img],
        &["snapshot", "-c", "x", &raw],
        &["snapshot", "-a", "x", &raw],
        &["snapshot", "-d", "x", &raw],
        &["snapshot", "-c", "x", &r1],
    ] {
        same_failure(args);
    }
    assert_eq!(ok(oxemu(&["snapshot", "-l", &raw])), "");
    // A refused snapshot leaves no trace (qemu-img leaks its L1 copy).
    let r2 = path(&d, "r2.qcow2");
    ok(qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "refcount_bits=1",
        &r2,
        "1M",
    ]));
    qemu_io(&r2, &["write 0 64k"]);
    assert!(!oxemu(&["snapshot", "-c", "x", &r2]).status.success());
    check_clean(&r2);
    // Global options are taken as qemu-img takes them: a secret object is accepted
    // (and unused). (With --image-opts oxemu-img also takes a plain file name, where
    // qemu-img wants an options string: see README.)
    for args in [vec![
        "snapshot",
        "--object",
        "secret,id=s,data=x",
        "-l",
        &img,
    ]] {
        let q = qemu_img(&args);
        let o = oxemu(&args);
        assert_eq!(q.status.code(), o.status.code(), "{args:?}: {}", err(&o));
    }
}
