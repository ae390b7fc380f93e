//! Fuzzes the LUKS1 header parser and checker with arbitrary bytes, then, for headers
//! that pass and whose PBKDF2 counts are small, a key slot unlock against the input
//! itself as the volume (reads past its end see zeroes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use oxemu_crypto::header::Header;
use oxemu_crypto::luks::Luks;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::parse(data) {
        let _ = h.check();
        // Whatever was decoded encodes and decodes again.
        Header::parse(&h.to_bytes()).expect("re-encoded header parses");
    }
    let Ok(luks) = Luks::parse(data) else { return };
    let cheap = luks.header.mk_iterations <= 2000
        && luks.header.slots.iter().all(|s| !s.active() || s.iterations <= 2000);
    if cheap {
        let mut read = |at: u64, buf: &mut [u8]| {
            buf.fill(0);
            let start = (at as usize).min(data.len());
            let end = at.saturating_add(buf.len() as u64).min(data.len() as u64) as usize;
            buf[..end - start].copy_from_slice(&data[start..end]);
            Ok(())
        };
        let _ = luks.unlock(b"password", &mut read);
    }
});
