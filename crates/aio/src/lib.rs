//! oxemu's event loop (QEMU's AioContext), IoThreads, async sockets and the blocking
//! thread pool, shared by the block layer, the exports and the machine.
//!
//! An [`EventLoop`] couples a single-threaded executor with an io_uring
//! reactor. Everything a thread waits for goes through its ring: disk I/O of
//! the block layer's `io_uring` engine ([`uring_op`]), readiness of sockets and
//! eventfds ([`poll_fd`]), timers ([`sleep`]) and wake-ups from other threads (an
//! eventfd watched by the same ring). One `io_uring_enter` per loop turn submits the
//! batch of requests that the turn's tasks produced and collects completions. Work
//! that must not block the loop goes to [`run_blocking`]'s thread pool and completes
//! into the loop.
//!
//! Loops are entered with [`EventLoop::block_on`] or [`EventLoop::run`]; inside, the
//! free functions ([`spawn_local`], [`poll_fd`], [`sleep`]) act on the current loop.
//!
//! ```
//! use std::time::Duration;
//! let lp = oxemu_aio::EventLoop::with_defaults().unwrap();
//! let v = lp.block_on(async {
//!     let t = oxemu_aio::spawn_local(async { 20 + 1 });
//!     oxemu_aio::sleep(Duration::from_millis(1)).await;
//!     t.await * 2
//! });
//! assert_eq!(v, 42);
//! ```

#![warn(missing_docs)]

pub mod blocking;
mod executor;
mod iothread;
pub mod net;
pub(crate) mod reactor;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use io_uring::{opcode, types};

/// The io_uring crate this loop's ring comes from, for building SQEs for [`uring_op`].
pub use io_uring;

pub use blocking::run_blocking;
pub use executor::JoinHandle;
pub use iothread::{IoThread, IoThreadHandle};

use executor::Executor;
use reactor::{OpKind, Reactor, UringOp};

/// Tuning of one event loop, mirroring the properties of QEMU's `iothread` object.
#[derive(Clone, Debug)]
pub struct EventLoopConfig {
    /// Submission queue entries of the ring (completion queue is four times larger).
    pub queue_depth: u32,
    /// Busy-poll for completions up to this long before sleeping (QEMU's
    /// `poll-max-ns`); 0 disables polling.
    pub poll_max_ns: u64,
    /// Run a kernel SQ polling thread that idles after this many milliseconds
    /// (`IORING_SETUP_SQPOLL`); None disables it.
    pub sqpoll_idle_ms: Option<u32>,
    /// Register files with the ring (`IORING_REGISTER_FILES`) on first use.
    pub register_files: bool,
    /// QEMU's iothread `aio-max-batch`: how many Linux AIO requests the block layer
    /// batches into one `io_submit` (0: its default). Read with [`aio_max_batch`].
    pub aio_max_batch: u64,
}

impl Default for EventLoopConfig {
    fn default() -> Self {
        EventLoopConfig {
            queue_depth: 512,
            poll_max_ns: 0,
            sqpoll_idle_ms: None,
            register_files: true,
            aio_max_batch: 0,
        }
    }
}

struct LoopInner {
    reactor: Reactor,
    executor: Executor,
    /// Callbacks run once per turn after tasks ran and before the loop waits (the
    /// Linux AIO engine flushes its batched `io_submit` here).
    pre_wait: RefCell<Vec<Box<dyn Fn()>>>,
    kick_armed: Cell<bool>,
    /// Embedded in a foreign poller that watches the kick eventfd itself.
    embedded: Cell<bool>,
    /// Generation of the closed-files list this loop has processed.
    closed_gen: Cell<u64>,
    aio_max_batch: u64,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<LoopInner>>> = const { RefCell::new(None) };
}

/// The loop the calling thread is running. Panics outside a loop: every block-layer
/// future must be polled by an [`EventLoop`].
fn current() -> Rc<LoopInner> {
    try_current().expect("oxemu-aio futures must run inside an EventLoop")
}

fn try_current() -> Option<Rc<LoopInner>> {
    CURRENT.try_with(|c| c.borrow().clone()).ok().flatten()
}

/// True when the calling thread is inside an event loop.
pub fn in_event_loop() -> bool {
    CURRENT.with(|c| c.borrow().is_some())
}

/// An event loop: one per thread. See the module documentation.
pub struct EventLoop {
    inner: Rc<LoopInner>,
}

struct Enter {
    prev: Option<Rc<LoopInner>>,
}

impl Drop for Enter {
    fn drop(&mut self) {
        let prev = self.prev.take();
        // try_with: this also runs while thread-locals are being destroyed.
        let _ = CURRENT.try_with(|c| *c.borrow_mut() = prev);
    }
}

/// Waker of the future driven by `block_on`.
struct MainWaker(Arc<executor::ReadyQueue>);
impl Wake for MainWaker {
    fn wake(self: Arc<Self>) {
        self.0.wake_main();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.wake_main();
    }
}

impl EventLoop {
    /// Creates a loop with its own io_uring ring.
    pub fn new(cfg: EventLoopConfig) -> io::Result<Self> {
        let reactor = Reactor::new(&cfg)?;
        let executor = Executor::new()?;
        Ok(EventLoop {
            inner: Rc::new(LoopInner {
                reactor,
                executor,
                pre_wait: RefCell::new(Vec::new()),
                kick_armed: Cell::new(false),
                embedded: Cell::new(false),
                closed_gen: Cell::new(0),
                aio_max_batch: cfg.aio_max_batch,
            }),
        })
    }

    /// A loop with the default configuration.
    pub fn with_defaults() -> io::Result<Self> {
        Self::new(EventLoopConfig::default())
    }

    fn enter(&self) -> Enter {
        let prev = CURRENT
            .try_with(|c| c.borrow_mut().replace(self.inner.clone()))
            .ok()
            .flatten();
        Enter { prev }
    }

    /// Runs `fut` (and every task it spawns) on this thread until `fut` completes.
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        let _g = self.enter();
        let q = self.inner.executor.queue.clone();
        let waker = Waker::from(Arc::new(MainWaker(q.clone())));
        let mut cx = Context::from_waker(&waker);
        let mut fut = pin!(fut);
        let mut first = true;
        loop {
            if std::mem::take(&mut first) || q.take_main_woken() {
                if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                    return v;
                }
            }
            self.inner.turn(true);
        }
    }

    /// Runs spawned tasks until [`IoThreadHandle::stop`] (through this loop's handle)
    /// is called.
    pub fn run(&self) {
        let _g = self.enter();
        while !self.inner.executor.queue.stop_requested() {
            self.inner.turn(true);
        }
    }

    /// Runs one non-blocking turn: ready tasks, submissions and completions. For
    /// embedding the loop in a foreign poller that watches [`Self::notify_fd`].
    pub fn run_nonblocking(&self) {
        let _g = self.enter();
        let q = &self.inner.executor.queue;
        q.woke();
        q.drain_kick();
        for _ in 0..64 {
            self.inner.turn(false);
            let idle = !q.has_work() && !self.inner.reactor.has_completions();
            // Until the next call, the loop counts as asleep: wake-ups from other
            // threads must then signal the eventfd the foreign poller watches.
            if idle && q.prepare_sleep() {
                return;
            }
        }
        // Work is still pending after the budget: make sure the poller comes back.
        q.post(Box::new(|| {}));
    }

    /// An eventfd that becomes readable when the loop has work (completions or
    /// wake-ups from other threads). Watch it in a foreign poller, and call
    /// [`Self::run_nonblocking`] when it fires. Switches the loop to embedded mode.
    pub fn notify_fd(&self) -> io::Result<RawFd> {
        self.inner.embedded.set(true);
        // Completions of ring operations signal it too.
        let fd = self.inner.executor.queue.kick_fd();
        self.inner.reactor.register_eventfd(fd)?;
        Ok(fd)
    }

    /// Spawns a task on this loop (it runs when the loop runs).
    pub fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        let (task, h) = executor::with_join(fut);
        self.inner.executor.spawn(task);
        h
    }

    /// A `Send` handle to post work to this loop from other threads.
    pub fn handle(&self) -> IoThreadHandle {
        IoThreadHandle::new(self.inner.executor.queue.clone())
    }

    /// Registers fixed buffers for `READ_FIXED`/`WRITE_FIXED` (io_uring engine).
    ///
    /// # Safety
    /// The memory must stay valid until the loop is dropped or buffers are registered
    /// again.
    pub unsafe fn register_buffers(&self, bufs: &[libc::iovec]) -> io::Result<()> {
        // SAFETY: forwarded to the caller.
        unsafe { self.inner.reactor.register_buffers(bufs) }
    }

    /// Number of `io_uring_enter` calls so far (for tests and statistics).
    pub fn ring_enters(&self) -> u64 {
        self.inner.reactor.submits.get()
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        let _g = self.enter();
        self.inner.executor.clear();
        self.inner.pre_wait.borrow_mut().clear();
    }
}

impl LoopInner {
    fn ensure_kick_armed(&self) {
        if self.embedded.get() {
            return; // the foreign poller watches the eventfd
        }
        if !self.kick_armed.get() && self.reactor.arm_kick(self.executor.queue.kick_fd()).is_ok() {
            self.kick_armed.set(true);
        }
    }

    /// One loop iteration. `may_block`: wait in the kernel if nothing is runnable.
    fn turn(&self, may_block: bool) {
        self.ensure_kick_armed();
        self.closed_gen
            .set(forget_closed_files(self, self.closed_gen.get()));
        self.executor.run_ready();
        for hook in self.pre_wait.borrow().iter() {
            hook();
        }
        let q = &self.executor.queue;
        let mut block = may_block && !q.has_work();
        // Without busy-polling, submitting here would cost a second io_uring_enter:
        // the blocking submit below submits and waits in one call.
        if block && self.reactor.in_flight() > 0 && self.reactor.polls() {
            let _ = self.reactor.submit(false);
            if self.reactor.poll_completions(|| q.has_work()) {
                block = false;
            }
        }
        if block && q.prepare_sleep() {
            let r = self.reactor.submit(true);
            q.woke();
            if let Err(e) = r {
                tracing::warn!("io_uring_enter failed: {e}");
            }
        } else {
            let _ = self.reactor.submit(false);
        }
        if self.reactor.reap() {
            q.drain_kick();
            self.kick_armed.set(false);
            self.ensure_kick_armed();
        }
    }

    /// Registers a callback run once per turn before the loop waits.
    fn add_pre_wait_hook(&self, f: Box<dyn Fn()>) {
        self.pre_wait.borrow_mut().push(f);
    }
}

/// Spawns a task on the current loop. Panics outside an event loop.
pub fn spawn_local<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let (task, h) = executor::with_join(fut);
    current().executor.spawn(task);
    h
}

/// Waits until `fd` is ready for `events` (`libc::POLLIN`, `POLLOUT`, ...) through
/// `IORING_OP_POLL_ADD` on the current loop's ring; returns the ready event mask.
pub async fn poll_fd(fd: RawFd, events: i16) -> io::Result<i16> {
    let sqe = opcode::PollAdd::new(types::Fd(fd), events as u16 as u32).build();
    let r = UringOp::new(sqe, OpKind::Unbuffered).await;
    if r < 0 {
        Err(io::Error::from_raw_os_error(-r))
    } else {
        Ok(r as i16)
    }
}

/// Sleeps for `dur` on the current loop (an io_uring timeout).
pub async fn sleep(dur: Duration) {
    let _ = UringOp::timeout(dur).await;
}

/// Yields once to let other ready tasks run.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// Yields, and makes the loop enter its ring (submitting and reaping without waiting)
/// before it polls the ready tasks again. Work that completes without ever waiting,
/// such as I/O run inline on the loop, calls this now and then: a plain
/// [`yield_now`] only re-queues the task, and the loop would keep draining its ready
/// queue while socket readiness, timers and disk completions wait in the ring.
pub async fn yield_to_ring() {
    if let Some(lp) = try_current() {
        lp.executor.request_ring_turn();
    }
    yield_now().await
}

/// Registers a callback run once per turn of the current loop, after its tasks ran and
/// before it waits (the Linux AIO engine flushes its batched `io_submit` here). Panics
/// outside an event loop.
pub fn add_pre_wait_hook(f: Box<dyn Fn()>) {
    current().add_pre_wait_hook(f);
}

/// Runs an SQE on the current loop's ring and returns its result (a negative errno on
/// failure). `buffered`: the SQE references caller memory, so dropping the future
/// early waits for the kernel to finish with it. Panics outside an event loop.
pub async fn uring_op(sqe: io_uring::squeue::Entry, buffered: bool) -> i32 {
    let kind = if buffered {
        OpKind::Buffered
    } else {
        OpKind::Unbuffered
    };
    UringOp::new(sqe, kind).await
}

/// The `aio-max-batch` of the current loop's configuration (0 when unset or outside
/// a loop).
pub fn aio_max_batch() -> u64 {
    try_current().map_or(0, |l| l.aio_max_batch)
}

/// The fixed-file index of file `file_id` (open as `fd`) in the current loop's ring,
/// registering it on first use; None when the loop does not register files or its
/// table is full (then use the plain fd). Panics outside an event loop.
pub fn fixed_file(file_id: u64, fd: RawFd) -> Option<u32> {
    current().reactor.fixed_file(file_id, fd)
}

/// The index of the buffer registered with [`EventLoop::register_buffers`] that holds
/// all of `ptr..ptr+len`, for `READ_FIXED`/`WRITE_FIXED`. Panics outside an event loop.
pub fn fixed_buffer(ptr: *const u8, len: usize) -> Option<u16> {
    current().reactor.fixed_buffer(ptr, len)
}

/// Ids of closed files, for loops on other threads to drop their registrations.
static CLOSED: Mutex<Vec<u64>> = Mutex::new(Vec::new());
/// Bumped whenever a file is closed.
static CLOSED_GEN: AtomicU64 = AtomicU64::new(0);

/// Records that file `file_id` (as passed to [`fixed_file`]) was closed: the calling
/// thread's loop forgets its registration now, other loops on their next turn.
pub fn file_closed(file_id: u64) {
    if let Some(lp) = try_current() {
        lp.reactor.forget_file(file_id);
    }
    CLOSED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(file_id);
    CLOSED_GEN.fetch_add(1, Ordering::Release);
}

/// Drops the loop's registrations of files closed since generation `seen`; returns
/// the new generation.
fn forget_closed_files(lp: &LoopInner, seen: u64) -> u64 {
    let now = CLOSED_GEN.load(Ordering::Acquire);
    if now != seen {
        for &id in CLOSED.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            lp.reactor.forget_file(id);
        }
    }
    now
}

#[cfg(test)]
mod tests;
