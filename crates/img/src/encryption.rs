//! LUKS images in oxemu-img: opening them (by probing, `-f luks`, `--image-opts` or
//! `json:` names, with the key from a `--object secret`), `create -f luks`, and the
//! encryption fields of `info`.

use std::path::Path;
use std::sync::Arc;

use oxemu_block::file::{FileDriver, FileOptions};
use oxemu_block::BlockDriver;
use oxemu_crypto::algo::{CipherAlg, CipherMode, HashAlg, IvGenAlg};
use oxemu_crypto::header::SECTOR;
use oxemu_crypto::luks::{CreateOptions, Luks};
use oxemu_crypto::LuksDriver;
use serde_json::{Map, Value};

use crate::image::{Image, OpenOpts};
use crate::objects::{self, ImageSpec};
use crate::Error;

/// True when the file starts with the LUKS magic.
fn probe_luks(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 6];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|_| &head == oxemu_crypto::header::MAGIC)
}

fn event_loop() -> Result<oxemu_block::EventLoop, Error> {
    oxemu_block::EventLoop::with_defaults()
        .map_err(|e| Error::Msg(format!("Could not create event loop: {e}")))
}

/// The name qemu-img shows for an image given as options: a `json:` object.
fn json_name(spec: &ImageSpec, driver: &str) -> String {
    let mut file = Map::new();
    file.insert("driver".into(), "file".into());
    file.insert(
        "filename".into(),
        spec.filename.display().to_string().into(),
    );
    let mut o = Map::new();
    o.insert("driver".into(), driver.into());
    o.insert("file".into(), Value::Object(file));
    if let Some(k) = &spec.key_secret {
        let key = if driver == "qcow2" {
            "encrypt.key-secret"
        } else {
            "key-secret"
        };
        o.insert(key.into(), k.clone().into());
    }
    let s = serde_json::to_string(&Value::Object(o)).expect("JSON");
    // QEMU separates members with ", " and keys from values with ": ".
    format!(
        "json:{}",
        s.replace("\",\"", "\", \"")
            .replace("\":", "\": ")
            .replace("},\"", "}, \"")
    )
}

fn spec_driver(spec: &ImageSpec) -> Result<String, Error> {
    Ok(match spec.driver.as_deref() {
        Some(d) => d.to_string(),
        None if probe_luks(&spec.filename) => "luks".into(),
        None => crate::image::probe_format(&spec.filename)?.to_string(),
    })
}

/// The name `info` shows for the image argument `name`: itself, or for block options
/// the `json:` object qemu-img prints.
pub fn shown_name(name: &str) -> String {
    match objects::image_spec(name) {
        Ok(Some(spec)) => match spec_driver(&spec) {
            Ok(d) => json_name(&spec, &d),
            Err(_) => name.to_string(),
        },
        _ => name.to_string(),
    }
}

/// Hook of [`crate::image::open`]: opens LUKS images, and images given as block options.
/// None leaves a plain file name to the usual path.
pub fn open_hook(path: &Path, o: &OpenOpts<'_>) -> Result<Option<Image>, Error> {
    let name = path.display().to_string();
    if let Some(spec) = objects::image_spec(&name)? {
        let driver = spec_driver(&spec)?;
        if driver == "luks" && spec.blkdebug.is_some() {
            return Err(Error::Msg(format!(
                "Could not open '{name}': oxemu-img does not open LUKS images over blkdebug"
            )));
        }
        if driver == "luks" {
            return open_luks(&spec.filename, spec.key_secret.as_deref(), &name, o).map(Some);
        }
        let inner = OpenOpts {
            format: Some(match driver.as_str() {
                "qcow2" => "qcow2",
                "raw" => "raw",
                d => return Err(Error::Msg(format!("Unknown driver '{d}'"))),
            }),
            ..o.clone()
        };
        if let Some(b) = &spec.blkdebug {
            let mut img = crate::blkdebug::open_spec(&name, b, &inner)?;
            img.display = Some(crate::blkdebug::display_name(&name, b));
            unlock_qcow2(&img, spec.key_secret.as_deref(), &name)?;
            return Ok(Some(img));
        }
        let mut img = crate::image::open_file(&spec.filename, &inner)?;
        unlock_qcow2(&img, spec.key_secret.as_deref(), &name)?;
        // qemu-img names an image given as plain options, or as a json: name that says
        // no more than the driver and the file, by its file (QEMU's
        // bdrv_refresh_filename); with a key the options cannot be left out.
        if spec.key_secret.is_none() {
            img.display = Some(spec.filename.display().to_string());
        }
        return Ok(Some(img));
    }
    let luks = match o.format {
        Some("luks") => true,
        None => probe_luks(path),
        Some(_) => false,
    };
    if !luks {
        return Ok(None);
    }
    open_luks(path, None, &name, o).map(Some)
}

/// Unlocks an encrypted qcow2 image with the secret `key_secret` (`info` goes on
/// without one, as qemu-img opens images there without I/O).
pub fn unlock_qcow2(img: &Image, key_secret: Option<&str>, name: &str) -> Result<(), Error> {
    let Some(q) = img.qcow2.as_ref().and_then(|c| c.qcow2.as_ref()) else {
        return Ok(());
    };
    if !q.encrypted() {
        return Ok(());
    }
    let fail = |m: String| Error::Msg(format!("Could not open '{name}': {m}"));
    let id = match key_secret {
        Some(id) => id,
        None if objects::command() == "info" => return Ok(()),
        None => {
            return Err(fail(
                "Parameter 'encrypt.key-secret' is required for cipher".into(),
            ))
        }
    };
    let pw = objects::secret(id).map_err(|e| fail(e.to_string()))?;
    event_loop()?
        .block_on(q.unlock(&pw))
        .map_err(|e| fail(e.to_string()))
}

fn open_luks(
    path: &Path,
    key_secret: Option<&str>,
    name: &str,
    o: &OpenOpts<'_>,
) -> Result<Image, Error> {
    use oxemu_block::lock::perm;
    let fail = |m: String| Error::Msg(format!("Could not open '{name}': {m}"));
    let user = if o.no_share {
        perm::CONSISTENT_READ | perm::WRITE_UNCHANGED
    } else {
        perm::ALL
    };
    let file = FileDriver::open(&FileOptions {
        read_only: o.read_only,
        direct: o.cache.direct,
        no_flush: o.cache.no_flush,
        aio: o.aio,
        force_share: o.force_share,
        shared_perms: Some(user & !(perm::WRITE | perm::RESIZE)),
        ..FileOptions::new(path)
    })
    .map_err(|e| fail(crate::strip_os_errors(&e.to_string())))?;
    let file = Arc::new(file);
    let node: Arc<dyn BlockDriver> = file.clone();
    let lp = event_loop()?;
    let driver = match key_secret {
        Some(id) => {
            let pw = objects::secret(id).map_err(|e| fail(e.to_string()))?;
            lp.block_on(LuksDriver::open(node, &pw))
        }
        // `info` reads just the header, as qemu-img opens images there without I/O.
        None if objects::command() == "info" => lp.block_on(LuksDriver::open_header_only(node)),
        None => return Err(fail("Parameter 'key-secret' is required for cipher".into())),
    }
    .map_err(|e| fail(e.to_string()))?;
    Ok(Image {
        node: Arc::new(driver),
        format: "luks",
        file: Some(file),
        qcow2: None,
        display: None,
    })
}

/// QEMU's `QCryptoBlockInfoLUKS` of a volume as JSON, in qemu-img's key order.
pub fn luks_json(l: &Luks) -> Map<String, Value> {
    let mut d = Map::new();
    d.insert("ivgen-alg".into(), l.spec.ivgen.name().into());
    d.insert("hash-alg".into(), l.hash.name().into());
    d.insert("cipher-alg".into(), l.spec.alg.name().into());
    d.insert("uuid".into(), l.header.uuid.clone().into());
    if let Some(h) = l.spec.ivgen_hash {
        d.insert("ivgen-hash-alg".into(), h.name().into());
    }
    d.insert("cipher-mode".into(), l.spec.mode.name().into());
    let slots: Vec<Value> = l
        .header
        .slots
        .iter()
        .map(|s| {
            let mut m = Map::new();
            m.insert("active".into(), s.active().into());
            if s.active() {
                m.insert("iters".into(), s.iterations.into());
            }
            m.insert("key-offset".into(), (s.key_offset as u64 * SECTOR).into());
            if s.active() {
                m.insert("stripes".into(), s.stripes.into());
            }
            Value::Object(m)
        })
        .collect();
    d.insert("slots".into(), Value::Array(slots));
    d.insert("payload-offset".into(), l.payload_offset().into());
    d.insert("master-key-iters".into(), l.header.mk_iterations.into());
    d
}

/// Human lines of a [`luks_json`] object, indented by `indent` spaces.
pub fn luks_human(d: &Map<String, Value>, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut s = String::new();
    for (k, v) in d {
        let label = k.replace('-', " ");
        match v {
            Value::Array(slots) => {
                s += &format!("{pad}{label}:\n");
                for (i, slot) in slots.iter().enumerate() {
                    s += &format!("{pad}    [{i}]:\n");
                    for (k, v) in slot.as_object().into_iter().flatten() {
                        s += &format!("{pad}        {}: {v}\n", k.replace('-', " "));
                    }
                }
            }
            Value::String(x) => s += &format!("{pad}{label}: {x}\n"),
            other => s += &format!("{pad}{label}: {other}\n"),
        }
    }
    s
}

/// `info` of a LUKS image: qemu-img's output with its `encrypted` flag and the
/// `format-specific` data of the volume.
pub fn info(name: &str, img: &Image, json: bool) -> Result<(), Error> {
    let lp = event_loop()?;
    let Some(f) = img.file.as_deref() else {
        return Err(Error::Msg(format!("Could not open '{name}': not a file")));
    };
    let file: &dyn BlockDriver = f;
    let luks = lp
        .block_on(oxemu_crypto::driver::read_header(file))
        .map_err(|e| Error::Msg(format!("Could not open '{name}': {e}")))?;
    let size = img.node.size();
    let actual = f.allocated_size().unwrap_or(0);
    let data = luks_json(&luks);
    if json {
        let mut o = Map::new();
        o.insert("virtual-size".into(), size.into());
        o.insert("filename".into(), name.into());
        o.insert("format".into(), "luks".into());
        o.insert("actual-size".into(), actual.into());
        let mut fs = Map::new();
        fs.insert("type".into(), "luks".into());
        fs.insert("data".into(), Value::Object(data));
        o.insert("format-specific".into(), Value::Object(fs));
        o.insert("encrypted".into(), true.into());
        o.insert("dirty-flag".into(), false.into());
        println!("{}", crate::json_pretty(&Value::Object(o)));
    } else {
        use oxemu_opts::size::human_size;
        print!(
            "image: {name}\nfile format: luks\nvirtual size: {} ({size} bytes)\ndisk size: {}\nencrypted: yes\nFormat specific information:\n{}",
            human_size(size),
            human_size(actual),
            luks_human(&data, 4)
        );
    }
    Ok(())
}

/// `create -f luks`: options `key-secret` (required), `cipher-alg`, `cipher-mode`,
/// `ivgen-alg`, `ivgen-hash-alg`, `hash-alg`, `iter-time` and `size`.
pub fn create(file: &str, size: Option<u64>, opts: &[&str], quiet: bool) -> Result<(), Error> {
    let mut size = size;
    let mut c = CreateOptions::default();
    let mut key_secret = None;
    // In the order qemu-img lists them on its "Formatting" line.
    const ORDER: [&str; 7] = [
        "key-secret",
        "cipher-alg",
        "cipher-mode",
        "ivgen-alg",
        "ivgen-hash-alg",
        "hash-alg",
        "iter-time",
    ];
    let mut given: Vec<(usize, String)> = Vec::new();
    let bad = |k: &str, v: &str| Error::Msg(format!("Parameter '{k}' does not accept value '{v}'"));
    for o in opts.iter().flat_map(|o| oxemu_opts::keyval::pairs(o)) {
        let (k, v) = (o.0.as_str(), o.1.unwrap_or_default());
        match k {
            "size" => size = Some(crate::create::image_size(&v)?),
            "key-secret" => key_secret = Some(v.clone()),
            "cipher-alg" => c.spec.alg = CipherAlg::from_name(&v).map_err(|_| bad(k, &v))?,
            "cipher-mode" => c.spec.mode = CipherMode::from_name(&v).map_err(|_| bad(k, &v))?,
            "ivgen-alg" => c.spec.ivgen = IvGenAlg::from_name(&v).map_err(|_| bad(k, &v))?,
            "ivgen-hash-alg" => {
                c.spec.ivgen_hash = Some(HashAlg::from_name(&v).map_err(|_| bad(k, &v))?)
            }
            "hash-alg" => c.hash = HashAlg::from_name(&v).map_err(|_| bad(k, &v))?,
            "iter-time" => {
                c.iter_time_ms = v
                    .parse()
                    .map_err(|_| Error::Msg("Parameter 'iter-time' expects a number".into()))?
            }
            _ => {
                return Err(Error::Msg(format!(
                    "Invalid option '{k}' for format 'luks'"
                )))
            }
        }
        if let Some(i) = ORDER.iter().position(|x| *x == k) {
            given.retain(|(j, _)| *j != i);
            given.push((i, format!("{k}={v}")));
        }
    }
    if c.spec.ivgen == IvGenAlg::Essiv && c.spec.ivgen_hash.is_none() {
        c.spec.ivgen_hash = Some(HashAlg::Sha256);
    }
    let Some(size) = size else {
        return Err(Error::Msg("Image creation needs a size parameter".into()));
    };
    given.sort();
    if !quiet {
        let mut line = format!("Formatting '{file}', fmt=luks size={size}");
        for (_, g) in &given {
            line += " ";
            line += g;
        }
        println!("{line}");
    }
    let fail = |m: String| Error::Msg(format!("{file}: {m}"));
    let id =
        key_secret.ok_or_else(|| fail("Parameter 'key-secret' is required for cipher".into()))?;
    let pw = objects::secret(&id).map_err(|e| fail(e.to_string()))?;
    FileDriver::create(Path::new(file), 0, false).map_err(|e| fail(e.to_string()))?;
    let f = FileDriver::open(&FileOptions::new(file)).map_err(|e| fail(e.to_string()))?;
    let lp = event_loop()?;
    let node: Arc<dyn BlockDriver> = Arc::new(f);
    let d = lp
        .block_on(LuksDriver::create(node, &c, &pw, size))
        .map_err(|e| fail(e.to_string()))?;
    lp.block_on(d.close()).map_err(|e| fail(e.to_string()))?;
    Ok(())
}
