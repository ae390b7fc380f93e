//! QemuOpts: the flat option syntax of `-device`, `-chardev`, `-mon`, `-object`,
//! `-accel`, `-m`, `-global` and `-name` in QEMU 7.2's system emulators (QEMU's
//! `util/qemu-option.c`).
//!
//! It differs from [`keyval`](crate::keyval), which the system emulator's `-M`, `-smp`
//! and `-display` use (and qemu-storage-daemon's `--object`):
//!
//! - the first element may be a bare value of an implied key (`-device DRIVER,...`,
//!   `-chardev BACKEND,...`), and that value takes `,,` escapes (`null,,x` is `null,x`);
//! - a later bare element is a short-form boolean: `server` means `server=on`, `nowait`
//!   means `wait=off`. QEMU 7.2 accepts them with a deprecation warning, kept in
//!   [`QemuOpts::warnings`]; `help` and `?` are help queries ([`QemuOpts::help`]);
//! - keys are not checked here (the caller knows which it accepts), so an empty key
//!   (`=x`, or `a,,b` read as flags `a`, `` and `b`) comes back for the caller to refuse
//!   as "Invalid parameter ''";
//! - `id=` is taken out: the first one counts, later ones are ignored, as QEMU does; it
//!   must be an identifier;
//! - a repeated key keeps every value in order, and [`QemuOpts::get`] reads the last.
//!
//! ```
//! let o = oxemu_opts::qemu_opts::QemuOpts::parse("socket,id=c0,path=/a,,b,server,nowait", Some("backend")).unwrap();
//! assert_eq!(o.id.as_deref(), Some("c0"));
//! assert_eq!(o.get("backend"), Some("socket"));
//! assert_eq!(o.get("path"), Some("/a,b"));
//! assert_eq!((o.get("server"), o.get("wait")), (Some("on"), Some("off")));
//! assert_eq!(o.warnings.len(), 2);
//! ```

/// A QemuOpts argument that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QemuOptsError {
    /// `id=` that is not an identifier.
    #[error("Parameter 'id' expects an identifier\nIdentifiers consist of letters, digits, '-', '.', '_', starting with a letter.")]
    BadId,
}

/// A parsed QemuOpts argument.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QemuOpts {
    /// The first `id=` (later ones are ignored, as QEMU ignores them).
    pub id: Option<String>,
    /// Every other element, in order, as `(key, value)`; short-form booleans come as
    /// `on`/`off`, the implied key under its name.
    pub pairs: Vec<(String, String)>,
    /// A `help` or `?` element was given.
    pub help: bool,
    /// QEMU's deprecation warning (two lines) for each short-form boolean.
    pub warnings: Vec<String>,
}

/// One element. For a short-form boolean, `flag_prefix` is `Some("no")` or `Some("")`
/// and `key` has the `no` removed; written-out elements have `None`.
struct Element {
    key: String,
    value: String,
    flag_prefix: Option<&'static str>,
}

/// Reads a value up to a single comma (`,,` is a comma); returns it and the rest,
/// which starts at that comma or is empty.
fn value(s: &str) -> (String, &str) {
    let mut out = String::new();
    let mut it = s.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        if c == ',' {
            if it.peek().map(|&(_, c)| c) != Some(',') {
                return (out, &s[i..]);
            }
            it.next();
        }
        out.push(c);
    }
    (out, "")
}

/// Splits `s` into elements as QEMU's QemuOpts parser does.
fn elements(s: &str, implied: Option<&str>) -> Vec<Element> {
    let mut out = Vec::new();
    let mut rest = s;
    let mut implied = implied;
    while !rest.is_empty() {
        let head = rest.find(['=', ',']).unwrap_or(rest.len());
        let (e, next) = if rest[head..].starts_with('=') {
            let (v, next) = value(&rest[head + 1..]);
            let e = Element {
                key: rest[..head].to_string(),
                value: v,
                flag_prefix: None,
            };
            (e, next)
        } else if let Some(k) = implied {
            let (v, next) = value(rest);
            let e = Element {
                key: k.to_string(),
                value: v,
                flag_prefix: None,
            };
            (e, next)
        } else {
            let name = &rest[..head];
            let e = match name.strip_prefix("no") {
                Some(n) => Element {
                    key: n.to_string(),
                    value: "off".into(),
                    flag_prefix: Some("no"),
                },
                None => Element {
                    key: name.to_string(),
                    value: "on".into(),
                    flag_prefix: Some(""),
                },
            };
            (e, &rest[head..])
        };
        out.push(e);
        rest = next.strip_prefix(',').unwrap_or(next);
        implied = None;
    }
    out
}

/// True for QEMU's identifiers: a letter, then letters, digits, `-`, `.`, `_`.
pub fn id_wellformed(id: &str) -> bool {
    id.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

impl QemuOpts {
    /// Parses `s`; `implied` names the key of a bare first element.
    pub fn parse(s: &str, implied: Option<&str>) -> Result<Self, QemuOptsError> {
        // QEMU looks for id= in a pass of its own, with no implied key.
        let id = elements(s, None)
            .into_iter()
            .find(|e| e.key == "id")
            .map(|e| e.value);
        if id.as_deref().is_some_and(|i| !id_wellformed(i)) {
            return Err(QemuOptsError::BadId);
        }
        let mut o = QemuOpts {
            id,
            ..Default::default()
        };
        for e in elements(s, implied) {
            if e.key == "id" {
                continue;
            }
            if let Some(prefix) = e.flag_prefix {
                if prefix.is_empty() && (e.key == "help" || e.key == "?") {
                    o.help = true;
                    continue;
                }
                let instead = if e.key == "delay" {
                    format!("nodelay={}", if prefix.is_empty() { "off" } else { "on" })
                } else {
                    format!("{}={}", e.key, e.value)
                };
                o.warnings.push(format!(
                    "short-form boolean option '{prefix}{}' deprecated\nPlease use {instead} instead",
                    e.key
                ));
            }
            o.pairs.push((e.key, e.value));
        }
        Ok(o)
    }

    /// The last value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Removes every `key` and returns the last value.
    pub fn take(&mut self, key: &str) -> Option<String> {
        let v = self.get(key).map(String::from);
        self.pairs.retain(|(k, _)| k != key);
        v
    }

    /// The first key left, for "Invalid parameter" errors once the known keys are
    /// taken.
    pub fn first_key(&self) -> Option<&str> {
        self.pairs.first().map(|(k, _)| k.as_str())
    }
}

/// Reads a boolean option value as QEMU does (`on`/`yes`/`true`/`y` and
/// `off`/`no`/`false`/`n`); the error is QEMU's text naming `key`.
///
/// ```
/// assert_eq!(oxemu_opts::qemu_opts::parse_bool("server", "on"), Ok(true));
/// assert_eq!(oxemu_opts::qemu_opts::parse_bool("wait", "maybe").unwrap_err(), "Parameter 'wait' expects 'on' or 'off'");
/// ```
pub fn parse_bool(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "yes" | "true" | "y" => Ok(true),
        "off" | "no" | "false" | "n" => Ok(false),
        _ => Err(format!("Parameter '{key}' expects 'on' or 'off'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(s: &str, implied: Option<&str>) -> Vec<(String, String)> {
        QemuOpts::parse(s, implied).unwrap().pairs
    }

    fn p(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn implied_first_key_takes_escapes() {
        assert_eq!(
            pairs("null,,x,gic=3,,", Some("backend")),
            [p("backend", "null,x"), p("gic", "3,")]
        );
        assert_eq!(
            pairs(",x=1", Some("backend")),
            [p("backend", ""), p("x", "1")]
        );
        // Only the first element is implied; one with `=` is not.
        assert_eq!(pairs("a=1,b", Some("t")), [p("a", "1"), p("b", "on")]);
        assert_eq!(pairs("", Some("t")), []);
    }

    #[test]
    fn trailing_commas_and_flags() {
        assert_eq!(pairs("none,", Some("type")), [p("type", "none")]);
        let o = QemuOpts::parse("socket,server,nowait,no", Some("backend")).unwrap();
        assert_eq!(
            o.pairs,
            [
                p("backend", "socket"),
                p("server", "on"),
                p("wait", "off"),
                p("", "off")
            ]
        );
        assert_eq!(
            o.warnings,
            [
                "short-form boolean option 'server' deprecated\nPlease use server=on instead",
                "short-form boolean option 'nowait' deprecated\nPlease use wait=off instead",
                "short-form boolean option 'no' deprecated\nPlease use =off instead",
            ]
        );
        let o = QemuOpts::parse("x,nodelay", Some("t")).unwrap();
        assert_eq!(
            o.warnings,
            ["short-form boolean option 'nodelay' deprecated\nPlease use nodelay=on instead"]
        );
        // Flag names end at a comma: `a,,b` is the flags `a`, `` and `b`.
        assert_eq!(
            pairs("a,,b", None),
            [p("a", "on"), p("", "on"), p("b", "on")]
        );
        assert_eq!(pairs("=x", None), [p("", "x")]);
    }

    #[test]
    fn help_queries() {
        let o = QemuOpts::parse("virtio-blk,help", Some("driver")).unwrap();
        assert!(o.help && o.warnings.is_empty());
        assert_eq!(o.pairs, [p("driver", "virtio-blk")]);
        assert!(QemuOpts::parse("x,?", Some("driver")).unwrap().help);
        // A bare first element with an implied key is a value, even `help`.
        let o = QemuOpts::parse("help", Some("driver")).unwrap();
        assert!(!o.help);
        assert_eq!(o.get("driver"), Some("help"));
        // `nohelp` is help=off, no query.
        assert!(!QemuOpts::parse("x,nohelp", Some("d")).unwrap().help);
    }

    #[test]
    fn ids_and_repeats() {
        let mut o = QemuOpts::parse("null,id=a,id=1x,x=1,x=2", Some("backend")).unwrap();
        assert_eq!(o.id.as_deref(), Some("a"));
        assert_eq!(o.get("x"), Some("2"));
        assert_eq!(o.take("backend").as_deref(), Some("null"));
        assert_eq!(o.first_key(), Some("x"));
        assert_eq!(o.take("x").as_deref(), Some("2"));
        assert_eq!(o.first_key(), None);
        assert_eq!(
            QemuOpts::parse("null,id=c,,", Some("backend")),
            Err(QemuOptsError::BadId)
        );
        assert_eq!(
            QemuOpts::parse("id=1x", None).unwrap_err().to_string(),
            "Parameter 'id' expects an identifier\nIdentifiers consist of letters, digits, '-', '.', '_', starting with a letter."
        );
        assert!(id_wellformed("a-b.c_1") && !id_wellformed("") && !id_wellformed("a b"));
    }

    #[test]
    fn booleans() {
        for (v, b) in [("on", true), ("y", true), ("false", false), ("n", false)] {
            assert_eq!(parse_bool("k", v), Ok(b));
        }
        assert_eq!(
            parse_bool("s", "On").unwrap_err(),
            "Parameter 's' expects 'on' or 'off'"
        );
    }
}
