//! TCP chardevs (`-qmp tcp:HOST:PORT,server=on,wait=off`, `-chardev
//! socket,host=,port=`, server and client), side by side with qemu-system-aarch64 7.2
//! (`-accel tcg -S`): a QMP client over TCP gets the same replies from both, and bad
//! TCP options get the same error texts. Everything binds 127.0.0.1. The test fails
//! when QEMU is missing.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_oxemu-system-aarch64");
const QEMU: &str = "qemu-system-aarch64";

/// The arguments each program needs before the case's own.
fn pre(prog: &str) -> Vec<&'static str> {
    let mut v = vec!["-M", "none", "-display", "none", "-nodefaults"];
    if prog == QEMU {
        v.extend(["-accel", "tcg", "-S"]);
    } else {
        v.push("-S");
    }
    v
}

fn spawn(prog: &str, args: &[String]) -> Child {
    Command::new(prog)
        .args(pre(prog))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {prog} (install qemu-system-arm): {e}"))
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn connect_retry(port: u16) -> TcpStream {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => return s,
            Err(e) if Instant::now() > end => panic!("connect to port {port}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A QMP session on a TCP stream: greeting, capabilities, a few commands; returns
/// the replies (the greeting's version and package are left out: they differ).
fn session(s: TcpStream) -> Vec<Value> {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let read = |r: &mut BufReader<TcpStream>, line: &mut String| -> Value {
        line.clear();
        r.read_line(line).unwrap();
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    };
    let g = read(&mut r, &mut line);
    let mut out = vec![
        json!({"greeting-has": g["QMP"].as_object().map(|o| o.keys().cloned().collect::<Vec<_>>())}),
    ];
    for cmd in [
        json!({"execute": "query-status"}),
        json!({"execute": "qmp_capabilities"}),
        json!({"execute": "query-status"}),
        json!({"execute": "query-name"}),
        json!({"execute": "bogus-command"}),
    ] {
        writeln!(w, "{cmd}").unwrap();
        let mut v = read(&mut r, &mut line);
        while v.get("event").is_some() {
            v = read(&mut r, &mut line);
        }
        out.push(v);
    }
    // quit: QEMU may send SHUTDOWN and close before the reply, so only the event is
    // compared, then the end of the stream.
    writeln!(w, "{}", json!({"execute": "quit"})).unwrap();
    let mut events = Vec::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let v: Value = serde_json::from_str(&line).unwrap();
                if let Some(e) = v.get("event") {
                    events.push(json!({"event": e, "data": v["data"]}));
                }
            }
        }
    }
    out.push(json!(events));
    out
}

/// Kills the child when a failed assertion unwinds past it.
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn finish(mut g: Guard, prog: &str) {
    let c = &mut g.0;
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            assert!(st.success(), "{prog}: {st}");
            return;
        }
        if Instant::now() > end {
            let _ = c.kill();
            panic!("{prog} did not quit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `args` (with `PORT` replaced) in both programs as TCP servers and returns
/// each one's session.
fn server_side_by_side(args: &str) -> Vec<(String, Vec<Value>)> {
    [QEMU, BIN]
        .iter()
        .map(|prog| {
            let port = free_port();
            let a: Vec<String> = args
                .replace("PORT", &port.to_string())
                .split(' ')
                .map(String::from)
                .collect();
            let c = Guard(spawn(prog, &a));
            let replies = session(connect_retry(port));
            finish(c, prog);
            (prog.to_string(), replies)
        })
        .collect()
}

#[test]
fn qmp_over_tcp_server_matches_qemu() {
    for args in [
        "-name vm0 -qmp tcp:127.0.0.1:PORT,server=on,wait=off",
        "-name vm0 -chardev socket,id=m0,host=127.0.0.1,port=PORT,server=on,wait=off -mon chardev=m0,mode=control",
    ] {
        let r = server_side_by_side(args);
        assert_eq!(r[0].1, r[1].1, "{args}");
        // Not vacuous: the session really ran.
        assert_eq!(r[1].1[3], json!({"return": {"status": "prelaunch", "singlestep": false, "running": false}}));
    }
}

#[test]
fn qmp_over_tcp_client_matches_qemu() {
    let mut results = Vec::new();
    for prog in [QEMU, BIN] {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let a: Vec<String> = format!(
            "-name vm0 -chardev socket,id=m0,host=127.0.0.1,port={port},nodelay=on -mon chardev=m0,mode=control"
        )
        .split(' ')
        .map(String::from)
        .collect();
        let c = Guard(spawn(prog, &a));
        let (s, _) = l.accept().unwrap();
        results.push(session(s));
        finish(c, prog);
    }
    assert_eq!(results[0], results[1]);
    assert_eq!(results[1][4], json!({"return": {"name": "vm0"}}));
}

/// Exit status and stderr of a run expected to fail; a program still running after
/// 20 s is killed and reported with status `None`.
fn stderr_of(prog: &str, args: &[String]) -> (Option<i32>, String) {
    use std::io::Read;
    let mut c = spawn(prog, args);
    let end = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(st) = c.try_wait().unwrap() {
            break st.code();
        }
        if Instant::now() > end {
            let _ = c.kill();
            let _ = c.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = Vec::new();
    let _ = c.stderr.take().unwrap().read_to_end(&mut err);
    let name = prog.rsplit('/').next().unwrap_or(prog);
    (code, String::from_utf8_lossy(&err).replace(name, "PROG"))
}

#[test]
fn bad_tcp_options_match_qemu() {
    // A port in use, for the bind errors.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let bp = busy.local_addr().unwrap().port();
    let cases = [
        "-chardev socket,id=c,host=127.0.0.1".to_string(),
        "-chardev socket,id=c,port=4444".into(),
        "-chardev socket,id=c".into(),
        "-chardev socket,id=c,host=127.0.0.1,port=xyz,server=on,wait=off".into(),
        "-chardev socket,id=c,host=127.0.0.1,port=1".into(),
        format!("-chardev socket,id=c,host=127.0.0.1,port={bp},server=on,wait=off"),
        "-chardev socket,id=c,host=127.0.0.1,path=/tmp/x".into(),
        "-chardev socket,id=c,host=127.0.0.1,port=1,ipv6=maybe".into(),
        "-chardev socket,id=c,host=127.0.0.1,port=1,nodelay".into(),
        "-qmp tcp:127.0.0.1".into(),
        "-qmp tcp:".into(),
        "-qmp tcp:127.0.0.1:1".into(),
        "-qmp tcp:127.0.0.1:1,bogus".into(),
        format!("-qmp tcp:127.0.0.1:{bp},server=on,wait=off"),
        "-serial tcp:127.0.0.1".into(),
        "-qtest tcp:127.0.0.1".into(),
        "-qtest tcp:127.0.0.1:1".into(),
    ];
    let mut failures = Vec::new();
    for case in &cases {
        let a: Vec<String> = case.split(' ').map(String::from).collect();
        let q = stderr_of(QEMU, &a);
        let o = stderr_of(BIN, &a);
        if q.0 != Some(1) || q != o {
            failures.push(format!("{case}\n  qemu : {q:?}\n  oxemu: {o:?}"));
        }
    }
    drop(busy);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
