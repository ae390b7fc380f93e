//! Emptying an image (`qemu-img commit` without `-d`): every guest cluster becomes
//! unallocated, so the image reads through to its backing file again, and the storage
//! freed at the end of the file is given back.

use std::io;

use crate::meta::{Meta, OFFSET_MASK};
use crate::{os, Qcow2};

impl Qcow2 {
    /// Unmaps every guest cluster (data, zero and compressed alike), writes the
    /// metadata back in crash-safe order, then truncates the file after the last
    /// cluster still in use. Requests running at the same time see either state.
    pub async fn make_empty(&self) -> io::Result<()> {
        if self.read_only {
            return Err(os(libc::EROFS));
        }
        self.before_write().await?;
        let mut m = self.meta.lock().await;
        if m.corrupt {
            return Err(os(libc::EIO));
        }
        let per = m.l2_entries;
        for l1i in 0..m.l1.len() as u64 {
            if m.l1[l1i as usize] & OFFSET_MASK == 0 {
                continue;
            }
            for gc in l1i * per..(l1i + 1) * per {
                let (e, bm) = m.entry(gc).await?;
                if e != 0 || bm != 0 {
                    m.set_entry(gc, 0, 0).await?;
                    self.release_discarded(&mut m, e);
                }
            }
        }
        // Unmapped clusters get refcount 0 only after the L2 tables are on disk.
        m.writeback().await?;
        self.truncate_unused_tail(&mut m).await
    }

    /// Truncates the file after the last cluster with a non-zero refcount (metadata
    /// already written back), as QEMU does after emptying or shrinking an image.
    pub(crate) async fn truncate_unused_tail(&self, m: &mut Meta) -> io::Result<()> {
        let cs = m.cs;
        let mut end = self.file.size().div_ceil(cs);
        while end > 1 && m.refcount(end - 1).await? == 0 {
            end -= 1;
        }
        if end * cs < self.file.size() {
            self.file.truncate(end * cs).await?;
        }
        Ok(())
    }
}
