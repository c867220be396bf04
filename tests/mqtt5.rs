//! MQTT 5.0 end to end over loopback sockets, on two workers, driven by an independent
//! MQTT 5 client (`rumqttc::v5`) and, where rumqttc cannot express a packet (invalid
//! topic alias, AUTH method, a client that never acknowledges, a chosen DISCONNECT
//! reason code), by raw bytes built with our codec at protocol level 5.
//! Connections are dealt round-robin, so consecutive connections land on different
//! workers and cross-worker paths run.

mod common;

use bytes::Bytes;
use common::{broker, broker_with};
use rumqttc::v5::mqttbytes::v5::{
    ConnectProperties, Filter, LastWill, LastWillProperties, Packet as P5, PublishProperties,
    RetainForwardRule, SubscribeProperties, UnsubAckReason,
};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::{Client as Client5, Connection as Conn5, Event as Ev5, MqttOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use ternmq::protocol::{
    Ack, Auth, ConnAck, Connect, Disconnect, Packet, PacketId, Properties, ProtocolVersion,
    Publish, QoS, ReasonCode, SubOptions, Subscribe, TopicFilter, TopicName, Will,
};

const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------
// rumqttc v5 helpers

fn v5(addr: SocketAddr, id: &str, tweak: impl FnOnce(&mut MqttOptions)) -> (Client5, Conn5) {
    let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    tweak(&mut opts);
    Client5::new(opts, 100)
}

/// Drives `conn` until `pred` accepts an incoming packet, or panics after `wait`.
fn wait5_within(conn: &mut Conn5, wait: Duration, mut pred: impl FnMut(&P5) -> bool) -> P5 {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out waiting for a packet");
        match conn.recv_timeout(left) {
            Ok(Ok(Ev5::Incoming(p))) if pred(&p) => return p,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("connection error: {e}"),
            Err(_) => panic!("timed out waiting for a packet"),
        }
    }
}

fn wait5(conn: &mut Conn5, pred: impl FnMut(&P5) -> bool) -> P5 {
    wait5_within(conn, WAIT, pred)
}

fn connack5(conn: &mut Conn5) -> rumqttc::v5::mqttbytes::v5::ConnAck {
    match wait5(conn, |p| matches!(p, P5::ConnAck(_))) {
        P5::ConnAck(a) => a,
        _ => unreachable!(),
    }
}

fn suback5(conn: &mut Conn5) -> rumqttc::v5::mqttbytes::v5::SubAck {
    match wait5(conn, |p| matches!(p, P5::SubAck(_))) {
        P5::SubAck(a) => a,
        _ => unreachable!(),
    }
}

fn pub5(conn: &mut Conn5) -> rumqttc::v5::mqttbytes::v5::Publish {
    match wait5(conn, |p| matches!(p, P5::Publish(_))) {
        P5::Publish(p) => p,
        _ => unreachable!(),
    }
}

/// Every PUBLISH that arrives until nothing has arrived for `quiet`.
fn drain5(conn: &mut Conn5, quiet: Duration) -> Vec<rumqttc::v5::mqttbytes::v5::Publish> {
    let mut got = Vec::new();
    loop {
        match conn.recv_timeout(quiet) {
            Ok(Ok(Ev5::Incoming(P5::Publish(p)))) => got.push(p),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("connection error: {e}"),
            Err(_) => return got,
        }
    }
}

/// Asserts no PUBLISH arrives for `wait` (other traffic is fine).
fn no_publish5(conn: &mut Conn5, wait: Duration) {
    let got = drain5(conn, wait);
    assert!(got.is_empty(), "expected no PUBLISH, got {got:?}");
}

/// Publishes and drives the publisher until the QoS flow completes (PUBACK/PUBCOMP)
/// or, for QoS 0, the packet went out. Returns the PUBACK reason for QoS 1.
fn publish5(
    client: &Client5,
    conn: &mut Conn5,
    topic: &str,
    qos: Q5,
    retain: bool,
    payload: impl Into<Bytes>,
    props: Option<PublishProperties>,
) -> Option<rumqttc::v5::mqttbytes::v5::PubAckReason> {
    let payload: Bytes = payload.into();
    match props {
        Some(p) => client
            .publish_with_properties(topic, qos, retain, payload, p)
            .unwrap(),
        None => client.publish(topic, qos, retain, payload).unwrap(),
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "publish flow did not complete");
        match conn.recv_timeout(left) {
            Ok(Ok(Ev5::Outgoing(rumqttc::Outgoing::Publish(_)))) if qos == Q5::AtMostOnce => {
                return None
            }
            Ok(Ok(Ev5::Incoming(P5::PubAck(a)))) => return Some(a.reason),
            Ok(Ok(Ev5::Incoming(P5::PubComp(_)))) => return None,
            // rumqttc surfaces a failure reason code in PUBACK as a state error.
            Ok(Err(rumqttc::v5::ConnectionError::MqttState(
                rumqttc::v5::StateError::PubAckFail { reason },
            ))) => return Some(reason),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("publisher connection error: {e}"),
            Err(_) => panic!("publish flow did not complete"),
        }
    }
}

/// A connected v5 client (CONNACK consumed).
fn up5(addr: SocketAddr, id: &str, tweak: impl FnOnce(&mut MqttOptions)) -> (Client5, Conn5) {
    let (c, mut conn) = v5(addr, id, tweak);
    let ack = connack5(&mut conn);
    assert_eq!(
        ack.code,
        rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success
    );
    (c, conn)
}

fn sub5(c: &Client5, conn: &mut Conn5, filter: &str, qos: Q5) {
    c.subscribe(filter, qos).unwrap();
    let s = suback5(conn);
    assert!(
        s.return_codes.iter().all(|r| matches!(
            r,
            rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
        )),
        "SUBACK refused {filter}: {s:?}"
    );
}

/// Sends a normal DISCONNECT and drives the connection until it is on the wire.
fn disconnect5(c: &Client5, mut conn: Conn5) {
    c.disconnect().unwrap();
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match conn.recv_timeout(Duration::from_millis(500)) {
            Ok(Ok(Ev5::Outgoing(rumqttc::Outgoing::Disconnect))) => break,
            Ok(Ok(_)) => {}
            _ => break,
        }
    }
    // Let the broker read the DISCONNECT before the socket goes.
    std::thread::sleep(Duration::from_millis(50));
}

fn session_expiry(secs: u32) -> impl FnOnce(&mut MqttOptions) {
    move |o: &mut MqttOptions| {
        let mut p = ConnectProperties::new();
        p.session_expiry_interval = Some(secs);
        o.set_connect_properties(p);
    }
}

fn topic_of(p: &rumqttc::v5::mqttbytes::v5::Publish) -> String {
    String::from_utf8(p.topic.to_vec()).unwrap()
}

// ---------------------------------------------------------------------------------
// Raw MQTT 5 client (our codec at level 5)

/// The common raw client, speaking level 5.
struct Raw5(common::Raw);

impl std::ops::Deref for Raw5 {
    type Target = common::Raw;
    fn deref(&self) -> &common::Raw {
        &self.0
    }
}

impl std::ops::DerefMut for Raw5 {
    fn deref_mut(&mut self) -> &mut common::Raw {
        &mut self.0
    }
}

fn connect5(client_id: &str) -> Connect {
    Connect {
        version: ProtocolVersion::V5,
        ..*common::connect_packet(client_id, true)
    }
}

impl Raw5 {
    fn tcp(addr: SocketAddr) -> Raw5 {
        let mut raw = common::Raw::connect(addr);
        raw.version = ProtocolVersion::V5;
        Raw5(raw)
    }

    fn connect(addr: SocketAddr, c: Connect) -> (Raw5, ConnAck) {
        let mut raw = Raw5::tcp(addr);
        raw.send(&Packet::Connect(Box::new(c)));
        match raw.recv() {
            Some(Packet::ConnAck(a)) => (raw, a),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    fn up(addr: SocketAddr, id: &str, tweak: impl FnOnce(&mut Connect)) -> Raw5 {
        let mut c = connect5(id);
        tweak(&mut c);
        let (raw, ack) = Raw5::connect(addr, c);
        assert_eq!(ack.code, ReasonCode::SUCCESS);
        raw
    }

    /// Packets received until the broker closes the connection; panics if it does not
    /// close within `wait`.
    fn until_closed(&mut self, wait: Duration) -> Vec<Packet> {
        let (closed, got) = self.0.closed_within(wait);
        assert!(closed, "broker did not close; got {got:?}");
        got
    }

    fn subscribe(&mut self, filter: &str, opts: SubOptions, id: Option<u32>) {
        let mut props = Properties::default();
        props.subscription_identifiers.extend(id);
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            filters: vec![(TopicFilter::new(filter).unwrap(), opts)],
            props: props.into(),
        }));
        match self.recv() {
            Some(Packet::SubAck(s)) => assert!(s.codes.iter().all(|c| c.is_success()), "{s:?}"),
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

fn raw_publish(topic: &str, qos: QoS, id: u16, payload: &[u8], props: Properties) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: if topic.is_empty() {
            TopicName::alias_only()
        } else {
            TopicName::new(topic).unwrap()
        },
        packet_id: (qos != QoS::AtMostOnce).then(|| pid(id)),
        payload: Bytes::copy_from_slice(payload),
        props: props.into(),
    })
}

fn disconnect_reason(packets: &[Packet]) -> Option<ReasonCode> {
    packets.iter().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d.reason),
        _ => None,
    })
}

// ---------------------------------------------------------------------------------
// 1. CONNACK

// [MQTT-3.1.2-4] [MQTT-3.1.2-5] [MQTT-3.1.2-6] [MQTT-3.1.3-6] [MQTT-3.1.3-7] [MQTT-3.1.4-4] [MQTT-3.1.4-5] [MQTT-3.2.2-2] [MQTT-3.2.2-3]
#[test]
fn connack_properties_and_session_present() {
    let b = broker_with(2, |c| {
        c.max_topic_aliases = 10;
        c.max_inbound_qos2 = 33;
        c.max_packet_bytes = 50_000;
    });
    // Empty client id: the broker assigns one and tells the client (3.2.2.3.7).
    let (raw, ack) = Raw5::connect(b.addr(), connect5(""));
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    assert!(!ack.session_present);
    let assigned = ack
        .props
        .assigned_client_identifier
        .clone()
        .expect("assigned client identifier");
    assert!(!assigned.is_empty());
    assert_eq!(ack.props.topic_alias_maximum, Some(10));
    assert_eq!(ack.props.receive_maximum, Some(33));
    assert_eq!(ack.props.maximum_packet_size, Some(50_000));
    drop(raw);

    // The same, seen by rumqttc.
    let (_c, mut conn) = v5(b.addr(), "", |_| {});
    let a = connack5(&mut conn);
    let p = a.properties.expect("CONNACK properties");
    assert!(p.assigned_client_identifier.is_some_and(|s| !s.is_empty()));
    assert_eq!(p.topic_alias_max, Some(10));
    assert_eq!(p.receive_max, Some(33));
    assert_eq!(p.max_packet_size, Some(50_000));
    assert!(!a.session_present);

    // Clean start 1 with an expiry: no session present, and one survives.
    let (c, mut conn) = v5(b.addr(), "sp", session_expiry(60));
    assert!(!connack5(&mut conn).session_present);
    disconnect5(&c, conn);
    // Clean start 0: the session is found.
    let (c, mut conn) = v5(b.addr(), "sp", |o| {
        o.set_clean_start(false);
        session_expiry(60)(o);
    });
    assert!(connack5(&mut conn).session_present);
    disconnect5(&c, conn);
    // Clean start 1 discards it, whatever existed.
    let (c, mut conn) = v5(b.addr(), "sp", session_expiry(0));
    assert!(!connack5(&mut conn).session_present);
    disconnect5(&c, conn);
    // Expiry 0 on that connection: nothing left to resume.
    let (_c, mut conn) = v5(b.addr(), "sp", |o| {
        o.set_clean_start(false);
    });
    assert!(!connack5(&mut conn).session_present);
}

// ---------------------------------------------------------------------------------
// 2. Session expiry

// [MQTT-3.1.2-23] [MQTT-4.1.0-1] [MQTT-4.1.0-2] [MQTT-4.5.0-1]
#[test]
fn session_expiry_keeps_messages_then_expires() {
    let b = broker(2);
    let (publ, mut pconn) = up5(b.addr(), "pub", |_| {});

    let (c, mut conn) = up5(b.addr(), "se", session_expiry(2));
    sub5(&c, &mut conn, "se/#", Q5::AtLeastOnce);
    disconnect5(&c, conn);
    publish5(
        &publ,
        &mut pconn,
        "se/1",
        Q5::AtLeastOnce,
        false,
        "kept",
        None,
    );

    // Back within the expiry: session present and the queued message arrives.
    let (c, mut conn) = v5(b.addr(), "se", |o| {
        o.set_clean_start(false);
        session_expiry(2)(o);
    });
    assert!(connack5(&mut conn).session_present);
    let p = pub5(&mut conn);
    assert_eq!(topic_of(&p), "se/1");
    assert_eq!(&p.payload[..], b"kept");
    disconnect5(&c, conn);

    // Away longer than the expiry: the session is gone.
    std::thread::sleep(Duration::from_millis(2600));
    publish5(
        &publ,
        &mut pconn,
        "se/2",
        Q5::AtLeastOnce,
        false,
        "lost",
        None,
    );
    let (_c, mut conn) = v5(b.addr(), "se", |o| {
        o.set_clean_start(false);
    });
    assert!(!connack5(&mut conn).session_present);
    no_publish5(&mut conn, Duration::from_millis(300));

    // 0xFFFFFFFF never expires.
    let (c, mut conn) = up5(b.addr(), "forever", session_expiry(u32::MAX));
    sub5(&c, &mut conn, "fe/#", Q5::AtLeastOnce);
    disconnect5(&c, conn);
    std::thread::sleep(Duration::from_millis(2600));
    publish5(&publ, &mut pconn, "fe/1", Q5::AtLeastOnce, false, "x", None);
    let (_c, mut conn) = v5(b.addr(), "forever", |o| {
        o.set_clean_start(false);
        session_expiry(u32::MAX)(o);
    });
    assert!(connack5(&mut conn).session_present);
    assert_eq!(topic_of(&pub5(&mut conn)), "fe/1");
}

// ---------------------------------------------------------------------------------
// 3. Will delay

fn will5(topic: &str, delay: u32) -> LastWill {
    let props = LastWillProperties {
        delay_interval: Some(delay),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: vec![("w".into(), "1".into())],
    };
    LastWill::new(topic, "gone", Q5::AtLeastOnce, false, Some(props))
}

// [MQTT-3.1.2-7] [MQTT-3.1.2-8] [MQTT-3.1.2-10] [MQTT-3.1.3-9] [MQTT-3.14.4-3]
#[test]
fn will_delay_and_disconnect_with_will() {
    let b = broker(2);
    let (w, mut watch) = up5(b.addr(), "watcher", |_| {});
    sub5(&w, &mut watch, "will/#", Q5::AtLeastOnce);

    // Drops the connection, then resumes within the delay: no will.
    let (_c, mut conn) = up5(b.addr(), "back", |o| {
        o.set_last_will(will5("will/back", 2));
        session_expiry(30)(o);
    });
    no_publish5(&mut conn, Duration::from_millis(50));
    drop(conn); // TCP close without DISCONNECT
    std::thread::sleep(Duration::from_millis(500));
    let (c2, mut conn2) = v5(b.addr(), "back", |o| {
        o.set_clean_start(false);
        session_expiry(30)(o);
    });
    assert!(connack5(&mut conn2).session_present);
    no_publish5(&mut watch, Duration::from_millis(2500));

    // Gone for good: the will comes after the delay, not before.
    let (_c, conn) = up5(b.addr(), "late", |o| {
        o.set_last_will(will5("will/late", 1));
        session_expiry(30)(o);
    });
    let t0 = Instant::now();
    drop(conn);
    let p = pub5(&mut watch);
    assert_eq!(topic_of(&p), "will/late");
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "will published before its delay: {:?}",
        t0.elapsed()
    );
    assert_eq!(
        p.properties.map(|p| p.user_properties),
        Some(vec![("w".to_string(), "1".to_string())]),
        "will properties forwarded"
    );

    // DISCONNECT 0x04 publishes the will (delay 0); a normal DISCONNECT does not.
    let will = |t: &str| Will {
        topic: TopicName::new(t).unwrap(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        props: Default::default(),
    };
    let mut raw = Raw5::up(b.addr(), "w04", |c| c.will = Some(will("will/w04")));
    raw.send(&Packet::Disconnect(Disconnect {
        reason: ReasonCode::DISCONNECT_WITH_WILL,
        props: Default::default(),
    }));
    assert_eq!(topic_of(&pub5(&mut watch)), "will/w04");
    let mut raw = Raw5::up(b.addr(), "w00", |c| c.will = Some(will("will/w00")));
    raw.send(&Packet::Disconnect(Disconnect::default()));
    no_publish5(&mut watch, Duration::from_millis(500));
    drop(c2);
}

// ---------------------------------------------------------------------------------
// 4. Message expiry

fn expiry(secs: u32) -> PublishProperties {
    PublishProperties {
        message_expiry_interval: Some(secs),
        ..Default::default()
    }
}

// [MQTT-3.3.2-5] [MQTT-3.3.2-6]
#[test]
fn message_expiry_on_retained_and_queued_messages() {
    let b = broker(2);
    let (publ, mut pconn) = up5(b.addr(), "pub", |_| {});
    let (c, mut conn) = up5(b.addr(), "offline", session_expiry(60));
    sub5(&c, &mut conn, "me/q/#", Q5::AtLeastOnce);
    disconnect5(&c, conn);

    let q1 = Q5::AtLeastOnce;
    publish5(
        &publ,
        &mut pconn,
        "me/r/short",
        q1,
        true,
        "s",
        Some(expiry(1)),
    );
    publish5(
        &publ,
        &mut pconn,
        "me/r/long",
        q1,
        true,
        "l",
        Some(expiry(100)),
    );
    publish5(
        &publ,
        &mut pconn,
        "me/q/short",
        q1,
        false,
        "s",
        Some(expiry(1)),
    );
    publish5(
        &publ,
        &mut pconn,
        "me/q/long",
        q1,
        false,
        "l",
        Some(expiry(100)),
    );
    std::thread::sleep(Duration::from_millis(2100));

    // Queued: only the unexpired one, with its remaining interval.
    let (_c, mut conn) = v5(b.addr(), "offline", |o| {
        o.set_clean_start(false);
        session_expiry(60)(o);
    });
    assert!(connack5(&mut conn).session_present);
    let got = drain5(&mut conn, Duration::from_millis(500));
    assert_eq!(
        got.iter().map(topic_of).collect::<Vec<_>>(),
        vec!["me/q/long"]
    );
    let left = got[0].properties.as_ref().unwrap().message_expiry_interval;
    assert!(
        left.is_some_and(|s| (95..=99).contains(&s)),
        "remaining expiry forwarded: {left:?}"
    );

    // Retained: same.
    let (s, mut sconn) = up5(b.addr(), "late", |_| {});
    s.subscribe("me/r/#", Q5::AtLeastOnce).unwrap();
    let got = drain5(&mut sconn, Duration::from_millis(500));
    assert_eq!(
        got.iter().map(topic_of).collect::<Vec<_>>(),
        vec!["me/r/long"]
    );
    let left = got[0].properties.as_ref().unwrap().message_expiry_interval;
    assert!(left.is_some_and(|s| s <= 99), "{left:?}");
}

// ---------------------------------------------------------------------------------
// 5. Properties forwarded

// [MQTT-3.3.2-4] [MQTT-3.3.2-15] [MQTT-3.3.2-16] [MQTT-3.3.2-17] [MQTT-3.3.2-18] [MQTT-3.3.2-20] [MQTT-3.4.2-1]
#[test]
fn publish_properties_forwarded_and_payload_format_checked() {
    let b = broker(2);
    let (s, mut sconn) = up5(b.addr(), "sub", |_| {});
    sub5(&s, &mut sconn, "props/#", Q5::AtLeastOnce);
    let (publ, mut pconn) = up5(b.addr(), "pub", |_| {});
    let user = vec![
        ("b".to_string(), "2".to_string()),
        ("a".to_string(), "1".to_string()),
        ("b".to_string(), "3".to_string()),
    ];
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("text/plain".into()),
        response_topic: Some("props/reply".into()),
        correlation_data: Some(Bytes::from_static(b"\x00corr\xff")),
        user_properties: user.clone(),
        ..Default::default()
    };
    let r = publish5(
        &publ,
        &mut pconn,
        "props/req",
        Q5::AtLeastOnce,
        false,
        "héllo",
        Some(props),
    );
    assert_eq!(r, Some(rumqttc::v5::mqttbytes::v5::PubAckReason::Success));
    let p = pub5(&mut sconn);
    let got = p.properties.expect("properties forwarded");
    assert_eq!(got.user_properties, user, "user properties in order");
    assert_eq!(got.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got.response_topic.as_deref(), Some("props/reply"));
    assert_eq!(got.correlation_data.as_deref(), Some(&b"\x00corr\xff"[..]));
    assert_eq!(got.payload_format_indicator, Some(1));

    // Payload format 1 with invalid UTF-8: PUBACK 0x99, not forwarded.
    let bad = PublishProperties {
        payload_format_indicator: Some(1),
        ..Default::default()
    };
    let r = publish5(
        &publ,
        &mut pconn,
        "props/bad",
        Q5::AtLeastOnce,
        false,
        Bytes::from_static(b"\xff\xfe"),
        Some(bad),
    );
    assert_eq!(
        r,
        Some(rumqttc::v5::mqttbytes::v5::PubAckReason::PayloadFormatInvalid)
    );
    no_publish5(&mut sconn, Duration::from_millis(500));
}

// ---------------------------------------------------------------------------------
// 6. Topic aliases

// [MQTT-3.3.2-12] [MQTT-4.13.1-1]
#[test]
fn topic_aliases_inbound_and_outbound() {
    let b = broker_with(2, |c| c.max_topic_aliases = 5);
    // Outbound: a subscriber that allows aliases; rumqttc resolves them.
    let (s, mut sconn) = up5(b.addr(), "sub", |o| {
        o.set_topic_alias_max(Some(4));
    });
    sub5(&s, &mut sconn, "al/#", Q5::AtLeastOnce);

    // Inbound: set alias 3, then use it with an empty topic.
    let mut raw = Raw5::up(b.addr(), "aliaser", |_| {});
    let alias = |n: u16| Properties {
        topic_alias: Some(n),
        ..Default::default()
    };
    raw.send(&raw_publish(
        "al/long/topic",
        QoS::AtLeastOnce,
        1,
        b"one",
        alias(3),
    ));
    raw.send(&raw_publish("", QoS::AtLeastOnce, 2, b"two", alias(3)));
    raw.send(&raw_publish("", QoS::AtLeastOnce, 3, b"three", alias(3)));
    for _ in 0..3 {
        match raw.recv() {
            Some(Packet::PubAck(a)) => assert!(a.reason.is_success(), "{a:?}"),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    let got = drain5(&mut sconn, Duration::from_millis(500));
    assert_eq!(
        got.iter()
            .map(|p| (topic_of(p), p.payload.clone()))
            .collect::<Vec<_>>(),
        vec![
            ("al/long/topic".to_string(), Bytes::from_static(b"one")),
            ("al/long/topic".to_string(), Bytes::from_static(b"two")),
            ("al/long/topic".to_string(), Bytes::from_static(b"three")),
        ]
    );
    // The broker used an outbound alias (rumqttc resolved the empty topic).
    assert!(
        got.iter().all(|p| p
            .properties
            .as_ref()
            .is_some_and(|p| p.topic_alias.is_some())),
        "outbound publishes carry a topic alias: {got:?}"
    );

    // An alias above the maximum: DISCONNECT 0x94.
    raw.send(&raw_publish("al/x", QoS::AtMostOnce, 0, b"x", alias(6)));
    let got = raw.until_closed(WAIT);
    assert_eq!(
        disconnect_reason(&got),
        Some(ReasonCode::TOPIC_ALIAS_INVALID)
    );
    // A PUBLISH with only an alias that was never set: protocol error (3.3.2.3.4).
    let mut raw = Raw5::up(b.addr(), "aliaser-unset", |_| {});
    raw.send(&raw_publish("", QoS::AtMostOnce, 0, b"x", alias(2)));
    let got = raw.until_closed(WAIT);
    assert!(
        matches!(
            disconnect_reason(&got),
            Some(ReasonCode::PROTOCOL_ERROR | ReasonCode::TOPIC_ALIAS_INVALID)
        ),
        "{got:?}"
    );
    // An alias 0 ([MQTT-3.3.2-8] "not permitted"): the specification does not name
    // the code; 0x94 (Topic Alias invalid, as Mosquitto answers) and 0x82 are both
    // accepted.
    let mut raw = Raw5::up(b.addr(), "aliaser0", |_| {});
    raw.send(&raw_publish("al/x", QoS::AtMostOnce, 0, b"x", alias(0)));
    let got = raw.until_closed(WAIT);
    assert!(
        matches!(
            disconnect_reason(&got),
            Some(ReasonCode::PROTOCOL_ERROR | ReasonCode::TOPIC_ALIAS_INVALID)
        ),
        "{got:?}"
    );
}

// ---------------------------------------------------------------------------------
// 7. Subscription options and identifiers

// [MQTT-3.3.1-9] [MQTT-3.3.1-10] [MQTT-3.3.1-11] [MQTT-3.3.1-12] [MQTT-3.3.1-13] [MQTT-3.3.4-3] [MQTT-3.3.4-4] [MQTT-3.8.3-3] [MQTT-3.10.4-1] [MQTT-3.10.4-4] [MQTT-3.11.3-2]
#[test]
fn subscription_identifiers_no_local_retain_options_unsuback() {
    let b = broker(2);
    let (publ, mut pconn) = up5(b.addr(), "pub", |_| {});
    let (s, mut sconn) = up5(b.addr(), "sub", |_| {});

    // Identifiers: two overlapping subscriptions, each with its id.
    let props = |id| SubscribeProperties {
        id: Some(id),
        user_properties: vec![],
    };
    s.subscribe_with_properties("si/#", Q5::AtLeastOnce, props(7))
        .unwrap();
    suback5(&mut sconn);
    s.subscribe_with_properties("si/+/x", Q5::AtLeastOnce, props(9))
        .unwrap();
    suback5(&mut sconn);
    publish5(
        &publ,
        &mut pconn,
        "si/a/x",
        Q5::AtLeastOnce,
        false,
        "m",
        None,
    );
    let got = drain5(&mut sconn, Duration::from_millis(500));
    assert!(!got.is_empty());
    let ids: BTreeSet<usize> = got
        .iter()
        .flat_map(|p| {
            p.properties
                .clone()
                .unwrap_or_default()
                .subscription_identifiers
        })
        .collect();
    assert_eq!(ids, BTreeSet::from([7, 9]), "{got:?}");
    publish5(
        &publ,
        &mut pconn,
        "si/a/y",
        Q5::AtLeastOnce,
        false,
        "m",
        None,
    );
    let p = pub5(&mut sconn);
    assert_eq!(p.properties.unwrap().subscription_identifiers, vec![7]);

    // No local: own messages are not echoed, others' are.
    let mut f = Filter::new("nl/t", Q5::AtLeastOnce);
    f.nolocal = true;
    s.subscribe_many([f]).unwrap();
    suback5(&mut sconn);
    publish5(&s, &mut sconn, "nl/t", Q5::AtLeastOnce, false, "own", None);
    no_publish5(&mut sconn, Duration::from_millis(300));
    publish5(
        &publ,
        &mut pconn,
        "nl/t",
        Q5::AtLeastOnce,
        false,
        "other",
        None,
    );
    assert_eq!(&pub5(&mut sconn).payload[..], b"other");

    // Retain as published.
    let mut rap = Filter::new("rap/yes", Q5::AtLeastOnce);
    rap.preserve_retain = true;
    s.subscribe_many([rap, Filter::new("rap/no", Q5::AtLeastOnce)])
        .unwrap();
    suback5(&mut sconn);
    publish5(
        &publ,
        &mut pconn,
        "rap/yes",
        Q5::AtLeastOnce,
        true,
        "1",
        None,
    );
    let p = pub5(&mut sconn);
    assert!(
        p.retain,
        "retain as published keeps RETAIN on live delivery"
    );
    publish5(
        &publ,
        &mut pconn,
        "rap/no",
        Q5::AtLeastOnce,
        true,
        "1",
        None,
    );
    let p = pub5(&mut sconn);
    assert!(!p.retain, "without it RETAIN is cleared on live delivery");

    // Retain handling on a retained message.
    publish5(&publ, &mut pconn, "rh/t", Q5::AtLeastOnce, true, "r", None);
    let rh = |rule| {
        let mut f = Filter::new("rh/t", Q5::AtLeastOnce);
        f.retain_forward_rule = rule;
        f
    };
    let (c, mut conn) = up5(b.addr(), "rh0", |_| {});
    for _ in 0..2 {
        c.subscribe_many([rh(RetainForwardRule::OnEverySubscribe)])
            .unwrap();
        let p = pub5(&mut conn);
        assert!(
            p.retain && &p.payload[..] == b"r",
            "0: sent on every subscribe"
        );
    }
    let (c, mut conn) = up5(b.addr(), "rh1", |_| {});
    c.subscribe_many([rh(RetainForwardRule::OnNewSubscribe)])
        .unwrap();
    assert!(pub5(&mut conn).retain, "1: sent on a new subscription");
    c.subscribe_many([rh(RetainForwardRule::OnNewSubscribe)])
        .unwrap();
    suback5(&mut conn);
    no_publish5(&mut conn, Duration::from_millis(300));
    let (c, mut conn) = up5(b.addr(), "rh2", |_| {});
    c.subscribe_many([rh(RetainForwardRule::Never)]).unwrap();
    suback5(&mut conn);
    no_publish5(&mut conn, Duration::from_millis(300));

    // UNSUBACK: 0x11 for a filter never subscribed, success for one that was.
    // (rumqttc reports a failure reason in UNSUBACK as a state error, and then
    // reconnects: with clean start and no session expiry the session is new.)
    s.unsubscribe("never/subscribed").unwrap();
    loop {
        match sconn.recv_timeout(WAIT) {
            Ok(Err(rumqttc::v5::ConnectionError::MqttState(
                rumqttc::v5::StateError::UnsubFail { reason },
            ))) => break assert_eq!(reason, UnsubAckReason::NoSubscriptionExisted),
            Ok(Ok(Ev5::Incoming(P5::UnsubAck(u)))) => {
                break assert_eq!(u.reasons, vec![UnsubAckReason::NoSubscriptionExisted])
            }
            Ok(Ok(Ev5::Outgoing(_))) => {}
            other => panic!("expected UNSUBACK 0x11, got {other:?}"),
        }
    }
    drop((s, sconn));
    let (s, mut sconn) = up5(b.addr(), "unsub", |_| {});
    sub5(&s, &mut sconn, "nl/t", Q5::AtLeastOnce);
    s.unsubscribe("nl/t").unwrap();
    match wait5(&mut sconn, |p| matches!(p, P5::UnsubAck(_))) {
        P5::UnsubAck(u) => assert_eq!(u.reasons, vec![UnsubAckReason::Success]),
        _ => unreachable!(),
    }
}

// ---------------------------------------------------------------------------------
// 8. Receive maximum

// [MQTT-3.3.4-9] [MQTT-4.9.0-1] [MQTT-4.9.0-2]
#[test]
fn receive_maximum_bounds_unacked_publishes() {
    let b = broker(2);
    let mut raw = Raw5::up(b.addr(), "slow", |c| c.props.receive_maximum = Some(2));
    raw.subscribe("rm/#", SubOptions::qos(QoS::AtLeastOnce), None);
    let (publ, mut pconn) = up5(b.addr(), "pub", |_| {});
    for i in 0..10 {
        publish5(
            &publ,
            &mut pconn,
            &format!("rm/{i}"),
            Q5::AtLeastOnce,
            false,
            "m",
            None,
        );
    }
    let mut outstanding: Vec<PacketId> = Vec::new();
    let mut topics = Vec::new();
    loop {
        match raw.recv_within(Duration::from_millis(400)) {
            Some(Packet::Publish(p)) => {
                outstanding.push(p.packet_id.unwrap());
                topics.push(p.topic.as_str().to_string());
                assert!(
                    outstanding.len() <= 2,
                    "more than Receive Maximum unacknowledged: {topics:?}"
                );
            }
            Some(other) => panic!("unexpected {other:?}"),
            None if outstanding.len() == 2 => {
                // The window is full and nothing more comes: ack the oldest.
                let id = outstanding.remove(0);
                raw.send(&Packet::PubAck(Ack::new(id)));
            }
            None => break,
        }
        if topics.len() == 10 && outstanding.is_empty() {
            break;
        }
        if topics.len() == 10 {
            for id in outstanding.drain(..) {
                raw.send(&Packet::PubAck(Ack::new(id)));
            }
        }
    }
    assert_eq!(
        topics,
        (0..10).map(|i| format!("rm/{i}")).collect::<Vec<_>>(),
        "every message delivered in order"
    );
}

// ---------------------------------------------------------------------------------
// 9. Maximum packet size

// [MQTT-3.1.2-24] [MQTT-3.1.2-25]
#[test]
fn maximum_packet_size_of_client_is_respected() {
    let b = broker(2);
    let (s, mut sconn) = up5(b.addr(), "small", |o| {
        o.set_max_packet_size(Some(200));
    });
    sub5(&s, &mut sconn, "mps/#", Q5::AtLeastOnce);
    let (publ, mut pconn) = up5(b.addr(), "pub", |_| {});
    publish5(
        &publ,
        &mut pconn,
        "mps/a",
        Q5::AtLeastOnce,
        false,
        vec![b'a'; 100],
        None,
    );
    publish5(
        &publ,
        &mut pconn,
        "mps/b",
        Q5::AtLeastOnce,
        false,
        vec![b'b'; 1000],
        None,
    );
    publish5(
        &publ,
        &mut pconn,
        "mps/c",
        Q5::AtMostOnce,
        false,
        vec![b'c'; 1000],
        None,
    );
    publish5(
        &publ,
        &mut pconn,
        "mps/d",
        Q5::AtLeastOnce,
        false,
        vec![b'd'; 150],
        None,
    );
    let got = drain5(&mut sconn, Duration::from_millis(500));
    assert_eq!(
        got.iter().map(topic_of).collect::<Vec<_>>(),
        vec!["mps/a", "mps/d"]
    );
}

// ---------------------------------------------------------------------------------
// 10. Server DISCONNECT reason codes and AUTH

// [MQTT-3.1.2-22] [MQTT-3.1.4-2] [MQTT-3.1.4-3] [MQTT-3.2.2-6] [MQTT-3.2.2-7] [MQTT-3.2.2-8] [MQTT-3.2.2-22] [MQTT-3.14.2-1] [MQTT-3.14.4-2] [MQTT-4.12.0-1] [MQTT-4.12.0-4] [MQTT-4.13.2-1]
#[test]
fn server_disconnect_reason_codes_and_bad_auth_method() {
    let b = broker(2);
    // Takeover.
    let mut first = Raw5::up(b.addr(), "dup", |_| {});
    let _second = Raw5::up(b.addr(), "dup", |_| {});
    let got = first.until_closed(WAIT);
    assert_eq!(
        disconnect_reason(&got),
        Some(ReasonCode::SESSION_TAKEN_OVER)
    );

    // Keep-alive timeout (1 s keep alive, 1.5 s grace).
    let mut idle = Raw5::up(b.addr(), "idle", |c| c.keep_alive_secs = 1);
    let got = idle.until_closed(WAIT);
    assert_eq!(
        disconnect_reason(&got),
        Some(ReasonCode::KEEP_ALIVE_TIMEOUT)
    );

    // Protocol error: a subscription identifier in a client's PUBLISH (3.3.4).
    let mut bad = Raw5::up(b.addr(), "bad", |_| {});
    let props = Properties {
        subscription_identifiers: vec![1],
        ..Default::default()
    };
    bad.send(&raw_publish("x", QoS::AtMostOnce, 0, b"x", props));
    let got = bad.until_closed(WAIT);
    assert_eq!(disconnect_reason(&got), Some(ReasonCode::PROTOCOL_ERROR));

    // Unsupported authentication method: CONNACK 0x8C and close.
    let mut c = connect5("auth");
    c.props.authentication_method = Some("SCRAM-SHA-1".into());
    let (mut raw, ack) = Raw5::connect(b.addr(), c);
    assert_eq!(ack.code, ReasonCode::BAD_AUTHENTICATION_METHOD);
    raw.until_closed(WAIT);
    // rumqttc sees the same refusal.
    let (_c, mut conn) = v5(b.addr(), "auth2", |o| {
        o.set_authentication_method(Some("SCRAM-SHA-1".into()));
    });
    match conn.recv_timeout(WAIT) {
        Ok(Err(rumqttc::v5::ConnectionError::ConnectionRefused(code))) => assert_eq!(
            code,
            rumqttc::v5::mqttbytes::v5::ConnectReturnCode::BadAuthenticationMethod
        ),
        other => panic!("expected refusal, got {other:?}"),
    }

    // AUTH from a client that did not start enhanced authentication: protocol error.
    let mut raw = Raw5::up(b.addr(), "auth3", |_| {});
    raw.send(&Packet::Auth(Auth {
        reason: ReasonCode::CONTINUE_AUTHENTICATION,
        props: Default::default(),
    }));
    let got = raw.until_closed(WAIT);
    assert_eq!(disconnect_reason(&got), Some(ReasonCode::PROTOCOL_ERROR));
}

// ---------------------------------------------------------------------------------
// 11. Cross-version

// [MQTT-3.3.4-1] [MQTT-3.5.2-1] [MQTT-3.6.2-1] [MQTT-3.7.2-1]
#[test]
fn v311_and_v5_clients_exchange_messages_at_every_qos() {
    let b = broker(2);
    let (s5, mut s5conn) = up5(b.addr(), "sub5", |_| {});
    sub5(&s5, &mut s5conn, "xv/#", Q5::ExactlyOnce);
    let (s4, mut s4conn) = common::rumqtt(b.addr(), "sub4", true);
    common::wait_connack(&mut s4conn);
    s4.subscribe("xv/#", rumqttc::QoS::ExactlyOnce).unwrap();
    common::wait_suback(&mut s4conn);

    let (p4, mut p4conn) = common::rumqtt(b.addr(), "pub4", true);
    common::wait_connack(&mut p4conn);
    let (p5, mut p5conn) = up5(b.addr(), "pub5", |_| {});

    let q4 = [
        rumqttc::QoS::AtMostOnce,
        rumqttc::QoS::AtLeastOnce,
        rumqttc::QoS::ExactlyOnce,
    ];
    let q5 = [Q5::AtMostOnce, Q5::AtLeastOnce, Q5::ExactlyOnce];
    for i in 0..3 {
        // 3.1.1 -> 5 (and 3.1.1).
        p4.publish(format!("xv/4/{i}"), q4[i], false, vec![i as u8])
            .unwrap();
        let _ = p4conn.recv_timeout(Duration::from_millis(50));
        let p = pub5(&mut s5conn);
        assert_eq!(
            (topic_of(&p), p.qos, &p.payload[..]),
            (format!("xv/4/{i}"), q5[i], &[i as u8][..])
        );
        let p = common::next_publish(&mut s4conn);
        assert_eq!(
            (p.topic.as_str(), p.qos),
            (format!("xv/4/{i}").as_str(), q4[i])
        );
        // 5 -> 3.1.1 (and 5), with properties the 3.1.1 side cannot see.
        let props = PublishProperties {
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        };
        publish5(
            &p5,
            &mut p5conn,
            &format!("xv/5/{i}"),
            q5[i],
            false,
            vec![i as u8],
            Some(props),
        );
        let p = common::next_publish(&mut s4conn);
        assert_eq!(
            (p.topic.as_str(), p.qos, &p.payload[..]),
            (format!("xv/5/{i}").as_str(), q4[i], &[i as u8][..])
        );
        let p = pub5(&mut s5conn);
        assert_eq!(topic_of(&p), format!("xv/5/{i}"));
        assert_eq!(
            p.properties.unwrap().user_properties,
            vec![("k".to_string(), "v".to_string())]
        );
    }
}

// ---------------------------------------------------------------------------------
// 12. Shared subscriptions

/// Runs each connection on its own thread, collecting publishes until `quiet`.
fn collect_all(conns: Vec<Conn5>, quiet: Duration) -> Vec<Vec<String>> {
    let hs: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                drain5(&mut c, quiet)
                    .iter()
                    .map(|p| String::from_utf8(p.payload.to_vec()).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    hs.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn shared_subscription_spreads_messages_across_workers() {
    use ternmq::config::SharedStrategy;
    // 80 messages: with random choice a member is left out with odds ~4 * 0.75^80.
    for strategy in [SharedStrategy::RoundRobin, SharedStrategy::Random] {
        let b = broker_with(2, |c| c.shared_subscription_strategy = strategy);
        let mut clients = Vec::new();
        let mut conns = Vec::new();
        for i in 0..4 {
            // Consecutive connections alternate between the two workers.
            let (c, mut conn) = up5(b.addr(), &format!("m{i}"), |_| {});
            sub5(&c, &mut conn, "$share/g/t/#", Q5::AtLeastOnce);
            clients.push(c);
            conns.push(conn);
        }
        let (publ, mut pconn) = up5(b.addr(), "pub", |_| {});
        let n = 80;
        for i in 0..n {
            publish5(
                &publ,
                &mut pconn,
                &format!("t/{i}"),
                Q5::AtLeastOnce,
                false,
                format!("{i}"),
                None,
            );
        }
        let got = collect_all(conns, Duration::from_millis(700));
        for (i, g) in got.iter().enumerate() {
            assert!(
                !g.is_empty(),
                "{strategy:?}: member {i} got nothing: {got:?}"
            );
        }
        let mut all: Vec<u32> = got.iter().flatten().map(|s| s.parse().unwrap()).collect();
        all.sort();
        assert_eq!(
            all,
            (0..n).collect::<Vec<_>>(),
            "exactly once across the group"
        );
    }
}

#[test]
fn shared_subscription_v311_member_retained_and_two_groups() {
    let b = broker(2);
    let (publ, mut pconn) = up5(b.addr(), "pub", |_| {});
    publish5(
        &publ,
        &mut pconn,
        "sh/retained",
        Q5::AtLeastOnce,
        true,
        "r",
        None,
    );

    // A 3.1.1 member and a v5 member of group g; a v5 member alone in group h.
    let (s4, mut c4) = common::rumqtt(b.addr(), "m4", true);
    common::wait_connack(&mut c4);
    s4.subscribe("$share/g/sh/#", rumqttc::QoS::AtLeastOnce)
        .unwrap();
    common::wait_suback(&mut c4);
    let (g5, mut cg5) = up5(b.addr(), "g5", |_| {});
    sub5(&g5, &mut cg5, "$share/g/sh/#", Q5::AtLeastOnce);
    let (h5, mut ch5) = up5(b.addr(), "h5", |_| {});
    sub5(&h5, &mut ch5, "$share/h/sh/#", Q5::AtLeastOnce);
    // No retained message on a shared subscription (4.8.2).
    no_publish5(&mut cg5, Duration::from_millis(300));
    no_publish5(&mut ch5, Duration::from_millis(10));

    let n = 20;
    for i in 0..n {
        publish5(
            &publ,
            &mut pconn,
            &format!("sh/{i}"),
            Q5::AtLeastOnce,
            false,
            format!("{i}"),
            None,
        );
    }
    let h = std::thread::spawn(move || {
        let mut got = Vec::new();
        while let Ok(Ok(ev)) = c4.recv_timeout(Duration::from_millis(700)) {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = ev {
                got.push(String::from_utf8(p.payload.to_vec()).unwrap());
            }
        }
        got
    });
    let got = collect_all(vec![cg5, ch5], Duration::from_millis(700));
    let v4 = h.join().unwrap();
    assert!(!v4.is_empty(), "the 3.1.1 member gets its share");
    assert!(!got[0].is_empty(), "the v5 member gets its share");
    let mut g: Vec<u32> = v4
        .iter()
        .chain(&got[0])
        .map(|s| s.parse().unwrap())
        .collect();
    g.sort();
    assert_eq!(g, (0..n).collect::<Vec<_>>(), "group g: each message once");
    let mut hh: Vec<u32> = got[1].iter().map(|s| s.parse().unwrap()).collect();
    hh.sort();
    assert_eq!(hh, (0..n).collect::<Vec<_>>(), "group h: every message too");
    drop((s4, g5, h5));
}

#[test]
fn shared_subscription_unacked_messages_go_to_another_member() {
    let b = broker(2);
    // A member that never acknowledges, and a well-behaved one (other worker).
    let mut lazy = Raw5::up(b.addr(), "lazy", |_| {});
    lazy.subscribe("$share/g/u/#", SubOptions::qos(QoS::AtLeastOnce), None);
    let (good, mut gconn) = up5(b.addr(), "good", |_| {});
    sub5(&good, &mut gconn, "$share/g/u/#", Q5::AtLeastOnce);

    let (publ, mut pconn) = up5(b.addr(), "pub", |_| {});
    let n = 20;
    for i in 0..n {
        publish5(
            &publ,
            &mut pconn,
            &format!("u/{i}"),
            Q5::AtLeastOnce,
            false,
            format!("{i}"),
            None,
        );
    }
    let mut lazy_got = Vec::new();
    while let Some(p) = lazy.recv_within(Duration::from_millis(300)) {
        if let Packet::Publish(p) = p {
            lazy_got.push(String::from_utf8(p.payload.to_vec()).unwrap());
        }
    }
    assert!(
        !lazy_got.is_empty(),
        "round robin gave the lazy member some"
    );
    let mut good_got: Vec<String> = drain5(&mut gconn, Duration::from_millis(300))
        .iter()
        .map(|p| String::from_utf8(p.payload.to_vec()).unwrap())
        .collect();
    // The lazy member goes away without acknowledging anything.
    drop(lazy);
    good_got.extend(
        drain5(&mut gconn, Duration::from_millis(1000))
            .iter()
            .map(|p| String::from_utf8(p.payload.to_vec()).unwrap()),
    );
    let got: BTreeMap<u32, usize> = good_got.iter().fold(BTreeMap::new(), |mut m, s| {
        *m.entry(s.parse().unwrap()).or_default() += 1;
        m
    });
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        (0..n).collect::<Vec<_>>(),
        "every message reaches the remaining member (lazy had {lazy_got:?})"
    );
}

// ---------------------------------------------------------------------------------
// 13. Mosquitto's command-line clients at MQTT 5

fn mosquitto_available() -> bool {
    ["mosquitto_pub", "mosquitto_sub"]
        .iter()
        .all(|t| std::process::Command::new(t).arg("--help").output().is_ok())
}

#[test]
fn mosquitto_v5_clients_properties_and_session_expiry() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    if !mosquitto_available() {
        eprintln!("SKIPPED: mosquitto_pub/mosquitto_sub not found (apt install mosquitto-clients)");
        return;
    }
    let b = broker(2);
    let port = b.addr().port().to_string();
    let host = ["-h", "127.0.0.1", "-p", &port, "-V", "mqttv5"];
    let mpub = |args: &[&str]| {
        let out = Command::new("mosquitto_pub")
            .args(host)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "mosquitto_pub failed: {out:?}");
    };
    // A retained message first: its arrival proves mosquitto_sub's subscription.
    mpub(&["-t", "mq/ready", "-m", "ready", "-q", "1", "-r"]);
    let mut sub = Command::new("mosquitto_sub")
        .args(host)
        .args(["-t", "mq/#", "-q", "1", "-C", "3", "-W", "20"])
        .args(["-F", "%t|%p|%P|%C|%q"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "mq/ready|ready|||1");
    mpub(&[
        "-t",
        "mq/a",
        "-m",
        "hello",
        "-q",
        "1",
        "-D",
        "publish",
        "user-property",
        "k",
        "v",
        "-D",
        "publish",
        "content-type",
        "text/plain",
    ]);
    // rumqttc v5 publishes to the mosquitto subscriber with two user properties.
    let (p, mut pconn) = up5(b.addr(), "rpub", |_| {});
    let props = PublishProperties {
        user_properties: vec![("a".into(), "1".into()), ("b".into(), "2".into())],
        ..Default::default()
    };
    publish5(
        &p,
        &mut pconn,
        "mq/b",
        Q5::AtMostOnce,
        false,
        "x",
        Some(props),
    );
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(
        rest,
        vec![
            "mq/a|hello|k:v|text/plain|1".to_string(),
            "mq/b|x|a:1 b:2||0".to_string()
        ]
    );
    assert!(sub.wait().unwrap().success());

    // Session expiry with mosquitto_sub: -c (clean start 0) and an expiry interval.
    // First connection: clean start 1, expiry set with `-D connect`; the second
    // resumes with `-c` (clean start 0; mosquitto_sub then sets the expiry itself
    // from `-x`, and refuses a duplicate `-D connect session-expiry-interval`).
    let persist = |resume: bool| {
        let expiry: &[&str] = if resume {
            &["-c", "-x", "60"]
        } else {
            &["-D", "connect", "session-expiry-interval", "60"]
        };
        Command::new("mosquitto_sub")
            .args(host)
            .args([
                "-i", "mqsess", "-t", "sess/#", "-q", "1", "-C", "1", "-W", "10",
            ])
            .args(expiry)
            .args(["-F", "%t %p"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = persist(false);
    // Wait for the subscription to exist (a message while subscribed ends it).
    let (ctl, mut cconn) = up5(b.addr(), "ctl", |_| {});
    let deadline = Instant::now() + WAIT;
    loop {
        // QoS 0 probes: not queued for the session while it is offline.
        publish5(
            &ctl,
            &mut cconn,
            "sess/probe",
            Q5::AtMostOnce,
            false,
            "p",
            None,
        );
        if first.try_wait().unwrap().is_some() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sess/probe p"));
    // Offline: queued in the session that outlives the connection.
    mpub(&["-t", "sess/queued", "-m", "q", "-q", "1"]);
    let out = persist(true).wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(text, "sess/queued q\n", "the offline message was kept");
}

// [MQTT-4.13.1-1] [MQTT-4.13.2-1]
#[test]
fn server_disconnect_receive_maximum_malformed_and_shutdown() {
    let b = broker_with(2, |c| c.max_inbound_qos2 = 2);
    // More QoS 2 messages awaiting PUBREL than the Receive Maximum announced: 0x93.
    let mut raw = Raw5::up(b.addr(), "greedy", |_| {});
    for id in 1..=3 {
        raw.send(&raw_publish(
            "q2/x",
            QoS::ExactlyOnce,
            id,
            b"x",
            Properties::default(),
        ));
    }
    let got = raw.until_closed(WAIT);
    assert_eq!(
        disconnect_reason(&got),
        Some(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED),
        "{got:?}"
    );

    // Malformed: a PUBLISH whose property length runs past the packet: 0x81.
    let mut raw = Raw5::up(b.addr(), "malformed", |_| {});
    // PUBLISH QoS 0, topic "t", property length 5 but only one byte of properties.
    raw.stream
        .write_all(&[0x30, 0x05, 0x00, 0x01, b't', 0x05, 0x01])
        .unwrap();
    let got = raw.until_closed(WAIT);
    assert_eq!(
        disconnect_reason(&got),
        Some(ReasonCode::MALFORMED_PACKET),
        "{got:?}"
    );

    // A DISCONNECT that sets a session expiry when CONNECT had 0: protocol error
    // (3.14.2.2.2).
    let mut raw = Raw5::up(b.addr(), "late-expiry", |_| {});
    let props = Properties {
        session_expiry_interval: Some(30),
        ..Default::default()
    };
    raw.send(&Packet::Disconnect(Disconnect {
        reason: ReasonCode::NORMAL_DISCONNECTION,
        props: props.into(),
    }));
    let got = raw.until_closed(WAIT);
    assert_eq!(disconnect_reason(&got), Some(ReasonCode::PROTOCOL_ERROR));

    // Shutdown: every connected v5 client gets 0x8B.
    let mut a = Raw5::up(b.addr(), "a", |_| {});
    let mut c = Raw5::up(b.addr(), "c", |_| {});
    b.request_stop();
    for raw in [&mut a, &mut c] {
        let got = raw.until_closed(WAIT);
        assert_eq!(
            disconnect_reason(&got),
            Some(ReasonCode::SERVER_SHUTTING_DOWN)
        );
    }
}

// [MQTT-3.2.2-9] [MQTT-3.1.2-8]
#[test]
fn connack_advertises_capabilities_and_will_waits_for_session_expiry() {
    let b = broker(2);
    let (_c, mut conn) = v5(b.addr(), "caps", |_| {});
    let a = connack5(&mut conn);
    let p = a.properties.expect("CONNACK properties");
    // Absent means available (3.2.2.3.5, .11, .12, .13) and maximum QoS 2 (3.2.2.3.4).
    assert!(p.retain_available.unwrap_or(1) == 1);
    assert!(p.wildcard_subscription_available.unwrap_or(1) == 1);
    assert!(p.subscription_identifiers_available.unwrap_or(1) == 1);
    assert!(p.shared_subscription_available.unwrap_or(1) == 1);
    assert!(p.max_qos.is_none_or(|q| q == 2), "{:?}", p.max_qos);

    // A will delay longer than the session expiry: the will goes when the session
    // ends (3.1.3.2.2).
    let (w, mut watch) = up5(b.addr(), "watcher", |_| {});
    sub5(&w, &mut watch, "will/#", Q5::AtLeastOnce);
    let (_c, conn) = up5(b.addr(), "short", |o| {
        o.set_last_will(will5("will/short", 60));
        session_expiry(1)(o);
    });
    let t0 = Instant::now();
    drop(conn);
    let p = pub5(&mut watch);
    assert_eq!(topic_of(&p), "will/short");
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
}

// [MQTT-3.8.3-4]
#[test]
fn shared_subscription_edge_cases() {
    let b = broker_with(2, |c| {
        c.shared_subscription_strategy = ternmq::config::SharedStrategy::Sticky
    });
    let (publ, mut pconn) = up5(b.addr(), "pub", |_| {});
    // A member with a persistent session goes offline: it gets no more while away.
    let (away, mut aconn) = up5(b.addr(), "away", session_expiry(60));
    sub5(&away, &mut aconn, "$share/g/e/#", Q5::AtLeastOnce);
    let (stay, mut sconn) = up5(b.addr(), "stay", |_| {});
    sub5(&stay, &mut sconn, "$share/g/e/#", Q5::AtLeastOnce);
    disconnect5(&away, aconn);
    let n = 10;
    for i in 0..n {
        publish5(
            &publ,
            &mut pconn,
            &format!("e/{i}"),
            Q5::AtLeastOnce,
            false,
            format!("{i}"),
            None,
        );
    }
    let got: Vec<u32> = drain5(&mut sconn, Duration::from_millis(500))
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).parse().unwrap())
        .collect();
    assert_eq!(
        got,
        (0..n).collect::<Vec<_>>(),
        "the connected member gets all"
    );
    // ... and nothing was parked in the offline member's session for the group.
    let (_away, mut aconn) = v5(b.addr(), "away", |o| {
        o.set_clean_start(false);
        session_expiry(60)(o);
    });
    assert!(connack5(&mut aconn).session_present);
    no_publish5(&mut aconn, Duration::from_millis(300));

    // Sticky: with both connected, one member gets a run of messages.
    for i in 0..n {
        publish5(
            &publ,
            &mut pconn,
            &format!("e/{i}"),
            Q5::AtLeastOnce,
            false,
            format!("{i}"),
            None,
        );
    }
    let got = collect_all(vec![aconn, sconn], Duration::from_millis(500));
    let sizes: Vec<usize> = got.iter().map(Vec::len).collect();
    assert!(
        sizes == vec![n as usize, 0] || sizes == vec![0, n as usize],
        "sticky keeps one member: {got:?}"
    );

    // No Local on a shared subscription is a protocol error [MQTT-3.8.3-4].
    let mut raw = Raw5::up(b.addr(), "nolocal-shared", |_| {});
    raw.send(&Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        filters: vec![(
            TopicFilter::new("$share/g/e/#").unwrap(),
            SubOptions {
                no_local: true,
                ..SubOptions::qos(QoS::AtLeastOnce)
            },
        )],
        props: Default::default(),
    }));
    let got = raw.until_closed(WAIT);
    assert_eq!(disconnect_reason(&got), Some(ReasonCode::PROTOCOL_ERROR));
}

/// MQTT 5 4.8.2: QoS 2 on a shared subscription is completed with the member it was
/// sent to, or not at all.
#[test]
fn shared_subscription_qos2_sent_to_a_member_stays_with_it() {
    let b = broker(2);
    let mut lazy = Raw5::up(b.addr(), "lazy", |_| {});
    lazy.subscribe("$share/g/q2/#", SubOptions::qos(QoS::ExactlyOnce), None);
    let (good, mut gconn) = up5(b.addr(), "good", |_| {});
    sub5(&good, &mut gconn, "$share/g/q2/#", Q5::ExactlyOnce);
    let (publ, mut pconn) = up5(b.addr(), "pub", |_| {});
    let n = 6;
    for i in 0..n {
        publish5(
            &publ,
            &mut pconn,
            &format!("q2/{i}"),
            Q5::ExactlyOnce,
            false,
            format!("{i}"),
            None,
        );
    }
    let mut lazy_got = Vec::new();
    while let Some(p) = lazy.recv_within(Duration::from_millis(300)) {
        if let Packet::Publish(p) = p {
            lazy_got.push(String::from_utf8_lossy(&p.payload).parse::<u32>().unwrap());
        }
    }
    assert!(!lazy_got.is_empty());
    let mut got: Vec<u32> = drain5(&mut gconn, Duration::from_millis(300))
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).parse().unwrap())
        .collect();
    drop(lazy);
    got.extend(
        drain5(&mut gconn, Duration::from_millis(1000))
            .iter()
            .map(|p| String::from_utf8_lossy(&p.payload).parse::<u32>().unwrap()),
    );
    got.sort();
    // QoS 2 messages already sent to a member are not given to another one when its
    // session ends [MQTT-4.8.2-5] (unlike QoS 1): the other member has exactly the rest.
    let rest: Vec<u32> = (0..n).filter(|i| !lazy_got.contains(i)).collect();
    assert_eq!(got, rest, "lazy had {lazy_got:?}");
}

// [MQTT-3.1.2-29] [MQTT-3.4.2-1]
#[test]
fn request_problem_information_zero_suppresses_reason_strings() {
    let b = broker(2);
    // With problem information refused, a failed PUBACK carries no reason string
    // (3.1.2.11.7).
    let mut raw = Raw5::up(b.addr(), "quiet", |c| {
        c.props.request_problem_information = Some(0)
    });
    let props = Properties {
        payload_format_indicator: Some(1),
        ..Default::default()
    };
    raw.send(&raw_publish(
        "rp/x",
        QoS::AtLeastOnce,
        1,
        b"\xff",
        props.clone(),
    ));
    match raw.recv() {
        Some(Packet::PubAck(a)) => {
            assert_eq!(a.reason, ReasonCode::PAYLOAD_FORMAT_INVALID);
            assert_eq!(a.props.reason_string, None);
        }
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let mut raw = Raw5::up(b.addr(), "chatty", |_| {});
    raw.send(&raw_publish("rp/x", QoS::AtLeastOnce, 1, b"\xff", props));
    match raw.recv() {
        Some(Packet::PubAck(a)) => assert_eq!(a.reason, ReasonCode::PAYLOAD_FORMAT_INVALID),
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

#[test]
fn retained_message_keeps_its_properties_and_expiry_reaches_v311_queue() {
    let b = broker(2);
    let (publ, mut pconn) = up5(b.addr(), "pub", |_| {});
    let props = PublishProperties {
        user_properties: vec![("k".into(), "v".into())],
        content_type: Some("ct".into()),
        ..Default::default()
    };
    publish5(
        &publ,
        &mut pconn,
        "rk/t",
        Q5::AtLeastOnce,
        true,
        "r",
        Some(props),
    );
    let (s, mut sconn) = up5(b.addr(), "sub", |_| {});
    s.subscribe("rk/#", Q5::AtLeastOnce).unwrap();
    let p = pub5(&mut sconn);
    assert!(p.retain);
    let pp = p.properties.expect("retained properties");
    assert_eq!(pp.user_properties, vec![("k".to_string(), "v".to_string())]);
    assert_eq!(pp.content_type.as_deref(), Some("ct"));

    // A 3.1.1 offline session: an expired v5 message is not delivered to it either.
    let (s4, mut c4) = common::rumqtt(b.addr(), "old", false);
    common::wait_connack(&mut c4);
    s4.subscribe("ex4/#", rumqttc::QoS::AtLeastOnce).unwrap();
    common::wait_suback(&mut c4);
    s4.disconnect().unwrap();
    let _ = c4.recv_timeout(Duration::from_millis(200));
    drop(c4);
    std::thread::sleep(Duration::from_millis(100));
    publish5(
        &publ,
        &mut pconn,
        "ex4/short",
        Q5::AtLeastOnce,
        false,
        "s",
        Some(expiry(1)),
    );
    publish5(
        &publ,
        &mut pconn,
        "ex4/long",
        Q5::AtLeastOnce,
        false,
        "l",
        Some(expiry(60)),
    );
    std::thread::sleep(Duration::from_millis(2100));
    let (_s4, mut c4) = common::rumqtt(b.addr(), "old", false);
    assert!(common::wait_connack(&mut c4));
    let p = common::next_publish(&mut c4);
    assert_eq!(p.topic, "ex4/long");
}

#[test]
fn outbound_aliases_reset_per_connection_and_survive_more_topics_than_aliases() {
    let b = broker(2);
    let (publ, mut pconn) = up5(b.addr(), "pub", |_| {});
    let opts = |o: &mut MqttOptions| {
        o.set_topic_alias_max(Some(2));
        o.set_clean_start(false);
        session_expiry(60)(o);
    };
    let (s, mut sconn) = up5(b.addr(), "aliased", opts);
    sub5(&s, &mut sconn, "ao/#", Q5::AtLeastOnce);
    // Five topics through two aliases, twice round.
    let topics: Vec<String> = (0..5).map(|i| format!("ao/{i}")).collect();
    for round in 0..2 {
        for t in &topics {
            publish5(
                &publ,
                &mut pconn,
                t,
                Q5::AtLeastOnce,
                false,
                format!("{round}"),
                None,
            );
        }
    }
    let got: Vec<String> = drain5(&mut sconn, Duration::from_millis(500))
        .iter()
        .map(topic_of)
        .collect();
    let want: Vec<String> = topics.iter().chain(&topics).cloned().collect();
    assert_eq!(got, want);
    // A new connection starts with no aliases [MQTT-3.3.2-7]: the first publish on a
    // topic seen before must carry the topic name again (rumqttc fails otherwise).
    disconnect5(&s, sconn);
    let (_s, mut sconn) = up5(b.addr(), "aliased", opts);
    publish5(
        &publ,
        &mut pconn,
        "ao/0",
        Q5::AtLeastOnce,
        false,
        "again",
        None,
    );
    let p = pub5(&mut sconn);
    assert_eq!(topic_of(&p), "ao/0");
    assert_eq!(&p.payload[..], b"again");
}

#[test]
fn will_on_takeover_follows_clean_start_of_the_new_connection() {
    let b = broker(2);
    let (w, mut watch) = up5(b.addr(), "watcher", |_| {});
    sub5(&w, &mut watch, "will/#", Q5::AtLeastOnce);
    // Taken over by a connection that resumes the session: no will (delay 5 s).
    let mut old = Raw5::up(b.addr(), "tk", |c| {
        c.props.session_expiry_interval = Some(60);
        c.will = Some(Will {
            topic: TopicName::new("will/tk").unwrap(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            props: Properties {
                will_delay_interval: Some(5),
                ..Default::default()
            }
            .into(),
        });
    });
    let _new = Raw5::up(b.addr(), "tk", |c| {
        c.clean_session = false;
        c.props.session_expiry_interval = Some(60);
    });
    let got = old.until_closed(WAIT);
    assert_eq!(
        disconnect_reason(&got),
        Some(ReasonCode::SESSION_TAKEN_OVER)
    );
    no_publish5(&mut watch, Duration::from_millis(500));
    // Taken over with clean start 1: the old session ends, its will goes at once
    // (3.1.2.5: published when the session ends before the delay). Consecutive
    // connections alternate workers: without a spacer the takeover crosses workers
    // (the `on_takeover` path), with one it stays on the same worker (`activate`).
    for (id, spacer) in [("tk2", false), ("tk3", true)] {
        let mut old = Raw5::up(b.addr(), id, |c| {
            c.props.session_expiry_interval = Some(60);
            c.will = Some(Will {
                topic: TopicName::new(format!("will/{id}")).unwrap(),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtLeastOnce,
                retain: false,
                props: Properties {
                    will_delay_interval: Some(30),
                    ..Default::default()
                }
                .into(),
            });
        });
        let _spacer = spacer.then(|| Raw5::up(b.addr(), &format!("{id}-spacer"), |_| {}));
        let _new = Raw5::up(b.addr(), id, |_| {});
        old.until_closed(WAIT);
        assert_eq!(topic_of(&pub5(&mut watch)), format!("will/{id}"));
    }
}

// [MQTT-3.3.4-9] [MQTT-4.9.0-2]
#[test]
fn receive_maximum_counts_qos2_until_pubcomp() {
    let b = broker(2);
    let mut raw = Raw5::up(b.addr(), "q2slow", |c| c.props.receive_maximum = Some(1));
    raw.subscribe("rq/#", SubOptions::qos(QoS::ExactlyOnce), None);
    let (publ, mut pconn) = up5(b.addr(), "pub", |_| {});
    for i in 0..3 {
        publish5(
            &publ,
            &mut pconn,
            &format!("rq/{i}"),
            Q5::ExactlyOnce,
            false,
            "m",
            None,
        );
    }
    for i in 0..3 {
        let id = match raw.recv() {
            Some(Packet::Publish(p)) => {
                assert_eq!(p.topic.as_str(), format!("rq/{i}"));
                p.packet_id.unwrap()
            }
            other => panic!("expected PUBLISH rq/{i}, got {other:?}"),
        };
        // Still in flight after PUBREC: nothing more until PUBCOMP (4.9).
        assert!(raw.recv_within(Duration::from_millis(300)).is_none());
        raw.send(&Packet::PubRec(Ack::new(id)));
        match raw.recv() {
            Some(Packet::PubRel(a)) => assert_eq!(a.packet_id, id),
            other => panic!("expected PUBREL, got {other:?}"),
        }
        assert!(raw.recv_within(Duration::from_millis(300)).is_none());
        raw.send(&Packet::PubComp(Ack::new(id)));
    }
}

#[test]
fn shared_subscription_identifier_and_disconnect_expiry_change() {
    let b = broker(2);
    let (s, mut sconn) = up5(b.addr(), "member", |_| {});
    s.subscribe_with_properties(
        "$share/g/sid/#",
        Q5::AtLeastOnce,
        SubscribeProperties {
            id: Some(42),
            user_properties: vec![],
        },
    )
    .unwrap();
    suback5(&mut sconn);
    let (publ, mut pconn) = up5(b.addr(), "pub", |_| {});
    publish5(
        &publ,
        &mut pconn,
        "sid/x",
        Q5::AtLeastOnce,
        false,
        "m",
        None,
    );
    let p = pub5(&mut sconn);
    assert_eq!(p.properties.unwrap().subscription_identifiers, vec![42]);

    // A DISCONNECT setting the expiry to 0 ends a session that had 60 (3.14.2.2.2).
    let mut raw = Raw5::up(b.addr(), "shorten", |c| {
        c.props.session_expiry_interval = Some(60)
    });
    raw.subscribe("sh0/#", SubOptions::qos(QoS::AtLeastOnce), None);
    raw.send(&Packet::Disconnect(Disconnect {
        reason: ReasonCode::NORMAL_DISCONNECTION,
        props: Properties {
            session_expiry_interval: Some(0),
            ..Default::default()
        }
        .into(),
    }));
    raw.until_closed(WAIT);
    let (_raw, ack) = Raw5::connect(
        b.addr(),
        Connect {
            clean_session: false,
            ..connect5("shorten")
        },
    );
    assert!(!ack.session_present, "session ended with the connection");
}

// [MQTT-3.1.2-24] [MQTT-3.1.2-25] [MQTT-3.3.2-6]
#[test]
fn packet_size_counts_properties_expiry_ticks_on_resend_alias_retains_real_topic() {
    let b = broker(2);
    // Maximum packet size 200: a small payload with large user properties is too big.
    let mut small = Raw5::up(b.addr(), "small", |c| {
        c.props.maximum_packet_size = Some(200)
    });
    small.subscribe("pp/#", SubOptions::qos(QoS::AtLeastOnce), None);
    let mut publ = Raw5::up(b.addr(), "pub", |_| {});
    let big_props = Properties {
        user_properties: vec![("k".into(), "v".repeat(300).into())],
        ..Default::default()
    };
    publ.send(&raw_publish("pp/big", QoS::AtLeastOnce, 1, b"x", big_props));
    publ.send(&raw_publish(
        "pp/ok",
        QoS::AtLeastOnce,
        2,
        b"x",
        Properties::default(),
    ));
    for _ in 0..2 {
        assert!(matches!(publ.recv(), Some(Packet::PubAck(_))));
    }
    match small.recv() {
        Some(Packet::Publish(p)) => assert_eq!(p.topic.as_str(), "pp/ok"),
        other => panic!("expected pp/ok, got {other:?}"),
    }
    assert!(small.recv_within(Duration::from_millis(300)).is_none());

    // An in-flight message resent after reconnect carries a smaller remaining expiry.
    let mut s = Raw5::up(b.addr(), "resend", |c| {
        c.props.session_expiry_interval = Some(60)
    });
    s.subscribe("rs/#", SubOptions::qos(QoS::AtLeastOnce), None);
    let props = Properties {
        message_expiry_interval: Some(30),
        ..Default::default()
    };
    publ.send(&raw_publish("rs/x", QoS::AtLeastOnce, 3, b"x", props));
    assert!(matches!(publ.recv(), Some(Packet::PubAck(_))));
    let first = match s.recv() {
        Some(Packet::Publish(p)) => p.props.message_expiry_interval.unwrap(),
        other => panic!("expected PUBLISH, got {other:?}"),
    };
    drop(s); // not acknowledged
    std::thread::sleep(Duration::from_millis(1100));
    let (mut s, ack) = Raw5::connect(
        b.addr(),
        Connect {
            clean_session: false,
            props: Properties {
                session_expiry_interval: Some(60),
                ..Default::default()
            }
            .into(),
            ..connect5("resend")
        },
    );
    assert!(ack.session_present);
    match s.recv() {
        Some(Packet::Publish(p)) => {
            assert!(p.dup, "resent with DUP");
            let left = p.props.message_expiry_interval.unwrap();
            assert!(left < first, "remaining expiry {left} after {first}");
        }
        other => panic!("expected resent PUBLISH, got {other:?}"),
    }

    // A retained PUBLISH sent by alias is stored under its topic.
    let alias = Properties {
        topic_alias: Some(1),
        ..Default::default()
    };
    publ.send(&raw_publish(
        "ra/t",
        QoS::AtMostOnce,
        0,
        b"set",
        alias.clone(),
    ));
    let mut p = raw_publish("", QoS::AtMostOnce, 0, b"kept", alias);
    if let Packet::Publish(p) = &mut p {
        p.retain = true;
    }
    publ.send(&p);
    let (c, mut conn) = up5(b.addr(), "ra-sub", |_| {});
    c.subscribe("ra/#", Q5::AtMostOnce).unwrap();
    let p = pub5(&mut conn);
    assert_eq!(
        (topic_of(&p).as_str(), &p.payload[..]),
        ("ra/t", &b"kept"[..])
    );
}

// [MQTT-4.8.2-1] [MQTT-4.8.2-2] [MQTT-3.9.3-2]
#[test]
fn invalid_shared_filters_and_subscription_identifier_zero() {
    let b = broker(2);
    // Malformed share names get SUBACK 0x8F (Topic Filter invalid) (4.8.2).
    for filter in ["$share/g", "$share//t", "$share/g+/t", "$share/g#/t"] {
        let Ok(f) = TopicFilter::new(filter) else {
            continue; // rejected as a filter already by the codec
        };
        let mut raw = Raw5::up(b.addr(), "badshare", |_| {});
        raw.send(&Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            filters: vec![(f, SubOptions::qos(QoS::AtLeastOnce))],
            props: Default::default(),
        }));
        match raw.recv() {
            Some(Packet::SubAck(s)) => {
                assert_eq!(s.codes, vec![ReasonCode::TOPIC_FILTER_INVALID], "{filter}")
            }
            Some(Packet::Disconnect(d)) => {
                assert_eq!(d.reason, ReasonCode::PROTOCOL_ERROR, "{filter}")
            }
            other => panic!("{filter}: expected SUBACK 0x8F, got {other:?}"),
        }
    }
    // Subscription identifier 0 in SUBSCRIBE is a protocol error (3.8.2.1.2).
    let mut raw = Raw5::up(b.addr(), "sid0", |_| {});
    // (Raw bytes: our encoder refuses to write identifier 0.) SUBSCRIBE id 1,
    // properties [0x0B 0x00], filter "a" at QoS 1.
    raw.stream
        .write_all(&[
            0x82, 0x09, 0x00, 0x01, 0x02, 0x0B, 0x00, 0x00, 0x01, b'a', 0x01,
        ])
        .unwrap();
    let got = raw.until_closed(WAIT);
    assert!(
        matches!(
            disconnect_reason(&got),
            Some(ReasonCode::PROTOCOL_ERROR | ReasonCode::MALFORMED_PACKET)
        ),
        "{got:?}"
    );

    // A v5 will with properties reaches a 3.1.1 subscriber as a plain message.
    let (s4, mut c4) = common::rumqtt(b.addr(), "old", true);
    common::wait_connack(&mut c4);
    s4.subscribe("will/#", rumqttc::QoS::AtLeastOnce).unwrap();
    common::wait_suback(&mut c4);
    let (_c, conn) = up5(b.addr(), "dies", |o| {
        o.set_last_will(will5("will/dies", 0));
    });
    drop(conn);
    let p = common::next_publish(&mut c4);
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("will/dies", &b"gone"[..])
    );
}

#[test]
fn inbound_aliases_do_not_survive_reconnect_and_sessions_cross_versions() {
    let b = broker(2);
    let alias = Properties {
        topic_alias: Some(1),
        ..Default::default()
    };
    let mut raw = Raw5::up(b.addr(), "re-alias", |c| {
        c.props.session_expiry_interval = Some(60)
    });
    raw.send(&raw_publish(
        "ia/t",
        QoS::AtMostOnce,
        0,
        b"x",
        alias.clone(),
    ));
    raw.send(&Packet::Disconnect(Disconnect::default()));
    raw.until_closed(WAIT);
    let mut raw = Raw5::up(b.addr(), "re-alias", |c| {
        c.clean_session = false;
        c.props.session_expiry_interval = Some(60)
    });
    // [MQTT-3.3.2-7]: alias mappings end with the network connection.
    raw.send(&raw_publish("", QoS::AtMostOnce, 0, b"x", alias));
    let got = raw.until_closed(WAIT);
    assert!(
        matches!(
            disconnect_reason(&got),
            Some(ReasonCode::PROTOCOL_ERROR | ReasonCode::TOPIC_ALIAS_INVALID)
        ),
        "{got:?}"
    );

    // A 3.1.1 persistent session resumed by the same client id at MQTT 5, and back.
    let (publ, mut pconn) = up5(b.addr(), "pub", |_| {});
    let (s4, mut c4) = common::rumqtt(b.addr(), "both", false);
    common::wait_connack(&mut c4);
    s4.subscribe("cv/#", rumqttc::QoS::AtLeastOnce).unwrap();
    common::wait_suback(&mut c4);
    s4.disconnect().unwrap();
    let _ = c4.recv_timeout(Duration::from_millis(200));
    drop(c4);
    std::thread::sleep(Duration::from_millis(100));
    publish5(
        &publ,
        &mut pconn,
        "cv/1",
        Q5::AtLeastOnce,
        false,
        "to5",
        None,
    );
    let (c5, mut conn5) = v5(b.addr(), "both", |o| {
        o.set_clean_start(false);
        session_expiry(60)(o);
    });
    assert!(connack5(&mut conn5).session_present);
    assert_eq!(topic_of(&pub5(&mut conn5)), "cv/1");
    disconnect5(&c5, conn5);
    publish5(
        &publ,
        &mut pconn,
        "cv/2",
        Q5::AtLeastOnce,
        false,
        "to4",
        None,
    );
    let (_s4, mut c4) = common::rumqtt(b.addr(), "both", false);
    assert!(common::wait_connack(&mut c4));
    assert_eq!(common::next_publish(&mut c4).topic, "cv/2");
}

#[test]
fn receive_maximum_applies_to_resent_messages_after_reconnect() {
    let b = broker(2);
    let connect = |recv_max: u16, clean: bool| {
        move |c: &mut Connect| {
            c.clean_session = clean;
            c.props.session_expiry_interval = Some(60);
            c.props.receive_maximum = Some(recv_max);
        }
    };
    let mut raw = Raw5::up(b.addr(), "rmr", connect(5, true));
    raw.subscribe("rmr/#", SubOptions::qos(QoS::AtLeastOnce), None);
    let (publ, mut pconn) = up5(b.addr(), "pub", |_| {});
    for i in 0..6 {
        publish5(
            &publ,
            &mut pconn,
            &format!("rmr/{i}"),
            Q5::AtLeastOnce,
            false,
            "m",
            None,
        );
    }
    let mut n = 0;
    while let Some(Packet::Publish(_)) = raw.recv_within(Duration::from_millis(300)) {
        n += 1;
    }
    assert_eq!(n, 5, "window of 5");
    drop(raw);
    // Back with a window of 2: only two outstanding, even for resends [MQTT-3.3.4-9];
    // the held ones follow, with DUP and their original ids, as acks free the window.
    let mut raw = Raw5::up(b.addr(), "rmr", connect(2, false));
    let mut seen = Vec::new();
    let mut outstanding = Vec::new();
    loop {
        match raw.recv_within(Duration::from_millis(400)) {
            Some(Packet::Publish(p)) => {
                seen.push((p.topic.as_str().to_string(), p.dup));
                outstanding.push(p.packet_id.unwrap());
                assert!(outstanding.len() <= 2, "window exceeded: {seen:?}");
            }
            Some(other) => panic!("unexpected {other:?}"),
            None if !outstanding.is_empty() => {
                let id = outstanding.remove(0);
                raw.send(&Packet::PubAck(Ack::new(id)));
            }
            None => break,
        }
    }
    let want: Vec<(String, bool)> = (0..6).map(|i| (format!("rmr/{i}"), i < 5)).collect();
    assert_eq!(seen, want, "resent (DUP) in order, then the queued one");
}
