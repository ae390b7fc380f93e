//! Opening images the way qemu-img does: format given or probed, cache mode and AIO
//! engine from the command line.

use std::path::Path;
use std::sync::Arc;

use oxemu_block::file::{FileDriver, FileOptions};
use oxemu_block::raw::RawFormat;
use oxemu_block::{Aio, BlockDriver};

use crate::Error;

/// qemu-img's `-t` cache modes, as the flags they set.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cache {
    /// O_DIRECT.
    pub direct: bool,
    /// Flushes are dropped (`unsafe`).
    pub no_flush: bool,
    /// Every write is followed by a flush (`writethrough`, `directsync`).
    pub writethrough: bool,
}

/// Parses `none|writeback|writethrough|directsync|unsafe` (plus `off` = none).
pub fn parse_cache(s: &str) -> Result<Cache, Error> {
    Ok(match s {
        "none" | "off" => Cache {
            direct: true,
            ..Default::default()
        },
        "writeback" => Cache::default(),
        "writethrough" => Cache {
            writethrough: true,
            ..Default::default()
        },
        "directsync" => Cache {
            direct: true,
            writethrough: true,
            ..Default::default()
        },
        "unsafe" => Cache {
            no_flush: true,
            ..Default::default()
        },
        _ => return Err(Error::Msg(format!("Invalid cache option: {s}"))),
    })
}

/// Parses `-i`.
pub fn parse_aio(s: &str) -> Result<Aio, Error> {
    s.parse()
        .map_err(|_| Error::Msg(format!("Invalid aio option: {s}")))
}

/// Probes the format from the first bytes of the file: `qcow2` or `raw`.
pub fn probe_format(path: &Path) -> Result<&'static str, Error> {
    use std::io::Read;
    let mut head = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(|e| open_error(path, e))?;
    let n = f.read(&mut head).map_err(|e| open_error(path, e))?;
    Ok(if n == 4 && &head == b"QFI\xfb" {
        "qcow2"
    } else {
        "raw"
    })
}

fn open_error(path: &Path, e: std::io::Error) -> Error {
    let msg = e.to_string();
    if msg.starts_with("Could not open") {
        Error::Msg(msg)
    } else {
        // report() drops Rust's " (os error N)" suffix, as for every message.
        Error::Msg(format!("Could not open '{}': {msg}", path.display()))
    }
}

/// Options for opening an image.
#[derive(Clone, Debug)]
pub struct OpenOpts<'a> {
    /// `-f`; None probes.
    pub format: Option<&'a str>,
    /// `-t`.
    pub cache: Cache,
    /// `-i`.
    pub aio: Aio,
    /// Open read-only.
    pub read_only: bool,
    /// `-U`: share all permissions.
    pub force_share: bool,
    /// Do not open backing files (`rebase -u`, `info` without `--backing-chain`).
    pub no_backing: bool,
    /// Refuse to let other processes write while the image is open (a `convert`
    /// source). Otherwise qemu-img's rule applies: a raw image is shared with other
    /// users; qcow2 metadata never is.
    pub no_share: bool,
}

/// The lock permissions an image of `format` opened with `o` shares, as qemu-img:
/// everything for raw (but a convert source), never writing or resizing the file
/// under qcow2 metadata.
pub(crate) fn shared_perms(format: &str, o: &OpenOpts<'_>) -> u64 {
    use oxemu_block::lock::perm;
    let user = if o.no_share {
        perm::CONSISTENT_READ | perm::WRITE_UNCHANGED
    } else {
        perm::ALL
    };
    if format == "raw" {
        user
    } else {
        user & !(perm::WRITE | perm::RESIZE)
    }
}

/// An opened image: the format node and its name.
pub struct Image {
    /// The format node, which I/O goes to.
    pub node: Arc<dyn BlockDriver>,
    /// Format name (`raw`, `qcow2`).
    pub format: &'static str,
    /// The protocol node below the format, when it is a local file (None for NBD).
    pub file: Option<Arc<FileDriver>>,
    /// The qcow2 chain, when the format is qcow2.
    pub qcow2: Option<oxemu_qcow2::Image>,
    /// The name qemu-img shows for the image when it differs from the one given
    /// (the canonical URI of an NBD export).
    pub display: Option<String>,
}

impl Image {
    /// The name to show for an image opened as `given`.
    pub fn name<'a>(&'a self, given: &'a str) -> &'a str {
        self.display.as_deref().unwrap_or(given)
    }
}

/// Opens a qcow2 image with its backing chain through oxemu-qcow2. The metadata is read
/// on a short-lived event loop; the returned node serves requests on any loop.
fn open_qcow2(path: &Path, o: &OpenOpts<'_>, file: Arc<FileDriver>) -> Result<Image, Error> {
    // Only the chain's own file nodes are used; release ours (and its lock) first.
    drop(file);
    let opts = oxemu_qcow2::ImageOptions {
        file: FileOptions {
            read_only: o.read_only,
            direct: o.cache.direct,
            no_flush: o.cache.no_flush,
            aio: o.aio,
            force_share: o.force_share,
            shared_perms: Some(shared_perms("qcow2", o)),
            ..FileOptions::new(path)
        },
        no_backing: o.no_backing,
        l2_cache_size: 0,
    };
    let lp = oxemu_block::EventLoop::with_defaults()
        .map_err(|e| Error::Msg(format!("Could not create event loop: {e}")))?;
    let chain = lp
        .block_on(oxemu_qcow2::open_image(path, Some("qcow2"), &opts))
        .map_err(|e| open_error(path, e))?;
    // A read-only, lock-free view of the same file, for sizes and alignment.
    let file = FileDriver::open(&FileOptions {
        read_only: true,
        locking: oxemu_block::file::Locking::Off,
        ..FileOptions::new(path)
    })
    .map_err(|e| open_error(path, e))?;
    Ok(Image {
        node: chain.driver.clone(),
        format: "qcow2",
        file: Some(Arc::new(file)),
        qcow2: Some(chain),
        display: None,
    })
}

/// Opens `path` as qemu-img would: LUKS images and block options (`--image-opts`,
/// `json:`) through [`crate::encryption`], the rest as a file name.
pub fn open(path: &Path, o: &OpenOpts<'_>) -> Result<Image, Error> {
    if o.force_share && !o.read_only {
        return Err(Error::Msg(format!(
            "Could not open '{}': force-share=on can only be used with read-only images",
            path.display()
        )));
    }
    if let Some(name) = path.to_str() {
        if let Some(spec) = crate::filename::parse(name)? {
            return crate::filename::open_nbd(name, &spec, o);
        }
        if let Some(spec) = crate::blkdebug::parse(name)? {
            return crate::blkdebug::open_spec(name, &spec, o);
        }
    }
    match crate::encryption::open_hook(path, o)? {
        Some(img) => Ok(img),
        None => {
            let img = open_file(path, o)?;
            crate::encryption::unlock_qcow2(&img, None, &path.display().to_string())?;
            Ok(img)
        }
    }
}

/// qemu-img's warning for a writable raw image whose format was probed.
pub(crate) fn warn_probed_raw(name: &str) {
    eprintln!(
        "WARNING: Image format was not specified for '{name}' and probing guessed raw.\n         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n         Specify the 'raw' format explicitly to remove the restrictions."
    );
}

/// Opens the file `path` as a raw or qcow2 image.
pub fn open_file(path: &Path, o: &OpenOpts<'_>) -> Result<Image, Error> {
    let format = match o.format {
        Some("raw") => "raw",
        Some("qcow2") => "qcow2",
        Some(f) => return Err(Error::Msg(format!("Unknown file format '{f}'"))),
        None => probe_format(path)?,
    };
    let file = FileDriver::open(&FileOptions {
        read_only: o.read_only,
        direct: o.cache.direct,
        no_flush: o.cache.no_flush,
        aio: o.aio,
        force_share: o.force_share,
        shared_perms: Some(shared_perms(format, o)),
        ..FileOptions::new(path)
    })
    .map_err(|e| open_error(path, e))?;
    let file = Arc::new(file);
    let probed = o.format.is_none();
    if probed && format == "raw" && !o.read_only {
        warn_probed_raw(&path.display().to_string());
    }
    let node: Arc<dyn BlockDriver> = match format {
        "raw" if probed => Arc::new(RawFormat::new(file.clone()).probed()),
        "raw" => Arc::new(RawFormat::new(file.clone())),
        _ => return open_qcow2(path, o, file),
    };
    Ok(Image {
        node,
        format,
        file: Some(file),
        qcow2: None,
        display: None,
    })
}
