//! oxemu's NBD server.
//!
//! - [`proto`]: wire constants and encoders/decoders (sans-IO).
//! - [`handshake`]: option haggling as a state machine (sans-IO).
//! - [`transmission`]: request validation (sans-IO).
//! - [`stream`]: a connection's socket on the event loop, with optional TLS.
//! - [`server`]: [`NbdServer`] and [`NbdExport`], the API the storage daemon and
//!   `oxemu-nbd` use.
//! - [`tls`]: x509 credentials as QEMU's `tls-creds-x509` loads them.

#![warn(missing_docs)]

mod conn;
pub mod handshake;
pub mod proto;
pub mod server;
pub mod stream;
pub mod tls;
pub mod transmission;

pub use server::{
    NbdAddr, NbdExport, NbdExportOptions, NbdServer, NbdServerError, NbdServerOptions,
};
pub use tls::{TlsError, X509Creds};
