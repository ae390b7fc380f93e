//! Clusters shared between the active L1 table and internal snapshots.
//!
//! A refcount above 1 means a cluster is reachable from more than one L1 table (the
//! active one and snapshots' copies). The COPIED flag of an active L1 or L2 entry says
//! that the cluster it names has refcount exactly 1, so it may be written in place;
//! without the flag a write copies first ([`Meta::copy_l2_table`] for L2 tables, the
//! allocating write path of `io.rs` for data clusters).
//!
//! [`Meta::update_refcounts`] walks one L1 table (the active one or a snapshot's),
//! adds `addend` (+1, -1 or 0) to the refcount of every L2 table and data cluster it
//! references and then sets the COPIED flags from the new refcounts, as QEMU's
//! `qcow2_update_snapshot_refcount` does. It is the building block of snapshot
//! create (+1 on the active table), apply (+1 on the snapshot's, -1 on the old
//! active's) and delete (-1 on the snapshot's); the callers order the writebacks
//! around it (see `snapshot_ops.rs`).

use std::collections::HashMap;
use std::io;

use oxemu_block::BlockDriverExt;

use super::{Meta, COMPRESSED, COPIED, OFFSET_MASK};
use crate::header::bad;
use crate::refcount;

impl Meta {
    /// True while guest writes are in flight (allocating or in place).
    pub(crate) fn writes_in_flight(&self) -> bool {
        !self.inflight.is_empty() || !self.pinned.is_empty()
    }

    /// Reads the L2 table at host offset `off` into the cache (it must not be cached
    /// yet); `field_at` is the offset of the L1 entry naming it, for the error.
    pub(super) async fn load_l2(&mut self, off: u64, field_at: u64) -> io::Result<()> {
        if off % self.cs != 0 || off + self.cs > self.file_end() {
            self.corrupt = true;
            return Err(bad(
                "L1 entry",
                field_at,
                format!("L2 table offset {off:#x} is unaligned or past the end of the file"),
            ));
        }
        let mut raw = vec![0u8; self.cs as usize];
        self.ev(oxemu_block::blkdebug::DebugEvent::L2Load);
        self.file.read_at(off, &mut raw).await?;
        let t = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect();
        self.ensure_room_l2().await?;
        self.l2.insert(off, t, false);
        Ok(())
    }

    /// Copies the L2 table at `old` (named by active L1 entry `l1i`, without COPIED)
    /// to a new cluster, points the L1 entry at the copy with COPIED, and queues the
    /// refcount drop of the old table for after the next L1 writeback. Returns the
    /// new table's offset. The data clusters keep their refcounts: the copy replaces
    /// the old table as the active table's path to them.
    pub(super) async fn copy_l2_table(&mut self, l1i: usize, old: u64) -> io::Result<u64> {
        let content = match self.l2.get_mut(old) {
            Some(s) => s.val.clone(),
            None => {
                self.load_l2(old, self.h.l1_table_offset + 8 * l1i as u64)
                    .await?;
                self.l2.get_mut(old).unwrap().val.clone()
            }
        };
        let new = self.alloc_cluster().await?;
        self.ensure_room_l2().await?;
        self.l2.insert(new, content, true);
        self.ol
            .add(new, self.cs, crate::overlap::MetaKind::ActiveL2);
        self.l1[l1i] = new | COPIED;
        self.l1_dirty = true;
        self.free_later(old, 1);
        Ok(new)
    }

    /// Drops one reference to host cluster index `c` now (the caller made sure that
    /// nothing on disk needs it any more). A cluster that becomes free leaves the L2
    /// cache, so that a stale copy of a freed table is never written back over
    /// whatever reuses the cluster. Returns the new refcount.
    pub(crate) async fn unref(&mut self, c: u64) -> io::Result<u64> {
        self.ev(oxemu_block::blkdebug::DebugEvent::ClusterFree);
        self.add_ref(c, -1).await?;
        let r = self.refcount(c).await?;
        if r == 0 {
            self.l2.map.remove(&(c * self.cs));
            self.ol.freed(c);
            self.free_hint = self.free_hint.min(c);
            if self.free_byte / self.cs == c {
                self.free_byte = 0;
            }
        }
        Ok(r)
    }

    /// Host clusters (indices) a compressed L2 entry's data touches.
    fn compressed_clusters(&self, e: u64) -> std::ops::RangeInclusive<u64> {
        let x = 62 - (self.h.cluster_bits - 8);
        let host = e & ((1u64 << x) - 1);
        let sectors = ((e >> x) & ((1u64 << (62 - x)) - 1)) + 1;
        let len = sectors * 512 - (host & 511);
        self.clusters_of(host, len)
    }

    /// Word `i` of the L2 table at host offset `t`, loading the table when needed.
    async fn l2_word(&mut self, t: u64, i: usize) -> io::Result<u64> {
        if self.l2.get_mut(t).is_none() {
            self.load_l2(t, t).await?;
        }
        Ok(self.l2.get_mut(t).unwrap().val[i])
    }

    /// Sets word `i` of the cached L2 table at host offset `t` and marks it dirty.
    async fn set_l2_word(&mut self, t: u64, i: usize, v: u64) -> io::Result<()> {
        if self.l2.get_mut(t).is_none() {
            self.load_l2(t, t).await?;
        }
        let s = self.l2.get_mut(t).unwrap();
        s.val[i] = v;
        s.dirty = true;
        Ok(())
    }

    /// The L2 table offset of L1 entry `i` of `l1`, checked; 0 when unused.
    fn l2_of(&mut self, l1: &[u64], i: usize) -> io::Result<u64> {
        let t = l1[i] & OFFSET_MASK;
        if t % self.cs != 0 || t.saturating_add(self.cs) > self.file_end() {
            self.corrupt = true;
            return Err(bad(
                "L1 entry",
                8 * i as u64,
                format!("L2 table offset {t:#x} is unaligned or past the end of the file"),
            ));
        }
        Ok(t)
    }

    /// Host clusters (indices) that L2 entry `e` references, as refcounts count them.
    fn entry_clusters(&mut self, t: u64, j: u64, e: u64) -> io::Result<Vec<u64>> {
        if e & COMPRESSED != 0 {
            return Ok(self.compressed_clusters(e).collect());
        }
        let host = e & OFFSET_MASK;
        if host == 0 {
            return Ok(Vec::new());
        }
        if host % self.cs != 0 {
            self.corrupt = true;
            return Err(bad(
                "L2 entry",
                t + j * if self.ext { 16 } else { 8 },
                format!("data cluster {host:#x} is unaligned"),
            ));
        }
        Ok(vec![host / self.cs])
    }

    /// Fails with `EINVAL` (QEMU's answer) when adding one reference to every
    /// cluster `l1` references would overflow a refcount; changes nothing.
    pub(crate) async fn check_increment(&mut self, l1: &[u64]) -> io::Result<()> {
        let max = refcount::max(self.h.refcount_order);
        let mut add: HashMap<u64, u64> = HashMap::new();
        let stride = if self.ext { 2 } else { 1 };
        for i in 0..l1.len() {
            let t = self.l2_of(l1, i)?;
            if t == 0 {
                continue;
            }
            *add.entry(t / self.cs).or_default() += 1;
            for j in 0..self.l2_entries {
                let e = self.l2_word(t, (j * stride) as usize).await?;
                for c in self.entry_clusters(t, j, e)? {
                    *add.entry(c).or_default() += 1;
                }
            }
        }
        for (c, n) in add {
            let now = self.refcount(c).await?;
            if !matches!(now.checked_add(n), Some(v) if v <= max) {
                tracing::debug!("qcow2: refcount of cluster {c:#x} would overflow");
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
        }
        Ok(())
    }

    /// QEMU's `qcow2_update_snapshot_refcount`: adds `addend` (-1, 0 or +1) to the
    /// refcount of every cluster `l1` references (data clusters, compressed
    /// clusters, L2 tables) and sets the COPIED flag of each L2 entry and of each
    /// entry of `l1` exactly when the refcount is now 1. L2 tables are changed in the
    /// cache (written back later, after the refcounts); `l1` is changed in place and
    /// the return value says whether it was. Increments go through [`Self::add_ref`]
    /// (call [`Self::check_increment`] first); decrements free at once with
    /// [`Self::unref`], so the caller must make sure that nothing on disk still
    /// reaches the clusters through `l1`.
    pub(crate) async fn update_refcounts(
        &mut self,
        l1: &mut [u64],
        addend: i64,
    ) -> io::Result<bool> {
        let stride = if self.ext { 2 } else { 1 };
        let mut l1_modified = false;
        for i in 0..l1.len() {
            let t = self.l2_of(l1, i)?;
            if t == 0 {
                continue;
            }
            for j in 0..self.l2_entries {
                let w = (j * stride) as usize;
                let old = self.l2_word(t, w).await?;
                let mut e = old & !COPIED;
                let clusters = self.entry_clusters(t, j, e)?;
                let mut rc = 0;
                for &c in &clusters {
                    rc = match addend {
                        1 => {
                            self.add_ref(c, 1).await?;
                            self.refcount(c).await?
                        }
                        -1 => self.unref(c).await?,
                        _ => self.refcount(c).await?,
                    };
                }
                if e & COMPRESSED != 0 {
                    // Compressed clusters are never written in place.
                    rc = 2;
                }
                if rc == 1 {
                    e |= COPIED;
                }
                if e != old {
                    self.set_l2_word(t, w, e).await?;
                }
            }
            let c = t / self.cs;
            let rc = match addend {
                1 => {
                    self.add_ref(c, 1).await?;
                    self.refcount(c).await?
                }
                -1 => self.unref(c).await?,
                _ => self.refcount(c).await?,
            };
            let ne = if rc == 1 { t | COPIED } else { t };
            if ne != l1[i] {
                l1[i] = ne;
                l1_modified = true;
            }
        }
        Ok(l1_modified)
    }

    /// Writes `raw` at `off` in the image file (a snapshot table or L1 copy in
    /// clusters just allocated).
    pub(crate) async fn write_raw(&self, off: u64, raw: &[u8]) -> io::Result<()> {
        self.file.write_at(off, raw).await
    }

    /// Reads `len` bytes at `off` from the image file.
    pub(crate) async fn read_raw(&self, off: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut b = vec![0u8; len];
        self.file.read_at(off, &mut b).await?;
        Ok(b)
    }

    /// Flushes the image file.
    pub(crate) async fn flush_file(&self) -> io::Result<()> {
        self.file.flush().await
    }
}
