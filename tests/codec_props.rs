//! Property tests of the sans-IO codec: decoding never panics, and every valid packet
//! of all 14 types survives encode-then-decode unchanged.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use ternmq::protocol::frame::encode_remaining_length;
use ternmq::protocol::{
    decode_one, decode_packet, encode_packet, encode_publish, encoded_len, ConnAck, Connect,
    ConnectReturnCode, Packet, PacketId, ProtocolVersion, Publish, QoS, SubAck, SubAckCode,
    Subscribe, TopicFilter, TopicName, Unsubscribe, Will,
};

const MAX: usize = 1 << 20;

// ---- strategies ----

/// Mostly ASCII with some arbitrary Unicode; never U+0000 and never one of `banned`.
fn chr(banned: &'static [char]) -> impl Strategy<Value = char> {
    prop_oneof![
        3 => proptest::char::range('\u{1}', '\u{7F}'),
        1 => any::<char>(),
    ]
    .prop_map(move |c| {
        if c == '\0' || banned.contains(&c) {
            'x'
        } else {
            c
        }
    })
}

fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(chr(&[]), 0..max).prop_map(String::from_iter)
}

fn level() -> impl Strategy<Value = String> {
    prop::collection::vec(chr(&['/', '+', '#']), 0..6).prop_map(String::from_iter)
}

fn topic_name() -> impl Strategy<Value = TopicName> {
    prop::collection::vec(level(), 1..5).prop_map(|levels| {
        let s = levels.join("/");
        TopicName::new(if s.is_empty() { "t".to_owned() } else { s }).unwrap()
    })
}

fn topic_filter() -> impl Strategy<Value = TopicFilter> {
    let part = prop_oneof![3 => level(), 1 => Just("+".to_owned())];
    (prop::collection::vec(part, 0..5), any::<bool>()).prop_map(|(mut levels, hash)| {
        if hash {
            levels.push("#".to_owned());
        }
        let s = levels.join("/");
        TopicFilter::new(if s.is_empty() { "#".to_owned() } else { s }).unwrap()
    })
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn pid() -> impl Strategy<Value = PacketId> {
    (1u16..=u16::MAX).prop_map(|v| PacketId::new(v).unwrap())
}

fn binary(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn publish() -> impl Strategy<Value = Publish> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic_name(),
        pid(),
        binary(300),
    )
        .prop_map(|(dup, qos, retain, topic, id, payload)| {
            let qos0 = qos == QoS::AtMostOnce;
            Publish {
                dup: dup && !qos0,
                qos,
                retain,
                topic,
                packet_id: (!qos0).then_some(id),
                payload,
            }
        })
}

fn will() -> impl Strategy<Value = Will> {
    (topic_name(), binary(40), qos(), any::<bool>()).prop_map(|(topic, payload, qos, retain)| {
        Will {
            topic,
            payload,
            qos,
            retain,
        }
    })
}

fn connect() -> impl Strategy<Value = Connect> {
    (
        prop_oneof![Just(ProtocolVersion::V3_1), Just(ProtocolVersion::V3_1_1)],
        any::<bool>(),
        any::<u16>(),
        text(24),
        prop::option::of(will()),
        prop::option::of(text(12)),
        prop::option::of(binary(12)),
    )
        .prop_map(
            |(version, clean_session, keep_alive_secs, client_id, will, username, password)| {
                Connect {
                    version,
                    clean_session,
                    keep_alive_secs,
                    client_id: client_id.into(),
                    will,
                    // [MQTT-3.1.2-22]: no password without a user name.
                    password: password.filter(|_| username.is_some()),
                    username: username.map(Into::into),
                }
            },
        )
}

fn connack() -> impl Strategy<Value = ConnAck> {
    use ConnectReturnCode::*;
    let code = prop_oneof![
        Just(Accepted),
        Just(UnacceptableProtocolVersion),
        Just(IdentifierRejected),
        Just(ServerUnavailable),
        Just(BadUserNameOrPassword),
        Just(NotAuthorized)
    ];
    (any::<bool>(), code).prop_map(|(sp, code)| ConnAck {
        // [MQTT-3.2.2-4]
        session_present: sp && code == Accepted,
        code,
    })
}

fn suback_code() -> impl Strategy<Value = SubAckCode> {
    prop_oneof![
        3 => qos().prop_map(SubAckCode::Granted),
        1 => Just(SubAckCode::Failure),
    ]
}

fn packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        connect().prop_map(Packet::Connect),
        connack().prop_map(Packet::ConnAck),
        publish().prop_map(Packet::Publish),
        pid().prop_map(Packet::PubAck),
        pid().prop_map(Packet::PubRec),
        pid().prop_map(Packet::PubRel),
        pid().prop_map(Packet::PubComp),
        (pid(), prop::collection::vec((topic_filter(), qos()), 1..5))
            .prop_map(|(packet_id, filters)| Packet::Subscribe(Subscribe { packet_id, filters })),
        (pid(), prop::collection::vec(suback_code(), 0..5))
            .prop_map(|(packet_id, codes)| Packet::SubAck(SubAck { packet_id, codes })),
        (pid(), prop::collection::vec(topic_filter(), 1..5)).prop_map(|(packet_id, filters)| {
            Packet::Unsubscribe(Unsubscribe { packet_id, filters })
        }),
        pid().prop_map(Packet::UnsubAck),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        Just(Packet::Disconnect),
    ]
}

/// An edit applied to a valid encoding.
#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Xor(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), 1u8..).prop_map(|(i, b)| Mutation::Xor(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(wire: &mut Vec<u8>, m: &Mutation) {
    if wire.is_empty() {
        return;
    }
    let n = wire.len();
    match *m {
        Mutation::Set(i, b) => wire[i % n] = b,
        Mutation::Xor(i, b) => wire[i % n] ^= b,
        Mutation::Insert(i, b) => wire.insert(i % (n + 1), b),
        Mutation::Remove(i) => {
            wire.remove(i % n);
        }
        Mutation::Truncate(i) => wire.truncate(i % n),
    }
}

/// Feeds `wire` through `decode_one` until it stops; any decoded packet must re-encode
/// and decode to itself. Panics only on a real bug.
fn drain(wire: &[u8]) {
    let mut buf = BytesMut::from(wire);
    while let Ok(Some(p)) = decode_one(&mut buf, MAX) {
        assert_reencodes(&p);
    }
    let _ = decode_packet(Bytes::copy_from_slice(wire));
}

fn assert_reencodes(p: &Packet) {
    let mut out = Vec::new();
    encode_packet(p, &mut out);
    assert_eq!(out.len(), encoded_len(p));
    assert_eq!(decode_packet(Bytes::from(out)).as_ref(), Ok(p));
}

fn with_header(first: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    encode_remaining_length(body.len(), &mut v);
    v.extend_from_slice(body);
    v
}

// ---- properties ----

// 256 cases each by default; set PROPTEST_CASES for a longer run.
proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(wire in prop::collection::vec(any::<u8>(), 0..512)) {
        drain(&wire);
    }

    /// Arbitrary bodies behind a well-formed fixed header reach the per-packet parsers.
    #[test]
    fn arbitrary_bodies_never_panic(first in any::<u8>(), body in prop::collection::vec(any::<u8>(), 0..256)) {
        drain(&with_header(first, &body));
    }

    #[test]
    fn mutated_encodings_never_panic(p in packet(), ms in prop::collection::vec(mutation(), 1..4)) {
        let mut wire = Vec::new();
        encode_packet(&p, &mut wire);
        for m in &ms {
            apply(&mut wire, m);
        }
        drain(&wire);
    }

    #[test]
    fn every_packet_round_trips(p in packet()) {
        let mut wire = vec![0xEE]; // encode appends
        encode_packet(&p, &mut wire);
        prop_assert_eq!(wire.len() - 1, encoded_len(&p));
        let mut buf = BytesMut::from(&wire[1..]);
        prop_assert_eq!(decode_one(&mut buf, MAX), Ok(Some(p.clone())));
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decode_packet(Bytes::copy_from_slice(&wire[1..])), Ok(p));
    }

    #[test]
    fn encode_publish_matches_encode_packet(p in publish()) {
        let mut a = Vec::new();
        encode_publish(&mut a, p.dup, p.qos, p.retain, p.topic.as_str(), p.packet_id, &p.payload);
        let mut b = Vec::new();
        encode_packet(&Packet::Publish(p), &mut b);
        prop_assert_eq!(a, b);
    }
}

/// All 14 packet types are reachable by the generator (guards against a strategy that
/// silently stops producing one).
#[test]
fn generator_covers_all_types() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..2000 {
        let p = packet().new_tree(&mut runner).unwrap().current();
        seen.insert(p.name());
    }
    assert_eq!(seen.len(), 14, "{seen:?}");
}

#[test]
fn large_publish_round_trips() {
    // Crosses the 2-, 3- byte remaining-length boundaries.
    for size in [127, 128, 16_383, 16_384, 2_097_151, 2_097_152] {
        let p = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: TopicName::new("t").unwrap(),
            packet_id: None,
            payload: Bytes::from(vec![1u8; size - 3]),
        });
        let mut wire = Vec::new();
        encode_packet(&p, &mut wire);
        assert_eq!(wire.len(), encoded_len(&p));
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(decode_one(&mut buf, 4 << 20), Ok(Some(p)));
    }
}
