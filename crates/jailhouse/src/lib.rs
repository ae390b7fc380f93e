//! Jailhouse hypervisor configuration files: a reader and writer for the
//! binary format of `JAILHOUSE_CONFIG_REVISION` 14, a builder API, and a
//! rules engine that checks a set of configs (the system config with its root
//! cell plus every non-root cell meant to run at the same time) for
//! consistency.
//!
//! ```
//! use oxemu_jailhouse::{builder::CellBuilder, model::*, parse_cell, write_cell, ParseOptions};
//! let cell = CellBuilder::new("demo", Arch::X86).cpus(0b10).comm_region(0x100000).build();
//! let bytes = write_cell(&cell);
//! assert_eq!(parse_cell(&bytes, "demo.cell", ParseOptions::default()).unwrap().config, cell);
//! ```
#![warn(missing_docs)]

pub mod builder;
pub mod compile;
pub mod decompile;
pub mod dump;
pub mod finding;
pub mod model;
pub mod parse;
pub mod rules;
pub mod write;

pub use finding::{Finding, Severity};
pub use parse::{
    detect_kind, parse_cell, parse_system, ConfigKind, ParseError, ParseErrorKind, ParseOptions,
    Parsed,
};
pub use rules::{check, mem_flags, ArchMismatch, ConfigSet, RuleInfo, RULES};
pub use write::{write_cell, write_system};
