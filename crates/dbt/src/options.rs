//! Command-line options, as `qemu-x86_64` spells them.

use thiserror::Error;

/// Parsed options.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Options {
    /// `-cpu MODEL` (default `max`, as qemu-user).
    pub cpu: String,
    /// `-E var=val`, in order.
    pub set_env: Vec<(String, String)>,
    /// `-U var`, in order.
    pub unset_env: Vec<String>,
    /// `-L prefix`: where the ELF interpreter is looked up first.
    pub prefix: Option<String>,
    /// `-0 argv0`.
    pub argv0: Option<String>,
    /// `-d items`.
    pub log_items: Vec<String>,
    /// `-D file`.
    pub log_file: Option<String>,
    /// `-strace`.
    pub strace: bool,
    /// `-s size`: guest stack size in bytes.
    pub stack_size: u64,
    /// The program.
    pub program: String,
    /// Its arguments (after argv\[0\]).
    pub args: Vec<String>,
}

/// A bad command line.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum OptError {
    /// An option needs an argument that is missing.
    #[error("option {0} needs an argument")]
    MissingArg(String),
    /// An unknown option.
    #[error("unknown option {0}")]
    Unknown(String),
    /// An option's argument is malformed.
    #[error("bad argument for {0}: {1}")]
    BadArg(String, String),
    /// No program given.
    #[error("no program given (usage: oxemu-x86_64 [options] program [arguments...])")]
    NoProgram,
    /// `-h`/`-help`/`-version`/`-cpu help`: print this and exit 0.
    #[error("{0}")]
    Info(String),
}

/// Log items `-d` accepts.
pub const LOG_ITEMS: [&str; 3] = ["unimp", "in_asm", "strace"];

/// Usage text.
pub const USAGE: &str = "usage: oxemu-x86_64 [options] program [arguments...]
Options:
  -h, -help         print this help
  -version          print the version
  -cpu MODEL        CPU model (qemu64, Haswell, Skylake-Server, max, host; 'help' lists them)
  -E var=value      set an environment variable for the guest (comma-separated list allowed)
  -U var            unset an environment variable for the guest (comma-separated list allowed)
  -L path           look for the ELF interpreter under path first
  -0 argv0          argv[0] for the program
  -s size           guest stack size (suffix k, M or G allowed)
  -d item[,...]     log items: unimp, in_asm, strace
  -D logfile        write the log there instead of stderr
  -strace           log system calls
";

fn parse_size(s: &str) -> Option<u64> {
    let (n, mul) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1u64 << 10),
        'm' | 'M' => (&s[..s.len() - 1], 1 << 20),
        'g' | 'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    n.parse::<u64>().ok()?.checked_mul(mul)
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Options, OptError> {
    let mut o = Options {
        cpu: "max".into(),
        stack_size: 8 << 20,
        ..Default::default()
    };
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if !a.starts_with('-') || a == "-" {
            break;
        }
        let name = a.trim_start_matches('-');
        if a == "--" {
            i += 1;
            break;
        }
        let takes_arg = matches!(name, "cpu" | "E" | "U" | "L" | "0" | "d" | "D" | "s");
        let val = if takes_arg {
            i += 1;
            Some(
                args.get(i)
                    .ok_or_else(|| OptError::MissingArg(a.clone()))?
                    .clone(),
            )
        } else {
            None
        };
        match (name, val) {
            ("h" | "help", _) => return Err(OptError::Info(USAGE.into())),
            ("version", _) => {
                return Err(OptError::Info(format!(
                    "oxemu-x86_64 version {}\n",
                    env!("CARGO_PKG_VERSION")
                )))
            }
            ("strace", _) => o.strace = true,
            ("cpu", Some(v)) => {
                if v == "help" || v == "?" {
                    let mut s = String::from("Available CPUs:\n");
                    for m in crate::cpu::MODEL_NAMES {
                        s.push_str(&format!("  {m}\n"));
                    }
                    return Err(OptError::Info(s));
                }
                if !crate::cpu::MODEL_NAMES.contains(&v.as_str()) {
                    return Err(OptError::BadArg(
                        a.clone(),
                        format!("unknown CPU model '{v}' (try -cpu help)"),
                    ));
                }
                o.cpu = v;
            }
            ("E", Some(v)) => {
                for kv in v.split(',') {
                    let Some((k, val)) = kv.split_once('=') else {
                        return Err(OptError::BadArg(
                            a.clone(),
                            format!("'{kv}' is not var=value"),
                        ));
                    };
                    if k.is_empty() {
                        return Err(OptError::BadArg(
                            a.clone(),
                            format!("'{kv}' has an empty name"),
                        ));
                    }
                    o.set_env.push((k.into(), val.into()));
                }
            }
            ("U", Some(v)) => {
                for k in v.split(',') {
                    if k.is_empty() || k.contains('=') {
                        return Err(OptError::BadArg(
                            a.clone(),
                            format!("'{k}' is not a variable name"),
                        ));
                    }
                    o.unset_env.push(k.into());
                }
            }
            ("L", Some(v)) => o.prefix = Some(v),
            ("0", Some(v)) => o.argv0 = Some(v),
            ("D", Some(v)) => o.log_file = Some(v),
            ("s", Some(v)) => {
                o.stack_size = parse_size(&v)
                    .filter(|s| (64 << 10..=1 << 32).contains(s))
                    .ok_or_else(|| {
                        OptError::BadArg(a.clone(), format!("'{v}' is not a size in 64k..4G"))
                    })?;
            }
            ("d", Some(v)) => {
                for item in v.split(',') {
                    if !LOG_ITEMS.contains(&item) {
                        return Err(OptError::BadArg(
                            a.clone(),
                            format!("unknown log item '{item}' (have: {})", LOG_ITEMS.join(", ")),
                        ));
                    }
                    o.log_items.push(item.into());
                }
            }
            _ => return Err(OptError::Unknown(a.clone())),
        }
        i += 1;
    }
    let Some(p) = args.get(i) else {
        return Err(OptError::NoProgram);
    };
    o.program = p.clone();
    o.args = args[i + 1..].to_vec();
    Ok(o)
}

/// Applies `-E`/`-U` to an environment.
pub fn apply_env(env: &mut Vec<(String, String)>, o: &Options) {
    for k in &o.unset_env {
        env.retain(|(n, _)| n != k);
    }
    for (k, v) in &o.set_env {
        match env.iter_mut().find(|(n, _)| n == k) {
            Some(e) => e.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_qemu_style() {
        let o = parse(&v(&[
            "-cpu", "Haswell", "-E", "A=1,B=2", "-U", "C", "-0", "zero", "-d", "unimp", "/bin/ls",
            "-l",
        ]))
        .unwrap();
        assert_eq!(o.cpu, "Haswell");
        assert_eq!(
            o.set_env,
            vec![("A".into(), "1".into()), ("B".into(), "2".into())]
        );
        assert_eq!(o.program, "/bin/ls");
        assert_eq!(o.args, v(&["-l"]));
        assert_eq!(
            parse(&v(&["-cpu"])),
            Err(OptError::MissingArg("-cpu".into()))
        );
        assert!(matches!(
            parse(&v(&["-cpu", "z80", "x"])),
            Err(OptError::BadArg(..))
        ));
        assert!(matches!(
            parse(&v(&["-frob", "x"])),
            Err(OptError::Unknown(_))
        ));
        assert!(matches!(
            parse(&v(&["-E", "novalue", "x"])),
            Err(OptError::BadArg(..))
        ));
        assert_eq!(parse(&v(&[])), Err(OptError::NoProgram));
        let mut env = vec![
            ("C".to_string(), "x".to_string()),
            ("A".to_string(), "0".to_string()),
        ];
        apply_env(&mut env, &o);
        assert_eq!(
            env,
            vec![
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), "2".to_string())
            ]
        );
    }
}
