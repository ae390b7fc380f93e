//! `qemu-img check`: recompute every cluster's reference count from the metadata,
//! compare with the refcount blocks, and optionally repair.

use std::io;

use crate::header::bad;
use crate::meta::{Meta, COMPRESSED, COPIED, OFFSET_MASK, ZERO};
use crate::Qcow2;
use oxemu_block::BlockDriver;

/// What `check` may repair (`qemu-img check -r`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Repair {
    /// Only report.
    #[default]
    None,
    /// Fix refcounts that are too high (leaked clusters).
    Leaks,
    /// Fix leaks and refcounts that are too low, and wrong COPIED flags.
    All,
}

/// Result of a check, in the shape of `qemu-img check --output=json`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Corruptions found (refcount lower than references, bad entries).
    pub corruptions: u64,
    /// Leaked clusters found (refcount higher than references).
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
    /// Human-readable findings, one per line (`Leaked cluster 5 refcount=1 reference=0`).
    pub messages: Vec<String>,
}

/// Bounded number of clusters a check tracks (host clusters of a 4 TiB image with
/// 512-byte clusters would be 8G entries; refuse rather than allocate without bound).
const MAX_TRACKED: u64 = 1 << 28;

impl Qcow2 {
    /// Checks the image; with `repair`, fixes what it may and writes the result back.
    pub async fn check(&self, repair: Repair) -> io::Result<CheckReport> {
        let mut m = self.meta.lock().await;
        m.writeback().await?;
        let mut r = CheckReport::default();
        let cs = m.cs;
        let file_clusters = self.file.size().div_ceil(cs);
        let mut refs: Vec<u32> = Vec::new();
        let bump = |refs: &mut Vec<u32>, r: &mut CheckReport, off: u64, len: u64, what: &str| {
            if len == 0 {
                return;
            }
            let (first, last) = (off / cs, (off + len - 1) / cs);
            if last >= file_clusters.max(1) + MAX_TRACKED || last >= MAX_TRACKED {
                r.corruptions += 1;
                r.messages.push(format!("ERROR {what} at {off:#x} is far beyond the end of the image"));
                return;
            }
            if refs.len() <= last as usize {
                refs.resize(last as usize + 1, 0);
            }
            for c in first..=last {
                refs[c as usize] = refs[c as usize].saturating_add(1);
            }
        };
        bump(&mut refs, &mut r, 0, cs, "header");
        bump(&mut refs, &mut r, m.h.l1_table_offset, m.h.l1_size as u64 * 8, "L1 table");
        bump(&mut refs, &mut r, m.h.refcount_table_offset, m.h.refcount_table_clusters as u64 * cs, "refcount table");
        if m.h.nb_snapshots > 0 {
            r.check_errors += 1;
            r.messages.push("ERROR internal snapshots are not supported by this checker".into());
        }
        for i in 0..m.reftable.len() {
            let off = m.reftable[i] & !(cs - 1);
            if off != 0 {
                bump(&mut refs, &mut r, off, cs, "refcount block");
            }
        }
        let gclusters = self.size().div_ceil(cs);
        r.total_clusters = gclusters;
        let mut prev_host = None;
        let mut fix_copied = Vec::new();
        for gc in 0..gclusters {
            if gc % m.l2_entries == 0 {
                let l1i = (gc / m.l2_entries) as usize;
                let e = m.l1[l1i];
                let off = e & OFFSET_MASK;
                if off != 0 {
                    if off % cs != 0 || off >= file_clusters * cs {
                        r.corruptions += 1;
                        r.messages.push(format!("ERROR L2 table offset {off:#x} in L1 entry {l1i} is unaligned or past the end of the image"));
                        continue;
                    }
                    bump(&mut refs, &mut r, off, cs, "L2 table");
                }
            }
            let l1e = m.l1[(gc / m.l2_entries) as usize] & OFFSET_MASK;
            if l1e == 0 || l1e % cs != 0 || l1e >= file_clusters * cs {
                continue;
            }
            let (e, _bm) = match m.entry(gc).await {
                Ok(v) => v,
                Err(err) => {
                    r.check_errors += 1;
                    r.messages.push(format!("ERROR reading L2 entry of guest offset {:#x}: {err}", gc * cs));
                    continue;
                }
            };
            if e & COMPRESSED != 0 {
                let x = 62 - (m.h.cluster_bits - 8);
                let host = e & ((1u64 << x) - 1);
                let sectors = ((e >> x) & ((1u64 << (62 - x)) - 1)) + 1;
                bump(&mut refs, &mut r, host, sectors * 512 - (host & 511), "compressed cluster");
                r.allocated_clusters += 1;
                r.compressed_clusters += 1;
                prev_host = None;
                continue;
            }
            let host = e & OFFSET_MASK;
            if host == 0 {
                continue;
            }
            if host % cs != 0 {
                r.corruptions += 1;
                r.messages.push(format!("ERROR offset={host:#x}: Cluster is not properly aligned; L2 entry corrupted"));
                continue;
            }
            if !(m.h.version == 3 && e & ZERO != 0) {
                r.allocated_clusters += 1;
                if prev_host.is_some_and(|p| p + cs != host) {
                    r.fragmented_clusters += 1;
                }
                prev_host = Some(host);
            }
            bump(&mut refs, &mut r, host, cs, "data cluster");
            fix_copied.push((gc, e));
        }
        let highest = refs.iter().rposition(|&n| n > 0).map(|c| c as u64 + 1).unwrap_or(0);
        r.image_end_offset = highest * cs;
        self.compare_refcounts(&mut m, &refs, repair, &mut r).await?;
        for (gc, e) in fix_copied {
            let rc = m.refcount((e & OFFSET_MASK) / cs).await?;
            let want = rc == 1;
            if (e & COPIED != 0) != want {
                r.corruptions += 1;
                r.messages.push(format!("ERROR OFLAG_COPIED data cluster: l2_entry={e:x} refcount={rc}"));
                if repair == Repair::All {
                    let ne = if want { e | COPIED } else { e & !COPIED };
                    let (_, bm) = m.entry(gc).await?;
                    m.set_entry(gc, ne, bm).await?;
                    r.corruptions_fixed += 1;
                }
            }
        }
        if repair != Repair::None {
            m.writeback().await?;
        }
        Ok(r)
    }

    async fn compare_refcounts(&self, m: &mut Meta, refs: &[u32], repair: Repair, r: &mut CheckReport) -> io::Result<()> {
        let cs = m.cs;
        let stored_end = (m.reftable.len() as u64) * crate::refcount::entries_per_block(m.h.cluster_bits, m.h.refcount_order);
        let n = (refs.len() as u64).max(self.file.size().div_ceil(cs)).min(stored_end.max(refs.len() as u64));
        for c in 0..n {
            let want = refs.get(c as usize).copied().unwrap_or(0) as u64;
            let have = if c < stored_end { m.refcount(c).await? } else { 0 };
            if have == want {
                continue;
            }
            if want > crate::refcount::max(m.h.refcount_order) {
                r.corruptions += 1;
                r.messages.push(format!("ERROR cluster {c} reference={want} exceeds the refcount width"));
                continue;
            }
            if have > want {
                r.leaks += 1;
                r.messages.push(format!("Leaked cluster {c} refcount={have} reference={want}"));
                if repair != Repair::None && m.add_ref(c, want as i64 - have as i64).await.is_ok() {
                    r.leaks_fixed += 1;
                }
            } else {
                r.corruptions += 1;
                r.messages.push(format!("ERROR cluster {c} refcount={have} reference={want}"));
                if repair == Repair::All {
                    if m.refcount_block_exists(c) {
                        m.add_ref(c, want as i64 - have as i64).await?;
                        r.corruptions_fixed += 1;
                    } else {
                        return Err(bad("refcount table", m.h.refcount_table_offset, format!("cluster {c} in use has no refcount block; rebuilding the refcount structure is not supported")));
                    }
                }
            }
        }
        Ok(())
    }
}
