//! Shared helpers of the storage-daemon tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running daemon (ours or QEMU's), killed when dropped.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `prog` with `args` and waits (at most 10 s) for `sock` to appear; panics
/// with the program's stderr when it exits first.
pub fn start_until(prog: &str, args: &[String], sock: &Path) -> Daemon {
    let child = Command::new(prog)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{prog}: {e} (scripts/install-deps installs QEMU 7.2)"));
    let mut d = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        if let Some(st) = d.0.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(d.0.stderr.as_mut().unwrap(), &mut err).ok();
            panic!("{prog} exited early ({st}): {err}");
        }
        assert!(
            Instant::now() < deadline,
            "{prog}: {} did not appear",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    d
}
