//! The per-device sequence verdict of a subscriber: every message is in order, fills a gap
//! (arrived out of order), or repeats one already seen (duplicate). Loss is what never arrives:
//! the run's expected deliveries minus the unique ones, after the drain period.

use std::collections::HashMap;

/// Gaps remembered per device; beyond it the oldest are forgotten, so a late arrival of one of
/// them counts as a duplicate instead of out of order (it still counts as lost, once).
const MAX_GAPS_PER_DEVICE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    InOrder,
    /// Ahead of the expected sequence: `skipped` messages are missing for now.
    Ahead {
        skipped: u64,
    },
    /// A missing message arrived late.
    OutOfOrder,
    Duplicate,
}

/// Expected next sequence per device, dense by device id (ids are 0..devices), plus the open
/// gaps of the devices that have any.
#[derive(Debug, Default)]
pub struct Tracker {
    next: Vec<u64>,
    gaps: HashMap<u64, Vec<u64>>,
}

impl Tracker {
    pub fn observe(&mut self, device: u64, seq: u64) -> Verdict {
        let Ok(index) = usize::try_from(device) else {
            return Verdict::Duplicate;
        };
        if index >= self.next.len() {
            self.next.resize(index + 1, 0);
        }
        let next = &mut self.next[index];
        if seq == *next {
            *next += 1;
            return Verdict::InOrder;
        }
        if seq > *next {
            let skipped = seq - *next;
            let gaps = self.gaps.entry(device).or_default();
            // Only the most recent gaps fit; older ones are left to the loss arithmetic.
            let first = seq.saturating_sub(MAX_GAPS_PER_DEVICE as u64).max(*next);
            gaps.extend(first..seq);
            if gaps.len() > MAX_GAPS_PER_DEVICE {
                let excess = gaps.len() - MAX_GAPS_PER_DEVICE;
                gaps.drain(..excess);
            }
            *next = seq + 1;
            return Verdict::Ahead { skipped };
        }
        match self.gaps.get_mut(&device) {
            Some(gaps) => match gaps.binary_search(&seq) {
                Ok(at) => {
                    gaps.remove(at);
                    if gaps.is_empty() {
                        self.gaps.remove(&device);
                    }
                    Verdict::OutOfOrder
                }
                Err(_) => Verdict::Duplicate,
            },
            None => Verdict::Duplicate,
        }
    }

    /// Whether message `seq` of `device` arrived (one whose gap was forgotten counts as
    /// arrived: the loss arithmetic has it).
    pub fn has_seen(&self, device: u64, seq: u64) -> bool {
        let below_next = usize::try_from(device)
            .ok()
            .and_then(|i| self.next.get(i))
            .is_some_and(|next| seq < *next);
        below_next
            && self
                .gaps
                .get(&device)
                .map_or(true, |gaps| gaps.binary_search(&seq).is_err())
    }

    /// Messages seen to be missing so far (holes behind the highest sequence per device).
    #[cfg(test)]
    pub fn open_gaps(&self) -> u64 {
        self.gaps.values().map(|g| g.len() as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_has_no_findings() {
        let mut t = Tracker::default();
        for seq in 0..100 {
            assert_eq!(t.observe(3, seq), Verdict::InOrder);
        }
        assert_eq!(t.open_gaps(), 0);
    }

    #[test]
    fn gaps_reordering_and_duplicates() {
        let mut t = Tracker::default();
        assert_eq!(t.observe(1, 0), Verdict::InOrder);
        assert_eq!(t.observe(1, 3), Verdict::Ahead { skipped: 2 });
        assert_eq!(t.open_gaps(), 2);
        assert_eq!(t.observe(1, 2), Verdict::OutOfOrder);
        assert_eq!(t.observe(1, 2), Verdict::Duplicate);
        assert_eq!(t.observe(1, 3), Verdict::Duplicate);
        assert_eq!(t.observe(1, 0), Verdict::Duplicate);
        assert_eq!(t.open_gaps(), 1, "seq 1 is still missing");
        assert!(t.has_seen(1, 0) && t.has_seen(1, 2) && t.has_seen(1, 3));
        assert!(!t.has_seen(1, 1) && !t.has_seen(1, 4) && !t.has_seen(2, 0));
        assert_eq!(t.observe(1, 4), Verdict::InOrder);
        // Other devices are independent.
        assert_eq!(t.observe(0, 0), Verdict::InOrder);
        assert_eq!(t.observe(0, 0), Verdict::Duplicate);
    }

    #[test]
    fn gap_memory_is_bounded() {
        let mut t = Tracker::default();
        t.observe(0, 1_000_000);
        assert_eq!(t.open_gaps(), MAX_GAPS_PER_DEVICE as u64);
        assert_eq!(t.observe(0, 999_999), Verdict::OutOfOrder);
        assert_eq!(t.observe(0, 5), Verdict::Duplicate);
    }
}
