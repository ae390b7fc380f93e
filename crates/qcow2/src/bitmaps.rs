//! Persistent dirty bitmaps: the bitmaps header extension and the bitmap directory
//! (`docs/interop/qcow2.txt`, "Bitmaps extension"). oxemu reads them for `info` and
//! `check`; a read-write open that is not a check drops their autoclear bit, as QEMU's
//! rule asks of writers that do not keep bitmaps up to date.

use std::io;

use oxemu_block::{BlockDriver, BlockDriverExt};

use crate::header::{bad, Header, EXT_BITMAPS};

/// Autoclear bit 0: the bitmaps extension is consistent.
pub const AUTOCLEAR_BITMAPS: u64 = 1;
/// Bitmap flag: in use (not saved cleanly).
pub const FLAG_IN_USE: u32 = 1;
/// Bitmap flag: enabled automatically on open.
pub const FLAG_AUTO: u32 = 2;
/// Bounds on untrusted sizes (QEMU's limits: 64 MiB directory, 65535 bitmaps, 1023-byte
/// names, 2^27 table entries).
const MAX_DIRECTORY: u64 = 64 << 20;
const MAX_BITMAPS: u32 = 65535;
/// Most entries a bitmap table may have.
pub const MAX_TABLE_ENTRIES: u64 = 1 << 27;

/// One entry of the bitmap directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitmap {
    /// Name (UTF-8, as stored).
    pub name: String,
    /// Flag bits (`FLAG_IN_USE`, `FLAG_AUTO`, ...).
    pub flags: u32,
    /// log2 of the bytes one bit covers.
    pub granularity_bits: u8,
    /// Host offset of the bitmap table.
    pub table_offset: u64,
    /// Entries in the bitmap table.
    pub table_size: u64,
    /// Bitmap type (1: dirty tracking, the only one defined).
    pub kind: u8,
}

impl Bitmap {
    /// QEMU's checks of a directory entry (`check_dir_entry`) for an image of
    /// `disk_len` bytes: an entry that fails them makes the image unusable, with
    /// "Bitmap 'NAME' doesn't satisfy the constraints".
    pub fn validate(&self, cluster_size: u64, disk_len: u64) -> io::Result<()> {
        let phys = self.table_size.saturating_mul(cluster_size);
        let fits = self.flags & FLAG_IN_USE != 0
            || self.granularity_bits > 31
            || disk_len <= (phys.saturating_mul(8)) << self.granularity_bits.min(31);
        let ok = self.table_size != 0
            && self.table_offset != 0
            && self.table_offset % cluster_size == 0
            && self.table_size <= MAX_TABLE_ENTRIES
            && (9..=31).contains(&self.granularity_bits)
            && self.flags & !(FLAG_IN_USE | FLAG_AUTO) == 0
            && self.name.len() <= 1023
            && self.kind == 1
            && phys <= 0x2000_0000
            && fits;
        if ok {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("Bitmap '{}' doesn't satisfy the constraints", self.name),
            ))
        }
    }

    /// Bytes one bit of the bitmap covers.
    pub fn granularity(&self) -> u64 {
        1u64 << self.granularity_bits.min(63)
    }

    /// QEMU's names of the set flags, in QEMU's order.
    pub fn flag_names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.flags & FLAG_IN_USE != 0 {
            v.push("in-use");
        }
        if self.flags & FLAG_AUTO != 0 {
            v.push("auto");
        }
        v
    }
}

/// Where the bitmap directory is, from the header: `(count, offset, size)`, or `None`
/// when the image has no consistent bitmaps (no extension, v2, or autoclear bit clear).
pub fn directory_location(h: &Header) -> io::Result<Option<(u32, u64, u64)>> {
    if h.version < 3 || h.autoclear_features & AUTOCLEAR_BITMAPS == 0 {
        return Ok(None);
    }
    let Some(ext) = h.extensions.iter().find(|e| e.kind == EXT_BITMAPS) else {
        return Ok(None);
    };
    let d = &ext.data;
    if d.len() < 24 {
        return Err(bad("bitmaps extension", 0, "is shorter than 24 bytes"));
    }
    let nb = u32::from_be_bytes(d[0..4].try_into().unwrap());
    let size = u64::from_be_bytes(d[8..16].try_into().unwrap());
    let off = u64::from_be_bytes(d[16..24].try_into().unwrap());
    if nb == 0 {
        return Ok(None);
    }
    let cs = 1u64 << h.cluster_bits;
    if nb > MAX_BITMAPS || size > MAX_DIRECTORY || off % cs != 0 {
        return Err(bad(
            "bitmap directory",
            off,
            format!("{nb} bitmaps in {size} bytes is invalid"),
        ));
    }
    Ok(Some((nb, off, size)))
}

/// Parses a bitmap directory of `nb` entries.
pub fn parse_directory(dir: &[u8], nb: u32, at: u64) -> io::Result<Vec<Bitmap>> {
    let mut out = Vec::with_capacity(nb.min(1024) as usize);
    let mut pos = 0usize;
    for _ in 0..nb {
        let trunc = || bad("bitmap directory", at + pos as u64, "is truncated");
        let head = dir.get(pos..pos + 24).ok_or_else(trunc)?;
        let table_offset = u64::from_be_bytes(head[0..8].try_into().unwrap());
        let table_size = u32::from_be_bytes(head[8..12].try_into().unwrap()) as u64;
        let flags = u32::from_be_bytes(head[12..16].try_into().unwrap());
        let kind = head[16];
        let granularity_bits = head[17];
        let name_size = u16::from_be_bytes(head[18..20].try_into().unwrap()) as usize;
        let extra = u32::from_be_bytes(head[20..24].try_into().unwrap()) as usize;
        let name_at = pos + 24 + extra;
        let name = dir.get(name_at..name_at + name_size).ok_or_else(trunc)?;
        out.push(Bitmap {
            name: String::from_utf8_lossy(name).into_owned(),
            flags,
            granularity_bits,
            table_offset,
            table_size,
            kind,
        });
        pos = (name_at + name_size).next_multiple_of(8);
    }
    Ok(out)
}

/// Reads the bitmap directory of the image (empty when it has no consistent bitmaps),
/// each entry checked as QEMU checks it ([`Bitmap::validate`]).
pub async fn read_directory(file: &dyn BlockDriver, h: &Header) -> io::Result<Vec<Bitmap>> {
    let list = read_directory_unchecked(file, h).await?;
    for b in &list {
        b.validate(1u64 << h.cluster_bits, h.size)?;
    }
    Ok(list)
}

/// [`read_directory`] without the entry checks (for `check` and for freeing).
pub async fn read_directory_unchecked(
    file: &dyn BlockDriver,
    h: &Header,
) -> io::Result<Vec<Bitmap>> {
    let Some((nb, off, size)) = directory_location(h)? else {
        return Ok(Vec::new());
    };
    if off.saturating_add(size) > file.size() {
        return Err(bad("bitmap directory", off, "is past the end of the file"));
    }
    let mut dir = vec![0u8; size as usize];
    file.read_at(off, &mut dir).await?;
    parse_directory(&dir, nb, off)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_and_padded_directories() {
        let mut d = vec![0u8; 32];
        d[8..12].copy_from_slice(&4u32.to_be_bytes());
        d[12..16].copy_from_slice(&FLAG_AUTO.to_be_bytes());
        d[17] = 16;
        d[18..20].copy_from_slice(&2u16.to_be_bytes());
        d[24..26].copy_from_slice(b"b0");
        let b = parse_directory(&d, 1, 0).unwrap();
        assert_eq!(b[0].name, "b0");
        assert_eq!(b[0].granularity(), 65536);
        assert_eq!(b[0].flag_names(), ["auto"]);
        assert!(b[0].validate(65536, 1 << 20).is_err(), "table offset 0");
        assert!(parse_directory(&d, 2, 0).is_err());
        assert!(parse_directory(&d[..20], 1, 0).is_err());
    }
}
