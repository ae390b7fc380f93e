//! Building the machine from the command line, and the run state shared by QMP,
//! qtest and the main thread.

use std::sync::{Arc, Condvar, Mutex, OnceLock};

use serde_json::{json, Value};

use oxemu_devmodel::boards::machine_types;
use oxemu_devmodel::machine::{find_machine, GlobalProp, Machine, MachineConfig, MachineType};
use oxemu_devmodel::qom::{parse_size, PropType, TypeRegistry};
use oxemu_devmodel::types::{cpu_models, register_standard};
use oxemu_qmp::EventBus;

use crate::chardev::Chardev;
use oxemu_opts::qemu_opts::QemuOpts;
use oxemu_system::cli::{CliError, Config};

/// QEMU's run states that oxemu has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Started with `-S`, never continued.
    Prelaunch,
    /// Running (virtual time still only moves under qtest).
    Running,
    /// Stopped by `stop`.
    Paused,
}

impl RunState {
    /// The `status` string of `query-status`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Prelaunch => "prelaunch",
            RunState::Running => "running",
            RunState::Paused => "paused",
        }
    }
}

/// The running program's shared state.
pub struct Vm {
    /// The machine, under the big lock.
    pub machine: Arc<Mutex<Machine>>,
    /// Run state.
    pub state: Mutex<RunState>,
    /// Set when the program must exit, with the SHUTDOWN reason.
    pub shutdown: Mutex<Option<&'static str>>,
    /// Signalled when `shutdown` is set.
    pub shutdown_cv: Condvar,
    /// Chardevs.
    pub chardevs: Mutex<Vec<Chardev>>,
    /// `-name`.
    pub name: Option<String>,
    /// Machine types.
    pub machine_types: Vec<MachineType>,
    /// The QMP event bus, once a server exists.
    pub events: OnceLock<Arc<EventBus>>,
    /// Whether `-accel qtest` is in effect.
    pub qtest_accel: bool,
}

impl Vm {
    /// Asks the main thread to exit, emitting SHUTDOWN with `reason`.
    pub fn request_shutdown(&self, reason: &'static str) {
        let mut s = self.shutdown.lock().unwrap_or_else(|p| p.into_inner());
        if s.is_none() {
            *s = Some(reason);
            if let Some(e) = self.events.get() {
                e.emit("SHUTDOWN", Some(json!({"guest": false, "reason": reason})));
            }
        }
        self.shutdown_cv.notify_all();
    }

    /// Emits an event if a QMP server exists.
    pub fn emit(&self, name: &str, data: Option<Value>) {
        if let Some(e) = self.events.get() {
            e.emit(name, data);
        }
    }
}

/// The registry with every standard type plus machine types' QOM types.
pub fn registry() -> TypeRegistry {
    let mut r = TypeRegistry::new();
    register_standard(&mut r);
    r
}

fn located<'a>(opt: &'a str, arg: &'a str) -> impl Fn(String) -> CliError + 'a {
    move |m| CliError::at(opt, Some(arg), m)
}

/// An object's type, id and remaining properties.
pub type CheckedObject = (String, String, Vec<(String, Value)>);

/// Checks `-object`/`object-add` arguments the way QEMU's QAPI `ObjectOptions`
/// does before any object exists. `cmdline` selects the command-line wording of
/// unknown parameters. Returns the type, id and remaining properties.
pub fn check_object_args(
    types: &TypeRegistry,
    mut props: Vec<(String, Value)>,
    cmdline: bool,
) -> Result<CheckedObject, String> {
    let mut take = |k: &str| {
        let i = props.iter().position(|(n, _)| n == k)?;
        Some(props.remove(i).1)
    };
    let ty = match take("qom-type") {
        Some(Value::String(s)) => s,
        Some(_) => return Err("Invalid parameter type for 'qom-type', expected: string".into()),
        None => return Err("Parameter 'qom-type' is missing".into()),
    };
    let ok = types
        .get(&ty)
        .is_some_and(|t| !t.is_abstract && types.is_a(&ty, "user-creatable"));
    if !ok {
        return Err(format!("Parameter 'qom-type' does not accept value '{ty}'"));
    }
    let id = match take("id") {
        Some(Value::String(s)) => s,
        Some(_) => return Err("Invalid parameter type for 'id', expected: string".into()),
        None => return Err("Parameter 'id' is missing".into()),
    };
    let known = types.all_props(&ty);
    for (k, v) in &props {
        let Some(p) = known.iter().find(|p| &p.name == k) else {
            return Err(if cmdline {
                format!("Invalid parameter '{k}'")
            } else {
                format!("Parameter '{k}' is unexpected")
            });
        };
        if p.ty == PropType::Size {
            if let Value::String(s) = v {
                if cmdline && parse_size(s).is_none() {
                    return Err(format!("Parameter '{k}' expects a size value"));
                }
            }
        }
        if !cmdline {
            strict_type(k, &p.ty, v)?;
        }
    }
    if types.is_a(&ty, "memory-backend") && !props.iter().any(|(k, _)| k == "size") {
        return Err("Parameter 'size' is missing".into());
    }
    if ty == "memory-backend-file" && !props.iter().any(|(k, _)| k == "mem-path") {
        return Err("Parameter 'mem-path' is missing".into());
    }
    Ok((ty, id, props))
}

/// QMP and JSON arguments are typed: QEMU's QObject input visitor refuses a string
/// where a number or boolean belongs, with these texts.
fn strict_type(k: &str, ty: &PropType, v: &Value) -> Result<(), String> {
    let ok = match ty {
        PropType::Bool => v.is_boolean(),
        PropType::Str | PropType::String | PropType::Link(_) => v.is_string(),
        PropType::I32 | PropType::I64 => v.is_i64(),
        PropType::U8 | PropType::U16 | PropType::U32 | PropType::U64 | PropType::Size => v.is_u64(),
    };
    if ok {
        return Ok(());
    }
    Err(match ty {
        PropType::Bool => format!("Invalid parameter type for '{k}', expected: boolean"),
        PropType::Str | PropType::String | PropType::Link(_) => {
            format!("Invalid parameter type for '{k}', expected: string")
        }
        PropType::I32 | PropType::I64 => format!("Parameter '{k}' expects int64"),
        _ => format!("Parameter '{k}' expects uint64"),
    })
}

fn opts_values(o: &QemuOpts) -> Vec<(String, Value)> {
    o.pairs
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect()
}

/// A string-valued `-M` option; an object where a value belongs is refused.
fn machine_str<'a>(c: &'a Config, key: &str) -> Result<Option<&'a str>, CliError> {
    match c.machine.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(CliError::plain(format!(
            "Parameters '{key}.*' are unexpected"
        ))),
    }
}

/// `-cpu MODEL[,PROP=VALUE...]` as QEMU splits it: the model up to the first comma,
/// then properties separated by commas (empty ones skipped, no `,,` escape), each
/// with `=`.
/// `-cpu` properties, in order.
type CpuProps = Vec<(String, String)>;

fn parse_cpu(spec: &str) -> Result<(&str, CpuProps), CliError> {
    let (model, rest) = spec.split_once(',').unwrap_or((spec, ""));
    let mut props = Vec::new();
    for f in rest.split(',').filter(|f| !f.is_empty()) {
        let Some((k, v)) = f.split_once('=') else {
            return Err(CliError::plain(format!(
                "Expected key=value format, found {f}."
            )));
        };
        props.push((k.to_string(), v.to_string()));
    }
    Ok((model, props))
}

/// The machine type chosen by `-M` (QEMU has no default for aarch64; oxemu's
/// is `none`).
pub fn choose_machine<'a>(
    types: &'a [MachineType],
    c: &Config,
) -> Result<&'a MachineType, CliError> {
    let name = machine_str(c, "type")?.unwrap_or("none");
    find_machine(types, name).ok_or_else(|| {
        CliError::plain("unsupported machine type\nUse -machine help to list supported machines")
    })
}

/// Builds the machine (objects, RAM, CPUs, devices) from the command line.
pub fn build_machine(c: &Config, qtest_accel: bool) -> Result<Vm, CliError> {
    let mts = machine_types();
    let mt = choose_machine(&mts, c)?.clone();
    let memory_backend = machine_str(c, "memory-backend")?.map(String::from);
    if let Some(k) = c
        .machine
        .keys()
        .find(|k| !matches!(k.as_str(), "type" | "accel" | "memory-backend"))
    {
        return Err(CliError::plain(format!(
            "Property '{}.{k}' not found",
            mt.qom_type()
        )));
    }
    let mut globals = Vec::new();
    for g in &c.globals {
        let (driver, property, value) = oxemu_system::cli::parse_global(g, &mut Vec::new())?;
        globals.push(GlobalProp {
            driver,
            property,
            value,
        });
    }
    // -cpu MODEL[,PROP=VALUE...]: the properties become globals on the CPU type.
    let cpu_type = match &c.cpu {
        None => None,
        Some(spec) => {
            let (model, props) = parse_cpu(spec)?;
            let ty = cpu_models()
                .iter()
                .find(|(m, t)| *m == model || *t == model)
                .map(|(_, t)| t.to_string())
                .ok_or_else(|| CliError::plain(format!("unable to find CPU model '{model}'")))?;
            for (k, v) in props {
                globals.push(GlobalProp {
                    driver: ty.clone(),
                    property: k,
                    value: v,
                });
            }
            Some(ty)
        }
    };
    let cpus = match &c.smp {
        None => 1,
        Some(s) => {
            let o = oxemu_opts::keyval::parse_keyval(s, Some("cpus"))
                .map_err(|e| CliError::at("smp", Some(s), e.to_string()))?;
            let Value::Object(mut o) = o else {
                unreachable!("keyval always yields an object")
            };
            let mut take = |k: &str| match o.remove(k) {
                None => Ok(None),
                Some(Value::String(v)) => Ok(Some(v)),
                Some(_) => Err(CliError::plain(format!(
                    "Parameters 'smp.{k}.*' are unexpected"
                ))),
            };
            let n = take("cpus")?.unwrap_or_else(|| "1".into());
            let maxcpus = take("maxcpus")?;
            if let Some(k) = o.keys().next() {
                return Err(CliError::at(
                    "smp",
                    Some(s),
                    format!("Invalid parameter '{k}': oxemu-system-aarch64 takes cpus= and maxcpus= only"),
                ));
            }
            let n: u32 = n
                .parse()
                .map_err(|_| CliError::at("smp", Some(s), "Parameter 'cpus' expects uint64"))?;
            if let Some(m) = maxcpus {
                if m.parse::<u32>().ok() != Some(n) {
                    return Err(CliError::at(
                        "smp",
                        Some(s),
                        "maxcpus must equal cpus: oxemu has no CPU hotplug",
                    ));
                }
            }
            n
        }
    };
    let ram_size = match &c.mem {
        None => None,
        Some(s) => {
            let (s, mut o) = (&s.text, s.opts.clone());
            let v = o.take("size").unwrap_or_default();
            if let Some(k) = o.first_key() {
                return Err(CliError::at(
                    "m",
                    Some(s),
                    format!("Invalid parameter '{k}'"),
                ));
            }
            // A number without suffix is MiB.
            let v = if v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty() {
                format!("{v}M")
            } else {
                v
            };
            Some(parse_size(&v).ok_or_else(|| {
                CliError::at("m", Some(s), "Parameter 'size' expects a non-negative number below 2^64\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.")
            })?)
        }
    };
    let mut m = Machine::new(registry(), &mt, &globals);
    for a in &c.objects {
        let spec = &a.text;
        // QEMU hands -object to the object code as a dictionary with `id` in it; a
        // JSON argument is typed strictly, as QMP's object-add.
        let (props, cmdline) = match &a.json {
            Some(j) => (j.clone().into_iter().collect(), false),
            None => {
                let mut props = opts_values(&a.opts);
                if let Some(id) = &a.opts.id {
                    props.push(("id".into(), Value::String(id.clone())));
                }
                (props, true)
            }
        };
        let (ty, id, props) =
            check_object_args(&m.types, props, cmdline).map_err(located("object", spec))?;
        if m.tree.child(m.objects, &id).is_some() {
            // QemuOpts catches the repeated id; a JSON -object reaches the object tree.
            return Err(if a.json.is_some() {
                CliError::plain(format!(
                    "attempt to add duplicate property '{id}' to object (type 'container')"
                ))
            } else {
                CliError::at(
                    "object",
                    Some(spec),
                    format!("Duplicate ID '{id}' for object"),
                )
            });
        }
        m.object_add(&ty, &id, &props)
            .map_err(|e| CliError::at("object", Some(spec), e.0))?;
    }
    let cfg = MachineConfig {
        ram_size,
        memory_backend,
        cpu_type,
        cpus,
        globals: globals.clone(),
    };
    m.init(&cfg).map_err(CliError::plain)?;
    for a in &c.devices {
        let at = |e: String| CliError::at("device", Some(&a.text), e);
        let (driver, id, props) = match &a.json {
            Some(j) => {
                let mut j = j.clone();
                let mut string = |k: &str| match j.remove(k) {
                    None => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s)),
                    Some(_) => Err(at(format!(
                        "Invalid parameter type for '{k}', expected: string"
                    ))),
                };
                let driver =
                    string("driver")?.ok_or_else(|| at("Parameter 'driver' is missing".into()))?;
                let id = string("id")?;
                (driver, id, j.into_iter().collect())
            }
            None => {
                let mut o = a.opts.clone();
                let driver = o.take("driver").unwrap_or_default();
                (driver, o.id.clone(), opts_values(&o))
            }
        };
        m.device_add(&driver, id.as_deref(), &props)
            .map_err(|e| at(e.0))?;
    }
    m.done = true;
    Ok(Vm {
        machine: Arc::new(Mutex::new(m)),
        state: Mutex::new(if c.stopped {
            RunState::Prelaunch
        } else {
            RunState::Running
        }),
        shutdown: Mutex::new(None),
        shutdown_cv: Condvar::new(),
        chardevs: Mutex::new(Vec::new()),
        name: match &c.name {
            None => None,
            Some(a) => {
                let mut o = a.opts.clone();
                let guest = o.take("guest");
                if let Some(k) = o.first_key() {
                    return Err(CliError::at(
                        "name",
                        Some(&a.text),
                        if matches!(k, "process" | "debug-threads") {
                            format!("{k}= is not supported by oxemu-system-aarch64")
                        } else {
                            format!("Invalid parameter '{k}'")
                        },
                    ));
                }
                guest
            }
        },
        machine_types: mts,
        events: OnceLock::new(),
        qtest_accel,
    })
}

/// `-M help`.
pub fn machines_help() -> String {
    let mut s = String::from("Supported machines are:\n");
    for m in machine_types() {
        if let Some(a) = &m.alias {
            s.push_str(&format!("{a:<20} {} (alias of {})\n", m.desc, m.name));
        }
        s.push_str(&format!("{:<20} {}\n", m.name, m.desc));
    }
    s
}

/// `-cpu help`.
pub fn cpus_help() -> String {
    let mut s = String::from("Available CPUs:\n");
    for (m, _) in cpu_models() {
        s.push_str(&format!("  {m}\n"));
    }
    s
}

/// `-object help`: the user-creatable object types, sorted.
pub fn objects_help() -> String {
    let r = registry();
    let mut names: Vec<&str> = r
        .list(Some("user-creatable"), false)
        .into_iter()
        .map(|t| t.name.as_str())
        .collect();
    names.sort_unstable();
    let mut s = String::from("List of user creatable objects:\n");
    for n in names {
        s.push_str(&format!("  {n}\n"));
    }
    s
}

/// `-device help`.
pub fn devices_help() -> String {
    let r = registry();
    let mut s = String::new();
    let mut cats: Vec<(&str, Vec<String>)> = Vec::new();
    for t in r.list(Some("device"), false) {
        if !t.user_creatable {
            continue;
        }
        let cat = t.category.unwrap_or("Uncategorized devices");
        let line = match &t.description {
            Some(d) => format!("name \"{}\", desc \"{d}\"", t.name),
            None => format!("name \"{}\"", t.name),
        };
        match cats.iter_mut().find(|(c, _)| *c == cat) {
            Some((_, l)) => l.push(line),
            None => cats.push((cat, vec![line])),
        }
    }
    for (c, lines) in cats {
        s.push_str(&format!("{c}:\n"));
        for l in lines {
            s.push_str(&l);
            s.push('\n');
        }
        s.push('\n');
    }
    s
}

/// `-device DRIVER,help`.
pub fn device_props_help(driver: &str) -> Result<String, CliError> {
    let r = registry();
    let t = r
        .get(driver)
        .filter(|t| r.is_a(&t.name, "device") && !t.is_abstract && t.user_creatable)
        .ok_or_else(|| {
            CliError::at(
                "device",
                Some(&format!("{driver},help")),
                format!("'{driver}' is not a valid device model name"),
            )
        })?;
    let mut s = format!("{} options:\n", t.name);
    for p in r.all_props(driver) {
        if matches!(p.name.as_str(), "realized" | "hotplugged" | "hotpluggable") {
            continue;
        }
        let head = format!("{}=<{}>", p.name, p.ty.qom_name());
        match p.default {
            Some(d) => s.push_str(&format!("  {head:<24} - (default: {d})\n")),
            None => s.push_str(&format!("  {head}\n")),
        }
    }
    Ok(s)
}
