//! End-to-end behaviour over real sockets with an independent client (rumqttc) and
//! raw bytes, on two workers so that cross-worker paths run. Connections are dealt
//! round-robin, so with two workers consecutive connections land on different ones.

mod common;

use bytes::Bytes;
use common::*;
use rumqttc::{Event, Packet as RPacket, QoS as RQoS};
use std::time::Duration;
use ternmq::protocol::{Packet, QoS, ReasonCode, Subscribe, TopicFilter, TopicName, Will};

use common::publish_packet as raw_publish;

fn raw_subscribe(raw: &mut Raw, filter: &str, qos: QoS) {
    raw.send(&Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        filters: vec![(TopicFilter::new(filter).unwrap(), qos.into())],
        props: Default::default(),
    }));
    match raw.recv() {
        Some(Packet::SubAck(_)) => {}
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

#[test]
fn pubsub_every_qos_across_workers() {
    let b = broker(2);
    let (sub, mut sub_conn) = rumqtt(b.addr(), "sub", true);
    wait_connack(&mut sub_conn);
    sub.subscribe("t/#", RQoS::ExactlyOnce).unwrap();
    wait_suback(&mut sub_conn);
    let (publ, mut pub_conn) = rumqtt(b.addr(), "pub", true);
    wait_connack(&mut pub_conn);
    for (i, q) in [RQoS::AtMostOnce, RQoS::AtLeastOnce, RQoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        publ.publish(format!("t/{i}"), q, false, vec![i as u8])
            .unwrap();
        // Drive the publisher's event loop so the packet (and its QoS flow) goes out.
        let _ = pub_conn.recv_timeout(Duration::from_millis(50));
        let p = next_publish(&mut sub_conn);
        assert_eq!(p.topic, format!("t/{i}"));
        assert_eq!(p.qos, q);
        assert_eq!(&p.payload[..], &[i as u8]);
    }
}

#[test]
fn retained_message_reaches_later_wildcard_subscriber_on_other_worker() {
    let b = broker(2);
    let (publ, mut pub_conn) = rumqtt(b.addr(), "pub", true);
    wait_connack(&mut pub_conn);
    publ.publish("home/kitchen/temp", RQoS::AtLeastOnce, true, "21")
        .unwrap();
    wait_event(&mut pub_conn, |e| {
        matches!(e, Event::Incoming(RPacket::PubAck(_)))
    });
    let (sub, mut sub_conn) = rumqtt(b.addr(), "sub", true);
    wait_connack(&mut sub_conn);
    sub.subscribe("home/+/temp", RQoS::AtLeastOnce).unwrap();
    let p = next_publish(&mut sub_conn);
    assert!(p.retain, "[MQTT-3.3.1-6] retained delivery has RETAIN set");
    assert_eq!(&p.payload[..], b"21");
}

#[test]
fn will_is_published_on_keep_alive_expiry() {
    let b = broker(2);
    let mut watcher = Raw::mqtt(b.addr(), "watcher", true);
    raw_subscribe(&mut watcher, "wills/+", QoS::AtLeastOnce);
    let mut dying = Raw::connect(b.addr());
    let mut c = connect_packet("dying", true);
    c.keep_alive_secs = 1;
    c.will = Some(Will {
        topic: TopicName::new("wills/dying").unwrap(),
        payload: Bytes::from_static(b"lost"),
        qos: QoS::AtLeastOnce,
        retain: false,
        props: Default::default(),
    });
    dying.send(&Packet::Connect(c));
    assert!(matches!(dying.recv(), Some(Packet::ConnAck(_))));
    // Silence for 1.5 x 1 s: the broker must close and publish the will.
    let (closed, _) = dying.closed();
    assert!(
        closed,
        "[MQTT-3.1.2-24] connection closed after 1.5 x keep-alive"
    );
    match watcher.recv() {
        Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"lost"),
        other => panic!("expected the will, got {other:?}"),
    }
}

#[test]
fn offline_queue_is_delivered_on_reconnect() {
    let b = broker(2);
    let mut sub = Raw::mqtt(b.addr(), "persist", false);
    raw_subscribe(&mut sub, "q/#", QoS::AtLeastOnce);
    sub.send(&Packet::disconnect());
    drop(sub);
    let mut publ = Raw::mqtt(b.addr(), "pub", true);
    for i in 1..=5u16 {
        publ.send(&raw_publish("q/x", QoS::AtLeastOnce, i, &[i as u8], false));
        assert_eq!(publ.recv(), Some(Packet::puback(pid(i))));
    }
    // Reconnect: probably on the other worker, so the session moves with its queue.
    let mut sub = Raw::connect(b.addr());
    sub.send(&Packet::Connect(connect_packet("persist", false)));
    match sub.recv() {
        Some(Packet::ConnAck(a)) => assert!(a.session_present, "[MQTT-3.2.2-2]"),
        other => panic!("{other:?}"),
    }
    for i in 1..=5u8 {
        match sub.recv() {
            Some(Packet::Publish(p)) => {
                assert_eq!(&p.payload[..], &[i], "queued messages keep their order");
                sub.send(&Packet::puback(p.packet_id.unwrap()));
            }
            other => panic!("expected queued message {i}, got {other:?}"),
        }
    }
}

#[test]
fn takeover_across_workers_closes_old_connection() {
    let b = broker(2);
    let mut first = Raw::mqtt(b.addr(), "same-id", false);
    raw_subscribe(&mut first, "cmd", QoS::AtLeastOnce);
    // The next connection lands on the other worker.
    let mut second = Raw::connect(b.addr());
    second.send(&Packet::Connect(connect_packet("same-id", false)));
    match second.recv() {
        Some(Packet::ConnAck(a)) => {
            assert_eq!(a.code, ReasonCode::SUCCESS);
            assert!(a.session_present);
        }
        other => panic!("{other:?}"),
    }
    let (closed, _) = first.closed();
    assert!(closed, "[MQTT-3.1.4-2] the first connection is closed");
    // The moved subscription still works.
    let mut publ = Raw::mqtt(b.addr(), "pub", true);
    publ.send(&raw_publish("cmd", QoS::AtLeastOnce, 1, b"go", false));
    match second.recv() {
        Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"go"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn qos2_exactly_once_across_a_reconnect_mid_flow() {
    let b = broker(2);
    let mut sub = Raw::mqtt(b.addr(), "q2sub", false);
    raw_subscribe(&mut sub, "x", QoS::ExactlyOnce);
    let mut publ = Raw::mqtt(b.addr(), "q2pub", false);
    // Inbound: PUBLISH, PUBREC, then the publisher drops before PUBREL.
    publ.send(&raw_publish("x", QoS::ExactlyOnce, 42, b"once", false));
    assert_eq!(publ.recv(), Some(Packet::pubrec(pid(42))));
    drop(publ);
    // Outbound: the subscriber gets it and drops before PUBREC.
    let first = match sub.recv() {
        Some(Packet::Publish(p)) => p,
        other => panic!("{other:?}"),
    };
    drop(sub);
    // The publisher resumes and resends with DUP: acknowledged, not delivered again.
    let mut publ = Raw::connect(b.addr());
    publ.send(&Packet::Connect(connect_packet("q2pub", false)));
    assert!(matches!(publ.recv(), Some(Packet::ConnAck(a)) if a.session_present));
    let mut again = raw_publish("x", QoS::ExactlyOnce, 42, b"once", false);
    if let Packet::Publish(p) = &mut again {
        p.dup = true;
    }
    publ.send(&again);
    assert_eq!(publ.recv(), Some(Packet::pubrec(pid(42))));
    publ.send(&Packet::pubrel(pid(42)));
    assert_eq!(publ.recv(), Some(Packet::pubcomp(pid(42))));
    // The subscriber resumes: the same message again with DUP, then nothing more.
    let mut sub = Raw::connect(b.addr());
    sub.send(&Packet::Connect(connect_packet("q2sub", false)));
    assert!(matches!(sub.recv(), Some(Packet::ConnAck(a)) if a.session_present));
    match sub.recv() {
        Some(Packet::Publish(p)) => {
            assert!(p.dup, "[MQTT-4.4.0-1]");
            assert_eq!(p.packet_id, first.packet_id);
            sub.send(&Packet::pubrec(p.packet_id.unwrap()));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sub.recv(), Some(Packet::pubrel(first.packet_id.unwrap())));
    sub.send(&Packet::pubcomp(first.packet_id.unwrap()));
    sub.silent_for(Duration::from_millis(300));
}

#[test]
fn unsupported_protocol_level_gets_connack_1() {
    // [MQTT-3.1.2-2]
    let b = broker(1);
    let mut raw = Raw::connect(b.addr());
    // CONNECT, protocol name MQTT, level 9, clean session, keep-alive 60, id "x".
    raw.send_bytes(&[
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 9, 0x02, 0, 60, 0, 1, b'x',
    ]);
    let (closed, got) = raw.closed();
    assert!(closed);
    assert!(
        matches!(got.first(), Some(Packet::ConnAck(a)) if a.code == ReasonCode::UNSUPPORTED_PROTOCOL_VERSION),
        "{got:?}"
    );
}

#[test]
fn malformed_input_closes_only_that_connection() {
    let b = broker(2);
    let mut bystander = Raw::mqtt(b.addr(), "bystander", true);
    let cases: &[(&str, &[u8])] = &[
        ("reserved packet type 0", &[0x00, 0x00]),
        ("reserved packet type 15", &[0xF0, 0x00]),
        (
            "remaining length over 4 bytes",
            &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
        ),
        (
            "PUBLISH QoS 3 [MQTT-3.3.1-4]",
            &[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01],
        ),
        (
            "PUBLISH wildcard topic [MQTT-3.3.2-2]",
            &[0x30, 0x03, 0x00, 0x01, b'#'],
        ),
        (
            "SUBSCRIBE bad flags [MQTT-3.8.1-1]",
            &[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00],
        ),
        (
            "SUBSCRIBE no filters [MQTT-3.8.3-3]",
            &[0x82, 0x02, 0x00, 0x01],
        ),
        (
            "PUBLISH packet id 0 [MQTT-2.3.1-1]",
            &[0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00],
        ),
        (
            "PUBLISH empty topic [MQTT-4.7.3-1]",
            &[0x30, 0x02, 0x00, 0x00],
        ),
        (
            "PUBLISH topic with U+0000 [MQTT-1.5.3-2]",
            &[0x30, 0x03, 0x00, 0x01, 0x00],
        ),
        (
            "PUBLISH invalid UTF-8 [MQTT-1.5.3-1]",
            &[0x30, 0x03, 0x00, 0x01, 0xFF],
        ),
        (
            "oversize packet refused from header",
            &[0x30, 0xFF, 0xFF, 0xFF, 0x7F],
        ),
    ];
    for (name, bytes) in cases {
        let mut raw = Raw::mqtt(b.addr(), &format!("bad-{}", name.len()), true);
        raw.send_bytes(bytes);
        let (closed, _) = raw.closed();
        assert!(closed, "{name}: connection must be closed");
    }
    bystander.send(&Packet::PingReq);
    assert_eq!(
        bystander.recv(),
        Some(Packet::PingResp),
        "other clients carry on"
    );
}

#[test]
fn first_packet_not_connect_and_connect_timeout() {
    let b = broker_with(1, |c| c.connect_timeout_secs = 1);
    let mut raw = Raw::connect(b.addr());
    raw.send(&Packet::PingReq);
    assert!(raw.closed().0, "[MQTT-3.1.0-1]");
    let mut idle = Raw::connect(b.addr());
    assert!(idle.closed().0, "no CONNECT within the timeout");
}

#[test]
fn zero_length_client_id_rules() {
    let b = broker(1);
    let mut raw = Raw::connect(b.addr());
    raw.send(&Packet::Connect(connect_packet("", false)));
    let (closed, got) = raw.closed();
    assert!(closed);
    assert!(
        matches!(got.first(), Some(Packet::ConnAck(a)) if a.code == ReasonCode::CLIENT_ID_NOT_VALID),
        "[MQTT-3.1.3-8] {got:?}"
    );
    let mut raw = Raw::connect(b.addr());
    raw.send(&Packet::Connect(connect_packet("", true)));
    assert!(
        matches!(raw.recv(), Some(Packet::ConnAck(a)) if a.code == ReasonCode::SUCCESS),
        "[MQTT-3.1.3-6]"
    );
}

#[test]
fn sys_topics_are_published() {
    let b = broker_with(2, |c| c.sys_interval_secs = 1);
    let mut raw = Raw::mqtt(b.addr(), "sys", true);
    raw_subscribe(&mut raw, "$SYS/broker/#", QoS::AtMostOnce);
    let mut seen = std::collections::HashMap::new();
    for _ in 0..200 {
        match raw.recv() {
            Some(Packet::Publish(p)) => {
                seen.insert(p.topic.to_string(), p.payload.clone());
            }
            _ => break,
        }
        if seen.contains_key("$SYS/broker/clients/connected")
            && seen.contains_key("$SYS/broker/uptime")
        {
            break;
        }
    }
    assert_eq!(
        seen.get("$SYS/broker/clients/connected").map(|b| &b[..]),
        Some(&b"1"[..]),
        "{seen:?}"
    );
    assert!(seen.contains_key("$SYS/broker/uptime"));
    // A wildcard at the start does not match `$` topics [MQTT-4.7.2-1].
    let mut all = Raw::mqtt(b.addr(), "all", true);
    raw_subscribe(&mut all, "#", QoS::AtMostOnce);
    all.silent_for(Duration::from_millis(1500));
}

#[test]
fn slow_qos0_subscriber_is_bounded_and_drops_are_counted() {
    let b = broker_with(1, |c| {
        c.max_outbound_bytes = 64 * 1024;
        c.sys_interval_secs = 1;
    });
    let mut slow = Raw::mqtt(b.addr(), "slow", true);
    raw_subscribe(&mut slow, "flood", QoS::AtMostOnce);
    // The slow subscriber never reads; the publisher sends ~40 MB.
    let mut publ = Raw::mqtt(b.addr(), "flooder", true);
    let payload = vec![7u8; 4096];
    let mut out = Vec::new();
    ternmq::protocol::encode_packet(
        &raw_publish("flood", QoS::AtMostOnce, 0, &payload, false),
        &mut out,
    );
    let batch: Vec<u8> = out.iter().copied().cycle().take(out.len() * 100).collect();
    for _ in 0..100 {
        publ.send_bytes(&batch);
    }
    let mut watcher = Raw::mqtt(b.addr(), "watcher", true);
    raw_subscribe(
        &mut watcher,
        "$SYS/broker/dropped/qos0_slow_subscriber",
        QoS::AtMostOnce,
    );
    let mut dropped = 0u64;
    for _ in 0..5 {
        if let Some(Packet::Publish(p)) = watcher.recv() {
            dropped = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
            if dropped > 0 {
                break;
            }
        }
    }
    assert!(dropped > 0, "drops are counted in $SYS");
    publ.send(&Packet::PingReq);
    assert_eq!(
        publ.recv(),
        Some(Packet::PingResp),
        "the publisher is still served"
    );
}

#[test]
fn graceful_stop() {
    let b = broker(2);
    let _c = Raw::mqtt(b.addr(), "c", true);
    b.stop();
}

#[test]
fn latency_histograms_are_recorded_published_and_reset() {
    let b = broker_with(2, |c| c.sys_interval_secs = 1);
    let mut sub = Raw::mqtt(b.addr(), "sub", true);
    raw_subscribe(&mut sub, "lat", QoS::AtMostOnce);
    let mut publ = Raw::mqtt(b.addr(), "pub", true);
    for _ in 0..50 {
        publ.send(&raw_publish("lat", QoS::AtMostOnce, 0, b"x", false));
        assert!(matches!(sub.recv(), Some(Packet::Publish(_))));
    }
    let lat = b.latency();
    let [publish, turn, batch_len, _, _] = lat.summaries();
    assert!(publish.count >= 50, "{publish:?}");
    assert!(turn.count > 0);
    assert!(
        batch_len.count > 0,
        "publisher and subscriber are on different workers"
    );
    let mut watcher = Raw::mqtt(b.addr(), "w", true);
    raw_subscribe(
        &mut watcher,
        "$SYS/broker/latency/publish_ns/count",
        QoS::AtMostOnce,
    );
    match watcher.recv() {
        Some(Packet::Publish(p)) => {
            let n: u64 = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
            assert!(n > 0);
        }
        other => panic!("{other:?}"),
    }
    b.reset_latency();
    // The reset is asynchronous; a snapshot after it sees empty publish histograms.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(b.latency().summaries()[0].count, 0);
}
