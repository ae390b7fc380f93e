//! Memory regions and address spaces, with QEMU's dispatch rules.
//!
//! A [`Memory`] owns every region of a machine in an arena. Regions are containers,
//! RAM (backed by a [`RamBlock`]), I/O (MMIO or port I/O, dispatched to an
//! [`IoOps`] implementation) or aliases of part of another region. Subregions are
//! placed at an offset with a priority; the flattened view of an address space is
//! computed as QEMU's `render_memory_region` does: higher priorities first, among
//! equal priorities the most recently added first, each range of the address space
//! owned by the first region that covers it.
//!
//! Accesses follow `memory.c` and `physmem.c`:
//! - an access is split at region boundaries, and an access to an I/O region is cut
//!   into the largest naturally aligned pieces the region's `valid.max` allows
//!   (when the region does not accept unaligned accesses);
//! - an access the region's `valid` rules refuse (size outside min..max, unaligned
//!   when unaligned accesses are not valid) reads 0 and writes nothing;
//! - a valid access whose size is outside the region's `impl` sizes is widened or
//!   split into `impl` sized accesses, combined little-endian;
//! - addresses no region maps read 0 and ignore writes.

use std::sync::{Arc, Mutex};

use crate::backend::RamBlock;

/// Index of a region in its [`Memory`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionId(pub usize);

/// Callbacks of an I/O region: what a device implements.
pub trait IoOps: Send {
    /// Reads `size` bytes (1, 2, 4 or 8) at `offset` into the region.
    fn read(&mut self, offset: u64, size: u32) -> u64;
    /// Writes the low `size` bytes of `value` at `offset` into the region.
    fn write(&mut self, offset: u64, value: u64, size: u32);
}

/// Shared handle to an [`IoOps`] implementation.
pub type IoHandler = Arc<Mutex<dyn IoOps>>;

/// Access sizes, as QEMU's `MemoryRegionOps.valid` and `.impl`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccessSizes {
    /// Smallest access in bytes (0 means QEMU's default, 1).
    pub min: u32,
    /// Largest access in bytes (0 means QEMU's default, 4).
    pub max: u32,
    /// Whether unaligned accesses are accepted.
    pub unaligned: bool,
}

impl AccessSizes {
    /// Sizes `min..=max`, aligned accesses only.
    pub fn new(min: u32, max: u32) -> Self {
        AccessSizes {
            min,
            max,
            unaligned: false,
        }
    }
    fn min_or_default(&self) -> u32 {
        if self.min == 0 {
            1
        } else {
            self.min
        }
    }
    fn max_or_default(&self) -> u32 {
        if self.max == 0 {
            4
        } else {
            self.max
        }
    }
}

/// What a region is.
#[derive(Clone)]
pub enum RegionKind {
    /// Holds subregions only.
    Container,
    /// Guest RAM (or ROM when `readonly`), at `offset` into a RAM block.
    Ram {
        /// The backing memory.
        block: Arc<RamBlock>,
        /// Start of this region in the block.
        offset: u64,
        /// ROM: writes are ignored.
        readonly: bool,
    },
    /// MMIO or port I/O dispatched to a device.
    Io {
        /// The device's callbacks.
        ops: IoHandler,
        /// Accesses the device accepts.
        valid: AccessSizes,
        /// Accesses the device's callbacks implement.
        implemented: AccessSizes,
    },
    /// A window onto `target` starting at `offset` into it.
    Alias {
        /// The aliased region.
        target: RegionId,
        /// Start of the window in `target`.
        offset: u64,
    },
}

/// One region of the arena.
#[derive(Clone)]
pub struct Region {
    /// Name, as `info mtree` prints it.
    pub name: String,
    /// Size in bytes; `u128` so that a region can span all of 2^64.
    pub size: u128,
    /// What it is.
    pub kind: RegionKind,
    /// Disabled regions are not part of any view.
    pub enabled: bool,
    /// Placed subregions, in QEMU's order (priority descending, newest first).
    pub subregions: Vec<RegionId>,
    /// Where this region sits in its container, if placed.
    pub placement: Option<Placement>,
}

/// Where a subregion sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The container.
    pub container: RegionId,
    /// Offset in the container.
    pub addr: u64,
    /// Priority among siblings.
    pub priority: i32,
}

/// A region placement error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    /// The region is already placed in a container.
    #[error("memory region '{0}' is already mapped")]
    AlreadyMapped(String),
    /// The container is not a container.
    #[error("memory region '{0}' cannot hold subregions")]
    NotContainer(String),
    /// The id does not name a live region.
    #[error("no memory region with id {0}")]
    NoSuchRegion(usize),
}

/// One range of a flattened view: `[start, end)` of the address space maps to
/// `region` at `offset_in_region`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlatRange {
    /// First address.
    pub start: u128,
    /// One past the last address.
    pub end: u128,
    /// The terminal (RAM or I/O) region.
    pub region: RegionId,
    /// Offset into `region` of `start`.
    pub offset_in_region: u64,
    /// The region that was placed (an alias, or `region` itself), for printing.
    pub placed: RegionId,
    /// Priority of the placed region.
    pub priority: i32,
}

/// A named address space with its root region.
#[derive(Clone, Debug)]
pub struct AddressSpace {
    /// Name, as `info mtree` prints it (`memory`, `I/O`, `cpu-memory-0`).
    pub name: String,
    /// Root region.
    pub root: RegionId,
}

/// All regions and address spaces of a machine.
#[derive(Default)]
pub struct Memory {
    regions: Vec<Option<Region>>,
    spaces: Vec<AddressSpace>,
    /// Flattened views by root, dropped on every topology change.
    views: Mutex<Vec<(RegionId, Arc<Vec<FlatRange>>)>>,
}

/// The result of one access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemTx {
    /// Completed.
    Ok,
    /// Some byte was unassigned or refused by a device's access rules.
    DecodeError,
}

impl Memory {
    /// An empty arena.
    pub fn new() -> Self {
        Self::default()
    }

    fn changed(&mut self) {
        self.views
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The cached flattened view under `root`.
    pub fn view(&self, root: RegionId) -> Arc<Vec<FlatRange>> {
        let mut v = self.views.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, f)) = v.iter().find(|(r, _)| *r == root) {
            return f.clone();
        }
        let f = Arc::new(self.flatten(root));
        v.push((root, f.clone()));
        f
    }

    fn add(&mut self, name: &str, size: u128, kind: RegionKind) -> RegionId {
        self.regions.push(Some(Region {
            name: name.to_string(),
            size,
            kind,
            enabled: true,
            subregions: Vec::new(),
            placement: None,
        }));
        RegionId(self.regions.len() - 1)
    }

    /// A container region.
    pub fn add_container(&mut self, name: &str, size: u128) -> RegionId {
        self.add(name, size, RegionKind::Container)
    }

    /// A RAM region of `size` bytes at `offset` into `block`.
    pub fn add_ram(
        &mut self,
        name: &str,
        block: Arc<RamBlock>,
        offset: u64,
        size: u64,
    ) -> RegionId {
        self.add(
            name,
            size as u128,
            RegionKind::Ram {
                block,
                offset,
                readonly: false,
            },
        )
    }

    /// An I/O region of `size` bytes dispatched to `ops`.
    pub fn add_io(
        &mut self,
        name: &str,
        size: u64,
        ops: IoHandler,
        valid: AccessSizes,
        implemented: AccessSizes,
    ) -> RegionId {
        self.add(
            name,
            size as u128,
            RegionKind::Io {
                ops,
                valid,
                implemented,
            },
        )
    }

    /// An alias of `size` bytes of `target` starting at `offset`.
    pub fn add_alias(&mut self, name: &str, target: RegionId, offset: u64, size: u64) -> RegionId {
        self.add(name, size as u128, RegionKind::Alias { target, offset })
    }

    /// The region `id`.
    pub fn region(&self, id: RegionId) -> Option<&Region> {
        self.regions.get(id.0).and_then(|r| r.as_ref())
    }

    fn region_mut(&mut self, id: RegionId) -> Result<&mut Region, MemoryError> {
        self.changed();
        self.regions
            .get_mut(id.0)
            .and_then(|r| r.as_mut())
            .ok_or(MemoryError::NoSuchRegion(id.0))
    }

    /// Places `sub` in `container` at `addr` with `priority`, as
    /// `memory_region_add_subregion_overlap`.
    pub fn add_subregion(
        &mut self,
        container: RegionId,
        addr: u64,
        sub: RegionId,
        priority: i32,
    ) -> Result<(), MemoryError> {
        let s = self.region(sub).ok_or(MemoryError::NoSuchRegion(sub.0))?;
        if s.placement.is_some() {
            return Err(MemoryError::AlreadyMapped(s.name.clone()));
        }
        let c = self
            .region(container)
            .ok_or(MemoryError::NoSuchRegion(container.0))?;
        if !matches!(c.kind, RegionKind::Container | RegionKind::Io { .. }) {
            return Err(MemoryError::NotContainer(c.name.clone()));
        }
        // Insert before the first sibling of lower or equal priority.
        let pos = c
            .subregions
            .iter()
            .position(|o| {
                self.region(*o)
                    .and_then(|r| r.placement)
                    .is_some_and(|p| priority >= p.priority)
            })
            .unwrap_or(c.subregions.len());
        self.region_mut(sub)?.placement = Some(Placement {
            container,
            addr,
            priority,
        });
        self.region_mut(container)?.subregions.insert(pos, sub);
        Ok(())
    }

    /// Removes `sub` from its container (no-op if unplaced).
    pub fn del_subregion(&mut self, sub: RegionId) -> Result<(), MemoryError> {
        let Some(p) = self.region_mut(sub)?.placement.take() else {
            return Ok(());
        };
        self.region_mut(p.container)?
            .subregions
            .retain(|s| *s != sub);
        Ok(())
    }

    /// Removes `id` (and unplaces it) from the arena. Its subregions stay allocated
    /// but unplaced.
    pub fn destroy(&mut self, id: RegionId) -> Result<(), MemoryError> {
        self.del_subregion(id)?;
        let subs = std::mem::take(&mut self.region_mut(id)?.subregions);
        for s in subs {
            if let Ok(r) = self.region_mut(s) {
                r.placement = None;
            }
        }
        self.regions[id.0] = None;
        Ok(())
    }

    /// Enables or disables a region.
    pub fn set_enabled(&mut self, id: RegionId, on: bool) -> Result<(), MemoryError> {
        self.region_mut(id)?.enabled = on;
        Ok(())
    }

    /// Registers an address space rooted at `root`.
    pub fn add_address_space(&mut self, name: &str, root: RegionId) {
        self.spaces.push(AddressSpace {
            name: name.to_string(),
            root,
        });
    }

    /// All address spaces, in creation order.
    pub fn address_spaces(&self) -> &[AddressSpace] {
        &self.spaces
    }

    /// The address space called `name`.
    pub fn address_space(&self, name: &str) -> Option<&AddressSpace> {
        self.spaces.iter().find(|a| a.name == name)
    }

    /// The flattened view under `root`.
    pub fn flatten(&self, root: RegionId) -> Vec<FlatRange> {
        let mut out = Vec::new();
        if let Some(r) = self.region(root) {
            self.render(root, 0, (0, r.size), root, &mut out, 0);
        }
        out.sort_by_key(|f| f.start);
        out
    }

    /// Renders `id` placed at `base` (which may be "negative" for aliases, hence
    /// i128 arithmetic through u128 wrapping) into the gaps of `out` within `clip`.
    fn render(
        &self,
        id: RegionId,
        base: i128,
        clip: (u128, u128),
        placed: RegionId,
        out: &mut Vec<FlatRange>,
        depth: u32,
    ) {
        let Some(r) = self.region(id) else { return };
        if !r.enabled || depth > 64 {
            return;
        }
        let lo = base.max(clip.0 as i128);
        let hi = (base + r.size as i128).min(clip.1 as i128);
        if lo >= hi {
            return;
        }
        let clip = (lo as u128, hi as u128);
        let prio = self
            .region(placed)
            .and_then(|p| p.placement)
            .map_or(0, |p| p.priority);
        match &r.kind {
            RegionKind::Alias { target, offset } => {
                self.render(
                    *target,
                    base - *offset as i128,
                    clip,
                    placed,
                    out,
                    depth + 1,
                );
                return;
            }
            RegionKind::Container | RegionKind::Io { .. } => {}
            RegionKind::Ram { .. } => {}
        }
        for s in &r.subregions {
            if let Some(sr) = self.region(*s) {
                let a = sr.placement.map_or(0, |p| p.addr);
                self.render(*s, base + a as i128, clip, *s, out, depth + 1);
            }
        }
        if matches!(r.kind, RegionKind::Container) {
            return;
        }
        // Fill the gaps left by higher-priority regions.
        let mut cur = clip.0;
        let mut taken: Vec<(u128, u128)> = out
            .iter()
            .filter(|f| f.end > clip.0 && f.start < clip.1)
            .map(|f| (f.start, f.end))
            .collect();
        taken.sort();
        let mut gaps = Vec::new();
        for (s, e) in taken {
            if s > cur {
                gaps.push((cur, s.min(clip.1)));
            }
            cur = cur.max(e);
        }
        if cur < clip.1 {
            gaps.push((cur, clip.1));
        }
        for (s, e) in gaps {
            out.push(FlatRange {
                start: s,
                end: e,
                region: id,
                offset_in_region: (s as i128 - base) as u64,
                placed,
                priority: prio,
            });
        }
    }

    /// The flat range covering `addr` in `view`, if any.
    fn lookup(view: &[FlatRange], addr: u128) -> Option<&FlatRange> {
        let i = view.partition_point(|f| f.end <= addr);
        view.get(i).filter(|f| f.start <= addr)
    }

    /// Reads `buf.len()` bytes at `addr` of the address space rooted at `root`.
    pub fn read(&self, root: RegionId, addr: u64, buf: &mut [u8]) -> MemTx {
        self.rw(root, addr, Rw::Read(buf))
    }

    /// Writes `buf` at `addr` of the address space rooted at `root`.
    pub fn write(&self, root: RegionId, addr: u64, buf: &[u8]) -> MemTx {
        self.rw(root, addr, Rw::Write(buf))
    }

    fn rw(&self, root: RegionId, addr: u64, mut data: Rw<'_>) -> MemTx {
        let view = self.view(root);
        let len = data.len();
        let mut done = 0usize;
        let mut res = MemTx::Ok;
        while done < len {
            // Addresses wrap at 2^64 as QEMU's hwaddr arithmetic does.
            let a = addr.wrapping_add(done as u64);
            let left = (len - done) as u128;
            let Some(fr) = Self::lookup(&view, a as u128) else {
                // Unassigned up to the next range.
                let next = view
                    .iter()
                    .find(|f| f.start > a as u128)
                    .map_or(1u128 << 64, |f| f.start);
                let n = left.min(next - a as u128) as usize;
                if let Rw::Read(b) = &mut data {
                    b[done..done + n].fill(0);
                }
                done += n;
                res = MemTx::DecodeError;
                continue;
            };
            let n = left.min(fr.end - a as u128) as usize;
            let off = fr.offset_in_region + (a as u128 - fr.start) as u64;
            let Some(region) = self.region(fr.region) else {
                return MemTx::DecodeError;
            };
            match &region.kind {
                RegionKind::Ram {
                    block,
                    offset,
                    readonly,
                } => match &mut data {
                    Rw::Read(b) => block.read(offset + off, &mut b[done..done + n]),
                    Rw::Write(b) => {
                        if !readonly {
                            block.write(offset + off, &b[done..done + n]);
                        }
                    }
                },
                RegionKind::Io {
                    ops,
                    valid,
                    implemented,
                } => {
                    // One dispatch of the largest size the region allows here.
                    let mut l = n.min(valid.max_or_default() as usize);
                    if !valid.unaligned {
                        let align = if off == 0 {
                            1u64 << 63
                        } else {
                            off & off.wrapping_neg()
                        };
                        l = l.min(align.min(1 << 20) as usize);
                    }
                    if l & (l - 1) != 0 {
                        l = 1 << (usize::BITS - 1 - l.leading_zeros());
                    }
                    let ok = access_valid(valid, off, l as u32);
                    match &mut data {
                        Rw::Read(b) => {
                            let v = if ok {
                                dispatch_read(ops, implemented, off, l as u32)
                            } else {
                                0
                            };
                            b[done..done + l].copy_from_slice(&v.to_le_bytes()[..l]);
                        }
                        Rw::Write(b) => {
                            if ok {
                                let mut v = [0u8; 8];
                                v[..l].copy_from_slice(&b[done..done + l]);
                                dispatch_write(
                                    ops,
                                    implemented,
                                    off,
                                    u64::from_le_bytes(v),
                                    l as u32,
                                );
                            }
                        }
                    }
                    if !ok {
                        res = MemTx::DecodeError;
                    }
                    done += l;
                    continue;
                }
                RegionKind::Container | RegionKind::Alias { .. } => {
                    return MemTx::DecodeError;
                }
            }
            done += n;
        }
        res
    }
}

enum Rw<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

impl Rw<'_> {
    fn len(&self) -> usize {
        match self {
            Rw::Read(b) => b.len(),
            Rw::Write(b) => b.len(),
        }
    }
}

/// QEMU's `memory_region_access_valid`.
fn access_valid(valid: &AccessSizes, off: u64, size: u32) -> bool {
    if !valid.unaligned && off & (size as u64 - 1) != 0 {
        return false;
    }
    size >= valid.min_or_default() && size <= valid.max_or_default()
}

/// QEMU's `access_with_adjusted_size` for reads: widen or split to the implemented
/// sizes, little-endian.
fn dispatch_read(ops: &IoHandler, imp: &AccessSizes, off: u64, size: u32) -> u64 {
    let a = size.min(imp.max_or_default()).max(imp.min_or_default());
    let mask = if a >= 8 {
        u64::MAX
    } else {
        (1u64 << (a * 8)) - 1
    };
    let mut dev = ops.lock().unwrap_or_else(|p| p.into_inner());
    let mut v = 0u64;
    let mut i = 0;
    while i < size {
        let t = dev.read(off + i as u64, a) & mask;
        v |= t.checked_shl(i * 8).unwrap_or(0);
        i += a;
    }
    if size < 8 {
        v &= (1u64 << (size * 8)) - 1;
    }
    v
}

/// The write half of QEMU's `access_with_adjusted_size`.
fn dispatch_write(ops: &IoHandler, imp: &AccessSizes, off: u64, value: u64, size: u32) {
    let a = size.min(imp.max_or_default()).max(imp.min_or_default());
    let mask = if a >= 8 {
        u64::MAX
    } else {
        (1u64 << (a * 8)) - 1
    };
    let mut dev = ops.lock().unwrap_or_else(|p| p.into_inner());
    let mut i = 0;
    while i < size {
        dev.write(
            off + i as u64,
            value.checked_shr(i * 8).unwrap_or(0) & mask,
            a,
        );
        i += a;
    }
}

#[cfg(test)]
#[path = "memory_tests.rs"]
mod tests;
