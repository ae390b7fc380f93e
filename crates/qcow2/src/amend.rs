//! `qemu-img amend`: changing `compat`, `lazy_refcounts`, `refcount_bits` and the
//! virtual size of an existing image, in the order QEMU applies them (upgrade first,
//! then the refcount width, the backing file check, lazy refcounts, the size, and a
//! downgrade last).

use std::io;
use std::sync::atomic::Ordering;

use crate::header::{self, COMPAT_LAZY_REFCOUNTS, INCOMPAT_DIRTY};
use crate::meta::{Meta, COMPRESSED, OFFSET_MASK, ZERO};
use crate::Qcow2;
use oxemu_block::BlockDriver;

/// Options of [`Qcow2::amend`]; `None` leaves a setting unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AmendOptions {
    /// `compat=1.1` (true) or `compat=0.10` (false).
    pub compat_v3: Option<bool>,
    /// `lazy_refcounts=on|off`.
    pub lazy_refcounts: Option<bool>,
    /// `refcount_bits` (a power of two up to 64).
    pub refcount_bits: Option<u32>,
    /// `size`: the new virtual size (0 or None leaves it).
    pub size: Option<u64>,
    /// `backing_file` and `backing_fmt`, as given (each None when not given). They
    /// cannot be changed (QEMU 7.2 refuses, pointing to rebase); giving the current
    /// values is accepted.
    pub backing: Option<(Option<String>, Option<String>)>,
}

fn unsupported(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, msg.to_string())
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_string())
}

/// The message of a refused backing file change; callers may add QEMU's hint.
pub const CANNOT_AMEND_BACKING: &str = "Cannot amend the backing file";

impl Qcow2 {
    /// Changes image options in place. Downgrading to compat=0.10 turns zero clusters
    /// without data into unallocated ones (refused when a backing file would show
    /// through, or when v3-only features are in use). Changing `refcount_bits`
    /// rewrites the refcount structures with the new width.
    pub async fn amend(&self, o: AmendOptions) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        let mut m = self.meta.lock().await;
        m.writeback().await?;
        let old_v3 = m.h.version == 3;
        let v3 = o.compat_v3.unwrap_or(old_v3);
        let cur_lazy = m.h.compatible_features & COMPAT_LAZY_REFCOUNTS != 0;
        let lazy = o.lazy_refcounts.unwrap_or(cur_lazy);
        if v3 && !old_v3 {
            m.h.version = 3;
            m.h.refcount_order = 4;
            m.h.header_length = 112;
            m.h.extensions.push(header::feature_table());
            // v3 requires the 64-bit VM state size and disk size in every snapshot
            // entry; a rewritten table has them.
            let table = crate::snapshot::read_table(self.file.as_ref(), &m.h).await?;
            if table.snapshots.iter().any(|s| s.extra_data_size < 16) {
                let old = (table.offset, table.size);
                self.write_snapshot_table(&mut m, table.snapshots, old)
                    .await?;
            }
            m.write_header().await?;
            self.version.store(3, Ordering::Release);
        }
        if let Some(bits) = o.refcount_bits {
            if bits != 1 << m.h.refcount_order {
                if !v3 && bits != 16 {
                    return Err(invalid("Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)"));
                }
                self.change_refcount_order(&mut m, bits.trailing_zeros())
                    .await?;
            }
        }
        m.write_header().await?;
        if let Some((file, fmt)) = &o.backing {
            let cur_fmt =
                m.h.extensions
                    .iter()
                    .find(|e| e.kind == header::EXT_BACKING_FORMAT)
                    .map(|e| String::from_utf8_lossy(&e.data).into_owned());
            if *file != m.h.backing_file || *fmt != cur_fmt {
                return Err(invalid(CANNOT_AMEND_BACKING));
            }
        }
        if lazy != cur_lazy {
            if lazy {
                if !v3 {
                    return Err(unsupported("Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)"));
                }
                m.h.compatible_features |= COMPAT_LAZY_REFCOUNTS;
            } else {
                m.h.compatible_features &= !COMPAT_LAZY_REFCOUNTS;
                m.h.incompatible_features &= !INCOMPAT_DIRTY;
            }
            m.write_header().await?;
            self.lazy.store(lazy, Ordering::Release);
        }
        if let Some(size) = o.size.filter(|&s| s != 0) {
            if size % 512 != 0 {
                return Err(invalid("The new size must be a multiple of 512"));
            }
            drop(m);
            self.resize(size).await?;
            m = self.meta.lock().await;
            m.writeback().await?;
        }
        if !v3 && old_v3 {
            self.downgrade(&mut m).await?;
            m.write_header().await?;
            self.version.store(2, Ordering::Release);
            self.lazy.store(false, Ordering::Release);
        }
        BlockDriver::flush(&*self.file).await
    }

    async fn downgrade(&self, m: &mut Meta) -> io::Result<()> {
        if m.h.refcount_order != 4 {
            return Err(unsupported("compat=0.10 requires refcount_bits=16"));
        }
        if m.h.extended_l2() || m.h.compression_type != header::CompressionType::Zlib {
            return Err(unsupported(
                "Cannot downgrade an image with extended L2 entries or zstd compression",
            ));
        }
        self.check_snapshots_for_downgrade(m).await?;
        let total = self.size().div_ceil(m.cs);
        for gc in 0..total {
            if m.l2_table(gc, false).await?.is_none() {
                continue;
            }
            let (e, _) = m.entry(gc).await?;
            if e & ZERO != 0 && e & COMPRESSED == 0 {
                if self.backing.is_some() {
                    return Err(unsupported(
                        "Cannot downgrade an image with zero clusters over a backing file",
                    ));
                }
                let host = e & OFFSET_MASK;
                m.set_entry(gc, 0, 0).await?;
                if host != 0 {
                    m.free_later(host, 1);
                }
            }
        }
        m.writeback().await?;
        m.h.version = 2;
        m.h.header_length = 72;
        m.h.incompatible_features = 0;
        m.h.compatible_features = 0;
        m.h.autoclear_features = 0;
        m.h.extensions
            .retain(|e| e.kind != header::EXT_FEATURE_TABLE);
        Ok(())
    }
}
