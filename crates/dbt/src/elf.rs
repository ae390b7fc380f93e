//! Parsing and validation of x86-64 ELF executables (pure: no mapping happens here).
//!
//! Every check names the file offset or field it failed on, so that a corrupt file gives a
//! clear message instead of a crash in the loader.

use thiserror::Error;

/// `e_type` of a fixed-address executable.
pub const ET_EXEC: u16 = 2;
/// `e_type` of a position-independent executable or shared object.
pub const ET_DYN: u16 = 3;
/// Program header type of a loadable segment.
pub const PT_LOAD: u32 = 1;
/// Program header type naming the interpreter.
pub const PT_INTERP: u32 = 3;
/// Program header type locating the program headers themselves.
pub const PT_PHDR: u32 = 6;
/// Segment flag: executable.
pub const PF_X: u32 = 1;
/// Segment flag: writable.
pub const PF_W: u32 = 2;
/// Segment flag: readable.
pub const PF_R: u32 = 4;

/// Size of an `Elf64_Ehdr`.
pub const EHDR_SIZE: usize = 64;
/// Size of an `Elf64_Phdr`.
pub const PHDR_SIZE: usize = 56;
/// Most program headers accepted (Linux limits the table to 64 KiB as well).
pub const MAX_PHNUM: usize = 1024;
/// Longest interpreter path accepted (PATH_MAX).
pub const MAX_INTERP: usize = 4096;
/// Largest span of loadable segments accepted (1 TiB).
pub const MAX_SPAN: u64 = 1 << 40;

/// Why an ELF file was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ElfError {
    /// The file is shorter than a structure it must contain.
    #[error("truncated: {what} needs bytes {start:#x}..{end:#x} but the file has {len:#x}")]
    Truncated {
        /// The structure that does not fit.
        what: &'static str,
        /// First byte it needs.
        start: u64,
        /// One past its last byte.
        end: u64,
        /// File length.
        len: u64,
    },
    /// A header field has a value this loader does not accept.
    #[error("bad {field} at offset {offset:#x}: {value:#x} ({why})")]
    BadField {
        /// The field's name, as in `<elf.h>`.
        field: &'static str,
        /// File offset of the field.
        offset: u64,
        /// Its value.
        value: u64,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// One `PT_LOAD` segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Virtual address (before any load bias).
    pub vaddr: u64,
    /// Size in memory.
    pub memsz: u64,
    /// File offset of the contents.
    pub offset: u64,
    /// Bytes taken from the file.
    pub filesz: u64,
    /// `PF_*` flags.
    pub flags: u32,
}

/// The validated parts of an ELF executable the loader needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    /// `ET_EXEC` or `ET_DYN`.
    pub etype: u16,
    /// Entry point (before any load bias).
    pub entry: u64,
    /// File offset of the program header table.
    pub phoff: u64,
    /// Number of program headers.
    pub phnum: u16,
    /// Address of the program headers (before bias) if a `PT_PHDR` or a load segment covers them.
    pub phdr_vaddr: Option<u64>,
    /// Loadable segments in ascending address order.
    pub segments: Vec<Segment>,
    /// Interpreter path from `PT_INTERP`.
    pub interp: Option<String>,
}

fn rd16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn rd32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn rd64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

fn bad(field: &'static str, offset: u64, value: u64, why: &'static str) -> ElfError {
    ElfError::BadField {
        field,
        offset,
        value,
        why,
    }
}

fn need(what: &'static str, start: u64, size: u64, len: u64) -> Result<(), ElfError> {
    match start.checked_add(size) {
        Some(end) if end <= len => Ok(()),
        end => Err(ElfError::Truncated {
            what,
            start,
            end: end.unwrap_or(u64::MAX),
            len,
        }),
    }
}

/// Parses and validates the ELF image in `file`.
///
/// ```
/// let err = oxemu_dbt::elf::parse(b"\x7fELF").unwrap_err();
/// assert!(err.to_string().contains("truncated"));
/// ```
pub fn parse(file: &[u8]) -> Result<ElfInfo, ElfError> {
    let len = file.len() as u64;
    need("ELF header", 0, EHDR_SIZE as u64, len)?;
    if &file[0..4] != b"\x7fELF" {
        return Err(bad(
            "e_ident[EI_MAG]",
            0,
            rd32(file, 0) as u64,
            "not an ELF file",
        ));
    }
    if file[4] != 2 {
        return Err(bad(
            "e_ident[EI_CLASS]",
            4,
            file[4] as u64,
            "not ELFCLASS64",
        ));
    }
    if file[5] != 1 {
        return Err(bad(
            "e_ident[EI_DATA]",
            5,
            file[5] as u64,
            "not little-endian",
        ));
    }
    if file[6] != 1 {
        return Err(bad(
            "e_ident[EI_VERSION]",
            6,
            file[6] as u64,
            "not EV_CURRENT",
        ));
    }
    let etype = rd16(file, 16);
    if etype != ET_EXEC && etype != ET_DYN {
        return Err(bad("e_type", 16, etype as u64, "not ET_EXEC or ET_DYN"));
    }
    let machine = rd16(file, 18);
    if machine != 62 {
        return Err(bad("e_machine", 18, machine as u64, "not EM_X86_64"));
    }
    let entry = rd64(file, 24);
    let phoff = rd64(file, 32);
    let phentsize = rd16(file, 54);
    let phnum = rd16(file, 56);
    if phentsize as usize != PHDR_SIZE {
        return Err(bad("e_phentsize", 54, phentsize as u64, "must be 56"));
    }
    if phnum == 0 || phnum as usize > MAX_PHNUM {
        return Err(bad("e_phnum", 56, phnum as u64, "must be 1..=1024"));
    }
    need(
        "program header table",
        phoff,
        phnum as u64 * PHDR_SIZE as u64,
        len,
    )?;

    let mut segments: Vec<Segment> = Vec::new();
    let mut interp = None;
    let mut phdr_vaddr = None;
    for i in 0..phnum as usize {
        let o = phoff as usize + i * PHDR_SIZE;
        let p_type = rd32(file, o);
        let flags = rd32(file, o + 4);
        let offset = rd64(file, o + 8);
        let vaddr = rd64(file, o + 16);
        let filesz = rd64(file, o + 32);
        let memsz = rd64(file, o + 40);
        let align = rd64(file, o + 48);
        let fo = o as u64;
        match p_type {
            PT_LOAD => {
                if filesz > memsz {
                    return Err(bad("p_filesz", fo + 32, filesz, "larger than p_memsz"));
                }
                need("PT_LOAD contents", offset, filesz, len)?;
                if vaddr.checked_add(memsz).map_or(true, |e| e > (1u64 << 47)) {
                    return Err(bad("p_vaddr", fo + 16, vaddr, "segment leaves user space"));
                }
                if align > 1 && (vaddr % 4096) != (offset % 4096) {
                    return Err(bad(
                        "p_offset",
                        fo + 8,
                        offset,
                        "not congruent to p_vaddr modulo the page size",
                    ));
                }
                if let Some(prev) = segments.last() {
                    if vaddr < prev.vaddr + prev.memsz {
                        return Err(bad(
                            "p_vaddr",
                            fo + 16,
                            vaddr,
                            "PT_LOAD segments overlap or are not ascending",
                        ));
                    }
                }
                if memsz > 0 {
                    segments.push(Segment {
                        vaddr,
                        memsz,
                        offset,
                        filesz,
                        flags,
                    });
                }
            }
            PT_INTERP => {
                if interp.is_some() {
                    return Err(bad("p_type", fo, p_type as u64, "second PT_INTERP"));
                }
                if filesz < 2 || filesz as usize > MAX_INTERP {
                    return Err(bad(
                        "p_filesz",
                        fo + 32,
                        filesz,
                        "interpreter path length not in 2..=4096",
                    ));
                }
                need("PT_INTERP path", offset, filesz, len)?;
                let raw = &file[offset as usize..(offset + filesz) as usize];
                let Some(nul) = raw.iter().position(|&c| c == 0) else {
                    return Err(bad(
                        "p_offset",
                        fo + 8,
                        offset,
                        "interpreter path not NUL-terminated",
                    ));
                };
                if nul == 0 {
                    return Err(bad("p_offset", fo + 8, offset, "interpreter path empty"));
                }
                let s = std::str::from_utf8(&raw[..nul])
                    .map_err(|_| bad("p_offset", fo + 8, offset, "interpreter path not UTF-8"))?;
                interp = Some(s.to_string());
            }
            PT_PHDR => phdr_vaddr = Some(vaddr),
            _ => {}
        }
    }
    if segments.is_empty() {
        return Err(bad("e_phnum", 56, phnum as u64, "no PT_LOAD segment"));
    }
    let span = segments.last().unwrap().vaddr + segments.last().unwrap().memsz - segments[0].vaddr;
    if span > MAX_SPAN {
        return Err(bad("p_memsz", phoff + 40, span, "loadable span over 1 TiB"));
    }
    if phdr_vaddr.is_none() {
        phdr_vaddr = segments
            .iter()
            .find(|s| s.offset <= phoff && phoff + (phnum as u64) * 56 <= s.offset + s.filesz)
            .map(|s| s.vaddr + (phoff - s.offset));
    }
    Ok(ElfInfo {
        etype,
        entry,
        phoff,
        phnum,
        phdr_vaddr,
        segments,
        interp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> Vec<u8> {
        let mut f = vec![0u8; 0x200];
        f[0..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[16] = 2;
        f[18] = 62;
        f[24..32].copy_from_slice(&0x401000u64.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54] = 56;
        f[56] = 1;
        let p = 64;
        f[p..p + 4].copy_from_slice(&1u32.to_le_bytes());
        f[p + 4..p + 8].copy_from_slice(&5u32.to_le_bytes());
        f[p + 16..p + 24].copy_from_slice(&0x400000u64.to_le_bytes());
        f[p + 32..p + 40].copy_from_slice(&0x200u64.to_le_bytes());
        f[p + 40..p + 48].copy_from_slice(&0x200u64.to_le_bytes());
        f[p + 48..p + 56].copy_from_slice(&0x1000u64.to_le_bytes());
        f
    }

    #[test]
    fn accepts_minimal() {
        let i = parse(&minimal()).unwrap();
        assert_eq!(i.segments.len(), 1);
        assert_eq!(i.phdr_vaddr, Some(0x400040));
    }

    #[test]
    fn names_bad_fields() {
        let mut f = minimal();
        f[18] = 3;
        assert!(parse(&f)
            .unwrap_err()
            .to_string()
            .contains("e_machine at offset 0x12"));
        let mut f = minimal();
        f[64 + 32] = 0xff;
        f[64 + 33] = 0xff;
        assert!(parse(&f).unwrap_err().to_string().contains("p_filesz"));
        let mut f = minimal();
        f[33] = 0x10;
        assert!(matches!(parse(&f), Err(ElfError::Truncated { .. })));
    }
}
