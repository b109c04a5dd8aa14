//! What goes to the client: control packets encoded into the write queue, and the session's
//! queue drained into PUBLISH heads (shared or patched, outbound topic aliases) plus payloads.

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

use super::publish::{ack, Held};
use super::{Client, READ_PAUSE_BYTES};
use crate::clock::{unix_millis, UnixMillis};
use crate::codec::{self, reason, Packet, QoS};
use crate::metrics::{DropReason, SentBatch};
use crate::session::{Outgoing, Stage};

/// Items taken from the session queue per wake-up; bounds the work done before yielding.
const FILL_BATCH: usize = 256;

thread_local! {
    /// The items of one fill, reused by every connection on the worker thread: a fill runs
    /// without awaiting, and a fresh vector per fill was an allocation (and a free) per write
    /// batch, i.e. per delivery when subscribers get one message at a time (fan-out).
    static READY: std::cell::RefCell<Vec<Outgoing>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Where control packets (acknowledgements mostly: one per QoS 1 PUBLISH) are encoded.
    static ENCODED: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

impl Client {
    pub(super) fn send(&mut self, packet: &Packet) {
        let out = ENCODED.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.clear();
            codec::encode(packet, self.protocol, &mut buf);
            // An exact-size copy is one allocation; freezing a fresh, larger encode buffer was two
            // (the buffer, then the shared header `Bytes` needs when length and capacity differ).
            Bytes::copy_from_slice(&buf)
        });
        self.ctx.metrics.packet_sent(packet);
        self.conn.queue(out);
    }

    /// Moves what the session may send now into the write queue. Returns true when it may have
    /// left sendable items behind (a full batch taken, or skipped while the write queue is full).
    pub(super) fn fill(&mut self) -> bool {
        if self.conn.pending_memory() >= READ_PAUSE_BYTES {
            return true;
        }
        self.release_acks();
        self.read_stored();
        let mut ready = READY.with(|r| std::mem::take(&mut *r.borrow_mut()));
        let now = unix_millis();
        let mut settled = Vec::new();
        let expired = self.session.take_ready(
            now,
            usize::from(self.send_window),
            FILL_BATCH,
            &mut ready,
            &mut settled,
        );
        if expired > 0 {
            self.ctx
                .metrics
                .dropped(DropReason::Expired, expired as u64);
        }
        let router = &self.ctx.router;
        for seq in settled {
            router.settled(&self.session, seq);
        }
        let mut exactly_once = false;
        // Resends (`Session::inflight_for_resend`) are stored at the stage they reached already.
        for o in ready
            .iter()
            .filter(|o| o.delivery.seq != 0 && !o.dup && !o.pubrel)
        {
            if o.delivery.qos == QoS::ExactlyOnce {
                exactly_once = true;
            } else {
                router.sent(&self.session, o.delivery.seq, o.packet_id, Stage::PubAck);
            }
        }
        let full = ready.len() >= FILL_BATCH;
        if exactly_once {
            self.hold_exactly_once(&mut ready);
        }
        if !ready.is_empty() {
            self.write_outgoing(&mut ready, now);
        }
        READY.with(|r| *r.borrow_mut() = ready);
        full
    }

    /// Takes the stored QoS 2 deliveries out of `ready`: each goes out once its packet id is
    /// stored (`Store::sent`), so that a restart resends it under the same id, which the client
    /// holds until PUBREL and answers without delivering it again. A QoS 1 resend is a duplicate
    /// QoS 1 allows, and goes out at once.
    fn hold_exactly_once(&mut self, ready: &mut Vec<Outgoing>) {
        let router = self.ctx.router.clone();
        for o in std::mem::take(ready) {
            if o.delivery.qos == QoS::ExactlyOnce && o.delivery.seq != 0 && !o.dup && !o.pubrel {
                let mark = router.sent(&self.session, o.delivery.seq, o.packet_id, Stage::PubRec);
                self.acknowledge_when_stored(Held::Publish(Box::new(o)), mark);
            } else {
                ready.push(o);
            }
        }
    }

    /// Brings the next part of a queue that a restart left in the store into memory, when the
    /// queue's front needs it: one chunk per fill, so a session's memory holds a window of its
    /// backlog, not all of it.
    fn read_stored(&mut self) {
        let Some((from, until, max)) = self.session.stored_wanted(FILL_BATCH) else {
            return;
        };
        match self
            .ctx
            .router
            .store
            .read_queued(&self.session.client_id, from, until, max)
        {
            Ok(chunk) => self.session.take_stored(chunk, max),
            Err(e) => {
                // Left where it is: the next fill tries again.
                tracing::error!(client = %self.session.client_id, "{e}");
            }
        }
    }

    /// Encodes outgoing items (and empties `items`): shared heads patched per receiver, payloads
    /// by reference.
    pub(super) fn write_outgoing(&mut self, items: &mut Vec<Outgoing>, now: UnixMillis) {
        // Empty until a head must be patched or encoded (a QoS 0 delivery of a shared head
        // allocates nothing here), then sized for the rest of the batch: one allocation per
        // batch rather than per patched head.
        let mut heads = BytesMut::new();
        let mut sent = SentBatch::default();
        let count = items.len();
        for (i, o) in items.drain(..).enumerate() {
            if o.pubrel {
                self.send(&Packet::PubRel(ack(o.packet_id, reason::SUCCESS)));
                continue;
            }
            let d = &o.delivery;
            let msg = &d.msg;
            // The last gate of every route to this client (live, queued, retained, resent,
            // shared): a wildcard subscription never carries a topic the client may not read.
            if let Some(acl) = self.acl.as_mut() {
                if !acl.may_read(&msg.topic) {
                    self.ctx.metrics.dropped(DropReason::NotAuthorized, 1);
                    self.give_up(o.packet_id);
                    continue;
                }
            }
            // An alias first sent with this message: known to the client only once written.
            let mut new_alias = None;
            let plain = msg.has_plain_layout(self.protocol)
                && (d.subscription_ids.is_empty() || !self.protocol.is_v5())
                && self.aliases_out.is_none();
            let head = if plain {
                let shared = msg.shared_head(self.protocol, d.qos);
                let flags = first_byte(d.qos, o.dup, d.retain);
                if flags == shared.bytes[0] && shared.packet_id_at.is_none() {
                    shared.bytes.clone()
                } else {
                    if heads.capacity() < shared.bytes.len() {
                        heads.reserve(shared.bytes.len() * (count - i));
                    }
                    heads.extend_from_slice(&shared.bytes);
                    let mut h = heads.split();
                    h[0] = flags;
                    if let Some(at) = shared.packet_id_at {
                        h[at..at + 2].copy_from_slice(&o.packet_id.to_be_bytes());
                    }
                    h.freeze()
                }
            } else {
                let (topic, alias) = self.outbound_alias(&msg.topic);
                new_alias = alias.filter(|_| !topic.is_empty());
                let props = msg.v5_properties(self.protocol, now, &d.subscription_ids, alias);
                codec::encode_publish_head(
                    &mut heads,
                    self.protocol,
                    d.qos,
                    o.dup,
                    d.retain,
                    topic,
                    o.packet_id,
                    &props,
                    msg.payload.len(),
                );
                heads.split().freeze()
            };
            if head.len() + msg.payload.len() > self.client_max_packet as usize {
                self.ctx.metrics.dropped(DropReason::TooLarge, 1);
                self.give_up(o.packet_id);
                continue;
            }
            if let (Some(alias), Some(a)) = (new_alias, self.aliases_out.as_mut()) {
                a.map.insert(ByteString::from(&msg.topic[..]), alias);
            }
            // Redeliveries and retained copies (RETAIN set) waited for reasons other than
            // delivery: they count as sent but stay out of the latency histogram.
            let retained_copy = d.retain && msg.retain;
            let live = !(o.dup || retained_copy);
            sent.add(d.qos as usize, live.then_some(msg.read_at));
            self.conn.queue(head);
            self.conn.queue(msg.payload.clone());
        }
        self.ctx.metrics.sent_batch(&sent);
    }

    /// The topic to write and the alias to send with it, for clients that accept aliases: an
    /// empty topic with a known alias, or the topic with the next free alias (registered by the
    /// caller once the message is written).
    fn outbound_alias<'a>(&self, topic: &'a ByteString) -> (&'a str, Option<u16>) {
        let Some(a) = self.aliases_out.as_ref() else {
            return (topic, None);
        };
        if let Some(&alias) = a.map.get(topic) {
            return ("", Some(alias));
        }
        if a.map.len() < usize::from(a.max) {
            return (topic, Some(a.map.len() as u16 + 1));
        }
        (topic, None)
    }

    /// A delivery taken into the window that will not be written (too large for the client, or
    /// not readable under its ACL): its flow ends, in the store too.
    fn give_up(&mut self, packet_id: u16) {
        if packet_id == 0 {
            return;
        }
        if let Some(seq) = self.session.abandon(packet_id) {
            self.ctx.router.settled(&self.session, seq);
        }
    }
}

fn first_byte(qos: QoS, dup: bool, retain: bool) -> u8 {
    0x30 | (u8::from(dup) << 3) | ((qos as u8) << 1) | u8::from(retain)
}
