//! A cluster with an in-place write in flight is not freed (and so cannot be handed
//! out again) until the write is over, whatever discards and flushes happen meanwhile.

use std::sync::Arc;

use oxemu_block::{BlockDriver, BlockDriverExt, EventLoop, FileDriver, FileOptions};
use oxemu_qcow2::header::Header;
use oxemu_qcow2::meta::Meta;
use oxemu_qcow2::{create, Qcow2CreateOptions};

#[test]
fn pinned_clusters_are_freed_only_after_unpin() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("p.qcow2");
    let lp = EventLoop::with_defaults().unwrap();
    lp.block_on(async {
        create(
            &p,
            &Qcow2CreateOptions {
                size: 1 << 20,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let f: Arc<dyn BlockDriver> = Arc::new(FileDriver::open(&FileOptions::new(&p)).unwrap());
        let mut head = vec![0u8; 65536];
        f.read_at(0, &mut head).await.unwrap();
        let h = Header::parse(&head, f.size()).unwrap();
        let mut m = Meta::load(h, f.clone(), 1 << 20).await.unwrap();
        let a = m.alloc_cluster().await.unwrap();
        let b = m.alloc_cluster().await.unwrap();
        let (ca, cb) = (a / m.cs, b / m.cs);
        m.writeback().await.unwrap();
        m.pin(a, 1);
        m.free_later(a, 1);
        m.free_later(b, 1);
        m.writeback().await.unwrap();
        assert_eq!(m.refcount(ca).await.unwrap(), 1, "pinned cluster was freed");
        assert_eq!(m.refcount(cb).await.unwrap(), 0);
        // The allocator must not hand the pinned cluster out meanwhile.
        let c = m.alloc_cluster().await.unwrap();
        assert_ne!(c, a);
        m.unpin(a, 1);
        m.writeback().await.unwrap();
        assert_eq!(
            m.refcount(ca).await.unwrap(),
            0,
            "the deferred free was lost"
        );
    });
}
