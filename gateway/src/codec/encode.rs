//! Encoding of every MQTT control packet for 3.1, 3.1.1 and 5.0.
//!
//! The broker mostly sends server-side packets, but client-side ones are encoded too so that tests
//! and the fuzzer can check that decoding and encoding are inverses. Packets are written in the
//! shortest form the protocol allows. For 3.x, v5-only content (properties, reason codes without a
//! 3.1.1 counterpart) is dropped or mapped, so one `Packet` can be sent to clients of any level.
//!
//! Lengths are computed before writing so that each packet is written in one pass, straight into
//! the connection's output buffer.

use bytes::{BufMut, BytesMut};

use super::packet::{
    reason, Ack, ConnAck, Connect, Packet, Properties, Protocol, QoS, SubAck, Subscribe, UnsubAck,
    Unsubscribe,
};
use super::properties;
use super::wire::{binary_len, put_binary, put_varint, varint_len};

/// Appends the encoding of `packet` for a connection at `protocol` to `out`.
///
/// A CONNECT is encoded at its own protocol level. AUTH does not exist before 5.0, so for 3.x
/// nothing is written for it.
pub fn encode(packet: &Packet, protocol: Protocol, out: &mut BytesMut) {
    let v5 = protocol.is_v5();
    match packet {
        Packet::Connect(c) => connect(c, out),
        Packet::ConnAck(c) => connack(c, protocol, out),
        Packet::Publish(p) => {
            encode_publish_head(
                out,
                protocol,
                p.qos,
                p.dup,
                p.retain,
                &p.topic,
                p.packet_id,
                &p.properties,
                p.payload.len(),
            );
            out.put_slice(&p.payload);
        }
        Packet::PubAck(a) => ack(0x40, a, protocol, out),
        Packet::PubRec(a) => ack(0x50, a, protocol, out),
        Packet::PubRel(a) => ack(0x62, a, protocol, out),
        Packet::PubComp(a) => ack(0x70, a, protocol, out),
        Packet::Subscribe(s) => subscribe(s, protocol, out),
        Packet::SubAck(s) => suback(s, protocol, out),
        Packet::Unsubscribe(u) => unsubscribe(u, protocol, out),
        Packet::UnsubAck(u) => unsuback(u, protocol, out),
        Packet::PingReq => out.put_slice(&[0xC0, 0]),
        Packet::PingResp => out.put_slice(&[0xD0, 0]),
        Packet::Disconnect(d) if v5 => {
            // As for acknowledgements, a reason code always comes with its property length.
            if d.properties.is_empty() && d.reason == reason::SUCCESS {
                out.put_slice(&[0xE0, 0]);
            } else {
                reason_and_properties(0xE0, d.reason, &d.properties, out);
            }
        }
        Packet::Disconnect(_) => out.put_slice(&[0xE0, 0]),
        Packet::Auth(a) if v5 => {
            if a.reason == reason::SUCCESS && a.properties.is_empty() {
                out.put_slice(&[0xF0, 0]);
            } else {
                reason_and_properties(0xF0, a.reason, &a.properties, out);
            }
        }
        Packet::Auth(_) => {}
    }
}

/// Writes everything of a PUBLISH but its payload, which is `payload_len` bytes long and must be
/// appended by the caller. Returns the offset, from where this call started writing, of the
/// two-byte packet identifier (None for QoS 0), so that one encoding can be patched per subscriber.
#[allow(clippy::too_many_arguments)]
pub fn encode_publish_head(
    out: &mut BytesMut,
    protocol: Protocol,
    qos: QoS,
    dup: bool,
    retain: bool,
    topic: &str,
    packet_id: u16,
    properties: &Properties,
    payload_len: usize,
) -> Option<usize> {
    let start = out.len();
    let has_id = qos != QoS::AtMostOnce;
    let remaining = binary_len(topic.len())
        + if has_id { 2 } else { 0 }
        + properties_len(protocol, properties)
        + payload_len;
    let first = 0x30 | u8::from(dup) << 3 | (qos as u8) << 1 | u8::from(retain);
    header(out, first, remaining);
    put_binary(out, topic.as_bytes());
    let id_offset = has_id.then(|| {
        let offset = out.len() - start;
        out.put_u16(packet_id);
        offset
    });
    if protocol.is_v5() {
        properties::encode(properties, out);
    }
    id_offset
}

fn header(out: &mut BytesMut, first: u8, remaining: usize) {
    out.reserve(1 + varint_len(remaining) + remaining);
    out.put_u8(first);
    put_varint(out, remaining);
}

fn properties_len(protocol: Protocol, props: &Properties) -> usize {
    if protocol.is_v5() {
        properties::wire_len(props)
    } else {
        0
    }
}

fn connect(c: &Connect, out: &mut BytesMut) {
    let protocol = c.protocol;
    let name: &[u8] = if protocol == Protocol::V31 {
        b"MQIsdp"
    } else {
        b"MQTT"
    };
    let mut remaining = binary_len(name.len())
        + 1
        + 1
        + 2
        + properties_len(protocol, &c.properties)
        + binary_len(c.client_id.len());
    let mut flags = 0u8;
    if c.clean_start {
        flags |= 0x02;
    }
    if let Some(will) = &c.will {
        remaining += properties_len(protocol, &will.properties)
            + binary_len(will.topic.len())
            + binary_len(will.payload.len());
        flags |= 0x04 | (will.qos as u8) << 3;
        if will.retain {
            flags |= 0x20;
        }
    }
    if let Some(username) = &c.username {
        remaining += binary_len(username.len());
        flags |= 0x80;
    }
    if let Some(password) = &c.password {
        remaining += binary_len(password.len());
        flags |= 0x40;
    }
    header(out, 0x10, remaining);
    put_binary(out, name);
    out.put_u8(protocol.level());
    out.put_u8(flags);
    out.put_u16(c.keep_alive);
    if protocol.is_v5() {
        properties::encode(&c.properties, out);
    }
    put_binary(out, c.client_id.as_bytes());
    if let Some(will) = &c.will {
        if protocol.is_v5() {
            properties::encode(&will.properties, out);
        }
        put_binary(out, will.topic.as_bytes());
        put_binary(out, &will.payload);
    }
    if let Some(username) = &c.username {
        put_binary(out, username.as_bytes());
    }
    if let Some(password) = &c.password {
        put_binary(out, password);
    }
}

/// The 3.1.1 CONNACK return code closest to a v5 reason code.
fn connack_return_code(reason: u8) -> u8 {
    match reason {
        reason::SUCCESS => 0,
        reason::UNSUPPORTED_PROTOCOL_VERSION => 1,
        reason::CLIENT_IDENTIFIER_NOT_VALID => 2,
        reason::BAD_USERNAME_OR_PASSWORD => 4,
        reason::NOT_AUTHORIZED | reason::BAD_AUTHENTICATION_METHOD => 5,
        _ => 3,
    }
}

/// The bytes a CONNACK with `properties` takes on the wire at `protocol`, fixed header included
/// (what a client's Maximum Packet Size counts).
pub fn connack_len(properties: &Properties, protocol: Protocol) -> usize {
    if protocol.is_v5() {
        let remaining = 2 + properties::wire_len(properties);
        1 + varint_len(remaining) + remaining
    } else {
        4
    }
}

fn connack(c: &ConnAck, protocol: Protocol, out: &mut BytesMut) {
    let flags = u8::from(c.session_present);
    if protocol.is_v5() {
        header(out, 0x20, 2 + properties::wire_len(&c.properties));
        out.put_u8(flags);
        out.put_u8(c.reason);
        properties::encode(&c.properties, out);
    } else {
        out.put_slice(&[0x20, 2, flags, connack_return_code(c.reason)]);
    }
}

fn ack(first: u8, a: &Ack, protocol: Protocol, out: &mut BytesMut) {
    // With a reason code, the property length is written even when zero: the specification lets
    // it be omitted, but some clients (rumqttc 0.24) cannot read the shorter form.
    if !protocol.is_v5() || (a.reason == reason::SUCCESS && a.properties.is_empty()) {
        header(out, first, 2);
        out.put_u16(a.packet_id);
    } else {
        header(out, first, 3 + properties::wire_len(&a.properties));
        out.put_u16(a.packet_id);
        out.put_u8(a.reason);
        properties::encode(&a.properties, out);
    }
}

fn reason_and_properties(first: u8, reason: u8, props: &Properties, out: &mut BytesMut) {
    header(out, first, 1 + properties::wire_len(props));
    out.put_u8(reason);
    properties::encode(props, out);
}

fn subscribe(s: &Subscribe, protocol: Protocol, out: &mut BytesMut) {
    let remaining = 2
        + properties_len(protocol, &s.properties)
        + s.filters
            .iter()
            .map(|(filter, _)| binary_len(filter.len()) + 1)
            .sum::<usize>();
    header(out, 0x82, remaining);
    out.put_u16(s.packet_id);
    if protocol.is_v5() {
        properties::encode(&s.properties, out);
    }
    for (filter, options) in &s.filters {
        put_binary(out, filter.as_bytes());
        let mut byte = options.qos as u8;
        if protocol.is_v5() {
            byte |= u8::from(options.no_local) << 2
                | u8::from(options.retain_as_published) << 3
                | (options.retain_handling & 0x03) << 4;
        }
        out.put_u8(byte);
    }
}

fn suback(s: &SubAck, protocol: Protocol, out: &mut BytesMut) {
    header(
        out,
        0x90,
        2 + properties_len(protocol, &s.properties) + s.reasons.len(),
    );
    out.put_u16(s.packet_id);
    if protocol.is_v5() {
        properties::encode(&s.properties, out);
        out.put_slice(&s.reasons);
    } else {
        // 3.1.1 has a single failure code.
        out.extend(s.reasons.iter().map(|&code| code.min(0x80)));
    }
}

fn unsubscribe(u: &Unsubscribe, protocol: Protocol, out: &mut BytesMut) {
    let remaining = 2
        + properties_len(protocol, &u.properties)
        + u.filters.iter().map(|f| binary_len(f.len())).sum::<usize>();
    header(out, 0xA2, remaining);
    out.put_u16(u.packet_id);
    if protocol.is_v5() {
        properties::encode(&u.properties, out);
    }
    for filter in &u.filters {
        put_binary(out, filter.as_bytes());
    }
}

fn unsuback(u: &UnsubAck, protocol: Protocol, out: &mut BytesMut) {
    if protocol.is_v5() {
        header(
            out,
            0xB0,
            2 + properties::wire_len(&u.properties) + u.reasons.len(),
        );
        out.put_u16(u.packet_id);
        properties::encode(&u.properties, out);
        out.put_slice(&u.reasons);
    } else {
        header(out, 0xB0, 2);
        out.put_u16(u.packet_id);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::codec::packet::{Auth, Disconnect, LastWill, Publish, SubscriptionOptions};
    use crate::codec::{decode, frame_len};

    const ALL: [Protocol; 3] = [Protocol::V31, Protocol::V311, Protocol::V5];

    fn bytes_of(packet: &Packet, protocol: Protocol) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(packet, protocol, &mut out);
        out.to_vec()
    }

    fn roundtrip(packet: &Packet, protocol: Protocol) {
        let mut out = BytesMut::new();
        encode(packet, protocol, &mut out);
        assert_eq!(
            frame_len(&out, usize::MAX),
            Ok(Some(out.len())),
            "{packet:?}"
        );
        let decoded = decode(out.freeze(), protocol);
        assert_eq!(decoded.as_ref(), Ok(packet), "{protocol:?}");
    }

    fn props(reason_string: &str) -> Properties {
        Properties {
            reason_string: Some(reason_string.into()),
            user_properties: vec![("k".into(), "v".into())],
            ..Properties::default()
        }
    }

    fn publish(qos: QoS, topic: &str, properties: Properties, payload_len: usize) -> Publish {
        Publish {
            dup: qos != QoS::AtMostOnce,
            qos,
            retain: true,
            topic: topic.into(),
            packet_id: if qos == QoS::AtMostOnce { 0 } else { 513 },
            properties,
            payload: Bytes::from(vec![0xA5; payload_len]),
        }
    }

    fn connect(protocol: Protocol) -> Connect {
        let v5 = protocol.is_v5();
        let will_props = Properties {
            will_delay_interval: Some(10),
            content_type: Some("json".into()),
            ..Properties::default()
        };
        Connect {
            protocol,
            clean_start: true,
            keep_alive: 30,
            client_id: "client".into(),
            will: Some(LastWill {
                topic: "will/t".into(),
                payload: Bytes::from_static(b"bye"),
                qos: QoS::ExactlyOnce,
                retain: true,
                properties: if v5 {
                    will_props
                } else {
                    Properties::default()
                },
            }),
            username: Some("user".into()),
            password: Some(Bytes::from_static(&[0, 0xFF])),
            properties: if v5 {
                Properties {
                    session_expiry_interval: Some(60),
                    receive_maximum: Some(20),
                    ..Properties::default()
                }
            } else {
                Properties::default()
            },
        }
    }

    /// Packets every protocol can carry unchanged, with v5 content only for v5.
    fn representative(protocol: Protocol) -> Vec<Packet> {
        let v5 = protocol.is_v5();
        let p = |reason_string: &str| {
            if v5 {
                props(reason_string)
            } else {
                Properties::default()
            }
        };
        // For the packets that may carry user properties but no reason string.
        let user = || Properties {
            reason_string: None,
            ..p("")
        };
        let ack = |reason: u8, properties: Properties| Ack {
            packet_id: 7,
            reason: if v5 { reason } else { 0 },
            properties,
        };
        let mut packets = vec![
            Packet::Connect(Box::new(connect(protocol))),
            Packet::Connect(Box::new(Connect {
                will: None,
                username: None,
                password: None,
                client_id: "".into(),
                ..connect(protocol)
            })),
            Packet::ConnAck(ConnAck {
                session_present: true,
                reason: 0,
                properties: p("welcome"),
            }),
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason: reason::NOT_AUTHORIZED,
                properties: Properties::default(),
            }),
            Packet::Publish(publish(QoS::AtMostOnce, "a/b", user(), 0)),
            Packet::Publish(publish(QoS::AtLeastOnce, "a/b", user(), 10)),
            Packet::Publish(publish(QoS::ExactlyOnce, "ü/€", Properties::default(), 200)),
            Packet::PubAck(ack(0, Properties::default())),
            Packet::PubAck(ack(0x10, Properties::default())),
            Packet::PubRec(ack(0x80, p("no"))),
            Packet::PubRel(ack(0x92, Properties::default())),
            Packet::PubComp(ack(0, p("done"))),
            Packet::Subscribe(Subscribe {
                packet_id: 1,
                filters: vec![
                    ("a/+".into(), SubscriptionOptions::default()),
                    (
                        "#".into(),
                        SubscriptionOptions {
                            qos: QoS::ExactlyOnce,
                            no_local: v5,
                            retain_as_published: v5,
                            retain_handling: if v5 { 2 } else { 0 },
                        },
                    ),
                ],
                properties: if v5 {
                    Properties {
                        subscription_identifiers: vec![99],
                        ..Properties::default()
                    }
                } else {
                    Properties::default()
                },
            }),
            Packet::SubAck(SubAck {
                packet_id: 1,
                reasons: vec![0, 2, 0x80],
                properties: p("ok"),
            }),
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 2,
                filters: vec!["a/+".into(), "b".into()],
                properties: user(),
            }),
            Packet::UnsubAck(UnsubAck {
                packet_id: 2,
                reasons: if v5 { vec![0, 0x11] } else { Vec::new() },
                properties: p("gone"),
            }),
            Packet::PingReq,
            Packet::PingResp,
            Packet::Disconnect(Disconnect::default()),
        ];
        if v5 {
            packets.extend([
                Packet::Disconnect(Disconnect {
                    reason: reason::DISCONNECT_WITH_WILL,
                    properties: Properties::default(),
                }),
                Packet::Disconnect(Disconnect {
                    reason: reason::SESSION_TAKEN_OVER,
                    properties: Properties {
                        session_expiry_interval: Some(0),
                        ..props("taken over")
                    },
                }),
                Packet::Auth(Auth::default()),
                Packet::Auth(Auth {
                    reason: reason::CONTINUE_AUTHENTICATION,
                    properties: Properties {
                        authentication_method: Some("SCRAM".into()),
                        authentication_data: Some(Bytes::from_static(b"nonce")),
                        ..Properties::default()
                    },
                }),
            ]);
        }
        packets
    }

    #[test]
    fn decode_inverts_encode_for_every_protocol() {
        for protocol in ALL {
            for packet in representative(protocol) {
                roundtrip(&packet, protocol);
            }
        }
    }

    #[test]
    fn remaining_length_boundaries() {
        for len in [
            0, 122, 123, 124, 16_378, 16_379, 16_380, 2_097_148, 2_097_149,
        ] {
            let packet =
                Packet::Publish(publish(QoS::AtMostOnce, "abc", Properties::default(), len));
            roundtrip(&packet, Protocol::V311);
        }
    }

    #[test]
    fn connack_len_is_what_encode_writes() {
        let long = Properties {
            assigned_client_identifier: Some("x".repeat(200).into()),
            ..props("welcome")
        };
        for protocol in ALL {
            for properties in [Properties::default(), props("welcome"), long.clone()] {
                let packet = Packet::ConnAck(ConnAck {
                    session_present: true,
                    reason: 0,
                    properties: properties.clone(),
                });
                assert_eq!(
                    connack_len(&properties, protocol),
                    bytes_of(&packet, protocol).len(),
                    "{protocol:?} {properties:?}"
                );
            }
        }
    }

    #[test]
    fn connack_return_codes_for_3x() {
        let cases = [
            (0x00, 0),
            (0x84, 1),
            (0x85, 2),
            (0x88, 3),
            (0x89, 3),
            (0x80, 3),
            (0x95, 3),
            (0x86, 4),
            (0x87, 5),
            (0x8C, 5),
        ];
        for (reason, code) in cases {
            let packet = Packet::ConnAck(ConnAck {
                session_present: false,
                reason,
                properties: props("ignored"),
            });
            assert_eq!(
                bytes_of(&packet, Protocol::V311),
                [0x20, 2, 0, code],
                "{reason:#x}"
            );
        }
    }

    #[test]
    fn v5_only_content_is_dropped_for_3x() {
        let suback = Packet::SubAck(SubAck {
            packet_id: 3,
            reasons: vec![1, 0x87, 0x8F, 0x80],
            properties: props("p"),
        });
        assert_eq!(
            bytes_of(&suback, Protocol::V311),
            [0x90, 6, 0, 3, 1, 0x80, 0x80, 0x80]
        );
        let unsuback = Packet::UnsubAck(UnsubAck {
            packet_id: 3,
            reasons: vec![0x11],
            properties: props("p"),
        });
        assert_eq!(bytes_of(&unsuback, Protocol::V31), [0xB0, 2, 0, 3]);
        let puback = Packet::PubAck(Ack {
            packet_id: 3,
            reason: 0x10,
            properties: props("p"),
        });
        assert_eq!(bytes_of(&puback, Protocol::V311), [0x40, 2, 0, 3]);
        let disconnect = Packet::Disconnect(Disconnect {
            reason: 0x8E,
            properties: props("p"),
        });
        assert_eq!(bytes_of(&disconnect, Protocol::V311), [0xE0, 0]);
        assert!(bytes_of(&Packet::Auth(Auth::default()), Protocol::V311).is_empty());
        let publish = Packet::Publish(publish(QoS::AtMostOnce, "t", props("p"), 1));
        assert_eq!(
            bytes_of(&publish, Protocol::V311),
            [0x31, 4, 0, 1, b't', 0xA5]
        );
    }

    #[test]
    fn v5_short_forms() {
        let ack = |reason| {
            Packet::PubAck(Ack {
                packet_id: 3,
                reason,
                properties: Properties::default(),
            })
        };
        assert_eq!(bytes_of(&ack(0), Protocol::V5), [0x40, 2, 0, 3]);
        assert_eq!(bytes_of(&ack(0x10), Protocol::V5), [0x40, 4, 0, 3, 0x10, 0]);
        let disconnect = |reason| {
            Packet::Disconnect(Disconnect {
                reason,
                properties: Properties::default(),
            })
        };
        assert_eq!(bytes_of(&disconnect(0), Protocol::V5), [0xE0, 0]);
        assert_eq!(
            bytes_of(&disconnect(0x8B), Protocol::V5),
            [0xE0, 2, 0x8B, 0]
        );
        let auth = Packet::Auth(Auth {
            reason: 0x18,
            properties: Properties::default(),
        });
        assert_eq!(bytes_of(&auth, Protocol::V5), [0xF0, 2, 0x18, 0]);
        assert_eq!(
            bytes_of(&Packet::Auth(Auth::default()), Protocol::V5),
            [0xF0, 0]
        );
    }

    #[test]
    fn publish_head_reports_where_the_packet_id_is() {
        for protocol in ALL {
            let props = if protocol.is_v5() {
                Properties {
                    topic_alias: Some(1),
                    ..Properties::default()
                }
            } else {
                Properties::default()
            };
            let mut out = BytesMut::from(&b"prefix"[..]);
            let offset = encode_publish_head(
                &mut out,
                protocol,
                QoS::AtLeastOnce,
                false,
                false,
                "topic",
                1,
                &props,
                3,
            )
            .expect("QoS 1 has a packet id");
            out.extend_from_slice(b"abc");
            let mut frame = out.split_off(6);
            frame[offset..offset + 2].copy_from_slice(&0x1234u16.to_be_bytes());
            let Ok(Packet::Publish(p)) = decode(frame.freeze(), protocol) else {
                panic!("patched PUBLISH does not decode");
            };
            assert_eq!((p.packet_id, &p.payload[..]), (0x1234, &b"abc"[..]));

            let mut out = BytesMut::new();
            let none = encode_publish_head(
                &mut out,
                protocol,
                QoS::AtMostOnce,
                false,
                false,
                "t",
                0,
                &props,
                0,
            );
            assert_eq!(none, None);
        }
    }
}
