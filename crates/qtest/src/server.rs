//! The server side of the qtest protocol (QEMU 7.2's `softmmu/qtest.c`).
//!
//! Replies and the asynchronous `IRQ raise N` / `IRQ lower N` lines go to one
//! writer; with a log (`-qtest-log`), received lines are logged as
//! `[R +SECONDS] WORDS` and sent ones as `[S +SECONDS] LINE`, as QEMU logs them.
//! Differences from QEMU, all on input QEMU would abort on: a malformed line gets
//! `FAIL <reason>` and the server goes on; sizes above
//! [`crate::protocol::MAX_TRANSFER`] and lines above [`crate::protocol::MAX_LINE`]
//! are refused.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use oxemu_devmodel::gpio::Irq;
use oxemu_devmodel::machine::{Machine, SharedMachine};
use oxemu_devmodel::qom::ObjectId;

use crate::protocol::{parse, Command, MAX_LINE};

/// Number of interrupt lines whose level is tracked (QEMU's `irq_levels`).
pub const MAX_IRQ: usize = 256;

/// Where output goes: the client and, optionally, the log.
struct Link {
    out: Mutex<Box<dyn Write + Send>>,
    log: Option<Mutex<Box<dyn Write + Send>>>,
    start: Mutex<Instant>,
    levels: Mutex<[i32; MAX_IRQ]>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Link {
    fn elapsed(&self) -> f64 {
        lock(&self.start).elapsed().as_secs_f64()
    }

    fn log(&self, tag: char, text: &str) {
        if let Some(l) = &self.log {
            let t = self.elapsed();
            let mut l = lock(l);
            let _ = write!(l, "[{tag} +{t:.6}]{text}");
            let _ = l.flush();
        }
    }

    /// Sends one line (with its `\n`).
    fn send(&self, line: &str) {
        self.log('S', &format!(" {line}"));
        let mut o = lock(&self.out);
        let _ = o.write_all(line.as_bytes());
        let _ = o.flush();
    }

    fn irq(&self, n: usize, level: i32) {
        let changed = {
            let mut l = lock(&self.levels);
            match l.get_mut(n) {
                Some(cur) if *cur != level => {
                    *cur = level;
                    true
                }
                _ => false,
            }
        };
        if changed {
            let what = if level != 0 { "raise" } else { "lower" };
            self.send(&format!("IRQ {what} {n}\n"));
        }
    }
}

/// A qtest server bound to a machine and one client connection's writer.
pub struct QtestServer {
    machine: SharedMachine,
    accel_qtest: bool,
    link: Arc<Link>,
    intercepted: Mutex<Option<ObjectId>>,
    opened: AtomicBool,
}

impl QtestServer {
    /// A server for `machine` writing to `out`. `accel_qtest` enables
    /// `clock_step`/`clock_set` (they exist only under `-accel qtest`).
    pub fn new(
        machine: SharedMachine,
        accel_qtest: bool,
        out: Box<dyn Write + Send>,
        log: Option<Box<dyn Write + Send>>,
    ) -> Self {
        QtestServer {
            machine,
            accel_qtest,
            link: Arc::new(Link {
                out: Mutex::new(out),
                log: log.map(Mutex::new),
                start: Mutex::new(Instant::now()),
                levels: Mutex::new([0; MAX_IRQ]),
            }),
            intercepted: Mutex::new(None),
            opened: AtomicBool::new(false),
        }
    }

    /// Marks the connection open: IRQ levels reset, log timer restarts.
    pub fn open(&self) {
        *lock(&self.link.levels) = [0; MAX_IRQ];
        *lock(&self.link.start) = Instant::now();
        self.opened.store(true, Ordering::SeqCst);
        self.link.log('I', " OPENED\n");
    }

    /// Marks the connection closed.
    pub fn close(&self) {
        if self.opened.swap(false, Ordering::SeqCst) {
            self.link.log('I', " CLOSED\n");
        }
    }

    /// Serves lines from `r` until it ends.
    pub fn serve(&self, mut r: impl Read) {
        self.open();
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 64 << 10];
        let mut skipping = false;
        loop {
            let n = match r.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let mut data = &chunk[..n];
            while let Some(pos) = data.iter().position(|b| *b == b'\n') {
                if skipping {
                    skipping = false;
                } else if buf.len() + pos > MAX_LINE {
                    self.link
                        .send(&format!("FAIL line longer than {MAX_LINE} bytes\n"));
                } else {
                    buf.extend_from_slice(&data[..pos]);
                    let line = String::from_utf8_lossy(&buf).into_owned();
                    self.handle_line(&line);
                }
                buf.clear();
                data = &data[pos + 1..];
            }
            if !skipping {
                buf.extend_from_slice(data);
                if buf.len() > MAX_LINE {
                    buf.clear();
                    skipping = true;
                    self.link
                        .send(&format!("FAIL line longer than {MAX_LINE} bytes\n"));
                }
            }
        }
        self.close();
    }

    /// Handles one line (without `\n`), sending its reply.
    pub fn handle_line(&self, line: &str) {
        let mut words = String::new();
        for w in line.split(' ') {
            words.push(' ');
            words.push_str(w);
        }
        words.push('\n');
        self.link.log('R', &words);
        let reply = match parse(line) {
            Ok(c) => self.execute(c),
            Err(e) => format!("FAIL {e}"),
        };
        self.link.send(&format!("{reply}\n"));
    }

    fn machine(&self) -> MutexGuard<'_, Machine> {
        lock(&self.machine)
    }

    fn execute(&self, c: Command) -> String {
        match c {
            Command::Out(w, port, v) => {
                let b = v.to_le_bytes();
                self.machine().write_io(port, &b[..w.bytes()]);
                "OK".into()
            }
            Command::In(w, port) => {
                let mut b = [0u8; 8];
                self.machine().read_io(port, &mut b[..w.bytes()]);
                format!("OK 0x{:04x}", u64::from_le_bytes(b) as u32)
            }
            Command::Write(w, a, v) => {
                let b = v.to_le_bytes();
                self.machine().write_memory(a, &b[..w.bytes()]);
                "OK".into()
            }
            Command::Read(w, a) => {
                let mut b = [0u8; 8];
                self.machine().read_memory(a, &mut b[..w.bytes()]);
                format!("OK 0x{:016x}", u64::from_le_bytes(b))
            }
            Command::ReadBuf(a, n) => {
                let mut b = vec![0u8; n as usize];
                self.machine().read_memory(a, &mut b);
                let mut s = String::with_capacity(5 + 2 * b.len());
                s.push_str("OK 0x");
                for x in b {
                    s.push_str(&format!("{x:02x}"));
                }
                s
            }
            Command::B64Read(a, n) => {
                let mut b = vec![0u8; n as usize];
                self.machine().read_memory(a, &mut b);
                format!("OK {}", crate::b64::encode(&b))
            }
            Command::WriteBuf(a, d) | Command::B64Write(a, d) => {
                self.machine().write_memory(a, &d);
                "OK".into()
            }
            Command::Memset(a, n, v) => {
                if n > 0 {
                    let d = vec![v; n as usize];
                    self.machine().write_memory(a, &d);
                }
                "OK".into()
            }
            Command::ClockStep(ns) if self.accel_qtest => {
                let m = self.machine();
                let step = ns.or_else(|| m.clock.deadline_ns());
                if let Some(step) = step {
                    m.clock.warp(m.clock.now().saturating_add(step));
                }
                format!("OK {}", m.clock.now())
            }
            Command::ClockSet(ns) if self.accel_qtest => {
                let m = self.machine();
                m.clock.warp(ns);
                format!("OK {}", m.clock.now())
            }
            Command::ClockStep(_) => "FAIL Unknown command 'clock_step'".into(),
            Command::ClockSet(_) => "FAIL Unknown command 'clock_set'".into(),
            Command::IrqIntercept(out, path) => self.intercept(out, &path),
            Command::SetIrqIn(path, name, n, level) => {
                let m = self.machine();
                let Some(dev) = self.device(&m, &path) else {
                    return "FAIL Unknown device".into();
                };
                let line = m
                    .tree
                    .get(dev)
                    .and_then(|o| o.gpios.input(name.as_deref(), n as usize))
                    .cloned();
                match line {
                    Some(l) => {
                        l.set(level);
                        "OK".into()
                    }
                    None => format!(
                        "FAIL No GPIO input '{}'[{n}] on {path}",
                        name.as_deref().unwrap_or("unnamed-gpio-in")
                    ),
                }
            }
            Command::Endianness => "OK little".into(),
            // oxemu is built without loadable modules: module_load always fails,
            // as QEMU's does for a module it cannot find.
            Command::ModuleLoad => "FAIL".into(),
            Command::Unknown(w) => format!("FAIL Unknown command '{w}'"),
        }
    }

    fn device(&self, m: &Machine, path: &str) -> Option<ObjectId> {
        let id = m.tree.resolve(path).ok()?;
        let t = &m.tree.get(id)?.type_name;
        m.types.is_a(t, "device").then_some(id)
    }

    fn intercept(&self, out: bool, path: &str) -> String {
        let m = self.machine();
        let Some(dev) = self.device(&m, path) else {
            return "FAIL Unknown device".into();
        };
        let mut cur = lock(&self.intercepted);
        if let Some(d) = *cur {
            return if d == dev {
                "OK".into()
            } else {
                "FAIL IRQ intercept already enabled".into()
            };
        }
        let Some(o) = m.tree.get(dev) else {
            return "FAIL Unknown device".into();
        };
        // As in QEMU, only the unnamed lists are intercepted.
        if out {
            for list in o.gpios.outputs.iter().filter(|l| l.name.is_none()) {
                for (i, line) in list.lines.iter().enumerate() {
                    let link = self.link.clone();
                    let old = line.connect(None);
                    line.connect(Some(Irq::new(move |level| {
                        if let Some(o) = &old {
                            o.set(level);
                        }
                        link.irq(i, level);
                    })));
                }
            }
        } else {
            for list in o.gpios.inputs.iter().filter(|l| l.name.is_none()) {
                for (i, line) in list.lines.iter().enumerate() {
                    let link = self.link.clone();
                    line.intercept(move |orig, level| {
                        orig(level);
                        link.irq(i, level);
                    });
                }
            }
        }
        *cur = Some(dev);
        "OK".into()
    }
}
