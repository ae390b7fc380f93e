//! `oxemu-jailhouse`: check and dump Jailhouse binary configs.
//!
//! Exit codes: 0 no errors (warnings may be printed), 1 at least one error
//! finding (or, with `--strict`, any finding), 2 unusable input.

use clap::{Parser, Subcommand, ValueEnum};
use oxemu_jailhouse::{
    check, compile, decompile, detect_kind, dump, parse_cell, parse_system, ConfigKind, ConfigSet,
    Finding, ParseError, ParseOptions, Severity,
};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "oxemu-jailhouse",
    version,
    about = "Jailhouse configuration tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Work with binary cell/system configs.
    #[command(subcommand)]
    Config(ConfigCmd),
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Human,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum DumpFormat {
    Text,
    C,
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Check a system config and the non-root cells that will run together.
    Check {
        /// System config (with the root cell).
        system: String,
        /// Non-root cell configs.
        cells: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "human")]
        format: Format,
        /// Report a file size that disagrees with the header counts as a warning instead of an error.
        #[arg(long)]
        lenient: bool,
        /// Count warnings as errors for the exit code.
        #[arg(long)]
        strict: bool,
        /// Jailhouse source tree: files ending in `.c` are compiled against
        /// its headers with gcc and objcopy, as its configs/Makefile does.
        #[arg(long, value_name = "DIR")]
        jailhouse_src: Option<String>,
        /// Architecture (`x86`, `arm`, `arm64`) of the C configs; default: the
        /// config's directory name if it is one of those, else the host's.
        #[arg(long, value_name = "ARCH", requires = "jailhouse_src", value_parser = ["x86", "arm", "arm64"])]
        arch: Option<String>,
    },
    /// Print a system or cell config in readable form, or as C source.
    Dump {
        /// Config file.
        file: String,
        /// `text` (readable) or `c` (C source that Jailhouse's configs/Makefile compiles back to the same bytes).
        #[arg(long, value_enum, default_value = "text")]
        format: DumpFormat,
        /// Accept trailing data.
        #[arg(long)]
        lenient: bool,
    },
}

/// Largest config file accepted. Real configs are a few KiB; the cap keeps
/// `/dev/zero` or a disk image passed by mistake from exhausting memory.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

fn read(path: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("{path}: cannot open: {e}"))?;
    let mut data = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("{path}: cannot read: {e}"))?;
    if data.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!(
            "{path}: larger than {} MiB, not a Jailhouse config",
            MAX_CONFIG_BYTES >> 20
        ));
    }
    Ok(data)
}

fn warning_finding(w: &ParseError, cell: String) -> Finding {
    Finding {
        rule: "trailing-data",
        severity: Severity::Warning,
        cell,
        file: w.file.clone(),
        array: None,
        index: None,
        address: Some(w.offset),
        other_cell: None,
        other_array: None,
        other_index: None,
        message: format!("{}: config size disagrees with its header counts", w.file),
        details: vec![w.to_string()],
    }
}

/// How `config check` gets the bytes of a file: read a binary config, or
/// compile a `.c` one with `--jailhouse-src`.
struct Source<'a> {
    jailhouse_src: Option<&'a str>,
    arch: Option<&'a str>,
}

impl Source<'_> {
    fn bytes(&self, path: &str) -> Result<Vec<u8>, String> {
        if !path.ends_with(".c") {
            return read(path);
        }
        let Some(src) = self.jailhouse_src else {
            return Err(format!(
                "{path}: C source; pass --jailhouse-src DIR to compile it against Jailhouse's headers"
            ));
        };
        let c = std::path::Path::new(path);
        let arch = compile::config_arch(self.arch, c);
        compile::compile_config(std::path::Path::new(src), &arch, c)
    }
}

fn load(
    system: &str,
    cells: &[String],
    opts: ParseOptions,
    source: &Source,
) -> Result<(ConfigSet, Vec<Finding>), String> {
    let parsed = parse_system(&source.bytes(system)?, system, opts).map_err(|e| e.to_string())?;
    let mut extra: Vec<Finding> = parsed
        .warnings
        .iter()
        .map(|w| warning_finding(w, parsed.config.root_cell.name()))
        .collect();
    let mut set = ConfigSet::new(parsed.config, Vec::new());
    set.system_file = system.to_string();
    for path in cells {
        let p = parse_cell(&source.bytes(path)?, path, opts).map_err(|e| e.to_string())?;
        extra.extend(
            p.warnings
                .iter()
                .map(|w| warning_finding(w, p.config.name())),
        );
        set.cells.push(p.config);
        set.cell_files.push(path.clone());
    }
    set.verify_arch().map_err(|e| e.to_string())?;
    Ok((set, extra))
}

fn run_check(
    system: &str,
    cells: &[String],
    format: Format,
    lenient: bool,
    strict: bool,
    source: &Source,
) -> Result<bool, String> {
    let (set, mut findings) = load(system, cells, ParseOptions { lenient }, source)?;
    findings.extend(check(&set));
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = findings.len() - errors;
    match format {
        Format::Json => {
            let doc = serde_json::json!({
                "system": system,
                "architecture": set.system.arch(),
                "root_cell": set.system.root_cell.name(),
                "cells": set.cells.iter().zip(&set.cell_files)
                    .map(|(c, f)| serde_json::json!({"name": c.name(), "file": f}))
                    .collect::<Vec<_>>(),
                "findings": findings,
                "errors": errors,
                "warnings": warnings,
                "strict": strict,
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?
            );
        }
        Format::Human => {
            println!("Reading configuration set:");
            println!("  Architecture:  {}", set.system.arch().name());
            println!(
                "  Root cell:     {} ({system})",
                set.system.root_cell.name()
            );
            for (c, f) in set.cells.iter().zip(&set.cell_files) {
                println!("  Non-root cell: {} ({f})", c.name());
            }
            for f in &findings {
                println!("{}", f.to_human());
            }
            if findings.is_empty() {
                println!("No findings.");
            } else {
                let note = if strict && warnings > 0 {
                    "; --strict: warnings count as errors"
                } else {
                    ""
                };
                println!(
                    "{} findings ({errors} errors, {warnings} warnings{note})",
                    findings.len()
                );
            }
        }
    }
    Ok(errors == 0 && !(strict && warnings > 0))
}

fn run_dump(file: &str, format: DumpFormat, lenient: bool) -> Result<(), String> {
    let data = read(file)?;
    let opts = ParseOptions { lenient };
    let (text, warnings) = match detect_kind(&data) {
        Some(ConfigKind::Cell) => {
            let p = parse_cell(&data, file, opts).map_err(|e| e.to_string())?;
            let text = match format {
                DumpFormat::Text => dump::dump_cell(&p.config),
                DumpFormat::C => {
                    decompile::cell_to_c(&p.config).map_err(|e| format!("{file}: {e}"))?
                }
            };
            (text, p.warnings)
        }
        // Anything else goes through the system parser, whose errors name
        // revision-13 files, wrong magic and truncation precisely.
        _ => {
            let p = parse_system(&data, file, opts).map_err(|e| e.to_string())?;
            let text = match format {
                DumpFormat::Text => dump::dump_system(&p.config),
                DumpFormat::C => {
                    decompile::system_to_c(&p.config).map_err(|e| format!("{file}: {e}"))?
                }
            };
            (text, p.warnings)
        }
    };
    if let (DumpFormat::C, Some(w)) = (format, warnings.first()) {
        return Err(format!(
            "{w}; C source cannot carry trailing data, so --format=c refuses it"
        ));
    }
    for w in warnings {
        eprintln!("Warning: {w}");
    }
    print!("{text}");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Top::Config(cmd) = cli.command;
    let result = match cmd {
        ConfigCmd::Check {
            system,
            cells,
            format,
            lenient,
            strict,
            jailhouse_src,
            arch,
        } => run_check(
            &system,
            &cells,
            format,
            lenient,
            strict,
            &Source {
                jailhouse_src: jailhouse_src.as_deref(),
                arch: arch.as_deref(),
            },
        )
        .inspect_err(|e| {
            if let Format::Json = format {
                // Machine readers get the reason on stdout, too.
                println!("{}", serde_json::json!({ "error": e }));
            }
        }),
        ConfigCmd::Dump {
            file,
            format,
            lenient,
        } => run_dump(&file, format, lenient).map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("oxemu-jailhouse: {e}");
            ExitCode::from(2)
        }
    }
}
