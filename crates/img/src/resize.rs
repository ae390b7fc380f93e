//! `oxemu-img resize [-f fmt] [-q] [--preallocation=mode] [--shrink] filename [+|-]size`.

use std::path::Path;

use oxemu_block::BlockDriverExt;
use oxemu_qcow2::Preallocation;

use crate::image::{self, Cache, OpenOpts};
use crate::map::event_loop;
use crate::Error;
use oxemu_opts::getopt::{opt, parse, Opt};

const SPEC: &[Opt] = &[
    opt(Some('f'), None, true),
    opt(Some('q'), None, false),
    opt(None, Some("shrink"), false),
    opt(None, Some("preallocation"), true),
];

const BAD_SIZE: &str = "Invalid image size specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.";

/// Runs `resize`.
pub fn run(argv: &[String]) -> Result<(), Error> {
    // "-1M" looks like an option: take the last argument as the size first.
    let Some((size_arg, rest)) = argv.split_last() else {
        return Err(Error::Usage("Expecting image file name and size".into()));
    };
    let p = parse(rest, SPEC)?;
    let [file] = p.args.as_slice() else {
        return Err(Error::Usage("Expecting image file name and size".into()));
    };
    let prealloc = match p.get("preallocation") {
        None => Preallocation::Off,
        Some(v) => v
            .parse::<Preallocation>()
            .map_err(|_| Error::Msg(format!("Invalid preallocation mode '{v}'")))?,
    };
    let (relative, digits) = match size_arg.as_bytes().first() {
        Some(b'+') => (1, &size_arg[1..]),
        Some(b'-') => (-1, &size_arg[1..]),
        _ => (0, size_arg.as_str()),
    };
    let n = crate::create::image_size(digits).map_err(|_| Error::Msg(BAD_SIZE.into()))?;
    let img = image::open(
        Path::new(file),
        &OpenOpts {
            format: p.get("f"),
            cache: Cache::default(),
            aio: Default::default(),
            read_only: false,
            force_share: false,
            no_backing: false,
            no_share: false,
        },
    )?;
    let cur = img.node.size();
    let new = match relative {
        1 => cur.checked_add(n).filter(|&v| v <= i64::MAX as u64),
        -1 => cur.checked_sub(n),
        _ => Some(n),
    };
    let new = match new {
        Some(v) if v > 0 => v,
        _ => return Err(Error::Msg("New image size must be positive".into())),
    };
    if new <= cur && prealloc != Preallocation::Off {
        return Err(Error::Msg(
            "Preallocation can only be used for growing images".into(),
        ));
    }
    if new < cur && !p.has("shrink") {
        return Err(Error::Warned(
            "Use the --shrink option to perform a shrink operation.".into(),
            "Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.".into(),
        ));
    }
    let lp = event_loop()?;
    lp.block_on(async {
        match &img.qcow2 {
            Some(chain) if chain.qcow2.is_some() => {
                let q = chain.qcow2.as_ref().expect("checked");
                q.resize_with(new, prealloc).await?;
            }
            _ => resize_raw(&img, cur, new, prealloc).await?,
        }
        img.node.close().await
    })
    .map_err(|e| Error::Msg(e.to_string()))?;
    if !p.has("q") {
        println!("Image resized.");
    }
    Ok(())
}

/// A raw image: the file is truncated, then the new area is reserved (`falloc`) or
/// written with zeroes (`full`), as QEMU's file driver does.
async fn resize_raw(
    img: &image::Image,
    cur: u64,
    new: u64,
    prealloc: Preallocation,
) -> std::io::Result<()> {
    let unsupported = |m: &str| {
        std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("Unsupported preallocation mode: {m}"),
        )
    };
    match prealloc {
        Preallocation::Off => img.node.truncate(new).await,
        Preallocation::Metadata => Err(unsupported("metadata")),
        Preallocation::Falloc | Preallocation::Full => {
            img.node.truncate(new).await?;
            if prealloc == Preallocation::Full {
                let z = vec![0u8; 1 << 20];
                let mut off = cur;
                while off < new {
                    let n = (new - off).min(z.len() as u64) as usize;
                    img.node.write_at(off, &z[..n]).await?;
                    off += n as u64;
                }
                Ok(())
            } else {
                let Some(file) = &img.file else {
                    return Err(unsupported("falloc"));
                };
                let fd = file.raw_fd();
                // SAFETY: posix_fallocate on a descriptor the open image owns.
                let r = unsafe {
                    libc::posix_fallocate(fd, cur as libc::off_t, (new - cur) as libc::off_t)
                };
                if r != 0 {
                    return Err(std::io::Error::new(
                        std::io::Error::from_raw_os_error(r).kind(),
                        format!(
                            "Could not preallocate new data: {}",
                            std::io::Error::from_raw_os_error(r)
                        ),
                    ));
                }
                Ok(())
            }
        }
    }
}
