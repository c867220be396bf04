//! Scenario tests of the shard alone: packets in, bytes out, on a virtual clock.

use super::{Shard, ROUTE_CACHE_TOPIC_MAX};
use crate::broker::mesh::MeshMsg;
use crate::broker::registry::Registry;
use crate::broker::ConnId;
use crate::config::Config;
use crate::protocol::*;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Several shards on one thread; mesh batches are delivered by [`H::settle`].
struct H {
    shards: Vec<Shard>,
    now: Instant,
    /// Last bytes of connections the shards closed, by (worker, conn).
    closed: Vec<((usize, ConnId), Vec<u8>)>,
    /// Packets read past a CONNACK, returned by the next `recv`.
    unread: Vec<((usize, ConnId), Packet)>,
    next_slot: u32,
    /// MQTT 5 connections (decoded with the MQTT 5 layout).
    v5: Vec<(usize, ConnId)>,
}

impl H {
    /// True while a session that moved to worker `w` is still settling there.
    fn settling(&self, w: usize) -> bool {
        self.shards[w]
            .sessions
            .iter()
            .any(|(_, s)| s.moved_in.is_some())
    }

    fn new(workers: usize) -> H {
        Self::with(workers, Config::default())
    }

    fn with(workers: usize, mut cfg: Config) -> H {
        cfg.sys_interval_secs = 0;
        let cfg = Arc::new(cfg);
        let reg = Arc::new(Registry::new());
        let now = Instant::now();
        H {
            shards: (0..workers)
                .map(|w| Shard::new(w, workers, cfg.clone(), reg.clone(), now))
                .collect(),
            now,
            closed: Vec::new(),
            unread: Vec::new(),
            next_slot: 0,
            v5: Vec::new(),
        }
    }

    fn open(&mut self, w: usize) -> (usize, ConnId) {
        self.next_slot += 1;
        let id = ConnId {
            slot: self.next_slot,
            gen: 1,
        };
        self.shards[w].open(self.now, id);
        (w, id)
    }

    fn send(&mut self, c: (usize, ConnId), p: Packet) {
        self.shards[c.0].packet(self.now, c.1, p);
        self.settle();
    }

    /// Feeds a packet without delivering any mesh traffic.
    fn send_only(&mut self, c: (usize, ConnId), p: Packet) {
        self.shards[c.0].packet(self.now, c.1, p);
    }

    /// Delivers what `from` has queued for `to`, and nothing else.
    fn pump(&mut self, from: usize, to: usize) {
        let mut batch = std::mem::take(&mut self.shards[from].effects().mesh[to]);
        self.shards[to].mesh(self.now, from, &mut batch);
    }

    /// Delivers mesh batches until none are left and collects closes.
    fn settle(&mut self) {
        self.settle_except(&[]);
    }

    /// As `settle`, but holds back what goes over the channels `blocked` (from, to):
    /// their batches wait, in order, for a later `pump` or `settle`.
    fn settle_except(&mut self, blocked: &[(usize, usize)]) {
        loop {
            let mut moved = false;
            for from in 0..self.shards.len() {
                let closes = std::mem::take(&mut self.shards[from].effects().close);
                self.closed
                    .extend(closes.into_iter().map(|(id, tx)| ((from, id), tx)));
                for to in 0..self.shards.len() {
                    if blocked.contains(&(from, to)) {
                        continue;
                    }
                    let mut batch = std::mem::take(&mut self.shards[from].effects().mesh[to]);
                    if !batch.is_empty() {
                        moved = true;
                        self.shards[to].mesh(self.now, from, &mut batch);
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn recv(&mut self, c: (usize, ConnId)) -> Vec<Packet> {
        self.settle();
        self.read(c)
    }

    /// What the connection was sent so far, without delivering any mesh traffic.
    fn read(&mut self, c: (usize, ConnId)) -> Vec<Packet> {
        let mut buf = match self.shards[c.0].tx_mut(c.1) {
            Some(tx) => BytesMut::from(&std::mem::take(tx)[..]),
            None => match self.closed.iter_mut().find(|(k, _)| *k == c) {
                Some((_, tx)) => BytesMut::from(&std::mem::take(tx)[..]),
                None => BytesMut::new(),
            },
        };
        let mut out: Vec<Packet> = Vec::new();
        let unread = std::mem::take(&mut self.unread);
        for (k, p) in unread {
            if k == c {
                out.push(p);
            } else {
                self.unread.push((k, p));
            }
        }
        let version = if self.v5.contains(&c) {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V3_1_1
        };
        while let Some(p) = decode_one_v(&mut buf, usize::MAX, version).unwrap() {
            out.push(p);
        }
        assert!(buf.is_empty(), "trailing partial packet in output");
        out
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        for s in &mut self.shards {
            s.tick(self.now);
        }
        self.settle();
    }

    /// Moves the virtual clock without firing timers.
    fn advance_clock(&mut self, d: Duration) {
        self.now += d;
    }

    fn is_closed(&self, c: (usize, ConnId)) -> bool {
        !self.shards[c.0].is_open(c.1)
    }

    fn connect_with(&mut self, w: usize, connect: Box<Connect>) -> ((usize, ConnId), ConnAck) {
        let c = self.open(w);
        if connect.version.is_v5() {
            self.v5.push(c);
        }
        self.send(c, Packet::Connect(connect));
        let mut got = self.recv(c);
        assert!(!got.is_empty(), "no CONNACK");
        let first = got.remove(0);
        self.unread.extend(got.into_iter().map(|p| (c, p)));
        match first {
            Packet::ConnAck(a) => (c, a),
            p => panic!("expected CONNACK, got {p:?}"),
        }
    }

    fn connect(&mut self, w: usize, id: &str, clean: bool) -> (usize, ConnId) {
        let (c, ack) = self.connect_with(w, connect(id, clean));
        assert_eq!(ack.code, ReasonCode::SUCCESS);
        c
    }

    fn subscribe(&mut self, c: (usize, ConnId), filter: &str, qos: QoS) {
        self.send(
            c,
            Packet::Subscribe(Subscribe {
                packet_id: pid(1),
                filters: vec![(TopicFilter::new(filter).unwrap(), qos.into())],
                props: Default::default(),
            }),
        );
        let got = self.recv(c);
        assert!(
            matches!(&got[0], Packet::SubAck(s) if s.codes == vec![ReasonCode::granted(qos)]),
            "{got:?}"
        );
    }
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

fn connect(id: &str, clean: bool) -> Box<Connect> {
    Box::new(Connect {
        version: ProtocolVersion::V3_1_1,
        clean_session: clean,
        keep_alive_secs: 0,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        props: Default::default(),
    })
}

fn publish(topic: &str, qos: QoS, id: u16, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: TopicName::new(topic).unwrap(),
        packet_id: (qos != QoS::AtMostOnce).then(|| pid(id)),
        payload: Bytes::from_static(payload),
        props: Default::default(),
    })
}

/// A will on `topic`, not retained, without properties.
fn will(topic: &str, payload: &'static [u8], qos: QoS) -> Will {
    Will {
        topic: TopicName::new(topic).unwrap(),
        payload: Bytes::from_static(payload),
        qos,
        retain: false,
        props: Default::default(),
    }
}

fn published(p: &Packet) -> &Publish {
    match p {
        Packet::Publish(p) => p,
        p => panic!("expected PUBLISH, got {p:?}"),
    }
}

/// The payloads of `got`, which must all be PUBLISHes.
fn payloads(got: &[Packet]) -> Vec<Bytes> {
    got.iter().map(|p| published(p).payload.clone()).collect()
}

#[test]
fn connack_accepts_and_reports_no_session() {
    let mut h = H::new(1);
    let (_, ack) = h.connect_with(0, connect("a", true));
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    assert!(!ack.session_present, "[MQTT-3.2.2-1]");
}

#[test]
fn first_packet_must_be_connect() {
    // [MQTT-3.1.0-1]
    let mut h = H::new(1);
    let c = h.open(0);
    h.send(c, Packet::PingReq);
    assert!(h.is_closed(c));
}

#[test]
fn second_connect_closes() {
    // [MQTT-3.1.0-2]
    let mut h = H::new(1);
    let c = h.connect(0, "a", true);
    h.send(c, Packet::Connect(connect("a", true)));
    assert!(h.is_closed(c));
}

#[test]
fn empty_client_id_rules() {
    let mut h = H::new(1);
    // [MQTT-3.1.3-8]: empty id with clean session 0 -> 0x02 and close.
    let (c, ack) = h.connect_with(0, connect("", false));
    assert_eq!(ack.code, ReasonCode::CLIENT_ID_NOT_VALID);
    assert!(h.is_closed(c));
    // [MQTT-3.1.3-6]: empty id with clean session 1 -> accepted with a fresh id.
    let (c, ack) = h.connect_with(0, connect("", true));
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    assert!(!h.is_closed(c));
}

#[test]
fn v31_client_id_longer_than_23_is_rejected() {
    let mut h = H::new(1);
    let mut c = connect("abcdefghijklmnopqrstuvwxyz", true);
    c.version = ProtocolVersion::V3_1;
    let (_, ack) = h.connect_with(0, c);
    assert_eq!(ack.code, ReasonCode::CLIENT_ID_NOT_VALID);
}

#[test]
fn connect_timeout_closes() {
    let mut h = H::new(1);
    let c = h.open(0);
    h.advance(Duration::from_secs(9));
    assert!(!h.is_closed(c));
    h.advance(Duration::from_secs(2));
    assert!(h.is_closed(c));
}

#[test]
fn qos_levels_end_to_end() {
    let mut h = H::new(1);
    let sub = h.connect(0, "sub", true);
    h.subscribe(sub, "t/#", QoS::ExactlyOnce);
    let pubc = h.connect(0, "pub", true);

    h.send(pubc, publish("t/0", QoS::AtMostOnce, 0, b"zero"));
    assert!(h.recv(pubc).is_empty(), "no ack for QoS 0");
    let got = h.recv(sub);
    assert_eq!(published(&got[0]).qos, QoS::AtMostOnce);

    h.send(pubc, publish("t/1", QoS::AtLeastOnce, 7, b"one"));
    assert_eq!(h.recv(pubc), vec![Packet::puback(pid(7))]);
    let got = h.recv(sub);
    let p = published(&got[0]);
    assert_eq!((p.qos, &p.payload[..]), (QoS::AtLeastOnce, &b"one"[..]));
    h.send(sub, Packet::puback(p.packet_id.unwrap()));

    h.send(pubc, publish("t/2", QoS::ExactlyOnce, 8, b"two"));
    assert_eq!(h.recv(pubc), vec![Packet::pubrec(pid(8))]);
    // A duplicate before PUBREL is acknowledged but not delivered again [MQTT-4.3.3-2].
    h.send(pubc, publish("t/2", QoS::ExactlyOnce, 8, b"two"));
    assert_eq!(h.recv(pubc), vec![Packet::pubrec(pid(8))]);
    h.send(pubc, Packet::pubrel(pid(8)));
    assert_eq!(h.recv(pubc), vec![Packet::pubcomp(pid(8))]);
    let got = h.recv(sub);
    assert_eq!(got.len(), 1, "exactly once: {got:?}");
    let id = published(&got[0]).packet_id.unwrap();
    h.send(sub, Packet::pubrec(id));
    assert_eq!(h.recv(sub), vec![Packet::pubrel(id)]);
    h.send(sub, Packet::pubcomp(id));
    assert!(h.recv(sub).is_empty());
}

#[test]
fn delivered_qos_is_min_of_published_and_granted() {
    let mut h = H::new(1);
    let sub = h.connect(0, "sub", true);
    h.subscribe(sub, "t", QoS::AtLeastOnce);
    let pubc = h.connect(0, "pub", true);
    h.send(pubc, publish("t", QoS::ExactlyOnce, 1, b"x"));
    let got = h.recv(sub);
    assert_eq!(published(&got[0]).qos, QoS::AtLeastOnce);
}

#[test]
fn overlapping_subscriptions_deliver_once_at_highest_qos() {
    let mut h = H::new(1);
    let sub = h.connect(0, "sub", true);
    h.subscribe(sub, "a/+", QoS::AtMostOnce);
    h.subscribe(sub, "a/#", QoS::AtLeastOnce);
    h.subscribe(sub, "a/b", QoS::AtMostOnce);
    let pubc = h.connect(0, "pub", true);
    h.send(pubc, publish("a/b", QoS::ExactlyOnce, 1, b"x"));
    let got = h.recv(sub);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(published(&got[0]).qos, QoS::AtLeastOnce);
}

#[test]
fn retained_messages() {
    let mut h = H::new(2);
    let pubc = h.connect(0, "pub", true);
    let mut p = publish("r/1", QoS::AtLeastOnce, 1, b"kept");
    if let Packet::Publish(p) = &mut p {
        p.retain = true;
    }
    h.send(pubc, p);
    // A subscriber on the other worker sees it with RETAIN set [MQTT-3.3.1-6].
    let sub = h.connect(1, "sub", true);
    h.send(
        sub,
        Packet::Subscribe(Subscribe {
            packet_id: pid(3),
            filters: vec![(TopicFilter::new("r/+").unwrap(), QoS::ExactlyOnce.into())],
            props: Default::default(),
        }),
    );
    let got = h.recv(sub);
    assert!(matches!(got[0], Packet::SubAck(_)));
    let r = published(&got[1]);
    assert!(r.retain);
    assert_eq!(r.qos, QoS::AtLeastOnce);
    assert_eq!(&r.payload[..], b"kept");
    // Normal forwarding clears RETAIN [MQTT-3.3.1-9].
    let mut p = publish("r/1", QoS::AtMostOnce, 0, b"new");
    if let Packet::Publish(p) = &mut p {
        p.retain = true;
    }
    h.send(pubc, p);
    let got = h.recv(sub);
    assert!(!published(&got[0]).retain);
    // An empty retained payload deletes [MQTT-3.3.1-10].
    let mut p = publish("r/1", QoS::AtMostOnce, 0, b"");
    if let Packet::Publish(p) = &mut p {
        p.retain = true;
    }
    h.send(pubc, p);
    let late = h.connect(1, "late", true);
    h.send(
        late,
        Packet::Subscribe(Subscribe {
            packet_id: pid(3),
            filters: vec![(TopicFilter::new("r/#").unwrap(), QoS::AtMostOnce.into())],
            props: Default::default(),
        }),
    );
    assert_eq!(h.recv(late).len(), 1, "only the SUBACK");
}

#[test]
fn will_on_abnormal_close_not_on_disconnect() {
    let mut h = H::new(2);
    let watcher = h.connect(1, "w", true);
    h.subscribe(watcher, "wills/#", QoS::AtLeastOnce);
    let mut c = connect("dying", true);
    c.will = Some(will("wills/dying", b"gone", QoS::AtLeastOnce));
    let (dying, _) = h.connect_with(0, c.clone());
    h.shards[0].closed(h.now, dying.1);
    h.settle();
    let got = h.recv(watcher);
    assert_eq!(&published(&got[0]).payload[..], b"gone");

    let (polite, _) = h.connect_with(0, c);
    h.send(polite, Packet::disconnect());
    assert!(h.is_closed(polite));
    assert!(h.recv(watcher).is_empty(), "[MQTT-3.14.4-3]");
}

#[test]
fn keep_alive_expiry_closes_and_publishes_will() {
    let mut h = H::new(1);
    let watcher = h.connect(0, "w", true);
    h.subscribe(watcher, "wills/#", QoS::AtMostOnce);
    let mut c = connect("ka", true);
    c.keep_alive_secs = 2;
    c.will = Some(will("wills/ka", b"timeout", QoS::AtMostOnce));
    let (ka, _) = h.connect_with(0, c);
    h.advance(Duration::from_millis(2900));
    h.send(ka, Packet::PingReq);
    assert_eq!(h.recv(ka), vec![Packet::PingResp]);
    h.advance(Duration::from_millis(2900));
    assert!(!h.is_closed(ka), "PINGREQ reset the keep-alive");
    h.advance(Duration::from_millis(200));
    assert!(h.is_closed(ka), "[MQTT-3.1.2-24] 1.5 x keep-alive");
    let got = h.recv(watcher);
    assert_eq!(&published(&got[0]).payload[..], b"timeout");
}

#[test]
fn persistent_session_queues_while_offline() {
    let mut h = H::new(1);
    let sub = h.connect(0, "p", false);
    h.subscribe(sub, "q", QoS::AtLeastOnce);
    h.shards[0].closed(h.now, sub.1);
    let pubc = h.connect(0, "pub", true);
    h.send(pubc, publish("q", QoS::AtLeastOnce, 1, b"m1"));
    h.send(pubc, publish("q", QoS::AtMostOnce, 0, b"m0"));
    h.send(pubc, publish("q", QoS::AtLeastOnce, 2, b"m2"));
    let (sub, ack) = h.connect_with(0, connect("p", false));
    assert!(ack.session_present, "[MQTT-3.2.2-2]");
    assert_eq!(
        payloads(&h.recv(sub)),
        vec![Bytes::from_static(b"m1"), Bytes::from_static(b"m2")]
    );
    // A clean reconnect discards the session [MQTT-3.1.2-6].
    h.shards[0].closed(h.now, sub.1);
    let (_, ack) = h.connect_with(0, connect("p", true));
    assert!(!ack.session_present);
}

#[test]
fn unacknowledged_messages_are_resent_with_dup_on_reconnect() {
    let mut h = H::new(1);
    let sub = h.connect(0, "p", false);
    h.subscribe(sub, "q", QoS::ExactlyOnce);
    let pubc = h.connect(0, "pub", true);
    h.send(pubc, publish("q", QoS::AtLeastOnce, 1, b"a"));
    h.send(pubc, publish("q", QoS::ExactlyOnce, 2, b"b"));
    let got = h.recv(sub);
    let (a, b) = (published(&got[0]).clone(), published(&got[1]).clone());
    h.send(sub, Packet::pubrec(b.packet_id.unwrap()));
    assert_eq!(h.recv(sub), vec![Packet::pubrel(b.packet_id.unwrap())]);
    h.shards[0].closed(h.now, sub.1);
    let (sub, ack) = h.connect_with(0, connect("p", false));
    assert!(ack.session_present);
    let got = h.recv(sub);
    let again = published(&got[0]);
    assert!(again.dup, "[MQTT-4.4.0-1]");
    assert_eq!(again.packet_id, a.packet_id);
    assert_eq!(got[1], Packet::pubrel(b.packet_id.unwrap()));
}

#[test]
fn inflight_window_limits_and_queue_drains_in_order() {
    let cfg = Config {
        max_inflight: 2,
        ..Config::default()
    };
    let mut h = H::with(1, cfg);
    let sub = h.connect(0, "s", true);
    h.subscribe(sub, "q", QoS::AtLeastOnce);
    let pubc = h.connect(0, "pub", true);
    for i in 1..=5u16 {
        h.send(pubc, publish("q", QoS::AtLeastOnce, i, b"x"));
    }
    let got = h.recv(sub);
    assert_eq!(got.len(), 2, "window of 2");
    h.send(sub, Packet::puback(published(&got[0]).packet_id.unwrap()));
    assert_eq!(h.recv(sub).len(), 1, "one slot freed, one sent");
}

#[test]
fn takeover_across_workers_moves_the_session() {
    let mut h = H::new(2);
    let old = h.connect(0, "dev", false);
    h.subscribe(old, "cmd/dev", QoS::AtLeastOnce);
    let pubc = h.connect(1, "pub", true);
    h.send(pubc, publish("cmd/dev", QoS::AtLeastOnce, 1, b"one"));
    let got = h.recv(old);
    assert_eq!(got.len(), 1);
    // Unacknowledged; now the client reconnects on the other worker.
    let (new, ack) = h.connect_with(1, connect("dev", false));
    assert!(h.is_closed(old), "[MQTT-3.1.4-2] old connection closed");
    assert!(ack.session_present);
    let got = h.recv(new);
    assert!(published(&got[0]).dup, "unacknowledged message resent");
    // New messages reach the session on its new worker.
    h.send(pubc, publish("cmd/dev", QoS::AtLeastOnce, 2, b"two"));
    let got = h.recv(new);
    assert_eq!(&published(&got[0]).payload[..], b"two");
    assert_eq!(h.shards[0].session_count(), 0);
}

#[test]
fn cross_worker_routing_follows_interest() {
    let mut h = H::new(2);
    let sub = h.connect(1, "s", true);
    h.subscribe(sub, "x/+", QoS::AtMostOnce);
    let pubc = h.connect(0, "p", true);
    h.send(pubc, publish("x/1", QoS::AtMostOnce, 0, b"hi"));
    assert_eq!(h.recv(sub).len(), 1);
    h.send(
        sub,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(9),
            filters: vec![TopicFilter::new("x/+").unwrap()],
            props: Default::default(),
        }),
    );
    assert_eq!(h.recv(sub), vec![Packet::unsuback(pid(9))]);
    h.send(pubc, publish("x/1", QoS::AtMostOnce, 0, b"hi"));
    assert!(h.recv(sub).is_empty());
    assert!(
        h.shards[0].effects().mesh[1].is_empty(),
        "no interest, nothing forwarded"
    );
}

/// The publisher's route cache (`RouteCache`) is dropped with every interest change,
/// follows a change of topic, and keeps no topic longer than its bound.
#[test]
fn a_publishers_route_cache_follows_interest_and_topic_changes() {
    let mut h = H::new(2);
    let pubc = h.connect(0, "p", true);
    let cached = |h: &mut H| {
        h.shards[0]
            .conn(pubc.1)
            .and_then(|c| c.route.as_ref())
            .map(|r| (String::from_utf8_lossy(&r.topic).into_owned(), r.mask))
    };
    h.send_only(pubc, publish("a/1", QoS::AtMostOnce, 0, b"0"));
    assert_eq!(cached(&mut h), Some(("a/1".into(), 0)));
    assert!(
        h.shards[0].effects().mesh[1].is_empty(),
        "nobody listens yet"
    );

    let sub = h.connect(1, "s", true);
    h.subscribe(sub, "a/+", QoS::AtMostOnce);
    h.settle();
    h.send(pubc, publish("a/1", QoS::AtMostOnce, 0, b"1"));
    assert_eq!(cached(&mut h), Some(("a/1".into(), 0b10)));
    h.send(pubc, publish("b/1", QoS::AtMostOnce, 0, b"2"));
    assert_eq!(cached(&mut h), Some(("b/1".into(), 0)));
    h.send(pubc, publish("a/1", QoS::AtMostOnce, 0, b"3"));
    let long = format!("a/{}", "x".repeat(ROUTE_CACHE_TOPIC_MAX));
    h.send(pubc, publish(&long, QoS::AtMostOnce, 0, b"4"));
    assert_eq!(
        cached(&mut h),
        Some(("a/1".into(), 0b10)),
        "too long to keep"
    );
    let got = payloads(&h.recv(sub));
    assert_eq!(got, [&b"1"[..], b"3", b"4"]);

    // A subscription on the publisher's own worker is an interest change too.
    let local = h.connect(0, "l", true);
    h.subscribe(local, "a/1", QoS::AtMostOnce);
    h.send(pubc, publish("a/1", QoS::AtMostOnce, 0, b"5"));
    assert_eq!(cached(&mut h), Some(("a/1".into(), 0b11)));
    assert_eq!(h.recv(local).len(), 1);
    assert_eq!(h.recv(sub).len(), 1);
}

#[test]
fn a_mesh_batch_is_emptied_in_place_and_its_client_publishes_counted() {
    let mut h = H::new(2);
    let sub = h.connect(1, "s", true);
    h.subscribe(sub, "x/#", QoS::AtMostOnce);
    let other = h.connect(0, "o", true);
    h.read(other);
    let mut c = connect("p", true);
    c.will = Some(will("x/will", b"gone", QoS::AtMostOnce));
    let (pubc, _) = h.connect_with(0, c);
    h.send_only(pubc, publish("x/1", QoS::AtMostOnce, 0, b"a"));
    h.send_only(pubc, publish("x/2", QoS::AtMostOnce, 0, b"b"));
    // A message of another kind between publishes (the interest of a new filter):
    // taken out of the batch and handled in its place.
    h.send_only(
        other,
        Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            filters: vec![(TopicFilter::new("y/#").unwrap(), QoS::AtMostOnce.into())],
            props: Default::default(),
        }),
    );
    h.send_only(pubc, publish("x/3", QoS::AtMostOnce, 0, b"c"));
    h.shards[0].closed(h.now, pubc.1); // the will has no client origin
    let mut batch = std::mem::take(&mut h.shards[0].effects().mesh[1]);
    let kinds: Vec<_> = batch
        .iter()
        .map(|m| matches!(m, MeshMsg::Publish { .. }))
        .collect();
    assert_eq!(kinds, [true, true, false, true, true]);
    let capacity = batch.capacity();
    assert_eq!(h.shards[1].mesh(h.now, 0, &mut batch), 3);
    assert!(batch.is_empty(), "emptied for the runtime to hand back");
    assert_eq!(batch.capacity(), capacity);
    let got = payloads(&h.recv(sub));
    assert_eq!(got, [&b"a"[..], b"b", b"c", b"gone"]);
    // The interest it carried was applied: worker 1 now routes y/1 to worker 0.
    h.read(other);
    let p1 = h.connect(1, "p1", true);
    h.send(p1, publish("y/1", QoS::AtMostOnce, 0, b"d"));
    assert_eq!(payloads(&h.recv(other)), [&b"d"[..]]);
}

#[test]
fn clean_sessions_leave_nothing_behind() {
    let mut h = H::new(2);
    for i in 0..10 {
        let c = h.connect(i % 2, &format!("c{i}"), true);
        h.subscribe(c, &format!("t/{i}"), QoS::AtLeastOnce);
        h.shards[c.0].closed(h.now, c.1);
    }
    h.settle();
    for s in &h.shards {
        assert_eq!(s.session_count(), 0);
        assert_eq!(s.conn_count(), 0);
        assert_eq!(s.stats().subscriptions, 0);
    }
}

#[test]
fn client_publish_to_sys_is_not_forwarded() {
    let mut h = H::new(1);
    let sub = h.connect(0, "s", true);
    h.subscribe(sub, "$SYS/#", QoS::AtMostOnce);
    let pubc = h.connect(0, "p", true);
    h.send(pubc, publish("$SYS/broker/fake", QoS::AtLeastOnce, 1, b"x"));
    assert_eq!(h.recv(pubc), vec![Packet::puback(pid(1))]);
    assert!(h.recv(sub).is_empty());
}

#[test]
fn stale_events_are_ignored() {
    let mut h = H::new(1);
    let c = h.connect(0, "a", true);
    h.shards[0].closed(h.now, c.1);
    h.shards[0].closed(h.now, c.1);
    h.shards[0].packet(h.now, c.1, Packet::PingReq);
    assert!(h.shards[0].tx_mut(c.1).is_none());
}

/// The session moves w0 -> w1 while a third worker still routes to w0, in the
/// interleavings that matter: every acknowledged QoS 2 message reaches it once.
#[test]
fn publishes_racing_a_session_move_are_delivered_exactly_once() {
    for direct_first in [false, true] {
        let mut h = H::new(3);
        let old = h.connect(0, "s", false);
        h.subscribe(old, "t", QoS::ExactlyOnce);
        // Another subscriber on w1 makes w2 route "t" to w1 as well.
        let other = h.connect(1, "other", true);
        h.subscribe(other, "t", QoS::AtMostOnce);
        let pubc = h.connect(2, "p", true);

        let new = h.open(1);
        h.send_only(new, Packet::Connect(connect("s", false)));
        h.pump(1, 0); // Takeover reaches w0: the session leaves, a stub stays.
        h.send_only(pubc, publish("t", QoS::ExactlyOnce, 5, b"racing"));
        if direct_first {
            h.pump(2, 1); // direct copy at w1 before the session arrives
            h.pump(2, 0); // stale copy at w0: forwarded
            h.pump(0, 1); // handover, then the forward: must be delivered
        } else {
            h.pump(0, 1); // handover: installed on w1
            h.pump(2, 1); // direct copy: delivered
            h.pump(2, 0); // stale copy at w0: forwarded
            h.pump(0, 1); // the forward: already delivered, dropped
        }
        h.settle();
        let got = h.recv(new);
        let n = got
            .iter()
            .filter(|p| matches!(p, Packet::Publish(p) if &p.payload[..] == b"racing"))
            .count();
        assert_eq!(n, 1, "direct_first={direct_first}: {got:?}");
        assert!(h.is_closed(old));
    }
}

/// The PUBLISH packets in `got` whose payload is `payload`.
fn copies_of<'a>(got: &'a [Packet], payload: &[u8]) -> Vec<&'a Publish> {
    got.iter()
        .filter_map(|p| match p {
            Packet::Publish(p) if &p.payload[..] == payload => Some(p),
            _ => None,
        })
        .collect()
}

/// Simulation seeds 11751 and 23064: the session moves w1 -> w0 -> w2. A message
/// published on w1 between the first move and w1's cut is forwarded to w0 and
/// delivered there; its direct copy to w2 (where another subscriber is) is held up
/// on the channel until the session has moved on to w2. It must not be delivered
/// again: it was routed before w1's cut of the second move, so the old path had it.
#[test]
fn a_copy_forwarded_in_an_earlier_move_is_not_delivered_again() {
    let mut h = H::new(3);
    let first = h.connect(1, "s", false);
    h.subscribe(first, "t", QoS::ExactlyOnce);
    let other = h.connect(2, "other", true);
    h.subscribe(other, "t", QoS::AtMostOnce);
    let pubc = h.connect(1, "p", true);

    // First move, w1 -> w0, with the message published on w1 behind the stub.
    let second = h.open(0);
    h.send_only(second, Packet::Connect(connect("s", false)));
    h.pump(0, 1); // Takeover: the session leaves w1
    h.send_only(pubc, publish("t", QoS::ExactlyOnce, 1, b"once"));
    h.settle_except(&[(1, 2)]);
    assert!(!h.settling(0));
    // (`read` and `send_only`: `recv` and `send` would deliver the held-up copy.)
    let got = h.read(second);
    let copies = copies_of(&got, b"once");
    assert_eq!(copies.len(), 1, "delivered via the forward: {got:?}");
    let id = copies[0].packet_id.unwrap();
    h.send_only(second, Packet::PubRec(Ack::new(id)));
    assert_eq!(h.read(second), vec![Packet::pubrel(id)]);
    h.send_only(second, Packet::PubComp(Ack::new(id)));

    // Second move, w0 -> w2, while w1's direct copy to w2 is still on its way.
    let third = h.open(2);
    h.send_only(third, Packet::Connect(connect("s", false)));
    h.settle_except(&[(1, 2)]);
    assert!(h.is_closed(second));
    assert!(h.settling(2), "w1's `Flushed` is held up too");
    assert!(
        copies_of(&h.read(other), b"once").is_empty(),
        "not there yet"
    );
    h.settle();
    let got = h.recv(third);
    assert!(
        copies_of(&got, b"once").is_empty(),
        "delivered twice: {got:?}"
    );
    assert_eq!(copies_of(&h.recv(other), b"once").len(), 1);
    assert!(!h.settling(2));
}

/// Simulation seed 22654: the session moves w0 -> w1 while w2 publishes two
/// messages. The first also goes to w1 for another subscriber, who unsubscribes
/// before the second; the session's own interest reaches w2 only after both. Both
/// come forwarded; the direct copy of the first arrives last, and must not be taken
/// instead of its forward (the second would overtake it).
#[test]
fn a_direct_copy_arriving_after_later_forwards_does_not_reorder() {
    let mut h = H::new(3);
    let old = h.connect(0, "s", false);
    h.subscribe(old, "t", QoS::AtLeastOnce);
    let other = h.connect(1, "other", true);
    h.subscribe(other, "+", QoS::AtMostOnce);
    let pubc = h.connect(2, "p", true);

    let new = h.open(1);
    h.send_only(new, Packet::Connect(connect("s", false)));
    h.pump(1, 0); // Takeover: the session leaves w0, a stub stays
    h.send_only(pubc, publish("t", QoS::AtLeastOnce, 1, b"first"));
    h.send_only(
        other,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(9),
            filters: vec![TopicFilter::new("+").unwrap()],
            props: Default::default(),
        }),
    );
    h.pump(1, 2); // w2 learns w1 lost interest in "+"
    h.send_only(pubc, publish("t", QoS::AtLeastOnce, 2, b"second"));
    h.pump(2, 0); // both reach the stub on w0 and are forwarded
    h.pump(0, 1); // handover, then the two forwards
    h.settle(); // the direct copy of the first, then the rest of the protocol
    let got = h.recv(new);
    let payloads: Vec<_> = publishes(&got).into_iter().map(|p| p.payload).collect();
    assert_eq!(payloads, vec![&b"first"[..], &b"second"[..]], "{got:?}");
    assert!(!h.settling(1));
}

#[test]
fn stubs_go_once_every_worker_routes_to_the_new_home() {
    let mut h = H::new(3);
    let old = h.connect(0, "s", false);
    h.subscribe(old, "t", QoS::AtLeastOnce);
    let new = h.open(1);
    h.send_only(new, Packet::Connect(connect("s", false)));
    h.pump(1, 0); // Takeover: the session leaves w0, a stub stays
    assert_eq!(
        h.shards[0].index.filter_count(),
        1,
        "the stub holds the filter"
    );
    assert_eq!(
        h.shards[0].stats().subscriptions,
        0,
        "stubs are not subscriptions"
    );
    h.settle(); // handover, pings, pongs, stub gone
    assert_eq!(h.shards[0].index.filter_count(), 0, "the stub is gone");
    assert!(h.shards.iter().all(|s| s.stubs.is_empty()));
    assert!(!h.settling(1), "settled");
    assert_eq!(
        h.shards[2].interest.filter_count(),
        1,
        "w2 knows only w1 wants t"
    );
}

#[test]
fn congested_online_subscriber_pauses_its_publisher_then_drops_oldest() {
    let cfg = Config {
        max_inflight: 2,
        max_queued_messages: 5,
        ..Config::default()
    };
    let mut h = H::with(2, cfg);
    let slow = h.connect(0, "slow", true);
    h.subscribe(slow, "q", QoS::AtLeastOnce);
    let local_pub = h.connect(0, "lp", true);
    let remote_pub = h.connect(1, "rp", true);
    for i in 1..=4u16 {
        h.send(local_pub, publish("q", QoS::AtLeastOnce, i, b"x"));
    }
    // 2 in flight + 2 queued: not congested yet.
    assert!(h.shards[0].effects().pause.is_empty());
    for i in 1..=4u16 {
        h.send(remote_pub, publish("q", QoS::AtLeastOnce, i, b"y"));
    }
    // The queue reached its limit: the publishers feeding it are paused, the remote
    // one through its own worker.
    let paused0: Vec<_> = h.shards[0]
        .effects()
        .pause
        .iter()
        .map(|(c, _)| *c)
        .collect();
    let paused1: Vec<_> = h.shards[1]
        .effects()
        .pause
        .iter()
        .map(|(c, _)| *c)
        .collect();
    assert!(paused1.contains(&remote_pub.1), "{paused1:?}");
    assert!(!paused0.contains(&local_pub.1));
    for i in 5..=10u16 {
        h.send(local_pub, publish("q", QoS::AtLeastOnce, i, b"x"));
    }
    // 2 in flight + 10 queued (twice the limit) and the oldest dropped after that.
    let stats = h.shards[0].stats();
    assert_eq!(stats.queued, 10);
    assert_eq!(stats.dropped_queue_full, 2);
    assert!(stats.backpressure_pauses > 0);
    // Acknowledging drains the queue in order.
    let got = h.recv(slow);
    assert_eq!(got.len(), 2);
    for p in &got {
        h.send(slow, Packet::puback(published(p).packet_id.unwrap()));
    }
    assert_eq!(h.recv(slow).len(), 2, "two more from the queue");
}

fn retained(topic: &str, payload: &'static [u8]) -> Packet {
    let mut p = publish(topic, QoS::AtMostOnce, 0, payload);
    if let Packet::Publish(p) = &mut p {
        p.retain = true;
    }
    p
}

/// What a new subscriber on worker `w` is given for `filter`.
fn retained_seen(h: &mut H, w: usize, filter: &str) -> Vec<Bytes> {
    let c = h.open(w);
    h.send(
        c,
        Packet::Connect(connect(&format!("probe-{}", c.1.slot), true)),
    );
    h.send(
        c,
        Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            filters: vec![(TopicFilter::new(filter).unwrap(), QoS::AtMostOnce.into())],
            props: Default::default(),
        }),
    );
    h.recv(c)
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.payload.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn retained_payload_bytes_are_bounded_across_replicas() {
    let mut h = H::with(
        2,
        Config {
            max_retained_bytes: 1024,
            ..Config::default()
        },
    );
    let p = h.connect(0, "p", true);
    let watcher = h.connect(1, "w", true);
    h.subscribe(watcher, "r/#", QoS::AtMostOnce);
    static KB: [u8; 1024] = [b'x'; 1024];
    h.send(p, retained("r/a", &KB[..600]));
    h.send(p, retained("r/b", &KB[..400])); // 1,000 bytes: fits
    h.send(p, retained("r/c", &KB[..100])); // would be 1,100: not stored
    h.send(p, retained("r/a", &KB[..700])); // grows r/a to 1,100: not stored
    h.send(p, retained("r/b", &KB[..300])); // shrinks: always allowed
    h.send(p, retained("r/c", &KB[..100])); // fits now (1,000)
    h.settle();
    assert_eq!(h.recv(watcher).len(), 6, "every one is delivered live");
    for w in 0..2 {
        let mut sizes: Vec<usize> = retained_seen(&mut h, w, "r/#")
            .iter()
            .map(|b| b.len())
            .collect();
        sizes.sort();
        assert_eq!(sizes, [100, 300, 600], "replica on worker {w}");
    }
    assert_eq!(h.shards[0].stats().limits.retained_refused, 2);
}

#[test]
fn retained_replicas_converge_on_the_newest_update() {
    let mut h = H::new(2);
    let a = h.connect(0, "a", true);
    let b = h.connect(1, "b", true);
    h.send_only(a, retained("status", b"old"));
    h.advance_clock(Duration::from_millis(1));
    h.send_only(b, retained("status", b"new"));
    // Worker 1 applies its own newer update first, then receives the older one.
    h.pump(0, 1);
    h.pump(1, 0);
    assert_eq!(
        retained_seen(&mut h, 0, "status"),
        vec![Bytes::from_static(b"new")]
    );
    assert_eq!(
        retained_seen(&mut h, 1, "status"),
        vec![Bytes::from_static(b"new")]
    );

    // A delete followed by a late, older insert: the tombstone wins.
    h.send_only(a, retained("gone", b"v1"));
    h.advance_clock(Duration::from_millis(1));
    h.send_only(b, retained("gone", b""));
    h.pump(1, 0); // the delete reaches worker 0 first ...
    h.pump(0, 1); // ... and worker 1 sees the older insert after its delete
    assert!(retained_seen(&mut h, 0, "gone").is_empty());
    assert!(retained_seen(&mut h, 1, "gone").is_empty());
    // Tombstones are forgotten after the grace period.
    h.advance(Duration::from_secs(11));
    assert!(h.shards.iter().all(|s| !s
        .retained_versions
        .contains_key(&TopicName::new("gone").unwrap())));
}

#[test]
fn packets_sent_before_connack_wait_for_the_session() {
    // 3.1.4: a client may send packets right after CONNECT.
    let mut h = H::new(2);
    let old = h.connect(0, "s", false);
    h.subscribe(old, "a", QoS::AtLeastOnce);
    let new = h.open(1);
    h.send_only(new, Packet::Connect(connect("s", false)));
    h.send_only(
        new,
        Packet::Subscribe(Subscribe {
            packet_id: pid(4),
            filters: vec![(TopicFilter::new("b").unwrap(), QoS::AtMostOnce.into())],
            props: Default::default(),
        }),
    );
    h.send_only(new, Packet::PingReq);
    h.settle();
    assert!(!h.is_closed(new));
    let got = h.recv(new);
    assert!(
        matches!(&got[0], Packet::ConnAck(a) if a.session_present),
        "{got:?}"
    );
    assert!(
        matches!(&got[1], Packet::SubAck(s) if s.packet_id == pid(4)),
        "{got:?}"
    );
    assert_eq!(got[2], Packet::PingResp);
}

#[test]
fn wills_are_not_published_for_unaccepted_connections_or_into_sys() {
    let mut h = H::new(2);
    let watcher = h.connect(0, "w", true);
    h.subscribe(watcher, "#", QoS::AtMostOnce);
    let sys = h.connect(0, "sysw", true);
    h.subscribe(sys, "$SYS/#", QoS::AtMostOnce);
    let will = |topic: &str| Will {
        topic: TopicName::new(topic).unwrap(),
        payload: Bytes::from_static(b"x"),
        qos: QoS::AtMostOnce,
        retain: true,
        props: Default::default(),
    };
    // A will into $SYS is discarded at CONNECT.
    let mut c = connect("spoof", true);
    c.will = Some(will("$SYS/broker/version"));
    let (spoof, _) = h.connect_with(1, c);
    h.shards[1].closed(h.now, spoof.1);
    h.settle();
    assert!(h.recv(sys).is_empty());
    // A connection that never got its CONNACK (waiting for a takeover) has no will.
    let _holder = h.connect(0, "p", false);
    let mut c = connect("p", false);
    c.will = Some(will("wills/p"));
    let waiting = h.open(1);
    h.send_only(waiting, Packet::Connect(c));
    h.shards[1].closed(h.now, waiting.1);
    h.settle();
    assert!(h.recv(watcher).is_empty());
}

#[test]
fn subscription_limit_and_repeated_filters() {
    let cfg = Config {
        max_subscriptions_per_session: 3,
        ..Config::default()
    };
    let mut h = H::with(1, cfg);
    let pubc = h.connect(0, "p", true);
    for i in 0..5 {
        h.send(pubc, retained_packet(&format!("r/{i}")));
    }
    let s = h.connect(0, "s", true);
    let f = |t: &str| (TopicFilter::new(t).unwrap(), QoS::AtMostOnce.into());
    // The same filter many times counts once and brings the retained messages once.
    let mut filters = vec![f("r/#"); 1000];
    filters.extend([f("a"), f("b"), f("c"), f("r/#")]);
    h.send(
        s,
        Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            filters,
            props: Default::default(),
        }),
    );
    let got = h.recv(s);
    let Packet::SubAck(ack) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(ack.codes.len(), 1004);
    assert_eq!(
        ack.codes[1001],
        ReasonCode::granted(QoS::AtMostOnce),
        "b is the 3rd"
    );
    assert_eq!(
        ack.codes[1002],
        ReasonCode::UNSPECIFIED_ERROR,
        "c is over the limit"
    );
    assert_eq!(
        ack.codes[1003],
        ReasonCode::granted(QoS::AtMostOnce),
        "a replacement is fine"
    );
    assert_eq!(got.len() - 1, 5, "each retained message once");
    assert_eq!(h.shards[0].stats().subscriptions, 3);
}

fn retained_packet(topic: &str) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: true,
        topic: TopicName::new(topic).unwrap(),
        packet_id: None,
        payload: Bytes::from_static(b"v"),
        props: Default::default(),
    })
}

#[test]
fn paused_publishers_resume_when_the_queue_drains() {
    let cfg = Config {
        max_inflight: 2,
        max_queued_messages: 100,
        ..Config::default()
    };
    // Congestion starts at 4 windows (8 queued); publishers resume at half of that.
    let mut h = H::with(2, cfg);
    let slow = h.connect(0, "slow", true);
    h.subscribe(slow, "q", QoS::AtLeastOnce);
    let local_pub = h.connect(0, "lp", true);
    let remote_pub = h.connect(1, "rp", true);
    for i in 1..=6u16 {
        h.send(local_pub, publish("q", QoS::AtLeastOnce, i, b"x"));
        h.send(remote_pub, publish("q", QoS::AtLeastOnce, i, b"y"));
    }
    assert!(h.shards[0]
        .effects()
        .pause
        .iter()
        .any(|(c, _)| *c == local_pub.1));
    assert!(h.shards[1]
        .effects()
        .pause
        .iter()
        .any(|(c, _)| *c == remote_pub.1));
    assert!(h.shards[0].effects().resume.is_empty());
    // The subscriber acknowledges until its queue is at half the congestion level.
    for _ in 0..6 {
        let got = h.recv(slow);
        for p in &got {
            h.send(slow, Packet::puback(published(p).packet_id.unwrap()));
        }
    }
    assert!(
        h.shards[0].effects().resume.contains(&local_pub.1),
        "local publisher resumed"
    );
    assert!(
        h.shards[1].effects().resume.contains(&remote_pub.1),
        "remote publisher resumed"
    );
}

/// A `Pause` for a publisher on another worker lasts `backpressure_pause` from its
/// arrival: one that arrives later than that (a long turn, a slow mesh hop under
/// load) must still pause the publisher, or nothing stops it and the subscriber's
/// queue overflows (QoS 1 messages dropped; seen as loss in `tls.rs`'s bench test).
#[test]
fn a_late_remote_pause_still_pauses_the_publisher() {
    let cfg = Config {
        max_inflight: 2,
        max_queued_messages: 100,
        backpressure_pause_ms: 100,
        ..Config::default()
    };
    let mut h = H::with(2, cfg);
    let slow = h.connect(0, "slow", true);
    h.subscribe(slow, "q", QoS::AtLeastOnce);
    let publ = h.connect(1, "p", true);
    for i in 1..=12u16 {
        h.send_only(publ, publish("q", QoS::AtLeastOnce, i, b"x"));
    }
    // The publishes reach worker 0, which congests and sends Pause back...
    h.pump(1, 0);
    assert!(h.shards[1].effects().pause.is_empty());
    // ...which reaches worker 1 only after longer than the pause itself.
    h.now += Duration::from_millis(300);
    h.pump(0, 1);
    let pauses = &h.shards[1].effects().pause;
    let until = pauses
        .iter()
        .filter(|(c, _)| *c == publ.1)
        .map(|&(_, t)| t)
        .max()
        .expect("publisher paused");
    assert!(
        until >= h.now + Duration::from_millis(100),
        "the pause runs from its arrival: {:?} left",
        until.saturating_duration_since(h.now)
    );
}

// ---- MQTT 5 and shared subscriptions ----

fn connect5(id: &str, clean: bool, props: Properties) -> Box<Connect> {
    let mut c = connect(id, clean);
    c.version = ProtocolVersion::V5;
    c.props = props.into();
    c
}

fn subscribe_opts(h: &mut H, c: (usize, ConnId), filter: &str, opts: SubOptions, sub_id: u32) {
    let mut props = Properties::default();
    if sub_id != 0 {
        props.subscription_identifiers.push(sub_id);
    }
    h.send(
        c,
        Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            filters: vec![(TopicFilter::new(filter).unwrap(), opts)],
            props: props.into(),
        }),
    );
    let got = h.recv(c);
    assert!(
        matches!(&got[0], Packet::SubAck(s) if s.codes[0].is_success()),
        "{got:?}"
    );
}

fn publishes(got: &[Packet]) -> Vec<Publish> {
    got.iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn shared_group_gets_each_message_once_across_workers() {
    let mut h = H::new(2);
    let members: Vec<_> = (0..4)
        .map(|i| {
            let c = h.connect(i % 2, &format!("m{i}"), true);
            h.subscribe(c, "$share/g/t/#", QoS::AtLeastOnce);
            c
        })
        .collect();
    let other = h.connect(1, "plain", true);
    h.subscribe(other, "t/#", QoS::AtMostOnce);
    let publ = h.connect(0, "pub", true);
    for i in 0..100u16 {
        h.send(publ, publish("t/x", QoS::AtLeastOnce, i + 1, b"m"));
    }
    let mut per_member = vec![0; members.len()];
    loop {
        let mut more = false;
        for (i, &m) in members.iter().enumerate() {
            let got = publishes(&h.recv(m));
            for p in &got {
                h.send(m, Packet::puback(p.packet_id.unwrap()));
            }
            per_member[i] += got.len();
            more |= !got.is_empty();
        }
        if !more {
            break;
        }
    }
    assert_eq!(
        per_member.iter().sum::<usize>(),
        100,
        "each message to one member"
    );
    assert!(per_member.iter().all(|&n| n > 0), "{per_member:?}");
    assert_eq!(
        publishes(&h.recv(other)).len(),
        100,
        "plain subscribers get all"
    );
}

#[test]
fn shared_member_leaving_hands_its_unacked_qos1_to_another() {
    let mut h = H::new(2);
    let a = h.connect(0, "a", true);
    h.subscribe(a, "$share/g/t", QoS::AtLeastOnce);
    let b = h.connect(1, "b", true);
    h.subscribe(b, "$share/g/t", QoS::AtLeastOnce);
    let publ = h.connect(0, "pub", true);
    for i in 0..10u16 {
        h.send(publ, publish("t", QoS::AtLeastOnce, i + 1, b"m"));
    }
    let got_a = publishes(&h.recv(a));
    let got_b = publishes(&h.recv(b));
    assert_eq!(got_a.len() + got_b.len(), 10);
    assert!(!got_a.is_empty());
    // `a` leaves without acknowledging anything: its messages go to `b`.
    h.shards[0].closed(h.now, a.1);
    h.settle();
    let again = publishes(&h.recv(b));
    assert_eq!(again.len(), got_a.len(), "{again:?}");
}

// (4.8.2: no retained messages on a shared subscription)
#[test]
fn shared_subscription_gets_no_retained_messages() {
    let mut h = H::new(1);
    let publ = h.connect(0, "pub", true);
    let mut p = publish("t", QoS::AtMostOnce, 1, b"kept");
    if let Packet::Publish(p) = &mut p {
        p.retain = true;
    }
    h.send(publ, p);
    let s = h.connect(0, "s", true);
    h.send(
        s,
        Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            filters: vec![(
                TopicFilter::new("$share/g/t").unwrap(),
                QoS::AtMostOnce.into(),
            )],
            props: Default::default(),
        }),
    );
    let got = h.recv(s);
    assert!(matches!(&got[0], Packet::SubAck(_)), "{got:?}");
    assert!(
        publishes(&got).is_empty(),
        "no retained on a shared subscription"
    );
    let plain = h.connect(0, "plain", true);
    h.send(
        plain,
        Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            filters: vec![(TopicFilter::new("t").unwrap(), QoS::AtMostOnce.into())],
            props: Default::default(),
        }),
    );
    assert_eq!(publishes(&h.recv(plain)).len(), 1, "a plain one does");
}

// [MQTT-3.8.3-3] [MQTT-3.3.1-12] [MQTT-3.3.1-13] [MQTT-3.3.4-3]
#[test]
fn v5_no_local_retain_as_published_and_subscription_ids() {
    let mut h = H::new(1);
    let c = h
        .connect_with(0, connect5("me", true, Properties::default()))
        .0;
    let nl = SubOptions {
        no_local: true,
        ..SubOptions::qos(QoS::AtMostOnce)
    };
    subscribe_opts(&mut h, c, "a/#", nl, 7);
    let rap = SubOptions {
        retain_as_published: true,
        ..SubOptions::qos(QoS::AtMostOnce)
    };
    subscribe_opts(&mut h, c, "b/+", rap, 9);
    h.send(c, publish("a/1", QoS::AtMostOnce, 1, b"x"));
    assert!(publishes(&h.recv(c)).is_empty(), "no local");
    let other = h.connect(0, "other", true);
    h.send(other, publish("a/1", QoS::AtMostOnce, 1, b"x"));
    let mut retained = publish("b/1", QoS::AtMostOnce, 1, b"y");
    if let Packet::Publish(p) = &mut retained {
        p.retain = true;
    }
    h.send(other, retained);
    let got = publishes(&h.recv(c));
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].props.subscription_identifiers, vec![7]);
    assert!(!got[0].retain);
    assert_eq!(got[1].props.subscription_identifiers, vec![9]);
    assert!(got[1].retain, "retain as published");
}

// [MQTT-3.1.2-23] [MQTT-4.1.0-2]
#[test]
fn v5_session_expiry_keeps_then_ends_the_session() {
    let mut h = H::new(1);
    let props = Properties {
        session_expiry_interval: Some(30),
        ..Properties::default()
    };
    let c = h.connect_with(0, connect5("exp", true, props.clone())).0;
    h.subscribe(c, "t", QoS::AtLeastOnce);
    h.shards[0].closed(h.now, c.1);
    h.advance(Duration::from_secs(10));
    assert_eq!(h.shards[0].session_count(), 1, "kept while within expiry");
    h.advance(Duration::from_secs(25));
    assert_eq!(h.shards[0].session_count(), 0, "expired");
    assert_eq!(h.shards[0].stats().sessions_expired, 1);
    let (_, ack) = h.connect_with(0, connect5("exp", false, props));
    assert!(!ack.session_present);
}

// [MQTT-3.1.2-8] [MQTT-3.1.3-9]
#[test]
fn v5_will_delay_is_cancelled_by_reconnect_and_sent_otherwise() {
    let mut h = H::new(1);
    let watcher = h.connect(0, "w", true);
    h.subscribe(watcher, "will", QoS::AtMostOnce);
    let props = Properties {
        session_expiry_interval: Some(100),
        ..Properties::default()
    };
    let mut c = connect5("dev", true, props.clone());
    c.will = Some(Will {
        topic: TopicName::new("will").unwrap(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        props: Properties {
            will_delay_interval: Some(5),
            ..Properties::default()
        }
        .into(),
    });
    let dev = h.connect_with(0, c.clone()).0;
    h.shards[0].closed(h.now, dev.1);
    h.advance(Duration::from_secs(2));
    assert!(publishes(&h.recv(watcher)).is_empty(), "delayed");
    let _back = h.connect_with(0, connect5("dev", false, props)).0;
    h.advance(Duration::from_secs(10));
    assert!(
        publishes(&h.recv(watcher)).is_empty(),
        "cancelled by reconnect"
    );
    let dev = h.connect_with(0, c).0;
    h.shards[0].closed(h.now, dev.1);
    h.advance(Duration::from_secs(6));
    assert_eq!(publishes(&h.recv(watcher)).len(), 1, "sent after the delay");
}

// [MQTT-3.3.2-5] [MQTT-3.3.2-6]
#[test]
fn v5_expired_queued_message_is_not_delivered() {
    let mut h = H::new(1);
    let props = Properties {
        session_expiry_interval: Some(1000),
        ..Properties::default()
    };
    let c = h.connect_with(0, connect5("s", true, props.clone())).0;
    h.subscribe(c, "t", QoS::AtLeastOnce);
    h.shards[0].closed(h.now, c.1);
    let publ = h
        .connect_with(0, connect5("p", true, Properties::default()))
        .0;
    for (i, expiry) in [(1u16, 5u32), (2, 60)] {
        let mut p = publish("t", QoS::AtLeastOnce, i, b"m");
        if let Packet::Publish(p) = &mut p {
            p.props.message_expiry_interval = Some(expiry);
        }
        h.send(publ, p);
    }
    h.advance(Duration::from_secs(10));
    let (c, _) = h.connect_with(0, connect5("s", false, props));
    let got = publishes(&h.recv(c));
    assert_eq!(got.len(), 1, "{got:?}");
    let left = got[0].props.message_expiry_interval.unwrap();
    assert!((49..=50).contains(&left), "remaining expiry {left}");
}

// [MQTT-3.3.2-12]
#[test]
fn v5_topic_alias_in_and_invalid_alias_disconnects() {
    let mut h = H::new(1);
    let sub = h.connect(0, "sub", true);
    h.subscribe(sub, "long/topic", QoS::AtMostOnce);
    let c = h
        .connect_with(0, connect5("p", true, Properties::default()))
        .0;
    let mut first = publish("long/topic", QoS::AtMostOnce, 1, b"1");
    if let Packet::Publish(p) = &mut first {
        p.props.topic_alias = Some(3);
    }
    h.send(c, first);
    let mut second = publish("x", QoS::AtMostOnce, 1, b"2");
    if let Packet::Publish(p) = &mut second {
        p.topic = TopicName::alias_only();
        p.props.topic_alias = Some(3);
    }
    h.send(c, second);
    let got = publishes(&h.recv(sub));
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|p| p.topic.as_str() == "long/topic"));
    let mut bad = publish("y", QoS::AtMostOnce, 1, b"3");
    if let Packet::Publish(p) = &mut bad {
        p.props.topic_alias = Some(1000);
    }
    h.send(c, bad);
    assert!(h.is_closed(c));
    let last = h.recv(c);
    assert!(
        matches!(last.last(), Some(Packet::Disconnect(d)) if d.reason == ReasonCode::TOPIC_ALIAS_INVALID),
        "{last:?}"
    );
}

/// [MQTT-3.1.2-28] [MQTT-3.1.2-29] [MQTT-3.2.2-19] [MQTT-3.2.2-20] [MQTT-3.4.2-2]
/// [MQTT-3.4.2-3] [MQTT-3.5.2-2] [MQTT-3.5.2-3] [MQTT-3.6.2-2] [MQTT-3.6.2-3]
/// [MQTT-3.7.2-2] [MQTT-3.7.2-3] [MQTT-3.9.2-1] [MQTT-3.9.2-2] [MQTT-3.11.2-1]
/// [MQTT-3.11.2-2] [MQTT-3.14.2-3] [MQTT-3.14.2-4]: the broker never puts a Reason
/// String or User Property on anything but a forwarded PUBLISH, so a client that asks
/// for no problem information gets none, and no packet grows past its maximum by them.
// [MQTT-3.7.2-1] (PUBCOMP 0x92)
#[test]
fn v5_acknowledgements_carry_no_reason_strings_or_user_properties() {
    let mut h = H::new(1);
    let props = Properties {
        request_problem_information: Some(0),
        maximum_packet_size: Some(1024),
        ..Properties::default()
    };
    let (c, ack) = h.connect_with(0, connect5("quiet", true, props));
    let mut all = vec![Packet::ConnAck(ack)];
    subscribe_opts(&mut h, c, "t", SubOptions::qos(QoS::ExactlyOnce), 0);
    h.send(c, publish("t", QoS::AtLeastOnce, 1, b"1"));
    h.send(c, publish("t", QoS::ExactlyOnce, 2, b"2"));
    h.send(c, Packet::pubrel(pid(2)));
    h.send(c, Packet::pubrel(pid(77))); // unknown id: PUBCOMP 0x92
    h.send(
        c,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(3),
            filters: vec![
                TopicFilter::new("t").unwrap(),
                TopicFilter::new("u").unwrap(),
            ],
            props: Default::default(),
        }),
    );
    all.extend(h.recv(c));
    // A protocol error: the server's DISCONNECT carries no reason string either.
    h.send(c, Packet::Auth(Auth::default()));
    all.extend(h.recv(c));
    let mut names = Vec::new();
    for p in &all {
        names.push(p.name());
        let props = match p {
            Packet::ConnAck(a) => &a.props,
            Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
                &a.props
            }
            Packet::SubAck(s) => &s.props,
            Packet::UnsubAck(u) => &u.props,
            Packet::Disconnect(d) => &d.props,
            _ => continue,
        };
        assert!(props.reason_string.is_none(), "{p:?}");
        assert!(props.user_properties.is_empty(), "{p:?}");
    }
    for want in [
        "CONNACK",
        "PUBACK",
        "PUBREC",
        "PUBCOMP",
        "UNSUBACK",
        "DISCONNECT",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    // [MQTT-3.11.3-1]: one reason code per filter, in order; 0x11 for the unknown one.
    let unsuback = all.iter().find_map(|p| match p {
        Packet::UnsubAck(u) => Some(u.codes.clone()),
        _ => None,
    });
    assert_eq!(
        unsuback,
        Some(vec![
            ReasonCode::SUCCESS,
            ReasonCode::NO_SUBSCRIPTION_EXISTED
        ])
    );
    let comp_unknown = all.iter().any(
        |p| matches!(p, Packet::PubComp(a) if a.packet_id == pid(77) && a.reason == ReasonCode::PACKET_ID_NOT_FOUND),
    );
    assert!(comp_unknown, "{all:?}");
}

/// [MQTT-3.15.1-1] [MQTT-4.12.0-6]: no authentication method is offered, so CONNECT
/// with one is refused with 0x8C, and AUTH on a connection without one is a Protocol
/// Error (DISCONNECT 0x82).
#[test]
fn v5_authentication_method_refused_and_auth_is_a_protocol_error() {
    let mut h = H::new(1);
    let props = Properties {
        authentication_method: Some("SCRAM-SHA-1".into()),
        ..Properties::default()
    };
    let (c, ack) = h.connect_with(0, connect5("a", true, props));
    assert_eq!(ack.code, ReasonCode::BAD_AUTHENTICATION_METHOD);
    assert!(h.is_closed(c));
    let c = h
        .connect_with(0, connect5("b", true, Properties::default()))
        .0;
    h.send(c, Packet::Auth(Auth::default()));
    assert!(h.is_closed(c));
    let got = h.recv(c);
    assert!(
        matches!(got.last(), Some(Packet::Disconnect(d)) if d.reason == ReasonCode::PROTOCOL_ERROR),
        "{got:?}"
    );
}

/// [MQTT-3.14.2-2]: a DISCONNECT may not raise a Session Expiry Interval of 0.
#[test]
fn v5_disconnect_cannot_raise_session_expiry_from_zero() {
    let mut h = H::new(1);
    let c = h
        .connect_with(0, connect5("z", true, Properties::default()))
        .0;
    let mut d = Disconnect::default();
    d.props.session_expiry_interval = Some(60);
    h.send(c, Packet::Disconnect(d));
    assert!(h.is_closed(c));
    let got = h.recv(c);
    assert!(
        matches!(got.last(), Some(Packet::Disconnect(d)) if d.reason == ReasonCode::PROTOCOL_ERROR),
        "{got:?}"
    );
    assert_eq!(h.shards[0].stats().protocol_errors, 1);
    assert_eq!(h.shards[0].session_count(), 0);
}

/// [MQTT-3.8.3-4]: No Local on a shared subscription is a Protocol Error.
#[test]
fn v5_no_local_on_shared_subscription_is_a_protocol_error() {
    let mut h = H::new(1);
    let c = h
        .connect_with(0, connect5("nl", true, Properties::default()))
        .0;
    let opts = SubOptions {
        no_local: true,
        ..SubOptions::qos(QoS::AtMostOnce)
    };
    h.send(
        c,
        Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            filters: vec![(TopicFilter::new("$share/g/t").unwrap(), opts)],
            props: Default::default(),
        }),
    );
    assert!(h.is_closed(c));
    let got = h.recv(c);
    assert!(
        matches!(got.last(), Some(Packet::Disconnect(d)) if d.reason == ReasonCode::PROTOCOL_ERROR),
        "{got:?}"
    );
}

/// [MQTT-3.3.4-5]: a session with a plain and a shared subscription matching one
/// topic gets each copy with the identifier of the subscription it came through.
#[test]
fn v5_subscription_ids_follow_the_copy() {
    let mut h = H::new(1);
    let c = h
        .connect_with(0, connect5("both", true, Properties::default()))
        .0;
    subscribe_opts(&mut h, c, "a/#", SubOptions::qos(QoS::AtMostOnce), 1);
    subscribe_opts(
        &mut h,
        c,
        "$share/g/a/#",
        SubOptions::qos(QoS::AtMostOnce),
        2,
    );
    let p = h.connect(0, "p", true);
    h.send(p, publish("a/b", QoS::AtMostOnce, 1, b"x"));
    let got = publishes(&h.recv(c));
    let mut ids: Vec<Vec<u32>> = got
        .iter()
        .map(|p| p.props.subscription_identifiers.clone())
        .collect();
    ids.sort();
    assert_eq!(ids, vec![vec![1], vec![2]]);
}

/// [MQTT-3.3.2-7]: topic aliases belong to one connection: after a reconnect an
/// alias set before is unknown (Protocol Error).
#[test]
fn v5_topic_aliases_do_not_survive_the_connection() {
    let mut h = H::new(1);
    let props = Properties {
        session_expiry_interval: Some(60),
        ..Properties::default()
    };
    let c = h.connect_with(0, connect5("al", true, props.clone())).0;
    let mut set = publish("t/long", QoS::AtMostOnce, 1, b"1");
    if let Packet::Publish(p) = &mut set {
        p.props.topic_alias = Some(1);
    }
    h.send(c, set);
    h.send(c, Packet::disconnect());
    let c = h.connect_with(0, connect5("al", false, props)).0;
    let mut use_it = publish("x", QoS::AtMostOnce, 1, b"2");
    if let Packet::Publish(p) = &mut use_it {
        p.topic = TopicName::alias_only();
        p.props.topic_alias = Some(1);
    }
    h.send(c, use_it);
    assert!(h.is_closed(c));
}

/// 4.3.3: a PUBREC with a failure reason ends the QoS 2 flow: no PUBREL, and the
/// packet id is free again.
// [MQTT-4.4.0-2] [MQTT-4.3.3-4]
#[test]
fn v5_failed_pubrec_ends_the_flow() {
    let mut h = H::new(1);
    let c = h
        .connect_with(0, connect5("r", true, Properties::default()))
        .0;
    subscribe_opts(&mut h, c, "t", SubOptions::qos(QoS::ExactlyOnce), 0);
    let p = h.connect(0, "p", true);
    h.send(p, publish("t", QoS::ExactlyOnce, 1, b"x"));
    let got = publishes(&h.recv(c));
    let id = got[0].packet_id.unwrap();
    let mut rec = Ack::new(id);
    rec.reason = ReasonCode::UNSPECIFIED_ERROR;
    h.send(c, Packet::PubRec(rec));
    let after = h.recv(c);
    assert!(
        !after.iter().any(|p| matches!(p, Packet::PubRel(_))),
        "{after:?}"
    );
    let key = *h.shards[0].by_client.get("r").unwrap();
    assert!(h.shards[0].sessions[key].inflight.is_empty());
}

/// 3.2.2.3.14: with a broker keep-alive limit, an MQTT 5 client asking for more (or
/// for none) is told Server Keep Alive and held to it; a 3.1.1 client asking for more
/// is refused with 0x02.
#[test]
fn server_keep_alive_limits_the_client() {
    let cfg = Config {
        max_keep_alive_secs: 10,
        ..Config::default()
    };
    let mut h = H::with(1, cfg);
    let mut c = connect5("ka", true, Properties::default());
    c.keep_alive_secs = 0;
    let (conn, ack) = h.connect_with(0, c);
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    assert_eq!(ack.props.server_keep_alive, Some(10));
    h.advance(Duration::from_secs(14));
    assert!(!h.is_closed(conn));
    h.advance(Duration::from_secs(2));
    assert!(h.is_closed(conn), "held to 1.5 x the server keep alive");
    let mut old = connect("old", true);
    old.keep_alive_secs = 60;
    let (_, ack) = h.connect_with(0, old);
    assert_eq!(ack.code, ReasonCode::CLIENT_ID_NOT_VALID);
    let mut ok = connect("ok", true);
    ok.keep_alive_secs = 5;
    let (_, ack) = h.connect_with(0, ok);
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    assert_eq!(ack.props.server_keep_alive, None);
}

// ---- Statements of MQTT 5 not covered above (issue 4, docs/conformance-5.md) ----

fn publish5(topic: &str, qos: QoS, id: u16, payload: &'static [u8], props: Properties) -> Packet {
    let mut p = publish(topic, qos, id, payload);
    if let Packet::Publish(p) = &mut p {
        p.props = props.into();
    }
    p
}

fn ack_with(id: PacketId, reason: ReasonCode) -> Ack {
    let mut a = Ack::new(id);
    a.reason = reason;
    a
}

fn last_disconnect(got: &[Packet]) -> Option<ReasonCode> {
    match got.last() {
        Some(Packet::Disconnect(d)) => Some(d.reason),
        _ => None,
    }
}

/// Decodes raw MQTT 5 bytes as the runtime does; they must be refused.
fn decode_fails(bytes: &[u8]) -> crate::protocol::CodecError {
    let mut buf = BytesMut::from(bytes);
    match decode_one_v(&mut buf, usize::MAX, ProtocolVersion::V5) {
        Err(e) => e,
        Ok(p) => panic!("{bytes:02x?} decoded as {p:?}"),
    }
}

/// Ill-formed packets on an MQTT 5 connection: the decoder refuses them and the
/// shard answers DISCONNECT with the reason, as the last packet, then closes.
/// [MQTT-1.5.7-1] user property strings; [MQTT-3.3.2-13] Response Topic and
/// [MQTT-3.3.2-19] Content Type are UTF-8; [MQTT-3.3.2-2] no wildcard in a topic
/// name (0x90); [MQTT-3.8.3-5] reserved subscription option bits and Retain Handling
/// 3; [MQTT-3.15.1-1] AUTH flags; [MQTT-3.15.2-1] AUTH reason codes; [MQTT-3.14.1-1]
/// DISCONNECT flags (0x81); [MQTT-4.13.1-1] close on malformed packets;
/// [MQTT-3.14.4-1] [MQTT-3.14.4-2] nothing after DISCONNECT, then close.
#[test]
fn v5_malformed_packets_get_disconnect_with_reason() {
    let malformed = ReasonCode::MALFORMED_PACKET;
    let cases: Vec<(&str, Vec<u8>, ReasonCode)> = vec![
        (
            "user property key with U+0000",
            vec![0x30, 0x0b, 0, 1, b't', 7, 0x26, 0, 1, 0, 0, 1, b'v'],
            malformed,
        ),
        (
            "user property value not UTF-8",
            vec![0x30, 0x0b, 0, 1, b't', 7, 0x26, 0, 1, b'k', 0, 1, 0xff],
            malformed,
        ),
        (
            "response topic not UTF-8",
            vec![0x30, 0x08, 0, 1, b't', 4, 0x08, 0, 1, 0xff],
            malformed,
        ),
        (
            "content type with a surrogate",
            vec![0x30, 0x0a, 0, 1, b't', 6, 0x03, 0, 3, 0xed, 0xa0, 0x80],
            malformed,
        ),
        (
            "wildcard in a topic name",
            vec![0x30, 0x06, 0, 3, b'a', b'/', b'+', 0],
            ReasonCode::TOPIC_NAME_INVALID,
        ),
        (
            "subscription option bits 6-7",
            vec![0x82, 0x07, 0, 1, 0, 0, 1, b'a', 0xc1],
            malformed,
        ),
        (
            "retain handling 3",
            vec![0x82, 0x07, 0, 1, 0, 0, 1, b'a', 0x31],
            malformed,
        ),
        ("AUTH with flag bits", vec![0xf1, 0x00], malformed),
        (
            "AUTH with a reason code it may not carry",
            vec![0xf0, 0x02, 0x80, 0x00],
            malformed,
        ),
        ("DISCONNECT with flag bits", vec![0xe1, 0x00], malformed),
    ];
    let mut h = H::new(1);
    for (i, (what, bytes, want)) in cases.into_iter().enumerate() {
        let err = decode_fails(&bytes);
        let c = h
            .connect_with(0, connect5(&format!("m{i}"), true, Properties::default()))
            .0;
        h.shards[0].decode_error(h.now, c.1, &err);
        assert!(h.is_closed(c), "{what}");
        let got = h.recv(c);
        assert_eq!(last_disconnect(&got), Some(want), "{what}: {got:?}");
    }
}

/// Malformed CONNECT at level 5: closed without CONNACK and without DISCONNECT
/// ([MQTT-3.14.0-1]: DISCONNECT only after a successful CONNACK; [MQTT-3.1.4-1]).
/// [MQTT-3.1.2-9]: Will flag 1 needs Will Properties, Topic and Payload;
/// [MQTT-3.1.2-19]: Password flag 1 needs a password.
#[test]
fn v5_malformed_connect_closes_without_any_answer() {
    let head = |flags: u8, rest: &[u8]| {
        let mut v = vec![
            0x10,
            (11 + rest.len()) as u8,
            0,
            4,
            b'M',
            b'Q',
            b'T',
            b'T',
            5,
        ];
        v.extend([flags, 0, 0, 0]);
        v.extend(rest);
        v
    };
    let cases = [
        ("will flag without will fields", head(0x06, &[0, 1, b'a'])),
        ("password flag without password", head(0x42, &[0, 1, b'a'])),
    ];
    let mut h = H::new(1);
    for (what, bytes) in cases {
        let err = decode_fails(&bytes);
        let c = h.open(0);
        h.v5.push(c);
        h.shards[0].decode_error(h.now, c.1, &err);
        assert!(h.is_closed(c), "{what}");
        assert!(h.recv(c).is_empty(), "{what}: nothing is sent");
    }
}

/// [MQTT-3.1.2-28] no Response Information (asked for or not); [MQTT-3.2.2-9] all QoS
/// supported, so no Maximum QoS; [MQTT-4.12.0-6] no Authentication Method in CONNACK
/// and no AUTH; [MQTT-3.9.2-1] [MQTT-3.9.2-2] SUBACK and [MQTT-3.6.2-2]
/// [MQTT-3.6.2-3] PUBREL carry no Reason String or User Property; [MQTT-3.6.2-1]
/// PUBREL codes 0x00 and 0x92; [MQTT-3.5.2-1] PUBREC 0x99; [MQTT-3.14.2-2] the
/// server's DISCONNECT has no Session Expiry Interval; [MQTT-3.14.4-1] it is the
/// last packet.
#[test]
fn v5_suback_pubrel_connack_and_disconnect_carry_only_allowed_properties() {
    let mut h = H::new(1);
    for rri in [None, Some(0), Some(1)] {
        let props = Properties {
            request_response_information: rri,
            request_problem_information: Some(0),
            session_expiry_interval: Some(60),
            ..Properties::default()
        };
        let (c, ack) = h.connect_with(0, connect5("q", true, props));
        assert!(ack.props.response_information.is_none(), "{rri:?}");
        assert!(ack.props.maximum_qos.is_none());
        assert!(ack.props.authentication_method.is_none());
        assert!(ack.props.authentication_data.is_none());
        assert!(ack.props.reason_string.is_none());
        h.send(c, Packet::disconnect());
    }
    let c = h
        .connect_with(0, connect5("q", true, Properties::default()))
        .0;
    h.send(
        c,
        Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            filters: vec![
                (
                    TopicFilter::new("t").unwrap(),
                    SubOptions::qos(QoS::ExactlyOnce),
                ),
                (
                    TopicFilter::new("u").unwrap(),
                    SubOptions::qos(QoS::AtMostOnce),
                ),
            ],
            props: Default::default(),
        }),
    );
    let mut all = h.recv(c);
    let p = h.connect(0, "p", true);
    h.send(p, publish("t", QoS::ExactlyOnce, 1, b"x"));
    let got = h.recv(c);
    let id = publishes(&got)[0].packet_id.unwrap();
    all.extend(got);
    h.send(c, Packet::pubrec(id));
    h.send(c, Packet::pubrec(pid(999))); // unknown: PUBREL 0x92
                                         // PUBLISH QoS 2 with an invalid UTF-8 payload flagged as UTF-8: PUBREC 0x99.
    let pfi = Properties {
        payload_format_indicator: Some(1),
        ..Properties::default()
    };
    h.send(c, publish5("v", QoS::ExactlyOnce, 5, b"\xff", pfi));
    all.extend(h.recv(c));
    h.send(c, Packet::Auth(Auth::default())); // protocol error: DISCONNECT 0x82
    all.extend(h.recv(c));
    assert!(matches!(all.last(), Some(Packet::Disconnect(_))), "{all:?}");
    let mut rels = Vec::new();
    let mut subacks = 0;
    for p in &all {
        let props = match p {
            Packet::SubAck(s) => {
                subacks += 1;
                assert_eq!(
                    s.codes,
                    vec![ReasonCode::GRANTED_QOS_2, ReasonCode::SUCCESS]
                );
                &s.props
            }
            Packet::PubRel(a) => {
                rels.push((a.packet_id, a.reason));
                &a.props
            }
            Packet::PubRec(a) => {
                assert_eq!(
                    (a.packet_id, a.reason),
                    (pid(5), ReasonCode::PAYLOAD_FORMAT_INVALID)
                );
                &a.props
            }
            Packet::Disconnect(d) => {
                assert!(d.props.session_expiry_interval.is_none(), "{d:?}");
                &d.props
            }
            Packet::Auth(_) => panic!("AUTH sent without a method: {all:?}"),
            _ => continue,
        };
        assert!(props.reason_string.is_none(), "{p:?}");
        assert!(props.user_properties.is_empty(), "{p:?}");
    }
    assert_eq!(subacks, 1);
    assert_eq!(
        rels,
        vec![
            (id, ReasonCode::SUCCESS),
            (pid(999), ReasonCode::PACKET_ID_NOT_FOUND)
        ]
    );
}

/// [MQTT-4.3.3-9]: after a PUBREC with a failure code the same packet id starts a
/// new message. [MQTT-4.3.3-13]: the receiver completes a QoS 2 flow even if the
/// message expired meanwhile.
#[test]
fn v5_qos2_receiver_after_failed_pubrec_and_after_expiry() {
    let mut h = H::new(1);
    let s = h.connect(0, "s", true);
    h.subscribe(s, "t", QoS::ExactlyOnce);
    let c = h
        .connect_with(0, connect5("c", true, Properties::default()))
        .0;
    let pfi = Properties {
        payload_format_indicator: Some(1),
        ..Properties::default()
    };
    h.send(c, publish5("t", QoS::ExactlyOnce, 7, b"\xff", pfi.clone()));
    let got = h.recv(c);
    assert!(
        matches!(&got[..], [Packet::PubRec(a)] if a.reason == ReasonCode::PAYLOAD_FORMAT_INVALID),
        "{got:?}"
    );
    h.send(c, publish5("t", QoS::ExactlyOnce, 7, b"ok", pfi));
    let got = h.recv(c);
    assert!(
        matches!(&got[..], [Packet::PubRec(a)] if a.reason == ReasonCode::SUCCESS),
        "a new message: {got:?}"
    );
    h.send(c, Packet::pubrel(pid(7)));
    assert!(matches!(&h.recv(c)[..], [Packet::PubComp(a)] if a.reason == ReasonCode::SUCCESS));
    let delivered = publishes(&h.recv(s));
    assert_eq!(delivered.len(), 1, "only the good one: {delivered:?}");
    assert_eq!(&delivered[0].payload[..], b"ok");
    // Expiry 1 s, PUBREL 5 s later: still PUBCOMP 0x00.
    let exp = Properties {
        message_expiry_interval: Some(1),
        ..Properties::default()
    };
    h.send(c, publish5("t", QoS::ExactlyOnce, 8, b"e", exp));
    assert!(matches!(&h.recv(c)[..], [Packet::PubRec(a)] if a.reason == ReasonCode::SUCCESS));
    h.advance(Duration::from_secs(5));
    h.send(c, Packet::pubrel(pid(8)));
    let got = h.recv(c);
    assert!(
        matches!(&got[..], [Packet::PubComp(a)] if a.packet_id == pid(8) && a.reason == ReasonCode::SUCCESS),
        "{got:?}"
    );
}

/// [MQTT-4.3.3-7]: a QoS 2 message already sent is not expired: it is resent on
/// reconnect even after its Message Expiry Interval passed.
#[test]
fn v5_sent_qos2_message_is_resent_after_its_expiry() {
    let mut h = H::new(1);
    let props = Properties {
        session_expiry_interval: Some(1000),
        ..Properties::default()
    };
    let s = h.connect_with(0, connect5("s", true, props.clone())).0;
    subscribe_opts(&mut h, s, "t", SubOptions::qos(QoS::ExactlyOnce), 0);
    let p = h
        .connect_with(0, connect5("p", true, Properties::default()))
        .0;
    let exp = Properties {
        message_expiry_interval: Some(5),
        ..Properties::default()
    };
    h.send(p, publish5("t", QoS::ExactlyOnce, 1, b"m", exp));
    let first = publishes(&h.recv(s));
    assert_eq!(first.len(), 1);
    h.shards[0].closed(h.now, s.1);
    h.advance(Duration::from_secs(30));
    let s = h.connect_with(0, connect5("s", false, props)).0;
    let again = publishes(&h.recv(s));
    assert_eq!(again.len(), 1, "resent although expired: {again:?}");
    assert!(again[0].dup);
    assert_eq!(again[0].packet_id, first[0].packet_id);
}

/// [MQTT-4.4.0-2]: a PUBACK or PUBREC with a failure code acknowledges the message:
/// it is not sent again, not even on a resumed session.
#[test]
fn v5_failed_puback_and_pubrec_are_not_retransmitted() {
    let mut h = H::new(1);
    let props = Properties {
        session_expiry_interval: Some(1000),
        ..Properties::default()
    };
    let s = h.connect_with(0, connect5("s", true, props.clone())).0;
    subscribe_opts(&mut h, s, "t", SubOptions::qos(QoS::ExactlyOnce), 0);
    let p = h.connect(0, "p", true);
    h.send(p, publish("t", QoS::AtLeastOnce, 1, b"1"));
    h.send(p, publish("t", QoS::ExactlyOnce, 2, b"2"));
    let got = publishes(&h.recv(s));
    assert_eq!(got.len(), 2);
    let failed = ReasonCode::UNSPECIFIED_ERROR;
    h.send(
        s,
        Packet::PubAck(ack_with(got[0].packet_id.unwrap(), failed)),
    );
    h.send(
        s,
        Packet::PubRec(ack_with(got[1].packet_id.unwrap(), failed)),
    );
    assert!(h.recv(s).is_empty(), "no PUBREL after a failed PUBREC");
    h.shards[0].closed(h.now, s.1);
    let (s, ack) = h.connect_with(0, connect5("s", false, props));
    assert!(ack.session_present);
    assert!(h.recv(s).is_empty(), "nothing resent");
}

/// [MQTT-3.1.2-26] [MQTT-3.3.2-11]: aliases towards a client stay within its Topic
/// Alias Maximum; [MQTT-3.1.2-27]: none to a client that set none.
#[test]
fn v5_outbound_topic_aliases_respect_the_clients_maximum() {
    let mut h = H::new(1);
    let two = Properties {
        topic_alias_maximum: Some(2),
        ..Properties::default()
    };
    let a = h.connect_with(0, connect5("a", true, two)).0;
    subscribe_opts(&mut h, a, "t/#", SubOptions::qos(QoS::AtMostOnce), 0);
    let b = h
        .connect_with(0, connect5("b", true, Properties::default()))
        .0;
    subscribe_opts(&mut h, b, "t/#", SubOptions::qos(QoS::AtMostOnce), 0);
    let p = h.connect(0, "p", true);
    for _ in 0..2 {
        for t in ["t/1", "t/2", "t/3", "t/4"] {
            h.send(p, publish(t, QoS::AtMostOnce, 1, b"x"));
        }
    }
    let got_a = publishes(&h.recv(a));
    assert_eq!(got_a.len(), 8);
    let aliases: Vec<u16> = got_a.iter().filter_map(|p| p.props.topic_alias).collect();
    assert!(!aliases.is_empty(), "aliases are used");
    assert!(aliases.iter().all(|&n| (1..=2).contains(&n)), "{aliases:?}");
    let got_b = publishes(&h.recv(b));
    assert_eq!(got_b.len(), 8);
    assert!(got_b
        .iter()
        .all(|p| p.props.topic_alias.is_none() && !p.topic.as_str().is_empty()));
}

/// [MQTT-4.8.2-3]: a shared member gets the QoS it was granted. [MQTT-4.8.2-4]: a
/// QoS 2 message sent to a member that disconnects is completed with that member
/// when it comes back, and not given to another one.
#[test]
fn shared_member_granted_qos_and_qos2_stays_with_the_member() {
    let mut h = H::new(2);
    let m0 = h
        .connect_with(0, connect5("m0", true, Properties::default()))
        .0;
    subscribe_opts(
        &mut h,
        m0,
        "$share/g/q0",
        SubOptions::qos(QoS::AtMostOnce),
        0,
    );
    let p = h.connect(1, "p", true);
    h.send(p, publish("q0", QoS::ExactlyOnce, 1, b"x"));
    let got = publishes(&h.recv(m0));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].qos, QoS::AtMostOnce, "granted QoS 0");

    let props = Properties {
        session_expiry_interval: Some(100),
        ..Properties::default()
    };
    let a = h.connect_with(0, connect5("a", true, props.clone())).0;
    subscribe_opts(
        &mut h,
        a,
        "$share/g2/q2",
        SubOptions::qos(QoS::ExactlyOnce),
        0,
    );
    h.send(p, publish("q2", QoS::ExactlyOnce, 2, b"y"));
    let sent = publishes(&h.recv(a));
    assert_eq!(sent.len(), 1);
    let b = h
        .connect_with(1, connect5("b", true, Properties::default()))
        .0;
    subscribe_opts(
        &mut h,
        b,
        "$share/g2/q2",
        SubOptions::qos(QoS::ExactlyOnce),
        0,
    );
    h.shards[0].closed(h.now, a.1);
    h.settle();
    assert!(
        publishes(&h.recv(b)).is_empty(),
        "not given to another member"
    );
    let a = h.connect_with(0, connect5("a", false, props)).0;
    let again = publishes(&h.recv(a));
    assert_eq!(again.len(), 1, "{again:?}");
    assert!(again[0].dup);
    assert_eq!(again[0].packet_id, sent[0].packet_id);
    h.send(a, Packet::pubrec(sent[0].packet_id.unwrap()));
    assert!(matches!(&h.recv(a)[..], [Packet::PubRel(_)]));
    h.send(a, Packet::pubcomp(sent[0].packet_id.unwrap()));
    assert!(publishes(&h.recv(b)).is_empty());
}

/// [MQTT-4.8.2-6]: a failure PUBACK/PUBREC from a shared member ends the message;
/// it is not sent to another member, not even when the member leaves.
#[test]
fn shared_member_failure_ack_is_not_sent_to_another_member() {
    let mut h = H::new(1);
    let a = h
        .connect_with(0, connect5("a", true, Properties::default()))
        .0;
    subscribe_opts(
        &mut h,
        a,
        "$share/g/t",
        SubOptions::qos(QoS::ExactlyOnce),
        0,
    );
    let p = h.connect(0, "p", true);
    h.send(p, publish("t", QoS::AtLeastOnce, 1, b"1"));
    h.send(p, publish("t", QoS::ExactlyOnce, 2, b"2"));
    let got = publishes(&h.recv(a));
    assert_eq!(got.len(), 2);
    let failed = ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR;
    h.send(
        a,
        Packet::PubAck(ack_with(got[0].packet_id.unwrap(), failed)),
    );
    h.send(
        a,
        Packet::PubRec(ack_with(got[1].packet_id.unwrap(), failed)),
    );
    let b = h
        .connect_with(0, connect5("b", true, Properties::default()))
        .0;
    subscribe_opts(
        &mut h,
        b,
        "$share/g/t",
        SubOptions::qos(QoS::ExactlyOnce),
        0,
    );
    h.shards[0].closed(h.now, a.1);
    h.settle();
    assert!(
        publishes(&h.recv(b)).is_empty(),
        "discarded, not redistributed"
    );
}

/// [MQTT-3.1.0-2]: a second CONNECT on MQTT 5 gets DISCONNECT 0x82. [MQTT-3.1.4-6]:
/// after a refused CONNECT nothing else is processed.
#[test]
fn v5_second_connect_and_packets_after_a_refused_connect() {
    let mut h = H::new(1);
    let c = h
        .connect_with(0, connect5("c", true, Properties::default()))
        .0;
    h.send(
        c,
        Packet::Connect(connect5("c", true, Properties::default())),
    );
    assert!(h.is_closed(c));
    assert_eq!(
        last_disconnect(&h.recv(c)),
        Some(ReasonCode::PROTOCOL_ERROR)
    );

    let w = h.connect(0, "w", true);
    h.subscribe(w, "t", QoS::AtMostOnce);
    let props = Properties {
        authentication_method: Some("X".into()),
        ..Properties::default()
    };
    let (r, ack) = h.connect_with(0, connect5("r", true, props));
    assert_eq!(ack.code, ReasonCode::BAD_AUTHENTICATION_METHOD);
    h.send(r, publish("t", QoS::AtMostOnce, 1, b"x"));
    h.send(r, Packet::PingReq);
    assert!(h.recv(r).is_empty());
    assert!(publishes(&h.recv(w)).is_empty(), "nothing processed");
}

/// [MQTT-3.3.4-10] [MQTT-4.9.0-3]: with the client's Receive Maximum used up, only
/// PUBLISH waits; PINGREQ, SUBSCRIBE, UNSUBSCRIBE are answered at once.
#[test]
fn v5_full_receive_window_delays_only_publish() {
    let mut h = H::new(1);
    let one = Properties {
        receive_maximum: Some(1),
        ..Properties::default()
    };
    let s = h.connect_with(0, connect5("s", true, one)).0;
    subscribe_opts(&mut h, s, "t", SubOptions::qos(QoS::AtLeastOnce), 0);
    let p = h.connect(0, "p", true);
    for i in 1..=3 {
        h.send(p, publish("t", QoS::AtLeastOnce, i, b"m"));
    }
    let got = publishes(&h.recv(s));
    assert_eq!(got.len(), 1, "window of one");
    h.send(s, Packet::PingReq);
    h.send(
        s,
        Packet::Subscribe(Subscribe {
            packet_id: pid(2),
            filters: vec![(
                TopicFilter::new("u").unwrap(),
                SubOptions::qos(QoS::AtLeastOnce),
            )],
            props: Default::default(),
        }),
    );
    h.send(
        s,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(3),
            filters: vec![TopicFilter::new("u").unwrap()],
            props: Default::default(),
        }),
    );
    let got2 = h.recv(s);
    assert!(
        matches!(
            &got2[..],
            [Packet::PingResp, Packet::SubAck(_), Packet::UnsubAck(_)]
        ),
        "{got2:?}"
    );
    h.send(s, Packet::puback(got[0].packet_id.unwrap()));
    assert_eq!(publishes(&h.recv(s)).len(), 1, "the next one after PUBACK");
}

/// [MQTT-3.9.3-2]: SUBACK failure codes at level 5: 0x8F for an invalid share name
/// ([MQTT-4.8.2-1] [MQTT-4.8.2-2]) and 0x97 beyond the subscription limit.
#[test]
fn v5_suback_failure_codes() {
    let cfg = Config {
        max_subscriptions_per_session: 1,
        ..Config::default()
    };
    let mut h = H::with(1, cfg);
    let c = h
        .connect_with(0, connect5("c", true, Properties::default()))
        .0;
    let mut filters = vec![(
        TopicFilter::new("a").unwrap(),
        SubOptions::qos(QoS::AtLeastOnce),
    )];
    let mut want = vec![ReasonCode::GRANTED_QOS_1];
    for bad in ["$share//t", "$share/g+/t", "$share/g#/t", "$share/g"] {
        if let Ok(f) = TopicFilter::new(bad) {
            filters.push((f, SubOptions::qos(QoS::AtLeastOnce)));
            want.push(ReasonCode::TOPIC_FILTER_INVALID);
        }
    }
    assert!(
        want.len() >= 3,
        "the codec keeps some bad share names: {want:?}"
    );
    filters.push((
        TopicFilter::new("b").unwrap(),
        SubOptions::qos(QoS::AtLeastOnce),
    ));
    want.push(ReasonCode::QUOTA_EXCEEDED);
    h.send(
        c,
        Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            filters,
            props: Default::default(),
        }),
    );
    let got = h.recv(c);
    assert!(
        matches!(&got[..], [Packet::SubAck(s)] if s.codes == want),
        "{got:?}"
    );
}

/// [MQTT-3.1.3-10]: the will keeps the order of its User Properties.
#[test]
fn v5_will_user_properties_keep_their_order() {
    let mut h = H::new(1);
    let w = h
        .connect_with(0, connect5("w", true, Properties::default()))
        .0;
    subscribe_opts(&mut h, w, "will", SubOptions::qos(QoS::AtMostOnce), 0);
    let order: Vec<(bytestring::ByteString, bytestring::ByteString)> =
        [("b", "1"), ("a", "2"), ("b", "3"), ("c", "0")]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
    let mut c = connect5("dev", true, Properties::default());
    c.will = Some(Will {
        topic: TopicName::new("will").unwrap(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        props: Properties {
            user_properties: order.clone(),
            ..Properties::default()
        }
        .into(),
    });
    let dev = h.connect_with(0, c).0;
    h.shards[0].closed(h.now, dev.1);
    h.settle();
    let got = publishes(&h.recv(w));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].props.user_properties, order);
}

/// [MQTT-3.1.3-6] [MQTT-3.2.2-16]: an assigned client id is one no client holds,
/// even a client that chose an id of the assigned form itself.
#[test]
fn v5_assigned_client_id_never_takes_over_a_chosen_one() {
    let mut h = H::new(1);
    let squatter = h
        .connect_with(0, connect5("ternmq-auto-0-1", true, Properties::default()))
        .0;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (c, ack) = h.connect_with(0, connect5("", true, Properties::default()));
        assert_eq!(ack.code, ReasonCode::SUCCESS);
        let id = ack
            .props
            .assigned_client_identifier
            .clone()
            .expect("assigned id");
        assert!(!h.is_closed(c));
        ids.push(id.to_string());
    }
    assert!(!h.is_closed(squatter), "not taken over");
    assert!(!ids.contains(&"ternmq-auto-0-1".to_string()), "{ids:?}");
    ids.dedup();
    assert_eq!(ids.len(), 3);
}

/// [MQTT-3.1.2-24] [MQTT-3.1.2-25]: an in-flight message resent on a resumed
/// session is not sent if it exceeds the new connection's Maximum Packet Size; it
/// counts as delivered.
#[test]
fn v5_resent_message_respects_the_new_maximum_packet_size() {
    // At QoS 1 and QoS 2: the flow ends either way, none is left in flight forever.
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let mut h = H::new(1);
        let props = Properties {
            session_expiry_interval: Some(100),
            ..Properties::default()
        };
        let s = h.connect_with(0, connect5("s", true, props.clone())).0;
        subscribe_opts(&mut h, s, "t", SubOptions::qos(qos), 0);
        let p = h.connect(0, "p", true);
        h.send(p, publish("t", qos, 1, &[b'x'; 200]));
        assert_eq!(publishes(&h.recv(s)).len(), 1);
        h.shards[0].closed(h.now, s.1);
        let small = Properties {
            maximum_packet_size: Some(64),
            ..props
        };
        let s = h.connect_with(0, connect5("s", false, small)).0;
        assert!(publishes(&h.recv(s)).is_empty(), "too large to resend");
        let key = *h.shards[0].by_client.get("s").unwrap();
        assert!(
            h.shards[0].sessions[key].inflight.is_empty(),
            "as if delivered ({qos:?})"
        );
    }
}

/// [MQTT-3.1.2-24]: a SUBACK longer than the client's Maximum Packet Size (one code
/// per filter) is not sent.
#[test]
fn v5_suback_larger_than_the_maximum_packet_size_is_not_sent() {
    let mut h = H::new(1);
    let small = Properties {
        maximum_packet_size: Some(16),
        ..Properties::default()
    };
    let c = h.connect_with(0, connect5("c", true, small)).0;
    let sub = |n: usize| {
        Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            filters: (0..n)
                .map(|i| {
                    let f = TopicFilter::new(format!("f/{i}")).unwrap();
                    (f, SubOptions::qos(QoS::AtMostOnce))
                })
                .collect(),
            props: Default::default(),
        })
    };
    h.send(c, sub(5)); // 2 + 2 + 1 + 5 = 10 bytes: sent
    assert!(matches!(&h.recv(c)[..], [Packet::SubAck(_)]));
    h.send(c, sub(20)); // 25 bytes: too large
    assert!(h.recv(c).is_empty());
    assert!(!h.is_closed(c));
}

/// [MQTT-3.2.2-12] [MQTT-3.2.2-13]: ternmq supports QoS 2 and retained messages, so
/// a will at QoS 2 with Will Retain 1 is accepted (no 0x9B/0x9A) and published so.
#[test]
fn v5_will_at_qos2_and_retained_is_accepted() {
    let mut h = H::new(1);
    let mut c = connect5("dev", true, Properties::default());
    c.will = Some(Will {
        topic: TopicName::new("will/r").unwrap(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::ExactlyOnce,
        retain: true,
        props: Properties::default().into(),
    });
    let (dev, ack) = h.connect_with(0, c);
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    h.shards[0].closed(h.now, dev.1);
    h.settle();
    let w = h
        .connect_with(0, connect5("w", true, Properties::default()))
        .0;
    h.send(
        w,
        Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            filters: vec![(
                TopicFilter::new("will/#").unwrap(),
                SubOptions::qos(QoS::ExactlyOnce),
            )],
            props: Default::default(),
        }),
    );
    let got = publishes(&h.recv(w));
    assert_eq!(got.len(), 1, "the will was kept as retained: {got:?}");
    assert!(got[0].retain);
    assert_eq!(got[0].qos, QoS::ExactlyOnce);
}

/// `persistent_session_expiry_secs`: an offline 3.1.1 persistent session goes after
/// that long, counted; with the default (0) it stays.
#[test]
fn persistent_v311_session_expires_when_configured() {
    let cfg = Config {
        persistent_session_expiry_secs: 60,
        ..Config::default()
    };
    let mut h = H::with(1, cfg);
    let c = h.connect(0, "old", false);
    h.subscribe(c, "t", QoS::AtLeastOnce);
    h.shards[0].closed(h.now, c.1);
    h.advance(Duration::from_secs(30));
    assert_eq!(h.shards[0].session_count(), 1);
    let back = h.connect_with(0, connect("old", false)).1;
    assert!(back.session_present, "resumed within the expiry");
    let c = (
        0,
        h.shards[0].sessions.iter().next().unwrap().1.conn.unwrap(),
    );
    h.shards[0].closed(h.now, c.1);
    h.advance(Duration::from_secs(61));
    assert_eq!(h.shards[0].session_count(), 0, "expired");
    assert_eq!(h.shards[0].stats().sessions_expired, 1);

    let mut h = H::new(1);
    let c = h.connect(0, "kept", false);
    h.shards[0].closed(h.now, c.1);
    h.advance(Duration::from_secs(86_400));
    assert_eq!(h.shards[0].session_count(), 1, "never by default");
}

#[test]
fn a_flushed_write_buffer_goes_to_the_pool_and_serves_the_next_write() {
    let mut h = H::new(1);
    let c = h.connect(0, "a", true);
    h.send(c, Packet::PingReq);
    let shard = &mut h.shards[0];
    assert_eq!(shard.tx_len(c.1), 2, "PINGRESP");
    let cap = shard.conn(c.1).map_or(0, |k| k.tx.capacity());
    assert!(cap >= 2);
    // The runtime wrote everything: the connection gives its buffer back.
    shard.recycle_tx(c.1);
    assert_eq!(
        shard.conn(c.1).map(|k| k.tx.capacity()),
        Some(0),
        "idle: no buffer"
    );
    assert_eq!(shard.tx_pool.len(), 1);
    h.send(c, Packet::PingReq);
    let shard = &mut h.shards[0];
    assert_eq!(
        shard.tx_pool.len(),
        0,
        "the next write took the pooled buffer"
    );
    assert_eq!(shard.tx_len(c.1), 2);
    assert_eq!(shard.conn(c.1).map(|k| k.tx.capacity()), Some(cap));
    // Oversized buffers are freed, not pooled.
    if let Some(tx) = shard.tx_mut(c.1) {
        tx.reserve(128 * 1024);
    }
    shard.recycle_tx(c.1);
    assert_eq!(shard.tx_pool.len(), 0);
}
