//! Sector encryption: a cipher in XTS or CBC mode whose IV is made afresh for each
//! 512-byte sector from the sector number.

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{
    BlockCipher, BlockDecrypt, BlockDecryptMut, BlockEncrypt, BlockEncryptMut, BlockSizeUser,
    InnerIvInit, KeyInit,
};
use aes::{Aes128, Aes192, Aes256};
use xts_mode::Xts128;

use crate::algo::{CipherAlg, CipherMode, HashAlg, IvGenAlg};
use crate::Error;

/// Size of the sectors that LUKS encrypts independently.
pub const SECTOR_SIZE: usize = 512;

/// Encrypts or decrypts whole buffers with an IV.
trait Crypt: Send + Sync {
    fn encrypt(&self, iv: [u8; 16], data: &mut [u8]);
    fn decrypt(&self, iv: [u8; 16], data: &mut [u8]);
}

/// Bounds shared by the AES variants.
trait Aes:
    BlockCipher
    + BlockEncrypt
    + BlockDecrypt
    + BlockSizeUser<BlockSize = aes::cipher::consts::U16>
    + KeyInit
    + Clone
    + Send
    + Sync
    + 'static
{
}
impl Aes for Aes128 {}
impl Aes for Aes192 {}
impl Aes for Aes256 {}

struct Xts<C: Aes>(Xts128<C>);

impl<C: Aes> Crypt for Xts<C> {
    fn encrypt(&self, iv: [u8; 16], data: &mut [u8]) {
        self.0.encrypt_sector(data, iv);
    }
    fn decrypt(&self, iv: [u8; 16], data: &mut [u8]) {
        self.0.decrypt_sector(data, iv);
    }
}

struct Cbc<C: Aes>(C);

impl<C: Aes> Crypt for Cbc<C> {
    fn encrypt(&self, iv: [u8; 16], data: &mut [u8]) {
        let mut e = cbc::Encryptor::<C>::inner_iv_init(self.0.clone(), &iv.into());
        for b in data.chunks_exact_mut(16) {
            e.encrypt_block_mut(GenericArray::from_mut_slice(b));
        }
    }
    fn decrypt(&self, iv: [u8; 16], data: &mut [u8]) {
        let mut d = cbc::Decryptor::<C>::inner_iv_init(self.0.clone(), &iv.into());
        for b in data.chunks_exact_mut(16) {
            d.decrypt_block_mut(GenericArray::from_mut_slice(b));
        }
    }
}

struct Ecb<C: Aes>(C);

impl<C: Aes> Crypt for Ecb<C> {
    fn encrypt(&self, _iv: [u8; 16], data: &mut [u8]) {
        for b in data.chunks_exact_mut(16) {
            self.0.encrypt_block(GenericArray::from_mut_slice(b));
        }
    }
    fn decrypt(&self, _iv: [u8; 16], data: &mut [u8]) {
        for b in data.chunks_exact_mut(16) {
            self.0.decrypt_block(GenericArray::from_mut_slice(b));
        }
    }
}

fn build<C: Aes>(mode: CipherMode, key: &[u8]) -> Box<dyn Crypt> {
    match mode {
        CipherMode::Xts => {
            let (k1, k2) = key.split_at(key.len() / 2);
            Box::new(Xts(Xts128::new(
                C::new_from_slice(k1).expect("key length checked"),
                C::new_from_slice(k2).expect("key length checked"),
            )))
        }
        CipherMode::Cbc => Box::new(Cbc(C::new_from_slice(key).expect("key length checked"))),
        CipherMode::Ecb => Box::new(Ecb(C::new_from_slice(key).expect("key length checked"))),
    }
}

fn new_crypt(alg: CipherAlg, mode: CipherMode, key: &[u8]) -> Result<Box<dyn Crypt>, Error> {
    let want = alg.key_len() * if mode == CipherMode::Xts { 2 } else { 1 };
    if key.len() != want {
        return Err(Error::Unsupported(format!(
            "Cipher {} in mode {} needs a {want}-byte key, not {} bytes",
            alg.name(),
            mode.name(),
            key.len()
        )));
    }
    Ok(match alg {
        CipherAlg::Aes128 => build::<Aes128>(mode, key),
        CipherAlg::Aes192 => build::<Aes192>(mode, key),
        CipherAlg::Aes256 => build::<Aes256>(mode, key),
    })
}

/// The settings of a sector cipher, as a LUKS header or QAPI options name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CipherSpec {
    /// Cipher algorithm.
    pub alg: CipherAlg,
    /// Mode of operation (XTS or CBC).
    pub mode: CipherMode,
    /// IV generator.
    pub ivgen: IvGenAlg,
    /// Hash of the ESSIV generator (also recorded, and ignored, for the others).
    pub ivgen_hash: Option<HashAlg>,
}

impl CipherSpec {
    /// Length of the key the spec needs: twice the cipher's for XTS.
    pub fn key_len(&self) -> usize {
        self.alg.key_len() * if self.mode == CipherMode::Xts { 2 } else { 1 }
    }
}

/// A keyed sector cipher: encrypts and decrypts runs of 512-byte sectors, each with the
/// IV its sector number gives.
pub struct SectorCipher {
    crypt: Box<dyn Crypt>,
    ivgen: IvGenAlg,
    /// The ECB cipher keyed with a hash of the key, for ESSIV.
    essiv: Option<Box<dyn Crypt>>,
}

impl SectorCipher {
    /// Keys a cipher of `spec` with `key`.
    pub fn new(spec: &CipherSpec, key: &[u8]) -> Result<Self, Error> {
        if spec.mode == CipherMode::Ecb {
            return Err(Error::Unsupported(
                "Cipher mode 'ecb' not supported for sector encryption".into(),
            ));
        }
        let crypt = new_crypt(spec.alg, spec.mode, key)?;
        let essiv = match spec.ivgen {
            IvGenAlg::Essiv => {
                let hash = spec.ivgen_hash.ok_or_else(|| {
                    Error::Unsupported("Missing IV generator hash specification".into())
                })?;
                let alg = spec.alg.for_essiv(hash)?;
                let salt = hash.digest(&[key]);
                Some(new_crypt(alg, CipherMode::Ecb, &salt[..alg.key_len()])?)
            }
            _ => None,
        };
        Ok(SectorCipher {
            crypt,
            ivgen: spec.ivgen,
            essiv,
        })
    }

    fn iv(&self, sector: u64) -> [u8; 16] {
        let mut iv = [0u8; 16];
        match self.ivgen {
            IvGenAlg::Plain => iv[..4].copy_from_slice(&(sector as u32).to_le_bytes()),
            IvGenAlg::Plain64 => iv[..8].copy_from_slice(&sector.to_le_bytes()),
            IvGenAlg::Essiv => {
                iv[..8].copy_from_slice(&sector.to_le_bytes());
                if let Some(e) = &self.essiv {
                    e.encrypt([0; 16], &mut iv);
                }
            }
        }
        iv
    }

    /// Encrypts `data` in place, sector by sector; its first sector is number
    /// `first_sector`. The length must be a multiple of 16; a shorter last sector is
    /// encrypted as a unit of its own, as QEMU does for key material.
    pub fn encrypt(&self, first_sector: u64, data: &mut [u8]) {
        assert_eq!(
            data.len() % 16,
            0,
            "sector cipher input must be whole blocks"
        );
        for (i, s) in data.chunks_mut(SECTOR_SIZE).enumerate() {
            self.crypt.encrypt(self.iv(first_sector + i as u64), s);
        }
    }

    /// Decrypts `data` in place, sector by sector, as [`SectorCipher::encrypt`]
    /// encrypted it.
    pub fn decrypt(&self, first_sector: u64, data: &mut [u8]) {
        assert_eq!(
            data.len() % 16,
            0,
            "sector cipher input must be whole blocks"
        );
        for (i, s) in data.chunks_mut(SECTOR_SIZE).enumerate() {
            self.crypt.decrypt(self.iv(first_sector + i as u64), s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_every_mode() {
        for alg in CipherAlg::ALL {
            for mode in [CipherMode::Xts, CipherMode::Cbc] {
                for ivgen in [IvGenAlg::Plain, IvGenAlg::Plain64, IvGenAlg::Essiv] {
                    let spec = CipherSpec {
                        alg,
                        mode,
                        ivgen,
                        ivgen_hash: Some(HashAlg::Sha256),
                    };
                    let key: Vec<u8> = (0..spec.key_len() as u8).collect();
                    let c = SectorCipher::new(&spec, &key).unwrap();
                    let plain: Vec<u8> = (0..2048).map(|i| (i * 7) as u8).collect();
                    let mut buf = plain.clone();
                    c.encrypt(5, &mut buf);
                    assert_ne!(buf, plain);
                    // Same data in another sector encrypts differently.
                    assert_ne!(buf[..512], buf[512..1024]);
                    c.decrypt(5, &mut buf);
                    assert_eq!(buf, plain);
                }
            }
        }
    }

    #[test]
    fn xts_plain64_matches_the_ieee_1619_vector() {
        // IEEE P1619 XTS-AES-128 vector 2: keys of 0x11 and 0x22 bytes, data unit
        // 0x3333333333, 32 bytes of 0x44.
        let spec = CipherSpec {
            alg: CipherAlg::Aes128,
            mode: CipherMode::Xts,
            ivgen: IvGenAlg::Plain64,
            ivgen_hash: None,
        };
        let mut key = vec![0x11u8; 16];
        key.extend([0x22u8; 16]);
        let c = new_crypt(spec.alg, spec.mode, &key).unwrap();
        let s = SectorCipher {
            crypt: c,
            ivgen: IvGenAlg::Plain64,
            essiv: None,
        };
        let mut data = [0x44u8; 32];
        s.crypt.encrypt(s.iv(0x3333333333), &mut data);
        assert_eq!(
            &data[..8],
            &[0xc4, 0x54, 0x18, 0x5e, 0x6a, 0x16, 0x93, 0x6e]
        );
    }
}
