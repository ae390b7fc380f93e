//! The machine types oxemu-system-aarch64 offers.
//!
//! - `none`: QEMU's empty machine. `-m` RAM is mapped at address 0; `-cpu` adds
//!   one CPU; devices come from `-device`.
//! - `oxemu-test-1.1` (alias `oxemu-test`) and `oxemu-test-1.0`: oxemu's own small
//!   board for tests: RAM at `0x40000000` and an `oxemu-test-device` at
//!   `0x10000000` (ports `0x100..0x1ff`). Version 1.0 differs only through a compat
//!   property, `oxemu-test-device.revision=1`, as QEMU's versioned boards differ.

use crate::machine::{GlobalProp, Machine, MachineType};

fn none_init(m: &mut Machine) -> Result<(), String> {
    m.map_ram(0)
}

fn test_init(m: &mut Machine) -> Result<(), String> {
    m.map_ram(0x4000_0000)?;
    builtin_test_device(m)
}

fn builtin_test_device(m: &mut Machine) -> Result<(), String> {
    use serde_json::json;
    let mut o = crate::qom::Object::instantiate(&m.types, crate::testdev::TYPE).map_err(|e| e.0)?;
    for g in m.globals.clone() {
        if m.types.is_a(&o.type_name, &g.driver) {
            let p = m
                .types
                .find_prop(&o.type_name, &g.property)
                .ok_or_else(|| format!("Property '{}.{}' not found", o.type_name, g.property))?;
            o.props
                .insert(g.property.clone(), p.ty.parse_str(&g.property, &g.value)?);
        }
    }
    o.props.insert("addr".into(), json!(0x1000_0000u64));
    o.props.insert("iobase".into(), json!(0x100u32));
    let un = m.tree.container(m.machine_obj, "unattached");
    let id = m.tree.add_child(un, "device[*]", o).map_err(|e| e.0)?;
    m.realize(id).map_err(|e| e.0)
}

/// Every machine type, `none` first.
pub fn machine_types() -> Vec<MachineType> {
    let base = MachineType {
        name: "none".into(),
        alias: None,
        desc: "empty machine".into(),
        is_default: false,
        max_cpus: 1,
        default_cpu_type: None,
        default_ram_id: Some("ram".into()),
        default_ram_size: 0,
        hotpluggable_cpus: false,
        numa_mem_supported: false,
        deprecated: false,
        compat: Vec::new(),
        init: none_init,
    };
    let t11 = MachineType {
        name: "oxemu-test-1.1".into(),
        alias: Some("oxemu-test".into()),
        desc: "oxemu test board (RAM and one oxemu-test-device)".into(),
        max_cpus: 4,
        default_cpu_type: Some("cortex-a57-arm-cpu".into()),
        default_ram_id: Some("oxemu-test.ram".into()),
        default_ram_size: 128 << 20,
        init: test_init,
        ..base.clone()
    };
    let t10 = MachineType {
        name: "oxemu-test-1.0".into(),
        alias: None,
        compat: vec![GlobalProp {
            driver: crate::testdev::TYPE.into(),
            property: "revision".into(),
            value: "1".into(),
        }],
        ..t11.clone()
    };
    vec![base, t11, t10]
}
