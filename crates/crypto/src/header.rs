//! The LUKS1 partition header: 592 bytes at offset 0 of the volume, all integers
//! big-endian, followed (from offset 4096 in the layout QEMU and cryptsetup write) by
//! the key material of the eight key slots, then the encrypted payload.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 6 | magic `LUKS\xba\xbe` |
//! | 6 | 2 | version (1) |
//! | 8 | 32 | cipher name (`aes`), NUL-terminated |
//! | 40 | 32 | cipher mode (`xts-plain64`, `cbc-essiv:sha256`) |
//! | 72 | 32 | hash spec (`sha256`) |
//! | 104 | 4 | payload offset, in 512-byte sectors |
//! | 108 | 4 | master key length in bytes |
//! | 112 | 20 | PBKDF2 digest of the master key |
//! | 132 | 32 | salt of that digest |
//! | 164 | 4 | iterations of that digest |
//! | 168 | 40 | UUID, as text |
//! | 208 | 8 × 48 | key slots: state, iterations, salt\[32\], key material sector, stripes |
//!
//! Every field is untrusted: [`Header::parse`] only decodes, [`Header::check`] then
//! validates the layout with messages naming the field, as QEMU words them.

use crate::Error;

/// Length of the header in bytes.
pub const HEADER_LEN: usize = 592;
/// The magic at offset 0.
pub const MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
/// Number of key slots.
pub const NUM_SLOTS: usize = 8;
/// Stripes of the anti-forensic split of each key slot.
pub const STRIPES: u32 = 4000;
/// State word of an enabled key slot.
pub const SLOT_ENABLED: u32 = 0x00AC_71F3;
/// State word of a disabled key slot.
pub const SLOT_DISABLED: u32 = 0x0000_DEAD;
/// Where the key material starts (bytes), which aligns the slots' areas too.
pub const KEY_SLOT_OFFSET: u64 = 4096;
/// Length of the master key digest.
pub const DIGEST_LEN: usize = 20;
/// Length of the salts.
pub const SALT_LEN: usize = 32;
/// Sector size of the key material and the payload.
pub const SECTOR: u64 = 512;

/// One key slot of the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySlot {
    /// State word: [`SLOT_ENABLED`] or [`SLOT_DISABLED`] on a sane header.
    pub state: u32,
    /// PBKDF2 iterations of the password.
    pub iterations: u32,
    /// PBKDF2 salt of the password.
    pub salt: [u8; SALT_LEN],
    /// First sector of the slot's key material.
    pub key_offset: u32,
    /// Anti-forensic stripes of the key material.
    pub stripes: u32,
}

impl KeySlot {
    /// True when the slot holds a key.
    pub fn active(&self) -> bool {
        self.state == SLOT_ENABLED
    }
}

/// A decoded LUKS1 header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Format version.
    pub version: u16,
    /// Cipher family (`aes`).
    pub cipher_name: String,
    /// Mode and IV generator (`xts-plain64`).
    pub cipher_mode: String,
    /// Hash of PBKDF2 and the splitter (`sha256`).
    pub hash_spec: String,
    /// First sector of the encrypted payload.
    pub payload_offset: u32,
    /// Master key length in bytes.
    pub key_bytes: u32,
    /// PBKDF2 digest of the master key.
    pub mk_digest: [u8; DIGEST_LEN],
    /// Salt of the master key digest.
    pub mk_salt: [u8; SALT_LEN],
    /// Iterations of the master key digest.
    pub mk_iterations: u32,
    /// Volume UUID.
    pub uuid: String,
    /// The key slots.
    pub slots: [KeySlot; NUM_SLOTS],
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// The NUL-terminated text of `field`, or an error naming it.
fn text(b: &[u8], at: usize, len: usize, what: &str) -> Result<String, Error> {
    let f = &b[at..at + len];
    let end = f
        .iter()
        .position(|&c| c == 0)
        .ok_or_else(|| Error::Corrupt(format!("LUKS header {what} is not NUL terminated")))?;
    String::from_utf8(f[..end].to_vec()).map_err(|_| {
        Error::Corrupt(format!(
            "LUKS header {what} at offset {at} is not valid UTF-8"
        ))
    })
}

/// Stores `s` in a field of `len` bytes, cut to fit (parsed fields always fit).
fn put_text(out: &mut [u8], at: usize, len: usize, s: &str) {
    let b = s.as_bytes();
    let n = b.len().min(len);
    out[at..at + n].copy_from_slice(&b[..n]);
}

/// Sectors the key material of one slot takes: the split key rounded up to sectors,
/// then to the 4 KiB alignment of the key slot area (cryptsetup's rule).
pub fn split_key_sectors(key_bytes: u64, stripes: u64) -> u64 {
    let sectors = (key_bytes * stripes).div_ceil(SECTOR);
    let align = KEY_SLOT_OFFSET / SECTOR;
    sectors.div_ceil(align) * align
}

impl Header {
    /// Decodes the first [`HEADER_LEN`] bytes of `b`. Fails on a short buffer, a wrong
    /// magic, another version, or text fields that are not NUL-terminated.
    pub fn parse(b: &[u8]) -> Result<Header, Error> {
        if b.len() < HEADER_LEN {
            return Err(Error::Corrupt(format!(
                "LUKS header is truncated: {} bytes, {HEADER_LEN} needed",
                b.len()
            )));
        }
        if &b[..6] != MAGIC {
            return Err(Error::Corrupt("Volume is not in LUKS format".into()));
        }
        let version = u16::from_be_bytes([b[6], b[7]]);
        if version != 1 {
            return Err(Error::Unsupported(format!(
                "LUKS version {version} is not supported"
            )));
        }
        let slots = std::array::from_fn(|i| {
            let o = 208 + i * 48;
            KeySlot {
                state: be32(b, o),
                iterations: be32(b, o + 4),
                salt: b[o + 8..o + 40].try_into().expect("32 bytes"),
                key_offset: be32(b, o + 40),
                stripes: be32(b, o + 44),
            }
        });
        // The UUID field is not required to be terminated; take what precedes a NUL.
        let uuid_f = &b[168..208];
        let uuid_end = uuid_f.iter().position(|&c| c == 0).unwrap_or(40);
        Ok(Header {
            version,
            cipher_name: text(b, 8, 32, "cipher name")?,
            cipher_mode: text(b, 40, 32, "cipher mode")?,
            hash_spec: text(b, 72, 32, "hash spec")?,
            payload_offset: be32(b, 104),
            key_bytes: be32(b, 108),
            mk_digest: b[112..132].try_into().expect("20 bytes"),
            mk_salt: b[132..164].try_into().expect("32 bytes"),
            mk_iterations: be32(b, 164),
            uuid: String::from_utf8_lossy(&uuid_f[..uuid_end]).into_owned(),
            slots,
        })
    }

    /// Encodes the header into [`HEADER_LEN`] bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b[..6].copy_from_slice(MAGIC);
        b[6..8].copy_from_slice(&self.version.to_be_bytes());
        put_text(&mut b, 8, 32, &self.cipher_name);
        put_text(&mut b, 40, 32, &self.cipher_mode);
        put_text(&mut b, 72, 32, &self.hash_spec);
        b[104..108].copy_from_slice(&self.payload_offset.to_be_bytes());
        b[108..112].copy_from_slice(&self.key_bytes.to_be_bytes());
        b[112..132].copy_from_slice(&self.mk_digest);
        b[132..164].copy_from_slice(&self.mk_salt);
        b[164..168].copy_from_slice(&self.mk_iterations.to_be_bytes());
        put_text(&mut b, 168, 40, &self.uuid);
        for (i, s) in self.slots.iter().enumerate() {
            let o = 208 + i * 48;
            b[o..o + 4].copy_from_slice(&s.state.to_be_bytes());
            b[o + 4..o + 8].copy_from_slice(&s.iterations.to_be_bytes());
            b[o + 8..o + 40].copy_from_slice(&s.salt);
            b[o + 40..o + 44].copy_from_slice(&s.key_offset.to_be_bytes());
            b[o + 44..o + 48].copy_from_slice(&s.stripes.to_be_bytes());
        }
        b
    }

    /// Validates the layout: the payload after the header, a non-zero digest iteration
    /// count, and key slots that are well-formed, inside the header area and disjoint.
    pub fn check(&self) -> Result<(), Error> {
        let c = |m: String| Err(Error::Corrupt(m));
        let header_sectors = KEY_SLOT_OFFSET / SECTOR;
        let payload = self.payload_offset as u64;
        if payload < header_sectors {
            return c("LUKS payload is overlapping with the header".into());
        }
        if self.mk_iterations == 0 {
            return c("LUKS key iteration count is zero".into());
        }
        let key_bytes = self.key_bytes as u64;
        let span = |s: &KeySlot| {
            (
                s.key_offset as u64,
                split_key_sectors(key_bytes, s.stripes as u64),
            )
        };
        for (i, s) in self.slots.iter().enumerate() {
            if s.stripes != STRIPES {
                return c(format!(
                    "Keyslot {i} is corrupted (stripes {} != {STRIPES})",
                    s.stripes
                ));
            }
            if s.state != SLOT_ENABLED && s.state != SLOT_DISABLED {
                return c(format!("Keyslot {i} state (active/disable) is corrupted"));
            }
            if s.active() && s.iterations == 0 {
                return c(format!("Keyslot {i} iteration count is zero"));
            }
            let (start, len) = span(s);
            if start < header_sectors {
                return c(format!("Keyslot {i} is overlapping with the LUKS header"));
            }
            if start + len > payload {
                return c(format!(
                    "Keyslot {i} is overlapping with the encrypted payload"
                ));
            }
            for (j, t) in self.slots.iter().enumerate().skip(i + 1) {
                let (start2, len2) = span(t);
                if start + len > start2 && start2 + len2 > start {
                    return c(format!(
                        "Keyslots {i} and {j} are overlapping in the header"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            version: 1,
            cipher_name: "aes".into(),
            cipher_mode: "xts-plain64".into(),
            hash_spec: "sha256".into(),
            payload_offset: 4040,
            key_bytes: 64,
            mk_digest: [1; 20],
            mk_salt: [2; 32],
            mk_iterations: 1000,
            uuid: "d4196f0c-72ef-45e5-8056-b1ade995bbab".into(),
            slots: std::array::from_fn(|i| KeySlot {
                state: if i == 0 { SLOT_ENABLED } else { SLOT_DISABLED },
                iterations: if i == 0 { 2000 } else { 0 },
                salt: [3; 32],
                key_offset: 8 + 504 * i as u32,
                stripes: STRIPES,
            }),
        }
    }

    #[test]
    fn encodes_and_decodes_the_same_header() {
        let h = sample();
        let b = h.to_bytes();
        assert_eq!(b.len(), HEADER_LEN);
        assert_eq!(&b[0x28..0x33], b"xts-plain64");
        let back = Header::parse(&b).unwrap();
        assert_eq!(back, h);
        back.check().unwrap();
    }

    #[test]
    fn corrupt_fields_are_named() {
        let msg = |h: &Header| h.check().unwrap_err().to_string();
        let mut h = sample();
        h.slots[3].stripes = 7;
        assert_eq!(msg(&h), "Keyslot 3 is corrupted (stripes 7 != 4000)");
        let mut h = sample();
        h.slots[1].key_offset = 8;
        assert_eq!(msg(&h), "Keyslots 0 and 1 are overlapping in the header");
        let mut h = sample();
        h.payload_offset = 100;
        assert!(msg(&h).contains("overlapping with the encrypted payload"));
        let mut b = sample().to_bytes();
        b[40..72].fill(b'x');
        assert_eq!(
            Header::parse(&b).unwrap_err().to_string(),
            "LUKS header cipher mode is not NUL terminated"
        );
        assert!(Header::parse(&b[..100])
            .unwrap_err()
            .to_string()
            .contains("truncated"));
    }
}
