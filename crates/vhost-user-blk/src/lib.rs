//! vhost-user-blk export: serves an oxemu block node to QEMU guests (or any
//! vhost-user frontend) over a unix socket, built on rust-vmm's `vhost`,
//! `vhost-user-backend`, `virtio-queue` and `vm-memory`.
//!
//! - [`request`]: virtio-blk request parsing and the config space;
//! - [`backend`]: the `VhostUserBackend`, running requests on oxemu event loops;
//! - [`export`]: the listening socket, reconnects and shutdown, as a
//!   [`BlockExport`](oxemu_block::export::BlockExport).

#![warn(missing_docs)]

pub mod backend;
pub mod export;
pub mod request;

pub use export::{VhostUserBlkExport, VhostUserBlkOptions};
