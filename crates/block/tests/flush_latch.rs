//! A failed `fdatasync` is latched by the `file` driver, as QEMU's file-posix does,
//! shown on a real write-back failure and side by side with qemu-io 7.2.
//!
//! The failure is real: an ext2 file system on a loop device whose backing file lives
//! on a 4 MiB tmpfs. Writing 8 MiB into the page cache succeeds; writeback then runs
//! out of space below the file system, `fdatasync` fails, and the kernel marks the
//! pages clean anyway: a later `fdatasync` succeeds although the data is gone (the
//! "fsyncgate" behaviour). The test needs root (mount, losetup), as the test command
//! has; it fails, never skips, without it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use oxemu_block::{BlockDriver, BlockDriverExt, EventLoop, FileDriver, FileOptions};

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed (this test needs root for mount and losetup): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A file system whose writeback fails: ext2 on a loop device over a sparse 64 MiB
/// file on a 4 MiB tmpfs.
struct FailingFs {
    dir: tempfile::TempDir,
    dev: String,
}

impl FailingFs {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&small).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        sh(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                "size=4M",
                "tmpfs",
                small.to_str().unwrap(),
            ],
        );
        let backing = small.join("backing");
        std::fs::File::create(&backing)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        sh("mkfs.ext2", &["-q", "-F", backing.to_str().unwrap()]);
        let dev = sh("losetup", &["-f", "--show", backing.to_str().unwrap()]);
        let fs = FailingFs { dir, dev };
        sh(
            "mount",
            &["-o", "errors=continue", &fs.dev, mnt.to_str().unwrap()],
        );
        fs
    }

    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    fn image(&self) -> PathBuf {
        let p = self.mnt().join("img");
        std::fs::File::create(&p)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        p
    }
}

impl Drop for FailingFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mnt()).status();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        let _ = Command::new("umount")
            .arg(self.dir.path().join("small"))
            .status();
    }
}

fn fdatasync_path(p: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new().write(true).open(p)?.sync_data()
}

#[test]
fn a_failed_flush_fails_every_later_flush_as_qemu() {
    // oxemu.
    let fs = FailingFs::new();
    let img = fs.image();
    let f = Arc::new(FileDriver::open(&FileOptions::new(&img)).unwrap());
    let data: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let errs: Vec<Option<i32>> = EventLoop::with_defaults().unwrap().block_on(async {
        f.write_at(0, &data).await.unwrap();
        let mut errs = Vec::new();
        for _ in 0..3 {
            errs.push(f.flush().await.err().map(|e| e.raw_os_error().unwrap()));
        }
        errs
    });
    let first = errs[0].expect("the first flush must fail: writeback has no space");
    assert!(first == libc::ENOSPC || first == libc::EIO, "{errs:?}");
    assert_eq!(f.flush_latched(), Some(first));
    // The kernel has forgotten the lost pages by now: a new descriptor's fdatasync
    // succeeds (a second try may be needed to clear the error it still reports).
    let _ = fdatasync_path(&img);
    fdatasync_path(&img).expect("the kernel reports the failure only so often");
    // ... and yet oxemu keeps failing, with the first errno.
    assert_eq!(errs, [Some(first); 3]);
    EventLoop::with_defaults().unwrap().block_on(async {
        assert_eq!(f.flush().await.unwrap_err().raw_os_error(), Some(first));
    });
    drop(f);
    drop(fs);

    // qemu-io 7.2 on the same setup: one fdatasync fails, the later flushes fail
    // without calling it again.
    let fs = FailingFs::new();
    let img = fs.image();
    let out = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-e",
            "trace=fdatasync,fsync",
            "qemu-io",
            "-f",
            "raw",
            "-t",
            "writeback",
        ])
        .args([
            "-c",
            "write -P 0x55 0 8M",
            "-c",
            "flush",
            "-c",
            "flush",
            "-c",
            "flush",
        ])
        .arg(&img)
        .output()
        .expect("strace and qemu-io are installed by the test command");
    let trace = String::from_utf8_lossy(&out.stderr);
    let syncs: Vec<&str> = trace.lines().filter(|l| l.contains("fdatasync(")).collect();
    assert_eq!(
        syncs.len(),
        1,
        "qemu-io latches the failed flush too:\n{trace}"
    );
    assert!(syncs[0].contains("= -1 E"), "{trace}");
}
