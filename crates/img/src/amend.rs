//! `oxemu-img amend`: change qcow2 image options in place (`compat`, `lazy_refcounts`,
//! `refcount_bits`, `size`; `backing_file`/`backing_fmt` only to their current values,
//! as qemu-img 7.2), with qemu-img's `-o help` and messages.

use std::path::Path;

use oxemu_qcow2::AmendOptions;

use crate::image::{self, OpenOpts};
use crate::map::event_loop;
use crate::opts;
use crate::Error;
use oxemu_opts::getopt::{opt, parse, Opt};

const SPEC: &[Opt] = &[
    opt(Some('f'), None, true),
    opt(Some('o'), None, true),
    opt(Some('q'), None, false),
    opt(Some('p'), None, false),
    opt(Some('t'), None, true),
    opt(None, Some("force"), false),
];

/// Prints `amend -o help` for `fmt`, as qemu-img's `print_amend_option_help`.
fn print_help(fmt: &str) -> Result<(), Error> {
    match fmt {
        "qcow2" => {
            print!(
                "Amend options for 'qcow2':\n{}",
                opts::listing(opts::QCOW2_AMEND)
            );
            Ok(())
        }
        "raw" => Err(Error::Msg(
            "Format driver 'raw' does not support option amendment".into(),
        )),
        f => Err(Error::Msg(format!("Unknown file format '{f}'"))),
    }
}

/// The `-o` strings checked against the amend options; an option only creation
/// knows gets qemu-img's hint.
fn parse_opts(ostrs: &[&str]) -> Result<AmendOptions, Error> {
    let parsed = opts::parse(ostrs, opts::QCOW2_AMEND).map_err(|e| {
        let all = opts::merged(&[opts::QCOW2_AMEND, opts::QCOW2_CREATE, opts::FILE_CREATE]);
        match (e, opts::parse(ostrs, &all)) {
            (Error::Msg(m), Ok(_)) => Error::Msg(format!(
                "{m}\nThis option is only supported for image creation"
            )),
            (e, _) => e,
        }
    })?;
    let get = |k| opts::last(&parsed, k);
    let mut o = AmendOptions::default();
    if let Some(v) = get("compat") {
        o.compat_v3 = Some(match v {
            "1.1" | "v3" => true,
            "0.10" | "v2" => false,
            _ => return Err(Error::Msg(format!("Unknown compatibility level {v}"))),
        });
    }
    if let Some(v) = get("lazy_refcounts") {
        o.lazy_refcounts = Some(opts::parse_bool("lazy_refcounts", v)?);
    }
    if let Some(v) = get("refcount_bits") {
        let n = opts::parse_num("refcount_bits", v)?;
        if n == 0 || n > 64 || !n.is_power_of_two() {
            return Err(Error::Msg(
                "Refcount width must be a power of two and may not exceed 64 bits".into(),
            ));
        }
        o.refcount_bits = Some(n as u32);
    }
    if let Some(v) = get("size") {
        o.size = Some(opts::parse_size_opt("size", v)?);
    }
    if get("backing_file").is_some() || get("backing_fmt").is_some() {
        o.backing = Some((
            get("backing_file").map(str::to_string),
            get("backing_fmt").map(str::to_string),
        ));
    }
    Ok(o)
}

/// Runs `amend [-f fmt] [-q] [-t cache] -o options filename`.
pub fn run(argv: &[String]) -> Result<(), Error> {
    let p = parse(argv, SPEC)?;
    let ostrs: Vec<&str> = p
        .opts
        .iter()
        .filter(|(k, _)| k == "o")
        .map(|(_, v)| v.as_str())
        .collect();
    if ostrs.is_empty() {
        return Err(Error::Usage("Must specify options (-o)".into()));
    }
    let help = oxemu_opts::wants_help(&ostrs);
    if let (Some(f), true) = (p.get("f"), help) {
        return print_help(f);
    }
    let [file] = p.args.as_slice() else {
        return Err(Error::Msg("Expecting one image file name".into()));
    };
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
    if help {
        return print_help(img.format);
    }
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
    let o = parse_opts(&ostrs)?;
    let lp = event_loop()?;
    let r = lp.block_on(async {
        let r = q.amend(o).await;
        let c = oxemu_block::BlockDriver::close(&*q).await;
        r.and(c)
    });
    r.map_err(|e| {
        let m = e.to_string();
        if m == oxemu_qcow2::amend::CANNOT_AMEND_BACKING {
            Error::Msg(format!("{m}\nYou can use 'qemu-img rebase' instead."))
        } else {
            Error::Msg(m)
        }
    })
}
