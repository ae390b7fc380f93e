//! A single-threaded task executor: QEMU's coroutines, as Rust futures.
//!
//! Tasks are `!Send` futures owned by one [`EventLoop`](super::EventLoop). Their
//! wakers are `Send`: waking from another thread (the AIO thread pool, another
//! IoThread) queues the task and kicks the loop's eventfd if the loop sleeps.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

type LocalTask = Pin<Box<dyn Future<Output = ()>>>;
type Remote = Box<dyn FnOnce() + Send>;

/// The cross-thread half of a loop: ready task ids, closures posted from other
/// threads, and the eventfd that wakes the loop when it sleeps.
pub(crate) struct ReadyQueue {
    inner: Mutex<QueueInner>,
    /// Set while the loop is (about to be) blocked in the kernel.
    sleeping: AtomicBool,
    kick: OwnedFd,
}

#[derive(Default)]
struct QueueInner {
    ready: VecDeque<usize>,
    remote: Vec<Remote>,
    stop: bool,
    /// The future driven by `block_on` was woken.
    main_woken: bool,
}

impl ReadyQueue {
    fn new() -> std::io::Result<Arc<Self>> {
        // SAFETY: eventfd has no memory-safety preconditions.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Arc::new(ReadyQueue {
            inner: Mutex::new(QueueInner::default()),
            sleeping: AtomicBool::new(false),
            // SAFETY: fd was just created and is owned by nobody else.
            kick: unsafe { OwnedFd::from_raw_fd(fd) },
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push_ready(&self, id: usize) {
        self.lock().ready.push_back(id);
        self.kick_if_sleeping();
    }

    /// Queues a closure to run on the loop's thread.
    pub(crate) fn post(&self, f: Remote) {
        self.lock().remote.push(f);
        self.kick();
    }

    /// Wakes the future driven by `block_on` (not a task of the table).
    pub(crate) fn wake_main(&self) {
        self.lock().main_woken = true;
        self.kick_if_sleeping();
    }

    /// Consumes a pending wake of the `block_on` future.
    pub(crate) fn take_main_woken(&self) -> bool {
        std::mem::take(&mut self.lock().main_woken)
    }

    /// Asks the loop to return from `run`.
    pub(crate) fn stop(&self) {
        self.lock().stop = true;
        self.kick();
    }

    pub(crate) fn stop_requested(&self) -> bool {
        self.lock().stop
    }

    fn kick_if_sleeping(&self) {
        if self.sleeping.load(Ordering::SeqCst) {
            self.kick();
        }
    }

    fn kick(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to an eventfd we own.
        unsafe { libc::write(self.kick.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Clears the eventfd after it fired.
    pub(crate) fn drain_kick(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64 from a non-blocking eventfd we own.
        unsafe { libc::read(self.kick.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    pub(crate) fn kick_fd(&self) -> RawFd {
        self.kick.as_raw_fd()
    }

    /// True when work is queued; the caller must not sleep.
    pub(crate) fn has_work(&self) -> bool {
        let q = self.lock();
        !q.ready.is_empty() || !q.remote.is_empty() || q.stop || q.main_woken
    }

    /// Marks the loop as about to sleep. Returns false (and leaves it awake) if work
    /// arrived in the meantime, so that no wake-up is lost.
    pub(crate) fn prepare_sleep(&self) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        if self.has_work() {
            self.sleeping.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    pub(crate) fn woke(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }
}

struct TaskWaker {
    id: usize,
    queued: AtomicBool,
    queue: Arc<ReadyQueue>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.queue.push_ready(self.id);
        }
    }
}

struct Slot {
    future: Option<LocalTask>,
    waker: Arc<TaskWaker>,
}

/// The task table of one loop.
pub(crate) struct Executor {
    slots: RefCell<Vec<Option<Slot>>>,
    free: RefCell<Vec<usize>>,
    pub(crate) queue: Arc<ReadyQueue>,
    /// A task asked the loop to enter the ring before polling more tasks (see
    /// [`yield_to_ring`](super::yield_to_ring)): `run_ready` returns after the current
    /// round instead of draining the ready queue.
    ring_requested: std::cell::Cell<bool>,
}

impl Executor {
    pub(crate) fn new() -> std::io::Result<Self> {
        Ok(Executor {
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            queue: ReadyQueue::new()?,
            ring_requested: std::cell::Cell::new(false),
        })
    }

    pub(crate) fn spawn(&self, fut: LocalTask) {
        let id = self.free.borrow_mut().pop().unwrap_or_else(|| {
            let mut s = self.slots.borrow_mut();
            s.push(None);
            s.len() - 1
        });
        let waker = Arc::new(TaskWaker {
            id,
            queued: AtomicBool::new(false),
            queue: self.queue.clone(),
        });
        self.slots.borrow_mut()[id] = Some(Slot {
            future: Some(fut),
            waker: waker.clone(),
        });
        waker.wake_by_ref();
    }

    /// Makes the current [`run_ready`](Self::run_ready) return after its round, so that
    /// the loop submits to and reaps from the ring before polling tasks again.
    pub(crate) fn request_ring_turn(&self) {
        self.ring_requested.set(true);
    }

    /// Runs closures posted from other threads, then polls every ready task until none
    /// is ready, or until a task asked for a ring turn ([`Self::request_ring_turn`]):
    /// then the tasks still queued wait for the next turn of the loop. Returns the
    /// number of tasks polled.
    pub(crate) fn run_ready(&self) -> usize {
        let mut polled = 0;
        loop {
            let (ids, remote) = {
                let mut q = self.queue.lock();
                (std::mem::take(&mut q.ready), std::mem::take(&mut q.remote))
            };
            if ids.is_empty() && remote.is_empty() {
                return polled;
            }
            for f in remote {
                f();
            }
            for id in ids {
                polled += 1;
                self.poll_task(id);
            }
            if self.ring_requested.replace(false) {
                return polled;
            }
        }
    }

    fn poll_task(&self, id: usize) {
        let taken = {
            let mut slots = self.slots.borrow_mut();
            match slots.get_mut(id).and_then(|s| s.as_mut()) {
                Some(slot) => slot.future.take().map(|f| (f, slot.waker.clone())),
                None => None,
            }
        };
        let Some((mut fut, waker)) = taken else {
            return;
        };
        waker.queued.store(false, Ordering::Release);
        let w = Waker::from(waker);
        let mut cx = Context::from_waker(&w);
        match fut.as_mut().poll(&mut cx) {
            Poll::Pending => {
                if let Some(Some(slot)) = self.slots.borrow_mut().get_mut(id) {
                    slot.future = Some(fut);
                }
            }
            Poll::Ready(()) => {
                self.slots.borrow_mut()[id] = None;
                self.free.borrow_mut().push(id);
                drop(fut);
            }
        }
    }

    /// Drops every task (at loop shutdown).
    pub(crate) fn clear(&self) {
        let all: Vec<_> = self.slots.borrow_mut().drain(..).collect();
        self.free.borrow_mut().clear();
        drop(all);
    }
}

/// Shared state of a spawned task's result.
struct JoinState<T> {
    result: Option<T>,
    waker: Option<Waker>,
}

/// Handle to a task spawned with [`spawn_local`](super::spawn_local); awaiting it yields
/// the task's output. Dropping the handle detaches the task (it keeps running).
pub struct JoinHandle<T> {
    state: Rc<RefCell<JoinState<T>>>,
}

impl<T> JoinHandle<T> {
    /// True once the task has finished.
    pub fn is_finished(&self) -> bool {
        self.state.borrow().result.is_some()
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut st = self.state.borrow_mut();
        match st.result.take() {
            Some(v) => Poll::Ready(v),
            None => {
                st.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Wraps `fut` so that its output lands in a [`JoinHandle`].
pub(crate) fn with_join<F>(fut: F) -> (LocalTask, JoinHandle<F::Output>)
where
    F: Future + 'static,
    F::Output: 'static,
{
    let state = Rc::new(RefCell::new(JoinState {
        result: None,
        waker: None,
    }));
    let st = state.clone();
    let task = Box::pin(async move {
        let v = fut.await;
        let waker = {
            let mut s = st.borrow_mut();
            s.result = Some(v);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    });
    (task, JoinHandle { state })
}
