//! Internal snapshot operations: list, create, apply (goto) and delete, as QEMU 7.2's
//! `block/qcow2-snapshot.c` does them.
//!
//! Each operation runs with the metadata lock held and no guest write in flight (the
//! caller's duty, as QEMU drains the node; while a write is in flight an operation
//! fails with `EBUSY`). The writeback order makes sure that no
//! refcount on disk is ever too low and that no cluster is freed while anything on
//! disk reaches it:
//!
//! - **create**: the active L1 table is copied to new clusters; every cluster it
//!   reaches gets one more reference and loses COPIED in the active tables; all of
//!   it is written back (refcounts before tables) before the new snapshot table,
//!   in new clusters, is made current by one header update; the old table is freed
//!   after that.
//! - **apply**: the snapshot's clusters get one more reference (written back), then
//!   the active L1 table is overwritten with the snapshot's (written back), and only
//!   then do the old active table's clusters lose their reference; COPIED flags are
//!   set again from the refcounts.
//! - **delete**: the table without the snapshot is made current first; then the
//!   snapshot's clusters lose their reference and its L1 copy is freed, and the
//!   active entries whose clusters are no longer shared get COPIED back (their
//!   refcounts reach the disk before the flags).
//!
//! COPIED flags and refcounts live in different clusters, so an operation cut short
//! can leave flags that disagree with refcounts (as in QEMU), which `qemu-img check`
//! reports; the disagreement is harmless (a missing flag only makes a needless copy,
//! a flag on a cluster with an extra reference means that reference is a leak). To
//! get it repaired, v3 images carry the dirty bit for the time of the operation: the
//! next read-write open, by QEMU or by oxemu, repairs the refcounts and flags.

use std::io;

use oxemu_block::BlockDriver;

use crate::meta::Meta;
use crate::snapshot::{read_table, Snapshot, ENTRY_FIXED_BYTES, MAX_SNAPSHOTS, MAX_TABLE_BYTES};
use crate::{os, Qcow2};

/// What [`Qcow2::snapshot_create`] records besides the disk state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewSnapshot {
    /// Name (TAG); QEMU keeps at most 255 bytes of it, and so do we.
    pub name: String,
    /// Creation time, seconds since the epoch.
    pub date_sec: u32,
    /// Creation time, nanoseconds part.
    pub date_nsec: u32,
    /// Guest clock in nanoseconds (0 for disk-only snapshots).
    pub vm_clock_nsec: u64,
    /// Guest instruction count; `qemu-img snapshot -c` records 0, a VM without
    /// icount records `u64::MAX` (-1, "unknown").
    pub icount: u64,
}

/// Most bytes of a snapshot name QEMU keeps (its name buffer holds 256 with the NUL).
pub const MAX_NAME_BYTES: usize = 255;

fn bytes_to_u64s(raw: &[u8]) -> Vec<u64> {
    raw.chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
        .collect()
}

fn u64s_to_bytes(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|e| e.to_be_bytes()).collect()
}

/// C's `strtoul(s, NULL, 10)` as QEMU uses it on ids: leading blanks, an optional
/// sign, the digits that follow; 0 when there are none, saturating on overflow.
fn strtoul(s: &str) -> u64 {
    let t = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let mut v: u64 = 0;
    for b in t.bytes().take_while(u8::is_ascii_digit) {
        v = v.saturating_mul(10).saturating_add((b - b'0') as u64);
    }
    if neg {
        v.wrapping_neg()
    } else {
        v
    }
}

/// The id QEMU gives a new snapshot: one more than the largest numeric id.
pub fn next_snapshot_id(snaps: &[Snapshot]) -> String {
    let max = snaps.iter().map(|s| strtoul(&s.id)).max().unwrap_or(0);
    max.wrapping_add(1).to_string()
}

/// Index of the snapshot with this id, else of the first one with this name
/// (QEMU's `find_snapshot_by_id_or_name`, used by apply).
pub fn find_by_id_or_name(snaps: &[Snapshot], id_or_name: &str) -> Option<usize> {
    snaps
        .iter()
        .position(|s| s.id == id_or_name)
        .or_else(|| snaps.iter().position(|s| s.name == id_or_name))
}

/// Index of the first snapshot matching both `id` and `name`, or the one given
/// (QEMU's `find_snapshot_by_id_and_name`, used by delete).
pub fn find_by_id_and_name(
    snaps: &[Snapshot],
    id: Option<&str>,
    name: Option<&str>,
) -> Option<usize> {
    if id.is_none() && name.is_none() {
        return None;
    }
    snaps.iter().position(|s| {
        !matches!(id, Some(i) if s.id != i) && !matches!(name, Some(n) if s.name != n)
    })
}

/// True when a snapshot operation succeeded or was refused before it changed
/// anything (the errors it returns for bad requests).
fn ok_or_refused(err: Option<&io::Error>) -> bool {
    match err {
        None => true,
        Some(e) => matches!(
            e.raw_os_error(),
            Some(libc::ENOENT | libc::EINVAL | libc::EFBIG | libc::EBUSY | libc::EROFS)
        ),
    }
}

fn enoent() -> io::Error {
    os(libc::ENOENT)
}

impl Qcow2 {
    /// The internal snapshots, in table order (`qemu-img snapshot -l`).
    pub async fn snapshot_list(&self) -> io::Result<Vec<Snapshot>> {
        let m = self.meta.lock().await;
        Ok(read_table(self.file.as_ref(), &m.h).await?.snapshots)
    }

    /// Sets the dirty bit (v3) for the time of a snapshot operation, when it is not
    /// set already; returns whether it did. Refcounts and COPIED flags live in
    /// different clusters, so an operation cut short leaves some COPIED flags that
    /// disagree with their refcounts (harmlessly: a flag is only ever missing where a
    /// copy is made needlessly, or present on a cluster whose extra reference is a
    /// leak); with the dirty bit the next read-write open repairs that, by QEMU or
    /// by oxemu, as after a crash with lazy refcounts.
    async fn mark_dirty(&self) -> io::Result<bool> {
        self.before_write().await?;
        if self.version.load(std::sync::atomic::Ordering::Acquire) < 3
            || self.dirty_set.load(std::sync::atomic::Ordering::Acquire)
        {
            return Ok(false);
        }
        self.set_dirty(true).await?;
        Ok(true)
    }

    /// Ends what [`Self::mark_dirty`] started: clears the bit again after a
    /// successful operation or one refused before it changed anything.
    async fn unmark_dirty(&self, marked: bool, err: Option<&io::Error>) -> io::Result<()> {
        if marked && ok_or_refused(err) {
            self.set_dirty(false).await?;
        }
        Ok(())
    }

    /// Locks the metadata for a snapshot operation: the image must be writable and
    /// not corrupt; everything dirty is written back first.
    async fn snapshot_lock(&self) -> io::Result<futures::lock::MutexGuard<'_, Meta>> {
        self.before_write().await?;
        let mut m = self.meta.lock().await;
        if m.corrupt {
            return Err(os(libc::EIO));
        }
        if m.writes_in_flight() {
            // QEMU drains the node first; here the caller must have waited.
            return Err(os(libc::EBUSY));
        }
        m.writeback().await?;
        Ok(m)
    }

    /// Creates a disk-only snapshot of the current state (`qemu-img snapshot -c`)
    /// and returns its table entry. Like QEMU, names need not be unique (the id is);
    /// a name longer than [`MAX_NAME_BYTES`] is cut. Errors: `EFBIG` when the image
    /// already has 65536 snapshots or the table would exceed its size limit,
    /// `EINVAL` when a refcount would overflow (always the case with
    /// `refcount_bits=1` once anything is allocated).
    pub async fn snapshot_create(&self, new: &NewSnapshot) -> io::Result<Snapshot> {
        let mark = self.mark_dirty().await?;
        let r = self.create_inner(new).await;
        // The operation's own error says more than a failure to clear the bit after it.
        let u = self.unmark_dirty(mark, r.as_ref().err()).await;
        let v = r?;
        u.map(|()| v)
    }

    async fn create_inner(&self, new: &NewSnapshot) -> io::Result<Snapshot> {
        let mut m = self.snapshot_lock().await?;
        let table = read_table(self.file.as_ref(), &m.h).await?;
        if table.snapshots.len() as u64 >= MAX_SNAPSHOTS as u64 {
            return Err(os(libc::EFBIG));
        }
        let mut name = new.name.clone();
        if name.len() > MAX_NAME_BYTES {
            let mut n = MAX_NAME_BYTES;
            while !name.is_char_boundary(n) {
                n -= 1;
            }
            name.truncate(n);
        }
        let table_bytes: u64 = table.snapshots.iter().map(|s| s.entry_size() + 8).sum();
        if table_bytes + (ENTRY_FIXED_BYTES as u64 + 24 + 20 + name.len() as u64) > MAX_TABLE_BYTES
        {
            return Err(os(libc::EFBIG));
        }
        let mut l1 = m.l1.clone();
        m.check_increment(&l1).await?;
        // The snapshot's copy of the active L1 table (flags and all, as QEMU).
        let cs = m.cs;
        let l1_off = if l1.is_empty() {
            0
        } else {
            let n = (l1.len() as u64 * 8).div_ceil(cs);
            let at = m.alloc_contiguous(n).await?;
            m.write_raw(at, &u64s_to_bytes(&l1)).await?;
            at
        };
        if m.update_refcounts(&mut l1, 1).await? {
            m.ol.invalidate();
            m.l1 = l1.clone();
            m.l1_changed();
        }
        m.writeback().await?;
        let sn = Snapshot {
            l1_table_offset: l1_off,
            l1_size: l1.len() as u32,
            id: next_snapshot_id(&table.snapshots),
            name,
            date_sec: new.date_sec,
            date_nsec: new.date_nsec,
            vm_clock_nsec: new.vm_clock_nsec,
            vm_state_size: 0,
            disk_size: Some(self.size()),
            icount: Some(new.icount),
            extra_data_size: 24,
            extra_unknown: Vec::new(),
            entry_offset: 0,
        };
        let mut snaps = table.snapshots;
        snaps.push(sn.clone());
        self.write_snapshot_table(&mut m, snaps, (table.offset, table.size))
            .await?;
        Ok(sn)
    }

    /// Writes `snaps` as the new snapshot table in new clusters, makes the header
    /// point to it once the table and its refcounts are durable, then frees the old
    /// table (`old`: offset and size).
    pub(crate) async fn write_snapshot_table(
        &self,
        m: &mut Meta,
        mut snaps: Vec<Snapshot>,
        old: (u64, u64),
    ) -> io::Result<()> {
        let size = self.size();
        let mut raw = Vec::new();
        for s in &mut snaps {
            // QEMU always writes the 64-bit VM state size, disk size and icount.
            s.disk_size.get_or_insert(size);
            s.icount.get_or_insert(u64::MAX);
            s.extra_data_size = s.extra_data_size.max(24);
            raw.extend(s.serialize());
        }
        if raw.len() as u64 > MAX_TABLE_BYTES {
            return Err(os(libc::EFBIG));
        }
        let cs = m.cs;
        let off = if raw.is_empty() {
            0
        } else {
            let at = m.alloc_contiguous((raw.len() as u64).div_ceil(cs)).await?;
            m.write_raw(at, &raw).await?;
            at
        };
        // Flushes the table and makes its refcounts durable.
        m.writeback().await?;
        let prev = m.h.clone();
        m.h.nb_snapshots = snaps.len() as u32;
        m.h.snapshots_offset = off;
        if let Err(e) = m.write_header().await {
            m.h = prev;
            return Err(e);
        }
        m.flush_file().await?;
        let (old_off, old_size) = old;
        if old_off != 0 && old_size > 0 {
            for c in old_off / cs..=(old_off + old_size - 1) / cs {
                // The new table is in place: failing to free the old one only leaks it.
                // QEMU reports that (from qcow2_free_clusters) and goes on.
                if let Err(e) = m.unref(c).await {
                    eprintln!("qcow2_free_clusters failed: {}", crate::strerror(&e));
                    break;
                }
            }
        }
        Ok(())
    }

    /// Reads a snapshot's L1 table after checking its location.
    async fn snapshot_l1(&self, m: &Meta, sn: &Snapshot) -> io::Result<Vec<u64>> {
        sn.validate(m.cs)?;
        let len = sn.l1_size as u64 * 8;
        if len > 0 && sn.l1_table_offset.saturating_add(len) > self.file.size() {
            return Err(crate::invalid(
                "snapshot l1_table_offset",
                sn.entry_offset,
                format!(
                    "the L1 table of snapshot {} is past the end of the file",
                    sn.id
                ),
            ));
        }
        Ok(bytes_to_u64s(
            &m.read_raw(sn.l1_table_offset, len as usize).await?,
        ))
    }

    /// Shows a snapshot instead of the active state until the image is closed, without
    /// changing the file (QEMU's `bdrv_snapshot_load_tmp`, behind `qemu-img convert -l`
    /// and `qemu-nbd -l`). The snapshot is the first one matching both `id` and
    /// `name` (one may be left out). Only a read-only image can do this (`EPERM`
    /// otherwise, QEMU's "Device is not readonly"); `ENOENT` when no snapshot matches.
    /// As in QEMU, the virtual size stays the active one: guest clusters past the
    /// snapshot's L1 table read as unallocated.
    pub async fn snapshot_load_tmp(&self, id: Option<&str>, name: Option<&str>) -> io::Result<()> {
        if !self.read_only {
            return Err(os(libc::EPERM));
        }
        let mut m = self.meta.lock().await;
        let table = read_table(self.file.as_ref(), &m.h).await?;
        let sn = find_by_id_and_name(&table.snapshots, id, name)
            .map(|i| table.snapshots[i].clone())
            .ok_or_else(enoent)?;
        let l1 = self.snapshot_l1(&m, &sn).await?;
        m.show_l1(l1);
        Ok(())
    }

    /// Reverts the disk to a snapshot, found by id or else by name (`qemu-img
    /// snapshot -a`). The virtual size becomes the snapshot's. `ENOENT` when there
    /// is no such snapshot.
    pub async fn snapshot_apply(&self, id_or_name: &str) -> io::Result<()> {
        let mark = self.mark_dirty().await?;
        let r = self.apply_inner(id_or_name).await;
        // The operation's own error says more than a failure to clear the bit after it.
        let u = self.unmark_dirty(mark, r.as_ref().err()).await;
        r?;
        u
    }

    async fn apply_inner(&self, id_or_name: &str) -> io::Result<()> {
        let m = self.snapshot_lock().await?;
        let table = read_table(self.file.as_ref(), &m.h).await?;
        let sn = find_by_id_or_name(&table.snapshots, id_or_name)
            .map(|i| table.snapshots[i].clone())
            .ok_or_else(enoent)?;
        sn.validate(m.cs)?;
        drop(m);
        if let Some(ds) = sn.disk_size {
            if ds != self.size() {
                self.resize(ds).await?;
            }
        }
        let mut m = self.snapshot_lock().await?;
        let mut sn_l1 = self.snapshot_l1(&m, &sn).await?;
        if sn_l1.len() > m.l1.len() {
            self.grow_l1(&mut m, sn_l1.len(), None).await?;
        }
        m.check_increment(&sn_l1).await?;
        if m.update_refcounts(&mut sn_l1, 1).await? {
            m.write_raw(sn.l1_table_offset, &u64s_to_bytes(&sn_l1))
                .await?;
        }
        // The snapshot's clusters have their new references on disk before the
        // active table points to them.
        m.writeback().await?;
        let mut old = m.l1.clone();
        let mut new = sn_l1;
        new.resize(old.len(), 0);
        m.ol.invalidate();
        m.l1 = new;
        m.l1_changed();
        m.writeback().await?;
        // Only now does the old active table lose its references.
        m.update_refcounts(&mut old, -1).await?;
        let mut cur = m.l1.clone();
        if m.update_refcounts(&mut cur, 0).await? {
            m.ol.invalidate();
            m.l1 = cur;
            m.l1_changed();
        }
        m.writeback().await
    }

    /// Deletes the snapshot matching `id` and `name` (either may be left out, not
    /// both): QEMU's `bdrv_snapshot_delete`. `ENOENT` when none matches.
    pub async fn snapshot_delete(&self, id: Option<&str>, name: Option<&str>) -> io::Result<()> {
        let mark = self.mark_dirty().await?;
        let r = self.delete_inner(id, name).await;
        // The operation's own error says more than a failure to clear the bit after it.
        let u = self.unmark_dirty(mark, r.as_ref().err()).await;
        r?;
        u
    }

    async fn delete_inner(&self, id: Option<&str>, name: Option<&str>) -> io::Result<()> {
        let mut m = self.snapshot_lock().await?;
        let table = read_table(self.file.as_ref(), &m.h).await?;
        let i = find_by_id_and_name(&table.snapshots, id, name).ok_or_else(enoent)?;
        let sn = table.snapshots[i].clone();
        let mut sn_l1 = self.snapshot_l1(&m, &sn).await?;
        let mut snaps = table.snapshots;
        snaps.remove(i);
        self.write_snapshot_table(&mut m, snaps, (table.offset, table.size))
            .await?;
        // Nothing on disk reaches the snapshot's tables any more. A failure here leaves
        // leaks only (the table no longer names the snapshot); QEMU's words for it.
        let freed = async {
            m.update_refcounts(&mut sn_l1, -1).await?;
            let len = sn.l1_size as u64 * 8;
            if len > 0 {
                let cs = m.cs;
                for c in sn.l1_table_offset / cs..=(sn.l1_table_offset + len - 1) / cs {
                    m.unref(c).await?;
                }
            }
            let mut cur = m.l1.clone();
            if m.update_refcounts(&mut cur, 0).await? {
                m.ol.invalidate();
                m.l1 = cur;
                m.l1_changed();
            }
            // The refcounts drop on disk here.
            m.writeback().await
        }
        .await;
        freed.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("Failed to free the cluster and L1 table: {e}"),
            )
        })
    }

    /// Refuses a downgrade to compat=0.10 that would lose snapshot data: QEMU's
    /// rule for snapshots whose disk size differs from the image's or whose VM state
    /// needs 64 bits, and (QEMU would expand them; this driver does not) zero
    /// clusters in snapshots' L2 tables, which v2 cannot express.
    pub(crate) async fn check_snapshots_for_downgrade(&self, m: &Meta) -> io::Result<()> {
        let table = read_table(self.file.as_ref(), &m.h).await?;
        let size = self.size();
        for sn in &table.snapshots {
            if sn.vm_state_size > u32::MAX as u64 || sn.disk_size.unwrap_or(size) != size {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "Internal snapshots prevent downgrade of image",
                ));
            }
        }
        let stride = if m.ext { 2 } else { 1 };
        for sn in &table.snapshots {
            for t in self.snapshot_l1(m, sn).await? {
                let t = t & crate::meta::OFFSET_MASK;
                if t == 0 {
                    continue;
                }
                let l2 = bytes_to_u64s(&m.read_raw(t, m.cs as usize).await?);
                let zero = l2
                    .iter()
                    .step_by(stride)
                    .any(|e| e & crate::meta::COMPRESSED == 0 && e & crate::meta::ZERO != 0);
                if zero {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!(
                            "Cannot downgrade an image with zero clusters in internal snapshot {}",
                            sn.id
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Which snapshot `qemu-img convert -l` or `qemu-nbd -l` loads: QEMU's
/// `snapshot.id=ID,snapshot.name=NAME` options, or a bare id-or-name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotRef {
    /// A bare argument: tried as an id, then as a name.
    IdOrName(String),
    /// `snapshot.id=`/`snapshot.name=`: the snapshot must match the ones given.
    IdAndName {
        /// `snapshot.id`.
        id: Option<String>,
        /// `snapshot.name`.
        name: Option<String>,
    },
}

impl SnapshotRef {
    /// Parses a `-l` argument as QEMU does: options when it starts with `snapshot.`,
    /// otherwise an id-or-name. The error is QEMU's message.
    ///
    /// ```
    /// use oxemu_qcow2::snapshot_ops::SnapshotRef;
    /// assert_eq!(
    ///     SnapshotRef::parse("snapshot.name=a,,b").unwrap(),
    ///     SnapshotRef::IdAndName { id: None, name: Some("a,b".into()) }
    /// );
    /// assert_eq!(SnapshotRef::parse("sn1").unwrap(), SnapshotRef::IdOrName("sn1".into()));
    /// ```
    pub fn parse(param: &str) -> Result<SnapshotRef, String> {
        if !param.starts_with("snapshot.") {
            return Ok(SnapshotRef::IdOrName(param.to_string()));
        }
        let (mut id, mut name) = (None, None);
        for el in oxemu_opts::keyval::split_elements(param) {
            match el.split_once('=') {
                Some(("snapshot.id", v)) => id = Some(v.to_string()),
                Some(("snapshot.name", v)) => name = Some(v.to_string()),
                Some((k, _)) => return Err(format!("Invalid parameter '{k}'")),
                None => return Err(format!("Invalid parameter '{el}'")),
            }
        }
        Ok(SnapshotRef::IdAndName { id, name })
    }
}

impl crate::Image {
    /// Loads the snapshot `r` for reading (QEMU's `bdrv_snapshot_load_tmp` and its
    /// `_by_id_or_name` form) on a read-only image; the error is QEMU's message,
    /// which callers print after "Failed to load snapshot: ".
    pub async fn load_snapshot_tmp(&self, r: &SnapshotRef) -> Result<(), String> {
        let (id, name) = match r {
            SnapshotRef::IdOrName(s) => (Some(s.as_str()), None),
            SnapshotRef::IdAndName { id, name } => (id.as_deref(), name.as_deref()),
        };
        if id.is_none() && name.is_none() {
            return Err("snapshot_id and name are both NULL".into());
        }
        let Some(q) = &self.qcow2 else {
            return Err(format!(
                "Block format '{}' used by device '' does not support temporarily loading internal snapshots",
                self.format
            ));
        };
        let msg = |e: io::Error| match e.raw_os_error() {
            Some(libc::ENOENT) => "Can't find snapshot".to_string(),
            Some(libc::EPERM) => "Device is not readonly".to_string(),
            _ => e.to_string(),
        };
        match q.snapshot_load_tmp(id, name).await {
            Err(e)
                if matches!(r, SnapshotRef::IdOrName(_))
                    && e.raw_os_error() == Some(libc::ENOENT) =>
            {
                q.snapshot_load_tmp(None, id).await.map_err(msg)
            }
            res => res.map_err(msg),
        }
    }
}
