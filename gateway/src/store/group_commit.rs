//! Group commit: sessions' tasks record changes without waiting, one writer thread makes them
//! durable together.
//!
//! Each change is appended to the pending batch under one short lock, which also numbers it (its
//! `Mark`). The writer thread takes the whole batch, waits `commit_delay_ms` first so that more
//! sessions' changes join it, applies it in one transaction and commits with an fsync; then
//! every mark up to the batch's last is durable, and the sessions waiting for one are woken to
//! send their acknowledgements. A commit writes its batch whole into the journal (`journal`);
//! the tables get it at the next checkpoint, together with the batches since the last one. A
//! commit that fails (disk full) is kept and retried, the database opened again (redb latches
//! an I/O failure), and meanwhile the store says it is not `available`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Condvar, Mutex, MutexGuard};
use redb::{Database, Durability};
use tracing::{error, info};

use super::apply::{apply, InFlows};
use super::batch::{Batch, Op};
use super::journal::{CHECKPOINT_BYTES, CHECKPOINT_EVERY};
use super::layout::{CACHE_BYTES, JOURNAL};
use super::Mark;
use crate::metrics::StoreMetrics;
use crate::session::Session;

/// How long a failed commit waits before it is tried again.
const RETRY: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Recorded {
    batch: Batch,
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
    /// `durable` for those who wait asynchronously (ingestion's writers).
    committed: tokio::sync::watch::Sender<Mark>,
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
    in_flows: InFlows,
    /// The batches committed to the journal since the last checkpoint, in order.
    unapplied: Batch,
    /// The key of the next journal entry; those before it are the unapplied batches.
    journal_next: u64,
    checkpointed: std::time::Instant,
    /// Kept from commit to commit: the buffer records and journal entries are written from,
    /// and the waiters taken out of `Shared::waiters` to be woken.
    scratch: Vec<u8>,
    waking: Vec<(Mark, Weak<Session>)>,
}

impl Writer {
    /// Starts the writer thread on `shared`.
    /// `in_flight`: the messages loaded as in flight, any of which may have a `flows` entry.
    pub(super) fn spawn(
        shared: Arc<Shared>,
        delay: Duration,
        metrics: StoreMetrics,
        in_flight: InFlows,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let writer = Writer {
            shared,
            delay,
            metrics,
            in_flows: in_flight,
            unapplied: Batch::default(),
            journal_next: 0,
            checkpointed: std::time::Instant::now(),
            scratch: Vec::new(),
            waking: Vec::new(),
        };
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run())
    }

    fn run(mut self) {
        let mut batch = Batch::default();
        let shared = self.shared.clone();
        loop {
            let (last, closing) = {
                let mut p = shared.pending.lock();
                while p.batch.is_empty() && batch.is_empty() && !p.closing {
                    p.idle = true;
                    if self.unapplied.is_empty() {
                        shared.recorded.wait(&mut p);
                    } else if shared
                        .recorded
                        .wait_until(&mut p, self.checkpointed + CHECKPOINT_EVERY)
                        .timed_out()
                    {
                        // Idle: what the last commits hold reaches the tables (and the counts)
                        // without waiting for more changes, and the journal is left empty.
                        MutexGuard::unlocked(&mut p, || self.checkpoint(Durability::Immediate));
                    }
                }
                p.idle = false;
                if p.batch.is_empty() && batch.is_empty() {
                    drop(p);
                    if !self.unapplied.is_empty() {
                        self.checkpoint(Durability::Immediate);
                    }
                    return;
                }
                // Gathers more changes into this commit, the whole delay (only closing cuts it
                // short): one fsync covers them all.
                let deadline = std::time::Instant::now() + self.delay;
                while !p.closing && std::time::Instant::now() < deadline {
                    shared.recorded.wait_until(&mut p, deadline);
                }
                if batch.is_empty() {
                    // The recorders get the last batch's buffers back, emptied.
                    std::mem::swap(&mut batch, &mut p.batch);
                } else {
                    batch.append(&mut p.batch);
                }
                (p.last, p.closing)
            };
            let started = std::time::Instant::now();
            match self.commit(&batch) {
                Ok(()) => {
                    let m = &self.metrics;
                    m.commit_seconds.record(started.elapsed().as_secs_f64());
                    m.commits.increment(1);
                    m.written_bytes.increment(self.scratch.len() as u64);
                    let s = &self.shared;
                    if !s.available.swap(true, Ordering::Relaxed) {
                        info!("store writes again: acknowledging stored messages");
                    }
                    s.durable.store(last, Ordering::Release);
                    s.committed.send_replace(last);
                    self.wake(last);
                    // (Emptied, its buffers kept for the recorders.)
                    self.unapplied.append(&mut batch);
                    if closing {
                        // The last one: durable itself, so the next start replays nothing.
                        self.checkpoint(Durability::Immediate);
                    } else if self.unapplied.bytes() >= CHECKPOINT_BYTES
                        || self.checkpointed.elapsed() >= CHECKPOINT_EVERY
                    {
                        self.checkpoint(Durability::None);
                    }
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

    fn wake(&mut self, durable: Mark) {
        // Swapped, so that both vectors keep their storage and the lock is held only for that.
        std::mem::swap(&mut *self.shared.waiters.lock(), &mut self.waking);
        self.waking.retain(|(mark, session)| {
            if *mark > durable {
                return true;
            }
            if let Some(s) = session.upgrade() {
                s.wake();
            }
            false
        });
        if !self.waking.is_empty() {
            self.shared.waiters.lock().append(&mut self.waking);
        }
    }

    /// Makes `batch` durable: one journal entry, one fsync.
    fn commit(&mut self, batch: &Batch) -> Result<(), redb::Error> {
        #[cfg(feature = "fault-injection")]
        if crate::fault::store_writes_fail() {
            return Err(redb::Error::Io(std::io::Error::from_raw_os_error(
                libc::ENOSPC,
            )));
        }
        let db = self.shared.database()?;
        batch.encode(&mut self.scratch);
        let committed = (|| {
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::Immediate)?;
            tx.open_table(JOURNAL)?
                .insert(self.journal_next, self.scratch.as_slice())?;
            tx.commit()?;
            Ok::<_, redb::Error>(())
        })();
        match committed {
            Ok(()) => self.journal_next += 1,
            Err(_) => *self.shared.db.lock() = None,
        }
        committed
    }

    /// Applies the batches since the last checkpoint to the tables and drops their journal
    /// entries, in one transaction, usually without an fsync of its own (`Durability::None`:
    /// the next journal commit's makes it durable; a crash before it leaves the entries,
    /// replayed at the next start). One that fails is tried again after the next commit.
    fn checkpoint(&mut self, durability: Durability) {
        // (Also after a failure: the next try is a checkpoint interval away, or a commit.)
        self.checkpointed = std::time::Instant::now();
        let checkpointed = self.shared.database().and_then(|db| {
            let mut tx = db.begin_write()?;
            tx.set_durability(durability)?;
            let applied = apply(&tx, &self.unapplied, &self.in_flows, &mut self.scratch)?;
            tx.open_table(JOURNAL)?
                .retain_in(..self.journal_next, |_, _| false)?;
            tx.commit()?;
            Ok::<_, redb::Error>(applied)
        });
        match checkpointed {
            Ok(applied) => {
                self.in_flows.committed(&applied);
                self.metrics.written_bytes.increment(applied.bytes);
                add(&self.shared.sessions, applied.sessions);
                add(&self.shared.messages, applied.messages);
                self.unapplied.clear();
            }
            Err(e) => {
                self.metrics.errors.increment(1);
                error!("store checkpoint failed, the journal keeps its entries meanwhile: {e}");
                *self.shared.db.lock() = None;
            }
        }
    }
}

impl Shared {
    /// The state of a store just opened on `db`, holding `sessions` and `messages`.
    pub(super) fn new(db: Database, path: PathBuf, sessions: u64, messages: u64) -> Shared {
        Shared {
            pending: Mutex::new(Recorded::default()),
            recorded: Condvar::new(),
            durable: AtomicU64::new(0),
            committed: tokio::sync::watch::Sender::new(0),
            waiters: Mutex::new(Vec::new()),
            available: AtomicBool::new(true),
            sessions: AtomicU64::new(sessions),
            messages: AtomicU64::new(messages),
            db: Mutex::new(Some(Arc::new(db))),
            path,
        }
    }

    /// Appends a change to the pending batch, made by `change` (which may copy into the batch's
    /// buffers); returns its mark.
    pub(super) fn record(&self, change: impl FnOnce(&mut Batch) -> Op) -> Mark {
        let mut p = self.pending.lock();
        let op = change(&mut p.batch);
        p.batch.ops.push(op);
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

    pub(super) fn committed(&self) -> tokio::sync::watch::Receiver<Mark> {
        self.committed.subscribe()
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
