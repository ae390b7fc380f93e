//! Deterministic mutations (fixed seed) of L1, L2, refcount table and refcount block
//! entries of images made by qemu-img: `oxemu-img check -r all` must never crash, and
//! the repaired image must never be worse for real `qemu-img check` than before
//! (no more corruptions, and still checkable).

use std::process::{Command, Output};

fn run(prog: &str, args: &[&str]) -> Output {
    Command::new(prog).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(o: Output) {
    assert!(o.status.success(), "{}", text(&o.stderr));
}

/// xorshift64*: a fixed sequence, so every run mutates the same bytes.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn be64(b: &[u8], o: u64) -> u64 {
    b.get(o as usize..o as usize + 8)
        .map(|s| u64::from_be_bytes(s.try_into().unwrap()))
        .unwrap_or(0)
}

/// The byte ranges holding L1, L2, refcount table and refcount block entries.
fn regions(b: &[u8]) -> Vec<(u64, u64)> {
    let cs = 1u64 << u32::from_be_bytes(b[20..24].try_into().unwrap());
    let l1 = be64(b, 40);
    let l1_bytes = u32::from_be_bytes(b[36..40].try_into().unwrap()) as u64 * 8;
    let rt = be64(b, 48);
    let mut v = vec![(l1, l1_bytes.min(cs)), (rt, 64)];
    let l2 = be64(b, l1) & 0x00ff_ffff_ffff_fe00;
    if l2 != 0 {
        v.push((l2, cs.min(512)));
    }
    let rb = be64(b, rt) & !0x1ff;
    if rb != 0 {
        v.push((rb, 64));
    }
    v
}

/// qemu-img check's corruption count, or None when the check itself fails.
fn qemu_corruptions(img: &str) -> Option<u64> {
    let o = run("qemu-img", &["check", "--output=json", img]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
    if o.status.code() == Some(1) {
        return None;
    }
    Some(v.get("corruptions").and_then(|c| c.as_u64()).unwrap_or(0))
}

fn seeds(dir: &std::path::Path) -> Vec<String> {
    let p = |n: &str| dir.join(n).display().to_string();
    let q = |args: &[&str]| ok(run("qemu-img", args));
    let io = |img: &str, c: &[&str]| {
        let mut a = Vec::new();
        for x in c {
            a.extend(["-c", x]);
        }
        a.push(img);
        ok(run("qemu-io", &a));
    };
    let plain = p("plain.qcow2");
    q(&["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", &plain, "4M"]);
    io(&plain, &["write -P 1 0 40k", "write -P 2 2M 8k", "write -b 0 4k"]);
    let snap = p("snap.qcow2");
    q(&["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", &snap, "4M"]);
    io(&snap, &["write -P 1 0 16k", "write -b 0 4k"]);
    q(&["snapshot", "-c", "a", &snap]);
    io(&snap, &["write -P 2 8k 16k"]);
    q(&["snapshot", "-c", "b", &snap]);
    let small = p("small.qcow2");
    q(&["create", "-q", "-f", "qcow2", "-o", "cluster_size=512", &small, "1M"]);
    io(&small, &["write -P 3 0 20k"]);
    let comp = p("comp.qcow2");
    q(&["convert", "-c", "-O", "qcow2", "-o", "cluster_size=4096", &plain, &comp]);
    vec![plain, snap, small, comp]
}

#[test]
fn repairing_mutated_images_never_makes_them_worse_for_qemu_img() {
    let d = tempfile::Builder::new()
        .prefix("oxemu-img-mutate")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let mut rng = Rng(0x5eed_0c0f_fee0_1234);
    let work = d.path().join("m.qcow2").display().to_string();
    let mut checked = 0;
    for seed in seeds(d.path()) {
        let orig = std::fs::read(&seed).unwrap();
        for _ in 0..30 {
            let mut b = orig.clone();
            let regs = regions(&b);
            let (start, len) = regs[rng.below(regs.len() as u64) as usize];
            let at = start + rng.below(len);
            if rng.below(2) == 0 {
                let i = at as usize;
                if i < b.len() {
                    b[i] ^= 1 << rng.below(8);
                }
            } else {
                // A plausible but wrong entry: some offset in or near the file, flags.
                let i = (at & !7) as usize;
                let off = rng.below(2 * b.len() as u64) & !0x1ff;
                let v = off | (rng.next() & 0x8000_0000_0000_0001);
                if i + 8 <= b.len() {
                    b[i..i + 8].copy_from_slice(&v.to_be_bytes());
                }
            }
            std::fs::write(&work, &b).unwrap();
            let before = qemu_corruptions(&work);
            let o = run(env!("CARGO_BIN_EXE_oxemu-img"), &["check", "-r", "all", &work]);
            let code = o.status.code();
            assert!(
                matches!(code, Some(0..=3)),
                "oxemu-img crashed on a mutation at {at:#x} of {seed}: {code:?} {}",
                text(&o.stderr)
            );
            let Some(before) = before else { continue };
            let after = qemu_corruptions(&work);
            assert!(
                after.is_some_and(|a| a <= before),
                "mutation at {at:#x} of {seed}: qemu-img corruptions {before} before, {after:?} after oxemu-img check -r all\n{}{}",
                text(&o.stdout),
                text(&o.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} mutations were checkable");
}
