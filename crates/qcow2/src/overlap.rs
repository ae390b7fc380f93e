//! Metadata overlap checks, QEMU's `overlap-check` option.
//!
//! Before data or metadata is written to a host cluster, the write is checked against
//! the clusters that hold the image's own metadata. A hit means the metadata is
//! inconsistent (a crafted or damaged L2 entry points guest data at an L1 table, a
//! refcount of 0 lets the allocator hand out an L2 table, ...): the write is refused,
//! and the image is marked corrupt, as QEMU does, instead of destroying the metadata.
//!
//! The levels are QEMU's: `constant` checks the header, the active L1 table, the
//! refcount table, the snapshot table, the snapshots' L1 tables and the bitmap
//! directory; `cached` (the default) adds the active L2 tables and the refcount
//! blocks. `all` would add the snapshots' L2 tables, which QEMU reads from disk on
//! every write; it is refused here, as is anything else.
//!
//! The clusters are kept in one index keyed by cluster, so a check is one hash
//! lookup per cluster written. The parts that follow the L1 and refcount tables are
//! updated when an L2 table or refcount block is created or freed and rebuilt when a
//! table is replaced; the parts that follow the snapshot table and the bitmap
//! directory are rebuilt when their header fields change.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::str::FromStr;

use crate::meta::{Meta, OFFSET_MASK};

/// How much of the metadata writes are checked against (QEMU's `overlap-check`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OverlapCheck {
    /// No check.
    None,
    /// Metadata whose location the header and the snapshot table give.
    Constant,
    /// [`OverlapCheck::Constant`] plus active L2 tables and refcount blocks.
    #[default]
    Cached,
}

impl FromStr for OverlapCheck {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(OverlapCheck::None),
            "constant" => Ok(OverlapCheck::Constant),
            "cached" => Ok(OverlapCheck::Cached),
            "all" => Err(
                "overlap-check 'all' (inactive L2 tables) is not supported; use 'cached' or 'constant'"
                    .into(),
            ),
            _ => Err(format!(
                "Parameter 'overlap-check' does not accept value '{s}' (none, constant, cached)"
            )),
        }
    }
}

/// The kinds of metadata, with QEMU's names for them in its messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaKind {
    /// The first cluster.
    Header,
    /// The active L1 table.
    ActiveL1,
    /// An L2 table the active L1 table points to.
    ActiveL2,
    /// The refcount table.
    RefcountTable,
    /// A refcount block.
    RefcountBlock,
    /// The snapshot table.
    SnapshotTable,
    /// A snapshot's L1 table.
    InactiveL1,
    /// The bitmap directory.
    BitmapDirectory,
}

impl MetaKind {
    /// QEMU's name (`metadata_ol_names`).
    pub fn name(self) -> &'static str {
        match self {
            MetaKind::Header => "qcow2_header",
            MetaKind::ActiveL1 => "active L1 table",
            MetaKind::ActiveL2 => "active L2 table",
            MetaKind::RefcountTable => "refcount table",
            MetaKind::RefcountBlock => "refcount block",
            MetaKind::SnapshotTable => "snapshot table",
            MetaKind::InactiveL1 => "inactive L1 table",
            MetaKind::BitmapDirectory => "bitmap directory",
        }
    }

    const ALL: [MetaKind; 8] = [
        MetaKind::Header,
        MetaKind::ActiveL1,
        MetaKind::ActiveL2,
        MetaKind::RefcountTable,
        MetaKind::RefcountBlock,
        MetaKind::SnapshotTable,
        MetaKind::InactiveL1,
        MetaKind::BitmapDirectory,
    ];

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// The kinds `cached` checks beyond `constant`.
const CACHED_ONLY: u8 = 1 << MetaKind::ActiveL2 as u8 | 1 << MetaKind::RefcountBlock as u8;

/// A hasher for cluster indices: one multiplication (the index is not chosen by an
/// attacker in a way that matters: a crafted image only makes its own lookups slower,
/// and the map holds metadata clusters, bounded by the file size).
#[derive(Default)]
pub(crate) struct ClusterHasher(u64);

impl Hasher for ClusterHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type ClusterMap = HashMap<u64, u8, BuildHasherDefault<ClusterHasher>>;

/// The header fields the snapshot/bitmap part of the index was built for: snapshot
/// table offset and count, bitmap directory location.
type ExtraKey = (u64, u32, Option<(u32, u64, u64)>);

/// Metadata clusters by cluster index.
#[derive(Default)]
pub(crate) struct OverlapIndex {
    /// From the header, L1 table and refcount table (`None`: to be rebuilt).
    tables: Option<ClusterMap>,
    /// From the snapshot table and bitmap directory, with the header fields they
    /// were built for.
    extra: Option<(ExtraKey, ClusterMap)>,
}

impl OverlapIndex {
    /// Forgets the table-derived part (a table was replaced).
    pub(crate) fn invalidate(&mut self) {
        self.tables = None;
    }

    /// A new L2 table or refcount block at byte offset `off`.
    pub(crate) fn add(&mut self, off: u64, cs: u64, kind: MetaKind) {
        if let Some(t) = &mut self.tables {
            *t.entry(off / cs).or_insert(0) |= kind.bit();
        }
    }

    /// Host cluster `c` became free: it holds no metadata any more.
    pub(crate) fn freed(&mut self, c: u64) {
        if let Some(t) = &mut self.tables {
            if let Some(k) = t.get_mut(&c) {
                *k &= !CACHED_ONLY;
                if *k == 0 {
                    t.remove(&c);
                }
            }
        }
    }
}

fn add_range(map: &mut ClusterMap, cs: u64, off: u64, len: u64, kind: MetaKind) {
    if len == 0 {
        return;
    }
    // Bounded by the table sizes the header parser allows.
    for c in off / cs..=(off + len - 1) / cs {
        *map.entry(c).or_insert(0) |= kind.bit();
    }
}

impl Meta {
    fn build_tables(&self) -> ClusterMap {
        let cs = self.cs;
        let mut map = ClusterMap::default();
        map.insert(0, MetaKind::Header.bit());
        add_range(
            &mut map,
            cs,
            self.h.l1_table_offset,
            self.l1.len() as u64 * 8,
            MetaKind::ActiveL1,
        );
        add_range(
            &mut map,
            cs,
            self.h.refcount_table_offset,
            self.h.refcount_table_clusters as u64 * cs,
            MetaKind::RefcountTable,
        );
        for e in &self.l1 {
            if e & OFFSET_MASK != 0 {
                *map.entry((e & OFFSET_MASK) / cs).or_insert(0) |= MetaKind::ActiveL2.bit();
            }
        }
        for e in &self.reftable {
            let off = e & !(cs - 1);
            if off != 0 {
                *map.entry(off / cs).or_insert(0) |= MetaKind::RefcountBlock.bit();
            }
        }
        map
    }

    async fn build_extra(&self) -> io::Result<ClusterMap> {
        let cs = self.cs;
        let mut map = ClusterMap::default();
        if self.h.nb_snapshots > 0 {
            let t = crate::snapshot::read_table(&*self.file, &self.h).await?;
            add_range(&mut map, cs, t.offset, t.size, MetaKind::SnapshotTable);
            for s in &t.snapshots {
                add_range(
                    &mut map,
                    cs,
                    s.l1_table_offset,
                    s.l1_size as u64 * 8,
                    MetaKind::InactiveL1,
                );
            }
        }
        if let Ok(Some((_, off, size))) = crate::bitmaps::directory_location(&self.h) {
            add_range(&mut map, cs, off, size, MetaKind::BitmapDirectory);
        }
        Ok(map)
    }

    /// Checks a write of `len` bytes at host offset `off` against the image's
    /// metadata, except metadata of kind `own` (a table being written back). Fails
    /// with `InvalidData` naming what it overlaps with, as QEMU's message does.
    pub(crate) async fn overlap_check(
        &mut self,
        off: u64,
        len: u64,
        own: Option<MetaKind>,
    ) -> io::Result<()> {
        if self.overlap == OverlapCheck::None || len == 0 {
            return Ok(());
        }
        if self.ol.tables.is_none() {
            self.ol.tables = Some(self.build_tables());
        }
        let bitmaps = if self.h.autoclear_features & crate::bitmaps::AUTOCLEAR_BITMAPS != 0 {
            crate::bitmaps::directory_location(&self.h).unwrap_or(None)
        } else {
            None
        };
        let key = (self.h.snapshots_offset, self.h.nb_snapshots, bitmaps);
        if self.ol.extra.as_ref().is_none_or(|(k, _)| *k != key) {
            // An unreadable snapshot table protects nothing; the rest still does.
            let map = self.build_extra().await.unwrap_or_default();
            self.ol.extra = Some((key, map));
        }
        let cs = self.cs;
        let tables = self.ol.tables.as_ref().unwrap();
        let extra = &self.ol.extra.as_ref().unwrap().1;
        let mut ignore = own.map_or(0, MetaKind::bit);
        if self.overlap != OverlapCheck::Cached {
            ignore |= CACHED_ONLY;
        }
        for c in off / cs..=(off + len - 1) / cs {
            let mut hit = tables.get(&c).copied().unwrap_or(0);
            if !extra.is_empty() {
                hit |= extra.get(&c).copied().unwrap_or(0);
            }
            hit &= !ignore;
            if hit == 0 {
                continue;
            }
            let kind = MetaKind::ALL
                .into_iter()
                .find(|k| hit & k.bit() != 0)
                .unwrap();
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "Preventing invalid write on metadata (overlaps with {})",
                    kind.name()
                ),
            ));
        }
        Ok(())
    }
}
