//! The LUKS anti-forensic splitter: a key is spread over `stripes` blocks so that
//! destroying any one of them destroys the key.
//!
//! Splitting fills the first `stripes - 1` blocks with random data, folding each into
//! an accumulator with XOR followed by the hash diffusion; the last block is the key
//! XORed with the accumulator. Merging replays the fold over the stored blocks.

use crate::algo::HashAlg;

/// Replaces `block` by its diffusion: each digest-sized piece `j` becomes the hash of
/// the big-endian 32-bit `j` followed by the piece (the last piece may be shorter, and
/// keeps the head of its digest).
fn diffuse(hash: HashAlg, block: &mut [u8]) {
    let n = hash.digest_len();
    for (j, piece) in block.chunks_mut(n).enumerate() {
        let d = hash.digest(&[&(j as u32).to_be_bytes(), piece]);
        let len = piece.len();
        piece.copy_from_slice(&d[..len]);
    }
}

fn xor_into(acc: &mut [u8], other: &[u8]) {
    for (a, b) in acc.iter_mut().zip(other) {
        *a ^= b;
    }
}

/// Splits `key` into `stripes` blocks of `key.len()` bytes, with randomness from
/// `random`. `stripes` must be at least 1.
pub fn split(
    hash: HashAlg,
    key: &[u8],
    stripes: usize,
    random: &mut dyn FnMut(&mut [u8]),
) -> Vec<u8> {
    let n = key.len();
    let mut out = vec![0u8; n * stripes];
    let mut acc = vec![0u8; n];
    for i in 0..stripes - 1 {
        let s = &mut out[i * n..(i + 1) * n];
        random(s);
        xor_into(&mut acc, s);
        diffuse(hash, &mut acc);
    }
    let last = &mut out[(stripes - 1) * n..];
    last.copy_from_slice(key);
    xor_into(last, &acc);
    out
}

/// Joins `stripes` blocks of `key_len` bytes back into the key. `data` must hold
/// `key_len * stripes` bytes.
pub fn merge(hash: HashAlg, data: &[u8], key_len: usize, stripes: usize) -> Vec<u8> {
    let mut acc = vec![0u8; key_len];
    for i in 0..stripes - 1 {
        xor_into(&mut acc, &data[i * key_len..(i + 1) * key_len]);
        diffuse(hash, &mut acc);
    }
    xor_into(&mut acc, &data[(stripes - 1) * key_len..stripes * key_len]);
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_undoes_split_for_odd_key_lengths() {
        let mut seed = 1u32;
        let mut rnd = |b: &mut [u8]| {
            for x in b {
                seed = seed.wrapping_mul(1103515245).wrapping_add(12345);
                *x = (seed >> 16) as u8;
            }
        };
        for hash in HashAlg::ALL {
            for len in [16, 33, 64] {
                let key: Vec<u8> = (0..len as u8).collect();
                let s = split(hash, &key, 40, &mut rnd);
                assert_eq!(s.len(), len * 40);
                assert_eq!(merge(hash, &s, len, 40), key);
            }
        }
    }
}
