//! The qcow2 image format driver, interoperable with QEMU's `qcow2` driver.
//!
//! - [`Qcow2`] is a [`BlockDriver`] over any protocol node (usually a
//!   [`FileDriver`](oxemu_block::FileDriver)); open it with [`Qcow2::open`] or open a
//!   whole backing chain with [`open_image`].
//! - [`create()`] writes a new image, [`Qcow2::check`] verifies and repairs refcounts.
//! - [`header`] parses and serializes the header and its extensions.
//!
//! See `NOTES.md` in this crate for the metadata write order that makes the driver
//! crash safe, and for what is not supported.

#![warn(missing_docs)]
// `is_multiple_of` needs Rust 1.87; the workspace supports 1.80.
#![allow(clippy::manual_is_multiple_of)]

pub mod amend;
mod bitmap_store;
pub mod bitmaps;
pub mod chain;
pub mod check;
pub mod compress;
mod compressed_write;
pub mod create;
pub mod crypto;
mod empty;
mod guard;
pub mod header;
mod io;
pub mod meta;
pub mod overlap;
pub mod refcount;
mod reorder;
mod resize;
pub mod snapshot;
pub mod snapshot_ops;
mod status;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use futures::lock::Mutex;
use oxemu_block::{BlockDriver, BlockDriverExt, NodeInfo};

pub use amend::AmendOptions;
pub use bitmap_store::BitmapData;
pub use chain::{open_image, Image, ImageOptions};
pub use check::{CheckReport, Repair};
pub use compressed_write::Compressor;
pub use create::{create, Preallocation, Qcow2CreateOptions};
pub use header::{CompressionType, Header};
pub use snapshot_ops::{NewSnapshot, SnapshotRef};

use header::{bad, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, INCOMPAT_DIRTY};
use meta::Meta;

/// Options of [`Qcow2::open`].
#[derive(Clone, Default)]
pub struct Qcow2OpenOptions {
    /// Refuse writes (the file node should be read-only too).
    pub read_only: bool,
    /// The already opened backing image (see [`open_image`], which fills this in).
    pub backing: Option<Image>,
    /// Bytes of L2 tables to cache (0: 32 MiB, QEMU's maximum default).
    pub l2_cache_size: u64,
    /// Keep persistent bitmaps consistent on a read-write open (their autoclear bit
    /// stays set): only for a caller that changes no guest data before it stores the
    /// bitmaps back ([`Qcow2::store_bitmaps`]), as `qemu-img bitmap`.
    pub keep_bitmaps: bool,
    /// What writes are checked against before they are made (QEMU's
    /// `overlap-check`, default `cached`).
    pub overlap_check: overlap::OverlapCheck,
    /// QEMU's runtime `lazy-refcounts` option: use lazy refcounts (the dirty bit,
    /// refcounts written back only at flush) for this open whatever the header's
    /// compatible bit says (`None`: as the header says). Needs a v3 image.
    pub lazy_refcounts: Option<bool>,
}

/// QEMU's `ImageInfoSpecificQCow2`, for `qemu-img info`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatSpecific {
    /// `"0.10"` or `"1.1"`.
    pub compat: &'static str,
    /// Compression type name.
    pub compression_type: &'static str,
    /// Lazy refcounts (v3 only).
    pub lazy_refcounts: bool,
    /// Refcount width in bits.
    pub refcount_bits: u32,
    /// The corrupt bit is set.
    pub corrupt: bool,
    /// Extended L2 entries.
    pub extended_l2: bool,
}

/// An open qcow2 image. See the crate documentation.
pub struct Qcow2 {
    /// This image itself, for cleanups that outlive a request (see `guard`).
    me: std::sync::Weak<Qcow2>,
    file: Arc<dyn BlockDriver>,
    backing: Option<Image>,
    meta: Mutex<Meta>,
    size: AtomicU64,
    cluster_bits: u32,
    ext: bool,
    version: std::sync::atomic::AtomicU32,
    compression: CompressionType,
    read_only: bool,
    lazy: AtomicBool,
    dirty_set: AtomicBool,
    /// Whether the image looks metadata-preallocated (`status::PREALLOC_*`).
    prealloc_state: AtomicU8,
    /// Opened by [`Qcow2::open_for_check`]: guest writes are refused.
    check_only: bool,
    /// Header crypt method (2: LUKS, see [`crypto`]).
    crypt_method: u32,
    /// The data cipher of an encrypted image, once unlocked.
    cipher: crypto::CipherSlot,
}

fn os(e: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(e)
}

impl Qcow2 {
    /// Opens a qcow2 image on `file`. Fails with an `InvalidData` error naming the
    /// field and offset when the header or tables are malformed, and with an error
    /// listing them when the image uses features this driver does not implement.
    /// A read-write open of an image with the dirty bit set repairs its refcounts first,
    /// as QEMU does. Images with internal snapshots open read-write too: clusters they
    /// share are copied before they are written (see [`Qcow2::snapshot_create`]).
    pub async fn open(
        file: Arc<dyn BlockDriver>,
        opts: Qcow2OpenOptions,
    ) -> std::io::Result<Arc<Qcow2>> {
        Self::open_mode(file, opts, false).await
    }

    /// Opens an image for [`Qcow2::check`] only, as qemu-img check does (QEMU's
    /// `BDRV_O_CHECK`): a read-write open is allowed even when the image is marked
    /// corrupt, a dirty image is not repaired at open (the
    /// check reports and repairs it), and guest writes are refused. A repair that leaves
    /// no corruption clears the dirty and corrupt bits.
    pub async fn open_for_check(
        file: Arc<dyn BlockDriver>,
        read_only: bool,
    ) -> std::io::Result<Arc<Qcow2>> {
        let opts = Qcow2OpenOptions {
            read_only,
            ..Default::default()
        };
        Self::open_mode(file, opts, true).await
    }

    async fn open_mode(
        file: Arc<dyn BlockDriver>,
        opts: Qcow2OpenOptions,
        check: bool,
    ) -> std::io::Result<Arc<Qcow2>> {
        // A failed flush of the file must fail every later flush, whatever the child
        // is (a `file` node does it itself; others get a latch): otherwise a writeback after it could publish L2 entries whose data the
        // child already lost (see `oxemu_block::latch`).
        let file: Arc<dyn BlockDriver> = if opts.read_only || file.latches_flush_errors() {
            file
        } else {
            Arc::new(oxemu_block::latch::FlushLatch::new(file))
        };
        let fsize = file.size();
        let mut head = vec![0u8; 104.min(fsize as usize)];
        file.read_at(0, &mut head).await?;
        if head.len() >= 24 && head[..4] == *b"QFI\xfb" {
            let bits = u32::from_be_bytes(head[20..24].try_into().unwrap());
            if (9..=21).contains(&bits) {
                head = vec![0u8; (1usize << bits).min(fsize as usize)];
                file.read_at(0, &mut head).await?;
            }
        }
        let mut h = if check {
            Header::parse_for_check(&head, fsize)?
        } else {
            Header::parse(&head, fsize)?
        };
        let unknown = h.unknown_incompatible();
        if !unknown.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!("Unsupported qcow2 feature(s): {}", unknown.join(", ")),
            ));
        }
        if h.incompatible_features & INCOMPAT_DATA_FILE != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "Unsupported qcow2 feature(s): external data file",
            ));
        }
        if h.crypt_method != 0 && (h.crypt_method != crypto::CRYPT_LUKS || !opts.read_only) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "qcow2: encrypted images are only supported read-only, with LUKS",
            ));
        }
        if !opts.read_only && !check && h.incompatible_features & INCOMPAT_CORRUPT != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "qcow2: Image is corrupt; cannot be opened read/write",
            ));
        }
        if opts.lazy_refcounts == Some(true) && h.version < 3 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level",
            ));
        }
        let cache = if opts.l2_cache_size == 0 {
            32 << 20
        } else {
            opts.l2_cache_size
        };
        let dirty = h.incompatible_features & INCOMPAT_DIRTY != 0;
        // A writer clears the autoclear bits of what it does not keep up to date
        // (QEMU's rule): all of them, bitmaps included. A check changes no guest data,
        // so it keeps the bitmaps bit and clears only unknown ones, as QEMU does.
        if !opts.read_only {
            let keep = if check || opts.keep_bitmaps {
                bitmaps::AUTOCLEAR_BITMAPS
            } else {
                0
            };
            h.autoclear_features &= keep;
        }
        let mut meta = Meta::load(h.clone(), file.clone(), cache).await?;
        meta.overlap = opts.overlap_check;
        if !check {
            meta.validate_reftable()?;
        }
        let q = Arc::new_cyclic(|me| Qcow2 {
            me: me.clone(),
            file,
            backing: opts.backing,
            size: AtomicU64::new(h.size),
            cluster_bits: h.cluster_bits,
            ext: h.extended_l2(),
            version: std::sync::atomic::AtomicU32::new(h.version),
            compression: h.compression_type,
            read_only: opts.read_only,
            lazy: AtomicBool::new(
                opts.lazy_refcounts
                    .unwrap_or(h.compatible_features & header::COMPAT_LAZY_REFCOUNTS != 0),
            ),
            prealloc_state: AtomicU8::new(status::PREALLOC_UNKNOWN),
            // In check mode the dirty bit is the check's to clear, not close()'s.
            dirty_set: AtomicBool::new(dirty && !check),
            check_only: check,
            crypt_method: h.crypt_method,
            cipher: Default::default(),
            meta: Mutex::new(meta),
        });
        if !opts.read_only {
            if dirty && !check {
                let r = q.check(Repair::All).await?;
                if r.corruptions > 0 || r.check_errors > 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "qcow2: dirty image could not be repaired",
                    ));
                }
                q.set_dirty(false).await?;
            }
            let mut m = q.meta.lock().await;
            m.write_header().await?;
            q.file.flush().await?;
        }
        Ok(q)
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// The backing image, if any.
    pub fn backing(&self) -> Option<&Image> {
        self.backing.as_ref()
    }

    /// The protocol node holding the image.
    pub fn file(&self) -> &Arc<dyn BlockDriver> {
        &self.file
    }

    /// A copy of the current header.
    pub async fn header(&self) -> Header {
        self.meta.lock().await.h.clone()
    }

    /// The persistent dirty bitmaps (empty when there are none, or when they are not
    /// consistent and QEMU would ignore them).
    pub async fn bitmaps(&self) -> std::io::Result<Vec<bitmaps::Bitmap>> {
        let h = self.header().await;
        bitmaps::read_directory(self.file.as_ref(), &h).await
    }

    /// Format-specific information (`qemu-img info`).
    pub async fn format_specific(&self) -> FormatSpecific {
        let h = self.header().await;
        FormatSpecific {
            compat: if h.version == 2 { "0.10" } else { "1.1" },
            compression_type: h.compression_type.name(),
            lazy_refcounts: h.compatible_features & header::COMPAT_LAZY_REFCOUNTS != 0,
            refcount_bits: 1 << h.refcount_order,
            corrupt: h.incompatible_features & INCOMPAT_CORRUPT != 0,
            extended_l2: h.extended_l2(),
        }
    }

    /// Sets or clears the dirty bit on disk (lazy refcounts).
    async fn set_dirty(&self, on: bool) -> std::io::Result<()> {
        let mut m = self.meta.lock().await;
        if on {
            m.h.incompatible_features |= INCOMPAT_DIRTY;
        } else {
            m.h.incompatible_features &= !INCOMPAT_DIRTY;
        }
        m.write_header().await?;
        self.file.flush().await?;
        self.dirty_set.store(on, Ordering::Release);
        Ok(())
    }

    /// Called before the first write: with lazy refcounts, marks the image dirty.
    async fn before_write(&self) -> std::io::Result<()> {
        if self.read_only || self.check_only {
            return Err(os(libc::EROFS));
        }
        if self.lazy.load(Ordering::Acquire)
            && self.version.load(Ordering::Acquire) == 3
            && !self.dirty_set.load(Ordering::Acquire)
        {
            self.set_dirty(true).await?;
        }
        Ok(())
    }

    /// Marks the image corrupt on disk (QEMU's `qcow2_signal_corruption`) and returns
    /// the error to report.
    async fn signal_corruption(&self, m: &mut Meta, e: std::io::Error) -> std::io::Error {
        if self.read_only {
            m.corrupt = true;
            return e;
        }
        m.mark_corrupt(e).await
    }

    /// Points the image at a new backing file (`rebase -u`, `commit`): updates the
    /// backing file name and format extension in the header. Takes effect for reads
    /// after the image is reopened.
    pub async fn set_backing_file(
        &self,
        name: Option<&str>,
        fmt: Option<&str>,
    ) -> std::io::Result<()> {
        if self.read_only {
            return Err(os(libc::EROFS));
        }
        if name.is_some_and(|n| n.len() > 1023) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "qcow2: backing file name is longer than 1023 bytes",
            ));
        }
        let mut m = self.meta.lock().await;
        m.writeback().await?;
        let old = m.h.clone();
        m.h.backing_file = name.map(str::to_owned);
        m.h.set_backing_format(name.and(fmt));
        if let Err(e) = m.write_header().await {
            m.h = old;
            return Err(e);
        }
        self.file.flush().await
    }
}

#[async_trait::async_trait(?Send)]
impl BlockDriver for Qcow2 {
    fn info(&self) -> NodeInfo {
        let mut i = self.file.info();
        i.driver = "qcow2".into();
        i.read_only = self.read_only;
        i
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    async fn readv(
        &self,
        offset: u64,
        iov: &mut oxemu_block::IoVecMut<'_>,
    ) -> oxemu_block::BlockResult<()> {
        self.check_range(offset, iov.len() as u64)?;
        self.read_guest(offset, iov).await
    }

    async fn writev(
        &self,
        offset: u64,
        iov: &oxemu_block::IoVec<'_>,
        flags: oxemu_block::WriteFlags,
    ) -> oxemu_block::BlockResult<()> {
        self.check_range(offset, iov.len() as u64)?;
        self.before_write().await?;
        self.write_guest(offset, iov).await?;
        if flags.fua {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&self) -> oxemu_block::BlockResult<()> {
        if self.read_only {
            return Ok(());
        }
        let mut m = self.meta.lock().await;
        // As QEMU's bdrv_co_flush, which reports both to the node's file child.
        self.file
            .debug_event(oxemu_block::blkdebug::DebugEvent::FlushToOs);
        self.file
            .debug_event(oxemu_block::blkdebug::DebugEvent::FlushToDisk);
        m.writeback().await
    }

    async fn discard(&self, offset: u64, len: u64) -> oxemu_block::BlockResult<()> {
        self.check_range(offset, len)?;
        self.before_write().await?;
        self.zero_or_discard(offset, len, true, true).await
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        flags: oxemu_block::ZeroFlags,
    ) -> oxemu_block::BlockResult<()> {
        self.check_range(offset, len)?;
        self.before_write().await?;
        self.zero_or_discard(offset, len, false, flags.may_unmap)
            .await?;
        if flags.fua {
            self.flush().await?;
        }
        Ok(())
    }

    async fn block_status(
        &self,
        offset: u64,
        len: u64,
    ) -> oxemu_block::BlockResult<oxemu_block::BlockStatus> {
        self.status(offset, len).await
    }

    async fn truncate(&self, size: u64) -> oxemu_block::BlockResult<()> {
        self.resize(size).await
    }

    fn allocated_size(&self) -> Option<u64> {
        self.file.allocated_size()
    }

    async fn close(&self) -> oxemu_block::BlockResult<()> {
        if self.read_only {
            return Ok(());
        }
        self.flush().await?;
        if self.dirty_set.load(Ordering::Acquire) {
            self.set_dirty(false).await?;
        }
        Ok(())
    }
}

impl Qcow2 {
    fn check_range(&self, offset: u64, len: u64) -> std::io::Result<()> {
        match offset.checked_add(len) {
            Some(e) if e <= self.size() => Ok(()),
            _ => Err(os(libc::EINVAL)),
        }
    }
}

pub(crate) fn invalid(field: &str, offset: u64, what: impl std::fmt::Display) -> std::io::Error {
    bad(field, offset, what)
}
