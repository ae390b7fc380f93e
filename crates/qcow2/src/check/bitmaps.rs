//! Counting the clusters of persistent dirty bitmaps (QEMU's
//! `qcow2_check_bitmaps_refcounts`): the bitmap directory, each bitmap's table and
//! the data clusters the tables point to. Bitmaps count only while the autoclear bit
//! says they are consistent, as in QEMU; otherwise their clusters are leaks.

use std::io;

use oxemu_block::BlockDriverExt;

use super::Ck;
use crate::bitmaps::{directory_location, parse_directory, MAX_TABLE_ENTRIES};

/// Offset bits of a bitmap table entry; bit 0 means "all ones" when the offset is 0.
const BME_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bits of a bitmap table entry that must be zero.
const BME_RESERVED: u64 = 0xff00_0000_0000_01fe;

impl Ck {
    /// Counts the bitmaps' clusters when the image has consistent bitmaps.
    pub(super) async fn count_bitmaps(&mut self) -> io::Result<()> {
        let (nb, dir_off, dir_size) = match directory_location(&self.h) {
            Ok(Some(l)) => l,
            Ok(None) => return Ok(()),
            Err(e) => {
                self.bitmap_error(e.to_string());
                return Ok(());
            }
        };
        self.inc(dir_off, dir_size)?;
        if dir_off.saturating_add(dir_size) > self.file_len {
            self.bitmap_error(format!(
                "bitmap directory at {dir_off:#x} is past the end of the file"
            ));
            return Ok(());
        }
        let mut dir = vec![0u8; dir_size as usize];
        self.file.read_at(dir_off, &mut dir).await?;
        let list = match parse_directory(&dir, nb, dir_off) {
            Ok(l) => l,
            Err(e) => {
                self.bitmap_error(e.to_string());
                return Ok(());
            }
        };
        for b in list {
            self.count_bitmap_table(b.table_offset, b.table_size)
                .await?;
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
