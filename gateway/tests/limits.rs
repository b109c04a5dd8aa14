//! Overload protection (`[limits]`) with real clients: each limit is driven past its bound over
//! raw sockets or rumqttc, the answer checked to the reason code (or the bare close), the
//! clients already connected checked to be unaffected, and the refusal found in `/metrics`.

mod clients;
mod observe;

use std::time::{Duration, Instant};

use clients::raw::{packet, string, End, Raw, V};
use clients::{unique_id, v5, within, QUIET, WAIT};
use observe::{samples, total, Observed};

const SERVER_BUSY: u8 = 0x89;
const TOPIC_FILTER_INVALID: u8 = 0x8F;
const TOPIC_NAME_INVALID: u8 = 0x90;
const MESSAGE_RATE_TOO_HIGH: u8 = 0x96;
const QUOTA_EXCEEDED: u8 = 0x97;

/// A broker with HTTP on, `$SYS` off (its QoS 0 messages would blur the counts) and `tune`.
async fn broker(tune: impl FnOnce(&mut gateway::Config)) -> Observed {
    Observed::start(|c| {
        c.sys.interval = 0;
        tune(c);
    })
    .await
}

/// The sum of a metric's samples whose labels contain `label` (e.g. `"\"memory\""`).
async fn metric(obs: &Observed, name: &str, label: &str) -> f64 {
    let text = obs.metrics().await;
    let labels: &[&str] = if label.is_empty() { &[] } else { &[label] };
    total(&samples(&text), name, labels)
}

/// Waits (within `WAIT`) for a metric to reach `want`, returning its last value.
async fn metric_reaches(obs: &Observed, name: &str, label: &str, want: f64) -> f64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = metric(obs, name, label).await;
        if v >= want || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens a socket, sends a CONNECT and reports the answer: `Ok(raw)` on a successful CONNACK,
/// `Err(Some(code))` on a refusing CONNACK, `Err(None)` when closed without one.
async fn try_connect(addr: std::net::SocketAddr, v: V, id: &str) -> Result<Raw, Option<u8>> {
    let mut raw = Raw::open(addr).await;
    raw.send_lenient(&v.connect(id)).await;
    match raw.read_packet().await {
        Ok(f) if f.first == 0x20 && f.body.get(1) == Some(&0) => Ok(raw),
        Ok(f) if f.first == 0x20 => Err(f.body.get(1).copied()),
        Ok(f) => panic!("{id}: expected CONNACK, got {f:?}"),
        Err(End::Closed) => Err(None),
        Err(End::Silent) => panic!("{id}: neither CONNACK nor close within {WAIT:?}"),
    }
}

/// A SUBSCRIBE (packet id 7) of several filters at QoS 0.
fn subscribe_many(v: V, filters: &[&str]) -> Vec<u8> {
    let mut body = vec![0, 7];
    body.extend_from_slice(v.no_props());
    for f in filters {
        body.extend(string(f.as_bytes()));
        body.push(0);
    }
    packet(0x82, &body)
}

/// The SUBACK's reason codes.
async fn suback_codes(raw: &mut Raw, v: V) -> Vec<u8> {
    let f = raw.expect_kind(clients::raw::SUBACK, WAIT).await;
    // Packet id, then (v5) the property length, which the broker sends as 0 here.
    let skip = if v.is_v5() { 3 } else { 2 };
    f.body[skip..].to_vec()
}

/// Proves a connected raw client is still served both ways: subscribe, publish, receive.
async fn still_served(raw: &mut Raw, v: V, topic: &str) {
    raw.subscribe(v, topic, 0).await;
    raw.send(&v.publish(0x30, topic.as_bytes(), None, &[], b"alive"))
        .await;
    let f = raw.expect_kind(clients::raw::PUBLISH, WAIT).await;
    assert!(f.body.ends_with(b"alive"), "{f:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_are_closed_and_existing_ones_unaffected() {
    let obs = broker(|c| c.limits.max_connections = 3).await;
    let mut held = Vec::new();
    for n in 0..3 {
        let v = if n % 2 == 0 { V::V311 } else { V::V5 };
        held.push((v, Raw::connected(obs.mqtt, v, &format!("maxc-{n}")).await));
    }
    for n in 0..5 {
        let refused = try_connect(obs.mqtt, V::V5, &format!("maxc-extra-{n}")).await;
        assert_eq!(
            refused.err(),
            Some(None),
            "extra client {n} not closed at once"
        );
    }
    assert_eq!(
        metric_reaches(
            &obs,
            "gateway_connections_rejected_total",
            "\"max_connections\"",
            5.0
        )
        .await,
        5.0
    );
    for (i, (v, raw)) in held.iter_mut().enumerate() {
        still_served(raw, *v, &format!("maxc/{i}")).await;
    }
    // One leaves: a newcomer gets its place.
    held.pop();
    let mut admitted = None;
    for attempt in 0..100 {
        if let Ok(raw) = try_connect(obs.mqtt, V::V311, &format!("maxc-again-{attempt}")).await {
            admitted = Some(raw);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    admitted.expect("admitted after a client left").ping().await;
    obs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_rate_paces_a_storm_and_refuses_what_would_wait_too_long() {
    const RATE: u32 = 100;
    const BURST: u32 = 10;
    const STORM: usize = 200;
    let obs = broker(|c| {
        c.limits.connect_rate = RATE;
        c.limits.connect_burst = BURST;
    })
    .await;
    let addr = obs.mqtt;
    let start = Instant::now();
    let attempts: Vec<_> = (0..STORM)
        .map(|n| {
            tokio::spawn(async move {
                let outcome = try_connect(addr, V::V311, &format!("storm-{n}")).await;
                (outcome.map_err(|code| (n, code)), start.elapsed())
            })
        })
        .collect();
    let mut admitted = Vec::new();
    let mut refused = Vec::new();
    let mut last_refused = Duration::ZERO;
    for a in attempts {
        match a.await.expect("attempt task") {
            (Ok(raw), at) => admitted.push((raw, at)),
            (Err((n, code)), at) => {
                assert_eq!(code, None, "storm-{n}: refusal must be a bare close");
                refused.push(n);
                last_refused = last_refused.max(at);
            }
        }
    }
    let last = admitted
        .iter()
        .map(|(_, at)| *at)
        .max()
        .expect("someone admitted");
    let early = admitted
        .iter()
        .filter(|(_, at)| *at < Duration::from_millis(500))
        .count();
    eprintln!(
        "{} admitted (last after {last:?}, {early} within 0.5 s), {} refused",
        admitted.len(),
        refused.len()
    );
    // The burst at once, then RATE per second for at most one second of waiting. On a loaded
    // machine the accept loop takes a while to take in the whole storm, and every slot that
    // elapses meanwhile is granted too: the last refusal marks when the storm was all accepted.
    let expected = (BURST + RATE) as usize;
    let accept_spread = (last_refused.as_secs_f64() * f64::from(RATE)).ceil() as usize;
    eprintln!("last refusal after {last_refused:?}");
    assert!(
        admitted.len() >= expected - 15 && admitted.len() <= expected + accept_spread + 5,
        "{} admitted; expected about {expected} (+{accept_spread} while the storm was accepted)",
        admitted.len()
    );
    assert!(
        last >= Duration::from_millis(900),
        "the paced clients were all served after {last:?}"
    );
    assert!(
        early <= BURST as usize + RATE as usize / 2 + 5,
        "{early} served within 0.5 s: not smoothed"
    );
    assert_eq!(
        metric_reaches(
            &obs,
            "gateway_connections_rejected_total",
            "\"connect_rate\"",
            refused.len() as f64
        )
        .await,
        refused.len() as f64
    );
    // The refused clients retry on a backoff and all get in.
    within(
        Duration::from_secs(15),
        "every refused client to get in",
        async {
            let mut pending = refused;
            let mut backoff = Duration::from_millis(300);
            while !pending.is_empty() {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                let mut still = Vec::new();
                for n in pending {
                    match try_connect(addr, V::V311, &format!("storm-{n}")).await {
                        Ok(raw) => admitted.push((raw, start.elapsed())),
                        Err(_) => still.push(n),
                    }
                }
                pending = still;
            }
        },
    )
    .await;
    assert_eq!(admitted.len(), STORM);
    obs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_in_flight_are_bounded() {
    let obs = broker(|c| {
        c.limits.max_handshakes = 5;
        c.limits.connect_rate = 0;
    })
    .await;
    // Connected clients are past their handshake: they do not count.
    let mut connected = Vec::new();
    for n in 0..6 {
        connected.push(Raw::connected(obs.mqtt, V::V5, &format!("hs-ok-{n}")).await);
    }
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(Raw::open(obs.mqtt).await);
    }
    assert_eq!(
        metric_reaches(&obs, "gateway_connections_accepted_total", "", 11.0).await,
        11.0
    );
    let refused = try_connect(obs.mqtt, V::V5, "hs-extra").await;
    assert_eq!(
        refused.err(),
        Some(None),
        "a sixth handshake must be closed at once"
    );
    assert_eq!(
        metric_reaches(
            &obs,
            "gateway_connections_rejected_total",
            "\"handshakes\"",
            1.0
        )
        .await,
        1.0
    );
    still_served(&mut connected[0], V::V5, "hs/alive").await;
    // A silent socket that sends its CONNECT completes its handshake and frees its place.
    silent[0].send(&V::V311.connect("hs-late")).await;
    assert_eq!(silent[0].expect_packet("CONNACK").await.first, 0x20);
    try_connect(obs.mqtt, V::V5, "hs-next")
        .await
        .map_err(|e| format!("{e:?}"))
        .expect("admitted once a handshake completed")
        .ping()
        .await;
    obs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_rate_quota_disconnects_v5_with_0x96_and_closes_3_1_1() {
    let obs = broker(|c| c.limits.max_publish_rate = 20).await;
    // A client within its rate keeps going.
    let mut calm = v5::connect(obs.mqtt, &unique_id("rate-calm")).await;
    for i in 0..10 {
        calm.publish_confirmed("rate/calm", v5::QoS::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    // rumqttc 5.0 sending a burst of 60: DISCONNECT 0x96.
    let mut fast = v5::connect(obs.mqtt, &unique_id("rate-fast")).await;
    for i in 0..60 {
        fast.publish("rate/fast", v5::QoS::AtMostOnce, false, format!("{i}"))
            .await;
    }
    assert_eq!(fast.closed(WAIT).await, Some(MESSAGE_RATE_TOO_HIGH));
    // 3.1.1 has no reason code: closed.
    let mut raw = Raw::connected(obs.mqtt, V::V311, "rate-v3").await;
    let burst: Vec<u8> = (0..60)
        .flat_map(|_| V::V311.publish(0x30, b"rate/v3", None, &[], b"x"))
        .collect();
    raw.send_lenient(&burst).await;
    raw.until_closed(WAIT).await;
    calm.publish_confirmed("rate/calm", v5::QoS::AtLeastOnce, false, "still")
        .await;
    assert_eq!(
        metric_reaches(
            &obs,
            "gateway_limits_exceeded_total",
            "\"max_publish_rate\"",
            2.0
        )
        .await,
        2.0
    );
    assert_eq!(
        metric_reaches(
            &obs,
            "gateway_connections_closed_total",
            "\"quota_exceeded\"",
            2.0
        )
        .await,
        2.0
    );
    calm.disconnect().await;
    obs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_byte_quota_disconnects_v5_with_0x97_and_closes_3_1_1() {
    let obs = broker(|c| c.limits.max_publish_bytes_rate = 1000).await;
    for v in V::BOTH {
        let mut raw = Raw::connected(obs.mqtt, v, &format!("bytes-{v:?}")).await;
        // Two messages of 404 bytes (topic included) fit into the second's 1000 bytes.
        for _ in 0..2 {
            raw.send(&v.publish(0x30, b"b/t1", None, &[], &[7; 400]))
                .await;
        }
        raw.ping().await;
        // The third does not.
        raw.send_lenient(&v.publish(0x30, b"b/t1", None, &[], &[7; 400]))
            .await;
        raw.expect_rejected(v, QUOTA_EXCEEDED, "third message over the byte quota")
            .await;
    }
    // A single message larger than the whole second's quota never fits.
    let mut raw = Raw::connected(obs.mqtt, V::V5, "bytes-big").await;
    raw.send_lenient(&V::V5.publish(0x30, b"b/big", None, &[], &[1; 1001]))
        .await;
    raw.expect_disconnect(QUOTA_EXCEEDED, "one message over the quota")
        .await;
    assert_eq!(
        metric_reaches(
            &obs,
            "gateway_limits_exceeded_total",
            "\"max_publish_bytes_rate\"",
            3.0
        )
        .await,
        3.0
    );
    obs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_beyond_the_limit_are_refused_in_suback() {
    let obs = broker(|c| c.limits.max_subscriptions_per_client = 3).await;
    for (v, refused) in [(V::V5, QUOTA_EXCEEDED), (V::V311, 0x80)] {
        let mut raw = Raw::connected(obs.mqtt, v, &format!("subs-{v:?}")).await;
        raw.send(&subscribe_many(v, &["s/1", "s/2", "s/3", "s/4", "s/5"]))
            .await;
        assert_eq!(suback_codes(&mut raw, v).await, [0, 0, 0, refused, refused]);
        // Replacing an existing subscription still works; a new one still does not.
        raw.send(&subscribe_many(v, &["s/2", "s/6"])).await;
        assert_eq!(suback_codes(&mut raw, v).await, [0, refused]);
        // The granted ones deliver.
        raw.send(&v.publish(0x30, b"s/3", None, &[], b"granted"))
            .await;
        let f = raw.expect_kind(clients::raw::PUBLISH, WAIT).await;
        assert!(f.body.ends_with(b"granted"), "{f:?}");
        raw.send(&v.publish(0x30, b"s/4", None, &[], b"refused"))
            .await;
        assert!(
            matches!(raw.read_packet_within(QUIET).await, Err(End::Silent)),
            "a refused subscription delivered"
        );
    }
    assert_eq!(
        metric_reaches(
            &obs,
            "gateway_limits_exceeded_total",
            "\"max_subscriptions_per_client\"",
            6.0
        )
        .await,
        6.0
    );
    obs.shutdown().await;
}

/// What one subscription counts against `max_subscription_bytes_per_client`: its filter twice
/// and 352 bytes (`session::subscription_bytes`, documented in config/gateway.toml).
fn subscription_cost(filter: &str) -> usize {
    2 * filter.len() + 352
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_bytes_beyond_the_limit_are_refused_in_suback() {
    // Room for two short filters, not three; a long filter does not fit beside one short one,
    // though the count limit would let hundreds in.
    let limit = 2 * subscription_cost("b/1") + 100;
    let obs = broker(|c| c.limits.max_subscription_bytes_per_client = limit).await;
    let long = format!("b/{}", "x".repeat(300));
    for (v, refused) in [(V::V5, QUOTA_EXCEEDED), (V::V311, 0x80)] {
        let mut raw = Raw::connected(obs.mqtt, v, &format!("bytes-{v:?}")).await;
        let mut other = Raw::connected(obs.mqtt, v, &format!("bytes-other-{v:?}")).await;
        raw.send(&subscribe_many(v, &["b/1", "b/2", "b/3"])).await;
        assert_eq!(suback_codes(&mut raw, v).await, [0, 0, refused]);
        // Replacing an existing subscription still works; a new one still does not.
        raw.send(&subscribe_many(v, &["b/2", &long])).await;
        assert_eq!(suback_codes(&mut raw, v).await, [0, refused]);
        // What an unsubscribe frees is room again, for a short filter, not for the long one.
        let mut body = vec![0, 9];
        body.extend_from_slice(v.no_props());
        body.extend(string(b"b/1"));
        raw.send(&packet(0xA2, &body)).await;
        raw.expect_kind(0xB0, WAIT).await;
        raw.send(&subscribe_many(v, &[&long, "b/3"])).await;
        assert_eq!(suback_codes(&mut raw, v).await, [refused, 0]);
        // The granted ones deliver, the refused ones do not, the connection stays.
        raw.send(&v.publish(0x30, b"b/3", None, &[], b"granted"))
            .await;
        let f = raw.expect_kind(clients::raw::PUBLISH, WAIT).await;
        assert!(f.body.ends_with(b"granted"), "{f:?}");
        raw.send(&v.publish(0x30, long.as_bytes(), None, &[], b"refused"))
            .await;
        assert!(
            matches!(raw.read_packet_within(QUIET).await, Err(End::Silent)),
            "a refused subscription delivered"
        );
        // Another client's budget is its own.
        other.send(&subscribe_many(v, &["b/1", "b/2"])).await;
        assert_eq!(suback_codes(&mut other, v).await, [0, 0]);
        still_served(&mut raw, v, "b/2").await;
    }
    assert_eq!(
        metric_reaches(
            &obs,
            "gateway_limits_exceeded_total",
            "\"max_subscription_bytes_per_client\"",
            6.0
        )
        .await,
        6.0
    );
    obs.shutdown().await;
}

/// The retained messages a new subscription got: (topic, payload length, first payload byte).
async fn retained(c: &mut v5::Client) -> Vec<(String, usize, u8)> {
    let mut seen = Vec::new();
    while let Some(p) = c.try_next_publish(QUIET).await {
        assert!(p.retain);
        seen.push((v5::topic_of(&p), p.payload.len(), p.payload[0]));
    }
    seen.sort();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_beyond_retained_max_bytes_are_delivered_but_not_stored() {
    // Each 10,000-byte message counts its payload, topic and well under 1,000 bytes besides:
    // two fit, a third does not.
    let obs = broker(|c| c.mqtt.retained_max_bytes = 25_000).await;
    let mut publ = v5::connect(obs.mqtt, &unique_id("rb-pub")).await;
    let mut live = v5::connect(obs.mqtt, &unique_id("rb-live")).await;
    live.subscribe("rb/#", v5::QoS::AtMostOnce).await;
    let payload = |byte: u8, n: usize| vec![byte; n];
    for (topic, byte) in [("rb/1", b'1'), ("rb/2", b'2'), ("rb/3", b'3')] {
        publ.publish_confirmed(topic, v5::QoS::AtLeastOnce, true, payload(byte, 10_000))
            .await;
        // Refused by the store or not, the message is routed.
        assert_eq!(v5::topic_of(&live.next_publish(WAIT).await), topic);
    }
    let mut sub = v5::connect(obs.mqtt, &unique_id("rb-sub")).await;
    sub.subscribe("rb/#", v5::QoS::AtMostOnce).await;
    assert_eq!(
        retained(&mut sub).await,
        [("rb/1".into(), 10_000, b'1'), ("rb/2".into(), 10_000, b'2')]
    );
    // A deletion frees its bytes; a larger replacement that does not fit keeps the old message.
    publ.publish_confirmed("rb/1", v5::QoS::AtLeastOnce, true, Vec::new())
        .await;
    publ.publish_confirmed("rb/3", v5::QoS::AtLeastOnce, true, payload(b'3', 10_000))
        .await;
    publ.publish_confirmed("rb/2", v5::QoS::AtLeastOnce, true, payload(b'4', 14_000))
        .await;
    let mut sub = v5::connect(obs.mqtt, &unique_id("rb-sub2")).await;
    sub.subscribe("rb/#", v5::QoS::AtMostOnce).await;
    assert_eq!(
        retained(&mut sub).await,
        [("rb/2".into(), 10_000, b'2'), ("rb/3".into(), 10_000, b'3')]
    );
    assert_eq!(
        metric_reaches(
            &obs,
            "gateway_messages_dropped_total",
            "reason=\"retained_full\"",
            2.0
        )
        .await,
        2.0
    );
    // Two messages of 10,000 bytes stored, counted in real bytes and within the bound.
    let counted = metric(&obs, "gateway_retained_bytes", "").await;
    assert!((20_000.0..=25_000.0).contains(&counted), "{counted}");
    obs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_and_filters_beyond_max_topic_length_are_refused() {
    let obs = broker(|c| c.limits.max_topic_length = 16).await;
    let fits = "len/0123456789ab"; // 16 bytes
    let long = "len/0123456789abc"; // 17 bytes
    for (v, filter_refused) in [(V::V5, TOPIC_FILTER_INVALID), (V::V311, 0x80)] {
        let mut raw = Raw::connected(obs.mqtt, v, &format!("len-{v:?}")).await;
        raw.send(&subscribe_many(v, &[fits, long, "len/+/0123456789a"]))
            .await;
        assert_eq!(
            suback_codes(&mut raw, v).await,
            [0, filter_refused, filter_refused]
        );
        raw.send(&v.publish(0x30, fits.as_bytes(), None, &[], b"ok"))
            .await;
        let f = raw.expect_kind(clients::raw::PUBLISH, WAIT).await;
        assert!(f.body.ends_with(b"ok"), "{f:?}");
        raw.send_lenient(&v.publish(0x30, long.as_bytes(), None, &[], b"no"))
            .await;
        raw.expect_rejected(v, TOPIC_NAME_INVALID, "PUBLISH topic too long")
            .await;
    }
    assert_eq!(
        metric_reaches(
            &obs,
            "gateway_limits_exceeded_total",
            "\"max_topic_length\"",
            6.0
        )
        .await,
        6.0
    );
    obs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_trickled_for_longer_than_packet_timeout_is_cut_off() {
    const TIMEOUT: Duration = Duration::from_millis(800);
    let obs = broker(|c| c.mqtt.packet_timeout = TIMEOUT).await;
    let mut calm = Raw::connected(obs.mqtt, V::V5, "trickle-calm").await;
    for v in V::BOTH {
        // One byte every 100 ms of a 106-byte PUBLISH: each byte well within the keep-alive
        // (60 s), the packet whole only after ten seconds.
        let mut raw = Raw::connected(obs.mqtt, v, &format!("trickler-{v:?}")).await;
        let publish = v.publish(0x30, b"t", None, &[], &[7; 100]);
        let started = Instant::now();
        let mut answer = None;
        for byte in &publish {
            raw.send_lenient(std::slice::from_ref(byte)).await;
            match raw.read_packet_within(Duration::from_millis(100)).await {
                Err(End::Silent) => {}
                other => {
                    answer = Some(other);
                    break;
                }
            }
        }
        let after = started.elapsed();
        match answer {
            None => panic!("{v:?}: the packet trickled in whole over {after:?}, never cut off"),
            Some(Ok(f)) => {
                assert!(v.is_v5(), "3.1.1 is closed without a word, got {f:?}");
                assert_eq!((f.first, f.body.first()), (0xE0, Some(&QUOTA_EXCEEDED)));
                raw.expect_closed("after DISCONNECT").await;
            }
            Some(Err(End::Closed)) => assert!(!v.is_v5(), "v5 is told why: DISCONNECT 0x97"),
            Some(Err(End::Silent)) => unreachable!("silence keeps trickling"),
        }
        assert!(
            after >= TIMEOUT && after < TIMEOUT + Duration::from_secs(3),
            "{v:?}: cut off after {after:?} with packet_timeout {TIMEOUT:?}"
        );
    }
    still_served(&mut calm, V::V5, "trickle/alive").await;
    assert_eq!(
        metric_reaches(
            &obs,
            "gateway_connections_closed_total",
            "\"packet_timeout\"",
            2.0
        )
        .await,
        2.0
    );
    obs.shutdown().await;
}

/// This process's resident memory: the broker under test runs in it.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm resident field");
    // SAFETY: sysconf only reads a configuration value.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_memory_high_water_connections_are_refused_and_qos0_is_shed() {
    const MIB: u64 = 1 << 20;
    // The broker shares this test process: growing the process's RSS by well over the margin
    // takes the broker above its high-water mark, and freeing it brings it back.
    let high_water = rss() + 300 * MIB;
    let obs = broker(|c| c.limits.memory_high_water = high_water).await;
    let mut sub = Raw::connected(obs.mqtt, V::V5, "mem-sub").await;
    sub.subscribe(V::V5, "mem/#", 1).await;
    let mut publ = Raw::connected(obs.mqtt, V::V311, "mem-pub").await;

    // Touched pages count in RSS; a large Vec is its own mapping, returned to the OS on drop.
    let ballast = vec![1u8; (600 * MIB) as usize];
    let refused = within(WAIT, "the memory watch to refuse a new client", async {
        loop {
            match try_connect(obs.mqtt, V::V5, "mem-new").await {
                Err(Some(code)) => break code,
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(None) => panic!("closed without CONNACK"),
            }
        }
    })
    .await;
    assert_eq!(refused, SERVER_BUSY, "v5 refusal code");
    assert_eq!(
        try_connect(obs.mqtt, V::V311, "mem-new-3").await.err(),
        Some(Some(3))
    );
    // QoS 0 is shed, QoS 1 still delivered.
    publ.send(&V::V311.publish(0x30, b"mem/q0", None, &[], b"shed"))
        .await;
    publ.send(&V::V311.publish(0x32, b"mem/q1", Some(1), &[], b"kept"))
        .await;
    assert_eq!(
        publ.expect_kind(clients::raw::PUBACK, WAIT).await.first,
        0x40
    );
    let f = sub.expect_kind(clients::raw::PUBLISH, WAIT).await;
    let p = clients::raw::publish_of(&f, V::V5);
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("mem/q1", &b"kept"[..]));
    assert_eq!(
        metric_reaches(
            &obs,
            "gateway_messages_dropped_total",
            "\"memory_shed\"",
            1.0
        )
        .await,
        1.0
    );
    assert!(metric(&obs, "gateway_connections_rejected_total", "\"memory\"").await >= 2.0);
    assert_eq!(ballast[ballast.len() / 2], 1);

    // Below the mark again: connections and QoS 0 are back.
    drop(ballast);
    let mut back = within(WAIT, "a client to be admitted again", async {
        loop {
            if let Ok(raw) = try_connect(obs.mqtt, V::V5, "mem-back").await {
                break raw;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    back.ping().await;
    publ.send(&V::V311.publish(0x30, b"mem/q0", None, &[], b"delivered"))
        .await;
    let f = sub.expect_kind(clients::raw::PUBLISH, WAIT).await;
    assert!(f.body.ends_with(b"delivered"), "{f:?}");
    obs.shutdown().await;
}

/// A socket whose kernel buffers stay small: small send and receive buffers, and a small maximum
/// segment size, by which the broker's side sizes its send buffer (on loopback the kernels would
/// otherwise hold megabytes before the broker's own backlog grew at all).
fn small_window_socket(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use std::os::fd::AsRawFd;
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.set_send_buffer_size(16384).expect("SO_SNDBUF");
    let mss: libc::c_int = 536;
    // SAFETY: setsockopt reads `mss` (an int, its size given) for the socket's descriptor.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            std::ptr::addr_of!(mss).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "TCP_MAXSEG: {}", std::io::Error::last_os_error());
    socket.connect(&addr.into()).expect("connect");
    socket.set_nonblocking(true).expect("non-blocking");
    tokio::net::TcpStream::from_std(socket.into()).expect("tokio stream")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_held_for_a_client_that_never_reads_are_bounded_in_real_memory() {
    // A queued 2-byte PINGRESP costs at least 64 bytes: its 32-byte `Bytes` slot in the write
    // queue and its own allocation (glibc's smallest chunk, 32 bytes). Reading pauses at 256 KiB
    // of backlog; counted in wire bytes, that let one client hold 131,072 answers, 8 MiB.
    const CHUNK_COST: f64 = 64.0;
    const BOUND: f64 = 256.0 * 1024.0;
    const CONNACK_LEN: f64 = 4.0;
    // PINGREQs after CONNACK, or written right behind CONNECT (handled by the handshake's task
    // first, then by the session's).
    for behind_connect in [false, true] {
        let obs = broker(|_| {}).await;
        let mut raw = Raw::from_stream(small_window_socket(obs.mqtt));
        let connect = V::V311.connect("never-reads");
        let mut stream = [0xC0u8, 0].repeat(500_000);
        if behind_connect {
            stream.splice(0..0, connect.iter().copied());
        } else {
            raw.send(&connect).await;
            raw.expect_packet("CONNACK").await;
        }
        // Never reading, until the broker stops taking them (written whole: a write cut short
        // resumes where it stopped, so no packet is split).
        let mut off = 0;
        let (mut taken, mut unchanged) = (0.0, 0);
        let started = Instant::now();
        while unchanged < 5 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "never stopped reading"
            );
            match raw.stream.try_write(&stream[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("write: {e}"),
            }
            assert!(off < stream.len(), "the whole stream was taken");
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = metric(&obs, "gateway_packets_received_total", "\"pingreq\"").await;
            unchanged = if now == taken { unchanged + 1 } else { 0 };
            taken = now;
        }
        let answered = metric(&obs, "gateway_packets_sent_total", "\"pingresp\"").await;
        let written = metric(&obs, "gateway_sent_bytes_total", "").await - CONNACK_LEN;
        let queued = answered - written / 2.0;
        println!(
            "behind CONNECT {behind_connect}: {taken} PINGREQs taken, {written} bytes of answers \
             written, {queued} answers queued: at least {:.0} KiB",
            queued * CHUNK_COST / 1024.0
        );
        assert!(
            queued * CHUNK_COST <= BOUND * 1.1,
            "{queued} answers queued for a client that never reads: {:.0} KiB",
            queued * CHUNK_COST / 1024.0
        );
        // Once it reads, every PINGREQ is answered: pausing lost none.
        let head = if behind_connect { connect.len() } else { 0 };
        let pings = (off - head) / 2;
        within(WAIT * 4, "every PINGREQ answered", async {
            if behind_connect {
                assert_eq!(raw.expect_packet("CONNACK").await.first, 0x20);
            }
            for n in 0..pings {
                match raw.read_frame().await {
                    Some(f) if f.first == clients::raw::PINGRESP => {}
                    other => panic!("answer {n} of {pings}: {other:?}"),
                }
            }
        })
        .await;
        // The last write may have stopped inside a PINGREQ: complete it.
        if (off - head) % 2 == 1 {
            raw.send(&stream[off..=off]).await;
            assert_eq!(
                raw.expect_packet("PINGRESP").await.first,
                clients::raw::PINGRESP
            );
        }
        raw.ping().await;
        obs.shutdown().await;
    }
}
