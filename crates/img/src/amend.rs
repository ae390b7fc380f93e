//! `oxemu-img amend`: change qcow2 image options in place.

use std::path::Path;

use oxemu_qcow2::AmendOptions;

use crate::args::{opt, parse, Opt};
use crate::image::{self, OpenOpts};
use crate::map::event_loop;
use crate::Error;

const SPEC: &[Opt] = &[
    opt(Some('f'), None, true),
    opt(Some('o'), None, true),
    opt(Some('q'), None, false),
    opt(Some('p'), None, false),
    opt(Some('t'), None, true),
    opt(None, Some("force"), false),
];

fn on_off(k: &str, v: &str) -> Result<bool, Error> {
    match v {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(Error::Msg(format!("Parameter '{k}' expects 'on' or 'off'"))),
    }
}

/// Runs `amend [-f fmt] [-q] -o options filename`.
pub fn run(argv: &[String]) -> Result<(), Error> {
    let p = parse(argv, SPEC)?;
    let [file] = p.args.as_slice() else {
        return Err(Error::Usage("Expecting one image file name".into()));
    };
    let mut o = AmendOptions::default();
    let mut any = false;
    for kv in p
        .opts
        .iter()
        .filter(|(k, _)| k == "o")
        .flat_map(|(_, v)| v.split(','))
    {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Error::Msg(format!("Invalid option '{kv}'")))?;
        any = true;
        match k {
            "compat" => {
                o.compat_v3 = Some(match v {
                    "1.1" | "v3" => true,
                    "0.10" | "v2" => false,
                    _ => return Err(Error::Msg(format!("Invalid compatibility level: '{v}'"))),
                })
            }
            "lazy_refcounts" => o.lazy_refcounts = Some(on_off(k, v)?),
            _ => {
                return Err(Error::Msg(format!(
                    "Changing option '{k}' is not supported by oxemu-img amend"
                )))
            }
        }
    }
    if !any {
        return Err(Error::Usage("Must specify options (-o)".into()));
    }
    let cache = image::parse_cache(p.get("t").unwrap_or("writeback"))?;
    let img = image::open(
        Path::new(file),
        &OpenOpts {
            format: p.get("f"),
            cache,
            aio: Default::default(),
            read_only: false,
            force_share: false,
            no_backing: true,
            no_share: false,
        },
    )?;
    let q = img
        .qcow2
        .as_ref()
        .and_then(|i| i.qcow2.clone())
        .ok_or_else(|| {
            Error::Msg(format!(
                "Format driver '{}' does not support option amendment",
                img.format
            ))
        })?;
    let lp = event_loop()?;
    lp.block_on(async {
        q.amend(o).await?;
        oxemu_block::BlockDriver::close(&*q).await
    })
    .map_err(|e| Error::Msg(format!("Error while amending options: {e}")))
}
