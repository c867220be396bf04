//! Network-level fuzzing: for a bounded time, 50 clients send mutated valid packets
//! (MQTT 3.1.1 and 5, the seeds of `fuzz/`) at a running in-process broker. Afterwards
//! the broker still serves a normal client, no worker thread panicked, and the
//! process's memory is back near where it started.

mod common;

#[allow(dead_code)]
#[path = "../fuzz/src/targets.rs"]
mod targets;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use ternmq::protocol::{encode_packet_v, Packet, ProtocolVersion, QoS};

const CLIENTS: usize = 50;

fn fuzz_secs() -> u64 {
    std::env::var("TERNMQ_FUZZ_NET_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

/// Resident memory of this process (the test and the broker in it), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The seeds of one version (CONNECT excluded: each connection starts with a valid
/// one, mutated only sometimes).
fn seeds(v: ProtocolVersion) -> Vec<Vec<u8>> {
    targets::seeds()
        .into_iter()
        .filter(|(sv, b)| *sv == v && b.first().is_some_and(|&h| h >> 4 != 1))
        .map(|(_, b)| b)
        .collect()
}

/// One fuzzing client: connects, sends a CONNECT and mutated packets, reads and
/// discards what comes back, reconnects when the broker closes it.
fn client(addr: SocketAddr, n: usize, until: Instant, sent: Arc<AtomicU64>) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((n as u64 + 1) * 0x1000_0001));
    let by_version = [
        (ProtocolVersion::V3_1_1, seeds(ProtocolVersion::V3_1_1)),
        (ProtocolVersion::V5, seeds(ProtocolVersion::V5)),
    ];
    let mut buf = [0u8; 16 * 1024];
    while Instant::now() < until {
        let Ok(mut s) = TcpStream::connect(addr) else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let (version, seeds) = &by_version[(rng.next() % 2) as usize];
        let mut connect = connect_packet(&format!("f{}", rng.next() % 20), rng.next() % 2 == 0);
        connect.version = *version;
        let mut out = Vec::new();
        encode_packet_v(&Packet::Connect(connect), *version, &mut out);
        if rng.next() % 8 == 0 {
            targets::mutate(&mut rng.0, &mut out, &[]);
        }
        if s.write_all(&out).is_err() || s.set_nonblocking(true).is_err() {
            continue;
        }
        // A burst of packets on this connection, then the next connection.
        let packets = 1 + rng.next() % 200;
        'conn: for _ in 0..packets {
            if Instant::now() >= until {
                break;
            }
            let mut p = seeds[(rng.next() as usize) % seeds.len()].clone();
            let other = &seeds[(rng.next() as usize) % seeds.len()];
            if rng.next() % 3 != 0 {
                for _ in 0..1 + rng.next() % 4 {
                    targets::mutate(&mut rng.0, &mut p, other);
                }
            }
            match s.write(&p) {
                Ok(_) => {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break 'conn,
            }
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break 'conn,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => break 'conn,
                }
            }
            if rng.next() % 16 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

#[test]
fn mutated_packets_from_many_clients_leave_the_broker_serving() {
    let b = broker_with(2, |c| {
        c.connect_timeout_secs = 2;
        c.max_packet_bytes = 64 * 1024;
    });
    // A first round trip warms the broker up before the baseline.
    let mut good = Raw::mqtt(b.addr(), "good", true);
    good.send(&Packet::Subscribe(ternmq::protocol::Subscribe {
        packet_id: pid(1),
        filters: vec![(
            ternmq::protocol::TopicFilter::new("good/t").unwrap(),
            ternmq::protocol::SubOptions::qos(QoS::AtMostOnce),
        )],
        props: Default::default(),
    }));
    assert!(matches!(good.recv(), Some(Packet::SubAck(_))));
    let rss_start = rss_kib();
    let until = Instant::now() + Duration::from_secs(fuzz_secs());
    let sent = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let (addr, sent) = (b.addr(), sent.clone());
            std::thread::spawn(move || client(addr, n, until, sent))
        })
        .collect();
    for t in threads {
        t.join().expect("fuzz client thread");
    }
    let rss_peak = rss_kib();
    // The broker still serves: the old client and a new one.
    let t = Instant::now();
    good.send(&publish_packet(
        "good/t",
        QoS::AtMostOnce,
        0,
        b"after",
        false,
    ));
    match good.recv() {
        Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"after"),
        other => panic!("expected the PUBLISH back, got {other:?}"),
    }
    let rtt = t.elapsed();
    let mut fresh = Raw::mqtt(b.addr(), "fresh", true);
    fresh.send(&Packet::PingReq);
    assert!(matches!(fresh.recv(), Some(Packet::PingResp)));
    // Let the fuzz connections' sessions and timers go (CONNECT timeout 2 s).
    std::thread::sleep(Duration::from_secs(3));
    let rss_end = rss_kib();
    eprintln!(
        "fuzz_net: {} packets from {CLIENTS} clients; RSS start {rss_start} KiB, peak {rss_peak} KiB, end {rss_end} KiB; round trip after {:?}",
        sent.load(Ordering::Relaxed),
        rtt
    );
    assert!(
        sent.load(Ordering::Relaxed) > 1000,
        "the clients sent little"
    );
    // Generous: the allocator keeps some freed memory, and persistent sessions of the
    // 20 client ids may hold queued messages.
    assert!(
        rss_end < rss_start + 64 * 1024,
        "RSS grew from {rss_start} KiB to {rss_end} KiB"
    );
    drop(good);
    drop(fresh);
    b.stop_checked().expect("no worker thread panicked");
}
