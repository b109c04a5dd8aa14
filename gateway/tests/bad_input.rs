//! Robustness against bad input on the wire: malformed packets, protocol violations and limits
//! exceeded, sent byte by byte over raw TCP for MQTT 3.1.1 and 5.0. Each test asserts the exact
//! answer (CONNACK code, v5 DISCONNECT reason code, or nothing) followed by the close, and that a
//! well-behaved client connected to the same broker keeps publishing and receiving throughout.
//! A property test throws random bytes after a valid CONNECT and checks that no session task
//! panics and the broker keeps serving.

mod clients;
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clients::raw::{connect_raw, packet, string, varint, End, Frame, Raw, V};
use clients::Healthy;
use common::TestBroker;
use proptest::prelude::*;
use tokio::io::AsyncWriteExt;

// v5 reason codes used below.
const MALFORMED: u8 = 0x81;
const PROTOCOL_ERROR: u8 = 0x82;
const BAD_AUTH_METHOD: u8 = 0x8C;
const TOPIC_NAME_INVALID: u8 = 0x90;
const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
const TOPIC_ALIAS_INVALID: u8 = 0x94;
const PACKET_TOO_LARGE: u8 = 0x95;
const PAYLOAD_FORMAT_INVALID: u8 = 0x99;

/// Connects a raw client at `v`, sends `bad`, and asserts the broker's answer for bad input
/// (v5: DISCONNECT `code`; 3.1.1: close without a word), then that `healthy` still works.
async fn assert_rejected(
    broker: &TestBroker,
    healthy: &mut Healthy,
    v: V,
    bad: &[u8],
    code: u8,
    what: &str,
) {
    let mut raw = Raw::connected(broker.addr, v, "offender").await;
    raw.send(bad).await;
    raw.expect_rejected(v, code, &format!("{what} ({v:?})"))
        .await;
    healthy.round_trip().await;
}

/// Opens a raw connection whose first packet is `first`, and asserts a close without answer.
async fn assert_closed_without_answer(broker: &TestBroker, first: &[u8], what: &str) {
    let mut raw = Raw::open_with(broker.addr, first).await;
    raw.expect_closed(what).await;
}

async fn started() -> (TestBroker, Healthy) {
    let broker = TestBroker::start().await;
    let healthy = Healthy::start(broker.addr, "healthy").await;
    (broker, healthy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_length_past_the_end_of_the_packet() {
    let (broker, mut healthy) = started().await;
    for v in V::BOTH {
        // Topic length 10, but only three bytes follow.
        let bad = packet(0x30, &[0, 10, b'a', b'b', b'c']);
        assert_rejected(
            &broker,
            &mut healthy,
            v,
            &bad,
            MALFORMED,
            "topic length past the end",
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remaining_length_too_short_for_the_packet_identifier() {
    let (broker, mut healthy) = started().await;
    for v in V::BOTH {
        // QoS 1 PUBLISH that ends right after its topic: no room for the packet identifier.
        let bad = packet(0x32, &[0, 1, b'a']);
        assert_rejected(
            &broker,
            &mut healthy,
            v,
            &bad,
            MALFORMED,
            "packet identifier missing",
        )
        .await;
        // PUBACK with a one-byte body.
        assert_rejected(
            &broker,
            &mut healthy,
            v,
            &[0x40, 0x01, 0x00],
            MALFORMED,
            "short PUBACK",
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_client_id_past_the_end() {
    let (broker, mut healthy) = started().await;
    let truncated_id = [0, 10, b'i', b'd'];
    let v5 = connect_raw(b"MQTT", 5, 0x02, Some(&[]), &truncated_id);
    let mut raw = Raw::open_with(broker.addr, &v5).await;
    raw.expect_connack_refusal(MALFORMED, "v5 CONNECT with truncated client id")
        .await;

    let v311 = connect_raw(b"MQTT", 4, 0x02, None, &truncated_id);
    assert_closed_without_answer(&broker, &v311, "3.1.1 CONNECT with truncated client id").await;
    healthy.round_trip().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_closed_in_the_middle_of_a_packet() {
    let (broker, mut healthy) = started().await;
    for v in V::BOTH {
        let mut raw = Raw::connected(broker.addr, v, "offender").await;
        // Announces ten bytes, sends two, then closes its sending side.
        raw.send(&[0x30, 0x0A, 0x00, 0x01]).await;
        raw.stream.shutdown().await.expect("shutdown write side");
        raw.expect_closed(&format!("half-sent packet then EOF ({v:?})"))
            .await;
        healthy.round_trip().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_fixed_header_flags() {
    let (broker, mut healthy) = started().await;
    for v in V::BOTH {
        let np = v.no_props();
        let mut subscribe = vec![0, 1];
        subscribe.extend_from_slice(np);
        subscribe.extend(string(b"a"));
        subscribe.push(0);
        let mut unsubscribe = vec![0, 1];
        unsubscribe.extend_from_slice(np);
        unsubscribe.extend(string(b"a"));
        let cases: [(&str, Vec<u8>); 5] = [
            ("SUBSCRIBE with flags 0000", packet(0x80, &subscribe)),
            ("UNSUBSCRIBE with flags 0000", packet(0xA0, &unsubscribe)),
            ("PUBREL with flags 0000", packet(0x60, &[0, 1])),
            ("PINGREQ with flags 0001", vec![0xC1, 0x00]),
            ("DISCONNECT with flags 1000", vec![0xE8, 0x00]),
        ];
        for (what, bad) in cases {
            assert_rejected(&broker, &mut healthy, v, &bad, MALFORMED, what).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_packet_not_connect_is_closed_without_answer() {
    let (broker, mut healthy) = started().await;
    let publish = packet(0x30, &[0, 1, b'a', b'h', b'i']);
    assert_closed_without_answer(&broker, &publish, "PUBLISH before CONNECT").await;
    // A payload whose first byte sits where a CONNECT's protocol level would be, and reads 5.
    let publish5 = packet(0x30, &[0, 1, b'a', 5, 0, 0]);
    assert_closed_without_answer(&broker, &publish5, "PUBLISH before CONNECT, payload 05").await;
    let subscribe = packet(0x82, &[0, 1, 0, 4, b'M', b'Q', b'T', b'T', 5, 0]);
    assert_closed_without_answer(&broker, &subscribe, "SUBSCRIBE shaped like a v5 CONNECT").await;
    assert_closed_without_answer(&broker, &[0xC0, 0x00], "PINGREQ before CONNECT").await;
    healthy.round_trip().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connect() {
    let (broker, mut healthy) = started().await;
    for v in V::BOTH {
        let again = v.connect("offender");
        assert_rejected(
            &broker,
            &mut healthy,
            v,
            &again,
            PROTOCOL_ERROR,
            "second CONNECT",
        )
        .await;
        // At a protocol level the broker does not speak: still a second CONNECT, not the
        // CONNACK code 0x84, which no DISCONNECT may carry (found by the session fuzz target).
        let unknown = connect_raw(b"MQTT", 6, 0x02, Some(&[]), &string(b"offender"));
        assert_rejected(
            &broker,
            &mut healthy,
            v,
            &unknown,
            PROTOCOL_ERROR,
            "second CONNECT at level 6",
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_protocol_name_or_level() {
    let (broker, mut healthy) = started().await;
    let id = string(b"offender");
    // (protocol name, level, v5 properties)
    type Case<'a> = (&'a [u8], u8, Option<&'a [u8]>);
    let cases: [Case; 5] = [
        (b"MQTX", 4, None),
        (b"MQTX", 5, Some(&[])),
        (b"MQTT", 6, Some(&[])),
        (b"MQTT", 3, None),
        (b"MQIsdp", 4, None),
    ];
    for (name, level, props) in cases {
        let mut raw =
            Raw::open_with(broker.addr, &connect_raw(name, level, 0x02, props, &id)).await;
        let what = format!("protocol {:?} level {level}", String::from_utf8_lossy(name));
        let frame = raw.expect_packet(&what).await;
        // 3.1.1 form: flags 0, return code 1 (unacceptable protocol version), no properties.
        assert_eq!(
            frame,
            Frame {
                first: 0x20,
                body: vec![0, 1]
            },
            "{what}"
        );
        raw.expect_closed(&what).await;
    }
    healthy.round_trip().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_and_nul_in_strings() {
    let (broker, mut healthy) = started().await;
    for v in V::BOTH {
        let bad_utf8 = v.publish(0x30, &[b'a', 0xC3, 0x28], None, &[], b"x");
        assert_rejected(
            &broker,
            &mut healthy,
            v,
            &bad_utf8,
            MALFORMED,
            "invalid UTF-8 in topic",
        )
        .await;
        let surrogate = v.publish(0x30, &[0xED, 0xA0, 0x80], None, &[], b"x");
        assert_rejected(
            &broker,
            &mut healthy,
            v,
            &surrogate,
            MALFORMED,
            "UTF-16 surrogate in topic",
        )
        .await;
        let nul = v.publish(0x30, b"a\0b", None, &[], b"x");
        assert_rejected(&broker, &mut healthy, v, &nul, MALFORMED, "U+0000 in topic").await;
        let mut sub = vec![0, 1];
        sub.extend_from_slice(v.no_props());
        sub.extend(string(b"a/\0"));
        sub.push(0);
        let nul_filter = packet(0x82, &sub);
        assert_rejected(
            &broker,
            &mut healthy,
            v,
            &nul_filter,
            MALFORMED,
            "U+0000 in topic filter",
        )
        .await;
    }
    // In CONNECT: v5 answers CONNACK 0x81, 3.1.1 closes without a word.
    let mut raw = Raw::open_with(
        broker.addr,
        &connect_raw(b"MQTT", 5, 0x02, Some(&[]), &string(b"id\0")),
    )
    .await;
    raw.expect_connack_refusal(MALFORMED, "U+0000 in v5 client id")
        .await;
    let v311 = connect_raw(b"MQTT", 4, 0x02, None, &string(&[b'i', 0xFF]));
    assert_closed_without_answer(&broker, &v311, "invalid UTF-8 in 3.1.1 client id").await;
    healthy.round_trip().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_in_publish_topic() {
    let (broker, mut healthy) = started().await;
    for v in V::BOTH {
        for topic in ["a/+", "a/#", "+", "#", "a/b+"] {
            let bad = v.publish(0x30, topic.as_bytes(), None, &[], b"x");
            let what = format!("PUBLISH to {topic:?}");
            assert_rejected(&broker, &mut healthy, v, &bad, TOPIC_NAME_INVALID, &what).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_qos_3() {
    let (broker, mut healthy) = started().await;
    for v in V::BOTH {
        let bad = v.publish(0x36, b"a", Some(1), &[], b"x");
        assert_rejected(&broker, &mut healthy, v, &bad, MALFORMED, "PUBLISH QoS 3").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dup_on_qos_0() {
    let (broker, mut healthy) = started().await;
    for v in V::BOTH {
        let bad = v.publish(0x38, b"a", None, &[], b"x");
        assert_rejected(&broker, &mut healthy, v, &bad, MALFORMED, "DUP on QoS 0").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alias_zero_or_above_the_maximum() {
    let broker = TestBroker::with(|c| c.mqtt.topic_alias_maximum = 4).await;
    let mut healthy = Healthy::start(broker.addr, "healthy").await;

    // Control: alias 4 (the maximum) is set and then used alone.
    let mut raw = Raw::connected(broker.addr, V::V5, "aliaser").await;
    raw.send(&V::V5.subscribe("alias/t", 0)).await;
    assert_eq!(raw.expect_packet("SUBACK").await.first, 0x90);
    raw.send(&V::V5.publish(0x30, b"alias/t", None, &[0x23, 0, 4], b"one"))
        .await;
    raw.send(&V::V5.publish(0x30, b"", None, &[0x23, 0, 4], b"two"))
        .await;
    for expected in [&b"one"[..], b"two"] {
        let frame = raw.expect_packet("aliased PUBLISH delivered").await;
        assert_eq!(frame.first & 0xF0, 0x30, "{frame:?}");
        assert!(frame.body.ends_with(expected), "{frame:?}");
    }

    for alias in [0u16, 5, 0xFFFF] {
        let [hi, lo] = alias.to_be_bytes();
        let bad = V::V5.publish(0x30, b"a", None, &[0x23, hi, lo], b"x");
        let what = format!("topic alias {alias}");
        assert_rejected(
            &broker,
            &mut healthy,
            V::V5,
            &bad,
            TOPIC_ALIAS_INVALID,
            &what,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packet_larger_than_max_packet_size() {
    let broker = TestBroker::with(|c| c.mqtt.max_packet_size = 1024).await;
    let mut healthy = Healthy::start(broker.addr, "healthy").await;
    for v in V::BOTH {
        // Exactly 1024 bytes is accepted and delivered.
        let mut raw = Raw::connected(broker.addr, v, "big").await;
        raw.send(&v.subscribe("big", 0)).await;
        assert_eq!(raw.expect_packet("SUBACK").await.first, 0x90);
        let overhead = 1 + 2 + 2 + 3 + v.no_props().len(); // header, topic, property length
        let fitting = v.publish(0x30, b"big", None, &[], &vec![b'x'; 1024 - overhead]);
        assert_eq!(fitting.len(), 1024);
        raw.send(&fitting).await;
        let echoed = raw.expect_packet("1024-byte PUBLISH delivered").await;
        assert_eq!(echoed.body.len(), 1024 - 3, "{v:?}");

        // 1025 bytes: refused as soon as the fixed header announces it, before the body.
        let mut header = vec![0x30];
        header.extend(varint(1025 - 3));
        raw.send(&header).await;
        raw.expect_rejected(v, PACKET_TOO_LARGE, &format!("1025-byte PUBLISH ({v:?})"))
            .await;
        healthy.round_trip().await;

        // And far beyond, with the body on its way.
        let huge = v.publish(0x30, b"big", None, &[], &vec![b'x'; 4000]);
        let mut raw = Raw::connected(broker.addr, v, "big").await;
        raw.send_lenient(&huge).await;
        raw.expect_rejected(v, PACKET_TOO_LARGE, &format!("4 kB PUBLISH ({v:?})"))
            .await;
        healthy.round_trip().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remaining_length_overflow_and_non_minimal() {
    let (broker, mut healthy) = started().await;
    for v in V::BOTH {
        let five_bytes = [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F];
        assert_rejected(
            &broker,
            &mut healthy,
            v,
            &five_bytes,
            MALFORMED,
            "5-byte remaining length",
        )
        .await;
        let non_minimal = [0xC0, 0x80, 0x00];
        assert_rejected(
            &broker,
            &mut healthy,
            v,
            &non_minimal,
            MALFORMED,
            "non-minimal remaining length",
        )
        .await;
    }
    // Also as the very first bytes of a connection.
    assert_closed_without_answer(
        &broker,
        &[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
        "5-byte length in CONNECT",
    )
    .await;
    healthy.round_trip().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_reserved_flag_bit() {
    let (broker, mut healthy) = started().await;
    let id = string(b"offender");
    let mut raw = Raw::open_with(broker.addr, &connect_raw(b"MQTT", 5, 0x03, Some(&[]), &id)).await;
    raw.expect_connack_refusal(MALFORMED, "v5 CONNECT with reserved flag")
        .await;
    let v311 = connect_raw(b"MQTT", 4, 0x03, None, &id);
    assert_closed_without_answer(&broker, &v311, "3.1.1 CONNECT with reserved flag").await;
    // Reserved bits of the CONNECT fixed header.
    let mut v311_header = V::V311.connect("offender");
    v311_header[0] = 0x12;
    assert_closed_without_answer(
        &broker,
        &v311_header,
        "3.1.1 CONNECT with fixed header flags 0010",
    )
    .await;
    healthy.round_trip().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_client_id_without_clean_session() {
    let (broker, mut healthy) = started().await;
    let empty = string(b"");
    // 3.1.1, clean session 0: identifier rejected, return code 2.
    let mut raw = Raw::open_with(broker.addr, &connect_raw(b"MQTT", 4, 0x00, None, &empty)).await;
    let frame = raw.expect_packet("CONNACK").await;
    assert_eq!(
        frame,
        Frame {
            first: 0x20,
            body: vec![0, 2]
        }
    );
    raw.expect_closed("3.1.1 empty client id, clean session 0")
        .await;
    // 3.1 never allows an empty identifier.
    let mut raw = Raw::open_with(broker.addr, &connect_raw(b"MQIsdp", 3, 0x02, None, &empty)).await;
    let frame = raw.expect_packet("CONNACK").await;
    assert_eq!(
        frame,
        Frame {
            first: 0x20,
            body: vec![0, 2]
        }
    );
    raw.expect_closed("3.1 empty client id").await;
    // Control: 3.1.1 with clean session 1 is accepted.
    let mut raw = Raw::open_with(broker.addr, &connect_raw(b"MQTT", 4, 0x02, None, &empty)).await;
    let frame = raw.expect_packet("CONNACK").await;
    assert_eq!(
        frame,
        Frame {
            first: 0x20,
            body: vec![0, 0]
        }
    );
    raw.ping().await;
    healthy.round_trip().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_packet_without_enhanced_authentication() {
    let (broker, mut healthy) = started().await;
    // v5: a well-formed AUTH (continue authentication) outside an enhanced-auth exchange.
    assert_rejected(
        &broker,
        &mut healthy,
        V::V5,
        &[0xF0, 0x02, 0x18, 0x00],
        PROTOCOL_ERROR,
        "AUTH",
    )
    .await;
    // 3.1.1 has no packet type 15.
    assert_rejected(
        &broker,
        &mut healthy,
        V::V311,
        &[0xF0, 0x00],
        MALFORMED,
        "packet type 15",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_authentication_method() {
    let (broker, mut healthy) = started().await;
    let mut props = vec![0x15];
    props.extend(string(b"SCRAM-SHA-1"));
    let mut raw = Raw::open_with(
        broker.addr,
        &connect_raw(b"MQTT", 5, 0x02, Some(&props), &string(b"offender")),
    )
    .await;
    raw.expect_connack_refusal(BAD_AUTH_METHOD, "CONNECT with authentication method")
        .await;
    healthy.round_trip().await;
}

/// The value of the two-byte property `id` in a v5 CONNACK body.
fn connack_u16_property(body: &[u8], id: u8) -> Option<u16> {
    // flags, reason, then a property length that fits one byte for the broker's CONNACKs.
    let len = usize::from(*body.get(2)?);
    let mut props = body.get(3..3 + len)?;
    while let Some((&pid, rest)) = props.split_first() {
        let size = match pid {
            0x21 | 0x22 | 0x13 => 2,
            0x11 | 0x27 => 4,
            0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
            0x12 | 0x1A | 0x1C | 0x1F => {
                2 + usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]))
            }
            _ => return None,
        };
        if pid == id {
            return Some(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
        }
        props = rest.get(size..)?;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_maximum_exceeded() {
    let broker = TestBroker::with(|c| c.mqtt.receive_maximum = 2).await;
    let mut healthy = Healthy::start(broker.addr, "healthy").await;
    let mut raw = Raw::open_with(broker.addr, &V::V5.connect("offender")).await;
    let connack = raw.expect_packet("CONNACK").await;
    assert_eq!(connack.body.get(1), Some(&0), "{connack:?}");
    assert_eq!(
        connack_u16_property(&connack.body, 0x21),
        Some(2),
        "receive maximum advertised: {connack:?}"
    );

    for id in 1..=3u16 {
        raw.send(&V::V5.publish(0x34, b"rm/t", Some(id), &[], b"x"))
            .await;
    }
    for id in 1..=2u16 {
        let frame = raw.expect_packet("PUBREC").await;
        assert_eq!(frame.first, 0x50, "expected PUBREC {id}, got {frame:?}");
        assert_eq!(frame.body[..2], id.to_be_bytes(), "{frame:?}");
    }
    raw.expect_disconnect(RECEIVE_MAXIMUM_EXCEEDED, "third unreleased QoS 2 PUBLISH")
        .await;
    healthy.round_trip().await;

    // Control: releasing before the next one keeps within the window.
    let mut raw = Raw::connected(broker.addr, V::V5, "polite").await;
    for id in 1..=5u16 {
        raw.send(&V::V5.publish(0x34, b"rm/t", Some(id), &[], b"x"))
            .await;
        let rec = raw.expect_packet("PUBREC").await;
        assert_eq!(rec.first, 0x50, "{rec:?}");
        raw.send(&packet(0x62, &id.to_be_bytes())).await;
        let comp = raw.expect_packet("PUBCOMP").await;
        assert_eq!(comp.first, 0x70, "{comp:?}");
    }
    healthy.round_trip().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_format_utf8_with_invalid_payload() {
    let (broker, mut healthy) = started().await;
    let mut watcher = Raw::connected(broker.addr, V::V5, "watcher").await;
    watcher.send(&V::V5.subscribe("pf/#", 1)).await;
    assert_eq!(watcher.expect_packet("SUBACK").await.first, 0x90);

    let mut raw = Raw::connected(broker.addr, V::V5, "offender").await;
    let utf8_flag = [0x01, 0x01];
    // QoS 1: PUBACK 0x99, not routed, connection stays.
    raw.send(&V::V5.publish(0x32, b"pf/a", Some(7), &utf8_flag, &[0xFF, 0xFE]))
        .await;
    let ack = raw.expect_packet("PUBACK").await;
    assert_eq!(ack.first, 0x40, "{ack:?}");
    assert_eq!(ack.body[..3], [0, 7, PAYLOAD_FORMAT_INVALID], "{ack:?}");
    // QoS 2: PUBREC 0x99.
    raw.send(&V::V5.publish(0x34, b"pf/b", Some(8), &utf8_flag, &[0xC0, 0x80]))
        .await;
    let rec = raw.expect_packet("PUBREC").await;
    assert_eq!(rec.first, 0x50, "{rec:?}");
    assert_eq!(rec.body[..3], [0, 8, PAYLOAD_FORMAT_INVALID], "{rec:?}");
    raw.ping().await;
    // A valid UTF-8 payload with the same flag goes through; it is the first the watcher sees.
    raw.send(&V::V5.publish(0x32, b"pf/c", Some(9), &utf8_flag, "ok ✓".as_bytes()))
        .await;
    let ok = raw.expect_packet("PUBACK").await;
    assert_eq!((ok.first, &ok.body[..2]), (0x40, &[0u8, 9][..]), "{ok:?}");
    assert!(matches!(ok.body.get(2), None | Some(0)), "{ok:?}");
    let delivered = watcher.expect_packet("valid PUBLISH").await;
    assert_eq!(delivered.first & 0xF0, 0x30, "{delivered:?}");
    assert!(
        delivered.body.ends_with("ok ✓".as_bytes()),
        "invalid payload was routed: {delivered:?}"
    );
    // QoS 0 has no acknowledgement to carry the refusal: the connection is closed with 0x99.
    raw.send(&V::V5.publish(0x30, b"pf/d", None, &utf8_flag, &[0xFF]))
        .await;
    raw.expect_disconnect(PAYLOAD_FORMAT_INVALID, "QoS 0 invalid UTF-8 payload")
        .await;
    healthy.round_trip().await;
}

/// Panics that happened on the garbage test's broker runtime threads.
static BROKER_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());
const BROKER_THREAD: &str = "garbage-broker";

/// Bytes to send after CONNECT: arbitrary bytes, or well-framed packets of any type with
/// arbitrary bodies (which reach the decoders instead of stopping at the framing).
fn garbage() -> impl Strategy<Value = Vec<u8>> {
    let framed = (any::<u8>(), prop::collection::vec(any::<u8>(), 0..48))
        .prop_map(|(first, body)| packet(first, &body));
    prop_oneof![
        prop::collection::vec(any::<u8>(), 1..256),
        prop::collection::vec(framed, 1..6).prop_map(|ps| ps.concat()),
    ]
}

#[test]
fn random_bytes_after_connect_never_crash_the_broker() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some(BROKER_THREAD) {
            BROKER_PANICS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(info.to_string());
        }
        previous(info);
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(BROKER_THREAD)
        .enable_all()
        .build()
        .expect("runtime");
    let (broker, healthy) = rt.block_on(started());
    let healthy = Arc::new(tokio::sync::Mutex::new(healthy));
    let closed = AtomicUsize::new(0);
    let config = ProptestConfig {
        cases: 300,
        failure_persistence: None,
        max_shrink_time: 30_000,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let started_at = std::time::Instant::now();
    let result = runner.run(&(any::<bool>(), garbage()), |(v5, bytes)| {
        let v = if v5 { V::V5 } else { V::V311 };
        rt.block_on(async {
            let mut raw = Raw::connected(broker.addr, v, "fuzz").await;
            raw.send_lenient(&bytes).await;
            // Whatever the broker answers, it must not hang forever on a complete bad packet;
            // an incomplete one may legitimately wait for more bytes, so only drain briefly.
            loop {
                match raw.read_packet_within(Duration::from_millis(30)).await {
                    Ok(_) => continue,
                    Err(End::Closed) => {
                        closed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Err(End::Silent) => break,
                }
            }
            drop(raw);
            healthy.lock().await.round_trip().await;
        });
        let panics = BROKER_PANICS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        prop_assert!(
            panics.is_empty(),
            "broker task panicked on {:02X?}: {:?}",
            bytes,
            panics
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Sanity: most garbage is rejected, so the property was actually exercised.
    let closed = closed.load(Ordering::Relaxed);
    assert!(
        closed > 100,
        "only {closed} of 300 garbage inputs closed the connection"
    );
    assert!(
        started_at.elapsed() < Duration::from_secs(120),
        "garbage cases took {:?}",
        started_at.elapsed()
    );
    // A fresh client still connects and works afterwards.
    rt.block_on(async {
        let mut fresh = Healthy::start(broker.addr, "fresh").await;
        fresh.round_trip().await;
        healthy.lock().await.round_trip().await;
    });
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_topic_with_wildcard() {
    let (broker, mut healthy) = started().await;
    let mut payload = string(b"offender");
    // v5: will properties (none), will topic, will payload.
    let mut v5_payload = payload.clone();
    v5_payload.push(0);
    v5_payload.extend(string(b"will/+"));
    v5_payload.extend(string(b"bye"));
    let mut raw = Raw::open_with(
        broker.addr,
        &connect_raw(b"MQTT", 5, 0x06, Some(&[]), &v5_payload),
    )
    .await;
    raw.expect_connack_refusal(TOPIC_NAME_INVALID, "v5 will topic with wildcard")
        .await;
    // 3.1.1 has no return code for this: a CONNECT that does not conform is closed without
    // CONNACK [MQTT-3.1.4-1].
    payload.extend(string(b"will/#"));
    payload.extend(string(b"bye"));
    let v311 = connect_raw(b"MQTT", 4, 0x06, None, &payload);
    assert_closed_without_answer(&broker, &v311, "3.1.1 will topic with wildcard").await;
    healthy.round_trip().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_property_protocol_errors() {
    let (broker, mut healthy) = started().await;
    let v = V::V5;
    let cases: [(&str, Vec<u8>); 6] = [
        (
            "payload format indicator twice",
            v.publish(0x30, b"a", None, &[0x01, 0x00, 0x01, 0x00], b"x"),
        ),
        (
            "session expiry interval in PUBLISH",
            v.publish(0x30, b"a", None, &[0x11, 0, 0, 0, 1], b"x"),
        ),
        (
            "subscription identifier in PUBLISH from a client",
            v.publish(0x30, b"a", None, &[0x0B, 0x01], b"x"),
        ),
        (
            "empty topic without topic alias",
            v.publish(0x30, b"", None, &[], b"x"),
        ),
        (
            "unknown topic alias",
            v.publish(0x30, b"", None, &[0x23, 0, 1], b"x"),
        ),
        (
            "subscription identifier 0",
            packet(0x82, &[0, 1, 2, 0x0B, 0x00, 0, 1, b'a', 0]),
        ),
    ];
    for (what, bad) in cases {
        assert_rejected(&broker, &mut healthy, v, &bad, PROTOCOL_ERROR, what).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_setting_session_expiry_after_zero() {
    let (broker, mut healthy) = started().await;
    // CONNECT had no session expiry (0): a DISCONNECT must not set one.
    let bad = packet(0xE0, &[0x00, 5, 0x11, 0, 0, 0, 60]);
    let what = "DISCONNECT with session expiry after 0";
    assert_rejected(&broker, &mut healthy, V::V5, &bad, PROTOCOL_ERROR, what).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_packet_type_0() {
    let (broker, mut healthy) = started().await;
    for v in V::BOTH {
        let what = "packet type 0";
        assert_rejected(&broker, &mut healthy, v, &[0x00, 0x00], MALFORMED, what).await;
    }
}
