//! The vhost-user backend: virtqueue processing on oxemu event loops embedded in the
//! vring worker threads of `vhost-user-backend`.
//!
//! Each queue has its own worker thread. On the first kick, the thread creates an
//! [`EventLoop`] and registers the loop's notify eventfd with the thread's epoll
//! handler. A kick pops every available chain, parses it, and spawns one task per
//! request that does zero-copy I/O between guest memory and the block node; ring
//! completions (or thread-pool wake-ups) make the notify eventfd readable, and the
//! worker runs the loop, which completes requests into the used ring.

use std::cell::RefCell;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oxemu_block::{
    BlockDriver, EventLoop, EventLoopConfig, IoVec, IoVecMut, WriteFlags, ZeroFlags,
};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringEpollHandler, VringRwLock, VringT};
use virtio_queue::QueueOwnedT;
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::request::{
    features as f, parse_request, status, BlkConfig, BlkRequest, Desc, Limits, Op, ID_BYTES,
};

/// Largest queue the frontend may configure.
pub const MAX_QUEUE_SIZE: usize = 1024;

/// How long `GET_VRING_BASE` (stop_vring) waits for a queue's requests in flight.
/// The ring is never handed back with requests still in flight: past this time the
/// device is failed instead (see [`BlkBackend::is_broken`]) and the message fails,
/// which ends the frontend connection.
pub const STOP_VRING_TIMEOUT: Duration = Duration::from_secs(30);

type Mem = GuestMemoryAtomic<GuestMemoryMmap>;

/// State shared by all queues of one export.
pub struct Inner {
    node: Arc<dyn BlockDriver>,
    config: Mutex<BlkConfig>,
    limits: Limits,
    serial: [u8; ID_BYTES],
    event_idx: AtomicBool,
    writethrough: AtomicBool,
    mem: Mutex<Option<Mem>>,
    handlers: Mutex<Vec<Arc<VringEpollHandler<BlkBackend>>>>,
    in_flight: Vec<AtomicUsize>,
    /// Bumped when the device is failed: requests started under an older value
    /// never touch guest memory or the ring again when they complete.
    generation: AtomicUsize,
    /// The device failed (requests did not drain on stop); until the next
    /// connection, no request is processed.
    broken: AtomicBool,
    /// See [`STOP_VRING_TIMEOUT`] (shorter in tests).
    stop_timeout: Mutex<Duration>,
    /// Per queue: used entries were added since the last guest notification.
    unsignalled: Vec<AtomicBool>,
}

/// The `VhostUserBackend` of a vhost-user-blk export (cheap to clone).
#[derive(Clone)]
pub struct BlkBackend(pub(crate) Arc<Inner>);

thread_local! {
    static LOOP: RefCell<Option<EventLoop>> = const { RefCell::new(None) };
}

impl Inner {
    /// The exported node.
    pub fn node(&self) -> &Arc<dyn BlockDriver> {
        &self.node
    }
}

impl BlkBackend {
    /// A backend for `node`.
    pub fn new(
        node: Arc<dyn BlockDriver>,
        config: BlkConfig,
        writable: bool,
        serial: &str,
    ) -> Self {
        let mut id = [0u8; ID_BYTES];
        let n = serial.len().min(ID_BYTES);
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        let limits = Limits {
            capacity: config.capacity,
            block_size: config.block_size,
            seg_max: config.seg_max,
            size_max: config.size_max,
            writable,
            max_discard_sectors: config.max_discard_sectors,
        };
        BlkBackend(Arc::new(Inner {
            node,
            config: Mutex::new(config),
            limits,
            serial: id,
            event_idx: AtomicBool::new(false),
            writethrough: AtomicBool::new(false),
            mem: Mutex::new(None),
            handlers: Mutex::new(Vec::new()),
            in_flight: (0..config.num_queues)
                .map(|_| AtomicUsize::new(0))
                .collect(),
            generation: AtomicUsize::new(0),
            broken: AtomicBool::new(false),
            stop_timeout: Mutex::new(STOP_VRING_TIMEOUT),
            unsignalled: (0..config.num_queues)
                .map(|_| AtomicBool::new(false))
                .collect(),
        }))
    }

    /// Sets the epoll handlers of the current connection's worker threads.
    pub(crate) fn set_handlers(&self, h: Vec<Arc<VringEpollHandler<BlkBackend>>>) {
        *self.0.handlers.lock().unwrap_or_else(|p| p.into_inner()) = h;
    }

    /// True once the device was failed because requests in flight did not finish
    /// when the frontend stopped a ring; cleared when a new frontend connects.
    pub fn is_broken(&self) -> bool {
        self.0.broken.load(Ordering::SeqCst)
    }

    /// Sets how long stopping a ring waits for its requests (default
    /// [`STOP_VRING_TIMEOUT`]).
    pub fn set_stop_timeout(&self, t: Duration) {
        *self
            .0
            .stop_timeout
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = t;
    }

    /// A new frontend connection starts with a working device.
    pub(crate) fn reset_broken(&self) {
        self.0.broken.store(false, Ordering::SeqCst);
    }

    /// Requests in flight on all queues.
    pub fn in_flight(&self) -> usize {
        self.0
            .in_flight
            .iter()
            .map(|a| a.load(Ordering::Acquire))
            .sum()
    }

    fn notify_event(&self, thread: usize) -> u16 {
        (self.0.in_flight.len() + 1 + thread) as u16
    }

    /// Runs `f` with this thread's loop, creating and registering it on first use.
    fn with_loop<R>(&self, thread: usize, f: impl FnOnce(&EventLoop) -> R) -> io::Result<R> {
        LOOP.with(|l| {
            let mut l = l.borrow_mut();
            if l.is_none() {
                let lp = EventLoop::new(EventLoopConfig::default())?;
                let fd = lp.notify_fd()?;
                let handlers = self.0.handlers.lock().unwrap_or_else(|p| p.into_inner());
                let h = handlers
                    .get(thread)
                    .ok_or_else(|| io::Error::other("no epoll handler for this thread"))?;
                h.register_listener(fd, EventSet::IN, self.notify_event(thread) as u64)?;
                *l = Some(lp);
            }
            Ok(f(l.as_ref().expect("created above")))
        })
    }

    /// Pops every available chain of `vring` and starts its request.
    fn process_queue(&self, q: usize, vring: &VringRwLock, lp: &EventLoop) -> io::Result<()> {
        if self.is_broken() {
            // A failed device takes no requests until the frontend reconnects.
            return Ok(());
        }
        let Some(atomic) = self.0.mem.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            tracing::warn!("vhost-user-blk: kick on queue {q} before the memory table");
            return Ok(());
        };
        let mem = atomic.memory().into_inner();
        let chains: Vec<_> = {
            let mut st = vring.get_mut();
            let it = st
                .get_queue_mut()
                .iter(atomic.memory())
                .map_err(|e| io::Error::other(format!("virtqueue {q}: {e}")))?;
            it.collect()
        };
        tracing::trace!("vhost-user-blk: queue {q}: {} chains", chains.len());
        let max_descs = self.0.limits.seg_max as usize + 3;
        for chain in chains {
            let head = chain.head_index();
            let mut descs = Vec::new();
            let mut too_long = false;
            for d in chain.clone() {
                if descs.len() == max_descs {
                    too_long = true;
                    break;
                }
                descs.push(Desc {
                    addr: d.addr().0,
                    len: d.len(),
                    write: d.is_write_only(),
                });
            }
            let parsed = if too_long {
                Err(crate::request::ParseError {
                    status_addr: None,
                    status: status::IOERR,
                    reason: format!("descriptor chain longer than {max_descs}"),
                })
            } else {
                parse_request(&descs, &mem, &self.0.limits)
            };
            tracing::trace!("vhost-user-blk: queue {q} head {head}: descriptors {descs:?}");
            match parsed {
                Ok(req) => {
                    self.0.in_flight[q].fetch_add(1, Ordering::AcqRel);
                    let me = self.clone();
                    let vring = vring.clone();
                    let mem = mem.clone();
                    let generation = self.0.generation.load(Ordering::SeqCst);
                    lp.spawn(async move {
                        let (st, written) = me.execute(&req, &mem).await;
                        tracing::trace!("vhost-user-blk: queue {q} head {head}: {:?} data {:?} -> status {st}, {written} bytes", req.op, req.data);
                        if me.0.generation.load(Ordering::SeqCst) == generation {
                            let _ = mem.write_obj(st, GuestAddress(req.status_addr));
                            me.complete(q, &vring, head, written + 1);
                        } else {
                            tracing::warn!("vhost-user-blk: queue {q} head {head}: request finished after the device failed; dropped");
                        }
                        me.0.in_flight[q].fetch_sub(1, Ordering::AcqRel);
                    });
                }
                Err(e) => {
                    tracing::debug!("vhost-user-blk: bad request on queue {q} {descs:?}: {e}");
                    let used = match e.status_addr {
                        Some(a) => u32::from(mem.write_obj(e.status, GuestAddress(a)).is_ok()),
                        None => 0,
                    };
                    self.complete(q, vring, head, used);
                }
            }
        }
        Ok(())
    }

    /// Puts a finished request on the used ring. The guest is notified once per loop
    /// run for all requests completed in it (see [`Self::notify_guests`]).
    fn complete(&self, q: usize, vring: &VringRwLock, head: u16, len: u32) {
        if vring.add_used(head, len).is_ok() {
            self.0.unsignalled[q].store(true, Ordering::Release);
        }
    }

    /// Signals the call eventfd of every queue with new used entries, if the driver
    /// wants a notification (EVENT_IDX).
    fn notify_guests(&self, vrings: &[VringRwLock], thread_id: usize) {
        for (local, vring) in vrings.iter().enumerate() {
            let q = thread_id + local;
            if self
                .0
                .unsignalled
                .get(q)
                .is_some_and(|u| u.swap(false, Ordering::AcqRel))
                && vring.needs_notification().unwrap_or(true)
            {
                let _ = vring.signal_used_queue();
            }
        }
    }

    /// Runs one request; returns the status and the bytes written to the guest.
    async fn execute(&self, req: &BlkRequest, mem: &GuestMemoryMmap) -> (u8, u32) {
        let node = &self.0.node;
        let ok = |r: io::Result<()>| match r {
            Ok(()) => status::OK,
            Err(e) => {
                tracing::debug!("vhost-user-blk: I/O error: {e}");
                status::IOERR
            }
        };
        match req.op {
            Op::Read { offset } => {
                let mut iov = IoVecMut::new();
                for &(a, l) in &req.data {
                    let Ok(s) = mem.get_slice(GuestAddress(a), l as usize) else {
                        return (status::IOERR, 0);
                    };
                    // SAFETY: the range was checked to lie in guest memory, which `mem`
                    // keeps mapped until the request completes; the guest gave it to the
                    // device for writing until we return it in the used ring.
                    unsafe { iov.push_raw(s.ptr_guard_mut().as_ptr(), l as usize) };
                }
                let n = iov.len() as u32;
                let st = ok(node.readv(offset, &mut iov).await);
                (st, if st == status::OK { n } else { 0 })
            }
            Op::Write { offset } => {
                let mut iov = IoVec::new();
                for &(a, l) in &req.data {
                    let Ok(s) = mem.get_slice(GuestAddress(a), l as usize) else {
                        return (status::IOERR, 0);
                    };
                    // SAFETY: as above; the device only reads this range.
                    unsafe { iov.push_raw(s.ptr_guard_mut().as_ptr(), l as usize) };
                }
                let fua = self.0.writethrough.load(Ordering::Relaxed);
                (ok(node.writev(offset, &iov, WriteFlags { fua }).await), 0)
            }
            Op::Flush => (ok(node.flush().await), 0),
            Op::Discard { offset, len } => (ok(node.discard(offset, len).await), 0),
            Op::WriteZeroes { offset, len, unmap } => {
                let fua = self.0.writethrough.load(Ordering::Relaxed);
                (
                    ok(node
                        .write_zeroes(
                            offset,
                            len,
                            ZeroFlags {
                                may_unmap: unmap,
                                fua,
                                ..Default::default()
                            },
                        )
                        .await),
                    0,
                )
            }
            Op::GetId => {
                let mut written = 0u32;
                let mut src = &self.0.serial[..];
                for &(a, l) in &req.data {
                    let n = (l as usize).min(src.len());
                    if mem.write_slice(&src[..n], GuestAddress(a)).is_err() {
                        return (status::IOERR, written);
                    }
                    src = &src[n..];
                    written += n as u32;
                }
                (status::OK, written)
            }
        }
    }
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        self.0.in_flight.len()
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        let mut v = f::VERSION_1
            | f::RING_INDIRECT_DESC
            | f::RING_EVENT_IDX
            | f::PROTOCOL_FEATURES
            | f::SIZE_MAX
            | f::SEG_MAX
            | f::BLK_SIZE
            | f::TOPOLOGY
            | f::FLUSH
            | f::CONFIG_WCE
            | f::MQ;
        if self.0.limits.writable {
            v |= f::DISCARD | f::WRITE_ZEROES;
        } else {
            v |= f::RO;
        }
        v
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&self, enabled: bool) {
        self.0.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cfg = self
            .0
            .config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .to_bytes();
        let start = (offset as usize).min(cfg.len());
        let end = start.saturating_add(size as usize).min(cfg.len());
        let mut v = cfg[start..end].to_vec();
        v.resize(size as usize, 0);
        v
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // Only `writeback` (offset 32) is writable, with CONFIG_WCE.
        if offset == 32 && buf.len() == 1 {
            let wb = buf[0] != 0;
            self.0
                .config
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .writeback = wb;
            self.0.writethrough.store(!wb, Ordering::Relaxed);
            return Ok(());
        }
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    }

    fn update_memory(&self, mem: Mem) -> io::Result<()> {
        *self.0.mem.lock().unwrap_or_else(|p| p.into_inner()) = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // Lets the handler stop its worker threads when a connection ends.
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.num_queues()).map(|q| 1u64 << q).collect()
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // Requests already accepted finish before the frontend takes the ring back.
        let timeout = *self
            .0
            .stop_timeout
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let deadline = Instant::now() + timeout;
        let Some(c) = self.0.in_flight.get(queue_index as usize) else {
            return Ok(());
        };
        while c.load(Ordering::Acquire) > 0 {
            if Instant::now() >= deadline {
                // Never give the ring back with requests in flight: fail the device.
                // Their completions are dropped (the generation changes), no new
                // request is taken, and the error ends the frontend connection.
                self.0.broken.store(true, Ordering::SeqCst);
                self.0.generation.fetch_add(1, Ordering::SeqCst);
                let n = c.load(Ordering::Acquire);
                tracing::error!(
                    "vhost-user-blk: queue {queue_index}: {n} requests still in flight after {timeout:?}; failing the device"
                );
                return Err(io::Error::other(format!(
                    "queue {queue_index}: {n} requests still in flight after {timeout:?}; device failed"
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        // `vrings` holds this thread's queues only, and `device_event` indexes it. With
        // one queue per thread (queues_per_thread), the queue number is the thread's.
        let local = device_event as usize;
        let q = thread_id + local;
        tracing::trace!("vhost-user-blk: event {device_event} on thread {thread_id}");
        if local >= vrings.len() {
            // The notify eventfd of this thread's loop.
            self.with_loop(thread_id, |lp| lp.run_nonblocking())?;
            self.notify_guests(vrings, thread_id);
            return Ok(());
        }
        let vring = &vrings[local];
        self.with_loop(thread_id, |lp| -> io::Result<()> {
            if self.0.event_idx.load(Ordering::Relaxed) {
                loop {
                    vring
                        .disable_notification()
                        .map_err(|e| io::Error::other(e.to_string()))?;
                    self.process_queue(q, vring, lp)?;
                    if !vring
                        .enable_notification()
                        .map_err(|e| io::Error::other(e.to_string()))?
                    {
                        break;
                    }
                }
            } else {
                self.process_queue(q, vring, lp)?;
            }
            lp.run_nonblocking();
            Ok(())
        })??;
        self.notify_guests(vrings, thread_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> (tempfile::TempDir, BlkBackend) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk.raw");
        std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
        let node =
            oxemu_block::file::FileDriver::open(&oxemu_block::file::FileOptions::new(&p)).unwrap();
        let cfg = BlkConfig {
            capacity: 1 << 20,
            block_size: 512,
            seg_max: 126,
            size_max: 65536,
            num_queues: 1,
            writeback: true,
            max_discard_sectors: 2048,
        };
        (d, BlkBackend::new(Arc::new(node), cfg, true, "t"))
    }

    #[test]
    fn stop_vring_waits_for_requests_in_flight() {
        let (_d, b) = backend();
        b.0.in_flight[0].store(2, Ordering::SeqCst);
        let b2 = b.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            b2.0.in_flight[0].fetch_sub(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(300));
            b2.0.in_flight[0].fetch_sub(1, Ordering::SeqCst);
        });
        let start = Instant::now();
        b.stop_vring(0).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(550));
        assert_eq!(b.in_flight(), 0);
        assert!(!b.is_broken());
        t.join().unwrap();
    }

    #[test]
    fn stop_vring_fails_the_device_instead_of_returning_a_busy_ring() {
        let (_d, b) = backend();
        b.set_stop_timeout(Duration::from_millis(200));
        b.0.in_flight[0].store(1, Ordering::SeqCst);
        let generation = b.0.generation.load(Ordering::SeqCst);
        let e = b.stop_vring(0).unwrap_err();
        assert!(e.to_string().contains("1 requests still in flight"), "{e}");
        assert!(b.is_broken());
        // Completions of requests started before the failure are dropped.
        assert_ne!(b.0.generation.load(Ordering::SeqCst), generation);
        b.reset_broken();
        assert!(!b.is_broken());
    }
}
