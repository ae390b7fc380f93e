//! The QAPI structures the daemon accepts, from QMP arguments and from command-line
//! options alike (see `oxemu_qmp::args` for how keyval strings are converted).
//!
//! Some fields are accepted for compatibility with QEMU's schema and not used yet;
//! serde reads them, the daemon does not.
#![allow(dead_code)]

use serde::Deserialize;
use serde_json::Value;

use oxemu_qmp::args::{flex_bool, flex_opt_bool, flex_opt_i64, flex_opt_u64};

/// `cache` of a blockdev.
#[derive(Deserialize, Debug, Default, Clone, Copy)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CacheOptions {
    /// O_DIRECT.
    #[serde(default, deserialize_with = "flex_bool")]
    pub direct: bool,
    /// Ignore flushes.
    #[serde(default, deserialize_with = "flex_bool")]
    pub no_flush: bool,
}

/// Declares a blockdev driver's options: its own fields plus the options every
/// driver takes (node-name, read-only, auto-read-only, force-share, cache, discard,
/// detect-zeroes). serde's `flatten` cannot be combined with `deny_unknown_fields`,
/// so the common fields are spliced in here instead.
macro_rules! blockdev_options {
    ($(#[$doc:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Deserialize, Debug, Clone)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        pub struct $name {
            $($(#[$fm])* pub $f: $t,)*
            /// Node name; generated for implicit children.
            pub node_name: Option<String>,
            /// Open read-only.
            #[serde(default, deserialize_with = "flex_bool")]
            pub read_only: bool,
            /// Fall back to read-only if writing is not permitted.
            #[serde(default, deserialize_with = "flex_bool")]
            pub auto_read_only: bool,
            /// Share all permissions.
            #[serde(default, deserialize_with = "flex_bool")]
            pub force_share: bool,
            /// Cache mode (format drivers pass it to an implicit child).
            #[serde(default)]
            pub cache: CacheOptions,
            /// `ignore` (default) or `unmap`.
            pub discard: Option<String>,
            /// `off` only.
            pub detect_zeroes: Option<String>,
        }
    };
}

blockdev_options! {
/// `driver=file` / `driver=host_device`.
pub struct FileBlockdev {
    /// Always `file` or `host_device`.
    pub driver: String,
    /// Path.
    pub filename: String,
    /// AIO engine.
    pub aio: Option<String>,
    /// `auto`, `on`, `off`.
    pub locking: Option<String>,
    /// With `aio=native`: requests per `io_submit` batch (0: the iothread's).
    #[serde(default, deserialize_with = "flex_opt_u64")]
    pub aio_max_batch: Option<u64>,
    /// `x-inline=off` (oxemu only): never run requests inline on the event loop.
    #[serde(default, rename = "x-inline", deserialize_with = "flex_opt_bool")]
    pub x_inline: Option<bool>,
}
}

blockdev_options! {
/// `driver=raw`.
pub struct RawBlockdev {
    /// Always `raw`.
    pub driver: String,
    /// The protocol child: a node name or nested options.
    pub file: Value,
    /// Window start.
    #[serde(default, deserialize_with = "flex_opt_u64")]
    pub offset: Option<u64>,
    /// Window size.
    #[serde(default, deserialize_with = "flex_opt_u64")]
    pub size: Option<u64>,
}
}

blockdev_options! {
/// `driver=blklogwrites` (QEMU's `BlockdevOptionsBlklogwrites`).
pub struct BlklogwritesBlockdev {
    /// Always `blklogwrites`.
    pub driver: String,
    /// The logged child: a node name or nested options.
    pub file: Value,
    /// The log's child: a node name or nested options.
    pub log: Value,
    /// Log sector size (default 512).
    #[serde(default, deserialize_with = "flex_opt_u64")]
    pub log_sector_size: Option<u64>,
    /// Append to an existing log.
    #[serde(default, deserialize_with = "flex_opt_bool")]
    pub log_append: Option<bool>,
    /// Entries between super block updates (default 4096).
    #[serde(default, deserialize_with = "flex_opt_u64")]
    pub log_super_update_interval: Option<u64>,
}
}

/// `SocketAddress` in its flat form (`addr.type=unix,addr.path=...`) or QMP's legacy
/// form (`{"type": "unix", "data": {"path": ...}}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketAddress {
    /// Unix socket path.
    Unix(String),
    /// Host and port.
    Inet {
        /// Host.
        host: String,
        /// Port (QAPI carries it as a string).
        port: u16,
    },
}

impl SocketAddress {
    /// Parses either form.
    pub fn from_value(v: &Value) -> Result<Self, String> {
        let obj = v
            .as_object()
            .ok_or("Invalid parameter type for 'addr', expected: object")?;
        let ty = obj
            .get("type")
            .and_then(Value::as_str)
            .ok_or("Parameter 'addr.type' is missing")?;
        let data = obj.get("data").and_then(Value::as_object).unwrap_or(obj);
        let s = |k: &str| {
            data.get(k).and_then(|x| match x {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
        };
        match ty {
            "unix" => Ok(SocketAddress::Unix(
                s("path").ok_or("Parameter 'addr.path' is missing")?,
            )),
            "inet" => {
                let host = s("host").ok_or("Parameter 'addr.host' is missing")?;
                let port = s("port").ok_or("Parameter 'addr.port' is missing")?;
                let port = port
                    .parse()
                    .map_err(|_| format!("Port '{port}' should be a number"))?;
                Ok(SocketAddress::Inet { host, port })
            }
            other => Err(format!(
                "Parameter 'addr.type' does not accept value '{other}'"
            )),
        }
    }
}

/// `block-export-add` arguments (all types; type-specific ones are optional here and
/// checked per type).
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BlockExportOptions {
    /// `nbd` or `vhost-user-blk`.
    #[serde(rename = "type")]
    pub ty: String,
    /// Export id.
    pub id: String,
    /// Exported node.
    pub node_name: String,
    /// Allow writes.
    #[serde(default, deserialize_with = "flex_opt_bool")]
    pub writable: Option<bool>,
    /// Flush after every write.
    #[serde(default, deserialize_with = "flex_opt_bool")]
    pub writethrough: Option<bool>,
    /// IoThread to run in.
    pub iothread: Option<String>,
    /// Keep the iothread even if the node is in another one.
    #[serde(default, deserialize_with = "flex_opt_bool")]
    pub fixed_iothread: Option<bool>,
    /// nbd: export name.
    pub name: Option<String>,
    /// nbd: description.
    pub description: Option<String>,
    /// nbd: dirty bitmaps (unsupported; must be empty).
    pub bitmaps: Option<Vec<Value>>,
    /// nbd: offer `qemu:allocation-depth`.
    #[serde(default, deserialize_with = "flex_opt_bool")]
    pub allocation_depth: Option<bool>,
    /// vhost-user-blk: socket address.
    pub addr: Option<Value>,
    /// vhost-user-blk: logical block size.
    #[serde(default, deserialize_with = "flex_opt_u64")]
    pub logical_block_size: Option<u64>,
    /// vhost-user-blk: number of queues.
    #[serde(default, deserialize_with = "flex_opt_u64")]
    pub num_queues: Option<u64>,
}

/// `--object` / `object-add`: the types the daemon knows.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ObjectOptions {
    /// `iothread` or `tls-creds-x509`.
    pub qom_type: String,
    /// Object id.
    pub id: String,
    /// iothread: completion polling time.
    #[serde(default, deserialize_with = "flex_opt_u64")]
    pub poll_max_ns: Option<u64>,
    /// iothread: only 0 (QEMU's default) is accepted: the loop polls for up to
    /// `poll-max-ns` without adapting the time.
    #[serde(default, deserialize_with = "flex_opt_u64")]
    pub poll_grow: Option<u64>,
    /// iothread: only 0, as `poll-grow`.
    #[serde(default, deserialize_with = "flex_opt_u64")]
    pub poll_shrink: Option<u64>,
    /// iothread: Linux AIO requests per `io_submit` batch for nodes that do not set
    /// their own (0: 32).
    #[serde(default, deserialize_with = "flex_opt_u64")]
    pub aio_max_batch: Option<u64>,
    /// tls-creds-x509: directory of PEM files.
    pub dir: Option<String>,
    /// tls-creds-x509: `server` or `client`.
    pub endpoint: Option<String>,
    /// tls-creds-x509: require client certificates.
    #[serde(default, deserialize_with = "flex_opt_bool")]
    pub verify_peer: Option<bool>,
    /// tls-creds-x509: GnuTLS priority string; refused (oxemu's TLS has none).
    pub priority: Option<String>,
}

/// `--nbd-server` / `nbd-server-start`.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NbdServerOptions {
    /// Listening address.
    pub addr: Value,
    /// Id of a `tls-creds-x509` object.
    pub tls_creds: Option<String>,
    /// Authorization object (unsupported).
    pub tls_authz: Option<String>,
    /// Connection limit (0 = unlimited, the default as in QEMU).
    #[serde(default, deserialize_with = "flex_opt_u64")]
    pub max_connections: Option<u64>,
    /// Seconds a client may take to finish the handshake (QEMU 9.1's option of the
    /// same name; default 10, 0 = no limit).
    #[serde(default, deserialize_with = "flex_opt_u64")]
    pub handshake_max_seconds: Option<u64>,
}

blockdev_options! {
/// `driver=qcow2`.
pub struct Qcow2Blockdev {
    /// Always `qcow2`.
    pub driver: String,
    /// The protocol child: a node name or nested options.
    pub file: Value,
    /// Backing image: absent = open the chain named in the image header, null = none.
    #[serde(default, deserialize_with = "deserialize_some")]
    pub backing: Option<Value>,
    /// Bytes of L2 tables to cache.
    #[serde(default, deserialize_with = "flex_opt_u64")]
    pub l2_cache_size: Option<u64>,
    /// Metadata overlap checks: `none`, `constant` or `cached` (the default).
    pub overlap_check: Option<String>,
    /// Use lazy refcounts for this open (default: as the image header says).
    #[serde(default, deserialize_with = "flex_opt_bool")]
    pub lazy_refcounts: Option<bool>,
}
}

/// Distinguishes an explicit `null` (Some(Null)) from an absent field (None).
fn deserialize_some<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

blockdev_options! {
/// `driver=blkdebug`: QEMU's `BlockdevOptionsBlkdebug`. The request-limit and
/// permission options are read so that they can be refused by name
/// (see `nodes::blkdebug`).
pub struct BlkdebugBlockdev {
    /// Always `blkdebug`.
    pub driver: String,
    /// The child the filter sits on: a node name or nested options.
    pub image: Value,
    /// A rule file in `-readconfig` syntax.
    pub config: Option<String>,
    /// Request alignment (refused: oxemu has no generic request alignment).
    #[serde(default, deserialize_with = "flex_opt_i64")]
    pub align: Option<i64>,
    /// Refused, as `align`.
    #[serde(default, deserialize_with = "flex_opt_i64")]
    pub max_transfer: Option<i64>,
    /// Refused, as `align`.
    #[serde(default, deserialize_with = "flex_opt_i64")]
    pub opt_write_zero: Option<i64>,
    /// Refused, as `align`.
    #[serde(default, deserialize_with = "flex_opt_i64")]
    pub max_write_zero: Option<i64>,
    /// Refused, as `align`.
    #[serde(default, deserialize_with = "flex_opt_i64")]
    pub opt_discard: Option<i64>,
    /// Refused, as `align`.
    #[serde(default, deserialize_with = "flex_opt_i64")]
    pub max_discard: Option<i64>,
    /// `inject-error` rules.
    pub inject_error: Option<Vec<BlkdebugInjectError>>,
    /// `set-state` rules.
    pub set_state: Option<Vec<BlkdebugSetState>>,
    /// Refused: oxemu has no permission system between nodes.
    pub take_child_perms: Option<Vec<String>>,
    /// Refused, as `take-child-perms`.
    pub unshare_child_perms: Option<Vec<String>>,
}
}

/// QEMU's `BlkdebugInjectErrorOptions`.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct BlkdebugInjectError {
    /// The event name (checked against QEMU's `BlkdebugEvent`).
    #[serde(deserialize_with = "debug_event")]
    pub event: oxemu_block::blkdebug::DebugEvent,
    /// The state the rule needs (0 or absent: any).
    #[serde(default, deserialize_with = "flex_opt_i64")]
    pub state: Option<i64>,
    /// The request type that fails.
    #[serde(default, deserialize_with = "io_type")]
    pub iotype: Option<oxemu_block::blkdebug::IoType>,
    /// The errno to fail with (default EIO).
    #[serde(default, deserialize_with = "flex_opt_i64")]
    pub errno: Option<i64>,
    /// Only requests containing this sector fail (-1 or absent: any).
    #[serde(default, deserialize_with = "flex_opt_i64")]
    pub sector: Option<i64>,
    /// Remove the rule after one failure.
    #[serde(default, deserialize_with = "flex_opt_bool")]
    pub once: Option<bool>,
    /// Fail without a turn of the event loop.
    #[serde(default, deserialize_with = "flex_opt_bool")]
    pub immediately: Option<bool>,
}

/// QEMU's `BlkdebugSetStateOptions`.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct BlkdebugSetState {
    /// The event name.
    #[serde(deserialize_with = "debug_event")]
    pub event: oxemu_block::blkdebug::DebugEvent,
    /// The state the rule needs (0 or absent: any).
    #[serde(default, deserialize_with = "flex_opt_i64")]
    pub state: Option<i64>,
    /// The state to move to.
    #[serde(deserialize_with = "flex_i64")]
    pub new_state: i64,
}

fn flex_i64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    flex_opt_i64(d).map(|v| v.unwrap_or_default())
}

/// Reads an enum member by QEMU's name; an unknown one is reported as serde's
/// unknown variant, which `from_value` words as QEMU does.
fn enum_member<'de, D: serde::Deserializer<'de>, T: std::str::FromStr>(
    d: D,
    names: &'static [&'static str],
) -> Result<T, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => s
            .parse()
            .map_err(|_| serde::de::Error::unknown_variant(&s, names)),
        other => Err(serde::de::Error::custom(format!(
            "invalid type: {other}, expected a string"
        ))),
    }
}

fn debug_event<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<oxemu_block::blkdebug::DebugEvent, D::Error> {
    enum_member(d, &[])
}

fn io_type<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<oxemu_block::blkdebug::IoType>, D::Error> {
    enum_member(d, &[]).map(Some)
}

/// `blockdev-del` arguments.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BlockdevDelArgs {
    /// The node to delete.
    pub node_name: String,
}

/// `block-export-del` arguments.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BlockExportDelArgs {
    /// The export.
    pub id: String,
    /// `safe` (default) or `hard`.
    pub mode: Option<String>,
}

/// `object-del` arguments.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ObjectDelArgs {
    /// The object.
    pub id: String,
}

/// `query-named-block-nodes` arguments.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct QueryNamedBlockNodesArgs {
    /// Leave out the `backing-image` chain of each node's image.
    #[serde(default, deserialize_with = "flex_opt_bool")]
    pub flat: Option<bool>,
}
