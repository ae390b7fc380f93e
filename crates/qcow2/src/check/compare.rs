//! Comparing the in-memory refcounts with the refcount blocks (QEMU's
//! `compare_refcounts`) and checking the COPIED flags (`check_oflag_copied`).

use std::io;

use oxemu_block::BlockDriverExt;

use super::walk::{kind, l2_entry, Kind};
use super::{Ck, Repair, REFT_RESERVED};
use crate::meta::{COPIED, OFFSET_MASK};
use crate::refcount;

/// What a refcount block holds for the clusters being compared.
enum Block {
    /// No block (or past the table): every refcount is 0.
    None,
    /// The offset is not cluster aligned: refcounts cannot be read.
    Unreadable,
    /// The block's bytes and its offset.
    Data(Vec<u8>, u64),
}

impl Ck {
    fn entries_per_block(&self) -> u64 {
        refcount::entries_per_block(self.h.cluster_bits, self.h.refcount_order)
    }

    async fn load_block(&self, rt: usize) -> io::Result<Block> {
        let off = self.reftable.get(rt).copied().unwrap_or(0) & !REFT_RESERVED;
        if off == 0 {
            return Ok(Block::None);
        }
        if off % self.cs != 0 {
            return Ok(Block::Unreadable);
        }
        let mut b = vec![0u8; self.cs as usize];
        self.read_padded(off, &mut b).await?;
        Ok(Block::Data(b, off))
    }

    /// Compares every cluster's stored refcount with the computed one, fixing what
    /// `fix` allows; sets `rebuild` when a cluster in use has refcount 0.
    pub(super) async fn compare(
        &mut self,
        fix: Repair,
        rebuild: &mut bool,
        highest: &mut u64,
    ) -> io::Result<()> {
        let epb = self.entries_per_block();
        let order = self.h.refcount_order;
        let nb = self.refs.len() as u64;
        self.disk_diff.clear();
        *highest = 0;
        let mut c = 0u64;
        // Refcount blocks are read ahead in concurrent batches, one at a time when
        // repairing (a repair could rewrite a block the table lists twice).
        let batch = if fix.leaks() {
            1
        } else {
            ((16 << 20) / self.cs).clamp(1, 256)
        };
        let mut ahead = std::collections::VecDeque::new();
        while c < nb {
            let rt = c / epb;
            let end = ((rt + 1) * epb).min(nb);
            if ahead.is_empty() {
                let last = (rt + batch).min(nb.div_ceil(epb));
                let reads = (rt..last).map(|k| self.load_block(k as usize));
                ahead = futures::future::join_all(reads).await.into();
            }
            let mut block = ahead.pop_front().unwrap()?;
            let mut dirty = false;
            for i in c..end {
                let r1 = match &block {
                    Block::None => 0,
                    Block::Unreadable => {
                        self.msg(format!(
                            "Can't get refcount for cluster {i}: Input/output error"
                        ));
                        self.r.check_errors += 1;
                        self.disk_diff.insert(i, None);
                        continue;
                    }
                    Block::Data(b, _) => refcount::get(b, order, (i % epb) as usize),
                };
                let r2 = self.refs[i as usize] as u64;
                if r1 > 0 || r2 > 0 {
                    *highest = i;
                }
                if r1 == r2 {
                    continue;
                }
                let fixing = if r1 == 0 {
                    *rebuild = true;
                    false
                } else {
                    (r1 > r2 && fix.leaks()) || (r1 < r2 && fix.errors())
                };
                let tag = if fixing {
                    "Repairing"
                } else if r1 < r2 {
                    "ERROR"
                } else {
                    "Leaked"
                };
                self.msg(format!("{tag} cluster {i} refcount={r1} reference={r2}"));
                if fixing {
                    if let Block::Data(b, _) = &mut block {
                        refcount::set(b, order, (i % epb) as usize, r2);
                        dirty = true;
                        if r1 > r2 {
                            self.r.leaks_fixed += 1;
                        } else {
                            self.r.corruptions_fixed += 1;
                        }
                        continue;
                    }
                }
                self.disk_diff.insert(i, Some(r1));
                if r1 < r2 {
                    self.r.corruptions += 1;
                } else {
                    self.r.leaks += 1;
                }
            }
            if let (true, Block::Data(b, off)) = (dirty, &block) {
                self.file.write_at(*off, b).await?;
            }
            c = end;
        }
        if fix.leaks() {
            self.file.flush().await?;
        }
        Ok(())
    }

    /// The refcount of host cluster `c` as stored after the last comparison (and its
    /// repairs); None when it cannot be read.
    async fn stored_refcount(&mut self, c: u64) -> io::Result<Option<u64>> {
        if c < self.refs.len() as u64 {
            return Ok(match self.disk_diff.get(&c) {
                Some(v) => *v,
                None => Some(self.refs[c as usize] as u64),
            });
        }
        let epb = self.entries_per_block();
        Ok(match self.load_block((c / epb) as usize).await? {
            Block::None => Some(0),
            Block::Unreadable => None,
            Block::Data(b, _) => Some(refcount::get(&b, self.h.refcount_order, (c % epb) as usize)),
        })
    }

    /// Checks that the COPIED flag of every active L1 and L2 entry is set exactly
    /// when the cluster's refcount is 1, and repairs it when allowed.
    pub(super) async fn oflag_copied(&mut self, fix: Repair) -> io::Result<()> {
        let repair = match fix {
            Repair::All => true,
            // Safe only when the refcounts are now known to be right.
            Repair::Leaks => {
                self.r.check_errors == 0 && self.r.corruptions == 0 && self.r.leaks == 0
            }
            Repair::None => false,
        };
        let tag = if repair { "Repairing" } else { "ERROR" };
        let (cs, esize, ext) = (self.cs, self.esize, self.esize == 16);
        let batch = ((16 << 20) / cs as usize).clamp(1, 256);
        let mut next = 0usize;
        let mut ahead = std::collections::VecDeque::new();
        for i in 0..self.l1.len() {
            let e = self.l1[i];
            let l2 = e & OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            if i >= next {
                // Read the L2 tables of the next entries together; one at a time when
                // repairing (a repair could rewrite a table listed twice).
                let end = if repair { i + 1 } else { (i + batch).min(self.l1.len()) };
                let idx: Vec<usize> = (i..end).filter(|&k| self.l1[k] & OFFSET_MASK != 0).collect();
                let l1e: Vec<u64> = idx.iter().map(|&k| self.l1[k]).collect();
                next = end;
                ahead = idx.into_iter().zip(self.read_l2_batch(&l1e).await).collect();
            }
            let table = match ahead.pop_front() {
                Some((k, t)) if k == i => t,
                _ => Err(io::Error::other("L2 read-ahead out of step")),
            };
            let Some(rc) = self.stored_refcount(l2 / cs).await? else {
                continue;
            };
            if (rc == 1) != (e & COPIED != 0) {
                self.r.corruptions += 1;
                self.msg(format!(
                    "{tag} OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={e:x} refcount={rc}"
                ));
                if repair {
                    let ne = if rc == 1 { e | COPIED } else { e & !COPIED };
                    let at = self.h.l1_table_offset + 8 * i as u64;
                    if let Err(err) = self.file.write_at(at, &ne.to_be_bytes()).await {
                        self.r.check_errors += 1;
                        return Err(err);
                    }
                    self.l1[i] = ne;
                    self.r.corruptions -= 1;
                    self.r.corruptions_fixed += 1;
                }
            }
            let mut t = match table {
                Ok(t) => t,
                Err(err) => {
                    self.msg(format!("ERROR: Could not read L2 table: {err}"));
                    self.r.check_errors += 1;
                    return Err(err);
                }
            };
            let n = self.l2_entries_inside(l2)?;
            let mut dirty = 0u64;
            for j in 0..n {
                let (le, _) = l2_entry(&t, j, esize);
                if !matches!(kind(le, ext), Kind::Normal | Kind::ZeroAlloc) {
                    continue;
                }
                let Some(rc) = self.stored_refcount((le & OFFSET_MASK) / cs).await? else {
                    continue;
                };
                if (rc == 1) != (le & COPIED != 0) {
                    self.r.corruptions += 1;
                    self.msg(format!(
                        "{tag} OFLAG_COPIED data cluster: l2_entry={le:x} refcount={rc}"
                    ));
                    if repair {
                        let ne = if rc == 1 { le | COPIED } else { le & !COPIED };
                        t[j * esize..j * esize + 8].copy_from_slice(&ne.to_be_bytes());
                        dirty += 1;
                    }
                }
            }
            if dirty > 0 {
                if self.overlaps_metadata(l2, cs, true) {
                    self.msg("ERROR: Could not write L2 table; metadata overlap check failed: Input/output error".into());
                    self.r.check_errors += 1;
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
                if let Err(err) = self.file.write_at(l2, &t).await {
                    self.msg(format!("ERROR: Could not write L2 table: {err}"));
                    self.r.check_errors += 1;
                    return Err(err);
                }
                self.r.corruptions -= dirty;
                self.r.corruptions_fixed += dirty;
            }
        }
        if repair {
            self.file.flush().await?;
        }
        Ok(())
    }
}
