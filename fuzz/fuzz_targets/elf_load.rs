#![no_main]
//! Fuzzes the ELF parser of oxemu-x86_64: any input must give Ok or an error, never a panic.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = oxemu_dbt::elf::parse(data) {
        assert!(!info.segments.is_empty());
        for s in &info.segments {
            assert!(s.filesz <= s.memsz);
        }
    }
});
