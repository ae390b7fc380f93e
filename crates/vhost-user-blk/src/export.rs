//! The export: a listening socket served one frontend at a time, with reconnects.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use oxemu_block::export::BlockExport;
use oxemu_block::{BlockDriver, EventLoop};
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::backend::BlkBackend;
use crate::request::BlkConfig;

/// Options of a `vhost-user-blk` export (QEMU's `BlockExportOptionsVhostUserBlk`).
#[derive(Clone, Debug)]
pub struct VhostUserBlkOptions {
    /// Export id.
    pub id: String,
    /// Exported node's name.
    pub node_name: String,
    /// Unix socket path to listen on.
    pub socket: PathBuf,
    /// Logical block size: a power of two from 512 to 32768 (default 512).
    pub logical_block_size: u32,
    /// Number of virtqueues (default 1).
    pub num_queues: u16,
    /// Allow writes.
    pub writable: bool,
    /// Device id returned by GET_ID (truncated to 20 bytes).
    pub serial: String,
}

impl VhostUserBlkOptions {
    /// Defaults as in QEMU for `id`, `node_name` and `socket`.
    pub fn new(id: &str, node_name: &str, socket: impl Into<PathBuf>) -> Self {
        VhostUserBlkOptions {
            id: id.into(),
            node_name: node_name.into(),
            socket: socket.into(),
            logical_block_size: 512,
            num_queues: 1,
            writable: false,
            serial: node_name.into(),
        }
    }
}

/// A running vhost-user-blk export.
pub struct VhostUserBlkExport {
    opts: VhostUserBlkOptions,
    backend: BlkBackend,
    stopping: Arc<AtomicBool>,
    connected: Arc<AtomicBool>,
    conn: Arc<Mutex<Option<vhost_user_backend::ShutdownHandle>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// A duplicate of the listening socket: `shutdown` shuts it down to wake the
    /// accepting thread even when the socket file (or its directory) is gone.
    listen_fd: OwnedFd,
}

impl std::fmt::Debug for VhostUserBlkExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserBlkExport")
            .field("opts", &self.opts)
            .finish()
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl VhostUserBlkExport {
    /// Validates the options, binds the socket and starts serving `node`.
    pub fn start(opts: VhostUserBlkOptions, node: Arc<dyn BlockDriver>) -> io::Result<Arc<Self>> {
        let lbs = opts.logical_block_size;
        if !(512..=32768).contains(&lbs) || !lbs.is_power_of_two() {
            return Err(invalid(format!(
                "Invalid parameter 'logical-block-size': {lbs} (must be a power of 2 between 512 and 32768)"
            )));
        }
        if opts.num_queues == 0 || opts.num_queues > 64 {
            return Err(invalid(format!(
                "Invalid parameter 'num-queues': {} (1 to 64)",
                opts.num_queues
            )));
        }
        if opts.writable && node.info().read_only {
            return Err(invalid("Cannot export read-only node as writable".into()));
        }
        let size = node.size() / lbs as u64 * lbs as u64;
        let cfg = BlkConfig {
            capacity: size,
            block_size: lbs,
            seg_max: 126, // queue size 128 minus header and status, as QEMU
            // seg_max * size_max must fit SeaBIOS's 16-bit block count (8 MiB here).
            size_max: 65536,
            num_queues: opts.num_queues,
            writeback: true,
            max_discard_sectors: (1u32 << 30) / 512,
        };
        let backend = BlkBackend::new(node, cfg, opts.writable, &opts.serial);
        let mut listener = Listener::new(&opts.socket, true).map_err(|e| {
            io::Error::other(format!(
                "Failed to bind socket to {}: {e}",
                opts.socket.display()
            ))
        })?;
        // SAFETY: the listener's descriptor is open for the duration of this borrow.
        let listen_fd =
            unsafe { BorrowedFd::borrow_raw(listener.as_raw_fd()) }.try_clone_to_owned()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let connected = Arc::new(AtomicBool::new(false));
        let conn = Arc::new(Mutex::new(None));
        let (b, s, c, h) = (
            backend.clone(),
            stopping.clone(),
            connected.clone(),
            conn.clone(),
        );
        let name = format!("vhost-user-blk-{}", opts.id);
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                while !s.load(Ordering::SeqCst) {
                    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
                    let mut daemon = match VhostUserDaemon::new(name.clone(), b.clone(), mem) {
                        Ok(d) => d,
                        Err(e) => {
                            tracing::error!("{name}: {e}");
                            return;
                        }
                    };
                    b.set_handlers(daemon.get_epoll_handlers());
                    if let Err(e) = daemon.start(&mut listener) {
                        tracing::warn!("{name}: accepting a frontend failed: {e}");
                        continue;
                    }
                    // A device failed on the previous connection works again.
                    b.reset_broken();
                    *h.lock().unwrap_or_else(|p| p.into_inner()) = daemon.shutdown_handle();
                    c.store(true, Ordering::SeqCst);
                    if let Err(e) = daemon.wait() {
                        tracing::info!("{name}: frontend connection ended: {e}");
                    }
                    c.store(false, Ordering::SeqCst);
                    *h.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    for eh in daemon.get_epoll_handlers() {
                        eh.send_exit_event();
                    }
                    b.set_handlers(Vec::new());
                }
            })?;
        Ok(Arc::new(VhostUserBlkExport {
            opts,
            backend,
            stopping,
            connected,
            conn,
            thread: Mutex::new(Some(thread)),
            listen_fd,
        }))
    }

    /// The options the export was started with.
    pub fn options(&self) -> &VhostUserBlkOptions {
        &self.opts
    }
}

impl BlockExport for VhostUserBlkExport {
    fn id(&self) -> &str {
        &self.opts.id
    }

    fn node_name(&self) -> &str {
        &self.opts.node_name
    }

    fn export_type(&self) -> &'static str {
        "vhost-user-blk"
    }

    fn in_use(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    fn shutdown(&self, hard: bool) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        if hard {
            if let Some(h) = self.conn.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                h.shutdown();
            }
        }
        // Wake a thread blocked in accept(2): shutdown(2) on the listening socket makes
        // it fail, with no connection through the socket file needed.
        // SAFETY: shutdown(2) on a descriptor we own.
        unsafe { libc::shutdown(self.listen_fd.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
        // Everything accepted has completed (stop_vring or thread exit drained it);
        // make it durable.
        if let Ok(lp) = EventLoop::with_defaults() {
            let node = self.backend.0.node().clone();
            if let Err(e) = lp.block_on(async move { node.flush().await }) {
                tracing::warn!(
                    "vhost-user-blk {}: flush at shutdown failed: {e}",
                    self.opts.id
                );
            }
        }
        let _ = std::fs::remove_file(&self.opts.socket);
    }
}
