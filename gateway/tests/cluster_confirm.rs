//! A client's QoS 1/2 message that its node sends to other nodes is acknowledged only once the
//! node has written it to NATS: a node killed before then must not have acknowledged what it
//! still held. The link's confirmation that a batch is written is held with the
//! `fault-injection` switch (process-wide, hence this file of its own), over a real
//! nats-server: the PUBACK waits while the message itself still reaches the other node, goes
//! out once the confirmation comes, and becomes a refusal (v5 0x80, 3.1.1 closed) when it does
//! not come in time. A message no other node wants is acknowledged at once all along.
//!
//! Likewise a message for the persistent sessions of a node that died is refused, not
//! acknowledged, until a survivor has adopted them (held with the adoption switch here). And a
//! node too busy to take messages from the others in (held with a third switch) has them
//! dropped by its NATS client beyond its subscriptions' capacity: counted, not silent.
//!
//! Without `nats-server` the tests are skipped with a loud message, and fail under CI.

mod binary;
mod clients;
mod cluster_node;
mod common;
mod observe;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clients::raw::{self, publish_of, End, Frame, Raw, PUBACK, PUBLISH, V};
use clients::{unique_id, v5, WAIT};
use cluster_node::{cluster_ready, never_delivered, owner_of, ready_node_with};
use common::nats::NatsServer;
use observe::{samples, total, Observed};

async fn metric(node: &Observed, name: &str) -> f64 {
    total(&samples(&node.metrics().await), name, &[])
}

const REFUSED: &str = "gateway_cluster_messages_refused_total";

/// `name`'s series with `reason` on `node`.
async fn reason_count(node: &Observed, name: &str, reason: &str) -> f64 {
    let label = format!("reason=\"{reason}\"");
    total(&samples(&node.metrics().await), name, &[&label])
}

/// The reason code of a v5 PUBACK (absent: success), checking its packet id.
fn reason(f: &Frame, id: u16) -> u8 {
    assert_eq!(f.kind(), PUBACK, "{f:?}");
    assert_eq!(&f.body[..2], &id.to_be_bytes(), "{f:?}");
    f.body.get(2).copied().unwrap_or(0)
}

fn publish(v: V, topic: &str, id: u16, payload: &[u8]) -> Vec<u8> {
    v.publish(PUBLISH | 0x02, topic.as_bytes(), Some(id), &[], payload)
}

/// In-process nodes `names` on `nats`, with client `id` on the second (a persistent v5
/// session when `persistent`) subscribed to `filter` at `qos`, once the first knows of it.
async fn nodes_and_subscriber(
    nats: &NatsServer,
    names: [&str; 2],
    (id, persistent): (&str, bool),
    filter: &str,
    qos: u8,
) -> (Observed, Observed, Raw) {
    let a = Observed::cluster_node(&nats.url(), names[0], |_| {}).await;
    let b = Observed::cluster_node(&nats.url(), names[1], |_| {}).await;
    let mut connect = raw::Connect::v5(id, true, 60);
    if persistent {
        connect.properties = raw::prop_u32(0x11, 300);
    }
    let (mut sub, _) = Raw::connect(b.mqtt, &connect).await;
    sub.subscribe(V::V5, filter, qos).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metric(&a, "gateway_cluster_remote_interest").await != 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never saw {filter} on {}",
            names[0],
            names[1]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (a, b, sub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_to_other_nodes_is_acknowledged_once_nats_has_it() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let (a, _b, mut sub) =
        nodes_and_subscriber(&nats, ["a", "b"], ("cc-sub", false), "cc/#", 0).await;
    let mut p = Raw::connected(a.mqtt, V::V5, "cc-pub").await;
    p.send(&publish(V::V5, "cc/1", 1, b"one")).await;
    assert_eq!(reason(&p.expect_packet("PUBACK 1").await, 1), 0);
    assert_eq!(
        publish_of(&sub.expect_packet("one").await, V::V5).payload,
        b"one"
    );

    gateway::fault::set_cluster_flush_held(Some("a"));
    p.send(&publish(V::V5, "cc/2", 2, b"two")).await;
    // The message goes out; its acknowledgement waits for the link to say it is written.
    assert_eq!(
        publish_of(&sub.expect_packet("two").await, V::V5).payload,
        b"two"
    );
    assert!(
        p.read_packet_within(Duration::from_millis(500))
            .await
            .is_err(),
        "acknowledged before the link confirmed the write"
    );
    assert_eq!(
        metric(&a, "gateway_cluster_unconfirmed_messages").await,
        1.0
    );
    // A message no other node wants is not held, behind the held one or on its own.
    let mut local = Raw::connected(a.mqtt, V::V5, "cc-local").await;
    local.send(&publish(V::V5, "alone/1", 7, b"x")).await;
    assert_eq!(reason(&local.expect_packet("PUBACK 7").await, 7), 0);
    gateway::fault::set_cluster_flush_held(None);
    assert_eq!(reason(&p.expect_packet("PUBACK 2").await, 2), 0);
    assert_eq!(
        metric(&a, "gateway_cluster_unconfirmed_messages").await,
        0.0
    );

    // Not confirmed in time (5 s): refused, so the publisher sends again; a 3.1.1 publisher
    // has no refusal to be told and is disconnected.
    gateway::fault::set_cluster_flush_held(Some("a"));
    p.send(&publish(V::V5, "cc/3", 3, b"three")).await;
    let mut old = Raw::connected(a.mqtt, V::V311, "cc-old").await;
    old.send(&publish(V::V311, "cc/4", 4, b"four")).await;
    let refused = p
        .read_packet_within(Duration::from_secs(8))
        .await
        .expect("PUBACK 3");
    assert_eq!(reason(&refused, 3), 0x80);
    assert_eq!(
        old.read_packet_within(Duration::from_secs(2)).await,
        Err(End::Closed),
        "a 3.1.1 publisher is closed, not acknowledged"
    );
    gateway::fault::set_cluster_flush_held(None);
    let closed = reason_count(
        &a,
        "gateway_connections_closed_total",
        "cluster_unconfirmed",
    );
    assert_eq!(closed.await, 1.0);
    let refused = reason_count(&a, REFUSED, "unconfirmed");
    assert_eq!(refused.await, 2.0, "the v5 refusal and the 3.1.1 close");
    p.send(&publish(V::V5, "cc/3", 5, b"three")).await;
    assert_eq!(reason(&p.expect_packet("PUBACK 5").await, 5), 0);
}

/// What is published for a dead node's persistent session after its interest expired (5 s
/// after its last beat) and before a survivor adopted the session has nowhere safe to go: it
/// is refused to its publisher (v5 0x80), never acknowledged and lost. Before the expiry the
/// dead node's missing answer refuses it; after the adoption the adopter queues it. The client,
/// back after the adoption, gets every message that was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_for_a_dead_nodes_session_before_its_adoption_is_refused_not_lost() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let dir = binary::scratch::Scratch::new("owed");
    let mut a = ready_node_with(&nats, "a", &dir, "").await;
    let b = Observed::cluster_node(&nats.url(), "b", |_| {}).await;
    cluster_ready(&nats, b.mqtt).await;
    let id = unique_id("owed");
    let mut connect = raw::Connect::v5(&id, true, 60);
    connect.properties = raw::prop_u32(0x11, 300);
    let (mut sub, _) = Raw::connect(a.addr, &connect).await;
    sub.subscribe(V::V5, "owed/#", 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    gateway::fault::set_adoption_held(true);
    a.child.kill().expect("SIGKILL node a");
    a.child.wait().expect("reaped");
    drop(sub);
    let killed = Instant::now();

    // Held for 8 s: a's interest expires after 5, so 3 s of it are the window.
    const HELD: Duration = Duration::from_secs(8);
    let mut publisher = v5::connect(b.mqtt, &unique_id("owed-pub")).await;
    let (mut acked, mut refused_held, mut acked_after) = (Vec::new(), 0, 0);
    // Acknowledged while the session had no home: what this test is about.
    let mut homeless = Vec::new();
    let mut adopted = false;
    for seq in 0u32.. {
        let held = killed.elapsed() < HELD;
        let reason = publisher
            .publish_acked_within(WAIT * 2, "owed/x", seq.to_string())
            .await;
        match reason {
            v5::PubAckReason::Success => {
                if held {
                    homeless.push(seq);
                }
                acked.push(seq);
                acked_after += usize::from(adopted);
            }
            v5::PubAckReason::UnspecifiedError => {
                refused_held += usize::from(held);
            }
            other => panic!("message {seq}: {other:?}"),
        }
        if !held && !adopted {
            gateway::fault::set_adoption_held(false);
            adopted = owner_of(&nats, &id)
                .await
                .is_some_and(|(node, _)| node != "a");
        }
        if acked_after >= 20 {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "not adopted in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{} acknowledged, {refused_held} refused while adoption was held",
        acked.len()
    );

    // The first message waited for the dead node's answer; the others found its entries owed
    // (some after the hold too, until the adoption was done).
    assert_eq!(reason_count(&b, REFUSED, "unanswered").await, 1.0);
    assert!(reason_count(&b, REFUSED, "owed").await >= (refused_held - 1) as f64);

    let lost = never_delivered(b.mqtt, &id, 300, &acked).await;
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");
    assert!(homeless.is_empty(), "acknowledged while owed: {homeless:?}");
    assert!(
        refused_held >= 10,
        "refused between expiry and adoption: {refused_held}"
    );
    publisher.disconnect().await;
}

/// A node that does not take messages from the others in fast enough: its NATS client keeps
/// 8,192 per subscription and drops the rest as a slow consumer, counted as
/// `gateway_cluster_messages_dropped_total{reason="slow_consumer"}` (a lower bound: the client
/// may drop some of its own events about it too). A QoS 1 message for a persistent session
/// there, dropped that way, is refused to its publisher, not covered by the node's answer for
/// a later one: the tally in the later one shows the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_a_busy_node_cannot_take_in_are_counted_as_slow_consumer_drops() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let names = ["fast-a", "slow-b"];
    let (a, b, _sub) = nodes_and_subscriber(&nats, names, ("slow-sub", true), "flood/#", 1).await;
    const DROPPED: &str = "gateway_cluster_messages_dropped_total";
    assert_eq!(reason_count(&b, DROPPED, "slow_consumer").await, 0.0);

    gateway::fault::set_cluster_receive_held(Some("slow-b"));
    // The hold takes effect when b's link next looks at its work (at the latest its next beat).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    const SENT: usize = 12_000;
    let mut p = Raw::connected(a.mqtt, V::V5, "flood-pub").await;
    let one = V::V5.publish(PUBLISH, b"flood/x", None, &[], b"m");
    p.send(&one.repeat(SENT)).await;
    let at_least = |node, name, n: usize| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while metric(node, name).await < n as f64 {
            assert!(tokio::time::Instant::now() < deadline, "{name} never {n}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    // Everything reached nats-server (a's own sent count), and piled up at b.
    at_least(&a, "gateway_cluster_messages_sent_total", SENT).await;
    // Then a QoS 1 message for the persistent subscriber, which b's client drops too.
    let mut q = Raw::connected(a.mqtt, V::V5, "flood-q").await;
    q.send(&publish(V::V5, "flood/q", 1, b"dropped")).await;
    at_least(&a, "gateway_cluster_messages_sent_total", SENT + 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    gateway::fault::set_cluster_receive_held(None);
    // Once b has taken in what its client kept, the next one comes through; b's answer for it
    // must not cover the one it missed.
    at_least(&b, "gateway_cluster_messages_received_total", 8192).await;
    q.send(&publish(V::V5, "flood/q", 2, b"taken")).await;
    let mut reasons = BTreeMap::new();
    for _ in 0..2 {
        let f = q
            .read_packet_within(Duration::from_secs(8))
            .await
            .expect("a PUBACK");
        let id = u16::from_be_bytes([f.body[0], f.body[1]]);
        reasons.insert(id, reason(&f, id));
    }
    assert_eq!(
        reasons,
        BTreeMap::from([(1, 0x80), (2, 0)]),
        "the missed message refused, the next acknowledged"
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let counted = loop {
        let counted = reason_count(&b, DROPPED, "slow_consumer").await;
        if counted > 0.0 || tokio::time::Instant::now() > deadline {
            break counted;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The QoS 1 message was one of them.
    let beyond = SENT + 1 - 8192;
    println!("{counted} slow-consumer drops counted of {beyond} beyond capacity");
    assert!(
        (1.0..=beyond as f64).contains(&counted),
        "{counted} counted"
    );
}

/// A shared group's message goes to one member node, picked by NATS's queue group: when a
/// persistent session is among the members on other nodes, the publisher's acknowledgement
/// waits for the node that took it to say so (its store holds it), as for a persistent
/// subscriber of its own; while that node is held from taking it in, nothing is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_message_for_a_persistent_member_waits_for_the_node_that_took_it() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let names = ["share-a", "share-b"];
    let member = ("share-member", true);
    let (a, _b, mut member) = nodes_and_subscriber(&nats, names, member, "$share/g/sh/#", 1).await;
    // Until b announced the member as persistent: the next publish asks b for an answer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut p = Raw::connected(a.mqtt, V::V5, "share-pub").await;
    gateway::fault::set_cluster_receive_held(Some("share-b"));
    // The hold takes effect when b's link next looks at its work (at the latest its next beat).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    p.send(&publish(V::V5, "sh/x", 1, b"kept")).await;
    let early = p.read_packet_within(Duration::from_secs(1)).await;
    gateway::fault::set_cluster_receive_held(None);
    assert!(
        early.is_err(),
        "acknowledged before b took it in: {early:?}"
    );
    assert_eq!(reason(&p.expect_packet("PUBACK 1").await, 1), 0);
    let got = member.expect_packet("the group's message").await;
    assert_eq!(publish_of(&got, V::V5).payload, b"kept");
}
