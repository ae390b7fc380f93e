use super::*;
use crate::driver::BlockDriverExt;
use crate::{FileDriver, FileOptions};
use std::path::Path;

fn file(p: &Path) -> Arc<dyn BlockDriver> {
    Arc::new(FileDriver::open(&FileOptions::new(p)).unwrap())
}

struct Setup {
    _dir: tempfile::TempDir,
    img: std::path::PathBuf,
    log: std::path::PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    let log = dir.path().join("log");
    FileDriver::create(&img, 1 << 20, false).unwrap();
    FileDriver::create(&log, 0, false).unwrap();
    Setup {
        _dir: dir,
        img,
        log,
    }
}

async fn open(s: &Setup, o: &BlkLogWritesOptions) -> io::Result<BlkLogWrites> {
    BlkLogWrites::open(file(&s.img), file(&s.log), o).await
}

#[test]
fn option_errors_name_the_option() {
    let s = setup();
    let lp = crate::EventLoop::with_defaults().unwrap();
    lp.block_on(async {
        let o = |f: fn(&mut BlkLogWritesOptions)| {
            let mut o = BlkLogWritesOptions::default();
            f(&mut o);
            o
        };
        let s = &s;
        let e = |o| async move { open(s, &o).await.err().unwrap().to_string() };
        assert_eq!(
            e(o(|o| o.log_sector_size = Some(1000))).await,
            "Invalid log sector size 1000"
        );
        assert_eq!(
            e(o(|o| o.log_sector_size = Some(16))).await,
            "Invalid log sector size 16"
        );
        assert_eq!(
            e(o(|o| o.log_super_update_interval = Some(0))).await,
            "Invalid log superblock update interval 0"
        );
        assert_eq!(
            e(o(|o| {
                o.log_append = true;
                o.log_sector_size = Some(512)
            }))
            .await,
            "log-append and log-sector-size are mutually exclusive"
        );
    });
    let mut o = BlkLogWritesOptions::default();
    o.set("log-sector-size", "4k").unwrap();
    o.set("log-append", "on").unwrap();
    o.set("log-super-update-interval", "7").unwrap();
    assert_eq!(
        o,
        BlkLogWritesOptions {
            log_sector_size: Some(4096),
            log_append: true,
            log_super_update_interval: Some(7),
            ignore_discards: false,
        }
    );
    assert!(o
        .set("log-size", "1")
        .unwrap_err()
        .to_string()
        .contains("'log-size'"));
    assert!(o
        .set("log-append", "maybe")
        .unwrap_err()
        .to_string()
        .contains("'log-append'"));
}

#[test]
fn partial_sector_writes_are_read_modify_write_and_concurrent_ones_do_not_mix() {
    let s = setup();
    let lp = crate::EventLoop::with_defaults().unwrap();
    lp.block_on(async {
        let n = Arc::new(open(&s, &BlkLogWritesOptions::default()).await.unwrap());
        n.write_at(0, &[1; 4096]).await.unwrap();
        // Many small writes into the same sectors at once: none may undo another.
        let futs: Vec<_> = (0..64u64)
            .map(|i| {
                let n = n.clone();
                async move { n.write_at(100 + i * 33, &[i as u8 + 2; 33]).await }
            })
            .collect();
        for r in futures::future::join_all(futs).await {
            r.unwrap();
        }
        n.write_zeroes(4000, 200, ZeroFlags::default())
            .await
            .unwrap();
        n.close().await.unwrap();
    });
    let mut expect = vec![1u8; 4096];
    expect.resize(1 << 20, 0);
    for i in 0..64usize {
        expect[100 + i * 33..133 + i * 33].fill(i as u8 + 2);
    }
    expect[4000..4200].fill(0);
    let got = std::fs::read(&s.img).unwrap();
    assert!(got == expect, "image content differs");
    // Replaying the log over zeroes gives the same image.
    let log = read_log(&s.log).unwrap();
    let mut replay = vec![0u8; 1 << 20];
    for e in &log.entries {
        if !e.is_flush() && !e.is_discard() {
            let r = e.range(512);
            replay[r.start as usize..r.end as usize].copy_from_slice(log.data(e));
        }
    }
    assert!(replay == expect, "replayed log differs");
    // The partial write-zeroes: head sector written, tail sector written.
    let last: Vec<_> = log.entries.iter().rev().take(3).collect();
    assert!(last[0].is_flush());
    assert_eq!(last[1].range(512), 4096..4608);
    assert_eq!(last[2].range(512), 3584..4096);
}

#[test]
fn append_continues_the_count_and_refuses_a_bad_log() {
    let s = setup();
    let lp = crate::EventLoop::with_defaults().unwrap();
    lp.block_on(async {
        let o = BlkLogWritesOptions {
            log_sector_size: Some(4096),
            ..Default::default()
        };
        let n = open(&s, &o).await.unwrap();
        n.write_at(8192, &[5; 4096]).await.unwrap();
        n.discard(0, 8192).await.unwrap();
        n.close().await.unwrap();
        drop(n);
        let ap = BlkLogWritesOptions {
            log_append: true,
            ..Default::default()
        };
        let n = open(&s, &ap).await.unwrap();
        assert_eq!((n.nr_entries(), n.sector_size()), (3, 4096));
        n.write_at(0, &[6; 4096]).await.unwrap();
        n.close().await.unwrap();
    });
    let log = read_log(&s.log).unwrap();
    assert_eq!(log.entries.len(), 5);
    assert_eq!(log.entries[3].log_offset, 5 * 4096);
    assert_eq!(log.data(&log.entries[3]), &[6; 4096][..]);

    // Broken logs.
    let good = std::fs::read(&s.log).unwrap();
    let lp = crate::EventLoop::with_defaults().unwrap();
    let ap = BlkLogWritesOptions {
        log_append: true,
        ..Default::default()
    };
    let try_log = |b: &[u8]| {
        std::fs::write(&s.log, b).unwrap();
        lp.block_on(async { open(&s, &ap).await.err().map(|e| e.to_string()) })
    };
    let mut b = good.clone();
    b[1] ^= 0xff;
    assert_eq!(try_log(&b).unwrap(), "Invalid log superblock magic");
    let mut b = good.clone();
    b[8] = 3;
    assert_eq!(try_log(&b).unwrap(), "Unsupported log version 3");
    let mut b = good.clone();
    b[24..28].copy_from_slice(&1000u32.to_le_bytes());
    assert_eq!(try_log(&b).unwrap(), "Invalid log sector size 1000");
    let mut b = good.clone();
    b[3 * 4096 + 16] |= 0x30;
    assert!(try_log(&b)
        .unwrap()
        .starts_with("Invalid flags 0x34 in log entry 1"));
    let mut b = good.clone();
    b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(try_log(&b).unwrap().contains("Failed to read log entry 5"));
    let mut b = good.clone();
    b.truncate(b.len() - 100);
    assert!(try_log(&b).unwrap().contains("Failed to read log entry 4"));
    assert_eq!(try_log(&good), None);
}

#[test]
fn flushes_are_logged_only_after_changes() {
    let s = setup();
    let lp = crate::EventLoop::with_defaults().unwrap();
    lp.block_on(async {
        let n = open(&s, &BlkLogWritesOptions::default()).await.unwrap();
        n.flush().await.unwrap();
        n.write_at(0, &[1; 512]).await.unwrap();
        n.flush().await.unwrap();
        n.flush().await.unwrap();
        // FUA right after a flush: no flush entry (QEMU's generation check).
        n.writev(512, &IoVec::from_slice(&[2; 512]), WriteFlags { fua: true })
            .await
            .unwrap();
        // FUA after an unflushed write: a flush entry.
        n.writev(
            1024,
            &IoVec::from_slice(&[3; 512]),
            WriteFlags { fua: true },
        )
        .await
        .unwrap();
        n.close().await.unwrap();
    });
    let log = read_log(&s.log).unwrap();
    let kinds: Vec<bool> = log.entries.iter().map(|e| e.is_flush()).collect();
    assert_eq!(kinds, [false, true, false, false, true, true]);
}

#[test]
fn super_block_is_updated_every_interval_entries() {
    let s = setup();
    let lp = crate::EventLoop::with_defaults().unwrap();
    let count = || Super::decode(&std::fs::read(&s.log).unwrap()).nr_entries;
    lp.block_on(async {
        let o = BlkLogWritesOptions {
            log_super_update_interval: Some(3),
            ..Default::default()
        };
        let n = open(&s, &o).await.unwrap();
        for i in 0..7u64 {
            n.write_at(i * 512, &[9; 512]).await.unwrap();
        }
        // Updated at entries 3 and 6; entry 7 is not counted yet.
        assert_eq!(count(), 6);
        n.close().await.unwrap();
        assert_eq!(count(), 8);
    });
}
