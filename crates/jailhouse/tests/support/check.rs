//! Helpers of the rule tests: one finding after a mutation of a clean set,
//! its location, and its JSON form against the documented schema.

use super::qemu_x86;
use oxemu_jailhouse::model::Cell;
use oxemu_jailhouse::{check, ConfigSet, Finding, Severity, RULES};

/// qemu-x86 with the given non-root cells.
pub fn x86(cells: Vec<Cell>) -> ConfigSet {
    ConfigSet::new(qemu_x86(), cells)
}

/// Asserts the clean set passes, applies `mutate`, and returns the single finding.
pub fn only_finding(mut set: ConfigSet, mutate: impl FnOnce(&mut ConfigSet)) -> Finding {
    assert_eq!(check(&set), vec![], "set must be clean before the mutation");
    mutate(&mut set);
    let f = check(&set);
    assert_eq!(
        f.len(),
        1,
        "expected exactly one finding, got:\n{}",
        human(&f)
    );
    f.into_iter().next().unwrap()
}

pub fn human(f: &[Finding]) -> String {
    f.iter()
        .map(Finding::to_human)
        .collect::<Vec<_>>()
        .join("\n")
}

#[track_caller]
pub fn assert_at(
    f: &Finding,
    rule: &str,
    cell: &str,
    array: Option<&str>,
    index: Option<u64>,
    address: Option<u64>,
) {
    assert_eq!(f.rule, rule, "{}", f.to_human());
    assert_eq!(f.cell, cell, "{}", f.to_human());
    assert_eq!(f.array, array, "{}", f.to_human());
    assert_eq!(f.index, index, "{}", f.to_human());
    assert_eq!(f.address, address, "{}", f.to_human());
    let info = RULES
        .iter()
        .find(|r| r.id == rule)
        .expect("rule is in the catalog");
    assert_eq!(f.severity, info.severity);
    assert_json_schema(f);
}

/// Rules whose findings are about two entries, so they must name the other side.
pub const CONFLICT_RULES: &[&str] = &[
    "arch-mismatch",
    "cell-name-duplicate",
    "mem-phys-overlap-in-cell",
    "mem-virt-overlap-in-cell",
    "mem-overlap-between-cells",
    "root-cpu-starvation",
    "cpu-overlap-between-cells",
    "cpu-not-in-root",
    "irqchip-pin-overlap-between-cells",
    "pci-device-in-two-cells",
    "cache-overlap-between-cells",
    "stream-id-conflict",
    "loadable-unreachable",
    "ivshmem-region-mismatch",
];

/// The JSON form of a finding, as documented in NOTES.md ("JSON schema"):
/// exactly these keys, these types, and the same values as the struct.
#[track_caller]
pub fn assert_json_schema(f: &Finding) {
    let v = serde_json::to_value(f).unwrap();
    let obj = v.as_object().expect("a finding is a JSON object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "address",
            "array",
            "cell",
            "details",
            "file",
            "index",
            "message",
            "other_array",
            "other_cell",
            "other_index",
            "rule",
            "severity"
        ]
    );
    assert_eq!(v["rule"], f.rule);
    assert!(v["severity"] == "error" || v["severity"] == "warning");
    assert_eq!(v["severity"] == "error", f.severity == Severity::Error);
    assert_eq!(v["cell"], f.cell.as_str());
    assert!(v["file"].is_string());
    assert!(v["message"].is_string());
    assert!(v["details"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d.is_string()));
    let opt_str = |k: &str, want: Option<&str>| {
        assert_eq!(v[k].as_str(), want, "{k}");
        assert!(v[k].is_null() || v[k].is_string(), "{k}");
    };
    let opt_u64 = |k: &str, want: Option<u64>| {
        assert_eq!(v[k].as_u64(), want, "{k}");
        assert!(v[k].is_null() || v[k].is_u64(), "{k}");
    };
    opt_str("array", f.array);
    opt_u64("index", f.index);
    opt_u64("address", f.address);
    opt_str("other_cell", f.other_cell.as_deref());
    opt_str("other_array", f.other_array);
    opt_u64("other_index", f.other_index);
    if !v["other_index"].is_null() {
        assert!(!v["other_array"].is_null(), "other_index needs other_array");
    }
    if !v["other_array"].is_null() {
        assert!(!v["other_cell"].is_null(), "other_array needs other_cell");
    }
    if CONFLICT_RULES.contains(&f.rule) {
        assert!(
            !v["other_cell"].is_null(),
            "{} names the other side",
            f.rule
        );
    }
}
