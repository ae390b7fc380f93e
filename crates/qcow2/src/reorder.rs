//! Changing the refcount width of an image (`amend -o refcount_bits=N`): a complete
//! new set of refcount blocks and a new refcount table with the new width are written
//! to free space past the end of the image, then one header write switches to them.
//! A crash before the switch leaves the old structures in charge (the new ones are
//! unreferenced space past the old end); after it, the old structures are free
//! clusters of the new ones. Nothing is ever half-converted.

use std::io;

use oxemu_block::BlockDriverExt;

use crate::meta::Meta;
use crate::{refcount, Qcow2};

/// Bytes of L2 and refcount cache the reloaded metadata gets (the open default).
const CACHE_BYTES: u64 = 32 << 20;

impl Qcow2 {
    /// Rewrites the refcount structures with `order` (refcount bits = 2^order) and
    /// reloads the metadata state from the new header.
    pub(crate) async fn change_refcount_order(&self, m: &mut Meta, order: u32) -> io::Result<()> {
        // Twice: the first writeback may leave deferred frees for the second.
        m.writeback().await?;
        m.writeback().await?;
        let cs = m.cs;
        let bits = m.h.cluster_bits;
        let n = self.file.size().div_ceil(cs);
        let mut counts = Vec::with_capacity(n as usize);
        for c in 0..n {
            counts.push(m.refcount(c).await?);
        }
        // The old structures are freed by the switch.
        let old_rt = m.h.refcount_table_offset / cs;
        let old_rt_n = m.h.refcount_table_clusters as u64;
        let mut old = (old_rt..old_rt + old_rt_n).collect::<Vec<u64>>();
        old.extend(
            m.reftable
                .iter()
                .map(|e| (e & !(cs - 1)) / cs)
                .filter(|&c| c != 0),
        );
        for c in old {
            if let Some(r) = counts.get_mut(c as usize) {
                *r = r.saturating_sub(1);
            }
        }
        let max = refcount::max(order);
        if let Some((c, &r)) = counts.iter().enumerate().find(|(_, &r)| r > max) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "Cannot decrease refcount entry width to {} bits: Cluster at offset {:#x} has a refcount of {r}",
                    1u32 << order,
                    c as u64 * cs
                ),
            ));
        }
        // New refcount blocks at clusters n.., the table right after them; both must
        // count themselves.
        let epb = refcount::entries_per_block(bits, order);
        let (mut nb, mut nt) = (1u64, 1u64);
        loop {
            let total = n + nb + nt;
            let nb2 = total.div_ceil(epb);
            let nt2 = (nb2 * 8).div_ceil(cs).max(1);
            if (nb2, nt2) == (nb, nt) {
                break;
            }
            (nb, nt) = (nb2, nt2);
        }
        counts.resize((n + nb + nt) as usize, 1);
        let mut table = vec![0u8; (nt * cs) as usize];
        for i in 0..nb {
            let at = (n + i) * cs;
            table[8 * i as usize..8 * i as usize + 8].copy_from_slice(&at.to_be_bytes());
            let mut block = vec![0u8; cs as usize];
            let first = i * epb;
            for (j, &r) in counts
                .iter()
                .skip(first as usize)
                .take(epb as usize)
                .enumerate()
            {
                refcount::set(&mut block, order, j, r);
            }
            self.file.write_at(at, &block).await?;
        }
        self.file.write_at((n + nb) * cs, &table).await?;
        self.file.flush().await?;
        let mut h = m.h.clone();
        h.refcount_order = order;
        h.refcount_table_offset = (n + nb) * cs;
        h.refcount_table_clusters = nt as u32;
        let head = h.serialize()?;
        self.file.write_at(0, &head).await?;
        self.file.flush().await?;
        *m = Meta::load(h, self.file.clone(), CACHE_BYTES).await?;
        Ok(())
    }
}
