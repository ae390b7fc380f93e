//! The NBD server: listeners on an [`IoThread`](oxemu_block::IoThread)'s loop, the
//! export table, and the bookkeeping of connections for `max-connections`,
//! export removal and `stop`.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{TcpListener, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use oxemu_aio::net::Async;
use oxemu_block::export::BlockExport;
use oxemu_block::{BlockDriver, IoThreadHandle};
use rustls::ServerConfig;

use crate::handshake::{ExportDirectory, ExportInfo};
use crate::stream::{Sock, Stream};

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NbdAddr {
    /// A unix-domain socket path (created; removed again by `stop`).
    Unix(PathBuf),
    /// A TCP address; port 0 picks a free port (see [`NbdServer::tcp_port`]).
    Inet {
        /// Host name or address to bind.
        host: String,
        /// Port.
        port: u16,
    },
}

/// Grace period of [`NbdServer::stop`] and of export removal: clients still connected
/// after it are cut off, and after twice it the server stops waiting for them.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Default handshake limit, as QEMU's (`handshake-max-seconds`, qemu-nbd
/// `--handshake-limit`): a client that has not entered transmission this long after
/// connecting is disconnected. See [`NbdServer::set_handshake_limit`].
pub const DEFAULT_HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// Options of `nbd-server-start` / `--nbd-server`.
#[derive(Clone, Debug)]
pub struct NbdServerOptions {
    /// Listening address.
    pub addr: NbdAddr,
    /// TLS configuration; when set, clients must negotiate TLS.
    pub tls: Option<Arc<ServerConfig>>,
    /// Most clients served at once; 0 is unlimited. Further clients wait in the
    /// listen backlog until one disconnects.
    pub max_connections: u32,
}

/// Options of an export of type `nbd`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NbdExportOptions {
    /// Export id (`block-export-add id=`).
    pub id: String,
    /// Node name of the exported node.
    pub node_name: String,
    /// Name clients select (QEMU defaults it to the node name).
    pub name: String,
    /// Description sent in `NBD_INFO_DESCRIPTION` and `NBD_OPT_LIST`.
    pub description: String,
    /// Allow writes.
    pub writable: bool,
    /// Offer the `qemu:allocation-depth` metadata context.
    pub allocation_depth: bool,
}

/// Errors of the server API.
#[derive(Debug, thiserror::Error)]
pub enum NbdServerError {
    /// The listening socket could not be set up.
    #[error("Failed to listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The cause.
        source: io::Error,
    },
    /// An export with this name or id exists.
    #[error("NBD export '{0}' already exists")]
    Duplicate(String),
    /// No export with this id.
    #[error("Export '{0}' is not found")]
    NotFound(String),
    /// The name or description is longer than the protocol allows.
    #[error("NBD export {what} is longer than 4096 bytes")]
    TooLong {
        /// `name` or `description`.
        what: &'static str,
    },
}

struct ConnEntry {
    /// A duplicate of the socket, used only to `shutdown(2)` it from other threads.
    fd: OwnedFd,
    export: Option<String>,
}

#[derive(Default)]
struct ConnTable {
    next_id: u64,
    conns: HashMap<u64, ConnEntry>,
    served: u64,
    accepting: bool,
}

/// State shared between the server object, its loop tasks and its exports.
pub(crate) struct ServerShared {
    exports: Mutex<BTreeMap<String, Arc<NbdExport>>>,
    pub(crate) tls: Option<Arc<ServerConfig>>,
    table: Mutex<ConnTable>,
    changed: Condvar,
    stopping: AtomicBool,
    max_connections: u32,
    /// Handshake limit in milliseconds; 0 is none.
    handshake_ms: AtomicU64,
}

impl ServerShared {
    fn table(&self) -> MutexGuard<'_, ConnTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn exports(&self) -> MutexGuard<'_, BTreeMap<String, Arc<NbdExport>>> {
        self.exports.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The export named `name`, if present.
    pub(crate) fn export(&self, name: &str) -> Option<Arc<NbdExport>> {
        self.exports().get(name).cloned()
    }

    /// Records that connection `id` entered transmission on `export`. False if the
    /// server is stopping (the connection must then close).
    pub(crate) fn attach(&self, id: u64, export: &str) -> bool {
        let mut t = self.table();
        match t.conns.get_mut(&id) {
            Some(e) if !self.stopping.load(Ordering::SeqCst) => {
                e.export = Some(export.to_string());
                true
            }
            _ => false,
        }
    }

    fn register(&self, fd: OwnedFd) -> u64 {
        let mut t = self.table();
        if self.stopping.load(Ordering::SeqCst) {
            // Accepted while `stop` ran: close the connection's input at once, so that
            // it cannot sit idle in the handshake where `stop` no longer looks.
            // SAFETY: shutdown(2) on a descriptor we own.
            unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RD) };
        }
        t.next_id += 1;
        let id = t.next_id;
        t.conns.insert(id, ConnEntry { fd, export: None });
        t.served += 1;
        id
    }

    pub(crate) fn closed(&self, id: u64) {
        self.table().conns.remove(&id);
        self.changed.notify_all();
    }

    fn shutdown_conns(&self, export: Option<&str>, how: i32) {
        Self::shutdown_in(&self.table(), export, how);
    }

    fn shutdown_in(t: &ConnTable, export: Option<&str>, how: i32) {
        for e in t.conns.values() {
            if export.is_none() || e.export.as_deref() == export {
                // SAFETY: shutdown(2) on a descriptor the table owns.
                unsafe { libc::shutdown(e.fd.as_raw_fd(), how) };
            }
        }
    }

    fn wait_until(&self, done: impl FnMut(&ConnTable) -> bool) {
        self.wait_until_deadline(done, None, |_| {});
    }

    /// Waits until `done` holds or `deadline` passes (false then). `tick` runs every
    /// 100 ms with the table locked.
    fn wait_until_deadline(
        &self,
        mut done: impl FnMut(&ConnTable) -> bool,
        deadline: Option<std::time::Instant>,
        mut tick: impl FnMut(&ConnTable),
    ) -> bool {
        let mut t = self.table();
        while !done(&t) {
            let mut step = Duration::from_millis(100);
            if let Some(d) = deadline {
                let now = std::time::Instant::now();
                if now >= d {
                    return false;
                }
                step = step.min(d - now);
            }
            t = self
                .changed
                .wait_timeout(t, step)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            tick(&t);
        }
        true
    }

    fn active(&self) -> usize {
        self.table().conns.len()
    }
}

impl ExportDirectory for ServerShared {
    fn lookup(&self, name: &str) -> Option<ExportInfo> {
        self.export(name).map(|e| e.info())
    }

    fn list(&self) -> Vec<(String, String)> {
        self.exports()
            .values()
            .map(|e| (e.opts.name.clone(), e.opts.description.clone()))
            .collect()
    }
}

/// A running NBD server. Dropping it does not stop it; call [`NbdServer::stop`].
pub struct NbdServer {
    shared: Arc<ServerShared>,
    io: IoThreadHandle,
    addr: BoundAddr,
    unix_path: Option<PathBuf>,
    tcp_port: Option<u16>,
    /// A duplicate of the listening socket: `stop` shuts it down to wake the accept
    /// loop even when a wake-up connection cannot reach it (socket file removed).
    listen_fd: OwnedFd,
    /// Ends the accept loop from any thread.
    abort: futures::future::AbortHandle,
}

impl std::fmt::Debug for NbdServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdServer")
            .field("unix_path", &self.unix_path)
            .field("tcp_port", &self.tcp_port)
            .finish()
    }
}

#[derive(Debug)]
enum BoundAddr {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

fn dup(fd: impl AsFd) -> io::Result<OwnedFd> {
    fd.as_fd().try_clone_to_owned()
}

impl NbdServer {
    /// Binds the listening socket and starts accepting clients on `io`'s loop.
    pub fn start(opts: NbdServerOptions, io: IoThreadHandle) -> Result<NbdServer, NbdServerError> {
        let shared = Arc::new(ServerShared {
            exports: Mutex::new(BTreeMap::new()),
            tls: opts.tls,
            table: Mutex::new(ConnTable {
                accepting: true,
                ..Default::default()
            }),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
            max_connections: opts.max_connections,
            handshake_ms: AtomicU64::new(DEFAULT_HANDSHAKE_LIMIT.as_millis() as u64),
        });
        let listen_err = |source| NbdServerError::Listen {
            addr: match &opts.addr {
                NbdAddr::Unix(p) => p.display().to_string(),
                NbdAddr::Inet { host, port } => format!("{host}:{port}"),
            },
            source,
        };
        let (abort, reg) = futures::future::AbortHandle::new_pair();
        let (bound, unix_path, tcp_port, listen_fd);
        match &opts.addr {
            NbdAddr::Unix(path) => {
                let l = oxemu_aio::net::bind_unix_listener(path).map_err(listen_err)?;
                listen_fd = dup(&l).map_err(listen_err)?;
                bound = BoundAddr::Unix(path.clone());
                unix_path = Some(path.clone());
                tcp_port = None;
                let sh = shared.clone();
                io.spawn(move || accepting(accept_loop_unix(l, sh.clone()), sh, reg));
            }
            NbdAddr::Inet { host, port } => {
                let addr = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(listen_err)?
                    .next()
                    .ok_or_else(|| listen_err(io::ErrorKind::AddrNotAvailable.into()))?;
                let l = TcpListener::bind(addr).map_err(listen_err)?;
                listen_fd = dup(&l).map_err(listen_err)?;
                let local = l.local_addr().map_err(listen_err)?;
                bound = BoundAddr::Tcp(local);
                unix_path = None;
                tcp_port = Some(local.port());
                let sh = shared.clone();
                io.spawn(move || accepting(accept_loop_tcp(l, sh.clone()), sh, reg));
            }
        }
        Ok(NbdServer {
            shared,
            io,
            addr: bound,
            unix_path,
            tcp_port,
            listen_fd,
            abort,
        })
    }

    /// Sets the handshake limit for clients connecting from now on (default
    /// [`DEFAULT_HANDSHAKE_LIMIT`]); zero disables it.
    pub fn set_handshake_limit(&self, limit: Duration) {
        self.shared
            .handshake_ms
            .store(limit.as_millis() as u64, Ordering::SeqCst);
    }

    /// The bound TCP port (useful with port 0).
    pub fn tcp_port(&self) -> Option<u16> {
        self.tcp_port
    }

    /// Adds an export of `node`.
    pub fn add_export(
        &self,
        opts: NbdExportOptions,
        node: Arc<dyn BlockDriver>,
    ) -> Result<Arc<NbdExport>, NbdServerError> {
        if opts.name.len() > crate::proto::MAX_STRING {
            return Err(NbdServerError::TooLong { what: "name" });
        }
        if opts.description.len() > crate::proto::MAX_STRING {
            return Err(NbdServerError::TooLong {
                what: "description",
            });
        }
        let mut ex = self.shared.exports();
        if ex.contains_key(&opts.name) || ex.values().any(|e| e.opts.id == opts.id) {
            return Err(NbdServerError::Duplicate(opts.name));
        }
        let e = Arc::new(NbdExport {
            opts,
            node,
            shared: Arc::downgrade(&self.shared),
            io: self.io.clone(),
            removed: AtomicBool::new(false),
        });
        ex.insert(e.opts.name.clone(), e.clone());
        Ok(e)
    }

    /// Removes the export with id `id` (see [`BlockExport::shutdown`]).
    pub fn remove_export(&self, id: &str, hard: bool) -> Result<(), NbdServerError> {
        let e = self
            .shared
            .exports()
            .values()
            .find(|e| e.opts.id == id)
            .cloned()
            .ok_or_else(|| NbdServerError::NotFound(id.to_string()))?;
        e.shutdown(hard);
        Ok(())
    }

    /// The exports, in name order.
    pub fn exports(&self) -> Vec<Arc<NbdExport>> {
        self.shared.exports().values().cloned().collect()
    }

    /// Clients currently connected.
    pub fn active_connections(&self) -> usize {
        self.shared.active()
    }

    /// Blocks until at least one client has connected and none is connected any more
    /// (qemu-nbd without `--persistent`).
    pub fn wait_for_last_disconnect(&self) {
        self.shared
            .wait_until(|t| t.served > 0 && t.conns.is_empty());
    }

    /// Stops listening, disconnects all clients, waits for their requests to finish
    /// and removes the unix socket. Exports stay attached to the (stopped) server
    /// object; the daemon drops them afterwards. See [`NbdServer::stop_within`].
    pub fn stop(&self) {
        self.stop_within(STOP_GRACE);
    }

    /// [`NbdServer::stop`] in bounded time. First only the clients' input is shut
    /// down: idle connections (in the handshake or between requests) end at once,
    /// and requests in flight finish and send their replies. Connections still open
    /// after `grace` (a client that does not read its replies) are shut down
    /// completely, and after another `grace` the server gives up waiting for them.
    /// Returns false in that last case. Connections accepted while stopping are shut
    /// down as they are registered.
    pub fn stop_within(&self, grace: Duration) -> bool {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // End the accept loop: aborting it works even when no connection can reach
        // the listener (its socket file was removed or replaced), ...
        self.abort.abort();
        // SAFETY: shutdown(2) on our duplicate of the listening socket.
        unsafe { libc::shutdown(self.listen_fd.as_raw_fd(), libc::SHUT_RDWR) };
        // ... and a connection of our own wakes it too; the loop then sees `stopping`.
        match &self.addr {
            BoundAddr::Unix(p) => drop(std::os::unix::net::UnixStream::connect(p)),
            BoundAddr::Tcp(a) => {
                let mut a = *a;
                if a.ip().is_unspecified() {
                    a.set_ip(match a {
                        std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                        std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                    });
                }
                drop(std::net::TcpStream::connect_timeout(
                    &a,
                    Duration::from_secs(1),
                ));
            }
        }
        let idle = |t: &ConnTable| t.conns.is_empty() && !t.accepting;
        self.shared.shutdown_conns(None, libc::SHUT_RD);
        let start = std::time::Instant::now();
        let mut ok = self
            .shared
            .wait_until_deadline(idle, Some(start + grace), |t| {
                ServerShared::shutdown_in(t, None, libc::SHUT_RD)
            });
        if !ok {
            tracing::warn!("nbd: clients still connected after {grace:?}; disconnecting them");
            self.shared.shutdown_conns(None, libc::SHUT_RDWR);
            ok = self
                .shared
                .wait_until_deadline(idle, Some(start + 2 * grace), |t| {
                    ServerShared::shutdown_in(t, None, libc::SHUT_RDWR)
                });
        }
        if !ok {
            tracing::warn!("nbd: giving up on connections that do not close");
        }
        if let Some(p) = &self.unix_path {
            let _ = std::fs::remove_file(p);
        }
        ok
    }
}

async fn wait_for_slot(sh: &ServerShared) {
    while sh.max_connections > 0
        && sh.active() >= sh.max_connections as usize
        && !sh.stopping.load(Ordering::SeqCst)
    {
        oxemu_aio::sleep(Duration::from_millis(5)).await;
    }
}

fn finish_accepting(sh: &ServerShared) {
    sh.table().accepting = false;
    sh.changed.notify_all();
}

fn start_conn(sh: &Arc<ServerShared>, sock: Sock, fd: io::Result<OwnedFd>) {
    let Ok(fd) = fd else { return };
    let id = sh.register(fd);
    let limit = sh.handshake_ms.load(Ordering::SeqCst);
    if limit > 0 {
        oxemu_aio::spawn_local(handshake_timer(sh.clone(), id, limit));
    }
    let sh = sh.clone();
    oxemu_aio::spawn_local(async move {
        crate::conn::serve(sh.clone(), Stream::new(sock), id).await;
        sh.closed(id);
    });
}

/// Disconnects connection `id` if it is still in the handshake after `limit_ms`.
/// Checks every 100 ms, so that it ends soon after the connection or the server.
async fn handshake_timer(sh: Arc<ServerShared>, id: u64, limit_ms: u64) {
    let start = std::time::Instant::now();
    loop {
        let left = Duration::from_millis(limit_ms).saturating_sub(start.elapsed());
        oxemu_aio::sleep(left.min(Duration::from_millis(100))).await;
        if sh.stopping.load(Ordering::SeqCst) {
            return;
        }
        let t = sh.table();
        match t.conns.get(&id) {
            Some(e) if e.export.is_none() => {
                if start.elapsed() >= Duration::from_millis(limit_ms) {
                    tracing::info!("nbd: client did not finish the handshake in {limit_ms} ms; disconnecting it");
                    // SAFETY: shutdown(2) on a descriptor the table owns.
                    unsafe { libc::shutdown(e.fd.as_raw_fd(), libc::SHUT_RDWR) };
                    return;
                }
            }
            _ => return,
        }
    }
}

/// Runs an accept loop until it ends or [`NbdServer::stop`] aborts it.
async fn accepting(
    lp: impl std::future::Future<Output = ()>,
    sh: Arc<ServerShared>,
    reg: futures::future::AbortRegistration,
) {
    let _ = futures::future::Abortable::new(lp, reg).await;
    finish_accepting(&sh);
}

async fn accept_loop_unix(l: UnixListener, sh: Arc<ServerShared>) {
    match Async::new(l) {
        Ok(l) => loop {
            wait_for_slot(&sh).await;
            let r = l.accept().await;
            if sh.stopping.load(Ordering::SeqCst) {
                break;
            }
            match r {
                Ok(s) => {
                    let fd = dup(s.get_ref());
                    start_conn(&sh, Sock::Unix(s), fd);
                }
                Err(e) => tracing::warn!("nbd: accept failed: {e}"),
            }
        },
        Err(e) => tracing::error!("nbd: listener setup failed: {e}"),
    }
}

async fn accept_loop_tcp(l: TcpListener, sh: Arc<ServerShared>) {
    match Async::new(l) {
        Ok(l) => loop {
            wait_for_slot(&sh).await;
            let r = l.accept().await;
            if sh.stopping.load(Ordering::SeqCst) {
                break;
            }
            match r {
                Ok((s, _)) => {
                    let _ = s.get_ref().set_nodelay(true);
                    let fd = dup(s.get_ref());
                    start_conn(&sh, Sock::Tcp(s), fd);
                }
                Err(e) => tracing::warn!("nbd: accept failed: {e}"),
            }
        },
        Err(e) => tracing::error!("nbd: listener setup failed: {e}"),
    }
}

/// One export of a node over NBD.
pub struct NbdExport {
    opts: NbdExportOptions,
    pub(crate) node: Arc<dyn BlockDriver>,
    shared: std::sync::Weak<ServerShared>,
    io: IoThreadHandle,
    removed: AtomicBool,
}

impl std::fmt::Debug for NbdExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdExport")
            .field("opts", &self.opts)
            .finish()
    }
}

impl NbdExport {
    /// The export's options.
    pub fn options(&self) -> &NbdExportOptions {
        &self.opts
    }

    /// What the handshake reports about this export.
    pub fn info(&self) -> ExportInfo {
        ExportInfo {
            name: self.opts.name.clone(),
            description: self.opts.description.clone(),
            size: self.node.size(),
            writable: self.opts.writable,
            allocation_depth: self.opts.allocation_depth,
            min_block: self.node.request_alignment().max(1),
        }
    }

    fn clients(&self, sh: &ServerShared) -> usize {
        let t = sh.table();
        t.conns
            .values()
            .filter(|e| e.export.as_deref() == Some(self.opts.name.as_str()))
            .count()
    }
}

impl BlockExport for NbdExport {
    fn id(&self) -> &str {
        &self.opts.id
    }

    fn node_name(&self) -> &str {
        &self.opts.node_name
    }

    fn export_type(&self) -> &'static str {
        "nbd"
    }

    fn in_use(&self) -> bool {
        self.shared
            .upgrade()
            .is_some_and(|sh| self.clients(&sh) > 0)
    }

    /// Must not be called on the server's own IoThread (it blocks until that loop has
    /// finished the export's requests). Bounded: a soft removal (input shut down,
    /// requests in flight finish) becomes a hard one after [`STOP_GRACE`], and after
    /// twice that the export stops waiting for its clients.
    fn shutdown(&self, hard: bool) {
        if self.removed.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(sh) = self.shared.upgrade() {
            sh.exports().remove(&self.opts.name);
            let name = self.opts.name.clone();
            let mine =
                |t: &ConnTable| !t.conns.values().any(|e| e.export.as_deref() == Some(&name));
            let start = std::time::Instant::now();
            let how = if hard { libc::SHUT_RDWR } else { libc::SHUT_RD };
            sh.shutdown_conns(Some(&self.opts.name), how);
            let mut ok = sh.wait_until_deadline(mine, Some(start + STOP_GRACE), |t| {
                ServerShared::shutdown_in(t, Some(&name), how)
            });
            if !ok {
                tracing::warn!(
                    "nbd: clients of export '{}' still connected after {STOP_GRACE:?}; disconnecting them",
                    self.opts.id
                );
                ok = sh.wait_until_deadline(mine, Some(start + 2 * STOP_GRACE), |t| {
                    ServerShared::shutdown_in(t, Some(&name), libc::SHUT_RDWR)
                });
            }
            if !ok {
                tracing::warn!(
                    "nbd: export '{}': giving up on connections that do not close",
                    self.opts.id
                );
            }
        }
        let node = self.node.clone();
        let r = self.io.run(move || async move { node.flush().await });
        if let Some(Err(e)) = r {
            tracing::warn!("nbd: flush of export '{}' failed: {e}", self.opts.id);
        }
    }
}
