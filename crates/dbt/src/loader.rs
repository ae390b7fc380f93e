//! Mapping an ELF program (and its interpreter) into memory and building the initial stack.

use crate::elf::{self, ElfInfo, PF_R, PF_W, PF_X};
use crate::mm::{page_down, page_up, GuestMap};
use std::os::unix::io::AsRawFd;

/// A loaded image.
#[derive(Debug, Clone, Copy)]
pub struct Loaded {
    /// Load bias.
    pub bias: u64,
    /// Entry point (biased).
    pub entry: u64,
    /// Program headers address (biased), or 0.
    pub phdr: u64,
    /// Number of program headers.
    pub phnum: u64,
    /// End of the highest segment (for brk).
    pub end: u64,
}

fn prot(flags: u32) -> i32 {
    (if flags & PF_R != 0 {
        libc::PROT_READ
    } else {
        0
    }) | (if flags & PF_W != 0 {
        libc::PROT_WRITE
    } else {
        0
    }) | (if flags & PF_X != 0 {
        libc::PROT_EXEC
    } else {
        0
    })
}

/// Maps `path`; records the mappings in `gmap`.
pub fn load(path: &str, gmap: &mut GuestMap) -> Result<(Loaded, ElfInfo), String> {
    let data = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let info = elf::parse(&data).map_err(|e| format!("{path}: {e}"))?;
    let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let lo = page_down(info.segments[0].vaddr);
    let last = info.segments.last().unwrap();
    let hi = page_up(last.vaddr + last.memsz);
    let span = (hi - lo) as usize;
    let (hint, flags) = if info.etype == elf::ET_EXEC {
        (lo as *mut libc::c_void, libc::MAP_FIXED_NOREPLACE)
    } else {
        (std::ptr::null_mut(), 0)
    };
    // SAFETY: a fresh PROT_NONE reservation; fixed only without replacing.
    let base = unsafe {
        libc::mmap(
            hint,
            span,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED || (info.etype == elf::ET_EXEC && base as u64 != lo) {
        return Err(format!("{path}: cannot reserve {lo:#x}..{hi:#x}"));
    }
    let bias = base as u64 - lo;
    for s in &info.segments {
        let start = page_down(s.vaddr) + bias;
        let file_end = s.vaddr + s.filesz + bias;
        let mem_end = page_up(s.vaddr + s.memsz) + bias;
        let p = prot(s.flags);
        if s.filesz > 0 {
            let len = (page_up(file_end) - start) as usize;
            // SAFETY: inside our reservation.
            let r = unsafe {
                libc::mmap(
                    start as *mut _,
                    len,
                    p | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_FIXED,
                    file.as_raw_fd(),
                    page_down(s.offset) as i64,
                )
            };
            if r == libc::MAP_FAILED {
                return Err(format!("{path}: mapping segment at {:#x} failed", s.vaddr));
            }
            // Zero the tail of the last file page (bss start).
            let tail = page_up(file_end) - file_end;
            if s.memsz > s.filesz && tail > 0 {
                // SAFETY: mapped writable just above.
                unsafe { std::ptr::write_bytes(file_end as *mut u8, 0, tail as usize) };
            }
        }
        let anon_start = if s.filesz > 0 {
            page_up(file_end)
        } else {
            start
        };
        if mem_end > anon_start {
            // SAFETY: inside our reservation.
            let r = unsafe {
                libc::mmap(
                    anon_start as *mut _,
                    (mem_end - anon_start) as usize,
                    p,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if r == libc::MAP_FAILED {
                return Err(format!("{path}: mapping bss at {anon_start:#x} failed"));
            }
        }
        // SAFETY: our mapping.
        unsafe { libc::mprotect(start as *mut _, (mem_end - start) as usize, p) };
        gmap.insert(start, mem_end, p);
    }
    let l = Loaded {
        bias,
        entry: info.entry + bias,
        phdr: info.phdr_vaddr.map_or(0, |v| v + bias),
        phnum: info.phnum as u64,
        end: hi + bias,
    };
    Ok((l, info))
}

/// Auxiliary vector types used here.
pub mod at {
    /// End.
    pub const NULL: u64 = 0;
    /// Program headers.
    pub const PHDR: u64 = 3;
    /// Size of one program header.
    pub const PHENT: u64 = 4;
    /// Number of program headers.
    pub const PHNUM: u64 = 5;
    /// Page size.
    pub const PAGESZ: u64 = 6;
    /// Interpreter base.
    pub const BASE: u64 = 7;
    /// Flags.
    pub const FLAGS: u64 = 8;
    /// Program entry.
    pub const ENTRY: u64 = 9;
    /// uid.
    pub const UID: u64 = 11;
    /// euid.
    pub const EUID: u64 = 12;
    /// gid.
    pub const GID: u64 = 13;
    /// egid.
    pub const EGID: u64 = 14;
    /// Platform string.
    pub const PLATFORM: u64 = 15;
    /// Hardware capabilities.
    pub const HWCAP: u64 = 16;
    /// Clock ticks.
    pub const CLKTCK: u64 = 17;
    /// Secure mode.
    pub const SECURE: u64 = 23;
    /// 16 random bytes.
    pub const RANDOM: u64 = 25;
    /// More hardware capabilities.
    pub const HWCAP2: u64 = 26;
    /// File name of the program.
    pub const EXECFN: u64 = 31;
}

/// Builds the initial stack; returns (rsp, auxv pairs).
#[allow(clippy::too_many_arguments)]
pub fn build_stack(
    size: u64,
    argv: &[String],
    envp: &[String],
    execfn: &str,
    exe: &Loaded,
    interp: Option<&Loaded>,
    hwcap: u64,
    gmap: &mut GuestMap,
) -> Result<(u64, Vec<(u64, u64)>), String> {
    // SAFETY: fresh anonymous mapping.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err("cannot allocate the guest stack".into());
    }
    let base = base as u64;
    gmap.insert(base, base + size, libc::PROT_READ | libc::PROT_WRITE);
    let mut sp = base + size;
    let put = |bytes: &[u8], sp: &mut u64| -> u64 {
        *sp -= bytes.len() as u64;
        // SAFETY: inside the fresh stack mapping (sizes are checked below).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), *sp as *mut u8, bytes.len()) };
        *sp
    };
    let total: usize =
        argv.iter().chain(envp).map(|s| s.len() + 1).sum::<usize>() + execfn.len() + 64;
    if total as u64 + 8 * (argv.len() + envp.len()) as u64 + 4096 > size {
        return Err("arguments and environment do not fit on the stack".into());
    }
    let cstr = |s: &str| {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    };
    let execfn_p = put(&cstr(execfn), &mut sp);
    let env_p: Vec<u64> = envp.iter().map(|s| put(&cstr(s), &mut sp)).collect();
    let arg_p: Vec<u64> = argv.iter().map(|s| put(&cstr(s), &mut sp)).collect();
    let plat = put(b"x86_64\0", &mut sp);
    let mut rnd = [0u8; 16];
    // SAFETY: getrandom into a local buffer.
    unsafe { libc::getrandom(rnd.as_mut_ptr() as *mut _, 16, 0) };
    let rnd_p = put(&rnd, &mut sp);
    // SAFETY: plain id queries.
    let (uid, euid, gid, egid) = unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
        )
    };
    let auxv: Vec<(u64, u64)> = vec![
        (at::PHDR, exe.phdr),
        (at::PHENT, 56),
        (at::PHNUM, exe.phnum),
        (at::PAGESZ, 4096),
        (at::BASE, interp.map_or(0, |i| i.bias)),
        (at::FLAGS, 0),
        (at::ENTRY, exe.entry),
        (at::UID, uid as u64),
        (at::EUID, euid as u64),
        (at::GID, gid as u64),
        (at::EGID, egid as u64),
        (at::PLATFORM, plat),
        (at::HWCAP, hwcap),
        (at::CLKTCK, 100),
        (at::SECURE, 0),
        (at::RANDOM, rnd_p),
        (at::HWCAP2, 0),
        (at::EXECFN, execfn_p),
        (at::NULL, 0),
    ];
    let words = 1 + arg_p.len() + 1 + env_p.len() + 1 + 2 * auxv.len();
    sp = (sp - 8 * words as u64) & !15;
    let mut w: Vec<u64> = vec![argv.len() as u64];
    w.extend(&arg_p);
    w.push(0);
    w.extend(&env_p);
    w.push(0);
    for (k, v) in &auxv {
        w.push(*k);
        w.push(*v);
    }
    // SAFETY: words fit below the strings (checked above).
    unsafe { std::ptr::copy_nonoverlapping(w.as_ptr(), sp as *mut u64, w.len()) };
    Ok((sp, auxv))
}
