//! oxemu's NBD server and client.
//!
//! - [`proto`]: wire constants and encoders/decoders (sans-IO).
//! - [`handshake`]: option haggling as a state machine (sans-IO).
//! - [`transmission`]: request validation (sans-IO).
//! - [`stream`]: a connection's socket on the event loop, with optional TLS.
//! - [`server`]: [`NbdServer`] and [`NbdExport`], the API the storage daemon and
//!   `oxemu-nbd` use.
//! - [`tls`]: x509 credentials as QEMU's `tls-creds-x509` loads them.
//! - [`client`]: [`NbdClient`], an NBD export as a `BlockDriver` (QEMU's `nbd` driver).
//! - [`negotiate`]: the client's handshake and export listing over a blocking stream.
//! - [`reply`]: validation and decoding of transmission replies (sans-IO).

#![warn(missing_docs)]

pub mod client;
mod conn;
pub mod handshake;
pub mod negotiate;
pub mod proto;
pub mod reply;
pub mod server;
pub mod stream;
pub mod tls;
pub mod transmission;

pub use client::{NbdClient, NbdClientOptions, NbdTarget};
pub use server::{
    NbdAddr, NbdExport, NbdExportOptions, NbdServer, NbdServerError, NbdServerOptions,
};
pub use tls::{TlsError, X509Creds};
