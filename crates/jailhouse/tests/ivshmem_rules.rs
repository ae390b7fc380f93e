//! ivshmem rules: peers linked by bdf alone, peer counts, protocols, ids,
//! shared regions and write access. Same pattern as tests/rules.rs.

mod support;

use oxemu_jailhouse::{check, ConfigSet};
use support::check::*;
use support::*;

#[test]
fn ivshmem_protocol_mismatch_is_reported() {
    let set = x86(vec![ivshmem_demo(), linux_x86_demo()]);
    let f = only_finding(set, |s| s.cells[1].pci_devices[2].shmem_protocol = 0x0001);
    assert_at(
        &f,
        "ivshmem-peer-mismatch",
        "linux-x86-demo",
        Some("pci_devices"),
        Some(2),
        None,
    );
}

#[test]
fn ivshmem_peers_are_linked_by_bdf_alone_whatever_their_domain() {
    // The hypervisor's ivshmem_init links endpoints by bdf only. An inmate
    // whose device 00:00.0 says domain 1 (the root cell's says 4) still
    // talks to the root cell's 0004:00:00.0, so a protocol that differs
    // from the root's is a mismatch.
    let set = ConfigSet::new(j721e(), vec![j721e_inmate()]);
    let f = only_finding(set, |s| {
        let d = &mut s.cells[0].pci_devices[0];
        d.domain = 1;
        d.shmem_protocol = 0x0001;
    });
    assert_at(
        &f,
        "ivshmem-peer-mismatch",
        "inmate-demo",
        Some("pci_devices"),
        Some(0),
        None,
    );
    assert_eq!(f.other_cell.as_deref(), Some("k3-j721e-evm"));
    assert_eq!(
        (f.other_array, f.other_index),
        (Some("pci_devices"), Some(0))
    );
    assert!(
        f.details.iter().any(|d| d.contains("by bdf alone")),
        "{}",
        f.to_human()
    );
}

#[test]
fn ivshmem_peers_differing_only_in_domain_are_consistent() {
    let mut set = ConfigSet::new(j721e(), vec![j721e_inmate()]);
    set.cells[0].pci_devices[0].domain = 1;
    assert_eq!(check(&set), vec![]);
}

#[test]
fn ivshmem_peer_count_mismatch_across_domains_is_reported() {
    // imx8mm-inmate-demo's case: shmem_peers differs from the root cell's.
    let set = ConfigSet::new(j721e(), vec![j721e_inmate()]);
    let f = only_finding(set, |s| {
        let d = &mut s.cells[0].pci_devices[0];
        d.domain = 1;
        d.shmem_dev_id = 0;
        d.shmem_peers = 1;
    });
    assert_at(
        &f,
        "ivshmem-peer-mismatch",
        "inmate-demo",
        Some("pci_devices"),
        Some(0),
        None,
    );
    assert!(
        f.details[0].contains("shmem_peers 1 but k3-j721e-evm says 2"),
        "{}",
        f.to_human()
    );
}

#[test]
fn ivshmem_peer_id_beyond_peer_count_is_reported() {
    let set = x86(vec![ivshmem_demo(), linux_x86_demo()]);
    let f = only_finding(set, |s| s.cells[1].pci_devices[3].shmem_dev_id = 2);
    assert_at(
        &f,
        "ivshmem-peer-mismatch",
        "linux-x86-demo",
        Some("pci_devices"),
        Some(3),
        None,
    );
}

#[test]
fn ivshmem_region_mismatch_between_peers_is_reported() {
    let set = x86(vec![ivshmem_demo(), linux_x86_demo()]);
    let f = only_finding(set, |s| s.cells[1].memory_regions[9].size = 0x8000);
    assert_at(
        &f,
        "ivshmem-region-mismatch",
        "linux-x86-demo",
        Some("memory_regions"),
        Some(9),
        Some(0x3f0f_1000),
    );
}

#[test]
fn ivshmem_write_to_a_foreign_output_section_is_reported() {
    let set = x86(vec![ivshmem_demo(), linux_x86_demo()]);
    let f = only_finding(set, |s| s.cells[0].memory_regions[2].flags |= W);
    assert_at(
        &f,
        "ivshmem-write-access",
        "ivshmem-demo",
        Some("memory_regions"),
        Some(2),
        Some(0x3f0f_a000),
    );
}
