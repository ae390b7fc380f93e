//! `qemu-img amend`: changing `compat` and `lazy_refcounts` of an existing image.

use std::io;

use crate::header::{self, COMPAT_LAZY_REFCOUNTS, INCOMPAT_DIRTY};
use crate::meta::{COMPRESSED, OFFSET_MASK, ZERO};
use crate::Qcow2;
use oxemu_block::BlockDriver;

/// Options of [`Qcow2::amend`]; `None` leaves a setting unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AmendOptions {
    /// `compat=1.1` (true) or `compat=0.10` (false).
    pub compat_v3: Option<bool>,
    /// `lazy_refcounts=on|off`.
    pub lazy_refcounts: Option<bool>,
}

fn unsupported(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, msg.to_string())
}

impl Qcow2 {
    /// Changes header options in place. Downgrading to compat=0.10 turns zero clusters
    /// without data into unallocated ones (refused when a backing file would show
    /// through, or when v3-only features are in use).
    pub async fn amend(&self, o: AmendOptions) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        let mut m = self.meta.lock().await;
        m.writeback().await?;
        let v3 = o.compat_v3.unwrap_or(m.h.version == 3);
        let lazy = o
            .lazy_refcounts
            .unwrap_or(m.h.compatible_features & COMPAT_LAZY_REFCOUNTS != 0);
        if !v3 && lazy {
            return Err(unsupported("Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)"));
        }
        if !v3 && m.h.version == 3 {
            if m.h.refcount_order != 4 {
                return Err(unsupported("compat=0.10 requires refcount_bits=16"));
            }
            if m.h.extended_l2() || m.h.compression_type != header::CompressionType::Zlib {
                return Err(unsupported(
                    "Cannot downgrade an image with extended L2 entries or zstd compression",
                ));
            }
            self.check_snapshots_for_downgrade(&m).await?;
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
        } else if v3 && m.h.version == 2 {
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
        }
        if v3 {
            if lazy {
                m.h.compatible_features |= COMPAT_LAZY_REFCOUNTS;
            } else {
                m.h.compatible_features &= !COMPAT_LAZY_REFCOUNTS;
                m.h.incompatible_features &= !INCOMPAT_DIRTY;
            }
        }
        m.write_header().await?;
        self.lazy
            .store(v3 && lazy, std::sync::atomic::Ordering::Release);
        self.version
            .store(m.h.version, std::sync::atomic::Ordering::Release);
        oxemu_block::BlockDriver::flush(&*self.file).await
    }
}
