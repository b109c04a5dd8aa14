//! Topic matching and subscription changes in an index holding 1,000,000 subscriptions, the
//! shape of a large fleet: 999,000 literal command filters `fleet/{g}/{i}/cmd` (1,000 groups of
//! 999 devices) plus 1,000 wildcard filters (`fleet/{g}/+/cmd`, `fleet/{g}/#`, `+/{g}/+/cmd`).
//!
//! - `match/cached`: the same topic again and again (the per-shard result cache hits).
//! - `match/uncached`: a rotation over 200,000 distinct topics, far more than the cache holds, so
//!   nearly every lookup walks both tries and inserts (and evicts) a cache entry.
//! - `subscribe_unsubscribe/literal` and `/wildcard`: one insert plus one remove of a filter not
//!   in the index, at that size (the wildcard one invalidates the cached topics it matches).
//!
//! Building the index takes a few seconds once. `cargo bench -p gateway --bench topic_index`.

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use gateway::topic_index::TopicIndex;

const GROUPS: u64 = 1000;
const PER_GROUP: u64 = 999;

fn build() -> TopicIndex<u64, u64> {
    let index = TopicIndex::new();
    let mut key = 0u64;
    for g in 0..GROUPS {
        for i in 0..PER_GROUP {
            index.insert(&format!("fleet/{g}/{i}/cmd"), None, key, key);
            key += 1;
        }
    }
    for g in 0..500 {
        index.insert(&format!("fleet/{g}/+/cmd"), None, key, key);
        key += 1;
    }
    for g in 0..250 {
        index.insert(&format!("fleet/{g}/#"), None, key, key);
        key += 1;
        index.insert(&format!("+/{g}/+/cmd"), None, key, key);
        key += 1;
    }
    assert_eq!(index.len(), 1_000_000);
    index
}

fn topic_index(c: &mut Criterion) {
    let index = build();
    // fleet/42/17/cmd: its literal filter, fleet/42/+/cmd, fleet/42/# and +/42/+/cmd.
    assert_eq!(index.matches("fleet/42/17/cmd").plain.len(), 4);

    let mut group = c.benchmark_group("topic_index_1M");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));

    group.bench_function("match/cached", |b| {
        b.iter(|| index.matches(black_box("fleet/42/17/cmd")).plain.len())
    });

    let topics: Vec<String> = (0..200_000u64)
        .map(|n| format!("fleet/{}/{}/cmd", (n * 7919) % GROUPS, n % PER_GROUP))
        .collect();
    let mut next = 0usize;
    group.bench_function("match/uncached", |b| {
        b.iter(|| {
            next = (next + 1) % topics.len();
            index.matches(black_box(&topics[next])).plain.len()
        })
    });

    let mut key = 2_000_000u64;
    group.bench_function("subscribe_unsubscribe/literal", |b| {
        b.iter(|| {
            key += 1;
            let filter = "fleet/7/new-device/cmd";
            index.insert(black_box(filter), None, key, key);
            index.remove(black_box(filter), None, &key)
        })
    });
    group.bench_function("subscribe_unsubscribe/wildcard", |b| {
        b.iter(|| {
            key += 1;
            let filter = "fleet/7/+/status";
            index.insert(black_box(filter), None, key, key);
            index.remove(black_box(filter), None, &key)
        })
    });
    group.finish();
}

criterion_group!(benches, topic_index);
criterion_main!(benches);
