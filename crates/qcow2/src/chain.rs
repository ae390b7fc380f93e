//! Opening an image with its whole backing chain: format probing (raw or qcow2 by
//! magic), backing file names relative to the overlay's directory, chains of any
//! depth, and cycle detection.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oxemu_block::raw::RawFormat;
use oxemu_block::{BlockDriver, FileDriver, FileOptions};

use crate::{Qcow2, Qcow2OpenOptions};

/// Longest backing chain followed (QEMU has no limit but a cycle check; this bounds
/// file descriptors and memory for hostile chains).
pub const MAX_CHAIN_DEPTH: usize = 256;

/// One opened image of a chain.
#[derive(Clone)]
pub struct Image {
    /// `"qcow2"` or `"raw"`.
    pub format: &'static str,
    /// Path of the image file.
    pub path: PathBuf,
    /// The format node (reads and writes guest data).
    pub driver: Arc<dyn BlockDriver>,
    /// The same node as a [`Qcow2`] when the format is qcow2.
    pub qcow2: Option<Arc<Qcow2>>,
}

impl Image {
    /// The backing image, for qcow2 images that have one.
    pub fn backing(&self) -> Option<&Image> {
        self.qcow2.as_ref().and_then(|q| q.backing())
    }
}

/// How to open the images of a chain.
#[derive(Clone, Debug, Default)]
pub struct ImageOptions {
    /// Options of the top image's `file` node (read_only, cache, aio, locking, ...).
    /// Backing files get the same options but are always read-only.
    pub file: FileOptions,
    /// Do not open backing files (`-u`-style unsafe operations; `info` without chain).
    pub no_backing: bool,
    /// L2 cache size per qcow2 image in bytes (0: default).
    pub l2_cache_size: u64,
}

/// Probes the format of a file from its first bytes: `qcow2` when it starts with the
/// qcow2 magic, else `raw`.
pub fn probe(path: &Path) -> io::Result<&'static str> {
    use std::io::Read;
    let mut head = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("Could not open '{}': {e}", path.display()),
        )
    })?;
    let n = f.read(&mut head)?;
    Ok(if n == 4 && head == *b"QFI\xfb" {
        "qcow2"
    } else {
        "raw"
    })
}

/// Resolves a backing file name stored in `overlay` the way QEMU does: absolute names
/// as they are, relative ones against the overlay's directory.
pub fn backing_path(overlay: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() || name.contains("://") {
        return p.to_path_buf();
    }
    overlay
        .parent()
        .map(|d| d.join(p))
        .unwrap_or_else(|| p.to_path_buf())
}

/// Opens `path` as `format` (probed when `None`) together with its backing chain.
/// Must run inside an oxemu event loop.
pub async fn open_image(
    path: &Path,
    format: Option<&str>,
    opts: &ImageOptions,
) -> io::Result<Image> {
    let mut seen = Vec::new();
    open_rec(path, format, opts, &mut seen, false).await
}

async fn open_rec(
    path: &Path,
    format: Option<&str>,
    opts: &ImageOptions,
    seen: &mut Vec<PathBuf>,
    is_backing: bool,
) -> io::Result<Image> {
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if seen.contains(&canon) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "Backing file '{}' creates a cycle in the backing chain",
                path.display()
            ),
        ));
    }
    if seen.len() >= MAX_CHAIN_DEPTH {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "Backing chain of '{}' is deeper than {MAX_CHAIN_DEPTH}",
                path.display()
            ),
        ));
    }
    seen.push(canon);
    let format: &'static str = match format {
        Some("qcow2") => "qcow2",
        Some("raw") => "raw",
        Some(f) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("Unknown driver '{f}'"),
            ))
        }
        None => probe(path)?,
    };
    let mut fo = opts.file.clone();
    fo.filename = path.to_path_buf();
    if is_backing {
        fo.read_only = true;
    }
    let file: Arc<dyn BlockDriver> = Arc::new(FileDriver::open(&fo)?);
    if format == "raw" {
        return Ok(Image {
            format,
            path: path.to_path_buf(),
            driver: Arc::new(RawFormat::new(file)),
            qcow2: None,
        });
    }
    // Peek at the header for the backing file before opening the qcow2 node.
    let q0 = Qcow2::open(
        file.clone(),
        Qcow2OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("Could not open '{}': {e}", path.display()),
        )
    })?;
    let h = q0.header().await;
    drop(q0);
    let backing = match (&h.backing_file, opts.no_backing) {
        (Some(name), false) => {
            let bp = backing_path(path, name);
            let fmt = h.backing_format();
            let b = Box::pin(open_rec(&bp, fmt.as_deref(), opts, seen, true))
                .await
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("Could not open backing file: {e}"))
                })?;
            Some(b)
        }
        _ => None,
    };
    let q = Qcow2::open(
        file,
        Qcow2OpenOptions {
            read_only: fo.read_only,
            backing,
            l2_cache_size: opts.l2_cache_size,
            keep_bitmaps: false,
            overlap_check: Default::default(),
            lazy_refcounts: None,
        },
    )
    .await
    .map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("Could not open '{}': {e}", path.display()),
        )
    })?;
    Ok(Image {
        format,
        path: path.to_path_buf(),
        driver: q.clone(),
        qcow2: Some(q),
    })
}
