//! The `blkdebug` filter driver: fault injection with QEMU's rule syntax.
//!
//! A [`Blkdebug`] node sits above an `image` child and passes every request through,
//! except those that an *active* `inject-error` rule matches: they fail with the rule's
//! errno. Rules become active when the node above (a format driver) reports a
//! [`DebugEvent`] through [`BlockDriver::debug_event`], or when the filter itself sees
//! a write (`pwritev`, `pwritev_zero`, then `pwritev_done` once it completed):
//!
//! - an event activates the `inject-error` rules registered for it whose `state` is 0
//!   or the node's current state; the first such rule of an event first deactivates
//!   all rules that an earlier event activated (QEMU keeps one active set);
//! - `set-state` rules of the event whose `state` is 0 or the current state move the
//!   node to `new_state` (the node starts in state 1);
//! - a request fails when an active rule's `iotype` includes its type and its
//!   `sector`, if given, lies inside the request (flushes match only rules without a
//!   sector); a `once` rule is then deleted. Without `immediately`, the failure is
//!   returned after one turn of the event loop, as QEMU does.
//!
//! Rules come from a configuration file in QEMU's `-readconfig` syntax
//! ([`parse_config`]) and from the `inject-error` / `set-state` lists of the node's
//! options. QEMU's breakpoint commands (`break`, `resume`), which only qemu-io uses,
//! are not implemented.
//!
//! ```
//! use std::sync::Arc;
//! use oxemu_block::blkdebug::{Blkdebug, DebugEvent, InjectError, Rules};
//! use oxemu_block::{BlockDriver, BlockDriverExt, FileDriver, FileOptions};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("disk.raw");
//! FileDriver::create(&path, 1 << 20, false).unwrap();
//! let file = Arc::new(FileDriver::open(&FileOptions::new(&path)).unwrap());
//! let rules = Rules {
//!     inject: vec![InjectError { errno: libc::ENOSPC, once: true, ..InjectError::new(DebugEvent::Pwritev) }],
//!     set_state: vec![],
//! };
//! let dbg = Blkdebug::new(file, rules);
//! oxemu_block::EventLoop::with_defaults().unwrap().block_on(async {
//!     let e = dbg.write_at(0, &[1; 512]).await.unwrap_err();
//!     assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
//!     dbg.write_at(0, &[1; 512]).await.unwrap(); // `once`: the rule is gone
//! });
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::driver::{
    errno, BlockDriver, BlockResult, BlockStatus, NodeInfo, WriteFlags, ZeroFlags,
};
use crate::iovec::{IoVec, IoVecMut};

macro_rules! events {
    ($($(#[$m:meta])* $v:ident = $n:literal,)*) => {
        /// The events of QEMU's `BlkdebugEvent` enum, with QEMU's names.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum DebugEvent {
            $($(#[$m])* #[doc = concat!("`", $n, "`")] $v,)*
        }

        impl DebugEvent {
            /// Every event, in QEMU's order.
            pub const ALL: &'static [DebugEvent] = &[$(DebugEvent::$v,)*];

            /// QEMU's name of the event.
            pub fn name(self) -> &'static str {
                match self { $(DebugEvent::$v => $n,)* }
            }
        }
    };
}

events! {
    L1Update = "l1_update",
    L1GrowAllocTable = "l1_grow_alloc_table",
    L1GrowWriteTable = "l1_grow_write_table",
    L1GrowActivateTable = "l1_grow_activate_table",
    L2Load = "l2_load",
    L2Update = "l2_update",
    L2UpdateCompressed = "l2_update_compressed",
    L2AllocCowRead = "l2_alloc_cow_read",
    L2AllocWrite = "l2_alloc_write",
    ReadAio = "read_aio",
    ReadBackingAio = "read_backing_aio",
    ReadCompressed = "read_compressed",
    WriteAio = "write_aio",
    WriteCompressed = "write_compressed",
    VmstateLoad = "vmstate_load",
    VmstateSave = "vmstate_save",
    CowRead = "cow_read",
    CowWrite = "cow_write",
    ReftableLoad = "reftable_load",
    ReftableGrow = "reftable_grow",
    ReftableUpdate = "reftable_update",
    RefblockLoad = "refblock_load",
    RefblockUpdate = "refblock_update",
    RefblockUpdatePart = "refblock_update_part",
    RefblockAlloc = "refblock_alloc",
    RefblockAllocHookup = "refblock_alloc_hookup",
    RefblockAllocWrite = "refblock_alloc_write",
    RefblockAllocWriteBlocks = "refblock_alloc_write_blocks",
    RefblockAllocWriteTable = "refblock_alloc_write_table",
    RefblockAllocSwitchTable = "refblock_alloc_switch_table",
    ClusterAlloc = "cluster_alloc",
    ClusterAllocBytes = "cluster_alloc_bytes",
    ClusterFree = "cluster_free",
    FlushToOs = "flush_to_os",
    FlushToDisk = "flush_to_disk",
    PwritevRmwHead = "pwritev_rmw_head",
    PwritevRmwAfterHead = "pwritev_rmw_after_head",
    PwritevRmwTail = "pwritev_rmw_tail",
    PwritevRmwAfterTail = "pwritev_rmw_after_tail",
    Pwritev = "pwritev",
    PwritevZero = "pwritev_zero",
    PwritevDone = "pwritev_done",
    EmptyImagePrepare = "empty_image_prepare",
    L1ShrinkWriteTable = "l1_shrink_write_table",
    L1ShrinkFreeL2Clusters = "l1_shrink_free_l2_clusters",
    CorWrite = "cor_write",
    ClusterAllocSpace = "cluster_alloc_space",
    None = "none",
}

impl fmt::Display for DebugEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DebugEvent {
    type Err = String;
    /// Parses QEMU's name; the error is QEMU's enum error text for `event`.
    fn from_str(s: &str) -> Result<Self, String> {
        DebugEvent::ALL
            .iter()
            .copied()
            .find(|e| e.name() == s)
            .ok_or_else(|| format!("Parameter 'event' does not accept value '{s}'"))
    }
}

/// The request types of QEMU's `BlkdebugIOType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoType {
    /// `read`
    Read = 0,
    /// `write`
    Write = 1,
    /// `write-zeroes`
    WriteZeroes = 2,
    /// `discard`
    Discard = 3,
    /// `flush`
    Flush = 4,
    /// `block-status`
    BlockStatus = 5,
}

impl IoType {
    const ALL: [(IoType, &'static str); 6] = [
        (IoType::Read, "read"),
        (IoType::Write, "write"),
        (IoType::WriteZeroes, "write-zeroes"),
        (IoType::Discard, "discard"),
        (IoType::Flush, "flush"),
        (IoType::BlockStatus, "block-status"),
    ];

    fn bit(self) -> u32 {
        1 << self as u32
    }

    /// The mask of rules without an `iotype`: every type but `block-status`.
    pub const DEFAULT_MASK: u32 = 0b01_1111;
}

impl FromStr for IoType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        IoType::ALL
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(t, _)| *t)
            .ok_or_else(|| format!("Parameter 'iotype' does not accept value '{s}'"))
    }
}

/// An `inject-error` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectError {
    /// The event that activates the rule.
    pub event: DebugEvent,
    /// The state the node must be in for the event to activate it; 0: any.
    pub state: u32,
    /// Bit `t` set: requests of [`IoType`] `t` fail ([`IoType::DEFAULT_MASK`] unless
    /// `iotype` was given).
    pub iotype_mask: u32,
    /// The errno requests fail with (default `EIO`); 0 makes the rule inert.
    pub errno: i32,
    /// Only requests that contain this byte offset fail (`sector` * 512); None: any.
    pub offset: Option<u64>,
    /// Delete the rule after it failed one request.
    pub once: bool,
    /// Fail without first giving the event loop a turn.
    pub immediately: bool,
}

impl InjectError {
    /// A rule with QEMU's defaults for `event`: any state, every type but
    /// block-status, `EIO`, any sector, not once, not immediately.
    pub fn new(event: DebugEvent) -> Self {
        InjectError {
            event,
            state: 0,
            iotype_mask: IoType::DEFAULT_MASK,
            errno: libc::EIO,
            offset: None,
            once: false,
            immediately: false,
        }
    }
}

/// A `set-state` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetState {
    /// The event that triggers the change.
    pub event: DebugEvent,
    /// The state the node must be in; 0: any.
    pub state: u32,
    /// The state the node moves to.
    pub new_state: u32,
}

/// The rules of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    /// `inject-error` rules.
    pub inject: Vec<InjectError>,
    /// `set-state` rules.
    pub set_state: Vec<SetState>,
}

/// One `key = "value"` of a rule, with where it came from (for error messages).
fn rule_value<'a>(kv: &'a [(String, String)], key: &str) -> Option<&'a str> {
    kv.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn parse_num(
    kv: &[(String, String)],
    key: &str,
    min: i64,
    max: i64,
) -> Result<Option<i64>, String> {
    let Some(v) = rule_value(kv, key) else {
        return Ok(None);
    };
    let t = v.trim();
    let n = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        i64::from_str_radix(h, 16).ok()
    } else {
        t.parse::<i64>().ok()
    };
    match n {
        Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
        Some(_) => Err(format!(
            "Parameter '{key}' must be between {min} and {max}, not {v}"
        )),
        None => Err(format!("Parameter '{key}' expects a number")),
    }
}

fn parse_bool(kv: &[(String, String)], key: &str) -> Result<bool, String> {
    match rule_value(kv, key) {
        None => Ok(false),
        Some("on" | "yes" | "true" | "y") => Ok(true),
        Some("off" | "no" | "false" | "n") => Ok(false),
        // QEMU's text does not repeat the value.
        Some(_) => Err(format!("Parameter '{key}' expects 'on' or 'off'")),
    }
}

const KNOWN_INJECT: &[&str] = &[
    "event",
    "state",
    "iotype",
    "errno",
    "sector",
    "once",
    "immediately",
];
const KNOWN_SET_STATE: &[&str] = &["event", "state", "new_state"];

fn check_keys(kv: &[(String, String)], known: &[&str]) -> Result<(), String> {
    match kv.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        Some((k, _)) => Err(format!("Invalid parameter '{k}'")),
        None => Ok(()),
    }
}

fn parse_event(kv: &[(String, String)]) -> Result<DebugEvent, String> {
    rule_value(kv, "event")
        .ok_or_else(|| "Missing event name for rule".to_string())?
        .parse()
}

/// QEMU's config-file wording for an unknown event or iotype name.
fn config_wording(e: String, kv: &[(String, String)]) -> String {
    for key in ["event", "iotype"] {
        if e.starts_with(&format!("Parameter '{key}' does not accept value")) {
            return format!(
                "invalid parameter value: {}",
                rule_value(kv, key).unwrap_or("")
            );
        }
    }
    e
}

impl Rules {
    /// Adds an `inject-error` rule from its options (keys as QEMU spells them, values
    /// as strings, for example `[("event", "l2_update"), ("once", "on")]`).
    pub fn add_inject(&mut self, kv: &[(String, String)]) -> Result<(), String> {
        check_keys(kv, KNOWN_INJECT)?;
        let mut r = InjectError::new(parse_event(kv)?);
        r.state = parse_num(kv, "state", 0, u32::MAX as i64)?.unwrap_or(0) as u32;
        if let Some(t) = rule_value(kv, "iotype") {
            r.iotype_mask = t.parse::<IoType>()?.bit();
        }
        r.errno = parse_num(kv, "errno", 0, 4095)?.unwrap_or(libc::EIO as i64) as i32;
        r.offset = match parse_num(kv, "sector", -1, (i64::MAX >> 9) - 1)? {
            None | Some(-1) => None,
            Some(s) => Some(s as u64 * 512),
        };
        r.once = parse_bool(kv, "once")?;
        r.immediately = parse_bool(kv, "immediately")?;
        self.inject.push(r);
        Ok(())
    }

    /// [`Rules::add_inject`] with the wording of a config file for unknown event and
    /// iotype names (`invalid parameter value: NAME`).
    pub fn add_inject_config(&mut self, kv: &[(String, String)]) -> Result<(), String> {
        self.add_inject(kv).map_err(|e| config_wording(e, kv))
    }

    /// [`Rules::add_set_state`] with the wording of a config file.
    pub fn add_set_state_config(&mut self, kv: &[(String, String)]) -> Result<(), String> {
        self.add_set_state(kv).map_err(|e| config_wording(e, kv))
    }

    /// Adds a `set-state` rule from its options (see [`Rules::add_inject`]).
    pub fn add_set_state(&mut self, kv: &[(String, String)]) -> Result<(), String> {
        check_keys(kv, KNOWN_SET_STATE)?;
        let event = parse_event(kv)?;
        let state = parse_num(kv, "state", 0, u32::MAX as i64)?.unwrap_or(0) as u32;
        let new_state = parse_num(kv, "new_state", 0, u32::MAX as i64)?.unwrap_or(0) as u32;
        self.set_state.push(SetState {
            event,
            state,
            new_state,
        });
        Ok(())
    }
}

/// Parses a blkdebug configuration file in QEMU's `-readconfig` syntax and adds its
/// `[inject-error]` and `[set-state]` sections to `rules`:
///
/// ```text
/// # comment
/// [inject-error]
/// event = "l2_update"
/// errno = "28"
/// once = "on"
/// ```
///
/// Errors are QEMU's texts, which name neither the file nor the line (qemu-img and
/// qemu-storage-daemon print them after the image or option). As in QEMU, a line that
/// is not `key = "value"` is read as its first word with an empty value, so
/// `errno="5"` (no spaces) is the parameter `errno="5"`, and `event = l2_load` sets an
/// empty event.
pub fn parse_config(text: &str, rules: &mut Rules) -> Result<(), String> {
    enum Group {
        Inject,
        SetState,
    }
    let mut cur: Option<(Group, Vec<(String, String)>)> = None;
    let finish = |g: Option<(Group, Vec<(String, String)>)>, rules: &mut Rules| match g {
        Some((Group::Inject, kv)) => rules.add_inject_config(&kv),
        Some((Group::SetState, kv)) => rules.add_set_state_config(&kv),
        None => Ok(()),
    };
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            // `[group]` or `[group "id"]`; the id is not used.
            let name = rest.split(']').next().unwrap_or("");
            let group = name.split_whitespace().next().unwrap_or("");
            finish(cur.take(), rules)?;
            let g = match group {
                "inject-error" => Group::Inject,
                "set-state" => Group::SetState,
                _ => return Err(format!("There is no option group '{group}'")),
            };
            cur = Some((g, Vec::new()));
            continue;
        }
        let (k, v) = config_line(line);
        match cur.as_mut() {
            Some((_, kv)) => kv.push((k, v)),
            None => return Err("no group defined".into()),
        }
    }
    finish(cur.take(), rules)
}

/// One `key = "value"` line, read as QEMU's scanf patterns read it: the first word
/// (at most 63 bytes) is the key; the value is what lies between the quotes after `=`
/// (empty when the line does not have that shape).
fn config_line(line: &str) -> (String, String) {
    let word_end = line.find(char::is_whitespace).unwrap_or(line.len());
    let mut key_end = word_end.min(63);
    while !line.is_char_boundary(key_end) {
        key_end -= 1;
    }
    let key = line[..key_end].to_string();
    let value = (key_end == word_end)
        .then(|| line[word_end..].trim_start().strip_prefix('='))
        .flatten()
        .and_then(|r| r.trim_start().strip_prefix('"'))
        .map(|r| r.split('"').next().unwrap_or(""))
        .unwrap_or("");
    (key, value.chars().take(1023).collect())
}

struct State {
    state: u32,
    /// The rules, `None` once deleted (`once`).
    inject: Vec<Option<InjectError>>,
    set_state: Vec<SetState>,
    /// Indices into `inject` of the active rules, most recently activated first.
    active: Vec<usize>,
}

/// The blkdebug filter node. See the module documentation.
pub struct Blkdebug {
    image: Arc<dyn BlockDriver>,
    st: Mutex<State>,
}

impl Blkdebug {
    /// A filter over `image` with `rules`.
    pub fn new(image: Arc<dyn BlockDriver>, rules: Rules) -> Self {
        Blkdebug {
            image,
            st: Mutex::new(State {
                state: 1,
                inject: rules.inject.into_iter().map(Some).collect(),
                set_state: rules.set_state,
                active: Vec::new(),
            }),
        }
    }

    /// The image child.
    pub fn image(&self) -> &Arc<dyn BlockDriver> {
        &self.image
    }

    /// The node's current state (1 at the start).
    pub fn state(&self) -> u32 {
        self.st.lock().unwrap().state
    }

    fn event(&self, ev: DebugEvent) {
        let mut st = self.st.lock().unwrap();
        let cur = st.state;
        let mut first = true;
        // QEMU registers rules at the head of a per-event list: the last given is
        // looked at first, and is the first of the active set.
        let mut activated = Vec::new();
        for i in (0..st.inject.len()).rev() {
            let Some(r) = &st.inject[i] else { continue };
            if r.event == ev && (r.state == 0 || r.state == cur) {
                if first {
                    st.active.clear();
                    first = false;
                }
                activated.push(i);
            }
        }
        // Each activation goes to the head of the active list.
        for i in activated {
            st.active.insert(0, i);
        }
        let mut new_state = cur;
        for r in st.set_state.iter().rev() {
            if r.event == ev && (r.state == 0 || r.state == cur) {
                new_state = r.new_state;
            }
        }
        st.state = new_state;
    }

    /// The failure an active rule gives a request, if any.
    async fn check(&self, offset: u64, len: u64, t: IoType) -> BlockResult<()> {
        let hit = {
            let mut st = self.st.lock().unwrap();
            let mut hit = None;
            for (pos, &i) in st.active.iter().enumerate() {
                let Some(r) = &st.inject[i] else { continue };
                let at = match r.offset {
                    None => true,
                    Some(o) => len > 0 && o >= offset && o < offset.saturating_add(len),
                };
                if at && r.iotype_mask & t.bit() != 0 {
                    hit = Some((pos, i));
                    break;
                }
            }
            match hit {
                None => None,
                Some((pos, i)) => {
                    let r = st.inject[i].clone().unwrap();
                    if r.errno == 0 {
                        None
                    } else {
                        if r.once {
                            st.active.remove(pos);
                            st.inject[i] = None;
                        }
                        Some(r)
                    }
                }
            }
        };
        match hit {
            None => Ok(()),
            Some(r) => {
                if !r.immediately {
                    oxemu_aio::yield_now().await;
                }
                Err(errno(r.errno))
            }
        }
    }
}

#[async_trait(?Send)]
impl BlockDriver for Blkdebug {
    fn info(&self) -> NodeInfo {
        NodeInfo {
            driver: "blkdebug".into(),
            ..self.image.info()
        }
    }
    fn size(&self) -> u64 {
        self.image.size()
    }
    fn request_alignment(&self) -> u32 {
        self.image.request_alignment()
    }
    fn memory_alignment(&self) -> usize {
        self.image.memory_alignment()
    }
    fn debug_event(&self, ev: DebugEvent) {
        self.event(ev);
    }
    async fn readv(&self, offset: u64, iov: &mut IoVecMut<'_>) -> BlockResult<()> {
        self.check(offset, iov.len() as u64, IoType::Read).await?;
        self.image.readv(offset, iov).await
    }
    async fn writev(&self, offset: u64, iov: &IoVec<'_>, flags: WriteFlags) -> BlockResult<()> {
        self.event(DebugEvent::Pwritev);
        self.check(offset, iov.len() as u64, IoType::Write).await?;
        self.image.writev(offset, iov, flags).await?;
        self.event(DebugEvent::PwritevDone);
        Ok(())
    }
    async fn flush(&self) -> BlockResult<()> {
        self.check(0, 0, IoType::Flush).await?;
        self.image.flush().await
    }
    async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        self.check(offset, len, IoType::Discard).await?;
        self.image.discard(offset, len).await
    }
    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        self.event(DebugEvent::PwritevZero);
        self.check(offset, len, IoType::WriteZeroes).await?;
        self.image.write_zeroes(offset, len, flags).await?;
        self.event(DebugEvent::PwritevDone);
        Ok(())
    }
    async fn block_status(&self, offset: u64, len: u64) -> BlockResult<BlockStatus> {
        self.check(offset, len, IoType::BlockStatus).await?;
        self.image.block_status(offset, len).await
    }
    async fn truncate(&self, size: u64) -> BlockResult<()> {
        self.image.truncate(size).await
    }
    fn allocated_size(&self) -> Option<u64> {
        self.image.allocated_size()
    }
    async fn close(&self) -> BlockResult<()> {
        self.image.close().await
    }
}

#[cfg(test)]
mod tests;
