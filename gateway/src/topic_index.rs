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
//! - Inserts and removes say when a (filter, group) gains its first subscriber or loses its last
//!   (as nats-server's sublist does), so that interest can be announced to other nodes. Both
//!   follow from emptiness checks on the one leaf touched, so they cost nothing on the way.

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

/// What [`TopicIndex::insert`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inserted<V> {
    /// The value this subscription had before, if it replaced one.
    pub previous: Option<V>,
    /// Whether (filter, group) had no subscriber before this one: interest in it just appeared.
    pub first: bool,
}

/// What [`TopicIndex::remove`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed<V> {
    /// The value of the removed subscription; None if there was none to remove.
    pub value: Option<V>,
    /// Whether this removal took the last subscriber of (filter, group): interest in it is gone.
    pub last: bool,
}

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

    /// Whether the plain subscriptions (or group `group`) have a member; an existing group is
    /// never empty.
    fn has(&self, group: Option<&str>) -> bool {
        match group {
            None => !self.plain.is_empty(),
            Some(name) => self.shared.contains_key(name),
        }
    }

    fn collect(&self, out: &mut Matches<K, V>) {
        out.plain
            .extend(self.plain.iter().map(|(k, v)| (k.clone(), v.clone())));
        out.shared.extend(self.shared.values().cloned());
    }

    fn insert(&mut self, filter: &str, group: Option<&str>, key: K, value: V) -> Inserted<V> {
        match group {
            None => {
                let first = self.plain.is_empty();
                let previous = self.plain.insert(key, value);
                Inserted { previous, first }
            }
            // A group is deleted with its last member, so an existing group is never empty.
            Some(name) => match self.shared.get(name) {
                Some(existing) => Inserted {
                    previous: existing.upsert(key, value),
                    first: false,
                },
                None => {
                    let created = SharedGroup::new(name, filter);
                    created.upsert(key, value);
                    self.shared.insert(name.into(), Arc::new(created));
                    Inserted {
                        previous: None,
                        first: true,
                    }
                }
            },
        }
    }

    /// Returns the removed value and whether it was the last subscriber of (filter, `group`).
    fn remove(&mut self, group: Option<&str>, key: &K) -> Option<(V, bool)> {
        match group {
            None => {
                let value = self.plain.remove(key)?;
                Some((value, self.plain.is_empty()))
            }
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

    /// The leaf `path` ends at, if the trie has it.
    fn find(&self, path: &Path<'_>) -> Option<&Leaf<K, V>> {
        let mut node = self;
        for &step in &path.steps {
            node = match step {
                Step::Literal(level) => node.children.get(level)?,
                Step::Plus => node.plus.as_deref()?,
            };
        }
        if path.multi {
            node.hash.as_deref()
        } else {
            node.leaf.as_deref()
        }
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
    ) -> Inserted<V> {
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

    /// Removes one subscription and prunes the nodes left empty; the flag is `Leaf::remove`'s.
    /// Iterative rather than recursive so that filter depth cannot exhaust the stack.
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

/// Whether adding or removing one subscription makes cached results stale. Plain subscriptions
/// are copied into results, so any change to them is; shared members live inside the group's
/// `Arc` that results point to, so only a group appearing or disappearing is.
fn invalidates(group: Option<&str>, appeared_or_gone: bool) -> bool {
    group.is_none() || appeared_or_gone
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
    /// shared group `group` when given.
    pub fn insert(&self, filter: &str, group: Option<&str>, key: K, value: V) -> Inserted<V> {
        let path = Path::parse(filter);
        let inserted = self.modify(filter, &path, |trie| {
            let inserted = trie.insert(filter, &path, group, key, value);
            let stale = invalidates(group, inserted.first);
            (inserted, stale)
        });
        if inserted.previous.is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
            if group.is_some() {
                self.shared_len.fetch_add(1, Ordering::Relaxed);
            }
        }
        inserted
    }

    /// Removes the subscription of `key` to `filter` (within `group` when given).
    pub fn remove(&self, filter: &str, group: Option<&str>, key: &K) -> Removed<V> {
        let path = Path::parse(filter);
        let removed = self.modify(filter, &path, |trie| match trie.remove(&path, group, key) {
            Some((value, last)) => (
                Removed {
                    value: Some(value),
                    last,
                },
                invalidates(group, last),
            ),
            None => (
                Removed {
                    value: None,
                    last: false,
                },
                false,
            ),
        });
        if removed.value.is_some() {
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

    /// Whether (`filter`, `group`) has at least one subscriber.
    pub fn contains(&self, filter: &str, group: Option<&str>) -> bool {
        let path = Path::parse(filter);
        let found = |trie: &Node<K, V>| trie.find(&path).is_some_and(|leaf| leaf.has(group));
        match path.steps.first() {
            Some(Step::Literal(first)) => found(&self.shards[self.shard_of(first)].trie.read()),
            Some(Step::Plus) | None => found(&self.wild.read()),
        }
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
mod tests;
