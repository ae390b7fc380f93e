//! In-memory metadata of an open image: L1 table, bounded caches of L2 tables and
//! refcount blocks, cluster allocation, and the crash-safe writeback order.
//!
//! All of it lives behind one async mutex in [`crate::Qcow2`]; guest data I/O happens
//! outside the lock. Metadata changes are made in memory and written back by
//! [`Meta::writeback`] in the order that keeps the on-disk image consistent at every
//! instant (only leaks are possible after a crash):
//!
//! 1. flush the file: every data cluster that a cached L2 entry points to is durable;
//! 2. write dirty refcount blocks, flush, then the refcount table (and, if it moved,
//!    the header), flush: every cluster referenced below has a durable refcount;
//! 3. write dirty L2 tables, flush; 4. write the L1 table, flush;
//! 5. only now apply deferred refcount decrements of freed clusters (they become
//!    reusable after the next writeback), so that no on-disk L2 entry ever points to
//!    a cluster with refcount 0.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use futures::channel::oneshot;
use oxemu_block::{BlockDriver, BlockDriverExt};

use oxemu_block::blkdebug::DebugEvent;

use crate::header::{bad, Header, INCOMPAT_CORRUPT};
use crate::overlap::MetaKind;
use crate::refcount;

mod shared;

/// L2 entry flag: the cluster's refcount is exactly 1.
pub const COPIED: u64 = 1 << 63;
/// L2 entry flag: compressed cluster.
pub const COMPRESSED: u64 = 1 << 62;
/// L2 entry flag (v3): the cluster reads as zeroes.
pub const ZERO: u64 = 1;
/// Host offset bits of L1 and standard L2 entries.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Extended L2: all 32 subclusters read as zeroes.
pub const ALL_ZERO_BITMAP: u64 = 0xffff_ffff_0000_0000;

struct Slot<T> {
    val: T,
    dirty: bool,
    tick: u64,
}

/// A bounded table cache keyed by host offset. Dirty entries are never evicted.
struct Cache<T> {
    map: HashMap<u64, Slot<T>>,
    cap: usize,
    tick: u64,
}

impl<T> Cache<T> {
    fn new(cap: usize) -> Self {
        Cache {
            map: HashMap::new(),
            cap: cap.max(4),
            tick: 0,
        }
    }
    fn get_mut(&mut self, off: u64) -> Option<&mut Slot<T>> {
        self.tick += 1;
        let t = self.tick;
        let s = self.map.get_mut(&off)?;
        s.tick = t;
        Some(s)
    }
    /// True when there is room for one more entry (after evicting a clean one).
    fn make_room(&mut self) -> bool {
        if self.map.len() < self.cap {
            return true;
        }
        let victim = self
            .map
            .iter()
            .filter(|(_, s)| !s.dirty)
            .min_by_key(|(_, s)| s.tick)
            .map(|(k, _)| *k);
        match victim {
            Some(k) => {
                self.map.remove(&k);
                true
            }
            None => false,
        }
    }
    fn insert(&mut self, off: u64, val: T, dirty: bool) {
        self.tick += 1;
        self.map.insert(
            off,
            Slot {
                val,
                dirty,
                tick: self.tick,
            },
        );
    }
}

/// What a guest range maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// Not allocated here: read from the backing file, or zeroes.
    Unallocated,
    /// Reads as zeroes.
    Zero,
    /// Data at this host offset.
    Data(u64),
    /// Compressed cluster: host offset and compressed length (sector-rounded).
    Compressed(u64, u64),
}

/// The metadata state of an open image.
pub struct Meta {
    /// The header as last written.
    pub h: Header,
    pub(crate) file: Arc<dyn BlockDriver>,
    /// Cluster size in bytes.
    pub cs: u64,
    /// Entries per L2 table.
    pub l2_entries: u64,
    /// Extended L2 entries.
    pub ext: bool,
    /// L1 table (host byte order).
    pub l1: Vec<u64>,
    l1_dirty: bool,
    l2: Cache<Vec<u64>>,
    /// Refcount table (host byte order).
    pub reftable: Vec<u64>,
    reftable_dirty: bool,
    old_reftable: Option<(u64, u64)>,
    refblocks: Cache<Vec<u8>>,
    pending_free: Vec<u64>,
    /// Clusters among `pending_free` whose storage is given back to the file system
    /// (a hole is punched) once they are free: those freed by guest discards.
    pending_discard: Vec<u64>,
    free_hint: u64,
    top: u64,
    free_byte: u64,
    /// Host clusters (by index) with in-place data writes in flight, and how many.
    /// Their frees wait for a later writeback, so that a cluster is never handed out
    /// again while an old write to it may still land.
    pinned: HashMap<u64, u32>,
    /// Metadata clusters, for [`Meta::overlap_check`].
    pub(crate) ol: crate::overlap::OverlapIndex,
    /// What writes are checked against (QEMU's `overlap-check`).
    pub overlap: crate::overlap::OverlapCheck,
    /// Host clusters a dropped write may still reach: never freed while open.
    quarantined: std::collections::HashSet<u64>,
    /// Corruption was detected; writes fail with EIO.
    pub corrupt: bool,
    /// Guest clusters with an allocating write in flight, and who waits for them.
    pub inflight: HashMap<u64, Vec<oneshot::Sender<()>>>,
}

impl Meta {
    /// Loads L1 and refcount tables of an image whose header was parsed.
    pub async fn load(h: Header, file: Arc<dyn BlockDriver>, cache_bytes: u64) -> io::Result<Meta> {
        let cs = h.cluster_size();
        let ext = h.extended_l2();
        let l2_entries = cs / if ext { 16 } else { 8 };
        let mut raw = vec![0u8; h.l1_size as usize * 8];
        file.read_at(h.l1_table_offset, &mut raw).await?;
        let l1: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect();
        let mut raw = vec![0u8; (h.refcount_table_clusters as u64 * cs) as usize];
        file.read_at(h.refcount_table_offset, &mut raw).await?;
        let reftable: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect();
        let l2_cap = (cache_bytes / cs).clamp(16, (l1.len() as u64).max(16)) as usize;
        Ok(Meta {
            cs,
            ext,
            l2_entries,
            l1,
            l1_dirty: false,
            l2: Cache::new(l2_cap),
            reftable,
            reftable_dirty: false,
            old_reftable: None,
            refblocks: Cache::new((cache_bytes / 4 / cs).max(16) as usize),
            pending_free: Vec::new(),
            pending_discard: Vec::new(),
            free_hint: 0,
            top: 0,
            free_byte: 0,
            corrupt: false,
            pinned: HashMap::new(),
            quarantined: Default::default(),
            ol: Default::default(),
            overlap: Default::default(),
            inflight: HashMap::new(),
            file,
            h,
        })
    }

    /// Reports a blkdebug event to the file child.
    pub(crate) fn ev(&self, e: DebugEvent) {
        self.file.debug_event(e);
    }

    fn file_end(&self) -> u64 {
        self.file.size().next_multiple_of(self.cs)
    }

    /// Offset of the L2 table for guest cluster `gc`, loading it into the cache;
    /// with `alloc`, allocates a new zeroed table when the L1 entry is empty.
    pub async fn l2_table(&mut self, gc: u64, alloc: bool) -> io::Result<Option<u64>> {
        let l1i = (gc / self.l2_entries) as usize;
        let Some(&e) = self.l1.get(l1i) else {
            return Err(bad("guest offset", gc * self.cs, "beyond the L1 table"));
        };
        let mut off = e & OFFSET_MASK;
        if off == 0 {
            if !alloc {
                return Ok(None);
            }
            off = self.alloc_cluster().await?;
            self.ensure_room_l2().await?;
            self.l2
                .insert(off, vec![0u64; (self.cs / 8) as usize], true);
            self.ol.add(off, self.cs, MetaKind::ActiveL2);
            // QEMU writes a new table at once; this one reaches the disk at the next
            // writeback, so the event's rules act on the request that comes next.
            self.ev(DebugEvent::L2AllocWrite);
            self.l1[l1i] = off | COPIED;
            self.l1_dirty = true;
            return Ok(Some(off));
        }
        if self.l2.get_mut(off).is_none() {
            self.load_l2(off, self.h.l1_table_offset + 8 * l1i as u64)
                .await?;
        }
        if alloc && e & COPIED == 0 {
            // Shared with a snapshot (or its refcount is not known to be 1): never
            // modify it in place. The copy gets the L1 entry; the old table loses
            // this reference once the new L1 entry is on disk.
            return self.copy_l2_table(l1i, off).await.map(Some);
        }
        Ok(Some(off))
    }

    async fn ensure_room_l2(&mut self) -> io::Result<()> {
        if !self.l2.make_room() {
            self.writeback().await?;
            self.l2.make_room();
        }
        Ok(())
    }

    /// The raw L2 entry (and extended bitmap) of guest cluster `gc`; zeroes when unmapped.
    pub async fn entry(&mut self, gc: u64) -> io::Result<(u64, u64)> {
        let Some(t) = self.l2_table(gc, false).await? else {
            return Ok((0, 0));
        };
        let i = (gc % self.l2_entries) as usize;
        let ext = self.ext;
        let tab = &self.l2.get_mut(t).unwrap().val;
        Ok(if ext {
            (tab[2 * i], tab[2 * i + 1])
        } else {
            (tab[i], 0)
        })
    }

    /// Sets the L2 entry of guest cluster `gc` (allocating the table if needed).
    pub async fn set_entry(&mut self, gc: u64, e: u64, bitmap: u64) -> io::Result<()> {
        let t = self.l2_table(gc, true).await?.unwrap();
        let i = (gc % self.l2_entries) as usize;
        let ext = self.ext;
        let s = self.l2.get_mut(t).unwrap();
        s.dirty = true;
        if ext {
            s.val[2 * i] = e;
            s.val[2 * i + 1] = bitmap;
        } else {
            s.val[i] = e;
        }
        Ok(())
    }

    /// Interprets an L2 entry for the byte at `in_off` inside the cluster, returning the
    /// mapping and how many bytes from `in_off` (up to `max`) share it.
    pub fn interpret(
        &self,
        gc: u64,
        e: u64,
        bitmap: u64,
        in_off: u64,
        max: u64,
    ) -> io::Result<(Mapping, u64)> {
        let cs = self.cs;
        let rest = (cs - in_off).min(max);
        if e & COMPRESSED != 0 {
            let x = 62 - (self.h.cluster_bits - 8);
            let host = e & ((1u64 << x) - 1);
            let sectors = ((e >> x) & ((1u64 << (62 - x)) - 1)) + 1;
            let len = sectors * 512 - (host & 511);
            if host + len > self.file_end() + 512 {
                return Err(bad(
                    "compressed L2 entry",
                    gc * cs,
                    format!("host range {host:#x}+{len} is past the end of the file"),
                ));
            }
            return Ok((Mapping::Compressed(host, len), rest));
        }
        // A data cluster past the end of the file (a truncated image) reads as
        // zeroes, as in QEMU; writes refuse it (`Qcow2::plan`).
        let host = e & OFFSET_MASK;
        if host != 0 && host % cs != 0 {
            return Err(bad(
                "L2 entry",
                gc * cs,
                format!("data cluster {host:#x} is unaligned"),
            ));
        }
        if !self.ext {
            let m = if e & ZERO != 0 && self.h.version == 3 {
                Mapping::Zero
            } else if host != 0 {
                Mapping::Data(host)
            } else {
                Mapping::Unallocated
            };
            return Ok((m, rest));
        }
        let scs = cs / 32;
        let first = in_off / scs;
        let kind = |s: u64| -> u8 {
            if bitmap & (1 << s) != 0 {
                2
            } else if bitmap & (1 << (s + 32)) != 0 {
                1
            } else {
                0
            }
        };
        let k = kind(first);
        if k == 2 && host == 0 {
            return Err(bad(
                "extended L2 bitmap",
                gc * cs,
                "subcluster allocated without a host cluster",
            ));
        }
        let mut last = first;
        while last + 1 < 32 && kind(last + 1) == k && (last + 1) * scs < in_off + rest {
            last += 1;
        }
        let len = ((last + 1) * scs - in_off).min(rest);
        let m = match k {
            2 => Mapping::Data(host),
            1 => Mapping::Zero,
            _ => Mapping::Unallocated,
        };
        Ok((m, len))
    }

    async fn refblock(&mut self, rt: usize, create_at: Option<u64>) -> io::Result<Option<u64>> {
        let off = self.reftable.get(rt).copied().unwrap_or(0) & !(self.cs - 1);
        if off == 0 {
            let Some(at) = create_at else { return Ok(None) };
            if !self.refblocks.make_room() {
                Box::pin(self.writeback()).await?;
                self.refblocks.make_room();
            }
            self.refblocks.insert(at, vec![0u8; self.cs as usize], true);
            self.ol.add(at, self.cs, MetaKind::RefcountBlock);
            self.reftable[rt] = at;
            self.reftable_dirty = true;
            return Ok(Some(at));
        }
        if self.refblocks.get_mut(off).is_none() {
            let mut b = vec![0u8; self.cs as usize];
            self.ev(DebugEvent::RefblockLoad);
            self.file.read_at(off, &mut b).await?;
            if !self.refblocks.make_room() {
                Box::pin(self.writeback()).await?;
                self.refblocks.make_room();
            }
            self.refblocks.insert(off, b, false);
        }
        Ok(Some(off))
    }

    /// Refcount of host cluster index `c`.
    pub async fn refcount(&mut self, c: u64) -> io::Result<u64> {
        let epb = refcount::entries_per_block(self.h.cluster_bits, self.h.refcount_order);
        let Some(b) = self.refblock((c / epb) as usize, None).await? else {
            return Ok(0);
        };
        let o = self.h.refcount_order;
        Ok(refcount::get(
            &self.refblocks.get_mut(b).unwrap().val,
            o,
            (c % epb) as usize,
        ))
    }

    /// Adds `delta` to the refcount of host cluster index `c` (the refcount block must
    /// exist). Marks the image corrupt on overflow or underflow.
    pub async fn add_ref(&mut self, c: u64, delta: i64) -> io::Result<()> {
        // As QEMU's alloc_refcount_block, which every refcount update goes through.
        self.ev(DebugEvent::RefblockAlloc);
        let epb = refcount::entries_per_block(self.h.cluster_bits, self.h.refcount_order);
        let rt = (c / epb) as usize;
        let Some(b) = self.refblock(rt, None).await? else {
            self.corrupt = true;
            return Err(bad(
                "refcount table entry",
                self.h.refcount_table_offset + 8 * rt as u64,
                format!("no refcount block for cluster {c:#x}"),
            ));
        };
        let o = self.h.refcount_order;
        let s = self.refblocks.get_mut(b).unwrap();
        let cur = refcount::get(&s.val, o, (c % epb) as usize);
        let new = cur as i128 + delta as i128;
        if new < 0 || new > refcount::max(o) as i128 {
            self.corrupt = true;
            return Err(bad(
                "refcount",
                c * self.cs,
                format!(
                    "refcount {cur} {delta:+} overflows {}-bit refcounts",
                    1 << o
                ),
            ));
        }
        refcount::set(&mut s.val, o, (c % epb) as usize, new as u64);
        s.dirty = true;
        Ok(())
    }

    /// Allocates one cluster with refcount 1 and returns its host offset.
    pub async fn alloc_cluster(&mut self) -> io::Result<u64> {
        self.ev(DebugEvent::ClusterAlloc);
        let epb = refcount::entries_per_block(self.h.cluster_bits, self.h.refcount_order);
        let mut c = self.free_hint.max(1);
        loop {
            let rt = (c / epb) as usize;
            if rt >= self.reftable.len() {
                self.grow_reftable(rt + 1).await?;
                continue;
            }
            if self.reftable[rt] & !(self.cs - 1) == 0 {
                // A new refcount block that describes itself.
                let at = c * self.cs;
                self.refblock(rt, Some(at)).await?;
                self.add_ref(c, 1).await?;
                self.top = self.top.max(c + 1);
                c += 1;
                continue;
            }
            if self.refcount(c).await? == 0 {
                self.add_ref(c, 1).await?;
                self.free_hint = c + 1;
                self.top = self.top.max(c + 1);
                return Ok(c * self.cs);
            }
            c += 1;
        }
    }

    /// Makes the allocator look for free clusters from cluster index `c` on again
    /// (after a cluster it handed out was given back).
    pub fn rewind_free_hint(&mut self, c: u64) {
        self.free_hint = self.free_hint.min(c);
    }

    /// Allocates `n` contiguous clusters at the end of the image.
    pub async fn alloc_contiguous(&mut self, n: u64) -> io::Result<u64> {
        loop {
            let start = self.alloc_cluster().await? / self.cs;
            let mut ok = true;
            for i in 1..n {
                if self.alloc_cluster().await? / self.cs != start + i {
                    ok = false;
                    break;
                }
            }
            if ok {
                return Ok(start * self.cs);
            }
            // Give back what we took; the tail of the image is now contiguous.
            for i in 0..n {
                let c = start + i;
                if self.refcount(c).await? > 0 {
                    self.add_ref(c, -1).await?;
                }
            }
            self.free_hint = self.top.max(self.file_end() / self.cs);
        }
    }

    async fn grow_reftable(&mut self, need: usize) -> io::Result<()> {
        self.ev(DebugEvent::ReftableGrow);
        let cs = self.cs;
        let epb = refcount::entries_per_block(self.h.cluster_bits, self.h.refcount_order);
        let new_len = (need + need / 2 + 1) as u64;
        let clusters = (new_len * 8).div_ceil(cs);
        if clusters * cs > crate::header::MAX_REFTABLE_BYTES {
            return Err(io::Error::other("qcow2: refcount table would exceed 8 MiB"));
        }
        let mut tab = self.reftable.clone();
        tab.resize((clusters * cs / 8) as usize, 0);
        // Place the table and the blocks covering it after everything in use.
        let end = self
            .file_end()
            .max(self.highest_meta() + cs)
            .max(self.top * cs)
            / cs;
        let blocks_start = end + clusters;
        let mut nb = 0;
        let mut c = end;
        while c < blocks_start + nb {
            let rt = (c / epb) as usize;
            if rt >= tab.len() {
                return Err(io::Error::other(
                    "qcow2: refcount table growth does not converge",
                ));
            }
            if tab[rt] == 0 {
                tab[rt] = (blocks_start + nb) * cs;
                nb += 1;
            }
            c += 1;
        }
        self.old_reftable = self.old_reftable.or(Some((
            self.h.refcount_table_offset,
            self.h.refcount_table_clusters as u64,
        )));
        self.ol.invalidate();
        let old = std::mem::replace(&mut self.reftable, tab);
        for (i, e) in self.reftable.clone().iter().enumerate() {
            if *e != 0 && old.get(i).copied().unwrap_or(0) == 0 {
                if !self.refblocks.make_room() {
                    self.reftable = old;
                    self.writeback().await?;
                    return Box::pin(self.grow_reftable(need)).await;
                }
                self.refblocks.insert(*e, vec![0u8; cs as usize], true);
            }
        }
        for c in end..blocks_start + nb {
            self.add_ref(c, 1).await?;
        }
        self.h.refcount_table_offset = end * cs;
        self.h.refcount_table_clusters = clusters as u32;
        self.reftable_dirty = true;
        self.free_hint = blocks_start + nb;
        self.top = self.top.max(blocks_start + nb);
        Ok(())
    }

    fn highest_meta(&self) -> u64 {
        let a = self
            .refblocks
            .map
            .keys()
            .chain(self.l2.map.keys())
            .copied()
            .max()
            .unwrap_or(0);
        a.max(self.h.refcount_table_offset + (self.h.refcount_table_clusters as u64 - 1) * self.cs)
    }

    /// Allocates `len` bytes (less than a cluster) for a compressed cluster, packing
    /// several into one host cluster as QEMU does; each fragment holds one reference
    /// to the host cluster it lives in.
    pub async fn alloc_bytes(&mut self, len: u64) -> io::Result<u64> {
        self.ev(DebugEvent::ClusterAllocBytes);
        let off = self.free_byte;
        let o = self.h.refcount_order;
        if off != 0
            && off % self.cs != 0
            && len <= self.cs - off % self.cs
            && self.refcount(off / self.cs).await? < refcount::max(o)
        {
            self.add_ref(off / self.cs, 1).await?;
            self.free_byte = off + len;
            return Ok(off);
        }
        let host = self.alloc_cluster().await?;
        self.free_byte = host + len;
        Ok(host)
    }

    /// Drops one reference to each host cluster of `[off, off+len)` after the next
    /// writeback of L2 tables (see the module documentation).
    pub fn free_later(&mut self, off: u64, len: u64) {
        let r = self.clusters_of(off, len);
        self.pending_free.extend(r);
    }

    /// Indices of the host clusters that bytes `[off, off+len)` touch (at least one).
    fn clusters_of(&self, off: u64, len: u64) -> std::ops::RangeInclusive<u64> {
        off / self.cs..=(off + len.max(1) - 1) / self.cs
    }

    /// [`Self::free_later`], and punch a hole where the clusters were once they are
    /// free (the file node's `discard` option decides whether the hole is made), as
    /// QEMU passes discard requests down.
    pub fn free_later_discard(&mut self, off: u64, len: u64) {
        self.free_later(off, len);
        let r = self.clusters_of(off, len);
        self.pending_discard.extend(r);
    }

    /// Marks the `n` host clusters from byte offset `host` as written in place.
    pub fn pin(&mut self, host: u64, n: u64) {
        for c in host / self.cs..host / self.cs + n {
            *self.pinned.entry(c).or_insert(0) += 1;
        }
    }

    /// Ends what [`Self::pin`] started.
    pub fn unpin(&mut self, host: u64, n: u64) {
        for c in host / self.cs..host / self.cs + n {
            if let Some(k) = self.pinned.get_mut(&c) {
                *k -= 1;
                if *k == 0 {
                    self.pinned.remove(&c);
                }
            }
        }
    }

    /// Keeps the `n` host clusters from byte offset `host` from ever being freed while
    /// the image is open (a dropped write may still land there; see `guard`).
    pub fn quarantine(&mut self, host: u64, n: u64) {
        self.quarantined.extend(host / self.cs..host / self.cs + n);
    }

    /// Marks the image corrupt (QEMU's `qcow2_signal_corruption`): writes are refused
    /// from now on and, for v3 images, the header's corrupt bit is set so that the
    /// image opens read-only until it is repaired. Returns `e` for the caller.
    pub(crate) async fn mark_corrupt(&mut self, e: io::Error) -> io::Error {
        if !self.corrupt {
            tracing::error!(
                "qcow2: Marking image as corrupt: {e}; further corruption events will be suppressed"
            );
        }
        if self.h.version == 3 && self.h.incompatible_features & INCOMPAT_CORRUPT == 0 {
            self.h.incompatible_features |= INCOMPAT_CORRUPT;
            let _ = self.write_header().await;
            let _ = self.file.flush().await;
        }
        self.corrupt = true;
        e
    }

    /// Writes all dirty metadata in crash-safe order (module documentation).
    pub async fn writeback(&mut self) -> io::Result<()> {
        let f = self.file.clone();
        f.flush().await?;
        self.write_refcounts().await?;
        let dirty: Vec<u64> = self
            .l2
            .map
            .iter()
            .filter(|(_, s)| s.dirty)
            .map(|(k, _)| *k)
            .collect();
        for off in &dirty {
            let s = &self.l2.map[off];
            let raw: Vec<u8> = s.val.iter().flat_map(|v| v.to_be_bytes()).collect();
            let cs = self.cs;
            if let Err(e) = self.overlap_check(*off, cs, Some(MetaKind::ActiveL2)).await {
                return Err(self.mark_corrupt(e).await);
            }
            f.debug_event(DebugEvent::L2Update);
            f.write_at(*off, &raw).await?;
            self.l2.map.get_mut(off).unwrap().dirty = false;
        }
        if !dirty.is_empty() {
            f.flush().await?;
        }
        if self.l1_dirty {
            let raw: Vec<u8> = self.l1.iter().flat_map(|v| v.to_be_bytes()).collect();
            let (at, n) = (self.h.l1_table_offset, raw.len() as u64);
            if let Err(e) = self.overlap_check(at, n, Some(MetaKind::ActiveL1)).await {
                return Err(self.mark_corrupt(e).await);
            }
            f.debug_event(DebugEvent::L1Update);
            f.write_at(self.h.l1_table_offset, &raw).await?;
            f.flush().await?;
            self.l1_dirty = false;
        }
        if !self.pending_free.is_empty() {
            let mut deferred = Vec::new();
            for c in std::mem::take(&mut self.pending_free) {
                if self.pinned.contains_key(&c) || self.quarantined.contains(&c) {
                    deferred.push(c);
                    continue;
                }
                if self.free_byte / self.cs == c {
                    self.free_byte = 0;
                }
                self.unref(c).await?;
            }
            self.write_refcounts().await?;
            self.punch_freed(&deferred).await?;
            self.pending_free = deferred;
        }
        Ok(())
    }

    /// Punches holes where clusters freed by discards were, if they are still free.
    /// Runs under the metadata lock, right after the refcounts drop, so no new
    /// allocation can have taken a cluster in between.
    /// Clusters in `deferred` are still to be freed: they stay on the list.
    async fn punch_freed(&mut self, deferred: &[u64]) -> io::Result<()> {
        let mut cs = std::mem::take(&mut self.pending_discard);
        cs.sort_unstable();
        cs.dedup();
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for c in cs {
            if deferred.contains(&c) {
                self.pending_discard.push(c);
                continue;
            }
            if self.refcount(c).await? != 0 {
                continue;
            }
            match runs.last_mut() {
                Some((s, n)) if *s + *n == c => *n += 1,
                _ => runs.push((c, 1)),
            }
        }
        for (c, n) in runs {
            // Advisory: the metadata is already consistent, so a file system that
            // refuses the hole must not fail the flush.
            if let Err(e) = self.file.discard(c * self.cs, n * self.cs).await {
                tracing::debug!("qcow2: punching freed clusters at {:#x}: {e}", c * self.cs);
            }
        }
        Ok(())
    }

    async fn write_refcounts(&mut self) -> io::Result<()> {
        let f = self.file.clone();
        let mut any = false;
        let dirty: Vec<u64> = (self.refblocks.map.iter())
            .filter(|(_, s)| s.dirty)
            .map(|(k, _)| *k)
            .collect();
        for off in dirty {
            let cs = self.cs;
            if let Err(e) = self
                .overlap_check(off, cs, Some(MetaKind::RefcountBlock))
                .await
            {
                return Err(self.mark_corrupt(e).await);
            }
            let s = self.refblocks.map.get_mut(&off).unwrap();
            f.debug_event(DebugEvent::RefblockUpdate);
            f.write_at(off, &s.val).await?;
            s.dirty = false;
            any = true;
        }
        if any {
            f.flush().await?;
        }
        if self.reftable_dirty {
            let raw: Vec<u8> = self.reftable.iter().flat_map(|v| v.to_be_bytes()).collect();
            let (at, n) = (self.h.refcount_table_offset, raw.len() as u64);
            if let Err(e) = self
                .overlap_check(at, n, Some(MetaKind::RefcountTable))
                .await
            {
                return Err(self.mark_corrupt(e).await);
            }
            f.debug_event(DebugEvent::ReftableUpdate);
            f.write_at(self.h.refcount_table_offset, &raw).await?;
            f.flush().await?;
            if let Some((off, n)) = self.old_reftable.take() {
                f.debug_event(DebugEvent::RefblockAllocSwitchTable);
                self.write_header().await?;
                f.flush().await?;
                for c in 0..n {
                    self.pending_free.push(off / self.cs + c);
                }
            }
            self.reftable_dirty = false;
        }
        Ok(())
    }

    /// Drops refcount blocks that describe no cluster in use but, perhaps, their own
    /// (QEMU's reftable shrink after an image shrink), so that the file can then be
    /// truncated behind the last cluster in use. The reftable entry goes first; a
    /// block described by another block is freed after that, so a crash leaks at most.
    pub async fn drop_unused_refblocks(&mut self) -> io::Result<()> {
        self.writeback().await?;
        self.ol.invalidate();
        let epb = refcount::entries_per_block(self.h.cluster_bits, self.h.refcount_order);
        let o = self.h.refcount_order;
        let mut freed_elsewhere = Vec::new();
        for rt in 0..self.reftable.len() {
            let Some(off) = self.refblock(rt, None).await? else {
                continue;
            };
            let own = off / self.cs;
            let first = rt as u64 * epb;
            let block = &self.refblocks.get_mut(off).unwrap().val;
            let unused = (0..epb).all(|i| {
                let v = refcount::get(block, o, i as usize);
                v == 0 || (first + i == own && v == 1)
            });
            if !unused {
                continue;
            }
            self.refblocks.map.remove(&off);
            self.reftable[rt] = 0;
            self.reftable_dirty = true;
            if !(first..first + epb).contains(&own) {
                freed_elsewhere.push(own);
            }
            self.free_hint = self.free_hint.min(first);
        }
        self.write_refcounts().await?;
        for c in freed_elsewhere {
            self.add_ref(c, -1).await?;
            self.free_hint = self.free_hint.min(c);
        }
        self.write_refcounts().await
    }

    /// Fails naming the entry when a refcount table entry points past the end of the
    /// file. A normal open refuses such an image; a check opens it to repair it.
    pub fn validate_reftable(&self) -> io::Result<()> {
        let fsize = self.file.size().next_multiple_of(self.cs);
        for (i, e) in self.reftable.iter().enumerate() {
            let off = e & !(self.cs - 1);
            if off != 0 && off.saturating_add(self.cs) > fsize {
                return Err(bad(
                    "refcount table entry",
                    self.h.refcount_table_offset + 8 * i as u64,
                    format!("refcount block {off:#x} is past the end of the file"),
                ));
            }
        }
        Ok(())
    }

    /// Rewrites the header cluster from `self.h` (extensions preserved).
    pub async fn write_header(&mut self) -> io::Result<()> {
        let b = self.h.serialize()?;
        self.file.write_at(0, &b).await
    }

    /// Replaces the L1 table (used by resize): new table must already be written.
    pub fn set_l1(&mut self, l1: Vec<u64>) {
        self.ol.invalidate();
        self.l1 = l1;
    }

    /// Shows another L1 table (a snapshot's) on a read-only image: the cached L2
    /// tables are forgotten, and nothing is ever written back.
    pub fn show_l1(&mut self, l1: Vec<u64>) {
        self.ol.invalidate();
        self.l1 = l1;
        self.l2.map.clear();
        self.l1_dirty = false;
    }

    /// One past the highest cluster allocated since the image was opened, in bytes.
    pub fn top_end(&self) -> u64 {
        self.top * self.cs
    }

    /// True when host cluster index `c` is covered by an existing refcount block.
    pub fn refcount_block_exists(&self, c: u64) -> bool {
        let epb = refcount::entries_per_block(self.h.cluster_bits, self.h.refcount_order);
        self.reftable
            .get((c / epb) as usize)
            .is_some_and(|e| e & !(self.cs - 1) != 0)
    }

    /// Marks the L1 table dirty.
    pub fn l1_changed(&mut self) {
        self.l1_dirty = true;
    }

    /// Forgets every cached table and reads the L1 and refcount tables again from the
    /// locations in `self.h`: used after `check` rewrote metadata directly in the file.
    /// Call only after [`Meta::writeback`] (nothing may be dirty).
    pub async fn reload(&mut self) -> io::Result<()> {
        self.ol.invalidate();
        let read = |off: u64, n: u64| {
            let f = self.file.clone();
            async move {
                let mut raw = vec![0u8; n as usize];
                f.read_at(off, &mut raw).await?;
                Ok::<Vec<u64>, io::Error>(
                    raw.chunks_exact(8)
                        .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
                        .collect(),
                )
            }
        };
        self.l1 = read(self.h.l1_table_offset, self.h.l1_size as u64 * 8).await?;
        self.reftable = read(
            self.h.refcount_table_offset,
            self.h.refcount_table_clusters as u64 * self.cs,
        )
        .await?;
        self.l2.map.clear();
        self.refblocks.map.clear();
        self.l1_dirty = false;
        self.reftable_dirty = false;
        self.old_reftable = None;
        self.free_hint = 0;
        self.free_byte = 0;
        Ok(())
    }
}
