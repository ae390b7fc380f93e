//! Every QMP command of oxemu-system-aarch64 with exact replies, and its events.

use oxemu_qtest::client::QTest;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_oxemu-system-aarch64");

fn start(args: &str) -> QTest {
    QTest::start(BIN, args).expect("start oxemu-system-aarch64")
}

fn ret(q: &mut QTest, cmd: &str, args: Value) -> Value {
    let r = q
        .qmp(&json!({"execute": cmd, "arguments": args}).to_string())
        .unwrap();
    assert!(r.get("return").is_some(), "{cmd}: {r}");
    r["return"].clone()
}

fn err(q: &mut QTest, cmd: &str, args: Value) -> (String, String) {
    let r = q
        .qmp(&json!({"execute": cmd, "arguments": args}).to_string())
        .unwrap();
    let e = &r["error"];
    (
        e["class"].as_str().unwrap_or("").into(),
        e["desc"].as_str().unwrap_or("").into(),
    )
}

fn ev(q: &mut QTest, name: &str) -> Value {
    let e = q.event_wait(name).unwrap();
    assert!(e["timestamp"]["seconds"].is_u64());
    e.get("data").cloned().unwrap_or(Value::Null)
}

#[test]
fn greeting_version_commands_and_status() {
    let mut q = start("-M none -S -name guest=vm0");
    assert_eq!(
        q.greeting["QMP"]["version"]["qemu"],
        json!({"micro": 0, "minor": 2, "major": 7})
    );
    assert_eq!(ret(&mut q, "query-version", json!({}))["qemu"]["major"], 7);
    let cmds: Vec<String> = ret(&mut q, "query-commands", json!({}))
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    for c in [
        "qmp_capabilities",
        "query-status",
        "stop",
        "cont",
        "system_reset",
        "quit",
        "query-machines",
        "query-cpus-fast",
        "qom-list",
        "qom-get",
        "qom-set",
        "qom-list-types",
        "qom-list-properties",
        "device-list-properties",
        "device_add",
        "device_del",
        "object-add",
        "object-del",
        "query-chardev",
        "human-monitor-command",
    ] {
        assert!(cmds.contains(&c.to_string()), "{c} missing");
    }
    assert_eq!(ret(&mut q, "query-name", json!({})), json!({"name": "vm0"}));
    assert_eq!(
        ret(&mut q, "query-status", json!({})),
        json!({"status": "prelaunch", "singlestep": false, "running": false})
    );
    assert_eq!(ret(&mut q, "cont", json!({})), json!({}));
    assert_eq!(ev(&mut q, "RESUME"), Value::Null);
    assert_eq!(
        ret(&mut q, "query-status", json!({})),
        json!({"status": "running", "singlestep": false, "running": true})
    );
    assert_eq!(ret(&mut q, "stop", json!({})), json!({}));
    assert_eq!(ev(&mut q, "STOP"), Value::Null);
    assert_eq!(
        ret(&mut q, "query-status", json!({})),
        json!({"status": "paused", "singlestep": false, "running": false})
    );
    assert_eq!(
        err(&mut q, "query-status", json!({"x": 1})),
        ("GenericError".into(), "Parameter 'x' is unexpected".into())
    );
    assert_eq!(
        err(&mut q, "no-such", json!({})),
        (
            "CommandNotFound".into(),
            "The command no-such has not been found".into()
        )
    );
}

#[test]
fn reset_quit_and_shutdown_events() {
    let mut q = start("-M none -device oxemu-test-device,id=t0");
    q.writel(0x1000_0008, 42).unwrap();
    assert_eq!(ret(&mut q, "system_reset", json!({})), json!({}));
    assert_eq!(
        ev(&mut q, "RESET"),
        json!({"guest": false, "reason": "host-qmp-system-reset"})
    );
    assert_eq!(q.readl(0x1000_0008).unwrap(), 0);
    assert_eq!(ret(&mut q, "quit", json!({})), json!({}));
    assert_eq!(
        ev(&mut q, "SHUTDOWN"),
        json!({"guest": false, "reason": "host-qmp-quit"})
    );
    assert!(q.wait().unwrap().success());
}

#[test]
fn machines_and_cpus() {
    let mut q = start("-M none -cpu cortex-a72,pmu=off");
    let m = ret(&mut q, "query-machines", json!({}));
    let none = m
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "none")
        .unwrap()
        .clone();
    // QEMU 7.2's members, and only those.
    assert_eq!(
        none,
        json!({"name": "none", "cpu-max": 1, "hotpluggable-cpus": false,
        "numa-mem-supported": false, "deprecated": false, "default-ram-id": "ram"})
    );
    let t = m
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "oxemu-test-1.1")
        .unwrap()
        .clone();
    assert_eq!(t["alias"], "oxemu-test");
    let cpus = ret(&mut q, "query-cpus-fast", json!({}));
    assert_eq!(cpus.as_array().unwrap().len(), 1);
    assert_eq!(cpus[0]["cpu-index"], 0);
    assert_eq!(cpus[0]["qom-path"], "/machine/unattached/device[0]");
    assert_eq!(cpus[0]["target"], "aarch64");
    assert!(cpus[0]["thread-id"].is_u64());
    let p = json!({"path": "/machine/unattached/device[0]", "property": "pmu"});
    assert_eq!(
        ret(&mut q, "qom-get", p),
        json!(false),
        "-cpu properties apply"
    );
    let p = json!({"path": "/machine/unattached/device[0]", "property": "midr"});
    assert_eq!(ret(&mut q, "qom-get", p), json!(0x410f_d083u64));
    let p = json!({"path": "/machine/unattached/device[0]", "property": "type"});
    assert_eq!(ret(&mut q, "qom-get", p), json!("cortex-a72-arm-cpu"));
}

#[test]
fn qom_commands() {
    let mut q = start("-M none -device oxemu-test-device,id=t0,addr=0x20000000");
    let l = ret(&mut q, "qom-list", json!({"path": "/machine"}));
    assert_eq!(
        l,
        json!([{"name": "type", "type": "string"},
               {"name": "peripheral", "type": "child<container>"},
               {"name": "peripheral-anon", "type": "child<container>"},
               {"name": "unattached", "type": "child<container>"}])
    );
    let l = ret(
        &mut q,
        "qom-list",
        json!({"path": "/machine/peripheral/t0"}),
    );
    assert_eq!(l[0], json!({"name": "type", "type": "string"}));
    assert!(l
        .as_array()
        .unwrap()
        .contains(&json!({"name": "addr", "type": "uint64"})));
    assert!(l
        .as_array()
        .unwrap()
        .contains(&json!({"name": "realized", "type": "bool"})));
    assert_eq!(
        ret(&mut q, "qom-get", json!({"path": "t0", "property": "addr"})),
        json!(0x2000_0000u64)
    );
    assert_eq!(
        ret(
            &mut q,
            "qom-get",
            json!({"path": "/machine/peripheral/t0", "property": "realized"})
        ),
        json!(true)
    );
    assert_eq!(
        ret(
            &mut q,
            "qom-get",
            json!({"path": "/machine", "property": "unattached"})
        ),
        json!("/machine/unattached")
    );
    assert_eq!(
        err(
            &mut q,
            "qom-get",
            json!({"path": "/nope", "property": "type"})
        ),
        ("DeviceNotFound".into(), "Device '/nope' not found".into())
    );
    assert_eq!(
        err(
            &mut q,
            "qom-get",
            json!({"path": "/machine", "property": "nope"})
        ),
        (
            "GenericError".into(),
            "Property 'none-machine.nope' not found".into()
        )
    );
    assert_eq!(
        err(&mut q, "qom-get", json!({"path": "/machine"})),
        (
            "GenericError".into(),
            "Parameter 'property' is missing".into()
        )
    );
    assert_eq!(
        err(&mut q, "qom-set", json!({"path": "/machine/peripheral/t0", "property": "revision", "value": 5})),
        ("GenericError".into(), "Attempt to set property 'revision' on device 't0' (type 'oxemu-test-device') after it was realized".into())
    );
    assert_eq!(
        err(
            &mut q,
            "qom-set",
            json!({"path": "/machine/peripheral/t0", "property": "type", "value": "x"})
        ),
        (
            "GenericError".into(),
            "Insufficient permission to perform this operation".into()
        )
    );
    // An unrealized property: the machine's memory-backend object is settable? No:
    // set a backend property before completion is impossible over QMP, so check a
    // container object instead.
    assert_eq!(
        err(
            &mut q,
            "qom-set",
            json!({"path": "/machine", "property": "x", "value": 1})
        ),
        (
            "GenericError".into(),
            "Property 'none-machine.x' not found".into()
        )
    );
    let types = ret(&mut q, "qom-list-types", json!({"implements": "arm-cpu"}));
    assert_eq!(
        types,
        json!([{"name": "cortex-a57-arm-cpu", "parent": "arm-cpu"},
               {"name": "cortex-a72-arm-cpu", "parent": "arm-cpu"},
               {"name": "max-arm-cpu", "parent": "arm-cpu"}])
    );
    let types = ret(
        &mut q,
        "qom-list-types",
        json!({"implements": "cpu", "abstract": true}),
    );
    assert!(types
        .as_array()
        .unwrap()
        .contains(&json!({"name": "arm-cpu", "abstract": true, "parent": "cpu"})));
    let p = ret(
        &mut q,
        "qom-list-properties",
        json!({"typename": "memory-backend-file"}),
    );
    assert_eq!(p[0], json!({"name": "type", "type": "string"}));
    assert!(p
        .as_array()
        .unwrap()
        .contains(&json!({"name": "mem-path", "type": "string"})));
    assert_eq!(
        err(&mut q, "qom-list-properties", json!({"typename": "zz"})),
        ("GenericError".into(), "Class 'zz' not found".into())
    );
    let d = ret(
        &mut q,
        "device-list-properties",
        json!({"typename": "oxemu-test-device"}),
    );
    assert_eq!(
        d,
        json!([{"name": "addr", "type": "uint64", "default-value": 0x1000_0000u64},
               {"name": "iobase", "type": "uint32", "default-value": 0xffff_ffffu32},
               {"name": "revision", "type": "uint32", "default-value": 2}])
    );
    assert_eq!(
        err(&mut q, "device-list-properties", json!({"typename": "zz"})),
        ("DeviceNotFound".into(), "Device 'zz' not found".into())
    );
    assert_eq!(
        err(
            &mut q,
            "device-list-properties",
            json!({"typename": "memory-backend-ram"})
        ),
        (
            "GenericError".into(),
            "Parameter 'typename' expects device".into()
        )
    );
    assert_eq!(
        err(
            &mut q,
            "device-list-properties",
            json!({"typename": "arm-cpu"})
        ),
        (
            "GenericError".into(),
            "Parameter 'typename' expects non-abstract device type".into()
        )
    );
}

#[test]
fn devices_and_objects_hotplug() {
    let mut q = start("-M none -m 16M");
    assert_eq!(
        ret(
            &mut q,
            "device_add",
            json!({"driver": "oxemu-test-device", "id": "d1", "addr": 0x3000_0000u64})
        ),
        json!({})
    );
    assert_eq!(q.readl(0x3000_0000).unwrap(), 0x0e1e_5700);
    assert_eq!(
        ret(
            &mut q,
            "qom-get",
            json!({"path": "/machine/peripheral/d1", "property": "hotplugged"})
        ),
        json!(true)
    );
    assert_eq!(
        ret(
            &mut q,
            "device_add",
            json!({"driver": "oxemu-test-device", "addr": "0x30001000"})
        ),
        json!({})
    );
    assert_eq!(
        ret(
            &mut q,
            "qom-get",
            json!({"path": "/machine/peripheral-anon/device[0]", "property": "addr"})
        ),
        json!(0x3000_1000u64)
    );
    assert_eq!(
        err(&mut q, "device_add", json!({"driver": "nope"})),
        (
            "GenericError".into(),
            "'nope' is not a valid device model name".into()
        )
    );
    assert_eq!(
        err(
            &mut q,
            "device_add",
            json!({"driver": "oxemu-test-device", "id": "d1"})
        ),
        ("GenericError".into(), "Duplicate device ID 'd1'".into())
    );
    assert_eq!(
        err(
            &mut q,
            "device_add",
            json!({"driver": "oxemu-test-device", "bogus": 1})
        ),
        (
            "GenericError".into(),
            "Property 'oxemu-test-device.bogus' not found".into()
        )
    );
    assert_eq!(
        err(
            &mut q,
            "device_add",
            json!({"driver": "oxemu-test-device", "addr": true})
        ),
        (
            "GenericError".into(),
            "Invalid parameter type for 'addr', expected: integer".into()
        )
    );
    assert_eq!(
        err(&mut q, "device_add", json!({})),
        (
            "GenericError".into(),
            "Parameter 'driver' is missing".into()
        )
    );
    assert_eq!(
        err(
            &mut q,
            "device_add",
            json!({"driver": "cortex-a57-arm-cpu"})
        ),
        (
            "GenericError".into(),
            "'cortex-a57-arm-cpu' is not a valid device model name".into()
        )
    );
    assert_eq!(ret(&mut q, "device_del", json!({"id": "d1"})), json!({}));
    assert_eq!(
        ev(&mut q, "DEVICE_DELETED"),
        json!({"device": "d1", "path": "/machine/peripheral/d1"})
    );
    assert_eq!(q.readl(0x3000_0000).unwrap(), 0);
    assert_eq!(
        ret(
            &mut q,
            "device_del",
            json!({"id": "/machine/peripheral-anon/device[0]"})
        ),
        json!({})
    );
    assert_eq!(
        ev(&mut q, "DEVICE_DELETED"),
        json!({"path": "/machine/peripheral-anon/device[0]"})
    );
    assert_eq!(
        err(&mut q, "device_del", json!({"id": "d1"})),
        ("DeviceNotFound".into(), "Device 'd1' not found".into())
    );

    assert_eq!(
        ret(
            &mut q,
            "object-add",
            json!({"qom-type": "memory-backend-memfd", "id": "mem1", "size": 65536})
        ),
        json!({})
    );
    assert_eq!(
        ret(
            &mut q,
            "qom-get",
            json!({"path": "/objects/mem1", "property": "share"})
        ),
        json!(true)
    );
    assert_eq!(
        ret(
            &mut q,
            "qom-get",
            json!({"path": "/objects/ram", "property": "size"})
        ),
        json!(16u64 << 20)
    );
    assert_eq!(
        err(
            &mut q,
            "object-add",
            json!({"qom-type": "memory-backend-ram", "id": "mem1", "size": 4096})
        ),
        (
            "GenericError".into(),
            "attempt to add duplicate property 'mem1' to object (type 'container')".into()
        )
    );
    assert_eq!(
        err(&mut q, "object-add", json!({"qom-type": "nope", "id": "x"})),
        (
            "GenericError".into(),
            "Parameter 'qom-type' does not accept value 'nope'".into()
        )
    );
    assert_eq!(
        err(
            &mut q,
            "object-add",
            json!({"qom-type": "memory-backend-ram", "id": "x"})
        ),
        ("GenericError".into(), "Parameter 'size' is missing".into())
    );
    assert_eq!(
        err(
            &mut q,
            "object-add",
            json!({"qom-type": "memory-backend-ram", "id": "x", "size": 1, "foo": 1})
        ),
        (
            "GenericError".into(),
            "Parameter 'foo' is unexpected".into()
        )
    );
    assert_eq!(ret(&mut q, "object-del", json!({"id": "mem1"})), json!({}));
    assert_eq!(
        err(&mut q, "object-del", json!({"id": "mem1"})),
        ("GenericError".into(), "object 'mem1' not found".into())
    );
    assert_eq!(
        err(&mut q, "object-del", json!({"id": "ram"})),
        (
            "GenericError".into(),
            "object 'ram' is in use, can not be deleted".into()
        )
    );
}

#[test]
fn chardevs_and_hmp() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("serial.txt");
    let mut q = start(&format!("-M none -m 128M -chardev null,id=n0 -chardev file,id=f0,path={} -serial chardev:f0 -device oxemu-test-device,id=t0", f.display()));
    let c = ret(&mut q, "query-chardev", json!({}));
    assert!(c
        .as_array()
        .unwrap()
        .contains(&json!({"frontend-open": false, "filename": "null", "label": "n0"})));
    assert!(c.as_array().unwrap().contains(
        &json!({"frontend-open": true, "filename": format!("file:{}", f.display()), "label": "f0"})
    ));
    assert!(c
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["label"] == "char0" && x["frontend-open"] == true));
    let hmp = |q: &mut QTest, l: &str| {
        ret(q, "human-monitor-command", json!({"command-line": l}))
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        hmp(&mut q, "info mtree"),
        "address-space: memory\r\n  0000000000000000-ffffffffffffffff (prio 0, i/o): system\r\n    0000000000000000-0000000007ffffff (prio 0, ram): ram\r\n    0000000010000000-00000000100000ff (prio 0, i/o): oxemu-test-device\r\n\r\naddress-space: I/O\r\n  0000000000000000-000000000000ffff (prio 0, i/o): io\r\n\r\n"
    );
    assert_eq!(
        hmp(&mut q, "info mtree -f"),
        "FlatView #0\r\n AS \"memory\", root: system\r\n Root memory region: system\r\n  0000000000000000-0000000007ffffff (prio 0, ram): ram\r\n  0000000010000000-00000000100000ff (prio 0, i/o): oxemu-test-device\r\n\r\nFlatView #1\r\n AS \"I/O\", root: io\r\n Root memory region: io\r\n  0000000000000000-000000000000ffff (prio 0, i/o): io\r\n\r\n"
    );
    assert_eq!(
        hmp(&mut q, "info qtree"),
        "bus: main-system-bus\r\n  type System\r\n  dev: oxemu-test-device, id \"t0\"\r\n    gpio-in \"\" 2\r\n    gpio-out \"\" 2\r\n    addr = 0x10000000\r\n    iobase = 4294967295\r\n    revision = 2\r\n    mmio 0000000010000000/0000000000000100\r\n"
    );
    assert_eq!(
        hmp(&mut q, "info qom-tree"),
        "/machine (none-machine)\r\n  /peripheral (container)\r\n    /t0 (oxemu-test-device)\r\n  /peripheral-anon (container)\r\n  /unattached (container)\r\n    /io[0] (memory-region)\r\n    /sysbus (System)\r\n    /system[0] (memory-region)\r\n"
    );
    assert_eq!(
        hmp(&mut q, "info bogus"),
        "unknown command: 'info bogus'\r\n"
    );
}

#[test]
fn json_device_and_object_arguments() {
    // JSON -device and -object are typed as QMP's device_add and object-add.
    let mut q = start(
        r#"-M none -object '{"qom-type":"memory-backend-ram","id":"m0","size":1048576,"share":true}' -device '{"driver":"oxemu-test-device","id":"t0","addr":536870912}'"#,
    );
    let p = json!({"path": "/objects/m0", "property": "size"});
    assert_eq!(ret(&mut q, "qom-get", p), json!(1048576));
    let p = json!({"path": "/objects/m0", "property": "share"});
    assert_eq!(ret(&mut q, "qom-get", p), json!(true));
    let p = json!({"path": "/machine/peripheral/t0", "property": "addr"});
    assert_eq!(ret(&mut q, "qom-get", p), json!(0x2000_0000u64));
}
