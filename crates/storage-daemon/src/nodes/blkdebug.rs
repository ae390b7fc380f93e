//! `driver=blkdebug` nodes: QEMU's fault-injection filter over an `image` child, with
//! rules from a `config` file and from the `inject-error` / `set-state` lists.
//!
//! QEMU's request-limit options (`align`, `max-transfer`, `opt-write-zero`,
//! `max-write-zero`, `opt-discard`, `max-discard`) and permission options
//! (`take-child-perms`, `unshare-child-perms`) are refused by name: oxemu's block
//! layer neither splits nor aligns requests for a node, and has no permission system
//! between nodes, so accepting them would ignore them.

use std::sync::Arc;

use oxemu_block::blkdebug::{parse_config, Blkdebug, InjectError, Rules, SetState};
use oxemu_qmp::QmpError;

use super::{Graph, Node};
use crate::qapi::{BlkdebugBlockdev, BlkdebugInjectError, BlkdebugSetState};

fn err(m: impl Into<String>) -> QmpError {
    QmpError::generic(m.into())
}

/// Refuses the options oxemu cannot honour, naming the first one given.
fn refuse_unsupported(o: &BlkdebugBlockdev) -> Result<(), QmpError> {
    let limits = [
        ("align", o.align),
        ("max-transfer", o.max_transfer),
        ("opt-write-zero", o.opt_write_zero),
        ("max-write-zero", o.max_write_zero),
        ("opt-discard", o.opt_discard),
        ("max-discard", o.max_discard),
    ];
    if let Some((name, _)) = limits.iter().find(|(_, v)| v.is_some()) {
        return Err(err(format!(
            "blkdebug option '{name}' is not supported by oxemu (requests are not split or aligned for a node)"
        )));
    }
    let perms = [
        ("take-child-perms", &o.take_child_perms),
        ("unshare-child-perms", &o.unshare_child_perms),
    ];
    if let Some((name, _)) = perms.iter().find(|(_, v)| v.is_some()) {
        return Err(err(format!(
            "blkdebug option '{name}' is not supported by oxemu (nodes take no permissions on their children)"
        )));
    }
    Ok(())
}

/// A QAPI `int` that oxemu keeps in a narrower type.
fn ranged(what: &str, v: i64, min: i64, max: i64) -> Result<i64, QmpError> {
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(err(format!(
            "blkdebug: '{what}' must be between {min} and {max} in oxemu, not {v}"
        )))
    }
}

/// The rule an `inject-error` list element describes. `i` is its index, for errors.
fn inject_rule(i: usize, r: &BlkdebugInjectError) -> Result<InjectError, QmpError> {
    let mut rule = InjectError::new(r.event);
    let name = |f: &str| format!("inject-error[{i}].{f}");
    if let Some(s) = r.state {
        rule.state = ranged(&name("state"), s, 0, u32::MAX as i64)? as u32;
    }
    if let Some(t) = r.iotype {
        rule.iotype_mask = 1 << t as u32;
    }
    if let Some(e) = r.errno {
        rule.errno = ranged(&name("errno"), e, 0, 4095)? as i32;
    }
    rule.offset = match r.sector {
        None | Some(-1) => None,
        // QEMU compares the negative offset with each request's: it never matches.
        Some(s) if s < 0 => Some(u64::MAX),
        Some(s) => Some((s as u64).saturating_mul(512)),
    };
    rule.once = r.once.unwrap_or(false);
    rule.immediately = r.immediately.unwrap_or(false);
    Ok(rule)
}

fn set_state_rule(i: usize, r: &BlkdebugSetState) -> Result<SetState, QmpError> {
    let name = |f: &str| format!("set-state[{i}].{f}");
    Ok(SetState {
        event: r.event,
        state: ranged(&name("state"), r.state.unwrap_or(0), 0, u32::MAX as i64)? as u32,
        new_state: ranged(&name("new_state"), r.new_state, 0, u32::MAX as i64)? as u32,
    })
}

/// All rules of a node: the config file's first, then the options', as QEMU adds them.
fn rules(o: &BlkdebugBlockdev) -> Result<Rules, QmpError> {
    let mut rules = Rules::default();
    if let Some(path) = &o.config {
        let text = std::fs::read(path).map_err(|e| {
            let m = e.to_string();
            let m = m.split(" (os error").next().unwrap_or(&m);
            err(format!("Could not read blkdebug config file: {m}"))
        })?;
        parse_config(&String::from_utf8_lossy(&text), &mut rules).map_err(err)?;
    }
    for (i, r) in o.inject_error.iter().flatten().enumerate() {
        rules.inject.push(inject_rule(i, r)?);
    }
    for (i, r) in o.set_state.iter().flatten().enumerate() {
        rules.set_state.push(set_state_rule(i, r)?);
    }
    Ok(rules)
}

impl Graph {
    /// Opens a blkdebug node named `name` over its `image` child.
    pub(super) fn open_blkdebug(
        &mut self,
        o: BlkdebugBlockdev,
        name: &str,
        implicit: bool,
    ) -> Result<Node, QmpError> {
        refuse_unsupported(&o)?;
        let rules = rules(&o)?;
        let child = self.child_named(&o.image, "image", o.read_only, &o.cache, &o.discard)?;
        let c = &self.nodes[&child];
        // QEMU's name for the node; with rules given inline QEMU shows a json: object
        // of the options instead, in its dictionary's hash order.
        let config = o.config.as_deref().unwrap_or("");
        let shown = format!(
            "blkdebug:{config}:{}",
            c.shown.as_deref().unwrap_or(&c.filename)
        );
        Ok(Node {
            name: name.into(),
            driver: "blkdebug".into(),
            node: Arc::new(Blkdebug::new(c.node.clone(), rules)),
            child: Some(child.clone()),
            backing: None,
            backing_depth: 0,
            implicit,
            filename: c.filename.clone(),
            read_only: o.read_only || c.read_only,
            direct: o.cache.direct,
            no_flush: o.cache.no_flush,
            shown: Some(shown),
            no_disk_size: true,
        })
    }
}
