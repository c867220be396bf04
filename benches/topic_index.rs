//! Topic index micro-benchmarks against a fleet-shaped index: one exact
//! subscription per device (`devices/<id>/telemetry`), a few wildcard backends
//! (`devices/+/telemetry`, `#`). One million devices under `cargo bench`; a small
//! index when run as a test, so `cargo test --all-targets` stays fast.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use ternmq::broker::topic_index::TopicIndex;
use ternmq::protocol::{QoS, TopicFilter, TopicName};

fn devices() -> u32 {
    if std::env::args().any(|a| a == "--bench") {
        1_000_000
    } else {
        10_000
    }
}

fn fleet(n: u32) -> TopicIndex<QoS> {
    let mut idx = TopicIndex::new();
    for id in 0..n {
        let f = TopicFilter::new(format!("devices/{id}/telemetry")).unwrap();
        idx.insert(&f, id, QoS::AtMostOnce);
    }
    idx.insert(
        &TopicFilter::new("devices/+/telemetry").unwrap(),
        n,
        QoS::AtLeastOnce,
    );
    idx.insert(
        &TopicFilter::new("devices/+/+").unwrap(),
        n + 1,
        QoS::AtLeastOnce,
    );
    idx.insert(&TopicFilter::new("#").unwrap(), n + 2, QoS::AtMostOnce);
    idx
}

fn bench(c: &mut Criterion) {
    let n = devices();
    let idx = fleet(n);
    let topics: Vec<TopicName> = (0..1024u32)
        .map(|i| TopicName::new(format!("devices/{}/telemetry", (i * 7919) % n)).unwrap())
        .collect();
    let mut g = c.benchmark_group(format!("topic_index_{n}_devices"));
    g.throughput(Throughput::Elements(topics.len() as u64));
    g.bench_function("match_1024_topics", |b| {
        b.iter(|| {
            let mut hits = 0u64;
            for t in &topics {
                idx.for_each_match(t, |s, _| hits += u64::from(s) & 1 | 1);
            }
            black_box(hits)
        })
    });
    g.bench_function("has_match_1024_topics", |b| {
        b.iter(|| topics.iter().filter(|t| idx.has_match(t)).count())
    });
    g.finish();

    let mut idx = idx;
    let filters: Vec<TopicFilter> = (0..1024u32)
        .map(|i| TopicFilter::new(format!("devices/{}/cmd/+", i + n)).unwrap())
        .collect();
    let mut g = c.benchmark_group(format!("topic_index_{n}_devices"));
    g.throughput(Throughput::Elements(filters.len() as u64 * 2));
    g.bench_function("subscribe_unsubscribe_1024", |b| {
        b.iter(|| {
            for (i, f) in filters.iter().enumerate() {
                idx.insert(f, i as u32, QoS::AtLeastOnce);
            }
            for (i, f) in filters.iter().enumerate() {
                idx.remove(f, i as u32);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
