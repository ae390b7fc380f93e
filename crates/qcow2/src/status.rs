//! Block status (`qemu-img map`, NBD `base:allocation`), as QEMU's qcow2 driver
//! reports it: zero clusters that keep their storage show its offset, and in an image
//! with preallocated metadata the file is asked which data clusters are still holes.

use std::io;
use std::sync::atomic::Ordering;

use oxemu_block::{BlockDriver, BlockStatus};

use crate::meta::{Mapping, Meta, OFFSET_MASK};
use crate::{os, Qcow2};

/// `Qcow2::prealloc_state`: not looked at yet.
pub(crate) const PREALLOC_UNKNOWN: u8 = 0;
const PREALLOC_NO: u8 = 1;
const PREALLOC_YES: u8 = 2;

impl Qcow2 {
    /// Allocation status at `offset` (see [`oxemu_block::BlockDriver::block_status`]).
    pub(crate) async fn status(&self, offset: u64, len: u64) -> io::Result<BlockStatus> {
        if offset >= self.size() {
            return Err(os(libc::EINVAL));
        }
        let len = len.min(self.size() - offset).max(1);
        let cs = self.cluster_size();
        let mut m = self.meta.lock().await;
        // Bound the walk (and the time the metadata lock is held) to 512 clusters.
        let (first, mut n) = self.lookup_run(&mut m, offset, len.min(512 * cs)).await?;
        let in_off = offset & (cs - 1);
        let zero_host = if first == Mapping::Zero {
            let (host, same) = self.zero_run_storage(&mut m, offset, n).await?;
            n = same;
            host
        } else {
            None
        };
        let prealloc =
            matches!(first, Mapping::Data(_)) && self.metadata_preallocated(&mut m).await?;
        drop(m);
        Ok(match first {
            Mapping::Data(h) => {
                let mut st = BlockStatus {
                    len: n,
                    data: true,
                    zero: false,
                    depth: 1,
                    offset: Some(h + in_off),
                };
                if prealloc {
                    // As QEMU: the file tells which preallocated clusters are holes.
                    if let Ok(f) = self.file.block_status(h + in_off, n).await {
                        st.len = f.len.clamp(1, n);
                        st.zero = f.zero;
                    }
                }
                st
            }
            Mapping::Compressed(..) => BlockStatus {
                len: n,
                data: true,
                zero: false,
                depth: 1,
                offset: None,
            },
            Mapping::Zero => BlockStatus {
                len: n,
                data: false,
                zero: true,
                depth: 1,
                offset: zero_host.map(|h| h + in_off),
            },
            Mapping::Unallocated => match &self.backing {
                Some(b) if offset < b.driver.size() => {
                    let n = n.min(b.driver.size() - offset);
                    let s = b.driver.block_status(offset, n).await?;
                    BlockStatus {
                        depth: if s.depth == 0 { 0 } else { s.depth + 1 },
                        ..s
                    }
                }
                _ => BlockStatus {
                    len: n,
                    data: false,
                    zero: true,
                    depth: 0,
                    offset: None,
                },
            },
        })
    }

    /// For a run of `n` zero bytes at `offset`: the host offset of the first cluster's
    /// storage, if it kept some, and how much of the run continues the same way (all
    /// without storage, or with storage contiguous on the host).
    async fn zero_run_storage(
        &self,
        m: &mut Meta,
        offset: u64,
        n: u64,
    ) -> io::Result<(Option<u64>, u64)> {
        let cs = self.cluster_size();
        let gc0 = offset / cs;
        let host_of = |e: u64| Some(e & OFFSET_MASK).filter(|&h| h != 0);
        let first = host_of(m.entry(gc0).await?.0);
        let end = offset + n;
        let mut gc = gc0 + 1;
        while gc * cs < end {
            let h = host_of(m.entry(gc).await?.0);
            let same = match (first, h) {
                (None, None) => true,
                (Some(a), Some(b)) => b == a + (gc - gc0) * cs,
                _ => false,
            };
            if !same {
                return Ok((first, gc * cs - offset));
            }
            gc += 1;
        }
        Ok((first, n))
    }

    /// QEMU's `qcow2_detect_metadata_preallocation`: many more clusters are in use
    /// than the file has blocks allocated. Looked at once per open.
    async fn metadata_preallocated(&self, m: &mut Meta) -> io::Result<bool> {
        match self.prealloc_state.load(Ordering::Acquire) {
            PREALLOC_NO => return Ok(false),
            PREALLOC_YES => return Ok(true),
            _ => {}
        }
        let cs = self.cluster_size();
        let Some(real) = self.file.allocated_size() else {
            self.prealloc_state.store(PREALLOC_NO, Ordering::Release);
            return Ok(false);
        };
        let real_clusters = real / cs;
        let threshold = (real_clusters * 10 / 9).max(real_clusters + 2);
        let end = self.file.size().div_ceil(cs);
        let mut count = 0;
        let mut c = 0;
        while c < end && count < threshold {
            count += u64::from(m.refcount(c).await? != 0);
            c += 1;
        }
        let yes = count >= threshold;
        self.prealloc_state.store(
            if yes { PREALLOC_YES } else { PREALLOC_NO },
            Ordering::Release,
        );
        Ok(yes)
    }
}
