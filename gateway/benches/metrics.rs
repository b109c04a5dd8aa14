//! What metrics cost on the publish path: the same work measured with no-op handles (no recorder)
//! and with handles registered in the Prometheus recorder the gateway uses when its HTTP endpoint
//! is on.
//!
//! One iteration is what the broker does for a read batch of PUBLISHes with ten subscribers,
//! without the sockets: count the read batch, build each `Message`, route it (match, enqueue on
//! ten sessions), then drain each session's queue and count the write batch (delivered counters
//! and one latency observation per batch), as the client task does. Batches of 1 are the worst
//! case for the per-batch counting; batches of 32 show what a busy connection pays per message.
//! `cargo bench -p gateway --bench metrics`.

use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use gateway::codec::{QoS, SubscriptionOptions};
use gateway::message::Message;
use gateway::metrics::{Metrics, SentBatch};
use gateway::router::Router;
use gateway::session::{QueueLimits, Session};

const SUBSCRIBERS: u64 = 10;

struct Bench {
    metrics: Arc<Metrics>,
    router: Router,
    sessions: Vec<Arc<Session>>,
    frames: Vec<Bytes>,
}

impl Bench {
    fn new(metrics: Metrics) -> Bench {
        let metrics = Arc::new(metrics);
        let limits = QueueLimits {
            max_queued: 1000,
            max_queued_bytes: 0,
            queue_qos0_offline: false,
        };
        let router = Router::new(limits, 1000, 64, metrics.clone());
        let filter = ByteString::from_static("fleet/+/telemetry");
        let sessions: Vec<Arc<Session>> = (1..=SUBSCRIBERS)
            .map(|id| {
                let s = Arc::new(Session::new(id, format!("sub-{id}").into()));
                s.set_online(true);
                router
                    .subscribe(&s, &filter, SubscriptionOptions::default(), None)
                    .map(|_| s)
                    .unwrap_or_else(|e| panic!("benchmark subscription refused: {e}"))
            })
            .collect();
        // A QoS 0 PUBLISH frame's first bytes: the counters look at the fixed header only.
        let frames = vec![Bytes::from_static(&[0x30, 0x10]); 32];
        Bench {
            metrics,
            router,
            sessions,
            frames,
        }
    }

    fn publish(
        &self,
        batch_len: usize,
        topic: &ByteString,
        payload: &Bytes,
        out: &mut Vec<gateway::session::Outgoing>,
    ) {
        self.metrics.received_frames(&self.frames[..batch_len]);
        for _ in 0..batch_len {
            let msg = Message::new(topic, payload, QoS::AtMostOnce, false, 0, None);
            self.router.publish(Arc::new(msg));
        }
        for s in &self.sessions {
            out.clear();
            s.take_ready(gateway::clock::unix_millis(), 32, 256, out, &mut Vec::new());
            let mut batch = SentBatch::default();
            for o in out.iter() {
                batch.add(o.delivery.qos as usize, Some(o.delivery.msg.read_at));
            }
            self.metrics.sent_batch(&batch);
        }
    }
}

fn publish_path(c: &mut Criterion) {
    let topic = ByteString::from_static("fleet/device-42/telemetry");
    let payload = Bytes::from_static(b"{\"t\":21.5,\"h\":40}");
    let mut group = c.benchmark_group("publish_to_10_subscribers");
    let (prometheus, exporter) = match Metrics::prometheus() {
        Ok(m) => m,
        Err(e) => panic!("Prometheus recorder: {e}"),
    };
    let benches = [
        ("no_recorder", Bench::new(Metrics::new())),
        ("prometheus", Bench::new(prometheus)),
    ];
    let mut out = Vec::with_capacity(256);
    for batch_len in [1, 32] {
        group.throughput(Throughput::Elements(batch_len as u64));
        for (name, bench) in &benches {
            group.bench_function(format!("{name}/batch_{batch_len}"), |b| {
                // Between batches (untimed) the recorder's histogram samples are moved into
                // buckets, as the HTTP endpoint's upkeep does, so they do not pile up.
                b.iter_batched(
                    || exporter.run_upkeep(),
                    |()| bench.publish(batch_len, &topic, &payload, &mut out),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

criterion_group!(benches, publish_path);
criterion_main!(benches);
