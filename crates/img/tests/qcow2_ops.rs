//! qcow2 subcommands against qemu-img 7.2 on the same images: create, info, check
//! (with leak repair), map, compare, convert to raw and bench -f qcow2.

use std::io::{Read, Seek, SeekFrom, Write};
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

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", out(o)))
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("oxemu-img-qcow2")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

fn path(d: &tempfile::TempDir, n: &str) -> String {
    d.path().join(n).display().to_string()
}

/// Makes `base.qcow2` (qemu-img, data at 1 MiB) and `top.qcow2` on it (data at 0).
fn chain(d: &tempfile::TempDir) -> (String, String) {
    let base = path(d, "base.qcow2");
    let top = path(d, "top.qcow2");
    assert!(qemu_img(&["create", "-q", "-f", "qcow2", &base, "16M"])
        .status
        .success());
    assert!(run("qemu-io", &["-c", "write -P 1 1M 256k", &base])
        .status
        .success());
    let o = qemu_img(&[
        "create", "-q", "-f", "qcow2", "-b", &base, "-F", "qcow2", &top,
    ]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(run("qemu-io", &["-c", "write -P 2 0 64k", &top])
        .status
        .success());
    (base, top)
}

#[test]
fn info_of_qcow2_chain_matches_qemu_img_human_and_json() {
    let d = tmp();
    let (_, top) = chain(&d);
    for args in [
        vec!["info"],
        vec!["info", "--backing-chain"],
        vec!["info", "--output=json"],
        vec!["info", "--output=json", "--backing-chain"],
    ] {
        let mut a = args.clone();
        a.push(&top);
        let ours = oxemu(&a);
        assert!(ours.status.success(), "{}", err(&ours));
        let theirs = qemu_img(&a);
        if args.contains(&"--output=json") {
            assert_eq!(json(&ours), json(&theirs), "{args:?}");
        } else {
            assert_eq!(out(&ours), out(&theirs), "{args:?}");
        }
    }
}

#[test]
fn create_qcow2_options_give_images_qemu_img_accepts() {
    let d = tmp();
    let img = path(&d, "new.qcow2");
    let o = oxemu(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=16384,lazy_refcounts=on,compression_type=zstd,extended_l2=on",
        &img,
        "100M",
    ]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).starts_with("Formatting '"), "{}", out(&o));
    let info = json(&qemu_img(&["info", "--output=json", &img]));
    assert_eq!(info["cluster-size"], 16384);
    assert_eq!(info["virtual-size"], 100 << 20);
    let data = &info["format-specific"]["data"];
    assert_eq!(data["lazy-refcounts"], true);
    assert_eq!(data["compression-type"], "zstd");
    assert_eq!(data["extended-l2"], true);
    assert!(qemu_img(&["check", &img]).status.success());
    let (base, _) = chain(&d);
    let ov = path(&d, "ov.qcow2");
    let o = oxemu(&[
        "create", "-q", "-f", "qcow2", "-b", &base, "-F", "qcow2", &ov,
    ]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(
        json(&qemu_img(&["info", "--output=json", &ov]))["virtual-size"],
        16 << 20
    );
    assert!(qemu_img(&["compare", &base, &ov]).status.success());
    for (opts, needle) in [
        ("cluster_size=3000", "Cluster size must be a power of two"),
        ("bogus=1", "Invalid parameter 'bogus'"),
    ] {
        let o = oxemu(&[
            "create",
            "-f",
            "qcow2",
            "-o",
            opts,
            &path(&d, "bad.qcow2"),
            "1M",
        ]);
        assert!(!o.status.success());
        assert_eq!(err(&o).lines().count(), 1, "{}", err(&o));
        assert!(err(&o).contains(needle), "{}", err(&o));
    }
    let o = oxemu(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        &base,
        &path(&d, "nofmt.qcow2"),
    ]);
    assert!(err(&o).contains("Backing file specified without backing format"));
}

/// Clears the first L2 entry of `img` so its data cluster is referenced by nothing.
fn leak_first_cluster(img: &str) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let mut b = [0u8; 8];
    f.seek(SeekFrom::Start(40)).unwrap();
    f.read_exact(&mut b).unwrap();
    let l1 = u64::from_be_bytes(b);
    f.seek(SeekFrom::Start(l1)).unwrap();
    f.read_exact(&mut b).unwrap();
    let l2 = u64::from_be_bytes(b) & 0x00ff_ffff_ffff_fe00;
    assert_ne!(l2, 0);
    f.seek(SeekFrom::Start(l2)).unwrap();
    f.write_all(&[0; 8]).unwrap();
}

#[test]
fn check_finds_and_repairs_leaks_like_qemu_img() {
    let d = tmp();
    let img = path(&d, "leaky.qcow2");
    assert!(qemu_img(&["create", "-q", "-f", "qcow2", &img, "4M"])
        .status
        .success());
    assert!(run("qemu-io", &["-c", "write -P 5 0 64k", &img])
        .status
        .success());
    let clean = oxemu(&["check", "--output=json", &img]);
    assert_eq!(clean.status.code(), Some(0), "{}", err(&clean));
    let mut a = json(&clean);
    let mut b = json(&qemu_img(&["check", "--output=json", &img]));
    a.as_object_mut().unwrap().remove("filename");
    b.as_object_mut().unwrap().remove("filename");
    assert_eq!(a, b);
    leak_first_cluster(&img);
    let ours = oxemu(&["check", &img]);
    let theirs = qemu_img(&["check", &img]);
    assert_eq!(ours.status.code(), Some(3), "{}", out(&ours));
    assert_eq!(ours.status.code(), theirs.status.code());
    assert!(
        out(&ours).contains("1 leaked clusters were found on the image."),
        "{}",
        out(&ours)
    );
    let fixed = oxemu(&["check", "-r", "leaks", &img]);
    assert_eq!(
        fixed.status.code(),
        Some(0),
        "{}{}",
        out(&fixed),
        err(&fixed)
    );
    assert!(out(&fixed).contains("Double checking the fixed image now..."));
    let after = qemu_img(&["check", &img]);
    assert!(after.status.success(), "{}", out(&after));
}

#[test]
fn map_compare_convert_and_bench_work_on_qcow2_chains() {
    let d = tmp();
    let (_, top) = chain(&d);
    for args in [vec!["map"], vec!["map", "--output=json"]] {
        let mut a = args.clone();
        a.push(&top);
        assert_eq!(out(&oxemu(&a)), out(&qemu_img(&a)), "{args:?}");
    }
    let raw = path(&d, "flat.raw");
    let o = oxemu(&["convert", "-O", "raw", &top, &raw]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(qemu_img(&["compare", &top, &raw]).status.success());
    let c = oxemu(&["compare", &top, &raw]);
    assert_eq!(out(&c), "Images are identical.\n");
    for engine in ["threads", "io_uring"] {
        let b = oxemu(&[
            "bench", "-f", "qcow2", "-w", "-c", "500", "-d", "8", "-i", engine, &top,
        ]);
        assert!(b.status.success(), "{}", err(&b));
        assert!(out(&b).contains("Run completed in"), "{}", out(&b));
    }
    let chk = qemu_img(&["check", &top]);
    assert!(chk.status.success(), "{}", out(&chk));
}

#[test]
fn convert_to_qcow2_and_resize_give_images_that_pass_qemu_img_check() {
    let d = tmp();
    let (_, top) = chain(&d);
    let flat = path(&d, "flat.qcow2");
    let o = oxemu(&[
        "convert",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=4096",
        &top,
        &flat,
    ]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(qemu_img(&["check", &flat]).status.success());
    assert!(qemu_img(&["compare", &top, &flat]).status.success());
    let info = json(&qemu_img(&["info", "--output=json", &flat]));
    assert_eq!(info["cluster-size"], 4096);
    assert!(info.get("backing-filename").is_none());
    let o = oxemu(&["resize", &flat, "+16M"]);
    assert!(o.status.success(), "{}", err(&o));
    let info = json(&qemu_img(&["info", "--output=json", &flat]));
    assert_eq!(info["virtual-size"], 32 << 20);
    assert!(qemu_img(&["check", &flat]).status.success());
    assert!(qemu_img(&["compare", &top, &flat]).status.success());
}

#[test]
fn safe_rebase_keeps_content_and_unsafe_rebase_only_renames() {
    let d = tmp();
    let (base, top) = chain(&d);
    let before = path(&d, "before.raw");
    assert!(qemu_img(&["convert", "-O", "raw", &top, &before])
        .status
        .success());
    let o = oxemu(&["rebase", "-b", "", &top]);
    assert!(o.status.success(), "{}", err(&o));
    let info = json(&qemu_img(&["info", "--output=json", &top]));
    assert!(info.get("backing-filename").is_none(), "{info}");
    assert!(qemu_img(&["check", &top]).status.success());
    let c = qemu_img(&["compare", &before, &top]);
    assert!(c.status.success(), "{}", out(&c));
    let o = oxemu(&["rebase", "-u", "-b", &base, "-F", "qcow2", &top]);
    assert!(o.status.success(), "{}", err(&o));
    let info = json(&qemu_img(&["info", "--output=json", &top]));
    assert_eq!(info["backing-filename"], base.as_str());
    assert_eq!(info["backing-filename-format"], "qcow2");
}

#[test]
fn commit_moves_top_data_into_backing_file() {
    let d = tmp();
    let (base, top) = chain(&d);
    let before = path(&d, "before.raw");
    assert!(qemu_img(&["convert", "-O", "raw", &top, &before])
        .status
        .success());
    let top_len = std::fs::metadata(&top).unwrap().len();
    let o = oxemu(&["commit", &top]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), "Image committed.\n");
    for img in [&base, &top] {
        assert!(qemu_img(&["check", img]).status.success());
        let c = qemu_img(&["compare", &before, img]);
        assert!(c.status.success(), "{img}: {}", out(&c));
    }
    // As with qemu-img, the top image is emptied: nothing is allocated in it any more
    // and the storage its data took is given back.
    let m = json(&qemu_img(&["map", "--output=json", &top]));
    assert!(m.as_array().unwrap().iter().all(|e| e["depth"] != 0), "{m}");
    assert!(std::fs::metadata(&top).unwrap().len() < top_len);
}

#[test]
fn commit_d_keeps_the_top_image_and_p_shows_progress() {
    let d = tmp();
    let (base, top) = chain(&d);
    let before = path(&d, "before.raw");
    assert!(qemu_img(&["convert", "-O", "raw", &top, &before])
        .status
        .success());
    let o = oxemu(&["commit", "-d", "-p", &top]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).contains("    (100.00/100%)\r\n"), "{}", out(&o));
    assert!(out(&o).ends_with("Image committed.\n"), "{}", out(&o));
    let m = json(&qemu_img(&["map", "--output=json", &top]));
    assert_eq!(m[0]["depth"], 0, "{m}");
    for img in [&base, &top] {
        assert!(qemu_img(&["check", img]).status.success());
        let c = qemu_img(&["compare", &before, img]);
        assert!(c.status.success(), "{img}: {}", out(&c));
    }
}

#[test]
fn convert_c_writes_compressed_clusters_qemu_img_reads_back() {
    let d = tmp();
    let src = path(&d, "src.raw");
    assert!(qemu_img(&["create", "-f", "raw", &src, "8M"])
        .status
        .success());
    // Compressible data, some incompressible-looking data, and a hole.
    let o = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x61 0 3M",
            "-c",
            "write -P 0x7e 5M 1M",
            &src,
        ],
    );
    assert!(o.status.success(), "{}", err(&o));
    for ty in ["zlib", "zstd"] {
        let dst = path(&d, &format!("c-{ty}.qcow2"));
        let o = oxemu(&[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            &format!("compression_type={ty}"),
            &src,
            &dst,
        ]);
        assert!(o.status.success(), "{ty}: {}", err(&o));
        let c = qemu_img(&["check", &dst]);
        assert!(c.status.success(), "{ty}: {}{}", out(&c), err(&c));
        let cmp = qemu_img(&["compare", "-f", "raw", "-F", "qcow2", &src, &dst]);
        assert!(cmp.status.success(), "{ty}: {}", out(&cmp));
        // 4 MiB of data in one-byte patterns compress to far less.
        let len = std::fs::metadata(&dst).unwrap().len();
        assert!(len < 1 << 20, "{ty}: compressed image is {len} bytes");
        let info = json(&qemu_img(&["info", "--output=json", &dst]));
        assert_eq!(info["format-specific"]["data"]["compression-type"], ty);
    }
    let o = oxemu(&["convert", "-c", "-O", "raw", &src, &path(&d, "x.raw")]);
    assert!(!o.status.success() && err(&o).contains("Compression not supported"));
}

#[test]
fn amend_changes_compat_and_lazy_refcounts_as_qemu_img_sees_them() {
    let d = tmp();
    let img = path(&d, "a.qcow2");
    assert!(
        qemu_img(&["create", "-f", "qcow2", "-o", "compat=0.10", &img, "4M"])
            .status
            .success()
    );
    assert!(run(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x42 0 64k", &img]
    )
    .status
    .success());
    let o = oxemu(&[
        "amend",
        "-f",
        "qcow2",
        "-o",
        "compat=1.1,lazy_refcounts=on",
        &img,
    ]);
    assert!(o.status.success(), "{}", err(&o));
    let info = json(&qemu_img(&["info", "--output=json", &img]));
    assert_eq!(info["format-specific"]["data"]["compat"], "1.1");
    assert_eq!(info["format-specific"]["data"]["lazy-refcounts"], true);
    assert!(qemu_img(&["check", &img]).status.success());
    let r = run(
        "qemu-io",
        &["-f", "qcow2", "-c", "read -P 0x42 0 64k", &img],
    );
    assert!(!out(&r).contains("verification failed"), "{}", out(&r));
    let o = oxemu(&["amend", "-o", "cluster_size=4096", &img]);
    assert!(!o.status.success() && err(&o).contains("cluster_size"));
}

/// The guest ranges `qemu-img map` reports as data, with neighbours merged.
fn data_ranges(img: &str) -> Vec<(u64, u64)> {
    let m = json(&qemu_img(&["map", "--output=json", img]));
    let mut v: Vec<(u64, u64)> = Vec::new();
    for e in m.as_array().unwrap() {
        if e["data"] != true {
            continue;
        }
        let (s, l) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        match v.last_mut() {
            Some((ps, pl)) if *ps + *pl == s => *pl += l,
            _ => v.push((s, l)),
        }
    }
    v
}

#[test]
fn convert_sparse_detection_and_coroutine_options_match_qemu_img() {
    let d = tmp();
    let src = path(&d, "src.raw");
    assert!(qemu_img(&["create", "-q", "-f", "raw", &src, "8M"])
        .status
        .success());
    // Data, explicit zeroes (allocated in the raw file), a lone 4 KiB of data in a
    // zero megabyte, then a hole.
    for cmd in [
        "write -P 5 0 1M",
        "write -P 0 1M 1M",
        "write -P 0 2M 1M",
        "write -P 9 2304k 4k",
    ] {
        assert!(run("qemu-io", &["-f", "raw", "-c", cmd, &src])
            .status
            .success());
    }
    for sparse in [None, Some("0"), Some("64k")] {
        let ours = path(&d, "ours.qcow2");
        let theirs = path(&d, "theirs.qcow2");
        let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
        if let Some(s) = sparse {
            args.extend(["-S", s]);
        }
        let o = oxemu(&[&args[..], &[&src, &ours]].concat());
        assert!(o.status.success(), "{}", err(&o));
        let o = qemu_img(&[&args[..], &[&src, &theirs]].concat());
        assert!(o.status.success(), "{}", err(&o));
        assert!(qemu_img(&["check", &ours]).status.success());
        let c = qemu_img(&["compare", &src, &ours]);
        assert!(c.status.success(), "{}", out(&c));
        assert_eq!(
            data_ranges(&ours),
            data_ranges(&theirs),
            "allocation after convert -S {sparse:?}"
        );
    }
    // Any number of copy requests, in order or not, gives the same image.
    for extra in [
        &["-m", "1"][..],
        &["-m", "16", "-W"][..],
        &["-m", "3", "-W"][..],
    ] {
        let dst = path(&d, "m.raw");
        let o = oxemu(
            &[
                &["convert", "-f", "raw", "-O", "raw"][..],
                extra,
                &[&src, &dst],
            ]
            .concat(),
        );
        assert!(o.status.success(), "{extra:?}: {}", err(&o));
        let c = qemu_img(&["compare", "-f", "raw", "-F", "raw", &src, &dst]);
        assert!(c.status.success(), "{extra:?}: {}", out(&c));
    }
    for (bad, msg) in [
        (["-m", "0"], "Invalid number of coroutines"),
        (["-m", "17"], "Invalid number of coroutines"),
        (["-S", "100"], "Invalid buffer size for sparse output"),
    ] {
        let o = oxemu(&[&["convert"][..], &bad, &[&src, &path(&d, "x.raw")]].concat());
        assert!(!o.status.success());
        assert!(err(&o).contains(msg), "{bad:?}: {}", err(&o));
    }
}

/// `qemu-img map` entries reduced to what must match: range, depth, zero, data.
fn layout(img: &str) -> Vec<(u64, u64, u64, bool, bool)> {
    let m = json(&qemu_img(&["map", "--output=json", img]));
    m.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["start"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["depth"].as_u64().unwrap(),
                e["zero"] == true,
                e["data"] == true,
            )
        })
        .collect()
}

#[test]
fn convert_b_copies_only_the_top_layer_onto_a_backing_file_like_qemu_img() {
    let d = tmp();
    let (base, top) = chain(&d);
    assert!(run("qemu-io", &["-c", "write -z 2M 64k", &top])
        .status
        .success());
    let ours = path(&d, "ours.qcow2");
    let theirs = path(&d, "theirs.qcow2");
    for (tool, dst) in [
        (env!("CARGO_BIN_EXE_oxemu-img"), &ours),
        ("qemu-img", &theirs),
    ] {
        let o = run(
            tool,
            &[
                "convert", "-B", &base, "-F", "qcow2", "-O", "qcow2", &top, dst,
            ],
        );
        assert!(o.status.success(), "{tool}: {}", err(&o));
    }
    assert!(qemu_img(&["check", &ours]).status.success());
    let c = qemu_img(&["compare", &top, &ours]);
    assert!(c.status.success(), "{}", out(&c));
    assert_eq!(layout(&ours), layout(&theirs));
    let info = json(&qemu_img(&["info", "--output=json", &ours]));
    assert_eq!(info["backing-filename"], base.as_str());
    // --target-is-zero with -n: zero ranges of the source are not written.
    let dst = path(&d, "z.raw");
    assert!(qemu_img(&["create", "-q", "-f", "raw", &dst, "16M"])
        .status
        .success());
    let o = oxemu(&["convert", "-n", "--target-is-zero", "-O", "raw", &top, &dst]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(qemu_img(&["compare", &top, &dst]).status.success());
    for (args, msg) in [
        (
            &["-B", &base, "-O", "qcow2"][..],
            "requires explicit backing format",
        ),
        (
            &["-B", &base, "-F", "qcow2", "-O", "raw"][..],
            "not supported for file format 'raw'",
        ),
        (&["--target-is-zero", "-O", "raw"][..], "requires use of -n"),
    ] {
        let o = oxemu(&[&["convert"][..], args, &[&top, &path(&d, "e.img")]].concat());
        assert!(!o.status.success(), "{args:?}");
        assert!(err(&o).contains(msg), "{args:?}: {}", err(&o));
    }
}
