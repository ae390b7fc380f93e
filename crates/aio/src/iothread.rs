//! IoThreads: named OS threads that each run an [`EventLoop`], as QEMU's
//! `--object iothread,id=...`.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::thread::JoinHandle as ThreadJoin;

use super::executor::ReadyQueue;
use super::{EventLoop, EventLoopConfig};

/// A `Send + Sync` handle that posts work to an event loop from any thread.
#[derive(Clone)]
pub struct IoThreadHandle {
    queue: Arc<ReadyQueue>,
}

impl std::fmt::Debug for IoThreadHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IoThreadHandle")
    }
}

impl IoThreadHandle {
    pub(crate) fn new(queue: Arc<ReadyQueue>) -> Self {
        IoThreadHandle { queue }
    }

    /// Runs `make()` on the loop's thread and spawns the future it returns there. The
    /// closure is `Send`; the future it builds need not be.
    pub fn spawn<F, Fut>(&self, make: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.queue.post(Box::new(move || {
            super::spawn_local(make());
        }));
    }

    /// Like [`Self::spawn`], and returns a future (usable on any executor or thread)
    /// that resolves to the task's output. Resolves to `None` if the loop stopped first.
    pub fn spawn_with_result<F, Fut, T>(&self, make: F) -> futures::channel::oneshot::Receiver<T>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = futures::channel::oneshot::channel();
        self.spawn(move || async move {
            let _ = tx.send(make().await);
        });
        rx
    }

    /// Runs the task built by `make` on the loop and blocks the calling thread (which
    /// must not be the loop's own thread) until it finishes. `None` if the loop stopped
    /// before the task completed.
    pub fn run<F, Fut, T>(&self, make: F) -> Option<T>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        futures::executor::block_on(self.spawn_with_result(make)).ok()
    }

    /// Asks the loop to leave `run`. Tasks still pending are dropped with the loop.
    pub fn stop(&self) {
        self.queue.stop();
    }
}

/// A named thread running an event loop until stopped or dropped.
pub struct IoThread {
    name: String,
    handle: IoThreadHandle,
    thread: Option<ThreadJoin<()>>,
}

impl IoThread {
    /// Starts a thread named `name` with a loop configured by `cfg`.
    pub fn spawn(name: &str, cfg: EventLoopConfig) -> io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || match EventLoop::new(cfg) {
                Ok(lp) => {
                    let _ = tx.send(Ok(lp.handle()));
                    lp.run();
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            })?;
        let handle = rx
            .recv()
            .map_err(|_| io::Error::other("iothread exited during start-up"))??;
        Ok(IoThread {
            name: name.to_string(),
            handle,
            thread: Some(thread),
        })
    }

    /// The id given at creation.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A handle for posting work to this thread.
    pub fn handle(&self) -> IoThreadHandle {
        self.handle.clone()
    }

    /// Stops the loop and joins the thread.
    pub fn join(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.handle.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for IoThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoThread")
            .field("name", &self.name)
            .finish()
    }
}
