//! A qtest client, what libqtest is to QEMU's tests.
//!
//! [`QTest::start`] makes two listening unix sockets, starts the binary through
//! `/bin/sh -c` exactly as libqtest 7.2 does (`-qtest unix:PATH -qtest-log
//! /dev/null -chardev socket,path=QMP,id=char0 -mon chardev=char0,mode=control
//! -display none ARGS -accel qtest`), accepts both connections, reads the QMP
//! greeting, negotiates, and checks `endianness`. Teardown sends SIGTERM and
//! requires exit status 0, as libqtest does.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A client error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// I/O on a socket or the process.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The binary did not connect in time, or a reply was malformed.
    #[error("{0}")]
    Protocol(String),
}

/// A running binary under test.
pub struct QTest {
    child: Option<Child>,
    qtest_r: BufReader<UnixStream>,
    qtest_w: UnixStream,
    qmp_r: BufReader<UnixStream>,
    qmp_w: UnixStream,
    irq_level: [bool; 256],
    events: Vec<Value>,
    _dir: PathBuf,
    /// The QMP greeting.
    pub greeting: Value,
}

fn accept(l: &UnixListener, child: &mut Child, deadline: Instant) -> Result<UnixStream, Error> {
    l.set_nonblocking(true)?;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(st) = child.try_wait()? {
                    return Err(Error::Protocol(format!("binary exited early: {st}")));
                }
                if Instant::now() > deadline {
                    return Err(Error::Protocol("binary did not connect".into()));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

impl QTest {
    /// Starts `binary` with extra arguments `args` (a shell fragment, as
    /// `qtest_init` takes).
    pub fn start(binary: &str, args: &str) -> Result<Self, Error> {
        let dir = std::env::temp_dir().join(format!(
            "oxemu-qtest-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir)?;
        let qs = dir.join("qtest.sock");
        let ms = dir.join("qmp.sock");
        let ql = UnixListener::bind(&qs)?;
        let ml = UnixListener::bind(&ms)?;
        let cmd = format!(
            "exec {binary} -qtest unix:{} -qtest-log /dev/null -chardev socket,path={},id=char0 -mon chardev=char0,mode=control -display none {args} -accel qtest",
            qs.display(),
            ms.display()
        );
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(&cmd)
            .stdin(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let q = accept(&ql, &mut child, deadline);
        let m = q.and_then(|q| Ok((q, accept(&ml, &mut child, deadline)?)));
        let _ = std::fs::remove_file(&qs);
        let _ = std::fs::remove_file(&ms);
        let (q, m) = match m {
            Ok(x) => x,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let mut t = QTest {
            child: Some(child),
            qtest_r: BufReader::new(q.try_clone()?),
            qtest_w: q,
            qmp_r: BufReader::new(m.try_clone()?),
            qmp_w: m,
            irq_level: [false; 256],
            events: Vec::new(),
            _dir: dir,
            greeting: Value::Null,
        };
        t.greeting = t.qmp_read()?;
        let r = t.qmp(r#"{"execute": "qmp_capabilities"}"#)?;
        if r.get("return").is_none() {
            return Err(Error::Protocol(format!("qmp_capabilities failed: {r}")));
        }
        let e = t.command("endianness")?;
        if e != "OK little" && e != "OK big" {
            return Err(Error::Protocol(format!("bad endianness reply: {e}")));
        }
        Ok(t)
    }

    /// Sends a raw qtest line and returns the reply (without `\n`), handling
    /// `IRQ` lines that come first.
    pub fn command(&mut self, line: &str) -> Result<String, Error> {
        self.qtest_w.write_all(format!("{line}\n").as_bytes())?;
        loop {
            let mut s = String::new();
            if self.qtest_r.read_line(&mut s)? == 0 {
                return Err(Error::Protocol("qtest connection closed".into()));
            }
            let s = s.trim_end_matches('\n').to_string();
            if let Some(rest) = s.strip_prefix("IRQ ") {
                let (what, n) = rest
                    .split_once(' ')
                    .ok_or_else(|| Error::Protocol(format!("bad IRQ line: {s}")))?;
                let n: usize = n
                    .parse()
                    .map_err(|_| Error::Protocol(format!("bad IRQ line: {s}")))?;
                if let Some(l) = self.irq_level.get_mut(n) {
                    *l = what == "raise";
                }
                continue;
            }
            return Ok(s);
        }
    }

    fn ok(&mut self, line: &str) -> Result<String, Error> {
        let r = self.command(line)?;
        match r.strip_prefix("OK") {
            Some(rest) => Ok(rest.trim_start().to_string()),
            None => Err(Error::Protocol(format!("'{line}' failed: {r}"))),
        }
    }

    fn ok_num(&mut self, line: &str) -> Result<u64, Error> {
        let r = self.ok(line)?;
        crate::protocol::parse_u64(&r).ok_or_else(|| Error::Protocol(format!("bad reply '{r}'")))
    }

    /// `readb`.
    pub fn readb(&mut self, a: u64) -> Result<u8, Error> {
        Ok(self.ok_num(&format!("readb 0x{a:x}"))? as u8)
    }
    /// `readw`.
    pub fn readw(&mut self, a: u64) -> Result<u16, Error> {
        Ok(self.ok_num(&format!("readw 0x{a:x}"))? as u16)
    }
    /// `readl`.
    pub fn readl(&mut self, a: u64) -> Result<u32, Error> {
        Ok(self.ok_num(&format!("readl 0x{a:x}"))? as u32)
    }
    /// `readq`.
    pub fn readq(&mut self, a: u64) -> Result<u64, Error> {
        self.ok_num(&format!("readq 0x{a:x}"))
    }
    /// `writeb`.
    pub fn writeb(&mut self, a: u64, v: u8) -> Result<(), Error> {
        self.ok(&format!("writeb 0x{a:x} 0x{v:x}")).map(drop)
    }
    /// `writew`.
    pub fn writew(&mut self, a: u64, v: u16) -> Result<(), Error> {
        self.ok(&format!("writew 0x{a:x} 0x{v:x}")).map(drop)
    }
    /// `writel`.
    pub fn writel(&mut self, a: u64, v: u32) -> Result<(), Error> {
        self.ok(&format!("writel 0x{a:x} 0x{v:x}")).map(drop)
    }
    /// `writeq`.
    pub fn writeq(&mut self, a: u64, v: u64) -> Result<(), Error> {
        self.ok(&format!("writeq 0x{a:x} 0x{v:x}")).map(drop)
    }
    /// `inb`.
    pub fn inb(&mut self, p: u16) -> Result<u8, Error> {
        Ok(self.ok_num(&format!("inb 0x{p:x}"))? as u8)
    }
    /// `inw`.
    pub fn inw(&mut self, p: u16) -> Result<u16, Error> {
        Ok(self.ok_num(&format!("inw 0x{p:x}"))? as u16)
    }
    /// `inl`.
    pub fn inl(&mut self, p: u16) -> Result<u32, Error> {
        Ok(self.ok_num(&format!("inl 0x{p:x}"))? as u32)
    }
    /// `outb`.
    pub fn outb(&mut self, p: u16, v: u8) -> Result<(), Error> {
        self.ok(&format!("outb 0x{p:x} 0x{v:x}")).map(drop)
    }
    /// `outw`.
    pub fn outw(&mut self, p: u16, v: u16) -> Result<(), Error> {
        self.ok(&format!("outw 0x{p:x} 0x{v:x}")).map(drop)
    }
    /// `outl`.
    pub fn outl(&mut self, p: u16, v: u32) -> Result<(), Error> {
        self.ok(&format!("outl 0x{p:x} 0x{v:x}")).map(drop)
    }

    /// `read ADDR SIZE` (hex).
    pub fn memread(&mut self, a: u64, n: usize) -> Result<Vec<u8>, Error> {
        let r = self.ok(&format!("read 0x{a:x} 0x{n:x}"))?;
        let h = r
            .strip_prefix("0x")
            .ok_or_else(|| Error::Protocol(format!("bad read reply '{r}'")))?;
        (0..h.len() / 2)
            .map(|i| {
                u8::from_str_radix(&h[2 * i..2 * i + 2], 16)
                    .map_err(|_| Error::Protocol("bad hex in read reply".into()))
            })
            .collect()
    }

    /// `write ADDR SIZE 0xDATA`.
    pub fn memwrite(&mut self, a: u64, d: &[u8]) -> Result<(), Error> {
        let mut s = format!("write 0x{a:x} 0x{:x} 0x", d.len());
        for b in d {
            s.push_str(&format!("{b:02x}"));
        }
        self.ok(&s).map(drop)
    }

    /// `b64read`.
    pub fn bufread(&mut self, a: u64, n: usize) -> Result<Vec<u8>, Error> {
        let r = self.ok(&format!("b64read 0x{a:x} 0x{n:x}"))?;
        crate::b64::decode(&r).map_err(|_| Error::Protocol("bad base64 reply".into()))
    }

    /// `b64write`.
    pub fn bufwrite(&mut self, a: u64, d: &[u8]) -> Result<(), Error> {
        self.ok(&format!(
            "b64write 0x{a:x} 0x{:x} {}",
            d.len(),
            crate::b64::encode(d)
        ))
        .map(drop)
    }

    /// `memset`.
    pub fn memset(&mut self, a: u64, n: usize, v: u8) -> Result<(), Error> {
        self.ok(&format!("memset 0x{a:x} 0x{n:x} 0x{v:x}"))
            .map(drop)
    }

    /// `clock_step [NS]`: returns the new clock value.
    pub fn clock_step(&mut self, ns: Option<i64>) -> Result<i64, Error> {
        let l = match ns {
            Some(n) => format!("clock_step {n}"),
            None => "clock_step".into(),
        };
        let r = self.ok(&l)?;
        r.parse()
            .map_err(|_| Error::Protocol(format!("bad clock reply '{r}'")))
    }

    /// `clock_set NS`.
    pub fn clock_set(&mut self, ns: i64) -> Result<i64, Error> {
        let r = self.ok(&format!("clock_set {ns}"))?;
        r.parse()
            .map_err(|_| Error::Protocol(format!("bad clock reply '{r}'")))
    }

    /// `irq_intercept_in PATH`.
    pub fn irq_intercept_in(&mut self, path: &str) -> Result<(), Error> {
        self.ok(&format!("irq_intercept_in {path}")).map(drop)
    }

    /// `irq_intercept_out PATH`.
    pub fn irq_intercept_out(&mut self, path: &str) -> Result<(), Error> {
        self.ok(&format!("irq_intercept_out {path}")).map(drop)
    }

    /// `set_irq_in PATH NAME NUM LEVEL` (`None`: the unnamed list).
    pub fn set_irq_in(
        &mut self,
        path: &str,
        name: Option<&str>,
        n: u32,
        level: i32,
    ) -> Result<(), Error> {
        let name = name.unwrap_or("unnamed-gpio-in");
        self.ok(&format!("set_irq_in {path} {name} {n} {level}"))
            .map(drop)
    }

    /// The last level reported for intercepted line `n` (libqtest's `get_irq`).
    /// Reports are read as replies arrive; call any command first to collect them.
    pub fn get_irq(&self, n: usize) -> bool {
        self.irq_level.get(n).copied().unwrap_or(false)
    }

    fn qmp_read(&mut self) -> Result<Value, Error> {
        let mut s = String::new();
        if self.qmp_r.read_line(&mut s)? == 0 {
            return Err(Error::Protocol("QMP connection closed".into()));
        }
        serde_json::from_str(&s).map_err(|e| Error::Protocol(format!("bad QMP JSON: {e}")))
    }

    /// Sends a QMP command (JSON text) and returns its reply; events that come
    /// first are kept for [`QTest::event_wait`].
    pub fn qmp(&mut self, cmd: &str) -> Result<Value, Error> {
        self.qmp_w.write_all(cmd.as_bytes())?;
        self.qmp_w.write_all(b"\n")?;
        loop {
            let v = self.qmp_read()?;
            if v.get("event").is_some() {
                self.events.push(v);
                continue;
            }
            return Ok(v);
        }
    }

    /// Waits for event `name`, returning it (events seen earlier count).
    pub fn event_wait(&mut self, name: &str) -> Result<Value, Error> {
        if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
            return Ok(self.events.remove(i));
        }
        loop {
            let v = self.qmp_read()?;
            if v["event"] == name {
                return Ok(v);
            }
            if v.get("event").is_some() {
                self.events.push(v);
            }
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> Result<ExitStatus, Error> {
        let mut c = self
            .child
            .take()
            .ok_or_else(|| Error::Protocol("already terminated".into()))?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = c.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return Err(Error::Protocol("binary ignored SIGTERM".into()));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for the binary to exit by itself (after `quit`).
    pub fn wait(&mut self) -> Result<ExitStatus, Error> {
        let mut c = self
            .child
            .take()
            .ok_or_else(|| Error::Protocol("already terminated".into()))?;
        Ok(c.wait()?)
    }
}

impl Drop for QTest {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}
