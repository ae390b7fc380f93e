//! Replay checker: qcow2 workloads run over a `blklogwrites` node that logs every
//! request the driver sends to its file; then every flush in the log, and random
//! subsets of the writes after it, are replayed onto the initial image as crash
//! states. Each state must pass `qemu-img check` (leaks allowed; a dirty
//! lazy-refcount image must repair cleanly with `-r all`) and every guest sector
//! must hold the value acknowledged at the last guest flush the state covers, or a
//! value written after it.
//!
//! `OXEMU_REPLAY_STATES` sets the number of states per workload (default 280),
//! `OXEMU_REPLAY_ROUNDS` how many times the workloads are recorded afresh (with
//! other seeds, default 1), `OXEMU_REPLAY_SEED` the first seed (default 7);
//! `scripts/replay-long` runs many more states.

mod common;

use std::time::Instant;

use common::replay::{GOp, Guest, Recorded, Stats};
use oxemu_block::EventLoop;
use oxemu_qcow2::Qcow2CreateOptions;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MIB: u64 = 1 << 20;

/// Picks up to `n` random disjoint ranges of whole `unit`s inside `0..size`.
fn ranges(rng: &mut StdRng, n: usize, size: u64, unit: u64, max_units: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for _ in 0..n {
        let len = rng.gen_range(1..=max_units) * unit;
        let off = rng.gen_range(0..=(size - len) / unit) * unit;
        if out.iter().all(|&(o, l)| off + len <= o || o + l <= off) {
            out.push((off, len));
        }
    }
    out
}

/// Allocating writes, many in flight, small clusters (frequent L2 and refcount
/// block allocation), with zero writes mixed in.
async fn alloc(g: &mut Guest, rng: &mut StdRng) {
    for round in 0..24 {
        let mut ops = Vec::new();
        for (o, l) in ranges(rng, 24, g.size, 512, 24) {
            ops.push(if rng.gen_range(0..8) == 0 {
                GOp::Zero(o, l)
            } else {
                GOp::Write(o, l)
            });
        }
        g.batch(&ops).await;
        if round % 3 != 1 {
            g.flush().await;
        }
    }
}

/// Discards and compressed writes, a resize in the middle, then more writes and
/// an emptying of the image.
async fn discard_compress_resize(g: &mut Guest, rng: &mut StdRng) {
    let cs = g.cluster;
    let mut fresh: Vec<u64> = (0..g.size / cs).map(|c| c * cs).collect();
    let mut used = std::collections::HashSet::new();
    for round in 0..20 {
        if round == 10 {
            let s = g.size + 2 * MIB;
            fresh.extend((g.size / cs..s / cs).map(|c| c * cs));
            g.resize(s).await;
        }
        let mut ops = Vec::new();
        let mut taken: Vec<(u64, u64)> = Vec::new();
        // Compressed writes into clusters no request ever touched.
        for _ in 0..4 {
            let i = rng.gen_range(0..fresh.len());
            let c = fresh.swap_remove(i);
            if used.contains(&c) {
                continue;
            }
            used.insert(c);
            taken.push((c, cs));
            ops.push(GOp::Compressed(c));
        }
        for (o, l) in ranges(rng, 16, g.size, 512, 64) {
            if taken.iter().any(|&(t, tl)| o < t + tl && t < o + l) {
                continue;
            }
            for c in o / cs..(o + l).div_ceil(cs) {
                used.insert(c * cs);
            }
            taken.push((o, l));
            ops.push(match rng.gen_range(0..6) {
                0 => GOp::Zero(o, l),
                1 => GOp::Discard(o, l),
                _ => GOp::Write(o, l),
            });
        }
        // Whole-cluster discards (these free clusters).
        for (o, l) in ranges(rng, 3, g.size, cs, 3) {
            if taken.iter().all(|&(t, tl)| o + l <= t || t + tl <= o) {
                taken.push((o, l));
                ops.push(GOp::Discard(o, l));
            }
        }
        g.batch(&ops).await;
        if round % 2 == 0 {
            g.flush().await;
        }
    }
    g.make_empty().await;
    g.flush().await;
    let ops: Vec<GOp> = ranges(rng, 8, g.size, 512, 32)
        .into_iter()
        .map(|(o, l)| GOp::Write(o, l))
        .collect();
    g.batch(&ops).await;
    g.flush().await;
}

/// Lazy refcounts: writes and discards with the dirty bit set.
async fn lazy(g: &mut Guest, rng: &mut StdRng) {
    for round in 0..16 {
        let mut ops = Vec::new();
        for (o, l) in ranges(rng, 16, g.size, 512, 48) {
            ops.push(if rng.gen_range(0..5) == 0 {
                GOp::Discard(o, l)
            } else {
                GOp::Write(o, l)
            });
        }
        for (o, l) in ranges(rng, 2, g.size, g.cluster, 2) {
            if !ops.iter().any(|op| match *op {
                GOp::Write(a, b) | GOp::Discard(a, b) => a < o + l && o < a + b,
                _ => false,
            }) {
                ops.push(GOp::Discard(o, l));
            }
        }
        g.batch(&ops).await;
        if round % 2 == 1 {
            g.flush().await;
        }
    }
}

/// An image whose first MiB qemu-io wrote and then zeroed without unmapping (zero
/// clusters that keep their allocation), partly rewritten by oxemu: each rewrite
/// goes in place and changes an L2 entry without any refcount update, so only the
/// flush at the start of writeback orders its data before the entry.
async fn zero_rewrite(g: &mut Guest, rng: &mut StdRng) {
    let cs = g.cluster;
    let mut left: Vec<u64> = (0..MIB / cs).map(|c| c * cs).collect();
    for round in 0..12 {
        let mut ops = Vec::new();
        for _ in 0..20.min(left.len()) {
            let c = left.swap_remove(rng.gen_range(0..left.len()));
            let k = rng.gen_range(1..cs / 512);
            ops.push(GOp::Write(
                c + rng.gen_range(0..cs / 512 - k + 1) * 512,
                k * 512,
            ));
        }
        g.batch(&ops).await;
        if round % 2 == 0 {
            g.flush().await;
        }
    }
}

fn qemu_zeroed_mib(img: &std::path::Path) {
    common::run(
        "qemu-io",
        &[
            "-c",
            "write -P 0x55 0 1M",
            "-c",
            "write -z 0 1M",
            img.to_str().unwrap(),
        ],
    );
}

type Workload = for<'a> fn(
    &'a mut Guest,
    &'a mut StdRng,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;
/// Run on the new image before logging starts.
type Prepare = Option<fn(&std::path::Path)>;

fn record(
    dir: &std::path::Path,
    name: &str,
    o: Qcow2CreateOptions,
    w: Workload,
    p: Prepare,
    seed: u64,
) -> Recorded {
    let lp = EventLoop::with_defaults().unwrap();
    lp.block_on(async {
        let img = dir.join(format!("{name}.qcow2"));
        let log = dir.join(format!("{name}.log"));
        let mut g = Guest::start_prepared(&img, &log, &o, |i| {
            if let Some(p) = p {
                p(i)
            }
        })
        .await;
        let mut rng = StdRng::seed_from_u64(seed);
        w(&mut g, &mut rng).await;
        g.finish().await
    })
}

fn workloads() -> Vec<(&'static str, Qcow2CreateOptions, Workload, Prepare)> {
    vec![
        (
            "alloc-4k-clusters",
            Qcow2CreateOptions {
                size: 4 * MIB,
                cluster_size: 4096,
                ..Default::default()
            },
            |g, r| Box::pin(alloc(g, r)),
            None,
        ),
        (
            "discard-compress-resize",
            Qcow2CreateOptions {
                size: 2 * MIB,
                cluster_size: 16384,
                ..Default::default()
            },
            |g, r| Box::pin(discard_compress_resize(g, r)),
            None,
        ),
        (
            "zero-rewrite",
            Qcow2CreateOptions {
                size: 2 * MIB,
                cluster_size: 4096,
                ..Default::default()
            },
            |g, r| Box::pin(zero_rewrite(g, r)),
            Some(qemu_zeroed_mib),
        ),
        (
            "lazy-refcounts",
            Qcow2CreateOptions {
                size: 4 * MIB,
                cluster_size: 4096,
                lazy_refcounts: true,
                ..Default::default()
            },
            |g, r| Box::pin(lazy(g, r)),
            None,
        ),
    ]
}

/// Runs every workload and replays `per_workload` states of each; returns totals.
pub fn run_all(per_workload: usize, seed: u64) -> (Stats, Vec<String>) {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
    let mut total = Stats::default();
    let mut fails = Vec::new();
    for (i, (name, o, w, p)) in workloads().into_iter().enumerate() {
        let t = Instant::now();
        let rec = record(dir.path(), name, o, w, p, seed + i as u64);
        let t_rec = t.elapsed();
        let (s, f) = rec.replay(per_workload, seed + 100 + i as u64, dir.path(), 2);
        println!(
            "replay {name}: {} log entries, {} flush points, {} states checked, {} corrupt, \
             {} lost, {} repaired (lazy), recorded in {:.2?}, replayed in {:.2?}",
            rec.log.entries.len(),
            s.flush_points,
            s.states,
            s.corrupt,
            s.lost,
            s.repaired,
            t_rec,
            t.elapsed() - t_rec
        );
        fails.extend(f.into_iter().map(|m| format!("{name}: {m}")));
        total += s;
    }
    println!(
        "replay total: {} states checked, {} corrupt, {} lost",
        total.states, total.corrupt, total.lost
    );
    (total, fails)
}

#[test]
fn crash_states_are_consistent_and_keep_flushed_data() {
    let per: usize = std::env::var("OXEMU_REPLAY_STATES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(280);
    let seed: u64 = std::env::var("OXEMU_REPLAY_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let rounds: u64 = std::env::var("OXEMU_REPLAY_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut total = Stats::default();
    let mut fails = Vec::new();
    for r in 0..rounds {
        // Each round records the workloads afresh with other seeds.
        let (t, f) = run_all(per, seed + r * 1000);
        total += t;
        fails.extend(f);
    }
    if rounds > 1 {
        println!(
            "replay, {rounds} rounds: {} states checked, {} corrupt, {} lost",
            total.states, total.corrupt, total.lost
        );
    }
    assert!(
        fails.is_empty() && total.corrupt == 0 && total.lost == 0,
        "{} corrupt, {} lost of {} states:\n{}",
        total.corrupt,
        total.lost,
        total.states,
        fails.join("\n")
    );
    assert!(
        total.states as u64 >= (4 * per as u64 * rounds).min(1000),
        "only {} states",
        total.states
    );
}
