//! The state stream's writer: one task publishes every change record in mark order, many
//! awaiting their JetStream acks at once, and advances the durable mark as they are acked in
//! order.
//!
//! A record whose publish fails (JetStream unreachable, the stream gone, a timeout) holds the
//! durable mark and is sent again, with the same `Nats-Msg-Id` (the stream's duplicate window
//! stores it once), until it is acked; meanwhile the store says it is not `available`. Acks
//! of the later records already in flight are taken after it: those records may then lie
//! before it in the stream, which folding tolerates (`fold`).
//!
//! After a record that starts its session anew (tombstone, snapshot) is stored, the records
//! before it on its subject are purged. A session whose records since its last snapshot exceed
//! `COMPACT_BYTES` is read back and written as one compaction snapshot, and its older records
//! purged: a session's subject holds about its live state plus `COMPACT_BYTES`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use bytes::Bytes;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::super::Mark;
use super::{fold, Shared};
use crate::metrics::StoreMetrics;
use crate::session::Session;

/// Records awaiting their acks at once.
const WINDOW: usize = 4_096;
/// Pause before a failed publish is sent again.
const RETRY: Duration = Duration::from_millis(200);
/// Record bytes on one session's subject since its last snapshot before it is compacted.
pub(super) const COMPACT_BYTES: u64 = 256 * 1024;

/// A change on its way to the stream.
pub(super) struct Record {
    pub(super) mark: Mark,
    pub(super) client_id: Arc<str>,
    pub(super) subject: String,
    pub(super) payload: Bytes,
}

/// Durable marks and who waits for them.
pub(super) struct Marks {
    durable: AtomicU64,
    committed: watch::Sender<Mark>,
    waiters: Mutex<Vec<(Mark, Weak<Session>)>>,
}

impl Marks {
    pub(super) fn new() -> Marks {
        Marks {
            durable: AtomicU64::new(0),
            committed: watch::Sender::new(0),
            waiters: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn is_durable(&self, mark: Mark) -> bool {
        self.durable.load(Ordering::Acquire) >= mark
    }

    pub(super) fn committed(&self) -> watch::Receiver<Mark> {
        self.committed.subscribe()
    }

    pub(super) fn wake_when_durable(&self, mark: Mark, waiter: &Arc<Session>) {
        self.waiters.lock().push((mark, Arc::downgrade(waiter)));
        // The writer may have advanced before the waiter was in place.
        if self.is_durable(mark) {
            waiter.wake();
        }
    }

    fn advance(&self, mark: Mark) {
        self.durable.store(mark, Ordering::Release);
        self.committed.send_replace(mark);
        let mut waiting = std::mem::take(&mut *self.waiters.lock());
        waiting.retain(|(m, session)| {
            if *m > mark {
                return true;
            }
            if let Some(s) = session.upgrade() {
                s.wake();
            }
            false
        });
        if !waiting.is_empty() {
            self.waiters.lock().append(&mut waiting);
        }
    }
}

type Acked = (Record, Instant, Result<PublishAck, PublishError>);

/// What piled up on one session's subject since its last snapshot.
#[derive(Default)]
pub(super) struct Pile {
    bytes: u64,
    /// `bytes` when the running compaction began (what it covers, about).
    compacting: Option<u64>,
}

pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) metrics: StoreMetrics,
    /// A message id prefix unique to this process, so that only resends are de-duplicated.
    pub(super) id_prefix: String,
    /// Per subject: its record bytes since its last snapshot, and its compaction running.
    pub(super) since_snapshot: HashMap<String, Pile>,
    pub(super) compacted: mpsc::UnboundedReceiver<(Arc<str>, String)>,
    pub(super) compacted_tx: mpsc::UnboundedSender<(Arc<str>, String)>,
}

impl Writer {
    pub(super) async fn run(mut self, mut records: mpsc::UnboundedReceiver<Record>) {
        self.shared.ensure_stream().await;
        let mut inflight: FuturesOrdered<futures_util::future::BoxFuture<'static, Acked>> =
            FuturesOrdered::new();
        loop {
            tokio::select! {
                biased;
                Some((record, at, acked)) = inflight.next(), if !inflight.is_empty() => {
                    self.acked(record, at, acked).await;
                }
                Some((client_id, subject)) = self.compacted.recv() => {
                    // What came while it ran is left: compacted again at once if that is a
                    // pile too, so a subject never holds much more than `COMPACT_BYTES`.
                    if let Some(pile) = self.since_snapshot.get_mut(&subject) {
                        pile.bytes = pile.bytes.saturating_sub(pile.compacting.take().unwrap_or(0));
                    }
                    self.maybe_compact(client_id, subject);
                }
                record = records.recv(), if inflight.len() < WINDOW => {
                    let Some(record) = record else { break };
                    let at = Instant::now();
                    let sent = self.send(&record).await;
                    inflight.push_back(
                        async move {
                            let acked = match sent {
                                Ok(ack) => ack.await,
                                Err(e) => Err(e),
                            };
                            (record, at, acked)
                        }
                        .boxed(),
                    );
                }
            }
        }
        while let Some((record, at, acked)) = inflight.next().await {
            self.acked(record, at, acked).await;
        }
    }

    async fn send(
        &self,
        r: &Record,
    ) -> Result<async_nats::jetstream::context::PublishAckFuture, PublishError> {
        let id = format!("{}.{}", self.id_prefix, r.mark);
        let message = PublishMessage::build()
            .payload(r.payload.clone())
            .message_id(id);
        self.shared
            .js
            .send_publish(r.subject.clone(), message)
            .await
    }

    /// A record's publish answered: on success the durable mark moves to it, on failure it is
    /// sent again until stored.
    async fn acked(
        &mut self,
        record: Record,
        at: Instant,
        mut acked: Result<PublishAck, PublishError>,
    ) {
        let shared = self.shared.clone();
        while let Err(e) = acked {
            self.metrics.errors.increment(1);
            if !shared.failing.swap(true, Ordering::Relaxed) {
                warn!("session state stream: a write failed, holding acknowledgements until it is stored: {e}");
            }
            tokio::time::sleep(RETRY).await;
            // The stream may be gone (deleted, or a server restarted without its store).
            shared.forget_stream();
            shared.ensure_stream().await;
            acked = match self.send(&record).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
        }
        let Ok(ack) = acked else { return };
        if shared.failing.swap(false, Ordering::Relaxed) {
            info!("session state stream writes again");
        }
        let m = &self.metrics;
        m.commits.increment(1);
        m.commit_seconds.record(at.elapsed().as_secs_f64());
        m.written_bytes
            .increment((record.subject.len() + record.payload.len()) as u64);
        shared
            .backlog
            .fetch_sub(record.payload.len() as u64, Ordering::Relaxed);
        shared.marks.advance(record.mark);
        if fold::supersedes(&record.payload) {
            if record.payload == fold::removed() {
                self.since_snapshot.remove(&record.subject);
            } else if let Some(pile) = self.since_snapshot.get_mut(&record.subject) {
                pile.bytes = 0;
            }
            tokio::spawn(shared.clone().purge_before(record.subject, ack.sequence));
            return;
        }
        let pile = self
            .since_snapshot
            .entry(record.subject.clone())
            .or_default();
        // What the stream holds of it: subject, message id and payload.
        pile.bytes +=
            (record.subject.len() + self.id_prefix.len() + 21 + record.payload.len()) as u64;
        self.maybe_compact(record.client_id, record.subject);
    }

    /// Starts compacting `subject` if its records pile up and no compaction of it runs.
    fn maybe_compact(&mut self, client_id: Arc<str>, subject: String) {
        let Some(pile) = self.since_snapshot.get_mut(&subject) else {
            return;
        };
        if pile.bytes < COMPACT_BYTES || pile.compacting.is_some() {
            return;
        }
        pile.compacting = Some(pile.bytes);
        let shared = self.shared.clone();
        let done = self.compacted_tx.clone();
        tokio::spawn(async move {
            shared.compact(&client_id, &subject).await;
            let _ = done.send((client_id, subject));
        });
    }
}

/// Whether `available` may say yes: no failing write, and a backlog below `max`.
pub(super) fn writes(failing: &AtomicBool, backlog: &AtomicU64, max: u64) -> bool {
    !failing.load(Ordering::Relaxed) && backlog.load(Ordering::Relaxed) < max
}
