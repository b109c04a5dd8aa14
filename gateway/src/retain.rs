//! The retained-message store: at most one message per topic name, replayed to new subscribers.
//!
//! A new subscription asks for every retained message whose topic matches its filter, which is
//! the reverse of the routing question [`crate::topic_index`] answers. Topics are therefore kept
//! in a trie of levels, so a filter with a literal prefix (`sensors/+/temp`) walks only the
//! matching branch instead of scanning every retained topic. The trie is sharded by first level,
//! like the subscription index, so retained publishes to unrelated trees do not contend.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::RwLock;
use thiserror::Error;

use crate::topic;

const SHARDS: usize = 16;

/// Storing one more distinct topic would exceed the configured maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("retained message store is full")]
pub(crate) struct RetainFull;

struct Node<V> {
    children: HashMap<Box<str>, Node<V>>,
    value: Option<V>,
}

impl<V> Node<V> {
    fn new() -> Self {
        Node {
            children: HashMap::new(),
            value: None,
        }
    }

    fn find_mut(&mut self, topic: &str) -> Option<&mut Self> {
        let mut node = self;
        for level in topic.split('/') {
            node = node.children.get_mut(level)?;
        }
        Some(node)
    }

    /// Removes the value at `topic` and prunes the nodes left empty. Iterative rather than
    /// recursive so that topic depth cannot exhaust the stack.
    fn remove(&mut self, topic: &str) -> Option<V> {
        let levels: Vec<&str> = topic.split('/').collect();
        // Index of the level leaving the deepest node that must survive pruning; every node
        // below it on the path has this path as its only content.
        let mut keep = 0;
        let mut node = &mut *self;
        for (i, level) in levels.iter().enumerate() {
            if node.value.is_some() || node.children.len() > 1 {
                keep = i;
            }
            node = node.children.get_mut(*level)?;
        }
        let value = node.value.take()?;
        if node.children.is_empty() {
            let mut ancestor = &mut *self;
            for level in &levels[..keep] {
                match ancestor.children.get_mut(*level) {
                    Some(child) => ancestor = child,
                    None => return Some(value),
                }
            }
            ancestor.children.remove(levels[keep]);
        }
        Some(value)
    }
}

impl<V> Node<V> {
    /// Hands `visit` the values whose topics match `levels` (a topic filter's levels) until it
    /// returns false; returns false when it was stopped so.
    fn visit(&self, levels: &[&str], visit: &mut impl FnMut(&V) -> bool) -> bool {
        // `None` depth: everything below the node matches (we are under a `#`).
        let mut stack: Vec<(&Self, Option<usize>)> = vec![(self, Some(0))];
        while let Some((node, depth)) = stack.pop() {
            let Some(depth) = depth else {
                if node.value.as_ref().is_some_and(|v| !visit(v)) {
                    return false;
                }
                stack.extend(node.children.values().map(|child| (child, None)));
                continue;
            };
            // MQTT §4.7.2: wildcards in the first level do not match topics starting with '$'.
            let visible = |name: &str| depth > 0 || !name.starts_with('$');
            match levels.get(depth) {
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
                        node.children
                            .iter()
                            .filter(|(name, _)| visible(name))
                            .map(|(_, child)| (child, None)),
                    );
                }
                Some(&"+") => stack.extend(
                    node.children
                        .iter()
                        .filter(|(name, _)| visible(name))
                        .map(|(_, child)| (child, Some(depth + 1))),
                ),
                Some(literal) => {
                    if let Some(child) = node.children.get(*literal) {
                        stack.push((child, Some(depth + 1)));
                    }
                }
            }
        }
        true
    }
}

/// Retained messages by topic name, bounded to `max` distinct topics.
pub(crate) struct RetainStore<V> {
    shards: Box<[RwLock<Node<V>>]>,
    hasher: RandomState,
    len: AtomicUsize,
    max: usize,
}

impl<V: Clone> RetainStore<V> {
    pub(crate) fn new(max: usize) -> Self {
        RetainStore {
            shards: (0..SHARDS).map(|_| RwLock::new(Node::new())).collect(),
            hasher: RandomState::new(),
            len: AtomicUsize::new(0),
            max,
        }
    }

    /// Stores (replacing) the retained message for `topic` (a valid topic name). Replacing is
    /// always allowed; a new topic is refused once `max` topics are stored.
    pub(crate) fn set(&self, topic: &str, value: V) -> Result<Option<V>, RetainFull> {
        let mut root = self.shard(topic::first_level(topic)).write();
        if let Some(slot) = root.find_mut(topic).and_then(|node| node.value.as_mut()) {
            return Ok(Some(std::mem::replace(slot, value)));
        }
        // Reserving before building the path means a refused topic leaves no empty nodes behind.
        self.len
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .map_err(|_| RetainFull)?;
        let mut node = &mut *root;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_insert_with(Node::new);
        }
        node.value = Some(value);
        Ok(None)
    }

    pub(crate) fn remove(&self, topic: &str) -> Option<V> {
        let removed = self.shard(topic::first_level(topic)).write().remove(topic);
        if removed.is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
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
            node.children.values().map(|c| 1 + below(c)).sum()
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
            3 => (strategies::topic_name(), any::<u32>()).prop_map(|(t, v)| Op::Set(t, v)),
            1 => strategies::topic_name().prop_map(Op::Remove),
        ]
    }

    proptest! {
        #[test]
        fn matches_naive_filtering(
            ops in prop::collection::vec(op(), 0..60),
            filters in prop::collection::vec(strategies::topic_filter(), 1..10),
        ) {
            let store = RetainStore::new(usize::MAX);
            let mut model = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Set(topic, v) => {
                        prop_assert_eq!(store.set(&topic, v), Ok(model.insert(topic, v)));
                    }
                    Op::Remove(topic) => {
                        prop_assert_eq!(store.remove(&topic), model.remove(&topic));
                    }
                }
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
            }
            prop_assert_eq!(node_count(&store), 0);
        }
    }
}
