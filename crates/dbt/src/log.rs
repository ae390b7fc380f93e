//! `-d` logging (`unimp`, `in_asm`, `strace`), to stderr or the `-D` file.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// `-d unimp`: unsupported instructions and system calls.
pub static UNIMP: AtomicBool = AtomicBool::new(false);
/// `-d in_asm`: guest code of each translated block.
pub static IN_ASM: AtomicBool = AtomicBool::new(false);
/// `-strace`: every system call.
pub static STRACE: AtomicBool = AtomicBool::new(false);
/// The `-D` file, if any.
pub static FILE: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Writes one log line.
pub fn line(args: std::fmt::Arguments<'_>) {
    let s = format!("{args}\n");
    let mut f = FILE.lock().unwrap_or_else(|e| e.into_inner());
    match f.as_mut() {
        Some(f) => {
            let _ = f.write_all(s.as_bytes());
        }
        None => {
            let _ = std::io::stderr().write_all(s.as_bytes());
        }
    }
}

/// Logs under `-d unimp`.
pub fn unimp(args: std::fmt::Arguments<'_>) {
    if UNIMP.load(Ordering::Relaxed) {
        line(format_args!("oxemu-x86_64: {args}"));
    }
}

/// Logs a translated block under `-d in_asm`.
pub fn in_asm(rip: u64, insns: &[iced_x86::Instruction]) {
    if IN_ASM.load(Ordering::Relaxed) {
        let mut s = format!("IN: {rip:#x}\n");
        for i in insns {
            s.push_str(&format!(
                "{:#018x}:  {}\n",
                i.ip(),
                crate::translate::describe(i)
            ));
        }
        line(format_args!("{s}"));
    }
}
