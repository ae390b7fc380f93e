//! `oxemu-img rebase [-u] [-b backing] [-F fmt] [-q] filename`.
//!
//! Safe mode (default) copies into the image every range that the image does not
//! allocate itself and whose content differs between the old and the new backing chain,
//! then rewrites the backing file name; `-u` only rewrites the name.

use std::path::Path;
use std::sync::Arc;

use oxemu_block::{AlignedBuf, BlockDriver, BlockDriverExt};

use crate::image::{self, Cache, OpenOpts};
use crate::Error;
use oxemu_opts::getopt::{opt, parse, Opt};

const SPEC: &[Opt] = &[
    opt(Some('f'), None, true),
    opt(Some('F'), None, true),
    opt(Some('b'), None, true),
    opt(Some('u'), None, false),
    opt(Some('p'), None, false),
    opt(Some('q'), None, false),
    opt(Some('U'), Some("force-share"), false),
    opt(Some('t'), None, true),
    opt(Some('T'), None, true),
];

/// Granularity of the content comparison.
/// As qemu-img rebase's buffer.
const STEP: usize = 2 << 20;

/// Runs `rebase`.
pub fn run(argv: &[String]) -> Result<(), Error> {
    let p = parse(argv, SPEC)?;
    let [file] = p.args.as_slice() else {
        return Err(Error::Usage("Expecting one image file name".into()));
    };
    let Some(new_backing) = p.get("b") else {
        return Err(Error::Msg("Must specify backing file (-b)".into()));
    };
    let new_name = (!new_backing.is_empty()).then_some(new_backing);
    let new_fmt = p.get("F");
    if let (Some(name), None) = (new_name, new_fmt) {
        // qemu-img 7.2 refuses this in both modes (after copying, in safe mode; the
        // copy changes nothing visible, so refusing first is equivalent).
        return Err(Error::Msg(format!(
            "Could not change the backing file to '{name}': backing format must be specified"
        )));
    }
    let unsafe_mode = p.has("u");
    let img = image::open(
        Path::new(file),
        &OpenOpts {
            format: p.get("f"),
            cache: Cache::default(),
            aio: Default::default(),
            read_only: false,
            force_share: false,
            no_backing: unsafe_mode,
            no_share: false,
        },
    )?;
    let Some(q) = img.qcow2.as_ref().and_then(|c| c.qcow2.clone()) else {
        return Err(Error::Msg(format!(
            "Could not change the backing file of '{file}': Operation not supported"
        )));
    };
    let lp = crate::map::event_loop()?;
    if !unsafe_mode {
        let new: Option<Arc<dyn BlockDriver>> = match new_name {
            Some(n) => {
                let path = oxemu_qcow2::chain::backing_path(Path::new(file), n);
                let b = crate::map::open_ro(&path.display().to_string(), new_fmt, true).map_err(
                    |e| Error::Msg(format!("Could not open new backing file '{n}': {e}")),
                )?;
                Some(b.node)
            }
            None => None,
        };
        let old_size = q.backing().map_or(0, |b| b.driver.size());
        lp.block_on(copy_differences(&*img.node, old_size, new.as_deref()))?;
    }
    lp.block_on(q.set_backing_file(new_name, new_fmt.filter(|_| new_name.is_some())))
        .map_err(|e| {
            Error::Msg(format!(
                "Could not change the backing file to '{new_backing}': {e}"
            ))
        })?;
    lp.block_on(img.node.close())
        .map_err(|e| Error::Msg(format!("Could not flush '{file}': {e}")))?;
    Ok(())
}

async fn copy_differences(
    top: &dyn BlockDriver,
    old_size: u64,
    new: Option<&dyn BlockDriver>,
) -> Result<(), Error> {
    let size = top.size();
    let mut old_buf = AlignedBuf::new(STEP);
    let mut new_buf = AlignedBuf::new(STEP);
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
        if st.depth != 1 {
            let mut o = off;
            while o < off + len {
                let n = (off + len - o).min(STEP as u64) as usize;
                top.read_at(o, &mut old_buf[..n])
                    .await
                    .map_err(|e| io("reading", o, e))?;
                match new {
                    Some(b) if o < b.size() => {
                        let m = n.min((b.size() - o) as usize);
                        b.read_at(o, &mut new_buf[..m])
                            .await
                            .map_err(|e| io("reading", o, e))?;
                        new_buf[m..n].fill(0);
                    }
                    _ => new_buf[..n].fill(0),
                }
                // As qemu-img: only the sectors that differ are written, and those
                // past the end of the old backing file become zero writes.
                let mut i = 0;
                while i < n {
                    let differ = |j: usize| {
                        let e = (j + 512).min(n);
                        old_buf[j..e] != new_buf[j..e]
                    };
                    let d = differ(i);
                    let mut j = i;
                    while j < n && differ(j) == d {
                        j = (j + 512).min(n);
                    }
                    if d {
                        let at = o + i as u64;
                        if o >= old_size {
                            top.write_zeroes(at, (j - i) as u64, Default::default())
                                .await
                                .map_err(|e| io("writing zeroes", at, e))?;
                        } else {
                            top.write_at(at, &old_buf[i..j])
                                .await
                                .map_err(|e| io("writing", at, e))?;
                        }
                    }
                    i = j;
                }
                o += n as u64;
            }
        }
        off += len;
    }
    Ok(())
}
