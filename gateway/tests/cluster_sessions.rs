//! Sessions across the nodes of a cluster, against a real nats-server 2.9 with JetStream (see
//! `common::nats`) and real clients (rumqttc, raw packets where a flow must stop half way): a
//! persistent session followed its client to another node with its subscriptions and queue, a
//! client connecting again elsewhere closes its stale connection (v5 DISCONNECT 0x8E, 3.1.1
//! close), nodes racing for one client id end with one connection and an owner record naming
//! its node, and an inbound QoS 2 flow begun on one node completes on the other.
//!
//! Without `nats-server` the tests are skipped with a loud message, and fail under CI.

mod binary;
mod clients;
mod common;
mod observe;

use std::net::SocketAddr;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use clients::raw::{self, Connect, End, Raw, V};
use clients::{unique_id, v3, v5, QUIET, WAIT};
use common::nats::NatsServer;
use observe::{request, samples, total, Observed, TOKEN};

const SESSION_TAKEN_OVER: u8 = 0x8E;

/// A node of the cluster on `nats`, once connected to it (before, its claims are local).
async fn node(nats: &NatsServer, name: &str) -> Observed {
    node_with(nats, name, |_| {}).await
}

async fn node_with(
    nats: &NatsServer,
    name: &str,
    tune: impl FnOnce(&mut gateway::Config),
) -> Observed {
    let node = Observed::cluster_node(&nats.url(), name, tune).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&node, "gateway_cluster_connected", &[]).await != 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node never connected to NATS"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node
}

async fn metric(node: &Observed, name: &str, labels: &[&str]) -> f64 {
    total(&samples(&node.metrics().await), name, labels)
}

/// Waits until `node` knows `entries` interest entries of other nodes.
async fn interest(node: &Observed, entries: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(node, "gateway_cluster_remote_interest", &[]).await != entries {
        assert!(
            tokio::time::Instant::now() < deadline,
            "remote interest never reached {entries}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `node` holds a session for `client_id` (admin API).
async fn holds(node: &Observed, client_id: &str) -> bool {
    let path = format!("/api/v1/clients/{client_id}");
    match request(node.http, "GET", &path, Some(TOKEN)).await.0 {
        200 => true,
        404 => false,
        other => panic!("admin API answered {other} for {path}"),
    }
}

/// The node the owner record of `client_id` names, read from the bucket with a NATS client of
/// its own.
async fn owner_record(nats: &NatsServer, client_id: &str) -> String {
    let client = async_nats::connect(nats.url()).await.expect("NATS connect");
    let js = async_nats::jetstream::new(client);
    let kv = js
        .get_key_value("gateway_sessions")
        .await
        .expect("owner bucket");
    let key = format!("c{}", URL_SAFE_NO_PAD.encode(client_id));
    let value = kv.get(key).await.expect("read").expect("an owner record");
    let owner: serde_json::Value = serde_json::from_slice(&value).expect("JSON owner");
    owner["node"].as_str().expect("node").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_follows_its_client_to_another_node_with_its_queue() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let (a, b, c3) = (
        node(&nats, "a").await,
        node(&nats, "b").await,
        node(&nats, "c").await,
    );
    let id = unique_id("roamer");
    let mut c = v5::Client::connect(v5::persistent(a.mqtt, &id, 300)).await;
    assert!(!c.connack.session_present);
    c.subscribe("fleet/+/cmd", v5::QoS::AtLeastOnce).await;
    c.disconnect().await;

    // Queued on a while its client is away.
    let mut publisher = v5::connect(a.mqtt, &unique_id("pub")).await;
    for i in 0..5 {
        publisher
            .publish_confirmed("fleet/1/cmd", v5::QoS::AtLeastOnce, false, format!("q{i}"))
            .await;
    }

    let mut c = v5::Client::connect(v5::persistent(b.mqtt, &id, 300)).await;
    assert!(
        c.connack.session_present,
        "the session came over from node a"
    );
    for i in 0..5 {
        let got = c.next_publish(WAIT).await;
        assert_eq!(
            &got.payload[..],
            format!("q{i}").as_bytes(),
            "queued message {i}"
        );
        assert_eq!(got.qos, v5::QoS::AtLeastOnce);
    }
    c.expect_no_publish(QUIET).await;
    assert!(!holds(&a, &id).await, "node a still holds the session");
    assert!(holds(&b, &id).await);

    // Its subscription lives on b now: a publish on a reaches it across the cluster.
    interest(&a, 1.0).await;
    publisher
        .publish_confirmed("fleet/2/cmd", v5::QoS::AtLeastOnce, false, "live")
        .await;
    assert_eq!(&c.next_publish(WAIT).await.payload[..], b"live");
    c.expect_no_publish(QUIET).await;

    assert_eq!(
        metric(&b, "gateway_cluster_takeovers_total", &["result=\"state\""]).await,
        1.0
    );
    assert_eq!(
        metric(&a, "gateway_cluster_sessions_handed_over_total", &[]).await,
        1.0
    );
    assert_eq!(owner_record(&nats, &id).await, "b");
    c.disconnect().await;

    // On to a third node: what was queued for it on b while it was away comes along (once it
    // reached b: a message still crossing NATS when its session moves is not followed).
    let received = "gateway_cluster_messages_received_total";
    let before = metric(&b, received, &[]).await;
    publisher
        .publish_confirmed("fleet/3/cmd", v5::QoS::AtLeastOnce, false, "later")
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&b, received, &[]).await == before {
        assert!(tokio::time::Instant::now() < deadline, "b never got it");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut c = v5::Client::connect(v5::persistent(c3.mqtt, &id, 300)).await;
    assert!(
        c.connack.session_present,
        "the session came over from node b"
    );
    assert_eq!(&c.next_publish(WAIT).await.payload[..], b"later");
    c.expect_no_publish(QUIET).await;
    assert!(!holds(&a, &id).await && !holds(&b, &id).await);
    assert_eq!(owner_record(&nats, &id).await, "c");
    c.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_on_another_node_closes_the_stale_connection() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);

    let id = unique_id("v5-twice");
    let mut first = v5::connect(a.mqtt, &id).await;
    let mut second = v5::connect(b.mqtt, &id).await;
    assert!(
        !second.connack.session_present,
        "clean start drops what came over"
    );
    assert_eq!(first.closed(WAIT).await, Some(SESSION_TAKEN_OVER));
    second
        .publish_confirmed("still/here", v5::QoS::AtLeastOnce, false, "b")
        .await;
    assert!(!holds(&a, &id).await);
    assert_eq!(owner_record(&nats, &id).await, "b");
    second.disconnect().await;

    let id = unique_id("v3-twice");
    let mut first = v3::connect(a.mqtt, &id).await;
    let mut second = v3::connect(b.mqtt, &id).await;
    let why = first.closed(WAIT).await;
    assert!(!why.is_empty(), "the 3.1.1 connection on a was closed");
    second
        .publish_confirmed("still/here", v3::QoS::AtLeastOnce, false, "b")
        .await;
    assert!(!holds(&a, &id).await);
    second.disconnect().await;
}

/// Opens a v5 clean-start connection for `id` on `addr` and reads its CONNACK.
async fn raw_connect(addr: SocketAddr, id: String) -> Raw {
    Raw::connect(addr, &Connect::v5(&id, true, 60)).await.0
}

/// Whether `raw` was closed (after DISCONNECT 0x8E), looking for a moment.
async fn closed(raw: &mut Raw) -> bool {
    loop {
        match raw.read_packet_within(Duration::from_millis(10)).await {
            Ok(f) if f.first == raw::DISCONNECT => {
                assert_eq!(f.body.first(), Some(&SESSION_TAKEN_OVER), "{f:?}");
            }
            Ok(f) => panic!("unexpected {f:?}"),
            Err(End::Closed) => return true,
            Err(End::Silent) => return false,
        }
    }
}

/// Whether `raw` is still an open, working connection (else it saw DISCONNECT 0x8E and close).
async fn survives(raw: &mut Raw) -> bool {
    raw.send_lenient(&raw::encode_pingreq()).await;
    loop {
        match raw.read_packet_within(WAIT).await {
            Ok(f) if f.first == raw::PINGRESP => return true,
            Ok(f) if f.first == raw::DISCONNECT => {
                assert_eq!(f.body.first(), Some(&SESSION_TAKEN_OVER), "{f:?}");
            }
            Ok(f) => panic!("unexpected {f:?}"),
            Err(End::Closed) => return false,
            Err(End::Silent) => panic!("connection neither answered nor closed"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_racing_for_one_client_id_end_with_one_owner() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    for round in 0..30 {
        let id = unique_id("racer");
        let (mut on_a, mut on_b) = tokio::join!(
            raw_connect(a.mqtt, id.clone()),
            raw_connect(b.mqtt, id.clone())
        );
        // Both CONNACKed; the loser is being closed: wait for one to close, then the other
        // must still work.
        let deadline = tokio::time::Instant::now() + WAIT;
        let (mut gone_a, mut gone_b) = (false, false);
        while !gone_a && !gone_b {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: neither connection closed"
            );
            gone_a = closed(&mut on_a).await;
            gone_b = closed(&mut on_b).await;
        }
        assert!(
            !(gone_a && gone_b),
            "round {round}: both connections closed"
        );
        let (alive_a, alive_b) = if gone_a {
            (false, survives(&mut on_b).await)
        } else {
            (survives(&mut on_a).await, false)
        };
        assert!(
            alive_a != alive_b,
            "round {round}: a alive {alive_a}, b alive {alive_b}"
        );
        let winner = if alive_a { "a" } else { "b" };
        assert_eq!(owner_record(&nats, &id).await, winner, "round {round}");
        // The loser's session (clean start, no expiry) ends as its connection closes: at
        // once, or a moment after the client saw the close.
        let loser = if alive_a { &b } else { &a };
        let deadline = tokio::time::Instant::now() + WAIT;
        while holds(loser, &id).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: the loser node holds a session"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let claims = metric(&a, "gateway_cluster_claims_total", &[]).await
        + metric(&b, "gateway_cluster_claims_total", &[]).await;
    assert_eq!(claims, 60.0);
    let local = metric(&a, "gateway_cluster_claims_total", &["outcome=\"local\""]).await
        + metric(&b, "gateway_cluster_claims_total", &["outcome=\"local\""]).await;
    assert_eq!(local, 0.0, "every claim went through the owner record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos2_flow_begun_on_one_node_completes_on_another() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let id = unique_id("qos2");
    let persistent = |clean| {
        let mut c = Connect::v5(&id, clean, 60);
        // Session expiry interval 300 s.
        c.properties = raw::prop_u32(0x11, 300);
        c
    };
    let (mut on_a, present) = Raw::connect(a.mqtt, &persistent(true)).await;
    assert!(!present);
    on_a.send(&V::V5.publish(0x34, b"q2/topic", Some(7), &[], b"once"))
        .await;
    let rec = on_a.expect_kind(0x50, WAIT).await;
    assert_eq!(&rec.body[..2], &[0, 7], "PUBREC for packet 7");
    // Gone before its PUBREL.
    drop(on_a);

    let (mut on_b, present) = Raw::connect(b.mqtt, &persistent(false)).await;
    assert!(present, "the session came over from node a");
    on_b.send(&raw::packet(0x62, &[0, 7])).await;
    let comp = on_b.expect_kind(0x70, WAIT).await;
    assert_eq!(&comp.body[..2], &[0, 7], "PUBCOMP for packet 7");
    // Reason code success (omitted, or 0x00), not 0x92 Packet Identifier not found.
    assert!(
        comp.body.len() == 2 || comp.body[2] == 0,
        "PUBCOMP reason {comp:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_down_a_connect_is_granted_locally_at_once_and_counted() {
    let Some(mut nats) = NatsServer::start().await else {
        return;
    };
    let a = node(&nats, "a").await;
    nats.kill();
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&a, "gateway_cluster_connected", &[]).await != 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "NATS loss never seen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = tokio::time::Instant::now();
    let c = v5::connect(a.mqtt, &unique_id("offline")).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "CONNACK took {:?}",
        started.elapsed()
    );
    assert_eq!(
        metric(&a, "gateway_cluster_claims_total", &["outcome=\"local\""]).await,
        1.0
    );
    c.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_previous_owner_holds_a_connect_no_longer_than_its_connect_timeout() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let a = node_with(&nats, "a", |c| {
        c.mqtt.connect_timeout = Duration::from_secs(1)
    })
    .await;
    // Node "z" owns the client id and takes its requests, but never answers them.
    let id = unique_id("orphan");
    let z = async_nats::connect(nats.url()).await.expect("NATS connect");
    let _silent = z.subscribe("gateway.c.take.z").await.expect("subscribe");
    z.flush().await.expect("flush");
    let kv = async_nats::jetstream::new(z.clone())
        .get_key_value("gateway_sessions")
        .await;
    let kv = match kv {
        Ok(kv) => kv,
        Err(_) => {
            // The bucket comes with the first claim: make one.
            v5::connect(a.mqtt, &unique_id("first"))
                .await
                .disconnect()
                .await;
            async_nats::jetstream::new(z.clone())
                .get_key_value("gateway_sessions")
                .await
                .expect("owner bucket")
        }
    };
    let key = format!("c{}", URL_SAFE_NO_PAD.encode(&id));
    kv.put(key, r#"{"node":"z","instance":1}"#.into())
        .await
        .expect("owner record");

    let started = tokio::time::Instant::now();
    let c = v5::connect(a.mqtt, &id).await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1_900), "CONNACK took {took:?}");
    assert!(!c.connack.session_present);
    assert_eq!(
        metric(
            &a,
            "gateway_cluster_takeovers_total",
            &["result=\"unreachable\""]
        )
        .await,
        1.0
    );
    assert_eq!(owner_record(&nats, &id).await, "a");
    c.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_a_restart_left_on_the_old_nodes_disk_comes_over_too() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let store = observe::scratch::Scratch::new("roam-store");
    let dir = store.path().to_owned();
    let with_store = |dir: std::path::PathBuf| {
        move |c: &mut gateway::Config| {
            c.storage.enabled = true;
            c.storage.dir = dir;
        }
    };
    let a = node_with(&nats, "a", with_store(dir.clone())).await;
    let b = node(&nats, "b").await;
    let id = unique_id("stored");
    let mut c = v5::Client::connect(v5::persistent(a.mqtt, &id, 300)).await;
    c.subscribe("disk/#", v5::QoS::AtLeastOnce).await;
    c.disconnect().await;
    let mut publisher = v5::connect(a.mqtt, &unique_id("pub")).await;
    for i in 0..20 {
        publisher
            .publish_confirmed("disk/x", v5::QoS::AtLeastOnce, false, format!("d{i}"))
            .await;
    }
    publisher.disconnect().await;
    // Node a restarts on its store: the queue waits on its disk.
    a.shutdown().await;
    // The store's writer lets go of the database file just after the broker's task ends.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a = node_with(&nats, "a", with_store(dir)).await;

    let mut c = v5::Client::connect(v5::persistent(b.mqtt, &id, 300)).await;
    assert!(c.connack.session_present);
    for i in 0..20 {
        let got = c.next_publish(WAIT).await;
        assert_eq!(&got.payload[..], format!("d{i}").as_bytes(), "message {i}");
    }
    c.expect_no_publish(QUIET).await;
    assert!(!holds(&a, &id).await);
    c.disconnect().await;
}
