//! `oxemu-img map` and `oxemu-img compare`: walks of an image's allocation status and
//! contents, printed as qemu-img prints them.

use std::path::Path;

use oxemu_block::{AlignedBuf, BlockDriver, BlockDriverExt, BlockStatus, EventLoop};

use crate::image::{self, Cache, Image, OpenOpts};
use crate::Error;
use oxemu_opts::getopt::{opt, parse, Opt};

/// Opens `file` read-only with qemu-img's defaults (writeback cache, threads).
pub fn open_ro(file: &str, format: Option<&str>, force_share: bool) -> Result<Image, Error> {
    image::open(
        Path::new(file),
        &OpenOpts {
            format,
            cache: Cache::default(),
            aio: Default::default(),
            read_only: true,
            force_share,
            no_backing: false,
            no_share: false,
        },
    )
}

/// A fresh event loop for one subcommand.
pub fn event_loop() -> Result<EventLoop, Error> {
    EventLoop::with_defaults().map_err(|e| Error::Msg(format!("Could not create event loop: {e}")))
}

const MAP_SPEC: &[Opt] = &[
    opt(Some('f'), None, true),
    opt(None, Some("output"), true),
    opt(Some('U'), Some("force-share"), false),
    opt(None, Some("start-offset"), true),
    opt(None, Some("max-length"), true),
];

/// Runs `map [-f fmt] [--output=human|json] [-U] filename`.
pub fn run_map(argv: &[String]) -> Result<(), Error> {
    let p = parse(argv, MAP_SPEC)?;
    let [file] = p.args.as_slice() else {
        return Err(Error::Usage("Expecting one image file name".into()));
    };
    let json = crate::info::output_is_json(p.get("output"))?;
    let img = open_ro(file, p.get("f"), p.has("force-share"))?;
    let size = img.node.size();
    let start = match p.get("start-offset") {
        Some(s) => crate::create::image_size(s)?,
        None => 0,
    };
    let end = match p.get("max-length") {
        Some(s) => size.min(start.saturating_add(crate::create::image_size(s)?)),
        None => size,
    };
    // File names by depth: the image itself, then its backing files.
    let mut names = vec![img.name(file).to_string()];
    let mut cur = img.qcow2.as_ref().and_then(|c| c.backing());
    while let Some(b) = cur {
        names.push(b.path.display().to_string());
        cur = b.backing();
    }
    let lp = event_loop()?;
    let extents = lp.block_on(status_extents(&*img.node, start, end))?;
    if json {
        let lines: Vec<String> = extents
            .iter()
            .map(|(off, st)| {
                let mut l = format!(
                    "{{ \"start\": {off}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}",
                    st.len,
                    // qemu-img counts layers from 0 for the top image; ranges that no
                    // layer allocates get the depth of the bottom one.
                    if st.depth == 0 { names.len() as u32 - 1 } else { st.depth - 1 },
                    st.depth > 0,
                    st.zero,
                    st.data
                );
                if let Some(o) = st.offset {
                    l.push_str(&format!(", \"offset\": {o}"));
                }
                l.push('}');
                l
            })
            .collect();
        println!("[{}]", lines.join(",\n"));
    } else {
        println!("{:<16}{:<16}{:<16}File", "Offset", "Length", "Mapped to");
        // As qemu-img: only data that does not read as zeroes is listed.
        for (off, st) in extents.iter().filter(|(_, s)| s.data && !s.zero) {
            let mapped = st.offset.map(|o| format!("{o:#x}")).unwrap_or_default();
            let mapped = if mapped == "0x0" { "0".into() } else { mapped };
            let offs = if *off == 0 {
                "0".into()
            } else {
                format!("{off:#x}")
            };
            let layer = st.depth.saturating_sub(1) as usize;
            let name = names.get(layer).unwrap_or(file);
            println!(
                "{offs:<16}{:<16}{mapped:<16}{name}",
                format!("{:#x}", st.len)
            );
        }
    }
    Ok(())
}

/// The block status of `[start, end)`, with neighbouring extents of equal status merged
/// (qemu-img map merges them too).
async fn status_extents(
    node: &dyn BlockDriver,
    start: u64,
    end: u64,
) -> Result<Vec<(u64, BlockStatus)>, Error> {
    let mut out: Vec<(u64, BlockStatus)> = Vec::new();
    let mut off = start;
    while off < end {
        let st = node
            .block_status(off, end - off)
            .await
            .map_err(|e| Error::Msg(format!("Could not get block status at offset {off}: {e}")))?;
        if st.len == 0 {
            return Err(Error::Msg(format!(
                "Block status returned no progress at offset {off}"
            )));
        }
        let len = st.len.min(end - off);
        let mergeable = out.last().is_some_and(|(o, p)| {
            p.data == st.data
                && p.zero == st.zero
                && p.depth == st.depth
                && match (p.offset, st.offset) {
                    (Some(a), Some(b)) => a + p.len == b,
                    (None, None) => true,
                    _ => false,
                }
                && o + p.len == off
        });
        if mergeable {
            out.last_mut().expect("checked above").1.len += len;
        } else {
            out.push((off, BlockStatus { len, ..st }));
        }
        off += len;
    }
    Ok(out)
}

const CMP_SPEC: &[Opt] = &[
    opt(Some('f'), None, true),
    opt(Some('F'), None, true),
    opt(Some('s'), None, false),
    opt(Some('q'), None, false),
    opt(Some('p'), None, false),
    opt(Some('U'), Some("force-share"), false),
];

/// Chunk size `compare` reads in.
const CMP_CHUNK: usize = 2 << 20;

/// Result of `compare`: qemu-img's exit codes (0 equal, 1 differ, 2 error, 4 a
/// failed read).
pub enum Compared {
    /// Contents are the same.
    Identical,
    /// First differing offset, or a size mismatch in strict mode (None).
    Differ(Option<u64>),
}

/// Runs `compare [-f fmt] [-F fmt] [-s] [-q] filename1 filename2`; returns the exit code.
pub fn run_compare(argv: &[String]) -> Result<u8, Error> {
    let p = parse(argv, CMP_SPEC)?;
    let [f1, f2] = p.args.as_slice() else {
        return Err(Error::Usage("Expecting two image file names".into()));
    };
    let fs = p.has("force-share");
    let a = open_ro(f1, p.get("f"), fs)?;
    let b = open_ro(f2, p.get("F").or(p.get("f")), fs)?;
    let lp = event_loop()?;
    let names = (a.name(f1), b.name(f2));
    let quiet = p.has("q");
    let r = lp.block_on(compare(&*a.node, &*b.node, p.has("s"), names, !quiet))?;
    Ok(match r {
        Compared::Identical => {
            if !quiet {
                println!("Images are identical.");
            }
            0
        }
        Compared::Differ(Some(off)) => {
            if !quiet {
                println!("Content mismatch at offset {off}!");
            }
            1
        }
        Compared::Differ(None) => {
            if !quiet {
                println!("Strict mode: Image size mismatch!");
            }
            1
        }
    })
}

/// Compares two nodes as qemu-img compare does: the common part byte for byte, the
/// tail of the larger one must read as zeroes (unless `strict`, where sizes must match).
/// Mismatches are reported at 512-byte sector granularity, as qemu-img reports them.
/// With `warn`, prints qemu-img's size-mismatch warning when the common part matched
/// and the tail of the larger one comes next (before it is read, so a failed read
/// there still shows it).
pub async fn compare(
    a: &dyn BlockDriver,
    b: &dyn BlockDriver,
    strict: bool,
    names: (&str, &str),
    warn: bool,
) -> Result<Compared, Error> {
    let (sa, sb) = (a.size(), b.size());
    if strict && sa != sb {
        return Ok(Compared::Differ(None));
    }
    let mut ba = AlignedBuf::new(CMP_CHUNK);
    let mut bb = AlignedBuf::new(CMP_CHUNK);
    let common = sa.min(sb);
    let mut off = 0u64;
    // qemu-img names the image and exits with 4 when a read fails.
    let rd = |e: std::io::Error, off: u64, name: &str| {
        Error::Exit(
            4,
            format!(
                "Error while reading offset {off} of {name}: {}",
                crate::strip_os_errors(&e.to_string())
            ),
        )
    };
    while off < common {
        let n = (common - off).min(CMP_CHUNK as u64) as usize;
        a.read_at(off, &mut ba[..n])
            .await
            .map_err(|e| rd(e, off, names.0))?;
        b.read_at(off, &mut bb[..n])
            .await
            .map_err(|e| rd(e, off, names.1))?;
        if let Some(i) = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y) {
            return Ok(Compared::Differ(Some((off + i as u64) & !511)));
        }
        off += n as u64;
    }
    if sa != sb && warn {
        println!("Warning: Image size mismatch!");
    }
    let (longer, longer_name) = if sa > sb { (a, names.0) } else { (b, names.1) };
    while off < sa.max(sb) {
        let n = (sa.max(sb) - off).min(CMP_CHUNK as u64) as usize;
        longer
            .read_at(off, &mut ba[..n])
            .await
            .map_err(|e| rd(e, off, longer_name))?;
        if let Some(i) = ba[..n].iter().position(|&x| x != 0) {
            return Ok(Compared::Differ(Some((off + i as u64) & !511)));
        }
        off += n as u64;
    }
    Ok(Compared::Identical)
}
