//! AIO engines: how a file's requests reach the kernel, selected per node with
//! `aio=threads|native|io_uring` as in QEMU.
//!
//! An engine executes one system-call-sized request and resolves to the raw result
//! (bytes transferred, or a negative errno). Retrying short transfers, EINTR and
//! EAGAIN, and zero-filling past end-of-file happen one level up, in the `file` driver,
//! so that every engine behaves the same.

pub(crate) mod native;
pub(crate) mod threads;
pub(crate) mod uring;

use std::fmt;
use std::os::fd::RawFd;
use std::str::FromStr;

/// The AIO engine of a `file` node (QEMU's `aio` option).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Aio {
    /// A bounded pool of worker threads doing preadv/pwritev/fdatasync (QEMU's default).
    #[default]
    Threads,
    /// Linux AIO (`io_submit`), completions signalled through an eventfd. Needs O_DIRECT.
    Native,
    /// io_uring on the loop's own ring.
    IoUring,
}

impl Aio {
    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Aio::Threads => "threads",
            Aio::Native => "native",
            Aio::IoUring => "io_uring",
        }
    }
}

impl fmt::Display for Aio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for an unknown `aio=` value.
#[derive(Debug, thiserror::Error)]
#[error("Invalid parameter 'aio': '{0}' (expected threads, native or io_uring)")]
pub struct UnknownAio(pub String);

impl FromStr for Aio {
    type Err = UnknownAio;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "threads" => Ok(Aio::Threads),
            "native" => Ok(Aio::Native),
            "io_uring" => Ok(Aio::IoUring),
            _ => Err(UnknownAio(s.to_string())),
        }
    }
}

/// The file a request goes to: descriptor plus a process-unique id (used to key
/// io_uring fixed-file registrations, since descriptor numbers are reused).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Target {
    pub fd: RawFd,
    pub id: u64,
    /// The file lives in memory (tmpfs, ramfs) and the node allows inline I/O
    /// (`x-inline`, on by default): the io_uring engine runs its small reads and
    /// writes inline (see [`execute`]).
    pub inline: bool,
    /// The node's `aio-max-batch` (0: the loop's).
    pub max_batch: u64,
}

/// The largest read or write the io_uring engine runs inline on the loop (256 KiB).
/// Larger ones go through the ring, where the kernel hands them to its io-wq workers,
/// so that one big request cannot stall the loop's other clients.
pub(crate) const INLINE_MAX_BYTES: usize = 256 << 10;

/// After this many inline requests (or [`INLINE_BATCH_BYTES`]) the loop enters its
/// ring before running more tasks.
const INLINE_BATCH: u32 = 32;
/// After this many bytes of inline requests the loop enters its ring.
const INLINE_BATCH_BYTES: usize = 1 << 20;

/// One kernel-level request.
pub(crate) enum Req<'a> {
    Read { off: u64, iov: &'a [libc::iovec] },
    Write { off: u64, iov: &'a [libc::iovec] },
    Fdatasync,
    Fallocate { mode: i32, off: u64, len: u64 },
}

impl Req<'_> {
    /// True when the kernel touches caller memory.
    fn buffered(&self) -> bool {
        matches!(self, Req::Read { .. } | Req::Write { .. })
    }

    /// Whether the io_uring engine may run this request inline on an in-memory file:
    /// reads and writes up to [`INLINE_MAX_BYTES`] and flushes (which tmpfs completes
    /// at once). `fallocate` may zero or allocate gigabytes, so it never runs inline.
    fn inline_bytes(&self) -> Option<usize> {
        match self {
            Req::Read { iov, .. } | Req::Write { iov, .. } => {
                let n: usize = iov.iter().map(|v| v.iov_len).sum();
                (n <= INLINE_MAX_BYTES).then_some(n)
            }
            Req::Fdatasync => Some(0),
            Req::Fallocate { .. } => None,
        }
    }
}

thread_local! {
    /// Inline requests and bytes this thread ran since the loop last entered its ring.
    static INLINE_RUN: std::cell::Cell<(u32, usize)> = const { std::cell::Cell::new((0, 0)) };
}

/// Runs `req` on `t` through `aio`. Resolves to bytes transferred or `-errno`.
pub(crate) async fn execute(aio: Aio, t: Target, req: Req<'_>) -> i64 {
    match aio {
        // io_uring completes page-cache hits inline for filesystems that support
        // non-blocking I/O, but tmpfs does not advertise it (reads and writes fail
        // RWF_NOWAIT with EOPNOTSUPP), so the kernel hands every tmpfs request to an
        // io-wq worker thread. For small requests the copy costs less than that
        // hand-off: do it here. Big requests and fallocate still go through the ring.
        Aio::IoUring if t.inline && req.inline_bytes().is_some() => {
            let bytes = req.inline_bytes().unwrap_or(0);
            let r = run_sync(t, &req);
            // Inline requests complete without the task ever waiting: after a batch,
            // let the loop enter its ring (socket readiness, timers, completions)
            // and run its other tasks before this one goes on.
            let batch_done = INLINE_RUN.with(|c| {
                let (n, b) = c.get();
                let (n, b) = (n + 1, b + bytes);
                let done = n >= INLINE_BATCH || b >= INLINE_BATCH_BYTES;
                c.set(if done { (0, 0) } else { (n, b) });
                done
            });
            if batch_done {
                oxemu_aio::yield_to_ring().await;
            }
            r
        }
        Aio::IoUring => uring::execute(t, req).await,
        Aio::Native => match req {
            Req::Read { .. } | Req::Write { .. } | Req::Fdatasync => native::execute(t, req).await,
            // Linux AIO has no fallocate: QEMU also sends these to the thread pool.
            Req::Fallocate { .. } => threads::execute(t, req).await,
        },
        Aio::Threads => threads::execute(t, req).await,
    }
}

/// The synchronous system call behind a request (used by the thread pool).
pub(crate) fn run_sync(t: Target, req: &Req<'_>) -> i64 {
    // SAFETY: iovecs point at memory the submitter keeps alive until completion;
    // the other calls take no pointers.
    let r = unsafe {
        match *req {
            Req::Read { off, iov } => {
                libc::preadv(t.fd, iov.as_ptr(), iov.len() as i32, off as libc::off_t) as i64
            }
            Req::Write { off, iov } => {
                libc::pwritev(t.fd, iov.as_ptr(), iov.len() as i32, off as libc::off_t) as i64
            }
            Req::Fdatasync => libc::fdatasync(t.fd) as i64,
            Req::Fallocate { mode, off, len } => {
                libc::fallocate(t.fd, mode, off as libc::off_t, len as libc::off_t) as i64
            }
        }
    };
    if r < 0 {
        -(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO) as i64)
    } else {
        r
    }
}
