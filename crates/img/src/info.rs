//! `oxemu-img info`.

use std::path::Path;

use oxemu_block::BlockDriver;
use oxemu_opts::size::human_size;

use crate::image::{self, Cache, OpenOpts};
use crate::Error;
use oxemu_opts::getopt::{opt, parse, Opt};

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
            // As qemu-img: the backing chain is opened only to be shown.
            no_backing: !p.has("backing-chain"),
            no_share: false,
        },
    )?;
    if img.format == "luks" {
        return crate::encryption::info(&crate::encryption::shown_name(file), &img, json);
    }
    // A blkdebug node has no disk size, but answers qemu-img's image-info query
    // through its child (dirty-flag), which an NBD node does not.
    let filtered = crate::blkdebug::parse(file).ok().flatten().is_some();
    let mut entries = vec![describe(
        img.name(file),
        &img.node,
        img.qcow2.as_ref(),
        img.file.as_deref(),
        filtered,
    )?];
    if p.has("backing-chain") {
        let mut cur = img.qcow2.as_ref().and_then(|c| c.backing());
        while let Some(b) = cur {
            let name = b.path.display().to_string();
            let f = oxemu_block::FileDriver::open(&oxemu_block::FileOptions {
                read_only: true,
                locking: oxemu_block::file::Locking::Off,
                ..oxemu_block::FileOptions::new(&b.path)
            })
            .map_err(|e| Error::Msg(format!("Could not open '{name}': {e}")))?;
            entries.push(describe(&name, &b.driver, Some(b), Some(&f), false)?);
            cur = b.backing();
        }
    }
    if json {
        let v = if p.has("backing-chain") {
            serde_json::Value::Array(entries)
        } else {
            entries.remove(0)
        };
        println!("{}", crate::json_pretty(&v));
    } else {
        let blocks: Vec<String> = entries.iter().map(human).collect();
        print!("{}", blocks.join("\n"));
    }
    Ok(())
}

/// qemu-img's `ImageInfo` of one image, as JSON.
fn describe(
    name: &str,
    node: &std::sync::Arc<dyn BlockDriver>,
    chain: Option<&oxemu_qcow2::Image>,
    file: Option<&oxemu_block::FileDriver>,
    filtered: bool,
) -> Result<serde_json::Value, Error> {
    use serde_json::{Map, Value};
    let size = node.size();
    // Without a format layer, an NBD node reports its own driver.
    let bare = if node.info().driver == "nbd" {
        "nbd"
    } else {
        "raw"
    };
    let format = chain.map_or(bare, |c| c.format);
    // NBD nodes have no disk size to report.
    let actual = file.map(|f| f.allocated_size().unwrap_or(0));
    // Keys in the order qemu-img prints them.
    let mut o = Map::new();
    let Some(q) = chain.and_then(|c| c.qcow2.as_ref()) else {
        o.insert("virtual-size".into(), size.into());
        o.insert("filename".into(), name.into());
        o.insert("format".into(), format.into());
        if let Some(actual) = actual {
            o.insert("actual-size".into(), actual.into());
        }
        if actual.is_some() || filtered {
            o.insert("dirty-flag".into(), false.into());
        }
        return Ok(Value::Object(o));
    };
    let lp = crate::map::event_loop()?;
    let (h, fs, snaps) = lp.block_on(async {
        (
            q.header().await,
            q.format_specific().await,
            q.snapshot_list().await,
        )
    });
    let snaps = snaps.map_err(|e| Error::Msg(format!("Could not read snapshots: {e}")))?;
    let bitmaps = lp
        .block_on(q.bitmaps())
        .map_err(|e| Error::Msg(format!("Could not open '{name}': {e}")))?;
    if !snaps.is_empty() {
        let list = snaps.iter().map(crate::snapshot::to_json).collect();
        o.insert("snapshots".into(), Value::Array(list));
    }
    if let Some(f) = h.backing_format().filter(|_| h.backing_file.is_some()) {
        o.insert("backing-filename-format".into(), f.into());
    }
    o.insert("virtual-size".into(), size.into());
    o.insert("filename".into(), name.into());
    o.insert("cluster-size".into(), h.cluster_size().into());
    o.insert("format".into(), format.into());
    if let Some(actual) = actual {
        o.insert("actual-size".into(), actual.into());
    }
    let mut data = Map::new();
    data.insert("compat".into(), fs.compat.into());
    data.insert("compression-type".into(), fs.compression_type.into());
    if fs.compat != "0.10" {
        data.insert("lazy-refcounts".into(), fs.lazy_refcounts.into());
        if !bitmaps.is_empty() {
            let list = bitmaps
                .iter()
                .map(|b| {
                    let mut e = Map::new();
                    e.insert("flags".into(), b.flag_names().into());
                    e.insert("name".into(), b.name.clone().into());
                    e.insert("granularity".into(), b.granularity().into());
                    Value::Object(e)
                })
                .collect();
            data.insert("bitmaps".into(), Value::Array(list));
        }
    }
    data.insert("refcount-bits".into(), fs.refcount_bits.into());
    if fs.compat != "0.10" {
        data.insert("corrupt".into(), fs.corrupt.into());
        data.insert("extended-l2".into(), fs.extended_l2.into());
    }
    let mut specific = Map::new();
    specific.insert("type".into(), "qcow2".into());
    specific.insert("data".into(), Value::Object(data));
    o.insert("format-specific".into(), Value::Object(specific));
    if let Some(b) = &h.backing_file {
        let full = chain
            .and_then(|c| c.backing())
            .map(|b| b.path.display().to_string())
            .unwrap_or_else(|| {
                oxemu_qcow2::chain::backing_path(Path::new(name), b)
                    .display()
                    .to_string()
            });
        o.insert("full-backing-filename".into(), full.into());
        o.insert("backing-filename".into(), b.clone().into());
    }
    o.insert(
        "dirty-flag".into(),
        (h.incompatible_features & 1 != 0).into(),
    );
    Ok(Value::Object(o))
}

/// The "bitmaps:" block of `Format specific information`, indented as qemu-img's.
fn human_bitmaps(list: &[serde_json::Value]) -> String {
    let mut s = String::from("    bitmaps:\n");
    for (i, b) in list.iter().enumerate() {
        s += &format!("        [{i}]:\n            flags:\n");
        for (j, f) in b["flags"].as_array().into_iter().flatten().enumerate() {
            s += &format!("                [{j}]: {}\n", f.as_str().unwrap_or(""));
        }
        s += &format!("            name: {}\n", b["name"].as_str().unwrap_or(""));
        s += &format!("            granularity: {}\n", b["granularity"]);
    }
    s
}

/// qemu-img 7.2's human-readable block for one image.
fn human(v: &serde_json::Value) -> String {
    let mut s = String::new();
    let u = |k: &str| v[k].as_u64().unwrap_or(0);
    s += &format!("image: {}\n", v["filename"].as_str().unwrap_or(""));
    s += &format!("file format: {}\n", v["format"].as_str().unwrap_or(""));
    let size = u("virtual-size");
    s += &format!("virtual size: {} ({size} bytes)\n", human_size(size));
    match v["actual-size"].as_u64() {
        Some(a) => s += &format!("disk size: {}\n", human_size(a)),
        None => s += "disk size: unavailable\n",
    }
    if let Some(c) = v["cluster-size"].as_u64() {
        s += &format!("cluster_size: {c}\n");
    }
    if let Some(b) = v["backing-filename"].as_str() {
        let full = v["full-backing-filename"].as_str().unwrap_or(b);
        if full == b {
            s += &format!("backing file: {b}\n");
        } else {
            s += &format!("backing file: {b} (actual path: {full})\n");
        }
        if let Some(f) = v["backing-filename-format"].as_str() {
            s += &format!("backing file format: {f}\n");
        }
    }
    if v["dirty-flag"] == true {
        s += "cleanly shut down: no\n";
    }
    if let Some(list) = v["snapshots"].as_array() {
        let snaps: Vec<_> = list.iter().map(crate::snapshot::from_json).collect();
        s += &crate::snapshot::dump(&snaps);
    }
    if let Some(d) = v["format-specific"]["data"].as_object() {
        s += "Format specific information:\n";
        let names = [
            ("compat", "compat"),
            ("compression-type", "compression type"),
            ("lazy-refcounts", "lazy refcounts"),
            ("refcount-bits", "refcount bits"),
            ("corrupt", "corrupt"),
            ("extended-l2", "extended l2"),
        ];
        for (k, label) in names {
            if let Some(x) = d.get(k) {
                let x = x.as_str().map_or_else(|| x.to_string(), str::to_string);
                s += &format!("    {label}: {x}\n");
            }
            if k == "lazy-refcounts" {
                if let Some(list) = d.get("bitmaps").and_then(|b| b.as_array()) {
                    s += &human_bitmaps(list);
                }
            }
        }
    }
    s
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
