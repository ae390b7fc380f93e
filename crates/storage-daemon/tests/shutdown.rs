//! Shutdown under load: the real daemon with NBD and vhost-user-blk exports and QMP
//! monitors in one socket directory, several NBD clients (reading, not reading their
//! replies, disconnecting mid-request), a QMP client that does not read; SIGTERM,
//! then the directory is removed at once. Every run must exit cleanly (status 0, not
//! through the shutdown watchdog) within 10 s.
//!
//! `SHUTDOWN_STRESS_ITERATIONS` sets the number of runs (default 20; the long run in
//! scripts/shutdown-stress uses 100).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oxemu_nbd::proto::{cmd, Request};

const BIN: &str = env!("CARGO_BIN_EXE_oxemu-storage-daemon");

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(p: &Path, d: &mut Daemon) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !p.exists() {
        if let Some(st) = d.0.try_wait().unwrap() {
            panic!("daemon exited early: {st}");
        }
        assert!(Instant::now() < deadline, "{} did not appear", p.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Old-style NBD handshake (NBD_OPT_EXPORT_NAME) into transmission.
fn nbd_connect(sock: &Path) -> Option<UnixStream> {
    let mut s = UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let mut g = [0u8; 18];
    s.read_exact(&mut g).ok()?;
    s.write_all(&3u32.to_be_bytes()).ok()?; // fixed newstyle, no zeroes
    let mut opt = Vec::new();
    opt.extend_from_slice(&0x49484156454F5054u64.to_be_bytes());
    opt.extend_from_slice(&1u32.to_be_bytes()); // NBD_OPT_EXPORT_NAME
    opt.extend_from_slice(&4u32.to_be_bytes());
    opt.extend_from_slice(b"disk");
    s.write_all(&opt).ok()?;
    let mut r = [0u8; 10];
    s.read_exact(&mut r).ok()?;
    Some(s)
}

fn req(ty: u16, cookie: u64, offset: u64, len: u64) -> Vec<u8> {
    Request {
        flags: 0,
        ty,
        cookie,
        offset,
        len,
    }
    .encode(false)
}

/// A client that reads 64 KiB at depth 8 until the connection ends.
fn reader(sock: &Path, stop: Arc<AtomicBool>) {
    let Some(mut s) = nbd_connect(sock) else {
        return;
    };
    let mut buf = vec![0u8; 16 + (64 << 10)];
    let mut cookie = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..8 {
            cookie += 1;
            let off = (cookie * 65536) % (32 << 20);
            if s.write_all(&req(cmd::READ, cookie, off, 65536)).is_err() {
                return;
            }
        }
        for _ in 0..8 {
            if s.read_exact(&mut buf).is_err() {
                return;
            }
        }
    }
}

/// A client that sends reads and never reads the replies.
fn deaf(sock: &Path) -> Option<UnixStream> {
    let mut s = nbd_connect(sock)?;
    s.set_nonblocking(true).ok()?;
    for c in 0..256u64 {
        if s.write_all(&req(cmd::READ, c, 0, 1 << 20)).is_err() {
            break;
        }
    }
    Some(s)
}

/// A client that disconnects with half a write request sent.
fn half_write(sock: &Path) {
    if let Some(mut s) = nbd_connect(sock) {
        let _ = s.write_all(&req(cmd::WRITE, 1, 0, 1 << 20));
        let _ = s.write_all(&[0u8; 4096]);
    }
}

/// A QMP client that negotiates, then sends commands but never reads.
fn deaf_qmp(sock: &Path) -> Option<UnixStream> {
    let mut s = UnixStream::connect(sock).ok()?;
    s.write_all(b"{\"execute\":\"qmp_capabilities\"}\n").ok()?;
    s.set_nonblocking(true).ok()?;
    for _ in 0..200 {
        if s.write_all(b"{\"execute\":\"query-qmp-schema\"}\n")
            .is_err()
        {
            break;
        }
    }
    Some(s)
}

/// One run; returns the time from SIGTERM to exit.
fn one_run(base: &Path, img: &Path, i: usize) -> Duration {
    let dir = base.join(format!("run{i}"));
    std::fs::create_dir(&dir).unwrap();
    let nbd = dir.join("nbd.sock");
    let qmp = dir.join("qmp.sock");
    let vu = dir.join("vu.sock");
    let child = Command::new(BIN)
        .args([
            "--blockdev".into(),
            format!(
                "driver=file,node-name=f0,filename={},aio=io_uring",
                img.display()
            ),
            "--nbd-server".into(),
            format!("addr.type=unix,addr.path={}", nbd.display()),
            "--export".into(),
            "type=nbd,id=e0,node-name=f0,name=disk,writable=on".into(),
            "--export".into(),
            format!(
                "type=vhost-user-blk,id=v0,node-name=f0,addr.type=unix,addr.path={}",
                vu.display()
            ),
            "--chardev".into(),
            format!("socket,id=m0,path={},server=on,wait=off", qmp.display()),
            "--monitor".into(),
            "chardev=m0".into(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start daemon");
    let mut d = Daemon(child);
    for p in [&nbd, &qmp, &vu] {
        wait_for(p, &mut d);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for _ in 0..3 {
        let (s, st) = (nbd.clone(), stop.clone());
        threads.push(std::thread::spawn(move || reader(&s, st)));
    }
    let _deaf: Vec<_> = (0..2).filter_map(|_| deaf(&nbd)).collect();
    half_write(&nbd);
    let _q = deaf_qmp(&qmp);
    // A client idle in the handshake.
    let _idle = UnixStream::connect(&nbd).ok();
    std::thread::sleep(Duration::from_millis(150));
    let t0 = Instant::now();
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(d.0.id() as i32, libc::SIGTERM) };
    std::fs::remove_dir_all(&dir).unwrap();
    let took = loop {
        if let Some(st) = d.0.try_wait().unwrap() {
            // Status 1 would be the shutdown watchdog (or a second signal) cutting a
            // hung shutdown short: not a clean exit.
            assert!(st.success(), "run {i}: shutdown was not clean: {st}");
            break t0.elapsed();
        }
        if t0.elapsed() > Duration::from_secs(10) {
            stop.store(true, Ordering::Relaxed);
            panic!("run {i}: the daemon did not exit within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    took
}

#[test]
fn sigterm_under_load_with_the_socket_directory_removed_always_exits() {
    let n: usize = std::env::var("SHUTDOWN_STRESS_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let base = tempfile::tempdir().unwrap();
    let img = base.path().join("disk.raw");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(64 << 20).unwrap();
    let mut times = Vec::new();
    for i in 0..n {
        times.push(one_run(base.path(), &img, i));
    }
    times.sort();
    let sum: Duration = times.iter().sum();
    println!(
        "shutdown: {n} runs, min {:?}, median {:?}, max {:?}, mean {:?}",
        times[0],
        times[n / 2],
        times[n - 1],
        sum / n as u32
    );
}
