//! Internal snapshots: images with snapshots are written copy-on-write, snapshots
//! made by oxemu and by qemu-img are interchangeable, and `qemu-img check` stays
//! clean (no corruption, no leaks) after every operation.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oxemu_block::{BlockDriver, BlockDriverExt, EventLoop, ZeroFlags};
use oxemu_qcow2::{NewSnapshot, Qcow2};
use rand::{Rng, SeedableRng};

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("oxemu-snap")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn qemu_image(dir: &Path, name: &str, opts: &str, size: &str) -> PathBuf {
    let p = dir.join(name);
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-o", opts, s(&p), size],
    );
    p
}

fn qemu_io(img: &Path, cmds: &[&str]) -> String {
    let mut a = Vec::new();
    for c in cmds {
        a.push("-c");
        a.push(c);
    }
    a.push(s(img));
    let out = run("qemu-io", &a);
    assert!(
        !out.contains("Pattern verification failed"),
        "{cmds:?}: {out}"
    );
    out
}

/// `qemu-img check` finds neither corruption nor leaks.
fn check_no_leaks(img: &Path) {
    let v = qemu_check_clean(img);
    assert_eq!(
        v.get("leaks").and_then(|l| l.as_u64()).unwrap_or(0),
        0,
        "{v}"
    );
}

fn new_snap(name: &str) -> NewSnapshot {
    NewSnapshot {
        name: name.into(),
        date_sec: 1_700_000_000,
        date_nsec: 5000,
        ..Default::default()
    }
}

/// Runs `f` on the image opened read-write through oxemu, then closes it.
fn with_rw<T>(
    img: &Path,
    f: impl for<'a> FnOnce(
        &'a Arc<Qcow2>,
        &'a Arc<dyn BlockDriver>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + 'a>>,
) -> T {
    let lp = EventLoop::with_defaults().unwrap();
    lp.block_on(async {
        let im = open(img, false).await;
        let q = im.qcow2.clone().unwrap();
        let d = im.driver.clone();
        let r = f(&q, &d).await;
        d.close().await.unwrap();
        r
    })
}

#[test]
fn writes_after_a_qemu_snapshot_copy_on_write_and_leave_the_snapshot_intact() {
    let dir = tmp();
    // 4 KiB clusters: two L2 tables for 4 MiB... and zlib compressed clusters too.
    let img = qemu_image(dir.path(), "a.qcow2", "cluster_size=4096", "4M");
    qemu_io(
        &img,
        &["write -P 1 0 1M", "write -P 2 2M 64k", "write -z 3M 64k"],
    );
    run("qemu-img", &["snapshot", "-c", "s1", s(&img)]);
    with_rw(&img, |q, d| {
        Box::pin(async move {
            // Partial cluster, multi-cluster run, a run across the L2 boundary,
            // zeroes, a discard and a compressed cluster, all over shared clusters.
            d.write_at(512, &[3u8; 1024]).await.unwrap();
            d.write_at(64 << 10, &vec![4u8; 256 << 10]).await.unwrap();
            d.write_at((2 << 20) - 8192, &vec![5u8; 16384])
                .await
                .unwrap();
            let z = ZeroFlags {
                may_unmap: true,
                ..Default::default()
            };
            d.write_zeroes(512 << 10, 64 << 10, z).await.unwrap();
            d.discard(768 << 10, 64 << 10).await.unwrap();
            q.write_compressed(900 << 10, &[6u8; 4096]).await.unwrap();
        })
    });
    check_no_leaks(&img);
    qemu_io(
        &img,
        &[
            "read -P 1 0 512",
            "read -P 3 512 1024",
            "read -P 1 1536 2560",
            "read -P 1 4k 60k",
            "read -P 4 64k 256k",
            "read -P 0 512k 64k",
            "read -P 1 832k 68k",
            "read -P 6 900k 4k",
            "read -P 5 2040k 8k",
            "read -P 2 2M 8k",
            "read -P 5 2M 8k",
        ]
        .into_iter()
        .filter(|c| *c != "read -P 2 2M 8k")
        .collect::<Vec<_>>(),
    );
    run("qemu-img", &["snapshot", "-a", "s1", s(&img)]);
    check_no_leaks(&img);
    qemu_io(
        &img,
        &[
            "read -P 1 0 1M",
            "read -P 0 1M 1M",
            "read -P 2 2M 64k",
            "read -P 0 3M 64k",
        ],
    );
    // Writing again after the revert copies again; deleting the snapshot leaves only
    // the active clusters.
    with_rw(&img, |_, d| {
        Box::pin(async move { d.write_at(0, &vec![7u8; 128 << 10]).await.unwrap() })
    });
    run("qemu-img", &["snapshot", "-d", "s1", s(&img)]);
    check_no_leaks(&img);
    qemu_io(&img, &["read -P 7 0 128k", "read -P 1 128k 896k"]);
}

/// Applies `ops` seeded writes, zero writes, discards and compressed writes to the
/// image and to `model`.
async fn random_io(
    q: &Arc<Qcow2>,
    d: &Arc<dyn BlockDriver>,
    model: &mut [u8],
    rng: &mut rand::rngs::StdRng,
    ops: usize,
) {
    let size = model.len() as u64;
    let cs = q.cluster_size();
    for _ in 0..ops {
        let kind = rng.gen_range(0..9);
        let off = rng.gen_range(0..size / 512) * 512;
        let len = (rng.gen_range(1..=24u64) * 512).min(size - off);
        let fill: u8 = rng.gen_range(1..=255);
        let r = off as usize..(off + len) as usize;
        match kind {
            2 => {
                let off = off / cs * cs;
                let r = off as usize..(off + cs) as usize;
                q.write_compressed(off, &vec![fill; cs as usize])
                    .await
                    .unwrap();
                model[r].fill(fill);
            }
            0 => {
                let z = ZeroFlags {
                    may_unmap: rng.gen(),
                    ..Default::default()
                };
                d.write_zeroes(off, len, z).await.unwrap();
                model[r].fill(0);
            }
            1 => {
                d.discard(off, len).await.unwrap();
                let mut b = vec![0u8; len as usize];
                d.read_at(off, &mut b).await.unwrap();
                model[r].copy_from_slice(&b);
            }
            _ => {
                d.write_at(off, &vec![fill; len as usize]).await.unwrap();
                model[r].fill(fill);
            }
        }
        if rng.gen_range(0..16) == 0 {
            d.flush().await.unwrap();
        }
    }
}

/// Rounds of random I/O, snapshot creation, deletion and apply through oxemu on an
/// image made with `opts`, compared against a model after each round; then every
/// snapshot is applied by qemu-img and compared, and all are deleted.
fn snapshot_model(opts: &str) {
    let dir = tmp();
    let img = qemu_image(dir.path(), "m.qcow2", opts, "2M");
    let mut model = vec![0u8; 2 << 20];
    // (id, contents) of the snapshots alive.
    let mut saved: Vec<(String, Vec<u8>)> = Vec::new();
    for round in 0..8 {
        let (m, sv) = with_rw(&img, |q, d| {
            let mut model = std::mem::take(&mut model);
            let mut saved = std::mem::take(&mut saved);
            let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed + round);
            Box::pin(async move {
                let rng = &mut rng;
                random_io(q, d, &mut model, rng, 60).await;
                let sn = q
                    .snapshot_create(&new_snap(&format!("r{round}")))
                    .await
                    .unwrap();
                saved.push((sn.id.clone(), model.clone()));
                if round % 3 == 2 {
                    let i = rng.gen_range(0..saved.len());
                    let (id, _) = saved.remove(i);
                    q.snapshot_delete(Some(&id), None).await.unwrap();
                }
                random_io(q, d, &mut model, rng, 30).await;
                if round % 4 == 3 {
                    let i = rng.gen_range(0..saved.len());
                    q.snapshot_apply(&saved[i].0).await.unwrap();
                    model = saved[i].1.clone();
                }
                (model, saved)
            })
        });
        model = m;
        saved = sv;
        check_no_leaks(&img);
        assert_eq!(qemu_raw(&img, dir.path()), model, "round {round}");
    }
    let list = run("qemu-img", &["snapshot", "-l", s(&img)]);
    assert_eq!(list.lines().count(), 2 + saved.len(), "{list}");
    // Every snapshot still reads as it was taken, applied by qemu-img.
    for (id, content) in &saved {
        run("qemu-img", &["snapshot", "-a", id, s(&img)]);
        check_no_leaks(&img);
        assert_eq!(&qemu_raw(&img, dir.path()), content, "snapshot {id}");
    }
    // Deleting them all (by oxemu) leaves a clean image with the last content.
    let last = saved.last().unwrap().1.clone();
    with_rw(&img, |q, _| {
        let ids: Vec<String> = saved.iter().map(|x| x.0.clone()).collect();
        Box::pin(async move {
            for id in ids {
                q.snapshot_delete(Some(&id), None).await.unwrap();
            }
            assert!(q.snapshot_list().await.unwrap().is_empty());
        })
    });
    check_no_leaks(&img);
    assert_eq!(qemu_raw(&img, dir.path()), last);
}

#[test]
fn many_snapshots_and_random_writes_match_a_model() {
    // 1 KiB clusters: 128 entries per L2 table, so 16 tables for 2 MiB.
    snapshot_model("cluster_size=1024");
}

#[test]
fn snapshots_with_extended_l2_and_v2_match_a_model() {
    snapshot_model("cluster_size=16k,extended_l2=on");
    snapshot_model("cluster_size=2048,compat=0.10");
}

#[test]
fn snapshots_with_narrow_and_lazy_refcounts_match_a_model() {
    // 4-bit refcounts hold the few references of up to 8 snapshots (512 B clusters
    // never compress, so no host cluster holds many compressed fragments).
    snapshot_model("cluster_size=512,refcount_bits=4");
    snapshot_model("cluster_size=4096,lazy_refcounts=on");
}

#[test]
fn snapshots_of_an_image_with_a_backing_file() {
    let dir = tmp();
    let base = dir.path().join("base.qcow2");
    run("qemu-img", &["create", "-q", "-f", "qcow2", s(&base), "1M"]);
    qemu_io(&base, &["write -P 9 0 1M"]);
    let top = dir.path().join("top.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            s(&base),
            "-F",
            "qcow2",
            s(&top),
        ],
    );
    qemu_io(&top, &["write -P 1 4k 4k"]);
    with_rw(&top, |q, d| {
        Box::pin(async move {
            q.snapshot_create(&new_snap("before")).await.unwrap();
            // Partial writes into a shared cluster and into unallocated ones: the
            // copy-on-write reads the old cluster, resp. the backing file.
            d.write_at(8192, &[2u8; 512]).await.unwrap();
            d.write_at(200 << 10, &[3u8; 512]).await.unwrap();
        })
    });
    check_no_leaks(&top);
    qemu_io(
        &top,
        &[
            "read -P 9 0 4k",
            "read -P 1 4k 4k",
            "read -P 2 8k 512",
            "read -P 9 8704 191k",
            "read -P 3 200k 512",
            "read -P 9 205312 512",
        ],
    );
    run("qemu-img", &["snapshot", "-a", "before", s(&top)]);
    check_no_leaks(&top);
    qemu_io(
        &top,
        &["read -P 9 0 4k", "read -P 1 4k 4k", "read -P 9 8k 1016k"],
    );
}

#[test]
fn refcount_bits_1_refuses_a_snapshot_that_would_share_clusters() {
    let dir = tmp();
    let img = qemu_image(dir.path(), "r.qcow2", "refcount_bits=1", "1M");
    // Nothing allocated yet: nothing to share, so it works (as in QEMU).
    with_rw(&img, |q, _| {
        Box::pin(async move { q.snapshot_create(&new_snap("empty")).await.unwrap() })
    });
    qemu_io(&img, &["write -P 1 0 64k"]);
    let e = with_rw(&img, |q, _| {
        Box::pin(async move { q.snapshot_create(&new_snap("full")).await.unwrap_err() })
    });
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
    // Nothing changed: no corruption, not even the leak QEMU leaves.
    check_no_leaks(&img);
    let list = run("qemu-img", &["snapshot", "-l", s(&img)]);
    assert!(list.contains("empty") && !list.contains("full"), "{list}");
    qemu_io(&img, &["read -P 1 0 64k"]);
}

#[test]
fn apply_restores_the_disk_size_and_v2_images_with_snapshots_do_not_resize() {
    let dir = tmp();
    let img = qemu_image(dir.path(), "g.qcow2", "cluster_size=512", "64k");
    qemu_io(&img, &["write -P 1 0 64k"]);
    with_rw(&img, |q, _| {
        Box::pin(async move {
            q.snapshot_create(&new_snap("small")).await.unwrap();
            // 512 B clusters: 8 MiB needs a larger L1 table.
            q.resize(8 << 20).await.unwrap();
        })
    });
    qemu_io(&img, &["write -P 2 7M 64k"]);
    check_no_leaks(&img);
    with_rw(&img, |q, _| {
        Box::pin(async move { q.snapshot_apply("small").await.unwrap() })
    });
    check_no_leaks(&img);
    let info = run("qemu-img", &["info", "--output=json", s(&img)]);
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["virtual-size"], 65536, "{info}");
    qemu_io(&img, &["read -P 1 0 64k"]);

    let v2 = qemu_image(dir.path(), "v2.qcow2", "compat=0.10", "1M");
    run("qemu-img", &["snapshot", "-c", "x", s(&v2)]);
    let e = with_rw(&v2, |q, _| {
        Box::pin(async move { q.resize(2 << 20).await.unwrap_err() })
    });
    assert!(
        e.to_string()
            .contains("Can't resize a v2 image which has snapshots"),
        "{e}"
    );
}

#[test]
fn amend_downgrade_keeps_snapshots_or_refuses_like_qemu() {
    let dir = tmp();
    let amend_v2 = |img: &Path| {
        with_rw(img, |q, _| {
            Box::pin(async move {
                q.amend(oxemu_qcow2::AmendOptions {
                    compat_v3: Some(false),
                    ..Default::default()
                })
                .await
            })
        })
    };
    let img = qemu_image(dir.path(), "d.qcow2", "cluster_size=4096", "1M");
    qemu_io(&img, &["write -P 1 0 64k"]);
    run("qemu-img", &["snapshot", "-c", "s", s(&img)]);
    qemu_io(&img, &["write -P 2 0 4k"]);
    amend_v2(&img).unwrap();
    check_no_leaks(&img);
    let info = run("qemu-img", &["info", s(&img)]);
    assert!(
        info.contains("compat: 0.10") && info.contains("Snapshot list:"),
        "{info}"
    );
    qemu_io(&img, &["read -P 2 0 4k", "read -P 1 4k 60k"]);
    run("qemu-img", &["snapshot", "-a", "s", s(&img)]);
    qemu_io(&img, &["read -P 1 0 64k"]);

    // Zero clusters inside a snapshot cannot be expressed by v2.
    let z = qemu_image(dir.path(), "z.qcow2", "cluster_size=4096", "1M");
    qemu_io(&z, &["write -P 1 0 64k", "write -z 0 4k"]);
    run("qemu-img", &["snapshot", "-c", "s", s(&z)]);
    let e = amend_v2(&z).unwrap_err();
    assert!(
        e.to_string()
            .contains("zero clusters in internal snapshot 1"),
        "{e}"
    );
    check_no_leaks(&z);
    // A snapshot of another disk size: QEMU's rule and message.
    let r = qemu_image(dir.path(), "r.qcow2", "cluster_size=4096", "1M");
    run("qemu-img", &["snapshot", "-c", "s", s(&r)]);
    run("qemu-img", &["resize", "-q", s(&r), "2M"]);
    let e = amend_v2(&r).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Internal snapshots prevent downgrade of image"
    );
}

#[test]
fn make_empty_of_an_image_with_a_snapshot_keeps_the_snapshot() {
    let dir = tmp();
    let base = dir.path().join("base.qcow2");
    run("qemu-img", &["create", "-q", "-f", "qcow2", s(&base), "1M"]);
    qemu_io(&base, &["write -P 9 0 1M"]);
    let top = dir.path().join("top.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            s(&base),
            "-F",
            "qcow2",
            s(&top),
        ],
    );
    qemu_io(&top, &["write -P 1 0 256k"]);
    run("qemu-img", &["snapshot", "-c", "s", s(&top)]);
    with_rw(&top, |q, _| {
        Box::pin(async move { q.make_empty().await.unwrap() })
    });
    check_no_leaks(&top);
    qemu_io(&top, &["read -P 9 0 1M"]);
    run("qemu-img", &["snapshot", "-a", "s", s(&top)]);
    check_no_leaks(&top);
    qemu_io(&top, &["read -P 1 0 256k", "read -P 9 256k 768k"]);
}
