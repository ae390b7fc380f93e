//! The QEMU Machine Protocol (QMP) for oxemu programs. QEMU's option syntax, which
//! QMP arguments share with command lines, is in `oxemu-opts`.
//!
//! - [`server`]: monitors on unix or TCP sockets speaking QMP exactly as QEMU does
//!   (greeting, `qmp_capabilities` negotiation, `execute` with `id`, error classes,
//!   timestamped events broadcast to every negotiated client).
//! - [`schema`]: QAPI schemas in QEMU's introspection format, the source of
//!   `query-qmp-schema` and of the command table.
//! - [`args`]: turning those JSON values into typed structures with QEMU's error texts.

#![warn(missing_docs)]

pub mod args;
pub mod error;
pub mod framing;
pub mod schema;
pub mod server;

pub use error::{ErrorClass, QmpError};
pub use server::{CommandInfo, Dispatcher, EventBus, QmpServer, VersionInfo};
