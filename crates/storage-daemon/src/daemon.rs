//! The daemon's state and its QMP commands.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};

use oxemu_block::export::BlockExport;
use oxemu_block::{BlockDriver, EventLoopConfig, IoThread};
use oxemu_nbd::server::{NbdAddr, NbdExportOptions, NbdServer, NbdServerOptions as NbdOpts};
use oxemu_nbd::tls::X509Creds;
use oxemu_qmp::args::from_value;
use oxemu_qmp::{Dispatcher, EventBus, QmpError};
use oxemu_vhost_user_blk::{VhostUserBlkExport, VhostUserBlkOptions};

use crate::nodes::Graph;
use crate::qapi::{
    BlockExportDelArgs, BlockExportOptions, BlockdevDelArgs, NbdServerOptions, ObjectDelArgs,
    ObjectOptions, QueryNamedBlockNodesArgs, SocketAddress,
};

/// A running export.
struct ExportEntry {
    export: Arc<dyn BlockExport>,
    /// Exported writable (for the image locks).
    writable: bool,
}

#[derive(Default)]
struct State {
    graph: Graph,
    exports: BTreeMap<String, ExportEntry>,
    iothreads: BTreeMap<String, IoThread>,
    tls: BTreeMap<String, X509Creds>,
    nbd: Option<NbdServer>,
    nbd_socket: Option<PathBuf>,
}

/// The storage daemon: block graph, exports, objects and the NBD server.
pub struct Daemon {
    state: Mutex<State>,
    /// The loop that runs exports without an `iothread` (QEMU's main loop).
    main_loop: IoThread,
    /// Set by `quit`; the main thread waits on it.
    quit: Arc<(Mutex<bool>, std::sync::Condvar)>,
}

impl Daemon {
    /// A daemon with an empty graph.
    pub fn new() -> std::io::Result<Arc<Self>> {
        // Parse the schema now, not while the first option that needs it is applied.
        crate::schema::schema();
        Ok(Arc::new(Daemon {
            state: Mutex::new(State::default()),
            main_loop: IoThread::spawn("main-loop", EventLoopConfig::default())?,
            quit: Arc::new((Mutex::new(false), std::sync::Condvar::new())),
        }))
    }

    /// Sets the image locks to what the nodes and exports need now, with `extra`
    /// `(node, writable)` exports about to start.
    fn apply_perms(st: &State, extra: Option<(&str, bool)>) -> Result<(), QmpError> {
        let mut ex: Vec<(String, bool)> = st
            .exports
            .values()
            .map(|e| (e.export.node_name().to_string(), e.writable))
            .collect();
        ex.extend(extra.map(|(n, w)| (n.to_string(), w)));
        st.graph.apply_perms(&ex)
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the main thread to shut the daemon down.
    pub fn request_quit(&self) {
        *self.quit.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.quit.1.notify_all();
    }

    /// Blocks until `quit` or a signal asked for shutdown.
    pub fn wait_for_quit(&self) {
        let mut q = self.quit.0.lock().unwrap_or_else(|p| p.into_inner());
        while !*q {
            q = self.quit.1.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// A handle that can request shutdown from another thread.
    pub fn quit_handle(&self) -> Arc<(Mutex<bool>, std::sync::Condvar)> {
        self.quit.clone()
    }

    /// `blockdev-add`.
    pub fn blockdev_add(&self, opts: Value) -> Result<Value, QmpError> {
        crate::schema::check("BlockdevOptions", &opts)?;
        let mut st = self.st();
        let r = st.graph.add(opts);
        // Also after a failed add: an open that failed may have taken locks first.
        let p = Self::apply_perms(&st, None);
        let name = r?;
        if let Err(e) = p {
            let removed = st.graph.remove(&name, |_| false).unwrap_or_default();
            let _ = Self::apply_perms(&st, None);
            drop(st);
            self.close_nodes(removed);
            return Err(e);
        }
        Ok(json!({}))
    }

    /// `blockdev-del`.
    pub fn blockdev_del(&self, args: Value) -> Result<Value, QmpError> {
        let a: BlockdevDelArgs = from_value(args)?;
        let removed = {
            let mut st = self.st();
            let used: Vec<String> = st
                .exports
                .values()
                .map(|e| e.export.node_name().to_string())
                .collect();
            let removed = st
                .graph
                .remove(&a.node_name, |n| used.iter().any(|u| u == n))?;
            let _ = Self::apply_perms(&st, None);
            removed
        };
        self.close_nodes(removed);
        Ok(json!({}))
    }

    fn close_nodes(&self, nodes: Vec<Arc<dyn BlockDriver>>) {
        for n in nodes {
            let r = self
                .main_loop
                .handle()
                .run(move || async move { n.close().await });
            if let Some(Err(e)) = r {
                tracing::warn!("closing node: {e}");
            }
        }
    }

    /// `block-export-add`.
    pub fn block_export_add(&self, args: Value) -> Result<Value, QmpError> {
        // The schema first: it visits the arguments in QEMU's order.
        crate::schema::check("BlockExportOptions", &args)?;
        let o: BlockExportOptions = from_value(args)?;
        // The type is the union's discriminator: QEMU rejects it before anything else.
        if !matches!(o.ty.as_str(), "nbd" | "vhost-user-blk") {
            return Err(QmpError::generic(format!(
                "Parameter 'type' does not accept value '{}'",
                o.ty
            )));
        }
        let mut st = self.st();
        if st.exports.contains_key(&o.id) {
            return Err(QmpError::generic(format!(
                "Block export id '{}' is already in use",
                o.id
            )));
        }
        let node = st.graph.get(&o.node_name).ok_or_else(|| {
            QmpError::generic(format!(
                "Cannot find device='' nor node-name='{}'",
                o.node_name
            ))
        })?;
        let writable = o.writable.unwrap_or(false);
        if writable && node.read_only {
            return Err(QmpError::generic(
                "Cannot export read-only node as writable",
            ));
        }
        let mut driver = node.node.clone();
        if o.writethrough == Some(true) {
            // QEMU turns the export's write cache off: every write is durable when it
            // completes.
            driver = Arc::new(oxemu_block::writethrough::WriteThrough::new(driver));
        }
        // NBD connections run on the daemon's main loop and vhost-user-blk queues on
        // threads of their own: neither can run in an iothread, so `iothread` is
        // refused rather than accepted and ignored. (`fixed-iothread` only matters
        // with `iothread`, as in QEMU, and is accepted.)
        if let Some(io) = &o.iothread {
            return Err(QmpError::generic(format!(
                "Parameter 'iothread' is not supported by oxemu-storage-daemon: {} exports do not run in an iothread (iothread '{io}')",
                o.ty
            )));
        }
        Self::apply_perms(&st, Some((&o.node_name, writable)))?;
        let started = (|| -> Result<Arc<dyn BlockExport>, QmpError> {
            Ok(match o.ty.as_str() {
                "nbd" => {
                    let Some(server) = st.nbd.as_ref() else {
                        return Err(QmpError::generic("NBD server not running"));
                    };
                    if o.bitmaps.as_ref().is_some_and(|b| !b.is_empty()) {
                        return Err(QmpError::generic(
                            "Dirty bitmaps are not supported by oxemu's NBD export",
                        ));
                    }
                    let eo = NbdExportOptions {
                        id: o.id.clone(),
                        node_name: o.node_name.clone(),
                        name: o.name.clone().unwrap_or_else(|| o.node_name.clone()),
                        description: o.description.clone().unwrap_or_default(),
                        writable,
                        allocation_depth: o.allocation_depth.unwrap_or(false),
                    };
                    server
                        .add_export(eo, driver)
                        .map_err(|e| QmpError::generic(e.to_string()))?
                }
                "vhost-user-blk" => {
                    let addr = o
                        .addr
                        .as_ref()
                        .ok_or_else(|| QmpError::generic("Parameter 'addr' is missing"))?;
                    let socket = match SocketAddress::from_value(addr).map_err(QmpError::generic)? {
                        SocketAddress::Unix(p) => p,
                        SocketAddress::Inet { .. } => {
                            return Err(QmpError::generic(
                                "vhost-user-blk exports need a unix socket address",
                            ))
                        }
                    };
                    let mut vo = VhostUserBlkOptions::new(&o.id, &o.node_name, socket);
                    vo.writable = writable;
                    if let Some(n) = o.logical_block_size {
                        vo.logical_block_size = u32::try_from(n).unwrap_or(u32::MAX);
                    }
                    if let Some(n) = o.num_queues {
                        vo.num_queues = u16::try_from(n).unwrap_or(u16::MAX);
                    }
                    VhostUserBlkExport::start(vo, driver).map_err(QmpError::from)?
                }
                other => {
                    return Err(QmpError::generic(format!(
                        "Parameter 'type' does not accept value '{other}'"
                    )))
                }
            })
        })();
        let export = match started {
            Ok(e) => e,
            Err(e) => {
                let _ = Self::apply_perms(&st, None);
                return Err(e);
            }
        };
        st.exports
            .insert(o.id.clone(), ExportEntry { export, writable });
        Ok(json!({}))
    }

    /// `block-export-del`.
    pub fn block_export_del(&self, args: Value, events: &EventBus) -> Result<Value, QmpError> {
        let a: BlockExportDelArgs = from_value(args)?;
        let hard = match a.mode.as_deref() {
            None | Some("safe") => false,
            Some("hard") => true,
            Some(m) => {
                return Err(QmpError::generic(format!(
                    "Parameter 'mode' does not accept value '{m}'"
                )))
            }
        };
        let entry = {
            let mut st = self.st();
            let e = st
                .exports
                .get(&a.id)
                .ok_or_else(|| QmpError::generic(format!("Export '{}' is not found", a.id)))?;
            if !hard && e.export.in_use() {
                return Err(QmpError::generic(format!("export '{}' still in use", a.id)));
            }
            let e = st.exports.remove(&a.id).expect("checked above");
            let _ = Self::apply_perms(&st, None);
            e
        };
        entry.export.shutdown(hard);
        events.emit("BLOCK_EXPORT_DELETED", Some(json!({"id": a.id})));
        Ok(json!({}))
    }

    /// `query-block-exports`.
    pub fn query_block_exports(&self) -> Value {
        let st = self.st();
        Value::Array(
            st.exports
                .iter()
                .map(|(id, e)| {
                    json!({"id": id, "type": e.export.export_type(), "node-name": e.export.node_name(),
                        "shutting-down": false})
                })
                .collect(),
        )
    }

    /// `object-add` / `--object`.
    pub fn object_add(&self, args: Value) -> Result<Value, QmpError> {
        // The schema first: it visits the arguments in QEMU's order.
        crate::schema::check("ObjectOptions", &args)?;
        let o: ObjectOptions = from_value(args)?;
        if !matches!(o.qom_type.as_str(), "iothread" | "tls-creds-x509") {
            return Err(QmpError::generic(format!(
                "Parameter 'qom-type' does not accept value '{}'",
                o.qom_type
            )));
        }
        if !id_wellformed(&o.id) {
            return Err(QmpError::generic("Parameter 'id' expects an identifier"));
        }
        let mut st = self.st();
        if st.iothreads.contains_key(&o.id) || st.tls.contains_key(&o.id) {
            return Err(QmpError::generic(format!(
                "attempt to add duplicate property '{}' to object (type 'container')",
                o.id
            )));
        }
        match o.qom_type.as_str() {
            "iothread" => {
                for (name, v) in [("poll-grow", o.poll_grow), ("poll-shrink", o.poll_shrink)] {
                    if v.is_some_and(|v| v != 0) {
                        return Err(QmpError::generic(format!(
                            "iothread property '{name}' is not supported: oxemu polls for up to poll-max-ns without adapting it (only 0 is accepted)"
                        )));
                    }
                }
                let cfg = EventLoopConfig {
                    poll_max_ns: o.poll_max_ns.unwrap_or(32768),
                    aio_max_batch: o.aio_max_batch.unwrap_or(0),
                    ..Default::default()
                };
                let t = IoThread::spawn(&o.id, cfg).map_err(QmpError::from)?;
                st.iothreads.insert(o.id, t);
            }
            "tls-creds-x509" => {
                if o.priority.is_some() {
                    return Err(QmpError::generic(
                        "tls-creds-x509 property 'priority' is not supported by oxemu-storage-daemon (its TLS library has no GnuTLS priority strings)",
                    ));
                }
                let dir = o
                    .dir
                    .ok_or_else(|| QmpError::generic("Parameter 'dir' is missing"))?;
                let endpoint = o.endpoint.unwrap_or_else(|| "client".into());
                if endpoint != "server" && endpoint != "client" {
                    return Err(QmpError::generic(format!(
                        "Parameter 'endpoint' does not accept value '{endpoint}'"
                    )));
                }
                st.tls.insert(
                    o.id.clone(),
                    X509Creds {
                        id: o.id,
                        dir: dir.into(),
                        endpoint,
                        verify_peer: o.verify_peer.unwrap_or(true),
                    },
                );
            }
            other => {
                return Err(QmpError::generic(format!(
                    "Parameter 'qom-type' does not accept value '{other}'"
                )))
            }
        }
        Ok(json!({}))
    }

    /// `object-del`.
    pub fn object_del(&self, args: Value) -> Result<Value, QmpError> {
        let a: ObjectDelArgs = from_value(args)?;
        let t = {
            let mut st = self.st();
            if st.tls.remove(&a.id).is_some() {
                return Ok(json!({}));
            }
            st.iothreads
                .remove(&a.id)
                .ok_or_else(|| QmpError::generic(format!("object '{}' not found", a.id)))?
        };
        t.join();
        Ok(json!({}))
    }

    /// `nbd-server-start` / `--nbd-server`.
    pub fn nbd_server_start(&self, args: Value) -> Result<Value, QmpError> {
        crate::schema::check_nbd_server(&args)?;
        let o: NbdServerOptions = from_value(args)?;
        let addr = SocketAddress::from_value(&o.addr).map_err(QmpError::generic)?;
        let mut st = self.st();
        if st.nbd.is_some() {
            return Err(QmpError::generic("NBD server already running"));
        }
        if o.tls_authz.is_some() {
            return Err(QmpError::generic(
                "tls-authz is not supported by oxemu's NBD server",
            ));
        }
        let tls = match &o.tls_creds {
            None => None,
            Some(id) => {
                let c = st.tls.get(id).ok_or_else(|| {
                    QmpError::generic(format!("No TLS credentials with id '{id}'"))
                })?;
                if c.endpoint != "server" {
                    return Err(QmpError::generic(
                        "Expecting TLS credentials with a server endpoint",
                    ));
                }
                Some(
                    c.server_config()
                        .map_err(|e| QmpError::generic(e.to_string()))?,
                )
            }
        };
        let (naddr, sock) = match addr {
            SocketAddress::Unix(p) => (NbdAddr::Unix(p.clone().into()), Some(PathBuf::from(p))),
            SocketAddress::Inet { host, port } => (NbdAddr::Inet { host, port }, None),
        };
        let opts = NbdOpts {
            addr: naddr,
            tls,
            max_connections: o.max_connections.unwrap_or(0) as u32,
        };
        let server = NbdServer::start(opts, self.main_loop.handle())
            .map_err(|e| QmpError::generic(e.to_string()))?;
        if let Some(secs) = o.handshake_max_seconds {
            server.set_handshake_limit(std::time::Duration::from_secs(secs));
        }
        st.nbd = Some(server);
        st.nbd_socket = sock;
        Ok(json!({}))
    }

    /// `nbd-server-stop`: removes every NBD export, then stops the server.
    pub fn nbd_server_stop(&self, events: &EventBus) -> Result<Value, QmpError> {
        let (server, removed) = {
            let mut st = self.st();
            let server = st
                .nbd
                .take()
                .ok_or_else(|| QmpError::generic("NBD server not running"))?;
            let ids: Vec<String> = st
                .exports
                .iter()
                .filter(|(_, e)| e.export.export_type() == "nbd")
                .map(|(k, _)| k.clone())
                .collect();
            let removed: Vec<(String, ExportEntry)> = ids
                .into_iter()
                .filter_map(|id| st.exports.remove(&id).map(|e| (id, e)))
                .collect();
            st.nbd_socket = None;
            let _ = Self::apply_perms(&st, None);
            (server, removed)
        };
        for (id, e) in removed {
            e.export.shutdown(true);
            events.emit("BLOCK_EXPORT_DELETED", Some(json!({"id": id})));
        }
        server.stop();
        Ok(json!({}))
    }

    /// Clean shutdown: disconnect clients, drain, flush and close every node.
    pub fn shutdown(&self, events: Option<&EventBus>) {
        let (exports, server, nodes) = {
            let mut st = self.st();
            let exports: Vec<(String, ExportEntry)> =
                std::mem::take(&mut st.exports).into_iter().collect();
            (exports, st.nbd.take(), st.graph.drain())
        };
        for (id, e) in exports {
            e.export.shutdown(true);
            if let Some(ev) = events {
                ev.emit("BLOCK_EXPORT_DELETED", Some(json!({"id": id})));
            }
        }
        if let Some(s) = server {
            s.stop();
        }
        self.close_nodes(nodes);
        let threads: Vec<IoThread> = std::mem::take(&mut self.st().iothreads)
            .into_values()
            .collect();
        for t in threads {
            t.join();
        }
    }
}

/// QMP glue.
impl Dispatcher for Daemon {
    fn dispatch(&self, name: &str, args: Value, events: &EventBus) -> Result<Value, QmpError> {
        match name {
            "blockdev-add" => self.blockdev_add(args),
            "blockdev-del" => self.blockdev_del(args),
            "query-named-block-nodes" => {
                let a: QueryNamedBlockNodesArgs = from_value(args)?;
                self.st().graph.query(a.flat.unwrap_or(false))
            }
            "block-export-add" => self.block_export_add(args),
            "block-export-del" => self.block_export_del(args, events),
            "query-block-exports" => Ok(self.query_block_exports()),
            "object-add" => self.object_add(args),
            "object-del" => self.object_del(args),
            "nbd-server-start" => self.nbd_server_start(args),
            "nbd-server-stop" => self.nbd_server_stop(events),
            "quit" => Ok(json!({})),
            _ => Err(QmpError::command_not_found(format!(
                "The command {name} has not been found"
            ))),
        }
    }

    fn after_reply(&self, name: &str) {
        if name == "quit" {
            self.request_quit();
        }
    }

    fn schema_source(&self) -> Option<&'static str> {
        Some(crate::schema::SOURCE)
    }
}

/// QEMU's `id_wellformed`: a letter, then letters, digits, `-`, `.` or `_`.
fn id_wellformed(id: &str) -> bool {
    let mut c = id.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic())
        && c.all(|x| x.is_ascii_alphanumeric() || matches!(x, '-' | '.' | '_'))
}
