//! Parser for revision-14 binary configs.
//!
//! The parser first computes the size the header counts imply, with checked
//! arithmetic, and compares it with the file size before it allocates any
//! array, so a huge count is an error and never an allocation.

use crate::model::*;
use std::fmt;

/// What went wrong while parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    /// The file ends inside the structure.
    #[error("file ends at byte {file_size} but the header counts need {needed} bytes (truncated file or count too large)")]
    Truncated {
        /// Bytes the header counts require.
        needed: u64,
        /// Actual file size.
        file_size: u64,
    },
    /// The file ends inside the fixed-size header, before any count is read.
    #[error("file ends at byte {file_size}, inside the {needed}-byte fixed-size {header} header (truncated file)")]
    TruncatedHeader {
        /// Size of the fixed header.
        needed: u64,
        /// Actual file size.
        file_size: u64,
        /// "system" or "cell descriptor".
        header: &'static str,
    },
    /// The signature is not a Jailhouse one.
    #[error("not a Jailhouse config: signature {found:?}, expected {expected:?}")]
    BadSignature {
        /// Expected signature.
        expected: &'static str,
        /// Found bytes, escaped.
        found: String,
    },
    /// A cell config where a system config was expected, or vice versa.
    #[error("wrong kind of config: this is a {found} config (signature {signature:?}), expected a {expected} config")]
    WrongKind {
        /// "system" or "cell".
        expected: &'static str,
        /// "system" or "cell".
        found: &'static str,
        /// The signature found.
        signature: &'static str,
    },
    /// A config of the revision-13 (or older) layout.
    #[error("config revision {revision} (6-byte signature {signature:?}) is not supported; this tool reads JAILHOUSE_CONFIG_REVISION 14 (signature \"JHSYS\"/\"JHCLL\" plus architecture byte); rebuild the config with a current Jailhouse")]
    OldRevision {
        /// "JHSYST" or "JHCELL".
        signature: &'static str,
        /// The revision field at offset 6.
        revision: u16,
    },
    /// A revision-14 signature with another revision number.
    #[error("config revision {found}, expected {expected}")]
    Revision {
        /// Revision in the file.
        found: u16,
        /// Supported revision.
        expected: u16,
    },
    /// Architecture byte not defined by Jailhouse.
    #[error("unknown architecture byte {0} (0 = x86, 1 = arm, 2 = arm64)")]
    UnknownArch(u8),
    /// Bytes after the last array.
    #[error("{extra} bytes of trailing data after the last array (header counts give {expected} bytes, file has {file_size})")]
    TrailingData {
        /// Bytes beyond the expected size.
        extra: u64,
        /// Size the header counts imply.
        expected: u64,
        /// Actual file size.
        file_size: u64,
    },
}

/// A parse error naming the file, the structure, the entry index and the byte offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ParseError {
    /// File name (or other origin) given to the parser.
    pub file: String,
    /// C structure or array name, e.g. `jailhouse_cell_desc` or `memory_regions`.
    pub structure: &'static str,
    /// Entry index inside an array.
    pub index: Option<u64>,
    /// Byte offset of the structure (or entry) in the file.
    pub offset: u64,
    /// The problem.
    pub kind: ParseErrorKind,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.structure)?;
        if let Some(i) = self.index {
            write!(f, "[{i}]")?;
        }
        write!(f, " at byte offset {}: {}", self.offset, self.kind)
    }
}

/// Parser options.
#[derive(Debug, Clone, Copy, Default)]
pub struct ParseOptions {
    /// Accept trailing data after the last array, reporting it as a warning.
    pub lenient: bool,
}

/// A parsed config plus the problems that `--lenient` downgraded to warnings.
#[derive(Debug, Clone)]
pub struct Parsed<T> {
    /// The config.
    pub config: T,
    /// Downgraded problems (only with [`ParseOptions::lenient`]).
    pub warnings: Vec<ParseError>,
}

/// Little-endian reader over a slice whose length was already validated.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(src) = self.data.get(self.pos..self.pos + N) {
            out.copy_from_slice(src);
        }
        self.pos += N;
        out
    }
    fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
}

/// Header counts of a cell descriptor, read before anything is allocated.
struct Counts {
    cpu_set_size: u32,
    num: [u32; 7],
}

/// Array names in file order, with their entry sizes (the CPU set counts bytes).
const SECTIONS: [(&str, u64); 8] = [
    ("cpu_set", 1),
    ("memory_regions", MEMORY_SIZE as u64),
    ("cache_regions", CACHE_SIZE as u64),
    ("irqchips", IRQCHIP_SIZE as u64),
    ("pio_regions", PIO_SIZE as u64),
    ("pci_devices", PCI_DEVICE_SIZE as u64),
    ("pci_caps", PCI_CAP_SIZE as u64),
    ("stream_ids", STREAM_ID_SIZE as u64),
];

impl Counts {
    fn read(data: &[u8], desc: usize) -> Counts {
        let mut r = Reader {
            data,
            pos: desc + 48,
        };
        let cpu_set_size = r.u32();
        let mut num = [0u32; 7];
        for n in &mut num {
            *n = r.u32();
        }
        Counts { cpu_set_size, num }
    }

    fn count(&self, section: usize) -> u64 {
        if section == 0 {
            self.cpu_set_size as u64
        } else {
            self.num[section - 1] as u64
        }
    }

    /// Validates that every array fits in `len` bytes; returns the end offset.
    fn check(&self, file: &str, start: u64, len: u64) -> Result<u64, ParseError> {
        let mut off = start;
        for (i, (name, size)) in SECTIONS.iter().enumerate() {
            let n = self.count(i);
            let end = off + n * size; // < 2^32 * 56 + 2^32, no overflow in u64
            if end > len {
                let index = if *size == 1 {
                    None
                } else {
                    Some((len.saturating_sub(off)) / size)
                };
                let offset = index.map_or(off, |i| off + i * size);
                let mut needed = end;
                for (j, (_, s)) in SECTIONS.iter().enumerate().skip(i + 1) {
                    needed += self.count(j) * s;
                }
                return Err(ParseError {
                    file: file.to_string(),
                    structure: name,
                    index,
                    offset,
                    kind: ParseErrorKind::Truncated {
                        needed,
                        file_size: len,
                    },
                });
            }
            off = end;
        }
        Ok(off)
    }
}

fn escape(bytes: &[u8]) -> String {
    bytes
        .iter()
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect()
}

/// Checks signature, architecture and revision of a header at offset 0.
fn check_ident(file: &str, data: &[u8], want_system: bool) -> Result<Arch, ParseError> {
    let structure = if want_system {
        "jailhouse_system"
    } else {
        "jailhouse_cell_desc"
    };
    let err = |offset: u64, kind| ParseError {
        file: file.to_string(),
        structure,
        index: None,
        offset,
        kind,
    };
    let header_len = if want_system {
        SYSTEM_SIZE
    } else {
        CELL_DESC_SIZE
    };
    let truncated = ParseErrorKind::TruncatedHeader {
        needed: header_len as u64,
        file_size: data.len() as u64,
        header: if want_system {
            "system"
        } else {
            "cell descriptor"
        },
    };
    let sig = data.get(..5).unwrap_or(data);
    for (old, name) in [
        (SYSTEM_SIGNATURE_REV13, "JHSYST"),
        (CELL_SIGNATURE_REV13, "JHCELL"),
    ] {
        if data.len() >= 8 && &data[..6] == old {
            let revision = u16::from_le_bytes([data[6], data[7]]);
            return Err(err(
                0,
                ParseErrorKind::OldRevision {
                    signature: name,
                    revision,
                },
            ));
        }
    }
    let (expected, other, other_name) = if want_system {
        ("JHSYS", CELL_SIGNATURE, "cell")
    } else {
        ("JHCLL", SYSTEM_SIGNATURE, "system")
    };
    if sig == other && data.len() >= 5 {
        return Err(err(
            0,
            ParseErrorKind::WrongKind {
                expected: if want_system { "system" } else { "cell" },
                found: other_name,
                signature: if want_system { "JHCLL" } else { "JHSYS" },
            },
        ));
    }
    if sig != expected.as_bytes() {
        if data.len() < 5 && expected.as_bytes().starts_with(sig) {
            return Err(err(0, truncated));
        }
        return Err(err(
            0,
            ParseErrorKind::BadSignature {
                expected,
                found: escape(sig),
            },
        ));
    }
    if data.len() < header_len {
        return Err(err(0, truncated));
    }
    let revision = u16::from_le_bytes([data[6], data[7]]);
    if revision != CONFIG_REVISION {
        return Err(err(
            6,
            ParseErrorKind::Revision {
                found: revision,
                expected: CONFIG_REVISION,
            },
        ));
    }
    Arch::from_byte(data[5]).ok_or_else(|| err(5, ParseErrorKind::UnknownArch(data[5])))
}

/// Handles the size comparison after the arrays.
fn check_trailing(
    file: &str,
    end: u64,
    len: u64,
    opts: ParseOptions,
) -> Result<Vec<ParseError>, ParseError> {
    if end == len {
        return Ok(Vec::new());
    }
    let e = ParseError {
        file: file.to_string(),
        structure: "end of config",
        index: None,
        offset: end,
        kind: ParseErrorKind::TrailingData {
            extra: len - end,
            expected: end,
            file_size: len,
        },
    };
    if opts.lenient {
        Ok(vec![e])
    } else {
        Err(e)
    }
}

/// Parses a system config (`JHSYS`), including its root cell.
///
/// Guarantees: on success every array has exactly the length its header
/// count gives, and (without `lenient`) the file has no other bytes, so
/// [`crate::write_system`] reproduces the input exactly.
pub fn parse_system(
    data: &[u8],
    file: &str,
    opts: ParseOptions,
) -> Result<Parsed<SystemConfig>, ParseError> {
    let arch = check_ident(file, data, true)?;
    let desc = SYSTEM_SIZE - CELL_DESC_SIZE;
    let counts = Counts::read(data, desc);
    let end = counts.check(file, SYSTEM_SIZE as u64, data.len() as u64)?;
    let warnings = check_trailing(file, end, data.len() as u64, opts)?;

    let mut r = Reader { data, pos: 8 };
    let flags = r.u32();
    let hypervisor_memory = read_mem(&mut r);
    let debug_console = read_console(&mut r);
    let pci_mmconfig_base = r.u64();
    let pci_mmconfig_end_bus = r.u8();
    let pci_is_virtual = r.u8();
    let pci_domain = r.u16();
    let mut iommu_units = [IommuUnit::default(); MAX_IOMMU_UNITS];
    for u in &mut iommu_units {
        *u = IommuUnit {
            kind: r.u32(),
            base: r.u64(),
            size: r.u32(),
            extra: r.bytes(),
        };
    }
    let arch_platform = if arch.is_arm() {
        ArchPlatform::Arm(ArmPlatform {
            maintenance_irq: r.u8(),
            gic_version: r.u8(),
            padding: r.bytes(),
            gicd_base: r.u64(),
            gicc_base: r.u64(),
            gich_base: r.u64(),
            gicv_base: r.u64(),
            gicr_base: r.u64(),
        })
    } else {
        ArchPlatform::X86(X86Platform {
            pm_timer_address: r.u16(),
            apic_mode: r.u8(),
            padding: r.u8(),
            vtd_interrupt_limit: r.u32(),
            tsc_khz: r.u32(),
            apic_khz: r.u32(),
            tail: r.bytes(),
        })
    };
    let mut root_cell = read_cell(data, desc, arch, &counts);
    root_cell.root_desc_header = data[desc..desc + 8].try_into().unwrap_or([0; 8]);
    Ok(Parsed {
        config: SystemConfig {
            flags,
            hypervisor_memory,
            debug_console,
            platform: PlatformInfo {
                pci_mmconfig_base,
                pci_mmconfig_end_bus,
                pci_is_virtual,
                pci_domain,
                iommu_units,
                arch: arch_platform,
            },
            root_cell,
        },
        warnings,
    })
}

/// Parses a non-root cell config (`JHCLL`).
///
/// Same guarantees as [`parse_system`].
pub fn parse_cell(data: &[u8], file: &str, opts: ParseOptions) -> Result<Parsed<Cell>, ParseError> {
    let arch = check_ident(file, data, false)?;
    let counts = Counts::read(data, 0);
    let end = counts.check(file, CELL_DESC_SIZE as u64, data.len() as u64)?;
    let warnings = check_trailing(file, end, data.len() as u64, opts)?;
    Ok(Parsed {
        config: read_cell(data, 0, arch, &counts),
        warnings,
    })
}

/// Which kind of config a file claims to be, from its signature alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigKind {
    /// `JHSYS`.
    System,
    /// `JHCLL`.
    Cell,
}

/// Detects the kind of config from the signature; `None` for anything else.
pub fn detect_kind(data: &[u8]) -> Option<ConfigKind> {
    match data.get(..5) {
        Some(s) if s == SYSTEM_SIGNATURE && data.get(5..6) != Some(b"T") => {
            Some(ConfigKind::System)
        }
        Some(s) if s == CELL_SIGNATURE => Some(ConfigKind::Cell),
        _ => None,
    }
}

fn read_mem(r: &mut Reader) -> MemRegion {
    MemRegion {
        phys_start: r.u64(),
        virt_start: r.u64(),
        size: r.u64(),
        flags: r.u64(),
    }
}

fn read_console(r: &mut Reader) -> Console {
    Console {
        address: r.u64(),
        size: r.u32(),
        kind: r.u16(),
        flags: r.u16(),
        divider: r.u32(),
        gate_nr: r.u32(),
        clock_reg: r.u64(),
    }
}

/// Reads a descriptor at `desc` whose arrays `Counts::check` validated.
fn read_cell(data: &[u8], desc: usize, arch: Arch, counts: &Counts) -> Cell {
    let mut r = Reader {
        data,
        pos: desc + 8,
    };
    let name_raw = r.bytes::<32>();
    let id = r.u32();
    let flags = r.u32();
    r.pos += 32; // counts, read by Counts
    let vpci_irq_base = r.u32();
    let cpu_reset_address = r.u64();
    let msg_reply_timeout = r.u64();
    let console = read_console(&mut r);
    let cpu_set = data[r.pos..r.pos + counts.cpu_set_size as usize].to_vec();
    r.pos += cpu_set.len();
    let n = |i: usize| counts.num[i] as usize;
    let memory_regions = (0..n(0)).map(|_| read_mem(&mut r)).collect();
    let cache_regions = (0..n(1))
        .map(|_| CacheRegion {
            start: r.u32(),
            size: r.u32(),
            kind: r.u8(),
            padding: r.u8(),
            flags: r.u16(),
        })
        .collect();
    let irqchips = (0..n(2))
        .map(|_| Irqchip {
            address: r.u64(),
            id: r.u32(),
            pin_base: r.u32(),
            pin_bitmap: [r.u32(), r.u32(), r.u32(), r.u32()],
        })
        .collect();
    let pio_regions = (0..n(3))
        .map(|_| PioRegion {
            base: r.u16(),
            length: r.u16(),
        })
        .collect();
    let pci_devices = (0..n(4))
        .map(|_| PciDevice {
            kind: r.u8(),
            iommu: r.u8(),
            domain: r.u16(),
            bdf: r.u16(),
            bar_mask: [r.u32(), r.u32(), r.u32(), r.u32(), r.u32(), r.u32()],
            caps_start: r.u16(),
            num_caps: r.u16(),
            num_msi_vectors: r.u8(),
            msi_flags: r.u8(),
            num_msix_vectors: r.u16(),
            msix_region_size: r.u16(),
            msix_address: r.u64(),
            shmem_regions_start: r.u32(),
            shmem_dev_id: r.u8(),
            shmem_peers: r.u8(),
            shmem_protocol: r.u16(),
        })
        .collect();
    let pci_caps = (0..n(5))
        .map(|_| PciCapability {
            id: r.u16(),
            start: r.u16(),
            len: r.u16(),
            flags: r.u16(),
        })
        .collect();
    let stream_ids = (0..n(6)).map(|_| r.u32()).collect();
    Cell {
        arch,
        root_desc_header: [0; 8],
        name_raw,
        id,
        flags,
        vpci_irq_base,
        cpu_reset_address,
        msg_reply_timeout,
        console,
        cpu_set,
        memory_regions,
        cache_regions,
        irqchips,
        pio_regions,
        pci_devices,
        pci_caps,
        stream_ids,
    }
}
