//! The dispatcher loop and the system-call handler.

use crate::cache::Cache;
use crate::cpu::CpuModel;
use crate::ctx::{exit, reg, Ctx, IBL_ENTRIES};
use crate::mm::{page_up, GuestMap};
use crate::translate::{translate, TransError};
use std::sync::Mutex;

/// Process-wide translator state.
pub struct Process {
    /// The code cache.
    pub cache: Mutex<Cache>,
    /// The guest's mappings.
    pub gmap: Mutex<GuestMap>,
    /// The CPU model.
    pub model: CpuModel,
    /// Emulated program break: (start, current, mapped end).
    pub brk: Mutex<(u64, u64, u64)>,
}

/// Executes a raw system call.
///
/// # Safety
/// The call may do anything the kernel allows to this process.
pub unsafe fn raw_syscall(n: u64, a: [u64; 6]) -> i64 {
    let ret: i64;
    std::arch::asm!("syscall", inlateout("rax") n as i64 => ret, in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
        in("r10") a[3], in("r8") a[4], in("r9") a[5], lateout("rcx") _, lateout("r11") _, options(nostack));
    ret
}

fn fatal(msg: &str) -> ! {
    eprintln!("oxemu-x86_64: {msg}");
    // SAFETY: exit_group never returns.
    unsafe { raw_syscall(libc::SYS_exit_group as u64, [127, 0, 0, 0, 0, 0]) };
    unreachable!()
}

fn host_for(p: &Process, rip: u64) -> Result<u64, TransError> {
    let mut c = p.cache.lock().unwrap();
    if let Some(b) = c.lookup(rip) {
        return Ok(b.entry);
    }
    let g = p.gmap.lock().unwrap();
    translate(&mut c, &g, &p.model, rip)
}

/// Kills the process with `sig` as the kernel would for an unhandled fault.
fn die_by(sig: i32) -> ! {
    // SAFETY: reset to default, unblock, raise.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let mut s: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut s);
        libc::sigaddset(&mut s, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &s, std::ptr::null_mut());
        libc::raise(sig);
    }
    fatal("signal did not terminate");
}

/// Runs the guest thread in `ctx` forever (it leaves through exit system calls).
pub fn run(p: &'static Process, ctx: &mut Ctx) -> ! {
    loop {
        let host = match host_for(p, ctx.rip) {
            Ok(h) => h,
            Err(TransError::Fault(a)) => {
                crate::log::unimp(format_args!(
                    "guest jumped to unmapped or non-executable {a:#x}"
                ));
                die_by(libc::SIGSEGV)
            }
            Err(TransError::Internal(e)) => fatal(&e),
        };
        match ctx.enter(host) {
            exit::DIRECT => {
                // SAFETY: exit records are [target, patch site] in the code cache.
                let rec = unsafe { *(ctx.exit_rec as *const [u64; 2]) };
                ctx.rip = rec[0];
                if host_for(p, rec[0]).is_ok() {
                    p.cache.lock().unwrap().chain(rec[1], rec[0]);
                }
            }
            exit::IBL_MISS => {
                ctx.rip = ctx.next_rip;
                if let Ok(h) = host_for(p, ctx.rip) {
                    let i = (ctx.rip as usize) & (IBL_ENTRIES - 1);
                    let t = ctx.ibl_table as *mut u64;
                    // SAFETY: i is in the table, which this thread owns.
                    unsafe {
                        t.add(2 * i + 1).write(h);
                        t.add(2 * i).write(ctx.rip);
                    }
                }
            }
            exit::SYSCALL => {
                ctx.rip = ctx.next_rip;
                syscall(p, ctx);
            }
            exit::CPUID => {
                ctx.rip = ctx.next_rip;
                let r = p
                    .model
                    .cpuid(ctx.regs[reg::RAX] as u32, ctx.regs[reg::RCX] as u32);
                ctx.regs[reg::RAX] = r[0] as u64;
                ctx.regs[reg::RBX] = r[1] as u64;
                ctx.regs[reg::RCX] = r[2] as u64;
                ctx.regs[reg::RDX] = r[3] as u64;
            }
            exit::SIGILL => die_by(libc::SIGILL),
            exit::INT => die_by(if ctx.exit_rec == 3 || ctx.exit_rec == 1 {
                libc::SIGTRAP
            } else {
                libc::SIGSEGV
            }),
            exit::REDIRECT => ctx.rip = ctx.next_rip,
            r => fatal(&format!("bad exit reason {r}")),
        }
    }
}

fn brk(p: &Process, want: u64) -> u64 {
    let mut b = p.brk.lock().unwrap();
    let (start, cur, mapped) = *b;
    if want < start {
        return cur;
    }
    let need = page_up(want);
    if need > mapped {
        // SAFETY: fixed mapping that never replaces anything.
        let r = unsafe {
            libc::mmap(
                mapped as *mut _,
                (need - mapped) as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if r == libc::MAP_FAILED || r as u64 != mapped {
            return cur;
        }
        p.gmap
            .lock()
            .unwrap()
            .insert(mapped, need, libc::PROT_READ | libc::PROT_WRITE);
        b.2 = need;
    }
    b.1 = want;
    want
}

const ENOSYS: i64 = -38;

fn syscall(p: &Process, ctx: &mut Ctx) {
    let nr = ctx.regs[reg::RAX];
    let a = [
        ctx.regs[reg::RDI],
        ctx.regs[reg::RSI],
        ctx.regs[reg::RDX],
        ctx.regs[reg::R10],
        ctx.regs[8],
        ctx.regs[9],
    ];
    let ret: i64 = match nr as i64 {
        libc::SYS_brk => brk(p, a[0]) as i64,
        libc::SYS_arch_prctl => match a[0] {
            0x1002 => {
                ctx.guest_fs = a[1];
                0
            }
            // SAFETY: guest pointer; a bad one faults the translator (known limitation).
            0x1003 => unsafe {
                (a[1] as *mut u64).write_unaligned(ctx.guest_fs);
                0
            },
            _ => -22,
        },
        libc::SYS_exit | libc::SYS_exit_group => {
            // SAFETY: leaves the process.
            unsafe { raw_syscall(libc::SYS_exit_group as u64, [a[0], 0, 0, 0, 0, 0]) };
            unreachable!()
        }
        libc::SYS_mmap | libc::SYS_mprotect | libc::SYS_munmap => {
            // SAFETY: passed through; tracked below.
            let r = unsafe { raw_syscall(nr, a) };
            if !(-4095..0).contains(&r) {
                let (lo, len) = if nr as i64 == libc::SYS_mmap {
                    (r as u64, a[1])
                } else {
                    (a[0], a[1])
                };
                let hi = page_up(lo + len);
                p.cache.lock().unwrap().invalidate(lo, hi);
                let mut g = p.gmap.lock().unwrap();
                match nr as i64 {
                    libc::SYS_mmap => g.insert(lo, hi, a[2] as i32),
                    libc::SYS_mprotect => g.protect(lo, hi, a[2] as i32),
                    _ => g.remove(lo, hi),
                }
            }
            r
        }
        libc::SYS_rseq | libc::SYS_clone3 => ENOSYS,
        libc::SYS_rt_sigaction
        | libc::SYS_rt_sigreturn
        | libc::SYS_sigaltstack
        | libc::SYS_clone
        | libc::SYS_fork
        | libc::SYS_vfork
        | libc::SYS_execve
        | libc::SYS_execveat
        | libc::SYS_mremap
        | libc::SYS_set_tid_address => {
            crate::log::unimp(format_args!("system call {nr} not supported yet: ENOSYS"));
            ENOSYS
        }
        // SAFETY: pass-through of a call that does not touch translator state.
        _ => unsafe { raw_syscall(nr, a) },
    };
    if crate::log::STRACE.load(std::sync::atomic::Ordering::Relaxed) {
        crate::log::line(format_args!(
            "{} syscall({nr}, {:#x}, {:#x}, {:#x}) = {ret}",
            std::process::id(),
            a[0],
            a[1],
            a[2]
        ));
    }
    ctx.regs[reg::RAX] = ret as u64;
    ctx.regs[reg::RCX] = ctx.rip;
    ctx.regs[reg::R11] = ctx.rflags;
}
