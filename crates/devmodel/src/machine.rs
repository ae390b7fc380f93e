//! Machines: machine types with versions and aliases, and a live [`Machine`] with
//! its composition tree, memory, clock, CPUs, devices and objects.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::clock::Clock;
use crate::memory::{Memory, RegionId};
use crate::qom::{Context, Object, ObjectId, ObjectTree, QomError, TypeInfo, TypeRegistry};

/// A `-global DRIVER.PROP=VALUE` or a machine version's compat property.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobalProp {
    /// Type it applies to (and to the types derived from it).
    pub driver: String,
    /// Property name.
    pub property: String,
    /// Value, in command-line syntax.
    pub value: String,
}

impl GlobalProp {
    /// Parses `DRIVER.PROP=VALUE` (the `-global` short form).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| format!("Invalid parameter '{s}'"))?;
        let (d, p) = k
            .rsplit_once('.')
            .filter(|(d, p)| !d.is_empty() && !p.is_empty())
            .ok_or_else(|| format!("Invalid parameter '{k}'"))?;
        Ok(GlobalProp {
            driver: d.into(),
            property: p.into(),
            value: v.into(),
        })
    }
}

/// What a machine type does when the machine is built.
pub type BoardInit = fn(&mut Machine) -> Result<(), String>;

/// A machine type (QEMU's `MachineClass`).
#[derive(Clone)]
pub struct MachineType {
    /// Name (`-M NAME`).
    pub name: String,
    /// Another name for it (versioned types' unversioned alias).
    pub alias: Option<String>,
    /// Description for `-M help`.
    pub desc: String,
    /// Whether `-M` defaults to it.
    pub is_default: bool,
    /// Largest `-smp`.
    pub max_cpus: u32,
    /// CPU type without `-cpu`.
    pub default_cpu_type: Option<String>,
    /// Id of the RAM backend `-m` creates.
    pub default_ram_id: Option<String>,
    /// RAM without `-m`.
    pub default_ram_size: u64,
    /// `query-machines` `hotpluggable-cpus`.
    pub hotpluggable_cpus: bool,
    /// `query-machines` `numa-mem-supported`.
    pub numa_mem_supported: bool,
    /// `query-machines` `deprecated`.
    pub deprecated: bool,
    /// Globals this version sets before the user's `-global`s.
    pub compat: Vec<GlobalProp>,
    /// Board construction.
    pub init: BoardInit,
}

impl MachineType {
    /// `query-machines` entry, with QEMU 7.2's members only.
    pub fn to_json(&self) -> Value {
        let mut m = json!({
            "name": self.name,
            "cpu-max": self.max_cpus,
            "hotpluggable-cpus": self.hotpluggable_cpus,
            "numa-mem-supported": self.numa_mem_supported,
            "deprecated": self.deprecated,
        });
        if let Some(a) = &self.alias {
            m["alias"] = json!(a);
        }
        if self.is_default {
            m["is-default"] = json!(true);
        }
        if let Some(c) = &self.default_cpu_type {
            m["default-cpu-type"] = json!(c);
        }
        if let Some(r) = &self.default_ram_id {
            m["default-ram-id"] = json!(r);
        }
        m
    }

    /// The QOM type name of machines of this type.
    pub fn qom_type(&self) -> String {
        format!("{}-machine", self.name)
    }
}

/// Finds a machine type by name or alias.
pub fn find_machine<'a>(types: &'a [MachineType], name: &str) -> Option<&'a MachineType> {
    types
        .iter()
        .find(|m| m.name == name)
        .or_else(|| types.iter().find(|m| m.alias.as_deref() == Some(name)))
}

/// How to build a machine (the parts of the command line that shape it).
#[derive(Clone, Debug, Default)]
pub struct MachineConfig {
    /// `-m` in bytes (None: the type's default).
    pub ram_size: Option<u64>,
    /// `-machine memory-backend=ID`.
    pub memory_backend: Option<String>,
    /// `-cpu` type name.
    pub cpu_type: Option<String>,
    /// `-smp` CPUs.
    pub cpus: u32,
    /// `-global`s, in order.
    pub globals: Vec<GlobalProp>,
}

/// A machine being built or running.
pub struct Machine {
    /// Types.
    pub types: TypeRegistry,
    /// The composition tree.
    pub tree: ObjectTree,
    /// Memory regions and address spaces.
    pub memory: Memory,
    /// Virtual time.
    pub clock: Clock,
    /// System memory root (`system`).
    pub system_memory: RegionId,
    /// Port I/O root (`io`).
    pub system_io: RegionId,
    /// The machine type.
    pub machine_type: MachineType,
    /// `/machine`.
    pub machine_obj: ObjectId,
    /// `/objects`.
    pub objects: ObjectId,
    /// Compat properties then `-global`s.
    pub globals: Vec<GlobalProp>,
    /// CPUs in index order.
    pub cpus: Vec<ObjectId>,
    /// The RAM region, if any.
    pub ram: Option<RegionId>,
    /// Whether machine creation is finished (later devices are hotplugged).
    pub done: bool,
}

fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic())
        && c.all(|x| x.is_ascii_alphanumeric() || "-._".contains(x))
}

const ID_ERR: &str = "Parameter 'id' expects an identifier\nIdentifiers consist of letters, digits, '-', '.', '_', starting with a letter.";

impl Machine {
    /// Builds the skeleton of a machine of type `mt` (no RAM or CPUs yet); call
    /// [`Machine::init`] once `-object`s exist.
    pub fn new(mut types: TypeRegistry, mt: &MachineType, globals: &[GlobalProp]) -> Self {
        if types.get(&mt.qom_type()).is_none() {
            let mut t = TypeInfo::new(&mt.qom_type(), "machine");
            t.user_creatable = false;
            if types.get("machine").is_none() {
                let mut m = TypeInfo::new("machine", "object").abstract_();
                m.user_creatable = false;
                let _ = types.register(m);
            }
            let _ = types.register(t);
        }
        let mut tree = ObjectTree::new();
        let root = tree.root();
        let machine_obj = tree
            .add_child(root, "machine", Object::bare(&mt.qom_type()))
            .expect("fresh tree");
        let objects = tree.container(root, "objects");
        tree.container(machine_obj, "peripheral");
        tree.container(machine_obj, "peripheral-anon");
        let un = tree.container(machine_obj, "unattached");
        let mut memory = Memory::new();
        let system_memory = memory.add_container("system", 1u128 << 64);
        // As QEMU's `io` region: an I/O region whose unassigned ports read all ones.
        let system_io = memory.add_io(
            "io",
            0x10000,
            Arc::new(std::sync::Mutex::new(UnassignedIo)),
            crate::memory::AccessSizes::default(),
            crate::memory::AccessSizes::default(),
        );
        memory.add_address_space("memory", system_memory);
        memory.add_address_space("I/O", system_io);
        let _ = tree.add_child(un, "io[*]", Object::bare("memory-region"));
        let _ = tree.add_child(un, "sysbus", Object::bare("System"));
        let _ = tree.add_child(un, "system[*]", Object::bare("memory-region"));
        let mut all = mt.compat.clone();
        all.extend_from_slice(globals);
        Machine {
            types,
            tree,
            memory,
            clock: Clock::new(),
            system_memory,
            system_io,
            machine_type: mt.clone(),
            machine_obj,
            objects,
            globals: all,
            cpus: Vec::new(),
            ram: None,
            done: false,
        }
    }

    /// Creates RAM and CPUs and runs the board's init.
    pub fn init(&mut self, cfg: &MachineConfig) -> Result<(), String> {
        let mt = self.machine_type.clone();
        let size = cfg.ram_size.unwrap_or(mt.default_ram_size);
        let backend = match (&cfg.memory_backend, size) {
            (Some(id), _) => {
                let b = self
                    .tree
                    .child(self.objects, id)
                    .ok_or_else(|| format!("Memory backend '{id}' not found"))?;
                Some((id.clone(), b))
            }
            (None, 0) => None,
            (None, sz) => {
                let id = mt
                    .default_ram_id
                    .clone()
                    .ok_or_else(|| format!("machine type '{}' has no RAM", mt.name))?;
                let b = self
                    .object_add("memory-backend-ram", &id, &[("size".into(), json!(sz))])
                    .map_err(|e| format!("cannot set up guest memory '{id}': {}", e.0))?;
                Some((id, b))
            }
        };
        if let Some((id, b)) = backend {
            let block = self
                .tree
                .get(b)
                .and_then(|o| o.behaviour.as_ref())
                .and_then(|bh| bh.ram_block())
                .ok_or_else(|| format!("'{id}' is not a memory backend"))?;
            if let Some(sz) = cfg.ram_size.filter(|_| cfg.memory_backend.is_some()) {
                if sz != block.len() {
                    return Err(format!(
                        "Backend memory size is not the same as -m: 0x{:x} != 0x{sz:x}",
                        block.len()
                    ));
                }
            }
            let len = block.len();
            let r = self.memory.add_ram(&id, block, 0, len);
            self.ram = Some(r);
        }
        let cpus = cfg.cpus.max(1);
        if cpus > mt.max_cpus {
            return Err(format!(
                "Invalid SMP CPUs {cpus}. The max CPUs supported by machine '{}' is {}",
                mt.name, mt.max_cpus
            ));
        }
        let cpu_type = cfg.cpu_type.clone().or(mt.default_cpu_type.clone());
        if let Some(ct) = cpu_type {
            for i in 0..cpus {
                self.add_cpu(&ct, i)?;
            }
        }
        (mt.init)(self)?;
        Ok(())
    }

    fn add_cpu(&mut self, ty: &str, index: u32) -> Result<(), String> {
        let mut o = Object::instantiate(&self.types, ty).map_err(|e| e.0)?;
        o.props.insert("mp-affinity".into(), json!(index as u64));
        self.apply_globals(&mut o).map_err(|e| e.0)?;
        let un = self.tree.container(self.machine_obj, "unattached");
        let id = self.tree.add_child(un, "device[*]", o).map_err(|e| e.0)?;
        self.realize(id).map_err(|e| e.0)?;
        // ARM CPUs have four unnamed inputs (IRQ, FIQ, VIRQ, VFIQ).
        for _ in 0..4 {
            let _ = self
                .tree
                .add_child(id, "unnamed-gpio-in[*]", Object::bare("irq"));
        }
        let el3 = self
            .tree
            .get(id)
            .and_then(|o| o.props.get("has_el3"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        if el3 {
            self.memory
                .add_address_space(&format!("cpu-secure-memory-{index}"), self.system_memory);
        }
        self.memory
            .add_address_space(&format!("cpu-memory-{index}"), self.system_memory);
        self.cpus.push(id);
        Ok(())
    }

    /// Maps the RAM region at `addr` of system memory (boards call this).
    pub fn map_ram(&mut self, addr: u64) -> Result<(), String> {
        if let Some(r) = self.ram {
            self.memory
                .add_subregion(self.system_memory, addr, r, 0)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Sets the global and compat defaults that apply to `o`'s type.
    fn apply_globals(&self, o: &mut Object) -> Result<(), QomError> {
        for g in &self.globals {
            if !self.types.is_a(&o.type_name, &g.driver) {
                continue;
            }
            let p = self
                .types
                .find_prop(&o.type_name, &g.property)
                .ok_or_else(|| {
                    QomError(format!(
                        "can't apply global {}.{}={}: Property '{}.{}' not found",
                        g.driver, g.property, g.value, o.type_name, g.property
                    ))
                })?;
            let v = p.ty.parse_str(&g.property, &g.value).map_err(|e| {
                QomError(format!(
                    "can't apply global {}.{}={}: {e}",
                    g.driver, g.property, g.value
                ))
            })?;
            o.props.insert(g.property.clone(), v);
        }
        Ok(())
    }

    /// Sets property values on an unrealized object: strings are parsed in
    /// command-line syntax, other JSON values checked as QMP values.
    fn set_props(&self, o: &mut Object, props: &[(String, Value)]) -> Result<(), QomError> {
        for (k, v) in props {
            let p = self
                .types
                .find_prop(&o.type_name, k)
                .filter(|p| !matches!(p.name.as_str(), "realized" | "hotplugged" | "hotpluggable"))
                .ok_or_else(|| QomError(format!("Property '{}.{k}' not found", o.type_name)))?;
            let val = match v {
                Value::String(s) => p.ty.parse_str(k, s),
                other => p.ty.check_json(k, other),
            }
            .map_err(QomError)?;
            o.props.insert(k.clone(), val);
        }
        Ok(())
    }

    fn context_run<R>(
        &mut self,
        id: ObjectId,
        f: impl FnOnce(&mut dyn crate::qom::Behaviour, &mut Context<'_>) -> R,
    ) -> Option<R> {
        let path = self.tree.path(id);
        let o = self.tree.get_mut(id)?;
        let mut b = o.behaviour.take()?;
        let props = o.props.clone();
        let mut gpios = std::mem::take(&mut o.gpios);
        let mut regions = std::mem::take(&mut o.regions);
        let r = {
            let mut cx = Context {
                id,
                path,
                props: &props,
                memory: &mut self.memory,
                system_memory: self.system_memory,
                system_io: self.system_io,
                clock: &self.clock,
                gpios: &mut gpios,
                regions: &mut regions,
            };
            f(b.as_mut(), &mut cx)
        };
        let o = self.tree.get_mut(id)?;
        o.behaviour = Some(b);
        o.gpios = gpios;
        o.regions = regions;
        Some(r)
    }

    /// Realizes (or completes) object `id`.
    pub fn realize(&mut self, id: ObjectId) -> Result<(), QomError> {
        let r = self
            .context_run(id, |b, cx| b.realize(cx))
            .unwrap_or(Ok(()));
        if let Err(e) = r {
            self.drop_regions(id);
            return Err(QomError(e));
        }
        if let Some(o) = self.tree.get_mut(id) {
            o.realized = true;
            if o.props.contains_key("realized") {
                o.props.insert("realized".into(), json!(true));
            }
        }
        Ok(())
    }

    fn drop_regions(&mut self, id: ObjectId) {
        let regions = self
            .tree
            .get_mut(id)
            .map(|o| std::mem::take(&mut o.regions))
            .unwrap_or_default();
        for r in regions {
            let _ = self.memory.destroy(r);
        }
    }

    /// Adds a device (`-device`, `device_add`): type checks, globals, properties,
    /// placement in the tree and realize. Returns its id in the tree.
    pub fn device_add(
        &mut self,
        driver: &str,
        id: Option<&str>,
        props: &[(String, Value)],
    ) -> Result<ObjectId, QomError> {
        let t = self
            .types
            .get(driver)
            .filter(|t| self.types.is_a(&t.name, "device"))
            .ok_or_else(|| QomError(format!("'{driver}' is not a valid device model name")))?;
        if t.is_abstract || !t.user_creatable {
            return Err(QomError(format!(
                "'{driver}' is not a valid device model name"
            )));
        }
        if self.done && !t.hotpluggable {
            return Err(QomError(format!(
                "Device '{driver}' can not be hotplugged on this machine"
            )));
        }
        if let Some(i) = id {
            if !is_identifier(i) {
                return Err(QomError(ID_ERR.into()));
            }
            let per = self.tree.container(self.machine_obj, "peripheral");
            if self.tree.child(per, i).is_some() {
                return Err(QomError(format!("Duplicate device ID '{i}'")));
            }
        }
        let mut o = Object::instantiate(&self.types, driver)?;
        self.apply_globals(&mut o)?;
        self.set_props(&mut o, props)?;
        if self.done {
            o.props.insert("hotplugged".into(), json!(true));
        }
        let (parent, name) = match id {
            Some(i) => (
                self.tree.container(self.machine_obj, "peripheral"),
                i.to_string(),
            ),
            None => (
                self.tree.container(self.machine_obj, "peripheral-anon"),
                "device[*]".to_string(),
            ),
        };
        let oid = self.tree.add_child(parent, &name, o)?;
        if let Err(e) = self.realize(oid) {
            self.tree.remove(oid);
            return Err(e);
        }
        Ok(oid)
    }

    /// Unrealizes and removes the device at `id` and everything under it.
    pub fn device_del(&mut self, id: ObjectId) -> Result<(), QomError> {
        let tn = self
            .tree
            .get(id)
            .map(|o| o.type_name.clone())
            .unwrap_or_default();
        if !self.types.get(&tn).is_some_and(|t| t.hotpluggable) {
            return Err(QomError(format!(
                "Device '{tn}' does not support hotplugging"
            )));
        }
        self.unrealize_tree(id);
        Ok(())
    }

    fn unrealize_tree(&mut self, id: ObjectId) {
        let mut order = Vec::new();
        fn walk(t: &ObjectTree, id: ObjectId, out: &mut Vec<ObjectId>) {
            if let Some(o) = t.get(id) {
                for (_, c) in &o.children {
                    walk(t, *c, out);
                }
                out.push(id);
            }
        }
        walk(&self.tree, id, &mut order);
        for i in order {
            if self.tree.get(i).is_some_and(|o| o.realized) {
                self.context_run(i, |b, cx| b.unrealize(cx));
            }
            self.drop_regions(i);
        }
        self.tree.remove(id);
    }

    /// Creates a user-creatable object at `/objects/ID` (`-object`, `object-add`).
    pub fn object_add(
        &mut self,
        qom_type: &str,
        id: &str,
        props: &[(String, Value)],
    ) -> Result<ObjectId, QomError> {
        let t = self
            .types
            .get(qom_type)
            .ok_or_else(|| QomError(format!("invalid object type: {qom_type}")))?;
        if !self.types.is_a(qom_type, "user-creatable") {
            return Err(QomError(format!(
                "object type '{qom_type}' isn't supported by object-add"
            )));
        }
        if t.is_abstract {
            return Err(QomError(format!("object type '{qom_type}' is abstract")));
        }
        if !is_identifier(id) {
            return Err(QomError(format!("'{id}' is not a valid identifier")));
        }
        let mut o = Object::instantiate(&self.types, qom_type)?;
        self.apply_globals(&mut o)?;
        self.set_props(&mut o, props)?;
        let oid = self.tree.add_child(self.objects, id, o)?;
        if let Err(e) = self.realize(oid) {
            self.tree.remove(oid);
            return Err(e);
        }
        Ok(oid)
    }

    /// Deletes `/objects/ID`.
    pub fn object_del(&mut self, id: &str) -> Result<(), QomError> {
        let oid = self
            .tree
            .child(self.objects, id)
            .ok_or_else(|| QomError(format!("object '{id}' not found")))?;
        let used = self.memory.address_spaces().iter().any(|_| false)
            || self.ram.is_some_and(|r| {
                self.machine_type.default_ram_id.as_deref() == Some(id)
                    || self.memory.region(r).is_some_and(|m| m.name == id)
            });
        if used {
            return Err(QomError(format!(
                "object '{id}' is in use, can not be deleted"
            )));
        }
        self.unrealize_tree(oid);
        Ok(())
    }

    /// Resets every realized device (`system_reset`).
    pub fn reset(&mut self) {
        let ids: Vec<ObjectId> = self.tree.ids().collect();
        for id in ids {
            let dev = self
                .tree
                .get(id)
                .is_some_and(|o| o.realized && self.types.is_a(&o.type_name, "device"));
            if dev {
                if let Some(b) = self.tree.get_mut(id).and_then(|o| o.behaviour.as_mut()) {
                    b.reset();
                }
            }
        }
    }

    /// Reads `buf.len()` bytes of system memory.
    pub fn read_memory(&self, addr: u64, buf: &mut [u8]) {
        self.memory.read(self.system_memory, addr, buf);
    }

    /// Writes system memory.
    pub fn write_memory(&self, addr: u64, buf: &[u8]) {
        self.memory.write(self.system_memory, addr, buf);
    }

    /// Reads port I/O space.
    pub fn read_io(&self, addr: u64, buf: &mut [u8]) {
        self.memory.read(self.system_io, addr, buf);
    }

    /// Writes port I/O space.
    pub fn write_io(&self, addr: u64, buf: &[u8]) {
        self.memory.write(self.system_io, addr, buf);
    }

    /// The shared type registry (for listings).
    pub fn registry(&self) -> &TypeRegistry {
        &self.types
    }

    /// `info qtree`: the system bus and its devices.
    pub fn info_qtree(&self) -> String {
        let mut out = String::from("bus: main-system-bus\n  type System\n");
        let mut devs: Vec<ObjectId> = self
            .tree
            .ids()
            .filter(|i| {
                self.tree
                    .get(*i)
                    .is_some_and(|o| o.realized && self.types.is_a(&o.type_name, "sys-bus-device"))
            })
            .collect();
        devs.reverse(); // QEMU lists the most recently plugged first.
        for d in devs {
            let Some(o) = self.tree.get(d) else { continue };
            let id = o
                .parent
                .as_ref()
                .filter(|(p, _)| self.tree.path(*p) == "/machine/peripheral")
                .map(|(_, n)| n.as_str());
            out.push_str(&format!(
                "  dev: {}, id \"{}\"\n",
                o.type_name,
                id.unwrap_or("")
            ));
            for list in &o.gpios.inputs {
                if list.name.is_none() {
                    out.push_str(&format!("    gpio-in \"\" {}\n", list.lines.len()));
                }
            }
            for list in &o.gpios.outputs {
                if list.name.is_none() {
                    out.push_str(&format!("    gpio-out \"\" {}\n", list.lines.len()));
                }
            }
            for p in self.types.all_props(&o.type_name) {
                if matches!(p.name.as_str(), "realized" | "hotplugged" | "hotpluggable") {
                    continue;
                }
                out.push_str(&format!(
                    "    {} = {}\n",
                    p.name,
                    crate::types::qtree_value(&p.ty, o.props.get(&p.name))
                ));
            }
            for r in &o.regions {
                let Some(reg) = self.memory.region(*r) else {
                    continue;
                };
                if let Some(pl) = reg.placement.filter(|p| p.container == self.system_memory) {
                    out.push_str(&format!(
                        "    mmio {:016x}/{:016x}\n",
                        pl.addr, reg.size as u64
                    ));
                }
            }
        }
        out
    }

    /// `info qom-tree` from `/machine` (or `path`).
    pub fn info_qom_tree(&self, path: Option<&str>) -> Result<String, String> {
        let id = match path {
            None => self.machine_obj,
            Some(p) => self
                .tree
                .resolve(p)
                .map_err(|_| format!("Path '{p}' could not be resolved"))?,
        };
        let mut out = String::new();
        let path = self.tree.path(id);
        let Some(o) = self.tree.get(id) else {
            return Ok(out);
        };
        out.push_str(&format!("{path} ({})\n", o.type_name));
        let mut kids = o.children.clone();
        kids.sort();
        for (_, c) in kids {
            let mut s = String::new();
            self.tree.print_tree(c, &mut s);
            for l in s.lines() {
                out.push_str("  ");
                out.push_str(l);
                out.push('\n');
            }
        }
        Ok(out)
    }
}

/// Port I/O nothing claims: reads return all ones, writes vanish (QEMU's
/// `unassigned_io_ops`).
struct UnassignedIo;

impl crate::memory::IoOps for UnassignedIo {
    fn read(&mut self, _offset: u64, _size: u32) -> u64 {
        u64::MAX
    }
    fn write(&mut self, _offset: u64, _value: u64, _size: u32) {}
}

/// Shared, thread-safe handle the program uses around a machine (the "big lock").
pub type SharedMachine = Arc<std::sync::Mutex<Machine>>;

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
