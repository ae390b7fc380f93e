//! oxemu's block layer.
//!
//! - [`driver`]: the [`BlockDriver`] trait, one node of the block graph, that formats
//!   (`raw`, `qcow2`) and exports (vhost-user-blk, NBD) build on.
//! - [`mod@file`]: the `file` protocol driver for regular files and block devices.
//! - [`engine`]: the AIO engines behind `aio=threads|native|io_uring`.
//! - [`blkdebug`]: the `blkdebug` fault-injection filter, with QEMU's rules.
//! - [`blklogwrites`]: the `blklogwrites` filter, a dm-log-writes log of every write
//!   and flush, and a reader for such logs.
//! - [`latch`]: a filter that makes a failed flush fail every later flush.
//! - [`writethrough`]: `cache=writethrough`/`directsync` as a node that forces FUA.
//! - [`export`]: the trait that block exports implement for the storage daemon.

#![warn(missing_docs)]

pub mod blkdebug;
pub mod blklogwrites;
pub mod buffer;
pub mod driver;
pub mod engine;
pub mod export;
pub mod file;
pub mod iovec;
pub mod latch;
pub mod lock;
pub mod raw;
pub mod writethrough;

pub use buffer::AlignedBuf;
pub use driver::{
    BlockDriver, BlockDriverExt, BlockResult, BlockStatus, NodeInfo, WriteFlags, ZeroFlags,
};
pub use engine::Aio;
pub use file::{FileDriver, FileOptions};
pub use iovec::{IoVec, IoVecMut};
/// The event loop that runs this crate's futures (from `oxemu-aio`).
pub use oxemu_aio::{EventLoop, EventLoopConfig, IoThread, IoThreadHandle};
