use super::*;
use crate::boards::machine_types;
use crate::types::register_standard;
use serde_json::json;

fn machine(name: &str, cfg: MachineConfig, globals: &[GlobalProp]) -> Result<Machine, String> {
    let mut r = TypeRegistry::new();
    register_standard(&mut r);
    let types = machine_types();
    let mt = find_machine(&types, name).unwrap();
    let mut m = Machine::new(r, mt, globals);
    m.init(&cfg)?;
    m.done = true;
    Ok(m)
}

fn readl(m: &Machine, a: u64) -> u32 {
    let mut b = [0u8; 4];
    m.read_memory(a, &mut b);
    u32::from_le_bytes(b)
}

#[test]
fn versions_aliases_and_compat_properties() {
    let types = machine_types();
    assert_eq!(
        find_machine(&types, "oxemu-test").unwrap().name,
        "oxemu-test-1.1"
    );
    let new = machine("oxemu-test", MachineConfig::default(), &[]).unwrap();
    assert_eq!(readl(&new, 0x1000_0004), 2);
    let old = machine("oxemu-test-1.0", MachineConfig::default(), &[]).unwrap();
    assert_eq!(readl(&old, 0x1000_0004), 1, "compat property of 1.0");
    // -global comes after compat properties and wins.
    let g = GlobalProp::parse("oxemu-test-device.revision=7").unwrap();
    let m = machine("oxemu-test-1.0", MachineConfig::default(), &[g]).unwrap();
    assert_eq!(readl(&m, 0x1000_0004), 7);
    assert!(GlobalProp::parse("noequals").is_err());
    assert_eq!(
        find_machine(&types, "none").unwrap().to_json(),
        json!({"name": "none", "cpu-max": 1, "hotpluggable-cpus": false,
               "numa-mem-supported": false, "deprecated": false, "default-ram-id": "ram"})
    );
}

#[test]
fn ram_cpus_and_tree_layout() {
    let cfg = MachineConfig {
        ram_size: Some(128 << 20),
        cpu_type: Some("cortex-a57-arm-cpu".into()),
        cpus: 1,
        ..Default::default()
    };
    let m = machine("none", cfg, &[]).unwrap();
    m.write_memory(0x7ff_fffc, &[1, 2, 3, 4]);
    assert_eq!(readl(&m, 0x7ff_fffc), 0x04030201);
    assert_eq!(readl(&m, 0x800_0000), 0, "past RAM is unassigned");
    let tree = m.info_qom_tree(None).unwrap();
    assert!(tree.starts_with("/machine (none-machine)\n  /peripheral (container)\n  /peripheral-anon (container)\n  /unattached (container)\n    /device[0] (cortex-a57-arm-cpu)\n      /unnamed-gpio-in[0] (irq)\n"), "{tree}");
    let mt = crate::mtree::info_mtree(&m.memory);
    assert!(mt.starts_with("address-space: cpu-memory-0\naddress-space: cpu-secure-memory-0\naddress-space: memory\n  0000000000000000-ffffffffffffffff (prio 0, i/o): system\n    0000000000000000-0000000007ffffff (prio 0, ram): ram\n"), "{mt}");
    let too_many = MachineConfig {
        cpus: 2,
        cpu_type: Some("max-arm-cpu".into()),
        ..Default::default()
    };
    assert_eq!(
        machine("none", too_many, &[]).err().unwrap(),
        "Invalid SMP CPUs 2. The max CPUs supported by machine 'none' is 1"
    );
}

#[test]
fn devices_add_remove_reset_and_errors() {
    let mut m = machine("none", MachineConfig::default(), &[]).unwrap();
    m.done = false;
    let d = m
        .device_add(
            "oxemu-test-device",
            Some("t0"),
            &[("addr".into(), json!("0x2000"))],
        )
        .unwrap();
    assert_eq!(m.tree.path(d), "/machine/peripheral/t0");
    let anon = m
        .device_add("oxemu-test-device", None, &[("addr".into(), json!(0x3000))])
        .unwrap();
    assert_eq!(m.tree.path(anon), "/machine/peripheral-anon/device[0]");
    m.write_memory(0x2008, &0xfeed_beefu32.to_le_bytes());
    assert_eq!(readl(&m, 0x2008), 0xfeed_beef);
    assert_eq!(readl(&m, 0x3008), 0, "separate instance");
    m.reset();
    assert_eq!(readl(&m, 0x2008), 0, "reset clears SCRATCH");
    let e = |r: Result<ObjectId, QomError>| r.err().unwrap().0;
    assert_eq!(
        e(m.device_add("nope", None, &[])),
        "'nope' is not a valid device model name"
    );
    assert_eq!(
        e(m.device_add("arm-cpu", None, &[])),
        "'arm-cpu' is not a valid device model name"
    );
    assert_eq!(
        e(m.device_add("oxemu-test-device", Some("t0"), &[])),
        "Duplicate device ID 't0'"
    );
    assert!(e(m.device_add("oxemu-test-device", Some("0bad"), &[]))
        .starts_with("Parameter 'id' expects an identifier"));
    assert_eq!(
        e(m.device_add("oxemu-test-device", None, &[("bogus".into(), json!("1"))])),
        "Property 'oxemu-test-device.bogus' not found"
    );
    assert_eq!(
        e(m.device_add(
            "oxemu-test-device",
            None,
            &[("iobase".into(), json!("0xfff0"))]
        )),
        "iobase 0xfff0 does not fit the 64 KiB port I/O space"
    );
    // A failed realize leaves nothing behind.
    assert!(m
        .tree
        .resolve("/machine/peripheral-anon/device[1]")
        .is_err());
    m.device_del(d).unwrap();
    assert_eq!(readl(&m, 0x2000), 0, "unmapped after device_del");
    assert!(m.tree.resolve("/machine/peripheral/t0").is_err());
}

#[test]
fn memory_backends_as_objects_and_machine_ram() {
    let mut r = TypeRegistry::new();
    register_standard(&mut r);
    let types = machine_types();
    let mut m = Machine::new(r, find_machine(&types, "none").unwrap(), &[]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("guest.ram");
    m.object_add(
        "memory-backend-file",
        "mem0",
        &[
            ("size".into(), json!("64k")),
            ("mem-path".into(), json!(path.to_str().unwrap())),
            ("share".into(), json!("on")),
        ],
    )
    .unwrap();
    let cfg = MachineConfig {
        memory_backend: Some("mem0".into()),
        ..Default::default()
    };
    m.init(&cfg).unwrap();
    m.write_memory(0x10, b"shared");
    assert_eq!(&std::fs::read(&path).unwrap()[0x10..0x16], b"shared");
    assert_eq!(
        m.object_del("mem0").unwrap_err().0,
        "object 'mem0' is in use, can not be deleted"
    );
    let e = |r: Result<ObjectId, QomError>| r.err().unwrap().0;
    assert_eq!(
        e(m.object_add("nope", "x", &[])),
        "invalid object type: nope"
    );
    assert_eq!(
        e(m.object_add("oxemu-test-device", "x", &[])),
        "object type 'oxemu-test-device' isn't supported by object-add"
    );
    assert_eq!(
        e(m.object_add("memory-backend", "x", &[])),
        "object type 'memory-backend' is abstract"
    );
    assert_eq!(
        e(m.object_add("memory-backend-ram", "x", &[])),
        "can't create backend with size 0"
    );
    assert_eq!(
        e(m.object_add("memory-backend-ram", "x", &[("merge".into(), json!("on"))])),
        "Property 'memory-backend-ram.merge' not found"
    );
    m.object_add(
        "memory-backend-memfd",
        "m1",
        &[("size".into(), json!(4096))],
    )
    .unwrap();
    assert_eq!(
        e(m.object_add(
            "memory-backend-memfd",
            "m1",
            &[("size".into(), json!(4096))]
        )),
        "attempt to add duplicate property 'm1' to object (type 'container')"
    );
    m.object_del("m1").unwrap();
    assert_eq!(m.object_del("m1").unwrap_err().0, "object 'm1' not found");
}

#[test]
fn timers_and_irq_lines_of_the_test_device() {
    use std::sync::{Arc, Mutex};
    let mut m = machine("none", MachineConfig::default(), &[]).unwrap();
    let d = m
        .device_add("oxemu-test-device", Some("t"), &[("addr".into(), json!(0))])
        .unwrap();
    let levels = Arc::new(Mutex::new(Vec::new()));
    let l = levels.clone();
    let sink = crate::gpio::Irq::new(move |v| l.lock().unwrap().push(v));
    m.tree
        .get(d)
        .unwrap()
        .gpios
        .output(None, 1)
        .unwrap()
        .connect(Some(sink));
    m.write_memory(0x10, &1000u32.to_le_bytes());
    assert_eq!(m.clock.deadline_ns(), Some(1000));
    m.clock.warp(999);
    assert_eq!(readl(&m, 0x14), 0);
    m.clock.warp(1000);
    assert_eq!(readl(&m, 0x14), 1);
    assert_eq!(readl(&m, 0x18), 1);
    m.write_memory(0x14, &1u32.to_le_bytes());
    assert_eq!(*levels.lock().unwrap(), [1, 0]);
    m.tree.get(d).unwrap().gpios.input(None, 1).unwrap().set(1);
    assert_eq!(readl(&m, 0x1c), 2);
}
