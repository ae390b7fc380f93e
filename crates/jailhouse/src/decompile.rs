//! Decompiler: C source in the style of Jailhouse's `configs/*.c` from a
//! binary config (`oxemu-jailhouse config dump --format=c`).
//!
//! The output is the usual `struct { ... } __attribute__((packed)) config =
//! { ... };` with designated initializers, `JAILHOUSE_*` constant names,
//! `sizeof(config.cpus)` and `ARRAY_SIZE(...)` for the counts. Compiled as
//! Jailhouse's `configs/Makefile` does (`gcc -c`, then `objcopy -O binary
//! --remove-section=.note.gnu.property`) it gives back the input byte for
//! byte. Fields that are zero are left out (C zero-fills them); bytes that a
//! C initializer cannot express through the header's named fields make the
//! decompiler refuse with [`DecompileError`] rather than emit a lossy file.

use crate::model::*;
use std::fmt::Write;

/// A config byte that Jailhouse's C structures cannot express.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot write as C: {0}")]
pub struct DecompileError(pub String);

type Res<T> = Result<T, DecompileError>;

/// Collects `.field = value,` lines at an indentation depth.
struct Out {
    s: String,
    depth: usize,
}

impl Out {
    fn line(&mut self, text: &str) {
        if text.is_empty() {
            self.s.push('\n');
            return;
        }
        for _ in 0..self.depth {
            self.s.push('\t');
        }
        self.s.push_str(text);
        self.s.push('\n');
    }
    /// `.name = value,` unless `value` is zero (`skip_zero`).
    fn field(&mut self, name: &str, value: u64) {
        if value != 0 {
            self.line(&format!(".{name} = {},", hex(value)));
        }
    }
    /// `.name = value,`, with long `A | B | C` values wrapped after a `|`
    /// the way Jailhouse's configs do (tabs count as 8 columns).
    fn named(&mut self, name: &str, value: String) {
        let text = format!(".{name} = {value},");
        if self.depth * 8 + text.len() <= 80 || !value.contains(" | ") {
            self.line(&text);
            return;
        }
        let mut lines: Vec<String> = vec![format!(".{name} =")];
        let parts: Vec<&str> = value.split(" | ").collect();
        for (i, part) in parts.iter().enumerate() {
            let sep = if i + 1 < parts.len() { " |" } else { "," };
            let width = if lines.len() == 1 { 0 } else { 8 };
            let n = lines.len() - 1;
            let cur_len = lines[n].len();
            if self.depth * 8 + width + cur_len + 1 + part.len() + sep.len() > 80 {
                lines.push(format!("\t{part}{sep}"));
            } else {
                lines[n] = format!("{} {part}{sep}", lines[n]);
            }
        }
        for l in lines {
            self.line(&l);
        }
    }
    fn open(&mut self, head: &str) {
        self.line(&format!("{head}{{"));
        self.depth += 1;
    }
    fn close(&mut self) {
        self.depth -= 1;
        self.line("},");
        if self.depth == 1 {
            self.s.push('\n');
        }
    }
}

fn hex(v: u64) -> String {
    if v < 10 {
        v.to_string()
    } else {
        format!("{v:#x}")
    }
}

/// `A | B | 0x100`, or `0` when nothing is set.
fn flag_names(value: u64, names: &[(u64, &str)]) -> String {
    let mut parts = Vec::new();
    let mut rest = value;
    for &(bit, name) in names {
        if bit != 0 && rest & bit == bit {
            parts.push(name.to_string());
            rest &= !bit;
        }
    }
    if rest != 0 {
        parts.push(format!("{rest:#x}"));
    }
    if parts.is_empty() {
        "0".into()
    } else {
        parts.join(" | ")
    }
}

const MEM_FLAGS: &[(u64, &str)] = &[
    (mem::READ, "JAILHOUSE_MEM_READ"),
    (mem::WRITE, "JAILHOUSE_MEM_WRITE"),
    (mem::EXECUTE, "JAILHOUSE_MEM_EXECUTE"),
    (mem::DMA, "JAILHOUSE_MEM_DMA"),
    (mem::IO, "JAILHOUSE_MEM_IO"),
    (mem::COMM_REGION, "JAILHOUSE_MEM_COMM_REGION"),
    (mem::LOADABLE, "JAILHOUSE_MEM_LOADABLE"),
    (mem::ROOTSHARED, "JAILHOUSE_MEM_ROOTSHARED"),
    (mem::NO_HUGEPAGES, "JAILHOUSE_MEM_NO_HUGEPAGES"),
    (mem::IO_UNALIGNED, "JAILHOUSE_MEM_IO_UNALIGNED"),
    (mem::IO_8, "JAILHOUSE_MEM_IO_8"),
    (mem::IO_16, "JAILHOUSE_MEM_IO_16"),
    (mem::IO_32, "JAILHOUSE_MEM_IO_32"),
    (mem::IO_64, "JAILHOUSE_MEM_IO_64"),
];

const CELL_FLAGS: &[(u64, &str)] = &[
    (
        cell_flags::PASSIVE_COMMREG as u64,
        "JAILHOUSE_CELL_PASSIVE_COMMREG",
    ),
    (cell_flags::TEST_DEVICE as u64, "JAILHOUSE_CELL_TEST_DEVICE"),
    (cell_flags::AARCH32 as u64, "JAILHOUSE_CELL_AARCH32"),
    (
        cell_flags::VIRTUAL_CONSOLE_PERMITTED as u64,
        "JAILHOUSE_CELL_VIRTUAL_CONSOLE_PERMITTED",
    ),
    (
        cell_flags::VIRTUAL_CONSOLE_ACTIVE as u64,
        "JAILHOUSE_CELL_VIRTUAL_CONSOLE_ACTIVE",
    ),
];

const CON_TYPES: [&str; 11] = [
    "JAILHOUSE_CON_TYPE_NONE",
    "JAILHOUSE_CON_TYPE_EFIFB",
    "JAILHOUSE_CON_TYPE_8250",
    "JAILHOUSE_CON_TYPE_PL011",
    "JAILHOUSE_CON_TYPE_XUARTPS",
    "JAILHOUSE_CON_TYPE_MVEBU",
    "JAILHOUSE_CON_TYPE_HSCIF",
    "JAILHOUSE_CON_TYPE_SCIFA",
    "JAILHOUSE_CON_TYPE_IMX",
    "JAILHOUSE_CON_TYPE_IMX_LPUART",
    "JAILHOUSE_CON_TYPE_SCIF",
];

const CON_FLAGS: &[(u64, &str)] = &[
    (0x0001, "JAILHOUSE_CON_ACCESS_MMIO"),
    (0x0002, "JAILHOUSE_CON_REGDIST_4"),
    (0x0004, "JAILHOUSE_CON_FB_1920x1080"),
    (0x1000, "JAILHOUSE_CON_INVERTED_GATE"),
    (0x2000, "JAILHOUSE_CON_MDR_QUIRK"),
];

fn arch_name(a: Arch) -> &'static str {
    match a {
        Arch::X86 => "JAILHOUSE_X86",
        Arch::Arm => "JAILHOUSE_ARM",
        Arch::Arm64 => "JAILHOUSE_ARM64",
    }
}

/// A C string literal for a char array; octal escapes so that no following
/// character can extend them. Bytes after the last non-zero one are left to
/// the zero fill.
fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let mut s = String::from("\"");
    for &b in &bytes[..end] {
        match b {
            b'"' | b'\\' => {
                s.push('\\');
                s.push(b as char);
            }
            b'?' => s.push_str("\\?"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\{b:03o}")),
        }
    }
    s.push('"');
    s
}

fn console(o: &mut Out, name: &str, c: &Console) {
    if *c == Console::default() {
        return;
    }
    o.open(&format!(".{name} = "));
    o.field("address", c.address);
    o.field("size", c.size as u64);
    if c.kind != 0 {
        let t = CON_TYPES
            .get(c.kind as usize)
            .map_or_else(|| hex(c.kind as u64), |n| n.to_string());
        o.named("type", t);
    }
    if c.flags != 0 {
        o.named("flags", flag_names(c.flags as u64, CON_FLAGS));
    }
    o.field("divider", c.divider as u64);
    o.field("gate_nr", c.gate_nr as u64);
    o.field("clock_reg", c.clock_reg);
    o.close();
}

fn memory(o: &mut Out, m: &MemRegion) {
    if m.is_zero() {
        o.line("{ 0 },");
        return;
    }
    o.open("");
    o.field("phys_start", m.phys_start);
    o.field("virt_start", m.virt_start);
    o.field("size", m.size);
    if m.flags != 0 {
        o.named("flags", flag_names(m.flags, MEM_FLAGS));
    }
    o.close();
}

/// The array members of the outer struct, in file order, as
/// (C declaration, member name, entry count).
fn members(c: &Cell) -> Vec<(String, &'static str, usize)> {
    let mut v = Vec::new();
    if !c.cpu_set.is_empty() {
        if c.cpu_set.len() % 8 == 0 {
            v.push((format!("__u64 cpus[{}]", c.cpu_set.len() / 8), "cpus", 0));
        } else {
            v.push((format!("__u8 cpus[{}]", c.cpu_set.len()), "cpus", 0));
        }
    }
    let arrays: [(&str, &'static str, usize); 7] = [
        (
            "struct jailhouse_memory",
            "mem_regions",
            c.memory_regions.len(),
        ),
        (
            "struct jailhouse_cache",
            "cache_regions",
            c.cache_regions.len(),
        ),
        ("struct jailhouse_irqchip", "irqchips", c.irqchips.len()),
        ("struct jailhouse_pio", "pio_regions", c.pio_regions.len()),
        (
            "struct jailhouse_pci_device",
            "pci_devices",
            c.pci_devices.len(),
        ),
        (
            "struct jailhouse_pci_capability",
            "pci_caps",
            c.pci_caps.len(),
        ),
        (
            "union jailhouse_stream_id",
            "stream_ids",
            c.stream_ids.len(),
        ),
    ];
    for (ty, name, n) in arrays {
        if n > 0 {
            v.push((format!("{ty} {name}[{n}]"), name, n));
        }
    }
    v
}

/// The fields of a `struct jailhouse_cell_desc` (inside `.cell = {` or `.root_cell = {`).
fn cell_desc(o: &mut Out, c: &Cell, root: bool) {
    if root {
        let h = &c.root_desc_header;
        if h[..5] != [0; 5] {
            let chars: Vec<String> = h[..5].iter().map(|b| format!("'\\{b:03o}'")).collect();
            o.named("signature", format!("{{ {} }}", chars.join(", ")));
        }
        o.field("architecture", h[5] as u64);
        o.field("revision", u16::from_le_bytes([h[6], h[7]]) as u64);
    } else {
        o.named("signature", "JAILHOUSE_CELL_DESC_SIGNATURE".into());
        o.named("architecture", arch_name(c.arch).into());
        o.named("revision", "JAILHOUSE_CONFIG_REVISION".into());
    }
    if !c.name_raw.contains(&0) {
        // No terminating NUL: a string literal would not fit the array.
        let chars: Vec<String> = c.name_raw.iter().map(|b| format!("'\\{b:03o}'")).collect();
        o.named("name", format!("{{ {} }}", chars.join(", ")));
    } else if c.name_raw != [0; 32] {
        o.named("name", c_string(&c.name_raw));
    }
    o.field("id", c.id as u64);
    if c.flags != 0 {
        o.named("flags", flag_names(c.flags as u64, CELL_FLAGS));
    }
    o.line("");
    let counts = [
        ("cpus", "cpu_set_size"),
        ("mem_regions", "num_memory_regions"),
        ("cache_regions", "num_cache_regions"),
        ("irqchips", "num_irqchips"),
        ("pio_regions", "num_pio_regions"),
        ("pci_devices", "num_pci_devices"),
        ("pci_caps", "num_pci_caps"),
        ("stream_ids", "num_stream_ids"),
    ];
    for (_, member, _) in members(c) {
        let (_, count) = counts
            .iter()
            .find(|(m, _)| *m == member)
            .copied()
            .unwrap_or(("", ""));
        if member == "cpus" {
            o.named(count, "sizeof(config.cpus)".into());
        } else {
            o.named(count, format!("ARRAY_SIZE(config.{member})"));
        }
    }
    if c.vpci_irq_base != 0
        || c.cpu_reset_address != 0
        || c.msg_reply_timeout != 0
        || c.console != Console::default()
    {
        o.line("");
    }
    o.field("vpci_irq_base", c.vpci_irq_base as u64);
    o.field("cpu_reset_address", c.cpu_reset_address);
    o.field("msg_reply_timeout", c.msg_reply_timeout);
    console(o, "console", &c.console);
}

fn pci_type(t: u8) -> String {
    match t {
        pci_type::DEVICE => "JAILHOUSE_PCI_TYPE_DEVICE".into(),
        pci_type::BRIDGE => "JAILHOUSE_PCI_TYPE_BRIDGE".into(),
        pci_type::IVSHMEM => "JAILHOUSE_PCI_TYPE_IVSHMEM".into(),
        _ => hex(t as u64),
    }
}

fn shmem_protocol(p: u16) -> String {
    let (base, name) = match p {
        0 => return "JAILHOUSE_SHMEM_PROTO_UNDEFINED".into(),
        1 => return "JAILHOUSE_SHMEM_PROTO_VETH".into(),
        0x4000..=0x7fff => (0x4000, "JAILHOUSE_SHMEM_PROTO_CUSTOM"),
        0x8000..=0xbfff => (0x8000, "JAILHOUSE_SHMEM_PROTO_VIRTIO_FRONT"),
        0xc000..=0xffff => (0xc000, "JAILHOUSE_SHMEM_PROTO_VIRTIO_BACK"),
        _ => return hex(p as u64),
    };
    let virtio = [
        "",
        " + VIRTIO_DEV_NET",
        " + VIRTIO_DEV_BLOCK",
        " + VIRTIO_DEV_CONSOLE",
    ];
    match p - base {
        0 => name.into(),
        n @ 1..=3 if base >= 0x8000 => format!("{name}{}", virtio[n as usize]),
        n => format!("{name} + {}", hex(n as u64)),
    }
}

fn u32_list(v: &[u32]) -> String {
    let items: Vec<String> = v.iter().map(|&x| format!("{x:#010x}")).collect();
    format!("{{ {} }}", items.join(", "))
}

fn pci_device(o: &mut Out, d: &PciDevice, index: usize) -> Res<()> {
    if d.is_zero() {
        o.line("{ 0 },");
        return Ok(());
    }
    if d.msi_flags & !3 != 0 {
        return Err(DecompileError(format!(
            "pci_devices[{index}]: the byte of msi_64bits/msi_maskable is {:#x}; its other six bits have no C field",
            d.msi_flags
        )));
    }
    let what = if d.is_ivshmem() { "IVSHMEM " } else { "" };
    o.open(&format!("/* {what}{} */ ", bdf_name(d.domain, d.bdf)));
    if d.kind != 0 {
        o.named("type", pci_type(d.kind));
    }
    o.field("iommu", d.iommu as u64);
    o.field("domain", d.domain as u64);
    if d.bdf != 0 {
        o.named(
            "bdf",
            format!(
                "({:#04x} << 8) | ({:#04x} << 3) | {}",
                d.bdf >> 8,
                (d.bdf >> 3) & 0x1f,
                d.bdf & 7
            ),
        );
    }
    if d.bar_mask != [0; 6] {
        o.named("bar_mask", u32_list(&d.bar_mask));
    }
    o.field("caps_start", d.caps_start as u64);
    o.field("num_caps", d.num_caps as u64);
    o.field("num_msi_vectors", d.num_msi_vectors as u64);
    o.field("msi_64bits", d.msi_64bits() as u64);
    o.field("msi_maskable", d.msi_maskable() as u64);
    o.field("num_msix_vectors", d.num_msix_vectors as u64);
    o.field("msix_region_size", d.msix_region_size as u64);
    o.field("msix_address", d.msix_address);
    o.field("shmem_regions_start", d.shmem_regions_start as u64);
    o.field("shmem_dev_id", d.shmem_dev_id as u64);
    o.field("shmem_peers", d.shmem_peers as u64);
    if d.shmem_protocol != 0 || d.is_ivshmem() {
        o.named("shmem_protocol", shmem_protocol(d.shmem_protocol));
    }
    o.close();
    Ok(())
}

/// The array initializers after the header (`.cpus = ...`, `.mem_regions = ...`).
fn arrays(o: &mut Out, c: &Cell, mmu500: bool) -> Res<()> {
    arrays_inner(o, c, mmu500)?;
    // Drop the blank line after the last array.
    if o.s.ends_with("\n\n") {
        o.s.pop();
    }
    Ok(())
}

fn arrays_inner(o: &mut Out, c: &Cell, mmu500: bool) -> Res<()> {
    if !c.cpu_set.is_empty() {
        o.open(".cpus = ");
        if c.cpu_set.len() % 8 == 0 {
            for chunk in c.cpu_set.chunks(8) {
                let v = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
                o.line(&format!("{},", hex(v)));
            }
        } else {
            for b in &c.cpu_set {
                o.line(&format!("{},", hex(*b as u64)));
            }
        }
        o.close();
    }
    if !c.memory_regions.is_empty() {
        o.open(".mem_regions = ");
        for (i, m) in c.memory_regions.iter().enumerate() {
            o.line(&format!("/* [{i}] */"));
            memory(o, m);
        }
        o.close();
    }
    if !c.cache_regions.is_empty() {
        o.open(".cache_regions = ");
        for r in &c.cache_regions {
            if *r == CacheRegion::default() {
                o.line("{ 0 },");
                continue;
            }
            o.open("");
            o.field("start", r.start as u64);
            o.field("size", r.size as u64);
            let t = match r.kind {
                0 => None,
                CACHE_L3_CODE => Some("JAILHOUSE_CACHE_L3_CODE".into()),
                CACHE_L3_DATA => Some("JAILHOUSE_CACHE_L3_DATA".into()),
                CACHE_L3 => Some("JAILHOUSE_CACHE_L3".into()),
                k => Some(hex(k as u64)),
            };
            if let Some(t) = t {
                o.named("type", t);
            }
            o.field("padding", r.padding as u64);
            if r.flags == CACHE_ROOTSHARED {
                o.named("flags", "JAILHOUSE_CACHE_ROOTSHARED".into());
            } else {
                o.field("flags", r.flags as u64);
            }
            o.close();
        }
        o.close();
    }
    if !c.irqchips.is_empty() {
        o.open(".irqchips = ");
        for ch in &c.irqchips {
            if ch.is_zero() {
                o.line("{ 0 },");
                continue;
            }
            o.open("");
            o.field("address", ch.address);
            o.field("id", ch.id as u64);
            o.field("pin_base", ch.pin_base as u64);
            if ch.pin_bitmap != [0; 4] {
                o.named("pin_bitmap", u32_list(&ch.pin_bitmap));
            }
            o.close();
        }
        o.close();
    }
    if !c.pio_regions.is_empty() {
        o.open(".pio_regions = ");
        for p in &c.pio_regions {
            o.line(&format!("PIO_RANGE({:#x}, {:#x}),", p.base, p.length));
        }
        o.close();
    }
    if !c.pci_devices.is_empty() {
        o.open(".pci_devices = ");
        for (i, d) in c.pci_devices.iter().enumerate() {
            pci_device(o, d, i)?;
        }
        o.close();
    }
    if !c.pci_caps.is_empty() {
        o.open(".pci_caps = ");
        for (i, cap) in c.pci_caps.iter().enumerate() {
            if *cap == PciCapability::default() {
                o.line("{ 0 },");
                continue;
            }
            o.open(&format!("/* [{i}] */ "));
            if cap.id & 0x8000 != 0 {
                o.named(
                    "id",
                    format!("{:#x} | JAILHOUSE_PCI_EXT_CAP", cap.id & 0x7fff),
                );
            } else {
                o.field("id", cap.id as u64);
            }
            o.field("start", cap.start as u64);
            o.field("len", cap.len as u64);
            if cap.flags == 1 {
                o.named("flags", "JAILHOUSE_PCICAPS_WRITE".into());
            } else {
                o.field("flags", cap.flags as u64);
            }
            o.close();
        }
        o.close();
    }
    if !c.stream_ids.is_empty() {
        o.open(".stream_ids = ");
        for &s in &c.stream_ids {
            if mmu500 {
                o.line(&format!(
                    "{{ .mmu500.id = {}, .mmu500.mask_out = {} }},",
                    hex((s & 0xffff) as u64),
                    hex((s >> 16) as u64)
                ));
            } else {
                o.line(&format!("{{ .id = {} }},", hex(s as u64)));
            }
        }
        o.close();
    }
    Ok(())
}

fn preamble(o: &mut Out, what: &str, members: &[(String, &'static str, usize)], head: &str) {
    let _ = write!(
        o.s,
        "/*\n * Jailhouse {what} configuration, decompiled by oxemu-jailhouse\n * (config dump --format=c). Build it as Jailhouse's configs/Makefile does.\n */\n\n\
         #include <jailhouse/types.h>\n#include <jailhouse/cell-config.h>\n\nstruct {{\n\t{head};\n"
    );
    for (decl, _, _) in members {
        let _ = writeln!(o.s, "\t{decl};");
    }
    o.s.push_str("} __attribute__((packed)) config = {\n");
    o.depth = 1;
}

/// C source of a non-root cell config.
pub fn cell_to_c(c: &Cell) -> Res<String> {
    let mut o = Out {
        s: String::new(),
        depth: 0,
    };
    preamble(
        &mut o,
        "cell",
        &members(c),
        "struct jailhouse_cell_desc cell",
    );
    o.open(".cell = ");
    cell_desc(&mut o, c, false);
    o.close();
    arrays(&mut o, c, false)?;
    o.s.push_str("};\n");
    Ok(o.s)
}

fn iommu(o: &mut Out, i: usize, u: &IommuUnit) {
    if *u == IommuUnit::default() {
        return;
    }
    o.open(&format!("[{i}] = "));
    let t = match u.kind {
        iommu_type::AMD => "JAILHOUSE_IOMMU_AMD".to_string(),
        iommu_type::INTEL => "JAILHOUSE_IOMMU_INTEL".into(),
        iommu_type::SMMUV3 => "JAILHOUSE_IOMMU_SMMUV3".into(),
        iommu_type::PVU => "JAILHOUSE_IOMMU_PVU".into(),
        iommu_type::ARM_MMU500 => "JAILHOUSE_IOMMU_ARM_MMU500".into(),
        k => hex(k as u64),
    };
    if u.kind != 0 {
        o.named("type", t);
    }
    o.field("base", u.base);
    o.field("size", u.size as u64);
    if u.extra != [0; 12] {
        if u.kind == iommu_type::AMD && u.extra[8..] == [0; 4] {
            let (bdf, base_cap, msi_cap, features) = u.amd();
            o.open(".amd = ");
            o.field("bdf", bdf as u64);
            o.field("base_cap", base_cap as u64);
            o.field("msi_cap", msi_cap as u64);
            o.field("features", features as u64);
        } else {
            let (base, size) = u.pvu_tlb();
            o.open(".tipvu = ");
            o.field("tlb_base", base);
            o.field("tlb_size", size as u64);
        }
        o.close();
    }
    o.close();
}

/// C source of a system config with its root cell.
pub fn system_to_c(sys: &SystemConfig) -> Res<String> {
    let c = &sys.root_cell;
    let mut o = Out {
        s: String::new(),
        depth: 0,
    };
    preamble(
        &mut o,
        "system",
        &members(c),
        "struct jailhouse_system header",
    );
    o.open(".header = ");
    o.named("signature", "JAILHOUSE_SYSTEM_SIGNATURE".into());
    o.named("architecture", arch_name(sys.arch()).into());
    o.named("revision", "JAILHOUSE_CONFIG_REVISION".into());
    if sys.flags != 0 {
        o.named(
            "flags",
            flag_names(
                sys.flags as u64,
                &[(1, "JAILHOUSE_SYS_VIRTUAL_DEBUG_CONSOLE")],
            ),
        );
    }
    let h = &sys.hypervisor_memory;
    if !h.is_zero() {
        o.open(".hypervisor_memory = ");
        o.field("phys_start", h.phys_start);
        o.field("virt_start", h.virt_start);
        o.field("size", h.size);
        if h.flags != 0 {
            o.named("flags", flag_names(h.flags, MEM_FLAGS));
        }
        o.close();
    }
    console(&mut o, "debug_console", &sys.debug_console);
    let p = &sys.platform;
    o.open(".platform_info = ");
    o.field("pci_mmconfig_base", p.pci_mmconfig_base);
    o.field("pci_mmconfig_end_bus", p.pci_mmconfig_end_bus as u64);
    o.field("pci_is_virtual", p.pci_is_virtual as u64);
    o.field("pci_domain", p.pci_domain as u64);
    if p.iommu_units.iter().any(|u| *u != IommuUnit::default()) {
        o.open(".iommu_units = ");
        for (i, u) in p.iommu_units.iter().enumerate() {
            iommu(&mut o, i, u);
        }
        o.close();
    }
    match &p.arch {
        ArchPlatform::X86(x) => {
            if x.tail != [0; 28] {
                return Err(DecompileError(
                    "platform_info: bytes 16-43 of the x86/arm union are not zero in an x86 config; the x86 member has no field for them".into(),
                ));
            }
            o.open(".x86 = ");
            o.field("pm_timer_address", x.pm_timer_address as u64);
            o.field("apic_mode", x.apic_mode as u64);
            o.field("padding", x.padding as u64);
            o.field("vtd_interrupt_limit", x.vtd_interrupt_limit as u64);
            o.field("tsc_khz", x.tsc_khz as u64);
            o.field("apic_khz", x.apic_khz as u64);
            o.close();
        }
        ArchPlatform::Arm(a) => {
            o.open(".arm = ");
            o.field("maintenance_irq", a.maintenance_irq as u64);
            o.field("gic_version", a.gic_version as u64);
            if a.padding != [0; 2] {
                o.named(
                    "padding",
                    format!("{{ {}, {} }}", a.padding[0], a.padding[1]),
                );
            }
            o.field("gicd_base", a.gicd_base);
            o.field("gicc_base", a.gicc_base);
            o.field("gich_base", a.gich_base);
            o.field("gicv_base", a.gicv_base);
            o.field("gicr_base", a.gicr_base);
            o.close();
        }
    }
    o.close();
    o.open(".root_cell = ");
    cell_desc(&mut o, c, true);
    o.close();
    o.close();
    let mmu500 = sys
        .used_iommus()
        .any(|(_, u)| u.kind == iommu_type::ARM_MMU500);
    arrays(&mut o, c, mmu500)?;
    o.s.push_str("};\n");
    Ok(o.s)
}
