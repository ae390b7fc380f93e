//! Image file names that name something other than a local file, as qemu-img
//! accepts them, and opening them: NBD exports given as
//!
//! - `nbd://host[:port]/export`, `nbd+tcp://...` and `nbd+unix:///export?socket=path`
//!   (QEMU's `nbd_parse_uri` rules: a unix URI takes exactly the `socket` query
//!   parameter and no host; a TCP URI takes no query and needs a host);
//! - the legacy `nbd:unix:path[:exportname=name]` and `nbd:host:port[:exportname=name]`;
//! - `json:{"driver":"nbd","server":{...},"export":...}` (the NBD node itself, format
//!   `nbd`) and `json:{"file":{"driver":"nbd",...}}` or
//!   `json:{"driver":"raw"|"qcow2","file":{...}}` (a format on top).
//!
//! The image is then shown under QEMU's canonical name for the node
//! (`nbd+unix:///export?socket=path`, `nbd://host:port/export`).

use std::path::PathBuf;
use std::sync::Arc;

use oxemu_block::BlockDriver;
use oxemu_nbd::{NbdClient, NbdClientOptions, NbdTarget};
use serde_json::{Map, Value};

use crate::image::{Image, OpenOpts};
use crate::Error;

/// QEMU's default NBD port.
pub const NBD_DEFAULT_PORT: u16 = 10809;

/// A parsed NBD image name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NbdSpec {
    /// The server.
    pub target: NbdTarget,
    /// Export name; `None` selects the default export (sent as the empty name).
    pub export: Option<String>,
    /// The format named in a `json:` name (`nbd` for the bare NBD node); `None` takes
    /// `-f` or probes.
    pub format: Option<String>,
}

impl NbdSpec {
    /// QEMU's canonical file name of the NBD node (`nbd_refresh_filename`).
    pub fn canonical(&self) -> String {
        match (&self.target, &self.export) {
            (NbdTarget::Unix(p), Some(e)) => format!("nbd+unix:///{e}?socket={}", p.display()),
            (NbdTarget::Unix(p), None) => format!("nbd+unix://?socket={}", p.display()),
            (NbdTarget::Tcp { host, port }, Some(e)) => format!("nbd://{host}:{port}/{e}"),
            (NbdTarget::Tcp { host, port }, None) => format!("nbd://{host}:{port}"),
        }
    }
}

fn open_err(name: &str, msg: impl std::fmt::Display) -> Error {
    Error::Msg(format!("Could not open '{name}': {msg}"))
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `nbd[+tcp|+unix]://...`; `None` when the URI is not valid for NBD.
fn parse_uri(name: &str) -> Option<NbdSpec> {
    let (scheme, rest) = name.split_once("://")?;
    let unix = match scheme {
        "nbd" | "nbd+tcp" => false,
        "nbd+unix" => true,
        _ => return None,
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let rest = rest.split('#').next().unwrap_or(rest);
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let path = pct_decode(path);
    let p = path.strip_prefix('/').unwrap_or(&path);
    let export = (!p.is_empty()).then(|| p.to_string());
    let params: Vec<(String, String)> = query
        .map(|q| {
            q.split(['&', ';'])
                .filter(|s| !s.is_empty())
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (pct_decode(k), pct_decode(v)),
                    None => (pct_decode(kv), String::new()),
                })
                .collect()
        })
        .unwrap_or_default();
    if params.len() > 1 || (unix && params.is_empty()) || (!unix && !params.is_empty()) {
        return None;
    }
    if unix {
        if !authority.is_empty() || params[0].0 != "socket" {
            return None;
        }
        return Some(NbdSpec {
            target: NbdTarget::Unix(PathBuf::from(&params[0].1)),
            export,
            format: None,
        });
    }
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        let (h, after) = r.split_once(']')?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        None | Some("") => NBD_DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(0) => NBD_DEFAULT_PORT,
            Ok(p) => p,
            Err(_) => return None,
        },
    };
    Some(NbdSpec {
        target: NbdTarget::Tcp {
            host: pct_decode(&host),
            port,
        },
        export,
        format: None,
    })
}

/// `nbd:unix:path[:exportname=name]` and `nbd:host:port[:exportname=name]`.
fn parse_legacy(name: &str) -> Result<NbdSpec, String> {
    const EN: &str = ":exportname=";
    let (file, export) = match name.find(EN) {
        Some(i) => (&name[..i], Some(name[i + EN.len()..].to_string())),
        None => (name, None),
    };
    let export = export.filter(|e| !e.is_empty());
    let spec = file
        .strip_prefix("nbd:")
        .ok_or("File name string for NBD must start with 'nbd:'")?;
    if spec.is_empty() {
        return Err("NBD server address missing".into());
    }
    let target = if let Some(p) = spec.strip_prefix("unix:") {
        NbdTarget::Unix(PathBuf::from(p))
    } else {
        let (host, port) = if let Some(r) = spec.strip_prefix('[') {
            r.split_once("]:")
                .ok_or_else(|| format!("error parsing IPv6 address '{spec}'"))?
        } else {
            spec.split_once(':')
                .ok_or_else(|| format!("error parsing address '{spec}'"))?
        };
        let port = port
            .parse()
            .map_err(|_| format!("error parsing address '{spec}'"))?;
        NbdTarget::Tcp {
            host: host.to_string(),
            port,
        }
    };
    Ok(NbdSpec {
        target,
        export,
        format: None,
    })
}

/// Turns dotted keys (`"server.path"`) into nested objects, as QEMU's option
/// flattening allows both.
fn unflatten(m: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in m {
        let v = match v {
            Value::Object(o) => Value::Object(unflatten(o)),
            v => v.clone(),
        };
        let mut parts = k.split('.').collect::<Vec<_>>();
        let last = parts.pop().unwrap_or("");
        let mut cur = &mut out;
        for p in parts {
            let e = cur
                .entry(p.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !e.is_object() {
                *e = Value::Object(Map::new());
            }
            cur = e.as_object_mut().expect("made an object");
        }
        match (cur.get_mut(last), v) {
            (Some(Value::Object(a)), Value::Object(b)) => a.extend(b),
            (_, v) => {
                cur.insert(last.to_string(), v);
            }
        }
    }
    out
}

fn json_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The NBD options of one `driver: nbd` object.
fn nbd_from_json(o: &Map<String, Value>) -> Result<NbdSpec, String> {
    let export = json_str(o.get("export"));
    let server = o.get("server").and_then(|s| s.as_object());
    let (path, host, port) = (
        json_str(o.get("path")),
        json_str(o.get("host")),
        json_str(o.get("port")),
    );
    let target = match server {
        Some(s) => {
            if path.is_some() || host.is_some() || port.is_some() {
                return Err("Cannot use 'server' and path/host/port at the same time".into());
            }
            match json_str(s.get("type")).as_deref() {
                Some("unix") => NbdTarget::Unix(PathBuf::from(
                    json_str(s.get("path")).ok_or("Parameter 'path' is missing")?,
                )),
                Some("inet") => {
                    let host = json_str(s.get("host")).ok_or("Parameter 'host' is missing")?;
                    let p = json_str(s.get("port")).ok_or("Parameter 'port' is missing")?;
                    let port = p.parse().map_err(|_| format!("Service '{p}' unknown"))?;
                    NbdTarget::Tcp { host, port }
                }
                Some(t) => return Err(format!("Parameter 'type' does not accept value '{t}'")),
                None => return Err("Parameter 'type' is missing".into()),
            }
        }
        None => match (path, host) {
            (Some(_), Some(_)) => {
                return Err("path and host may not be used at the same time".into())
            }
            (Some(p), None) => {
                if port.is_some() {
                    return Err("port may not be used without host".into());
                }
                NbdTarget::Unix(PathBuf::from(p))
            }
            (None, Some(h)) => NbdTarget::Tcp {
                host: h,
                port: match port {
                    Some(p) => p.parse().map_err(|_| format!("Service '{p}' unknown"))?,
                    None => NBD_DEFAULT_PORT,
                },
            },
            (None, None) => return Err("NBD server address missing".into()),
        },
    };
    Ok(NbdSpec {
        target,
        export,
        format: None,
    })
}

/// `json:{...}` naming an NBD node, directly or as the `file` of a format.
fn parse_json(text: &str) -> Result<Option<NbdSpec>, String> {
    let v: Value = oxemu_opts::json::parse(text)
        .map_err(|e| format!("Could not parse the JSON options: {e}"))?;
    let Some(o) = v.as_object() else {
        return Err("Invalid JSON object given".into());
    };
    let o = unflatten(o);
    let driver = json_str(o.get("driver"));
    if driver.as_deref() == Some("nbd") {
        let mut s = nbd_from_json(&o)?;
        s.format = Some("nbd".into());
        return Ok(Some(s));
    }
    match o.get("file").and_then(|f| f.as_object()) {
        Some(f) if json_str(f.get("driver")).as_deref() == Some("nbd") => {
            let mut s = nbd_from_json(f)?;
            s.format = driver;
            Ok(Some(s))
        }
        _ => Ok(None),
    }
}

/// Parses `name` when it names an NBD export; `Ok(None)` for anything else (a local
/// file). Errors are complete qemu-img messages.
pub fn parse(name: &str) -> Result<Option<NbdSpec>, Error> {
    if let Some(j) = name.strip_prefix("json:") {
        return parse_json(j).map_err(|e| open_err(name, e));
    }
    let scheme = name.split("://").next().unwrap_or("");
    if name.contains("://") && (scheme == "nbd" || scheme.starts_with("nbd+")) {
        return parse_uri(name)
            .map(Some)
            .ok_or_else(|| open_err(name, "No valid URL specified"));
    }
    if name.starts_with("nbd:") {
        return parse_legacy(name).map(Some).map_err(|e| open_err(name, e));
    }
    Ok(None)
}

/// Opens an NBD export with the format layer on top: `raw` unless `-f`, the
/// `json:` name or the probed magic says `qcow2`; the bare node for `nbd`.
pub fn open_nbd(name: &str, spec: &NbdSpec, o: &OpenOpts<'_>) -> Result<Image, Error> {
    let canonical = spec.canonical();
    let mut co = NbdClientOptions::new(spec.target.clone(), spec.export.as_deref().unwrap_or(""));
    co.read_only = o.read_only;
    co.filename = canonical.clone();
    let client = NbdClient::connect(&co).map_err(|e| open_err(name, e))?;
    if !o.read_only && client.export_read_only() {
        // qemu-img 7.2 reports the refused write permission this way.
        return Err(open_err(name, "Could not open image: Permission denied"));
    }
    let client = Arc::new(client);
    let lp = oxemu_block::EventLoop::with_defaults()
        .map_err(|e| Error::Msg(format!("Could not create event loop: {e}")))?;
    let format = match (o.format, spec.format.as_deref()) {
        (Some(f), _) => f.to_string(),
        (None, Some(f)) => f.to_string(),
        (None, None) => {
            let mut head = [0u8; 4];
            let n = client.size().min(4) as usize;
            lp.block_on(oxemu_block::BlockDriverExt::read_at(
                &*client,
                0,
                &mut head[..n],
            ))
            .map_err(|e| open_err(name, e))?;
            if n == 4 && head == *b"QFI\xfb" {
                "qcow2"
            } else {
                "raw"
            }
            .to_string()
        }
    };
    let node: Arc<dyn BlockDriver> = client.clone();
    let (format, node, qcow2): (&'static str, Arc<dyn BlockDriver>, _) = match format.as_str() {
        "nbd" => ("nbd", node, None),
        "raw" => (
            "raw",
            Arc::new(oxemu_block::raw::RawFormat::new(node)),
            None,
        ),
        "qcow2" => {
            let q = lp
                .block_on(oxemu_qcow2::Qcow2::open(
                    node,
                    oxemu_qcow2::Qcow2OpenOptions {
                        read_only: o.read_only,
                        backing: None,
                        l2_cache_size: 0,
                        keep_bitmaps: false,
                        overlap_check: Default::default(),
                        lazy_refcounts: None,
                    },
                ))
                .map_err(|e| open_err(name, e))?;
            let img = oxemu_qcow2::Image {
                format: "qcow2",
                path: PathBuf::from(&canonical),
                driver: q.clone(),
                qcow2: Some(q.clone()),
            };
            ("qcow2", q as Arc<dyn BlockDriver>, Some(img))
        }
        f => return Err(Error::Msg(format!("Unknown file format '{f}'"))),
    };
    Ok(Image {
        node,
        format,
        file: None,
        qcow2,
        display: Some(canonical),
    })
}

/// Refuses to create a `format` image on an NBD export (only raw is implemented),
/// instead of creating a local file named like the URI.
pub fn refuse_create_on_nbd(name: &str, format: &str) -> Result<(), Error> {
    if parse(name)?.is_some() {
        return Err(Error::Msg(format!(
            "{name}: creating {format} images on NBD exports is not supported"
        )));
    }
    Ok(())
}

/// Creating a raw image on an NBD export, as QEMU's generic protocol fallback does:
/// the export must already be at least `size` bytes ("Cannot grow NBD nodes"), and
/// its first sector is zeroed. `Ok(false)` when `name` is not an NBD name (the caller
/// creates a file).
pub fn create_on_nbd(name: &str, size: u64) -> Result<bool, Error> {
    let Some(spec) = parse(name)? else {
        return Ok(false);
    };
    let fail = |m: String| Error::Msg(format!("{name}: {m}"));
    let co = NbdClientOptions::new(spec.target.clone(), spec.export.as_deref().unwrap_or(""));
    let client = NbdClient::connect(&co).map_err(|e| fail(e.to_string()))?;
    if client.export_read_only() {
        return Err(fail("Could not open image: Permission denied".into()));
    }
    if size > client.size() {
        return Err(fail("Cannot grow NBD nodes".into()));
    }
    let lp = oxemu_block::EventLoop::with_defaults()
        .map_err(|e| Error::Msg(format!("Could not create event loop: {e}")))?;
    lp.block_on(async {
        let n = client.size().min(512);
        if n > 0 {
            client
                .write_zeroes(
                    0,
                    n,
                    oxemu_block::ZeroFlags {
                        may_unmap: true,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| fail(format!("Failed to clear the new image's first sector: {e}")))?;
        }
        client.close().await.map_err(|e| fail(e.to_string()))
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(p: &str, e: Option<&str>) -> NbdSpec {
        NbdSpec {
            target: NbdTarget::Unix(p.into()),
            export: e.map(String::from),
            format: None,
        }
    }

    fn tcp(h: &str, port: u16, e: Option<&str>) -> NbdSpec {
        NbdSpec {
            target: NbdTarget::Tcp {
                host: h.into(),
                port,
            },
            export: e.map(String::from),
            format: None,
        }
    }

    #[test]
    fn uris_and_legacy_names() {
        let p = |s: &str| parse(s).unwrap().unwrap();
        assert_eq!(
            p("nbd+unix:///foo?socket=/tmp/s"),
            unix("/tmp/s", Some("foo"))
        );
        assert_eq!(p("nbd+unix://?socket=/tmp/s"), unix("/tmp/s", None));
        assert_eq!(p("nbd://h:1234/e%20x"), tcp("h", 1234, Some("e x")));
        assert_eq!(p("nbd+tcp://h"), tcp("h", 10809, None));
        assert_eq!(p("nbd://[::1]:99/a/b"), tcp("::1", 99, Some("a/b")));
        assert_eq!(p("nbd:unix:/s:exportname=x"), unix("/s", Some("x")));
        assert_eq!(p("nbd:unix:/s"), unix("/s", None));
        assert_eq!(
            p("nbd:localhost:10810:exportname=d"),
            tcp("localhost", 10810, Some("d"))
        );
        assert_eq!(
            p("nbd+unix:///foo?socket=/tmp/s").canonical(),
            "nbd+unix:///foo?socket=/tmp/s"
        );
        assert_eq!(p("nbd:h:5").canonical(), "nbd://h:5");
        assert!(parse("disk.img").unwrap().is_none());
        for bad in [
            "nbd://",
            "nbd+unix:///x",
            "nbd+unix:///x?socket=a&b=c",
            "nbd://h/x?a=b",
            "nbd+unix://h/x?socket=s",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert_eq!(e, format!("Could not open '{bad}': No valid URL specified"));
        }
    }

    #[test]
    fn json_names() {
        let s = parse(r#"json:{"driver":"nbd","server":{"type":"unix","path":"/s"},"export":"e"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(s.format.as_deref(), Some("nbd"));
        assert_eq!(s.canonical(), "nbd+unix:///e?socket=/s");
        let s = parse(
            r#"json:{"file":{"driver":"nbd","server":{"type":"inet","host":"h","port":"7"}}}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.format, None);
        assert_eq!(s.canonical(), "nbd://h:7");
        let s = parse(r#"json:{"driver":"qcow2","file.driver":"nbd","file.path":"/s"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(s.format.as_deref(), Some("qcow2"));
        assert_eq!(s.target, NbdTarget::Unix("/s".into()));
        assert!(parse(r#"json:{"driver":"file","filename":"x"}"#)
            .unwrap()
            .is_none());
    }
}
