//! QEMU's option syntax: `key=value,a.b=c` (keyval) or a JSON object.
//!
//! keyval rules, as in QEMU: `,,` stands for a literal comma inside a value; dotted keys
//! build nested objects; objects whose keys are `0`, `1`, ... become lists; the first
//! element may omit its key when the option has an implied one (`--object
//! iothread,id=x` means `qom-type=iothread`). All values are strings; typed structures
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
    /// The same key twice.
    #[error("Parameter '{0}' is set multiple times")]
    Duplicate(String),
    /// A key used both as a value and as an object.
    #[error("Parameters '{0}.*' used inconsistently")]
    Inconsistent(String),
    /// List indices with gaps.
    #[error("Parameter '{0}' is a list with missing elements")]
    SparseList(String),
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
pub fn parse_keyval(s: &str, implied: Option<&str>) -> Result<Value, KeyvalError> {
    let mut root = Map::new();
    if s.is_empty() {
        return Ok(Value::Object(root));
    }
    for (i, elem) in split_elements(s).into_iter().enumerate() {
        if elem.is_empty() && i > 0 {
            continue; // trailing comma
        }
        let (key, value) = match elem.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => match implied {
                Some(k) if i == 0 => (k.to_string(), elem),
                _ => return Err(KeyvalError::ExpectedEquals(elem)),
            },
        };
        insert(&mut root, &key, value)?;
    }
    let mut v = Value::Object(root);
    listify(&mut v, "")?;
    Ok(v)
}

fn insert(root: &mut Map<String, Value>, key: &str, value: String) -> Result<(), KeyvalError> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| {
        p.is_empty()
            || !p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
    }) {
        return Err(KeyvalError::InvalidKey(key.to_string()));
    }
    let mut cur = root;
    for (i, p) in parts.iter().enumerate() {
        let prefix = parts[..=i].join(".");
        if i == parts.len() - 1 {
            if cur.contains_key(*p) {
                return Err(if cur[*p].is_object() {
                    KeyvalError::Inconsistent(prefix)
                } else {
                    KeyvalError::Duplicate(prefix)
                });
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

/// Turns objects keyed `0..n` into lists, recursively.
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
    if !m.is_empty() && m.keys().all(|k| k.parse::<usize>().is_ok()) {
        let mut idx: Vec<(usize, Value)> = std::mem::take(m)
            .into_iter()
            .map(|(k, v)| (k.parse().expect("checked above"), v))
            .collect();
        idx.sort_by_key(|(i, _)| *i);
        if idx.iter().enumerate().any(|(n, (i, _))| n != *i) {
            return Err(KeyvalError::SparseList(path.to_string()));
        }
        *v = Value::Array(idx.into_iter().map(|(_, v)| v).collect());
    }
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
            parse_keyval("a=1,a=2", None),
            Err(KeyvalError::Duplicate("a".into()))
        );
        assert_eq!(
            parse_keyval("a=1,a.b=2", None),
            Err(KeyvalError::Inconsistent("a".into()))
        );
        assert!(matches!(
            parse_keyval("a.0=x,a.2=y", None),
            Err(KeyvalError::SparseList(_))
        ));
        assert!(matches!(
            parse_keyval("=x", None),
            Err(KeyvalError::InvalidKey(_))
        ));
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
