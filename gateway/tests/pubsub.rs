//! Publish/subscribe delivery through the broker: QoS 0, 1 and 2 end to end for 3.1.1 and 5.0
//! clients and across the two protocol versions, `+` and `#` wildcards, `$`-topics kept away from
//! wildcards, one copy for overlapping subscriptions (highest QoS; v5: every subscription
//! identifier), v5 No Local, QoS downgrade to the subscription's QoS, and ordered lossless delivery
//! of a long QoS 1 stream.

mod clients;
mod common;

use std::time::{Duration, Instant};

use clients::raw::{self, Raw, V};
use clients::{unique_id, v3, v5, WAIT};
use common::TestBroker;

const QOS3: [v3::QoS; 3] = [
    v3::QoS::AtMostOnce,
    v3::QoS::AtLeastOnce,
    v3::QoS::ExactlyOnce,
];
const QOS5: [v5::QoS; 3] = [
    v5::QoS::AtMostOnce,
    v5::QoS::AtLeastOnce,
    v5::QoS::ExactlyOnce,
];

fn q3(q: u8) -> v3::QoS {
    QOS3[usize::from(q)]
}

fn q5(q: u8) -> v5::QoS {
    QOS5[usize::from(q)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_0_1_2_between_311_clients() {
    let broker = TestBroker::start().await;
    let mut sub = v3::connect(broker.addr, &unique_id("sub")).await;
    sub.subscribe("e2e/311", v3::QoS::ExactlyOnce).await;
    let mut publ = v3::connect(broker.addr, &unique_id("pub")).await;
    for q in 0..3u8 {
        publ.publish("e2e/311", q3(q), false, format!("qos{q}"))
            .await;
        let p = sub.next_publish(WAIT).await;
        assert_eq!(p.topic, "e2e/311");
        assert_eq!(p.qos, q3(q), "delivered QoS for a QoS {q} publish");
        assert_eq!(&p.payload[..], format!("qos{q}").as_bytes());
        assert!(!p.retain);
    }
    // The publisher's own QoS 1/2 flows complete as well.
    publ.publish_confirmed("e2e/311", v3::QoS::ExactlyOnce, false, "last")
        .await;
    assert_eq!(&sub.next_publish(WAIT).await.payload[..], b"last");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_0_1_2_between_v5_clients() {
    let broker = TestBroker::start().await;
    let mut sub = v5::connect(broker.addr, &unique_id("sub")).await;
    sub.subscribe("e2e/v5", v5::QoS::ExactlyOnce).await;
    let mut publ = v5::connect(broker.addr, &unique_id("pub")).await;
    for q in 0..3u8 {
        publ.publish("e2e/v5", q5(q), false, format!("qos{q}"))
            .await;
        let p = sub.next_publish(WAIT).await;
        assert_eq!(v5::topic_of(&p), "e2e/v5");
        assert_eq!(p.qos, q5(q), "delivered QoS for a QoS {q} publish");
        assert_eq!(&p.payload[..], format!("qos{q}").as_bytes());
    }
    publ.publish_confirmed("e2e/v5", v5::QoS::ExactlyOnce, false, "last")
        .await;
    assert_eq!(&sub.next_publish(WAIT).await.payload[..], b"last");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_311_publisher_to_v5_subscriber() {
    let broker = TestBroker::start().await;
    let mut sub = v5::connect(broker.addr, &unique_id("sub5")).await;
    sub.subscribe("mixed/+/up", v5::QoS::ExactlyOnce).await;
    let publ = v3::connect(broker.addr, &unique_id("pub3")).await;
    for q in 0..3u8 {
        publ.publish("mixed/a/up", q3(q), false, vec![q; 3]).await;
        let p = sub.next_publish(WAIT).await;
        assert_eq!(v5::topic_of(&p), "mixed/a/up");
        assert_eq!(p.qos, q5(q));
        assert_eq!(&p.payload[..], &[q; 3]);
        // A 3.1.1 publisher sets no properties, so none may appear beyond what the broker adds.
        let props = p.properties.unwrap_or_default();
        assert!(props.user_properties.is_empty() && props.content_type.is_none());
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_v5_publisher_to_311_subscriber() {
    let broker = TestBroker::start().await;
    let mut sub = v3::connect(broker.addr, &unique_id("sub3")).await;
    sub.subscribe("mixed/+/down", v3::QoS::ExactlyOnce).await;
    let publ = v5::connect(broker.addr, &unique_id("pub5")).await;
    for q in 0..3u8 {
        // Properties on the v5 side must not leak into the 3.1.1 encoding.
        let props = v5::PublishProperties {
            user_properties: vec![("k".into(), "v".into())],
            content_type: Some("text/plain".into()),
            message_expiry_interval: Some(60),
            ..Default::default()
        };
        publ.publish_with("mixed/b/down", q5(q), false, vec![q; 4], props)
            .await;
        let p = sub.next_publish(WAIT).await;
        assert_eq!(p.topic, "mixed/b/down");
        assert_eq!(p.qos, q3(q));
        assert_eq!(&p.payload[..], &[q; 4]);
    }
    broker.shutdown().await;
}

/// Receives publishes until one with payload `end`; returns the topics before it.
async fn topics_until_end_v3(c: &mut v3::Client) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let p = c.next_publish(WAIT).await;
        if &p.payload[..] == b"end" {
            return seen;
        }
        seen.push(p.topic.clone());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plus_and_hash_wildcards() {
    let broker = TestBroker::start().await;
    let mut plus = v3::connect(broker.addr, &unique_id("plus")).await;
    plus.subscribe("sport/+/score", v3::QoS::AtLeastOnce).await;
    let mut hash = v3::connect(broker.addr, &unique_id("hash")).await;
    hash.subscribe("sport/#", v3::QoS::AtLeastOnce).await;
    let mut mid = v3::connect(broker.addr, &unique_id("mid")).await;
    mid.subscribe("+/+/+", v3::QoS::AtLeastOnce).await;

    let publ = v3::connect(broker.addr, &unique_id("pub")).await;
    for t in [
        "sport/tennis/score",
        "sport/tennis/player/score",
        "sport",
        "sport/",
        "sportx/tennis/score",
        "sport/tennis",
        "other/a/b",
    ] {
        publ.publish(t, v3::QoS::AtLeastOnce, false, t).await;
    }
    // Matched by all three; everything before it in one publisher's stream arrives in order.
    publ.publish("sport/end/score", v3::QoS::AtLeastOnce, false, "end")
        .await;

    assert_eq!(topics_until_end_v3(&mut plus).await, ["sport/tennis/score"]);
    assert_eq!(
        topics_until_end_v3(&mut hash).await,
        [
            "sport/tennis/score",
            "sport/tennis/player/score",
            "sport",
            "sport/",
            "sport/tennis"
        ]
    );
    assert_eq!(
        topics_until_end_v3(&mut mid).await,
        ["sport/tennis/score", "sportx/tennis/score", "other/a/b"]
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dollar_topics_are_not_matched_by_leading_wildcards() {
    let broker = TestBroker::start().await;
    let mut hash = v3::connect(broker.addr, &unique_id("hash")).await;
    hash.subscribe("#", v3::QoS::AtLeastOnce).await;
    let mut plus = v3::connect(broker.addr, &unique_id("plus")).await;
    plus.subscribe("+/x", v3::QoS::AtLeastOnce).await;
    let mut explicit = v3::connect(broker.addr, &unique_id("explicit")).await;
    // `$SYS/` itself is the broker's own and not writable by clients (see `acl.rs`).
    explicit.subscribe("$dev/#", v3::QoS::AtLeastOnce).await;
    explicit.subscribe("$app/+", v3::QoS::AtLeastOnce).await;

    let publ = v3::connect(broker.addr, &unique_id("pub")).await;
    publ.publish("$dev/x", v3::QoS::AtLeastOnce, false, "dev")
        .await;
    publ.publish("$app/x", v3::QoS::AtLeastOnce, false, "app")
        .await;
    publ.publish("s/x", v3::QoS::AtLeastOnce, false, "end")
        .await;

    assert_eq!(
        topics_until_end_v3(&mut hash).await,
        Vec::<String>::new(),
        "`#` matched a $ topic"
    );
    assert_eq!(
        topics_until_end_v3(&mut plus).await,
        Vec::<String>::new(),
        "`+/x` matched a $ topic"
    );
    // They were published: a filter naming the $ level explicitly gets them.
    let got: Vec<String> = [
        explicit.next_publish(WAIT).await,
        explicit.next_publish(WAIT).await,
    ]
    .iter()
    .map(|p| p.topic.clone())
    .collect();
    assert_eq!(got, ["$dev/x", "$app/x"]);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_subscriptions_deliver_one_copy_at_the_highest_qos_311() {
    let broker = TestBroker::start().await;
    let mut sub = v3::connect(broker.addr, &unique_id("sub")).await;
    sub.subscribe("ov/#", v3::QoS::AtMostOnce).await;
    sub.subscribe("ov/+", v3::QoS::ExactlyOnce).await;
    sub.subscribe("ov/a", v3::QoS::AtLeastOnce).await;

    let publ = v3::connect(broker.addr, &unique_id("pub")).await;
    publ.publish("ov/a", v3::QoS::ExactlyOnce, false, "two")
        .await;
    publ.publish("ov/a", v3::QoS::AtLeastOnce, false, "one")
        .await;
    publ.publish("ov/a/b", v3::QoS::ExactlyOnce, false, "deep")
        .await;
    publ.publish("ov/z", v3::QoS::AtMostOnce, false, "end")
        .await;

    let mut got = Vec::new();
    loop {
        let p = sub.next_publish(WAIT).await;
        let done = &p.payload[..] == b"end";
        got.push((String::from_utf8_lossy(&p.payload).into_owned(), p.qos));
        if done {
            break;
        }
    }
    assert_eq!(
        got,
        [
            ("two".to_owned(), v3::QoS::ExactlyOnce),
            ("one".to_owned(), v3::QoS::AtLeastOnce),
            // Only `ov/#` (QoS 0) matches a deeper topic.
            ("deep".to_owned(), v3::QoS::AtMostOnce),
            ("end".to_owned(), v3::QoS::AtMostOnce),
        ],
        "one copy per message, at min(publish QoS, highest matching subscription QoS)"
    );
    sub.expect_no_publish(Duration::from_millis(300)).await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_subscriptions_v5_one_copy_with_every_subscription_identifier() {
    let broker = TestBroker::start().await;
    let mut sub = v5::connect(broker.addr, &unique_id("sub")).await;
    sub.subscribe_with(v5::Filter::new("ids/#", v5::QoS::AtMostOnce), Some(1))
        .await;
    sub.subscribe_with(v5::Filter::new("ids/+", v5::QoS::AtLeastOnce), Some(22))
        .await;
    sub.subscribe_with(v5::Filter::new("ids/a", v5::QoS::AtMostOnce), None)
        .await;
    sub.subscribe_with(v5::Filter::new("ids/a/#", v5::QoS::AtMostOnce), Some(333))
        .await;

    let publ = v5::connect(broker.addr, &unique_id("pub")).await;
    publ.publish("ids/a", v5::QoS::AtLeastOnce, false, "a")
        .await;
    publ.publish("ids/b/c", v5::QoS::AtLeastOnce, false, "end")
        .await;

    let p = sub.next_publish(WAIT).await;
    assert_eq!(&p.payload[..], b"a");
    assert_eq!(
        p.qos,
        v5::QoS::AtLeastOnce,
        "highest matching subscription QoS"
    );
    let mut ids = p.properties.unwrap_or_default().subscription_identifiers;
    ids.sort_unstable();
    assert_eq!(
        ids,
        [1, 22, 333],
        "every matching subscription's identifier"
    );

    let p = sub.next_publish(WAIT).await;
    assert_eq!(
        &p.payload[..],
        b"end",
        "a second copy of the first message arrived"
    );
    assert_eq!(p.qos, v5::QoS::AtMostOnce);
    assert_eq!(
        p.properties.unwrap_or_default().subscription_identifiers,
        [1]
    );
    sub.expect_no_publish(Duration::from_millis(300)).await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_local_suppresses_only_own_messages() {
    let broker = TestBroker::start().await;
    let mut me = v5::connect(broker.addr, &unique_id("me")).await;
    let mut filter = v5::Filter::new("chat/room", v5::QoS::AtLeastOnce);
    filter.nolocal = true;
    me.subscribe_with(filter, None).await;
    // Another subscriber without No Local sees everything.
    let mut watcher = v5::connect(broker.addr, &unique_id("watcher")).await;
    watcher.subscribe("chat/room", v5::QoS::AtLeastOnce).await;

    // Confirmed: routed before the other client publishes.
    me.publish_confirmed("chat/room", v5::QoS::AtLeastOnce, false, "mine")
        .await;
    let mut other = v5::connect(broker.addr, &unique_id("other")).await;
    other
        .publish_confirmed("chat/room", v5::QoS::AtLeastOnce, false, "theirs")
        .await;

    let p = me.next_publish(WAIT).await;
    assert_eq!(
        &p.payload[..],
        b"theirs",
        "No Local subscriber got its own message"
    );
    me.expect_no_publish(Duration::from_millis(300)).await;
    assert_eq!(&watcher.next_publish(WAIT).await.payload[..], b"mine");
    assert_eq!(&watcher.next_publish(WAIT).await.payload[..], b"theirs");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_qos_is_downgraded_to_the_subscription_qos() {
    let broker = TestBroker::start().await;
    let mut subs3 = Vec::new();
    let mut subs5 = Vec::new();
    for q in 0..3u8 {
        let mut s = v3::connect(broker.addr, &unique_id("sub3")).await;
        s.subscribe("down/grade", q3(q)).await;
        subs3.push(s);
        let mut s = v5::connect(broker.addr, &unique_id("sub5")).await;
        s.subscribe("down/grade", q5(q)).await;
        subs5.push(s);
    }
    let publ = v3::connect(broker.addr, &unique_id("pub")).await;
    for pq in 0..3u8 {
        publ.publish("down/grade", q3(pq), false, vec![pq]).await;
        for sq in 0..3u8 {
            let expected = pq.min(sq);
            let p = subs3[usize::from(sq)].next_publish(WAIT).await;
            assert_eq!(&p.payload[..], &[pq]);
            assert_eq!(
                p.qos,
                q3(expected),
                "3.1.1: publish QoS {pq}, subscription QoS {sq}"
            );
            let p = subs5[usize::from(sq)].next_publish(WAIT).await;
            assert_eq!(&p.payload[..], &[pq]);
            assert_eq!(
                p.qos,
                q5(expected),
                "5.0: publish QoS {pq}, subscription QoS {sq}"
            );
        }
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_qos1_messages_arrive_in_order_without_loss_or_duplicates() {
    const N: u32 = 1000;
    let broker = TestBroker::start().await;
    let mut sub3 = v3::connect(broker.addr, &unique_id("sub3")).await;
    sub3.subscribe("seq/stream", v3::QoS::AtLeastOnce).await;
    let mut sub5 = v5::connect(broker.addr, &unique_id("sub5")).await;
    sub5.subscribe("seq/stream", v5::QoS::AtLeastOnce).await;

    let publ = v3::connect(broker.addr, &unique_id("pub")).await;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            publ.publish(
                "seq/stream",
                v3::QoS::AtLeastOnce,
                false,
                i.to_be_bytes().to_vec(),
            )
            .await;
        }
        publ
    });
    let deadline = Duration::from_secs(60);
    let got3 = clients::within(deadline, "1000 messages (3.1.1 subscriber)", async {
        let mut got = Vec::with_capacity(N as usize);
        for _ in 0..N {
            let p = sub3.next_publish(WAIT).await;
            assert_eq!(p.qos, v3::QoS::AtLeastOnce);
            got.push(u32::from_be_bytes(
                p.payload[..].try_into().expect("4-byte payload"),
            ));
        }
        got
    })
    .await;
    let got5 = clients::within(deadline, "1000 messages (5.0 subscriber)", async {
        let mut got = Vec::with_capacity(N as usize);
        for _ in 0..N {
            let p = sub5.next_publish(WAIT).await;
            got.push(u32::from_be_bytes(
                p.payload[..].try_into().expect("4-byte payload"),
            ));
        }
        got
    })
    .await;
    let _publ = sender.await.expect("publisher task");
    let expected: Vec<u32> = (0..N).collect();
    for (name, got) in [("3.1.1", &got3), ("5.0", &got5)] {
        if *got != expected {
            let first_bad = got.iter().zip(&expected).position(|(a, b)| a != b);
            panic!("{name} subscriber: sequence differs from 0..{N} first at index {first_bad:?}");
        }
    }
    sub3.expect_no_publish(Duration::from_millis(300)).await;
    sub5.expect_no_publish(Duration::from_millis(100)).await;
    broker.shutdown().await;
}

/// A burst bigger than one fill batch (256) queued at once must be delivered completely, with no
/// later event to wake the receiver's task (regression: it stopped after one batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos0_burst_queued_at_once_is_delivered_completely() {
    const N: u32 = 900;
    let broker = TestBroker::start().await;
    let mut sub = v3::connect(broker.addr, &unique_id("sub")).await;
    sub.subscribe("burst/t", v3::QoS::AtMostOnce).await;
    let (mut publ, _) = Raw::connect(
        broker.addr,
        &raw::Connect::v311(&unique_id("burst"), true, 0),
    )
    .await;
    let mut burst = Vec::new();
    for i in 0..N {
        burst.extend_from_slice(&V::V311.publish(0x30, b"burst/t", None, &[], &i.to_be_bytes()));
    }
    publ.send(&burst).await;
    for i in 0..N {
        let Some(p) = sub.try_next_publish(WAIT).await else {
            panic!("delivery stalled after {i} of {N} QoS 0 messages");
        };
        assert_eq!(&p.payload[..], &i.to_be_bytes());
    }
    broker.shutdown().await;
}

/// A client need not wait for CONNACK: CONNECT, a QoS 1 PUBLISH, a SUBSCRIBE, a PINGREQ and a
/// DISCONNECT written in one segment are all processed, in order: PUBACK, SUBACK and PINGRESP
/// come back after CONNACK, the message reaches a subscriber, and the will is discarded because
/// the client left cleanly (Mosquitto does the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_pipelined_after_connect_are_processed_in_order() {
    let broker = TestBroker::start().await;
    for v in V::BOTH {
        let id = unique_id("pipelined");
        let mut watcher = Raw::connected(broker.addr, v, &unique_id("pipe-watch")).await;
        watcher.subscribe(v, "pipe/#", 1).await;

        let mut connect = raw::Connect::plain(v, &id);
        connect.will = Some(raw::Will::qos1("pipe/will", b"gone"));
        let mut burst = raw::encode_connect(&connect);
        burst.extend(v.publish(0x32, b"pipe/data", Some(7), &[], b"hello"));
        burst.extend(v.subscribe("pipe/echo", 1));
        burst.extend(raw::encode_pingreq());
        burst.extend(raw::encode_disconnect(v.is_v5().then_some(0)));
        let mut client = Raw::open_with(broker.addr, &burst).await;

        let mut kinds = Vec::new();
        while let Ok(f) = client.read_packet().await {
            kinds.push(f.kind());
        }
        assert_eq!(
            kinds,
            [raw::CONNACK, raw::PUBACK, raw::SUBACK, raw::PINGRESP],
            "{v:?}: every packet of the burst answered, in order, then closed"
        );
        let got = raw::publish_of(&watcher.expect_kind(raw::PUBLISH, WAIT).await, v);
        assert_eq!(
            (&got.topic[..], &got.payload[..]),
            ("pipe/data", &b"hello"[..]),
            "{v:?}"
        );
        assert!(
            watcher
                .read_packet_within(Duration::from_millis(300))
                .await
                .is_err(),
            "{v:?}: no will after a DISCONNECT in the same burst"
        );
    }
    broker.shutdown().await;
}

/// Issue 18, item 10: a client subscribes, and another, already active, publishes to that topic
/// right after the SUBSCRIBE left (Paho's `test_subscribe_options` does, without waiting for the
/// SUBACK). Nothing in MQTT orders two connections, but a broker that handles packets in the
/// order they reached it delivers the message, as Mosquitto does. When both sockets' events came
/// in one turn of tokio's reactor, the publisher's task ran first (the scheduler's LIFO slot)
/// and the message missed the subscription about half the time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_right_after_another_clients_subscribe_reaches_it() {
    const TRIALS: usize = 40;
    // The broker on a runtime of its own, as in its process: the test's clients, on the test's
    // runtime, must not share its workers' queues.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("broker runtime");
        runtime.block_on(async move {
            let broker = TestBroker::start().await;
            addr_tx.send(broker.addr).expect("address sent");
            let _ = stopped.await;
            broker.shutdown().await;
        });
    });
    let addr = addr_rx.recv().expect("broker address");
    let mut publ = Raw::connected(addr, V::V311, "order-publisher").await;
    publ.ping().await;
    let mut missed = Vec::new();
    let mut subacks = Vec::new();
    for trial in 0..TRIALS {
        let topic = format!("order/{trial}");
        let mut sub = Raw::connected(addr, V::V311, &format!("order-sub-{trial}")).await;
        let sent = Instant::now();
        sub.send(&V::V311.subscribe(&topic, 0)).await;
        publ.send(&V::V311.publish(0x30, topic.as_bytes(), None, &[], b"m"))
            .await;
        let ack = sub.expect_kind(raw::SUBACK, WAIT).await;
        subacks.push(sent.elapsed());
        assert_eq!(ack.body.last(), Some(&0), "granted");
        match sub.read_packet_within(Duration::from_millis(200)).await {
            Ok(f) if f.kind() == raw::PUBLISH => {}
            other => missed.push((trial, other)),
        }
    }
    subacks.sort();
    println!(
        "SUBSCRIBE to SUBACK: median {:?}, slowest {:?}; {} of {TRIALS} messages published \
         right after it missed",
        subacks[TRIALS / 2],
        subacks[TRIALS - 1],
        missed.len()
    );
    // Two workers still handle two connections at once: in a debug build a SUBSCRIBE takes long
    // enough that the other worker routes the message first now and then (a release build
    // missed 0 and 1 of 200 with scripts/first_packet.py); before, about half were missed.
    assert!(missed.len() <= TRIALS / 10, "missed: {missed:?}");
    let _ = stop.send(());
    server.join().expect("broker thread");
}
