//! `oxemu-img bitmap (--merge SOURCE | --add | --remove | --clear | --enable |
//! --disable)... [-b source_file [-F source_fmt]] [-g granularity] [-f fmt] filename
//! bitmap`: persistent dirty bitmaps of a qcow2 image, as qemu-img 7.2. The actions
//! run in order on the bitmaps in memory; the result is stored once at the end.

use std::path::Path;
use std::sync::Arc;

use oxemu_block::file::{FileDriver, FileOptions};
use oxemu_block::BlockDriver;
use oxemu_qcow2::bitmaps::FLAG_AUTO;
use oxemu_qcow2::{BitmapData, Qcow2, Qcow2OpenOptions};

use crate::map::event_loop;
use crate::Error;
use oxemu_opts::getopt::{opt, parse, Opt};

const SPEC: &[Opt] = &[
    opt(Some('b'), None, true),
    opt(Some('f'), None, true),
    opt(Some('F'), None, true),
    opt(Some('g'), None, true),
    opt(None, Some("add"), false),
    opt(None, Some("remove"), false),
    opt(None, Some("clear"), false),
    opt(None, Some("enable"), false),
    opt(None, Some("disable"), false),
    opt(None, Some("merge"), true),
];

/// The name QEMU's messages give the image's node (iotests filter it as NODE_NAME).
const NODE: &str = "#block100";

/// Runs `bitmap`.
pub fn run(argv: &[String]) -> Result<(), Error> {
    let p = parse(argv, SPEC)?;
    let actions: Vec<(&str, &str)> = p
        .opts
        .iter()
        .filter(|(k, _)| {
            ["add", "remove", "clear", "enable", "disable", "merge"].contains(&k.as_str())
        })
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if actions.is_empty() {
        return Err(Error::Msg(
            "Need at least one of --add, --remove, --clear, --enable, --disable, or --merge".into(),
        ));
    }
    let add = actions.iter().any(|(k, _)| *k == "add");
    let merge = actions.iter().any(|(k, _)| *k == "merge");
    let granularity = match p.get("g") {
        Some(g) => Some(crate::create::image_size(g).map_err(|_| {
            Error::Msg(
                "Invalid granularity specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes."
                    .into(),
            )
        })?),
        None => None,
    };
    if granularity.is_some() && !add {
        return Err(Error::Msg("granularity only supported with --add".into()));
    }
    if p.get("F").is_some() && p.get("b").is_none() {
        return Err(Error::Msg("-F only supported with -b".into()));
    }
    if p.get("b").is_some() && !merge {
        return Err(Error::Msg(
            "Merge bitmap source file only supported with --merge".into(),
        ));
    }
    let [file, name] = p.args.as_slice() else {
        return Err(Error::Msg("Expecting filename and bitmap name".into()));
    };
    let lp = event_loop()?;
    let fail =
        |op: &str, m: String| Error::Msg(format!("Operation {op} on bitmap {name} failed: {m}"));
    let Some(q) = open(&lp, file, p.get("f"), false)? else {
        // A format without persistent bitmaps: nothing to find, nowhere to add.
        let (op, _) = actions[0];
        return Err(if op == "add" {
            fail(
                op,
                format!("Can't store persistent bitmaps to {NODE}: Operation not supported"),
            )
        } else {
            fail(op, format!("Dirty bitmap '{name}' not found"))
        });
    };
    let src = match p.get("b") {
        Some(b) => open(&lp, b, p.get("F"), true)?,
        None => None,
    };
    let mut list = lp
        .block_on(q.load_bitmaps())
        .map_err(|e| Error::Msg(format!("Could not open '{file}': {e}")))?;
    let size = q.size();
    let find = |list: &[BitmapData], n: &str| list.iter().position(|b| b.info.name == n);
    for (op, arg) in actions {
        match op {
            "add" => {
                if find(&list, name).is_some() {
                    return Err(fail(op, format!("Bitmap already exists: {name}")));
                }
                let g = granularity.unwrap_or_else(|| q.cluster_size().clamp(4096, 65536));
                if !g.is_power_of_two() || !(512..=1 << 31).contains(&g) {
                    return Err(fail(
                        op,
                        "Granularity must be power of 2 and at least 512".into(),
                    ));
                }
                if name.len() > 1023 {
                    return Err(fail(op, format!("Can't make bitmap '{name}' persistent in '{NODE}': Name length exceeds maximum (1023 characters)")));
                }
                if lp.block_on(q.header()).version < 3 {
                    return Err(fail(op, format!("Can't make bitmap '{name}' persistent in '{NODE}': Cannot store dirty bitmaps in qcow2 v2 files")));
                }
                list.push(BitmapData::empty(
                    name,
                    FLAG_AUTO,
                    g.trailing_zeros() as u8,
                    size,
                ));
            }
            "remove" | "clear" | "enable" | "disable" | "merge" => {
                let Some(i) = find(&list, name) else {
                    return Err(fail(op, format!("Dirty bitmap '{name}' not found")));
                };
                match op {
                    "remove" => {
                        list.remove(i);
                    }
                    "clear" => list[i].bits.fill(0),
                    "enable" => list[i].info.flags |= FLAG_AUTO,
                    "disable" => list[i].info.flags &= !FLAG_AUTO,
                    _ => {
                        let from = match &src {
                            Some(s) => lp
                                .block_on(s.load_bitmaps())
                                .map_err(|e| fail(op, e.to_string()))?,
                            None => list.clone(),
                        };
                        let Some(j) = find(&from, arg) else {
                            return Err(fail(op, format!("Dirty bitmap '{arg}' not found")));
                        };
                        merge_into(&mut list[i], &from[j]);
                    }
                }
            }
            _ => unreachable!("only actions are collected"),
        }
    }
    lp.block_on(async {
        q.store_bitmaps(&list).await?;
        q.close().await
    })
    .map_err(|e| Error::Msg(format!("Could not store the bitmaps of '{file}': {e}")))?;
    Ok(())
}

/// Sets in `dst` every bit covering guest bytes that a set bit of `src` covers, at
/// whatever granularity each has (QEMU merges bitmaps of different granularities).
fn merge_into(dst: &mut BitmapData, src: &BitmapData) {
    let (gd, gs) = (dst.info.granularity(), src.info.granularity());
    let dbits = dst.bits.len() as u64 * 8;
    for (k, &byte) in src.bits.iter().enumerate() {
        if byte == 0 {
            continue;
        }
        for b in 0..8 {
            if byte & (1 << b) == 0 {
                continue;
            }
            let i = k as u64 * 8 + b;
            let (lo, hi) = (i * gs, (i + 1) * gs);
            let mut j = lo / gd;
            while j * gd < hi && j < dbits {
                dst.bits[(j / 8) as usize] |= 1 << (j % 8);
                j += 1;
            }
        }
    }
}

/// Opens the qcow2 image itself (no backing file), keeping its bitmaps.
fn open(
    lp: &oxemu_block::EventLoop,
    file: &str,
    fmt: Option<&str>,
    read_only: bool,
) -> Result<Option<Arc<Qcow2>>, Error> {
    use oxemu_block::lock::perm;
    let path = Path::new(file);
    let format = match fmt {
        Some(f) => f,
        None => crate::image::probe_format(path)?,
    };
    let could_not = |m: String| Error::Msg(format!("Could not open '{file}': {m}"));
    let f = FileDriver::open(&FileOptions {
        read_only,
        shared_perms: Some(perm::ALL & !(perm::WRITE | perm::RESIZE)),
        ..FileOptions::new(path)
    })
    .map_err(|e| could_not(e.to_string()))?;
    if format != "qcow2" {
        return Ok(None);
    }
    lp.block_on(Qcow2::open(
        Arc::new(f),
        Qcow2OpenOptions {
            read_only,
            keep_bitmaps: true,
            ..Default::default()
        },
    ))
    .map(Some)
    .map_err(|e| could_not(e.to_string()))
}
