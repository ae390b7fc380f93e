//! `oxemu-img convert` and `oxemu-img resize` for the raw format.
//!
//! convert walks the source's block status, skips ranges that read as zeroes (the
//! freshly created target is sparse, so they are already zero) and copies the rest in
//! 2 MiB chunks, 8 requests in flight, skipping chunks whose contents are all zero.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use oxemu_block::aio::spawn_local;
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
    if out_fmt != "raw" && out_fmt != "qcow2" {
        return Err(Error::Msg(format!("Unknown file format '{out_fmt}'")));
    }
    if p.has("c") && out_fmt != "qcow2" {
        return Err(Error::Msg(
            "Compression not supported for this file format".into(),
        ));
    }
    let create_opts: Vec<&str> = p
        .opts
        .iter()
        .filter(|(k, _)| k == "o")
        .map(|(_, v)| v.as_str())
        .collect();
    if out_fmt == "raw" {
        if let Some(o) = create_opts.first() {
            let k = o.split('=').next().unwrap_or(o);
            return Err(Error::Msg(format!("Invalid parameter '{k}'")));
        }
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
            no_backing: false,
        },
    )?;
    let size = s.node.size();
    if !p.has("n") {
        if out_fmt == "qcow2" {
            crate::create_qcow2::run(dst, Some(size), &create_opts, None, None, true)?;
        } else {
            FileDriver::create(Path::new(dst), size, false)
                .map_err(|e| Error::Msg(format!("{dst}: error while converting raw: {e}")))?;
        }
    }
    let d = image::open(
        Path::new(dst),
        &OpenOpts {
            format: Some(out_fmt),
            cache: dst_cache,
            aio: Default::default(),
            read_only: false,
            force_share: false,
            no_backing: false,
        },
    )?;
    if d.node.size() < size {
        return Err(Error::Msg(format!(
            "Could not convert: target '{dst}' is smaller than the source"
        )));
    }
    let progress = p.has("p") && !p.has("q");
    // -c: every non-zero cluster is written compressed (zlib or zstd, as the target's
    // compression_type says).
    let compress = match p.has("c") {
        false => None,
        true => Some(
            d.qcow2
                .as_ref()
                .and_then(|i| i.qcow2.clone())
                .ok_or_else(|| {
                    Error::Msg("Compression not supported for this file format".into())
                })?,
        ),
    };
    let lp = event_loop()?;
    lp.block_on(copy(
        s.node.clone(),
        d.node.clone(),
        size,
        !p.has("n"),
        progress,
        compress,
    ))
}

/// Copy requests in flight at once.
const IN_FLIGHT: usize = 8;

/// One range of the source to copy: data (read and write) or zeroes.
#[derive(Clone, Copy)]
struct Extent {
    off: u64,
    len: u64,
    data: bool,
}

async fn copy(
    src: Arc<dyn BlockDriver>,
    dst: Arc<dyn BlockDriver>,
    size: u64,
    target_is_zero: bool,
    progress: bool,
    compress: Option<Arc<oxemu_qcow2::Qcow2>>,
) -> Result<(), Error> {
    let mut extents = Vec::new();
    let mut off = 0u64;
    if compress.is_some() {
        // Compressed clusters are written whole: walk a cluster-aligned grid (CHUNK is
        // a multiple of every cluster size) and let all-zero clusters be skipped.
        while off < size {
            let n = (CHUNK as u64).min(size - off);
            extents.push(Extent {
                off,
                len: n,
                data: true,
            });
            off += n;
        }
    }
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
        let data = st.data && !st.zero;
        // Split data into CHUNK-sized requests so several run in parallel.
        let step = if data { CHUNK as u64 } else { len };
        let mut o = off;
        while o < off + len {
            let n = step.min(off + len - o);
            if data || !target_is_zero {
                extents.push(Extent {
                    off: o,
                    len: n,
                    data,
                });
            }
            o += n;
        }
        off += len;
    }
    let job = Rc::new(Job {
        extents,
        next: Cell::new(0),
        done: Cell::new(0),
        size,
        progress,
        target_is_zero,
        compress,
        error: RefCell::new(None),
    });
    job.done
        .set(size - job.extents.iter().map(|e| e.len).sum::<u64>());
    job.show();
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| spawn_local(copy_worker(src.clone(), dst.clone(), job.clone())))
        .collect();
    for w in workers {
        w.await;
    }
    if let Some(e) = job.error.borrow_mut().take() {
        return Err(e);
    }
    dst.flush()
        .await
        .map_err(|e| Error::Msg(format!("error while flushing: {e}")))?;
    if progress {
        println!("    (100.00/100%)");
    }
    Ok(())
}

/// State shared by the copy workers.
struct Job {
    extents: Vec<Extent>,
    next: Cell<usize>,
    done: Cell<u64>,
    size: u64,
    progress: bool,
    target_is_zero: bool,
    /// The target, for `-c`.
    compress: Option<Arc<oxemu_qcow2::Qcow2>>,
    error: RefCell<Option<Error>>,
}

impl Job {
    fn show(&self) {
        if self.progress {
            let pct = if self.size == 0 {
                100.0
            } else {
                self.done.get() as f64 * 100.0 / self.size as f64
            };
            print!("    ({pct:.2}/100%)\r");
            let _ = std::io::stdout().flush();
        }
    }
}

async fn copy_worker(src: Arc<dyn BlockDriver>, dst: Arc<dyn BlockDriver>, job: Rc<Job>) {
    let mut buf = AlignedBuf::new(CHUNK);
    loop {
        let i = job.next.get();
        if i >= job.extents.len() || job.error.borrow().is_some() {
            return;
        }
        job.next.set(i + 1);
        let e = job.extents[i];
        let r = match &job.compress {
            Some(q) => copy_compressed(&*src, q, e, &mut buf, job.target_is_zero).await,
            None => copy_extent(&*src, &*dst, e, &mut buf, job.target_is_zero).await,
        };
        if let Err(err) = r {
            job.error.borrow_mut().get_or_insert(err);
            return;
        }
        job.done.set(job.done.get() + e.len);
        job.show();
    }
}

async fn copy_extent(
    src: &dyn BlockDriver,
    dst: &dyn BlockDriver,
    e: Extent,
    buf: &mut [u8],
    target_is_zero: bool,
) -> Result<(), Error> {
    let o = e.off;
    if !e.data {
        return dst
            .write_zeroes(o, e.len, Default::default())
            .await
            .map_err(|err| Error::Msg(format!("error while writing at byte {o}: {err}")));
    }
    let n = e.len as usize;
    src.read_at(o, &mut buf[..n])
        .await
        .map_err(|err| Error::Msg(format!("error while reading at byte {o}: {err}")))?;
    if target_is_zero && is_zero_buf(&buf[..n]) {
        return Ok(());
    }
    dst.write_at(o, &buf[..n])
        .await
        .map_err(|err| Error::Msg(format!("error while writing at byte {o}: {err}")))
}

/// Copies a cluster-aligned extent into compressed clusters of `q`.
async fn copy_compressed(
    src: &dyn BlockDriver,
    q: &oxemu_qcow2::Qcow2,
    e: Extent,
    buf: &mut [u8],
    target_is_zero: bool,
) -> Result<(), Error> {
    let o = e.off;
    let n = e.len as usize;
    src.read_at(o, &mut buf[..n])
        .await
        .map_err(|err| Error::Msg(format!("error while reading at byte {o}: {err}")))?;
    let cs = q.cluster_size() as usize;
    for (k, piece) in buf[..n].chunks(cs).enumerate() {
        if target_is_zero && is_zero_buf(piece) {
            continue;
        }
        let at = o + (k * cs) as u64;
        q.write_compressed(at, piece).await.map_err(|err| {
            Error::Msg(format!(
                "error while compressing sector {}: {err}",
                at / 512
            ))
        })?;
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
            no_backing: false,
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
