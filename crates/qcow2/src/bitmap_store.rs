//! Loading and storing persistent dirty bitmaps with their data (`qemu-img bitmap`).
//!
//! A store writes every bitmap anew: data clusters (all-zero ones are left out, as
//! QEMU does), bitmap tables and the directory go to newly allocated clusters and are
//! flushed with their refcounts; only then does the header's bitmaps extension point to
//! them, and the old structures are freed after that. A crash leaks at most.

use std::io;

use oxemu_block::{BlockDriver, BlockDriverExt};

use crate::bitmaps::{
    read_directory, read_directory_unchecked, Bitmap, AUTOCLEAR_BITMAPS, MAX_TABLE_ENTRIES,
};
use crate::header::{bad, Extension, EXT_BITMAPS};
use crate::meta::Meta;
use crate::{os, Qcow2};

/// Offset bits of a bitmap table entry.
const BME_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

/// A bitmap with its bits: bit `i` (least significant first in each byte) covers
/// guest bytes `[i * granularity, (i + 1) * granularity)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitmapData {
    /// Name, flags and granularity (table fields are ignored by a store).
    pub info: Bitmap,
    /// The bits, `ceil(ceil(disk size / granularity) / 8)` bytes or more.
    pub bits: Vec<u8>,
}

impl BitmapData {
    /// A bitmap of `size` guest bytes with no bit set.
    pub fn empty(name: &str, flags: u32, granularity_bits: u8, size: u64) -> BitmapData {
        let nbits = size.div_ceil(1u64 << granularity_bits);
        BitmapData {
            info: Bitmap {
                name: name.to_string(),
                flags,
                granularity_bits,
                table_offset: 0,
                table_size: 0,
                kind: 1,
            },
            bits: vec![0; nbits.div_ceil(8) as usize],
        }
    }

    /// Sets every bit that `other` sets (same granularity; `other` may be shorter).
    pub fn merge(&mut self, other: &BitmapData) -> io::Result<()> {
        if other.info.granularity_bits != self.info.granularity_bits {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "Bitmaps are of different granularity",
            ));
        }
        for (a, b) in self.bits.iter_mut().zip(&other.bits) {
            *a |= *b;
        }
        Ok(())
    }
}

impl Qcow2 {
    /// The persistent bitmaps with their bits (empty when the image has none or they
    /// are not consistent).
    pub async fn load_bitmaps(&self) -> io::Result<Vec<BitmapData>> {
        let h = self.header().await;
        let dir = read_directory(self.file.as_ref(), &h).await?;
        let cs = self.cluster_size();
        let size = self.size();
        let mut out = Vec::with_capacity(dir.len());
        for b in dir {
            if !(9..=31).contains(&b.granularity_bits) {
                return Err(bad(
                    "bitmap granularity",
                    b.table_offset,
                    format!("Bitmap '{}' doesn't satisfy the constraints", b.name),
                ));
            }
            let need = size.div_ceil(b.granularity()).div_ceil(8).div_ceil(cs);
            if b.table_size != need || b.table_size > MAX_TABLE_ENTRIES || b.table_offset % cs != 0
            {
                return Err(bad(
                    "bitmap table",
                    b.table_offset,
                    format!("Bitmap '{}' doesn't satisfy the constraints", b.name),
                ));
            }
            let mut table = vec![0u8; (b.table_size * 8) as usize];
            self.file.read_at(b.table_offset, &mut table).await?;
            let mut bits = vec![0u8; (b.table_size * cs) as usize];
            for (i, e) in table.chunks_exact(8).enumerate() {
                let e = u64::from_be_bytes(e.try_into().unwrap());
                let chunk = &mut bits[i * cs as usize..(i + 1) * cs as usize];
                let data = e & BME_OFFSET_MASK;
                if data != 0 {
                    self.file.read_at(data, chunk).await?;
                } else if e & 1 != 0 {
                    chunk.fill(0xff);
                }
            }
            bits.truncate(size.div_ceil(b.granularity()).div_ceil(8) as usize);
            out.push(BitmapData { info: b, bits });
        }
        Ok(out)
    }

    /// Replaces the image's persistent bitmaps with `list` (crash-safe order, see the
    /// module documentation). The image must have been opened with `keep_bitmaps`, or
    /// its old bitmaps are already gone; an empty list removes the extension.
    pub async fn store_bitmaps(&self, list: &[BitmapData]) -> io::Result<()> {
        if self.read_only {
            return Err(os(libc::EROFS));
        }
        if self.version.load(std::sync::atomic::Ordering::Acquire) < 3 && !list.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "Cannot store dirty bitmaps in qcow2 v2 files",
            ));
        }
        let old_dir = {
            let h = self.header().await;
            read_directory_unchecked(self.file.as_ref(), &h)
                .await
                .unwrap_or_default()
        };
        let old_ext = self
            .header()
            .await
            .extensions
            .iter()
            .find(|e| e.kind == EXT_BITMAPS)
            .map(|e| e.data.clone());
        let mut m = self.meta.lock().await;
        m.writeback().await?;
        let cs = m.cs;
        let mut dir = Vec::new();
        for b in list {
            let (table_off, table_size) = self.write_bitmap_data(&mut m, b).await?;
            let name = b.info.name.as_bytes();
            let mut e = Vec::with_capacity(24 + name.len() + 8);
            e.extend_from_slice(&table_off.to_be_bytes());
            e.extend_from_slice(&(table_size as u32).to_be_bytes());
            e.extend_from_slice(&b.info.flags.to_be_bytes());
            e.push(1); // type: dirty tracking bitmap
            e.push(b.info.granularity_bits);
            e.extend_from_slice(&(name.len() as u16).to_be_bytes());
            e.extend_from_slice(&0u32.to_be_bytes());
            e.extend_from_slice(name);
            e.resize(e.len().next_multiple_of(8), 0);
            dir.extend_from_slice(&e);
        }
        let dir_off = if dir.is_empty() {
            0
        } else {
            let at = m.alloc_contiguous((dir.len() as u64).div_ceil(cs)).await?;
            self.file.write_at(at, &dir).await?;
            at
        };
        // New data, tables and directory and their refcounts are durable before the
        // header points to them.
        m.writeback().await?;
        m.h.extensions.retain(|e| e.kind != EXT_BITMAPS);
        if list.is_empty() {
            m.h.autoclear_features &= !AUTOCLEAR_BITMAPS;
        } else {
            let mut ext = Vec::with_capacity(24);
            ext.extend_from_slice(&(list.len() as u32).to_be_bytes());
            ext.extend_from_slice(&0u32.to_be_bytes());
            ext.extend_from_slice(&(dir.len() as u64).to_be_bytes());
            ext.extend_from_slice(&dir_off.to_be_bytes());
            m.h.extensions.push(Extension {
                kind: EXT_BITMAPS,
                data: ext,
            });
            m.h.autoclear_features |= AUTOCLEAR_BITMAPS;
        }
        m.write_header().await?;
        self.file.flush().await?;
        // The old bitmaps' clusters go only now.
        if let Some(d) = old_ext.filter(|d| d.len() >= 24) {
            let size = u64::from_be_bytes(d[8..16].try_into().unwrap());
            let off = u64::from_be_bytes(d[16..24].try_into().unwrap());
            if off != 0 && size != 0 {
                m.free_later(off, size);
            }
        }
        for b in &old_dir {
            self.free_bitmap_clusters(&mut m, b).await?;
        }
        m.writeback().await
    }

    /// Writes one bitmap's non-zero data clusters and its table; returns the table's
    /// offset and entry count.
    async fn write_bitmap_data(&self, m: &mut Meta, b: &BitmapData) -> io::Result<(u64, u64)> {
        let cs = m.cs;
        let size = self.size();
        let table_size = size.div_ceil(b.info.granularity()).div_ceil(8).div_ceil(cs);
        let mut table = Vec::with_capacity((table_size * 8) as usize);
        for i in 0..table_size as usize {
            let lo = (i * cs as usize).min(b.bits.len());
            let hi = ((i + 1) * cs as usize).min(b.bits.len());
            let chunk = &b.bits[lo..hi];
            if chunk.iter().all(|&x| x == 0) {
                table.extend_from_slice(&0u64.to_be_bytes());
                continue;
            }
            let mut data = chunk.to_vec();
            data.resize(cs as usize, 0);
            let at = m.alloc_cluster().await?;
            self.file.write_at(at, &data).await?;
            table.extend_from_slice(&at.to_be_bytes());
        }
        let at = m
            .alloc_contiguous((table.len() as u64).div_ceil(cs).max(1))
            .await?;
        self.file.write_at(at, &table).await?;
        Ok((at, table_size))
    }

    /// Drops the references of an old bitmap's table and data clusters.
    async fn free_bitmap_clusters(&self, m: &mut Meta, b: &Bitmap) -> io::Result<()> {
        if b.table_size == 0 || b.table_size > MAX_TABLE_ENTRIES || b.table_offset == 0 {
            return Ok(());
        }
        let mut table = vec![0u8; (b.table_size * 8) as usize];
        self.file.read_at(b.table_offset, &mut table).await?;
        for e in table.chunks_exact(8) {
            let data = u64::from_be_bytes(e.try_into().unwrap()) & BME_OFFSET_MASK;
            if data != 0 {
                m.free_later(data, m.cs);
            }
        }
        m.free_later(b.table_offset, b.table_size * 8);
        Ok(())
    }
}
