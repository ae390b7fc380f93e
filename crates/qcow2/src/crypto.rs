//! qcow2 images encrypted with LUKS (`encrypt.format=luks`, crypt method 2): the LUKS
//! header lives in clusters named by the crypto header extension (0x0537be77: 64-bit
//! offset and length), and each 512-byte sector of a data cluster is encrypted with
//! the sector number of its *host* offset, its place in the image file (QEMU 7.2 uses
//! guest offsets only for the legacy AES method, which is not supported here).
//!
//! Reading is supported; such images open read-only until encrypted writes are done.

use std::io;

use oxemu_block::driver::BlockDriverExt;
use oxemu_block::iovec::IoVecMut;
use oxemu_crypto::cipher::SectorCipher;
use oxemu_crypto::luks::Luks;

use crate::Qcow2;

/// Header extension type of the crypto header.
pub const EXT_CRYPTO_HEADER: u32 = 0x0537_be77;
/// Crypt method of LUKS encryption.
pub const CRYPT_LUKS: u32 = 2;

fn invalid(m: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m)
}

impl Qcow2 {
    /// True for an image encrypted with LUKS.
    pub fn encrypted(&self) -> bool {
        self.crypt_method == CRYPT_LUKS
    }

    /// The LUKS header of an encrypted image and its byte offset in the file.
    pub async fn luks_header(&self) -> io::Result<(Luks, u64)> {
        let h = self.header().await;
        let e = h
            .extensions
            .iter()
            .find(|e| e.kind == EXT_CRYPTO_HEADER)
            .ok_or_else(|| invalid("qcow2: encrypted image has no crypto header".into()))?;
        if e.data.len() < 16 {
            return Err(invalid(format!(
                "qcow2: crypto header extension is {} bytes, 16 needed",
                e.data.len()
            )));
        }
        let off = u64::from_be_bytes(e.data[..8].try_into().expect("8 bytes"));
        let len = u64::from_be_bytes(e.data[8..16].try_into().expect("8 bytes"));
        if off % self.cluster_size() != 0 {
            return Err(invalid(format!(
                "Crypto header offset {off:#x} is not a multiple of cluster size {}",
                self.cluster_size()
            )));
        }
        let mut b = vec![0u8; oxemu_crypto::header::HEADER_LEN];
        if len < b.len() as u64
            || off
                .checked_add(len)
                .is_none_or(|end| end > self.file.size())
        {
            return Err(invalid(format!(
                "qcow2: crypto header at {off:#x} of length {len} lies outside the image"
            )));
        }
        self.file.read_at(off, &mut b).await?;
        Ok((Luks::parse(&b)?, off))
    }

    /// Unlocks an encrypted image with `password`; data reads decrypt afterwards.
    pub async fn unlock(&self, password: &[u8]) -> io::Result<()> {
        let (luks, base) = self.luks_header().await?;
        let key = oxemu_crypto::driver::unlock(&luks, &*self.file, base, password).await?;
        let _ = self.cipher.set(luks.payload_cipher(&key)?);
        Ok(())
    }

    /// Reads guest bytes at `guest` stored at `host` in a data cluster, decrypting
    /// them (IVs from the host sector numbers) when the image is encrypted.
    pub(crate) async fn read_data(
        &self,
        host: u64,
        guest: u64,
        iov: &mut IoVecMut<'_>,
    ) -> io::Result<()> {
        self.file
            .debug_event(oxemu_block::blkdebug::DebugEvent::ReadAio);
        if !self.encrypted() {
            return self.file.readv(host, iov).await;
        }
        let c = self.cipher.get().ok_or_else(|| crate::os(libc::EIO))?;
        // Same remainder as the host offset: clusters are aligned in both.
        let head = guest % 512;
        let len = (head + iov.len() as u64).div_ceil(512) * 512;
        let mut buf = vec![0u8; len as usize];
        self.file.read_at(host - head, &mut buf).await?;
        c.decrypt((host - head) / 512, &mut buf);
        iov.copy_from_slice(&buf[head as usize..head as usize + iov.len()]);
        Ok(())
    }
}

/// The cipher slot of a [`Qcow2`] node, set by [`Qcow2::unlock`].
pub(crate) type CipherSlot = std::sync::OnceLock<SectorCipher>;
