//! The process's device timers: every device's next deadline (keep-alive, publish, leave,
//! backoff) in one heap, and the task wakers that deadlines, phase changes and the disconnect
//! event wake. A tokio `Sleep` in each device would cost ~100 bytes of its task's future, which
//! decides whether an idle device's task cell is 256 or 384 bytes; here a device costs a waker
//! slot, a 4-byte armed deadline and at most a few 8-byte heap entries.
//!
//! Times are milliseconds since the process's first timer use (a device's times in 4 bytes;
//! millisecond resolution is tokio's timer's own).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Range;
use std::sync::OnceLock;
use std::task::Waker;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

/// No deadline: later than every time [`ms`] gives.
pub const NEVER: u32 = u32::MAX;

/// Milliseconds since the process's timer base.
pub fn ms(at: Instant) -> u32 {
    ms_of(at.saturating_duration_since(base()))
}

pub fn now_ms() -> u32 {
    ms(Instant::now())
}

pub fn ms_of(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX - 1)
}

fn instant(ms: u32) -> Instant {
    base() + Duration::from_millis(u64::from(ms))
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

pub struct Timers {
    first: u64,
    inner: Mutex<Inner>,
    /// Told when a deadline earlier than every armed one arrives, so the driver sleeps less.
    earlier: Notify,
}

struct Inner {
    /// Device `first + i`'s task waker, registered once (a task's waker does not change).
    wakers: Vec<Option<Waker>>,
    /// The deadline of device `i`'s live heap entry, or [`NEVER`]. Entries whose deadline is not
    /// their device's armed one are stale and skipped when they come up.
    armed: Vec<u32>,
    heap: BinaryHeap<Reverse<(u32, u32)>>,
}

impl Timers {
    pub fn new(devices: Range<u64>) -> Timers {
        let count = (devices.end - devices.start) as usize;
        Timers {
            first: devices.start,
            inner: Mutex::new(Inner {
                wakers: vec![None; count],
                armed: vec![NEVER; count],
                heap: BinaryHeap::new(),
            }),
            earlier: Notify::new(),
        }
    }

    fn index(&self, id: u64) -> usize {
        id.wrapping_sub(self.first) as usize
    }

    /// Registers device `id`'s task waker.
    pub fn park(&self, id: u64, waker: &Waker) {
        let index = self.index(id);
        if let Some(slot) = self.inner.lock().wakers.get_mut(index) {
            *slot = Some(waker.clone());
        }
    }

    /// Forgets device `id` (its task ends): no more wakes, its heap entries go stale.
    pub fn unpark(&self, id: u64) {
        let index = self.index(id);
        let mut inner = self.inner.lock();
        if let Some(slot) = inner.wakers.get_mut(index) {
            *slot = None;
        }
        if let Some(armed) = inner.armed.get_mut(index) {
            *armed = NEVER;
        }
    }

    /// Wakes device `id` now.
    pub fn wake(&self, id: u64) {
        if let Some(Some(waker)) = self.inner.lock().wakers.get(self.index(id)) {
            waker.wake_by_ref();
        }
    }

    /// Wakes every registered device.
    pub fn wake_all(&self) {
        for waker in self.inner.lock().wakers.iter().flatten() {
            waker.wake_by_ref();
        }
    }

    /// Wakes device `id` at `deadline` (or soon after: it checks the time when woken). An
    /// entry that fires no later is kept: when it fires early the device arms again.
    pub fn arm(&self, id: u64, deadline: u32) {
        let index = self.index(id);
        let mut inner = self.inner.lock();
        let Some(armed) = inner.armed.get_mut(index) else {
            return;
        };
        if *armed <= deadline {
            return;
        }
        *armed = deadline;
        let earliest = inner
            .heap
            .peek()
            .map_or(true, |Reverse((next, _))| deadline < *next);
        inner.heap.push(Reverse((deadline, index as u32)));
        drop(inner);
        if earliest {
            self.earlier.notify_one();
        }
    }

    /// Wakes devices as their deadlines come; runs for the engine's life.
    pub async fn drive(&self) {
        loop {
            let next = self.fire(now_ms());
            let earlier = self.earlier.notified();
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(instant(at)) => {}
                        _ = earlier => {}
                    }
                }
                None => earlier.await,
            }
        }
    }

    /// Wakes the devices due at `now`; returns the next deadline.
    fn fire(&self, now: u32) -> Option<u32> {
        let mut inner = self.inner.lock();
        let Inner {
            wakers,
            armed,
            heap,
        } = &mut *inner;
        while let Some(&Reverse((deadline, index))) = heap.peek() {
            if deadline > now {
                return Some(deadline);
            }
            heap.pop();
            let index = index as usize;
            if armed[index] == deadline {
                armed[index] = NEVER;
                if let Some(waker) = &wakers[index] {
                    waker.wake_by_ref();
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn timers_with_wakers(n: u64) -> (Timers, Vec<Arc<Count>>) {
        let timers = Timers::new(10..10 + n);
        let counts: Vec<_> = (0..n)
            .map(|_| Arc::new(Count(AtomicUsize::new(0))))
            .collect();
        for (i, count) in counts.iter().enumerate() {
            timers.park(10 + i as u64, &Waker::from(count.clone()));
        }
        (timers, counts)
    }

    fn woken(counts: &[Arc<Count>]) -> Vec<usize> {
        counts.iter().map(|c| c.0.load(Ordering::SeqCst)).collect()
    }

    #[test]
    fn wakes_each_device_once_at_its_deadline() {
        let (timers, counts) = timers_with_wakers(3);
        timers.arm(10, 50);
        timers.arm(11, 20);
        timers.arm(12, 80);
        assert_eq!(timers.fire(19), Some(20));
        assert_eq!(woken(&counts), [0, 0, 0]);
        assert_eq!(timers.fire(50), Some(80));
        assert_eq!(woken(&counts), [1, 1, 0]);
        assert_eq!(timers.fire(1_000), None);
        assert_eq!(woken(&counts), [1, 1, 1]);
    }

    #[test]
    fn an_earlier_deadline_replaces_a_later_one_and_a_later_one_waits_for_it() {
        let (timers, counts) = timers_with_wakers(1);
        timers.arm(10, 100);
        timers.arm(10, 40);
        // Later than the armed 40: kept for when 40 fires (the device then arms again).
        timers.arm(10, 70);
        assert_eq!(timers.fire(40), Some(100));
        assert_eq!(woken(&counts), [1]);
        // The stale entry for 100 wakes nobody.
        assert_eq!(timers.fire(100), None);
        assert_eq!(woken(&counts), [1]);
    }

    #[test]
    fn a_finished_device_is_not_woken_and_strangers_are_ignored() {
        let (timers, counts) = timers_with_wakers(2);
        timers.arm(10, 5);
        timers.arm(11, 5);
        timers.unpark(10);
        timers.arm(99, 1);
        timers.arm(3, 1);
        assert_eq!(timers.fire(5), None);
        assert_eq!(woken(&counts), [0, 1]);
        timers.wake_all();
        assert_eq!(woken(&counts), [0, 2]);
    }
}
