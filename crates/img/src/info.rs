//! `oxemu-img info`.

use std::path::Path;

use oxemu_block::size::human_size;
use oxemu_block::BlockDriver;

use crate::args::{opt, parse, Opt};
use crate::image::{self, Cache, OpenOpts};
use crate::Error;

const SPEC: &[Opt] = &[
    opt(Some('f'), None, true),
    opt(None, Some("output"), true),
    opt(Some('U'), Some("force-share"), false),
    opt(None, Some("backing-chain"), false),
];

/// Runs `info [-f fmt] [--output=human|json] [-U] filename`.
pub fn run(argv: &[String]) -> Result<(), Error> {
    let p = parse(argv, SPEC)?;
    let [file] = p.args.as_slice() else {
        return Err(Error::Usage("Expecting one image file name".into()));
    };
    let json = output_is_json(p.get("output"))?;
    let img = image::open(
        Path::new(file),
        &OpenOpts {
            format: p.get("f"),
            cache: Cache::default(),
            aio: Default::default(),
            read_only: true,
            force_share: p.has("force-share"),
        },
    )?;
    let size = img.node.size();
    let actual = img.file.allocated_size().unwrap_or(0);
    if json {
        let v = serde_json::json!({
            "virtual-size": size,
            "filename": file,
            "format": img.format,
            "actual-size": actual,
            "dirty-flag": false,
        });
        println!("{}", crate::json_pretty(&v));
    } else {
        println!("image: {file}");
        println!("file format: {}", img.format);
        println!("virtual size: {} ({size} bytes)", human_size(size));
        println!("disk size: {}", human_size(actual));
    }
    Ok(())
}

/// Parses `--output`: false for human (the default), true for json.
pub fn output_is_json(o: Option<&str>) -> Result<bool, Error> {
    match o.unwrap_or("human") {
        "human" => Ok(false),
        "json" => Ok(true),
        o => Err(Error::Msg(format!(
            "--output must be used with human or json as argument. (got '{o}')"
        ))),
    }
}
