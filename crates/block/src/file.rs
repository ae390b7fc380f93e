//! The `file` protocol driver (QEMU's `file` and `host_device`): regular files and
//! block devices, buffered or O_DIRECT, over any AIO engine.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use async_trait::async_trait;

use crate::buffer::AlignedBuf;
use crate::driver::{
    errno, BlockDriver, BlockResult, BlockStatus, NodeInfo, WriteFlags, ZeroFlags,
};
use crate::engine::{self, Aio, Req, Target};
use crate::iovec::{IoVec, IoVecMut};
use crate::lock;

/// What to do with discard requests (QEMU's `discard=ignore|unmap`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Discard {
    /// Discards succeed without doing anything (QEMU's default for `--blockdev`).
    Ignore,
    /// Discards punch holes into the file.
    #[default]
    Unmap,
}

/// Image locking (QEMU's `locking=auto|on|off`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Locking {
    /// Lock if the kernel supports OFD locks.
    #[default]
    Auto,
    /// Always lock; fail if locks are unsupported.
    On,
    /// Never lock.
    Off,
}

/// Options of a `file` node.
#[derive(Clone, Debug, Default)]
pub struct FileOptions {
    /// Path of the file or block device.
    pub filename: PathBuf,
    /// Open read-only.
    pub read_only: bool,
    /// `cache.direct=on`: bypass the page cache with O_DIRECT.
    pub direct: bool,
    /// `cache.no-flush=on`: ignore flush requests.
    pub no_flush: bool,
    /// The AIO engine.
    pub aio: Aio,
    /// Discard handling.
    pub discard: Discard,
    /// Image locking.
    pub locking: Locking,
    /// Share the write permission with other processes when locking (`-U`,
    /// `force-share=on`): read-only opens then do not block writers.
    pub force_share: bool,
    /// The permissions (`lock::perm` bits) this open lets other processes hold, when
    /// the user of the node knows them better than the default (`None`: readers share
    /// everything, writers everything but writing). qemu-img, for example, never
    /// shares writing or resizing of the file under a qcow2 image, and shares
    /// everything of a raw image but a `convert` source. `force_share` wins.
    pub shared_perms: Option<u64>,
    /// `x-inline=off` (an oxemu option): never run requests inline on the event loop.
    /// By default the io_uring engine runs reads and writes of up to 256 KiB on files
    /// in tmpfs or ramfs inline (the kernel would hand them to a worker thread); with
    /// this set, every request goes through the ring.
    pub no_inline: bool,
    /// `aio-max-batch`: with `aio=native`, submit queued requests once this many are
    /// waiting (0: the loop's `aio-max-batch`, itself 32 when unset), as QEMU's
    /// linux-aio does. The other engines do not batch this way, in QEMU as here.
    pub aio_max_batch: u64,
    /// Take no lock bytes at open: the node's users set them later with
    /// [`FileDriver::set_perms`], as QEMU derives them from the nodes and exports
    /// above a file (a file no one uses locks nothing).
    pub perms_from_users: bool,
}

impl FileOptions {
    /// Options for `path` with QEMU's defaults (buffered, threads, read-write).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileOptions {
            filename: path.into(),
            ..Default::default()
        }
    }
}

static NEXT_FILE_ID: AtomicU64 = AtomicU64::new(1);

/// An open `file` node.
pub struct FileDriver {
    file: File,
    /// A second open file description that carries the OFD image locks. The I/O
    /// descriptor may be registered with io_uring rings, which release it
    /// asynchronously; locks on a separate description go away at once on close.
    _lock_file: Option<File>,
    /// The `(held, shared)` permissions the lock bytes stand for.
    perms: std::sync::Mutex<(u64, u64)>,
    id: u64,
    opts: FileOptions,
    block_device: bool,
    size: AtomicU64,
    request_align: u32,
    mem_align: usize,
    /// On tmpfs or ramfs (see `engine::Target::inline`).
    in_memory: bool,
    /// The errno of a failed `fdatasync`, latched: see [`FileDriver::flush_latched`].
    flush_error: AtomicI32,
}

impl std::fmt::Debug for FileDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileDriver")
            .field("filename", &self.opts.filename)
            .field("aio", &self.opts.aio)
            .field("direct", &self.opts.direct)
            .finish()
    }
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("Could not open '{}': {}", path.display(), e),
    )
}

impl FileDriver {
    /// The errno of an earlier failed flush, if one failed.
    ///
    /// When `fdatasync` fails, Linux may already have marked the dirty pages clean
    /// and dropped the data: a later `fdatasync` can succeed without that data ever
    /// reaching the disk. So, as QEMU's file-posix does, a failed flush of a file
    /// opened through the page cache is remembered, and every later flush fails with
    /// the same errno until the file is opened again. With `cache.direct=on` the page
    /// cache is not involved and nothing is latched.
    pub fn flush_latched(&self) -> Option<i32> {
        match self.flush_error.load(Ordering::Acquire) {
            0 => None,
            e => Some(e),
        }
    }

    fn latch_flush_error(&self, e: i32) {
        if !self.opts.direct {
            let _ = self
                .flush_error
                .compare_exchange(0, e, Ordering::AcqRel, Ordering::Acquire);
            tracing::warn!(
                "{}: flush failed ({}); every later flush fails too",
                self.opts.filename.display(),
                io::Error::from_raw_os_error(e)
            );
        }
    }

    /// Opens a file or block device.
    pub fn open(opts: &FileOptions) -> io::Result<FileDriver> {
        let path = &opts.filename;
        if opts.aio == Aio::Native && !opts.direct {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "aio=native was specified, but it requires cache.direct=on, which was not specified.",
            ));
        }
        let mut oo = OpenOptions::new();
        oo.read(true).write(!opts.read_only);
        let mut flags = libc::O_CLOEXEC;
        if opts.direct {
            flags |= libc::O_DIRECT;
        }
        oo.custom_flags(flags);
        let file = oo.open(path).map_err(|e| with_path(path, e))?;
        let meta = file.metadata().map_err(|e| with_path(path, e))?;
        let block_device = meta.file_type().is_block_device();
        if !block_device && !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("'{}' is not a regular file or block device", path.display()),
            ));
        }
        let fd = file.as_raw_fd();
        let size = if block_device {
            blkdev_size(fd)?
        } else {
            meta.len()
        };
        let (request_align, mem_align) = if opts.direct {
            probe_alignment(fd, block_device)
        } else {
            (1, 1)
        };
        let use_lock = match opts.locking {
            Locking::Off => false,
            Locking::On => true,
            Locking::Auto => lock::ofd_supported(fd),
        };
        let lock_file = if use_lock {
            let lf = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)
                .map_err(|e| with_path(path, e))?;
            // By default readers take only the "consistent read" byte and share
            // everything; writers also refuse to share writing, so that QEMU and oxemu
            // never write one image at the same time, whichever opened it first.
            // `shared_perms` overrides what is shared (qemu-img refuses writers under
            // a qcow2 reader); `force_share` (`-U`) shares everything.
            let (held, mut shared) = if opts.read_only {
                (lock::perm::CONSISTENT_READ, lock::perm::ALL)
            } else {
                (
                    lock::perm::CONSISTENT_READ | lock::perm::WRITE,
                    lock::perm::ALL & !lock::perm::WRITE,
                )
            };
            if let Some(p) = opts.shared_perms {
                shared = p & lock::perm::ALL;
            }
            if opts.force_share {
                shared = lock::perm::ALL;
            }
            let (held, shared) = if opts.perms_from_users {
                (0, lock::perm::ALL)
            } else {
                (held, shared)
            };
            lock::lock_image(lf.as_raw_fd(), &path.display().to_string(), held, shared)?;
            Some((lf, (held, shared)))
        } else {
            None
        };
        let (lock_file, perms) = match lock_file {
            Some((f, p)) => (Some(f), p),
            None => (None, (0, lock::perm::ALL)),
        };
        Ok(FileDriver {
            file,
            _lock_file: lock_file,
            perms: std::sync::Mutex::new(perms),
            id: NEXT_FILE_ID.fetch_add(1, Ordering::Relaxed),
            opts: opts.clone(),
            block_device,
            size: AtomicU64::new(size),
            request_align,
            mem_align,
            in_memory: !block_device && in_memory_fs(fd),
            flush_error: AtomicI32::new(0),
        })
    }

    /// Sets the lock bytes to holding `held` and sharing `shared` permissions
    /// ([`lock::perm`] bits), as the node's users need them now (see
    /// [`FileOptions::perms_from_users`]). With `force-share`, everything is shared.
    /// Fails with QEMU's message when another process holds a conflicting lock, and
    /// then changes nothing. Without locking (`locking=off`, no OFD locks) it only
    /// records the permissions.
    pub fn set_perms(&self, held: u64, shared: u64) -> io::Result<()> {
        let shared = if self.opts.force_share {
            lock::perm::ALL
        } else {
            shared
        };
        let mut cur = self.perms.lock().unwrap_or_else(|p| p.into_inner());
        if *cur == (held, shared) {
            return Ok(());
        }
        if let Some(lf) = &self._lock_file {
            let path = self.opts.filename.display().to_string();
            lock::relock_image(lf.as_raw_fd(), &path, *cur, (held, shared))?;
        }
        *cur = (held, shared);
        Ok(())
    }

    /// The `(held, shared)` permissions the image locks currently stand for.
    pub fn perms(&self) -> (u64, u64) {
        *self.perms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates (or truncates) a regular file of `size` bytes, as `qemu-img create -f raw`.
    /// With `preallocate`, blocks are allocated with `posix_fallocate`.
    /// Like QEMU, it takes the image locks before emptying the file, so it refuses to
    /// touch an image that another process has open.
    pub fn create(path: &Path, size: u64, preallocate: bool) -> io::Result<()> {
        let f = Self::open_for_create(path)?;
        f.set_len(0).and_then(|()| f.set_len(size)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("Could not resize '{}': {}", path.display(), e),
            )
        })?;
        if preallocate && size > 0 {
            // SAFETY: plain syscall on an owned descriptor.
            let r = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, size as libc::off_t) };
            if r != 0 {
                return Err(io::Error::from_raw_os_error(r));
            }
        }
        Ok(())
    }

    /// Opens (creating it if needed, but not yet emptying it) the file that an image is
    /// about to be created in, and takes QEMU's creation locks on it
    /// ([`lock::lock_for_create`]). The caller empties and fills it; the locks are held
    /// until the returned file is closed.
    pub fn open_for_create(path: &Path) -> io::Result<File> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("Could not create '{}': {}", path.display(), e),
                )
            })?;
        lock::lock_for_create(f.as_raw_fd(), &path.display().to_string())?;
        Ok(f)
    }

    /// The options the node was opened with.
    pub fn options(&self) -> &FileOptions {
        &self.opts
    }

    /// The underlying descriptor.
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn target(&self) -> Target {
        Target {
            fd: self.file.as_raw_fd(),
            id: self.id,
            inline: self.in_memory && !self.opts.no_inline,
            max_batch: self.opts.aio_max_batch,
        }
    }

    async fn exec(&self, req: Req<'_>) -> i64 {
        engine::execute(self.opts.aio, self.target(), req).await
    }

    fn check_writable(&self) -> BlockResult<()> {
        if self.opts.read_only {
            return Err(errno(libc::EPERM));
        }
        Ok(())
    }

    fn is_aligned(&self, offset: u64, len: usize) -> bool {
        let a = self.request_align as u64;
        offset.is_multiple_of(a) && (len as u64).is_multiple_of(a)
    }

    /// Reads with retries for short transfers, EINTR and EAGAIN; zero-fills past EOF.
    async fn read_loop(&self, offset: u64, iov: &mut IoVecMut<'_>) -> BlockResult<()> {
        let total = iov.len();
        let mut done = 0usize;
        while done < total {
            // The first attempt (almost always the only one) needs no sub-list.
            let part;
            let raw = if done == 0 {
                iov.as_raw()
            } else {
                part = iov.slice_mut(done, total - done);
                part.as_raw()
            };
            let r = self
                .exec(Req::Read {
                    off: offset + done as u64,
                    iov: raw,
                })
                .await;
            match r {
                r if r == -(libc::EINTR as i64) || r == -(libc::EAGAIN as i64) => continue,
                r if r < 0 => return Err(errno(-r as i32)),
                0 => break,
                r => done += r as usize,
            }
            if self.opts.direct && !self.is_aligned(offset + done as u64, 0) {
                break; // a partial block at EOF: the rest cannot be read with O_DIRECT
            }
        }
        if done < total {
            iov.zero_range(done, total - done);
        }
        Ok(())
    }

    /// Writes with retries; a write that makes no progress fails with ENOSPC.
    async fn write_loop(&self, offset: u64, iov: &IoVec<'_>) -> BlockResult<()> {
        let total = iov.len();
        let mut done = 0usize;
        while done < total {
            let part;
            let raw = if done == 0 {
                iov.as_raw()
            } else {
                part = iov.slice(done, total - done);
                part.as_raw()
            };
            let r = self
                .exec(Req::Write {
                    off: offset + done as u64,
                    iov: raw,
                })
                .await;
            match r {
                r if r == -(libc::EINTR as i64) || r == -(libc::EAGAIN as i64) => continue,
                r if r < 0 => return Err(errno(-r as i32)),
                0 => return Err(errno(libc::ENOSPC)),
                r => done += r as usize,
            }
        }
        self.size
            .fetch_max(offset + total as u64, Ordering::Relaxed);
        Ok(())
    }

    /// O_DIRECT read of an unaligned request through an aligned bounce buffer.
    async fn read_bounced(&self, offset: u64, iov: &mut IoVecMut<'_>) -> BlockResult<()> {
        let a = self.request_align as u64;
        let start = offset / a * a;
        let end = (offset + iov.len() as u64).div_ceil(a) * a;
        let mut buf = AlignedBuf::with_alignment((end - start) as usize, self.mem_align.max(512));
        self.read_loop(start, &mut IoVecMut::from_slice(&mut buf))
            .await?;
        let skip = (offset - start) as usize;
        iov.copy_from_slice(&buf[skip..skip + iov.len()]);
        Ok(())
    }

    /// O_DIRECT write of an unaligned request: read-modify-write of the edge blocks.
    async fn write_bounced(&self, offset: u64, iov: &IoVec<'_>) -> BlockResult<()> {
        let a = self.request_align as u64;
        let start = offset / a * a;
        let end = (offset + iov.len() as u64).div_ceil(a) * a;
        let mut buf = AlignedBuf::with_alignment((end - start) as usize, self.mem_align.max(512));
        let skip = (offset - start) as usize;
        if skip != 0 || end != offset + iov.len() as u64 {
            self.read_loop(start, &mut IoVecMut::from_slice(&mut buf))
                .await?;
        }
        iov.copy_to_slice(&mut buf[skip..skip + iov.len()]);
        let real_end = offset + iov.len() as u64;
        self.write_loop(start, &IoVec::from_slice(&buf)).await?;
        // Do not let the padding grow the visible size beyond what was written.
        if !self.block_device {
            let _ = self.size.fetch_max(real_end, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn fallocate(&self, mode: i32, off: u64, len: u64) -> i64 {
        loop {
            let r = self.exec(Req::Fallocate { mode, off, len }).await;
            if r != -(libc::EINTR as i64) {
                return r;
            }
        }
    }

    fn refresh_size(&self) -> u64 {
        let fd = self.file.as_raw_fd();
        let s = if self.block_device {
            blkdev_size(fd).ok()
        } else {
            self.file.metadata().ok().map(|m| m.len())
        };
        if let Some(s) = s {
            self.size.store(s, Ordering::Relaxed);
        }
        self.size.load(Ordering::Relaxed)
    }
}

#[async_trait(?Send)]
impl BlockDriver for FileDriver {
    fn info(&self) -> NodeInfo {
        NodeInfo {
            driver: if self.block_device {
                "host_device"
            } else {
                "file"
            }
            .into(),
            filename: self.opts.filename.display().to_string(),
            read_only: self.opts.read_only,
            direct: self.opts.direct,
            no_flush: self.opts.no_flush,
        }
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    fn request_alignment(&self) -> u32 {
        self.request_align
    }

    fn memory_alignment(&self) -> usize {
        self.mem_align
    }

    async fn readv(&self, offset: u64, iov: &mut IoVecMut<'_>) -> BlockResult<()> {
        if iov.is_empty() {
            return Ok(());
        }
        if self.opts.direct
            && !(self.is_aligned(offset, iov.len()) && iov.is_aligned(self.mem_align))
        {
            return self.read_bounced(offset, iov).await;
        }
        self.read_loop(offset, iov).await
    }

    async fn writev(&self, offset: u64, iov: &IoVec<'_>, flags: WriteFlags) -> BlockResult<()> {
        self.check_writable()?;
        if !iov.is_empty() {
            if self.opts.direct
                && !(self.is_aligned(offset, iov.len()) && iov.is_aligned(self.mem_align))
            {
                self.write_bounced(offset, iov).await?;
            } else {
                self.write_loop(offset, iov).await?;
            }
        }
        if flags.fua {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&self) -> BlockResult<()> {
        if self.opts.no_flush || self.opts.read_only {
            return Ok(());
        }
        if let Some(e) = self.flush_latched() {
            return Err(errno(e));
        }
        let mut r = self.exec(Req::Fdatasync).await;
        if r == -(libc::EINVAL as i64) && self.opts.aio == Aio::Native {
            // Many file systems lack IOCB_CMD_FDSYNC: do it on the pool, as QEMU does.
            r = engine::execute(Aio::Threads, self.target(), Req::Fdatasync).await;
        }
        if r < 0 {
            let e = -r as i32;
            self.latch_flush_error(e);
            return Err(errno(e));
        }
        Ok(())
    }

    async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        self.check_writable()?;
        if self.opts.discard == Discard::Ignore || len == 0 {
            return Ok(());
        }
        let r = self
            .fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
            .await;
        match r {
            r if r >= 0 => Ok(()),
            // Discard is advisory: an unsupported file system is not an error.
            r if r == -(libc::EOPNOTSUPP as i64) || r == -(libc::ENOTSUP as i64) => Ok(()),
            r => Err(errno(-r as i32)),
        }
    }

    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        self.check_writable()?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let size = self.size();
        // Punching a hole only zeroes inside the file; beyond EOF use ZERO_RANGE.
        let mut r = -(libc::EOPNOTSUPP as i64);
        if flags.may_unmap && self.opts.discard == Discard::Unmap && end <= size {
            r = self
                .fallocate(
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    offset,
                    len,
                )
                .await;
        }
        if r < 0 {
            r = self
                .fallocate(libc::FALLOC_FL_ZERO_RANGE, offset, len)
                .await;
        }
        if r >= 0 {
            if !self.block_device {
                self.size.fetch_max(end, Ordering::Relaxed);
            }
        } else if (r == -(libc::EOPNOTSUPP as i64)
            || r == -(libc::ENOTSUP as i64)
            || r == -(libc::EINVAL as i64))
            && !flags.no_fallback
        {
            write_zero_buffers(self, offset, len).await?;
        } else if r < 0 {
            let e = if r == -(libc::EOPNOTSUPP as i64) {
                libc::ENOTSUP
            } else {
                -r as i32
            };
            return Err(errno(e));
        }
        if flags.fua {
            self.flush().await?;
        }
        Ok(())
    }

    async fn block_status(&self, offset: u64, len: u64) -> BlockResult<BlockStatus> {
        let size = self.size();
        if offset >= size {
            return Ok(BlockStatus {
                len: len.max(1),
                data: false,
                zero: true,
                depth: 1,
                offset: Some(offset),
            });
        }
        let len = len.min(size - offset).max(1);
        let fd = self.file.as_raw_fd();
        let (data, until) = if self.block_device {
            (true, offset + len)
        } else {
            seek_extent(fd, offset, size)
        };
        Ok(BlockStatus {
            len: until.min(offset + len) - offset,
            data,
            zero: !data,
            depth: 1,
            offset: Some(offset),
        })
    }

    async fn truncate(&self, size: u64) -> BlockResult<()> {
        self.check_writable()?;
        if self.block_device {
            return if size <= self.refresh_size() {
                Ok(())
            } else {
                Err(errno(libc::ENOTSUP))
            };
        }
        self.file.set_len(size)?;
        self.size.store(size, Ordering::Relaxed);
        Ok(())
    }

    fn allocated_size(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().ok().map(|m| m.blocks() * 512)
    }

    fn latches_flush_errors(&self) -> bool {
        // Buffered: latched in `flush`. O_DIRECT: no page cache to lose, as QEMU.
        true
    }
}

impl Drop for FileDriver {
    fn drop(&mut self) {
        oxemu_aio::file_closed(self.id);
    }
}

/// Writes zero buffers over `offset..offset+len` in chunks (write-zeroes fallback).
async fn write_zero_buffers(f: &FileDriver, offset: u64, len: u64) -> BlockResult<()> {
    const CHUNK: u64 = 1 << 20;
    let buf = AlignedBuf::new(CHUNK.min(len) as usize);
    let mut pos = offset;
    while pos < offset + len {
        let n = CHUNK.min(offset + len - pos) as usize;
        f.writev(pos, &IoVec::from_slice(&buf[..n]), WriteFlags::default())
            .await?;
        pos += n as u64;
    }
    Ok(())
}

/// Data/hole status at `offset` through SEEK_DATA/SEEK_HOLE: (is data, extent end).
fn seek_extent(fd: RawFd, offset: u64, size: u64) -> (bool, u64) {
    // SAFETY: lseek on an owned descriptor.
    let data = unsafe { libc::lseek(fd, offset as libc::off_t, libc::SEEK_DATA) };
    if data < 0 {
        let e = io::Error::last_os_error().raw_os_error();
        return if e == Some(libc::ENXIO) {
            (false, size)
        } else {
            (true, size)
        };
    }
    if data as u64 > offset {
        return (false, data as u64);
    }
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(fd, offset as libc::off_t, libc::SEEK_HOLE) };
    if hole < 0 {
        return (true, size);
    }
    (true, (hole as u64).max(offset + 1))
}

/// True when `fd` is on tmpfs or ramfs.
fn in_memory_fs(fd: RawFd) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    // SAFETY: fstatfs writes into the zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(fd, &mut st) } != 0 {
        return false;
    }
    matches!(st.f_type as i64, TMPFS_MAGIC | RAMFS_MAGIC)
}

fn blkdev_size(fd: RawFd) -> io::Result<u64> {
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64.
    if unsafe { libc::ioctl(fd, BLKGETSIZE64, &mut size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// Finds the O_DIRECT request and memory alignment: the logical block size for block
/// devices, else the smallest of 512..4096 that a test read accepts.
fn probe_alignment(fd: RawFd, block_device: bool) -> (u32, usize) {
    const BLKSSZGET: libc::c_ulong = 0x1268;
    if block_device {
        let mut sz: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int.
        if unsafe { libc::ioctl(fd, BLKSSZGET, &mut sz) } == 0 && sz > 0 {
            return (sz as u32, sz as usize);
        }
    }
    let buf = AlignedBuf::new(4096);
    for align in [512usize, 1024, 2048, 4096] {
        // SAFETY: reads at most `align` bytes into a 4096-byte buffer.
        let r = unsafe { libc::pread(fd, buf.as_ptr() as *mut libc::c_void, align, 0) };
        if r >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return (align as u32, align);
        }
    }
    (4096, 4096)
}
