//! Minimal read loop for profiling the event loop and engines:
//! `qd_read FILE ENGINE DEPTH COUNT [direct]` issues COUNT 4 KiB reads with DEPTH
//! tasks, sequential by 4 KiB steps modulo the file size (like `qemu-img bench`).

use std::rc::Rc;
use std::time::Instant;

use oxemu_aio::spawn_local;
use oxemu_block::{AlignedBuf, BlockDriverExt, EventLoop, FileDriver, FileOptions};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let path = &a[1];
    let aio = a[2].parse().unwrap();
    let depth: usize = a[3].parse().unwrap();
    let count: u64 = a[4].parse().unwrap();
    let direct = a.get(5).is_some_and(|s| s == "direct");
    let lp = EventLoop::with_defaults().unwrap();
    let drv = Rc::new(
        FileDriver::open(&FileOptions {
            aio,
            direct,
            read_only: true,
            ..FileOptions::new(path)
        })
        .unwrap(),
    );
    let size = oxemu_block::BlockDriver::size(&*drv);
    let next = Rc::new(std::cell::Cell::new(0u64));
    let t = Instant::now();
    lp.block_on(async {
        let mut hs = Vec::new();
        for _ in 0..depth {
            let d = drv.clone();
            let next = next.clone();
            hs.push(spawn_local(async move {
                let mut buf = AlignedBuf::new(4096);
                loop {
                    let i = next.get();
                    if i >= count {
                        break;
                    }
                    next.set(i + 1);
                    d.read_at((i * 4096) % size, &mut buf).await.unwrap();
                }
            }));
        }
        for h in hs {
            h.await;
        }
    });
    let s = t.elapsed().as_secs_f64();
    println!(
        "{count} reads in {s:.3}s: {:.0} IOPS, {} ring enters",
        count as f64 / s,
        lp.ring_enters()
    );
}
