//! virtio-blk requests: parsing a descriptor chain into a checked [`BlkRequest`], and
//! the device's config space. Pure functions over guest memory, so that a fuzz target
//! can drive them without a frontend.
//!
//! With VIRTIO_F_VERSION_1 a driver may lay a request out over descriptors as it likes,
//! so the parser does not assume one descriptor per part: the 16-byte header is the
//! first 16 device-readable bytes, the status byte is the last device-writable byte,
//! and the data lies in between.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Request types (`VIRTIO_BLK_T_*`).
pub mod types {
    /// Read.
    pub const IN: u32 = 0;
    /// Write.
    pub const OUT: u32 = 1;
    /// Flush.
    pub const FLUSH: u32 = 4;
    /// Device id string.
    pub const GET_ID: u32 = 8;
    /// Discard.
    pub const DISCARD: u32 = 11;
    /// Write zeroes.
    pub const WRITE_ZEROES: u32 = 13;
}

/// Status values written to the last byte of a request.
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// I/O error (also: malformed request, out-of-range access, read-only device).
    pub const IOERR: u8 = 1;
    /// Unsupported request type.
    pub const UNSUPP: u8 = 2;
}

/// Feature bits (`VIRTIO_BLK_F_*`, ring and transport features).
pub mod features {
    /// Maximum segment size in `size_max`.
    pub const SIZE_MAX: u64 = 1 << 1;
    /// Maximum segments in `seg_max`.
    pub const SEG_MAX: u64 = 1 << 2;
    /// Read-only device.
    pub const RO: u64 = 1 << 5;
    /// Block size in `blk_size`.
    pub const BLK_SIZE: u64 = 1 << 6;
    /// Flush command.
    pub const FLUSH: u64 = 1 << 9;
    /// Topology information.
    pub const TOPOLOGY: u64 = 1 << 10;
    /// Writeback mode is configurable (`writeback` field).
    pub const CONFIG_WCE: u64 = 1 << 11;
    /// Several queues.
    pub const MQ: u64 = 1 << 12;
    /// Discard command.
    pub const DISCARD: u64 = 1 << 13;
    /// Write-zeroes command.
    pub const WRITE_ZEROES: u64 = 1 << 14;
    /// Indirect descriptors.
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// Used/avail event index suppression.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// vhost-user protocol features negotiation.
    pub const PROTOCOL_FEATURES: u64 = 1 << 30;
    /// Virtio 1.0.
    pub const VERSION_1: u64 = 1 << 32;
}

/// Bytes per virtio-blk sector (always 512, whatever the logical block size).
pub const SECTOR: u64 = 512;
/// Length of the device id returned by GET_ID.
pub const ID_BYTES: usize = 20;

/// Limits a request must respect.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Disk size in bytes.
    pub capacity: u64,
    /// Logical block size; data lengths and offsets must be multiples of it.
    pub block_size: u32,
    /// Most data segments per request (`seg_max`).
    pub seg_max: u32,
    /// Largest single segment (`size_max`).
    pub size_max: u32,
    /// Writes allowed.
    pub writable: bool,
    /// Largest discard / write-zeroes range in sectors.
    pub max_discard_sectors: u32,
}

/// One descriptor of a chain: guest address, length, device-writable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desc {
    /// Guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (else device-readable).
    pub write: bool,
}

/// What a parsed request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read `data` (device-writable guest ranges) at byte `offset`.
    Read {
        /// Byte offset on the disk.
        offset: u64,
    },
    /// Write `data` (device-readable guest ranges) at byte `offset`.
    Write {
        /// Byte offset on the disk.
        offset: u64,
    },
    /// Flush.
    Flush,
    /// Return the device id in `data`.
    GetId,
    /// Discard a byte range.
    Discard {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
    },
    /// Zero a byte range; `unmap` allows deallocation.
    WriteZeroes {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
        /// VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP.
        unmap: bool,
    },
}

/// A checked request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlkRequest {
    /// The operation.
    pub op: Op,
    /// Guest ranges the data goes to or comes from.
    pub data: Vec<(u64, u32)>,
    /// Guest address of the status byte.
    pub status_addr: u64,
}

/// Why a chain is not a valid request. `status` is what the guest gets, when the
/// chain had somewhere to put a status byte.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ParseError {
    /// Status for the guest (IOERR or UNSUPP), if a status byte exists.
    pub status_addr: Option<u64>,
    /// The status value.
    pub status: u8,
    /// Human-readable reason, for logs.
    pub reason: String,
}

fn fail(status_addr: Option<u64>, status: u8, reason: impl Into<String>) -> ParseError {
    ParseError {
        status_addr,
        status,
        reason: reason.into(),
    }
}

/// Takes `n` bytes from the front of a list of guest ranges.
fn take(ranges: &mut Vec<(u64, u32)>, n: u32) -> Option<Vec<(u64, u32)>> {
    let mut out = Vec::new();
    let mut left = n;
    while left > 0 {
        let (a, l) = ranges.first_mut()?;
        let t = (*l).min(left);
        out.push((*a, t));
        *a += t as u64;
        *l -= t;
        left -= t;
        if *l == 0 {
            ranges.remove(0);
        }
    }
    Some(out)
}

fn read_bytes(mem: &GuestMemoryMmap, ranges: &[(u64, u32)], out: &mut [u8]) -> bool {
    let mut pos = 0;
    for &(a, l) in ranges {
        if mem
            .read_slice(&mut out[pos..pos + l as usize], GuestAddress(a))
            .is_err()
        {
            return false;
        }
        pos += l as usize;
    }
    true
}

/// Checks that a guest range is backed by memory (and does not wrap).
fn mapped(mem: &GuestMemoryMmap, addr: u64, len: u32) -> bool {
    len == 0
        || (addr.checked_add(len as u64).is_some()
            && mem.get_slice(GuestAddress(addr), len as usize).is_ok())
}

/// Parses and checks one descriptor chain against `limits`.
pub fn parse_request(
    descs: &[Desc],
    mem: &GuestMemoryMmap,
    limits: &Limits,
) -> Result<BlkRequest, ParseError> {
    // Readable descriptors first, then writable ones.
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    for d in descs {
        if d.write {
            writable.push((d.addr, d.len));
        } else if !writable.is_empty() {
            return Err(fail(
                None,
                status::IOERR,
                "device-readable descriptor after a writable one",
            ));
        } else {
            readable.push((d.addr, d.len));
        }
    }
    readable.retain(|r| r.1 > 0);
    writable.retain(|r| r.1 > 0);
    if let Some(&(a, l)) = readable
        .iter()
        .chain(writable.iter())
        .find(|(a, l)| !mapped(mem, *a, *l))
    {
        return Err(fail(
            None,
            status::IOERR,
            format!("descriptor {a:#x}+{l} is outside guest memory"),
        ));
    }
    // The status byte: last writable byte.
    let Some(last) = writable.last_mut() else {
        return Err(fail(None, status::IOERR, "no device-writable status byte"));
    };
    let status_addr = last.0 + last.1 as u64 - 1;
    last.1 -= 1;
    if last.1 == 0 {
        writable.pop();
    }
    let st = Some(status_addr);
    let Some(hdr_ranges) = take(&mut readable, 16) else {
        return Err(fail(
            st,
            status::IOERR,
            "request header shorter than 16 bytes",
        ));
    };
    let mut hdr = [0u8; 16];
    if !read_bytes(mem, &hdr_ranges, &mut hdr) {
        return Err(fail(st, status::IOERR, "request header not readable"));
    }
    let ty = u32::from_le_bytes(hdr[0..4].try_into().expect("4 bytes"));
    let sector = u64::from_le_bytes(hdr[8..16].try_into().expect("8 bytes"));
    let check_data = |ranges: &[(u64, u32)]| -> Result<u64, ParseError> {
        if ranges.len() > limits.seg_max as usize {
            return Err(fail(
                st,
                status::IOERR,
                format!(
                    "{} data segments exceed seg_max {}",
                    ranges.len(),
                    limits.seg_max
                ),
            ));
        }
        if let Some(r) = ranges.iter().find(|r| r.1 > limits.size_max) {
            return Err(fail(
                st,
                status::IOERR,
                format!("segment of {} bytes exceeds size_max", r.1),
            ));
        }
        let total: u64 = ranges.iter().map(|r| r.1 as u64).sum();
        Ok(total)
    };
    let range_ok = |offset: u64, len: u64| -> Result<(), ParseError> {
        let bs = limits.block_size as u64;
        if !offset.is_multiple_of(bs) || !len.is_multiple_of(bs) {
            return Err(fail(
                st,
                status::IOERR,
                format!("request {offset}+{len} not aligned to {bs}"),
            ));
        }
        match offset.checked_add(len) {
            Some(end) if end <= limits.capacity => Ok(()),
            _ => Err(fail(
                st,
                status::IOERR,
                format!("request {offset}+{len} beyond capacity {}", limits.capacity),
            )),
        }
    };
    let offset = sector.checked_mul(SECTOR);
    let op = match ty {
        types::IN | types::OUT => {
            let offset = offset.ok_or_else(|| fail(st, status::IOERR, "sector overflows"))?;
            let data = if ty == types::IN { writable } else { readable };
            let len = check_data(&data)?;
            if ty == types::OUT && !limits.writable {
                return Err(fail(st, status::IOERR, "write to a read-only export"));
            }
            range_ok(offset, len)?;
            let op = if ty == types::IN {
                Op::Read { offset }
            } else {
                Op::Write { offset }
            };
            return Ok(BlkRequest {
                op,
                data,
                status_addr,
            });
        }
        types::FLUSH => Op::Flush,
        types::GET_ID => {
            return Ok(BlkRequest {
                op: Op::GetId,
                data: writable,
                status_addr,
            });
        }
        types::DISCARD | types::WRITE_ZEROES => {
            if !limits.writable {
                return Err(fail(
                    st,
                    status::IOERR,
                    "discard or write-zeroes on a read-only export",
                ));
            }
            // One 16-byte segment {sector, num_sectors, flags}, as max_*_seg says.
            let total: u32 = readable.iter().map(|r| r.1).sum();
            if total != 16 {
                return Err(fail(
                    st,
                    status::UNSUPP,
                    format!("{total} bytes of discard segments (only one supported)"),
                ));
            }
            let mut seg = [0u8; 16];
            if !read_bytes(mem, &readable, &mut seg) {
                return Err(fail(st, status::IOERR, "discard segment not readable"));
            }
            let s = u64::from_le_bytes(seg[0..8].try_into().expect("8 bytes"));
            let n = u32::from_le_bytes(seg[8..12].try_into().expect("4 bytes"));
            let flags = u32::from_le_bytes(seg[12..16].try_into().expect("4 bytes"));
            if n > limits.max_discard_sectors {
                return Err(fail(
                    st,
                    status::IOERR,
                    format!("{n} sectors exceed the discard limit"),
                ));
            }
            let off = s
                .checked_mul(SECTOR)
                .ok_or_else(|| fail(st, status::IOERR, "sector overflows"))?;
            let len = n as u64 * SECTOR;
            range_ok(off, len)?;
            if ty == types::DISCARD {
                if flags != 0 {
                    return Err(fail(st, status::UNSUPP, "discard flags must be zero"));
                }
                Op::Discard { offset: off, len }
            } else {
                if flags & !1 != 0 {
                    return Err(fail(st, status::UNSUPP, "unknown write-zeroes flags"));
                }
                Op::WriteZeroes {
                    offset: off,
                    len,
                    unmap: flags & 1 != 0,
                }
            }
        }
        other => {
            return Err(fail(
                st,
                status::UNSUPP,
                format!("request type {other} unsupported"),
            ))
        }
    };
    Ok(BlkRequest {
        op,
        data: Vec::new(),
        status_addr,
    })
}

/// Values of the virtio-blk config space.
#[derive(Clone, Copy, Debug)]
pub struct BlkConfig {
    /// Disk size in bytes.
    pub capacity: u64,
    /// Logical block size.
    pub block_size: u32,
    /// seg_max.
    pub seg_max: u32,
    /// size_max.
    pub size_max: u32,
    /// Number of queues.
    pub num_queues: u16,
    /// Write cache enabled (writeback).
    pub writeback: bool,
    /// Discard / write-zeroes limit in sectors.
    pub max_discard_sectors: u32,
}

impl BlkConfig {
    /// `struct virtio_blk_config` (60 bytes, little-endian).
    pub fn to_bytes(&self) -> [u8; 60] {
        let mut b = [0u8; 60];
        b[0..8].copy_from_slice(&(self.capacity / SECTOR).to_le_bytes());
        b[8..12].copy_from_slice(&self.size_max.to_le_bytes());
        b[12..16].copy_from_slice(&self.seg_max.to_le_bytes());
        // geometry (16..20) left zero
        b[20..24].copy_from_slice(&self.block_size.to_le_bytes());
        // topology: physical_block_exp, alignment_offset, min_io_size (in blocks), opt_io_size
        b[24] = 0;
        b[25] = 0;
        b[26..28].copy_from_slice(&1u16.to_le_bytes());
        b[28..32].copy_from_slice(&0u32.to_le_bytes());
        b[32] = self.writeback as u8;
        b[34..36].copy_from_slice(&self.num_queues.to_le_bytes());
        b[36..40].copy_from_slice(&self.max_discard_sectors.to_le_bytes());
        b[40..44].copy_from_slice(&1u32.to_le_bytes()); // max_discard_seg
        b[44..48].copy_from_slice(&(self.block_size / SECTOR as u32).to_le_bytes()); // discard_sector_alignment
        b[48..52].copy_from_slice(&self.max_discard_sectors.to_le_bytes());
        b[52..56].copy_from_slice(&1u32.to_le_bytes()); // max_write_zeroes_seg
        b[56] = 1; // write_zeroes_may_unmap
        b
    }
}
