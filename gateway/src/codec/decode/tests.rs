//! Unit tests of the packet decoder: framing, fixed header flags, and each packet's rules.

use super::*;
use crate::codec::wire::put_varint;

/// A frame of packet type/flags `first` around `body`, with a correct remaining length.
fn pkt(first: u8, body: &[u8]) -> Bytes {
    let mut out = bytes::BytesMut::new();
    out.extend_from_slice(&[first]);
    put_varint(&mut out, body.len());
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
fn frame_size_is_known_once_the_fixed_header_is() {
    assert_eq!(frame_size(&[], 100), Ok(None));
    assert_eq!(frame_size(&[0x30], 100), Ok(None));
    assert_eq!(frame_size(&[0x30, 0x80], 1000), Ok(None));
    assert_eq!(frame_size(&[0x30, 3, 0], 100), Ok(Some(5)));
    assert_eq!(frame_size(&[0x30, 0x80, 0x01], 1000), Ok(Some(131)));
    assert_eq!(frame_size(&[0x30, 3, 0, 1, b'a', 9], 100), Ok(Some(5)));
    assert!(frame_size(&[0x30, 0xFF, 0x7F], 1000).is_err());
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
    let Ok(Packet::Unsubscribe(u)) = dec(0xA2, &[0, 1, 0, 0, 1, b'a', 0, 1, b'b'], Protocol::V5)
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
        // Whatever the error, the DISCONNECT it ends a connection with is one a client decodes.
        let code = error.disconnect_reason();
        assert_eq!(
            dec(0xE0, &[code, 0], Protocol::V5).map(|_| code),
            Ok(code),
            "{error}: DISCONNECT 0x{code:02X}"
        );
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
