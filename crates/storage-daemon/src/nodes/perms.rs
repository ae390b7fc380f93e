//! Image locks from permissions, as QEMU's block layer derives them.
//!
//! Each node's users say what they need (`perm`) and what they let others do
//! (`shared`), as QEMU's `BLK_PERM_*` bits. Exports need a consistent read and, when
//! writable, writing, and share everything (QEMU's block exports do). A `raw` or
//! `blkdebug` node passes its users' needs down to its child, as a `blklogwrites` node
//! does to its `file` (its `log` is treated as a qcow2 node's file). A `qcow2` node always
//! needs a consistent read of its file, writing and resizing when it is read-write
//! (it updates metadata whatever its users do), and never shares writing or
//! resizing of it; its backing node is only read, and shares writing only if the
//! qcow2 node's users share it. The file nodes at the bottom take the lock bytes for
//! what their users need together, so a file no one uses locks nothing, and two
//! read-only exports of one raw image do not refuse each other.

use std::collections::BTreeMap;

use oxemu_block::lock::perm::{ALL, CONSISTENT_READ, GRAPH_MOD, RESIZE, WRITE, WRITE_UNCHANGED};
use oxemu_qmp::QmpError;

use super::Graph;

/// What a qcow2 node needs of its file child, given its users' `(perm, shared)`.
fn qcow2_file(read_only: bool, (p, s): (u64, u64)) -> (u64, u64) {
    let w = if read_only { 0 } else { WRITE | RESIZE };
    (p | CONSISTENT_READ | w, s & !(WRITE | RESIZE))
}

/// What a qcow2 node needs of its backing node (QEMU's default for COW children).
fn qcow2_backing((p, s): (u64, u64)) -> (u64, u64) {
    let shared = if s & WRITE != 0 { WRITE | RESIZE } else { 0 };
    (
        p & CONSISTENT_READ,
        shared | CONSISTENT_READ | GRAPH_MOD | WRITE_UNCHANGED,
    )
}

impl Graph {
    /// The `(perm, shared)` every node's users need, from the exports `(node name,
    /// writable)` down through the graph.
    fn needs<'a>(&'a self, exports: &[(String, bool)]) -> BTreeMap<String, (u64, u64)> {
        let mut need: BTreeMap<String, (u64, u64)> =
            self.nodes.keys().map(|k| (k.clone(), (0, ALL))).collect();
        let add = |need: &mut BTreeMap<String, (u64, u64)>, n: &str, (p, s): (u64, u64)| {
            if let Some(e) = need.get_mut(n) {
                e.0 |= p;
                e.1 &= s;
            }
        };
        for (n, writable) in exports {
            let w = if *writable { WRITE } else { 0 };
            add(&mut need, n, (CONSISTENT_READ | w, ALL));
        }
        // Parents before children: a node's needs are final once every node that
        // names it as a child has been handled. The graph is acyclic (children are
        // opened before their parents), so this ends.
        let mut parents: BTreeMap<&'a str, usize> =
            self.nodes.keys().map(|k| (k.as_str(), 0)).collect();
        for (name, n) in &self.nodes {
            for c in [&n.child, &n.backing, &self.logs.get(name).cloned()]
                .into_iter()
                .flatten()
            {
                if let Some(k) = parents.get_mut(c.as_str()) {
                    *k += 1;
                }
            }
        }
        let mut ready: Vec<&'a str> = parents
            .iter()
            .filter(|(_, k)| **k == 0)
            .map(|(n, _)| *n)
            .collect();
        while let Some(name) = ready.pop() {
            let node = &self.nodes[name];
            let mine = need[name];
            let mut pass = |c: &'a str, p: (u64, u64), ready: &mut Vec<&'a str>| {
                add(&mut need, c, p);
                if let Some((cn, k)) = parents.get_key_value(c).map(|(a, b)| (*a, *b)) {
                    parents.insert(cn, k - 1);
                    if k == 1 {
                        ready.push(cn);
                    }
                }
            };
            if let Some(c) = &node.child {
                let p = if node.driver == "qcow2" {
                    qcow2_file(node.read_only, mine)
                } else {
                    mine
                };
                pass(c, p, &mut ready);
            }
            if let Some(b) = &node.backing {
                pass(b, qcow2_backing(mine), &mut ready);
            }
            // A blklogwrites node's log is a metadata child: QEMU gives it what a
            // format's file gets (its `file` child gets its users' needs, above).
            if let Some(l) = self.logs.get(name) {
                pass(l, qcow2_file(node.read_only, mine), &mut ready);
            }
        }
        need
    }

    /// Sets every file node's lock bytes to what its users need with `exports`
    /// `(node name, writable)` in place. On a conflict with another process, the
    /// nodes already changed go back to what they had and QEMU's error is returned.
    pub fn apply_perms(&self, exports: &[(String, bool)]) -> Result<(), QmpError> {
        let need = self.needs(exports);
        let mut done: Vec<(&oxemu_block::FileDriver, (u64, u64))> = Vec::new();
        for (name, f) in &self.files {
            let want = need.get(name).copied().unwrap_or((0, ALL));
            let old = f.perms();
            if let Err(e) = f.set_perms(want.0, want.1) {
                for (f, old) in done {
                    let _ = f.set_perms(old.0, old.1);
                }
                return Err(QmpError::generic(e.to_string()));
            }
            done.push((f, old));
        }
        Ok(())
    }

    /// Before a qcow2 node is opened on `child`: takes what it will need of the file
    /// below, so that it never writes metadata into an image another process uses.
    pub(super) fn pretake_for_qcow2(&self, child: &str, read_only: bool) -> Result<(), QmpError> {
        let mut name = child;
        let mut need = qcow2_file(read_only, (0, ALL));
        loop {
            if let Some(f) = self.files.get(name) {
                let (p, s) = f.perms();
                return f
                    .set_perms(p | need.0, s & need.1)
                    .map_err(|e| QmpError::generic(e.to_string()));
            }
            match self.nodes.get(name) {
                Some(n) if n.driver != "qcow2" => match &n.child {
                    Some(c) => name = c,
                    None => return Ok(()),
                },
                Some(n) => {
                    // qcow2 over qcow2: the lower one updates its own file.
                    need = qcow2_file(n.read_only, need);
                    match &n.child {
                        Some(c) => name = c,
                        None => return Ok(()),
                    }
                }
                None => return Ok(()),
            }
        }
    }
}
