//! The observability surface with real clients: every metric moves under traffic and
//! `promtool check metrics` accepts the exposition; the metric list of `docs/operations.md`
//! matches what `/metrics` serves (both ways); `/healthz` and `/readyz` follow the broker's life;
//! the admin API lists, inspects (whose queue dropped what) and disconnects clients and finds
//! subscriptions; `$SYS/` topics arrive.

mod clients;
mod observe;

use std::time::Duration;

use clients::{raw, unique_id, v3, v5, WAIT};
use observe::prometheus::promtool_accepts;
use observe::{
    eventually_status, families, listed_metrics, repo_root, request, samples, total, Observed,
    TOKEN,
};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_503_while_starting_and_draining_and_health_is_200() {
    let broker = Observed::bind(|_| {}).await;
    let http = broker.broker.http_addr().expect("HTTP on");
    assert_eq!(request(http, "GET", "/readyz", None).await.0, 503);
    assert_eq!(request(http, "GET", "/healthz", None).await.0, 200);
    let mut obs = Observed::run(broker);
    assert!(eventually_status(http, "/readyz", 200).await);
    assert_eq!(request(http, "POST", "/readyz", None).await.0, 405);
    assert_eq!(request(http, "GET", "/nothing", None).await.0, 404);
    // A socket that never sends CONNECT holds the drain open (until the 5 s drain timeout),
    // which is when the endpoint must say "not ready" while still answering.
    let _silent = raw::Raw::open(obs.mqtt).await;
    let mut leaving = v5::connect(obs.mqtt, &unique_id("leaving")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    obs.stop();
    assert!(eventually_status(http, "/readyz", 503).await);
    assert_eq!(request(http, "GET", "/healthz", None).await.0, 200);
    // Connected clients are sent away during the drain, and counted as such.
    assert_eq!(leaving.closed(WAIT).await, Some(0x8B));
    let mut counted = 0.0;
    for _ in 0..200 {
        let (status, text) = request(http, "GET", "/metrics", None).await;
        assert_eq!(status, 200, "metrics are served while draining");
        let s = samples(&text);
        counted = total(
            &s,
            "gateway_connections_closed_total",
            &["reason=\"shutdown\""],
        );
        if counted >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(counted, 1.0, "the shutdown close is counted");
    obs.shutdown().await;
}

/// A v5 CONNECT with an authentication method, which the broker refuses (0x8C).
fn connect_with_auth_method(id: &str) -> Vec<u8> {
    let mut c = raw::Connect::v5(id, true, 30);
    let mut prop = vec![0x15];
    prop.extend_from_slice(&(4u16).to_be_bytes());
    prop.extend_from_slice(b"SCRA");
    c.properties = prop;
    raw::encode_connect(&c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_moves_under_traffic_and_promtool_accepts_the_exposition() {
    let obs = Observed::start(|c| c.mqtt.max_queued_messages = 50).await;
    let addr = obs.mqtt;

    let mut sub = v3::connect(addr, &unique_id("obs-sub")).await;
    sub.subscribe("obs/#", v3::QoS::ExactlyOnce).await;
    let mut shared = v5::connect(addr, &unique_id("obs-shared")).await;
    shared
        .subscribe("$share/g/obs/shared", v5::QoS::AtLeastOnce)
        .await;
    let mut publ = v3::connect(addr, &unique_id("obs-pub")).await;
    for (i, qos) in [
        v3::QoS::AtMostOnce,
        v3::QoS::AtLeastOnce,
        v3::QoS::ExactlyOnce,
    ]
    .into_iter()
    .enumerate()
    {
        publ.publish("obs/a", qos, false, format!("m{i}")).await;
        sub.next_publish(WAIT).await;
    }
    publ.publish_confirmed("obs/retained", v3::QoS::AtLeastOnce, true, "kept")
        .await;
    sub.next_publish(WAIT).await;
    publ.publish_confirmed("obs/shared", v3::QoS::AtLeastOnce, false, "one")
        .await;
    shared.next_publish(WAIT).await;
    sub.next_publish(WAIT).await;
    publ.publish_confirmed("nobody/listens", v3::QoS::AtLeastOnce, false, "x")
        .await;

    // An offline persistent session overflows its queue; a subscriber that never acknowledges
    // fills its inflight window and leaves the rest queued.
    let offline_id = unique_id("obs-offline");
    let mut offline = v5::Client::connect(v5::persistent(addr, &offline_id, 3600)).await;
    offline.subscribe("queue/x", v5::QoS::AtLeastOnce).await;
    offline.disconnect().await;
    let (mut stalled, _) =
        raw::Raw::connect(addr, &raw::Connect::v311("obs-stalled", true, 0)).await;
    stalled.subscribe(raw::V::V311, "queue/x", 1).await;
    // 90 > inflight window (32) + queue bound (50): both queues overflow.
    for i in 0..90 {
        publ.publish_confirmed("queue/x", v3::QoS::AtLeastOnce, false, format!("q{i}"))
            .await;
    }
    publ.publish_confirmed("obs/flush", v3::QoS::AtLeastOnce, false, "f")
        .await;
    publ.publish("queue/x", v3::QoS::AtMostOnce, false, "qos0 to offline")
        .await;

    // Takeover, a malformed packet, refused CONNECTs, a panicking task, keep-alive expiry and an
    // administrative disconnect each close or refuse a connection for their own reason.
    let dup = unique_id("obs-dup");
    let mut first = v3::connect(addr, &dup).await;
    let _second = v3::connect(addr, &dup).await;
    first.closed(WAIT).await;
    let (mut bad, _) = raw::Raw::connect(addr, &raw::Connect::v311("obs-bad", true, 0)).await;
    bad.send(&[0x00, 0x00]).await;
    bad.until_closed(WAIT).await;
    let mut refused = raw::Raw::open_with(
        addr,
        &raw::encode_connect(&raw::Connect::v311("", false, 0)),
    )
    .await;
    refused.until_closed(WAIT).await;
    let mut unauthenticated =
        raw::Raw::open_with(addr, &connect_with_auth_method("obs-auth")).await;
    unauthenticated.until_closed(WAIT).await;
    let mut doomed = v3::connect(addr, &unique_id("obs-panic")).await;
    doomed
        .publish("$fault/panic", v3::QoS::AtMostOnce, false, "boom")
        .await;
    doomed.closed(WAIT).await;
    let (mut silent, _) = raw::Raw::connect(addr, &raw::Connect::v311("obs-silent", true, 1)).await;
    silent.until_closed(WAIT).await;
    let kick_id = unique_id("obs-kick");
    let mut kicked = v5::connect(addr, &kick_id).await;
    let (status, body) = request(
        obs.http,
        "POST",
        &format!("/api/v1/clients/{kick_id}/disconnect"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(kicked.closed(WAIT).await, Some(0x98));
    publ.disconnect().await;

    let text = tokio::time::timeout(WAIT, async {
        loop {
            let text = obs.metrics().await;
            let s = samples(&text);
            if total(&s, "gateway_connections_closed_total", &["\"normal\""]) >= 1.0 {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the normal close is counted");
    let s = samples(&text);
    let at_least = |name: &str, labels: &[&str], min: f64| {
        let v = total(&s, name, labels);
        assert!(
            v >= min,
            "{name}{labels:?} = {v}, expected >= {min}\n{text}"
        );
    };
    at_least("gateway_connections_accepted_total", &[], 10.0);
    at_least("gateway_connections", &[], 2.0);
    for reason in ["client_id_invalid", "bad_auth_method"] {
        at_least(
            "gateway_connections_rejected_total",
            &[&format!("\"{reason}\"")],
            1.0,
        );
    }
    for reason in [
        "takeover",
        "protocol_error",
        "panic",
        "keep_alive",
        "administrative",
        "normal",
    ] {
        at_least(
            "gateway_connections_closed_total",
            &[&format!("\"{reason}\"")],
            1.0,
        );
    }
    for qos in ["\"0\"", "\"1\"", "\"2\""] {
        at_least("gateway_messages_received_total", &[qos], 1.0);
        at_least("gateway_messages_delivered_total", &[qos], 1.0);
    }
    at_least("gateway_received_bytes_total", &[], 500.0);
    at_least("gateway_sent_bytes_total", &[], 500.0);
    at_least(
        "gateway_messages_dropped_total",
        &["\"no_subscribers\""],
        1.0,
    );
    at_least("gateway_messages_dropped_total", &["\"queue_full\""], 10.0);
    at_least("gateway_messages_dropped_total", &["\"offline_qos0\""], 1.0);
    // The stalled subscriber's queue is full when the QoS 0 message comes.
    at_least(
        "gateway_messages_dropped_total",
        &["\"slow_consumer_qos0\""],
        1.0,
    );
    at_least("gateway_task_panics_total", &[], 1.0);
    at_least("gateway_delivery_latency_seconds_count", &[], 1.0);
    at_least(
        "gateway_delivery_latency_seconds_bucket",
        &["\"+Inf\""],
        1.0,
    );
    at_least("gateway_auth_failures_total", &[], 1.0);
    at_least("gateway_malformed_packets_total", &[], 1.0);
    for t in [
        "connect",
        "publish",
        "subscribe",
        "puback",
        "pubrel",
        "disconnect",
    ] {
        at_least(
            "gateway_packets_received_total",
            &[&format!("\"{t}\"")],
            1.0,
        );
    }
    for t in [
        "connack", "publish", "suback", "puback", "pubrec", "pubcomp",
    ] {
        at_least("gateway_packets_sent_total", &[&format!("\"{t}\"")], 1.0);
    }
    at_least("gateway_sessions", &["\"online\""], 2.0);
    at_least("gateway_sessions", &["\"offline\""], 1.0);
    at_least("gateway_runtime_tasks", &[], 2.0);
    at_least("gateway_subscriptions", &[], 4.0);
    at_least("gateway_shared_subscriptions", &[], 1.0);
    at_least("gateway_retained_messages", &[], 1.0);
    at_least("gateway_retained_bytes", &[], 1.0);
    at_least("gateway_queued_messages", &[], 50.0);
    at_least("gateway_inflight_messages", &[], 32.0);
    // At least the 50 queued for one session, and what one message weighs at the least.
    at_least("gateway_held_messages", &[], 50.0);
    at_least("gateway_held_message_bytes", &[], 50.0 * 300.0);
    at_least("gateway_build_info", &[], 1.0);
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_start_time_seconds",
        "process_open_fds",
        "process_max_fds",
    ] {
        at_least(name, &[], f64::MIN_POSITIVE);
    }
    // Labels stay bounded: no client id, topic or address ever becomes a label value.
    for series in s.keys() {
        for leak in ["obs-", "queue/", "127.0.0.1"] {
            assert!(!series.contains(leak), "unbounded label in {series}");
        }
    }
    promtool_accepts(&text);
    sub.disconnect().await;
    obs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operations_metric_list_is_exactly_what_metrics_serves() {
    let obs = Observed::start(|_| {}).await;
    let text = obs.metrics().await;
    let served = families(&text);
    let doc = "docs/operations.md";
    let markdown = std::fs::read_to_string(repo_root().join(doc)).expect(doc);
    let listed = listed_metrics(&markdown);
    assert!(listed.len() > 20, "{doc}: metric table not found");
    for name in &listed {
        assert!(
            served.contains_key(name),
            "{doc} lists {name}, which /metrics does not serve"
        );
    }
    for name in served.keys() {
        assert!(
            listed.contains(name),
            "/metrics serves {name}, which {doc} does not list"
        );
    }
    obs.shutdown().await;
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_lists_inspects_and_disconnects_clients() {
    let obs = Observed::start(|_| {}).await;
    let http = obs.http;
    let (status, body) = request(http, "GET", "/api/v1/stats", None).await;
    assert_eq!(status, 401);
    assert!(json(&body)["error"].is_string());
    let (status, _) = request(http, "GET", "/api/v1/stats", Some("wrong-token-0123456789")).await;
    assert_eq!(status, 401);

    let mut a1 = v5::connect(obs.mqtt, "adm-a/1").await;
    a1.subscribe("t/+", v5::QoS::AtLeastOnce).await;
    let mut a2 = v3::connect(obs.mqtt, "adm-a/2").await;
    let _b1 = v3::connect(obs.mqtt, "adm-b/1").await;

    let (status, body) = obs.get("/api/v1/clients?prefix=adm-a%2F&limit=1").await;
    assert_eq!(status, 200, "{body}");
    let page = json(&body);
    assert_eq!(page["clients"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["clients"][0]["client_id"], "adm-a/1");
    assert_eq!(page["next_after"], "adm-a/1");
    let (_, body) = obs
        .get("/api/v1/clients?prefix=adm-a%2F&limit=1&after=adm-a%2F1")
        .await;
    let page = json(&body);
    assert_eq!(page["clients"][0]["client_id"], "adm-a/2");
    assert_eq!(page["next_after"], Value::Null);

    let (status, body) = obs.get("/api/v1/clients/adm-a%2F1").await;
    assert_eq!(status, 200, "{body}");
    let one = json(&body);
    assert_eq!(one["online"], true);
    assert_eq!(one["protocol"], "5.0");
    assert!(one["address"]
        .as_str()
        .is_some_and(|a| a.starts_with("127.0.0.1:")));
    assert!(one["connected_since"]
        .as_u64()
        .is_some_and(|t| t > 1_600_000_000));
    assert_eq!(one["subscriptions"][0]["filter"], "t/+");
    assert_eq!(one["subscriptions"][0]["qos"], 1);
    assert_eq!(one["queued_messages"], 0);
    assert_eq!(one["inflight_messages"], 0);
    assert_eq!(one["dropped_messages"], 0);

    let (status, body) = obs.get("/api/v1/subscriptions?topic=t%2Fx").await;
    assert_eq!(status, 200, "{body}");
    let found = json(&body);
    assert_eq!(found["subscriptions"][0]["client_id"], "adm-a/1");
    assert_eq!(found["subscriptions"][0]["filter"], "t/+");
    assert_eq!(found["truncated"], false);
    assert_eq!(obs.get("/api/v1/subscriptions?topic=t%2F%2B").await.0, 400);
    assert_eq!(obs.get("/api/v1/subscriptions").await.0, 400);

    let (status, body) = obs.get("/api/v1/stats").await;
    assert_eq!(status, 200, "{body}");
    let stats = json(&body);
    assert_eq!(stats["sessions_online"], 3);
    assert_eq!(stats["subscriptions"], 1);
    assert_eq!(stats["version"], env!("CARGO_PKG_VERSION"));

    let (status, body) = request(
        http,
        "POST",
        "/api/v1/clients/adm-a%2F2/disconnect",
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    a2.closed(WAIT).await;
    // A clean session ends with its connection.
    for _ in 0..100 {
        if obs.get("/api/v1/clients/adm-a%2F2").await.0 == 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, body) = obs.get("/api/v1/clients/adm-a%2F2").await;
    assert_eq!(status, 404);
    assert!(json(&body)["error"]
        .as_str()
        .is_some_and(|e| e.contains("adm-a/2")));
    assert_eq!(obs.get("/api/v1/clients?limit=0").await.0, 400);
    assert_eq!(obs.get("/api/v1/clients/bad%zz").await.0, 400);
    assert_eq!(obs.get("/api/v1/nothing").await.0, 404);
    assert_eq!(
        request(http, "DELETE", "/api/v1/stats", Some(TOKEN))
            .await
            .0,
        405
    );
    obs.shutdown().await;

    let disabled = Observed::start(|c| c.http.admin_token = None).await;
    let (status, body) = disabled.get("/api/v1/stats").await;
    assert_eq!(status, 404);
    assert!(json(&body)["error"]
        .as_str()
        .is_some_and(|e| e.contains("admin_token")));
    disabled.shutdown().await;
}

/// The admin API tells whose messages a full queue dropped: the summed
/// `gateway_messages_dropped_total` cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_counts_the_messages_each_sessions_full_queue_dropped() {
    let obs = Observed::start(|c| c.mqtt.max_queued_messages = 5).await;
    let mut o = v3::options(obs.mqtt, "drops-away");
    o.set_clean_session(false);
    let mut away = v3::Client::connect(o).await;
    away.subscribe("dq/#", v3::QoS::AtLeastOnce).await;
    away.disconnect().await;
    let mut reader = v3::connect(obs.mqtt, "drops-reader").await;
    reader.subscribe("dq/#", v3::QoS::AtLeastOnce).await;

    let mut publisher = v3::connect(obs.mqtt, "drops-publisher").await;
    for i in 0..8u8 {
        publisher
            .publish_confirmed("dq/x", v3::QoS::AtLeastOnce, false, vec![i])
            .await;
        reader.next_publish(WAIT).await;
    }
    let (status, body) = obs.get("/api/v1/clients/drops-away").await;
    assert_eq!(status, 200, "{body}");
    let away = json(&body);
    assert_eq!(away["online"], false);
    assert_eq!(away["queued_messages"], 5);
    assert_eq!(away["queued_bytes"], 5 * 5, "topic and payload: {body}");
    assert_eq!(away["dropped_messages"], 3, "{body}");
    let (_, body) = obs.get("/api/v1/clients/drops-reader").await;
    assert_eq!(json(&body)["dropped_messages"], 0, "{body}");
    let (_, body) = obs.get("/api/v1/clients?prefix=drops-").await;
    let listed = json(&body);
    assert_eq!(listed["clients"][0]["client_id"], "drops-away");
    assert_eq!(listed["clients"][0]["dropped_messages"], 3, "{body}");
    obs.shutdown().await;
}

/// A message queued for many sessions is held once: `gateway_held_messages` counts it once and
/// `gateway_held_message_bytes` weighs it once, where `gateway_queued_messages` counts copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_held_for_many_sessions_counts_once() {
    let obs = Observed::start(|_| {}).await;
    for id in ["held-1", "held-2", "held-3"] {
        let mut o = v3::options(obs.mqtt, id);
        o.set_clean_session(false);
        let mut away = v3::Client::connect(o).await;
        away.subscribe("held/#", v3::QoS::AtLeastOnce).await;
        away.disconnect().await;
    }
    let mut publisher = v3::connect(obs.mqtt, "held-publisher").await;
    for i in 0..5u8 {
        publisher
            .publish_confirmed("held/x", v3::QoS::AtLeastOnce, false, vec![i; 1000])
            .await;
    }
    let s = samples(&obs.metrics().await);
    assert_eq!(total(&s, "gateway_queued_messages", &[]), 15.0);
    assert_eq!(total(&s, "gateway_held_messages", &[]), 5.0);
    let bytes = total(&s, "gateway_held_message_bytes", &[]);
    assert!(
        (5.0 * 1000.0..3.0 * 5.0 * 1000.0).contains(&bytes),
        "5 messages of 1,000 bytes weigh {bytes}"
    );
    obs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_topics_are_published_retained_and_kept_from_wildcards() {
    let obs = Observed::start(|_| {}).await;
    let mut everything = v3::connect(obs.mqtt, &unique_id("sys-all")).await;
    everything.subscribe("#", v3::QoS::AtMostOnce).await;
    let mut sys = v3::connect(obs.mqtt, &unique_id("sys")).await;
    sys.subscribe("$SYS/broker/#", v3::QoS::AtMostOnce).await;
    let mut seen = std::collections::BTreeMap::new();
    let wanted = [
        "$SYS/broker/version",
        "$SYS/broker/uptime",
        "$SYS/broker/clients/connected",
        "$SYS/broker/messages/received",
        "$SYS/broker/load/messages/received/1min",
    ];
    tokio::time::timeout(Duration::from_secs(5), async {
        while !wanted.iter().all(|t| seen.contains_key(*t)) {
            let p = sys.next_publish(WAIT).await;
            seen.insert(
                p.topic.clone(),
                String::from_utf8_lossy(&p.payload).into_owned(),
            );
        }
    })
    .await
    .unwrap_or_else(|_| panic!("missing $SYS topics; got {seen:?}"));
    assert!(seen["$SYS/broker/version"].contains(env!("CARGO_PKG_VERSION")));
    assert!(seen["$SYS/broker/uptime"].ends_with(" seconds"));
    everything
        .expect_no_publish(Duration::from_millis(300))
        .await;
    obs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_as_a_slow_consumer() {
    // Judged over its keep-alive period, or without keep-alive over `mqtt.idle_timeout`.
    let obs = Observed::start(|c| c.mqtt.idle_timeout = Some(Duration::from_secs(1))).await;
    let mut watcher = v3::connect(obs.mqtt, &unique_id("watcher")).await;
    watcher.subscribe("will/#", v3::QoS::AtLeastOnce).await;
    for keep_alive in [1, 0] {
        let id = unique_id("nonreader");
        let payload = format!("stalled with keep-alive {keep_alive}");
        let mut c = raw::Connect::v311(&id, true, keep_alive);
        c.will = Some(raw::Will {
            topic: "will/slow",
            payload: payload.as_bytes(),
            qos: 1,
            retain: false,
            properties: Vec::new(),
        });
        let (mut slow, _) = raw::Raw::connect(obs.mqtt, &c).await;
        slow.send(&raw::V::V311.subscribe("flood/t", 0)).await;
        slow.expect_packet("SUBACK").await;
        // The flood fills the kernel's socket buffers (several MB on loopback) and then the
        // broker's own write backlog; the client never reads again but keeps pinging.
        let mut flooder = raw::Raw::connected(obs.mqtt, raw::V::V311, &unique_id("flooder")).await;
        let flood = raw::V::V311.publish(0x30, b"flood/t", None, &[], &[7u8; 16 * 1024]);
        for _ in 0..1_500 {
            flooder.send(&flood).await;
        }
        let started = std::time::Instant::now();
        let will = loop {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "a client that stopped reading was never closed (keep-alive {keep_alive})"
            );
            slow.send_lenient(&[0xC0, 0]).await;
            if let Some(p) = watcher.try_next_publish(Duration::from_millis(400)).await {
                break p;
            }
        };
        assert_eq!(
            (will.topic.as_str(), &will.payload[..]),
            ("will/slow", payload.as_bytes())
        );
    }
    let s = samples(&obs.metrics().await);
    assert_eq!(
        total(
            &s,
            "gateway_connections_closed_total",
            &["reason=\"slow_consumer\""]
        ),
        2.0,
        "both closes are counted as slow consumers: {:?}",
        s.iter()
            .filter(|(k, v)| k.starts_with("gateway_connections_closed_total") && **v > 0.0)
            .collect::<Vec<_>>()
    );
    obs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_too_large_and_retained_full_drops_are_counted() {
    let obs = Observed::start(|c| {
        c.mqtt.retained_max = 1;
        c.sys.interval = 0;
    })
    .await;
    let addr = obs.mqtt;
    let mut publ = v5::connect(addr, &unique_id("drops-pub")).await;

    // Too large for a client that announced a 100-byte maximum packet size.
    let mut o = v5::options(addr, &unique_id("drops-small"));
    o.set_max_packet_size(Some(100));
    let mut small = v5::Client::connect(o).await;
    small.subscribe("drops/size", v5::QoS::AtLeastOnce).await;
    publ.publish_confirmed("drops/size", v5::QoS::AtLeastOnce, false, vec![7u8; 500])
        .await;
    publ.publish_confirmed("drops/size", v5::QoS::AtLeastOnce, false, "ok")
        .await;
    assert_eq!(&small.next_publish(WAIT).await.payload[..], b"ok");

    // Expired while queued for an offline session.
    let id = unique_id("drops-offline");
    let mut c = v5::Client::connect(v5::persistent(addr, &id, 60)).await;
    c.subscribe("drops/exp", v5::QoS::AtLeastOnce).await;
    c.disconnect().await;
    let expiring = v5::PublishProperties {
        message_expiry_interval: Some(1),
        ..Default::default()
    };
    publ.publish_confirmed_with(
        "drops/exp",
        v5::QoS::AtLeastOnce,
        false,
        "short",
        Some(expiring),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut c = v5::Client::connect(v5::persistent(addr, &id, 60)).await;
    c.expect_no_publish(Duration::from_millis(300)).await;

    // A second retained topic beyond `retained_max = 1`.
    publ.publish_confirmed("drops/r1", v5::QoS::AtLeastOnce, true, "kept")
        .await;
    publ.publish_confirmed("drops/r2", v5::QoS::AtLeastOnce, true, "refused")
        .await;

    let s = samples(&obs.metrics().await);
    for reason in ["too_large", "expired", "retained_full"] {
        assert_eq!(
            total(
                &s,
                "gateway_messages_dropped_total",
                &[&format!("reason=\"{reason}\"")]
            ),
            1.0,
            "dropped with reason {reason}"
        );
    }
    obs.shutdown().await;
}
