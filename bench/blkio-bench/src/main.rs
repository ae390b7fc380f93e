//! blkio-bench SOCKET QUEUES DEPTH read|write SECONDS: 4 KiB random I/O at DEPTH per
//! queue through a vhost-user-blk socket; prints total IOPS and the request count.

use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use blkio::{Blkio, Completion, ReqFlags};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 6 {
        eprintln!("usage: blkio-bench SOCKET QUEUES DEPTH read|write SECONDS");
        std::process::exit(2);
    }
    let (path, queues, depth) = (&a[1], a[2].parse::<usize>().unwrap(), a[3].parse::<usize>().unwrap());
    let write = a[4] == "write";
    let secs: f64 = a[5].parse().unwrap();
    let mut b = Blkio::new("virtio-blk-vhost-user").expect("blkio driver");
    b.set_str("path", path).unwrap();
    b.connect().unwrap_or_else(|e| panic!("connect {path}: {}", e.message()));
    b.set_i32("num-queues", queues as i32).unwrap();
    let capacity = b.get_u64("capacity").unwrap();
    let out = b.start().unwrap_or_else(|e| panic!("start: {}", e.message()));
    const BS: usize = 4096;
    let region = b.alloc_mem_region(queues * depth * BS).unwrap();
    b.map_mem_region(&region).unwrap();
    let base = region.addr;
    let blocks = capacity / BS as u64;
    let t0 = Instant::now();
    let handles: Vec<_> = out
        .queues
        .into_iter()
        .enumerate()
        .map(|(qi, mut q)| {
            std::thread::spawn(move || {
                let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (qi as u64 + 1);
                let mut next = move || {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed % blocks) * BS as u64
                };
                let buf = |slot: usize| (base + (qi * depth + slot) * BS) as *mut u8;
                let submit = |q: &mut blkio::Blkioq, slot: usize, off: u64| {
                    if write {
                        q.write(off, buf(slot), BS, slot, ReqFlags::empty());
                    } else {
                        q.read(off, buf(slot), BS, slot, ReqFlags::empty());
                    }
                };
                for slot in 0..depth {
                    submit(&mut q, slot, next());
                }
                let mut comps: Vec<MaybeUninit<Completion>> = (0..depth).map(|_| MaybeUninit::uninit()).collect();
                let mut done = 0u64;
                let mut inflight = depth;
                let end = Instant::now() + Duration::from_secs_f64(secs);
                while inflight > 0 {
                    let n = q.do_io(&mut comps, 1, None, None).expect("do_io");
                    let stop = Instant::now() >= end;
                    for c in &comps[..n] {
                        // SAFETY: do_io initialised the first n completions.
                        let c = unsafe { c.assume_init_ref() };
                        assert_eq!(c.ret, 0, "request failed");
                        done += 1;
                        if stop {
                            inflight -= 1;
                        } else {
                            submit(&mut q, c.user_data, next());
                        }
                    }
                }
                done
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let el = t0.elapsed().as_secs_f64();
    println!("{} {}", (total as f64 / el) as u64, total);
}
