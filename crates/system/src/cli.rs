//! The command line, parsed as `qemu-system-aarch64` parses it.
//!
//! Options take one dash or two. Errors carry QEMU's texts; [`CliError::at`] is
//! the option the error is reported against (QEMU prefixes `-opt arg: ` to some
//! messages and not to others, and so does oxemu, option by option).

use oxemu_opts::keyval::parse_keyval_into;
use oxemu_opts::qemu_opts::QemuOpts;
use serde_json::{Map, Value};

/// A command-line error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    /// `-opt arg` to prefix, if QEMU prefixes it.
    pub at: Option<String>,
    /// The message (may span lines).
    pub msg: String,
}

impl CliError {
    /// An error located at option `opt` with argument `arg`.
    pub fn at(opt: &str, arg: Option<&str>, msg: impl Into<String>) -> Self {
        CliError {
            at: Some(match arg {
                Some(a) => format!("-{opt} {a}"),
                None => format!("-{opt}"),
            }),
            msg: msg.into(),
        }
    }
    /// An error without location.
    pub fn plain(msg: impl Into<String>) -> Self {
        CliError {
            at: None,
            msg: msg.into(),
        }
    }
    /// The text printed to stderr (each line prefixed like QEMU's error_report).
    pub fn render(&self, prog: &str) -> String {
        let mut lines = self.msg.lines();
        let first = lines.next().unwrap_or("");
        let mut s = match &self.at {
            Some(a) => format!("{prog}: {a}: {first}\n"),
            None => format!("{prog}: {first}\n"),
        };
        for l in lines {
            s.push_str(l);
            s.push('\n');
        }
        s
    }
}

/// What a help request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Help {
    /// `-M help`
    Machines,
    /// `-cpu help`
    Cpus,
    /// `-device help`
    Devices,
    /// `-device DRIVER,help`
    DeviceProps(String),
    /// `-object help`
    Objects,
    /// `-h`, `-help`
    Usage,
    /// `-version`
    Version,
}

/// A QemuOpts-syntax option argument, as written and as parsed.
#[derive(Debug, Clone)]
pub struct OptArg {
    /// The argument as given (for error locations).
    pub text: String,
    /// The argument parsed (empty for a JSON argument).
    pub opts: QemuOpts,
    /// A JSON object argument (`-device {...}`, `-object {...}`), typed as QMP
    /// arguments are.
    pub json: Option<Map<String, Value>>,
}

/// `-device`/`-object` argument: a JSON object when it starts with `{` (QEMU 7.2's
/// rule), QemuOpts otherwise.
fn json_or_opts(
    opt: &str,
    v: &str,
    implied: &str,
    warnings: &mut Vec<CliError>,
) -> Result<OptArg, CliError> {
    if !v.starts_with('{') {
        return qemu_opts(opt, v, Some(implied), warnings);
    }
    match oxemu_opts::json::parse(v) {
        Ok(Value::Object(m)) => Ok(OptArg {
            text: v.to_string(),
            opts: QemuOpts::default(),
            json: Some(m),
        }),
        Ok(_) => Err(CliError::at(opt, Some(v), "JSON option must be an object")),
        Err(e) => Err(CliError::at(opt, Some(v), format!("JSON parse error, {e}"))),
    }
}

/// Everything the command line asked for, in order where order matters.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// `-M`/`-machine` options in keyval syntax, merged (a later value wins).
    pub machine: Map<String, Value>,
    /// `-cpu` model and its properties.
    pub cpu: Option<String>,
    /// `-smp`.
    pub smp: Option<String>,
    /// `-m`.
    pub mem: Option<OptArg>,
    /// `-object`s.
    pub objects: Vec<OptArg>,
    /// `-device`s.
    pub devices: Vec<OptArg>,
    /// `-global`s, as written.
    pub globals: Vec<String>,
    /// `-chardev`s.
    pub chardevs: Vec<OptArg>,
    /// `-serial`s.
    pub serials: Vec<String>,
    /// `-mon`s.
    pub mons: Vec<OptArg>,
    /// `-qmp`s.
    pub qmps: Vec<String>,
    /// `-monitor`s.
    pub monitors: Vec<String>,
    /// `-qtest`.
    pub qtest: Option<String>,
    /// `-qtest-log`.
    pub qtest_log: Option<String>,
    /// `-accel`s.
    pub accels: Vec<OptArg>,
    /// `-display`.
    pub display: Option<String>,
    /// `-nographic`.
    pub nographic: bool,
    /// `-nodefaults`.
    pub nodefaults: bool,
    /// `-S`.
    pub stopped: bool,
    /// `-name`.
    pub name: Option<OptArg>,
    /// `-pidfile`.
    pub pidfile: Option<String>,
    /// `-daemonize`.
    pub daemonize: bool,
    /// A help request (handled before anything is built).
    pub help: Option<Help>,
}

const WITH_ARG: &[&str] = &[
    "M",
    "machine",
    "cpu",
    "smp",
    "m",
    "object",
    "device",
    "global",
    "chardev",
    "serial",
    "mon",
    "qmp",
    "monitor",
    "qtest",
    "qtest-log",
    "accel",
    "display",
    "name",
    "pidfile",
];
const FLAGS: &[&str] = &[
    "nographic",
    "nodefaults",
    "S",
    "daemonize",
    "h",
    "help",
    "version",
];
/// Options QEMU has that oxemu does not implement (refused with a clear error).
const UNSUPPORTED: &[&str] = &[
    "blockdev",
    "drive",
    "kernel",
    "initrd",
    "append",
    "bios",
    "netdev",
    "nic",
    "vga",
    "enable-kvm",
    "icount",
];

/// Parses a QemuOpts-syntax argument of `-opt`; its deprecation warnings go to
/// `warnings`, as QEMU prints them while it reads the command line.
fn qemu_opts(
    opt: &str,
    v: &str,
    implied: Option<&str>,
    warnings: &mut Vec<CliError>,
) -> Result<OptArg, CliError> {
    let opts =
        QemuOpts::parse(v, implied).map_err(|e| CliError::at(opt, Some(v), e.to_string()))?;
    for w in &opts.warnings {
        warnings.push(CliError::at(opt, Some(v), format!("warning: {w}")));
    }
    // QEMU lists an option's parameters for `help`; oxemu does that for -device only.
    if opts.help && opt != "device" && opt != "object" {
        return Err(CliError::at(
            opt,
            Some(v),
            format!("oxemu-system-aarch64 cannot list the parameters of -{opt} (help)"),
        ));
    }
    Ok(OptArg {
        text: v.to_string(),
        opts,
        json: None,
    })
}

/// `-global`: `DRIVER.PROP=VALUE` (driver and property up to 63 characters each, as
/// QEMU reads them), else QemuOpts `driver=D,property=P,value=V`.
pub fn parse_global(
    g: &str,
    warnings: &mut Vec<CliError>,
) -> Result<(String, String, String), CliError> {
    let short = g.split_once('=').and_then(|(dp, v)| {
        let (d, p) = dp.split_once('.')?;
        let ok = |x: &str| (1..=63).contains(&x.len()) && !x.contains(['.', '=']);
        (ok(d) && (1..=63).contains(&p.len()))
            .then(|| (d.to_string(), p.to_string(), v.to_string()))
    });
    if let Some(t) = short {
        return Ok(t);
    }
    let mut o = qemu_opts("global", g, None, warnings)?.opts;
    let (d, p, v) = (o.take("driver"), o.take("property"), o.take("value"));
    if o.help {
        return Err(CliError::at(
            "global",
            Some(g),
            "Help is not available for this option",
        ));
    }
    if let Some(k) = o.first_key() {
        return Err(CliError::at(
            "global",
            Some(g),
            format!("Invalid parameter '{k}'"),
        ));
    }
    match (d, p, v) {
        (Some(d), Some(p), Some(v)) => Ok((d, p, v)),
        _ => Err(CliError::at(
            "global",
            Some(g),
            "options 'driver', 'property', and 'value' are required",
        )),
    }
}

/// Parses the arguments after the program name. QEMU's deprecation warnings for the
/// options read go to `warnings` (print them before any error).
pub fn parse(args: &[String], warnings: &mut Vec<CliError>) -> Result<Config, CliError> {
    let mut c = Config::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        let Some(name) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
            return Err(CliError::plain(format!(
                "{a}: oxemu-system-aarch64 has no disk images: positional arguments are not accepted"
            )));
        };
        if FLAGS.contains(&name) {
            match name {
                "nographic" => c.nographic = true,
                "nodefaults" => c.nodefaults = true,
                "S" => c.stopped = true,
                "daemonize" => c.daemonize = true,
                "version" => c.help = Some(Help::Version),
                _ => c.help = Some(Help::Usage),
            }
            continue;
        }
        if UNSUPPORTED.contains(&name) {
            return Err(CliError::at(
                name,
                None,
                format!("option -{name} is not supported by oxemu-system-aarch64 yet"),
            ));
        }
        if !WITH_ARG.contains(&name) {
            return Err(CliError::at(name, None, "invalid option"));
        }
        let Some(v) = args.get(i).cloned() else {
            return Err(CliError::at(name, None, "requires an argument"));
        };
        i += 1;
        let is_help = |s: &str| s == "help" || s == "?";
        match name {
            "M" | "machine" => {
                let help = parse_keyval_into(&mut c.machine, &v, Some("type"))
                    .map_err(|e| CliError::at(name, Some(&v), e.to_string()))?;
                if help {
                    if c.machine.contains_key("type") {
                        return Err(CliError::at(
                            name,
                            Some(&v),
                            "oxemu-system-aarch64 cannot list a machine's properties (help)",
                        ));
                    }
                    c.help = Some(Help::Machines);
                }
            }
            "cpu" => {
                if is_help(&v) {
                    c.help = Some(Help::Cpus);
                }
                c.cpu = Some(v);
            }
            "smp" => c.smp = Some(v),
            "m" => c.mem = Some(qemu_opts(name, &v, Some("size"), warnings)?),
            "object" => {
                let a = json_or_opts(name, &v, "qom-type", warnings)?;
                if a.opts.get("qom-type").is_some_and(is_help) {
                    c.help = Some(Help::Objects);
                } else if a.opts.help {
                    return Err(CliError::at(
                        name,
                        Some(&v),
                        "oxemu-system-aarch64 cannot list an object type's properties (help)",
                    ));
                }
                c.objects.push(a)
            }
            "device" => {
                let a = json_or_opts(name, &v, "driver", warnings)?;
                match a.opts.get("driver") {
                    Some(d) if is_help(d) => c.help = Some(Help::Devices),
                    Some(d) if a.opts.help => c.help = Some(Help::DeviceProps(d.to_string())),
                    _ => {}
                }
                c.devices.push(a)
            }
            "global" => {
                parse_global(&v, warnings)?;
                c.globals.push(v)
            }
            "chardev" => c
                .chardevs
                .push(qemu_opts(name, &v, Some("backend"), warnings)?),
            "serial" => c.serials.push(v),
            "mon" => c.mons.push(qemu_opts(name, &v, Some("chardev"), warnings)?),
            "qmp" => c.qmps.push(v),
            "monitor" => c.monitors.push(v),
            "qtest" => c.qtest = Some(v),
            "qtest-log" => c.qtest_log = Some(v),
            "accel" => c.accels.push(qemu_opts(name, &v, Some("accel"), warnings)?),
            "display" => c.display = Some(v),
            "name" => c.name = Some(qemu_opts(name, &v, Some("guest"), warnings)?),
            "pidfile" => c.pidfile = Some(v),
            _ => unreachable!("every option in WITH_ARG is handled"),
        }
    }
    Ok(c)
}

/// The `-h` text.
pub fn usage() -> String {
    "usage: oxemu-system-aarch64 [options]\n\
\n\
Machine: -M/-machine TYPE[,memory-backend=ID][,accel=qtest]  -cpu cortex-a57|cortex-a72|max[,PROP=V]\n\
         -smp N  -m SIZE  -object TYPE,id=ID,...  -device DRIVER[,PROP=V]  -global D.P=V\n\
Chardev: -chardev socket|file|stdio|null|pipe,id=ID,...  -serial SPEC  -mon chardev=ID,mode=control\n\
         socket: path=PATH or host=HOST,port=PORT[,server=on,wait=off]\n\
         -qmp SPEC (unix:PATH|tcp:HOST:PORT[,server=on,wait=off]|chardev:ID)  -monitor none\n\
qtest:   -accel qtest  -qtest unix:PATH|tcp:HOST:PORT|stdio|chardev:ID  -qtest-log FILE|none\n\
Other:   -display none  -nographic  -nodefaults  -S  -name NAME  -pidfile FILE  -daemonize\n\
Help:    -M help  -cpu help  -object help  -device help  -device DRIVER,help  -version\n\
\n\
oxemu-system-aarch64 has no CPU emulation: -accel tcg and -accel kvm are refused.\n"
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(a: &[&str]) -> Result<Config, CliError> {
        parse(
            &a.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            &mut Vec::new(),
        )
    }

    #[test]
    fn options_and_errors() {
        let c = p(&[
            "-M",
            "none,",
            "--machine",
            "memory-backend=m",
            "-S",
            "-device",
            "x,id=a",
        ])
        .unwrap();
        assert_eq!(c.machine["type"], "none");
        assert_eq!(c.machine["memory-backend"], "m");
        assert!(c.stopped);
        assert_eq!(c.devices[0].text, "x,id=a");
        assert_eq!(c.devices[0].opts.id.as_deref(), Some("a"));
        assert_eq!(
            p(&["-m"]).unwrap_err(),
            CliError::at("m", None, "requires an argument")
        );
        assert_eq!(
            p(&["-bogus"]).unwrap_err().render("q"),
            "q: -bogus: invalid option\n"
        );
        assert_eq!(p(&["-device", "help"]).unwrap().help, Some(Help::Devices));
        assert_eq!(
            p(&["-device", "foo,help"]).unwrap().help,
            Some(Help::DeviceProps("foo".into()))
        );
        assert_eq!(p(&["-M", "?"]).unwrap().help, Some(Help::Machines));
        assert!(p(&["-drive", "file=x"])
            .unwrap_err()
            .msg
            .contains("not supported"));
    }
}
