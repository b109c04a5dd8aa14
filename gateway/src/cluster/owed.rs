//! What the nodes that fell silent or left owe: the plain interest entries their persistent
//! sessions held. Until those sessions have a home again, a QoS 1/2 message such an entry
//! matches has nowhere safe to go, and its publisher is refused rather than acknowledged
//! (`link`). What a node owes is settled entry by entry as it announces them as durable again
//! (back, its sessions taken back), all at once when its sessions were adopted (`adoption`), or
//! after `OWED_FOR`, when cross-node delivery to them is at most once again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::topic_index::TopicIndex;

/// How long a silent or leaving node's entries are owed at most: a silent node's adoption
/// comes at the latest once the survivors' connections have been up for `adoption::STEADY`
/// (15 s) and a ping went unanswered; a restart takes seconds.
pub(crate) const OWED_FOR: Duration = Duration::from_secs(30);

/// A node's debt: its id (in `RemoteInterest`), until when, and its filters.
type Debt = (u32, Instant, Vec<String>);

#[derive(Default)]
pub(crate) struct Owed {
    /// Owed filters, by node id.
    index: TopicIndex<u32, ()>,
    by_node: Mutex<HashMap<String, Debt>>,
    /// Whether anything is owed: the common case asks nothing more.
    owing: AtomicBool,
}

impl Owed {
    /// `node` (id `id`) owes `filters` from `now` for `OWED_FOR` at most.
    pub(crate) fn owe(&self, node: &str, id: u32, filters: Vec<String>, now: Instant) {
        if filters.is_empty() {
            return;
        }
        for f in &filters {
            self.index.insert(f, None, id, ());
        }
        self.owing.store(true, Ordering::Relaxed);
        self.by_node
            .lock()
            .insert(node.to_owned(), (id, now + OWED_FOR, filters));
    }

    /// Whether some node owes what matches `topic`.
    pub(crate) fn owes(&self, topic: &str) -> bool {
        self.owing.load(Ordering::Relaxed) && !self.index.matches(topic).plain.is_empty()
    }

    /// `node` announces `filter` as durable again: what it owed for it is settled.
    pub(crate) fn covered(&self, node: &str, filter: &str) {
        if !self.owing.load(Ordering::Relaxed) {
            return;
        }
        let mut by_node = self.by_node.lock();
        let Some((id, _, filters)) = by_node.get_mut(node) else {
            return;
        };
        let before = filters.len();
        filters.retain(|f| f != filter);
        if filters.len() < before {
            self.index.remove(filter, None, id);
        }
        if filters.is_empty() {
            by_node.remove(node);
        }
        self.owing.store(!by_node.is_empty(), Ordering::Relaxed);
    }

    /// What `node` owed is settled: its sessions adopted (or the node found alive).
    pub(crate) fn settle(&self, node: &str) {
        let mut by_node = self.by_node.lock();
        if let Some((id, _, filters)) = by_node.remove(node) {
            for f in filters {
                self.index.remove(&f, None, &id);
            }
        }
        self.owing.store(!by_node.is_empty(), Ordering::Relaxed);
    }

    /// Ends the debts older than `OWED_FOR`.
    pub(crate) fn expire(&self, now: Instant) {
        let overdue: Vec<String> = self
            .by_node
            .lock()
            .iter()
            .filter(|(_, (_, until, _))| *until <= now)
            .map(|(node, _)| node.clone())
            .collect();
        for node in overdue {
            self.settle(&node);
        }
    }
}
