//! The `blklogwrites` filter driver: records every write, write-zeroes, discard and
//! flush of a node in a log in the dm-log-writes format, as QEMU 7.2's driver does.
//!
//! A [`BlkLogWrites`] node sits over a `file` child and passes every request
//! through to it; once a request has completed on `file`, it appends a record to
//! the `log` child (see [`mod@format`] for the layout): an entry sector, then the data
//! for writes. Like QEMU:
//!
//! - requests are aligned to the log sector size (`log-sector-size`, default 512, a
//!   power of two from 32 bytes to below 16 MiB): a partial-sector write becomes a
//!   read-modify-write of the whole sectors, serialised against overlapping writes;
//!   a partial-sector write-zeroes becomes such a write for its partial head and
//!   tail sectors and a write-zeroes for the rest;
//! - a write-zeroes is logged as a write whose data sectors are written to the log
//!   with write-zeroes (flags 0, so replaying it is replaying a write of zeroes);
//! - a discard is logged with the `DISCARD` flag and no data, a flush with `FLUSH`;
//! - a flush is only passed on and logged when something was written since the last
//!   successful flush (QEMU's `write_gen`/`flushed_gen`); otherwise it only flushes
//!   the children;
//! - FUA is not passed down: the write is logged as a plain write (the `FUA` flag is
//!   never set) and followed by a flush of this node, evaluated as QEMU does, before
//!   the write is counted as a change — so a FUA write right after a flush flushes
//!   the children but logs no flush entry;
//! - the super block (sector 0) is written, then the log flushed, after every flush
//!   entry and after every `log-super-update-interval`-th entry (default 4096). It is
//!   not written at open: a new log gets one at its first flush;
//! - with `log-append`, the existing log's super block and entries are read to find
//!   the end (an empty log counts as a new one with 512-byte sectors);
//!   `log-sector-size` may then not be given.
//!
//! Where oxemu differs: a partial-sector discard is shrunk to the whole sectors it
//! covers (QEMU 7.2 hands the partial pieces to the driver, which asserts), a
//! zero-length write is not logged, an appended log whose entries run past its end
//! is refused (QEMU reads zeroes there), and log positions are reserved in one step
//! for write-zeroes records (QEMU 7.2 reserves the data part after a yield, which
//! can interleave records of concurrent requests). Truncation is passed to `file`
//! and not logged, as in QEMU.
//!
//! ```
//! use std::sync::Arc;
//! use oxemu_block::blklogwrites::{read_log, BlkLogWrites, BlkLogWritesOptions};
//! use oxemu_block::{BlockDriver, BlockDriverExt, FileDriver, FileOptions};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let (img, log) = (dir.path().join("disk.raw"), dir.path().join("disk.log"));
//! FileDriver::create(&img, 1 << 20, false).unwrap();
//! FileDriver::create(&log, 0, false).unwrap();
//! let file = Arc::new(FileDriver::open(&FileOptions::new(&img)).unwrap());
//! let logf = Arc::new(FileDriver::open(&FileOptions::new(&log)).unwrap());
//! oxemu_block::EventLoop::with_defaults().unwrap().block_on(async {
//!     let node = BlkLogWrites::open(file, logf, &BlkLogWritesOptions::default())
//!         .await
//!         .unwrap();
//!     node.write_at(4096, &[0xab; 1024]).await.unwrap();
//!     node.flush().await.unwrap();
//!     node.close().await.unwrap();
//! });
//! let parsed = read_log(&log).unwrap();
//! assert_eq!(parsed.entries.len(), 2);
//! assert_eq!(parsed.entries[0].range(512), 4096..5120);
//! assert_eq!(parsed.data(&parsed.entries[0]), &[0xab; 1024][..]);
//! assert!(parsed.entries[1].is_flush());
//! ```

pub mod format;
mod ranges;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::driver::{errno, BlockDriver, BlockResult, NodeInfo, WriteFlags, ZeroFlags};
use crate::iovec::{IoVec, IoVecMut};
pub use format::{parse_log, read_log, EntryHeader, Log, LogEntry, LogError, Super};
use format::{sector_size_valid, ENTRY_SIZE, FLAG_DISCARD, FLAG_FLUSH};
use ranges::Ranges;

/// Default `log-sector-size`.
pub const DEFAULT_SECTOR_SIZE: u64 = 512;
/// Default `log-super-update-interval`.
pub const DEFAULT_SUPER_UPDATE_INTERVAL: u64 = 4096;

/// The driver's own options (the children are given to [`BlkLogWrites::open`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlkLogWritesOptions {
    /// `log-sector-size` in bytes; `None` for the default (512), or the log's own
    /// with `log-append`.
    pub log_sector_size: Option<u64>,
    /// `log-append`: continue an existing log instead of starting a new one.
    pub log_append: bool,
    /// `log-super-update-interval`: entries between super block updates (besides
    /// those after flushes); `None` for 4096.
    pub log_super_update_interval: Option<u64>,
    /// Drop discards without passing them on or logging them, as a QEMU node
    /// opened without `discard=unmap` does (the block layer ignores discards on
    /// it). The default (false) is a node with `discard=unmap`.
    pub ignore_discards: bool,
}

impl BlkLogWritesOptions {
    /// Sets one option from its QEMU name and string value (`log-sector-size` takes
    /// a size with an optional `k`/`M`/`G` suffix, `log-append` `on`/`off`/`true`/
    /// `false`, `log-super-update-interval` a number). Unknown names and bad values
    /// are refused with an error naming the option.
    pub fn set(&mut self, key: &str, value: &str) -> io::Result<()> {
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("Parameter '{key}' expects {what}"),
            )
        };
        match key {
            "log-sector-size" => {
                self.log_sector_size = Some(parse_size(value).ok_or_else(|| bad("a size"))?)
            }
            "log-append" => {
                self.log_append = match value {
                    "on" | "true" | "yes" => true,
                    "off" | "false" | "no" => false,
                    _ => return Err(bad("'on' or 'off'")),
                }
            }
            "log-super-update-interval" => {
                self.log_super_update_interval = Some(value.parse().map_err(|_| bad("a number"))?)
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("Invalid parameter '{key}' for driver 'blklogwrites'"),
                ))
            }
        }
        Ok(())
    }
}

fn parse_size(v: &str) -> Option<u64> {
    let (num, mult) = match v.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_lowercase() {
                'b' => 1,
                'k' => 1 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                't' => 1 << 40,
                _ => return None,
            };
            (&v[..i], m)
        }
        _ => (v, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

fn inval(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

/// Where the next record goes.
struct Pos {
    /// Next free log sector.
    cur_sector: u64,
    /// Entries in the log.
    nr_entries: u64,
}

/// What a logged request does to `file`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Write,
    Zero,
    Discard,
    Flush,
}

/// The `blklogwrites` filter. See the module documentation.
pub struct BlkLogWrites {
    file: Arc<dyn BlockDriver>,
    log: Arc<dyn BlockDriver>,
    sector: u32,
    bits: u32,
    interval: u64,
    ignore_discards: bool,
    pos: Mutex<Pos>,
    /// Serialises super block updates, so that a later count is never overwritten
    /// by an earlier one.
    super_lock: futures::lock::Mutex<()>,
    /// Serialises flushes; holds the write generation of the last successful one.
    flushed_gen: futures::lock::Mutex<u64>,
    /// Bumped after every completed (or failed) write, write-zeroes, discard and
    /// truncation.
    write_gen: AtomicU64,
    ranges: Ranges,
}

/// Largest request passed down in one piece (QEMU's `INT_MAX` bound, aligned).
fn max_chunk(sector: u64) -> u64 {
    (i32::MAX as u64) & !(sector - 1)
}

impl BlkLogWrites {
    /// Opens the filter over `file`, logging to `log`. Option errors name the option
    /// (QEMU's messages); with `log_append`, a log that is not valid is refused with
    /// QEMU's message for it (bad magic, version, sector size or entry flags) or,
    /// where QEMU would read past the end of the log, with one naming the entry and
    /// its offset.
    pub async fn open(
        file: Arc<dyn BlockDriver>,
        log: Arc<dyn BlockDriver>,
        opts: &BlkLogWritesOptions,
    ) -> io::Result<Self> {
        let (sector, pos) = if opts.log_append {
            if opts.log_sector_size.is_some() {
                return Err(inval(
                    "log-append and log-sector-size are mutually exclusive",
                ));
            }
            Self::find_end(&*log).await?
        } else {
            let s = opts.log_sector_size.unwrap_or(DEFAULT_SECTOR_SIZE);
            if !sector_size_valid(s) {
                return Err(inval(format!("Invalid log sector size {s}")));
            }
            (
                s,
                Pos {
                    cur_sector: 1,
                    nr_entries: 0,
                },
            )
        };
        let interval = opts
            .log_super_update_interval
            .unwrap_or(DEFAULT_SUPER_UPDATE_INTERVAL);
        if interval == 0 {
            return Err(inval(format!(
                "Invalid log superblock update interval {interval}"
            )));
        }
        Ok(BlkLogWrites {
            file,
            log,
            sector: sector as u32,
            bits: sector.trailing_zeros(),
            interval,
            ignore_discards: opts.ignore_discards,
            pos: Mutex::new(pos),
            super_lock: futures::lock::Mutex::new(()),
            flushed_gen: futures::lock::Mutex::new(0),
            write_gen: AtomicU64::new(0),
            ranges: Ranges::default(),
        })
    }

    /// Reads an existing log's super block and entry headers (for `log-append`):
    /// returns its sector size and where the next record goes.
    async fn find_end(log: &dyn BlockDriver) -> io::Result<(u64, Pos)> {
        let len = log.size();
        let sup = if len == 0 {
            Super::new(0, DEFAULT_SECTOR_SIZE as u32)
        } else {
            let mut b = [0u8; format::SUPER_SIZE];
            log.readv(0, &mut IoVecMut::from_slice(&mut b))
                .await
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("Could not read log superblock: {e}"))
                })?;
            Super::decode(&b)
        };
        sup.check().map_err(|e| inval(e.msg))?;
        let ss = sup.sectorsize as u64;
        let mut cur = 1u64;
        for index in 0..sup.nr_entries {
            // Every entry needs its sector inside the log, so this loop ends after at
            // most len / ss rounds whatever nr_entries says.
            let off = cur << sup.sectorsize.trailing_zeros();
            if off.checked_add(ss).is_none_or(|e| e > len) {
                return Err(inval(format!(
                    "Failed to read log entry {index}: offset {off} is past the end of \
                     the log ({len} bytes; the super block counts {} entries)",
                    sup.nr_entries
                )));
            }
            let mut b = [0u8; ENTRY_SIZE];
            log.readv(off, &mut IoVecMut::from_slice(&mut b))
                .await
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("Failed to read log entry {index}: {e}"))
                })?;
            let h = EntryHeader::decode(&b);
            let n = h.check(index, off, ss).map_err(|e| inval(e.msg))?;
            cur = cur
                .checked_add(n)
                .filter(|&c| c.checked_mul(ss).is_some_and(|e| e <= len))
                .ok_or_else(|| {
                    inval(format!(
                        "Log entry {index} at offset {off}: its {} data sectors run past \
                         the end of the log ({len} bytes)",
                        h.data_sectors()
                    ))
                })?;
        }
        Ok((
            ss,
            Pos {
                cur_sector: cur,
                nr_entries: sup.nr_entries,
            },
        ))
    }

    /// The log sector size in bytes.
    pub fn sector_size(&self) -> u32 {
        self.sector
    }

    /// Entries logged so far (including those of an appended log).
    pub fn nr_entries(&self) -> u64 {
        self.pos.lock().unwrap().nr_entries
    }

    /// The `file` child.
    pub fn file(&self) -> &Arc<dyn BlockDriver> {
        &self.file
    }

    /// The `log` child.
    pub fn log(&self) -> &Arc<dyn BlockDriver> {
        &self.log
    }

    fn ss(&self) -> u64 {
        self.sector as u64
    }

    fn bump(&self) {
        self.write_gen.fetch_add(1, Ordering::AcqRel);
    }

    /// Performs `op` on `file`, then appends its record (even if `file` failed, as
    /// QEMU does). The log's error wins over the file's.
    async fn logged(
        &self,
        op: Op,
        offset: u64,
        len: u64,
        data: Option<&IoVec<'_>>,
    ) -> BlockResult<()> {
        let file_ret = match op {
            Op::Write => {
                self.file
                    .writev(offset, data.expect("write data"), WriteFlags::default())
                    .await
            }
            Op::Zero => {
                self.file
                    .write_zeroes(offset, len, ZeroFlags::default())
                    .await
            }
            Op::Discard => self.file.discard(offset, len).await,
            Op::Flush => self.file.flush().await,
        };
        let flags = match op {
            Op::Write | Op::Zero => 0,
            Op::Discard => FLAG_DISCARD,
            Op::Flush => FLAG_FLUSH,
        };
        let header = EntryHeader {
            sector: offset >> self.bits,
            nr_sectors: len >> self.bits,
            flags,
            data_len: 0,
        };
        self.append(header, data, if op == Op::Zero { len } else { 0 })
            .await?;
        file_ret
    }

    /// Appends one record: the entry sector followed by `data`, or by `zero_len`
    /// bytes written as zeroes; then the super block when due.
    async fn append(
        &self,
        header: EntryHeader,
        data: Option<&IoVec<'_>>,
        zero_len: u64,
    ) -> BlockResult<()> {
        let ss = self.ss();
        let data_len = data.map_or(0, |d| d.len() as u64);
        let (off, nr) = {
            let mut p = self.pos.lock().unwrap();
            let off = p.cur_sector << self.bits;
            p.nr_entries += 1;
            p.cur_sector += 1 + data_len.div_ceil(ss) + zero_len.div_ceil(ss);
            (off, p.nr_entries)
        };
        let head = header.encode(ss as usize);
        let mut iov = IoVec::from_slice(&head);
        if let Some(d) = data {
            for s in d.as_raw() {
                // SAFETY: `d` borrows its memory for the whole call, which outlives
                // this list and the request that uses it.
                unsafe { iov.push_raw(s.iov_base.cast(), s.iov_len) };
            }
        }
        self.log.writev(off, &iov, WriteFlags::default()).await?;
        if zero_len > 0 {
            self.log
                .write_zeroes(off + ss, zero_len, ZeroFlags::default())
                .await?;
        }
        if header.flags & FLAG_FLUSH != 0 || nr % self.interval == 0 {
            self.write_super().await?;
        }
        Ok(())
    }

    /// Writes the super block with the current entry count, then flushes the log.
    async fn write_super(&self) -> BlockResult<()> {
        let _g = self.super_lock.lock().await;
        let nr = self.nr_entries();
        let b = Super::new(nr, self.sector).encode(self.sector as usize);
        self.log
            .writev(0, &IoVec::from_slice(&b), WriteFlags::default())
            .await?;
        self.log.flush().await
    }

    /// QEMU's `bdrv_co_flush` of this node, for changes up to generation `gen`.
    async fn flush_gen(&self, gen: u64) -> BlockResult<()> {
        let mut flushed = self.flushed_gen.lock().await;
        let r = if *flushed == gen {
            let a = self.file.flush().await;
            let b = self.log.flush().await;
            a.and(b)
        } else {
            self.logged(Op::Flush, 0, 0, None).await
        };
        if r.is_ok() {
            *flushed = gen;
        }
        r
    }

    /// Writes `iov` at sector-aligned `offset` in chunks; the range is already held.
    async fn write_aligned(&self, offset: u64, iov: &IoVec<'_>) -> BlockResult<()> {
        let max = max_chunk(self.ss());
        let mut done = 0u64;
        while done < iov.len() as u64 {
            let n = max.min(iov.len() as u64 - done);
            let part = iov.slice(done as usize, n as usize);
            self.logged(Op::Write, offset + done, n, Some(&part))
                .await?;
            done += n;
        }
        Ok(())
    }

    /// Write-zeroes of whole sectors, in chunks; the range is already held.
    async fn zero_aligned(&self, offset: u64, len: u64) -> BlockResult<()> {
        let max = max_chunk(self.ss());
        let mut done = 0u64;
        while done < len {
            let n = max.min(len - done);
            self.logged(Op::Zero, offset + done, n, None).await?;
            done += n;
        }
        Ok(())
    }

    /// The FUA part of a request: a flush of this node as of before the request
    /// counted as a change.
    async fn finish(&self, r: BlockResult<()>, fua: bool) -> BlockResult<()> {
        let r = match r {
            Ok(()) if fua => self.flush_gen(self.write_gen.load(Ordering::Acquire)).await,
            r => r,
        };
        self.bump();
        r
    }

    /// Reads the whole sector at `at` from `file` (zeroes past its end, as a `file`
    /// child gives them).
    async fn read_sector(&self, at: u64) -> BlockResult<Vec<u8>> {
        let mut b = vec![0u8; self.sector as usize];
        self.file
            .readv(at, &mut IoVecMut::from_slice(&mut b))
            .await?;
        Ok(b)
    }

    fn align_down(&self, v: u64) -> u64 {
        v & !(self.ss() - 1)
    }

    fn align_up(&self, v: u64) -> BlockResult<u64> {
        v.checked_add(self.ss() - 1)
            .map(|x| self.align_down(x))
            .ok_or_else(|| errno(libc::EINVAL))
    }
}

#[async_trait(?Send)]
impl BlockDriver for BlkLogWrites {
    fn info(&self) -> NodeInfo {
        NodeInfo {
            driver: "blklogwrites".into(),
            ..self.file.info()
        }
    }

    fn size(&self) -> u64 {
        self.file.size()
    }

    fn request_alignment(&self) -> u32 {
        self.sector.max(self.file.request_alignment())
    }

    fn memory_alignment(&self) -> usize {
        self.file
            .memory_alignment()
            .max(self.log.memory_alignment())
    }

    fn debug_event(&self, ev: crate::blkdebug::DebugEvent) {
        self.file.debug_event(ev)
    }

    async fn readv(&self, offset: u64, iov: &mut IoVecMut<'_>) -> BlockResult<()> {
        self.file.readv(offset, iov).await
    }

    async fn writev(&self, offset: u64, iov: &IoVec<'_>, flags: WriteFlags) -> BlockResult<()> {
        let len = iov.len() as u64;
        if len == 0 {
            return Ok(());
        }
        let end = offset.checked_add(len).ok_or_else(|| errno(libc::EINVAL))?;
        let (a, b) = (self.align_down(offset), self.align_up(end)?);
        if a == offset && b == end {
            let r = {
                let _g = self.ranges.acquire(a, b, false).await;
                self.write_aligned(offset, iov).await
            };
            return self.finish(r, flags.fua).await;
        }
        // Read-modify-write of the partial sectors at either end.
        let r = async {
            let _g = self.ranges.acquire(a, b, true).await;
            let ss = self.ss();
            let head = if a < offset {
                self.read_sector(a).await?
            } else {
                Vec::new()
            };
            // One partial sector holding both ends comes from `head`.
            let tail = if end < b && (b - a > ss || a == offset) {
                self.read_sector(b - ss).await?
            } else {
                Vec::new()
            };
            let tail_src: &[u8] = if tail.is_empty() { &head } else { &tail };
            let mut padded = IoVec::from_slice(&head[..(offset - a) as usize]);
            for s in iov.as_raw() {
                // SAFETY: `iov` borrows its memory for the whole call.
                unsafe { padded.push_raw(s.iov_base.cast(), s.iov_len) };
            }
            if end < b {
                padded.push(&tail_src[(end - (b - ss)) as usize..]);
            }
            self.write_aligned(a, &padded).await
        }
        .await;
        self.finish(r, flags.fua).await
    }

    async fn flush(&self) -> BlockResult<()> {
        self.flush_gen(self.write_gen.load(Ordering::Acquire)).await
    }

    async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        if self.ignore_discards {
            return Ok(());
        }
        let end = offset.checked_add(len).ok_or_else(|| errno(libc::EINVAL))?;
        let (a, b) = (self.align_up(offset)?, self.align_down(end));
        if a >= b {
            return Ok(());
        }
        let r = {
            let _g = self.ranges.acquire(a, b, false).await;
            let max = max_chunk(self.ss());
            let mut r = Ok(());
            let mut at = a;
            while at < b && r.is_ok() {
                let n = max.min(b - at);
                r = self.logged(Op::Discard, at, n, None).await;
                at += n;
            }
            r
        };
        self.bump();
        r
    }

    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        if flags.no_fallback {
            return Err(errno(libc::ENOTSUP));
        }
        if len == 0 {
            return Ok(());
        }
        let end = offset.checked_add(len).ok_or_else(|| errno(libc::EINVAL))?;
        let (a, b) = (self.align_down(offset), self.align_up(end)?);
        let ss = self.ss();
        let serialising = a != offset || b != end;
        let _g = self.ranges.acquire(a, b, serialising).await;
        // Parts, in QEMU's order: a partial head sector (written), whole sectors
        // (write-zeroes), a partial tail sector (written); each is its own request.
        let mut at = offset;
        if a < offset {
            let mut s = match self.read_sector(a).await {
                Ok(s) => s,
                Err(e) => return Err(e),
            };
            let stop = end.min(a + ss);
            s[(offset - a) as usize..(stop - a) as usize].fill(0);
            let r = self.write_aligned(a, &IoVec::from_slice(&s)).await;
            self.finish(r, flags.fua).await?;
            at = stop;
        }
        let mid_end = self.align_down(end).max(at);
        if at < mid_end {
            let r = self.zero_aligned(at, mid_end - at).await;
            self.finish(r, flags.fua).await?;
            at = mid_end;
        }
        if at < end {
            let mut s = self.read_sector(at).await?;
            s[..(end - at) as usize].fill(0);
            let r = self.write_aligned(at, &IoVec::from_slice(&s)).await;
            self.finish(r, flags.fua).await?;
        }
        Ok(())
    }

    async fn truncate(&self, size: u64) -> BlockResult<()> {
        let r = self.file.truncate(size).await;
        self.bump();
        r
    }

    fn allocated_size(&self) -> Option<u64> {
        self.file.allocated_size()
    }

    async fn close(&self) -> BlockResult<()> {
        let r = self.flush().await;
        let a = self.file.close().await;
        let b = self.log.close().await;
        r.and(a).and(b)
    }
}

#[cfg(test)]
mod tests;
