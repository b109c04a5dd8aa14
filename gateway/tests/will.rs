//! Wills and connection liveness: the will is published when a connection ends abruptly (socket
//! dropped, client task aborted) or by keep-alive expiry, not on a normal DISCONNECT, and on a v5
//! DISCONNECT with reason 0x04; a v5 will delay holds it back and a reconnect within the delay
//! cancels it. Also the connect timeout for a socket that never sends CONNECT, and the idle bound
//! (`mqtt.idle_timeout`) of a client without keep-alive.

mod clients;
mod common;

use std::time::{Duration, Instant};

use clients::raw::{self, Raw};
use clients::{unique_id, v3, v5, within, WAIT};
use common::TestBroker;

fn will<'a>(topic: &'a str, payload: &'a [u8]) -> raw::Will<'a> {
    raw::Will {
        topic,
        payload,
        qos: 1,
        retain: false,
        properties: Vec::new(),
    }
}

async fn watcher(addr: std::net::SocketAddr, filter: &str) -> v3::Client {
    let mut w = v3::connect(addr, &unique_id("watcher")).await;
    w.subscribe(filter, v3::QoS::AtLeastOnce).await;
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_when_the_socket_is_dropped() {
    let broker = TestBroker::start().await;
    let mut w = watcher(broker.addr, "will/#").await;
    let id = unique_id("dropper");
    let mut c = raw::Connect::v311(&id, true, 60);
    c.will = Some(will("will/dropped", b"gone"));
    let (s, _) = Raw::connect(broker.addr, &c).await;
    drop(s);
    let p = w.next_publish(WAIT).await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("will/dropped", &b"gone"[..])
    );
    assert_eq!(p.qos, v3::QoS::AtLeastOnce);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_when_the_client_task_is_aborted() {
    let broker = TestBroker::start().await;
    let mut w = watcher(broker.addr, "will/#").await;
    let mut o = v3::options(broker.addr, &unique_id("aborted"));
    o.set_last_will(rumqttc::LastWill::new(
        "will/aborted",
        "bye",
        v3::QoS::AtMostOnce,
        false,
    ));
    let c = v3::Client::connect(o).await;
    c.abort().await;
    let p = w.next_publish(WAIT).await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("will/aborted", &b"bye"[..])
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_expiry_closes_the_connection_and_publishes_the_will() {
    let broker = TestBroker::start().await;
    let mut w = watcher(broker.addr, "will/#").await;
    let id = unique_id("silent");
    let mut c = raw::Connect::v311(&id, true, 1);
    c.will = Some(will("will/silent", b"timed out"));
    let (mut s, _) = Raw::connect(broker.addr, &c).await;
    let connected = Instant::now();
    let frames = s.until_closed(Duration::from_secs(5)).await;
    let closed_after = connected.elapsed();
    println!("keep-alive 1 s: closed after {closed_after:?}");
    assert!(
        frames.is_empty(),
        "unexpected packets before the close: {frames:?}"
    );
    assert!(
        closed_after >= Duration::from_millis(1400) && closed_after <= Duration::from_millis(2600),
        "keep-alive 1 s must close the silent connection after 1.5 s (allowed 1.4..2.6 s), took {closed_after:?}"
    );
    let p = w.next_publish(WAIT).await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("will/silent", &b"timed out"[..])
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_is_extended_by_any_packet() {
    let broker = TestBroker::start().await;
    let (mut s, _) = Raw::connect(
        broker.addr,
        &raw::Connect::v311(&unique_id("pinger"), true, 1),
    )
    .await;
    let started = Instant::now();
    // Pings every 0.7 s keep a keep-alive 1 connection open well past 1.5 s.
    while started.elapsed() < Duration::from_millis(3000) {
        tokio::time::sleep(Duration::from_millis(700)).await;
        s.send(&raw::encode_pingreq()).await;
        let f = s.expect_packet("PINGRESP").await;
        assert_eq!(
            f.kind(),
            raw::PINGRESP,
            "connection closed or answered wrongly: {f:?}"
        );
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_keep_alive_is_closed_after_the_idle_timeout() {
    const IDLE: Duration = Duration::from_secs(1);
    // A new session hibernates at once (the parker must know the deadline), or never does.
    for hibernate_after in [Some(Duration::from_secs(10)), None] {
        let broker = TestBroker::with(|c| {
            c.mqtt.idle_timeout = Some(IDLE);
            c.mqtt.hibernate_after = hibernate_after;
        })
        .await;
        let addr = broker.addr;
        let mut w = watcher(addr, "will/#").await;
        // Silent both ways, with keep-alive 0: 3.1.1 (any 3.x client may ask for no
        // keep-alive) and 5.0 (under the default max_keepalive it is granted).
        let silent: Vec<_> = [4u8, 5]
            .into_iter()
            .map(|level| {
                tokio::spawn(async move {
                    let id = unique_id(&format!("idle-{level}"));
                    let mut c = raw::Connect::v311(&id, true, 0);
                    c.level = level;
                    c.will = Some(will("will/idle", b"idle"));
                    let (mut s, _) = Raw::connect(addr, &c).await;
                    let connected = Instant::now();
                    let frames = s.until_closed(Duration::from_secs(5)).await;
                    (level, connected.elapsed(), frames)
                })
            })
            .collect();
        // Keep-alive 0 too, but with traffic: one talks, one only receives.
        let (mut talker, _) =
            Raw::connect(addr, &raw::Connect::v311(&unique_id("talker"), true, 0)).await;
        let (mut receiver, _) =
            Raw::connect(addr, &raw::Connect::v5(&unique_id("receiver"), true, 0)).await;
        receiver.subscribe(raw::V::V5, "idle/feed", 0).await;
        let feeder = v3::connect(addr, &unique_id("feeder")).await;
        let started = Instant::now();
        while started.elapsed() < IDLE * 5 / 2 {
            tokio::time::sleep(IDLE * 3 / 10).await;
            talker.ping().await;
            feeder
                .publish("idle/feed", v3::QoS::AtMostOnce, false, "tick")
                .await;
            let f = receiver.expect_kind(raw::PUBLISH, WAIT).await;
            assert!(f.body.ends_with(b"tick"), "{f:?}");
        }
        for task in silent {
            let (level, after, frames) = task.await.expect("silent client task");
            println!("idle_timeout 1 s, hibernate_after {hibernate_after:?}, level {level}: closed after {after:?}");
            assert!(
                after >= Duration::from_millis(900) && after <= Duration::from_millis(2600),
                "level {level}: closed after {after:?} (allowed 0.9..2.6 s)"
            );
            let expected: Vec<raw::Frame> = match level {
                5 => vec![raw::Frame {
                    first: raw::DISCONNECT,
                    body: vec![0x8D, 0],
                }],
                _ => Vec::new(),
            };
            assert_eq!(frames, expected, "level {level}");
        }
        for _ in 0..2 {
            let p = w.next_publish(WAIT).await;
            assert_eq!(
                (p.topic.as_str(), &p.payload[..]),
                ("will/idle", &b"idle"[..])
            );
        }
        broker.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_disconnect_discards_the_will() {
    let broker = TestBroker::start().await;
    let mut w = watcher(broker.addr, "will/#").await;
    let id = unique_id("polite");
    let mut c = raw::Connect::v311(&id, true, 60);
    c.will = Some(will("will/polite", b"should not appear"));
    let (mut s, _) = Raw::connect(broker.addr, &c).await;
    s.send(&raw::encode_disconnect(None)).await;
    // The broker closes the socket only after it has decided about the will.
    s.until_closed(WAIT).await;
    let mut publ = v3::connect(broker.addr, &unique_id("pub")).await;
    publ.publish_confirmed("will/marker", v3::QoS::AtLeastOnce, false, "marker")
        .await;
    let p = w.next_publish(WAIT).await;
    assert_eq!(
        p.topic, "will/marker",
        "will published after a normal DISCONNECT: {p:?}"
    );

    // Same for a v5 DISCONNECT with reason 0x00.
    let id = unique_id("polite5");
    let mut c = raw::Connect::v5(&id, true, 60);
    c.will = Some(will("will/polite5", b"should not appear"));
    let (mut s, _) = Raw::connect(broker.addr, &c).await;
    s.send(&raw::encode_disconnect(Some(0x00))).await;
    s.until_closed(WAIT).await;
    publ.publish_confirmed("will/marker", v3::QoS::AtLeastOnce, false, "marker")
        .await;
    let p = w.next_publish(WAIT).await;
    assert_eq!(
        p.topic, "will/marker",
        "will published after a v5 DISCONNECT 0x00: {p:?}"
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_disconnect_with_will_message_publishes_it() {
    let broker = TestBroker::start().await;
    let mut w = watcher(broker.addr, "will/#").await;
    let id = unique_id("with-will");
    let mut c = raw::Connect::v5(&id, true, 60);
    c.will = Some(will("will/asked", b"on purpose"));
    let (mut s, _) = Raw::connect(broker.addr, &c).await;
    s.send(&raw::encode_disconnect(Some(0x04))).await;
    let p = w.next_publish(WAIT).await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("will/asked", &b"on purpose"[..])
    );
    broker.shutdown().await;
}

fn delayed_will_client(addr: std::net::SocketAddr, id: &str) -> v5::MqttOptions {
    let mut o = v5::persistent(addr, id, 10);
    let props = v5::LastWillProperties {
        delay_interval: Some(2),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    };
    o.set_last_will(v5::LastWill::new(
        "will/delayed",
        id.to_owned(),
        v5::QoS::AtLeastOnce,
        false,
        Some(props),
    ));
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_delay_holds_the_will_back() {
    let broker = TestBroker::start().await;
    let mut w = watcher(broker.addr, "will/#").await;
    let id = unique_id("delayed");
    let c = v5::Client::connect(delayed_will_client(broker.addr, &id)).await;
    c.abort().await;
    let gone = Instant::now();
    if let Some(p) = w.try_next_publish(Duration::from_millis(1500)).await {
        panic!(
            "will arrived {:?} after the close, before its 2 s delay: {p:?}",
            gone.elapsed()
        );
    }
    let p = w.next_publish(Duration::from_secs(3)).await;
    let after = gone.elapsed();
    println!("delayed will arrived after {after:?}");
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("will/delayed", id.as_bytes())
    );
    assert!(
        after <= Duration::from_millis(3500),
        "will delay 2 s, arrived after {after:?}"
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_within_the_will_delay_cancels_the_will() {
    let broker = TestBroker::start().await;
    let mut w = watcher(broker.addr, "will/#").await;
    let id = unique_id("back");
    let c = v5::Client::connect(delayed_will_client(broker.addr, &id)).await;
    c.abort().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut o = v5::persistent(broker.addr, &id, 10);
    o.set_keep_alive(Duration::from_secs(30));
    let back = v5::Client::connect(o).await;
    assert!(back.connack.session_present);
    w.expect_no_publish(Duration::from_secs(3)).await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_without_connect_is_closed_after_the_connect_timeout() {
    let broker = TestBroker::with(|cfg| cfg.mqtt.connect_timeout = Duration::from_secs(1)).await;
    let mut s = Raw::open(broker.addr).await;
    let opened = Instant::now();
    let frames = within(
        Duration::from_secs(5),
        "the silent socket to be closed",
        s.until_closed(WAIT),
    )
    .await;
    let after = opened.elapsed();
    println!("no CONNECT: closed after {after:?}");
    assert!(
        frames.is_empty(),
        "the broker answered a socket that sent nothing: {frames:?}"
    );
    assert!(
        after >= Duration::from_millis(900) && after <= Duration::from_secs(3),
        "connect_timeout 1 s: closed after {after:?} (allowed 0.9..3 s)"
    );
    // A client that does connect in time is unaffected by the timeout afterwards.
    let (mut ok, _) =
        Raw::connect(broker.addr, &raw::Connect::v311(&unique_id("ok"), true, 0)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ok.send(&raw::encode_pingreq()).await;
    assert_eq!(ok.expect_packet("PINGRESP").await.kind(), raw::PINGRESP);
    broker.shutdown().await;
}

/// A shutdown closes the connections without the clients' DISCONNECT, so their wills stand
/// [MQTT-3.1.2-8] and go out in the drain, whether the session was in its task or hibernating
/// (resumed by the shutdown's kick). Retained ones are what a restart's subscribers see of the
/// devices the shutdown disconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_publishes_the_wills_of_connected_clients() {
    for hibernate in [None, Some(Duration::from_millis(50))] {
        let broker = TestBroker::with(|c| c.mqtt.hibernate_after = hibernate).await;
        let retained_will = |topic| raw::Will {
            topic,
            payload: b"gone",
            qos: 1,
            retain: true,
            properties: Vec::new(),
        };
        let mut v3 = raw::Connect::v311("shut-v3", true, 60);
        v3.will = Some(retained_will("wills/v3"));
        let (mut v3, _) = Raw::connect(broker.addr, &v3).await;
        let mut v5 = raw::Connect::v5("shut-v5", true, 60);
        v5.will = Some(retained_will("wills/v5"));
        let (mut v5, _) = Raw::connect(broker.addr, &v5).await;
        if hibernate.is_some() {
            let parked = || broker.ctx.state().sessions_hibernating == 2;
            assert!(common::eventually(WAIT, parked).await, "both hibernating");
        }
        let ctx = broker.ctx.clone();
        broker.shutdown().await;
        v3.expect_closed("3.1.1 client at shutdown").await;
        v5.expect_disconnect(0x8B, "v5 client at shutdown").await;
        assert_eq!(
            ctx.state().retained_messages,
            2,
            "hibernating {hibernate:?}: both wills published (retained)"
        );
    }
}
