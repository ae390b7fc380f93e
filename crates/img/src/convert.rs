//! `oxemu-img convert` and `oxemu-img resize` for the raw format.
//!
//! convert walks the source's block status, skips ranges that read as zeroes (the
//! freshly created target is sparse, so they are already zero) and copies the rest in
//! 2 MiB chunks, skipping chunks whose contents are all zero.

use std::io::Write;
use std::path::Path;

use oxemu_block::buffer::is_zero as is_zero_buf;
use oxemu_block::{AlignedBuf, BlockDriver, BlockDriverExt, FileDriver};

use crate::args::{opt, parse, Opt};
use crate::image::{self, Cache, OpenOpts};
use crate::map::event_loop;
use crate::Error;

const CONVERT_SPEC: &[Opt] = &[
    opt(Some('f'), None, true),
    opt(Some('O'), None, true),
    opt(Some('o'), None, true),
    opt(Some('p'), None, false),
    opt(Some('q'), None, false),
    opt(Some('c'), None, false),
    opt(Some('n'), None, false),
    opt(Some('U'), Some("force-share"), false),
    opt(Some('t'), None, true),
    opt(Some('T'), None, true),
];

const CHUNK: usize = 2 << 20;

/// Runs `convert [-f fmt] [-O fmt] [-p] [-q] [-n] [-U] [-t cache] [-T src_cache] src dst`.
pub fn run_convert(argv: &[String]) -> Result<(), Error> {
    let p = parse(argv, CONVERT_SPEC)?;
    let [src, dst] = p.args.as_slice() else {
        return Err(Error::Usage(
            "Expecting one source and one destination file name".into(),
        ));
    };
    let out_fmt = p.get("O").unwrap_or("raw");
    if out_fmt != "raw" {
        return Err(Error::Msg(format!(
            "Unknown file format '{out_fmt}' (this oxemu-img writes raw only)"
        )));
    }
    if p.has("c") {
        return Err(Error::Msg(
            "Compression not supported for this file format".into(),
        ));
    }
    if let Some(o) = p.get("o") {
        return Err(Error::Msg(format!(
            "Invalid parameter '{}'",
            o.split('=').next().unwrap_or(o)
        )));
    }
    let src_cache = image::parse_cache(p.get("T").unwrap_or("writeback"))?;
    let dst_cache = image::parse_cache(p.get("t").unwrap_or("unsafe"))?;
    let s = image::open(
        Path::new(src),
        &OpenOpts {
            format: p.get("f"),
            cache: src_cache,
            aio: Default::default(),
            read_only: true,
            force_share: p.has("force-share"),
        },
    )?;
    let size = s.node.size();
    if !p.has("n") {
        FileDriver::create(Path::new(dst), size, false)
            .map_err(|e| Error::Msg(format!("{dst}: error while converting raw: {e}")))?;
    }
    let d = image::open(
        Path::new(dst),
        &OpenOpts {
            format: Some("raw"),
            cache: dst_cache,
            aio: Default::default(),
            read_only: false,
            force_share: false,
        },
    )?;
    if d.node.size() < size {
        return Err(Error::Msg(format!(
            "Could not convert: target '{dst}' is smaller than the source"
        )));
    }
    let progress = p.has("p") && !p.has("q");
    let lp = event_loop()?;
    lp.block_on(copy(&*s.node, &*d.node, size, !p.has("n"), progress))
}

async fn copy(
    src: &dyn BlockDriver,
    dst: &dyn BlockDriver,
    size: u64,
    target_is_zero: bool,
    progress: bool,
) -> Result<(), Error> {
    let mut buf = AlignedBuf::new(CHUNK);
    let mut off = 0u64;
    let show = |done: u64| {
        if progress {
            let pct = if size == 0 {
                100.0
            } else {
                done as f64 * 100.0 / size as f64
            };
            print!("    ({pct:.2}/100%)\r");
            let _ = std::io::stdout().flush();
        }
    };
    show(0);
    while off < size {
        let st = src
            .block_status(off, (size - off).min(1 << 30))
            .await
            .map_err(|e| {
                Error::Msg(format!(
                    "error while reading block status at offset {off}: {e}"
                ))
            })?;
        let len = st.len.max(1).min(size - off);
        if st.zero || !st.data {
            if !target_is_zero {
                dst.write_zeroes(off, len, Default::default())
                    .await
                    .map_err(|e| Error::Msg(format!("error while writing at byte {off}: {e}")))?;
            }
        } else {
            let mut o = off;
            while o < off + len {
                let n = (off + len - o).min(CHUNK as u64) as usize;
                src.read_at(o, &mut buf[..n])
                    .await
                    .map_err(|e| Error::Msg(format!("error while reading at byte {o}: {e}")))?;
                if !(target_is_zero && is_zero_buf(&buf[..n])) {
                    dst.write_at(o, &buf[..n])
                        .await
                        .map_err(|e| Error::Msg(format!("error while writing at byte {o}: {e}")))?;
                }
                o += n as u64;
                show(o);
            }
        }
        off += len;
        show(off);
    }
    dst.flush()
        .await
        .map_err(|e| Error::Msg(format!("error while flushing: {e}")))?;
    if progress {
        println!("    (100.00/100%)");
    }
    Ok(())
}

const RESIZE_SPEC: &[Opt] = &[
    opt(Some('f'), None, true),
    opt(Some('q'), None, false),
    opt(Some('U'), Some("force-share"), false),
    opt(None, Some("shrink"), false),
    opt(None, Some("preallocation"), true),
];

/// Runs `resize [-f fmt] [-q] [--shrink] filename [+|-]size`.
pub fn run_resize(argv: &[String]) -> Result<(), Error> {
    // "-1M" looks like an option: take the last argument as the size first.
    let Some((size_arg, rest)) = argv.split_last() else {
        return Err(Error::Usage("Not enough arguments".into()));
    };
    let p = parse(rest, RESIZE_SPEC)?;
    let [file] = p.args.as_slice() else {
        return Err(Error::Usage("Expecting image file name and size".into()));
    };
    let img = image::open(
        Path::new(file),
        &OpenOpts {
            format: p.get("f"),
            cache: Cache::default(),
            aio: Default::default(),
            read_only: false,
            force_share: false,
        },
    )?;
    let cur = img.node.size();
    let bad = || {
        Error::Msg("Invalid image size specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.".into())
    };
    let new = if let Some(s) = size_arg.strip_prefix('+') {
        cur.checked_add(crate::create::image_size(s).map_err(|_| bad())?)
            .ok_or_else(bad)?
    } else if let Some(s) = size_arg.strip_prefix('-') {
        let d = crate::create::image_size(s).map_err(|_| bad())?;
        cur.checked_sub(d)
            .ok_or_else(|| Error::Msg("New image size must be positive".into()))?
    } else {
        crate::create::image_size(size_arg).map_err(|_| bad())?
    };
    if new == 0 {
        return Err(Error::Msg("New image size must be positive".into()));
    }
    if new < cur && !p.has("shrink") {
        return Err(Error::Msg(
            "Use the --shrink option to perform a shrink operation.".into(),
        ));
    }
    if new < cur && !p.has("q") {
        eprintln!("oxemu-img: warning: Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.");
    }
    let lp = event_loop()?;
    lp.block_on(async { img.node.truncate(new).await })
        .map_err(|e| Error::Msg(format!("Error resizing image: {e}")))?;
    if !p.has("q") {
        println!("Image resized.");
    }
    Ok(())
}
