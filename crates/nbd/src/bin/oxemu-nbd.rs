//! `oxemu-nbd`: export one disk image over NBD, with qemu-nbd's command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use oxemu_block::{Aio, BlockDriver, EventLoopConfig, FileOptions, IoThread};
use oxemu_nbd::{NbdAddr, NbdExportOptions, NbdServer, NbdServerOptions, X509Creds};

const USAGE: &str = "Usage: oxemu-nbd [OPTIONS] FILE
Export FILE (a raw or qcow2 image) over NBD.

  -h, --help                display this help and exit
  -V, --version             output version information and exit

Connection properties:
  -p, --port=PORT           port to listen on (default '10809')
  -b, --bind=IFACE          interface to bind to (default '0.0.0.0')
  -k, --socket=PATH         path to the unix socket
  -e, --shared=NUM          serve NUM clients at once (default '1', 0 = unlimited)
  -t, --persistent          don't exit on the last connection
  -x, --export-name=NAME    expose export by name (default '')
  -D, --description=TEXT    export a human-readable description
  -A, --allocation-depth    expose the allocation depth (qemu:allocation-depth)
      --tls-creds=ID        use id of an earlier --object to provide TLS
      --object tls-creds-x509,id=ID,dir=DIR,endpoint=server[,verify-peer=on|off]
      --pid-file=PATH       store the server's process ID in PATH

Block device options:
  -f, --format=FORMAT       set image format (raw, qcow2)
  -r, --read-only           export read-only
      --cache=MODE          cache mode (none, writeback, writethrough, directsync, unsafe)
      --aio=MODE            AIO mode (threads, native, io_uring)
      --discard=MODE        what trim requests do: ignore (default) or unmap
";

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
    cache: String,
    aio: Aio,
    discard: oxemu_block::file::Discard,
    objects: Vec<X509Creds>,
    tls_creds: Option<String>,
    description: String,
    allocation_depth: bool,
    pid_file: Option<PathBuf>,
}

enum Parsed {
    Run(Box<Args>),
    Exit(String),
}

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
        cache: "writeback".into(),
        aio: Aio::Threads,
        // qemu-nbd's default: trims succeed but leave the image as it is.
        discard: oxemu_block::file::Discard::Ignore,
        objects: Vec::new(),
        tls_creds: None,
        description: String::new(),
        allocation_depth: false,
        pid_file: None,
    };
    let mut files = Vec::new();
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        // Short options may carry their value attached: -p10809.
        let (key, inline) = if !key.starts_with("--") && key.starts_with('-') && key.len() > 2 {
            (key[..2].to_string(), Some(key[2..].to_string()))
        } else {
            (key, inline)
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("option '{name}' requires an argument"))
        };
        match key.as_str() {
            "-h" | "--help" => return Ok(Parsed::Exit(USAGE.into())),
            "-V" | "--version" => {
                return Ok(Parsed::Exit(format!(
                    "oxemu-nbd {} (qemu-nbd compatible)\n",
                    env!("CARGO_PKG_VERSION")
                )))
            }
            "-r" | "--read-only" => a.read_only = true,
            "-t" | "--persistent" => a.persistent = true,
            "-A" | "--allocation-depth" => a.allocation_depth = true,
            "-x" | "--export-name" => a.name = value(&key)?,
            "-D" | "--description" => a.description = value(&key)?,
            "-k" | "--socket" => a.socket = Some(value(&key)?.into()),
            "-b" | "--bind" => a.bind = value(&key)?,
            "-f" | "--format" => a.format = Some(value(&key)?),
            "--cache" => a.cache = value(&key)?,
            "--discard" => {
                a.discard = match value(&key)?.as_str() {
                    "ignore" | "off" => oxemu_block::file::Discard::Ignore,
                    "unmap" | "on" => oxemu_block::file::Discard::Unmap,
                    v => return Err(format!("Invalid discard mode `{v}'")),
                }
            }
            "--pid-file" => a.pid_file = Some(value(&key)?.into()),
            "--tls-creds" => a.tls_creds = Some(value(&key)?),
            "--object" => a.objects.push(X509Creds::parse_object(&value(&key)?)?),
            "--aio" => a.aio = value(&key)?.parse().map_err(|e| format!("{e}"))?,
            "-p" | "--port" => {
                let v = value(&key)?;
                a.port = v.parse().map_err(|_| format!("Invalid port '{v}'"))?;
            }
            "-e" | "--shared" => {
                let v = value(&key)?;
                a.shared = v
                    .parse()
                    .map_err(|_| format!("Invalid shared device number '{v}'"))?;
            }
            k if k.starts_with('-') && k.len() > 1 => {
                return Err(format!(
                    "unrecognized option '{k}'\nTry 'oxemu-nbd --help' for more information."
                ))
            }
            _ => files.push(arg),
        }
    }
    match files.len() {
        1 => a.file = files.remove(0).into(),
        0 => return Err("Expected exactly one file name argument (try --help)".into()),
        _ => return Err(format!("Too many file name arguments: {files:?}")),
    }
    if a.tls_creds.is_some() && a.socket.is_some() {
        // qemu-nbd allows it; nothing to check.
    }
    Ok(Parsed::Run(Box::new(a)))
}

fn cache_mode(mode: &str) -> Result<(bool, bool), String> {
    // (direct, no_flush)
    match mode {
        "none" | "off" => Ok((true, false)),
        "directsync" => Ok((true, false)),
        "writeback" | "writethrough" => Ok((false, false)),
        "unsafe" => Ok((false, true)),
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
    let (direct, no_flush) = cache_mode(&a.cache)?;
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
    Ok(img.driver)
}

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

fn run(a: Args) -> Result<(), String> {
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
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut sig = 0;
            // SAFETY: sigwait on signals blocked in every thread; writes one int.
            unsafe { libc::sigwait(&sigs, &mut sig) };
            let _ = tx.send(());
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
    server.stop();
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
                eprintln!("oxemu-nbd: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("oxemu-nbd: {e}");
            ExitCode::FAILURE
        }
    }
}
