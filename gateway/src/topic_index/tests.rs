//! Unit tests of the subscription index: matching rules, shared groups, the cache, pruning,
//! interest appearing and going, and agreement with naive models.

use super::*;
use crate::topic::strategies;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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
        own + node.edges.iter().map(|e| 1 + below(&e.node)).sum::<usize>()
            + node.plus.as_deref().map_or(0, |p| 1 + below(p))
    }
    index
        .shards
        .iter()
        .map(|s| below(&s.trie.read()))
        .sum::<usize>()
        + below(&index.wild.read())
}

/// Every node but a root stores subscriptions, has a `+` child or is where filters branch, and
/// a node reached by `+` is not empty: nothing left to prune, no bend left unjoined.
fn assert_compact<K: Clone + Eq + Hash + Ord, V: Clone>(index: &TopicIndex<K, V>) {
    fn below<K: Clone + Eq + Hash, V: Clone>(node: &Node<K, V>) {
        for edge in node.edges.iter() {
            let n = &edge.node;
            assert!(
                n.holds() || n.edges.len() >= 2,
                "node under {:?}: holds nothing, {} edges",
                edge.label(),
                n.edges.len()
            );
            below(n);
        }
        if let Some(plus) = &node.plus {
            assert!(!plus.is_empty(), "an empty `+` node");
            below(plus);
        }
    }
    for shard in index.shards.iter() {
        below(&shard.trie.read());
    }
    below(&index.wild.read());
}

#[test]
fn nodes_and_leaves_stay_small() {
    use crate::subscriber::Subscriber;
    type N = Node<u64, Subscriber>;
    assert!(
        std::mem::size_of::<N>() <= 48,
        "{}",
        std::mem::size_of::<N>()
    );
    assert!(std::mem::size_of::<Leaf<u64, Subscriber>>() <= 32);
    assert!(std::mem::size_of::<(u64, Subscriber)>() <= 32);
}

#[test]
fn many_subscribers_of_one_filter_move_to_a_map_and_back() {
    let index = Index::new();
    for key in 0..50 {
        index.insert("many/x", None, key, key.to_string());
    }
    assert_eq!(
        plain_keys(&index.matches("many/x")),
        (0..50).collect::<Vec<_>>()
    );
    for key in 2..50 {
        assert_eq!(
            index.remove("many/x", None, &key).value,
            Some(key.to_string())
        );
    }
    assert_eq!(plain_keys(&index.matches("many/x")), [0, 1]);
    let leaf = index.shards[index.shard_of("many")].trie.read();
    let leaf = leaf
        .find(&Path::parse("many/x"))
        .map(|l| matches!(l.plain, Members::Few(_)));
    assert_eq!(leaf, Some(true));
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
    assert_eq!(index.insert("a/b", None, 1, "x".into()).previous, None);
    assert_eq!(
        index.insert("a/b", None, 1, "y".into()).previous,
        Some("x".into())
    );
    assert_eq!(index.insert("a/+", Some("g"), 1, "s".into()).previous, None);
    assert_eq!(
        index.insert("a/+", Some("g"), 1, "t".into()).previous,
        Some("s".into())
    );
    assert_eq!((index.len(), index.shared_len()), (2, 1));
    assert_eq!(index.remove("a/b", Some("g"), &1).value, None);
    assert_eq!(index.remove("a/+", None, &1).value, None);
    assert_eq!(index.remove("a/b", None, &2).value, None);
    assert_eq!(index.remove("a/b", None, &1).value, Some("y".into()));
    assert_eq!(index.remove("a/+", Some("g"), &1).value, Some("t".into()));
    assert_eq!((index.len(), index.shared_len()), (0, 0));
    assert_eq!(trie_size(&index), 0);
}

/// (first, previous) of an insert, for compact assertions.
fn ins(
    index: &Index,
    filter: &str,
    group: Option<&str>,
    key: u32,
    value: &str,
) -> (bool, Option<String>) {
    let inserted = index.insert(filter, group, key, value.into());
    (inserted.first, inserted.previous)
}

/// (last, value) of a remove, for compact assertions.
fn rem(index: &Index, filter: &str, group: Option<&str>, key: u32) -> (bool, Option<String>) {
    let removed = index.remove(filter, group, &key);
    (removed.last, removed.value)
}

#[test]
fn plain_interest_appears_with_the_first_subscriber_and_goes_with_the_last() {
    let index = Index::new();
    assert_eq!(ins(&index, "a/b", None, 1, "x"), (true, None));
    assert_eq!(ins(&index, "a/b", None, 2, "y"), (false, None));
    // Overlapping filters are separate interests, even when one matches all the other does.
    assert_eq!(ins(&index, "a/+", None, 1, "z"), (true, None));
    assert_eq!(ins(&index, "#", None, 1, "w"), (true, None));
    assert_eq!(rem(&index, "a/b", None, 1), (false, Some("x".into())));
    assert_eq!(rem(&index, "a/b", None, 2), (true, Some("y".into())));
    assert_eq!(rem(&index, "a/+", None, 1), (true, Some("z".into())));
    assert_eq!(rem(&index, "#", None, 1), (true, Some("w".into())));
    // Interest can come back after it went.
    assert_eq!(ins(&index, "a/b", None, 2, "v"), (true, None));
}

#[test]
fn shared_interest_is_per_group_and_filter() {
    let index = Index::new();
    assert_eq!(ins(&index, "jobs/+", Some("g"), 1, "a"), (true, None));
    assert_eq!(ins(&index, "jobs/+", Some("g"), 2, "b"), (false, None));
    assert_eq!(ins(&index, "jobs/+", Some("h"), 1, "c"), (true, None));
    assert_eq!(ins(&index, "jobs/#", Some("g"), 1, "d"), (true, None));
    // A plain subscription to the same filter is an interest of its own.
    assert_eq!(ins(&index, "jobs/+", None, 3, "e"), (true, None));
    assert_eq!(
        rem(&index, "jobs/+", Some("g"), 1),
        (false, Some("a".into()))
    );
    assert_eq!(
        rem(&index, "jobs/+", Some("g"), 2),
        (true, Some("b".into()))
    );
    assert_eq!(
        rem(&index, "jobs/+", Some("h"), 1),
        (true, Some("c".into()))
    );
    assert_eq!(
        rem(&index, "jobs/#", Some("g"), 1),
        (true, Some("d".into()))
    );
    assert_eq!(rem(&index, "jobs/+", None, 3), (true, Some("e".into())));
}

#[test]
fn replacing_a_subscription_is_not_new_interest() {
    let index = Index::new();
    for group in [None, Some("g")] {
        assert_eq!(ins(&index, "t", group, 1, "x"), (true, None));
        assert_eq!(ins(&index, "t", group, 1, "y"), (false, Some("x".into())));
        assert_eq!(rem(&index, "t", group, 1), (true, Some("y".into())));
    }
}

#[test]
fn removing_a_missing_subscription_changes_nothing() {
    let index = Index::new();
    assert_eq!(rem(&index, "a/b", None, 1), (false, None));
    assert_eq!(rem(&index, "a/b", Some("g"), 1), (false, None));
    index.insert("a/b", None, 1, "x".into());
    index.insert("a/b", Some("g"), 1, "s".into());
    assert_eq!(rem(&index, "a/b", None, 2), (false, None));
    assert_eq!(rem(&index, "a/b", Some("g"), 2), (false, None));
    assert_eq!(rem(&index, "a/b", Some("h"), 1), (false, None));
    assert_eq!(rem(&index, "a/+", None, 1), (false, None));
    assert_eq!(rem(&index, "a/b/c", None, 1), (false, None));
    assert_eq!(index.len(), 2);
    assert_eq!(rem(&index, "a/b", None, 1), (true, Some("x".into())));
    assert_eq!(rem(&index, "a/b", None, 1), (false, None));
    assert_eq!(rem(&index, "a/b", Some("g"), 1), (true, Some("s".into())));
    assert_eq!(rem(&index, "a/b", Some("g"), 1), (false, None));
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
        assert_eq!(index.remove(&filter(i), None, &i).value, Some(()));
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
        4 => (strategies::any_topic_filter(), group.clone(), 0..4u32)
            .prop_map(|(f, g, k)| Op::Insert(f, g, k)),
        2 => (strategies::any_topic_filter(), group, 0..4u32)
            .prop_map(|(f, g, k)| Op::Remove(f, g, k)),
        4 => strategies::any_topic_name().prop_map(Op::Match),
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
    let mut expected_shared: BTreeMap<(String, String), BTreeSet<(u32, String)>> = BTreeMap::new();
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

/// A filter from a handful, so that random sequences often revisit the same (filter, group),
/// or now and then any filter.
fn crowded_filter() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(&["a", "a/b", "a/+", "+/b", "+", "#", "a/#", "$a/#"][..])
            .prop_map(String::from),
        1 => strategies::topic_filter(),
    ]
}

/// Subscribers of each (filter, group), the naive way.
type InterestModel = HashMap<(String, Option<&'static str>), HashSet<u32>>;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every insert and remove reports interest appearing or going exactly when the model's
    /// subscriber set for (filter, group) turns non-empty or empty.
    #[test]
    fn first_and_last_agree_with_naive_model(
        ops in prop::collection::vec(
            (any::<bool>(), crowded_filter(), prop::option::of(prop::sample::select(&["g", "h"][..])), 0..3u32),
            1..120,
        ),
    ) {
        let index = Index::new();
        let mut model = InterestModel::new();
        for (insert, filter, group, key) in ops {
            let id = (filter.clone(), group);
            if insert {
                let keys = model.entry(id).or_default();
                let first = keys.is_empty();
                let new = keys.insert(key);
                let inserted = index.insert(&filter, group, key, String::new());
                prop_assert_eq!(inserted.first, first, "first of {:?} {:?} {}", filter, group, key);
                prop_assert_eq!(inserted.previous.is_none(), new);
            } else {
                let (was, last) = match model.get_mut(&id) {
                    Some(keys) => {
                        let was = keys.remove(&key);
                        (was, was && keys.is_empty())
                    }
                    None => (false, false),
                };
                if last {
                    model.remove(&id);
                }
                let removed = index.remove(&filter, group, &key);
                prop_assert_eq!(removed.last, last, "last of {:?} {:?} {}", filter, group, key);
                prop_assert_eq!(removed.value.is_some(), was);
            }
        }
        for ((filter, group), keys) in model {
            let mut left = keys.len();
            for key in keys {
                left -= 1;
                prop_assert_eq!(index.remove(&filter, group, &key).last, left == 0);
            }
        }
        prop_assert_eq!(trie_size(&index), 0);
    }

    /// Interleaves subscribes, unsubscribes and lookups (so cached results are reused and
    /// must be invalidated), with caches from tiny (constant eviction) to default.
    #[test]
    fn agrees_with_naive_matcher(
        ops in prop::collection::vec(op(), 1..80),
        probes in prop::collection::vec(strategies::any_topic_name(), 1..8),
        cache in prop::sample::select(&[1usize, 3, 4096][..]),
    ) {
        let index = Index::with_cache_capacity(cache);
        let mut model = Model::new();
        for (serial, op) in ops.into_iter().enumerate() {
            match op {
                Op::Insert(filter, group, key) => {
                    let value = format!("{filter}#{serial}");
                    let previous = model.insert((filter.clone(), group, key), value.clone());
                    prop_assert_eq!(index.insert(&filter, group, key, value).previous, previous);
                }
                Op::Remove(filter, group, key) => {
                    let removed = model.remove(&(filter.clone(), group, key));
                    prop_assert_eq!(index.remove(&filter, group, &key).value, removed);
                }
                Op::Match(topic) => check(&index, &model, &topic)?,
            }
            assert_compact(&index);
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
            prop_assert!(index.remove(&filter, group, &key).value.is_some());
            model.remove(&(filter, group, key));
            assert_compact(&index);
            if let Some(topic) = probes.first() {
                check(&index, &model, topic)?;
            }
        }
        prop_assert_eq!(trie_size(&index), 0);
    }
}

#[test]
fn contains_tells_whether_a_filter_and_group_have_a_subscriber_now() {
    let index = Index::new();
    assert!(!index.contains("a/+/#", None));
    index.insert("a/+/#", None, 1, "x".into());
    index.insert("a/+/#", Some("g"), 2, "y".into());
    index.insert("#", None, 3, "z".into());
    assert!(index.contains("a/+/#", None));
    assert!(index.contains("a/+/#", Some("g")));
    assert!(index.contains("#", None));
    // Neighbours in the trie are other filters.
    for (filter, group) in [
        ("a/+", None),
        ("a/+/#", Some("h")),
        ("a/#", None),
        ("+/#", None),
    ] {
        assert!(!index.contains(filter, group), "{filter} {group:?}");
    }
    index.remove("a/+/#", None, &1);
    assert!(!index.contains("a/+/#", None));
    assert!(index.contains("a/+/#", Some("g")));
    index.remove("a/+/#", Some("g"), &2);
    assert!(!index.contains("a/+/#", Some("g")));
}

/// Time per lookup of both topic shapes of BENCHMARKS.md "Memory per topic" in an index of
/// 100,000 of them, without the cache (its hits never reach the trie): `cargo test --release -p gateway --lib lookup_speed -- --ignored
/// --nocapture`.
#[test]
#[ignore = "a timing for BENCHMARKS.md; meaningful in release builds only"]
fn lookup_speed() {
    const N: u32 = 100_000;
    let short = |i: u32| format!("s/{i:05}/t");
    let long = |i: u32| {
        (0..8u32)
            .map(|level| format!("level{level}-{:017x}", u64::from(i) << 8 | u64::from(level)))
            .collect::<Vec<_>>()
            .join("/")
    };
    for (name, shape) in [("short", &short as &dyn Fn(u32) -> String), ("long", &long)] {
        let index = TopicIndex::<u32, ()>::with_cache_capacity(0);
        let topics: Vec<String> = (0..N).map(shape).collect();
        for (i, topic) in topics.iter().enumerate() {
            index.insert(topic, None, i as u32, ());
        }
        index.insert("+/#", None, N, ());
        // In strides rather than in insertion order: consecutive lookups do not walk nodes the
        // one before just brought into the CPU cache.
        let started = Instant::now();
        let mut found = 0;
        for round in 0..5 {
            for topic in topics.iter().skip(round).step_by(5) {
                found += index.matches(topic).plain.len();
            }
        }
        let per = started.elapsed() / N;
        assert_eq!(found, 2 * N as usize);
        println!("lookup {name}: {per:?} per topic");
    }
}
