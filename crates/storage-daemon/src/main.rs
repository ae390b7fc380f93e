//! `oxemu-storage-daemon`: qemu-storage-daemon's command line and QMP on oxemu's block
//! layer. Options are processed in order, so `--export` can name an earlier
//! `--blockdev`; then the daemon serves its monitors until `quit` or SIGTERM/SIGINT,
//! and shuts down cleanly: clients disconnected, requests drained, nodes flushed,
//! sockets and pidfile removed.

mod daemon;
mod nodes;
mod qapi;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use serde_json::Value;

use oxemu_qmp::keyval::parse_option;
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
                            configure a block backend (drivers: file, host_device, raw);
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
    CliError(format!("{opt} {arg}: {e}"))
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

/// Splits `--opt=value` and `--opt value`.
fn next_value(
    argv: &[String],
    i: &mut usize,
    name: &str,
    inline: Option<String>,
) -> Result<String, CliError> {
    if let Some(v) = inline {
        return Ok(v);
    }
    *i += 1;
    argv.get(*i)
        .cloned()
        .ok_or_else(|| CliError(format!("option '{name}' requires an argument")))
}

/// Processes every option in order against a running daemon.
fn configure(argv: &[String], d: &Arc<Daemon>, qmp: &Arc<QmpServer>) -> Result<Options, CliError> {
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
    let mut i = 0;
    while i < argv.len() {
        let a = argv[i].clone();
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        match name.as_str() {
            "--daemonize" => {}
            "--blockdev" => {
                let v = next_value(argv, &mut i, &name, inline)?;
                {
                    let a = parse(&v, &name, None)?;
                    typed(&v, || d.blockdev_add(a))
                }
                .map_err(|e| qmp_err(&name, &v, e))?;
            }
            "--export" => {
                let v = next_value(argv, &mut i, &name, inline)?;
                {
                    let a = parse(&v, &name, Some("type"))?;
                    typed(&v, || d.block_export_add(a))
                }
                .map_err(|e| qmp_err(&name, &v, e))?;
            }
            "--object" => {
                let v = next_value(argv, &mut i, &name, inline)?;
                if v == "help" {
                    println!("List of user creatable objects:\n  iothread\n  tls-creds-x509");
                    std::process::exit(0);
                }
                {
                    let a = parse(&v, &name, Some("qom-type"))?;
                    typed(&v, || d.object_add(a))
                }
                .map_err(|e| qmp_err(&name, &v, e))?;
            }
            "--nbd-server" => {
                let v = next_value(argv, &mut i, &name, inline)?;
                {
                    let a = parse(&v, &name, None)?;
                    typed(&v, || d.nbd_server_start(a))
                }
                .map_err(|e| qmp_err(&name, &v, e))?;
            }
            "--chardev" => {
                let v = next_value(argv, &mut i, &name, inline)?;
                let (id, c) = chardev(&parse(&v, &name, Some("backend"))?, &v)?;
                if chardevs.insert(id.clone(), c).is_some() {
                    return Err(opt_error(
                        &name,
                        &v,
                        format!(
                            "attempt to add duplicate property '{id}' to object (type 'container')"
                        ),
                    ));
                }
            }
            "--monitor" => {
                let v = next_value(argv, &mut i, &name, inline)?;
                let m = parse(&v, &name, Some("chardev"))?;
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
                        &name,
                        &v,
                        format!("monitor mode '{mode}' is not supported (only control)"),
                    ));
                }
                let c = chardevs
                    .remove(&id)
                    .ok_or_else(|| opt_error(&name, &v, format!("chardev \"{id}\" not found")))?;
                match c {
                    Chardev::Unix(p) => qmp.listen_unix(&p).map_err(|e| opt_error(&name, &v, e))?,
                    Chardev::Tcp(addr) => {
                        qmp.listen_tcp(&addr).map_err(|e| opt_error(&name, &v, e))?;
                    }
                }
            }
            "--pidfile" => o.pidfile = Some(next_value(argv, &mut i, &name, inline)?.into()),
            "-T" | "--trace" => {
                next_value(argv, &mut i, &name, inline)?;
                eprintln!("{PROG}: warning: tracing is not supported; --trace ignored");
            }
            _ if a.starts_with('-') => {
                return Err(CliError(format!(
                    "unrecognized option '{a}'\nTry '{PROG} --help' for more information"
                )))
            }
            _ => return Err(CliError(format!("Unexpected argument: {a}"))),
        }
        i += 1;
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
    if argv.iter().any(|a| a == "-h" || a == "--help") {
        print!("{HELP}");
        return ExitCode::SUCCESS;
    }
    if argv.iter().any(|a| a == "-V" || a == "--version") {
        println!(
            "{PROG} version {} (compatible with qemu-storage-daemon 7.2)",
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    let ready_fd = argv.iter().any(|a| a == "--daemonize").then(daemonize);
    let sigset = block_signals();
    let d = match Daemon::new() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{PROG}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let qmp = QmpServer::new(d.clone(), VersionInfo::default());
    let opts = match configure(&argv, &d, &qmp) {
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
