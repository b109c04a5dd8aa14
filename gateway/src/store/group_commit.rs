//! Group commit: sessions' tasks record changes without waiting, one writer thread makes them
//! durable together.
//!
//! Each change is appended to the pending batch under one short lock, which also numbers it (its
//! `Mark`). The writer thread takes the whole batch, waits `commit_delay_ms` first so that more
//! sessions' changes join it, applies it in one transaction and commits with an fsync; then
//! every mark up to the batch's last is durable, and the sessions waiting for one are woken to
//! send their acknowledgements. A message queued and acknowledged within the same batch never
//! touches the disk. A commit that fails (disk full) is kept and retried, the database opened
//! again (redb latches an I/O failure), and meanwhile the store says it is not `available`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytestring::ByteString;
use parking_lot::{Condvar, Mutex};
use redb::{Database, Durability, WriteTransaction};
use rustc_hash::{FxHashMap, FxHashSet};
use tracing::{error, info};

use super::layout::{stage_code, CACHE_BYTES, FLOWS, INCOMING, MESSAGES, RETAINED, SESSIONS};
use super::record;
use super::{Mark, SessionRecord};
use crate::message::Message;
use crate::metrics::StoreMetrics;
use crate::session::{Delivery, Session, Stage};

/// How long a failed commit waits before it is tried again.
const RETRY: Duration = Duration::from_millis(100);

/// One recorded change, in the order recorded.
pub(super) enum Op {
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
    /// The writer waits for a first change: the next one wakes it. Otherwise it is committing or
    /// gathering, and will take what is recorded without being told (no wake-up per change).
    idle: bool,
}

pub(super) struct Shared {
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

pub(super) struct Writer {
    shared: Arc<Shared>,
    delay: Duration,
    metrics: StoreMetrics,
    /// The messages with a `flows` entry (sent in a later batch than they were written).
    in_flows: FxHashSet<(Arc<str>, u64)>,
}

/// What a committed batch changed, for the counts and the metrics, and the `flows` entries it
/// added and removed (applied to the writer's set only once the commit succeeded).
#[derive(Default)]
struct Applied {
    sessions: i64,
    messages: i64,
    bytes: u64,
    flows_added: Vec<(Arc<str>, u64)>,
    flows_removed: Vec<(Arc<str>, u64)>,
    flows_cleared: Vec<Arc<str>>,
}

impl Writer {
    /// Starts the writer thread on `shared`.
    /// `in_flight`: the messages loaded as in flight, any of which may have a `flows` entry.
    pub(super) fn spawn(
        shared: Arc<Shared>,
        delay: Duration,
        metrics: StoreMetrics,
        in_flight: FxHashSet<(Arc<str>, u64)>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let writer = Writer {
            shared,
            delay,
            metrics,
            in_flows: in_flight,
        };
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run())
    }

    fn run(mut self) {
        let mut batch = Vec::new();
        loop {
            let (last, closing) = {
                let mut p = self.shared.pending.lock();
                while p.ops.is_empty() && batch.is_empty() && !p.closing {
                    p.idle = true;
                    self.shared.recorded.wait(&mut p);
                }
                p.idle = false;
                if p.ops.is_empty() && batch.is_empty() {
                    return;
                }
                // Gathers more changes into this commit, the whole delay (only closing cuts it
                // short): one fsync covers them all.
                let deadline = std::time::Instant::now() + self.delay;
                while !p.closing && std::time::Instant::now() < deadline {
                    self.shared.recorded.wait_until(&mut p, deadline);
                }
                batch.append(&mut p.ops);
                (p.last, p.closing)
            };
            let started = std::time::Instant::now();
            match self.commit(&batch) {
                Ok(applied) => {
                    batch.clear();
                    for c in &applied.flows_cleared {
                        self.in_flows.retain(|(client, _)| client != c);
                    }
                    for key in &applied.flows_removed {
                        self.in_flows.remove(key);
                    }
                    self.in_flows.extend(applied.flows_added.iter().cloned());
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
            let applied = apply(&tx, batch, &self.in_flows)?;
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
    /// The state of a store just opened on `db`, holding `sessions` and `messages`.
    pub(super) fn new(db: Database, path: PathBuf, sessions: u64, messages: u64) -> Shared {
        Shared {
            pending: Mutex::new(Recorded::default()),
            recorded: Condvar::new(),
            durable: AtomicU64::new(0),
            waiters: Mutex::new(Vec::new()),
            available: AtomicBool::new(true),
            sessions: AtomicU64::new(sessions),
            messages: AtomicU64::new(messages),
            db: Mutex::new(Some(Arc::new(db))),
            path,
        }
    }

    /// Appends a change to the pending batch; returns its mark.
    pub(super) fn record(&self, op: Op) -> Mark {
        let mut p = self.pending.lock();
        p.ops.push(op);
        p.last += 1;
        let mark = p.last;
        let wake = std::mem::take(&mut p.idle);
        drop(p);
        if wake {
            self.recorded.notify_one();
        }
        mark
    }

    /// Asks the writer to commit what is pending and stop.
    pub(super) fn close(&self) {
        self.pending.lock().closing = true;
        self.recorded.notify_one();
    }

    pub(super) fn is_durable(&self, mark: Mark) -> bool {
        self.durable.load(Ordering::Acquire) >= mark
    }

    pub(super) fn wake_when_durable(&self, mark: Mark, waiter: &Arc<Session>) {
        self.waiters.lock().push((mark, Arc::downgrade(waiter)));
        // The writer may have advanced before the waiter was in place.
        if self.is_durable(mark) {
            waiter.wake();
        }
    }

    pub(super) fn available(&self) -> bool {
        self.available.load(Ordering::Relaxed)
    }

    /// Persistent sessions and messages in the committed store.
    pub(super) fn counts(&self) -> (u64, u64) {
        (
            self.sessions.load(Ordering::Relaxed),
            self.messages.load(Ordering::Relaxed),
        )
    }

    /// The open database, opened again after a failure (when no reader still holds the old).
    pub(super) fn database(&self) -> Result<Arc<Database>, redb::Error> {
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

/// What a batch does to one stored message (client id, seq), gathered before it is applied.
#[derive(Default, Clone, Copy)]
struct Fate {
    queued: bool,
    /// The last stage it was sent with, as `stage_code`.
    sent: Option<(u16, u8)>,
    settled: bool,
}

/// Applies a batch in order, writing each message once: one queued and settled within the
/// batch is skipped altogether, one queued and sent is written with its stage (no `flows`
/// entry). `in_flows` is the writer's knowledge of which messages have a `flows` entry, so that
/// settling one without needs one B-tree removal, not two.
fn apply(
    tx: &WriteTransaction,
    batch: &[Op],
    in_flows: &FxHashSet<(Arc<str>, u64)>,
) -> Result<Applied, redb::Error> {
    let mut n = Applied::default();
    let mut fates: FxHashMap<(&str, u64), Fate> = FxHashMap::default();
    for op in batch {
        match op {
            Op::Queued(c, d) => fates.entry((c, d.seq)).or_default().queued = true,
            Op::Sent(c, seq, id, stage) => {
                fates.entry((c, *seq)).or_default().sent = Some((*id, stage_code(*stage)));
            }
            Op::Settled(c, seq) => fates.entry((c, *seq)).or_default().settled = true,
            _ => {}
        }
    }
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
                n.flows_cleared.push(Arc::from(c));
                incoming.retain_in((c, 0)..=(c, u16::MAX), |_, _| false)?;
            }
            Op::Queued(c, d) => {
                let fate = fates.get(&(&c[..], d.seq)).copied().unwrap_or_default();
                if !fate.settled {
                    let bytes = record::delivery(d, fate.sent);
                    n.bytes += (c.len() + 8 + bytes.len()) as u64;
                    messages.insert((&c[..], d.seq), bytes.as_slice())?;
                    n.messages += 1;
                }
            }
            Op::Sent(c, seq, packet_id, stage) => {
                let fate = fates.get(&(&c[..], *seq)).copied().unwrap_or_default();
                if !fate.queued && !fate.settled {
                    n.bytes += (c.len() + 11) as u64;
                    flows.insert((&c[..], *seq), (*packet_id, stage_code(*stage)))?;
                    n.flows_added.push((c.clone(), *seq));
                }
            }
            Op::Settled(c, seq) => {
                let fate = fates.get(&(&c[..], *seq)).copied().unwrap_or_default();
                if !fate.queued && messages.remove((&c[..], *seq))?.is_some() {
                    n.messages -= 1;
                    // (Sent in this batch too, it was skipped above: settled.)
                    let key = (c.clone(), *seq);
                    if in_flows.contains(&key) {
                        flows.remove((&c[..], *seq))?;
                        n.flows_removed.push(key);
                    }
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
