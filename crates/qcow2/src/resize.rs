//! Changing an image's virtual size (`resize`, `oxemu-img resize`).

use std::io;

use oxemu_block::{BlockDriver, BlockDriverExt};

use std::sync::atomic::Ordering;

use crate::meta::Meta;
use crate::{os, Qcow2};

impl Qcow2 {
    /// Changes the virtual size. Growing enlarges the L1 table when needed (a new table
    /// is written and flushed before the header points to it); shrinking drops the
    /// clusters past the new end.
    pub async fn resize(&self, size: u64) -> io::Result<()> {
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
            let from = size.next_multiple_of(cs);
            if from < old {
                self.zero_or_discard(from, old - from, true, true).await?;
            }
            // Make the discarded tail unallocated rather than zero-flagged.
            let mut m = self.meta.lock().await;
            for gc in from / cs..old.div_ceil(cs) {
                if m.l2_table(gc, false).await?.is_some() {
                    m.set_entry(gc, 0, 0).await?;
                }
            }
            m.writeback().await?;
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
        self.size.store(size, Ordering::Release);
        Ok(())
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
