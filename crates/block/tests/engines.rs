//! Correctness of the `file` driver on every AIO engine, against reference reads
//! through std::fs.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;

use oxemu_aio::spawn_local;
use oxemu_block::file::{FileDriver, FileOptions};
use oxemu_block::raw::RawFormat;
use oxemu_block::{
    Aio, AlignedBuf, BlockDriver, BlockDriverExt, EventLoop, EventLoopConfig, IoVec, IoVecMut,
    WriteFlags, ZeroFlags,
};
use rand::{Rng, SeedableRng};

/// Every engine/cache combination QEMU accepts (native needs O_DIRECT).
fn combos() -> Vec<(Aio, bool)> {
    vec![
        (Aio::Threads, false),
        (Aio::Threads, true),
        (Aio::Native, true),
        (Aio::IoUring, false),
        (Aio::IoUring, true),
    ]
}

fn work_dir() -> tempfile::TempDir {
    // O_DIRECT does not work on tmpfs; use the work disk.
    tempfile::Builder::new()
        .prefix("oxemu-eng")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

fn image(dir: &tempfile::TempDir, size: usize, seed: u64) -> (std::path::PathBuf, Vec<u8>) {
    let path = dir.path().join(format!("img-{seed}"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let data: Vec<u8> = (0..size).map(|_| rng.gen()).collect();
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&data)
        .unwrap();
    (path, data)
}

fn open(path: &std::path::Path, aio: Aio, direct: bool, ro: bool) -> FileDriver {
    FileDriver::open(&FileOptions {
        aio,
        direct,
        read_only: ro,
        ..FileOptions::new(path)
    })
    .unwrap()
}

#[test]
fn random_reads_and_writes_match_reference_on_every_engine() {
    let dir = work_dir();
    for (i, (aio, direct)) in combos().into_iter().enumerate() {
        let (path, mut reference) = image(&dir, 1 << 20, i as u64);
        let lp = EventLoop::with_defaults().unwrap();
        let drv = Rc::new(open(&path, aio, direct, false));
        let mut rng = rand::rngs::StdRng::seed_from_u64(100 + i as u64);
        lp.block_on(async {
            for _ in 0..200 {
                let off = rng.gen_range(0..reference.len() - 1);
                let len = rng.gen_range(1..=(reference.len() - off).min(70_000));
                if rng.gen_bool(0.5) {
                    let mut buf = vec![0u8; len];
                    drv.read_at(off as u64, &mut buf).await.unwrap();
                    assert_eq!(
                        buf,
                        reference[off..off + len],
                        "{aio} direct={direct} read {off}+{len}"
                    );
                } else {
                    let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                    drv.write_at(off as u64, &data).await.unwrap();
                    reference[off..off + len].copy_from_slice(&data);
                }
            }
            drv.flush().await.unwrap();
        });
        assert_eq!(
            std::fs::read(&path).unwrap(),
            reference,
            "{aio} direct={direct}: file content"
        );
    }
}

#[test]
fn odirect_handles_unaligned_buffers_offsets_and_lengths() {
    let dir = work_dir();
    for (aio, _) in combos().into_iter().filter(|c| c.1) {
        let (path, mut reference) = image(&dir, 64 * 1024, 7);
        let lp = EventLoop::with_defaults().unwrap();
        let drv = open(&path, aio, true, false);
        assert!(drv.request_alignment() >= 512);
        lp.block_on(async {
            // Aligned offset and length, misaligned memory: bounce buffer.
            let mut big = AlignedBuf::new(8192 + 1);
            drv.read_at(4096, &mut big[1..4097]).await.unwrap();
            assert_eq!(&big[1..4097], &reference[4096..8192]);
            // Misaligned offset and length.
            let mut odd = vec![0u8; 1000];
            drv.read_at(1234, &mut odd).await.unwrap();
            assert_eq!(odd, reference[1234..2234]);
            let data = vec![0xabu8; 777];
            drv.write_at(3333, &data).await.unwrap();
            reference[3333..4110].copy_from_slice(&data);
            // Aligned request spread over two unaligned segments.
            let mut a = vec![0u8; 100];
            let mut b = vec![0u8; 412];
            let mut iov = IoVecMut::from_slice(&mut a);
            iov.push(&mut b);
            drv.readv(0, &mut iov).await.unwrap();
            assert_eq!(a[..], reference[..100]);
            assert_eq!(b[..], reference[100..512]);
        });
        assert_eq!(std::fs::read(&path).unwrap(), reference, "{aio}");
    }
}

#[test]
fn reads_at_and_past_eof_are_zero_filled() {
    let dir = work_dir();
    for (aio, direct) in combos() {
        // 1000 bytes: not a multiple of the O_DIRECT block size.
        let (path, reference) = image(&dir, 1000, 3);
        let lp = EventLoop::with_defaults().unwrap();
        let drv = open(&path, aio, direct, true);
        lp.block_on(async {
            let mut buf = AlignedBuf::new(4096);
            buf.fill(0xff);
            drv.read_at(0, &mut buf).await.unwrap();
            assert_eq!(&buf[..1000], &reference[..], "{aio} direct={direct}");
            assert!(
                buf[1000..].iter().all(|&b| b == 0),
                "{aio} direct={direct}: tail not zeroed"
            );
            buf.fill(0xff);
            drv.read_at(8192, &mut buf).await.unwrap();
            assert!(
                buf.iter().all(|&b| b == 0),
                "{aio} direct={direct}: past EOF not zeroed"
            );
        });
    }
}

#[test]
fn write_to_read_only_file_is_an_error_not_a_panic() {
    let dir = work_dir();
    for (aio, direct) in combos() {
        let (path, reference) = image(&dir, 4096, 4);
        let lp = EventLoop::with_defaults().unwrap();
        let drv = open(&path, aio, direct, true);
        let e = lp.block_on(drv.write_at(0, &[1u8; 512])).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{aio}");
        let e = lp.block_on(drv.discard(0, 512)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{aio}");
        assert_eq!(std::fs::read(&path).unwrap(), reference);
    }
}

#[test]
fn io_past_the_end_of_a_node_is_einval() {
    let dir = work_dir();
    for (aio, direct) in combos() {
        let (path, _) = image(&dir, 8192, 5);
        let lp = EventLoop::with_defaults().unwrap();
        let raw = RawFormat::new(Arc::new(open(&path, aio, direct, false)));
        lp.block_on(async {
            let mut buf = AlignedBuf::new(4096);
            let e = raw.read_at(8192, &mut buf).await.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
            let e = raw.write_at(u64::MAX - 10, &buf).await.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
            // The file driver itself passes a negative offset to the kernel.
            let e = raw
                .file()
                .read_at(i64::MAX as u64 + 1, &mut buf)
                .await
                .unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{aio}");
        });
    }
}

#[test]
fn io_on_a_closed_descriptor_is_ebadf() {
    let dir = work_dir();
    for (aio, direct) in combos() {
        let (path, _) = image(&dir, 8192, 6);
        // Registered files would keep the old file alive; test the descriptor path.
        let lp = EventLoop::new(EventLoopConfig {
            register_files: false,
            ..Default::default()
        })
        .unwrap();
        let drv = open(&path, aio, direct, false);
        // Replace the descriptor with an O_PATH one, which refuses all I/O, so that the
        // number cannot be reused by another test thread.
        let p = std::fs::File::open("/dev/null").unwrap();
        let opath = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_PATH) };
        assert!(opath >= 0);
        assert!(unsafe { libc::dup2(opath, drv.raw_fd()) } >= 0);
        unsafe { libc::close(opath) };
        drop(p);
        lp.block_on(async {
            let mut buf = AlignedBuf::new(4096);
            let e = drv.read_at(0, &mut buf).await.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{aio} read");
            let e = drv.write_at(0, &buf).await.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{aio} write");
            assert!(drv.flush().await.is_err(), "{aio} flush");
        });
    }
}

#[test]
fn many_requests_in_flight_complete_correctly() {
    let dir = work_dir();
    for (aio, direct) in combos() {
        let (path, _) = image(&dir, 256 * 4096, 8);
        let lp = EventLoop::with_defaults().unwrap();
        let drv = Rc::new(open(&path, aio, direct, false));
        lp.block_on(async {
            // 256 concurrent writes of distinct patterns, then 256 concurrent reads.
            let mut hs = Vec::new();
            for i in 0..256u64 {
                let d = drv.clone();
                hs.push(spawn_local(async move {
                    let mut buf = AlignedBuf::new(4096);
                    buf.fill(i as u8);
                    d.writev(i * 4096, &IoVec::from_slice(&buf), WriteFlags::default())
                        .await
                }));
            }
            for h in hs {
                h.await.unwrap();
            }
            let mut hs = Vec::new();
            for i in 0..256u64 {
                let d = drv.clone();
                hs.push(spawn_local(async move {
                    let mut buf = AlignedBuf::new(4096);
                    d.read_at(i * 4096, &mut buf).await.unwrap();
                    buf.iter().all(|&b| b == i as u8)
                }));
            }
            for (i, h) in hs.into_iter().enumerate() {
                assert!(h.await, "{aio} direct={direct}: block {i}");
            }
        });
    }
}

#[test]
fn io_uring_batches_submissions() {
    // On disk: tmpfs files bypass the ring (see the next test).
    let dir = work_dir();
    let (path, _) = image(&dir, 256 * 4096, 9);
    let lp = EventLoop::with_defaults().unwrap();
    let drv = Rc::new(open(&path, Aio::IoUring, false, true));
    lp.block_on(async {
        let mut hs = Vec::new();
        for i in 0..256u64 {
            let d = drv.clone();
            hs.push(spawn_local(async move {
                let mut buf = vec![0u8; 4096];
                d.read_at(i * 4096, &mut buf).await.unwrap();
            }));
        }
        for h in hs {
            h.await;
        }
    });
    // 256 reads issued together must not cost one io_uring_enter each.
    assert!(
        lp.ring_enters() < 32,
        "{} enters for 256 reads",
        lp.ring_enters()
    );
    assert!(
        lp.ring_enters() > 0,
        "the reads did not go through the ring"
    );
}

/// 64 concurrent 4 KiB reads (checked) then writes through the io_uring engine on a
/// file in `dir`; returns the loop's io_uring_enter count.
fn uring_workload(dir: &tempfile::TempDir) -> u64 {
    let (path, data) = image(dir, 64 * 4096, 11);
    let lp = EventLoop::with_defaults().unwrap();
    let drv = Rc::new(open(&path, Aio::IoUring, false, false));
    lp.block_on(async {
        let mut hs = Vec::new();
        for i in 0..64u64 {
            let d = drv.clone();
            let want = data[i as usize * 4096..(i as usize + 1) * 4096].to_vec();
            hs.push(spawn_local(async move {
                let mut buf = vec![0u8; 4096];
                d.read_at(i * 4096, &mut buf).await.unwrap();
                assert_eq!(buf, want);
                d.write_at(i * 4096, &[i as u8; 4096]).await.unwrap();
            }));
        }
        for h in hs {
            h.await;
        }
        drv.flush().await.unwrap();
    });
    let back = std::fs::read(&path).unwrap();
    for i in 0..64 {
        assert!(back[i * 4096..(i + 1) * 4096].iter().all(|&b| b == i as u8));
    }
    lp.ring_enters()
}

#[test]
fn io_uring_runs_tmpfs_requests_inline() {
    let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
        return; // no tmpfs here
    };
    let on_disk = uring_workload(&work_dir());
    let in_memory = uring_workload(&shm);
    assert!(on_disk >= 2, "{on_disk} enters on disk");
    assert!(
        in_memory <= 1,
        "{in_memory} enters on tmpfs: requests went through the ring"
    );
}

#[test]
fn discard_and_write_zeroes_read_back_as_zero() {
    let dir = work_dir();
    for (aio, direct) in combos() {
        let (path, _) = image(&dir, 1 << 20, 10);
        let lp = EventLoop::with_defaults().unwrap();
        let drv = open(&path, aio, direct, false);
        lp.block_on(async {
            drv.write_zeroes(
                65536,
                65536,
                ZeroFlags {
                    may_unmap: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            drv.write_zeroes(4096 * 40, 8192, ZeroFlags::default())
                .await
                .unwrap();
            drv.discard(4096 * 100, 4096 * 4).await.unwrap();
            let mut buf = AlignedBuf::new(65536);
            drv.read_at(65536, &mut buf).await.unwrap();
            assert!(buf.iter().all(|&b| b == 0));
            let st = drv.block_status(65536, 65536).await.unwrap();
            assert!(
                !st.data && st.zero,
                "{aio}: punched range should be a hole: {st:?}"
            );
            drv.read_at(4096 * 100, &mut buf[..16384]).await.unwrap();
            assert!(buf[..16384].iter().all(|&b| b == 0));
        });
        let f = std::fs::File::open(&path).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 1 << 20, "size kept");
        let _ = f.as_raw_fd();
    }
}

#[test]
fn native_aio_without_direct_is_refused_like_qemu() {
    let dir = work_dir();
    let (path, _) = image(&dir, 4096, 11);
    let e = FileDriver::open(&FileOptions {
        aio: Aio::Native,
        ..FileOptions::new(&path)
    })
    .unwrap_err();
    assert!(e.to_string().contains("requires cache.direct=on"), "{e}");
}

#[test]
fn second_writer_is_refused_by_image_lock() {
    let dir = work_dir();
    let (path, _) = image(&dir, 4096, 12);
    let _a = open(&path, Aio::Threads, false, false);
    let e = FileDriver::open(&FileOptions::new(&path)).unwrap_err();
    assert!(
        e.to_string().contains("Failed to get \"write\" lock"),
        "{e}"
    );
    // A reader that refuses to share writing (qemu-img on a qcow2 image) is refused...
    use oxemu_block::lock::perm;
    let e = FileDriver::open(&FileOptions {
        read_only: true,
        shared_perms: Some(perm::ALL & !perm::WRITE),
        ..FileOptions::new(&path)
    })
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("Failed to get shared \"write\" lock"),
        "{e}"
    );
    // ...while by default readers share everything, and so does force-share.
    FileDriver::open(&FileOptions {
        read_only: true,
        ..FileOptions::new(&path)
    })
    .unwrap();
    FileDriver::open(&FileOptions {
        read_only: true,
        force_share: true,
        ..FileOptions::new(&path)
    })
    .unwrap();
}

/// Reads and writes through io_uring with each optional ring feature enabled.
fn uring_round_trip(cfg: EventLoopConfig, fixed_buffers: bool) {
    let dir = work_dir();
    let (path, mut reference) = image(&dir, 256 * 1024, 13);
    let lp = EventLoop::new(cfg).unwrap();
    let drv = Rc::new(open(&path, Aio::IoUring, true, false));
    let mut bufs: Vec<AlignedBuf> = (0..8).map(|_| AlignedBuf::new(4096)).collect();
    if fixed_buffers {
        let iov: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: the buffers outlive the loop's use of them (dropped after block_on).
        unsafe { lp.register_buffers(&iov).unwrap() };
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    lp.block_on(async {
        for round in 0..50 {
            let i = round % bufs.len();
            let blk = rng.gen_range(0..64u64);
            if rng.gen_bool(0.5) {
                drv.read_at(blk * 4096, &mut bufs[i]).await.unwrap();
                assert_eq!(&bufs[i][..], &reference[(blk * 4096) as usize..][..4096]);
            } else {
                bufs[i].fill(round as u8);
                drv.write_at(blk * 4096, &bufs[i]).await.unwrap();
                reference[(blk * 4096) as usize..][..4096].fill(round as u8);
            }
        }
        drv.flush().await.unwrap();
    });
    drop(lp);
    assert_eq!(std::fs::read(&path).unwrap(), reference);
}

#[test]
fn io_uring_with_registered_buffers_is_correct() {
    uring_round_trip(EventLoopConfig::default(), true);
}

#[test]
fn io_uring_with_sqpoll_is_correct() {
    uring_round_trip(
        EventLoopConfig {
            sqpoll_idle_ms: Some(10),
            ..Default::default()
        },
        false,
    );
}

#[test]
fn io_uring_with_completion_polling_is_correct() {
    uring_round_trip(
        EventLoopConfig {
            poll_max_ns: 50_000,
            ..Default::default()
        },
        true,
    );
}

#[test]
fn io_uring_without_registered_files_is_correct() {
    uring_round_trip(
        EventLoopConfig {
            register_files: false,
            ..Default::default()
        },
        false,
    );
}
