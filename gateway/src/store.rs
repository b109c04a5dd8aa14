//! The storage seam: what of the broker's state outlives the process, and the interface through
//! which it is kept.
//!
//! The live state stays where it is (sessions in `Session`, retained messages in the router's
//! `RetainStore`); a `Store` is told of every change that a restart must not lose, and hands the
//! kept state back once at start (`load`), which the registry and the router make live again.
//! Changes are recorded without waiting, so that a durable store can commit many sessions'
//! changes per fsync (group commit).
//!
//! Clean sessions (expiry 0) are never recorded. `MemoryStore`, the default, keeps nothing beyond
//! the live state: today's behaviour, where a restart starts empty.
//!
//! A persistent session's whole state (subscriptions, queue, outbound inflight window with its
//! packet ids, inbound QoS 2 ids) is saved when its connection goes, and what is queued for it
//! afterwards is appended: a clean restart loses nothing. Still to join this interface, with the
//! store that keeps them (the durability issue), for a crash while sessions are online: each
//! change of the inflight window and of the QoS 2 ids as it happens (they enter at the session's
//! ack paths in `client`, and need a stored message to carry an identity), and a barrier that
//! PUBACK / PUBREC wait on until what they acknowledge is on disk.

use std::sync::Arc;

use bytestring::ByteString;

use crate::clock::UnixMillis;
use crate::message::Message;
use crate::session::{Delivery, Pending, SubscriptionRecord};

/// A persistent session as a restart needs it, saved when its connection goes: its
/// subscriptions, its pending messages and packet ids (which replace what was stored for it
/// before), its expiry and its will. Messages queued for it afterwards are recorded apart
/// (`Store::queued`) and follow `pending.queue`.
#[derive(Debug, Clone)]
pub(crate) struct SessionRecord {
    pub(crate) client_id: Arc<str>,
    pub(crate) expiry_interval: u32,
    /// When it ends if nobody attaches (wall clock); `None`: never.
    pub(crate) expires_at: Option<UnixMillis>,
    pub(crate) subscriptions: Vec<SubscriptionRecord>,
    pub(crate) pending: Pending,
    /// A will waiting for its delay, and when it is due.
    pub(crate) will: Option<(Arc<Message>, UnixMillis)>,
}

/// What `Store::load` hands back at start.
#[derive(Default)]
pub(crate) struct Restored {
    pub(crate) sessions: Vec<SessionRecord>,
    /// Messages queued for those sessions since they were saved, in queue order per session.
    pub(crate) queued: Vec<(Arc<str>, Delivery)>,
    pub(crate) retained: Vec<Arc<Message>>,
}

pub(crate) trait Store: Send + Sync + 'static {
    /// The kept state, read once before the listeners open. A store that cannot be read as one
    /// of ours refuses when it is opened, before this.
    fn load(&self) -> Restored;

    /// A persistent session's connection went: the session waits offline, with its
    /// subscriptions, its expiry deadline and its pending will.
    fn session_saved(&self, session: &SessionRecord);
    /// A session ended: it, its messages and its packet ids are gone.
    fn session_removed(&self, client_id: &str);

    /// A QoS 1/2 message was queued for a persistent session.
    fn queued(&self, client_id: &str, delivery: &Delivery);
    /// A retained message was set (`Some`) or cleared (`None`) on `topic`.
    fn retained(&self, topic: &ByteString, message: Option<&Arc<Message>>);
}

/// Keeps nothing: the live state is all there is, and a restart starts empty.
pub(crate) struct MemoryStore;

impl Store for MemoryStore {
    fn load(&self) -> Restored {
        Restored::default()
    }

    fn session_saved(&self, _: &SessionRecord) {}

    fn session_removed(&self, _: &str) {}

    fn queued(&self, _: &str, _: &Delivery) {}

    fn retained(&self, _: &ByteString, _: Option<&Arc<Message>>) {}
}
