//! Kill test for snapshot operations: a writer (this test binary re-executed in
//! writer mode) mixes random writes with snapshot create, delete and apply and is
//! killed with SIGKILL at random points. After every kill `qemu-img check` finds no
//! corruption (leaks are allowed), and every snapshot in the table can be applied by
//! qemu-img to a copy of the image with the check still clean.

mod common;

use common::*;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use oxemu_block::{BlockDriverExt, EventLoop};
use oxemu_qcow2::NewSnapshot;
use rand::{Rng, SeedableRng};

const SIZE: u64 = 4 << 20;

#[test]
#[ignore = "run by snapshot_operations_killed_at_random_points_never_corrupt as a child"]
fn snapshot_writer_child() {
    let Ok(img) = std::env::var("OXEMU_SNAP_KILL_IMG") else {
        return;
    };
    let seed: u64 = std::env::var("OXEMU_SNAP_KILL_SEED")
        .unwrap()
        .parse()
        .unwrap();
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(format!("{img}.log"))
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let lp = EventLoop::with_defaults().unwrap();
    lp.block_on(async {
        let im = open(Path::new(&img), false).await;
        let d = im.driver.clone();
        let q = im.qcow2.clone().unwrap();
        for n in 0.. {
            let mut futs = Vec::new();
            let mut taken: Vec<(u64, u64)> = Vec::new();
            for _ in 0..8 {
                let len = rng.gen_range(1..=16u64) * 2048;
                let off = rng.gen_range(0..(SIZE - len) / 2048) * 2048;
                if taken.iter().any(|&(o, l)| off < o + l && o < off + len) {
                    continue;
                }
                taken.push((off, len));
                let fill: u8 = rng.gen_range(1..=255);
                let d = d.clone();
                futs.push(async move { d.write_at(off, &vec![fill; len as usize]).await });
            }
            for r in futures::future::join_all(futs).await {
                r.unwrap();
            }
            let snaps = q.snapshot_list().await.unwrap();
            match rng.gen_range(0..6) {
                0 | 1 if snaps.len() < 12 => {
                    let new = NewSnapshot {
                        name: format!("k{seed}-{n}"),
                        ..Default::default()
                    };
                    q.snapshot_create(&new).await.unwrap();
                    log.write_all(b"C\n").unwrap();
                }
                2 if !snaps.is_empty() => {
                    let s = &snaps[rng.gen_range(0..snaps.len())];
                    q.snapshot_delete(Some(&s.id), None).await.unwrap();
                    log.write_all(b"D\n").unwrap();
                }
                3 if !snaps.is_empty() => {
                    let s = &snaps[rng.gen_range(0..snaps.len())];
                    q.snapshot_apply(&s.id).await.unwrap();
                    log.write_all(b"A\n").unwrap();
                }
                _ => d.flush().await.unwrap(),
            }
        }
    });
}

/// The dirty bit (incompatible feature bit 0) of the image's header.
fn dirty(img: &Path) -> bool {
    let b = std::fs::read(img).unwrap();
    b[79] & 1 != 0
}

#[test]
fn snapshot_operations_killed_at_random_points_never_corrupt() {
    let d = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
    let img = d.path().join("k.qcow2");
    let copy = d.path().join("copy.qcow2");
    let sp = |p: &Path| p.to_str().unwrap().to_string();
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            &sp(&img),
            "4M",
        ],
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let exe = std::env::current_exe().unwrap();
    let mut ops = 0;
    let mut repaired = 0;
    for round in 0..14u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "snapshot_writer_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("OXEMU_SNAP_KILL_IMG", &img)
            .env("OXEMU_SNAP_KILL_SEED", round.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.gen_range(40..250)));
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        if dirty(&img) {
            // Killed inside a snapshot operation: some COPIED flags may disagree with
            // their refcounts (the two live in different clusters), nothing worse:
            // no refcount is too low. The next read-write open repairs the image.
            let o = Command::new("qemu-img")
                .args(["check", &sp(&img)])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&o.stderr).into_owned()
                + &String::from_utf8_lossy(&o.stdout);
            for l in text.lines().filter(|l| l.starts_with("ERROR")) {
                assert!(l.contains("OFLAG_COPIED"), "round {round}: {l}");
            }
            repaired += 1;
            let lp = EventLoop::with_defaults().unwrap();
            lp.block_on(async { open(&img, false).await.driver.close().await.unwrap() });
            assert!(!dirty(&img));
        }
        qemu_check_clean(&img);
        let log = std::fs::read_to_string(format!("{}.log", img.display())).unwrap_or_default();
        ops += log.lines().count();
        std::fs::remove_file(format!("{}.log", img.display())).ok();
        // The snapshots still in the table are whole (the two newest are applied).
        let list = run("qemu-img", &["snapshot", "-l", &sp(&img)]);
        let ids: Vec<&str> = list
            .lines()
            .skip(2)
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        for id in ids.iter().rev().take(2) {
            std::fs::copy(&img, &copy).unwrap();
            run("qemu-img", &["snapshot", "-a", id, &sp(&copy)]);
            qemu_check_clean(&copy);
        }
    }
    assert!(ops > 14, "too few snapshot operations completed ({ops})");
    eprintln!("{ops} snapshot operations, {repaired} kills inside one");
    // oxemu reopens the image read-write and deletes what is left.
    let lp = EventLoop::with_defaults().unwrap();
    lp.block_on(async {
        let im = open(&img, false).await;
        let q = im.qcow2.clone().unwrap();
        for s in q.snapshot_list().await.unwrap() {
            q.snapshot_delete(Some(&s.id), None).await.unwrap();
        }
        im.driver.close().await.unwrap();
    });
    qemu_check_clean(&img);
}
