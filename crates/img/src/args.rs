//! A small getopt-style parser that accepts qemu-img's option syntax: `-c 10`, `-c10`,
//! `--pattern=5`, `--pattern 5`, flags, and positional arguments in any order.

use crate::Error;

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

/// Parses `argv` (without the program and subcommand names) against `spec`.
pub fn parse(argv: &[String], spec: &[Opt]) -> Result<Parsed, Error> {
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
            let o = spec
                .iter()
                .find(|o| o.long == Some(name))
                .ok_or_else(|| Error::Usage(format!("unrecognized option '{a}'")))?;
            let v = if o.value {
                match inline {
                    Some(v) => v,
                    None if i < argv.len() => {
                        i += 1;
                        argv[i - 1].clone()
                    }
                    None => return Err(Error::Usage(format!("missing argument for option '{a}'"))),
                }
            } else if inline.is_some() {
                return Err(Error::Usage(format!(
                    "option '--{name}' doesn't allow an argument"
                )));
            } else {
                String::new()
            };
            p.opts.push((key(o), v));
        } else if a.len() > 1 && a.starts_with('-') {
            let chars: Vec<char> = a[1..].chars().collect();
            let mut j = 0;
            while j < chars.len() {
                let c = chars[j];
                j += 1;
                let o = spec
                    .iter()
                    .find(|o| o.short == Some(c))
                    .ok_or_else(|| Error::Usage(format!("unrecognized option '{a}'")))?;
                if o.value {
                    let rest: String = chars[j..].iter().collect();
                    let v = if !rest.is_empty() {
                        rest
                    } else if i < argv.len() {
                        i += 1;
                        argv[i - 1].clone()
                    } else {
                        return Err(Error::Usage(format!("missing argument for option '{a}'")));
                    };
                    p.opts.push((key(o), v));
                    break;
                }
                p.opts.push((key(o), String::new()));
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
        assert!(
            matches!(parse(&v(&["--foo"]), SPEC), Err(Error::Usage(m)) if m.contains("'--foo'"))
        );
        // qemu-img's words name the whole argument.
        assert!(
            matches!(parse(&v(&["-z"]), SPEC), Err(Error::Usage(m)) if m == "unrecognized option '-z'")
        );
        assert!(
            matches!(parse(&v(&["-c"]), SPEC), Err(Error::Usage(m)) if m == "missing argument for option '-c'")
        );
        assert!(matches!(
            parse(&v(&["--pattern"]), SPEC),
            Err(Error::Usage(_))
        ));
    }
}
