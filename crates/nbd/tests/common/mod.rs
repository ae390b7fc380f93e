//! Helpers shared by the integration tests: run `oxemu-nbd` on a temp image and run
//! real NBD clients against it, each under a timeout.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_oxemu-nbd");

/// A running `oxemu-nbd`, killed on drop.
pub struct Server {
    pub child: Child,
    pub sock: Option<PathBuf>,
    pub port: Option<u16>,
}

impl Server {
    /// `nbd+unix:///NAME?socket=...` or `nbd://127.0.0.1:PORT/NAME`.
    pub fn uri(&self, name: &str) -> String {
        match (&self.sock, self.port) {
            (Some(s), _) => format!("nbd+unix:///{name}?socket={}", s.display()),
            (None, Some(p)) => format!("nbd://127.0.0.1:{p}/{name}"),
            _ => unreachable!(),
        }
    }

    pub fn connect(&self) -> UnixStream {
        let s = UnixStream::connect(self.sock.as_ref().expect("unix server")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// Waits (up to 10 s) for the server to exit by itself.
    pub fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `oxemu-nbd ARGS IMAGE` listening on a unix socket in `dir` (`tcp` false)
/// or on 127.0.0.1 with a free port, and waits until it accepts connections.
pub fn start(dir: &Path, tcp: bool, args: &[&str], image: &Path) -> Server {
    let mut cmd = Command::new(BIN);
    let (sock, port) = if tcp {
        let p = free_port();
        cmd.args(["-b", "127.0.0.1", "-p", &p.to_string()]);
        (None, Some(p))
    } else {
        let s = dir.join(format!("nbd-{}.sock", rand::random::<u32>()));
        cmd.arg("-k").arg(&s);
        (Some(s), None)
    };
    cmd.args(args).arg(image).stdin(Stdio::null());
    let child = cmd.spawn().expect("spawn oxemu-nbd");
    let mut srv = Server { child, sock, port };
    let t = Instant::now();
    loop {
        let ready = match (&srv.sock, srv.port) {
            (Some(s), _) => s.exists(),
            (None, Some(p)) => std::net::TcpStream::connect(("127.0.0.1", p)).is_ok(),
            _ => false,
        };
        // A probe connection counts as a client; only probe TCP servers that are
        // persistent or shared (tests pass -t for TCP).
        if ready {
            break;
        }
        if let Some(st) = srv.child.try_wait().unwrap() {
            panic!("oxemu-nbd exited during start-up: {st}");
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "oxemu-nbd did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    srv
}

/// Runs a peer tool under `timeout 60`; returns its output.
pub fn run(prog: &str, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("60")
        .arg(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"))
}

/// Like [`run`], and asserts success.
pub fn run_ok(prog: &str, args: &[&str]) -> String {
    let o = run(prog, args);
    assert!(
        o.status.success(),
        "{prog} {args:?} failed: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A 4 MiB image: 1 MiB of pseudo-random data, then zeroes (a hole).
pub fn make_image(dir: &Path) -> PathBuf {
    let p = dir.join("disk.raw");
    let mut data: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    data[0] = 0xEB;
    std::fs::write(&p, &data).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(4 << 20).unwrap();
    p
}

pub fn read_n(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).unwrap();
    b
}

pub fn send(s: &mut UnixStream, b: &[u8]) {
    s.write_all(b).unwrap();
}

/// True when the server closed the stream (read returns 0 or an error).
pub fn closed(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}
