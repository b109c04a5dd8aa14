//! What one SUBSCRIBE may cost (issue 18, item 2): a packet repeating a filter counts it once,
//! the retained messages a subscribe queues for a session are bounded in messages and bytes (what
//! does not fit is counted), and while one client's SUBSCRIBE is at work the others are answered
//! at once. Raw sockets: no client library sends a filter twenty thousand times.

mod clients;
mod common;
mod observe;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clients::raw::{self, encode_pingreq, packet, string, Raw, V};
use clients::{within, WAIT};
use common::TestBroker;
use observe::{samples, total, Observed};

/// Retained messages stored before the attack, as in the measurement.
const RETAINED: usize = 2_000;
/// How often the attack's SUBSCRIBE repeats the filter matching all of them.
const REPEATS: usize = 20_000;

/// This process's resident memory in bytes (the broker runs in it).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm resident field");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// A SUBSCRIBE (packet id 9) of `(filter, options)` entries.
fn subscribe_entries(v: V, entries: &[(&str, u8)]) -> Vec<u8> {
    let mut body = vec![0, 9];
    body.extend_from_slice(v.no_props());
    for (filter, options) in entries {
        body.extend(string(filter.as_bytes()));
        body.push(*options);
    }
    packet(0x82, &body)
}

/// The SUBACK's reason codes (after the packet id and, for v5, an empty property length).
fn suback_codes(f: &raw::Frame, v: V) -> Vec<u8> {
    assert_eq!(f.kind(), raw::SUBACK, "expected SUBACK, got {f:?}");
    let skip = if v.is_v5() { 3 } else { 2 };
    f.body[skip..].to_vec()
}

/// Publishes `n` retained QoS 0 messages `{prefix}/{i}`; the PINGRESP behind them proves the
/// broker handled (and so stored) every one.
async fn store_retained(broker: std::net::SocketAddr, prefix: &str, n: usize) {
    let mut publ = Raw::connected(broker, V::V311, &format!("{prefix}-publisher")).await;
    let mut burst = Vec::new();
    for i in 0..n {
        let topic = format!("{prefix}/{i}");
        burst.extend(V::V311.publish(0x31, topic.as_bytes(), None, &[], b"0123456789abcdef"));
    }
    burst.extend(encode_pingreq());
    publ.send(&burst).await;
    publ.expect_kind(raw::PINGRESP, WAIT).await;
}

/// Collects retained PUBLISHes (by topic) until `quiet` passes without one; SUBACKs are returned.
async fn drain(raw: &mut Raw, v: V, quiet: Duration) -> (Vec<String>, Vec<raw::Frame>) {
    let mut topics = Vec::new();
    let mut subacks = Vec::new();
    while let Ok(f) = raw.read_packet_within(quiet).await {
        if f.kind() == raw::SUBACK {
            subacks.push(f);
        } else if f.kind() == raw::PUBLISH {
            topics.push(raw::publish_of(&f, v).topic);
        }
    }
    (topics, subacks)
}

/// Pings every `every` until `stop`; returns the slowest PINGRESP.
fn pinger(
    mut raw: Raw,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Duration> {
    tokio::spawn(async move {
        let mut slowest = Duration::ZERO;
        while !stop.load(Ordering::Acquire) {
            let t0 = Instant::now();
            raw.ping().await;
            slowest = slowest.max(t0.elapsed());
            tokio::time::sleep(every).await;
        }
        slowest
    })
}

/// The measurement: 2,000 small retained messages, then one SUBSCRIBE repeating the
/// filter that matches them all 20,000 times from a client that does not read. The broker's
/// memory must stay flat, and two other clients' PINGREQs answered within 50 ms: one pinging
/// every 5 ms (its task running), one every 300 ms (hibernating in between, so each ping goes
/// through the parker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subscribe_repeating_a_filter_costs_neither_memory_nor_others_latency() {
    const PING_LIMIT: Duration = Duration::from_millis(50);
    const GROWTH_LIMIT: u64 = 8 << 20;
    let broker =
        TestBroker::with(|c| c.mqtt.hibernate_after = Some(Duration::from_millis(100))).await;
    store_retained(broker.addr, "atk", RETAINED).await;

    let attacking = Arc::new(AtomicBool::new(false));
    let busy = Raw::connected(broker.addr, V::V311, "busy-pinger").await;
    let busy = pinger(busy, Duration::from_millis(5), attacking.clone());
    let idle = Raw::connected(broker.addr, V::V311, "idle-pinger").await;
    let idle = pinger(idle, Duration::from_millis(300), attacking.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut attacker = Raw::connected(broker.addr, V::V311, "attacker").await;
    let entries = vec![("atk/#", 0u8); REPEATS];
    let subscribe = subscribe_entries(V::V311, &entries);
    let before = rss();
    let mut peak = before;
    attacker.send(&subscribe).await;
    // The attacker reads nothing for 3 s while memory is sampled.
    let sampled = Instant::now();
    while sampled.elapsed() < Duration::from_secs(3) {
        peak = peak.max(rss());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    attacking.store(true, Ordering::Release);
    let busy = within(WAIT, "the busy pinger to stop", busy)
        .await
        .expect("pinger");
    let idle = within(WAIT, "the idle pinger to stop", idle)
        .await
        .expect("pinger");
    let growth = peak.saturating_sub(before);
    println!(
        "slowest PINGRESP: busy {busy:?}, hibernating {idle:?}; RSS grew {:.1} MiB",
        growth as f64 / (1 << 20) as f64,
    );
    assert!(
        growth < GROWTH_LIMIT,
        "RSS grew by {:.1} MiB during the attack",
        growth as f64 / (1 << 20) as f64
    );
    assert!(
        busy.max(idle) < PING_LIMIT,
        "other clients' PINGRESP took {busy:?} / {idle:?} during the attack"
    );

    // Now it reads: one SUBACK with a code per entry, every retained message once.
    let (topics, subacks) = drain(&mut attacker, V::V311, Duration::from_millis(1500)).await;
    assert_eq!(subacks.len(), 1, "one SUBACK");
    assert_eq!(suback_codes(&subacks[0], V::V311), vec![0u8; REPEATS]);
    let unique: std::collections::BTreeSet<&String> = topics.iter().collect();
    assert_eq!(unique.len(), RETAINED, "every retained message");
    assert_eq!(topics.len(), RETAINED, "each retained message once");
    broker.shutdown().await;
}

/// MQTT treats a SUBSCRIBE of several filters as that many SUBSCRIBEs in a row: a filter named
/// twice replaces its own subscription, so the last entry's options are the ones that hold. Each
/// entry still gets its code in the SUBACK, in order; the retained message goes out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_repeated_in_one_subscribe_counts_once_with_the_last_options() {
    let broker = TestBroker::start().await;
    store_retained(broker.addr, "dup", 1).await;
    let v = V::V5;
    let mut sub = Raw::connected(broker.addr, v, "dup-subscriber").await;
    // QoS 2, then another filter at QoS 1, then the first again at QoS 1 with No Local.
    sub.send(&subscribe_entries(
        v,
        &[("dup/#", 2), ("other/t", 1), ("dup/#", 0x01 | 0x04)],
    ))
    .await;
    let (topics, subacks) = drain(&mut sub, v, Duration::from_millis(500)).await;
    assert_eq!(subacks.len(), 1, "one SUBACK");
    assert_eq!(suback_codes(&subacks[0], v), vec![2, 1, 1]);
    assert_eq!(
        topics,
        vec!["dup/0".to_owned()],
        "the retained message once"
    );
    assert_eq!(broker.ctx.state().subscriptions, 2, "two subscriptions");

    // The last entry's options hold: QoS 1 (a QoS 2 message comes down at 1), No Local (its own
    // messages do not come back).
    let mut publ = Raw::connected(broker.addr, v, "dup-publisher").await;
    publ.send(&v.publish(0x34, b"dup/x", Some(3), &[], b"from another"))
        .await;
    let f = sub.expect_kind(raw::PUBLISH, WAIT).await;
    let p = raw::publish_of(&f, v);
    assert_eq!((p.topic.as_str(), p.qos), ("dup/x", 1), "{p:?}");
    sub.send(&raw::encode_puback(p.packet_id)).await;
    sub.send(&v.publish(0x30, b"dup/y", None, &[], b"own"))
        .await;
    assert!(
        sub.read_packet_within(Duration::from_millis(300))
            .await
            .is_err(),
        "No Local of the last entry holds"
    );
    broker.shutdown().await;
}

/// `limits.max_retained_backlog` (messages) and `limits.max_retained_backlog_bytes` bound what
/// a SUBSCRIBE queues of retained messages for one session; what does not fit is counted in
/// `gateway_limits_exceeded_total`, once per subscription cut short. The bound is on what waits
/// at once: a later SUBSCRIBE, once the backlog drained, gets as many again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_queued_by_subscribes_are_bounded_per_session() {
    // Each stored message is 6 or 7 bytes of topic and 16 of payload.
    const BYTES: usize = 10 * 23;
    for (key, tune) in [
        (
            "max_retained_backlog",
            Box::new(|c: &mut gateway::Config| c.limits.max_retained_backlog = 50)
                as Box<dyn FnOnce(&mut gateway::Config)>,
        ),
        (
            "max_retained_backlog_bytes",
            Box::new(|c: &mut gateway::Config| c.limits.max_retained_backlog_bytes = BYTES),
        ),
    ] {
        let obs = Observed::start(|c| {
            c.sys.interval = 0;
            tune(c);
        })
        .await;
        store_retained(obs.mqtt, "bnd", 300).await;
        let mut sub = Raw::connected(obs.mqtt, V::V311, "bounded").await;
        sub.send(&subscribe_entries(V::V311, &[("bnd/#", 0)])).await;
        let (first, _) = drain(&mut sub, V::V311, Duration::from_millis(500)).await;
        // Again: replacing the subscription sends retained messages again (retain handling 0).
        sub.send(&subscribe_entries(V::V311, &[("bnd/#", 0)])).await;
        let (second, _) = drain(&mut sub, V::V311, Duration::from_millis(500)).await;
        let text = obs.metrics().await;
        let counted = total(
            &samples(&text),
            "gateway_limits_exceeded_total",
            &[&format!("\"{key}\"")],
        );
        println!(
            "{key}: {} then {} retained messages",
            first.len(),
            second.len()
        );
        let want = if key == "max_retained_backlog" {
            50
        } else {
            10
        };
        assert_eq!(
            first.len(),
            want,
            "{key}: the first subscribe's retained messages"
        );
        assert_eq!(
            second.len(),
            want,
            "{key}: the second's, once the first drained"
        );
        assert_eq!(
            counted, 2.0,
            "{key}: both subscriptions cut short are counted"
        );
        obs.shutdown().await;
    }
}
