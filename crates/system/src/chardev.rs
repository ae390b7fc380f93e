//! Character devices: `socket` (unix, client or `server=on`), `file`, `stdio`,
//! `null` and `pipe`, and the legacy specs of `-serial`, `-qmp` and `-qtest`
//! (`unix:PATH[,server=on,wait=off]`, `stdio`, `null`, `file:PATH`, `pipe:PATH`,
//! `chardev:ID`, `none`).

use std::fs::{File, OpenOptions};
use std::os::unix::net::{UnixListener, UnixStream};

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

/// `e` as QEMU prints an errno: the strerror text, without Rust's " (os error N)".
fn os_text(e: &std::io::Error) -> String {
    let m = e.to_string();
    match m.rfind(" (os error ") {
        Some(i) => m[..i].to_string(),
        None => m,
    }
}

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
        "socket" => {
            let p = o.take("path").ok_or_else(|| {
                "chardev: socket: oxemu supports unix sockets only: path= is required".to_string()
            })?;
            let server = match o.take("server") {
                Some(v) => bool_opt("server", &v)?,
                None => false,
            };
            let wait = match o.take("wait") {
                Some(v) => bool_opt("wait", &v)?,
                None => true,
            };
            if server {
                if wait {
                    return Err(format!(
                        "chardev {id}: server=on needs wait=off: oxemu does not block startup waiting for a client"
                    ));
                }
                let _ = std::fs::remove_file(&p);
                let l = UnixListener::bind(&p)
                    .map_err(|e| format!("Failed to bind socket to {p}: {}", os_text(&e)))?;
                (
                    Backend::Server(l, p.clone().into()),
                    format!("unix:{p},server=on"),
                )
            } else {
                let s = UnixStream::connect(&p)
                    .map_err(|e| format!("Failed to connect to '{p}': {}", os_text(&e)))?;
                (Backend::Client(s), format!("unix:{p}"))
            }
        }
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

/// What a legacy spec (`-serial`, `-qmp`, `-qtest`) names.
pub enum Legacy {
    /// `chardev:ID`.
    Existing(String),
    /// A new chardev built from the spec.
    New(Chardev),
    /// `none`.
    None,
}

/// Parses a legacy spec into a chardev labelled `label`.
pub fn legacy(spec: &str, label: &str) -> Result<Legacy, String> {
    if spec == "none" {
        return Ok(Legacy::None);
    }
    if let Some(id) = spec.strip_prefix("chardev:") {
        return Ok(Legacy::Existing(id.to_string()));
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
        "null" | "stdio" if rest.is_empty() => (kind, QemuOpts::default()),
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
        "file" => ("file", with_path(rest)),
        "pipe" => ("pipe", with_path(rest)),
        _ => return Err(bad()),
    };
    build(backend, label, o).map(Legacy::New)
}
