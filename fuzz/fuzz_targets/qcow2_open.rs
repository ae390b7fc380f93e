//! Opens arbitrary bytes as a qcow2 image (from a file on /dev/shm), reads from it,
//! queries block status and runs a check. Malformed images must give errors, never
//! panics, hangs or unbounded allocation.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use oxemu_block::{BlockDriver, BlockDriverExt, EventLoop, FileDriver, FileOptions};
use oxemu_qcow2::{Qcow2, Qcow2OpenOptions, Repair};

thread_local! {
    static LOOP: EventLoop = EventLoop::with_defaults().expect("event loop");
}

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir();
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() { shm } else { dir.as_path() };
    let path = base.join(format!("oxemu-fuzz-qcow2-{}.img", std::process::id()));
    std::fs::write(&path, data).unwrap();
    LOOP.with(|lp| {
        lp.block_on(async {
            let mut fo = FileOptions::new(&path);
            fo.read_only = true;
            let Ok(file) = FileDriver::open(&fo) else { return };
            let file: Arc<dyn BlockDriver> = Arc::new(file);
            let Ok(q) = Qcow2::open(file, Qcow2OpenOptions { read_only: true, ..Default::default() }).await else {
                return;
            };
            let size = q.size();
            let mut buf = vec![0u8; 65536];
            for off in [0, size / 2, size.saturating_sub(65536)] {
                let n = (size - off.min(size)).min(65536) as usize;
                let _ = q.read_at(off, &mut buf[..n]).await;
                if off < size {
                    let _ = q.block_status(off, n as u64).await;
                }
            }
            let _ = q.check(Repair::None).await;
        })
    });
    let _ = std::fs::remove_file(&path);
});
