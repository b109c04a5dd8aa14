//! Session state that outlives a connection: persistent sessions (3.1.1 clean_session=0, v5
//! clean_start=0 with a session expiry) keep subscriptions and queue QoS 1 messages while offline;
//! clean start discards them; a v5 session expiry that elapses ends the session; takeover by a second
//! connection with the same client id (v5 DISCONNECT 0x8E to the first) loses nothing, does not
//! wait for the old client to close its socket, and one whose client already left takes nothing
//! over; the offline
//! queue is bounded by `max_queued_messages` and `max_queued_bytes`; unacknowledged messages are resent with DUP on resume.

mod clients;
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use clients::raw::{self, Raw, V};
use clients::{unique_id, v3, v5, within, QUIET, WAIT};
use common::TestBroker;

const SESSION_TAKEN_OVER: u8 = 0x8E;

fn seq_of(payload: &[u8]) -> u32 {
    u32::from_be_bytes(payload.try_into().expect("4-byte sequence payload"))
}

fn persistent_v3(addr: std::net::SocketAddr, id: &str) -> v3::MqttOptions {
    let mut o = v3::options(addr, id);
    o.set_clean_session(false);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_311_session_queues_qos1_while_offline() {
    let broker = TestBroker::start().await;
    let id = unique_id("ps3");
    let mut c = v3::Client::connect(persistent_v3(broker.addr, &id)).await;
    assert!(!c.connack.session_present, "a new session is not present");
    c.subscribe("ps3/t", v3::QoS::AtLeastOnce).await;
    c.disconnect().await;

    let mut publ = v3::connect(broker.addr, &unique_id("pub")).await;
    for i in 0..100u32 {
        publ.publish_confirmed(
            "ps3/t",
            v3::QoS::AtLeastOnce,
            false,
            i.to_be_bytes().to_vec(),
        )
        .await;
    }

    let mut c = v3::Client::connect(persistent_v3(broker.addr, &id)).await;
    assert!(
        c.connack.session_present,
        "CONNACK session present after resuming"
    );
    for i in 0..100u32 {
        let p = c.next_publish(WAIT).await;
        assert_eq!(seq_of(&p.payload), i, "queued message order");
        assert_eq!(p.qos, v3::QoS::AtLeastOnce);
    }
    c.expect_no_publish(Duration::from_millis(300)).await;
    // The subscription itself survived too: live messages still arrive.
    publ.publish(
        "ps3/t",
        v3::QoS::AtLeastOnce,
        false,
        1000u32.to_be_bytes().to_vec(),
    )
    .await;
    assert_eq!(seq_of(&c.next_publish(WAIT).await.payload), 1000);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_v5_session_queues_qos1_while_offline() {
    let broker = TestBroker::start().await;
    let id = unique_id("ps5");
    let mut c = v5::Client::connect(v5::persistent(broker.addr, &id, 60)).await;
    assert!(!c.connack.session_present);
    c.subscribe("ps5/t", v5::QoS::AtLeastOnce).await;
    c.disconnect().await;

    let mut publ = v5::connect(broker.addr, &unique_id("pub")).await;
    for i in 0..100u32 {
        publ.publish_confirmed(
            "ps5/t",
            v5::QoS::AtLeastOnce,
            false,
            i.to_be_bytes().to_vec(),
        )
        .await;
    }

    let mut c = v5::Client::connect(v5::persistent(broker.addr, &id, 60)).await;
    assert!(
        c.connack.session_present,
        "CONNACK session present after resuming"
    );
    for i in 0..100u32 {
        let p = c.next_publish(WAIT).await;
        assert_eq!(seq_of(&p.payload), i, "queued message order");
    }
    c.expect_no_publish(Duration::from_millis(300)).await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_start_discards_subscriptions_and_queued_messages() {
    let broker = TestBroker::start().await;
    let id = unique_id("clean");
    let mut c = v5::Client::connect(v5::persistent(broker.addr, &id, 60)).await;
    c.subscribe("clean/old", v5::QoS::AtLeastOnce).await;
    c.disconnect().await;
    let mut publ = v5::connect(broker.addr, &unique_id("pub")).await;
    publ.publish_confirmed("clean/old", v5::QoS::AtLeastOnce, false, "queued")
        .await;

    // clean start, keeping a session afterwards.
    let mut o = v5::persistent(broker.addr, &id, 60);
    o.set_clean_start(true);
    let mut c = v5::Client::connect(o).await;
    assert!(
        !c.connack.session_present,
        "clean start must not report a present session"
    );
    c.subscribe("clean/new", v5::QoS::AtLeastOnce).await;
    publ.publish_confirmed("clean/old", v5::QoS::AtLeastOnce, false, "live-old")
        .await;
    publ.publish_confirmed("clean/new", v5::QoS::AtLeastOnce, false, "end")
        .await;
    let p = c.next_publish(WAIT).await;
    assert_eq!(
        &p.payload[..],
        b"end",
        "the discarded session's queue or subscription still delivered"
    );

    // Same for 3.1.1: clean_session=1 after a persistent session.
    let id3 = unique_id("clean3");
    let mut c3 = v3::Client::connect(persistent_v3(broker.addr, &id3)).await;
    c3.subscribe("clean3/old", v3::QoS::AtLeastOnce).await;
    c3.disconnect().await;
    publ.publish_confirmed("clean3/old", v5::QoS::AtLeastOnce, false, "queued")
        .await;
    let mut c3 = v3::connect(broker.addr, &id3).await;
    assert!(!c3.connack.session_present);
    c3.subscribe("clean3/new", v3::QoS::AtLeastOnce).await;
    publ.publish_confirmed("clean3/new", v5::QoS::AtLeastOnce, false, "end")
        .await;
    assert_eq!(&c3.next_publish(WAIT).await.payload[..], b"end");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_ends_when_its_expiry_elapses() {
    let broker = TestBroker::start().await;
    let short = unique_id("exp1");
    let long = unique_id("exp60");
    for (id, expiry) in [(&short, 1), (&long, 60)] {
        let mut c = v5::Client::connect(v5::persistent(broker.addr, id, expiry)).await;
        c.subscribe("exp/t", v5::QoS::AtLeastOnce).await;
        c.disconnect().await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let c = v5::Client::connect(v5::persistent(broker.addr, &short, 1)).await;
    assert!(
        !c.connack.session_present,
        "session with expiry 1 s still present after 2 s"
    );
    let c2 = v5::Client::connect(v5::persistent(broker.addr, &long, 60)).await;
    assert!(
        c2.connack.session_present,
        "session with expiry 60 s lost after 2 s"
    );
    broker.shutdown().await;
}

/// The first connection is a raw v5 socket (rumqttc 0.24 cannot decode a DISCONNECT that omits
/// the property length, as the broker's 0x8E does); the second is rumqttc v5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_kicks_the_first_connection_and_loses_nothing() {
    const N: u32 = 2000;
    let broker = TestBroker::start().await;
    let id = unique_id("tk");
    let mut connect = raw::Connect::v5(&id, false, 0);
    connect.properties = raw::prop_u32(0x11, 60);
    let (mut first, _) = Raw::connect(broker.addr, &connect).await;
    first.subscribe(V::V5, "tk/seq", 1).await;

    // A third client publishes a numbered QoS 1 stream throughout the takeover.
    let publ = v5::connect(broker.addr, &unique_id("pub")).await;
    let stream = tokio::spawn(async move {
        for i in 0..N {
            publ.publish(
                "tk/seq",
                v5::QoS::AtLeastOnce,
                false,
                i.to_be_bytes().to_vec(),
            )
            .await;
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        publ
    });

    // Part of the stream reaches the first connection (acknowledged), then the takeover starts.
    let mut from_first: Vec<u32> = Vec::new();
    while from_first.len() < 200 {
        let p = raw::publish_of(&first.expect_kind(raw::PUBLISH, WAIT).await, V::V5);
        first.send(&raw::encode_puback(p.packet_id)).await;
        from_first.push(seq_of(&p.payload));
    }
    let addr = broker.addr;
    let second_id = id.clone();
    let second =
        tokio::spawn(
            async move { v5::Client::connect(v5::persistent(addr, &second_id, 60)).await },
        );
    // Whatever the first connection still gets is counted (unacknowledged: it is resent to the
    // second), up to the DISCONNECT, after which it closes its socket as a client should.
    let code = within(WAIT, "DISCONNECT on the first connection", async {
        loop {
            match first.read_frame().await {
                Some(f) if f.kind() == raw::PUBLISH => {
                    from_first.push(seq_of(&raw::publish_of(&f, V::V5).payload));
                }
                Some(f) if f.kind() == raw::DISCONNECT => return f.body.first().copied(),
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await;
    drop(first);
    assert_eq!(
        code,
        Some(SESSION_TAKEN_OVER),
        "first connection must get DISCONNECT 0x8E (Session taken over)"
    );
    let mut second = within(WAIT * 2, "the second connection", second)
        .await
        .expect("second connect task");
    assert!(
        second.connack.session_present,
        "the second connection continues the session"
    );

    let mut from_second: Vec<u32> = Vec::new();
    let mut all: BTreeSet<u32> = from_first.iter().copied().collect();
    let complete = tokio::time::timeout(Duration::from_secs(30), async {
        while all.len() < N as usize {
            let s = seq_of(&second.next_publish(WAIT).await.payload);
            from_second.push(s);
            all.insert(s);
        }
    })
    .await;
    let _publ = within(WAIT, "the publisher to finish", stream)
        .await
        .expect("publisher");
    let missing: Vec<u32> = (0..N).filter(|i| !all.contains(i)).take(20).collect();
    let last_first = from_first.iter().max().copied().unwrap_or(0);
    println!(
        "takeover: first connection got {} (last {last_first}), second got {} (first {:?})",
        from_first.len(),
        from_second.len(),
        from_second.first()
    );
    assert!(
        complete.is_ok() && missing.is_empty(),
        "sequence numbers lost across the takeover (first connection ended at {last_first}); \
         missing (up to 20): {missing:?}"
    );
    // In order on the second connection after the handover, redeliveries aside.
    let new_in_second: Vec<u32> = from_second
        .iter()
        .copied()
        .filter(|s| *s > last_first)
        .collect();
    assert!(
        new_in_second.windows(2).all(|w| w[0] < w[1]),
        "second connection received messages after the handover out of order"
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_whose_client_already_left_takes_nothing_over() {
    // Paced to one connection a second, so the second socket's CONNECT and its close are both
    // waiting when its handshake starts: its client is gone before the takeover is due.
    let broker = TestBroker::with(|c| {
        c.limits.connect_rate = 1;
        c.limits.connect_burst = 1;
    })
    .await;
    let id = unique_id("kept");
    let mut first = Raw::connected(broker.addr, V::V5, &id).await;
    let mut second = Raw::open(broker.addr).await;
    second.send(&V::V5.connect(&id)).await;
    drop(second);
    // Its slot comes about a second later; the first connection must not hear of it.
    match first.read_packet_within(Duration::from_millis(1500)).await {
        Err(raw::End::Silent) => {}
        other => panic!("the first connection was disturbed: {other:?}"),
    }
    first.ping().await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_does_not_wait_for_the_old_client_to_close_its_socket() {
    // Each holder is a v5 client that neither reads nor closes once connected, as a half-open
    // socket does. Its DISCONNECT 0x8E waits up to a second for the client's close (so that a
    // reset cannot destroy it); the session must not wait with it. Found by the session fuzz
    // target: with three clients queued on one id, the last was answered seconds later.
    let broker = TestBroker::start().await;
    let id = unique_id("chain");
    let mut holders = Vec::new();
    for round in 0..4 {
        let start = std::time::Instant::now();
        let raw = Raw::connected(broker.addr, V::V5, &id).await;
        let took = start.elapsed();
        if round > 0 {
            assert!(
                took < Duration::from_millis(900),
                "takeover {round}: CONNACK after {took:?}, waiting for the previous socket's close"
            );
        }
        holders.push(raw);
    }
    let last = holders.pop().expect("four connections");
    for (i, mut old) in holders.into_iter().enumerate() {
        old.expect_disconnect(SESSION_TAKEN_OVER, &format!("holder {i}"))
            .await;
    }
    let mut last = last;
    last.ping().await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_queue_is_bounded_by_max_queued_messages() {
    let broker = TestBroker::with(|cfg| cfg.mqtt.max_queued_messages = 10).await;
    let id = unique_id("bounded");
    let mut c = v3::Client::connect(persistent_v3(broker.addr, &id)).await;
    c.subscribe("bounded/t", v3::QoS::AtLeastOnce).await;
    c.disconnect().await;

    let mut publ = v3::connect(broker.addr, &unique_id("pub")).await;
    for i in 0..50u32 {
        publ.publish_confirmed(
            "bounded/t",
            v3::QoS::AtLeastOnce,
            false,
            i.to_be_bytes().to_vec(),
        )
        .await;
    }
    let mut c = v3::Client::connect(persistent_v3(broker.addr, &id)).await;
    assert!(c.connack.session_present);
    let mut got = Vec::new();
    while let Some(p) = c.try_next_publish(QUIET).await {
        got.push(seq_of(&p.payload));
    }
    assert_eq!(
        got.len(),
        10,
        "an offline session keeps exactly max_queued_messages; got {got:?}"
    );
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "queued messages out of order: {got:?}"
    );
    println!("bounded queue kept {got:?}");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_queue_is_bounded_by_max_queued_bytes() {
    let broker = TestBroker::with(|cfg| cfg.mqtt.max_queued_bytes = 10_000).await;
    let id = unique_id("bytes");
    let mut c = v3::Client::connect(persistent_v3(broker.addr, &id)).await;
    c.subscribe("bytes/t", v3::QoS::AtLeastOnce).await;
    c.disconnect().await;

    // Each message holds 1,031 bytes (topic and payload): nine fit in 10,000.
    let mut publ = v3::connect(broker.addr, &unique_id("pub")).await;
    for i in 0..30u32 {
        let mut payload = i.to_be_bytes().to_vec();
        payload.resize(1024, 0);
        publ.publish_confirmed("bytes/t", v3::QoS::AtLeastOnce, false, payload)
            .await;
    }
    let mut c = v3::Client::connect(persistent_v3(broker.addr, &id)).await;
    assert!(c.connack.session_present);
    let mut got = Vec::new();
    while let Some(p) = c.try_next_publish(QUIET).await {
        got.push(seq_of(&p.payload[..4]));
    }
    assert_eq!(got, (0..9).collect::<Vec<_>>(), "the first nine, in order");
    c.disconnect().await;

    // A message larger than the bound still goes into an empty queue; what follows it does not.
    publ.publish_confirmed("bytes/t", v3::QoS::AtLeastOnce, false, vec![7u8; 20_000])
        .await;
    publ.publish_confirmed("bytes/t", v3::QoS::AtLeastOnce, false, "small")
        .await;
    let mut c = v3::Client::connect(persistent_v3(broker.addr, &id)).await;
    let mut sizes = Vec::new();
    while let Some(p) = c.try_next_publish(QUIET).await {
        sizes.push(p.payload.len());
    }
    assert_eq!(sizes, [20_000]);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_qos1_is_resent_with_dup_and_the_same_packet_id() {
    let broker = TestBroker::start().await;
    let id = unique_id("dup");
    let (mut s, present) = Raw::connect(broker.addr, &raw::Connect::v311(&id, false, 0)).await;
    assert!(!present);
    s.subscribe(V::V311, "dup/t", 1).await;

    let mut publ = v3::connect(broker.addr, &unique_id("pub")).await;
    publ.publish_confirmed("dup/t", v3::QoS::AtLeastOnce, false, "once")
        .await;
    let first = raw::publish_of(&s.expect_kind(raw::PUBLISH, WAIT).await, V::V311);
    assert_eq!(
        (first.qos, first.dup, &first.payload[..]),
        (1, false, &b"once"[..])
    );
    // No PUBACK: drop the socket and come back.
    drop(s);

    let (mut s, present) = Raw::connect(broker.addr, &raw::Connect::v311(&id, false, 0)).await;
    assert!(present, "session present on resume");
    let again = raw::publish_of(&s.expect_kind(raw::PUBLISH, WAIT).await, V::V311);
    assert_eq!(
        again.packet_id, first.packet_id,
        "resent with the same packet id"
    );
    assert!(again.dup, "a resent PUBLISH must carry DUP");
    assert_eq!(again.qos, 1);
    assert_eq!(again.topic, "dup/t");
    assert_eq!(&again.payload[..], b"once");

    // Acknowledged now: a further resume resends nothing.
    s.send(&raw::encode_puback(again.packet_id)).await;
    s.send(&raw::encode_disconnect(None)).await;
    s.until_closed(WAIT).await;
    let (mut s, present) = Raw::connect(broker.addr, &raw::Connect::v311(&id, false, 0)).await;
    assert!(present);
    s.send(&raw::encode_pingreq()).await;
    let f = s.expect_packet("PINGRESP").await;
    assert_eq!(
        f.kind(),
        raw::PINGRESP,
        "an acknowledged message was resent: {f:?}"
    );
    broker.shutdown().await;
}
