//! `oxemu-img create`.

use std::path::Path;

use oxemu_block::file::FileDriver;
use oxemu_opts::size::{parse_size, SizeError};

use crate::Error;
use oxemu_opts::getopt::{opt, parse, Opt};

const SPEC: &[Opt] = &[
    opt(Some('f'), None, true),
    opt(Some('o'), None, true),
    opt(Some('q'), None, false),
    opt(Some('u'), None, false),
    opt(Some('F'), None, true),
    opt(Some('b'), None, true),
];

/// Parses an image size like qemu-img create, with its messages.
pub fn image_size(s: &str) -> Result<u64, Error> {
    match parse_size(s) {
        Ok(n) => Ok(n),
        Err(SizeError::TooLarge(_)) => Err(Error::Msg("Image size must be less than 8 EiB!".into())),
        Err(SizeError::Invalid(_)) => Err(Error::Msg(
            "Invalid image size specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes."
                .into(),
        )),
    }
}

/// Runs `create [-q] [-f fmt] [-o options] filename [size]`.
pub fn run(argv: &[String]) -> Result<(), Error> {
    let p = parse(argv, SPEC)?;
    let fmt = p.get("f").unwrap_or("raw");
    let ostrs: Vec<&str> = p
        .opts
        .iter()
        .filter(|(k, _)| k == "o")
        .map(|(_, v)| v.as_str())
        .collect();
    if oxemu_opts::wants_help(&ostrs) {
        return crate::opts::print_create_help(fmt, !p.args.is_empty());
    }
    let (file, size) = match p.args.as_slice() {
        [f] => (f, None),
        [f, s] => (f, Some(s)),
        [] => return Err(Error::Usage("Expecting image file name".into())),
        _ => return Err(Error::Usage(format!("Unexpected argument: {}", p.args[2]))),
    };
    let mut hints = crate::file_hints::FileHints::default();
    let mut prealloc = false;
    let mut prealloc_given = None;
    let mut size = size.map(|s| image_size(s)).transpose()?;
    if fmt == "qcow2" {
        let opts: Vec<&str> = p
            .opts
            .iter()
            .filter(|(k, _)| k == "o")
            .map(|(_, v)| v.as_str())
            .collect();
        return crate::create_qcow2::run(
            file,
            size,
            &opts,
            p.get("b"),
            p.get("F"),
            p.has("u"),
            p.has("q"),
        );
    }
    if fmt == "luks" {
        let opts: Vec<&str> = p
            .opts
            .iter()
            .filter(|(k, _)| k == "o")
            .map(|(_, v)| v.as_str())
            .collect();
        return crate::encryption::create(file, size, &opts, p.has("q"));
    }
    let elems: Vec<String> = ostrs
        .iter()
        .flat_map(|v| oxemu_opts::keyval::split_elements(v))
        .collect();
    for o in elems.iter().map(String::as_str) {
        match o.split_once('=') {
            Some(("size", v)) => {
                size = Some(
                    crate::opts::parse_size_opt("size", v)
                        .map_err(|e| Error::Msg(format!("{file}: {e}")))?,
                )
            }
            Some(("preallocation", v @ "off")) => {
                prealloc = false;
                prealloc_given = Some(v);
            }
            Some(("preallocation", v @ ("falloc" | "full"))) => {
                prealloc = true;
                prealloc_given = Some(v);
            }
            Some(("preallocation", v)) => {
                return Err(Error::Msg(format!(
                    "Invalid parameter 'preallocation': '{v}' (expected off, falloc or full)"
                )))
            }
            Some((k, v)) if hints.apply_opt(file, k, v)? => {}
            None if o.starts_with("no") => {
                if !hints.apply_opt(file, &o[2..], "off")? {
                    return Err(Error::Msg(format!(
                        "{file}: Invalid parameter '{}'",
                        &o[2..]
                    )));
                }
            }
            None if hints.apply_opt(file, o, "on")? => {}
            _ => {
                let k = o.split('=').next().unwrap_or(o);
                let k = if o.contains('=') {
                    k
                } else {
                    k.strip_prefix("no").unwrap_or(k)
                };
                return Err(Error::Msg(format!("{file}: Invalid parameter '{k}'")));
            }
        }
    }
    if fmt != "raw" {
        return Err(Error::Msg(format!(
            "Formatting or formatter not found for format '{fmt}'"
        )));
    }
    if p.get("b").is_some() {
        return Err(Error::Msg(format!(
            "{file}: Backing file not supported for file format 'raw'"
        )));
    }
    if p.get("F").is_some() {
        return Err(Error::Msg(format!(
            "{file}: Backing file format not supported for file format 'raw'"
        )));
    }
    let Some(size) = size else {
        return Err(Error::Msg("Image creation needs a size parameter".into()));
    };
    crate::blkdebug::refuse_create(file, true)?;
    if !p.has("q") {
        let extra = hints.formatting();
        match prealloc_given {
            Some(p) => {
                println!("Formatting '{file}', fmt={fmt} size={size} preallocation={p}{extra}")
            }
            None => println!("Formatting '{file}', fmt={fmt} size={size}{extra}"),
        }
    }
    hints.validate(file)?;
    if crate::filename::create_on_nbd(file, size)? {
        return Ok(());
    }
    hints.set_on(Path::new(file));
    FileDriver::create(Path::new(file), size, prealloc)
        .map_err(|e| Error::Msg(format!("{file}: {e}")))?;
    Ok(())
}
