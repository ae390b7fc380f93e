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

/// A scripted server: answers the handshake (GO, or only EXPORT_NAME when `no_go`),
/// then hands each request header to `reply`, which returns the bytes to send back
/// (None: hang up). With `one_shot` it hangs up after the first reply.
fn fake_server(
    no_go: bool,
    one_shot: bool,
    mut reply: impl FnMut(&oxemu_nbd::proto::Request) -> Option<Vec<u8>> + Send + 'static,
) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<()>) {
    use oxemu_nbd::proto::{self, opt, rep};
    use std::io::{Read, Write};
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("fake.sock");
    let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.write_all(&proto::greeting()).unwrap();
        let mut f = [0u8; 4];
        s.read_exact(&mut f).unwrap();
        let export_info = |out: &mut Vec<u8>| {
            out.extend_from_slice(&(1u64 << 20).to_be_bytes());
            out.extend_from_slice(
                &(proto::tflag::HAS_FLAGS | proto::tflag::SEND_FLUSH).to_be_bytes(),
            );
        };
        loop {
            let mut h = [0u8; 16];
            s.read_exact(&mut h).unwrap();
            let h = proto::OptionHeader::parse(&h).unwrap();
            let mut data = vec![0u8; h.len as usize];
            s.read_exact(&mut data).unwrap();
            let mut out = Vec::new();
            match h.option {
                opt::STRUCTURED_REPLY => proto::put_option_reply(&mut out, h.option, rep::ACK, &[]),
                opt::GO if !no_go => {
                    let mut i = vec![0u8, 0];
                    export_info(&mut i);
                    proto::put_option_reply(&mut out, h.option, rep::INFO, &i);
                    proto::put_option_reply(&mut out, h.option, rep::ACK, &[]);
                }
                opt::EXPORT_NAME => {
                    export_info(&mut out);
                    s.write_all(&out).unwrap();
                    break;
                }
                o => proto::put_option_reply(&mut out, o, rep::ERR_UNSUP, &[]),
            }
            s.write_all(&out).unwrap();
            if h.option == opt::GO && !no_go {
                break;
            }
        }
        loop {
            let mut r = [0u8; 28];
            if s.read_exact(&mut r).is_err() {
                return;
            }
            let req = proto::Request::parse(&r, false).unwrap();
            if req.ty == proto::cmd::WRITE {
                let mut p = vec![0u8; req.len as usize];
                s.read_exact(&mut p).unwrap();
            }
            match reply(&req) {
                Some(b) => {
                    if s.write_all(&b).is_err() || one_shot {
                        return;
                    }
                }
                None => return,
            }
        }
    });
    (d, sock, t)
}

fn chunk(flags: u16, ty: u16, cookie: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    oxemu_nbd::proto::put_chunk_header(
        &mut b,
        oxemu_nbd::proto::ReplyMode::Structured,
        flags,
        ty,
        cookie,
        0,
        payload.len() as u64,
    );
    b.extend_from_slice(payload);
    b
}

#[test]
fn export_name_fallback_and_simple_replies() {
    use oxemu_nbd::proto::put_simple_reply;
    let (_d, sock, t) = fake_server(true, false, |r| {
        let mut b = Vec::new();
        put_simple_reply(&mut b, 0, r.cookie);
        if r.ty == oxemu_nbd::proto::cmd::READ {
            b.extend(std::iter::repeat_n(0xab, r.len as usize));
        }
        Some(b)
    });
    let c = open(&sock, "x", false);
    assert_eq!(c.size(), 1 << 20);
    EventLoop::with_defaults().unwrap().block_on(async {
        let mut b = [0u8; 100];
        c.read_at(10, &mut b).await.unwrap();
        assert_eq!(b, [0xab; 100]);
        c.flush().await.unwrap();
        // No WRITE_ZEROES or TRIM offered: zeroes are written, trims ignored.
        c.write_zeroes(0, 4096, ZeroFlags::default()).await.unwrap();
        c.discard(0, 4096).await.unwrap();
        let e = c
            .write_zeroes(
                0,
                4096,
                ZeroFlags {
                    no_fallback: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTSUP));
    });
    drop(c);
    t.join().unwrap();
}

/// Each malicious reply fails the request with EIO, later requests too, and
/// nothing panics.
#[test]
fn malicious_server_replies_are_eio() {
    use oxemu_nbd::proto::{chunk as ct, put_simple_reply};
    type Bad = fn(&oxemu_nbd::proto::Request) -> Option<Vec<u8>>;
    let cases: [(&str, Bad); 7] = [
        ("unknown cookie", |r| {
            let mut b = Vec::new();
            put_simple_reply(&mut b, 0, r.cookie + 1000);
            Some(b)
        }),
        ("bad magic", |_| Some(vec![0x12; 32])),
        ("short read then hang-up", |r| {
            let mut b = Vec::new();
            put_simple_reply(&mut b, 0, r.cookie);
            b.extend_from_slice(&[1, 2, 3]);
            Some(b)
        }),
        ("oversized data chunk", |r| {
            let mut p = r.offset.to_be_bytes().to_vec();
            p.extend(std::iter::repeat_n(0, r.len as usize + 1));
            Some(chunk(ct::FLAG_DONE, ct::OFFSET_DATA, r.cookie, &p))
        }),
        ("huge claimed length", |r| {
            let mut b = chunk(ct::FLAG_DONE, ct::BLOCK_STATUS, r.cookie, &[]);
            b[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
            Some(b)
        }),
        ("hole outside the request", |r| {
            let mut p = (r.offset + (1 << 30)).to_be_bytes().to_vec();
            p.extend_from_slice(&(r.len as u32).to_be_bytes());
            Some(chunk(ct::FLAG_DONE, ct::OFFSET_HOLE, r.cookie, &p))
        }),
        ("read not covered", |r| {
            let mut p = r.offset.to_be_bytes().to_vec();
            p.push(7);
            Some(chunk(ct::FLAG_DONE, ct::OFFSET_DATA, r.cookie, &p))
        }),
    ];
    for (what, bad) in cases {
        let (_d, sock, t) = fake_server(false, true, bad);
        let c = open(&sock, "", false);
        EventLoop::with_defaults().unwrap().block_on(async {
            let mut b = vec![0u8; 4096];
            let e = c.read_at(0, &mut b).await.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "{what}");
            let e = c.read_at(0, &mut b).await.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "{what}: later request");
        });
        drop(c);
        t.join().unwrap();
    }
}

#[test]
fn allocation_depth_through_oxemu_nbd() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.qcow2");
    let top = d.path().join("top.qcow2");
    let (b, t) = (base.to_str().unwrap(), top.to_str().unwrap());
    run_ok("qemu-img", &["create", "-f", "qcow2", b, "1M"]);
    run_ok("qemu-io", &["-f", "qcow2", "-c", "write -P 1 0 64k", b]);
    run_ok(
        "qemu-img",
        &["create", "-f", "qcow2", "-b", b, "-F", "qcow2", t],
    );
    run_ok("qemu-io", &["-f", "qcow2", "-c", "write -P 2 64k 64k", t]);
    let s = start(d.path(), false, &["-t", "-e", "0", "-A", "-r"], &top);
    let mut o = NbdClientOptions::new(NbdTarget::Unix(s.sock.clone().unwrap()), "");
    o.allocation_depth = true;
    let c = NbdClient::connect(&o).unwrap();
    let lp = EventLoop::with_defaults().unwrap();
    let depths = lp.block_on(async {
        let mut v = Vec::new();
        let mut off = 0;
        while off < c.size() {
            let st = c.block_status(off, c.size() - off).await.unwrap();
            v.push((off, st.len, st.depth));
            off += st.len;
        }
        v
    });
    assert_eq!(
        depths,
        vec![
            (0, 65536, 2),
            (65536, 65536, 1),
            (131072, 1048576 - 131072, 0)
        ]
    );
    // Without the option, the same export reports everything as present (qemu-img
    // map's view of an NBD node).
    o.allocation_depth = false;
    let c = NbdClient::connect(&o).unwrap();
    let st = lp.block_on(c.block_status(0, c.size())).unwrap();
    assert_eq!(st.depth, 1);
}

/// One connection shared by two threads, each with its own event loop and many
/// requests in flight.
#[test]
fn one_connection_shared_by_two_loops() {
    let d = tempfile::tempdir().unwrap();
    let img = image(d.path());
    let s = start(d.path(), false, &["-t", "-f", "raw"], &img);
    let c = open(s.sock.as_ref().unwrap(), "", false);
    let threads: Vec<_> = (0..2u64)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                EventLoop::with_defaults().unwrap().block_on(async {
                    let futs = (0..64u64).map(|i| {
                        let c = c.clone();
                        async move {
                            let off = (t * 64 + i) * 16384;
                            let pat = vec![(t * 64 + i) as u8; 16384];
                            for _ in 0..4 {
                                c.write_at(off, &pat).await.unwrap();
                                let mut r = vec![0u8; 16384];
                                c.read_at(off, &mut r).await.unwrap();
                                assert_eq!(r, pat);
                            }
                        }
                    });
                    futures::future::join_all(futs).await;
                })
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
