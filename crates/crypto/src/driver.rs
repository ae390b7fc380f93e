//! The `luks` format driver: a LUKS1 volume over a protocol node. Guest offset 0 is
//! the payload offset of the volume; each 512-byte sector is encrypted with its number
//! counted from there, as QEMU's `luks` driver does.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use oxemu_block::driver::{
    errno, BlockDriver, BlockDriverExt, BlockResult, BlockStatus, NodeInfo, WriteFlags, ZeroFlags,
};
use oxemu_block::iovec::{IoVec, IoVecMut};

use crate::cipher::SectorCipher;
use crate::header::{HEADER_LEN, SECTOR};
use crate::luks::{create, CreateOptions, Luks};
use crate::Error;

/// Largest run of sectors encrypted in one bounce buffer.
const MAX_IO: u64 = 1 << 20;

/// Reads the header of the LUKS volume on `file`, without unlocking it.
pub async fn read_header(file: &dyn BlockDriver) -> Result<Luks, Error> {
    let mut b = vec![0u8; HEADER_LEN];
    file.read_at(0, &mut b).await.map_err(|e| {
        Error::Io(io::Error::new(
            e.kind(),
            format!("Could not read encryption header: {e}"),
        ))
    })?;
    Luks::parse(&b)
}

/// Unlocks `luks`, whose key material is read from `file` at `base` (the byte offset
/// of the LUKS header in it), with `password`; returns the master key.
pub async fn unlock(
    luks: &Luks,
    file: &dyn BlockDriver,
    base: u64,
    password: &[u8],
) -> Result<Vec<u8>, Error> {
    // The slots' material is read first, as the key derivation itself is synchronous.
    let mut material = HashMap::new();
    for s in luks.header.slots.iter().filter(|s| s.active()) {
        let at = s.key_offset as u64 * SECTOR;
        let mut b = vec![0u8; luks.header.key_bytes as usize * s.stripes as usize];
        file.read_at(base + at, &mut b).await.map_err(Error::Io)?;
        material.insert(at, b);
    }
    luks.unlock(password, &mut |at, buf| {
        let m = material
            .get(&at)
            .filter(|m| m.len() == buf.len())
            .ok_or_else(|| io::Error::other("key material not read"))?;
        buf.copy_from_slice(m);
        Ok(())
    })
}

/// A `luks` node.
pub struct LuksDriver {
    file: Arc<dyn BlockDriver>,
    luks: Luks,
    /// None when opened without the key (header only, as `qemu-img info` does).
    cipher: Option<SectorCipher>,
    payload: u64,
    size: AtomicU64,
}

impl LuksDriver {
    /// Opens the volume on `file` and unlocks it with `password`. Errors are QEMU's:
    /// "Invalid password, cannot unlock any keyslot", header corruption by field.
    pub async fn open(file: Arc<dyn BlockDriver>, password: &[u8]) -> Result<Self, Error> {
        let luks = read_header(&*file).await?;
        let key = unlock(&luks, &*file, 0, password).await?;
        let cipher = Some(luks.payload_cipher(&key)?);
        Self::with(file, luks, cipher)
    }

    /// Opens the volume on `file` without unlocking it: the header can be inspected
    /// and the size is known, but every read or write fails with `EIO`.
    pub async fn open_header_only(file: Arc<dyn BlockDriver>) -> Result<Self, Error> {
        let luks = read_header(&*file).await?;
        Self::with(file, luks, None)
    }

    fn with(
        file: Arc<dyn BlockDriver>,
        luks: Luks,
        cipher: Option<SectorCipher>,
    ) -> Result<Self, Error> {
        let payload = luks.payload_offset();
        let len = file.size();
        if payload > len {
            return Err(Error::Corrupt(format!(
                "LUKS payload offset {payload} is beyond the end of the file ({len} bytes)"
            )));
        }
        Ok(LuksDriver {
            file,
            luks,
            cipher,
            payload,
            size: AtomicU64::new(len - payload),
        })
    }

    /// Formats `file` as a new volume of `size` guest bytes (the file is resized to
    /// the payload offset plus `size`) and returns it opened.
    pub async fn create(
        file: Arc<dyn BlockDriver>,
        opts: &CreateOptions,
        password: &[u8],
        size: u64,
    ) -> Result<Self, Error> {
        let c = create(opts, password)?;
        let payload = c.luks.payload_offset();
        let total = payload
            .checked_add(size)
            .filter(|t| *t <= i64::MAX as u64)
            .ok_or_else(|| Error::Unsupported("The requested file size is too large".into()))?;
        let werr = |e: io::Error| {
            Error::Io(io::Error::new(
                e.kind(),
                format!("Could not write encryption header: {e}"),
            ))
        };
        file.truncate(total).await.map_err(Error::Io)?;
        for (at, b) in &c.writes {
            file.write_at(*at, b).await.map_err(werr)?;
        }
        file.flush().await.map_err(Error::Io)?;
        let cipher = Some(c.luks.payload_cipher(&c.master_key)?);
        Ok(LuksDriver {
            file,
            luks: c.luks,
            cipher,
            payload,
            size: AtomicU64::new(size),
        })
    }

    /// The volume's header and algorithms.
    pub fn luks(&self) -> &Luks {
        &self.luks
    }

    fn check(&self, offset: u64, len: u64) -> BlockResult<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(errno(libc::EINVAL)),
        }
    }

    /// Reads and decrypts the whole sectors `start..start+buf.len()` (guest bytes).
    async fn read_plain(&self, start: u64, buf: &mut [u8]) -> BlockResult<()> {
        let c = self.cipher()?;
        self.file.read_at(self.payload + start, buf).await?;
        c.decrypt(start / SECTOR, buf);
        Ok(())
    }

    fn cipher(&self) -> BlockResult<&SectorCipher> {
        self.cipher.as_ref().ok_or_else(|| errno(libc::EIO))
    }
}

#[async_trait(?Send)]
impl BlockDriver for LuksDriver {
    fn info(&self) -> NodeInfo {
        NodeInfo {
            driver: "luks".into(),
            ..self.file.info()
        }
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    fn request_alignment(&self) -> u32 {
        SECTOR as u32
    }

    fn memory_alignment(&self) -> usize {
        self.file.memory_alignment()
    }

    async fn readv(&self, offset: u64, iov: &mut IoVecMut<'_>) -> BlockResult<()> {
        let len = iov.len() as u64;
        self.check(offset, len)?;
        let mut done = 0u64;
        while done < len {
            let pos = offset + done;
            let start = pos / SECTOR * SECTOR;
            let end = (start + MAX_IO).min((offset + len).div_ceil(SECTOR) * SECTOR);
            let mut buf = vec![0u8; (end - start) as usize];
            self.read_plain(start, &mut buf).await?;
            let skip = (pos - start) as usize;
            let n = (buf.len() - skip).min((len - done) as usize);
            iov.slice_mut(done as usize, n)
                .copy_from_slice(&buf[skip..skip + n]);
            done += n as u64;
        }
        Ok(())
    }

    async fn writev(&self, offset: u64, iov: &IoVec<'_>, flags: WriteFlags) -> BlockResult<()> {
        let len = iov.len() as u64;
        self.check(offset, len)?;
        let cipher = self.cipher()?;
        let mut done = 0u64;
        while done < len {
            let pos = offset + done;
            let start = pos / SECTOR * SECTOR;
            let end = (start + MAX_IO).min((offset + len).div_ceil(SECTOR) * SECTOR);
            let mut buf = vec![0u8; (end - start) as usize];
            let skip = (pos - start) as usize;
            let n = (buf.len() - skip).min((len - done) as usize);
            // Partial sectors at either end: read-modify-write.
            if skip != 0 {
                self.read_plain(start, &mut buf[..SECTOR as usize]).await?;
            }
            let tail = buf.len() - SECTOR as usize;
            if skip + n < buf.len() && (tail >= SECTOR as usize || skip == 0) {
                self.read_plain(start + tail as u64, &mut buf[tail..])
                    .await?;
            }
            iov.slice(done as usize, n)
                .copy_to_slice(&mut buf[skip..skip + n]);
            cipher.encrypt(start / SECTOR, &mut buf);
            self.file
                .writev(self.payload + start, &IoVec::from_slice(&buf), flags)
                .await?;
            done += n as u64;
        }
        Ok(())
    }

    async fn flush(&self) -> BlockResult<()> {
        self.file.flush().await
    }

    async fn discard(&self, _offset: u64, _len: u64) -> BlockResult<()> {
        // QEMU's luks driver does not pass discards down either.
        Ok(())
    }

    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        // Zeroes must be encrypted like any data: there is no cheap way.
        if flags.no_fallback {
            return Err(errno(libc::ENOTSUP));
        }
        self.check(offset, len)?;
        let zero = vec![0u8; MAX_IO.min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(MAX_IO);
            let w = WriteFlags { fua: flags.fua };
            self.writev(offset + done, &IoVec::from_slice(&zero[..n as usize]), w)
                .await?;
            done += n;
        }
        Ok(())
    }

    async fn block_status(&self, offset: u64, len: u64) -> BlockResult<BlockStatus> {
        Ok(BlockStatus {
            len: len.min(self.size().saturating_sub(offset)).max(1),
            data: true,
            zero: false,
            depth: 1,
            offset: None,
        })
    }

    async fn truncate(&self, size: u64) -> BlockResult<()> {
        let total = self
            .payload
            .checked_add(size)
            .ok_or_else(|| errno(libc::EFBIG))?;
        self.file.truncate(total).await?;
        self.size.store(size, Ordering::Relaxed);
        Ok(())
    }

    fn allocated_size(&self) -> Option<u64> {
        self.file.allocated_size()
    }

    async fn close(&self) -> BlockResult<()> {
        self.file.close().await
    }
}
