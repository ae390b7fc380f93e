//! `oxemu-img dd`: copies an image, block by block, into a new image, with dd(1)'s
//! `bs=`, `count=`, `skip=`, `if=` and `of=` operands as qemu-img 7.2 reads them.

use std::path::Path;

use oxemu_block::file::FileDriver;
use oxemu_block::BlockDriverExt;
use oxemu_opts::size::{parse_size, SizeError};

use crate::image::{self, Cache, OpenOpts};
use crate::Error;

/// Image formats qemu-img creates that oxemu-img does not.
const QEMU_FORMATS: &[&str] = &[
    "vmdk",
    "vdi",
    "vpc",
    "vhdx",
    "qed",
    "qcow",
    "parallels",
    "luks",
];

/// The operands and options of one `dd` run.
#[derive(Debug, Default)]
struct Dd {
    fmt: Option<String>,
    out_fmt: Option<String>,
    force_share: bool,
    bs: Option<u64>,
    count: Option<u64>,
    skip: Option<u64>,
    input: Option<String>,
    output: Option<String>,
}

/// qemu-img's `cvtnum_full`: a size between `min` and `max`, with its messages.
fn cvtnum(name: &str, v: &str, min: u64, max: u64) -> Result<u64, Error> {
    match parse_size(v) {
        Err(SizeError::Invalid(_)) => Err(Error::Msg(format!(
            "Invalid {name} specified. You may use k, M, G, T, P or E suffixes for\n{}: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.",
            crate::prog_name()
        ))),
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(Error::Msg(format!(
            "Invalid {name} specified. Must be between {min} and {max}."
        ))),
    }
}

fn parse_argv(argv: &[String]) -> Result<Dd, Error> {
    let mut dd = Dd::default();
    let mut operands = Vec::new();
    let mut i = 0;
    while i < argv.len() {
        let a = argv[i].as_str();
        i += 1;
        let mut value = |name: &str| -> Result<String, Error> {
            i += 1;
            argv.get(i - 1)
                .cloned()
                .ok_or_else(|| Error::Usage(format!("missing argument for option '{name}'")))
        };
        match a {
            "--" => {
                operands.extend(argv[i..].iter().cloned());
                break;
            }
            "-h" | "--help" => {
                print!("{}\nSupported formats: qcow2 raw\n", crate::HELP);
                std::process::exit(0);
            }
            "-U" | "--force-share" => dd.force_share = true,
            "--image-opts" => {
                return Err(Error::Msg(
                    "--image-opts is not supported by oxemu-img dd".into(),
                ))
            }
            "--object" => {
                return Err(Error::Msg(
                    "--object is not supported by oxemu-img dd".into(),
                ))
            }
            "-f" => dd.fmt = Some(value(a)?),
            "-O" => dd.out_fmt = Some(value(a)?),
            _ if a.starts_with("-f") && a.len() > 2 => dd.fmt = Some(a[2..].into()),
            _ if a.starts_with("-O") && a.len() > 2 => dd.out_fmt = Some(a[2..].into()),
            _ if a.starts_with("--object=") => {
                return Err(Error::Msg(
                    "--object is not supported by oxemu-img dd".into(),
                ))
            }
            _ if a.starts_with('-') && a.len() > 1 => {
                return Err(Error::Usage(format!("unrecognized option '{a}'")))
            }
            _ => operands.push(a.to_string()),
        }
    }
    for op in operands {
        let Some((k, v)) = op.split_once('=') else {
            return Err(Error::Msg(format!("unrecognized operand {op}")));
        };
        match k {
            "bs" => dd.bs = Some(cvtnum("bs", v, 1, i32::MAX as u64)?),
            "count" => dd.count = Some(cvtnum("count", v, 0, i64::MAX as u64)?),
            "skip" => dd.skip = Some(cvtnum("skip", v, 0, i64::MAX as u64)?),
            "if" => dd.input = Some(v.into()),
            "of" => dd.output = Some(v.into()),
            _ => return Err(Error::Msg(format!("unrecognized operand {k}"))),
        }
    }
    Ok(dd)
}

/// Runs `dd [-U] [-f fmt] [-O output_fmt] [bs=..] [count=..] [skip=..] if=.. of=..`.
pub fn run(argv: &[String]) -> Result<(), Error> {
    let dd = parse_argv(argv)?;
    let (Some(input), Some(output)) = (&dd.input, &dd.output) else {
        return Err(Error::Msg(
            "Must specify both input and output files".into(),
        ));
    };
    let src = crate::map::open_ro(input, dd.fmt.as_deref(), dd.force_share)?;
    let out_fmt = dd.out_fmt.as_deref().unwrap_or("raw");
    if out_fmt != "raw" && out_fmt != "qcow2" {
        return Err(Error::Msg(if QEMU_FORMATS.contains(&out_fmt) {
            format!("Creating '{out_fmt}' images is not supported by oxemu-img")
        } else {
            "Unknown file format".into()
        }));
    }
    let bs = dd.bs.unwrap_or(512);
    let mut size = src.node.size();
    // As qemu-img: count limits the input size, and skip is then taken off it.
    if let Some(c) = dd.count {
        if c.checked_mul(bs).is_some_and(|n| n < size) {
            size = c * bs;
        }
    }
    let skip_bytes = dd
        .skip
        .map(|s| s.checked_mul(bs).filter(|&n| n <= i64::MAX as u64));
    let beyond =
        matches!(skip_bytes, Some(None)) || matches!(skip_bytes, Some(Some(n)) if n > size);
    let start = match skip_bytes {
        Some(Some(n)) if !beyond => n,
        _ if beyond => size,
        _ => 0,
    };
    let out_size = size - start;
    let created = if out_fmt == "qcow2" {
        let o = oxemu_qcow2::Qcow2CreateOptions {
            size: out_size.next_multiple_of(512),
            ..Default::default()
        };
        crate::map::event_loop()?.block_on(oxemu_qcow2::create(Path::new(output), &o))
    } else {
        // The file protocol rounds the size up to whole sectors.
        FileDriver::create(Path::new(output), out_size.next_multiple_of(512), false)
    };
    created.map_err(|e| Error::Msg(format!("{output}: error while creating output image: {e}")))?;
    let dst = image::open(
        Path::new(output),
        &OpenOpts {
            format: Some(out_fmt),
            cache: Cache::default(),
            aio: Default::default(),
            read_only: false,
            force_share: false,
            no_backing: false,
            no_share: false,
        },
    )?;
    if beyond {
        crate::report(&format!("{input}: cannot skip to specified offset"));
    }
    let lp = crate::map::event_loop()?;
    lp.block_on(async {
        let mut buf = oxemu_block::AlignedBuf::new(bs as usize);
        let (mut pos, mut out) = (start, 0u64);
        while pos < size {
            let n = bs.min(size - pos) as usize;
            src.node.read_at(pos, &mut buf[..n]).await.map_err(|e| {
                Error::Msg(format!("error while reading from input image file: {e}"))
            })?;
            pos += n as u64;
            dst.node.write_at(out, &buf[..n]).await.map_err(|e| {
                Error::Msg(format!("error while writing to output image file: {e}"))
            })?;
            out += n as u64;
        }
        dst.node
            .close()
            .await
            .map_err(|e| Error::Msg(format!("error while writing to output image file: {e}")))
    })
}
