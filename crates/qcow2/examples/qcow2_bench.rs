//! Quick IOPS sanity check, in the spirit of `qemu-img bench`:
//! `qcow2_bench IMAGE write|read COUNT` runs 4 KiB requests at queue depth 32, random
//! offsets over the image (writes go to a fresh image created by `write` mode, so they
//! are allocating), with `aio=io_uring`.

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use oxemu_block::{Aio, BlockDriver, BlockDriverExt, EventLoop, FileDriver, FileOptions};
use oxemu_qcow2::{create, Qcow2, Qcow2CreateOptions, Qcow2OpenOptions};
use rand::{Rng, SeedableRng};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: qcow2_bench IMAGE write|read COUNT");
        std::process::exit(2);
    }
    let path = PathBuf::from(&args[1]);
    let write = args[2] == "write";
    let count: u64 = args[3].parse().expect("COUNT");
    let lp = EventLoop::with_defaults().unwrap();
    lp.block_on(async {
        if write {
            create(
                &path,
                &Qcow2CreateOptions {
                    size: 1 << 30,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        }
        let mut fo = FileOptions::new(&path);
        fo.aio = Aio::IoUring;
        let file: Arc<dyn BlockDriver> = Arc::new(FileDriver::open(&fo).unwrap());
        let q = Qcow2::open(file, Qcow2OpenOptions::default())
            .await
            .unwrap();
        let blocks = q.size() / 4096;
        let issued = Cell::new(0u64);
        let start = Instant::now();
        let workers = (0..32).map(|w| {
            let q = q.clone();
            let issued = &issued;
            async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(w);
                let mut buf = vec![0x5au8; 4096];
                while issued.get() < count {
                    issued.set(issued.get() + 1);
                    let off = rng.gen_range(0..blocks) * 4096;
                    if write {
                        q.write_at(off, &buf).await.unwrap();
                    } else {
                        q.read_at(off, &mut buf).await.unwrap();
                    }
                }
            }
        });
        futures::future::join_all(workers).await;
        let secs = start.elapsed().as_secs_f64();
        q.close().await.unwrap();
        println!(
            "{} {count} requests in {secs:.3} s: {:.0} IOPS",
            args[2],
            count as f64 / secs
        );
    });
}
