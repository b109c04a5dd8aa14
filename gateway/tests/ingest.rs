//! Ingestion into NATS JetStream (`[[ingest]]`) against a real nats-server 2.9 (Debian's, JetStream
//! on, its store in a temporary directory; see `common::nats`), with real MQTT clients (rumqttc,
//! raw sockets) and the stream read back with async-nats: subjects and headers, one write per
//! matching rule, PUBACK only once the stream has the message (nats-server stopped: none; back:
//! it comes), a DUP resend after a lost PUBACK stored once, refusals after `ack_timeout`, QoS 0
//! overflow counted, and `/readyz` naming the blocked rule.
//!
//! Without `nats-server` the tests are skipped with a loud message, and fail under CI.

mod binary;
mod clients;
mod cluster_node;
mod common;
mod observe;

use std::time::Duration;

use async_nats::jetstream;
use clients::raw::{self, Connect, Raw, PUBACK, V};
use clients::{unique_id, v5, within, QUIET, WAIT};
use common::nats::NatsServer;
use gateway::config::{IngestAck, IngestDiscard, IngestRule};
use observe::{families, repo_root, request, samples, total, Observed};

/// A gateway with `rules` writing to `nats`.
async fn gateway(nats: &NatsServer, rules: Vec<IngestRule>) -> Observed {
    let url = nats.url();
    let gw = Observed::start(move |c| {
        c.sys.interval = 0;
        c.nats.servers = vec![url];
        c.ingest = rules;
    })
    .await;
    // The streams exist (created by the gateway) once it is ready.
    assert!(
        eventually_ready(&gw, 200).await,
        "gateway not ready: {:?}",
        request(gw.http, "GET", "/readyz", None).await
    );
    gw
}

async fn eventually_ready(gw: &Observed, status: u16) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::time::Instant::now() < deadline {
        if request(gw.http, "GET", "/readyz", None).await.0 == status {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn js(nats: &NatsServer) -> jetstream::Context {
    let client = async_nats::connect(nats.url())
        .await
        .expect("test connects to NATS");
    jetstream::new(client)
}

/// How many messages `stream` holds.
async fn count(js: &jetstream::Context, stream: &str) -> u64 {
    let mut s = js.get_stream(stream).await.expect("stream exists");
    s.info().await.expect("stream info").state.messages
}

/// Waits until `stream` holds `n` messages.
async fn holds(js: &jetstream::Context, stream: &str, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = count(js, stream).await;
        if now == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream {stream} holds {now} messages, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A message as a backend reads it.
struct Stored {
    subject: String,
    headers: async_nats::HeaderMap,
    payload: bytes::Bytes,
}

/// The stream's messages, in order, read as a backend does: through a consumer (an ephemeral
/// one from the start). `Stream::get_raw_message` would not do: async-nats 0.52 keeps only the
/// last value of a repeated header there.
async fn messages(js: &jetstream::Context, stream: &str) -> Vec<Stored> {
    use futures_util::StreamExt;
    let n = count(js, stream).await as usize;
    let consumer = js
        .get_stream(stream)
        .await
        .expect("stream exists")
        .create_consumer(jetstream::consumer::pull::Config {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("ephemeral consumer");
    let mut batch = consumer
        .fetch()
        .max_messages(n)
        .messages()
        .await
        .expect("fetch");
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let m = within(WAIT, "a stored message", batch.next())
            .await
            .expect("a message")
            .expect("a message, not an error");
        out.push(Stored {
            subject: m.subject.to_string(),
            headers: m.headers.clone().unwrap_or_default(),
            payload: m.payload.clone(),
        });
    }
    out
}

fn header(m: &Stored, name: &str) -> String {
    m.headers
        .get(name)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_else(|| panic!("no {name} header in {:?}", m.headers))
}

async fn metric(gw: &Observed, name: &str, labels: &[&str]) -> f64 {
    total(&samples(&gw.metrics().await), name, labels)
}

/// A 3.1.1 or v5 QoS 1 PUBLISH, DUP when `dup`.
fn qos1(v: V, topic: &str, id: u16, payload: &[u8], dup: bool) -> Vec<u8> {
    let first = if dup { 0x3A } else { 0x32 };
    v.publish(first, topic.as_bytes(), Some(id), &[], payload)
}

/// The reason code of a PUBACK (0 for 3.1.1 and for a v5 PUBACK without one).
fn puback_code(f: &raw::Frame) -> u8 {
    assert_eq!(f.kind(), PUBACK, "expected PUBACK, got {f:?}");
    f.body.get(2).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_0_1_2_land_with_subjects_and_headers_once_per_matching_rule() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let gw = gateway(
        &nats,
        vec![
            IngestRule::new("dev/+/t/#", "TEL", "tel.{client_id}.{2}"),
            IngestRule::new("dev/#", "ALL", "all.{topic}"),
        ],
    )
    .await;
    let js = js(&nats).await;
    let id = unique_id("dev a");
    let mut device = v5::connect(gw.mqtt, &id).await;
    let props = v5::PublishProperties {
        content_type: Some("application/json".into()),
        user_properties: vec![("unit".into(), "°C".into()), ("k=1".into(), "v w".into())],
        ..v5::PublishProperties::default()
    };
    device
        .publish_with(
            "dev/s.1/t/x",
            v5::QoS::AtMostOnce,
            false,
            "m0",
            props.clone(),
        )
        .await;
    device
        .publish_confirmed_with("dev/s.1/t/x", v5::QoS::AtLeastOnce, true, "m1", Some(props))
        .await;
    device
        .publish_confirmed("dev/s.1/t/x", v5::QoS::ExactlyOnce, false, "m2")
        .await;
    // Matched by the second rule only; and a topic no rule matches.
    device
        .publish_confirmed("dev/other", v5::QoS::AtLeastOnce, false, "m3")
        .await;
    device
        .publish_confirmed("elsewhere", v5::QoS::AtLeastOnce, false, "none")
        .await;
    holds(&js, "TEL", 3).await;
    holds(&js, "ALL", 4).await;

    let escaped_id = id.replace(' ', "%20");
    let tel = messages(&js, "TEL").await;
    for (i, m) in tel.iter().enumerate() {
        assert_eq!(m.payload, format!("m{i}").as_bytes(), "in publish order");
        assert_eq!(
            m.subject.as_str(),
            format!("tel.{escaped_id}.s%2E1"),
            "level 2 escaped"
        );
        assert_eq!(header(m, "Mqtt-Topic"), "dev/s.1/t/x");
        assert_eq!(header(m, "Mqtt-Client-Id"), escaped_id);
        assert_eq!(header(m, "Mqtt-Qos"), i.to_string());
        assert_eq!(header(m, "Mqtt-Retain"), (i == 1).to_string());
        assert_eq!(
            m.headers.get("Nats-Msg-Id").is_some(),
            i > 0,
            "de-dup id for QoS 1/2"
        );
    }
    assert_eq!(header(&tel[1], "Mqtt-Content-Type"), "application/json");
    let user: Vec<&str> = tel[1]
        .headers
        .get_all("Mqtt-User-Property")
        .map(|v| v.as_str())
        .collect();
    assert_eq!(user, ["unit=°C", "k%3D1=v%20w"]);
    let all = messages(&js, "ALL").await;
    let subjects: Vec<&str> = all.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(
        subjects,
        [
            "all.dev.s%2E1.t.x",
            "all.dev.s%2E1.t.x",
            "all.dev.s%2E1.t.x",
            "all.dev.other"
        ]
    );
    assert_eq!(
        metric(&gw, "gateway_ingest_acked_total", &["rule=\"0\""]).await,
        3.0
    );
    assert_eq!(
        metric(&gw, "gateway_ingest_acked_total", &["stream=\"ALL\""]).await,
        4.0
    );
    assert_eq!(
        metric(&gw, "gateway_ingest_ack_seconds_count", &[]).await,
        7.0
    );

    // docs/operations.md lists exactly the families a gateway with rules serves.
    let doc = std::fs::read_to_string(repo_root().join("docs/operations.md")).expect("doc");
    let section = doc
        .split("\n## Ingestion metrics\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("an Ingestion metrics section");
    let listed: Vec<String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(name, _)| name.to_owned()))
        .collect();
    let served: Vec<String> = families(&gw.metrics().await)
        .into_keys()
        .filter(|f| f.starts_with("gateway_ingest_"))
        .collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, served, "docs/operations.md, Ingestion metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puback_waits_until_the_stream_has_the_message() {
    let Some(mut nats) = NatsServer::start().await else {
        return;
    };
    let gw = gateway(&nats, vec![IngestRule::new("d/#", "WAIT", "w.{client_id}")]).await;
    for v in V::BOTH {
        let id = unique_id("waiting");
        let mut device = Raw::connected(gw.mqtt, v, &id).await;
        device.send(&qos1(v, "d/1", 1, b"up", false)).await;
        assert_eq!(puback_code(&device.expect_kind(PUBACK, WAIT).await), 0);

        nats.kill();
        device.send(&qos1(v, "d/1", 2, b"held", false)).await;
        assert_eq!(
            device.read_packet_within(Duration::from_secs(2)).await,
            Err(raw::End::Silent),
            "{v:?}: no PUBACK while JetStream is down"
        );
        let (status, body) = request(gw.http, "GET", "/readyz", None).await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("ingest"), "{body}");

        nats.start_again().await;
        let ack = within(
            Duration::from_secs(15),
            "the held PUBACK",
            device.expect_kind(PUBACK, WAIT),
        )
        .await;
        assert_eq!(puback_code(&ack), 0);
        assert_eq!(ack.body[..2], 2u16.to_be_bytes());
        let js = js(&nats).await;
        let stored = messages(&js, "WAIT").await;
        assert!(
            stored
                .iter()
                .any(|m| m.payload == "held" && header(m, "Mqtt-Client-Id") == id),
            "{v:?}: the acknowledged message is in the stream"
        );
        assert!(eventually_ready(&gw, 200).await, "ready again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dup_resend_after_a_lost_puback_is_stored_once() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let gw = gateway(
        &nats,
        vec![IngestRule::new("d/#", "DEDUP", "d.{client_id}")],
    )
    .await;
    let js = js(&nats).await;
    let id = unique_id("resender");
    let persistent = Connect::v311(&id, false, 60);
    let (mut device, _) = Raw::connect(gw.mqtt, &persistent).await;
    device
        .send(&qos1(V::V311, "d/x", 7, b"reading-1", false))
        .await;
    holds(&js, "DEDUP", 1).await;
    // The PUBACK is lost with the connection; the client sends the message again with DUP.
    drop(device);
    let (mut device, present) = Raw::connect(gw.mqtt, &persistent).await;
    assert!(present, "the session was kept");
    device
        .send(&qos1(V::V311, "d/x", 7, b"reading-1", true))
        .await;
    assert_eq!(puback_code(&device.expect_kind(PUBACK, WAIT).await), 0);
    // A new message reusing packet id 7, even with the same payload, is a new entry.
    device
        .send(&qos1(V::V311, "d/x", 7, b"reading-1", false))
        .await;
    assert_eq!(puback_code(&device.expect_kind(PUBACK, WAIT).await), 0);
    holds(&js, "DEDUP", 2).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        count(&js, "DEDUP").await,
        2,
        "the resend was not stored again"
    );
    assert_eq!(
        metric(&gw, "gateway_ingest_duplicates_total", &[]).await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_after_ack_timeout_v5_with_0x80_and_3_1_1_disconnected() {
    let Some(mut nats) = NatsServer::start().await else {
        return;
    };
    let mut rule = IngestRule::new("d/#", "SHORT", "s.{client_id}");
    rule.ack_timeout = Duration::from_secs(1);
    let gw = gateway(&nats, vec![rule]).await;
    nats.kill();
    let mut v5_device = Raw::connected(gw.mqtt, V::V5, &unique_id("v5")).await;
    v5_device.send(&qos1(V::V5, "d/1", 1, b"x", false)).await;
    let ack = within(
        Duration::from_secs(5),
        "PUBACK 0x80",
        v5_device.expect_kind(PUBACK, WAIT),
    )
    .await;
    assert_eq!(puback_code(&ack), 0x80, "v5: unspecified error");

    let mut v3_device = Raw::connected(gw.mqtt, V::V311, &unique_id("v3")).await;
    v3_device.send(&qos1(V::V311, "d/1", 1, b"x", false)).await;
    let seen = v3_device.until_closed(Duration::from_secs(5)).await;
    assert!(
        seen.iter().all(|f| f.kind() != PUBACK),
        "3.1.1: closed without PUBACK, got {seen:?}"
    );
    assert!(metric(&gw, "gateway_ingest_failed_total", &["kind=\"timeout\""]).await >= 2.0);
    assert_eq!(
        metric(
            &gw,
            "gateway_connections_closed_total",
            &["reason=\"ingest_refused\""]
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_beyond_the_rule_room_is_dropped_and_counted() {
    let Some(mut nats) = NatsServer::start().await else {
        return;
    };
    let mut rule = IngestRule::new("d/#", "ROOM", "r.{client_id}");
    rule.ack = IngestAck::Local;
    rule.max_inflight = 4;
    let gw = gateway(&nats, vec![rule]).await;
    // Nothing is acknowledged while NATS is down: the room stays taken.
    nats.kill();
    let mut device = Raw::connected(gw.mqtt, V::V311, &unique_id("chatty")).await;
    for i in 0..50u32 {
        device
            .send(&V::V311.publish(0x30, b"d/1", None, &[], &i.to_be_bytes()))
            .await;
    }
    device.ping().await;
    // `ack = "local"`, the weaker mode: a QoS 1 message is acknowledged at once, JetStream or not.
    device.send(&qos1(V::V311, "d/1", 9, b"local", false)).await;
    let ack = within(
        Duration::from_secs(1),
        "PUBACK at once",
        device.expect_kind(PUBACK, WAIT),
    )
    .await;
    assert_eq!(ack.body[..2], 9u16.to_be_bytes());
    let dropped = metric(&gw, "gateway_ingest_dropped_total", &["rule=\"0\""]).await;
    assert!(dropped >= 46.0, "dropped {dropped} of 50 with room for 4");
    assert_eq!(
        metric(&gw, "gateway_ingest_messages_total", &[]).await,
        51.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_that_discards_new_refuses_the_publisher() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let mut rule = IngestRule::new("d/#", "FULL", "f.{client_id}");
    rule.discard = IngestDiscard::New;
    rule.max_bytes = 1000;
    rule.ack_timeout = Duration::from_secs(3);
    let gw = gateway(&nats, vec![rule]).await;
    let js = js(&nats).await;
    let mut device = Raw::connected(gw.mqtt, V::V5, &unique_id("filler")).await;
    let mut codes = Vec::new();
    for id in 1..=20u16 {
        device
            .send(&qos1(V::V5, "d/1", id, &[b'x'; 200], false))
            .await;
        codes.push(puback_code(&device.expect_kind(PUBACK, WAIT).await));
        if codes.last() != Some(&0) {
            break;
        }
    }
    assert_eq!(codes[0], 0, "the first messages fit: {codes:?}");
    assert_eq!(codes.last(), Some(&0x97), "then quota exceeded: {codes:?}");
    let stored = count(&js, "FULL").await;
    assert_eq!(
        stored as usize,
        codes.len() - 1,
        "every acknowledged message, no more"
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_ingest_failed_total",
            &["kind=\"stream_full\""]
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_stream_is_created_again_and_the_held_puback_follows() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let gw = gateway(
        &nats,
        vec![IngestRule::new("d/#", "AGAIN", "a.{client_id}")],
    )
    .await;
    let js = js(&nats).await;
    js.delete_stream("AGAIN").await.expect("stream deleted");
    let mut device = Raw::connected(gw.mqtt, V::V311, &unique_id("after-delete")).await;
    device.send(&qos1(V::V311, "d/1", 1, b"kept", false)).await;
    assert_eq!(puback_code(&device.expect_kind(PUBACK, WAIT).await), 0);
    let stored = messages(&js, "AGAIN").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].payload, "kept");
}

/// Issue 15: kill -9 the gateway during QoS 1 ingestion (a persistent session's burst of 2000,
/// pipelined): every PUBACKed message is in the stream; after the restart the device re-sends
/// every unacknowledged one with DUP, and then each of the 2000 is in the stream exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_of_the_gateway_every_acknowledged_message_is_in_the_stream() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let dir = binary::scratch::Scratch::new("ingest-kill");
    let listen = format!("127.0.0.1:{}", common::port::free_port());
    let rules = "[[ingest]]\nfilter = \"d/#\"\nstream = \"KILL\"\nsubject = \"k.{client_id}\"\n";
    let gw = stored_gateway(&dir, &nats, &listen, rules);
    let js = js(&nats).await;
    stream_exists(&js, "KILL").await;
    let id = unique_id("killed");
    let persistent = Connect::v311(&id, false, 60);
    let (mut device, _) = Raw::connect(gw.addr, &persistent).await;
    const SENT: u16 = 2000;
    let burst = |ids: &mut dyn Iterator<Item = u16>, dup: bool| {
        let mut bytes = Vec::new();
        for id in ids {
            bytes.extend(qos1(V::V311, "d/1", id, id.to_string().as_bytes(), dup));
        }
        bytes
    };
    device.stream_write(&burst(&mut (1..=SENT), false)).await;
    let mut acked = std::collections::BTreeSet::new();
    while acked.len() < 100 {
        let f = device.expect_kind(PUBACK, WAIT).await;
        acked.insert(u16::from_be_bytes([f.body[0], f.body[1]]));
    }
    gw.signal(libc::SIGKILL);
    // PUBACKs the gateway wrote before it died are still to be read.
    for f in device.until_closed(WAIT).await {
        if f.kind() == PUBACK {
            acked.insert(u16::from_be_bytes([f.body[0], f.body[1]]));
        }
    }
    assert!(acked.len() < usize::from(SENT), "killed during the run");
    drop(gw);
    let before = count(&js, "KILL").await;
    eprintln!(
        "{} of {SENT} acknowledged before the kill, {before} in the stream",
        acked.len()
    );
    let stored: std::collections::HashSet<String> = messages(&js, "KILL")
        .await
        .into_iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    let lost: Vec<u16> = acked
        .iter()
        .copied()
        .filter(|id| !stored.contains(&id.to_string()))
        .collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");

    let gw = stored_gateway(&dir, &nats, &listen, rules);
    let (mut device, present) = Raw::connect(gw.addr, &persistent).await;
    assert!(present, "the session was restored");
    let mut unacked = (1..=SENT).filter(|id| !acked.contains(id));
    device.stream_write(&burst(&mut unacked, true)).await;
    while acked.len() < usize::from(SENT) {
        let f = device.expect_kind(PUBACK, WAIT).await;
        acked.insert(u16::from_be_bytes([f.body[0], f.body[1]]));
    }
    tokio::time::sleep(QUIET).await;
    let counts = payload_counts(&js, "KILL").await;
    let twice: Vec<&String> = counts
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(p, _)| p)
        .collect();
    assert!(twice.is_empty(), "stored twice: {twice:?}");
    assert_eq!(counts.len(), usize::from(SENT));
}

#[test]
fn a_bad_rule_stops_the_binary_with_exit_2_naming_key_and_value() {
    let dir = binary::scratch::Scratch::new("ingest-config");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        "[nats]\nservers = [\"nats://127.0.0.1:4222\"]\n[[ingest]]\nfilter = \"d/#\"\n\
         stream = \"S\"\nsubject = \"t.{client_id}.>\"\n",
    )
    .expect("config written");
    let out = binary::run_refused_config(&config);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid value for `ingest[0].subject`: \"t.{client_id}.>\""),
        "{stderr}"
    );
    std::fs::write(
        &config,
        "[nats]\nservers = [\"nats://127.0.0.1:4222\"]\n[[ingest]]\nfilter = \"$share/g/d/#\"\n\
         stream = \"S\"\nsubject = \"t.{client_id}\"\n",
    )
    .expect("config written");
    let out = binary::run_refused_config(&config);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid value for `ingest[0].filter`: \"$share/g/d/#\""),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos2_resend_while_the_first_write_waits_gets_pubrec_once_stored_and_one_entry() {
    const PUBREC: u8 = 0x50;
    let Some(mut nats) = NatsServer::start().await else {
        return;
    };
    let gw = gateway(&nats, vec![IngestRule::new("d/#", "QOS2", "q.{client_id}")]).await;
    let id = unique_id("exactly-once");
    let persistent = Connect::v311(&id, false, 60);
    let (mut device, _) = Raw::connect(gw.mqtt, &persistent).await;
    nats.kill();
    device
        .send(&V::V311.publish(0x34, b"d/2", Some(5), &[], b"once"))
        .await;
    assert_eq!(
        device.read_packet_within(Duration::from_secs(1)).await,
        Err(raw::End::Silent),
        "no PUBREC while JetStream is down"
    );
    // The client gives up on this connection and sends the message again (DUP) on a new one.
    drop(device);
    let (mut device, present) = Raw::connect(gw.mqtt, &persistent).await;
    assert!(present);
    device
        .send(&V::V311.publish(0x3C, b"d/2", Some(5), &[], b"once"))
        .await;
    assert_eq!(
        device.read_packet_within(Duration::from_secs(1)).await,
        Err(raw::End::Silent),
        "the resend waits for JetStream too"
    );
    nats.start_again().await;
    let rec = within(
        Duration::from_secs(15),
        "PUBREC",
        device.expect_kind(PUBREC, WAIT),
    )
    .await;
    assert_eq!(rec.body[..2], 5u16.to_be_bytes());
    let js = js(&nats).await;
    holds(&js, "QOS2", 1).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        count(&js, "QOS2").await,
        1,
        "one entry for the message and its resend"
    );
}

/// A gateway binary keeping its store in `dir`/data, listening on `listen` (the same address
/// across restarts), with `rules` (TOML `[[ingest]]` tables) writing to `nats`.
fn stored_gateway(
    dir: &binary::scratch::Scratch,
    nats: &NatsServer,
    listen: &str,
    rules: &str,
) -> binary::Gateway {
    let config = dir.path().join("gateway.toml");
    let text = format!(
        "[nats]\nservers = [\"{}\"]\n[storage]\ndir = {:?}\n{rules}",
        nats.url(),
        dir.path().join("data").to_str().expect("UTF-8 path")
    );
    std::fs::write(&config, text).expect("config written");
    binary::Gateway::start_at(listen, &["--config", config.to_str().expect("UTF-8 path")])
}

/// Waits until `stream` exists (set up by the gateway, or by the test).
async fn stream_exists(js: &jetstream::Context, stream: &str) {
    within(WAIT, "the stream", async {
        while js.get_stream(stream).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// The payloads `stream` holds, each with how many entries have it.
async fn payload_counts(
    js: &jetstream::Context,
    stream: &str,
) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for m in messages(js, stream).await {
        *counts
            .entry(String::from_utf8_lossy(&m.payload).into_owned())
            .or_insert(0) += 1;
    }
    counts
}

/// Issue 15, de-duplication across a restart: a device with a persistent session sends QoS 1
/// and QoS 2 messages; JetStream stores them (stream `FIRST`) but the acknowledgements wait for a
/// second rule whose stream does not take them yet (`HELD` lacks the subject); the gateway is
/// killed with SIGKILL and restarted on its store; the device comes back and sends every
/// unacknowledged message again with DUP, as MQTT requires. Each is in `FIRST` once, and a new
/// message reusing a packet id with the same payload afterwards is a new entry. Before the
/// numbering was kept by the store, every resend was stored a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_and_a_restart_dup_resends_of_a_persistent_session_are_stored_once() {
    const PUBREC: u8 = 0x50;
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let js = js(&nats).await;
    // Exists without the rule's subject: its writes are retried, the acks held.
    js.create_stream(jetstream::stream::Config {
        name: "HELD".into(),
        subjects: vec!["other.>".into()],
        ..Default::default()
    })
    .await
    .expect("stream HELD");
    let dir = binary::scratch::Scratch::new("ingest-restart");
    let listen = format!("127.0.0.1:{}", common::port::free_port());
    let rules = "[[ingest]]\nfilter = \"d/#\"\nstream = \"FIRST\"\nsubject = \"f.{client_id}\"\n\
                 [[ingest]]\nfilter = \"d/#\"\nstream = \"HELD\"\nsubject = \"h.{client_id}\"\n";
    let gw = stored_gateway(&dir, &nats, &listen, rules);
    stream_exists(&js, "FIRST").await;
    let id = unique_id("restarted");
    let persistent = Connect::v311(&id, false, 60);
    let (mut device, _) = Raw::connect(gw.addr, &persistent).await;
    // Packet ids 1..=40 QoS 1, 41..=80 QoS 2; payload = packet id, and one pair alike.
    const N: u16 = 80;
    let publish = |packet_id: u16, dup: bool| {
        let payload = packet_id.to_string();
        let (qos1_first, qos2_first) = if dup { (0x3A, 0x3C) } else { (0x32, 0x34) };
        let first = if packet_id <= N / 2 {
            qos1_first
        } else {
            qos2_first
        };
        V::V311.publish(first, b"d/t", Some(packet_id), &[], payload.as_bytes())
    };
    for packet_id in 1..=N {
        device.send(&publish(packet_id, false)).await;
    }
    holds(&js, "FIRST", u64::from(N)).await;
    assert_eq!(
        device.read_packet_within(Duration::from_millis(300)).await,
        Err(raw::End::Silent),
        "no acknowledgement while HELD refuses"
    );
    gw.signal(libc::SIGKILL);
    drop(device);
    drop(gw);

    let gw = stored_gateway(&dir, &nats, &listen, rules);
    let (mut device, present) = Raw::connect(gw.addr, &persistent).await;
    assert!(present, "the session was restored");
    for packet_id in 1..=N {
        device.send(&publish(packet_id, true)).await;
    }
    // HELD takes the subject now: the held writes go through, the device is acknowledged.
    js.update_stream(jetstream::stream::Config {
        name: "HELD".into(),
        subjects: vec!["other.>".into(), "h.>".into()],
        ..Default::default()
    })
    .await
    .expect("HELD updated");
    let mut acked = std::collections::BTreeSet::new();
    while acked.len() < usize::from(N) {
        let f = within(
            Duration::from_secs(40),
            "an acknowledgement",
            device.read_packet(),
        )
        .await
        .expect("a packet");
        assert!([PUBACK, PUBREC].contains(&f.kind()), "{f:?}");
        acked.insert(u16::from_be_bytes([f.body[0], f.body[1]]));
    }
    holds(&js, "HELD", u64::from(N)).await;
    tokio::time::sleep(QUIET).await;
    let counts = payload_counts(&js, "FIRST").await;
    let twice: Vec<&String> = counts
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(p, _)| p)
        .collect();
    assert!(
        twice.is_empty(),
        "stored twice after the restart: {twice:?}"
    );
    assert_eq!(counts.len(), usize::from(N));

    // A new message reusing packet id 1 with the same payload: the numbering went on.
    device.send(&qos1(V::V311, "d/t", 1, b"1", false)).await;
    assert_eq!(puback_code(&device.expect_kind(PUBACK, WAIT).await), 0);
    holds(&js, "FIRST", u64::from(N) + 1).await;
}

/// The converse, which would lose data if wrong: a clean start, before or after a restart of
/// the gateway, begins a new numbering under a new epoch, so a new message that reuses an old
/// packet id with the old payload is a new entry, never taken for a duplicate within the
/// stream's duplicate window. So is a new persistent session after a clean one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_start_before_or_after_a_restart_never_makes_a_new_message_a_duplicate() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let js = js(&nats).await;
    let dir = binary::scratch::Scratch::new("ingest-clean");
    let listen = format!("127.0.0.1:{}", common::port::free_port());
    let rules = "[[ingest]]\nfilter = \"d/#\"\nstream = \"CLEAN\"\nsubject = \"c.{client_id}\"\n";
    let gw = stored_gateway(&dir, &nats, &listen, rules);
    stream_exists(&js, "CLEAN").await;
    let id = unique_id("cleaned");
    let mut stored = 0;
    same_again(&js, gw.addr, &id, &mut stored, false, false).await;
    same_again(&js, gw.addr, &id, &mut stored, true, false).await;
    same_again(&js, gw.addr, &id, &mut stored, false, false).await;
    gw.signal(libc::SIGKILL);
    drop(gw);
    let gw = stored_gateway(&dir, &nats, &listen, rules);
    // The persistent session is back with its numbering: a new message is new.
    same_again(&js, gw.addr, &id, &mut stored, false, false).await;
    // A clean start after the restart: a new epoch; even a DUP is nobody's resend then.
    same_again(&js, gw.addr, &id, &mut stored, true, true).await;
    gw.signal(libc::SIGKILL);
    drop(gw);
    // A clean session is never stored: after this restart its client starts afresh again.
    let gw = stored_gateway(&dir, &nats, &listen, rules);
    same_again(&js, gw.addr, &id, &mut stored, true, false).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(count(&js, "CLEAN").await, stored);
}

/// Sends the same message once more on a new connection of `id` (packet id 1, payload "same",
/// DUP when `dup`), and checks that it is one more entry.
async fn same_again(
    js: &jetstream::Context,
    addr: std::net::SocketAddr,
    id: &str,
    stored: &mut u64,
    clean: bool,
    dup: bool,
) {
    let (mut device, _) = Raw::connect(addr, &Connect::v311(id, clean, 60)).await;
    device.send(&qos1(V::V311, "d/t", 1, b"same", dup)).await;
    assert_eq!(puback_code(&device.expect_kind(PUBACK, WAIT).await), 0);
    *stored += 1;
    holds(js, "CLEAN", *stored).await;
}

/// Issue 15, which messages are ingested: a will is a device's message, written by the rules it
/// matches, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_is_ingested_once_by_each_rule_it_matches() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let gw = gateway(
        &nats,
        vec![
            IngestRule::new("status/#", "WILLS", "w.{client_id}"),
            IngestRule::new("other/#", "OTHER", "o.{client_id}"),
        ],
    )
    .await;
    let js = js(&nats).await;
    let id = unique_id("mortal");
    let mut connect = Connect::v311(&id, true, 60);
    connect.will = Some(raw::Will::qos1("status/mortal", b"offline"));
    let (device, _) = Raw::connect(gw.mqtt, &connect).await;
    // Lost without DISCONNECT: the will goes out.
    drop(device);
    holds(&js, "WILLS", 1).await;
    tokio::time::sleep(QUIET).await;
    let stored = messages(&js, "WILLS").await;
    assert_eq!(stored.len(), 1, "once");
    assert_eq!(stored[0].payload, "offline");
    assert_eq!(header(&stored[0], "Mqtt-Topic"), "status/mortal");
    assert_eq!(header(&stored[0], "Mqtt-Client-Id"), id);
    assert_eq!(header(&stored[0], "Mqtt-Qos"), "1");
    assert_eq!(count(&js, "OTHER").await, 0);

    // A DISCONNECT discards the will: nothing written.
    let mut device = Raw::connect(gw.mqtt, &connect).await.0;
    device.send(&raw::encode_disconnect(None)).await;
    device.expect_closed("after DISCONNECT").await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(count(&js, "WILLS").await, 1);
}

/// The broker's own `$SYS` status follows MQTT matching: a `#` rule never writes it (wildcards
/// never match `$` topics), and a rule naming `$SYS` is refused at start, since it would stay
/// empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_status_is_never_ingested_and_a_sys_rule_is_refused() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let url = nats.url();
    let gw = Observed::start(move |c| {
        // $SYS status every second.
        c.sys.interval = 1;
        c.nats.servers = vec![url];
        c.ingest = vec![IngestRule::new("#", "EVERYTHING", "all.{topic}")];
    })
    .await;
    assert!(eventually_ready(&gw, 200).await);
    let js = js(&nats).await;
    let mut watcher = v5::connect(gw.mqtt, &unique_id("sys-watcher")).await;
    watcher.subscribe("$SYS/#", v5::QoS::AtMostOnce).await;
    // The status goes out (seen by a subscriber)...
    let status = watcher.next_publish(Duration::from_secs(5)).await;
    assert!(status.topic.starts_with(b"$SYS/"), "{:?}", status.topic);
    let mut device = v5::connect(gw.mqtt, &unique_id("sys-device")).await;
    device
        .publish_confirmed("d/1", v5::QoS::AtLeastOnce, false, "device")
        .await;
    holds(&js, "EVERYTHING", 1).await;
    // ...but only the device's message is in the stream, a status interval later too.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stored = messages(&js, "EVERYTHING").await;
    let topics: Vec<String> = stored.iter().map(|m| header(m, "Mqtt-Topic")).collect();
    assert_eq!(topics, ["d/1"]);

    let dir = binary::scratch::Scratch::new("ingest-sys");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        "[nats]\nservers = [\"nats://127.0.0.1:4222\"]\n[[ingest]]\nfilter = \"$SYS/#\"\n\
         stream = \"S\"\nsubject = \"sys.{topic}\"\n",
    )
    .expect("config written");
    let out = binary::run_refused_config(&config);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid value for `ingest[0].filter`: \"$SYS/#\""),
        "{stderr}"
    );
}

/// Issue 15 in a cluster: the same rule on two nodes sharing one nats-server writes each
/// message once: on the node where the device published, not again on the node that received
/// it from the cluster for a subscriber there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_on_every_cluster_node_writes_each_message_once() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let rules = |c: &mut gateway::Config| {
        c.ingest = vec![IngestRule::new("d/#", "CLUSTER", "cl.{client_id}")];
    };
    let a = Observed::cluster_node(&nats.url(), "a", rules).await;
    let b = Observed::cluster_node(&nats.url(), "b", rules).await;
    assert!(eventually_ready(&a, 200).await && eventually_ready(&b, 200).await);
    let js = js(&nats).await;
    // Subscribers on both nodes: every message crosses to the other node.
    let mut sub_a = v5::connect(a.mqtt, &unique_id("sub-a")).await;
    sub_a.subscribe("d/#", v5::QoS::AtLeastOnce).await;
    let mut sub_b = v5::connect(b.mqtt, &unique_id("sub-b")).await;
    sub_b.subscribe("d/#", v5::QoS::AtLeastOnce).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&a, "gateway_cluster_remote_interest", &[]).await < 1.0
        || metric(&b, "gateway_cluster_remote_interest", &[]).await < 1.0
    {
        assert!(tokio::time::Instant::now() < deadline, "interest known");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut pub_a = v5::connect(a.mqtt, &unique_id("pub-a")).await;
    let mut pub_b = v5::connect(b.mqtt, &unique_id("pub-b")).await;
    for i in 0..10 {
        pub_a
            .publish_confirmed("d/a", v5::QoS::AtLeastOnce, false, format!("a{i}"))
            .await;
        pub_b
            .publish_confirmed("d/b", v5::QoS::ExactlyOnce, false, format!("b{i}"))
            .await;
    }
    for _ in 0..20 {
        sub_a.next_publish(WAIT).await;
        sub_b.next_publish(WAIT).await;
    }
    assert!(metric(&b, "gateway_cluster_messages_received_total", &[]).await >= 10.0);
    holds(&js, "CLUSTER", 20).await;
    tokio::time::sleep(QUIET).await;
    let counts = payload_counts(&js, "CLUSTER").await;
    assert_eq!(counts.len(), 20);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    // Each node wrote its own devices' messages.
    assert_eq!(metric(&a, "gateway_ingest_acked_total", &[]).await, 10.0);
    assert_eq!(metric(&b, "gateway_ingest_acked_total", &[]).await, 10.0);
}

/// Issues 13 and 15: a device's ingestion numbering goes with its persistent session to
/// another cluster node, so that a DUP resend there after a lost PUBACK is stored once: taken
/// over live from node a (handed over with the session), and after node a was killed with
/// SIGKILL (read back from the session state stream). Before, the numbering started anew on
/// the new node and each resend was stored a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dup_resends_on_another_cluster_node_are_stored_once_after_a_takeover_or_a_kill() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let js = js(&nats).await;
    let dir = binary::scratch::Scratch::new("ingest-cluster-dedup");
    let rule = "[[ingest]]\nfilter = \"d/#\"\nstream = \"XDEDUP\"\nsubject = \"x.{client_id}\"\n";
    let a = cluster_node::ready_node_with(&nats, "a", &dir, rule).await;
    let b = cluster_node::ready_node_with(&nats, "b", &dir, rule).await;
    stream_exists(&js, "XDEDUP").await;
    let live = unique_id("handed");
    let killed = unique_id("killed");
    for (id, payload) in [(&live, b"live-1"), (&killed, b"kill-1")] {
        let (mut device, _) = Raw::connect(a.addr, &Connect::v311(id, false, 60)).await;
        device.send(&qos1(V::V311, "d/x", 7, payload, false)).await;
        // Stored, and acknowledged: the PUBACK is lost with the connection.
        device.expect_kind(PUBACK, WAIT).await;
    }
    holds(&js, "XDEDUP", 2).await;

    // Node a alive: the session is handed over.
    let (mut device, present) = Raw::connect(b.addr, &Connect::v311(&live, false, 60)).await;
    assert!(present, "the session came over");
    device.send(&qos1(V::V311, "d/x", 7, b"live-1", true)).await;
    assert_eq!(puback_code(&device.expect_kind(PUBACK, WAIT).await), 0);

    // Node a killed: the session is read back from JetStream.
    a.signal(libc::SIGKILL);
    let (mut device, present) = Raw::connect(b.addr, &Connect::v311(&killed, false, 60)).await;
    assert!(present, "the session came back from the state stream");
    device.send(&qos1(V::V311, "d/x", 7, b"kill-1", true)).await;
    assert_eq!(puback_code(&device.expect_kind(PUBACK, WAIT).await), 0);
    // The numbering went on: a new message reusing the packet id is a new entry.
    device
        .send(&qos1(V::V311, "d/x", 7, b"kill-1", false))
        .await;
    assert_eq!(puback_code(&device.expect_kind(PUBACK, WAIT).await), 0);

    holds(&js, "XDEDUP", 3).await;
    tokio::time::sleep(QUIET).await;
    let counts = payload_counts(&js, "XDEDUP").await;
    assert_eq!(
        counts,
        [("kill-1".to_owned(), 2), ("live-1".to_owned(), 1)].into(),
        "each resend stored once, the new message once"
    );
}

/// Issue 15: nats-server killed mid-traffic (a 3.1.1 and a v5 device each with a pipelined
/// burst of 300 QoS 1 messages): the PUBACKs stop, `/readyz` says ingestion is blocked; nats-server
/// comes back (its store kept, as after a crash) and the devices get every PUBACK without
/// sending anything again; every message is in the stream once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_mid_traffic_holds_the_pubacks_loses_nothing_and_resumes() {
    let Some(mut nats) = NatsServer::start().await else {
        return;
    };
    let gw = gateway(&nats, vec![IngestRule::new("d/#", "MID", "m.{client_id}")]).await;
    const SENT: u16 = 300;
    // Most of each burst goes before the kill; the rest right after it, so that some PUBACKs
    // are surely held however fast JetStream took the first part.
    const BEFORE_KILL: u16 = 250;
    let burst = |v: V, ids: std::ops::RangeInclusive<u16>| {
        let mut burst = Vec::new();
        for id in ids {
            burst.extend(qos1(v, "d/1", id, format!("{v:?}-{id}").as_bytes(), false));
        }
        burst
    };
    let mut devices = Vec::new();
    for v in V::BOTH {
        let mut device = Raw::connected(gw.mqtt, v, &unique_id("mid")).await;
        device.stream_write(&burst(v, 1..=BEFORE_KILL)).await;
        devices.push((v, device, std::collections::BTreeSet::new()));
    }
    let record = |acked: &mut std::collections::BTreeSet<u16>, f: &raw::Frame| {
        assert_eq!(puback_code(f), 0);
        acked.insert(u16::from_be_bytes([f.body[0], f.body[1]]));
    };
    let (_, first, acked) = &mut devices[0];
    while acked.len() < 20 {
        let f = first.expect_kind(PUBACK, WAIT).await;
        record(acked, &f);
    }
    nats.kill();
    for (v, device, _) in &mut devices {
        device
            .stream_write(&burst(*v, BEFORE_KILL + 1..=SENT))
            .await;
    }
    // What JetStream had acknowledged still comes; then nothing.
    for (v, device, acked) in &mut devices {
        while let Ok(f) = device.read_packet_within(Duration::from_secs(1)).await {
            record(acked, &f);
        }
        assert!(acked.len() < usize::from(SENT), "{v:?}: PUBACKs stopped");
        eprintln!("{v:?}: {} acknowledged when NATS went", acked.len());
    }
    let (status, body) = request(gw.http, "GET", "/readyz", None).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("ingest"), "{body}");
    let waiting = metric(&gw, "gateway_ingest_inflight", &["rule=\"0\""]).await;
    let unacked: usize = devices
        .iter()
        .map(|(_, _, a)| usize::from(SENT) - a.len())
        .sum();
    assert!(
        waiting >= 1.0 && waiting <= unacked as f64,
        "writes waiting for JetStream: {waiting}, unacknowledged {unacked}"
    );

    nats.start_again().await;
    for (v, device, acked) in &mut devices {
        while acked.len() < usize::from(SENT) {
            let f = within(
                Duration::from_secs(20),
                "the held PUBACKs",
                device.expect_kind(PUBACK, WAIT),
            )
            .await;
            record(acked, &f);
        }
        eprintln!("{v:?}: all acknowledged after NATS came back");
    }
    let js = js(&nats).await;
    holds(&js, "MID", 2 * u64::from(SENT)).await;
    tokio::time::sleep(QUIET).await;
    let counts = payload_counts(&js, "MID").await;
    assert_eq!(counts.len(), 2 * usize::from(SENT));
    assert!(counts.values().all(|&n| n == 1), "each once: {counts:?}");
    // (In each device's order only while nothing fails: the writes in flight when NATS went
    // are retried one by one, and those nats-server took before it died are not stored again;
    // see the README.)
    assert!(eventually_ready(&gw, 200).await, "ready again");
}
