//! Starts the real `oxemu-storage-daemon` binary and drives it over its command line
//! and QMP sockets; error texts are compared with qemu-storage-daemon 7.2 where the
//! same input is given to both.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_oxemu-storage-daemon");

/// A running daemon, killed if a test fails before it is stopped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Daemon {
    fn start(args: &[String], wait_for: &[&Path]) -> Daemon {
        let child = Command::new(BIN)
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start daemon");
        let mut d = Daemon(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        for p in wait_for {
            while !p.exists() {
                if let Some(st) = d.0.try_wait().unwrap() {
                    let mut err = String::new();
                    std::io::Read::read_to_string(d.0.stderr.as_mut().unwrap(), &mut err).ok();
                    panic!("daemon exited early ({st}): {err}");
                }
                assert!(Instant::now() < deadline, "{} did not appear", p.display());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        d
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    fn terminate(mut self) -> i32 {
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.0.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "daemon ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A negotiated QMP client over any stream.
struct Qmp {
    r: BufReader<Box<dyn std::io::Read>>,
    w: Box<dyn Write>,
    /// Events that arrived while waiting for a reply.
    events: std::collections::VecDeque<Value>,
}

impl Qmp {
    fn unix(path: &Path) -> Qmp {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Qmp::negotiate(Box::new(s.try_clone().unwrap()), Box::new(s))
    }

    fn tcp(port: u16) -> Qmp {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Qmp::negotiate(Box::new(s.try_clone().unwrap()), Box::new(s))
    }

    fn negotiate(r: Box<dyn std::io::Read>, w: Box<dyn Write>) -> Qmp {
        let mut q = Qmp {
            r: BufReader::new(r),
            w,
            events: Default::default(),
        };
        assert_eq!(q.recv()["QMP"]["version"]["qemu"]["major"], 7);
        assert_eq!(q.exec("qmp_capabilities", json!({})), json!({"return": {}}));
        q
    }

    fn recv(&mut self) -> Value {
        let mut line = String::new();
        self.r.read_line(&mut line).expect("QMP read");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad QMP line {line:?}: {e}"))
    }

    /// Runs a command; returns its reply, keeping events for [`Self::next_event`].
    fn exec(&mut self, cmd: &str, args: Value) -> Value {
        let req = json!({"execute": cmd, "arguments": args});
        writeln!(self.w, "{req}").unwrap();
        loop {
            let v = self.recv();
            if v.get("event").is_none() {
                return v;
            }
            self.events.push_back(v);
        }
    }

    fn ok(&mut self, cmd: &str, args: Value) -> Value {
        let r = self.exec(cmd, args.clone());
        assert!(r.get("return").is_some(), "{cmd} {args}: {r}");
        r["return"].clone()
    }

    fn err(&mut self, cmd: &str, args: Value) -> (String, String) {
        let r = self.exec(cmd, args.clone());
        let e = &r["error"];
        assert!(e.is_object(), "{cmd} {args} unexpectedly gave {r}");
        (
            e["class"].as_str().unwrap().into(),
            e["desc"].as_str().unwrap().into(),
        )
    }

    fn next_event(&mut self) -> Value {
        if let Some(e) = self.events.pop_front() {
            return e;
        }
        loop {
            let v = self.recv();
            if v.get("event").is_some() {
                return v;
            }
        }
    }
}

fn image(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
    p
}

fn monitor_args(sock: &Path) -> Vec<String> {
    vec![
        "--chardev".into(),
        format!("socket,id=m0,path={},server=on,wait=off", sock.display()),
        "--monitor".into(),
        "chardev=m0".into(),
    ]
}

fn run(prog: &str, args: &[&str]) -> Output {
    Command::new(prog).args(args).output().expect(prog)
}

/// The message after `program: `, with the program name removed.
fn message(o: &Output) -> String {
    let e = String::from_utf8_lossy(&o.stderr);
    let line = e.lines().next().unwrap_or("").to_string();
    line.split_once(": ")
        .map(|(_, m)| m.to_string())
        .unwrap_or(line)
}

#[test]
fn version_and_help_have_qemu_storage_daemons_shape() {
    let v = run(BIN, &["-V"]);
    assert!(v.status.success());
    let out = String::from_utf8(v.stdout).unwrap();
    assert!(out.starts_with("oxemu-storage-daemon version "), "{out}");
    let h = run(BIN, &["--help"]);
    assert!(h.status.success());
    let out = String::from_utf8(h.stdout).unwrap();
    assert!(
        out.starts_with("Usage: oxemu-storage-daemon [options]"),
        "{out}"
    );
    for opt in [
        "--blockdev",
        "--export",
        "--chardev",
        "--monitor",
        "--object",
        "--nbd-server",
        "--pidfile",
        "--daemonize",
    ] {
        assert!(out.contains(opt), "help lacks {opt}");
    }
}

#[test]
fn command_line_errors_name_the_option_like_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "a.img");
    let img = img.display();
    let cases = [
        vec!["--blockdev".to_string(), format!("driver=file,node-name=f,filename={img},aio-max-batch=abc")],
        vec!["--blockdev".to_string(), format!("driver=file,node-name=f,filename={img},read-only=maybe")],
        vec!["--blockdev".to_string(), format!("{{\"driver\":\"file\",\"node-name\":\"f\",\"filename\":\"{img}\",\"aio-max-batch\":\"x\"}}")],
        // Options run in order: an export cannot name a later blockdev.
        vec![
            "--nbd-server".to_string(),
            format!("addr.type=unix,addr.path={}/n.sock", dir.path().display()),
            "--export".to_string(),
            "type=nbd,id=e0,node-name=f0".to_string(),
            "--blockdev".to_string(),
            format!("driver=file,node-name=f0,filename={img}"),
        ],
        vec!["--blockdev".to_string(), format!("driver=file,node-name=f0,filename={img}"), "--blockdev".to_string(), format!("driver=file,node-name=f0,filename={img}")],
    ];
    let cases = cases.into_iter().chain([
        vec![
            "--blockdev".to_string(),
            "driver=nope,node-name=z".to_string(),
        ],
        vec![
            "--export".to_string(),
            "type=nope,id=e,node-name=z".to_string(),
        ],
        vec!["--object".to_string(), "nope,id=x".to_string()],
        vec!["--monitor".to_string(), "chardev=nope".to_string()],
    ]);
    for args in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let ours = run(BIN, &a);
        let theirs = run("qemu-storage-daemon", &a);
        assert_eq!(ours.status.code(), Some(1), "{args:?}");
        assert!(!theirs.status.success(), "{args:?}");
        let m = message(&ours);
        assert!(
            m.starts_with(&format!("{} ", args[args.len() - 2])) || m.starts_with("--"),
            "{m}"
        );
        assert_eq!(m, message(&theirs), "{args:?}");
    }
}

#[test]
fn blockdevs_and_exports_are_managed_over_qmp_with_qemus_errors() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "a.img");
    let qmp = dir.path().join("qmp.sock");
    let nbd = dir.path().join("nbd.sock");
    let d = Daemon::start(&monitor_args(&qmp), &[&qmp]);
    let mut q = Qmp::unix(&qmp);
    q.ok(
        "blockdev-add",
        json!({"driver": "file", "node-name": "f0", "filename": img}),
    );
    q.ok(
        "blockdev-add",
        json!({"driver": "raw", "node-name": "r0", "file": "f0"}),
    );
    let nodes = q.ok("query-named-block-nodes", json!({}));
    let r0 = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"] == "r0")
        .unwrap();
    assert_eq!(r0["drv"], "raw");
    assert_eq!(r0["ro"], false);
    assert_eq!(r0["image"]["virtual-size"], 1 << 20);
    assert_eq!(r0["image"]["format"], "raw");
    assert_eq!(
        r0["cache"],
        json!({"writeback": true, "direct": false, "no-flush": false})
    );

    assert_eq!(
        q.err(
            "blockdev-add",
            json!({"driver": "file", "node-name": "f0", "filename": img})
        ),
        (
            "GenericError".into(),
            "Duplicate nodes with node-name='f0'".into()
        )
    );
    assert_eq!(
        q.err("blockdev-del", json!({"node-name": "nope"})),
        (
            "GenericError".into(),
            "Failed to find node with node-name='nope'".into()
        )
    );
    // f0 is the file child of r0.
    assert_eq!(
        q.err("blockdev-del", json!({"node-name": "f0"})).0,
        "GenericError"
    );

    q.ok(
        "nbd-server-start",
        json!({"addr": {"type": "unix", "data": {"path": nbd}}}),
    );
    q.ok(
        "block-export-add",
        json!({"type": "nbd", "id": "e0", "node-name": "r0", "writable": true}),
    );
    assert_eq!(
        q.err(
            "block-export-add",
            json!({"type": "nbd", "id": "e0", "node-name": "r0"})
        ),
        (
            "GenericError".into(),
            "Block export id 'e0' is already in use".into()
        )
    );
    assert_eq!(
        q.err("blockdev-del", json!({"node-name": "r0"})).0,
        "GenericError"
    );
    assert_eq!(
        q.ok("query-block-exports", json!({})),
        json!([{"type": "nbd", "id": "e0", "node-name": "r0", "shutting-down": false}])
    );

    // Data written through the export reaches the image.
    let io = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x5a 4096 4096",
            &format!("nbd+unix:///r0?socket={}", nbd.display()),
        ],
    );
    assert!(
        io.status.success(),
        "{}",
        String::from_utf8_lossy(&io.stderr)
    );
    assert_eq!(std::fs::read(&img).unwrap()[4096..8192], [0x5a; 4096]);

    // Safe mode refuses while a client is connected; qemu-io has exited, but the
    // server may not have seen its disconnect yet, so allow it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = q.exec("block-export-del", json!({"id": "e0"}));
        if r.get("return").is_some() {
            break;
        }
        assert_eq!(r["error"]["desc"], "export 'e0' still in use");
        assert!(
            Instant::now() < deadline,
            "export stays in use after its client left"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ev = q.next_event();
    assert_eq!(ev["event"], "BLOCK_EXPORT_DELETED");
    assert_eq!(ev["data"], json!({"id": "e0"}));
    assert_eq!(q.ok("query-block-exports", json!({})), json!([]));
    q.ok("blockdev-del", json!({"node-name": "r0"}));
    q.ok("blockdev-del", json!({"node-name": "f0"}));
    assert_eq!(q.ok("query-named-block-nodes", json!({})), json!([]));

    q.ok("object-add", json!({"qom-type": "iothread", "id": "io0"}));
    assert_eq!(
        q.err("object-add", json!({"qom-type": "iothread", "id": "io0"}))
            .0,
        "GenericError"
    );
    q.ok("object-del", json!({"id": "io0"}));
    assert_eq!(d.terminate(), 0);
}

#[test]
fn unix_and_tcp_monitors_all_receive_events() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "a.img");
    let qmp = dir.path().join("qmp.sock");
    let nbd = dir.path().join("nbd.sock");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut args = monitor_args(&qmp);
    args.extend([
        "--chardev".into(),
        format!("socket,id=m1,host=127.0.0.1,port={port},server=on,wait=off"),
        "--monitor".into(),
        "chardev=m1".into(),
        "--blockdev".into(),
        format!("driver=file,node-name=f0,filename={}", img.display()),
        "--nbd-server".into(),
        format!("addr.type=unix,addr.path={}", nbd.display()),
        "--export".into(),
        "type=nbd,id=e0,node-name=f0".into(),
    ]);
    let d = Daemon::start(&args, &[&qmp, &nbd]);
    let mut a = Qmp::unix(&qmp);
    let mut b = Qmp::tcp(port);
    b.ok("block-export-del", json!({"id": "e0", "mode": "hard"}));
    for q in [&mut a, &mut b] {
        let ev = q.next_event();
        assert_eq!(ev["event"], "BLOCK_EXPORT_DELETED");
        assert!(ev["timestamp"]["seconds"].as_u64().unwrap() > 0);
    }
    assert_eq!(d.terminate(), 0);
}

#[test]
fn sigterm_flushes_and_removes_sockets_and_pidfile() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "a.img");
    let qmp = dir.path().join("qmp.sock");
    let nbd = dir.path().join("nbd.sock");
    let pid = dir.path().join("d.pid");
    let mut args = monitor_args(&qmp);
    args.extend([
        "--blockdev".into(),
        format!("driver=file,node-name=f0,filename={}", img.display()),
        "--nbd-server".into(),
        format!("addr.type=unix,addr.path={}", nbd.display()),
        "--export".into(),
        "type=nbd,id=e0,node-name=f0,writable=on".into(),
        "--pidfile".into(),
        pid.display().to_string(),
    ]);
    let d = Daemon::start(&args, &[&qmp, &nbd, &pid]);
    let written: u32 = std::fs::read_to_string(&pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(written, d.0.id());
    let io = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x33 0 65536",
            &format!("nbd+unix:///f0?socket={}", nbd.display()),
        ],
    );
    assert!(
        io.status.success(),
        "{}",
        String::from_utf8_lossy(&io.stderr)
    );
    assert_eq!(d.terminate(), 0);
    assert!(!qmp.exists() && !nbd.exists() && !pid.exists());
    assert_eq!(std::fs::read(&img).unwrap()[..65536], [0x33; 65536]);
}

#[test]
fn x_inline_is_parsed_as_a_bool() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "a.img");
    let bad = format!(
        "driver=file,node-name=f,filename={},x-inline=maybe",
        img.display()
    );
    let out = run(BIN, &["--blockdev", &bad]);
    assert_eq!(out.status.code(), Some(1));
    let m = message(&out);
    assert!(m.contains("x-inline"), "{m}");
    // A good value is accepted: the daemon starts (it writes its pidfile once every
    // option has been applied) and stops cleanly on SIGTERM.
    let pid = dir.path().join("pid");
    let good = format!(
        "driver=file,node-name=f,filename={},x-inline=off",
        img.display()
    );
    let mut child = std::process::Command::new(BIN)
        .args(["--blockdev", &good, "--pidfile", pid.to_str().unwrap()])
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while !pid.exists() && t.elapsed() < std::time::Duration::from_secs(10) {
        assert!(child.try_wait().unwrap().is_none(), "x-inline=off refused");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(pid.exists(), "the daemon did not start");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

#[test]
fn handshake_max_seconds_disconnects_idle_nbd_clients_on_both_ways_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "a.img");
    let qmp = dir.path().join("qmp.sock");
    let nbd = dir.path().join("nbd.sock");
    let mut args = monitor_args(&qmp);
    args.extend([
        "--blockdev".into(),
        format!("driver=file,node-name=f0,filename={}", img.display()),
        "--nbd-server".into(),
        format!(
            "addr.type=unix,addr.path={},max-connections=1,handshake-max-seconds=1",
            nbd.display()
        ),
    ]);
    let d = Daemon::start(&args, &[&qmp, &nbd]);
    let idle_is_cut_off = |path: &Path| {
        let mut s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let t = Instant::now();
        let mut b = vec![0u8; 64];
        // The greeting, then EOF when the limit cuts the idle client off.
        while std::io::Read::read(&mut s, &mut b).unwrap() > 0 {}
        t.elapsed()
    };
    let took = idle_is_cut_off(&nbd);
    assert!(took < Duration::from_secs(4), "{took:?}");
    let mut q = Qmp::unix(&qmp);
    q.ok("nbd-server-stop", json!({}));
    let nbd2 = dir.path().join("nbd2.sock");
    q.ok(
        "nbd-server-start",
        json!({"addr": {"type": "unix", "path": nbd2.display().to_string()},
               "handshake-max-seconds": 1}),
    );
    let took = idle_is_cut_off(&nbd2);
    assert!(took < Duration::from_secs(4), "{took:?}");
    let (class, _) = q.err(
        "nbd-server-start",
        json!({"addr": {"type": "unix", "path": "/nonexistent/x"}, "handshake-max-seconds": "x"}),
    );
    assert_eq!(class, "GenericError");
    assert_eq!(d.terminate(), 0);
}

#[test]
fn getopt_errors_and_abbreviations_are_qemus() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "a.img");
    let bad_driver = format!("driver=x,node-name=f,filename={}", img.display());
    // Whole stderr, without the program name: getopt_long's texts, and QEMU's word
    // order for a positional argument.
    let cases: Vec<Vec<&str>> = vec![
        vec!["--zz"],
        vec!["-z"],
        vec!["foo"],
        vec!["--blockdev"],
        vec!["--trace"],
        vec!["--daemonize=1"],
        // An abbreviation names its option: the error comes from --blockdev itself.
        vec!["--block", &bad_driver],
        vec!["--object=nope,id=x"],
    ];
    for a in cases {
        let ours = run(BIN, &a);
        let theirs = run("qemu-storage-daemon", &a);
        assert_eq!(ours.status.code(), Some(1), "{a:?}");
        assert_eq!(theirs.status.code(), Some(1), "{a:?}");
        assert_eq!(message(&ours), message(&theirs), "{a:?}");
    }
}
