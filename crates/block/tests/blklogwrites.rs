//! Side by side with QEMU 7.2: the same requests through `qemu-io --image-opts
//! driver=blklogwrites,...` and through oxemu's `BlkLogWrites` give byte-identical
//! logs and images (aligned and partial-sector writes, FUA writes, write-zeroes,
//! discards, flushes; 512- and 4096-byte log sectors; log-append onto a log the
//! other implementation wrote; qemu-io's default writethrough mode against oxemu's
//! `WriteThrough` node), and the same errors for bad options and bad logs.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use oxemu_block::blklogwrites::{read_log, BlkLogWrites, BlkLogWritesOptions};
use oxemu_block::writethrough::WriteThrough;
use oxemu_block::{BlockDriver, EventLoop, FileDriver, FileOptions, IoVec, WriteFlags, ZeroFlags};

#[derive(Clone, Copy, Debug)]
enum Op {
    /// write (offset, len, pattern byte, fua)
    W(u64, u64, u8, bool),
    /// write-zeroes (offset, len, fua)
    Z(u64, u64, bool),
    /// discard (offset, len)
    D(u64, u64),
    F,
}
use Op::*;

fn qemu_io_cmd(op: Op) -> String {
    match op {
        W(o, l, p, f) => format!("write {}-P 0x{p:x} {o} {l}", if f { "-f " } else { "" }),
        Z(o, l, f) => format!("write -z {}{o} {l}", if f { "-f " } else { "" }),
        D(o, l) => format!("discard {o} {l}"),
        F => "flush".into(),
    }
}

fn opts_string(o: &BlkLogWritesOptions) -> String {
    let mut s = String::new();
    if let Some(v) = o.log_sector_size {
        s += &format!(",log-sector-size={v}");
    }
    if o.log_append {
        s += ",log-append=on";
    }
    if let Some(v) = o.log_super_update_interval {
        s += &format!(",log-super-update-interval={v}");
    }
    s
}

/// Runs `ops` through qemu-io; `Err` carries qemu-io's message when it fails.
fn qemu(
    img: &Path,
    log: &Path,
    o: &BlkLogWritesOptions,
    ops: &[Op],
    writeback: bool,
) -> Result<(), String> {
    let mut c = Command::new("qemu-io");
    if writeback {
        c.args(["-t", "writeback"]);
    }
    c.arg("--image-opts").arg(format!(
        "driver=blklogwrites,file.driver=file,file.filename={},log.driver=file,log.filename={}{}",
        img.display(),
        log.display(),
        opts_string(o)
    ));
    for &op in ops {
        c.arg("-c").arg(qemu_io_cmd(op));
    }
    let out = c.output().expect("qemu-io 7.2 must be installed");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() || !err.is_empty() {
        return Err(err);
    }
    Ok(())
}

/// Runs `ops` through oxemu's filter (under a `WriteThrough` node unless
/// `writeback`).
fn oxemu(
    img: &Path,
    log: &Path,
    o: &BlkLogWritesOptions,
    ops: &[Op],
    writeback: bool,
) -> Result<(), String> {
    let lp = EventLoop::with_defaults().unwrap();
    lp.block_on(async {
        let f = Arc::new(FileDriver::open(&FileOptions::new(img)).unwrap());
        let l = Arc::new(FileDriver::open(&FileOptions::new(log)).unwrap());
        let n: Arc<dyn BlockDriver> = Arc::new(
            BlkLogWrites::open(f, l, o)
                .await
                .map_err(|e| e.to_string())?,
        );
        let n: Arc<dyn BlockDriver> = if writeback {
            n
        } else {
            Arc::new(WriteThrough::new(n))
        };
        for &op in ops {
            match op {
                W(off, len, p, fua) => {
                    let buf = vec![p; len as usize];
                    n.writev(off, &IoVec::from_slice(&buf), WriteFlags { fua })
                        .await
                }
                Z(off, len, fua) => {
                    n.write_zeroes(
                        off,
                        len,
                        ZeroFlags {
                            fua,
                            ..Default::default()
                        },
                    )
                    .await
                }
                D(off, len) => n.discard(off, len).await,
                F => n.flush().await,
            }
            .unwrap();
        }
        n.close().await.unwrap();
        Ok(())
    })
}

struct Pair {
    dir: tempfile::TempDir,
}

impl Pair {
    fn new() -> Self {
        let p = Pair {
            dir: tempfile::tempdir().unwrap(),
        };
        for who in ["q", "o"] {
            std::fs::write(p.img(who), vec![0u8; 1 << 20]).unwrap();
            std::fs::write(p.log(who), b"").unwrap();
        }
        p
    }
    fn img(&self, who: &str) -> std::path::PathBuf {
        self.dir.path().join(format!("{who}.img"))
    }
    fn log(&self, who: &str) -> std::path::PathBuf {
        self.dir.path().join(format!("{who}.log"))
    }
    fn run(&self, o: &BlkLogWritesOptions, ops: &[Op], writeback: bool) {
        qemu(&self.img("q"), &self.log("q"), o, ops, writeback).unwrap();
        oxemu(&self.img("o"), &self.log("o"), o, ops, writeback).unwrap();
    }
    /// Asserts identical logs and images; returns the number of entries.
    fn same(&self) -> usize {
        let (q, o) = (
            std::fs::read(self.log("q")).unwrap(),
            std::fs::read(self.log("o")).unwrap(),
        );
        if q != o {
            let at = q.iter().zip(&o).position(|(a, b)| a != b);
            let dump = |p| {
                read_log(&self.log(p))
                    .map(|l| {
                        l.entries
                            .iter()
                            .map(|e| format!("{:?}", e.header))
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                    .unwrap_or_else(|e| e.to_string())
            };
            panic!(
                "logs differ: qemu {} bytes, oxemu {} bytes, first difference at {at:?}\nqemu:\n{}\noxemu:\n{}",
                q.len(),
                o.len(),
                dump("q"),
                dump("o")
            );
        }
        assert!(
            std::fs::read(self.img("q")).unwrap() == std::fs::read(self.img("o")).unwrap(),
            "images differ"
        );
        read_log(&self.log("q")).unwrap().entries.len()
    }
}

/// Aligned and partial-sector requests of every kind, with and without FUA.
fn mixed() -> Vec<Op> {
    vec![
        W(4096, 8192, 0xa1, false),
        W(0, 512, 0xa2, true),
        F,
        F,
        W(512, 512, 0xa3, true),
        Z(8192, 4096, false),
        D(65536, 16384),
        W(100, 50, 0xa4, false),
        W(1000, 3000, 0xa5, true),
        Z(20000, 10000, false),
        Z(30000, 100, true),
        F,
        W(40960, 65536, 0xa6, false),
        D(40960, 4096),
        Z(131072, 65536, true),
        W(200000, 1, 0xa7, false),
    ]
}

#[test]
fn same_log_as_qemu_with_512_byte_sectors() {
    let p = Pair::new();
    p.run(&BlkLogWritesOptions::default(), &mixed(), true);
    let n = p.same();
    assert!(n >= 18, "{n} entries");
}

#[test]
fn same_log_as_qemu_with_4096_byte_sectors() {
    let p = Pair::new();
    let o = BlkLogWritesOptions {
        log_sector_size: Some(4096),
        ..Default::default()
    };
    let mut ops = mixed();
    ops.push(D(8192, 12288));
    p.run(&o, &ops, true);
    let log = read_log(&p.log("q")).unwrap();
    assert_eq!(log.sector_size(), 4096);
    p.same();
}

#[test]
fn same_log_as_qemu_in_writethrough_mode_and_with_an_update_interval() {
    let p = Pair::new();
    let o = BlkLogWritesOptions {
        log_super_update_interval: Some(3),
        ..Default::default()
    };
    p.run(&o, &mixed(), false);
    p.same();
}

#[test]
fn log_append_continues_a_log_written_by_the_other() {
    let p = Pair::new();
    let all = mixed();
    let (a, b) = all.split_at(8);
    let o = BlkLogWritesOptions {
        log_sector_size: Some(4096),
        ..Default::default()
    };
    let ap = BlkLogWritesOptions {
        log_append: true,
        ..Default::default()
    };
    // QEMU starts, oxemu appends / oxemu starts, QEMU appends: the same bytes as
    // each doing both halves.
    qemu(&p.img("q"), &p.log("q"), &o, a, true).unwrap();
    oxemu(&p.img("o"), &p.log("o"), &o, a, true).unwrap();
    p.same();
    let (qlog, olog) = (p.dir.path().join("q2.log"), p.dir.path().join("o2.log"));
    let (qimg, oimg) = (p.dir.path().join("q2.img"), p.dir.path().join("o2.img"));
    std::fs::copy(p.log("q"), &olog).unwrap();
    std::fs::copy(p.log("o"), &qlog).unwrap();
    std::fs::copy(p.img("q"), &oimg).unwrap();
    std::fs::copy(p.img("o"), &qimg).unwrap();
    qemu(&p.img("q"), &p.log("q"), &ap, b, true).unwrap();
    oxemu(&p.img("o"), &p.log("o"), &ap, b, true).unwrap();
    p.same();
    qemu(&qimg, &qlog, &ap, b, true).unwrap();
    oxemu(&oimg, &olog, &ap, b, true).unwrap();
    let q = std::fs::read(&qlog).unwrap();
    assert!(
        q == std::fs::read(&olog).unwrap(),
        "cross-appended logs differ"
    );
    assert!(
        q == std::fs::read(p.log("q")).unwrap(),
        "cross-appended log differs from qemu's"
    );
    // Appending to an empty log starts one with 512-byte sectors.
    let p = Pair::new();
    p.run(&ap, a, true);
    assert_eq!(read_log(&p.log("q")).unwrap().sector_size(), 512);
    p.same();
}

#[test]
fn same_errors_as_qemu() {
    let p = Pair::new();
    let ops = [W(0, 512, 1, false)];
    let check = |o: BlkLogWritesOptions, who_log: &str| {
        let q = qemu(&p.img("q"), &p.log(who_log), &o, &ops, true).unwrap_err();
        let x = oxemu(&p.img("o"), &p.log(who_log), &o, &ops, true).unwrap_err();
        let q = q
            .trim()
            .strip_prefix("qemu-io: can't open: ")
            .unwrap_or(&q)
            .to_string();
        assert!(x.starts_with(&q), "qemu: {q:?}, oxemu: {x:?}");
    };
    for o in [
        BlkLogWritesOptions {
            log_sector_size: Some(16),
            ..Default::default()
        },
        BlkLogWritesOptions {
            log_sector_size: Some(1000),
            ..Default::default()
        },
        BlkLogWritesOptions {
            log_sector_size: Some(1 << 24),
            ..Default::default()
        },
        BlkLogWritesOptions {
            log_super_update_interval: Some(0),
            ..Default::default()
        },
        BlkLogWritesOptions {
            log_append: true,
            log_sector_size: Some(512),
            ..Default::default()
        },
    ] {
        check(o, "q");
    }
    // Bad logs for log-append.
    p.run(&BlkLogWritesOptions::default(), &mixed(), true);
    let good = std::fs::read(p.log("q")).unwrap();
    let log = read_log(&p.log("q")).unwrap();
    let second = log.entries[1].log_offset as usize;
    let ap = BlkLogWritesOptions {
        log_append: true,
        ..Default::default()
    };
    let corrupt: [(usize, &[u8]); 4] = [
        (0, b"x"),              // magic
        (8, &[9]),              // version
        (24, &[0, 3]),          // sector size 768
        (second + 16, &[0x41]), // flags of entry 1
    ];
    for (at, bytes) in corrupt {
        let mut b = good.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        std::fs::write(p.log("q"), &b).unwrap();
        check(ap.clone(), "q");
    }
}
