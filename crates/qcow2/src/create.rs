//! Creating new images with the layout `qemu-img create -f qcow2` uses: header in
//! cluster 0, then the refcount table, the refcount blocks and the L1 table.

use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use oxemu_block::{BlockDriver, FileDriver, FileOptions};

use crate::header::{self, CompressionType, Extension, Header};
use crate::{refcount, Qcow2, Qcow2OpenOptions};

/// `preallocation=` of `qemu-img create`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Preallocation {
    /// Only the header and tables.
    #[default]
    Off,
    /// All L2 tables and data clusters are allocated; the file is sparse.
    Metadata,
    /// As metadata, and the file's blocks are reserved with fallocate.
    Falloc,
    /// As metadata, and every data cluster is written with zeroes.
    Full,
}

impl std::str::FromStr for Preallocation {
    type Err = io::Error;
    fn from_str(s: &str) -> io::Result<Self> {
        Ok(match s {
            "off" => Preallocation::Off,
            "metadata" => Preallocation::Metadata,
            "falloc" => Preallocation::Falloc,
            "full" => Preallocation::Full,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("Parameter 'preallocation' does not accept value '{s}'"),
                ))
            }
        })
    }
}

/// Options of [`create`], named after `qemu-img create -o` options.
#[derive(Clone, Debug)]
pub struct Qcow2CreateOptions {
    /// Virtual size in bytes (a multiple of 512).
    pub size: u64,
    /// `cluster_size` (power of two, 512 B..2 MiB; default 64 KiB).
    pub cluster_size: u64,
    /// `compat=1.1` (v3, default) or `compat=0.10` (v2): true for v3.
    pub compat_v3: bool,
    /// `lazy_refcounts`.
    pub lazy_refcounts: bool,
    /// `extended_l2`.
    pub extended_l2: bool,
    /// `compression_type`.
    pub compression_type: CompressionType,
    /// `preallocation`.
    pub preallocation: Preallocation,
    /// `refcount_bits` (1, 2, 4, ..., 64; default 16).
    pub refcount_bits: u32,
    /// `backing_file`, stored as given.
    pub backing_file: Option<String>,
    /// `backing_fmt`.
    pub backing_fmt: Option<String>,
}

impl Default for Qcow2CreateOptions {
    fn default() -> Self {
        Qcow2CreateOptions {
            size: 0,
            cluster_size: 65536,
            compat_v3: true,
            lazy_refcounts: false,
            extended_l2: false,
            compression_type: CompressionType::Zlib,
            preallocation: Preallocation::Off,
            refcount_bits: 16,
            backing_file: None,
            backing_fmt: None,
        }
    }
}

fn inval(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

fn validate(o: &Qcow2CreateOptions) -> io::Result<u32> {
    let cs = o.cluster_size;
    if !cs.is_power_of_two() || !(512..=2 << 20).contains(&cs) {
        return Err(inval(format!(
            "Cluster size must be a power of two between 512 and 2048k (got {cs})"
        )));
    }
    if o.size % 512 != 0 {
        return Err(inval("Image size must be a multiple of 512 bytes"));
    }
    // Too large for the format (its L1 table would pass QEMU's 32 MiB limit): EFBIG,
    // which qemu-img words as "The image size is too large for file format".
    let l2_entries = cs / if o.extended_l2 { 16 } else { 8 };
    if o.size > header::MAX_SIZE || o.size.div_ceil(cs * l2_entries) * 8 > header::MAX_L1_BYTES {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    }
    if !o.refcount_bits.is_power_of_two() || o.refcount_bits > 64 {
        return Err(inval(
            "Refcount width must be a power of two and may not exceed 64 bits",
        ));
    }
    if !o.compat_v3 {
        if o.lazy_refcounts {
            return Err(inval("Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)"));
        }
        if o.refcount_bits != 16 {
            return Err(inval("Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)"));
        }
        if o.extended_l2 {
            return Err(inval("Extended L2 entries are only supported with compatibility level 1.1 and above (use compat=1.1 or greater)"));
        }
        if o.compression_type != CompressionType::Zlib {
            return Err(inval("Non-zlib compression type is only supported with compatibility level 1.1 and above (use compat=1.1 or greater)"));
        }
    }
    if o.extended_l2 && cs < 16384 {
        return Err(inval(
            "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes",
        ));
    }
    if o.backing_fmt.is_some() && o.backing_file.is_none() {
        return Err(inval("Backing format cannot be used without backing file"));
    }
    if o.backing_file.is_some() && o.preallocation != Preallocation::Off && !o.extended_l2 {
        return Err(inval(
            "Backing file and preallocation can only be used at the same time if extended_l2 is on",
        ));
    }
    Ok(cs.trailing_zeros())
}

/// Builds the header of a new image and the layout of its first clusters.
fn new_header(o: &Qcow2CreateOptions, bits: u32) -> Header {
    let cs = 1u64 << bits;
    let order = o.refcount_bits.trailing_zeros();
    let l2_entries = cs / if o.extended_l2 { 16 } else { 8 };
    let l1_size = o.size.div_ceil(cs * l2_entries);
    let l1_clusters = (l1_size * 8).div_ceil(cs);
    let epb = refcount::entries_per_block(bits, order);
    let (mut rt, mut nb) = (1u64, 1u64);
    loop {
        let total = 1 + rt + nb + l1_clusters;
        let nb2 = total.div_ceil(epb);
        let rt2 = (nb2 * 8).div_ceil(cs);
        if (nb2, rt2) == (nb, rt) {
            break;
        }
        (nb, rt) = (nb2.max(1), rt2.max(1));
    }
    let mut incompat = 0;
    if o.extended_l2 {
        incompat |= header::INCOMPAT_EXTL2;
    }
    if o.compression_type != CompressionType::Zlib {
        incompat |= header::INCOMPAT_COMPRESSION;
    }
    let mut h = Header {
        version: if o.compat_v3 { 3 } else { 2 },
        backing_file_offset: 0,
        backing_file_size: 0,
        cluster_bits: bits,
        size: o.size,
        crypt_method: 0,
        l1_size: l1_size as u32,
        l1_table_offset: (1 + rt + nb) * cs,
        refcount_table_offset: cs,
        refcount_table_clusters: rt as u32,
        nb_snapshots: 0,
        snapshots_offset: 0,
        incompatible_features: incompat,
        compatible_features: if o.lazy_refcounts {
            header::COMPAT_LAZY_REFCOUNTS
        } else {
            0
        },
        autoclear_features: 0,
        refcount_order: order,
        header_length: if o.compat_v3 { 112 } else { 72 },
        compression_type: o.compression_type,
        extensions: Vec::new(),
        backing_file: o.backing_file.clone(),
    };
    if let Some(f) = &o.backing_fmt {
        h.extensions.push(Extension {
            kind: header::EXT_BACKING_FORMAT,
            data: f.as_bytes().to_vec(),
        });
    }
    if o.compat_v3 {
        h.extensions.push(header::feature_table());
    }
    h
}

/// Creates a qcow2 image at `path` (the file is created or truncated), then applies
/// preallocation. Must run inside an oxemu event loop when preallocation is not off.
pub async fn create(path: &Path, o: &Qcow2CreateOptions) -> io::Result<()> {
    let bits = validate(o)?;
    if o.backing_file.as_ref().is_some_and(|b| b.len() > 1023) {
        return Err(inval("Backing file name too long"));
    }
    let mut h = new_header(o, bits);
    let cs = 1u64 << bits;
    let head = h.serialize()?;
    let rt = h.refcount_table_clusters as u64;
    let nb = (h.l1_table_offset / cs) - 1 - rt;
    let used = h.l1_table_offset / cs + (h.l1_size as u64 * 8).div_ceil(cs);
    let epb = refcount::entries_per_block(bits, h.refcount_order);
    // Lock before emptying, so that an image in use elsewhere is refused, not destroyed.
    let f = FileDriver::open_for_create(path)?;
    f.set_len(0)?;
    f.write_all_at(&head, 0)?;
    let mut table = vec![0u8; (rt * cs) as usize];
    for i in 0..nb {
        let at = (1 + rt + i) * cs;
        table[8 * i as usize..8 * i as usize + 8].copy_from_slice(&at.to_be_bytes());
        let mut block = vec![0u8; cs as usize];
        for c in (i * epb)..((i + 1) * epb).min(used) {
            refcount::set(&mut block, h.refcount_order, (c - i * epb) as usize, 1);
        }
        f.write_all_at(&block, at)?;
    }
    f.write_all_at(&table, cs)?;
    // As QEMU, the file ends right after the L1 table (its cluster is still counted).
    f.set_len(h.l1_table_offset + h.l1_size as u64 * 8)?;
    (&f).flush()?;
    f.sync_data()?;
    drop(f);
    if o.preallocation != Preallocation::Off {
        preallocate(path, o.preallocation).await?;
    }
    Ok(())
}

async fn preallocate(path: &Path, mode: Preallocation) -> io::Result<()> {
    let file: Arc<dyn BlockDriver> = Arc::new(FileDriver::open(&FileOptions::new(path))?);
    let q = Qcow2::open(file, Qcow2OpenOptions::default()).await?;
    let clusters = q.size().div_ceil(q.cluster_size());
    q.preallocate(0, clusters, mode, false).await?;
    oxemu_block::BlockDriver::close(&*q).await
}
