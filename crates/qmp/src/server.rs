//! QMP monitors: the wire protocol, negotiation, dispatch and events.
//!
//! Each client connection gets a thread that reads one JSON object per line-ish
//! stream (QMP does not require newlines; objects are split by a streaming JSON
//! parser). Commands of all clients run one at a time under one lock, as in QEMU's
//! main loop. Events go to every client that has completed negotiation.
//!
//! Output never blocks the server: each client has a writer thread fed from a queue
//! bounded to [`MAX_CLIENT_OUTPUT`] bytes. Replies and events are queued; a client
//! whose queue would grow past the bound (it does not read) is disconnected, and the
//! other clients and the command lock carry on.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::framing::{Frame, Framer};
use crate::schema::{Schema, BUILTIN_SCHEMA};
use crate::QmpError;

/// What `query-version` reports and the greeting carries.
#[derive(Clone, Debug)]
pub struct VersionInfo {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Micro version.
    pub micro: u32,
    /// Package string.
    pub package: String,
}

impl Default for VersionInfo {
    fn default() -> Self {
        // oxemu implements QEMU 7.2's interfaces; clients key features off this.
        VersionInfo {
            major: 7,
            minor: 2,
            micro: 0,
            package: format!("oxemu {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

impl VersionInfo {
    fn to_json(&self) -> Value {
        json!({
            "qemu": {"micro": self.micro, "minor": self.minor, "major": self.major},
            "package": self.package,
        })
    }
}

/// A command a program offers, for `query-commands` and `query-qmp-schema`.
#[derive(Clone, Debug)]
pub struct CommandInfo {
    /// Command name.
    pub name: &'static str,
    /// Argument names with their JSON types (`str`, `int`, `bool`, `any`), and whether
    /// each is optional.
    pub args: &'static [(&'static str, &'static str, bool)],
}

/// The program side of a QMP server.
pub trait Dispatcher: Send + Sync + 'static {
    /// Runs command `name` with its `arguments` object. Built-in commands
    /// (`qmp_capabilities`, `query-version`, `query-commands`, `query-qmp-schema`) never
    /// reach here.
    fn dispatch(&self, name: &str, args: Value, events: &EventBus) -> Result<Value, QmpError>;

    /// The commands `dispatch` accepts, for a program without a schema (see
    /// [`Dispatcher::schema_source`]); ignored when it has one.
    fn commands(&self) -> Vec<CommandInfo> {
        Vec::new()
    }

    /// The program's QAPI schema (see [`crate::schema`]): its commands, their
    /// argument and return types, and its events. When given, it is the command
    /// table (known commands, commands without arguments, `query-commands`) and
    /// `query-qmp-schema` is generated from it together with the server's own
    /// commands. Without it the server falls back to [`Dispatcher::commands`] and a
    /// schema with untyped returns.
    fn schema_source(&self) -> Option<&'static str> {
        None
    }

    /// Event names the program emits (for `query-qmp-schema`).
    fn events(&self) -> Vec<&'static str> {
        Vec::new()
    }

    /// Called after a reply has been sent for `name`; `quit` uses this to shut down
    /// only once the client has its `{"return": {}}`.
    fn after_reply(&self, name: &str) {
        let _ = name;
    }
}

/// Bytes of replies and events queued for one client that has not read them yet;
/// a client whose output would exceed this is disconnected.
pub const MAX_CLIENT_OUTPUT: usize = 8 << 20;

/// How long [`QmpServer::shutdown`] lets queued output drain before cutting clients
/// off.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_millis(200);

#[derive(Default)]
struct OutState {
    queue: VecDeque<Vec<u8>>,
    bytes: usize,
    /// No more output is accepted; the writer ends once `queue` is empty.
    finished: bool,
    /// The connection is cut off: pending output is dropped.
    closed: bool,
}

/// The output side of one client: a bounded queue drained by a writer thread.
struct ClientOut {
    st: Mutex<OutState>,
    cv: Condvar,
    /// A duplicate of the socket, to `shutdown(2)` it from any thread.
    fd: OwnedFd,
}

impl ClientOut {
    fn st(&self) -> MutexGuard<'_, OutState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues one line; false if the client is gone or just got disconnected for
    /// not reading.
    fn push(&self, line: Vec<u8>) -> bool {
        let mut st = self.st();
        if st.closed || st.finished {
            return false;
        }
        if st.bytes + line.len() > MAX_CLIENT_OUTPUT {
            drop(st);
            tracing::warn!("qmp: client does not read its output; disconnecting it");
            self.close();
            return false;
        }
        st.bytes += line.len();
        st.queue.push_back(line);
        self.cv.notify_all();
        true
    }

    /// Lets the writer flush what is queued, then end.
    fn finish(&self) {
        self.st().finished = true;
        self.cv.notify_all();
    }

    /// Cuts the connection off at once.
    fn close(&self) {
        {
            let mut st = self.st();
            st.closed = true;
            st.queue.clear();
            st.bytes = 0;
        }
        // SAFETY: shutdown(2) on a descriptor this object owns.
        unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR) };
        self.cv.notify_all();
    }

    /// The writer thread's body.
    fn write_out(&self, mut w: Box<dyn Write + Send>) {
        loop {
            let line = {
                let mut st = self.st();
                loop {
                    if st.closed {
                        return;
                    }
                    if let Some(l) = st.queue.pop_front() {
                        st.bytes -= l.len();
                        break l;
                    }
                    if st.finished {
                        return;
                    }
                    st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
                }
            };
            if w.write_all(&line).and_then(|_| w.flush()).is_err() {
                self.close();
                return;
            }
        }
    }
}

/// Broadcasts events to every negotiated client.
#[derive(Default)]
pub struct EventBus {
    clients: Mutex<Vec<(u64, Arc<ClientOut>)>>,
}

impl EventBus {
    /// Sends event `name` with `data` (None: no data member) and the current time.
    /// Never blocks on a client: the event is queued for each (see
    /// [`MAX_CLIENT_OUTPUT`]).
    pub fn emit(&self, name: &str, data: Option<Value>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut ev = json!({
            "timestamp": {"seconds": now.as_secs(), "microseconds": now.subsec_micros()},
            "event": name,
        });
        if let Some(d) = data {
            ev["data"] = d;
        }
        let line = format!("{ev}\r\n").into_bytes();
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.retain(|(_, c)| c.push(line.clone()));
    }

    /// Subscribes client `id`, queueing `first` (its negotiation reply) under the
    /// same lock as events.
    fn add(&self, id: u64, c: Arc<ClientOut>, first: Vec<u8>) -> bool {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if !c.push(first) {
            return false;
        }
        clients.push((id, c));
        true
    }

    fn remove(&self, id: u64) {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(i, _)| *i != id);
    }
}

/// A QMP server: the dispatcher, the event bus and the monitors' listeners.
pub struct QmpServer {
    dispatcher: Arc<dyn Dispatcher>,
    /// The schema, when the dispatcher has one.
    schema: Option<Schema>,
    events: Arc<EventBus>,
    version: VersionInfo,
    exec: Mutex<()>,
    next_client: AtomicU64,
    stopping: AtomicBool,
    sockets: Mutex<Vec<PathBuf>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Duplicates of the listening sockets, shut down to wake their accept loops.
    listeners: Mutex<Vec<OwnedFd>>,
    /// Connected clients, cut off by [`QmpServer::shutdown`].
    clients: Mutex<HashMap<u64, Arc<ClientOut>>>,
}

/// Largest QMP command accepted, in bytes; longer input closes the connection.
pub const MAX_COMMAND: usize = 16 << 20;

impl QmpServer {
    /// A server for `dispatcher`, reporting `version`.
    ///
    /// The dispatcher's schema source is compiled into the program; one that does
    /// not parse or refers to undefined types is a build defect and panics here
    /// (each program's tests start a server).
    pub fn new(dispatcher: Arc<dyn Dispatcher>, version: VersionInfo) -> Arc<Self> {
        let schema = dispatcher.schema_source().map(|src| {
            Schema::parse(&[BUILTIN_SCHEMA, src])
                .unwrap_or_else(|e| panic!("the program's QAPI schema is invalid: {e}"))
        });
        Arc::new(QmpServer {
            dispatcher,
            schema,
            events: Arc::new(EventBus::default()),
            version,
            exec: Mutex::new(()),
            next_client: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            sockets: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
            listeners: Mutex::new(Vec::new()),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// The event bus, for events raised outside a command.
    pub fn events(&self) -> &Arc<EventBus> {
        &self.events
    }

    /// Listens on a unix socket (created now, removed by [`Self::shutdown`]).
    pub fn listen_unix(self: &Arc<Self>, path: &Path) -> io::Result<()> {
        let l = oxemu_aio::net::bind_unix_listener(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("Failed to bind socket to {}: {e}", path.display()),
            )
        })?;
        self.sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(path.to_path_buf());
        self.add_listener(l.as_fd())?;
        let me = self.clone();
        let t = std::thread::Builder::new()
            .name("qmp-listen".into())
            .spawn(move || {
                for s in l.incoming() {
                    if me.stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Ok(s) = s {
                        let w = s.try_clone();
                        me.serve_socket(s, w);
                    }
                }
            })?;
        self.threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(t);
        Ok(())
    }

    /// Listens on a TCP address such as `127.0.0.1:4444`.
    pub fn listen_tcp(self: &Arc<Self>, addr: &str) -> io::Result<std::net::SocketAddr> {
        let l = TcpListener::bind(addr).map_err(|e| {
            io::Error::new(e.kind(), format!("Failed to bind socket to {addr}: {e}"))
        })?;
        let local = l.local_addr()?;
        self.add_listener(l.as_fd())?;
        let me = self.clone();
        let t = std::thread::Builder::new()
            .name("qmp-listen".into())
            .spawn(move || {
                for s in l.incoming() {
                    if me.stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Ok(s) = s {
                        let w = s.try_clone();
                        me.serve_socket(s, w);
                    }
                }
            })?;
        self.threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(t);
        Ok(local)
    }

    /// Serves a connection the program opened itself, such as a monitor on a
    /// chardev socket in client mode (`-chardev socket,path=…` without `server=on`).
    pub fn serve_unix_stream(self: &Arc<Self>, s: std::os::unix::net::UnixStream) {
        let w = s.try_clone();
        self.serve_socket(s, w);
    }

    /// Serves a TCP connection the program opened or accepted itself (a monitor on a
    /// `-chardev socket,host=…,port=…` chardev, client or server).
    pub fn serve_tcp_stream(self: &Arc<Self>, s: std::net::TcpStream) {
        let w = s.try_clone();
        self.serve_socket(s, w);
    }

    /// Serves a connected socket: `s` is read, its clone `w` written, and its fd is
    /// what shutdown wakes.
    fn serve_socket<S>(self: &Arc<Self>, s: S, w: io::Result<S>)
    where
        S: Read + Write + AsFd + Send + 'static,
    {
        let fd = s.as_fd().try_clone_to_owned();
        self.spawn_client(
            Box::new(s),
            w.map(|w| Box::new(w) as Box<dyn Write + Send>),
            fd,
        );
    }

    fn add_listener(&self, fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
        let fd = fd.try_clone_to_owned()?;
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(fd);
        Ok(())
    }

    fn spawn_client(
        self: &Arc<Self>,
        r: Box<dyn Read + Send>,
        w: io::Result<Box<dyn Write + Send>>,
        fd: io::Result<OwnedFd>,
    ) {
        let (Ok(w), Ok(fd)) = (w, fd) else { return };
        let out = Arc::new(ClientOut {
            st: Mutex::new(OutState::default()),
            cv: Condvar::new(),
            fd,
        });
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        {
            let mut c = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            if self.stopping.load(Ordering::SeqCst) {
                out.close();
                return;
            }
            c.insert(id, out.clone());
        }
        let o = out.clone();
        if std::thread::Builder::new()
            .name("qmp-output".into())
            .spawn(move || o.write_out(w))
            .is_err()
        {
            self.clients
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            out.close();
            return;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("qmp-client".into())
            .spawn({
                let out = out.clone();
                move || {
                    let _ = me.serve(id, r, &out);
                    me.events.remove(id);
                    me.clients
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                    out.finish();
                }
            });
        if spawned.is_err() {
            out.close();
        }
    }

    /// Serves one client until it disconnects.
    fn serve(&self, id: u64, r: Box<dyn Read + Send>, out: &Arc<ClientOut>) -> io::Result<()> {
        let send = |v: &Value| -> io::Result<()> {
            if out.push(format!("{v}\r\n").into_bytes()) {
                Ok(())
            } else {
                Err(io::ErrorKind::BrokenPipe.into())
            }
        };
        send(&json!({"QMP": {"version": self.version.to_json(), "capabilities": ["oob"]}}))?;
        let mut session = Session::default();
        let mut r = r;
        let mut framer = Framer::new(MAX_COMMAND);
        let mut frames = Vec::new();
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            if frames.is_empty() {
                let n = match r.read(&mut chunk) {
                    Ok(0) => return Ok(()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return Ok(()),
                };
                framer.push(&chunk[..n], &mut frames);
                frames.reverse();
                continue;
            }
            let text = match frames.pop() {
                Some(Frame::Text(t)) => t,
                Some(Frame::TooLong) | None => {
                    send(&json!({"error": QmpError::generic("QMP command too long").to_json()}))?;
                    return Ok(());
                }
            };
            let req = match oxemu_opts::json::parse_slice(&text) {
                Ok(v) => v,
                Err(e) => {
                    // As in QEMU, a syntax error costs one reply; the stream goes on.
                    let m = e.to_string();
                    let m = m.split(" at line ").next().unwrap_or(&m).to_string();
                    send(
                        &json!({"error": QmpError::generic(format!("JSON parse error, {m}")).to_json()}),
                    )?;
                    continue;
                }
            };
            if self.stopping.load(Ordering::SeqCst) {
                return Ok(());
            }
            let (reply, cmd) = self.handle(req, &mut session);
            if session.negotiated
                && cmd.as_deref() == Some("qmp_capabilities")
                && reply.get("return").is_some()
            {
                // Subscribe and queue the reply at once: every event after the reply
                // reaches the client, none before it.
                if !self
                    .events
                    .add(id, out.clone(), format!("{reply}\r\n").into_bytes())
                {
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
            } else {
                send(&reply)?;
            }
            if let Some(c) = cmd {
                if reply.get("return").is_some() {
                    self.dispatcher.after_reply(&c);
                }
            }
        }
    }

    /// Checks and runs one request; returns the reply and the command name.
    fn handle(&self, req: Value, session: &mut Session) -> (Value, Option<String>) {
        let id = req.get("id").cloned();
        let with_id = |mut v: Value| {
            if let Some(id) = &id {
                v["id"] = id.clone();
            }
            v
        };
        let err = |e: QmpError| with_id(json!({"error": e.to_json()}));
        let Value::Object(mut m) = req else {
            return (
                json!({"error": QmpError::generic("QMP input must be a JSON object").to_json()}),
                None,
            );
        };
        for k in m.keys() {
            let known = match k.as_str() {
                "execute" | "arguments" | "id" => true,
                // exec-oob is only part of the protocol once OOB was negotiated.
                "exec-oob" => session.oob,
                _ => false,
            };
            if !known {
                return (
                    err(QmpError::generic(format!(
                        "QMP input member '{k}' is unexpected"
                    ))),
                    None,
                );
            }
        }
        let oob = m.contains_key("exec-oob");
        if oob && m.contains_key("execute") {
            return (
                err(QmpError::generic(
                    "QMP input must have either 'execute' or 'exec-oob'",
                )),
                None,
            );
        }
        let key = if oob { "exec-oob" } else { "execute" };
        let name = match m.remove(key) {
            Some(Value::String(s)) => s,
            Some(_) => {
                return (
                    err(QmpError::generic(format!(
                        "QMP input member '{key}' must be a string"
                    ))),
                    None,
                )
            }
            None => {
                return (
                    err(QmpError::generic("QMP input lacks member 'execute'")),
                    None,
                )
            }
        };
        let args = match m.remove("arguments") {
            None => Value::Object(Map::new()),
            Some(v @ Value::Object(_)) => v,
            Some(_) => {
                return (
                    err(QmpError::generic(
                        "QMP input member 'arguments' must be an object",
                    )),
                    None,
                )
            }
        };
        if !session.negotiated {
            if name != "qmp_capabilities" {
                return (
                    err(QmpError::command_not_found(
                        "Expecting capabilities negotiation with 'qmp_capabilities'",
                    )),
                    None,
                );
            }
            return match capabilities(&args) {
                Ok(oob) => {
                    session.negotiated = true;
                    session.oob = oob;
                    (with_id(json!({"return": {}})), Some(name))
                }
                Err(e) => (err(e), None),
            };
        }
        let known = self.command_names().contains(&name);
        if !known {
            return (
                err(QmpError::command_not_found(format!(
                    "The command {name} has not been found"
                ))),
                None,
            );
        }
        if oob {
            // No oxemu command is marked allow-oob (see query-qmp-schema).
            return (
                err(QmpError::generic(format!(
                    "The command {name} does not support OOB"
                ))),
                None,
            );
        }
        let _g = self.exec.lock().unwrap_or_else(|p| p.into_inner());
        let r = match name.as_str() {
            "qmp_capabilities" => Err(QmpError::command_not_found(
                "Capabilities negotiation is already complete, command ignored",
            )),
            "query-version" => no_args(&args).map(|_| self.version.to_json()),
            "query-commands" => no_args(&args).map(|_| {
                let mut names: Vec<Value> = self
                    .command_names()
                    .iter()
                    .map(|c| json!({"name": c}))
                    .collect();
                names.dedup();
                Value::Array(names)
            }),
            "query-qmp-schema" => no_args(&args).map(|_| self.schema()),
            _ => {
                // Commands declared without arguments refuse any, as QEMU's
                // generated marshallers do; others check their own (typed) arguments.
                let takes_none = match &self.schema {
                    Some(s) => s.takes_no_args(&name),
                    None => self
                        .dispatcher
                        .commands()
                        .iter()
                        .any(|c| c.name == name && c.args.is_empty()),
                };
                if takes_none {
                    no_args(&args).and_then(|_| self.dispatcher.dispatch(&name, args, &self.events))
                } else {
                    self.dispatcher.dispatch(&name, args, &self.events)
                }
            }
        };
        match r {
            Ok(v) => (with_id(json!({"return": v})), Some(name)),
            Err(e) => (err(e), Some(name)),
        }
    }

    /// Every command name: the server's own and the program's.
    fn command_names(&self) -> Vec<String> {
        match &self.schema {
            Some(s) => s.commands().into_iter().map(str::to_string).collect(),
            None => builtin_commands()
                .iter()
                .chain(self.dispatcher.commands().iter())
                .map(|c| c.name.to_string())
                .collect(),
        }
    }

    /// The `query-qmp-schema` answer: generated from the program's schema (masked
    /// type names, as QEMU's), or, for a program without one, a SchemaInfo list with
    /// untyped returns built from [`Dispatcher::commands`]. As in QEMU, `allow-oob`
    /// is present only for OOB-capable commands, i.e. never here.
    fn schema(&self) -> Value {
        if let Some(s) = &self.schema {
            return s.introspect();
        }
        let commands: Vec<CommandInfo> = builtin_commands()
            .iter()
            .cloned()
            .chain(self.dispatcher.commands())
            .collect();
        crate::schema::untyped_listing(&commands, &self.dispatcher.events())
    }

    /// Stops accepting clients, disconnects the connected ones and removes the unix
    /// sockets this server created. Never blocks on a client, and works when the
    /// socket files or their directories are already gone.
    pub fn shutdown(&self) {
        {
            let _c = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            self.stopping.store(true, Ordering::SeqCst);
        }
        // shutdown(2) on a listening socket wakes a thread blocked in accept(2)
        // (EINVAL), without needing a connection through the socket file.
        for fd in self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            // SAFETY: shutdown(2) on a descriptor we own.
            unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
        for p in self
            .sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = std::fs::remove_file(&p);
        }
        let clients: Vec<Arc<ClientOut>> = self
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, c)| c)
            .collect();
        // Replies already queued (such as `quit`'s) get a short time to go out.
        for c in &clients {
            c.finish();
        }
        let deadline = std::time::Instant::now() + SHUTDOWN_DRAIN;
        while std::time::Instant::now() < deadline
            && clients.iter().any(|c| !c.st().queue.is_empty())
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        for c in clients {
            c.close();
        }
        let threads: Vec<_> = self
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

/// Per-connection protocol state.
#[derive(Default)]
struct Session {
    negotiated: bool,
    oob: bool,
}

/// Checks `qmp_capabilities`' arguments; returns whether OOB was enabled.
fn capabilities(args: &Value) -> Result<bool, QmpError> {
    let mut oob = false;
    for (k, v) in args.as_object().into_iter().flatten() {
        if k != "enable" {
            return Err(QmpError::generic(format!("Parameter '{k}' is unexpected")));
        }
        let Value::Array(list) = v else {
            return Err(QmpError::generic(
                "Invalid parameter type for 'enable', expected: array",
            ));
        };
        for c in list {
            match c.as_str() {
                Some("oob") => oob = true,
                // QEMU's wording, 'null' included: the list elements have no name.
                Some(other) => {
                    return Err(QmpError::generic(format!(
                        "Parameter 'null' does not accept value '{other}'"
                    )))
                }
                None => {
                    return Err(QmpError::generic(
                        "Invalid parameter type for 'null', expected: string",
                    ))
                }
            }
        }
    }
    Ok(oob)
}

fn no_args(args: &Value) -> Result<(), QmpError> {
    match args.as_object().and_then(|m| m.keys().next()) {
        Some(k) => Err(QmpError::generic(format!("Parameter '{k}' is unexpected"))),
        None => Ok(()),
    }
}

fn builtin_commands() -> &'static [CommandInfo] {
    &[
        CommandInfo {
            name: "qmp_capabilities",
            args: &[("enable", "any", true)],
        },
        CommandInfo {
            name: "query-version",
            args: &[],
        },
        CommandInfo {
            name: "query-commands",
            args: &[],
        },
        CommandInfo {
            name: "query-qmp-schema",
            args: &[],
        },
    ]
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
