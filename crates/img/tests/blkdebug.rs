//! `blkdebug:CONFIG:IMAGE` names in oxemu-img, side by side with qemu-img 7.2 on the
//! same files: injected read errors fail `convert` and `compare` with qemu-img's
//! message and exit code, an injected ENOSPC fails a `convert -n` into the filter,
//! `set-state` rules move between rules, `sector` rules hit only their chunk, and bad
//! names and configs are refused with qemu-img's texts.

use std::path::Path;
use std::process::{Command, Output};

fn run(prog: &str, args: &[&str]) -> Output {
    Command::new(prog).args(args).output().unwrap()
}

fn qemu_img(args: &[&str]) -> Output {
    run("qemu-img", args)
}

fn oxemu_img(args: &[&str]) -> Output {
    run(env!("CARGO_BIN_EXE_oxemu-img"), args)
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

/// stdout, stderr (with the program name as qemu-img's) and the exit code.
fn result(o: &Output) -> (String, String, Option<i32>) {
    (
        text(&o.stdout),
        text(&o.stderr).replace("oxemu-img:", "qemu-img:"),
        o.status.code(),
    )
}

/// Runs `args` through both programs in `dir`; asserts that they print the same and
/// exit the same, and returns qemu-img's result.
fn same(dir: &Path, args: &[&str]) -> (String, String, Option<i32>) {
    let q = Command::new("qemu-img")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_oxemu-img"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let (q, o) = (result(&q), result(&o));
    assert_eq!(
        o, q,
        "oxemu-img {args:?} (left) differs from qemu-img (right)"
    );
    q
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("oxemu-img-blkdebug")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

/// An 8 MiB raw image full of data, and the same as qcow2 (both made by QEMU).
fn images(dir: &Path) {
    let raw = dir.join("src.raw");
    let raw = raw.to_str().unwrap();
    assert!(qemu_img(&["create", "-q", "-f", "raw", raw, "8M"])
        .status
        .success());
    let o = run("qemu-io", &["-f", "raw", "-c", "write -P 0xab 0 8M", raw]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let q = dir.join("src.qcow2");
    let o = qemu_img(&["convert", "-O", "qcow2", raw, q.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
}

fn config(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn injected_read_errors_fail_convert_and_compare_as_in_qemu_img() {
    let d = tmp();
    let dir = d.path();
    images(dir);
    config(dir, "eio.conf", "[inject-error]\nevent = \"read_aio\"\n");
    config(
        dir,
        "once.conf",
        "[inject-error]\nevent = \"read_aio\"\nonce = \"on\"\n",
    );
    // sector 6144 = byte 3 MiB: only the chunk holding it fails.
    config(
        dir,
        "sector.conf",
        "[inject-error]\nevent = \"read_aio\"\nsector = \"6144\"\n",
    );
    for img in ["src.raw", "src.qcow2"] {
        for conf in ["eio", "once", "sector"] {
            let name = format!("blkdebug:{conf}.conf:{img}");
            let (_, e, code) = same(dir, &["convert", "-m", "1", "-O", "raw", &name, "out.raw"]);
            assert_eq!(code, Some(1));
            assert!(e.contains("error while reading at byte"), "{e}");
            let (_, e, code) = same(dir, &["compare", &name, "src.raw"]);
            assert_eq!(code, Some(4), "{e}");
            let (_, e, _) = same(dir, &["compare", "src.raw", &name]);
            assert!(e.contains(&format!("of {name}: Input/output error")), "{e}");
        }
        // The sector rule fails the chunk at 2 MiB, not the first.
        let (_, e, _) = same(
            dir,
            &[
                "convert",
                "-m",
                "1",
                "-O",
                "raw",
                &format!("blkdebug:sector.conf:{img}"),
                "out.raw",
            ],
        );
        assert!(e.contains("at byte 2097152"), "{e}");
        // Without rules the filter is transparent.
        let (o, _, code) = same(dir, &["compare", &format!("blkdebug::{img}"), "src.raw"]);
        assert_eq!((o.as_str(), code), ("Images are identical.\n", Some(0)));
    }
    // Sizes differ and the tail of the larger fails: qemu-img prints its size warning
    // (on stdout) before it reads the tail, and the read error (iotest 074).
    assert!(qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        dir.join("empty.qcow2").to_str().unwrap(),
        "0"
    ])
    .status
    .success());
    let (o, e, code) = same(
        dir,
        &["compare", "blkdebug:eio.conf:src.qcow2", "empty.qcow2"],
    );
    assert_eq!(
        (o.as_str(), code),
        ("Warning: Image size mismatch!\n", Some(4)),
        "{e}"
    );
    // check: raw has no checks; qcow2 is checked through the filter (its metadata
    // reads fire no read_aio, so the rule stays inert).
    let (_, _, code) = same(dir, &["check", "blkdebug:eio.conf:src.raw"]);
    assert_eq!(code, Some(63));
    let (o, _, code) = same(dir, &["check", "blkdebug:eio.conf:src.qcow2"]);
    assert_eq!(code, Some(0), "{o}");
}

#[test]
fn set_state_moves_the_node_to_the_next_rule() {
    let d = tmp();
    let dir = d.path();
    images(dir);
    // The first read_aio moves the node from state 1 to 2; rules are matched against
    // the state before the move, so only the second read fails.
    config(
        dir,
        "ss.conf",
        "[set-state]\nevent = \"read_aio\"\nstate = \"1\"\nnew_state = \"2\"\n\
         [inject-error]\nevent = \"read_aio\"\nstate = \"2\"\n",
    );
    // A rule for a state the node never reaches is inert.
    config(
        dir,
        "never.conf",
        "[inject-error]\nevent = \"read_aio\"\nstate = \"3\"\n",
    );
    for img in ["src.raw", "src.qcow2"] {
        let name = format!("blkdebug:ss.conf:{img}");
        let (_, e, _) = same(dir, &["convert", "-m", "1", "-O", "raw", &name, "out.raw"]);
        assert!(e.contains("at byte 2097152: Input/output error"), "{e}");
        let (_, e, code) = same(dir, &["compare", &name, "src.raw"]);
        assert_eq!(code, Some(4));
        assert!(e.contains("offset 2097152"), "{e}");
        let (o, _, code) = same(
            dir,
            &["compare", &format!("blkdebug:never.conf:{img}"), "src.raw"],
        );
        assert_eq!((o.as_str(), code), ("Images are identical.\n", Some(0)));
    }
}

#[test]
fn injected_enospc_fails_a_convert_into_the_filter() {
    let d = tmp();
    let dir = d.path();
    images(dir);
    config(
        dir,
        "nospc.conf",
        "[inject-error]\nevent = \"write_aio\"\nerrno = \"28\"\n",
    );
    let fresh = |f: &str, fmt: &str| {
        let p = dir.join(f);
        let _ = std::fs::remove_file(&p);
        assert!(
            qemu_img(&["create", "-q", "-f", fmt, p.to_str().unwrap(), "8M"])
                .status
                .success()
        );
    };
    fresh("dst.raw", "raw");
    let (_, e, code) = same(
        dir,
        &[
            "convert",
            "-n",
            "-O",
            "raw",
            "src.raw",
            "blkdebug:nospc.conf:dst.raw",
        ],
    );
    assert_eq!(code, Some(1));
    assert_eq!(
        e,
        "qemu-img: error while writing at byte 0: No space left on device\n"
    );
    // qcow2 target: the same first error; qemu-img then also reports its refcount
    // cache flush failing on close, which oxemu's qcow2 does not print.
    let mut errs = Vec::new();
    for prog in ["qemu-img", env!("CARGO_BIN_EXE_oxemu-img")] {
        fresh("dst.qcow2", "qcow2");
        let o = Command::new(prog)
            .args([
                "convert",
                "-n",
                "-O",
                "qcow2",
                "src.raw",
                "blkdebug:nospc.conf:dst.qcow2",
            ])
            .current_dir(dir)
            .output()
            .unwrap();
        let (_, e, code) = result(&o);
        assert_eq!(code, Some(1), "{prog}: {e}");
        errs.push(e.lines().next().unwrap_or("").to_string());
        // The image stays consistent for qemu-img check.
        let c = qemu_img(&["check", dir.join("dst.qcow2").to_str().unwrap()]);
        assert!(c.status.success(), "{prog}: {}", text(&c.stdout));
    }
    assert_eq!(errs[0], errs[1]);
    assert_eq!(
        errs[0],
        "qemu-img: error while writing at byte 0: No space left on device"
    );
}

#[test]
fn names_configs_and_creation_are_refused_with_qemu_imgs_texts() {
    let d = tmp();
    let dir = d.path();
    images(dir);
    let bad = [
        ("event.conf", "[inject-error]\nevent = \"nope\"\n"),
        (
            "errno.conf",
            "[inject-error]\nevent = \"read_aio\"\nerrno = \"x\"\n",
        ),
        ("group.conf", "[foo]\nx = \"1\"\n"),
        ("nogroup.conf", "garbage\n"),
        ("param.conf", "[inject-error]\nbogus = \"1\"\n"),
        ("noevent.conf", "[inject-error]\nerrno = \"5\"\n"),
        (
            "iotype.conf",
            "[inject-error]\nevent = \"read_aio\"\niotype = \"frob\"\n",
        ),
        ("unquoted.conf", "[inject-error]\nevent = l2_load\n"),
        (
            "nospace.conf",
            "[inject-error]\nevent = \"read_aio\"\nerrno=\"5\"\n",
        ),
        (
            "once.conf",
            "[inject-error]\nevent = \"read_aio\"\nonce = \"maybe\"\n",
        ),
    ];
    for (f, t) in bad {
        config(dir, f, t);
        let (_, e, code) = same(dir, &["info", &format!("blkdebug:{f}:src.raw")]);
        assert_eq!(code, Some(1), "{f}");
        assert!(
            e.starts_with(&format!(
                "qemu-img: Could not open 'blkdebug:{f}:src.raw': "
            )),
            "{e}"
        );
    }
    for args in [
        vec!["info", "blkdebug:src.raw"],
        vec!["info", "blkdebug:missing.conf:src.raw"],
        vec!["info", "blkdebug::missing.raw"],
        vec!["info", "-f", "raw", "blkdebug::missing.raw"],
        vec!["info", "-f", "qcow2", "blkdebug::missing.raw"],
        vec!["create", "-f", "raw", "blkdebug::x.raw", "1M"],
        vec!["create", "-f", "qcow2", "blkdebug::x.qcow2", "1M"],
        vec!["convert", "-O", "raw", "src.raw", "blkdebug::x.raw"],
        vec!["convert", "-O", "qcow2", "src.raw", "blkdebug::x.qcow2"],
    ] {
        let (_, _, code) = same(dir, &args);
        assert_eq!(code, Some(1), "{args:?}");
    }
    assert!(!dir.join("x.raw").exists() && !dir.join("x.qcow2").exists());
    // An empty config is allowed; info shows the name as given and no disk size.
    let (o, _, code) = same(dir, &["info", "blkdebug::src.qcow2"]);
    assert_eq!(code, Some(0));
    assert!(
        o.contains("image: blkdebug::src.qcow2\nfile format: qcow2\n"),
        "{o}"
    );
    assert!(o.contains("disk size: unavailable"), "{o}");
    same(dir, &["info", "-f", "raw", "blkdebug::src.raw"]);
    same(
        dir,
        &["info", "--output=json", "-f", "raw", "blkdebug::src.raw"],
    );
    same(dir, &["info", "--output=json", "blkdebug::src.qcow2"]);
}

#[test]
fn the_filter_passes_writes_through_when_no_rule_is_active() {
    let d = tmp();
    let dir = d.path();
    images(dir);
    // A rule for an event nothing fires leaves the filter transparent for writes too.
    config(dir, "idle.conf", "[inject-error]\nevent = \"l2_load\"\n");
    let dst = dir.join("dst.raw");
    assert!(
        qemu_img(&["create", "-q", "-f", "raw", dst.to_str().unwrap(), "8M"])
            .status
            .success()
    );
    let o = oxemu_img(&[
        "convert",
        "-n",
        "-O",
        "raw",
        dir.join("src.raw").to_str().unwrap(),
        &format!(
            "blkdebug:{}:{}",
            dir.join("idle.conf").display(),
            dst.display()
        ),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let c = qemu_img(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        dir.join("src.raw").to_str().unwrap(),
        dst.to_str().unwrap(),
    ]);
    assert!(c.status.success(), "{}", text(&c.stdout));
}

#[test]
fn image_opts_and_json_names_put_the_filter_under_the_format() {
    let d = tmp();
    let dir = d.path();
    images(dir);
    config(dir, "eio.conf", "[inject-error]\nevent = \"read_aio\"\n");
    let base = "driver=raw,file.driver=blkdebug,file.image.filename=src.raw";
    let qbase =
        "driver=qcow2,file.driver=blkdebug,file.image.driver=file,file.image.filename=src.qcow2";
    // Rules inline, from a config file, with set-state, and bad ones.
    for (opts, fails) in [
        (format!("{base},file.inject-error.0.event=read_aio"), true),
        (
            format!("{base},file.inject-error.0.event=read_aio,file.inject-error.0.errno=28"),
            true,
        ),
        (
            format!("{qbase},file.inject-error.0.event=read_aio,file.inject-error.0.once=on"),
            true,
        ),
        (format!("{base},file.config=eio.conf"), true),
        (base.to_string(), false),
        (
            format!(
                "{base},file.inject-error.0.event=read_aio,file.inject-error.0.state=2,\
                 file.set-state.0.event=read_aio,file.set-state.0.new_state=2"
            ),
            true,
        ),
    ] {
        let (_, e, code) = same(
            dir,
            &[
                "convert",
                "-m",
                "1",
                "--image-opts",
                &opts,
                "-O",
                "raw",
                "out.raw",
            ],
        );
        assert_eq!(code, Some(if fails { 1 } else { 0 }), "{opts}: {e}");
    }
    for bad in [
        ",file.inject-error.0.event=nope",
        ",file.inject-error.0.event=read_aio,file.inject-error.0.errno=x",
        ",file.inject-error.0.event=read_aio,file.inject-error.0.bogus=1",
        ",file.inject-error.0.errno=5",
        ",file.inject-error.1.event=read_aio",
        ",file.set-state.0.event=x",
        ",file.bogus=1",
        ",file.config=missing.conf",
    ] {
        let (_, e, code) = same(dir, &["info", "--image-opts", &format!("{base}{bad}")]);
        assert_eq!(code, Some(1), "{bad}: {e}");
    }
    for opts in [
        "driver=raw,file.driver=blkdebug",
        "driver=raw,file.driver=blkdebug,file.image=src.raw",
    ] {
        let (_, _, code) = same(dir, &["info", "--image-opts", opts]);
        assert_eq!(code, Some(1));
    }
    // Without inline rules qemu-img names the image blkdebug:CONFIG:IMAGE.
    same(dir, &["info", "--image-opts", base]);
    same(
        dir,
        &[
            "info",
            "--image-opts",
            &format!("{base},file.config=eio.conf"),
        ],
    );
    // A json: name with a rule list.
    let json = r#"json:{"driver":"raw","file":{"driver":"blkdebug","image":{"driver":"file","filename":"src.raw"},"inject-error":[{"event":"read_aio","errno":28}]}}"#;
    let (_, e, code) = same(dir, &["compare", json, "src.raw"]);
    assert_eq!(code, Some(4));
    assert!(e.ends_with(": No space left on device\n"), "{e}");
    // Options QEMU has and oxemu cannot honour are refused by name.
    let o = oxemu_img(&["info", "--image-opts", &format!("{base},file.align=4096")]);
    let e = text(&o.stderr);
    assert!(
        !o.status.success() && e.contains("blkdebug option 'align' is not supported by oxemu"),
        "{e}"
    );
}
