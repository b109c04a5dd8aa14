//! MQTT 5.0 properties: decoding with the per-packet rules of the specification's property table
//! (section 2.2.2.2), and encoding.
//!
//! Every packet type shares one `Properties` struct, so the rules that differ between packets (which
//! identifiers may appear, which may repeat) live here in one table instead of in each packet's decoder.
//! Values are slices of the frame: decoding copies no string or binary data.

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::packet::Properties;
use super::wire::{
    binary_len, field, put_binary, put_varint, varint_len, DecodeError, Field, Reader,
};

/// The packet that carries a property list, which decides the properties allowed in it. The
/// will's properties have a carrier of their own: they travel in CONNECT but follow the rules of
/// the PUBLISH they will become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Carrier {
    Connect,
    ConnAck,
    Publish,
    Will,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl Carrier {
    fn bit(self) -> u16 {
        1 << self as u16
    }

    fn name(self) -> &'static str {
        match self {
            Carrier::Connect => "CONNECT",
            Carrier::ConnAck => "CONNACK",
            Carrier::Publish => "PUBLISH",
            Carrier::Will => "will properties",
            Carrier::PubAck => "PUBACK",
            Carrier::PubRec => "PUBREC",
            Carrier::PubRel => "PUBREL",
            Carrier::PubComp => "PUBCOMP",
            Carrier::Subscribe => "SUBSCRIBE",
            Carrier::SubAck => "SUBACK",
            Carrier::Unsubscribe => "UNSUBSCRIBE",
            Carrier::UnsubAck => "UNSUBACK",
            Carrier::Disconnect => "DISCONNECT",
            Carrier::Auth => "AUTH",
        }
    }
}

const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
const SERVER_KEEP_ALIVE: u8 = 0x13;
const AUTHENTICATION_METHOD: u8 = 0x15;
const AUTHENTICATION_DATA: u8 = 0x16;
const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
const WILL_DELAY_INTERVAL: u8 = 0x18;
const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
const RESPONSE_INFORMATION: u8 = 0x1A;
const SERVER_REFERENCE: u8 = 0x1C;
const REASON_STRING: u8 = 0x1F;
const RECEIVE_MAXIMUM: u8 = 0x21;
const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
const TOPIC_ALIAS: u8 = 0x23;
const MAXIMUM_QOS: u8 = 0x24;
const RETAIN_AVAILABLE: u8 = 0x25;
const USER_PROPERTY: u8 = 0x26;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;
const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
const SUBSCRIPTION_IDENTIFIERS_AVAILABLE: u8 = 0x29;
const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// The carriers a property identifier may appear in, as a mask of `Carrier::bit`s; None for an
/// identifier the specification does not define.
fn allowed_in(id: u8) -> Option<u16> {
    use Carrier::*;
    let carriers: &[Carrier] = match id {
        PAYLOAD_FORMAT_INDICATOR
        | MESSAGE_EXPIRY_INTERVAL
        | CONTENT_TYPE
        | RESPONSE_TOPIC
        | CORRELATION_DATA => &[Publish, Will],
        SUBSCRIPTION_IDENTIFIER => &[Publish, Subscribe],
        SESSION_EXPIRY_INTERVAL => &[Connect, ConnAck, Disconnect],
        ASSIGNED_CLIENT_IDENTIFIER
        | SERVER_KEEP_ALIVE
        | RESPONSE_INFORMATION
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIERS_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => &[ConnAck],
        AUTHENTICATION_METHOD | AUTHENTICATION_DATA => &[Connect, ConnAck, Auth],
        REQUEST_PROBLEM_INFORMATION | REQUEST_RESPONSE_INFORMATION => &[Connect],
        WILL_DELAY_INTERVAL => &[Will],
        SERVER_REFERENCE => &[ConnAck, Disconnect],
        REASON_STRING => &[
            ConnAck, PubAck, PubRec, PubRel, PubComp, SubAck, UnsubAck, Disconnect, Auth,
        ],
        RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | MAXIMUM_PACKET_SIZE => &[Connect, ConnAck],
        TOPIC_ALIAS => &[Publish],
        USER_PROPERTY => &[
            Connect,
            ConnAck,
            Publish,
            Will,
            PubAck,
            PubRec,
            PubRel,
            PubComp,
            Subscribe,
            SubAck,
            Unsubscribe,
            UnsubAck,
            Disconnect,
            Auth,
        ],
        _ => return None,
    };
    Some(carriers.iter().fold(0, |mask, c| mask | c.bit()))
}

const CONTENT_TYPE_FIELD: Field = field!("content type");
const RESPONSE_TOPIC_FIELD: Field = field!("response topic");
const ASSIGNED_CLIENT_IDENTIFIER_FIELD: Field = field!("assigned client identifier");
const AUTHENTICATION_METHOD_FIELD: Field = field!("authentication method");
const RESPONSE_INFORMATION_FIELD: Field = field!("response information");
const SERVER_REFERENCE_FIELD: Field = field!("server reference");
const REASON_STRING_FIELD: Field = field!("reason string");
const USER_PROPERTY_NAME_FIELD: Field = field!("user property name");
const USER_PROPERTY_VALUE_FIELD: Field = field!("user property value");

const TRUNCATED: &str = "property value runs past the end of the properties";

/// Reads a property length and the properties it covers, enforcing which properties `carrier` may
/// carry, which may repeat, and the value ranges the specification gives.
pub(super) fn decode(r: &mut Reader<'_>, carrier: Carrier) -> Result<Properties, DecodeError> {
    let len = r.varint("property length runs past the end of the packet")?;
    let mut r = r.take(len, "properties run past the end of the packet")?;
    let mut props = Properties::default();
    // Every identifier is below 64, so one bit per identifier records what was already seen.
    let mut seen: u64 = 0;
    while !r.is_empty() {
        let id = r.u8(TRUNCATED)?;
        let mask = allowed_in(id).ok_or(DecodeError::Malformed("unknown property identifier"))?;
        if mask & carrier.bit() == 0 {
            return Err(DecodeError::PropertyNotAllowed {
                id,
                packet: carrier.name(),
            });
        }
        let repeatable =
            id == USER_PROPERTY || (id == SUBSCRIPTION_IDENTIFIER && carrier == Carrier::Publish);
        if !repeatable {
            if seen & (1 << id) != 0 {
                return Err(DecodeError::DuplicateProperty { id });
            }
            seen |= 1 << id;
        }
        match id {
            PAYLOAD_FORMAT_INDICATOR => {
                props.payload_format_indicator =
                    Some(boolean(&mut r, "payload format indicator not 0 or 1")?);
            }
            MESSAGE_EXPIRY_INTERVAL => props.message_expiry_interval = Some(r.u32(TRUNCATED)?),
            CONTENT_TYPE => props.content_type = Some(r.string(&CONTENT_TYPE_FIELD)?),
            RESPONSE_TOPIC => props.response_topic = Some(r.string(&RESPONSE_TOPIC_FIELD)?),
            CORRELATION_DATA => props.correlation_data = Some(r.binary(TRUNCATED)?),
            SUBSCRIPTION_IDENTIFIER => {
                let value = r.varint(TRUNCATED)?;
                if value == 0 {
                    return Err(DecodeError::Protocol("subscription identifier 0"));
                }
                // A variable byte integer is at most 268,435,455, so it always fits.
                props.subscription_identifiers.push(value as u32);
            }
            SESSION_EXPIRY_INTERVAL => props.session_expiry_interval = Some(r.u32(TRUNCATED)?),
            ASSIGNED_CLIENT_IDENTIFIER => {
                props.assigned_client_identifier =
                    Some(r.string(&ASSIGNED_CLIENT_IDENTIFIER_FIELD)?);
            }
            SERVER_KEEP_ALIVE => props.server_keep_alive = Some(r.u16(TRUNCATED)?),
            AUTHENTICATION_METHOD => {
                props.authentication_method = Some(r.string(&AUTHENTICATION_METHOD_FIELD)?);
            }
            AUTHENTICATION_DATA => props.authentication_data = Some(r.binary(TRUNCATED)?),
            REQUEST_PROBLEM_INFORMATION => {
                props.request_problem_information =
                    Some(boolean(&mut r, "request problem information not 0 or 1")?);
            }
            WILL_DELAY_INTERVAL => props.will_delay_interval = Some(r.u32(TRUNCATED)?),
            REQUEST_RESPONSE_INFORMATION => {
                props.request_response_information =
                    Some(boolean(&mut r, "request response information not 0 or 1")?);
            }
            RESPONSE_INFORMATION => {
                props.response_information = Some(r.string(&RESPONSE_INFORMATION_FIELD)?);
            }
            SERVER_REFERENCE => props.server_reference = Some(r.string(&SERVER_REFERENCE_FIELD)?),
            REASON_STRING => props.reason_string = Some(r.string(&REASON_STRING_FIELD)?),
            RECEIVE_MAXIMUM => {
                let value = r.u16(TRUNCATED)?;
                if value == 0 {
                    return Err(DecodeError::Protocol("receive maximum 0"));
                }
                props.receive_maximum = Some(value);
            }
            TOPIC_ALIAS_MAXIMUM => props.topic_alias_maximum = Some(r.u16(TRUNCATED)?),
            // Alias 0 is left to the session, which answers it with "topic alias invalid".
            TOPIC_ALIAS => props.topic_alias = Some(r.u16(TRUNCATED)?),
            MAXIMUM_QOS => props.maximum_qos = Some(boolean(&mut r, "maximum QoS not 0 or 1")?),
            RETAIN_AVAILABLE => {
                props.retain_available = Some(boolean(&mut r, "retain available not 0 or 1")?);
            }
            USER_PROPERTY => {
                let name = r.string(&USER_PROPERTY_NAME_FIELD)?;
                let value = r.string(&USER_PROPERTY_VALUE_FIELD)?;
                props.user_properties.push((name, value));
            }
            MAXIMUM_PACKET_SIZE => {
                let value = r.u32(TRUNCATED)?;
                if value == 0 {
                    return Err(DecodeError::Protocol("maximum packet size 0"));
                }
                props.maximum_packet_size = Some(value);
            }
            WILDCARD_SUBSCRIPTION_AVAILABLE => {
                props.wildcard_subscription_available = Some(boolean(
                    &mut r,
                    "wildcard subscription available not 0 or 1",
                )?);
            }
            SUBSCRIPTION_IDENTIFIERS_AVAILABLE => {
                props.subscription_identifiers_available = Some(boolean(
                    &mut r,
                    "subscription identifiers available not 0 or 1",
                )?);
            }
            SHARED_SUBSCRIPTION_AVAILABLE => {
                props.shared_subscription_available =
                    Some(boolean(&mut r, "shared subscription available not 0 or 1")?);
            }
            _ => return Err(DecodeError::Malformed("unknown property identifier")),
        }
    }
    Ok(props)
}

/// A byte property whose only legal values are 0 and 1.
fn boolean(r: &mut Reader<'_>, invalid: &'static str) -> Result<u8, DecodeError> {
    match r.u8(TRUNCATED)? {
        value @ (0 | 1) => Ok(value),
        _ => Err(DecodeError::Protocol(invalid)),
    }
}

/// Bytes taken by `props` on the wire, its property length included.
pub(super) fn wire_len(props: &Properties) -> usize {
    let len = content_len(props);
    varint_len(len) + len
}

fn content_len(p: &Properties) -> usize {
    fn opt<T>(value: &Option<T>, size: impl Fn(&T) -> usize) -> usize {
        value.as_ref().map_or(0, |v| 1 + size(v))
    }
    let byte = |_: &u8| 1;
    let two = |_: &u16| 2;
    let four = |_: &u32| 4;
    let string = |s: &ByteString| binary_len(s.len());
    let binary = |b: &Bytes| binary_len(b.len());
    opt(&p.payload_format_indicator, byte)
        + opt(&p.message_expiry_interval, four)
        + opt(&p.content_type, string)
        + opt(&p.response_topic, string)
        + opt(&p.correlation_data, binary)
        + p.subscription_identifiers
            .iter()
            .map(|&id| 1 + varint_len(id as usize))
            .sum::<usize>()
        + opt(&p.session_expiry_interval, four)
        + opt(&p.assigned_client_identifier, string)
        + opt(&p.server_keep_alive, two)
        + opt(&p.authentication_method, string)
        + opt(&p.authentication_data, binary)
        + opt(&p.request_problem_information, byte)
        + opt(&p.will_delay_interval, four)
        + opt(&p.request_response_information, byte)
        + opt(&p.response_information, string)
        + opt(&p.server_reference, string)
        + opt(&p.reason_string, string)
        + opt(&p.receive_maximum, two)
        + opt(&p.topic_alias_maximum, two)
        + opt(&p.topic_alias, two)
        + opt(&p.maximum_qos, byte)
        + opt(&p.retain_available, byte)
        + p.user_properties
            .iter()
            .map(|(k, v)| 1 + binary_len(k.len()) + binary_len(v.len()))
            .sum::<usize>()
        + opt(&p.maximum_packet_size, four)
        + opt(&p.wildcard_subscription_available, byte)
        + opt(&p.subscription_identifiers_available, byte)
        + opt(&p.shared_subscription_available, byte)
}

/// Writes the property length and then every property that is set, in identifier order.
pub(super) fn encode(p: &Properties, out: &mut BytesMut) {
    fn byte(out: &mut BytesMut, id: u8, value: Option<u8>) {
        if let Some(v) = value {
            out.put_u8(id);
            out.put_u8(v);
        }
    }
    fn two(out: &mut BytesMut, id: u8, value: Option<u16>) {
        if let Some(v) = value {
            out.put_u8(id);
            out.put_u16(v);
        }
    }
    fn four(out: &mut BytesMut, id: u8, value: Option<u32>) {
        if let Some(v) = value {
            out.put_u8(id);
            out.put_u32(v);
        }
    }
    fn bin(out: &mut BytesMut, id: u8, value: Option<&[u8]>) {
        if let Some(v) = value {
            out.put_u8(id);
            put_binary(out, v);
        }
    }
    fn string(value: &Option<ByteString>) -> Option<&[u8]> {
        value.as_ref().map(|s| &s.as_bytes()[..])
    }
    fn binary(value: &Option<Bytes>) -> Option<&[u8]> {
        value.as_deref()
    }

    put_varint(out, content_len(p));
    byte(out, PAYLOAD_FORMAT_INDICATOR, p.payload_format_indicator);
    four(out, MESSAGE_EXPIRY_INTERVAL, p.message_expiry_interval);
    bin(out, CONTENT_TYPE, string(&p.content_type));
    bin(out, RESPONSE_TOPIC, string(&p.response_topic));
    bin(out, CORRELATION_DATA, binary(&p.correlation_data));
    for &id in &p.subscription_identifiers {
        out.put_u8(SUBSCRIPTION_IDENTIFIER);
        put_varint(out, id as usize);
    }
    four(out, SESSION_EXPIRY_INTERVAL, p.session_expiry_interval);
    bin(
        out,
        ASSIGNED_CLIENT_IDENTIFIER,
        string(&p.assigned_client_identifier),
    );
    two(out, SERVER_KEEP_ALIVE, p.server_keep_alive);
    bin(out, AUTHENTICATION_METHOD, string(&p.authentication_method));
    bin(out, AUTHENTICATION_DATA, binary(&p.authentication_data));
    byte(
        out,
        REQUEST_PROBLEM_INFORMATION,
        p.request_problem_information,
    );
    four(out, WILL_DELAY_INTERVAL, p.will_delay_interval);
    byte(
        out,
        REQUEST_RESPONSE_INFORMATION,
        p.request_response_information,
    );
    bin(out, RESPONSE_INFORMATION, string(&p.response_information));
    bin(out, SERVER_REFERENCE, string(&p.server_reference));
    bin(out, REASON_STRING, string(&p.reason_string));
    two(out, RECEIVE_MAXIMUM, p.receive_maximum);
    two(out, TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum);
    two(out, TOPIC_ALIAS, p.topic_alias);
    byte(out, MAXIMUM_QOS, p.maximum_qos);
    byte(out, RETAIN_AVAILABLE, p.retain_available);
    for (name, value) in &p.user_properties {
        out.put_u8(USER_PROPERTY);
        put_binary(out, name.as_bytes());
        put_binary(out, value.as_bytes());
    }
    four(out, MAXIMUM_PACKET_SIZE, p.maximum_packet_size);
    byte(
        out,
        WILDCARD_SUBSCRIPTION_AVAILABLE,
        p.wildcard_subscription_available,
    );
    byte(
        out,
        SUBSCRIPTION_IDENTIFIERS_AVAILABLE,
        p.subscription_identifiers_available,
    );
    byte(
        out,
        SHARED_SUBSCRIPTION_AVAILABLE,
        p.shared_subscription_available,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a property list (property length included) in `carrier`.
    fn dec(bytes: &[u8], carrier: Carrier) -> Result<Properties, DecodeError> {
        let frame = Bytes::copy_from_slice(bytes);
        let mut r = Reader::new(&frame, 0);
        let props = decode(&mut r, carrier)?;
        assert!(r.is_empty(), "property length did not cover the input");
        Ok(props)
    }

    fn with_len(content: &[u8]) -> Vec<u8> {
        let mut v = vec![content.len() as u8];
        v.extend_from_slice(content);
        v
    }

    #[test]
    fn property_not_allowed_in_packet_is_a_protocol_error() {
        let err = dec(&with_len(&[0x23, 0, 1]), Carrier::ConnAck).unwrap_err();
        assert_eq!(
            err,
            DecodeError::PropertyNotAllowed {
                id: 0x23,
                packet: "CONNACK"
            }
        );
        assert_eq!(
            err.to_string(),
            "protocol error: property 0x23 not allowed in CONNACK"
        );
        assert_eq!(err.reason_code(), 0x82);
        assert!(dec(&with_len(&[0x11, 0, 0, 0, 1]), Carrier::Publish).is_err());
        assert!(dec(&with_len(&[0x18, 0, 0, 0, 1]), Carrier::Will).is_ok());
        assert!(dec(&with_len(&[0x1F, 0, 0]), Carrier::Subscribe).is_err());
        assert!(dec(&with_len(&[0x26, 0, 0, 0, 0]), Carrier::Auth).is_ok());
    }

    #[test]
    fn every_context_follows_the_specification_table() {
        // (id, carriers) rows of MQTT 5.0 section 2.2.2.2, written out independently of `allowed_in`.
        use Carrier::*;
        let all = [
            Connect,
            ConnAck,
            Publish,
            Will,
            PubAck,
            PubRec,
            PubRel,
            PubComp,
            Subscribe,
            SubAck,
            Unsubscribe,
            UnsubAck,
            Disconnect,
            Auth,
        ];
        let table: &[(u8, &[Carrier])] = &[
            (0x01, &[Publish, Will]),
            (0x02, &[Publish, Will]),
            (0x03, &[Publish, Will]),
            (0x08, &[Publish, Will]),
            (0x09, &[Publish, Will]),
            (0x0B, &[Publish, Subscribe]),
            (0x11, &[Connect, ConnAck, Disconnect]),
            (0x12, &[ConnAck]),
            (0x13, &[ConnAck]),
            (0x15, &[Connect, ConnAck, Auth]),
            (0x16, &[Connect, ConnAck, Auth]),
            (0x17, &[Connect]),
            (0x18, &[Will]),
            (0x19, &[Connect]),
            (0x1A, &[ConnAck]),
            (0x1C, &[ConnAck, Disconnect]),
            (
                0x1F,
                &[
                    ConnAck, PubAck, PubRec, PubRel, PubComp, SubAck, UnsubAck, Disconnect, Auth,
                ],
            ),
            (0x21, &[Connect, ConnAck]),
            (0x22, &[Connect, ConnAck]),
            (0x23, &[Publish]),
            (0x24, &[ConnAck]),
            (0x25, &[ConnAck]),
            (0x26, &all),
            (0x27, &[Connect, ConnAck]),
            (0x28, &[ConnAck]),
            (0x29, &[ConnAck]),
            (0x2A, &[ConnAck]),
        ];
        for id in 0..=u8::MAX {
            let expected = table.iter().find(|(i, _)| *i == id).map(|(_, c)| *c);
            for carrier in all {
                let allowed = allowed_in(id).map(|mask| mask & carrier.bit() != 0);
                assert_eq!(
                    allowed,
                    expected.map(|carriers| carriers.contains(&carrier)),
                    "property 0x{id:02X} in {carrier:?}"
                );
            }
        }
    }

    #[test]
    fn duplicate_property_is_a_protocol_error() {
        let err = dec(&with_len(&[0x01, 0, 0x01, 1]), Carrier::Publish).unwrap_err();
        assert_eq!(err, DecodeError::DuplicateProperty { id: 0x01 });
        assert_eq!(err.to_string(), "protocol error: duplicate property 0x01");
        assert_eq!(
            dec(&with_len(&[0x0B, 1, 0x0B, 2]), Carrier::Subscribe),
            Err(DecodeError::DuplicateProperty { id: 0x0B })
        );
    }

    #[test]
    fn user_properties_and_subscription_identifiers_may_repeat() {
        let bytes = with_len(&[
            0x26, 0, 1, b'k', 0, 1, b'2', 0x0B, 5, 0x26, 0, 1, b'a', 0, 0, 0x26, 0, 1, b'k', 0, 1,
            b'1', 0x0B, 0x80, 0x01,
        ]);
        let props = dec(&bytes, Carrier::Publish).expect("valid properties");
        let pairs: Vec<(&str, &str)> = props
            .user_properties
            .iter()
            .map(|(k, v)| (&k[..], &v[..]))
            .collect();
        assert_eq!(pairs, [("k", "2"), ("a", ""), ("k", "1")]);
        assert_eq!(props.subscription_identifiers, [5, 128]);
    }

    #[test]
    fn value_ranges_are_checked() {
        let protocol = |msg| Err(DecodeError::Protocol(msg));
        assert_eq!(
            dec(&with_len(&[0x0B, 0]), Carrier::Subscribe),
            protocol("subscription identifier 0")
        );
        assert_eq!(
            dec(&with_len(&[0x21, 0, 0]), Carrier::Connect),
            protocol("receive maximum 0")
        );
        assert_eq!(
            dec(&with_len(&[0x27, 0, 0, 0, 0]), Carrier::Connect),
            protocol("maximum packet size 0")
        );
        assert_eq!(
            dec(&with_len(&[0x01, 2]), Carrier::Will),
            protocol("payload format indicator not 0 or 1")
        );
        assert_eq!(
            dec(&with_len(&[0x17, 2]), Carrier::Connect),
            protocol("request problem information not 0 or 1")
        );
        assert_eq!(
            dec(&with_len(&[0x19, 2]), Carrier::Connect),
            protocol("request response information not 0 or 1")
        );
        assert_eq!(
            dec(&with_len(&[0x24, 2]), Carrier::ConnAck),
            protocol("maximum QoS not 0 or 1")
        );
        assert_eq!(
            dec(&with_len(&[0x0B, 0x80, 0x00]), Carrier::Subscribe),
            Err(DecodeError::Malformed("non-minimal variable byte integer"))
        );
    }

    #[test]
    fn malformed_property_lists() {
        let malformed = |msg| Err(DecodeError::Malformed(msg));
        assert_eq!(
            dec(&with_len(&[0x04, 0]), Carrier::Publish),
            malformed("unknown property identifier")
        );
        assert_eq!(
            dec(&[5, 0x02, 0], Carrier::Publish),
            malformed("properties run past the end of the packet")
        );
        assert_eq!(
            dec(&with_len(&[0x02, 0, 0]), Carrier::Publish),
            malformed("property value runs past the end of the properties")
        );
        assert_eq!(
            dec(&with_len(&[0x03, 0, 1, 0xFF]), Carrier::Publish),
            malformed("invalid UTF-8 in content type")
        );
        assert_eq!(
            dec(&with_len(&[0x26, 0, 1, b'k', 0, 1, 0]), Carrier::Publish),
            malformed("U+0000 in user property value")
        );
        assert_eq!(
            dec(&[0x80], Carrier::Publish),
            malformed("property length runs past the end of the packet")
        );
    }

    #[test]
    fn values_are_slices_of_the_frame() {
        let frame = Bytes::from(with_len(&[0x09, 0, 2, 7, 7, 0x03, 0, 1, b't']));
        let mut r = Reader::new(&frame, 0);
        let props = decode(&mut r, Carrier::Publish).expect("valid properties");
        let range = frame.as_ptr_range();
        assert!(range.contains(&props.correlation_data.expect("set").as_ptr()));
        assert!(range.contains(&props.content_type.expect("set").as_bytes().as_ptr()));
    }

    /// Every CONNACK property set, so that each encoder line is exercised.
    fn connack_properties() -> Properties {
        Properties {
            session_expiry_interval: Some(1),
            assigned_client_identifier: Some("id".into()),
            server_keep_alive: Some(2),
            authentication_method: Some("m".into()),
            authentication_data: Some(Bytes::from_static(b"d")),
            response_information: Some("ri".into()),
            server_reference: Some("sr".into()),
            reason_string: Some("rs".into()),
            receive_maximum: Some(3),
            topic_alias_maximum: Some(4),
            maximum_qos: Some(1),
            retain_available: Some(0),
            user_properties: vec![("a".into(), "b".into()), ("a".into(), "c".into())],
            maximum_packet_size: Some(70_000),
            wildcard_subscription_available: Some(1),
            subscription_identifiers_available: Some(0),
            shared_subscription_available: Some(1),
            ..Properties::default()
        }
    }

    fn publish_properties() -> Properties {
        Properties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            content_type: Some("text/plain".into()),
            response_topic: Some("r/t".into()),
            correlation_data: Some(Bytes::from_static(&[0, 1, 2])),
            subscription_identifiers: vec![1, 200, 268_435_455],
            topic_alias: Some(9),
            user_properties: vec![("k".into(), "v".into())],
            ..Properties::default()
        }
    }

    fn connect_properties() -> Properties {
        Properties {
            session_expiry_interval: Some(u32::MAX),
            authentication_method: Some("m".into()),
            authentication_data: Some(Bytes::new()),
            request_problem_information: Some(0),
            request_response_information: Some(1),
            receive_maximum: Some(10),
            topic_alias_maximum: Some(0),
            maximum_packet_size: Some(1),
            user_properties: vec![("".into(), "".into())],
            ..Properties::default()
        }
    }

    #[test]
    fn encode_then_decode_is_identity() {
        let will = Properties {
            will_delay_interval: Some(5),
            subscription_identifiers: Vec::new(),
            topic_alias: None,
            ..publish_properties()
        };
        let cases = [
            (connack_properties(), Carrier::ConnAck),
            (publish_properties(), Carrier::Publish),
            (connect_properties(), Carrier::Connect),
            (Properties::default(), Carrier::Auth),
            (will, Carrier::Will),
        ];
        for (props, carrier) in cases {
            let mut out = BytesMut::new();
            encode(&props, &mut out);
            assert_eq!(out.len(), wire_len(&props), "{carrier:?}");
            assert_eq!(dec(&out, carrier), Ok(props), "{carrier:?}");
        }
    }
}
