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
pub mod properties;
pub mod reason;
pub mod topic;

use bytes::Bytes;
use bytestring::ByteString;
use std::num::NonZeroU16;

pub use decode::{
    decode_packet, decode_packet_v, peek_plain_publish, take_plain_publish, take_short_ack,
    DecodeError, PublishRef,
};
pub use encode::{
    encode_packet, encode_packet_v, encode_publish, encode_publish_v5, encoded_len, encoded_len_v,
    PublishExtras,
};
pub use frame::{check_frame, Frame, FrameError, MAX_REMAINING_LENGTH};
pub use properties::Properties;
pub use reason::ReasonCode;
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

    /// The MQTT 5 reason code that tells a client why its packet was refused:
    /// Packet too large (0x95), Protocol Error (0x82) or Malformed Packet (0x81).
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            CodecError::Frame(FrameError::PacketTooLarge { .. }) => ReasonCode::PACKET_TOO_LARGE,
            CodecError::Frame(FrameError::MalformedRemainingLength) => ReasonCode::MALFORMED_PACKET,
            CodecError::Decode(e) => e.reason_code(),
        }
    }
}

/// Takes one packet off the front of `buf`: `Ok(None)` (leaving `buf` untouched) until
/// a whole packet is buffered, then splits that packet's bytes off and decodes them
/// with the layout of `version` (CONNECT describes itself whatever `version` says).
/// A packet larger than `max_packet_bytes` is refused from its fixed header alone.
/// After an error the offending bytes may or may not have been consumed; the caller
/// must close the connection.
pub fn decode_one_v(
    buf: &mut bytes::BytesMut,
    max_packet_bytes: usize,
    version: ProtocolVersion,
) -> Result<Option<Packet>, CodecError> {
    let Some(frame) = check_frame(buf, max_packet_bytes)? else {
        return Ok(None);
    };
    if buf.len() < frame.total_len() {
        return Ok(None);
    }
    let bytes = buf.split_to(frame.total_len()).freeze();
    Ok(Some(decode_packet_v(bytes, version)?))
}

/// [`decode_one_v`] with the MQTT 3.1.1 layout.
pub fn decode_one(
    buf: &mut bytes::BytesMut,
    max_packet_bytes: usize,
) -> Result<Option<Packet>, CodecError> {
    decode_one_v(buf, max_packet_bytes, ProtocolVersion::V3_1_1)
}

/// A packet identifier. Zero is never a valid id ([MQTT-2.3.1-1]), so the type forbids it.
pub type PacketId = NonZeroU16;

/// The protocol level a client announced in CONNECT. It selects the wire layout of
/// every later packet on that connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V3_1,
    /// MQTT 3.1.1: protocol name `MQTT`, level 4.
    V3_1_1,
    /// MQTT 5.0: protocol name `MQTT`, level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte carried in CONNECT.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V3_1 => 3,
            ProtocolVersion::V3_1_1 => 4,
            ProtocolVersion::V5 => 5,
        }
    }

    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
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

/// The control packets of MQTT 3.1/3.1.1 (14) and MQTT 5 (15, with AUTH). Fields that
/// exist only in MQTT 5 (reason codes, properties) are at their defaults on 3.x
/// connections and are not written there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
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
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }

    /// PUBACK with reason Success and no properties.
    pub fn puback(id: PacketId) -> Packet {
        Packet::PubAck(Ack::new(id))
    }
    /// PUBREC with reason Success and no properties.
    pub fn pubrec(id: PacketId) -> Packet {
        Packet::PubRec(Ack::new(id))
    }
    /// PUBREL with reason Success and no properties.
    pub fn pubrel(id: PacketId) -> Packet {
        Packet::PubRel(Ack::new(id))
    }
    /// PUBCOMP with reason Success and no properties.
    pub fn pubcomp(id: PacketId) -> Packet {
        Packet::PubComp(Ack::new(id))
    }
    /// UNSUBACK as MQTT 3.1.1 knows it: a packet id only.
    pub fn unsuback(id: PacketId) -> Packet {
        Packet::UnsubAck(UnsubAck {
            packet_id: id,
            codes: Vec::new(),
            props: Props::default(),
        })
    }
    /// DISCONNECT with reason Normal disconnection and no properties.
    pub fn disconnect() -> Packet {
        Packet::Disconnect(Disconnect::default())
    }
}

/// The properties of one packet: absent (no allocation) or a boxed [`Properties`].
/// Reads through `Deref` see an empty set when absent; `DerefMut` allocates on first
/// write. Equality compares contents, so absent equals present-but-empty.
#[derive(Debug, Clone, Default)]
pub struct Props(Option<Box<Properties>>);

pub(crate) static NO_PROPERTIES: Properties = Properties {
    payload_format_indicator: None,
    message_expiry_interval: None,
    content_type: None,
    response_topic: None,
    correlation_data: None,
    subscription_identifiers: Vec::new(),
    session_expiry_interval: None,
    assigned_client_identifier: None,
    server_keep_alive: None,
    authentication_method: None,
    authentication_data: None,
    request_problem_information: None,
    will_delay_interval: None,
    request_response_information: None,
    response_information: None,
    server_reference: None,
    reason_string: None,
    receive_maximum: None,
    topic_alias_maximum: None,
    topic_alias: None,
    maximum_qos: None,
    retain_available: None,
    user_properties: Vec::new(),
    maximum_packet_size: None,
    wildcard_subscription_available: None,
    subscription_identifier_available: None,
    shared_subscription_available: None,
};

impl Props {
    /// Wraps a property set, keeping "empty" unallocated.
    pub fn new(p: Properties) -> Props {
        if p.is_empty() {
            Props(None)
        } else {
            Props(Some(Box::new(p)))
        }
    }

    /// True when no property is set.
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|p| p.is_empty())
    }

    /// Takes the set out (leaving none), without allocating when there is none.
    pub fn take(&mut self) -> Option<Properties> {
        self.0.take().map(|b| *b)
    }
}

impl std::ops::Deref for Props {
    type Target = Properties;
    fn deref(&self) -> &Properties {
        self.0.as_deref().unwrap_or(&NO_PROPERTIES)
    }
}

impl std::ops::DerefMut for Props {
    fn deref_mut(&mut self) -> &mut Properties {
        self.0.get_or_insert_with(Box::default)
    }
}

impl PartialEq for Props {
    fn eq(&self, other: &Props) -> bool {
        **self == **other
    }
}

impl Eq for Props {}

impl From<Properties> for Props {
    fn from(p: Properties) -> Props {
        Props::new(p)
    }
}

/// CONNECT (3.1). `clean_session` is MQTT 5's Clean Start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub version: ProtocolVersion,
    pub clean_session: bool,
    pub keep_alive_secs: u16,
    /// May be empty; the broker decides what that means.
    pub client_id: ByteString,
    pub will: Option<Will>,
    pub username: Option<ByteString>,
    pub password: Option<Bytes>,
    /// MQTT 5 CONNECT properties ([`properties::Allowed::CONNECT`]).
    pub props: Props,
}

/// The Will message carried in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 will properties ([`properties::Allowed::WILL`]).
    pub props: Props,
}

/// CONNACK (3.2). `code` is an MQTT 5 reason code; on 3.x connections it is written as
/// the nearest 3.1.1 return code ([`ReasonCode::to_v3_connack`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub code: ReasonCode,
    pub props: Props,
}

impl ConnAck {
    /// A CONNACK without properties.
    pub fn new(session_present: bool, code: ReasonCode) -> ConnAck {
        ConnAck {
            session_present,
            code,
            props: Props::default(),
        }
    }
}

/// PUBLISH (3.3). `packet_id` is `Some` exactly when `qos > 0`. On MQTT 5 the topic
/// may be [`TopicName::alias_only`] when `props.topic_alias` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: TopicName,
    pub packet_id: Option<PacketId>,
    pub payload: Bytes,
    pub props: Props,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP (3.4 to 3.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub packet_id: PacketId,
    /// Success (0) on 3.x.
    pub reason: ReasonCode,
    pub props: Props,
}

impl Ack {
    /// Reason Success, no properties.
    pub fn new(packet_id: PacketId) -> Ack {
        Ack {
            packet_id,
            reason: ReasonCode::SUCCESS,
            props: Props::default(),
        }
    }
}

/// Retain Handling of an MQTT 5 subscription (3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// 0: send retained messages at subscribe time.
    #[default]
    OnSubscribe = 0,
    /// 1: send them only if the subscription did not exist.
    OnNewSubscription = 1,
    /// 2: never send them at subscribe time.
    Never = 2,
}

/// The options byte of one SUBSCRIBE filter. On 3.x only `qos` can be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl SubOptions {
    /// Options with only a maximum QoS (all that MQTT 3.1.1 has).
    pub fn qos(qos: QoS) -> SubOptions {
        SubOptions {
            qos,
            ..SubOptions::default()
        }
    }

    pub fn as_u8(self) -> u8 {
        self.qos.as_u8()
            | (u8::from(self.no_local) << 2)
            | (u8::from(self.retain_as_published) << 3)
            | ((self.retain_handling as u8) << 4)
    }
}

impl From<QoS> for SubOptions {
    fn from(qos: QoS) -> SubOptions {
        SubOptions::qos(qos)
    }
}

/// SUBSCRIBE (3.8): at least one filter ([MQTT-3.8.3-3]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: PacketId,
    pub filters: Vec<(TopicFilter, SubOptions)>,
    pub props: Props,
}

/// SUBACK (3.9): one reason code per filter. 3.x knows 0, 1, 2 and 0x80; any MQTT 5
/// failure code is written as 0x80 there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: PacketId,
    pub codes: Vec<ReasonCode>,
    pub props: Props,
}

/// UNSUBSCRIBE (3.10): at least one filter ([MQTT-3.10.3-2]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: PacketId,
    pub filters: Vec<TopicFilter>,
    pub props: Props,
}

/// UNSUBACK (3.11): MQTT 5 carries one reason code per filter; 3.x none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: PacketId,
    pub codes: Vec<ReasonCode>,
    pub props: Props,
}

/// DISCONNECT (3.14). 3.x has neither reason nor properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    pub reason: ReasonCode,
    pub props: Props,
}

impl Disconnect {
    pub fn new(reason: ReasonCode) -> Disconnect {
        Disconnect {
            reason,
            props: Props::default(),
        }
    }
}

/// AUTH (3.15, MQTT 5 only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    pub reason: ReasonCode,
    pub props: Props,
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
                props: Props::default(),
            }),
            Packet::Subscribe(Subscribe {
                packet_id: PacketId::new(6).unwrap(),
                filters: vec![(
                    TopicFilter::new("x/#").unwrap(),
                    SubOptions::qos(QoS::ExactlyOnce),
                )],
                props: Props::default(),
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
        b.extend_from_slice(&[6, 2, 0, 0]);
        let err = decode_one(&mut BytesMut::from(&b[..]), 1024).unwrap_err();
        assert!(err.is_unsupported_protocol_level());
    }
}
