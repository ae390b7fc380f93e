//! QEMU's qtest protocol for oxemu.
//!
//! - [`server`]: the accelerator's side: executes `outb`…`readq`, `read`/`write`,
//!   `b64read`/`b64write`, `memset`, `clock_step`/`clock_set`, IRQ interception and
//!   `set_irq_in` against a [`oxemu_devmodel::machine::Machine`], with QEMU 7.2's
//!   reply formats. Malformed lines, which QEMU aborts on, get `FAIL <reason>`.
//! - [`protocol`]: the line parser (fuzzed by `fuzz/fuzz_targets/qtest_line.rs`).
//! - [`client`]: a libqtest-like client that starts a binary and drives it.
//!
//! The server runs in-process too, which is how tests and fuzzers use it without a
//! socket:
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use oxemu_devmodel::{boards, machine::{Machine, MachineConfig}, qom::TypeRegistry, types};
//! use oxemu_qtest::server::QtestServer;
//!
//! let mut reg = TypeRegistry::new();
//! types::register_standard(&mut reg);
//! let mt = &boards::machine_types()[0];
//! let mut m = Machine::new(reg, mt, &[]);
//! m.init(&MachineConfig { ram_size: Some(1 << 20), ..Default::default() }).unwrap();
//! let out = Arc::new(Mutex::new(Vec::<u8>::new()));
//! struct W(Arc<Mutex<Vec<u8>>>);
//! impl std::io::Write for W {
//!     fn write(&mut self, b: &[u8]) -> std::io::Result<usize> { self.0.lock().unwrap().write(b) }
//!     fn flush(&mut self) -> std::io::Result<()> { Ok(()) }
//! }
//! let s = QtestServer::new(Arc::new(Mutex::new(m)), true, Box::new(W(out.clone())), None);
//! s.handle_line("writel 0x100 0xcafe");
//! s.handle_line("readl 0x100");
//! s.handle_line("read 0x0 0x10000000000");
//! let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
//! assert_eq!(text, "OK\nOK 0x000000000000cafe\nFAIL read: size 0x10000000000 exceeds the limit of 0x1000000 bytes\n");
//! ```

#![warn(missing_docs)]

pub mod b64;
pub mod client;
pub mod protocol;
pub mod server;

#[cfg(test)]
mod server_tests;
