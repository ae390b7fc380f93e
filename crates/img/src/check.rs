//! `oxemu-img check [-r leaks|all] [--output=human|json]`, with qemu-img's report and
//! exit codes (0 clean, 1 check failed, 2 corruptions, 3 leaks, 63 not supported).

use std::path::Path;

use oxemu_qcow2::{CheckReport, Repair};

use crate::image::{self, Cache, OpenOpts};
use crate::Error;
use oxemu_opts::getopt::{opt, parse, Opt};

const SPEC: &[Opt] = &[
    opt(Some('f'), None, true),
    opt(Some('r'), None, true),
    opt(Some('q'), None, false),
    opt(None, Some("output"), true),
    opt(Some('U'), Some("force-share"), false),
];

/// Runs `check`.
pub fn run(argv: &[String]) -> Result<(), Error> {
    let p = parse(argv, SPEC)?;
    let [file] = p.args.as_slice() else {
        return Err(Error::Usage("Expecting one image file name".into()));
    };
    let json = crate::info::output_is_json(p.get("output"))?;
    let repair = match p.get("r") {
        None => Repair::None,
        Some("leaks") => Repair::Leaks,
        Some("all") => Repair::All,
        Some(r) => {
            return Err(Error::Msg(format!(
                "Unknown option value for -r (expecting 'leaks' or 'all'): {r}"
            )))
        }
    };
    let quiet = p.has("q");
    let ro_open = |format| {
        image::open(
            Path::new(file),
            &OpenOpts {
                format,
                cache: Cache::default(),
                aio: Default::default(),
                read_only: true,
                force_share: p.has("force-share"),
                no_backing: true,
                no_share: false,
            },
        )
    };
    let format = match p.get("f") {
        Some(f) => f,
        // An NBD export is probed through the connection.
        None if crate::filename::parse(file)?.is_some()
            || crate::blkdebug::parse(file)?.is_some() =>
        {
            ro_open(None)?.format
        }
        None => image::probe_format(Path::new(file))?,
    };
    if format != "qcow2" {
        // Opened only for qemu-img's errors (missing file, unknown format).
        ro_open(p.get("f"))?;
        return Err(Error::Exit(
            63,
            "This image format does not support checks".into(),
        ));
    }
    let lp = crate::map::event_loop()?;
    let q = open_for_check(&lp, file, repair == Repair::None, p.has("force-share"))?;
    let print = |r: &CheckReport| {
        if !quiet {
            for m in &r.messages {
                // Errors in messages read as strerror, without Rust's " (os error N)".
                eprintln!("{}", crate::strip_os_errors(m));
            }
        }
    };
    // report() drops Rust's " (os error N)" suffix, as for every message.
    let fail = |e: &std::io::Error| Error::Exit(1, format!("Check failed: {e}"));
    let (mut r, res) = lp.block_on(q.check_with_messages(repair));
    print(&r);
    res.map_err(|e| fail(&e))?;
    let fixed = r.corruptions_fixed + r.leaks_fixed > 0;
    if fixed && !json && !quiet {
        println!(
            "The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    {} corruptions\n\nDouble checking the fixed image now...",
            r.leaks_fixed, r.corruptions_fixed
        );
    }
    if fixed {
        let (lf, cf) = (r.leaks_fixed, r.corruptions_fixed);
        let (again, res) = lp.block_on(q.check_with_messages(Repair::None));
        print(&again);
        res.map_err(|e| fail(&e))?;
        r = again;
        r.leaks_fixed = lf;
        r.corruptions_fixed = cf;
    }
    let _ = lp.block_on(oxemu_block::BlockDriver::close(q.as_ref()));
    if json {
        println!("{}", crate::json_pretty(&to_json(file, &r)));
    } else if !quiet {
        print!("{}", human(&r));
    }
    let code = if r.check_errors > 0 {
        return Err(Error::Exit(1, "Check failed".into()));
    } else if r.corruptions > 0 {
        2
    } else if r.leaks > 0 {
        3
    } else {
        0
    };
    if code == 0 {
        Ok(())
    } else {
        Err(Error::Exit(code, String::new()))
    }
}

/// Opens the image the way qemu-img check does (QEMU's `BDRV_O_CHECK`): read-write
/// only to repair, allowed even when the image is marked corrupt, with no repair of a
/// dirty image at open.
fn open_for_check(
    lp: &oxemu_block::EventLoop,
    file: &str,
    read_only: bool,
    force_share: bool,
) -> Result<std::sync::Arc<oxemu_qcow2::Qcow2>, Error> {
    if let Some(spec) = crate::filename::parse(file)? {
        // An NBD export: the qcow2 node sits on the NBD client.
        let img = crate::filename::open_nbd(
            file,
            &spec,
            &OpenOpts {
                format: Some("qcow2"),
                cache: Cache::default(),
                aio: Default::default(),
                read_only,
                force_share,
                no_backing: true,
                no_share: false,
            },
        )?;
        return img
            .qcow2
            .as_ref()
            .and_then(|c| c.qcow2.clone())
            .ok_or_else(|| Error::Exit(63, "This image format does not support checks".into()));
    }
    if let Some(spec) = crate::blkdebug::parse(file)? {
        return crate::blkdebug::open_for_check(lp, file, &spec, read_only, force_share);
    }
    let path = Path::new(file);
    let could_not = |e: std::io::Error| {
        let m = e.to_string();
        if m.starts_with("Could not open") {
            Error::Msg(m)
        } else {
            Error::Msg(format!("Could not open '{file}': {m}"))
        }
    };
    use oxemu_block::lock::perm;
    let f = oxemu_block::FileDriver::open(&oxemu_block::FileOptions {
        read_only,
        force_share,
        // As every qemu-img open of a qcow2 image: its file is not shared for writing.
        shared_perms: Some(perm::ALL & !(perm::WRITE | perm::RESIZE)),
        ..oxemu_block::FileOptions::new(path)
    })
    .map_err(could_not)?;
    lp.block_on(oxemu_qcow2::Qcow2::open_for_check(
        std::sync::Arc::new(f),
        read_only,
    ))
    .map_err(could_not)
}

fn to_json(file: &str, r: &CheckReport) -> serde_json::Value {
    // qemu-img's key order (the order of its QDict), leaving out counters that are 0.
    let mut o = serde_json::Map::new();
    let mut put = |k: &str, n: u64, always: bool| {
        if always || n > 0 {
            o.insert(k.into(), n.into());
        }
    };
    put("image-end-offset", r.image_end_offset, false);
    put("compressed-clusters", r.compressed_clusters, false);
    put("total-clusters", r.total_clusters, false);
    put("corruptions", r.corruptions, false);
    put("corruptions-fixed", r.corruptions_fixed, false);
    put("check-errors", r.check_errors, true);
    put("leaks", r.leaks, false);
    put("leaks-fixed", r.leaks_fixed, false);
    put("allocated-clusters", r.allocated_clusters, false);
    o.insert("filename".into(), file.into());
    o.insert("format".into(), "qcow2".into());
    if r.fragmented_clusters > 0 {
        o.insert("fragmented-clusters".into(), r.fragmented_clusters.into());
    }
    serde_json::Value::Object(o)
}

fn human(r: &CheckReport) -> String {
    let mut s = String::new();
    if r.corruptions == 0 && r.leaks == 0 && r.check_errors == 0 {
        s += "No errors were found on the image.\n";
    }
    if r.corruptions > 0 {
        s += &format!("\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n", r.corruptions);
    }
    if r.leaks > 0 {
        s += &format!("\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n", r.leaks);
    }
    if r.check_errors > 0 {
        s += &format!(
            "\n{} internal errors have occurred during the check.\n",
            r.check_errors
        );
    }
    if r.total_clusters != 0 && r.allocated_clusters != 0 {
        let a = r.allocated_clusters as f64;
        s += &format!(
            "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters\n",
            r.allocated_clusters,
            r.total_clusters,
            a * 100.0 / r.total_clusters as f64,
            r.fragmented_clusters as f64 * 100.0 / a,
            r.compressed_clusters as f64 * 100.0 / a
        );
    }
    if r.image_end_offset > 0 {
        s += &format!("Image end offset: {}\n", r.image_end_offset);
    }
    s
}
