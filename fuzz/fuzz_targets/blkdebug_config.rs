//! blkdebug rule files (QEMU's `-readconfig` syntax): any text is parsed without a
//! panic, and every error is a non-empty message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oxemu_block::blkdebug::{parse_config, Rules};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut rules = Rules::default();
    match parse_config(&text, &mut rules) {
        Ok(()) => {
            for r in &rules.inject {
                assert!(r.errno >= 0);
            }
        }
        Err(e) => assert!(!e.is_empty()),
    }
});
