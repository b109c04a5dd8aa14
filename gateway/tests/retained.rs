//! Retained messages: stored per topic and delivered with the RETAIN flag to new subscribers,
//! cleared by an empty retained publish, replaced by a newer one; v5 Retain As Published (flag
//! kept or cleared on live delivery) and Retain Handling 0/1/2; and a 100,000-topic retained flood
//! to one subscriber that must not stall another client's QoS 1 round trips.

mod clients;
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clients::raw::{self, Raw, V};
use clients::{unique_id, v3, v5, within, WAIT};
use common::TestBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_is_delivered_to_a_new_subscriber_with_the_retain_flag() {
    let broker = TestBroker::start().await;
    let mut publ = v3::connect(broker.addr, &unique_id("pub")).await;
    publ.publish_confirmed("ret/a", v3::QoS::AtLeastOnce, true, "kept")
        .await;

    let mut sub = v3::connect(broker.addr, &unique_id("sub")).await;
    sub.subscribe("ret/+", v3::QoS::ExactlyOnce).await;
    let p = sub.next_publish(WAIT).await;
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("ret/a", &b"kept"[..]));
    assert!(
        p.retain,
        "a message sent because of a subscribe carries RETAIN"
    );
    assert_eq!(
        p.qos,
        v3::QoS::AtLeastOnce,
        "min(stored QoS, subscription QoS)"
    );

    // Live traffic to the same subscriber, even a retained publish, arrives without the flag.
    publ.publish("ret/a", v3::QoS::AtLeastOnce, true, "live")
        .await;
    let p = sub.next_publish(WAIT).await;
    assert_eq!(&p.payload[..], b"live");
    assert!(!p.retain, "3.1.1 live delivery must clear RETAIN");

    // A v5 subscriber gets the stored message the same way.
    let mut sub5 = v5::connect(broker.addr, &unique_id("sub5")).await;
    sub5.subscribe("ret/a", v5::QoS::AtMostOnce).await;
    let p = sub5.next_publish(WAIT).await;
    assert_eq!(&p.payload[..], b"live", "the newest retained message");
    assert!(p.retain);
    assert_eq!(p.qos, v5::QoS::AtMostOnce);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_retained_publish_clears_and_a_newer_one_replaces() {
    let broker = TestBroker::start().await;
    let mut publ = v3::connect(broker.addr, &unique_id("pub")).await;
    publ.publish_confirmed("clr/gone", v3::QoS::AtLeastOnce, true, "old")
        .await;
    publ.publish_confirmed("clr/gone", v3::QoS::AtLeastOnce, true, Vec::new())
        .await;
    publ.publish_confirmed("clr/kept", v3::QoS::AtLeastOnce, true, "v1")
        .await;
    publ.publish_confirmed("clr/kept", v3::QoS::AtLeastOnce, true, "v2")
        .await;

    let mut sub = v3::connect(broker.addr, &unique_id("sub")).await;
    sub.subscribe("clr/#", v3::QoS::AtLeastOnce).await;
    let p = sub.next_publish(WAIT).await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("clr/kept", &b"v2"[..]),
        "only the replacement survives; the cleared topic sends nothing"
    );
    sub.expect_no_publish(Duration::from_millis(300)).await;

    // The clearing publish itself is forwarded to live subscribers (with its empty payload).
    publ.publish("clr/gone", v3::QoS::AtLeastOnce, true, Vec::new())
        .await;
    let p = sub.next_publish(WAIT).await;
    assert_eq!(p.topic, "clr/gone");
    assert!(p.payload.is_empty());
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_as_published_keeps_or_clears_the_flag_on_live_delivery() {
    let broker = TestBroker::start().await;
    let mut keep = v5::connect(broker.addr, &unique_id("rap")).await;
    let mut f = v5::Filter::new("rap/t", v5::QoS::AtLeastOnce);
    f.preserve_retain = true;
    keep.subscribe_with(f, None).await;
    let mut clear = v5::connect(broker.addr, &unique_id("norap")).await;
    clear.subscribe("rap/t", v5::QoS::AtLeastOnce).await;

    let publ = v5::connect(broker.addr, &unique_id("pub")).await;
    publ.publish("rap/t", v5::QoS::AtLeastOnce, true, "r").await;
    publ.publish("rap/t", v5::QoS::AtLeastOnce, false, "n")
        .await;

    let p = keep.next_publish(WAIT).await;
    assert!(p.retain, "Retain As Published: RETAIN kept");
    let p = keep.next_publish(WAIT).await;
    assert!(
        !p.retain,
        "Retain As Published: a non-retained message stays unflagged"
    );
    let p = clear.next_publish(WAIT).await;
    assert!(!p.retain, "without Retain As Published the flag is cleared");
    let p = clear.next_publish(WAIT).await;
    assert!(!p.retain);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_handling_0_1_2() {
    let broker = TestBroker::start().await;
    let mut publ = v5::connect(broker.addr, &unique_id("pub")).await;
    publ.publish_confirmed("rh/t", v5::QoS::AtLeastOnce, true, "stored")
        .await;

    let filter = |rule| {
        let mut f = v5::Filter::new("rh/t", v5::QoS::AtLeastOnce);
        f.retain_forward_rule = rule;
        f
    };

    // 0: on every subscribe, including a repeated one.
    let mut c0 = v5::connect(broker.addr, &unique_id("rh0")).await;
    for round in 0..2 {
        c0.subscribe_with(filter(v5::RetainForwardRule::OnEverySubscribe), None)
            .await;
        let p = c0.next_publish(WAIT).await;
        assert!(
            p.retain && &p.payload[..] == b"stored",
            "rh=0 subscribe #{round}"
        );
    }

    // 1: only when the subscription is new.
    let mut c1 = v5::connect(broker.addr, &unique_id("rh1")).await;
    c1.subscribe_with(filter(v5::RetainForwardRule::OnNewSubscribe), None)
        .await;
    let p = c1.next_publish(WAIT).await;
    assert!(
        p.retain && &p.payload[..] == b"stored",
        "rh=1 new subscription"
    );
    c1.subscribe_with(filter(v5::RetainForwardRule::OnNewSubscribe), None)
        .await;

    // 2: never.
    let mut c2 = v5::connect(broker.addr, &unique_id("rh2")).await;
    c2.subscribe_with(filter(v5::RetainForwardRule::Never), None)
        .await;

    // A live message marks the end: nothing retained may come before it.
    publ.publish("rh/t", v5::QoS::AtLeastOnce, false, "live")
        .await;
    let p = c1.next_publish(WAIT).await;
    assert_eq!(
        &p.payload[..],
        b"live",
        "rh=1 resent retained on a repeated subscribe"
    );
    let p = c2.next_publish(WAIT).await;
    assert_eq!(&p.payload[..], b"live", "rh=2 sent a retained message");
    let p = c0.next_publish(WAIT).await;
    assert_eq!(&p.payload[..], b"live");
    broker.shutdown().await;
}

/// 100,000 retained topics, one subscriber to all of them, and a third client whose QoS 1 round
/// trips (publish -> PUBACK, and the echo of its own subscription) are timed during the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_retained_to_one_subscriber_while_others_stay_responsive() {
    const N: usize = 100_000;
    const RTT_LIMIT: Duration = Duration::from_millis(500);
    let broker = TestBroker::start().await;

    // Store: one raw 3.1.1 publisher writes all of them back to back; the PINGRESP after them
    // proves the broker has handled (and so stored) every one.
    let started = Instant::now();
    let (mut publ, _) = Raw::connect(broker.addr, &raw::Connect::v311("flood-pub", true, 0)).await;
    let mut burst = bytes::BytesMut::with_capacity(N * 32);
    for i in 0..N {
        let topic = format!("sensors/{i}/temp");
        burst.extend_from_slice(&V::V311.publish(
            0x31,
            topic.as_bytes(),
            None,
            &[],
            &(i as u32).to_be_bytes(),
        ));
    }
    burst.extend_from_slice(&raw::encode_pingreq());
    within(
        Duration::from_secs(30),
        "writing 100,000 retained publishes",
        publ.stream_write(&burst),
    )
    .await;
    let f = publ
        .expect_kind(raw::PINGRESP, Duration::from_secs(30))
        .await;
    assert_eq!(f.kind(), raw::PINGRESP);
    let stored_in = started.elapsed();

    // The probe: a separate client doing QoS 1 round trips to itself.
    let mut probe = v3::connect(broker.addr, &unique_id("probe")).await;
    probe.subscribe("probe/rtt", v3::QoS::AtLeastOnce).await;
    let flooding = Arc::new(AtomicBool::new(true));
    let probe_task = {
        let flooding = flooding.clone();
        tokio::spawn(async move {
            let mut acks = Vec::new();
            let mut echoes = Vec::new();
            let mut n = 0u32;
            while flooding.load(Ordering::Acquire) {
                let t0 = Instant::now();
                probe
                    .publish_confirmed(
                        "probe/rtt",
                        v3::QoS::AtLeastOnce,
                        false,
                        n.to_be_bytes().to_vec(),
                    )
                    .await;
                acks.push(t0.elapsed());
                let p = probe.next_publish(WAIT).await;
                assert_eq!(&p.payload[..], &n.to_be_bytes(), "probe echo out of order");
                echoes.push(t0.elapsed());
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (acks, echoes)
        })
    };

    // The subscriber: raw, QoS 0, counting every retained topic exactly once.
    let t_sub = Instant::now();
    let (mut sub, _) = Raw::connect(broker.addr, &raw::Connect::v311("flood-sub", true, 0)).await;
    sub.send(&V::V311.subscribe("sensors/#", 0)).await;
    let mut seen = vec![false; N];
    let mut received = 0usize;
    let mut suback = false;
    let all_arrived = tokio::time::timeout(Duration::from_secs(60), async {
        while received < N {
            let Some(f) = sub.read_frame().await else {
                panic!("subscriber connection closed after {received} retained messages");
            };
            if f.kind() == raw::SUBACK {
                suback = true;
                continue;
            }
            let p = raw::publish_of(&f, V::V311);
            assert!(p.retain, "retained delivery without RETAIN: {}", p.topic);
            let i: usize = p
                .topic
                .strip_prefix("sensors/")
                .and_then(|t| t.strip_suffix("/temp"))
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("unexpected topic {}", p.topic));
            assert_eq!(
                &p.payload[..],
                &(i as u32).to_be_bytes(),
                "payload of {}",
                p.topic
            );
            assert!(!seen[i], "{} delivered twice", p.topic);
            seen[i] = true;
            received += 1;
        }
    })
    .await;
    if all_arrived.is_err() {
        panic!(
            "only {received} of {N} retained messages arrived within 60 s (stored in {stored_in:?}, \
             SUBACK seen: {suback})"
        );
    }
    let delivered_in = t_sub.elapsed();
    flooding.store(false, Ordering::Release);
    let (acks, echoes) = within(WAIT * 2, "the probe to stop", probe_task)
        .await
        .expect("probe task");
    assert!(suback, "no SUBACK before the retained messages ended");
    assert_eq!(received, N);

    let stats = |v: &[Duration]| {
        let mut s = v.to_vec();
        s.sort();
        let pick = |q: f64| {
            s.get(((s.len() as f64 - 1.0) * q) as usize)
                .copied()
                .unwrap_or_default()
        };
        (
            s.len(),
            pick(0.5),
            pick(0.99),
            s.last().copied().unwrap_or_default(),
        )
    };
    let (n_ack, med_ack, p99_ack, max_ack) = stats(&acks);
    let (_, med_echo, p99_echo, max_echo) = stats(&echoes);
    println!(
        "retained flood: stored {N} in {stored_in:?}; delivered to one subscriber in {delivered_in:?}; \
         probe round trips during the flood: {n_ack}; PUBACK median {med_ack:?} p99 {p99_ack:?} max {max_ack:?}; \
         echo median {med_echo:?} p99 {p99_echo:?} max {max_echo:?}"
    );
    assert!(
        n_ack > 0,
        "the probe completed no round trip during the flood"
    );
    assert!(
        max_ack < RTT_LIMIT && max_echo < RTT_LIMIT,
        "another client's QoS 1 round trip stalled during the retained flood: PUBACK max {max_ack:?}, \
         echo max {max_echo:?} (limit {RTT_LIMIT:?})"
    );
    broker.shutdown().await;
}
