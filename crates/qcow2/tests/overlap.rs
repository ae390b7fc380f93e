//! Metadata overlap checks, side by side with qemu-io 7.2: a crafted L2 entry or
//! refcount that would send a guest write over the image's own metadata is refused,
//! the image is marked corrupt, and the metadata is left as it was.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use oxemu_block::{BlockDriver, BlockDriverExt, EventLoop, FileDriver, FileOptions};
use oxemu_qcow2::overlap::OverlapCheck;
use oxemu_qcow2::{Qcow2, Qcow2OpenOptions};

const COPIED: u64 = 1 << 63;

fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
}

/// Layout of a fresh qemu-img image with guest cluster 0 written.
struct Layout {
    cs: u64,
    l1: u64,
    reftable: u64,
    refblock: u64,
    l2: u64,
}

fn make(dir: &Path) -> (PathBuf, Layout) {
    let p = dir.join("base.qcow2");
    common::run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", p.to_str().unwrap(), "4M"],
    );
    common::run(
        "qemu-io",
        &["-c", "write -P 0x11 0 64k", p.to_str().unwrap()],
    );
    let b = std::fs::read(&p).unwrap();
    let cs = 1u64 << u32::from_be_bytes(b[20..24].try_into().unwrap());
    let l1 = be64(&b, 40);
    let reftable = be64(&b, 48);
    let refblock = be64(&b, reftable as usize);
    let l2 = be64(&b, l1 as usize) & 0x00ff_ffff_ffff_fe00;
    (
        p,
        Layout {
            cs,
            l1,
            reftable,
            refblock,
            l2,
        },
    )
}

fn patch(p: &Path, off: u64, bytes: &[u8]) {
    let mut b = std::fs::read(p).unwrap();
    b[off as usize..off as usize + bytes.len()].copy_from_slice(bytes);
    std::fs::write(p, b).unwrap();
}

fn corrupt_bit(p: &Path) -> bool {
    let out = common::run(
        "qemu-img",
        &["info", "-U", "--output=json", p.to_str().unwrap()],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["format-specific"]["data"]["corrupt"].as_bool().unwrap()
}

/// qemu-io's write at guest `off`: (succeeded, stderr+stdout).
fn qemu_write(p: &Path, off: u64) -> (bool, String) {
    let out = Command::new("qemu-io")
        .args(["-c", &format!("write -P 0x55 {off} 512")])
        .arg(p)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success() && !text.contains("write failed"), text)
}

fn oxemu_write(p: &Path, off: u64, mode: OverlapCheck) -> std::io::Result<()> {
    let lp = EventLoop::with_defaults().unwrap();
    lp.block_on(async {
        let f: Arc<dyn BlockDriver> = Arc::new(FileDriver::open(&FileOptions::new(p)).unwrap());
        let q = Qcow2::open(
            f,
            Qcow2OpenOptions {
                overlap_check: mode,
                ..Default::default()
            },
        )
        .await?;
        // Metadata reaches the disk at close: its checks fail there.
        let r = q.write_at(off, &[0x55; 512]).await;
        let c = q.close().await;
        r.and(c)
    })
}

/// Runs the same crafted image through qemu-io and oxemu; both must refuse the
/// write at guest `off` as overlapping `what`, mark the image corrupt and leave the
/// metadata bytes at `[meta, meta + cs)` alone.
fn both_refuse(
    dir: &Path,
    name: &str,
    craft: impl Fn(&Path, &Layout),
    off: u64,
    what: &str,
    meta: impl Fn(&Layout) -> u64,
) {
    let (base, lay) = make(dir);
    craft(&base, &lay);
    let q = dir.join(format!("{name}-qemu.qcow2"));
    let o = dir.join(format!("{name}-oxemu.qcow2"));
    std::fs::copy(&base, &q).unwrap();
    std::fs::copy(&base, &o).unwrap();
    let m = meta(&lay) as usize;
    let before = std::fs::read(&base).unwrap()[m..m + lay.cs as usize].to_vec();

    let (ok, text) = qemu_write(&q, off);
    let expect = format!("Preventing invalid write on metadata (overlaps with {what})");
    assert!(!ok && text.contains(&expect), "{name}: qemu-io: {text}");
    assert!(text.contains("Marking image as corrupt"), "{text}");

    let e = oxemu_write(&o, off, OverlapCheck::Cached).unwrap_err();
    assert!(e.to_string().contains(&expect), "{name}: oxemu: {e}");

    for p in [&q, &o] {
        assert!(corrupt_bit(p), "{name}: {} not marked corrupt", p.display());
        let after = std::fs::read(p).unwrap()[m..m + lay.cs as usize].to_vec();
        assert_eq!(
            before,
            after,
            "{name}: metadata at {m:#x} changed in {}",
            p.display()
        );
    }
    // Marked corrupt: a read-write open is refused, by both.
    assert!(oxemu_write(&o, off, OverlapCheck::Cached).is_err());
    assert!(!qemu_write(&q, off).0);
}

#[test]
fn crafted_l2_entries_are_refused_as_qemu() {
    let d = tempfile::tempdir().unwrap();
    // Guest cluster 0's L2 entry points at each kind of metadata in turn.
    let point_at = |target: fn(&Layout) -> u64| {
        move |p: &Path, l: &Layout| patch(p, l.l2, &(target(l) | COPIED).to_be_bytes())
    };
    both_refuse(
        d.path(),
        "l1",
        point_at(|l| l.l1),
        0,
        "active L1 table",
        |l| l.l1,
    );
    both_refuse(
        d.path(),
        "reftable",
        point_at(|l| l.reftable),
        0,
        "refcount table",
        |l| l.reftable,
    );
    both_refuse(
        d.path(),
        "refblock",
        point_at(|l| l.refblock),
        0,
        "refcount block",
        |l| l.refblock,
    );
    both_refuse(
        d.path(),
        "l2",
        point_at(|l| l.l2),
        0,
        "active L2 table",
        |l| l.l2,
    );
}

#[test]
fn an_l1_entry_naming_the_refcount_table_is_not_written_back_as_l2() {
    let d = tempfile::tempdir().unwrap();
    // The "L2 table" is the refcount table: the guest write itself goes to a new
    // cluster, but writing the table back (at flush) would overwrite the refcounts.
    let l1_at_reftable =
        |p: &Path, l: &Layout| patch(p, l.l1, &(l.reftable | COPIED).to_be_bytes());
    both_refuse(d.path(), "l1e", l1_at_reftable, 0, "refcount table", |l| {
        l.reftable
    });
}

#[test]
fn a_free_looking_l2_table_is_not_handed_out_as_data() {
    let d = tempfile::tempdir().unwrap();
    // The L2 table's refcount reads 0, so the allocator finds it free; the
    // allocating write at guest 1M (an unallocated cluster) must not land on it.
    let free_l2 = |p: &Path, l: &Layout| {
        let idx = l.l2 / l.cs;
        patch(p, l.refblock + 2 * idx, &0u16.to_be_bytes());
    };
    both_refuse(
        d.path(),
        "alloc",
        free_l2,
        1 << 20,
        "active L2 table",
        |l| l.l2,
    );
}

#[test]
fn levels_none_constant_and_cached() {
    let d = tempfile::tempdir().unwrap();
    let (base, lay) = make(d.path());
    // Over an L2 table: only `cached` looks at L2 tables.
    patch(&base, lay.l2, &(lay.l2 | COPIED).to_be_bytes());
    let c = d.path().join("c.qcow2");
    std::fs::copy(&base, &c).unwrap();
    assert!(oxemu_write(&c, 0, OverlapCheck::Constant).is_ok());
    // Over the refcount table: `constant` refuses too, `none` lets it through.
    let (base, lay) = make(d.path());
    patch(&base, lay.l2, &(lay.reftable | COPIED).to_be_bytes());
    std::fs::copy(&base, &c).unwrap();
    assert!(oxemu_write(&c, 0, OverlapCheck::Constant).is_err());
    std::fs::copy(&base, &c).unwrap();
    assert!(oxemu_write(&c, 0, OverlapCheck::None).is_ok());
    assert_eq!(
        "all".parse::<OverlapCheck>().unwrap_err(),
        "overlap-check 'all' (inactive L2 tables) is not supported; use 'cached' or 'constant'"
    );
    assert!("bogus".parse::<OverlapCheck>().is_err());
}
