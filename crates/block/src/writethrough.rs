//! Write-through caching (`cache=writethrough`, `directsync`, an export's
//! `writethrough=on`): every write and write-zeroes is made durable before it
//! completes, as QEMU does when a block backend's write cache is off (it sets FUA on
//! each write; drivers without FUA follow it with a flush).

use std::sync::Arc;

use async_trait::async_trait;

use crate::driver::{BlockDriver, BlockResult, BlockStatus, NodeInfo, WriteFlags, ZeroFlags};
use crate::iovec::{IoVec, IoVecMut};

/// A node that forwards everything to `inner`, forcing FUA on writes and
/// write-zeroes.
pub struct WriteThrough {
    inner: Arc<dyn BlockDriver>,
}

impl WriteThrough {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn BlockDriver>) -> Self {
        WriteThrough { inner }
    }
}

#[async_trait(?Send)]
impl BlockDriver for WriteThrough {
    fn info(&self) -> NodeInfo {
        self.inner.info()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn request_alignment(&self) -> u32 {
        self.inner.request_alignment()
    }
    fn memory_alignment(&self) -> usize {
        self.inner.memory_alignment()
    }
    fn debug_event(&self, ev: crate::blkdebug::DebugEvent) {
        self.inner.debug_event(ev)
    }
    fn latches_flush_errors(&self) -> bool {
        self.inner.latches_flush_errors()
    }
    async fn readv(&self, offset: u64, iov: &mut IoVecMut<'_>) -> BlockResult<()> {
        self.inner.readv(offset, iov).await
    }
    async fn writev(&self, offset: u64, iov: &IoVec<'_>, flags: WriteFlags) -> BlockResult<()> {
        let mut flags = flags;
        flags.fua = true;
        self.inner.writev(offset, iov, flags).await
    }
    async fn flush(&self) -> BlockResult<()> {
        self.inner.flush().await
    }
    async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        self.inner.discard(offset, len).await
    }
    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        let mut flags = flags;
        flags.fua = true;
        self.inner.write_zeroes(offset, len, flags).await
    }
    async fn block_status(&self, offset: u64, len: u64) -> BlockResult<BlockStatus> {
        self.inner.block_status(offset, len).await
    }
    async fn truncate(&self, size: u64) -> BlockResult<()> {
        self.inner.truncate(size).await
    }
    fn allocated_size(&self) -> Option<u64> {
        self.inner.allocated_size()
    }
    async fn close(&self) -> BlockResult<()> {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::BlockDriverExt;

    /// Records the FUA flag of every write it sees.
    #[derive(Default)]
    struct Recorder {
        fua: std::sync::Mutex<Vec<(&'static str, bool)>>,
    }

    #[async_trait(?Send)]
    impl BlockDriver for Recorder {
        fn info(&self) -> NodeInfo {
            NodeInfo::default()
        }
        fn size(&self) -> u64 {
            1 << 20
        }
        async fn readv(&self, _: u64, _: &mut IoVecMut<'_>) -> BlockResult<()> {
            Ok(())
        }
        async fn writev(&self, _: u64, _: &IoVec<'_>, f: WriteFlags) -> BlockResult<()> {
            self.fua.lock().unwrap().push(("write", f.fua));
            Ok(())
        }
        async fn flush(&self) -> BlockResult<()> {
            Ok(())
        }
        async fn discard(&self, _: u64, _: u64) -> BlockResult<()> {
            Ok(())
        }
        async fn write_zeroes(&self, _: u64, _: u64, f: ZeroFlags) -> BlockResult<()> {
            self.fua.lock().unwrap().push(("zeroes", f.fua));
            Ok(())
        }
    }

    #[test]
    fn every_write_and_write_zeroes_carries_fua() {
        let rec = Arc::new(Recorder::default());
        let wt = WriteThrough::new(rec.clone());
        let lp = crate::EventLoop::with_defaults().unwrap();
        lp.block_on(async {
            wt.write_at(0, &[1; 512]).await.unwrap();
            wt.write_zeroes(512, 512, ZeroFlags::default())
                .await
                .unwrap();
        });
        assert_eq!(
            *rec.fua.lock().unwrap(),
            [("write", true), ("zeroes", true)]
        );
    }
}
