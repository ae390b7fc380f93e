//! Kill test: a writer (this test binary re-executed in writer mode) is killed with
//! SIGKILL at random points; after each kill `qemu-img check` finds no corruption and
//! every write acknowledged before the last completed flush is intact.

mod common;

use common::*;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use oxemu_block::{BlockDriverExt, EventLoop};
use oxemu_qcow2::{create, Qcow2CreateOptions};
use rand::{Rng, SeedableRng};

const SIZE: u64 = 16 << 20;

/// Writer mode: random writes in batches of 8 in flight, each logged ("W off len fill")
/// before it is issued, and "F" logged after every completed flush.
#[test]
#[ignore = "run by kill_at_random_points_never_corrupts_the_image as a child process"]
fn writer_child() {
    let Ok(img) = std::env::var("OXEMU_QCOW2_KILL_IMG") else { return };
    let seed: u64 = std::env::var("OXEMU_QCOW2_KILL_SEED").unwrap().parse().unwrap();
    let mut log = std::fs::OpenOptions::new().append(true).create(true).open(format!("{img}.log")).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let lp = EventLoop::with_defaults().unwrap();
    lp.block_on(async {
        let im = open(Path::new(&img), false).await;
        let d = im.driver.clone();
        loop {
            let mut futs = Vec::new();
            let mut taken: Vec<(u64, u64)> = Vec::new();
            for _ in 0..8 {
                let len = rng.gen_range(1..=32u64) * 2048;
                let off = rng.gen_range(0..(SIZE - len) / 2048) * 2048;
                if taken.iter().any(|&(o, l)| off < o + l && o < off + len) {
                    continue;
                }
                taken.push((off, len));
                let fill: u8 = rng.gen_range(1..=255);
                log.write_all(format!("W {off} {len} {fill}\n").as_bytes()).unwrap();
                let d = d.clone();
                futs.push(async move {
                    let buf = vec![fill; len as usize];
                    d.write_at(off, &buf).await
                });
            }
            for r in futures::future::join_all(futs).await {
                r.unwrap();
            }
            if rng.gen_range(0..4) == 0 {
                d.flush().await.unwrap();
                log.write_all(b"F\n").unwrap();
            }
        }
    });
}

/// Returns how many acknowledged (flushed) writes were verified.
fn verify(img: &Path, base: &mut Vec<u8>, dir: &Path) -> usize {
    let v = qemu_check_clean(img);
    let log = std::fs::read_to_string(format!("{}.log", img.display())).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let last_f = lines.iter().rposition(|l| *l == "F");
    let got = qemu_raw(img, dir);
    let mut expect = base.clone();
    let mut certain = vec![true; SIZE as usize];
    for (i, l) in lines.iter().enumerate() {
        // A line cut short by the kill parses to fewer numbers and was never issued.
        let p: Vec<u64> = l.split(' ').skip(1).filter_map(|x| x.parse().ok()).collect();
        if p.len() != 3 || !l.starts_with("W ") {
            continue;
        }
        let r = p[0] as usize..(p[0] + p[1]) as usize;
        if last_f.is_some_and(|f| i < f) {
            expect[r].fill(p[2] as u8);
        } else {
            certain[r].fill(false);
        }
    }
    for i in 0..SIZE as usize {
        if certain[i] && expect[i] != got[i] {
            panic!("byte {i:#x}: expected {:#x}, image has {:#x} (check: {v})", expect[i], got[i]);
        }
    }
    *base = got;
    std::fs::remove_file(format!("{}.log", img.display())).ok();
    last_f.unwrap_or(0)
}

fn kill_rounds(img: &Path, rounds: usize, seed: u64, dir: &Path) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut base = vec![0u8; SIZE as usize];
    let mut acked = 0;
    let exe = std::env::current_exe().unwrap();
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args(["--exact", "writer_child", "--ignored", "--nocapture", "--test-threads=1"])
            .env("OXEMU_QCOW2_KILL_IMG", img)
            .env("OXEMU_QCOW2_KILL_SEED", (seed * 1000 + round as u64).to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..160)));
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        acked += verify(img, &mut base, dir);
    }
    assert!(acked > rounds, "the writer got too few flushes through ({acked}) for the test to mean anything");
}

#[test]
fn kill_at_random_points_never_corrupts_the_image() {
    let d = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
    let lp = EventLoop::with_defaults().unwrap();
    let plain = d.path().join("plain.qcow2");
    let lazy = d.path().join("lazy.qcow2");
    lp.block_on(async {
        create(&plain, &Qcow2CreateOptions { size: SIZE, cluster_size: 4096, ..Default::default() }).await.unwrap();
        create(&lazy, &Qcow2CreateOptions { size: SIZE, cluster_size: 65536, lazy_refcounts: true, ..Default::default() }).await.unwrap();
    });
    kill_rounds(&plain, 30, 1, d.path());
    kill_rounds(&lazy, 20, 2, d.path());
    // The images stay usable: oxemu reopens them read-write (repairing the dirty one).
    lp.block_on(async {
        for p in [&plain, &lazy] {
            let im = open(p, false).await;
            im.driver.write_at(0, &[1u8; 512]).await.unwrap();
            im.driver.close().await.unwrap();
        }
    });
    qemu_check_clean(&plain);
    qemu_check_clean(&lazy);
}
