//! Virtual time: QEMU's `QEMU_CLOCK_VIRTUAL` under `-accel qtest`.
//!
//! The clock stands still until [`Clock::warp`] moves it (qtest's `clock_step` and
//! `clock_set`). Warping runs the timers that fall due on the way, in deadline
//! order, with the clock set to each timer's deadline while it runs, as QEMU's
//! `qtest_clock_warp` does. A timer callback may re-arm any timer, itself included.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A timer's callback; it gets the clock's value when it runs.
pub type TimerCallback = Box<dyn FnMut(i64) + Send>;

#[derive(Default)]
struct State {
    now: i64,
    next_id: u64,
    /// Armed timers: (deadline, id).
    armed: BTreeMap<(i64, u64), ()>,
    deadlines: BTreeMap<u64, i64>,
    callbacks: BTreeMap<u64, Option<TimerCallback>>,
}

/// The virtual clock, shared by the machine and its devices.
#[derive(Clone, Default)]
pub struct Clock {
    st: Arc<Mutex<State>>,
}

/// A timer created on a [`Clock`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerId(u64);

impl Clock {
    /// A clock at 0 with no timers.
    pub fn new() -> Self {
        Self::default()
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Nanoseconds of virtual time.
    pub fn now(&self) -> i64 {
        self.st().now
    }

    /// Creates an unarmed timer.
    pub fn new_timer(&self, cb: TimerCallback) -> TimerId {
        let mut s = self.st();
        s.next_id += 1;
        let id = s.next_id;
        s.callbacks.insert(id, Some(cb));
        TimerId(id)
    }

    /// Arms `t` to fire at `deadline` ns (re-arming moves it).
    pub fn timer_mod(&self, t: TimerId, deadline: i64) {
        let mut s = self.st();
        if !s.callbacks.contains_key(&t.0) {
            return;
        }
        if let Some(old) = s.deadlines.insert(t.0, deadline) {
            s.armed.remove(&(old, t.0));
        }
        s.armed.insert((deadline, t.0), ());
    }

    /// Disarms `t`.
    pub fn timer_del(&self, t: TimerId) {
        let mut s = self.st();
        if let Some(old) = s.deadlines.remove(&t.0) {
            s.armed.remove(&(old, t.0));
        }
    }

    /// Disarms and forgets `t`.
    pub fn timer_free(&self, t: TimerId) {
        self.timer_del(t);
        self.st().callbacks.remove(&t.0);
    }

    /// Whether `t` is armed.
    pub fn timer_pending(&self, t: TimerId) -> bool {
        self.st().deadlines.contains_key(&t.0)
    }

    /// Nanoseconds until the next timer is due (0 if one is overdue), or `None`
    /// if none is armed (QEMU's `qemu_clock_deadline_ns_all`, where none is -1).
    pub fn deadline_ns(&self) -> Option<i64> {
        let s = self.st();
        s.armed
            .keys()
            .next()
            .map(|(d, _)| d.saturating_sub(s.now).max(0))
    }

    /// Moves the clock forward to `dest` (never backwards), running due timers.
    pub fn warp(&self, dest: i64) {
        loop {
            let (id, mut cb, at) = {
                let mut s = self.st();
                let due = s.armed.keys().next().copied().filter(|(d, _)| *d <= dest);
                let Some((d, id)) = due else {
                    if dest > s.now {
                        s.now = dest;
                    }
                    return;
                };
                s.armed.remove(&(d, id));
                s.deadlines.remove(&id);
                if d > s.now {
                    s.now = d;
                }
                let now = s.now;
                match s.callbacks.get_mut(&id).and_then(|c| c.take()) {
                    Some(cb) => (id, cb, now),
                    None => continue,
                }
            };
            cb(at);
            let mut s = self.st();
            if let Some(slot) = s.callbacks.get_mut(&id) {
                *slot = Some(cb);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI64, Ordering};

    #[test]
    fn timers_fire_in_order_at_their_deadline_and_can_rearm() {
        let c = Clock::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        let c2 = c.clone();
        let slot = Arc::new(Mutex::new(None::<TimerId>));
        let s2 = slot.clone();
        let periodic = c.new_timer(Box::new(move |now| {
            l.lock().unwrap().push(("p", now));
            if now < 300 {
                c2.timer_mod(s2.lock().unwrap().unwrap(), now + 100);
            }
        }));
        *slot.lock().unwrap() = Some(periodic);
        let l = log.clone();
        let once = c.new_timer(Box::new(move |now| l.lock().unwrap().push(("o", now))));
        c.timer_mod(periodic, 100);
        c.timer_mod(once, 150);
        assert_eq!(c.deadline_ns(), Some(100));
        c.warp(250);
        assert_eq!(c.now(), 250);
        assert_eq!(*log.lock().unwrap(), [("p", 100), ("o", 150), ("p", 200)]);
        c.warp(10_000);
        assert_eq!(log.lock().unwrap().last(), Some(&("p", 300)));
        assert_eq!(log.lock().unwrap().len(), 4);
        assert_eq!(c.deadline_ns(), None);
        // Never backwards.
        c.warp(5);
        assert_eq!(c.now(), 10_000);
    }

    #[test]
    fn deleted_timers_do_not_fire() {
        let c = Clock::new();
        let hits = Arc::new(AtomicI64::new(0));
        let h = hits.clone();
        let t = c.new_timer(Box::new(move |_| {
            h.fetch_add(1, Ordering::SeqCst);
        }));
        c.timer_mod(t, 10);
        assert!(c.timer_pending(t));
        c.timer_del(t);
        c.warp(100);
        assert_eq!(hits.load(Ordering::SeqCst), 0);
        c.timer_mod(t, 50); // in the past: fires on the next warp
        assert_eq!(c.deadline_ns(), Some(0));
        c.warp(100);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }
}
