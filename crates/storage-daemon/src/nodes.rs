//! The daemon's block graph: named nodes opened from `--blockdev` / `blockdev-add`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};

use oxemu_block::file::{Discard, FileDriver, FileOptions, Locking};
use oxemu_block::raw::RawFormat;
use oxemu_block::BlockDriver;
use oxemu_qmp::args::from_value;
use oxemu_qmp::QmpError;

use crate::qapi::{
    BlkdebugBlockdev, BlklogwritesBlockdev, FileBlockdev, Qcow2Blockdev, RawBlockdev,
};

mod blkdebug;
mod blklogwrites;
mod perms;
mod query;

/// One node of the graph.
pub struct Node {
    /// The node's name.
    pub name: String,
    /// Driver name (`file`, `host_device`, `raw`, `qcow2`, `blkdebug`).
    pub driver: String,
    /// The opened driver.
    pub node: Arc<dyn BlockDriver>,
    /// Name of the `file` child (blkdebug: the `image` child), if any.
    pub child: Option<String>,
    /// Name of the `backing` child given as a node (qcow2 only), if any.
    pub backing: Option<String>,
    /// Depth of the backing chain below this node (`backing_file_depth`).
    pub backing_depth: u32,
    /// Created implicitly as a child; deleted with its parent.
    pub implicit: bool,
    /// Image file name (of the protocol node at the bottom).
    pub filename: String,
    /// Opened read-only.
    pub read_only: bool,
    /// Cache settings.
    pub direct: bool,
    /// Flushes ignored.
    pub no_flush: bool,
    /// The name `query-named-block-nodes` shows when it is not `filename`: QEMU's
    /// `blkdebug:CONFIG:FILE` for a blkdebug node and every node above it.
    pub shown: Option<String>,
    /// No disk size to report (`actual-size` left out): the node is, or sits on, a
    /// blkdebug node, which QEMU gives no allocated size.
    pub no_disk_size: bool,
}

/// All nodes by name.
#[derive(Default)]
pub struct Graph {
    nodes: BTreeMap<String, Node>,
    /// The qcow2 drivers of qcow2 nodes, by node name (for use as backing images).
    qcow2s: BTreeMap<String, Arc<oxemu_qcow2::Qcow2>>,
    /// The `log` child of each blklogwrites node, by node name.
    logs: BTreeMap<String, String>,
    /// The file drivers of file nodes, by node name, whose lock bytes follow what
    /// their users need (see `perms`).
    files: BTreeMap<String, Arc<FileDriver>>,
    next_implicit: u32,
}

/// QEMU's error for a value outside an enum.
fn bad(v: &str, what: &str) -> QmpError {
    QmpError::generic(format!("Parameter '{what}' does not accept value '{v}'"))
}

impl Graph {
    /// The node named `name`.
    pub fn get(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// True if another node has `name` as its child.
    fn is_child(&self, name: &str) -> bool {
        self.nodes
            .values()
            .any(|n| n.child.as_deref() == Some(name) || n.backing.as_deref() == Some(name))
            || self.logs.values().any(|l| l == name)
    }

    /// Resolves a qcow2 node's `backing` given as a node: an existing node's name (which
    /// may back several images, as a shared base does), or nested options opened as an
    /// implicit read-only node. Returns the node's name and the image to read from.
    fn backing_child(&mut self, v: &Value) -> Result<(String, oxemu_qcow2::Image, u32), QmpError> {
        let name = match v {
            Value::String(s) => {
                if !self.nodes.contains_key(s) {
                    return Err(QmpError::generic(format!(
                        "Could not open backing file: Cannot find device='{s}' nor node-name='{s}'"
                    )));
                }
                s.clone()
            }
            Value::Object(m) => {
                let mut m = m.clone();
                m.entry("read-only").or_insert(Value::Bool(true));
                self.add_inner(Value::Object(m), true).map_err(|e| {
                    QmpError::generic(format!("Could not open backing file: {}", e.desc))
                })?
            }
            _ => {
                return Err(QmpError::generic(
                    "Invalid parameter type for 'backing', expected: BlockdevRefOrNull",
                ))
            }
        };
        let n = &self.nodes[&name];
        let qcow2 = (n.driver == "qcow2")
            .then(|| self.qcow2_of(&name))
            .flatten();
        let image = oxemu_qcow2::Image {
            format: if qcow2.is_some() { "qcow2" } else { "raw" },
            path: PathBuf::from(&n.filename),
            driver: n.node.clone(),
            qcow2,
        };
        Ok((name, image, n.backing_depth + 1))
    }

    /// The qcow2 driver behind a qcow2 node.
    fn qcow2_of(&self, name: &str) -> Option<Arc<oxemu_qcow2::Qcow2>> {
        self.qcow2s.get(name).cloned()
    }

    fn check_name(&self, name: &str) -> Result<(), QmpError> {
        if name.is_empty()
            || !name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        {
            return Err(QmpError::generic(format!("Invalid node-name: '{name}'")));
        }
        if self.nodes.contains_key(name) {
            return Err(QmpError::generic(format!(
                "Duplicate nodes with node-name='{name}'"
            )));
        }
        Ok(())
    }

    /// Opens a node from blockdev options; nested children are opened as implicit
    /// nodes. Returns the new node's name.
    pub fn add(&mut self, opts: Value) -> Result<String, QmpError> {
        self.add_inner(opts, false)
    }

    fn add_inner(&mut self, opts: Value, implicit: bool) -> Result<String, QmpError> {
        let driver = opts
            .get("driver")
            .ok_or_else(|| QmpError::generic("Parameter 'driver' is missing"))?
            .as_str()
            .ok_or_else(|| {
                QmpError::generic("Invalid parameter type for 'driver', expected: string")
            })?
            .to_string();
        let given = opts
            .get("node-name")
            .and_then(Value::as_str)
            .map(str::to_string);
        let opts_detect_zeroes = opts
            .get("detect-zeroes")
            .and_then(Value::as_str)
            .map(str::to_string);
        // Options are checked before the node name, as QEMU does.
        enum Parsed {
            File(Box<FileBlockdev>),
            Raw(Box<RawBlockdev>),
            Qcow2(Box<Qcow2Blockdev>),
            Blkdebug(Box<BlkdebugBlockdev>),
            Blklogwrites(Box<BlklogwritesBlockdev>),
        }
        let parsed = match driver.as_str() {
            "file" | "host_device" => Parsed::File(from_value(opts)?),
            "raw" => Parsed::Raw(from_value(opts)?),
            "qcow2" => Parsed::Qcow2(from_value(opts)?),
            "blkdebug" => Parsed::Blkdebug(from_value(opts)?),
            "blklogwrites" => Parsed::Blklogwrites(from_value(opts)?),
            other => {
                return Err(QmpError::generic(format!(
                    "Parameter 'driver' does not accept value '{other}'"
                )))
            }
        };
        // Valid in QEMU for every driver; oxemu detects zeroes in none, so only off.
        if let Some(dz) = opts_detect_zeroes.as_deref().filter(|d| *d != "off") {
            return Err(QmpError::generic(format!(
                "detect-zeroes={dz} is not supported by oxemu (only off)"
            )));
        }
        let name = match given {
            Some(n) => {
                self.check_name(&n)?;
                n
            }
            None if implicit => {
                self.next_implicit += 1;
                format!("#block{:03}", self.next_implicit)
            }
            None => {
                return Err(QmpError::generic(
                    "'node-name' must be specified for the root node",
                ))
            }
        };
        let node = match parsed {
            Parsed::File(o) => self.open_file(*o, &name, implicit)?,
            Parsed::Raw(o) => self.open_raw(*o, &name, implicit)?,
            Parsed::Qcow2(o) => self.open_qcow2(*o, &name, implicit)?,
            Parsed::Blkdebug(o) => self.open_blkdebug(*o, &name, implicit)?,
            Parsed::Blklogwrites(o) => self.open_blklogwrites(*o, &name, implicit)?,
        };
        self.nodes.insert(name.clone(), node);
        Ok(name)
    }

    fn open_file(&mut self, o: FileBlockdev, name: &str, implicit: bool) -> Result<Node, QmpError> {
        let aio = match o.aio.as_deref() {
            None => oxemu_block::Aio::Threads,
            Some(a) => a.parse().map_err(|_| bad(a, "aio"))?,
        };
        let locking = match o.locking.as_deref() {
            None | Some("auto") => Locking::Auto,
            Some("on") => Locking::On,
            Some("off") => Locking::Off,
            Some(v) => return Err(bad(v, "locking")),
        };
        let discard = match o.discard.as_deref() {
            None | Some("ignore") | Some("off") => Discard::Ignore,
            Some("unmap") | Some("on") => Discard::Unmap,
            Some(v) => return Err(bad(v, "discard")),
        };
        let mut fo = FileOptions {
            read_only: o.read_only,
            direct: o.cache.direct,
            no_flush: o.cache.no_flush,
            aio,
            discard,
            locking,
            force_share: o.force_share,
            no_inline: o.x_inline == Some(false),
            aio_max_batch: o.aio_max_batch.unwrap_or(0),
            perms_from_users: true,
            ..FileOptions::new(PathBuf::from(&o.filename))
        };
        let f = match FileDriver::open(&fo) {
            Err(e) if o.auto_read_only && !o.read_only && e.raw_os_error().is_some() => {
                fo.read_only = true;
                FileDriver::open(&fo)?
            }
            r => r?,
        };
        let driver = f.info().driver;
        let ro = fo.read_only;
        let f = Arc::new(f);
        self.files.insert(name.to_string(), f.clone());
        Ok(Node {
            name: name.into(),
            driver,
            node: f,
            child: None,
            backing: None,
            backing_depth: 0,
            implicit,
            filename: o.filename,
            read_only: ro,
            direct: fo.direct,
            no_flush: fo.no_flush,
            shown: None,
            no_disk_size: false,
        })
    }

    /// Resolves a `file` child: an existing node's name, or nested options opened as an
    /// implicit node (inheriting the parent's read-only, cache and discard options).
    fn child(
        &mut self,
        file: &Value,
        read_only: bool,
        cache: &crate::qapi::CacheOptions,
        discard: &Option<String>,
    ) -> Result<String, QmpError> {
        self.child_named(file, "file", read_only, cache, discard)
    }

    /// [`Graph::child`] for a child option called `field`.
    fn child_named(
        &mut self,
        file: &Value,
        field: &str,
        read_only: bool,
        cache: &crate::qapi::CacheOptions,
        discard: &Option<String>,
    ) -> Result<String, QmpError> {
        match file {
            Value::String(s) => {
                if !self.nodes.contains_key(s) {
                    return Err(QmpError::generic(format!(
                        "Cannot find device='{s}' nor node-name='{s}'"
                    )));
                }
                if self.is_child(s) {
                    return Err(QmpError::generic(format!(
                        "Node '{s}' is already in use as a child"
                    )));
                }
                Ok(s.clone())
            }
            Value::Object(m) => {
                let mut m = m.clone();
                if read_only {
                    m.entry("read-only").or_insert(Value::Bool(true));
                }
                if cache.direct || cache.no_flush {
                    m.entry("cache")
                        .or_insert(json!({"direct": cache.direct, "no-flush": cache.no_flush}));
                }
                if let Some(d) = discard {
                    m.entry("discard").or_insert(Value::String(d.clone()));
                }
                self.add_inner(Value::Object(m), true)
            }
            _ => Err(QmpError::generic(format!(
                "Invalid parameter type for '{field}', expected: BlockdevRef"
            ))),
        }
    }

    fn open_qcow2(
        &mut self,
        o: Qcow2Blockdev,
        name: &str,
        implicit: bool,
    ) -> Result<Node, QmpError> {
        let overlap_check: oxemu_qcow2::overlap::OverlapCheck = match &o.overlap_check {
            None => Default::default(),
            Some(v) => v.parse().map_err(QmpError::generic)?,
        };
        let child = self.child(&o.file, o.read_only, &o.cache, &o.discard)?;
        let (cnode, cfile, cro, cdirect, cnoflush, cimplicit) = {
            let c = &self.nodes[&child];
            (
                c.node.clone(),
                c.filename.clone(),
                c.read_only,
                c.direct,
                c.no_flush,
                c.implicit,
            )
        };
        let (cshown, cno_size) = {
            let c = &self.nodes[&child];
            (c.shown.clone(), c.no_disk_size)
        };
        let read_only = o.read_only || cro;
        // `backing`: null (none), a node (by name or nested options), or absent (the
        // chain the image header names).
        let mut backing_node = None;
        let explicit: Option<Option<oxemu_qcow2::Image>> = match &o.backing {
            None => None,
            Some(Value::Null) => Some(None),
            Some(v) => match self.backing_child(v) {
                Ok((n, image, _)) => {
                    backing_node = Some(n);
                    Some(Some(image))
                }
                Err(e) => {
                    if cimplicit {
                        self.remove_tree(&child);
                    }
                    return Err(e);
                }
            },
        };
        // Lock what the node will need of its file before it writes anything there.
        let pre = self.pretake_for_qcow2(&child, read_only);
        let r = pre.and_then(|()| {
            (|| -> std::io::Result<Arc<oxemu_qcow2::Qcow2>> {
                let lp = oxemu_block::EventLoop::with_defaults()?;
                lp.block_on(async {
                    let backing = match explicit {
                        Some(b) => b,
                        None => {
                            // Peek at the header for the backing file name and format.
                            let peek = oxemu_qcow2::Qcow2::open(
                                cnode.clone(),
                                oxemu_qcow2::Qcow2OpenOptions {
                                    read_only: true,
                                    backing: None,
                                    l2_cache_size: 0,
                                    keep_bitmaps: false,
                                    overlap_check: Default::default(),
                                    lazy_refcounts: None,
                                },
                            )
                            .await?;
                            let h = peek.header().await;
                            let b = h.backing_file.clone().map(|f| (f, h.backing_format()));
                            drop(peek);
                            match b {
                                None => None,
                                Some((f, fmt)) => {
                                    let path = oxemu_qcow2::chain::backing_path(
                                        std::path::Path::new(&cfile),
                                        &f,
                                    );
                                    let file = FileOptions {
                                        read_only: true,
                                        direct: cdirect,
                                        no_flush: cnoflush,
                                        ..FileOptions::new(path.clone())
                                    };
                                    Some(
                                        oxemu_qcow2::open_image(
                                            &path,
                                            fmt.as_deref(),
                                            &oxemu_qcow2::ImageOptions {
                                                file,
                                                no_backing: false,
                                                l2_cache_size: 0,
                                            },
                                        )
                                        .await?,
                                    )
                                }
                            }
                        }
                    };
                    oxemu_qcow2::Qcow2::open(
                        cnode.clone(),
                        oxemu_qcow2::Qcow2OpenOptions {
                            read_only,
                            backing,
                            l2_cache_size: o.l2_cache_size.unwrap_or(0),
                            keep_bitmaps: false,
                            overlap_check,
                            lazy_refcounts: o.lazy_refcounts,
                        },
                    )
                    .await
                })
            })()
            .map_err(QmpError::from)
        });
        let q = match r {
            Ok(q) => q,
            Err(e) => {
                if cimplicit {
                    self.remove_tree(&child);
                }
                if let Some(b) = &backing_node {
                    if self.nodes.get(b).is_some_and(|n| n.implicit) {
                        self.remove_tree(b);
                    }
                }
                return Err(e);
            }
        };
        let backing_depth = match &backing_node {
            Some(b) => self.nodes[b].backing_depth + 1,
            None => {
                let mut d = 0;
                let mut cur = q.backing();
                while let Some(i) = cur {
                    d += 1;
                    cur = i.backing();
                }
                d
            }
        };
        self.qcow2s.insert(name.to_string(), q.clone());
        Ok(Node {
            name: name.into(),
            driver: "qcow2".into(),
            node: q,
            child: Some(child),
            backing: backing_node,
            backing_depth,
            implicit,
            filename: cfile,
            read_only,
            // Its own cache options, as for raw.
            direct: o.cache.direct,
            no_flush: o.cache.no_flush,
            shown: cshown,
            no_disk_size: cno_size,
        })
    }

    fn open_raw(&mut self, o: RawBlockdev, name: &str, implicit: bool) -> Result<Node, QmpError> {
        let child = self.child(&o.file, o.read_only, &o.cache, &o.discard)?;
        let (cnode, cimplicit) = {
            let c = &self.nodes[&child];
            (c.node.clone(), c.implicit)
        };
        let node = match RawFormat::with_window(cnode, o.offset.unwrap_or(0), o.size) {
            Ok(n) => n,
            Err(e) => {
                if cimplicit {
                    self.remove_tree(&child);
                }
                return Err(QmpError::from(e));
            }
        };
        let c = &self.nodes[&child];
        Ok(Node {
            name: name.into(),
            driver: "raw".into(),
            node: Arc::new(node),
            child: Some(child.clone()),
            backing: None,
            backing_depth: 0,
            implicit,
            filename: c.filename.clone(),
            read_only: o.read_only || c.read_only,
            // A format node reports its own cache options, as QEMU does; its I/O
            // and flushes go through the child, whose options decide them (QEMU's
            // flush also reaches the children of a no-flush node).
            direct: o.cache.direct,
            no_flush: o.cache.no_flush,
            shown: c.shown.clone(),
            no_disk_size: c.no_disk_size,
        })
    }

    /// Removes a node the monitor created, with its implicit children. `in_use` says
    /// whether an export uses it. Returns the removed drivers, to be closed.
    pub fn remove(
        &mut self,
        name: &str,
        in_use: impl Fn(&str) -> bool,
    ) -> Result<Vec<Arc<dyn BlockDriver>>, QmpError> {
        let n = self.nodes.get(name).ok_or_else(|| {
            QmpError::generic(format!("Failed to find node with node-name='{name}'"))
        })?;
        if in_use(name) {
            return Err(QmpError::generic(format!("Node {name} is in use")));
        }
        if let Some(p) = self
            .nodes
            .values()
            .find(|n| n.backing.as_deref() == Some(name))
        {
            return Err(QmpError::generic(format!(
                "Node '{name}' is busy: node is used as backing hd of '{}'",
                p.name
            )));
        }
        if self.is_child(name) {
            return Err(QmpError::generic(format!("Block device {name} is in use")));
        }
        if n.implicit {
            return Err(QmpError::generic(format!(
                "Node {name} is not owned by the monitor"
            )));
        }
        Ok(self.remove_tree(name))
    }

    /// Removes node `name`, then each of its children that was created implicitly and
    /// has no other parent, recursively. Returns the removed drivers.
    fn remove_tree(&mut self, name: &str) -> Vec<Arc<dyn BlockDriver>> {
        let Some(node) = self.nodes.remove(name) else {
            return Vec::new();
        };
        self.qcow2s.remove(name);
        let log = self.logs.remove(name);
        self.files.remove(name);
        let mut out = vec![node.node];
        for c in [node.child, node.backing, log].into_iter().flatten() {
            if self.nodes.get(&c).is_some_and(|n| n.implicit) && !self.is_child(&c) {
                out.extend(self.remove_tree(&c));
            }
        }
        out
    }

    /// Every node's driver, for shutdown.
    pub fn drain(&mut self) -> Vec<Arc<dyn BlockDriver>> {
        self.qcow2s.clear();
        self.logs.clear();
        self.files.clear();
        std::mem::take(&mut self.nodes)
            .into_values()
            .map(|n| n.node)
            .collect()
    }
}
