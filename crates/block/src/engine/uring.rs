//! `aio=io_uring`: requests become SQEs on the current loop's ring.
//!
//! Files are registered with the ring on first use and addressed by fixed index; a
//! single-segment buffer inside memory registered with
//! [`EventLoop::register_buffers`](oxemu_aio::EventLoop::register_buffers) uses
//! READ_FIXED/WRITE_FIXED. Submission is batched by the loop.

use oxemu_aio::io_uring::{opcode, types};

use super::{Req, Target};
use oxemu_aio as aio;

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
    let fixed = aio::fixed_file(t.id, t.fd);
    let buffered = req.buffered();
    let sqe = match req {
        Req::Read { off, iov } => {
            let fb = single_fixed(iov);
            with_fd!(fixed, t.fd, |f| match fb {
                Some((ptr, len, idx)) =>
                    opcode::ReadFixed::new(f, ptr, len, idx).offset(off).build(),
                None => opcode::Readv::new(f, iov.as_ptr(), iov.len() as u32)
                    .offset(off)
                    .build(),
            })
        }
        Req::Write { off, iov } => {
            let fb = single_fixed(iov);
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
    aio::uring_op(sqe, buffered).await as i64
}

fn single_fixed(iov: &[libc::iovec]) -> Option<(*mut u8, u32, u16)> {
    if iov.len() != 1 || iov[0].iov_len > u32::MAX as usize {
        return None;
    }
    let p = iov[0].iov_base as *mut u8;
    aio::fixed_buffer(p, iov[0].iov_len).map(|idx| (p, iov[0].iov_len as u32, idx))
}
