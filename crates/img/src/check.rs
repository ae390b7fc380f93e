//! `oxemu-img check [-r leaks|all] [--output=human|json]`, with qemu-img's report and
//! exit codes (0 clean, 1 check failed, 2 corruptions, 3 leaks, 63 not supported).

use std::path::Path;

use oxemu_qcow2::{CheckReport, Repair};

use crate::args::{opt, parse, Opt};
use crate::image::{self, Cache, OpenOpts};
use crate::Error;

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
    let img = image::open(
        Path::new(file),
        &OpenOpts {
            format: p.get("f"),
            cache: Cache::default(),
            aio: Default::default(),
            read_only: repair == Repair::None,
            force_share: p.has("force-share"),
            no_backing: true,
            no_share: false,
        },
    )?;
    let q = img.qcow2.as_ref().and_then(|c| c.qcow2.clone());
    let (Some(q), "qcow2") = (q, img.format) else {
        return Err(Error::Exit(
            63,
            "This image format does not support checks".into(),
        ));
    };
    let lp = crate::map::event_loop()?;
    let fail = |e: std::io::Error| Error::Exit(1, format!("Check failed: {e}"));
    let mut r = lp.block_on(q.check(repair)).map_err(fail)?;
    let quiet = p.has("q");
    for m in &r.messages {
        if !quiet {
            eprintln!("{m}");
        }
    }
    let fixed = r.corruptions_fixed + r.leaks_fixed > 0;
    if fixed && !json && !quiet {
        println!(
            "The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    {} corruptions\n\nDouble checking the fixed image now...",
            r.leaks_fixed, r.corruptions_fixed
        );
    }
    if fixed {
        let (lf, cf) = (r.leaks_fixed, r.corruptions_fixed);
        r = lp.block_on(q.check(Repair::None)).map_err(fail)?;
        r.leaks_fixed = lf;
        r.corruptions_fixed = cf;
    }
    if json {
        println!("{}", crate::json_pretty(&to_json(file, &r)));
    } else if !quiet {
        print!("{}", human(&r));
    }
    let code = if r.check_errors > 0 {
        1
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

fn to_json(file: &str, r: &CheckReport) -> serde_json::Value {
    let mut v = serde_json::json!({
        "image-end-offset": r.image_end_offset,
        "total-clusters": r.total_clusters,
        "check-errors": r.check_errors,
        "allocated-clusters": r.allocated_clusters,
        "filename": file,
        "format": "qcow2",
    });
    let o = v.as_object_mut().expect("built as an object");
    for (k, n) in [
        ("fragmented-clusters", r.fragmented_clusters),
        ("compressed-clusters", r.compressed_clusters),
        ("leaks", r.leaks),
        ("corruptions", r.corruptions),
        ("leaks-fixed", r.leaks_fixed),
        ("corruptions-fixed", r.corruptions_fixed),
    ] {
        if n > 0 {
            o.insert(k.into(), n.into());
        }
    }
    v
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
