//! Closed-loop publishing (`--window N`): a device keeps at most N messages outstanding and,
//! without a publish interval, sends the next as soon as one completes, so the rate measured is
//! what the broker sustains rather than what it can buffer. At QoS 1 and 2 a message completes
//! with its PUBACK or PUBCOMP (the device's own in-flight list); at QoS 0 the broker
//! acknowledges nothing, so a message completes when this process's subscribers have seen it,
//! which this module counts per device and reports back to the device's task.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::timer::Timers;

/// At QoS 0, a device whose window stays full this long writes its outstanding messages off
/// (the verifier counts them as lost if they never arrive) rather than stall for the run.
pub const QOS0_STALL: Duration = Duration::from_secs(1);

/// Set in a device's counter while its task waits for a completion.
const WAITING: u64 = 1 << 63;

/// The QoS 0 feedback: per device of the process, the copies its subscribers have seen.
pub struct Seen {
    first: u64,
    /// Copies of each message the process's subscribers see (one per plain subscriber, one
    /// for a `$share` group).
    copies: u64,
    counts: Vec<AtomicU64>,
}

impl Seen {
    pub fn new(first: u64, devices: u64, copies: u64) -> Seen {
        Seen {
            first,
            copies: copies.max(1),
            counts: (0..devices).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn counter(&self, id: u64) -> Option<&AtomicU64> {
        self.counts
            .get(usize::try_from(id.wrapping_sub(self.first)).ok()?)
    }

    /// Messages of device `id` that are sent but not yet completed.
    pub fn outstanding(&self, id: u64, sent: u64) -> u64 {
        let seen = self
            .counter(id)
            .map_or(0, |c| c.load(Ordering::Acquire) & !WAITING);
        sent.saturating_sub(seen / self.copies)
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

    /// Counts every message of device `id` sent so far as completed (see [`QOS0_STALL`]).
    pub fn write_off(&self, id: u64, sent: u64) {
        let Some(counter) = self.counter(id) else {
            return;
        };
        let all = sent.saturating_mul(self.copies) & !WAITING;
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
        let seen = Seen::new(5, 2, 2);
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
        let seen = Seen::new(0, 1, 1);
        assert!(!seen.room(0, 3, 3));
        seen.write_off(0, 3);
        assert!(seen.room(0, 3, 3));
        seen.seen(0, &timers);
        assert_eq!(seen.outstanding(0, 4), 0);
    }
}
