//! oxemu-img on NBD images (URIs, legacy names, json: names) against qemu-img 7.2,
//! through the same servers: a qemu-nbd and an in-process oxemu NBD server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oxemu_block::raw::RawFormat;
use oxemu_block::{EventLoopConfig, FileDriver, FileOptions, IoThread};
use oxemu_nbd::{NbdAddr, NbdExportOptions, NbdServer, NbdServerOptions};

fn tool(prog: &str, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("60")
        .arg(prog)
        .args(args)
        .output()
        .unwrap()
}

/// Runs both tools; returns (qemu-img, oxemu-img) outputs as text with the program
/// name prefix of messages removed, plus both exit codes.
/// stdout, stderr and exit code of one run.
type Run = (String, String, Option<i32>);

fn both(args: &[&str]) -> (Run, Run) {
    let f = |o: Output, name: &str| {
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).replace(&format!("{name}: "), ""),
            o.status.code(),
        )
    };
    (
        f(tool("qemu-img", args), "qemu-img"),
        f(tool(env!("CARGO_BIN_EXE_oxemu-img"), args), "oxemu-img"),
    )
}

fn same(args: &[&str]) -> String {
    let (q, o) = both(args);
    assert_eq!(q, o, "qemu-img and oxemu-img differ for {args:?}");
    q.0
}

struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(p: &Path) {
    let t = Instant::now();
    while !p.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no socket {}",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn qemu_nbd(sock: &Path, args: &[&str], img: &Path) -> Qemu {
    let c = Command::new("qemu-nbd")
        .arg("-k")
        .arg(sock)
        .args(["-t", "-e", "0"])
        .args(args)
        .arg(img)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(sock);
    Qemu(c)
}

/// An in-process oxemu NBD server exporting `img` (raw file) as `name`.
struct Oxemu {
    srv: NbdServer,
    _io: IoThread,
}

impl Drop for Oxemu {
    fn drop(&mut self) {
        self.srv.stop();
    }
}

fn oxemu_nbd(addr: NbdAddr, name: &str, img: &Path, writable: bool) -> Oxemu {
    let io = IoThread::spawn("nbd-test", EventLoopConfig::default()).unwrap();
    let srv = NbdServer::start(
        NbdServerOptions {
            addr,
            tls: None,
            max_connections: 0,
        },
        io.handle(),
    )
    .unwrap();
    let file = FileDriver::open(&FileOptions {
        read_only: !writable,
        ..FileOptions::new(img)
    })
    .unwrap();
    srv.add_export(
        NbdExportOptions {
            id: "e".into(),
            node_name: "n".into(),
            name: name.into(),
            writable,
            ..Default::default()
        },
        Arc::new(RawFormat::new(Arc::new(file))),
    )
    .unwrap();
    Oxemu { srv, _io: io }
}

fn raw_image(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let s = p.to_str().unwrap();
    assert!(tool("qemu-img", &["create", "-f", "raw", s, "4M"])
        .status
        .success());
    let o = tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x5a 0 64k",
            "-c",
            "write -P 0x33 1M 192k",
            "-c",
            "write -P 1 3M 4k",
            s,
        ],
    );
    assert!(o.status.success());
    p
}

/// Everything that must print the same through one URI.
fn compare_tools(uri: &str, local: &Path, dir: &Path) {
    for args in [
        vec!["info", uri],
        vec!["info", "--output=json", uri],
        vec!["info", "-f", "raw", uri],
        vec!["map", uri],
        vec!["map", "--output=json", uri],
        vec![
            "map",
            "--output=json",
            "--start-offset=1M",
            "--max-length=1M",
            uri,
        ],
        vec!["check", uri],
        vec!["compare", uri, local.to_str().unwrap()],
    ] {
        same(&args);
    }
    let bench = both(&["bench", "-c", "64", "-s", "4k", uri]);
    assert_eq!(bench.0 .2, bench.1 .2);
    assert_eq!(bench.0 .0.lines().next(), bench.1 .0.lines().next());
    // convert from NBD gives the same files.
    let (a, b) = (dir.join("q.raw"), dir.join("o.raw"));
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    assert!(tool("qemu-img", &["convert", "-O", "raw", uri, a])
        .status
        .success());
    let o = tool(
        env!("CARGO_BIN_EXE_oxemu-img"),
        &["convert", "-O", "raw", uri, b],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    same(&["map", "--output=json", b]);
}

#[test]
fn qemu_img_output_through_qemu_nbd() {
    let d = tempfile::tempdir().unwrap();
    let img = raw_image(d.path(), "a.img");
    let sock = d.path().join("q.sock");
    let _q = qemu_nbd(&sock, &["-f", "raw", "-x", "disk"], &img);
    let s = sock.display();
    compare_tools(&format!("nbd+unix:///disk?socket={s}"), &img, d.path());
    // The other spellings of the same export.
    for name in [
        format!("nbd:unix:{s}:exportname=disk"),
        format!(
            r#"json:{{"driver":"nbd","server":{{"type":"unix","path":"{s}"}},"export":"disk"}}"#
        ),
        format!(
            r#"json:{{"file":{{"driver":"nbd","server":{{"type":"unix","path":"{s}"}},"export":"disk"}}}}"#
        ),
        format!(
            r#"json:{{"driver":"raw","file.driver":"nbd","file.path":"{s}","file.export":"disk"}}"#
        ),
    ] {
        same(&["info", &name]);
        same(&["map", "--output=json", &name]);
    }
    // Errors.
    same(&["info", &format!("nbd+unix:///nope?socket={s}")]);
    same(&["info", &format!("nbd+unix:///disk?socket={s}&x=y")]);
    same(&["info", "nbd://"]);
    same(&[
        "info",
        &format!("nbd+unix:///x?socket={}/none.sock", d.path().display()),
    ]);
}

#[test]
fn qemu_img_output_through_oxemu_nbd_over_tcp() {
    let d = tempfile::tempdir().unwrap();
    let img = raw_image(d.path(), "a.img");
    let srv = oxemu_nbd(
        NbdAddr::Inet {
            host: "127.0.0.1".into(),
            port: 0,
        },
        "disk",
        &img,
        false,
    );
    let port = srv.srv.tcp_port().unwrap();
    compare_tools(&format!("nbd://127.0.0.1:{port}/disk"), &img, d.path());
    same(&["info", &format!("nbd:127.0.0.1:{port}:exportname=disk")]);
    // A read-only export refuses to be opened for writing.
    let src = d.path().join("src.raw");
    std::fs::write(&src, vec![7u8; 4 << 20]).unwrap();
    same(&[
        "convert",
        "-n",
        "-O",
        "raw",
        src.to_str().unwrap(),
        &format!("nbd://127.0.0.1:{port}/disk"),
    ]);
    drop(srv);
    // Connection refused, with nothing listening any more.
    same(&["info", &format!("nbd://127.0.0.1:{port}/disk")]);
}

#[test]
fn convert_into_nbd_and_qcow2_over_nbd() {
    let d = tempfile::tempdir().unwrap();
    let img = raw_image(d.path(), "a.img");
    // Writing through a writable export.
    let target = d.path().join("t.raw");
    assert!(tool(
        "qemu-img",
        &["create", "-f", "raw", target.to_str().unwrap(), "4M"]
    )
    .status
    .success());
    let sock = d.path().join("w.sock");
    let srv = oxemu_nbd(NbdAddr::Unix(sock.clone()), "", &target, true);
    let uri = format!("nbd+unix://?socket={}", sock.display());
    let o = tool(
        env!("CARGO_BIN_EXE_oxemu-img"),
        &["convert", "-n", "-O", "raw", img.to_str().unwrap(), &uri],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    same(&["compare", &uri, img.to_str().unwrap()]);
    // Creating on an export: it cannot grow, but may be used at its size or smaller.
    same(&["create", "-f", "raw", &uri, "8M"]);
    same(&["create", "-f", "raw", &uri, "4M"]);
    let o = tool(
        env!("CARGO_BIN_EXE_oxemu-img"),
        &["convert", "-O", "raw", img.to_str().unwrap(), &uri],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    same(&["compare", &uri, img.to_str().unwrap()]);
    drop(srv);
    assert_eq!(
        std::fs::read(&target).unwrap(),
        std::fs::read(&img).unwrap()
    );
    // A qcow2 image exported as raw bytes: qcow2 is probed (or given) on top.
    let q = d.path().join("a.qcow2");
    assert!(tool(
        "qemu-img",
        &[
            "convert",
            "-O",
            "qcow2",
            img.to_str().unwrap(),
            q.to_str().unwrap()
        ]
    )
    .status
    .success());
    let qs = d.path().join("qc.sock");
    let _q = qemu_nbd(&qs, &["-f", "raw"], &q);
    let uri = format!("nbd+unix://?socket={}", qs.display());
    for args in [
        vec!["info", &uri],
        vec!["info", "-f", "qcow2", "--output=json", &uri],
        vec!["map", "--output=json", &uri],
        vec!["map", &uri],
        vec!["check", &uri],
        vec!["compare", &uri, img.to_str().unwrap()],
    ] {
        same(&args);
    }
}
