//! Guest write futures dropped in flight (a client that disconnects, a request that
//! times out) leave nothing behind: later writes to the same clusters go ahead,
//! snapshot operations are not refused as busy, and the image stays consistent.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use oxemu_block::{
    BlockDriver, BlockDriverExt, BlockResult, EventLoop, FileDriver, FileOptions, IoVec, IoVecMut,
    NodeInfo, WriteFlags, ZeroFlags,
};
use oxemu_qcow2::{create, NewSnapshot, Qcow2, Qcow2CreateOptions, Qcow2OpenOptions};

/// A file child whose writes take 200 ms while `slow` is set (unit-test stand-in for
/// a slow disk or a remote server).
struct Slow {
    inner: Arc<dyn BlockDriver>,
    slow: Arc<AtomicBool>,
}

#[async_trait(?Send)]
impl BlockDriver for Slow {
    fn info(&self) -> NodeInfo {
        self.inner.info()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    async fn readv(&self, offset: u64, iov: &mut IoVecMut<'_>) -> BlockResult<()> {
        self.inner.readv(offset, iov).await
    }
    async fn writev(&self, offset: u64, iov: &IoVec<'_>, flags: WriteFlags) -> BlockResult<()> {
        if self.slow.load(Ordering::SeqCst) {
            oxemu_aio::sleep(Duration::from_millis(200)).await;
        }
        self.inner.writev(offset, iov, flags).await
    }
    async fn flush(&self) -> BlockResult<()> {
        self.inner.flush().await
    }
    async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        self.inner.discard(offset, len).await
    }
    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        self.inner.write_zeroes(offset, len, flags).await
    }
    async fn truncate(&self, size: u64) -> BlockResult<()> {
        self.inner.truncate(size).await
    }
}

async fn open_slow(p: &Path) -> (Arc<Qcow2>, Arc<AtomicBool>) {
    let f: Arc<dyn BlockDriver> = Arc::new(FileDriver::open(&FileOptions::new(p)).unwrap());
    let slow = Arc::new(AtomicBool::new(false));
    let file = Arc::new(Slow {
        inner: f,
        slow: slow.clone(),
    });
    let q = Qcow2::open(file, Qcow2OpenOptions::default())
        .await
        .unwrap();
    (q, slow)
}

/// Polls `fut` once (so that it reaches the slow write) and drops it.
async fn start_and_drop<F: std::future::Future>(fut: F) {
    let mut fut = Box::pin(fut);
    assert!(
        futures::poll!(fut.as_mut()).is_pending(),
        "the write did not block"
    );
    drop(fut);
}

/// Runs `fut` or fails after 5 s (a write waiting for a dropped one waits for ever).
async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    futures::select! {
        v = fut.fuse() => v,
        _ = oxemu_aio::sleep(Duration::from_secs(5)).fuse() => panic!("{what}: still waiting after 5 s"),
    }
}

fn snap(name: &str) -> NewSnapshot {
    NewSnapshot {
        name: name.into(),
        date_sec: 0,
        date_nsec: 0,
        vm_clock_nsec: 0,
        icount: 0,
    }
}

#[test]
fn dropped_writes_release_their_clusters() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.qcow2");
    let lp = EventLoop::with_defaults().unwrap();
    lp.block_on(async {
        create(
            &p,
            &Qcow2CreateOptions {
                size: 8 << 20,
                cluster_size: 65536,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let (q, slow) = open_slow(&p).await;
        // An in-place write to an allocated cluster, dropped mid-write.
        q.write_at(0, &[1; 65536]).await.unwrap();
        slow.store(true, Ordering::SeqCst);
        start_and_drop(q.write_at(512, &[2; 512])).await;
        // An allocating write of one partial cluster (copy-on-write path), dropped.
        start_and_drop(q.write_at(65536 + 512, &[3; 512])).await;
        // An allocating run of whole clusters, dropped.
        start_and_drop(q.write_at(4 << 16, &vec![4; 4 << 16])).await;
        slow.store(false, Ordering::SeqCst);
        within(
            "a write to the dropped allocation's cluster",
            q.write_at(65536, &[5; 4096]),
        )
        .await
        .unwrap();
        within(
            "a write over the dropped run",
            q.write_at(5 << 16, &[6; 4096]),
        )
        .await
        .unwrap();
        // Pins and in-flight marks are gone: a snapshot is not refused as busy.
        within("snapshot create", q.snapshot_create(&snap("s1")))
            .await
            .unwrap();
        let mut b = vec![0u8; 4096];
        q.read_at(65536, &mut b).await.unwrap();
        assert!(b.iter().all(|&x| x == 5));
        q.close().await.unwrap();
    });
    // Consistent for QEMU; clusters of the dropped allocations may leak.
    common::qemu_check_clean(&p);
}
