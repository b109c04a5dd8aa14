//! The subscription index: topic filters -> subscribers, consulted on every PUBLISH.
//!
//! It owns the filter trie, the per-topic result cache and the shared-subscription groups, so
//! the broker asks one question per publish ("who gets this topic?") and gets back an
//! `Arc<Matches>` it can fan out from without holding any lock.
//!
//! Layout, and why:
//! - Filters are split into 32 tries by a hash of their first level, each behind its own
//!   `RwLock`, so subscribes to unrelated topic trees do not contend and publishes never take a
//!   global lock. Filters whose first level is a wildcard (`+/...`, `#`) can match any topic, so
//!   they live in one extra "wild" trie that every lookup consults.
//! - Each shard has a bounded cache `topic -> Arc<Matches>` (the idea of nats-server's sublist
//!   cache). A hit touches only the cache's read lock. A miss computes the result while holding
//!   the read locks of both tries it depends on and publishes it to the cache before releasing
//!   them; writers invalidate while holding the trie's write lock. A result can therefore never
//!   be cached after the invalidation that should have removed it.
//! - A literal filter only affects the topic equal to it, so subscribing to it drops exactly one
//!   cache entry: fleets of devices subscribing to their own command topics keep everybody
//!   else's cache warm. Wildcard filters drop the cached topics they match.
//! - Members of a shared group live inside the `Arc<SharedGroup>` that cached results point to,
//!   so joining or leaving an existing group does not invalidate anything; only creating or
//!   deleting a group does.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::topic;

/// Number of tries for filters with a literal first level.
const SHARDS: usize = 32;
/// Default cache size, in topics, per shard.
const CACHE_ENTRIES: usize = 4096;
/// Cache budget per entry slot, in matched subscriptions: entries are bounded by total size too,
/// because a topic matched by thousands of subscribers costs thousands of clones.
const CACHE_WEIGHT_PER_ENTRY: usize = 16;

/// Everything subscribed to one topic.
#[derive(Debug)]
pub struct Matches<K, V> {
    /// Non-shared subscriptions, sorted by key so that several overlapping subscriptions of one
    /// subscriber are adjacent (the broker merges them into one delivery).
    pub plain: Vec<(K, V)>,
    /// One entry per matching shared group; a group is identified by (group name, filter).
    pub shared: Vec<Arc<SharedGroup<K, V>>>,
}

impl<K, V> Matches<K, V> {
    pub fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.shared.is_empty()
    }
}

/// The members of one `$share/{name}/{filter}` group; each message goes to one of them.
#[derive(Debug)]
pub struct SharedGroup<K, V> {
    name: Box<str>,
    filter: Box<str>,
    members: RwLock<Vec<(K, V)>>,
    /// Monotonic round-robin cursor; taken modulo the member count at each pick.
    next: AtomicUsize,
}

impl<K, V> SharedGroup<K, V> {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn filter(&self) -> &str {
        &self.filter
    }

    pub fn len(&self) -> usize {
        self.members.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.read().is_empty()
    }
}

impl<K: Clone + Eq, V: Clone> SharedGroup<K, V> {
    fn new(name: &str, filter: &str) -> Self {
        SharedGroup {
            name: name.into(),
            filter: filter.into(),
            members: RwLock::new(Vec::new()),
            next: AtomicUsize::new(0),
        }
    }

    /// Picks one member round-robin among those for which `eligible` returns true; when none is,
    /// the next member anyway (an offline persistent session then queues the message). `None`
    /// only if the group is empty. `eligible` runs under the group's read lock, so it must not
    /// subscribe or unsubscribe.
    pub fn pick(&self, eligible: impl Fn(&K, &V) -> bool) -> Option<(K, V)> {
        let members = self.members.read();
        let n = members.len();
        if n == 0 {
            return None;
        }
        let mut cursor = self.next.load(Ordering::Relaxed);
        loop {
            let base = cursor % n;
            let offset = (0..n)
                .find(|i| {
                    let (k, v) = &members[(base + i) % n];
                    eligible(k, v)
                })
                .unwrap_or(0);
            // Advancing the cursor past the chosen member (not merely by one) keeps the rotation
            // fair when ineligible members are skipped; the CAS keeps it exact under concurrency.
            let advanced = cursor.wrapping_add(offset + 1);
            match self.next.compare_exchange_weak(
                cursor,
                advanced,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    let (k, v) = &members[(base + offset) % n];
                    return Some((k.clone(), v.clone()));
                }
                Err(actual) => cursor = actual,
            }
        }
    }

    fn upsert(&self, key: K, value: V) -> Option<V> {
        let mut members = self.members.write();
        if let Some(slot) = members.iter_mut().find(|(k, _)| *k == key) {
            return Some(std::mem::replace(&mut slot.1, value));
        }
        members.push((key, value));
        None
    }

    fn remove(&self, key: &K) -> Option<V> {
        let mut members = self.members.write();
        let pos = members.iter().position(|(k, _)| k == key)?;
        // `remove` rather than `swap_remove`: keeps the rotation order of the others.
        Some(members.remove(pos).1)
    }
}

/// Subscriptions whose filter ends at one trie position.
struct Leaf<K, V> {
    plain: HashMap<K, V>,
    shared: HashMap<Box<str>, Arc<SharedGroup<K, V>>>,
}

impl<K: Clone + Eq + Hash, V: Clone> Leaf<K, V> {
    fn new() -> Self {
        Leaf {
            plain: HashMap::new(),
            shared: HashMap::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.shared.is_empty()
    }

    fn collect(&self, out: &mut Matches<K, V>) {
        out.plain
            .extend(self.plain.iter().map(|(k, v)| (k.clone(), v.clone())));
        out.shared.extend(self.shared.values().cloned());
    }

    /// Returns the replaced value and whether cached results are now stale.
    fn insert(&mut self, filter: &str, group: Option<&str>, key: K, value: V) -> (Option<V>, bool) {
        match group {
            None => (self.plain.insert(key, value), true),
            Some(name) => match self.shared.get(name) {
                Some(existing) => (existing.upsert(key, value), false),
                None => {
                    let created = SharedGroup::new(name, filter);
                    created.upsert(key, value);
                    self.shared.insert(name.into(), Arc::new(created));
                    (None, true)
                }
            },
        }
    }

    /// Returns the removed value and whether cached results are now stale.
    fn remove(&mut self, group: Option<&str>, key: &K) -> Option<(V, bool)> {
        match group {
            None => self.plain.remove(key).map(|v| (v, true)),
            Some(name) => {
                let existing = self.shared.get(name)?;
                let value = existing.remove(key)?;
                let deleted = existing.is_empty();
                if deleted {
                    self.shared.remove(name);
                }
                Some((value, deleted))
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Step<'a> {
    Literal(&'a str),
    Plus,
}

/// A filter as trie steps; a trailing `#` is not a step but selects the node's `hash` leaf.
struct Path<'a> {
    steps: Vec<Step<'a>>,
    multi: bool,
}

impl<'a> Path<'a> {
    /// Anything after a `#` is ignored, the same way [`topic::matches`] ignores it, so that an
    /// unvalidated filter is still stored where removal and cache invalidation will look for it.
    fn parse(filter: &'a str) -> Self {
        let mut steps = Vec::new();
        for level in filter.split('/') {
            match level {
                "#" => return Path { steps, multi: true },
                "+" => steps.push(Step::Plus),
                literal => steps.push(Step::Literal(literal)),
            }
        }
        Path {
            steps,
            multi: false,
        }
    }

    fn is_literal(&self) -> bool {
        !self.multi && self.steps.iter().all(|s| matches!(s, Step::Literal(_)))
    }
}

struct Node<K, V> {
    children: HashMap<Box<str>, Node<K, V>>,
    plus: Option<Box<Node<K, V>>>,
    /// Subscriptions to `{this node's path}/#`; `#` is always last, so it needs no node.
    hash: Option<Box<Leaf<K, V>>>,
    /// Subscriptions whose filter ends exactly here.
    leaf: Option<Box<Leaf<K, V>>>,
}

impl<K: Clone + Eq + Hash, V: Clone> Node<K, V> {
    fn new() -> Self {
        Node {
            children: HashMap::new(),
            plus: None,
            hash: None,
            leaf: None,
        }
    }

    fn fanout(&self) -> usize {
        self.children.len() + usize::from(self.plus.is_some()) + usize::from(self.hash.is_some())
    }

    fn is_empty(&self) -> bool {
        self.leaf.is_none() && self.fanout() == 0
    }

    /// Whether this node must survive if one of its edges is pruned.
    fn branches(&self) -> bool {
        self.leaf.is_some() || self.fanout() > 1
    }

    fn child_mut(&mut self, step: Step<'_>) -> Option<&mut Self> {
        match step {
            Step::Literal(level) => self.children.get_mut(level),
            Step::Plus => self.plus.as_deref_mut(),
        }
    }

    fn child_or_insert(&mut self, step: Step<'_>) -> &mut Self {
        match step {
            Step::Literal(level) => self.children.entry(level.into()).or_insert_with(Node::new),
            Step::Plus => self.plus.get_or_insert_with(|| Box::new(Node::new())),
        }
    }

    fn insert(
        &mut self,
        filter: &str,
        path: &Path<'_>,
        group: Option<&str>,
        key: K,
        value: V,
    ) -> (Option<V>, bool) {
        let mut node = self;
        for &step in &path.steps {
            node = node.child_or_insert(step);
        }
        let slot = if path.multi {
            &mut node.hash
        } else {
            &mut node.leaf
        };
        slot.get_or_insert_with(|| Box::new(Leaf::new()))
            .insert(filter, group, key, value)
    }

    /// Removes one subscription and prunes the nodes left empty. Iterative rather than recursive
    /// so that filter depth cannot exhaust the stack.
    fn remove(&mut self, path: &Path<'_>, group: Option<&str>, key: &K) -> Option<(V, bool)> {
        // Index of the step leaving the deepest node that must survive pruning; every node below
        // it on the path has this path as its only content.
        let mut keep = 0;
        let mut node = &mut *self;
        for (i, &step) in path.steps.iter().enumerate() {
            if node.branches() {
                keep = i;
            }
            node = node.child_mut(step)?;
        }
        if path.multi && node.branches() {
            keep = path.steps.len();
        }
        let slot = if path.multi {
            &mut node.hash
        } else {
            &mut node.leaf
        };
        let leaf = slot.as_deref_mut()?;
        let removed = leaf.remove(group, key)?;
        if leaf.is_empty() {
            *slot = None;
        }
        let prune = if path.multi {
            node.hash.is_none()
        } else {
            node.is_empty()
        };
        if prune {
            self.cut(path, keep);
        }
        Some(removed)
    }

    /// Drops the subtree reached by step `at` of `path` (or the `#` leaf when `at` is past the
    /// last step).
    fn cut(&mut self, path: &Path<'_>, at: usize) {
        let mut node = self;
        for &step in &path.steps[..at] {
            match node.child_mut(step) {
                Some(child) => node = child,
                None => return,
            }
        }
        match path.steps.get(at) {
            Some(Step::Literal(level)) => {
                node.children.remove(*level);
            }
            Some(Step::Plus) => node.plus = None,
            None => node.hash = None,
        }
    }

    /// Adds every subscription matching `levels` (a topic name's levels) to `out`.
    fn collect(&self, levels: &[&str], out: &mut Matches<K, V>) {
        // MQTT §4.7.2: wildcards in the first level do not match topics starting with '$'.
        let dollar = levels.first().is_some_and(|l| l.starts_with('$'));
        let mut stack = vec![(self, 0usize)];
        while let Some((node, depth)) = stack.pop() {
            let wildcards_allowed = !(dollar && depth == 0);
            if wildcards_allowed {
                // `a/#` matches `a` too, so the hash leaf applies whether or not levels remain.
                if let Some(hash) = &node.hash {
                    hash.collect(out);
                }
            }
            let Some(level) = levels.get(depth) else {
                if let Some(leaf) = &node.leaf {
                    leaf.collect(out);
                }
                continue;
            };
            if let Some(child) = node.children.get(*level) {
                stack.push((child, depth + 1));
            }
            if wildcards_allowed {
                if let Some(plus) = &node.plus {
                    stack.push((plus, depth + 1));
                }
            }
        }
    }
}

struct CacheEntry<K, V> {
    matches: Arc<Matches<K, V>>,
    weight: usize,
    /// CLOCK bit: set by hits, cleared by eviction sweeps, so recently used topics survive.
    referenced: AtomicBool,
}

struct Cache<K, V> {
    entries: HashMap<Box<str>, CacheEntry<K, V>>,
    weight: usize,
    max_entries: usize,
    max_weight: usize,
}

impl<K, V> Cache<K, V> {
    fn new(max_entries: usize) -> Self {
        Cache {
            entries: HashMap::new(),
            weight: 0,
            max_entries,
            max_weight: max_entries.saturating_mul(CACHE_WEIGHT_PER_ENTRY),
        }
    }

    fn get(&self, topic: &str) -> Option<Arc<Matches<K, V>>> {
        let entry = self.entries.get(topic)?;
        // Loading first keeps steady-state hits from writing to a shared cache line.
        if !entry.referenced.load(Ordering::Relaxed) {
            entry.referenced.store(true, Ordering::Relaxed);
        }
        Some(Arc::clone(&entry.matches))
    }

    fn insert(&mut self, topic: &str, matches: Arc<Matches<K, V>>) {
        let weight = 1 + matches.plain.len() + matches.shared.len() + topic.len() / 64;
        // A huge result would evict many small ones, and recomputing it is cheap next to
        // delivering it to that many subscribers.
        if weight > self.max_weight / 8 {
            return;
        }
        self.remove(topic);
        if self.entries.len() >= self.max_entries || self.weight + weight > self.max_weight {
            self.evict();
        }
        self.weight += weight;
        self.entries.insert(
            topic.into(),
            CacheEntry {
                matches,
                weight,
                referenced: AtomicBool::new(false),
            },
        );
    }

    /// Frees an eighth of the budget in one go so inserts into a full cache stay amortized O(1).
    fn evict(&mut self) {
        let entry_target = self.max_entries - (self.max_entries / 8).max(1);
        let weight_target = self.max_weight - self.max_weight / 8;
        // The first sweep spares referenced entries (clearing their bit); the second cannot,
        // since all bits are clear by then, so it always reaches the targets.
        for _ in 0..2 {
            let mut count = self.entries.len();
            let mut weight = self.weight;
            self.entries.retain(|_, entry| {
                if count <= entry_target && weight <= weight_target {
                    return true;
                }
                let referenced = entry.referenced.get_mut();
                if std::mem::take(referenced) {
                    return true;
                }
                count -= 1;
                weight -= entry.weight;
                false
            });
            self.weight = weight;
            if count <= entry_target && weight <= weight_target {
                return;
            }
        }
    }

    fn remove(&mut self, topic: &str) {
        if let Some(entry) = self.entries.remove(topic) {
            self.weight -= entry.weight;
        }
    }

    fn remove_matching(&mut self, filter: &str) {
        // Every topic the filter matches starts with its literal levels; comparing that prefix
        // first rejects most entries without splitting them into levels.
        let prefix = literal_prefix(filter);
        let mut weight = self.weight;
        self.entries.retain(|topic, entry| {
            let stale = topic.starts_with(prefix) && topic::matches(filter, topic);
            if stale {
                weight -= entry.weight;
            }
            !stale
        });
        self.weight = weight;
    }
}

/// The leading levels of `filter` before its first wildcard, without the trailing separator.
fn literal_prefix(filter: &str) -> &str {
    let mut end = 0;
    for level in filter.split('/') {
        if level == "+" || level == "#" {
            break;
        }
        end += level.len() + 1;
    }
    &filter[..end.saturating_sub(1).min(filter.len())]
}

struct Shard<K, V> {
    trie: RwLock<Node<K, V>>,
    /// Results for topics whose first level hashes to this shard.
    cache: RwLock<Cache<K, V>>,
}

/// Concurrent index of subscriptions, keyed by subscriber `K` with per-subscription data `V`.
pub struct TopicIndex<K, V> {
    shards: Box<[Shard<K, V>]>,
    /// Filters whose first level is `+` or `#`.
    wild: RwLock<Node<K, V>>,
    hasher: RandomState,
    len: AtomicUsize,
    shared_len: AtomicUsize,
}

impl<K, V> Default for TopicIndex<K, V>
where
    K: Clone + Eq + Hash + Ord,
    V: Clone,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> TopicIndex<K, V>
where
    K: Clone + Eq + Hash + Ord,
    V: Clone,
{
    pub fn new() -> Self {
        Self::with_cache_capacity(CACHE_ENTRIES)
    }

    /// Like [`TopicIndex::new`] with room for `topics_per_shard` cached results in each shard.
    pub fn with_cache_capacity(topics_per_shard: usize) -> Self {
        TopicIndex {
            shards: (0..SHARDS)
                .map(|_| Shard {
                    trie: RwLock::new(Node::new()),
                    cache: RwLock::new(Cache::new(topics_per_shard)),
                })
                .collect(),
            wild: RwLock::new(Node::new()),
            hasher: RandomState::new(),
            len: AtomicUsize::new(0),
            shared_len: AtomicUsize::new(0),
        }
    }

    /// Adds or replaces the subscription of `key` to `filter` (a valid topic filter), within
    /// shared group `group` when given. Returns the previous value if it replaced one.
    pub fn insert(&self, filter: &str, group: Option<&str>, key: K, value: V) -> Option<V> {
        let path = Path::parse(filter);
        let previous = self.modify(filter, &path, |trie| {
            trie.insert(filter, &path, group, key, value)
        });
        if previous.is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
            if group.is_some() {
                self.shared_len.fetch_add(1, Ordering::Relaxed);
            }
        }
        previous
    }

    /// Removes the subscription of `key` to `filter` (within `group` when given) and returns it.
    pub fn remove(&self, filter: &str, group: Option<&str>, key: &K) -> Option<V> {
        let path = Path::parse(filter);
        let removed = self.modify(filter, &path, |trie| match trie.remove(&path, group, key) {
            Some((value, stale)) => (Some(value), stale),
            None => (None, false),
        });
        if removed.is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
            if group.is_some() {
                self.shared_len.fetch_sub(1, Ordering::Relaxed);
            }
        }
        removed
    }

    /// Everything subscribed to `topic` (a valid topic name).
    pub fn matches(&self, topic: &str) -> Arc<Matches<K, V>> {
        let shard = &self.shards[self.shard_of(topic::first_level(topic))];
        if let Some(hit) = shard.cache.read().get(topic) {
            return hit;
        }
        let trie = shard.trie.read();
        let wild = self.wild.read();
        let levels: Vec<&str> = topic.split('/').collect();
        let mut found = Matches {
            plain: Vec::new(),
            shared: Vec::new(),
        };
        trie.collect(&levels, &mut found);
        wild.collect(&levels, &mut found);
        found.plain.sort_by(|a, b| a.0.cmp(&b.0));
        let found = Arc::new(found);
        // Still under both trie read locks: no writer can have invalidated this topic between
        // the walk and this insert, so the cache never receives an already-stale result.
        shard.cache.write().insert(topic, Arc::clone(&found));
        drop(wild);
        drop(trie);
        found
    }

    /// Number of subscriptions, shared-group memberships included.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of shared-group memberships.
    pub fn shared_len(&self) -> usize {
        self.shared_len.load(Ordering::Relaxed)
    }

    fn shard_of(&self, first_level: &str) -> usize {
        // Truncating the hash is fine: only its low bits pick the shard.
        (self.hasher.hash_one(first_level) as usize) % SHARDS
    }

    /// Runs `change` on the trie that holds `filter` and, if it reports cached results stale,
    /// invalidates them before the trie's write lock is released.
    fn modify<R>(
        &self,
        filter: &str,
        path: &Path<'_>,
        change: impl FnOnce(&mut Node<K, V>) -> (R, bool),
    ) -> R {
        match path.steps.first() {
            Some(Step::Literal(first)) => {
                let shard = &self.shards[self.shard_of(first)];
                let mut trie = shard.trie.write();
                let (result, stale) = change(&mut trie);
                if stale {
                    let mut cache = shard.cache.write();
                    if path.is_literal() {
                        cache.remove(filter);
                    } else {
                        cache.remove_matching(filter);
                    }
                }
                result
            }
            Some(Step::Plus) | None => {
                let mut wild = self.wild.write();
                let (result, stale) = change(&mut wild);
                if stale {
                    for shard in self.shards.iter() {
                        shard.cache.write().remove_matching(filter);
                    }
                }
                result
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::strategies;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::atomic::AtomicU64;
    use std::thread;
    use std::time::Instant;

    type Index = TopicIndex<u32, String>;

    fn plain_keys<V>(m: &Matches<u32, V>) -> Vec<u32> {
        m.plain.iter().map(|(k, _)| *k).collect()
    }

    fn group_ids<V>(m: &Matches<u32, V>) -> BTreeSet<(String, String)> {
        m.shared
            .iter()
            .map(|g| (g.name().to_string(), g.filter().to_string()))
            .collect()
    }

    /// Trie nodes plus leaves across all tries; zero once everything is removed and pruned.
    fn trie_size<K: Clone + Eq + Hash + Ord, V: Clone>(index: &TopicIndex<K, V>) -> usize {
        fn below<K, V>(node: &Node<K, V>) -> usize {
            let own = usize::from(node.leaf.is_some()) + usize::from(node.hash.is_some());
            own + node.children.values().map(|c| 1 + below(c)).sum::<usize>()
                + node.plus.as_deref().map_or(0, |p| 1 + below(p))
        }
        index
            .shards
            .iter()
            .map(|s| below(&s.trie.read()))
            .sum::<usize>()
            + below(&index.wild.read())
    }

    fn cached_topics<K, V>(index: &TopicIndex<K, V>) -> usize {
        index
            .shards
            .iter()
            .map(|s| s.cache.read().entries.len())
            .sum()
    }

    #[test]
    fn insert_replace_remove() {
        let index = Index::new();
        assert!(index.is_empty());
        assert_eq!(index.insert("a/b", None, 1, "x".into()), None);
        assert_eq!(index.insert("a/b", None, 1, "y".into()), Some("x".into()));
        assert_eq!(index.insert("a/+", Some("g"), 1, "s".into()), None);
        assert_eq!(
            index.insert("a/+", Some("g"), 1, "t".into()),
            Some("s".into())
        );
        assert_eq!((index.len(), index.shared_len()), (2, 1));
        assert_eq!(index.remove("a/b", Some("g"), &1), None);
        assert_eq!(index.remove("a/+", None, &1), None);
        assert_eq!(index.remove("a/b", None, &2), None);
        assert_eq!(index.remove("a/b", None, &1), Some("y".into()));
        assert_eq!(index.remove("a/+", Some("g"), &1), Some("t".into()));
        assert_eq!((index.len(), index.shared_len()), (0, 0));
        assert_eq!(trie_size(&index), 0);
    }

    #[test]
    fn mqtt_matching_rules() {
        let index = Index::new();
        let filters = ["#", "+", "+/+", "a/#", "a/+/b", "$SYS/#", "+/x", "a", "/+"];
        for (key, filter) in filters.iter().enumerate() {
            index.insert(filter, None, key as u32, filter.to_string());
        }
        let cases: [(&str, &[u32]); 7] = [
            ("a", &[0, 1, 3, 7]),
            ("a//b", &[0, 3, 4]),
            ("/x", &[0, 2, 6, 8]),
            ("a/x", &[0, 2, 3, 6]),
            ("$SYS/x", &[5]),
            ("$SYS", &[5]),
            ("b/c/d", &[0]),
        ];
        for (topic, expected) in cases {
            assert_eq!(plain_keys(&index.matches(topic)), expected, "{topic}");
        }
    }

    #[test]
    fn overlapping_subscriptions_of_one_key_are_adjacent() {
        let index = Index::new();
        for key in [5, 1, 9] {
            for filter in ["a/b", "a/+", "#", "+/b", "a/#"] {
                index.insert(filter, None, key, filter.to_string());
            }
        }
        let m = index.matches("a/b");
        assert_eq!(plain_keys(&m), [[1; 5], [5; 5], [9; 5]].concat());
    }

    #[test]
    fn shared_group_round_robin() {
        let index = Index::new();
        for key in 0..3 {
            index.insert("jobs/+", Some("workers"), key, format!("w{key}"));
        }
        index.insert("jobs/#", Some("workers"), 7, "other".into());
        index.insert("jobs/+", Some("audit"), 9, "a".into());
        assert_eq!(index.shared_len(), 5);
        let m = index.matches("jobs/1");
        assert!(m.plain.is_empty());
        assert_eq!(
            group_ids(&m),
            BTreeSet::from([
                ("audit".into(), "jobs/+".into()),
                ("workers".into(), "jobs/#".into()),
                ("workers".into(), "jobs/+".into()),
            ])
        );
        let workers = m
            .shared
            .iter()
            .find(|g| g.name() == "workers" && g.filter() == "jobs/+")
            .unwrap();
        assert_eq!(workers.len(), 3);
        let picks: Vec<u32> = (0..6)
            .map(|_| workers.pick(|_, _| true).unwrap().0)
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        // Skipping an ineligible member does not give its turn twice to the next one.
        let picks: Vec<u32> = (0..4)
            .map(|_| workers.pick(|k, _| *k != 1).unwrap().0)
            .collect();
        assert_eq!(picks, [0, 2, 0, 2]);
        // Nobody eligible: still rotate, so an offline persistent member queues it.
        let picks: Vec<u32> = (0..3)
            .map(|_| workers.pick(|_, _| false).unwrap().0)
            .collect();
        assert_eq!(picks, [0, 1, 2]);
    }

    #[test]
    fn shared_membership_changes_keep_cached_groups() {
        let index = Index::new();
        index.insert("t", Some("g"), 1, "one".into());
        let before = index.matches("t");
        index.insert("t", Some("g"), 2, "two".into());
        index.insert("t", Some("g"), 1, "uno".into());
        let after = index.matches("t");
        assert!(
            Arc::ptr_eq(&before, &after),
            "membership change must not flush the cache"
        );
        assert_eq!(after.shared[0].len(), 2);
        assert_eq!(after.shared[0].pick(|k, _| *k == 1).unwrap().1, "uno");

        index.remove("t", Some("g"), &1);
        index.remove("t", Some("g"), &2);
        let emptied = index.matches("t");
        assert!(emptied.is_empty(), "group deletion invalidates");
        assert_eq!(before.shared[0].pick(|_, _| true), None);

        index.insert("t", Some("g"), 3, "three".into());
        let recreated = index.matches("t");
        assert_eq!(recreated.shared.len(), 1, "group creation invalidates");
        assert!(!Arc::ptr_eq(&before.shared[0], &recreated.shared[0]));
    }

    #[test]
    fn literal_filters_invalidate_only_their_topic() {
        let index = Index::new();
        index.insert("dev/+/cmd", None, 0, "all".into());
        let topics: Vec<String> = (0..50).map(|i| format!("dev/{i}/cmd")).collect();
        let cached: Vec<_> = topics.iter().map(|t| index.matches(t)).collect();

        index.insert("dev/7/cmd", None, 7, "own".into());
        for (topic, old) in topics.iter().zip(&cached) {
            let now = index.matches(topic);
            assert_eq!(Arc::ptr_eq(old, &now), topic != "dev/7/cmd", "{topic}");
        }
        assert_eq!(plain_keys(&index.matches("dev/7/cmd")), [0, 7]);

        index.insert("dev/+/cmd", None, 1, "wild".into());
        for (topic, old) in topics.iter().zip(&cached) {
            assert!(!Arc::ptr_eq(old, &index.matches(topic)), "{topic}");
        }
        let unrelated = index.matches("dev/3/status");
        index.insert("+/3/cmd", None, 2, "first-level wildcard".into());
        assert!(Arc::ptr_eq(&unrelated, &index.matches("dev/3/status")));
        assert_eq!(plain_keys(&index.matches("dev/3/cmd")), [0, 1, 2]);
    }

    #[test]
    fn literal_prefixes() {
        let cases = [
            ("a/b/+/c", "a/b"),
            ("a/#", "a"),
            ("#", ""),
            ("+/a", ""),
            ("/+", ""),
            ("a//+", "a/"),
            ("a/b", "a/b"),
        ];
        for (filter, prefix) in cases {
            assert_eq!(literal_prefix(filter), prefix, "{filter}");
        }
    }

    #[test]
    fn cache_is_bounded() {
        let index = Index::with_cache_capacity(8);
        index.insert("#", None, 1, "all".into());
        for i in 0..5_000 {
            assert_eq!(index.matches(&format!("t{i}/x")).plain.len(), 1);
        }
        assert!(cached_topics(&index) <= 8 * SHARDS);

        let fanout = Index::with_cache_capacity(8);
        for key in 0..1_000 {
            fanout.insert("big", None, key, String::new());
        }
        assert_eq!(fanout.matches("big").plain.len(), 1_000);
        assert_eq!(
            cached_topics(&fanout),
            0,
            "huge results are not pinned in the cache"
        );
    }

    #[test]
    fn hot_cache_entries_survive_eviction() {
        let index = Index::with_cache_capacity(64);
        index.insert("#", None, 1, "all".into());
        let hot = index.matches("hot");
        for i in 0..10_000 {
            index.matches(&format!("cold{i}"));
            if i % 16 == 0 {
                index.matches("hot");
            }
        }
        assert!(Arc::ptr_eq(&hot, &index.matches("hot")));
    }

    #[test]
    fn removal_prunes_empty_nodes() {
        let index = Index::new();
        let filters: Vec<String> = (0..2_000)
            .map(|i| match i % 4 {
                0 => format!("a/{i}/b/c"),
                1 => format!("a/+/{i}/#"),
                2 => format!("+/{i}"),
                _ => format!("a/{}", i / 4),
            })
            .collect();
        for (key, filter) in filters.iter().enumerate() {
            index.insert(filter, None, key as u32, String::new());
            index.insert(filter, Some("g"), key as u32, String::new());
        }
        assert!(trie_size(&index) > 2_000);
        for (key, filter) in filters.iter().enumerate() {
            index.remove(filter, None, &(key as u32));
            index.remove(filter, Some("g"), &(key as u32));
        }
        assert_eq!(trie_size(&index), 0);
        assert!(index.is_empty());
    }

    fn bulk(n: u32) {
        let index = TopicIndex::<u32, ()>::new();
        let filter = |i: u32| match i % 100 {
            0 => format!("fleet/{}/+/cmd", i / 100),
            1 => format!("fleet/{}/#", i / 100),
            _ => format!("fleet/{}/{i}/cmd", i / 100),
        };
        let started = Instant::now();
        for i in 0..n {
            index.insert(&filter(i), None, i, ());
        }
        let inserted = started.elapsed();
        assert_eq!(index.len(), n as usize);

        let started = Instant::now();
        for i in (0..n).step_by(97).filter(|i| i % 100 > 1) {
            let group = i / 100;
            let m = index.matches(&format!("fleet/{group}/{i}/cmd"));
            assert_eq!(plain_keys(&m), [group * 100, group * 100 + 1, i]);
        }
        let matched = started.elapsed();

        let started = Instant::now();
        for i in 0..n {
            assert_eq!(index.remove(&filter(i), None, &i), Some(()));
        }
        let removed = started.elapsed();
        assert!(index.is_empty());
        assert_eq!(trie_size(&index), 0);
        println!(
            "index {n} filters: insert {inserted:?}, {} lookups {matched:?}, remove {removed:?}",
            n / 97
        );
    }

    #[test]
    fn hundred_thousand_filters() {
        bulk(100_000);
    }

    #[test]
    #[ignore = "takes several seconds in debug builds"]
    fn million_filters() {
        bulk(1_000_000);
    }

    #[test]
    fn concurrent_matching_while_writing() {
        const ROUNDS: u64 = 20_000;
        let index = Arc::new(TopicIndex::<u64, u64>::new());
        index.insert("dev/7/cmd", None, 7, 0);
        index.insert("dev/+/+", Some("g"), 8, 0);
        // Writer progress: round * 4 + step, step 1 = subscribed, step 3 = unsubscribed.
        let phase = Arc::new(AtomicU64::new(0));

        let writer = {
            let (index, phase) = (Arc::clone(&index), Arc::clone(&phase));
            thread::spawn(move || {
                let filters = ["dev/7/cmd", "dev/+/cmd", "#", "+/7/cmd", "dev/#"];
                for round in 0..ROUNDS {
                    let filter = filters[round as usize % filters.len()];
                    phase.store(round * 4, Ordering::SeqCst);
                    index.insert(filter, None, 1000, round);
                    index.insert("dev/+/+", Some("g"), 1000 + round, round);
                    phase.store(round * 4 + 1, Ordering::SeqCst);
                    phase.store(round * 4 + 2, Ordering::SeqCst);
                    index.remove(filter, None, &1000);
                    index.remove("dev/+/+", Some("g"), &(1000 + round));
                    phase.store(round * 4 + 3, Ordering::SeqCst);
                }
            })
        };
        let readers: Vec<_> = (0..3)
            .map(|r| {
                let (index, phase) = (Arc::clone(&index), Arc::clone(&phase));
                thread::spawn(move || {
                    let mut checked = 0u64;
                    while phase.load(Ordering::SeqCst) < (ROUNDS - 1) * 4 + 3 {
                        let before = phase.load(Ordering::SeqCst);
                        let m = index.matches("dev/7/cmd");
                        let noise = index.matches(&format!("dev/{}/x", checked % 50 + r));
                        let after = phase.load(Ordering::SeqCst);
                        assert!(m.plain.iter().any(|(k, _)| *k == 7));
                        assert_eq!(m.shared.len(), 1);
                        assert!(m.shared[0].pick(|k, _| *k == 8).is_some());
                        assert!(noise.plain.iter().all(|(k, _)| *k == 1000));
                        if before == after {
                            let (round, step) = (before / 4, before % 4);
                            let ours = m.plain.iter().find(|(k, _)| *k == 1000);
                            match step {
                                1 => assert_eq!(ours, Some(&(1000, round)), "stale miss"),
                                3 => assert_eq!(ours, None, "stale hit"),
                                _ => {}
                            }
                            checked += 1;
                        }
                    }
                    checked
                })
            })
            .collect();
        writer.join().unwrap();
        let checked: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
        assert!(checked > 0);
        assert_eq!(index.len(), 2);
        assert_eq!(index.matches("dev/7/cmd").shared[0].len(), 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(String, Option<&'static str>, u32),
        Remove(String, Option<&'static str>, u32),
        Match(String),
    }

    fn op() -> impl Strategy<Value = Op> {
        let group = prop::option::of(prop::sample::select(&["g", "h"][..]));
        prop_oneof![
            4 => (strategies::topic_filter(), group.clone(), 0..4u32)
                .prop_map(|(f, g, k)| Op::Insert(f, g, k)),
            2 => (strategies::topic_filter(), group, 0..4u32)
                .prop_map(|(f, g, k)| Op::Remove(f, g, k)),
            4 => strategies::topic_name().prop_map(Op::Match),
        ]
    }

    type Model = BTreeMap<(String, Option<&'static str>, u32), String>;

    fn check(index: &Index, model: &Model, topic: &str) -> Result<(), TestCaseError> {
        let m = index.matches(topic);
        prop_assert!(
            m.plain.windows(2).all(|w| w[0].0 <= w[1].0),
            "plain sorted by key"
        );
        let mut plain = m.plain.clone();
        plain.sort();
        let mut shared: BTreeMap<(String, String), BTreeSet<(u32, String)>> = BTreeMap::new();
        for group in &m.shared {
            let members = group.members.read().iter().cloned().collect();
            let id = (group.name().to_string(), group.filter().to_string());
            prop_assert!(shared.insert(id, members).is_none(), "one entry per group");
        }

        let mut expected_plain = Vec::new();
        let mut expected_shared: BTreeMap<(String, String), BTreeSet<(u32, String)>> =
            BTreeMap::new();
        for ((filter, group, key), value) in model {
            if !crate::topic::matches(filter, topic) {
                continue;
            }
            match group {
                None => expected_plain.push((*key, value.clone())),
                Some(g) => {
                    expected_shared
                        .entry((g.to_string(), filter.clone()))
                        .or_default()
                        .insert((*key, value.clone()));
                }
            }
        }
        expected_plain.sort();
        prop_assert_eq!(plain, expected_plain, "plain for {}", topic);
        prop_assert_eq!(shared, expected_shared, "shared for {}", topic);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Interleaves subscribes, unsubscribes and lookups (so cached results are reused and
        /// must be invalidated), with caches from tiny (constant eviction) to default.
        #[test]
        fn agrees_with_naive_matcher(
            ops in prop::collection::vec(op(), 1..80),
            probes in prop::collection::vec(strategies::topic_name(), 1..8),
            cache in prop::sample::select(&[1usize, 3, 4096][..]),
        ) {
            let index = Index::with_cache_capacity(cache);
            let mut model = Model::new();
            for (serial, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Insert(filter, group, key) => {
                        let value = format!("{filter}#{serial}");
                        let previous = model.insert((filter.clone(), group, key), value.clone());
                        prop_assert_eq!(index.insert(&filter, group, key, value), previous);
                    }
                    Op::Remove(filter, group, key) => {
                        let removed = model.remove(&(filter.clone(), group, key));
                        prop_assert_eq!(index.remove(&filter, group, &key), removed);
                    }
                    Op::Match(topic) => check(&index, &model, &topic)?,
                }
                prop_assert_eq!(index.len(), model.len());
                prop_assert_eq!(
                    index.shared_len(),
                    model.keys().filter(|(_, g, _)| g.is_some()).count()
                );
            }
            for topic in &probes {
                check(&index, &model, topic)?;
            }
            let subscriptions: Vec<_> = model.keys().cloned().collect();
            for (filter, group, key) in subscriptions {
                prop_assert!(index.remove(&filter, group, &key).is_some());
                model.remove(&(filter, group, key));
                if let Some(topic) = probes.first() {
                    check(&index, &model, topic)?;
                }
            }
            prop_assert_eq!(trie_size(&index), 0);
        }
    }
}
