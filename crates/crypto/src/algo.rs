//! The algorithms a LUKS volume names, with the spellings QEMU's QAPI uses for them
//! (`aes-256`, `xts`, `plain64`, `sha256`) and the spellings the LUKS header uses
//! (`aes`, `xts-plain64`, `sha256`), plus hashing and PBKDF2 on top of RustCrypto.

use std::fmt;

use sha2::Digest;

use crate::Error;

/// A block cipher algorithm with its key size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CipherAlg {
    /// AES with a 128-bit key.
    Aes128,
    /// AES with a 192-bit key.
    Aes192,
    /// AES with a 256-bit key.
    Aes256,
}

impl CipherAlg {
    /// Every supported algorithm.
    pub const ALL: [CipherAlg; 3] = [CipherAlg::Aes128, CipherAlg::Aes192, CipherAlg::Aes256];

    /// QAPI name: `aes-128`, `aes-192`, `aes-256`.
    pub fn name(self) -> &'static str {
        match self {
            CipherAlg::Aes128 => "aes-128",
            CipherAlg::Aes192 => "aes-192",
            CipherAlg::Aes256 => "aes-256",
        }
    }

    /// Key length in bytes of one cipher instance (half an XTS key).
    pub fn key_len(self) -> usize {
        match self {
            CipherAlg::Aes128 => 16,
            CipherAlg::Aes192 => 24,
            CipherAlg::Aes256 => 32,
        }
    }

    /// The cipher family name the LUKS header stores (`aes`).
    pub fn luks_name(self) -> &'static str {
        "aes"
    }

    /// Parses a QAPI name.
    pub fn from_name(s: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| Error::Unsupported(format!("Algorithm '{s}' not supported")))
    }

    /// The algorithm a LUKS header names by family and key length.
    pub fn from_luks(family: &str, key_len: usize) -> Result<Self, Error> {
        if family != "aes" {
            return Err(Error::Unsupported(format!(
                "Algorithm '{family}' not supported"
            )));
        }
        Self::ALL
            .into_iter()
            .find(|a| a.key_len() == key_len)
            .ok_or_else(|| {
                Error::Unsupported(format!(
                    "Algorithm '{family}' with key size {key_len} bytes not supported"
                ))
            })
    }

    /// The AES variant whose key is as long as a digest of `hash`, for ESSIV.
    pub fn for_essiv(self, hash: HashAlg) -> Result<Self, Error> {
        let n = hash.digest_len();
        Self::ALL
            .into_iter()
            .find(|a| a.key_len() == n)
            .ok_or_else(|| Error::Unsupported(format!("No AES cipher with key size {n} available")))
    }
}

/// A block cipher mode of operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CipherMode {
    /// Electronic codebook (only used inside ESSIV).
    Ecb,
    /// Cipher block chaining.
    Cbc,
    /// XEX tweakable block cipher with ciphertext stealing; keys are twice as long.
    Xts,
}

impl CipherMode {
    /// QAPI and LUKS name.
    pub fn name(self) -> &'static str {
        match self {
            CipherMode::Ecb => "ecb",
            CipherMode::Cbc => "cbc",
            CipherMode::Xts => "xts",
        }
    }

    /// Parses a name.
    pub fn from_name(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "ecb" => CipherMode::Ecb,
            "cbc" => CipherMode::Cbc,
            "xts" => CipherMode::Xts,
            _ => {
                return Err(Error::Unsupported(format!(
                    "Cipher mode '{s}' not supported"
                )))
            }
        })
    }
}

/// How the initialisation vector of each sector is made from its number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IvGenAlg {
    /// The low 32 bits of the sector number, little-endian.
    Plain,
    /// The 64-bit sector number, little-endian.
    Plain64,
    /// The sector number encrypted with a hash of the key (encrypted salt-sector IV).
    Essiv,
}

impl IvGenAlg {
    /// QAPI and LUKS name.
    pub fn name(self) -> &'static str {
        match self {
            IvGenAlg::Plain => "plain",
            IvGenAlg::Plain64 => "plain64",
            IvGenAlg::Essiv => "essiv",
        }
    }

    /// Parses a name.
    pub fn from_name(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "plain" => IvGenAlg::Plain,
            "plain64" => IvGenAlg::Plain64,
            "essiv" => IvGenAlg::Essiv,
            _ => {
                return Err(Error::Unsupported(format!(
                    "IV generator '{s}' not supported"
                )))
            }
        })
    }
}

/// A hash algorithm, for PBKDF2, the anti-forensic splitter and ESSIV.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashAlg {
    /// SHA-1 (20-byte digests).
    Sha1,
    /// SHA-224.
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl HashAlg {
    /// Every supported hash.
    pub const ALL: [HashAlg; 5] = [
        HashAlg::Sha1,
        HashAlg::Sha224,
        HashAlg::Sha256,
        HashAlg::Sha384,
        HashAlg::Sha512,
    ];

    /// QAPI and LUKS name.
    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "sha1",
            HashAlg::Sha224 => "sha224",
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha384 => "sha384",
            HashAlg::Sha512 => "sha512",
        }
    }

    /// Parses a name.
    pub fn from_name(s: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|h| h.name() == s)
            .ok_or_else(|| Error::Unsupported(format!("Hash '{s}' not supported")))
    }

    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha224 => 28,
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    /// The digest of the concatenation of `parts`.
    pub fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            d.finalize().to_vec()
        }
        match self {
            HashAlg::Sha1 => run::<sha1::Sha1>(parts),
            HashAlg::Sha224 => run::<sha2::Sha224>(parts),
            HashAlg::Sha256 => run::<sha2::Sha256>(parts),
            HashAlg::Sha384 => run::<sha2::Sha384>(parts),
            HashAlg::Sha512 => run::<sha2::Sha512>(parts),
        }
    }

    /// PBKDF2 with HMAC over this hash: fills `out` from `password` and `salt` with
    /// `iterations` rounds.
    pub fn pbkdf2(self, password: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) {
        use pbkdf2::pbkdf2_hmac;
        match self {
            HashAlg::Sha1 => pbkdf2_hmac::<sha1::Sha1>(password, salt, iterations, out),
            HashAlg::Sha224 => pbkdf2_hmac::<sha2::Sha224>(password, salt, iterations, out),
            HashAlg::Sha256 => pbkdf2_hmac::<sha2::Sha256>(password, salt, iterations, out),
            HashAlg::Sha384 => pbkdf2_hmac::<sha2::Sha384>(password, salt, iterations, out),
            HashAlg::Sha512 => pbkdf2_hmac::<sha2::Sha512>(password, salt, iterations, out),
        }
    }

    /// How many PBKDF2 iterations this machine does in one second of thread CPU time,
    /// measured on inputs of the given sizes (as QEMU sizes its iteration counts).
    pub fn pbkdf2_iters_per_second(self, key: &[u8], salt: &[u8], out_len: usize) -> u64 {
        let mut out = vec![0u8; out_len];
        let mut iters: u64 = 1 << 12;
        loop {
            let start = thread_cpu_ns();
            self.pbkdf2(key, salt, iters as u32, &mut out);
            let ns = thread_cpu_ns().saturating_sub(start).max(1);
            // 50 ms of work is enough to scale from; QEMU measures at least half a second.
            if ns >= 50_000_000 || iters >= u32::MAX as u64 / 10 {
                return (iters as u128 * 1_000_000_000 / ns as u128).min(u64::MAX as u128) as u64;
            }
            iters *= if ns < 5_000_000 { 10 } else { 2 };
        }
    }
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl fmt::Display for CipherAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
