//! The qcow2 header, its feature bits and header extensions (docs/interop/qcow2.txt).

use std::io;

/// `QFI\xfb`.
pub const MAGIC: u32 = 0x5146_49fb;
/// Incompatible feature: the image was not closed cleanly and refcounts may be stale.
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature: metadata corruption was detected; writes are refused.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature: guest data lives in an external data file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible feature: the compression type field is not zlib.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible feature: extended L2 entries (subclusters).
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
/// Incompatible features this driver implements.
pub const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
/// Compatible feature: lazy refcounts.
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;
/// Header extension: end of the extension area.
pub const EXT_END: u32 = 0;
/// Header extension: backing file format name.
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Header extension: feature name table.
pub const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
/// Header extension: bitmaps.
pub const EXT_BITMAPS: u32 = 0x2385_2875;
/// Header extension: full disk encryption header pointer.
pub const EXT_CRYPTO: u32 = 0x0537_be77;
/// Header extension: external data file name.
pub const EXT_DATA_FILE: u32 = 0x4441_5441;
/// Largest virtual size QEMU accepts (2^61 bytes, QCOW_MAX_... limit of 64 PiB here).
pub const MAX_SIZE: u64 = 1 << 56;
/// Largest L1 table QEMU accepts (QCOW_MAX_L1_SIZE, 32 MiB).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table QEMU accepts (QCOW_MAX_REFTABLE_SIZE, 8 MiB).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;

/// Compression algorithm of compressed clusters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CompressionType {
    /// Raw deflate (the default).
    #[default]
    Zlib,
    /// Zstandard.
    Zstd,
}

impl CompressionType {
    /// QEMU's name: `zlib` or `zstd`.
    pub fn name(self) -> &'static str {
        match self {
            CompressionType::Zlib => "zlib",
            CompressionType::Zstd => "zstd",
        }
    }
}

/// One header extension, kept verbatim so that unknown ones survive a header rewrite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extension {
    /// Extension type magic.
    pub kind: u32,
    /// Payload (without padding).
    pub data: Vec<u8>,
}

/// A parsed qcow2 header (version 2 or 3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// Offset of the backing file name, 0 if none.
    pub backing_file_offset: u64,
    /// Length of the backing file name.
    pub backing_file_size: u32,
    /// log2 of the cluster size (9..=21).
    pub cluster_bits: u32,
    /// Virtual size in bytes.
    pub size: u64,
    /// 0 none, 1 AES, 2 LUKS.
    pub crypt_method: u32,
    /// Number of L1 entries.
    pub l1_size: u32,
    /// Offset of the L1 table.
    pub l1_table_offset: u64,
    /// Offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters occupied by the refcount table.
    pub refcount_table_clusters: u32,
    /// Number of internal snapshots.
    pub nb_snapshots: u32,
    /// Offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Incompatible feature bits.
    pub incompatible_features: u64,
    /// Compatible feature bits.
    pub compatible_features: u64,
    /// Autoclear feature bits.
    pub autoclear_features: u64,
    /// log2 of the refcount width in bits (0..=6).
    pub refcount_order: u32,
    /// Length of the fixed header (72 for v2, >= 104 for v3).
    pub header_length: u32,
    /// Compression type.
    pub compression_type: CompressionType,
    /// Header extensions in file order, including the feature table and backing format.
    pub extensions: Vec<Extension>,
    /// Backing file name.
    pub backing_file: Option<String>,
}

fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(b[o..o + 4].try_into().unwrap())
}
fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
}

/// An `InvalidData` error naming the field and its offset in the image.
pub fn bad(field: &str, offset: u64, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("qcow2: invalid {field} at offset {offset:#x}: {what}"),
    )
}

impl Header {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// True when the image uses extended L2 entries.
    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTL2 != 0
    }

    /// Backing format from the backing-format extension.
    pub fn backing_format(&self) -> Option<String> {
        // When there are several, the last one counts, as in QEMU.
        self.extensions
            .iter()
            .rev()
            .find(|e| e.kind == EXT_BACKING_FORMAT)
            .map(|e| String::from_utf8_lossy(&e.data).into_owned())
    }

    /// Names of set incompatible feature bits this driver does not know, resolved via
    /// the feature-name table when present.
    pub fn unknown_incompatible(&self) -> Vec<String> {
        let mut mask = self.incompatible_features & !INCOMPAT_KNOWN;
        let mut out = Vec::new();
        // As QEMU: the last feature table counts; its entries in order up to the first
        // without a name, then whatever bits are left as one mask.
        if let Some(t) = self
            .extensions
            .iter()
            .rev()
            .find(|e| e.kind == EXT_FEATURE_TABLE)
        {
            // A short last entry counts, padded with zeroes, as QEMU reads it.
            let mut data = t.data.clone();
            data.resize(t.data.len().next_multiple_of(48), 0);
            for e in data.chunks_exact(48) {
                if e[2] == 0 {
                    break;
                }
                if e[0] == 0 && e[1] < 64 && mask & (1u64 << e[1]) != 0 {
                    let n = &e[2..];
                    let end = n.iter().position(|&c| c == 0).unwrap_or(n.len());
                    out.push(String::from_utf8_lossy(&n[..end]).into_owned());
                    mask &= !(1u64 << e[1]);
                }
            }
        }
        if mask != 0 {
            out.push(format!("Unknown incompatible feature: {mask:x}"));
        }
        out
    }

    /// Parses the header from the first cluster of the image (`buf` holds at least the
    /// first min(file size, 64 KiB) bytes, or the whole first cluster).
    pub fn parse(buf: &[u8], file_size: u64) -> io::Result<Header> {
        Self::parse_mode(buf, file_size, false)
    }

    /// [`Header::parse`] for `check`: as QEMU's `BDRV_O_CHECK`, an image without a
    /// refcount table is accepted, so that a repair can rebuild it.
    pub fn parse_for_check(buf: &[u8], file_size: u64) -> io::Result<Header> {
        Self::parse_mode(buf, file_size, true)
    }

    fn parse_mode(buf: &[u8], file_size: u64, check: bool) -> io::Result<Header> {
        if buf.len() < 72 {
            return Err(bad(
                "header",
                0,
                format!("image is truncated ({} bytes, need 72)", buf.len()),
            ));
        }
        if be32(buf, 0) != MAGIC {
            return Err(bad("magic", 0, "not a qcow2 image"));
        }
        let version = be32(buf, 4);
        if version != 2 && version != 3 {
            return Err(bad(
                "version",
                4,
                format!("unsupported qcow2 version {version}"),
            ));
        }
        let cluster_bits = be32(buf, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(bad(
                "cluster_bits",
                20,
                format!("{cluster_bits} is outside 9..21"),
            ));
        }
        let mut h = Header {
            version,
            backing_file_offset: be64(buf, 8),
            backing_file_size: be32(buf, 16),
            cluster_bits,
            size: be64(buf, 24),
            crypt_method: be32(buf, 32),
            l1_size: be32(buf, 36),
            l1_table_offset: be64(buf, 40),
            refcount_table_offset: be64(buf, 48),
            refcount_table_clusters: be32(buf, 56),
            nb_snapshots: be32(buf, 60),
            snapshots_offset: be64(buf, 64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: 72,
            compression_type: CompressionType::Zlib,
            extensions: Vec::new(),
            backing_file: None,
        };
        let cs = h.cluster_size();
        if version == 3 {
            if buf.len() < 104 {
                return Err(bad("header", 72, "v3 header is truncated"));
            }
            h.incompatible_features = be64(buf, 72);
            h.compatible_features = be64(buf, 80);
            h.autoclear_features = be64(buf, 88);
            h.refcount_order = be32(buf, 96);
            h.header_length = be32(buf, 100);
            if h.refcount_order > 6 {
                return Err(bad(
                    "refcount_order",
                    96,
                    format!("{} is larger than 6", h.refcount_order),
                ));
            }
            if h.header_length < 104
                || h.header_length as u64 > cs
                || h.header_length as usize > buf.len()
            {
                return Err(bad(
                    "header_length",
                    100,
                    format!("{} is out of range", h.header_length),
                ));
            }
            if h.header_length > 104 {
                h.compression_type = match buf[104] {
                    0 => CompressionType::Zlib,
                    1 => CompressionType::Zstd,
                    t => {
                        return Err(bad(
                            "compression_type",
                            104,
                            format!("unknown compression type {t}"),
                        ))
                    }
                };
            }
            let has_bit = h.incompatible_features & INCOMPAT_COMPRESSION != 0;
            if has_bit != (h.compression_type != CompressionType::Zlib) {
                return Err(bad(
                    "compression_type",
                    104,
                    "does not match the compression incompatible feature bit",
                ));
            }
        }
        let l2_per = cs / if h.extended_l2() { 16 } else { 8 };
        if h.size.div_ceil(cs * l2_per) > i32::MAX as u64 {
            // QEMU's words for a size whose L1 index would not fit an int.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "Image is too big",
            ));
        }
        if h.size > MAX_SIZE {
            return Err(bad(
                "size",
                24,
                format!("{} exceeds the maximum of {}", h.size, MAX_SIZE),
            ));
        }
        let l2_entries = cs / if h.extended_l2() { 16 } else { 8 };
        let need_l1 = h.size.div_ceil(cs * l2_entries);
        if (h.l1_size as u64) * 8 > MAX_L1_BYTES {
            return Err(bad(
                "l1_size",
                36,
                format!("{} entries is too large", h.l1_size),
            ));
        }
        if (h.l1_size as u64) < need_l1 {
            return Err(bad(
                "l1_size",
                36,
                format!("{} entries cannot map size {}", h.l1_size, h.size),
            ));
        }
        if h.l1_size > 0 && (h.l1_table_offset % cs != 0 || h.l1_table_offset == 0) {
            return Err(bad(
                "l1_table_offset",
                40,
                format!("{:#x} is not cluster aligned", h.l1_table_offset),
            ));
        }
        if h.refcount_table_clusters == 0 && !check {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "Image does not contain a reference count table",
            ));
        }
        let no_reftable = h.refcount_table_clusters == 0;
        if h.refcount_table_offset % cs != 0 || (h.refcount_table_offset == 0 && !no_reftable) {
            return Err(bad(
                "refcount_table_offset",
                48,
                format!("{:#x} is not cluster aligned", h.refcount_table_offset),
            ));
        }
        if h.refcount_table_clusters as u64 * cs > MAX_REFTABLE_BYTES.max(cs) {
            return Err(bad(
                "refcount_table_clusters",
                56,
                format!("{} is too large", h.refcount_table_clusters),
            ));
        }
        for (name, off, end) in [
            (
                "l1_table_offset",
                40u64,
                h.l1_table_offset.checked_add(h.l1_size as u64 * 8),
            ),
            (
                "refcount_table_offset",
                48,
                h.refcount_table_offset
                    .checked_add(h.refcount_table_clusters as u64 * cs),
            ),
        ] {
            match end {
                Some(e) if e <= file_size.max(cs).next_multiple_of(cs) => {}
                _ => {
                    return Err(bad(
                        name,
                        off,
                        format!("table extends past the end of the image ({file_size} bytes)"),
                    ))
                }
            }
        }
        h.parse_extensions(buf)?;
        if h.backing_file_offset != 0 {
            let (o, n) = (h.backing_file_offset, h.backing_file_size as u64);
            if n > 1023 || o.checked_add(n).is_none_or(|e| e > buf.len() as u64) {
                return Err(bad("backing_file_offset", 8, format!("backing file name ({o:#x}+{n}) is outside the first cluster or longer than 1023")));
            }
            let name = &buf[o as usize..(o + n) as usize];
            h.backing_file = Some(String::from_utf8_lossy(name).into_owned());
        }
        Ok(h)
    }

    fn parse_extensions(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut off = self.header_length as usize;
        let end = if self.backing_file_offset != 0 {
            (self.backing_file_offset as usize).min(buf.len())
        } else {
            buf.len()
        };
        loop {
            if off + 8 > end {
                return Ok(());
            }
            let kind = be32(buf, off);
            let len = be32(buf, off + 4) as usize;
            if kind == EXT_END {
                return Ok(());
            }
            let data_end = off + 8 + len;
            if data_end > end {
                return Err(bad(
                    "header extension",
                    off as u64,
                    format!("type {kind:#x} of length {len} runs past the header area"),
                ));
            }
            self.extensions.push(Extension {
                kind,
                data: buf[off + 8..data_end].to_vec(),
            });
            off = (data_end + 7) & !7;
        }
    }

    /// Serializes header, extensions and backing file name into one cluster.
    /// Fails with `EINVAL` when they do not fit.
    pub fn serialize(&mut self) -> io::Result<Vec<u8>> {
        let cs = self.cluster_size() as usize;
        let mut b = vec![0u8; if self.version == 3 { 112 } else { 72 }];
        if self.version == 3 {
            self.header_length = 112;
        }
        let put32 =
            |b: &mut Vec<u8>, o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_be_bytes());
        let put64 =
            |b: &mut Vec<u8>, o: usize, v: u64| b[o..o + 8].copy_from_slice(&v.to_be_bytes());
        put32(&mut b, 0, MAGIC);
        put32(&mut b, 4, self.version);
        put32(&mut b, 20, self.cluster_bits);
        put64(&mut b, 24, self.size);
        put32(&mut b, 32, self.crypt_method);
        put32(&mut b, 36, self.l1_size);
        put64(&mut b, 40, self.l1_table_offset);
        put64(&mut b, 48, self.refcount_table_offset);
        put32(&mut b, 56, self.refcount_table_clusters);
        put32(&mut b, 60, self.nb_snapshots);
        put64(&mut b, 64, self.snapshots_offset);
        if self.version == 3 {
            put64(&mut b, 72, self.incompatible_features);
            put64(&mut b, 80, self.compatible_features);
            put64(&mut b, 88, self.autoclear_features);
            put32(&mut b, 96, self.refcount_order);
            put32(&mut b, 100, self.header_length);
            b[104] = match self.compression_type {
                CompressionType::Zlib => 0,
                CompressionType::Zstd => 1,
            };
        }
        for e in &self.extensions {
            b.extend_from_slice(&e.kind.to_be_bytes());
            b.extend_from_slice(&(e.data.len() as u32).to_be_bytes());
            b.extend_from_slice(&e.data);
            b.resize(b.len().next_multiple_of(8), 0);
        }
        b.extend_from_slice(&[0u8; 8]);
        if let Some(name) = &self.backing_file {
            self.backing_file_offset = b.len() as u64;
            self.backing_file_size = name.len() as u32;
            b.extend_from_slice(name.as_bytes());
        } else {
            self.backing_file_offset = 0;
            self.backing_file_size = 0;
        }
        put64(&mut b, 8, self.backing_file_offset);
        put32(&mut b, 16, self.backing_file_size);
        if b.len() > cs {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "qcow2 header and extensions do not fit into one cluster",
            ));
        }
        Ok(b)
    }

    /// Sets or removes the backing format extension.
    pub fn set_backing_format(&mut self, fmt: Option<&str>) {
        self.extensions.retain(|e| e.kind != EXT_BACKING_FORMAT);
        if let Some(f) = fmt {
            self.extensions.insert(
                0,
                Extension {
                    kind: EXT_BACKING_FORMAT,
                    data: f.as_bytes().to_vec(),
                },
            );
        }
    }
}

/// The feature-name table QEMU writes into new v3 images.
pub fn feature_table() -> Extension {
    let names: [(u8, u8, &str); 7] = [
        (0, 0, "dirty bit"),
        (0, 1, "corrupt bit"),
        (0, 2, "external data file"),
        (0, 3, "compression type"),
        (0, 4, "extended L2 entries"),
        (1, 0, "lazy refcounts"),
        (2, 0, "bitmaps"),
    ];
    let mut data = Vec::new();
    for (k, b, n) in names
        .iter()
        .copied()
        .chain([(2u8, 1u8, "raw external data")])
    {
        let mut e = [0u8; 48];
        e[0] = k;
        e[1] = b;
        e[2..2 + n.len()].copy_from_slice(n.as_bytes());
        data.extend_from_slice(&e);
    }
    Extension {
        kind: EXT_FEATURE_TABLE,
        data,
    }
}
