//! `--blockdev driver=blklogwrites` side by side with qemu-storage-daemon 7.2: the
//! same qemu-io requests through an NBD export of the filter leave byte-identical
//! logs and images, also with log-sector-size=4096, log-super-update-interval and
//! log-append; bad options give the same errors.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_oxemu-storage-daemon");

/// A daemon process, killed if the test fails before stopping it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The blockdev arguments for image `img` logged to `log`, with `extra` filter
/// options, exported over NBD at `sock`.
fn args(img: &Path, log: &Path, extra: &str, sock: &Path) -> Vec<String> {
    vec![
        "--blockdev".into(),
        format!("driver=file,node-name=img,filename={}", img.display()),
        "--blockdev".into(),
        format!("driver=file,node-name=lg,filename={}", log.display()),
        "--blockdev".into(),
        format!("driver=blklogwrites,node-name=lw,file=img,log=lg{extra}"),
        "--nbd-server".into(),
        format!("addr.type=unix,addr.path={}", sock.display()),
        "--export".into(),
        "type=nbd,id=e0,node-name=lw,name=lw,writable=on".into(),
    ]
}

/// Starts `daemon` with the filter exported over NBD at `dir/nbd.sock`; returns it
/// once the socket is there.
fn start(daemon: &str, dir: &Path, img: &Path, log: &Path, extra: &str) -> (Running, PathBuf) {
    let sock = dir.join("nbd.sock");
    let _ = std::fs::remove_file(&sock);
    let mut d = Running(
        Command::new(daemon)
            .args(args(img, log, extra, &sock))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{daemon}: {e}")),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        if let Some(st) = d.0.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(d.0.stderr.as_mut().unwrap(), &mut err).ok();
            panic!("{daemon} exited early ({st}): {err}");
        }
        assert!(Instant::now() < deadline, "{daemon}: no NBD socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    (d, sock)
}

/// Runs `daemon`, sends `cmds` through qemu-io over NBD, stops the daemon with
/// SIGTERM.
fn session(daemon: &str, dir: &Path, img: &Path, log: &Path, extra: &str, cmds: &[&str]) {
    let (mut d, sock) = start(daemon, dir, img, log, extra);
    let mut c = Command::new("qemu-io");
    c.args(["-t", "writeback", "-f", "raw"])
        .arg(format!("nbd+unix:///lw?socket={}", sock.display()));
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "qemu-io against {daemon}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // SAFETY: kill(2) on the pid of our own child, not yet reaped.
    unsafe { libc::kill(d.0.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = d.0.try_wait().unwrap() {
            assert!(st.success(), "{daemon} exit status {st}");
            break;
        }
        assert!(Instant::now() < deadline, "{daemon} ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        let f = Files {
            dir: tempfile::tempdir().unwrap(),
        };
        for who in ["q", "o"] {
            std::fs::write(f.path(who, "img"), vec![0u8; 1 << 20]).unwrap();
            std::fs::write(f.path(who, "log"), b"").unwrap();
        }
        f
    }
    fn path(&self, who: &str, what: &str) -> PathBuf {
        self.dir.path().join(format!("{who}.{what}"))
    }
    /// One session on each daemon, then the logs and images must be identical.
    fn both(&self, extra: &str, cmds: &[&str]) -> Vec<u8> {
        for (who, daemon) in [("q", "qemu-storage-daemon"), ("o", BIN)] {
            session(
                daemon,
                self.dir.path(),
                &self.path(who, "img"),
                &self.path(who, "log"),
                extra,
                cmds,
            );
        }
        let q = std::fs::read(self.path("q", "log")).unwrap();
        let o = std::fs::read(self.path("o", "log")).unwrap();
        if q != o {
            let at = q.iter().zip(&o).position(|(a, b)| a != b);
            panic!(
                "logs differ ({extra}): qemu {} bytes, oxemu {} bytes, first difference at {at:?}",
                q.len(),
                o.len()
            );
        }
        assert!(
            std::fs::read(self.path("q", "img")).unwrap()
                == std::fs::read(self.path("o", "img")).unwrap(),
            "images differ"
        );
        q
    }
}

const CMDS: &[&str] = &[
    "write -P 0x11 0 65536",
    "write -f -P 0x22 8192 4096",
    "flush",
    "write -z 65536 8192",
    "discard 131072 16384",
    "write -P 0x33 4096 1024",
    "flush",
    "write -P 0x44 200704 512",
];

#[test]
fn same_log_as_qemu_storage_daemon() {
    let f = Files::new();
    let log = f.both("", CMDS);
    let parsed = oxemu_block::blklogwrites::parse_log(log).unwrap();
    assert!(
        parsed.entries.len() >= 8,
        "{} entries",
        parsed.entries.len()
    );
    // Without discard=unmap on the node, QEMU's block layer drops discards.
    assert!(!parsed.entries.iter().any(|e| e.is_discard()));

    let f = Files::new();
    let log = f.both(
        ",log-sector-size=4096,log-super-update-interval=2,discard=unmap",
        CMDS,
    );
    let parsed = oxemu_block::blklogwrites::parse_log(log).unwrap();
    assert_eq!(parsed.sector_size(), 4096);
    assert!(parsed.entries.iter().any(|e| e.is_discard()));
    // And appending to those logs.
    f.both(",log-append=on", &CMDS[..3]);
}

#[test]
fn same_option_errors_as_qemu_storage_daemon() {
    let f = Files::new();
    for extra in [
        ",log-sector-size=1000",
        ",log-sector-size=16",
        ",log-super-update-interval=0",
        ",log-append=on,log-sector-size=512",
    ] {
        let sock = f.dir.path().join("never.sock");
        let run = |daemon: &str| {
            let out = Command::new(daemon)
                .args(args(&f.path("q", "img"), &f.path("q", "log"), extra, &sock))
                .output()
                .unwrap();
            assert!(!out.status.success(), "{daemon} accepted {extra}");
            let e = String::from_utf8_lossy(&out.stderr).into_owned();
            // The program name differs; the rest must not.
            e.split_once(": ").map(|x| x.1.to_string()).unwrap_or(e)
        };
        assert_eq!(run(BIN), run("qemu-storage-daemon"), "{extra}");
    }
}

/// `query-named-block-nodes` of a daemon started with `args`: the entry of node
/// `lw`, through a QMP socket.
fn lw_node(daemon: &str, dir: &Path, extra: &str) -> serde_json::Value {
    use std::io::{BufRead, BufReader, Write};
    let (img, log) = (dir.join("q.img"), dir.join("q.log"));
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    std::fs::write(&log, b"").unwrap();
    let qmp = dir.join("qmp.sock");
    let _ = std::fs::remove_file(&qmp);
    let _ = std::fs::remove_file(dir.join("n.sock"));
    let mut a = args(&img, &log, extra, &dir.join("n.sock"));
    a.extend([
        "--chardev".into(),
        format!("socket,id=m0,path={},server=on,wait=off", qmp.display()),
        "--monitor".into(),
        "chardev=m0".into(),
    ]);
    let _d = Running(Command::new(daemon).args(&a).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        if let Ok(s) = std::os::unix::net::UnixStream::connect(&qmp) {
            break s;
        }
        assert!(Instant::now() < deadline, "{daemon}: no QMP socket");
        std::thread::sleep(Duration::from_millis(20));
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut greeting = String::new();
    r.read_line(&mut greeting).unwrap();
    let mut call = |cmd: &str| -> serde_json::Value {
        writeln!(w, "{{\"execute\": \"{cmd}\"}}").unwrap();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v.get("return").is_some() || v.get("error").is_some() {
                return v;
            }
        }
    };
    call("qmp_capabilities");
    let nodes = call("query-named-block-nodes");
    call("quit");
    nodes["return"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"] == "lw")
        .cloned()
        .unwrap()
}

#[test]
fn query_named_block_nodes_shows_qemus_json_name() {
    let dir = tempfile::tempdir().unwrap();
    for extra in ["", ",log-sector-size=4096", ",log-append=on"] {
        let q = lw_node("qemu-storage-daemon", dir.path(), extra);
        let o = lw_node(BIN, dir.path(), extra);
        for k in ["/drv", "/file", "/image/filename", "/image/format", "/ro"] {
            assert_eq!(q.pointer(k), o.pointer(k), "{k} ({extra})");
        }
        assert!(
            o["file"].as_str().unwrap().starts_with("json:{\"log\": "),
            "{o}"
        );
    }
}

#[test]
fn image_locks_like_qemu_storage_daemon() {
    // With a writable export, the log is locked against writers (a metadata child)
    // and the image shares writing, as QEMU's permissions say.
    let f = Files::new();
    let mut seen = Vec::new();
    for (who, daemon) in [("q", "qemu-storage-daemon"), ("o", BIN)] {
        let (_d, _) = start(
            daemon,
            f.dir.path(),
            &f.path(who, "img"),
            &f.path(who, "log"),
            "",
        );
        let mut lines = Vec::new();
        for what in ["log", "img"] {
            for ro in [false, true] {
                let mut c = Command::new("qemu-io");
                if ro {
                    c.arg("-r");
                }
                let out = c
                    .args([
                        "-f",
                        "raw",
                        "-c",
                        if ro { "read 0 512" } else { "write 0 512" },
                    ])
                    .arg(f.path(who, what))
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr);
                let first = text
                    .lines()
                    .next()
                    .unwrap_or("")
                    .replace(&format!("{who}."), "");
                lines.push(format!("{what} ro={ro}: {first}"));
            }
        }
        seen.push(lines);
    }
    assert_eq!(seen[0], seen[1]);
    assert!(
        seen[1][0].contains("Failed to get \"write\" lock"),
        "{:?}",
        seen[1]
    );
}
