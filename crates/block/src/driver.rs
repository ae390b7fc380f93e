//! The block-driver abstraction that protocol drivers (`file`), format drivers
//! (`raw`, `qcow2`) and exports (vhost-user-blk, NBD) meet at.
//!
//! A [`BlockDriver`] is one node of QEMU's block graph. Its methods are `async` and run
//! on the calling thread's [`EventLoop`](oxemu_aio::EventLoop): the returned futures
//! are not `Send`, but the driver object itself is `Send + Sync` so that several
//! IoThreads can share a node (one per export queue, say). Errors are
//! `std::io::Error`s; I/O failures carry the errno (`raw_os_error()`), and malformed
//! metadata carries a message naming the field and the offset.

use std::io;

use async_trait::async_trait;

use crate::iovec::{IoVec, IoVecMut};

/// Result type of block-layer operations.
pub type BlockResult<T> = Result<T, io::Error>;

/// Builds an `io::Error` from an errno value such as `libc::EIO`.
pub fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// Flags of a write request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteFlags {
    /// Force Unit Access: the data is on stable storage when the request completes.
    pub fua: bool,
}

/// Flags of a write-zeroes request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZeroFlags {
    /// The driver may deallocate the range (punch a hole) instead of writing zeroes.
    pub may_unmap: bool,
    /// Fail with `ENOTSUP` instead of falling back to writing zero buffers
    /// (NBD's FAST_ZERO, QEMU's BDRV_REQ_NO_FALLBACK).
    pub no_fallback: bool,
    /// Force Unit Access, as for writes.
    pub fua: bool,
}

/// Allocation status of a range, as returned by [`BlockDriver::block_status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockStatus {
    /// Number of bytes from the queried offset that share this status (> 0).
    pub len: u64,
    /// The range is allocated in this node or a node below it through its `file` child
    /// (it holds data; false means a hole).
    pub data: bool,
    /// The range reads as zeroes.
    pub zero: bool,
    /// Depth in the backing chain of the node that allocates the range: 1 for this
    /// node, 2 for its backing file, ..., 0 when no layer allocates it.
    pub depth: u32,
    /// Where the data lives in the protocol layer, when known (`qemu-img map`).
    pub offset: Option<u64>,
}

/// Static facts about a node, for `info` and `query-named-block-nodes`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// Driver name as QEMU spells it: `file`, `host_device`, `raw`, `qcow2`.
    pub driver: String,
    /// File name of the image (the protocol layer's path).
    pub filename: String,
    /// True when the node was opened read-only.
    pub read_only: bool,
    /// Opened with `cache.direct=on` (O_DIRECT).
    pub direct: bool,
    /// Flushes are ignored (`cache.no-flush=on`).
    pub no_flush: bool,
}

/// One node of the block graph. See the module documentation.
#[async_trait(?Send)]
pub trait BlockDriver: Send + Sync {
    /// Static facts about the node.
    fn info(&self) -> NodeInfo;

    /// Virtual size in bytes, as seen by a guest.
    fn size(&self) -> u64;

    /// Alignment in bytes that offsets and lengths of requests should have for best
    /// results; 1 when anything goes. O_DIRECT files report their logical block size.
    fn request_alignment(&self) -> u32 {
        1
    }

    /// Memory alignment that buffers should have to avoid a bounce copy.
    fn memory_alignment(&self) -> usize {
        1
    }

    /// Reads `iov.len()` bytes at `offset`, completely: short transfers are retried
    /// inside the driver. Callers keep requests within `size()`; format drivers reject
    /// requests past it with `EINVAL`, while the `file` driver zero-fills any part of a
    /// read beyond end-of-file, as QEMU does.
    async fn readv(&self, offset: u64, iov: &mut IoVecMut<'_>) -> BlockResult<()>;

    /// Writes `iov.len()` bytes at `offset`. Fails with `EPERM`/`EROFS` on read-only
    /// nodes. With `flags.fua` the data is durable on return.
    async fn writev(&self, offset: u64, iov: &IoVec<'_>, flags: WriteFlags) -> BlockResult<()>;

    /// Makes every completed write durable (fdatasync for files).
    async fn flush(&self) -> BlockResult<()>;

    /// Tells the node that `offset..offset+len` is no longer needed. Advisory: the
    /// range may or may not read as zeroes afterwards.
    async fn discard(&self, offset: u64, len: u64) -> BlockResult<()>;

    /// Makes `offset..offset+len` read as zeroes.
    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()>;

    /// Allocation status of the range starting at `offset` (at most `len` bytes).
    async fn block_status(&self, offset: u64, len: u64) -> BlockResult<BlockStatus> {
        let _ = offset;
        Ok(BlockStatus {
            len: len.min(self.size().saturating_sub(offset)).max(1),
            data: true,
            zero: false,
            depth: 1,
            offset: Some(offset),
        })
    }

    /// Changes the virtual size. Drivers that cannot resize fail with `ENOTSUP`.
    async fn truncate(&self, size: u64) -> BlockResult<()> {
        let _ = size;
        Err(errno(libc::ENOTSUP))
    }

    /// Bytes the node occupies on its storage (`disk size` in `qemu-img info`), if known.
    fn allocated_size(&self) -> Option<u64> {
        None
    }

    /// Reports a debug event (a step of a format driver's work, QEMU's
    /// `BLKDBG_EVENT`) to this node. Format drivers call it on their `file` child;
    /// filters pass it down; the [`Blkdebug`](crate::blkdebug::Blkdebug) filter acts
    /// on it. The default ignores it.
    fn debug_event(&self, ev: crate::blkdebug::DebugEvent) {
        let _ = ev;
    }

    /// True when a failed flush of this node fails every later flush by itself (the
    /// `file` driver does, as QEMU's file-posix), so that a format driver need not
    /// put a [`FlushLatch`](crate::latch::FlushLatch) over it. The default is false.
    fn latches_flush_errors(&self) -> bool {
        false
    }

    /// Writes out cached metadata and marks the image clean; called before the node is
    /// closed. The default does a flush.
    async fn close(&self) -> BlockResult<()> {
        self.flush().await
    }
}

/// Convenience helpers on any driver.
#[async_trait(?Send)]
pub trait BlockDriverExt: BlockDriver {
    /// Reads into one contiguous buffer.
    async fn read_at(&self, offset: u64, buf: &mut [u8]) -> BlockResult<()> {
        let mut iov = IoVecMut::from_slice(buf);
        self.readv(offset, &mut iov).await
    }

    /// Writes one contiguous buffer.
    async fn write_at(&self, offset: u64, buf: &[u8]) -> BlockResult<()> {
        self.writev(offset, &IoVec::from_slice(buf), WriteFlags::default())
            .await
    }
}

impl<T: BlockDriver + ?Sized> BlockDriverExt for T {}
