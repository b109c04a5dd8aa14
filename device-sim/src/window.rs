//! Closed-loop publishing (`--window N`): a device keeps at most N messages outstanding and,
//! without a publish interval, sends the next as soon as one completes, so the rate measured is
//! what the broker sustains rather than what it can buffer. When the run's subscribers share
//! the devices' process, a message completes when they have all seen it (and, at QoS 1 and 2,
//! it is acknowledged): a broker that acknowledges at once but delivers slowly would otherwise
//! only fill its queues. This module counts, per device, the copies the subscribers have seen
//! and wakes the device's task when its window opens. Across processes, QoS 1 and 2 fall back
//! to the acknowledgement alone; QoS 0 has nothing else, so it needs one process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::timer::Timers;

/// A device whose window stays full this long writes its unseen messages off (the verifier
/// counts them as lost if they never arrive) rather than stall for the rest of the run.
pub const STALL: Duration = Duration::from_secs(1);

/// Set in a device's counter while its task waits for a completion.
const WAITING: u64 = 1 << 63;

/// The subscribers' feedback: per device, the copies of its messages they have seen.
pub struct Seen {
    first: u64,
    /// Per target, the copies of one message the subscribers see (one per plain subscriber on
    /// that broker, one for a `$share` group); 0 where no subscriber sees the target.
    copies: Vec<u64>,
    counts: Vec<AtomicU64>,
}

impl Seen {
    pub fn new(first: u64, devices: u64, copies: Vec<u64>) -> Seen {
        Seen {
            first,
            copies,
            counts: (0..devices).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn copies(&self, id: u64) -> u64 {
        let targets = self.copies.len().max(1) as u64;
        self.copies
            .get((id % targets) as usize)
            .copied()
            .unwrap_or(0)
    }

    fn counter(&self, id: u64) -> Option<&AtomicU64> {
        self.counts
            .get(usize::try_from(id.wrapping_sub(self.first)).ok()?)
    }

    /// Messages of device `id` that are sent but not yet seen by every subscriber meant to see
    /// them (none when no subscriber sees its target).
    pub fn outstanding(&self, id: u64, sent: u64) -> u64 {
        let copies = self.copies(id);
        if copies == 0 {
            return 0;
        }
        let seen = self
            .counter(id)
            .map_or(0, |c| c.load(Ordering::Acquire) & !WAITING);
        sent.saturating_sub(seen / copies)
    }

    /// Whether device `id` may send another message with `sent` sent so far; when it may not,
    /// its task is registered to be woken by the next completion.
    pub fn room(&self, id: u64, sent: u64, window: u32) -> bool {
        if self.outstanding(id, sent) < u64::from(window) {
            return true;
        }
        if let Some(counter) = self.counter(id) {
            counter.fetch_or(WAITING, Ordering::AcqRel);
        }
        // A completion between the check and the flag would not wake the task: look again.
        self.outstanding(id, sent) < u64::from(window)
    }

    /// A subscriber saw a copy of one of device `id`'s messages.
    pub fn seen(&self, id: u64, timers: &Timers) {
        let Some(counter) = self.counter(id) else {
            return;
        };
        if counter.fetch_add(1, Ordering::AcqRel) & WAITING != 0 {
            counter.fetch_and(!WAITING, Ordering::AcqRel);
            timers.wake(id);
        }
    }

    /// Counts every message of device `id` sent so far as completed (see [`STALL`]).
    pub fn write_off(&self, id: u64, sent: u64) {
        let Some(counter) = self.counter(id) else {
            return;
        };
        let all = sent.saturating_mul(self.copies(id)) & !WAITING;
        // Infallible: the closure always returns a value.
        let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |count| {
            Some((count & WAITING) | (count & !WAITING).max(all))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_completes_when_every_copy_is_seen() {
        let timers = Timers::new(5..7);
        let seen = Seen::new(5, 2, vec![2]);
        assert!(seen.room(5, 1, 2));
        assert!(!seen.room(5, 2, 2));
        seen.seen(5, &timers);
        assert_eq!(seen.outstanding(5, 2), 2);
        seen.seen(5, &timers);
        assert_eq!(seen.outstanding(5, 2), 1);
        assert!(seen.room(5, 2, 2));
        assert_eq!(seen.outstanding(6, 3), 3);
        // Not this process's device: nothing to count, nothing to wake.
        seen.seen(99, &timers);
        assert_eq!(seen.outstanding(99, 4), 4);
    }

    #[test]
    fn a_write_off_opens_the_window_and_late_copies_do_not_close_it() {
        let timers = Timers::new(0..1);
        let seen = Seen::new(0, 1, vec![1]);
        assert!(!seen.room(0, 3, 3));
        seen.write_off(0, 3);
        assert!(seen.room(0, 3, 3));
        seen.seen(0, &timers);
        assert_eq!(seen.outstanding(0, 4), 0);
    }

    #[test]
    fn copies_follow_the_device_target() {
        let timers = Timers::new(0..2);
        // Device 0 is on target 0 (seen by two subscribers), device 1 on target 1 (by none).
        let seen = Seen::new(0, 2, vec![2, 0]);
        seen.seen(0, &timers);
        assert_eq!(seen.outstanding(0, 1), 1);
        seen.seen(0, &timers);
        assert_eq!(seen.outstanding(0, 1), 0);
        assert_eq!(seen.outstanding(1, 5), 0);
    }
}
