//! MQTT 3.1.1 conformance: one test (or a small group) per server-side normative
//! statement `[MQTT-x.x.x-y]`, over real sockets with raw bytes. The table in
//! `docs/conformance-3.1.1.md` maps every statement of the specification to a test
//! here, to an existing test elsewhere, or says why it does not apply.
//!
//! Connections are dealt round-robin to workers starting at worker 0, so on a broker
//! with two workers the n-th connection (from 0) of a test lands on worker n % 2.
//! Tests that care say which worker each client is on.
//!
//! Negative checks ("X is not delivered") either wait a short silence or, where the
//! order is guaranteed, send a marker after X and assert the marker comes first.

mod common;

use bytes::Bytes;
use common::*;
use std::time::{Duration, Instant};
use ternmq::protocol::{
    ConnAck, Connect, Packet, Publish, QoS, ReasonCode, Subscribe, TopicFilter, TopicName,
    Unsubscribe, Will,
};

/// How long a negative check waits for something that must not arrive.
const QUIET: Duration = Duration::from_millis(300);

use common::publish_packet as publish;

/// SUBSCRIBE with packet id `id`; returns the SUBACK codes after checking the id.
fn subscribe_id(raw: &mut Raw, id: u16, filters: &[(&str, QoS)]) -> Vec<ReasonCode> {
    raw.send(&Packet::Subscribe(Subscribe {
        packet_id: pid(id),
        filters: filters
            .iter()
            .map(|(f, q)| (TopicFilter::new(*f).unwrap(), (*q).into()))
            .collect(),
        props: Default::default(),
    }));
    match raw.recv() {
        Some(Packet::SubAck(a)) => {
            assert_eq!(a.packet_id, pid(id), "[MQTT-3.8.4-2] [MQTT-2.3.1-7]");
            a.codes
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

fn subscribe(raw: &mut Raw, filter: &str, qos: QoS) {
    let codes = subscribe_id(raw, 1, &[(filter, qos)]);
    assert_eq!(codes, vec![ReasonCode::granted(qos)]);
}

fn expect_publish(raw: &mut Raw) -> Publish {
    match raw.recv() {
        Some(Packet::Publish(p)) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// QoS 1 publish, waiting for its PUBACK.
fn publish_acked(raw: &mut Raw, topic: &str, id: u16, payload: &[u8], retain: bool) {
    raw.send(&publish(topic, QoS::AtLeastOnce, id, payload, retain));
    assert_eq!(raw.recv(), Some(Packet::puback(pid(id))), "[MQTT-4.3.2-2]");
}

/// TCP connect and CONNECT; returns the connection and the CONNACK.
fn connect_with(addr: std::net::SocketAddr, c: Box<Connect>) -> (Raw, ConnAck) {
    let mut raw = Raw::connect(addr);
    raw.send(&Packet::Connect(c));
    match raw.recv() {
        Some(Packet::ConnAck(a)) => (raw, a),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// Connects with the given id and clean flag, expects acceptance, returns the
/// session-present flag.
fn session(addr: std::net::SocketAddr, id: &str, clean: bool) -> (Raw, bool) {
    let (raw, ack) = connect_with(addr, connect_packet(id, clean));
    assert_eq!(ack.code, ReasonCode::SUCCESS, "[MQTT-3.1.4-4]");
    (raw, ack.session_present)
}

fn with_will(
    id: &str,
    clean: bool,
    topic: &str,
    payload: &[u8],
    qos: QoS,
    retain: bool,
) -> Box<Connect> {
    let mut c = connect_packet(id, clean);
    c.will = Some(Will {
        topic: TopicName::new(topic).unwrap(),
        payload: Bytes::copy_from_slice(payload),
        qos,
        retain,
        props: Default::default(),
    });
    c
}

/// A whole packet from its first byte and body.
fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        v.push(b);
        if len == 0 {
            break;
        }
    }
    v.extend_from_slice(body);
    v
}

/// A length-prefixed string or binary field.
fn field(x: &[u8]) -> Vec<u8> {
    let mut v = (x.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(x);
    v
}

/// A CONNECT packet with protocol `name`/`level`, `flags`, keep-alive 60 and the
/// given payload bytes.
fn connect_raw(name: &[u8], level: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut b = field(name);
    b.push(level);
    b.push(flags);
    b.extend_from_slice(&60u16.to_be_bytes());
    b.extend_from_slice(payload);
    frame(0x10, &b)
}

/// An MQTT 3.1.1 CONNECT with `flags` and the given payload fields.
fn connect311(flags: u8, fields: &[&[u8]]) -> Vec<u8> {
    let payload: Vec<u8> = fields.iter().flat_map(|f| field(f)).collect();
    connect_raw(b"MQTT", 4, flags, &payload)
}

/// Sends `bytes` as the first packet of a new connection and asserts the broker
/// closes it without any CONNACK ([MQTT-3.1.4-1]).
fn assert_connect_refused_silently(addr: std::net::SocketAddr, what: &str, bytes: &[u8]) {
    let mut raw = Raw::connect(addr);
    raw.send_bytes(bytes);
    let (closed, got) = raw.closed();
    assert!(closed, "{what}: connection must be closed");
    assert!(got.is_empty(), "{what}: no CONNACK expected, got {got:?}");
}

/// Sends `bytes` on an accepted connection and asserts the broker closes it.
fn assert_closes_after(addr: std::net::SocketAddr, what: &str, bytes: &[u8]) {
    let mut raw = Raw::mqtt(addr, "violator", true);
    raw.send_bytes(bytes);
    let (closed, got) = raw.closed();
    assert!(closed, "{what}: connection must be closed (got {got:?})");
}

// ---------------------------------------------------------------- 1.5 strings

#[test]
fn mqtt_1_5_3_1_and_2_bad_utf8_in_any_string_field_closes() {
    let b = broker(2);
    let bad: &[(&str, &[u8])] = &[
        ("invalid byte", &[b'a', 0xFF]),
        ("encoded surrogate U+D800", &[0xED, 0xA0, 0x80]),
        ("overlong encoding", &[0xC0, 0xAF]),
        ("U+0000", &[b'a', 0x00]),
    ];
    for (what, s) in bad {
        // [MQTT-1.5.3-1] [MQTT-1.5.3-2] [MQTT-3.1.3-4]: client identifier.
        assert_connect_refused_silently(b.addr(), what, &connect311(0x02, &[s]));
        // [MQTT-3.1.3-10]: will topic.
        assert_connect_refused_silently(b.addr(), what, &connect311(0x06, &[b"id", s, b"m"]));
        // [MQTT-3.1.3-11]: user name.
        assert_connect_refused_silently(b.addr(), what, &connect311(0x82, &[b"id", s]));
        // [MQTT-3.8.3-1]: SUBSCRIBE topic filter.
        let mut body = vec![0, 1];
        body.extend(field(s));
        body.push(0);
        assert_closes_after(b.addr(), what, &frame(0x82, &body));
        // [MQTT-3.10.3-1]: UNSUBSCRIBE topic filter.
        let mut body = vec![0, 1];
        body.extend(field(s));
        assert_closes_after(b.addr(), what, &frame(0xA2, &body));
    }
}

#[test]
fn mqtt_1_5_3_3_bom_is_kept_in_topics() {
    // [MQTT-1.5.3-3]: U+FEFF is an ordinary character, never stripped.
    let b = broker(2);
    let mut with_bom = Raw::mqtt(b.addr(), "with-bom", true); // worker 0
    subscribe(&mut with_bom, "\u{FEFF}bom", QoS::AtMostOnce);
    let mut without = Raw::mqtt(b.addr(), "without", true); // worker 1
    subscribe(&mut without, "bom", QoS::AtMostOnce);
    let mut publ = Raw::mqtt(b.addr(), "pub", true); // worker 0
    publ.send(&publish("\u{FEFF}bom", QoS::AtMostOnce, 0, b"1", false));
    let p = expect_publish(&mut with_bom);
    assert_eq!(
        p.topic.as_str().as_bytes(),
        b"\xEF\xBB\xBFbom",
        "[MQTT-1.5.3-3]"
    );
    without.silent_for(QUIET);
}

// ---------------------------------------------------------------- 2 packet format

#[test]
fn mqtt_2_2_2_1_and_2_reserved_flags_close_the_connection() {
    let b = broker(2);
    let cases: &[(&str, Vec<u8>)] = &[
        ("CONNECT flags 0001 [MQTT-2.2.2-2]", {
            let mut c = connect311(0x02, &[b"x"]);
            c[0] = 0x11;
            c
        }),
        ("PUBACK flags 0010", frame(0x42, &[0, 1])),
        ("PUBREC flags 0001", frame(0x51, &[0, 1])),
        ("PUBREL flags 0000 [MQTT-3.6.1-1]", frame(0x60, &[0, 1])),
        ("PUBCOMP flags 1000", frame(0x78, &[0, 1])),
        (
            "SUBSCRIBE flags 0000 [MQTT-3.8.1-1]",
            frame(0x80, &[0, 1, 0, 1, b'a', 0]),
        ),
        (
            "SUBSCRIBE flags 0011 [MQTT-3.8.1-1]",
            frame(0x83, &[0, 1, 0, 1, b'a', 0]),
        ),
        (
            "UNSUBSCRIBE flags 0000 [MQTT-3.10.1-1]",
            frame(0xA0, &[0, 1, 0, 1, b'a']),
        ),
        ("PINGREQ flags 0001", frame(0xC1, &[])),
        ("DISCONNECT flags 0100 [MQTT-3.14.1-1]", frame(0xE4, &[])),
    ];
    for (what, bytes) in cases {
        if bytes[0] >> 4 == 1 {
            assert_connect_refused_silently(b.addr(), what, bytes);
        } else {
            assert_closes_after(b.addr(), what, bytes);
        }
    }
}

#[test]
fn mqtt_3_14_1_1_disconnect_with_bad_flags_is_not_a_disconnect() {
    // [MQTT-3.14.1-1]: the server closes; as no valid DISCONNECT was received the will
    // is published ([MQTT-3.1.2-8]).
    let b = broker(2);
    let mut watcher = Raw::mqtt(b.addr(), "watcher", true);
    subscribe(&mut watcher, "will/#", QoS::AtMostOnce);
    let (mut dying, _) = connect_with(
        b.addr(),
        with_will("dying", true, "will/dying", b"bye", QoS::AtMostOnce, false),
    );
    dying.send_bytes(&[0xE1, 0x00]);
    assert!(dying.closed().0, "[MQTT-3.14.1-1]");
    assert_eq!(&expect_publish(&mut watcher).payload[..], b"bye");
}

#[test]
fn mqtt_2_3_1_1_zero_packet_id_closes() {
    let b = broker(1);
    let cases: &[(&str, Vec<u8>)] = &[
        ("SUBSCRIBE id 0", frame(0x82, &[0, 0, 0, 1, b'a', 0])),
        ("UNSUBSCRIBE id 0", frame(0xA2, &[0, 0, 0, 1, b'a'])),
        ("PUBLISH QoS 2 id 0", frame(0x34, &[0, 1, b'a', 0, 0])),
        ("PUBREL id 0", frame(0x62, &[0, 0])),
    ];
    for (what, bytes) in cases {
        assert_closes_after(b.addr(), &format!("[MQTT-2.3.1-1] {what}"), bytes);
    }
}

#[test]
fn mqtt_2_3_1_6_and_7_acks_echo_the_packet_id() {
    let b = broker(1);
    let mut c = Raw::mqtt(b.addr(), "c", true);
    // [MQTT-2.3.1-7] [MQTT-3.8.4-2] SUBACK and [MQTT-3.10.4-5] UNSUBACK.
    subscribe_id(&mut c, 0xBEEF, &[("ids", QoS::AtMostOnce)]);
    c.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(0xCAFE),
        filters: vec![TopicFilter::new("ids").unwrap()],
        props: Default::default(),
    }));
    assert_eq!(
        c.recv(),
        Some(Packet::unsuback(pid(0xCAFE))),
        "[MQTT-2.3.1-7]"
    );
    // [MQTT-2.3.1-6] [MQTT-3.3.4-1]: PUBACK for QoS 1, PUBREC/PUBCOMP for QoS 2, no
    // answer for QoS 0.
    c.send(&publish("ids", QoS::AtMostOnce, 0, b"0", false));
    c.send(&publish("ids", QoS::AtLeastOnce, 0x1234, b"1", false));
    assert_eq!(
        c.recv(),
        Some(Packet::puback(pid(0x1234))),
        "[MQTT-3.3.4-1]"
    );
    c.send(&publish("ids", QoS::ExactlyOnce, 0xFFFF, b"2", false));
    assert_eq!(
        c.recv(),
        Some(Packet::pubrec(pid(0xFFFF))),
        "[MQTT-3.3.4-1]"
    );
    c.send(&Packet::pubrel(pid(0xFFFF)));
    assert_eq!(
        c.recv(),
        Some(Packet::pubcomp(pid(0xFFFF))),
        "[MQTT-2.3.1-6]"
    );
}

#[test]
fn mqtt_2_3_1_2_and_4_server_packet_ids_are_unused_and_non_zero() {
    let b = broker_with(2, |c| c.max_inflight = 4);
    let mut sub = Raw::mqtt(b.addr(), "sub", true); // worker 0
    subscribe(&mut sub, "ids/#", QoS::AtLeastOnce);
    let mut publ = Raw::mqtt(b.addr(), "pub", true); // worker 1
    for i in 1..=12u16 {
        publish_acked(&mut publ, "ids/x", i, &[i as u8], false);
    }
    let mut in_flight: Vec<(u16, u8)> = Vec::new();
    let mut seen = 0u8;
    while seen < 12 {
        // Take whatever the window allows, then acknowledge the oldest two.
        while let Some(Packet::Publish(p)) = sub.recv_within(QUIET) {
            let id = p.packet_id.expect("[MQTT-2.3.1-1] QoS 1 has an id").get();
            assert!(
                in_flight.iter().all(|(i, _)| *i != id),
                "[MQTT-2.3.1-2] [MQTT-2.3.1-4] id {id} reused while in flight: {in_flight:?}"
            );
            assert!(!p.dup, "[MQTT-3.3.1-1] first delivery has DUP 0");
            seen += 1;
            assert_eq!(p.payload[0], seen, "[MQTT-4.6.0-6] order");
            in_flight.push((id, p.payload[0]));
        }
        assert!(in_flight.len() <= 4, "window respected: {in_flight:?}");
        for _ in 0..2.min(in_flight.len()) {
            let (id, _) = in_flight.remove(0);
            sub.send(&Packet::puback(pid(id)));
        }
    }
}

// ---------------------------------------------------------------- 3.1 CONNECT

#[test]
fn mqtt_3_1_0_1_and_2_connect_first_and_only_once() {
    let b = broker(1);
    // [MQTT-3.1.0-1]: anything but CONNECT first closes the connection.
    assert_connect_refused_silently(
        b.addr(),
        "[MQTT-3.1.0-1] SUBSCRIBE first",
        &frame(0x82, &[0, 1, 0, 1, b'a', 0]),
    );
    assert_connect_refused_silently(
        b.addr(),
        "[MQTT-3.1.0-1] PUBLISH first",
        &frame(0x30, &[0, 1, b'a', b'x']),
    );
    // [MQTT-3.1.0-2]: a second CONNECT is a protocol violation.
    let mut raw = Raw::mqtt(b.addr(), "twice", true);
    raw.send(&Packet::Connect(connect_packet("twice", true)));
    let (closed, got) = raw.closed();
    assert!(closed, "[MQTT-3.1.0-2]");
    assert!(got.is_empty(), "[MQTT-3.1.0-2] no second CONNACK: {got:?}");
}

#[test]
fn mqtt_3_1_2_1_wrong_protocol_name_is_not_processed() {
    // [MQTT-3.1.2-1]: the server does not go on with a CONNECT whose protocol name is
    // not "MQTT" (ternmq closes without CONNACK).
    let b = broker(1);
    for name in [&b"MQTX"[..], b"mqtt", b"MQTT\0", b""] {
        let what = format!("[MQTT-3.1.2-1] protocol name {name:?}");
        assert_connect_refused_silently(b.addr(), &what, &connect_raw(name, 4, 0x02, &field(b"x")));
    }
}

#[test]
fn mqtt_3_1_2_2_unsupported_level_gets_connack_0x01() {
    // [MQTT-3.1.2-2] for levels other than the one already tested in tests/broker.rs;
    // [MQTT-3.2.2-4] [MQTT-3.2.2-5]: session present 0, then close.
    let b = broker(1);
    for level in [0u8, 6, 255] {
        let mut raw = Raw::connect(b.addr());
        raw.send_bytes(&connect_raw(b"MQTT", level, 0x02, &field(b"x")));
        let (closed, got) = raw.closed();
        assert!(closed, "[MQTT-3.2.2-5] level {level}");
        assert_eq!(
            got,
            vec![Packet::ConnAck(ConnAck {
                session_present: false,
                code: ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
                props: Default::default(),
            })],
            "[MQTT-3.1.2-2] level {level}"
        );
    }
}

#[test]
fn mqtt_3_1_4_1_malformed_connect_closes_without_connack() {
    let b = broker(1);
    let cases: &[(&str, Vec<u8>)] = &[
        (
            "[MQTT-3.1.2-3] reserved flag set",
            connect311(0x03, &[b"x"]),
        ),
        (
            "[MQTT-3.1.2-11] [MQTT-3.1.2-13] will QoS without will flag",
            connect311(0x0A, &[b"x"]),
        ),
        (
            "[MQTT-3.1.2-11] [MQTT-3.1.2-15] will retain without will flag",
            connect311(0x22, &[b"x"]),
        ),
        (
            "[MQTT-3.1.2-11] will fields present without will flag",
            connect311(0x02, &[b"x", b"t", b"m"]),
        ),
        (
            "[MQTT-3.1.2-14] will QoS 3",
            connect311(0x1E, &[b"x", b"t", b"m"]),
        ),
        (
            "[MQTT-3.1.2-9] will flag without will topic",
            connect311(0x06, &[b"x"]),
        ),
        (
            "[MQTT-3.1.2-9] will flag without will message",
            connect311(0x06, &[b"x", b"t"]),
        ),
        (
            "[MQTT-3.1.2-9] [MQTT-3.3.2-2] will topic with wildcard",
            connect311(0x06, &[b"x", b"t/#", b"m"]),
        ),
        (
            "[MQTT-4.7.3-1] empty will topic",
            connect311(0x06, &[b"x", b"", b"m"]),
        ),
        (
            "[MQTT-3.1.2-18] user name without its flag",
            connect311(0x02, &[b"x", b"u"]),
        ),
        (
            "[MQTT-3.1.2-19] user name flag without user name",
            connect311(0x82, &[b"x"]),
        ),
        (
            "[MQTT-3.1.2-20] password without its flag",
            connect311(0x82, &[b"x", b"u", b"p"]),
        ),
        (
            "[MQTT-3.1.2-21] password flag without password",
            connect311(0xC2, &[b"x", b"u"]),
        ),
        (
            "[MQTT-3.1.2-22] password without user name",
            connect311(0x42, &[b"x", b"p"]),
        ),
        ("[MQTT-3.1.3-3] no client identifier", connect311(0x02, &[])),
        (
            "truncated variable header",
            frame(0x10, &[0, 4, b'M', b'Q', b'T', b'T', 4]),
        ),
    ];
    for (what, bytes) in cases {
        assert_connect_refused_silently(b.addr(), what, bytes);
    }
}

#[test]
fn mqtt_3_1_2_4_5_6_and_3_2_2_1_2_3_session_present_and_clean_session() {
    let b = broker(2);
    // Worker 0: a persistent session with a subscription.
    let (mut s, present) = session(b.addr(), "dev", false);
    assert!(!present, "[MQTT-3.2.2-3] no stored session yet");
    subscribe(&mut s, "cs/#", QoS::AtLeastOnce);
    s.send(&Packet::disconnect());
    assert!(s.closed().0);
    // Worker 1: messages for the offline session.
    let mut publ = Raw::mqtt(b.addr(), "pub", true);
    publ.send(&publish("cs/0", QoS::AtMostOnce, 0, b"qos0", false));
    publish_acked(&mut publ, "cs/1", 1, b"kept", false);
    let _filler = Raw::mqtt(b.addr(), "filler", true); // worker 0
                                                       // Worker 1: resume; the session moves over from worker 0.
    let (mut s, present) = session(b.addr(), "dev", false);
    assert!(present, "[MQTT-3.2.2-2]");
    // [MQTT-3.2.0-1]: CONNACK was the first packet; then the stored QoS 1 message
    // ([MQTT-3.1.2-4] resumed, [MQTT-3.1.2-5] stored while offline).
    let p = expect_publish(&mut s);
    assert_eq!(&p.payload[..], b"kept", "[MQTT-3.1.2-5]");
    s.send(&Packet::puback(p.packet_id.unwrap()));
    s.send(&Packet::disconnect());
    assert!(s.closed().0);
    // Worker 0: clean session discards the stored one.
    publish_acked(&mut publ, "cs/1", 2, b"dropped", false);
    let (mut s, present) = session(b.addr(), "dev", true);
    assert!(!present, "[MQTT-3.2.2-1]");
    s.silent_for(QUIET); // [MQTT-3.1.2-6]: nothing of the old session is delivered
    s.send(&Packet::disconnect());
    assert!(s.closed().0);
    // Worker 1: the clean session did not outlive its connection.
    let (mut s, present) = session(b.addr(), "dev", false);
    assert!(!present, "[MQTT-3.1.2-6] [MQTT-3.2.2-3]");
    publish_acked(&mut publ, "cs/1", 3, b"unsubscribed", false);
    s.silent_for(QUIET);
}

/// A client id first used with a clean session is reused, on the same worker, with
/// clean session 0 while that connection is still open.
#[test]
fn mqtt_3_1_2_6_and_3_2_2_3_takeover_of_a_clean_session_on_the_same_worker() {
    let b = broker(2);
    let (mut first, _) = session(b.addr(), "dev", true); // worker 0
    subscribe(&mut first, "old", QoS::AtMostOnce);
    let mut publ = Raw::mqtt(b.addr(), "pub", true); // worker 1
    let (mut second, present) = session(b.addr(), "dev", false); // worker 0
    assert!(first.closed().0, "[MQTT-3.1.4-2]");
    // [MQTT-3.1.2-4]: a new session was created and works.
    subscribe(&mut second, "new", QoS::AtMostOnce);
    publ.send(&publish("new", QoS::AtMostOnce, 0, b"hello", false));
    assert_eq!(
        &expect_publish(&mut second).payload[..],
        b"hello",
        "[MQTT-3.1.2-4]"
    );
    assert!(
        !present,
        "[MQTT-3.1.2-6] [MQTT-3.2.2-3] a clean session is not kept, so none is present"
    );
}

#[test]
fn mqtt_3_1_2_6_and_3_2_2_3_takeover_of_a_clean_session_across_workers() {
    // The passing counterpart of the test above, with the two connections on
    // different workers.
    let b = broker(2);
    let (mut first, _) = session(b.addr(), "dev", true); // worker 0
    subscribe(&mut first, "old", QoS::AtMostOnce);
    let (mut second, present) = session(b.addr(), "dev", false); // worker 1
    assert!(first.closed().0, "[MQTT-3.1.4-2]");
    assert!(!present, "[MQTT-3.1.2-6] [MQTT-3.2.2-3]");
    subscribe(&mut second, "new", QoS::AtMostOnce);
    let mut publ = Raw::mqtt(b.addr(), "pub", true); // worker 0
    publ.send(&publish("old", QoS::AtMostOnce, 0, b"stale", false));
    publ.send(&publish("new", QoS::AtMostOnce, 0, b"hello", false));
    assert_eq!(
        &expect_publish(&mut second).payload[..],
        b"hello",
        "[MQTT-3.1.2-4] [MQTT-3.1.2-6]"
    );
}

#[test]
fn mqtt_3_1_4_2_one_connection_per_client_id_after_same_worker_takeover() {
    let b = broker(2);
    let (_first, _) = session(b.addr(), "dup", true); // worker 0
    let _filler = Raw::mqtt(b.addr(), "filler", true); // worker 1
    let (mut second, _) = session(b.addr(), "dup", true); // worker 0: takes over
    let (mut third, _) = session(b.addr(), "dup", true); // worker 1: takes over again
    let (closed, _) = second.closed();
    assert!(
        closed,
        "[MQTT-3.1.4-2] the previous connection with this id is closed"
    );
    third.send(&Packet::PingReq);
    assert_eq!(third.recv(), Some(Packet::PingResp));
}

#[test]
fn mqtt_3_1_4_2_takeover_on_the_same_worker_closes_the_old_connection() {
    // Cross-worker takeover is in tests/broker.rs; this is the same-worker case with a
    // persistent session (the subscription carries over, [MQTT-3.1.2-4]).
    let b = broker(2);
    let (mut first, _) = session(b.addr(), "same", false); // worker 0
    subscribe(&mut first, "tk", QoS::AtLeastOnce);
    let mut publ = Raw::mqtt(b.addr(), "pub", true); // worker 1
    let (mut second, present) = session(b.addr(), "same", false); // worker 0
    assert!(first.closed().0, "[MQTT-3.1.4-2]");
    assert!(present, "[MQTT-3.2.2-2]");
    publish_acked(&mut publ, "tk", 1, b"moved", false);
    assert_eq!(&expect_publish(&mut second).payload[..], b"moved");
}

#[test]
fn mqtt_3_1_2_7_retained_messages_outlive_sessions() {
    let b = broker(2);
    let (mut p, _) = session(b.addr(), "publisher", true); // worker 0
    publish_acked(&mut p, "keep/me", 1, b"stay", true);
    p.send(&Packet::disconnect());
    assert!(p.closed().0);
    let mut s = Raw::mqtt(b.addr(), "late", true); // worker 1
    subscribe(&mut s, "keep/#", QoS::AtMostOnce);
    let got = expect_publish(&mut s);
    assert_eq!(&got.payload[..], b"stay", "[MQTT-3.1.2-7]");
}

#[test]
fn mqtt_3_1_2_8_9_12_16_will_published_only_without_disconnect() {
    let b = broker(2);
    let mut watcher = Raw::mqtt(b.addr(), "watcher", true); // worker 0
    subscribe(&mut watcher, "w/#", QoS::ExactlyOnce);
    // Worker 1: connection lost without DISCONNECT: the will goes out, at its own QoS
    // ([MQTT-3.1.2-9]) and not retained ([MQTT-3.1.2-16]).
    let (lost, _) = connect_with(
        b.addr(),
        with_will("lost", true, "w/lost", b"gone", QoS::AtLeastOnce, false),
    );
    drop(lost);
    let p = expect_publish(&mut watcher);
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("w/lost", &b"gone"[..]),
        "[MQTT-3.1.2-8]"
    );
    assert_eq!(p.qos, QoS::AtLeastOnce, "[MQTT-3.1.2-9]");
    assert!(!p.retain, "[MQTT-3.1.2-16]");
    watcher.send(&Packet::puback(p.packet_id.unwrap()));
    // Worker 0: DISCONNECT discards the will ([MQTT-3.14.4-3]).
    let (mut polite, _) = connect_with(
        b.addr(),
        with_will("polite", true, "w/polite", b"no", QoS::AtMostOnce, false),
    );
    polite.send(&Packet::disconnect());
    assert!(polite.closed().0);
    // Worker 1: no will flag, connection lost: nothing ([MQTT-3.1.2-12]).
    drop(Raw::mqtt(b.addr(), "nowill", true));
    // Marker: the next thing the watcher sees is this, not a will.
    let mut publ = Raw::mqtt(b.addr(), "marker", true);
    std::thread::sleep(QUIET);
    publ.send(&publish("w/marker", QoS::AtMostOnce, 0, b"m", false));
    let p = expect_publish(&mut watcher);
    assert_eq!(
        p.topic.as_str(),
        "w/marker",
        "[MQTT-3.14.4-3] [MQTT-3.1.2-12]"
    );
    // [MQTT-3.1.2-16]: no retained copy for a later subscriber.
    let mut late = Raw::mqtt(b.addr(), "late", true);
    subscribe(&mut late, "w/#", QoS::AtMostOnce);
    late.silent_for(QUIET);
}

#[test]
fn mqtt_3_1_2_17_retained_will() {
    let b = broker(2);
    let mut watcher = Raw::mqtt(b.addr(), "watcher", true); // worker 0
    subscribe(&mut watcher, "rw/#", QoS::AtMostOnce);
    let (lost, _) = connect_with(
        b.addr(),
        with_will("lost", true, "rw/lost", b"last", QoS::AtMostOnce, true),
    ); // worker 1
    drop(lost);
    let p = expect_publish(&mut watcher);
    assert_eq!(&p.payload[..], b"last");
    assert!(!p.retain, "[MQTT-3.3.1-9] live subscribers get RETAIN 0");
    let mut late = Raw::mqtt(b.addr(), "late", true); // worker 0
    subscribe(&mut late, "rw/#", QoS::AtMostOnce);
    let p = expect_publish(&mut late);
    assert!(p.retain && &p.payload[..] == b"last", "[MQTT-3.1.2-17]");
}

#[test]
fn mqtt_3_1_2_10_will_published_once() {
    let b = broker(2);
    let mut watcher = Raw::mqtt(b.addr(), "watcher", true); // worker 0
    subscribe(&mut watcher, "once/#", QoS::AtMostOnce);
    // Worker 1: a persistent session with a will; the connection is lost.
    let (lost, _) = connect_with(
        b.addr(),
        with_will("lost", false, "once/lost", b"w", QoS::AtMostOnce, false),
    );
    drop(lost);
    assert_eq!(&expect_publish(&mut watcher).payload[..], b"w");
    // Worker 0: the session resumes without a will and is lost again.
    let (again, present) = session(b.addr(), "lost", false);
    assert!(present);
    drop(again);
    watcher.silent_for(QUIET); // [MQTT-3.1.2-10]: the will left the session state
}

#[test]
fn mqtt_3_1_2_24_keep_alive_is_one_and_a_half_times() {
    let b = broker(2);
    let mut c = connect_packet("ka", true);
    c.keep_alive_secs = 1;
    let (mut raw, _) = connect_with(b.addr(), c);
    // PINGREQs every 0.6 s keep the connection for well over 1.5 s.
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(600));
        raw.send(&Packet::PingReq);
        assert_eq!(raw.recv(), Some(Packet::PingResp), "[MQTT-3.12.4-1]");
    }
    // Then silence: open at 1.2 s, closed soon after 1.5 s.
    let quiet_since = Instant::now();
    raw.silent_for(Duration::from_millis(1200));
    let (closed, _) = raw.closed();
    let after = quiet_since.elapsed();
    assert!(closed, "[MQTT-3.1.2-24]");
    assert!(
        after >= Duration::from_millis(1400) && after < Duration::from_millis(2500),
        "[MQTT-3.1.2-24] closed after {after:?}"
    );
}

#[test]
fn mqtt_3_1_3_5_client_ids_of_1_to_23_alphanumerics_are_allowed() {
    let b = broker(2);
    for id in [
        "a",
        "Z",
        "0",
        "0123456789abcdefghijklm",
        "ABCDEFGHIJKLMNOPQRSTUVW",
    ] {
        let (_raw, _) = session(b.addr(), id, false); // asserts acceptance [MQTT-3.1.3-5]
    }
}

#[test]
fn mqtt_3_1_3_6_zero_length_ids_get_unique_identities() {
    // [MQTT-3.1.3-6]: each empty-id client is its own client: none takes another over.
    let b = broker(2);
    let mut clients: Vec<Raw> = (0..4).map(|_| session(b.addr(), "", true).0).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        subscribe(c, &format!("anon/{i}"), QoS::AtMostOnce);
    }
    let mut publ = Raw::mqtt(b.addr(), "pub", true);
    for i in 0..4 {
        publ.send(&publish(
            &format!("anon/{i}"),
            QoS::AtMostOnce,
            0,
            &[i as u8],
            false,
        ));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(&expect_publish(c).payload[..], &[i as u8], "[MQTT-3.1.3-6]");
    }
}

#[test]
fn mqtt_3_1_3_9_rejected_client_id_gets_connack_0x02() {
    // ternmq rejects MQTT 3.1 client ids over 23 bytes (ARCHITECTURE.md).
    let b = broker(1);
    let mut raw = Raw::connect(b.addr());
    raw.send_bytes(&connect_raw(b"MQIsdp", 3, 0x02, &field(&[b'a'; 24])));
    let (closed, got) = raw.closed();
    assert!(closed, "[MQTT-3.1.3-9] [MQTT-3.2.2-5]");
    assert_eq!(
        got,
        vec![Packet::ConnAck(ConnAck {
            session_present: false, // [MQTT-3.2.2-4]
            code: ReasonCode::CLIENT_ID_NOT_VALID,
            props: Default::default(),
        })],
        "[MQTT-3.1.3-9]"
    );
}

#[test]
fn mqtt_3_1_4_5_nothing_after_a_refused_connect_is_processed() {
    let b = broker(2);
    // Worker 0: a CONNECT that is refused (empty id, clean session 0: CONNACK 0x02),
    // followed in the same write by a retained PUBLISH and a SUBSCRIBE.
    let mut bytes = connect311(0x00, &[b""]);
    bytes.extend(frame(
        0x31,
        &[0, 5, b'r', b'e', b'f', b'/', b'x', b'b', b'a', b'd'],
    ));
    bytes.extend(frame(0x82, &[0, 1, 0, 1, b'#', 0]));
    let mut refused = Raw::connect(b.addr());
    refused.send_bytes(&bytes);
    let (closed, got) = refused.closed();
    assert!(closed);
    assert!(
        matches!(
            got[..],
            [Packet::ConnAck(ConnAck {
                code: ReasonCode::CLIENT_ID_NOT_VALID,
                ..
            })]
        ),
        "[MQTT-3.1.3-8] [MQTT-3.1.4-5] only the CONNACK: {got:?}"
    );
    // Workers 1 and 0: no retained message was stored.
    for name in ["s1", "s0"] {
        let mut s = Raw::mqtt(b.addr(), name, true);
        subscribe(&mut s, "ref/#", QoS::AtMostOnce);
        s.silent_for(QUIET);
    }
}

// ---------------------------------------------------------------- 3.3 PUBLISH

#[test]
fn mqtt_3_3_1_1_2_3_dup_flag_is_the_servers_own() {
    let b = broker(2);
    let (mut q1, _) = session(b.addr(), "q1", false); // worker 0
    subscribe(&mut q1, "dup", QoS::AtLeastOnce);
    let mut q0 = Raw::mqtt(b.addr(), "q0", true); // worker 1
    subscribe(&mut q0, "dup", QoS::AtMostOnce);
    let mut publ = Raw::mqtt(b.addr(), "pub", true); // worker 0
                                                     // The publisher claims a retransmission; the server's deliveries are first sends.
    let mut again = publish("dup", QoS::AtLeastOnce, 7, b"d", false);
    if let Packet::Publish(p) = &mut again {
        p.dup = true;
    }
    publ.send(&again);
    assert_eq!(publ.recv(), Some(Packet::puback(pid(7))));
    let first = expect_publish(&mut q1);
    assert!(
        !first.dup,
        "[MQTT-3.3.1-3] DUP of the outgoing PUBLISH is independent"
    );
    let p0 = expect_publish(&mut q0);
    assert!(
        !p0.dup && p0.qos == QoS::AtMostOnce,
        "[MQTT-3.3.1-2] [MQTT-4.3.1-1]"
    );
    assert_eq!(p0.packet_id, None, "[MQTT-2.3.1-5]");
    // q1 never acknowledges and reconnects (on worker 1): the retransmission has DUP 1
    // and the same packet id.
    drop(q1);
    let (mut q1, present) = session(b.addr(), "q1", false);
    assert!(present);
    let re = expect_publish(&mut q1);
    assert!(re.dup, "[MQTT-3.3.1-1] [MQTT-4.4.0-1]");
    assert_eq!(re.packet_id, first.packet_id, "[MQTT-2.3.1-3]");
    q1.send(&Packet::puback(re.packet_id.unwrap()));
    q1.silent_for(QUIET);
}

#[test]
fn mqtt_3_3_1_5_to_12_retain_rules() {
    let b = broker(2);
    let mut publ = Raw::mqtt(b.addr(), "pub", true); // worker 0
    let mut live = Raw::mqtt(b.addr(), "live", true); // worker 1
    subscribe(&mut live, "rt/#", QoS::ExactlyOnce);

    // [MQTT-3.3.1-5]: a retained QoS 1 message is stored with its QoS.
    publish_acked(&mut publ, "rt/a", 1, b"one", true);
    let p = expect_publish(&mut live);
    assert!(
        !p.retain,
        "[MQTT-3.3.1-9] established subscription: RETAIN 0"
    );
    live.send(&Packet::puback(p.packet_id.unwrap()));
    // [MQTT-3.3.1-6] [MQTT-3.3.1-8]: a new subscription gets it with RETAIN 1.
    let mut s = Raw::mqtt(b.addr(), "s1", true); // worker 0
    subscribe(&mut s, "rt/+", QoS::ExactlyOnce);
    let p = expect_publish(&mut s);
    assert_eq!(
        (&p.payload[..], p.retain, p.qos),
        (&b"one"[..], true, QoS::AtLeastOnce),
        "[MQTT-3.3.1-5] [MQTT-3.3.1-6] [MQTT-3.3.1-8]"
    );
    drop(s);

    // [MQTT-3.3.1-12]: a non-retained publish neither stores nor replaces.
    publish_acked(&mut publ, "rt/a", 2, b"two", false);
    publish_acked(&mut publ, "rt/b", 3, b"not kept", false);
    for _ in 0..2 {
        let p = expect_publish(&mut live);
        live.send(&Packet::puback(p.packet_id.unwrap()));
    }
    let mut s = Raw::mqtt(b.addr(), "s2", true); // worker 1
    subscribe(&mut s, "rt/#", QoS::AtMostOnce);
    assert_eq!(
        &expect_publish(&mut s).payload[..],
        b"one",
        "[MQTT-3.3.1-12]"
    );
    s.silent_for(QUIET);
    drop(s);

    // [MQTT-3.3.1-7]: a retained QoS 0 message replaces the previous one.
    publ.send(&publish("rt/a", QoS::AtMostOnce, 0, b"three", true));
    let p = expect_publish(&mut live);
    assert!(!p.retain && &p.payload[..] == b"three", "[MQTT-3.3.1-9]");
    let mut s = Raw::mqtt(b.addr(), "s3", true); // worker 0
    subscribe(&mut s, "rt/#", QoS::AtLeastOnce);
    let p = expect_publish(&mut s);
    assert_eq!(
        (&p.payload[..], p.retain, p.qos),
        (&b"three"[..], true, QoS::AtMostOnce),
        "[MQTT-3.3.1-7]"
    );
    s.silent_for(QUIET);
    drop(s);

    // [MQTT-3.3.1-10]: an empty retained message is forwarded as usual and removes
    // the retained one; [MQTT-3.3.1-11]: it is not stored itself.
    publish_acked(&mut publ, "rt/a", 4, b"", true);
    let p = expect_publish(&mut live);
    assert!(p.payload.is_empty() && !p.retain, "[MQTT-3.3.1-10]");
    live.send(&Packet::puback(p.packet_id.unwrap()));
    for name in ["s4", "s5"] {
        // Both workers' replicas.
        let mut s = Raw::mqtt(b.addr(), name, true);
        subscribe(&mut s, "rt/#", QoS::AtMostOnce);
        s.silent_for(QUIET); // [MQTT-3.3.1-10] [MQTT-3.3.1-11]
    }
}

#[test]
fn mqtt_3_3_2_3_delivered_topic_is_the_published_name() {
    let b = broker(2);
    let mut s = Raw::mqtt(b.addr(), "s", true); // worker 0
    let codes = subscribe_id(
        &mut s,
        2,
        &[("+/b/#", QoS::AtMostOnce), ("a/+/c/d", QoS::AtMostOnce)],
    );
    assert_eq!(codes.len(), 2);
    let mut publ = Raw::mqtt(b.addr(), "pub", true); // worker 1
    for t in ["a/b", "a/b/c/d", "x/b/", "/b"] {
        publ.send(&publish(t, QoS::AtMostOnce, 0, t.as_bytes(), false));
        let p = expect_publish(&mut s);
        assert_eq!(p.topic.as_str(), t, "[MQTT-3.3.2-3]");
    }
    s.silent_for(QUIET); // one copy each ([MQTT-3.3.5-1] overlapping)
}

#[test]
fn mqtt_3_3_5_1_and_3_8_4_6_delivery_qos() {
    let b = broker(2);
    let mut s = Raw::mqtt(b.addr(), "s", true); // worker 0
    subscribe_id(
        &mut s,
        1,
        &[("q/+", QoS::AtMostOnce), ("q/#", QoS::ExactlyOnce)],
    );
    let mut low = Raw::mqtt(b.addr(), "low", true); // worker 1
    subscribe(&mut low, "q/x", QoS::AtLeastOnce);
    let mut publ = Raw::mqtt(b.addr(), "pub", true); // worker 0
    publ.send(&publish("q/x", QoS::ExactlyOnce, 1, b"2", false));
    assert_eq!(publ.recv(), Some(Packet::pubrec(pid(1))));
    publ.send(&Packet::pubrel(pid(1)));
    assert_eq!(publ.recv(), Some(Packet::pubcomp(pid(1))));
    // Overlapping subscriptions: the highest granted QoS wins.
    let p = expect_publish(&mut s);
    assert_eq!(p.qos, QoS::ExactlyOnce, "[MQTT-3.3.5-1]");
    // Granted 1, published 2: delivered at 1.
    let p = expect_publish(&mut low);
    assert_eq!(p.qos, QoS::AtLeastOnce, "[MQTT-3.8.4-6]");
    // Granted 2, published 0: delivered at 0.
    publ.send(&publish("q/y", QoS::AtMostOnce, 0, b"0", false));
    let mut got = Vec::new();
    while let Some(Packet::Publish(p)) = s.recv_within(QUIET) {
        if p.topic.as_str() == "q/y" {
            got.push(p.qos);
        }
    }
    assert!(
        !got.is_empty() && got.iter().all(|q| *q == QoS::AtMostOnce),
        "[MQTT-3.8.4-6] {got:?}"
    );
}

#[test]
fn mqtt_3_3_5_2_refused_publish_is_acknowledged_not_forwarded() {
    // ternmq refuses client publishes into $SYS (ARCHITECTURE.md): positive ack, no
    // delivery, the connection stays up.
    let b = broker(2);
    let mut s = Raw::mqtt(b.addr(), "s", true);
    subscribe(&mut s, "$SYS/#", QoS::AtLeastOnce);
    let mut publ = Raw::mqtt(b.addr(), "pub", true);
    publish_acked(&mut publ, "$SYS/fake", 1, b"x", true);
    publ.send(&publish("$SYS/fake", QoS::ExactlyOnce, 2, b"x", false));
    assert_eq!(publ.recv(), Some(Packet::pubrec(pid(2))), "[MQTT-3.3.5-2]");
    s.silent_for(QUIET);
    let mut late = Raw::mqtt(b.addr(), "late", true);
    subscribe(&mut late, "$SYS/#", QoS::AtLeastOnce);
    late.silent_for(QUIET);
}

// ---------------------------------------------------------------- 3.8 - 3.12

#[test]
fn mqtt_3_8_4_1_2_4_5_and_3_9_3_1_2_suback() {
    let b = broker(2);
    let mut s = Raw::mqtt(b.addr(), "s", true); // worker 0
    let codes = subscribe_id(
        &mut s,
        0x0102,
        &[
            ("x/+", QoS::ExactlyOnce),
            ("y/#", QoS::AtMostOnce),
            ("z", QoS::AtLeastOnce),
            ("#", QoS::AtMostOnce),
        ],
    );
    // [MQTT-3.8.4-5] one code per filter, [MQTT-3.9.3-1] in order, [MQTT-3.9.3-2]
    // only defined codes; [MQTT-3.8.3-2] wildcards are supported, so not refused.
    assert_eq!(
        codes,
        vec![
            ReasonCode::granted(QoS::ExactlyOnce),
            ReasonCode::granted(QoS::AtMostOnce),
            ReasonCode::granted(QoS::AtLeastOnce),
            ReasonCode::granted(QoS::AtMostOnce),
        ],
        "[MQTT-3.8.4-1] [MQTT-3.8.4-5] [MQTT-3.9.3-1]"
    );
    // [MQTT-3.8.4-4]: as if each filter had been subscribed alone.
    let mut publ = Raw::mqtt(b.addr(), "pub", true); // worker 1
    for (t, q) in [
        ("x/1", QoS::ExactlyOnce),
        ("y/1/2", QoS::AtMostOnce),
        ("z", QoS::AtLeastOnce),
    ] {
        publ.send(&publish(t, QoS::ExactlyOnce, 9, b"p", false));
        assert_eq!(publ.recv(), Some(Packet::pubrec(pid(9))));
        publ.send(&Packet::pubrel(pid(9)));
        assert_eq!(publ.recv(), Some(Packet::pubcomp(pid(9))));
        let p = expect_publish(&mut s);
        assert_eq!((p.topic.as_str(), p.qos), (t, q), "[MQTT-3.8.4-4]");
        match q {
            QoS::AtLeastOnce => s.send(&Packet::puback(p.packet_id.unwrap())),
            QoS::ExactlyOnce => {
                s.send(&Packet::pubrec(p.packet_id.unwrap()));
                assert_eq!(s.recv(), Some(Packet::pubrel(p.packet_id.unwrap())));
                s.send(&Packet::pubcomp(p.packet_id.unwrap()));
            }
            QoS::AtMostOnce => {}
        }
    }
}

#[test]
fn mqtt_3_8_3_4_and_3_10_3_2_malformed_subscribe_and_unsubscribe_close() {
    let b = broker(1);
    let cases: &[(&str, Vec<u8>)] = &[
        ("[MQTT-3.8.3-4] QoS 3", frame(0x82, &[0, 1, 0, 1, b'a', 3])),
        (
            "[MQTT-3.8.3-4] reserved bit 2",
            frame(0x82, &[0, 1, 0, 1, b'a', 0x04]),
        ),
        (
            "[MQTT-3.8.3-4] reserved bit 7",
            frame(0x82, &[0, 1, 0, 1, b'a', 0x81]),
        ),
        (
            "[MQTT-3.8.3-4] missing options byte",
            frame(0x82, &[0, 1, 0, 1, b'a']),
        ),
        ("[MQTT-3.8.3-3] no filter", frame(0x82, &[0, 1])),
        ("[MQTT-3.10.3-2] no filter", frame(0xA2, &[0, 1])),
        (
            "[MQTT-4.7.3-1] empty SUBSCRIBE filter",
            frame(0x82, &[0, 1, 0, 0, 0]),
        ),
        (
            "[MQTT-4.7.3-1] empty UNSUBSCRIBE filter",
            frame(0xA2, &[0, 1, 0, 0]),
        ),
    ];
    for (what, bytes) in cases {
        assert_closes_after(b.addr(), what, bytes);
    }
}

#[test]
fn mqtt_4_7_1_2_and_3_invalid_wildcards_are_never_subscribed() {
    // The server may close or answer 0x80; it must not subscribe.
    let b = broker(1);
    for filter in ["a/#/b", "a#", "#/", "a/b#", "a+", "+a/b", "a/+b", "++"] {
        let mut s = Raw::mqtt(b.addr(), "s", true);
        let mut body = vec![0, 1];
        body.extend(field(filter.as_bytes()));
        body.push(0);
        s.send_bytes(&frame(0x82, &body));
        match s.recv_within(Duration::from_secs(2)) {
            None => {} // closed (or nothing): not subscribed
            Some(Packet::SubAck(a)) => {
                assert_eq!(
                    a.codes,
                    vec![ReasonCode::UNSPECIFIED_ERROR],
                    "[MQTT-4.7.1-2] [MQTT-4.7.1-3] {filter}"
                )
            }
            other => panic!("{filter}: {other:?}"),
        }
    }
}

#[test]
fn mqtt_3_8_4_3_resubscribe_replaces_and_resends_retained() {
    let b = broker(2);
    let mut publ = Raw::mqtt(b.addr(), "pub", true); // worker 0
    publish_acked(&mut publ, "re", 1, b"kept", true);
    let mut s = Raw::mqtt(b.addr(), "s", true); // worker 1
    subscribe(&mut s, "re", QoS::ExactlyOnce);
    let p = expect_publish(&mut s);
    assert!(p.retain);
    s.send(&Packet::puback(p.packet_id.unwrap()));
    // Same filter again with QoS 0: replaces, and the retained message comes again.
    subscribe(&mut s, "re", QoS::AtMostOnce);
    let p = expect_publish(&mut s);
    assert!(p.retain && p.qos == QoS::AtMostOnce, "[MQTT-3.8.4-3] {p:?}");
    // One subscription, at the new QoS.
    publ.send(&publish("re", QoS::ExactlyOnce, 2, b"new", false));
    assert_eq!(publ.recv(), Some(Packet::pubrec(pid(2))));
    let p = expect_publish(&mut s);
    assert_eq!(
        (p.qos, &p.payload[..]),
        (QoS::AtMostOnce, &b"new"[..]),
        "[MQTT-3.8.4-3]"
    );
    s.silent_for(QUIET);
}

#[test]
fn mqtt_3_10_4_1_2_4_5_6_unsubscribe() {
    let b = broker(2);
    let mut s = Raw::mqtt(b.addr(), "s", true); // worker 0
    subscribe_id(
        &mut s,
        1,
        &[
            ("u/a", QoS::AtMostOnce),
            ("u/+", QoS::AtMostOnce),
            ("v/#", QoS::AtMostOnce),
            ("w", QoS::AtMostOnce),
        ],
    );
    let mut publ = Raw::mqtt(b.addr(), "pub", true); // worker 1
                                                     // [MQTT-3.10.4-1]: filters compare character by character, no matching: "u/a" does
                                                     // not remove "u/+" and "U/a" removes nothing.
                                                     // [MQTT-3.10.4-6]: several filters, one UNSUBACK.
    s.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(77),
        filters: ["u/a", "U/a", "v/#"]
            .iter()
            .map(|f| TopicFilter::new(*f).unwrap())
            .collect(),
        props: Default::default(),
    }));
    assert_eq!(
        s.recv(),
        Some(Packet::unsuback(pid(77))),
        "[MQTT-3.10.4-4] [MQTT-3.10.4-5]"
    );
    // [MQTT-3.10.4-5]: UNSUBACK even when nothing matched.
    s.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(78),
        filters: vec![TopicFilter::new("never").unwrap()],
        props: Default::default(),
    }));
    assert_eq!(s.recv(), Some(Packet::unsuback(pid(78))), "[MQTT-3.10.4-5]");
    // [MQTT-3.10.4-2]: "v/#" delivers nothing more; "u/+" still delivers, once.
    publ.send(&publish("v/x", QoS::AtMostOnce, 0, b"v", false));
    publ.send(&publish("u/a", QoS::AtMostOnce, 0, b"u", false));
    publ.send(&publish("w", QoS::AtMostOnce, 0, b"w", false));
    let got: Vec<String> = (0..2)
        .map(|_| expect_publish(&mut s).topic.to_string())
        .collect();
    assert_eq!(got, ["u/a", "w"], "[MQTT-3.10.4-1] [MQTT-3.10.4-2]");
    s.silent_for(QUIET);
}

#[test]
fn mqtt_3_10_4_3_in_flight_delivery_completes_after_unsubscribe() {
    let b = broker(2);
    let mut s = Raw::mqtt(b.addr(), "s", true); // worker 0
    subscribe(&mut s, "fl", QoS::ExactlyOnce);
    let mut publ = Raw::mqtt(b.addr(), "pub", true); // worker 1
    publ.send(&publish("fl", QoS::ExactlyOnce, 1, b"x", false));
    assert_eq!(publ.recv(), Some(Packet::pubrec(pid(1))));
    let p = expect_publish(&mut s);
    let id = p.packet_id.unwrap();
    s.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(2),
        filters: vec![TopicFilter::new("fl").unwrap()],
        props: Default::default(),
    }));
    assert_eq!(s.recv(), Some(Packet::unsuback(pid(2))));
    s.send(&Packet::pubrec(id));
    assert_eq!(s.recv(), Some(Packet::pubrel(id)), "[MQTT-3.10.4-3]");
    s.send(&Packet::pubcomp(id));
    s.silent_for(QUIET);
}

#[test]
fn mqtt_3_12_4_1_pingreq_gets_pingresp() {
    let b = broker(2);
    for id in ["p0", "p1"] {
        let mut c = Raw::mqtt(b.addr(), id, true);
        for _ in 0..3 {
            c.send(&Packet::PingReq);
            assert_eq!(c.recv(), Some(Packet::PingResp), "[MQTT-3.12.4-1]");
        }
    }
}

// ---------------------------------------------------------------- 4 operational

#[test]
fn mqtt_4_3_2_2_qos1_same_id_after_puback_is_a_new_message() {
    let b = broker(2);
    let mut s = Raw::mqtt(b.addr(), "s", true);
    subscribe(&mut s, "n", QoS::AtMostOnce);
    let mut publ = Raw::mqtt(b.addr(), "pub", true);
    publish_acked(&mut publ, "n", 5, b"a", false);
    publish_acked(&mut publ, "n", 5, b"b", false);
    assert_eq!(&expect_publish(&mut s).payload[..], b"a");
    assert_eq!(&expect_publish(&mut s).payload[..], b"b", "[MQTT-4.3.2-2]");
}

#[test]
fn mqtt_4_3_3_2_qos2_receiver_method_b() {
    let b = broker(2);
    let mut s = Raw::mqtt(b.addr(), "s", true); // worker 0
    subscribe(&mut s, "e", QoS::AtMostOnce);
    let mut publ = Raw::mqtt(b.addr(), "pub", true); // worker 1
    publ.send(&publish("e", QoS::ExactlyOnce, 9, b"first", false));
    assert_eq!(publ.recv(), Some(Packet::pubrec(pid(9))), "[MQTT-4.3.3-2]");
    // A retransmission before PUBREL: PUBREC again, no second delivery.
    let mut dup = publish("e", QoS::ExactlyOnce, 9, b"first", false);
    if let Packet::Publish(p) = &mut dup {
        p.dup = true;
    }
    publ.send(&dup);
    assert_eq!(publ.recv(), Some(Packet::pubrec(pid(9))), "[MQTT-4.3.3-2]");
    publ.send(&Packet::pubrel(pid(9)));
    assert_eq!(publ.recv(), Some(Packet::pubcomp(pid(9))), "[MQTT-4.3.3-2]");
    // After PUBREL the id starts a new message.
    publ.send(&publish("e", QoS::ExactlyOnce, 9, b"second", false));
    assert_eq!(publ.recv(), Some(Packet::pubrec(pid(9))));
    publ.send(&Packet::pubrel(pid(9)));
    assert_eq!(publ.recv(), Some(Packet::pubcomp(pid(9))));
    // PUBREL for an id the server does not hold still gets PUBCOMP.
    publ.send(&Packet::pubrel(pid(10)));
    assert_eq!(
        publ.recv(),
        Some(Packet::pubcomp(pid(10))),
        "[MQTT-4.3.3-2]"
    );
    assert_eq!(&expect_publish(&mut s).payload[..], b"first");
    assert_eq!(
        &expect_publish(&mut s).payload[..],
        b"second",
        "[MQTT-4.3.3-2]"
    );
    s.silent_for(QUIET);
}

#[test]
fn mqtt_4_3_3_1_and_4_4_0_1_server_qos2_flow_resends_pubrel_not_publish() {
    let b = broker(2);
    let (mut s, _) = session(b.addr(), "s", false); // worker 0
    subscribe(&mut s, "q2", QoS::ExactlyOnce);
    let mut publ = Raw::mqtt(b.addr(), "pub", true); // worker 1
    publ.send(&publish("q2", QoS::ExactlyOnce, 1, b"x", false));
    assert_eq!(publ.recv(), Some(Packet::pubrec(pid(1))));
    let p = expect_publish(&mut s);
    assert!(!p.dup && p.qos == QoS::ExactlyOnce, "[MQTT-4.3.3-1]");
    let id = p.packet_id.unwrap();
    s.send(&Packet::pubrec(id));
    assert_eq!(s.recv(), Some(Packet::pubrel(id)), "[MQTT-4.3.3-1]");
    // Lost before PUBCOMP; resume on worker 1.
    drop(s);
    let _filler = Raw::mqtt(b.addr(), "filler", true); // worker 0
    let (mut s, present) = session(b.addr(), "s", false); // worker 1
    assert!(present);
    assert_eq!(
        s.recv(),
        Some(Packet::pubrel(id)),
        "[MQTT-4.4.0-1] [MQTT-4.3.3-1] PUBREL, not PUBLISH"
    );
    s.send(&Packet::pubcomp(id));
    s.silent_for(QUIET);
}

#[test]
fn mqtt_4_6_0_message_and_acknowledgement_order() {
    let b = broker(2);
    let (mut s, _) = session(b.addr(), "s", false); // worker 0
    subscribe(&mut s, "o/#", QoS::ExactlyOnce);
    let mut publ = Raw::mqtt(b.addr(), "pub", true); // worker 1
                                                     // QoS 1 back to back: PUBACKs in order [MQTT-4.6.0-2].
    for i in 1..=10u16 {
        publ.send(&publish("o/1", QoS::AtLeastOnce, i, &[i as u8], false));
    }
    for i in 1..=10u16 {
        assert_eq!(publ.recv(), Some(Packet::puback(pid(i))), "[MQTT-4.6.0-2]");
    }
    // QoS 2 back to back: PUBRECs [MQTT-4.6.0-3], then PUBCOMPs, in order.
    for i in 11..=20u16 {
        publ.send(&publish("o/2", QoS::ExactlyOnce, i, &[i as u8], false));
    }
    for i in 11..=20u16 {
        assert_eq!(publ.recv(), Some(Packet::pubrec(pid(i))), "[MQTT-4.6.0-3]");
    }
    for i in 11..=20u16 {
        publ.send(&Packet::pubrel(pid(i)));
    }
    for i in 11..=20u16 {
        assert_eq!(publ.recv(), Some(Packet::pubcomp(pid(i))));
    }
    // Delivered per topic in the order received [MQTT-4.6.0-5] [MQTT-4.6.0-6].
    let mut ids = Vec::new();
    for i in 1..=20u8 {
        let p = expect_publish(&mut s);
        assert_eq!(p.payload[0], i, "[MQTT-4.6.0-6]");
        ids.push((p.qos, p.packet_id.unwrap()));
    }
    // Acknowledge the QoS 1 ones; PUBREC the QoS 2 ones back to back: PUBRELs in
    // that order [MQTT-4.6.0-4].
    for (q, id) in &ids {
        match q {
            QoS::AtLeastOnce => s.send(&Packet::puback(*id)),
            _ => s.send(&Packet::pubrec(*id)),
        }
    }
    for (q, id) in &ids {
        if *q == QoS::ExactlyOnce {
            assert_eq!(s.recv(), Some(Packet::pubrel(*id)), "[MQTT-4.6.0-4]");
        }
    }
    for (_, id) in ids.iter().filter(|(q, _)| *q == QoS::ExactlyOnce) {
        s.send(&Packet::pubcomp(*id));
    }
    // Unacknowledged messages are re-sent in their original order [MQTT-4.6.0-1].
    for i in 1..=5u16 {
        publ.send(&publish("o/3", QoS::AtLeastOnce, i, &[i as u8], false));
        assert_eq!(publ.recv(), Some(Packet::puback(pid(i))));
    }
    let first: Vec<Publish> = (0..5).map(|_| expect_publish(&mut s)).collect();
    drop(s);
    let (mut s, present) = session(b.addr(), "s", false); // worker 0
    assert!(present);
    for (i, orig) in first.iter().enumerate() {
        let p = expect_publish(&mut s);
        assert!(p.dup, "[MQTT-4.4.0-1]");
        assert_eq!(
            (p.packet_id, p.payload[0]),
            (orig.packet_id, i as u8 + 1),
            "[MQTT-4.6.0-1]"
        );
    }
}

#[test]
fn mqtt_4_7_2_1_wildcards_do_not_match_dollar_topics() {
    let b = broker(2);
    let mut wild = Raw::mqtt(b.addr(), "wild", true); // worker 0
    subscribe_id(
        &mut wild,
        1,
        &[
            ("#", QoS::AtMostOnce),
            ("+/x", QoS::AtMostOnce),
            ("+/+", QoS::AtMostOnce),
        ],
    );
    let mut exact = Raw::mqtt(b.addr(), "exact", true); // worker 1
    subscribe(&mut exact, "$dollar/+", QoS::AtMostOnce);
    let mut publ = Raw::mqtt(b.addr(), "pub", true); // worker 0
    publ.send(&publish("$dollar/x", QoS::AtMostOnce, 0, b"$", false));
    assert_eq!(expect_publish(&mut exact).topic.as_str(), "$dollar/x");
    publ.send(&publish("plain/x", QoS::AtMostOnce, 0, b"p", false));
    // The first (and only) thing "wild" sees is the plain topic.
    assert_eq!(
        expect_publish(&mut wild).topic.as_str(),
        "plain/x",
        "[MQTT-4.7.2-1]"
    );
    wild.silent_for(QUIET);
}

#[test]
fn mqtt_4_7_3_4_topics_are_compared_without_normalisation() {
    let b = broker(2);
    let mut s = Raw::mqtt(b.addr(), "s", true); // worker 0
                                                // "café" precomposed (U+00E9), and other near-misses.
    subscribe_id(
        &mut s,
        1,
        &[
            ("caf\u{e9}", QoS::AtMostOnce),
            ("Case", QoS::AtMostOnce),
            ("slash", QoS::AtMostOnce),
        ],
    );
    let mut publ = Raw::mqtt(b.addr(), "pub", true); // worker 1
                                                     // Decomposed "café" (e + U+0301), other case, trailing slash, full-width letter.
    for t in [
        "cafe\u{301}",
        "case",
        "CASE",
        "slash/",
        "/slash",
        "\u{ff53}lash",
    ] {
        publ.send(&publish(t, QoS::AtMostOnce, 0, b"no", false));
    }
    publ.send(&publish("caf\u{e9}", QoS::AtMostOnce, 0, b"yes", false));
    let p = expect_publish(&mut s);
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("caf\u{e9}", &b"yes"[..]),
        "[MQTT-4.7.3-4]"
    );
    s.silent_for(QUIET);
}

#[test]
fn mqtt_4_7_1_1_wildcard_in_topic_name_closes() {
    let b = broker(1);
    for t in [&b"a/+"[..], b"+", b"a/#", b"a+b"] {
        let mut body = field(t);
        body.push(b'x');
        assert_closes_after(
            b.addr(),
            "[MQTT-4.7.1-1] [MQTT-3.3.2-2]",
            &frame(0x30, &body),
        );
    }
}

#[test]
fn mqtt_4_8_0_1_packets_only_servers_send_close_the_connection() {
    let b = broker(1);
    let cases: &[(&str, Vec<u8>)] = &[
        ("CONNACK", frame(0x20, &[0, 0])),
        ("SUBACK", frame(0x90, &[0, 1, 0])),
        ("UNSUBACK", frame(0xB0, &[0, 1])),
        ("PINGRESP", frame(0xD0, &[])),
    ];
    for (what, bytes) in cases {
        assert_closes_after(b.addr(), &format!("[MQTT-4.8.0-1] {what}"), bytes);
    }
    // A valid packet still works afterwards for others.
    let mut ok = Raw::mqtt(b.addr(), "ok", true);
    ok.send(&Packet::PingReq);
    assert_eq!(ok.recv(), Some(Packet::PingResp));
}

#[test]
fn mqtt_3_2_0_1_connack_precedes_queued_messages_after_handover() {
    // The session moves between workers while messages wait in it.
    let b = broker(2);
    let (mut s, _) = session(b.addr(), "mover", false); // worker 0
    subscribe(&mut s, "mv", QoS::AtLeastOnce);
    drop(s);
    let mut publ = Raw::mqtt(b.addr(), "pub", true); // worker 1
    for i in 1..=3u16 {
        publish_acked(&mut publ, "mv", i, &[i as u8], false);
    }
    let _filler = Raw::mqtt(b.addr(), "filler", true); // worker 0
    let mut raw = Raw::connect(b.addr()); // worker 1
    raw.send(&Packet::Connect(connect_packet("mover", false)));
    match raw.recv() {
        Some(Packet::ConnAck(a)) => assert!(a.session_present, "[MQTT-3.2.0-1]"),
        other => panic!("[MQTT-3.2.0-1] first packet must be CONNACK, got {other:?}"),
    }
    for i in 1..=3u8 {
        assert_eq!(expect_publish(&mut raw).payload[0], i);
    }
}
