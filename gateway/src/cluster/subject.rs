//! MQTT topics and filters as NATS subjects, losslessly.
//!
//! NATS splits subjects into tokens at `.`, treats a whole token `*` or `>` as a wildcard, does
//! not allow empty tokens and ends a protocol argument at whitespace. MQTT topic levels may hold
//! any of these (`a.b`, `*`, `>`, `a b`, empty levels, a leading `/`). Each level therefore
//! becomes one token in which `%`, `.`, `*`, `>`, ASCII control characters, space and DEL are
//! written `%XX` (hex of the byte); an empty level is the token `%` alone, which no escape
//! produces. A published topic can therefore never become a wildcard, a token never contains a
//! separator, and decoding is exact (nats-server's own MQTT layer escapes only empty levels and
//! refuses `.` and spaces; see design-notes).
//!
//! MQTT's `+` is NATS's `*`; MQTT's `#` also matches its parent level while NATS's `>` needs at
//! least one more token, so `a/#` is two NATS subscriptions, `a` and `a.>`. MQTT wildcards in
//! the first level do not match topics starting with `$`; NATS wildcards match any token, so
//! topics live under one of two class tokens: `d` for `$` topics, `m` for the others, and a
//! filter starting with a wildcard is only subscribed under `m`. The property test at the end
//! checks all of it against a naive MQTT matcher: a topic matches a filter exactly when one of
//! the filter's subjects matches the topic's subject in NATS's rules.
//!
//! Shared groups are addressed, not matched: `$share/g/f` is one literal subject
//! `{prefix}.q.{g}.{f's levels}` (escaped the same way, `+` and `#` kept as the literal
//! characters NATS does not interpret), so that each group is one NATS queue group.

use std::fmt::Write as _;

/// A subject that is not one this mapping produces (from a peer speaking another version, or a
/// bug): the message is counted as malformed and dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum SubjectError {
    #[error("subject outside the cluster's message space")]
    Foreign,
    #[error("bad token in subject (empty, or a bad escape)")]
    BadToken,
}

/// The class token of ordinary topics.
const PLAIN: &str = "m";
/// The class token of topics whose first level starts with `$`.
const DOLLAR: &str = "d";
/// The class token of shared-group subjects.
const GROUP: &str = "q";

/// Characters written as `%XX` inside a token.
fn escaped(c: char) -> bool {
    matches!(c, '%' | '.' | '*' | '>') || c <= ' ' || c == '\u{7f}'
}

/// Appends one MQTT level as one NATS token.
fn push_level(out: &mut String, level: &str) {
    if level.is_empty() {
        out.push('%');
        return;
    }
    for c in level.chars() {
        if escaped(c) {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{:02X}", c as u32);
        } else {
            out.push(c);
        }
    }
}

/// One NATS token back into the MQTT level it came from.
fn decode_token(token: &str, out: &mut String) -> Result<(), SubjectError> {
    if token == "%" {
        return Ok(());
    }
    if token.is_empty() {
        return Err(SubjectError::BadToken);
    }
    // A character that is always escaped cannot appear raw: a raw `*` or `>` token would be a
    // wildcard, and any other would be a second spelling of one topic.
    if token.chars().any(|c| c != '%' && escaped(c)) {
        return Err(SubjectError::BadToken);
    }
    let mut rest = token;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let hex = rest.get(at + 1..at + 3).ok_or(SubjectError::BadToken)?;
        let byte = u8::from_str_radix(hex, 16).map_err(|_| SubjectError::BadToken)?;
        // Only ASCII is ever escaped, and exactly the escaped set: anything else would decode
        // to a second spelling of the same topic.
        let c = char::from(byte);
        if !byte.is_ascii() || !escaped(c) || hex.chars().any(|h| h.is_ascii_lowercase()) {
            return Err(SubjectError::BadToken);
        }
        out.push(c);
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(())
}

fn class(first_level: &str) -> &'static str {
    if first_level.starts_with('$') {
        DOLLAR
    } else {
        PLAIN
    }
}

/// The subject a message on `topic` (a valid topic name) is published on.
pub(crate) fn topic_subject(prefix: &str, topic: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + topic.len() + 8);
    out.push_str(prefix);
    out.push('.');
    out.push_str(class(topic.split('/').next().unwrap_or("")));
    for level in topic.split('/') {
        out.push('.');
        push_level(&mut out, level);
    }
    out
}

/// The topic a subject made by `topic_subject` stands for.
pub(crate) fn topic_of(prefix: &str, subject: &str) -> Result<String, SubjectError> {
    let rest = subject
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('.'))
        .ok_or(SubjectError::Foreign)?;
    let (class_token, levels) = rest.split_once('.').ok_or(SubjectError::Foreign)?;
    let mut topic = String::with_capacity(levels.len());
    for (i, token) in levels.split('.').enumerate() {
        if i > 0 {
            topic.push('/');
        }
        decode_token(token, &mut topic)?;
    }
    // The class must agree with the topic, or two subjects would name one topic.
    let first = topic.split('/').next().unwrap_or("");
    if class_token != class(first) || topic.is_empty() {
        return Err(SubjectError::Foreign);
    }
    Ok(topic)
}

/// The NATS subscriptions that together receive exactly the topics `filter` (a valid,
/// non-shared topic filter) matches: one, or two for a filter ending in `#` below the root.
pub(crate) fn filter_subjects(prefix: &str, filter: &str) -> Vec<String> {
    let levels: Vec<&str> = filter.split('/').collect();
    let first = levels.first().copied().unwrap_or("");
    // A wildcard first level never matches `$` topics, and a literal one decides the class.
    let class_token = if first == "+" || first == "#" {
        PLAIN
    } else {
        class(first)
    };
    let mut base = String::with_capacity(prefix.len() + filter.len() + 8);
    base.push_str(prefix);
    base.push('.');
    base.push_str(class_token);
    let multi = levels.last() == Some(&"#");
    let exact = if multi {
        &levels[..levels.len() - 1]
    } else {
        &levels[..]
    };
    for level in exact {
        base.push('.');
        if *level == "+" {
            base.push('*');
        } else {
            push_level(&mut base, level);
        }
    }
    if !multi {
        return vec![base];
    }
    let below = format!("{base}.>");
    if exact.is_empty() {
        // `#` alone: every topic has at least one level, so `>` under the class is all of them.
        vec![below]
    } else {
        vec![base, below]
    }
}

/// The literal subject of shared group `group` with `filter`: its NATS queue group's subject.
pub(crate) fn group_subject(prefix: &str, group: &str, filter: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + group.len() + filter.len() + 8);
    out.push_str(prefix);
    out.push('.');
    out.push_str(GROUP);
    out.push('.');
    push_level(&mut out, group);
    for level in filter.split('/') {
        out.push('.');
        push_level(&mut out, level);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P: &str = "gw";

    /// MQTT matching as the specification words it, written plainly (no index, no shortcuts).
    fn mqtt_matches(filter: &str, topic: &str) -> bool {
        let f: Vec<&str> = filter.split('/').collect();
        let t: Vec<&str> = topic.split('/').collect();
        if topic.starts_with('$') && (f[0] == "+" || f[0] == "#") {
            return false;
        }
        for (i, level) in f.iter().enumerate() {
            match *level {
                "#" => return true,
                "+" if i < t.len() => {}
                _ if i < t.len() && t[i] == *level => {}
                _ => return false,
            }
        }
        f.len() == t.len()
    }

    /// NATS matching as nats-server's sublist does it: `*` one token, `>` one or more.
    fn nats_matches(subscription: &str, subject: &str) -> bool {
        let s: Vec<&str> = subscription.split('.').collect();
        let t: Vec<&str> = subject.split('.').collect();
        for (i, token) in s.iter().enumerate() {
            match *token {
                ">" => return t.len() > i,
                "*" if i < t.len() => {}
                _ if i < t.len() && t[i] == *token => {}
                _ => return false,
            }
        }
        s.len() == t.len()
    }

    /// A subject NATS accepts: tokens non-empty, no whitespace; a published one no wildcard.
    fn valid_subject(subject: &str, published: bool) -> bool {
        subject.split('.').all(|t| {
            !t.is_empty() && !(published && (t == "*" || t == ">" || t.contains(['*', '>'])))
        }) && !subject.contains(|c: char| c.is_ascii_whitespace() || c.is_ascii_control())
    }

    const TOPIC_LEVELS: [&str; 12] = [
        "a", "b", "$a", "", ".", "*", ">", "a.b", "a b", "%", "%2E", "é\t*",
    ];

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(&TOPIC_LEVELS[..]), 1..5)
            .prop_map(|levels| levels.join("/"))
            .prop_filter("topic names are non-empty", |t| !t.is_empty())
    }

    fn filter() -> impl Strategy<Value = String> {
        let levels: Vec<&str> = TOPIC_LEVELS.iter().copied().chain(["+"]).collect();
        (
            prop::collection::vec(prop::sample::select(levels), 0..5),
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn a_topic_matches_a_filter_exactly_when_their_subjects_match(
            t in topic(),
            f in filter(),
        ) {
            let subject = topic_subject(P, &t);
            let subscriptions = filter_subjects(P, &f);
            let nats = subscriptions.iter().filter(|s| nats_matches(s, &subject)).count();
            prop_assert_eq!(mqtt_matches(&f, &t), nats > 0, "{} / {:?}", subject, subscriptions);
            // Never two subscriptions of one filter for one message: one copy per filter.
            prop_assert!(nats <= 1);
            for s in &subscriptions {
                prop_assert!(valid_subject(s, false), "{}", s);
            }
        }

        #[test]
        fn topics_round_trip_and_never_publish_a_wildcard(t in topic()) {
            let subject = topic_subject(P, &t);
            prop_assert!(valid_subject(&subject, true), "{}", subject);
            prop_assert_eq!(topic_of(P, &subject), Ok(t));
        }

        #[test]
        fn arbitrary_tokens_decode_or_fail_without_panicking(s in "[a-z%.*>$ 0-9A-F]{0,20}") {
            if let Ok(t) = topic_of(P, &format!("{P}.m.{s}")) {
                // Whatever decodes re-encodes to the same subject: one spelling per topic.
                prop_assert_eq!(topic_subject(P, &t), format!("{P}.m.{s}"));
            }
        }
    }

    #[test]
    fn special_characters_map_as_documented() {
        assert_eq!(topic_subject(P, "a/b"), "gw.m.a.b");
        assert_eq!(topic_subject(P, "/a//b/"), "gw.m.%.a.%.b.%");
        assert_eq!(topic_subject(P, "a.b/*/>/x y"), "gw.m.a%2Eb.%2A.%3E.x%20y");
        assert_eq!(topic_subject(P, "$SYS/x"), "gw.d.$SYS.x");
        assert_eq!(topic_subject(P, "100%"), "gw.m.100%25");
        assert_eq!(filter_subjects(P, "#"), ["gw.m.>"]);
        assert_eq!(filter_subjects(P, "a/#"), ["gw.m.a", "gw.m.a.>"]);
        assert_eq!(filter_subjects(P, "+/b"), ["gw.m.*.b"]);
        assert_eq!(filter_subjects(P, "$SYS/#"), ["gw.d.$SYS", "gw.d.$SYS.>"]);
        assert_eq!(group_subject(P, "g", "a/+/#"), "gw.q.g.a.+.#");
        assert_eq!(topic_of(P, "gw.m.a%2eb"), Err(SubjectError::BadToken));
        assert_eq!(topic_of(P, "gw.m.a%41"), Err(SubjectError::BadToken));
        assert_eq!(topic_of(P, "gw.m.%2"), Err(SubjectError::BadToken));
        assert_eq!(topic_of(P, "gw.m.>"), Err(SubjectError::BadToken));
        assert_eq!(topic_of(P, "gw.m.a*"), Err(SubjectError::BadToken));
        assert_eq!(topic_of(P, "gw.d.a"), Err(SubjectError::Foreign));
        assert_eq!(topic_of(P, "other.m.a"), Err(SubjectError::Foreign));
    }
}
