//! Writing compressed clusters (`convert -c`): the compression itself runs on any
//! thread ([`Compressor`]), the allocation and mapping on the image.

use std::io;

use oxemu_block::{BlockDriver, BlockDriverExt, IoVec};

use crate::meta::COMPRESSED;
use crate::{compress, os, Qcow2};

impl Qcow2 {
    /// The image's cluster compressor, which can run on any thread.
    pub fn compressor(&self) -> Compressor {
        Compressor {
            kind: self.compression,
            cluster_size: self.cluster_size() as usize,
        }
    }

    /// Writes one whole cluster compressed (`convert -c`). The cluster at `offset`
    /// (cluster aligned; `data` one cluster long, or shorter at the end of the image)
    /// must be unallocated. Data that does not compress is written uncompressed. The
    /// compression runs on the CPU worker pool.
    pub async fn write_compressed(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let c = self.compressor();
        let owned = data.to_vec();
        let packed = oxemu_aio::run_blocking(move || c.compress(&owned)).await??;
        self.write_compressed_prepared(offset, data, packed).await
    }

    /// Pads the file to a whole number of sectors after compressed writes left it
    /// ending mid-sector, as QEMU does at the end of `convert -c`.
    pub async fn pad_file_end(&self) -> io::Result<()> {
        let len = self.file.size();
        if len % 512 != 0 {
            self.file.truncate(len.next_multiple_of(512)).await?;
        }
        Ok(())
    }

    /// Writes one cluster whose compressed form [`Compressor::compress`] already
    /// made: `packed` (or `data` uncompressed when it did not compress). Same rules
    /// as [`Self::write_compressed`].
    pub async fn write_compressed_prepared(
        &self,
        offset: u64,
        data: &[u8],
        packed: Option<Vec<u8>>,
    ) -> io::Result<()> {
        let cs = self.cluster_size();
        if offset % cs != 0 || data.len() as u64 > cs || offset + data.len() as u64 > self.size() {
            return Err(os(libc::EINVAL));
        }
        self.before_write().await?;
        let Some(c) = packed else {
            return self.write_guest(offset, &IoVec::from_slice(data)).await;
        };
        if c.len() as u64 > cs - 512 {
            return Err(os(libc::EINVAL));
        }
        let gc = offset / cs;
        let mut m = self.meta.lock().await;
        if m.corrupt {
            return Err(os(libc::EIO));
        }
        let host = m.alloc_bytes(c.len() as u64).await?;
        if let Err(e) = m.overlap_check(host, c.len() as u64, None).await {
            return Err(m.mark_corrupt(e).await);
        }
        drop(m);
        self.file
            .debug_event(oxemu_block::blkdebug::DebugEvent::WriteCompressed);
        self.file.write_at(host, &c).await?;
        let mut m = self.meta.lock().await;
        let x = 62 - (self.cluster_bits - 8);
        let sectors = ((host & 511) + c.len() as u64).div_ceil(512);
        let e = COMPRESSED | ((sectors - 1) << x) | host;
        let (old, _) = m.entry(gc).await?;
        m.set_entry(gc, e, 0).await?;
        self.release_old(&mut m, old);
        Ok(())
    }
}

/// Compresses clusters the way an image wants them (its compression type and cluster
/// size); plain data, so it can be sent to worker threads.
#[derive(Clone, Copy, Debug)]
pub struct Compressor {
    kind: crate::header::CompressionType,
    cluster_size: usize,
}

impl Compressor {
    /// Compresses one cluster (`data` at most a cluster long; a short last cluster is
    /// padded with zeroes). `None` when it would not save a sector, in which case the
    /// cluster is written uncompressed.
    pub fn compress(&self, data: &[u8]) -> io::Result<Option<Vec<u8>>> {
        if data.len() > self.cluster_size {
            return Err(os(libc::EINVAL));
        }
        let padded;
        let src = if data.len() < self.cluster_size {
            let mut full = vec![0u8; self.cluster_size];
            full[..data.len()].copy_from_slice(data);
            padded = full;
            &padded[..]
        } else {
            data
        };
        compress::compress(self.kind, src, self.cluster_size - 512)
    }
}
