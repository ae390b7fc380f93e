//! Feeds arbitrary descriptor chains and guest memory contents through the
//! vhost-user-blk request parser.
//!
//! Input: byte 0 = descriptor count (mod 17); then 13 bytes per descriptor
//! (u64 address, u32 length, u8 flags: bit 0 = device-writable); the rest is copied into
//! guest memory at 0. Guest memory has two 64 KiB regions with a hole between them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oxemu_vhost_user_blk::request::{parse_request, Desc, Limits};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

thread_local! {
    static MEM: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000), (GuestAddress(0x20000), 0x10000)]).unwrap();
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, mut rest)) = data.split_first() else { return };
    let mut descs = Vec::new();
    for _ in 0..(n % 17) {
        if rest.len() < 13 {
            return;
        }
        let addr = u64::from_le_bytes(rest[..8].try_into().unwrap());
        let len = u32::from_le_bytes(rest[8..12].try_into().unwrap());
        descs.push(Desc { addr: addr % 0x40000, len: len % 0x20000, write: rest[12] & 1 != 0 });
        rest = &rest[13..];
    }
    MEM.with(|m| {
        let k = rest.len().min(0x10000);
        m.write_slice(&rest[..k], GuestAddress(0)).unwrap();
        let limits = Limits {
            capacity: 1 << 24,
            block_size: 512,
            seg_max: 8,
            size_max: 65536,
            writable: n & 0x80 != 0,
            max_discard_sectors: 1 << 15,
        };
        if let Ok(r) = parse_request(&descs, m, &limits) {
            // Every range the request will touch lies in guest memory.
            for (a, l) in r.data {
                assert!(m.get_slice(GuestAddress(a), l as usize).is_ok() || l == 0);
            }
        }
    });
});
