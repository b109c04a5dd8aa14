//! Authorization: Mosquitto-style `acl_file` rules and the per-connection checks built on them.
//!
//! This module owns who may read and write which topic, so the decision is made in one place and
//! the data path only asks yes/no questions.
//!
//! File syntax (Mosquitto's `acl_file`, so that operators bring theirs as it is): `#` starts a
//! comment line; `topic [ACCESS] FILTER` before any `user` line applies to anonymous clients, as in
//! Mosquitto; `user NAME` starts a block whose `topic` lines apply to that authenticated username
//! only; `pattern [ACCESS] FILTER` applies to every client wherever it appears, with `%c` replaced
//! by the client id and `%u` by the username. ACCESS is `read`, `write`, `readwrite` (the
//! default) or `deny`; the filter is the rest of the line and may use `+` and `#`.
//!
//! Semantics, for one client: its applicable rules are its own user block (for an anonymous
//! client, the `topic` lines before the first `user`), and the patterns. A `deny` rule that matches wins; otherwise access is granted when any
//! applicable rule grants it; nothing matching means no access (default deny once a file is
//! configured; without `acl_file` everything is allowed and none of this code runs).
//!
//! - PUBLISH (and the will, checked at CONNECT): write access to the concrete topic.
//! - SUBSCRIBE to filter F (the filter inside `$share/{group}/`): refused when a `deny` rule's
//!   filter covers F (every topic F can match is denied), granted when a read rule's filter
//!   covers F. Because a granted wildcard may still overlap denied topics, every delivered
//!   message (live, queued, retained, resent) is checked again against read access for its
//!   concrete topic just before it is written to the receiver.
//! - A pattern whose substituted client id or username contains `+`, `#` or `/` would widen or
//!   shift the filter: such a pattern grants nothing to that client (a `deny` pattern still
//!   applies, its wildcards only widening the denial). Patterns using `%u` do not apply to
//!   anonymous clients.

use std::sync::Arc;

use bytestring::ByteString;
use parking_lot::RwLock;

use crate::topic;

/// Who a connection acts as: what the rules are evaluated against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Principal {
    pub client_id: ByteString,
    /// The authenticated username; `None` for anonymous clients.
    pub username: Option<ByteString>,
}

/// What a rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Access {
    fn reads(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }

    fn writes(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    access: Access,
    filter: String,
}

/// A parsed rules file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Acl {
    /// `topic` lines before the first `user` line: anonymous clients' rules.
    anonymous: Vec<Rule>,
    users: std::collections::HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

/// A rules file line that could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {reason}")]
pub struct AclError {
    pub line: usize,
    pub reason: String,
}

impl Acl {
    pub fn parse(text: &str) -> Result<Acl, AclError> {
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fail = |reason: String| AclError {
                line: i + 1,
                reason,
            };
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(fail("`user` needs a username".to_owned()));
                    }
                    user = Some(rest.to_owned());
                }
                "topic" | "pattern" => {
                    let rule = parse_rule(rest).map_err(fail)?;
                    match (keyword, &user) {
                        ("pattern", _) => acl.patterns.push(rule),
                        (_, Some(name)) => acl.users.entry(name.clone()).or_default().push(rule),
                        (_, None) => acl.anonymous.push(rule),
                    }
                }
                other => {
                    return Err(fail(format!(
                        "unknown keyword `{other}` (expected user, topic or pattern)"
                    )))
                }
            }
        }
        Ok(acl)
    }

    /// The rules that apply to one client, with patterns substituted.
    fn rules_for(&self, who: &Principal) -> Vec<Rule> {
        let mut rules = match &who.username {
            None => self.anonymous.clone(),
            Some(u) => self.users.get(&u[..]).cloned().unwrap_or_default(),
        };
        for p in &self.patterns {
            let uses_user = p.filter.contains("%u");
            let username = who.username.as_deref();
            if uses_user && username.is_none() {
                continue;
            }
            let unsafe_value = |v: &str| v.contains(['+', '#', '/']);
            let shifts = (p.filter.contains("%c") && unsafe_value(&who.client_id))
                || (uses_user && username.is_some_and(unsafe_value));
            if shifts && p.access != Access::Deny {
                continue;
            }
            let filter = p
                .filter
                .replace("%c", &who.client_id)
                .replace("%u", username.unwrap_or(""));
            rules.push(Rule {
                access: p.access,
                filter,
            });
        }
        rules
    }
}

fn parse_rule(rest: &str) -> Result<Rule, String> {
    let (first, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let access = match first {
        "read" => Some(Access::Read),
        "write" => Some(Access::Write),
        "readwrite" => Some(Access::ReadWrite),
        "deny" => Some(Access::Deny),
        _ => None,
    };
    let (access, filter) = match access {
        Some(a) => (a, tail.trim()),
        None if tail.is_empty() => (Access::ReadWrite, first),
        None => {
            return Err(format!(
                "unknown access `{first}` (expected read, write, readwrite or deny)"
            ))
        }
    };
    if filter.is_empty() {
        return Err("missing topic filter".to_owned());
    }
    topic::validate_topic_filter(filter, usize::MAX)
        .map_err(|e| format!("invalid topic filter `{filter}`: {e}"))?;
    Ok(Rule {
        access,
        filter: filter.to_owned(),
    })
}

/// The rules in force, swapped whole on reload so a check never sees half a file.
pub struct AclHandle(RwLock<Arc<Acl>>);

impl AclHandle {
    pub fn new(acl: Acl) -> AclHandle {
        AclHandle(RwLock::new(Arc::new(acl)))
    }

    pub fn current(&self) -> Arc<Acl> {
        self.0.read().clone()
    }

    pub fn replace(&self, acl: Acl) {
        *self.0.write() = Arc::new(acl);
    }
}

/// One connection's view of the rules: its applicable rules, recomputed only when a reload
/// swapped the file, so a per-message check is a pointer comparison plus a scan of a few rules.
pub(crate) struct ClientAcl {
    handle: Arc<AclHandle>,
    who: Principal,
    seen: Arc<Acl>,
    rules: Vec<Rule>,
}

impl ClientAcl {
    pub(crate) fn new(handle: Arc<AclHandle>, who: Principal) -> ClientAcl {
        let seen = handle.current();
        let rules = seen.rules_for(&who);
        ClientAcl {
            handle,
            who,
            seen,
            rules,
        }
    }

    fn refresh(&mut self) {
        let now = self.handle.current();
        if !Arc::ptr_eq(&now, &self.seen) {
            self.rules = now.rules_for(&self.who);
            self.seen = now;
        }
    }

    /// Write access to a concrete topic (PUBLISH, will).
    pub(crate) fn may_write(&mut self, topic: &str) -> bool {
        self.refresh();
        decide(
            &self.rules,
            |r| topic::matches(&r.filter, topic),
            Access::writes,
        )
    }

    /// Read access to a concrete topic (each delivery).
    pub(crate) fn may_read(&mut self, topic: &str) -> bool {
        self.refresh();
        decide(
            &self.rules,
            |r| topic::matches(&r.filter, topic),
            Access::reads,
        )
    }

    /// Whether a subscription to `filter` (without any `$share/{group}/` prefix) is granted.
    pub(crate) fn may_subscribe(&mut self, filter: &str) -> bool {
        self.refresh();
        decide(&self.rules, |r| covers(&r.filter, filter), Access::reads)
    }
}

/// Deny wins; otherwise any applicable grant; otherwise no.
fn decide(rules: &[Rule], applies: impl Fn(&Rule) -> bool, grants: fn(Access) -> bool) -> bool {
    let mut granted = false;
    for r in rules.iter().filter(|r| applies(r)) {
        if r.access == Access::Deny {
            return false;
        }
        granted |= grants(r.access);
    }
    granted
}

/// Whether every topic name matched by filter `inner` is also matched by filter `outer`.
pub(crate) fn covers(outer: &str, inner: &str) -> bool {
    let mut o = outer.split('/');
    let mut n = inner.split('/');
    // Wildcards in the first level never match `$` topics, so they cannot cover a `$` literal.
    if inner.starts_with('$') && matches!(o.clone().next(), Some("+" | "#")) {
        return false;
    }
    // Whether the levels consumed so far spell the empty string: `P/#` also matches its parent
    // topic `P`, except when `P` is empty, which is no topic; there `+/#` matches what `#` does.
    let mut prefix_empty = true;
    let mut depth = 0;
    loop {
        let level = (o.next(), n.next());
        if prefix_empty && level == (Some("+"), Some("#")) {
            return o.next() == Some("#");
        }
        prefix_empty = depth == 0 && level.1 == Some("");
        depth += 1;
        match level {
            (Some("#"), _) => return true,
            (None, None) => return true,
            // `inner` matches `x/#` topics of any depth below, `+` any one level: only the same
            // wildcard covers them.
            (Some(a), Some(b @ ("#" | "+"))) => {
                if a != b {
                    return false;
                }
            }
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::strategies::{topic_filter, topic_name};
    use proptest::prelude::*;

    fn who(client: &str, user: Option<&str>) -> Principal {
        Principal {
            client_id: client.into(),
            username: user.map(Into::into),
        }
    }

    fn client(text: &str, p: Principal) -> ClientAcl {
        ClientAcl::new(Arc::new(AclHandle::new(Acl::parse(text).unwrap())), p)
    }

    #[test]
    fn parses_mosquitto_syntax() {
        let acl = Acl::parse(
            "# comment\n\ntopic read public/#\n  topic   pub/x  \nuser alice\ntopic write a/b c\n\
             pattern deny secret/%u\nuser bob\ntopic readwrite b/#\n",
        )
        .unwrap();
        assert_eq!(acl.anonymous.len(), 2);
        assert_eq!(acl.anonymous[1].access, Access::ReadWrite);
        assert_eq!(acl.anonymous[1].filter, "pub/x");
        assert_eq!(acl.users["alice"][0].filter, "a/b c");
        assert_eq!(acl.patterns[0].access, Access::Deny);
        assert_eq!(acl.users["bob"].len(), 1);
    }

    #[test]
    fn bad_lines_are_named() {
        let err = |t: &str| Acl::parse(t).unwrap_err().to_string();
        assert_eq!(
            err("topic a\nfoo bar"),
            "line 2: unknown keyword `foo` (expected user, topic or pattern)"
        );
        assert_eq!(
            err("topic sometimes a/b"),
            "line 1: unknown access `sometimes` (expected read, write, readwrite or deny)"
        );
        assert_eq!(err("\n\ntopic read"), "line 3: missing topic filter");
        assert!(err("topic a/#/b").starts_with("line 1: invalid topic filter `a/#/b`"));
        assert_eq!(err("user"), "line 1: `user` needs a username");
    }

    #[test]
    fn deny_wins_and_default_is_deny() {
        let mut c = client(
            "topic readwrite #\ntopic deny secret/#\ntopic read ro/x",
            who("c", None),
        );
        assert!(c.may_read("a/b") && c.may_write("a/b"));
        assert!(!c.may_read("secret/x") && !c.may_write("secret"));
        assert!(c.may_subscribe("#"), "overlapping wildcard is granted");
        assert!(!c.may_subscribe("secret/#") && !c.may_subscribe("secret/a"));
        assert!(!c.may_read("$SYS/x"), "# does not reach $ topics");
        let mut c = client("topic read ro/x", who("c", None));
        assert!(c.may_read("ro/x") && !c.may_write("ro/x") && !c.may_read("other"));
        assert!(!c.may_subscribe("ro/+"));
    }

    #[test]
    fn user_blocks_apply_to_their_user_only() {
        let text = "topic read all\nuser alice\ntopic a/#\nuser bob\ntopic b/#";
        let mut alice = client(text, who("x", Some("alice")));
        let mut anon = client(text, who("x", None));
        assert!(alice.may_write("a/1") && !alice.may_write("b/1"));
        // As in Mosquitto, the lines before the first `user` are the anonymous clients' rules.
        assert!(!alice.may_read("all"));
        assert!(!anon.may_write("a/1") && anon.may_read("all"));
    }

    #[test]
    fn patterns_substitute_and_refuse_unsafe_values() {
        let text = "pattern devices/%c/#\npattern read users/%u/in\npattern deny devices/%c/x";
        let mut c = client(text, who("d1", Some("u1")));
        assert!(c.may_write("devices/d1/t") && !c.may_write("devices/d2/t"));
        assert!(c.may_read("users/u1/in") && !c.may_write("users/u1/in"));
        assert!(!c.may_read("devices/d1/x"));
        let mut anon = client(text, who("d1", None));
        assert!(!anon.may_read("users//in"));
        let mut wild = client(text, who("+", Some("#")));
        assert!(!wild.may_write("devices/d1/t") && !wild.may_read("users/a/in"));
        let mut slash = client(text, who("a/b", None));
        assert!(!slash.may_write("devices/a/b/c"));
    }

    #[test]
    fn reload_is_seen_by_existing_clients() {
        let handle = Arc::new(AclHandle::new(Acl::parse("topic a").unwrap()));
        let mut c = ClientAcl::new(handle.clone(), who("c", None));
        assert!(c.may_write("a") && !c.may_write("b"));
        handle.replace(Acl::parse("topic b").unwrap());
        assert!(!c.may_write("a") && c.may_write("b"));
    }

    #[test]
    fn covers_examples() {
        assert!(covers("#", "a/+/b"));
        assert!(covers("a/#", "a"));
        assert!(covers("a/+", "a/b"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(!covers("#", "$SYS/#"));
        assert!(covers("$SYS/#", "$SYS/a"));
        assert!(!covers("a/+/c", "a/+"));
    }

    /// Every topic over the levels used by the generated filters, plus one no filter names.
    fn universe() -> Vec<String> {
        let levels = ["a", "b", "$a", "", "z"];
        let mut all = Vec::new();
        let mut current: Vec<String> = levels.iter().map(|l| l.to_string()).collect();
        for _ in 0..5 {
            all.extend(current.iter().filter(|t| !t.is_empty()).cloned());
            current = current
                .iter()
                .flat_map(|t| levels.iter().map(move |l| format!("{t}/{l}")))
                .collect();
        }
        all
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// `covers` agrees with enumerating topic names: sound (no topic of the inner filter
        /// escapes the outer) and complete (it never refuses a filter that is in fact covered).
        #[test]
        fn covers_agrees_with_enumeration(outer in topic_filter(), inner in topic_filter()) {
            thread_local!(static ALL: Vec<String> = universe());
            let enumerated = ALL.with(|all| {
                all.iter().all(|t| !topic::matches(&inner, t) || topic::matches(&outer, t))
            });
            prop_assert_eq!(covers(&outer, &inner), enumerated);
        }

        #[test]
        fn covers_a_topic_exactly_when_matching_it(outer in topic_filter(), t in topic_name()) {
            prop_assert_eq!(covers(&outer, &t), topic::matches(&outer, &t));
        }
    }
}
