//! The `file` protocol's creation options `extent_size_hint` and `nocow`, set on the
//! image file before its contents are written, best effort as QEMU's file-posix does:
//! a failure to set the extent size hint is only a warning, and only when the hint was
//! given explicitly (and is not 0); a failure to set NOCOW is silent.

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::Error;

/// QEMU's default extent size hint: 1 MiB.
pub const DEFAULT_EXTENT_SIZE_HINT: u64 = 1 << 20;

/// `struct fsxattr` of `<linux/fs.h>`.
#[repr(C)]
#[derive(Default)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;
const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401c_5820;
const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
const FS_XFLAG_EXTSIZE: u32 = 0x800;
const FS_NOCOW_FL: libc::c_long = 0x0080_0000;

/// The file options of one `create`: `extent_size_hint` (None: not given) and `nocow`.
#[derive(Clone, Copy, Debug, Default)]
pub struct FileHints {
    /// `extent_size_hint`, when given.
    pub extent_size_hint: Option<u64>,
    /// `nocow=on`.
    pub nocow: bool,
}

impl FileHints {
    /// Takes `extent_size_hint` or `nocow` from one `key=value` (true if it was one).
    pub fn apply_opt(&mut self, file: &str, k: &str, v: &str) -> Result<bool, Error> {
        let prefixed = |e: Error| Error::Msg(format!("{file}: {e}"));
        match k {
            "extent_size_hint" => {
                self.extent_size_hint = Some(crate::opts::parse_size_opt(k, v).map_err(prefixed)?)
            }
            "nocow" => self.nocow = crate::opts::parse_bool(k, v).map_err(prefixed)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// What "Formatting ..." shows of these options, in QEMU's order.
    pub fn formatting(&self) -> String {
        let mut s = String::new();
        if self.nocow {
            s += " nocow=on";
        }
        if let Some(h) = self.extent_size_hint {
            s += &format!(" extent_size_hint={h}");
        }
        s
    }

    /// Refuses hints QEMU refuses, before anything is written.
    pub fn validate(&self, file: &str) -> Result<(), Error> {
        if self.extent_size_hint.is_some_and(|h| h > u32::MAX as u64) {
            return Err(Error::Msg(format!("{file}: Extent size hint is too large")));
        }
        Ok(())
    }

    /// Creates `path` if needed and sets NOCOW and the extent size hint on it.
    pub fn set_on(&self, path: &Path) {
        let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
        else {
            return; // the creation proper reports why
        };
        let fd = f.as_raw_fd();
        if self.nocow {
            let mut attr: libc::c_long = 0;
            // SAFETY: FS_IOC_GETFLAGS/SETFLAGS read and write one long at the pointer.
            unsafe {
                if libc::ioctl(fd, FS_IOC_GETFLAGS, &mut attr) == 0 {
                    attr |= FS_NOCOW_FL;
                    libc::ioctl(fd, FS_IOC_SETFLAGS, &attr);
                }
            }
        }
        let hint = self.extent_size_hint.unwrap_or(DEFAULT_EXTENT_SIZE_HINT);
        let mut x = FsXattr::default();
        // SAFETY: FS_IOC_FSGETXATTR/FSSETXATTR take a pointer to a struct fsxattr.
        let r = unsafe {
            let mut r = libc::ioctl(fd, FS_IOC_FSGETXATTR, &mut x);
            if r == 0 {
                x.xflags |= FS_XFLAG_EXTSIZE;
                x.extsize = hint as u32;
                r = libc::ioctl(fd, FS_IOC_FSSETXATTR, &x);
            }
            r
        };
        if r < 0 && self.extent_size_hint.is_some_and(|h| h != 0) {
            let e = std::io::Error::last_os_error();
            crate::warn(&format!(
                "Failed to set extent size hint: {}",
                crate::strip_os_errors(&e.to_string())
            ));
        }
    }
}
