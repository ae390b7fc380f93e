//! QEMU's option syntax: `key=value,a.b=c` (keyval) or a JSON object.
//!
//! keyval rules, as in QEMU: `,,` stands for a literal comma inside a value; dotted keys
//! build nested objects; objects whose keys are `0`, `1`, ... become lists; the first
//! element may omit its key when the option has an implied one (`--object
//! iothread,id=x` means `qom-type=iothread`); the same key twice keeps the last value;
//! `help` or `?` as an element is a help query ([`parse_keyval_help`]). All values are strings; typed structures
//! convert them with the helpers in `oxemu_qmp::args`.

use serde_json::{Map, Value};

/// A keyval or JSON option string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyvalError {
    /// An element has no `=`.
    #[error("Expected '=' after parameter '{0}'")]
    ExpectedEquals(String),
    /// An empty or malformed key.
    #[error("Invalid parameter '{0}'")]
    InvalidKey(String),
    /// A key longer than QEMU's 127 characters.
    #[error("Parameter '{0}' is too long")]
    TooLong(String),
    /// A fragment of a dotted key longer than QEMU's 127 characters.
    #[error("Parameter fragment '{0}' is too long")]
    FragmentTooLong(String),
    /// A `help` or `?` element where the option has no help.
    #[error("Help is not available for this option")]
    HelpNotAvailable,
    /// A key used both as a value and as an object.
    #[error("Parameters '{0}.*' used inconsistently")]
    Inconsistent(String),
    /// A list element missing below the highest index (`a.1=x` without `a.0`).
    #[error("Parameter '{0}' missing")]
    Missing(String),
    /// Broken JSON.
    #[error("JSON parse error: {0}")]
    Json(String),
    /// JSON that is not an object.
    #[error("JSON option must be an object")]
    NotObject,
}

/// Parses an option argument: JSON when it starts with `{`, keyval otherwise.
/// `implied` names the key of a leading element without `=`.
pub fn parse_option(s: &str, implied: Option<&str>) -> Result<Value, KeyvalError> {
    if s.trim_start().starts_with('{') {
        let v: Value = crate::json::parse(s).map_err(|e| KeyvalError::Json(e.to_string()))?;
        return if v.is_object() {
            Ok(v)
        } else {
            Err(KeyvalError::NotObject)
        };
    }
    parse_keyval(s, implied)
}

/// Splits QEMU option syntax on single commas, turning `,,` into a literal comma:
/// the one splitter every oxemu program uses for keyval-style arguments.
///
/// ```
/// assert_eq!(oxemu_opts::keyval::split_elements("a=1,b=x,,y"), ["a=1", "b=x,y"]);
/// ```
pub fn split_elements(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                out.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// Writes `s` as a value in option syntax: every comma doubled, as QEMU prints string
/// options (qemu-img's "Formatting" line) so that the text parses back.
///
/// ```
/// assert_eq!(oxemu_opts::keyval::escape("a,b"), "a,,b");
/// ```
pub fn escape(s: &str) -> String {
    s.replace(',', ",,")
}

/// Splits QemuOpts-style `a=b,c,d=e` into flat pairs, in order (`,,` is a literal
/// comma); a bare word comes back as `(word, None)`. For options that are not nested
/// (`-o` lists, `--object` of the tools), where [`parse_keyval`] would build objects.
///
/// ```
/// let p = oxemu_opts::keyval::pairs("secret,id=s0,data=a,,b");
/// assert_eq!(p[0], ("secret".to_string(), None));
/// assert_eq!(p[2], ("data".to_string(), Some("a,b".to_string())));
/// ```
pub fn pairs(s: &str) -> Vec<(String, Option<String>)> {
    split_elements(s)
        .into_iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (p, None),
        })
        .collect()
}

/// Parses keyval syntax into a JSON object of strings, nested objects and lists.
/// A `help` or `?` element is refused ("Help is not available for this option"), as
/// QEMU refuses it where an option has no help; [`parse_keyval_help`] reports it.
pub fn parse_keyval(s: &str, implied: Option<&str>) -> Result<Value, KeyvalError> {
    match parse_keyval_help(s, implied)? {
        (_, true) => Err(KeyvalError::HelpNotAvailable),
        (v, false) => Ok(v),
    }
}

/// Parses keyval syntax as QEMU 7.2's `keyval_parse` does, and says whether an element
/// asked for help (`help` or `?` on its own, anywhere).
///
/// - The first element may be a bare value for `implied` (`virt,accel=tcg`). That value
///   ends at the first `,` or `=` and has no `,,` escape, so `virt,,x` is `virt` and
///   then an empty (invalid) key; an empty first element is never implied.
/// - Other values end at a single comma; `,,` is a literal comma. A trailing comma ends
///   the list.
/// - Keys are QAPI names (a letter, then letters, digits, `-`, `_`), dotted for nesting;
///   fragments after the first may be list indices. Fragments are under 128 characters.
/// - The same key twice: the last value wins, unless one use is an object and the other
///   a value.
///
/// ```
/// let (v, help) = oxemu_opts::keyval::parse_keyval_help("virt,gic-version=3,help", Some("type")).unwrap();
/// assert_eq!((v["type"].as_str(), v["gic-version"].as_str(), help), (Some("virt"), Some("3"), true));
/// let (v, _) = oxemu_opts::keyval::parse_keyval_help("a=1,a=2,", None).unwrap();
/// assert_eq!(v["a"], "2");
/// ```
pub fn parse_keyval_help(s: &str, implied: Option<&str>) -> Result<(Value, bool), KeyvalError> {
    let mut root = Map::new();
    let help = parse_keyval_into(&mut root, s, implied)?;
    Ok((Value::Object(root), help))
}

/// Parses keyval syntax into `root`, on top of what it holds (QEMU's
/// `keyval_parse_into`, with which `-M` accumulates its options): a later value
/// replaces an earlier one; a key used once as a value and once as an object is
/// refused. Returns whether an element asked for help. On error `root` may hold part
/// of the input.
///
/// ```
/// let mut m = serde_json::Map::new();
/// oxemu_opts::keyval::parse_keyval_into(&mut m, "none,x=1", Some("type")).unwrap();
/// oxemu_opts::keyval::parse_keyval_into(&mut m, "virt", Some("type")).unwrap();
/// assert_eq!((m["type"].as_str(), m["x"].as_str()), (Some("virt"), Some("1")));
/// ```
pub fn parse_keyval_into(
    root: &mut Map<String, Value>,
    s: &str,
    implied: Option<&str>,
) -> Result<bool, KeyvalError> {
    let mut help = false;
    let mut rest = s;
    let mut implied = implied;
    while !rest.is_empty() {
        let head = rest.find(['=', ',']).unwrap_or(rest.len());
        let bare = head > 0 && !rest[head..].starts_with('=');
        if bare && matches!(&rest[..head], "help" | "?") {
            help = true;
            rest = rest[head..].strip_prefix(',').unwrap_or(&rest[head..]);
            implied = None;
            continue;
        }
        let (key, value, next) = match implied {
            Some(k) if bare => {
                let after = &rest[head..];
                (
                    k,
                    rest[..head].to_string(),
                    after.strip_prefix(',').unwrap_or(after),
                )
            }
            _ => {
                let key = &rest[..head];
                check_key(key)?;
                let Some(after) = rest[head..].strip_prefix('=') else {
                    return Err(KeyvalError::ExpectedEquals(key.to_string()));
                };
                let (value, next) = take_value(after);
                (key, value, next)
            }
        };
        insert(root, key, value)?;
        rest = next;
        implied = None;
    }
    let mut v = Value::Object(std::mem::take(root));
    let r = listify(&mut v, "");
    if let Value::Object(m) = v {
        *root = m;
    }
    r.map(|()| help)
}

/// Reads a value up to a single comma (`,,` is a comma); returns it and what follows.
fn take_value(s: &str) -> (String, &str) {
    let mut out = String::new();
    let mut it = s.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        if c == ',' {
            if it.peek().map(|&(_, c)| c) == Some(',') {
                it.next();
            } else {
                return (out, &s[i + 1..]);
            }
        }
        out.push(c);
    }
    (out, "")
}

/// Checks a dotted key: the first fragment a QAPI name, later ones QAPI names or list
/// indices, each 1 to 127 characters.
fn check_key(key: &str) -> Result<(), KeyvalError> {
    let parts: Vec<&str> = key.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        let index = i > 0 && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        let name = p.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !index && !name {
            return Err(KeyvalError::InvalidKey(key.to_string()));
        }
        if p.len() >= 128 {
            return Err(if parts.len() > 1 {
                KeyvalError::FragmentTooLong(p.to_string())
            } else {
                KeyvalError::TooLong(p.to_string())
            });
        }
    }
    Ok(())
}

/// Stores `value` at dotted `key`; a later value replaces an earlier one.
fn insert(root: &mut Map<String, Value>, key: &str, value: String) -> Result<(), KeyvalError> {
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = root;
    for (i, p) in parts.iter().enumerate() {
        let prefix = parts[..=i].join(".");
        if i == parts.len() - 1 {
            if cur.get(*p).is_some_and(Value::is_object) {
                return Err(KeyvalError::Inconsistent(prefix));
            }
            cur.insert(p.to_string(), Value::String(value));
            return Ok(());
        }
        let next = cur
            .entry(p.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        cur = match next {
            Value::Object(m) => m,
            _ => return Err(KeyvalError::Inconsistent(prefix)),
        };
    }
    Ok(())
}

/// Turns objects keyed `0..n` into lists, recursively. An object mixing indices and
/// names, or indices with a gap, is refused.
fn listify(v: &mut Value, path: &str) -> Result<(), KeyvalError> {
    let Value::Object(m) = v else { return Ok(()) };
    for (k, child) in m.iter_mut() {
        let p = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        listify(child, &p)?;
    }
    let is_index = |k: &str| k.bytes().all(|b| b.is_ascii_digit());
    let indices = m.keys().filter(|k| is_index(k)).count();
    if indices == 0 {
        return Ok(());
    }
    if indices != m.len() {
        return Err(KeyvalError::Inconsistent(path.to_string()));
    }
    // Digits beyond usize (or INT_MAX in QEMU) can never be filled: cap them.
    let mut idx: Vec<(usize, Value)> = std::mem::take(m)
        .into_iter()
        .map(|(k, v)| (k.parse().unwrap_or(usize::MAX), v))
        .collect();
    idx.sort_by_key(|(i, _)| *i);
    if let Some(n) = idx.iter().enumerate().position(|(n, (i, _))| n != *i) {
        return Err(KeyvalError::Missing(format!("{path}.{n}")));
    }
    *v = Value::Array(idx.into_iter().map(|(_, v)| v).collect());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dotted_keys_nest_and_commas_escape() {
        let v = parse_keyval(
            "driver=raw,node-name=r,file.driver=file,file.filename=/a,,b",
            None,
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"driver": "raw", "node-name": "r", "file": {"driver": "file", "filename": "/a,b"}})
        );
    }

    #[test]
    fn implied_key_and_lists() {
        let v = parse_keyval("iothread,id=io0", Some("qom-type")).unwrap();
        assert_eq!(v, json!({"qom-type": "iothread", "id": "io0"}));
        let v = parse_keyval("a.0=x,a.1=y", None).unwrap();
        assert_eq!(v, json!({"a": ["x", "y"]}));
    }

    #[test]
    fn malformed_options_are_refused() {
        assert_eq!(
            parse_keyval("a", None),
            Err(KeyvalError::ExpectedEquals("a".into()))
        );
        assert_eq!(
            parse_keyval("a.b=1,a=2", None),
            Err(KeyvalError::Inconsistent("a".into()))
        );
        assert_eq!(
            parse_keyval("a=1,a.b=2", None),
            Err(KeyvalError::Inconsistent("a".into()))
        );
        assert_eq!(
            parse_keyval("a.0=x,a.2=y", None),
            Err(KeyvalError::Missing("a.1".into()))
        );
        assert_eq!(
            parse_keyval("a.0=x,a.b=y", None),
            Err(KeyvalError::Inconsistent("a".into()))
        );
        assert_eq!(
            parse_keyval("a.99999999999999999999999=x", None),
            Err(KeyvalError::Missing("a.0".into()))
        );
        let long = "k".repeat(128);
        assert_eq!(
            parse_keyval(&format!("{long}=1"), None),
            Err(KeyvalError::TooLong(long.clone()))
        );
        assert_eq!(
            parse_keyval(&format!("a.{long}=1"), None),
            Err(KeyvalError::FragmentTooLong(long))
        );
        assert!(matches!(
            parse_keyval("1a=x", None),
            Err(KeyvalError::InvalidKey(_))
        ));
        assert!(matches!(
            parse_keyval("=x", None),
            Err(KeyvalError::InvalidKey(_))
        ));
    }

    #[test]
    fn qemu_7_2_keyval_rules() {
        // The same key twice: the last wins.
        assert_eq!(parse_keyval("a=1,a=2", None), Ok(json!({"a": "2"})));
        // A trailing comma ends the list; `,,` at the end is a comma in the value.
        assert_eq!(parse_keyval("a=1,", None), Ok(json!({"a": "1"})));
        assert_eq!(parse_keyval("a=1,,", None), Ok(json!({"a": "1,"})));
        // An implied value has no escape and ends at the first comma.
        assert_eq!(
            parse_keyval("none,,x", Some("type")),
            Err(KeyvalError::InvalidKey(String::new()))
        );
        assert_eq!(
            parse_keyval(",a=1", Some("type")),
            Err(KeyvalError::InvalidKey(String::new()))
        );
        assert_eq!(
            parse_keyval("none,foo", Some("type")),
            Err(KeyvalError::ExpectedEquals("foo".into()))
        );
        // Help anywhere, as its own element; `help=x` is a key.
        assert_eq!(
            parse_keyval_help("help", Some("type")),
            Ok((json!({}), true))
        );
        assert_eq!(
            parse_keyval_help("virt,?", Some("type")),
            Ok((json!({"type": "virt"}), true))
        );
        assert_eq!(
            parse_keyval_help("help=x", None),
            Ok((json!({"help": "x"}), false))
        );
        assert_eq!(
            parse_keyval("a=1,help", None),
            Err(KeyvalError::HelpNotAvailable)
        );
        assert_eq!(parse_keyval("", None), Ok(json!({})));
    }

    #[test]
    fn parse_into_accumulates() {
        let mut m = Map::new();
        assert_eq!(
            parse_keyval_into(&mut m, "none,a.b=1", Some("type")),
            Ok(false)
        );
        assert_eq!(
            parse_keyval_into(&mut m, "virt,a.c=2,help", Some("type")),
            Ok(true)
        );
        assert_eq!(
            Value::Object(m.clone()),
            json!({"type": "virt", "a": {"b": "1", "c": "2"}})
        );
        assert_eq!(
            parse_keyval_into(&mut m, "a=3", None),
            Err(KeyvalError::Inconsistent("a".into()))
        );
    }

    #[test]
    fn json_and_keyval_agree() {
        let a = parse_option(r#"{"driver":"file","filename":"x"}"#, None).unwrap();
        let b = parse_option("driver=file,filename=x", None).unwrap();
        assert_eq!(a, b);
        assert!(matches!(
            parse_option("{bad", None),
            Err(KeyvalError::Json(_))
        ));
    }
}
