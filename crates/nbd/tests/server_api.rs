//! The in-process API the storage daemon uses: start, add/remove exports, stop.

mod common;
use common::*;
use std::io::{Read, Write};
use std::sync::Arc;

use oxemu_block::export::BlockExport;
use oxemu_block::raw::RawFormat;
use oxemu_block::{EventLoopConfig, FileDriver, FileOptions, IoThread};
use oxemu_nbd::proto::{self, opt, OptionHeader};
use oxemu_nbd::{NbdAddr, NbdExportOptions, NbdServer, NbdServerOptions};

#[test]
fn exports_are_added_removed_and_the_server_stops_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let img = make_image(d.path());
    let io = IoThread::spawn("nbd-test", EventLoopConfig::default()).unwrap();
    let sock = d.path().join("api.sock");
    let srv = NbdServer::start(
        NbdServerOptions {
            addr: NbdAddr::Unix(sock.clone()),
            tls: None,
            max_connections: 0,
        },
        io.handle(),
    )
    .unwrap();
    let file = FileDriver::open(&FileOptions::new(&img)).unwrap();
    let node = Arc::new(RawFormat::new(Arc::new(file)));
    let opts = NbdExportOptions {
        id: "e0".into(),
        node_name: "n0".into(),
        name: "disk".into(),
        description: "api".into(),
        writable: true,
        allocation_depth: false,
    };
    let export = srv.add_export(opts.clone(), node.clone()).unwrap();
    assert!(
        srv.add_export(opts, node).is_err(),
        "duplicate export accepted"
    );
    assert_eq!(export.export_type(), "nbd");
    assert!(!export.in_use());
    let uri = format!("nbd+unix:///disk?socket={}", sock.display());
    let info = run_ok("qemu-img", &["info", &uri]);
    assert!(info.contains("4 MiB"), "{info}");

    // A client in transmission keeps the export in use until a hard removal.
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    s.write_all(
        &OptionHeader {
            option: opt::EXPORT_NAME,
            len: 4,
        }
        .encode(),
    )
    .unwrap();
    s.write_all(b"disk").unwrap();
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(proto::be64(&reply), 4 << 20);
    let t = std::time::Instant::now();
    while !export.in_use() && t.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(export.in_use());
    srv.remove_export("e0", true).unwrap();
    assert!(closed(&mut s));
    assert!(srv.remove_export("e0", true).is_err());
    let o = run("qemu-img", &["info", &uri]);
    assert!(!o.status.success());

    srv.stop();
    assert!(!sock.exists(), "socket left behind by stop");
    io.join();
}
