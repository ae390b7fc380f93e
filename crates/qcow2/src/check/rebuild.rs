//! Rebuilding the refcount structure from the in-memory refcounts (QEMU's
//! `rebuild_refcount_structure`), for `check -r all` when refcount blocks are missing
//! or broken.
//!
//! New refcount blocks are placed in clusters that the in-memory table shows free
//! (counting each new block there as it is placed), written as slices of the
//! in-memory table, then a new refcount table is placed the same way; placing it may
//! need more blocks, so both steps repeat until the table stops growing. Finally the
//! header is pointed at the new table. The old structure is left behind as leaks,
//! which the comparison that follows frees.

use std::io;

use oxemu_block::BlockDriverExt;

use super::Ck;
use crate::refcount;

impl Ck {
    /// Finds `n` contiguous free clusters from `*first_free` on (growing the image
    /// past its end if needed), marks them used and returns the first one's offset.
    fn alloc_imrt(&mut self, n: u64, first_free: &mut u64) -> io::Result<u64> {
        let mut c = *first_free;
        let mut run = 0u64;
        let mut first_gap = true;
        let len = self.refs.len() as u64;
        while c < len && run < n {
            if self.refs[c as usize] == 0 {
                run += 1;
                if first_gap {
                    *first_free = c;
                    first_gap = false;
                }
            } else {
                run = 0;
            }
            c += 1;
        }
        if run < n {
            self.grow(c + n - run)?;
        }
        let start = c - run;
        for k in start..start + n {
            self.refs[k as usize] = 1;
        }
        Ok(start * self.cs)
    }

    /// Writes the refcount blocks for the used clusters in `[first, end)`, placing the
    /// blocks not yet in `table`. Returns whether `table` grew.
    async fn write_refblocks(
        &mut self,
        first: u64,
        mut end: u64,
        table: &mut Vec<u64>,
    ) -> io::Result<bool> {
        let epb = refcount::entries_per_block(self.h.cluster_bits, self.h.refcount_order);
        let order = self.h.refcount_order;
        let mut first_free = 0u64;
        let mut grown = false;
        let mut c = first;
        while c < end {
            if self.refs.get(c as usize).copied().unwrap_or(0) == 0 {
                c += 1;
                continue;
            }
            let idx = c / epb;
            let start = idx * epb;
            let off = match table.get(idx as usize) {
                Some(&o) if o != 0 => o,
                _ => {
                    first_free = first_free.max(start);
                    let o = self.alloc_imrt(1, &mut first_free).map_err(|e| {
                        io::Error::new(e.kind(), format!("ERROR allocating refblock: {e}"))
                    })?;
                    end = end.max(o / self.cs + 1);
                    if table.len() as u64 <= idx {
                        let per_cluster = self.cs / 8;
                        let n = (idx + 1).next_multiple_of(per_cluster);
                        if n * 8 > crate::header::MAX_REFTABLE_BYTES {
                            return Err(io::Error::other(
                                "ERROR allocating reftable memory: the refcount table would exceed its maximum size",
                            ));
                        }
                        table.resize(n as usize, 0);
                        grown = true;
                    }
                    table[idx as usize] = o;
                    o
                }
            };
            let mut block = vec![0u8; self.cs as usize];
            for k in 0..epb {
                let v = self.refs.get((start + k) as usize).copied().unwrap_or(0);
                if v != 0 {
                    refcount::set(&mut block, order, k as usize, v as u64);
                }
            }
            self.file
                .write_at(off, &block)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("ERROR writing refblock: {e}")))?;
            c = start + epb;
        }
        Ok(grown)
    }

    /// Builds and installs a new refcount structure from `self.refs`.
    pub(super) async fn rebuild(&mut self) -> io::Result<()> {
        let nb = self.refs.len() as u64;
        let mut table = Vec::new();
        self.write_refblocks(0, nb, &mut table).await?;
        let mut table_off;
        let mut clusters;
        loop {
            let bytes = table.len() as u64 * 8;
            clusters = bytes.div_ceil(self.cs).max(1);
            let mut ff = 0;
            table_off = self
                .alloc_imrt(clusters, &mut ff)
                .map_err(|e| io::Error::new(e.kind(), format!("ERROR allocating reftable: {e}")))?;
            let first = table_off / self.cs;
            let grew = self
                .write_refblocks(first, first + clusters, &mut table)
                .await?;
            if !grew {
                break;
            }
        }
        let mut raw: Vec<u8> = table.iter().flat_map(|v| v.to_be_bytes()).collect();
        raw.resize((clusters * self.cs) as usize, 0);
        self.file
            .write_at(table_off, &raw)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("ERROR writing reftable: {e}")))?;
        self.file.flush().await?;
        let mut hdr = [0u8; 12];
        hdr[..8].copy_from_slice(&table_off.to_be_bytes());
        hdr[8..].copy_from_slice(&(clusters as u32).to_be_bytes());
        let set = async {
            self.file.write_at(48, &hdr).await?;
            self.file.flush().await
        };
        set.await
            .map_err(|e| io::Error::new(e.kind(), format!("ERROR setting reftable: {e}")))?;
        self.h.refcount_table_offset = table_off;
        self.h.refcount_table_clusters = clusters as u32;
        self.reftable = table;
        self.reftable.resize((clusters * self.cs / 8) as usize, 0);
        self.file_len = self.file.size();
        Ok(())
    }
}
