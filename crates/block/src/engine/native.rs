//! `aio=native`: Linux AIO through the raw `io_setup`/`io_submit`/`io_getevents`
//! system calls, without libaio.
//!
//! Each loop has one AIO context. Requests queue their iocbs; the loop's pre-wait hook
//! submits the whole batch with one `io_submit`. Completions are signalled on an
//! eventfd (`IOCB_FLAG_RESFD`) that a reaper task watches through the loop's ring.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::{Req, Target};
use oxemu_aio as aio;

const IOCB_CMD_PREADV: u16 = 7;
const IOCB_CMD_PWRITEV: u16 = 8;
const IOCB_CMD_FDSYNC: u16 = 3;
const IOCB_FLAG_RESFD: u32 = 1;
/// Events the context can hold; more requests than this wait in the queue.
const MAX_EVENTS: usize = 1024;

/// `struct iocb` from `<linux/aio_abi.h>` (x86-64 and other little-endian layouts).
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Iocb {
    aio_data: u64,
    aio_key: u32,
    aio_rw_flags: i32,
    aio_lio_opcode: u16,
    aio_reqprio: i16,
    aio_fildes: u32,
    aio_buf: u64,
    aio_nbytes: u64,
    aio_offset: i64,
    aio_reserved2: u64,
    aio_flags: u32,
    aio_resfd: u32,
}

/// `struct io_event`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

#[derive(Default)]
struct Slot {
    iocb: Box<Iocb>,
    result: Option<i64>,
    waker: Option<Waker>,
    submitted: bool,
}

/// Requests batched into one `io_submit` when neither the node nor the loop sets
/// `aio-max-batch` (QEMU's DEFAULT_MAX_BATCH).
const DEFAULT_MAX_BATCH: u64 = 32;

/// The Linux AIO context of one event loop.
struct LinuxAio {
    ctx: Cell<u64>,
    efd: OwnedFd,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<usize>>,
    queued: RefCell<Vec<usize>>,
}

thread_local! {
    static LAIO: RefCell<Option<Rc<LinuxAio>>> = const { RefCell::new(None) };
}

fn sys_io_setup(nr: usize, ctx: &mut u64) -> i64 {
    // SAFETY: `ctx` is a valid, zero-initialised aio_context_t.
    unsafe { libc::syscall(libc::SYS_io_setup, nr as libc::c_long, ctx as *mut u64) }
}

fn errno() -> i64 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO) as i64
}

impl LinuxAio {
    /// The context of the current loop, created (with its reaper task) on first use.
    fn get() -> Result<Rc<LinuxAio>, i64> {
        if let Some(l) = LAIO.with(|l| l.borrow().clone()) {
            return Ok(l);
        }
        let mut ctx = 0u64;
        if sys_io_setup(MAX_EVENTS, &mut ctx) < 0 {
            return Err(errno());
        }
        // SAFETY: plain eventfd creation.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(errno());
        }
        let l = Rc::new(LinuxAio {
            ctx: Cell::new(ctx),
            // SAFETY: fresh descriptor owned by nobody else.
            efd: unsafe { OwnedFd::from_raw_fd(efd) },
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            queued: RefCell::new(Vec::new()),
        });
        LAIO.with(|s| *s.borrow_mut() = Some(l.clone()));
        let flush = Rc::downgrade(&l);
        aio::add_pre_wait_hook(Box::new(move || {
            if let Some(l) = flush.upgrade() {
                l.flush();
            }
        }));
        let reaper = Rc::downgrade(&l);
        let fd = l.efd.as_raw_fd();
        aio::spawn_local(async move {
            loop {
                if aio::poll_fd(fd, libc::POLLIN).await.is_err() {
                    return;
                }
                let Some(l) = reaper.upgrade() else { return };
                l.clear_eventfd();
                l.reap(0);
            }
        });
        Ok(l)
    }

    fn clear_eventfd(&self) {
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into a u64 from our non-blocking eventfd.
        unsafe { libc::read(self.efd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    fn alloc(&self) -> usize {
        let id = self.free.borrow_mut().pop().unwrap_or_else(|| {
            let mut s = self.slots.borrow_mut();
            s.push(Slot::default());
            s.len() - 1
        });
        id
    }

    fn release(&self, id: usize) {
        self.slots.borrow_mut()[id] = Slot::default();
        self.free.borrow_mut().push(id);
    }

    /// Submits queued iocbs in one `io_submit` (several if the kernel takes fewer).
    fn flush(&self) {
        loop {
            let ids: Vec<usize> = self.queued.borrow().clone();
            if ids.is_empty() {
                return;
            }
            let ptrs: Vec<*mut Iocb> = {
                let mut slots = self.slots.borrow_mut();
                ids.iter()
                    .map(|&i| &mut *slots[i].iocb as *mut Iocb)
                    .collect()
            };
            // SAFETY: every pointer is a live boxed iocb whose buffers its future
            // keeps alive until completion.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_io_submit,
                    self.ctx.get() as libc::c_ulong,
                    ptrs.len() as libc::c_long,
                    ptrs.as_ptr(),
                )
            };
            if n < 0 {
                let e = errno();
                if e == libc::EAGAIN as i64 || e == libc::EINTR as i64 {
                    return; // queue full: retry next turn, completions will free room
                }
                // The first iocb is bad: fail it and go on with the rest.
                self.complete(ids[0], -e);
                self.queued.borrow_mut().remove(0);
                continue;
            }
            let n = n as usize;
            {
                let mut slots = self.slots.borrow_mut();
                for &i in &ids[..n] {
                    slots[i].submitted = true;
                }
            }
            self.queued.borrow_mut().drain(..n);
            if n == 0 {
                return;
            }
        }
    }

    fn complete(&self, id: usize, res: i64) {
        let w = {
            let mut slots = self.slots.borrow_mut();
            slots[id].result = Some(res);
            slots[id].waker.take()
        };
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Collects completions; with `min` > 0 blocks until that many arrived.
    fn reap(&self, min: usize) {
        let mut events = [IoEvent::default(); 64];
        let mut zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let mut want = min;
        loop {
            let tmo: *mut libc::timespec = if want > 0 {
                std::ptr::null_mut()
            } else {
                &mut zero
            };
            // SAFETY: `events` has room for 64 entries; tmo is null or a valid timespec.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_io_getevents,
                    self.ctx.get() as libc::c_ulong,
                    want.min(64) as libc::c_long,
                    64 as libc::c_long,
                    events.as_mut_ptr(),
                    tmo,
                )
            };
            if n < 0 {
                if errno() == libc::EINTR as i64 {
                    continue;
                }
                return;
            }
            for ev in &events[..n as usize] {
                self.complete(ev.data as usize, ev.res);
            }
            want = want.saturating_sub(n as usize);
            if (n as usize) < 64 && want == 0 {
                return;
            }
        }
    }
}

struct NativeOp {
    aio: Rc<LinuxAio>,
    id: usize,
}

impl Future for NativeOp {
    type Output = i64;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<i64> {
        let mut slots = self.aio.slots.borrow_mut();
        match slots[self.id].result {
            Some(r) => Poll::Ready(r),
            None => {
                slots[self.id].waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for NativeOp {
    fn drop(&mut self) {
        let (done, submitted) = {
            let s = &self.aio.slots.borrow()[self.id];
            (s.result.is_some(), s.submitted)
        };
        if !done && !submitted {
            self.aio.queued.borrow_mut().retain(|&i| i != self.id);
        } else if !done {
            // The kernel may still write to the caller's buffers: wait for it.
            while self.aio.slots.borrow()[self.id].result.is_none() {
                self.aio.reap(1);
            }
        }
        self.aio.release(self.id);
    }
}

/// Runs `req` (read, write or fdatasync) through Linux AIO.
pub(crate) async fn execute(t: Target, req: Req<'_>) -> i64 {
    let aio = match LinuxAio::get() {
        Ok(a) => a,
        Err(e) => return -e,
    };
    let mut cb = Iocb {
        aio_fildes: t.fd as u32,
        aio_flags: IOCB_FLAG_RESFD,
        aio_resfd: aio.efd.as_raw_fd() as u32,
        ..Default::default()
    };
    match req {
        Req::Read { off, iov } | Req::Write { off, iov } => {
            cb.aio_lio_opcode = if matches!(req, Req::Read { .. }) {
                IOCB_CMD_PREADV
            } else {
                IOCB_CMD_PWRITEV
            };
            cb.aio_buf = iov.as_ptr() as u64;
            cb.aio_nbytes = iov.len() as u64;
            cb.aio_offset = off as i64;
        }
        Req::Fdatasync => cb.aio_lio_opcode = IOCB_CMD_FDSYNC,
        Req::Fallocate { .. } => return -(libc::ENOTSUP as i64),
    }
    let id = aio.alloc();
    cb.aio_data = id as u64;
    *aio.slots.borrow_mut()[id].iocb = cb;
    let queued = {
        let mut q = aio.queued.borrow_mut();
        q.push(id);
        q.len() as u64
    };
    // QEMU's laio_max_batch: the node's limit if set and lower, else the loop's
    // (32 when unset); a full batch goes to the kernel at once instead of at the end
    // of the loop turn.
    let loop_max = match aio::aio_max_batch() {
        0 => DEFAULT_MAX_BATCH,
        n => n,
    };
    let max = match t.max_batch {
        0 => loop_max,
        n => n.min(loop_max),
    };
    if queued >= max {
        aio.flush();
    }
    NativeOp { aio, id }.await
}
