//! `query-named-block-nodes`: each node's `BlockDeviceInfo` from its real state.

use serde_json::{json, Map, Value};

use oxemu_qcow2::header::INCOMPAT_DIRTY;
use oxemu_qcow2::{Image, Qcow2};
use oxemu_qmp::QmpError;

use super::{Graph, Node};

/// What the header of a qcow2 image says, read once per query.
struct Qcow2State {
    dirty: bool,
    encrypted: bool,
    backing_file: Option<String>,
    backing_format: Option<String>,
}

async fn qcow2_state(q: &Qcow2) -> Qcow2State {
    let h = q.header().await;
    Qcow2State {
        dirty: h.incompatible_features & INCOMPAT_DIRTY != 0,
        encrypted: h.crypt_method != 0,
        backing_file: h.backing_file.clone(),
        backing_format: h.backing_format(),
    }
}

/// `ImageInfo` of an image in a backing chain (QEMU's `backing-image`), following
/// the chain further unless `flat`.
async fn image_info(
    filename: &str,
    format: &str,
    driver: &dyn oxemu_block::BlockDriver,
    qcow2: Option<&Qcow2>,
    backing: Option<&Image>,
    actual_size: bool,
    flat: bool,
) -> Map<String, Value> {
    let mut i = Map::new();
    i.insert("filename".into(), json!(filename));
    i.insert("format".into(), json!(format));
    i.insert("virtual-size".into(), json!(driver.size()));
    if actual_size {
        i.insert(
            "actual-size".into(),
            json!(driver.allocated_size().unwrap_or(0)),
        );
    }
    let mut dirty = false;
    if let Some(q) = qcow2 {
        let st = qcow2_state(q).await;
        dirty = st.dirty;
        i.insert("cluster-size".into(), json!(q.cluster_size()));
        // QEMU's qcow2 block; an encrypted image's also describes its LUKS header,
        // which oxemu does not report, so it is left out for those.
        if !st.encrypted {
            let f = q.format_specific().await;
            let mut data = json!({
                "compat": f.compat,
                "compression-type": f.compression_type,
                "refcount-bits": f.refcount_bits,
            });
            if f.compat != "0.10" {
                data["lazy-refcounts"] = json!(f.lazy_refcounts);
                data["corrupt"] = json!(f.corrupt);
                data["extended-l2"] = json!(f.extended_l2);
            }
            i.insert(
                "format-specific".into(),
                json!({"type": "qcow2", "data": data}),
            );
        }
        if st.encrypted {
            i.insert("encrypted".into(), json!(true));
        }
        if let Some(b) = &st.backing_file {
            i.insert("backing-filename".into(), json!(b));
            if let Some(img) = backing {
                i.insert(
                    "full-backing-filename".into(),
                    json!(img.path.display().to_string()),
                );
            }
            if let Some(f) = &st.backing_format {
                i.insert("backing-filename-format".into(), json!(f));
            }
        }
    }
    i.insert("dirty-flag".into(), json!(dirty));
    if let (Some(img), false) = (backing, flat) {
        let next = img.qcow2.as_deref().and_then(Qcow2::backing);
        let sub = Box::pin(image_info(
            &img.path.display().to_string(),
            img.format,
            img.driver.as_ref(),
            img.qcow2.as_deref(),
            next,
            true,
            flat,
        ))
        .await;
        i.insert("backing-image".into(), Value::Object(sub));
    }
    i
}

impl Graph {
    /// `query-named-block-nodes`. With `flat`, images carry no `backing-image` chain
    /// and `backing_file_depth` is 0, as in QEMU.
    pub fn query(&self, flat: bool) -> Result<Value, QmpError> {
        let lp = oxemu_block::EventLoop::with_defaults()?;
        let list: Vec<Value> = lp.block_on(async {
            let mut out = Vec::new();
            for n in self.nodes.values() {
                out.push(self.node_info(n, flat).await);
            }
            out
        });
        Ok(Value::Array(list))
    }

    async fn node_info(&self, n: &Node, flat: bool) -> Value {
        let shown = n.shown.as_deref().unwrap_or(&n.filename);
        let q = (n.driver == "qcow2")
            .then(|| self.qcow2s.get(&n.name))
            .flatten();
        let backing = q.and_then(|q| q.backing());
        let image = image_info(
            shown,
            &n.driver,
            n.node.as_ref(),
            q.map(|q| q.as_ref()),
            backing,
            !n.no_disk_size,
            flat,
        )
        .await;
        let encrypted = image.get("encrypted").is_some();
        let mut v = json!({
            "node-name": n.name,
            "drv": n.driver,
            "file": shown,
            "ro": n.read_only,
            "encrypted": encrypted,
            "backing_file_depth": if flat { 0 } else { n.backing_depth },
            // oxemu refuses every detect-zeroes mode but off (nodes.rs), so it is off.
            "detect_zeroes": "off",
            "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0,
            "write_threshold": 0,
            // `writeback` is a BlockBackend's write cache; a named node has none, and
            // QEMU reports true. direct/no-flush: how the node's I/O reaches the file.
            "cache": {"writeback": true, "direct": n.direct, "no-flush": n.no_flush},
            "image": Value::Object(image),
        });
        if let Some(b) = backing {
            v["backing_file"] = json!(b.path.display().to_string());
        }
        v
    }
}
