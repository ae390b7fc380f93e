//! `oxemu-x86_64`: a same-ISA user-mode binary translator for x86-64 Linux programs
//! (work in progress; see `NOTES.md` for what works).
//!
//! It loads static and dynamic (PIE, with `ld-linux-x86-64.so.2`) programs, translates guest
//! blocks into a code cache by copy-through with rewritten control flow, answers `cpuid` from
//! a CPU model and handles system calls.  Signals, threads, `fork`/`execve` and
//! self-modifying-code detection are not implemented yet (see `NOTES.md`).
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
pub mod dispatch;
pub mod elf;
pub mod loader;
pub mod log;
pub mod mm;
pub mod options;
pub mod translate;
