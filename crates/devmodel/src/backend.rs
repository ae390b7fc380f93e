//! Host memory behind guest RAM: QEMU's `memory-backend-ram`, `-memfd` and `-file`.
//!
//! A [`RamBlock`] is one `mmap(2)` mapping. `share=on` maps it `MAP_SHARED` (other
//! processes with the same memfd or file see guest writes), `share=off` maps it
//! `MAP_PRIVATE` (copy on write). As in QEMU, `memory-backend-memfd` defaults to
//! `share=on`, the others to `share=off`.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Which backend created a block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// Anonymous memory (`memory-backend-ram`).
    Ram,
    /// An anonymous memory file (`memory-backend-memfd`).
    Memfd,
    /// A file on the host (`memory-backend-file`, `mem-path=`).
    File(std::path::PathBuf),
}

/// A mapping of host memory used as guest RAM.
pub struct RamBlock {
    ptr: *mut u8,
    len: usize,
    shared: bool,
    kind: BackendKind,
    fd: Option<OwnedFd>,
}

// SAFETY: the mapping lives as long as the block and is only accessed through
// bounds-checked copies; concurrent guest-memory accesses are racy by nature, as
// guest RAM is in QEMU.
unsafe impl Send for RamBlock {}
// SAFETY: as above.
unsafe impl Sync for RamBlock {}

impl std::fmt::Debug for RamBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RamBlock")
            .field("len", &self.len)
            .field("shared", &self.shared)
            .field("kind", &self.kind)
            .finish()
    }
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

impl RamBlock {
    fn map(len: u64, shared: bool, fd: Option<OwnedFd>, kind: BackendKind) -> Result<Self, String> {
        if len == 0 {
            return Err("can't create backend with size 0".into());
        }
        let len: usize = len
            .try_into()
            .map_err(|_| format!("size {len} does not fit the host's address space"))?;
        let flags = if shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        } | if fd.is_none() {
            libc::MAP_ANONYMOUS | libc::MAP_NORESERVE
        } else {
            0
        };
        let raw = fd.as_ref().map_or(-1, |f| f.as_raw_fd());
        // SAFETY: a fresh mapping, with no address hint.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                raw,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(os_err("cannot set up guest memory"));
        }
        Ok(RamBlock {
            ptr: p.cast(),
            len,
            shared,
            kind,
            fd,
        })
    }

    /// Anonymous memory, as `memory-backend-ram`.
    pub fn anonymous(size: u64, shared: bool) -> Result<Self, String> {
        Self::map(size, shared, None, BackendKind::Ram)
    }

    /// A memfd of `size` bytes, as `memory-backend-memfd`.
    pub fn memfd(name: &str, size: u64, shared: bool) -> Result<Self, String> {
        let cname = CString::new(name).map_err(|_| "memfd name contains NUL".to_string())?;
        // SAFETY: memfd_create with a valid C string.
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(os_err("failed to create memfd"));
        }
        // SAFETY: fd is a new descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on our descriptor.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) } < 0 {
            return Err(os_err("failed to resize memfd"));
        }
        Self::map(size, shared, Some(fd), BackendKind::Memfd)
    }

    /// A host file, created if missing and sized to `size` if empty, as
    /// `memory-backend-file`.
    pub fn file(path: &Path, size: u64, shared: bool) -> Result<Self, String> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| {
                format!(
                    "can't open backing store {} for guest RAM: {e}",
                    path.display()
                )
            })?;
        let have = f.metadata().map_err(|e| e.to_string())?.len();
        if have == 0 {
            f.set_len(size).map_err(|e| e.to_string())?;
        } else if have < size {
            return Err(format!(
                "backing store size 0x{have:x} does not match 'size' option 0x{size:x}"
            ));
        }
        Self::map(size, shared, Some(f.into()), BackendKind::File(path.into()))
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    /// Whether the block is empty (never true: blocks have a size).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the mapping is shared.
    pub fn shared(&self) -> bool {
        self.shared
    }

    /// The backend kind.
    pub fn kind(&self) -> &BackendKind {
        &self.kind
    }

    /// The descriptor behind a memfd or file block.
    pub fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.fd.as_ref().map(|f| f.as_fd())
    }

    fn range(&self, off: u64, n: usize) -> Option<usize> {
        let off = usize::try_from(off).ok()?;
        (off.checked_add(n)? <= self.len).then_some(off)
    }

    /// Copies out `buf.len()` bytes at `off`; bytes beyond the block read 0.
    pub fn read(&self, off: u64, buf: &mut [u8]) {
        match self.range(off, buf.len()) {
            // SAFETY: in bounds of the live mapping.
            Some(o) => unsafe {
                std::ptr::copy_nonoverlapping(self.ptr.add(o), buf.as_mut_ptr(), buf.len())
            },
            None => buf.fill(0),
        }
    }

    /// Copies `buf` in at `off`; ignored if it does not fit.
    pub fn write(&self, off: u64, buf: &[u8]) {
        if let Some(o) = self.range(off, buf.len()) {
            // SAFETY: in bounds of the live mapping.
            unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), self.ptr.add(o), buf.len()) }
        }
    }
}

impl Drop for RamBlock {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::FileExt;

    #[test]
    fn anonymous_reads_back_and_bounds_are_checked() {
        let b = RamBlock::anonymous(4096, false).unwrap();
        b.write(10, b"hello");
        let mut out = [0u8; 5];
        b.read(10, &mut out);
        assert_eq!(&out, b"hello");
        b.write(4094, b"xyz"); // does not fit: ignored
        let mut t = [9u8; 3];
        b.read(4094, &mut t);
        assert_eq!(t, [0, 0, 0]);
        assert!(RamBlock::anonymous(0, false).is_err());
    }

    #[test]
    fn shared_file_is_visible_to_the_host_private_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ram");
        let b = RamBlock::file(&p, 8192, true).unwrap();
        b.write(100, b"guest");
        let mut f = std::fs::File::open(&p).unwrap();
        let mut all = Vec::new();
        f.read_to_end(&mut all).unwrap();
        assert_eq!(&all[100..105], b"guest");
        drop(b);
        let p2 = dir.path().join("ram2");
        let b = RamBlock::file(&p2, 4096, false).unwrap();
        b.write(0, b"x");
        let mut one = [0u8; 1];
        std::fs::File::open(&p2)
            .unwrap()
            .read_exact_at(&mut one, 0)
            .unwrap();
        assert_eq!(one, [0]);
        // A file smaller than the size asked for is refused.
        std::fs::write(dir.path().join("small"), [1u8; 16]).unwrap();
        let e = RamBlock::file(&dir.path().join("small"), 4096, false).unwrap_err();
        assert_eq!(
            e,
            "backing store size 0x10 does not match 'size' option 0x1000"
        );
    }

    #[test]
    fn memfd_shared_mapping_shows_through_the_fd() {
        let b = RamBlock::memfd("t", 4096, true).unwrap();
        b.write(7, b"abc");
        let fd = b.fd().unwrap().try_clone_to_owned().unwrap();
        let f = std::fs::File::from(fd);
        let mut out = [0u8; 3];
        f.read_exact_at(&mut out, 7).unwrap();
        assert_eq!(&out, b"abc");
        assert_eq!(b.kind(), &BackendKind::Memfd);
    }
}
