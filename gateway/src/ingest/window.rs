//! The writes a rule has sent to JetStream and not yet seen answered, by the sequence number
//! that names each one's reply subject.
//!
//! JetStream answers in the order the writes were sent, nearly always, so the window is a ring
//! indexed by sequence number: taking an answer costs no lookup, and the oldest unanswered write
//! is at the front, where timeouts are found. Its span (oldest unanswered to newest sent) is what
//! the writer bounds: a write whose answer is lost holds the window until its attempt times out,
//! so the ring never holds more than the rule's `max_inflight` slots, answered or not.
//! Sequence numbers are never reused, so a late answer to an attempt that timed out finds
//! nothing to take and is ignored.

use std::collections::VecDeque;
use std::time::Instant;

pub(super) struct Window<T> {
    /// Sequence number of the front slot.
    base: u64,
    /// `None` once answered; the front slot is never `None`.
    slots: VecDeque<Option<(T, Instant)>>,
}

impl<T> Window<T> {
    pub(super) fn new() -> Window<T> {
        Window {
            base: 0,
            slots: VecDeque::new(),
        }
    }

    /// Slots from the oldest unanswered write to the newest sent.
    pub(super) fn span(&self) -> usize {
        self.slots.len()
    }

    /// The sequence number the next `push` gets.
    pub(super) fn next_seq(&self) -> u64 {
        self.base + self.slots.len() as u64
    }

    /// Records `item` as sent at `at`; returns its sequence number.
    pub(super) fn push(&mut self, item: T, at: Instant) -> u64 {
        let seq = self.next_seq();
        self.slots.push_back(Some((item, at)));
        seq
    }

    /// The write answered as `seq`, if it still waits.
    pub(super) fn take(&mut self, seq: u64) -> Option<T> {
        let index = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        let (item, _) = self.slots.get_mut(index)?.take()?;
        self.trim();
        Some(item)
    }

    /// The oldest unanswered write if it was sent at or before `sent_by`.
    pub(super) fn take_sent_by(&mut self, sent_by: Instant) -> Option<T> {
        match self.slots.front() {
            Some(Some((_, at))) if *at <= sent_by => {
                let (item, _) = self.slots.pop_front().flatten()?;
                self.base += 1;
                self.trim();
                Some(item)
            }
            _ => None,
        }
    }

    fn trim(&mut self) {
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.base += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Push,
        /// Answer the write this many sequence numbers back from the next one (may be gone).
        Take(u8),
        /// Time out what was sent this many pushes ago or earlier.
        Expire(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Push),
            3 => (1u8..20).prop_map(Op::Take),
            1 => (0u8..20).prop_map(Op::Expire),
        ]
    }

    proptest! {
        /// Against a naive model (a sorted map from sequence number to send time): the same
        /// writes taken, the same left, and the span from the oldest left to the newest sent.
        #[test]
        fn behaves_like_a_sorted_map(ops in proptest::collection::vec(op(), 0..200)) {
            let start = Instant::now();
            let mut window = Window::new();
            let mut model: BTreeMap<u64, Instant> = BTreeMap::new();
            let mut next = 0u64;
            for op in ops {
                match op {
                    Op::Push => {
                        let at = start + Duration::from_millis(next);
                        prop_assert_eq!(window.push(next, at), next);
                        model.insert(next, at);
                        next += 1;
                    }
                    Op::Take(back) => {
                        let seq = next.wrapping_sub(u64::from(back));
                        prop_assert_eq!(window.take(seq), model.remove(&seq).map(|_| seq));
                    }
                    Op::Expire(ago) => {
                        let Some(by) = next.checked_sub(u64::from(ago) + 1) else { continue };
                        let by = start + Duration::from_millis(by);
                        while let Some(seq) = window.take_sent_by(by) {
                            let (&oldest, &at) = model.iter().next().expect("model has it");
                            prop_assert_eq!(seq, oldest);
                            prop_assert!(at <= by);
                            model.remove(&seq);
                        }
                        prop_assert!(model.values().all(|&at| at > by));
                    }
                }
                let span = model.keys().next().map_or(0, |&oldest| (next - oldest) as usize);
                prop_assert_eq!(window.span(), span);
                prop_assert_eq!(window.next_seq(), next);
            }
        }
    }
}
