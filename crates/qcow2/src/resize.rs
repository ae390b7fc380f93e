//! Changing an image's virtual size (`resize`, `oxemu-img resize`), and preallocating
//! a range of guest clusters (`preallocation=` of create and resize).

use std::io;

use oxemu_block::{BlockDriver, BlockDriverExt};

use std::sync::atomic::Ordering;

use crate::create::Preallocation;
use crate::meta::{Meta, COPIED, OFFSET_MASK};
use crate::{os, Qcow2};

impl Qcow2 {
    /// Changes the virtual size without preallocation; see [`Qcow2::resize_with`].
    pub async fn resize(&self, size: u64) -> io::Result<()> {
        self.resize_with(size, Preallocation::Off).await
    }

    /// Changes the virtual size. Growing enlarges the L1 table when needed (a new table
    /// is written and flushed before the header points to it) and, with `prealloc`,
    /// allocates the new area as `qemu-img resize --preallocation` does. When a backing
    /// file reaches into the new area, the new area is zeroed, so that it reads as
    /// zeroes rather than as the backing file's data (as QEMU does). Shrinking drops
    /// the clusters past the new end; preallocation is refused for a shrink.
    pub async fn resize_with(&self, size: u64, prealloc: Preallocation) -> io::Result<()> {
        if self.read_only {
            return Err(os(libc::EROFS));
        }
        if size % 512 != 0 || size > crate::header::MAX_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "qcow2: size {size} must be a multiple of 512 and at most {}",
                    crate::header::MAX_SIZE
                ),
            ));
        }
        if self.header().await.nb_snapshots > 0 && self.version.load(Ordering::Acquire) < 3 {
            // Snapshots of v2 images need not record their disk size.
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "Can't resize a v2 image which has snapshots",
            ));
        }
        let cs = self.cluster_size();
        let old = self.size();
        if size < old {
            if prealloc != Preallocation::Off {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "Preallocation can't be used for shrinking an image",
                ));
            }
            self.shrink(size, old).await?;
        }
        let mut m = self.meta.lock().await;
        m.writeback().await?;
        let need = size.div_ceil(cs * m.l2_entries) as usize;
        if need > m.l1.len() {
            self.grow_l1(&mut m, need, Some(size)).await?;
        } else {
            m.h.size = size;
            m.write_header().await?;
            self.file.flush().await?;
        }
        drop(m);
        self.size.store(size, Ordering::Release);
        if size > old {
            self.fill_grown_area(old, size, prealloc).await?;
        }
        Ok(())
    }

    /// Drops the clusters past `size` (the image was `old` bytes long).
    async fn shrink(&self, size: u64, old: u64) -> io::Result<()> {
        let cs = self.cluster_size();
        let from = size.next_multiple_of(cs);
        if from < old {
            self.zero_or_discard(from, old - from, true, true).await?;
        }
        // Make the discarded tail unallocated rather than zero-flagged, and give back
        // what is left there (v2 images over a backing file cannot discard).
        let mut m = self.meta.lock().await;
        let l1_used = size.div_ceil(cs * m.l2_entries) as usize;
        let first_l1 = (from / cs / m.l2_entries) as usize;
        for l1i in first_l1..m.l1.len() {
            if m.l1[l1i] & OFFSET_MASK == 0 {
                continue;
            }
            let lo = (l1i as u64 * m.l2_entries).max(from / cs);
            for gc in lo..(l1i as u64 + 1) * m.l2_entries {
                let (e, bm) = m.entry(gc).await?;
                if e != 0 || bm != 0 {
                    m.set_entry(gc, 0, 0).await?;
                    self.release_discarded(&mut m, e);
                }
            }
        }
        // L2 tables wholly past the new end go too (QEMU's L1 shrink), VM state
        // included. Their entries are written back as zeroes first.
        m.writeback().await?;
        let mut dropped = false;
        for l1i in l1_used..m.l1.len() {
            let t = m.l1[l1i] & OFFSET_MASK;
            if t != 0 {
                m.l1[l1i] = 0;
                m.free_later_discard(t, cs);
                dropped = true;
            }
        }
        if dropped {
            m.l1_changed();
        }
        m.writeback().await?;
        m.drop_unused_refblocks().await?;
        self.truncate_unused_tail(&mut m).await
    }

    /// Gives the area `[old, size)` that a resize added its contents: preallocated
    /// clusters, or zeroes over a backing file that reaches into it.
    async fn fill_grown_area(
        &self,
        old: u64,
        size: u64,
        prealloc: Preallocation,
    ) -> io::Result<()> {
        let cs = self.cluster_size();
        let backing_len = self.backing.as_ref().map_or(0, |b| b.driver.size());
        if prealloc != Preallocation::Off {
            // The cluster holding the old end keeps its head: an ordinary write of
            // zeroes allocates it with copy-on-write of what lies before `old`.
            let head_end = old.next_multiple_of(cs).min(size);
            if head_end > old {
                let (e, _) = self.meta.lock().await.entry(old / cs).await?;
                if e & crate::meta::OFFSET_MASK == 0 {
                    let z = vec![0u8; (head_end - old) as usize];
                    self.write_at(old, &z).await?;
                }
            }
            // QEMU marks metadata-preallocated clusters over a backing file as zero.
            let zero_flag = backing_len > old && prealloc == Preallocation::Metadata;
            return self
                .preallocate(old.div_ceil(cs), size.div_ceil(cs), prealloc, zero_flag)
                .await;
        }
        if backing_len <= old {
            return Ok(());
        }
        // As QEMU: explicit zeroes up to the next subcluster (extended L2) or cluster
        // boundary, zero flags from there on.
        let unit = if self.ext { cs / 32 } else { cs };
        let zero_start = old.next_multiple_of(unit).min(size);
        if zero_start > old {
            let z = vec![0u8; (zero_start - old) as usize];
            self.write_at(old, &z).await?;
        }
        let whole = zero_start.next_multiple_of(cs).min(size);
        if whole > zero_start {
            self.zero_subclusters(zero_start, whole).await?;
        }
        if size > whole {
            self.zero_or_discard(whole, size - whole, false, false)
                .await?;
        }
        Ok(())
    }

    /// Sets the zero bits of the subclusters of one cluster from `from` (subcluster
    /// aligned) to `to` (the cluster's end or the image end), in an extended L2 entry.
    async fn zero_subclusters(&self, from: u64, to: u64) -> io::Result<()> {
        let cs = self.cluster_size();
        let sc = cs / 32;
        let gc = from / cs;
        let mut m = self.meta.lock().await;
        let (e, mut bm) = m.entry(gc).await?;
        if e & crate::meta::COMPRESSED != 0 || m.inflight.contains_key(&gc) {
            drop(m);
            let z = vec![0u8; (to - from) as usize];
            return self.write_at(from, &z).await;
        }
        for i in (from % cs) / sc..(to - gc * cs).div_ceil(sc) {
            bm &= !(1u64 << i);
            bm |= 1u64 << (32 + i);
        }
        m.set_entry(gc, e, bm).await
    }

    /// Allocates every unallocated guest cluster in `[first, end)` (cluster indexes)
    /// as `preallocation=metadata|falloc|full` does: L2 tables and data clusters,
    /// with the data's file blocks reserved (falloc) or written with zeroes (full).
    /// Clusters that reuse storage freed earlier are zeroed in every mode, so that a
    /// preallocated cluster never shows old data. With `zero_flag`, v3 entries also
    /// carry the zero flag (or zero subcluster bits).
    pub(crate) async fn preallocate(
        &self,
        first: u64,
        end: u64,
        mode: Preallocation,
        zero_flag: bool,
    ) -> io::Result<()> {
        if mode == Preallocation::Off || first >= end {
            return Ok(());
        }
        self.before_write().await?;
        let cs = self.cluster_size();
        let old_file_end = self.file.size().next_multiple_of(cs);
        let mut data = Vec::new();
        let top = {
            let mut m = self.meta.lock().await;
            for gc in first..end {
                m.l2_table(gc, true).await?;
                let (e, _) = m.entry(gc).await?;
                if e & crate::meta::OFFSET_MASK != 0 {
                    continue;
                }
                let host = m.alloc_cluster().await?;
                data.push(host);
                let zero = zero_flag && m.h.version == 3;
                let (flag, bitmap) = match (m.ext, zero) {
                    (true, true) => (0, crate::meta::ALL_ZERO_BITMAP),
                    (true, false) => (0, 0xffff_ffff),
                    (false, true) => (crate::meta::ZERO, 0),
                    (false, false) => (0, 0),
                };
                m.set_entry(gc, host | COPIED | flag, bitmap).await?;
            }
            m.top_end().max(self.file.size())
        };
        if top > self.file.size() {
            self.file.truncate(top).await?;
        }
        // Only data clusters are touched: L2 tables allocated in between may already
        // have been written back.
        data.sort_unstable();
        let z = vec![0u8; (1usize << 20).max(cs as usize)];
        let mut i = 0;
        while i < data.len() {
            let lo = data[i];
            let mut hi = lo + cs;
            i += 1;
            while i < data.len() && data[i] == hi && (hi - lo) < z.len() as u64 {
                hi += cs;
                i += 1;
            }
            let stale = lo < old_file_end;
            if stale || mode == Preallocation::Full {
                self.file.write_at(lo, &z[..(hi - lo) as usize]).await?;
            } else if mode == Preallocation::Falloc {
                // Past the old end of the file the range already reads as zeroes;
                // zeroing it without unmapping reserves its blocks.
                self.file
                    .write_zeroes(lo, hi - lo, oxemu_block::ZeroFlags::default())
                    .await?;
            }
        }
        let mut m = self.meta.lock().await;
        m.writeback().await
    }

    /// Moves the active L1 table to new clusters with room for `need` entries (and,
    /// with `size`, sets the virtual size in the same header update): the new table
    /// is written and flushed before the header points to it, the old one is freed
    /// after. The caller holds the metadata lock and has written everything back.
    pub(crate) async fn grow_l1(
        &self,
        m: &mut Meta,
        need: usize,
        size: Option<u64>,
    ) -> io::Result<()> {
        let cs = self.cluster_size();
        if need as u64 * 8 > crate::header::MAX_L1_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "qcow2: size needs an L1 table larger than 32 MiB",
            ));
        }
        let clusters = (need as u64 * 8).div_ceil(cs);
        let at = m.alloc_contiguous(clusters).await?;
        let mut l1 = m.l1.clone();
        l1.resize((clusters * cs / 8) as usize, 0);
        let raw: Vec<u8> = l1.iter().flat_map(|v| v.to_be_bytes()).collect();
        m.writeback().await?;
        self.file.write_at(at, &raw).await?;
        self.file.flush().await?;
        let (old_off, old_len) = (m.h.l1_table_offset, m.h.l1_size as u64);
        m.h.l1_table_offset = at;
        m.h.l1_size = l1.len() as u32;
        if let Some(size) = size {
            m.h.size = size;
        }
        m.set_l1(l1);
        m.write_header().await?;
        self.file.flush().await?;
        if old_len > 0 {
            m.free_later(old_off, old_len * 8);
        }
        m.writeback().await
    }
}
