//! A QAPI schema in QEMU's introspection format (`SchemaInfo`), with readable type
//! names: the one description of a program's commands, their argument and return
//! types and its events, from which `query-qmp-schema`, `query-commands` and the
//! server's command table come, and against which arguments are checked for members
//! the schema does not declare.
//!
//! Source files use QEMU's `SchemaInfo` entries with these conventions: array types
//! are written `[T]` and need no entry of their own; enums give only `values`;
//! a union is an `object` with `tag` and `variants`; tag values without a variant
//! have no members beyond the base. [`Schema::introspect`] turns this into what
//! QEMU's `query-qmp-schema` answers: only the entities reachable from commands and
//! events, non-builtin type names masked as decimal numbers in order of first use,
//! array entries spelled out, enums with both `members` and `values`.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{json, Map, Value};

use crate::QmpError;

/// The schema of the QMP server's own commands (`qmp_capabilities`, `query-version`,
/// `query-commands`, `query-qmp-schema`) and the builtin types.
pub const BUILTIN_SCHEMA: &str = include_str!("schema.json");

/// Builtin type names, never masked.
const BUILTINS: &[&str] = &["str", "int", "number", "bool", "null", "any"];

/// A parsed schema.
#[derive(Clone, Debug)]
pub struct Schema {
    entries: Vec<Value>,
    index: HashMap<String, usize>,
}

fn name_of(e: &Value) -> &str {
    e.get("name").and_then(Value::as_str).unwrap_or("")
}

fn str_field<'a>(e: &'a Value, k: &str) -> Option<&'a str> {
    e.get(k).and_then(Value::as_str)
}

impl Schema {
    /// Parses one or more source texts (JSON arrays of entries) into one schema.
    /// Fails on malformed JSON, a duplicate name or an entry without a name.
    pub fn parse(sources: &[&str]) -> Result<Self, String> {
        let mut entries = Vec::new();
        let mut index = HashMap::new();
        for (i, src) in sources.iter().enumerate() {
            let v: Value =
                serde_json::from_str(src).map_err(|e| format!("schema source {i}: {e}"))?;
            let Value::Array(list) = v else {
                return Err(format!("schema source {i}: not a JSON array"));
            };
            for e in list {
                let name = name_of(&e).to_string();
                if name.is_empty() {
                    return Err(format!("schema source {i}: entry without a name: {e}"));
                }
                if index.insert(name.clone(), entries.len()).is_some() {
                    return Err(format!("schema: '{name}' defined twice"));
                }
                entries.push(e);
            }
        }
        let s = Schema { entries, index };
        s.check()?;
        Ok(s)
    }

    /// The entry named `name` (a command, event or type).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.index.get(name).map(|&i| &self.entries[i])
    }

    fn meta(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|e| str_field(e, "meta-type"))
    }

    /// The command names, in schema order.
    pub fn commands(&self) -> Vec<&str> {
        self.of_meta("command")
    }

    /// The event names, in schema order.
    pub fn events(&self) -> Vec<&str> {
        self.of_meta("event")
    }

    fn of_meta(&self, m: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|e| str_field(e, "meta-type") == Some(m))
            .map(name_of)
            .collect()
    }

    /// True if `name` is a command whose argument type has no members (such
    /// commands refuse every argument).
    pub fn takes_no_args(&self, name: &str) -> bool {
        self.arg_type(name)
            .and_then(|t| self.get(t))
            .is_some_and(|t| {
                t.get("members")
                    .and_then(Value::as_array)
                    .is_some_and(|m| m.is_empty())
                    && t.get("tag").is_none()
            })
    }

    /// The argument type of a command or event.
    pub fn arg_type(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|e| str_field(e, "arg-type"))
    }

    /// The return type of a command.
    pub fn ret_type(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|e| str_field(e, "ret-type"))
    }

    /// Structural check of a source schema: each entry has a known meta-type and
    /// that meta-type's fields, every referenced type is defined, a union's tag is
    /// an enum member of its base and each variant case is one of the enum's values.
    fn check(&self) -> Result<(), String> {
        for e in &self.entries {
            let n = name_of(e);
            let need = |k: &str| {
                e.get(k)
                    .ok_or_else(|| format!("schema: '{n}' has no '{k}'"))
            };
            let ty_ok = |t: &str| -> Result<(), String> {
                let base = t
                    .strip_prefix('[')
                    .and_then(|x| x.strip_suffix(']'))
                    .unwrap_or(t);
                match self.meta(base) {
                    None => Err(format!("schema: '{n}' refers to undefined type '{base}'")),
                    Some("command" | "event") => {
                        Err(format!("schema: '{n}' uses '{base}' as a type"))
                    }
                    Some(_) => Ok(()),
                }
            };
            match str_field(e, "meta-type") {
                Some("builtin") => {
                    need("json-type")?;
                }
                Some("enum") => {
                    let v = need("values")?.as_array().ok_or("schema: values")?;
                    if v.iter().any(|x| !x.is_string()) {
                        return Err(format!("schema: enum '{n}' has a non-string value"));
                    }
                }
                Some("command") => {
                    ty_ok(need("arg-type")?.as_str().unwrap_or(""))?;
                    ty_ok(need("ret-type")?.as_str().unwrap_or(""))?;
                }
                Some("event") => ty_ok(need("arg-type")?.as_str().unwrap_or(""))?,
                Some("alternate") => {
                    for m in need("members")?.as_array().ok_or("schema: members")? {
                        ty_ok(str_field(m, "type").unwrap_or(""))?;
                    }
                }
                Some("object") => {
                    let members = need("members")?.as_array().ok_or("schema: members")?;
                    for m in members {
                        if str_field(m, "name").is_none() {
                            return Err(format!("schema: a member of '{n}' has no name"));
                        }
                        ty_ok(str_field(m, "type").unwrap_or(""))?;
                    }
                    if let Some(tag) = str_field(e, "tag") {
                        let tm = members
                            .iter()
                            .find(|m| str_field(m, "name") == Some(tag))
                            .ok_or_else(|| format!("schema: tag '{tag}' of '{n}' is no member"))?;
                        let en = str_field(tm, "type").unwrap_or("");
                        let values = self
                            .get(en)
                            .filter(|x| str_field(x, "meta-type") == Some("enum"))
                            .and_then(|x| x.get("values"))
                            .and_then(Value::as_array)
                            .ok_or_else(|| format!("schema: tag of '{n}' is not an enum"))?;
                        for v in need("variants")?.as_array().ok_or("schema: variants")? {
                            let case = str_field(v, "case").unwrap_or("");
                            if !values.iter().any(|x| x.as_str() == Some(case)) {
                                return Err(format!(
                                    "schema: '{n}' has variant '{case}' outside its tag enum"
                                ));
                            }
                            let t = str_field(v, "type").unwrap_or("");
                            ty_ok(t)?;
                            if self.meta(t) != Some("object") {
                                return Err(format!(
                                    "schema: variant '{case}' of '{n}' is not an object"
                                ));
                            }
                        }
                    }
                }
                other => return Err(format!("schema: '{n}' has meta-type {other:?}")),
            }
        }
        Ok(())
    }

    /// All members of an object value of type `ty`: the base's and, for a union, the
    /// variant's selected by the tag member in `v`.
    fn object_members<'a>(&'a self, ty: &str, v: &Map<String, Value>) -> Vec<&'a Value> {
        let Some(e) = self.get(ty) else {
            return Vec::new();
        };
        let mut out: Vec<&Value> = e
            .get("members")
            .and_then(Value::as_array)
            .map(|m| m.iter().collect())
            .unwrap_or_default();
        if let Some(tag) = str_field(e, "tag") {
            let case = v.get(tag).and_then(Value::as_str);
            let variant = e
                .get("variants")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|x| case.is_some() && str_field(x, "case") == case);
            if let Some(t) = variant.and_then(|x| str_field(x, "type")) {
                out.extend(self.object_members(t, v));
            }
        }
        out
    }

    /// Refuses members of `v` that type `ty` does not declare, recursively, with
    /// QEMU's text (`Parameter 'a.b' is unexpected`; list elements as `a[0]`).
    /// Members are visited in QEMU's order: each declared member in turn (the JSON
    /// type of a builtin or enum value, then its own members; `Parameter 'x' is
    /// missing` for an absent required one), then the undeclared members. Enum
    /// values, alternates and a union's tag are left to the typed parsers.
    pub fn check_members(&self, ty: &str, v: &Value) -> Result<(), QmpError> {
        self.check_members_except(ty, v, &[])
    }

    /// [`Schema::check_members`], letting members `(type, member)` of `except`
    /// through (the type being the object type or the union variant that would
    /// declare it): options a parser reads only to refuse them by name, with a
    /// better error than "unexpected".
    pub fn check_members_except(
        &self,
        ty: &str,
        v: &Value,
        except: &[(&str, &str)],
    ) -> Result<(), QmpError> {
        let r = Except(except)
            .members_at(self, ty, v, "")
            .map_err(QmpError::generic);
        if crate::args::keyval_typing() {
            r.map_err(crate::args::keyval_wording)
        } else {
            r
        }
    }

    fn members_at(&self, ty: &str, v: &Value, path: &str) -> Result<(), String> {
        Except(&[]).members_at(self, ty, v, path)
    }

    /// False for a union value whose tag is missing or names no variant (nor a tag
    /// value without members); true for plain objects.
    fn tag_selects_variant(&self, ty: &str, v: &Map<String, Value>) -> bool {
        let Some(e) = self.get(ty) else { return true };
        let Some(tag) = str_field(e, "tag") else {
            return true;
        };
        let Some(case) = v.get(tag).and_then(Value::as_str) else {
            return false;
        };
        let enum_ty = e["members"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| str_field(m, "name") == Some(tag)))
            .and_then(|m| str_field(m, "type"));
        enum_ty
            .and_then(|t| self.get(t))
            .and_then(|t| t["values"].as_array())
            .is_some_and(|vals| vals.iter().any(|x| x.as_str() == Some(case)))
    }

    /// The types whose members an object value of type `ty` may have.
    fn object_types<'a>(&'a self, ty: &'a str, v: &Map<String, Value>) -> Vec<&'a str> {
        let mut out = vec![ty];
        if let Some(e) = self.get(ty) {
            if let Some(tag) = str_field(e, "tag") {
                let case = v.get(tag).and_then(Value::as_str);
                if let Some(t) = e
                    .get("variants")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|x| case.is_some() && str_field(x, "case") == case)
                    .and_then(|x| str_field(x, "type"))
                {
                    out.extend(self.object_types(t, v));
                }
            }
        }
        out
    }
}

/// Members let through by [`Schema::check_members_except`].
struct Except<'a>(&'a [(&'a str, &'a str)]);

impl Except<'_> {
    fn members_at(&self, s: &Schema, ty: &str, v: &Value, path: &str) -> Result<(), String> {
        if let Some(el) = ty.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
            if let Value::Array(list) = v {
                for (i, x) in list.iter().enumerate() {
                    self.members_at(s, el, x, &format!("{path}[{i}]"))?;
                }
            }
            return Ok(());
        }
        match s.meta(ty) {
            Some("object") => {
                let Value::Object(m) = v else { return Ok(()) };
                if !s.tag_selects_variant(ty, m) {
                    // A missing or unknown tag is the parser's error to report.
                    return Ok(());
                }
                let members = s.object_members(ty, m);
                let types = s.object_types(ty, m);
                let join = |k: &str| {
                    if path.is_empty() {
                        k.to_string()
                    } else {
                        format!("{path}.{k}")
                    }
                };
                // QEMU's visiting order: each declared member in turn (its value's
                // type, then its own members), a missing required member where it
                // comes, and the members left over at the end of the struct.
                for d in &members {
                    let n = str_field(d, "name").unwrap_or("");
                    let p = join(n);
                    let t = str_field(d, "type").unwrap_or("any");
                    match m.get(n) {
                        Some(x) => {
                            s.scalar_ok(t, x, &p)?;
                            self.members_at(s, t, x, &p)?;
                        }
                        None if d.get("default").is_none() => {
                            return Err(format!("Parameter '{p}' is missing"))
                        }
                        None => {}
                    }
                }
                for k in m.keys() {
                    let declared = members.iter().any(|d| str_field(d, "name") == Some(k));
                    let excepted = self.0.iter().any(|(t, n)| n == k && types.contains(t));
                    if !declared && !excepted {
                        return Err(format!("Parameter '{}' is unexpected", join(k)));
                    }
                }
                Ok(())
            }
            Some("alternate") => {
                // The member whose JSON type matches the value decides.
                let members = s
                    .get(ty)
                    .and_then(|e| e.get("members"))
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for d in members {
                    let t = str_field(&d, "type").unwrap_or("any");
                    if s.json_type_matches(t, v) {
                        return self.members_at(s, t, v, path);
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

impl Schema {
    /// The check QEMU's input visitor makes on a builtin or enum value's JSON type
    /// (not with keyval input, where every value is a string the parser converts).
    fn scalar_ok(&self, ty: &str, v: &Value, p: &str) -> Result<(), String> {
        let keyval = crate::args::keyval_typing();
        match self.meta(ty) {
            Some("builtin") if !keyval && !self.json_type_matches(ty, v) => {
                let want = match ty {
                    "str" => "string",
                    "int" => "integer",
                    "bool" => "boolean",
                    other => other,
                };
                Err(format!(
                    "Invalid parameter type for '{p}', expected: {want}"
                ))
            }
            // Enum values are the parsers' to refuse: they word values QEMU has but
            // oxemu does not implement differently from values that do not exist.
            Some("enum") if !keyval && !v.is_string() => Err(format!(
                "Invalid parameter type for '{p}', expected: string"
            )),
            _ => Ok(()),
        }
    }

    fn json_type_matches(&self, ty: &str, v: &Value) -> bool {
        if ty.starts_with('[') {
            return v.is_array();
        }
        match (self.meta(ty), ty) {
            (Some("builtin"), "str") | (Some("enum"), _) => v.is_string(),
            (Some("builtin"), "int") => v.is_i64() || v.is_u64(),
            (Some("builtin"), "number") => v.is_number(),
            (Some("builtin"), "bool") => v.is_boolean(),
            (Some("builtin"), "null") => v.is_null(),
            (Some("builtin"), _) => true,
            (Some("object"), _) => v.is_object(),
            (Some("alternate"), _) => true,
            _ => false,
        }
    }

    /// Full check of a value against type `ty` (members, their JSON types, enum
    /// values, required members, union tags). Used by tests to hold replies and
    /// event data to their declared types. The error names the path.
    pub fn validate(&self, ty: &str, v: &Value) -> Result<(), String> {
        self.validate_at(ty, v, "")
    }

    fn validate_at(&self, ty: &str, v: &Value, path: &str) -> Result<(), String> {
        let at = if path.is_empty() { "(top)" } else { path };
        if let Some(el) = ty.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
            let Value::Array(list) = v else {
                return Err(format!("{at}: expected an array of {el}, got {v}"));
            };
            for (i, x) in list.iter().enumerate() {
                self.validate_at(el, x, &format!("{path}[{i}]"))?;
            }
            return Ok(());
        }
        let e = self
            .get(ty)
            .ok_or_else(|| format!("{at}: undefined type '{ty}'"))?;
        match str_field(e, "meta-type") {
            Some("builtin") | Some("enum") if !self.json_type_matches(ty, v) => {
                Err(format!("{at}: expected {ty}, got {v}"))
            }
            Some("enum") => {
                let ok = e["values"]
                    .as_array()
                    .is_some_and(|vals| vals.iter().any(|x| x == v));
                if ok {
                    Ok(())
                } else {
                    Err(format!("{at}: {v} is not a value of enum {ty}"))
                }
            }
            Some("builtin") => Ok(()),
            Some("object") => {
                let Value::Object(m) = v else {
                    return Err(format!("{at}: expected object {ty}, got {v}"));
                };
                if let Some(tag) = str_field(e, "tag") {
                    if !m.get(tag).is_some_and(Value::is_string) {
                        return Err(format!("{at}: union {ty} without its tag '{tag}'"));
                    }
                }
                let members = self.object_members(ty, m);
                for d in &members {
                    let n = str_field(d, "name").unwrap_or("");
                    let p = if path.is_empty() {
                        n.to_string()
                    } else {
                        format!("{path}.{n}")
                    };
                    match m.get(n) {
                        Some(x) => {
                            self.validate_at(str_field(d, "type").unwrap_or("any"), x, &p)?
                        }
                        None if d.get("default").is_some() => {}
                        None => return Err(format!("{p}: required member missing")),
                    }
                }
                self.members_at(ty, v, path)
            }
            Some("alternate") => {
                let members = e["members"].as_array().cloned().unwrap_or_default();
                let errs: Vec<String> = members
                    .iter()
                    .map(|d| self.validate_at(str_field(d, "type").unwrap_or("any"), v, path))
                    .filter_map(Result::err)
                    .collect();
                if errs.len() < members.len() {
                    Ok(())
                } else {
                    Err(format!(
                        "{at}: matches no member of alternate {ty}: {}",
                        errs.join("; ")
                    ))
                }
            }
            other => Err(format!("{at}: '{ty}' is a {other:?}, not a type")),
        }
    }

    /// The `query-qmp-schema` answer: QEMU's `SchemaInfo` list with type names
    /// masked as QEMU masks them.
    pub fn introspect(&self) -> Value {
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        let mut out: Vec<Value> = Vec::new();
        let mut emitted: HashSet<String> = HashSet::new();
        for e in &self.entries {
            if matches!(str_field(e, "meta-type"), Some("command") | Some("event")) {
                let mut e2 = e.clone();
                for k in ["arg-type", "ret-type"] {
                    if let Some(t) = str_field(e, k) {
                        let m = self.mask(t, &mut names, &mut order);
                        e2[k] = Value::String(m);
                    }
                }
                out.push(e2);
            }
        }
        // Types, in order of first use; using a type can name further ones.
        let mut i = 0;
        while i < order.len() {
            let t = order[i].clone();
            i += 1;
            let masked = names[&t].clone();
            if !emitted.insert(masked.clone()) {
                continue;
            }
            if let Some(el) = t.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
                let m = self.mask(el, &mut names, &mut order);
                out.push(json!({"name": masked, "meta-type": "array", "element-type": m}));
                continue;
            }
            let e = &self.entries[self.index[&t]];
            let mut e2 = e.clone();
            e2["name"] = Value::String(masked);
            match str_field(e, "meta-type") {
                Some("enum") => {
                    let vals = e["values"].as_array().cloned().unwrap_or_default();
                    e2["members"] = Value::Array(vals.iter().map(|v| json!({"name": v})).collect());
                }
                Some("object") | Some("alternate") => {
                    if let Some(ms) = e2.get_mut("members").and_then(Value::as_array_mut) {
                        for m in ms {
                            if let Some(t) = str_field(m, "type").map(str::to_string) {
                                m["type"] = Value::String(self.mask(&t, &mut names, &mut order));
                            }
                        }
                    }
                    if let Some(vs) = e2.get_mut("variants").and_then(Value::as_array_mut) {
                        for v in vs {
                            if let Some(t) = str_field(v, "type").map(str::to_string) {
                                v["type"] = Value::String(self.mask(&t, &mut names, &mut order));
                            }
                        }
                    }
                    self.fill_variants(e, &mut e2, &mut names, &mut order);
                }
                _ => {}
            }
            out.push(e2);
        }
        Value::Array(out)
    }

    /// QEMU lists a variant for every tag value; those without members of their own
    /// get the empty object.
    fn fill_variants(
        &self,
        e: &Value,
        e2: &mut Value,
        names: &mut BTreeMap<String, String>,
        order: &mut Vec<String>,
    ) {
        let Some(tag) = str_field(e, "tag") else {
            return;
        };
        let Some(enum_ty) = e["members"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| str_field(m, "name") == Some(tag)))
            .and_then(|m| str_field(m, "type"))
        else {
            return;
        };
        let values = self
            .get(enum_ty)
            .and_then(|x| x["values"].as_array().cloned())
            .unwrap_or_default();
        let given: Vec<String> = e["variants"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| str_field(v, "case").map(str::to_string))
            .collect();
        let missing: Vec<&Value> = values
            .iter()
            .filter(|v| !given.iter().any(|g| Some(g.as_str()) == v.as_str()))
            .collect();
        if missing.is_empty() {
            return;
        }
        let empty = self.mask("q_empty", names, order);
        if let Some(vs) = e2.get_mut("variants").and_then(Value::as_array_mut) {
            for v in missing {
                vs.push(json!({"case": v, "type": empty}));
            }
        }
    }

    fn mask(
        &self,
        t: &str,
        names: &mut BTreeMap<String, String>,
        order: &mut Vec<String>,
    ) -> String {
        if BUILTINS.contains(&t) {
            if !names.contains_key(t) {
                names.insert(t.to_string(), t.to_string());
                order.push(t.to_string());
            }
            return t.to_string();
        }
        if let Some(m) = names.get(t) {
            return m.clone();
        }
        let m = if let Some(el) = t.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
            format!("[{}]", self.mask(el, names, order))
        } else {
            let n = names
                .values()
                .filter(|v| !v.starts_with('[') && !BUILTINS.contains(&v.as_str()))
                .count();
            n.to_string()
        };
        names.insert(t.to_string(), m.clone());
        order.push(t.to_string());
        m
    }
}

/// Structural check of a `query-qmp-schema` answer in QEMU's introspection format:
/// each entry has a name and a meta-type with that meta-type's fields, names are
/// unique, and every type name it refers to is defined. Returns the first problem.
pub fn check_introspection(list: &Value) -> Result<(), String> {
    let list = list.as_array().ok_or("not an array")?;
    let mut defined: HashMap<&str, &str> = HashMap::new();
    for e in list {
        let n = str_field(e, "name").ok_or_else(|| format!("entry without name: {e}"))?;
        let m = str_field(e, "meta-type").ok_or_else(|| format!("'{n}' without meta-type"))?;
        if defined.insert(n, m).is_some() {
            return Err(format!("'{n}' listed twice"));
        }
    }
    let is_type = |t: &str| {
        defined
            .get(t)
            .is_some_and(|m| !matches!(*m, "command" | "event"))
    };
    for e in list {
        let n = name_of(e);
        let fields: &[&str] = match str_field(e, "meta-type").unwrap_or("") {
            "builtin" => &["json-type"],
            "enum" => &["members", "values"],
            "array" => &["element-type"],
            "object" => &["members"],
            "alternate" => &["members"],
            "command" => &["arg-type", "ret-type"],
            "event" => &["arg-type"],
            other => return Err(format!("'{n}': unknown meta-type '{other}'")),
        };
        for f in fields {
            if e.get(*f).is_none() {
                return Err(format!("'{n}' lacks '{f}'"));
            }
        }
        let mut refs: Vec<&str> = Vec::new();
        for k in ["arg-type", "ret-type", "element-type"] {
            refs.extend(str_field(e, k));
        }
        for k in ["members", "variants"] {
            for m in e.get(k).and_then(Value::as_array).into_iter().flatten() {
                refs.extend(str_field(m, "type"));
            }
        }
        for r in refs {
            if !is_type(r) {
                return Err(format!("'{n}' refers to '{r}', which is not defined"));
            }
        }
    }
    Ok(())
}

/// The `query-qmp-schema` answer for a program without a schema: its commands with
/// their argument names and untyped returns (`ret-type` `any`), type names unmasked.
pub(crate) fn untyped_listing(commands: &[crate::CommandInfo], events: &[&str]) -> Value {
    let mut out = vec![
        json!({"name": "str", "meta-type": "builtin", "json-type": "string"}),
        json!({"name": "int", "meta-type": "builtin", "json-type": "int"}),
        json!({"name": "bool", "meta-type": "builtin", "json-type": "boolean"}),
        json!({"name": "any", "meta-type": "builtin", "json-type": "value"}),
        json!({"name": "empty", "meta-type": "object", "members": []}),
    ];
    for c in commands {
        let arg_type = format!("{}-arg", c.name);
        out.push(json!({"name": c.name, "meta-type": "command", "arg-type": arg_type, "ret-type": "any"}));
        let members: Vec<Value> = c
            .args
            .iter()
            .map(|(n, t, opt)| {
                let mut m = json!({"name": n, "type": t});
                if *opt {
                    m["default"] = Value::Null;
                }
                m
            })
            .collect();
        out.push(json!({"name": arg_type, "meta-type": "object", "members": members}));
    }
    for e in events {
        out.push(json!({"name": e, "meta-type": "event", "arg-type": "any"}));
    }
    Value::Array(out)
}

#[cfg(test)]
#[path = "schema_tests.rs"]
mod tests;
