//! Limits against abuse (issue 5): each test crosses one limit against a running
//! broker and checks that the broker stays up, that a well-behaved client is not
//! affected, and that `$SYS/broker/...` says what happened.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use ternmq::bench::sys_stats::collect;
use ternmq::config::Config;
use ternmq::protocol::{
    encode_packet_v, Ack, Packet, ProtocolVersion, QoS, ReasonCode, SubOptions, Subscribe,
    TopicFilter,
};
use ternmq::runtime::BrokerHandle;

/// A broker with two workers publishing `$SYS` every second.
fn limited(tweak: impl FnOnce(&mut Config)) -> BrokerHandle {
    broker_with(2, |c| {
        c.sys_interval_secs = 1;
        tweak(c);
    })
}

/// Waits until the `$SYS/broker/<key>` counter is at least `min` and returns it.
fn counter_at_least(addr: SocketAddr, key: &str, min: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = collect(addr, Duration::from_millis(1200))
            .ok()
            .and_then(|s| s.num(key));
        match v {
            Some(v) if v >= min => return v,
            _ if Instant::now() > deadline => panic!("{key} = {v:?}, expected >= {min}"),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// A fresh client subscribes, publishes QoS 1 to itself and receives it: the broker
/// serves well-behaved clients. Returns the round trip.
fn serves(addr: SocketAddr, id: &str) -> Duration {
    let mut c = Raw::mqtt(addr, id, true);
    round_trip(&mut c, &format!("ctl/{id}"))
}

fn subscribe(c: &mut Raw, filter: &str, qos: QoS) {
    c.send(&sub_packet(1, &[filter], qos));
    match c.recv() {
        Some(Packet::SubAck(a)) => assert!(a.codes[0].is_success(), "{a:?}"),
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

fn round_trip(c: &mut Raw, topic: &str) -> Duration {
    subscribe(c, topic, QoS::AtMostOnce);
    let t = Instant::now();
    c.send(&publish_packet(topic, QoS::AtMostOnce, 0, b"ping", false));
    match c.recv() {
        Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"ping"),
        other => panic!("expected the PUBLISH back, got {other:?}"),
    }
    t.elapsed()
}

fn sub_packet(id: u16, filters: &[&str], qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: pid(id),
        filters: filters
            .iter()
            .map(|f| (TopicFilter::new(*f).expect("filter"), SubOptions::qos(qos)))
            .collect(),
        props: Default::default(),
    })
}

/// An MQTT 5 client over raw bytes: the common raw client at level 5, connected.
fn v5(addr: SocketAddr, id: &str) -> Raw {
    let mut c = Raw::connect(addr);
    c.version = ProtocolVersion::V5;
    let mut connect = connect_packet(id, true);
    connect.version = ProtocolVersion::V5;
    c.send(&Packet::Connect(connect));
    match c.recv() {
        Some(Packet::ConnAck(a)) => assert_eq!(a.code, ReasonCode::SUCCESS),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    c
}

/// Sends CONNECT on a fresh TCP connection: true if CONNACK came, false if the
/// broker closed it without one.
fn try_connect(c: &mut TcpStream, id: &str) -> bool {
    let mut out = Vec::new();
    encode_packet_v(
        &Packet::Connect(connect_packet(id, true)),
        ProtocolVersion::V3_1_1,
        &mut out,
    );
    let _ = c.write_all(&out);
    c.set_read_timeout(Some(WAIT)).unwrap();
    let mut b = [0u8; 4];
    matches!(c.read(&mut b), Ok(4) if b[0] == 0x20)
}

#[test]
fn max_connections_refuses_at_accept_and_counts() {
    let b = limited(|c| c.max_connections = 4);
    let mut open: Vec<Raw> = (0..4)
        .map(|i| Raw::mqtt(b.addr(), &format!("c{i}"), true))
        .collect();
    for i in 0..3 {
        let mut extra = TcpStream::connect(b.addr()).unwrap();
        assert!(!try_connect(&mut extra, &format!("extra{i}")), "refused");
    }
    // The connected clients are not affected.
    round_trip(&mut open[0], "ctl/open0");
    // Room again once some leave.
    open.truncate(2);
    std::thread::sleep(Duration::from_millis(200));
    assert!(counter_at_least(b.addr(), "limits/connections_refused_max", 3) >= 3);
    serves(b.addr(), "after");
    b.stop_checked().expect("no worker panicked");
}

#[test]
fn per_ip_rate_limit_refuses_the_excess_only_from_that_address() {
    let b = limited(|c| c.max_connections_per_ip_per_sec = 5);
    let mut streams: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(b.addr()).unwrap())
        .collect();
    let admitted = streams
        .iter_mut()
        .enumerate()
        .map(|(i, s)| try_connect(s, &format!("r{i}")))
        .filter(|&ok| ok)
        .count();
    assert!(
        (5..10).contains(&admitted),
        "{admitted} of 10 admitted in one window"
    );
    // Another address is not affected by 127.0.0.1's excess.
    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    other
        .bind(&"127.0.0.2:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    other.connect(&b.addr().into()).unwrap();
    let mut other: TcpStream = other.into();
    assert!(try_connect(&mut other, "other-ip"));
    // Once the sliding second no longer covers the burst, 127.0.0.1 is welcome again
    // (a second later it would still count most of the burst).
    std::thread::sleep(Duration::from_millis(2100));
    let refused = counter_at_least(b.addr(), "limits/connections_refused_rate", 1);
    assert_eq!(refused, 10 - admitted as u64);
    serves(b.addr(), "after");
    b.stop_checked().expect("no worker panicked");
}

#[test]
fn connect_timeout_closes_silent_and_partial_connections() {
    let b = limited(|c| c.connect_timeout_secs = 1);
    let mut silent = Raw::connect(b.addr());
    let mut partial = Raw::connect(b.addr());
    partial.send_bytes(&[0x10, 0x10, 0x00]); // the start of a CONNECT
    let started = Instant::now();
    let mut good = Raw::mqtt(b.addr(), "good", true);
    assert!(silent.closed().0, "silent connection closed");
    assert!(partial.closed().0, "partial CONNECT closed");
    assert!(started.elapsed() < Duration::from_secs(4));
    round_trip(&mut good, "ctl/good");
    assert!(counter_at_least(b.addr(), "limits/connect_timeouts", 2) >= 2);
    b.stop_checked().expect("no worker panicked");
}

#[test]
fn oversize_packet_closes_only_its_connection() {
    let b = limited(|c| c.max_packet_bytes = 1024);
    let mut good = Raw::mqtt(b.addr(), "good", true);
    let mut big = Raw::mqtt(b.addr(), "big", true);
    big.send(&publish_packet(
        "t",
        QoS::AtMostOnce,
        0,
        &[7u8; 2000],
        false,
    ));
    assert!(big.closed().0, "3.1.1: closed");
    let mut big5 = v5(b.addr(), "big5");
    let mut bytes = Vec::new();
    encode_packet_v(
        &publish_packet("t", QoS::AtLeastOnce, 1, &[7u8; 2000], false),
        ProtocolVersion::V5,
        &mut bytes,
    );
    let _ = big5.stream.write_all(&bytes);
    match big5.recv() {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::PACKET_TOO_LARGE),
        other => panic!("expected DISCONNECT 0x95, got {other:?}"),
    }
    assert!(big5.closed().0);
    round_trip(&mut good, "ctl/good");
    assert!(counter_at_least(b.addr(), "limits/packet_too_large", 2) >= 2);
    b.stop_checked().expect("no worker panicked");
}

#[test]
fn inflight_window_holds_the_rest_in_the_queue() {
    let b = limited(|c| c.max_inflight = 3);
    let mut sub = Raw::mqtt(b.addr(), "sub", true);
    subscribe(&mut sub, "q/t", QoS::AtLeastOnce);
    let mut publ = Raw::mqtt(b.addr(), "pub", true);
    for i in 1..=10u16 {
        publ.send(&publish_packet(
            "q/t",
            QoS::AtLeastOnce,
            i,
            &[i as u8],
            false,
        ));
        assert!(matches!(publ.recv(), Some(Packet::PubAck(_))));
    }
    let mut ids = Vec::new();
    for _ in 0..3 {
        match sub.recv() {
            Some(Packet::Publish(p)) => ids.push(p.packet_id.unwrap()),
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    sub.silent_for(Duration::from_millis(300));
    assert_eq!(counter_at_least(b.addr(), "store/messages/count", 7), 7);
    // One ack opens the window by one.
    sub.send(&Packet::PubAck(Ack::new(ids[0])));
    assert!(matches!(sub.recv(), Some(Packet::Publish(p)) if p.payload[0] == 4));
    serves(b.addr(), "other");
    b.stop_checked().expect("no worker panicked");
}

/// An offline persistent subscriber of `q/t` gets `n` QoS 1 messages of `payload_len`
/// bytes published; returns the first payload byte of what it receives on return.
fn offline_then_back(b: &BrokerHandle, n: u8, payload_len: usize) -> Vec<u8> {
    let mut sub = Raw::mqtt(b.addr(), "sub", false);
    subscribe(&mut sub, "q/t", QoS::AtLeastOnce);
    drop(sub);
    std::thread::sleep(Duration::from_millis(200));
    let mut publ = Raw::mqtt(b.addr(), "pub", true);
    for i in 1..=n {
        let mut payload = vec![0u8; payload_len];
        payload[0] = i;
        publ.send(&publish_packet(
            "q/t",
            QoS::AtLeastOnce,
            u16::from(i),
            &payload,
            false,
        ));
        assert!(matches!(publ.recv(), Some(Packet::PubAck(_))));
    }
    let mut sub = Raw::mqtt(b.addr(), "sub", false);
    let mut got = Vec::new();
    while let Some(p) = sub.recv_within(Duration::from_millis(500)) {
        if let Packet::Publish(p) = p {
            got.push(p.payload[0]);
            sub.send(&Packet::PubAck(Ack::new(p.packet_id.unwrap())));
        }
    }
    got
}

#[test]
fn queued_messages_limit_drops_the_oldest() {
    let b = limited(|c| c.max_queued_messages = 5);
    let got = offline_then_back(&b, 12, 10);
    assert_eq!(got, vec![8, 9, 10, 11, 12], "the newest five");
    assert!(counter_at_least(b.addr(), "dropped/queue_full", 7) >= 7);
    serves(b.addr(), "other");
    b.stop_checked().expect("no worker panicked");
}

#[test]
fn queued_bytes_limit_drops_the_oldest() {
    // Each message weighs 3 (topic) + 1000 bytes: four fit in 4096.
    let b = limited(|c| c.max_queued_bytes = 4096);
    let got = offline_then_back(&b, 10, 1000);
    assert_eq!(got, vec![7, 8, 9, 10], "the newest that fit");
    assert!(counter_at_least(b.addr(), "dropped/queue_full", 6) >= 6);
    serves(b.addr(), "other");
    b.stop_checked().expect("no worker panicked");
}

/// Publishes `(topic, payload)` pairs with RETAIN, waits until they are routed, and
/// returns what a new subscriber to `r/#` is then given, sorted by topic.
fn retain_then_look(addr: SocketAddr, msgs: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
    let mut p = Raw::mqtt(addr, "retainer", true);
    for (topic, body) in msgs {
        p.send(&publish_packet(topic, QoS::AtMostOnce, 0, body, true));
    }
    // A PINGREQ round trip: the publishes before it have been routed.
    p.send(&Packet::PingReq);
    assert!(matches!(p.recv(), Some(Packet::PingResp)));
    let mut s = Raw::mqtt(addr, "late", true);
    subscribe(&mut s, "r/#", QoS::AtMostOnce);
    let mut got = Vec::new();
    while let Some(Packet::Publish(m)) = s.recv_within(Duration::from_millis(300)) {
        got.push((m.topic.to_string(), m.payload.to_vec()));
    }
    got.sort();
    got
}

#[test]
fn retained_store_limit_keeps_existing_topics_and_refuses_new_ones() {
    let b = limited(|c| c.max_retained_messages = 2);
    let got = retain_then_look(
        b.addr(),
        &[("r/1", b"a"), ("r/2", b"b"), ("r/3", b"c"), ("r/1", b"a2")],
    );
    assert_eq!(
        got,
        vec![
            ("r/1".to_string(), b"a2".to_vec()),
            ("r/2".to_string(), b"b".to_vec())
        ],
        "r/3 did not fit; replacing r/1 did"
    );
    serves(b.addr(), "other");
    assert!(counter_at_least(b.addr(), "limits/retained_refused", 1) >= 1);
    b.stop_checked().expect("no worker panicked");
}

#[test]
fn retained_store_byte_limit_refuses_what_would_not_fit() {
    let b = limited(|c| c.max_retained_bytes = 2048);
    let (big, small) = ([b'b'; 1500], [b's'; 600]);
    let got = retain_then_look(
        b.addr(),
        &[("r/1", &big), ("r/2", &small), ("r/3", &small[..500])],
    );
    let sizes: Vec<(&str, usize)> = got.iter().map(|(t, p)| (t.as_str(), p.len())).collect();
    assert_eq!(
        sizes,
        [("r/1", 1500), ("r/3", 500)],
        "r/2 would have taken the store to 2,100 bytes"
    );
    assert!(counter_at_least(b.addr(), "limits/retained_refused", 1) >= 1);
    b.stop_checked().expect("no worker panicked");
}

#[test]
fn subscription_limit_refuses_the_excess_filters() {
    let b = limited(|c| c.max_subscriptions_per_session = 3);
    let mut c = Raw::mqtt(b.addr(), "many", true);
    c.send(&sub_packet(1, &["a", "b", "c", "d", "e"], QoS::AtLeastOnce));
    match c.recv() {
        Some(Packet::SubAck(a)) => {
            let codes: Vec<u8> = a.codes.iter().map(|c| c.0).collect();
            assert_eq!(codes, [1, 1, 1, 0x80, 0x80]);
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
    // Replacing an existing subscription is still allowed at the limit.
    c.send(&sub_packet(2, &["a"], QoS::AtMostOnce));
    assert!(matches!(c.recv(), Some(Packet::SubAck(a)) if a.codes[0].0 == 0));
    let mut c5 = v5(b.addr(), "many5");
    c5.send(&sub_packet(1, &["a", "b", "c", "d"], QoS::AtMostOnce));
    match c5.recv() {
        Some(Packet::SubAck(a)) => assert_eq!(a.codes[3], ReasonCode::QUOTA_EXCEEDED),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    serves(b.addr(), "other");
    assert!(counter_at_least(b.addr(), "limits/subscriptions_refused", 3) >= 3);
    b.stop_checked().expect("no worker panicked");
}

#[test]
fn topic_levels_and_bytes_are_limited() {
    let b = limited(|c| {
        c.max_topic_levels = 4;
        c.max_topic_bytes = 64;
    });
    let deep = "a/b/c/d/e";
    let long = "x".repeat(65);
    let mut good = Raw::mqtt(b.addr(), "good", true);
    // 3.1.1 SUBSCRIBE: 0x80 for the filters beyond, the others granted.
    let mut c = Raw::mqtt(b.addr(), "c3", true);
    c.send(&sub_packet(1, &["a/b/c/d", deep, &long], QoS::AtMostOnce));
    match c.recv() {
        Some(Packet::SubAck(a)) => {
            let codes: Vec<u8> = a.codes.iter().map(|c| c.0).collect();
            assert_eq!(codes, [0, 0x80, 0x80]);
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
    // 3.1.1 PUBLISH beyond: the connection is closed.
    c.send(&publish_packet(deep, QoS::AtLeastOnce, 1, b"x", false));
    assert!(c.closed().0);
    // MQTT 5: SUBACK 0x8F; PUBACK 0x90 for QoS 1 (the connection stays); DISCONNECT
    // 0x90 for QoS 0.
    let mut c5 = v5(b.addr(), "c5");
    c5.send(&sub_packet(1, &[deep], QoS::AtMostOnce));
    assert!(
        matches!(c5.recv(), Some(Packet::SubAck(a)) if a.codes[0] == ReasonCode::TOPIC_FILTER_INVALID)
    );
    c5.send(&publish_packet(&long, QoS::AtLeastOnce, 7, b"x", false));
    match c5.recv() {
        Some(Packet::PubAck(a)) => assert_eq!(a.reason, ReasonCode::TOPIC_NAME_INVALID),
        other => panic!("expected PUBACK 0x90, got {other:?}"),
    }
    c5.send(&Packet::PingReq);
    assert!(matches!(c5.recv(), Some(Packet::PingResp)));
    c5.send(&publish_packet(deep, QoS::AtMostOnce, 0, b"x", false));
    match c5.recv() {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::TOPIC_NAME_INVALID),
        other => panic!("expected DISCONNECT 0x90, got {other:?}"),
    }
    assert!(c5.closed().0);
    // A will topic beyond: the CONNECT is refused (MQTT 5: 0x90).
    let mut w = TcpStream::connect(b.addr()).unwrap();
    let mut connect = connect_packet("will5", true);
    connect.version = ProtocolVersion::V5;
    connect.will = Some(ternmq::protocol::Will {
        topic: ternmq::protocol::TopicName::new(deep).unwrap(),
        payload: bytes::Bytes::from_static(b"bye"),
        qos: QoS::AtMostOnce,
        retain: false,
        props: Default::default(),
    });
    let mut out = Vec::new();
    encode_packet_v(&Packet::Connect(connect), ProtocolVersion::V5, &mut out);
    w.write_all(&out).unwrap();
    w.set_read_timeout(Some(WAIT)).unwrap();
    let mut reply = [0u8; 4];
    w.read_exact(&mut reply).unwrap();
    assert_eq!(reply[0], 0x20, "CONNACK");
    assert_eq!(reply[3], 0x90, "Topic Name invalid");
    round_trip(&mut good, "ctl/good");
    assert!(counter_at_least(b.addr(), "limits/topics_refused", 7) >= 7);
    b.stop_checked().expect("no worker panicked");
}

/// Slowloris: 2,000 connections each send one byte of a CONNECT per second. The
/// workers never block on them: a normal client's round trips stay fast meanwhile,
/// and the CONNECT timeout closes every slow one.
#[test]
fn slowloris_does_not_block_the_workers() {
    const SLOW: usize = 2000;
    let b = limited(|c| c.connect_timeout_secs = 3);
    let mut connect = Vec::new();
    encode_packet_v(
        &Packet::Connect(connect_packet("slow", true)),
        ProtocolVersion::V3_1_1,
        &mut connect,
    );
    let started = Instant::now();
    let mut slow: Vec<Option<TcpStream>> = (0..SLOW)
        .map(|_| {
            let s = TcpStream::connect(b.addr()).expect("connect");
            s.set_nonblocking(true).unwrap();
            Some(s)
        })
        .collect();
    let opened_in = started.elapsed();
    // The slow clients: one byte each per second, on their own thread, until closed.
    let driver = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut byte = 0;
        while slow.iter().any(Option::is_some) && Instant::now() < deadline {
            for s in slow.iter_mut() {
                let Some(stream) = s else { continue };
                let mut b = [0u8; 16];
                let gone = match stream.read(&mut b) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                } || stream.write(&connect[byte % connect.len()..][..1]).is_err();
                if gone {
                    *s = None;
                }
            }
            byte += 1;
            std::thread::sleep(Duration::from_millis(1000));
        }
        slow.iter().filter(|s| s.is_some()).count()
    });
    // Meanwhile a normal client publishes and receives.
    let mut good = Raw::mqtt(b.addr(), "good", true);
    subscribe(&mut good, "rt", QoS::AtMostOnce);
    let mut rtts = Vec::new();
    for i in 0..80u8 {
        let t = Instant::now();
        good.send(&publish_packet("rt", QoS::AtMostOnce, 0, &[i], false));
        match good.recv() {
            Some(Packet::Publish(p)) => assert_eq!(p.payload[0], i),
            other => panic!("expected PUBLISH, got {other:?}"),
        }
        rtts.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    rtts.sort();
    let median = rtts[rtts.len() / 2];
    eprintln!(
        "slowloris: {SLOW} slow connections opened in {opened_in:?}; round trip median {median:?}, max {:?}",
        rtts[rtts.len() - 1]
    );
    assert!(median < Duration::from_millis(200), "median {median:?}");
    let left = driver.join().expect("driver thread");
    assert_eq!(
        left, 0,
        "every slow connection closed by the CONNECT timeout"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3 + 10),
        "closed in {:?}",
        started.elapsed()
    );
    assert!(counter_at_least(b.addr(), "limits/connect_timeouts", SLOW as u64) >= SLOW as u64);
    b.stop_checked().expect("no worker panicked");
}
