//! The internal snapshot table (`docs/interop/qcow2.txt`, "Snapshots").
//!
//! The header's `nb_snapshots` and `snapshots_offset` locate a table of variable-length
//! entries, each aligned to 8 bytes:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | offset of the snapshot's L1 table |
//! | 8..12 | number of L1 entries |
//! | 12..14 / 14..16 | length of the id string / of the name |
//! | 16..20 / 20..24 | creation time: seconds / nanoseconds |
//! | 24..32 | guest clock (ns) when the snapshot was taken |
//! | 32..36 | size of the VM state (32 bits; see `vm_state_size_large`) |
//! | 36..40 | size of the extra data that follows |
//! | 40.. | extra data: 64-bit VM state size, disk size, instruction count (each optional) |
//! | then | id string, name (no terminating NUL), padding to 8 bytes |
//!
//! [`read_table`] reads and parses the table with bounds on every size, so a hostile
//! image gives an error naming the field and offset rather than a panic or an
//! unbounded allocation. [`Snapshot::serialize`] writes an entry back.

use std::io;

use oxemu_block::{BlockDriver, BlockDriverExt};

use crate::header::{bad, Header, MAX_L1_BYTES};

/// Most snapshots an image may have (QEMU's limit).
pub const MAX_SNAPSHOTS: u32 = 65536;
/// Most bytes of extra data a snapshot entry may carry (QEMU's limit).
pub const MAX_EXTRA_DATA: u32 = 1024;
/// Most bytes the whole snapshot table may take (QEMU's limit: 1 KiB per snapshot).
pub const MAX_TABLE_BYTES: u64 = 1024 * MAX_SNAPSHOTS as u64;
/// Bytes of the fixed part of an entry, before the extra data.
pub const ENTRY_FIXED_BYTES: usize = 40;

/// One internal snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Offset of the snapshot's L1 table in the image file.
    pub l1_table_offset: u64,
    /// Number of entries of that L1 table.
    pub l1_size: u32,
    /// Unique id string (`qemu-img snapshot -l` column ID).
    pub id: String,
    /// Name (column TAG).
    pub name: String,
    /// Creation time, seconds since the epoch.
    pub date_sec: u32,
    /// Creation time, nanoseconds part.
    pub date_nsec: u32,
    /// Guest clock when the snapshot was taken, in nanoseconds.
    pub vm_clock_nsec: u64,
    /// Size of the saved VM state in bytes (the 64-bit field when present).
    pub vm_state_size: u64,
    /// Virtual disk size when the snapshot was taken (extra data), if recorded.
    pub disk_size: Option<u64>,
    /// Guest instruction count (extra data; QEMU writes -1 when unknown), if recorded.
    pub icount: Option<u64>,
    /// Size of the entry's extra data as stored.
    pub extra_data_size: u32,
    /// Extra data beyond the fields above, kept verbatim.
    pub extra_unknown: Vec<u8>,
    /// Offset of this entry in the image file.
    pub entry_offset: u64,
}

/// The parsed snapshot table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotTable {
    /// Offset of the table (the header's `snapshots_offset`).
    pub offset: u64,
    /// The entries, in table order.
    pub snapshots: Vec<Snapshot>,
    /// Bytes the table occupies (all entries with their padding).
    pub size: u64,
}

fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}
fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(b[o..o + 4].try_into().unwrap())
}
fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
}

impl Snapshot {
    /// Checks the L1 table fields before the table is used (to apply or delete the
    /// snapshot): cluster alignment and QEMU's maximum L1 size.
    pub fn validate(&self, cluster_size: u64) -> io::Result<()> {
        if self.l1_table_offset % cluster_size != 0 {
            return Err(bad(
                "snapshot l1_table_offset",
                self.entry_offset,
                format!(
                    "{:#x} is not cluster aligned (snapshot {})",
                    self.l1_table_offset, self.id
                ),
            ));
        }
        if self.l1_size as u64 > MAX_L1_BYTES / 8 {
            return Err(bad(
                "snapshot l1_size",
                self.entry_offset + 8,
                format!(
                    "{} entries exceed the maximum of {} (snapshot {})",
                    self.l1_size,
                    MAX_L1_BYTES / 8,
                    self.id
                ),
            ));
        }
        Ok(())
    }

    /// Bytes this entry takes in the table, padding included.
    pub fn entry_size(&self) -> u64 {
        let n = ENTRY_FIXED_BYTES + self.extra_bytes().len() + self.id.len() + self.name.len();
        (n as u64).next_multiple_of(8)
    }

    fn extra_bytes(&self) -> Vec<u8> {
        let mut x = Vec::new();
        x.extend_from_slice(&self.vm_state_size.to_be_bytes());
        x.extend_from_slice(&self.disk_size.unwrap_or(0).to_be_bytes());
        if let Some(ic) = self.icount {
            x.extend_from_slice(&ic.to_be_bytes());
            x.extend_from_slice(&self.extra_unknown);
        }
        x
    }

    /// The entry as stored in the table (always with the 64-bit VM state size and disk
    /// size extra data, as QEMU writes it), padded to 8 bytes.
    pub fn serialize(&self) -> Vec<u8> {
        let extra = self.extra_bytes();
        let mut b = Vec::with_capacity(self.entry_size() as usize);
        b.extend_from_slice(&self.l1_table_offset.to_be_bytes());
        b.extend_from_slice(&self.l1_size.to_be_bytes());
        b.extend_from_slice(&(self.id.len() as u16).to_be_bytes());
        b.extend_from_slice(&(self.name.len() as u16).to_be_bytes());
        b.extend_from_slice(&self.date_sec.to_be_bytes());
        b.extend_from_slice(&self.date_nsec.to_be_bytes());
        b.extend_from_slice(&self.vm_clock_nsec.to_be_bytes());
        b.extend_from_slice(&(self.vm_state_size.min(u32::MAX as u64) as u32).to_be_bytes());
        b.extend_from_slice(&(extra.len() as u32).to_be_bytes());
        b.extend_from_slice(&extra);
        b.extend_from_slice(self.id.as_bytes());
        b.extend_from_slice(self.name.as_bytes());
        b.resize(b.len().next_multiple_of(8), 0);
        b
    }
}

/// Parses `count` entries from `buf`, the table's bytes starting at file offset
/// `offset` (`buf` may be longer than the table). Errors name the entry and field.
pub fn parse_table(buf: &[u8], offset: u64, count: u32) -> io::Result<SnapshotTable> {
    if count > MAX_SNAPSHOTS {
        return Err(bad(
            "header nb_snapshots",
            60,
            format!("{count} snapshots exceed the maximum of {MAX_SNAPSHOTS}"),
        ));
    }
    let mut snapshots = Vec::with_capacity((count as usize).min(buf.len() / ENTRY_FIXED_BYTES));
    let mut pos = 0usize;
    for i in 0..count {
        let at = offset + pos as u64;
        let past = |what: &str| {
            bad(
                &format!("snapshot table entry {i}"),
                at,
                format!("{what} extends past the end of the file"),
            )
        };
        let fixed = buf
            .get(pos..pos + ENTRY_FIXED_BYTES)
            .ok_or_else(|| past("the entry"))?;
        let id_len = be16(fixed, 12) as usize;
        let name_len = be16(fixed, 14) as usize;
        let extra_len = be32(fixed, 36);
        if extra_len > MAX_EXTRA_DATA {
            return Err(bad(
                &format!("snapshot table entry {i} extra_data_size"),
                at + 36,
                format!("{extra_len} bytes exceed the maximum of {MAX_EXTRA_DATA}"),
            ));
        }
        let extra_len = extra_len as usize;
        let total = (ENTRY_FIXED_BYTES + extra_len + id_len + name_len).next_multiple_of(8);
        if (pos + total) as u64 > MAX_TABLE_BYTES {
            return Err(bad(
                "snapshot table",
                offset,
                format!("the table exceeds the maximum of {MAX_TABLE_BYTES} bytes"),
            ));
        }
        let e = buf
            .get(pos..pos + ENTRY_FIXED_BYTES + extra_len + id_len + name_len)
            .ok_or_else(|| past("the entry"))?;
        let x = &e[ENTRY_FIXED_BYTES..ENTRY_FIXED_BYTES + extra_len];
        let s = ENTRY_FIXED_BYTES + extra_len;
        snapshots.push(Snapshot {
            l1_table_offset: be64(e, 0),
            l1_size: be32(e, 8),
            id: String::from_utf8_lossy(&e[s..s + id_len]).into_owned(),
            name: String::from_utf8_lossy(&e[s + id_len..s + id_len + name_len]).into_owned(),
            date_sec: be32(e, 16),
            date_nsec: be32(e, 20),
            vm_clock_nsec: be64(e, 24),
            vm_state_size: if extra_len >= 8 {
                be64(x, 0)
            } else {
                be32(e, 32) as u64
            },
            disk_size: (extra_len >= 16).then(|| be64(x, 8)),
            icount: (extra_len >= 24).then(|| be64(x, 16)),
            extra_data_size: extra_len as u32,
            extra_unknown: x.get(24..).unwrap_or(&[]).to_vec(),
            entry_offset: at,
        });
        pos += total;
    }
    Ok(SnapshotTable {
        offset,
        snapshots,
        size: pos as u64,
    })
}

/// Reads the snapshot table the header points to. The table must lie inside the file
/// (`file_size`), be cluster aligned and within QEMU's limits; otherwise the error
/// names the header field or table entry and its offset.
pub async fn read_table(file: &dyn BlockDriver, h: &Header) -> io::Result<SnapshotTable> {
    let n = h.nb_snapshots;
    if n == 0 {
        return Ok(SnapshotTable::default());
    }
    if n > MAX_SNAPSHOTS {
        return Err(bad(
            "header nb_snapshots",
            60,
            format!("{n} snapshots exceed the maximum of {MAX_SNAPSHOTS}"),
        ));
    }
    let off = h.snapshots_offset;
    if off % h.cluster_size() != 0 || off > i64::MAX as u64 {
        return Err(bad(
            "header snapshots_offset",
            64,
            format!("{off:#x} is not cluster aligned"),
        ));
    }
    let fsize = file.size();
    if off >= fsize {
        return Err(bad(
            "header snapshots_offset",
            64,
            format!("the snapshot table at {off:#x} is past the end of the file"),
        ));
    }
    // Every entry takes at least 40 bytes and at most ~3 KiB: read no more than the
    // largest table possible, and no more than the file holds.
    let max = (n as u64 * (ENTRY_FIXED_BYTES as u64 + 8 + MAX_EXTRA_DATA as u64 + 2 * 65535))
        .min(MAX_TABLE_BYTES)
        .min(fsize - off);
    let mut buf = vec![0u8; max as usize];
    file.read_at(off, &mut buf).await?;
    parse_table(&buf, off, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: &str, name: &str) -> Snapshot {
        Snapshot {
            l1_table_offset: 0x30000,
            l1_size: 2,
            id: id.into(),
            name: name.into(),
            date_sec: 1,
            date_nsec: 2,
            vm_clock_nsec: 3,
            vm_state_size: 1 << 33,
            disk_size: Some(64 << 20),
            icount: Some(u64::MAX),
            extra_data_size: 24,
            extra_unknown: Vec::new(),
            entry_offset: 0,
        }
    }

    #[test]
    fn entries_round_trip_with_padding() {
        let a = snap("1", "first");
        let b = snap("22", "x");
        let mut buf = a.serialize();
        let off_b = buf.len() as u64;
        assert_eq!(off_b % 8, 0);
        buf.extend(b.serialize());
        let t = parse_table(&buf, 0, 2).unwrap();
        assert_eq!(t.snapshots[0], a);
        assert_eq!(
            t.snapshots[1],
            Snapshot {
                entry_offset: off_b,
                ..b
            }
        );
        assert_eq!(t.size, buf.len() as u64);
    }

    #[test]
    fn truncated_and_oversized_tables_are_errors() {
        let buf = snap("1", "a").serialize();
        let e = parse_table(&buf[..buf.len() - 8], 0x1000, 1).unwrap_err();
        assert!(e.to_string().contains("snapshot table entry 0"), "{e}");
        assert!(e.to_string().contains("0x1000"), "{e}");
        let e = parse_table(&buf, 0, 2).unwrap_err();
        assert!(e.to_string().contains("entry 1"), "{e}");
        let e = parse_table(&buf, 0, MAX_SNAPSHOTS + 1).unwrap_err();
        assert!(e.to_string().contains("nb_snapshots"), "{e}");
        let mut big = buf.clone();
        big[36..40].copy_from_slice(&4096u32.to_be_bytes());
        let e = parse_table(&big, 0, 1).unwrap_err();
        assert!(e.to_string().contains("extra_data_size"), "{e}");
        let mut s = snap("1", "a");
        s.l1_size = u32::MAX;
        assert!(s
            .validate(65536)
            .unwrap_err()
            .to_string()
            .contains("l1_size"));
        s.l1_size = 1;
        s.l1_table_offset = 0x1200;
        assert!(s
            .validate(65536)
            .unwrap_err()
            .to_string()
            .contains("l1_table_offset"));
    }

    #[test]
    fn short_extra_data_falls_back_to_the_32_bit_vm_state_size() {
        let mut b = snap("1", "a").serialize();
        // Rewrite as an entry with no extra data: fixed part, id, name.
        b.truncate(ENTRY_FIXED_BYTES);
        b[32..36].copy_from_slice(&77u32.to_be_bytes());
        b[36..40].copy_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(b"1a");
        b.resize(48, 0);
        let t = parse_table(&b, 0, 1).unwrap();
        assert_eq!(t.snapshots[0].vm_state_size, 77);
        assert_eq!(t.snapshots[0].disk_size, None);
        assert_eq!(t.size, 48);
    }
}
