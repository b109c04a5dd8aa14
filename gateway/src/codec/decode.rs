//! Framing and strict decoding of MQTT control packets received from clients.
//!
//! A broker must tell malformed packets and protocol errors apart from valid ones before it acts
//! on them, so every rule of the specification that can be checked without session state is
//! checked here: fixed header flags, QoS values, string encoding, lengths, and which properties
//! each packet may carry. Semantic checks that need the session (wildcards in topic names, topic
//! aliases, client identifier policy) are left to it. Decoding never panics and never allocates
//! more than the frame could hold: the frame itself is bounded by the maximum packet size.

use bytes::Bytes;

use super::packet::{
    reason, Ack, Auth, ConnAck, Connect, Disconnect, LastWill, Packet, Properties, Protocol,
    Publish, QoS, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};
use super::properties::{self, Carrier};
use super::wire::{field, read_varint, DecodeError, Field, Reader};

/// Looks at the front of `buf`. `Ok(None)`: more bytes are needed. `Ok(Some(n))`: a whole packet
/// of `n` bytes, fixed header included, is at the front. An oversized packet is refused as soon as
/// its remaining length is known, so the caller never buffers its body.
pub fn frame_len(buf: &[u8], max_packet_size: usize) -> Result<Option<usize>, DecodeError> {
    Ok(frame_size(buf, max_packet_size)?.filter(|&size| buf.len() >= size))
}

/// The size, fixed header included, of the packet at the front of `buf` as soon as its fixed
/// header is complete, however much of the rest has arrived (`Ok(None)` before that), checked as
/// `frame_len` checks it. A reader sizes what it keeps of a half-arrived packet by it.
pub fn frame_size(buf: &[u8], max_packet_size: usize) -> Result<Option<usize>, DecodeError> {
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
    Ok(Some(size))
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

const CLIENT_ID: Field = field!("client identifier");
const WILL_TOPIC: Field = field!("will topic");
const USERNAME: Field = field!("username");
const TOPIC: Field = field!("topic");
const TOPIC_FILTER: Field = field!("topic filter");

fn properties_if_v5(
    r: &mut Reader<'_>,
    protocol: Protocol,
    carrier: Carrier,
) -> Result<Properties, DecodeError> {
    if protocol.is_v5() {
        properties::decode(r, carrier)
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
    let properties = properties_if_v5(r, protocol, Carrier::Connect)?;
    let client_id = r.string(&CLIENT_ID)?;
    let will = if will_flag {
        let properties = properties_if_v5(r, protocol, Carrier::Will)?;
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
        (code, properties::decode(r, Carrier::ConnAck)?)
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
    let properties = properties_if_v5(r, protocol, Carrier::Publish)?;
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
    carrier: Carrier,
    reasons: &'static [u8],
    bad_reason: &'static str,
    trailing: &'static str,
}

const PUBACK_REASONS: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL_REASONS: &[u8] = &[0x00, 0x92];

const PUBACK: AckRules = AckRules {
    carrier: Carrier::PubAck,
    reasons: PUBACK_REASONS,
    bad_reason: "invalid PUBACK reason code",
    trailing: "trailing bytes after PUBACK",
};
const PUBREC: AckRules = AckRules {
    carrier: Carrier::PubRec,
    reasons: PUBACK_REASONS,
    bad_reason: "invalid PUBREC reason code",
    trailing: "trailing bytes after PUBREC",
};
const PUBREL: AckRules = AckRules {
    carrier: Carrier::PubRel,
    reasons: PUBREL_REASONS,
    bad_reason: "invalid PUBREL reason code",
    trailing: "trailing bytes after PUBREL",
};
const PUBCOMP: AckRules = AckRules {
    carrier: Carrier::PubComp,
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
            ack.properties = properties::decode(r, rules.carrier)?;
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
    let properties = properties_if_v5(r, protocol, Carrier::Subscribe)?;
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
    let properties = properties_if_v5(r, protocol, Carrier::SubAck)?;
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
    let properties = properties_if_v5(r, protocol, Carrier::Unsubscribe)?;
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
    let properties = properties::decode(r, Carrier::UnsubAck)?;
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
            disconnect.properties = properties::decode(r, Carrier::Disconnect)?;
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
        auth.properties = properties::decode(r, Carrier::Auth)?;
    }
    r.finish("trailing bytes after AUTH")?;
    Ok(auth)
}

#[cfg(test)]
mod tests;
