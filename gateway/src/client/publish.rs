//! Inbound PUBLISH (topic aliases, quotas, validation, ACL, routing) and the acknowledgements
//! of the QoS 1 and 2 flows in both directions.

use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;
use tracing::debug;

use super::{AliasesIn, Client, Close};
use crate::clock::unix_millis;
use crate::codec::{reason, Ack, Packet, Properties, Publish, QoS};
use crate::limits::QuotaExceeded;
use crate::message::{ForwardedProperties, Message};
use crate::metrics::{CloseReason, DropReason, LimitExceeded};
use crate::session::{IncomingQos2, Kick, Outgoing, Stage};
use crate::store::Mark;
use crate::ticket::{Ticket, TicketState};
use crate::topic;

impl Client {
    pub(super) fn on_publish(&mut self, p: Publish) -> Result<(), Close> {
        let ctx = self.ctx.clone();
        let policy = &ctx.policy;
        if !p.properties.subscription_identifiers.is_empty() {
            // Only the server sends subscription identifiers in PUBLISH [MQTT-3.3.4-6].
            return Err(self.violation(
                reason::PROTOCOL_ERROR,
                "subscription identifier in PUBLISH from a client",
            ));
        }
        let topic = self.resolve_topic(&p)?;
        if topic.len() > policy.max_topic_length {
            self.ctx.metrics.limit_exceeded(LimitExceeded::TopicLength);
            debug!(client = %self.session.client_id, len = topic.len(), "PUBLISH topic longer than limits.max_topic_length");
            return Err(Close::protocol(reason::TOPIC_NAME_INVALID));
        }
        if policy.max_publish_rate > 0 || policy.max_publish_bytes_rate > 0 {
            self.charge_quota(topic.len() + p.payload.len())?;
        }
        if topic::validate_topic_name(&topic, policy.max_topic_levels).is_err() {
            return Err(self.violation(reason::TOPIC_NAME_INVALID, "invalid topic name in PUBLISH"));
        }
        #[cfg(feature = "fault-injection")]
        if &topic[..] == "$fault/panic" {
            panic!(
                "fault injection: panic requested by {}",
                self.session.client_id
            );
        }
        if !payload_format_ok(&p.properties, &p.payload) {
            if p.qos == QoS::AtMostOnce {
                return Err(self.violation(reason::PAYLOAD_FORMAT_INVALID, "payload is not UTF-8"));
            }
            self.ctx.metrics.bad_input("payload_format");
            self.acknowledge_publish(&p, reason::PAYLOAD_FORMAT_INVALID);
            return Ok(());
        }
        // Without an ACL file everything is writable but the broker's own `$SYS/` topics; with
        // one, only a rule naming `$SYS` grants them (wildcards never reach `$` topics).
        let may_write = match self.acl.as_mut() {
            Some(acl) => acl.may_write(&topic),
            None => !topic::is_sys(&topic),
        };
        if !may_write {
            debug!(client = %self.session.client_id, %topic, "PUBLISH not authorized");
            self.ctx.metrics.dropped(DropReason::NotAuthorized, 1);
            self.acknowledge_publish(&p, reason::NOT_AUTHORIZED);
            return Ok(());
        }
        let (route, mut stored) = match p.qos {
            QoS::ExactlyOnce => match self
                .session
                .incoming_qos2(p.packet_id, usize::from(policy.receive_maximum))
            {
                IncomingQos2::New => {
                    let mark = ctx.router.incoming_qos2(&self.session, p.packet_id, true);
                    (true, mark)
                }
                IncomingQos2::Resent => (false, 0),
                IncomingQos2::ReceiveMaximumExceeded => {
                    return Err(self
                        .violation(reason::RECEIVE_MAXIMUM_EXCEEDED, "receive maximum exceeded"));
                }
            },
            _ => (true, 0),
        };
        // A QoS 2 resend is not routed again, but ingestion sees it: its write may not have
        // been acknowledged yet (or was refused), and the same de-duplication id makes a
        // second write harmless.
        let mut tickets = Tickets::default();
        if route || ctx.ingest.is_some() {
            let msg = Arc::new(Message::new(
                &topic,
                &p.payload,
                p.qos,
                p.retain,
                self.session.id,
                ForwardedProperties::from_properties(&p.properties),
            ));
            if route {
                let routed = ctx.router.route(msg.clone(), Some(&self.session));
                if routed.refused {
                    return self.refuse_unstored(&p);
                }
                stored = stored.max(routed.stored);
                tickets.cluster = routed.confirm;
            }
            if let Some(ingest) = &ctx.ingest {
                // Every unacknowledged message can be resent, and the last `receive_maximum`
                // acknowledged ones too (their PUBACK may be lost).
                let window = usize::from(policy.receive_maximum) + self.held_acks();
                tickets.ingest =
                    ingest.offer(&msg, &self.session, p.packet_id, p.dup || !route, window);
            }
        }
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.acknowledge_when(Held::PubAck(p.packet_id, 0), stored, tickets);
            }
            QoS::ExactlyOnce => {
                self.acknowledge_when(Held::PubRec(p.packet_id, 0), stored, tickets);
            }
        }
        Ok(())
    }

    /// The store cannot keep what a persistent session must receive (disk full): the publisher
    /// is told so (v5: PUBACK / PUBREC 0x97 Quota exceeded, and a QoS 2 id is not held) or,
    /// without a way to say it (3.1.1), disconnected without an acknowledgement, so it resends.
    fn refuse_unstored(&mut self, p: &Publish) -> Result<(), Close> {
        debug!(client = %self.session.client_id, "PUBLISH refused: the store cannot write");
        if p.qos == QoS::ExactlyOnce && self.session.release_incoming(p.packet_id) {
            self.ctx
                .router
                .incoming_qos2(&self.session, p.packet_id, false);
        }
        if !self.protocol.is_v5() {
            return Err(Close {
                reason: CloseReason::StoreUnavailable,
                code: None,
                will: true,
            });
        }
        self.acknowledge_publish(p, reason::QUOTA_EXCEEDED);
        Ok(())
    }

    /// Charges one PUBLISH against the client's quotas; over either, the client is disconnected
    /// (v5: 0x96 message rate / 0x97 bytes; 3.1.1 has no way to say it and is closed).
    fn charge_quota(&mut self, bytes: usize) -> Result<(), Close> {
        let policy = &self.ctx.policy;
        // The read batch's time: no clock read per message.
        let charged = self.quota.get_or_insert_with(Box::default).charge(
            self.last_read,
            bytes,
            policy.max_publish_rate,
            policy.max_publish_bytes_rate,
        );
        let Err(exceeded) = charged else {
            return Ok(());
        };
        let (limit, code) = match exceeded {
            QuotaExceeded::Messages => (LimitExceeded::PublishRate, reason::MESSAGE_RATE_TOO_HIGH),
            QuotaExceeded::Bytes => (LimitExceeded::PublishBytesRate, reason::QUOTA_EXCEEDED),
        };
        self.ctx.metrics.limit_exceeded(limit);
        debug!(client = %self.session.client_id, ?exceeded, "publish quota exceeded: disconnecting");
        Err(Close {
            reason: CloseReason::QuotaExceeded,
            code: Some(code),
            will: true,
        })
    }

    /// A refusal (v5 reason code), in order behind any held acknowledgement.
    fn acknowledge_publish(&mut self, p: &Publish, code: u8) {
        let held = match p.qos {
            QoS::AtMostOnce => return,
            QoS::AtLeastOnce => Held::PubAck(p.packet_id, code),
            QoS::ExactlyOnce => Held::PubRec(p.packet_id, code),
        };
        self.acknowledge_when_stored(held, 0);
    }

    /// Applies v5 topic aliases: returns the topic the PUBLISH is for.
    fn resolve_topic(&mut self, p: &Publish) -> Result<ByteString, Close> {
        let Some(alias) = p.properties.topic_alias else {
            if p.topic.is_empty() {
                return Err(
                    self.violation(reason::PROTOCOL_ERROR, "empty topic without topic alias")
                );
            }
            return Ok(p.topic.clone());
        };
        let max = self.aliases_in_max;
        if alias == 0 || alias > max {
            return Err(self.violation(
                reason::TOPIC_ALIAS_INVALID,
                "topic alias 0 or above the maximum",
            ));
        }
        let slots = self.aliases_in.get_or_insert_with(|| {
            Box::new(AliasesIn(vec![None; usize::from(max)].into_boxed_slice()))
        });
        let slot = &mut slots.0[usize::from(alias - 1)];
        if p.topic.is_empty() {
            match slot {
                Some(t) => Ok(t.clone()),
                None => Err(self.violation(reason::PROTOCOL_ERROR, "unknown topic alias")),
            }
        } else {
            // The alias outlives this packet: own the topic instead of pinning the read buffer.
            *slot = Some(ByteString::from(&p.topic[..]));
            Ok(p.topic.clone())
        }
    }

    // The acknowledgements never close the connection; they answer in `handle`'s terms, as the
    // other packets do, so that it dispatches every packet in one line.

    /// PUBACK from the client: the end of a QoS 1 delivery to it.
    pub(super) fn on_puback(&mut self, a: Ack) -> Result<(), Close> {
        match self.session.acknowledge(a.packet_id, Stage::PubAck) {
            Some(seq) => self.ctx.router.settled(&self.session, seq),
            None => {
                debug!(client = %self.session.client_id, id = a.packet_id, "PUBACK for unknown packet id");
            }
        }
        Ok(())
    }

    /// PUBREC from the client: a QoS 2 delivery to it received (or refused); answered by PUBREL.
    pub(super) fn on_pubrec(&mut self, a: Ack) -> Result<(), Close> {
        let router = &self.ctx.router;
        if a.reason >= 0x80 {
            if let Some(seq) = self.session.abandon(a.packet_id) {
                router.settled(&self.session, seq);
            }
            return Ok(());
        }
        let (code, mark) = match self.session.acknowledge(a.packet_id, Stage::PubRec) {
            Some(seq) => {
                let mark = router.sent(&self.session, seq, a.packet_id, Stage::PubComp);
                (reason::SUCCESS, mark)
            }
            None => (reason::PACKET_IDENTIFIER_NOT_FOUND, 0),
        };
        // Once the client has PUBREL it may forget the id; a restart must then resend PUBREL,
        // not the PUBLISH it would take for a new message.
        self.acknowledge_when_stored(Held::PubRel(a.packet_id, code), mark);
        Ok(())
    }

    /// PUBREL from the client: its QoS 2 PUBLISH released; answered by PUBCOMP.
    /// The id's release is stored before PUBCOMP: a publisher reuses the id after PUBCOMP,
    /// and a restart that still held it would take the new message for a resend of the old.
    pub(super) fn on_pubrel(&mut self, a: Ack) -> Result<(), Close> {
        if self.session.release_incoming(a.packet_id) {
            let mark = self
                .ctx
                .router
                .incoming_qos2(&self.session, a.packet_id, false);
            self.acknowledge_when_stored(Held::PubComp(a.packet_id, 0), mark);
        } else {
            let code = reason::PACKET_IDENTIFIER_NOT_FOUND;
            self.acknowledge_when_stored(Held::PubComp(a.packet_id, code), 0);
        }
        Ok(())
    }

    /// PUBCOMP from the client: the end of a QoS 2 delivery to it.
    pub(super) fn on_pubcomp(&mut self, a: Ack) -> Result<(), Close> {
        if let Some(seq) = self.session.acknowledge(a.packet_id, Stage::PubComp) {
            self.ctx.router.settled(&self.session, seq);
        }
        Ok(())
    }

    /// Sends an acknowledgement once the store holds what it acknowledges (`mark`), in the order
    /// the acknowledged packets came: behind any still held.
    pub(super) fn acknowledge_when_stored(&mut self, held: Held, mark: Mark) {
        self.acknowledge_when(held, mark, Tickets::default());
    }

    /// `acknowledge_when_stored`, also waiting for ingestion's writes and the cluster link
    /// (`tickets`): the acknowledgement goes when the store, JetStream and NATS have the
    /// message.
    fn acknowledge_when(&mut self, held: Held, mark: Mark, tickets: Tickets) {
        if mark == 0 && tickets.is_empty() && self.held.is_none() {
            self.emit(held);
            return;
        }
        self.held
            .get_or_insert_with(|| Box::new(HeldAcks::new()))
            .acks
            .push_back((mark, tickets, held));
        self.release_acks();
    }

    /// Sends the held acknowledgements whose marks are durable and whose ingestion writes are
    /// acknowledged, in order; asks the store to wake the session when the first one still held
    /// is durable (a ticket wakes it by itself). A refused ingestion write refuses its
    /// acknowledgement: v5 with the reason code; a 3.1.1 client is disconnected (it cannot be
    /// told), and nothing after it is acknowledged.
    pub(super) fn release_acks(&mut self) {
        let Some(mut held) = self.held.take() else {
            return;
        };
        while let Some((mark, tickets, _)) = held.acks.front() {
            let mark = *mark;
            let store = &self.ctx.router.store;
            if !store.is_durable(mark) {
                if held.waiting_for < mark {
                    held.waiting_for = mark;
                    store.wake_when_durable(mark, &self.session);
                }
                break;
            }
            let refused = match tickets.state() {
                TicketState::Stored => None,
                TicketState::Pending => break,
                TicketState::Refused(code) => Some(code),
            };
            if refused.is_some() && !self.protocol.is_v5() {
                let kick = if tickets.ingest_refused() {
                    Kick::IngestRefused
                } else {
                    Kick::Unconfirmed
                };
                debug!(client = %self.session.client_id, ?kick, "a message was refused: disconnecting the 3.1.1 client");
                self.session.kick(kick);
                break;
            }
            if let Some((_, _, ack)) = held.acks.pop_front() {
                let ack = match refused {
                    Some(code) => self.refused(ack, code),
                    None => ack,
                };
                self.emit(ack);
            }
        }
        if !held.acks.is_empty() {
            self.held = Some(held);
        }
    }

    /// How many acknowledgements wait (for the store, or for ingestion).
    pub(super) fn held_acks(&self) -> usize {
        self.held.as_ref().map_or(0, |h| h.len())
    }

    /// Sends what was held, built into a packet only now.
    fn emit(&mut self, held: Held) {
        let packet = match held {
            Held::PubAck(id, code) => Packet::PubAck(ack(id, code)),
            Held::PubRec(id, code) => Packet::PubRec(ack(id, code)),
            Held::PubComp(id, code) => Packet::PubComp(ack(id, code)),
            Held::PubRel(id, code) => Packet::PubRel(ack(id, code)),
            Held::Other(p) => *p,
            Held::Publish(o) => return self.write_outgoing(&mut vec![*o], unix_millis()),
        };
        self.send(&packet);
    }

    /// `ack` with reason code `code`; a refused QoS 2 id is not held (the client may reuse it).
    fn refused(&mut self, ack: Held, code: u8) -> Held {
        match ack {
            Held::PubAck(id, _) => Held::PubAck(id, code),
            Held::PubRec(id, _) => {
                if self.session.release_incoming(id) {
                    self.ctx.router.incoming_qos2(&self.session, id, false);
                }
                Held::PubRec(id, code)
            }
            other => other,
        }
    }
}

/// What an acknowledgement waits for besides the store: ingestion's writes, the cluster link.
#[derive(Default)]
pub(super) struct Tickets {
    ingest: Option<Arc<Ticket>>,
    cluster: Option<Arc<Ticket>>,
}

impl Tickets {
    fn is_empty(&self) -> bool {
        self.ingest.is_none() && self.cluster.is_none()
    }

    fn ingest_refused(&self) -> bool {
        self.ingest
            .as_ref()
            .is_some_and(|t| matches!(t.state(), TicketState::Refused(_)))
    }

    /// Pending while either is; refused when either refused (ingestion's reason first).
    fn state(&self) -> TicketState {
        let states = [&self.ingest, &self.cluster].map(|t| t.as_ref().map(|t| t.state()));
        if states.contains(&Some(TicketState::Pending)) {
            return TicketState::Pending;
        }
        states
            .into_iter()
            .flatten()
            .find(|s| matches!(s, TicketState::Refused(_)))
            .unwrap_or(TicketState::Stored)
    }
}

/// Acknowledgements (and QoS 2 flows to persistent sessions) held until the store, ingestion
/// and the cluster link have what they depend on: boxed and present only while some are held
/// (a session publishing to no persistent subscriber, ingestion rule or other node never has
/// one).
pub(super) struct HeldAcks {
    /// Each with the store's mark and the tickets it waits for.
    acks: std::collections::VecDeque<(Mark, Tickets, Held)>,
    /// The mark the session asked to be woken for.
    waiting_for: Mark,
}

impl HeldAcks {
    pub(super) fn len(&self) -> usize {
        self.acks.len()
    }

    fn new() -> HeldAcks {
        HeldAcks {
            // A publisher's window of acknowledgements per commit, without regrowing.
            acks: std::collections::VecDeque::with_capacity(16),
            waiting_for: 0,
        }
    }
}

/// A held acknowledgement. The three of a publish (nearly all) as their packet id and reason
/// code, built into a packet only when sent: a `Packet` is 472 bytes, moved in and out of the
/// queue for every message a persistent session must receive.
pub(super) enum Held {
    PubAck(u16, u8),
    PubRec(u16, u8),
    PubComp(u16, u8),
    /// Ends a QoS 2 delivery to the client, once its stage is stored.
    PubRel(u16, u8),
    /// A QoS 2 PUBLISH to a persistent session, once its packet id is stored.
    Publish(Box<Outgoing>),
    /// SUBACK, UNSUBACK.
    Other(Box<Packet>),
}

pub(super) fn ack(packet_id: u16, code: u8) -> Ack {
    Ack {
        packet_id,
        reason: code,
        properties: Properties::default(),
    }
}

/// A payload flagged as UTF-8 (payload format indicator 1) must be UTF-8.
pub(super) fn payload_format_ok(props: &Properties, payload: &Bytes) -> bool {
    props.payload_format_indicator != Some(1) || std::str::from_utf8(payload).is_ok()
}
