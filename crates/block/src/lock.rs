//! Image locking compatible with QEMU's `file-posix` driver.
//!
//! QEMU takes shared open-file-description (OFD) locks on single bytes of the image:
//! byte `100 + i` says "I hold permission bit i" and byte `200 + i` says "I do not
//! share permission bit i". Before taking them it tests, with `F_OFD_GETLK`, that no
//! other process holds a conflicting byte. Using the same bytes makes QEMU and oxemu
//! refuse to open one image for writing at the same time, in either direction.

use std::io;
use std::os::fd::RawFd;

const PERM_BASE: i64 = 100;
const SHARED_BASE: i64 = 200;

/// QEMU's permission bits (`BLK_PERM_*`).
pub mod perm {
    /// Reads return consistent data.
    pub const CONSISTENT_READ: u64 = 0x01;
    /// Writes that change the content.
    pub const WRITE: u64 = 0x02;
    /// Writes that do not change what is read.
    pub const WRITE_UNCHANGED: u64 = 0x04;
    /// Changing the size.
    pub const RESIZE: u64 = 0x08;
    /// Legacy graph-modification bit, still locked by QEMU 7.2.
    pub const GRAPH_MOD: u64 = 0x10;
    /// Every bit.
    pub const ALL: u64 = 0x1f;
}

const PERM_NAMES: [&str; 5] = [
    "consistent read",
    "write",
    "write unchanged",
    "resize",
    "change children",
];

fn ofd_lock(fd: RawFd, cmd: libc::c_int, ty: libc::c_short, byte: i64) -> io::Result<libc::flock> {
    let mut fl = libc::flock {
        l_type: ty,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: byte,
        l_len: 1,
        l_pid: 0,
    };
    // SAFETY: `fl` is a valid flock for the duration of the call.
    if unsafe { libc::fcntl(fd, cmd, &mut fl) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl)
}

/// True if another open file description holds a lock on `byte`.
fn byte_taken(fd: RawFd, byte: i64) -> io::Result<bool> {
    let fl = ofd_lock(fd, libc::F_OFD_GETLK, libc::F_WRLCK as libc::c_short, byte)?;
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// Takes QEMU's lock bytes for holding `held` permissions and sharing only `shared`.
/// Fails with a QEMU-style message (`Failed to get "write" lock`) on conflict.
pub fn lock_image(fd: RawFd, path: &str, held: u64, shared: u64) -> io::Result<()> {
    // QEMU checks what we want to hold first, then what we refuse to share; keep the
    // order so that conflicts produce the same message.
    for i in 0..PERM_NAMES.len() {
        if held & (1u64 << i) != 0 && byte_taken(fd, SHARED_BASE + i as i64)? {
            return Err(conflict(path, i, false));
        }
    }
    for i in 0..PERM_NAMES.len() {
        if shared & (1u64 << i) == 0 && byte_taken(fd, PERM_BASE + i as i64)? {
            return Err(conflict(path, i, true));
        }
    }
    for i in 0..PERM_NAMES.len() {
        let bit = 1u64 << i;
        if held & bit != 0 {
            ofd_lock(
                fd,
                libc::F_OFD_SETLK,
                libc::F_RDLCK as libc::c_short,
                PERM_BASE + i as i64,
            )?;
        }
        if shared & bit == 0 {
            ofd_lock(
                fd,
                libc::F_OFD_SETLK,
                libc::F_RDLCK as libc::c_short,
                SHARED_BASE + i as i64,
            )?;
        }
    }
    Ok(())
}

/// Moves the lock bytes of `fd` from `old` = `(held, shared)` to `new`, as QEMU's
/// file-posix does when the permissions its users need change: the new bytes are
/// checked against other processes and taken first, then the bytes no longer needed
/// are released. On a conflict nothing changes.
pub fn relock_image(fd: RawFd, path: &str, old: (u64, u64), new: (u64, u64)) -> io::Result<()> {
    lock_image(fd, path, new.0 & !old.0, new.1 | !old.1)?;
    for i in 0..PERM_NAMES.len() {
        let bit = 1u64 << i;
        if old.0 & bit != 0 && new.0 & bit == 0 {
            ofd_lock(
                fd,
                libc::F_OFD_SETLK,
                libc::F_UNLCK as libc::c_short,
                PERM_BASE + i as i64,
            )?;
        }
        if old.1 & bit == 0 && new.1 & bit != 0 {
            ofd_lock(
                fd,
                libc::F_OFD_SETLK,
                libc::F_UNLCK as libc::c_short,
                SHARED_BASE + i as i64,
            )?;
        }
    }
    Ok(())
}

fn conflict(path: &str, bit: usize, shared: bool) -> io::Error {
    let kind = if shared { "shared " } else { "" };
    io::Error::new(
        io::ErrorKind::WouldBlock,
        format!(
            "Failed to get {kind}\"{}\" lock\nIs another process using the image [{path}]?",
            PERM_NAMES[bit]
        ),
    )
}

/// True when the kernel supports OFD locks on `fd` (QEMU's `locking=auto`).
pub fn ofd_supported(fd: RawFd) -> bool {
    byte_taken(fd, PERM_BASE).is_ok()
}

/// Takes the locks QEMU takes before it empties a file to create an image in it:
/// "write" and "resize" held, "resize" not shared. Fails, with QEMU's message, when
/// another process uses the image, so that creating over an image in use never
/// destroys it. Does nothing where OFD locks are unsupported (QEMU's `locking=auto`).
/// The locks live as long as the open file description behind `fd`.
pub fn lock_for_create(fd: RawFd, path: &str) -> io::Result<()> {
    if !ofd_supported(fd) {
        return Ok(());
    }
    lock_image(
        fd,
        path,
        perm::WRITE | perm::RESIZE,
        perm::ALL & !perm::RESIZE,
    )
}
