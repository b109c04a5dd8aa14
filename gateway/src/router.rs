//! Routing: from one published message to the sessions that receive it.
//!
//! The router owns the subscription index and the retained store and is the only place that knows
//! the delivery rules: one copy per session at the highest granted QoS with every matching
//! subscription identifier (overlapping subscriptions), No Local, Retain As Published, one member
//! per shared group, and retained messages on subscribe. It appends deliveries to session queues and
//! never blocks on a slow receiver: a full queue drops and counts.
//!
//! It also holds the two seams the sessions never see: the `Store` is told of retained writes
//! and of QoS 1/2 messages queued for persistent sessions (`route` returns the store's mark that
//! the publisher's acknowledgement waits for), and of how their flows go (`sent`, `settled`,
//! `incoming_qos2`); the `Cluster` gets every locally published message after local delivery (a
//! single node's `Standalone` drops it) and is asked for a client id before a session attaches
//! (`registry`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytestring::ByteString;

use crate::clock::unix_millis;
use crate::cluster::{Cluster, Confirm, Interest, Standalone};
use crate::codec::{QoS, SubscriptionOptions};
use crate::ingest::Ingest;
use crate::message::Message;
use crate::metrics::{DropReason, Metrics};
use crate::retain::RetainStore;
use crate::session::{
    BacklogFull, Delivery, Enqueued, QueueLimits, Room, Session, SessionId, Stage,
    SubscriptionRecord,
};
use crate::store::{Mark, MemoryStore, SessionRecord, Store, StoredWill};
use crate::ticket::Ticket;
use crate::topic::{self, TopicError};
use crate::topic_index::{Matches, SharedGroup, TopicIndex};

pub use crate::subscriber::Subscriber;

/// `offer`'s mark for a copy the store could not take.
const REFUSED: Mark = Mark::MAX;

pub struct Router {
    index: TopicIndex<SessionId, Subscriber>,
    retained: RetainStore<Arc<Message>>,
    limits: QueueLimits,
    max_topic_levels: usize,
    metrics: Arc<Metrics>,
    /// Set by the memory watch (`limits`) while RSS is above `limits.memory_high_water`: QoS 0
    /// copies are shed here and new connections refused (`client`). Kept here, next to the
    /// enqueue it guards, so a delivery costs one relaxed load.
    pub overloaded: AtomicBool,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) cluster: Arc<dyn Cluster>,
    /// `[[ingest]]` rules, which wills go to too (`publish_will`).
    ingest: Option<Arc<Ingest>>,
}

/// Where a published message went.
pub(crate) struct Routed {
    /// How many sessions it was queued for.
    pub(crate) delivered: usize,
    /// What the publisher's PUBACK / PUBREC waits for: the store's mark of the last record made
    /// for it (0: nothing stored).
    pub(crate) stored: Mark,
    /// Some persistent session did not get it because the store cannot write: the publisher
    /// must not be acknowledged.
    pub(crate) refused: bool,
    /// What the publisher's acknowledgement waits for from the cluster link.
    pub(crate) confirm: Option<Arc<Ticket>>,
}

/// What a message from another node came to here: the sessions it was queued for, the store's
/// mark covering what persistent ones keep, and whether the store refused it.
pub(crate) struct Taken {
    pub(crate) delivered: usize,
    pub(crate) mark: Mark,
    pub(crate) refused: bool,
}

/// The outcome of a subscribe, for SUBACK and retained handling.
pub struct Subscribed {
    /// A subscription to the same filter existed and was replaced.
    pub replaced: bool,
}

impl Router {
    pub fn new(
        limits: QueueLimits,
        retained_max: usize,
        max_topic_levels: usize,
        metrics: Arc<Metrics>,
    ) -> Router {
        Router {
            index: TopicIndex::new(),
            retained: RetainStore::new(retained_max),
            limits,
            max_topic_levels,
            metrics,
            overloaded: AtomicBool::new(false),
            store: Arc::new(MemoryStore),
            cluster: Arc::new(Standalone),
            ingest: None,
        }
    }

    /// The router with another store in place of the in-memory one.
    pub(crate) fn with_store(mut self, store: Arc<dyn Store>) -> Router {
        self.store = store;
        self
    }

    /// The retained store bounded to `max_bytes` too (`mqtt.retained_max_bytes`), each message
    /// counted with what it holds on the heap.
    pub(crate) fn with_retained_max_bytes(mut self, max_bytes: usize) -> Router {
        self.retained = self.retained.with_max_bytes(max_bytes, message_weight);
        self
    }

    /// The router as one node of a cluster.
    pub(crate) fn with_cluster(mut self, cluster: Arc<dyn Cluster>) -> Router {
        self.cluster = cluster;
        self
    }

    /// The router with ingestion: wills are written into JetStream too.
    pub(crate) fn with_ingest(mut self, ingest: Option<Arc<Ingest>>) -> Router {
        self.ingest = ingest;
        self
    }

    /// Publishes `client_id`'s will: routed like any message, and ingested (a device's message
    /// the broker publishes for it; clients' own publishes are ingested by their tasks).
    pub(crate) fn publish_will(&self, will: Arc<Message>, client_id: &str) {
        if let Some(ingest) = &self.ingest {
            ingest.offer_will(&will, client_id);
        }
        self.publish(will);
    }

    pub fn max_topic_levels(&self) -> usize {
        self.max_topic_levels
    }

    /// Stores or clears the retained copy (when flagged) and hands a delivery to every receiver.
    /// Returns how many sessions it was queued for.
    pub fn publish(&self, msg: Arc<Message>) -> usize {
        self.route(msg, None).delivered
    }

    /// `publish`, also telling what the acknowledgement of `publisher` (a client's QoS 1/2
    /// message) must wait for: the store, and the link's sends to other nodes.
    pub(crate) fn route(&self, msg: Arc<Message>, publisher: Option<&Arc<Session>>) -> Routed {
        let publisher = publisher.filter(|_| msg.qos != QoS::AtMostOnce);
        let mut confirm = Confirm::new(publisher.cloned());
        let mut stored = 0;
        if msg.retain {
            stored = self.retain(&msg);
        }
        let matches = self.index.matches(&msg.topic);
        let (mut delivered, plain_stored, mut refused) = self.deliver_plain(&msg, &matches);
        stored = stored.max(plain_stored);
        // The broker's own status messages ($SYS, origin 0) stay on the node.
        let clustered = msg.origin != 0;
        for group in &matches.shared {
            // A group with members on other nodes too takes turns with them (`Cluster::share`):
            // each message goes to exactly one member cluster-wide.
            if clustered
                && !self
                    .cluster
                    .share(&msg, group.name(), group.filter(), &mut confirm)
            {
                continue;
            }
            let (n, mark) = self.deliver_to_group(&msg, group);
            delivered += n;
            stored = stored.max(mark);
            refused |= mark == REFUSED;
        }
        // The broker's own status messages ($SYS, origin 0) are published whether or not anyone
        // listens; counting them would bury the drops that matter.
        if clustered {
            if delivered == 0 {
                self.metrics.dropped(DropReason::NoSubscribers, 1);
            }
            self.cluster.forward(&msg, &matches, &mut confirm);
        }
        Routed {
            delivered,
            stored: if refused { 0 } else { stored },
            refused,
            confirm: confirm.finish(),
        }
    }

    /// A message another node forwarded: to this node's plain subscribers only. It is not
    /// retained here (a retained message reaches this node's copy through the cluster's
    /// retained stream, in the stream's order), not offered to shared groups (those get their own copy, addressed to
    /// one group: `deliver_shared`), and never forwarded again. Tells what it came to (`Taken`).
    pub(crate) fn deliver_remote(&self, msg: Arc<Message>) -> Taken {
        let matches = self.index.matches(&msg.topic);
        let (delivered, mark, refused) = self.deliver_plain(&msg, &matches);
        Taken {
            delivered,
            mark: if refused { 0 } else { mark },
            refused,
        }
    }

    /// A message another node sent to shared group (`group`, `filter`) for one of its members
    /// here, as `deliver_remote` (none delivered: the group has no member here any more).
    pub(crate) fn deliver_shared(&self, msg: Arc<Message>, group: &str, filter: &str) -> Taken {
        let matches = self.index.matches(&msg.topic);
        let (delivered, mark) = matches
            .shared
            .iter()
            .find(|g| g.name() == group && g.filter() == filter)
            .map_or((0, 0), |g| self.deliver_to_group(&msg, g));
        let refused = mark == REFUSED;
        Taken {
            delivered,
            mark: if refused { 0 } else { mark },
            refused,
        }
    }

    /// Whether (`filter`, `group`) has a subscriber on this node now: the truth the cluster
    /// announces, whatever order the `Interest` reports arrived in.
    pub(crate) fn has_interest(&self, filter: &str, group: Option<&str>) -> bool {
        self.index.contains(filter, group)
    }

    /// One copy per session of the plain subscriptions in `matches`: the highest granted QoS,
    /// every subscription identifier. Returns (sessions, the store's mark, refused).
    fn deliver_plain(
        &self,
        msg: &Arc<Message>,
        matches: &Matches<SessionId, Subscriber>,
    ) -> (usize, Mark, bool) {
        let mut delivered = 0;
        let mut stored = 0;
        let mut refused = false;
        let mut plain = matches.plain.iter().peekable();
        while let Some((key, first)) = plain.next() {
            let mut d = Delivery {
                msg: msg.clone(),
                qos: QoS::AtMostOnce,
                retain: false,
                subscription_ids: Vec::new(),
                seq: 0,
            };
            let mut wanted = false;
            let mut sub = Some(first);
            while let Some(s) = sub {
                if !(s.options.no_local && msg.origin == *key) {
                    wanted = true;
                    d.qos = d.qos.max(s.options.qos);
                    d.retain |= s.options.retain_as_published && msg.retain;
                    if let Some(id) = s.id {
                        d.subscription_ids.push(id);
                    }
                }
                sub = plain.next_if(|(k, _)| k == key).map(|(_, s)| s);
            }
            if wanted {
                d.qos = d.qos.min(msg.qos);
                let (n, mark) = self.offer(&first.session, d);
                delivered += n;
                stored = stored.max(mark);
                refused |= mark == REFUSED;
            }
        }
        (delivered, stored, refused)
    }

    /// One member of `group` (an online one if any) gets `msg`.
    fn deliver_to_group(
        &self,
        msg: &Arc<Message>,
        group: &SharedGroup<SessionId, Subscriber>,
    ) -> (usize, Mark) {
        let Some((_, member)) = group.pick(|_, s| s.session.is_online()) else {
            return (0, 0);
        };
        let d = Delivery {
            msg: msg.clone(),
            qos: member.options.qos.min(msg.qos),
            retain: member.options.retain_as_published && msg.retain,
            subscription_ids: member.id.into_iter().collect(),
            seq: 0,
        };
        self.offer(&member.session, d)
    }

    /// Queues `d` for `session` (and the store, for a persistent one); returns whether it was
    /// queued and the store's mark (`REFUSED` when the store cannot take it).
    fn offer(&self, session: &Session, d: Delivery) -> (usize, Mark) {
        let qos0 = d.qos == QoS::AtMostOnce;
        if qos0 && self.overloaded.load(Ordering::Relaxed) {
            self.metrics.dropped(DropReason::MemoryShed, 1);
            return (0, 0);
        }
        if !qos0 && session.is_persistent() && !self.store.available() {
            self.metrics.dropped(DropReason::StoreUnavailable, 1);
            return (0, REFUSED);
        }
        let client_id = &session.client_id;
        let (queued, mark) = session.enqueue(d, self.limits, |d| self.store.queued(client_id, d));
        match queued {
            Enqueued::Queued => (1, mark),
            Enqueued::QueueFull => {
                // A full queue of a connected session means its client reads too slowly; losing
                // QoS 0 there is expected MQTT behaviour and is told apart from QoS 1/2 losses.
                let reason = if qos0 && session.is_online() {
                    DropReason::SlowConsumerQos0
                } else {
                    DropReason::QueueFull
                };
                self.metrics.dropped(reason, 1);
                (0, 0)
            }
            Enqueued::OfflineQos0 => {
                self.metrics.dropped(DropReason::OfflineQos0, 1);
                (0, 0)
            }
        }
    }

    /// The broker's own retained status messages (`$SYS`, origin 0) are published afresh after
    /// a restart: only clients' retained messages are stored.
    /// In a cluster, the cluster keeps clients' retained messages (`Cluster::retained`) instead
    /// of the local store.
    fn retain(&self, msg: &Arc<Message>) -> Mark {
        let stored = msg.origin != 0;
        if msg.payload.is_empty() {
            self.retained.remove(&msg.topic);
            if stored && !self.cluster.retained(msg) {
                return self.store.retained(&msg.topic, None);
            }
        } else if self.retained.set(&msg.topic, msg.clone()).is_err() {
            self.metrics.dropped(DropReason::RetainedFull, 1);
        } else if stored && !self.cluster.retained(msg) {
            return self.store.retained(&msg.topic, Some(msg));
        }
        0
    }

    /// A retained set (`Some`) or clear (`None`) from the cluster's retained stream, in the
    /// stream's order: this node's copy only (the cluster keeps it already).
    pub(crate) fn apply_retained(&self, topic: &str, msg: Option<Arc<Message>>) {
        match msg {
            Some(msg) if !msg.is_expired(unix_millis()) => {
                if self.retained.set(topic, msg).is_err() {
                    self.metrics.dropped(DropReason::RetainedFull, 1);
                }
            }
            _ => {
                self.retained.remove(topic);
            }
        }
    }

    /// A persistent session's subscriptions, expiry or will changed: the store keeps the new
    /// record. `expires_at`: when a session waiting offline ends.
    pub(crate) fn save_session(
        &self,
        session: &Session,
        expires_at: Option<crate::clock::UnixMillis>,
        will: Option<StoredWill>,
    ) -> Mark {
        self.store.session_saved(&SessionRecord {
            client_id: session.client_id.clone(),
            expiry_interval: session.expiry_interval(),
            expires_at,
            subscriptions: session.subscriptions(),
            will,
        })
    }

    /// A stored message went out with `packet_id` and now waits for `stage`; durable at the
    /// mark returned (0 when not stored).
    pub(crate) fn sent(&self, session: &Session, seq: u64, packet_id: u16, stage: Stage) -> Mark {
        if seq == 0 {
            return 0;
        }
        self.store.sent(&session.client_id, seq, packet_id, stage)
    }

    /// A stored message's flow ended (acknowledged, refused or expired).
    pub(crate) fn settled(&self, session: &Session, seq: u64) {
        if seq != 0 {
            self.store.settled(&session.client_id, seq);
        }
    }

    /// An inbound QoS 2 packet id of a persistent session held until PUBREL, or released.
    pub(crate) fn incoming_qos2(&self, session: &Session, packet_id: u16, held: bool) -> Mark {
        if session.is_persistent() {
            self.store
                .incoming_qos2(&session.client_id, packet_id, held)
        } else {
            0
        }
    }

    /// Stored retained messages back into the retained store at start; expired ones stay out.
    pub(crate) fn restore_retained(&self, messages: Vec<Arc<Message>>) {
        let now = unix_millis();
        for msg in messages.into_iter().filter(|m| !m.is_expired(now)) {
            if self.retained.set(&msg.topic, msg.clone()).is_err() {
                self.metrics.dropped(DropReason::RetainedFull, 1);
            }
        }
    }

    /// Adds (or replaces) a subscription of `session` and records it in the session.
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        filter: &ByteString,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> Result<Subscribed, TopicError> {
        let (group, plain_filter) = match topic::parse_shared(filter)? {
            Some((g, f)) => (Some(g), f),
            None => {
                topic::validate_topic_filter(filter, self.max_topic_levels)?;
                (None, &filter[..])
            }
        };
        if group.is_some() {
            topic::validate_topic_filter(plain_filter, self.max_topic_levels)?;
        }
        let durable = session.is_persistent();
        let sub = Subscriber {
            session: session.clone(),
            options,
            id,
            durable,
        };
        let inserted = self.index.insert(plain_filter, group, session.id, sub);
        if inserted.first {
            self.cluster
                .interest(plain_filter, group, Interest::Appeared);
        }
        let was_durable = inserted.previous.as_ref().is_some_and(|s| s.durable);
        if durable != was_durable {
            let change = if durable {
                Interest::PersistentIn
            } else {
                Interest::PersistentOut
            };
            self.cluster.interest(plain_filter, group, change);
        }
        session.record_subscription(SubscriptionRecord {
            // Owned: the decoded filter is a slice of the read buffer.
            filter: ByteString::from(&filter[..]),
            options,
            id,
        });
        Ok(Subscribed {
            replaced: inserted.previous.is_some(),
        })
    }

    /// Removes a subscription; false when it did not exist.
    pub fn unsubscribe(&self, session: &Session, filter: &str) -> bool {
        let (group, plain_filter) = match topic::parse_shared(filter) {
            Ok(Some((group, f))) => (Some(group), f),
            Ok(None) => (None, filter),
            Err(_) => {
                session.forget_subscription(filter);
                return false;
            }
        };
        let removed = self.index.remove(plain_filter, group, &session.id);
        if removed.value.as_ref().is_some_and(|s| s.durable) {
            self.cluster
                .interest(plain_filter, group, Interest::PersistentOut);
        }
        if removed.last {
            self.cluster.interest(plain_filter, group, Interest::Gone);
        }
        session.forget_subscription(filter);
        removed.value.is_some()
    }

    /// Removes every subscription the index holds for these records (a session that ended).
    pub fn unsubscribe_all(&self, session: &Session, records: &[SubscriptionRecord]) {
        for r in records {
            self.unsubscribe(session, &r.filter);
        }
    }

    /// Retained messages matching a new subscription, as deliveries at the granted QoS with the
    /// RETAIN flag set (as the specification requires for messages sent because of a subscribe),
    /// as many as `room` takes: the walk stops at the first that does not fit, and which bound
    /// stopped it comes back with what was found.
    pub fn retained_for(
        &self,
        filter: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
        room: &mut Room,
    ) -> (Vec<Delivery>, Option<BacklogFull>) {
        let mut found = Vec::new();
        let mut full = None;
        let now = unix_millis();
        self.retained.matching(filter, |msg| {
            if msg.is_expired(now) {
                return true;
            }
            if let Err(bound) = room.take(msg) {
                full = Some(bound);
                return false;
            }
            found.push(Delivery {
                qos: options.qos.min(msg.qos),
                retain: true,
                subscription_ids: id.into_iter().collect(),
                seq: 0,
                msg: msg.clone(),
            });
            true
        });
        (found, full)
    }

    pub fn retained_len(&self) -> usize {
        self.retained.len()
    }

    /// What the retained messages count against `mqtt.retained_max_bytes`.
    pub fn retained_bytes(&self) -> usize {
        self.retained.bytes()
    }

    pub fn subscription_len(&self) -> usize {
        self.index.len()
    }

    pub fn shared_subscription_len(&self) -> usize {
        self.index.shared_len()
    }
}

/// What a message holds on the heap (for a retained one, its topic's place in the retained trie
/// excepted: the store counts that): the shared message with its copies of topic, payload and
/// properties, and the PUBLISH heads delivering it encodes and keeps, one per layout it goes out
/// in.
pub(crate) fn message_weight(msg: &Arc<Message>) -> usize {
    // The `Arc`'s two counters, and a malloc header and rounding for each of the message's
    // three allocations.
    const ALLOCATIONS: usize = 16 + 3 * 24;
    // A head: its fixed header and packet id, its buffer's shared header, malloc's rounding.
    const HEAD: usize = 64;
    let properties = msg.properties.as_deref().map_or(0, |p| p.heap_bytes());
    // Four layouts (protocol family x QoS 0 or not); only the two v5 ones carry properties.
    let heads = 4 * (HEAD + msg.topic.len()) + 2 * properties;
    std::mem::size_of::<Message>()
        + ALLOCATIONS
        + msg.topic.len()
        + msg.payload.len()
        + properties
        + heads
}

#[cfg(test)]
mod tests;
