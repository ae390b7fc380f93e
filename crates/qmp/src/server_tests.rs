//! Wire-level tests of the QMP server over a real unix socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::*;

/// A program with one command, `echo-back`, that returns its `text` argument and
/// raises the event `ECHOED`.
struct Echo;

impl Dispatcher for Echo {
    fn dispatch(&self, name: &str, args: Value, events: &EventBus) -> Result<Value, QmpError> {
        if name == "silent" {
            return Ok(json!({}));
        }
        assert_eq!(name, "echo-back");
        let text = args
            .get("text")
            .and_then(Value::as_str)
            .ok_or_else(|| QmpError::generic("Parameter 'text' is missing"))?
            .to_string();
        events.emit("ECHOED", Some(json!({ "text": text })));
        Ok(json!({ "text": text }))
    }

    fn commands(&self) -> Vec<CommandInfo> {
        vec![
            CommandInfo {
                name: "echo-back",
                args: &[("text", "str", false)],
            },
            CommandInfo {
                name: "silent",
                args: &[],
            },
        ]
    }

    fn events(&self) -> Vec<&'static str> {
        vec!["ECHOED"]
    }
}

struct Client {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Client {
    fn recv(&mut self) -> Value {
        let mut line = String::new();
        self.r.read_line(&mut line).expect("read reply");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad reply {line:?}: {e}"))
    }

    fn send_raw(&mut self, s: &str) {
        self.w.write_all(s.as_bytes()).unwrap();
        self.w.write_all(b"\n").unwrap();
    }

    fn cmd(&mut self, v: Value) -> Value {
        self.send_raw(&v.to_string());
        self.recv()
    }
}

fn start() -> (tempfile::TempDir, Arc<QmpServer>, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let server = QmpServer::new(Arc::new(Echo), VersionInfo::default());
    server.listen_unix(&path).unwrap();
    (dir, server, path)
}

fn connect(path: &Path) -> (Client, Value) {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut c = Client {
        r: BufReader::new(s.try_clone().unwrap()),
        w: s,
    };
    let greeting = c.recv();
    (c, greeting)
}

fn negotiated(path: &Path) -> Client {
    let (mut c, _) = connect(path);
    assert_eq!(
        c.cmd(json!({"execute": "qmp_capabilities"})),
        json!({"return": {}})
    );
    c
}

fn class(v: &Value) -> &str {
    v["error"]["class"].as_str().unwrap_or("<no error>")
}

#[test]
fn greeting_carries_version_and_capabilities() {
    let (_d, _s, path) = start();
    let (_c, g) = connect(&path);
    assert_eq!(
        g["QMP"]["version"]["qemu"],
        json!({"micro": 0, "minor": 2, "major": 7})
    );
    assert!(g["QMP"]["version"]["package"]
        .as_str()
        .unwrap()
        .starts_with("oxemu"));
    assert_eq!(g["QMP"]["capabilities"], json!(["oob"]));
}

#[test]
fn commands_before_negotiation_are_command_not_found() {
    let (_d, _s, path) = start();
    let (mut c, _) = connect(&path);
    let r = c.cmd(json!({"execute": "query-version", "id": 7}));
    assert_eq!(class(&r), "CommandNotFound");
    assert_eq!(
        r["error"]["desc"],
        "Expecting capabilities negotiation with 'qmp_capabilities'"
    );
    assert_eq!(r["id"], 7);
    assert_eq!(
        c.cmd(json!({"execute": "qmp_capabilities", "id": "a"})),
        json!({"return": {}, "id": "a"})
    );
    let again = c.cmd(json!({"execute": "qmp_capabilities"}));
    assert_eq!(class(&again), "CommandNotFound");
}

#[test]
fn id_of_any_json_type_is_echoed_back() {
    let (_d, _s, path) = start();
    let mut c = negotiated(&path);
    for id in [json!(1), json!("x"), json!({"a": [1, 2]}), json!(null)] {
        let r = c.cmd(json!({"execute": "query-version", "id": id}));
        assert_eq!(r["id"], id);
        assert_eq!(r["return"]["qemu"]["major"], 7);
    }
}

#[test]
fn malformed_requests_get_qemus_error_shapes() {
    let (_d, _s, path) = start();
    let mut c = negotiated(&path);
    let cases = [
        (json!([1, 2]), "QMP input must be a JSON object"),
        (json!({"arguments": {}}), "QMP input lacks member 'execute'"),
        (
            json!({"execute": 3}),
            "QMP input member 'execute' must be a string",
        ),
        (
            json!({"execute": "query-version", "arguments": []}),
            "QMP input member 'arguments' must be an object",
        ),
        (
            json!({"execute": "query-version", "bogus": 1}),
            "QMP input member 'bogus' is unexpected",
        ),
        (
            json!({"execute": "query-version", "arguments": {"x": 1}}),
            "Parameter 'x' is unexpected",
        ),
    ];
    for (req, desc) in cases {
        let r = c.cmd(req.clone());
        assert_eq!(class(&r), "GenericError", "{req}");
        assert_eq!(r["error"]["desc"], desc, "{req}");
    }
    let r = c.cmd(json!({"execute": "silent", "arguments": {"x": 1}}));
    assert_eq!(r["error"]["desc"], "Parameter 'x' is unexpected");
    assert_eq!(c.cmd(json!({"execute": "silent"})), json!({"return": {}}));
    let r = c.cmd(json!({"execute": "no-such-thing"}));
    assert_eq!(class(&r), "CommandNotFound");
    assert_eq!(
        r["error"]["desc"],
        "The command no-such-thing has not been found"
    );
}

#[test]
fn invalid_json_gets_a_parse_error_reply() {
    let (_d, _s, path) = start();
    let mut c = negotiated(&path);
    c.send_raw("{\"execute\": ]");
    let r = c.recv();
    assert_eq!(class(&r), "GenericError");
    assert!(r["error"]["desc"]
        .as_str()
        .unwrap()
        .starts_with("JSON parse error"));
    // As in QEMU, the connection survives and the next command runs.
    let r = c.cmd(json!({"execute": "query-version", "id": 2}));
    assert_eq!(r["return"]["qemu"]["minor"], 2);
    c.send_raw("\"just a string\"");
    assert_eq!(c.recv()["error"]["desc"], "QMP input must be a JSON object");
}

#[test]
fn capabilities_arguments_are_checked_like_qemu() {
    let (_d, _s, path) = start();
    let (mut c, _) = connect(&path);
    let r = c.cmd(json!({"execute": "qmp_capabilities", "arguments": {"enable": ["foo"]}}));
    assert_eq!(
        r["error"]["desc"],
        "Parameter 'null' does not accept value 'foo'"
    );
    let r = c.cmd(json!({"execute": "qmp_capabilities", "arguments": {"x": 1}}));
    assert_eq!(r["error"]["desc"], "Parameter 'x' is unexpected");
    // Still not negotiated after the failures.
    let r = c.cmd(json!({"execute": "query-version"}));
    assert_eq!(class(&r), "CommandNotFound");
    let r = c.cmd(json!({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}));
    assert_eq!(r, json!({"return": {}}));
    let r = c.cmd(json!({"exec-oob": "query-version", "id": 1}));
    assert_eq!(
        r["error"]["desc"],
        "The command query-version does not support OOB"
    );
    let r = c.cmd(json!({"exec-oob": "nope", "id": 1}));
    assert_eq!(class(&r), "CommandNotFound");
}

#[test]
fn exec_oob_without_negotiated_oob_is_an_unexpected_member() {
    let (_d, _s, path) = start();
    let mut c = negotiated(&path);
    let r = c.cmd(json!({"exec-oob": "query-version"}));
    assert_eq!(
        r["error"]["desc"],
        "QMP input member 'exec-oob' is unexpected"
    );
}

#[test]
fn program_commands_run_and_their_errors_are_returned() {
    let (_d, _s, path) = start();
    let mut c = negotiated(&path);
    let r = c.cmd(json!({"execute": "echo-back", "arguments": {"text": "hi"}, "id": 1}));
    // The event is sent before the reply, as QEMU does for events raised in a command.
    assert_eq!(r["event"], "ECHOED");
    assert_eq!(r["data"], json!({"text": "hi"}));
    assert!(r["timestamp"]["seconds"].as_u64().unwrap() > 0);
    assert!(r["timestamp"]["microseconds"].as_u64().unwrap() < 1_000_000);
    assert_eq!(c.recv(), json!({"return": {"text": "hi"}, "id": 1}));
    let e = c.cmd(json!({"execute": "echo-back"}));
    assert_eq!(e["error"]["desc"], "Parameter 'text' is missing");
}

#[test]
fn events_reach_every_negotiated_monitor_but_not_others() {
    let (_d, _s, path) = start();
    let mut a = negotiated(&path);
    let mut b = negotiated(&path);
    let (mut pending, _) = connect(&path);
    let r = a.cmd(json!({"execute": "echo-back", "arguments": {"text": "x"}}));
    assert_eq!(r["event"], "ECHOED");
    assert_eq!(b.recv()["event"], "ECHOED");
    // The unnegotiated client sees no event: its next line is its own reply.
    let r = pending.cmd(json!({"execute": "qmp_capabilities"}));
    assert_eq!(r, json!({"return": {}}));
}

#[test]
fn query_commands_and_schema_list_builtin_and_program_commands() {
    let (_d, _s, path) = start();
    let mut c = negotiated(&path);
    let names: Vec<String> = c.cmd(json!({"execute": "query-commands"}))["return"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    for n in [
        "qmp_capabilities",
        "query-version",
        "query-commands",
        "query-qmp-schema",
        "echo-back",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }
    let schema = c.cmd(json!({"execute": "query-qmp-schema"}))["return"].clone();
    let find = |name: &str| {
        schema
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not in schema"))
    };
    let cmd = find("echo-back");
    assert_eq!(cmd["meta-type"], "command");
    let arg = find(cmd["arg-type"].as_str().unwrap());
    assert_eq!(arg["members"], json!([{"name": "text", "type": "str"}]));
    assert_eq!(find("ECHOED")["meta-type"], "event");
}

#[test]
fn shutdown_removes_the_socket() {
    let (_d, s, path) = start();
    assert!(path.exists());
    s.shutdown();
    assert!(!path.exists());
}

#[test]
fn schema_references_only_types_it_defines() {
    let (_d, _s, path) = start();
    let mut c = negotiated(&path);
    let schema = c.cmd(json!({"execute": "query-qmp-schema"}))["return"].clone();
    let entries = schema.as_array().unwrap();
    let names: Vec<&str> = entries
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for e in entries {
        for key in ["arg-type", "ret-type"] {
            if let Some(t) = e.get(key) {
                assert!(names.contains(&t.as_str().unwrap()), "{e}: {t} undefined");
            }
        }
        for m in e["members"].as_array().into_iter().flatten() {
            assert!(
                names.contains(&m["type"].as_str().unwrap()),
                "{e}: {m} undefined"
            );
        }
        assert!(
            e.get("allow-oob").is_none(),
            "{e}: no command is OOB-capable"
        );
    }
}

#[test]
fn a_client_that_does_not_read_is_disconnected_and_others_carry_on() {
    let (_d, _s, path) = start();
    // `deaf` negotiates, then never reads again.
    let mut deaf = negotiated(&path);
    let mut good = negotiated(&path);
    let text = "x".repeat(64 << 10);
    // 200 events of 64 KiB: far past the socket buffer and MAX_CLIENT_OUTPUT. With
    // blocking event writes under the command lock, this froze every monitor.
    let t = std::time::Instant::now();
    for i in 0..200 {
        good.send_raw(
            &json!({"execute": "echo-back", "arguments": {"text": text}, "id": i}).to_string(),
        );
        loop {
            let v = good.recv();
            if v.get("event").is_none() {
                assert_eq!(v["id"], i, "{v}");
                break;
            }
        }
    }
    assert!(t.elapsed() < Duration::from_secs(10));
    // The deaf client was cut off: after what was in its socket buffer, EOF.
    deaf.r
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut sink = Vec::new();
    let r = std::io::Read::read_to_end(&mut deaf.r, &mut sink);
    assert!(r.is_ok(), "deaf client not disconnected: {r:?}");
    assert!(sink.len() < 200 * text.len(), "{} bytes", sink.len());
    // A new client is served as usual.
    let mut c = negotiated(&path);
    assert_eq!(c.cmd(json!({"execute": "silent"})), json!({"return": {}}));
}

#[test]
fn shutdown_ends_with_connected_clients_and_the_socket_directory_gone() {
    let (d, s, path) = start();
    let mut c = negotiated(&path);
    let _idle = UnixStream::connect(&path).unwrap();
    // Let the accept loop take the idle client and block in accept(2) again.
    std::thread::sleep(Duration::from_millis(200));
    std::fs::remove_dir_all(d.path()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        s.shutdown();
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("QmpServer::shutdown hung");
    // Connected clients are cut off, not left open.
    c.r.get_mut()
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut line = String::new();
    assert_eq!(c.r.read_line(&mut line).unwrap(), 0, "{line}");
}
