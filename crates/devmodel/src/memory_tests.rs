use super::*;
use crate::backend::RamBlock;

/// A device whose byte at offset N reads N, logging every callback.
#[derive(Default)]
struct Probe {
    log: Vec<(char, u64, u32, u64)>,
}

impl IoOps for Probe {
    fn read(&mut self, offset: u64, size: u32) -> u64 {
        let mut v = 0u64;
        for i in 0..size as u64 {
            v |= ((offset + i) as u8 as u64) << (8 * i);
        }
        self.log.push(('r', offset, size, v));
        v
    }
    fn write(&mut self, offset: u64, value: u64, size: u32) {
        self.log.push(('w', offset, size, value));
    }
}

fn probe(
    m: &mut Memory,
    name: &str,
    size: u64,
    valid: AccessSizes,
    imp: AccessSizes,
) -> (RegionId, Arc<Mutex<Probe>>) {
    let p = Arc::new(Mutex::new(Probe::default()));
    let id = m.add_io(name, size, p.clone(), valid, imp);
    (id, p)
}

fn ram(m: &mut Memory, name: &str, size: u64) -> RegionId {
    let b = Arc::new(RamBlock::anonymous(size, false).unwrap());
    m.add_ram(name, b, 0, size)
}

fn spans(m: &Memory, root: RegionId) -> Vec<(u128, u128, String, u64)> {
    m.flatten(root)
        .iter()
        .map(|f| {
            (
                f.start,
                f.end,
                m.region(f.region).unwrap().name.clone(),
                f.offset_in_region,
            )
        })
        .collect()
}

#[test]
fn priorities_decide_overlaps_and_newest_wins_ties() {
    let mut m = Memory::new();
    let root = m.add_container("system", 1 << 64);
    let a = ram(&mut m, "a", 0x1000);
    let (b, _) = probe(
        &mut m,
        "b",
        0x1000,
        AccessSizes::default(),
        AccessSizes::default(),
    );
    m.add_subregion(root, 0, a, 0).unwrap();
    m.add_subregion(root, 0x800, b, 1).unwrap();
    assert_eq!(
        spans(&m, root),
        [(0, 0x800, "a".into(), 0), (0x800, 0x1800, "b".into(), 0)]
    );
    m.del_subregion(b).unwrap();
    m.add_subregion(root, 0x800, b, -1).unwrap();
    assert_eq!(
        spans(&m, root),
        [
            (0, 0x1000, "a".into(), 0),
            (0x1000, 0x1800, "b".into(), 0x800)
        ]
    );
    // Equal priority: the region added last is on top.
    m.del_subregion(b).unwrap();
    m.add_subregion(root, 0x800, b, 0).unwrap();
    assert_eq!(spans(&m, root)[1], (0x800, 0x1800, "b".into(), 0));
    assert!(m.add_subregion(root, 0, b, 0).is_err(), "mapped twice");
    m.set_enabled(b, false).unwrap();
    assert_eq!(spans(&m, root), [(0, 0x1000, "a".into(), 0)]);
}

#[test]
fn aliases_window_into_their_target() {
    let mut m = Memory::new();
    let root = m.add_container("system", 1 << 64);
    let r = ram(&mut m, "ram", 0x1000);
    m.add_subregion(root, 0, r, 0).unwrap();
    let al = m.add_alias("win", r, 0x100, 0x100);
    m.add_subregion(root, 0x5000, al, 0).unwrap();
    m.write(root, 0x100, b"through");
    let mut b = [0u8; 7];
    assert_eq!(m.read(root, 0x5000, &mut b), MemTx::Ok);
    assert_eq!(&b, b"through");
    assert_eq!(spans(&m, root)[1], (0x5000, 0x5100, "ram".into(), 0x100));
    // Reads past the alias window are unassigned.
    let mut c = [0xffu8; 2];
    assert_eq!(m.read(root, 0x50ff, &mut c), MemTx::DecodeError);
    assert_eq!(c[1], 0);
}

#[test]
fn unassigned_reads_zero_and_writes_vanish() {
    let mut m = Memory::new();
    let root = m.add_container("system", 1 << 64);
    let mut b = [0xaau8; 16];
    assert_eq!(m.read(root, 0xdead_0000, &mut b), MemTx::DecodeError);
    assert_eq!(b, [0; 16]);
    assert_eq!(m.write(root, u64::MAX - 3, &[1; 8]), MemTx::DecodeError);
}

#[test]
fn invalid_sizes_read_zero_without_calling_the_device() {
    let mut m = Memory::new();
    let root = m.add_container("system", 1 << 64);
    let (d, p) = probe(
        &mut m,
        "d",
        0x100,
        AccessSizes::new(4, 4),
        AccessSizes::new(4, 4),
    );
    m.add_subregion(root, 0x1000, d, 0).unwrap();
    let mut one = [0xffu8; 1];
    assert_eq!(m.read(root, 0x1004, &mut one), MemTx::DecodeError);
    assert_eq!(one, [0]);
    m.write(root, 0x1004, &[1]);
    assert!(p.lock().unwrap().log.is_empty());
    let mut four = [0u8; 4];
    assert_eq!(m.read(root, 0x1004, &mut four), MemTx::Ok);
    assert_eq!(four, [4, 5, 6, 7]);
    assert_eq!(p.lock().unwrap().log, [('r', 4, 4, 0x07060504)]);
}

#[test]
fn small_accesses_widen_and_big_ones_split() {
    let mut m = Memory::new();
    let root = m.add_container("system", 1 << 64);
    let (d, p) = probe(
        &mut m,
        "d",
        0x100,
        AccessSizes::new(1, 4),
        AccessSizes::new(4, 4),
    );
    m.add_subregion(root, 0, d, 0).unwrap();
    // A byte read is widened to the implemented 4 bytes and masked.
    let mut one = [0u8; 1];
    m.read(root, 8, &mut one);
    assert_eq!(one, [8]);
    assert_eq!(p.lock().unwrap().log.pop(), Some(('r', 8, 4, 0x0b0a0908)));
    // An 8-byte read exceeds valid.max: two 4-byte dispatches.
    let mut eight = [0u8; 8];
    m.read(root, 0x10, &mut eight);
    assert_eq!(eight, [0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17]);
    let log: Vec<_> = p
        .lock()
        .unwrap()
        .log
        .drain(..)
        .map(|(k, o, s, _)| (k, o, s))
        .collect();
    assert_eq!(log, [('r', 0x10, 4), ('r', 0x14, 4)]);
    // Unaligned: cut to naturally aligned pieces (1 byte at offset 1, 2 at 2, ...).
    let (e, q) = probe(
        &mut m,
        "e",
        0x100,
        AccessSizes::new(1, 4),
        AccessSizes::new(1, 4),
    );
    m.add_subregion(root, 0x1000, e, 0).unwrap();
    let mut four = [0u8; 4];
    m.read(root, 0x1001, &mut four);
    assert_eq!(four, [1, 2, 3, 4]);
    let log: Vec<_> = q
        .lock()
        .unwrap()
        .log
        .iter()
        .map(|(k, o, s, _)| (*k, *o, *s))
        .collect();
    assert_eq!(log, [('r', 1, 1), ('r', 2, 2), ('r', 4, 1)]);
    // Implemented sizes smaller than the access: split into impl.max pieces.
    let (f, r) = probe(
        &mut m,
        "f",
        0x100,
        AccessSizes::new(1, 8),
        AccessSizes::new(1, 2),
    );
    m.add_subregion(root, 0x2000, f, 0).unwrap();
    m.write(root, 0x2000, &0x4433_2211u32.to_le_bytes());
    assert_eq!(
        r.lock().unwrap().log,
        [('w', 0, 2, 0x2211), ('w', 2, 2, 0x4433)]
    );
}

#[test]
fn accesses_cross_region_boundaries() {
    let mut m = Memory::new();
    let root = m.add_container("system", 1 << 64);
    let a = ram(&mut m, "a", 0x1000);
    m.add_subregion(root, 0, a, 0).unwrap();
    let (d, _) = probe(
        &mut m,
        "d",
        0x100,
        AccessSizes::new(1, 4),
        AccessSizes::new(1, 4),
    );
    m.add_subregion(root, 0x1000, d, 0).unwrap();
    m.write(root, 0xffe, &[0xaa, 0xbb]);
    let mut b = [0u8; 4];
    m.read(root, 0xffe, &mut b);
    assert_eq!(b, [0xaa, 0xbb, 0, 1]);
}

#[test]
fn info_mtree_prints_like_qemu() {
    let mut m = Memory::new();
    let root = m.add_container("system", 1 << 64);
    let io = m.add_container("io", 0x10000);
    m.add_address_space("memory", root);
    m.add_address_space("I/O", io);
    m.add_address_space("cpu-memory-0", root);
    let r = ram(&mut m, "ram", 0x800_0000);
    m.add_subregion(root, 0, r, 0).unwrap();
    let (d, _) = probe(
        &mut m,
        "dev",
        0x100,
        AccessSizes::default(),
        AccessSizes::default(),
    );
    m.add_subregion(root, 0x1000_0000, d, 1).unwrap();
    let al = m.add_alias("ram-hi", r, 0x1000, 0x1000);
    m.add_subregion(root, 0x2000_0000, al, 0).unwrap();
    m.set_enabled(al, false).unwrap();
    let s = crate::mtree::info_mtree(&m);
    assert_eq!(
        s,
        "address-space: cpu-memory-0\n\
         address-space: memory\n\
         \x20 0000000000000000-ffffffffffffffff (prio 0, i/o): system\n\
         \x20   0000000000000000-0000000007ffffff (prio 0, ram): ram\n\
         \x20   0000000010000000-00000000100000ff (prio 1, i/o): dev\n\
         \x20   0000000020000000-0000000020000fff (prio 0, ram): alias ram-hi @ram 0000000000001000-0000000000001fff [disabled]\n\
         \n\
         address-space: I/O\n\
         \x20 0000000000000000-000000000000ffff (prio 0, i/o): io\n\
         \n\
         memory-region: ram\n\
         \x20 0000000000000000-0000000007ffffff (prio 0, ram): ram\n\
         \n"
    );
    let f = crate::mtree::info_mtree_flat(&m);
    assert!(f.starts_with("FlatView #0\n AS \"memory\", root: system\n AS \"cpu-memory-0\", root: system\n Root memory region: system\n  0000000000000000-0000000007ffffff (prio 0, ram): ram\n  0000000010000000-00000000100000ff (prio 1, i/o): dev\n\n"), "{f}");
}
