//! oxemu's block layer.
//!
//! - [`driver`]: the [`BlockDriver`] trait, one node of the block graph, that formats
//!   (`raw`, `qcow2`) and exports (vhost-user-blk, NBD) build on.
//! - [`mod@file`]: the `file` protocol driver for regular files and block devices.
//! - [`engine`]: the AIO engines behind `aio=threads|native|io_uring`.
//! - [`aio`]: the per-thread event loop (QEMU's AioContext) built on one io_uring ring
//!   that watches disk I/O, sockets, eventfds and timers together, and [`IoThread`]s.
//! - [`export`]: the trait that block exports implement for the storage daemon.

#![warn(missing_docs)]

pub mod aio;
pub mod buffer;
pub mod driver;
pub mod engine;
pub mod export;
pub mod file;
pub mod iovec;
pub mod lock;
pub mod raw;
pub mod size;

pub use aio::{EventLoop, EventLoopConfig, IoThread, IoThreadHandle};
pub use buffer::AlignedBuf;
pub use driver::{
    BlockDriver, BlockDriverExt, BlockResult, BlockStatus, NodeInfo, WriteFlags, ZeroFlags,
};
pub use engine::Aio;
pub use file::{FileDriver, FileOptions};
pub use iovec::{IoVec, IoVecMut};
