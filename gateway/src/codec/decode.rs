//! Framing and strict decoding of MQTT control packets received from clients.
//!
//! A broker must tell malformed packets and protocol errors apart from valid ones before it acts
//! on them, so every rule of the specification that can be checked without session state is
//! checked here: fixed header flags, QoS values, string encoding, lengths, and which properties
//! each packet may carry. Semantic checks that need the session (wildcards in topic names, topic
//! aliases, client identifier policy) are left to it. Decoding never panics and never allocates
//! more than the frame could hold: the frame itself is bounded by the maximum packet size.

use bytes::Bytes;
use bytestring::ByteString;

use super::packet::{
    reason, Ack, Auth, ConnAck, Connect, Disconnect, LastWill, Packet, Properties, Protocol,
    Publish, QoS, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};
use super::properties::{self, Context};

/// Why a frame was rejected. The text names the exact rule that was broken, for logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("protocol error: property 0x{id:02X} not allowed in {packet}")]
    PropertyNotAllowed { id: u8, packet: &'static str },
    #[error("protocol error: duplicate property 0x{id:02X}")]
    DuplicateProperty { id: u8 },
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("unsupported protocol name or level {level}")]
    UnsupportedProtocol { level: u8 },
}

impl DecodeError {
    /// The v5 reason code the broker answers this error with (CONNACK or DISCONNECT).
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::Malformed(_) => reason::MALFORMED_PACKET,
            DecodeError::Protocol(_)
            | DecodeError::PropertyNotAllowed { .. }
            | DecodeError::DuplicateProperty { .. } => reason::PROTOCOL_ERROR,
            DecodeError::TooLarge { .. } => reason::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocol { .. } => reason::UNSUPPORTED_PROTOCOL_VERSION,
        }
    }

    /// A short, stable label with few distinct values, fit for a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Malformed(_) => "malformed",
            DecodeError::Protocol(_)
            | DecodeError::PropertyNotAllowed { .. }
            | DecodeError::DuplicateProperty { .. } => "protocol",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::UnsupportedProtocol { .. } => "unsupported_protocol",
        }
    }
}

/// Looks at the front of `buf`. `Ok(None)`: more bytes are needed. `Ok(Some(n))`: a whole packet
/// of `n` bytes, fixed header included, is at the front. An oversized packet is refused as soon as
/// its remaining length is known, so the caller never buffers its body.
pub fn frame_len(buf: &[u8], max_packet_size: usize) -> Result<Option<usize>, DecodeError> {
    let Some((remaining, len_bytes)) = read_varint(
        buf.get(1..).unwrap_or_default(),
        "remaining length overflow",
        "non-minimal remaining length",
    )?
    else {
        return Ok(None);
    };
    let size = 1 + len_bytes + remaining;
    if size > max_packet_size {
        return Err(DecodeError::TooLarge {
            size,
            max: max_packet_size,
        });
    }
    Ok((buf.len() >= size).then_some(size))
}

/// Decodes the first packet of a connection, which must be CONNECT.
pub fn decode_connect(frame: Bytes) -> Result<Connect, DecodeError> {
    let (first, mut r) = open(&frame)?;
    if first >> 4 != 1 {
        return Err(DecodeError::Protocol("first packet is not CONNECT"));
    }
    check_flags(first, 0, "reserved flags set in CONNECT")?;
    connect(&mut r)
}

/// Decodes one complete frame (as delimited by `frame_len`) of a connection at `protocol`.
pub fn decode(frame: Bytes, protocol: Protocol) -> Result<Packet, DecodeError> {
    let (first, mut r) = open(&frame)?;
    let r = &mut r;
    let v5 = protocol.is_v5();
    let packet = match first >> 4 {
        1 => {
            check_flags(first, 0, "reserved flags set in CONNECT")?;
            Packet::Connect(Box::new(connect(r)?))
        }
        2 => {
            check_flags(first, 0, "reserved flags set in CONNACK")?;
            Packet::ConnAck(connack(r, protocol)?)
        }
        3 => Packet::Publish(publish(r, first, protocol)?),
        4 => {
            check_flags(first, 0, "reserved flags set in PUBACK")?;
            Packet::PubAck(ack(r, protocol, &PUBACK)?)
        }
        5 => {
            check_flags(first, 0, "reserved flags set in PUBREC")?;
            Packet::PubRec(ack(r, protocol, &PUBREC)?)
        }
        6 => {
            check_flags(first, 0b0010, "reserved flags of PUBREL not 0010")?;
            Packet::PubRel(ack(r, protocol, &PUBREL)?)
        }
        7 => {
            check_flags(first, 0, "reserved flags set in PUBCOMP")?;
            Packet::PubComp(ack(r, protocol, &PUBCOMP)?)
        }
        8 => {
            check_flags(first, 0b0010, "reserved flags of SUBSCRIBE not 0010")?;
            Packet::Subscribe(subscribe(r, protocol)?)
        }
        9 => {
            check_flags(first, 0, "reserved flags set in SUBACK")?;
            Packet::SubAck(suback(r, protocol)?)
        }
        10 => {
            check_flags(first, 0b0010, "reserved flags of UNSUBSCRIBE not 0010")?;
            Packet::Unsubscribe(unsubscribe(r, protocol)?)
        }
        11 => {
            check_flags(first, 0, "reserved flags set in UNSUBACK")?;
            Packet::UnsubAck(unsuback(r, protocol)?)
        }
        12 => {
            check_flags(first, 0, "reserved flags set in PINGREQ")?;
            r.finish("PINGREQ with a body")?;
            Packet::PingReq
        }
        13 => {
            check_flags(first, 0, "reserved flags set in PINGRESP")?;
            r.finish("PINGRESP with a body")?;
            Packet::PingResp
        }
        14 => {
            check_flags(first, 0, "reserved flags set in DISCONNECT")?;
            Packet::Disconnect(disconnect(r, protocol)?)
        }
        15 if v5 => {
            check_flags(first, 0, "reserved flags set in AUTH")?;
            Packet::Auth(auth(r)?)
        }
        15 => return Err(DecodeError::Malformed("AUTH before MQTT 5.0")),
        _ => return Err(DecodeError::Malformed("reserved packet type 0")),
    };
    Ok(packet)
}

/// Splits a frame into its first byte and a reader over its body, checking that the remaining
/// length covers exactly the frame.
fn open(frame: &Bytes) -> Result<(u8, Reader<'_>), DecodeError> {
    let first = *frame.first().ok_or(DecodeError::Malformed("empty frame"))?;
    let (remaining, len_bytes) = read_varint(
        frame.get(1..).unwrap_or_default(),
        "remaining length overflow",
        "non-minimal remaining length",
    )?
    .ok_or(DecodeError::Malformed("truncated fixed header"))?;
    let start = 1 + len_bytes;
    if frame.len() - start != remaining {
        return Err(DecodeError::Malformed(
            "remaining length does not match the frame",
        ));
    }
    Ok((first, Reader::new(frame, start)))
}

fn check_flags(first: u8, expected: u8, msg: &'static str) -> Result<(), DecodeError> {
    if first & 0x0F == expected {
        Ok(())
    } else {
        Err(DecodeError::Malformed(msg))
    }
}

/// Parses a variable byte integer at the front of `buf`: `Ok(None)` when `buf` ends first,
/// otherwise the value and how many bytes it took. The specification requires the shortest
/// encoding, and allows at most four bytes.
fn read_varint(
    buf: &[u8],
    overflow: &'static str,
    non_minimal: &'static str,
) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for (i, &byte) in buf.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            if i > 0 && byte == 0 {
                return Err(DecodeError::Malformed(non_minimal));
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        Err(DecodeError::Malformed(overflow))
    } else {
        Ok(None)
    }
}

/// The error texts for one kind of string, so that an error names the field it was found in.
pub(super) struct Field {
    truncated: &'static str,
    utf8: &'static str,
    nul: &'static str,
}

macro_rules! field {
    ($name:literal) => {
        $crate::codec::decode::Field::new(
            concat!($name, " runs past the end of the packet"),
            concat!("invalid UTF-8 in ", $name),
            concat!("U+0000 in ", $name),
        )
    };
}
pub(super) use field;

impl Field {
    pub(super) const fn new(
        truncated: &'static str,
        utf8: &'static str,
        nul: &'static str,
    ) -> Field {
        Field {
            truncated,
            utf8,
            nul,
        }
    }
}

const CLIENT_ID: Field = field!("client identifier");
const WILL_TOPIC: Field = field!("will topic");
const USERNAME: Field = field!("username");
const TOPIC: Field = field!("topic");
const TOPIC_FILTER: Field = field!("topic filter");

/// A cursor over part of a frame. Everything it hands out is a slice of the frame, so strings and
/// payloads share the frame's allocation.
pub(super) struct Reader<'a> {
    frame: &'a Bytes,
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `frame` from `pos` to its end.
    pub(super) fn new(frame: &'a Bytes, pos: usize) -> Reader<'a> {
        Reader {
            frame,
            pos: pos.min(frame.len()),
            end: frame.len(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pos >= self.end
    }

    /// Consumes the next `len` bytes and returns their position.
    fn advance(&mut self, len: usize, truncated: &'static str) -> Result<usize, DecodeError> {
        let start = self.pos;
        if self.end - start < len {
            return Err(DecodeError::Malformed(truncated));
        }
        self.pos += len;
        Ok(start)
    }

    fn array<const N: usize>(&mut self, truncated: &'static str) -> Result<[u8; N], DecodeError> {
        let start = self.advance(N, truncated)?;
        self.frame
            .get(start..start + N)
            .and_then(|s| s.try_into().ok())
            .ok_or(DecodeError::Malformed(truncated))
    }

    pub(super) fn u8(&mut self, truncated: &'static str) -> Result<u8, DecodeError> {
        self.array::<1>(truncated).map(|[b]| b)
    }

    pub(super) fn u16(&mut self, truncated: &'static str) -> Result<u16, DecodeError> {
        self.array(truncated).map(u16::from_be_bytes)
    }

    pub(super) fn u32(&mut self, truncated: &'static str) -> Result<u32, DecodeError> {
        self.array(truncated).map(u32::from_be_bytes)
    }

    pub(super) fn varint(&mut self, truncated: &'static str) -> Result<usize, DecodeError> {
        let rest = self.frame.get(self.pos..self.end).unwrap_or_default();
        let (value, len) = read_varint(
            rest,
            "variable byte integer longer than 4 bytes",
            "non-minimal variable byte integer",
        )?
        .ok_or(DecodeError::Malformed(truncated))?;
        self.pos += len;
        Ok(value)
    }

    fn bytes(&mut self, len: usize, truncated: &'static str) -> Result<Bytes, DecodeError> {
        let start = self.advance(len, truncated)?;
        Ok(self.frame.slice(start..start + len))
    }

    /// Binary data: a two-byte length and that many bytes.
    pub(super) fn binary(&mut self, truncated: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u16(truncated)?;
        self.bytes(usize::from(len), truncated)
    }

    /// A UTF-8 encoded string: valid UTF-8 without U+0000, as every MQTT string must be.
    pub(super) fn string(&mut self, field: &Field) -> Result<ByteString, DecodeError> {
        let bytes = self.binary(field.truncated)?;
        // U+0000 is the only character whose UTF-8 encoding contains a zero byte.
        if bytes.contains(&0) {
            return Err(DecodeError::Malformed(field.nul));
        }
        ByteString::try_from(bytes).map_err(|_| DecodeError::Malformed(field.utf8))
    }

    /// A reader over the next `len` bytes, which this reader skips.
    pub(super) fn take(
        &mut self,
        len: usize,
        truncated: &'static str,
    ) -> Result<Reader<'a>, DecodeError> {
        let start = self.advance(len, truncated)?;
        Ok(Reader {
            frame: self.frame,
            pos: start,
            end: self.pos,
        })
    }

    /// Everything left, e.g. a PUBLISH payload.
    fn rest(&mut self) -> Bytes {
        let start = self.pos.min(self.end);
        self.pos = self.end;
        self.frame.slice(start..self.end)
    }

    fn finish(&self, trailing: &'static str) -> Result<(), DecodeError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed(trailing))
        }
    }

    fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16("packet identifier runs past the end of the packet")? {
            0 => Err(DecodeError::Malformed("packet identifier 0")),
            id => Ok(id),
        }
    }
}

fn properties_if_v5(
    r: &mut Reader<'_>,
    protocol: Protocol,
    context: Context,
) -> Result<Properties, DecodeError> {
    if protocol.is_v5() {
        properties::decode(r, context)
    } else {
        Ok(Properties::default())
    }
}

fn connect(r: &mut Reader<'_>) -> Result<Connect, DecodeError> {
    // Name and level come first: with an unknown protocol nothing after them can be interpreted.
    let name = r.binary("protocol name runs past the end of the packet")?;
    let level = r.u8("protocol level missing")?;
    let protocol = match (&name[..], level) {
        (b"MQIsdp", 3) => Protocol::V31,
        (b"MQTT", 4) => Protocol::V311,
        (b"MQTT", 5) => Protocol::V5,
        _ => return Err(DecodeError::UnsupportedProtocol { level }),
    };
    let flags = r.u8("connect flags missing")?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("reserved connect flag set"));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::Malformed(
            "will QoS or will retain set without will flag",
        ));
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::Malformed("will QoS 3"))?;
    if password_flag && !username_flag && !protocol.is_v5() {
        return Err(DecodeError::Malformed(
            "password flag set without username flag",
        ));
    }
    let keep_alive = r.u16("keep alive runs past the end of the packet")?;
    let properties = properties_if_v5(r, protocol, Context::Connect)?;
    let client_id = r.string(&CLIENT_ID)?;
    let will = if will_flag {
        let properties = properties_if_v5(r, protocol, Context::Will)?;
        let topic = r.string(&WILL_TOPIC)?;
        if topic.is_empty() {
            return Err(DecodeError::Malformed("empty will topic"));
        }
        let payload = r.binary("will payload runs past the end of the packet")?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = username_flag.then(|| r.string(&USERNAME)).transpose()?;
    let password = password_flag
        .then(|| r.binary("password runs past the end of the packet"))
        .transpose()?;
    r.finish("trailing bytes after CONNECT payload")?;
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn connack(r: &mut Reader<'_>, protocol: Protocol) -> Result<ConnAck, DecodeError> {
    let flags = r.u8("CONNACK flags missing")?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::Malformed("reserved CONNACK flags set"));
    }
    let code = r.u8("CONNACK reason code missing")?;
    let (reason, properties) = if protocol.is_v5() {
        (code, properties::decode(r, Context::ConnAck)?)
    } else {
        // The inverse of the encoder's mapping, so that 3.x codes survive a round trip.
        let reason = match code {
            0 => reason::SUCCESS,
            1 => reason::UNSUPPORTED_PROTOCOL_VERSION,
            2 => reason::CLIENT_IDENTIFIER_NOT_VALID,
            3 => reason::SERVER_UNAVAILABLE,
            4 => reason::BAD_USERNAME_OR_PASSWORD,
            5 => reason::NOT_AUTHORIZED,
            _ => return Err(DecodeError::Protocol("CONNACK return code above 5")),
        };
        (reason, Properties::default())
    };
    r.finish("trailing bytes after CONNACK")?;
    Ok(ConnAck {
        session_present: flags & 0x01 != 0,
        reason,
        properties,
    })
}

fn publish(r: &mut Reader<'_>, first: u8, protocol: Protocol) -> Result<Publish, DecodeError> {
    let dup = first & 0x08 != 0;
    let retain = first & 0x01 != 0;
    let qos = QoS::from_u8((first >> 1) & 0x03).ok_or(DecodeError::Malformed("QoS 3"))?;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::Malformed("DUP set on QoS 0 PUBLISH"));
    }
    let topic = r.string(&TOPIC)?;
    // Only a v5 topic alias may stand in for the topic; the session resolves it.
    if topic.is_empty() && !protocol.is_v5() {
        return Err(DecodeError::Malformed("empty topic"));
    }
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        r.packet_id()?
    };
    let properties = properties_if_v5(r, protocol, Context::Publish)?;
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    })
}

/// What differs between PUBACK, PUBREC, PUBREL and PUBCOMP.
struct AckRules {
    context: Context,
    reasons: &'static [u8],
    bad_reason: &'static str,
    trailing: &'static str,
}

const PUBACK_REASONS: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL_REASONS: &[u8] = &[0x00, 0x92];

const PUBACK: AckRules = AckRules {
    context: Context::PubAck,
    reasons: PUBACK_REASONS,
    bad_reason: "invalid PUBACK reason code",
    trailing: "trailing bytes after PUBACK",
};
const PUBREC: AckRules = AckRules {
    context: Context::PubRec,
    reasons: PUBACK_REASONS,
    bad_reason: "invalid PUBREC reason code",
    trailing: "trailing bytes after PUBREC",
};
const PUBREL: AckRules = AckRules {
    context: Context::PubRel,
    reasons: PUBREL_REASONS,
    bad_reason: "invalid PUBREL reason code",
    trailing: "trailing bytes after PUBREL",
};
const PUBCOMP: AckRules = AckRules {
    context: Context::PubComp,
    reasons: PUBREL_REASONS,
    bad_reason: "invalid PUBCOMP reason code",
    trailing: "trailing bytes after PUBCOMP",
};

fn ack(r: &mut Reader<'_>, protocol: Protocol, rules: &AckRules) -> Result<Ack, DecodeError> {
    let packet_id = r.packet_id()?;
    let mut ack = Ack {
        packet_id,
        reason: reason::SUCCESS,
        properties: Properties::default(),
    };
    // v5 may stop after the packet identifier (success) or after the reason code (no properties).
    if protocol.is_v5() && !r.is_empty() {
        ack.reason = r.u8(rules.trailing)?;
        if !rules.reasons.contains(&ack.reason) {
            return Err(DecodeError::Protocol(rules.bad_reason));
        }
        if !r.is_empty() {
            ack.properties = properties::decode(r, rules.context)?;
        }
    }
    r.finish(rules.trailing)?;
    Ok(ack)
}

fn subscription_options(byte: u8, protocol: Protocol) -> Result<SubscriptionOptions, DecodeError> {
    let qos =
        QoS::from_u8(byte & 0x03).ok_or(DecodeError::Malformed("QoS 3 in subscription options"))?;
    if !protocol.is_v5() {
        if byte & 0xFC != 0 {
            return Err(DecodeError::Malformed(
                "reserved bits set in subscription options",
            ));
        }
        return Ok(SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        });
    }
    if byte & 0xC0 != 0 {
        return Err(DecodeError::Malformed(
            "reserved bits set in subscription options",
        ));
    }
    let retain_handling = (byte >> 4) & 0x03;
    if retain_handling == 3 {
        return Err(DecodeError::Malformed("retain handling 3"));
    }
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0x04 != 0,
        retain_as_published: byte & 0x08 != 0,
        retain_handling,
    })
}

fn subscribe(r: &mut Reader<'_>, protocol: Protocol) -> Result<Subscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = properties_if_v5(r, protocol, Context::Subscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string(&TOPIC_FILTER)?;
        if filter.is_empty() {
            return Err(DecodeError::Malformed("empty topic filter"));
        }
        let options = r.u8("subscription options missing")?;
        filters.push((filter, subscription_options(options, protocol)?));
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol("SUBSCRIBE without topic filters"));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

fn suback(r: &mut Reader<'_>, protocol: Protocol) -> Result<SubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = properties_if_v5(r, protocol, Context::SubAck)?;
    let reasons = r.rest().to_vec();
    if reasons.is_empty() {
        return Err(DecodeError::Protocol("SUBACK without return codes"));
    }
    if !protocol.is_v5() && !reasons.iter().all(|c| matches!(c, 0 | 1 | 2 | 0x80)) {
        return Err(DecodeError::Protocol("invalid SUBACK return code"));
    }
    Ok(SubAck {
        packet_id,
        reasons,
        properties,
    })
}

fn unsubscribe(r: &mut Reader<'_>, protocol: Protocol) -> Result<Unsubscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = properties_if_v5(r, protocol, Context::Unsubscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string(&TOPIC_FILTER)?;
        if filter.is_empty() {
            return Err(DecodeError::Malformed("empty topic filter"));
        }
        filters.push(filter);
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol("UNSUBSCRIBE without topic filters"));
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn unsuback(r: &mut Reader<'_>, protocol: Protocol) -> Result<UnsubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    if !protocol.is_v5() {
        r.finish("trailing bytes after UNSUBACK")?;
        return Ok(UnsubAck {
            packet_id,
            reasons: Vec::new(),
            properties: Properties::default(),
        });
    }
    let properties = properties::decode(r, Context::UnsubAck)?;
    let reasons = r.rest().to_vec();
    if reasons.is_empty() {
        return Err(DecodeError::Protocol("UNSUBACK without reason codes"));
    }
    Ok(UnsubAck {
        packet_id,
        reasons,
        properties,
    })
}

const DISCONNECT_REASONS: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];

fn disconnect(r: &mut Reader<'_>, protocol: Protocol) -> Result<Disconnect, DecodeError> {
    let mut disconnect = Disconnect::default();
    // v5 may stop before the reason code (normal disconnection) or before the property length.
    if protocol.is_v5() && !r.is_empty() {
        disconnect.reason = r.u8("DISCONNECT reason code missing")?;
        if !DISCONNECT_REASONS.contains(&disconnect.reason) {
            return Err(DecodeError::Protocol("invalid DISCONNECT reason code"));
        }
        if !r.is_empty() {
            disconnect.properties = properties::decode(r, Context::Disconnect)?;
        }
    }
    r.finish("trailing bytes after DISCONNECT")?;
    Ok(disconnect)
}

fn auth(r: &mut Reader<'_>) -> Result<Auth, DecodeError> {
    let mut auth = Auth::default();
    // Unlike DISCONNECT, AUTH may only omit the reason code and the property length together.
    if !r.is_empty() {
        auth.reason = r.u8("AUTH reason code missing")?;
        if !matches!(auth.reason, 0x00 | 0x18 | 0x19) {
            return Err(DecodeError::Protocol("invalid AUTH reason code"));
        }
        auth.properties = properties::decode(r, Context::Auth)?;
    }
    r.finish("trailing bytes after AUTH")?;
    Ok(auth)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame of packet type/flags `first` around `body`, with a correct remaining length.
    fn pkt(first: u8, body: &[u8]) -> Bytes {
        let mut out = bytes::BytesMut::new();
        out.extend_from_slice(&[first]);
        super::super::encode::put_varint(&mut out, body.len());
        out.extend_from_slice(body);
        out.freeze()
    }

    fn dec(first: u8, body: &[u8], protocol: Protocol) -> Result<Packet, DecodeError> {
        decode(pkt(first, body), protocol)
    }

    fn malformed(msg: &'static str) -> Result<Packet, DecodeError> {
        Err(DecodeError::Malformed(msg))
    }

    /// A CONNECT body: protocol name, level, flags, keep alive 60, then `rest`.
    fn connect_body(name: &[u8], level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
        let mut body = vec![0, name.len() as u8];
        body.extend_from_slice(name);
        body.extend_from_slice(&[level, flags, 0, 60]);
        body.extend_from_slice(rest);
        body
    }

    #[test]
    fn frame_len_waits_for_header_and_body() {
        assert_eq!(frame_len(&[], 100), Ok(None));
        assert_eq!(frame_len(&[0x30], 100), Ok(None));
        assert_eq!(frame_len(&[0x30, 0x80], 1000), Ok(None));
        assert_eq!(frame_len(&[0x30, 3, 0, 1], 100), Ok(None));
        assert_eq!(frame_len(&[0x30, 3, 0, 1, b'a', 9, 9], 100), Ok(Some(5)));
        assert_eq!(frame_len(&[0xC0, 0], 2), Ok(Some(2)));
        assert_eq!(frame_len(&[0x30, 0x80, 0x01], 1000), Ok(None));
    }

    #[test]
    fn frame_len_rejects_bad_remaining_length() {
        assert_eq!(
            frame_len(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], usize::MAX),
            Err(DecodeError::Malformed("remaining length overflow"))
        );
        assert_eq!(
            frame_len(&[0x30, 0x80, 0x00], 1000),
            Err(DecodeError::Malformed("non-minimal remaining length"))
        );
        assert_eq!(
            frame_len(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F], usize::MAX),
            Ok(None)
        );
    }

    #[test]
    fn frame_len_refuses_oversized_packets_before_their_body() {
        assert_eq!(
            frame_len(&[0x30, 0xFF, 0x7F], 1000),
            Err(DecodeError::TooLarge {
                size: 16386,
                max: 1000
            })
        );
        assert_eq!(frame_len(&[0x30, 8], 10), Ok(None));
        assert!(frame_len(&[0x30, 9], 10).is_err());
    }

    #[test]
    fn decode_checks_remaining_length_against_frame() {
        let frame = Bytes::from_static(&[0xC0, 1]);
        assert_eq!(
            decode(frame, Protocol::V311),
            malformed("remaining length does not match the frame")
        );
        assert_eq!(decode(Bytes::new(), Protocol::V5), malformed("empty frame"));
    }

    #[test]
    fn fixed_header_flags_are_strict() {
        let id = [0, 1];
        for protocol in [Protocol::V31, Protocol::V311, Protocol::V5] {
            assert!(dec(0x62, &id, protocol).is_ok());
            assert_eq!(
                dec(0x60, &id, protocol),
                malformed("reserved flags of PUBREL not 0010")
            );
            assert_eq!(
                dec(0x41, &id, protocol),
                malformed("reserved flags set in PUBACK")
            );
            assert_eq!(
                dec(0x52, &id, protocol),
                malformed("reserved flags set in PUBREC")
            );
            assert_eq!(
                dec(0x78, &id, protocol),
                malformed("reserved flags set in PUBCOMP")
            );
            assert_eq!(
                dec(0xC1, &[], protocol),
                malformed("reserved flags set in PINGREQ")
            );
            assert_eq!(
                dec(0xD2, &[], protocol),
                malformed("reserved flags set in PINGRESP")
            );
            assert_eq!(
                dec(0xE4, &[], protocol),
                malformed("reserved flags set in DISCONNECT")
            );
            assert_eq!(
                dec(0x80, &[0, 1, 0, 1, b'a', 0], protocol),
                malformed("reserved flags of SUBSCRIBE not 0010")
            );
            assert_eq!(
                dec(0xA0, &[0, 1, 0, 1, b'a'], protocol),
                malformed("reserved flags of UNSUBSCRIBE not 0010")
            );
            assert_eq!(
                dec(0x00, &[], protocol),
                malformed("reserved packet type 0")
            );
        }
        assert_eq!(
            dec(0xF0, &[], Protocol::V311),
            malformed("AUTH before MQTT 5.0")
        );
        assert_eq!(
            dec(0xF0, &[], Protocol::V5),
            Ok(Packet::Auth(Auth::default()))
        );
        assert_eq!(
            dec(0xF1, &[], Protocol::V5),
            malformed("reserved flags set in AUTH")
        );
    }

    #[test]
    fn publish_flags_are_validated() {
        let body = [0, 1, b't', 0, 7, b'x'];
        assert_eq!(dec(0x36, &body, Protocol::V311), malformed("QoS 3"));
        assert_eq!(
            dec(0x38, &[0, 1, b't'], Protocol::V311),
            malformed("DUP set on QoS 0 PUBLISH")
        );
        assert_eq!(
            dec(0x32, &[0, 1, b't', 0, 0], Protocol::V5),
            malformed("packet identifier 0")
        );
        let Ok(Packet::Publish(p)) = dec(0x3D, &body, Protocol::V311) else {
            panic!("valid PUBLISH rejected");
        };
        assert!(p.dup && p.retain);
        assert_eq!(
            (p.qos, p.packet_id, &p.topic[..]),
            (QoS::ExactlyOnce, 7, "t")
        );
        assert_eq!(&p.payload[..], b"x");
    }

    #[test]
    fn publish_topic_and_payload_are_slices_of_the_frame() {
        let frame = pkt(0x30, &[0, 3, b'a', b'/', b'b', 1, 2, 3]);
        let range = frame.as_ptr_range();
        let Ok(Packet::Publish(p)) = decode(frame.clone(), Protocol::V311) else {
            panic!("valid PUBLISH rejected");
        };
        assert!(range.contains(&p.topic.as_bytes().as_ptr()));
        assert!(range.contains(&p.payload.as_ptr()));
        assert_eq!(&p.payload[..], &[1, 2, 3]);
    }

    #[test]
    fn publish_topic_rules() {
        assert_eq!(
            dec(0x30, &[0, 1, 0xFF], Protocol::V311),
            malformed("invalid UTF-8 in topic")
        );
        assert_eq!(
            dec(0x30, &[0, 2, b'a', 0], Protocol::V5),
            malformed("U+0000 in topic")
        );
        assert_eq!(
            dec(0x30, &[0, 5, b'a'], Protocol::V311),
            malformed("topic runs past the end of the packet")
        );
        assert_eq!(
            dec(0x30, &[0, 0, 1], Protocol::V311),
            malformed("empty topic")
        );
        assert_eq!(
            dec(0x30, &[0, 0, 1], Protocol::V31),
            malformed("empty topic")
        );
        // v5: an empty topic with a topic alias; the payload follows the properties.
        let Ok(Packet::Publish(p)) = dec(0x30, &[0, 0, 3, 0x23, 0, 1, 9], Protocol::V5) else {
            panic!("v5 PUBLISH with topic alias rejected");
        };
        assert_eq!((p.topic.len(), p.properties.topic_alias), (0, Some(1)));
        assert_eq!(&p.payload[..], &[9]);
        // Wildcards and the payload format are the session's business, not the decoder's.
        let mut body = vec![0, 3, b'a', b'/', b'#', 2, 0x01, 0x01];
        body.extend_from_slice(&[0xFF, 0xFE]);
        assert!(dec(0x30, &body, Protocol::V5).is_ok());
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        assert_eq!(
            dec(0xC0, &[0], Protocol::V311),
            malformed("PINGREQ with a body")
        );
        assert_eq!(
            dec(0xD0, &[0], Protocol::V5),
            malformed("PINGRESP with a body")
        );
        assert_eq!(
            dec(0x40, &[0, 1, 0], Protocol::V311),
            malformed("trailing bytes after PUBACK")
        );
        assert_eq!(
            dec(0x40, &[0, 1, 0, 0, 9], Protocol::V5),
            malformed("trailing bytes after PUBACK")
        );
        assert_eq!(
            dec(0xE0, &[0], Protocol::V311),
            malformed("trailing bytes after DISCONNECT")
        );
        assert_eq!(
            dec(0xB0, &[0, 1, 0], Protocol::V311),
            malformed("trailing bytes after UNSUBACK")
        );
        assert_eq!(
            dec(0x20, &[0, 0, 0], Protocol::V311),
            malformed("trailing bytes after CONNACK")
        );
    }

    #[test]
    fn v5_acks_may_omit_reason_and_properties() {
        let ack = |reason, properties| Ack {
            packet_id: 1,
            reason,
            properties,
        };
        assert_eq!(
            dec(0x40, &[0, 1], Protocol::V5),
            Ok(Packet::PubAck(ack(0, Properties::default())))
        );
        assert_eq!(
            dec(0x50, &[0, 1, 0x10], Protocol::V5),
            Ok(Packet::PubRec(ack(0x10, Properties::default())))
        );
        assert_eq!(
            dec(0x62, &[0, 1, 0x92, 0], Protocol::V5),
            Ok(Packet::PubRel(ack(0x92, Properties::default())))
        );
        let reason_string = Properties {
            reason_string: Some("r".into()),
            ..Properties::default()
        };
        assert_eq!(
            dec(0x70, &[0, 1, 0, 4, 0x1F, 0, 1, b'r'], Protocol::V5),
            Ok(Packet::PubComp(ack(0, reason_string)))
        );
        assert_eq!(
            dec(0x70, &[0, 1, 0x10], Protocol::V5),
            Err(DecodeError::Protocol("invalid PUBCOMP reason code"))
        );
        assert_eq!(
            dec(0x40, &[0, 1, 0x92], Protocol::V5),
            Err(DecodeError::Protocol("invalid PUBACK reason code"))
        );
        assert_eq!(
            dec(0x40, &[0, 0], Protocol::V5),
            malformed("packet identifier 0")
        );
        assert_eq!(
            dec(0x40, &[0], Protocol::V311),
            malformed("packet identifier runs past the end of the packet")
        );
    }

    #[test]
    fn disconnect_and_auth_short_forms() {
        let v5 = Protocol::V5;
        assert_eq!(
            dec(0xE0, &[], v5),
            Ok(Packet::Disconnect(Disconnect::default()))
        );
        assert_eq!(
            dec(0xE0, &[0x04], v5),
            Ok(Packet::Disconnect(Disconnect {
                reason: 0x04,
                properties: Properties::default()
            }))
        );
        assert_eq!(
            dec(0xE0, &[0x04, 5, 0x11, 0, 0, 0, 9], v5),
            Ok(Packet::Disconnect(Disconnect {
                reason: 0x04,
                properties: Properties {
                    session_expiry_interval: Some(9),
                    ..Properties::default()
                }
            }))
        );
        assert_eq!(
            dec(0xE0, &[0x05], v5),
            Err(DecodeError::Protocol("invalid DISCONNECT reason code"))
        );
        assert_eq!(
            dec(0xE0, &[], Protocol::V311),
            Ok(Packet::Disconnect(Disconnect::default()))
        );
        assert_eq!(
            dec(0xF0, &[0x18], v5),
            malformed("property length runs past the end of the packet")
        );
        assert_eq!(
            dec(0xF0, &[0x18, 0], v5),
            Ok(Packet::Auth(Auth {
                reason: 0x18,
                properties: Properties::default()
            }))
        );
        assert_eq!(
            dec(0xF0, &[0x01, 0], v5),
            Err(DecodeError::Protocol("invalid AUTH reason code"))
        );
    }

    #[test]
    fn connack_rules() {
        assert_eq!(
            dec(0x20, &[2, 0], Protocol::V311),
            malformed("reserved CONNACK flags set")
        );
        assert_eq!(
            dec(0x20, &[0, 6], Protocol::V311),
            Err(DecodeError::Protocol("CONNACK return code above 5"))
        );
        let Ok(Packet::ConnAck(c)) = dec(0x20, &[1, 5], Protocol::V311) else {
            panic!("valid CONNACK rejected");
        };
        assert!(c.session_present);
        assert_eq!(c.reason, reason::NOT_AUTHORIZED);
        assert_eq!(
            dec(0x20, &[0, 0], Protocol::V5),
            malformed("property length runs past the end of the packet")
        );
    }

    #[test]
    fn connect_decodes_every_field() {
        let mut rest = vec![0, 2, b'c', b'1'];
        rest.extend_from_slice(&[0, 1, b'w', 0, 2, b'b', b'y']);
        rest.extend_from_slice(&[0, 1, b'u', 0, 1, b'p']);
        // username, password, will retain, will QoS 1, will, clean session
        let body = connect_body(b"MQTT", 4, 0b1110_1110, &rest);
        let c = decode_connect(pkt(0x10, &body)).expect("valid CONNECT");
        assert_eq!(c.protocol, Protocol::V311);
        assert!(c.clean_start);
        assert_eq!(c.keep_alive, 60);
        assert_eq!(&c.client_id[..], "c1");
        let will = c.will.expect("will");
        assert_eq!((&will.topic[..], &will.payload[..]), ("w", &b"by"[..]));
        assert_eq!((will.qos, will.retain), (QoS::AtLeastOnce, true));
        assert_eq!(c.username.as_deref(), Some("u"));
        assert_eq!(c.password.as_deref(), Some(&b"p"[..]));
    }

    #[test]
    fn connect_accepts_the_three_protocols_and_an_empty_client_id() {
        let v31 = connect_body(b"MQIsdp", 3, 0x02, &[0, 0]);
        assert_eq!(
            decode_connect(pkt(0x10, &v31)).map(|c| c.protocol),
            Ok(Protocol::V31)
        );
        let v5 = connect_body(b"MQTT", 5, 0, &[0, 0, 0]);
        let c = decode(pkt(0x10, &v5), Protocol::V311).expect("CONNECT through decode");
        let Packet::Connect(c) = c else {
            panic!("not a CONNECT");
        };
        assert_eq!((c.protocol, c.client_id.len()), (Protocol::V5, 0));
    }

    #[test]
    fn connect_rejects_unsupported_protocols() {
        for (name, level) in [
            (&b"MQTT"[..], 3),
            (b"MQTT", 6),
            (b"MQIsdp", 4),
            (b"HTTP", 4),
        ] {
            let body = connect_body(name, level, 0, &[0, 0]);
            assert_eq!(
                decode_connect(pkt(0x10, &body)),
                Err(DecodeError::UnsupportedProtocol { level })
            );
        }
    }

    #[test]
    fn connect_flag_rules() {
        let connect = |level, flags, rest: &[u8]| {
            decode_connect(pkt(0x10, &connect_body(b"MQTT", level, flags, rest)))
        };
        assert_eq!(
            connect(4, 0x01, &[0, 0]),
            Err(DecodeError::Malformed("reserved connect flag set"))
        );
        assert_eq!(
            connect(4, 0x08, &[0, 0]),
            Err(DecodeError::Malformed(
                "will QoS or will retain set without will flag"
            ))
        );
        assert_eq!(
            connect(4, 0x20, &[0, 0]),
            Err(DecodeError::Malformed(
                "will QoS or will retain set without will flag"
            ))
        );
        assert_eq!(
            connect(4, 0x1C, &[0, 0]),
            Err(DecodeError::Malformed("will QoS 3"))
        );
        assert_eq!(
            connect(4, 0x40, &[0, 0, 0, 1, b'p']),
            Err(DecodeError::Malformed(
                "password flag set without username flag"
            ))
        );
        let c = connect(5, 0x40, &[0, 0, 0, 0, 1, b'p']).expect("v5 password without username");
        assert_eq!((c.username, c.password.as_deref()), (None, Some(&b"p"[..])));
        assert_eq!(
            connect(4, 0x04, &[0, 0, 0, 0, 0, 0]),
            Err(DecodeError::Malformed("empty will topic"))
        );
        assert_eq!(
            connect(4, 0, &[0, 0, 0]),
            Err(DecodeError::Malformed(
                "trailing bytes after CONNECT payload"
            ))
        );
        assert_eq!(
            connect(4, 0, &[0, 1, 0]),
            Err(DecodeError::Malformed("U+0000 in client identifier"))
        );
        assert_eq!(
            connect(4, 0x80, &[0, 0, 0, 1, 0xC0]),
            Err(DecodeError::Malformed("invalid UTF-8 in username"))
        );
        assert_eq!(
            decode_connect(pkt(0x11, &connect_body(b"MQTT", 4, 0, &[0, 0]))),
            Err(DecodeError::Malformed("reserved flags set in CONNECT"))
        );
    }

    #[test]
    fn connect_with_v5_and_will_properties() {
        let mut rest = vec![5, 0x11, 0, 0, 0, 30]; // session expiry 30
        rest.extend_from_slice(&[0, 1, b'c']);
        rest.extend_from_slice(&[5, 0x18, 0, 0, 0, 7]); // will delay 7
        rest.extend_from_slice(&[0, 1, b'w', 0, 0]);
        let c = decode_connect(pkt(0x10, &connect_body(b"MQTT", 5, 0x04, &rest))).expect("CONNECT");
        assert_eq!(c.properties.session_expiry_interval, Some(30));
        assert_eq!(
            c.will.map(|w| w.properties.will_delay_interval),
            Some(Some(7))
        );
        // Will delay belongs to the will, not to CONNECT itself.
        let mut rest = vec![5, 0x18, 0, 0, 0, 7, 0, 1, b'c'];
        rest.extend_from_slice(&[0, 0, 1, b'w', 0, 0]);
        assert_eq!(
            decode_connect(pkt(0x10, &connect_body(b"MQTT", 5, 0x04, &rest))),
            Err(DecodeError::PropertyNotAllowed {
                id: 0x18,
                packet: "CONNECT"
            })
        );
    }

    #[test]
    fn decode_connect_requires_connect_first() {
        assert_eq!(
            decode_connect(pkt(0xC0, &[])),
            Err(DecodeError::Protocol("first packet is not CONNECT"))
        );
    }

    #[test]
    fn subscribe_rules() {
        let v311 = Protocol::V311;
        let v5 = Protocol::V5;
        assert_eq!(
            dec(0x82, &[0, 1], v311),
            Err(DecodeError::Protocol("SUBSCRIBE without topic filters"))
        );
        assert_eq!(
            dec(0x82, &[0, 1, 0], v5),
            Err(DecodeError::Protocol("SUBSCRIBE without topic filters"))
        );
        assert_eq!(
            dec(0x82, &[0, 1, 0, 1, b'a', 3], v311),
            malformed("QoS 3 in subscription options")
        );
        assert_eq!(
            dec(0x82, &[0, 1, 0, 1, b'a', 0x04], v311),
            malformed("reserved bits set in subscription options")
        );
        assert_eq!(
            dec(0x82, &[0, 1, 0, 0, 1, b'a', 0x40], v5),
            malformed("reserved bits set in subscription options")
        );
        assert_eq!(
            dec(0x82, &[0, 1, 0, 0, 1, b'a', 0x30], v5),
            malformed("retain handling 3")
        );
        assert_eq!(
            dec(0x82, &[0, 1, 0, 0, 0, 0], v311),
            malformed("empty topic filter")
        );
        assert_eq!(
            dec(0x82, &[0, 1, 0, 1, b'a'], v311),
            malformed("subscription options missing")
        );
        assert_eq!(
            dec(0x82, &[0, 0, 0, 1, b'a', 0], v311),
            malformed("packet identifier 0")
        );
        // Wildcard placement is the session's to check.
        let Ok(Packet::Subscribe(s)) = dec(
            0x82,
            &[0, 9, 0, 0, 5, b'a', b'/', b'#', b'/', b'b', 0x2E],
            v5,
        ) else {
            panic!("valid SUBSCRIBE rejected");
        };
        assert_eq!(s.packet_id, 9);
        let (filter, options) = &s.filters[0];
        assert_eq!(&filter[..], "a/#/b");
        assert_eq!(
            *options,
            SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: 2
            }
        );
    }

    #[test]
    fn unsubscribe_rules() {
        assert_eq!(
            dec(0xA2, &[0, 1], Protocol::V311),
            Err(DecodeError::Protocol("UNSUBSCRIBE without topic filters"))
        );
        assert_eq!(
            dec(0xA2, &[0, 1, 0, 0], Protocol::V311),
            malformed("empty topic filter")
        );
        let Ok(Packet::Unsubscribe(u)) =
            dec(0xA2, &[0, 1, 0, 0, 1, b'a', 0, 1, b'b'], Protocol::V5)
        else {
            panic!("valid UNSUBSCRIBE rejected");
        };
        assert_eq!(u.filters, ["a", "b"]);
    }

    #[test]
    fn acknowledgements_from_the_server_decode() {
        assert_eq!(
            dec(0x90, &[0, 1, 0, 1, 0x80], Protocol::V311),
            Ok(Packet::SubAck(SubAck {
                packet_id: 1,
                reasons: vec![0, 1, 0x80],
                properties: Properties::default()
            }))
        );
        assert_eq!(
            dec(0x90, &[0, 1, 0x87], Protocol::V311),
            Err(DecodeError::Protocol("invalid SUBACK return code"))
        );
        assert_eq!(
            dec(0x90, &[0, 1], Protocol::V311),
            Err(DecodeError::Protocol("SUBACK without return codes"))
        );
        assert_eq!(
            dec(0xB0, &[0, 1, 0], Protocol::V5),
            Err(DecodeError::Protocol("UNSUBACK without reason codes"))
        );
        assert_eq!(
            dec(0xB0, &[0, 1, 0, 0x11], Protocol::V5),
            Ok(Packet::UnsubAck(UnsubAck {
                packet_id: 1,
                reasons: vec![0x11],
                properties: Properties::default()
            }))
        );
    }

    #[test]
    fn error_reason_codes_and_kinds() {
        let cases = [
            (DecodeError::Malformed("x"), 0x81, "malformed"),
            (DecodeError::Protocol("x"), 0x82, "protocol"),
            (DecodeError::DuplicateProperty { id: 1 }, 0x82, "protocol"),
            (
                DecodeError::PropertyNotAllowed {
                    id: 0x23,
                    packet: "CONNACK",
                },
                0x82,
                "protocol",
            ),
            (DecodeError::TooLarge { size: 2, max: 1 }, 0x95, "too_large"),
            (
                DecodeError::UnsupportedProtocol { level: 6 },
                0x84,
                "unsupported_protocol",
            ),
        ];
        for (error, code, kind) in cases {
            assert_eq!((error.reason_code(), error.kind()), (code, kind), "{error}");
        }
        assert_eq!(
            DecodeError::Malformed("QoS 3").to_string(),
            "malformed packet: QoS 3"
        );
    }

    #[test]
    fn no_panic_on_any_short_input() {
        // Every prefix and every single-byte corruption of valid packets of each type.
        let frames: Vec<Bytes> = vec![
            pkt(
                0x10,
                &connect_body(
                    b"MQTT",
                    5,
                    0xEE,
                    &[
                        3, 0x21, 0, 5, 0, 1, b'c', 0, 0, 1, b'w', 0, 0, 0, 1, b'u', 0, 1, b'p',
                    ],
                ),
            ),
            pkt(0x3B, &[0, 1, b't', 0, 2, 2, 0x0B, 1, 9]),
            pkt(0x82, &[0, 1, 2, 0x0B, 1, 0, 1, b'a', 1]),
            pkt(0xE0, &[0x04, 2, 0x1F, 0]),
        ];
        for frame in frames {
            for cut in 0..=frame.len() {
                for protocol in [Protocol::V31, Protocol::V311, Protocol::V5] {
                    let prefix = frame.slice(..cut);
                    let _ = decode(prefix.clone(), protocol);
                    let _ = decode_connect(prefix);
                    for bit in 0..8 {
                        let mut bytes = frame.to_vec();
                        if let Some(b) = bytes.get_mut(cut) {
                            *b ^= 1 << bit;
                        }
                        let _ = frame_len(&bytes, 1 << 20);
                        let _ = decode(Bytes::from(bytes), protocol);
                    }
                }
            }
        }
    }
}
