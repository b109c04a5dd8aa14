//! The state stream's writer: one task publishes every change record in mark order, many
//! awaiting their JetStream acks at once, and advances the durable mark as they are acked in
//! order.
//!
//! What it finds queued together goes out as one unit: the records of one session's subject in
//! it as one stream message (`fold::batch`), so that a persistent subscriber taking a burst (a
//! record queued, sent and settled per message) costs JetStream one write per burst, not three
//! per message. The durable mark moves past a unit once every message of it is acked.
//!
//! A message whose publish fails (JetStream unreachable, the stream gone, a timeout) holds the
//! durable mark and is sent again, with the same `Nats-Msg-Id` (the stream's duplicate window
//! stores it once), until it is acked; meanwhile the store says it is not `available`. Acks
//! of the later messages already in flight are taken after it: those may then lie before it
//! in the stream. Folding tolerates that for a message's fate (queued, sent, settled), but not
//! for what a later record sets again (an inbound QoS 2 id held then released, the session's
//! record, a tombstone): so each later message of its subject that was sent before it was
//! stored is sent once more after it (`Replays`), and the durable mark waits for those too.
//! Replaying is safe because every record sets state rather than changing it: applied again
//! in order after the late one, the subject folds as its records did in the order made.
//!
//! After a record that starts its session anew (tombstone, snapshot) is stored, the records
//! before it on its subject are purged; such a record ends its unit and goes out alone. A
//! session whose records since its last snapshot exceed `COMPACT_BYTES` is read back and
//! written as one compaction snapshot, and its older records purged: a session's subject holds
//! about its live state plus `COMPACT_BYTES`.

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

/// Units awaiting their acks at once.
const WINDOW: usize = 4_096;
/// Records taken into one unit at most, and record bytes in one stream message at most (well
/// under nats-server's default `max_payload` of 1 MiB; a larger record goes alone).
const UNIT_RECORDS: usize = 1_024;
const MESSAGE_BYTES: usize = 256 * 1024;
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

/// One stream message: a record, or several of one subject in a batch.
struct Write {
    /// The mark of its last record.
    mark: Mark,
    client_id: Arc<str>,
    subject: String,
    payload: Bytes,
    /// Its records' own bytes, as `Shared::backlog` counted them.
    record_bytes: u64,
}

impl Write {
    fn of(records: Vec<Record>) -> Option<Write> {
        let last = records.last()?;
        let (mark, client_id, subject) = (last.mark, last.client_id.clone(), last.subject.clone());
        let record_bytes = records.iter().map(|r| r.payload.len() as u64).sum();
        let payload = if records.len() == 1 {
            records.into_iter().next()?.payload
        } else {
            Bytes::from(fold::batch(records.iter().map(|r| &r.payload[..])))
        };
        Some(Write {
            mark,
            client_id,
            subject,
            payload,
            record_bytes,
        })
    }
}

/// The records taken together, grouped into stream messages in the order each group began.
struct Unit {
    groups: Vec<Vec<Record>>,
    /// Per subject, its open group (the last one begun) and that group's bytes.
    open: HashMap<String, (usize, usize)>,
    taken: usize,
}

impl Unit {
    fn new() -> Unit {
        Unit {
            groups: Vec::new(),
            open: HashMap::new(),
            taken: 0,
        }
    }

    fn add(&mut self, r: Record) {
        self.taken += 1;
        let len = r.payload.len();
        match self.open.get_mut(&r.subject) {
            Some((at, bytes)) if *bytes + len <= MESSAGE_BYTES => {
                *bytes += len;
                self.groups[*at].push(r);
            }
            _ => {
                self.open
                    .insert(r.subject.clone(), (self.groups.len(), len));
                self.groups.push(vec![r]);
            }
        }
    }

    fn writes(self) -> Vec<Write> {
        self.groups.into_iter().filter_map(Write::of).collect()
    }
}

type Acked = (Vec<(Write, Result<PublishAck, PublishError>)>, Instant);

/// What piled up on one session's subject since its last snapshot.
#[derive(Default)]
pub(super) struct Pile {
    bytes: u64,
    /// `bytes` when the running compaction began (what it covers, about).
    compacting: Option<u64>,
}

/// Later writes to send again because an earlier one of their subject was stored late: per
/// failed write, its subject and the marks after it sent by the time it was stored.
#[derive(Default)]
pub(super) struct Replays {
    owed: Vec<(String, std::ops::RangeInclusive<Mark>)>,
}

impl Replays {
    /// A write of `subject` at `mark` failed and is stored now; `last_sent` is the last mark
    /// published so far.
    fn stored_late(&mut self, subject: &str, mark: Mark, last_sent: Mark) {
        if last_sent > mark {
            self.owed.push((subject.to_owned(), mark + 1..=last_sent));
        }
    }

    /// Whether the write of `subject` at `mark`, stored at its first try, must go again. Writes
    /// are answered in mark order, so what lies behind `mark` is forgotten.
    fn owed(&mut self, subject: &str, mark: Mark) -> bool {
        self.owed.retain(|(_, marks)| *marks.end() >= mark);
        self.owed
            .iter()
            .any(|(s, marks)| s == subject && marks.contains(&mark))
    }
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
    pub(super) replays: Replays,
    /// The mark of the last write published.
    pub(super) last_sent: Mark,
}

impl Writer {
    pub(super) async fn run(mut self, mut records: mpsc::UnboundedReceiver<Record>) {
        self.shared.ensure_stream().await;
        let mut inflight: FuturesOrdered<futures_util::future::BoxFuture<'static, Acked>> =
            FuturesOrdered::new();
        loop {
            tokio::select! {
                biased;
                Some((acked, at)) = inflight.next(), if !inflight.is_empty() => {
                    self.acked(acked, at).await;
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
                    let writes = take_unit(record, &mut records);
                    let at = Instant::now();
                    let mut sent = Vec::with_capacity(writes.len());
                    for w in &writes {
                        sent.push(self.send(w, "").await);
                        self.last_sent = self.last_sent.max(w.mark);
                    }
                    inflight.push_back(
                        async move {
                            let mut acked = Vec::with_capacity(writes.len());
                            for (w, sent) in writes.into_iter().zip(sent) {
                                let ack = match sent {
                                    Ok(ack) => ack.await,
                                    Err(e) => Err(e),
                                };
                                acked.push((w, ack));
                            }
                            (acked, at)
                        }
                        .boxed(),
                    );
                }
            }
        }
        while let Some((acked, at)) = inflight.next().await {
            self.acked(acked, at).await;
        }
    }

    /// Publishes `r` with a message id of its mark and `attempt` ("" at first and for a retry,
    /// which JetStream must then store once; "r" for a replay, which it must store again).
    async fn send(
        &self,
        r: &Write,
        attempt: &str,
    ) -> Result<async_nats::jetstream::context::PublishAckFuture, PublishError> {
        let id = format!("{}.{}{attempt}", self.id_prefix, r.mark);
        let message = PublishMessage::build()
            .payload(r.payload.clone())
            .message_id(id);
        self.shared
            .js
            .send_publish(r.subject.clone(), message)
            .await
    }

    /// A unit's publishes answered: each that failed is sent again until stored, then the
    /// durable mark moves past the unit.
    async fn acked(&mut self, acked: Vec<(Write, Result<PublishAck, PublishError>)>, at: Instant) {
        let mut last = None;
        for (write, ack) in acked {
            last = Some(write.mark);
            self.stored(write, at, ack).await;
        }
        if let Some(mark) = last {
            self.shared.marks.advance(mark);
        }
    }

    /// One stream message's publish answered: sent again until stored (and once more if an
    /// earlier write of its subject was stored after it), then counted, and its subject purged
    /// or compacted as it asks.
    async fn stored(
        &mut self,
        record: Write,
        at: Instant,
        acked: Result<PublishAck, PublishError>,
    ) {
        let ack = match acked {
            // Its first sequence lies before the late one's: the purge below uses the replay's.
            Ok(_) if self.replays.owed(&record.subject, record.mark) => {
                self.until_stored(&record, "r", None).await
            }
            Ok(ack) => ack,
            Err(e) => {
                let ack = self.until_stored(&record, "", Some(e)).await;
                self.replays
                    .stored_late(&record.subject, record.mark, self.last_sent);
                ack
            }
        };
        let shared = self.shared.clone();
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
            .fetch_sub(record.record_bytes, Ordering::Relaxed);
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

    /// Sends `record` (again) until JetStream stores it; `failed`: why its last publish failed.
    async fn until_stored(
        &self,
        record: &Write,
        attempt: &str,
        mut failed: Option<PublishError>,
    ) -> PublishAck {
        let shared = &self.shared;
        loop {
            if let Some(e) = failed.take() {
                self.metrics.errors.increment(1);
                if !shared.failing.swap(true, Ordering::Relaxed) {
                    warn!("session state stream: a write failed, holding acknowledgements until it is stored: {e}");
                }
                tokio::time::sleep(RETRY).await;
                // The stream may be gone (deleted, or a server restarted without its store).
                shared.forget_stream();
                shared.ensure_stream().await;
            }
            let acked = match self.send(record, attempt).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match acked {
                Ok(ack) => return ack,
                Err(e) => failed = Some(e),
            }
        }
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

/// `first` and the records queued behind it, up to `UNIT_RECORDS` or a record that starts its
/// session anew (which goes out alone, last, so that the purge after it never reaches a record
/// of its subject that was meant to follow it), as stream messages.
fn take_unit(first: Record, queue: &mut mpsc::UnboundedReceiver<Record>) -> Vec<Write> {
    let mut unit = Unit::new();
    let mut next = Some(first);
    while let Some(r) = next.take() {
        if fold::supersedes(&r.payload) {
            let mut writes = unit.writes();
            writes.extend(Write::of(vec![r]));
            return writes;
        }
        unit.add(r);
        if unit.taken < UNIT_RECORDS {
            next = queue.try_recv().ok();
        }
    }
    unit.writes()
}

/// Whether `available` may say yes: no failing write, and a backlog below `max`.
pub(super) fn writes(failing: &AtomicBool, backlog: &AtomicU64, max: u64) -> bool {
    !failing.load(Ordering::Relaxed) && backlog.load(Ordering::Relaxed) < max
}

#[cfg(test)]
mod tests {
    use super::Replays;

    #[test]
    fn what_a_late_write_owes_is_the_later_writes_of_its_subject_already_sent() {
        let mut r = Replays::default();
        // The write at mark 5 of "a" failed; marks up to 9 were sent when it was stored.
        r.stored_late("a", 5, 9);
        assert!(!r.owed("b", 6), "another subject");
        assert!(r.owed("a", 7));
        assert!(r.owed("a", 9));
        assert!(!r.owed("a", 10), "sent after it was stored");
        assert!(!r.owed("a", 8), "forgotten once answers passed it");
        // Nothing was sent after it: nothing owed.
        r.stored_late("a", 12, 12);
        assert!(!r.owed("a", 12));
        assert!(r.owed.is_empty());
    }
}
