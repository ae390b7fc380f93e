//! `oxemu-img`: qemu-img's command line on oxemu's block layer.

mod amend;
mod args;
mod bench;
mod check;
mod commit;
mod convert;
mod create;
mod create_qcow2;
mod image;
mod info;
mod map;
mod progress;
mod rebase;
mod snapshot;

use std::process::ExitCode;

/// What can go wrong in a subcommand. Printed as one line prefixed with `oxemu-img: `.
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
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

const HELP: &str = "\
oxemu-img: disk image utility with qemu-img's command line
usage: oxemu-img [standard options] command [command options]

Command syntax:
  bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio]
        [-n] [--no-drain] [-o offset] [--pattern=pattern] [-q] [-s buffer_size]
        [-S step_size] [-t cache] [-w] [-U] [--random] filename
        (--random is an oxemu extension: uniformly random offsets, multiples of the step)
  check [-f fmt] [--output=ofmt] [-r leaks|all] [-U] filename
  commit [-f fmt] [-d] [-q] filename
  compare [-f fmt] [-F fmt] [-q] [-s] [-U] filename1 filename2
  convert [-c] [-f fmt] [-O output_fmt] [-o options] [-B backing_file -F backing_fmt] [--target-is-zero] [-m num] [-W] [-S size] [-n] [-p] [-q] [-t cache] [-T src_cache] [-U] filename output_filename
  create [-q] [-f fmt] [-o options] filename [size]
  info [-f fmt] [--output=ofmt] [-U] filename
  map [-f fmt] [--output=ofmt] [--start-offset=OFFSET] [--max-length=LEN] [-U] filename
  rebase [-f fmt] [-q] [-u] [-b backing_file] [-F backing_fmt] filename
  resize [-f fmt] [-q] [--shrink] filename [+ | -]size
  snapshot [-U] [-q] [-l | -a snapshot | -c snapshot | -d snapshot] filename

Parameters:
  'cache' is none, writeback (default), writethrough, directsync or unsafe
  'aio' is threads (default), native (needs cache=none) or io_uring
  'size' is a number with an optional k, M, G, T, P or E suffix
  'ofmt' is human (default) or json
";

fn run(argv: &[String]) -> Result<(), Error> {
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
        "resize" => convert::run_resize(rest),
        "check" => check::run(rest),
        "commit" => commit::run(rest),
        "rebase" => rebase::run(rest),
        "amend" => amend::run(rest),
        "snapshot" => snapshot::run(rest),
        "-h" | "--help" => {
            print!("{HELP}");
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
            eprintln!("oxemu-img: {m}");
            eprintln!("Try 'oxemu-img --help' for more information");
            ExitCode::FAILURE
        }
        Err(Error::Exit(code, m)) => {
            if !m.is_empty() {
                eprintln!("oxemu-img: {}", m.replace('\n', " "));
            }
            ExitCode::from(code)
        }
        Err(Error::Msg(m)) => {
            // One line: fold multi-line kernel/driver messages.
            eprintln!("oxemu-img: {}", m.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
