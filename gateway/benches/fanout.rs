//! Fan-out cost: one PUBLISH routed through `gateway::router::Router` to 10,000 local online
//! sessions that all subscribe to `fleet/+/telemetry`, i.e. one match (a cache hit) plus 10,000
//! `Session::enqueue` calls. The queues are drained (untimed) between iterations, so every
//! iteration enqueues into queues of the same length and nothing is dropped.
//!
//! `qos0` and `qos1` differ only in the delivery's QoS (queueing is the same work; the inflight
//! window is applied later, when the connection task takes the messages).
//! `cargo bench -p gateway --bench fanout`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use gateway::codec::{QoS, SubscriptionOptions};
use gateway::message::Message;
use gateway::metrics::Metrics;
use gateway::router::Router;
use gateway::session::{QueueLimits, Session};

const SESSIONS: u64 = 10_000;

fn fanout(c: &mut Criterion) {
    let limits = QueueLimits {
        max_queued: 1000,
        max_queued_bytes: 0,
        queue_qos0_offline: false,
    };
    let router = Router::new(limits, 1000, 64, Arc::new(Metrics::new()));
    let filter = ByteString::from_static("fleet/+/telemetry");
    let sessions: Vec<Arc<Session>> = (1..=SESSIONS)
        .map(|id| {
            let s = Arc::new(Session::new(id, format!("sub-{id}").into()));
            s.set_online(true);
            let options = SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..SubscriptionOptions::default()
            };
            if let Err(e) = router.subscribe(&s, &filter, options, None) {
                panic!("benchmark subscription refused: {e}");
            }
            s
        })
        .collect();
    let topic = ByteString::from_static("fleet/device-42/telemetry");
    let payload = Bytes::from(vec![0x5Au8; 64]);
    let mut out = Vec::with_capacity(64);
    let mut drain = |sessions: &[Arc<Session>]| {
        for s in sessions {
            out.clear();
            s.take_ready(
                gateway::clock::unix_millis(),
                usize::MAX,
                64,
                &mut out,
                &mut Vec::new(),
            );
            // Acknowledge QoS 1 copies so the inflight tables stay empty.
            for o in &out {
                if o.packet_id != 0 {
                    s.acknowledge(o.packet_id, gateway::session::Stage::PubAck);
                }
            }
        }
    };

    let mut group = c.benchmark_group("fanout_10k_sessions");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(SESSIONS));
    for (name, qos) in [("qos0", QoS::AtMostOnce), ("qos1", QoS::AtLeastOnce)] {
        let msg = Arc::new(Message::new(&topic, &payload, qos, false, 0, None));
        assert_eq!(router.publish(msg), SESSIONS as usize);
        drain(&sessions);
        group.bench_function(format!("publish/{name}"), |b| {
            b.iter_batched(
                || {
                    drain(&sessions);
                    Arc::new(Message::new(&topic, &payload, qos, false, 1, None))
                },
                |msg| router.publish(msg),
                BatchSize::PerIteration,
            )
        });
    }
    drain(&sessions);
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
