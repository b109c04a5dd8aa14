//! A rule's writer: its stream set up, and its messages published into it, many at a time.
//!
//! Publishes are pipelined: a write is sent as soon as the rule has room (`max_inflight`
//! writes, `max_inflight_bytes` bytes awaiting JetStream's ack) and its ack is awaited beside the
//! others, so throughput is not one message per round trip. Writes are sent in the order they
//! were submitted (so a device's messages land in its order while nothing fails).
//!
//! A write is a plain NATS publish whose reply subject is the rule's inbox and the write's
//! sequence number (`window`), and one subscription takes every ack: no request, timer, future
//! or lookup per message, as async-nats's JetStream publish would cost. Attempts time out on the
//! writer's tick.
//!
//! Bounds: beyond the room, writes wait in the rule's queue. QoS 0 messages are dropped (and
//! counted) when the queue is full; QoS 1/2 messages are bounded by their publishers' windows
//! (their acknowledgements are held), and one that comes while the queue holds
//! `OVERFLOW_FACTOR` times the room (a client ignoring its window) is refused at once.
//!
//! Failures: a write that is not acknowledged (JetStream unreachable, no stream yet, a timeout)
//! is sent again, with the same `Nats-Msg-Id` so that JetStream stores it once, until the rule's
//! `ack_timeout` has passed since it was submitted; then it is refused. A full stream (discard
//! new) refuses at once. QoS 0 writes are never sent twice (at most once): a failure drops them.
//! A publish that finds no stream (deleted, or a server restarted without its store) has the
//! stream set up again, so writing resumes by itself.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::client::PublishErrorKind;
use async_nats::connection::State;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::response::Response;
use async_nats::jetstream::{self, stream, ErrorCode};
use async_nats::{Client, Event, StatusCode, Subject, Subscriber};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch, Notify};
use tracing::{info, warn};

use crate::config::{IngestDiscard, IngestRetention, IngestRule, IngestStorage};
use crate::message::Message;
use crate::metrics::{IngestFailure, IngestMetrics, Metrics};
use crate::store::Mark;

use super::headers::headers;
use super::subject::Template;
use super::window::Window;
use crate::ticket::{Refusal, Ticket};

/// A QoS 1/2 write is refused at once while the queue holds this many times the room: the
/// publishers' windows normally keep it far below.
const OVERFLOW_FACTOR: u64 = 4;
/// How often attempts are checked for their timeout, failed writes for their retry, and queued
/// writes for their deadline.
const TICK: Duration = Duration::from_millis(100);
/// Pause before a failed write is sent again, and between attempts to set up the stream.
const RETRY_PAUSE: Duration = Duration::from_millis(250);
const SETUP_PAUSE_MAX: Duration = Duration::from_secs(5);
/// One attempt waits this share of `ack_timeout` for its ack (within the bounds below), so a
/// write is tried several times before it is refused.
const ATTEMPTS: u32 = 4;
const ATTEMPT_MIN: Duration = Duration::from_millis(250);
const ATTEMPT_MAX: Duration = Duration::from_secs(5);

/// One message for one rule. Its headers are made at each send rather than kept: a write is
/// nearly always sent once, and a header map costs as much to copy as to make.
pub(super) struct Write {
    pub(super) subject: Subject,
    pub(super) message: Arc<Message>,
    pub(super) client_id: Arc<str>,
    /// `Nats-Msg-Id`, for QoS 1/2.
    pub(super) msg_id: Option<String>,
    /// Present when the publisher's acknowledgement waits for this write.
    pub(super) ticket: Option<Arc<Ticket>>,
    pub(super) qos0: bool,
    /// The store's mark of its de-duplication number (`dedup`): not sent before it is committed.
    pub(super) after: Mark,
}

impl Write {
    fn size(&self) -> u64 {
        (self.subject.len() + self.message.payload.len()) as u64
    }
}

/// A write with its clock: refused once `deadline` passes, timed from `submitted`.
struct Queued {
    write: Write,
    submitted: Instant,
    deadline: Instant,
}

pub(crate) struct Writer {
    max_inflight: u64,
    max_bytes: u64,
    ack_timeout: Duration,
    /// One attempt's wait for its ack.
    attempt: Duration,
    queue: Mutex<VecDeque<Queued>>,
    wake: Notify,
    /// A publish found no stream for its subject (deleted, or a server that lost its store):
    /// the stream is looked up, and created, again.
    missing: Notify,
    /// Writes and bytes submitted and not finished (queued or in flight).
    pending: AtomicU64,
    pending_bytes: AtomicU64,
    /// Why the rule cannot write now, for `/readyz`; cleared by the next success.
    blocked: Mutex<Option<String>>,
    metrics: IngestMetrics,
}

/// The store's committed marks, which writes with a mark wait for (`Write::after`).
type Committed = Option<watch::Receiver<Mark>>;

impl Writer {
    /// The writer of rule `index` and its task (stream set-up, then the write loop).
    pub(super) fn start(
        index: usize,
        rule: &IngestRule,
        template: &Template,
        client: Client,
        committed: Committed,
        metrics: &Metrics,
    ) -> (Arc<Writer>, BoxFuture<'static, ()>) {
        let attempt = (rule.ack_timeout / ATTEMPTS).clamp(ATTEMPT_MIN, ATTEMPT_MAX);
        let js = jetstream::ContextBuilder::new()
            .timeout(attempt)
            .build(client.clone());
        let writer = Arc::new(Writer {
            max_inflight: rule.max_inflight as u64,
            max_bytes: rule.max_inflight_bytes,
            ack_timeout: rule.ack_timeout,
            attempt,
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            missing: Notify::new(),
            pending: AtomicU64::new(0),
            pending_bytes: AtomicU64::new(0),
            // Not ready until the stream is known to exist: a QoS 0 message written before would
            // be lost for nothing.
            blocked: Mutex::new(Some(format!("stream {} not set up yet", rule.stream))),
            metrics: metrics.ingest_rule(index, &rule.stream),
        });
        let config = stream_config(rule, template);
        let task = {
            let writer = writer.clone();
            async move {
                let setup = async {
                    loop {
                        writer.ensure_stream(&js, config.clone()).await;
                        writer.missing.notified().await;
                    }
                };
                futures_util::future::join(setup, writer.run(&client, committed)).await;
            }
            .boxed()
        };
        (writer, task)
    }

    /// Takes a write (see the module's description for what is refused or dropped).
    pub(super) fn submit(&self, write: Write) {
        self.metrics.messages.increment(1);
        let size = write.size();
        let pending = self.pending.load(Ordering::Relaxed);
        let bytes = self.pending_bytes.load(Ordering::Relaxed);
        if write.qos0 {
            if pending >= self.max_inflight || bytes >= self.max_bytes {
                self.metrics.dropped.increment(1);
                return;
            }
        } else if pending >= self.max_inflight * OVERFLOW_FACTOR
            || bytes >= self.max_bytes.saturating_mul(OVERFLOW_FACTOR)
        {
            self.metrics.failed(IngestFailure::Overflow);
            if let Some(ticket) = &write.ticket {
                ticket.complete(Err(Refusal::Quota));
            }
            return;
        }
        self.pending.fetch_add(1, Ordering::Relaxed);
        self.pending_bytes.fetch_add(size, Ordering::Relaxed);
        self.metrics.inflight.increment(1.0);
        let now = Instant::now();
        self.queue.lock().push_back(Queued {
            write,
            submitted: now,
            deadline: now + self.ack_timeout,
        });
        self.wake.notify_one();
    }

    pub(super) fn blocked(&self) -> Option<String> {
        self.blocked.lock().clone()
    }

    /// Records why the rule cannot write; logged when it was not blocked before.
    fn set_blocked(&self, why: impl FnOnce() -> String) {
        let why = why();
        let mut blocked = self.blocked.lock();
        if blocked.is_none() {
            warn!("ingest: {why}");
        }
        *blocked = Some(why);
    }

    /// Sends queued writes while there is room, collects acks, sends failed writes again. A
    /// write whose de-duplication number is not committed yet holds the ones behind it (they
    /// go in order; the store commits within `commit_delay_ms`).
    async fn run(&self, client: &Client, mut committed: Committed) {
        let inbox = client.new_inbox();
        let mut acks = self.subscribe(client, &inbox).await;
        let mut sent = Sent {
            window: Window::new(),
            bytes: 0,
            retry: VecDeque::new(),
        };
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut uncommitted = false;
            if client.connection_state() == State::Connected {
                while (sent.window.span() as u64) < self.max_inflight && sent.bytes < self.max_bytes
                {
                    let now = Instant::now();
                    let q = if sent.retry.front().is_some_and(|(due, _)| *due <= now) {
                        sent.retry.pop_front().map(|(_, q)| q)
                    } else {
                        let mut queue = self.queue.lock();
                        let Some(head) = queue.front() else {
                            break;
                        };
                        if let Some(c) = committed.as_mut().filter(|_| head.write.after > 0) {
                            // Seen before the check: a commit after it wakes `changed` below.
                            if head.write.after > *c.borrow_and_update() {
                                uncommitted = true;
                                break;
                            }
                        }
                        queue.pop_front()
                    };
                    let Some(q) = q else {
                        break;
                    };
                    if !self.send(client, &inbox, q, &mut sent).await {
                        break;
                    }
                }
            }
            let store_commits = async {
                match committed.as_mut() {
                    Some(c) if uncommitted => c.changed().await.is_ok(),
                    _ => false,
                }
            };
            tokio::select! {
                true = store_commits => {}
                Some(ack) = acks.next() => self.answered(&ack, &mut sent),
                _ = self.wake.notified() => {}
                _ = tick.tick() => {
                    self.expire_queued();
                    self.time_out(&mut sent);
                }
            }
        }
    }

    /// The subscription that takes this writer's acks, retried until the client takes it.
    async fn subscribe(&self, client: &Client, inbox: &str) -> Subscriber {
        loop {
            match client.subscribe(format!("{inbox}.*")).await {
                Ok(acks) => return acks,
                Err(e) => self.set_blocked(|| format!("cannot subscribe to acks: {e}")),
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Publishes `q` with its reply subject; false when it could not be handed to the client
    /// (then it is refused or waits for its retry).
    async fn send(&self, client: &Client, inbox: &str, q: Queued, sent: &mut Sent) -> bool {
        let w = &q.write;
        let seq = sent.window.next_seq();
        let publish = client.publish_with_reply_and_headers(
            w.subject.clone(),
            format!("{inbox}.{seq}"),
            headers(&w.message, &w.client_id, w.msg_id.clone()),
            w.message.payload.clone(),
        );
        // Handing a publish to the client waits only while its command queue is full (a
        // connection that is slow or just went down): bounded so that acks and deadlines
        // are looked at meanwhile.
        let failure = match tokio::time::timeout(self.attempt, publish).await {
            Ok(Ok(())) => {
                sent.bytes += w.size();
                sent.window.push(q, Instant::now());
                return true;
            }
            Ok(Err(e)) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                (IngestFailure::TooLarge, e.to_string())
            }
            Ok(Err(e)) => (IngestFailure::Unavailable, e.to_string()),
            Err(_) => (
                IngestFailure::Unavailable,
                "the NATS client's queue stayed full".to_owned(),
            ),
        };
        self.failed(q, failure, sent);
        false
    }

    /// An ack (or a refusal) on the inbox: finishes the write it answers.
    fn answered(&self, ack: &async_nats::Message, sent: &mut Sent) {
        let seq = ack.subject.rsplit('.').next().and_then(|s| s.parse().ok());
        // A late answer to an attempt that timed out: its retry has an answer of its own.
        let Some(q) = seq.and_then(|seq| sent.window.take(seq)) else {
            return;
        };
        sent.bytes -= q.write.size();
        match verdict(ack) {
            Ok(duplicate) => self.stored(q, duplicate),
            Err(failure) => {
                if failure.0 == IngestFailure::Unavailable {
                    self.missing.notify_one();
                }
                self.failed(q, failure, sent);
            }
        }
    }

    /// Attempts whose ack did not come within `attempt` are failed (retried or refused).
    fn time_out(&self, sent: &mut Sent) {
        let now = Instant::now();
        if let Some(sent_by) = now.checked_sub(self.attempt) {
            while let Some(q) = sent.window.take_sent_by(sent_by) {
                sent.bytes -= q.write.size();
                let why = format!("no ack within {:?}", self.attempt);
                self.failed(q, (IngestFailure::Timeout, why), sent);
            }
        }
        // A write waiting for its retry is refused once its deadline passed.
        let mut waiting = VecDeque::with_capacity(sent.retry.len());
        for (due, q) in sent.retry.drain(..) {
            if q.deadline <= now {
                self.refuse(q, IngestFailure::Timeout);
            } else {
                waiting.push_back((due, q));
            }
        }
        sent.retry = waiting;
    }

    /// A write that was not stored: refused when that is final or its time is up, sent again
    /// after `RETRY_PAUSE` otherwise (with the same `Nats-Msg-Id`: JetStream stores it once).
    fn failed(&self, q: Queued, (kind, why): (IngestFailure, String), sent: &mut Sent) {
        let permanent = matches!(kind, IngestFailure::StreamFull | IngestFailure::TooLarge);
        let now = Instant::now();
        if permanent || q.write.qos0 {
            self.refuse(q, kind);
        } else if now >= q.deadline {
            // Whatever the last attempt said, the write ran out of time.
            self.refuse(q, IngestFailure::Timeout);
        } else {
            self.set_blocked(|| format!("writes are retried: {why}"));
            sent.retry.push_back((now + RETRY_PAUSE, q));
        }
    }

    /// Refuses queued writes (oldest first) whose deadline passed while the rule had no room.
    fn expire_queued(&self) {
        let now = Instant::now();
        loop {
            let expired = {
                let mut queue = self.queue.lock();
                match queue.front() {
                    Some(q) if q.deadline <= now => queue.pop_front(),
                    _ => None,
                }
            };
            match expired {
                Some(q) => self.refuse(q, IngestFailure::Timeout),
                None => return,
            }
        }
    }

    fn stored(&self, queued: Queued, duplicate: bool) {
        self.finish(&queued);
        let m = &self.metrics;
        if duplicate {
            m.duplicates.increment(1);
        } else {
            m.acked.increment(1);
            m.acked_bytes
                .increment(queued.write.message.payload.len() as u64);
        }
        m.ack_seconds
            .record(queued.submitted.elapsed().as_secs_f64());
        *self.blocked.lock() = None;
        if let Some(ticket) = &queued.write.ticket {
            ticket.complete(Ok(()));
        }
    }

    fn refuse(&self, queued: Queued, kind: IngestFailure) {
        self.finish(&queued);
        self.metrics.failed(kind);
        if let Some(ticket) = &queued.write.ticket {
            let refusal = if kind == IngestFailure::StreamFull {
                Refusal::Quota
            } else {
                Refusal::Unavailable
            };
            ticket.complete(Err(refusal));
        }
    }

    fn finish(&self, queued: &Queued) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
        self.pending_bytes
            .fetch_sub(queued.write.size(), Ordering::Relaxed);
        self.metrics.inflight.decrement(1.0);
    }

    /// Looks the stream up and creates it if missing (an existing stream is used as it is),
    /// trying again until it succeeds: NATS may be down at start. Again whenever a publish
    /// finds no stream (`missing`).
    async fn ensure_stream(&self, js: &jetstream::Context, config: stream::Config) {
        let name = config.name.clone();
        let mut pause = RETRY_PAUSE;
        loop {
            match js.get_stream(&name).await {
                Ok(_) => {
                    info!(stream = name, "ingest: stream exists, used as it is");
                    break;
                }
                Err(e) if stream_missing(&e) => match js.create_stream(config.clone()).await {
                    Ok(_) => {
                        info!(stream = name, "ingest: stream created");
                        break;
                    }
                    Err(e) => {
                        self.set_blocked(|| format!("cannot create stream {name}: {e}"));
                    }
                },
                Err(e) => self.set_blocked(|| format!("cannot look up stream {name}: {e}")),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(SETUP_PAUSE_MAX);
        }
        *self.blocked.lock() = None;
    }
}

/// The writes sent and not answered, and those waiting to be sent again.
struct Sent {
    window: Window<Queued>,
    /// Bytes of the writes in `window`.
    bytes: u64,
    /// Failed writes with the instant they are due again, in that order.
    retry: VecDeque<(Instant, Queued)>,
}

/// What JetStream's answer on a write's reply subject says: stored (true: as a duplicate), or
/// why not.
fn verdict(ack: &async_nats::Message) -> Result<bool, (IngestFailure, String)> {
    if ack.status == Some(StatusCode::NO_RESPONDERS) {
        return Err((
            IngestFailure::Unavailable,
            "no stream takes the subject".to_owned(),
        ));
    }
    // Nearly every answer is `{"stream":NAME,"seq":N}` (with `"duplicate":true` for a write
    // JetStream had): read as such without parsing it whole. A refusal always has its "error"
    // object, and anything unusual takes the full parse.
    let payload = &ack.payload[..];
    if payload.starts_with(b"{\"stream\":")
        && payload.ends_with(b"}")
        && !contains(payload, b"\"error\"")
    {
        return Ok(duplicate(payload));
    }
    match serde_json::from_slice::<Response<PublishAck>>(payload) {
        Ok(Response::Ok(stored)) => Ok(stored.duplicate),
        // JetStream's "store failed" (10077) is how a full stream with discard new refuses
        // (maximum bytes / messages exceeded).
        Ok(Response::Err { error }) if error.error_code() == ErrorCode::STREAM_STORE_FAILED => {
            Err((IngestFailure::StreamFull, error.to_string()))
        }
        Ok(Response::Err { error }) => Err((IngestFailure::Other, error.to_string())),
        Err(e) => Err((IngestFailure::Other, format!("unreadable ack: {e}"))),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether an ack says `"duplicate": true` (nats-server writes it with a space).
fn duplicate(ack: &[u8]) -> bool {
    const KEY: &[u8] = b"\"duplicate\":";
    ack.windows(KEY.len())
        .position(|w| w == KEY)
        .is_some_and(|at| {
            ack[at + KEY.len()..]
                .trim_ascii_start()
                .starts_with(b"true")
        })
}

fn stream_missing(e: &async_nats::error::Error<GetStreamErrorKind>) -> bool {
    matches!(e.kind(), GetStreamErrorKind::JetStream(err) if err.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// The stream the gateway creates when it is missing.
fn stream_config(rule: &IngestRule, template: &Template) -> stream::Config {
    let subjects = if rule.subjects.is_empty() {
        vec![template.wildcard()]
    } else {
        rule.subjects.clone()
    };
    stream::Config {
        name: rule.stream.clone(),
        subjects,
        retention: match rule.retention {
            IngestRetention::Limits => stream::RetentionPolicy::Limits,
            IngestRetention::Interest => stream::RetentionPolicy::Interest,
            IngestRetention::WorkQueue => stream::RetentionPolicy::WorkQueue,
        },
        max_age: rule.max_age,
        max_bytes: i64::try_from(rule.max_bytes)
            .ok()
            .filter(|&b| b > 0)
            .unwrap_or(-1),
        num_replicas: rule.replicas,
        storage: match rule.storage {
            IngestStorage::File => stream::StorageType::File,
            IngestStorage::Memory => stream::StorageType::Memory,
        },
        discard: match rule.discard {
            IngestDiscard::Old => stream::DiscardPolicy::Old,
            IngestDiscard::New => stream::DiscardPolicy::New,
        },
        duplicate_window: rule.duplicate_window,
        ..stream::Config::default()
    }
}

/// Logs the NATS connection's events (the flag `Ingest::blocked` reads is kept by `nats`).
pub(super) fn watch_connection(mut events: mpsc::Receiver<Event>) -> BoxFuture<'static, ()> {
    async move {
        while let Some(event) = events.recv().await {
            match event {
                Event::Connected => info!("ingest: connected to NATS"),
                Event::Disconnected => {
                    warn!("ingest: disconnected from NATS; acknowledgements wait")
                }
                other => info!("ingest: NATS {other}"),
            }
        }
    }
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(payload: &'static [u8]) -> async_nats::Message {
        async_nats::Message {
            subject: Subject::from_static("_INBOX.x.1"),
            reply: None,
            payload: bytes::Bytes::from_static(payload),
            headers: None,
            status: None,
            description: None,
            length: payload.len(),
        }
    }

    /// The quick reading of an ack says what the full parse says.
    #[test]
    fn acks_read_quickly_as_the_full_parse_reads_them() {
        assert_eq!(verdict(&answer(br#"{"stream":"S","seq":7}"#)), Ok(false));
        // As nats-server 2.9 writes it, and without the space.
        assert_eq!(
            verdict(&answer(br#"{"stream":"S","seq":7,"duplicate": true}"#)),
            Ok(true)
        );
        assert_eq!(
            verdict(&answer(br#"{"stream":"S","seq":7,"duplicate":true}"#)),
            Ok(true)
        );
        assert_eq!(
            verdict(&answer(br#"{"stream":"S","seq":7,"duplicate":false}"#)),
            Ok(false)
        );
        assert_eq!(
            verdict(&answer(br#"{"stream":"S","domain":"d","seq":7}"#)),
            Ok(false)
        );
        // A name that holds the words is escaped in JSON: neither fools the quick reading.
        assert_eq!(
            verdict(&answer(br#"{"stream":"a\"duplicate\":true","seq":1}"#)),
            Ok(false)
        );
        let full = verdict(&answer(
            br#"{"error":{"code":503,"err_code":10077,"description":"resource limits exceeded for account"}}"#,
        ));
        assert!(
            matches!(full, Err((IngestFailure::StreamFull, _))),
            "{full:?}"
        );
        let other = verdict(&answer(
            br#"{"error":{"code":400,"err_code":10060,"description":"expected stream does not match"}}"#,
        ));
        assert!(matches!(other, Err((IngestFailure::Other, _))), "{other:?}");
        assert!(matches!(
            verdict(&answer(b"{\"stream\":\"S\",")),
            Err((IngestFailure::Other, _))
        ));
        assert!(matches!(
            verdict(&answer(b"not json")),
            Err((IngestFailure::Other, _))
        ));
        let mut none = answer(b"");
        none.status = Some(StatusCode::NO_RESPONDERS);
        assert!(matches!(
            verdict(&none),
            Err((IngestFailure::Unavailable, _))
        ));
    }
}
