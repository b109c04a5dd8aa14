//! Tests of `[[ingest]]`: a rule with its defaults, every key, the example the shipped file
//! documents, and refusals naming the key and the value.

use std::time::Duration;

use super::error;
use crate::config::{Config, IngestAck, IngestDiscard, IngestRetention, IngestRule, IngestStorage};

const NATS: &str = "[nats]\nservers = [\"nats://127.0.0.1:4222\"]\n";

fn rules(text: &str) -> Vec<IngestRule> {
    Config::from_toml(&format!("{NATS}{text}")).unwrap().ingest
}

fn refused(text: &str) -> String {
    error(&format!("{NATS}{text}"))
}

#[test]
fn a_rule_takes_its_defaults_and_every_key() {
    let r =
        rules("[[ingest]]\nfilter = \"d/+/t\"\nstream = \"S\"\nsubject = \"t.{client_id}.{2}\"");
    assert_eq!(r, [IngestRule::new("d/+/t", "S", "t.{client_id}.{2}")]);
    let d = &r[0];
    assert_eq!(d.ack, IngestAck::Stream);
    assert_eq!(d.ack_timeout, Duration::from_secs(30));
    assert_eq!((d.max_inflight, d.max_inflight_bytes), (4096, 64 << 20));
    assert_eq!(d.duplicate_window, Duration::from_secs(120));
    let all = rules(
        "[[ingest]]\nfilter = \"a/#\"\nstream = \"A-1\"\nsubject = \"x.{topic}\"\nack = \"local\"\n\
         ack_timeout = 2.5\nmax_inflight = 10\nmax_inflight_bytes = 4096\nsubjects = [\"x.>\"]\n\
         retention = \"workqueue\"\nmax_age = 60\nmax_bytes = 1000\nreplicas = 3\n\
         storage = \"memory\"\ndiscard = \"new\"\nduplicate_window = 10\n\
         [[ingest]]\nfilter = \"#\"\nstream = \"B\"\nsubject = \"all\"",
    );
    let a = &all[0];
    assert_eq!(a.ack, IngestAck::Local);
    assert_eq!(a.ack_timeout, Duration::from_millis(2500));
    assert_eq!((a.max_inflight, a.max_inflight_bytes), (10, 4096));
    assert_eq!(a.subjects, ["x.>"]);
    assert_eq!(a.retention, IngestRetention::WorkQueue);
    assert_eq!((a.max_age, a.max_bytes), (Duration::from_secs(60), 1000));
    assert_eq!(a.replicas, 3);
    assert_eq!(a.storage, IngestStorage::Memory);
    assert_eq!(a.discard, IngestDiscard::New);
    assert_eq!(a.duplicate_window, Duration::from_secs(10));
    assert_eq!(all[1].stream, "B");
}

#[test]
fn the_documented_example_parses() {
    let text = include_str!("../../../../config/gateway.toml");
    let example: String = text
        .lines()
        .skip_while(|l| *l != "# [[ingest]]")
        .map(|l| l.trim_start_matches("# "))
        .collect::<Vec<_>>()
        .join("\n");
    let r = rules(&example);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].subject, "telemetry.{client_id}.{4}");
}

#[test]
fn bad_rules_are_named_with_their_value() {
    let rule = |extra: &str| {
        format!("[[ingest]]\nfilter = \"d/+\"\nstream = \"S\"\nsubject = \"t.{{1}}\"\n{extra}")
    };
    for (text, message) in [
        (
            "[[ingest]]\nfilter = \"$share/g/d\"\nstream = \"S\"\nsubject = \"t\"".to_owned(),
            "config: invalid value for `ingest[0].filter`: \"$share/g/d\" (a shared \
             subscription filter cannot be an ingestion rule)",
        ),
        (
            "[[ingest]]\nfilter = \"d/#/x\"\nstream = \"S\"\nsubject = \"t\"".to_owned(),
            "config: invalid value for `ingest[0].filter`: \"d/#/x\" (expected an MQTT topic \
             filter such as \"devices/+/telemetry/#\": wildcard must occupy a whole level and '#' \
             must be the last level)",
        ),
        (
            "[[ingest]]\nfilter = \"d\"\nstream = \"a.b\"\nsubject = \"t\"".to_owned(),
            "config: invalid value for `ingest[0].stream`: \"a.b\" (expected 1..=128 ASCII \
             letters, digits, '-' or '_')",
        ),
        (
            "[[ingest]]\nfilter = \"d\"\nstream = \"S\"\nsubject = \"t.*\"".to_owned(),
            "config: invalid value for `ingest[0].subject`: \"t.*\" (token \"*\": a literal \
             token holds only ASCII letters, digits, '-' or '_'; a placeholder ({client_id}, \
             {N}, {topic}) is a whole token)",
        ),
        (
            "[[ingest]]\nfilter = \"d/+\"\nstream = \"S\"\nsubject = \"t.{3}\"".to_owned(),
            "config: invalid value for `ingest[0].subject`: \"t.{3}\" ({3}: the filter \"d/+\" \
             has only 2 topic levels)",
        ),
        (
            "[[ingest]]\nstream = \"S\"\nsubject = \"t\"".to_owned(),
            "config: invalid value for `ingest[0].filter`: (missing) (every rule needs an MQTT \
             topic filter)",
        ),
        (
            rule("ack = \"never\""),
            "config: invalid value for `ingest[0].ack`: \"never\" (expected \"stream\" or \
             \"local\")",
        ),
        (
            rule("replicas = 6"),
            "config: invalid value for `ingest[0].replicas`: 6 (must be 1..=5)",
        ),
        (
            rule("subjects = [\"a.>.b\"]"),
            "config: invalid value for `ingest[0].subjects`: \"a.>.b\" (expected a list of NATS \
             subjects (wildcards * and > allowed))",
        ),
        (
            rule("storage = \"disk\""),
            "config: invalid value for `ingest[0].storage`: \"disk\" (expected \"file\" or \
             \"memory\")",
        ),
        (
            rule("colour = 1"),
            "config: unknown key `ingest[0].colour` (value: 1)",
        ),
    ] {
        assert_eq!(refused(&text), message, "{text}");
    }
    assert_eq!(
        error("[[ingest]]\nfilter = \"d\"\nstream = \"S\"\nsubject = \"t\""),
        "config: invalid value for `nats.servers`: [] ([[ingest]] rules need at least one NATS \
         server)"
    );
}
