//! The literal edges of a topic trie node, compact: shared by the subscription index
//! ([`crate::topic_index`]) and the retained store ([`crate::retain`]).
//!
//! Both tries are path-compressed: an edge carries one or more literal levels joined by `/`
//! (its label), and a node exists only where something is stored or the paths branch. A long
//! topic no other shares therefore costs one edge holding its unique tail once, not a node,
//! a hash map and a boxed key per level. A node's edges are a vector sized to fit (a linear scan
//! of a few labels is as fast as hashing one) and become a hash table keyed by the labels'
//! first levels once there are more than [`FEW`]; siblings always differ in their first level.
//!
//! An edge's first level never changes while it is in a table: splitting a label keeps its head
//! and merging appends to its tail, so the table's hashes stay valid.

use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;

use hashbrown::HashTable;

/// Edges kept in a vector up to this many; a table beyond.
const FEW: usize = 8;
/// A table back to a vector when this few edges are left: the gap keeps a node whose children
/// come and go around [`FEW`] from converting on every change.
const FEWER: usize = 4;

/// Levels joined by `/` and the node they lead to.
pub(crate) struct Edge<N> {
    label: Box<str>,
    pub(crate) node: N,
}

impl<N: Branching> Edge<N> {
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    fn first_level(&self) -> &str {
        self.label.split('/').next().unwrap_or_default()
    }

    /// Whether the label's first level is `level`.
    fn starts_with_level(&self, level: &str) -> bool {
        self.label.starts_with(level)
            && matches!(self.label.as_bytes().get(level.len()), None | Some(b'/'))
    }

    /// How many levels the label has when it spells exactly the first ones of `levels`; `None`
    /// when it does not (it differs, or is longer). The caller found the edge by `levels[0]`.
    pub(crate) fn spells(&self, levels: &[&str]) -> Option<usize> {
        // The common case, a one-level label, needs no second look.
        if levels.first().is_some_and(|l| l.len() == self.label.len()) {
            return Some(1);
        }
        let mut n = 0;
        for level in self.label.split('/') {
            if levels.get(n) != Some(&level) {
                return None;
            }
            n += 1;
        }
        Some(n)
    }

    /// Splits the label after its first `head` levels (fewer than it has): this edge keeps the
    /// head and leads to a new node with one edge, the rest, to the node it led to.
    fn split(&mut self, head: usize) {
        let Some((cut, _)) = head
            .checked_sub(1)
            .and_then(|i| self.label.match_indices('/').nth(i))
        else {
            return;
        };
        let rest = Edge {
            label: self.label[cut + 1..].into(),
            node: std::mem::replace(&mut self.node, N::empty()),
        };
        self.label = self.label[..cut].into();
        self.node.edges_mut().insert(rest);
    }

    /// Joins this edge with the one edge below it when the node between holds nothing else.
    pub(crate) fn merge_if_single(&mut self) {
        if self.node.holds() || self.node.edges().len() != 1 {
            return;
        }
        if let Some(only) = self.node.edges_mut().take_only() {
            self.label = format!("{}/{}", self.label, only.label).into_boxed_str();
            self.node = only.node;
        }
    }
}

/// A trie node with [`Edges`], for the operations that split and join them.
pub(crate) trait Branching: Sized {
    fn empty() -> Self;
    fn edges(&self) -> &Edges<Self>;
    fn edges_mut(&mut self) -> &mut Edges<Self>;
    /// Whether the node has anything of its own besides its literal edges: it must then stay a
    /// node even with a single edge.
    fn holds(&self) -> bool;
}

/// A node's literal edges; see the module documentation.
pub(crate) enum Edges<N> {
    Few(Vec<Edge<N>>),
    Many(Box<HashTable<Edge<N>>>),
}

/// Siblings' first levels are the clients' to choose: a keyed hash, one key per process.
fn hash(level: &str) -> u64 {
    static KEY: OnceLock<RandomState> = OnceLock::new();
    KEY.get_or_init(RandomState::new).hash_one(level)
}

fn rehash<N: Branching>(edge: &Edge<N>) -> u64 {
    hash(edge.first_level())
}

impl<N: Branching> Edges<N> {
    pub(crate) fn new() -> Self {
        Edges::Few(Vec::new())
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Edges::Few(v) => v.len(),
            Edges::Many(t) => t.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The edge whose first level is `level`.
    pub(crate) fn get(&self, level: &str) -> Option<&Edge<N>> {
        match self {
            Edges::Few(v) => v.iter().find(|e| e.starts_with_level(level)),
            Edges::Many(t) => t.find(hash(level), |e| e.starts_with_level(level)),
        }
    }

    pub(crate) fn get_mut(&mut self, level: &str) -> Option<&mut Edge<N>> {
        match self {
            Edges::Few(v) => v.iter_mut().find(|e| e.starts_with_level(level)),
            Edges::Many(t) => t.find_mut(hash(level), |e| e.starts_with_level(level)),
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Edge<N>> {
        let (few, many) = match self {
            Edges::Few(v) => (Some(v.iter()), None),
            Edges::Many(t) => (None, Some(t.iter())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    /// Adds an edge whose first level no sibling has.
    fn insert(&mut self, edge: Edge<N>) -> &mut Edge<N> {
        if let Edges::Few(v) = self {
            if v.len() >= FEW {
                let mut table = HashTable::with_capacity(v.len() + 1);
                for e in v.drain(..) {
                    table.insert_unique(rehash(&e), e, rehash);
                }
                *self = Edges::Many(Box::new(table));
            }
        }
        match self {
            Edges::Few(v) => {
                // Sized to fit: most nodes have one or two edges, and a vector's first push
                // would reserve four.
                v.reserve_exact(1);
                v.push(edge);
                let last = v.len() - 1;
                &mut v[last]
            }
            Edges::Many(t) => t.insert_unique(rehash(&edge), edge, rehash).into_mut(),
        }
    }

    /// The edge whose first level is `levels[0]`; when there is none, a new one labelled with
    /// all of `levels`, and `made` is set.
    fn get_or_insert(&mut self, levels: &[&str], made: &mut bool) -> &mut Edge<N> {
        let level = levels.first().copied().unwrap_or_default();
        let fresh = || Edge {
            label: levels.join("/").into_boxed_str(),
            node: N::empty(),
        };
        let in_few = match self {
            Edges::Few(v) => Some(v.iter().position(|e| e.starts_with_level(level))),
            Edges::Many(_) => None,
        };
        // Found by position first, then borrowed for good: returning a borrow taken before a
        // branch that inserts does not pass the borrow checker.
        match (in_few, self) {
            (Some(Some(i)), Edges::Few(v)) => &mut v[i],
            (None, Edges::Many(t)) => {
                match t.find_entry(hash(level), |e| e.starts_with_level(level)) {
                    Ok(entry) => entry.into_mut(),
                    Err(absent) => {
                        *made = true;
                        let edge = fresh();
                        absent
                            .into_table()
                            .insert_unique(rehash(&edge), edge, rehash)
                            .into_mut()
                    }
                }
            }
            (_, edges) => {
                *made = true;
                edges.insert(fresh())
            }
        }
    }

    /// Removes the edge whose first level is `level`.
    pub(crate) fn remove(&mut self, level: &str) -> Option<Edge<N>> {
        let removed = match self {
            Edges::Few(v) => {
                let i = v.iter().position(|e| e.starts_with_level(level))?;
                let e = v.swap_remove(i);
                v.shrink_to_fit();
                e
            }
            Edges::Many(t) => {
                let entry = t
                    .find_entry(hash(level), |e| e.starts_with_level(level))
                    .ok()?;
                let (e, _) = entry.remove();
                if t.len() <= FEWER {
                    let mut v = Vec::with_capacity(t.len());
                    v.extend(t.drain());
                    *self = Edges::Few(v);
                } else if t.len() < t.capacity() / 4 {
                    // Not at every removal: a subscribe and unsubscribe in turn at a wide node
                    // would rehash it each time.
                    t.shrink_to_fit(rehash);
                }
                e
            }
        };
        Some(removed)
    }

    fn take_only(&mut self) -> Option<Edge<N>> {
        if self.len() != 1 {
            return None;
        }
        match self {
            Edges::Few(v) => v.pop(),
            Edges::Many(t) => t.drain().next(),
        }
    }
}

/// The node reached from `node` by the edges whose first levels are `hops`.
pub(crate) fn walk_mut<'n, N: Branching>(mut node: &'n mut N, hops: &[&str]) -> Option<&'n mut N> {
    for hop in hops {
        node = &mut node.edges_mut().get_mut(hop)?.node;
    }
    Some(node)
}

/// Joins the last edge of `hops` with the one edge below it if the node between holds nothing
/// any more (see [`Edge::merge_if_single`]); the root is never joined.
pub(crate) fn rejoin<N: Branching>(root: &mut N, hops: &[&str]) {
    let Some((last, above)) = hops.split_last() else {
        return;
    };
    if let Some(edge) = walk_mut(root, above).and_then(|n| n.edges_mut().get_mut(last)) {
        edge.merge_if_single();
    }
}

/// The node `levels` (literal ones) lead to from `node`, if the trie has one there.
pub(crate) fn descend_mut<'n, N: Branching>(
    mut node: &'n mut N,
    mut levels: &[&str],
) -> Option<&'n mut N> {
    while let Some(first) = levels.first() {
        let edge = node.edges_mut().get_mut(first)?;
        let n = edge.spells(levels)?;
        node = &mut edge.node;
        levels = &levels[n..];
    }
    Some(node)
}

/// The node `levels` (literal ones) lead to from `node`, made when missing: one new edge for
/// the levels no path has yet, after splitting the edge where the path leaves it.
pub(crate) fn descend_or_make<'n, N: Branching>(
    mut node: &'n mut N,
    mut levels: &[&str],
) -> &'n mut N {
    while !levels.is_empty() {
        let mut made = false;
        let edge = node.edges_mut().get_or_insert(levels, &mut made);
        if made {
            return &mut edge.node;
        }
        let shared = edge
            .label
            .split('/')
            .zip(levels)
            .take_while(|(a, b)| a == *b)
            .count();
        if shared < edge.label.split('/').count() {
            edge.split(shared);
        }
        node = &mut edge.node;
        levels = &levels[shared..];
    }
    node
}

#[cfg(test)]
mod tests;
