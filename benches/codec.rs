//! Codec micro-benchmarks: decode and encode of PUBLISH (16 B and 1 KiB payloads),
//! CONNECT and SUBSCRIBE, reported as packets/s and bytes/s.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use ternmq::protocol::*;

fn packets() -> Vec<(&'static str, Packet)> {
    let publish = |n: usize| {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: TopicName::new("devices/0123456789/telemetry").unwrap(),
            packet_id: PacketId::new(7),
            payload: Bytes::from(vec![0xA5; n]),
            props: Default::default(),
        })
    };
    vec![
        ("publish_16B", publish(16)),
        ("publish_1KiB", publish(1024)),
        (
            "connect",
            Packet::Connect(Box::new(Connect {
                version: ProtocolVersion::V3_1_1,
                clean_session: true,
                keep_alive_secs: 60,
                client_id: "device-0123456789".into(),
                will: None,
                username: Some("user".into()),
                password: Some(Bytes::from_static(b"secret")),
                props: Default::default(),
            })),
        ),
        (
            "subscribe",
            Packet::Subscribe(Subscribe {
                packet_id: PacketId::new(1).unwrap(),
                filters: vec![
                    (
                        TopicFilter::new("devices/+/telemetry").unwrap(),
                        QoS::AtLeastOnce.into(),
                    ),
                    (
                        TopicFilter::new("alerts/#").unwrap(),
                        QoS::AtMostOnce.into(),
                    ),
                ],
                props: Default::default(),
            }),
        ),
    ]
}

fn bench(c: &mut Criterion) {
    for (name, packet) in packets() {
        let mut wire = Vec::new();
        encode_packet(&packet, &mut wire);
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_function(BenchmarkId::new("decode", wire.len()), |b| {
            let mut buf = BytesMut::new();
            b.iter(|| {
                buf.extend_from_slice(&wire);
                black_box(decode_one(&mut buf, usize::MAX).unwrap().unwrap())
            })
        });
        g.bench_function(BenchmarkId::new("encode", wire.len()), |b| {
            let mut out = Vec::with_capacity(wire.len());
            b.iter(|| {
                out.clear();
                encode_packet(black_box(&packet), &mut out);
                black_box(out.len())
            })
        });
        g.finish();
    }
    // Packets per second for a batch of 1000 small PUBLISH decoded from one buffer,
    // the shape of a busy connection's read.
    let mut one = Vec::new();
    encode_packet(&packets()[0].1, &mut one);
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
    let mut g = c.benchmark_group("publish_16B_batch");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("decode_1000", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&batch[..]);
            let mut n = 0;
            while let Some(p) = decode_one(&mut buf, usize::MAX).unwrap() {
                black_box(p);
                n += 1;
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
