//! A rule's writer: its stream set up, and its messages published into it, many at a time.
//!
//! Publishes are pipelined: a write is sent as soon as the rule has room (`max_inflight`
//! writes, `max_inflight_bytes` bytes awaiting JetStream's ack) and its ack is awaited beside the
//! others, so throughput is not one message per round trip. Writes are sent in the order they
//! were submitted (so a device's messages land in its order while nothing fails).
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

use async_nats::header::HeaderMap;
use async_nats::jetstream::context::{GetStreamErrorKind, PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::stream;
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{Client, Event};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch, Notify};
use tracing::{info, warn};

use crate::config::{IngestDiscard, IngestRetention, IngestRule, IngestStorage};
use crate::metrics::{IngestFailure, IngestMetrics, Metrics};
use crate::store::Mark;

use super::subject::Template;
use super::{Refusal, Ticket};

/// A QoS 1/2 write is refused at once while the queue holds this many times the room: the
/// publishers' windows normally keep it far below.
const OVERFLOW_FACTOR: u64 = 4;
/// How often queued writes are checked against their deadline while the rule cannot send.
const EXPIRY_TICK: Duration = Duration::from_millis(250);
/// Pause before a failed write is sent again, and between attempts to set up the stream.
const RETRY_PAUSE: Duration = Duration::from_millis(250);
const SETUP_PAUSE_MAX: Duration = Duration::from_secs(5);
/// One attempt waits this share of `ack_timeout` for its ack (within the bounds below), so a
/// write is tried several times before it is refused.
const ATTEMPTS: u32 = 4;
const ATTEMPT_MIN: Duration = Duration::from_millis(250);
const ATTEMPT_MAX: Duration = Duration::from_secs(5);

/// One message for one rule.
pub(super) struct Write {
    pub(super) subject: String,
    pub(super) headers: HeaderMap,
    pub(super) payload: Bytes,
    /// Present when the publisher's acknowledgement waits for this write.
    pub(super) ticket: Option<Arc<Ticket>>,
    pub(super) qos0: bool,
    /// The store's mark of its de-duplication number (`dedup`): not sent before it is committed.
    pub(super) after: Mark,
}

impl Write {
    fn size(&self) -> u64 {
        (self.subject.len() + self.payload.len()) as u64
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
            // The rule's own bound is the one that counts; this only must not be lower.
            .max_ack_inflight(rule.max_inflight.saturating_add(1))
            .backpressure_on_inflight(true)
            .build(client);
        let writer = Arc::new(Writer {
            max_inflight: rule.max_inflight as u64,
            max_bytes: rule.max_inflight_bytes,
            ack_timeout: rule.ack_timeout,
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
                futures_util::future::join(setup, writer.run(&js, committed)).await;
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
    async fn run(&self, js: &jetstream::Context, mut committed: Committed) {
        let mut inflight: FuturesUnordered<BoxFuture<'static, Attempt>> = FuturesUnordered::new();
        let mut inflight_bytes = 0u64;
        let mut tick = tokio::time::interval(EXPIRY_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut uncommitted = false;
            while (inflight.len() as u64) < self.max_inflight && inflight_bytes < self.max_bytes {
                let q = {
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
                inflight_bytes += q.write.size();
                inflight.push(attempt(js.clone(), q, None));
            }
            let store_commits = async {
                match committed.as_mut() {
                    Some(c) if uncommitted => c.changed().await.is_ok(),
                    _ => false,
                }
            };
            tokio::select! {
                true = store_commits => {}
                Some(done) = inflight.next(), if !inflight.is_empty() => {
                    let Attempt { queued, result } = done;
                    match result {
                        Ok(ack) => {
                            inflight_bytes -= queued.write.size();
                            self.stored(queued, &ack);
                        }
                        Err(e) => {
                            if e.kind() == PublishErrorKind::StreamNotFound {
                                self.missing.notify_one();
                            }
                            let kind = classify(&e);
                            let permanent = matches!(
                                kind,
                                IngestFailure::StreamFull | IngestFailure::TooLarge
                            );
                            if permanent || queued.write.qos0 {
                                inflight_bytes -= queued.write.size();
                                self.refuse(queued, kind);
                            } else if Instant::now() >= queued.deadline {
                                // Whatever the last attempt said, the write ran out of time.
                                inflight_bytes -= queued.write.size();
                                self.refuse(queued, IngestFailure::Timeout);
                            } else {
                                self.set_blocked(|| format!("writes are retried: {e}"));
                                inflight.push(attempt(js.clone(), queued, Some(RETRY_PAUSE)));
                            }
                        }
                    }
                }
                _ = self.wake.notified() => {}
                _ = tick.tick() => self.expire_queued(),
            }
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

    fn stored(&self, queued: Queued, ack: &PublishAck) {
        self.finish(&queued);
        let m = &self.metrics;
        if ack.duplicate {
            m.duplicates.increment(1);
        } else {
            m.acked.increment(1);
            m.acked_bytes.increment(queued.write.payload.len() as u64);
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

/// One send of a write and its ack.
struct Attempt {
    queued: Queued,
    result: Result<PublishAck, PublishError>,
}

fn attempt(
    js: jetstream::Context,
    queued: Queued,
    pause: Option<Duration>,
) -> BoxFuture<'static, Attempt> {
    async move {
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
        let w = &queued.write;
        let publish = PublishMessage::build()
            .payload(w.payload.clone())
            .headers(w.headers.clone());
        let result = match js.send_publish(w.subject.clone(), publish).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        Attempt { queued, result }
    }
    .boxed()
}

fn stream_missing(e: &async_nats::error::Error<GetStreamErrorKind>) -> bool {
    matches!(e.kind(), GetStreamErrorKind::JetStream(err) if err.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// What a failed publish means for the rule.
fn classify(e: &PublishError) -> IngestFailure {
    match e.kind() {
        PublishErrorKind::TimedOut => IngestFailure::Timeout,
        PublishErrorKind::StreamNotFound | PublishErrorKind::BrokenPipe => {
            IngestFailure::Unavailable
        }
        PublishErrorKind::MaxPayloadExceeded => IngestFailure::TooLarge,
        _ => {
            // JetStream's "store failed" (10077) is how a full stream with discard new refuses
            // (maximum bytes / messages exceeded).
            let full = std::error::Error::source(e)
                .and_then(|s| s.downcast_ref::<jetstream::Error>())
                .is_some_and(|j| j.error_code() == ErrorCode::STREAM_STORE_FAILED);
            if full {
                IngestFailure::StreamFull
            } else {
                IngestFailure::Other
            }
        }
    }
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
