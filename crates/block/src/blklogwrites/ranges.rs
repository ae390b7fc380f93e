//! In-flight request tracking, so that a read-modify-write of a partial log sector
//! cannot interleave with another write of that sector (QEMU's serialising
//! requests).

use std::sync::Mutex;
use std::task::{Poll, Waker};

#[derive(Default)]
struct Inner {
    next_id: u64,
    /// `(id, start, end, serialising)` of every request in flight.
    active: Vec<(u64, u64, u64, bool)>,
    waiters: Vec<Waker>,
}

/// The byte ranges that write requests in flight cover.
#[derive(Default)]
pub(super) struct Ranges {
    inner: Mutex<Inner>,
}

/// Holds a range until dropped.
pub(super) struct RangeGuard<'a> {
    ranges: &'a Ranges,
    id: u64,
}

impl Ranges {
    /// Waits until `start..end` overlaps no request in flight that conflicts with it
    /// (two requests conflict when either is serialising), then registers it.
    pub(super) async fn acquire(&self, start: u64, end: u64, serialising: bool) -> RangeGuard<'_> {
        let id = futures::future::poll_fn(|cx| {
            let mut g = self.inner.lock().unwrap();
            let busy = g
                .active
                .iter()
                .any(|&(_, s, e, ser)| (ser || serialising) && s < end && start < e);
            if busy {
                g.waiters.push(cx.waker().clone());
                return Poll::Pending;
            }
            let id = g.next_id;
            g.next_id += 1;
            g.active.push((id, start, end, serialising));
            Poll::Ready(id)
        })
        .await;
        RangeGuard { ranges: self, id }
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let waiters = {
            let mut g = self.ranges.inner.lock().unwrap();
            g.active.retain(|r| r.0 != self.id);
            std::mem::take(&mut g.waiters)
        };
        for w in waiters {
            w.wake();
        }
    }
}
