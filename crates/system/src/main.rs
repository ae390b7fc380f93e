//! `oxemu-system-aarch64`: QEMU's machine command line, the qtest accelerator and a
//! QMP monitor over oxemu's device model. There is no CPU emulation: CPUs are
//! objects with properties, and virtual time moves only through qtest.

mod chardev;
mod inet;
mod qmp_cmds;
mod vm;

use std::io::Write;
use std::sync::Arc;

use chardev::{Backend, Chardev, Legacy, LegacyError};
use oxemu_system::cli::{self, CliError, Help};
use serde_json::Value;
use vm::Vm;

const PROG: &str = "oxemu-system-aarch64";

fn die(e: CliError) -> ! {
    eprint!("{}", e.render(PROG));
    std::process::exit(1)
}

/// The accelerator: `qtest`, the only one oxemu has.
fn choose_accel(c: &cli::Config) -> Result<bool, CliError> {
    let machine_accel = c.machine.get("accel");
    if !c.accels.is_empty() && machine_accel.is_some() {
        return Err(CliError::plain(
            "The -accel and \"-machine accel=\" options are incompatible",
        ));
    }
    let mut names: Vec<String> = Vec::new();
    for a in &c.accels {
        let mut o = a.opts.clone();
        let n = o.take("accel").unwrap_or_default();
        if let Some(k) = o.first_key() {
            return Err(CliError::at(
                "accel",
                Some(&a.text),
                format!("Property '{n}-accel.{k}' not found"),
            ));
        }
        names.push(n);
    }
    match machine_accel {
        None => {}
        Some(Value::String(m)) => names.extend(m.split(':').map(String::from)),
        Some(_) => return Err(CliError::plain("Parameters 'accel.*' are unexpected")),
    }
    if let Some(n) = names.first() {
        match n.as_str() {
            "qtest" => return Ok(true),
            "tcg" | "kvm" | "hvf" | "xen" => {
                return Err(CliError::plain(format!(
                    "accelerator '{n}' is not available: oxemu-system-aarch64 has no CPU emulation; use -accel qtest"
                )))
            }
            "help" | "?" => {
                println!("Accelerators supported in oxemu-system-aarch64:\nqtest");
                std::process::exit(0);
            }
            other => return Err(CliError::plain(format!("invalid accelerator {other}"))),
        }
    }
    // No accelerator asked for: qtest, the only one there is.
    Ok(true)
}

/// `-display`: keyval with implied `type`; oxemu has the `none` display only.
fn check_display(d: &str) -> Result<(), String> {
    if d == "help" || d == "?" {
        println!("Available display backend types:\nnone");
        std::process::exit(0);
    }
    let mut o =
        match oxemu_opts::keyval::parse_keyval(d, Some("type")).map_err(|e| e.to_string())? {
            Value::Object(o) => o,
            _ => unreachable!("keyval always yields an object"),
        };
    let ty = match o.remove("type") {
        None => return Err("Parameter 'type' is missing".into()),
        Some(Value::String(t)) => t,
        Some(_) => return Err("Invalid parameter type for 'type', expected: string".into()),
    };
    if ty != "none" {
        return Err(format!("Parameter 'type' does not accept value '{ty}'"));
    }
    match o.keys().next() {
        Some(k) => Err(format!("Parameter '{k}' is unexpected")),
        None => Ok(()),
    }
}

fn add_chardev(vm: &Vm, c: Chardev) -> Result<(), String> {
    let mut l = vm.chardevs.lock().unwrap_or_else(|p| p.into_inner());
    if l.iter().any(|x| x.label == c.label) {
        return Err(format!("Duplicate ID '{}' for chardev", c.label));
    }
    l.push(c);
    Ok(())
}

/// Takes the backend of chardev `id` for a frontend.
fn claim(vm: &Vm, id: &str) -> Result<Backend, String> {
    let mut l = vm.chardevs.lock().unwrap_or_else(|p| p.into_inner());
    let c = l
        .iter_mut()
        .find(|c| c.label == id)
        .ok_or_else(|| format!("chardev \"{id}\" not found"))?;
    if c.frontend {
        return Err(format!("Chardev '{id}' is busy"));
    }
    c.frontend = true;
    c.backend
        .take()
        .ok_or_else(|| format!("Chardev '{id}' is busy"))
}

fn legacy_backend(vm: &Vm, spec: &str, label: &str) -> Result<Option<Backend>, LegacyError> {
    let open = LegacyError::Open;
    match chardev::legacy(spec, label)? {
        Legacy::None => Ok(None),
        Legacy::Existing(id) => claim(vm, &id).map(Some).map_err(open),
        Legacy::New(c) => {
            add_chardev(vm, c).map_err(open)?;
            claim(vm, label).map(Some).map_err(open)
        }
        Legacy::Options(_) => unreachable!("legacy() builds every spec it reads"),
    }
}

/// Runs a QMP monitor on `b`.
fn qmp_on(server: &Arc<oxemu_qmp::QmpServer>, b: Backend) -> Result<(), String> {
    match b {
        Backend::Client(s) => {
            server.serve_unix_stream(s);
            Ok(())
        }
        Backend::Server(l, _) => {
            let s = server.clone();
            std::thread::Builder::new()
                .name("qmp-accept".into())
                .spawn(move || {
                    for c in l.incoming().flatten() {
                        s.serve_unix_stream(c);
                    }
                })
                .map(drop)
                .map_err(|e| e.to_string())
        }
        Backend::TcpClient(s) => {
            server.serve_tcp_stream(s);
            Ok(())
        }
        Backend::TcpServer(l, nodelay) => {
            let s = server.clone();
            std::thread::Builder::new()
                .name("qmp-accept".into())
                .spawn(move || {
                    for c in l.incoming().flatten() {
                        if nodelay {
                            let _ = c.set_nodelay(true);
                        }
                        s.serve_tcp_stream(c);
                    }
                })
                .map(drop)
                .map_err(|e| e.to_string())
        }
        _ => Err("QMP monitors need a socket chardev in oxemu".into()),
    }
}

fn qtest_on(vm: &Arc<Vm>, b: Backend, log: Option<Box<dyn Write + Send>>) -> Result<(), String> {
    let machine = vm.machine.clone();
    let accel = vm.qtest_accel;
    let spawn = |f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name("qtest".into())
            .spawn(f)
            .map(drop)
            .map_err(|e| e.to_string())
    };
    match b {
        Backend::Client(s) => {
            let w = s.try_clone().map_err(|e| e.to_string())?;
            spawn(Box::new(move || {
                oxemu_qtest::server::QtestServer::new(machine, accel, Box::new(w), log).serve(s)
            }))
        }
        Backend::Server(l, _) => spawn(Box::new(move || {
            let log = log.map(|l| Arc::new(std::sync::Mutex::new(l)));
            for s in l.incoming().flatten() {
                let Ok(w) = s.try_clone() else { continue };
                let lg: Option<Box<dyn Write + Send>> =
                    log.clone().map(|l| Box::new(SharedLog(l)) as _);
                oxemu_qtest::server::QtestServer::new(machine.clone(), accel, Box::new(w), lg)
                    .serve(s);
            }
        })),
        Backend::TcpClient(s) => {
            let w = s.try_clone().map_err(|e| e.to_string())?;
            spawn(Box::new(move || {
                oxemu_qtest::server::QtestServer::new(machine, accel, Box::new(w), log).serve(s)
            }))
        }
        Backend::TcpServer(l, nodelay) => spawn(Box::new(move || {
            let log = log.map(|l| Arc::new(std::sync::Mutex::new(l)));
            for s in l.incoming().flatten() {
                if nodelay {
                    let _ = s.set_nodelay(true);
                }
                let Ok(w) = s.try_clone() else { continue };
                let lg: Option<Box<dyn Write + Send>> =
                    log.clone().map(|l| Box::new(SharedLog(l)) as _);
                oxemu_qtest::server::QtestServer::new(machine.clone(), accel, Box::new(w), lg)
                    .serve(s);
            }
        })),
        Backend::Stdio => spawn(Box::new(move || {
            oxemu_qtest::server::QtestServer::new(machine, accel, Box::new(std::io::stdout()), log)
                .serve(std::io::stdin())
        })),
        Backend::Pipe(i, o) => spawn(Box::new(move || {
            oxemu_qtest::server::QtestServer::new(machine, accel, Box::new(o), log).serve(i)
        })),
        Backend::Null | Backend::File(_) => Err("qtest needs a chardev that can be read".into()),
    }
}

type LogSink = Arc<std::sync::Mutex<Box<dyn Write + Send>>>;

struct SharedLog(LogSink);
impl Write for SharedLog {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: plain signal-mask manipulation on a local set.
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

/// Forks; the parent exits 0 once the child reports readiness on the pipe (or 1
/// if it dies first). Returns the write end in the child.
fn daemonize() -> Result<std::fs::File, String> {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) into a local array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } < 0 {
        return Err("daemonize: pipe failed".into());
    }
    // SAFETY: no threads exist yet, so fork(2) is safe.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err("daemonize: fork failed".into());
    }
    if pid > 0 {
        // SAFETY: closing the write end we do not use; reading our pipe.
        unsafe { libc::close(fds[1]) };
        let mut b = [0u8; 1];
        // SAFETY: reading one byte into a local buffer.
        let n = unsafe { libc::read(fds[0], b.as_mut_ptr().cast(), 1) };
        std::process::exit(if n == 1 { 0 } else { 1 });
    }
    // SAFETY: child: close the read end, detach from the terminal, point stdio at
    // /dev/null (descriptors we own).
    unsafe {
        libc::close(fds[0]);
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
        }
    }
    use std::os::fd::FromRawFd;
    // SAFETY: fds[1] is ours.
    Ok(unsafe { std::fs::File::from_raw_fd(fds[1]) })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut warnings = Vec::new();
    let parsed = cli::parse(&args, &mut warnings);
    for w in &warnings {
        eprint!("{}", w.render(PROG));
    }
    let c = parsed.unwrap_or_else(|e| die(e));
    match &c.help {
        Some(Help::Usage) => {
            print!("{}", cli::usage());
            return;
        }
        Some(Help::Version) => {
            println!("{PROG} version 7.2.0 (oxemu {})", env!("CARGO_PKG_VERSION"));
            return;
        }
        Some(Help::Machines) => {
            print!("{}", vm::machines_help());
            return;
        }
        Some(Help::Cpus) => {
            print!("{}", vm::cpus_help());
            return;
        }
        Some(Help::Devices) => {
            print!("{}", vm::devices_help());
            return;
        }
        Some(Help::Objects) => {
            print!("{}", vm::objects_help());
            return;
        }
        Some(Help::DeviceProps(d)) => {
            print!("{}", vm::device_props_help(d).unwrap_or_else(|e| die(e)));
            return;
        }
        None => {}
    }
    if let Some(d) = &c.display {
        check_display(d).unwrap_or_else(|e| die(CliError::at("display", Some(d), e)));
    }
    for m in &c.monitors {
        if m != "none" {
            die(CliError::at("monitor", Some(m), "HMP monitors are not supported by oxemu-system-aarch64; use -qmp or -mon mode=control"));
        }
    }
    let qtest_accel = choose_accel(&c).unwrap_or_else(|e| die(e));
    let vm = Arc::new(vm::build_machine(&c, qtest_accel).unwrap_or_else(|e| die(e)));
    for a in &c.chardevs {
        chardev::open(&a.opts)
            .and_then(|ch| add_chardev(&vm, ch))
            .unwrap_or_else(|e| die(CliError::at("chardev", Some(&a.text), e)));
    }
    let mut serials = c.serials.clone();
    if c.nographic && serials.is_empty() {
        serials.push("stdio".into());
    }
    for (i, s) in serials.iter().enumerate() {
        if let Err(e) = legacy_backend(&vm, s, &format!("serial{i}")) {
            // QEMU adds this line whenever a serial backend fails.
            let tail = format!("could not connect serial device to character backend '{s}'");
            let msg = match e.msg() {
                "" => tail,
                m => format!("{m}\n{PROG}: -serial {s}: {tail}"),
            };
            die(CliError::at("serial", Some(s), msg));
        }
    }
    // Monitors: check every spec before anything runs.
    let mut qmp_backends = Vec::new();
    for a in &c.mons {
        let m = &a.text;
        let mut o = a.opts.clone();
        let id = o.take("chardev").unwrap_or_default();
        let mode = o.take("mode").unwrap_or_else(|| "readline".into());
        if let Some(p) = o.take("pretty") {
            let pretty = oxemu_opts::qemu_opts::parse_bool("pretty", &p)
                .unwrap_or_else(|e| die(CliError::at("mon", Some(m), e)));
            if pretty {
                die(CliError::at(
                    "mon",
                    Some(m),
                    "pretty=on is not supported by oxemu-system-aarch64",
                ));
            }
        }
        if let Some(k) = o.first_key() {
            die(CliError::at(
                "mon",
                Some(m),
                format!("Invalid parameter '{k}'"),
            ));
        }
        let b = claim(&vm, &id).unwrap_or_else(|e| die(CliError::at("mon", Some(m), e)));
        if mode != "control" {
            die(CliError::at(
                "mon",
                Some(m),
                "HMP monitors are not supported by oxemu-system-aarch64; use mode=control",
            ));
        }
        qmp_backends.push(b);
    }
    for (i, q) in c.qmps.iter().enumerate() {
        match legacy_backend(&vm, q, &format!("compat_monitor{i}")) {
            Ok(Some(b)) => qmp_backends.push(b),
            Ok(None) => {}
            Err(LegacyError::Open(m)) => die(CliError::at("qmp", Some(q), m)),
            Err(LegacyError::Parse(m)) => {
                if !m.is_empty() {
                    eprint!("{}", CliError::at("qmp", Some(q), m).render(PROG));
                }
                die(CliError::at("qmp", Some(q), format!("parse error: {q}")))
            }
        }
    }
    let qtest_backend = c
        .qtest
        .as_ref()
        .map(|q| match legacy_backend(&vm, q, "qtest") {
            Ok(Some(b)) => b,
            Ok(None) => die(CliError::plain(format!(
                "Failed to initialize device for qtest: \"{q}\""
            ))),
            Err(e) => {
                if !e.msg().is_empty() {
                    eprintln!("{PROG}: {}", e.msg());
                }
                die(CliError::plain(format!(
                    "Failed to initialize device for qtest: \"{q}\""
                )))
            }
        });
    let qtest_log: Option<Box<dyn Write + Send>> = match c.qtest_log.as_deref() {
        Some("none") => None,
        Some(p) => Some(Box::new(std::fs::File::create(p).unwrap_or_else(|e| {
            die(CliError::at(
                "qtest-log",
                Some(p),
                format!("Could not open '{p}': {e}"),
            ))
        }))),
        None => Some(Box::new(std::io::stderr())),
    };
    let ready = if c.daemonize {
        Some(daemonize().unwrap_or_else(|e| die(CliError::plain(e))))
    } else {
        None
    };
    if let Some(p) = &c.pidfile {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .unwrap_or_else(|e| die(CliError::plain(format!("cannot create PID file: {e}"))));
    }
    let sigs = block_signals();
    let server = oxemu_qmp::QmpServer::new(
        Arc::new(qmp_cmds::Commands { vm: vm.clone() }),
        oxemu_qmp::VersionInfo::default(),
    );
    let _ = vm.events.set(server.events().clone());
    for b in qmp_backends {
        qmp_on(&server, b).unwrap_or_else(|e| die(CliError::plain(e)));
    }
    if let Some(b) = qtest_backend {
        qtest_on(
            &vm,
            b,
            if c.qtest_log.is_none() && c.daemonize {
                None
            } else {
                qtest_log
            },
        )
        .unwrap_or_else(|e| die(CliError::plain(e)));
    }
    if let Some(mut r) = ready {
        let _ = r.write_all(b"1");
    }
    // Wait for quit or a signal.
    loop {
        if vm
            .shutdown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            break;
        }
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 50_000_000,
        };
        // SAFETY: waiting for the signals blocked above; no info is read.
        let sig = unsafe { libc::sigtimedwait(&sigs, std::ptr::null_mut(), &ts) };
        if sig > 0 {
            eprintln!("{PROG}: terminating on signal {sig}");
            vm.request_shutdown("host-signal");
            break;
        }
    }
    server.shutdown();
    for ch in vm
        .chardevs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter_mut()
    {
        if let Some(Backend::Server(_, p)) = ch.backend.take() {
            let _ = std::fs::remove_file(p);
        }
    }
    let chardev_texts = c.chardevs.iter().map(|a| &a.text);
    for spec in c.qmps.iter().chain(chardev_texts).chain(c.qtest.iter()) {
        if spec.contains("server=on") || spec.contains(",server,") || spec.ends_with(",server") {
            if let Some(p) = spec
                .split(',')
                .find_map(|e| e.strip_prefix("path=").or_else(|| e.strip_prefix("unix:")))
            {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    if let Some(p) = &c.pidfile {
        let _ = std::fs::remove_file(p);
    }
    let _ = std::io::stdout().flush();
    std::process::exit(0);
}
