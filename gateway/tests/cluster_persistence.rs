//! Persistent sessions outlive their node: three gateway processes form one broker over a real
//! nats-server 2.9 (JetStream on), node a is killed with SIGKILL, and its clients come back on
//! the other nodes with clean start off. Every message acknowledged to its publisher before
//! the kill (queued offline, or sent and not yet acknowledged by the subscriber) is delivered,
//! none twice except as a DUP resend of one in flight, and an inbound QoS 2 flow left before
//! its PUBREL completes once. Clients: rumqttc (3.1.1 and 5.0) and raw packets where a flow
//! must stop half way.
//!
//! Without `nats-server` the tests are skipped with a loud message, and fail under CI.

mod binary;
mod clients;
mod cluster_node;
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use binary::Gateway;
use clients::raw::{self, Connect, Raw, V};
use clients::{unique_id, v3, v5, QUIET, WAIT};
use cluster_node::{adopted_by, never_delivered, owner_of};
use common::nats::NatsServer;

/// Long enough for the records of what the subscribers were sent (not waited for, unlike a
/// publisher's PUBACK) to reach JetStream before the kill.
const SETTLE: Duration = Duration::from_millis(500);
const EXPIRY: u32 = 300;

/// A node of the cluster on `nats`, named `name`, as its own process, once it claims client
/// ids through NATS.
async fn ready_node(nats: &NatsServer, name: &str, dir: &binary::scratch::Scratch) -> Gateway {
    cluster_node::ready_node_with(nats, name, dir, "").await
}

fn persistent_connect(v: V, id: &str) -> Connect<'_> {
    match v {
        V::V311 => Connect::v311(id, false, 60),
        V::V5 => {
            let mut c = Connect::v5(id, true, 60);
            c.properties = raw::prop_u32(0x11, EXPIRY);
            c
        }
    }
}

/// A persistent session on `addr` subscribed to `filter` at QoS 1, its connection open.
async fn subscribed(addr: SocketAddr, v: V, id: &str, filter: &str) -> Raw {
    let (mut raw, _) = Raw::connect(addr, &persistent_connect(v, id)).await;
    raw.subscribe(v, filter, 1).await;
    raw
}

/// Reads `n` PUBLISH packets and acknowledges none of them.
async fn take_unacknowledged(raw: &mut Raw, v: V, n: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    while got.len() < n {
        let f = raw.expect_kind(raw::PUBLISH, WAIT).await;
        got.push(raw::publish_of(&f, v).payload);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_sessions_lose_nothing_acknowledged_when_their_node_is_killed() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let dir = binary::scratch::Scratch::new("persist");
    let mut a = ready_node(&nats, "a", &dir).await;
    let b = ready_node(&nats, "b", &dir).await;
    let c = ready_node(&nats, "c", &dir).await;
    let id5 = unique_id("kill-v5");
    let id3 = unique_id("kill-v3");
    let mut sub5 = subscribed(a.addr, V::V5, &id5, "k5/#").await;
    let mut sub3 = subscribed(a.addr, V::V311, &id3, "k3/#").await;

    // Three each go out and stay unacknowledged (in flight), five more queue while the
    // subscribers are away: every one acknowledged to the publisher.
    let mut publisher = v5::connect(a.addr, &unique_id("kill-pub")).await;
    for i in 0..3 {
        for topic in ["k5/x", "k3/x"] {
            publisher
                .publish_confirmed(topic, v5::QoS::AtLeastOnce, false, format!("m{i}"))
                .await;
        }
    }
    assert_eq!(
        take_unacknowledged(&mut sub5, V::V5, 3).await,
        [b"m0", b"m1", b"m2"]
    );
    assert_eq!(
        take_unacknowledged(&mut sub3, V::V311, 3).await,
        [b"m0", b"m1", b"m2"]
    );
    drop((sub5, sub3));
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 3..8 {
        for topic in ["k5/x", "k3/x"] {
            publisher
                .publish_confirmed(topic, v5::QoS::AtLeastOnce, false, format!("m{i}"))
                .await;
        }
    }
    tokio::time::sleep(SETTLE).await;
    a.child.kill().expect("SIGKILL node a");
    a.child.wait().expect("reaped");

    let started = Instant::now();
    let mut back5 = v5::Client::connect(v5::persistent(b.addr, &id5, EXPIRY)).await;
    let took = started.elapsed();
    assert!(
        back5.connack.session_present,
        "the v5 session came back from JetStream"
    );
    println!("v5 CONNACK with the session read back: {took:?}");
    for i in 0..8 {
        let p = back5.next_publish(WAIT).await;
        assert_eq!(&p.payload[..], format!("m{i}").as_bytes(), "v5 message {i}");
        assert_eq!(p.dup, i < 3, "v5 message {i}: DUP only on a resend");
    }
    back5.expect_no_publish(QUIET).await;

    let mut o = v3::options(c.addr, &id3);
    o.set_clean_session(false);
    let mut back3 = v3::Client::connect(o).await;
    assert!(
        back3.connack.session_present,
        "the 3.1.1 session came back from JetStream"
    );
    for i in 0..8 {
        let p = back3.next_publish(WAIT).await;
        assert_eq!(
            &p.payload[..],
            format!("m{i}").as_bytes(),
            "3.1.1 message {i}"
        );
        assert_eq!(p.dup, i < 3, "3.1.1 message {i}: DUP only on a resend");
    }
    back3.expect_no_publish(QUIET).await;

    // Their subscriptions came along: a message published now reaches them. Until the dead
    // node's interest expires (5 s after its last beat), a QoS 1 message its persistent
    // sessions wanted waits for its answer and is refused (it may hold sessions not back
    // yet): the publisher sends it again, as a client told 0x80 does.
    let mut publisher = v5::connect(c.addr, &unique_id("kill-pub2")).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reason = publisher
            .publish_acked_within(WAIT * 2, "k5/y", "after")
            .await;
        if reason == v5::PubAckReason::Success {
            break;
        }
        assert_eq!(reason, v5::PubAckReason::UnspecifiedError);
        assert!(
            Instant::now() < deadline,
            "still refused 20 s after the kill"
        );
    }
    assert_eq!(&back5.next_publish(WAIT).await.payload[..], b"after");
    back5.disconnect().await;
    back3.disconnect().await;
    publisher.disconnect().await;
}

/// A node killed and started again under its name takes its earlier start's sessions back as
/// soon as it is on NATS (before any other node would take them up): what is published for
/// them from then on, on any node, is queued there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_takes_its_sessions_back_and_queues_for_them() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let dir = binary::scratch::Scratch::new("again");
    let mut a = ready_node(&nats, "a", &dir).await;
    let b = ready_node(&nats, "b", &dir).await;
    let id = unique_id("again");
    let sub = subscribed(a.addr, V::V311, &id, "again/#").await;
    tokio::time::sleep(SETTLE).await;
    let (_, first) = owner_of(&nats, &id).await.expect("owned");
    a.child.kill().expect("SIGKILL node a");
    a.child.wait().expect("reaped");
    drop(sub);

    let started = Instant::now();
    let _restarted = ready_node(&nats, "a", &dir).await;
    loop {
        let (node, instance) = owner_of(&nats, &id).await.expect("owned");
        if instance != first {
            assert_eq!(node, "a", "taken back by the restarted node, not another");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the restarted node never took its session back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("taken back {:?} after the restart", started.elapsed());
    tokio::time::sleep(SETTLE).await;
    let mut publisher = v5::connect(b.addr, &unique_id("again-pub")).await;
    for i in 0..3 {
        publisher
            .publish_confirmed("again/x", v5::QoS::AtLeastOnce, false, format!("m{i}"))
            .await;
    }
    let mut o = v3::options(b.addr, &id);
    o.set_clean_session(false);
    let mut back = v3::Client::connect(o).await;
    assert!(back.connack.session_present, "the session was kept");
    for i in 0..3 {
        let p = back.next_publish(WAIT).await;
        assert_eq!(&p.payload[..], format!("m{i}").as_bytes(), "message {i}");
    }
    back.expect_no_publish(QUIET).await;
    back.disconnect().await;
    publisher.disconnect().await;
}

/// A node stopped cleanly (a restart: it says so, and is not adopted from) leaves its
/// persistent sessions without a home until it is back: what is published for them meanwhile
/// on another node is refused to its publisher, not acknowledged and lost; once the node is
/// back it queues for them again, and the client gets every message that was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_cleanly_has_its_sessions_messages_refused_until_it_is_back() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let dir = binary::scratch::Scratch::new("bye");
    let mut a = ready_node(&nats, "a", &dir).await;
    let b = ready_node(&nats, "b", &dir).await;
    let id = unique_id("bye");
    let sub = subscribed(a.addr, V::V5, &id, "bye/#").await;
    tokio::time::sleep(SETTLE).await;
    a.signal(libc::SIGTERM);
    assert!(a.exit_status(WAIT).await.success());
    drop(sub);

    let mut publisher = v5::connect(b.addr, &unique_id("bye-pub")).await;
    let (mut acked, mut refused_down) = (Vec::new(), 0);
    let mut restarted = None;
    for seq in 1u32.. {
        let reason = publisher
            .publish_acked_within(WAIT * 2, "bye/x", seq.to_string())
            .await;
        match reason {
            v5::PubAckReason::Success => acked.push(seq),
            v5::PubAckReason::UnspecifiedError => refused_down += usize::from(restarted.is_none()),
            other => panic!("message {seq}: {other:?}"),
        }
        match &restarted {
            // Down for 10 messages: a's interest went with its goodbye.
            None if seq == 10 => {
                restarted = Some((ready_node(&nats, "a", &dir).await, Instant::now()));
            }
            None => {}
            Some(_) if acked.len() >= 10 => break,
            Some((_, at)) => assert!(
                at.elapsed() < Duration::from_secs(20),
                "refused 20 s after the restart"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let lost = never_delivered(b.addr, &id, EXPIRY, &acked).await;
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");
    assert_eq!(refused_down, 10, "every message refused while a was down");
    publisher.disconnect().await;
}

/// A persistent session whose node is killed is taken up by a survivor once that node falls
/// silent: what is published for it meanwhile, on any node, is queued there and reaches its
/// client when it comes back, here on the survivor that did not adopt it (a live hand-over from
/// the adopter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_sessions_are_adopted_and_queue_until_their_clients_return() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let dir = binary::scratch::Scratch::new("adopt");
    let mut a = ready_node(&nats, "a", &dir).await;
    let b = ready_node(&nats, "b", &dir).await;
    let c = ready_node(&nats, "c", &dir).await;
    let id5 = unique_id("adopt-v5");
    let id3 = unique_id("adopt-v3");
    let mut watcher = v5::connect(c.addr, &unique_id("adopt-will")).await;
    watcher.subscribe("gone/#", v5::QoS::AtLeastOnce).await;
    // The v5 subscriber's connection carries a will: it dies with node a.
    let mut connect = persistent_connect(V::V5, &id5);
    connect.will = Some(raw::Will::qos1("gone/v5", b"a died"));
    let (mut sub5, _) = Raw::connect(a.addr, &connect).await;
    sub5.subscribe(V::V5, "o5/#", 1).await;
    let sub3 = subscribed(a.addr, V::V311, &id3, "o3/#").await;
    tokio::time::sleep(SETTLE).await;
    a.child.kill().expect("SIGKILL node a");
    a.child.wait().expect("reaped");
    drop((sub5, sub3));

    let started = Instant::now();
    let adopter5 = adopted_by(&nats, &id5, "a").await;
    let adopter3 = adopted_by(&nats, &id3, "a").await;
    println!(
        "adopted by {adopter5} and {adopter3} {:?} after the kill",
        started.elapsed()
    );
    // The will of the connection that died with its node goes out once its session is adopted.
    let will = watcher.next_publish(WAIT).await;
    assert_eq!(
        (&will.topic[..], &will.payload[..]),
        (&b"gone/v5"[..], &b"a died"[..])
    );
    watcher.expect_no_publish(QUIET).await;
    // The adopter's subscriptions reach the other nodes' interest within milliseconds.
    tokio::time::sleep(SETTLE).await;
    let mut publisher = v5::connect(b.addr, &unique_id("adopt-pub")).await;
    for i in 0..5 {
        for topic in ["o5/x", "o3/x"] {
            publisher
                .publish_confirmed(topic, v5::QoS::AtLeastOnce, false, format!("m{i}"))
                .await;
        }
    }
    let elsewhere = |adopter: &str| if adopter == "b" { c.addr } else { b.addr };

    let mut back5 = v5::Client::connect(v5::persistent(elsewhere(&adopter5), &id5, EXPIRY)).await;
    assert!(back5.connack.session_present, "the v5 session was kept");
    let mut o = v3::options(elsewhere(&adopter3), &id3);
    o.set_clean_session(false);
    let mut back3 = v3::Client::connect(o).await;
    assert!(back3.connack.session_present, "the 3.1.1 session was kept");
    for i in 0..5 {
        let p = back5.next_publish(WAIT).await;
        assert_eq!(&p.payload[..], format!("m{i}").as_bytes(), "v5 message {i}");
        assert!(!p.dup, "v5 message {i} sent once");
        let p = back3.next_publish(WAIT).await;
        assert_eq!(
            &p.payload[..],
            format!("m{i}").as_bytes(),
            "3.1.1 message {i}"
        );
        assert!(!p.dup, "3.1.1 message {i} sent once");
    }
    back5.expect_no_publish(QUIET).await;
    back3.expect_no_publish(QUIET).await;
    back5.disconnect().await;
    back3.disconnect().await;
    publisher.disconnect().await;
    watcher.disconnect().await;
}

/// A node silent through a NATS outage and a few seconds after it (stopped here with SIGSTOP,
/// as a node slow to reconnect) keeps its sessions: the survivor, back on NATS at once, waits
/// for its own connection to be steady (15 s) before it adopts, and the node is heard again by
/// then. Its client stays connected, owner and will untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_late_back_from_a_nats_outage_keeps_its_sessions() {
    let Some(mut nats) = NatsServer::start().await else {
        return;
    };
    let dir = binary::scratch::Scratch::new("late");
    let a = ready_node(&nats, "a", &dir).await;
    let b = ready_node(&nats, "b", &dir).await;
    let id = unique_id("late");
    let mut connect = persistent_connect(V::V5, &id);
    connect.will = Some(raw::Will::qos1("late/gone", b"a died"));
    let (mut sub, _) = Raw::connect(a.addr, &connect).await;
    sub.subscribe(V::V5, "late/#", 1).await;
    let mut watcher = v5::connect(b.addr, &unique_id("late-will")).await;
    watcher.subscribe("late/gone", v5::QoS::AtLeastOnce).await;
    tokio::time::sleep(SETTLE).await;

    nats.kill();
    a.signal(libc::SIGSTOP);
    // Longer than the 5 s after which b takes a for gone.
    tokio::time::sleep(Duration::from_secs(7)).await;
    nats.start_again().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    a.signal(libc::SIGCONT);
    // Past b's 15 s of steady connection, and the scan it would then make.
    tokio::time::sleep(Duration::from_secs(16)).await;

    let (node, _) = owner_of(&nats, &id).await.expect("owned");
    assert_eq!(node, "a", "the session stayed with its node");
    watcher.expect_no_publish(QUIET).await;
    sub.ping().await;
    watcher.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_qos2_flow_survives_its_node_and_completes_once() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let dir = binary::scratch::Scratch::new("persist-q2");
    let mut a = ready_node(&nats, "a", &dir).await;
    let b = ready_node(&nats, "b", &dir).await;
    let mut watcher = v5::connect(b.addr, &unique_id("q2-watch")).await;
    watcher.subscribe("q2/#", v5::QoS::ExactlyOnce).await;
    // Until node a knows b's interest, a probe from a does not reach the watcher.
    let mut prober = v5::connect(a.addr, &unique_id("q2-probe")).await;
    let deadline = Instant::now() + WAIT;
    loop {
        prober
            .publish_confirmed("q2/probe", v5::QoS::AtLeastOnce, false, "probe")
            .await;
        if watcher
            .try_next_publish(Duration::from_millis(100))
            .await
            .is_some()
        {
            break;
        }
        assert!(Instant::now() < deadline, "b's interest never reached a");
    }
    prober.disconnect().await;
    while watcher
        .try_next_publish(Duration::from_millis(200))
        .await
        .is_some()
    {}

    let id = unique_id("q2-kill");
    let (mut on_a, _) = Raw::connect(a.addr, &persistent_connect(V::V5, &id)).await;
    on_a.send(&V::V5.publish(0x34, b"q2/once", Some(7), &[], b"once"))
        .await;
    let rec = on_a.expect_kind(0x50, WAIT).await;
    assert_eq!(&rec.body[..2], &[0, 7], "PUBREC for packet 7");
    tokio::time::sleep(SETTLE).await;
    a.child.kill().expect("SIGKILL node a");
    a.child.wait().expect("reaped");
    drop(on_a);

    let connect = persistent_connect(V::V5, &id);
    let connect = Connect {
        clean: false,
        ..connect
    };
    let (mut on_b, present) = Raw::connect(b.addr, &connect).await;
    assert!(present, "the session came back from JetStream");
    // The publisher did not see the PUBREC go through: it sends again, DUP set.
    on_b.send(&V::V5.publish(0x3C, b"q2/once", Some(7), &[], b"once"))
        .await;
    let rec = on_b.expect_kind(0x50, WAIT).await;
    assert_eq!(&rec.body[..2], &[0, 7], "PUBREC for the resend");
    on_b.send(&raw::packet(0x62, &[0, 7])).await;
    let comp = on_b.expect_kind(0x70, WAIT).await;
    assert_eq!(&comp.body[..2], &[0, 7], "PUBCOMP for packet 7");
    assert!(
        comp.body.len() == 2 || comp.body[2] == 0,
        "PUBCOMP reason {comp:?}"
    );
    let got = watcher.next_publish(WAIT).await;
    assert_eq!(&got.payload[..], b"once");
    watcher.expect_no_publish(QUIET).await;
    watcher.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puback_to_an_offline_persistent_session_waits_for_jetstream() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let dir = binary::scratch::Scratch::new("persist-ack");
    let mut a = ready_node(&nats, "a", &dir).await;
    let b = ready_node(&nats, "b", &dir).await;
    let id = unique_id("ack-wait");
    let sub = subscribed(a.addr, V::V5, &id, "aw/#").await;
    drop(sub);
    tokio::time::sleep(SETTLE).await;
    let mut publisher = v5::connect(a.addr, &unique_id("ack-pub")).await;
    // Its PUBACK comes once JetStream acked its record and every one before (the subscriber's
    // leaving): nothing of the store is in flight when nats-server stops below. (CI saw the
    // PUBACK of the next one within the pause once: a write left in flight fails meanwhile.)
    let warm = publisher.publish_acked("aw/warm", "warm").await;
    assert_eq!(warm, v5::PubAckReason::Success, "the first message stored");

    // JetStream does not answer: the message is routed, its PUBACK waits.
    nats.pause(true);
    let paused = Instant::now();
    let sent = tokio::spawn(async move {
        let mut publisher = publisher;
        let reason = publisher.publish_acked("aw/x", "kept").await;
        (publisher, reason, paused.elapsed())
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let early = sent.is_finished();
    nats.pause(false);
    // (A write whose ack timed out meanwhile is sent again after a pause: allow for it on a
    // loaded machine.)
    let (publisher, reason, after) = tokio::time::timeout(WAIT * 3, sent)
        .await
        .expect("PUBACK once JetStream answers")
        .expect("publisher task");
    assert!(
        !early,
        "PUBACK ({reason:?}) {after:?} after nats-server stopped, before JetStream stored the message"
    );
    assert_eq!(
        reason,
        v5::PubAckReason::Success,
        "stored once JetStream answered"
    );
    // Acknowledged: it outlives its node at once.
    a.child.kill().expect("SIGKILL node a");
    a.child.wait().expect("reaped");
    let mut back = v5::Client::connect(v5::persistent(b.addr, &id, EXPIRY)).await;
    assert!(back.connack.session_present);
    assert_eq!(&back.next_publish(WAIT).await.payload[..], b"warm");
    assert_eq!(&back.next_publish(WAIT).await.payload[..], b"kept");
    back.expect_no_publish(QUIET).await;
    back.disconnect().await;
    drop(publisher);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_persistent_sessions_records_are_batched_and_compacted() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let dir = binary::scratch::Scratch::new("persist-compact");
    // The publisher runs ahead of the subscriber (its PUBACKs wait only for the store): the
    // whole burst may queue.
    let a =
        cluster_node::ready_node_with(&nats, "a", &dir, "[mqtt]\nmax_queued_messages = 10000\n")
            .await;
    let id = unique_id("busy");
    let mut sub = v5::Client::connect(v5::persistent(a.addr, &id, EXPIRY)).await;
    sub.subscribe("busy/#", v5::QoS::AtLeastOnce).await;
    let publisher = v5::connect(a.addr, &unique_id("busy-pub")).await;
    // Each message is three records (queued, sent, settled): 18,000 records, ~2 MB, without
    // compaction.
    const N: usize = 6_000;
    for i in 0..N {
        publisher
            .publish("busy/x", v5::QoS::AtLeastOnce, false, format!("b{i:060}"))
            .await;
    }
    for i in 0..N {
        let p = sub.next_publish(WAIT).await;
        assert_eq!(&p.payload[..], format!("b{i:060}").as_bytes());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let client = async_nats::connect(nats.url()).await.expect("NATS connect");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("gateway_state").await.expect("state stream");
    // Every stream message ever written, purged ones included: the records that were queued
    // together went out as one message per subject.
    let written = stream
        .info()
        .await
        .expect("stream info")
        .state
        .last_sequence;
    println!("stream messages written for {N} messages (3 records each): {written}");
    assert!(
        written < N as u64,
        "{written} stream messages for {N} messages"
    );
    let subject = format!("gateway.state.c{}", URL_SAFE_NO_PAD.encode(&id));
    let mut counts = stream.info_with_subjects(&subject).await.expect("info");
    let mut records = 0;
    while let Some((_, n)) = futures_util::TryStreamExt::try_next(&mut counts)
        .await
        .expect("subject counts")
    {
        records += n;
    }
    println!("records left on the session's subject after {N} messages: {records}");
    // 256 KiB of records (subject, message id, payload: ~130 B each here) since the last
    // snapshot, and the snapshot.
    assert!(records > 0 && records < 4_000, "{records} records");
    // The compacted session still reads back whole: nothing pending, its subscription kept.
    sub.disconnect().await;
    drop(publisher);
    // A publisher of its own: the first one's confirmations may still be on their way.
    let mut publisher = v5::connect(a.addr, &unique_id("busy-pub2")).await;
    publisher
        .publish_confirmed("busy/y", v5::QoS::AtLeastOnce, false, "after")
        .await;
    drop(a);
    let b = ready_node(&nats, "b", &dir).await;
    let mut back = v5::Client::connect(v5::persistent(b.addr, &id, EXPIRY)).await;
    assert!(back.connack.session_present);
    assert_eq!(&back.next_publish(WAIT).await.payload[..], b"after");
    back.expect_no_publish(QUIET).await;
    back.disconnect().await;
}
