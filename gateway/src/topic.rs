//! MQTT topic-name and topic-filter rules (MQTT 3.1.1 §4.7, MQTT 5.0 §4.7 and §4.8.2).
//!
//! Everything that decides whether a string is an acceptable topic name, topic filter or
//! shared-subscription filter lives here, so the codec, the session layer and the routing
//! index agree on one definition. [`matches`] is the deliberately naive reference matcher:
//! the trie-based [`crate::topic_index`] and [`crate::retain`] are tested against it.

use thiserror::Error;

/// Why a topic name or filter was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic has more than {max} levels")]
    TooManyLevels { max: usize },
    #[error("topic name contains a wildcard")]
    WildcardInName,
    #[error("wildcard must occupy a whole level and '#' must be the last level")]
    BadWildcard,
    #[error("topic contains a NUL character")]
    NulChar,
    #[error("malformed shared subscription: {0}")]
    BadShare(&'static str),
}

const SHARE_PREFIX: &str = "$share/";

/// Checks a PUBLISH topic name: non-empty, no wildcard, no NUL, at most `max_levels` levels.
pub(crate) fn validate_topic_name(name: &str, max_levels: usize) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if name.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    if name.contains('\0') {
        return Err(TopicError::NulChar);
    }
    check_levels(name, max_levels)
}

/// Checks a SUBSCRIBE topic filter: `+` only as a whole level, `#` only as the whole last level.
pub(crate) fn validate_topic_filter(filter: &str, max_levels: usize) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.contains('\0') {
        return Err(TopicError::NulChar);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        match level {
            "+" => {}
            "#" if is_last => {}
            _ if level.contains(['+', '#']) => return Err(TopicError::BadWildcard),
            _ => {}
        }
    }
    check_levels(filter, max_levels)
}

fn check_levels(topic: &str, max_levels: usize) -> Result<(), TopicError> {
    // Counting separators avoids allocating; n separators means n + 1 levels.
    let levels = topic.bytes().filter(|&b| b == b'/').count() + 1;
    if levels > max_levels {
        return Err(TopicError::TooManyLevels { max: max_levels });
    }
    Ok(())
}

/// Splits `$share/{group}/{filter}` into `(group, filter)`; `Ok(None)` when `filter` is not a
/// shared subscription.
///
/// The inner filter's syntax is checked but not its level count, because the level limit is a
/// broker setting the caller applies to the returned filter.
pub(crate) fn parse_shared(filter: &str) -> Result<Option<(&str, &str)>, TopicError> {
    let Some(rest) = filter.strip_prefix(SHARE_PREFIX) else {
        return Ok(None);
    };
    let Some((group, inner)) = rest.split_once('/') else {
        return Err(TopicError::BadShare("missing topic filter"));
    };
    if group.is_empty() {
        return Err(TopicError::BadShare("empty share name"));
    }
    if group.contains(['+', '#']) {
        return Err(TopicError::BadShare("share name contains a wildcard"));
    }
    if inner.is_empty() {
        return Err(TopicError::BadShare("empty topic filter"));
    }
    validate_topic_filter(inner, usize::MAX)?;
    Ok(Some((group, inner)))
}

/// Whether `topic` is one of the broker's own status topics (`$SYS/...`), which clients may write
/// only where an ACL rule names them.
pub(crate) fn is_sys(topic: &str) -> bool {
    topic
        .strip_prefix("$SYS")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The first level of a topic name or filter: what the routing structures shard by.
pub(crate) fn first_level(topic: &str) -> &str {
    topic.split_once('/').map_or(topic, |(first, _)| first)
}

/// Whether topic name `topic` matches topic filter `filter`, level by level.
///
/// `a/#` matches `a` (the parent level), `+` matches an empty level, and a topic starting with
/// `$` is never matched by a filter whose first level is a wildcard (MQTT §4.7.2), so `#`
/// subscribers do not receive `$SYS`-style traffic.
pub(crate) fn matches(filter: &str, topic: &str) -> bool {
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    if topic.starts_with('$') && matches!(filter_levels.clone().next(), Some("+" | "#")) {
        return false;
    }
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Random topic names and filters over a tiny alphabet, so that generated filters and topics
/// collide often; shared by the property tests of the routing structures.
#[cfg(test)]
pub(crate) mod strategies {
    use proptest::prelude::*;

    const TOPIC_LEVELS: [&str; 4] = ["a", "b", "$a", ""];
    const FILTER_LEVELS: [&str; 5] = ["a", "b", "$a", "", "+"];

    /// More levels to pick from and deeper topics: enough siblings for a trie node's edges to
    /// turn into a table and back, and long paths for edges to split and join.
    const WIDE_LEVELS: [&str; 12] = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "$a", "", "j"];

    /// A topic name from `topic_name`'s few levels, or now and then from the wide ones.
    pub(crate) fn any_topic_name() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => topic_name(),
            1 => prop::collection::vec(prop::sample::select(&WIDE_LEVELS[..]), 1..8)
                .prop_map(|levels| levels.join("/"))
                .prop_filter("topic names are non-empty", |t| !t.is_empty()),
        ]
    }

    /// A topic filter from `topic_filter`'s few levels, or now and then from the wide ones.
    pub(crate) fn any_topic_filter() -> impl Strategy<Value = String> {
        let wide = prop::collection::vec(
            prop_oneof![4 => prop::sample::select(&WIDE_LEVELS[..]), 1 => Just("+")],
            0..8,
        );
        prop_oneof![
            3 => topic_filter(),
            1 => (wide, any::<bool>())
                .prop_map(|(mut levels, multi)| {
                    if multi || levels.is_empty() {
                        levels.push("#");
                    }
                    levels.join("/")
                })
                .prop_filter("topic filters are non-empty", |f| !f.is_empty()),
        ]
    }

    pub(crate) fn topic_name() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(&TOPIC_LEVELS[..]), 1..5)
            .prop_map(|levels| levels.join("/"))
            .prop_filter("topic names are non-empty", |t| !t.is_empty())
    }

    pub(crate) fn topic_filter() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop::sample::select(&FILTER_LEVELS[..]), 0..5),
            any::<bool>(),
        )
            .prop_map(|(mut levels, multi)| {
                if multi || levels.is_empty() {
                    levels.push("#");
                }
                levels.join("/")
            })
            .prop_filter("topic filters are non-empty", |f| !f.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sys_topics_are_the_sys_level_and_below_only() {
        for (topic, sys) in [
            ("$SYS", true),
            ("$SYS/broker/version", true),
            ("$SYS/", true),
            ("$SYSTEM/x", false),
            ("$sys/x", false),
            ("a/$SYS/x", false),
            ("SYS/x", false),
        ] {
            assert_eq!(is_sys(topic), sys, "{topic}");
        }
    }

    #[test]
    fn topic_names() {
        assert_eq!(validate_topic_name("a/b", 8), Ok(()));
        assert_eq!(validate_topic_name("a//b", 8), Ok(()));
        assert_eq!(validate_topic_name("/", 8), Ok(()));
        assert_eq!(validate_topic_name("$SYS/x", 8), Ok(()));
        assert_eq!(validate_topic_name("", 8), Err(TopicError::Empty));
        assert_eq!(
            validate_topic_name("a/+", 8),
            Err(TopicError::WildcardInName)
        );
        assert_eq!(
            validate_topic_name("a#", 8),
            Err(TopicError::WildcardInName)
        );
        assert_eq!(validate_topic_name("a\0", 8), Err(TopicError::NulChar));
        assert_eq!(validate_topic_name("a/b/c", 3), Ok(()));
        assert_eq!(
            validate_topic_name("a/b/c/d", 3),
            Err(TopicError::TooManyLevels { max: 3 })
        );
    }

    #[test]
    fn topic_filters() {
        for ok in [
            "#", "+", "a/#", "a/+/b", "+/+", "/+", "a//b", "$SYS/#", "+/#",
        ] {
            assert_eq!(validate_topic_filter(ok, 8), Ok(()), "{ok}");
        }
        for bad in ["a/#/b", "a#", "a/b+", "#/a", "a/+b", "##", "++"] {
            assert_eq!(
                validate_topic_filter(bad, 8),
                Err(TopicError::BadWildcard),
                "{bad}"
            );
        }
        assert_eq!(validate_topic_filter("", 8), Err(TopicError::Empty));
        assert_eq!(
            validate_topic_filter("+/+/+", 2),
            Err(TopicError::TooManyLevels { max: 2 })
        );
    }

    #[test]
    fn shared_filters() {
        assert_eq!(parse_shared("a/b"), Ok(None));
        assert_eq!(parse_shared("$share"), Ok(None));
        assert_eq!(parse_shared("$share/g/a/+"), Ok(Some(("g", "a/+"))));
        assert_eq!(parse_shared("$share/g/#"), Ok(Some(("g", "#"))));
        assert_eq!(parse_shared("$share/g//"), Ok(Some(("g", "/"))));
        assert!(matches!(
            parse_shared("$share/g"),
            Err(TopicError::BadShare(_))
        ));
        assert!(matches!(
            parse_shared("$share//a"),
            Err(TopicError::BadShare(_))
        ));
        assert!(matches!(
            parse_shared("$share/g/"),
            Err(TopicError::BadShare(_))
        ));
        assert!(matches!(
            parse_shared("$share/g+/a"),
            Err(TopicError::BadShare(_))
        ));
        assert!(matches!(
            parse_shared("$share/#/a"),
            Err(TopicError::BadShare(_))
        ));
        assert_eq!(parse_shared("$share/g/a/#/b"), Err(TopicError::BadWildcard));
    }

    #[test]
    fn matching() {
        let cases = [
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/b", "a", false),
            ("a", "a/b", false),
            ("a/+", "a/b", true),
            ("a/+", "a", false),
            ("a/+", "a/", true),
            ("a/+/b", "a//b", true),
            ("+", "a", true),
            ("+", "/a", false),
            ("+/+", "/a", true),
            ("/+", "/a", true),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("a/#", "ab", false),
            ("#", "a/b", true),
            ("#", "/", true),
            ("+/#", "a", true),
            ("#", "$SYS/x", false),
            ("+", "$SYS", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("$SYS/+", "$SYS/x", true),
            ("a/+/#", "a/$x/y", true),
        ];
        for (filter, topic, expected) in cases {
            assert_eq!(matches(filter, topic), expected, "{filter} vs {topic}");
        }
    }

    /// A second, recursive formulation of level matching to cross-check [`matches`].
    fn by_levels(filter: &[&str], topic: &[&str]) -> bool {
        match (filter, topic) {
            (["#"], _) => true,
            ([], []) => true,
            (["+", f @ ..], [_, t @ ..]) => by_levels(f, t),
            ([fl, f @ ..], [tl, t @ ..]) => fl == tl && by_levels(f, t),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn generated_inputs_are_valid(
            topic in strategies::topic_name(),
            filter in strategies::topic_filter(),
        ) {
            prop_assert_eq!(validate_topic_name(&topic, 8), Ok(()));
            prop_assert_eq!(validate_topic_filter(&filter, 8), Ok(()));
            prop_assert!(matches(&topic, &topic));
            let f: Vec<&str> = filter.split('/').collect();
            let t: Vec<&str> = topic.split('/').collect();
            let hidden = topic.starts_with('$') && matches!(f[0], "+" | "#");
            prop_assert_eq!(matches(&filter, &topic), !hidden && by_levels(&f, &t));
        }

        #[test]
        fn multi_level_wildcard_matches_every_extension(
            topic in strategies::topic_name(),
            suffix in strategies::topic_name(),
        ) {
            let multi = format!("{topic}/#");
            let extended = format!("{topic}/{suffix}");
            prop_assert!(matches(&multi, &topic));
            prop_assert!(matches(&multi, &extended));
            prop_assert_eq!(matches("#", &topic), !topic.starts_with('$'));
        }
    }
}
