//! `oxemu-img commit [-f fmt] [-t cache] [-b base] [-d] [-p] [-q] filename`: copies
//! what the image (and, with `-b`, every image between it and `base`) allocates into
//! the base, then (unless `-d` or `-b`) empties the image so that it reads through to
//! its backing file again, as qemu-img does.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use oxemu_block::{AlignedBuf, BlockDriver, BlockDriverExt, ZeroFlags};

use crate::image::{self, Image, OpenOpts};
use crate::progress::Progress;
use crate::Error;
use oxemu_opts::getopt::{opt, parse, Opt};

const SPEC: &[Opt] = &[
    opt(Some('f'), None, true),
    opt(Some('b'), None, true),
    opt(Some('d'), None, false),
    opt(Some('p'), None, false),
    opt(Some('q'), None, false),
    opt(Some('t'), None, true),
];

const CHUNK: usize = 2 << 20;

/// Runs `commit`.
pub fn run(argv: &[String]) -> Result<(), Error> {
    let p = parse(argv, SPEC)?;
    let [file] = p.args.as_slice() else {
        return Err(Error::Usage("Expecting one image file name".into()));
    };
    let cache = image::parse_cache(p.get("t").unwrap_or("writeback"))?;
    let open = |path: &Path, format: Option<&str>, read_only: bool| {
        image::open(
            path,
            &OpenOpts {
                format,
                cache,
                aio: Default::default(),
                read_only,
                force_share: false,
                no_backing: true,
                no_share: false,
            },
        )
    };
    let top = open(Path::new(file), p.get("f"), false)?;
    let no_backing = || Error::Msg("Image does not have a backing file".into());
    // The chain below the top image, each layer opened on its own: (path, format).
    let chain = backing_chain(&top, Path::new(file))?;
    if chain.is_empty() {
        return Err(no_backing());
    }
    let base_at = match p.get("b") {
        None => 0,
        Some(b) => chain
            .iter()
            // As QEMU: a relative name is taken relative to the top image's directory.
            .position(|(path, name, _)| {
                name == b
                    || same_file(
                        path,
                        &oxemu_qcow2::chain::backing_path(Path::new(file.as_str()), b),
                    )
            })
            .ok_or_else(|| {
                Error::Msg(format!(
                    "Did not find '{b}' in the backing chain of '{file}'"
                ))
            })?,
    };
    // -b implies -d, as in qemu-img.
    let drop = p.has("d") || p.has("b");
    let mut layers = vec![top];
    for (path, _, fmt) in &chain[..base_at] {
        layers.push(open(path, fmt.as_deref(), true)?);
    }
    let (base_path, _, base_fmt) = &chain[base_at];
    let base = open(base_path, base_fmt.as_deref(), false)?;
    let lp = crate::map::event_loop()?;
    let mut progress = Progress::new(p.has("p") && !p.has("q"), layers[0].node.size());
    let nodes: Vec<Arc<dyn BlockDriver>> = layers.iter().map(|l| l.node.clone()).collect();
    let base_cluster = base
        .qcow2
        .as_ref()
        .and_then(|c| c.qcow2.as_ref())
        .map_or(512, |q| q.cluster_size());
    lp.block_on(copy_allocated(
        &nodes,
        &*base.node,
        base_cluster,
        &mut progress,
    ))?;
    if !drop {
        if let Some(q) = layers[0].qcow2.as_ref().and_then(|c| c.qcow2.clone()) {
            lp.block_on(q.make_empty())
                .map_err(|e| Error::Msg(format!("Could not empty {file}: {e}")))?;
        }
    }
    lp.block_on(layers[0].node.close())
        .map_err(|e| Error::Msg(format!("Could not close {file}: {e}")))?;
    progress.finish();
    if !p.has("q") {
        println!("Image committed.");
    }
    Ok(())
}

/// The images below `top`, nearest first: (path, name as the overlay's header gives
/// it, format from the header's backing format extension).
fn backing_chain(
    top: &Image,
    top_path: &Path,
) -> Result<Vec<(PathBuf, String, Option<String>)>, Error> {
    let lp = crate::map::event_loop()?;
    let mut out = Vec::new();
    let mut q = top.qcow2.as_ref().and_then(|c| c.qcow2.clone());
    let mut overlay = top_path.to_path_buf();
    while let Some(cur) = q {
        let h = lp.block_on(cur.header());
        let Some(name) = h.backing_file.clone() else {
            break;
        };
        let path = oxemu_qcow2::chain::backing_path(&overlay, &name);
        let fmt = h.backing_format();
        out.push((path.clone(), name, fmt.clone()));
        if out.len() > 256 {
            return Err(Error::Msg(
                "Backing chain is too long (more than 256 images)".into(),
            ));
        }
        // Look one level further down without keeping the image open.
        let next = image::open(
            &path,
            &OpenOpts {
                format: fmt.as_deref(),
                cache: Default::default(),
                aio: Default::default(),
                read_only: true,
                force_share: true,
                no_backing: true,
                no_share: false,
            },
        )?;
        q = next.qcow2.as_ref().and_then(|c| c.qcow2.clone());
        overlay = path;
    }
    Ok(out)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Copies into `base` every range that one of `layers` (top first, each opened without
/// its backing file) allocates, taking the topmost layer's contents. Ranges that read
/// as zeroes and cover whole clusters of the base become zero writes that may unmap,
/// as QEMU's commit job does; the rest is copied as data.
async fn copy_allocated(
    layers: &[Arc<dyn BlockDriver>],
    base: &dyn BlockDriver,
    base_cluster: u64,
    progress: &mut Progress,
) -> Result<(), Error> {
    let size = layers[0].size();
    if base.size() < size {
        // As QEMU's commit job: a smaller backing image grows first, or what the top
        // image holds past its end would be lost when the top image is emptied.
        base.truncate(size)
            .await
            .map_err(|e| Error::Msg(format!("Could not resize the backing image: {e}")))?;
    }
    let mut buf = AlignedBuf::new(CHUNK);
    let io = |what: &str, off: u64, e: std::io::Error| {
        Error::Msg(format!("error while {what} at offset {off}: {e}"))
    };
    let mut off = 0;
    while off < size {
        // The topmost layer that allocates `off`, and how far that holds.
        let mut len = size - off;
        let mut owner = None;
        for (i, l) in layers.iter().enumerate() {
            if off >= l.size() {
                continue;
            }
            let st = l
                .block_status(off, len.min(l.size() - off))
                .await
                .map_err(|e| io("reading block status", off, e))?;
            len = len.min(st.len.max(1));
            if st.depth == 1 {
                owner = Some((i, st.zero && !st.data));
                break;
            }
        }
        match owner {
            None => {}
            Some((_, true))
                if off % base_cluster == 0 && (len % base_cluster == 0 || off + len == size) =>
            {
                base.write_zeroes(
                    off,
                    len,
                    ZeroFlags {
                        may_unmap: true,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| io("writing zeroes", off, e))?;
            }
            Some((i, _)) => {
                let mut o = off;
                while o < off + len {
                    let n = (off + len - o).min(CHUNK as u64) as usize;
                    layers[i]
                        .read_at(o, &mut buf[..n])
                        .await
                        .map_err(|e| io("reading", o, e))?;
                    base.write_at(o, &buf[..n])
                        .await
                        .map_err(|e| io("writing", o, e))?;
                    o += n as u64;
                }
            }
        }
        off += len;
        progress.set(off);
    }
    base.close().await.map_err(|e| io("flushing", size, e))
}
