//! Property tests of the sans-IO codec: decoding never panics, and every valid packet
//! of all 14 types survives encode-then-decode unchanged.

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use proptest::prelude::*;
use ternmq::protocol::frame::encode_remaining_length;
use ternmq::protocol::properties::VARINT_MAX;
use ternmq::protocol::{
    decode_one, decode_one_v, decode_packet_v, encode_packet, encode_packet_v, encode_publish,
    encode_publish_v5, encoded_len, encoded_len_v, peek_plain_publish, take_plain_publish,
    take_short_ack, Ack, Auth, ConnAck, Connect, Disconnect, Packet, PacketId, Properties, Props,
    ProtocolVersion, Publish, PublishExtras, QoS, ReasonCode, RetainHandling, SubAck, SubOptions,
    Subscribe, TopicFilter, TopicName, UnsubAck, Unsubscribe, Will,
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

fn bs(max: usize) -> impl Strategy<Value = ByteString> {
    text(max).prop_map(ByteString::from)
}

/// Which packet a property set is for (the allow-lists of MQTT 5, 2.2.2.2).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Connect,
    Will,
    ConnAck,
    Publish,
    Ack,
    Subscribe,
    Unsubscribe,
    Disconnect,
    Auth,
}

/// A random property set, restricted to what `kind` allows.
fn props(kind: Kind) -> impl Strategy<Value = Props> {
    let a = (
        prop::option::of(0u8..=1),
        prop::option::of(any::<u32>()),
        prop::option::of(bs(8)),
        prop::option::of(topic_name()),
        prop::option::of(binary(8)),
        prop::collection::vec(1u32..=VARINT_MAX, 0..3),
        prop::option::of(any::<u32>()),
        prop::option::of(bs(8)),
    );
    let b = (
        prop::option::of(any::<u16>()),
        prop::option::of((bs(6), prop::option::of(binary(6)))),
        prop::option::of(0u8..=1),
        prop::option::of(any::<u32>()),
        prop::option::of(0u8..=1),
        prop::option::of(bs(8)),
        prop::option::of(bs(8)),
        prop::option::of(bs(8)),
    );
    let c = (
        prop::option::of(1u16..),
        prop::option::of(any::<u16>()),
        prop::option::of(1u16..),
        prop::option::of(0u8..=1),
        prop::option::of(0u8..=1),
        prop::collection::vec((bs(5), bs(5)), 0..3),
        prop::option::of(1u32..),
        prop::option::of((0u8..=1, 0u8..=1, 0u8..=1)),
    );
    (a, b, c).prop_map(move |(a, b, c)| {
        let mut p = Properties {
            payload_format_indicator: a.0,
            message_expiry_interval: a.1,
            content_type: a.2,
            response_topic: a.3.map(|t| t.as_bytestring().clone()),
            correlation_data: a.4,
            subscription_identifiers: a.5,
            session_expiry_interval: a.6,
            assigned_client_identifier: a.7,
            server_keep_alive: b.0,
            authentication_method: b.1.as_ref().map(|m| m.0.clone()),
            authentication_data: b.1.and_then(|m| m.1),
            request_problem_information: b.2,
            will_delay_interval: b.3,
            request_response_information: b.4,
            response_information: b.5,
            server_reference: b.6,
            reason_string: b.7,
            receive_maximum: c.0,
            topic_alias_maximum: c.1,
            topic_alias: c.2,
            maximum_qos: c.3,
            retain_available: c.4,
            user_properties: c.5,
            maximum_packet_size: c.6,
            wildcard_subscription_available: c.7.map(|x| x.0),
            subscription_identifier_available: c.7.map(|x| x.1),
            shared_subscription_available: c.7.map(|x| x.2),
        };
        restrict(&mut p, kind);
        Props::new(p)
    })
}

fn restrict(p: &mut Properties, kind: Kind) {
    use Kind::*;
    let publishy = matches!(kind, Publish | Will);
    if !publishy {
        p.payload_format_indicator = None;
        p.message_expiry_interval = None;
        p.content_type = None;
        p.response_topic = None;
        p.correlation_data = None;
    }
    match kind {
        Publish => {}
        Subscribe => p.subscription_identifiers.truncate(1),
        _ => p.subscription_identifiers.clear(),
    }
    if !matches!(kind, Connect | ConnAck | Disconnect) {
        p.session_expiry_interval = None;
    }
    if kind != ConnAck {
        p.assigned_client_identifier = None;
        p.server_keep_alive = None;
        p.response_information = None;
        p.maximum_qos = None;
        p.retain_available = None;
        p.wildcard_subscription_available = None;
        p.subscription_identifier_available = None;
        p.shared_subscription_available = None;
    }
    if !matches!(kind, Connect | ConnAck | Auth) {
        p.authentication_method = None;
        p.authentication_data = None;
    }
    if kind != Connect {
        p.request_problem_information = None;
        p.request_response_information = None;
    }
    if kind != Will {
        p.will_delay_interval = None;
    }
    if !matches!(kind, ConnAck | Disconnect) {
        p.server_reference = None;
    }
    if !matches!(kind, ConnAck | Ack | Disconnect | Auth) {
        p.reason_string = None;
    }
    if !matches!(kind, Connect | ConnAck) {
        p.receive_maximum = None;
        p.topic_alias_maximum = None;
        p.maximum_packet_size = None;
    }
    if kind != Publish {
        p.topic_alias = None;
    }
}

fn publish(v5: bool) -> impl Strategy<Value = Publish> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic_name(),
        pid(),
        binary(300),
        props(Kind::Publish),
        any::<bool>(),
    )
        .prop_map(
            move |(dup, qos, retain, topic, id, payload, props, alias_only)| {
                let qos0 = qos == QoS::AtMostOnce;
                let props = if v5 { props } else { Props::default() };
                let topic = if v5 && alias_only && props.topic_alias.is_some() {
                    TopicName::alias_only()
                } else {
                    topic
                };
                Publish {
                    dup: dup && !qos0,
                    qos,
                    retain,
                    topic,
                    packet_id: (!qos0).then_some(id),
                    payload,
                    props,
                }
            },
        )
}

fn will(v5: bool) -> impl Strategy<Value = Will> {
    (
        topic_name(),
        binary(40),
        qos(),
        any::<bool>(),
        props(Kind::Will),
    )
        .prop_map(move |(topic, payload, qos, retain, props)| Will {
            topic,
            payload,
            qos,
            retain,
            props: if v5 { props } else { Props::default() },
        })
}

fn connect() -> impl Strategy<Value = Connect> {
    (
        prop_oneof![
            Just(ProtocolVersion::V3_1),
            Just(ProtocolVersion::V3_1_1),
            Just(ProtocolVersion::V5)
        ],
        any::<bool>(),
        any::<u16>(),
        text(24),
        prop::option::of(will(true)),
        prop::option::of(text(12)),
        prop::option::of(binary(12)),
        props(Kind::Connect),
    )
        .prop_map(
            |(
                version,
                clean_session,
                keep_alive_secs,
                client_id,
                will,
                username,
                password,
                props,
            )| {
                let v5 = version.is_v5();
                Connect {
                    version,
                    clean_session,
                    keep_alive_secs,
                    client_id: client_id.into(),
                    will: will.map(|mut w| {
                        if !v5 {
                            w.props = Props::default();
                        }
                        w
                    }),
                    // [MQTT-3.1.2-22]: no password without a user name (3.1.1 only).
                    password: password.filter(|_| v5 || username.is_some()),
                    username: username.map(Into::into),
                    props: if v5 { props } else { Props::default() },
                }
            },
        )
}

/// A reason code the packet type allows (`v3`: what 3.1.1 can say).
fn reason(packet_type: u8, v5: bool) -> impl Strategy<Value = ReasonCode> {
    any::<u8>().prop_map(move |b| {
        let codes: Vec<u8> = (0..=255u8)
            .filter(|&c| ReasonCode(c).allowed_in(packet_type))
            .filter(|&c| v5 || matches!((packet_type, c), (9, 0 | 1 | 2 | 0x80) | (4..=7, 0)))
            .collect();
        ReasonCode(codes[usize::from(b) % codes.len()])
    })
}

fn connack(v5: bool) -> impl Strategy<Value = ConnAck> {
    let code = (0u8..=5, reason(2, true)).prop_map(move |(v3, r)| {
        if v5 {
            r
        } else {
            ReasonCode::from_v3_connack(v3).unwrap()
        }
    });
    (any::<bool>(), code, props(Kind::ConnAck)).prop_map(move |(sp, code, props)| ConnAck {
        // [MQTT-3.2.2-4]
        session_present: sp && code == ReasonCode::SUCCESS,
        code,
        props: if v5 { props } else { Props::default() },
    })
}

fn ack(packet_type: u8, v5: bool) -> impl Strategy<Value = Ack> {
    (pid(), reason(packet_type, v5), props(Kind::Ack)).prop_map(
        move |(packet_id, reason, props)| Ack {
            packet_id,
            reason,
            props: if v5 { props } else { Props::default() },
        },
    )
}

fn sub_options(v5: bool) -> impl Strategy<Value = SubOptions> {
    (qos(), any::<bool>(), any::<bool>(), 0u8..3).prop_map(move |(qos, nl, rap, rh)| {
        if !v5 {
            return SubOptions::qos(qos);
        }
        SubOptions {
            qos,
            no_local: nl,
            retain_as_published: rap,
            retain_handling: match rh {
                0 => RetainHandling::OnSubscribe,
                1 => RetainHandling::OnNewSubscription,
                _ => RetainHandling::Never,
            },
        }
    })
}

fn packet(v5: bool) -> impl Strategy<Value = Packet> {
    let p = move |k| props(k).prop_map(move |p| if v5 { p } else { Props::default() });
    let auth = if v5 {
        (reason(15, true), props(Kind::Auth))
            .prop_map(|(reason, props)| Packet::Auth(Auth { reason, props }))
            .boxed()
    } else {
        Just(Packet::PingReq).boxed()
    };
    prop_oneof![
        connect().prop_map(|c| Packet::Connect(Box::new(c))),
        connack(v5).prop_map(Packet::ConnAck),
        publish(v5).prop_map(Packet::Publish),
        ack(4, v5).prop_map(Packet::PubAck),
        ack(5, v5).prop_map(Packet::PubRec),
        ack(6, v5).prop_map(Packet::PubRel),
        ack(7, v5).prop_map(Packet::PubComp),
        (
            pid(),
            prop::collection::vec((topic_filter(), sub_options(v5)), 1..5),
            p(Kind::Subscribe)
        )
            .prop_map(|(packet_id, filters, props)| Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                props
            })),
        (
            pid(),
            prop::collection::vec(reason(9, v5), 0..5),
            p(Kind::Ack)
        )
            .prop_map(|(packet_id, codes, props)| Packet::SubAck(SubAck {
                packet_id,
                codes,
                props
            })),
        (
            pid(),
            prop::collection::vec(topic_filter(), 1..5),
            p(Kind::Unsubscribe)
        )
            .prop_map(
                |(packet_id, filters, props)| Packet::Unsubscribe(Unsubscribe {
                    packet_id,
                    filters,
                    props
                })
            ),
        (
            pid(),
            prop::collection::vec(reason(11, true), 0..5),
            p(Kind::Ack)
        )
            .prop_map(move |(packet_id, codes, props)| Packet::UnsubAck(UnsubAck {
                packet_id,
                codes: if v5 { codes } else { Vec::new() },
                props
            })),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        (reason(14, true), p(Kind::Disconnect)).prop_map(move |(reason, props)| {
            Packet::Disconnect(Disconnect {
                reason: if v5 { reason } else { ReasonCode::SUCCESS },
                props,
            })
        }),
        auth,
    ]
}

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![Just(ProtocolVersion::V3_1_1), Just(ProtocolVersion::V5)]
}

/// Every protocol level, for the fast paths (`peek_plain_publish`, `take_short_ack`),
/// which read packets whose layout is the same in 3.1 and 3.1.1.
fn any_version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![
        Just(ProtocolVersion::V3_1),
        Just(ProtocolVersion::V3_1_1),
        Just(ProtocolVersion::V5)
    ]
}

fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    version().prop_flat_map(|v| packet(v.is_v5()).prop_map(move |p| (v, p)))
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

/// Feeds `wire` through `decode_one_v` (every protocol level) until it stops; any
/// decoded packet must re-encode and decode to itself, and the fast paths must agree
/// with the decoder. Panics only on a real bug.
fn drain(wire: &[u8]) {
    for v in [
        ProtocolVersion::V3_1,
        ProtocolVersion::V3_1_1,
        ProtocolVersion::V5,
    ] {
        let mut buf = BytesMut::from(wire);
        loop {
            assert_peek_agrees(&buf, v);
            assert_short_ack_agrees(&buf, v);
            match decode_one_v(&mut buf, MAX, v) {
                Ok(Some(p)) => assert_reencodes(&p, v),
                _ => break,
            }
        }
        let _ = decode_packet_v(Bytes::copy_from_slice(wire), v);
    }
}

/// Whatever `peek_plain_publish` reads in place, the full decoder decodes from the
/// same bytes to the same fields and length; and `take_plain_publish` takes the same
/// `Publish` as the full decoder, leaving the same bytes behind.
fn assert_peek_agrees(wire: &[u8], v: ProtocolVersion) {
    let mut taken = BytesMut::from(wire);
    let take = take_plain_publish(&mut taken, MAX, v);
    let Some((p, len)) = peek_plain_publish(wire, MAX, v) else {
        assert!(take.is_none());
        assert_eq!(&taken[..], wire);
        return;
    };
    let mut decoded = BytesMut::from(wire);
    assert_eq!(
        take.map(Packet::Publish),
        decode_one_v(&mut decoded, MAX, v).ok().flatten()
    );
    assert_eq!(taken, decoded);
    let mut buf = BytesMut::from(wire);
    match decode_one_v(&mut buf, MAX, v) {
        Ok(Some(Packet::Publish(q))) => {
            assert_eq!(wire.len() - buf.len(), len);
            assert_eq!(
                (p.dup, p.qos, p.retain, p.topic, p.packet_id, p.payload),
                (
                    q.dup,
                    q.qos,
                    q.retain,
                    q.topic.as_str(),
                    q.packet_id,
                    &q.payload[..]
                )
            );
            assert!(q.props.is_empty());
        }
        other => panic!("peek read {p:?} where the decoder gives {other:?}"),
    }
}

/// Whatever `take_short_ack` takes, the full decoder decodes from the same bytes to
/// the same packet, leaving the same bytes behind; it never takes what the decoder
/// refuses or has not seen whole.
fn assert_short_ack_agrees(wire: &[u8], v: ProtocolVersion) {
    let mut taken = BytesMut::from(wire);
    let Some(fast) = take_short_ack(&mut taken, MAX) else {
        assert_eq!(&taken[..], wire);
        return;
    };
    let mut decoded = BytesMut::from(wire);
    assert_eq!(
        Some(fast),
        decode_one_v(&mut decoded, MAX, v).ok().flatten()
    );
    assert_eq!(taken, decoded);
}

fn assert_reencodes(p: &Packet, v: ProtocolVersion) {
    let mut out = Vec::new();
    encode_packet_v(p, v, &mut out);
    assert_eq!(out.len(), encoded_len_v(p, v));
    assert_eq!(decode_packet_v(Bytes::from(out), v).as_ref(), Ok(p));
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
    fn mutated_encodings_never_panic((v, p) in versioned_packet(), ms in prop::collection::vec(mutation(), 1..4)) {
        let mut wire = Vec::new();
        encode_packet_v(&p, v, &mut wire);
        for m in &ms {
            apply(&mut wire, m);
        }
        drain(&wire);
    }

    #[test]
    fn every_packet_round_trips((v, p) in versioned_packet()) {
        let mut wire = vec![0xEE]; // encode appends
        encode_packet_v(&p, v, &mut wire);
        prop_assert_eq!(wire.len() - 1, encoded_len_v(&p, v));
        let mut buf = BytesMut::from(&wire[1..]);
        prop_assert_eq!(decode_one_v(&mut buf, MAX, v), Ok(Some(p.clone())));
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decode_packet_v(Bytes::copy_from_slice(&wire[1..]), v), Ok(p));
    }

    /// A PUBLISH of the common shape (plain ASCII topic, no properties) is read in
    /// place, with the fields the full decoder gives (checked by `assert_peek_agrees`).
    #[test]
    fn plain_publishes_are_read_in_place(v in any_version(), mut p in publish(false), tail in binary(8)) {
        p.props = Props::default();
        let mut wire = Vec::new();
        encode_packet_v(&Packet::Publish(p.clone()), v, &mut wire);
        let len = wire.len();
        wire.extend_from_slice(&tail); // the next packet's first bytes
        let peeked = peek_plain_publish(&wire, MAX, v);
        if p.topic.as_str().is_ascii() {
            let (q, n) = peeked.expect("a plain PUBLISH");
            prop_assert_eq!(n, len);
            prop_assert_eq!(q.payload, &p.payload[..]);
            prop_assert_eq!(q.topic, p.topic.as_str());
        } else {
            prop_assert!(peeked.is_none());
        }
        assert_peek_agrees(&wire, v);
        // Incomplete: never read.
        prop_assert!(peek_plain_publish(&wire[..len - 1], MAX, v).is_none());
    }

    /// The MQTT 5 hot path writes what the generic encoder writes.
    #[test]
    fn encode_publish_v5_matches_encode_packet(p in publish(true)) {
        let mut a = Vec::new();
        let extras = PublishExtras { props: &p.props, ..PublishExtras::default() };
        encode_publish_v5(&mut a, p.dup, p.qos, p.retain, p.topic.as_str(), p.packet_id, &extras, &p.payload);
        let mut b = Vec::new();
        encode_packet_v(&Packet::Publish(p), ProtocolVersion::V5, &mut b);
        prop_assert_eq!(a, b);
    }

    #[test]
    fn encode_publish_matches_encode_packet(p in publish(false)) {
        let mut a = Vec::new();
        encode_publish(&mut a, p.dup, p.qos, p.retain, p.topic.as_str(), p.packet_id, &p.payload);
        let mut b = Vec::new();
        encode_packet(&Packet::Publish(p), &mut b);
        prop_assert_eq!(a, b);
    }
}

/// All 15 packet types are reachable by the generator (guards against a strategy that
/// silently stops producing one).
#[test]
fn generator_covers_all_types() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..3000 {
        let p = packet(true).new_tree(&mut runner).unwrap().current();
        seen.insert(p.name());
    }
    assert_eq!(seen.len(), 15, "{seen:?}");
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
            props: Default::default(),
        });
        let mut wire = Vec::new();
        encode_packet(&p, &mut wire);
        assert_eq!(wire.len(), encoded_len(&p));
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(decode_one(&mut buf, 4 << 20), Ok(Some(p)));
    }
}
