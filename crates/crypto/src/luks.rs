//! A LUKS1 volume: its header decoded into algorithms, unlocking a key slot with a
//! password, and formatting a new volume the way QEMU lays it out.

use std::io;

use crate::afsplit;
use crate::algo::{CipherAlg, CipherMode, HashAlg, IvGenAlg};
use crate::cipher::{CipherSpec, SectorCipher};
use crate::header::{
    split_key_sectors, Header, KeySlot, DIGEST_LEN, KEY_SLOT_OFFSET, NUM_SLOTS, SALT_LEN, SECTOR,
    SLOT_DISABLED, SLOT_ENABLED, STRIPES,
};
use crate::Error;

/// Reads `buf.len()` bytes at a byte offset of the volume.
pub type ReadFn<'a> = dyn FnMut(u64, &mut [u8]) -> io::Result<()> + 'a;

/// Fills a buffer with random bytes from the operating system.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), Error> {
    getrandom::getrandom(buf).map_err(|e| {
        Error::Io(io::Error::other(format!(
            "Unable to read random bytes: {e}"
        )))
    })
}

/// A LUKS1 volume whose header has been read and checked.
#[derive(Clone, Debug)]
pub struct Luks {
    /// The header as stored.
    pub header: Header,
    /// The payload cipher the header names.
    pub spec: CipherSpec,
    /// The hash of PBKDF2 and the splitter.
    pub hash: HashAlg,
}

/// Splits `xts-plain64` / `cbc-essiv:sha256` into mode, IV generator and its hash.
fn parse_mode(s: &str) -> Result<(CipherMode, IvGenAlg, Option<HashAlg>), Error> {
    let (mode, iv) = s
        .split_once('-')
        .ok_or_else(|| Error::Unsupported(format!("Unexpected cipher mode string format '{s}'")))?;
    let (iv, ivhash) = match iv.split_once(':') {
        Some((a, h)) => (a, Some(HashAlg::from_name(h)?)),
        None => (iv, None),
    };
    Ok((
        CipherMode::from_name(mode)?,
        IvGenAlg::from_name(iv)?,
        ivhash,
    ))
}

impl Luks {
    /// Decodes and validates the header at the start of `b`.
    pub fn parse(b: &[u8]) -> Result<Luks, Error> {
        let header = Header::parse(b)?;
        header.check()?;
        let (mode, ivgen, ivgen_hash) = parse_mode(&header.cipher_mode)?;
        let key_len = header.key_bytes as usize / if mode == CipherMode::Xts { 2 } else { 1 };
        let alg = CipherAlg::from_luks(&header.cipher_name, key_len)?;
        let hash = HashAlg::from_name(&header.hash_spec)?;
        if ivgen == IvGenAlg::Essiv {
            let h = ivgen_hash.ok_or_else(|| {
                Error::Unsupported("Missing IV generator hash specification".into())
            })?;
            alg.for_essiv(h)?;
        }
        let spec = CipherSpec {
            alg,
            mode,
            ivgen,
            ivgen_hash,
        };
        if spec.key_len() != header.key_bytes as usize {
            return Err(Error::Corrupt(format!(
                "LUKS master key length {} does not fit cipher mode '{}'",
                header.key_bytes, header.cipher_mode
            )));
        }
        Ok(Luks { header, spec, hash })
    }

    /// Byte offset of the encrypted payload.
    pub fn payload_offset(&self) -> u64 {
        self.header.payload_offset as u64 * SECTOR
    }

    /// Tries the password on every enabled key slot; returns the master key, or QEMU's
    /// "Invalid password, cannot unlock any keyslot".
    pub fn unlock(&self, password: &[u8], read: &mut ReadFn<'_>) -> Result<Vec<u8>, Error> {
        for slot in self.header.slots.iter().filter(|s| s.active()) {
            if let Some(k) = self.try_slot(slot, password, read)? {
                return Ok(k);
            }
        }
        Err(Error::BadPassword)
    }

    fn try_slot(
        &self,
        slot: &KeySlot,
        password: &[u8],
        read: &mut ReadFn<'_>,
    ) -> Result<Option<Vec<u8>>, Error> {
        let n = self.header.key_bytes as usize;
        let mut slot_key = vec![0u8; n];
        self.hash
            .pbkdf2(password, &slot.salt, slot.iterations, &mut slot_key);
        let len = n * slot.stripes as usize;
        let mut material = vec![0u8; len];
        read(slot.key_offset as u64 * SECTOR, &mut material).map_err(Error::Io)?;
        SectorCipher::new(&self.spec, &slot_key)?.decrypt(0, &mut material);
        let candidate = afsplit::merge(self.hash, &material, n, slot.stripes as usize);
        Ok((self.digest(&candidate) == self.header.mk_digest).then_some(candidate))
    }

    fn digest(&self, master_key: &[u8]) -> [u8; DIGEST_LEN] {
        let mut d = [0u8; DIGEST_LEN];
        self.hash.pbkdf2(
            master_key,
            &self.header.mk_salt,
            self.header.mk_iterations,
            &mut d,
        );
        d
    }

    /// The payload cipher keyed with an unlocked master key.
    pub fn payload_cipher(&self, master_key: &[u8]) -> Result<SectorCipher, Error> {
        SectorCipher::new(&self.spec, master_key)
    }
}

/// Options of a new volume, QEMU's `-o` for luks (QAPI's QCryptoBlockCreateOptionsLUKS).
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// Payload cipher (default aes-256 in xts mode with plain64 IVs).
    pub spec: CipherSpec,
    /// Hash of PBKDF2 and the splitter (default sha256).
    pub hash: HashAlg,
    /// Milliseconds of PBKDF2 work to aim at (default 2000).
    pub iter_time_ms: u64,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            spec: CipherSpec {
                alg: CipherAlg::Aes256,
                mode: CipherMode::Xts,
                ivgen: IvGenAlg::Plain64,
                ivgen_hash: None,
            },
            hash: HashAlg::Sha256,
            iter_time_ms: 2000,
        }
    }
}

/// A freshly formatted volume: the writes that store it and its master key.
pub struct Created {
    /// The volume, as it will read back.
    pub luks: Luks,
    /// The master key, for the payload cipher.
    pub master_key: Vec<u8>,
    /// (byte offset, bytes) to write: the header and slot 0's key material. The rest of
    /// the header area (up to [`Luks::payload_offset`]) reads as zeroes.
    pub writes: Vec<(u64, Vec<u8>)>,
}

fn scaled_iters(per_second: u64, iter_time_ms: u64, divide: u64) -> Result<u32, Error> {
    let iters = per_second.checked_mul(iter_time_ms).ok_or_else(|| {
        Error::Unsupported(format!("PBKDF iterations {per_second} too large to scale"))
    })? / 1000
        / divide;
    if iters > u32::MAX as u64 {
        return Err(Error::Unsupported(format!(
            "PBKDF iterations {iters} larger than {}",
            u32::MAX
        )));
    }
    Ok((iters as u32).max(1000))
}

/// A random version-4 UUID in its text form.
fn uuid() -> Result<String, Error> {
    let mut r = [0u8; 16];
    random_bytes(&mut r)?;
    r[6] = (r[6] & 0x0f) | 0x40;
    r[8] = (r[8] & 0x3f) | 0x80;
    let h: String = r.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

/// Formats a new volume protected by `password` in key slot 0, with QEMU's layout:
/// key material from 4 KiB, each slot's area aligned to 4 KiB, payload after slot 7.
pub fn create(opts: &CreateOptions, password: &[u8]) -> Result<Created, Error> {
    let spec = opts.spec;
    if spec.ivgen == IvGenAlg::Essiv {
        let h = spec.ivgen_hash.unwrap_or(HashAlg::Sha256);
        spec.alg.for_essiv(h)?;
    }
    let mode_text = match spec.ivgen_hash {
        Some(h) => format!("{}-{}:{}", spec.mode.name(), spec.ivgen.name(), h.name()),
        None => format!("{}-{}", spec.mode.name(), spec.ivgen.name()),
    };
    let n = spec.key_len();
    let mut master_key = vec![0u8; n];
    random_bytes(&mut master_key)?;
    let mut mk_salt = [0u8; SALT_LEN];
    random_bytes(&mut mk_salt)?;
    let hash = opts.hash;
    let iter_ms = opts.iter_time_ms.max(1);
    let rate = hash.pbkdf2_iters_per_second(&master_key, &mk_salt, DIGEST_LEN);
    // One eighth, as cryptsetup: all eight slots together take the time asked for.
    let mk_iterations = scaled_iters(rate, iter_ms, 8)?;
    let header_sectors = KEY_SLOT_OFFSET / SECTOR;
    let split_sectors = split_key_sectors(n as u64, STRIPES as u64);
    let slots = std::array::from_fn(|i| KeySlot {
        state: SLOT_DISABLED,
        iterations: 0,
        salt: [0; SALT_LEN],
        key_offset: (header_sectors + i as u64 * split_sectors) as u32,
        stripes: STRIPES,
    });
    let mut header = Header {
        version: 1,
        cipher_name: spec.alg.luks_name().into(),
        cipher_mode: mode_text,
        hash_spec: hash.name().into(),
        payload_offset: (header_sectors + NUM_SLOTS as u64 * split_sectors) as u32,
        key_bytes: n as u32,
        mk_digest: [0; DIGEST_LEN],
        mk_salt,
        mk_iterations,
        uuid: uuid()?,
        slots,
    };
    let mut luks = Luks {
        header: header.clone(),
        spec,
        hash,
    };
    header.mk_digest = luks.digest(&master_key);

    // Key slot 0: the master key split, then encrypted with the password's key.
    let slot = &mut header.slots[0];
    random_bytes(&mut slot.salt)?;
    let rate = hash.pbkdf2_iters_per_second(password, &slot.salt, n);
    slot.iterations = scaled_iters(rate, iter_ms, 1)?;
    let mut slot_key = vec![0u8; n];
    hash.pbkdf2(password, &slot.salt, slot.iterations, &mut slot_key);
    let mut rng_err = None;
    let mut material = afsplit::split(hash, &master_key, STRIPES as usize, &mut |b| {
        if let Err(e) = random_bytes(b) {
            rng_err = Some(e);
        }
    });
    if let Some(e) = rng_err {
        return Err(e);
    }
    SectorCipher::new(&spec, &slot_key)?.encrypt(0, &mut material);
    slot.state = SLOT_ENABLED;
    let material_at = slot.key_offset as u64 * SECTOR;
    luks.header = header;
    let writes = vec![(0, luks.header.to_bytes()), (material_at, material)];
    Ok(Created {
        luks,
        master_key,
        writes,
    })
}
