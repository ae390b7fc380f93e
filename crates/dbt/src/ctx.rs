//! The per-thread context block and the assembly that switches between translator and guest.
//!
//! Each guest thread has one [`Ctx`], page aligned, and the thread's GS base points at it for
//! its whole life: translated code reaches its scratch slots and the exit routines with
//! `gs:`-relative absolute addressing, without touching guest registers, flags or stack.  The
//! guest's FS base is swapped in on entry and out on exit (`wrfsbase`), and the guest's
//! extended state (x87/SSE/AVX) is saved with `xsave` so that translator code cannot clobber it.

use std::sync::atomic::{AtomicU64, Ordering};

/// Guest register indices in [`Ctx::regs`] (hardware encoding order).
pub mod reg {
    /// rax
    pub const RAX: usize = 0;
    /// rcx
    pub const RCX: usize = 1;
    /// rdx
    pub const RDX: usize = 2;
    /// rbx
    pub const RBX: usize = 3;
    /// rsp
    pub const RSP: usize = 4;
    /// rbp
    pub const RBP: usize = 5;
    /// rsi
    pub const RSI: usize = 6;
    /// rdi
    pub const RDI: usize = 7;
    /// r8
    pub const R8: usize = 8;
    /// r9
    pub const R9: usize = 9;
    /// r10
    pub const R10: usize = 10;
    /// r11
    pub const R11: usize = 11;
}

/// Offsets inside [`Ctx`] used by generated code and assembly.
pub mod off {
    /// Guest rax while an exit routine runs.
    pub const SAVE_RAX: u32 = 0x00;
    /// Guest rcx while an indirect branch is looked up.
    pub const SAVE_RCX: u32 = 0x08;
    /// Exit record of a direct-branch exit.
    pub const EXIT_REC: u32 = 0x10;
    /// Why the guest exited.
    pub const EXIT_REASON: u32 = 0x18;
    /// The indirect-branch table.
    pub const IBL_TABLE: u32 = 0x20;
    /// Address of `oxemu_exit_direct`.
    pub const EXIT_FN: u32 = 0x40;
    /// Address of `oxemu_ibl`.
    pub const IBL_FN: u32 = 0x48;
    /// Address of `oxemu_exit_common`.
    pub const COMMON_FN: u32 = 0x50;
    /// Guest address to continue at after an exit that names one.
    pub const NEXT_RIP: u32 = 0x70;
}

/// Exit reasons (values of [`Ctx::exit_reason`]).
pub mod exit {
    /// A direct branch whose target is not chained; `exit_rec` points at its record.
    pub const DIRECT: u64 = 1;
    /// An indirect branch missed the lookup table; the target is in `next_rip`.
    pub const IBL_MISS: u64 = 2;
    /// `syscall`; `next_rip` is the address after it.
    pub const SYSCALL: u64 = 3;
    /// `cpuid`; `next_rip` is the address after it.
    pub const CPUID: u64 = 4;
    /// An instruction the translator refuses; `next_rip` is its address.
    pub const SIGILL: u64 = 5;
    /// A signal handler rewrote the state; continue at `next_rip`.
    pub const REDIRECT: u64 = 6;
    /// A software interrupt (`int n`); `next_rip` is the address after it.
    pub const INT: u64 = 7;
}

/// Entries in each thread's indirect-branch table (a power of two).
pub const IBL_ENTRIES: usize = 1 << 16;

/// The per-thread context.  Layout up to `guest_xsave` is used by assembly.
#[repr(C, align(4096))]
pub struct Ctx {
    /// Scratch: guest rax.
    pub save_rax: u64,
    /// Scratch: guest rcx.
    pub save_rcx: u64,
    /// Exit record pointer.
    pub exit_rec: u64,
    /// Exit reason.
    pub exit_reason: u64,
    /// Indirect-branch table base.
    pub ibl_table: u64,
    /// Scratch: host target of an indirect branch.
    pub ibl_jmp: u64,
    /// Scratch: saved arithmetic flags.
    pub save_flags: u64,
    /// Host address to enter.
    pub target: u64,
    /// `oxemu_exit_direct`.
    pub exit_fn: u64,
    /// `oxemu_ibl`.
    pub ibl_fn: u64,
    /// `oxemu_exit_common`.
    pub common_fn: u64,
    /// Host stack pointer inside `oxemu_enter`.
    pub host_rsp: u64,
    /// Host FS base.
    pub host_fs: u64,
    /// Guest FS base.
    pub guest_fs: u64,
    /// Continue address for some exits.
    pub next_rip: u64,
    /// Address of this context.
    pub self_ptr: u64,
    /// Guest general registers in encoding order.
    pub regs: [u64; 16],
    /// Guest RFLAGS.
    pub rflags: u64,
    /// Guest RIP (valid while in the translator).
    pub rip: u64,
    /// Host callee-saved registers.
    pub host_saved: [u64; 6],
    _pad: [u64; 472],
    /// Guest extended state (XSAVE standard format).
    pub guest_xsave: [u8; 0x1000],
    /// Host extended state.
    pub host_xsave: [u8; 0x1000],
    /// Pending signals for this thread (bit n-1 for signal n).
    pub pending: AtomicU64,
    /// siginfo of each pending signal.
    pub pending_info: [[u8; 128]; 65],
    /// Guest `sigaltstack`: sp, flags, size.
    pub altstack: (u64, i32, u64),
    /// Guest `set_tid_address` / `CLONE_CHILD_CLEARTID` pointer.
    pub clear_child_tid: u64,
    /// Set while the host signal handler single-steps towards an instruction boundary.
    pub stepping: u64,
}

const _: () = {
    assert!(std::mem::offset_of!(Ctx, regs) == 0x80);
    assert!(std::mem::offset_of!(Ctx, rflags) == 0x100);
    assert!(std::mem::offset_of!(Ctx, host_saved) == 0x110);
    assert!(std::mem::offset_of!(Ctx, guest_xsave) == 0x1000);
    assert!(std::mem::offset_of!(Ctx, host_xsave) == 0x2000);
    assert!(std::mem::offset_of!(Ctx, target) == 0x38);
    assert!(std::mem::offset_of!(Ctx, host_rsp) == 0x58);
    assert!(std::mem::offset_of!(Ctx, guest_fs) == 0x68);
    assert!(std::mem::offset_of!(Ctx, next_rip) == 0x70);
};

std::arch::global_asm!(
    ".globl oxemu_enter",
    "oxemu_enter:",
    "mov gs:[0x110], rbx",
    "mov gs:[0x118], rbp",
    "mov gs:[0x120], r12",
    "mov gs:[0x128], r13",
    "mov gs:[0x130], r14",
    "mov gs:[0x138], r15",
    "mov gs:[0x58], rsp",
    "mov eax, -1",
    "mov edx, -1",
    "xsave64 gs:[0x2000]",
    "xrstor64 gs:[0x1000]",
    "rdfsbase rax",
    "mov gs:[0x60], rax",
    "mov rax, gs:[0x68]",
    "wrfsbase rax",
    "push qword ptr gs:[0x100]",
    "popfq",
    "mov rax, gs:[0x80]",
    "mov rcx, gs:[0x88]",
    "mov rdx, gs:[0x90]",
    "mov rbx, gs:[0x98]",
    "mov rbp, gs:[0xa8]",
    "mov rsi, gs:[0xb0]",
    "mov rdi, gs:[0xb8]",
    "mov r8, gs:[0xc0]",
    "mov r9, gs:[0xc8]",
    "mov r10, gs:[0xd0]",
    "mov r11, gs:[0xd8]",
    "mov r12, gs:[0xe0]",
    "mov r13, gs:[0xe8]",
    "mov r14, gs:[0xf0]",
    "mov r15, gs:[0xf8]",
    "mov rsp, gs:[0xa0]",
    ".globl oxemu_enter_jmp",
    "oxemu_enter_jmp:",
    "jmp qword ptr gs:[0x38]",
    ".globl oxemu_enter_end",
    "oxemu_enter_end:",
    "",
    ".globl oxemu_exit_direct",
    "oxemu_exit_direct:",
    "mov gs:[0x10], rax",
    "mov qword ptr gs:[0x18], 1",
    ".globl oxemu_exit_common",
    "oxemu_exit_common:",
    "mov gs:[0xa0], rsp",
    "mov rsp, gs:[0x58]",
    "pushfq",
    "pop qword ptr gs:[0x100]",
    "push 0x202",
    "popfq",
    "mov rax, gs:[0x00]",
    "mov gs:[0x80], rax",
    "mov gs:[0x88], rcx",
    "mov gs:[0x90], rdx",
    "mov gs:[0x98], rbx",
    "mov gs:[0xa8], rbp",
    "mov gs:[0xb0], rsi",
    "mov gs:[0xb8], rdi",
    "mov gs:[0xc0], r8",
    "mov gs:[0xc8], r9",
    "mov gs:[0xd0], r10",
    "mov gs:[0xd8], r11",
    "mov gs:[0xe0], r12",
    "mov gs:[0xe8], r13",
    "mov gs:[0xf0], r14",
    "mov gs:[0xf8], r15",
    "mov eax, -1",
    "mov edx, -1",
    "xsave64 gs:[0x1000]",
    "xrstor64 gs:[0x2000]",
    "mov rax, gs:[0x60]",
    "wrfsbase rax",
    "mov rbx, gs:[0x110]",
    "mov rbp, gs:[0x118]",
    "mov r12, gs:[0x120]",
    "mov r13, gs:[0x128]",
    "mov r14, gs:[0x130]",
    "mov r15, gs:[0x138]",
    "mov rax, gs:[0x18]",
    "ret",
    "",
    ".globl oxemu_redirect",
    "oxemu_redirect:",
    "mov gs:[0x00], rax",
    "mov qword ptr gs:[0x18], 6",
    "jmp oxemu_exit_common",
    ".globl oxemu_exit_end",
    "oxemu_exit_end:",
    "",
    ".globl oxemu_ibl",
    "oxemu_ibl:",
    "mov gs:[0x00], rax",
    "lahf",
    "seto al",
    "mov gs:[0x30], ax",
    "mov eax, ecx",
    "and eax, 0xffff",
    "shl eax, 4",
    "add rax, gs:[0x20]",
    "cmp rcx, [rax]",
    "jne 2f",
    "mov rax, [rax + 8]",
    "mov gs:[0x28], rax",
    "mov ax, gs:[0x30]",
    "add al, 0x7f",
    "sahf",
    "mov rax, gs:[0x00]",
    "mov rcx, gs:[0x08]",
    "jmp qword ptr gs:[0x28]",
    "2:",
    "mov gs:[0x70], rcx",
    "mov ax, gs:[0x30]",
    "add al, 0x7f",
    "sahf",
    "mov rcx, gs:[0x08]",
    "mov qword ptr gs:[0x18], 2",
    "jmp oxemu_exit_common",
    ".globl oxemu_ibl_end",
    "oxemu_ibl_end:",
);

extern "C" {
    fn oxemu_enter() -> u64;
    /// First byte of the entry routine.
    pub fn oxemu_enter_jmp();
    /// One past the entry routine.
    pub fn oxemu_enter_end();
    /// Direct-branch exit routine.
    pub fn oxemu_exit_direct();
    /// Common exit routine.
    pub fn oxemu_exit_common();
    /// Exit used by signal delivery to restart at `next_rip`.
    pub fn oxemu_redirect();
    /// One past the exit routines.
    pub fn oxemu_exit_end();
    /// Indirect-branch lookup.
    pub fn oxemu_ibl();
    /// One past the lookup.
    pub fn oxemu_ibl_end();
}

/// Address of the entry routine's first instruction.
pub fn enter_start() -> u64 {
    let f: unsafe extern "C" fn() -> u64 = oxemu_enter;
    f as usize as u64
}

/// An empty indirect-branch table entry: a guest address no branch can have.
pub const IBL_EMPTY: u64 = 0x8000_0000_0000_0000;

/// Every live indirect-branch table, so that invalidation can clear them all.
pub static IBL_TABLES: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());

/// Counts translator-to-guest entries (statistics).
pub static ENTRIES: AtomicU64 = AtomicU64::new(0);

fn mmap_anon(len: usize) -> *mut u8 {
    // SAFETY: anonymous private mapping; checked below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        eprintln!("oxemu-x86_64: out of memory for a thread context");
        std::process::exit(1);
    }
    p as *mut u8
}

/// Clears an indirect-branch table.
///
/// # Safety
/// `table` must be a table made by [`Ctx::new`].
pub unsafe fn clear_ibl(table: u64) {
    let t = table as *mut u64;
    for i in 0..IBL_ENTRIES {
        t.add(2 * i).write_volatile(IBL_EMPTY);
    }
}

impl Ctx {
    /// Allocates a context (with its indirect-branch table) for a new guest thread.
    pub fn new() -> &'static mut Ctx {
        let p = mmap_anon(std::mem::size_of::<Ctx>()) as *mut Ctx;
        let table = mmap_anon(IBL_ENTRIES * 16) as u64;
        // SAFETY: fresh zeroed mapping of the right size and alignment; all-zero is valid for Ctx.
        let c = unsafe { &mut *p };
        unsafe { clear_ibl(table) };
        IBL_TABLES.lock().unwrap().push(table);
        c.ibl_table = table;
        c.exit_fn = oxemu_exit_direct as *const () as u64;
        c.ibl_fn = oxemu_ibl as *const () as u64;
        c.common_fn = oxemu_exit_common as *const () as u64;
        c.self_ptr = p as u64;
        c.rflags = 0x202;
        c.altstack = (0, libc::SS_DISABLE, 0);
        // Initial FPU state: FCW 0x37f, MXCSR 0x1f80, every component in its init state.
        c.guest_xsave[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
        c.guest_xsave[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        c.guest_xsave[28..32].copy_from_slice(&0xffffu32.to_le_bytes());
        c
    }

    /// Points this thread's GS base at the context.
    pub fn install(&mut self) {
        // SAFETY: arch_prctl(ARCH_SET_GS) with our own context address.
        let r = unsafe { libc::syscall(libc::SYS_arch_prctl, 0x1001, self as *mut Ctx as u64) };
        assert_eq!(r, 0, "arch_prctl(ARCH_SET_GS)");
    }

    /// Runs guest code at host address `target` until it exits; returns the exit reason.
    pub fn enter(&mut self, target: u64) -> u64 {
        self.target = target;
        ENTRIES.fetch_add(1, Ordering::Relaxed);
        // SAFETY: GS points at self (install), target is translated code ending in exits.
        unsafe { oxemu_enter() }
    }

    /// The context of the calling thread (through GS), if it has one.
    pub fn current() -> Option<&'static mut Ctx> {
        let gs: u64;
        // SAFETY: rdgsbase is enabled (checked at startup).
        unsafe {
            std::arch::asm!("rdgsbase {}", out(reg) gs, options(nomem, nostack, preserves_flags))
        };
        if gs == 0 {
            return None;
        }
        // SAFETY: GS is only ever set to a context by install.
        Some(unsafe { &mut *(gs as *mut Ctx) })
    }
}
