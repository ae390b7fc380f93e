//! The on-disk format of a write log (Linux dm-log-writes, as QEMU writes it) and a
//! validating reader for it.
//!
//! Layout, all integers little-endian, in units of the log's sector size `S`:
//!
//! - sector 0, the super block: `magic: u64` ([`LOG_MAGIC`]), `version: u64` (1),
//!   `nr_entries: u64`, `sectorsize: u32`, zero padding to `S` bytes;
//! - from sector 1 on, one record per logged request: an entry sector
//!   (`sector: u64`, `nr_sectors: u64`, `flags: u64`, `data_len: u64`, then up to
//!   `S - 32` bytes of mark text, padded with zeroes) followed by `nr_sectors`
//!   sectors of data, except for discards, which carry none. `sector` and
//!   `nr_sectors` count `S`-byte sectors of the logged node.

use std::fmt;
use std::ops::Range;
use std::path::Path;

/// `magic` of the super block ("jsfwshr" with a leading zero byte, read as a `u64`).
pub const LOG_MAGIC: u64 = 0x006a_7366_7773_6872;
/// The only `version` there is.
pub const LOG_VERSION: u64 = 1;
/// Entry flag: a flush of the logged node.
pub const FLAG_FLUSH: u64 = 1 << 0;
/// Entry flag: a Force Unit Access write (QEMU's driver never sets it; see the
/// module documentation of [`blklogwrites`](super)).
pub const FLAG_FUA: u64 = 1 << 1;
/// Entry flag: a discard; the record has no data sectors.
pub const FLAG_DISCARD: u64 = 1 << 2;
/// Entry flag: a mark (a label that dm-log-writes users put in the log).
pub const FLAG_MARK: u64 = 1 << 3;
/// Every flag a valid entry may carry.
pub const FLAG_MASK: u64 = FLAG_FLUSH | FLAG_FUA | FLAG_DISCARD | FLAG_MARK;
/// Bytes of the super block before its padding.
pub const SUPER_SIZE: usize = 28;
/// Bytes of an entry header before its padding.
pub const ENTRY_SIZE: usize = 32;
/// Smallest log sector size; it must also be a power of two below 2^24.
pub const MIN_SECTOR_SIZE: u64 = 32;
/// Bound on the sector size, exclusive (QEMU's).
pub const MAX_SECTOR_SIZE: u64 = 1 << 24;

/// True for a usable log sector size: a power of two, at least 32 bytes (an entry
/// header must fit in a sector), below 16 MiB.
pub fn sector_size_valid(size: u64) -> bool {
    size.is_power_of_two() && (MIN_SECTOR_SIZE..MAX_SECTOR_SIZE).contains(&size)
}

/// The super block of a log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Super {
    /// [`LOG_MAGIC`] in a valid log.
    pub magic: u64,
    /// [`LOG_VERSION`] in a valid log.
    pub version: u64,
    /// Number of entries the log holds (as of the last super block update).
    pub nr_entries: u64,
    /// The log's sector size in bytes.
    pub sectorsize: u32,
}

impl Super {
    /// A valid super block for `nr_entries` entries of `sectorsize`-byte sectors.
    pub fn new(nr_entries: u64, sectorsize: u32) -> Self {
        Super {
            magic: LOG_MAGIC,
            version: LOG_VERSION,
            nr_entries,
            sectorsize,
        }
    }

    /// Decodes the first [`SUPER_SIZE`] bytes of `b` (which must be that long).
    pub fn decode(b: &[u8]) -> Self {
        Super {
            magic: le64(&b[0..8]),
            version: le64(&b[8..16]),
            nr_entries: le64(&b[16..24]),
            sectorsize: u32::from_le_bytes(b[24..28].try_into().unwrap()),
        }
    }

    /// The super block's sector: the encoded fields padded with zeroes to `sector`
    /// bytes (at least [`SUPER_SIZE`]).
    pub fn encode(&self, sector: usize) -> Vec<u8> {
        let mut b = vec![0u8; sector.max(SUPER_SIZE)];
        b[0..8].copy_from_slice(&self.magic.to_le_bytes());
        b[8..16].copy_from_slice(&self.version.to_le_bytes());
        b[16..24].copy_from_slice(&self.nr_entries.to_le_bytes());
        b[24..28].copy_from_slice(&self.sectorsize.to_le_bytes());
        b
    }

    /// Checks magic and version, with QEMU's messages, then the sector size.
    pub fn check(&self) -> Result<(), LogError> {
        if self.magic != LOG_MAGIC {
            return Err(LogError::new(0, "Invalid log superblock magic"));
        }
        if self.version != LOG_VERSION {
            return Err(LogError::new(
                8,
                format!("Unsupported log version {}", self.version),
            ));
        }
        if !sector_size_valid(self.sectorsize as u64) {
            return Err(LogError::new(
                24,
                format!("Invalid log sector size {}", self.sectorsize),
            ));
        }
        Ok(())
    }
}

/// The header of one entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryHeader {
    /// First sector of the logged node that the request covers.
    pub sector: u64,
    /// Number of sectors the request covers (0 for flushes).
    pub nr_sectors: u64,
    /// `FLAG_*` bits.
    pub flags: u64,
    /// Bytes of mark text after the header, in the entry sector.
    pub data_len: u64,
}

impl EntryHeader {
    /// Decodes the first [`ENTRY_SIZE`] bytes of `b` (which must be that long).
    pub fn decode(b: &[u8]) -> Self {
        EntryHeader {
            sector: le64(&b[0..8]),
            nr_sectors: le64(&b[8..16]),
            flags: le64(&b[16..24]),
            data_len: le64(&b[24..32]),
        }
    }

    /// The entry sector: the encoded header padded with zeroes to `sector` bytes.
    pub fn encode(&self, sector: usize) -> Vec<u8> {
        let mut b = vec![0u8; sector.max(ENTRY_SIZE)];
        b[0..8].copy_from_slice(&self.sector.to_le_bytes());
        b[8..16].copy_from_slice(&self.nr_sectors.to_le_bytes());
        b[16..24].copy_from_slice(&self.flags.to_le_bytes());
        b[24..32].copy_from_slice(&self.data_len.to_le_bytes());
        b
    }

    /// Log sectors the record takes after its entry sector: its data sectors, none
    /// for a discard.
    pub fn data_sectors(&self) -> u64 {
        if self.flags & FLAG_DISCARD != 0 {
            0
        } else {
            self.nr_sectors
        }
    }

    /// Checks the header of entry `index`, whose entry sector is at log byte
    /// `offset`, for a log of `sector_size`-byte sectors: known flags (QEMU's
    /// message), mark text that fits its sector, and a request whose byte range does
    /// not overflow. Returns the number of log sectors of the whole record.
    pub fn check(&self, index: u64, offset: u64, sector_size: u64) -> Result<u64, LogError> {
        if self.flags & !FLAG_MASK != 0 {
            return Err(LogError::entry(
                index,
                offset + 16,
                format!("Invalid flags 0x{:x} in log entry {index}", self.flags),
            ));
        }
        if self.data_len > sector_size - ENTRY_SIZE as u64 {
            return Err(LogError::entry(
                index,
                offset + 24,
                format!(
                    "data_len {} does not fit in a {sector_size}-byte entry sector",
                    self.data_len
                ),
            ));
        }
        let end = self
            .sector
            .checked_add(self.nr_sectors)
            .and_then(|e| e.checked_mul(sector_size));
        if end.is_none() {
            return Err(LogError::entry(
                index,
                offset,
                format!(
                    "sector {} + nr_sectors {} overflows the byte range",
                    self.sector, self.nr_sectors
                ),
            ));
        }
        self.data_sectors().checked_add(1).ok_or_else(|| {
            LogError::entry(index, offset + 8, "nr_sectors overflows the log position")
        })
    }
}

/// A malformed log: what is wrong, at which byte offset of the log, and for which
/// entry (none for the super block).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogError {
    /// Index of the entry at fault, if the error is about an entry.
    pub entry: Option<u64>,
    /// Byte offset in the log of the faulty field.
    pub offset: u64,
    /// What is wrong.
    pub msg: String,
}

impl LogError {
    fn new(offset: u64, msg: impl Into<String>) -> Self {
        LogError {
            entry: None,
            offset,
            msg: msg.into(),
        }
    }

    fn entry(index: u64, offset: u64, msg: impl Into<String>) -> Self {
        LogError {
            entry: Some(index),
            offset,
            msg: msg.into(),
        }
    }
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.entry {
            Some(i) => write!(f, "{} (log entry {i}, offset {})", self.msg, self.offset),
            None => write!(f, "{} (offset {})", self.msg, self.offset),
        }
    }
}

impl std::error::Error for LogError {}

impl From<LogError> for std::io::Error {
    fn from(e: LogError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
    }
}

/// One entry of a parsed log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// Position in the log, from 0.
    pub index: u64,
    /// Byte offset of the entry sector in the log.
    pub log_offset: u64,
    /// The decoded header.
    pub header: EntryHeader,
    /// Where the entry's data lies in [`Log::bytes`] (empty for discards and flushes).
    pub data: Range<usize>,
    /// Where its mark text lies in [`Log::bytes`] (`data_len` bytes after the header).
    pub mark: Range<usize>,
}

impl LogEntry {
    /// True for a flush entry.
    pub fn is_flush(&self) -> bool {
        self.header.flags & FLAG_FLUSH != 0
    }

    /// True for a discard entry.
    pub fn is_discard(&self) -> bool {
        self.header.flags & FLAG_DISCARD != 0
    }

    /// Byte range of the logged node that the request covers.
    pub fn range(&self, sector_size: u32) -> Range<u64> {
        let s = sector_size as u64;
        // `EntryHeader::check` made sure that this does not overflow.
        self.header.sector * s..(self.header.sector + self.header.nr_sectors) * s
    }
}

/// A parsed and validated log. See [`parse_log`].
#[derive(Clone, Debug)]
pub struct Log {
    /// The super block.
    pub sup: Super,
    /// The entries the super block counts, in log order.
    pub entries: Vec<LogEntry>,
    /// The whole log file.
    pub bytes: Vec<u8>,
}

impl Log {
    /// The data of `e` (an entry of this log).
    pub fn data(&self, e: &LogEntry) -> &[u8] {
        &self.bytes[e.data.clone()]
    }

    /// The log's sector size in bytes.
    pub fn sector_size(&self) -> u32 {
        self.sup.sectorsize
    }
}

/// Parses and validates a whole log held in memory. Every entry the super block
/// counts must lie within `bytes`, with valid flags, mark text that fits its sector
/// and a request range that does not overflow; bytes after the last counted entry
/// are ignored (a log whose super block was not updated after its last writes).
/// Errors name the entry index and the byte offset.
pub fn parse_log(bytes: Vec<u8>) -> Result<Log, LogError> {
    let len = bytes.len() as u64;
    if bytes.len() < SUPER_SIZE {
        return Err(LogError::new(
            len,
            format!("the log is {len} bytes, shorter than its {SUPER_SIZE}-byte super block"),
        ));
    }
    let sup = Super::decode(&bytes);
    sup.check()?;
    let ss = sup.sectorsize as u64;
    // Each entry takes at least one sector: a bound on the count before allocating.
    let room = (len / ss).saturating_sub(1);
    if sup.nr_entries > room {
        return Err(LogError::new(
            16,
            format!(
                "the super block counts {} entries, but the {len}-byte log has room for {room}",
                sup.nr_entries
            ),
        ));
    }
    let mut entries = Vec::with_capacity(sup.nr_entries as usize);
    let mut sector = 1u64;
    for index in 0..sup.nr_entries {
        // `sector` stays below len / ss here, so the product cannot overflow.
        let off = sector * ss;
        if off + ss > len {
            return Err(LogError::entry(
                index,
                off,
                format!("the entry sector runs past the end of the {len}-byte log"),
            ));
        }
        let header = EntryHeader::decode(&bytes[off as usize..]);
        let n = header.check(index, off, ss)?;
        let end = n
            .checked_add(sector)
            .and_then(|e| e.checked_mul(ss))
            .filter(|&e| e <= len)
            .ok_or_else(|| {
                LogError::entry(
                    index,
                    off + 8,
                    format!(
                        "its {} data sectors run past the end of the {len}-byte log",
                        header.data_sectors()
                    ),
                )
            })?;
        let data_start = (off + ss) as usize;
        let mark_start = off as usize + ENTRY_SIZE;
        entries.push(LogEntry {
            index,
            log_offset: off,
            header,
            data: data_start..end as usize,
            mark: mark_start..mark_start + header.data_len as usize,
        });
        sector = end / ss;
    }
    Ok(Log {
        sup,
        entries,
        bytes,
    })
}

/// Reads and parses the log file at `path` (see [`parse_log`]); errors name the file.
pub fn read_log(path: &Path) -> std::io::Result<Log> {
    let bytes = std::fs::read(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    parse_log(bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_of(records: &[(EntryHeader, Vec<u8>)], ss: usize) -> Vec<u8> {
        let mut b = Super::new(records.len() as u64, ss as u32).encode(ss);
        for (h, d) in records {
            b.extend(h.encode(ss));
            b.extend(d);
        }
        b
    }

    #[test]
    fn parses_what_it_encodes() {
        let w = EntryHeader {
            sector: 3,
            nr_sectors: 2,
            ..Default::default()
        };
        let d = EntryHeader {
            sector: 9,
            nr_sectors: 100,
            flags: FLAG_DISCARD,
            data_len: 0,
        };
        let f = EntryHeader {
            flags: FLAG_FLUSH,
            ..Default::default()
        };
        let bytes = log_of(&[(w, vec![7; 1024]), (d, vec![]), (f, vec![])], 512);
        let log = parse_log(bytes).unwrap();
        assert_eq!(log.entries.len(), 3);
        assert_eq!(log.data(&log.entries[0]), &[7; 1024][..]);
        assert_eq!(log.entries[0].range(512), 1536..2560);
        assert_eq!(log.entries[1].log_offset, 4 * 512);
        assert!(log.entries[1].is_discard() && log.entries[2].is_flush());
        assert!(log.data(&log.entries[1]).is_empty());
    }

    #[test]
    fn errors_name_entry_and_offset() {
        let w = EntryHeader {
            sector: 0,
            nr_sectors: 1,
            ..Default::default()
        };
        let bad = EntryHeader {
            flags: 0x10,
            ..Default::default()
        };
        let e = parse_log(log_of(&[(w, vec![0; 512]), (bad, vec![])], 512)).unwrap_err();
        assert_eq!(e.entry, Some(1));
        assert_eq!(e.offset, 3 * 512 + 16);
        assert!(e.msg.contains("Invalid flags 0x10 in log entry 1"), "{e}");

        // Data missing at the end.
        let mut b = log_of(&[(w, vec![0; 512])], 512);
        b.truncate(1024 + 100);
        let e = parse_log(b).unwrap_err();
        assert_eq!((e.entry, e.offset), (Some(0), 512 + 8), "{e}");

        // A count that cannot fit is refused before anything is allocated.
        let mut b = log_of(&[], 512);
        b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse_log(b).unwrap_err().msg.contains("room for 0"));

        let mut b = log_of(&[], 512);
        b[0] ^= 1;
        assert_eq!(
            parse_log(b).unwrap_err().msg,
            "Invalid log superblock magic"
        );
        let mut b = log_of(&[], 512);
        b[8] = 2;
        assert_eq!(parse_log(b).unwrap_err().msg, "Unsupported log version 2");
        assert!(parse_log(vec![0; 10]).is_err());
    }
}
