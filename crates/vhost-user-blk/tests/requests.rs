//! The request parser against chains a buggy or malicious frontend could send, in
//! real guest memory.

use oxemu_vhost_user_blk::request::{parse_request, status, types, Desc, Limits, Op};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x10000),
        (GuestAddress(0x100000), 0x10000),
    ])
    .unwrap()
}

fn limits(writable: bool) -> Limits {
    Limits {
        capacity: 1 << 20,
        block_size: 512,
        seg_max: 4,
        size_max: 65536,
        writable,
        max_discard_sectors: 2048,
    }
}

fn header(m: &GuestMemoryMmap, at: u64, ty: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&ty.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    m.write_slice(&h, GuestAddress(at)).unwrap();
}

fn rd(addr: u64, len: u32) -> Desc {
    Desc {
        addr,
        len,
        write: false,
    }
}
fn wr(addr: u64, len: u32) -> Desc {
    Desc {
        addr,
        len,
        write: true,
    }
}

#[test]
fn well_formed_read_and_write_parse() {
    let m = mem();
    header(&m, 0, types::IN, 8);
    let r = parse_request(
        &[rd(0, 16), wr(0x1000, 4096), wr(0x2000, 1)],
        &m,
        &limits(true),
    )
    .unwrap();
    assert_eq!(r.op, Op::Read { offset: 4096 });
    assert_eq!(r.data, vec![(0x1000, 4096)]);
    assert_eq!(r.status_addr, 0x2000);
    // Any layout: header split over two descriptors, data and status sharing one.
    header(&m, 0, types::OUT, 1);
    let r = parse_request(
        &[rd(0, 10), rd(10, 6 + 512), wr(0x3000, 1)],
        &m,
        &limits(true),
    )
    .unwrap();
    assert_eq!(r.op, Op::Write { offset: 512 });
    assert_eq!(r.data, vec![(16, 512)]);
    header(&m, 0, types::IN, 0);
    let r = parse_request(&[rd(0, 16), wr(0x1000, 513)], &m, &limits(true)).unwrap();
    assert_eq!(
        (r.data.clone(), r.status_addr),
        (vec![(0x1000, 512)], 0x1200)
    );
}

#[test]
fn write_to_a_read_only_export_is_ioerr() {
    let m = mem();
    header(&m, 0, types::OUT, 0);
    let e = parse_request(
        &[rd(0, 16), rd(0x1000, 512), wr(0x2000, 1)],
        &m,
        &limits(false),
    )
    .unwrap_err();
    assert_eq!((e.status, e.status_addr), (status::IOERR, Some(0x2000)));
    header(&m, 0, types::DISCARD, 0);
    let e = parse_request(
        &[rd(0, 16), rd(0x1000, 16), wr(0x2000, 1)],
        &m,
        &limits(false),
    )
    .unwrap_err();
    assert_eq!(e.status, status::IOERR);
}

#[test]
fn out_of_range_and_misaligned_requests_are_ioerr() {
    let m = mem();
    header(&m, 0, types::IN, (1 << 20) / 512);
    let e = parse_request(
        &[rd(0, 16), wr(0x1000, 512), wr(0x2000, 1)],
        &m,
        &limits(true),
    )
    .unwrap_err();
    assert_eq!(e.status, status::IOERR);
    header(&m, 0, types::IN, u64::MAX / 2);
    assert!(parse_request(
        &[rd(0, 16), wr(0x1000, 512), wr(0x2000, 1)],
        &m,
        &limits(true)
    )
    .is_err());
    header(&m, 0, types::IN, 0);
    let e = parse_request(
        &[rd(0, 16), wr(0x1000, 100), wr(0x2000, 1)],
        &m,
        &limits(true),
    )
    .unwrap_err();
    assert_eq!(e.status, status::IOERR);
}

#[test]
fn bad_addresses_and_layouts_never_touch_memory_outside_the_guest() {
    let m = mem();
    header(&m, 0, types::IN, 0);
    // Data in the hole between the two regions: no status can be trusted either.
    let e = parse_request(
        &[rd(0, 16), wr(0x20000, 512), wr(0x2000, 1)],
        &m,
        &limits(true),
    )
    .unwrap_err();
    assert_eq!(e.status_addr, None);
    // Crossing the end of a region.
    assert!(parse_request(
        &[rd(0, 16), wr(0xff00, 512), wr(0x2000, 1)],
        &m,
        &limits(true)
    )
    .is_err());
    // Address overflow.
    assert!(parse_request(&[rd(u64::MAX - 4, 16), wr(0x2000, 1)], &m, &limits(true)).is_err());
    // Readable after writable, no status, short header.
    assert!(parse_request(
        &[rd(0, 16), wr(0x1000, 512), rd(0x2000, 1)],
        &m,
        &limits(true)
    )
    .is_err());
    assert_eq!(
        parse_request(&[rd(0, 16)], &m, &limits(true))
            .unwrap_err()
            .status_addr,
        None
    );
    let e = parse_request(&[rd(0, 8), wr(0x2000, 1)], &m, &limits(true)).unwrap_err();
    assert_eq!((e.status, e.status_addr), (status::IOERR, Some(0x2000)));
}

#[test]
fn too_many_segments_and_oversized_segments_are_ioerr() {
    let m = mem();
    header(&m, 0, types::IN, 0);
    let mut chain = vec![rd(0, 16)];
    chain.extend((0..5).map(|i| wr(0x1000 + i * 512, 512)));
    chain.push(wr(0x3000, 1));
    assert_eq!(
        parse_request(&chain, &m, &limits(true)).unwrap_err().status,
        status::IOERR
    );
    let l = Limits {
        size_max: 1024,
        ..limits(true)
    };
    assert!(parse_request(&[rd(0, 16), wr(0x1000, 4096), wr(0x3000, 1)], &m, &l).is_err());
}

#[test]
fn unknown_types_are_unsupp_and_discard_segments_are_checked() {
    let m = mem();
    header(&m, 0, 99, 0);
    let e = parse_request(&[rd(0, 16), wr(0x2000, 1)], &m, &limits(true)).unwrap_err();
    assert_eq!(e.status, status::UNSUPP);
    header(&m, 0, types::WRITE_ZEROES, 0);
    let mut seg = [0u8; 16];
    seg[..8].copy_from_slice(&2u64.to_le_bytes());
    seg[8..12].copy_from_slice(&4u32.to_le_bytes());
    seg[12..].copy_from_slice(&1u32.to_le_bytes());
    m.write_slice(&seg, GuestAddress(0x1000)).unwrap();
    let r = parse_request(
        &[rd(0, 16), rd(0x1000, 16), wr(0x2000, 1)],
        &m,
        &limits(true),
    )
    .unwrap();
    assert_eq!(
        r.op,
        Op::WriteZeroes {
            offset: 1024,
            len: 2048,
            unmap: true
        }
    );
    // Two segments are more than max_write_zeroes_seg.
    let e = parse_request(
        &[rd(0, 16), rd(0x1000, 32), wr(0x2000, 1)],
        &m,
        &limits(true),
    )
    .unwrap_err();
    assert_eq!(e.status, status::UNSUPP);
    // Beyond the discard limit.
    seg[8..12].copy_from_slice(&4096u32.to_le_bytes());
    m.write_slice(&seg, GuestAddress(0x1000)).unwrap();
    assert!(parse_request(
        &[rd(0, 16), rd(0x1000, 16), wr(0x2000, 1)],
        &m,
        &limits(true)
    )
    .is_err());
}
