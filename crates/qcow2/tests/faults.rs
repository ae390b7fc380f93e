//! Fault injection at every step: a qcow2 workload (allocating writes with
//! copy-on-write from a backing file, runs of new clusters, new L2 tables and
//! refcount blocks, discards, zero writes, in-place writes, writeback) runs over a
//! `blkdebug` node whose rules fail the Nth write to the file, or the first flush
//! after it, with EIO or ENOSPC, for every N the workload reaches; then the guest
//! either flushes and closes, or everything stops there. After each run the
//! real `qemu-img check` must find no corruption (leaked clusters are allowed) and
//! every sector must read as data acknowledged by the last successful flush, or as
//! something written after it.

mod common;

use std::path::Path;
use std::sync::Arc;

use oxemu_block::blkdebug::{Blkdebug, DebugEvent, InjectError, IoType, Rules, SetState};
use oxemu_block::{BlockDriver, BlockDriverExt, EventLoop, FileDriver, FileOptions, ZeroFlags};
use oxemu_qcow2::{open_image, ImageOptions, Qcow2, Qcow2OpenOptions};

const SIZE: u64 = 2 << 20;
const SECTORS: usize = (SIZE / 512) as usize;
const BACKING: u8 = 0x22;

/// What each guest sector may read as.
struct Model {
    /// Contents that may be there (the durable one and anything written since).
    possible: Vec<Vec<u8>>,
    /// The content last written, if the write succeeded (None: a failed write may or
    /// may not have landed, so the flush cannot tell).
    current: Vec<Option<u8>>,
}

impl Model {
    fn new() -> Self {
        Model {
            possible: vec![vec![BACKING]; SECTORS],
            current: vec![Some(BACKING); SECTORS],
        }
    }

    fn before_write(&mut self, off: u64, len: u64, v: u8) {
        for s in off / 512..(off + len) / 512 {
            let s = s as usize;
            if !self.possible[s].contains(&v) {
                self.possible[s].push(v);
            }
        }
    }

    fn after_write(&mut self, off: u64, len: u64, v: u8, ok: bool) {
        for s in off / 512..(off + len) / 512 {
            self.current[s as usize] = ok.then_some(v);
        }
    }

    fn flushed(&mut self) {
        for (p, c) in self.possible.iter_mut().zip(&self.current) {
            if let Some(v) = c {
                *p = vec![*v];
            }
        }
    }
}

enum Step {
    Write(u64, u64, u8),
    Zero(u64, u64),
    Discard(u64, u64),
    Flush,
}

/// The workload, with 512-byte clusters so that L2 tables (32 KiB of guest data)
/// and refcount blocks (128 KiB of file) are allocated often.
fn workload() -> Vec<Step> {
    use Step::*;
    vec![
        Write(3 * 512, 1024, 0x31), // partial cluster: COW head/tail? (whole sectors)
        Write(40 << 10, 16 << 10, 0x32), // a run of new clusters in a new L2 table
        Flush,
        Write((300 << 10) + 512, 512, 0x33), // far away: new L2 table, more refcounts
        Write(1 << 20, 200 << 10, 0x34),     // a long run: new refcount blocks
        Flush,
        Write((40 << 10) + 512, 1024, 0x35), // in place
        Discard(1 << 20, 64 << 10),          // frees clusters
        Zero(40 << 10, 4096),                // zero clusters
        Write((1 << 20) + 4096, 8192, 0x36), // reallocation after the discard
        Flush,
        Write(0, 512, 0x37),
        Flush,
    ]
}

async fn run(dir: &Path, img: &Path, rules: Rules, m: &mut Model, recover: bool) -> bool {
    let o = ImageOptions {
        file: FileOptions {
            read_only: true,
            ..FileOptions::new(dir.join("base.raw"))
        },
        ..Default::default()
    };
    let backing = open_image(&dir.join("base.raw"), Some("raw"), &o)
        .await
        .unwrap();
    let file: Arc<dyn BlockDriver> = Arc::new(FileDriver::open(&FileOptions::new(img)).unwrap());
    let dbg = Arc::new(Blkdebug::new(file, rules));
    let q = Qcow2::open(
        dbg,
        Qcow2OpenOptions {
            backing: Some(backing),
            ..Default::default()
        },
    )
    .await;
    // A read-write open writes the header: it may be the write that fails.
    let Ok(q) = q else { return false };
    let mut all_ok = true;
    for step in workload() {
        let ok = match step {
            Step::Write(off, len, v) => {
                m.before_write(off, len, v);
                let ok = q.write_at(off, &vec![v; len as usize]).await.is_ok();
                m.after_write(off, len, v, ok);
                ok
            }
            Step::Zero(off, len) => {
                m.before_write(off, len, 0);
                let ok = q.write_zeroes(off, len, ZeroFlags::default()).await.is_ok();
                m.after_write(off, len, 0, ok);
                ok
            }
            Step::Discard(off, len) => {
                // Whole clusters read as zeroes afterwards (v3 with a backing file).
                m.before_write(off, len, 0);
                let ok = q.discard(off, len).await.is_ok();
                m.after_write(off, len, 0, ok);
                ok
            }
            Step::Flush => {
                let ok = q.flush().await.is_ok();
                if ok {
                    m.flushed();
                }
                ok
            }
        };
        if !ok {
            all_ok = false;
            break;
        }
    }
    // A guest that saw the error may still flush and shut down cleanly; or the
    // host dies right there, leaving the file as the error left it.
    if recover || all_ok {
        if q.flush().await.is_ok() {
            m.flushed();
        }
        let _ = q.close().await;
    }
    all_ok
}

/// Fails the `n`th write (`flush`: the first flush after it) with `errno`.
fn rules(n: u32, errno: i32, flush: bool) -> Rules {
    let mut r = Rules::default();
    for k in 1..=n {
        r.set_state.push(SetState {
            event: DebugEvent::PwritevDone,
            state: k,
            new_state: k + 1,
        });
    }
    let mut i = if flush {
        let mut i = InjectError::new(DebugEvent::PwritevDone);
        i.iotype_mask = 1 << IoType::Flush as u32;
        i
    } else {
        InjectError::new(DebugEvent::Pwritev)
    };
    i.state = n;
    i.errno = errno;
    i.once = true;
    i.immediately = true;
    r.inject.push(i);
    r
}

fn verify(img: &Path, dir: &Path, m: &Model, what: &str) {
    let out = std::process::Command::new("qemu-img")
        .args(["check", "--output=json"])
        .arg(img)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "{what}: qemu-img check: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let field = |k: &str| v.get(k).and_then(|c| c.as_u64()).unwrap_or(0);
    assert_eq!(field("corruptions"), 0, "{what}: {v}");
    assert_eq!(field("check-errors"), 0, "{what}: {v}");
    let data = common::qemu_raw(img, dir);
    for (s, chunk) in data.chunks(512).enumerate() {
        let ok = m.possible[s].iter().any(|&p| chunk.iter().all(|&b| b == p));
        assert!(
            ok,
            "{what}: sector {s} (offset {:#x}) reads {:#x}.. but may only be one of {:x?}",
            s * 512,
            chunk[0],
            m.possible[s]
        );
    }
}

#[test]
fn every_write_and_flush_failure_leaves_a_consistent_image() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    std::fs::write(dir.join("base.raw"), vec![BACKING; SIZE as usize]).unwrap();
    let tmpl = dir.join("tmpl.qcow2");
    common::run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=512",
            "-F",
            "raw",
            "-b",
            "base.raw",
            tmpl.to_str().unwrap(),
        ],
    );
    let lp = EventLoop::with_defaults().unwrap();
    let img = dir.join("img.qcow2");
    // The fault-free run: a baseline, and it must pass the same checks.
    std::fs::copy(&tmpl, &img).unwrap();
    let mut m = Model::new();
    assert!(lp.block_on(run(dir, &img, Rules::default(), &mut m, true)));
    verify(&img, dir, &m, "no fault");
    let mut states = 0;
    for (errno, flush, recover) in [
        (libc::EIO, false, false),
        (libc::ENOSPC, false, true),
        (libc::ENOSPC, true, false),
        (libc::EIO, true, true),
    ] {
        let mut n = 1;
        loop {
            std::fs::copy(&tmpl, &img).unwrap();
            let mut m = Model::new();
            let done = lp.block_on(run(dir, &img, rules(n, errno, flush), &mut m, recover));
            let what = format!(
                "errno {errno} on {} {n}{}",
                if flush { "flush after write" } else { "write" },
                if recover {
                    ", then flush and close"
                } else {
                    ", then stop"
                }
            );
            verify(&img, dir, &m, &what);
            states += 1;
            if done {
                break; // the workload no longer reaches write n
            }
            n += 1;
            assert!(n < 2000, "the workload never ends");
        }
        eprintln!("errno {errno} flush={flush} recover={recover}: {n} runs");
    }
    eprintln!("{states} faulted runs checked");
    assert!(states > 30, "only {states} runs: the rules did not fire");
}

#[test]
fn a_failed_flush_is_never_followed_by_metadata() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("l.qcow2");
    common::run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "4M"],
    );
    let lp = EventLoop::with_defaults().unwrap();
    lp.block_on(async {
        // The first flush after the first guest flush event fails, once.
        let mut rule = InjectError::new(DebugEvent::FlushToDisk);
        rule.iotype_mask = 1 << IoType::Flush as u32;
        rule.errno = libc::ENOSPC;
        rule.once = true;
        let file: Arc<dyn BlockDriver> =
            Arc::new(FileDriver::open(&FileOptions::new(&img)).unwrap());
        let dbg = Arc::new(Blkdebug::new(
            file,
            Rules {
                inject: vec![rule],
                set_state: vec![],
            },
        ));
        let q = Qcow2::open(dbg, Qcow2OpenOptions::default()).await.unwrap();
        q.write_at(0, &[7; 4096]).await.unwrap();
        let e = q.flush().await.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        // blkdebug would let the next flush through; the node must not.
        q.write_at(1 << 20, &[8; 4096]).await.unwrap();
        for _ in 0..3 {
            let e = q.flush().await.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        }
        assert!(q.close().await.is_err());
    });
    // No L2 entry reached the disk: QEMU sees an empty, consistent image.
    common::qemu_check_clean(&img);
    let map = common::run("qemu-img", &["map", "--output=json", img.to_str().unwrap()]);
    assert!(!map.contains("\"data\": true"), "{map}");
}
