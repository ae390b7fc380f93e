//! `qemu-img check`: recompute every cluster's reference count from the metadata,
//! compare with the refcount blocks, and optionally repair, following the order and
//! the rules of QEMU 7.2's qcow2 checker.
//!
//! 1. The snapshot table is read ([`crate::snapshot`]); if it cannot be, the check fails.
//! 2. An in-memory refcount table (one counter per host cluster) is built from the
//!    header, every entry of the active L1 table and of each snapshot's L1 table with
//!    every entry of each L2 table they point to (VM state lives in L1 entries past the
//!    virtual disk size), the snapshot table, the refcount table and the refcount
//!    blocks (`walk.rs`).
//! 3. It is compared with the refcount blocks; mismatches are leaks (refcount too
//!    high) or corruptions (too low). `-r leaks`/`-r all` fix them in place; a cluster
//!    in use with refcount 0 (or a broken refcount block) needs the refcount
//!    structure to be rebuilt from the in-memory table, which only `-r all` does
//!    (`compare.rs`, `rebuild.rs`).
//! 4. The COPIED flag of active L1 and L2 entries must be set exactly when the
//!    refcount is 1.
//!
//! L2 tables and refcount blocks are read straight from the file, one cluster per read,
//! and repairs write straight to it; the driver's caches are written back before and
//! reloaded after, so a check of a 4 GiB image with 512-byte clusters (8 M clusters)
//! takes seconds.

mod compare;
mod rebuild;
mod walk;

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use oxemu_block::{BlockDriver, BlockDriverExt};

use crate::header::{Header, INCOMPAT_CORRUPT, INCOMPAT_DIRTY};
use crate::snapshot::Snapshot;
use crate::Qcow2;

/// What `check` may repair (`qemu-img check -r`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Repair {
    /// Only report.
    #[default]
    None,
    /// Fix refcounts that are too high (leaked clusters).
    Leaks,
    /// Fix leaks, refcounts that are too low, wrong COPIED flags and unaligned zero
    /// clusters; rebuild the refcount structure when it is broken.
    All,
}

impl Repair {
    fn leaks(self) -> bool {
        self != Repair::None
    }
    fn errors(self) -> bool {
        self == Repair::All
    }
}

/// Result of a check, in the shape of `qemu-img check --output=json`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Corruptions found and not repaired.
    pub corruptions: u64,
    /// Leaked clusters found and not repaired.
    pub leaks: u64,
    /// Errors that prevented checking (I/O errors, unsupported metadata).
    pub check_errors: u64,
    /// One past the last cluster in use.
    pub image_end_offset: u64,
    /// Guest clusters of the virtual disk.
    pub total_clusters: u64,
    /// Guest clusters allocated in this image.
    pub allocated_clusters: u64,
    /// Allocated clusters not contiguous with their predecessor.
    pub fragmented_clusters: u64,
    /// Compressed clusters.
    pub compressed_clusters: u64,
    /// Corruptions repaired.
    pub corruptions_fixed: u64,
    /// Leaks repaired.
    pub leaks_fixed: u64,
    /// Findings, one per line, in qemu-img's words
    /// (`Leaked cluster 5 refcount=1 reference=0`, `Repairing cluster ...`).
    pub messages: Vec<String>,
}

/// Most messages kept in a report; further ones are counted in a final line.
const MAX_MESSAGES: usize = 10_000;

/// L1 entry bits that must be zero.
const L1E_RESERVED: u64 = 0x7f00_0000_0000_01ff;
/// Standard L2 entry bits that must be zero.
const L2E_STD_RESERVED: u64 = 0x3f00_0000_0000_01fe;
/// Refcount table entry bits that must be zero.
const REFT_RESERVED: u64 = 0x1ff;

/// State of one check run: the image geometry, the tables, the in-memory refcounts.
struct Ck {
    file: Arc<dyn BlockDriver>,
    h: Header,
    cs: u64,
    /// Bytes of one L2 entry (16 with extended L2).
    esize: usize,
    file_len: u64,
    l1: Vec<u64>,
    reftable: Vec<u64>,
    snaps: Vec<Snapshot>,
    snap_offset: u64,
    snap_size: u64,
    /// In-memory refcount of every host cluster.
    refs: Vec<u32>,
    /// Largest refcount the image's refcount width can hold (capped to `u32`).
    rc_max: u32,
    /// After a comparison: on-disk refcounts that differ from `refs` (None: unreadable).
    disk_diff: HashMap<u64, Option<u64>>,
    /// L2 entries still allowed to be scanned (bounds the time on hostile images).
    budget: u64,
    r: CheckReport,
    msgs: Vec<String>,
    suppressed: u64,
}


impl Ck {
    fn msg(&mut self, m: String) {
        if self.msgs.len() < MAX_MESSAGES {
            self.msgs.push(m);
        } else {
            self.suppressed += 1;
        }
    }

    /// Reads `buf.len()` bytes at `off`; what lies past the end of the file reads as
    /// zeroes (as QEMU's block layer does).
    async fn read_padded(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        buf.fill(0);
        if off >= self.file_len {
            return Ok(());
        }
        let n = ((self.file_len - off).min(buf.len() as u64)) as usize;
        self.file.read_at(off, &mut buf[..n]).await
    }

    async fn run(&mut self, fix: Repair) -> io::Result<()> {
        let cs = self.cs;
        let nb = self.file_len.div_ceil(cs);
        if nb > i32::MAX as u64 {
            self.r.check_errors += 1;
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        }
        self.r.total_clusters = self.h.size.div_ceil(cs);
        self.grow(nb)?;
        if self.h.version >= 3 {
            for i in 0..self.snaps.len() {
                // Version 3 entries must record the 64-bit VM state size and disk size.
                if self.snaps[i].extra_data_size < 16 {
                    self.r.corruptions += 1;
                    self.msg(format!("ERROR snapshot table entry {i} is incomplete"));
                }
            }
        }
        let mut rebuild = false;
        self.calculate(fix, &mut rebuild).await?;
        let pre = self.r.clone();
        let mut highest = 0;
        self.compare(Repair::None, &mut rebuild, &mut highest).await?;
        if rebuild && fix.errors() {
            let old = self.r.clone();
            self.msg("Rebuilding refcount structure".into());
            if let Err(e) = self.rebuild().await {
                self.r.check_errors += 1;
                self.msg(e.to_string());
                return Err(e);
            }
            self.r.corruptions = 0;
            self.r.leaks = 0;
            rebuild = false;
            self.refs.fill(0);
            self.calculate(Repair::None, &mut rebuild).await?;
            let saved = std::mem::take(&mut self.r);
            self.compare(Repair::Leaks, &mut rebuild, &mut highest)
                .await?;
            if rebuild {
                self.msg("ERROR rebuilt refcount structure is still broken".into());
            }
            let fresh_leaks = self.r.leaks;
            self.r = saved;
            if self.r.corruptions < old.corruptions {
                self.r.corruptions_fixed += old.corruptions - self.r.corruptions;
            }
            if self.r.leaks < old.leaks {
                self.r.leaks_fixed += old.leaks - self.r.leaks;
            }
            self.r.leaks += fresh_leaks;
        } else if fix.leaks() {
            if rebuild {
                self.msg("ERROR need to rebuild refcount structures".into());
                self.r.check_errors += 1;
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            if self.r.leaks > 0 || self.r.corruptions > 0 {
                self.r = pre;
                self.compare(fix, &mut rebuild, &mut highest).await?;
            }
        }
        self.oflag_copied(fix).await?;
        self.r.image_end_offset = (highest + 1) * cs;
        Ok(())
    }

    /// Makes the in-memory refcount table hold at least `n` clusters.
    fn grow(&mut self, n: u64) -> io::Result<()> {
        let n = n as usize;
        if n > self.refs.len() {
            if self.refs.try_reserve(n - self.refs.len()).is_err() {
                self.r.check_errors += 1;
                return Err(io::Error::from_raw_os_error(libc::ENOMEM));
            }
            self.refs.resize(n, 0);
        }
        Ok(())
    }
}

impl Qcow2 {
    /// Checks the image; with `repair`, fixes what it may (writing straight to the
    /// file) and, when no corruption is left, clears the dirty and corrupt bits.
    /// An `Err` is a check that could not complete (qemu-img's "Check failed");
    /// [`Qcow2::check_with_messages`] also returns what was found until then.
    pub async fn check(&self, repair: Repair) -> io::Result<CheckReport> {
        let (r, res) = self.check_with_messages(repair).await;
        res.map(|()| r)
    }

    /// [`Qcow2::check`], returning the report (with the messages printed so far) even
    /// when the check could not complete.
    pub async fn check_with_messages(&self, repair: Repair) -> (CheckReport, io::Result<()>) {
        let mut m = self.meta.lock().await;
        if repair != Repair::None && self.read_only {
            return (
                CheckReport::default(),
                Err(io::Error::from_raw_os_error(libc::EROFS)),
            );
        }
        if !self.read_only {
            if let Err(e) = m.writeback().await {
                return (CheckReport::default(), Err(e));
            }
        }
        let table = match crate::snapshot::read_table(self.file.as_ref(), &m.h).await {
            Ok(t) => t,
            Err(e) => {
                let r = CheckReport {
                    check_errors: 1,
                    messages: vec![format!("ERROR failed to read the snapshot table: {e}")],
                    ..Default::default()
                };
                return (r, Err(e));
            }
        };
        let h = m.h.clone();
        let cs = h.cluster_size();
        let mut ck = Ck {
            file: self.file.clone(),
            esize: if h.extended_l2() { 16 } else { 8 },
            cs,
            file_len: self.file.size(),
            l1: m.l1.clone(),
            reftable: m.reftable.clone(),
            snap_offset: table.offset,
            snap_size: table.size,
            snaps: table.snapshots,
            refs: Vec::new(),
            rc_max: crate::refcount::max(h.refcount_order).min(u32::MAX as u64) as u32,
            disk_diff: HashMap::new(),
            budget: 0,
            r: CheckReport::default(),
            msgs: Vec::new(),
            suppressed: 0,
            h,
        };
        // Enough for every L2 table of the file to be scanned once per L1 table.
        ck.budget = (1 << 24) + 2 * (1 + ck.snaps.len() as u64) * (ck.file_len / 8);
        let mut res = ck.run(repair).await;
        if ck.suppressed > 0 {
            ck.msgs
                .push(format!("({} further messages suppressed)", ck.suppressed));
        }
        let mut r = std::mem::take(&mut ck.r);
        r.messages = std::mem::take(&mut ck.msgs);
        if repair != Repair::None {
            if let Err(e) = self.after_repair(&mut m, &ck.h, &r, res.is_ok()).await {
                res = res.and(Err(e));
            }
        }
        (r, res)
    }

    /// Points the driver at what the repair wrote, clears the dirty and corrupt bits of
    /// an image left without corruption, and reloads the cached tables.
    async fn after_repair(
        &self,
        m: &mut crate::meta::Meta,
        h: &Header,
        r: &CheckReport,
        ok: bool,
    ) -> io::Result<()> {
        m.h.refcount_table_offset = h.refcount_table_offset;
        m.h.refcount_table_clusters = h.refcount_table_clusters;
        let clean = ok && r.check_errors == 0 && r.corruptions == 0;
        let bits = INCOMPAT_DIRTY | INCOMPAT_CORRUPT;
        self.file.flush().await?;
        if clean && m.h.incompatible_features & bits != 0 {
            m.h.incompatible_features &= !bits;
            m.write_header().await?;
            m.corrupt = false;
            self.file.flush().await?;
        }
        m.reload().await
    }
}
