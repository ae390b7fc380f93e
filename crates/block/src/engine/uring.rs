//! `aio=io_uring`: requests become SQEs on the current loop's ring.
//!
//! Files are registered with the ring on first use and addressed by fixed index; a
//! single-segment buffer inside memory registered with
//! [`EventLoop::register_buffers`](crate::aio::EventLoop::register_buffers) uses
//! READ_FIXED/WRITE_FIXED. Submission is batched by the loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use io_uring::{opcode, types};

use super::{Req, Target};
use crate::aio;

macro_rules! with_fd {
    ($fixed:expr, $fd:expr, |$f:ident| $body:expr) => {
        match $fixed {
            Some(idx) => {
                let $f = types::Fixed(idx);
                $body
            }
            None => {
                let $f = types::Fd($fd);
                $body
            }
        }
    };
}

/// Runs `req` through the current loop's ring.
pub(crate) async fn execute(t: Target, req: Req<'_>) -> i64 {
    let lp = aio::current();
    let fixed = lp.reactor.fixed_file(t.id, t.fd);
    let buffered = req.buffered();
    let sqe = match req {
        Req::Read { off, iov } => {
            let fb = single_fixed(&lp, iov);
            with_fd!(fixed, t.fd, |f| match fb {
                Some((ptr, len, idx)) =>
                    opcode::ReadFixed::new(f, ptr, len, idx).offset(off).build(),
                None => opcode::Readv::new(f, iov.as_ptr(), iov.len() as u32)
                    .offset(off)
                    .build(),
            })
        }
        Req::Write { off, iov } => {
            let fb = single_fixed(&lp, iov);
            with_fd!(fixed, t.fd, |f| match fb {
                Some((ptr, len, idx)) => {
                    opcode::WriteFixed::new(f, ptr as *const u8, len, idx)
                        .offset(off)
                        .build()
                }
                None => opcode::Writev::new(f, iov.as_ptr(), iov.len() as u32)
                    .offset(off)
                    .build(),
            })
        }
        Req::Fdatasync => with_fd!(fixed, t.fd, |f| opcode::Fsync::new(f)
            .flags(types::FsyncFlags::DATASYNC)
            .build()),
        Req::Fallocate { mode, off, len } => {
            with_fd!(fixed, t.fd, |f| opcode::Fallocate::new(f, len)
                .offset(off)
                .mode(mode)
                .build())
        }
    };
    drop(lp);
    aio::uring_op(sqe, buffered).await as i64
}

fn single_fixed(lp: &aio::LoopInner, iov: &[libc::iovec]) -> Option<(*mut u8, u32, u16)> {
    if iov.len() != 1 || iov[0].iov_len > u32::MAX as usize {
        return None;
    }
    let p = iov[0].iov_base as *mut u8;
    lp.reactor
        .fixed_buffer(p, iov[0].iov_len)
        .map(|idx| (p, iov[0].iov_len as u32, idx))
}

/// Ids of closed files, for loops on other threads to drop their registrations.
static CLOSED: Mutex<Vec<u64>> = Mutex::new(Vec::new());
/// Bumped whenever a file is closed.
static CLOSED_GEN: AtomicU64 = AtomicU64::new(0);

/// Records that file `id` was closed: the calling thread's loop forgets it now, other
/// loops on their next turn (see [`forget_closed_files`]).
pub(crate) fn file_closed(id: u64) {
    if let Some(lp) = aio::try_current() {
        lp.reactor.forget_file(id);
    }
    CLOSED.lock().unwrap_or_else(|p| p.into_inner()).push(id);
    CLOSED_GEN.fetch_add(1, Ordering::Release);
}

/// Drops the current loop's registrations of files closed since generation `seen`;
/// returns the new generation.
pub(crate) fn forget_closed_files(lp: &aio::LoopInner, seen: u64) -> u64 {
    let now = CLOSED_GEN.load(Ordering::Acquire);
    if now != seen {
        for &id in CLOSED.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            lp.reactor.forget_file(id);
        }
    }
    now
}
