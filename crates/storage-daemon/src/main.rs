//! `oxemu-storage-daemon`: qemu-storage-daemon's command line and QMP on oxemu's block
//! layer. Options are processed in order, so `--export` can name an earlier
//! `--blockdev`; then the daemon serves its monitors until `quit` or SIGTERM/SIGINT,
//! and shuts down cleanly: clients disconnected, requests drained, nodes flushed,
//! sockets and pidfile removed.

mod daemon;
mod nodes;
mod qapi;
mod schema;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use serde_json::Value;

use oxemu_opts::getopt::{self, opt, Opt};
use oxemu_opts::keyval::parse_option;
use oxemu_qmp::{QmpError, QmpServer, VersionInfo};

use daemon::Daemon;

const PROG: &str = "oxemu-storage-daemon";

const HELP: &str = "\
Usage: oxemu-storage-daemon [options]
oxemu storage daemon: block nodes and exports, managed over QMP
(command line and QMP compatible with qemu-storage-daemon 7.2)

  -h, --help                display this help and exit
  -V, --version             output version information and exit

  --blockdev [driver=]<driver>[,node-name=<N>][,discard=ignore|unmap]
             [,cache.direct=on|off][,cache.no-flush=on|off]
             [,read-only=on|off][,auto-read-only=on|off]
             [,force-share=on|off][,detect-zeroes=off][,<driver options>]
                            configure a block backend (drivers: file, host_device, raw, qcow2,
                            blkdebug, blklogwrites);
                            JSON syntax ('{\"driver\": ...}') is accepted too

  --chardev socket,id=<id>,path=<path>[,server=on][,wait=off]
  --chardev socket,id=<id>,host=<host>,port=<port>[,server=on][,wait=off]
                            configure a character device for a monitor

  --daemonize               daemonize the process, and have the parent exit
                            once startup is complete

  --export [type=]nbd,id=<id>,node-name=<node-name>[,name=<export-name>]
           [,writable=on|off][,description=<text>][,allocation-depth=on|off]
                            export the specified block node over NBD
                            (requires --nbd-server)
  --export [type=]vhost-user-blk,id=<id>,node-name=<node-name>,addr.type=unix,
           addr.path=<socket-path>[,writable=on|off][,logical-block-size=<size>]
           [,num-queues=<num-queues>]
                            export the specified block node as a vhost-user-blk
                            device over a UNIX domain socket (each queue is served
                            by its own thread)

  --monitor [chardev=]name[,mode=control]
                            configure a QMP monitor

  --nbd-server addr.type=inet,addr.host=<host>,addr.port=<port>
               [,tls-creds=<id>][,max-connections=<n>]
               [,handshake-max-seconds=<n>]
  --nbd-server addr.type=unix,addr.path=<path>
               [,tls-creds=<id>][,max-connections=<n>]
               [,handshake-max-seconds=<n>]
                            start an NBD server for exporting block nodes

  --object help             list object types that can be added
  --object iothread,id=<id>[,poll-max-ns=<ns>]
  --object tls-creds-x509,id=<id>,dir=<dir>,endpoint=server[,verify-peer=on|off]
                            create a new object

  --pidfile <path>          write process ID to a file after startup
";

/// Where a monitor's chardev listens.
enum Chardev {
    Unix(PathBuf),
    Tcp(String),
}

/// Runs `f` with keyval typing (strings for booleans and integers) unless the option
/// argument is JSON, which is typed strictly as QMP arguments are.
fn typed<R>(arg: &str, f: impl FnOnce() -> R) -> R {
    if arg.trim_start().starts_with('{') {
        f()
    } else {
        oxemu_qmp::args::with_keyval(f)
    }
}

/// A command-line error, printed as `oxemu-storage-daemon: <option> <arg>: <msg>`.
struct CliError(String);

fn opt_error(opt: &str, arg: &str, e: impl std::fmt::Display) -> CliError {
    // `--blockdev=x` is named as typed; `--blockdev x` with a space.
    let sep = if opt.ends_with('=') { "" } else { " " };
    CliError(format!("{opt}{sep}{arg}: {e}"))
}

fn parse(arg: &str, opt: &str, implied: Option<&str>) -> Result<Value, CliError> {
    parse_option(arg, implied).map_err(|e| opt_error(opt, arg, e))
}

fn chardev(v: &Value, arg: &str) -> Result<(String, Chardev), CliError> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let id = s("id").ok_or_else(|| opt_error("--chardev", arg, "Parameter 'id' is missing"))?;
    match s("backend").as_deref() {
        Some("socket") => {}
        Some(b) => {
            return Err(opt_error(
                "--chardev",
                arg,
                format!("chardev backend '{b}' is not supported (only socket)"),
            ))
        }
        None => {
            return Err(opt_error(
                "--chardev",
                arg,
                "Parameter 'backend' is missing",
            ))
        }
    }
    if s("server").is_some_and(|x| !matches!(x.as_str(), "on" | "yes" | "true")) {
        return Err(opt_error(
            "--chardev",
            arg,
            "only server=on sockets are supported for monitors",
        ));
    }
    if let Some(p) = s("path") {
        return Ok((id, Chardev::Unix(p.into())));
    }
    match (s("host"), s("port")) {
        (Some(h), Some(p)) => Ok((id, Chardev::Tcp(format!("{h}:{p}")))),
        (None, Some(p)) => Ok((id, Chardev::Tcp(format!("127.0.0.1:{p}")))),
        _ => Err(opt_error(
            "--chardev",
            arg,
            "Parameter 'path' or 'port' is missing",
        )),
    }
}

struct Options {
    pidfile: Option<PathBuf>,
}

/// qemu-storage-daemon's options (getopt_long: long names may be abbreviated).
const SPEC: &[Opt] = &[
    opt(Some('h'), Some("help"), false),
    opt(Some('V'), Some("version"), false),
    opt(Some('T'), Some("trace"), true),
    opt(None, Some("blockdev"), true),
    opt(None, Some("chardev"), true),
    opt(None, Some("daemonize"), false),
    opt(None, Some("export"), true),
    opt(None, Some("monitor"), true),
    opt(None, Some("nbd-server"), true),
    opt(None, Some("object"), true),
    opt(None, Some("pidfile"), true),
];

/// Processes every option in order against a running daemon.
fn configure(
    parsed: &getopt::Parsed,
    d: &Arc<Daemon>,
    qmp: &Arc<QmpServer>,
) -> Result<Options, CliError> {
    let mut chardevs: HashMap<String, Chardev> = HashMap::new();
    let mut o = Options { pidfile: None };
    let qmp_err = |opt: &str, arg: &str, e: QmpError| {
        // keyval values are all strings; word type errors as QEMU's keyval visitor.
        let e = if arg.trim_start().starts_with('{') {
            e
        } else {
            oxemu_qmp::args::keyval_wording(e)
        };
        opt_error(opt, arg, e.desc)
    };
    if let Some(a) = parsed.args.first() {
        return Err(CliError(format!("{a}: Unexpected argument")));
    }
    for ((key, v), name) in parsed.opts.iter().zip(&parsed.spelled) {
        match format!("--{key}").as_str() {
            "--daemonize" => {}
            "--blockdev" => {
                let v = v.clone();
                {
                    let a = parse(&v, name, None)?;
                    typed(&v, || d.blockdev_add(a))
                }
                .map_err(|e| qmp_err(name, &v, e))?;
            }
            "--export" => {
                let v = v.clone();
                {
                    let a = parse(&v, name, Some("type"))?;
                    typed(&v, || d.block_export_add(a))
                }
                .map_err(|e| qmp_err(name, &v, e))?;
            }
            "--object" => {
                let v = v.clone();
                if v == "help" {
                    println!("List of user creatable objects:\n  iothread\n  tls-creds-x509");
                    std::process::exit(0);
                }
                {
                    let a = parse(&v, name, Some("qom-type"))?;
                    typed(&v, || d.object_add(a))
                }
                .map_err(|e| qmp_err(name, &v, e))?;
            }
            "--nbd-server" => {
                let v = v.clone();
                {
                    let a = parse(&v, name, None)?;
                    typed(&v, || d.nbd_server_start(a))
                }
                .map_err(|e| qmp_err(name, &v, e))?;
            }
            "--chardev" => {
                let v = v.clone();
                let (id, c) = chardev(&parse(&v, name, Some("backend"))?, &v)?;
                if chardevs.insert(id.clone(), c).is_some() {
                    return Err(opt_error(
                        name,
                        &v,
                        format!(
                            "attempt to add duplicate property '{id}' to object (type 'container')"
                        ),
                    ));
                }
            }
            "--monitor" => {
                let v = v.clone();
                let m = parse(&v, name, Some("chardev"))?;
                let id = m
                    .get("chardev")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                if let Some(mode) = m
                    .get("mode")
                    .and_then(Value::as_str)
                    .filter(|m| *m != "control")
                {
                    return Err(opt_error(
                        name,
                        &v,
                        format!("monitor mode '{mode}' is not supported (only control)"),
                    ));
                }
                let c = chardevs
                    .remove(&id)
                    .ok_or_else(|| opt_error(name, &v, format!("chardev \"{id}\" not found")))?;
                match c {
                    Chardev::Unix(p) => qmp.listen_unix(&p).map_err(|e| opt_error(name, &v, e))?,
                    Chardev::Tcp(addr) => {
                        qmp.listen_tcp(&addr).map_err(|e| opt_error(name, &v, e))?;
                    }
                }
            }
            "--pidfile" => o.pidfile = Some(v.clone().into()),
            // QEMU's trace events do not exist here; RUST_LOG selects oxemu's
            // tracing instead. Refused rather than ignored.
            "--trace" => {
                return Err(CliError(format!(
                    "--trace {v}: QEMU trace events are not supported; set OXEMU_LOG=debug (a tracing filter) instead"
                )))
            }
            "--help" | "--version" => {}
            other => return Err(CliError(format!("option '{other}' is not handled"))),
        }
    }
    Ok(o)
}

/// Longest clean shutdown after `quit` or the first SIGTERM/SIGINT/SIGHUP: exports are
/// drained (clients that do not finish are cut off after
/// [`oxemu_nbd::server::STOP_GRACE`] and twice that), nodes flushed and closed; past
/// this time the process exits with status 1 without waiting further.
const SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(8);

/// Blocks SIGTERM, SIGINT and SIGHUP in every thread (call before spawning any), so
/// that one thread can take them with `sigwait`.
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain signal-mask manipulation on a local sigset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Forks; the parent waits until the child reports start-up success (exit 0) or
/// closes the pipe (exit 1). Returns the write end in the child.
fn daemonize() -> i32 {
    let mut fds = [0; 2];
    // SAFETY: fork before any thread exists; pipe/read/setsid are async-signal-safe.
    unsafe {
        if libc::pipe(fds.as_mut_ptr()) != 0 {
            eprintln!(
                "{PROG}: cannot daemonize: {}",
                std::io::Error::last_os_error()
            );
            std::process::exit(1);
        }
        match libc::fork() {
            -1 => {
                eprintln!(
                    "{PROG}: cannot daemonize: {}",
                    std::io::Error::last_os_error()
                );
                std::process::exit(1);
            }
            0 => {
                libc::close(fds[0]);
                libc::setsid();
                fds[1]
            }
            _ => {
                libc::close(fds[1]);
                let mut b = [0u8; 1];
                let n = libc::read(fds[0], b.as_mut_ptr().cast(), 1);
                std::process::exit(if n == 1 && b[0] == 0 { 0 } else { 1 });
            }
        }
    }
}

/// Tells the waiting parent that start-up succeeded and detaches stdio.
fn daemon_ready(fd: i32) {
    // SAFETY: writes one byte to our pipe; dup2 of /dev/null over stdio.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for t in 0..3 {
                libc::dup2(null, t);
            }
            libc::close(null);
        }
        libc::write(fd, [0u8].as_ptr().cast(), 1);
        libc::close(fd);
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    // OXEMU_LOG=debug (or any tracing filter) logs to stderr.
    if let Ok(filter) = std::env::var("OXEMU_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let parsed = match getopt::parse_with(&argv, SPEC, getopt::Wording::Glibc) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{PROG}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if parsed.has("help") {
        print!("{HELP}");
        return ExitCode::SUCCESS;
    }
    if parsed.has("version") {
        println!(
            "{PROG} version {} (compatible with qemu-storage-daemon 7.2)",
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    let ready_fd = parsed.has("daemonize").then(daemonize);
    let sigset = block_signals();
    let d = match Daemon::new() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{PROG}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let qmp = QmpServer::new(d.clone(), VersionInfo::default());
    let opts = match configure(&parsed, &d, &qmp) {
        Ok(o) => o,
        Err(CliError(m)) => {
            eprintln!("{PROG}: {m}");
            qmp.shutdown();
            d.shutdown(None);
            return ExitCode::FAILURE;
        }
    };
    if let Some(p) = &opts.pidfile {
        if let Err(e) = std::fs::write(p, format!("{}\n", std::process::id())) {
            eprintln!("{PROG}: cannot create PID file: {e}");
            qmp.shutdown();
            d.shutdown(None);
            return ExitCode::FAILURE;
        }
    }
    if let Some(fd) = ready_fd {
        daemon_ready(fd);
    }
    let quit = d.quit_handle();
    std::thread::spawn(move || {
        let mut first = true;
        loop {
            let mut sig = 0;
            // SAFETY: waits for one of the signals blocked above.
            if unsafe { libc::sigwait(&sigset, &mut sig) } != 0 {
                continue;
            }
            if first {
                // The first signal asks for a clean shutdown ...
                first = false;
                *quit.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
                quit.1.notify_all();
                continue;
            }
            // ... a further one forces the exit.
            eprintln!("{PROG}: received signal {sig} again, exiting immediately");
            // SAFETY: ends the process at once, without running other threads' code.
            unsafe { libc::_exit(1) };
        }
    });
    d.wait_for_quit();
    // Shutdown is bounded: whatever keeps it from finishing, the process ends.
    std::thread::spawn(|| {
        std::thread::sleep(SHUTDOWN_TIMEOUT);
        eprintln!(
            "{PROG}: shutdown did not finish within {} s, exiting",
            SHUTDOWN_TIMEOUT.as_secs()
        );
        // SAFETY: ends the process at once.
        unsafe { libc::_exit(1) };
    });
    qmp.shutdown();
    d.shutdown(Some(qmp.events()));
    if let Some(p) = &opts.pidfile {
        let _ = std::fs::remove_file(p);
    }
    ExitCode::SUCCESS
}
