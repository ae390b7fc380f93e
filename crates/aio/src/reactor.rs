//! The io_uring reactor at the heart of each event loop.
//!
//! One ring per loop carries everything the loop waits for: disk I/O of the
//! `io_uring` engine, `IORING_OP_POLL_ADD` readiness for sockets and eventfds, and
//! timers. Futures push SQEs without entering the kernel; the loop submits the whole
//! batch and reaps completions with one `io_uring_enter` per turn.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};

use super::EventLoopConfig;

/// user_data of the poll on the loop's own kick eventfd.
pub(crate) const KICK_TAG: u64 = u64::MAX;
/// user_data of cancellation requests, whose completions are ignored.
const CANCEL_TAG: u64 = u64::MAX - 1;
/// Number of fixed-file slots reserved at ring setup.
const FIXED_FILES: u32 = 256;

#[derive(Default)]
struct OpSlot {
    in_use: bool,
    result: Option<i32>,
    waker: Option<Waker>,
    /// The future was dropped; the completion only frees the slot.
    orphan: bool,
    /// Kernel-visible storage that must outlive the SQE (timeouts).
    timespec: Option<Box<types::Timespec>>,
}

/// A registered memory area usable with READ_FIXED/WRITE_FIXED.
#[derive(Clone, Copy)]
struct FixedBuf {
    base: usize,
    len: usize,
}

/// The ring and the table of operations in flight on it.
pub(crate) struct Reactor {
    ring: RefCell<IoUring>,
    slots: RefCell<Vec<OpSlot>>,
    free: RefCell<Vec<usize>>,
    in_flight: Cell<usize>,
    queued: Cell<usize>,
    fixed_files: Option<RefCell<FixedFiles>>,
    fixed_bufs: RefCell<Vec<FixedBuf>>,
    poll_max: Duration,
    pub(crate) submits: Cell<u64>,
}

struct FixedFiles {
    map: HashMap<u64, u32>,
    free: Vec<u32>,
}

impl Reactor {
    pub(crate) fn new(cfg: &EventLoopConfig) -> io::Result<Self> {
        let mut b = IoUring::builder();
        b.setup_cqsize(cfg.queue_depth.saturating_mul(4));
        if let Some(idle) = cfg.sqpoll_idle_ms {
            b.setup_sqpoll(idle);
        }
        let ring = b.build(cfg.queue_depth)?;
        let fixed_files = if cfg.register_files {
            match ring.submitter().register_files_sparse(FIXED_FILES) {
                Ok(()) => Some(RefCell::new(FixedFiles {
                    map: HashMap::new(),
                    free: (0..FIXED_FILES).rev().collect(),
                })),
                Err(e) => {
                    tracing::debug!("io_uring: no sparse file registration ({e}); using plain fds");
                    None
                }
            }
        } else {
            None
        };
        Ok(Reactor {
            ring: RefCell::new(ring),
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            in_flight: Cell::new(0),
            queued: Cell::new(0),
            fixed_files,
            fixed_bufs: RefCell::new(Vec::new()),
            poll_max: Duration::from_nanos(cfg.poll_max_ns),
            submits: Cell::new(0),
        })
    }

    /// Operations submitted or queued whose completion has not been reaped.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    fn alloc_slot(&self) -> usize {
        let id = self.free.borrow_mut().pop().unwrap_or_else(|| {
            let mut s = self.slots.borrow_mut();
            s.push(OpSlot::default());
            s.len() - 1
        });
        self.slots.borrow_mut()[id].in_use = true;
        id
    }

    fn release_slot(&self, id: usize) {
        self.slots.borrow_mut()[id] = OpSlot::default();
        self.free.borrow_mut().push(id);
    }

    /// Queues an SQE, entering the kernel first only if the submission queue is full.
    pub(crate) fn push(&self, sqe: &squeue::Entry) -> io::Result<()> {
        loop {
            {
                let mut ring = self.ring.borrow_mut();
                // SAFETY: every SQE built by this crate points at memory that its
                // owning `UringOp` keeps alive (or waits for) until completion.
                if unsafe { ring.submission().push(sqe) }.is_ok() {
                    self.queued.set(self.queued.get() + 1);
                    return Ok(());
                }
            }
            self.submit(false)?;
        }
    }

    /// Submits queued SQEs; with `wait`, blocks until at least one completion.
    pub(crate) fn submit(&self, wait: bool) -> io::Result<usize> {
        let ring = self.ring.borrow();
        if self.queued.get() == 0 && !wait {
            return Ok(0);
        }
        self.submits.set(self.submits.get() + 1);
        let r = if wait {
            ring.submitter().submit_and_wait(1)
        } else {
            ring.submitter().submit()
        };
        match r {
            Ok(n) => {
                self.queued.set(0);
                Ok(n)
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
                ) =>
            {
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }

    /// True when completions are waiting to be reaped.
    pub(crate) fn has_completions(&self) -> bool {
        let mut ring = self.ring.borrow_mut();
        let mut cq = ring.completion();
        cq.sync();
        !cq.is_empty()
    }

    /// True when the loop busy-polls for completions before sleeping.
    pub(crate) fn polls(&self) -> bool {
        !self.poll_max.is_zero()
    }

    /// Busy-polls the completion queue for up to `poll-max-ns`, or until `stop` says
    /// other work arrived. Returns true if a completion showed up.
    pub(crate) fn poll_completions(&self, stop: impl Fn() -> bool) -> bool {
        if self.poll_max.is_zero() || self.in_flight.get() == 0 {
            return false;
        }
        let start = Instant::now();
        loop {
            if self.has_completions() {
                return true;
            }
            if stop() || start.elapsed() >= self.poll_max {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// Reaps all completions; returns whether the loop's kick eventfd fired.
    pub(crate) fn reap(&self) -> bool {
        let mut kicked = false;
        let mut wakers = Vec::new();
        {
            let mut ring = self.ring.borrow_mut();
            let mut slots = self.slots.borrow_mut();
            let mut orphans = Vec::new();
            for cqe in ring.completion() {
                let ud = cqe.user_data();
                if ud == KICK_TAG {
                    kicked = true;
                    continue;
                }
                if ud == CANCEL_TAG {
                    continue;
                }
                let id = ud as usize;
                let Some(slot) = slots.get_mut(id) else {
                    continue;
                };
                self.in_flight.set(self.in_flight.get().saturating_sub(1));
                if slot.orphan {
                    orphans.push(id);
                    continue;
                }
                slot.result = Some(cqe.result());
                if let Some(w) = slot.waker.take() {
                    wakers.push(w);
                }
            }
            drop(slots);
            drop(ring);
            for id in orphans {
                self.release_slot(id);
            }
        }
        for w in wakers {
            w.wake();
        }
        kicked
    }

    /// Blocks the thread until operation `id` has completed (used when an I/O future
    /// whose buffers the kernel may still touch is dropped).
    fn wait_for(&self, id: usize) {
        while self.slots.borrow()[id].result.is_none() {
            if self.submit(true).is_err() {
                std::thread::yield_now();
            }
            self.reap();
        }
    }

    /// The fixed-file index for the file with unique id `file_id` and descriptor `fd`,
    /// registering it on first use. None when registration is off or the table is full.
    pub(crate) fn fixed_file(&self, file_id: u64, fd: RawFd) -> Option<u32> {
        let ff = self.fixed_files.as_ref()?;
        let mut ff = ff.borrow_mut();
        if let Some(&idx) = ff.map.get(&file_id) {
            return Some(idx);
        }
        let idx = ff.free.pop()?;
        if self
            .ring
            .borrow()
            .submitter()
            .register_files_update(idx, &[fd])
            .is_err()
        {
            ff.free.push(idx);
            return None;
        }
        ff.map.insert(file_id, idx);
        Some(idx)
    }

    /// Drops the registration of a closed file.
    pub(crate) fn forget_file(&self, file_id: u64) {
        let Some(ff) = self.fixed_files.as_ref() else {
            return;
        };
        let mut ff = ff.borrow_mut();
        if let Some(idx) = ff.map.remove(&file_id) {
            let _ = self
                .ring
                .borrow()
                .submitter()
                .register_files_update(idx, &[-1]);
            ff.free.push(idx);
        }
    }

    /// Registers `bufs` as fixed buffers, replacing earlier ones.
    ///
    /// # Safety
    /// The memory must stay valid until it is unregistered or the loop is dropped.
    pub(crate) unsafe fn register_buffers(&self, bufs: &[libc::iovec]) -> io::Result<()> {
        let ring = self.ring.borrow();
        let _ = ring.submitter().unregister_buffers();
        // SAFETY: forwarded to the caller.
        unsafe { ring.submitter().register_buffers(bufs)? };
        *self.fixed_bufs.borrow_mut() = bufs
            .iter()
            .map(|b| FixedBuf {
                base: b.iov_base as usize,
                len: b.iov_len,
            })
            .collect();
        Ok(())
    }

    /// Index of the registered buffer containing `ptr..ptr+len`, if any.
    pub(crate) fn fixed_buffer(&self, ptr: *const u8, len: usize) -> Option<u16> {
        let p = ptr as usize;
        self.fixed_bufs
            .borrow()
            .iter()
            .position(|b| p >= b.base && p + len <= b.base + b.len)
            .map(|i| i as u16)
    }

    /// Makes the kernel signal `fd` whenever a completion is posted.
    pub(crate) fn register_eventfd(&self, fd: RawFd) -> io::Result<()> {
        match self.ring.borrow().submitter().register_eventfd(fd) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
            r => r,
        }
    }

    /// Arms the poll on the kick eventfd.
    pub(crate) fn arm_kick(&self, fd: RawFd) -> io::Result<()> {
        let sqe = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .build()
            .user_data(KICK_TAG);
        self.push(&sqe)
    }
}

/// Whether an operation's SQE references memory the future borrows.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpKind {
    /// The kernel reads or writes caller memory: dropping before completion waits.
    Buffered,
    /// No caller memory (poll, fsync, fallocate, timeout): dropping cancels.
    Unbuffered,
}

/// A future for one SQE on the current loop's ring; resolves to the CQE result
/// (negative errno on failure).
pub(crate) struct UringOp {
    sqe: Option<squeue::Entry>,
    timespec: Option<Box<types::Timespec>>,
    slot: Option<usize>,
    kind: OpKind,
}

impl UringOp {
    pub(crate) fn new(sqe: squeue::Entry, kind: OpKind) -> Self {
        UringOp {
            sqe: Some(sqe),
            timespec: None,
            slot: None,
            kind,
        }
    }

    /// A timeout op; `ts` is kept alive in the slot until completion.
    pub(crate) fn timeout(dur: Duration) -> Self {
        let ts = Box::new(
            types::Timespec::new()
                .sec(dur.as_secs())
                .nsec(dur.subsec_nanos()),
        );
        let sqe = opcode::Timeout::new(&*ts as *const _).build();
        UringOp {
            sqe: Some(sqe),
            timespec: Some(ts),
            slot: None,
            kind: OpKind::Unbuffered,
        }
    }
}

impl Future for UringOp {
    type Output = i32;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<i32> {
        let lp = super::current();
        let r = &lp.reactor;
        match self.slot {
            None => {
                let id = r.alloc_slot();
                let sqe = self
                    .sqe
                    .take()
                    .expect("op polled after completion")
                    .user_data(id as u64);
                {
                    let mut slots = r.slots.borrow_mut();
                    slots[id].waker = Some(cx.waker().clone());
                    slots[id].timespec = self.timespec.take();
                }
                if let Err(e) = r.push(&sqe) {
                    r.release_slot(id);
                    return Poll::Ready(-e.raw_os_error().unwrap_or(libc::EIO));
                }
                r.in_flight.set(r.in_flight.get() + 1);
                self.slot = Some(id);
                Poll::Pending
            }
            Some(id) => {
                let mut slots = r.slots.borrow_mut();
                match slots[id].result {
                    Some(res) => {
                        drop(slots);
                        r.release_slot(id);
                        self.slot = None;
                        Poll::Ready(res)
                    }
                    None => {
                        slots[id].waker = Some(cx.waker().clone());
                        Poll::Pending
                    }
                }
            }
        }
    }
}

impl Drop for UringOp {
    fn drop(&mut self) {
        let Some(id) = self.slot.take() else {
            return;
        };
        let Some(lp) = super::try_current() else {
            return;
        };
        let r = &lp.reactor;
        if r.slots.borrow()[id].result.is_some() {
            r.release_slot(id);
            return;
        }
        match self.kind {
            OpKind::Buffered => {
                r.wait_for(id);
                r.release_slot(id);
            }
            OpKind::Unbuffered => {
                r.slots.borrow_mut()[id].orphan = true;
                let cancel = opcode::AsyncCancel::new(id as u64)
                    .build()
                    .user_data(CANCEL_TAG);
                let _ = r.push(&cancel);
            }
        }
    }
}
