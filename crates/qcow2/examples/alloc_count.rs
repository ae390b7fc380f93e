//! Heap allocations per request on the block hot paths, counted by a global
//! allocator: `alloc_count DIR [COUNT]` makes a 16 MiB raw image and a qcow2 image
//! (fully allocated by a first pass) in DIR and prints, for 4 KiB reads and in-place
//! writes at queue depth 1 through the `file` node (io_uring), `raw` over it and
//! `qcow2` over it, how many allocations each request made on average.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use oxemu_block::raw::RawFormat;
use oxemu_block::{Aio, BlockDriver, BlockDriverExt, EventLoop, FileDriver, FileOptions};

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator; the counter has no effect on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as the caller promised.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: as the caller promised.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as the caller promised.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const SIZE: u64 = 16 << 20;

async fn per_request(d: &dyn BlockDriver, write: bool, n: u64) -> f64 {
    let mut buf = vec![7u8; 4096];
    let start = ALLOCS.load(Ordering::Relaxed);
    for i in 0..n {
        let off = (i * 4096) % SIZE;
        if write {
            d.write_at(off, &buf).await.unwrap();
        } else {
            d.read_at(off, &mut buf).await.unwrap();
        }
    }
    (ALLOCS.load(Ordering::Relaxed) - start) as f64 / n as f64
}

fn file(path: &std::path::Path) -> Arc<dyn BlockDriver> {
    Arc::new(
        FileDriver::open(&FileOptions {
            aio: Aio::IoUring,
            ..FileOptions::new(path)
        })
        .unwrap(),
    )
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(a.get(1).map(String::as_str).unwrap_or("/dev/shm"));
    let n: u64 = a.get(2).and_then(|s| s.parse().ok()).unwrap_or(20000);
    let raw = dir.join("alloc-count.raw");
    let q2 = dir.join("alloc-count.qcow2");
    FileDriver::create(&raw, SIZE, false).unwrap();
    let lp = EventLoop::with_defaults().unwrap();
    lp.block_on(async {
        oxemu_qcow2::create(
            &q2,
            &oxemu_qcow2::Qcow2CreateOptions {
                size: SIZE,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let f = file(&raw);
        let r: Arc<dyn BlockDriver> = Arc::new(RawFormat::new(f.clone()));
        let q = oxemu_qcow2::Qcow2::open(file(&q2), Default::default()).await.unwrap();
        per_request(&*q, true, SIZE / 4096).await; // allocate every cluster first
        println!("allocations per 4 KiB request, QD1, io_uring, {}", dir.display());
        for (name, d) in [("file", &f), ("raw", &r)] {
            println!("{name:6} read {:.2}", per_request(&**d, false, n).await);
            println!("{name:6} write {:.2}", per_request(&**d, true, n).await);
        }
        println!("qcow2  read {:.2}", per_request(&*q, false, n).await);
        println!("qcow2  write {:.2}", per_request(&*q, true, n).await);
        q.close().await.unwrap();
    });
    let _ = std::fs::remove_file(raw);
    let _ = std::fs::remove_file(q2);
}
