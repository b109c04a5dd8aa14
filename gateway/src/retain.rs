//! The retained-message store: at most one message per topic name, replayed to new subscribers.
//!
//! A new subscription asks for every retained message whose topic matches its filter, which is
//! the reverse of the routing question [`crate::topic_index`] answers. Topics are therefore kept
//! in a trie of levels, so a filter with a literal prefix (`sensors/+/temp`) walks only the
//! matching branch instead of scanning every retained topic. The trie is sharded by first level,
//! like the subscription index, so retained publishes to unrelated trees do not contend, and
//! path-compressed ([`crate::trie_edges`]), so a topic no other shares costs one edge.
//!
//! The store is bounded in topics and in bytes (`mqtt.retained_max`, `mqtt.retained_max_bytes`),
//! both taken before the trie grows; a message counts what its value holds (the `weigh` the
//! owner gives), its topic and [`ENTRY_BYTES`].

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::RwLock;
use thiserror::Error;

use crate::topic;
use crate::trie_edges::{self, Branching, Edges};

const SHARDS: usize = 16;

/// What the store itself spends on one topic besides its label's bytes, counted against the
/// byte bound: an edge and a node, and the edge a split may add. The heap figures of
/// BENCHMARKS.md "Memory per topic" (`heap_count::figures`) stay under this.
pub(crate) const ENTRY_BYTES: usize = 160;

/// Storing the message would exceed the configured maximum: of distinct topics, or of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("retained message store is full")]
pub(crate) struct RetainFull;

/// A node exists where a retained message is or where topics branch (see [`trie_edges`]).
struct Node<V> {
    edges: Edges<Node<V>>,
    value: Option<V>,
}

impl<V> Branching for Node<V> {
    fn empty() -> Self {
        Node {
            edges: Edges::new(),
            value: None,
        }
    }

    fn edges(&self) -> &Edges<Self> {
        &self.edges
    }

    fn edges_mut(&mut self) -> &mut Edges<Self> {
        &mut self.edges
    }

    fn holds(&self) -> bool {
        self.value.is_some()
    }
}

impl<V> Node<V> {
    /// Removes the value at `levels` and prunes what is left empty, joining an edge with the one
    /// below it where the node between is now a mere bend. Iterative rather than recursive so
    /// that topic depth cannot exhaust the stack.
    fn remove(&mut self, levels: &[&str]) -> Option<V> {
        // The first level of each edge on the path, and how many of them lead to the deepest
        // node that must survive pruning: every node below it holds only this topic.
        let mut hops: Vec<&str> = Vec::new();
        let mut keep = 0;
        let mut node = &mut *self;
        let mut at = 0;
        while let Some(&level) = levels.get(at) {
            if node.value.is_some() || node.edges.len() > 1 {
                keep = hops.len();
            }
            let edge = node.edges.get_mut(level)?;
            at += edge.spells(&levels[at..])?;
            hops.push(level);
            node = &mut edge.node;
        }
        let value = node.value.take()?;
        if node.edges.is_empty() {
            if let Some(survivor) = trie_edges::walk_mut(self, &hops[..keep]) {
                survivor.edges.remove(hops[keep]);
            }
            trie_edges::rejoin(self, &hops[..keep]);
        } else {
            trie_edges::rejoin(self, &hops);
        }
        Some(value)
    }

    /// Hands `visit` the values whose topics match `filter` (a topic filter's levels) until it
    /// returns false; returns false when it was stopped so.
    fn visit(&self, filter: &[&str], visit: &mut impl FnMut(&V) -> bool) -> bool {
        // `None` depth: everything below the node matches (we are under a `#`).
        let mut stack: Vec<(&Self, Option<usize>)> = vec![(self, Some(0))];
        while let Some((node, depth)) = stack.pop() {
            let Some(depth) = depth else {
                if node.value.as_ref().is_some_and(|v| !visit(v)) {
                    return false;
                }
                stack.extend(node.edges.iter().map(|edge| (&edge.node, None)));
                continue;
            };
            match filter.get(depth) {
                None => {
                    if node.value.as_ref().is_some_and(|v| !visit(v)) {
                        return false;
                    }
                }
                Some(&"#") => {
                    // `a/#` also matches `a` itself.
                    if node.value.as_ref().is_some_and(|v| !visit(v)) {
                        return false;
                    }
                    stack.extend(
                        node.edges
                            .iter()
                            .filter(|edge| depth > 0 || !edge.label().starts_with('$'))
                            .map(|edge| (&edge.node, None)),
                    );
                }
                Some(&"+") => stack.extend(node.edges.iter().filter_map(|edge| {
                    let below = meet(edge.label(), filter, depth)?;
                    Some((&edge.node, below))
                })),
                Some(literal) => {
                    if let Some(edge) = node.edges.get(literal) {
                        if let Some(below) = meet(edge.label(), filter, depth) {
                            stack.push((&edge.node, below));
                        }
                    }
                }
            }
        }
        true
    }
}

/// Where `filter`'s levels from `depth` on lead through an edge labelled `label`: `None` if
/// they do not match it, `Some(None)` if a `#` within it matches all below, otherwise the
/// filter depth at the edge's node.
fn meet(label: &str, filter: &[&str], depth: usize) -> Option<Option<usize>> {
    let mut at = depth;
    for level in label.split('/') {
        // MQTT §4.7.2: wildcards in the first level do not match topics starting with '$'.
        let wild_ok = at > 0 || !level.starts_with('$');
        match *filter.get(at)? {
            "#" if wild_ok => return Some(None),
            "+" if wild_ok => {}
            literal if literal == level => {}
            _ => return None,
        }
        at += 1;
    }
    Some(Some(at))
}

/// Retained messages by topic name, bounded to `max` distinct topics and to `max_bytes` bytes.
pub(crate) struct RetainStore<V> {
    shards: Box<[RwLock<Node<V>>]>,
    hasher: RandomState,
    len: AtomicUsize,
    max: usize,
    bytes: AtomicUsize,
    max_bytes: usize,
    /// The bytes a value holds on the heap, its topic excepted (the store counts that).
    weigh: fn(&V) -> usize,
}

impl<V: Clone> RetainStore<V> {
    pub(crate) fn new(max: usize) -> Self {
        RetainStore {
            shards: (0..SHARDS).map(|_| RwLock::new(Node::empty())).collect(),
            hasher: RandomState::new(),
            len: AtomicUsize::new(0),
            max,
            bytes: AtomicUsize::new(0),
            max_bytes: usize::MAX,
            weigh: |_| 0,
        }
    }

    /// The store bounded to `max_bytes` too: each message counts what `weigh` says its value
    /// holds, plus its topic and [`ENTRY_BYTES`].
    pub(crate) fn with_max_bytes(mut self, max_bytes: usize, weigh: fn(&V) -> usize) -> Self {
        self.max_bytes = max_bytes;
        self.weigh = weigh;
        self
    }

    fn cost(&self, topic: &str, value: &V) -> usize {
        (self.weigh)(value)
            .saturating_add(topic.len())
            .saturating_add(ENTRY_BYTES)
    }

    /// Takes `n` more bytes if they fit under the bound.
    fn reserve_bytes(&self, n: usize) -> Result<(), RetainFull> {
        self.bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                b.checked_add(n).filter(|&total| total <= self.max_bytes)
            })
            .map(drop)
            .map_err(|_| RetainFull)
    }

    /// Stores (replacing) the retained message for `topic` (a valid topic name). A new topic is
    /// refused once `max` topics are stored, and any message that would take the store past
    /// `max_bytes`: a replacement refused so leaves the message it would have replaced. Both
    /// bounds are taken before the trie grows, so a refused message leaves no node behind.
    pub(crate) fn set(&self, topic: &str, value: V) -> Result<Option<V>, RetainFull> {
        let levels: Vec<&str> = topic.split('/').collect();
        let cost = self.cost(topic, &value);
        let mut root = self.shard(topic::first_level(topic)).write();
        if let Some(slot) =
            trie_edges::descend_mut(&mut *root, &levels).and_then(|node| node.value.as_mut())
        {
            let old = self.cost(topic, slot);
            if cost > old {
                self.reserve_bytes(cost - old)?;
            } else {
                self.bytes.fetch_sub(old - cost, Ordering::Relaxed);
            }
            return Ok(Some(std::mem::replace(slot, value)));
        }
        self.len
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .map_err(|_| RetainFull)?;
        if let Err(full) = self.reserve_bytes(cost) {
            self.len.fetch_sub(1, Ordering::Relaxed);
            return Err(full);
        }
        trie_edges::descend_or_make(&mut *root, &levels).value = Some(value);
        Ok(None)
    }

    pub(crate) fn remove(&self, topic: &str) -> Option<V> {
        let levels: Vec<&str> = topic.split('/').collect();
        let removed = self
            .shard(topic::first_level(topic))
            .write()
            .remove(&levels)?;
        self.len.fetch_sub(1, Ordering::Relaxed);
        self.bytes
            .fetch_sub(self.cost(topic, &removed), Ordering::Relaxed);
        Some(removed)
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// What the stored messages count against `max_bytes`.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Hands `visit` every retained value whose topic matches `filter` (a valid topic filter), in
    /// no particular order, until it returns false: a caller with a bound stops the walk there
    /// instead of collecting what it would throw away.
    pub(crate) fn matching(&self, filter: &str, mut visit: impl FnMut(&V) -> bool) {
        let levels: Vec<&str> = filter.split('/').collect();
        match levels.first() {
            Some(&("+" | "#")) | None => {
                for shard in self.shards.iter() {
                    if !shard.read().visit(&levels, &mut visit) {
                        return;
                    }
                }
            }
            Some(first) => {
                self.shard(first).read().visit(&levels, &mut visit);
            }
        }
    }

    fn shard(&self, first_level: &str) -> &RwLock<Node<V>> {
        // Truncating the hash is fine: only its low bits pick the shard.
        &self.shards[(self.hasher.hash_one(first_level) as usize) % SHARDS]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::strategies;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::time::Instant;

    fn matching_sorted<V: Clone + Ord>(store: &RetainStore<V>, filter: &str) -> Vec<V> {
        let mut out = Vec::new();
        store.matching(filter, |v| {
            out.push(v.clone());
            true
        });
        out.sort();
        out
    }

    #[test]
    fn a_walk_stops_where_the_visitor_says() {
        let store = RetainStore::new(100);
        for i in 0..50 {
            store.set(&format!("{}/x/{i}", i % 5), i).unwrap();
        }
        for filter in ["#", "+/x/+", "3/#"] {
            let mut seen = 0;
            store.matching(filter, |_| {
                seen += 1;
                seen < 4
            });
            assert_eq!(
                seen, 4,
                "{filter}: the walk went on after the visitor stopped it"
            );
        }
    }

    fn node_count<V>(store: &RetainStore<V>) -> usize {
        fn below<V>(node: &Node<V>) -> usize {
            node.edges.iter().map(|e| 1 + below(&e.node)).sum()
        }
        store.shards.iter().map(|s| below(&s.read())).sum()
    }

    #[test]
    fn set_replace_remove_and_limit() {
        let store = RetainStore::new(2);
        assert_eq!(store.set("a/b", 1), Ok(None));
        assert_eq!(store.set("a/b", 2), Ok(Some(1)));
        assert_eq!(store.set("c", 3), Ok(None));
        assert_eq!(store.set("d", 4), Err(RetainFull));
        assert_eq!(
            store.set("c", 5),
            Ok(Some(3)),
            "replacing is allowed when full"
        );
        assert_eq!(store.len(), 2);
        assert_eq!(store.remove("a/b"), Some(2));
        assert_eq!(store.remove("a/b"), None);
        assert_eq!(store.remove("a"), None);
        assert_eq!(store.set("d", 4), Ok(None));
        assert_eq!(store.len(), 2);
        assert_eq!(matching_sorted(&store, "#"), vec![4, 5]);
    }

    #[test]
    fn a_node_and_its_edge_stay_small() {
        // A retained message's place in the store: its edge is a label and a node, the node an
        // edge vector and the value.
        type N = Node<std::sync::Arc<crate::message::Message>>;
        assert!(
            std::mem::size_of::<N>() <= 32,
            "{}",
            std::mem::size_of::<N>()
        );
        assert!(std::mem::size_of::<trie_edges::Edge<N>>() <= 48);
    }

    #[test]
    fn refused_topic_leaves_no_nodes() {
        let store = RetainStore::new(0);
        assert_eq!(store.set("a/b/c", 1), Err(RetainFull));
        assert_eq!(node_count(&store), 0);
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn mqtt_matching_rules() {
        let store = RetainStore::new(100);
        for (i, topic) in ["a", "a/b", "a//c", "/", "$SYS/x", "$SYS", "b/$x"]
            .into_iter()
            .enumerate()
        {
            store.set(topic, i).unwrap();
        }
        assert_eq!(matching_sorted(&store, "a/#"), vec![0, 1, 2]);
        assert_eq!(matching_sorted(&store, "a/+/c"), vec![2]);
        assert_eq!(matching_sorted(&store, "+/+"), vec![1, 3, 6]);
        assert_eq!(matching_sorted(&store, "#"), vec![0, 1, 2, 3, 6]);
        assert_eq!(matching_sorted(&store, "+"), vec![0]);
        assert_eq!(matching_sorted(&store, "$SYS/#"), vec![4, 5]);
        assert_eq!(matching_sorted(&store, "$SYS/+"), vec![4]);
        assert_eq!(matching_sorted(&store, "b/+"), vec![6]);
        assert_eq!(matching_sorted(&store, "a/b/c"), Vec::<usize>::new());
    }

    #[test]
    fn removal_prunes_empty_nodes() {
        let store = RetainStore::new(10_000);
        let topics: Vec<String> = (0..1000)
            .map(|i| format!("site/{}/dev/{i}/state", i % 7))
            .chain(["site".to_string(), "site/1".to_string()])
            .collect();
        for topic in &topics {
            store.set(topic, ()).unwrap();
        }
        store.remove("site/1");
        assert!(node_count(&store) > 1000);
        for topic in topics.iter().rev() {
            store.remove(topic);
        }
        assert_eq!(node_count(&store), 0);
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn hundred_thousand_retained_topics() {
        const N: usize = 100_000;
        let store = RetainStore::new(N + 1);
        let started = Instant::now();
        for i in 0..N {
            store.set(&format!("sensors/{i}/temp"), i).unwrap();
        }
        store.set("$SYS/uptime", N).unwrap();
        let stored = started.elapsed();

        let mut out = Vec::with_capacity(N + 1);
        let collect = |filter: &str, out: &mut Vec<usize>| {
            store.matching(filter, |v| {
                out.push(*v);
                true
            })
        };
        let started = Instant::now();
        collect("sensors/+/temp", &mut out);
        let plus = started.elapsed();
        assert_eq!(out.len(), N);

        out.clear();
        let started = Instant::now();
        collect("#", &mut out);
        let hash = started.elapsed();
        assert_eq!(out.len(), N, "'#' must not return $SYS topics");

        out.clear();
        let started = Instant::now();
        collect("sensors/4242/temp", &mut out);
        let literal = started.elapsed();
        assert_eq!(out, vec![4242]);

        println!(
            "retain 100k: set {stored:?}, sensors/+/temp {plus:?}, # {hash:?}, literal {literal:?}"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set(String, u32),
        Remove(String),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (strategies::any_topic_name(), any::<u32>()).prop_map(|(t, v)| Op::Set(t, v)),
            1 => strategies::any_topic_name().prop_map(Op::Remove),
        ]
    }

    /// Every node but the root stores a message or is where topics branch: nothing left empty,
    /// no bend that should have been joined into one edge.
    fn assert_compact<V>(store: &RetainStore<V>) {
        fn below<V>(node: &Node<V>) {
            for edge in node.edges.iter() {
                let n = &edge.node;
                assert!(
                    n.value.is_some() || n.edges.len() >= 2,
                    "node under {:?}: no value, {} edges",
                    edge.label(),
                    n.edges.len()
                );
                below(n);
            }
        }
        for shard in store.shards.iter() {
            below(&shard.read());
        }
    }

    /// What a value counts in `matches_naive_filtering`'s byte bound.
    fn weigh(v: &u32) -> usize {
        (*v % 64) as usize
    }

    proptest! {
        /// Sets and removes against a map of topics, within bounds of topics and bytes that a
        /// sequence may or may not reach: same answers, same matches as the reference matcher,
        /// the byte count exact and the trie compact after each step.
        #[test]
        fn matches_naive_filtering(
            ops in prop::collection::vec(op(), 0..60),
            filters in prop::collection::vec(strategies::any_topic_filter(), 1..10),
            max in prop::sample::select(&[3usize, usize::MAX][..]),
            max_bytes in prop::sample::select(&[600usize, usize::MAX][..]),
        ) {
            let store = RetainStore::new(max).with_max_bytes(max_bytes, weigh);
            let cost = |topic: &str, v: &u32| weigh(v) + topic.len() + ENTRY_BYTES;
            let mut model: BTreeMap<String, u32> = BTreeMap::new();
            let mut bytes = 0;
            for op in ops {
                match op {
                    Op::Set(topic, v) => {
                        let old = model.get(&topic).map(|old| cost(&topic, old));
                        let fits = match old {
                            Some(old) => bytes - old + cost(&topic, &v) <= max_bytes,
                            None => model.len() < max && bytes + cost(&topic, &v) <= max_bytes,
                        };
                        let expected = if fits {
                            bytes = bytes - old.unwrap_or(0) + cost(&topic, &v);
                            Ok(model.insert(topic.clone(), v))
                        } else {
                            Err(RetainFull)
                        };
                        prop_assert_eq!(store.set(&topic, v), expected, "set {}", topic);
                    }
                    Op::Remove(topic) => {
                        let removed = model.remove(&topic);
                        if let Some(v) = &removed {
                            bytes -= cost(&topic, v);
                        }
                        prop_assert_eq!(store.remove(&topic), removed);
                    }
                }
                prop_assert_eq!(store.bytes.load(Ordering::Relaxed), bytes);
                assert_compact(&store);
            }
            prop_assert_eq!(store.len(), model.len());
            for filter in &filters {
                let mut expected: Vec<u32> = model
                    .iter()
                    .filter(|(topic, _)| crate::topic::matches(filter, topic))
                    .map(|(_, v)| *v)
                    .collect();
                expected.sort();
                prop_assert_eq!(matching_sorted(&store, filter), expected, "filter {}", filter);
            }
            for topic in model.keys() {
                store.remove(topic);
                assert_compact(&store);
            }
            prop_assert_eq!(node_count(&store), 0);
            prop_assert_eq!(store.bytes.load(Ordering::Relaxed), 0);
        }
    }
}
