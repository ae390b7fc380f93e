//! Cancellation safety of guest writes.
//!
//! An allocating write marks its guest clusters in flight (other writes to them
//! wait) and an in-place write pins its host clusters (their frees wait). Both are
//! undone when the write finishes. A [`WriteGuard`] undoes them when the write's
//! future is dropped first, for example by a client that disconnects or a request
//! that times out: without it, writers to the same clusters would wait for ever and
//! snapshot operations would report `EBUSY` for ever.
//!
//! A dropped write may still reach the disk later (the request can be on its way to
//! an NBD server, say), so the host clusters it was writing are never handed out
//! again while the image stays open: a freshly allocated cluster stays allocated
//! and unmapped (a leak that `qemu-img check -r leaks` reclaims), and a pinned
//! cluster is quarantined ([`Meta::quarantine`]) instead of freed. The image stays
//! consistent either way.

use std::sync::Weak;

use crate::meta::Meta;
use crate::Qcow2;

/// The in-flight bookkeeping one guest write holds; see the module documentation.
pub(crate) struct WriteGuard {
    q: Weak<Qcow2>,
    /// Guest clusters this write marked in flight and has not released.
    inflight: Vec<u64>,
    /// Host `(offset, clusters)` this write pinned and has not unpinned.
    pinned: Option<(u64, u64)>,
}

impl WriteGuard {
    /// A guard over guest clusters `gcs` marked in flight.
    pub(crate) fn inflight(q: &Qcow2, gcs: impl IntoIterator<Item = u64>) -> Self {
        WriteGuard {
            q: q.me.clone(),
            inflight: gcs.into_iter().collect(),
            pinned: None,
        }
    }

    /// A guard over `n` host clusters from `host` pinned by an in-place write.
    pub(crate) fn pinned(q: &Qcow2, host: u64, n: u64) -> Self {
        WriteGuard {
            q: q.me.clone(),
            inflight: Vec::new(),
            pinned: Some((host, n)),
        }
    }

    /// The write released guest cluster `gc` itself (under the metadata lock).
    pub(crate) fn released(&mut self, gc: u64) {
        self.inflight.retain(|&g| g != gc);
    }

    /// The write finished and undid its bookkeeping itself.
    pub(crate) fn disarm(mut self) {
        self.inflight.clear();
        self.pinned = None;
    }
}

/// Undoes what a dropped write left behind.
fn abandon(m: &mut Meta, inflight: &[u64], pinned: Option<(u64, u64)>) {
    for gc in inflight {
        for w in m.inflight.remove(gc).unwrap_or_default() {
            let _ = w.send(());
        }
    }
    if let Some((host, n)) = pinned {
        m.unpin(host, n);
        m.quarantine(host, n);
    }
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        if self.inflight.is_empty() && self.pinned.is_none() {
            return;
        }
        let inflight = std::mem::take(&mut self.inflight);
        let pinned = self.pinned.take();
        let Some(q) = self.q.upgrade() else {
            return; // the image is gone; nothing is left to wait
        };
        tracing::debug!("qcow2: a guest write was dropped before it finished");
        let done = match q.meta.try_lock() {
            Some(mut m) => {
                abandon(&mut m, &inflight, pinned);
                true
            }
            None => false,
        };
        if !done && oxemu_aio::in_event_loop() {
            // The lock holder may be this very future's caller: finish on the loop.
            drop(oxemu_aio::spawn_local(async move {
                let mut m = q.meta.lock().await;
                abandon(&mut m, &inflight, pinned);
            }));
        }
    }
}
