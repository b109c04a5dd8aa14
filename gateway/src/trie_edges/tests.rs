//! Unit tests of the compact edges: labels split and joined, vectors turning into tables and
//! back, and what an edge costs.

use super::*;

/// The smallest node: edges and one value.
struct T {
    edges: Edges<T>,
    value: Option<u32>,
}

impl Branching for T {
    fn empty() -> Self {
        T {
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

/// What `descend_mut` finds, read-only.
fn descend<'n, N: Branching>(mut node: &'n N, mut levels: &[&str]) -> Option<&'n N> {
    while let Some(first) = levels.first() {
        let edge = node.edges().get(first)?;
        let n = edge.spells(levels)?;
        node = &edge.node;
        levels = &levels[n..];
    }
    Some(node)
}

fn levels(topic: &str) -> Vec<&str> {
    topic.split('/').collect()
}

fn set(root: &mut T, topic: &str, value: u32) {
    descend_or_make(root, &levels(topic)).value = Some(value);
}

fn get(root: &T, topic: &str) -> Option<u32> {
    descend(root, &levels(topic))?.value
}

fn labels(node: &T) -> Vec<String> {
    let mut out: Vec<String> = node.edges.iter().map(|e| e.label().to_owned()).collect();
    out.sort();
    out
}

#[test]
fn a_unique_topic_is_one_edge_and_a_shared_prefix_splits_it() {
    let mut root = T::empty();
    set(&mut root, "a/b/c/d", 1);
    assert_eq!(labels(&root), ["a/b/c/d"]);
    set(&mut root, "a/b/x", 2);
    assert_eq!(labels(&root), ["a/b"]);
    let ab = &root.edges.get("a").map(|e| &e.node).unwrap();
    assert_eq!(labels(ab), ["c/d", "x"]);
    assert_eq!(ab.value, None);
    set(&mut root, "a/b", 3);
    assert_eq!(
        (
            get(&root, "a/b/c/d"),
            get(&root, "a/b/x"),
            get(&root, "a/b")
        ),
        (Some(1), Some(2), Some(3))
    );
    for missing in ["a", "a/b/c", "a/b/c/d/e", "a/bc", "ab", "a/b/x/y", ""] {
        assert_eq!(get(&root, missing), None, "{missing}");
    }
}

#[test]
fn levels_are_told_apart_at_separators_only() {
    let mut root = T::empty();
    for (i, topic) in ["a", "ab", "a/b", "", "/", "//a", "a/"].iter().enumerate() {
        set(&mut root, topic, i as u32);
    }
    for (i, topic) in ["a", "ab", "a/b", "", "/", "//a", "a/"].iter().enumerate() {
        assert_eq!(get(&root, topic), Some(i as u32), "{topic:?}");
    }
    assert_eq!(get(&root, "/a"), None);
}

#[test]
fn a_bend_left_by_a_removal_joins_the_edges_around_it() {
    let mut root = T::empty();
    set(&mut root, "a/b/c", 1);
    set(&mut root, "a/b/x", 2);
    // What `retain` does after taking "a/b/x": drop its edge, then rejoin the node above.
    let ab = walk_mut(&mut root, &["a"]).unwrap();
    ab.edges.remove("x");
    rejoin(&mut root, &["a"]);
    assert_eq!(labels(&root), ["a/b/c"]);
    assert_eq!(get(&root, "a/b/c"), Some(1));
}

#[test]
fn many_siblings_move_to_a_table_and_back() {
    let mut root = T::empty();
    for i in 0..100 {
        set(&mut root, &format!("s/{i}/t"), i);
    }
    let s = &root.edges.get("s").unwrap().node;
    assert!(matches!(s.edges, Edges::Many(_)));
    assert_eq!(s.edges.len(), 100);
    for i in 0..100 {
        assert_eq!(get(&root, &format!("s/{i}/t")), Some(i));
    }
    let s = &mut root.edges.get_mut("s").unwrap().node;
    for i in 3..100 {
        assert!(s.edges.remove(&i.to_string()).is_some());
    }
    assert!(matches!(s.edges, Edges::Few(_)));
    assert_eq!(labels(s), ["0/t", "1/t", "2/t"]);
}

#[test]
fn an_edge_costs_a_label_and_a_node() {
    // Box<str> and the node: the vector's and table's own words are per node, not per edge.
    assert_eq!(
        std::mem::size_of::<Edge<T>>(),
        16 + std::mem::size_of::<T>()
    );
    assert!(
        std::mem::size_of::<Edges<T>>() <= 24,
        "a vector's three words"
    );
}
