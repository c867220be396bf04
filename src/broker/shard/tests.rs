//! Scenario tests of the shard alone: packets in, bytes out, on a virtual clock.

use super::Shard;
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
        let batch = std::mem::take(&mut self.shards[from].effects().mesh[to]);
        self.shards[to].mesh(self.now, from, batch);
    }

    /// Delivers mesh batches until none are left and collects closes.
    fn settle(&mut self) {
        loop {
            let mut moved = false;
            for from in 0..self.shards.len() {
                let closes = std::mem::take(&mut self.shards[from].effects().close);
                self.closed
                    .extend(closes.into_iter().map(|(id, tx)| ((from, id), tx)));
                for to in 0..self.shards.len() {
                    let batch = std::mem::take(&mut self.shards[from].effects().mesh[to]);
                    if !batch.is_empty() {
                        moved = true;
                        self.shards[to].mesh(self.now, from, batch);
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

fn published(p: &Packet) -> &Publish {
    match p {
        Packet::Publish(p) => p,
        p => panic!("expected PUBLISH, got {p:?}"),
    }
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
    c.will = Some(Will {
        topic: TopicName::new("wills/dying").unwrap(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        props: Default::default(),
    });
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
    c.will = Some(Will {
        topic: TopicName::new("wills/ka").unwrap(),
        payload: Bytes::from_static(b"timeout"),
        qos: QoS::AtMostOnce,
        retain: false,
        props: Default::default(),
    });
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
    let got = h.recv(sub);
    let payloads: Vec<_> = got.iter().map(|p| published(p).payload.clone()).collect();
    assert_eq!(
        payloads,
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
    assert!(
        h.shards[1]
            .sessions
            .iter()
            .all(|(_, s)| s.moved_in.is_none()),
        "settled"
    );
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
