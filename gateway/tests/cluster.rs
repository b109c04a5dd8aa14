//! Gateway nodes forming one broker over NATS (`[cluster]`), against a real nats-server 2.9
//! (Debian's; see `common::nats`) on loopback: cross-node QoS 0/1/2 with 3.1.1 and 5.0 clients,
//! wildcards and overlapping filters (one copy per subscriber), v5 properties and the retain
//! flag intact, shared subscriptions spanning nodes (each message to exactly one member),
//! special-character topics, the interest rule shown with nats-server's own `/varz` `in_msgs`,
//! readiness while NATS is down and recovery when it returns, and configuration refusals.
//! Each node is a full broker with its HTTP endpoint; everything is observed through real
//! clients, `/metrics`, `/readyz` and nats-server's monitoring, not the gateway's internals.
//!
//! Without `nats-server` the tests are skipped with a loud message, and fail under CI.

mod binary;
mod clients;
mod common;
mod observe;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clients::{unique_id, v3, v5, within, QUIET, WAIT};
use common::nats::NatsServer;
use common::port::free_port;
use observe::{request, samples, total, Observed};

/// A node of the cluster on `nats`, named `name`.
async fn node(nats_url: &str, name: &str) -> Observed {
    node_with(nats_url, name, |_| {}).await
}

/// Nodes a, b and c on one NATS server.
async fn three_nodes(nats: &NatsServer) -> (Observed, Observed, Observed) {
    let url = nats.url();
    (
        node(&url, "a").await,
        node(&url, "b").await,
        node(&url, "c").await,
    )
}

/// A node whose `[nats]` section `tune` completes.
async fn node_with(
    nats_url: &str,
    name: &str,
    tune: impl FnOnce(&mut gateway::config::NatsConfig),
) -> Observed {
    Observed::cluster_node(nats_url, name, |c| tune(&mut c.nats)).await
}

/// Waits until `/readyz` of `node` answers `status`, within `d`.
async fn ready(node: &Observed, status: u16, d: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + d;
    while tokio::time::Instant::now() < deadline {
        if request(node.http, "GET", "/readyz", None).await.0 == status {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A metric of `node` (summed over its labels matching `labels`).
async fn metric(node: &Observed, name: &str, labels: &[&str]) -> f64 {
    total(&samples(&node.metrics().await), name, labels)
}

/// Waits until `node` knows `entries` interest entries of other nodes and is connected: what it
/// routes by after another node subscribed.
async fn interest(node: &Observed, entries: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = samples(&node.metrics().await);
        let known = total(&s, "gateway_cluster_remote_interest", &[]);
        if known == entries && total(&s, "gateway_cluster_connected", &[]) == 1.0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node knows {known} remote interest entries, expected {entries}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn payload_v5(p: &v5::Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_qos_0_1_2_with_3_1_1_and_5_0_clients() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let (a, b, c) = three_nodes(&nats).await;
    let mut sub_b = v3::connect(b.mqtt, &unique_id("sub-b")).await;
    sub_b.subscribe("x/#", v3::QoS::ExactlyOnce).await;
    let mut sub_c = v5::connect(c.mqtt, &unique_id("sub-c")).await;
    sub_c.subscribe("x/+", v5::QoS::AtLeastOnce).await;
    interest(&a, 2.0).await;
    interest(&c, 1.0).await;

    let mut pub_a = v5::connect(a.mqtt, &unique_id("pub-a")).await;
    for (i, qos) in [
        v5::QoS::AtMostOnce,
        v5::QoS::AtLeastOnce,
        v5::QoS::ExactlyOnce,
    ]
    .into_iter()
    .enumerate()
    {
        if qos == v5::QoS::AtMostOnce {
            pub_a.publish("x/a", qos, false, format!("m{i}")).await;
        } else {
            pub_a
                .publish_confirmed("x/a", qos, false, format!("m{i}"))
                .await;
        }
        let got = sub_b.next_publish(WAIT).await;
        assert_eq!(
            (got.topic.as_str(), &got.payload[..]),
            ("x/a", format!("m{i}").as_bytes())
        );
        // min(publish QoS, granted QoS): granted 2 on b, 1 on c.
        assert_eq!(got.qos as u8, i as u8);
        let got = sub_c.next_publish(WAIT).await;
        assert_eq!(payload_v5(&got), format!("m{i}"));
        assert_eq!(got.qos as u8, (i as u8).min(1));
    }
    // A 3.1.1 publisher on c: b gets it over NATS, c's own subscriber locally; each once.
    let mut pub_c = v3::connect(c.mqtt, &unique_id("pub-c")).await;
    pub_c
        .publish_confirmed("x/c", v3::QoS::ExactlyOnce, false, "from c")
        .await;
    assert_eq!(&sub_b.next_publish(WAIT).await.payload[..], b"from c");
    assert_eq!(payload_v5(&sub_c.next_publish(WAIT).await), "from c");
    sub_b.expect_no_publish(QUIET).await;
    sub_c.expect_no_publish(Duration::ZERO).await;

    // What crossed NATS is counted on both sides: a sent 3 (one per message, however many
    // nodes wanted it), b and c received them.
    assert_eq!(
        metric(&a, "gateway_cluster_messages_sent_total", &[]).await,
        3.0
    );
    assert_eq!(
        metric(&b, "gateway_cluster_messages_received_total", &[]).await,
        4.0
    );
    assert_eq!(
        metric(&c, "gateway_cluster_messages_received_total", &[]).await,
        3.0
    );
    assert!(metric(&a, "gateway_cluster_sent_bytes_total", &[]).await > 0.0);
    assert_eq!(metric(&a, "gateway_cluster_nodes", &[]).await, 2.0);
    pub_a.disconnect().await;
}

/// `o/#` takes two NATS subscriptions on node b (its parent level `o` and `o.>`), each with its
/// own channel in async-nats: a burst alternating `o` and `o/x` must still reach the
/// subscriber in the order it was published (it came out of order before b ordered what is
/// ready by the sender's sequence numbers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publishers_order_holds_across_the_nats_subscriptions_of_one_filter() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let (a, b) = (node(&nats.url(), "a").await, node(&nats.url(), "b").await);
    let mut sub = v3::connect(b.mqtt, &unique_id("ordered")).await;
    sub.subscribe("o/#", v3::QoS::AtMostOnce).await;
    interest(&a, 1.0).await;
    let publisher = v3::connect(a.mqtt, &unique_id("pub")).await;
    const N: usize = 400;
    for i in 0..N {
        let topic = if i % 2 == 0 { "o" } else { "o/x" };
        publisher
            .publish(topic, v3::QoS::AtMostOnce, false, i.to_string())
            .await;
    }
    let mut got = Vec::with_capacity(N);
    while got.len() < N {
        let p = sub.next_publish(WAIT).await;
        got.push(
            String::from_utf8_lossy(&p.payload)
                .parse::<usize>()
                .expect("a number"),
        );
    }
    let sent: Vec<usize> = (0..N).collect();
    assert_eq!(got, sent, "received out of publish order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_filters_and_wildcards_deliver_once_per_subscriber_across_nodes() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let (a, b) = (node(&nats.url(), "a").await, node(&nats.url(), "b").await);
    // One v5 subscriber with three overlapping filters, two with subscription ids (rumqttc
    // 0.25 misreads a third id: it counts each id's property byte twice), and one subscriber
    // with a filter overlapping only some of them.
    let mut over = v5::connect(b.mqtt, &unique_id("over")).await;
    for (id, filter) in [(Some(1), "w/#"), (Some(2), "w/+/c"), (None, "w/b/c")] {
        over.subscribe_with(v5::Filter::new(filter, v5::QoS::AtLeastOnce), id)
            .await;
    }
    let mut other = v3::connect(b.mqtt, &unique_id("other")).await;
    other.subscribe("w/b/#", v3::QoS::AtMostOnce).await;
    interest(&a, 4.0).await;

    let mut publisher = v3::connect(a.mqtt, &unique_id("pub")).await;
    publisher
        .publish_confirmed("w/b/c", v3::QoS::AtLeastOnce, false, "one")
        .await;
    publisher
        .publish_confirmed("w", v3::QoS::AtLeastOnce, false, "parent")
        .await;
    publisher
        .publish_confirmed("w/x", v3::QoS::AtLeastOnce, false, "two")
        .await;
    let got = over.next_publish(WAIT).await;
    assert_eq!(payload_v5(&got), "one");
    let mut ids = got.properties.unwrap_or_default().subscription_identifiers;
    ids.sort_unstable();
    assert_eq!(
        ids,
        [1, 2],
        "one copy carrying every matching subscription's id"
    );
    // `w/#` matches its parent level `w` too.
    let got = over.next_publish(WAIT).await;
    assert_eq!(payload_v5(&got), "parent");
    assert_eq!(
        got.properties.unwrap_or_default().subscription_identifiers,
        [1]
    );
    let got = over.next_publish(WAIT).await;
    assert_eq!(payload_v5(&got), "two");
    over.expect_no_publish(QUIET).await;
    assert_eq!(&other.next_publish(WAIT).await.payload[..], b"one");
    other.expect_no_publish(Duration::ZERO).await;
    // NATS did send b several copies (one per matching subscription); b kept one per message.
    assert_eq!(
        metric(&b, "gateway_cluster_messages_received_total", &[]).await,
        3.0
    );
    assert!(metric(&b, "gateway_cluster_duplicates_total", &[]).await >= 3.0);

    // A stream on two topics, each reaching b through several subscriptions: every message
    // once, and each topic's messages in the order they were published (MQTT's ordered topic).
    const N: usize = 200;
    for i in 0..N {
        let topic = if i % 2 == 0 { "w/b/c" } else { "w/y" };
        publisher
            .publish(topic, v3::QoS::AtMostOnce, false, i.to_string())
            .await;
    }
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for _ in 0..N {
        let p = over.next_publish(WAIT).await;
        let n: i64 = payload_v5(&p).parse().expect("a number");
        let previous = last.insert(v5::topic_of(&p), n).unwrap_or(-1);
        assert!(n > previous, "{n} after {previous} on {}", v5::topic_of(&p));
    }
    over.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_properties_retain_flag_and_expiry_cross_nodes_intact() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let (a, b) = (node(&nats.url(), "a").await, node(&nats.url(), "b").await);
    let mut keeps = v5::connect(b.mqtt, &unique_id("rap")).await;
    let mut filter = v5::Filter::new("p/#", v5::QoS::AtLeastOnce);
    filter.preserve_retain = true;
    keeps.subscribe_with(filter, None).await;
    let mut plain = v3::connect(b.mqtt, &unique_id("v3")).await;
    plain.subscribe("p/#", v3::QoS::AtLeastOnce).await;
    // A persistent session that will be offline when the message comes.
    let offline_id = unique_id("offline");
    let mut offline = v5::Client::connect(v5::persistent(b.mqtt, &offline_id, 600)).await;
    offline.subscribe("p/#", v5::QoS::AtLeastOnce).await;
    interest(&a, 1.0).await;
    offline.disconnect().await;

    let props = v5::PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(30),
        response_topic: Some("reply/to".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"\x00corr\xff")),
        user_properties: vec![("k".into(), "v".into()), ("k".into(), "w é".into())],
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    let mut publisher = v5::connect(a.mqtt, &unique_id("pub")).await;
    publisher
        .publish_confirmed_with(
            "p/1",
            v5::QoS::AtLeastOnce,
            true,
            "hello",
            Some(props.clone()),
        )
        .await;
    let got = keeps.next_publish(WAIT).await;
    assert!(got.retain, "Retain As Published keeps the flag");
    let p = got.properties.unwrap_or_default();
    assert_eq!(p.payload_format_indicator, Some(1));
    assert_eq!(p.response_topic.as_deref(), Some("reply/to"));
    assert_eq!(p.correlation_data, props.correlation_data);
    assert_eq!(p.user_properties, props.user_properties);
    assert_eq!(p.content_type.as_deref(), Some("text/plain"));
    assert!(matches!(p.message_expiry_interval, Some(29..=30)), "{p:?}");
    // A live delivery without Retain As Published clears it, as on one node.
    assert!(!plain.next_publish(WAIT).await.retain);

    // The expiry keeps counting down on the receiving node: 2 s later the offline session gets
    // the message with at most 28 s left.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut back = v5::Client::connect(v5::persistent(b.mqtt, &offline_id, 600)).await;
    let got = back.next_publish(WAIT).await;
    assert_eq!(payload_v5(&got), "hello");
    let left = got.properties.unwrap_or_default().message_expiry_interval;
    assert!(matches!(left, Some(1..=28)), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_subscription_across_nodes_gives_each_message_to_exactly_one_member() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let (a, b, c) = three_nodes(&nats).await;
    const GROUP: &str = "$share/g/s/#";
    // Two members on a, two on b (3.1.1 and 5.0 each); publishers on a (which has members)
    // and on c (which has none).
    let mut members_v3 = Vec::new();
    let mut members_v5 = Vec::new();
    for n in [&a, &b] {
        let mut m = v3::connect(n.mqtt, &unique_id("m3")).await;
        m.subscribe(GROUP, v3::QoS::AtLeastOnce).await;
        members_v3.push(m);
        let mut m = v5::connect(n.mqtt, &unique_id("m5")).await;
        m.subscribe(GROUP, v5::QoS::AtLeastOnce).await;
        members_v5.push(m);
    }
    interest(&a, 1.0).await;
    interest(&b, 1.0).await;
    interest(&c, 2.0).await;
    let mut pub_a = v3::connect(a.mqtt, &unique_id("pub-a")).await;
    let mut pub_c = v3::connect(c.mqtt, &unique_id("pub-c")).await;
    const EACH: usize = 60;
    for i in 0..EACH {
        pub_a
            .publish_confirmed("s/a", v3::QoS::AtLeastOnce, false, format!("a{i}"))
            .await;
        pub_c
            .publish_confirmed("s/c", v3::QoS::AtLeastOnce, false, format!("c{i}"))
            .await;
    }
    // Collect until every member has been silent for a while.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_node = [0usize; 2];
    loop {
        let mut any = false;
        for (n, m) in members_v3.iter_mut().enumerate() {
            while let Some(p) = m.try_next_publish(Duration::from_millis(200)).await {
                *seen
                    .entry(String::from_utf8_lossy(&p.payload).into())
                    .or_default() += 1;
                per_node[n] += 1;
                any = true;
            }
        }
        for (n, m) in members_v5.iter_mut().enumerate() {
            while let Some(p) = m.try_next_publish(Duration::from_millis(200)).await {
                *seen.entry(payload_v5(&p)).or_default() += 1;
                per_node[n] += 1;
                any = true;
            }
        }
        if !any {
            break;
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    let expected: BTreeSet<String> = (0..EACH)
        .flat_map(|i| [format!("a{i}"), format!("c{i}")])
        .collect();
    let got: BTreeSet<String> = seen.into_keys().collect();
    assert_eq!(got, expected, "every message reaches exactly one member");
    // Both nodes' members take part, whichever node the message was published on.
    assert!(per_node[0] > 0 && per_node[1] > 0, "{per_node:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_leaves_its_node_only_when_another_node_wants_it() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let (a, b) = (node(&nats.url(), "a").await, node(&nats.url(), "b").await);
    // Interest on a itself and on b in other topics: nothing a publishes on `quiet/` is wanted
    // anywhere else.
    let mut local = v3::connect(a.mqtt, &unique_id("local")).await;
    local.subscribe("quiet/#", v3::QoS::AtMostOnce).await;
    let mut elsewhere = v3::connect(b.mqtt, &unique_id("elsewhere")).await;
    elsewhere.subscribe("loud/#", v3::QoS::AtMostOnce).await;
    interest(&a, 1.0).await;
    let mut publisher = v3::connect(a.mqtt, &unique_id("pub")).await;
    const N: usize = 300;
    // Beats (one per node per second) also count in in_msgs: measured over a burst far shorter
    // than the allowance made for them.
    let before = nats.in_msgs().await;
    let started = std::time::Instant::now();
    for i in 0..N {
        publisher
            .publish("quiet/x", v3::QoS::AtMostOnce, false, format!("q{i}"))
            .await;
    }
    publisher
        .publish_confirmed("quiet/x", v3::QoS::AtLeastOnce, false, "end")
        .await;
    for _ in 0..=N {
        local.next_publish(WAIT).await;
    }
    let quiet = nats.in_msgs().await - before;
    let beats = 2 * (started.elapsed().as_secs() + 2);
    assert!(
        quiet <= beats,
        "{quiet} messages reached NATS while no other node wanted any (beats: {beats})"
    );
    assert_eq!(
        metric(&a, "gateway_cluster_messages_sent_total", &[]).await,
        0.0
    );

    // The same burst on a topic b wants does reach NATS, once per message.
    let before = nats.in_msgs().await;
    for i in 0..N {
        publisher
            .publish("loud/x", v3::QoS::AtMostOnce, false, format!("l{i}"))
            .await;
    }
    publisher
        .publish_confirmed("loud/x", v3::QoS::AtLeastOnce, false, "end")
        .await;
    for _ in 0..=N {
        elsewhere.next_publish(WAIT).await;
    }
    let loud = nats.in_msgs().await - before;
    assert!(loud > N as u64, "only {loud} messages reached NATS");
    assert_eq!(
        metric(&a, "gateway_cluster_messages_sent_total", &[]).await,
        (N + 1) as f64
    );

    // When b's subscriber leaves, a stops sending again.
    elsewhere.disconnect().await;
    interest(&a, 0.0).await;
    let before = nats.in_msgs().await;
    for i in 0..N {
        publisher
            .publish("loud/x", v3::QoS::AtMostOnce, false, format!("l{i}"))
            .await;
    }
    publisher
        .publish_confirmed("loud/x", v3::QoS::AtLeastOnce, false, "end")
        .await;
    let after = nats.in_msgs().await - before;
    assert!(
        after <= 6,
        "{after} messages reached NATS after the interest went"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_character_topics_cross_nodes_unchanged_and_never_as_wildcards() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let (a, b) = (node(&nats.url(), "a").await, node(&nats.url(), "b").await);
    let mut all = v5::connect(b.mqtt, &unique_id("all")).await;
    all.subscribe("#", v5::QoS::AtLeastOnce).await;
    all.subscribe("$dollar/#", v5::QoS::AtLeastOnce).await;
    // Literal `*` and `>` levels: each must match only itself.
    let mut star = v3::connect(b.mqtt, &unique_id("star")).await;
    star.subscribe("*", v3::QoS::AtLeastOnce).await;
    star.subscribe("a.b/>", v3::QoS::AtLeastOnce).await;
    interest(&a, 4.0).await;

    let topics = [
        "a.b/c d",
        "*",
        ">",
        "a.b/>",
        "a.b/x",
        "x//y",
        "/lead",
        "trail/",
        "100%/%2E",
        "tab\there",
        "é/ü/日本",
        "$dollar/x",
        "plain",
    ];
    let mut publisher = v5::connect(a.mqtt, &unique_id("pub")).await;
    for t in topics {
        publisher
            .publish_confirmed(t, v5::QoS::AtLeastOnce, false, t)
            .await;
    }
    let mut got = BTreeSet::new();
    for _ in topics {
        let p = all.next_publish(WAIT).await;
        assert_eq!(v5::topic_of(&p), payload_v5(&p), "topic changed on its way");
        // Order across topics is not kept when they reach b through different NATS
        // subscriptions (here star's); MQTT orders per topic, which is kept (see above).
        assert!(got.insert(v5::topic_of(&p)), "twice: {}", v5::topic_of(&p));
    }
    all.expect_no_publish(QUIET).await;
    let want: BTreeSet<String> = topics.iter().map(|t| t.to_string()).collect();
    assert_eq!(got, want, "each once; `#` and `$dollar/#` do not overlap");
    let mut starred = Vec::new();
    while let Some(p) = star.try_next_publish(QUIET).await {
        starred.push(p.topic);
    }
    assert_eq!(starred, ["*", "a.b/>"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_says_when_cluster_routing_is_down_and_the_node_recovers_by_itself() {
    // NATS is not there yet: the node starts and serves its local clients anyway.
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let a = node(&url, "a").await;
    let (status, body) = request(a.http, "GET", "/readyz", None).await;
    assert_eq!(
        (status, body.as_str()),
        (
            503,
            "not ready: cluster routing is down (no connection to NATS)\n"
        )
    );
    assert_eq!(metric(&a, "gateway_cluster_connected", &[]).await, 0.0);
    let mut sub = v3::connect(a.mqtt, &unique_id("sub")).await;
    sub.subscribe("t", v3::QoS::AtLeastOnce).await;
    let mut publisher = v3::connect(a.mqtt, &unique_id("pub")).await;
    publisher
        .publish_confirmed("t", v3::QoS::AtLeastOnce, false, "local")
        .await;
    assert_eq!(&sub.next_publish(WAIT).await.payload[..], b"local");

    let Some(nats) = NatsServer::start_on(port).await else {
        return;
    };
    let b = node(&nats.url(), "b").await;
    // The client's reconnect back-off grows to a few seconds.
    within(Duration::from_secs(15), "a reconnecting to NATS", async {
        while request(a.http, "GET", "/readyz", None).await.0 != 200 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    // Once connected, a announced its interest: b routes to it.
    interest(&b, 1.0).await;
    let mut pub_b = v3::connect(b.mqtt, &unique_id("pub-b")).await;
    pub_b
        .publish_confirmed("t", v3::QoS::AtLeastOnce, false, "from b")
        .await;
    assert_eq!(&sub.next_publish(WAIT).await.payload[..], b"from b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_leaves_is_forgotten_at_once_and_nats_restarting_heals_the_cluster() {
    let port = free_port();
    let Some(mut nats) = NatsServer::start_on(port).await else {
        return;
    };
    let (a, b, c) = three_nodes(&nats).await;
    let mut sub_b = v3::connect(b.mqtt, &unique_id("sub-b")).await;
    sub_b.subscribe("r/#", v3::QoS::AtLeastOnce).await;
    let mut sub_c = v3::connect(c.mqtt, &unique_id("sub-c")).await;
    sub_c.subscribe("r/+", v3::QoS::AtLeastOnce).await;
    // A persistent session on b: what it wants must not be acknowledged and then lost.
    let mut keep = v5::Client::connect(v5::persistent(b.mqtt, &unique_id("keep"), 300)).await;
    keep.subscribe("p/#", v5::QoS::AtLeastOnce).await;
    interest(&a, 3.0).await;
    // A clean shutdown says goodbye: the others drop its interest without waiting for its
    // beats to stop (5 s).
    c.shutdown().await;
    within(Duration::from_secs(1), "a forgetting c", async {
        while metric(&a, "gateway_cluster_remote_interest", &[]).await != 2.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(metric(&a, "gateway_cluster_nodes", &[]).await, 1.0);

    // NATS goes away: both nodes say routing is down, keep serving locally, and come back by
    // themselves when it returns, with b's interest announced again.
    nats.kill();
    assert!(ready(&a, 503, WAIT).await && ready(&b, 503, WAIT).await);
    let mut local = v3::connect(a.mqtt, &unique_id("local")).await;
    local.subscribe("l", v3::QoS::AtLeastOnce).await;
    let mut pub_a = v3::connect(a.mqtt, &unique_id("pub-a")).await;
    pub_a
        .publish_confirmed("l", v3::QoS::AtLeastOnce, false, "still here")
        .await;
    assert_eq!(&local.next_publish(WAIT).await.payload[..], b"still here");
    // While NATS is down, what b wants is dropped and counted, not queued without bound.
    pub_a
        .publish_confirmed("r/x", v3::QoS::AtLeastOnce, false, "lost")
        .await;
    assert!(
        metric(
            &a,
            "gateway_cluster_messages_dropped_total",
            &["\"link_down\""]
        )
        .await
            >= 1.0
    );
    // What b's persistent session wants is refused instead, so that its publisher sends it
    // again (the local delivery above was made all the same).
    let mut pub5 = v5::connect(a.mqtt, &unique_id("pub5")).await;
    assert_eq!(
        pub5.publish_acked("p/x", "refused").await,
        v5::PubAckReason::UnspecifiedError
    );
    let refused = metric(
        &a,
        "gateway_cluster_messages_refused_total",
        &["\"unconfirmed\""],
    );
    assert_eq!(refused.await, 1.0);
    // b's interest changes while NATS is away: nothing can be announced then.
    sub_b.subscribe("r2/#", v3::QoS::AtLeastOnce).await;
    let Some(_nats) = NatsServer::start_on(port).await else {
        return;
    };
    assert!(ready(&a, 200, Duration::from_secs(20)).await);
    assert!(ready(&b, 200, Duration::from_secs(20)).await);
    // b's hello and snapshot after reconnecting (or, failing those, a beat showing another
    // version) bring a's view up to date.
    interest(&a, 3.0).await;
    pub_a
        .publish_confirmed("r2/x", v3::QoS::AtLeastOnce, false, "new filter")
        .await;
    assert_eq!(&sub_b.next_publish(WAIT).await.payload[..], b"new filter");
    pub_a
        .publish_confirmed("r/x", v3::QoS::AtLeastOnce, false, "back")
        .await;
    assert_eq!(&sub_b.next_publish(WAIT).await.payload[..], b"back");
    assert_eq!(
        pub5.publish_acked("p/x", "kept").await,
        v5::PubAckReason::Success
    );
    assert_eq!(&keep.next_publish(WAIT).await.payload[..], b"kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_log_in_to_nats_with_a_user_and_password_or_a_token() {
    let port = free_port();
    let Some(nats) = NatsServer::start_with(port, &["--user", "gw", "--pass", "s3cret"]).await
    else {
        return;
    };
    let login = |user: &str, pass: &str| {
        let (user, pass) = (user.to_owned(), pass.to_owned());
        move |n: &mut gateway::config::NatsConfig| {
            n.user = Some(user);
            n.password = Some(pass);
        }
    };
    let a = node_with(&nats.url(), "a", login("gw", "s3cret")).await;
    let b = node_with(&nats.url(), "b", login("gw", "s3cret")).await;
    let wrong = node_with(&nats.url(), "c", login("gw", "wrong")).await;
    assert!(ready(&a, 200, WAIT).await && ready(&b, 200, WAIT).await);
    let mut sub = v3::connect(b.mqtt, &unique_id("sub")).await;
    sub.subscribe("auth/t", v3::QoS::AtLeastOnce).await;
    interest(&a, 1.0).await;
    let mut publisher = v3::connect(a.mqtt, &unique_id("pub")).await;
    publisher
        .publish_confirmed("auth/t", v3::QoS::AtLeastOnce, false, "in")
        .await;
    assert_eq!(&sub.next_publish(WAIT).await.payload[..], b"in");
    // A refused login leaves the node serving locally, not ready, and unknown to the others.
    assert!(!ready(&wrong, 200, Duration::from_secs(2)).await);
    assert_eq!(metric(&a, "gateway_cluster_nodes", &[]).await, 1.0);
    drop(nats);

    let Some(nats) = NatsServer::start_with(free_port(), &["--auth", "t0ken"]).await else {
        return;
    };
    let with_token = node_with(&nats.url(), "d", |n| n.token = Some("t0ken".into())).await;
    assert!(ready(&with_token, 200, WAIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_nats_over_mutual_tls() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let dir = binary::scratch::Scratch::new("nats-tls");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("ca.pem"), ca.pem()).expect("write CA");
    for (name, sans) in [
        ("server", vec!["localhost", "127.0.0.1"]),
        ("client", vec!["node"]),
    ] {
        let key = KeyPair::generate().expect("key");
        let sans: Vec<String> = sans.into_iter().map(str::to_owned).collect();
        let cert = CertificateParams::new(sans)
            .expect("params")
            .signed_by(&key, &ca)
            .expect("sign");
        std::fs::write(path(&format!("{name}.pem")), cert.pem()).expect("write cert");
        std::fs::write(path(&format!("{name}.key")), key.serialize_pem()).expect("write key");
    }
    let text = |name: &str| path(name).display().to_string();
    let (cert, key, ca_file) = (text("server.pem"), text("server.key"), text("ca.pem"));
    let port = free_port();
    let tls = [
        "--tls",
        "--tlscert",
        &cert,
        "--tlskey",
        &key,
        "--tlsverify",
        "--tlscacert",
        &ca_file,
    ];
    let Some(_nats) = NatsServer::start_with(port, &tls).await else {
        return;
    };
    let url = format!("tls://127.0.0.1:{port}");
    let with_cert = |n: &mut gateway::config::NatsConfig| {
        n.tls_ca = Some(path("ca.pem"));
        n.tls_cert = Some(path("client.pem"));
        n.tls_key = Some(path("client.key"));
    };
    let a = node_with(&url, "a", with_cert).await;
    let b = node_with(&url, "b", with_cert).await;
    // Without a client certificate the server refuses the handshake.
    let anonymous = node_with(&url, "c", |n| n.tls_ca = Some(path("ca.pem"))).await;
    assert!(ready(&a, 200, WAIT).await && ready(&b, 200, WAIT).await);
    let mut sub = v5::connect(b.mqtt, &unique_id("sub")).await;
    sub.subscribe("tls/#", v5::QoS::AtLeastOnce).await;
    interest(&a, 1.0).await;
    let mut publisher = v5::connect(a.mqtt, &unique_id("pub")).await;
    publisher
        .publish_confirmed("tls/t", v5::QoS::AtLeastOnce, false, "sealed")
        .await;
    assert_eq!(payload_v5(&sub.next_publish(WAIT).await), "sealed");
    assert!(!ready(&anonymous, 200, Duration::from_secs(2)).await);
}

#[test]
fn cluster_configuration_mistakes_exit_2_naming_key_and_value() {
    let dir = binary::scratch::Scratch::new("cluster-config");
    for (text, message) in [
        (
            "[cluster]\nenabled = true\nnode_name = \"a\"\n",
            "config: invalid value for `nats.servers`: [] ([cluster] enabled = true needs at \
             least one NATS server)",
        ),
        (
            "[nats]\nservers = [\"nats://127.0.0.1:4222\"]\n[cluster]\nenabled = true\n",
            "config: invalid value for `cluster.node_name`: \"\"",
        ),
        (
            "[nats]\nservers = [\"http://127.0.0.1:4222\"]\n",
            "config: invalid value for `nats.servers`: \"http://127.0.0.1:4222\"",
        ),
    ] {
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, text).expect("write config");
        let out = binary::run_refused_config(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {stderr}");
        assert!(stderr.starts_with(message), "{text}: {stderr}");
    }
}

/// A node with `[mqtt]` settings `tune` changes.
async fn node_mqtt(
    nats_url: &str,
    name: &str,
    tune: impl FnOnce(&mut gateway::config::MqttConfig),
) -> Observed {
    Observed::cluster_node(nats_url, name, |c| tune(&mut c.mqtt)).await
}

/// The retained messages a new subscriber to `filter` on `node` gets: (topic, payload), sorted.
async fn retained_on(node: &Observed, filter: &str) -> Vec<(String, String)> {
    let mut sub = v5::connect(node.mqtt, &unique_id("look")).await;
    sub.subscribe(filter, v5::QoS::AtLeastOnce).await;
    let mut got = Vec::new();
    while let Some(p) = sub.try_next_publish(QUIET).await {
        assert!(p.retain, "a retained message is sent with RETAIN set");
        got.push((v5::topic_of(&p), payload_v5(&p)));
    }
    sub.disconnect().await;
    got.sort();
    got
}

/// Waits until a new subscriber to `filter` on `node` gets exactly `want`.
async fn retained_becomes(node: &Observed, filter: &str, want: &[(&str, &str)]) {
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(t, p)| (t.to_string(), p.to_string()))
        .collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = retained_on(node, filter).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retained on {filter}: {got:?}, expected {want:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_are_cluster_wide_and_survive_a_restart_of_every_node() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let (a, b, c) = three_nodes(&nats).await;
    for n in [&a, &b, &c] {
        assert!(ready(n, 200, WAIT).await, "retained stream loaded");
    }
    // Set on a (5.0, with properties) and on b (3.1.1); nobody subscribed anywhere yet.
    let mut pub_a = v5::connect(a.mqtt, &unique_id("pub-a")).await;
    let props = v5::PublishProperties {
        content_type: Some("text/plain".into()),
        user_properties: vec![("k".into(), "v".into())],
        message_expiry_interval: Some(600),
        ..Default::default()
    };
    pub_a
        .publish_confirmed_with("ret/a", v5::QoS::AtLeastOnce, true, "from a", Some(props))
        .await;
    let mut pub_b = v3::connect(b.mqtt, &unique_id("pub-b")).await;
    pub_b
        .publish_confirmed("ret/b", v3::QoS::AtLeastOnce, true, "from b")
        .await;
    pub_b
        .publish_confirmed("ret/gone", v3::QoS::AtLeastOnce, true, "soon cleared")
        .await;
    // A later subscriber on c (which no client retained anything on) gets both, with the v5
    // properties intact; a 3.1.1 subscriber there too.
    retained_becomes(
        &c,
        "ret/#",
        &[
            ("ret/a", "from a"),
            ("ret/b", "from b"),
            ("ret/gone", "soon cleared"),
        ],
    )
    .await;
    let mut props_sub = v5::connect(c.mqtt, &unique_id("props")).await;
    props_sub.subscribe("ret/a", v5::QoS::AtLeastOnce).await;
    let got = props_sub.next_publish(WAIT).await;
    let p = got.properties.unwrap_or_default();
    assert_eq!(p.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p.user_properties, [("k".to_string(), "v".to_string())]);
    assert!(
        matches!(p.message_expiry_interval, Some(590..=600)),
        "{p:?}"
    );
    let mut v3_sub = v3::connect(c.mqtt, &unique_id("v3")).await;
    v3_sub.subscribe("ret/b", v3::QoS::AtLeastOnce).await;
    let got = v3_sub.next_publish(WAIT).await;
    assert!(got.retain);
    assert_eq!(&got.payload[..], b"from b");

    // A clear (empty payload) on c clears it everywhere, and a replace on a replaces it
    // everywhere.
    let mut pub_c = v3::connect(c.mqtt, &unique_id("pub-c")).await;
    pub_c
        .publish_confirmed("ret/gone", v3::QoS::AtLeastOnce, true, "")
        .await;
    pub_a
        .publish_confirmed("ret/a", v5::QoS::AtLeastOnce, true, "from a again")
        .await;
    let want = [("ret/a", "from a again"), ("ret/b", "from b")];
    for n in [&a, &b, &c] {
        retained_becomes(n, "ret/#", &want).await;
    }
    assert!(metric(&a, "gateway_cluster_retained_writes_total", &[]).await >= 2.0);
    assert!(metric(&b, "gateway_cluster_retained_updates_total", &[]).await >= 5.0);
    assert_eq!(metric(&b, "gateway_cluster_retained_ready", &[]).await, 1.0);

    // Every node stops; two new ones (with empty local state) serve what the cluster kept.
    for n in [a, b, c] {
        n.shutdown().await;
    }
    let (d, e) = (node(&nats.url(), "d").await, node(&nats.url(), "e").await);
    for n in [&d, &e] {
        assert!(ready(n, 200, WAIT).await);
        assert_eq!(retained_on(n, "ret/#").await.len(), 2);
        retained_becomes(n, "ret/#", &want).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_setting_one_retained_topic_at_once_converge_to_one_value() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let (a, b, c) = three_nodes(&nats).await;
    let mut pub_a = v3::connect(a.mqtt, &unique_id("pub-a")).await;
    let mut pub_b = v3::connect(b.mqtt, &unique_id("pub-b")).await;
    const ROUNDS: usize = 20;
    for round in 0..ROUNDS {
        let topic = format!("race/{round}");
        tokio::join!(
            pub_a.publish_confirmed(&topic, v3::QoS::AtLeastOnce, true, format!("a{round}")),
            pub_b.publish_confirmed(&topic, v3::QoS::AtLeastOnce, true, format!("b{round}")),
        );
    }
    // Each topic ends with one value, the same on every node (whichever won the stream).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let seen = [
            retained_on(&a, "race/#").await,
            retained_on(&b, "race/#").await,
            retained_on(&c, "race/#").await,
        ];
        if seen[0].len() == ROUNDS && seen.iter().all(|s| *s == seen[0]) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nodes disagree: {seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_writes_made_while_nats_is_down_reach_the_cluster_when_it_returns() {
    let port = free_port();
    let Some(mut nats) = NatsServer::start_on(port).await else {
        return;
    };
    let (a, b) = (node(&nats.url(), "a").await, node(&nats.url(), "b").await);
    assert!(ready(&a, 200, WAIT).await && ready(&b, 200, WAIT).await);
    nats.kill();
    assert!(ready(&a, 503, WAIT).await);
    let mut pub_a = v3::connect(a.mqtt, &unique_id("pub-a")).await;
    pub_a
        .publish_confirmed("down/x", v3::QoS::AtLeastOnce, true, "kept")
        .await;
    // Served locally at once.
    retained_becomes(&a, "down/#", &[("down/x", "kept")]).await;
    nats.start_again().await;
    assert!(ready(&a, 200, Duration::from_secs(20)).await);
    assert!(ready(&b, 200, Duration::from_secs(20)).await);
    // b's copy follows the stream again once its connection is back (not after the lost
    // consumer's missed heartbeats, seconds later), and it is not ready before that.
    retained_becomes(&b, "down/#", &[("down/x", "kept")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_max_applies_to_what_other_nodes_retain() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let a = node(&nats.url(), "a").await;
    let small = node_mqtt(&nats.url(), "small", |m| m.retained_max = 1).await;
    assert!(ready(&a, 200, WAIT).await && ready(&small, 200, WAIT).await);
    let mut pub_a = v3::connect(a.mqtt, &unique_id("pub-a")).await;
    for t in ["lim/1", "lim/2", "lim/3"] {
        pub_a
            .publish_confirmed(t, v3::QoS::AtLeastOnce, true, t)
            .await;
    }
    retained_becomes(
        &a,
        "lim/#",
        &[("lim/1", "lim/1"), ("lim/2", "lim/2"), ("lim/3", "lim/3")],
    )
    .await;
    within(WAIT, "the small node refusing two", async {
        while metric(
            &small,
            "gateway_messages_dropped_total",
            &["\"retained_full\""],
        )
        .await
            < 2.0
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(retained_on(&small, "lim/#").await.len(), 1);
}

/// Each node pings the others over NATS once a second and records the round trip; a node alone
/// pings nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_round_trip_to_the_other_nodes_is_measured() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let url = nats.url();
    let a = node(&url, "a").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        metric(&a, "gateway_cluster_round_trip_seconds_count", &[]).await,
        0.0,
        "a node alone has nobody to ping"
    );
    let b = node(&url, "b").await;
    within(WAIT * 3, "three round trips measured on each node", async {
        loop {
            let mut done = true;
            for n in [&a, &b] {
                done &= metric(n, "gateway_cluster_round_trip_seconds_count", &[]).await >= 3.0;
            }
            if done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let count = metric(&a, "gateway_cluster_round_trip_seconds_count", &[]).await;
    let sum = metric(&a, "gateway_cluster_round_trip_seconds_sum", &[]).await;
    assert!(
        sum > 0.0 && sum / count < 0.1,
        "{sum} s over {count} round trips"
    );
}

/// Production runs NATS itself as a cluster: node a on one nats-server, node b on another, the
/// two servers routed to each other with JetStream clustered over both. Messages, retained
/// messages and a session cross from one server's node to the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_two_clustered_nats_servers_form_one_broker() {
    let (c1, c2) = (free_port(), free_port());
    let server = |name: &str, own: u16, other: u16| {
        let args: Vec<String> = [
            "-n",
            name,
            "--cluster_name",
            "gw",
            "--cluster",
            &format!("nats://127.0.0.1:{own}"),
            "--routes",
            &format!("nats://127.0.0.1:{other}"),
        ]
        .map(str::to_owned)
        .into();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            NatsServer::start_with(free_port(), &args).await
        }
    };
    let Some(s1) = server("s1", c1, c2).await else {
        return;
    };
    let s2 = server("s2", c2, c1).await.expect("second nats-server");
    let a = node(&s1.url(), "a").await;
    let b = node(&s2.url(), "b").await;

    let mut sub = v5::connect(b.mqtt, &unique_id("two-sub")).await;
    sub.subscribe("two/+", v5::QoS::AtLeastOnce).await;
    interest(&a, 1.0).await;
    let mut publ = v3::connect(a.mqtt, &unique_id("two-pub")).await;
    publ.publish_confirmed("two/x", v3::QoS::AtLeastOnce, false, "across")
        .await;
    let got = sub.next_publish(WAIT).await;
    assert_eq!(payload_v5(&got), "across");

    // The retained stream lives in the clustered JetStream (its meta leader may take a few
    // seconds to be elected after start: the node retries meanwhile).
    publ.publish_confirmed("two/r", v3::QoS::AtLeastOnce, true, "kept")
        .await;
    let deadline = tokio::time::Instant::now() + WAIT * 4;
    while retained_on(&b, "two/r").await != [("two/r".to_owned(), "kept".to_owned())] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the retained message never reached b"
        );
    }

    // A persistent session on a, offline with a message queued, taken over on b.
    let id = unique_id("two-roam");
    let mut c = v5::Client::connect(v5::persistent(a.mqtt, &id, 300)).await;
    c.subscribe("roam/+", v5::QoS::AtLeastOnce).await;
    c.disconnect().await;
    publ.publish_confirmed("roam/q", v3::QoS::AtLeastOnce, false, "queued")
        .await;
    let mut c = v5::Client::connect(v5::persistent(b.mqtt, &id, 300)).await;
    let got = c.next_publish(WAIT * 2).await;
    assert_eq!(
        (v5::topic_of(&got), payload_v5(&got)),
        ("roam/q".to_owned(), "queued".to_owned())
    );
}
