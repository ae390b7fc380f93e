//! `oxemu-img snapshot [-U] [-q] [-l | -a snapshot | -c snapshot | -d snapshot] filename`:
//! list, apply, create and delete internal snapshots, as qemu-img 7.2 does.

use std::path::Path;

use oxemu_opts::size::human_size;
use oxemu_qcow2::snapshot::Snapshot;
use oxemu_qcow2::NewSnapshot;

use crate::image::{self, Cache, OpenOpts};
use crate::map::event_loop;
use crate::Error;
use oxemu_opts::getopt::{opt, parse, Opt};

const SPEC: &[Opt] = &[
    opt(Some('l'), None, false),
    opt(Some('a'), None, true),
    opt(Some('c'), None, true),
    opt(Some('d'), None, true),
    opt(Some('h'), Some("help"), false),
    opt(Some('q'), None, false),
    opt(Some('U'), Some("force-share"), false),
    opt(None, Some("object"), true),
    opt(None, Some("image-opts"), false),
];

/// The header line of qemu-img's snapshot table (`bdrv_snapshot_dump(NULL)`).
pub fn table_header() -> String {
    format!(
        "{:<10}{:<17}{:>8}{:>20}{:>13}{:>11}",
        "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT"
    )
}

/// `date_sec` as `%Y-%m-%d %H:%M:%S` in local time, as QEMU shows it.
fn local_date(date_sec: u32) -> String {
    let t = date_sec as libc::time_t;
    // SAFETY: an all-zero `tm` is a valid value; localtime_r only writes into it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return String::new();
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// One row of qemu-img's snapshot table (`bdrv_snapshot_dump(sn)`), no newline.
pub fn table_row(s: &Snapshot) -> String {
    let ns = s.vm_clock_nsec;
    let secs = ns / 1_000_000_000;
    let clock = format!(
        "{:02}:{:02}:{:02}.{:03}",
        (secs / 3600) as i32,
        ((secs / 60) % 60) as i32,
        (secs % 60) as i32,
        ((ns / 1_000_000) % 1000) as i32
    );
    let icount = match s.icount {
        Some(i) if i != u64::MAX => (i as i64).to_string(),
        _ => String::new(),
    };
    format!(
        "{:<9} {:<16} {:>8}{:>20}{:>13}{:>11}",
        s.id,
        s.name,
        human_size(s.vm_state_size),
        local_date(s.date_sec),
        clock,
        icount
    )
}

/// The "Snapshot list:" block of `snapshot -l` and `info` (empty without snapshots).
pub fn dump(snaps: &[Snapshot]) -> String {
    if snaps.is_empty() {
        return String::new();
    }
    let mut out = format!("Snapshot list:\n{}\n", table_header());
    for s in snaps {
        out += &table_row(s);
        out.push('\n');
    }
    out
}

/// qemu-img's `SnapshotInfo` of one snapshot, as JSON (keys in the order qemu-img
/// 7.2 prints them).
pub fn to_json(s: &Snapshot) -> serde_json::Value {
    let mut o = serde_json::Map::new();
    if let Some(i) = s.icount.filter(|&i| i != u64::MAX) {
        o.insert("icount".into(), (i as i64).into());
    }
    o.insert(
        "vm-clock-nsec".into(),
        (s.vm_clock_nsec % 1_000_000_000).into(),
    );
    o.insert("name".into(), s.name.clone().into());
    o.insert("date-sec".into(), s.date_sec.into());
    o.insert("date-nsec".into(), s.date_nsec.into());
    o.insert(
        "vm-clock-sec".into(),
        (s.vm_clock_nsec / 1_000_000_000).into(),
    );
    o.insert("id".into(), s.id.clone().into());
    o.insert("vm-state-size".into(), s.vm_state_size.into());
    serde_json::Value::Object(o)
}

/// strerror() of an OS error, or the error's text.
fn reason(e: &std::io::Error) -> String {
    crate::strip_os_errors(&e.to_string())
}

/// QEMU's `-errno (strerror)` for an error; errors without an errno are shown as EIO
/// followed by the message.
fn errno_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => format!("-{n} ({})", reason(e)),
        None => format!("-{} (Input/output error: {e})", libc::EIO),
    }
}

enum Action {
    None,
    List,
    Apply(String),
    Create(String),
    Delete(String),
}

/// Runs `snapshot`.
pub fn run(argv: &[String]) -> Result<(), Error> {
    let p = parse(argv, SPEC)?;
    let mut action = Action::None;
    for (k, v) in &p.opts {
        let next = match k.as_str() {
            "l" => Action::List,
            "a" => Action::Apply(v.clone()),
            "c" => Action::Create(v.clone()),
            "d" => Action::Delete(v.clone()),
            "help" => {
                print!("{}", crate::HELP);
                return Ok(());
            }
            "object" | "image-opts" => {
                return Err(Error::Msg(format!(
                    "--{k} is not supported by oxemu-img snapshot yet"
                )))
            }
            _ => continue,
        };
        if !matches!(action, Action::None) {
            return Err(Error::Usage("Cannot mix '-l', '-a', '-c', '-d'".into()));
        }
        action = next;
    }
    let [file] = p.args.as_slice() else {
        return Err(Error::Usage("Expecting one image file name".into()));
    };
    let img = image::open(
        Path::new(file),
        &OpenOpts {
            format: None,
            cache: Cache::default(),
            aio: Default::default(),
            read_only: matches!(action, Action::List),
            force_share: p.has("force-share"),
            no_backing: false,
            no_share: false,
        },
    )?;
    let q = img.qcow2.as_ref().and_then(|c| c.qcow2.clone());
    let lp = event_loop()?;
    let res = lp.block_on(async {
        let r = match (&action, &q) {
            (Action::None, _) => Ok(()),
            (Action::List, None) => Ok(()),
            (Action::List, Some(q)) => match q.snapshot_list().await {
                Ok(s) => {
                    print!("{}", dump(&s));
                    Ok(())
                }
                Err(e) => Err(Error::Msg(e.to_string())),
            },
            (Action::Create(name), q) => {
                let r = match q {
                    None => Err(std::io::Error::from_raw_os_error(libc::ENOTSUP)),
                    Some(q) => {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap_or_default();
                        let new = NewSnapshot {
                            name: name.clone(),
                            date_sec: now.as_secs() as u32,
                            // g_get_real_time() has microsecond resolution.
                            date_nsec: now.subsec_micros() * 1000,
                            vm_clock_nsec: 0,
                            icount: 0,
                        };
                        q.snapshot_create(&new).await.map(drop)
                    }
                };
                r.map_err(|e| {
                    Error::Msg(format!(
                        "Could not create snapshot '{name}': {}",
                        errno_text(&e)
                    ))
                })
            }
            (Action::Apply(name), None) => Err(Error::Msg(format!(
                "Could not apply snapshot '{name}': Block driver does not support snapshots"
            ))),
            (Action::Apply(name), Some(q)) => q.snapshot_apply(name).await.map_err(|e| {
                Error::Msg(format!(
                    "Could not apply snapshot '{name}': Failed to load snapshot: {}",
                    reason(&e)
                ))
            }),
            (Action::Delete(name), q) => {
                let not_found = || {
                    Error::Msg(format!(
                        "Could not delete snapshot '{name}': snapshot not found"
                    ))
                };
                let Some(q) = q else {
                    return Err(not_found());
                };
                // qemu-img looks the snapshot up by name only.
                let snaps = q
                    .snapshot_list()
                    .await
                    .map_err(|e| Error::Msg(e.to_string()))?;
                let Some(sn) = snaps.iter().find(|s| &s.name == name) else {
                    return Err(not_found());
                };
                q.snapshot_delete(Some(&sn.id), Some(&sn.name))
                    .await
                    .map_err(|e| {
                        Error::Msg(format!(
                            "Could not delete snapshot '{name}': {}",
                            reason(&e)
                        ))
                    })
            }
        };
        let c = oxemu_block::BlockDriver::close(&*img.node).await;
        r.and(c.map_err(|e| Error::Msg(e.to_string())))
    });
    res
}

/// The inverse of [`to_json`] (the fields `table_row` shows), for `info`'s human
/// output, which is made from the JSON.
pub fn from_json(v: &serde_json::Value) -> Snapshot {
    let u = |k: &str| v[k].as_u64().unwrap_or(0);
    Snapshot {
        l1_table_offset: 0,
        l1_size: 0,
        id: v["id"].as_str().unwrap_or("").to_string(),
        name: v["name"].as_str().unwrap_or("").to_string(),
        date_sec: u("date-sec") as u32,
        date_nsec: u("date-nsec") as u32,
        vm_clock_nsec: u("vm-clock-sec") * 1_000_000_000 + u("vm-clock-nsec"),
        vm_state_size: u("vm-state-size"),
        disk_size: None,
        icount: v["icount"].as_i64().map(|i| i as u64),
        extra_data_size: 0,
        extra_unknown: Vec::new(),
        entry_offset: 0,
    }
}

/// Loads an internal snapshot of the opened image `img` (named `name`) for reading,
/// as `convert -l`/`-s` and `measure -l` do: `l` is QEMU's `-l` argument
/// (`snapshot.id=ID,snapshot.name=NAME` or an id-or-name), `s` the older `-s
/// ID_OR_NAME`. Does nothing when neither is given. Errors are qemu-img's.
pub fn load_tmp(
    img: &image::Image,
    name: &str,
    l: Option<&str>,
    s: Option<&str>,
) -> Result<(), Error> {
    use oxemu_qcow2::SnapshotRef;
    let r = match (l, s) {
        (Some(l), _) => SnapshotRef::parse(l).map_err(|e| {
            crate::report(&e);
            Error::Msg(format!("Failed in parsing snapshot param '{l}'"))
        })?,
        (None, Some(s)) => SnapshotRef::IdOrName(s.to_string()),
        (None, None) => return Ok(()),
    };
    let chain = img.qcow2.clone().unwrap_or_else(|| oxemu_qcow2::Image {
        format: img.format,
        path: Path::new(name).to_path_buf(),
        driver: img.node.clone(),
        qcow2: None,
    });
    event_loop()?
        .block_on(chain.load_snapshot_tmp(&r))
        .map_err(|e| Error::Msg(format!("Failed to load snapshot: {e}")))
}
