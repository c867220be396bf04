//! A minimal non-blocking MQTT 3.1.1 client connection for the generator, on `mio` and
//! our codec: connect (optionally from a chosen source address), CONNECT/CONNACK,
//! SUBSCRIBE/SUBACK, publish at QoS 0/1/2 with a packet-id pool, and the QoS 1/2
//! acknowledgement flows on both sides.
//!
//! Optionally over TLS (rustls, `ternmq bench --tls`): the handshake starts once TCP
//! is up, CONNECT waits in rustls until it completes, and reads and flushes go
//! through the `ClientConnection`.
//!
//! A connection never blocks and never writes by itself: packets are appended to its
//! write buffer and the event loop ([`super::worker`]) flushes each dirty connection
//! once per turn. Nothing read from the network is trusted: every unexpected packet or
//! malformed byte becomes a typed [`ClientError`].

use super::payload::Header;
use crate::protocol::{
    decode_one_v, encode_packet, encode_publish, peek_plain_publish, take_short_ack, CodecError,
    Connect, Packet, PacketId, ProtocolVersion, QoS, ReasonCode, SubOptions, Subscribe,
    TopicFilter,
};
use bytes::{Buf, BytesMut};
use bytestring::ByteString;
use mio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Largest packet the generator accepts from a broker.
const MAX_PACKET: usize = 1 << 20;
/// Bytes read from one socket in one turn before moving on to the others.
pub(crate) const READ_BUDGET: usize = 1 << 20;

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    #[error("cannot decode the broker's bytes: {0}")]
    Codec(#[from] CodecError),
    #[error("connection refused by the broker: {0:?}")]
    Refused(ReasonCode),
    #[error("subscription to {0} refused")]
    SubscribeRefused(String),
    #[error("invalid topic filter {0}")]
    BadFilter(String),
    #[error("unexpected {0} from the broker")]
    Unexpected(&'static str),
    #[error("connection closed by the broker")]
    Closed,
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Not started yet (waiting for the ramp) or closed for churn, to be restarted.
    Pending,
    /// TCP handshake under way.
    Connecting,
    AwaitConnAck,
    AwaitSubAck,
    Ready,
    /// Closed for good (end of run, or failed).
    Closed,
}

/// A pool of the 65535 packet ids, as a bitmap.
#[derive(Debug, Clone)]
pub(crate) struct IdPool {
    used: Vec<u64>,
    pub in_use: usize,
    next: u16,
}

impl IdPool {
    pub fn new() -> IdPool {
        IdPool {
            used: vec![0; 1024],
            in_use: 0,
            next: 1,
        }
    }

    /// The next free id, or `None` when all are in flight.
    pub fn alloc(&mut self) -> Option<PacketId> {
        if self.in_use >= 65_535 {
            return None;
        }
        loop {
            let id = self.next;
            self.next = if id == u16::MAX { 1 } else { id + 1 };
            let (w, b) = (id as usize / 64, 1u64 << (id % 64));
            if self.used[w] & b == 0 {
                self.used[w] |= b;
                self.in_use += 1;
                return PacketId::new(id);
            }
        }
    }

    pub fn is_used(&self, id: PacketId) -> bool {
        let id = id.get();
        self.used[id as usize / 64] & (1u64 << (id % 64)) != 0
    }

    /// Frees `id`; false if it was not in flight (a spurious ack).
    pub fn free(&mut self, id: PacketId) -> bool {
        if !self.is_used(id) {
            return false;
        }
        let id = id.get();
        self.used[id as usize / 64] &= !(1u64 << (id % 64));
        self.in_use -= 1;
        true
    }

    pub fn clear(&mut self) {
        self.used.iter_mut().for_each(|w| *w = 0);
        self.in_use = 0;
    }
}

/// What a handled packet meant for the event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Incoming {
    Nothing,
    /// The session is up (CONNACK, and SUBACK if the client subscribes).
    Ready,
    /// A QoS 1/2 publish of ours completed (PUBACK or PUBCOMP).
    Acked,
    /// A message for us, with its header (`None`: not a benchmark payload).
    Message(Option<Header>),
}

/// One client connection.
pub(crate) struct Conn {
    /// Index in the plan's clients.
    pub spec: usize,
    pub stream: Option<TcpStream>,
    pub state: State,
    pub rbuf: BytesMut,
    pub wbuf: Vec<u8>,
    /// Queued for this turn's flush.
    pub dirty: bool,
    /// The socket may still have bytes (read budget exhausted).
    pub more_to_read: bool,
    pub ids: IdPool,
    /// Filter to subscribe to after CONNACK, if any.
    pub filter: Option<String>,
    /// The TLS session, with `--tls` (boxed: absent on plain runs).
    pub tls: Option<Box<ClientConnection>>,
    /// The protocol it speaks (set at connect).
    pub version: ProtocolVersion,
}

impl Conn {
    pub fn new(spec: usize, filter: Option<String>) -> Conn {
        Conn {
            spec,
            stream: None,
            state: State::Pending,
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
            dirty: false,
            more_to_read: false,
            ids: IdPool::new(),
            filter,
            tls: None,
            version: ProtocolVersion::V3_1_1,
        }
    }

    /// Starts a non-blocking TCP connect to `broker`, bound to `source` if given.
    pub fn start(
        &mut self,
        broker: SocketAddr,
        source: Option<IpAddr>,
    ) -> Result<&mut TcpStream, ClientError> {
        use socket2::{Domain, Protocol, Socket, Type};
        let sock = Socket::new(
            Domain::for_address(broker),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        sock.set_nonblocking(true)?;
        sock.set_nodelay(true)?;
        if let Some(ip) = source {
            sock.bind(&SocketAddr::new(ip, 0).into())?;
        }
        match sock.connect(&broker.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
        let std: std::net::TcpStream = sock.into();
        self.state = State::Connecting;
        self.rbuf.clear();
        self.wbuf.clear();
        self.ids.clear();
        self.more_to_read = false;
        self.tls = None;
        Ok(self.stream.insert(TcpStream::from_std(std)))
    }

    /// Called on a writable event while connecting: true once TCP is up, after
    /// which CONNECT has been queued (and, with `tls`, the TLS handshake started;
    /// the server's certificate must name the broker's IP address).
    pub fn check_connected(
        &mut self,
        client_id: &str,
        clean_session: bool,
        version: ProtocolVersion,
        keep_alive_secs: u16,
        tls: Option<&Arc<ClientConfig>>,
    ) -> Result<bool, ClientError> {
        let Some(s) = &self.stream else {
            return Ok(false);
        };
        if let Some(e) = s.take_error()? {
            return Err(e.into());
        }
        match s.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        if let Some(config) = tls {
            let name = ServerName::IpAddress(s.peer_addr()?.ip().into());
            self.tls = Some(Box::new(ClientConnection::new(config.clone(), name)?));
        }
        self.version = version;
        let mut props = crate::protocol::Properties::default();
        if version.is_v5() && !clean_session {
            props.session_expiry_interval = Some(u32::MAX);
        }
        let connect = Connect {
            version,
            clean_session,
            keep_alive_secs,
            client_id: ByteString::from(client_id),
            will: None,
            username: None,
            password: None,
            props: props.into(),
        };
        encode_packet(&Packet::Connect(Box::new(connect)), &mut self.wbuf);
        self.state = State::AwaitConnAck;
        self.dirty = true;
        Ok(true)
    }

    /// Appends one PUBLISH; `None` when QoS > 0 and no packet id is free.
    pub fn publish(&mut self, topic: &str, qos: QoS, payload: &[u8]) -> Option<()> {
        let id = if qos == QoS::AtMostOnce {
            None
        } else {
            Some(self.ids.alloc()?)
        };
        if self.version.is_v5() {
            let extras = crate::protocol::PublishExtras::default();
            crate::protocol::encode_publish_v5(
                &mut self.wbuf,
                false,
                qos,
                false,
                topic,
                id,
                &extras,
                payload,
            );
        } else {
            encode_publish(&mut self.wbuf, false, qos, false, topic, id, payload);
        }
        self.dirty = true;
        Some(())
    }

    /// Appends DISCONNECT (the connection is closed after the next flush).
    pub fn disconnect(&mut self) {
        crate::protocol::encode_packet_v(&Packet::disconnect(), self.version, &mut self.wbuf);
        self.dirty = true;
    }

    /// Reads what the socket has, up to [`READ_BUDGET`], into the read buffer.
    /// Returns false on end of stream.
    ///
    /// Unless `to_end`, a read shorter than `scratch` ends it: TCP returns less than
    /// asked only when its receive queue is empty, and data arriving later is a new
    /// event for the edge-triggered poll, so the `recv` that would only say
    /// `WouldBlock` (one per message at a low per-socket rate) is skipped. With
    /// `to_end` (the event reported a FIN or an error, which bring no new edge) it
    /// reads until `WouldBlock` or the end of the stream.
    pub fn read(&mut self, scratch: &mut [u8], to_end: bool) -> Result<bool, ClientError> {
        let Some(s) = &mut self.stream else {
            return Ok(true);
        };
        let mut total = 0;
        self.more_to_read = false;
        if let Some(tls) = &mut self.tls {
            let open = read_tls(tls, s, scratch, &mut self.rbuf, &mut self.more_to_read)?;
            // Handshake records or alerts to answer.
            self.dirty |= tls.wants_write();
            return Ok(open);
        }
        loop {
            match s.read(scratch) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.rbuf.extend_from_slice(&scratch[..n]);
                    total += n;
                    if total >= READ_BUDGET {
                        self.more_to_read = true;
                        return Ok(true);
                    }
                    if n < scratch.len() && !to_end {
                        return Ok(true);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Decodes the next whole packet of the read buffer and reacts to it.
    /// `Ok(None)` when no whole packet is left.
    pub fn next_incoming(&mut self, qos: QoS) -> Result<Option<Incoming>, ClientError> {
        // Nearly every packet a subscriber reads is a plain PUBLISH: read it in place
        // (no reference counting, no `Packet`), the rest through the full decoder.
        if let Some((p, len)) = peek_plain_publish(&self.rbuf, MAX_PACKET, self.version) {
            let header = Header::read(p.payload);
            let (qos, id) = (p.qos, p.packet_id);
            self.rbuf.advance(len);
            self.ack_publish(qos, id);
            return Ok(Some(Incoming::Message(header)));
        }
        // A publisher's QoS 1 and 2 replies are short acknowledgements, taken the same
        // way (`take_short_ack`).
        if let Some(packet) = take_short_ack(&mut self.rbuf, MAX_PACKET) {
            return self.handle(packet, qos).map(Some);
        }
        let Some(packet) = decode_one_v(&mut self.rbuf, MAX_PACKET, self.version)? else {
            return Ok(None);
        };
        self.handle(packet, qos).map(Some)
    }

    fn reply(&mut self, p: Packet) {
        crate::protocol::encode_packet_v(&p, self.version, &mut self.wbuf);
        self.dirty = true;
    }

    /// The first step of a received PUBLISH's QoS 1 or 2 flow.
    fn ack_publish(&mut self, qos: QoS, id: Option<PacketId>) {
        match (qos, id) {
            (QoS::AtLeastOnce, Some(id)) => self.reply(Packet::puback(id)),
            (QoS::ExactlyOnce, Some(id)) => self.reply(Packet::pubrec(id)),
            _ => {}
        }
    }

    fn handle(&mut self, packet: Packet, qos: QoS) -> Result<Incoming, ClientError> {
        match packet {
            Packet::ConnAck(a) if self.state == State::AwaitConnAck => {
                if a.code != ReasonCode::SUCCESS {
                    return Err(ClientError::Refused(a.code));
                }
                let Some(filter) = self.filter.clone() else {
                    self.state = State::Ready;
                    return Ok(Incoming::Ready);
                };
                let f = TopicFilter::new(filter.as_str())
                    .map_err(|_| ClientError::BadFilter(filter.clone()))?;
                let id = PacketId::MIN;
                self.reply(Packet::Subscribe(Subscribe {
                    packet_id: id,
                    filters: vec![(f, SubOptions::qos(qos))],
                    props: Default::default(),
                }));
                self.state = State::AwaitSubAck;
                Ok(Incoming::Nothing)
            }
            Packet::SubAck(s) if self.state == State::AwaitSubAck => {
                if s.codes.iter().any(|c| !c.is_success()) || s.codes.is_empty() {
                    return Err(ClientError::SubscribeRefused(
                        self.filter.clone().unwrap_or_default(),
                    ));
                }
                self.state = State::Ready;
                Ok(Incoming::Ready)
            }
            Packet::Publish(p) => {
                self.ack_publish(p.qos, p.packet_id);
                Ok(Incoming::Message(Header::read(&p.payload)))
            }
            Packet::PubRel(a) => {
                self.reply(Packet::pubcomp(a.packet_id));
                Ok(Incoming::Nothing)
            }
            Packet::PubAck(a) if qos == QoS::AtLeastOnce => Ok(if self.ids.free(a.packet_id) {
                Incoming::Acked
            } else {
                Incoming::Nothing
            }),
            Packet::PubRec(a) if qos == QoS::ExactlyOnce => {
                if self.ids.is_used(a.packet_id) {
                    self.reply(Packet::pubrel(a.packet_id));
                }
                Ok(Incoming::Nothing)
            }
            Packet::PubComp(a) if qos == QoS::ExactlyOnce => Ok(if self.ids.free(a.packet_id) {
                Incoming::Acked
            } else {
                Incoming::Nothing
            }),
            Packet::PingResp | Packet::UnsubAck(_) => Ok(Incoming::Nothing),
            other => Err(ClientError::Unexpected(other.name())),
        }
    }

    /// Something waits to be written: packets, or TLS records.
    pub fn has_output(&self) -> bool {
        !self.wbuf.is_empty() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// One write of the pending bytes. Returns true when everything is written.
    pub fn flush(&mut self) -> Result<bool, ClientError> {
        self.dirty = false;
        let Some(s) = &mut self.stream else {
            self.wbuf.clear();
            return Ok(true);
        };
        if let Some(tls) = &mut self.tls {
            // Plaintext into rustls (which takes at most its buffer limit, and holds it
            // until the handshake is done), then as many records as the socket takes;
            // again until everything is written or the socket is full (a writable
            // event then resumes: a partly taken buffer on an idle socket would stall).
            loop {
                let n = tls.writer().write(&self.wbuf)?;
                self.wbuf.drain(..n);
                let mut blocked = false;
                while tls.wants_write() {
                    match tls.write_tls(s) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            blocked = true;
                            break;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                if blocked || self.wbuf.is_empty() || n == 0 {
                    return Ok(!self.has_output());
                }
            }
        }
        if self.wbuf.is_empty() || self.state == State::Connecting {
            return Ok(self.wbuf.is_empty());
        }
        match s.write(&self.wbuf) {
            Ok(n) => {
                self.wbuf.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => self.dirty = true,
            Err(e) => return Err(e.into()),
        }
        Ok(self.wbuf.is_empty())
    }
}

/// Reads ciphertext from `s` until it would block or [`READ_BUDGET`] is spent, and
/// appends the plaintext to `rbuf`. Returns false on end of stream.
fn read_tls(
    tls: &mut ClientConnection,
    s: &mut TcpStream,
    scratch: &mut [u8],
    rbuf: &mut BytesMut,
    more_to_read: &mut bool,
) -> Result<bool, ClientError> {
    let mut total = 0;
    loop {
        let n = match tls.read_tls(s) {
            Ok(0) => return Ok(false),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        let state = tls.process_new_packets()?;
        let mut left = state.plaintext_bytes_to_read();
        while left > 0 {
            match tls.reader().read(scratch) {
                Ok(0) => break,
                Ok(got) => {
                    rbuf.extend_from_slice(&scratch[..got]);
                    left = left.saturating_sub(got);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        if state.peer_has_closed() {
            return Ok(false);
        }
        total += n;
        if total >= READ_BUDGET {
            *more_to_read = true;
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_pool_allocates_skips_used_and_frees() {
        let mut p = IdPool::new();
        let a = p.alloc().unwrap();
        let b = p.alloc().unwrap();
        assert_eq!((a.get(), b.get()), (1, 2));
        assert!(p.free(a));
        assert!(!p.free(a), "double ack is spurious");
        for _ in 0..65_533 {
            p.alloc().unwrap();
        }
        assert_eq!(p.in_use, 65_534);
        // Wrapped around: only id 1 is free.
        assert_eq!(p.alloc().map(|i| i.get()), Some(1));
        assert_eq!(p.alloc(), None);
    }

    #[test]
    fn subscriber_acks_qos1_and_completes_qos2() {
        let mut c = Conn::new(0, None);
        c.state = State::Ready;
        let mut payload = vec![0u8; 20];
        let h = Header {
            ts_ns: 5,
            seq: 6,
            publisher: 7,
        };
        h.write(&mut payload).unwrap();
        let mut wire = Vec::new();
        encode_publish(
            &mut wire,
            false,
            QoS::AtLeastOnce,
            false,
            "a",
            PacketId::new(9),
            &payload,
        );
        encode_packet(&Packet::pubrel(PacketId::new(3).unwrap()), &mut wire);
        c.rbuf.extend_from_slice(&wire);
        assert_eq!(
            c.next_incoming(QoS::AtLeastOnce).unwrap(),
            Some(Incoming::Message(Some(h)))
        );
        assert_eq!(
            c.next_incoming(QoS::AtLeastOnce).unwrap(),
            Some(Incoming::Nothing)
        );
        assert_eq!(c.next_incoming(QoS::AtLeastOnce).unwrap(), None);
        let mut expect = Vec::new();
        encode_packet(&Packet::puback(PacketId::new(9).unwrap()), &mut expect);
        encode_packet(&Packet::pubcomp(PacketId::new(3).unwrap()), &mut expect);
        assert_eq!(c.wbuf, expect);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut c = Conn::new(0, None);
        c.rbuf.extend_from_slice(&[0xF0, 0x00]);
        assert!(matches!(
            c.next_incoming(QoS::AtMostOnce),
            Err(ClientError::Codec(_))
        ));
        let mut c = Conn::new(0, None);
        encode_packet(&Packet::PingReq, &mut Vec::new());
        let mut wire = Vec::new();
        encode_packet(&Packet::PingReq, &mut wire);
        c.rbuf.extend_from_slice(&wire);
        assert!(matches!(
            c.next_incoming(QoS::AtMostOnce),
            Err(ClientError::Unexpected("PINGREQ"))
        ));
    }
}
