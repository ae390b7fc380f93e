//! Runs `check(Repair::All)` on arbitrary bytes opened as a qcow2 image (a read-write
//! copy on /dev/shm, opened the way `qemu-img check -r all` opens it), then a second
//! check of the result. Malformed images must give errors or reports, never panics,
//! hangs or unbounded allocation.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use oxemu_block::{BlockDriver, EventLoop, FileDriver, FileOptions};
use oxemu_qcow2::{Qcow2, Repair};

thread_local! {
    static LOOP: EventLoop = EventLoop::with_defaults().expect("event loop");
}

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir();
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() { shm } else { dir.as_path() };
    let path = base.join(format!("oxemu-fuzz-qcow2-check-{}.img", std::process::id()));
    std::fs::write(&path, data).unwrap();
    LOOP.with(|lp| {
        lp.block_on(async {
            let Ok(file) = FileDriver::open(&FileOptions::new(&path)) else { return };
            let file: Arc<dyn BlockDriver> = Arc::new(file);
            let Ok(q) = Qcow2::open_for_check(file, false).await else {
                return;
            };
            let _ = q.check(Repair::All).await;
            let _ = q.check(Repair::None).await;
            let _ = q.close().await;
        })
    });
    // A repair may grow the file (refcount blocks past the end); the check bounds that.
    let _ = std::fs::remove_file(&path);
});
