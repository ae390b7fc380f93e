//! QemuOpts-style option arguments (`-machine`, `-device`, `-chardev`, `-mon`, …).
//!
//! Elements are split on single commas (`,,` is a literal comma, through
//! `oxemu_opts::keyval::split_elements`). The first element may omit its key when
//! the option has an implied one (`-device DRIVER`, `-chardev BACKEND`). A later
//! element without `=` means `KEY=on`, as QemuOpts reads it. Empty elements
//! (`-M virt,`) are skipped, as QEMU skips them.

/// Parsed option: ordered `(key, value)` pairs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Opts(pub Vec<(String, String)>);

impl Opts {
    /// Parses `s`; `implied` names the key of a leading element without `=`.
    pub fn parse(s: &str, implied: Option<&str>) -> Result<Self, String> {
        let mut out = Vec::new();
        for (i, e) in oxemu_opts::keyval::split_elements(s)
            .into_iter()
            .enumerate()
        {
            if e.is_empty() {
                continue;
            }
            match e.split_once('=') {
                Some((k, v)) => {
                    if k.is_empty() {
                        return Err(format!("Invalid parameter '{e}'"));
                    }
                    out.push((k.to_string(), v.to_string()));
                }
                None => match implied {
                    Some(k) if i == 0 => out.push((k.to_string(), e)),
                    _ => out.push((e, "on".to_string())),
                },
            }
        }
        Ok(Opts(out))
    }

    /// The last value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Removes every `key` and returns the last value.
    pub fn take(&mut self, key: &str) -> Option<String> {
        let v = self.get(key).map(String::from);
        self.0.retain(|(k, _)| k != key);
        v
    }

    /// The first key left, for "unknown parameter" errors.
    pub fn first_key(&self) -> Option<&str> {
        self.0.first().map(|(k, _)| k.as_str())
    }
}

/// Parses a QEMU boolean option value.
pub fn bool_opt(key: &str, v: &str) -> Result<bool, String> {
    oxemu_devmodel::qom::parse_bool(v)
        .ok_or_else(|| format!("Parameter '{key}' expects 'on' or 'off'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implied_keys_flags_and_escapes() {
        let o = Opts::parse("virt,,x,gic-version=3,,", Some("type")).unwrap();
        assert_eq!(o.get("type"), Some("virt,x"));
        assert_eq!(o.get("gic-version"), Some("3,"));
        let o = Opts::parse("none,", Some("type")).unwrap();
        assert_eq!(o.0, [("type".into(), "none".into())]);
        let o = Opts::parse("socket,id=c,server,wait=off", Some("backend")).unwrap();
        assert_eq!(o.get("server"), Some("on"));
        assert!(Opts::parse("=x", None).is_err());
        assert_eq!(
            bool_opt("s", "maybe").unwrap_err(),
            "Parameter 's' expects 'on' or 'off'"
        );
    }
}
