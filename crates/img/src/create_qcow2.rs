//! `oxemu-img create -f qcow2`: qemu-img's `-o` options, `-b`/`-F`, and its messages.

use std::path::Path;

use oxemu_qcow2::{CompressionType, Preallocation, Qcow2CreateOptions};

use crate::Error;

fn on_off(file: &str, k: &str, v: &str) -> Result<bool, Error> {
    match v {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(Error::Msg(format!(
            "{file}: Parameter '{k}' expects 'on' or 'off'"
        ))),
    }
}

/// A size option's value, with QemuOpts' message after the file name.
fn opt_size(file: &str, k: &str, v: &str) -> Result<u64, Error> {
    crate::opts::parse_size_opt(k, v).map_err(|e| Error::Msg(format!("{file}: {e}")))
}

/// Applies one `-o key=value` to `c`.
fn apply(
    file: &str,
    c: &mut Qcow2CreateOptions,
    size: &mut Option<u64>,
    hints: &mut crate::file_hints::FileHints,
    kv: &str,
) -> Result<(), Error> {
    // A bare `noX` means `X=off`, a bare `X` means `X=on`, as in QemuOpts.
    let (k, v) = match kv.split_once('=') {
        Some(kv) => kv,
        None => match kv.strip_prefix("no") {
            Some(k) => (k, "off"),
            None => (kv, "on"),
        },
    };
    if hints.apply_opt(file, k, v)? {
        return Ok(());
    }
    let bad = |what: &str| Error::Msg(format!("{file}: {what}"));
    match k {
        "size" => *size = Some(opt_size(file, k, v)?),
        "cluster_size" => c.cluster_size = opt_size(file, k, v)?,
        "compat" => {
            c.compat_v3 = match v {
                "1.1" | "v3" => true,
                "0.10" | "v2" => false,
                _ => return Err(bad(&format!("Invalid parameter '{v}'"))),
            }
        }
        "lazy_refcounts" => c.lazy_refcounts = on_off(file, k, v)?,
        "extended_l2" => c.extended_l2 = on_off(file, k, v)?,
        "compression_type" => {
            c.compression_type = match v {
                "zlib" => CompressionType::Zlib,
                "zstd" => CompressionType::Zstd,
                _ => {
                    return Err(bad(&format!(
                        "Parameter 'compression-type' does not accept value '{v}'"
                    )))
                }
            }
        }
        "preallocation" => {
            c.preallocation = match v {
                "off" => Preallocation::Off,
                "metadata" => Preallocation::Metadata,
                "falloc" => Preallocation::Falloc,
                "full" => Preallocation::Full,
                _ => {
                    return Err(bad(&format!(
                        "Parameter 'preallocation' does not accept value '{v}'"
                    )))
                }
            }
        }
        "refcount_bits" => {
            c.refcount_bits = v.parse().map_err(|_| {
                bad(&format!(
                    "Parameter 'refcount_bits' expects a number, got '{v}'"
                ))
            })?
        }
        "backing_file" => c.backing_file = Some(v.to_string()),
        "backing_fmt" => c.backing_fmt = Some(v.to_string()),
        _ => return Err(bad(&format!("Invalid parameter '{k}'"))),
    }
    Ok(())
}

/// Creates a qcow2 image; `opts` are the `-o` strings in order.
pub fn run(
    file: &str,
    size: Option<u64>,
    opts: &[&str],
    backing: Option<&str>,
    backing_fmt: Option<&str>,
    unsafe_backing: bool,
    quiet: bool,
) -> Result<(), Error> {
    crate::filename::refuse_create_on_nbd(file, "qcow2")?;
    crate::blkdebug::refuse_create(file, true)?;
    let mut c = Qcow2CreateOptions::default();
    let mut size = size;
    c.backing_file = backing.map(str::to_string);
    c.backing_fmt = backing_fmt.map(str::to_string);
    // Options QEMU shows in "Formatting" only when given, with the value as given.
    let mut given = std::collections::HashMap::new();
    let mut hints = crate::file_hints::FileHints::default();
    for kv in opts
        .iter()
        .flat_map(|o| oxemu_opts::keyval::split_elements(o))
    {
        apply(file, &mut c, &mut size, &mut hints, &kv)?;
        if let Some((k @ ("preallocation" | "compat"), v)) = kv.split_once('=') {
            given.insert(k.to_string(), v.to_string());
        }
    }
    let cs = c.cluster_size;
    if !cs.is_power_of_two() || !(512..=2 << 20).contains(&cs) {
        return Err(Error::Msg(format!(
            "{file}: Cluster size must be a power of two between 512 and 2048k"
        )));
    }
    if !c.refcount_bits.is_power_of_two() || c.refcount_bits > 64 {
        return Err(Error::Msg(format!(
            "{file}: Refcount width must be a power of two and may not exceed 64 bits"
        )));
    }
    // As qemu-img: the backing file is opened (unless -u) for its format and size.
    if let Some(b) = &c.backing_file {
        if unsafe_backing {
            if c.backing_fmt.is_none() {
                return Err(Error::Msg(format!(
                    "{file}: Backing file specified without backing format"
                )));
            }
        } else {
            let (found, bsize) = open_backing(file, b, c.backing_fmt.as_deref())?;
            if c.backing_fmt.is_none() {
                return Err(Error::Msg(format!(
                    "{file}: Backing file specified without backing format\nDetected format of {found}."
                )));
            }
            size.get_or_insert(bsize);
        }
    }
    let Some(size) = size else {
        return Err(Error::Msg("Image creation needs a size parameter".into()));
    };
    // As QEMU's qcow2 driver: the virtual size is rounded up to whole sectors, and
    // "Formatting" shows the size as given.
    c.size = size
        .checked_next_multiple_of(512)
        .ok_or_else(|| Error::Msg("Image size must be less than 8 EiB!".into()))?;
    if !quiet {
        let mut line = format!(
            "Formatting '{file}', fmt=qcow2 cluster_size={cs} extended_l2={}",
            if c.extended_l2 { "on" } else { "off" },
        );
        if let Some(p) = given.get("preallocation") {
            line += &format!(" preallocation={p}");
        }
        line += &format!(
            " compression_type={} size={size}",
            match c.compression_type {
                CompressionType::Zlib => "zlib",
                CompressionType::Zstd => "zstd",
            }
        );
        if let Some(b) = &c.backing_file {
            line += &format!(" backing_file={}", oxemu_opts::keyval::escape(b));
        }
        if let Some(f) = &c.backing_fmt {
            line += &format!(" backing_fmt={}", oxemu_opts::keyval::escape(f));
        }
        if let Some(v) = given.get("compat") {
            line += &format!(" compat={v}");
        }
        line += &format!(
            " lazy_refcounts={} refcount_bits={}",
            if c.lazy_refcounts { "on" } else { "off" },
            c.refcount_bits
        );
        println!("{line}{}", hints.formatting());
    }
    hints.validate(file)?;
    hints.set_on(Path::new(file));
    let lp = crate::map::event_loop()?;
    lp.block_on(oxemu_qcow2::create(Path::new(file), &c))
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EFBIG) => Error::Msg(format!(
                "{file}: The image size is too large for file format 'qcow2' (try using a larger cluster size)"
            )),
            _ => Error::Msg(format!("{file}: {e}")),
        })
}

/// Opens the backing file of `create -b` as qemu-img does (format given or probed,
/// shared with everyone): its format and virtual size.
fn open_backing(
    file: &str,
    backing: &str,
    fmt: Option<&str>,
) -> Result<(&'static str, u64), Error> {
    let path = oxemu_qcow2::chain::backing_path(Path::new(file), backing);
    let img = crate::map::open_ro(&path.display().to_string(), fmt, true)
        .map_err(|e| Error::Msg(format!("{file}: {e}\nCould not open backing image.")))?;
    Ok((img.format, oxemu_block::BlockDriver::size(&*img.node)))
}
