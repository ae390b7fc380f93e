//! Building the in-memory refcount table: every structure that references clusters
//! is walked and each referenced cluster counted (QEMU's `calculate_refcounts`).

use std::io;

use oxemu_block::BlockDriverExt;

use super::{Ck, Repair, L1E_RESERVED, L2E_STD_RESERVED, REFT_RESERVED};
use crate::header::MAX_L1_BYTES;
use crate::meta::{COMPRESSED, OFFSET_MASK, ZERO};

/// Extended L2 bitmap: the 32 "allocated" bits.
const BITMAP_ALL_ALLOC: u64 = 0xffff_ffff;
/// Extended L2 bitmap: the 32 "reads as zero" bits.
const BITMAP_ALL_ZERO: u64 = 0xffff_ffff_0000_0000;

/// How an L2 entry maps its cluster (QEMU's cluster types).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Unallocated,
    ZeroPlain,
    ZeroAlloc,
    Normal,
    Compressed,
}

pub(super) fn kind(e: u64, ext: bool) -> Kind {
    if e & COMPRESSED != 0 {
        Kind::Compressed
    } else if e & ZERO != 0 && !ext {
        if e & OFFSET_MASK != 0 {
            Kind::ZeroAlloc
        } else {
            Kind::ZeroPlain
        }
    } else if e & OFFSET_MASK == 0 {
        Kind::Unallocated
    } else {
        Kind::Normal
    }
}

/// Entry `i` (and its extended-L2 bitmap) of a raw L2 table.
pub(super) fn l2_entry(t: &[u8], i: usize, esize: usize) -> (u64, u64) {
    let o = i * esize;
    let e = u64::from_be_bytes(t[o..o + 8].try_into().unwrap());
    let b = if esize == 16 {
        u64::from_be_bytes(t[o + 8..o + 16].try_into().unwrap())
    } else {
        0
    };
    (e, b)
}

impl Ck {
    /// Counts one reference to every cluster of `[off, off + size)`.
    pub(super) fn inc(&mut self, off: u64, size: u64) -> io::Result<()> {
        if size == 0 {
            return Ok(());
        }
        // The last cluster may extend past the end of the file, by less than a cluster.
        if off as i128 + size as i128 - self.file_len as i128 >= self.cs as i128 {
            self.msg(format!("ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x{off:x} size 0x{size:x}"));
            self.r.corruptions += 1;
            return Ok(());
        }
        let (first, last) = (off / self.cs, (off + size - 1) / self.cs);
        self.grow(last + 1)?;
        for k in first..=last {
            let n = &mut self.refs[k as usize];
            if *n >= self.rc_max {
                self.msg(format!(
                    "ERROR: overflow cluster offset=0x{:x}",
                    k * self.cs
                ));
                self.msg("Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing".into());
                self.r.corruptions += 1;
                continue;
            }
            *n += 1;
        }
        Ok(())
    }

    /// Takes `n` L2 entries from the scan budget; fails the check when it is spent
    /// (only hostile images, with L1 tables sharing L2 tables without end, get there).
    fn spend(&mut self, n: u64) -> io::Result<()> {
        if self.budget < n {
            self.r.check_errors += 1;
            self.msg("ERROR the metadata references too many L2 tables; check aborted".into());
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        }
        self.budget -= n;
        Ok(())
    }

    /// How many entries of the L2 table at `off` lie inside the file (the rest read
    /// as zeroes), taken from the scan budget.
    pub(super) fn l2_entries_inside(&mut self, off: u64) -> io::Result<usize> {
        let inside = self.file_len.saturating_sub(off).min(self.cs) as usize;
        let n = inside.div_ceil(self.esize);
        self.spend(n as u64)?;
        Ok(n)
    }

    /// Counts an L1 table, its L2 tables and the clusters they map.
    async fn check_l1(
        &mut self,
        l1_off: u64,
        l1_size: u32,
        frag: bool,
        fix: Repair,
        active: bool,
    ) -> io::Result<()> {
        if l1_size == 0 {
            return Ok(());
        }
        let bytes = l1_size as u64 * 8;
        self.inc(l1_off, bytes)?;
        // Only the part inside the file can hold entries; the rest reads as zeroes.
        let inside = self.file_len.saturating_sub(l1_off).min(bytes);
        let mut raw = vec![0u8; inside as usize];
        if let Err(e) = self.file.read_at(l1_off, &mut raw).await {
            self.msg("ERROR: I/O error in check_refcounts_l1".into());
            self.r.check_errors += 1;
            return Err(e);
        }
        let entries: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .filter(|&e| e != 0)
            .collect();
        // L2 tables are read ahead in batches (concurrent reads), except when repairs
        // may rewrite a table that a later entry points to again.
        let batch = if fix.errors() {
            1
        } else {
            ((16 << 20) / self.cs as usize).clamp(1, 256)
        };
        for chunk in entries.chunks(batch) {
            let mut tables = self.read_l2_batch(chunk).await;
            for (j, &e) in chunk.iter().enumerate() {
                if e & L1E_RESERVED != 0 {
                    self.msg(format!(
                        "ERROR found L1 entry with reserved bits set: {e:x}"
                    ));
                    self.r.corruptions += 1;
                }
                let l2 = e & OFFSET_MASK;
                self.inc(l2, self.cs)?;
                if l2 % self.cs != 0 {
                    self.msg(format!(
                        "ERROR l2_offset={l2:x}: Table is not cluster aligned; L1 entry corrupted"
                    ));
                    self.r.corruptions += 1;
                }
                let t = std::mem::replace(&mut tables[j], Ok(Vec::new()));
                self.check_l2(l2, t, frag, fix, active).await?;
            }
        }
        Ok(())
    }

    /// Reads the L2 tables of the L1 entries `l1e` concurrently.
    pub(super) async fn read_l2_batch(&self, l1e: &[u64]) -> Vec<io::Result<Vec<u8>>> {
        let reads = l1e.iter().map(|&e| async move {
            let mut t = vec![0u8; self.cs as usize];
            self.read_padded(e & OFFSET_MASK, &mut t).await.map(|()| t)
        });
        futures::future::join_all(reads).await
    }

    /// Counts the clusters one L2 table maps, checking its entries.
    async fn check_l2(
        &mut self,
        l2: u64,
        table: io::Result<Vec<u8>>,
        frag: bool,
        fix: Repair,
        active: bool,
    ) -> io::Result<()> {
        let mut t = match table {
            Ok(t) => t,
            Err(e) => {
                self.msg("ERROR: I/O error in check_refcounts_l2".into());
                self.r.check_errors += 1;
                return Err(e);
            }
        };
        let n = self.l2_entries_inside(l2)?;
        let (cs, esize, ext) = (self.cs, self.esize, self.esize == 16);
        let mut next_contiguous = 0u64;
        for i in 0..n {
            let (mut e, bitmap) = l2_entry(&t, i, esize);
            let k = kind(e, ext);
            if k != Kind::Compressed && e & L2E_STD_RESERVED != 0 {
                self.msg(format!(
                    "ERROR found l2 entry with reserved bits set: {e:x}"
                ));
                self.r.corruptions += 1;
            }
            match k {
                Kind::Compressed => {
                    let x = 62 - (self.h.cluster_bits - 8);
                    if e & crate::meta::COPIED != 0 {
                        self.msg(format!("ERROR: coffset=0x{:x}: copied flag must never be set for compressed clusters", e & ((1u64 << x) - 1)));
                        e &= !crate::meta::COPIED;
                        self.r.corruptions += 1;
                    }
                    if bitmap != 0 {
                        self.msg(format!("ERROR compressed cluster {i} with non-zero subcluster allocation bitmap, entry=0x{e:x}"));
                        self.r.corruptions += 1;
                        continue;
                    }
                    let host = e & ((1u64 << x) - 1);
                    let sectors = ((e >> x) & ((1u64 << (self.h.cluster_bits - 8)) - 1)) + 1;
                    self.inc(host, sectors * 512 - (host & 511))?;
                    if frag {
                        self.r.allocated_clusters += 1;
                        self.r.compressed_clusters += 1;
                        self.r.fragmented_clusters += 1;
                    }
                }
                Kind::ZeroAlloc | Kind::Normal => {
                    let off = e & OFFSET_MASK;
                    if (bitmap >> 32) & bitmap != 0 {
                        self.r.corruptions += 1;
                        self.msg(format!("ERROR offset={off:x}: Allocated cluster has corrupted subcluster allocation bitmap"));
                    }
                    if off % cs != 0 {
                        self.r.corruptions += 1;
                        let data = if ext {
                            bitmap & BITMAP_ALL_ALLOC != 0
                        } else {
                            e & ZERO == 0
                        };
                        if data {
                            self.msg(format!("ERROR offset={off:x}: Data cluster is not properly aligned; L2 entry corrupted."));
                        } else {
                            let tag = if fix.errors() { "Repairing" } else { "ERROR" };
                            self.msg(format!("{tag} offset={off:x}: Preallocated cluster is not properly aligned; L2 entry corrupted."));
                            if fix.errors() && self.zero_entry(l2, &mut t, i, active).await? {
                                continue;
                            }
                        }
                    }
                    if frag {
                        self.r.allocated_clusters += 1;
                        if next_contiguous != 0 && off != next_contiguous {
                            self.r.fragmented_clusters += 1;
                        }
                        next_contiguous = off + cs;
                    }
                    self.inc(off, cs)?;
                }
                Kind::ZeroPlain => {}
                Kind::Unallocated => {
                    if bitmap & BITMAP_ALL_ALLOC != 0 {
                        self.r.corruptions += 1;
                        self.msg(
                            "ERROR: Unallocated cluster has non-zero subcluster allocation map"
                                .into(),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Turns entry `i` of the L2 table at `l2` into a zero cluster without allocation
    /// (all its allocated subclusters into zero ones) and writes it. Returns whether
    /// it was repaired.
    async fn zero_entry(
        &mut self,
        l2: u64,
        t: &mut [u8],
        i: usize,
        active: bool,
    ) -> io::Result<bool> {
        let o = i * self.esize;
        if self.esize == 16 {
            let mut b = u64::from_be_bytes(t[o + 8..o + 16].try_into().unwrap());
            b |= b << 32;
            b &= BITMAP_ALL_ZERO;
            t[o..o + 8].copy_from_slice(&0u64.to_be_bytes());
            t[o + 8..o + 16].copy_from_slice(&b.to_be_bytes());
        } else {
            t[o..o + 8].copy_from_slice(&ZERO.to_be_bytes());
        }
        let at = l2 + o as u64;
        if self.overlaps_metadata(at, self.esize as u64, active) {
            self.msg("ERROR: Overlap check failed".into());
            self.r.check_errors += 1;
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        if let Err(e) = self.file.write_at(at, &t[o..o + self.esize]).await {
            self.msg(format!("ERROR: Failed to overwrite L2 table entry: {e}"));
            self.r.check_errors += 1;
            return Ok(false);
        }
        if let Err(e) = self.file.flush().await {
            self.msg(format!("ERROR: Failed to overwrite L2 table entry: {e}"));
            self.r.check_errors += 1;
            return Ok(false);
        }
        self.r.corruptions -= 1;
        self.r.corruptions_fixed += 1;
        Ok(true)
    }

    /// True when a repair write to `[off, off + len)` would hit metadata other than
    /// an L2 table of the kind being repaired (QEMU's overlap check, "cached" mode).
    pub(super) fn overlaps_metadata(&self, off: u64, len: u64, active_l2: bool) -> bool {
        let cs = self.cs;
        let (a, b) = (off / cs * cs, (off + len).next_multiple_of(cs));
        let hit = |o: u64, l: u64| l > 0 && o < b && a < o.saturating_add(l);
        if off < cs
            || hit(self.h.l1_table_offset, self.h.l1_size as u64 * 8)
            || hit(
                self.h.refcount_table_offset,
                self.h.refcount_table_clusters as u64 * cs,
            )
            || hit(self.snap_offset, self.snap_size)
        {
            return true;
        }
        if self
            .snaps
            .iter()
            .any(|s| hit(s.l1_table_offset, s.l1_size as u64 * 8))
        {
            return true;
        }
        if self.reftable.iter().any(|e| hit(e & !REFT_RESERVED, cs)) {
            return true;
        }
        !active_l2 && self.l1.iter().any(|e| hit(e & OFFSET_MASK, cs))
    }

    /// Counts the refcount blocks and checks the refcount table's entries.
    async fn check_refblocks(&mut self, fix: Repair, rebuild: &mut bool) -> io::Result<()> {
        let cs = self.cs;
        for i in 0..self.reftable.len() {
            let e = self.reftable[i];
            let off = e & !REFT_RESERVED;
            let cluster = off / cs;
            if e & REFT_RESERVED != 0 {
                self.msg(format!(
                    "ERROR refcount table entry {i} has reserved bits set"
                ));
                self.r.corruptions += 1;
                *rebuild = true;
                continue;
            }
            if off % cs != 0 {
                self.msg(format!("ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted"));
                self.r.corruptions += 1;
                *rebuild = true;
                continue;
            }
            if cluster >= self.refs.len() as u64 {
                self.r.corruptions += 1;
                let tag = if fix.errors() { "Repairing" } else { "ERROR" };
                self.msg(format!("{tag} refcount block {i} is outside image"));
                if fix.errors() {
                    // QEMU refuses an end past i64::MAX with EINVAL before it tries.
                    let grown = match off.checked_add(cs).filter(|&e| e <= i64::MAX as u64) {
                        Some(end) => self.extend_file(end).await,
                        None => Err(io::Error::from_raw_os_error(libc::EINVAL)),
                    };
                    match grown {
                        Ok(()) => {
                            self.r.corruptions -= 1;
                            self.r.corruptions_fixed += 1;
                            self.inc(off, cs)?;
                            continue;
                        }
                        Err(err) => {
                            *rebuild = true;
                            self.msg(format!("ERROR could not resize image: {err}"));
                        }
                    }
                }
                continue;
            }
            if off != 0 {
                self.inc(off, cs)?;
                let n = self.refs[cluster as usize];
                if n != 1 {
                    self.msg(format!("ERROR refcount block {i} refcount={n}"));
                    self.r.corruptions += 1;
                    *rebuild = true;
                }
            }
        }
        Ok(())
    }

    /// Grows the file to `end` bytes so that a refcount block past its end is inside
    /// (refused beyond 1 GiB of growth: the entry is more likely garbage).
    async fn extend_file(&mut self, end: u64) -> io::Result<()> {
        if end > self.file_len.saturating_add(1 << 30) || end > i64::MAX as u64 {
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        }
        self.file.truncate(end).await?;
        self.file_len = self.file.size();
        let n = self.file_len.div_ceil(self.cs);
        self.grow(n)?;
        if end.div_ceil(self.cs) > n {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(())
    }

    /// Builds the in-memory refcount table (QEMU's `calculate_refcounts`).
    pub(super) async fn calculate(&mut self, fix: Repair, rebuild: &mut bool) -> io::Result<()> {
        self.inc(0, self.cs)?;
        let (l1_off, l1_size) = (self.h.l1_table_offset, self.h.l1_size);
        self.check_l1(l1_off, l1_size, true, fix, true).await?;
        for i in 0..self.snaps.len() {
            let s = &self.snaps[i];
            let (off, size) = (s.l1_table_offset, s.l1_size);
            if off % self.cs != 0 {
                let m = format!("ERROR snapshot {} ({}) l1_offset={off:#x}: L1 table is not cluster aligned; snapshot table entry corrupted", s.id, s.name);
                self.msg(m);
                self.r.corruptions += 1;
                continue;
            }
            if size as u64 > MAX_L1_BYTES / 8 {
                let m = format!("ERROR snapshot {} ({}) l1_size={size:#x}: L1 table is too large; snapshot table entry corrupted", s.id, s.name);
                self.msg(m);
                self.r.corruptions += 1;
                continue;
            }
            self.check_l1(off, size, false, fix, false).await?;
        }
        self.inc(self.snap_offset, self.snap_size)?;
        self.count_bitmaps().await?;
        self.inc(
            self.h.refcount_table_offset,
            self.h.refcount_table_clusters as u64 * self.cs,
        )?;
        self.check_refblocks(fix, rebuild).await
    }
}
