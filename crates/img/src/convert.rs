//! `oxemu-img convert` and `oxemu-img resize` for the raw format.
//!
//! convert walks the source's block status, skips ranges that read as zeroes (the
//! freshly created target is sparse, so they are already zero) and copies the rest in
//! 2 MiB chunks, 8 requests in flight (`-m`). As in qemu-img, reads run in parallel
//! but writes go one at a time in offset order unless `-W` is given, and zero runs
//! of `-S` bytes (4 KiB, at least a target cluster) inside the data are not written.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use futures::channel::oneshot;
use oxemu_aio::{run_blocking, spawn_local};
use oxemu_block::buffer::is_zero as is_zero_buf;
use oxemu_block::{AlignedBuf, BlockDriver, BlockDriverExt, FileDriver};

use crate::image::{self, OpenOpts};
use crate::map::event_loop;
use crate::progress::Progress;
use crate::Error;
use oxemu_opts::getopt::{opt, parse, Opt};

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
    opt(Some('m'), None, true),
    opt(Some('W'), None, false),
    opt(Some('S'), None, true),
    opt(Some('B'), None, true),
    opt(Some('F'), None, true),
    opt(None, Some("target-is-zero"), false),
    opt(Some('l'), None, true),
    opt(Some('s'), None, true),
];

const CHUNK: usize = 2 << 20;

/// Runs `convert [-f fmt] [-O fmt] [-o opts] [-B backing -F backing_fmt] [-c] [-p]
/// [-q] [-n] [--target-is-zero] [-U] [-W] [-m num] [-S size] [-t cache]
/// [-T src_cache] src dst`.
pub fn run_convert(argv: &[String]) -> Result<(), Error> {
    let p = parse(argv, CONVERT_SPEC)?;
    let ostrs: Vec<&str> = p
        .opts
        .iter()
        .filter(|(k, _)| k == "o")
        .map(|(_, v)| v.as_str())
        .collect();
    if oxemu_opts::wants_help(&ostrs) {
        return crate::opts::print_create_help(p.get("O").unwrap_or("raw"), p.args.len() >= 2);
    }
    let [src, dst] = p.args.as_slice() else {
        return Err(Error::Usage(
            "Expecting one source and one destination file name".into(),
        ));
    };
    let out_fmt = p.get("O").unwrap_or("raw");
    if out_fmt != "raw" && out_fmt != "qcow2" {
        return Err(Error::Msg(format!("Unknown file format '{out_fmt}'")));
    }
    // `-B`/`-F` and `-o backing_file=`/`-o backing_fmt=` are the same options.
    let opt_value = |key: &str| {
        p.opts
            .iter()
            .filter(|(k, _)| k == "o")
            .flat_map(|(_, v)| oxemu_opts::keyval::split_elements(v))
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v)
            .next_back()
    };
    let backing = opt_value("backing_file").or(p.get("B").map(str::to_string));
    let backing_fmt = opt_value("backing_fmt").or(p.get("F").map(str::to_string));
    if let Some(b) = backing {
        if out_fmt != "qcow2" {
            return Err(Error::Msg(format!(
                "Backing file not supported for file format '{out_fmt}'"
            )));
        }
        if backing_fmt.is_none() {
            return Err(Error::Msg(
                "Use of backing file requires explicit backing format".into(),
            ));
        }
        if p.has("n") {
            return Err(Error::Msg(format!(
                "Specifying backing image makes no sense when not creating an output image (backing '{b}')"
            )));
        }
    }
    if p.has("target-is-zero") && !p.has("n") {
        return Err(Error::Msg(
            "--target-is-zero requires use of -n flag".into(),
        ));
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
            no_share: true,
        },
    )?;
    // -l snapshot.id=..,snapshot.name=.. or -l/-s ID_OR_NAME: copy an internal
    // snapshot instead of the active state.
    crate::snapshot::load_tmp(&s, src, p.get("l"), p.get("s"))?;
    let size = s.node.size();
    if !p.has("n") {
        crate::blkdebug::refuse_create(dst, false)?;
        if out_fmt == "qcow2" {
            crate::create_qcow2::run(
                dst,
                Some(size),
                &create_opts,
                p.get("B"),
                p.get("F"),
                true,
                true,
            )?;
        } else if !crate::filename::create_on_nbd(dst, size)? {
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
            no_share: false,
        },
    )?;
    if d.node.size() < size {
        return Err(Error::Msg(format!(
            "Could not convert: target '{dst}' is smaller than the source"
        )));
    }
    let coroutines = match p.get("m") {
        None => 8,
        Some(v) => match v.parse::<usize>() {
            Ok(n @ 1..=16) => n,
            _ => return Err(Error::Msg(
                "Invalid number of coroutines. Allowed number of coroutines is between 1 and 16"
                    .into(),
            )),
        },
    };
    let sparse = match p.get("S") {
        None => 4096,
        Some(v) => match crate::create::image_size(v) {
            Ok(n) if n % 512 == 0 && n <= (CHUNK as u64) => n,
            _ => {
                return Err(Error::Msg(format!(
                    "Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to {}. Select 0 to disable sparse detection (fully allocates output).",
                    CHUNK
                )))
            }
        },
    };
    // -c: every non-zero cluster is written compressed (zlib or zstd, as the target's
    // compression_type says).
    let target = d.qcow2.as_ref().and_then(|i| i.qcow2.clone());
    let compress =
        match p.has("c") {
            false => None,
            true => Some(target.clone().ok_or_else(|| {
                Error::Msg("Compression not supported for this file format".into())
            })?),
        };
    // Zero detection on a qcow2 target works on whole clusters, which is what can be
    // left unallocated.
    let sparse = match (&target, sparse) {
        (_, 0) => 0,
        (Some(q), s) => s.max(q.cluster_size()),
        (None, s) => s,
    };
    let lp = event_loop()?;
    // A target with a backing file (-B, or -o backing_file, or an existing one with
    // -n) gets only what the source's top layer allocates, zeroes written as zeroes.
    let target_has_backing = match &target {
        Some(q) => lp.block_on(q.header()).backing_file.is_some(),
        None => false,
    };
    let opts = CopyOpts {
        coroutines,
        out_of_order: p.has("W"),
        sparse,
        target_has_backing,
        target_is_zero: (!p.has("n") || p.has("target-is-zero")) && !target_has_backing,
        progress: p.has("p") && !p.has("q"),
        compress,
    };
    lp.block_on(copy(s.node.clone(), d.node.clone(), size, opts))
}

/// One range of the source to copy: data (read and write) or zeroes.
#[derive(Clone, Copy)]
struct Extent {
    off: u64,
    len: u64,
    data: bool,
}

/// How the copy runs (`-m`, `-W`, `-S`, `-c`, `-n`).
struct CopyOpts {
    /// Copy requests in flight (`-m`, default 8).
    coroutines: usize,
    /// Writes may complete out of order (`-W`); otherwise each write waits for the
    /// one before it, as in qemu-img.
    out_of_order: bool,
    /// Bytes of zeroes that are skipped rather than written (`-S`, 0: write all);
    /// rounded up to the target's cluster size.
    sparse: u64,
    /// The target is known to read as zeroes (a fresh image without a backing file,
    /// or `--target-is-zero`).
    target_is_zero: bool,
    /// The target has a backing file: ranges the source's top layer does not
    /// allocate are left to it.
    target_has_backing: bool,
    /// Show progress (`-p` without `-q`).
    progress: bool,
    /// The target, for `-c`.
    compress: Option<Arc<oxemu_qcow2::Qcow2>>,
}

async fn copy(
    src: Arc<dyn BlockDriver>,
    dst: Arc<dyn BlockDriver>,
    size: u64,
    o: CopyOpts,
) -> Result<(), Error> {
    let mut extents = Vec::new();
    let mut off = 0u64;
    if o.compress.is_some() {
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
        if o.target_has_backing && st.depth != 1 {
            off += len;
            continue;
        }
        // -S 0 fully allocates the target: zero ranges are copied as data too.
        let data = (st.data && !st.zero) || o.sparse == 0;
        // Split data into CHUNK-aligned requests so several run in parallel.
        let mut e = off;
        while e < off + len {
            let n = if data {
                (CHUNK as u64 - e % CHUNK as u64).min(off + len - e)
            } else {
                off + len - e
            };
            if data || !o.target_is_zero {
                extents.push(Extent {
                    off: e,
                    len: n,
                    data,
                });
            }
            e += n;
        }
        off += len;
    }
    // As qemu-img, progress counts the data to copy, and moves when a worker takes
    // an extent.
    let to_copy: u64 = extents.iter().filter(|e| e.data).map(|e| e.len).sum();
    let mut progress = Progress::new(o.progress, to_copy);
    progress.set(0);
    let job = Rc::new(Job {
        extents,
        next: Cell::new(0),
        done: Cell::new(0),
        progress: RefCell::new(progress),
        turn: Turn {
            ordered: !o.out_of_order,
            next: Cell::new(0),
            waiters: RefCell::new(HashMap::new()),
        },
        error: RefCell::new(None),
    });
    let o = Rc::new(o);
    let workers: Vec<_> = (0..o.coroutines)
        .map(|_| {
            spawn_local(copy_worker(
                src.clone(),
                dst.clone(),
                job.clone(),
                o.clone(),
            ))
        })
        .collect();
    for w in workers {
        w.await;
    }
    if let Some(e) = job.error.borrow_mut().take() {
        return Err(e);
    }
    if let Some(q) = &o.compress {
        q.pad_file_end()
            .await
            .map_err(|e| Error::Msg(format!("error while padding the target: {e}")))?;
    }
    dst.close()
        .await
        .map_err(|e| Error::Msg(format!("error while flushing: {e}")))?;
    job.progress.borrow_mut().finish();
    Ok(())
}

/// State shared by the copy workers.
struct Job {
    extents: Vec<Extent>,
    next: Cell<usize>,
    done: Cell<u64>,
    progress: RefCell<Progress>,
    turn: Turn,
    error: RefCell<Option<Error>>,
}

/// Hands out write turns in extent order (unless writes may go out of order).
struct Turn {
    ordered: bool,
    /// The extent whose write may go now.
    next: Cell<usize>,
    waiters: RefCell<HashMap<usize, oneshot::Sender<()>>>,
}

impl Turn {
    /// Waits until extent `i` may write.
    async fn wait(&self, i: usize) {
        if !self.ordered || self.next.get() >= i {
            return;
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().insert(i, tx);
        let _ = rx.await;
    }

    /// Extent `i` (whose turn it was) is finished: let the next one write.
    fn done(&self, i: usize) {
        if !self.ordered {
            return;
        }
        self.next.set(i + 1);
        if let Some(tx) = self.waiters.borrow_mut().remove(&(i + 1)) {
            let _ = tx.send(());
        }
    }
}

async fn copy_worker(
    src: Arc<dyn BlockDriver>,
    dst: Arc<dyn BlockDriver>,
    job: Rc<Job>,
    o: Rc<CopyOpts>,
) {
    let mut buf = AlignedBuf::new(CHUNK);
    loop {
        let i = job.next.get();
        if i >= job.extents.len() || job.error.borrow().is_some() {
            return;
        }
        job.next.set(i + 1);
        let e = job.extents[i];
        if e.data {
            job.done.set(job.done.get() + e.len);
            job.progress.borrow_mut().set(job.done.get());
        }
        let r = match &o.compress {
            Some(q) => copy_compressed(&*src, q, e, &mut buf, &o, &job.turn, i).await,
            None => copy_extent(&*src, &*dst, e, &mut buf, &o, &job.turn, i).await,
        };
        // Every extent takes its turn, even a failed one, so that no worker waits
        // forever for a write that will not come.
        job.turn.wait(i).await;
        job.turn.done(i);
        if let Err(err) = r {
            job.error.borrow_mut().get_or_insert(err);
            return;
        }
    }
}

async fn copy_extent(
    src: &dyn BlockDriver,
    dst: &dyn BlockDriver,
    e: Extent,
    buf: &mut [u8],
    o: &CopyOpts,
    turn: &Turn,
    i: usize,
) -> Result<(), Error> {
    let at = e.off;
    let werr = |off: u64, err: std::io::Error| {
        Error::Msg(format!("error while writing at byte {off}: {err}"))
    };
    if !e.data {
        turn.wait(i).await;
        return dst
            .write_zeroes(at, e.len, Default::default())
            .await
            .map_err(|err| werr(at, err));
    }
    let n = e.len as usize;
    src.read_at(at, &mut buf[..n])
        .await
        .map_err(|err| Error::Msg(format!("error while reading at byte {at}: {err}")))?;
    turn.wait(i).await;
    if o.sparse == 0 {
        return dst
            .write_at(at, &buf[..n])
            .await
            .map_err(|err| werr(at, err));
    }
    // Write the non-zero runs. Zero pieces of `sparse` bytes (aligned to it on the
    // target) are left alone when the target already reads as zeroes, and written as
    // zeroes otherwise.
    let mut pos = 0;
    for (s, l) in data_runs(at, &buf[..n], o.sparse)
        .into_iter()
        .chain([(n, 0)])
    {
        if s > pos && !o.target_is_zero {
            let z = at + pos as u64;
            dst.write_zeroes(z, (s - pos) as u64, Default::default())
                .await
                .map_err(|err| werr(z, err))?;
        }
        if l > 0 {
            dst.write_at(at + s as u64, &buf[s..s + l])
                .await
                .map_err(|err| werr(at + s as u64, err))?;
        }
        pos = s + l;
    }
    Ok(())
}

/// The runs of `buf` (which starts at image offset `at`) that must be written: the
/// buffer is cut at multiples of `unit` in the image, and pieces that are all zeroes
/// are left out. Returns `(start, len)` pairs relative to `buf`.
fn data_runs(at: u64, buf: &[u8], unit: u64) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut s = 0usize;
    while s < buf.len() {
        let l = ((unit - (at + s as u64) % unit) as usize).min(buf.len() - s);
        if !is_zero_buf(&buf[s..s + l]) {
            match runs.last_mut() {
                Some((rs, rl)) if *rs + *rl == s => *rl += l,
                _ => runs.push((s, l)),
            }
        }
        s += l;
    }
    runs
}

/// Copies a cluster-aligned extent into compressed clusters of `q`. The clusters are
/// compressed on the CPU worker pool while other extents are read and written; only
/// the writes wait for their turn.
async fn copy_compressed(
    src: &dyn BlockDriver,
    q: &oxemu_qcow2::Qcow2,
    e: Extent,
    buf: &mut [u8],
    o: &CopyOpts,
    turn: &Turn,
    i: usize,
) -> Result<(), Error> {
    let at = e.off;
    let n = e.len as usize;
    src.read_at(at, &mut buf[..n])
        .await
        .map_err(|err| Error::Msg(format!("error while reading at byte {at}: {err}")))?;
    let cs = q.cluster_size() as usize;
    let c = q.compressor();
    let skip_zero = o.target_is_zero;
    let data = buf[..n].to_vec();
    // Per cluster: None to skip (zeroes on a zero target), else the compressed form
    // (itself None when the cluster does not compress).
    let packed = run_blocking(move || {
        data.chunks(cs)
            .map(|piece| match skip_zero && is_zero_buf(piece) {
                true => Ok(None),
                false => c.compress(piece).map(Some),
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|err| Error::Msg(format!("error while compressing at byte {at}: {err}")))?;
    turn.wait(i).await;
    for (k, (piece, p)) in buf[..n].chunks(cs).zip(packed).enumerate() {
        let c = at + (k * cs) as u64;
        let err = |err: std::io::Error| {
            Error::Msg(format!("error while compressing sector {}: {err}", c / 512))
        };
        let Some(p) = p.map_err(err)? else { continue };
        q.write_compressed_prepared(c, piece, p)
            .await
            .map_err(err)?;
    }
    Ok(())
}
