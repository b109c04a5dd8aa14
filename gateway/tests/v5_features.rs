//! MQTT 5.0 features end to end: forwarded publish properties (user properties in order with
//! duplicates, content type, response topic, correlation data, payload format indicator), message
//! expiry for queued messages, topic aliases in both directions, the client's maximum packet size
//! (CONNACK included),
//! assigned client identifiers, server keep alive, the advertised receive maximum, and
//! subscription identifiers.

mod clients;
mod common;
mod observe;

use std::time::Duration;

use bytes::Bytes;
use clients::raw::{self, Raw, V};
use clients::{unique_id, v5, WAIT};
use common::TestBroker;
use observe::{samples, total, Observed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_properties_are_forwarded() {
    let broker = TestBroker::start().await;
    let mut sub = v5::connect(broker.addr, &unique_id("sub")).await;
    sub.subscribe("props/t", v5::QoS::AtLeastOnce).await;
    let publ = v5::connect(broker.addr, &unique_id("pub")).await;
    let user = vec![
        ("b".to_owned(), "1".to_owned()),
        ("a".to_owned(), "2".to_owned()),
        ("b".to_owned(), "3".to_owned()),
        ("b".to_owned(), "1".to_owned()),
    ];
    let props = v5::PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        response_topic: Some("props/reply".into()),
        correlation_data: Some(Bytes::from_static(&[0, 1, 2, 0xFF])),
        user_properties: user.clone(),
        ..Default::default()
    };
    for qos in [
        v5::QoS::AtMostOnce,
        v5::QoS::AtLeastOnce,
        v5::QoS::ExactlyOnce,
    ] {
        publ.publish_with("props/t", qos, false, "{\"x\":1}", props.clone())
            .await;
        let p = sub.next_publish(WAIT).await;
        let got = p.properties.expect("forwarded properties");
        assert_eq!(
            got.user_properties, user,
            "user properties: order and duplicates kept ({qos:?})"
        );
        assert_eq!(got.content_type.as_deref(), Some("application/json"));
        assert_eq!(got.response_topic.as_deref(), Some("props/reply"));
        assert_eq!(
            got.correlation_data.as_deref(),
            Some(&[0u8, 1, 2, 0xFF][..])
        );
        assert_eq!(got.payload_format_indicator, Some(1));
        assert_eq!(got.message_expiry_interval, None, "no expiry was set");
        assert_eq!(&p.payload[..], b"{\"x\":1}");
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_messages_are_not_delivered_from_an_offline_queue() {
    let broker = TestBroker::start().await;
    let id = unique_id("expiry");
    let mut c = v5::Client::connect(v5::persistent(broker.addr, &id, 60)).await;
    c.subscribe("exp/t", v5::QoS::AtLeastOnce).await;
    c.disconnect().await;

    let mut publ = v5::connect(broker.addr, &unique_id("pub")).await;
    let with_expiry = |secs| v5::PublishProperties {
        message_expiry_interval: Some(secs),
        ..Default::default()
    };
    publ.publish_confirmed_with(
        "exp/t",
        v5::QoS::AtLeastOnce,
        false,
        "short",
        Some(with_expiry(1)),
    )
    .await;
    publ.publish_confirmed_with(
        "exp/t",
        v5::QoS::AtLeastOnce,
        false,
        "long",
        Some(with_expiry(60)),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut c = v5::Client::connect(v5::persistent(broker.addr, &id, 60)).await;
    assert!(c.connack.session_present);
    let p = c.next_publish(WAIT).await;
    assert_eq!(
        &p.payload[..],
        b"long",
        "a message whose 1 s expiry passed was delivered"
    );
    let left = p
        .properties
        .and_then(|p| p.message_expiry_interval)
        .expect("remaining message expiry forwarded");
    assert!(
        (1..=58).contains(&left),
        "remaining expiry after ~2 s of a 60 s expiry must be counted down (<= 58), got {left}"
    );
    c.expect_no_publish(Duration::from_millis(300)).await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alias_from_the_client_is_resolved() {
    let broker = TestBroker::start().await;
    let mut sub = v5::connect(broker.addr, &unique_id("sub")).await;
    sub.subscribe("alias/#", v5::QoS::AtLeastOnce).await;
    let publ = v5::connect(broker.addr, &unique_id("pub")).await;
    assert!(
        publ.connack
            .properties
            .as_ref()
            .and_then(|p| p.topic_alias_max)
            .unwrap_or(0)
            >= 3,
        "broker must advertise a topic alias maximum"
    );
    let alias = |a| v5::PublishProperties {
        topic_alias: Some(a),
        ..Default::default()
    };
    publ.publish_with(
        "alias/full/topic",
        v5::QoS::AtLeastOnce,
        false,
        "1",
        alias(3),
    )
    .await;
    publ.publish_with("", v5::QoS::AtLeastOnce, false, "2", alias(3))
        .await;
    // Re-map the alias to another topic, then use it again.
    publ.publish_with("alias/other", v5::QoS::AtMostOnce, false, "3", alias(3))
        .await;
    publ.publish_with("", v5::QoS::ExactlyOnce, false, "4", alias(3))
        .await;
    for (payload, topic) in [
        ("1", "alias/full/topic"),
        ("2", "alias/full/topic"),
        ("3", "alias/other"),
        ("4", "alias/other"),
    ] {
        let p = sub.next_publish(WAIT).await;
        assert_eq!(&p.payload[..], payload.as_bytes());
        assert_eq!(
            v5::topic_of(&p),
            topic,
            "subscriber must get the full topic"
        );
        let props = p.properties.unwrap_or_default();
        assert_eq!(
            props.topic_alias, None,
            "an inbound alias leaked to a client that allows none"
        );
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_aliases_towards_a_client_that_allows_them() {
    let broker = TestBroker::start().await;
    let mut o = v5::options(broker.addr, &unique_id("sub"));
    o.set_topic_alias_max(Some(5));
    let mut sub = v5::Client::connect(o).await;
    sub.subscribe("out/#", v5::QoS::AtLeastOnce).await;

    // A raw subscriber shows what is on the wire: the topic only with the first use of an alias.
    let rawsub_id = unique_id("rawsub");
    let mut connect = raw::Connect::v5(&rawsub_id, true, 0);
    connect.properties = vec![0x22, 0, 5];
    let (mut rawsub, _) = Raw::connect(broker.addr, &connect).await;
    rawsub.subscribe(V::V5, "out/#", 0).await;

    let publ = v5::connect(broker.addr, &unique_id("pub")).await;
    for i in 0..3u8 {
        publ.publish("out/long/topic/name", v5::QoS::AtLeastOnce, false, vec![i])
            .await;
    }
    let mut aliases = Vec::new();
    // rumqttc 0.25 hands the PUBLISH to the application before it resolves the alias (its
    // event is a copy taken first), so the topic is resolved here, as a client must.
    let mut known = std::collections::HashMap::new();
    for i in 0..3u8 {
        let p = sub.next_publish(WAIT).await;
        assert_eq!(&p.payload[..], &[i]);
        let alias = p.properties.clone().unwrap_or_default().topic_alias;
        assert!(
            matches!(alias, Some(1..=5)),
            "publish {i} carries no valid alias: {alias:?}"
        );
        let topic = v5::topic_of(&p);
        let resolved = if topic.is_empty() {
            known.get(&alias).cloned().unwrap_or_default()
        } else {
            known.insert(alias, topic.clone());
            topic
        };
        assert_eq!(
            resolved, "out/long/topic/name",
            "publish {i}: the alias resolves"
        );
        aliases.push(alias);
    }
    assert!(
        aliases.windows(2).all(|w| w[0] == w[1]),
        "one alias per topic: {aliases:?}"
    );

    let wire: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            let f = rawsub.expect_kind(raw::PUBLISH, WAIT).await;
            v.push(raw::publish_of(&f, V::V5).topic);
        }
        v
    };
    assert_eq!(
        wire,
        ["out/long/topic/name", "", ""],
        "topics on the wire with aliases"
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_above_the_client_maximum_packet_size_are_not_sent_to_it() {
    let broker = TestBroker::start().await;
    let mut o = v5::options(broker.addr, &unique_id("small"));
    o.set_max_packet_size(Some(100));
    let mut small = v5::Client::connect(o).await;
    small.subscribe("size/t", v5::QoS::AtLeastOnce).await;
    let mut big = v5::connect(broker.addr, &unique_id("big")).await;
    big.subscribe("size/t", v5::QoS::AtLeastOnce).await;

    let publ = v5::connect(broker.addr, &unique_id("pub")).await;
    publ.publish("size/t", v5::QoS::AtLeastOnce, false, vec![7u8; 500])
        .await;
    publ.publish("size/t", v5::QoS::AtLeastOnce, false, "ok")
        .await;
    // If the 500-byte packet were sent, rumqttc would fail the connection here.
    let p = small.next_publish(WAIT).await;
    assert_eq!(
        &p.payload[..],
        b"ok",
        "a packet above the client's maximum was sent"
    );
    small.expect_no_publish(Duration::from_millis(300)).await;
    // The oversized message was only skipped for that client.
    assert_eq!(big.next_publish(WAIT).await.payload.len(), 500);
    assert_eq!(&big.next_publish(WAIT).await.payload[..], b"ok");
    // Later small messages still flow to the limited client (its window was not leaked).
    for i in 0..40u8 {
        publ.publish("size/t", v5::QoS::AtLeastOnce, false, vec![7u8; 500])
            .await;
        publ.publish("size/t", v5::QoS::AtLeastOnce, false, vec![i])
            .await;
    }
    for i in 0..40u8 {
        assert_eq!(&small.next_publish(WAIT).await.payload[..], &[i]);
    }
    broker.shutdown().await;
}

/// The wire size of a packet read from the broker.
fn wire_len(f: &raw::Frame) -> usize {
    1 + raw::varint(f.body.len()).len() + f.body.len()
}

/// A v5 CONNECT (clean start, keep alive 60 s) with the client's Maximum Packet Size.
fn connect_with_max_packet(client_id: &str, max: u32) -> Vec<u8> {
    let mut c = raw::Connect::v5(client_id, true, 60);
    c.properties = raw::prop_u32(0x27, max);
    raw::encode_connect(&c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connack_keeps_to_the_client_maximum_packet_size() {
    // Found by the session fuzz target: CONNACK was written whole (37 bytes) to a client whose
    // Maximum Packet Size was 24 [MQTT-3.1.2-24].
    let obs = Observed::start(|c| c.mqtt.topic_alias_maximum = 10).await;
    let id = unique_id("small");

    // The whole CONNACK, for a client without a limit, carries a Topic Alias Maximum.
    let mut full = Raw::open_with(obs.mqtt, &V::V5.connect(&id)).await;
    let ack = full.expect_packet("CONNACK").await;
    assert_eq!((ack.first, ack.body[1]), (raw::CONNACK, 0), "{ack:?}");
    let whole = wire_len(&ack);
    drop(full);

    // One byte less: the Topic Alias Maximum is left out, and aliases are then refused.
    let mut trimmed =
        Raw::open_with(obs.mqtt, &connect_with_max_packet(&id, whole as u32 - 1)).await;
    let ack = trimmed.expect_packet("CONNACK").await;
    assert_eq!((ack.first, ack.body[1]), (raw::CONNACK, 0), "{ack:?}");
    assert!(
        wire_len(&ack) < whole,
        "a {}-byte CONNACK to a client whose maximum is {}",
        wire_len(&ack),
        whole - 1
    );
    let alias = [0x23, 0, 1];
    trimmed
        .send(&V::V5.publish(0x30, b"a/b", None, &alias, b"x"))
        .await;
    trimmed
        .expect_disconnect(0x94, "a topic alias the CONNACK did not offer")
        .await;

    // An assigned client identifier cannot be left out [MQTT-3.2.2-16]: refused with the bare
    // CONNACK 0x95 (5 bytes) where it fits, closed without one where even that does not.
    let mut assigned = Raw::open_with(obs.mqtt, &connect_with_max_packet("", 24)).await;
    let ack = assigned.expect_packet("CONNACK").await;
    assert_eq!(
        ack,
        raw::Frame {
            first: raw::CONNACK,
            body: vec![0, 0x95, 0]
        }
    );
    assigned
        .expect_closed("refused for its CONNACK's size")
        .await;
    let mut tiny = Raw::open_with(obs.mqtt, &connect_with_max_packet(&id, 4)).await;
    tiny.expect_closed("no CONNACK fits 4 bytes").await;

    let s = samples(&obs.metrics().await);
    assert_eq!(
        total(
            &s,
            "gateway_connections_rejected_total",
            &["\"connack_too_large\""]
        ),
        2.0
    );
    obs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_client_id_gets_an_assigned_identifier() {
    let broker = TestBroker::start().await;
    let mut c = v5::connect(broker.addr, "").await;
    let assigned = c
        .connack
        .properties
        .as_ref()
        .and_then(|p| p.assigned_client_identifier.clone())
        .expect("CONNACK must carry an assigned client identifier");
    assert!(!assigned.is_empty());
    let other = v5::connect(broker.addr, "").await;
    let assigned2 = other
        .connack
        .properties
        .as_ref()
        .and_then(|p| p.assigned_client_identifier.clone())
        .expect("assigned client identifier");
    assert_ne!(assigned, assigned2, "assigned identifiers must be unique");
    // The session works.
    c.subscribe("assigned/t", v5::QoS::AtLeastOnce).await;
    other
        .publish("assigned/t", v5::QoS::AtLeastOnce, false, "hi")
        .await;
    assert_eq!(&c.next_publish(WAIT).await.payload[..], b"hi");
    // A named client gets none.
    let named = v5::connect(broker.addr, &unique_id("named")).await;
    let none = named
        .connack
        .properties
        .clone()
        .and_then(|p| p.assigned_client_identifier);
    assert_eq!(none, None);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_keep_alive_caps_the_requested_keep_alive() {
    let broker = TestBroker::with(|cfg| cfg.mqtt.max_keepalive = 10).await;
    let mut o = v5::options(broker.addr, &unique_id("ka100"));
    o.set_keep_alive(Duration::from_secs(100));
    let c = v5::Client::connect(o).await;
    let ska = c
        .connack
        .properties
        .as_ref()
        .and_then(|p| p.server_keep_alive);
    assert_eq!(
        ska,
        Some(10),
        "CONNACK server keep alive for a request of 100 s with max 10"
    );

    let mut o = v5::options(broker.addr, &unique_id("ka5"));
    o.set_keep_alive(Duration::from_secs(5));
    let c = v5::Client::connect(o).await;
    let ska = c
        .connack
        .properties
        .as_ref()
        .and_then(|p| p.server_keep_alive);
    assert_eq!(
        ska, None,
        "no server keep alive when the request is within the maximum"
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_maximum_is_advertised_from_the_config() {
    let broker = TestBroker::with(|cfg| cfg.mqtt.receive_maximum = 17).await;
    let c = v5::connect(broker.addr, &unique_id("rm")).await;
    let props = c.connack.properties.clone().expect("CONNACK properties");
    assert_eq!(props.receive_max, Some(17));
    assert_eq!(
        props.max_packet_size,
        Some(1_048_576),
        "maximum packet size advertised"
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_identifiers_are_sent_with_matching_publishes() {
    let broker = TestBroker::start().await;
    let mut sub = v5::connect(broker.addr, &unique_id("sid")).await;
    sub.subscribe_with(v5::Filter::new("sid/+", v5::QoS::AtLeastOnce), Some(7))
        .await;
    sub.subscribe_with(v5::Filter::new("plain/#", v5::QoS::AtLeastOnce), None)
        .await;
    let mut publ = v5::connect(broker.addr, &unique_id("pub")).await;

    publ.publish_confirmed("sid/a", v5::QoS::AtLeastOnce, false, "a")
        .await;
    let p = sub.next_publish(WAIT).await;
    assert_eq!(
        p.properties.unwrap_or_default().subscription_identifiers,
        [7]
    );

    publ.publish_confirmed("plain/x", v5::QoS::AtLeastOnce, false, "x")
        .await;
    let p = sub.next_publish(WAIT).await;
    assert!(
        p.properties
            .unwrap_or_default()
            .subscription_identifiers
            .is_empty(),
        "a subscription without identifier must not get one"
    );

    // Re-subscribing replaces the identifier.
    sub.subscribe_with(
        v5::Filter::new("sid/+", v5::QoS::AtLeastOnce),
        Some(268_435_455),
    )
    .await;
    publ.publish_confirmed("sid/b", v5::QoS::AtLeastOnce, false, "b")
        .await;
    let p = sub.next_publish(WAIT).await;
    assert_eq!(
        p.properties.unwrap_or_default().subscription_identifiers,
        [268_435_455],
        "the largest identifier, replacing the old one"
    );

    // Retained messages sent on subscribe carry the new subscription's identifier too.
    publ.publish_confirmed("ret/sid", v5::QoS::AtLeastOnce, true, "r")
        .await;
    sub.subscribe_with(v5::Filter::new("ret/#", v5::QoS::AtLeastOnce), Some(42))
        .await;
    let p = sub.next_publish(WAIT).await;
    assert!(p.retain);
    assert_eq!(
        p.properties.unwrap_or_default().subscription_identifiers,
        [42]
    );
    broker.shutdown().await;
}

/// An outbound topic alias is made known only with a message that is written: one too large
/// for the client's Maximum Packet Size (dropped) must not register it, or the next message on
/// that topic would go out as an alias the client never learned (issue 18, item 4).
#[tokio::test]
async fn a_message_dropped_as_too_large_does_not_register_a_topic_alias() {
    let broker = TestBroker::start().await;
    let id = unique_id("alias-sub");
    let mut connect = raw::Connect::v5(&id, true, 60);
    // Topic Alias Maximum 10, Maximum Packet Size 200.
    connect.properties = [vec![0x22, 0, 10], raw::prop_u32(0x27, 200)].concat();
    let (mut sub, _) = Raw::connect(broker.addr, &connect).await;
    sub.subscribe(V::V5, "alias/#", 0).await;
    let mut p = Raw::connected(broker.addr, V::V5, &unique_id("alias-pub")).await;
    p.send(&V::V5.publish(raw::PUBLISH, b"alias/t", None, &[], &[b'x'; 500]))
        .await;
    p.send(&V::V5.publish(raw::PUBLISH, b"alias/t", None, &[], b"small"))
        .await;
    let f = sub.expect_packet("the small message").await;
    let got = raw::publish_of(&f, V::V5);
    assert_eq!(got.payload, b"small");
    assert_eq!(
        got.topic, "alias/t",
        "the topic with its first alias, not a bare alias"
    );
}
