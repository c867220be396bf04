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

pub use topic::{TopicError, TopicFilter, TopicName};

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
