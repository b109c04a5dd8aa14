//! Cost of the PUBLISH wire format on the hot path: decoding a received frame and encoding one
//! for a subscriber, for MQTT 3.1.1 and 5.0, QoS 1, with 64-byte and 1 KiB payloads.
//!
//! `decode` measures `codec::decode` on a complete frame (the frame is a cheap `Bytes` clone, as
//! the connection hands it over). `encode` measures `codec::encode` of the whole packet into a
//! reused buffer, and `shared_head` the broker's real outbound path: a fresh `Message` whose
//! head is encoded once per layout (what one publish costs before it is patched per receiver).
//! `cargo bench -p gateway --bench codec`.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use gateway::codec::{self, Packet, Properties, Protocol, Publish, QoS};
use gateway::message::Message;

fn publish(payload_len: usize) -> Publish {
    Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: ByteString::from_static("fleet/17/device-004242/telemetry"),
        packet_id: 4242,
        properties: Properties::default(),
        payload: Bytes::from(vec![0xA5u8; payload_len]),
    }
}

fn frame(p: &Publish, protocol: Protocol) -> Bytes {
    let mut out = BytesMut::new();
    codec::encode(&Packet::Publish(p.clone()), protocol, &mut out);
    out.freeze()
}

fn codec_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_codec");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (pname, protocol) in [("3.1.1", Protocol::V311), ("5.0", Protocol::V5)] {
        for (sname, size) in [("64B", 64usize), ("1KiB", 1024)] {
            let p = publish(size);
            let f = frame(&p, protocol);
            // Sanity check outside the timed loop: the frame decodes back to the same packet.
            match codec::decode(f.clone(), protocol) {
                Ok(Packet::Publish(d)) if d == p => {}
                other => panic!("benchmark frame does not round-trip: {other:?}"),
            }
            group.throughput(Throughput::Bytes(f.len() as u64));
            group.bench_function(format!("decode/{pname}/{sname}"), |b| {
                b.iter(|| codec::decode(black_box(f.clone()), protocol))
            });
            let packet = Packet::Publish(p.clone());
            let mut out = BytesMut::with_capacity(2048);
            group.bench_function(format!("encode/{pname}/{sname}"), |b| {
                b.iter(|| {
                    out.clear();
                    codec::encode(black_box(&packet), protocol, &mut out);
                    black_box(out.len())
                })
            });
            group.bench_function(format!("shared_head/{pname}/{sname}"), |b| {
                b.iter(|| {
                    let m = Message::new(&p.topic, &p.payload, p.qos, false, 1, None);
                    black_box(m.shared_head(protocol, QoS::AtLeastOnce).bytes.len())
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, codec_benches);
criterion_main!(benches);
