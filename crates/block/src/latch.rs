//! A filter that remembers a failed flush.
//!
//! After a failed `fdatasync`, the kernel may have dropped the data it could not
//! write, so a later flush that succeeds proves nothing about it. [`FlushLatch`]
//! makes the first flush failure of its child permanent: every later flush fails with
//! the same errno. The `file` driver latches by itself (see
//! [`FileDriver::flush_latched`](crate::FileDriver::flush_latched)); format drivers
//! put this filter over their child whatever it is (a `blkdebug` node, an NBD
//! client, ...), so that no metadata that depends on unflushed data is ever written
//! after a flush failed.
//!
//! ```
//! use std::sync::Arc;
//! use oxemu_block::blkdebug::{Blkdebug, DebugEvent, InjectError, IoType, Rules};
//! use oxemu_block::latch::FlushLatch;
//! use oxemu_block::{BlockDriver, FileDriver, FileOptions};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("disk.raw");
//! FileDriver::create(&path, 1 << 20, false).unwrap();
//! let file = Arc::new(FileDriver::open(&FileOptions::new(&path)).unwrap());
//! // The next flush after the first `flush_to_disk` event fails, once.
//! let mut rule = InjectError::new(DebugEvent::FlushToDisk);
//! rule.once = true;
//! let dbg = Arc::new(Blkdebug::new(file, Rules { inject: vec![rule], set_state: vec![] }));
//! let node = FlushLatch::new(dbg);
//! oxemu_block::EventLoop::with_defaults().unwrap().block_on(async {
//!     node.debug_event(DebugEvent::FlushToDisk);
//!     assert!(node.flush().await.is_err());
//!     // blkdebug would let this one through; the latch does not.
//!     assert_eq!(node.flush().await.unwrap_err().raw_os_error(), Some(libc::EIO));
//! });
//! ```

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use crate::blkdebug::DebugEvent;
use crate::driver::{
    errno, BlockDriver, BlockResult, BlockStatus, NodeInfo, WriteFlags, ZeroFlags,
};
use crate::iovec::{IoVec, IoVecMut};

/// Forwards everything to `inner`; once a flush failed, every flush fails.
pub struct FlushLatch {
    inner: Arc<dyn BlockDriver>,
    err: AtomicI32,
}

impl FlushLatch {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn BlockDriver>) -> Self {
        FlushLatch {
            inner,
            err: AtomicI32::new(0),
        }
    }

    /// The errno of the flush that failed, if one did.
    pub fn latched(&self) -> Option<i32> {
        match self.err.load(Ordering::Acquire) {
            0 => None,
            e => Some(e),
        }
    }

    /// The wrapped node.
    pub fn inner(&self) -> &Arc<dyn BlockDriver> {
        &self.inner
    }
}

#[async_trait(?Send)]
impl BlockDriver for FlushLatch {
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
    fn debug_event(&self, ev: DebugEvent) {
        self.inner.debug_event(ev)
    }
    async fn readv(&self, offset: u64, iov: &mut IoVecMut<'_>) -> BlockResult<()> {
        self.inner.readv(offset, iov).await
    }
    async fn writev(&self, offset: u64, iov: &IoVec<'_>, flags: WriteFlags) -> BlockResult<()> {
        self.inner.writev(offset, iov, flags).await
    }
    async fn flush(&self) -> BlockResult<()> {
        if let Some(e) = self.latched() {
            return Err(errno(e));
        }
        match self.inner.flush().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let n = e.raw_os_error().unwrap_or(libc::EIO);
                let _ = self
                    .err
                    .compare_exchange(0, n, Ordering::AcqRel, Ordering::Acquire);
                Err(e)
            }
        }
    }
    async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        self.inner.discard(offset, len).await
    }
    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
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
    fn latches_flush_errors(&self) -> bool {
        true
    }

    async fn close(&self) -> BlockResult<()> {
        self.inner.close().await
    }
}
