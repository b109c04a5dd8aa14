//! Topic names and filters: the validation rules, the matcher, and the two tries built on them
//! (the subscription index and the retained store), each against a simple model.

use std::collections::BTreeMap;

use super::input::Input;
use crate::retain::RetainStore;
use crate::topic::{
    first_level, is_sys, matches, parse_shared, validate_topic_filter, validate_topic_name,
};
use crate::topic_index::TopicIndex;

/// Levels that collide often: literal, empty, `$`-prefixed and wildcard ones.
const LEVELS: [&str; 6] = ["a", "b", "$a", "", "+", "#"];
const TOPIC_LEVELS: [&str; 4] = ["a", "b", "$a", ""];
const GROUPS: [Option<&str>; 3] = [None, Some("g"), Some("h")];

/// Checks, for arbitrary bytes:
/// - `validate_topic_name`, `validate_topic_filter` and `parse_shared` accept exactly what a
///   level-by-level reading of the specification's rules accepts, on arbitrary text;
/// - `matches` agrees with a recursive formulation of level matching (with the `$` rule);
/// - a `TopicIndex` (with a small result cache, so eviction and invalidation run) and a
///   `RetainStore` driven by a sequence of changes and lookups answer exactly as a map of
///   filters, or of topics, filtered by that reference matcher: same matches, same values, same
///   first/last subscriber flags, same counts, the retained bound kept.
pub fn topic(data: &[u8]) {
    let mut input = Input::new(data);
    // Free text first: the validators and the matcher on whatever the fuzzer writes.
    for _ in 0..usize::from(input.byte() % 4) {
        let (a, b) = (input.text(), input.text());
        check_text(&a, &b);
    }
    let index = TopicIndex::with_cache_capacity(2);
    let mut subscriptions: BTreeMap<(String, Option<&str>, u8), u32> = BTreeMap::new();
    let max_retained = usize::from(input.byte() % 8);
    let retained = RetainStore::new(max_retained);
    let mut kept: BTreeMap<String, u32> = BTreeMap::new();
    let mut step = 0u32;
    while !input.is_empty() {
        step += 1;
        match input.byte() % 6 {
            0 => {
                let (filter, group, key) = (
                    some_filter(&mut input),
                    input.pick(&GROUPS),
                    some_key(&mut input),
                );
                let had_group = subscriptions
                    .keys()
                    .any(|(f, g, _)| *f == filter && *g == group);
                let inserted = index.insert(&filter, group, key, step);
                let previous = subscriptions.insert((filter, group, key), step);
                assert_eq!(inserted.previous, previous, "insert's previous value");
                assert_eq!(inserted.first, !had_group, "insert's first flag");
            }
            1 => {
                let (filter, group, key) = (
                    some_filter(&mut input),
                    input.pick(&GROUPS),
                    some_key(&mut input),
                );
                let removed = index.remove(&filter, group, &key);
                let value = subscriptions.remove(&(filter.clone(), group, key));
                let left = subscriptions
                    .keys()
                    .any(|(f, g, _)| *f == filter && *g == group);
                assert_eq!(removed.value, value, "remove's value");
                assert_eq!(removed.last, value.is_some() && !left, "remove's last flag");
            }
            2 => check_matches(&index, &subscriptions, &some_topic(&mut input)),
            3 => {
                let topic = some_topic(&mut input);
                let result = retained.set(&topic, step);
                if let Some(&old) = kept.get(&topic) {
                    assert!(
                        matches!(result, Ok(Some(v)) if v == old),
                        "replacing {topic}"
                    );
                    kept.insert(topic, step);
                } else if kept.len() < max_retained {
                    assert!(matches!(result, Ok(None)), "storing {topic}");
                    kept.insert(topic, step);
                } else {
                    assert!(
                        result.is_err(),
                        "{topic} stored beyond {max_retained} topics"
                    );
                }
            }
            4 => {
                let topic = some_topic(&mut input);
                assert_eq!(
                    retained.remove(&topic),
                    kept.remove(&topic),
                    "removing {topic}"
                );
            }
            _ => {
                let filter = some_filter(&mut input);
                let mut found = Vec::new();
                retained.matching(&filter, |v| {
                    found.push(*v);
                    true
                });
                found.sort_unstable();
                let mut expected: Vec<u32> = kept
                    .iter()
                    .filter(|(topic, _)| reference_matches(&filter, topic))
                    .map(|(_, &v)| v)
                    .collect();
                expected.sort_unstable();
                assert_eq!(found, expected, "retained messages matching {filter}");
            }
        }
        assert_eq!(index.len(), subscriptions.len(), "subscription count");
        let shared = subscriptions.keys().filter(|(_, g, _)| g.is_some()).count();
        assert_eq!(index.shared_len(), shared, "shared subscription count");
        assert_eq!(retained.len(), kept.len(), "retained count");
    }
}

fn some_key(input: &mut Input<'_>) -> u8 {
    input.byte() % 4
}

/// A valid filter over `LEVELS`: `#` only as the last level.
fn some_filter(input: &mut Input<'_>) -> String {
    let n = 1 + usize::from(input.byte() % 4);
    let mut levels: Vec<&str> = (0..n).map(|_| input.pick(&LEVELS)).collect();
    for level in levels.iter_mut().take(n - 1) {
        if *level == "#" {
            *level = "+";
        }
    }
    let filter = levels.join("/");
    if filter.is_empty() {
        "#".to_owned()
    } else {
        filter
    }
}

fn some_topic(input: &mut Input<'_>) -> String {
    let n = 1 + usize::from(input.byte() % 4);
    let topic = (0..n)
        .map(|_| input.pick(&TOPIC_LEVELS))
        .collect::<Vec<_>>()
        .join("/");
    if topic.is_empty() {
        "a".to_owned()
    } else {
        topic
    }
}

fn check_matches(
    index: &TopicIndex<u8, u32>,
    subscriptions: &BTreeMap<(String, Option<&str>, u8), u32>,
    topic: &str,
) {
    let found = index.matches(topic);
    let mut plain = found.plain.clone();
    plain.sort_unstable();
    let mut expected: Vec<(u8, u32)> = subscriptions
        .iter()
        .filter(|((f, g, _), _)| g.is_none() && reference_matches(f, topic))
        .map(|((_, _, k), &v)| (*k, v))
        .collect();
    expected.sort_unstable();
    assert_eq!(plain, expected, "plain subscribers of {topic}");
    assert!(
        found.plain.windows(2).all(|w| w[0].0 <= w[1].0),
        "plain subscribers of {topic} not sorted by key"
    );
    let mut groups: Vec<(&str, &str, usize)> = found
        .shared
        .iter()
        .map(|g| (g.name(), g.filter(), g.len()))
        .collect();
    groups.sort_unstable();
    let mut expected: BTreeMap<(&str, &str), Vec<(u8, u32)>> = BTreeMap::new();
    for ((f, g, k), &v) in subscriptions {
        if let Some(g) = g {
            if reference_matches(f, topic) {
                expected.entry((g, f)).or_default().push((*k, v));
            }
        }
    }
    let sizes: Vec<(&str, &str, usize)> = expected
        .iter()
        .map(|(&(g, f), members)| (g, f, members.len()))
        .collect();
    assert_eq!(groups, sizes, "shared groups matching {topic}");
    for group in &found.shared {
        for &(key, value) in &expected[&(group.name(), group.filter())] {
            assert_eq!(
                group.pick(|k, _| *k == key),
                Some((key, value)),
                "member {key} of {}",
                group.name()
            );
        }
    }
}

fn check_text(a: &str, b: &str) {
    let max_levels = 1 + a.len() % 5;
    assert_eq!(
        validate_topic_name(a, max_levels).is_ok(),
        reference_name(a, max_levels),
        "topic name {a:?} (at most {max_levels} levels)"
    );
    assert_eq!(
        validate_topic_filter(a, max_levels).is_ok(),
        reference_filter(a, max_levels),
        "topic filter {a:?} (at most {max_levels} levels)"
    );
    let shared = parse_shared(a);
    match a.strip_prefix("$share/") {
        None => assert_eq!(shared, Ok(None), "{a:?} is not shared"),
        Some(rest) => {
            let expected = rest.split_once('/').filter(|(group, inner)| {
                !group.is_empty()
                    && !group.contains(['+', '#'])
                    && reference_filter(inner, usize::MAX)
            });
            assert_eq!(shared.ok().flatten(), expected, "shared filter {a:?}");
        }
    }
    assert_eq!(
        is_sys(a),
        a == "$SYS" || a.starts_with("$SYS/"),
        "{a:?} as $SYS"
    );
    assert_eq!(first_level(a), a.split('/').next().unwrap_or(a));
    if reference_filter(a, usize::MAX) && reference_name(b, usize::MAX) {
        assert_eq!(
            matches(a, b),
            reference_matches(a, b),
            "filter {a:?} and topic {b:?}"
        );
    }
}

fn reference_name(name: &str, max_levels: usize) -> bool {
    !name.is_empty() && !name.contains(['+', '#', '\0']) && name.split('/').count() <= max_levels
}

fn reference_filter(filter: &str, max_levels: usize) -> bool {
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    !filter.is_empty()
        && !filter.contains('\0')
        && levels.len() <= max_levels
        && levels.iter().enumerate().all(|(i, level)| match *level {
            "+" => true,
            "#" => i == last,
            _ => !level.contains(['+', '#']),
        })
}

/// Level matching written recursively, with MQTT's rule that a wildcard first level does not
/// match a topic starting with `$`.
fn reference_matches(filter: &str, topic: &str) -> bool {
    fn by_levels(filter: &[&str], topic: &[&str]) -> bool {
        match (filter, topic) {
            (["#"], _) => true,
            ([], []) => true,
            (["+", f @ ..], [_, t @ ..]) => by_levels(f, t),
            ([fl, f @ ..], [tl, t @ ..]) => fl == tl && by_levels(f, t),
            _ => false,
        }
    }
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    let hidden = topic.starts_with('$') && matches!(f[0], "+" | "#");
    !hidden && by_levels(&f, &t)
}
