//! Malformed input is refused with an error naming file, structure, index
//! and byte offset, and never panics.

mod support;

use oxemu_jailhouse::{
    parse_cell, parse_system, write_cell, write_system, ParseErrorKind, ParseOptions,
};

const STRICT: ParseOptions = ParseOptions { lenient: false };
const LENIENT: ParseOptions = ParseOptions { lenient: true };

#[test]
fn every_truncation_of_every_config_is_an_error() {
    for (file, is_system, bytes) in support::all_configs() {
        for len in 0..bytes.len() {
            let cut = &bytes[..len];
            let err = if is_system {
                parse_system(cut, file, STRICT).err()
            } else {
                parse_cell(cut, file, STRICT).err()
            };
            let err = err.unwrap_or_else(|| panic!("{file} cut to {len} bytes parsed"));
            let header = if is_system { 488 } else { 132 };
            if len < header {
                // Cut inside the fixed-size header: no count has been read yet.
                assert!(
                    matches!(err.kind, ParseErrorKind::TruncatedHeader { needed, file_size, .. }
                        if needed == header as u64 && file_size == len as u64),
                    "{file} at {len}: {err}"
                );
                assert!(!err.to_string().contains("header counts"), "{err}");
            } else {
                assert!(
                    matches!(err.kind, ParseErrorKind::Truncated { .. }),
                    "{file} at {len}: {err}"
                );
            }
            assert!(err.to_string().starts_with(file));
        }
    }
}

#[test]
fn file_cut_inside_the_fixed_header_gets_its_own_message() {
    // An upstream qemu-x86.cell cut after 300 bytes (e.g. an interrupted copy).
    let bytes = write_system(&support::qemu_x86());
    let err = parse_system(&bytes[..300], "qemu-x86.cell", STRICT).unwrap_err();
    assert_eq!(
        err.to_string(),
        "qemu-x86.cell: jailhouse_system at byte offset 0: file ends at byte 300, \
         inside the 488-byte fixed-size system header (truncated file)"
    );
    let cell = write_cell(&support::apic_demo());
    let err = parse_cell(&cell[..100], "apic-demo.cell", STRICT).unwrap_err();
    assert_eq!(
        err.to_string(),
        "apic-demo.cell: jailhouse_cell_desc at byte offset 0: file ends at byte 100, \
         inside the 132-byte fixed-size cell descriptor header (truncated file)"
    );
}

#[test]
fn truncation_inside_an_array_names_the_entry_and_its_offset() {
    let bytes = write_system(&support::qemu_x86());
    // Memory regions start after the 488-byte header and the 8-byte CPU set.
    let cut = 488 + 8 + 5 * 32 + 7;
    let err = parse_system(&bytes[..cut], "qemu-x86.cell", STRICT).unwrap_err();
    assert_eq!(err.structure, "memory_regions");
    assert_eq!(err.index, Some(5));
    assert_eq!(err.offset, 488 + 8 + 5 * 32);
    assert_eq!(
        err.to_string(),
        format!(
            "qemu-x86.cell: memory_regions[5] at byte offset 656: file ends at byte {cut} but the header counts need {} bytes (truncated file or count too large)",
            bytes.len()
        )
    );
}

#[test]
fn huge_counts_are_refused_before_allocating() {
    let mut bytes = write_cell(&support::apic_demo());
    // num_memory_regions lives at offset 52 of the cell descriptor.
    bytes[52..56].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = parse_cell(&bytes, "apic.cell", STRICT).unwrap_err();
    assert_eq!(err.structure, "memory_regions");
    // The 88 bytes of arrays that follow hold two whole 32-byte entries.
    assert_eq!(err.index, Some(2));
    assert_eq!(err.offset, 132 + 8 + 2 * 32);
    assert!(
        matches!(err.kind, ParseErrorKind::Truncated { needed, .. } if needed > u32::MAX as u64)
    );

    let mut bytes = write_system(&support::qemu_x86());
    for field in 0..8 {
        let off = 356 + 48 + field * 4;
        bytes[off..off + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    }
    assert!(parse_system(&bytes, "sys.cell", LENIENT).is_err());
}

#[test]
fn wrong_magic_is_refused() {
    let mut bytes = write_cell(&support::apic_demo());
    bytes[..5].copy_from_slice(b"ELF\x7f\x00");
    let err = parse_cell(&bytes, "x.cell", STRICT).unwrap_err();
    assert!(
        matches!(err.kind, ParseErrorKind::BadSignature { .. }),
        "{err}"
    );
    assert_eq!(err.offset, 0);
    assert!(err.to_string().contains("not a Jailhouse config"), "{err}");
}

#[test]
fn revision_13_signatures_are_refused_naming_the_revision() {
    for (sig, want_system) in [(b"JHSYST", true), (b"JHCELL", false)] {
        let mut bytes = vec![0u8; 600];
        bytes[..6].copy_from_slice(sig);
        bytes[6..8].copy_from_slice(&13u16.to_le_bytes());
        let err = if want_system {
            parse_system(&bytes, "old.cell", STRICT).unwrap_err()
        } else {
            parse_cell(&bytes, "old.cell", STRICT).unwrap_err()
        };
        assert!(
            matches!(err.kind, ParseErrorKind::OldRevision { revision: 13, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("config revision 13"), "{err}");
        assert!(
            err.to_string().contains("JAILHOUSE_CONFIG_REVISION 14"),
            "{err}"
        );
    }
}

#[test]
fn other_revision_numbers_are_refused() {
    let mut bytes = write_system(&support::qemu_x86());
    bytes[6..8].copy_from_slice(&15u16.to_le_bytes());
    let err = parse_system(&bytes, "sys.cell", STRICT).unwrap_err();
    assert_eq!(
        err.kind,
        ParseErrorKind::Revision {
            found: 15,
            expected: 14
        }
    );
    assert_eq!(err.offset, 6);
}

#[test]
fn unknown_architecture_byte_is_refused() {
    let mut bytes = write_cell(&support::apic_demo());
    bytes[5] = 7;
    let err = parse_cell(&bytes, "apic.cell", STRICT).unwrap_err();
    assert_eq!(err.kind, ParseErrorKind::UnknownArch(7));
    assert_eq!(err.offset, 5);
}

#[test]
fn cell_config_given_as_system_config_is_the_wrong_kind() {
    let cell = write_cell(&support::apic_demo());
    let err = parse_system(&cell, "apic.cell", STRICT).unwrap_err();
    assert!(
        matches!(
            err.kind,
            ParseErrorKind::WrongKind {
                expected: "system",
                found: "cell",
                ..
            }
        ),
        "{err}"
    );
    let sys = write_system(&support::qemu_x86());
    let err = parse_cell(&sys, "qemu.cell", STRICT).unwrap_err();
    assert!(
        matches!(
            err.kind,
            ParseErrorKind::WrongKind {
                expected: "cell",
                found: "system",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn trailing_data_is_an_error_or_a_lenient_warning() {
    let mut bytes = write_cell(&support::tiny_demo());
    let end = bytes.len() as u64;
    bytes.extend_from_slice(&[0xaa; 10]);
    let err = parse_cell(&bytes, "tiny.cell", STRICT).unwrap_err();
    assert_eq!(err.offset, end);
    assert!(
        matches!(err.kind, ParseErrorKind::TrailingData { extra: 10, .. }),
        "{err}"
    );
    let parsed = parse_cell(&bytes, "tiny.cell", LENIENT).unwrap();
    assert_eq!(parsed.config, support::tiny_demo());
    assert_eq!(parsed.warnings.len(), 1);
    assert_eq!(parsed.warnings[0].offset, end);
}

#[test]
fn arbitrary_bytes_after_a_valid_header_never_panic() {
    // A cheap deterministic sweep in addition to the fuzz target: flip each
    // byte of the header and the first entries.
    let base = write_system(&support::j721e());
    for i in 0..base.len().min(700) {
        for v in [0x00u8, 0xff, 0x80] {
            let mut b = base.clone();
            b[i] = v;
            if let Ok(p) = parse_system(&b, "x", LENIENT) {
                let set = oxemu_jailhouse::ConfigSet::new(p.config.clone(), vec![]);
                let _ = oxemu_jailhouse::check(&set);
                if p.warnings.is_empty() {
                    assert_eq!(write_system(&p.config), b);
                }
            }
        }
    }
}
