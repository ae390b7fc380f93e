//! The NBD client driver against real servers: qemu-nbd 7.2 and oxemu-nbd.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use oxemu_block::{BlockDriver, BlockDriverExt, EventLoop, ZeroFlags};
use oxemu_nbd::{NbdClient, NbdClientOptions, NbdTarget};

/// A qemu-nbd process, killed on drop.
struct Qemu(Child, PathBuf);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qemu_nbd(dir: &Path, args: &[&str], image: &Path) -> Qemu {
    let sock = dir.join(format!("q-{}.sock", rand::random::<u32>()));
    let child = Command::new("qemu-nbd")
        .arg("-k")
        .arg(&sock)
        .args(["-f", "raw", "-t", "-e", "4"])
        .args(args)
        .arg(image)
        .stdin(Stdio::null())
        .spawn()
        .expect("qemu-nbd");
    let t = Instant::now();
    while !sock.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "qemu-nbd did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Qemu(child, sock)
}

fn image(dir: &Path) -> PathBuf {
    let p = dir.join("disk.img");
    run_ok(
        "qemu-img",
        &["create", "-f", "raw", p.to_str().unwrap(), "4M"],
    );
    run_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x11 0 64k",
            "-c",
            "write -P 0x22 1M 128k",
            p.to_str().unwrap(),
        ],
    );
    p
}

fn open(sock: &Path, export: &str, read_only: bool) -> Arc<NbdClient> {
    let mut o = NbdClientOptions::new(NbdTarget::Unix(sock.to_path_buf()), export);
    o.read_only = read_only;
    Arc::new(NbdClient::connect(&o).unwrap_or_else(|e| panic!("connect: {e}")))
}

/// Read, write, zero, trim, flush, and many requests in flight at once.
fn exercise(c: Arc<NbdClient>) {
    let lp = EventLoop::with_defaults().unwrap();
    lp.block_on(async {
        assert_eq!(c.size(), 4 << 20);
        let mut b = vec![0u8; 4096];
        c.read_at(0, &mut b).await.unwrap();
        assert!(b.iter().all(|&x| x == 0x11));
        // Unaligned write and read.
        c.write_at(4097, b"hello").await.unwrap();
        let mut h = [0u8; 7];
        c.read_at(4096, &mut h).await.unwrap();
        assert_eq!(&h, b"\x11hello\x11");
        // Zeroes with and without unmap, trim, flush.
        c.write_zeroes(1 << 20, 4096, ZeroFlags::default())
            .await
            .unwrap();
        c.write_zeroes(
            (1 << 20) + 8192,
            8192,
            ZeroFlags {
                may_unmap: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let mut z = vec![1u8; 16384];
        c.read_at(1 << 20, &mut z).await.unwrap();
        assert!(z[..4096].iter().all(|&x| x == 0));
        assert!(z[4096..8192].iter().all(|&x| x == 0x22));
        assert!(z[8192..].iter().all(|&x| x == 0));
        c.discard(2 << 20, 65536).await.unwrap();
        c.flush().await.unwrap();
        // 32 requests in flight; replies may come back in any order.
        let c2 = c.clone();
        let futs = (0..32u64).map(|i| {
            let c = c2.clone();
            async move {
                let pat = vec![i as u8 + 1; 8192];
                c.write_at((3 << 20) + i * 8192, &pat).await.unwrap();
                let mut r = vec![0u8; 8192];
                c.read_at((3 << 20) + i * 8192, &mut r).await.unwrap();
                assert_eq!(r, pat);
            }
        });
        futures::future::join_all(futs).await;
        // A read larger than the maximum payload is split.
        let mut big = vec![0u8; 4 << 20];
        c.read_at(0, &mut big).await.unwrap();
        assert_eq!(big[4097..4102], *b"hello");
        assert_eq!(big[(3 << 20) + 8192 * 31], 32);
        c.close().await.unwrap();
    });
}

/// Block status through the client equals qemu-img map through the same URI.
fn status_matches_qemu_img_map(c: &NbdClient, uri: &str) {
    let lp = EventLoop::with_defaults().unwrap();
    let mut mine = Vec::new();
    lp.block_on(async {
        let mut off = 0;
        while off < c.size() {
            let st = c.block_status(off, c.size() - off).await.unwrap();
            match mine.last_mut() {
                Some((_, l, d, z)) if *d == st.data && *z == st.zero => *l += st.len,
                _ => mine.push((off, st.len, st.data, st.zero)),
            }
            off += st.len;
        }
    });
    let out = run_ok("qemu-img", &["map", "--output=json", "-f", "raw", uri]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let theirs: Vec<(u64, u64, bool, bool)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["start"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["data"].as_bool().unwrap(),
                e["zero"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(mine, theirs);
    assert!(mine.len() > 1, "expected data and holes: {mine:?}");
}

fn read_only_refuses_writes(c: Arc<NbdClient>) {
    let lp = EventLoop::with_defaults().unwrap();
    lp.block_on(async {
        let e = c.write_at(0, b"x").await.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        let e = c
            .write_zeroes(0, 512, ZeroFlags::default())
            .await
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        let mut b = [0u8; 4];
        c.read_at(0, &mut b).await.unwrap();
        assert_eq!(b, [0x11; 4]);
    });
}

#[test]
fn client_against_qemu_nbd() {
    let d = tempfile::tempdir().unwrap();
    let img = image(d.path());
    let q = qemu_nbd(d.path(), &["-x", "disk"], &img);
    let uri = format!("nbd+unix:///disk?socket={}", q.1.display());
    status_matches_qemu_img_map(&open(&q.1, "disk", true), &uri);
    exercise(open(&q.1, "disk", false));
    drop(q);
    let q = qemu_nbd(d.path(), &["-x", "disk", "-r"], &img);
    let c = open(&q.1, "disk", false);
    assert!(c.export_read_only());
    read_only_refuses_writes(c);
}

#[test]
fn client_against_oxemu_nbd() {
    let d = tempfile::tempdir().unwrap();
    let img = image(d.path());
    let s = start(
        d.path(),
        false,
        &["-x", "disk", "-t", "-e", "0", "-f", "raw"],
        &img,
    );
    let sock = s.sock.clone().unwrap();
    status_matches_qemu_img_map(&open(&sock, "disk", true), &s.uri("disk"));
    exercise(open(&sock, "disk", false));
    drop(s);
    let s = start(
        d.path(),
        false,
        &["-x", "disk", "-t", "-r", "-f", "raw"],
        &img,
    );
    read_only_refuses_writes(open(s.sock.as_ref().unwrap(), "disk", false));
}

#[test]
fn connection_errors_have_qemu_texts() {
    let d = tempfile::tempdir().unwrap();
    let img = image(d.path());
    let missing = d.path().join("nothing.sock");
    let e = NbdClient::connect(&NbdClientOptions::new(NbdTarget::Unix(missing.clone()), ""))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "Failed to connect to '{}': No such file or directory",
            missing.display()
        )
    );
    let q = qemu_nbd(d.path(), &["-x", "disk"], &img);
    let e = NbdClient::connect(&NbdClientOptions::new(NbdTarget::Unix(q.1.clone()), "nope"))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "Requested export not available\nserver reported: export 'nope' not present"
    );
}
