//! Cross-worker fan-out: publishes routed on worker 0 to subscribers on worker 1,
//! collected into one batch per turn, carried over a crossbeam channel and delivered
//! into the subscribers' write buffers. Two shards in one thread, no sockets: this
//! measures the broker's own cost of the cross-worker path.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::sync::Arc;
use std::time::Instant;
use ternmq::broker::registry::Registry;
use ternmq::broker::shard::Shard;
use ternmq::broker::ConnId;
use ternmq::config::Config;
use ternmq::protocol::*;

const BATCH: usize = 256;

struct Setup {
    shards: Vec<Shard>,
    publisher: ConnId,
    subscribers: Vec<ConnId>,
    publish: Packet,
}

fn setup(subscribers: usize) -> Setup {
    let cfg = Arc::new(Config {
        sys_interval_secs: 0,
        ..Config::default()
    });
    let reg = Arc::new(Registry::new());
    let now = Instant::now();
    let mut shards: Vec<Shard> = (0..2)
        .map(|w| Shard::new(w, 2, cfg.clone(), reg.clone(), now))
        .collect();
    let connect = |id: String| {
        Packet::Connect(Box::new(Connect {
            version: ProtocolVersion::V3_1_1,
            clean_session: true,
            keep_alive_secs: 0,
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
            props: Default::default(),
        }))
    };
    let mut subs = Vec::new();
    for i in 0..subscribers {
        let id = ConnId {
            slot: i as u32,
            gen: 1,
        };
        shards[1].open(now, id);
        shards[1].packet(now, id, connect(format!("s{i}")));
        shards[1].packet(
            now,
            id,
            Packet::Subscribe(Subscribe {
                packet_id: PacketId::new(1).unwrap(),
                filters: vec![(TopicFilter::new("bench/+").unwrap(), QoS::AtMostOnce.into())],
                props: Default::default(),
            }),
        );
        subs.push(id);
    }
    let publisher = ConnId { slot: 0, gen: 1 };
    shards[0].open(now, publisher);
    shards[0].packet(now, publisher, connect("p".into()));
    // Let worker 0 learn worker 1's interest.
    let mut batch = std::mem::take(&mut shards[1].effects().mesh[0]);
    shards[0].mesh(now, 1, &mut batch);
    let mut s = Setup {
        shards,
        publisher,
        subscribers: subs,
        publish: Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: TopicName::new("bench/x").unwrap(),
            packet_id: None,
            payload: Bytes::from(vec![1u8; 64]),
            props: Default::default(),
        }),
    };
    drain(&mut s);
    s
}

fn drain(s: &mut Setup) {
    for sh in &mut s.shards {
        let e = sh.effects();
        e.dirty.clear();
        e.close.clear();
    }
    for id in s.subscribers.clone() {
        if let Some(tx) = s.shards[1].tx_mut(id) {
            tx.clear();
        }
    }
    if let Some(tx) = s.shards[0].tx_mut(s.publisher) {
        tx.clear();
    }
}

fn bench(c: &mut Criterion) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut g = c.benchmark_group("mesh_fanout");
    for subscribers in [1usize, 100] {
        let mut s = setup(subscribers);
        g.throughput(Throughput::Elements((BATCH * subscribers) as u64));
        g.bench_function(
            BenchmarkId::new("deliveries_per_batch_of_256", subscribers),
            |b| {
                let now = Instant::now();
                b.iter(|| {
                    for _ in 0..BATCH {
                        s.shards[0].packet(now, s.publisher, s.publish.clone());
                    }
                    let batch = std::mem::take(&mut s.shards[0].effects().mesh[1]);
                    tx.send(batch).unwrap();
                    let mut batch = rx.recv().unwrap();
                    s.shards[1].mesh(now, 0, &mut batch);
                    // Emptied, it goes back to its sender, as the runtime does.
                    s.shards[0].effects().mesh[1] = batch;
                    drain(&mut s);
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
