//! The state of one MQTT session that outlives its network connection.
//!
//! A `Session` is what the specification calls session state on the server: subscriptions, the
//! queue of messages not yet sent, outbound QoS 1/2 messages awaiting acknowledgement, and inbound
//! QoS 2 packet ids awaiting PUBREL. It is shared (`Arc`) between the router, which appends
//! deliveries from any publisher's task, and the one connection task attached to it, which drains
//! them. Everything here is bounded: the queue by `max_queued_messages`, inflight by the send window,
//! inbound QoS 2 by the receive maximum. Keeping this state apart from the connection is what makes
//! resume, takeover and (later) persistence a hand-over of one object rather than a copy.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::sync::Arc;

use bytestring::ByteString;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use std::task::{self, Poll};

use crate::clock::UnixMillis;
use crate::codec::{QoS, SubscriptionOptions};
use crate::message::Message;

pub type SessionId = u64;

/// One message to be sent to this session, at the QoS and with the flags of its subscription.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub msg: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    /// v5 subscription identifiers of every matching subscription; empty for most deliveries.
    pub subscription_ids: Vec<u32>,
    /// Its place among the messages stored for a persistent session (from 1, in queue order):
    /// how the store names it when it is sent and settled. 0: not stored.
    pub seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// QoS 1 sent, waiting for PUBACK.
    PubAck,
    /// QoS 2 sent, waiting for PUBREC.
    PubRec,
    /// PUBREL sent, waiting for PUBCOMP.
    PubComp,
}

#[derive(Debug, Clone)]
pub struct Inflight {
    pub packet_id: u16,
    pub delivery: Delivery,
    pub stage: Stage,
    /// Which packet id allocation of the session this was (wrapping): tells whether an entry is
    /// old enough to hold the id being allocated (see `State::allocate_packet_id`).
    serial: u32,
    /// Still to be sent again on the connection now attached: it was in flight on an earlier one
    /// and the window had no room for it when this one attached (`inflight_for_resend`).
    resend: bool,
}

/// What a session holds besides its subscriptions, as a store keeps it while the session waits
/// offline and a restart gives it back: messages not yet sent (in order), the outbound window
/// (packet id, how far its flow got, the message), the inbound QoS 2 ids awaiting PUBREL and
/// the numbering of its published messages for ingestion (`ingest::dedup`).
#[derive(Debug, Clone, Default)]
pub struct Pending {
    pub queue: Vec<Delivery>,
    pub inflight: Vec<(u16, Stage, Delivery)>,
    pub incoming_qos2: Vec<u16>,
    pub(crate) ingest_ids: Vec<crate::ingest::dedup::StoredId>,
}

/// A subscription as the session remembers it, to replay, list or remove it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRecord {
    /// The filter as the client sent it, `$share/` prefix included.
    pub filter: ByteString,
    pub options: SubscriptionOptions,
    pub id: Option<u32>,
}

/// What the index and the session spend on one subscription beyond its filter's bytes: the
/// index's leaf and member, the session's record. The heap figures of BENCHMARKS.md "Memory per
/// topic" (`heap_count::figures`) stay under it.
pub(crate) const SUBSCRIPTION_BYTES: usize = 352;

/// What a subscription to `filter` counts against `limits.max_subscription_bytes_per_client`:
/// the filter twice (the index's edge label, the session's record) and the fixed part.
pub(crate) fn subscription_bytes(filter: &str) -> usize {
    filter
        .len()
        .saturating_mul(2)
        .saturating_add(SUBSCRIPTION_BYTES)
}

/// What became of a message offered to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    /// The queue was at its bound; the message was dropped (and must be counted by the caller).
    QueueFull,
    /// QoS 0 for an offline session that does not queue QoS 0.
    OfflineQos0,
}

/// One item ready to be written, as handed to the connection task.
#[derive(Debug)]
pub struct Outgoing {
    pub delivery: Delivery,
    /// 0 for QoS 0.
    pub packet_id: u16,
    pub dup: bool,
    /// A PUBREL to (re)send instead of the PUBLISH.
    pub pubrel: bool,
}

/// An inbound QoS 2 PUBLISH seen against the packet ids awaiting PUBREL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncomingQos2 {
    /// A new message: route it.
    New,
    /// A resend of one already routed: acknowledge only.
    Resent,
    /// More unreleased QoS 2 messages than the receive maximum allows.
    ReceiveMaximumExceeded,
}

/// Why a connection attached to this session must close, raised by another task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    TakenOver,
    Shutdown,
    Administrative,
    /// Ingestion refused a message a 3.1.1 client cannot be told about: it is disconnected
    /// without the acknowledgement, so it sends again.
    IngestRefused,
    /// The cluster link dropped a message a 3.1.1 client published on its way to other nodes:
    /// likewise.
    Unconfirmed,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Delivery>,
    /// What `queue`'s messages hold (`content_bytes`), for `limits.max_queued_bytes`: counted as
    /// if the session owned each, although a message fanned out is shared, so that one client's
    /// bound does not depend on what others hold. u32 (saturating): the bound is at most 4 GiB,
    /// and a word here would grow every session past its malloc chunk.
    queued_bytes: u32,
    /// In allocation order, oldest first: acknowledgements mostly come in that order, so the
    /// entry they end is found at the front and removed there.
    inflight: VecDeque<Inflight>,
    /// What its client's publishing left to remember; present only while there is some.
    inbound: Option<Box<Inbound>>,
    subscriptions: Vec<SubscriptionRecord>,
    next_packet_id: u16,
    /// Entries of `inflight` marked `resend` (at most one per packet id).
    resends: u16,
    /// The `seq` of the last delivery stored for this session.
    last_seq: u64,
    /// Packet id allocations so far (wrapping).
    allocations: u32,
    expiry_interval: u32,
    /// Messages a restart left in the store rather than in memory (a queue read back in chunks as
    /// the client takes them); present only while some are left.
    stored: Option<Box<StoredBacklog>>,
    /// Deliveries of retained messages after a SUBSCRIBE, fed into the window in slices. Boxed
    /// and present only while non-empty: most sessions never have one, and a drained backlog
    /// gives its buffer back instead of keeping it for the session's lifetime.
    retained_backlog: Option<Box<RetainedBacklog>>,
    /// Bumped (wrapping) on every attach; an expiry timer acts only on the generation it was
    /// set for, and none lives for 2^32 attaches.
    generation: u32,
    /// The latest connection attached to this session, for the admin API.
    connection: Option<ConnectionInfo>,
}

/// The state a session's own publishing leaves, boxed together because most sessions have none
/// (they publish at QoS 0 or 1 to no `[[ingest]]` rule): one pointer in `State` for both.
#[derive(Debug, Default)]
struct Inbound {
    /// QoS 2 packet ids whose PUBREC was sent and whose PUBREL has not come.
    qos2: Vec<u16>,
    /// Numbering of its published messages for ingestion's de-duplication ids; present once it
    /// published a QoS 1/2 message an `[[ingest]]` rule matched, or restored. A clean start
    /// drops it: new session, new epoch.
    ingest_ids: Option<crate::ingest::dedup::PublishIds>,
}

/// Retained messages found for new subscriptions and not yet sent, with the bytes
/// (`content_bytes`) they hold: what `limits.max_retained_backlog` and `_bytes` bound.
#[derive(Debug, Default)]
struct RetainedBacklog {
    deliveries: VecDeque<Delivery>,
    bytes: usize,
}

/// Bounds of a session's retained backlog (`limits.max_retained_backlog`, `_bytes`); 0: none.
#[derive(Debug, Clone, Copy)]
pub struct BacklogLimits {
    pub messages: usize,
    pub bytes: usize,
}

/// Which bound of the retained backlog a message did not fit in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BacklogFull {
    Messages,
    Bytes,
}

/// What a session's retained backlog can still take: handed out by `Session::retained_room`
/// and used up message by message as a SUBSCRIBE's filters find retained messages.
#[derive(Debug, Clone, Copy)]
pub struct Room {
    messages: usize,
    bytes: usize,
}

impl Room {
    /// Room without bounds, for tests of what is found.
    #[cfg(test)]
    pub(crate) fn unbounded() -> Room {
        Room {
            messages: usize::MAX,
            bytes: usize::MAX,
        }
    }

    /// Takes room for `msg`, or tells which bound it does not fit in.
    pub fn take(&mut self, msg: &Message) -> Result<(), BacklogFull> {
        let size = content_bytes(msg);
        if self.messages == 0 {
            return Err(BacklogFull::Messages);
        }
        if size > self.bytes {
            return Err(BacklogFull::Bytes);
        }
        self.messages -= 1;
        self.bytes -= size;
        Ok(())
    }
}

/// What a message counts for against the byte bounds of a session's queue
/// (`mqtt.max_queued_bytes`) and retained backlog (`limits.max_retained_backlog_bytes`): its
/// topic, payload and forwarded properties on the heap.
fn content_bytes(msg: &Message) -> usize {
    msg.topic.len() + msg.payload.len() + msg.properties.as_deref().map_or(0, |p| p.heap_bytes())
}

/// The part of a session's queue that a restart left in the store: `count` messages from
/// `next_seq` on, all before `live_from`, the first seq queued since the restart.
#[derive(Debug)]
struct StoredBacklog {
    count: u64,
    next_seq: u64,
    live_from: u64,
}

/// A session's queues and window as its bounds see them (`Session::occupancy`).
#[cfg(feature = "fuzzing")]
pub(crate) struct Occupancy {
    /// Messages queued, in memory and in the store.
    pub(crate) queued: usize,
    /// Messages queued in memory, and what they hold (`content_bytes`).
    pub(crate) in_memory: usize,
    pub(crate) queued_bytes: usize,
    /// Retained messages queued by SUBSCRIBEs, and their bytes (topic and payload).
    pub(crate) retained: usize,
    pub(crate) retained_bytes: usize,
    /// Packet ids in flight, oldest first.
    pub(crate) inflight: Vec<u16>,
}

/// Who is (or was last) connected to a session. Compact (24 bytes): every session carries one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub ip: std::net::IpAddr,
    pub port: u16,
    pub protocol: crate::codec::Protocol,
    /// Seconds since the Unix epoch.
    pub since: u32,
}

impl ConnectionInfo {
    /// A connection from `peer` attaching now.
    pub fn now(peer: std::net::SocketAddr, protocol: crate::codec::Protocol) -> ConnectionInfo {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
        ConnectionInfo {
            ip: peer.ip(),
            port: peer.port(),
            protocol,
            since,
        }
    }
}

#[derive(Debug)]
pub struct Session {
    pub id: SessionId,
    /// Shared with the registry's key: one exact-size allocation per session, where a
    /// `ByteString` would take twice the space here and pin the whole CONNECT it was sliced from.
    pub client_id: Arc<str>,
    state: Mutex<State>,
    /// The attached connection task's waker; `signalled` records a wake-up it has not seen yet.
    waker: AtomicWaker,
    signalled: AtomicBool,
    online: AtomicBool,
    /// Expiry above 0: the store keeps what is queued for it (read per delivery, so no lock).
    persistent: AtomicBool,
    kick: AtomicU8,
    /// Set while a connection owns (is attached to) this session; see `Ownership`.
    owned: AtomicBool,
    /// Set when the registry has let go of this session; attachers must look it up again.
    discarded: AtomicBool,
    /// Messages dropped because the queue was at its bound, since the session began (saturating
    /// at 65,535: it fills what would be padding, and any figure that high says enough): the
    /// summed `gateway_messages_dropped_total` cannot tell an operator whose they were.
    dropped: AtomicU16,
}

/// Proof of owning a session; released when dropped (also when a task unwinds).
#[derive(Debug)]
pub struct Ownership(Arc<Session>);

/// An owner reaches the session through its proof: a connection keeps one pointer, not two.
impl std::ops::Deref for Ownership {
    type Target = Arc<Session>;

    fn deref(&self) -> &Arc<Session> {
        &self.0
    }
}

impl Drop for Ownership {
    fn drop(&mut self) {
        self.0.owned.store(false, Ordering::Release);
    }
}

/// Bounds applied when queueing, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_queued: usize,
    /// Bytes (`content_bytes`) the queue in memory may hold; 0: no byte bound. A message is
    /// queued into an empty queue whatever its size, so a small bound never keeps a client
    /// from every message larger than it.
    pub max_queued_bytes: u32,
    pub queue_qos0_offline: bool,
}

const KICK_NONE: u8 = 0;

impl Session {
    pub fn new(id: SessionId, client_id: Arc<str>) -> Session {
        Session {
            id,
            client_id,
            state: Mutex::new(State {
                next_packet_id: 1,
                ..State::default()
            }),
            waker: AtomicWaker::new(),
            signalled: AtomicBool::new(false),
            online: AtomicBool::new(false),
            persistent: AtomicBool::new(false),
            kick: AtomicU8::new(KICK_NONE),
            owned: AtomicBool::new(false),
            discarded: AtomicBool::new(false),
            dropped: AtomicU16::new(0),
        }
    }

    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }

    pub fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Release);
    }

    pub fn is_discarded(&self) -> bool {
        self.discarded.load(Ordering::Acquire)
    }

    pub fn mark_discarded(&self) {
        self.discarded.store(true, Ordering::Release);
    }

    /// Takes ownership when no connection holds it. A plain flag rather than an async lock: a
    /// lock would cost every session an allocation, and contention is rare (takeover only),
    /// where the waiter polls.
    pub fn try_own(self: &Arc<Self>) -> Option<Ownership> {
        self.owned
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            .then(|| Ownership(self.clone()))
    }

    /// Ready once something was queued for this session, a window slot opened or a kick was
    /// raised since the last call. A poll function rather than a future keeps the connection
    /// task, which waits on it for its whole life, small.
    pub fn poll_woken(&self, cx: &mut task::Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        if self.signalled.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    pub(crate) fn wake(&self) {
        self.signalled.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Asks the attached connection (if any) to close.
    pub fn kick(&self, why: Kick) {
        let v = match why {
            Kick::TakenOver => 1,
            Kick::Shutdown => 2,
            Kick::Administrative => 3,
            Kick::IngestRefused => 4,
            Kick::Unconfirmed => 5,
        };
        self.kick.store(v, Ordering::Release);
        self.wake();
    }

    pub fn take_kick(&self) -> Option<Kick> {
        match self.kick.swap(KICK_NONE, Ordering::AcqRel) {
            1 => Some(Kick::TakenOver),
            2 => Some(Kick::Shutdown),
            3 => Some(Kick::Administrative),
            4 => Some(Kick::IngestRefused),
            5 => Some(Kick::Unconfirmed),
            _ => None,
        }
    }

    /// Offers a delivery: queued up to the bound, otherwise dropped and reported. A QoS 1/2
    /// delivery to a persistent session gets its `seq` and is handed to `store` while the queue
    /// is locked, so the store sees a session's messages in queue order and each before anything
    /// can acknowledge it; what `store` returns (the store's mark) comes back with the outcome.
    pub fn enqueue(
        &self,
        mut d: Delivery,
        limits: QueueLimits,
        store: impl FnOnce(&Delivery) -> u64,
    ) -> (Enqueued, u64) {
        if d.qos == QoS::AtMostOnce && !limits.queue_qos0_offline && !self.is_online() {
            return (Enqueued::OfflineQos0, 0);
        }
        // Measured before the lock, which every publisher to this session takes.
        let size = content_bytes(&d.msg);
        let mark = {
            let mut st = self.state.lock();
            let stored = st.stored.as_ref().map_or(0, |b| b.count as usize);
            let over_bytes = limits.max_queued_bytes != 0
                && !st.queue.is_empty()
                && size.saturating_add(st.queued_bytes as usize) > limits.max_queued_bytes as usize;
            if st.queue.len() + stored >= limits.max_queued || over_bytes {
                // Saturating; Relaxed: a statistic, ordered by nothing.
                let _ = self
                    .dropped
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1));
                return (Enqueued::QueueFull, 0);
            }
            let mark = if d.qos != QoS::AtMostOnce && self.is_persistent() {
                st.last_seq += 1;
                d.seq = st.last_seq;
                store(&d)
            } else {
                0
            };
            st.push_queued(d, size);
            mark
        };
        self.wake();
        (Enqueued::Queued, mark)
    }

    /// What the retained backlog may still take within `limits`. Only the connection's own task
    /// adds to the backlog (while the client only takes from it), so the room it is told stays
    /// free until it adds what it found.
    pub fn retained_room(&self, limits: BacklogLimits) -> Room {
        let st = self.state.lock();
        let (messages, bytes) = st
            .retained_backlog
            .as_ref()
            .map_or((0, 0), |b| (b.deliveries.len(), b.bytes));
        let free = |max: usize, used: usize| {
            if max == 0 {
                usize::MAX
            } else {
                max.saturating_sub(used)
            }
        };
        Room {
            messages: free(limits.messages, messages),
            bytes: free(limits.bytes, bytes),
        }
    }

    /// Queues retained messages found for a new subscription (within its `Room`); they are sent
    /// in slices behind the live queue's window so that a subscribe matching 100k retained
    /// messages stalls nobody.
    pub fn add_retained(&self, deliveries: Vec<Delivery>) {
        if deliveries.is_empty() {
            return;
        }
        let bytes: usize = deliveries.iter().map(|d| content_bytes(&d.msg)).sum();
        let mut st = self.state.lock();
        let backlog = st.retained_backlog.get_or_insert_with(Box::default);
        backlog.deliveries.extend(deliveries);
        backlog.bytes += bytes;
        drop(st);
        self.wake();
    }

    /// Moves up to `max` items that may be sent now into `out`: QoS 0 freely, QoS 1/2 while the
    /// inflight window has room (they enter inflight with a fresh packet id). Expired messages are
    /// dropped and their number returned; the `seq`s of stored ones among them go to `settled`.
    pub fn take_ready(
        &self,
        now: UnixMillis,
        window: usize,
        max: usize,
        out: &mut Vec<Outgoing>,
        settled: &mut Vec<u64>,
    ) -> usize {
        let mut st = self.state.lock();
        let mut taken = st.resend_owed(window, max, out);
        let mut expired = 0;
        while taken < max {
            let from_backlog =
                st.queue.is_empty() || (st.retained_backlog.is_some() && taken < max / 2);
            let next = if from_backlog {
                st.retained_backlog
                    .as_ref()
                    .and_then(|b| b.deliveries.front())
            } else {
                st.queue.front()
            };
            let Some(front) = next else { break };
            if front.qos != QoS::AtMostOnce && st.inflight.len() >= window {
                break;
            }
            // What the store still holds for this queue goes first (`stored_wanted`).
            if let (false, Some(b)) = (from_backlog, &st.stored) {
                if front.seq == 0 || front.seq >= b.live_from {
                    break;
                }
            }
            let d = if from_backlog {
                st.pop_retained()
            } else {
                st.pop_queued()
            };
            let Some(d) = d else { break };
            if d.msg.is_expired(now) {
                expired += 1;
                if d.seq != 0 {
                    settled.push(d.seq);
                }
                continue;
            }
            let packet_id = if d.qos == QoS::AtMostOnce {
                0
            } else {
                let id = st.allocate_packet_id();
                let stage = if d.qos == QoS::AtLeastOnce {
                    Stage::PubAck
                } else {
                    Stage::PubRec
                };
                let serial = st.allocations;
                st.inflight.push_back(Inflight {
                    packet_id: id,
                    delivery: d.clone(),
                    stage,
                    serial,
                    resend: false,
                });
                id
            };
            out.push(Outgoing {
                delivery: d,
                packet_id,
                dup: false,
                pubrel: false,
            });
            taken += 1;
        }
        expired
    }

    /// What is still unacknowledged, to resend on resume (PUBLISH with DUP, or PUBREL), oldest
    /// first and as much as the new connection's `window` takes: a client that comes back with a
    /// smaller Receive Maximum is not sent more than it allows [MQTT-4.9.0-2]. The rest keep
    /// their packet ids and go out as acknowledgements make room (`take_ready`), before anything
    /// new.
    pub fn inflight_for_resend(&self, window: usize, out: &mut Vec<Outgoing>) {
        let mut st = self.state.lock();
        let mut resends = 0;
        for (n, i) in st.inflight.iter_mut().enumerate() {
            i.resend = n >= window;
            if i.resend {
                resends += 1;
            } else {
                out.push(i.outgoing_again());
            }
        }
        st.resends = resends;
    }

    /// Applies a PUBACK, PUBREC or PUBCOMP. Returns the delivery's `seq` (0 when not stored), or
    /// None when no message with that id was waiting for that acknowledgement.
    pub fn acknowledge(&self, packet_id: u16, ack: Stage) -> Option<u64> {
        let mut st = self.state.lock();
        let pos = st
            .inflight
            .iter()
            .position(|i| i.packet_id == packet_id && i.stage == ack)?;
        let seq = st.inflight[pos].delivery.seq;
        match ack {
            Stage::PubRec => st.inflight[pos].stage = Stage::PubComp,
            Stage::PubAck | Stage::PubComp => {
                let done = st.remove_inflight(pos);
                drop(st);
                // Freed outside the lock: the last reference to a message frees it, and the
                // publishers' tasks wait for this lock to queue the next ones.
                drop(done);
                // A slot in the window opened: the connection may send more.
                self.wake();
            }
        }
        Some(seq)
    }

    /// A PUBREC with a failure reason ends the QoS 2 flow for that id; returns the delivery's
    /// `seq` (0 when not stored), None when the id was not in flight.
    pub fn abandon(&self, packet_id: u16) -> Option<u64> {
        let mut st = self.state.lock();
        let pos = st.inflight.iter().position(|i| i.packet_id == packet_id)?;
        let seq = st.remove_inflight(pos).map_or(0, |i| i.delivery.seq);
        drop(st);
        self.wake();
        Some(seq)
    }

    /// Records an inbound QoS 2 packet id.
    pub fn incoming_qos2(&self, packet_id: u16, receive_maximum: usize) -> IncomingQos2 {
        let mut st = self.state.lock();
        let ids = &mut st.inbound.get_or_insert_with(Box::default).qos2;
        if ids.contains(&packet_id) {
            return IncomingQos2::Resent;
        }
        if ids.len() >= receive_maximum {
            return IncomingQos2::ReceiveMaximumExceeded;
        }
        ids.push(packet_id);
        IncomingQos2::New
    }

    /// Applies a PUBREL; false when the id was unknown.
    pub fn release_incoming(&self, packet_id: u16) -> bool {
        let mut st = self.state.lock();
        let Some(inbound) = st.inbound.as_mut() else {
            return false;
        };
        let before = inbound.qos2.len();
        inbound.qos2.retain(|&p| p != packet_id);
        let released = inbound.qos2.len() != before;
        if inbound.qos2.is_empty() && inbound.ingest_ids.is_none() {
            st.inbound = None;
        }
        released
    }

    /// The (epoch, number) of a published QoS 1/2 message for ingestion, and what a persistent
    /// session's store must record of it (`ingest::dedup`).
    pub(crate) fn ingest_number(
        &self,
        packet_id: u16,
        resend: bool,
        content: u64,
        window: usize,
    ) -> (u64, u64, Option<crate::ingest::dedup::NewId>) {
        let mut st = self.state.lock();
        st.inbound
            .get_or_insert_with(Box::default)
            .ingest_ids
            .get_or_insert_with(|| crate::ingest::dedup::PublishIds::new(self.id))
            .assign(packet_id, resend, content, window)
    }

    pub fn expiry_interval(&self) -> u32 {
        self.state.lock().expiry_interval
    }

    pub fn set_expiry_interval(&self, secs: u32) {
        self.state.lock().expiry_interval = secs;
        self.persistent.store(secs > 0, Ordering::Relaxed);
    }

    /// Whether the session outlives its connection, so that what is queued for it is stored.
    pub fn is_persistent(&self) -> bool {
        self.persistent.load(Ordering::Relaxed)
    }

    /// Adds or replaces a subscription record; returns true when it replaced one for the same filter.
    pub fn record_subscription(&self, rec: SubscriptionRecord) -> bool {
        let mut st = self.state.lock();
        if let Some(existing) = st.subscriptions.iter_mut().find(|s| s.filter == rec.filter) {
            *existing = rec;
            true
        } else {
            st.subscriptions.push(rec);
            false
        }
    }

    pub fn forget_subscription(&self, filter: &str) -> bool {
        let mut st = self.state.lock();
        let before = st.subscriptions.len();
        st.subscriptions.retain(|s| s.filter != filter);
        st.subscriptions.len() != before
    }

    /// Whether a subscription to `filter` keeps the session within `max` bytes of
    /// subscriptions (see [`subscription_bytes`]): replacing an existing one always does.
    pub(crate) fn subscription_fits(&self, filter: &str, max: usize) -> bool {
        // Summed here rather than kept in `State`, which would grow every session by a word: the
        // scan is the one `record_subscription` makes anyway, over a count the limits bound.
        let st = self.state.lock();
        let mut used = 0usize;
        for s in &st.subscriptions {
            if s.filter == filter {
                return true;
            }
            used = used.saturating_add(subscription_bytes(&s.filter));
        }
        used.saturating_add(subscription_bytes(filter)) <= max
    }

    pub fn subscription_count(&self) -> usize {
        self.state.lock().subscriptions.len()
    }

    /// Puts stored pending state back into a session restored at start, before any client or
    /// publisher can reach it. Packet ids continue after the highest one in flight.
    pub fn restore_pending(&self, pending: Pending) {
        let mut st = self.state.lock();
        let stored = pending
            .queue
            .iter()
            .chain(pending.inflight.iter().map(|(_, _, d)| d));
        st.last_seq = stored.map(|d| d.seq).fold(st.last_seq, u64::max);
        for d in pending.queue {
            let size = content_bytes(&d.msg);
            st.push_queued(d, size);
        }
        if let Some(highest) = pending.inflight.iter().map(|(id, _, _)| *id).max() {
            st.next_packet_id = highest.checked_add(1).unwrap_or(1);
        }
        let serial = st.allocations;
        st.inflight.extend(
            pending
                .inflight
                .into_iter()
                .map(|(packet_id, stage, delivery)| Inflight {
                    packet_id,
                    delivery,
                    stage,
                    serial,
                    resend: false,
                }),
        );
        let inbound = Inbound {
            qos2: pending.incoming_qos2,
            ingest_ids: crate::ingest::dedup::PublishIds::restored(pending.ingest_ids),
        };
        st.inbound =
            (!inbound.qos2.is_empty() || inbound.ingest_ids.is_some()).then(|| Box::new(inbound));
    }

    /// A copy of what `restore_pending` takes, for handing the session to another cluster node
    /// while its owner holds it: the queue (with retained messages still owed after a
    /// SUBSCRIBE at its end), the outbound window with each flow's stage, the inbound QoS 2 ids.
    /// `stored`: what `stored_left` named, read from the store, spliced in where it belongs
    /// (after what was read of it, before what was queued since the restart). Its ingestion
    /// numbering goes along, so that a resend on the other node keeps its de-duplication id.
    pub(crate) fn export_pending(&self, stored: Vec<Delivery>) -> Pending {
        let st = self.state.lock();
        let live_from = st.stored.as_ref().map_or(0, |b| b.live_from);
        let read = st
            .queue
            .iter()
            .take_while(|d| d.seq != 0 && d.seq < live_from)
            .count();
        let retained = st.retained_backlog.iter().flat_map(|b| b.deliveries.iter());
        let queue = st.queue.iter().take(read).cloned();
        let queue = queue.chain(stored);
        let queue = queue.chain(st.queue.iter().skip(read).chain(retained).cloned());
        Pending {
            queue: queue.collect(),
            inflight: st
                .inflight
                .iter()
                .map(|i| (i.packet_id, i.stage, i.delivery.clone()))
                .collect(),
            incoming_qos2: st
                .inbound
                .as_ref()
                .map_or_else(Vec::new, |i| i.qos2.clone()),
            ingest_ids: st
                .inbound
                .as_ref()
                .and_then(|i| i.ingest_ids.as_ref())
                .map_or_else(Vec::new, |ids| ids.stored()),
        }
    }

    /// What a restart left of the queue in the store and is not read yet: seqs from, until
    /// (exclusive) and how many.
    pub(crate) fn stored_left(&self) -> Option<(u64, u64, usize)> {
        let st = self.state.lock();
        let b = st.stored.as_ref()?;
        Some((b.next_seq, b.live_from, b.count as usize))
    }

    pub fn subscriptions(&self) -> Vec<SubscriptionRecord> {
        self.state.lock().subscriptions.clone()
    }

    /// Empties the session for a clean start; returns the subscriptions to remove from the index.
    pub fn reset(&self) -> Vec<SubscriptionRecord> {
        let mut st = self.state.lock();
        let subs = std::mem::take(&mut st.subscriptions);
        let generation = st.generation;
        self.persistent.store(false, Ordering::Relaxed);
        self.dropped.store(0, Ordering::Relaxed);
        *st = State {
            next_packet_id: 1,
            generation,
            // Never reused: the store may still hold the previous run's changes to a seq.
            last_seq: st.last_seq,
            ..State::default()
        };
        subs
    }

    /// Starts a new attachment; returns its generation.
    pub fn begin_generation(&self) -> u32 {
        let mut st = self.state.lock();
        st.generation = st.generation.wrapping_add(1);
        st.generation
    }

    pub fn generation(&self) -> u32 {
        self.state.lock().generation
    }

    pub fn queue_len(&self) -> usize {
        let st = self.state.lock();
        let stored = st.stored.as_ref().map_or(0, |b| b.count as usize);
        let retained = st
            .retained_backlog
            .as_ref()
            .map_or(0, |b| b.deliveries.len());
        st.queue.len() + retained + stored
    }

    /// Leaves `count` queued messages in the store (seqs `from_seq..=last_seq`) at start: read
    /// back by `stored_wanted` / `take_stored` as the client drains its queue.
    pub(crate) fn restore_stored(&self, count: u64, from_seq: u64, last_seq: u64) {
        if count == 0 {
            return;
        }
        let mut st = self.state.lock();
        st.last_seq = st.last_seq.max(last_seq);
        let live_from = st.last_seq + 1;
        st.stored = Some(Box::new(StoredBacklog {
            count,
            next_seq: from_seq,
            live_from,
        }));
    }

    /// When the queue's front holds nothing read from the store and some is left there: the seq
    /// range to read next (from, until) and how many at most.
    pub(crate) fn stored_wanted(&self, max: usize) -> Option<(u64, u64, usize)> {
        let st = self.state.lock();
        let b = st.stored.as_ref()?;
        let loaded_at_front = st
            .queue
            .front()
            .is_some_and(|d| d.seq != 0 && d.seq < b.live_from);
        (!loaded_at_front).then(|| (b.next_seq, b.live_from, max.min(b.count as usize)))
    }

    /// Puts messages read from the store at the queue's front, in order (they precede everything
    /// queued since the restart). Fewer than asked for: the store holds no more.
    pub(crate) fn take_stored(&self, chunk: Vec<Delivery>, asked: usize) {
        let mut st = self.state.lock();
        let Some(b) = st.stored.as_mut() else { return };
        let exhausted = chunk.len() < asked;
        b.count = b.count.saturating_sub(chunk.len() as u64);
        if let Some(last) = chunk.last() {
            b.next_seq = last.seq + 1;
        }
        if exhausted || b.count == 0 {
            st.stored = None;
        }
        for d in chunk.into_iter().rev() {
            st.count_queued(content_bytes(&d.msg));
            st.queue.push_front(d);
        }
        drop(st);
        self.wake();
    }

    /// What the queue in memory holds, as `QueueLimits::max_queued_bytes` counts it.
    pub fn queued_bytes(&self) -> u32 {
        self.state.lock().queued_bytes
    }

    pub fn inflight_len(&self) -> usize {
        self.state.lock().inflight.len()
    }

    /// Calls `f` with each message the session holds: queued, in its window, in its retained
    /// backlog.
    pub(crate) fn for_each_message(&self, mut f: impl FnMut(&Arc<Message>)) {
        let st = self.state.lock();
        st.queue.iter().for_each(|d| f(&d.msg));
        st.inflight.iter().for_each(|i| f(&i.delivery.msg));
        if let Some(b) = &st.retained_backlog {
            b.deliveries.iter().for_each(|d| f(&d.msg));
        }
    }

    /// Messages dropped at the queue's bound since the session began, up to 65,535.
    pub fn dropped(&self) -> u16 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// What the session holds against its bounds, for the session fuzz target's invariants.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn occupancy(&self) -> Occupancy {
        let st = self.state.lock();
        let stored = st.stored.as_ref().map_or(0, |b| b.count as usize);
        let (retained, retained_bytes) = st
            .retained_backlog
            .as_ref()
            .map_or((0, 0), |b| (b.deliveries.len(), b.bytes));
        Occupancy {
            queued: st.queue.len() + stored,
            in_memory: st.queue.len(),
            queued_bytes: st.queued_bytes as usize,
            retained,
            retained_bytes,
            inflight: st.inflight.iter().map(|i| i.packet_id).collect(),
        }
    }

    pub fn set_connection(&self, info: ConnectionInfo) {
        self.state.lock().connection = Some(info);
    }

    pub fn connection(&self) -> Option<ConnectionInfo> {
        self.state.lock().connection
    }
}

impl Inflight {
    /// This entry sent again: PUBLISH with DUP, or PUBREL once PUBREC came.
    fn outgoing_again(&self) -> Outgoing {
        Outgoing {
            delivery: self.delivery.clone(),
            packet_id: self.packet_id,
            dup: self.stage != Stage::PubComp,
            pubrel: self.stage == Stage::PubComp,
        }
    }
}

impl State {
    /// Sends again, oldest first, what an earlier connection left in flight and the window now
    /// has room for (at most `max`); returns how many.
    fn resend_owed(&mut self, window: usize, max: usize, out: &mut Vec<Outgoing>) -> usize {
        if self.resends == 0 {
            return 0;
        }
        let on_wire = self.inflight.len() - usize::from(self.resends);
        let room = window.saturating_sub(on_wire).min(max);
        let before = out.len();
        out.extend(
            self.inflight
                .iter_mut()
                .filter(|i| i.resend)
                .take(room)
                .map(|i| {
                    i.resend = false;
                    i.outgoing_again()
                }),
        );
        let taken = out.len() - before;
        self.resends -= taken as u16;
        taken
    }

    /// Ends the flow at `pos` of the window.
    fn remove_inflight(&mut self, pos: usize) -> Option<Inflight> {
        let removed = self.inflight.remove(pos)?;
        if removed.resend {
            self.resends -= 1;
        }
        Some(removed)
    }

    /// Queues `d`, which holds `size` bytes (`content_bytes`).
    fn push_queued(&mut self, d: Delivery, size: usize) {
        self.count_queued(size);
        self.queue.push_back(d);
    }

    fn count_queued(&mut self, size: usize) {
        let size = u32::try_from(size).unwrap_or(u32::MAX);
        self.queued_bytes = self.queued_bytes.saturating_add(size);
    }

    fn pop_queued(&mut self) -> Option<Delivery> {
        let d = self.queue.pop_front()?;
        let size = u32::try_from(content_bytes(&d.msg)).unwrap_or(u32::MAX);
        self.queued_bytes = self.queued_bytes.saturating_sub(size);
        Some(d)
    }

    /// The next retained delivery; the backlog's box goes once it is drained.
    fn pop_retained(&mut self) -> Option<Delivery> {
        let backlog = self.retained_backlog.as_mut()?;
        let next = backlog.deliveries.pop_front();
        if let Some(d) = &next {
            backlog.bytes = backlog.bytes.saturating_sub(content_bytes(&d.msg));
        }
        if backlog.deliveries.is_empty() {
            self.retained_backlog = None;
        }
        next
    }

    /// The next free packet id. Ids go round 1..=65535, so an id can only still be in flight
    /// from an allocation at least 65,535 allocations ago; the oldest entry is at the front, and
    /// only when it is that old is the window searched (otherwise every allocation would scan
    /// the whole window, which is quadratic in a large one).
    fn allocate_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            self.allocations = self.allocations.wrapping_add(1);
            let allocations = self.allocations;
            let stale = self.inflight.front().is_some_and(|oldest| {
                allocations.wrapping_sub(oldest.serial) >= u32::from(u16::MAX)
            });
            if !stale || !self.inflight.iter().any(|i| i.packet_id == id) {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::unix_millis;
    use bytes::Bytes;

    /// Every session keeps one `Arc<Session>`: with the Arc header, 232 bytes is a 256-byte malloc
    /// chunk.
    #[test]
    fn session_stays_small() {
        let size = std::mem::size_of::<Session>();
        println!("Session: {size} bytes");
        assert!(size <= 232, "Session grew to {size} bytes");
    }

    fn delivery(qos: QoS) -> Delivery {
        let msg = Message::new(
            &ByteString::from_static("t"),
            &Bytes::from_static(b"p"),
            qos,
            false,
            0,
            None,
        );
        Delivery {
            msg: Arc::new(msg),
            qos,
            retain: false,
            subscription_ids: Vec::new(),
            seq: 0,
        }
    }

    /// A queue a restart left on disk goes out first, read in chunks, then what came since.
    #[test]
    fn a_stored_queue_is_read_back_in_order_before_what_came_since() {
        let s = Session::new(1, "c".into());
        s.set_expiry_interval(60);
        s.set_online(true);
        s.restore_pending(Pending::default());
        s.restore_stored(3, 1, 3);
        let limits = QueueLimits {
            max_queued: 5,
            max_queued_bytes: 0,
            queue_qos0_offline: false,
        };
        // Seqs continue after the stored ones' (the registry restores `last_seq` from them).
        let mut live = delivery(QoS::AtLeastOnce);
        live.seq = 0;
        assert_eq!(s.enqueue(live.clone(), limits, |_| 0).0, Enqueued::Queued);
        assert_eq!(s.enqueue(live.clone(), limits, |_| 0).0, Enqueued::Queued);
        assert_eq!(s.queue_len(), 5);
        assert_eq!(
            s.enqueue(live, limits, |_| 0).0,
            Enqueued::QueueFull,
            "stored ones count"
        );
        let mut sent = Vec::new();
        for _ in 0..10 {
            if let Some((from, until, max)) = s.stored_wanted(2) {
                let chunk = (from..until.min(4))
                    .take(max)
                    .map(|seq| Delivery {
                        seq,
                        ..delivery(QoS::AtLeastOnce)
                    })
                    .collect();
                s.take_stored(chunk, max);
            }
            let mut out = Vec::new();
            s.take_ready(unix_millis(), 100, 100, &mut out, &mut Vec::new());
            sent.extend(out.iter().map(|o| o.delivery.seq));
        }
        assert_eq!(sent.len(), 5);
        assert_eq!(&sent[..3], [1, 2, 3], "the stored queue first: {sent:?}");
        assert!(sent[3] > 3 && sent[4] > sent[3], "{sent:?}");
    }

    const LIMITS: QueueLimits = QueueLimits {
        max_queued: 2,
        max_queued_bytes: 0,
        queue_qos0_offline: false,
    };

    #[test]
    fn queue_is_bounded_and_reports_drops() {
        let s = Session::new(1, "c".into());
        s.set_online(true);
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), LIMITS, |_| 0).0,
            Enqueued::Queued
        );
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), LIMITS, |_| 0).0,
            Enqueued::Queued
        );
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), LIMITS, |_| 0).0,
            Enqueued::QueueFull
        );
        assert_eq!(s.queue_len(), 2);
    }

    /// Each delivery of `delivery` holds 2 bytes (topic "t", payload "p").
    #[test]
    fn queue_is_bounded_in_bytes_and_an_empty_queue_takes_any_message() {
        let s = Session::new(1, "c".into());
        s.set_online(true);
        let limits = QueueLimits {
            max_queued: 100,
            max_queued_bytes: 5,
            queue_qos0_offline: false,
        };
        let mut outcomes = Vec::new();
        for _ in 0..3 {
            outcomes.push(s.enqueue(delivery(QoS::AtLeastOnce), limits, |_| 0).0);
        }
        assert_eq!(
            outcomes,
            [Enqueued::Queued, Enqueued::Queued, Enqueued::QueueFull]
        );
        assert_eq!(s.dropped(), 1);
        // Sending frees the bytes.
        let mut out = Vec::new();
        s.take_ready(unix_millis(), 100, 100, &mut out, &mut Vec::new());
        assert_eq!(out.len(), 2);
        for _ in 0..2 {
            let queued = s.enqueue(delivery(QoS::AtLeastOnce), limits, |_| 0).0;
            assert_eq!(queued, Enqueued::Queued);
        }
        out.clear();
        s.take_ready(unix_millis(), 100, 100, &mut out, &mut Vec::new());
        assert_eq!(out.len(), 2);
        let big = Delivery {
            msg: Arc::new(Message::new(
                &ByteString::from_static("t"),
                &Bytes::from(vec![0u8; 64]),
                QoS::AtLeastOnce,
                false,
                0,
                None,
            )),
            ..delivery(QoS::AtLeastOnce)
        };
        assert_eq!(s.enqueue(big.clone(), limits, |_| 0).0, Enqueued::Queued);
        assert_eq!(s.enqueue(big, limits, |_| 0).0, Enqueued::QueueFull);
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), limits, |_| 0).0,
            Enqueued::QueueFull
        );
    }

    #[test]
    fn offline_qos0_is_not_queued_unless_configured() {
        let s = Session::new(1, "c".into());
        assert_eq!(
            s.enqueue(delivery(QoS::AtMostOnce), LIMITS, |_| 0).0,
            Enqueued::OfflineQos0
        );
        let keep = QueueLimits {
            queue_qos0_offline: true,
            ..LIMITS
        };
        assert_eq!(
            s.enqueue(delivery(QoS::AtMostOnce), keep, |_| 0).0,
            Enqueued::Queued
        );
    }

    #[test]
    fn window_limits_inflight_and_acks_free_it() {
        let s = Session::new(1, "c".into());
        s.set_online(true);
        let limits = QueueLimits {
            max_queued: 10,
            max_queued_bytes: 0,
            queue_qos0_offline: false,
        };
        for _ in 0..3 {
            s.enqueue(delivery(QoS::AtLeastOnce), limits, |_| 0);
        }
        let mut out = Vec::new();
        s.take_ready(unix_millis(), 2, 100, &mut out, &mut Vec::new());
        assert_eq!(out.len(), 2);
        assert_eq!(s.inflight_len(), 2);
        assert!(s.acknowledge(out[0].packet_id, Stage::PubAck).is_some());
        assert!(s.acknowledge(out[0].packet_id, Stage::PubAck).is_none());
        out.clear();
        s.take_ready(unix_millis(), 2, 100, &mut out, &mut Vec::new());
        assert_eq!(out.len(), 1);
        let mut resend = Vec::new();
        s.inflight_for_resend(usize::MAX, &mut resend);
        assert_eq!(resend.len(), 2);
        assert!(resend.iter().all(|o| o.dup));
    }

    #[test]
    fn a_packet_id_still_in_flight_after_a_full_round_is_skipped() {
        let s = Session::new(1, "c".into());
        s.set_online(true);
        let limits = QueueLimits {
            max_queued: 10,
            max_queued_bytes: 0,
            queue_qos0_offline: false,
        };
        let mut out = Vec::new();
        s.enqueue(delivery(QoS::AtLeastOnce), limits, |_| 0);
        s.take_ready(unix_millis(), 2, 1, &mut out, &mut Vec::new());
        let stuck = out[0].packet_id;
        // 65,534 more deliveries, each acknowledged at once: every other id goes round.
        for _ in 1..u16::MAX {
            out.clear();
            s.enqueue(delivery(QoS::AtLeastOnce), limits, |_| 0);
            s.take_ready(unix_millis(), 2, 1, &mut out, &mut Vec::new());
            assert_ne!(out[0].packet_id, stuck);
            assert!(s.acknowledge(out[0].packet_id, Stage::PubAck).is_some());
        }
        out.clear();
        s.enqueue(delivery(QoS::AtLeastOnce), limits, |_| 0);
        s.take_ready(unix_millis(), 2, 1, &mut out, &mut Vec::new());
        assert_eq!(out[0].packet_id, stuck.wrapping_add(1));
        assert_eq!(s.inflight_len(), 2);
        assert!(s.acknowledge(stuck, Stage::PubAck).is_some());
    }

    /// A client back with a smaller Receive Maximum gets what was in flight again as its window
    /// allows, the rest as it acknowledges, before anything new (found by the session fuzz
    /// target: all of it was resent at once).
    #[test]
    fn a_resume_resends_within_the_new_window() {
        let s = Session::new(1, "c".into());
        s.set_online(true);
        let limits = QueueLimits {
            max_queued: 10,
            max_queued_bytes: 0,
            queue_qos0_offline: false,
        };
        let mut out = Vec::new();
        for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce, QoS::AtLeastOnce] {
            s.enqueue(delivery(qos), limits, |_| 0);
        }
        s.take_ready(unix_millis(), 3, 10, &mut out, &mut Vec::new());
        let ids: Vec<u16> = out.iter().map(|o| o.packet_id).collect();
        assert!(s.acknowledge(ids[1], Stage::PubRec).is_some());
        s.enqueue(delivery(QoS::AtLeastOnce), limits, |_| 0);

        let mut resend = Vec::new();
        s.inflight_for_resend(1, &mut resend);
        assert_eq!(resend.len(), 1);
        assert!(resend[0].dup && resend[0].packet_id == ids[0]);
        out.clear();
        s.take_ready(unix_millis(), 1, 10, &mut out, &mut Vec::new());
        assert!(out.is_empty(), "the window is full: {out:?}");
        assert!(s.acknowledge(ids[0], Stage::PubAck).is_some());
        s.take_ready(unix_millis(), 1, 10, &mut out, &mut Vec::new());
        assert_eq!(out.len(), 1);
        assert!(out[0].pubrel && out[0].packet_id == ids[1], "{out:?}");
        out.clear();
        assert!(s.acknowledge(ids[1], Stage::PubComp).is_some());
        s.take_ready(unix_millis(), 1, 10, &mut out, &mut Vec::new());
        assert!(out[0].dup && out[0].packet_id == ids[2], "{out:?}");
        out.clear();
        assert!(s.acknowledge(ids[2], Stage::PubAck).is_some());
        s.take_ready(unix_millis(), 1, 10, &mut out, &mut Vec::new());
        assert!(!out[0].dup && !out[0].pubrel, "then the queue: {out:?}");
        assert_eq!(s.inflight_len(), 1);
    }

    #[test]
    fn qos2_flow_moves_to_pubcomp_then_completes() {
        let s = Session::new(1, "c".into());
        s.set_online(true);
        s.enqueue(delivery(QoS::ExactlyOnce), LIMITS, |_| 0);
        let mut out = Vec::new();
        s.take_ready(unix_millis(), 5, 5, &mut out, &mut Vec::new());
        let id = out[0].packet_id;
        assert!(s.acknowledge(id, Stage::PubRec).is_some());
        let mut resend = Vec::new();
        s.inflight_for_resend(usize::MAX, &mut resend);
        assert!(resend[0].pubrel);
        assert!(s.acknowledge(id, Stage::PubComp).is_some());
        assert_eq!(s.inflight_len(), 0);
    }

    #[test]
    fn incoming_qos2_detects_resends_and_bound() {
        let s = Session::new(1, "c".into());
        assert_eq!(s.incoming_qos2(7, 2), IncomingQos2::New);
        assert_eq!(s.incoming_qos2(7, 2), IncomingQos2::Resent);
        assert_eq!(s.incoming_qos2(8, 2), IncomingQos2::New);
        assert_eq!(s.incoming_qos2(9, 2), IncomingQos2::ReceiveMaximumExceeded);
        assert!(s.release_incoming(7));
        assert!(!s.release_incoming(7));
    }
}
