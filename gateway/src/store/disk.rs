//! The embedded store: `[storage]` on disk, in one `redb` file, written by one thread with group
//! commit.
//!
//! `DiskStore` opens the file (`layout`), reads what is in flight (`load`), starts the writer
//! (`group_commit`) and hands it every change. With `sync = "batched"` changes return no mark:
//! acknowledgements go out at once, and a crash loses at most the batch.
//!
//! Why redb: a maintained, pure-Rust, crash-safe B-tree (copy-on-write pages, checksummed
//! commits) with ordered keys, so a session's messages are read back in queue order by a
//! range scan, and one fsync per commit (see BENCHMARKS.md, "Durability").
//!

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use parking_lot::Mutex;
use redb::{ReadableDatabase, ReadableTable};
use tracing::info;

use super::batch::{Batch, Op};
use super::group_commit::{Shared, Writer};
use super::layout::{open_database, quietly, unreadable, MessageKey, FILE, MESSAGES};
use super::load::{read_all, Decode};
use super::record;
use super::{Mark, Restored, SessionRecord, Store, StoreError, StoreStats};
use crate::config::{StorageConfig, StorageSync};
use crate::ingest::dedup::NewId;
use crate::message::Message;
use crate::metrics::StoreMetrics;
use crate::session::{Delivery, Session, Stage};

pub(crate) struct DiskStore {
    shared: Arc<Shared>,
    /// Read when opened (the writer then owns the database), taken by `load`.
    restored: Mutex<Option<Restored>>,
    path: PathBuf,
    /// Whether changes return marks to wait for (`sync = "always"`).
    acknowledge_durable: bool,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl DiskStore {
    /// Opens (or creates) the store in `config.dir` and starts its writer. A file that is not a
    /// sound store of ours is refused, never reset.
    pub(crate) fn open(
        config: &StorageConfig,
        metrics: &StoreMetrics,
    ) -> Result<DiskStore, StoreError> {
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| unreadable(&config.dir, format!("cannot create the directory: {e}")))?;
        let path = config.dir.join(FILE);
        let db = open_database(&path)?;
        let replayed = quietly(|| super::journal::replay(&db))
            .unwrap_or_else(|_| Err("damaged: the database engine failed reading it".into()))
            .map_err(|e| unreadable(&path, e))?;
        if replayed > 0 {
            info!(path = %path.display(), entries = replayed, "store journal replayed");
        }
        // Queued messages stay on disk: each session's are read back as its client drains them.
        let restored = quietly(|| read_all(&db, Decode::InFlight))
            .unwrap_or_else(|_| Err("damaged: the database engine failed reading it".into()))
            .map_err(|e| unreadable(&path, e))?;
        let messages = restored
            .sessions
            .iter()
            .map(|s| s.pending.queue.len() + s.pending.inflight.len() + s.stored as usize)
            .sum::<usize>();
        let sessions = restored.sessions.len() as u64;
        let shared = Arc::new(Shared::new(db, path.clone(), sessions, messages as u64));
        let delay = Duration::from_millis(u64::from(config.commit_delay_ms));
        let in_flight = restored
            .sessions
            .iter()
            .flat_map(|s| {
                let c = &s.record.client_id;
                s.pending
                    .inflight
                    .iter()
                    .map(move |(_, _, d)| (c.clone(), d.seq))
            })
            .collect();
        let writer = Writer::spawn(shared.clone(), delay, metrics.clone(), in_flight)
            .map_err(|e| unreadable(&path, format!("cannot start the writer thread: {e}")))?;
        info!(path = %path.display(), sync = config.sync.as_str(), "store opened");
        Ok(DiskStore {
            shared,
            restored: Mutex::new(Some(restored)),
            path,
            acknowledge_durable: config.sync == StorageSync::Always,
            writer: Some(writer),
        })
    }

    fn record(&self, change: impl FnOnce(&mut Batch) -> Op) -> Mark {
        let mark = self.shared.record(change);
        if self.acknowledge_durable {
            mark
        } else {
            0
        }
    }
}

impl Drop for DiskStore {
    /// Commits what is pending and stops the writer.
    fn drop(&mut self) {
        self.shared.close();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Store for DiskStore {
    fn load(&self) -> Result<Restored, StoreError> {
        Ok(self.restored.lock().take().unwrap_or_default())
    }

    fn session_saved(&self, session: &SessionRecord) -> Mark {
        self.record(|_| Op::Session(Box::new(session.clone())))
    }

    fn session_removed(&self, client_id: &str) {
        self.record(|_| Op::SessionRemoved(Arc::from(client_id)));
    }

    fn queued(&self, client_id: &Arc<str>, delivery: &Delivery) -> Mark {
        self.record(|b| b.queued(client_id, delivery))
    }

    fn sent(&self, client_id: &Arc<str>, seq: u64, packet_id: u16, stage: Stage) -> Mark {
        self.record(|b| b.sent(client_id, seq, packet_id, stage))
    }

    fn settled(&self, client_id: &Arc<str>, seq: u64) {
        self.record(|b| b.settled(client_id, seq));
    }

    fn incoming_qos2(&self, client_id: &Arc<str>, packet_id: u16, held: bool) -> Mark {
        self.record(|_| Op::Incoming(client_id.clone(), packet_id, held))
    }

    fn retained(&self, topic: &ByteString, message: Option<&Arc<Message>>) -> Mark {
        self.record(|_| Op::Retained(topic.clone(), message.cloned()))
    }

    fn ingest_id(&self, client_id: &Arc<str>, new: NewId) -> Mark {
        self.shared.record(|_| Op::IngestId(client_id.clone(), new))
    }

    fn committed(&self) -> Option<tokio::sync::watch::Receiver<Mark>> {
        Some(self.shared.committed())
    }

    fn is_durable(&self, mark: Mark) -> bool {
        self.shared.is_durable(mark)
    }

    fn wake_when_durable(&self, mark: Mark, waiter: &Arc<Session>) {
        self.shared.wake_when_durable(mark, waiter);
    }

    fn available(&self) -> bool {
        self.shared.available()
    }

    fn read_queued(
        &self,
        client_id: &str,
        from: u64,
        until: u64,
        max: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let failed = |e: &dyn std::fmt::Display| {
            unreadable(
                &self.path,
                format!("reading the queue of {client_id:?}: {e}"),
            )
        };
        let db = self.shared.database().map_err(|e| failed(&e))?;
        let tx = db.begin_read().map_err(|e| failed(&e))?;
        let table = tx.open_table(MESSAGES).map_err(|e| failed(&e))?;
        let mut out = Vec::new();
        if until <= from {
            return Ok(out);
        }
        let (lo, hi) = MessageKey::bounds(client_id, from, until - 1);
        let range = table
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(|e| failed(&e))?;
        for entry in range.take(max) {
            let (k, v) = entry.map_err(|e| failed(&e))?;
            let (_, seq) =
                MessageKey::split(k.value()).ok_or_else(|| failed(&"a malformed key"))?;
            out.push(
                record::read_delivery(v.value(), seq)
                    .map_err(|e| failed(&e))?
                    .1,
            );
        }
        Ok(out)
    }

    fn stats(&self) -> StoreStats {
        let (sessions, messages) = self.shared.counts();
        StoreStats {
            size_bytes: std::fs::metadata(&self.path).map_or(0, |m| m.len()),
            sessions,
            messages,
            available: self.available(),
        }
    }
}
