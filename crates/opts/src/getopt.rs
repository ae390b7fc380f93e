//! A getopt-style command-line parser with the syntax of QEMU's tools (getopt_long):
//! `-c 10`, `-c10`, `-qc10` (bundled flags), `--pattern=5`, `--pattern 5`, flags,
//! positional arguments in any order, and `--` to end the options.
//!
//! ```
//! use oxemu_opts::getopt::{opt, parse};
//! let spec = [opt(Some('f'), Some("format"), true), opt(Some('q'), None, false)];
//! let argv: Vec<String> = ["-qfraw", "a.img", "--format=qcow2"].map(String::from).into();
//! let p = parse(&argv, &spec).unwrap();
//! assert_eq!(p.get("format"), Some("qcow2"));
//! assert!(p.has("q"));
//! assert_eq!(p.args, ["a.img"]);
//! ```

/// A command-line usage error, worded as getopt_long words it (for example
/// `unrecognized option '--foo'`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Declares one option: its short letter (if any), long name (if any), and whether it
/// takes a value.
#[derive(Clone, Copy)]
pub struct Opt {
    /// Short form, as in `-c`.
    pub short: Option<char>,
    /// Long form, as in `--pattern`.
    pub long: Option<&'static str>,
    /// The option takes a value.
    pub value: bool,
}

/// Shorthand constructor for [`Opt`].
pub const fn opt(short: Option<char>, long: Option<&'static str>, value: bool) -> Opt {
    Opt { short, long, value }
}

/// Parsed command line: options in order (keyed by their long name, else their short
/// letter) and positional arguments.
#[derive(Debug, Default)]
pub struct Parsed {
    /// (`name`, `value`) pairs; flags have an empty value.
    pub opts: Vec<(String, String)>,
    /// Positional arguments.
    pub args: Vec<String>,
    /// For each entry of `opts`, the option as the user typed it, without its value:
    /// `--block` for an abbreviated `--blockdev`, and with a trailing `=` when the value
    /// was attached (`--blockdev=`). QEMU's messages name options this way.
    pub spelled: Vec<String>,
}

impl Parsed {
    /// The last value given for `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.opts
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// True if the flag `name` was given.
    pub fn has(&self, name: &str) -> bool {
        self.opts.iter().any(|(k, _)| k == name)
    }
}

fn key(o: &Opt) -> String {
    match (o.long, o.short) {
        (Some(l), _) => l.to_string(),
        (None, Some(s)) => s.to_string(),
        (None, None) => unreachable!("option without a name"),
    }
}

/// How usage errors are worded. qemu-img prints its own texts; qemu-nbd and
/// qemu-storage-daemon let glibc's getopt_long print its texts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wording {
    /// qemu-img's: `unrecognized option '-z'`, `missing argument for option '-c'`.
    QemuImg,
    /// glibc's: `invalid option -- 'z'`, `option requires an argument -- 'k'`,
    /// `option '--socket' requires an argument`.
    Glibc,
}

/// Parses `argv` (without the program and subcommand names) against `spec`, with
/// qemu-img's wording of errors.
pub fn parse(argv: &[String], spec: &[Opt]) -> Result<Parsed, UsageError> {
    parse_with(argv, spec, Wording::QemuImg)
}

/// Finds the long option `name` in `spec`: an exact match, or else (as getopt_long)
/// the one option that `name` abbreviates.
fn find_long<'a>(spec: &'a [Opt], name: &str, arg: &str) -> Result<Option<&'a Opt>, UsageError> {
    if let Some(o) = spec.iter().find(|o| o.long == Some(name)) {
        return Ok(Some(o));
    }
    let mut cands = spec
        .iter()
        .filter(|o| !name.is_empty() && o.long.is_some_and(|l| l.starts_with(name)));
    match (cands.next(), cands.next()) {
        (Some(o), None) => Ok(Some(o)),
        (Some(a), Some(b)) => {
            let mut list = format!("'--{}' '--{}'", a.long.unwrap_or(""), b.long.unwrap_or(""));
            for o in cands {
                list += &format!(" '--{}'", o.long.unwrap_or(""));
            }
            let arg = arg.split('=').next().unwrap_or(arg);
            Err(UsageError(format!(
                "option '{arg}' is ambiguous; possibilities: {list}"
            )))
        }
        _ => Ok(None),
    }
}

/// Parses `argv` against `spec`, wording errors as `wording` says.
pub fn parse_with(argv: &[String], spec: &[Opt], wording: Wording) -> Result<Parsed, UsageError> {
    let glibc = wording == Wording::Glibc;
    let mut p = Parsed::default();
    let mut i = 0;
    while i < argv.len() {
        let a = &argv[i];
        i += 1;
        if a == "--" {
            p.args.extend(argv[i..].iter().cloned());
            break;
        }
        if let Some(long) = a.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            let inline_given = inline.is_some();
            let unknown = || {
                let shown = if glibc {
                    format!("--{name}")
                } else {
                    a.clone()
                };
                UsageError(format!("unrecognized option '{shown}'"))
            };
            let o = find_long(spec, name, a)?.ok_or_else(unknown)?;
            let full = o.long.unwrap_or(name);
            let v = if o.value {
                match inline {
                    Some(v) => v,
                    None if i < argv.len() => {
                        i += 1;
                        argv[i - 1].clone()
                    }
                    None if glibc => {
                        return Err(UsageError(format!(
                            "option '--{full}' requires an argument"
                        )))
                    }
                    None => return Err(UsageError(format!("missing argument for option '{a}'"))),
                }
            } else if inline.is_some() {
                return Err(UsageError(format!(
                    "option '--{full}' doesn't allow an argument"
                )));
            } else {
                String::new()
            };
            p.opts.push((key(o), v));
            p.spelled.push(match inline_given {
                true => format!("--{name}="),
                false => format!("--{name}"),
            });
        } else if a.len() > 1 && a.starts_with('-') {
            let chars: Vec<char> = a[1..].chars().collect();
            let mut j = 0;
            while j < chars.len() {
                let c = chars[j];
                j += 1;
                let Some(o) = spec.iter().find(|o| o.short == Some(c)) else {
                    return Err(UsageError(if glibc {
                        format!("invalid option -- '{c}'")
                    } else {
                        format!("unrecognized option '{a}'")
                    }));
                };
                if o.value {
                    let rest: String = chars[j..].iter().collect();
                    let v = if !rest.is_empty() {
                        rest
                    } else if i < argv.len() {
                        i += 1;
                        argv[i - 1].clone()
                    } else if glibc {
                        return Err(UsageError(format!("option requires an argument -- '{c}'")));
                    } else {
                        return Err(UsageError(format!("missing argument for option '{a}'")));
                    };
                    p.opts.push((key(o), v));
                    p.spelled.push(format!("-{c}"));
                    break;
                }
                p.opts.push((key(o), String::new()));
                p.spelled.push(format!("-{c}"));
            }
        } else {
            p.args.push(a.clone());
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    const SPEC: &[Opt] = &[
        opt(Some('c'), None, true),
        opt(Some('w'), None, false),
        opt(None, Some("pattern"), true),
        opt(Some('q'), None, false),
    ];

    #[test]
    fn short_long_and_positional_mix() {
        let p = parse(&v(&["-c10", "img", "-wq", "--pattern=7", "-c", "20"]), SPEC).unwrap();
        assert_eq!(p.get("c"), Some("20"));
        assert!(p.has("w") && p.has("q"));
        assert_eq!(p.get("pattern"), Some("7"));
        assert_eq!(p.args, vec!["img"]);
    }

    #[test]
    fn unknown_and_incomplete_options_are_errors() {
        assert!(matches!(parse(&v(&["--foo"]), SPEC), Err(UsageError(m)) if m.contains("'--foo'")));
        // qemu-img's words name the whole argument.
        assert!(
            matches!(parse(&v(&["-z"]), SPEC), Err(UsageError(m)) if m == "unrecognized option '-z'")
        );
        assert!(
            matches!(parse(&v(&["-c"]), SPEC), Err(UsageError(m)) if m == "missing argument for option '-c'")
        );
        assert!(matches!(
            parse(&v(&["--pattern"]), SPEC),
            Err(UsageError(_))
        ));
    }

    #[test]
    fn glibc_wording_and_long_abbreviations() {
        const NBD: &[Opt] = &[
            opt(Some('k'), Some("socket"), true),
            opt(Some('r'), Some("read-only"), false),
            opt(None, Some("pid-file"), true),
            opt(None, Some("persistent"), false),
        ];
        let g = |a: &[&str]| parse_with(&v(a), NBD, Wording::Glibc);
        assert_eq!(g(&["-z"]).unwrap_err().0, "invalid option -- 'z'");
        assert_eq!(g(&["--zz"]).unwrap_err().0, "unrecognized option '--zz'");
        assert_eq!(
            g(&["-k"]).unwrap_err().0,
            "option requires an argument -- 'k'"
        );
        assert_eq!(
            g(&["--socket"]).unwrap_err().0,
            "option '--socket' requires an argument"
        );
        assert_eq!(
            g(&["--read-only=1"]).unwrap_err().0,
            "option '--read-only' doesn't allow an argument"
        );
        // Unambiguous prefixes name their option, as with getopt_long.
        let p = g(&["--sock=/s", "--read", "-rk/t"]).unwrap();
        assert_eq!(p.opts[0], ("socket".to_string(), "/s".to_string()));
        assert_eq!(p.spelled, ["--sock=", "--read", "-r", "-k"]);
        assert!(p.has("read-only"));
        assert_eq!(p.get("socket"), Some("/t"));
        assert_eq!(
            g(&["--p=x"]).unwrap_err().0,
            "option '--p' is ambiguous; possibilities: '--pid-file' '--persistent'"
        );
    }
}
