//! The sans-IO MQTT codec: bytes in, packets out, packets in, bytes out.
//!
//! Owns: the packet model ([`Packet`] and one struct per packet family), validated
//! topic names and filters ([`topic`]), framing ([`frame`]), decoding ([`decode`]) and
//! encoding ([`encode`]).
//!
//! Must not: touch sockets, threads, clocks or broker state. Every function here is a
//! pure transformation so that it can be property-tested and fuzzed in isolation.
//!
//! Invariants: decoding never panics on any input; a packet that decodes also encodes,
//! and encode-then-decode yields the same packet. Validation that depends on the
//! session (a second CONNECT, a packet before CONNECT) lives in `broker/`, not here.

pub mod decode;
pub mod encode;
pub mod frame;
pub mod topic;

use bytes::Bytes;
use bytestring::ByteString;
use std::num::NonZeroU16;

pub use decode::{decode_packet, DecodeError};
pub use encode::{encode_packet, encode_publish, encoded_len};
pub use frame::{check_frame, Frame, FrameError, MAX_REMAINING_LENGTH};
pub use topic::{TopicError, TopicFilter, TopicName};

/// Anything that stops [`decode_one`] from yielding a packet: the connection is done
/// (after CONNACK 0x01 when [`CodecError::is_unsupported_protocol_level`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl CodecError {
    /// See [`DecodeError::is_unsupported_protocol_level`].
    pub fn is_unsupported_protocol_level(&self) -> bool {
        matches!(self, CodecError::Decode(e) if e.is_unsupported_protocol_level())
    }
}

/// Takes one packet off the front of `buf`: `Ok(None)` (leaving `buf` untouched) until
/// a whole packet is buffered, then splits that packet's bytes off and decodes them.
/// A packet larger than `max_packet_bytes` is refused from its fixed header alone.
/// After an error the offending bytes may or may not have been consumed; the caller
/// must close the connection.
pub fn decode_one(
    buf: &mut bytes::BytesMut,
    max_packet_bytes: usize,
) -> Result<Option<Packet>, CodecError> {
    let Some(frame) = check_frame(buf, max_packet_bytes)? else {
        return Ok(None);
    };
    if buf.len() < frame.total_len() {
        return Ok(None);
    }
    let bytes = buf.split_to(frame.total_len()).freeze();
    Ok(Some(decode_packet(bytes)?))
}

/// A packet identifier. Zero is never a valid id ([MQTT-2.3.1-1]), so the type forbids it.
pub type PacketId = NonZeroU16;

/// The protocol level a client announced in CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V3_1,
    /// MQTT 3.1.1: protocol name `MQTT`, level 4.
    V3_1_1,
}

impl ProtocolVersion {
    /// The protocol level byte carried in CONNECT.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V3_1 => 3,
            ProtocolVersion::V3_1_1 => 4,
        }
    }
}

/// Quality of service of a message or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    /// Parses the two QoS bits; 3 is malformed ([MQTT-3.3.1-4]).
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }

    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// The 14 control packets of MQTT 3.1/3.1.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Connect),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PacketId),
    PubRec(PacketId),
    PubRel(PacketId),
    PubComp(PacketId),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(PacketId),
    PingReq,
    PingResp,
    Disconnect,
}

impl Packet {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect => "DISCONNECT",
        }
    }
}

/// CONNECT (3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub version: ProtocolVersion,
    pub clean_session: bool,
    pub keep_alive_secs: u16,
    /// May be empty (3.1.1 only); the broker decides what that means.
    pub client_id: ByteString,
    pub will: Option<Will>,
    pub username: Option<ByteString>,
    pub password: Option<Bytes>,
}

/// The Will message carried in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
}

/// CONNACK return codes of MQTT 3.1.1 (3.2.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectReturnCode {
    Accepted = 0,
    UnacceptableProtocolVersion = 1,
    IdentifierRejected = 2,
    ServerUnavailable = 3,
    BadUserNameOrPassword = 4,
    NotAuthorized = 5,
}

impl ConnectReturnCode {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Accepted,
            1 => Self::UnacceptableProtocolVersion,
            2 => Self::IdentifierRejected,
            3 => Self::ServerUnavailable,
            4 => Self::BadUserNameOrPassword,
            5 => Self::NotAuthorized,
            _ => return None,
        })
    }
}

/// CONNACK (3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub code: ConnectReturnCode,
}

/// PUBLISH (3.3). `packet_id` is `Some` exactly when `qos > 0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: TopicName,
    pub packet_id: Option<PacketId>,
    pub payload: Bytes,
}

/// SUBSCRIBE (3.8): at least one filter ([MQTT-3.8.3-3]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: PacketId,
    pub filters: Vec<(TopicFilter, QoS)>,
}

/// One SUBACK return code: the granted QoS, or failure (0x80).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubAckCode {
    Granted(QoS),
    Failure,
}

impl SubAckCode {
    pub fn as_u8(self) -> u8 {
        match self {
            SubAckCode::Granted(q) => q.as_u8(),
            SubAckCode::Failure => 0x80,
        }
    }

    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0x80 => Some(SubAckCode::Failure),
            v => QoS::from_u8(v).map(SubAckCode::Granted),
        }
    }
}

/// SUBACK (3.9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: PacketId,
    pub codes: Vec<SubAckCode>,
}

/// UNSUBSCRIBE (3.10): at least one filter ([MQTT-3.10.3-2]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: PacketId,
    pub filters: Vec<TopicFilter>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn sample() -> Vec<Packet> {
        vec![
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: true,
                topic: TopicName::new("a/b").unwrap(),
                packet_id: PacketId::new(5),
                payload: Bytes::from(vec![9u8; 200]),
            }),
            Packet::Subscribe(Subscribe {
                packet_id: PacketId::new(6).unwrap(),
                filters: vec![(TopicFilter::new("x/#").unwrap(), QoS::ExactlyOnce)],
            }),
            Packet::PingReq,
        ]
    }

    #[test]
    fn every_prefix_is_incomplete_until_the_whole_packet() {
        for p in sample() {
            let mut wire = Vec::new();
            encode_packet(&p, &mut wire);
            for cut in 0..wire.len() {
                let mut buf = BytesMut::from(&wire[..cut]);
                let got = decode_one(&mut buf, 1 << 20);
                assert_eq!(got, Ok(None), "{} cut {cut}", p.name());
                assert_eq!(buf.len(), cut, "an incomplete packet is left in place");
            }
            let mut buf = BytesMut::from(&wire[..]);
            assert_eq!(decode_one(&mut buf, 1 << 20), Ok(Some(p)));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn back_to_back_packets_in_one_buffer() {
        let packets = sample();
        let mut wire = Vec::new();
        for p in &packets {
            encode_packet(p, &mut wire);
        }
        wire.extend_from_slice(&[0x30, 0x05]); // start of a fourth, incomplete packet
        let mut buf = BytesMut::from(&wire[..]);
        for p in packets {
            assert_eq!(decode_one(&mut buf, 1 << 20), Ok(Some(p)));
        }
        assert_eq!(decode_one(&mut buf, 1 << 20), Ok(None));
        assert_eq!(&buf[..], [0x30, 0x05]);
    }

    #[test]
    fn errors_are_wrapped() {
        let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
        assert_eq!(
            decode_one(&mut buf, 1024),
            Err(CodecError::Frame(FrameError::PacketTooLarge {
                size: MAX_REMAINING_LENGTH + 5,
                max: 1024
            }))
        );
        let mut buf = BytesMut::from(&[0xF0, 0x00][..]);
        assert_eq!(
            decode_one(&mut buf, 1024),
            Err(CodecError::Decode(DecodeError::ReservedPacketType(15)))
        );
        let mut b = vec![0x10, 10, 0, 4];
        b.extend_from_slice(b"MQTT");
        b.extend_from_slice(&[5, 2, 0, 0]);
        let err = decode_one(&mut BytesMut::from(&b[..]), 1024).unwrap_err();
        assert!(err.is_unsupported_protocol_level());
    }
}
