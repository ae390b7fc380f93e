//! oxemu-img and qemu-img 7.2 side by side on identical inputs: outputs, layouts and
//! exit codes must match (map of special clusters, commit -b, size syntax, messages).

use std::process::{Command, Output};

const OXEMU: &str = env!("CARGO_BIN_EXE_oxemu-img");

fn run(prog: &str, args: &[&str]) -> Output {
    Command::new(prog).args(args).output().unwrap()
}

fn ok(prog: &str, args: &[&str]) -> String {
    let o = run(prog, args);
    assert!(
        o.status.success(),
        "{prog} {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stdout and stderr, with the program's name taken off the messages.
fn both(o: &Output) -> (String, String, Option<i32>) {
    let strip = |s: &[u8]| {
        String::from_utf8_lossy(s)
            .replace(OXEMU, "PROG")
            .replace("oxemu-img", "PROG")
            .replace("qemu-img", "PROG")
    };
    (strip(&o.stdout), strip(&o.stderr), o.status.code())
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("imgcompat")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

/// Runs `setup` in two fresh directories, then `args` (with `{d}` replaced by the
/// directory) with qemu-img in one and oxemu-img in the other; returns both outputs.
fn side_by_side(setup: &dyn Fn(&str), args: &[&str]) -> [(String, String, Option<i32>); 2] {
    let mut out = Vec::new();
    for tool in ["qemu-img", OXEMU] {
        let d = tmp();
        let dir = d.path().display().to_string();
        setup(&dir);
        let a: Vec<String> = args.iter().map(|s| s.replace("{d}", &dir)).collect();
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let (o, e, c) = both(&run(tool, &a));
        out.push((o.replace(&dir, "DIR"), e.replace(&dir, "DIR"), c));
    }
    [out[0].clone(), out[1].clone()]
}

#[test]
fn map_reports_zero_clusters_with_storage_preallocation_and_truncation_as_qemu() {
    let cases: Vec<(&str, Box<dyn Fn(&str)>)> = vec![
        (
            "prealloc",
            Box::new(|d: &str| {
                let i = format!("{d}/i.qcow2");
                ok(
                    "qemu-img",
                    &[
                        "create",
                        "-q",
                        "-f",
                        "qcow2",
                        "-o",
                        "preallocation=metadata",
                        &i,
                        "1M",
                    ],
                );
                ok(
                    "qemu-io",
                    &["-c", "write -z 0 64k", "-c", "write -P 1 64k 64k", &i],
                );
            }),
        ),
        (
            "zero-alloc",
            Box::new(|d: &str| {
                let i = format!("{d}/i.qcow2");
                ok("qemu-img", &["create", "-q", "-f", "qcow2", &i, "1M"]);
                ok(
                    "qemu-io",
                    &["-c", "write -P 1 0 192k", "-c", "write -z 64k 64k", &i],
                );
            }),
        ),
        (
            "truncated",
            Box::new(|d: &str| {
                let i = format!("{d}/i.qcow2");
                ok("qemu-img", &["create", "-q", "-f", "qcow2", &i, "1M"]);
                ok("qemu-io", &["-c", "write -P 1 0 192k", &i]);
                let f = std::fs::OpenOptions::new().write(true).open(&i).unwrap();
                f.set_len(327680 + 65536 + 100).unwrap();
            }),
        ),
        (
            "odd raw",
            Box::new(|d: &str| {
                std::fs::write(format!("{d}/i.qcow2"), vec![7u8; 1000]).unwrap();
            }),
        ),
    ];
    for (name, setup) in &cases {
        let [q, o] = side_by_side(&**setup, &["map", "--output=json", "{d}/i.qcow2"]);
        assert_eq!(o, q, "{name}");
        let [q, o] = side_by_side(&**setup, &["info", "--output=json", "{d}/i.qcow2"]);
        // The file's allocation differs between file systems' block accounting.
        let strip = |s: &str| {
            s.lines()
                .filter(|l| !l.contains("actual-size"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(strip(&o.0), strip(&q.0), "{name}");
    }
}

fn chain3(d: &str) {
    let (c0, c1, c2) = (
        format!("{d}/c0.qcow2"),
        format!("{d}/c1.qcow2"),
        format!("{d}/c2.qcow2"),
    );
    ok("qemu-img", &["create", "-q", "-f", "qcow2", &c0, "4M"]);
    ok("qemu-io", &["-c", "write -P 1 0 4M", &c0]);
    ok(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-b", &c0, "-F", "qcow2", &c1],
    );
    ok(
        "qemu-io",
        &["-c", "write -P 2 1M 1M", "-c", "write -z 3M 64k", &c1],
    );
    ok(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-b", &c1, "-F", "qcow2", &c2],
    );
    ok(
        "qemu-io",
        &["-c", "write -P 3 1536k 64k", "-c", "write -z 0 64k", &c2],
    );
}

#[test]
fn commit_b_and_zero_clusters_give_qemu_img_layouts() {
    for (args, check) in [
        (vec!["commit", "-b", "{d}/c0.qcow2", "{d}/c2.qcow2"], "c0"),
        (vec!["commit", "{d}/c2.qcow2"], "c1"),
        (vec!["commit", "-b", "nope", "{d}/c2.qcow2"], "c0"),
    ] {
        let mut maps = Vec::new();
        let mut outs = Vec::new();
        for tool in ["qemu-img", OXEMU] {
            let d = tmp();
            let dir = d.path().display().to_string();
            chain3(&dir);
            let a: Vec<String> = args.iter().map(|s| s.replace("{d}", &dir)).collect();
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            let (o, e, c) = both(&run(tool, &a));
            outs.push((o.replace(&dir, "DIR"), e.replace(&dir, "DIR"), c));
            let m = |f: &str| {
                ok(
                    "qemu-img",
                    &["map", "--output=json", &format!("{dir}/{f}.qcow2")],
                )
            };
            maps.push((m(check), m("c2")));
            ok("qemu-img", &["check", &format!("{dir}/{check}.qcow2")]);
        }
        assert_eq!(outs[0], outs[1], "{args:?}");
        assert_eq!(maps[0], maps[1], "{args:?}");
    }
}

#[test]
fn sizes_messages_and_formatting_lines_match_qemu_img() {
    let none = |_: &str| {};
    for args in [
        vec!["create", "-f", "raw", "{d}/a", "1024.0"],
        vec!["create", "-f", "raw", "{d}/a", "0x10000"],
        vec!["create", "-f", "raw", "{d}/a", "1e3"],
        vec!["create", "-f", "raw", "{d}/a", "12.5"],
        vec!["create", "-f", "qcow2", "{d}/a", "1000"],
        vec![
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=0x10000",
            "{d}/a",
            "1M",
        ],
        vec![
            "create",
            "-f",
            "raw",
            "-o",
            "preallocation=falloc",
            "{d}/a",
            "1M",
        ],
        vec![
            "create",
            "-f",
            "qcow2",
            "-o",
            "preallocation=metadata,compat=0.10",
            "{d}/a",
            "1M",
        ],
        vec!["create", "-f", "raw", "/nonexistent/dir/a", "1M"],
    ] {
        let [q, o] = side_by_side(&none, &args);
        // qemu-img wraps its long size message over two lines; compare the words.
        let words = |s: &str| {
            s.replace("PROG: ", "")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!((o.0.clone(), o.2), (q.0.clone(), q.2), "{args:?}");
        assert_eq!(words(&o.1), words(&q.1), "{args:?}");
    }
    let two = |d: &str| {
        ok(
            "qemu-img",
            &["create", "-q", "-f", "raw", &format!("{d}/a.raw"), "1M"],
        );
        ok(
            "qemu-img",
            &["create", "-q", "-f", "raw", &format!("{d}/b.raw"), "2M"],
        );
        ok(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", &format!("{d}/c.qcow2"), "1M"],
        );
    };
    for args in [
        vec!["compare", "{d}/a.raw", "{d}/b.raw"],
        vec!["compare", "-s", "{d}/a.raw", "{d}/b.raw"],
        vec!["rebase", "-u", "-b", "{d}/a.raw", "{d}/c.qcow2"],
        vec!["rebase", "-b", "{d}/a.raw", "{d}/c.qcow2"],
        vec!["resize", "{d}/a.raw", "512k"],
        vec!["resize", "--preallocation=full", "{d}/a.raw", "512k"],
        vec!["resize", "--preallocation=bogus", "{d}/a.raw", "2M"],
    ] {
        let [q, o] = side_by_side(&two, &args);
        assert_eq!(o, q, "{args:?}");
    }
}

#[test]
fn info_lists_persistent_bitmaps_as_qemu_img() {
    let setup = |d: &str| {
        let i = format!("{d}/i.qcow2");
        ok("qemu-img", &["create", "-q", "-f", "qcow2", &i, "64M"]);
        ok("qemu-img", &["bitmap", "--add", &i, "b0"]);
        ok(
            "qemu-img",
            &["bitmap", "--add", "-g", "512", "--disable", &i, "b1"],
        );
        ok("qemu-io", &["-c", "write -P 1 0 1M", &i]);
    };
    for args in [
        vec!["info", "{d}/i.qcow2"],
        vec!["info", "--output=json", "{d}/i.qcow2"],
    ] {
        let [q, o] = side_by_side(&setup, &args);
        let strip = |s: &str| {
            s.lines()
                .filter(|l| !l.contains("actual-size") && !l.contains("disk size"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!((strip(&o.0), o.2), (strip(&q.0), q.2), "{args:?}");
    }
}

/// The dirty extents of bitmap `name`, read through qemu-nbd's
/// `qemu:dirty-bitmap:` meta context with nbdinfo.
fn bitmap_extents(img: &str, name: &str) -> String {
    let d = tmp();
    let sock = d.path().join("s");
    let mut srv = Command::new("qemu-nbd")
        .args([
            "-r",
            "-f",
            "qcow2",
            "-B",
            name,
            "-k",
            sock.to_str().unwrap(),
            img,
        ])
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while !sock.exists() && t.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let out = ok(
        "nbdinfo",
        &[&format!("--map=qemu:dirty-bitmap:{name}"), &uri],
    );
    let _ = srv.kill();
    let _ = srv.wait();
    out
}

#[test]
fn bitmap_operations_match_qemu_img() {
    let setup = |d: &str| {
        let i = format!("{d}/i.qcow2");
        let s = format!("{d}/src.qcow2");
        for img in [&i, &s] {
            ok("qemu-img", &["create", "-q", "-f", "qcow2", img, "64M"]);
        }
        ok("qemu-img", &["bitmap", "--add", &i, "b0"]);
        ok("qemu-img", &["bitmap", "--add", "-g", "1k", &i, "b1"]);
        ok("qemu-img", &["bitmap", "--add", &s, "sb"]);
        for img in [&i, &s] {
            ok(
                "qemu-io",
                &["-c", "write 1M 100k", "-c", "write 10M 4k", img],
            );
        }
    };
    let steps: Vec<Vec<&str>> = vec![
        vec![
            "bitmap",
            "--add",
            "-g",
            "128k",
            "{d}/i.qcow2",
            "b5",
            "--merge",
            "b1",
            "--disable",
        ],
        vec!["bitmap", "--remove", "{d}/i.qcow2", "b0"],
        vec!["bitmap", "--clear", "{d}/i.qcow2", "b1"],
        vec![
            "bitmap",
            "--add",
            "{d}/i.qcow2",
            "b6",
            "--merge",
            "sb",
            "-b",
            "{d}/src.qcow2",
        ],
        vec!["bitmap", "--enable", "{d}/i.qcow2", "b5"],
    ];
    let errors: Vec<Vec<&str>> = vec![
        vec!["bitmap", "{d}/i.qcow2", "b0"],
        vec!["bitmap", "--add", "{d}/i.qcow2", "b0"],
        vec!["bitmap", "--remove", "{d}/i.qcow2", "nope"],
        vec!["bitmap", "--merge", "nope", "{d}/i.qcow2", "b0"],
        vec!["bitmap", "--add", "-g", "100", "{d}/i.qcow2", "b2"],
        vec!["bitmap", "-g", "1k", "--enable", "{d}/i.qcow2", "b0"],
        vec!["bitmap", "--add", "{d}/i.qcow2"],
        vec!["bitmap", "--add", "-b", "x", "{d}/i.qcow2", "b4"],
    ];
    let mut results = Vec::new();
    for tool in ["qemu-img", OXEMU] {
        let d = tmp();
        let dir = d.path().display().to_string();
        setup(&dir);
        let mut out = Vec::new();
        for args in errors.iter().chain(&steps) {
            let a: Vec<String> = args.iter().map(|s| s.replace("{d}", &dir)).collect();
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            let (o, e, c) = both(&run(tool, &a));
            out.push((o.replace(&dir, "DIR"), e.replace(&dir, "DIR"), c));
        }
        let img = format!("{dir}/i.qcow2");
        ok("qemu-img", &["check", &img]);
        let info = ok("qemu-img", &["info", "--output=json", &img]);
        let v: serde_json::Value = serde_json::from_str(&info).unwrap();
        out.push((
            v["format-specific"]["data"]["bitmaps"].to_string(),
            String::new(),
            None,
        ));
        for b in ["b1", "b5", "b6"] {
            out.push((bitmap_extents(&img, b), String::new(), None));
        }
        results.push(out);
    }
    assert_eq!(results[0], results[1]);
}

#[test]
fn option_lists_take_double_commas_as_commas_as_qemu_img() {
    // A backing file whose name holds a comma, written `,,` inside -o; then `info`
    // shows the name, and `help` after an escaped comma is part of a value.
    let setup = |d: &str| {
        ok(
            "qemu-img",
            &["create", "-q", "-f", "raw", &format!("{d}/a,b.img"), "1M"],
        );
    };
    for args in [
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "backing_file={d}/a,,b.img,backing_fmt=raw",
            "{d}/t.qcow2",
        ][..],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "backing_file=x,,help,backing_fmt=raw",
            "{d}/u.qcow2",
            "1M",
        ][..],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4k,,8k",
            "{d}/v.qcow2",
            "1M",
        ][..],
        &["create", "-f", "qcow2", "-o", "size=abc", "{d}/v.qcow2"][..],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=99999999999999999999",
            "{d}/v.qcow2",
            "1M",
        ][..],
        &["create", "-f", "raw", "-o", "size=abc", "{d}/v.raw"][..],
    ] {
        let [q, o] = side_by_side(&setup, args);
        assert_eq!(o, q, "{args:?}");
    }
    let [q, o] = side_by_side(
        &|d: &str| {
            setup(d);
            ok(
                "qemu-img",
                &[
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-b",
                    &format!("{d}/a,b.img"),
                    "-F",
                    "raw",
                    &format!("{d}/t.qcow2"),
                ],
            );
        },
        &["info", "{d}/t.qcow2"],
    );
    assert_eq!(o, q);
}
