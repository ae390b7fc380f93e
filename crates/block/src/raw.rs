//! The `raw` format driver: the guest sees its child node's bytes, optionally a window
//! `offset..offset+size` of them (QEMU's `raw` options `offset` and `size`).

use std::io;
use std::sync::Arc;

use crate::blkdebug::DebugEvent;

use async_trait::async_trait;

use crate::driver::{
    errno, BlockDriver, BlockResult, BlockStatus, NodeInfo, WriteFlags, ZeroFlags,
};
use crate::iovec::{IoVec, IoVecMut};

/// A `raw` node over a protocol node.
pub struct RawFormat {
    file: Arc<dyn BlockDriver>,
    offset: u64,
    size: Option<u64>,
    probed: bool,
}

/// Magic numbers at the start of image formats that a probe would recognise; a write
/// that puts one into sector 0 of a probed raw image is refused, as in QEMU, so that
/// a guest cannot turn its disk into an image that points at host files.
const FORMAT_MAGICS: [&[u8]; 6] = [
    b"QFI\xfb",
    b"KDMV",
    b"conectix",
    b"LUKS\xba\xbe",
    b"QED\0",
    b"cxsparse",
];

impl RawFormat {
    /// Wraps `file`, exposing all of it.
    pub fn new(file: Arc<dyn BlockDriver>) -> Self {
        RawFormat {
            file,
            offset: 0,
            size: None,
            probed: false,
        }
    }

    /// Marks the format as guessed by probing rather than given: writes to the first
    /// sector that would make the image probe as another format fail with EPERM, as
    /// QEMU restricts them.
    pub fn probed(mut self) -> Self {
        self.probed = true;
        self
    }

    /// Wraps `file`, exposing `size` bytes from `offset` (QEMU's raw `offset`/`size`).
    pub fn with_window(
        file: Arc<dyn BlockDriver>,
        offset: u64,
        size: Option<u64>,
    ) -> io::Result<Self> {
        let fsize = file.size();
        if offset > fsize || size.is_some_and(|s| offset.checked_add(s).is_none_or(|e| e > fsize)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("The sum of offset ({offset}) and size ({}) has to be smaller or equal to the actual size of the containing file ({fsize})", size.unwrap_or(0)),
            ));
        }
        Ok(RawFormat {
            file,
            offset,
            size,
            probed: false,
        })
    }

    /// The protocol node below.
    pub fn file(&self) -> &Arc<dyn BlockDriver> {
        &self.file
    }

    fn check(&self, offset: u64, len: u64) -> BlockResult<u64> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size() => Ok(self.offset + offset),
            _ => Err(errno(libc::EINVAL)),
        }
    }
}

#[async_trait(?Send)]
impl BlockDriver for RawFormat {
    fn info(&self) -> NodeInfo {
        NodeInfo {
            driver: "raw".into(),
            ..self.file.info()
        }
    }
    /// Without an explicit `size`, the file's length rounded up to whole 512-byte
    /// sectors, as QEMU counts every node's length: the tail reads as zeroes.
    fn size(&self) -> u64 {
        self.size.unwrap_or_else(|| {
            self.file
                .size()
                .saturating_sub(self.offset)
                .next_multiple_of(512)
        })
    }
    fn request_alignment(&self) -> u32 {
        self.file.request_alignment()
    }
    fn memory_alignment(&self) -> usize {
        self.file.memory_alignment()
    }
    fn debug_event(&self, ev: DebugEvent) {
        self.file.debug_event(ev)
    }
    fn latches_flush_errors(&self) -> bool {
        self.file.latches_flush_errors()
    }
    async fn readv(&self, offset: u64, iov: &mut IoVecMut<'_>) -> BlockResult<()> {
        let o = self.check(offset, iov.len() as u64)?;
        self.file.debug_event(DebugEvent::ReadAio);
        self.file.readv(o, iov).await
    }
    async fn writev(&self, offset: u64, iov: &IoVec<'_>, flags: WriteFlags) -> BlockResult<()> {
        let o = self.check(offset, iov.len() as u64)?;
        if self.probed && offset < 512 {
            // What the first bytes of the image would be after the write.
            let n = (8u64.saturating_sub(offset) as usize).min(iov.len());
            let mut head = [0u8; 8];
            if n > 0 {
                let have = self.size().min(8) as usize;
                crate::BlockDriverExt::read_at(&*self.file, self.offset, &mut head[..have]).await?;
                iov.slice(0, n)
                    .copy_to_slice(&mut head[offset as usize..offset as usize + n]);
            }
            let data = &head[..];
            if FORMAT_MAGICS
                .iter()
                .any(|m| data.len() >= m.len() && data.starts_with(m))
            {
                return Err(errno(libc::EPERM));
            }
        }
        self.file.debug_event(DebugEvent::WriteAio);
        self.file.writev(o, iov, flags).await
    }
    async fn flush(&self) -> BlockResult<()> {
        self.file.debug_event(DebugEvent::FlushToOs);
        self.file.debug_event(DebugEvent::FlushToDisk);
        self.file.flush().await
    }
    async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        let o = self.check(offset, len)?;
        self.file.discard(o, len).await
    }
    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        let o = self.check(offset, len)?;
        self.file.write_zeroes(o, len, flags).await
    }
    async fn block_status(&self, offset: u64, len: u64) -> BlockResult<BlockStatus> {
        let o = self.check(offset, 0)?;
        self.file
            .block_status(o, len.min(self.size().saturating_sub(offset)))
            .await
    }
    async fn truncate(&self, size: u64) -> BlockResult<()> {
        if self.offset != 0 || self.size.is_some() {
            return Err(errno(libc::ENOTSUP));
        }
        self.file.truncate(size).await
    }
    fn allocated_size(&self) -> Option<u64> {
        self.file.allocated_size()
    }
    async fn close(&self) -> BlockResult<()> {
        self.file.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BlockDriverExt, EventLoop, FileDriver, FileOptions};

    #[test]
    fn a_probed_raw_image_refuses_writing_a_format_magic_into_sector_0() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.img");
        FileDriver::create(&p, 4096, false).unwrap();
        let file: Arc<dyn BlockDriver> = Arc::new(FileDriver::open(&FileOptions::new(&p)).unwrap());
        let lp = EventLoop::with_defaults().unwrap();
        let probed = RawFormat::new(file.clone()).probed();
        let given = RawFormat::new(file);
        lp.block_on(async {
            let e = probed.write_at(0, b"QFI\xfb\0\0\0\x03").await.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EPERM));
            // Split over two writes the magic is still caught.
            probed.write_at(0, b"QF").await.unwrap();
            assert!(probed.write_at(2, b"I\xfb").await.is_err());
            probed.write_at(512, b"QFI\xfb").await.unwrap();
            probed.write_at(0, b"hello").await.unwrap();
            given.write_at(0, b"QFI\xfb").await.unwrap();
        });
    }
}
