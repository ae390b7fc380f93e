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
        while c < nb {
            let rt = c / epb;
            let end = ((rt + 1) * epb).min(nb);
            let mut block = self.load_block(rt as usize).await?;
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
        for i in 0..self.l1.len() {
            let e = self.l1[i];
            let l2 = e & OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
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
            let (mut t, n) = match self.read_l2(l2).await {
                Ok(v) => v,
                Err(err) => {
                    if err.raw_os_error() != Some(libc::EFBIG) {
                        self.msg(format!("ERROR: Could not read L2 table: {err}"));
                        self.r.check_errors += 1;
                    }
                    return Err(err);
                }
            };
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
