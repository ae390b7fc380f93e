//! The machine's QMP commands, with QEMU 7.2's arguments, replies and error texts.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use oxemu_devmodel::machine::Machine;
use oxemu_devmodel::qom::{ObjectId, PropDef, TypeRegistry};
use oxemu_qmp::{CommandInfo, Dispatcher, EventBus, QmpError};

use crate::vm::{check_object_args, RunState, Vm};

/// The dispatcher: commands run under the machine's lock.
pub struct Commands {
    /// Shared state.
    pub vm: Arc<Vm>,
}

type Args = Map<String, Value>;

fn str_arg(a: &Args, k: &str) -> Result<Option<String>, QmpError> {
    match a.get(k) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(QmpError::generic(format!(
            "Invalid parameter type for '{k}', expected: string"
        ))),
    }
}

fn req_str(a: &Args, k: &str) -> Result<String, QmpError> {
    str_arg(a, k)?.ok_or_else(|| QmpError::generic(format!("Parameter '{k}' is missing")))
}

fn only(a: &Args, allowed: &[&str]) -> Result<(), QmpError> {
    match a.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(QmpError::generic(format!("Parameter '{k}' is unexpected"))),
        None => Ok(()),
    }
}

fn bool_arg(a: &Args, k: &str) -> Result<Option<bool>, QmpError> {
    match a.get(k) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(QmpError::generic(format!(
            "Invalid parameter type for '{k}', expected: boolean"
        ))),
    }
}

fn resolve(m: &Machine, path: &str) -> Result<ObjectId, QmpError> {
    m.tree.resolve(path).map_err(|amb| {
        if amb {
            QmpError::generic(format!("Path '{path}' is ambiguous"))
        } else {
            QmpError::device_not_found(format!("Device '{path}' not found"))
        }
    })
}

fn prop_info(p: &PropDef, with_default: bool) -> Value {
    let mut v = json!({"name": p.name, "type": p.ty.qom_name()});
    if let Some(d) = &p.description {
        v["description"] = json!(d);
    }
    if with_default {
        if let Some(d) = &p.default {
            v["default-value"] = d.clone();
        }
    }
    v
}

fn hidden_device_prop(n: &str) -> bool {
    matches!(n, "realized" | "hotplugged" | "hotpluggable")
}

impl Commands {
    fn machine(&self) -> std::sync::MutexGuard<'_, Machine> {
        self.vm.machine.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn qom_list(&self, a: &Args) -> Result<Value, QmpError> {
        only(a, &["path"])?;
        let path = req_str(a, "path")?;
        let m = self.machine();
        let id = resolve(&m, &path)?;
        let o = m
            .tree
            .get(id)
            .ok_or_else(|| QmpError::device_not_found(format!("Device '{path}' not found")))?;
        let mut out = vec![json!({"name": "type", "type": "string"})];
        for (n, c) in &o.children {
            let t = m.tree.get(*c).map_or("object", |c| c.type_name.as_str());
            out.push(json!({"name": n, "type": format!("child<{t}>")}));
        }
        for p in m.types.all_props(&o.type_name) {
            out.push(json!({"name": p.name, "type": p.ty.qom_name()}));
        }
        Ok(Value::Array(out))
    }

    fn qom_get(&self, a: &Args) -> Result<Value, QmpError> {
        only(a, &["path", "property"])?;
        let path = req_str(a, "path")?;
        let prop = req_str(a, "property")?;
        let m = self.machine();
        let id = resolve(&m, &path)?;
        let o = m
            .tree
            .get(id)
            .ok_or_else(|| QmpError::device_not_found(format!("Device '{path}' not found")))?;
        if prop == "type" {
            return Ok(json!(o.type_name));
        }
        if let Some(c) = m.tree.child(id, &prop) {
            return Ok(json!(m.tree.path(c)));
        }
        let def = m.types.find_prop(&o.type_name, &prop).ok_or_else(|| {
            QmpError::generic(format!("Property '{}.{prop}' not found", o.type_name))
        })?;
        Ok(o.props.get(&prop).cloned().unwrap_or(match def.ty {
            oxemu_devmodel::qom::PropType::Link(_) => json!(""),
            _ => Value::Null,
        }))
    }

    fn qom_set(&self, a: &Args) -> Result<Value, QmpError> {
        only(a, &["path", "property", "value"])?;
        let path = req_str(a, "path")?;
        let prop = req_str(a, "property")?;
        let value = a
            .get("value")
            .cloned()
            .ok_or_else(|| QmpError::generic("Parameter 'value' is missing"))?;
        let mut m = self.machine();
        let id = resolve(&m, &path)?;
        let (tn, realized, name) = {
            let o = m
                .tree
                .get(id)
                .ok_or_else(|| QmpError::device_not_found(format!("Device '{path}' not found")))?;
            (
                o.type_name.clone(),
                o.realized,
                o.parent.as_ref().map(|(_, n)| n.clone()),
            )
        };
        if prop == "type" || m.tree.child(id, &prop).is_some() || hidden_device_prop(&prop) {
            return Err(QmpError::generic(
                "Insufficient permission to perform this operation",
            ));
        }
        let def = m
            .types
            .find_prop(&tn, &prop)
            .ok_or_else(|| QmpError::generic(format!("Property '{tn}.{prop}' not found")))?;
        if realized {
            let is_dev = m.types.is_a(&tn, "device");
            let per = m.tree.path(id).starts_with("/machine/peripheral/");
            return Err(QmpError::generic(match (is_dev, per) {
                (true, true) => format!(
                    "Attempt to set property '{prop}' on device '{}' (type '{tn}') after it was realized",
                    name.unwrap_or_default()
                ),
                (true, false) => format!(
                    "Attempt to set property '{prop}' on anonymous device (type '{tn}') after it was realized"
                ),
                _ => format!("Property '{prop}' can not be set after object '{}' was created", name.unwrap_or_default()),
            }));
        }
        let v = def
            .ty
            .check_json(&prop, &value)
            .map_err(QmpError::generic)?;
        if let Some(o) = m.tree.get_mut(id) {
            o.props.insert(prop, v);
        }
        Ok(json!({}))
    }

    fn list_types(&self, a: &Args) -> Result<Value, QmpError> {
        only(a, &["implements", "abstract"])?;
        let imp = str_arg(a, "implements")?;
        let abs = bool_arg(a, "abstract")?.unwrap_or(false);
        let m = self.machine();
        let out: Vec<Value> = m
            .types
            .list(imp.as_deref(), abs)
            .into_iter()
            .map(|t| {
                let mut v = json!({"name": t.name});
                if t.is_abstract {
                    v["abstract"] = json!(true);
                }
                if let Some(p) = &t.parent {
                    v["parent"] = json!(p);
                }
                v
            })
            .collect();
        Ok(Value::Array(out))
    }

    fn qom_list_properties(&self, a: &Args) -> Result<Value, QmpError> {
        only(a, &["typename"])?;
        let t = req_str(a, "typename")?;
        let m = self.machine();
        if m.types.get(&t).is_none() {
            return Err(QmpError::generic(format!("Class '{t}' not found")));
        }
        let mut out = vec![json!({"name": "type", "type": "string"})];
        out.extend(m.types.all_props(&t).iter().map(|p| prop_info(p, false)));
        Ok(Value::Array(out))
    }

    fn device_list_properties(&self, a: &Args) -> Result<Value, QmpError> {
        only(a, &["typename"])?;
        let t = req_str(a, "typename")?;
        let m = self.machine();
        let r: &TypeRegistry = &m.types;
        let Some(ti) = r.get(&t) else {
            return Err(QmpError::device_not_found(format!(
                "Device '{t}' not found"
            )));
        };
        if !r.is_a(&t, "device") {
            return Err(QmpError::generic("Parameter 'typename' expects device"));
        }
        if ti.is_abstract {
            return Err(QmpError::generic(
                "Parameter 'typename' expects non-abstract device type",
            ));
        }
        Ok(Value::Array(
            r.all_props(&t)
                .iter()
                .filter(|p| !hidden_device_prop(&p.name))
                .map(|p| prop_info(p, true))
                .collect(),
        ))
    }

    fn device_add(&self, a: &Args) -> Result<Value, QmpError> {
        let driver = req_str(a, "driver")?;
        let id = str_arg(a, "id")?;
        let props: Vec<(String, Value)> = a
            .iter()
            .filter(|(k, _)| k.as_str() != "driver" && k.as_str() != "id")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut m = self.machine();
        m.device_add(&driver, id.as_deref(), &props)
            .map_err(|e| QmpError::generic(e.0))?;
        Ok(json!({}))
    }

    fn device_del(&self, a: &Args) -> Result<Value, QmpError> {
        only(a, &["id"])?;
        let id = req_str(a, "id")?;
        let mut m = self.machine();
        let mo = m.machine_obj;
        let per = m.tree.container(mo, "peripheral");
        let dev = m
            .tree
            .child(per, &id)
            .or_else(|| m.tree.resolve(&id).ok())
            .filter(|d| {
                m.tree
                    .get(*d)
                    .is_some_and(|o| m.types.is_a(&o.type_name, "device"))
            })
            .ok_or_else(|| QmpError::device_not_found(format!("Device '{id}' not found")))?;
        let path = m.tree.path(dev);
        let named = m
            .tree
            .get(dev)
            .and_then(|o| o.parent.as_ref())
            .filter(|(p, _)| *p == per)
            .map(|(_, n)| n.clone());
        m.device_del(dev).map_err(|e| QmpError::generic(e.0))?;
        drop(m);
        let mut data = json!({"path": path});
        if let Some(n) = named {
            data["device"] = json!(n);
        }
        self.vm.emit("DEVICE_DELETED", Some(data));
        Ok(json!({}))
    }

    fn object_add(&self, a: &Args) -> Result<Value, QmpError> {
        let mut m = self.machine();
        let props: Vec<(String, Value)> = a.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let (ty, id, props) =
            check_object_args(&m.types, props, false).map_err(QmpError::generic)?;
        m.object_add(&ty, &id, &props)
            .map_err(|e| QmpError::generic(e.0))?;
        Ok(json!({}))
    }

    fn hmp(&self, a: &Args) -> Result<Value, QmpError> {
        only(a, &["command-line", "cpu-index"])?;
        let line = req_str(a, "command-line")?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let m = self.machine();
        let out = match words.as_slice() {
            ["info", "mtree"] => oxemu_devmodel::mtree::info_mtree(&m.memory),
            ["info", "mtree", "-f"] => oxemu_devmodel::mtree::info_mtree_flat(&m.memory),
            ["info", "qtree"] => m.info_qtree(),
            ["info", "qom-tree"] => m.info_qom_tree(None).map_err(QmpError::generic)?,
            ["info", "qom-tree", p] => match m.info_qom_tree(Some(p)) {
                Ok(s) => s,
                Err(e) => format!("{e}\n"),
            },
            [] => String::new(),
            _ => format!("unknown command: '{}'\n", line.trim()),
        };
        Ok(json!(out.replace('\n', "\r\n")))
    }
}

const COMMANDS: &[CommandInfo] = &[
    CommandInfo {
        name: "query-status",
        args: &[],
    },
    CommandInfo {
        name: "query-name",
        args: &[],
    },
    CommandInfo {
        name: "stop",
        args: &[],
    },
    CommandInfo {
        name: "cont",
        args: &[],
    },
    CommandInfo {
        name: "system_reset",
        args: &[],
    },
    CommandInfo {
        name: "quit",
        args: &[],
    },
    CommandInfo {
        name: "query-machines",
        args: &[],
    },
    CommandInfo {
        name: "query-cpus-fast",
        args: &[],
    },
    CommandInfo {
        name: "query-chardev",
        args: &[],
    },
    CommandInfo {
        name: "qom-list",
        args: &[("path", "str", false)],
    },
    CommandInfo {
        name: "qom-get",
        args: &[("path", "str", false), ("property", "str", false)],
    },
    CommandInfo {
        name: "qom-set",
        args: &[
            ("path", "str", false),
            ("property", "str", false),
            ("value", "any", false),
        ],
    },
    CommandInfo {
        name: "qom-list-types",
        args: &[("implements", "str", true), ("abstract", "bool", true)],
    },
    CommandInfo {
        name: "qom-list-properties",
        args: &[("typename", "str", false)],
    },
    CommandInfo {
        name: "device-list-properties",
        args: &[("typename", "str", false)],
    },
    CommandInfo {
        name: "device_add",
        args: &[("driver", "str", false), ("id", "str", true)],
    },
    CommandInfo {
        name: "device_del",
        args: &[("id", "str", false)],
    },
    CommandInfo {
        name: "object-add",
        args: &[("qom-type", "str", false), ("id", "str", false)],
    },
    CommandInfo {
        name: "object-del",
        args: &[("id", "str", false)],
    },
    CommandInfo {
        name: "human-monitor-command",
        args: &[("command-line", "str", false), ("cpu-index", "int", true)],
    },
];

impl Dispatcher for Commands {
    fn dispatch(&self, name: &str, args: Value, _events: &EventBus) -> Result<Value, QmpError> {
        let a = match args {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let set_state = |s: RunState| {
            *self.vm.state.lock().unwrap_or_else(|p| p.into_inner()) = s;
        };
        let state = *self.vm.state.lock().unwrap_or_else(|p| p.into_inner());
        match name {
            "query-status" => Ok(json!({
                "status": state.as_str(),
                "singlestep": false,
                "running": state == RunState::Running,
            })),
            "query-name" => Ok(match &self.vm.name {
                Some(n) => json!({"name": n}),
                None => json!({}),
            }),
            "stop" => {
                if state == RunState::Running {
                    set_state(RunState::Paused);
                    self.vm.emit("STOP", None);
                }
                Ok(json!({}))
            }
            "cont" => {
                if state != RunState::Running {
                    set_state(RunState::Running);
                    self.vm.emit("RESUME", None);
                }
                Ok(json!({}))
            }
            "system_reset" => {
                self.machine().reset();
                self.vm.emit(
                    "RESET",
                    Some(json!({"guest": false, "reason": "host-qmp-system-reset"})),
                );
                Ok(json!({}))
            }
            "quit" => Ok(json!({})),
            "query-machines" => Ok(Value::Array(
                self.vm.machine_types.iter().map(|m| m.to_json()).collect(),
            )),
            "query-cpus-fast" => {
                let m = self.machine();
                let pid = std::process::id();
                Ok(Value::Array(
                    m.cpus
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            json!({"cpu-index": i, "qom-path": m.tree.path(*c),
                                   "thread-id": pid, "target": "aarch64"})
                        })
                        .collect(),
                ))
            }
            "query-chardev" => {
                let c = self.vm.chardevs.lock().unwrap_or_else(|p| p.into_inner());
                Ok(Value::Array(
                    c.iter()
                        .map(|c| json!({"frontend-open": c.frontend, "filename": c.filename, "label": c.label}))
                        .collect(),
                ))
            }
            "qom-list" => self.qom_list(&a),
            "qom-get" => self.qom_get(&a),
            "qom-set" => self.qom_set(&a),
            "qom-list-types" => self.list_types(&a),
            "qom-list-properties" => self.qom_list_properties(&a),
            "device-list-properties" => self.device_list_properties(&a),
            "device_add" => self.device_add(&a),
            "device_del" => self.device_del(&a),
            "object-add" => self.object_add(&a),
            "object-del" => {
                only(&a, &["id"])?;
                let id = req_str(&a, "id")?;
                self.machine()
                    .object_del(&id)
                    .map_err(|e| QmpError::generic(e.0))?;
                Ok(json!({}))
            }
            "human-monitor-command" => self.hmp(&a),
            other => Err(QmpError::command_not_found(format!(
                "The command {other} has not been found"
            ))),
        }
    }

    fn commands(&self) -> Vec<CommandInfo> {
        COMMANDS.to_vec()
    }

    fn events(&self) -> Vec<&'static str> {
        vec!["SHUTDOWN", "RESET", "STOP", "RESUME", "DEVICE_DELETED"]
    }

    fn after_reply(&self, name: &str) {
        if name == "quit" {
            self.vm.request_shutdown("host-qmp-quit");
        }
    }
}
