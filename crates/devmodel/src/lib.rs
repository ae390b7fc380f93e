//! oxemu's device model, usable in-process by tests and fuzzers.
//!
//! - [`memory`]: memory regions (RAM, MMIO/port I/O, aliases, containers) placed
//!   with priorities into address spaces, flattened and dispatched with QEMU's
//!   access-size rules; [`mtree`] prints them as `info mtree` does.
//! - [`backend`]: host memory behind guest RAM (`memory-backend-ram`, `-memfd`,
//!   `-file`, with `share=`).
//! - [`qom`]: a QOM-like type registry and composition tree with typed properties.
//! - [`gpio`]: IRQ and GPIO lines; [`clock`]: the virtual clock and its timers.
//! - [`machine`]: machine types with versions, aliases and compat properties, and a
//!   live [`machine::Machine`]; [`boards`] lists oxemu's machine types; [`types`]
//!   registers the standard types (CPU models, backends, [`testdev`]).
//!
//! ```
//! use oxemu_devmodel::{boards, machine::{Machine, MachineConfig}, qom::TypeRegistry, types};
//!
//! let mut reg = TypeRegistry::new();
//! types::register_standard(&mut reg);
//! let mt = boards::machine_types().into_iter().find(|m| m.name == "none").unwrap();
//! let mut m = Machine::new(reg, &mt, &[]);
//! m.init(&MachineConfig { ram_size: Some(1 << 20), ..Default::default() }).unwrap();
//! m.device_add("oxemu-test-device", Some("t0"), &[("addr".into(), "0x100000".into())]).unwrap();
//! let mut id = [0u8; 4];
//! m.read_memory(0x100000, &mut id);
//! assert_eq!(u32::from_le_bytes(id), oxemu_devmodel::testdev::ID);
//! m.write_memory(0x10, b"ram!");
//! let mut back = [0u8; 4];
//! m.read_memory(0x10, &mut back);
//! assert_eq!(&back, b"ram!");
//! assert!(oxemu_devmodel::mtree::info_mtree(&m.memory).contains("(prio 0, ram): ram"));
//! ```

#![warn(missing_docs)]

pub mod backend;
pub mod boards;
pub mod clock;
pub mod gpio;
pub mod machine;
pub mod memory;
pub mod mtree;
pub mod qom;
pub mod testdev;
pub mod types;
