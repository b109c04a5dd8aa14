//! The broker's metric handles, registered once through the `metrics` facade, and their export.
//!
//! Hot paths hold these handles and increment them directly: no name formatting and no registry
//! look-up per message, and counts are added once per read or write batch where the data path
//! works in batches. Every labelled series is registered up front (all reasons, kinds, packet
//! types and QoS levels), so each one exists at 0 from start-up and a dashboard query over it
//! never comes back empty on a quiet broker. Label values are bounded sets, never a client id,
//! topic or address: per-device detail belongs to the admin API.
//!
//! Where the values go is decided when the handles are registered: `Metrics::new` registers with
//! whatever recorder is current (none: every handle is a no-op), `Metrics::prometheus` with a
//! Prometheus recorder of the broker's own, which `Exporter` renders for `GET /metrics`. A
//! recorder per broker rather than a process-global one keeps brokers in one process (tests)
//! apart. Gauges that describe state rather than events (sessions, subscriptions, queues) are
//! computed when scraped, which costs a walk over the sessions per scrape instead of an atomic
//! update on every message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::codec::Packet;
use crate::config::ListenerKind;
use crate::process;

/// Upper bounds of the delivery latency histogram, in seconds: loopback deliveries take tens of
/// microseconds, a congested subscriber seconds, so the buckets span 25 µs to 10 s.
pub const DELIVERY_BUCKETS: [f64; 18] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const DELIVERY_LATENCY: &str = "gateway_delivery_latency_seconds";

/// Upper bounds of the store commit histogram, in seconds: an fsync takes a fraction of a
/// millisecond on a fast disk, tens of milliseconds on a slow or busy one.
pub const COMMIT_BUCKETS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

const STORE_COMMIT: &str = "gateway_store_commit_seconds";

/// Upper bounds of the ingestion ack histogram, in seconds: a JetStream ack on loopback takes
/// a few hundred microseconds, one through an outage up to a rule's `ack_timeout`.
pub const INGEST_ACK_BUCKETS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
    10.0, 30.0,
];

const INGEST_ACK: &str = "gateway_ingest_ack_seconds";

/// A request to another node and its answer over NATS: a fraction of a millisecond on
/// loopback, milliseconds across machines; the same buckets as a store commit.
const CLUSTER_ROUND_TRIP: &str = "gateway_cluster_round_trip_seconds";
const CLUSTER_SESSION_READ: &str = "gateway_cluster_session_read_seconds";

/// MQTT control packet type names, indexed by the type nibble of the fixed header.
const PACKET_TYPES: [&str; 16] = [
    "reserved",
    "connect",
    "connack",
    "publish",
    "puback",
    "pubrec",
    "pubrel",
    "pubcomp",
    "subscribe",
    "suback",
    "unsubscribe",
    "unsuback",
    "pingreq",
    "pingresp",
    "disconnect",
    "auth",
];
/// Type nibbles a client may send, and the ones the broker sends; the others have no series.
const RECEIVED_TYPES: [usize; 11] = [1, 3, 4, 5, 6, 7, 8, 10, 12, 14, 15];
const SENT_TYPES: [usize; 10] = [2, 3, 4, 5, 6, 7, 9, 11, 13, 14];
const PUBLISH: usize = 3;

/// Labels of `gateway_connections_rejected_total`; callers pass one of these, anything else is
/// counted as "other".
const REJECT_REASONS: [&str; 15] = [
    "fd_limit",
    "max_connections",
    "connect_rate",
    "handshakes",
    "memory",
    "bad_connect",
    "client_id_invalid",
    "bad_auth_method",
    "bad_credentials",
    "not_authorized",
    "will_topic_invalid",
    "will_payload_invalid",
    "connack_too_large",
    "client_gone",
    "other",
];

/// Labels of `gateway_malformed_packets_total`: the decoder's error kinds plus the checks the
/// client task makes after decoding, and WebSocket frames refused (`ws::frame`); anything else
/// is counted as "other".
const MALFORMED_KINDS: [&str; 8] = [
    "malformed",
    "protocol",
    "too_large",
    "unsupported_protocol",
    "topic_filter",
    "payload_format",
    "websocket",
    "other",
];

/// Why a message that reached the broker was not delivered to one receiver.
#[derive(Debug, Clone, Copy)]
pub enum DropReason {
    QueueFull,
    Expired,
    TooLarge,
    NoSubscribers,
    OfflineQos0,
    RetainedFull,
    /// A QoS 0 message for a connected session whose queue is full: its client reads too slowly.
    SlowConsumerQos0,
    /// The publisher may not write the topic, or the receiver may not read it (ACL).
    NotAuthorized,
    /// A QoS 0 copy shed while memory is above `limits.memory_high_water`.
    MemoryShed,
    /// A QoS 1/2 copy for a persistent session while the store cannot write (disk full, I/O
    /// error): not taken, and its publisher not acknowledged.
    StoreUnavailable,
}

const DROP_REASONS: [(DropReason, &str); 10] = [
    (DropReason::QueueFull, "queue_full"),
    (DropReason::Expired, "expired"),
    (DropReason::TooLarge, "too_large"),
    (DropReason::NoSubscribers, "no_subscribers"),
    (DropReason::OfflineQos0, "offline_qos0"),
    (DropReason::RetainedFull, "retained_full"),
    (DropReason::SlowConsumerQos0, "slow_consumer_qos0"),
    (DropReason::NotAuthorized, "not_authorized"),
    (DropReason::MemoryShed, "memory_shed"),
    (DropReason::StoreUnavailable, "store_unavailable"),
];

/// Why a message was not sent to, or not taken from, the cluster.
#[derive(Debug, Clone, Copy)]
pub enum ClusterDrop {
    /// A message from another node that does not decode (subject or envelope): dropped.
    Malformed,
    /// Other nodes wanted it while this node's NATS connection was down.
    LinkDown,
    /// Too large for NATS (its subject beyond the control line, its envelope beyond the
    /// server's max_payload).
    TooLarge,
    /// The queue towards NATS was full (NATS slower than the publishers).
    Overflow,
    /// A message from NATS the client dropped because this node's subscription had 8,192
    /// waiting (the node too busy to take them in).
    SlowConsumer,
}

const CLUSTER_DROPS: [(ClusterDrop, &str); 5] = [
    (ClusterDrop::Malformed, "malformed"),
    (ClusterDrop::LinkDown, "link_down"),
    (ClusterDrop::TooLarge, "too_large"),
    (ClusterDrop::Overflow, "overflow"),
    (ClusterDrop::SlowConsumer, "slow_consumer"),
];

/// Why a client's QoS 1/2 message sent to other nodes was refused to its publisher (v5 0x80,
/// a 3.1.1 client closed) rather than acknowledged.
#[derive(Debug, Clone, Copy)]
pub enum ClusterRefusal {
    /// Not written to NATS: the connection down, the queue towards it full, or not flushed
    /// within 5 s (`cluster::confirm`).
    Unconfirmed,
    /// A node holding persistent subscribers of it did not answer within 5 s, said its store
    /// failed, or had restarted since (`cluster::watermark`).
    Unanswered,
    /// A silent node's persistent sessions wanted it and are not adopted yet (`interest`).
    Owed,
}

const CLUSTER_REFUSALS: [(ClusterRefusal, &str); 3] = [
    (ClusterRefusal::Unconfirmed, "unconfirmed"),
    (ClusterRefusal::Unanswered, "unanswered"),
    (ClusterRefusal::Owed, "owed"),
];

/// How a CONNECT's claim of its client id across the cluster was settled.
#[derive(Debug, Clone, Copy)]
pub enum ClaimOutcome {
    /// Won at the first compare-and-swap of the owner record.
    Won,
    /// Won after losing a round to another node's write (re-read, written again).
    WonAfterRetry,
    /// Granted on this node alone: NATS down, the owner record unreachable within its bound,
    /// or a client id too long for a key.
    Local,
}

const CLAIM_OUTCOMES: [(ClaimOutcome, &str); 3] = [
    (ClaimOutcome::Won, "won"),
    (ClaimOutcome::WonAfterRetry, "won_after_retry"),
    (ClaimOutcome::Local, "local"),
];

/// A session taken over from another node, by what came of asking that node for it.
#[derive(Debug, Clone, Copy)]
pub enum Takeover {
    /// Its state came over and was installed here.
    State,
    /// The other node held no session for the client id.
    Empty,
    /// A newer claim (of a third connection) already superseded this one.
    Superseded,
    /// No answer within the bound (a node that is gone answers at once: no responders), or an
    /// answer that does not decode: the session is read from the state stream instead.
    Unreachable,
    /// Read back from the cluster's state stream (its node gone or restarted) and installed.
    Stored,
    /// The state stream's records could not be read (in time, or at all): the client starts
    /// afresh.
    Lost,
}

const TAKEOVERS: [(Takeover, &str); 6] = [
    (Takeover::State, "state"),
    (Takeover::Empty, "empty"),
    (Takeover::Superseded, "superseded"),
    (Takeover::Unreachable, "unreachable"),
    (Takeover::Stored, "stored"),
    (Takeover::Lost, "lost"),
];

/// What the cluster link records (`cluster::link`); all at 0 on a standalone node.
pub struct ClusterMetrics {
    /// Messages published to NATS for other nodes (one per NATS message, whatever the number
    /// of nodes NATS fans it out to).
    pub sent: Counter,
    /// Envelope bytes of those messages.
    pub sent_bytes: Counter,
    /// Messages received from other nodes and delivered into the local router.
    pub received: Counter,
    pub received_bytes: Counter,
    /// Extra copies NATS delivered for overlapping filters, discarded.
    pub duplicates: Counter,
    /// Retained sets and clears of this node's clients that JetStream acknowledged.
    pub retained_written: Counter,
    /// Retained sets and clears read from the retained stream into this node's copy.
    pub retained_applied: Counter,
    dropped: [Counter; CLUSTER_DROPS.len()],
    refused: [Counter; CLUSTER_REFUSALS.len()],
    claims: [Counter; CLAIM_OUTCOMES.len()],
    takeovers: [Counter; TAKEOVERS.len()],
    /// Sessions this node handed to another node that claimed their client id.
    pub handed_over: Counter,
    /// Sessions of a dead node this node took up (`cluster::adoption`).
    pub adopted: Counter,
    /// A ping to another node and its answer (`cluster::probe`).
    pub round_trip: Histogram,
    /// Reading a session back from the state stream at CONNECT (its node gone).
    pub read_seconds: Histogram,
}

impl ClusterMetrics {
    pub fn dropped(&self, reason: ClusterDrop) {
        self.dropped[reason as usize].increment(1);
    }

    pub fn dropped_many(&self, reason: ClusterDrop, messages: u64) {
        self.dropped[reason as usize].increment(messages);
    }

    pub fn refused(&self, reason: ClusterRefusal, messages: usize) {
        self.refused[reason as usize].increment(messages as u64);
    }

    pub fn claimed(&self, outcome: ClaimOutcome) {
        self.claims[outcome as usize].increment(1);
    }

    pub fn took_over(&self, result: Takeover) {
        self.takeovers[result as usize].increment(1);
    }
}

/// Why an ingestion write was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestFailure {
    /// No ack within the rule's `ack_timeout` (JetStream slow or unreachable).
    Timeout,
    /// No stream for the subject, or the connection broke (retried until `ack_timeout`).
    Unavailable,
    /// The stream is full and discards new messages.
    StreamFull,
    /// Larger than the NATS server's max_payload.
    TooLarge,
    /// A QoS 1/2 message while the rule's queue was far beyond its room (a client ignoring its
    /// window).
    Overflow,
    Other,
}

const INGEST_FAILURES: [(IngestFailure, &str); 6] = [
    (IngestFailure::Timeout, "timeout"),
    (IngestFailure::Unavailable, "unavailable"),
    (IngestFailure::StreamFull, "stream_full"),
    (IngestFailure::TooLarge, "too_large"),
    (IngestFailure::Overflow, "overflow"),
    (IngestFailure::Other, "other"),
];

/// What one `[[ingest]]` rule's writer records, labelled `rule` (its index) and `stream`.
pub struct IngestMetrics {
    /// Messages the rule matched and took.
    pub messages: Counter,
    /// Writes JetStream acknowledged (stored), and their payload bytes.
    pub acked: Counter,
    pub acked_bytes: Counter,
    /// Writes JetStream acknowledged as duplicates of one it had (a resend): not stored again.
    pub duplicates: Counter,
    /// QoS 0 messages dropped because the rule had no room.
    pub dropped: Counter,
    /// Writes queued or awaiting JetStream's ack.
    pub inflight: Gauge,
    /// From a write's submission to JetStream's ack.
    pub ack_seconds: Histogram,
    failed: [Counter; INGEST_FAILURES.len()],
}

impl IngestMetrics {
    pub fn failed(&self, kind: IngestFailure) {
        self.failed[kind as usize].increment(1);
    }
}

/// A per-client `[limits]` a client ran into, labelled with the key's name.
#[derive(Debug, Clone, Copy)]
pub enum LimitExceeded {
    PublishRate,
    PublishBytesRate,
    Subscriptions,
    SubscriptionBytes,
    TopicLength,
    /// A subscription's retained messages did not all fit in its session's retained backlog.
    RetainedBacklog,
    RetainedBacklogBytes,
}

const LIMITS_EXCEEDED: [(LimitExceeded, &str); 7] = [
    (LimitExceeded::PublishRate, "max_publish_rate"),
    (LimitExceeded::PublishBytesRate, "max_publish_bytes_rate"),
    (LimitExceeded::Subscriptions, "max_subscriptions_per_client"),
    (
        LimitExceeded::SubscriptionBytes,
        "max_subscription_bytes_per_client",
    ),
    (LimitExceeded::TopicLength, "max_topic_length"),
    (LimitExceeded::RetainedBacklog, "max_retained_backlog"),
    (
        LimitExceeded::RetainedBacklogBytes,
        "max_retained_backlog_bytes",
    ),
];

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Normal,
    KeepAlive,
    TakenOver,
    ProtocolError,
    SlowConsumer,
    Shutdown,
    Administrative,
    Network,
    Panic,
    ConnectTimeout,
    /// The client exceeded `max_publish_rate` or `max_publish_bytes_rate`.
    QuotaExceeded,
    /// A 3.1.1 client published what the store could not keep (disk full): it has no way to be
    /// told but the close, and will resend.
    StoreUnavailable,
    /// A packet begun was not whole within `mqtt.packet_timeout`.
    PacketTimeout,
    /// A client without keep-alive had no traffic either way for `mqtt.idle_timeout`.
    Idle,
    /// A 3.1.1 client published what an `[[ingest]]` rule with `ack = "stream"` could not
    /// store: it has no way to be told but the close, and will resend.
    IngestRefused,
    /// A 3.1.1 client published what the cluster link could not get to NATS: likewise.
    ClusterUnconfirmed,
}

const CLOSE_REASONS: [CloseReason; 16] = [
    CloseReason::Normal,
    CloseReason::KeepAlive,
    CloseReason::TakenOver,
    CloseReason::ProtocolError,
    CloseReason::SlowConsumer,
    CloseReason::Shutdown,
    CloseReason::Administrative,
    CloseReason::Network,
    CloseReason::Panic,
    CloseReason::ConnectTimeout,
    CloseReason::QuotaExceeded,
    CloseReason::StoreUnavailable,
    CloseReason::PacketTimeout,
    CloseReason::Idle,
    CloseReason::IngestRefused,
    CloseReason::ClusterUnconfirmed,
];

impl CloseReason {
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::KeepAlive => "keep_alive",
            CloseReason::TakenOver => "takeover",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Administrative => "administrative",
            CloseReason::Network => "network",
            CloseReason::Panic => "panic",
            CloseReason::ConnectTimeout => "connect_timeout",
            CloseReason::QuotaExceeded => "quota_exceeded",
            CloseReason::StoreUnavailable => "store_unavailable",
            CloseReason::PacketTimeout => "packet_timeout",
            CloseReason::Idle => "idle",
            CloseReason::IngestRefused => "ingest_refused",
            CloseReason::ClusterUnconfirmed => "cluster_unconfirmed",
        }
    }
}

/// Running totals the broker itself reads back ($SYS topics, the admin summary); metric handles
/// are write-only. Updated once per batch, next to the matching counters.
#[derive(Debug, Default)]
pub struct Totals {
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
}

/// Values of the PUBLISH messages sent in one write batch, gathered by the client task and
/// recorded at once.
#[derive(Debug, Default)]
pub struct SentBatch {
    delivered: [u64; 3],
    /// When the oldest live message of the batch was read from its publisher's socket.
    oldest_read: Option<Instant>,
}

impl SentBatch {
    /// One PUBLISH at `qos` (0..=2). `read_at` is given for live messages only: a retained copy
    /// sent on subscribe or a redelivery after reconnect has waited for reasons that are not
    /// delivery latency.
    pub fn add(&mut self, qos: usize, read_at: Option<Instant>) {
        if let Some(count) = self.delivered.get_mut(qos) {
            *count += 1;
        }
        if let Some(t) = read_at {
            self.oldest_read = Some(self.oldest_read.map_or(t, |o| o.min(t)));
        }
    }
}

/// `listener` label values of `gateway_connections_accepted_total`, indexed by `ListenerKind`.
const LISTENER_KINDS: [ListenerKind; 4] = [
    ListenerKind::Tcp,
    ListenerKind::Tls,
    ListenerKind::Ws,
    ListenerKind::Wss,
];

pub struct Metrics {
    connections_accepted: [Counter; LISTENER_KINDS.len()],
    /// TLS handshakes (tls and wss listeners) that failed or timed out.
    pub tls_handshake_failures: Counter,
    /// TLS records refused after the handshake (each ends its connection with an alert).
    pub tls_record_failures: Counter,
    pub connections_current: Gauge,
    pub accept_errors: Counter,
    pub task_panics: Counter,
    pub totals: Totals,
    messages_received: [Counter; 3],
    messages_delivered: [Counter; 3],
    bytes_received: Counter,
    bytes_sent: Counter,
    delivery_seconds: Histogram,
    auth_failures: Counter,
    dropped: [Counter; DROP_REASONS.len()],
    closed: [Counter; CLOSE_REASONS.len()],
    rejected: [Counter; REJECT_REASONS.len()],
    limits_exceeded: [Counter; LIMITS_EXCEEDED.len()],
    malformed: [Counter; MALFORMED_KINDS.len()],
    packets_received: [Counter; 16],
    packets_sent: [Counter; 16],
    pub store: StoreMetrics,
    pub cluster: ClusterMetrics,
    /// The broker's own recorder, for handles whose labels are known only later
    /// (`ingest_rule`); `None` without one.
    recorder: Option<PrometheusRecorder>,
}

/// What the store's writer thread records, per commit.
#[derive(Clone)]
pub struct StoreMetrics {
    /// Time from the start of a commit's transaction to its fsync's end.
    pub commit_seconds: Histogram,
    /// Commits, each ending in one fsync.
    pub commits: Counter,
    /// Record bytes (keys and values) written.
    pub written_bytes: Counter,
    /// Commits that failed (disk full, I/O error) and are retried.
    pub errors: Counter,
}

impl Metrics {
    /// One connection accepted on a listener of this kind.
    pub fn accepted(&self, kind: ListenerKind) {
        // `LISTENER_KINDS` lists the kinds in declaration order.
        self.connections_accepted[kind as usize].increment(1);
    }

    /// Registers every handle with the current recorder (a no-op one when none is installed).
    pub fn new() -> Metrics {
        let qos = |name: &'static str| {
            [
                counter!(name, "qos" => "0"),
                counter!(name, "qos" => "1"),
                counter!(name, "qos" => "2"),
            ]
        };
        let by_type = |name: &'static str, types: &[usize]| {
            std::array::from_fn(|t| {
                if types.contains(&t) {
                    counter!(name, "type" => PACKET_TYPES[t])
                } else {
                    Counter::noop()
                }
            })
        };
        Metrics {
            connections_accepted: LISTENER_KINDS.map(
                |kind| counter!("gateway_connections_accepted_total", "listener" => kind.as_str()),
            ),
            tls_handshake_failures: counter!("gateway_tls_handshake_failures_total"),
            tls_record_failures: counter!("gateway_tls_record_failures_total"),
            connections_current: gauge!("gateway_connections"),
            accept_errors: counter!("gateway_accept_errors_total"),
            messages_received: qos("gateway_messages_received_total"),
            messages_delivered: qos("gateway_messages_delivered_total"),
            bytes_received: counter!("gateway_received_bytes_total"),
            bytes_sent: counter!("gateway_sent_bytes_total"),
            task_panics: counter!("gateway_task_panics_total"),
            delivery_seconds: histogram!(DELIVERY_LATENCY),
            auth_failures: counter!("gateway_auth_failures_total"),
            totals: Totals::default(),
            dropped: DROP_REASONS
                .map(|(_, reason)| counter!("gateway_messages_dropped_total", "reason" => reason)),
            closed: CLOSE_REASONS.map(
                |reason| counter!("gateway_connections_closed_total", "reason" => reason.label()),
            ),
            rejected: REJECT_REASONS
                .map(|reason| counter!("gateway_connections_rejected_total", "reason" => reason)),
            limits_exceeded: LIMITS_EXCEEDED
                .map(|(_, limit)| counter!("gateway_limits_exceeded_total", "limit" => limit)),
            malformed: MALFORMED_KINDS
                .map(|kind| counter!("gateway_malformed_packets_total", "kind" => kind)),
            packets_received: by_type("gateway_packets_received_total", &RECEIVED_TYPES),
            packets_sent: by_type("gateway_packets_sent_total", &SENT_TYPES),
            store: StoreMetrics {
                commit_seconds: histogram!(STORE_COMMIT),
                commits: counter!("gateway_store_commits_total"),
                written_bytes: counter!("gateway_store_written_bytes_total"),
                errors: counter!("gateway_store_errors_total"),
            },
            cluster: ClusterMetrics {
                sent: counter!("gateway_cluster_messages_sent_total"),
                sent_bytes: counter!("gateway_cluster_sent_bytes_total"),
                received: counter!("gateway_cluster_messages_received_total"),
                received_bytes: counter!("gateway_cluster_received_bytes_total"),
                duplicates: counter!("gateway_cluster_duplicates_total"),
                retained_written: counter!("gateway_cluster_retained_writes_total"),
                retained_applied: counter!("gateway_cluster_retained_updates_total"),
                claims: CLAIM_OUTCOMES.map(|(_, outcome)| {
                    counter!("gateway_cluster_claims_total", "outcome" => outcome)
                }),
                takeovers: TAKEOVERS.map(|(_, result)| {
                    counter!("gateway_cluster_takeovers_total", "result" => result)
                }),
                handed_over: counter!("gateway_cluster_sessions_handed_over_total"),
                adopted: counter!("gateway_cluster_sessions_adopted_total"),
                round_trip: histogram!(CLUSTER_ROUND_TRIP),
                read_seconds: histogram!(CLUSTER_SESSION_READ),
                dropped: CLUSTER_DROPS.map(|(_, reason)| {
                    counter!("gateway_cluster_messages_dropped_total", "reason" => reason)
                }),
                refused: CLUSTER_REFUSALS.map(|(_, reason)| {
                    counter!("gateway_cluster_messages_refused_total", "reason" => reason)
                }),
            },
            recorder: None,
        }
    }

    /// The handles of `[[ingest]]` rule `rule` writing to `stream`, registered with this
    /// broker's recorder.
    pub fn ingest_rule(&self, rule: usize, stream: &str) -> IngestMetrics {
        let register = || {
            let labels = [("rule", rule.to_string()), ("stream", stream.to_owned())];
            IngestMetrics {
                messages: counter!("gateway_ingest_messages_total", &labels),
                acked: counter!("gateway_ingest_acked_total", &labels),
                acked_bytes: counter!("gateway_ingest_acked_bytes_total", &labels),
                duplicates: counter!("gateway_ingest_duplicates_total", &labels),
                dropped: counter!("gateway_ingest_dropped_total", &labels),
                inflight: gauge!("gateway_ingest_inflight", &labels),
                ack_seconds: histogram!(INGEST_ACK, &labels),
                failed: INGEST_FAILURES.map(|(_, kind)| {
                    let mut labels = labels.to_vec();
                    labels.push(("kind", kind.to_owned()));
                    counter!("gateway_ingest_failed_total", &labels)
                }),
            }
        };
        match &self.recorder {
            Some(recorder) => metrics::with_local_recorder(recorder, register),
            None => register(),
        }
    }

    /// Registers every handle with a new Prometheus recorder and returns the exporter that renders
    /// it. Histograms get explicit buckets: quantiles are computed by Prometheus from them, which
    /// (unlike a client-side summary) aggregates across instances.
    pub fn prometheus() -> anyhow::Result<(Metrics, Exporter)> {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(DELIVERY_LATENCY.to_owned()),
                &DELIVERY_BUCKETS,
            )?
            .set_buckets_for_metric(Matcher::Full(STORE_COMMIT.to_owned()), &COMMIT_BUCKETS)?
            .set_buckets_for_metric(Matcher::Full(INGEST_ACK.to_owned()), &INGEST_ACK_BUCKETS)?
            .set_buckets_for_metric(
                Matcher::Full(CLUSTER_ROUND_TRIP.to_owned()),
                &COMMIT_BUCKETS,
            )?
            .set_buckets_for_metric(
                Matcher::Full(CLUSTER_SESSION_READ.to_owned()),
                &COMMIT_BUCKETS,
            )?
            .build_recorder();
        let (mut metrics, state) = metrics::with_local_recorder(&recorder, || {
            describe();
            (Metrics::new(), StateGauges::new())
        });
        let exporter = Exporter {
            handle: recorder.handle(),
            state,
        };
        metrics.recorder = Some(recorder);
        Ok((metrics, exporter))
    }

    pub fn dropped(&self, reason: DropReason, n: u64) {
        self.dropped[reason as usize].increment(n);
    }

    pub fn closed(&self, reason: CloseReason) {
        self.closed[reason as usize].increment(1);
    }

    pub fn limit_exceeded(&self, limit: LimitExceeded) {
        self.limits_exceeded[limit as usize].increment(1);
    }

    /// Rare path (a refused connection): the label is looked up in a short list.
    pub fn rejected(&self, reason: &'static str) {
        if matches!(
            reason,
            "bad_auth_method" | "bad_credentials" | "not_authorized"
        ) {
            self.auth_failures.increment(1);
        }
        self.rejected[label_index(&REJECT_REASONS, reason)].increment(1);
    }

    /// Rare path (bad input ends the connection): the label is looked up in a short list.
    pub fn bad_input(&self, kind: &'static str) {
        self.malformed[label_index(&MALFORMED_KINDS, kind)].increment(1);
    }

    /// Counts one read batch: packets by type and PUBLISH messages by QoS, each counter touched
    /// once per batch however many packets the batch held.
    pub fn received_frames(&self, frames: &[Bytes]) {
        let mut by_type = [0u64; 16];
        let mut by_qos = [0u64; 4];
        for first in frames.iter().filter_map(|f| f.first()) {
            let t = usize::from(first >> 4);
            by_type[t] += 1;
            if t == PUBLISH {
                by_qos[usize::from((first >> 1) & 3)] += 1;
            }
        }
        for (counter, n) in self.packets_received.iter().zip(by_type) {
            if n > 0 {
                counter.increment(n);
            }
        }
        // QoS 3 is malformed and counted as such when decoded, not as a message.
        for (counter, n) in self.messages_received.iter().zip(by_qos) {
            if n > 0 {
                counter.increment(n);
            }
        }
        let messages = by_qos[..3].iter().sum::<u64>();
        if messages > 0 {
            self.totals
                .messages_received
                .fetch_add(messages, Ordering::Relaxed);
        }
    }

    /// Counts one control packet (not a PUBLISH: those go through `sent_batch`) queued for a client.
    pub fn packet_sent(&self, packet: &Packet) {
        self.packets_sent[packet_type(packet)].increment(1);
    }

    /// Counts the PUBLISH packets of one write batch and records the batch's delivery latency:
    /// one observation per batch, the time its oldest live message took from being read to
    /// being handed to the subscriber's socket. That bounds the latency of every message in the
    /// batch from above at one clock read and one histogram update per batch.
    pub fn sent_batch(&self, batch: &SentBatch) {
        let mut total = 0;
        for (counter, &n) in self.messages_delivered.iter().zip(&batch.delivered) {
            if n > 0 {
                counter.increment(n);
                total += n;
            }
        }
        if total > 0 {
            self.packets_sent[PUBLISH].increment(total);
            self.totals
                .messages_sent
                .fetch_add(total, Ordering::Relaxed);
        }
        if let Some(read) = batch.oldest_read {
            self.delivery_seconds.record(read.elapsed().as_secs_f64());
        }
    }

    pub fn add_bytes_received(&self, n: u64) {
        self.bytes_received.increment(n);
        self.totals.bytes_received.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_bytes_sent(&self, n: u64) {
        self.bytes_sent.increment(n);
        self.totals.bytes_sent.fetch_add(n, Ordering::Relaxed);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn label_index(labels: &[&str], label: &str) -> usize {
    labels
        .iter()
        .position(|l| *l == label)
        .unwrap_or(labels.len() - 1)
}

fn packet_type(packet: &Packet) -> usize {
    match packet {
        Packet::Connect(_) => 1,
        Packet::ConnAck(_) => 2,
        Packet::Publish(_) => 3,
        Packet::PubAck(_) => 4,
        Packet::PubRec(_) => 5,
        Packet::PubRel(_) => 6,
        Packet::PubComp(_) => 7,
        Packet::Subscribe(_) => 8,
        Packet::SubAck(_) => 9,
        Packet::Unsubscribe(_) => 10,
        Packet::UnsubAck(_) => 11,
        Packet::PingReq => 12,
        Packet::PingResp => 13,
        Packet::Disconnect(_) => 14,
        Packet::Auth(_) => 15,
    }
}

/// HELP lines: `promtool check metrics` requires one per metric, and they are what an operator
/// sees in Prometheus's metric explorer.
fn describe() {
    describe_counter!(
        "gateway_connections_accepted_total",
        "Connections accepted, by listener kind (tcp, tls, ws, wss)."
    );
    describe_counter!(
        "gateway_tls_handshake_failures_total",
        "TLS handshakes on tls and wss listeners that failed or timed out."
    );
    describe_counter!(
        "gateway_tls_record_failures_total",
        "TLS records refused after the handshake (bad_record_mac, record_overflow, unexpected or malformed messages), each ending its connection."
    );
    describe_gauge!(
        "gateway_connections",
        "Client connections with an attached session (CONNACK sent, not yet closed)."
    );
    describe_counter!(
        "gateway_accept_errors_total",
        "Failed accept() calls on the MQTT listener."
    );
    describe_counter!(
        "gateway_connections_rejected_total",
        "Connections refused before a session was attached, by reason."
    );
    describe_counter!(
        "gateway_connections_closed_total",
        "Connections closed, by reason."
    );
    describe_counter!(
        "gateway_messages_received_total",
        "PUBLISH packets received from clients, by QoS."
    );
    describe_counter!(
        "gateway_messages_delivered_total",
        "PUBLISH packets written to subscribers, by the delivered QoS."
    );
    describe_counter!(
        "gateway_received_bytes_total",
        "Bytes read from client sockets."
    );
    describe_counter!(
        "gateway_sent_bytes_total",
        "Bytes written to client sockets."
    );
    describe_counter!(
        "gateway_messages_dropped_total",
        "Message copies not delivered to a receiver, by reason."
    );
    describe_counter!(
        "gateway_task_panics_total",
        "Connection tasks that panicked (caught; only that connection closed)."
    );
    describe_histogram!(
        DELIVERY_LATENCY,
        "Time from a PUBLISH being read to its copies being written to subscriber sockets; one \
         observation per write batch (its oldest live message)."
    );
    describe_counter!(
        "gateway_auth_failures_total",
        "Connections refused for failed authentication."
    );
    describe_counter!(
        "gateway_limits_exceeded_total",
        "Client actions refused by a per-client [limits] key (publish quotas: the client is \
         disconnected; subscriptions and topic length: the filter or the client is refused; \
         retained backlog: a subscription's retained messages cut short)."
    );
    describe_counter!(
        "gateway_malformed_packets_total",
        "Invalid packets or protocol violations from clients, by kind."
    );
    describe_counter!(
        "gateway_packets_received_total",
        "MQTT control packets received, by type."
    );
    describe_counter!(
        "gateway_packets_sent_total",
        "MQTT control packets sent, by type."
    );
    describe_gauge!(
        "gateway_sessions",
        "Sessions by state: online (a connection is attached) or offline (kept for a reconnect)."
    );
    describe_gauge!(
        "gateway_subscriptions",
        "Subscriptions in the index, shared ones included."
    );
    describe_gauge!(
        "gateway_shared_subscriptions",
        "Shared subscriptions ($share/group/filter) in the index."
    );
    describe_gauge!(
        "gateway_retained_messages",
        "Topics holding a retained message."
    );
    describe_gauge!(
        "gateway_retained_bytes",
        "Bytes the retained messages count against mqtt.retained_max_bytes."
    );
    describe_gauge!(
        "gateway_queued_messages",
        "Messages waiting in session queues (retained backlogs included)."
    );
    describe_gauge!(
        "gateway_inflight_messages",
        "Outbound QoS 1/2 messages sent and awaiting acknowledgement."
    );
    describe_gauge!(
        "gateway_held_messages",
        "Distinct messages the sessions hold: queued, in flight, in retained backlogs (each once, however many sessions hold it)."
    );
    describe_gauge!(
        "gateway_held_message_bytes",
        "Heap the held messages weigh: topic, payload, properties, the message and its encoded heads."
    );
    describe_gauge!(
        "gateway_runtime_tasks",
        "Tasks alive in the broker's runtime: one per awake connection, plus the broker's own; a hibernating session has none."
    );
    describe_gauge!(
        "gateway_sessions_hibernating",
        "Online sessions hibernating: no task, socket off the reactor (mqtt.hibernate_after)."
    );
    describe_gauge!(
        "gateway_uptime_seconds",
        "Seconds since the broker started."
    );
    describe_histogram!(
        STORE_COMMIT,
        metrics::Unit::Seconds,
        "Store commits: the transaction and its fsync, from start to end ([storage])."
    );
    describe_counter!(
        "gateway_store_commits_total",
        "Store commits, each one fsync covering every session's changes gathered for it."
    );
    describe_counter!(
        "gateway_store_written_bytes_total",
        "Bytes of records (keys and values) written to the store."
    );
    describe_counter!(
        "gateway_store_errors_total",
        "Store commits that failed (disk full, I/O error); retried until they succeed."
    );
    describe_gauge!(
        "gateway_store_size_bytes",
        "Size of the store file on disk; 0 with [storage] enabled = false."
    );
    describe_gauge!(
        "gateway_stored_sessions",
        "Persistent sessions in the store."
    );
    describe_gauge!(
        "gateway_stored_messages",
        "Messages in the store, queued or in flight for persistent sessions."
    );
    describe_counter!(
        "gateway_ingest_messages_total",
        "Messages an [[ingest]] rule matched and took, by rule (index) and stream."
    );
    describe_counter!(
        "gateway_ingest_acked_total",
        "Ingestion writes JetStream acknowledged (stored), by rule and stream."
    );
    describe_counter!(
        "gateway_ingest_acked_bytes_total",
        "Payload bytes of the ingestion writes JetStream acknowledged."
    );
    describe_counter!(
        "gateway_ingest_duplicates_total",
        "Ingestion writes JetStream recognised as resends (Nats-Msg-Id) and did not store again."
    );
    describe_counter!(
        "gateway_ingest_dropped_total",
        "QoS 0 messages an ingestion rule dropped for lack of room (max_inflight, \
         max_inflight_bytes)."
    );
    describe_counter!(
        "gateway_ingest_failed_total",
        "Ingestion writes not stored, by kind; for ack = \"stream\" the publisher was refused."
    );
    describe_gauge!(
        "gateway_ingest_inflight",
        "Ingestion writes queued or awaiting JetStream's ack, by rule and stream."
    );
    describe_histogram!(
        INGEST_ACK,
        metrics::Unit::Seconds,
        "Ingestion writes: from the message's arrival at the rule to JetStream's ack."
    );
    describe_gauge!(
        "gateway_store_available",
        "1 while the store writes, 0 while its commits fail (PUBACK of stored messages refused)."
    );
    describe_counter!(
        "gateway_cluster_messages_sent_total",
        "Messages published to NATS for other cluster nodes (one per NATS message)."
    );
    describe_counter!(
        "gateway_cluster_sent_bytes_total",
        "Bytes of the messages published to NATS for other cluster nodes."
    );
    describe_counter!(
        "gateway_cluster_messages_received_total",
        "Messages received from other cluster nodes and routed to local subscribers."
    );
    describe_counter!(
        "gateway_cluster_received_bytes_total",
        "Bytes of the messages received from other cluster nodes."
    );
    describe_counter!(
        "gateway_cluster_duplicates_total",
        "Extra copies NATS delivered for overlapping filters of this node, discarded."
    );
    describe_counter!(
        "gateway_cluster_messages_dropped_total",
        "Messages not sent to or not taken from the cluster, by reason."
    );
    describe_counter!(
        "gateway_cluster_messages_refused_total",
        "Clients' QoS 1/2 messages for other nodes refused to their publishers (v5 0x80, 3.1.1 \
         closed) instead of acknowledged, by reason."
    );
    describe_counter!(
        "gateway_cluster_claims_total",
        "CONNECTs' claims of their client id across the cluster, by outcome (local: granted on \
         this node alone, NATS or the owner record unreachable)."
    );
    describe_counter!(
        "gateway_cluster_takeovers_total",
        "Sessions taken over from another node at CONNECT, by what that node answered \
         (stored: read back from the state stream, its node gone; lost: that stream unreadable)."
    );
    describe_histogram!(
        CLUSTER_SESSION_READ,
        metrics::Unit::Seconds,
        "Reading a persistent session back from the cluster's state stream at CONNECT (its node gone)."
    );
    describe_counter!(
        "gateway_cluster_sessions_handed_over_total",
        "Sessions this node handed to another node that claimed their client id."
    );
    describe_counter!(
        "gateway_cluster_sessions_adopted_total",
        "Persistent sessions of a dead node this node took up, to queue for them until their clients return."
    );
    describe_histogram!(
        CLUSTER_ROUND_TRIP,
        metrics::Unit::Seconds,
        "A ping to another node of the cluster and its answer over NATS (one node in turn, each second)."
    );
    describe_counter!(
        "gateway_cluster_retained_writes_total",
        "Retained sets and clears of this node's clients acknowledged by the retained stream."
    );
    describe_counter!(
        "gateway_cluster_retained_updates_total",
        "Retained sets and clears read from the retained stream into this node's copy."
    );
    describe_gauge!(
        "gateway_cluster_retained_ready",
        "1 while this node's retained messages are caught up with the cluster's retained stream."
    );
    describe_gauge!(
        "gateway_cluster_connected",
        "1 while this node's NATS connection is up; 0 while down, and on a standalone node."
    );
    describe_gauge!(
        "gateway_cluster_remote_interest",
        "Other nodes' (node, shared group, filter) interest entries known to this node."
    );
    describe_gauge!(
        "gateway_cluster_unconfirmed_messages",
        "Messages published here and sent to other nodes whose acknowledgement waits for them to be written to NATS."
    );
    describe_gauge!(
        "gateway_cluster_nodes",
        "Other cluster nodes known to this node (heard from within the last 5 s)."
    );
    describe_gauge!(
        "gateway_build_info",
        "Always 1; the version label tells which build is running."
    );
}

/// State the broker reports when scraped; computed by `Context::state`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BrokerState {
    pub connections: usize,
    pub sessions_online: usize,
    pub sessions_offline: usize,
    pub subscriptions: usize,
    pub shared_subscriptions: usize,
    pub retained_messages: usize,
    /// What the retained messages count against `mqtt.retained_max_bytes`.
    pub retained_bytes: usize,
    pub queued_messages: usize,
    pub inflight_messages: usize,
    /// Distinct messages the sessions hold (queued, in flight, retained backlogs), and what
    /// they weigh on the heap (`router::message_weight`).
    pub held_messages: usize,
    pub held_message_bytes: usize,
    pub uptime_seconds: u64,
    /// Online sessions without a task, waiting in the parker (`hibernate`).
    pub sessions_hibernating: usize,
    /// Tasks alive in the broker's runtime: one per awake connection, and the broker's own.
    pub runtime_tasks: usize,
    pub store_size_bytes: u64,
    pub stored_sessions: u64,
    pub stored_messages: u64,
    /// False while the store's commits fail.
    pub store_available: bool,
    /// This node is clustered and connected to NATS.
    pub cluster_connected: bool,
    /// Other nodes' interest entries known here.
    pub cluster_remote_interest: usize,
    /// Other cluster nodes known here.
    pub cluster_nodes: usize,
    /// Messages whose acknowledgement waits for the link to write them to NATS.
    pub cluster_unconfirmed: usize,
    /// This node is clustered and its retained copy is caught up with the retained stream.
    pub cluster_retained_ready: bool,
}

/// Gauges set from a `BrokerState` right before rendering.
struct StateGauges {
    sessions_online: Gauge,
    sessions_offline: Gauge,
    subscriptions: Gauge,
    shared_subscriptions: Gauge,
    retained: Gauge,
    retained_bytes: Gauge,
    queued: Gauge,
    inflight: Gauge,
    held: Gauge,
    held_bytes: Gauge,
    uptime: Gauge,
    hibernating: Gauge,
    tasks: Gauge,
    store_size: Gauge,
    stored_sessions: Gauge,
    stored_messages: Gauge,
    store_available: Gauge,
    cluster_connected: Gauge,
    cluster_remote_interest: Gauge,
    cluster_nodes: Gauge,
    cluster_unconfirmed: Gauge,
    cluster_retained_ready: Gauge,
}

impl StateGauges {
    fn new() -> StateGauges {
        gauge!("gateway_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        StateGauges {
            sessions_online: gauge!("gateway_sessions", "state" => "online"),
            sessions_offline: gauge!("gateway_sessions", "state" => "offline"),
            subscriptions: gauge!("gateway_subscriptions"),
            shared_subscriptions: gauge!("gateway_shared_subscriptions"),
            retained: gauge!("gateway_retained_messages"),
            retained_bytes: gauge!("gateway_retained_bytes"),
            queued: gauge!("gateway_queued_messages"),
            inflight: gauge!("gateway_inflight_messages"),
            held: gauge!("gateway_held_messages"),
            held_bytes: gauge!("gateway_held_message_bytes"),
            uptime: gauge!("gateway_uptime_seconds"),
            hibernating: gauge!("gateway_sessions_hibernating"),
            tasks: gauge!("gateway_runtime_tasks"),
            store_size: gauge!("gateway_store_size_bytes"),
            stored_sessions: gauge!("gateway_stored_sessions"),
            stored_messages: gauge!("gateway_stored_messages"),
            store_available: gauge!("gateway_store_available"),
            cluster_connected: gauge!("gateway_cluster_connected"),
            cluster_remote_interest: gauge!("gateway_cluster_remote_interest"),
            cluster_nodes: gauge!("gateway_cluster_nodes"),
            cluster_unconfirmed: gauge!("gateway_cluster_unconfirmed_messages"),
            cluster_retained_ready: gauge!("gateway_cluster_retained_ready"),
        }
    }
}

/// Renders the broker's Prometheus recorder in the text exposition format.
pub struct Exporter {
    handle: PrometheusHandle,
    state: StateGauges,
}

impl Exporter {
    /// The scrape body: the recorder's metrics with the state gauges updated, followed by the
    /// process metrics read from /proc now.
    pub fn render(&self, state: &BrokerState) -> String {
        let s = &self.state;
        s.sessions_online.set(state.sessions_online as f64);
        s.sessions_offline.set(state.sessions_offline as f64);
        s.subscriptions.set(state.subscriptions as f64);
        s.shared_subscriptions
            .set(state.shared_subscriptions as f64);
        s.retained.set(state.retained_messages as f64);
        s.retained_bytes.set(state.retained_bytes as f64);
        s.queued.set(state.queued_messages as f64);
        s.inflight.set(state.inflight_messages as f64);
        s.held.set(state.held_messages as f64);
        s.held_bytes.set(state.held_message_bytes as f64);
        s.hibernating.set(state.sessions_hibernating as f64);
        s.tasks.set(state.runtime_tasks as f64);
        s.uptime.set(state.uptime_seconds as f64);
        s.store_size.set(state.store_size_bytes as f64);
        s.stored_sessions.set(state.stored_sessions as f64);
        s.stored_messages.set(state.stored_messages as f64);
        s.store_available
            .set(if state.store_available { 1.0 } else { 0.0 });
        s.cluster_connected
            .set(if state.cluster_connected { 1.0 } else { 0.0 });
        s.cluster_remote_interest
            .set(state.cluster_remote_interest as f64);
        s.cluster_nodes.set(state.cluster_nodes as f64);
        s.cluster_unconfirmed.set(state.cluster_unconfirmed as f64);
        s.cluster_retained_ready
            .set(if state.cluster_retained_ready {
                1.0
            } else {
                0.0
            });
        let mut out = self.handle.render();
        process::render(&mut out);
        out
    }

    /// Moves recorded histogram samples into their buckets. Rendering does it too; calling it
    /// between scrapes bounds the memory samples take when nobody scrapes.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(exposition: &str, series: &str) -> Option<f64> {
        exposition
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn label_tables_follow_the_enum_order() {
        for (i, (reason, _)) in DROP_REASONS.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{reason:?}");
        }
        for (i, reason) in CLOSE_REASONS.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{reason:?}");
        }
        for (i, (reason, _)) in CLUSTER_DROPS.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{reason:?}");
        }
        for (i, (reason, _)) in CLUSTER_REFUSALS.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{reason:?}");
        }
        for (i, (outcome, _)) in CLAIM_OUTCOMES.iter().enumerate() {
            assert_eq!(*outcome as usize, i, "{outcome:?}");
        }
        for (i, (result, _)) in TAKEOVERS.iter().enumerate() {
            assert_eq!(*result as usize, i, "{result:?}");
        }
        for (i, (limit, _)) in LIMITS_EXCEEDED.iter().enumerate() {
            assert_eq!(*limit as usize, i, "{limit:?}");
        }
        for (i, (kind, _)) in INGEST_FAILURES.iter().enumerate() {
            assert_eq!(*kind as usize, i, "{kind:?}");
        }
    }

    #[test]
    fn batches_are_counted_by_type_and_qos_and_unknown_labels_fall_back_to_other() {
        let (m, exporter) = Metrics::prometheus().unwrap();
        let frames = [
            Bytes::from_static(&[0x30, 0]),
            Bytes::from_static(&[0x32, 0]),
            Bytes::from_static(&[0x34, 0]),
            Bytes::from_static(&[0x34, 0]),
            Bytes::from_static(&[0xC0, 0]),
            Bytes::new(),
        ];
        m.received_frames(&frames);
        let mut batch = SentBatch::default();
        batch.add(1, Some(Instant::now()));
        batch.add(1, None);
        m.sent_batch(&batch);
        m.rejected("not-a-listed-reason");
        m.rejected("bad_auth_method");
        m.bad_input("something-new");
        m.dropped(DropReason::SlowConsumerQos0, 3);
        m.closed(CloseReason::Administrative);
        let text = exporter.render(&BrokerState::default());
        let v = |series: &str| value(&text, series).unwrap_or_else(|| panic!("{series}\n{text}"));
        assert_eq!(v("gateway_packets_received_total{type=\"publish\"}"), 4.0);
        assert_eq!(v("gateway_packets_received_total{type=\"pingreq\"}"), 1.0);
        assert_eq!(v("gateway_messages_received_total{qos=\"0\"}"), 1.0);
        assert_eq!(v("gateway_messages_received_total{qos=\"1\"}"), 1.0);
        assert_eq!(v("gateway_messages_received_total{qos=\"2\"}"), 2.0);
        assert_eq!(m.totals.messages_received.load(Ordering::Relaxed), 4);
        assert_eq!(v("gateway_messages_delivered_total{qos=\"1\"}"), 2.0);
        assert_eq!(v("gateway_packets_sent_total{type=\"publish\"}"), 2.0);
        assert_eq!(v("gateway_delivery_latency_seconds_count"), 1.0);
        assert_eq!(
            v("gateway_connections_rejected_total{reason=\"other\"}"),
            1.0
        );
        assert_eq!(v("gateway_auth_failures_total"), 1.0);
        assert_eq!(v("gateway_malformed_packets_total{kind=\"other\"}"), 1.0);
        assert_eq!(
            v("gateway_messages_dropped_total{reason=\"slow_consumer_qos0\"}"),
            3.0
        );
        assert_eq!(
            v("gateway_connections_closed_total{reason=\"administrative\"}"),
            1.0
        );
        assert!(!text.contains("type=\"reserved\""));
    }
}
