//! The code cache: executable arenas placed near the guest code they hold, the map from guest
//! addresses to translated blocks, block chaining and invalidation.

use crate::ctx::{clear_ibl, IBL_TABLES};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};

/// Size of one arena.
pub const ARENA_SIZE: u64 = 64 << 20;
/// Farthest an arena may be from the guest code it holds (RIP-relative operands must reach).
pub const NEAR: u64 = 1 << 30;

/// What a host address inside a block corresponds to, for signal delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Copied instruction, or an expansion whose host registers are the guest's.
    Plain,
    /// Control-flow expansion after its first instruction: guest rcx is in `ctx.save_rcx`.
    RcxSaved,
}

/// One guest instruction's place in a block.
#[derive(Debug, Clone, Copy)]
pub struct InsnMap {
    /// Host offset of the first byte, from the block's host start.
    pub host_off: u32,
    /// Host length.
    pub host_len: u32,
    /// Guest address.
    pub guest: u64,
    /// State of the registers inside it.
    pub kind: Kind,
}

/// A translated block.
#[derive(Debug)]
pub struct Block {
    /// Guest start address.
    pub guest: u64,
    /// One past the last guest byte.
    pub guest_end: u64,
    /// Host address of the entry.
    pub entry: u64,
    /// Host start (stubs first, then the body).
    pub host: u64,
    /// Host length.
    pub host_len: u64,
    /// Where each guest instruction is.
    pub insns: Vec<InsnMap>,
    /// Patched branch sites (address of a rel32) that jump into this block.
    pub incoming: Vec<u64>,
    /// Whether it was invalidated.
    pub dead: bool,
}

/// An arena of executable memory.
#[derive(Debug)]
struct Arena {
    base: u64,
    used: u64,
}

/// The cache (one per process, behind a lock).
#[derive(Debug, Default)]
pub struct Cache {
    arenas: Vec<Arena>,
    /// Live blocks by guest address.
    pub by_guest: HashMap<u64, u64>,
    /// Every block (live or dead) by host start, for mapping host addresses back.
    pub by_host: BTreeMap<u64, Block>,
    /// Guest pages holding translated code, with how many blocks touch each.
    pub pages: HashMap<u64, u32>,
}

/// Number of arenas (readable without the lock by the signal handler).
pub static ARENA_COUNT: AtomicU32 = AtomicU32::new(0);
/// Arena bases, for the signal handler.
pub static ARENA_BASES: [std::sync::atomic::AtomicU64; 64] =
    [const { std::sync::atomic::AtomicU64::new(0) }; 64];

/// Whether a host address is inside the code cache.
pub fn in_cache(pc: u64) -> bool {
    let n = ARENA_COUNT.load(Ordering::Acquire) as usize;
    (0..n).any(|i| {
        let b = ARENA_BASES[i].load(Ordering::Relaxed);
        pc >= b && pc < b + ARENA_SIZE
    })
}

fn dist(a: u64, b: u64) -> u64 {
    a.abs_diff(b)
}

impl Cache {
    /// Reserves `max` bytes of code space near `guest`; returns its address.
    pub fn reserve(&mut self, guest: u64, max: u64) -> Result<u64, String> {
        for a in &self.arenas {
            if a.used + max <= ARENA_SIZE
                && dist(a.base, guest) < NEAR
                && dist(a.base + ARENA_SIZE, guest) < NEAR
            {
                return Ok(a.base + a.used);
            }
        }
        if self.arenas.len() >= ARENA_BASES.len() {
            return Err("code cache full (64 arenas)".into());
        }
        let g = guest & !(ARENA_SIZE - 1);
        for k in 1..14u64 {
            for cand in [
                g.wrapping_add(k * ARENA_SIZE),
                g.wrapping_sub(k * ARENA_SIZE),
            ] {
                if !(0x10000..(1 << 47) - ARENA_SIZE).contains(&cand) {
                    continue;
                }
                // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
                let p = unsafe {
                    libc::mmap(
                        cand as *mut _,
                        ARENA_SIZE as usize,
                        libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                        libc::MAP_PRIVATE
                            | libc::MAP_ANONYMOUS
                            | libc::MAP_FIXED_NOREPLACE
                            | libc::MAP_NORESERVE,
                        -1,
                        0,
                    )
                };
                if p != libc::MAP_FAILED && p as u64 == cand {
                    let i = self.arenas.len();
                    ARENA_BASES[i].store(cand, Ordering::Relaxed);
                    ARENA_COUNT.store(i as u32 + 1, Ordering::Release);
                    self.arenas.push(Arena {
                        base: cand,
                        used: 0,
                    });
                    return Ok(cand);
                }
            }
        }
        Err(format!("no room for code cache within 1 GiB of {guest:#x}"))
    }

    /// Commits `len` bytes at `at` (which [`Cache::reserve`] returned) and records the block.
    pub fn commit(&mut self, block: Block) -> u64 {
        let at = block.host;
        let a = self
            .arenas
            .iter_mut()
            .find(|a| at >= a.base && at < a.base + ARENA_SIZE)
            .expect("arena");
        a.used = (at + block.host_len - a.base + 15) & !15;
        let mut p = crate::mm::page_down(block.guest);
        while p < block.guest_end {
            *self.pages.entry(p).or_insert(0) += 1;
            p += crate::mm::PAGE;
        }
        let entry = block.entry;
        self.by_guest.insert(block.guest, at);
        self.by_host.insert(at, block);
        entry
    }

    /// The live block starting at guest address `g`.
    pub fn lookup(&self, g: u64) -> Option<&Block> {
        self.by_guest.get(&g).and_then(|h| self.by_host.get(h))
    }

    /// Makes the branch whose rel32 is at `site` jump to the live block at guest `g`.
    pub fn chain(&mut self, site: u64, g: u64) {
        let Some(h) = self.by_guest.get(&g).copied() else {
            return;
        };
        let b = self.by_host.get_mut(&h).unwrap();
        let rel = b.entry as i64 - (site as i64 + 4);
        if rel < i32::MIN as i64 || rel > i32::MAX as i64 || site % 4 != 0 {
            return;
        }
        b.incoming.push(site);
        // SAFETY: site is an aligned rel32 in a committed block; an aligned 4-byte store is atomic.
        unsafe {
            (*(site as *const std::sync::atomic::AtomicI32)).store(rel as i32, Ordering::Release)
        };
    }

    /// The block containing host address `pc`.
    pub fn block_at(&self, pc: u64) -> Option<&Block> {
        self.by_host
            .range(..=pc)
            .next_back()
            .map(|(_, b)| b)
            .filter(|b| pc < b.host + b.host_len)
    }

    /// Whether any translated code comes from `[lo, hi)`.
    pub fn has_code(&self, lo: u64, hi: u64) -> bool {
        let mut p = crate::mm::page_down(lo);
        while p < hi {
            if self.pages.contains_key(&p) {
                return true;
            }
            p += crate::mm::PAGE;
        }
        false
    }

    /// Invalidates every block with guest code in `[lo, hi)`; returns how many.
    pub fn invalidate(&mut self, lo: u64, hi: u64) -> usize {
        if !self.has_code(lo, hi) {
            return 0;
        }
        let victims: Vec<u64> = self
            .by_host
            .iter()
            .filter(|(_, b)| !b.dead && b.guest < hi && b.guest_end > lo)
            .map(|(h, _)| *h)
            .collect();
        for h in &victims {
            let b = self.by_host.get_mut(h).unwrap();
            b.dead = true;
            for site in b.incoming.drain(..) {
                // SAFETY: as in chain; rel32 0 falls through to the stub's exit code.
                unsafe {
                    (*(site as *const std::sync::atomic::AtomicI32)).store(0, Ordering::Release)
                };
            }
            let (g, ge) = (b.guest, b.guest_end);
            self.by_guest.remove(&g);
            let mut p = crate::mm::page_down(g);
            while p < ge {
                if let Some(c) = self.pages.get_mut(&p) {
                    *c -= 1;
                    if *c == 0 {
                        self.pages.remove(&p);
                    }
                }
                p += crate::mm::PAGE;
            }
        }
        for t in IBL_TABLES.lock().unwrap().iter() {
            // SAFETY: every registered table was made by Ctx::new.
            unsafe { clear_ibl(*t) };
        }
        victims.len()
    }
}
