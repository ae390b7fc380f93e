//! Fuzzes the blklogwrites (dm-log-writes) log reader with arbitrary bytes: it must
//! return an error or a log whose entries all lie inside the input; an accepted
//! log, written out again entry by entry, parses to the same entries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oxemu_block::blklogwrites::{format::Super, parse_log};

fuzz_target!(|data: &[u8]| {
    let Ok(log) = parse_log(data.to_vec()) else {
        return;
    };
    let ss = log.sector_size() as usize;
    assert_eq!(log.entries.len() as u64, log.sup.nr_entries);
    let mut out = Super::new(log.sup.nr_entries, log.sup.sectorsize).encode(ss);
    for e in &log.entries {
        assert!(e.data.end <= data.len() && e.mark.end <= data.len());
        let _ = e.range(log.sector_size());
        out.extend_from_slice(&data[e.log_offset as usize..e.log_offset as usize + ss]);
        out.extend_from_slice(log.data(e));
    }
    let again = parse_log(out).expect("re-encoded log parses");
    assert_eq!(again.entries.len(), log.entries.len());
    for (a, b) in again.entries.iter().zip(&log.entries) {
        assert_eq!(a.header, b.header);
        assert_eq!(again.data(a), log.data(b));
    }
});
