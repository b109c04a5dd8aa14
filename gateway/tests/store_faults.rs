//! A store that cannot write (disk full, I/O error), injected with the `fault-injection` switch
//! (process-wide, hence this file of its own): what a persistent session must receive is not
//! acknowledged (held, or refused: v5 PUBACK 0x97, 3.1.1 closed), QoS 0 and clean sessions are
//! still served, `/readyz` and the metrics say so, and everything comes back by itself once
//! writes succeed again.

mod clients;
mod observe;

use std::time::Duration;

use clients::raw::{encode_disconnect, Connect, End, Frame, Raw, PUBACK, PUBLISH, V};
use observe::{eventually_status, samples, total, Observed};

/// The reason code of a v5 PUBACK (absent: success).
fn reason(f: &Frame) -> u8 {
    assert_eq!(f.kind(), PUBACK, "{f:?}");
    f.body.get(2).copied().unwrap_or(0)
}

fn publish(v: V, topic: &str, id: u16, payload: &[u8]) -> Vec<u8> {
    v.publish(PUBLISH | 0x02, topic.as_bytes(), Some(id), &[], payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_write_refuses_what_it_must_keep_serves_the_rest_and_recovers() {
    let obs = Observed::start(|_| {}).await;
    let (mut sub, _) = Raw::connect(obs.mqtt, &Connect::v311("sf-sub", false, 60)).await;
    sub.subscribe(V::V311, "keep/#", 1).await;
    sub.send(&encode_disconnect(None)).await;
    let mut live = Raw::connected(obs.mqtt, V::V5, "sf-live").await;
    live.subscribe(V::V5, "live/#", 1).await;
    let mut p = Raw::connected(obs.mqtt, V::V5, "sf-pub").await;
    p.send(&publish(V::V5, "keep/1", 1, b"one")).await;
    assert_eq!(reason(&p.expect_packet("PUBACK").await), 0);

    gateway::fault::set_store_writes_fail(true);
    p.send(&publish(V::V5, "keep/2", 2, b"two")).await;
    assert_eq!(
        p.read_packet_within(Duration::from_millis(500)).await,
        Err(End::Silent),
        "not acknowledged while it cannot be stored"
    );
    assert!(eventually_status(obs.http, "/readyz", 503).await);
    let (_, body) = obs.get("/readyz").await;
    assert!(body.contains("store"), "{body}");
    let m = samples(&obs.metrics().await);
    assert_eq!(total(&m, "gateway_store_available", &[]), 0.0);
    assert!(total(&m, "gateway_store_errors_total", &[]) >= 1.0);

    // A publisher with nothing held is told at once; a 3.1.1 one can only be disconnected.
    let mut q = Raw::connected(obs.mqtt, V::V5, "sf-pub2").await;
    q.send(&publish(V::V5, "keep/3", 1, b"three")).await;
    assert_eq!(reason(&q.expect_packet("PUBACK").await), 0x97);
    let mut r = Raw::connected(obs.mqtt, V::V311, "sf-pub3").await;
    r.send(&publish(V::V311, "keep/4", 1, b"four")).await;
    assert_eq!(r.read_packet().await, Err(End::Closed));
    // Clean sessions are served as ever.
    q.send(&publish(V::V5, "live/x", 2, b"live")).await;
    assert_eq!(reason(&q.expect_packet("PUBACK").await), 0);
    let got = live.expect_packet("the live message").await;
    assert_eq!(got.kind(), PUBLISH);
    let m = samples(&obs.metrics().await);
    assert_eq!(
        total(
            &m,
            "gateway_messages_dropped_total",
            &["reason=\"store_unavailable\""]
        ),
        2.0
    );

    gateway::fault::set_store_writes_fail(false);
    let held = p.expect_packet("the held PUBACK").await;
    assert_eq!(reason(&held), 0, "acknowledged once stored");
    assert_eq!(&held.body[..2], &2u16.to_be_bytes());
    assert!(eventually_status(obs.http, "/readyz", 200).await);
    q.send(&publish(V::V5, "keep/5", 3, b"five")).await;
    assert_eq!(reason(&q.expect_packet("PUBACK").await), 0);

    let (mut sub, present) = Raw::connect(obs.mqtt, &Connect::v311("sf-sub", false, 60)).await;
    assert!(present);
    let mut payloads = Vec::new();
    while let Ok(f) = sub.read_packet_within(Duration::from_millis(500)).await {
        let p = clients::raw::publish_of(&f, V::V311);
        sub.send(&clients::raw::encode_puback(p.packet_id)).await;
        payloads.push(String::from_utf8(p.payload).expect("UTF-8"));
    }
    assert_eq!(payloads, ["one", "two", "five"]);
    let m = samples(&obs.metrics().await);
    assert!(total(&m, "gateway_store_commits_total", &[]) >= 2.0);
    assert!(total(&m, "gateway_store_written_bytes_total", &[]) > 0.0);
    assert!(total(&m, "gateway_store_size_bytes", &[]) > 0.0);
    // Counted as the journal's checkpoints apply what was committed: within a second.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while total(
        &samples(&obs.metrics().await),
        "gateway_stored_sessions",
        &[],
    ) != 1.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stored sessions never 1"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
