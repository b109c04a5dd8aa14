//! One client connection as an input drives it, and the checks on what the broker writes back.
//!
//! What the client writes is framed and decoded here as the broker will read it (same framing,
//! same decoder, same maximum packet size), so the peer knows which requests the broker owes an
//! answer (in order), which of its own acknowledgements free a slot of the window, and where the
//! broker stops reading (DISCONNECT, a packet it must refuse, bytes it cannot frame). What the
//! broker writes is framed and decoded as it arrives and checked packet by packet: CONNACK first
//! or nothing, nothing after a refusal or a DISCONNECT, answers in the order of the requests,
//! outbound packet ids nonzero and unique among those in flight, no more in flight than the
//! window, nothing larger than the client's Maximum Packet Size, outbound topic aliases only
//! as the client allows and learned.

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use crate::codec::{
    decode, decode_connect, frame_len, reason, DecodeError, Packet, Protocol, QoS,
    SubscriptionOptions,
};

/// A PUBLISH the broker read from this client.
#[derive(Debug)]
pub(super) struct Published {
    pub(super) tag: Option<u64>,
    /// `None`: an alias the broker does not know (it closes the connection).
    pub(super) topic: Option<ByteString>,
    pub(super) qos: QoS,
    pub(super) retain: bool,
    pub(super) packet_id: u16,
    /// A Message Expiry Interval was set: it may expire before it is delivered.
    pub(super) expires: bool,
    pub(super) sent_at: u64,
    /// When its successful PUBACK / PUBREC came back.
    pub(super) acked_at: Option<u64>,
}

/// A SUBSCRIBE the broker read from this client.
#[derive(Debug)]
pub(super) struct Subscribed {
    pub(super) filters: Vec<(ByteString, SubscriptionOptions)>,
    pub(super) sent_at: u64,
    /// When its SUBACK came back, with its codes.
    pub(super) granted: Option<(u64, Vec<u8>)>,
}

/// A PUBLISH the broker wrote to this client.
#[derive(Debug)]
pub(super) struct Receipt {
    pub(super) tag: Option<u64>,
}

/// What the delivery check needs of one connection.
#[derive(Debug, Default)]
pub(super) struct Log {
    pub(super) client_id: Option<ByteString>,
    pub(super) publishes: Vec<Published>,
    pub(super) subscribes: Vec<Subscribed>,
    /// (step, filter) of every UNSUBSCRIBE entry the broker read.
    pub(super) unsubscribes: Vec<(u64, ByteString)>,
    /// (step, packet id) of every PUBREL the broker read.
    pub(super) pubrels: Vec<(u64, u16)>,
    pub(super) receipts: Vec<Receipt>,
}

/// An answer the broker owes, in the order the requests came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owed {
    /// For the PUBLISH at this index of `Log::publishes`.
    PubAck(u16, usize),
    PubRec(u16, usize),
    PubComp(u16),
    /// For the SUBSCRIBE at this index of `Log::subscribes`.
    SubAck(u16, usize),
    UnsubAck(u16),
}

/// Where the broker's side of the conversation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing read yet: CONNACK or nothing must come first.
    Opening,
    Connected,
    /// CONNACK refused the connection, or the broker sent DISCONNECT: nothing may follow.
    Over,
    /// The broker closed its end.
    Closed,
}

/// The client's side as the broker reads it.
struct Sent {
    unframed: Vec<u8>,
    max_packet: usize,
    protocol: Option<Protocol>,
    /// The broker reads nothing after this (DISCONNECT, a refused packet, unframable bytes).
    stopped: bool,
    owed: VecDeque<Owed>,
    pings: usize,
    aliases: HashMap<u16, ByteString>,
    topic_alias_maximum: u16,
}

pub(super) struct Peer {
    /// Which of the input's client slots, for messages.
    pub(super) slot: usize,
    io: DuplexStream,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Whether the client reads what the broker writes (a client that does not is throttled).
    pub(super) reading: bool,
    /// The client closed its sending side.
    write_closed: bool,
    sent: Sent,
    received: BytesMut,
    phase: Phase,
    /// The client's Receive Maximum as the window (`mqtt.max_inflight` at most).
    window: usize,
    client_max_packet: usize,
    client_alias_max: u16,
    /// Outbound QoS 1/2 packet ids in flight, and how far each flow got.
    inflight: HashMap<u16, Flow>,
    /// Outbound packet ids the client answered PUBREC (the broker answers each with PUBREL).
    pubrecs: HashSet<u16>,
    aliases_out: HashMap<u16, ByteString>,
    /// The client acknowledged a packet id it had not been sent yet, as far as it has read: the
    /// window count may lag behind the broker's.
    window_unknown: bool,
    pub(super) log: Log,
}

/// The tag a fuzzed PUBLISH carries at the start of its payload: `<hex>`.
pub(super) fn tag_of(payload: &[u8]) -> Option<u64> {
    let rest = payload.strip_prefix(b"<")?;
    let end = rest.iter().position(|&b| b == b'>')?;
    let digits = std::str::from_utf8(&rest[..end]).ok()?;
    u64::from_str_radix(digits, 16).ok()
}

impl Peer {
    pub(super) fn new(
        slot: usize,
        io: DuplexStream,
        task: tokio::task::JoinHandle<()>,
        max_packet: u32,
        max_inflight: u16,
        topic_alias_maximum: u16,
    ) -> Peer {
        Peer {
            slot,
            io,
            task: Some(task),
            reading: true,
            write_closed: false,
            sent: Sent {
                unframed: Vec::new(),
                max_packet: max_packet as usize,
                protocol: None,
                stopped: false,
                owed: VecDeque::new(),
                pings: 0,
                aliases: HashMap::new(),
                topic_alias_maximum,
            },
            received: BytesMut::new(),
            phase: Phase::Opening,
            window: usize::from(max_inflight),
            client_max_packet: usize::MAX,
            client_alias_max: 0,
            inflight: HashMap::new(),
            pubrecs: HashSet::new(),
            aliases_out: HashMap::new(),
            window_unknown: false,
            log: Log::default(),
        }
    }

    /// The protocol the client speaks: its CONNECT's, or 5.0 before it sent one.
    pub(super) fn protocol(&self) -> Protocol {
        self.sent.protocol.unwrap_or(Protocol::V5)
    }

    /// Whether the broker has closed its end.
    pub(super) fn closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Connected, reading and answered so far: what the delivery check may count on.
    pub(super) fn attached(&self) -> bool {
        self.phase == Phase::Connected && !self.sent.stopped && !self.write_closed
    }

    /// Whether the broker was told the conversation is over (or must end it): it must close.
    pub(super) fn must_close(&self) -> bool {
        self.sent.stopped || self.write_closed
    }

    /// Outbound packet ids in flight, for acknowledgements that name a real one.
    pub(super) fn inflight_ids(&self) -> Vec<(u16, Flow)> {
        let mut ids: Vec<(u16, Flow)> = self.inflight.iter().map(|(&id, &f)| (id, f)).collect();
        ids.sort_unstable_by_key(|&(id, _)| id);
        ids
    }

    /// Whether anything is in flight towards the client.
    pub(super) fn has_inflight(&self) -> bool {
        !self.inflight.is_empty()
    }

    /// Writes bytes to the broker (as far as its buffer takes them without waiting) and follows
    /// them in the model of what the broker reads.
    pub(super) fn write(&mut self, bytes: &[u8], step: u64) {
        if self.write_closed || bytes.is_empty() {
            return;
        }
        // A broker that stopped reading leaves the pipe full: what does not fit is never read.
        let taken = match self.io.write(bytes).now_or_never() {
            Some(Ok(n)) => n,
            Some(Err(_)) | None => 0,
        };
        self.follow(&bytes[..taken], step);
    }

    /// Closes the client's sending side: the broker reads the end of the stream.
    pub(super) fn close_write(&mut self) {
        if !self.write_closed {
            self.write_closed = true;
            let _ = self.io.shutdown().now_or_never();
        }
    }

    fn follow(&mut self, bytes: &[u8], step: u64) {
        if self.sent.stopped {
            return;
        }
        self.sent.unframed.extend_from_slice(bytes);
        loop {
            let len = match frame_len(&self.sent.unframed, self.sent.max_packet) {
                Ok(Some(len)) => len,
                Ok(None) => return,
                Err(_) => {
                    self.sent.stopped = true;
                    return;
                }
            };
            let frame = Bytes::copy_from_slice(&self.sent.unframed[..len]);
            self.sent.unframed.drain(..len);
            self.read_by_broker(frame, step);
            if self.sent.stopped {
                return;
            }
        }
    }

    /// One frame as the broker handles it.
    fn read_by_broker(&mut self, frame: Bytes, step: u64) {
        let Some(protocol) = self.sent.protocol else {
            match decode_connect(frame) {
                Ok(c) => {
                    self.sent.protocol = Some(c.protocol);
                    self.log.client_id = Some(c.client_id.clone());
                    if let Some(max) = c.properties.receive_maximum {
                        self.window = self.window.min(usize::from(max));
                    }
                    if let Some(max) = c.properties.maximum_packet_size {
                        self.client_max_packet = max as usize;
                    }
                    self.client_alias_max = c.properties.topic_alias_maximum.unwrap_or(0);
                }
                Err(e) => {
                    // The broker answers a CONNECT naming a protocol it does not know with
                    // CONNACK 0x01 in 3.1.1's form, whatever the level (`handshake::read_connect`).
                    if let DecodeError::UnsupportedProtocol { .. } = e {
                        self.sent.protocol = Some(Protocol::V311);
                    }
                    self.sent.stopped = true;
                }
            }
            return;
        };
        let packet = match decode(frame, protocol) {
            Ok(p) => p,
            Err(_) => {
                self.sent.stopped = true;
                return;
            }
        };
        match packet {
            Packet::Publish(p) => {
                let topic = match p.properties.topic_alias {
                    None => Some(p.topic.clone()),
                    Some(a) if a == 0 || a > self.sent.topic_alias_maximum => None,
                    Some(a) if p.topic.is_empty() => self.sent.aliases.get(&a).cloned(),
                    Some(a) => {
                        self.sent.aliases.insert(a, p.topic.clone());
                        Some(p.topic.clone())
                    }
                };
                let index = self.log.publishes.len();
                self.log.publishes.push(Published {
                    tag: tag_of(&p.payload),
                    topic,
                    qos: p.qos,
                    retain: p.retain,
                    packet_id: p.packet_id,
                    expires: p.properties.message_expiry_interval.is_some(),
                    sent_at: step,
                    acked_at: None,
                });
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => self.sent.owed.push_back(Owed::PubAck(p.packet_id, index)),
                    QoS::ExactlyOnce => self.sent.owed.push_back(Owed::PubRec(p.packet_id, index)),
                }
            }
            Packet::PubAck(a) | Packet::PubComp(a) => self.settle(a.packet_id, None),
            Packet::PubRec(a) => self.settle(a.packet_id, Some(a.reason)),
            Packet::PubRel(a) => {
                self.log.pubrels.push((step, a.packet_id));
                self.sent.owed.push_back(Owed::PubComp(a.packet_id));
            }
            Packet::Subscribe(s) => {
                let index = self.log.subscribes.len();
                self.sent.owed.push_back(Owed::SubAck(s.packet_id, index));
                self.log.subscribes.push(Subscribed {
                    filters: s.filters,
                    sent_at: step,
                    granted: None,
                });
            }
            Packet::Unsubscribe(u) => {
                self.sent.owed.push_back(Owed::UnsubAck(u.packet_id));
                for f in u.filters {
                    self.log.unsubscribes.push((step, f));
                }
            }
            Packet::PingReq => self.sent.pings += 1,
            // DISCONNECT ends it; AUTH (no method was agreed), a second CONNECT and server packets
            // are refused.
            _ => self.sent.stopped = true,
        }
    }

    /// The client's PUBACK / PUBREC / PUBCOMP for an outbound packet id (`pubrec`: its reason).
    fn settle(&mut self, id: u16, pubrec: Option<u8>) {
        if !self.inflight.contains_key(&id) && (!self.reading || !self.received.is_empty()) {
            // Possibly for a PUBLISH written but not read yet: the broker frees a slot the
            // count here never filled.
            self.window_unknown = true;
        }
        match pubrec {
            Some(code) if code < 0x80 => {
                self.pubrecs.insert(id);
                if let Some(flow @ Flow::Rec) = self.inflight.get_mut(&id) {
                    *flow = Flow::Rel;
                }
            }
            _ => {
                self.inflight.remove(&id);
            }
        }
    }

    /// Reads whatever the broker has written, without waiting, and checks it. Returns whether
    /// anything came.
    pub(super) fn drain(&mut self, step: u64) -> bool {
        let mut any = false;
        while self.reading && self.phase != Phase::Closed {
            self.received.reserve(4096);
            match self.io.read_buf(&mut self.received).now_or_never() {
                Some(Ok(0)) | Some(Err(_)) => {
                    self.phase = Phase::Closed;
                    any = true;
                }
                Some(Ok(_)) => {
                    any = true;
                    self.check_received(step);
                }
                None => break,
            }
        }
        any
    }

    fn check_received(&mut self, step: u64) {
        loop {
            let len = match frame_len(&self.received, usize::MAX) {
                Ok(Some(len)) => len,
                Ok(None) => return,
                Err(e) => panic!(
                    "client {}: the broker wrote bytes that do not frame: {e}",
                    self.slot
                ),
            };
            let frame = self.received.split_to(len).freeze();
            assert!(
                len <= self.client_max_packet,
                "client {}: a {len}-byte packet of type {}, above the client's Maximum Packet Size {}",
                self.slot,
                frame[0] >> 4,
                self.client_max_packet
            );
            let packet = decode(frame, self.protocol()).unwrap_or_else(|e| {
                panic!("client {}: the broker wrote a bad packet: {e}", self.slot)
            });
            self.check(packet, step);
        }
    }

    fn check(&mut self, packet: Packet, step: u64) {
        let slot = self.slot;
        match self.phase {
            Phase::Opening => {
                let Packet::ConnAck(c) = packet else {
                    panic!(
                        "client {slot}: the broker's first packet is {}, not CONNACK",
                        packet.kind()
                    );
                };
                self.phase = if c.reason == reason::SUCCESS {
                    Phase::Connected
                } else {
                    Phase::Over
                };
                return;
            }
            Phase::Over => panic!(
                "client {slot}: {} after a refused CONNACK or the broker's DISCONNECT",
                packet.kind()
            ),
            Phase::Closed => unreachable!("nothing is read after the end of the stream"),
            Phase::Connected => {}
        }
        match packet {
            Packet::Publish(p) => {
                if p.qos != QoS::AtMostOnce {
                    assert_ne!(
                        p.packet_id, 0,
                        "client {slot}: PUBLISH QoS {:?} with packet id 0",
                        p.qos
                    );
                    let flow = if p.qos == QoS::AtLeastOnce {
                        Flow::Ack
                    } else {
                        Flow::Rec
                    };
                    assert!(
                        self.inflight.insert(p.packet_id, flow).is_none(),
                        "client {slot}: packet id {} sent again while in flight",
                        p.packet_id
                    );
                    assert!(
                        self.window_unknown || self.inflight.len() <= self.window,
                        "client {slot}: {} PUBLISH in flight, above the window of {}",
                        self.inflight.len(),
                        self.window
                    );
                }
                self.check_alias(p.properties.topic_alias, &p.topic);
                self.log.receipts.push(Receipt {
                    tag: tag_of(&p.payload),
                });
            }
            Packet::PubRel(a) => {
                let id = a.packet_id;
                match self.inflight.get_mut(&id) {
                    Some(flow @ Flow::Rel) => *flow = Flow::Comp,
                    // The answer to the client's PUBREC for an id not in flight (3.x has no 0x92
                    // to say so): it takes no slot of the broker's window.
                    None if self.pubrecs.contains(&id) => {}
                    // A QoS 2 delivery of an earlier connection, resumed: in flight until PUBCOMP.
                    None if a.reason == reason::SUCCESS => {
                        self.inflight.insert(id, Flow::Comp);
                    }
                    _ => assert!(
                        self.pubrecs.contains(&id),
                        "client {slot}: PUBREL {id} without the client's PUBREC"
                    ),
                }
            }
            Packet::PubAck(a) => self.answered(Answer::PubAck, a.packet_id, a.reason, step),
            Packet::PubRec(a) => self.answered(Answer::PubRec, a.packet_id, a.reason, step),
            Packet::PubComp(a) => self.answered(Answer::PubComp, a.packet_id, a.reason, step),
            Packet::UnsubAck(a) => self.answered(Answer::UnsubAck, a.packet_id, 0, step),
            Packet::SubAck(a) => match self.sent.owed.front() {
                Some(&Owed::SubAck(id, index)) if id == a.packet_id => {
                    let sub = &mut self.log.subscribes[index];
                    assert_eq!(
                        a.reasons.len(),
                        sub.filters.len(),
                        "client {slot}: SUBACK codes for {} filters",
                        sub.filters.len()
                    );
                    sub.granted = Some((step, a.reasons));
                    self.sent.owed.pop_front();
                }
                other => panic!(
                    "client {slot}: SUBACK {} where {other:?} was owed",
                    a.packet_id
                ),
            },
            Packet::PingResp => {
                assert!(
                    self.sent.pings > 0,
                    "client {slot}: PINGRESP without PINGREQ"
                );
                self.sent.pings -= 1;
            }
            Packet::Disconnect(_) => {
                assert!(
                    self.protocol().is_v5(),
                    "client {slot}: DISCONNECT to a 3.1.1 client"
                );
                self.phase = Phase::Over;
            }
            other => panic!("client {slot}: the broker sent {}", other.kind()),
        }
    }

    fn check_alias(&mut self, alias: Option<u16>, topic: &ByteString) {
        let slot = self.slot;
        let Some(alias) = alias else {
            assert!(
                !topic.is_empty(),
                "client {slot}: PUBLISH with neither topic nor alias"
            );
            return;
        };
        assert!(
            alias >= 1 && alias <= self.client_alias_max,
            "client {slot}: topic alias {alias} beyond the client's maximum {}",
            self.client_alias_max
        );
        if topic.is_empty() {
            assert!(
                self.aliases_out.contains_key(&alias),
                "client {slot}: topic alias {alias} used before the client learned it"
            );
        } else {
            self.aliases_out.insert(alias, topic.clone());
        }
    }

    fn answered(&mut self, answer: Answer, id: u16, code: u8, step: u64) {
        let slot = self.slot;
        let owed = self.sent.owed.pop_front();
        let publish = match (answer, owed) {
            (Answer::PubAck, Some(Owed::PubAck(owed, index)))
            | (Answer::PubRec, Some(Owed::PubRec(owed, index)))
                if owed == id =>
            {
                Some(index)
            }
            (Answer::PubComp, Some(Owed::PubComp(owed)))
            | (Answer::UnsubAck, Some(Owed::UnsubAck(owed)))
                if owed == id =>
            {
                None
            }
            (_, owed) => panic!("client {slot}: {answer:?} {id} where {owed:?} was owed"),
        };
        if let (Some(index), true) = (publish, code < 0x80) {
            self.log.publishes[index].acked_at = Some(step);
        }
    }

    /// The broker's connection task, once it ended: a panic in it is the fuzzer's finding.
    pub(super) async fn join(&mut self) {
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                if let Ok(panic) = e.try_into_panic() {
                    std::panic::resume_unwind(panic);
                }
            }
        }
    }
}

/// How far an outbound QoS 1/2 flow got, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    /// QoS 1: the client owes PUBACK.
    Ack,
    /// QoS 2: the client owes PUBREC.
    Rec,
    /// The client answered PUBREC; the broker owes PUBREL.
    Rel,
    /// The broker sent PUBREL; the client owes PUBCOMP.
    Comp,
}

#[derive(Debug, Clone, Copy)]
enum Answer {
    PubAck,
    PubRec,
    PubComp,
    UnsubAck,
}
