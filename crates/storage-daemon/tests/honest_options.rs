//! Options that must act, not just parse: iothread polling knobs oxemu cannot honour
//! are refused.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_oxemu-storage-daemon");

#[test]
fn unsupported_iothread_polling_knobs_are_refused() {
    let out = Command::new(BIN)
        .args(["--object", "iothread,id=io0,poll-grow=2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("poll-grow") && e.contains("not supported"),
        "{e}"
    );
}
