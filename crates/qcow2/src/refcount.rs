//! Refcount block entries of every width (`refcount_order` 0..=6).
//!
//! Widths below one byte are packed least significant bit first, as QEMU does;
//! wider entries are big-endian.

/// Reads entry `i` of a refcount block of `order`.
pub fn get(block: &[u8], order: u32, i: usize) -> u64 {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per = 8 / bits;
            let shift = (i % per) * bits;
            ((block[i / per] >> shift) as u64) & ((1u64 << bits) - 1)
        }
        3 => block[i] as u64,
        4 => u16::from_be_bytes([block[2 * i], block[2 * i + 1]]) as u64,
        5 => u32::from_be_bytes(block[4 * i..4 * i + 4].try_into().unwrap()) as u64,
        _ => u64::from_be_bytes(block[8 * i..8 * i + 8].try_into().unwrap()),
    }
}

/// Largest refcount representable with `order`.
pub fn max(order: u32) -> u64 {
    if order == 6 {
        u64::MAX
    } else {
        (1u64 << (1u32 << order)) - 1
    }
}

/// Writes entry `i` of a refcount block of `order`; `v` must be `<= max(order)`.
pub fn set(block: &mut [u8], order: u32, i: usize, v: u64) {
    debug_assert!(v <= max(order));
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per = 8 / bits;
            let shift = (i % per) * bits;
            let mask = (((1u16 << bits) - 1) as u8) << shift;
            let b = &mut block[i / per];
            *b = (*b & !mask) | (((v as u8) << shift) & mask);
        }
        3 => block[i] = v as u8,
        4 => block[2 * i..2 * i + 2].copy_from_slice(&(v as u16).to_be_bytes()),
        5 => block[4 * i..4 * i + 4].copy_from_slice(&(v as u32).to_be_bytes()),
        _ => block[8 * i..8 * i + 8].copy_from_slice(&v.to_be_bytes()),
    }
}

/// Number of entries in one refcount block of `cluster_bits` and `order`.
pub fn entries_per_block(cluster_bits: u32, order: u32) -> u64 {
    1u64 << (cluster_bits + 3 - order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_order_round_trips_and_keeps_neighbours() {
        for order in 0..=6 {
            let mut b = vec![0u8; 64];
            let n = 64 * 8 >> order;
            for i in 0..n {
                set(&mut b, order, i, (i as u64 * 7) & max(order));
            }
            for i in 0..n {
                assert_eq!(get(&b, order, i), (i as u64 * 7) & max(order), "order {order} entry {i}");
            }
        }
    }
}
