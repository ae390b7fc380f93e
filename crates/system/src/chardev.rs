//! Character devices: `socket` (unix or TCP, client or `server=on`), `file`, `stdio`,
//! `null` and `pipe`, and the legacy specs of `-serial`, `-qmp` and `-qtest`
//! (`unix:PATH[,server=on,wait=off]`, `tcp:HOST:PORT[,server=on,wait=off]`, `stdio`,
//! `null`, `file:PATH`, `pipe:PATH`, `chardev:ID`, `none`).

use std::fs::{File, OpenOptions};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};

use crate::inet::{self, os_text};

use oxemu_opts::qemu_opts::{parse_bool as bool_opt, QemuOpts};

/// An opened backend.
pub enum Backend {
    /// Discards output, never has input.
    Null,
    /// Output to a file (held open: nothing in oxemu writes to a serial port yet).
    #[allow(dead_code)]
    File(File),
    /// The process's stdin/stdout.
    Stdio,
    /// `PATH.in` / `PATH.out` (or `PATH` both ways).
    Pipe(File, File),
    /// A connected unix socket (client mode).
    Client(UnixStream),
    /// A listening unix socket (`server=on`).
    Server(UnixListener, std::path::PathBuf),
    /// A connected TCP socket (`host=`, `port=`, client mode).
    TcpClient(TcpStream),
    /// A listening TCP socket (`host=`, `port=`, `server=on`); whether accepted
    /// connections get TCP_NODELAY.
    TcpServer(TcpListener, bool),
}

/// A chardev: label, QEMU's `filename` string, backend.
pub struct Chardev {
    /// `id=`.
    pub label: String,
    /// What `query-chardev` reports as `filename`.
    pub filename: String,
    /// The backend; taken by the frontend that uses it.
    pub backend: Option<Backend>,
    /// Whether a frontend (monitor, qtest, serial) uses it.
    pub frontend: bool,
}

/// Opens `-chardev` options (QemuOpts, implied key `backend`).
pub fn open(o: &QemuOpts) -> Result<Chardev, String> {
    let mut o = o.clone();
    let before_backend = o.pairs.len();
    let backend = o.take("backend").unwrap_or_default();
    let Some(id) = o.id.take() else {
        return Err("chardev: no id specified".into());
    };
    if o.pairs.len() == before_backend {
        return Err(format!("chardev: \"{id}\" missing backend"));
    }
    build(&backend, &id, o)
}

/// Every parameter of QEMU 7.2's `-chardev` option list (all backends together: QEMU
/// checks names against this list, then each backend ignores what it does not use).
const QEMU_CHARDEV_PARAMS: &[&str] = &[
    "abstract",
    "append",
    "backend",
    "chardev",
    "clipboard",
    "cols",
    "debug",
    "delay",
    "fd",
    "height",
    "host",
    "ipv4",
    "ipv6",
    "localaddr",
    "localport",
    "logappend",
    "logfile",
    "mouse",
    "mux",
    "name",
    "nodelay",
    "path",
    "port",
    "reconnect",
    "rows",
    "server",
    "signal",
    "size",
    "telnet",
    "tight",
    "tls-authz",
    "tls-creds",
    "tn3270",
    "to",
    "wait",
    "websocket",
    "width",
];

fn build(backend: &str, id: &str, mut o: QemuOpts) -> Result<Chardev, String> {
    let (b, filename) = match backend {
        "null" => (Backend::Null, "null".to_string()),
        "stdio" => (Backend::Stdio, "stdio".to_string()),
        "file" => {
            let p = o.take("path").ok_or("chardev: file: no filename given")?;
            let append = match o.take("append") {
                Some(v) => bool_opt("append", &v)?,
                None => false,
            };
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .append(append)
                .truncate(!append)
                .open(&p)
                .map_err(|e| format!("Could not open '{p}': {}", os_text(&e)))?;
            (Backend::File(f), format!("file:{p}"))
        }
        "pipe" => {
            let p = o
                .take("path")
                .ok_or("chardev: pipe: no device path given")?;
            let open_rw = |q: &str, w: bool| OpenOptions::new().read(!w).write(w).open(q);
            let (i, out) = match (
                open_rw(&format!("{p}.in"), false),
                open_rw(&format!("{p}.out"), true),
            ) {
                (Ok(i), Ok(out)) => (i, out),
                _ => {
                    let f = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&p)
                        .map_err(|e| format!("Could not open '{p}': {}", os_text(&e)))?;
                    (f.try_clone().map_err(|e| e.to_string())?, f)
                }
            };
            (Backend::Pipe(i, out), format!("pipe:{p}"))
        }
        "socket" => socket(id, &mut o)?,
        other => return Err(format!("'{other}' is not a valid char driver name")),
    };
    if let Some((k, _)) = o
        .pairs
        .iter()
        .find(|(k, _)| !QEMU_CHARDEV_PARAMS.contains(&k.as_str()))
    {
        return Err(format!("Invalid parameter '{k}'"));
    }
    if let Some(k) = o.first_key() {
        return Err(format!(
            "Parameter '{k}' is not supported by oxemu-system-aarch64's '{backend}' chardev"
        ));
    }
    Ok(Chardev {
        label: id.to_string(),
        filename,
        backend: Some(b),
        frontend: false,
    })
}

/// Reads an optional boolean parameter.
fn opt_bool(o: &mut QemuOpts, key: &str, default: bool) -> Result<bool, String> {
    match o.take(key) {
        Some(v) => bool_opt(key, &v),
        None => Ok(default),
    }
}

/// `socket`: unix (`path=`) or TCP (`host=`, `port=`, `ipv4=`, `ipv6=`, `delay=`),
/// client or `server=on,wait=off`.
fn socket(id: &str, o: &mut QemuOpts) -> Result<(Backend, String), String> {
    if o.get("fd").is_some() {
        return Err(
            "Parameter 'fd' is not supported by oxemu-system-aarch64's 'socket' chardev".into(),
        );
    }
    let (path, host) = (o.take("path"), o.take("host"));
    let server = opt_bool(o, "server", false)?;
    let wait = opt_bool(o, "wait", true)?;
    if server && wait {
        return Err(format!(
            "chardev {id}: server=on needs wait=off: oxemu does not block startup waiting for a client"
        ));
    }
    let suffix = if server { ",server=on" } else { "" };
    match (path, host) {
        (Some(_), Some(_)) => Err("None or one of 'path', 'fd' or 'host' option required.".into()),
        // QEMU 7.2 falls back to fd= here and fails to read the missing number.
        (None, None) => Err("Unable to parse FD number ".into()),
        (Some(p), None) => {
            if server {
                let _ = std::fs::remove_file(&p);
                let l = UnixListener::bind(&p)
                    .map_err(|e| format!("Failed to bind socket to {p}: {}", os_text(&e)))?;
                Ok((
                    Backend::Server(l, p.clone().into()),
                    format!("unix:{p}{suffix}"),
                ))
            } else {
                let s = UnixStream::connect(&p)
                    .map_err(|e| format!("Failed to connect to '{p}': {}", os_text(&e)))?;
                Ok((Backend::Client(s), format!("unix:{p}")))
            }
        }
        (None, Some(h)) => {
            let port = o.take("port").ok_or("chardev: socket: no port given")?;
            let fam = inet::Family {
                v4: opt_bool(o, "ipv4", false)?,
                v6: opt_bool(o, "ipv6", false)?,
            };
            // QEMU: no Nagle when delay=off (the flag `nodelay`) or nodelay=on.
            let nodelay = !opt_bool(o, "delay", true)? | opt_bool(o, "nodelay", false)?;
            let addrs = inet::resolve(&h, &port, fam, server)?;
            let name = format!("tcp:{h}:{port}{suffix}");
            if server {
                Ok((Backend::TcpServer(inet::listen(&addrs)?, nodelay), name))
            } else {
                let s = inet::connect(&h, &port, &addrs)?;
                if nodelay {
                    s.set_nodelay(true).map_err(|e| os_text(&e))?;
                }
                Ok((Backend::TcpClient(s), name))
            }
        }
    }
}

/// What a legacy spec (`-serial`, `-qmp`, `-qtest`) names.
pub enum Legacy {
    /// `chardev:ID`.
    Existing(String),
    /// A new chardev built from the spec.
    New(Chardev),
    /// `none`.
    None,
    /// Options read from the spec, not yet built (internal to [`legacy`]).
    Options(QemuOpts),
}

/// Parses a legacy spec into a chardev labelled `label`.
/// Why a legacy spec failed: QEMU words the two cases differently for `-qmp`.
#[derive(Debug)]
pub enum LegacyError {
    /// The spec did not parse (the message may be empty: QEMU has none for a
    /// `tcp:` spec without a port).
    Parse(String),
    /// The chardev could not be opened.
    Open(String),
}

impl LegacyError {
    /// The message, whichever the case.
    pub fn msg(&self) -> &str {
        match self {
            LegacyError::Parse(m) | LegacyError::Open(m) => m,
        }
    }
}

/// Parses a legacy spec into a chardev labelled `label`.
pub fn legacy(spec: &str, label: &str) -> Result<Legacy, LegacyError> {
    let (backend, o) = legacy_opts(spec).map_err(LegacyError::Parse)?;
    let Some(backend) = backend else {
        return Ok(o);
    };
    match o {
        Legacy::Options(o) => build(backend, label, o)
            .map(Legacy::New)
            .map_err(LegacyError::Open),
        other => Ok(other),
    }
}

/// Reads a legacy spec: the backend to build and its options, or what needs no build.
fn legacy_opts(spec: &str) -> Result<(Option<&'static str>, Legacy), String> {
    if spec == "none" {
        return Ok((None, Legacy::None));
    }
    if let Some(id) = spec.strip_prefix("chardev:") {
        return Ok((None, Legacy::Existing(id.to_string())));
    }
    let (kind, rest) = match spec.split_once(':') {
        Some((k, r)) => (k, r),
        None => (spec, ""),
    };
    let bad = || format!("'{spec}' is not a valid char driver");
    let with_path = |p: &str| QemuOpts {
        pairs: vec![("path".to_string(), p.to_string())],
        ..Default::default()
    };
    let (backend, o) = match kind {
        "null" if rest.is_empty() => ("null", QemuOpts::default()),
        "stdio" if rest.is_empty() => ("stdio", QemuOpts::default()),
        // QEMU reads `unix:` specs as QemuOpts with implied key `path`, and without
        // deprecation warnings or help.
        "unix" => {
            let o = QemuOpts::parse(rest, Some("path")).map_err(|e| e.to_string())?;
            if o.help {
                return Err("Invalid parameter 'help'".into());
            }
            // QEMU checks the names before it tries to connect.
            if let Some((k, _)) = o
                .pairs
                .iter()
                .find(|(k, _)| !QEMU_CHARDEV_PARAMS.contains(&k.as_str()))
            {
                return Err(format!("Invalid parameter '{k}'"));
            }
            ("socket", o)
        }
        // `tcp:HOST:PORT[,OPTS]`: HOST up to 64 characters without `:` (or empty),
        // PORT up to 32 without `,`. QEMU fails without a message when they are missing.
        "tcp" => {
            let (h, after) = rest.split_once(':').ok_or_else(String::new)?;
            let end = after.find(',').unwrap_or(after.len());
            let port = &after[..end];
            if h.chars().count() > 64 || port.is_empty() || port.chars().count() > 32 {
                return Err(String::new());
            }
            let mut o = QemuOpts::parse(after[end..].strip_prefix(',').unwrap_or(""), None)
                .map_err(|e| e.to_string())?;
            if o.help {
                return Err("Invalid parameter 'help'".into());
            }
            if let Some((k, _)) = o
                .pairs
                .iter()
                .find(|(k, _)| !QEMU_CHARDEV_PARAMS.contains(&k.as_str()))
            {
                return Err(format!("Invalid parameter '{k}'"));
            }
            o.pairs.insert(0, ("port".into(), port.into()));
            o.pairs.insert(0, ("host".into(), h.into()));
            ("socket", o)
        }
        "file" => ("file", with_path(rest)),
        "pipe" => ("pipe", with_path(rest)),
        _ => return Err(bad()),
    };
    Ok((Some(backend), Legacy::Options(o)))
}
