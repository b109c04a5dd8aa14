//! One structure for everything the broker must do later: delayed wills and session expiries.
//!
//! Each is an entry with a wall-clock deadline (milliseconds since the Unix epoch), not a task of
//! its own: an entry is a few dozen bytes where a sleeping task is a few hundred, and an entry is
//! plain data a store can keep across a restart, where a task and an `Instant` mean nothing after
//! one. Entries are never cancelled: whoever fires them checks whether they still apply (the
//! registry compares the session's generation), which makes scheduling one push and cancelling
//! free. One task per broker (`Timers::run`) sleeps until the earliest deadline.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::clock::{unix_millis, UnixMillis};

pub(crate) struct Timers<E> {
    pending: Mutex<Pending<E>>,
    /// Told when an entry earlier than every other arrives, so the task sleeps less.
    earlier: Notify,
}

struct Pending<E> {
    heap: BinaryHeap<Reverse<Timed<E>>>,
    /// Scheduling order, which breaks ties between equal deadlines.
    scheduled: u64,
}

/// An entry in the heap: ordered by deadline, then by scheduling order, never by the entry.
struct Timed<E> {
    due: UnixMillis,
    seq: u64,
    entry: E,
}

impl<E> PartialEq for Timed<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl<E> Eq for Timed<E> {}

impl<E> PartialOrd for Timed<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<E> Ord for Timed<E> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

impl<E> Default for Timers<E> {
    fn default() -> Self {
        Timers {
            pending: Mutex::new(Pending {
                heap: BinaryHeap::new(),
                scheduled: 0,
            }),
            earlier: Notify::new(),
        }
    }
}

impl<E> Timers<E> {
    /// Fires `entry` at `due` (at once when `due` has passed). Entries due at the same
    /// millisecond fire in the order they were scheduled.
    pub(crate) fn schedule(&self, due: UnixMillis, entry: E) {
        let mut p = self.pending.lock();
        let earliest = p.heap.peek().map_or(true, |Reverse(t)| due < t.due);
        let seq = p.scheduled;
        p.scheduled += 1;
        p.heap.push(Reverse(Timed { due, seq, entry }));
        drop(p);
        if earliest {
            self.earlier.notify_one();
        }
    }

    /// Drops the entries `keep` refuses once there are more than `bound`: entries are never
    /// cancelled, so the void ones of a client that keeps reconnecting would pile up until their
    /// deadlines. With `bound` at twice what can be valid at once, the sweep's cost is O(1) per
    /// entry scheduled, amortized.
    pub(crate) fn sweep_beyond(&self, bound: usize, keep: impl FnMut(&E) -> bool) {
        let mut keep = keep;
        let heap = &mut self.pending.lock().heap;
        if heap.len() > bound {
            heap.retain(|Reverse(t)| keep(&t.entry));
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.pending.lock().heap.len()
    }

    /// Removes and returns the entries due at `now`, earliest first.
    fn take_due(&self, now: UnixMillis, due: &mut Vec<E>) -> Option<UnixMillis> {
        let heap = &mut self.pending.lock().heap;
        while heap.peek().is_some_and(|Reverse(t)| t.due <= now) {
            if let Some(Reverse(t)) = heap.pop() {
                due.push(t.entry);
            }
        }
        heap.peek().map(|Reverse(t)| t.due)
    }

    /// Fires entries as they come due, until dropped (the broker holds it as a `Background`).
    pub(crate) async fn run(&self, mut fire: impl FnMut(E)) {
        let mut due = Vec::new();
        loop {
            // Registered before the heap is read: an earlier entry scheduled in between wakes it.
            let earlier = self.earlier.notified();
            tokio::pin!(earlier);
            earlier.as_mut().enable();
            let next = self.take_due(unix_millis(), &mut due);
            for entry in due.drain(..) {
                fire(entry);
            }
            match next {
                Some(at) => {
                    let wait = Duration::from_millis(at.saturating_sub(unix_millis()));
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = earlier => {}
                    }
                }
                None => earlier.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn entries_come_out_by_deadline_then_by_scheduling_order() {
        let timers = Timers::default();
        for (due, name) in [(30, "c"), (10, "a1"), (20, "b"), (10, "a2"), (40, "d")] {
            timers.schedule(due, name);
        }
        let mut due = Vec::new();
        assert_eq!(timers.take_due(25, &mut due), Some(30));
        assert_eq!(due, ["a1", "a2", "b"]);
        due.clear();
        assert_eq!(timers.take_due(100, &mut due), None);
        assert_eq!(due, ["c", "d"]);
    }

    #[test]
    fn a_sweep_beyond_the_bound_drops_what_is_void_and_keeps_the_order() {
        let timers = Timers::default();
        for i in 0..10u32 {
            timers.schedule(u64::from(100 - i), i);
        }
        timers.sweep_beyond(10, |_| false);
        timers.sweep_beyond(9, |i| i % 3 == 0);
        let mut due = Vec::new();
        assert_eq!(timers.take_due(1000, &mut due), None);
        assert_eq!(due, [9, 6, 3, 0]);
    }

    #[tokio::test]
    async fn the_task_fires_entries_when_due_and_wakes_for_an_earlier_one() {
        let timers = Arc::new(Timers::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let driver = {
            let timers = timers.clone();
            tokio::spawn(async move {
                timers
                    .run(|e| {
                        let _ = tx.send(e);
                    })
                    .await
            })
        };
        let start = unix_millis();
        timers.schedule(start + 60_000, "late");
        // Scheduled while the task sleeps for a minute: it must not wait that long.
        tokio::task::yield_now().await;
        timers.schedule(start + 50, "soon");
        timers.schedule(start, "now");
        let first = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(first.ok().flatten(), Some("now"));
        let second = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(second.ok().flatten(), Some("soon"));
        assert!(unix_millis() >= start + 50, "not before its deadline");
        let mut left = Vec::new();
        let next = timers.take_due(unix_millis(), &mut left);
        assert_eq!(
            (next, left.len()),
            (Some(start + 60_000), 0),
            "the late one still waits"
        );
        driver.abort();
    }
}
