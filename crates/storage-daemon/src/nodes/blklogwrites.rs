//! `driver=blklogwrites` nodes: QEMU's write-logging filter over a `file` child,
//! recording every write, discard and flush in the dm-log-writes format on a `log`
//! child (see `oxemu_block::blklogwrites`).

use std::sync::Arc;

use oxemu_block::blklogwrites::{BlkLogWrites, BlkLogWritesOptions};
use oxemu_qmp::QmpError;

use super::{Graph, Node};
use crate::qapi::BlklogwritesBlockdev;

impl Graph {
    /// `driver=blklogwrites`: a filter over `file` that logs every write and flush to
    /// `log` (both children inherit read-only, cache and discard like a format's).
    pub(super) fn open_blklogwrites(
        &mut self,
        o: BlklogwritesBlockdev,
        name: &str,
        implicit: bool,
    ) -> Result<Node, QmpError> {
        if let Some(dz) = o.detect_zeroes.as_deref().filter(|d| *d != "off") {
            return Err(QmpError::generic(format!(
                "detect-zeroes={dz} is not supported by oxemu (only off)"
            )));
        }
        let file = self.child(&o.file, o.read_only, &o.cache, &o.discard)?;
        let log = match self.child(&o.log, o.read_only, &o.cache, &o.discard) {
            Ok(l) => l,
            Err(e) => {
                if self.nodes[&file].implicit {
                    self.remove_tree(&file);
                }
                return Err(e);
            }
        };
        let opts = BlkLogWritesOptions {
            log_sector_size: o.log_sector_size,
            log_append: o.log_append.unwrap_or(false),
            log_super_update_interval: o.log_super_update_interval,
            // QEMU's block layer drops discards on a node without discard=unmap.
            ignore_discards: !matches!(o.discard.as_deref(), Some("unmap") | Some("on")),
        };
        let (fnode, lnode) = (
            self.nodes[&file].node.clone(),
            self.nodes[&log].node.clone(),
        );
        let r = oxemu_block::EventLoop::with_defaults()
            .and_then(|lp| lp.block_on(BlkLogWrites::open(fnode, lnode, &opts)));
        let node = match r {
            Ok(n) => n,
            Err(e) => {
                for c in [&file, &log] {
                    if self.nodes[c].implicit {
                        self.remove_tree(c);
                    }
                }
                return Err(QmpError::from(e));
            }
        };
        let shown = self.json_name(&file, &log, &o);
        self.logs.insert(name.to_string(), log);
        let c = &self.nodes[&file];
        Ok(Node {
            name: name.into(),
            driver: "blklogwrites".into(),
            node: Arc::new(node),
            child: Some(file.clone()),
            backing: None,
            backing_depth: 0,
            implicit,
            filename: c.filename.clone(),
            read_only: o.read_only || c.read_only,
            direct: c.direct,
            no_flush: c.no_flush,
            shown: shown.or_else(|| c.shown.clone()),
            no_disk_size: c.no_disk_size,
        })
    }

    /// The `json:` name QEMU gives a blklogwrites node over two protocol nodes
    /// (keys in QEMU's order, options only when given). `None` when a child is not a
    /// protocol node: then the node shows its `file` child's name (QEMU would nest
    /// that child's options).
    fn json_name(&self, file: &str, log: &str, o: &BlklogwritesBlockdev) -> Option<String> {
        let opts = |n: &str| {
            let c = &self.nodes[n];
            matches!(c.driver.as_str(), "file" | "host_device").then(|| {
                format!(
                    "{{\"driver\": \"{}\", \"filename\": {}}}",
                    c.driver,
                    serde_json::to_string(&c.filename).unwrap()
                )
            })
        };
        let (f, l) = (opts(file)?, opts(log)?);
        let mut s = format!("json:{{\"log\": {l}, ");
        if let Some(v) = o.log_sector_size {
            s += &format!("\"log-sector-size\": {v}, ");
        }
        s += "\"driver\": \"blklogwrites\", ";
        if let Some(v) = o.log_append {
            s += &format!("\"log-append\": {v}, ");
        }
        s += &format!("\"file\": {f}}}");
        Some(s)
    }
}
