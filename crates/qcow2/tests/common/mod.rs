//! Shared helpers for the qcow2 tests: running qemu-img/qemu-io and oxemu event loops.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use oxemu_block::{EventLoop, FileOptions};
use oxemu_qcow2::{open_image, Image, ImageOptions};

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qemu-img check --output=json`, parsed; asserts no corruptions and no check errors.
pub fn qemu_check_clean(img: &Path) -> serde_json::Value {
    let out = Command::new("qemu-img")
        .args(["check", "--output=json"])
        .arg(img)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("qemu-img check: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(
        v.get("corruptions").and_then(|c| c.as_u64()).unwrap_or(0),
        0,
        "{v}"
    );
    assert_eq!(
        v.get("check-errors").and_then(|c| c.as_u64()).unwrap_or(0),
        0,
        "{v}"
    );
    v
}

/// Converts an image to raw with qemu-img and returns its bytes.
pub fn qemu_raw(img: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join("qemu-raw.out");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            img.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    let d = std::fs::read(&out).unwrap();
    std::fs::remove_file(out).unwrap();
    d
}

/// Opens `path` with its backing chain.
pub async fn open(path: &Path, read_only: bool) -> Image {
    let mut o = ImageOptions::default();
    o.file = FileOptions::new(path);
    o.file.read_only = read_only;
    open_image(path, None, &o).await.unwrap()
}

/// Reads the whole image through oxemu.
pub fn oxemu_read_all(path: &Path) -> Vec<u8> {
    let lp = EventLoop::with_defaults().unwrap();
    lp.block_on(async {
        let img = open(path, true).await;
        let size = img.driver.size() as usize;
        let mut buf = vec![0u8; size];
        let chunk = 1 << 20;
        for off in (0..size).step_by(chunk) {
            let n = chunk.min(size - off);
            oxemu_block::BlockDriverExt::read_at(&*img.driver, off as u64, &mut buf[off..off + n])
                .await
                .unwrap();
        }
        buf
    })
}
pub mod replay;
