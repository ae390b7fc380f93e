//! The types every oxemu machine has: QOM's base types, memory backends, the
//! aarch64 CPU models (objects with properties, no emulation) and the test device.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::backend::RamBlock;
use crate::qom::{Behaviour, Context, PropDef, PropType, TypeInfo, TypeRegistry};

/// `memory-backend-*` behaviour: maps the RAM when the object is completed.
struct Backend {
    kind: &'static str,
    block: Option<Arc<RamBlock>>,
}

impl Behaviour for Backend {
    fn realize(&mut self, cx: &mut Context<'_>) -> Result<(), String> {
        let size = cx.prop_u64("size").unwrap_or(0);
        if size == 0 {
            return Err("can't create backend with size 0".into());
        }
        let share = cx.prop_bool("share").unwrap_or(false);
        let b = match self.kind {
            "memory-backend-ram" => RamBlock::anonymous(size, share)?,
            "memory-backend-memfd" => {
                let name = cx.path.rsplit('/').next().unwrap_or("memfd").to_string();
                RamBlock::memfd(&name, size, share)?
            }
            _ => {
                let p = cx.prop_str("mem-path").unwrap_or("");
                if p.is_empty() {
                    return Err("mem-path property not set".into());
                }
                RamBlock::file(&PathBuf::from(p), size, share)?
            }
        };
        self.block = Some(Arc::new(b));
        Ok(())
    }
    fn ram_block(&self) -> Option<Arc<RamBlock>> {
        self.block.clone()
    }
}

/// CPU objects: properties only; they never run.
struct Cpu;
impl Behaviour for Cpu {}

fn cpu_type(name: &str, midr: u64) -> TypeInfo {
    let mut t = TypeInfo::new(name, "arm-cpu")
        .prop(PropDef::new("midr", PropType::U64, Some(json!(midr))))
        .factory(|| Box::new(Cpu));
    t.user_creatable = false;
    t
}

/// Registers the standard types into `r`.
pub fn register_standard(r: &mut TypeRegistry) {
    let ok = |r: &mut TypeRegistry, t: TypeInfo| {
        r.register(t).expect("standard types are consistent");
    };
    let mut c = TypeInfo::new("container", "object");
    c.user_creatable = false;
    ok(r, c);
    ok(r, TypeInfo::new("user-creatable", "interface").abstract_());
    let mut mr = TypeInfo::new("memory-region", "object");
    mr.user_creatable = false;
    ok(r, mr);
    let mut irq = TypeInfo::new("irq", "object");
    irq.user_creatable = false;
    ok(r, irq);
    let mut bus = TypeInfo::new("bus", "object").abstract_();
    bus.user_creatable = false;
    ok(r, bus);
    let mut sb = TypeInfo::new("System", "bus");
    sb.user_creatable = false;
    ok(r, sb);

    ok(
        r,
        TypeInfo::new("device", "object")
            .abstract_()
            .prop(PropDef::new("realized", PropType::Bool, Some(json!(false))))
            .prop(PropDef::new(
                "hotpluggable",
                PropType::Bool,
                Some(json!(true)),
            ))
            .prop(PropDef::new(
                "hotplugged",
                PropType::Bool,
                Some(json!(false)),
            )),
    );
    ok(r, TypeInfo::new("sys-bus-device", "device").abstract_());

    // CPUs.
    ok(
        r,
        TypeInfo::new("cpu", "device")
            .abstract_()
            .prop(PropDef::new(
                "start-powered-off",
                PropType::Bool,
                Some(json!(false)),
            )),
    );
    ok(
        r,
        TypeInfo::new("arm-cpu", "cpu")
            .abstract_()
            .prop(PropDef::new("aarch64", PropType::Bool, Some(json!(true))))
            .prop(PropDef::new("has_el3", PropType::Bool, Some(json!(true))))
            .prop(PropDef::new("has_el2", PropType::Bool, Some(json!(true))))
            .prop(PropDef::new("pmu", PropType::Bool, Some(json!(true))))
            .prop(PropDef::new("reset-cbar", PropType::U64, Some(json!(0))))
            .prop(PropDef::new("rvbar", PropType::U64, Some(json!(0))))
            .prop(PropDef::new("mp-affinity", PropType::U64, Some(json!(0))))
            .prop(PropDef::new(
                "cntfrq",
                PropType::U64,
                Some(json!(62_500_000u64)),
            )),
    );
    // MIDR values of the real cores (ARM TRMs); `max` reports QEMU's.
    ok(r, cpu_type("cortex-a57-arm-cpu", 0x411f_d070));
    ok(r, cpu_type("cortex-a72-arm-cpu", 0x410f_d083));
    ok(r, cpu_type("max-arm-cpu", 0x000f_0510));

    // Memory backends.
    ok(
        r,
        TypeInfo::new("memory-backend", "object")
            .abstract_()
            .interface("user-creatable")
            .prop(PropDef::new("size", PropType::Size, Some(json!(0))))
            .prop(PropDef::new("share", PropType::Bool, Some(json!(false)))),
    );
    for kind in [
        "memory-backend-ram",
        "memory-backend-memfd",
        "memory-backend-file",
    ] {
        let mut t = TypeInfo::new(kind, "memory-backend")
            .factory(move || Box::new(Backend { kind, block: None }));
        if kind == "memory-backend-memfd" {
            // memfd memory is shared by default (QEMU's memfd instance_init).
            t = t.prop(PropDef::new("share", PropType::Bool, Some(json!(true))));
        }
        if kind == "memory-backend-file" {
            t = t.prop(PropDef::new("mem-path", PropType::String, None));
        }
        ok(r, t);
    }

    crate::testdev::register(r);
}

/// The `-cpu` model names and their type names.
pub fn cpu_models() -> &'static [(&'static str, &'static str)] {
    &[
        ("cortex-a57", "cortex-a57-arm-cpu"),
        ("cortex-a72", "cortex-a72-arm-cpu"),
        ("max", "max-arm-cpu"),
    ]
}

/// The value printed by `info qtree` for a property value.
pub fn qtree_value(ty: &PropType, v: Option<&Value>) -> String {
    match (ty, v) {
        (_, None) => "\"\"".into(),
        (PropType::Bool, Some(Value::Bool(b))) => if *b { "true" } else { "false" }.into(),
        (PropType::Str | PropType::String | PropType::Link(_), Some(Value::String(s))) => {
            format!("\"{s}\"")
        }
        (PropType::U64, Some(v)) => format!("0x{:x}", v.as_u64().unwrap_or(0)),
        (_, Some(v)) => v.to_string(),
    }
}
