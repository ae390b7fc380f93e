//! oxemu-img and qemu-img 7.2 side by side for `measure`, `dd`, `-o help`, `amend`
//! (refcount_bits, size, backing file) and the file protocol's creation options:
//! stdout, stderr and exit codes must match byte for byte, and the images left behind
//! must look the same to qemu-img.

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

type Outcome = (String, String, Option<i32>);

/// stdout and stderr, with the program's name taken off the messages.
fn both(o: &Output) -> Outcome {
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
        .prefix("imgcmds")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

/// Runs `setup` in two fresh directories, then `args` (with `{d}` replaced by the
/// directory) with qemu-img in one and oxemu-img in the other, then `after` (with
/// qemu-img, in each directory); returns both outcomes and both `after` outputs.
fn side_by_side(
    setup: &dyn Fn(&str),
    args: &[&str],
    after: &dyn Fn(&str) -> String,
) -> [(Outcome, String); 2] {
    let mut out = Vec::new();
    for tool in ["qemu-img", OXEMU] {
        let d = tmp();
        let dir = d.path().display().to_string();
        setup(&dir);
        let a: Vec<String> = args.iter().map(|s| s.replace("{d}", &dir)).collect();
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let (o, e, c) = both(&run(tool, &a));
        let state = after(&dir).replace(&dir, "DIR");
        out.push(((o.replace(&dir, "DIR"), e.replace(&dir, "DIR"), c), state));
    }
    [out[0].clone(), out[1].clone()]
}

/// A directory with the images the cases use: qcow2 images with data, zero clusters,
/// metadata preallocation, a backing file, compressed clusters, a v2 image, and a
/// sparse raw file with data.
fn images(d: &str) {
    let q = |n: &str| format!("{d}/{n}");
    let io = |img: &str, cmds: &[&str]| {
        let mut a = vec!["-f"];
        a.push(if img.ends_with(".raw") {
            "raw"
        } else {
            "qcow2"
        });
        for c in cmds {
            a.extend(["-c", c]);
        }
        a.push(img);
        ok("qemu-io", &a);
    };
    ok(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", &q("a.qcow2"), "10M"],
    );
    io(
        &q("a.qcow2"),
        &["write -P 7 0 100k", "write -P 9 1M 1", "write -z 3M 64k"],
    );
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "preallocation=metadata",
            &q("pm.qcow2"),
            "4M",
        ],
    );
    ok(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", &q("base.qcow2"), "2M"],
    );
    io(&q("base.qcow2"), &["write -P 3 0 1M"]);
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            &q("t.qcow2"),
        ],
    );
    io(&q("t.qcow2"), &["write -P 4 512k 64k"]);
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10",
            &q("v2.qcow2"),
            "3M",
        ],
    );
    io(&q("v2.qcow2"), &["write -P 5 0 3M"]);
    ok(
        "qemu-img",
        &["create", "-q", "-f", "raw", &q("r.raw"), "5M"],
    );
    io(&q("r.raw"), &["write -P 1 1M 3k", "write -P 2 4M 512"]);
    // Compressed clusters share host clusters (refcount 2).
    ok(
        "qemu-img",
        &["convert", "-c", "-O", "qcow2", &q("r.raw"), &q("c.qcow2")],
    );
}

fn nothing(_: &str) -> String {
    String::new()
}

fn check_cases(cases: &[&[&str]], after: &dyn Fn(&str) -> String) {
    let mut failures = Vec::new();
    for args in cases {
        let [q, o] = side_by_side(&images, args, after);
        if q != o {
            failures.push(format!("{args:?}\nqemu-img:  {q:?}\noxemu-img: {o:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn measure_matches_qemu_img_for_sizes_inputs_and_options() {
    let mut cases: Vec<Vec<String>> = Vec::new();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    for size in ["0", "1000", "1G", "100M", "3T"] {
        cases.push(s(&["measure", "--size", size]));
        cases.push(s(&["measure", "-O", "qcow2", "--size", size]));
        cases.push(s(&[
            "measure",
            "-O",
            "qcow2",
            "--size",
            size,
            "--output=json",
        ]));
    }
    for o in [
        "cluster_size=512",
        "cluster_size=2M",
        "cluster_size=4k,extended_l2=on",
        "extended_l2=on",
        "extended_l2=on,cluster_size=8k",
        "refcount_bits=1",
        "refcount_bits=8",
        "refcount_bits=64",
        "refcount_bits=3",
        "refcount_bits=x",
        "compat=0.10",
        "compat=0.10,refcount_bits=8",
        "compat=v3",
        "preallocation=metadata",
        "preallocation=falloc",
        "preallocation=full",
        "preallocation=bad",
        "backing_file=x,backing_fmt=raw",
        "lazy_refcounts=on",
        "lazy_refcounts=abc",
        "cluster_size=abc",
        "foo=1",
        "size=5M",
        "extent_size_hint=1M,nocow=on",
    ] {
        cases.push(s(&["measure", "-O", "qcow2", "-o", o, "--size", "100M"]));
    }
    for f in [
        "a.qcow2", "pm.qcow2", "t.qcow2", "v2.qcow2", "r.raw", "c.qcow2",
    ] {
        let f = format!("{{d}}/{f}");
        cases.push(s(&["measure", &f]));
        cases.push(s(&["measure", "-O", "qcow2", &f]));
        cases.push(s(&["measure", "-O", "qcow2", &f, "--output=json"]));
        cases.push(s(&["measure", "-O", "qcow2", "-o", "cluster_size=4k", &f]));
        cases.push(s(&["measure", "-O", "qcow2", "-o", "backing_file=x", &f]));
        cases.push(s(&[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "preallocation=full",
            &f,
        ]));
    }
    for bad in [
        &["measure"][..],
        &["measure", "-f", "raw"],
        &["measure", "a", "b"],
        &["measure", "--size", "1", "{d}/a.qcow2"],
        &["measure", "-O", "vmdk", "--size", "1"],
        &["measure", "-O", "foo", "--size", "1"],
        &["measure", "--output=xml", "--size", "1"],
        &["measure", "--size", "1x"],
        &["measure", "-O", "qcow2", "--size", "100P"],
        &[
            "measure",
            "-O",
            "raw",
            "-o",
            "cluster_size=4k",
            "--size",
            "1M",
        ],
        &["measure", "-O", "qcow2", "-f", "raw", "{d}/a.qcow2"],
    ] {
        cases.push(s(bad));
    }
    let refs: Vec<Vec<&str>> = cases
        .iter()
        .map(|c| c.iter().map(String::as_str).collect())
        .collect();
    let refs: Vec<&[&str]> = refs.iter().map(Vec::as_slice).collect();
    check_cases(&refs, &nothing);
}

/// What qemu-img sees of `of`: its info, its check and its contents.
fn output_image(d: &str) -> String {
    let p = format!("{d}/out");
    if !std::path::Path::new(&p).exists() {
        return "no output".into();
    }
    let info = String::from_utf8_lossy(&run("qemu-img", &["info", &p]).stdout)
        .lines()
        .filter(|l| l.starts_with("virtual size") || l.starts_with("file format"))
        .collect::<Vec<_>>()
        .join("\n");
    let dump = std::fs::read(&p).unwrap();
    let len = if info.contains("raw") { dump.len() } else { 0 };
    let raw = format!("{d}/out.raw");
    ok("qemu-img", &["convert", "-O", "raw", &p, &raw]);
    let data = std::fs::read(&raw).unwrap();
    let sum: u64 = data
        .iter()
        .enumerate()
        .map(|(i, &b)| (i as u64 + 1) * b as u64)
        .sum();
    format!(
        "{info}\nraw file length {len}\ncontents {} {sum}",
        data.len()
    )
}

#[test]
fn dd_matches_qemu_img() {
    let cases: &[&[&str]] = &[
        &["dd"],
        &["dd", "if={d}/r.raw"],
        &["dd", "of={d}/out"],
        &["dd", "-f", "raw", "if={d}/r.raw", "of={d}/out"],
        &["dd", "if={d}/r.raw", "of={d}/out", "bs=1000", "skip=3"],
        &["dd", "if={d}/r.raw", "of={d}/out", "count=4", "skip=2"],
        &["dd", "if={d}/r.raw", "of={d}/out", "bs=1M", "count=2"],
        &["dd", "if={d}/r.raw", "of={d}/out", "bs=1M", "count=20"],
        &["dd", "if={d}/r.raw", "of={d}/out", "skip=100000"],
        &[
            "dd",
            "if={d}/r.raw",
            "of={d}/out",
            "skip=9999999999999999999",
        ],
        &[
            "dd",
            "-f",
            "qcow2",
            "if={d}/t.qcow2",
            "of={d}/out",
            "bs=64k",
            "skip=1",
        ],
        &[
            "dd",
            "-O",
            "qcow2",
            "if={d}/a.qcow2",
            "of={d}/out",
            "bs=1000",
            "count=7",
        ],
        &[
            "dd",
            "-O",
            "qcow2",
            "if={d}/r.raw",
            "of={d}/out",
            "bs=300",
            "skip=2",
            "count=3000",
        ],
        &["dd", "if={d}/r.raw", "of={d}/out", "bs=0"],
        &["dd", "if={d}/r.raw", "of={d}/out", "bs=1x"],
        &["dd", "if={d}/r.raw", "of={d}/out", "bs=3G"],
        &["dd", "if={d}/r.raw", "of={d}/out", "count=-1"],
        &["dd", "if={d}/r.raw", "of={d}/out", "skip=x"],
        &["dd", "if={d}/r.raw", "of={d}/out", "foo=1"],
        &["dd", "if={d}/r.raw", "of={d}/out", "foo"],
        &["dd", "-O", "foo", "if={d}/r.raw", "of={d}/out"],
        &["dd", "-f"],
        &["dd", "-x", "if=a", "of=b"],
        &["dd", "--foo", "if=a", "of=b"],
    ];
    check_cases(cases, &output_image);
}

/// qemu-img's `-o help` without the lines of options oxemu does not implement.
fn without_unimplemented(s: &str) -> String {
    s.lines()
        .filter(|l| {
            let l = l.trim_start();
            !["data_file", "encrypt", "encryption="]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn option_help_lists_qemu_img_options_that_oxemu_implements() {
    let cases: &[&[&str]] = &[
        &["create", "-f", "qcow2", "-o", "help"],
        &["create", "-f", "qcow2", "-o", "help", "{d}/x"],
        &["create", "-f", "raw", "-o", "help"],
        &["create", "-f", "raw", "-o", "?", "{d}/x"],
        &["create", "-o", "help"],
        &["create", "-f", "foo", "-o", "help"],
        &["convert", "-O", "qcow2", "-o", "help"],
        &["convert", "-O", "raw", "-o", "help", "{d}/a", "{d}/b"],
        &["amend", "-f", "qcow2", "-o", "help"],
        &["amend", "-o", "help", "{d}/a.qcow2"],
        &["amend", "-f", "raw", "-o", "help"],
        &["amend", "-o", "help", "{d}/r.raw"],
    ];
    let mut failures = Vec::new();
    for args in cases {
        let [(q, _), (o, _)] = side_by_side(&images, args, &nothing);
        let q = (without_unimplemented(&q.0), q.1, q.2);
        if q != o {
            failures.push(format!("{args:?}\nqemu-img:  {q:?}\noxemu-img: {o:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn create_takes_file_protocol_options_as_qemu_img() {
    let mut cases: Vec<Vec<String>> = Vec::new();
    for o in [
        "extent_size_hint=1M",
        "extent_size_hint=0,nocow=on",
        "extent_size_hint=5G",
        "extent_size_hint=abc",
        "nocow=x",
        "nocow",
        "preallocation=full,extent_size_hint=64k",
        "foo=1",
    ] {
        for f in ["raw", "qcow2"] {
            cases.push(
                ["create", "-f", f, "-o", o, "{d}/x", "1M"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            );
        }
    }
    let refs: Vec<Vec<&str>> = cases
        .iter()
        .map(|c| c.iter().map(String::as_str).collect())
        .collect();
    let refs: Vec<&[&str]> = refs.iter().map(Vec::as_slice).collect();
    check_cases(&refs, &|d| {
        let p = format!("{d}/x");
        if std::path::Path::new(&p).exists() {
            both(&run("qemu-img", &["check", &p])).0
        } else {
            "none".into()
        }
    });
}

/// What qemu-img sees of the images amend may have changed.
fn amended(d: &str) -> String {
    let mut s = String::new();
    for f in ["a.qcow2", "t.qcow2", "v2.qcow2", "c.qcow2"] {
        let p = format!("{d}/{f}");
        let info = String::from_utf8_lossy(&run("qemu-img", &["info", &p]).stdout)
            .lines()
            .filter(|l| !l.starts_with("disk size") && !l.starts_with("image:"))
            .collect::<Vec<_>>()
            .join("\n");
        let check = both(&run("qemu-img", &["check", &p]));
        let check = check.0.lines().next().unwrap_or_default().to_string() + &check.1;
        let map = ok("qemu-img", &["map", "--output=json", &p]);
        let map: String = map
            .lines()
            .map(|l| l.split("\"offset\"").next().unwrap())
            .collect();
        s += &format!("{f}\n{info}\n{check}\n{map}\n");
    }
    s
}

#[test]
fn amend_refcount_bits_size_and_backing_as_qemu_img() {
    let mut cases: Vec<Vec<String>> = Vec::new();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    for b in ["1", "2", "4", "8", "32", "64"] {
        for f in ["a.qcow2", "t.qcow2", "c.qcow2"] {
            cases.push(s(&[
                "amend",
                "-o",
                &format!("refcount_bits={b}"),
                &format!("{{d}}/{f}"),
            ]));
        }
    }
    for (o, f) in [
        ("refcount_bits=8", "v2.qcow2"),
        ("compat=1.1,refcount_bits=1", "v2.qcow2"),
        ("compat=0.10,refcount_bits=8", "a.qcow2"),
        ("refcount_bits=3", "a.qcow2"),
        ("refcount_bits=0", "a.qcow2"),
        ("refcount_bits=x", "a.qcow2"),
        ("refcount_bits=1,size=30M", "a.qcow2"),
        ("refcount_bits=64,lazy_refcounts=on", "t.qcow2"),
        ("size=20M", "a.qcow2"),
        ("size=1M", "a.qcow2"),
        ("size=1000", "a.qcow2"),
        ("size=5M,compat=0.10", "a.qcow2"),
        ("size=8M", "v2.qcow2"),
        ("backing_file=other", "t.qcow2"),
        ("backing_file=base.qcow2", "t.qcow2"),
        ("backing_file=base.qcow2,backing_fmt=qcow2", "t.qcow2"),
        ("backing_fmt=raw", "a.qcow2"),
        ("cluster_size=4k", "a.qcow2"),
        ("foo=1", "a.qcow2"),
        ("compat=bad", "a.qcow2"),
        ("compat=0.10,lazy_refcounts=on", "a.qcow2"),
    ] {
        cases.push(s(&["amend", "-o", o, &format!("{{d}}/{f}")]));
    }
    cases.push(s(&["amend", "-f", "raw", "-o", "size=1M", "{d}/r.raw"]));
    cases.push(s(&["amend", "-o", "size=1M", "{d}/r.raw"]));
    let refs: Vec<Vec<&str>> = cases
        .iter()
        .map(|c| c.iter().map(String::as_str).collect())
        .collect();
    let refs: Vec<&[&str]> = refs.iter().map(Vec::as_slice).collect();
    check_cases(&refs, &amended);
}
