//! The daemon's QAPI schema (`schema.json`, QEMU's introspection format with readable
//! type names): the commands, argument types, return types and events oxemu
//! implements, and only those (drivers `blkdebug`, `blklogwrites`, `file`,
//! `host_device`, `qcow2`, `raw`; export types `nbd`, `vhost-user-blk`; objects `iothread`,
//! `tls-creds-x509`). The QMP server builds its command table and
//! `query-qmp-schema` from it, and the daemon refuses members it does not declare
//! (`Parameter 'x' is unexpected`) before running a command. The tests below hold
//! the typed parsers in `qapi.rs` to the same member lists.

use std::sync::OnceLock;

use serde_json::Value;

use oxemu_qmp::schema::{Schema, BUILTIN_SCHEMA};
use oxemu_qmp::QmpError;

/// The schema source.
pub const SOURCE: &str = include_str!("schema.json");

/// The parsed schema (with the QMP server's builtin part).
pub fn schema() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(|| {
        Schema::parse(&[BUILTIN_SCHEMA, SOURCE])
            .unwrap_or_else(|e| panic!("oxemu-storage-daemon's schema.json is invalid: {e}"))
    })
}

/// QEMU options the parsers read only to refuse them with an error naming them
/// (oxemu cannot honour them), by the schema type that would declare them. The
/// schema leaves them out, so introspection does not offer them.
pub const REFUSED_BY_NAME: &[(&str, &str)] = &[
    ("BlockdevOptionsBlkdebug", "align"),
    ("BlockdevOptionsBlkdebug", "max-transfer"),
    ("BlockdevOptionsBlkdebug", "opt-write-zero"),
    ("BlockdevOptionsBlkdebug", "max-write-zero"),
    ("BlockdevOptionsBlkdebug", "opt-discard"),
    ("BlockdevOptionsBlkdebug", "max-discard"),
    ("BlockdevOptionsBlkdebug", "take-child-perms"),
    ("BlockdevOptionsBlkdebug", "unshare-child-perms"),
    ("TlsCredsX509Properties", "priority"),
    ("BlockExportOptions", "iothread"),
    ("BlockExportOptionsNbd", "bitmaps"),
];

/// Refuses members type `ty` does not declare (except [`REFUSED_BY_NAME`], whose
/// parsers refuse them with a better message).
pub fn check(ty: &str, v: &Value) -> Result<(), QmpError> {
    schema().check_members_except(ty, v, REFUSED_BY_NAME)
}

/// The type `nbd-server-start`'s `addr` is checked against: QEMU's
/// `SocketAddressLegacy` (`{"type": ..., "data": {...}}`) when `data` is given, else
/// the flat `SocketAddress` that `--nbd-server` takes (an oxemu extension on QMP).
pub fn check_nbd_server(v: &Value) -> Result<(), QmpError> {
    let Some(m) = v.as_object() else {
        return Ok(());
    };
    let flat = m
        .get("addr")
        .and_then(Value::as_object)
        .filter(|a| !a.contains_key("data"));
    let Some(addr) = flat else {
        return check("q_obj_nbd-server-start-arg", v);
    };
    // The flat form, checked as the legacy one it stands for: {type, data: {...}}.
    let mut data = addr.clone();
    let mut wrapped = serde_json::Map::new();
    if let Some(t) = data.remove("type") {
        wrapped.insert("type".into(), t);
    }
    wrapped.insert("data".into(), Value::Object(data));
    let mut whole = m.clone();
    whole.insert("addr".into(), Value::Object(wrapped));
    check("q_obj_nbd-server-start-arg", &Value::Object(whole)).map_err(|e| QmpError {
        class: e.class,
        desc: e
            .desc
            .replace("'addr.data.", "'addr.")
            .replace("'addr.data'", "'addr'"),
    })
}

#[cfg(test)]
#[path = "schema_tests.rs"]
mod tests;
