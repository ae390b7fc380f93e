//! The interface between the storage daemon and its exports (vhost-user-blk, NBD).
//!
//! Each export crate has its own constructor taking its own options; once running, the
//! daemon sees every export through [`BlockExport`], for `query-block-exports`,
//! `block-export-del` and shutdown.

/// A running export of one block node.
pub trait BlockExport: Send + Sync {
    /// The export id given at `block-export-add` / `--export id=`.
    fn id(&self) -> &str;

    /// The node-name of the exported node.
    fn node_name(&self) -> &str;

    /// The export type as QEMU names it: `vhost-user-blk`, `nbd`.
    fn export_type(&self) -> &'static str;

    /// True while clients are connected (a safe-mode `block-export-del` refuses then).
    fn in_use(&self) -> bool;

    /// Stops accepting clients, disconnects the existing ones (immediately with `hard`,
    /// else after their in-flight requests finished), drains and flushes. Blocks until
    /// the export is fully gone; afterwards the daemon emits `BLOCK_EXPORT_DELETED`.
    fn shutdown(&self, hard: bool);
}
