//! Shared helpers for the integration tests: an in-process broker on an ephemeral
//! port, a raw-bytes client for malformed input, and an independent client (rumqttc).
#![allow(dead_code)]

use bytes::Bytes;
use bytes::BytesMut;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use ternmq::config::Config;
use ternmq::protocol::{
    decode_one_v, encode_packet_v, Connect, Packet, PacketId, ProtocolVersion, Publish, QoS,
    TopicName,
};
use ternmq::runtime::{start, BrokerHandle};

/// How long a test waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(5);

/// A broker on 127.0.0.1 with an ephemeral port and `workers` unpinned workers.
pub fn broker(workers: usize) -> BrokerHandle {
    broker_with(workers, |_| {})
}

pub fn broker_with(workers: usize, tweak: impl FnOnce(&mut Config)) -> BrokerHandle {
    let mut cfg = Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        workers,
        pin_cores: false,
        sys_interval_secs: 0,
        ..Config::default()
    };
    tweak(&mut cfg);
    start(cfg).expect("broker starts")
}

/// A client speaking raw MQTT bytes through our codec (for exact control of what is
/// sent, including malformed packets).
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
    /// The layout packets are written and read in (3.1.1 unless set to MQTT 5).
    pub version: ProtocolVersion,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        Raw::from_stream(TcpStream::connect(addr).expect("tcp connect"))
    }

    /// A client on an already connected stream (e.g. bound to a chosen source).
    pub fn from_stream(stream: TcpStream) -> Raw {
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Raw {
            stream,
            buf: BytesMut::new(),
            version: ProtocolVersion::V3_1_1,
        }
    }

    /// TCP connect plus CONNECT/CONNACK with the given client id and clean flag.
    pub fn mqtt(addr: SocketAddr, client_id: &str, clean: bool) -> Raw {
        let mut raw = Raw::connect(addr);
        raw.send(&Packet::Connect(connect_packet(client_id, clean)));
        match raw.recv() {
            Some(Packet::ConnAck(a)) => {
                assert_eq!(a.code, ternmq::protocol::ReasonCode::SUCCESS)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
        raw
    }

    pub fn send(&mut self, p: &Packet) {
        let mut out = Vec::new();
        encode_packet_v(p, self.version, &mut out);
        self.send_bytes(&out);
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        // The peer may already have closed: tests check that separately.
        let _ = self.stream.write_all(bytes);
    }

    /// The next packet, or None if nothing arrives within [`WAIT`] or the peer closed.
    pub fn recv(&mut self) -> Option<Packet> {
        self.recv_within(WAIT)
    }

    pub fn recv_within(&mut self, wait: Duration) -> Option<Packet> {
        let deadline = Instant::now() + wait;
        loop {
            if let Ok(Some(p)) = decode_one_v(&mut self.buf, usize::MAX, self.version) {
                return Some(p);
            }
            if Instant::now() >= deadline {
                return None;
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
        }
    }

    /// True if the broker closes the connection within [`WAIT`] (packets received
    /// before the close are returned in order).
    pub fn closed(&mut self) -> (bool, Vec<Packet>) {
        self.closed_within(WAIT)
    }

    /// [`Raw::closed`] with a chosen wait.
    pub fn closed_within(&mut self, wait: Duration) -> (bool, Vec<Packet>) {
        let deadline = Instant::now() + wait;
        let mut got = Vec::new();
        loop {
            while let Ok(Some(p)) = decode_one_v(&mut self.buf, usize::MAX, self.version) {
                got.push(p);
            }
            if Instant::now() >= deadline {
                return (false, got);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return (true, got),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return (true, got),
            }
        }
    }

    /// Asserts nothing arrives for `wait`.
    pub fn silent_for(&mut self, wait: Duration) {
        if let Some(p) = self.recv_within(wait) {
            panic!("expected silence, got {p:?}");
        }
    }
}

pub fn connect_packet(client_id: &str, clean: bool) -> Box<Connect> {
    Box::new(Connect {
        version: ProtocolVersion::V3_1_1,
        clean_session: clean,
        keep_alive_secs: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        props: Default::default(),
    })
}

/// An independent MQTT 3.1.1 client (rumqttc, synchronous API).
pub fn rumqtt(addr: SocketAddr, id: &str, clean: bool) -> (rumqttc::Client, rumqttc::Connection) {
    let mut opts = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_clean_session(clean);
    opts.set_keep_alive(Duration::from_secs(30));
    rumqttc::Client::new(opts, 100)
}

/// Drives a rumqttc connection until `pred` accepts an event, or fails after [`WAIT`].
pub fn wait_event(
    conn: &mut rumqttc::Connection,
    mut pred: impl FnMut(&rumqttc::Event) -> bool,
) -> rumqttc::Event {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out waiting for an event");
        match conn.recv_timeout(left) {
            Ok(Ok(ev)) if pred(&ev) => return ev,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("connection error: {e}"),
            Err(_) => panic!("timed out waiting for an event"),
        }
    }
}

/// The next incoming PUBLISH on a rumqttc connection.
pub fn next_publish(conn: &mut rumqttc::Connection) -> rumqttc::Publish {
    match wait_event(conn, |e| {
        matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::Publish(_)))
    }) {
        rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => p,
        _ => unreachable!("filtered above"),
    }
}

/// Waits for the SUBACK of a subscription.
pub fn wait_suback(conn: &mut rumqttc::Connection) -> rumqttc::SubAck {
    match wait_event(conn, |e| {
        matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)))
    }) {
        rumqttc::Event::Incoming(rumqttc::Packet::SubAck(s)) => s,
        _ => unreachable!("filtered above"),
    }
}

/// Waits for CONNACK and returns its session-present flag.
pub fn wait_connack(conn: &mut rumqttc::Connection) -> bool {
    match wait_event(conn, |e| {
        matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))
    }) {
        rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a)) => a.session_present,
        _ => unreachable!("filtered above"),
    }
}

/// A packet identifier from a literal.
pub fn pid(n: u16) -> PacketId {
    PacketId::new(n).expect("non-zero packet id")
}

/// A PUBLISH packet (packet id `id` for QoS > 0).
pub fn publish_packet(topic: &str, qos: QoS, id: u16, payload: &[u8], retain: bool) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: TopicName::new(topic).expect("valid topic"),
        packet_id: (qos != QoS::AtMostOnce).then(|| pid(id)),
        payload: Bytes::copy_from_slice(payload),
        props: Default::default(),
    })
}
