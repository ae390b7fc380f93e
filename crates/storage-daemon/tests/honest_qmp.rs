//! Honest QMP interfaces (issue 12), side by side with qemu-storage-daemon 7.2:
//! `query-qmp-schema` generated from the real types (and compared with QEMU's),
//! replies and events that conform to it, `query-named-block-nodes` reporting the
//! nodes' real state (dirty bit, backing chain, `flat`, cache options, encryption),
//! `query-version`'s package, and `iothread=` on exports refused by name.

mod common;

use common::Daemon;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use oxemu_qmp::schema::{check_introspection, Schema, BUILTIN_SCHEMA};

/// The daemon under test; `OXEMU_STORAGE_DAEMON` points the test at another build
/// (used to check that the tests fail on the code before issue 12).
fn bin() -> String {
    std::env::var("OXEMU_STORAGE_DAEMON")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_oxemu-storage-daemon").to_string())
}
const QSD: &str = "qemu-storage-daemon";

fn start(prog: &str, sock: &Path, extra: &[String]) -> Daemon {
    // The monitor comes last: once its socket exists, every other option is applied.
    let mut args = extra.to_vec();
    args.extend([
        "--chardev".to_string(),
        format!("socket,id=m0,path={},server=on,wait=off", sock.display()),
        "--monitor".into(),
        "chardev=m0".into(),
    ]);
    common::start_until(prog, &args, sock)
}

struct Qmp {
    r: BufReader<UnixStream>,
    w: UnixStream,
    events: Vec<Value>,
}

impl Qmp {
    fn connect(path: &Path) -> Qmp {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut q = Qmp {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
            events: Vec::new(),
        };
        q.recv();
        q.ok("qmp_capabilities", json!({}));
        q
    }

    fn recv(&mut self) -> Value {
        let mut line = String::new();
        self.r.read_line(&mut line).expect("QMP read");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad QMP line {line:?}: {e}"))
    }

    fn exec(&mut self, cmd: &str, args: Value) -> Value {
        writeln!(self.w, "{}", json!({"execute": cmd, "arguments": args})).unwrap();
        loop {
            let v = self.recv();
            if v.get("event").is_none() {
                return v;
            }
            self.events.push(v);
        }
    }

    fn ok(&mut self, cmd: &str, args: Value) -> Value {
        let r = self.exec(cmd, args.clone());
        assert!(r.get("return").is_some(), "{cmd} {args}: {r}");
        r["return"].clone()
    }

    fn err(&mut self, cmd: &str, args: Value) -> String {
        let r = self.exec(cmd, args.clone());
        assert!(r["error"].is_object(), "{cmd} {args} unexpectedly gave {r}");
        r["error"]["desc"].as_str().unwrap().to_string()
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn qemu_img(args: &[&str]) {
    let o = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img");
    assert!(
        o.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The daemon's schema with readable names, as the test's reference.
fn source_schema() -> Schema {
    Schema::parse(&[BUILTIN_SCHEMA, include_str!("../src/schema.json")]).unwrap()
}

/// An introspection answer indexed by (masked) name.
fn index(list: &Value) -> BTreeMap<String, Value> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect()
}

/// Members of an object type in an introspection answer: name -> type (resolved to
/// the JSON kind for builtins, "enum"/"object"/... for the rest), per union variant.
fn shape(ix: &BTreeMap<String, Value>, ty: &str) -> BTreeMap<String, BTreeSet<String>> {
    let e = &ix[ty];
    let names = |e: &Value| -> BTreeSet<String> {
        e["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_string())
            .collect()
    };
    let mut out = BTreeMap::new();
    out.insert(String::new(), names(e));
    for v in e["variants"].as_array().into_iter().flatten() {
        out.insert(
            v["case"].as_str().unwrap().to_string(),
            names(&ix[v["type"].as_str().unwrap()]),
        );
    }
    out
}

/// Members oxemu declares that qemu-storage-daemon 7.2 does not have (documented
/// oxemu extensions: `x-inline`, and `handshake-max-seconds` from QEMU 9.1).
const EXTENSIONS: &[&str] = &["x-inline", "handshake-max-seconds"];

#[test]
fn qmp_schema_is_generated_from_the_real_types_and_matches_qemus_shape() {
    let dir = tmp();
    let (ox_sock, qsd_sock) = (dir.path().join("ox.sock"), dir.path().join("qsd.sock"));
    let _ox = start(&bin(), &ox_sock, &[]);
    let _qsd = start(QSD, &qsd_sock, &[]);
    let mut ox = Qmp::connect(&ox_sock);
    let mut qsd = Qmp::connect(&qsd_sock);
    let ours = ox.ok("query-qmp-schema", json!({}));
    let theirs = qsd.ok("query-qmp-schema", json!({}));
    check_introspection(&ours).unwrap();
    check_introspection(&theirs).unwrap();
    let src = source_schema();
    src.validate("[SchemaInfo]", &ours).unwrap();
    src.validate("[SchemaInfo]", &theirs).unwrap();
    let (oi, qi) = (index(&ours), index(&theirs));
    let mut compared = 0;
    for (name, e) in &oi {
        let mt = e["meta-type"].as_str().unwrap();
        if mt != "command" && mt != "event" {
            // Masked as QEMU masks: only builtins keep their names.
            let inner = name.trim_start_matches('[').trim_end_matches(']');
            assert!(
                inner.parse::<u32>().is_ok()
                    || ["str", "int", "number", "bool", "null", "any"].contains(&inner),
                "unmasked type {name}"
            );
            continue;
        }
        let q = qi
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not a qemu-storage-daemon {mt}"));
        for k in ["arg-type", "ret-type"] {
            let (Some(ot), Some(qt)) = (e[k].as_str(), q[k].as_str()) else {
                continue;
            };
            let (ot, qt) = (
                ot.trim_start_matches('[').trim_end_matches(']'),
                qt.trim_start_matches('[').trim_end_matches(']'),
            );
            assert_eq!(oi[ot]["meta-type"], qi[qt]["meta-type"], "{name} {k}");
            if oi[ot]["meta-type"] != "object" {
                continue;
            }
            let (os, qs) = (shape(&oi, ot), shape(&qi, qt));
            for (case, members) in &os {
                let qm = qs
                    .get(case)
                    .unwrap_or_else(|| panic!("{name} {k}: QEMU has no variant '{case}'"));
                for m in members {
                    assert!(
                        qm.contains(m) || EXTENSIONS.contains(&m.as_str()),
                        "{name} {k} variant '{case}': member '{m}' is not QEMU's"
                    );
                }
                compared += 1;
            }
        }
    }
    assert!(compared > 20, "{compared}");
    // The command table is the schema's.
    let cmds: BTreeSet<String> = ox
        .ok("query-commands", json!({}))
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    let declared: BTreeSet<String> = src.commands().iter().map(|s| s.to_string()).collect();
    assert_eq!(cmds, declared);
    // The drivers and export types offered are the ones oxemu implements.
    let ba = &oi[oi["blockdev-add"]["arg-type"].as_str().unwrap()];
    let drivers: Vec<&str> = ba["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["case"].as_str().unwrap())
        .collect();
    assert_eq!(
        drivers,
        [
            "blkdebug",
            "blklogwrites",
            "file",
            "host_device",
            "qcow2",
            "raw"
        ]
    );
    // query-version: QEMU's 7.2 numbers for clients that key off them, oxemu's own
    // version in `package`.
    let v = ox.ok("query-version", json!({}));
    src.validate("VersionInfo", &v).unwrap();
    assert_eq!(v["qemu"], json!({"major": 7, "minor": 2, "micro": 0}));
    assert_eq!(
        v["package"],
        format!("oxemu {}", env!("CARGO_PKG_VERSION")).as_str()
    );
}

/// Replies and events conform to the return and argument types the schema declares.
#[test]
fn replies_and_events_conform_to_the_schema() {
    let dir = tmp();
    let sock = dir.path().join("ox.sock");
    let img = dir.path().join("a.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "1M"]);
    let nbd = dir.path().join("nbd.sock");
    let _d = start(&bin(), &sock, &[]);
    let mut q = Qmp::connect(&sock);
    let src = source_schema();
    q.ok(
        "blockdev-add",
        json!({"driver": "qcow2", "node-name": "q0",
               "file": {"driver": "file", "filename": img.display().to_string()}}),
    );
    q.ok(
        "nbd-server-start",
        json!({"addr": {"type": "unix", "data": {"path": nbd.display().to_string()}}}),
    );
    q.ok(
        "block-export-add",
        json!({"type": "nbd", "id": "e0", "node-name": "q0"}),
    );
    for cmd in [
        "query-named-block-nodes",
        "query-block-exports",
        "query-version",
        "query-commands",
        "query-qmp-schema",
    ] {
        let r = q.ok(cmd, json!({}));
        src.validate(src.ret_type(cmd).unwrap(), &r)
            .unwrap_or_else(|e| panic!("{cmd}: {e}: {r}"));
    }
    q.ok("block-export-del", json!({"id": "e0"}));
    let ev = q.events.pop().expect("BLOCK_EXPORT_DELETED");
    assert_eq!(ev["event"], "BLOCK_EXPORT_DELETED");
    src.validate(src.arg_type("BLOCK_EXPORT_DELETED").unwrap(), &ev["data"])
        .unwrap();
    // Members of another export type or undeclared nested members are refused, as
    // QEMU's union and struct visitors refuse them.
    assert_eq!(
        q.err(
            "block-export-add",
            json!({"type": "nbd", "id": "e1", "node-name": "q0", "num-queues": 2})
        ),
        "Parameter 'num-queues' is unexpected"
    );
    assert_eq!(
        q.err("nbd-server-stop", json!({"x": 1})),
        "Parameter 'x' is unexpected"
    );
    assert_eq!(
        q.err(
            "blockdev-add",
            json!({"driver": "raw", "node-name": "r",
            "file": {"driver": "file", "filename": img.display().to_string(), "bogus": 1}})
        ),
        "Parameter 'file.bogus' is unexpected"
    );
}

/// One node's state, without what legitimately differs between two daemons
/// (generated node names, allocation sizes).
fn node_view(n: &Value, dir: &Path) -> Value {
    fn image(i: &Value, dir: &Path) -> Value {
        let mut o = serde_json::Map::new();
        for k in [
            "filename",
            "format",
            "dirty-flag",
            "cluster-size",
            "encrypted",
            "backing-filename",
            "full-backing-filename",
            "backing-filename-format",
            "format-specific",
        ] {
            if let Some(v) = i.get(k) {
                o.insert(k.into(), strip(v, dir));
            }
        }
        if let Some(b) = i.get("backing-image") {
            o.insert("backing-image".into(), image(b, dir));
        }
        Value::Object(o)
    }
    let mut o = serde_json::Map::new();
    for k in [
        "drv",
        "ro",
        "encrypted",
        "detect_zeroes",
        "cache",
        "backing_file",
        "backing_file_depth",
        "file",
    ] {
        if let Some(v) = n.get(k) {
            o.insert(k.into(), strip(v, dir));
        }
    }
    o.insert("image".into(), image(&n["image"], dir));
    Value::Object(o)
}

fn strip(v: &Value, dir: &Path) -> Value {
    match v {
        Value::String(s) => Value::String(s.replace(&dir.display().to_string(), "DIR")),
        other => other.clone(),
    }
}

/// The images and blockdevs both daemons get: a qcow2 with a backing file named
/// in its header (over a file node with cache.direct=on), a raw node over a file
/// node with cache.no-flush=on, and a qcow2 with lazy refcounts exported writable.
fn graph(dir: &Path) -> Vec<String> {
    let p = |n: &str| dir.join(n).display().to_string();
    qemu_img(&["create", "-q", "-f", "qcow2", &p("base.qcow2"), "1M"]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        &p("top.qcow2"),
    ]);
    qemu_img(&["create", "-q", "-f", "raw", &p("r.raw"), "1M"]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "lazy_refcounts=on",
        &p("lazy.qcow2"),
        "1M",
    ]);
    [
        "--blockdev".into(),
        format!(
            "driver=file,node-name=f0,filename={},cache.direct=on",
            p("top.qcow2")
        ),
        "--blockdev".into(),
        "driver=qcow2,node-name=q0,file=f0".into(),
        "--blockdev".into(),
        format!(
            "driver=file,node-name=rf,filename={},cache.no-flush=on",
            p("r.raw")
        ),
        "--blockdev".into(),
        "driver=raw,node-name=r0,file=rf".into(),
        "--blockdev".into(),
        format!("driver=file,node-name=lf,filename={}", p("lazy.qcow2")),
        "--blockdev".into(),
        "driver=qcow2,node-name=l0,file=lf".into(),
        "--nbd-server".into(),
        format!("addr.type=unix,addr.path={}", p("nbd.sock")),
        "--export".into(),
        "type=nbd,id=e0,node-name=l0,name=l0,writable=on".into(),
    ]
    .to_vec()
}

/// Nodes by name (implicit ones by their file and driver), for flat and not flat.
fn nodes(prog: &str, dir: &Path) -> [BTreeMap<String, Value>; 2] {
    let sock = dir.join("qmp.sock");
    let _d = start(prog, &sock, &graph(dir));
    // A guest write through the export sets the lazy-refcounts image's dirty bit.
    let uri = format!("nbd+unix:///l0?socket={}", dir.join("nbd.sock").display());
    let o = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 7 0 64k", &uri])
        .output()
        .expect("qemu-io");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut q = Qmp::connect(&sock);
    [false, true].map(|flat| {
        let list = q.ok("query-named-block-nodes", json!({"flat": flat}));
        list.as_array()
            .unwrap()
            .iter()
            .map(|n| {
                let name = n["node-name"].as_str().unwrap();
                let key = if name.starts_with('#') {
                    format!("{}:{}", n["drv"].as_str().unwrap(), strip(&n["file"], dir))
                } else {
                    name.to_string()
                };
                (key, node_view(n, dir))
            })
            .collect()
    })
}

#[test]
fn named_block_nodes_report_real_state_as_qemu_does() {
    let (a, b) = (tmp(), tmp());
    let ours = nodes(&bin(), a.path());
    let theirs = nodes(QSD, b.path());
    for (flat, (o, t)) in ours.iter().zip(theirs.iter()).enumerate() {
        // QEMU also lists the nodes it opened implicitly for the backing chain the
        // image header names; oxemu opens that chain inside the qcow2 node (it shows
        // in `backing-image`), so only the named nodes are compared.
        let named = |m: &BTreeMap<String, Value>| -> Vec<String> {
            m.keys().filter(|k| !k.contains(':')).cloned().collect()
        };
        assert_eq!(named(o), named(t), "flat={flat}");
        assert_eq!(o.len(), named(o).len());
        for (k, v) in o {
            assert_eq!(v, &t[k], "node {k}, flat={}", flat == 1);
        }
    }
    // The facts the comparison covers, spelled out.
    let [deep, flat] = ours;
    assert_eq!(deep["l0"]["image"]["dirty-flag"], true);
    assert_eq!(deep["q0"]["backing_file_depth"], 1);
    assert_eq!(deep["q0"]["image"]["backing-image"]["format"], "qcow2");
    assert!(flat["q0"]["image"].get("backing-image").is_none());
    assert_eq!(flat["q0"]["backing_file_depth"], 0);
    assert_eq!(deep["f0"]["cache"]["direct"], true);
    assert_eq!(deep["q0"]["cache"]["direct"], false);
    assert_eq!(deep["rf"]["cache"]["no-flush"], true);
}

/// A LUKS-encrypted qcow2 image is reported as encrypted (node and image).
#[test]
fn encrypted_qcow2_is_reported_encrypted() {
    let dir = tmp();
    let img = dir.path().join("enc.qcow2");
    // QEMU's PBKDF benchmark fails now and then on a loaded machine ("Unable to get
    // accurate CPU usage"); that is qemu-img's problem, so it gets three tries.
    let create = || {
        Command::new("qemu-img")
            .args([
                "create",
                "-q",
                "--object",
                "secret,id=s0,data=pw",
                "-f",
                "qcow2",
                "-o",
                "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=200",
                img.to_str().unwrap(),
                "1M",
            ])
            .output()
            .expect("qemu-img")
    };
    let o = (0..3)
        .map(|_| create())
        .find(|o| o.status.success())
        .expect("qemu-img could not create a LUKS qcow2 image in three tries");
    assert!(o.status.success());
    let sock = dir.path().join("qmp.sock");
    let _d = start(&bin(), &sock, &[]);
    let mut q = Qmp::connect(&sock);
    q.ok(
        "blockdev-add",
        json!({"driver": "qcow2", "node-name": "e", "read-only": true,
               "file": {"driver": "file", "filename": img.display().to_string()}}),
    );
    let list = q.ok("query-named-block-nodes", json!({}));
    let e = list
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"] == "e")
        .unwrap();
    assert_eq!(e["encrypted"], true, "{e}");
    assert_eq!(e["image"]["encrypted"], true, "{e}");
    let file = list
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["drv"] == "file")
        .unwrap();
    assert_eq!(file["encrypted"], false);
}

/// `iothread=` on an export is refused by name (oxemu's exports do not run in
/// iothreads); `fixed-iothread` alone, which QEMU only consults with `iothread`,
/// is accepted.
#[test]
fn export_iothread_is_refused_by_name() {
    let dir = tmp();
    let img = dir.path().join("a.raw");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let nbd = dir.path().join("nbd.sock");
    let vub = dir.path().join("vub.sock");
    let base = vec![
        "--object".to_string(),
        "iothread,id=io0".into(),
        "--blockdev".into(),
        format!("driver=file,node-name=f0,filename={}", img.display()),
        "--nbd-server".into(),
        format!("addr.type=unix,addr.path={}", nbd.display()),
    ];
    // Command line.
    for export in [
        "type=nbd,id=e0,node-name=f0,iothread=io0".to_string(),
        format!(
            "type=vhost-user-blk,id=v0,node-name=f0,addr.type=unix,addr.path={},iothread=io0",
            vub.display()
        ),
    ] {
        let mut args = base.clone();
        args.extend(["--export".to_string(), export.clone()]);
        // Bounded: a daemon that accepts the option starts serving and never exits.
        let mut child = Command::new(bin())
            .args(&args)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{export} was accepted (the daemon is serving)");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert!(!status.success(), "{export} was accepted");
        assert!(
            err.contains("Parameter 'iothread' is not supported"),
            "{err}"
        );
    }
    // QMP.
    let sock = dir.path().join("qmp.sock");
    let _d = start(&bin(), &sock, &base);
    let mut q = Qmp::connect(&sock);
    let e = q.err(
        "block-export-add",
        json!({"type": "nbd", "id": "e0", "node-name": "f0", "iothread": "io0"}),
    );
    assert!(
        e.starts_with("Parameter 'iothread' is not supported"),
        "{e}"
    );
    let e = q.err(
        "block-export-add",
        json!({"type": "vhost-user-blk", "id": "v0", "node-name": "f0", "iothread": "io0",
               "fixed-iothread": true, "addr": {"type": "unix", "path": vub.display().to_string()}}),
    );
    assert!(
        e.starts_with("Parameter 'iothread' is not supported"),
        "{e}"
    );
    assert!(!vub.exists());
    q.ok(
        "block-export-add",
        json!({"type": "nbd", "id": "e0", "node-name": "f0", "fixed-iothread": true}),
    );
    assert_eq!(
        q.ok("query-block-exports", json!({}))
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// Options the schema leaves out because oxemu cannot honour them are refused by
/// name, not accepted and ignored: tls-creds-x509 `priority` (no GnuTLS priority
/// strings).
#[test]
fn options_oxemu_cannot_honour_are_refused_by_name() {
    let dir = tmp();
    let sock = dir.path().join("qmp.sock");
    let _d = start(&bin(), &sock, &[]);
    let mut q = Qmp::connect(&sock);
    let e = q.err(
        "object-add",
        json!({"qom-type": "tls-creds-x509", "id": "t0", "dir": dir.path().display().to_string(),
               "endpoint": "server", "priority": "NORMAL"}),
    );
    assert!(e.contains("'priority' is not supported"), "{e}");
}

/// `shutting-down`: oxemu removes an export completely before `block-export-del`
/// replies (clients cut off, requests drained, node flushed, event sent), so no
/// export it lists is ever shutting down. In safe mode an export with a client is
/// refused, in both daemons, with the same text.
#[test]
fn block_export_del_removes_the_export_before_replying() {
    for prog in [bin(), QSD.to_string()] {
        let dir = tmp();
        let img = dir.path().join("a.raw");
        std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        let nbd = dir.path().join("nbd.sock");
        let sock = dir.path().join("qmp.sock");
        let _d = start(
            &prog,
            &sock,
            &[
                "--blockdev".into(),
                format!("driver=file,node-name=f0,filename={}", img.display()),
                "--nbd-server".into(),
                format!("addr.type=unix,addr.path={}", nbd.display()),
                "--export".into(),
                "type=nbd,id=e0,node-name=f0,name=f0".into(),
            ],
        );
        let mut q = Qmp::connect(&sock);
        // A client that has finished the handshake and stays connected.
        let client = nbd_connect(&nbd, "f0");
        let e = q.err("block-export-del", json!({"id": "e0"}));
        assert_eq!(e, "export 'e0' still in use", "{prog}");
        let listed = q.ok("query-block-exports", json!({}));
        assert_eq!(listed[0]["shutting-down"], false, "{prog}");
        q.events.clear();
        q.ok("block-export-del", json!({"id": "e0", "mode": "hard"}));
        if prog == bin() {
            // Gone, and the event sent, by the time the reply arrives.
            assert!(q
                .events
                .iter()
                .any(|e| e["event"] == "BLOCK_EXPORT_DELETED"));
        }
        // Both: by the next command the export is gone and the event was sent.
        assert_eq!(q.ok("query-block-exports", json!({})), json!([]), "{prog}");
        assert!(
            q.events
                .iter()
                .any(|e| e["event"] == "BLOCK_EXPORT_DELETED"),
            "{prog}: {:?}",
            q.events
        );
        drop(client);
    }
}

/// Connects to an NBD server and finishes the fixed-newstyle handshake for
/// `name` (NBD_OPT_EXPORT_NAME), returning the connected socket.
fn nbd_connect(path: &Path, name: &str) -> UnixStream {
    use std::io::Read;
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[..16], b"NBDMAGICIHAVEOPT");
    // Client flags: fixed newstyle, no zeroes.
    s.write_all(&3u32.to_be_bytes()).unwrap();
    let mut opt = b"IHAVEOPT".to_vec();
    opt.extend(1u32.to_be_bytes());
    opt.extend((name.len() as u32).to_be_bytes());
    opt.extend(name.as_bytes());
    s.write_all(&opt).unwrap();
    // Export size and transmission flags.
    let mut info = [0u8; 10];
    s.read_exact(&mut info).unwrap();
    // One read round trip: the server is in its transmission phase with this
    // client counted on the export.
    let mut req = 0x2560_9513u32.to_be_bytes().to_vec();
    req.extend(0u16.to_be_bytes()); // flags
    req.extend(0u16.to_be_bytes()); // NBD_CMD_READ
    req.extend(1u64.to_be_bytes()); // handle
    req.extend(0u64.to_be_bytes()); // offset
    req.extend(512u32.to_be_bytes()); // length
    s.write_all(&req).unwrap();
    let mut reply = [0u8; 16 + 512];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(
        &reply[..8],
        &[0x67, 0x44, 0x66, 0x98, 0, 0, 0, 0],
        "NBD simple reply, no error"
    );
    s
}

/// Arguments are checked against the schema in QEMU's visiting order, so inputs
/// with several faults get the same first error as from qemu-storage-daemon 7.2
/// (a missing member before an unexpected one, nested members before the outer
/// struct's leftovers, JSON types on the way).
#[test]
fn argument_errors_come_in_qemus_order() {
    let dir = tmp();
    let raw = dir.path().join("r.raw");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    let f = raw.display().to_string();
    let n2 = dir.path().join("n2.sock").display().to_string();
    let cases: Vec<(&str, Value)> = vec![
        ("blockdev-add", json!({"driver": "file", "bogus": 1})),
        (
            "blockdev-add",
            json!({"driver": "raw", "node-name": "r", "file": {"driver": "file", "bogus": 1}}),
        ),
        (
            "blockdev-add",
            json!({"driver": "raw", "node-name": "r", "bogus": 2,
                                "file": {"driver": "file", "filename": f, "bogus": 1}}),
        ),
        ("blockdev-add", json!({"driver": "file", "node-name": 5})),
        (
            "blockdev-add",
            json!({"driver": "raw", "node-name": "r", "file": {"driver": "file", "filename": f, "aio": 5}}),
        ),
        (
            "blockdev-add",
            json!({"driver": "raw", "node-name": "r",
                                "file": {"driver": "file", "filename": f, "cache": {"direct": "on"}}}),
        ),
        (
            "blockdev-add",
            json!({"driver": "raw", "node-name": "r", "file": {"driver": "file", "filename": f}, "size": "x"}),
        ),
        (
            "block-export-add",
            json!({"type": "nbd", "id": "e", "node-name": "x", "num-queues": 1}),
        ),
        (
            "block-export-add",
            json!({"type": "vhost-user-blk", "id": "e", "node-name": "x", "name": "n"}),
        ),
        (
            "nbd-server-start",
            json!({"addr": {"type": "unix", "data": {"path": n2, "x": 1}}}),
        ),
        (
            "nbd-server-start",
            json!({"addr": {"type": "inet", "data": {"host": "localhost", "port": 10809}}}),
        ),
        (
            "object-add",
            json!({"qom-type": "iothread", "id": "i", "poll-max-ns": "x"}),
        ),
        (
            "object-add",
            json!({"qom-type": "iothread", "poll-max-ns": 1}),
        ),
    ];
    let answers = |prog: &str, sock: &Path| -> Vec<String> {
        let _d = start(prog, sock, &[]);
        let mut q = Qmp::connect(sock);
        cases.iter().map(|(c, a)| q.err(c, a.clone())).collect()
    };
    let ours = answers(&bin(), &dir.path().join("ox.sock"));
    let theirs = answers(QSD, &dir.path().join("qsd.sock"));
    for ((case, o), t) in cases.iter().zip(&ours).zip(&theirs) {
        assert_eq!(o, t, "{case:?}");
    }
}
