//! The embedded store: `[storage]` on disk, in one `redb` file, written by one thread with group
//! commit.
//!
//! Sessions' tasks record changes without waiting: each change is appended to the pending batch
//! under one short lock, which also numbers it (its `Mark`). The writer thread takes the whole
//! batch, waits `commit_delay_ms` first so that more sessions' changes join it, applies it in one
//! transaction and commits with an fsync; then every mark up to the batch's last is durable, and
//! the sessions waiting for one are woken to send their PUBACK / PUBREC. A message queued and
//! acknowledged within the same batch never touches the disk. With `sync = "batched"` changes
//! return no mark: acknowledgements go out at once, and a crash loses at most the batch.
//!
//! Why redb: a maintained, pure-Rust, crash-safe B-tree (copy-on-write pages, checksummed
//! commits) with ordered keys, so a session's messages are read back in queue order by a
//! range scan, and one fsync per commit (see BENCHMARKS.md, "Durability").
//!
//! Tables: `sessions` (client id -> record), `messages` ((client id, seq) -> delivery),
//! `flows` ((client id, seq) -> packet id and stage, once sent), `incoming` ((client id,
//! packet id) -> (), inbound QoS 2 awaiting PUBREL), `retained` (topic -> message), `meta`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytestring::ByteString;
use parking_lot::{Condvar, Mutex};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableHandle,
    WriteTransaction,
};
use tracing::{error, info};

use super::record;
use super::{Mark, Restored, SessionRecord, Store, StoreError, StoreStats, StoredSession};
use crate::config::{StorageConfig, StorageSync};
use crate::message::Message;
use crate::metrics::StoreMetrics;
use crate::session::{Delivery, Pending, Session, Stage};

/// The file inside `[storage] dir`.
pub(crate) const FILE: &str = "store.redb";
/// What `meta.format` holds in a store of this layout.
const FORMAT: &str = "gateway-store-1";

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
const FLOWS: TableDefinition<(&str, u64), (u16, u8)> = TableDefinition::new("flows");
const INCOMING: TableDefinition<(&str, u16), ()> = TableDefinition::new("incoming");
const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");

/// redb's page cache (its default is 1 GiB): the store's working set is the recent writes and
/// the queues read back at start, and its cache counts in the gateway's memory like any session.
const CACHE_BYTES: usize = 64 << 20;

/// How long a failed commit waits before it is tried again.
const RETRY: Duration = Duration::from_millis(100);

/// One recorded change, in the order recorded.
enum Op {
    Session(SessionRecord),
    SessionRemoved(Arc<str>),
    Queued(Arc<str>, Delivery),
    Sent(Arc<str>, u64, u16, Stage),
    Settled(Arc<str>, u64),
    Incoming(Arc<str>, u16, bool),
    Retained(ByteString, Option<Arc<Message>>),
}

#[derive(Default)]
struct Recorded {
    ops: Vec<Op>,
    /// The mark of the last op recorded.
    last: Mark,
    closing: bool,
}

struct Shared {
    pending: Mutex<Recorded>,
    recorded: Condvar,
    /// Every mark up to this one is on disk.
    durable: AtomicU64,
    waiters: Mutex<Vec<(Mark, Weak<Session>)>>,
    /// Cleared while commits fail.
    available: AtomicBool,
    /// What the committed store holds.
    sessions: AtomicU64,
    messages: AtomicU64,
    /// The database, shared by the writer and the readers of stored queues. None after a failed
    /// commit: redb keeps an I/O failure (a full disk) latched until the database is opened
    /// again, which the writer's next attempt does.
    db: Mutex<Option<Arc<Database>>>,
    path: PathBuf,
}

pub(crate) struct DiskStore {
    shared: Arc<Shared>,
    /// Read when opened (the writer then owns the database), taken by `load`.
    restored: Mutex<Option<Restored>>,
    path: PathBuf,
    /// Whether changes return marks to wait for (`sync = "always"`).
    acknowledge_durable: bool,
    writer: Option<std::thread::JoinHandle<()>>,
}

fn unreadable(path: &Path, what: impl std::fmt::Display) -> StoreError {
    StoreError::Unreadable {
        path: path.to_owned(),
        what: what.to_string(),
    }
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
        // Queued messages stay on disk: each session's are read back as its client drains them.
        let restored = quietly(|| read_all(&db, Decode::InFlight))
            .unwrap_or_else(|_| Err("damaged: the database engine failed reading it".into()))
            .map_err(|e| unreadable(&path, e))?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Recorded::default()),
            recorded: Condvar::new(),
            durable: AtomicU64::new(0),
            waiters: Mutex::new(Vec::new()),
            available: AtomicBool::new(true),
            sessions: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            db: Mutex::new(Some(Arc::new(db))),
            path: path.clone(),
        });
        let writer = Writer {
            shared: shared.clone(),
            delay: Duration::from_millis(u64::from(config.commit_delay_ms)),
            metrics: metrics.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run())
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

    fn record(&self, op: Op) -> Mark {
        let mut p = self.shared.pending.lock();
        p.ops.push(op);
        p.last += 1;
        let mark = p.last;
        drop(p);
        self.shared.recorded.notify_one();
        if self.acknowledge_durable {
            mark
        } else {
            0
        }
    }
}

/// Opens the file as redb, checks every page against its checksum and that it is a store of
/// ours (a new file becomes one). redb asserts on damaged pages it reads unchecked, so the whole
/// file is verified before anything is read from it.
pub(crate) fn open_database(path: &Path) -> Result<Database, StoreError> {
    // After a crash redb rebuilds its allocator state from the committed tree on open; data
    // is never reset. A file it cannot read is reported, not replaced.
    let opened = quietly(|| {
        let mut db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .set_repair_callback(|_| {})
            .create(path)
            .map_err(|e| unreadable(path, e))?;
        match db.check_integrity() {
            Ok(true) => Ok(db),
            Ok(false) => {
                tracing::warn!(path = %path.display(), "store repaired after an unclean stop");
                Ok(db)
            }
            Err(e) => Err(unreadable(path, format!("damaged: {e}"))),
        }
    });
    let db = opened
        .map_err(|_| unreadable(path, "damaged: the database engine failed reading it"))??;
    let tx = db.begin_write().map_err(|e| unreadable(path, e))?;
    {
        let mut meta = tx.open_table(META).map_err(|e| unreadable(path, e))?;
        let format = meta
            .get("format")
            .map_err(|e| unreadable(path, e))?
            .map(|v| v.value().to_owned());
        match format.as_deref() {
            Some(FORMAT) => {}
            Some(other) => {
                return Err(unreadable(
                    path,
                    format!("a store of another format ({other:?}, expected {FORMAT:?})"),
                ))
            }
            None => {
                let empty = tx
                    .list_tables()
                    .map_err(|e| unreadable(path, e))?
                    .all(|t| t.name() == META.name());
                if !empty {
                    return Err(unreadable(path, "not a gateway store (no format record)"));
                }
                meta.insert("format", FORMAT)
                    .map_err(|e| unreadable(path, e))?;
            }
        }
    }
    tx.commit().map_err(|e| unreadable(path, e))?;
    Ok(db)
}

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic into an error without the panic's report: a damaged store is said
/// in one line by the caller, not in a backtrace. Panics elsewhere are reported as before.
fn quietly<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    outcome
}

impl Drop for DiskStore {
    /// Commits what is pending and stops the writer.
    fn drop(&mut self) {
        self.shared.pending.lock().closing = true;
        self.shared.recorded.notify_one();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Store for DiskStore {
    fn load(&self) -> Result<Restored, StoreError> {
        let restored = self.restored.lock().take().unwrap_or_default();
        let messages = restored
            .sessions
            .iter()
            .map(|s| s.pending.queue.len() + s.pending.inflight.len() + s.stored as usize)
            .sum::<usize>();
        let shared = &self.shared;
        shared
            .sessions
            .store(restored.sessions.len() as u64, Ordering::Relaxed);
        shared.messages.store(messages as u64, Ordering::Relaxed);
        Ok(restored)
    }

    fn session_saved(&self, session: &SessionRecord) -> Mark {
        self.record(Op::Session(session.clone()))
    }

    fn session_removed(&self, client_id: &str) {
        self.record(Op::SessionRemoved(Arc::from(client_id)));
    }

    fn queued(&self, client_id: &Arc<str>, delivery: &Delivery) -> Mark {
        self.record(Op::Queued(client_id.clone(), delivery.clone()))
    }

    fn sent(&self, client_id: &Arc<str>, seq: u64, packet_id: u16, stage: Stage) {
        self.record(Op::Sent(client_id.clone(), seq, packet_id, stage));
    }

    fn settled(&self, client_id: &Arc<str>, seq: u64) {
        self.record(Op::Settled(client_id.clone(), seq));
    }

    fn incoming_qos2(&self, client_id: &Arc<str>, packet_id: u16, held: bool) -> Mark {
        self.record(Op::Incoming(client_id.clone(), packet_id, held))
    }

    fn retained(&self, topic: &ByteString, message: Option<&Arc<Message>>) -> Mark {
        self.record(Op::Retained(topic.clone(), message.cloned()))
    }

    fn is_durable(&self, mark: Mark) -> bool {
        self.shared.durable.load(Ordering::Acquire) >= mark
    }

    fn wake_when_durable(&self, mark: Mark, waiter: &Arc<Session>) {
        self.shared
            .waiters
            .lock()
            .push((mark, Arc::downgrade(waiter)));
        // The writer may have advanced before the waiter was in place.
        if self.is_durable(mark) {
            waiter.wake();
        }
    }

    fn available(&self) -> bool {
        self.shared.available.load(Ordering::Relaxed)
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
        let range = table
            .range((client_id, from)..(client_id, until))
            .map_err(|e| failed(&e))?;
        for entry in range.take(max) {
            let (k, v) = entry.map_err(|e| failed(&e))?;
            let (_, seq) = k.value();
            out.push(record::read_delivery(v.value(), seq).map_err(|e| failed(&e))?);
        }
        Ok(out)
    }

    fn stats(&self) -> StoreStats {
        let s = &self.shared;
        StoreStats {
            size_bytes: std::fs::metadata(&self.path).map_or(0, |m| m.len()),
            sessions: s.sessions.load(Ordering::Relaxed),
            messages: s.messages.load(Ordering::Relaxed),
            available: self.available(),
        }
    }
}

struct Writer {
    shared: Arc<Shared>,
    delay: Duration,
    metrics: StoreMetrics,
}

/// What a committed batch changed, for the counts and the metrics.
#[derive(Default)]
struct Applied {
    sessions: i64,
    messages: i64,
    bytes: u64,
}

impl Writer {
    fn run(self) {
        let mut batch = Vec::new();
        loop {
            let (last, closing) = {
                let mut p = self.shared.pending.lock();
                while p.ops.is_empty() && batch.is_empty() && !p.closing {
                    self.shared.recorded.wait(&mut p);
                }
                if p.ops.is_empty() && batch.is_empty() {
                    return;
                }
                if !self.delay.is_zero() && !p.closing {
                    // Gathers more changes into this commit; one fsync covers them all.
                    self.shared.recorded.wait_for(&mut p, self.delay);
                }
                batch.append(&mut p.ops);
                (p.last, p.closing)
            };
            let started = std::time::Instant::now();
            match self.commit(&batch) {
                Ok(applied) => {
                    batch.clear();
                    let m = &self.metrics;
                    m.commit_seconds.record(started.elapsed().as_secs_f64());
                    m.commits.increment(1);
                    m.written_bytes.increment(applied.bytes);
                    let s = &self.shared;
                    add(&s.sessions, applied.sessions);
                    add(&s.messages, applied.messages);
                    if !s.available.swap(true, Ordering::Relaxed) {
                        info!("store writes again: acknowledging stored messages");
                    }
                    s.durable.store(last, Ordering::Release);
                    self.wake(last);
                }
                Err(e) => {
                    // Kept and tried again: what waits for it is not acknowledged meanwhile, and
                    // nothing more is taken for persistent sessions (`available`).
                    self.metrics.errors.increment(1);
                    if self.shared.available.swap(false, Ordering::Relaxed) {
                        error!("store commit failed, refusing what it would have to keep until it writes again: {e}");
                    }
                    if closing {
                        return;
                    }
                    std::thread::sleep(RETRY);
                }
            }
        }
    }

    fn wake(&self, durable: Mark) {
        let ready: Vec<Weak<Session>> = {
            let mut w = self.shared.waiters.lock();
            let (ready, waiting): (Vec<_>, Vec<_>) = w.drain(..).partition(|(m, _)| *m <= durable);
            *w = waiting;
            ready.into_iter().map(|(_, s)| s).collect()
        };
        for s in ready.iter().filter_map(Weak::upgrade) {
            s.wake();
        }
    }

    fn commit(&self, batch: &[Op]) -> Result<Applied, redb::Error> {
        #[cfg(feature = "fault-injection")]
        if crate::fault::store_writes_fail() {
            return Err(redb::Error::Io(std::io::Error::from_raw_os_error(
                libc::ENOSPC,
            )));
        }
        let db = self.shared.database()?;
        let committed = (|| {
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::Immediate)?;
            let applied = apply(&tx, batch)?;
            tx.commit()?;
            Ok::<_, redb::Error>(applied)
        })();
        if committed.is_err() {
            *self.shared.db.lock() = None;
        }
        committed
    }
}

impl Shared {
    /// The open database, opened again after a failure (when no reader still holds the old).
    fn database(&self) -> Result<Arc<Database>, redb::Error> {
        let mut db = self.db.lock();
        if let Some(db) = db.as_ref() {
            return Ok(db.clone());
        }
        let opened = Arc::new(
            Database::builder()
                .set_cache_size(CACHE_BYTES)
                .set_repair_callback(|_| {})
                .create(&self.path)?,
        );
        *db = Some(opened.clone());
        Ok(opened)
    }
}

fn add(counter: &AtomicU64, delta: i64) {
    if delta >= 0 {
        counter.fetch_add(delta.unsigned_abs(), Ordering::Relaxed);
    } else {
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(delta.unsigned_abs()))
        });
    }
}

/// Applies a batch in order. Messages queued and settled within it are skipped altogether.
fn apply(tx: &WriteTransaction, batch: &[Op]) -> Result<Applied, redb::Error> {
    let mut n = Applied::default();
    let queued_here: HashSet<(&str, u64)> = batch
        .iter()
        .filter_map(|op| match op {
            Op::Queued(c, d) => Some((&c[..], d.seq)),
            _ => None,
        })
        .collect();
    let settled_here: HashSet<(&str, u64)> = batch
        .iter()
        .filter_map(|op| match op {
            Op::Settled(c, seq) if queued_here.contains(&(&c[..], *seq)) => Some((&c[..], *seq)),
            _ => None,
        })
        .collect();
    let mut sessions = tx.open_table(SESSIONS)?;
    let mut messages = tx.open_table(MESSAGES)?;
    let mut flows = tx.open_table(FLOWS)?;
    let mut incoming = tx.open_table(INCOMING)?;
    let mut retained = tx.open_table(RETAINED)?;
    for op in batch {
        match op {
            Op::Session(s) => {
                let bytes = record::session(s);
                n.bytes += (s.client_id.len() + bytes.len()) as u64;
                if sessions
                    .insert(&s.client_id[..], bytes.as_slice())?
                    .is_none()
                {
                    n.sessions += 1;
                }
            }
            Op::SessionRemoved(c) => {
                let c = &c[..];
                if sessions.remove(c)?.is_some() {
                    n.sessions -= 1;
                }
                messages.retain_in((c, 0)..=(c, u64::MAX), |_, _| {
                    n.messages -= 1;
                    false
                })?;
                flows.retain_in((c, 0)..=(c, u64::MAX), |_, _| false)?;
                incoming.retain_in((c, 0)..=(c, u16::MAX), |_, _| false)?;
            }
            Op::Queued(c, d) => {
                if !settled_here.contains(&(&c[..], d.seq)) {
                    let bytes = record::delivery(d);
                    n.bytes += (c.len() + 8 + bytes.len()) as u64;
                    messages.insert((&c[..], d.seq), bytes.as_slice())?;
                    n.messages += 1;
                }
            }
            Op::Sent(c, seq, packet_id, stage) => {
                if !settled_here.contains(&(&c[..], *seq)) {
                    n.bytes += (c.len() + 11) as u64;
                    flows.insert((&c[..], *seq), (*packet_id, stage_code(*stage)))?;
                }
            }
            Op::Settled(c, seq) => {
                if !settled_here.contains(&(&c[..], *seq))
                    && messages.remove((&c[..], *seq))?.is_some()
                {
                    n.messages -= 1;
                    flows.remove((&c[..], *seq))?;
                }
            }
            Op::Incoming(c, id, held) => {
                if *held {
                    n.bytes += (c.len() + 2) as u64;
                    incoming.insert((&c[..], *id), ())?;
                } else {
                    incoming.remove((&c[..], *id))?;
                }
            }
            Op::Retained(topic, m) => match m {
                Some(m) => {
                    let bytes = record::retained(m);
                    n.bytes += (topic.len() + bytes.len()) as u64;
                    retained.insert(&topic[..], bytes.as_slice())?;
                }
                None => {
                    retained.remove(&topic[..])?;
                }
            },
        }
    }
    Ok(n)
}

fn stage_code(stage: Stage) -> u8 {
    match stage {
        Stage::PubAck => 1,
        Stage::PubRec => 2,
        Stage::PubComp => 3,
    }
}

fn stage_of(code: u8) -> Option<Stage> {
    match code {
        1 => Some(Stage::PubAck),
        2 => Some(Stage::PubRec),
        3 => Some(Stage::PubComp),
        _ => None,
    }
}

/// What of the queued messages `read_all` decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decode {
    /// Every message (`gateway store check` and `export`).
    All,
    /// Only those in flight; the queued ones are counted and left on disk (start-up).
    InFlight,
}

/// The store's contents, for `load`, `gateway store check` and `export`.
pub(crate) fn read_all(db: &Database, decode: Decode) -> Result<Restored, String> {
    let tx = db.begin_read().map_err(|e| e.to_string())?;
    let e = |what: &str, err: &dyn std::fmt::Display| format!("{what}: {err}");
    let mut sessions: Vec<StoredSession> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    if let Ok(table) = tx.open_table(SESSIONS) {
        for entry in table.iter().map_err(|x| e("sessions", &x))? {
            let (k, v) = entry.map_err(|x| e("sessions", &x))?;
            let record = record::read_session(k.value(), v.value())
                .map_err(|x| e(&format!("session {:?}", k.value()), &x))?;
            index.insert(k.value().to_owned(), sessions.len());
            sessions.push(StoredSession {
                record,
                pending: Pending::default(),
                stored: 0,
                stored_from: 0,
                stored_last: 0,
            });
        }
    }
    // Only the messages in flight have a flow: few. Both tables are in (client, seq) order.
    let mut flows: Vec<(String, u64, u16, u8)> = Vec::new();
    if let Ok(table) = tx.open_table(FLOWS) {
        for entry in table.iter().map_err(|x| e("flows", &x))? {
            let (k, v) = entry.map_err(|x| e("flows", &x))?;
            let ((c, seq), (packet_id, code)) = (k.value(), v.value());
            flows.push((c.to_owned(), seq, packet_id, code));
        }
    }
    let mut flows = flows.into_iter().peekable();
    if let Ok(table) = tx.open_table(MESSAGES) {
        let mut current: Option<(String, Option<usize>)> = None;
        for entry in table.iter().map_err(|x| e("messages", &x))? {
            let (k, v) = entry.map_err(|x| e("messages", &x))?;
            let (c, seq) = k.value();
            if current.as_ref().map_or(true, |(name, _)| name != c) {
                current = Some((c.to_owned(), index.get(c).copied()));
            }
            let flow = loop {
                match flows.peek() {
                    Some(f) if (f.0.as_str(), f.1) < (c, seq) => {
                        flows.next();
                    }
                    Some(f) if (f.0.as_str(), f.1) == (c, seq) => break flows.next(),
                    _ => break None,
                }
            };
            // A message whose session is gone is left for the next removal to sweep.
            let Some((_, Some(i))) = current else {
                continue;
            };
            let session = &mut sessions[i];
            if flow.is_none() && decode == Decode::InFlight {
                if session.stored == 0 {
                    session.stored_from = seq;
                }
                session.stored += 1;
                session.stored_last = seq;
                continue;
            }
            let delivery = record::read_delivery(v.value(), seq)
                .map_err(|x| e(&format!("message {seq} of {c:?}"), &x))?;
            match flow {
                Some((_, _, packet_id, code)) => {
                    let stage = stage_of(code)
                        .ok_or_else(|| format!("message {seq} of {c:?}: flow stage {code}"))?;
                    session.pending.inflight.push((packet_id, stage, delivery));
                }
                None => session.pending.queue.push(delivery),
            }
        }
    }
    if let Ok(table) = tx.open_table(INCOMING) {
        for entry in table.iter().map_err(|x| e("incoming", &x))? {
            let (k, _) = entry.map_err(|x| e("incoming", &x))?;
            let (c, id) = k.value();
            if let Some(&i) = index.get(c) {
                sessions[i].pending.incoming_qos2.push(id);
            }
        }
    }
    let mut retained = Vec::new();
    if let Ok(table) = tx.open_table(RETAINED) {
        for entry in table.iter().map_err(|x| e("retained", &x))? {
            let (k, v) = entry.map_err(|x| e("retained", &x))?;
            let m = record::read_retained(v.value())
                .map_err(|x| e(&format!("retained {:?}", k.value()), &x))?;
            retained.push(Arc::new(m));
        }
    }
    Ok(Restored { sessions, retained })
}
