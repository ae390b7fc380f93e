//! The QEMU Machine Protocol (QMP) for oxemu programs, and QEMU's option syntax.
//!
//! - [`server`]: monitors on unix or TCP sockets speaking QMP exactly as QEMU does
//!   (greeting, `qmp_capabilities` negotiation, `execute` with `id`, error classes,
//!   timestamped events broadcast to every negotiated client).
//! - [`keyval`]: `key=value,a.b=c` and JSON option strings, parsed into the same JSON
//!   values that QMP commands receive, so one typed structure serves both.
//! - [`json`]: QEMU's JSON dialect (strings may be single-quoted), used for QMP input,
//!   `json:` file names and JSON option arguments.
//! - [`args`]: turning those JSON values into typed structures with QEMU's error texts.

#![warn(missing_docs)]

pub mod args;
pub mod error;
pub mod framing;
pub mod json;
pub mod keyval;
pub mod server;

pub use error::{ErrorClass, QmpError};
pub use server::{CommandInfo, Dispatcher, EventBus, QmpServer, VersionInfo};
