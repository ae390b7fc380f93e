//! A QOM-like object model: a type registry and a composition tree of objects.
//!
//! Types have a parent, interfaces and a flag for abstract types; [`TypeRegistry::is_a`]
//! follows both, as `object_dynamic_cast` does. Properties are declared on types with
//! a [`PropType`]; an object gets the properties of its type and all its ancestors.
//! Values are JSON values, as QMP carries them: booleans, numbers, strings, and paths
//! for links.
//!
//! Objects live in a [`ObjectTree`] arena, each the named child of its parent, so
//! every object has a canonical path such as `/machine/peripheral/dev0`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::clock::Clock;
use crate::gpio::Gpios;
use crate::memory::{Memory, RegionId};

/// A property's type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PropType {
    /// `bool`
    Bool,
    /// `uint8`
    U8,
    /// `uint16`
    U16,
    /// `uint32`
    U32,
    /// `uint64`
    U64,
    /// `int32`
    I32,
    /// `int64`
    I64,
    /// `size`: an unsigned byte count that accepts suffixes on the command line.
    Size,
    /// `str` (qdev string properties)
    Str,
    /// `string` (object string properties)
    String,
    /// `link<TYPE>`: the path of another object of that type.
    Link(String),
}

impl PropType {
    /// The type name QOM reports (`qom-list`, `device-list-properties`).
    pub fn qom_name(&self) -> String {
        match self {
            PropType::Bool => "bool".into(),
            PropType::U8 => "uint8".into(),
            PropType::U16 => "uint16".into(),
            PropType::U32 => "uint32".into(),
            PropType::U64 => "uint64".into(),
            PropType::I32 => "int32".into(),
            PropType::I64 => "int64".into(),
            PropType::Size => "size".into(),
            PropType::Str => "str".into(),
            PropType::String => "string".into(),
            PropType::Link(t) => format!("link<{t}>"),
        }
    }

    fn range(&self) -> Option<(i128, i128)> {
        Some(match self {
            PropType::U8 => (0, u8::MAX as i128),
            PropType::U16 => (0, u16::MAX as i128),
            PropType::U32 => (0, u32::MAX as i128),
            PropType::U64 | PropType::Size => (0, u64::MAX as i128),
            PropType::I32 => (i32::MIN as i128, i32::MAX as i128),
            PropType::I64 => (i64::MIN as i128, i64::MAX as i128),
            _ => return None,
        })
    }

    fn qapi_int_name(&self) -> &'static str {
        match self {
            PropType::U8 => "uint8",
            PropType::U16 => "uint16",
            PropType::U32 => "uint32",
            PropType::U64 => "uint64",
            PropType::I32 => "int32",
            PropType::I64 => "int64",
            _ => "size",
        }
    }

    /// Parses a command-line string for property `name` (QEMU's string input
    /// visitor rules and error texts).
    pub fn parse_str(&self, name: &str, s: &str) -> Result<Value, String> {
        match self {
            PropType::Bool => parse_bool(s)
                .map(Value::Bool)
                .ok_or_else(|| format!("Parameter '{name}' expects 'on' or 'off'")),
            PropType::Str | PropType::String | PropType::Link(_) => Ok(Value::String(s.into())),
            PropType::Size => parse_size(s)
                .map(Value::from)
                .ok_or_else(|| format!("Parameter '{name}' expects a non-negative number below 2^64\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.")),
            _ => {
                let v = parse_int(s)
                    .ok_or_else(|| format!("Parameter '{name}' expects an integer"))?;
                self.check_range(name, v)
            }
        }
    }

    fn check_range(&self, name: &str, v: i128) -> Result<Value, String> {
        let (lo, hi) = self.range().unwrap_or((0, u64::MAX as i128));
        if v < lo || v > hi {
            return Err(format!(
                "Parameter '{name}' expects {}",
                self.qapi_int_name()
            ));
        }
        Ok(if v < 0 {
            Value::from(v as i64)
        } else {
            Value::from(v as u64)
        })
    }

    /// Checks a JSON value for property `name` (QMP's input visitor rules).
    pub fn check_json(&self, name: &str, v: &Value) -> Result<Value, String> {
        match self {
            PropType::Bool => v
                .as_bool()
                .map(Value::Bool)
                .ok_or_else(|| format!("Invalid parameter type for '{name}', expected: boolean")),
            PropType::Str | PropType::String | PropType::Link(_) => v
                .as_str()
                .map(|s| Value::String(s.into()))
                .ok_or_else(|| format!("Invalid parameter type for '{name}', expected: string")),
            _ => {
                let n = v
                    .as_u64()
                    .map(|n| n as i128)
                    .or_else(|| v.as_i64().map(|n| n as i128))
                    .ok_or_else(|| {
                        format!("Invalid parameter type for '{name}', expected: integer")
                    })?;
                self.check_range(name, n)
            }
        }
    }
}

/// QEMU's boolean spellings.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "on" | "yes" | "true" | "y" => Some(true),
        "off" | "no" | "false" | "n" => Some(false),
        _ => None,
    }
}

/// An integer in C syntax (decimal, `0x` hex, `0` octal), optionally negative.
pub fn parse_int(s: &str) -> Option<i128> {
    let (neg, t) = match s.strip_prefix('-') {
        Some(t) => (true, t),
        None => (false, s),
    };
    let v = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()?
    } else if t.len() > 1 && t.starts_with('0') {
        u64::from_str_radix(&t[1..], 8).ok()?
    } else {
        t.parse::<u64>().ok()?
    } as i128;
    Some(if neg { -v } else { v })
}

/// A byte count with QEMU's optional suffix (`B`, `k`/`K`, `M`, `G`, `T`, `P`, `E`).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_hexdigit() || c == 'x' || c == 'X' || c == '.'))
        .unwrap_or(s.len());
    let (num, suf) = s.split_at(split);
    let mult: u64 = match suf {
        "" | "B" | "b" => 1,
        "k" | "K" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        "T" | "t" => 1 << 40,
        "P" | "p" => 1 << 50,
        "E" | "e" => 1 << 60,
        _ => return None,
    };
    if num.starts_with("0x") || num.starts_with("0X") {
        if mult != 1 && !suf.is_empty() {
            return None;
        }
        return u64::from_str_radix(&num[2..], 16).ok();
    }
    if num.contains('.') {
        let f: f64 = num.parse().ok()?;
        let v = f * mult as f64;
        return (0.0..18446744073709551616.0)
            .contains(&v)
            .then_some(v as u64);
    }
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// A declared property.
#[derive(Clone, Debug)]
pub struct PropDef {
    /// Name.
    pub name: String,
    /// Type.
    pub ty: PropType,
    /// Default value (`None`: unset, e.g. an empty link).
    pub default: Option<Value>,
    /// Description for `device-list-properties`.
    pub description: Option<String>,
}

impl PropDef {
    /// A property with a default.
    pub fn new(name: &str, ty: PropType, default: Option<Value>) -> Self {
        PropDef {
            name: name.into(),
            ty,
            default,
            description: None,
        }
    }
}

/// Everything a behaviour may use while it is realized or unrealized.
pub struct Context<'a> {
    /// The object.
    pub id: ObjectId,
    /// Its canonical path.
    pub path: String,
    /// Its property values.
    pub props: &'a BTreeMap<String, Value>,
    /// The machine's memory.
    pub memory: &'a mut Memory,
    /// The system memory root.
    pub system_memory: RegionId,
    /// The port I/O root.
    pub system_io: RegionId,
    /// The virtual clock.
    pub clock: &'a Clock,
    /// The object's GPIO lists, to fill at realize.
    pub gpios: &'a mut Gpios,
    /// Regions the object owns; destroyed when it is unrealized.
    pub regions: &'a mut Vec<RegionId>,
}

impl Context<'_> {
    /// Property `name` as an unsigned integer.
    pub fn prop_u64(&self, name: &str) -> Option<u64> {
        self.props.get(name).and_then(|v| v.as_u64())
    }
    /// Property `name` as a boolean.
    pub fn prop_bool(&self, name: &str) -> Option<bool> {
        self.props.get(name).and_then(|v| v.as_bool())
    }
    /// Property `name` as a string.
    pub fn prop_str(&self, name: &str) -> Option<&str> {
        self.props.get(name).and_then(|v| v.as_str())
    }
}

/// What an instance does: realize (or complete, for user-creatable objects),
/// unrealize and reset.
pub trait Behaviour: Send {
    /// Makes the object live: maps its regions, creates its lines.
    fn realize(&mut self, cx: &mut Context<'_>) -> Result<(), String> {
        let _ = cx;
        Ok(())
    }
    /// Undoes `realize` beyond what the tree does itself (its regions are
    /// destroyed and its lines dropped by the caller).
    fn unrealize(&mut self, cx: &mut Context<'_>) {
        let _ = cx;
    }
    /// Device reset.
    fn reset(&mut self) {}
    /// A memory backend's RAM.
    fn ram_block(&self) -> Option<Arc<crate::backend::RamBlock>> {
        None
    }
}

/// Makes a fresh behaviour for an instance.
pub type Factory = Arc<dyn Fn() -> Box<dyn Behaviour> + Send + Sync>;

/// A registered type.
#[derive(Clone)]
pub struct TypeInfo {
    /// Name.
    pub name: String,
    /// Parent type.
    pub parent: Option<String>,
    /// Abstract types have no instances.
    pub is_abstract: bool,
    /// Interfaces it implements.
    pub interfaces: Vec<String>,
    /// Properties it declares (inherited ones come from the parents).
    pub props: Vec<PropDef>,
    /// Instance behaviour.
    pub factory: Option<Factory>,
    /// Description (`-device help`).
    pub description: Option<String>,
    /// Whether `-device`/`device_add` may create it (qdev's `user_creatable`).
    pub user_creatable: bool,
    /// Whether it may be added and removed while the machine runs.
    pub hotpluggable: bool,
    /// `-device help` category.
    pub category: Option<&'static str>,
}

impl TypeInfo {
    /// A concrete type under `parent` with no properties.
    pub fn new(name: &str, parent: &str) -> Self {
        TypeInfo {
            name: name.into(),
            parent: Some(parent.into()),
            is_abstract: false,
            interfaces: Vec::new(),
            props: Vec::new(),
            factory: None,
            description: None,
            user_creatable: true,
            hotpluggable: false,
            category: None,
        }
    }
    /// Marks the type abstract.
    pub fn abstract_(mut self) -> Self {
        self.is_abstract = true;
        self
    }
    /// Adds a property.
    pub fn prop(mut self, p: PropDef) -> Self {
        self.props.push(p);
        self
    }
    /// Adds an interface.
    pub fn interface(mut self, i: &str) -> Self {
        self.interfaces.push(i.into());
        self
    }
    /// Sets the factory.
    pub fn factory(mut self, f: impl Fn() -> Box<dyn Behaviour> + Send + Sync + 'static) -> Self {
        self.factory = Some(Arc::new(f));
        self
    }
}

/// The type registry.
#[derive(Clone, Default)]
pub struct TypeRegistry {
    types: BTreeMap<String, TypeInfo>,
}

/// An object-model error, worded as QEMU words it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QomError(pub String);

impl TypeRegistry {
    /// An empty registry with QOM's roots (`object`, `interface`).
    pub fn new() -> Self {
        let mut r = TypeRegistry::default();
        let mut o = TypeInfo::new("object", "");
        o.parent = None;
        o.is_abstract = false;
        r.types.insert("object".into(), o);
        let mut i = TypeInfo::new("interface", "");
        i.parent = None;
        i.is_abstract = true;
        r.types.insert("interface".into(), i);
        r
    }

    /// Registers `t`; its parent and interfaces must exist.
    pub fn register(&mut self, t: TypeInfo) -> Result<(), QomError> {
        if self.types.contains_key(&t.name) {
            return Err(QomError(format!(
                "Registering '{}' which already exists",
                t.name
            )));
        }
        for p in t.parent.iter().chain(t.interfaces.iter()) {
            if !self.types.contains_key(p) {
                return Err(QomError(format!("unknown type '{p}' for '{}'", t.name)));
            }
        }
        self.types.insert(t.name.clone(), t);
        Ok(())
    }

    /// Type `name`.
    pub fn get(&self, name: &str) -> Option<&TypeInfo> {
        self.types.get(name)
    }

    /// `name` and its ancestors, nearest first.
    pub fn ancestors(&self, name: &str) -> Vec<&TypeInfo> {
        let mut out = Vec::new();
        let mut cur = self.types.get(name);
        while let Some(t) = cur {
            if out.len() > 64 {
                break;
            }
            out.push(t);
            cur = t.parent.as_deref().and_then(|p| self.types.get(p));
        }
        out
    }

    /// Whether `name` is `ancestor` or derives from or implements it.
    pub fn is_a(&self, name: &str, ancestor: &str) -> bool {
        self.ancestors(name).iter().any(|t| {
            t.name == ancestor
                || t.interfaces
                    .iter()
                    .any(|i| i == ancestor || (i != name && self.is_a(i, ancestor)))
        })
    }

    /// Every property of `name`, the root type's first.
    pub fn all_props(&self, name: &str) -> Vec<PropDef> {
        let mut out: Vec<PropDef> = Vec::new();
        for t in self.ancestors(name).into_iter().rev() {
            for p in &t.props {
                out.retain(|q| q.name != p.name);
                out.push(p.clone());
            }
        }
        out
    }

    /// Property `prop` of `name`.
    pub fn find_prop(&self, name: &str, prop: &str) -> Option<PropDef> {
        self.all_props(name).into_iter().find(|p| p.name == prop)
    }

    /// Types that are `implements` (all when `None`), abstract ones only if asked.
    pub fn list(&self, implements: Option<&str>, include_abstract: bool) -> Vec<&TypeInfo> {
        self.types
            .values()
            .filter(|t| include_abstract || !t.is_abstract)
            .filter(|t| implements.is_none_or(|i| self.is_a(&t.name, i)))
            .collect()
    }
}

/// Index of an object in its tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub usize);

/// One object.
pub struct Object {
    /// Its type.
    pub type_name: String,
    /// Its parent and its name there.
    pub parent: Option<(ObjectId, String)>,
    /// Children in insertion order.
    pub children: Vec<(String, ObjectId)>,
    /// Property values.
    pub props: BTreeMap<String, Value>,
    /// Whether realized (devices) or completed (user-creatable objects).
    pub realized: bool,
    /// Instance behaviour.
    pub behaviour: Option<Box<dyn Behaviour>>,
    /// GPIO lists.
    pub gpios: Gpios,
    /// Regions owned.
    pub regions: Vec<RegionId>,
}

/// The composition tree.
pub struct ObjectTree {
    objs: Vec<Option<Object>>,
}

impl Default for ObjectTree {
    fn default() -> Self {
        Self::new()
    }
}

impl ObjectTree {
    /// A tree holding only the root container `/`.
    pub fn new() -> Self {
        ObjectTree {
            objs: vec![Some(Object::bare("container"))],
        }
    }

    /// The root `/`.
    pub fn root(&self) -> ObjectId {
        ObjectId(0)
    }

    /// Object `id`.
    pub fn get(&self, id: ObjectId) -> Option<&Object> {
        self.objs.get(id.0).and_then(|o| o.as_ref())
    }

    /// Object `id`, mutably.
    pub fn get_mut(&mut self, id: ObjectId) -> Option<&mut Object> {
        self.objs.get_mut(id.0).and_then(|o| o.as_mut())
    }

    /// Adds `obj` as child `name` of `parent`. A name ending in `[*]` takes the
    /// lowest free index, as `object_property_add_child` does.
    pub fn add_child(
        &mut self,
        parent: ObjectId,
        name: &str,
        mut obj: Object,
    ) -> Result<ObjectId, QomError> {
        let p = self
            .get(parent)
            .ok_or_else(|| QomError("no such parent object".into()))?;
        let name = if let Some(stem) = name.strip_suffix("[*]") {
            let mut i = 0;
            loop {
                let n = format!("{stem}[{i}]");
                if !p.children.iter().any(|(c, _)| *c == n) {
                    break n;
                }
                i += 1;
            }
        } else {
            if p.children.iter().any(|(c, _)| c == name) || name == "type" {
                return Err(QomError(format!(
                    "attempt to add duplicate property '{name}' to object (type '{}')",
                    p.type_name
                )));
            }
            name.to_string()
        };
        obj.parent = Some((parent, name.clone()));
        self.objs.push(Some(obj));
        let id = ObjectId(self.objs.len() - 1);
        if let Some(p) = self.get_mut(parent) {
            p.children.push((name, id));
        }
        Ok(id)
    }

    /// Adds a container child (`container_get`), or returns the existing one.
    pub fn container(&mut self, parent: ObjectId, name: &str) -> ObjectId {
        if let Some(c) = self.child(parent, name) {
            return c;
        }
        self.add_child(parent, name, Object::bare("container"))
            .unwrap_or(parent)
    }

    /// Child `name` of `id`.
    pub fn child(&self, id: ObjectId, name: &str) -> Option<ObjectId> {
        self.get(id)?
            .children
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| *c)
    }

    /// The canonical path of `id`.
    pub fn path(&self, id: ObjectId) -> String {
        let mut parts = Vec::new();
        let mut cur = id;
        while let Some((p, n)) = self.get(cur).and_then(|o| o.parent.clone()) {
            parts.push(n);
            cur = p;
            if parts.len() > 256 {
                break;
            }
        }
        if parts.is_empty() {
            return "/".into();
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    /// Every live object id.
    pub fn ids(&self) -> impl Iterator<Item = ObjectId> + '_ {
        self.objs
            .iter()
            .enumerate()
            .filter(|(_, o)| o.is_some())
            .map(|(i, _)| ObjectId(i))
    }

    /// Resolves an absolute path, or a partial one that names exactly one object
    /// (`object_resolve_path`). Returns `Err(true)` for an ambiguous partial path.
    pub fn resolve(&self, path: &str) -> Result<ObjectId, bool> {
        if let Some(rest) = path.strip_prefix('/') {
            let mut cur = self.root();
            for part in rest.split('/').filter(|p| !p.is_empty()) {
                cur = self.child(cur, part).ok_or(false)?;
            }
            return Ok(cur);
        }
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        if parts.is_empty() {
            return Err(false);
        }
        let mut found = None;
        for id in self.ids() {
            // Walk up matching the parts from the end.
            let mut cur = id;
            let mut ok = true;
            for part in parts.iter().rev() {
                match self.get(cur).and_then(|o| o.parent.clone()) {
                    Some((p, n)) if n == *part => cur = p,
                    _ => {
                        ok = false;
                        break;
                    }
                }
            }
            if ok {
                if found.is_some() {
                    return Err(true);
                }
                found = Some(id);
            }
        }
        found.ok_or(false)
    }

    /// Detaches `id` and its descendants from the tree, returning them (children
    /// first) so the caller can unrealize them.
    pub fn remove(&mut self, id: ObjectId) -> Vec<(ObjectId, Object)> {
        let mut order = Vec::new();
        self.collect(id, &mut order);
        if let Some((p, n)) = self.get(id).and_then(|o| o.parent.clone()) {
            if let Some(po) = self.get_mut(p) {
                po.children.retain(|(c, _)| *c != n);
            }
        }
        order
            .into_iter()
            .filter_map(|i| {
                self.objs
                    .get_mut(i.0)
                    .and_then(|o| o.take())
                    .map(|o| (i, o))
            })
            .collect()
    }

    fn collect(&self, id: ObjectId, out: &mut Vec<ObjectId>) {
        if let Some(o) = self.get(id) {
            for (_, c) in &o.children {
                self.collect(*c, out);
            }
            out.push(id);
        }
    }

    /// `info qom-tree`: the tree under `id` with each object's type.
    pub fn print_tree(&self, id: ObjectId, out: &mut String) {
        self.print_at(id, 0, out);
    }

    fn print_at(&self, id: ObjectId, level: usize, out: &mut String) {
        let Some(o) = self.get(id) else { return };
        let name = o.parent.as_ref().map_or("", |(_, n)| n.as_str());
        out.push_str(&format!(
            "{}/{name} ({})\n",
            "  ".repeat(level),
            o.type_name
        ));
        let mut kids = o.children.clone();
        kids.sort();
        for (_, c) in kids {
            self.print_at(c, level + 1, out);
        }
    }
}

impl Object {
    /// An object of `type_name` with no properties, not in any tree.
    pub fn bare(type_name: &str) -> Self {
        Object {
            type_name: type_name.into(),
            parent: None,
            children: Vec::new(),
            props: BTreeMap::new(),
            realized: false,
            behaviour: None,
            gpios: Gpios::default(),
            regions: Vec::new(),
        }
    }

    /// A new instance of `type_name` with its defaults; refuses abstract types.
    pub fn instantiate(reg: &TypeRegistry, type_name: &str) -> Result<Self, QomError> {
        let t = reg
            .get(type_name)
            .ok_or_else(|| QomError(format!("unknown type '{type_name}'")))?;
        if t.is_abstract {
            return Err(QomError(format!("object type '{type_name}' is abstract")));
        }
        let mut o = Object::bare(type_name);
        for p in reg.all_props(type_name) {
            if let Some(d) = p.default {
                o.props.insert(p.name, d);
            }
        }
        o.behaviour = reg
            .ancestors(type_name)
            .iter()
            .find_map(|t| t.factory.clone())
            .map(|f| f());
        Ok(o)
    }
}

#[cfg(test)]
#[path = "qom_tests.rs"]
mod tests;
