//! The cluster's session store: persistent sessions kept in JetStream, so that they outlive the
//! node that held them (`[cluster] enabled`).
//!
//! One stream, `{prefix}_state` (file storage, created if missing), holds one subject per
//! session, `{prefix}.state.c{client id in unpadded URL-safe base64}` (as the owner records'
//! keys: lossless whatever the client id holds), with the session's change records in order
//! (`fold`): its record, each message queued, sent and settled, its inbound QoS 2 packet ids.
//! Changes are published as they happen, many in flight, those queued together as one stream
//! message per session subject (`writer`); a change's `Mark` is durable once JetStream acked it
//! and every earlier one, so a PUBACK to a publisher, a SUBACK or an outgoing QoS 2 PUBLISH
//! waits for JetStream exactly as it waits for the disk store's fsync. A session removed gets a tombstone and its subject is purged up to it; one adopted
//! by this node (taken over from another, live or dead) gets one snapshot record that
//! supersedes what was before; one whose records pile up is compacted (`writer`).
//!
//! In cluster mode this store replaces `[storage]` for sessions: a session's state must be
//! readable by whichever node its client reaches next, and two copies (disk and stream) would
//! need an order between them that a crash can break. Retained messages are the cluster's
//! retained stream's already (`cluster::retained`), so none are recorded here.
//!
//! Nothing is loaded at start: a node reads a session when its client claims it (`read`),
//! from the node that held it if that one answers (a live hand-over), from here otherwise.
//! What JetStream guarantees depends on the server: 2.9's file store writes each message to
//! the OS at once and fsyncs every 60 s (an ack survives a nats-server crash, not a power cut);
//! 2.10+ with `sync_interval: always` fsyncs each.

mod fold;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;
mod writer;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use async_nats::jetstream::{self, stream};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use bytestring::ByteString;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{Mark, Restored, SessionRecord, Store, StoreError, StoreStats};
use crate::clock::unix_millis;
use crate::message::Message;
use crate::metrics::StoreMetrics;
use crate::nats::Nats;
use crate::session::{Delivery, Pending, Session, Stage};

pub(crate) use fold::number;
use writer::{Marks, Record, Writer};

/// Longest subject key: the subject must stay within nats-server's control line.
const MAX_KEY: usize = 2_048;
/// Record bytes awaiting their acks beyond which the store refuses what persistent sessions
/// would have to keep (`available`): a JetStream that stopped answering holds at most this.
const MAX_BACKLOG: u64 = 64 * 1024 * 1024;

pub(crate) struct JetStreamStore {
    shared: Arc<Shared>,
    /// The last mark given, and the writer's queue: sent under one lock, so that the queue's
    /// order is the marks' order.
    tx: Mutex<(Mark, mpsc::UnboundedSender<Record>)>,
}

pub(super) struct Shared {
    js: jetstream::Context,
    nats: Arc<Nats>,
    stream_name: String,
    prefix: String,
    stream: Mutex<Option<stream::Stream>>,
    marks: Marks,
    /// Set while a write is being sent again.
    failing: AtomicBool,
    /// Record bytes queued or awaiting their acks.
    backlog: AtomicU64,
    /// Sessions being handed to another node live: their removal here records nothing, since
    /// the claiming node writes the session anew.
    released: Mutex<HashSet<Arc<str>>>,
    metrics: StoreMetrics,
}

/// A session marked as handed over until dropped (`JetStreamStore::releasing`).
pub(crate) struct Released {
    shared: Arc<Shared>,
    client_id: Arc<str>,
}

impl Drop for Released {
    fn drop(&mut self) {
        self.shared.released.lock().remove(&self.client_id);
    }
}

fn subject_of(prefix: &str, client_id: &str) -> Option<String> {
    (client_id.len() / 3 * 4 + 5 <= MAX_KEY)
        .then(|| format!("{prefix}.state.c{}", URL_SAFE_NO_PAD.encode(client_id)))
}

impl JetStreamStore {
    /// The store on `nats` for subjects under `prefix`; its writer starts at once (and sets up
    /// the stream when NATS is reachable). `id_prefix`: unique to this process.
    pub(crate) fn start(
        prefix: &str,
        id_prefix: String,
        nats: Arc<Nats>,
        metrics: StoreMetrics,
    ) -> Arc<JetStreamStore> {
        let shared = Arc::new(Shared {
            js: jetstream::new(nats.client.clone()),
            nats,
            stream_name: format!("{prefix}_state"),
            prefix: prefix.to_owned(),
            stream: Mutex::new(None),
            marks: Marks::new(),
            failing: AtomicBool::new(false),
            backlog: AtomicU64::new(0),
            released: Mutex::new(HashSet::new()),
            metrics: metrics.clone(),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let (compacted_tx, compacted) = mpsc::unbounded_channel();
        let writer = Writer {
            shared: shared.clone(),
            metrics,
            id_prefix,
            since_snapshot: Default::default(),
            compacted,
            compacted_tx,
            replays: writer::Replays::default(),
            last_sent: 0,
        };
        tokio::spawn(writer.run(rx));
        Arc::new(JetStreamStore {
            shared,
            tx: Mutex::new((0, tx)),
        })
    }

    fn record(&self, client_id: &str, payload: Vec<u8>) -> Mark {
        let Some(subject) = subject_of(&self.shared.prefix, client_id) else {
            // Such a client id is never claimed across the cluster either (`cluster::owners`).
            return 0;
        };
        self.shared
            .backlog
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        let mut tx = self.tx.lock();
        tx.0 += 1;
        let mark = tx.0;
        let record = Record {
            mark,
            client_id: Arc::from(client_id),
            subject,
            payload: Bytes::from(payload),
        };
        if tx.1.send(record).is_err() {
            // The writer is gone (the runtime is stopping): nothing will be acknowledged.
            warn!("session state stream writer gone; change not kept");
        }
        mark
    }

    /// Marks `client_id` as being handed to another node live, until the guard drops.
    pub(crate) fn releasing(&self, client_id: &Arc<str>) -> Released {
        self.shared.released.lock().insert(client_id.clone());
        Released {
            shared: self.shared.clone(),
            client_id: client_id.clone(),
        }
    }

    /// Waits (no later than `deadline`) until everything recorded so far is in JetStream: a
    /// node answers a take request only after its last changes to the session are stored, so
    /// that the claiming node's writes come after them.
    pub(crate) async fn flushed(&self, deadline: tokio::time::Instant) {
        let last = self.tx.lock().0;
        let mut committed = self.shared.marks.committed();
        let _ = tokio::time::timeout_at(deadline, committed.wait_for(|m| *m >= last)).await;
    }

    /// `client_id`'s session as its records in the stream leave it (a node that held it died,
    /// or restarted): `None` when there is none, or it has expired (then its records are
    /// removed).
    pub(crate) async fn read(
        &self,
        client_id: &str,
    ) -> Result<Option<(SessionRecord, Pending)>, String> {
        let Some(subject) = subject_of(&self.shared.prefix, client_id) else {
            return Ok(None);
        };
        let Some((read, _, last_at)) = self.shared.read(client_id, &subject).await? else {
            return Ok(None);
        };
        if fold::expired(&read.record, last_at, unix_millis()) {
            debug!(client = %client_id, "stored session expired while its node was gone");
            self.record(client_id, fold::removed());
            return Ok(None);
        }
        Ok(Some((read.record, read.pending)))
    }
}

impl JetStreamStore {
    /// Whether the stream holds records of `client_id`'s session (a clean session never has
    /// any): one lookup of its subject's last record, not a read of the session.
    pub(crate) async fn holds(&self, client_id: &str) -> Result<bool, String> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        let Some(subject) = subject_of(&self.shared.prefix, client_id) else {
            return Ok(false);
        };
        let stream = self.shared.ensure_stream().await;
        match stream.direct_get_last_for_subject(&subject).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(false),
            Err(e) => Err(format!("looking the session up: {e}")),
        }
    }
}

impl Shared {
    /// Opens (or creates) the stream, retrying until it exists.
    async fn ensure_stream(&self) -> stream::Stream {
        loop {
            if let Some(s) = self.stream.lock().clone() {
                return s;
            }
            let config = stream::Config {
                name: self.stream_name.clone(),
                description: Some("gateway: persistent sessions' change records".to_owned()),
                subjects: vec![format!("{}.state.>", self.prefix)],
                storage: stream::StorageType::File,
                allow_direct: true,
                ..stream::Config::default()
            };
            match self.js.get_or_create_stream(config).await {
                Ok(s) => {
                    *self.stream.lock() = Some(s.clone());
                    return s;
                }
                Err(e) => {
                    if !self.failing.swap(true, Ordering::Relaxed) {
                        warn!("session state stream not set up yet: {e}");
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
            }
        }
    }

    /// Sets the stream up again at the next use.
    fn forget_stream(&self) {
        *self.stream.lock() = None;
    }

    /// Purges `subject`'s records before stream sequence `before`.
    async fn purge_before(self: Arc<Self>, subject: String, before: u64) {
        let stream = self.ensure_stream().await;
        if let Err(e) = stream.purge().filter(subject).sequence(before).await {
            // Folding skips what a snapshot or tombstone superseded: only space is lost.
            self.metrics.errors.increment(1);
            debug!("session state stream: purge failed: {e}");
        }
    }

    /// Folds `subject`'s records: the session, the stream sequence of its last record and that
    /// record's time (unix ms); `None` when it holds no session.
    async fn read(
        &self,
        client_id: &str,
        subject: &str,
    ) -> Result<Option<(fold::Read, u64, u64)>, String> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        let stream = self.ensure_stream().await;
        let last = match stream.direct_get_last_for_subject(subject).await {
            Ok(m) => m,
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("reading the session's last record: {e}")),
        };
        let last_at = u64::try_from(last.time.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        // One ordered consumer on the subject: its records come in batches, not a round trip
        // each (a session read back at CONNECT must fit the handshake's deadline).
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: subject.to_owned(),
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("reading the session's records: {e}"))?;
        let mut records = consumer
            .messages()
            .await
            .map_err(|e| format!("reading the session's records: {e}"))?;
        let mut folded = fold::Folded::default();
        while let Some(m) = records.next().await {
            let m = m.map_err(|e| format!("reading the session's records: {e}"))?;
            let seq = m
                .info()
                .map_err(|e| format!("a record without its sequence: {e}"))?
                .stream_sequence;
            let payload = m.payload.clone();
            folded
                .add(seq, payload)
                .map_err(|e| format!("record {seq}: {e}"))?;
            if seq >= last.sequence {
                break;
            }
        }
        let read = folded.finish(client_id).map_err(|e| e.to_string())?;
        Ok(read.map(|r| (r, last.sequence, last_at)))
    }

    /// Writes `subject`'s session as one compaction snapshot and purges the records it covers.
    async fn compact(&self, client_id: &str, subject: &str) {
        let read = match self.read(client_id, subject).await {
            Ok(Some(read)) => read,
            Ok(None) => return,
            Err(e) => {
                debug!(client = %client_id, "session state: not compacted: {e}");
                return;
            }
        };
        let (read, covers, _) = read;
        let payload = fold::compacted(covers, &read.record, &read.pending);
        let stored = match self.js.publish(subject.to_owned(), payload.into()).await {
            Ok(ack) => ack.await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match stored {
            Ok(_) => {
                let stream = self.ensure_stream().await;
                let purged = stream.purge().filter(subject).sequence(covers + 1).await;
                if let Err(e) = purged {
                    debug!(client = %client_id, "session state: compacted records not purged: {e}");
                }
            }
            Err(e) => debug!(client = %client_id, "session state: snapshot not written: {e}"),
        }
    }
}

impl Store for JetStreamStore {
    fn load(&self) -> Result<Restored, StoreError> {
        Ok(Restored::default())
    }

    fn session_saved(&self, session: &SessionRecord) -> Mark {
        self.record(&session.client_id, fold::session(session))
    }

    fn session_removed(&self, client_id: &str) {
        if self.shared.released.lock().contains(client_id) {
            return;
        }
        self.record(client_id, fold::removed());
    }

    fn adopted(&self, record: &SessionRecord, pending: &Pending) -> Mark {
        self.record(&record.client_id, fold::adopted(record, pending))
    }

    fn ingest_id(&self, client_id: &Arc<str>, new: crate::ingest::dedup::NewId) -> Mark {
        self.record(client_id, fold::ingest_id(new))
    }

    fn queued(&self, client_id: &Arc<str>, delivery: &Delivery) -> Mark {
        self.record(client_id, fold::queued(delivery))
    }

    fn sent(&self, client_id: &Arc<str>, seq: u64, packet_id: u16, stage: Stage) -> Mark {
        self.record(client_id, fold::sent(seq, packet_id, stage))
    }

    fn settled(&self, client_id: &Arc<str>, seq: u64) {
        self.record(client_id, fold::settled(seq));
    }

    fn incoming_qos2(&self, client_id: &Arc<str>, packet_id: u16, held: bool) -> Mark {
        self.record(client_id, fold::incoming(packet_id, held))
    }

    fn retained(&self, _: &ByteString, _: Option<&Arc<Message>>) -> Mark {
        0
    }

    fn committed(&self) -> Option<tokio::sync::watch::Receiver<Mark>> {
        Some(self.shared.marks.committed())
    }

    fn is_durable(&self, mark: Mark) -> bool {
        self.shared.marks.is_durable(mark)
    }

    fn wake_when_durable(&self, mark: Mark, waiter: &Arc<Session>) {
        self.shared.marks.wake_when_durable(mark, waiter);
    }

    fn read_queued(&self, _: &str, _: u64, _: u64, _: usize) -> Result<Vec<Delivery>, StoreError> {
        // A session read back is whole in memory (its queue is bounded as when it was queued).
        Ok(Vec::new())
    }

    fn available(&self) -> bool {
        let s = &self.shared;
        s.nats.is_connected() && writer::writes(&s.failing, &s.backlog, MAX_BACKLOG)
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            // The stream's size is nats-server's to report (its `/jsz`); sessions are counted
            // by the registry.
            size_bytes: 0,
            sessions: 0,
            messages: 0,
            available: self.available(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_hold_any_client_id_losslessly() {
        for id in ["", "a", "dev/1.x *>", "\u{0}\u{1F600}"] {
            let s = subject_of("gw", id).expect("fits");
            let key = s.strip_prefix("gw.state.c").expect("prefix");
            assert!(key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(URL_SAFE_NO_PAD.decode(key).unwrap(), id.as_bytes());
        }
        assert!(subject_of("gw", &"x".repeat(1600)).is_none());
    }
}
