//! The subscription index: topic filters -> subscribers, consulted on every PUBLISH.
//!
//! It owns the filter trie, the per-topic result cache and the shared-subscription groups, so
//! the broker asks one question per publish ("who gets this topic?") and gets back an
//! `Arc<Matches>` it can fan out from without holding any lock.
//!
//! Layout, and why:
//! - Each trie is path-compressed with compact nodes ([`crate::trie_edges`]): literal levels no
//!   other filter branches from share one edge, so a subscription to a long unique filter costs
//!   about its length and a few hundred bytes, not a hash map and a boxed key per level. A `+`
//!   level is a node of its own; a leaf keeps its subscribers in a vector while few.
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
use crate::trie_edges::{self, Branching, Edges};

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

    /// Whether some member satisfies `f` (run under the group's read lock).
    pub fn any(&self, f: impl Fn(&K, &V) -> bool) -> bool {
        self.members.read().iter().any(|(k, v)| f(k, v))
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

/// The plain subscribers of one filter: a vector sized to fit while there are few (most filters
/// have one subscriber), a map beyond, so that a filter with thousands of subscribers still
/// adds and removes one in constant time.
enum Members<K, V> {
    Few(Vec<(K, V)>),
    // Boxed: 8 bytes in every leaf instead of a map's 48, for the few leaves that need one.
    #[allow(clippy::box_collection)]
    Many(Box<HashMap<K, V>>),
}

/// Members kept in a vector up to this many; a map beyond.
const FEW_MEMBERS: usize = 8;
/// A map back to a vector when this few are left (the gap stops flip-flopping at the edge).
const FEWER_MEMBERS: usize = 4;

impl<K: Clone + Eq + Hash, V: Clone> Members<K, V> {
    fn is_empty(&self) -> bool {
        match self {
            Members::Few(v) => v.is_empty(),
            Members::Many(m) => m.is_empty(),
        }
    }

    fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self {
            Members::Few(v) => {
                if let Some(slot) = v.iter_mut().find(|(k, _)| *k == key) {
                    return Some(std::mem::replace(&mut slot.1, value));
                }
                if v.len() < FEW_MEMBERS {
                    v.reserve_exact(1);
                    v.push((key, value));
                } else {
                    let mut m: HashMap<K, V> = v.drain(..).collect();
                    m.insert(key, value);
                    *self = Members::Many(Box::new(m));
                }
                None
            }
            Members::Many(m) => m.insert(key, value),
        }
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        match self {
            Members::Few(v) => {
                let i = v.iter().position(|(k, _)| k == key)?;
                let (_, value) = v.swap_remove(i);
                v.shrink_to_fit();
                Some(value)
            }
            Members::Many(m) => {
                let value = m.remove(key)?;
                if m.len() <= FEWER_MEMBERS {
                    let mut v = Vec::with_capacity(m.len());
                    v.extend(m.drain());
                    *self = Members::Few(v);
                }
                Some(value)
            }
        }
    }

    fn clone_into(&self, out: &mut Vec<(K, V)>) {
        match self {
            Members::Few(v) => out.extend(v.iter().cloned()),
            Members::Many(m) => out.extend(m.iter().map(|(k, v)| (k.clone(), v.clone()))),
        }
    }
}

/// Subscriptions whose filter ends at one trie position. Shared groups are rare, so their map
/// is boxed and absent until one exists.
struct Leaf<K, V> {
    plain: Members<K, V>,
    shared: Option<Box<Groups<K, V>>>,
}

/// A leaf's shared groups by name.
type Groups<K, V> = HashMap<Box<str>, Arc<SharedGroup<K, V>>>;

impl<K: Clone + Eq + Hash, V: Clone> Leaf<K, V> {
    fn new() -> Self {
        Leaf {
            plain: Members::Few(Vec::new()),
            shared: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.shared.is_none()
    }

    /// Whether the plain subscriptions (or group `group`) have a member; an existing group is
    /// never empty.
    fn has(&self, group: Option<&str>) -> bool {
        match group {
            None => !self.plain.is_empty(),
            Some(name) => self.shared.as_ref().is_some_and(|s| s.contains_key(name)),
        }
    }

    fn collect(&self, out: &mut Matches<K, V>) {
        self.plain.clone_into(&mut out.plain);
        if let Some(shared) = &self.shared {
            out.shared.extend(shared.values().cloned());
        }
    }

    fn insert(&mut self, filter: &str, group: Option<&str>, key: K, value: V) -> Inserted<V> {
        match group {
            None => {
                let first = self.plain.is_empty();
                let previous = self.plain.insert(key, value);
                Inserted { previous, first }
            }
            // A group is deleted with its last member, so an existing group is never empty.
            Some(name) => {
                let shared = self.shared.get_or_insert_with(Box::default);
                match shared.get(name) {
                    Some(existing) => Inserted {
                        previous: existing.upsert(key, value),
                        first: false,
                    },
                    None => {
                        let created = SharedGroup::new(name, filter);
                        created.upsert(key, value);
                        shared.insert(name.into(), Arc::new(created));
                        Inserted {
                            previous: None,
                            first: true,
                        }
                    }
                }
            }
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
                let shared = self.shared.as_mut()?;
                let existing = shared.get(name)?;
                let value = existing.remove(key)?;
                let deleted = existing.is_empty();
                if deleted {
                    shared.remove(name);
                    if shared.is_empty() {
                        self.shared = None;
                    }
                }
                Some((value, deleted))
            }
        }
    }
}

/// The level of a filter path that stands for `+`: a literal level never is exactly `+`.
const PLUS: &str = "+";

/// A filter's levels, `+` included; a trailing `#` is not a level but selects the node's `hash`
/// leaf.
struct Path<'a> {
    levels: Vec<&'a str>,
    multi: bool,
}

impl<'a> Path<'a> {
    /// Anything after a `#` is ignored, the same way [`topic::matches`] ignores it, so that an
    /// unvalidated filter is still stored where removal and cache invalidation will look for it.
    fn parse(filter: &'a str) -> Self {
        let mut levels = Vec::new();
        for level in filter.split('/') {
            if level == "#" {
                return Path {
                    levels,
                    multi: true,
                };
            }
            levels.push(level);
        }
        Path {
            levels,
            multi: false,
        }
    }

    fn is_literal(&self) -> bool {
        !self.multi && !self.levels.contains(&PLUS)
    }

    /// The trie the filter lives in: the wild one when its first level is a wildcard.
    fn first_literal(&self) -> Option<&'a str> {
        self.levels.first().copied().filter(|&l| l != PLUS)
    }
}

/// How a path goes from a node to the next: along a literal edge (named by its first level) or
/// to the `+` child.
#[derive(Clone, Copy)]
enum Hop<'a> {
    Edge(&'a str),
    Plus,
}

/// A node exists where a filter ends or where filters branch, literal levels in between being
/// edge labels (see [`trie_edges`]); a `+` level is always a node of its own.
struct Node<K, V> {
    edges: Edges<Node<K, V>>,
    plus: Option<Box<Node<K, V>>>,
    /// Subscriptions to `{this node's path}/#`; `#` is always last, so it needs no node.
    hash: Option<Box<Leaf<K, V>>>,
    /// Subscriptions whose filter ends exactly here.
    leaf: Option<Box<Leaf<K, V>>>,
}

impl<K, V> Branching for Node<K, V> {
    fn empty() -> Self {
        Node {
            edges: Edges::new(),
            plus: None,
            hash: None,
            leaf: None,
        }
    }

    fn edges(&self) -> &Edges<Self> {
        &self.edges
    }

    fn edges_mut(&mut self) -> &mut Edges<Self> {
        &mut self.edges
    }

    fn holds(&self) -> bool {
        self.plus.is_some() || self.hash.is_some() || self.leaf.is_some()
    }
}

impl<K: Clone + Eq + Hash, V: Clone> Node<K, V> {
    fn fanout(&self) -> usize {
        self.edges.len() + usize::from(self.plus.is_some()) + usize::from(self.hash.is_some())
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
        let mut levels = &path.levels[..];
        while let Some(&level) = levels.first() {
            if level == PLUS {
                node = node.plus.as_deref()?;
                levels = &levels[1..];
            } else {
                // A label never holds `+`, so it cannot spell levels past one.
                let edge = node.edges.get(level)?;
                levels = &levels[edge.spells(levels)?..];
                node = &edge.node;
            }
        }
        if path.multi {
            node.hash.as_deref()
        } else {
            node.leaf.as_deref()
        }
    }

    fn hop_mut(&mut self, hop: Hop<'_>) -> Option<&mut Self> {
        match hop {
            Hop::Edge(level) => Some(&mut self.edges.get_mut(level)?.node),
            Hop::Plus => self.plus.as_deref_mut(),
        }
    }

    fn walk_mut(&mut self, hops: &[Hop<'_>]) -> Option<&mut Self> {
        let mut node = self;
        for &hop in hops {
            node = node.hop_mut(hop)?;
        }
        Some(node)
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
        let mut levels = &path.levels[..];
        while let Some(&level) = levels.first() {
            if level == PLUS {
                node = node.plus.get_or_insert_with(|| Box::new(Node::empty()));
                levels = &levels[1..];
            } else {
                let run = levels
                    .iter()
                    .position(|&l| l == PLUS)
                    .unwrap_or(levels.len());
                node = trie_edges::descend_or_make(node, &levels[..run]);
                levels = &levels[run..];
            }
        }
        let slot = if path.multi {
            &mut node.hash
        } else {
            &mut node.leaf
        };
        slot.get_or_insert_with(|| Box::new(Leaf::new()))
            .insert(filter, group, key, value)
    }

    /// Removes one subscription, prunes the nodes left empty and joins edges around a node left
    /// a mere bend; the flag is `Leaf::remove`'s. Iterative rather than recursive so that filter
    /// depth cannot exhaust the stack.
    fn remove(&mut self, path: &Path<'_>, group: Option<&str>, key: &K) -> Option<(V, bool)> {
        // The hops of the path, and how many of them lead to the deepest node that must survive
        // pruning: every node below it on the path has this path as its only content.
        let mut hops = Vec::new();
        let mut keep = 0;
        let mut node = &mut *self;
        let mut levels = &path.levels[..];
        while let Some(&level) = levels.first() {
            if node.branches() {
                keep = hops.len();
            }
            if level == PLUS {
                node = node.plus.as_deref_mut()?;
                hops.push(Hop::Plus);
                levels = &levels[1..];
            } else {
                let edge = node.edges.get_mut(level)?;
                levels = &levels[edge.spells(levels)?..];
                hops.push(Hop::Edge(level));
                node = &mut edge.node;
            }
        }
        if path.multi && node.branches() {
            keep = hops.len();
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
            self.cut(&hops, keep);
            self.rejoin(&hops[..keep]);
        } else {
            self.rejoin(&hops);
        }
        Some(removed)
    }

    /// Drops the subtree reached by hop `at` of `hops` (or the `#` leaf when `at` is past the
    /// last hop).
    fn cut(&mut self, hops: &[Hop<'_>], at: usize) {
        let Some(node) = self.walk_mut(&hops[..at]) else {
            return;
        };
        match hops.get(at) {
            Some(Hop::Edge(level)) => {
                node.edges.remove(level);
            }
            Some(Hop::Plus) => node.plus = None,
            None => node.hash = None,
        }
    }

    /// Joins the edge `hops` ends with and the one edge below its node when that node holds
    /// nothing else any more; a node reached by `+` stays a node.
    fn rejoin(&mut self, hops: &[Hop<'_>]) {
        let Some((Hop::Edge(level), above)) = hops.split_last() else {
            return;
        };
        if let Some(edge) = self
            .walk_mut(above)
            .and_then(|node| node.edges.get_mut(level))
        {
            edge.merge_if_single();
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
            if let Some(edge) = node.edges.get(level) {
                if let Some(n) = edge.spells(&levels[depth..]) {
                    stack.push((&edge.node, depth + n));
                }
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
                    trie: RwLock::new(Node::empty()),
                    cache: RwLock::new(Cache::new(topics_per_shard)),
                })
                .collect(),
            wild: RwLock::new(Node::empty()),
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
        match path.first_literal() {
            Some(first) => found(&self.shards[self.shard_of(first)].trie.read()),
            None => found(&self.wild.read()),
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
        match path.first_literal() {
            Some(first) => {
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
            None => {
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
