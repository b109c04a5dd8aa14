//! The storage seam: what of the broker's state outlives the process, and the interface through
//! which it is kept.
//!
//! The live state stays where it is (sessions in `Session`, retained messages in the router's
//! `RetainStore`); a `Store` is told of every change that a restart must not lose, as it happens,
//! and hands the kept state back once at start (`load`), which the registry and the router make
//! live again. Changes are recorded without waiting, so that a durable store can commit many
//! sessions' changes per fsync (group commit); a change that an acknowledgement depends on
//! returns a `Mark`, and the acknowledgement waits until `is_durable` says the mark is on disk.
//!
//! Clean sessions (expiry 0) are never recorded. `MemoryStore` keeps nothing beyond the live
//! state (a restart starts empty); `disk::DiskStore` keeps it in an embedded database;
//! `jetstream::JetStreamStore` keeps persistent sessions in JetStream in cluster mode, where
//! any node may have to take one over from a node that died.
//!
//! What a persistent session's record holds: its subscriptions, expiry and pending will
//! (`session_saved`, whenever one of them changes); each QoS 1/2 message queued for it under its
//! `seq` (`queued`), how far its outbound flow got once sent (`sent`: packet id and stage) and its
//! end (`settled`: acknowledged, refused or expired); the inbound QoS 2 packet ids awaiting PUBREL
//! (`incoming_qos2`); the numbering of its messages written into JetStream (`ingest_id`).
//! Retained messages are kept by topic (`retained`).

mod apply;
mod batch;
pub(crate) mod disk;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;
mod group_commit;
mod inspect;
pub(crate) mod jetstream;
mod journal;
mod layout;
mod load;
mod pages;
mod record;
#[cfg(test)]
pub(crate) mod recording;
mod repair;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;

use bytestring::ByteString;

use crate::clock::UnixMillis;
use crate::message::Message;
use crate::session::{Pending, Session, Stage, SubscriptionRecord};

pub(crate) use disk::DiskStore;
pub use inspect::{check_store, export_store, StoreSummary};
pub(crate) use jetstream::JetStreamStore;
pub(crate) use record::{handover, read_handover};
pub use repair::{repair_store, Found, RepairReport};

/// A point in a store's sequence of changes: durable once everything recorded up to it is.
/// 0 is always durable (nothing to wait for).
pub(crate) type Mark = u64;

/// A persistent session as a restart needs it, besides its messages.
#[derive(Debug, Clone)]
pub(crate) struct SessionRecord {
    pub(crate) client_id: Arc<str>,
    pub(crate) expiry_interval: u32,
    /// When it ends if nobody attaches (wall clock); `None`: never, or attached now.
    pub(crate) expires_at: Option<UnixMillis>,
    pub(crate) subscriptions: Vec<SubscriptionRecord>,
    pub(crate) will: Option<StoredWill>,
}

/// A persistent session's will as a restart needs it.
#[derive(Debug, Clone)]
pub(crate) enum StoredWill {
    /// Its connection is open: if the broker stops with it, the connection is lost then, and
    /// the will goes out `delay` seconds after the restart.
    Armed { message: Arc<Message>, delay: u32 },
    /// Its connection went: the will waits for its delay, until `due`.
    Due {
        message: Arc<Message>,
        due: UnixMillis,
    },
}

/// A stored session with its messages and packet ids, as `load` hands it back.
#[derive(Debug)]
pub(crate) struct StoredSession {
    pub(crate) record: SessionRecord,
    /// In flight, and whatever of its queue was read.
    pub(crate) pending: Pending,
    /// Queued messages left on disk, seqs `stored_from..=stored_last` (`Store::read_queued`).
    pub(crate) stored: u64,
    pub(crate) stored_from: u64,
    pub(crate) stored_last: u64,
}

/// What `Store::load` hands back at start.
#[derive(Default)]
pub(crate) struct Restored {
    pub(crate) sessions: Vec<StoredSession>,
    pub(crate) retained: Vec<Arc<Message>>,
}

/// What a store holds and whether it writes, for `/metrics`, `/readyz` and the admin API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StoreStats {
    pub(crate) size_bytes: u64,
    pub(crate) sessions: u64,
    pub(crate) messages: u64,
    /// False while its commits fail (disk full, I/O error).
    pub(crate) available: bool,
}

/// A store that cannot be opened or read: the gateway does not start (exit 2), and says which
/// file and what is wrong in one line.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {}: {what}", path.display())]
    Unreadable { path: PathBuf, what: String },
}

pub(crate) trait Store: Send + Sync + 'static {
    /// The kept state, read once before the listeners open.
    fn load(&self) -> Result<Restored, StoreError>;

    /// A persistent session was created or its subscriptions, expiry or will changed.
    fn session_saved(&self, session: &SessionRecord) -> Mark;
    /// A session ended, or started clean: it, its messages and its packet ids are gone.
    fn session_removed(&self, client_id: &str);
    /// A session came to this node from another (handed over live, or read back from the
    /// cluster's store after its node died): it is kept whole, replacing anything kept before
    /// under its client id. Its deliveries are numbered (`jetstream::number`).
    fn adopted(&self, record: &SessionRecord, pending: &Pending) -> Mark {
        let c = &record.client_id;
        self.session_removed(c);
        let mut mark = self.session_saved(record);
        for d in pending.queue.iter().filter(|d| d.seq != 0) {
            mark = self.queued(c, d);
        }
        for (packet_id, stage, d) in pending.inflight.iter().filter(|(_, _, d)| d.seq != 0) {
            self.queued(c, d);
            mark = self.sent(c, d.seq, *packet_id, *stage);
        }
        for &id in &pending.incoming_qos2 {
            mark = self.incoming_qos2(c, id, true);
        }
        mark
    }

    /// A QoS 1/2 message was queued for a persistent session under `delivery.seq`. Called while
    /// the session's queue is locked (see `Session::enqueue`).
    fn queued(&self, client_id: &Arc<str>, delivery: &crate::session::Delivery) -> Mark;
    /// A stored message was sent with `packet_id` and now waits for `stage` (or, PUBREL sent,
    /// for PUBCOMP). A QoS 2 flow waits for the mark before the packet goes out: a restart must
    /// resend it with the same packet id (PUBLISH) or as PUBREL, or the receiver, who tells a
    /// resend from a new message only by that id and stage, would deliver it twice.
    fn sent(&self, client_id: &Arc<str>, seq: u64, packet_id: u16, stage: Stage) -> Mark;
    /// A stored message's flow ended: acknowledged, refused by the client, or expired.
    fn settled(&self, client_id: &Arc<str>, seq: u64);
    /// An inbound QoS 2 packet id is held until PUBREL (`held`), or was released.
    fn incoming_qos2(&self, client_id: &Arc<str>, packet_id: u16, held: bool) -> Mark;

    /// A retained message was set (`Some`) or cleared (`None`) on `topic`.
    fn retained(&self, topic: &ByteString, message: Option<&Arc<Message>>) -> Mark;

    /// A persistent session's message got a new de-duplication number for ingestion
    /// (`ingest::dedup`). Its JetStream write waits for the mark returned, whatever `sync` says:
    /// a restart must give the same number to the resend of anything JetStream may hold.
    fn ingest_id(&self, _client_id: &Arc<str>, _new: crate::ingest::dedup::NewId) -> Mark {
        0
    }
    /// The marks committed so far, as they come (`None`: a store that never has one to wait
    /// for).
    fn committed(&self) -> Option<tokio::sync::watch::Receiver<Mark>> {
        None
    }

    /// Whether everything recorded up to `mark` is durable.
    fn is_durable(&self, mark: Mark) -> bool;
    /// Wakes `waiter` once `mark` is durable (at once if it is).
    fn wake_when_durable(&self, mark: Mark, waiter: &Arc<Session>);

    /// Up to `max` messages queued for `client_id`, in order, from seq `from` to before `until`:
    /// a queue left on disk at start, read back as its client drains it.
    fn read_queued(
        &self,
        client_id: &str,
        from: u64,
        until: u64,
        max: usize,
    ) -> Result<Vec<crate::session::Delivery>, StoreError>;

    /// Whether it can take messages now: false while commits fail, when what a persistent
    /// session must receive is refused (its publisher is not acknowledged) instead of piled up.
    fn available(&self) -> bool;
    fn stats(&self) -> StoreStats;
}

/// Keeps nothing: the live state is all there is, and a restart starts empty.
pub(crate) struct MemoryStore;

impl Store for MemoryStore {
    fn load(&self) -> Result<Restored, StoreError> {
        Ok(Restored::default())
    }

    fn session_saved(&self, _: &SessionRecord) -> Mark {
        0
    }

    fn session_removed(&self, _: &str) {}

    fn queued(&self, _: &Arc<str>, _: &crate::session::Delivery) -> Mark {
        0
    }

    fn sent(&self, _: &Arc<str>, _: u64, _: u16, _: Stage) -> Mark {
        0
    }

    fn settled(&self, _: &Arc<str>, _: u64) {}

    fn incoming_qos2(&self, _: &Arc<str>, _: u16, _: bool) -> Mark {
        0
    }

    fn retained(&self, _: &ByteString, _: Option<&Arc<Message>>) -> Mark {
        0
    }

    fn is_durable(&self, _: Mark) -> bool {
        true
    }

    fn wake_when_durable(&self, _: Mark, waiter: &Arc<Session>) {
        waiter.wake();
    }

    fn available(&self) -> bool {
        true
    }

    fn read_queued(
        &self,
        _: &str,
        _: u64,
        _: u64,
        _: usize,
    ) -> Result<Vec<crate::session::Delivery>, StoreError> {
        Ok(Vec::new())
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            available: true,
            ..StoreStats::default()
        }
    }
}
