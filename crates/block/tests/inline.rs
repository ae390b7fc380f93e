//! The io_uring engine's inline path for files in memory (tmpfs): it must not starve
//! the loop, must leave big requests and fallocate to the ring, and `no_inline` must
//! turn it off.

use std::cell::Cell;
use std::io::Write;
use std::rc::Rc;
use std::time::{Duration, Instant};

use oxemu_aio::{sleep, spawn_local};
use oxemu_block::file::{Discard, FileDriver, FileOptions};
use oxemu_block::{Aio, BlockDriver, BlockDriverExt, EventLoop, ZeroFlags};

fn shm() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm").expect("these tests need tmpfs at /dev/shm")
}

fn image(dir: &tempfile::TempDir, size: usize) -> std::path::PathBuf {
    let path = dir.path().join("img");
    let data: Vec<u8> = (0..size).map(|i| (i / 4096) as u8).collect();
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&data)
        .unwrap();
    path
}

fn open(path: &std::path::Path, no_inline: bool) -> Rc<FileDriver> {
    Rc::new(
        FileDriver::open(&FileOptions {
            aio: Aio::IoUring,
            no_inline,
            discard: Discard::Unmap,
            ..FileOptions::new(path)
        })
        .unwrap(),
    )
}

/// A task that reads 4 KiB blocks inline as fast as it can must not hold back a task
/// that sleeps on a ring timer: the loop enters the ring between inline batches.
#[test]
fn inline_flood_does_not_starve_timers() {
    let dir = shm();
    let path = image(&dir, 1 << 20);
    let lp = EventLoop::with_defaults().unwrap();
    let drv = open(&path, false);
    let done = Rc::new(Cell::new(false));
    let (worst, reads) = lp.block_on(async {
        let (d, stop) = (drv.clone(), done.clone());
        let flood = spawn_local(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0u64;
            let start = Instant::now();
            // Bounded so that a starving loop ends the test (with a failure) instead
            // of hanging it.
            while !stop.get() && start.elapsed() < Duration::from_secs(3) {
                d.read_at((n % 256) * 4096, &mut buf).await.unwrap();
                n += 1;
            }
            n
        });
        let mut worst = Duration::ZERO;
        for _ in 0..50 {
            let t = Instant::now();
            sleep(Duration::from_millis(1)).await;
            worst = worst.max(t.elapsed());
        }
        done.set(true);
        (worst, flood.await)
    });
    assert!(reads > 100, "the flooding task barely ran: {reads} reads");
    assert!(
        worst < Duration::from_millis(200),
        "a 1 ms timer waited {worst:?} behind {reads} inline reads"
    );
    assert!(lp.ring_enters() >= 50, "{} enters", lp.ring_enters());
}

/// Small requests run inline; a 512 KiB read (above the 256 KiB bound, below the
/// 1 MiB batch that makes the loop enter its ring anyway) and a write-zeroes
/// (fallocate) go through the ring.
#[test]
fn big_requests_and_fallocate_use_the_ring() {
    let dir = shm();
    let path = image(&dir, 4 << 20);
    let drv = open(&path, false);

    let lp = EventLoop::with_defaults().unwrap();
    lp.block_on(async {
        let mut buf = vec![0u8; 4096];
        for i in 0..16 {
            drv.read_at(i * 4096, &mut buf).await.unwrap();
            assert!(buf.iter().all(|&b| b == i as u8));
        }
    });
    assert_eq!(
        lp.ring_enters(),
        0,
        "4 KiB reads on tmpfs went through the ring"
    );

    let lp = EventLoop::with_defaults().unwrap();
    lp.block_on(async {
        let mut buf = vec![0u8; 512 << 10];
        drv.read_at(1 << 20, &mut buf).await.unwrap();
        for (i, c) in buf.chunks(4096).enumerate() {
            assert!(c.iter().all(|&b| b == (256 + i) as u8));
        }
    });
    assert!(lp.ring_enters() > 0, "a 512 KiB read ran inline");

    // A hole punch (discard=unmap) is one fallocate, which tmpfs supports.
    let lp = EventLoop::with_defaults().unwrap();
    lp.block_on(async {
        drv.discard(0, 1 << 20).await.unwrap();
        let mut buf = vec![1u8; 4096];
        drv.read_at(8192, &mut buf).await.unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    });
    assert!(lp.ring_enters() > 0, "a hole punch (fallocate) ran inline");

    // tmpfs has no FALLOC_FL_ZERO_RANGE: write-zeroes falls back to 1 MiB writes of
    // zeroes, which are too big to run inline.
    let lp = EventLoop::with_defaults().unwrap();
    lp.block_on(async {
        drv.write_zeroes(1 << 20, 2 << 20, ZeroFlags::default())
            .await
            .unwrap();
        let mut buf = vec![1u8; 4096];
        drv.read_at(2 << 20, &mut buf).await.unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    });
    assert!(lp.ring_enters() > 0, "the write-zeroes fallback ran inline");
}

/// `no_inline` (`x-inline=off`) sends even small tmpfs requests through the ring.
#[test]
fn no_inline_sends_small_requests_through_the_ring() {
    let dir = shm();
    let path = image(&dir, 1 << 20);
    let drv = open(&path, true);
    let lp = EventLoop::with_defaults().unwrap();
    lp.block_on(async {
        let mut buf = vec![0u8; 4096];
        for i in 0..16 {
            drv.read_at(i * 4096, &mut buf).await.unwrap();
            assert!(buf.iter().all(|&b| b == i as u8));
        }
        drv.write_at(0, &[7u8; 4096]).await.unwrap();
    });
    assert!(
        lp.ring_enters() >= 16,
        "{} enters for 16 sequential reads with no_inline",
        lp.ring_enters()
    );
}
