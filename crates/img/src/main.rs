//! `oxemu-img`: qemu-img's command line on oxemu's block layer.

mod amend;
mod bench;
mod bitmap;
mod blkdebug;
mod check;
mod commit;
mod convert;
mod create;
mod create_qcow2;
mod dd;
mod encryption;
mod file_hints;
mod filename;
mod image;
mod info;
mod map;
mod measure;
mod objects;
mod opts;
mod progress;
mod rebase;
mod resize;
mod snapshot;

use std::process::ExitCode;

/// What can go wrong in a subcommand. Printed prefixed with the program's name (see
/// [`prog_name`]); lines after the first are hints and printed as they are.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command line; a hint to `--help` follows.
    #[error("{0}")]
    Usage(String),
    /// Anything else, already phrased for the user.
    #[error("{0}")]
    Msg(String),
    /// A message and a specific exit code (`check`: 63 = unsupported; `compare`: 2).
    #[error("{1}")]
    Exit(u8, String),
    /// An error followed by a warning line (`resize` of a shrink without `--shrink`).
    #[error("{0}")]
    Warned(String, String),
}

impl From<oxemu_opts::getopt::UsageError> for Error {
    fn from(e: oxemu_opts::getopt::UsageError) -> Self {
        Error::Usage(e.0)
    }
}

/// The name messages are prefixed with: the basename of `argv[0]`, as QEMU's tools do,
/// so that a `qemu-img` symlink to oxemu-img reads as qemu-img.
pub fn prog_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::env::args_os()
            .next()
            .map(|a| {
                let a = a.to_string_lossy().into_owned();
                a.rsplit('/').next().unwrap_or(&a).to_string()
            })
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| "oxemu-img".into())
    })
}

/// Prints `msg` to stderr as QEMU's `error_report` does: `prog: msg`. Rust's
/// " (os error N)" suffixes are dropped: QEMU prints just the strerror text.
pub fn report(msg: &str) {
    eprintln!("{}: {}", prog_name(), strip_os_errors(msg));
}

/// `msg` without the " (os error N)" that `std::io::Error` appends to strerror.
pub(crate) fn strip_os_errors(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find(" (os error ") {
        out.push_str(&rest[..i]);
        let tail = &rest[i + " (os error ".len()..];
        match tail.find(')') {
            Some(j) if tail[..j].bytes().all(|b| b.is_ascii_digit()) => rest = &tail[j + 1..],
            _ => {
                out.push_str(" (os error ");
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Prints a warning as QEMU's `warn_report` does: `prog: warning: msg`.
pub fn warn(msg: &str) {
    eprintln!("{}: warning: {msg}", prog_name());
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Msg(e.to_string())
    }
}

/// Pretty-prints JSON with QEMU's four-space indentation.
pub fn json_pretty(v: &serde_json::Value) -> String {
    use serde::Serialize;
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    v.serialize(&mut ser)
        .expect("serializing a JSON value cannot fail");
    let text = String::from_utf8(out).expect("serde_json writes UTF-8");
    // QEMU prints an empty list over two lines, the bracket at the list's own indent.
    let mut fixed = String::with_capacity(text.len());
    for line in text.lines() {
        let body = line.trim_end_matches(',');
        if let Some(head) = body.strip_suffix("[]") {
            let indent = line.len() - line.trim_start().len();
            fixed += head;
            fixed += "[\n";
            fixed += &" ".repeat(indent);
            fixed += "]";
            fixed += &line[body.len()..];
        } else {
            fixed += line;
        }
        fixed.push('\n');
    }
    fixed.pop();
    fixed
}

const HELP: &str = "\
oxemu-img: disk image utility with qemu-img's command line
usage: oxemu-img [standard options] command [command options]

Command syntax:
  bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio]
        [-n] [--no-drain] [-o offset] [--pattern=pattern] [-q] [-s buffer_size]
        [-S step_size] [-t cache] [-w] [-U] [--random] filename
        (--random is an oxemu extension: uniformly random offsets, multiples of the step)
  bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)... [-b source_file [-F source_fmt]] [-g granularity] [-f fmt] filename bitmap
  check [-f fmt] [--output=ofmt] [-r leaks|all] [-U] filename
  commit [-f fmt] [-d] [-p] [-q] filename
  compare [-f fmt] [-F fmt] [-q] [-s] [-U] filename1 filename2
  convert [-c] [-f fmt] [-O output_fmt] [-o options] [-B backing_file -F backing_fmt] [--target-is-zero] [-m num] [-W] [-S size] [-n] [-p] [-q] [-t cache] [-T src_cache] [-U] filename output_filename
  create [-q] [-f fmt] [-o options] filename [size]
  dd [-f fmt] [-O output_fmt] [-U] [bs=block_size] [count=blocks] [skip=blocks] if=input of=output
  info [-f fmt] [--output=ofmt] [-U] filename
  measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | [-f fmt] [-U] filename]
  map [-f fmt] [--output=ofmt] [--start-offset=OFFSET] [--max-length=LEN] [-U] filename
  rebase [-f fmt] [-q] [-u] [-b backing_file] [-F backing_fmt] filename
  resize [-f fmt] [-q] [--preallocation=prealloc] [--shrink] filename [+ | -]size
  snapshot [-U] [-q] [-l | -a snapshot | -c snapshot | -d snapshot] filename

Parameters:
  'cache' is none, writeback (default), writethrough, directsync or unsafe
  'aio' is threads (default), native (needs cache=none) or io_uring
  'size' is a number with an optional k, M, G, T, P or E suffix
  'ofmt' is human (default) or json
";

fn run(argv: &[String]) -> Result<(), Error> {
    let mut argv = argv.to_vec();
    objects::take_global_options(&mut argv)?;
    let argv = &argv[..];
    let Some(cmd) = argv.first() else {
        return Err(Error::Usage("Not enough arguments".into()));
    };
    let rest = &argv[1..];
    if cmd == "compare" {
        return match map::run_compare(rest) {
            Ok(0) => Ok(()),
            Ok(c) => Err(Error::Exit(c, String::new())),
            Err(Error::Msg(m)) => Err(Error::Exit(2, m)),
            Err(e) => Err(e),
        };
    }
    match cmd.as_str() {
        "create" => create::run(rest),
        "info" => info::run(rest),
        "bench" => bench::run(rest),
        "map" => map::run_map(rest),
        "convert" => convert::run_convert(rest),
        "resize" => resize::run(rest),
        "check" => check::run(rest),
        "commit" => commit::run(rest),
        "rebase" => rebase::run(rest),
        "amend" => amend::run(rest),
        "snapshot" => snapshot::run(rest),
        "bitmap" => bitmap::run(rest),
        "measure" => measure::run(rest),
        "dd" => dd::run(rest),
        "-h" | "--help" => {
            print!("{HELP}\nSupported formats: luks qcow2 raw\n");
            Ok(())
        }
        "-V" | "--version" => {
            println!(
                "oxemu-img version {} (compatible with qemu-img 7.2)",
                env!("CARGO_PKG_VERSION")
            );
            Ok(())
        }
        other => Err(Error::Usage(format!("Command not found: {other}"))),
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match run(&argv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::Usage(m)) => {
            report(&m);
            eprintln!("Try '{} --help' for more information", prog_name());
            ExitCode::FAILURE
        }
        Err(Error::Exit(code, m)) => {
            if !m.is_empty() {
                report(&m);
            }
            ExitCode::from(code)
        }
        Err(Error::Msg(m)) => {
            report(&m);
            ExitCode::FAILURE
        }
        Err(Error::Warned(m, w)) => {
            report(&m);
            warn(&w);
            ExitCode::FAILURE
        }
    }
}
