//! oxemu-nbd's `--list`, `--fork` and signal handling, against qemu-nbd 7.2.

mod common;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

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
            "{} did not appear",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn image(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    run_ok(
        "qemu-img",
        &["create", "-f", "raw", p.to_str().unwrap(), "2M"],
    );
    p
}

fn list_both(args: &[&str]) -> (String, String) {
    let theirs = run("qemu-nbd", &[&["-L"], args].concat());
    let mine = run(BIN, &[&["-L"], args].concat());
    assert_eq!(theirs.status.code(), mine.status.code());
    let strip = |b: &[u8], name: &str| String::from_utf8_lossy(b).replace(&format!("{name}: "), "");
    assert_eq!(
        strip(&theirs.stderr, "qemu-nbd"),
        strip(&mine.stderr, "oxemu-nbd")
    );
    (
        String::from_utf8_lossy(&theirs.stdout).into_owned(),
        String::from_utf8_lossy(&mine.stdout).into_owned(),
    )
}

#[test]
fn list_prints_what_qemu_nbd_prints() {
    let d = tempfile::tempdir().unwrap();
    let img = image(d.path(), "a.img");
    // A qemu-nbd server, with a description and allocation depth.
    let qs = d.path().join("q.sock");
    let _q = Qemu(
        Command::new("qemu-nbd")
            .arg("-k")
            .arg(&qs)
            .args([
                "-f",
                "raw",
                "-t",
                "-e",
                "0",
                "-x",
                "disk",
                "-D",
                "some text",
                "-A",
                "-r",
            ])
            .arg(&img)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&qs);
    let (theirs, mine) = list_both(&["-k", qs.to_str().unwrap()]);
    assert_eq!(theirs, mine);
    assert!(mine.contains("qemu:allocation-depth"), "{mine}");
    // An oxemu-nbd server.
    let img2 = image(d.path(), "b.img");
    let s = start(
        d.path(),
        false,
        &["-t", "-e", "0", "-x", "other", "-f", "raw"],
        &img2,
    );
    let (theirs, mine) = list_both(&["-k", s.sock.as_ref().unwrap().to_str().unwrap()]);
    assert_eq!(theirs, mine);
    assert!(
        mine.starts_with("exports available: 1\n export: 'other'\n"),
        "{mine}"
    );
    // Errors.
    let missing = d.path().join("none.sock");
    list_both(&["-k", missing.to_str().unwrap()]);
    let o = run(BIN, &["-L", "-x", "a", "-k", "s"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "oxemu-nbd: List mode is incompatible with per-device settings\n"
    );
}

#[test]
fn fork_returns_once_the_server_is_listening() {
    let d = tempfile::tempdir().unwrap();
    let img = image(d.path(), "a.img");
    let sock = d.path().join("f.sock");
    let pid = d.path().join("f.pid");
    let st = Command::new(BIN)
        .args(["--fork", "-t", "-f", "raw", "-k"])
        .arg(&sock)
        .arg("--pid-file")
        .arg(&pid)
        .arg(&img)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    // Ready as soon as the parent is gone: no waiting.
    assert!(sock.exists() && pid.exists());
    let daemon: i32 = std::fs::read_to_string(&pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    UnixStream::connect(&sock).expect("daemon accepts connections");
    let info = run_ok(
        "qemu-img",
        &["info", &format!("nbd+unix:///?socket={}", sock.display())],
    );
    assert!(info.contains("virtual size: 2 MiB"), "{info}");
    // SAFETY: kill(2) of the daemon this test started.
    unsafe { libc::kill(daemon, libc::SIGTERM) };
    let t = Instant::now();
    while sock.exists() || pid.exists() {
        assert!(t.elapsed() < Duration::from_secs(5), "daemon did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Start-up errors reach the parent's stderr and its exit status.
    let o = Command::new(BIN)
        .args(["--fork", "-f", "raw", "-k"])
        .arg(d.path().join("g.sock"))
        .arg(d.path().join("missing.img"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing.img"));
}

fn wait_gone(srv: &mut Server, limit: Duration) -> Option<std::process::ExitStatus> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Some(st) = srv.child.try_wait().unwrap() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn term(srv: &Server) {
    // SAFETY: kill(2) of the server this test started.
    unsafe { libc::kill(srv.child.id() as i32, libc::SIGTERM) };
}

#[test]
fn sigterm_with_clients_connected_exits_promptly() {
    let d = tempfile::tempdir().unwrap();
    let img = image(d.path(), "a.img");
    let mut srv = start(d.path(), false, &["-t", "-e", "0", "-f", "raw"], &img);
    let uri = srv.uri("");
    let mut peers: Vec<Child> = Vec::new();
    for cmd in ["sleep 20000", "sleep 20000"] {
        peers.push(
            Command::new("qemu-io")
                .args(["-f", "raw", "-c", cmd, &uri])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    let busy: Vec<String> = (0..50)
        .flat_map(|_| ["-c".to_string(), "read 0 2M".to_string()])
        .collect();
    peers.push(
        Command::new("qemu-io")
            .args(["-f", "raw"])
            .args(&busy)
            .arg(&uri)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    peers.push(
        Command::new("nbdinfo")
            .arg(&uri)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // A client that never gets past the greeting.
    let _idle = UnixStream::connect(srv.sock.as_ref().unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    term(&srv);
    let st = wait_gone(&mut srv, Duration::from_secs(4)).expect("oxemu-nbd ignored SIGTERM");
    assert!(st.success(), "{st}");
    assert!(!srv.sock.as_ref().unwrap().exists());
    for mut p in peers {
        let _ = p.kill();
        let _ = p.wait();
    }
}

#[test]
fn sigterm_exits_even_when_the_socket_file_is_gone() {
    // The old server woke its accept loop with a connection to its own socket file,
    // and waited forever when the file had been removed (or replaced by another
    // server's) meanwhile.
    let d = tempfile::tempdir().unwrap();
    let img = image(d.path(), "a.img");
    let mut srv = start(d.path(), false, &["-t", "-f", "raw"], &img);
    let c = UnixStream::connect(srv.sock.as_ref().unwrap()).unwrap();
    std::fs::remove_file(srv.sock.as_ref().unwrap()).unwrap();
    term(&srv);
    let st = wait_gone(&mut srv, Duration::from_secs(4)).expect("oxemu-nbd ignored SIGTERM");
    assert!(st.success(), "{st}");
    drop(c);
}

#[test]
fn sigterm_lets_requests_in_flight_finish() {
    use std::io::{Read, Write};
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("big.img");
    std::fs::write(&img, vec![0x42u8; 32 << 20]).unwrap();
    let mut srv = start(d.path(), false, &["-t", "-f", "raw"], &img);
    let mut s = UnixStream::connect(srv.sock.as_ref().unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let neg =
        oxemu_nbd::negotiate::negotiate(&mut s, &oxemu_nbd::negotiate::NegotiateOptions::default())
            .unwrap();
    assert_eq!(neg.size, 32 << 20);
    // A 32 MiB read whose reply cannot fit in the socket buffers: the server is
    // still writing it when the signal comes.
    let req = oxemu_nbd::proto::Request {
        flags: 0,
        ty: oxemu_nbd::proto::cmd::READ,
        cookie: 77,
        offset: 0,
        len: 32 << 20,
    };
    s.write_all(&req.encode(false)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    term(&srv);
    std::thread::sleep(Duration::from_millis(300));
    let mut hdr = [0u8; 16];
    s.read_exact(&mut hdr).unwrap();
    assert_eq!(
        u32::from_be_bytes(hdr[4..8].try_into().unwrap()),
        0,
        "error reply"
    );
    assert_eq!(u64::from_be_bytes(hdr[8..16].try_into().unwrap()), 77);
    let mut data = vec![0u8; 32 << 20];
    s.read_exact(&mut data).expect("the whole reply arrives");
    assert!(data.iter().all(|&b| b == 0x42));
    let st = wait_gone(&mut srv, Duration::from_secs(4)).expect("oxemu-nbd ignored SIGTERM");
    assert!(st.success(), "{st}");
}

/// stderr with each line's program name ("qemu-nbd: ", "oxemu-nbd: ") replaced.
fn usage_text(o: &std::process::Output, prog: &str) -> String {
    String::from_utf8_lossy(&o.stderr).replace(prog, "PROG")
}

#[test]
fn usage_errors_are_getopt_longs_as_with_qemu_nbd() {
    let cases: &[&[&str]] = &[
        &["-z", "x"],
        &["--zz", "x"],
        &["--socket"],
        &["-k"],
        &["--read-only=1", "x"],
        &["-rtk"],
        // `--per` abbreviates only --persistent: the next error is the missing file.
        &["--per"],
    ];
    for a in cases {
        let ours = run(BIN, a);
        let theirs = run("qemu-nbd", a);
        assert_eq!(ours.status.code(), Some(1), "{a:?}");
        assert_eq!(theirs.status.code(), Some(1), "{a:?}");
        let (o, t) = (
            usage_text(&ours, "oxemu-nbd"),
            usage_text(&theirs, "qemu-nbd"),
        );
        assert_eq!(o, t, "{a:?}");
    }
}

/// Serves a fresh raw image with `prog --cache=MODE` under `strace -f`, writes 8
/// separate 4 KiB blocks with qemu-io over the socket, and returns how many
/// fdatasync/fsync calls the server made.
fn syncs_for_writes(prog: &str, mode: &str) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "a.img");
    let sock = dir.path().join("s.sock");
    let log = dir.path().join("strace.log");
    let mut srv = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=fdatasync,fsync", "-o"])
        .arg(&log)
        .arg(prog)
        .args(["-f", "raw", "-k"])
        .arg(&sock)
        .arg(format!("--cache={mode}"))
        .arg(&img)
        .stderr(Stdio::null())
        .spawn()
        .expect("strace (installed by scripts/install-deps)");
    wait_for(&sock);
    // The client writes back (qemu-io defaults to write-through, with FUA on each
    // write): durability must come from the server's own cache mode.
    let mut args = vec![
        "-t".to_string(),
        "writeback".to_string(),
        "-f".to_string(),
        "raw".to_string(),
    ];
    for i in 0..8 {
        args.push("-c".into());
        args.push(format!("write -P {} {} 4k", i + 1, i * 8192));
    }
    args.push(format!("nbd+unix:///?socket={}", sock.display()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ok("qemu-io", &a);
    // qemu-nbd without -t exits after its last client; give either a moment.
    let t = Instant::now();
    while srv.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = srv.kill();
    let _ = srv.wait();
    std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| l.contains("fdatasync(") || l.contains("fsync("))
        .count()
}

#[test]
fn cache_writethrough_makes_every_write_durable_as_qemu_nbd() {
    for mode in ["writethrough", "directsync"] {
        let theirs = syncs_for_writes("qemu-nbd", mode);
        let ours = syncs_for_writes(BIN, mode);
        // Each of the 8 writes is followed by a sync (FUA emulated by a flush) in both.
        assert!(theirs >= 8, "qemu-nbd --cache={mode}: {theirs} syncs");
        assert!(
            ours >= 8,
            "oxemu-nbd --cache={mode}: {ours} syncs (qemu-nbd: {theirs})"
        );
    }
    // In writeback mode only the explicit flush at the end reaches the disk.
    let ours = syncs_for_writes(BIN, "writeback");
    assert!(ours < 8, "oxemu-nbd --cache=writeback: {ours} syncs");
}
