//! Images written by oxemu pass `qemu-img check` and compare equal to the expected content.

mod common;

use common::*;
use std::path::Path;
use std::sync::Arc;

use oxemu_block::{BlockDriver, BlockDriverExt, EventLoop, ZeroFlags};
use oxemu_qcow2::{create, CompressionType, Qcow2CreateOptions};
use rand::{Rng, SeedableRng};

/// Applies a seeded mix of writes, zero writes and discards through oxemu and to `model`,
/// with many requests in flight at once; requests are 1 to 96 sectors long.
fn exercise(img: &Path, model: &mut [u8], seed: u64, ops: usize) {
    exercise_sized(img, model, seed, ops, 96)
}

/// [`exercise`] with requests of 1 to `max_sectors` sectors.
fn exercise_sized(img: &Path, model: &mut [u8], seed: u64, ops: usize, max_sectors: u64) {
    let lp = EventLoop::with_defaults().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let size = model.len() as u64;
    let mut plan = Vec::new();
    for _ in 0..ops {
        let kind = rng.gen_range(0..10);
        let len = rng.gen_range(1..=max_sectors) * 512;
        let off = rng.gen_range(0..size / 512) * 512;
        let len = len.min(size - off);
        let fill: u8 = rng.gen();
        plan.push((kind, off, len, fill));
    }
    lp.block_on(async {
        let im = open(img, false).await;
        let d: Arc<dyn BlockDriver> = im.driver.clone();
        // Batches of 32 concurrent requests on non-overlapping ranges... and some overlaps:
        // overlapping writes in one batch are applied to the model in order only if the
        // driver serializes them, so keep each batch's ranges disjoint.
        for batch in plan.chunks(32) {
            let mut taken: Vec<(u64, u64)> = Vec::new();
            let mut futs = Vec::new();
            for &(kind, off, len, fill) in batch {
                if taken.iter().any(|&(o, l)| off < o + l && o < off + len) {
                    continue;
                }
                taken.push((off, len));
                let r = off as usize..(off + len) as usize;
                let d = d.clone();
                match kind {
                    0 => {
                        model[r].fill(0);
                        futs.push(Box::pin(async move {
                            d.write_zeroes(
                                off,
                                len,
                                ZeroFlags {
                                    may_unmap: true,
                                    ..Default::default()
                                },
                            )
                            .await
                        })
                            as std::pin::Pin<Box<dyn std::future::Future<Output = _>>>);
                    }
                    1 => {
                        // Discard: only whole clusters are dropped; the model learns the result below.
                        futs.push(Box::pin(async move { d.discard(off, len).await }));
                    }
                    _ => {
                        model[r].fill(fill);
                        let buf = vec![fill; len as usize];
                        futs.push(Box::pin(async move { d.write_at(off, &buf).await }));
                    }
                }
            }
            for r in futures::future::join_all(futs).await {
                r.unwrap();
            }
            // Learn what discards did (they may or may not drop data).
            for &(off, len) in &taken {
                let mut buf = vec![0u8; len as usize];
                d.read_at(off, &mut buf).await.unwrap();
                model[off as usize..(off + len) as usize].copy_from_slice(&buf);
            }
            if batch.len() % 3 == 0 {
                d.flush().await.unwrap();
            }
        }
        d.close().await.unwrap();
    });
}

fn new_image(dir: &Path, name: &str, o: Qcow2CreateOptions) -> std::path::PathBuf {
    let p = dir.join(name);
    let lp = EventLoop::with_defaults().unwrap();
    lp.block_on(create(&p, &o)).unwrap();
    p
}

fn verify(img: &Path, model: &[u8], dir: &Path) {
    qemu_check_clean(img);
    let got = qemu_raw(img, dir);
    assert_eq!(got.len(), model.len());
    if let Some(i) = (0..got.len()).find(|&i| got[i] != model[i]) {
        panic!(
            "{}: qemu-img reads {:#x} at byte {i:#x}, expected {:#x}",
            img.display(),
            got[i],
            model[i]
        );
    }
    let expect = dir.join("expect.raw");
    std::fs::write(&expect, model).unwrap();
    run(
        "qemu-img",
        &[
            "compare",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            img.to_str().unwrap(),
            expect.to_str().unwrap(),
        ],
    );
}

#[test]
fn random_writes_zeroes_and_discards_pass_qemu_check_for_every_refcount_width() {
    let d = tempfile::tempdir().unwrap();
    for bits in [1, 2, 4, 8, 16, 32, 64] {
        let o = Qcow2CreateOptions {
            size: 8 << 20,
            cluster_size: 4096,
            refcount_bits: bits,
            ..Default::default()
        };
        let img = new_image(d.path(), &format!("rc{bits}.qcow2"), o);
        let mut model = vec![0u8; 8 << 20];
        exercise(&img, &mut model, bits as u64, 200);
        verify(&img, &model, d.path());
    }
}

/// Requests spanning many clusters take the multi-cluster paths (one host request for
/// a run of clusters, contiguous allocation) across every kind of old cluster.
#[test]
fn multi_cluster_writes_over_mixed_clusters_pass_qemu_check() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.raw");
    run(
        "qemu-img",
        &["create", "-q", "-f", "raw", base.to_str().unwrap(), "8M"],
    );
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x33 0 8M",
            base.to_str().unwrap(),
        ],
    );
    for (i, (cs, ext, backing)) in [
        (4096u64, false, false),
        (65536, false, false),
        (65536, true, false),
        (65536, false, true),
        (65536, true, true),
        (512, false, true),
    ]
    .into_iter()
    .enumerate()
    {
        let img = d.path().join(format!("m{i}.qcow2"));
        let mut args = vec!["create", "-q", "-f", "qcow2"];
        let o = format!(
            "cluster_size={cs},extended_l2={}",
            if ext { "on" } else { "off" }
        );
        args.extend(["-o", &o]);
        if backing {
            args.extend(["-b", "base.raw", "-F", "raw"]);
        }
        args.extend([img.to_str().unwrap(), "8M"]);
        run("qemu-img", &args);
        // Allocated, compressed, zero and discarded clusters, and holes.
        let p = img.to_str().unwrap();
        run("qemu-io", &["-c", "write -P 0x11 0 2M", p]);
        run("qemu-io", &["-c", "write -c -P 0x22 2M 1M", p]);
        run("qemu-io", &["-c", "write -z 3M 1M", p]);
        run("qemu-io", &["-c", "write -P 0x44 5M 1M", p]);
        run("qemu-io", &["-c", "discard 5M 512k", p]);
        let mut model = qemu_raw(&img, d.path());
        exercise_sized(&img, &mut model, 500 + i as u64, 120, 1024);
        verify(&img, &model, d.path());
    }
}

#[test]
fn small_clusters_grow_the_refcount_table_and_pass_qemu_check() {
    let d = tempfile::tempdir().unwrap();
    let o = Qcow2CreateOptions {
        size: 16 << 20,
        cluster_size: 512,
        ..Default::default()
    };
    let img = new_image(d.path(), "c512.qcow2", o);
    let mut model = vec![0u8; 16 << 20];
    exercise(&img, &mut model, 7, 300);
    verify(&img, &model, d.path());
}

#[test]
fn extended_l2_and_v2_and_zstd_images_written_by_oxemu_pass_qemu_check() {
    let d = tempfile::tempdir().unwrap();
    let cases = [
        (
            "ext.qcow2",
            Qcow2CreateOptions {
                size: 8 << 20,
                cluster_size: 65536,
                extended_l2: true,
                ..Default::default()
            },
        ),
        (
            "v2.qcow2",
            Qcow2CreateOptions {
                size: 8 << 20,
                compat_v3: false,
                ..Default::default()
            },
        ),
        (
            "lazy.qcow2",
            Qcow2CreateOptions {
                size: 8 << 20,
                lazy_refcounts: true,
                compression_type: CompressionType::Zstd,
                ..Default::default()
            },
        ),
        (
            "c2m.qcow2",
            Qcow2CreateOptions {
                size: 8 << 20,
                cluster_size: 2 << 20,
                ..Default::default()
            },
        ),
    ];
    for (i, (name, o)) in cases.into_iter().enumerate() {
        let img = new_image(d.path(), name, o);
        let mut model = vec![0u8; 8 << 20];
        exercise(&img, &mut model, 100 + i as u64, 150);
        verify(&img, &model, d.path());
    }
}

#[test]
fn writes_into_a_backing_chain_copy_on_write_and_pass_qemu_check() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "8M"],
    );
    run(
        "qemu-io",
        &["-c", "write -P 0x77 0 8M", base.to_str().unwrap()],
    );
    let mid = d.path().join("mid.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "-o",
            "extended_l2=on",
            mid.to_str().unwrap(),
        ],
    );
    run(
        "qemu-io",
        &["-c", "write -P 0x78 1M 1M", mid.to_str().unwrap()],
    );
    let top = new_image(
        d.path(),
        "top.qcow2",
        Qcow2CreateOptions {
            size: 8 << 20,
            backing_file: Some("mid.qcow2".into()),
            backing_fmt: Some("qcow2".into()),
            ..Default::default()
        },
    );
    let mut model = qemu_raw(&mid, d.path());
    exercise(&top, &mut model, 42, 200);
    verify(&top, &model, d.path());
    // The backing files are untouched.
    qemu_check_clean(&mid);
}

#[test]
fn compressed_writes_read_back_through_qemu_for_zlib_and_zstd() {
    let d = tempfile::tempdir().unwrap();
    for ct in [CompressionType::Zlib, CompressionType::Zstd] {
        let img = new_image(
            d.path(),
            &format!("{}.qcow2", ct.name()),
            Qcow2CreateOptions {
                size: 4 << 20,
                compression_type: ct,
                ..Default::default()
            },
        );
        let mut model = vec![0u8; 4 << 20];
        let lp = EventLoop::with_defaults().unwrap();
        lp.block_on(async {
            let im = open(&img, false).await;
            let q = im.qcow2.clone().unwrap();
            for (i, c) in model.chunks_mut(65536).enumerate() {
                for (j, b) in c.iter_mut().enumerate() {
                    *b = if i % 3 == 0 {
                        (j / 100) as u8
                    } else {
                        ((j * 7 + i) % 13) as u8
                    };
                }
                q.write_compressed(i as u64 * 65536, c).await.unwrap();
            }
            q.close().await.unwrap();
        });
        verify(&img, &model, d.path());
        let v = qemu_check_clean(&img);
        assert!(v["compressed-clusters"].as_u64().unwrap() > 0, "{v}");
    }
}

#[test]
fn amend_changes_compat_and_lazy_refcounts_as_qemu_img_info_shows() {
    let d = tempfile::tempdir().unwrap();
    let img = new_image(
        d.path(),
        "a.qcow2",
        Qcow2CreateOptions {
            size: 4 << 20,
            ..Default::default()
        },
    );
    let lp = EventLoop::with_defaults().unwrap();
    let info = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&run(
            "qemu-img",
            &["info", "--output=json", p.to_str().unwrap()],
        ))
        .unwrap()
    };
    lp.block_on(async {
        let im = open(&img, false).await;
        let q = im.qcow2.clone().unwrap();
        q.write_at(0, &[7u8; 4096]).await.unwrap();
        q.write_zeroes(65536, 65536, ZeroFlags::default())
            .await
            .unwrap();
        q.amend(oxemu_qcow2::AmendOptions {
            lazy_refcounts: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
        q.close().await.unwrap();
    });
    assert_eq!(
        info(&img)["format-specific"]["data"]["lazy-refcounts"],
        true
    );
    lp.block_on(async {
        let im = open(&img, false).await;
        let q = im.qcow2.clone().unwrap();
        q.amend(oxemu_qcow2::AmendOptions {
            compat_v3: Some(false),
            lazy_refcounts: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
        q.write_zeroes(0, 65536, ZeroFlags::default())
            .await
            .unwrap();
        q.close().await.unwrap();
    });
    assert_eq!(info(&img)["format-specific"]["data"]["compat"], "0.10");
    qemu_check_clean(&img);
    let model = vec![0u8; 4 << 20];
    verify(&img, &model, d.path());
}

#[test]
fn preallocated_images_pass_qemu_check_and_read_zeroes() {
    let d = tempfile::tempdir().unwrap();
    for (name, p) in [
        ("meta.qcow2", oxemu_qcow2::Preallocation::Metadata),
        ("falloc.qcow2", oxemu_qcow2::Preallocation::Falloc),
        ("full.qcow2", oxemu_qcow2::Preallocation::Full),
    ] {
        let img = new_image(
            d.path(),
            name,
            Qcow2CreateOptions {
                size: 3 << 20,
                cluster_size: 4096,
                preallocation: p,
                ..Default::default()
            },
        );
        let v = qemu_check_clean(&img);
        assert_eq!(v["allocated-clusters"].as_u64(), Some(768), "{name}: {v}");
        verify(&img, &vec![0u8; 3 << 20], d.path());
    }
}

/// A small write into an extended-L2 image allocates only the subclusters it touches:
/// the rest of the cluster still reads from the backing file, as `qemu-img map` shows.
#[test]
fn extended_l2_small_write_allocates_only_its_subclusters() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("b.raw");
    let top = d.path().join("t.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "raw", base.to_str().unwrap(), "1M"],
    );
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 7 0 1M", base.to_str().unwrap()],
    );
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on",
            "-b",
            "b.raw",
            "-F",
            "raw",
            top.to_str().unwrap(),
        ],
    );
    let lp = EventLoop::with_defaults().unwrap();
    lp.block_on(async {
        let im = open(&top, false).await;
        // 2 KiB subclusters: this write touches subclusters 4 and 5.
        im.driver.write_at(9 << 10, &[9u8; 2048]).await.unwrap();
        im.driver.close().await.unwrap();
    });
    qemu_check_clean(&top);
    let map: serde_json::Value = serde_json::from_str(&run(
        "qemu-img",
        &["map", "--output=json", top.to_str().unwrap()],
    ))
    .unwrap();
    let own: Vec<(u64, u64)> = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["depth"] == 0)
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect();
    assert_eq!(own, vec![(8 << 10, 4 << 10)], "{map}");
    let mut model = vec![7u8; 1 << 20];
    model[9 << 10..11 << 10].fill(9);
    verify(&top, &model, d.path());
}
