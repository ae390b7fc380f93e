//! QEMU's JSON dialect: standard JSON plus strings in single quotes.
//!
//! QEMU's JSON lexer (`qobject/json-lexer.c`) accepts `'...'` wherever a string may
//! appear. Inside one, `\'` is a quote and `"` needs no escape; every other escape is
//! the standard one. QMP input, `json:` file names and JSON `-blockdev`/`--object`
//! arguments all go through that parser, and scripts (and QEMU's own iotests) use
//! single quotes to avoid shell escaping. [`parse`] accepts the same texts, for every
//! oxemu program.
//!
//! ```
//! let v = oxemu_opts::json::parse(r#"{'driver': 'file', "filename": 'a "b"'}"#).unwrap();
//! assert_eq!(v["driver"], "file");
//! assert_eq!(v["filename"], "a \"b\"");
//! ```

use serde_json::Value;

/// Parses `text` as QEMU does: standard JSON, where strings may also be single-quoted.
/// The error is serde_json's, with its line and column.
pub fn parse(text: &str) -> Result<Value, serde_json::Error> {
    match to_standard(text) {
        Some(std) => serde_json::from_str(&std),
        None => serde_json::from_str(text),
    }
}

/// Like [`parse`], for bytes (QMP input). Invalid UTF-8 is an error.
pub fn parse_slice(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    match std::str::from_utf8(bytes) {
        Ok(s) => parse(s),
        // Let serde_json describe the encoding error.
        Err(_) => serde_json::from_slice(bytes),
    }
}

/// Rewrites single-quoted strings as double-quoted ones; None when `text` has none
/// (so that standard JSON is parsed as given). Unterminated strings are copied as
/// they are, for serde_json to report.
fn to_standard(text: &str) -> Option<String> {
    if !text.contains('\'') {
        return None;
    }
    let mut out = String::with_capacity(text.len() + 8);
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                out.push('"');
                let mut escape = false;
                for c in chars.by_ref() {
                    out.push(c);
                    if escape {
                        escape = false;
                    } else if c == '\\' {
                        escape = true;
                    } else if c == '"' {
                        break;
                    }
                }
            }
            '\'' => {
                out.push('"');
                let mut closed = false;
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some('\'') => out.push('\''),
                            Some(e) => {
                                out.push('\\');
                                out.push(e);
                            }
                            None => out.push('\\'),
                        },
                        '"' => out.push_str("\\\""),
                        '\'' => {
                            closed = true;
                            break;
                        }
                        c => out.push(c),
                    }
                }
                if closed {
                    out.push('"');
                }
            }
            c => out.push(c),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_quotes_are_strings_with_qemus_escapes() {
        let v = parse(r#"{'a': 'it\'s', 'b': "x'y", 'c': ['\n', '"', '\u0041']}"#).unwrap();
        assert_eq!(v["a"], "it's");
        assert_eq!(v["b"], "x'y");
        assert_eq!(v["c"][0], "\n");
        assert_eq!(v["c"][1], "\"");
        assert_eq!(v["c"][2], "A");
    }

    #[test]
    fn standard_json_is_unchanged_and_errors_stay_errors() {
        assert_eq!(parse(r#"{"a":[1,true,null]}"#).unwrap()["a"][1], true);
        for bad in ["{'a': 'open", "{'a' 1}", "'", "{'a\\", "{\"a\": 'x'"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
