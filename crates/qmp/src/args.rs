//! Typed command arguments with QEMU's error messages, and serde helpers that let the
//! same structures accept both JSON values and keyval strings (`on`, `1024`).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::QmpError;

/// Deserializes `v` into `T`, turning serde's complaints into QEMU's wording:
/// `Parameter 'x' is missing`, `Parameter 'x' is unexpected`,
/// `Invalid parameter type for 'x', expected: string`.
pub fn from_value<T: DeserializeOwned>(v: Value) -> Result<T, QmpError> {
    let v = if v.is_null() {
        Value::Object(Default::default())
    } else {
        v
    };
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        let join = |field: &str| {
            if path.is_empty() || path == "." {
                field.to_string()
            } else {
                format!("{path}.{field}")
            }
        };
        if let Some(f) = between(&inner, "missing field `", "`") {
            QmpError::generic(format!("Parameter '{}' is missing", join(f)))
        } else if let Some(f) = between(&inner, "unknown field `", "`") {
            // serde's path already ends in the unknown field.
            let p = if path.is_empty() || path == "." {
                f.to_string()
            } else {
                path.clone()
            };
            QmpError::generic(format!("Parameter '{p}' is unexpected"))
        } else if let Some(f) = between(&inner, "unknown variant `", "`") {
            // QEMU names just the member, not its whole path, for enum values.
            let member = path.rsplit(['.', ']']).next().unwrap_or(&path);
            QmpError::generic(format!("Parameter '{member}' does not accept value '{f}'"))
        } else if inner.starts_with("invalid type") {
            let expected = if inner.contains("expected a string") {
                "string"
            } else if inner.contains("boolean") {
                "boolean"
            } else if inner.contains("integer") || inner.contains("u64") || inner.contains("u32") {
                "integer"
            } else if inner.contains("sequence") {
                "array"
            } else {
                "object"
            };
            QmpError::generic(format!(
                "Invalid parameter type for '{path}', expected: {expected}"
            ))
        } else {
            QmpError::generic(format!("Parameter '{path}': {inner}"))
        }
    })
}

/// Rewords an error from [`from_value`] for arguments that came from keyval syntax
/// (`a=b,c=d`), where every value is a string: QEMU's keyval visitor says
/// `Parameter 'x' expects integer` (or `expects 'on' or 'off'`) where its JSON
/// visitor says `Invalid parameter type for 'x', expected: integer`.
///
/// List elements are also renamed as the keyval visitor names them: `a[0].b` becomes
/// `a.0.b`.
pub fn keyval_wording(e: QmpError) -> QmpError {
    let e = QmpError {
        class: e.class,
        desc: keyval_path(&e.desc),
    };
    let Some(rest) = e.desc.strip_prefix("Invalid parameter type for '") else {
        return e;
    };
    let Some((param, expected)) = rest.split_once("', expected: ") else {
        return e;
    };
    let want = match expected {
        "integer" => "integer",
        "boolean" => "'on' or 'off'",
        _ => return e,
    };
    QmpError {
        class: e.class,
        desc: format!("Parameter '{param}' expects {want}"),
    }
}

/// Rewrites the first quoted parameter of `desc` from JSON's `a[0].b` to keyval's
/// `a.0.b`.
fn keyval_path(desc: &str) -> String {
    let Some(i) = desc.find('\'') else {
        return desc.to_string();
    };
    let Some(len) = desc[i + 1..].find('\'') else {
        return desc.to_string();
    };
    let param = &desc[i + 1..i + 1 + len];
    let mut out = String::with_capacity(param.len());
    for c in param.chars() {
        match c {
            '[' => out.push('.'),
            ']' => {}
            c => out.push(c),
        }
    }
    format!("{}{out}{}", &desc[..i + 1], &desc[i + 1 + len..])
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let i = s.find(start)? + start.len();
    let j = s[i..].find(end)? + i;
    Some(&s[i..j])
}

thread_local! {
    static KEYVAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with keyval typing: inside it, [`flex_bool`] and [`flex_u64`] accept the
/// strings keyval syntax produces (`on`, `1024`), as QEMU's keyval visitor does.
/// Outside it (QMP and JSON options) they accept only JSON booleans and numbers, as
/// QEMU's JSON visitor does.
pub fn with_keyval<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            KEYVAL.with(|k| k.set(self.0));
        }
    }
    let _reset = Reset(KEYVAL.with(|k| k.replace(true)));
    f()
}

/// True inside [`with_keyval`].
pub(crate) fn keyval_typing() -> bool {
    KEYVAL.with(|k| k.get())
}

/// Accepts a JSON boolean, or within [`with_keyval`] a keyval
/// `on|off|yes|no|true|false`.
pub fn flex_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match Value::deserialize(d)? {
        Value::Bool(b) => Ok(b),
        Value::String(s) if !keyval_typing() => Err(serde::de::Error::custom(format!(
            "invalid type: string \"{s}\", expected a boolean"
        ))),
        Value::String(s) => match s.as_str() {
            "on" | "yes" | "true" | "y" => Ok(true),
            "off" | "no" | "false" | "n" => Ok(false),
            _ => Err(serde::de::Error::custom(format!(
                "invalid type: string \"{s}\", expected a boolean ('on' or 'off')"
            ))),
        },
        other => Err(serde::de::Error::custom(format!(
            "invalid type: {other}, expected a boolean"
        ))),
    }
}

/// Like [`flex_bool`] for an optional field.
pub fn flex_opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    flex_bool(d).map(Some)
}

/// Accepts a JSON number, or within [`with_keyval`] a keyval integer (decimal, `0x`
/// hex, or with a size suffix).
pub fn flex_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) if !keyval_typing() => Err(serde::de::Error::custom(format!(
            "invalid type: string \"{s}\", expected an integer"
        ))),
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| serde::de::Error::custom("invalid type: number, expected an integer")),
        Value::String(s) => parse_int(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("invalid type: string \"{s}\", expected an integer"))
        }),
        other => Err(serde::de::Error::custom(format!(
            "invalid type: {other}, expected an integer"
        ))),
    }
}

/// Like [`flex_u64`] for an optional field.
pub fn flex_opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    flex_u64(d).map(Some)
}

/// Accepts a JSON integer, negative ones included, or within [`with_keyval`] a
/// keyval integer (decimal with an optional `-`, or `0x` hex), for an optional
/// signed QAPI `int` field.
pub fn flex_opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let bad = |what: String| {
        serde::de::Error::custom(format!("invalid type: {what}, expected an integer"))
    };
    match Value::deserialize(d)? {
        Value::Number(n) => n.as_i64().map(Some).ok_or_else(|| bad("number".into())),
        Value::String(s) if keyval_typing() => {
            let v = match s.strip_prefix('-') {
                Some(r) => parse_int(r).and_then(|u| i64::try_from(u).ok()).map(|u| -u),
                None => parse_int(&s).and_then(|u| i64::try_from(u).ok()),
            };
            v.map(Some).ok_or_else(|| bad(format!("string \"{s}\"")))
        }
        Value::String(s) => Err(bad(format!("string \"{s}\""))),
        other => Err(bad(other.to_string())),
    }
}

fn parse_int(s: &str) -> Option<u64> {
    if let Some(h) = s.strip_prefix("0x") {
        return u64::from_str_radix(h, 16).ok();
    }
    s.parse().ok().or_else(|| {
        let split = s.find(|c: char| !c.is_ascii_digit())?;
        let (n, suf) = s.split_at(split);
        let n: u64 = n.parse().ok()?;
        let shift = match suf {
            "k" | "K" => 10,
            "M" | "m" => 20,
            "G" | "g" => 30,
            "T" | "t" => 40,
            _ => return None,
        };
        n.checked_mul(1 << shift)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    struct T {
        node_name: String,
        #[serde(default, deserialize_with = "flex_bool")]
        writable: bool,
        #[serde(default, deserialize_with = "flex_opt_u64")]
        num_queues: Option<u64>,
    }

    #[test]
    fn errors_use_qemu_wording() {
        let e = from_value::<T>(json!({})).unwrap_err();
        assert_eq!(e.desc, "Parameter 'node-name' is missing");
        let e = from_value::<T>(json!({"node-name": "a", "bogus": 1})).unwrap_err();
        assert_eq!(e.desc, "Parameter 'bogus' is unexpected");
        let e = from_value::<T>(json!({"node-name": 5})).unwrap_err();
        assert_eq!(
            e.desc,
            "Invalid parameter type for 'node-name', expected: string"
        );
        let e = from_value::<T>(json!({"node-name": "a", "num-queues": "x"})).unwrap_err();
        assert_eq!(
            e.desc,
            "Invalid parameter type for 'num-queues', expected: integer"
        );
    }

    #[test]
    fn keyval_input_gets_the_keyval_visitors_wording() {
        let kv = |v| keyval_wording(with_keyval(|| from_value::<T>(v)).unwrap_err()).desc;
        assert_eq!(
            kv(json!({"node-name": "a", "num-queues": "x"})),
            "Parameter 'num-queues' expects integer"
        );
        assert_eq!(
            kv(json!({"node-name": "a", "writable": "maybe"})),
            "Parameter 'writable' expects 'on' or 'off'"
        );
        assert_eq!(kv(json!({})), "Parameter 'node-name' is missing");
    }

    #[test]
    fn keyval_strings_and_json_values_give_the_same_struct() {
        let a: T = with_keyval(|| {
            from_value(json!({"node-name": "a", "writable": "on", "num-queues": "2"}))
        })
        .unwrap();
        // Outside keyval typing (QMP, JSON options) strings are type errors, as in QEMU.
        let e = from_value::<T>(json!({"node-name": "a", "writable": "on"})).unwrap_err();
        assert_eq!(
            e.desc,
            "Invalid parameter type for 'writable', expected: boolean"
        );
        let b: T =
            from_value(json!({"node-name": "a", "writable": true, "num-queues": 2})).unwrap();
        assert_eq!((a.writable, a.num_queues), (b.writable, b.num_queues));
        assert_eq!(a.num_queues, Some(2));
        assert_eq!(a.node_name, b.node_name);
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Rule {
        #[allow(dead_code)]
        kind: Kind,
        #[serde(default, deserialize_with = "flex_opt_i64")]
        n: Option<i64>,
    }

    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "lowercase")]
    enum Kind {
        A,
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct List {
        #[allow(dead_code)]
        rules: Vec<Rule>,
    }

    #[test]
    fn list_elements_are_named_as_qemus_visitors_name_them() {
        let e = from_value::<List>(json!({"rules": [{"kind": "a", "n": "x"}]})).unwrap_err();
        assert_eq!(
            e.desc,
            "Invalid parameter type for 'rules[0].n', expected: integer"
        );
        let kv = |v| keyval_wording(with_keyval(|| from_value::<List>(v)).unwrap_err()).desc;
        assert_eq!(
            kv(json!({"rules": [{"kind": "a"}, {"kind": "a", "n": "x"}]})),
            "Parameter 'rules.1.n' expects integer"
        );
        assert_eq!(
            kv(json!({"rules": [{"n": "1"}]})),
            "Parameter 'rules.0.kind' is missing"
        );
        assert_eq!(
            kv(json!({"rules": [{"kind": "a", "b": "1"}]})),
            "Parameter 'rules.0.b' is unexpected"
        );
        // Enum values are reported by the member's name alone.
        let e = from_value::<List>(json!({"rules": [{"kind": "z"}]})).unwrap_err();
        assert_eq!(e.desc, "Parameter 'kind' does not accept value 'z'");
    }

    #[test]
    fn signed_integers_from_json_and_keyval() {
        let r: Rule = with_keyval(|| from_value(json!({"kind": "a", "n": "-2"}))).unwrap();
        assert_eq!(r.n, Some(-2));
        let r: Rule = with_keyval(|| from_value(json!({"kind": "a", "n": "0x10"}))).unwrap();
        assert_eq!(r.n, Some(16));
        let r: Rule = from_value(json!({"kind": "a", "n": -7})).unwrap();
        assert_eq!(r.n, Some(-7));
        let e = from_value::<Rule>(json!({"kind": "a", "n": "-2"})).unwrap_err();
        assert_eq!(e.desc, "Invalid parameter type for 'n', expected: integer");
    }
}
