//! `driver=blkdebug` nodes in oxemu-storage-daemon, side by side with
//! qemu-storage-daemon 7.2: the same `--blockdev` / QMP `blockdev-add` options give the
//! same errors, and an NBD client (qemu-io) sees the same injected errnos, `once`
//! rules and `set-state` transitions through a raw node over the filter.

mod common;

use common::Daemon;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

const OXEMU: &str = env!("CARGO_BIN_EXE_oxemu-storage-daemon");
const QEMU: &str = "qemu-storage-daemon";

/// Starts `prog` with `args` and waits for `sock` to appear.
fn start(prog: &str, args: &[String], sock: &Path) -> Daemon {
    common::start_until(prog, args, sock)
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("oxemu-sd-blkdebug")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

/// A 1 MiB image of data (allocated, so that QEMU's NBD server reads it rather than
/// reporting a hole).
fn image(dir: &Path) -> PathBuf {
    let p = dir.join("a.raw");
    std::fs::write(&p, vec![0xabu8; 1 << 20]).unwrap();
    p
}

/// Runs `prog` with `args` (expected to fail at startup) under a time limit; returns
/// its exit code and the message after `program: `.
fn startup_error(prog: &str, args: &[String]) -> (Option<i32>, String) {
    let o: Output = Command::new("timeout")
        .arg("10")
        .arg(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    let line = e.lines().next().unwrap_or("").to_string();
    let msg = line
        .split_once(": ")
        .map(|(_, m)| m.to_string())
        .unwrap_or(line);
    (o.status.code(), msg)
}

fn file_node(img: &Path) -> Vec<String> {
    vec![
        "--blockdev".into(),
        format!("driver=file,node-name=f,filename={}", img.display()),
    ]
}

#[test]
fn bad_blockdev_options_read_like_qemu_storage_daemons() {
    let d = tmp();
    let dir = d.path();
    let img = image(dir);
    let conf = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let bad_event = conf("event.conf", "[inject-error]\nevent = \"nope\"\n");
    let bad_errno = conf(
        "errno.conf",
        "[inject-error]\nevent = \"read_aio\"\nerrno = \"x\"\n",
    );
    let no_group = conf("nogroup.conf", "event = \"read_aio\"\n");
    let cases = [
        "driver=blkdebug,node-name=b,image=f,inject-error.0.event=nope".to_string(),
        "driver=blkdebug,node-name=b,image=f,inject-error.0.event=read_aio,inject-error.0.errno=abc".into(),
        "driver=blkdebug,node-name=b,image=f,inject-error.0.event=read_aio,inject-error.0.iotype=foo".into(),
        "driver=blkdebug,node-name=b,image=f,inject-error.0.errno=5".into(),
        "driver=blkdebug,node-name=b,image=f,inject-error.0.event=read_aio,inject-error.0.once=maybe".into(),
        "driver=blkdebug,node-name=b,image=f,inject-error.0.event=read_aio,inject-error.0.bogus=1".into(),
        "driver=blkdebug,node-name=b,image=f,set-state.0.event=read_aio".into(),
        "driver=blkdebug,node-name=b,image=f,set-state.0.event=x,set-state.0.new_state=2".into(),
        "driver=blkdebug,node-name=b,image=f,config=/nonexistent/c.conf".into(),
        format!("driver=blkdebug,node-name=b,image=f,config={bad_event}"),
        format!("driver=blkdebug,node-name=b,image=f,config={bad_errno}"),
        format!("driver=blkdebug,node-name=b,image=f,config={no_group}"),
        "driver=blkdebug,node-name=b,image=nope".into(),
        "driver=blkdebug,node-name=b".into(),
        r#"{"driver":"blkdebug","node-name":"b","image":"f","inject-error":[{"event":"read_aio","errno":"x"}]}"#.into(),
        r#"{"driver":"blkdebug","node-name":"b","image":"f","inject-error":[{"event":"read_aio","bogus":1}]}"#.into(),
        r#"{"driver":"blkdebug","node-name":"b","image":"f","inject-error":[{"errno":5}]}"#.into(),
        r#"{"driver":"blkdebug","node-name":"b","image":"f","inject-error":[{"event":"x"}]}"#.into(),
        r#"{"driver":"blkdebug","node-name":"b","image":"f","inject-error":{"event":"x"}}"#.into(),
        r#"{"driver":"blkdebug","node-name":"b","image":"f","set-state":[{"event":"read_aio","new_state":"2"}]}"#.into(),
    ];
    for c in &cases {
        let mut args = file_node(&img);
        args.extend(["--blockdev".to_string(), c.clone()]);
        let q = startup_error(QEMU, &args);
        let o = startup_error(OXEMU, &args);
        assert_eq!(q.0, Some(1), "qemu-storage-daemon accepted {c}: {}", q.1);
        assert_eq!(o, q, "oxemu (left) and qemu (right) differ for {c}");
    }
    // Options QEMU honours and oxemu cannot are refused by name (QEMU accepts them).
    for (opt, val) in [
        ("align", "512"),
        ("max-transfer", "65536"),
        ("opt-write-zero", "512"),
        ("max-write-zero", "65536"),
        ("opt-discard", "512"),
        ("max-discard", "65536"),
        ("take-child-perms.0", "write"),
        ("unshare-child-perms.0", "write"),
    ] {
        let mut args = file_node(&img);
        args.extend([
            "--blockdev".to_string(),
            format!("driver=blkdebug,node-name=b,image=f,{opt}={val}"),
        ]);
        let (code, msg) = startup_error(OXEMU, &args);
        let name = opt.trim_end_matches(".0");
        assert_eq!(code, Some(1), "{opt}: {msg}");
        assert!(
            msg.contains(&format!(
                "blkdebug option '{name}' is not supported by oxemu"
            )),
            "{opt}: {msg}"
        );
    }
}

/// Starts `prog` with a file node, a blkdebug node over it (`blkdebug_opts` appended)
/// and a raw node over that, exported writable over NBD; runs each qemu-io session
/// of `sessions` against the export in turn and returns their output, with timing
/// lines left out.
fn nbd_sessions(prog: &str, dir: &Path, blkdebug_opts: &str, sessions: &[&[&str]]) -> Vec<String> {
    nbd_sessions_on(prog, dir, "raw", blkdebug_opts, sessions)
}

/// [`nbd_sessions`] with a `format` node (`raw` over a data file, or `qcow2` over a
/// fresh 4 MiB image made by qemu-img) over the filter. For qcow2, the last element
/// is `qemu-img check`'s verdict on the image afterwards.
fn nbd_sessions_on(
    prog: &str,
    dir: &Path,
    format: &str,
    blkdebug_opts: &str,
    sessions: &[&[&str]],
) -> Vec<String> {
    let img = if format == "qcow2" {
        let p = dir.join("q.qcow2");
        let _ = std::fs::remove_file(&p);
        let o = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", p.to_str().unwrap(), "4M"])
            .output()
            .unwrap();
        assert!(o.status.success());
        p
    } else {
        image(dir)
    };
    let sock = dir.join(format!(
        "{}.sock",
        Path::new(prog).file_name().unwrap().to_string_lossy()
    ));
    let _ = std::fs::remove_file(&sock);
    let mut args = file_node(&img);
    args.extend([
        "--blockdev".to_string(),
        format!("driver=blkdebug,node-name=b,image=f{blkdebug_opts}"),
        "--blockdev".into(),
        format!("driver={format},node-name=r,file=b"),
        "--nbd-server".into(),
        format!("addr.type=unix,addr.path={}", sock.display()),
        "--export".into(),
        "type=nbd,id=e,node-name=r,name=d,writable=on".into(),
    ]);
    let d = start(prog, &args, &sock);
    let uri = format!("nbd+unix:///d?socket={}", sock.display());
    let mut out: Vec<String> = sessions
        .iter()
        .map(|cmds| {
            let mut a = vec!["10", "qemu-io", "-f", "raw"];
            for c in cmds.iter() {
                a.extend(["-c", c]);
            }
            a.push(&uri);
            let o = Command::new("timeout").args(&a).output().unwrap();
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            all.lines()
                .filter(|l| !l.contains(" ops; "))
                .map(|l| format!("{l}\n"))
                .collect::<String>()
        })
        .collect();
    drop(d);
    if format == "qcow2" {
        let o = Command::new("qemu-img")
            .arg("check")
            .arg(&img)
            .output()
            .unwrap();
        let verdict = String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        out.push(format!("check {:?}: {verdict}", o.status.code()));
    }
    out
}

/// Runs [`nbd_sessions`] on both daemons and asserts that the clients saw the same.
fn same_over_nbd(blkdebug_opts: &str, sessions: &[&[&str]]) -> Vec<String> {
    let d = tmp();
    let q = nbd_sessions(QEMU, d.path(), blkdebug_opts, sessions);
    let o = nbd_sessions(OXEMU, d.path(), blkdebug_opts, sessions);
    assert_eq!(
        o, q,
        "oxemu (left) and qemu (right) clients differ for {blkdebug_opts}"
    );
    q
}

#[test]
fn nbd_clients_see_injected_errnos_and_once_rules_as_with_qemu() {
    let d = tmp();
    let conf = d.path().join("w.conf");
    std::fs::write(
        &conf,
        "[inject-error]\nevent = \"write_aio\"\nerrno = \"28\"\nonce = \"on\"\n",
    )
    .unwrap();
    // The config's ENOSPC write rule, and an EIO read rule for sector 8 from the
    // options. QEMU's NBD server drops the client after a failed read, so a failed
    // read ends each session.
    let opts = format!(
        ",config={},inject-error.0.event=read_aio,inject-error.0.sector=8,inject-error.0.once=on",
        conf.display()
    );
    let out = same_over_nbd(
        &opts,
        &[
            &[
                "write -P 1 0 512",
                "write -P 2 0 512",
                "read -P 2 0 512",
                "read 4096 512",
            ],
            // Both `once` rules are gone: everything works now.
            &[
                "write -P 3 4096 512",
                "read -P 3 4096 512",
                "read -P 2 0 512",
            ],
        ],
    );
    assert!(
        out[0].starts_with("write failed: No space left on device\nwrote 512/512"),
        "{}",
        out[0]
    );
    assert!(
        out[0].contains("read failed: Input/output error"),
        "{}",
        out[0]
    );
    assert!(!out[1].contains("failed"), "{}", out[1]);
    // A rule without `once` keeps failing, for every request type its iotype mask
    // (here the default) covers; the client sees the rule's errno (EPERM).
    let out = same_over_nbd(
        ",inject-error.0.event=write_aio,inject-error.0.errno=1",
        &[&[
            "write 0 512",
            "write 0 512",
            "write -z 4096 512",
            "write 8192 512",
        ]],
    );
    assert_eq!(
        out[0].matches("failed: Operation not permitted").count(),
        4,
        "{}",
        out[0]
    );
    // NBD carries only some errnos: the others reach the client as EINVAL, EDQUOT as
    // ENOSPC; errno 0 makes the rule inert.
    for (errno, seen) in [
        (2, "Invalid argument"),
        (12, "Cannot allocate memory"),
        (95, "Operation not supported"),
        (75, "Value too large for defined data type"),
        (108, "Cannot send after transport endpoint shutdown"),
        (122, "No space left on device"),
        (0, ""),
    ] {
        let out = same_over_nbd(
            &format!(",inject-error.0.event=write_aio,inject-error.0.errno={errno}"),
            &[&["write 0 512"]],
        );
        if errno == 0 {
            assert!(out[0].starts_with("wrote 512/512"), "{}", out[0]);
        } else {
            assert_eq!(out[0], format!("write failed: {seen}\n"));
        }
    }
    // Reads differ: QEMU 7.2's NBD server drops the client when a structured read
    // fails (the client then reports EIO for it and for every later request), while
    // oxemu's replies with the errno and keeps the connection. A read that fails with
    // EIO as the last request of a session looks the same from both.
    let out = same_over_nbd(
        ",inject-error.0.event=read_aio,inject-error.0.iotype=read",
        &[&["write -P 5 0 512", "read 0 512"], &["read 0 512"]],
    );
    assert_eq!(
        out,
        [
            "wrote 512/512 bytes at offset 0\nread failed: Input/output error\n",
            "read failed: Input/output error\n"
        ]
    );
}

#[test]
fn qcow2_metadata_events_fail_guest_writes_as_with_qemu() {
    // ENOSPC once on the first L2 update, the first cluster allocation, or the data
    // write itself: the first guest write fails, the rest work, the data read back is
    // the second write's and the image stays clean.
    for ev in [
        "l2_update",
        "cluster_alloc",
        "write_aio",
        "l2_load",
        "refblock_alloc",
        "l2_alloc_write",
    ] {
        let d = tmp();
        let opts =
            format!(",inject-error.0.event={ev},inject-error.0.errno=28,inject-error.0.once=on");
        let sessions: &[&[&str]] = &[&[
            "write -P 1 0 64k",
            "write -P 2 0 64k",
            "write -P 3 1M 64k",
            "read -P 2 0 64k",
            "read -P 3 1M 64k",
        ]];
        let q = nbd_sessions_on(QEMU, d.path(), "qcow2", &opts, sessions);
        let o = nbd_sessions_on(OXEMU, d.path(), "qcow2", &opts, sessions);
        assert_eq!(o, q, "oxemu (left) and qemu (right) differ for {ev}");
        assert_eq!(
            q[1], "check Some(0): No errors were found on the image.",
            "{ev}"
        );
    }
}

#[test]
fn set_state_rules_move_between_inject_rules_as_with_qemu() {
    // State 1 --write_aio--> 2 --write_aio--> 3. The EIO rule is for state 2: the
    // first write passes, the second fails; the third is in state 3, which activates
    // nothing, so QEMU's active rule stays and it fails too.
    let opts = ",set-state.0.event=write_aio,set-state.0.state=1,set-state.0.new_state=2,\
                set-state.1.event=write_aio,set-state.1.state=2,set-state.1.new_state=3,\
                inject-error.0.event=write_aio,inject-error.0.state=2,inject-error.0.errno=5";
    let out = same_over_nbd(
        opts,
        &[&["write 0 512", "write 0 512", "write 0 512", "read 0 512"]],
    );
    assert!(out[0].starts_with("wrote 512/512"), "{}", out[0]);
    assert_eq!(
        out[0].matches("write failed: Input/output error").count(),
        2,
        "{}",
        out[0]
    );
    // A `once` rule of state 2 and a read rule of state 3: the write in state 2 fails
    // once, the read after the move to 3 fails.
    let opts = ",set-state.0.event=write_aio,set-state.0.state=1,set-state.0.new_state=2,\
                set-state.1.event=write_aio,set-state.1.state=2,set-state.1.new_state=3,\
                inject-error.0.event=write_aio,inject-error.0.state=2,inject-error.0.once=on,\
                inject-error.1.event=read_aio,inject-error.1.state=3,inject-error.1.iotype=read";
    let out = same_over_nbd(
        opts,
        &[&["write 0 512", "write 0 512", "write 0 512", "read 0 512"]],
    );
    assert!(
        out[0].contains("read failed: Input/output error"),
        "{}",
        out[0]
    );
}

/// A negotiated QMP client.
struct Qmp {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Qmp {
    fn connect(path: &Path) -> Qmp {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut q = Qmp {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        };
        q.recv();
        q.exec("qmp_capabilities", json!({}));
        q
    }

    fn recv(&mut self) -> Value {
        let mut line = String::new();
        self.r.read_line(&mut line).expect("QMP read");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad QMP line {line:?}: {e}"))
    }

    fn exec(&mut self, cmd: &str, args: Value) -> Value {
        writeln!(self.w, "{}", json!({"execute": cmd, "arguments": args})).unwrap();
        loop {
            let v = self.recv();
            if v.get("event").is_none() {
                return v;
            }
        }
    }
}

/// Runs `cmds` (blockdev-add arguments, or `{"del": NAME}` for blockdev-del) over QMP
/// against `prog`; returns each reply's error text ("" for success) and the drivers of
/// the named nodes afterwards.
fn qmp_session(prog: &str, dir: &Path, cmds: &[Value]) -> (Vec<String>, Vec<(String, String)>) {
    let (errs, nodes) = qmp_session_nodes(prog, dir, cmds);
    let names = nodes.iter().map(|n| (n[0].clone(), n[1].clone())).collect();
    (errs, names)
}

/// [`qmp_session`] with each named node as `[name, drv, file, actual-size or "-"]`.
fn qmp_session_nodes(prog: &str, dir: &Path, cmds: &[Value]) -> (Vec<String>, Vec<[String; 4]>) {
    let sock = dir.join(format!(
        "{}.qmp",
        Path::new(prog).file_name().unwrap().to_string_lossy()
    ));
    let _ = std::fs::remove_file(&sock);
    let args = vec![
        "--chardev".to_string(),
        format!("socket,id=m0,path={},server=on,wait=off", sock.display()),
        "--monitor".into(),
        "chardev=m0".into(),
    ];
    let _d = start(prog, &args, &sock);
    let mut q = Qmp::connect(&sock);
    let errs = cmds
        .iter()
        .map(|c| {
            let r = match c.get("del") {
                Some(n) => q.exec("blockdev-del", json!({"node-name": n})),
                None => q.exec("blockdev-add", c.clone()),
            };
            r["error"]["desc"].as_str().unwrap_or("").to_string()
        })
        .collect();
    let nodes = q.exec("query-named-block-nodes", json!({}))["return"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| !n["node-name"].as_str().unwrap().starts_with('#'))
        .map(|n| {
            [
                n["node-name"].as_str().unwrap().to_string(),
                n["drv"].as_str().unwrap().to_string(),
                n["file"].as_str().unwrap().to_string(),
                n["image"]
                    .get("actual-size")
                    .map_or("-".into(), |a| a.to_string()),
            ]
        })
        .collect();
    (errs, nodes)
}

#[test]
fn blockdev_add_over_qmp_with_nested_image_options() {
    let d = tmp();
    let img = image(d.path());
    // Each node gets its own file: oxemu's file nodes lock their file when opened
    // (QEMU locks only for the permissions a user takes).
    let mut n = 0;
    let mut file = || {
        n += 1;
        let p = d.path().join(format!("f{n}.raw"));
        std::fs::copy(&img, &p).unwrap();
        json!({"driver": "file", "filename": p.display().to_string()})
    };
    let cmds = [
        json!({"driver": "blkdebug", "node-name": "b0", "image": file(),
               "inject-error": [{"event": "read_aio", "errno": 28, "once": true, "sector": -1}],
               "set-state": [{"event": "write_aio", "new_state": 2}]}),
        json!({"driver": "raw", "node-name": "r0", "file": "b0"}),
        json!({"driver": "blkdebug", "node-name": "b1", "image": file(),
               "inject-error": [{"event": "read_aio", "once": "on"}]}),
        json!({"driver": "blkdebug", "node-name": "b1", "image": file(),
               "inject-error": [{"event": "l1_grow_alloc_table", "iotype": "flush"}]}),
        json!({"driver": "blkdebug", "node-name": "b2", "image": file(),
               "inject-error": [{"event": "read_aio", "iotype": "bogus"}]}),
        json!({"driver": "blkdebug", "node-name": "b3", "image": 5}),
        json!({"driver": "blkdebug", "node-name": "b4", "image": file(), "config": 5}),
        // A blkdebug node over a named node; deleting in the wrong order fails.
        json!({"driver": "file", "node-name": "f5", "filename": file()["filename"]}),
        json!({"driver": "blkdebug", "node-name": "b5", "image": "f5"}),
        json!({"del": "f5"}),
        json!({"del": "b0"}),
        json!({"del": "r0"}),
        json!({"del": "b0"}),
        json!({"del": "b5"}),
    ];
    let q = qmp_session(QEMU, d.path(), &cmds);
    let o = qmp_session(OXEMU, d.path(), &cmds);
    assert_eq!(q.0[0], "", "{:?}", q.0);
    assert_eq!(q.0[3], "", "{:?}", q.0);
    let (qe, oe) = (q.0.clone(), o.0.clone());
    assert_eq!(
        qe[5],
        "Invalid parameter type for 'image', expected: BlockdevRef"
    );
    assert_eq!(
        oe, qe,
        "oxemu (left) and qemu (right) blockdev-add errors differ"
    );
    // (QEMU lists the newest node first, oxemu by name.)
    let sorted = |mut v: Vec<(String, String)>| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(o.1.clone()),
        sorted(q.1),
        "named nodes and drivers differ"
    );
    assert_eq!(
        o.1,
        [
            ("b1".to_string(), "blkdebug".to_string()),
            ("f5".into(), "file".into())
        ]
    );
    // Deleting f5 under b5 and b0 under r0 failed; the rest succeeded.
    assert!(!o.0[9].is_empty() && !o.0[10].is_empty(), "{:?}", o.0);
    assert!(o.0[11..].iter().all(String::is_empty), "{:?}", o.0);
}

#[test]
fn named_nodes_show_qemus_blkdebug_file_names() {
    let d = tmp();
    let img = image(d.path());
    let conf = d.path().join("empty.conf");
    std::fs::write(&conf, "").unwrap();
    let file = json!({"driver": "file", "filename": img.display().to_string()});
    let cmds = [
        json!({"driver": "blkdebug", "node-name": "b", "image": file, "config": conf.display().to_string()}),
        json!({"driver": "raw", "node-name": "r", "file": "b"}),
    ];
    let mut q = qmp_session_nodes(QEMU, d.path(), &cmds);
    let mut o = qmp_session_nodes(OXEMU, d.path(), &cmds);
    q.1.sort();
    o.1.sort();
    assert_eq!(o, q);
    let shown = format!("blkdebug:{}:{}", conf.display(), img.display());
    assert_eq!(
        o.1[0],
        [
            "b".to_string(),
            "blkdebug".into(),
            shown.clone(),
            "-".into()
        ]
    );
    assert_eq!(o.1[1], ["r".to_string(), "raw".into(), shown, "-".into()]);
}
