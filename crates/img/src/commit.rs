//! `oxemu-img commit [-f fmt] [-d] [-p] [-q] filename`: copies what the image
//! allocates into its backing file, then (unless `-d`) empties the image so that it
//! reads through to the backing file again, as qemu-img does.

use std::path::Path;

use oxemu_block::{AlignedBuf, BlockDriver, BlockDriverExt};

use crate::args::{opt, parse, Opt};
use crate::image::{self, Cache, OpenOpts};
use crate::progress::Progress;
use crate::Error;

const SPEC: &[Opt] = &[
    opt(Some('f'), None, true),
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
    let open = |path: &str, format: Option<&str>, no_backing: bool| {
        image::open(
            Path::new(path),
            &OpenOpts {
                format,
                cache: Cache::default(),
                aio: Default::default(),
                read_only: false,
                force_share: false,
                no_backing,
                no_share: false,
            },
        )
    };
    let top = open(file, p.get("f"), true)?;
    let Some(q) = top.qcow2.as_ref().and_then(|c| c.qcow2.clone()) else {
        return Err(Error::Msg(format!(
            "Image '{file}' does not have a backing file"
        )));
    };
    let lp = crate::map::event_loop()?;
    let h = lp.block_on(q.header());
    let Some(name) = h.backing_file.clone() else {
        return Err(Error::Msg(format!(
            "Image '{file}' does not have a backing file"
        )));
    };
    let bpath = oxemu_qcow2::chain::backing_path(Path::new(file), &name);
    let base = open(
        &bpath.display().to_string(),
        h.backing_format().as_deref(),
        false,
    )?;
    let mut progress = Progress::new(p.has("p") && !p.has("q"), top.node.size());
    lp.block_on(copy_allocated(&*top.node, &*base.node, &mut progress))?;
    if !p.has("d") {
        lp.block_on(q.make_empty())
            .map_err(|e| Error::Msg(format!("Could not empty {file}: {e}")))?;
    }
    lp.block_on(top.node.close())
        .map_err(|e| Error::Msg(format!("Could not close {file}: {e}")))?;
    progress.finish();
    if !p.has("q") {
        println!("Image committed.");
    }
    Ok(())
}

async fn copy_allocated(
    top: &dyn BlockDriver,
    base: &dyn BlockDriver,
    progress: &mut Progress,
) -> Result<(), Error> {
    let size = top.size();
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
        let st = top
            .block_status(off, size - off)
            .await
            .map_err(|e| io("reading block status", off, e))?;
        let len = st.len.max(1).min(size - off);
        if st.depth == 1 {
            let mut o = off;
            while o < off + len {
                let n = (off + len - o).min(CHUNK as u64) as usize;
                top.read_at(o, &mut buf[..n])
                    .await
                    .map_err(|e| io("reading", o, e))?;
                base.write_at(o, &buf[..n])
                    .await
                    .map_err(|e| io("writing", o, e))?;
                o += n as u64;
            }
        }
        off += len;
        progress.set(off);
    }
    base.close().await.map_err(|e| io("flushing", size, e))
}
