//! A shared pool of worker threads for CPU-bound work (compression, checksums) that
//! must not stall an event loop. [`run_blocking`] queues a closure and returns a
//! future that completes on the caller's loop when the closure has run.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};

use futures::channel::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// The pool: one worker per CPU (at most 16), started on first use.
struct Pool {
    jobs: Mutex<Sender<Job>>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(16);
        for i in 0..n {
            let rx = rx.clone();
            let _ = std::thread::Builder::new()
                .name(format!("oxemu-cpu{i}"))
                .spawn(move || worker(&rx));
        }
        Pool {
            jobs: Mutex::new(tx),
        }
    })
}

fn worker(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = match rx.lock() {
            Ok(r) => r.recv(),
            Err(_) => return,
        };
        match job {
            // A panicking job drops its result sender; the waiter sees an error.
            Ok(job) => drop(catch_unwind(AssertUnwindSafe(job))),
            Err(_) => return,
        }
    }
}

/// Runs `f` on the CPU worker pool and waits for its result without blocking the
/// event loop. Fails only if `f` panicked (or no worker thread could be started).
pub async fn run_blocking<F, T>(f: F) -> io::Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    let sent = pool()
        .jobs
        .lock()
        .map_err(|_| io::Error::other("CPU worker pool is poisoned"))?
        .send(job);
    if sent.is_err() {
        return Err(io::Error::other("CPU worker pool has stopped"));
    }
    rx.await
        .map_err(|_| io::Error::other("a CPU worker job panicked or was dropped"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventLoop;

    #[test]
    fn jobs_run_off_the_loop_and_panics_become_errors() {
        let lp = EventLoop::with_defaults().unwrap();
        let me = std::thread::current().id();
        lp.block_on(async move {
            let (v, other) = run_blocking(move || (6 * 7, std::thread::current().id() != me))
                .await
                .unwrap();
            assert_eq!(v, 42);
            assert!(other);
            let jobs: Vec<_> = (0..32u64).map(|i| run_blocking(move || i * i)).collect();
            let got: Vec<u64> = futures::future::join_all(jobs)
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
            assert_eq!(got, (0..32u64).map(|i| i * i).collect::<Vec<_>>());
            let e = run_blocking(|| -> u32 { panic!("job fails") }).await;
            assert!(e.is_err());
            // The pool keeps working after a job panicked.
            assert_eq!(run_blocking(|| 1).await.unwrap(), 1);
        });
    }
}
