//! `oxemu-x86_64`: a same-ISA user-mode binary translator for x86-64 Linux programs
//! (work in progress; see `NOTES.md` for what works).
//!
//! This crate currently provides the validated ELF parser, the CPU models (CPUID contents as
//! QEMU presents them), the guest address-space map, the command-line options and the
//! translator's building blocks (context switch, code cache, block translator).  The
//! translator is not yet wired into the binary, which validates its input and then refuses
//! to run the program.
//!
//! ```
//! use oxemu_dbt::cpu::CpuModel;
//! let m = CpuModel::by_name("qemu64").unwrap();
//! // Leaf 0: highest leaf 0xd, vendor "AuthenticAMD".
//! assert_eq!(m.cpuid(0, 0)[0], 0xd);
//! assert!(oxemu_dbt::elf::parse(b"not an elf").is_err());
//! ```

pub mod cache;
pub mod cpu;
pub mod ctx;
pub mod elf;
pub mod log;
pub mod mm;
pub mod options;
pub mod translate;
