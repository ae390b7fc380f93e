//! `aio=threads`: a bounded, process-wide pool of worker threads.
//!
//! Workers are started on demand up to [`MAX_WORKERS`] (QEMU's thread-pool limit of 64)
//! and exit after [`IDLE_TIMEOUT`] without work. A finished request wakes its task; if
//! the loop sleeps, the waker kicks the loop's eventfd, which the ring watches.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::{Req, Target};

/// Upper bound on worker threads.
pub const MAX_WORKERS: usize = 64;
/// Idle workers exit after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce() + Send>;

struct Pool {
    state: Mutex<PoolState>,
    cv: Condvar,
}

#[derive(Default)]
struct PoolState {
    jobs: VecDeque<Job>,
    workers: usize,
    idle: usize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        state: Mutex::new(PoolState::default()),
        cv: Condvar::new(),
    })
}

impl Pool {
    fn submit(&'static self, job: Job) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.jobs.push_back(job);
        if st.idle == 0 && st.workers < MAX_WORKERS {
            st.workers += 1;
            let spawned = std::thread::Builder::new()
                .name("oxemu-aio-worker".into())
                .spawn(move || self.worker());
            if spawned.is_err() {
                st.workers -= 1;
                if st.workers == 0 {
                    // No thread could be started at all: run inline rather than hang.
                    let job = st.jobs.pop_back();
                    drop(st);
                    if let Some(j) = job {
                        j();
                    }
                }
            }
        } else {
            self.cv.notify_one();
        }
    }

    fn worker(&'static self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(job) = st.jobs.pop_front() {
                drop(st);
                job();
                st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.idle += 1;
            let (guard, to) = self
                .cv
                .wait_timeout(st, IDLE_TIMEOUT)
                .unwrap_or_else(|p| p.into_inner());
            st = guard;
            st.idle -= 1;
            if to.timed_out() && st.jobs.is_empty() {
                st.workers -= 1;
                return;
            }
        }
    }
}

#[derive(Default)]
struct Completion {
    state: Mutex<(Option<i64>, Option<Waker>)>,
    cv: Condvar,
}

/// Raw request data moved to a worker. The submitting future keeps the memory behind
/// the iovecs alive until the worker has signalled completion (its Drop waits).
struct SendReq {
    t: Target,
    kind: u8,
    off: u64,
    len: u64,
    mode: i32,
    iov: Vec<libc::iovec>,
}
// SAFETY: see the struct comment; the pointers are only used while the owner waits.
unsafe impl Send for SendReq {}

impl SendReq {
    fn new(t: Target, req: &Req<'_>) -> Self {
        let (kind, off, len, mode, iov) = match *req {
            Req::Read { off, iov } => (0, off, 0, 0, iov.to_vec()),
            Req::Write { off, iov } => (1, off, 0, 0, iov.to_vec()),
            Req::Fdatasync => (2, 0, 0, 0, Vec::new()),
            Req::Fallocate { mode, off, len } => (3, off, len, mode, Vec::new()),
        };
        SendReq {
            t,
            kind,
            off,
            len,
            mode,
            iov,
        }
    }

    fn run(&self) -> i64 {
        let req = match self.kind {
            0 => Req::Read {
                off: self.off,
                iov: &self.iov,
            },
            1 => Req::Write {
                off: self.off,
                iov: &self.iov,
            },
            2 => Req::Fdatasync,
            _ => Req::Fallocate {
                mode: self.mode,
                off: self.off,
                len: self.len,
            },
        };
        super::run_sync(self.t, &req)
    }
}

struct ThreadOp {
    req: Option<SendReq>,
    done: Arc<Completion>,
    submitted: bool,
}

impl Future for ThreadOp {
    type Output = i64;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<i64> {
        if !self.submitted {
            self.submitted = true;
            self.done.state.lock().unwrap_or_else(|p| p.into_inner()).1 = Some(cx.waker().clone());
            let req = self.req.take().expect("request submitted twice");
            let done = self.done.clone();
            pool().submit(Box::new(move || {
                let r = req.run();
                let waker = {
                    let mut st = done.state.lock().unwrap_or_else(|p| p.into_inner());
                    st.0 = Some(r);
                    st.1.take()
                };
                done.cv.notify_all();
                if let Some(w) = waker {
                    w.wake();
                }
            }));
            return Poll::Pending;
        }
        let mut st = self.done.state.lock().unwrap_or_else(|p| p.into_inner());
        match st.0 {
            Some(r) => Poll::Ready(r),
            None => {
                st.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for ThreadOp {
    fn drop(&mut self) {
        if !self.submitted {
            return;
        }
        // The worker may still be using the caller's buffers: wait for it.
        let mut st = self.done.state.lock().unwrap_or_else(|p| p.into_inner());
        while st.0.is_none() {
            st = self.done.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Runs `req` on a pool thread.
pub(crate) async fn execute(t: Target, req: Req<'_>) -> i64 {
    ThreadOp {
        req: Some(SendReq::new(t, &req)),
        done: Arc::new(Completion::default()),
        submitted: false,
    }
    .await
}
