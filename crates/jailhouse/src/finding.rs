//! Findings reported by the rules engine.

use serde::Serialize;
use std::fmt;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The configuration is wrong or unsafe.
    Error,
    /// Suspicious but possibly intended.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "Error",
            Severity::Warning => "Warning",
        })
    }
}

/// One rule violation, located in a cell, an array entry and an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable rule identifier, e.g. `mem-overlap-between-cells`.
    pub rule: &'static str,
    /// Severity of the rule.
    pub severity: Severity,
    /// Name of the cell the finding is located in.
    pub cell: String,
    /// File the cell came from (empty when checked in memory).
    pub file: String,
    /// Array the index refers to, e.g. `memory_regions`, `pci_devices`, `cpu_set`.
    pub array: Option<&'static str>,
    /// Entry index in that array (CPU number for `cpu_set`).
    pub index: Option<u64>,
    /// Physical address, port or stream id the finding is about.
    pub address: Option<u64>,
    /// For a conflict between two entries: the cell of the other side.
    pub other_cell: Option<String>,
    /// Array of the other side's entry.
    pub other_array: Option<&'static str>,
    /// Index of the other side's entry in `other_array` (CPU number for `cpu_set`).
    pub other_index: Option<u64>,
    /// One-line summary.
    pub message: String,
    /// Further lines explaining the finding.
    pub details: Vec<String>,
}

impl Finding {
    /// Sets the other side of a conflict (`other_cell`, `other_array`, `other_index`).
    pub fn with_other(
        mut self,
        cell: String,
        array: Option<&'static str>,
        index: Option<u64>,
    ) -> Finding {
        self.other_cell = Some(cell);
        self.other_array = array;
        self.other_index = index;
        self
    }

    /// Human form: `Error: <message> [<rule>]` then indented details.
    pub fn to_human(&self) -> String {
        let mut s = format!("{}: {} [{}]", self.severity, self.message, self.rule);
        let mut loc = format!("  in cell '{}'", self.cell);
        if !self.file.is_empty() {
            loc += &format!(" ({})", self.file);
        }
        if let (Some(a), Some(i)) = (self.array, self.index) {
            loc += &format!(", {a}[{i}]");
        }
        if let Some(addr) = self.address {
            loc += &format!(", address {addr:#x}");
        }
        if let Some(other) = &self.other_cell {
            loc += &format!("; other side: cell '{other}'");
            if let Some(a) = self.other_array {
                loc += &format!(", {a}");
                if let Some(i) = self.other_index {
                    loc += &format!("[{i}]");
                }
            }
        }
        s.push('\n');
        s += &loc;
        for d in &self.details {
            s.push_str("\n  ");
            s += d;
        }
        s
    }
}
