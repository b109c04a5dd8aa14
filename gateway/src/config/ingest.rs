//! The `[[ingest]]` rules: which published messages go into which JetStream stream, under which
//! subject, and when the publisher is acknowledged. Parsed here key by key like `[[listeners]]`;
//! errors name the key as `ingest[N].KEY`, N counted from 0.

use std::time::Duration;

use toml::{Table, Value};

use super::error::{invalid, render, ConfigError};
use super::validate::{check_stream_name, Bounds};
use super::values::{integer, seconds, string};
use crate::ingest::Template;
use crate::topic;

/// More in flight than this per rule only grows memory: a JetStream server acknowledges in
/// order, so the window is full long before.
const MAX_INFLIGHT: Bounds = Bounds::new(1, 1_000_000);
/// A message larger than the budget is still written, alone (see `ingest::writer`), so any
/// budget works; below 1 KiB nothing is pipelined.
const MAX_INFLIGHT_BYTES: Bounds = Bounds::new(1024, i64::MAX as u64);
/// JetStream's own limit (R5 at most; replicas beyond the cluster size are refused by it).
const REPLICAS: Bounds = Bounds::new(1, 5);
const UNLIMITED: Bounds = Bounds::new(0, i64::MAX as u64);

/// When the publisher of a QoS 1/2 message matched by the rule is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestAck {
    /// PUBACK / PUBREC only once JetStream acknowledged the write (stored by the server).
    Stream,
    /// At once, as without the rule: the weaker mode, a message can be lost after its PUBACK.
    Local,
}

/// The stream's retention policy (JetStream's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestRetention {
    Limits,
    Interest,
    WorkQueue,
}

/// Where the stream keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestStorage {
    File,
    Memory,
}

/// What a full stream does with a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestDiscard {
    /// Drops its oldest messages.
    Old,
    /// Refuses the new one: the publisher is told (v5 PUBACK 0x97) or disconnected (3.1.1).
    New,
}

/// One `[[ingest]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestRule {
    /// MQTT topic filter (`+`, `#`; no `$share`).
    pub filter: String,
    /// JetStream stream name.
    pub stream: String,
    /// NATS subject template (`ingest::Template`).
    pub subject: String,
    pub ack: IngestAck,
    /// How long a write may wait for JetStream (retried meanwhile) before the publisher is
    /// refused.
    pub ack_timeout: Duration,
    /// Writes awaiting JetStream's ack at most; beyond, QoS 1/2 wait and QoS 0 are dropped.
    pub max_inflight: usize,
    pub max_inflight_bytes: u64,
    /// Stream settings, used only when the gateway creates the stream. `subjects` empty: the
    /// template's subjects with each placeholder as a wildcard.
    pub subjects: Vec<String>,
    pub retention: IngestRetention,
    /// 0: unlimited.
    pub max_age: Duration,
    /// 0: unlimited.
    pub max_bytes: u64,
    pub replicas: usize,
    pub storage: IngestStorage,
    pub discard: IngestDiscard,
    pub duplicate_window: Duration,
}

impl IngestRule {
    /// A rule with every optional key at its documented default.
    pub fn new(filter: &str, stream: &str, subject: &str) -> IngestRule {
        IngestRule {
            filter: filter.to_owned(),
            stream: stream.to_owned(),
            subject: subject.to_owned(),
            ack: IngestAck::Stream,
            ack_timeout: Duration::from_secs(30),
            max_inflight: 4096,
            max_inflight_bytes: 64 * 1024 * 1024,
            subjects: Vec::new(),
            retention: IngestRetention::Limits,
            max_age: Duration::ZERO,
            max_bytes: 0,
            replicas: 1,
            storage: IngestStorage::File,
            discard: IngestDiscard::Old,
            duplicate_window: Duration::from_secs(120),
        }
    }
}

/// Parses the `[[ingest]]` array.
pub(super) fn rules(body: &Value, max_levels: usize) -> Result<Vec<IngestRule>, ConfigError> {
    let Value::Array(items) = body else {
        return Err(invalid(
            "ingest",
            body,
            "expected [[ingest]] tables (an array of tables)",
        ));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Table(keys) = item else {
            return Err(invalid(&format!("ingest[{i}]"), item, "expected a table"));
        };
        out.push(rule(i, keys, max_levels)?);
    }
    Ok(out)
}

fn rule(i: usize, keys: &Table, max_levels: usize) -> Result<IngestRule, ConfigError> {
    let key = |name: &str| format!("ingest[{i}].{name}");
    let missing = |name: &str, why: &str| ConfigError::InvalidValue {
        key: key(name),
        value: "(missing)".to_owned(),
        reason: why.to_owned(),
    };
    let mut r = IngestRule::new("", "", "");
    for (name, value) in keys {
        let k = key(name);
        let k = k.as_str();
        let choice = |hint: &str| string(k, value, hint);
        match name.as_str() {
            "filter" => {
                let hint = "expected an MQTT topic filter such as \"devices/+/telemetry/#\"";
                let filter = string(k, value, hint)?;
                if filter.starts_with("$share/") {
                    return Err(invalid(
                        k,
                        value,
                        "a shared subscription filter cannot be an ingestion rule",
                    ));
                }
                // `$SYS/...` is the broker's own status, not a device's message: it is never
                // ingested, so a rule naming it would stay silently empty.
                if filter.starts_with('$') {
                    return Err(invalid(
                        k,
                        value,
                        "topics starting with $ are the broker's, not devices' messages, and are not ingested",
                    ));
                }
                topic::validate_topic_filter(filter, max_levels)
                    .map_err(|e| invalid(k, value, format!("{hint}: {e}")))?;
                r.filter = filter.to_owned();
            }
            "stream" => {
                let stream = string(k, value, "expected a JetStream stream name")?;
                check_stream_name(k, stream)?;
                r.stream = stream.to_owned();
            }
            "subject" => {
                let subject = string(k, value, "expected a NATS subject template")?;
                // Parsed again by `ingest` at start; here only for the error message.
                Template::parse(subject).map_err(|e| invalid(k, value, e.to_string()))?;
                r.subject = subject.to_owned();
            }
            "ack" => {
                let hint = "expected \"stream\" or \"local\"";
                r.ack = match choice(hint)? {
                    "stream" => IngestAck::Stream,
                    "local" => IngestAck::Local,
                    _ => return Err(invalid(k, value, hint)),
                };
            }
            "ack_timeout" => r.ack_timeout = seconds(k, value)?,
            "max_inflight" => r.max_inflight = integer(k, value, MAX_INFLIGHT)?,
            "max_inflight_bytes" => {
                r.max_inflight_bytes = integer(k, value, MAX_INFLIGHT_BYTES)?;
            }
            "subjects" => {
                let hint = "expected a list of NATS subjects (wildcards * and > allowed)";
                let Value::Array(items) = value else {
                    return Err(invalid(k, value, hint));
                };
                let mut subjects = Vec::with_capacity(items.len());
                for item in items {
                    let s = string(k, item, hint)?;
                    if !valid_stream_subject(s) {
                        return Err(invalid(k, item, hint));
                    }
                    subjects.push(s.to_owned());
                }
                r.subjects = subjects;
            }
            "retention" => {
                let hint = "expected \"limits\", \"interest\" or \"workqueue\"";
                r.retention = match choice(hint)? {
                    "limits" => IngestRetention::Limits,
                    "interest" => IngestRetention::Interest,
                    "workqueue" => IngestRetention::WorkQueue,
                    _ => return Err(invalid(k, value, hint)),
                };
            }
            "max_age" => {
                r.max_age = match value {
                    Value::Integer(0) => Duration::ZERO,
                    _ => seconds(k, value)?,
                };
            }
            "max_bytes" => r.max_bytes = integer(k, value, UNLIMITED)?,
            "replicas" => r.replicas = integer(k, value, REPLICAS)?,
            "storage" => {
                let hint = "expected \"file\" or \"memory\"";
                r.storage = match choice(hint)? {
                    "file" => IngestStorage::File,
                    "memory" => IngestStorage::Memory,
                    _ => return Err(invalid(k, value, hint)),
                };
            }
            "discard" => {
                let hint = "expected \"old\" or \"new\"";
                r.discard = match choice(hint)? {
                    "old" => IngestDiscard::Old,
                    "new" => IngestDiscard::New,
                    _ => return Err(invalid(k, value, hint)),
                };
            }
            "duplicate_window" => r.duplicate_window = seconds(k, value)?,
            _ => {
                return Err(ConfigError::UnknownKey {
                    key: k.to_owned(),
                    value: render(value),
                })
            }
        }
    }
    if r.filter.is_empty() {
        return Err(missing("filter", "every rule needs an MQTT topic filter"));
    }
    if r.stream.is_empty() {
        return Err(missing(
            "stream",
            "every rule needs a JetStream stream name",
        ));
    }
    if r.subject.is_empty() {
        return Err(missing(
            "subject",
            "every rule needs a NATS subject template such as \"telemetry.{client_id}.{2}\"",
        ));
    }
    // A level the filter can never have would make every subject of the rule fail.
    if let Ok(template) = Template::parse(&r.subject) {
        let levels = r.filter.split('/').count();
        let open = r.filter.ends_with('#');
        if let Some(level) = template.highest_level() {
            if !open && level > levels {
                return Err(ConfigError::InvalidValue {
                    key: key("subject"),
                    value: render(&Value::String(r.subject.clone())),
                    reason: format!(
                        "{{{level}}}: the filter {:?} has only {levels} topic levels",
                        r.filter
                    ),
                });
            }
        }
    }
    Ok(r)
}

/// A stream subject: dot-separated non-empty tokens without whitespace; `*` and `>` only as
/// whole tokens, `>` only last.
fn valid_stream_subject(s: &str) -> bool {
    let tokens: Vec<&str> = s.split('.').collect();
    let last = tokens.len() - 1;
    tokens.iter().enumerate().all(|(i, t)| {
        !t.is_empty()
            && !t.contains(|c: char| c.is_whitespace() || c.is_control())
            && (*t == "*" || (*t == ">" && i == last) || !t.contains(['*', '>']))
    })
}
