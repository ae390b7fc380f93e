//! CPU models: what the guest sees through `CPUID`, `AT_HWCAP`, and which instructions it may use.
//!
//! The named models follow QEMU's definitions (vendor, family/model/stepping, brand string and
//! feature words as `qemu-x86_64` 7.2 presents them).  Because the translator copies guest
//! instructions through to the host, a model feature the host lacks cannot be offered: such
//! features are filtered out (logged under `-d unimp`), as QEMU filters what TCG lacks.

use iced_x86::CpuidFeature;

/// A CPUID feature word: (leaf, subleaf, register index 0=eax 1=ebx 2=ecx 3=edx).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Word(pub u32, pub u32, pub u8);

/// Leaf 1 ECX.
pub const L1_ECX: Word = Word(1, 0, 2);
/// Leaf 1 EDX.
pub const L1_EDX: Word = Word(1, 0, 3);
/// Leaf 7 EBX.
pub const L7_EBX: Word = Word(7, 0, 1);
/// Leaf 7 ECX.
pub const L7_ECX: Word = Word(7, 0, 2);
/// Leaf 7 EDX.
pub const L7_EDX: Word = Word(7, 0, 3);
/// Leaf 0x80000001 ECX.
pub const E1_ECX: Word = Word(0x8000_0001, 0, 2);
/// Leaf 0x80000001 EDX.
pub const E1_EDX: Word = Word(0x8000_0001, 0, 3);
/// Leaf 0xD subleaf 1 EAX.
pub const XSAVE_EAX: Word = Word(0xd, 1, 0);

/// Feature words, in the order of [`CpuModel::words`].
pub const WORDS: [Word; 8] = [
    L1_ECX, L1_EDX, L7_EBX, L7_ECX, L7_EDX, E1_ECX, E1_EDX, XSAVE_EAX,
];

/// A CPU model definition.
#[derive(Debug, Clone)]
pub struct CpuModel {
    /// QEMU's name for it.
    pub name: &'static str,
    /// Vendor string as EBX, EDX, ECX of leaf 0.
    pub vendor: [u32; 3],
    /// Highest basic leaf.
    pub level: u32,
    /// Highest extended leaf.
    pub xlevel: u32,
    /// Leaf 1 EAX (family, model, stepping).
    pub signature: u32,
    /// Leaf 6 EAX.
    pub leaf6_eax: u32,
    /// Feature words in [`WORDS`] order.
    pub words: [u32; 8],
    /// Brand string (leaves 0x80000002..4).
    pub brand: String,
}

const AMD: [u32; 3] = [0x6874_7541, 0x6974_6e65, 0x444d_4163];
const INTEL: [u32; 3] = [0x756e_6547, 0x4965_6e69, 0x6c65_746e];

/// Names accepted by `-cpu`.
pub const MODEL_NAMES: [&str; 5] = ["qemu64", "Haswell", "Skylake-Server", "max", "host"];

/// Executes `cpuid` on the host.
pub fn host_cpuid(leaf: u32, sub: u32) -> [u32; 4] {
    let r = std::arch::x86_64::__cpuid_count(leaf, sub);
    [r.eax, r.ebx, r.ecx, r.edx]
}

fn host_word(w: Word) -> u32 {
    let max = if w.0 >= 0x8000_0000 {
        host_cpuid(0x8000_0000, 0)[0]
    } else {
        host_cpuid(0, 0)[0]
    };
    if w.0 > max {
        return 0;
    }
    host_cpuid(w.0, w.1)[w.2 as usize]
}

impl CpuModel {
    /// Looks a model up by its QEMU name.
    pub fn by_name(name: &str) -> Option<CpuModel> {
        let m = match name {
            "qemu64" => CpuModel {
                name: "qemu64",
                vendor: AMD,
                level: 0xd,
                xlevel: 0x8000_000a,
                signature: 0x0006_0fb1,
                leaf6_eax: 0,
                words: [
                    0x8000_2001,
                    0x078b_fbfd,
                    0,
                    0,
                    0,
                    0x0000_0005,
                    0x2193_fbfd,
                    0,
                ],
                brand: "QEMU Virtual CPU version 2.5+".into(),
            },
            "Haswell" => CpuModel {
                name: "Haswell",
                vendor: INTEL,
                level: 0xd,
                xlevel: 0x8000_0008,
                signature: 0x0003_06c4,
                leaf6_eax: 4,
                // QEMU's Haswell includes pcid, x2apic, tsc-deadline, hle, invpcid and rtm, which
                // are system features or TSX; qemu-x86_64 drops them, and so do we.
                words: [
                    0xfed8_3203,
                    0x078b_fbfd,
                    0x0000_03a9,
                    0,
                    0,
                    0x21,
                    0x2810_0800,
                    1,
                ],
                brand: "Intel Core Processor (Haswell)".into(),
            },
            "Skylake-Server" => CpuModel {
                name: "Skylake-Server",
                vendor: INTEL,
                level: 0xd,
                xlevel: 0x8000_0008,
                signature: 0x0005_0654,
                leaf6_eax: 4,
                // QEMU's definition: with rdseed, AVX-512 F/DQ/CD/BW/VL, 3dnowprefetch and xsavec,
                // which TCG 7.2 lacks but copy-through can offer when the host has them.
                words: [
                    0xfed8_3203,
                    0x078b_fbfd,
                    0xd19f_03a9,
                    0x8,
                    0,
                    0x121,
                    0x2c10_0800,
                    7,
                ],
                brand: "Intel Xeon Processor (Skylake)".into(),
            },
            "max" | "host" => {
                let mut words = [0u32; 8];
                for (i, w) in WORDS.iter().enumerate() {
                    words[i] = host_word(*w);
                }
                // No TSX, no user-mode protection keys, no monitor/mwait: the guest runs in our process.
                words[2] &= !((1 << 4) | (1 << 11));
                words[3] &= !((1 << 3) | (1 << 4));
                words[0] &= !(1 << 3);
                words[0] |= 1 << 31;
                let h0 = host_cpuid(0, 0);
                let mut brand = Vec::new();
                for l in 0x8000_0002u32..=0x8000_0004 {
                    for r in host_cpuid(l, 0) {
                        brand.extend_from_slice(&r.to_le_bytes());
                    }
                }
                let brand = String::from_utf8_lossy(&brand)
                    .trim_end_matches('\0')
                    .trim()
                    .to_string();
                CpuModel {
                    name: if name == "max" { "max" } else { "host" },
                    vendor: [h0[1], h0[3], h0[2]],
                    level: h0[0].min(0x1f),
                    xlevel: host_cpuid(0x8000_0000, 0)[0].min(0x8000_0008),
                    signature: host_cpuid(1, 0)[0],
                    leaf6_eax: host_cpuid(6, 0)[0],
                    words,
                    brand,
                }
            }
            _ => return None,
        };
        Some(m)
    }

    /// Removes features the host cannot run; returns the names of those removed.
    pub fn filter_to_host(&mut self) -> Vec<String> {
        let mut dropped = Vec::new();
        for (i, w) in WORDS.iter().enumerate() {
            let mut host = host_word(*w);
            if *w == L1_ECX {
                host |= 1 << 31; // hypervisor bit: ours to set
            }
            let missing = self.words[i] & !host;
            for bit in 0..32 {
                if missing & (1 << bit) != 0 {
                    dropped.push(format!(
                        "CPUID.{:02X}H:{}[bit {}]",
                        w.0,
                        ["EAX", "EBX", "ECX", "EDX"][w.2 as usize],
                        bit
                    ));
                }
            }
            self.words[i] &= host;
        }
        dropped
    }

    fn bit(&self, w: Word, bit: u32) -> bool {
        let i = WORDS.iter().position(|x| *x == w).unwrap();
        self.words[i] & (1 << bit) != 0
    }

    /// Whether the model has XSAVE (and so whether leaf 0xD and XGETBV are visible).
    pub fn has_xsave(&self) -> bool {
        self.bit(L1_ECX, 26)
    }

    /// `AT_HWCAP` as Linux computes it on x86-64: leaf 1 EDX.
    pub fn hwcap(&self) -> u64 {
        self.words[1] as u64
    }

    /// The guest's `CPUID` result for `leaf`/`sub`.
    pub fn cpuid(&self, leaf: u32, sub: u32) -> [u32; 4] {
        let is_ext = leaf >= 0x8000_0000;
        let beyond = if is_ext {
            leaf > self.xlevel
        } else {
            leaf > self.level.min(0x3fff_ffff)
        };
        if beyond {
            return [0; 4];
        }
        let w = |x: Word| self.words[WORDS.iter().position(|y| *y == x).unwrap()];
        match leaf {
            0 => [self.level, self.vendor[0], self.vendor[2], self.vendor[1]],
            1 => {
                let mut ecx = w(L1_ECX);
                if self.has_xsave() {
                    ecx |= 1 << 27; // OSXSAVE: Linux enables XSAVE
                } else {
                    ecx &= !(1 << 27);
                }
                [self.signature, 0x0000_0800, ecx, w(L1_EDX)]
            }
            // Cache descriptors: "see leaf 4".
            2 => [0x0000_0001, 0, 0, 0x00ff_0000],
            4 => match sub {
                // type/level, ways-1|partitions-1|line-1, sets-1 (QEMU's legacy cache geometry)
                0 => [0x0000_0121, 0x01c0_003f, 63, 1],
                1 => [0x0000_0122, 0x01c0_003f, 63, 1],
                2 => [0x0000_0143, 0x03c0_003f, 4095, 1],
                3 => [0x0000_0163, 0x03c0_003f, 16383, 6],
                _ => [0; 4],
            },
            6 => [self.leaf6_eax, 0, 0, 0],
            7 if sub == 0 => [0, w(L7_EBX), w(L7_ECX), w(L7_EDX)],
            0xd if self.has_xsave() => {
                // The host's layout: guest XSAVE instructions run on the host and write what the
                // host's XCR0 enables, so buffer sizes must be the host's.
                let mut r = host_cpuid(0xd, sub);
                if sub == 1 {
                    r[0] &= w(XSAVE_EAX);
                }
                r
            }
            0x8000_0000 => [self.xlevel, self.vendor[0], self.vendor[2], self.vendor[1]],
            0x8000_0001 => [self.signature, 0, w(E1_ECX), w(E1_EDX)],
            0x8000_0002..=0x8000_0004 => {
                let mut b = [0u8; 48];
                let n = self.brand.len().min(47);
                b[..n].copy_from_slice(&self.brand.as_bytes()[..n]);
                let o = (leaf - 0x8000_0002) as usize * 16;
                let r =
                    |k: usize| u32::from_le_bytes(b[o + 4 * k..o + 4 * k + 4].try_into().unwrap());
                [r(0), r(1), r(2), r(3)]
            }
            0x8000_0005 => [0x01ff_01ff, 0x01ff_01ff, 0x4002_0140, 0x4002_0140],
            0x8000_0006 => [0, 0x4200_4200, 0x0200_8140, 0x0080_8140],
            0x8000_0008 => [0x0000_3028, 0, 0, 0],
            _ => [0; 4],
        }
    }

    /// Whether a guest instruction needing `f` may run under this model.
    ///
    /// Features without a CPUID bit in the model (the 8086 base, x86-64 base, hint NOPs such as
    /// `endbr64`) are allowed.
    pub fn allows(&self, f: CpuidFeature) -> bool {
        use CpuidFeature as F;
        match f {
            F::SSE3 => self.bit(L1_ECX, 0),
            F::PCLMULQDQ => self.bit(L1_ECX, 1),
            F::MONITOR => self.bit(L1_ECX, 3),
            F::SSSE3 => self.bit(L1_ECX, 9),
            F::FMA => self.bit(L1_ECX, 12),
            F::CMPXCHG16B => self.bit(L1_ECX, 13),
            F::SSE4_1 => self.bit(L1_ECX, 19),
            F::SSE4_2 => self.bit(L1_ECX, 20),
            F::MOVBE => self.bit(L1_ECX, 22),
            F::POPCNT => self.bit(L1_ECX, 23),
            F::AES => self.bit(L1_ECX, 25),
            F::XSAVE => self.bit(L1_ECX, 26),
            F::AVX => self.bit(L1_ECX, 28),
            F::F16C => self.bit(L1_ECX, 29),
            F::RDRAND => self.bit(L1_ECX, 30),
            F::FPU | F::FPU287 | F::FPU387 => self.bit(L1_EDX, 0),
            F::TSC => self.bit(L1_EDX, 4),
            F::MSR => self.bit(L1_EDX, 5),
            F::CX8 => self.bit(L1_EDX, 8),
            F::SEP => self.bit(L1_EDX, 11),
            F::CMOV => self.bit(L1_EDX, 15),
            F::CLFSH => self.bit(L1_EDX, 19),
            F::MMX => self.bit(L1_EDX, 23),
            F::FXSR => self.bit(L1_EDX, 24),
            F::SSE => self.bit(L1_EDX, 25),
            F::SSE2 => self.bit(L1_EDX, 26),
            F::FSGSBASE => self.bit(L7_EBX, 0),
            F::BMI1 => self.bit(L7_EBX, 3),
            F::HLE | F::HLE_or_RTM => self.bit(L7_EBX, 4),
            F::AVX2 => self.bit(L7_EBX, 5),
            F::BMI2 => self.bit(L7_EBX, 8),
            F::INVPCID => self.bit(L7_EBX, 10),
            F::RTM => self.bit(L7_EBX, 11),
            F::MPX => self.bit(L7_EBX, 14),
            F::AVX512F => self.bit(L7_EBX, 16),
            F::AVX512DQ => self.bit(L7_EBX, 17),
            F::RDSEED => self.bit(L7_EBX, 18),
            F::ADX => self.bit(L7_EBX, 19),
            F::SMAP => self.bit(L7_EBX, 20),
            F::AVX512_IFMA => self.bit(L7_EBX, 21),
            F::CLFLUSHOPT => self.bit(L7_EBX, 23),
            F::CLWB => self.bit(L7_EBX, 24),
            F::AVX512PF => self.bit(L7_EBX, 26),
            F::AVX512ER => self.bit(L7_EBX, 27),
            F::AVX512CD => self.bit(L7_EBX, 28),
            F::SHA => self.bit(L7_EBX, 29),
            F::AVX512BW => self.bit(L7_EBX, 30),
            F::AVX512VL => self.bit(L7_EBX, 31),
            F::PREFETCHWT1 => self.bit(L7_ECX, 0),
            F::AVX512_VBMI => self.bit(L7_ECX, 1),
            F::PKU => self.bit(L7_ECX, 3),
            F::WAITPKG => self.bit(L7_ECX, 5),
            F::AVX512_VBMI2 => self.bit(L7_ECX, 6),
            F::CET_SS => true,
            F::GFNI => self.bit(L7_ECX, 8),
            F::VAES => self.bit(L7_ECX, 9),
            F::VPCLMULQDQ => self.bit(L7_ECX, 10),
            F::AVX512_VNNI => self.bit(L7_ECX, 11),
            F::AVX512_BITALG => self.bit(L7_ECX, 12),
            F::AVX512_VPOPCNTDQ => self.bit(L7_ECX, 14),
            F::RDPID => self.bit(L7_ECX, 22),
            F::MOVDIRI => self.bit(L7_ECX, 27),
            F::MOVDIR64B => self.bit(L7_ECX, 28),
            F::SERIALIZE => self.bit(L7_EDX, 14),
            F::LZCNT => self.bit(E1_ECX, 5),
            F::SSE4A => self.bit(E1_ECX, 6),
            F::PREFETCHW => self.bit(E1_ECX, 8) || self.bit(E1_EDX, 31) || self.bit(E1_EDX, 29),
            F::XOP => self.bit(E1_ECX, 11),
            F::FMA4 => self.bit(E1_ECX, 16),
            F::TBM => self.bit(E1_ECX, 21),
            F::SYSCALL => self.bit(E1_EDX, 11),
            F::RDTSCP => self.bit(E1_EDX, 27),
            F::D3NOW => self.bit(E1_EDX, 31),
            F::D3NOWEXT => self.bit(E1_EDX, 30),
            F::XSAVEOPT => self.bit(XSAVE_EAX, 0) && self.has_xsave(),
            F::XSAVEC => self.bit(XSAVE_EAX, 1) && self.has_xsave(),
            F::XSAVES => self.bit(XSAVE_EAX, 3) && self.has_xsave(),
            F::AVX512_BF16 | F::AVX_VNNI => {
                host_word(Word(7, 1, 0)) & ((1 << 5) | (1 << 4)) != 0 && self.bit(L7_EBX, 16)
            }
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_have_qemu_identity() {
        let q = CpuModel::by_name("qemu64").unwrap();
        assert_eq!(q.cpuid(0, 0), [0xd, 0x6874_7541, 0x444d_4163, 0x6974_6e65]);
        assert_eq!(q.cpuid(1, 0)[3], 0x078b_fbfd);
        assert!(!q.allows(CpuidFeature::AVX2));
        assert!(q.allows(CpuidFeature::SSE2));
        let h = CpuModel::by_name("Haswell").unwrap();
        assert_eq!(h.cpuid(0, 0)[1], 0x756e_6547);
        assert!(h.allows(CpuidFeature::BMI2));
        assert!(!h.allows(CpuidFeature::SHA));
        assert!(CpuModel::by_name("pentium9").is_none());
    }
}
