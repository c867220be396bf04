//! Fuzz target bodies. They need only `ternmq` and `bytes`, so the main crate's
//! `tests/fuzz_loop.rs` includes this file by path and runs the same targets in a
//! bounded loop under `cargo test`.
//!
//! - [`decode`]: the first byte picks the protocol version, the rest is decoded packet
//!   after packet; every packet accepted must re-encode and decode to itself, and the
//!   broker's fast paths (`take_plain_publish`, `take_short_ack`) must take only what
//!   the decoder accepts, as the same packet.
//! - [`session`]: the input is a script of operations on two shards (open, feed bytes,
//!   close, advance the clock, deliver the mesh); nothing may panic, and every byte
//!   the broker writes to a connection must decode in that connection's version.
//! - [`seeds`]: valid encodings of every packet type in both versions (the corpus).
//! - [`mutate`]: a small byte mutator for the plain loop.

use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::time::{Duration, Instant};
use ternmq::broker::registry::Registry;
use ternmq::broker::shard::Shard;
use ternmq::broker::ConnId;
use ternmq::config::Config;
use ternmq::protocol::{
    decode_one_v, encode_packet_v, take_plain_publish, take_short_ack, Ack, Auth, ConnAck, Connect,
    Disconnect, Packet, PacketId, Properties, Props, ProtocolVersion, Publish, QoS, ReasonCode,
    RetainHandling, SubAck, SubOptions, Subscribe, TopicFilter, TopicName, UnsubAck, Unsubscribe,
    Will,
};

/// Packets decoded per input at most.
const PACKETS_MAX: usize = 256;
/// Operations of one session script at most.
const OPS_MAX: usize = 512;
/// Connections of one session script at most.
const CONNS_MAX: usize = 16;

fn version_of(b: u8) -> ProtocolVersion {
    match b % 3 {
        0 => ProtocolVersion::V3_1_1,
        1 => ProtocolVersion::V5,
        _ => ProtocolVersion::V3_1,
    }
}

/// Decoder target: `data[0]` picks the version; the rest is a stream of packets.
pub fn decode(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let version = version_of(sel);
    let max = if sel & 0x80 != 0 { 64 } else { usize::MAX };
    let mut buf = BytesMut::from(rest);
    for _ in 0..PACKETS_MAX {
        // The broker's fast path must take exactly what the decoder decodes.
        let mut taken = buf.clone();
        let fast = take_plain_publish(&mut taken, max, version).map(Packet::Publish);
        let mut acked = buf.clone();
        let ack = take_short_ack(&mut acked, max);
        match decode_one_v(&mut buf, max, version) {
            Ok(Some(p)) => {
                if let Some(f) = fast {
                    assert_eq!(f, p, "take_plain_publish differs");
                    assert_eq!(taken, buf, "take_plain_publish took other bytes");
                }
                if let Some(a) = ack {
                    assert_eq!(a, p, "take_short_ack differs");
                    assert_eq!(acked, buf, "take_short_ack took other bytes");
                }
                round_trip(&p, version)
            }
            Ok(None) | Err(_) => {
                assert!(
                    fast.is_none(),
                    "take_plain_publish took what the decoder refuses"
                );
                assert!(
                    ack.is_none(),
                    "take_short_ack took what the decoder refuses"
                );
                return;
            }
        }
    }
}

/// A decoded packet encodes (in its own version: a CONNECT names it) and decodes to
/// itself.
fn round_trip(p: &Packet, version: ProtocolVersion) {
    let version = match p {
        Packet::Connect(c) => c.version,
        _ => version,
    };
    let mut out = Vec::new();
    encode_packet_v(p, version, &mut out);
    let mut buf = BytesMut::from(&out[..]);
    let again = decode_one_v(&mut buf, usize::MAX, version);
    match again {
        Ok(Some(q)) => assert_eq!(&q, p, "re-decoded packet differs ({version:?})"),
        other => panic!("re-encoded {p:?} as {out:?} does not decode: {other:?}"),
    }
    assert!(buf.is_empty(), "re-encoding left {} bytes", buf.len());
}

/// Session target: a script of operations, one byte of opcode each plus operands.
pub fn session(data: &[u8]) {
    let mut h = Harness::new();
    let mut r = Reader(data);
    for _ in 0..OPS_MAX {
        let Some(op) = r.byte() else { break };
        match op % 8 {
            0 => h.open(op >> 3),
            1 => {
                let conn = r.byte().unwrap_or(0);
                let len = usize::from(r.byte().unwrap_or(0));
                let bytes = r.take(len);
                h.feed(conn, bytes);
            }
            2 => {
                // A valid CONNECT, to reach the states behind it often.
                let conn = r.byte().unwrap_or(0);
                let flags = r.byte().unwrap_or(0);
                let mut c = connect("", flags & 1 == 1);
                c.client_id = format!("c{}", (flags >> 1) % 4).into();
                c.version = version_of(flags >> 3);
                if flags & 0x40 != 0 {
                    c.will = Some(will());
                }
                let mut out = Vec::new();
                let v = c.version;
                encode_packet_v(&Packet::Connect(Box::new(c)), v, &mut out);
                h.feed(conn, &out);
            }
            3 => h.close(r.byte().unwrap_or(0)),
            4 => h.advance(Duration::from_millis(
                u64::from(r.byte().unwrap_or(0)) * 100,
            )),
            5 => h.deliver_mesh(op >> 3),
            6 => {
                // A valid packet from the seeds, in the connection's version.
                let conn = r.byte().unwrap_or(0);
                let which = usize::from(r.byte().unwrap_or(0));
                h.feed_seed(conn, which);
            }
            _ => h.flush_all(),
        }
        h.effects();
    }
    h.advance(Duration::from_secs(3600));
    h.effects();
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

/// One client connection as the runtime would hold it.
struct Client {
    shard: usize,
    id: ConnId,
    buf: BytesMut,
}

struct Harness {
    shards: Vec<Shard>,
    now: Instant,
    conns: Vec<Client>,
    next_slot: u32,
}

impl Harness {
    fn new() -> Harness {
        let cfg = Arc::new(Config {
            // `$SYS` is off: merging and summarising the latency histograms costs
            // milliseconds per tick and depends on no input.
            sys_interval_secs: 0,
            max_inflight: 4,
            max_queued_messages: 8,
            max_queued_bytes: 4096,
            max_subscriptions_per_session: 8,
            max_topic_levels: 8,
            max_topic_bytes: 64,
            max_packet_bytes: 4096,
            max_outbound_bytes: 4096,
            ..Config::default()
        });
        let registry = Arc::new(Registry::new());
        let now = Instant::now();
        Harness {
            shards: (0..2)
                .map(|w| Shard::new(w, 2, cfg.clone(), registry.clone(), now))
                .collect(),
            now,
            conns: Vec::new(),
            next_slot: 0,
        }
    }

    fn open(&mut self, arg: u8) {
        if self.conns.len() >= CONNS_MAX {
            return;
        }
        self.next_slot += 1;
        let shard = usize::from(arg & 1);
        let id = ConnId {
            slot: self.next_slot,
            gen: 1,
        };
        self.shards[shard].open(self.now, id);
        self.conns.push(Client {
            shard,
            id,
            buf: BytesMut::new(),
        });
    }

    fn client(&mut self, n: u8) -> Option<usize> {
        (!self.conns.is_empty()).then(|| usize::from(n) % self.conns.len())
    }

    /// Bytes from the client; whole packets go to the shard as the runtime does it.
    fn feed(&mut self, n: u8, bytes: &[u8]) {
        let Some(i) = self.client(n) else { return };
        let c = &mut self.conns[i];
        let shard = &mut self.shards[c.shard];
        if !shard.is_open(c.id) {
            return;
        }
        c.buf.extend_from_slice(bytes);
        loop {
            let max = shard.packet_limit(c.id);
            match decode_one_v(&mut c.buf, max, shard.version(c.id)) {
                Ok(Some(p)) => {
                    shard.packet(self.now, c.id, p);
                    if !shard.is_open(c.id) {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    shard.decode_error(self.now, c.id, &e);
                    return;
                }
            }
        }
    }

    fn feed_seed(&mut self, n: u8, which: usize) {
        let Some(i) = self.client(n) else { return };
        let c = &self.conns[i];
        let version = self.shards[c.shard].version(c.id);
        let packets = client_packets();
        let p = &packets[which % packets.len()];
        let mut out = Vec::new();
        encode_packet_v(p, version, &mut out);
        self.feed(n, &out);
    }

    fn close(&mut self, n: u8) {
        let Some(i) = self.client(n) else { return };
        let c = self.conns.swap_remove(i);
        self.shards[c.shard].closed(self.now, c.id);
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        for s in &mut self.shards {
            s.tick(self.now);
        }
    }

    /// Delivers the batches of one direction (or both), as the mesh would.
    fn deliver_mesh(&mut self, arg: u8) {
        for from in 0..2 {
            if arg & 3 != 0 && usize::from(arg & 1) != from {
                continue;
            }
            let to = 1 - from;
            let mut batch = std::mem::take(&mut self.shards[from].effects().mesh[to]);
            if !batch.is_empty() {
                self.shards[to].mesh(self.now, from, &mut batch);
            }
        }
    }

    /// Takes every write buffer as the socket would and checks that it decodes.
    fn flush_all(&mut self) {
        for c in &self.conns {
            let shard = &mut self.shards[c.shard];
            let version = shard.version(c.id);
            let Some(tx) = shard.tx_mut(c.id) else {
                continue;
            };
            let mut out = BytesMut::from(&std::mem::take(tx)[..]);
            while !out.is_empty() {
                match decode_one_v(&mut out, usize::MAX, version) {
                    Ok(Some(_)) => {}
                    other => panic!("broker wrote undecodable bytes ({version:?}): {other:?}"),
                }
            }
        }
    }

    /// Carries out the effects that matter here: closes forget the connection;
    /// pauses, resumes and dirty marks are dropped (flushes are their own operation).
    fn effects(&mut self) {
        for s in &mut self.shards {
            let e = s.effects();
            e.dirty.clear();
            e.pause.clear();
            e.resume.clear();
            let closed: Vec<ConnId> = e.close.drain(..).map(|(id, _)| id).collect();
            let w = s.worker_id();
            self.conns
                .retain(|c| !(c.shard == w && closed.contains(&c.id)));
        }
    }
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap_or(PacketId::MIN)
}

fn topic(s: &str) -> TopicName {
    TopicName::new(s).expect("valid topic")
}

fn filter(s: &str) -> TopicFilter {
    TopicFilter::new(s).expect("valid filter")
}

fn props(p: Properties) -> Props {
    Props::new(p)
}

fn will() -> Will {
    Will {
        topic: topic("w/t"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: true,
        props: Props::default(),
    }
}

fn connect(id: &str, clean: bool) -> Connect {
    Connect {
        version: ProtocolVersion::V3_1_1,
        clean_session: clean,
        keep_alive_secs: 5,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        props: Props::default(),
    }
}

/// Packets a client sends after CONNECT, with the MQTT 5 properties that matter.
fn client_packets() -> Vec<Packet> {
    let publish = |qos: QoS, t: &str, id: u16, retain: bool, p: Properties| {
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic: topic(t),
            packet_id: (qos != QoS::AtMostOnce).then(|| pid(id)),
            payload: Bytes::from_static(b"payload"),
            props: props(p),
        })
    };
    let sub = |f: &str, qos: QoS, opts: u8| {
        let mut o = SubOptions::qos(qos);
        o.no_local = opts & 1 != 0;
        o.retain_as_published = opts & 2 != 0;
        o.retain_handling = match opts >> 2 {
            0 => RetainHandling::OnSubscribe,
            1 => RetainHandling::OnNewSubscription,
            _ => RetainHandling::Never,
        };
        Packet::Subscribe(Subscribe {
            packet_id: pid(u16::from(opts) + 1),
            filters: vec![(filter(f), o)],
            props: Props::default(),
        })
    };
    vec![
        publish(QoS::AtMostOnce, "a/b", 0, false, Properties::default()),
        publish(QoS::AtLeastOnce, "a/b", 1, false, Properties::default()),
        publish(QoS::ExactlyOnce, "a/c", 2, true, Properties::default()),
        publish(QoS::AtLeastOnce, "a/b", 3, true, Properties::default()),
        publish(
            QoS::AtLeastOnce,
            "a/b",
            4,
            false,
            Properties {
                topic_alias: Some(1),
                message_expiry_interval: Some(1),
                ..Properties::default()
            },
        ),
        sub("a/#", QoS::ExactlyOnce, 0),
        sub("a/+", QoS::AtLeastOnce, 6),
        sub("$share/g/a/b", QoS::AtLeastOnce, 0),
        sub("#", QoS::AtMostOnce, 1),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(9),
            filters: vec![filter("a/#"), filter("$share/g/a/b")],
            props: Props::default(),
        }),
        Packet::PubAck(Ack::new(pid(1))),
        Packet::PubRec(Ack::new(pid(1))),
        Packet::PubRel(Ack::new(pid(2))),
        Packet::PubComp(Ack::new(pid(1))),
        Packet::PingReq,
        Packet::Disconnect(Disconnect::new(ReasonCode::DISCONNECT_WITH_WILL)),
    ]
}

/// Valid encodings of every packet type, each as (version, bytes), for the corpus.
pub fn seeds() -> Vec<(ProtocolVersion, Vec<u8>)> {
    let mut all = client_packets();
    let mut c5 = connect("seed", false);
    c5.version = ProtocolVersion::V5;
    c5.will = Some(will());
    c5.username = Some("user".into());
    c5.password = Some(Bytes::from_static(b"pw"));
    c5.props = props(Properties {
        session_expiry_interval: Some(60),
        receive_maximum: Some(10),
        topic_alias_maximum: Some(4),
        ..Properties::default()
    });
    all.extend([
        Packet::Connect(Box::new(connect("seed", true))),
        Packet::Connect(Box::new(c5)),
        Packet::ConnAck(ConnAck::new(true, ReasonCode::SUCCESS)),
        Packet::SubAck(SubAck {
            packet_id: pid(1),
            codes: vec![ReasonCode::GRANTED_QOS_1, ReasonCode::UNSPECIFIED_ERROR],
            props: Props::default(),
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: pid(1),
            codes: vec![ReasonCode::SUCCESS],
            props: Props::default(),
        }),
        Packet::PingResp,
        Packet::Auth(Auth {
            reason: ReasonCode::CONTINUE_AUTHENTICATION,
            props: props(Properties {
                authentication_method: Some("m".into()),
                ..Properties::default()
            }),
        }),
    ]);
    let mut out = Vec::new();
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        for p in &all {
            if matches!(p, Packet::Auth(_)) && version != ProtocolVersion::V5 {
                continue;
            }
            let v = match p {
                Packet::Connect(c) => c.version,
                _ => version,
            };
            let mut bytes = Vec::new();
            encode_packet_v(p, v, &mut bytes);
            out.push((version, bytes));
        }
    }
    out
}

/// Session scripts for the corpus: two clients on different shards (MQTT 3.1.1 and
/// 5) connect, then each client packet type is sent, as raw bytes and as a seed op,
/// between clock steps, mesh deliveries and flushes.
pub fn session_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let packets = client_packets();
    for flags in [0u8, 1 << 3, 0x40 | 2] {
        let mut s = vec![0, 1, 2, 0, flags, 2, 1, flags ^ 1 ^ (1 << 3), 5, 7];
        for (k, p) in packets.iter().enumerate() {
            let version = version_of(flags >> 3);
            let mut bytes = Vec::new();
            encode_packet_v(p, version, &mut bytes);
            if bytes.len() <= 255 {
                s.extend([1, 0, bytes.len() as u8]);
                s.extend(bytes);
            }
            s.extend([6, 1, k as u8, 5, 7]);
        }
        s.extend([4, 30, 5, 7, 3, 0, 4, 100, 5]);
        out.push(s);
    }
    out
}

/// One mutation of `input` driven by `rng` (xorshift state): flip, set, insert,
/// delete, duplicate or splice bytes.
pub fn mutate(rng: &mut u64, input: &mut Vec<u8>, other: &[u8]) {
    let mut next = || {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng
    };
    let len = input.len();
    match next() % 7 {
        0 if len > 0 => {
            let i = (next() as usize) % len;
            input[i] ^= 1 << (next() % 8);
        }
        1 if len > 0 => {
            let i = (next() as usize) % len;
            input[i] = [0, 1, 0x7f, 0x80, 0xff, next() as u8][(next() % 6) as usize];
        }
        2 => {
            let i = (next() as usize) % (len + 1);
            input.insert(i, next() as u8);
        }
        3 if len > 0 => {
            let i = (next() as usize) % len;
            let n = 1 + (next() as usize) % (len - i).min(8);
            input.drain(i..i + n);
        }
        4 if len > 0 => {
            let i = (next() as usize) % len;
            let n = 1 + (next() as usize) % (len - i).min(16);
            let chunk = input[i..i + n].to_vec();
            input.splice(i..i, chunk);
        }
        5 if !other.is_empty() => {
            let i = (next() as usize) % (len + 1);
            let j = (next() as usize) % other.len();
            let n = 1 + (next() as usize) % (other.len() - j);
            input.splice(i..i, other[j..j + n].iter().copied());
        }
        _ if len > 1 => {
            input.truncate(1 + (next() as usize) % (len - 1));
        }
        _ => input.push(next() as u8),
    }
    if input.len() > 64 * 1024 {
        input.truncate(64 * 1024);
    }
}
