//! The `blkdebug:` file-name syntax of qemu-img: `blkdebug:CONFIG:IMAGE` puts QEMU's
//! fault-injection filter ([`oxemu_block::blkdebug`]) between an image's format driver
//! and its file, with the rules of the `-readconfig`-style file `CONFIG` (which may be
//! empty: `blkdebug::IMAGE` injects nothing). The format is given with `-f` or probed
//! from `IMAGE`, and format drivers above the filter report their events to it
//! (raw: `read_aio`, `write_aio`; qcow2: its metadata events too).
//!
//! Block options (`--image-opts`, `json:`) with `file.driver=blkdebug` come here
//! through [`open_spec`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use oxemu_block::blkdebug::{parse_config, Blkdebug, Rules};
use oxemu_block::file::{FileDriver, FileOptions};
use oxemu_block::raw::RawFormat;
use oxemu_block::BlockDriver;

use crate::image::{Image, OpenOpts};
use crate::Error;

/// The parts of a `blkdebug:CONFIG:IMAGE` name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// The rule file; None for `blkdebug::IMAGE`.
    pub config: Option<PathBuf>,
    /// The image file.
    pub image: PathBuf,
    /// Rules given as block options (`inject-error.N.*`, `set-state.N.*`), added after
    /// the file's, as QEMU adds them.
    pub rules: Rules,
}

/// Splits `name` as QEMU's blkdebug driver does: None when it does not start with
/// `blkdebug:`; an error when it has no second colon.
pub fn parse(name: &str) -> Result<Option<Spec>, Error> {
    let Some(rest) = name.strip_prefix("blkdebug:") else {
        return Ok(None);
    };
    let Some((config, image)) = rest.split_once(':') else {
        return Err(Error::Msg(format!(
            "Could not open '{name}': blkdebug requires both config file and image path"
        )));
    };
    Ok(Some(Spec {
        config: (!config.is_empty()).then(|| PathBuf::from(config)),
        image: PathBuf::from(image),
        rules: Rules::default(),
    }))
}

/// Options of QEMU's blkdebug that oxemu refuses (see the storage daemon's notes):
/// oxemu's block layer does not split or align requests for a node, and has no
/// permissions between nodes.
const REFUSED: &[&str] = &[
    "align",
    "max-transfer",
    "opt-write-zero",
    "max-write-zero",
    "opt-discard",
    "max-discard",
    "take-child-perms",
    "unshare-child-perms",
];

/// One rule list of the options: its name, its keys, and `(index, key, value)`s.
type RuleList = (
    &'static str,
    &'static [&'static str],
    Vec<(usize, String, String)>,
);

const INJECT_KEYS: &[&str] = &[
    "event",
    "state",
    "iotype",
    "errno",
    "sector",
    "once",
    "immediately",
];
const SET_STATE_KEYS: &[&str] = &["event", "state", "new_state"];

/// A [`Spec`] from the `file.*` options of an image given as block options (keys
/// without the `file.` prefix): `image.filename`, `config`, `inject-error.N.KEY`,
/// `set-state.N.KEY`. Errors are qemu-img's for the same options.
pub fn spec_from_options(name: &str, opts: &[(String, String)]) -> Result<Spec, Error> {
    let fail = |m: String| Error::Msg(format!("Could not open '{name}': {m}"));
    let mut config = None;
    let mut image = None;
    let mut groups: [RuleList; 2] = [
        ("inject-error", INJECT_KEYS, Vec::new()),
        ("set-state", SET_STATE_KEYS, Vec::new()),
    ];
    for (k, v) in opts {
        let head = k.split('.').next().unwrap_or("");
        if REFUSED.contains(&head) {
            return Err(fail(format!(
                "blkdebug option '{head}' is not supported by oxemu (requests are not split or aligned for a node, and nodes take no permissions on their children)"
            )));
        }
        match k.as_str() {
            "config" => config = Some(PathBuf::from(v)),
            "image.filename" => image = Some(PathBuf::from(v)),
            "image.driver" if v == "file" => {}
            "image.driver" => {
                return Err(fail(format!(
                    "oxemu-img opens only driver=file under blkdebug, not '{v}'"
                )))
            }
            "image" => {
                return Err(fail(format!(
                    "Cannot find device='{v}' nor node-name='{v}'"
                )))
            }
            _ => {
                let group = groups
                    .iter_mut()
                    .find(|(g, _, _)| k.strip_prefix(g).is_some_and(|r| r.starts_with('.')));
                let Some((g, _, list)) = group else {
                    if k.starts_with("image.") {
                        return Err(fail(format!(
                            "oxemu-img does not support the option '{k}' of a file under blkdebug"
                        )));
                    }
                    return Err(fail(format!(
                        "Block protocol 'blkdebug' doesn't support the option '{k}'"
                    )));
                };
                let rest = &k[g.len() + 1..];
                let idx = rest
                    .split_once('.')
                    .and_then(|(i, key)| Some((i.parse::<usize>().ok()?, key)));
                match idx {
                    Some((i, key)) => list.push((i, key.to_string(), v.clone())),
                    None => {
                        return Err(fail(format!("Unused option '{rest}' for [{g}]")));
                    }
                }
            }
        }
    }
    let Some(image) = image else {
        return Err(fail(
            "A block device must be specified for \"image\"".into(),
        ));
    };
    let mut rules = Rules::default();
    for (g, keys, list) in &groups {
        // QEMU takes elements 0, 1, ... while they exist; what is left is unused.
        let mut i = 0;
        loop {
            let kv: Vec<(String, String)> = list
                .iter()
                .filter(|(n, _, _)| *n == i)
                .map(|(_, k, v)| (k.clone(), v.clone()))
                .collect();
            if kv.is_empty() {
                break;
            }
            if let Some((k, _)) = kv.iter().find(|(k, _)| !keys.contains(&k.as_str())) {
                return Err(fail(format!(
                    "[{g}] section doesn't support the option '{k}'"
                )));
            }
            let r = if *g == "inject-error" {
                rules.add_inject_config(&kv)
            } else {
                rules.add_set_state_config(&kv)
            };
            r.map_err(fail)?;
            i += 1;
        }
        if let Some((n, k, _)) = list.iter().find(|(n, _, _)| *n >= i) {
            return Err(fail(format!("Unused option '{n}.{k}' for [{g}]")));
        }
    }
    Ok(Spec {
        config,
        image,
        rules,
    })
}

/// The name qemu-img shows for an image given as block options over blkdebug:
/// `blkdebug:CONFIG:IMAGE` when no rule is given inline, else the options as given
/// (qemu-img shows a `json:` object there, in its dictionary's hash order).
pub fn display_name(name: &str, spec: &Spec) -> String {
    if spec.rules.inject.is_empty() && spec.rules.set_state.is_empty() {
        let c = spec
            .config
            .as_deref()
            .map(|c| c.display().to_string())
            .unwrap_or_default();
        format!("blkdebug:{c}:{}", spec.image.display())
    } else {
        name.to_string()
    }
}

/// QEMU's refusal to create an image on a `blkdebug:` name (`create`, and `convert`
/// without `-n`, where qemu-img does not prefix the name).
pub fn refuse_create(name: &str, prefixed: bool) -> Result<(), Error> {
    if !name.starts_with("blkdebug:") {
        return Ok(());
    }
    let m = "Protocol driver 'blkdebug' does not support image creation";
    Err(Error::Msg(if prefixed {
        format!("{name}: {m}")
    } else {
        m.to_string()
    }))
}

/// The rules of `spec`: its config file's, then those given as options.
fn rules(spec: &Spec) -> Result<Rules, String> {
    let mut rules = Rules::default();
    if let Some(c) = &spec.config {
        let text = std::fs::read(c).map_err(|e| {
            let m = crate::strip_os_errors(&e.to_string());
            format!("Could not read blkdebug config file: {m}")
        })?;
        parse_config(&String::from_utf8_lossy(&text), &mut rules)?;
    }
    rules.inject.extend(spec.rules.inject.iter().cloned());
    rules.set_state.extend(spec.rules.set_state.iter().cloned());
    Ok(rules)
}

/// Opens `spec` (given as `name`) with the format `o.format` or the probed one.
pub fn open_spec(name: &str, spec: &Spec, o: &OpenOpts<'_>) -> Result<Image, Error> {
    let fail = |m: String| Error::Msg(format!("Could not open '{name}': {m}"));
    let rules = rules(spec).map_err(fail)?;
    let format = match o.format {
        Some("raw") => "raw",
        Some("qcow2") => "qcow2",
        Some(f) => return Err(Error::Msg(format!("Unknown file format '{f}'"))),
        None => crate::image::probe_format(&spec.image).map_err(|e| fail(e.to_string()))?,
    };
    // The image's own error, inside QEMU's error for the blkdebug node.
    let image_error = |e: std::io::Error| {
        let m = crate::strip_os_errors(&e.to_string());
        if m.starts_with("Could not open") {
            fail(m)
        } else {
            fail(format!("Could not open '{}': {m}", spec.image.display()))
        }
    };
    let fo = FileOptions {
        read_only: o.read_only,
        direct: o.cache.direct,
        no_flush: o.cache.no_flush,
        aio: o.aio,
        force_share: o.force_share,
        shared_perms: Some(crate::image::shared_perms(format, o)),
        ..FileOptions::new(&spec.image)
    };
    let file = Arc::new(FileDriver::open(&fo).map_err(image_error)?);
    let filter: Arc<dyn BlockDriver> = Arc::new(Blkdebug::new(file, rules));
    let probed = o.format.is_none();
    if format == "raw" {
        if probed && !o.read_only {
            crate::image::warn_probed_raw(name);
        }
        let raw = RawFormat::new(filter);
        let node: Arc<dyn BlockDriver> = if probed {
            Arc::new(raw.probed())
        } else {
            Arc::new(raw)
        };
        return Ok(Image {
            node,
            format: "raw",
            // QEMU's blkdebug reports no disk size ("disk size: unavailable").
            file: None,
            qcow2: None,
            display: None,
        });
    }
    let chain = open_qcow2(&spec.image, filter, &fo, o).map_err(|e| fail(e.to_string()))?;
    Ok(Image {
        node: chain.driver.clone(),
        format: "qcow2",
        file: None,
        qcow2: Some(chain),
        display: None,
    })
}

/// A qcow2 image over the filter; its backing chain is opened without one, as QEMU
/// opens a backing file by its own name.
fn open_qcow2(
    path: &Path,
    filter: Arc<dyn BlockDriver>,
    fo: &FileOptions,
    o: &OpenOpts<'_>,
) -> std::io::Result<oxemu_qcow2::Image> {
    use oxemu_qcow2::{Qcow2, Qcow2OpenOptions};
    let lp = oxemu_block::EventLoop::with_defaults()?;
    lp.block_on(async {
        let peek = Qcow2::open(
            filter.clone(),
            Qcow2OpenOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .await?;
        let h = peek.header().await;
        drop(peek);
        let backing = match (&h.backing_file, o.no_backing) {
            (Some(b), false) => {
                let bp = oxemu_qcow2::chain::backing_path(path, b);
                let opts = oxemu_qcow2::ImageOptions {
                    file: FileOptions {
                        read_only: true,
                        shared_perms: None,
                        ..fo.clone()
                    },
                    no_backing: false,
                    l2_cache_size: 0,
                };
                let fmt = h.backing_format();
                let img = oxemu_qcow2::open_image(&bp, fmt.as_deref(), &opts)
                    .await
                    .map_err(|e| {
                        std::io::Error::new(e.kind(), format!("Could not open backing file: {e}"))
                    })?;
                Some(img)
            }
            _ => None,
        };
        let q = Qcow2::open(
            filter,
            Qcow2OpenOptions {
                read_only: o.read_only,
                backing,
                l2_cache_size: 0,
                keep_bitmaps: false,
                // QEMU's default, as the chain's own images.
                overlap_check: Default::default(),
                lazy_refcounts: None,
            },
        )
        .await?;
        Ok(oxemu_qcow2::Image {
            format: "qcow2",
            path: path.to_path_buf(),
            driver: q.clone(),
            qcow2: Some(q),
        })
    })
}

/// Opens a `blkdebug:` qcow2 image the way `check` opens images (QEMU's
/// `BDRV_O_CHECK`): read-write only to repair, even when marked corrupt.
pub fn open_for_check(
    lp: &oxemu_block::EventLoop,
    name: &str,
    spec: &Spec,
    read_only: bool,
    force_share: bool,
) -> Result<Arc<oxemu_qcow2::Qcow2>, Error> {
    use oxemu_block::lock::perm;
    let fail = |m: String| Error::Msg(format!("Could not open '{name}': {m}"));
    let strip = |e: std::io::Error| crate::strip_os_errors(&e.to_string());
    let rules = rules(spec).map_err(fail)?;
    let file = FileDriver::open(&FileOptions {
        read_only,
        force_share,
        shared_perms: Some(perm::ALL & !(perm::WRITE | perm::RESIZE)),
        ..FileOptions::new(&spec.image)
    })
    .map_err(|e| fail(strip(e)))?;
    let filter: Arc<dyn BlockDriver> = Arc::new(Blkdebug::new(Arc::new(file), rules));
    lp.block_on(oxemu_qcow2::Qcow2::open_for_check(filter, read_only))
        .map_err(|e| fail(strip(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_as_qemu_splits_them() {
        assert_eq!(parse("a.raw").unwrap(), None);
        let s = parse("blkdebug:c.conf:/x/a.raw").unwrap().unwrap();
        assert_eq!(s.config.as_deref(), Some(Path::new("c.conf")));
        assert_eq!(s.image, Path::new("/x/a.raw"));
        // An empty config is allowed; a colon in the image name stays in it.
        let s = parse("blkdebug::a:b").unwrap().unwrap();
        assert_eq!((s.config, s.image), (None, PathBuf::from("a:b")));
        assert_eq!(
            parse("blkdebug:a.raw").unwrap_err().to_string(),
            "Could not open 'blkdebug:a.raw': blkdebug requires both config file and image path"
        );
    }
}
