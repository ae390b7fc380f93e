//! `--object secret,...` and `--image-opts`, as qemu-img takes them before any
//! subcommand's own options: secrets are kept for the process's life, looked up by id
//! when an image names its `key-secret`; with `--image-opts` (or a `json:` file name)
//! an image is given as QEMU block options instead of a file name.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use crate::Error;

fn secrets() -> &'static Mutex<HashMap<String, Vec<u8>>> {
    static S: OnceLock<Mutex<HashMap<String, Vec<u8>>>> = OnceLock::new();
    S.get_or_init(Default::default)
}

static IMAGE_OPTS: OnceLock<bool> = OnceLock::new();
static COMMAND: OnceLock<String> = OnceLock::new();

/// True when `--image-opts` was given: file names are block option strings.
pub fn image_opts() -> bool {
    IMAGE_OPTS.get().copied().unwrap_or(false)
}

/// The subcommand being run (`info` opens encrypted images without their key).
pub fn command() -> &'static str {
    COMMAND.get().map_or("", String::as_str)
}

/// Decodes standard base64 (with or without padding).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Creates the object described by `spec` (`secret,id=ID,data=...|file=...[,format=]`).
pub fn add_object(spec: &str) -> Result<(), Error> {
    let kv = oxemu_opts::keyval::pairs(spec);
    let mut it = kv.iter();
    let qom_type = match it.next() {
        Some((t, None)) => t.clone(),
        Some((k, Some(v))) if k == "qom-type" => v.clone(),
        _ => return Err(Error::Msg("Parameter 'qom-type' is missing".into())),
    };
    let (mut id, mut data, mut file, mut format) = (None, None, None, "raw".to_string());
    for (k, v) in it {
        let v = v.clone().unwrap_or_else(|| "on".into());
        match k.as_str() {
            "id" => id = Some(v),
            "data" => data = Some(v),
            "file" => file = Some(v),
            "format" => format = v,
            "qom-type" => {}
            _ if qom_type != "secret" => {}
            _ => return Err(Error::Msg(format!("Property '{k}' not found"))),
        }
    }
    if qom_type != "secret" {
        return Err(Error::Msg(format!("invalid object type: {qom_type}")));
    }
    let id = id.ok_or_else(|| Error::Msg("Parameter 'id' is missing".into()))?;
    let raw = match (data, file) {
        (Some(_), Some(_)) => {
            return Err(Error::Msg(
                "'file' and 'data' are mutually exclusive".into(),
            ))
        }
        (Some(d), None) => d.into_bytes(),
        (None, Some(f)) => std::fs::read(&f).map_err(|e| {
            let m = crate::strip_os_errors(&e.to_string());
            Error::Msg(format!(
                "Unable to read {f}: Failed to open file “{f}”: {m}"
            ))
        })?,
        (None, None) => {
            return Err(Error::Msg(
                "Either 'file' or 'data' must be provided".into(),
            ))
        }
    };
    let value = match format.as_str() {
        "raw" => raw,
        "base64" => base64_decode(String::from_utf8_lossy(&raw).trim())
            .ok_or_else(|| Error::Msg("Base64 data is not valid".into()))?,
        f => {
            return Err(Error::Msg(format!(
                "Parameter 'format' does not accept value '{f}'"
            )))
        }
    };
    let mut s = secrets().lock().expect("secret table");
    if s.contains_key(&id) {
        return Err(Error::Msg(format!(
            "attempt to add duplicate property '{id}' to object (type 'container')"
        )));
    }
    s.insert(id, value);
    Ok(())
}

/// The bytes of secret `id`, as a password: up to its first NUL (QEMU passes it as a C
/// string), and required to be UTF-8.
pub fn secret(id: &str) -> Result<Vec<u8>, Error> {
    let s = secrets().lock().expect("secret table");
    let v = s
        .get(id)
        .ok_or_else(|| Error::Msg(format!("No secret with id '{id}'")))?;
    let v = v.split(|&b| b == 0).next().unwrap_or(&[]).to_vec();
    if std::str::from_utf8(&v).is_err() {
        return Err(Error::Msg(format!(
            "Data from secret {id} is not valid UTF-8"
        )));
    }
    Ok(v)
}

/// Takes `--object` and `--image-opts` out of a subcommand's arguments (`argv[0]` is
/// the subcommand), creating the objects.
pub fn take_global_options(argv: &mut Vec<String>) -> Result<(), Error> {
    if let Some(c) = argv.first() {
        let _ = COMMAND.set(c.clone());
    }
    let mut i = 1;
    let mut image_opts = false;
    while i < argv.len() {
        let a = argv[i].as_str();
        if a == "--" {
            break;
        }
        if a == "--image-opts" {
            image_opts = true;
            argv.remove(i);
        } else if let Some(v) = a.strip_prefix("--object=") {
            let v = v.to_string();
            argv.remove(i);
            add_object(&v)?;
        } else if a == "--object" {
            if i + 1 >= argv.len() {
                return Err(Error::Usage(
                    "option '--object' requires an argument".into(),
                ));
            }
            let v = argv.remove(i + 1);
            argv.remove(i);
            add_object(&v)?;
        } else {
            i += 1;
        }
    }
    let _ = IMAGE_OPTS.set(image_opts);
    Ok(())
}

/// An image given as block options rather than a file name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageSpec {
    /// `driver`: the format.
    pub driver: Option<String>,
    /// `file.filename` (or `filename`).
    pub filename: PathBuf,
    /// `key-secret` (luks) or `encrypt.key-secret` (qcow2).
    pub key_secret: Option<String>,
    /// `file.driver=blkdebug`: the filter's config and rules (`filename` is then its
    /// `file.image.filename`).
    pub blkdebug: Option<crate::blkdebug::Spec>,
}

fn flatten_json(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, Option<String>)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_json(&key, v, out);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                flatten_json(&format!("{prefix}.{i}"), v, out);
            }
        }
        serde_json::Value::String(s) => out.push((prefix.into(), Some(s.clone()))),
        other => out.push((prefix.into(), Some(other.to_string()))),
    }
}

/// Parses `name` as block options when `--image-opts` was given (and `name` has an
/// `=`) or it is a `json:` name; None for a plain file name.
pub fn image_spec(name: &str) -> Result<Option<ImageSpec>, Error> {
    let pairs = if let Some(j) = name.strip_prefix("json:") {
        let v: serde_json::Value = oxemu_opts::json::parse(j)
            .map_err(|e| Error::Msg(format!("Could not parse the JSON options: {e}")))?;
        let mut out = Vec::new();
        flatten_json("", &v, &mut out);
        out
    } else if image_opts() && name.contains('=') {
        // A name without options is a file (convert's target, which --image-opts does
        // not cover in qemu-img either).
        oxemu_opts::keyval::pairs(name)
    } else {
        return Ok(None);
    };
    let mut spec = ImageSpec::default();
    let mut have_file = false;
    // `file.*` options of a file driver other than `file` (blkdebug's), for later.
    let mut file_driver = None;
    let mut file_opts = Vec::new();
    for (k, v) in pairs {
        let v = v.unwrap_or_default();
        match k.as_str() {
            "file.driver" if v != "file" => file_driver = Some(v),
            k if k.starts_with("file.") && k != "file.filename" && k != "file.driver" => {
                file_opts.push((k["file.".len()..].to_string(), v));
            }
            "driver" => spec.driver = Some(v),
            "file.filename" | "filename" => {
                spec.filename = v.into();
                have_file = true;
            }
            "key-secret" | "encrypt.key-secret" => spec.key_secret = Some(v),
            "file.driver" if v == "file" => {}
            "file" => {
                spec.filename = v.into();
                have_file = true;
            }
            _ => {
                return Err(Error::Msg(format!(
                    "Could not open '{name}': Block format '{}' does not support the option '{k}'",
                    spec.driver.as_deref().unwrap_or("raw")
                )))
            }
        }
    }
    match file_driver.as_deref() {
        Some("blkdebug") => {
            if have_file {
                return Err(Error::Msg(format!(
                    "Could not open '{name}': Block protocol 'blkdebug' doesn't support the option 'filename'"
                )));
            }
            let b = crate::blkdebug::spec_from_options(name, &file_opts)?;
            spec.filename = b.image.clone();
            spec.blkdebug = Some(b);
            return Ok(Some(spec));
        }
        Some(d) => {
            return Err(Error::Msg(format!(
                "Could not open '{name}': Unknown protocol '{d}' (oxemu-img opens file and blkdebug here)"
            )))
        }
        None => {}
    }
    if let Some((k, _)) = file_opts.first() {
        return Err(Error::Msg(format!(
            "Could not open '{name}': Block protocol 'file' doesn't support the option '{k}'"
        )));
    }
    if !have_file {
        return Err(Error::Msg(format!(
            "Could not open '{name}': A block device must be specified for \"file\""
        )));
    }
    Ok(Some(spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyval_and_base64() {
        assert_eq!(
            oxemu_opts::keyval::pairs("secret,id=a,data=x,,y"),
            vec![
                ("secret".to_string(), None),
                ("id".into(), Some("a".into())),
                ("data".into(), Some("x,y".into()))
            ]
        );
        assert_eq!(base64_decode("YWJj").unwrap(), b"abc");
        assert_eq!(base64_decode("YWI=").unwrap(), b"ab");
        assert!(base64_decode("Y*").is_none());
    }

    #[test]
    fn secrets_by_id() {
        add_object("secret,id=t1,data=pw").unwrap();
        add_object("secret,id=t2,format=base64,data=cHc=").unwrap();
        assert_eq!(secret("t1").unwrap(), b"pw");
        assert_eq!(secret("t2").unwrap(), b"pw");
        assert!(add_object("secret,id=t1,data=x").is_err());
        assert_eq!(
            secret("nope").unwrap_err().to_string(),
            "No secret with id 'nope'"
        );
        assert!(add_object("secret,id=t3").is_err());
    }

    #[test]
    fn json_names_are_image_specs() {
        let s = image_spec(
            r#"json:{"driver":"luks","key-secret":"s","file":{"driver":"file","filename":"/a"}}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.driver.as_deref(), Some("luks"));
        assert_eq!(s.key_secret.as_deref(), Some("s"));
        assert_eq!(s.filename, PathBuf::from("/a"));
    }
}
