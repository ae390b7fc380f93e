//! `oxemu-nbd`: export one disk image over NBD, with qemu-nbd's command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use oxemu_block::{Aio, BlockDriver, EventLoopConfig, FileOptions, IoThread};
use oxemu_nbd::{NbdAddr, NbdExportOptions, NbdServer, NbdServerOptions, X509Creds};
use oxemu_opts::getopt::{self, opt};

const USAGE: &str = "Usage: oxemu-nbd [OPTIONS] FILE
Export FILE (a raw or qcow2 image) over NBD.

  -h, --help                display this help and exit
  -V, --version             output version information and exit
  -v, --verbose             display extra debugging information

Connection properties:
  -p, --port=PORT           port to listen on (default '10809')
  -b, --bind=IFACE          interface to bind to (default '0.0.0.0')
  -k, --socket=PATH         path to the unix socket
  -e, --shared=NUM          serve NUM clients at once (default '1', 0 = unlimited)
  -t, --persistent          don't exit on the last connection
      --handshake-limit=N   limit client's handshake to N seconds (default 10,
                            0 = no limit)
  -L, --list                list exports available from another NBD server
      --fork                fork off the server process and exit the parent
                            once the server is running
  -x, --export-name=NAME    expose export by name (default '')
  -D, --description=TEXT    export a human-readable description
  -A, --allocation-depth    expose the allocation depth (qemu:allocation-depth)
      --tls-creds=ID        use id of an earlier --object to provide TLS
      --object tls-creds-x509,id=ID,dir=DIR,endpoint=server[,verify-peer=on|off]
      --pid-file=PATH       store the server's process ID in PATH

Block device options:
  -f, --format=FORMAT       set image format (raw, qcow2)
  -o, --offset=OFFSET       export the image from OFFSET bytes on
  -r, --read-only           export read-only
  -l, --load-snapshot=SNAPSHOT_PARAM
                            export an internal snapshot of FILE, read-only
                            (SNAPSHOT_PARAM: snapshot.id=ID,snapshot.name=NAME
                            or an id or name)
      --cache=MODE          cache mode (none, writeback, writethrough, directsync, unsafe)
      --aio=MODE            AIO mode (threads, native, io_uring)
      --discard=MODE        what trim requests do: ignore (default) or unmap
";

/// The program's name as invoked (argv[0]'s last component), which prefixes messages
/// as qemu-nbd's do: a `qemu-nbd` symlink to oxemu-nbd then reads as qemu-nbd.
fn prog() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::env::args()
            .next()
            .and_then(|a| a.rsplit('/').next().map(str::to_string))
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| "oxemu-nbd".into())
    })
}

#[derive(Debug)]
struct Args {
    file: PathBuf,
    read_only: bool,
    name: String,
    socket: Option<PathBuf>,
    port: u16,
    bind: String,
    format: Option<String>,
    persistent: bool,
    shared: u32,
    /// `--handshake-limit`, seconds (0: none).
    handshake_limit: u64,
    cache: String,
    aio: Aio,
    discard: oxemu_block::file::Discard,
    objects: Vec<X509Creds>,
    tls_creds: Option<String>,
    description: String,
    allocation_depth: bool,
    pid_file: Option<PathBuf>,
    verbose: bool,
    fork: bool,
    list: bool,
    /// `-o`: bytes of the image skipped at its start (a raw window on top).
    offset: u64,
    /// `-l`: the internal snapshot to export instead of the active state.
    snapshot: Option<oxemu_qcow2::SnapshotRef>,
    /// An option that only makes sense when serving an image was given.
    per_device: bool,
}

enum Parsed {
    Run(Box<Args>),
    Exit(String),
}

/// qemu-nbd's options (getopt_long: short letters, long names, abbreviations).
const SPEC: &[getopt::Opt] = &[
    opt(Some('h'), Some("help"), false),
    opt(Some('V'), Some("version"), false),
    opt(Some('v'), Some("verbose"), false),
    opt(None, Some("fork"), false),
    opt(Some('L'), Some("list"), false),
    opt(Some('r'), Some("read-only"), false),
    opt(Some('o'), Some("offset"), true),
    opt(Some('l'), Some("load-snapshot"), true),
    opt(Some('t'), Some("persistent"), false),
    opt(Some('A'), Some("allocation-depth"), false),
    opt(Some('x'), Some("export-name"), true),
    opt(Some('D'), Some("description"), true),
    opt(Some('k'), Some("socket"), true),
    opt(Some('b'), Some("bind"), true),
    opt(Some('f'), Some("format"), true),
    opt(None, Some("cache"), true),
    opt(None, Some("discard"), true),
    opt(None, Some("pid-file"), true),
    opt(None, Some("tls-creds"), true),
    opt(None, Some("object"), true),
    opt(None, Some("aio"), true),
    opt(Some('p'), Some("port"), true),
    opt(None, Some("handshake-limit"), true),
    opt(Some('e'), Some("shared"), true),
];

fn parse_args(argv: Vec<String>) -> Result<Parsed, String> {
    let mut a = Args {
        file: PathBuf::new(),
        read_only: false,
        name: String::new(),
        socket: None,
        port: 10809,
        bind: "0.0.0.0".into(),
        format: None,
        persistent: false,
        shared: 1,
        handshake_limit: oxemu_nbd::server::DEFAULT_HANDSHAKE_LIMIT.as_secs(),
        cache: "writeback".into(),
        aio: Aio::Threads,
        // qemu-nbd's default: trims succeed but leave the image as it is.
        discard: oxemu_block::file::Discard::Ignore,
        objects: Vec::new(),
        tls_creds: None,
        description: String::new(),
        allocation_depth: false,
        pid_file: None,
        verbose: false,
        fork: false,
        list: false,
        snapshot: None,
        offset: 0,
        per_device: false,
    };
    let p = getopt::parse_with(&argv, SPEC, getopt::Wording::Glibc).map_err(|e| {
        format!(
            "{e}\n{p}: Try `{p} --help' for more information.",
            p = prog()
        )
    })?;
    let mut files = p.args;
    for (key, v) in p.opts {
        if matches!(
            key.as_str(),
            "export-name"
                | "description"
                | "format"
                | "allocation-depth"
                | "aio"
                | "discard"
                | "cache"
                | "load-snapshot"
                | "offset"
        ) {
            a.per_device = true;
        }
        match key.as_str() {
            "help" => return Ok(Parsed::Exit(USAGE.into())),
            "verbose" => a.verbose = true,
            "fork" => a.fork = true,
            "list" => a.list = true,
            "version" => {
                return Ok(Parsed::Exit(format!(
                    "oxemu-nbd {} (qemu-nbd compatible)\n",
                    env!("CARGO_PKG_VERSION")
                )))
            }
            "read-only" => a.read_only = true,
            "offset" => {
                a.offset = parse_u64(&v).ok_or_else(|| format!("Invalid offset '{v}'"))?;
            }
            "load-snapshot" => {
                let r = oxemu_qcow2::SnapshotRef::parse(&v).map_err(|e| {
                    format!("{e}\n{}: Failed in parsing snapshot param `{v}'", prog())
                })?;
                a.snapshot = Some(r);
                // As qemu-nbd: a loaded snapshot is exported read-only.
                a.read_only = true;
            }
            "persistent" => a.persistent = true,
            "allocation-depth" => a.allocation_depth = true,
            "export-name" => a.name = v.clone(),
            "description" => a.description = v.clone(),
            "socket" => a.socket = Some(v.clone().into()),
            "bind" => a.bind = v.clone(),
            "format" => a.format = Some(v.clone()),
            "cache" => a.cache = v.clone(),
            "discard" => {
                a.discard = match v.clone().as_str() {
                    "ignore" | "off" => oxemu_block::file::Discard::Ignore,
                    "unmap" | "on" => oxemu_block::file::Discard::Unmap,
                    v => return Err(format!("Invalid discard mode `{v}'")),
                }
            }
            "pid-file" => a.pid_file = Some(v.clone().into()),
            "tls-creds" => a.tls_creds = Some(v.clone()),
            "object" => a.objects.push(X509Creds::parse_object(&v.clone())?),
            "aio" => a.aio = v.clone().parse().map_err(|e| format!("{e}"))?,
            "port" => {
                a.port = v.parse().map_err(|_| format!("Invalid port '{v}'"))?;
            }
            "handshake-limit" => {
                a.handshake_limit = v
                    .parse()
                    .map_err(|_| format!("Invalid handshake limit '{v}'"))?;
            }
            "shared" => {
                a.shared = v
                    .parse()
                    .map_err(|_| format!("Invalid shared device number '{v}'"))?;
            }
            other => return Err(format!("option '--{other}' is not handled")),
        }
    }
    if a.list {
        if !files.is_empty() {
            return Err("List mode is incompatible with a file name".into());
        }
        if a.per_device {
            return Err("List mode is incompatible with per-device settings".into());
        }
        if a.fork {
            return Err("List mode is incompatible with forking".into());
        }
        return Ok(Parsed::Run(Box::new(a)));
    }
    match files.len() {
        1 => a.file = files.remove(0).into(),
        _ => {
            return Err(format!(
                "Invalid number of arguments\nTry `{} --help' for more information.",
                prog()
            ))
        }
    }
    if a.tls_creds.is_some() && a.socket.is_some() {
        // qemu-nbd allows it; nothing to check.
    }
    Ok(Parsed::Run(Box::new(a)))
}

/// An unsigned number as QEMU's `qemu_strtou64(.., 0)` reads it: decimal, `0x` hex
/// or leading-`0` octal.
fn parse_u64(v: &str) -> Option<u64> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else if v.len() > 1 && v.starts_with('0') {
        u64::from_str_radix(&v[1..], 8).ok()
    } else {
        v.parse().ok()
    }
}

/// `--cache` as QEMU's `bdrv_parse_cache_mode`: (O_DIRECT, flushes ignored,
/// write-through).
fn cache_mode(mode: &str) -> Result<(bool, bool, bool), String> {
    match mode {
        "none" | "off" => Ok((true, false, false)),
        "directsync" => Ok((true, false, true)),
        "writeback" => Ok((false, false, false)),
        "writethrough" => Ok((false, false, true)),
        "unsafe" => Ok((false, true, false)),
        _ => Err(format!("Invalid cache mode '{mode}'")),
    }
}

fn probe_format(path: &PathBuf) -> Result<String, String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)
        .map_err(|e| format!("Failed to blk_new_open '{}': {e}", path.display()))?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).unwrap_or(0);
    Ok(if n == 4 && &magic == b"QFI\xfb" {
        "qcow2"
    } else {
        "raw"
    }
    .into())
}

fn open_node(a: &Args) -> Result<Arc<dyn BlockDriver>, String> {
    let (direct, no_flush, writethrough) = cache_mode(&a.cache)?;
    let format = match &a.format {
        Some(f) => f.clone(),
        None => probe_format(&a.file)?,
    };
    let opts = FileOptions {
        filename: a.file.clone(),
        read_only: a.read_only,
        direct,
        no_flush,
        aio: a.aio,
        discard: a.discard,
        ..Default::default()
    };
    if format != "raw" && format != "qcow2" {
        return Err(format!(
            "Unknown driver '{format}' (supported formats: raw, qcow2)"
        ));
    }
    // qcow2 images bring their backing chain; opening it reads metadata, so it runs
    // on a short-lived event loop. The node is then served from the server's loop.
    let lp = oxemu_block::EventLoop::with_defaults()
        .map_err(|e| format!("Failed to start an event loop: {e}"))?;
    let img = lp
        .block_on(oxemu_qcow2::open_image(
            &a.file,
            Some(format.as_str()),
            &oxemu_qcow2::ImageOptions {
                file: opts,
                no_backing: false,
                l2_cache_size: 0,
            },
        ))
        .map_err(|e| e.to_string())?;
    let mut node = img.driver.clone();
    if a.offset != 0 {
        // As qemu-nbd: a raw node with `offset` on top of the opened image.
        node = Arc::new(
            oxemu_block::raw::RawFormat::with_window(node, a.offset, None)
                .map_err(|e| e.to_string())?,
        );
    }
    if let Some(r) = &a.snapshot {
        lp.block_on(img.load_snapshot_tmp(r))
            .map_err(|e| format!("Failed to load snapshot: {e}"))?;
    }
    if writethrough {
        node = Arc::new(oxemu_block::writethrough::WriteThrough::new(node));
    }
    Ok(node)
}

/// Longest orderly shutdown after the first SIGTERM/SIGINT (or the last client's
/// disconnect): clients are cut off after `STOP_GRACE`, given up on after twice that,
/// then the image is flushed and closed; past this the process exits with status 1.
const SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(8);

fn block_signals() -> libc::sigset_t {
    // SAFETY: plain signal-mask calls on a zero-initialised local sigset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// `--list`: print the exports of the server at `-k` or `-b`/`-p`, as qemu-nbd does.
fn list(a: &Args) -> Result<(), String> {
    if a.tls_creds.is_some() {
        return Err("TLS is not supported in list mode".into());
    }
    let target = match &a.socket {
        Some(p) => oxemu_nbd::NbdTarget::Unix(p.clone()),
        None => oxemu_nbd::NbdTarget::Tcp {
            host: a.bind.clone(),
            port: a.port,
        },
    };
    let exports = oxemu_nbd::client::list_exports(&target).map_err(|e| e.to_string())?;
    print!("{}", oxemu_nbd::negotiate::format_list(&exports));
    Ok(())
}

/// `--fork`, as qemu-nbd: the parent stays until the server is ready, printing what
/// the child writes to stderr meanwhile (errors), and exits 0 if nothing was written
/// and 1 otherwise. The child becomes a daemon (own session, stdio on /dev/null) with
/// stderr on the pipe; [`daemon_ready`] gives it back the original stderr, which ends
/// the parent. Must run before any thread is started. Returns the saved stderr.
fn fork_daemon() -> Result<libc::c_int, String> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(format!(
            "Error setting up communication pipe: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the process is single-threaded here; the child only continues this
    // program's start-up.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!(
            "Failed to fork: {}",
            std::io::Error::last_os_error()
        ));
    }
    if pid == 0 {
        // SAFETY: descriptor juggling on descriptors this process owns.
        unsafe {
            libc::close(fds[0]);
            let old = libc::dup(2);
            let r = libc::daemon(1, 0);
            libc::dup2(fds[1], 2);
            libc::close(fds[1]);
            if r < 0 {
                return Err(format!(
                    "Failed to daemonize: {}",
                    std::io::Error::last_os_error()
                ));
            }
            return Ok(old);
        }
    }
    // SAFETY: the parent reads the pipe until the child closes it.
    unsafe { libc::close(fds[1]) };
    let mut errors = false;
    let mut buf = [0u8; 1024];
    loop {
        // SAFETY: read(2) into a local buffer.
        let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            eprintln!("{}: Cannot read from daemon: {e}", prog());
            std::process::exit(1);
        }
        if n == 0 {
            break;
        }
        errors = true;
        use std::io::Write;
        let _ = std::io::stderr().write_all(&buf[..n as usize]);
    }
    std::process::exit(errors as i32);
}

/// The forked server is ready: stderr goes back to where it was, which closes the
/// pipe and lets the parent exit.
fn daemon_ready(old_stderr: Option<libc::c_int>) {
    if let Some(fd) = old_stderr {
        // SAFETY: restores fd 2 from the saved descriptor and closes the copy.
        unsafe {
            libc::dup2(fd, 2);
            libc::close(fd);
        }
    }
}

fn run(a: Args) -> Result<(), String> {
    if a.verbose {
        // qemu-nbd -v adds nothing to stderr while it serves a file, and test suites
        // compare that stderr: warnings only.
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .try_init();
    }
    if a.list {
        return list(&a);
    }
    let old_stderr = if a.fork { Some(fork_daemon()?) } else { None };
    let tls = match &a.tls_creds {
        None => None,
        Some(id) => {
            let c = a
                .objects
                .iter()
                .find(|o| &o.id == id)
                .ok_or_else(|| format!("No TLS credentials with id '{id}'"))?;
            Some(c.server_config().map_err(|e| e.to_string())?)
        }
    };
    let node = open_node(&a)?;
    let sigs = block_signals();
    let cfg = EventLoopConfig {
        poll_max_ns: std::env::var("OXEMU_NBD_POLL_NS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        ..Default::default()
    };
    let iothread =
        IoThread::spawn("nbd", cfg).map_err(|e| format!("Failed to start the event loop: {e}"))?;
    let addr = match &a.socket {
        Some(p) => NbdAddr::Unix(p.clone()),
        None => NbdAddr::Inet {
            host: a.bind.clone(),
            port: a.port,
        },
    };
    let server = Arc::new(
        NbdServer::start(
            NbdServerOptions {
                addr,
                tls,
                max_connections: a.shared,
            },
            iothread.handle(),
        )
        .map_err(|e| e.to_string())?,
    );
    server.set_handshake_limit(std::time::Duration::from_secs(a.handshake_limit));
    server
        .add_export(
            NbdExportOptions {
                id: "nbd".into(),
                node_name: "disk".into(),
                name: a.name.clone(),
                description: a.description.clone(),
                writable: !a.read_only,
                allocation_depth: a.allocation_depth,
            },
            node.clone(),
        )
        .map_err(|e| e.to_string())?;
    if let Some(p) = &a.pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .map_err(|e| format!("Failed to write pid file '{}': {e}", p.display()))?;
    }
    daemon_ready(old_stderr);
    tracing::debug!("oxemu-nbd: serving {}", a.file.display());
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    {
        let tx = tx.clone();
        let socket = a.socket.clone();
        let pid_file = a.pid_file.clone();
        std::thread::spawn(move || {
            let mut first = true;
            loop {
                let mut sig = 0;
                // SAFETY: sigwait on signals blocked in every thread; writes one int.
                if unsafe { libc::sigwait(&sigs, &mut sig) } != 0 {
                    continue;
                }
                if first {
                    // The first signal asks for an orderly shutdown...
                    first = false;
                    let _ = tx.send(());
                    continue;
                }
                // ... a further one forces the exit.
                eprintln!(
                    "{}: received signal {sig} again, exiting immediately",
                    prog()
                );
                for p in [&socket, &pid_file].into_iter().flatten() {
                    let _ = std::fs::remove_file(p);
                }
                // SAFETY: ends the process without running destructors of other threads.
                unsafe { libc::_exit(1) };
            }
        });
    }
    if !a.persistent {
        let s = server.clone();
        std::thread::spawn(move || {
            s.wait_for_last_disconnect();
            let _ = tx.send(());
        });
    }
    let _ = rx.recv();
    // Shutdown is bounded: if draining, flushing or closing the image does not end in
    // time, the process exits anyway.
    std::thread::spawn(|| {
        std::thread::sleep(SHUTDOWN_TIMEOUT);
        eprintln!(
            "{}: shutdown did not finish within {} s, exiting",
            prog(),
            SHUTDOWN_TIMEOUT.as_secs()
        );
        // SAFETY: ends the process at once.
        unsafe { libc::_exit(1) };
    });
    server.stop_within(oxemu_nbd::server::STOP_GRACE);
    let r = iothread
        .handle()
        .run(move || async move { node.close().await });
    iothread.join();
    if let Some(p) = &a.pid_file {
        let _ = std::fs::remove_file(p);
    }
    match r {
        Some(Err(e)) => Err(format!("Failed to close the image: {e}")),
        _ => Ok(()),
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match parse_args(argv) {
        Ok(Parsed::Exit(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok(Parsed::Run(a)) => match run(*a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{}: {e}", prog());
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("{}: {e}", prog());
            ExitCode::FAILURE
        }
    }
}
