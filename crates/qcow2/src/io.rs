//! Guest I/O paths: reads, (allocating) writes with copy-on-write, zeroing and
//! discard, and block status. Resizing is in `resize.rs`, compressed writes in
//! `compressed_write.rs`.

use std::io;
use std::sync::atomic::Ordering;

use futures::channel::oneshot;
use oxemu_block::blkdebug::DebugEvent;
use oxemu_block::{BlockDriver, BlockDriverExt, IoVec, IoVecMut, WriteFlags};

use crate::compress;
use crate::guard::WriteGuard;
use crate::meta::{Mapping, Meta, ALL_ZERO_BITMAP, COMPRESSED, COPIED, OFFSET_MASK, ZERO};
use crate::{os, Qcow2};

/// What a write to one cluster must do, decided under the metadata lock.
enum Plan {
    /// Overwrite in place at this host offset.
    Direct(u64),
    /// Wait for an allocating write to the same cluster.
    Wait(oneshot::Receiver<()>),
    /// Write `fill_start..fill_end` of the cluster at `target`, filling around the
    /// request with the old content; `fresh` when `target` was just allocated; `sub`
    /// when only the subclusters written become allocated (extended L2).
    Allocate {
        target: u64,
        fill_start: u64,
        fill_end: u64,
        fresh: bool,
        sub: bool,
        old: (u64, u64),
    },
}

fn sub_mask(s0: u64, s1: u64) -> u64 {
    ((1u64 << (s1 - s0 + 1)) - 1) << s0
}

impl Qcow2 {
    async fn lookup(&self, m: &mut Meta, off: u64, max: u64) -> io::Result<(Mapping, u64)> {
        let cs = self.cluster_size();
        let gc = off >> self.cluster_bits;
        let (e, b) = m.entry(gc).await?;
        m.interpret(gc, e, b, off & (cs - 1), max)
    }

    /// Like [`Self::lookup`], but extends the mapping over the following clusters that
    /// map the same way (host-contiguous data, zeroes, unallocated), up to `max` bytes,
    /// so that one host request covers them all.
    pub(crate) async fn lookup_run(
        &self,
        m: &mut Meta,
        off: u64,
        max: u64,
    ) -> io::Result<(Mapping, u64)> {
        let cs = self.cluster_size();
        let (first, mut n) = self.lookup(m, off, max).await?;
        if matches!(first, Mapping::Compressed(..)) {
            return Ok((first, n));
        }
        while n < max {
            let (next, k) = self.lookup(m, off + n, max - n).await?;
            let same = match (first, next) {
                (Mapping::Data(h0), Mapping::Data(h1)) => {
                    h1 + ((off + n) & (cs - 1)) == h0 + (off & (cs - 1)) + n
                }
                (x, y) => x == y,
            };
            if !same {
                break;
            }
            n += k;
        }
        Ok((first, n))
    }

    /// Reads guest data at `offset` into `iov`.
    pub(crate) async fn read_guest(&self, offset: u64, iov: &mut IoVecMut<'_>) -> io::Result<()> {
        let len = iov.len() as u64;
        let mut done = 0u64;
        while done < len {
            let off = offset + done;
            let (map, n) = {
                let mut m = self.meta.lock().await;
                self.lookup_run(&mut m, off, len - done).await?
            };
            if done == 0 && n == len {
                return self.read_mapped(map, off, iov).await;
            }
            let mut part = iov.slice_mut(done as usize, n as usize);
            self.read_mapped(map, off, &mut part).await?;
            done += n;
        }
        Ok(())
    }

    async fn read_mapped(&self, map: Mapping, off: u64, iov: &mut IoVecMut<'_>) -> io::Result<()> {
        let cs = self.cluster_size();
        let in_off = off & (cs - 1);
        match map {
            Mapping::Data(host) => self.read_data(host + in_off, off, iov).await,
            Mapping::Zero => {
                iov.zero_range(0, iov.len());
                Ok(())
            }
            Mapping::Unallocated => self.read_backing(off, iov).await,
            Mapping::Compressed(host, clen) => {
                self.file.debug_event(DebugEvent::ReadCompressed);
                let mut c = vec![0u8; clen as usize];
                self.file.read_at(host, &mut c).await?;
                // Inflate on the CPU worker pool, so that several clusters (from
                // concurrent requests) decompress in parallel off the event loop.
                let kind = self.compression;
                let d = oxemu_aio::run_blocking(move || {
                    let mut d = vec![0u8; cs as usize];
                    compress::decompress(kind, &c, &mut d, host).map(|()| d)
                })
                .await??;
                iov.copy_from_slice(&d[in_off as usize..in_off as usize + iov.len()]);
                Ok(())
            }
        }
    }

    async fn read_backing(&self, off: u64, iov: &mut IoVecMut<'_>) -> io::Result<()> {
        let len = iov.len() as u64;
        let Some(b) = &self.backing else {
            iov.zero_range(0, len as usize);
            return Ok(());
        };
        self.file.debug_event(DebugEvent::ReadBackingAio);
        let bsize = b.driver.size();
        let have = bsize.saturating_sub(off).min(len);
        if have == len {
            return b.driver.readv(off, iov).await;
        }
        if have > 0 {
            b.driver
                .readv(off, &mut iov.slice_mut(0, have as usize))
                .await?;
        }
        iov.zero_range(have as usize, (len - have) as usize);
        Ok(())
    }

    /// Writes guest data at `offset`. Runs of whole clusters go through
    /// [`Self::write_run`] (one host request per run); partial clusters, and clusters
    /// that need copy-on-write or wait for another allocation, go cluster by cluster.
    pub(crate) async fn write_guest(&self, offset: u64, iov: &IoVec<'_>) -> io::Result<()> {
        let cs = self.cluster_size();
        let len = iov.len() as u64;
        let mut done = 0u64;
        while done < len {
            let off = offset + done;
            let whole = (len - done) / cs;
            if off & (cs - 1) == 0 && whole >= 2 {
                let part = iov.slice(done as usize, (whole * cs) as usize);
                let n = self.write_run(off, whole, &part).await?;
                if n > 0 {
                    done += n;
                    continue;
                }
            }
            let n = (cs - (off & (cs - 1))).min(len - done);
            if done == 0 && n == len {
                return self.write_cluster(off, iov).await;
            }
            self.write_cluster(off, &iov.slice(done as usize, n as usize))
                .await?;
            done += n;
        }
        Ok(())
    }

    /// How a whole-cluster overwrite of guest cluster `gc` can go in a run: in place
    /// at a host offset (`Some(Some(host))`), into a freshly allocated cluster
    /// (`Some(None)`), or not in a run at all (`None`: an allocation is in flight, the
    /// cluster is a preallocated zero cluster or partly allocated subclusters, or its
    /// entry is malformed; the cluster-by-cluster path deals with those).
    async fn run_kind(&self, m: &mut Meta, gc: u64) -> io::Result<Option<Option<u64>>> {
        if m.inflight.contains_key(&gc) {
            return Ok(None);
        }
        let (e, bm) = m.entry(gc).await?;
        let host = e & OFFSET_MASK;
        if e & COMPRESSED != 0 || host == 0 || e & COPIED == 0 {
            return Ok(Some(None));
        }
        let in_place = host % m.cs == 0
            && host < self.file.size()
            && if self.ext {
                bm & 0xffff_ffff == 0xffff_ffff
            } else {
                e & ZERO == 0 || self.version.load(Ordering::Acquire) == 2
            };
        Ok(in_place.then_some(Some(host)))
    }

    /// Writes up to `count` whole clusters at cluster-aligned `off` with one host
    /// request: either clusters already allocated at contiguous host offsets
    /// (overwritten in place), or clusters that need new storage (allocated
    /// contiguously, written, then mapped, as QEMU does for multi-cluster writes).
    /// Returns the bytes written; 0 when the first cluster cannot start a run.
    async fn write_run(&self, off: u64, count: u64, data: &IoVec<'_>) -> io::Result<u64> {
        let cs = self.cluster_size();
        let gc0 = off >> self.cluster_bits;
        let mut m = self.meta.lock().await;
        if m.corrupt {
            return Err(os(libc::EIO));
        }
        let r = self.plan_run(&mut m, gc0, count).await;
        let (host, k, old) = match r {
            Ok(Some(run)) => run,
            Ok(None) => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(self.signal_corruption(&mut m, e).await)
            }
            Err(e) => return Err(e),
        };
        let mut guard = match old {
            None => WriteGuard::pinned(self, host, k),
            Some(_) => WriteGuard::inflight(self, gc0..gc0 + k),
        };
        drop(m);
        let bytes = k * cs;
        self.file.debug_event(DebugEvent::WriteAio);
        let res = self
            .file
            .writev(host, &data.slice(0, bytes as usize), WriteFlags::default())
            .await;
        let Some(old) = old else {
            self.meta.lock().await.unpin(host, k);
            guard.disarm();
            return res.map(|()| bytes);
        };
        // Fresh clusters: map them (or give them back) and wake anyone waiting.
        let mut m = self.meta.lock().await;
        let mut out = res;
        for (i, &e) in old.iter().enumerate() {
            let gc = gc0 + i as u64;
            if out.is_ok() {
                let bitmap = if self.ext { 0xffff_ffff } else { 0 };
                out = m
                    .set_entry(gc, (host + i as u64 * cs) | COPIED, bitmap)
                    .await;
                if out.is_ok() {
                    self.release_old(&mut m, e);
                }
            }
            if out.is_err() && i == 0 {
                m.free_later(host, bytes);
            }
            for w in m.inflight.remove(&gc).unwrap_or_default() {
                let _ = w.send(());
            }
            guard.released(gc);
        }
        guard.disarm();
        out.map(|()| bytes)
    }

    /// Decides the run [`Self::write_run`] makes: `(host offset, clusters, old L2
    /// entries)`, the entries being `None` for an in-place overwrite. Fresh clusters
    /// are allocated and marked in flight.
    #[allow(clippy::type_complexity)]
    async fn plan_run(
        &self,
        m: &mut Meta,
        gc0: u64,
        count: u64,
    ) -> io::Result<Option<(u64, u64, Option<Vec<u64>>)>> {
        let cs = m.cs;
        match self.run_kind(m, gc0).await? {
            None => Ok(None),
            Some(Some(h0)) => {
                let mut k = 1;
                while k < count && self.run_kind(m, gc0 + k).await? == Some(Some(h0 + k * cs)) {
                    k += 1;
                }
                m.overlap_check(h0, k * cs, None).await?;
                m.pin(h0, k);
                Ok(Some((h0, k, None)))
            }
            Some(None) => {
                let mut k = 1;
                while k < count && self.run_kind(m, gc0 + k).await? == Some(None) {
                    k += 1;
                }
                // Create the L2 tables first so that they do not split the data run.
                let per = m.l2_entries;
                for t in gc0 / per..=(gc0 + k - 1) / per {
                    m.l2_table(t * per, true).await?;
                }
                let mut old = Vec::with_capacity(k as usize);
                for i in 0..k {
                    old.push(m.entry(gc0 + i).await?.0);
                }
                // Take free clusters while they are contiguous with the first one.
                let host = m.alloc_cluster().await?;
                let mut got = 1;
                while got < k {
                    let c = m.alloc_cluster().await?;
                    if c != host + got * cs {
                        m.add_ref(c / cs, -1).await?;
                        m.rewind_free_hint(c / cs);
                        break;
                    }
                    got += 1;
                }
                old.truncate(got as usize);
                m.overlap_check(host, got * cs, None).await?;
                for i in 0..got {
                    m.inflight.insert(gc0 + i, Vec::new());
                }
                Ok(Some((host, got, Some(old))))
            }
        }
    }

    async fn plan(&self, m: &mut Meta, gc: u64, a: u64, b: u64) -> io::Result<Plan> {
        if m.corrupt {
            return Err(os(libc::EIO));
        }
        if let Some(w) = m.inflight.get_mut(&gc) {
            let (tx, rx) = oneshot::channel();
            w.push(tx);
            return Ok(Plan::Wait(rx));
        }
        let (e, bm) = m.entry(gc).await?;
        let host = e & OFFSET_MASK;
        let cs = m.cs;
        let normal = e & COMPRESSED == 0 && host != 0 && e & COPIED != 0;
        if normal && (host % cs != 0 || host >= self.file.size().next_multiple_of(cs)) {
            return Err(crate::invalid(
                "L2 entry",
                gc * cs,
                format!("data cluster {host:#x} is unaligned or past the end of the file"),
            ));
        }
        if normal && !self.ext && (e & ZERO == 0 || self.version.load(Ordering::Acquire) == 2) {
            m.overlap_check(host, cs, None).await?;
            m.pin(host, 1);
            return Ok(Plan::Direct(host));
        }
        let scs = cs / 32;
        let (s0, s1) = (a / scs, (b - 1) / scs);
        let (mut fill_start, mut fill_end, target, fresh, sub) = if normal && self.ext {
            if bm & sub_mask(s0, s1) == sub_mask(s0, s1) {
                m.overlap_check(host, cs, None).await?;
                m.pin(host, 1);
                return Ok(Plan::Direct(host));
            }
            let fs = if bm & (1 << s0) != 0 { a } else { s0 * scs };
            let fe = if bm & (1 << s1) != 0 {
                b
            } else {
                (s1 + 1) * scs
            };
            (fs, fe, host, false, true)
        } else if normal {
            // Preallocated zero cluster: reuse it, zeroing around the request.
            (0, cs, host, false, false)
        } else if self.ext && e & COMPRESSED == 0 && host == 0 {
            // Extended L2, no storage yet: the new cluster gets only the subclusters
            // the request touches; the others keep reading from the backing file or
            // as zeroes, with no copy-on-write.
            m.l2_table(gc, true).await?;
            let target = m.alloc_cluster().await?;
            (s0 * scs, (s1 + 1) * scs, target, true, true)
        } else {
            // The L2 table first, then the data cluster, as QEMU lays them out.
            m.l2_table(gc, true).await?;
            (0, cs, m.alloc_cluster().await?, true, false)
        };
        m.overlap_check(target, cs, None).await?;
        fill_start = fill_start.min(a);
        fill_end = fill_end.max(b);
        // A fresh cluster past the end of the file reads as zeroes already: when the old
        // content is zeroes too (no backing file, no old data), write only the request.
        if fresh
            && target >= self.file.size()
            && self.backing.is_none()
            && e & (OFFSET_MASK | COMPRESSED) == 0
        {
            (fill_start, fill_end) = (a, b);
        }
        m.inflight.insert(gc, Vec::new());
        Ok(Plan::Allocate {
            target,
            fill_start,
            fill_end,
            fresh,
            sub,
            old: (e, bm),
        })
    }

    async fn write_cluster(&self, off: u64, data: &IoVec<'_>) -> io::Result<()> {
        let cs = self.cluster_size();
        let gc = off >> self.cluster_bits;
        let a = off & (cs - 1);
        let b = a + data.len() as u64;
        loop {
            let plan = {
                let mut m = self.meta.lock().await;
                match self.plan(&mut m, gc, a, b).await {
                    Ok(p) => p,
                    Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                        return Err(self.signal_corruption(&mut m, e).await)
                    }
                    Err(e) => return Err(e),
                }
            };
            match plan {
                Plan::Direct(host) => {
                    let guard = WriteGuard::pinned(self, host, 1);
                    self.file.debug_event(DebugEvent::WriteAio);
                    let r = self
                        .file
                        .writev(host + a, data, WriteFlags::default())
                        .await;
                    self.meta.lock().await.unpin(host, 1);
                    guard.disarm();
                    return r;
                }
                Plan::Wait(rx) => {
                    let _ = rx.await;
                }
                Plan::Allocate {
                    target,
                    fill_start,
                    fill_end,
                    fresh,
                    sub,
                    old,
                } => {
                    let guard = WriteGuard::inflight(self, [gc]);
                    let res = self
                        .fill_and_write(gc, target, fill_start, fill_end, a, data, old.0)
                        .await;
                    let r = self
                        .finish_allocation(gc, target, (fresh, sub), old, res, a, b)
                        .await;
                    // finish_allocation released the cluster with no await after it.
                    guard.disarm();
                    return r;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn fill_and_write(
        &self,
        gc: u64,
        target: u64,
        fs: u64,
        fe: u64,
        a: u64,
        data: &IoVec<'_>,
        old_e: u64,
    ) -> io::Result<()> {
        let cs = self.cluster_size();
        let base = gc * cs;
        let mut head = vec![0u8; (a - fs) as usize];
        let mut tail = vec![0u8; (fe - a - data.len() as u64) as usize];
        let zero_old = !self.ext
            && self.version.load(Ordering::Acquire) == 3
            && old_e & ZERO != 0
            && old_e & COMPRESSED == 0;
        if !zero_old && (!head.is_empty() || !tail.is_empty()) {
            self.file.debug_event(DebugEvent::CowRead);
            if !head.is_empty() {
                self.read_clamped(base + fs, &mut head).await?;
            }
            if !tail.is_empty() {
                self.read_clamped(base + a + data.len() as u64, &mut tail)
                    .await?;
            }
        }
        let mut v = IoVec::new();
        v.push(&head);
        for s in data.as_raw() {
            // SAFETY: the segments come from `data`, which stays borrowed for this call.
            unsafe { v.push_raw(s.iov_base.cast(), s.iov_len) };
        }
        v.push(&tail);
        self.file
            .debug_event(if head.is_empty() && tail.is_empty() {
                DebugEvent::WriteAio
            } else {
                DebugEvent::CowWrite
            });
        self.file
            .writev(target + fs, &v, WriteFlags::default())
            .await
    }

    /// Reads guest data, treating the part past the virtual size as zeroes.
    async fn read_clamped(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let have = self.size().saturating_sub(off).min(buf.len() as u64) as usize;
        buf[have..].fill(0);
        if have > 0 {
            self.read_guest(off, &mut IoVecMut::from_slice(&mut buf[..have]))
                .await?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish_allocation(
        &self,
        gc: u64,
        target: u64,
        (fresh, sub): (bool, bool),
        old: (u64, u64),
        res: io::Result<()>,
        a: u64,
        b: u64,
    ) -> io::Result<()> {
        let mut m = self.meta.lock().await;
        let out = match res {
            Ok(()) => {
                let bitmap = if !self.ext {
                    0
                } else if !sub {
                    0xffff_ffff
                } else {
                    let scs = m.cs / 32;
                    let mask = sub_mask(a / scs, (b - 1) / scs);
                    (old.1 | mask) & !(mask << 32)
                };
                let r = m.set_entry(gc, target | COPIED, bitmap).await;
                if r.is_ok() && fresh {
                    self.release_old(&mut m, old.0);
                }
                r
            }
            Err(e) => {
                if fresh {
                    m.free_later(target, 1);
                }
                Err(e)
            }
        };
        for w in m.inflight.remove(&gc).unwrap_or_default() {
            let _ = w.send(());
        }
        out
    }

    /// Queues the refcount drop of the cluster an old L2 entry pointed to.
    pub(crate) fn release_old(&self, m: &mut Meta, e: u64) {
        self.release(m, e, false)
    }

    /// [`Self::release_old`] for clusters a discard (or a write of zeroes that may
    /// unmap) drops: their storage is given back to the file system once free.
    pub(crate) fn release_discarded(&self, m: &mut Meta, e: u64) {
        self.release(m, e, true)
    }

    /// Queues the refcount drop of the cluster an old L2 entry pointed to; with
    /// `discard`, its storage is given back to the file system once free.
    fn release(&self, m: &mut Meta, e: u64, discard: bool) {
        let (host, len) = if e & COMPRESSED != 0 {
            let x = 62 - (self.cluster_bits - 8);
            let host = e & ((1u64 << x) - 1);
            let sectors = ((e >> x) & ((1u64 << (62 - x)) - 1)) + 1;
            (host, sectors * 512 - (host & 511))
        } else if e & OFFSET_MASK != 0 {
            (e & OFFSET_MASK, 1)
        } else {
            return;
        };
        if discard {
            m.free_later_discard(host, len);
        } else {
            m.free_later(host, len);
        }
    }

    /// Zeroes (or discards) a range: whole clusters become zero/unallocated entries,
    /// partial clusters are written with zeroes (discard skips them).
    pub(crate) async fn zero_or_discard(
        &self,
        offset: u64,
        len: u64,
        discard: bool,
        unmap: bool,
    ) -> io::Result<()> {
        let cs = self.cluster_size();
        let end = offset + len;
        let mut off = offset;
        while off < end {
            let gc = off >> self.cluster_bits;
            let a = off & (cs - 1);
            let n = (cs - a).min(end - off);
            let whole = a == 0 && (n == cs || off + n == self.size());
            if whole {
                self.zero_cluster(gc, discard, discard || unmap).await?;
            } else if !discard {
                let z = vec![0u8; n as usize];
                self.write_cluster(off, &IoVec::from_slice(&z)).await?;
            }
            off += n;
        }
        Ok(())
    }

    /// Makes guest cluster `gc` read as zeroes (or, for `discard` without a backing
    /// file, unallocated); with `unmap`, its old storage goes back to the file system.
    async fn zero_cluster(&self, gc: u64, discard: bool, unmap: bool) -> io::Result<()> {
        loop {
            let mut m = self.meta.lock().await;
            if m.corrupt {
                return Err(os(libc::EIO));
            }
            if let Some(w) = m.inflight.get_mut(&gc) {
                let (tx, rx) = oneshot::channel();
                w.push(tx);
                drop(m);
                let _ = rx.await;
                continue;
            }
            let (e, bm) = m.entry(gc).await?;
            let (ne, nb) = if self.ext {
                (0, ALL_ZERO_BITMAP)
            } else if self.version.load(Ordering::Acquire) == 3 {
                (ZERO, 0)
            } else if self.backing.is_none() {
                (0, 0)
            } else if discard {
                return Ok(());
            } else {
                drop(m);
                let z = vec![0u8; self.cluster_size() as usize];
                let len = (self.size() - gc * self.cluster_size()).min(z.len() as u64) as usize;
                return self
                    .write_cluster(gc * self.cluster_size(), &IoVec::from_slice(&z[..len]))
                    .await;
            };
            if (e, bm) == (ne, nb) {
                return Ok(());
            }
            if e == 0
                && bm == 0
                && m.l2_table(gc, false).await?.is_none()
                && self.backing.is_none()
                && discard
            {
                return Ok(());
            }
            m.set_entry(gc, ne, nb).await?;
            self.release(&mut m, e, unmap);
            return Ok(());
        }
    }
}
