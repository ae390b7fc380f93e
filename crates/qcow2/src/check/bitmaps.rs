//! Counting the clusters of persistent dirty bitmaps (QEMU's
//! `qcow2_check_bitmaps_refcounts`): the bitmap directory, each bitmap's table and
//! the data clusters the tables point to. Bitmaps count only while the autoclear bit
//! says they are consistent, as in QEMU; otherwise their clusters are leaks.

use std::io;

use oxemu_block::BlockDriverExt;

use super::Ck;
use crate::header::EXT_BITMAPS;

/// Autoclear bit 0: the bitmaps extension is consistent.
const AUTOCLEAR_BITMAPS: u64 = 1;
/// Offset bits of a bitmap table entry; bit 0 means "all ones" when the offset is 0.
const BME_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bits of a bitmap table entry that must be zero.
const BME_RESERVED: u64 = 0xff00_0000_0000_01fe;
/// Bounds on untrusted sizes (QEMU's limits: 64 MiB directory, 64 Ki bitmaps).
const MAX_DIRECTORY: u64 = 64 << 20;
const MAX_BITMAPS: u32 = 65535;
const MAX_TABLE_ENTRIES: u64 = 1 << 27;

impl Ck {
    /// Counts the bitmaps' clusters when the image has consistent bitmaps.
    pub(super) async fn count_bitmaps(&mut self) -> io::Result<()> {
        if self.h.version < 3 || self.h.autoclear_features & AUTOCLEAR_BITMAPS == 0 {
            return Ok(());
        }
        let Some(ext) = self.h.extensions.iter().find(|e| e.kind == EXT_BITMAPS) else {
            return Ok(());
        };
        if ext.data.len() < 24 {
            self.bitmap_error("bitmaps extension is too short".into());
            return Ok(());
        }
        let d = &ext.data;
        let nb = u32::from_be_bytes(d[0..4].try_into().unwrap());
        let dir_size = u64::from_be_bytes(d[8..16].try_into().unwrap());
        let dir_off = u64::from_be_bytes(d[16..24].try_into().unwrap());
        if nb == 0 {
            return Ok(());
        }
        if nb > MAX_BITMAPS || dir_size > MAX_DIRECTORY || dir_off % self.cs != 0 {
            self.bitmap_error(format!(
                "bitmap directory at {dir_off:#x} ({dir_size} bytes, {nb} bitmaps) is invalid"
            ));
            return Ok(());
        }
        self.inc(dir_off, dir_size)?;
        if dir_off.saturating_add(dir_size) > self.file_len {
            self.bitmap_error(format!(
                "bitmap directory at {dir_off:#x} is past the end of the file"
            ));
            return Ok(());
        }
        let mut dir = vec![0u8; dir_size as usize];
        self.file.read_at(dir_off, &mut dir).await?;
        let mut pos = 0usize;
        for _ in 0..nb {
            let Some(head) = dir.get(pos..pos + 24) else {
                self.bitmap_error(format!("bitmap directory at {dir_off:#x} is truncated"));
                return Ok(());
            };
            let table_off = u64::from_be_bytes(head[0..8].try_into().unwrap());
            let table_size = u32::from_be_bytes(head[8..12].try_into().unwrap()) as u64;
            let name_size = u16::from_be_bytes(head[18..20].try_into().unwrap()) as usize;
            let extra = u32::from_be_bytes(head[20..24].try_into().unwrap()) as usize;
            pos = (pos + 24 + extra + name_size).next_multiple_of(8);
            if pos > dir.len() {
                self.bitmap_error(format!("bitmap directory at {dir_off:#x} is truncated"));
                return Ok(());
            }
            self.count_bitmap_table(table_off, table_size).await?;
        }
        Ok(())
    }

    async fn count_bitmap_table(&mut self, off: u64, entries: u64) -> io::Result<()> {
        if off % self.cs != 0 || entries > MAX_TABLE_ENTRIES {
            self.bitmap_error(format!(
                "bitmap table at {off:#x} ({entries} entries) is invalid"
            ));
            return Ok(());
        }
        self.inc(off, entries * 8)?;
        if off.saturating_add(entries * 8) > self.file_len {
            self.r.corruptions += 1;
            return Ok(());
        }
        let mut t = vec![0u8; (entries * 8) as usize];
        self.file.read_at(off, &mut t).await?;
        for e in t.chunks_exact(8) {
            let e = u64::from_be_bytes(e.try_into().unwrap());
            let data = e & BME_OFFSET_MASK;
            if e & BME_RESERVED != 0 || data % self.cs != 0 || (data != 0 && e & 1 != 0) {
                self.r.corruptions += 1;
                continue;
            }
            if data != 0 {
                self.inc(data, self.cs)?;
            }
        }
        Ok(())
    }

    fn bitmap_error(&mut self, m: String) {
        self.msg(format!("ERROR {m}"));
        self.r.corruptions += 1;
    }
}
