//! LUKS1 encryption for oxemu, interoperable with QEMU 7.2's `luks` format and
//! qcow2's `encrypt.format=luks`.
//!
//! * [`header`]: the on-disk LUKS1 header, decoded and validated field by field;
//! * [`luks`]: unlocking key slots (PBKDF2, anti-forensic merge, master key digest)
//!   and formatting new volumes in QEMU's layout;
//! * [`cipher`]: AES in XTS or CBC mode on 512-byte sectors with `plain`, `plain64`
//!   or `essiv` IVs;
//! * [`driver`]: the `luks` [`BlockDriver`](oxemu_block::BlockDriver).
//!
//! The cryptography itself is RustCrypto's (`aes`, `xts-mode`, `cbc`, `sha1`,
//! `sha2`, `pbkdf2`, `hmac`); randomness comes from `getrandom`.
//!
//! # Example
//!
//! Format a volume in memory, then unlock it again from its bytes:
//!
//! ```
//! use oxemu_crypto::luks::{create, CreateOptions, Luks};
//!
//! let opts = CreateOptions { iter_time_ms: 1, ..CreateOptions::default() };
//! let created = create(&opts, b"secret").unwrap();
//! let mut disk = vec![0u8; created.luks.payload_offset() as usize];
//! for (at, bytes) in &created.writes {
//!     disk[*at as usize..*at as usize + bytes.len()].copy_from_slice(bytes);
//! }
//! let luks = Luks::parse(&disk).unwrap();
//! assert_eq!(luks.spec.alg.name(), "aes-256");
//! let mut read = |at: u64, buf: &mut [u8]| {
//!     buf.copy_from_slice(&disk[at as usize..at as usize + buf.len()]);
//!     Ok(())
//! };
//! let key = luks.unlock(b"secret", &mut read).unwrap();
//! assert_eq!(key, created.master_key);
//! let wrong = luks.unlock(b"guess", &mut read).unwrap_err();
//! assert_eq!(wrong.to_string(), "Invalid password, cannot unlock any keyslot");
//!
//! // Payload sectors encrypt with their number as the IV.
//! let cipher = luks.payload_cipher(&key).unwrap();
//! let mut sector = [7u8; 512];
//! cipher.encrypt(3, &mut sector);
//! cipher.decrypt(3, &mut sector);
//! assert_eq!(sector, [7u8; 512]);
//! ```

pub mod afsplit;
pub mod algo;
pub mod cipher;
pub mod driver;
pub mod header;
pub mod luks;

pub use driver::LuksDriver;

use std::io;

/// What can go wrong with a LUKS volume. Messages are QEMU's where it has one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The header is damaged or inconsistent; the message names the field.
    #[error("{0}")]
    Corrupt(String),
    /// An algorithm or layout this implementation (or QEMU) does not support.
    #[error("{0}")]
    Unsupported(String),
    /// No key slot opens with the password.
    #[error("Invalid password, cannot unlock any keyslot")]
    BadPassword,
    /// Reading or writing the volume failed.
    #[error("{0}")]
    Io(io::Error),
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        match e {
            Error::Io(e) => e,
            Error::BadPassword => io::Error::new(io::ErrorKind::PermissionDenied, e.to_string()),
            Error::Unsupported(m) => io::Error::new(io::ErrorKind::Unsupported, m),
            Error::Corrupt(m) => io::Error::new(io::ErrorKind::InvalidData, m),
        }
    }
}
