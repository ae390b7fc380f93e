//! QMP monitor input and QEMU option strings: the stream framer must split any byte
//! stream into bounded texts, QEMU's JSON dialect (single-quoted strings) must parse
//! or fail cleanly, and the keyval/JSON option parser must return a value or
//! an error for any string, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oxemu_qmp::framing::{Frame, Framer};
use oxemu_opts::keyval::parse_option;

fuzz_target!(|data: &[u8]| {
    let mut framer = Framer::new(4096);
    let mut frames = Vec::new();
    for chunk in data.chunks(7) {
        framer.push(chunk, &mut frames);
    }
    for f in frames {
        if let Frame::Text(t) = f {
            assert!(t.len() <= 4097);
            let _ = oxemu_opts::json::parse_slice(&t);
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = parse_option(s, Some("type"));
        let _ = parse_option(s, None);
    }
});
