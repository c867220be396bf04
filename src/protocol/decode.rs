//! Decoding: one complete frame of bytes into one [`Packet`] (chapters 2 and 3), and
//! the two common shapes taken without the generic layers, which must agree with it:
//! the plain PUBLISH, read in place or taken ([`peek_plain_publish`],
//! [`take_plain_publish`]), and the four-byte acknowledgement ([`take_short_ack`]).
//!
//! Owns: every per-packet well-formedness rule of MQTT 3.1/3.1.1 (fixed-header flags,
//! field lengths, UTF-8 strings, packet ids, CONNECT flags, SUBSCRIBE options, return
//! codes) and the zero-copy slicing of strings and payloads out of the frame.
//!
//! Must not: panic on any input (no `unwrap`, `expect`, indexing or unchecked `Buf`
//! reads), copy payloads, or apply session or broker policy (empty client ids, a second
//! CONNECT, authorization): those live in `broker/`.

use super::frame::{check_frame, parse_header, FrameError};
use super::properties::Allowed;
use super::topic::is_plain_ascii_name;
use super::{
    Ack, Auth, ConnAck, Connect, Disconnect, Packet, PacketId, Properties, Props, ProtocolVersion,
    Publish, QoS, ReasonCode, RetainHandling, SubAck, SubOptions, Subscribe, TopicError,
    TopicFilter, TopicName, UnsubAck, Unsubscribe, Will,
};
use bytes::{Buf, Bytes};
use bytestring::ByteString;

/// Why a frame is not a well-formed packet. Every variant means "malformed": the
/// connection must be closed, except [`DecodeError::UnsupportedProtocolLevel`], which
/// the server answers with CONNACK 0x01 first ([MQTT-3.1.2-2]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Packet type 0 or 15 (2.2.1).
    #[error("reserved packet type {0}")]
    ReservedPacketType(u8),
    /// Reserved fixed-header flag bits not as specified ([MQTT-2.2.2-1], [MQTT-2.2.2-2]).
    #[error("invalid fixed header flags {flags:#06b} for packet type {packet_type}")]
    InvalidHeaderFlags { packet_type: u8, flags: u8 },
    /// PUBLISH with both QoS bits set ([MQTT-3.3.1-4]).
    #[error("PUBLISH with QoS 3")]
    InvalidPublishQoS,
    /// PUBLISH with DUP set on QoS 0 ([MQTT-3.3.1-2]).
    #[error("PUBLISH with DUP set on QoS 0")]
    DupOnQoS0,
    /// The frame is empty or its fixed header is incomplete.
    #[error("incomplete fixed header")]
    IncompleteHeader,
    /// The Remaining Length needs more than four bytes (2.2.3).
    #[error("malformed remaining length")]
    MalformedRemainingLength,
    /// The frame's length disagrees with its fixed header's Remaining Length.
    #[error("frame of {actual} bytes, but its fixed header says {expected}")]
    FrameLengthMismatch { expected: usize, actual: usize },
    /// The body ends before the fields it must carry.
    #[error("packet body is shorter than its fields")]
    Truncated,
    /// Bytes are left in the body after the last field.
    #[error("{0} unexpected bytes after the last field")]
    TrailingBytes(usize),
    /// A UTF-8 string field is not well-formed UTF-8 ([MQTT-1.5.3-1]).
    #[error("invalid UTF-8 string")]
    InvalidUtf8,
    /// A UTF-8 string field contains U+0000 ([MQTT-1.5.3-2]).
    #[error("string contains U+0000")]
    NullChar,
    /// A topic name or filter breaks the rules of 4.7.
    #[error("invalid topic: {0}")]
    InvalidTopic(#[from] TopicError),
    /// Packet identifier 0 ([MQTT-2.3.1-1]).
    #[error("packet identifier 0")]
    ZeroPacketId,
    /// SUBSCRIBE or UNSUBSCRIBE without any topic filter ([MQTT-3.8.3-3], [MQTT-3.10.3-2]).
    #[error("SUBSCRIBE or UNSUBSCRIBE without topic filters")]
    NoTopicFilters,
    /// SUBSCRIBE requested QoS 3 or set the reserved upper bits ([MQTT-3.8.3-4]).
    #[error("invalid SUBSCRIBE options byte {0:#04x}")]
    InvalidSubscriptionOptions(u8),
    /// CONNECT protocol name is neither `MQTT` nor `MQIsdp` ([MQTT-3.1.2-1]).
    #[error("invalid protocol name")]
    InvalidProtocolName,
    /// CONNECT with a known protocol name but a level this codec does not speak
    /// ([MQTT-3.1.2-2]); MQTT 5 (level 5) lands here too.
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolLevel(u8),
    /// CONNECT flags bit 0 set ([MQTT-3.1.2-3]).
    #[error("reserved CONNECT flag set")]
    ReservedConnectFlag,
    /// Will QoS 3 ([MQTT-3.1.2-14]).
    #[error("will QoS 3")]
    InvalidWillQoS,
    /// Will QoS or Will Retain set without the Will Flag ([MQTT-3.1.2-13], [MQTT-3.1.2-15]).
    #[error("will QoS or retain set without the will flag")]
    WillFieldsWithoutWillFlag,
    /// Password flag set without the user name flag ([MQTT-3.1.2-22]).
    #[error("password flag set without user name flag")]
    PasswordWithoutUsername,
    /// CONNACK acknowledge flags with reserved bits 7-1 set (3.2.2.1), or Session
    /// Present set with a non-zero return code ([MQTT-3.2.2-4]).
    #[error("invalid CONNACK flags {0:#04x}")]
    InvalidConnAckFlags(u8),
    /// CONNACK return code above 5 (3.2.2.3).
    #[error("unknown CONNACK return code {0}")]
    InvalidConnectReturnCode(u8),
    /// SUBACK return code other than 0, 1, 2 or 0x80 ([MQTT-3.9.3-2]).
    #[error("invalid SUBACK return code {0:#04x}")]
    InvalidSubAckCode(u8),
    /// MQTT 5: a reason code the packet type does not define.
    #[error("reason code {code:#04x} is not defined for packet type {packet_type}")]
    InvalidReasonCode { packet_type: u8, code: u8 },
    /// MQTT 5: a Variable Byte Integer longer than four bytes (1.5.5).
    #[error("malformed variable byte integer")]
    MalformedVarint,
    /// MQTT 5: a property identifier the specification does not define.
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u32),
    /// MQTT 5: a property the packet type does not allow.
    #[error("property {0:#04x} not allowed in this packet")]
    PropertyNotAllowed(u8),
    /// MQTT 5: a property that may appear once appears twice.
    #[error("property {0:#04x} appears more than once")]
    DuplicateProperty(u8),
    /// MQTT 5: a property value out of its range (a flag above 1, a zero maximum...).
    #[error("invalid value for property {0:#04x}")]
    InvalidPropertyValue(u8),
    /// MQTT 5: PUBLISH with an empty topic name and no topic alias (3.3.2.1).
    #[error("PUBLISH with an empty topic and no topic alias")]
    EmptyTopicWithoutAlias,
}

impl DecodeError {
    /// True for the one error the server answers with CONNACK 0x01 (unacceptable
    /// protocol version) before closing, instead of closing at once ([MQTT-3.1.2-2]).
    pub fn is_unsupported_protocol_level(&self) -> bool {
        matches!(self, DecodeError::UnsupportedProtocolLevel(_))
    }

    /// The MQTT 5 reason code for this error: Protocol Error (0x82) for a rule about
    /// what a packet may contain, Malformed Packet (0x81) for bytes that do not parse.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::UnsupportedProtocolLevel(_) => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            // 3.3.2.3.4: a Topic Alias of 0 is a Topic Alias invalid error.
            DecodeError::InvalidPropertyValue(0x23) => ReasonCode::TOPIC_ALIAS_INVALID,
            DecodeError::PropertyNotAllowed(_)
            | DecodeError::DuplicateProperty(_)
            | DecodeError::InvalidPropertyValue(_)
            | DecodeError::EmptyTopicWithoutAlias
            | DecodeError::ReservedPacketType(_) => ReasonCode::PROTOCOL_ERROR,
            DecodeError::InvalidTopic(TopicError::WildcardInName) => ReasonCode::TOPIC_NAME_INVALID,
            _ => ReasonCode::MALFORMED_PACKET,
        }
    }
}

type Result<T> = std::result::Result<T, DecodeError>;

/// [`decode_packet_v`] with the MQTT 3.1.1 layout.
pub fn decode_packet(frame: Bytes) -> Result<Packet> {
    decode_packet_v(frame, ProtocolVersion::V3_1_1)
}

/// Decodes exactly one whole packet; `frame` holds the fixed header and the whole body
/// (as located by [`super::check_frame`]). Strings and payloads are zero-copy slices of
/// `frame`. `version` is the connection's protocol: it selects the MQTT 5 layout
/// (reason codes and properties) or the 3.x one. CONNECT describes itself.
pub fn decode_packet_v(frame: Bytes, version: ProtocolVersion) -> Result<Packet> {
    let header = match parse_header(&frame) {
        Ok(Some(h)) => h,
        Ok(None) => return Err(DecodeError::IncompleteHeader),
        Err(FrameError::MalformedRemainingLength) => {
            return Err(DecodeError::MalformedRemainingLength)
        }
        // parse_header applies no limit; map defensively rather than panic.
        Err(FrameError::PacketTooLarge { .. }) => {
            return Err(DecodeError::MalformedRemainingLength)
        }
    };
    if frame.len() != header.total_len() {
        return Err(DecodeError::FrameLengthMismatch {
            expected: header.total_len(),
            actual: frame.len(),
        });
    }
    let mut body = frame;
    body.advance(header.header_len); // header_len <= total_len == len, checked above
    let packet_type = header.first_byte >> 4;
    let flags = header.first_byte & 0x0F;
    let v5 = version.is_v5();

    let expect_flags = |want: u8| {
        if flags == want {
            Ok(())
        } else {
            Err(DecodeError::InvalidHeaderFlags { packet_type, flags })
        }
    };

    let packet = match packet_type {
        1 => {
            expect_flags(0)?;
            Packet::Connect(Box::new(decode_connect(&mut body)?))
        }
        2 => {
            expect_flags(0)?;
            Packet::ConnAck(decode_connack(&mut body, v5)?)
        }
        3 => Packet::Publish(decode_publish(flags, &mut body, v5)?),
        4 => {
            expect_flags(0)?;
            Packet::PubAck(decode_ack(packet_type, &mut body, v5)?)
        }
        5 => {
            expect_flags(0)?;
            Packet::PubRec(decode_ack(packet_type, &mut body, v5)?)
        }
        6 => {
            expect_flags(0b0010)?;
            Packet::PubRel(decode_ack(packet_type, &mut body, v5)?)
        }
        7 => {
            expect_flags(0)?;
            Packet::PubComp(decode_ack(packet_type, &mut body, v5)?)
        }
        8 => {
            expect_flags(0b0010)?;
            Packet::Subscribe(decode_subscribe(&mut body, v5)?)
        }
        9 => {
            expect_flags(0)?;
            Packet::SubAck(decode_suback(&mut body, v5)?)
        }
        10 => {
            expect_flags(0b0010)?;
            Packet::Unsubscribe(decode_unsubscribe(&mut body, v5)?)
        }
        11 => {
            expect_flags(0)?;
            Packet::UnsubAck(decode_unsuback(&mut body, v5)?)
        }
        12 => {
            expect_flags(0)?;
            Packet::PingReq
        }
        13 => {
            expect_flags(0)?;
            Packet::PingResp
        }
        14 => {
            expect_flags(0)?;
            let (reason, props) = reason_and_props(14, &mut body, v5, Allowed::DISCONNECT)?;
            Packet::Disconnect(Disconnect { reason, props })
        }
        15 if v5 => {
            expect_flags(0)?;
            let (reason, props) = reason_and_props(15, &mut body, v5, Allowed::AUTH)?;
            Packet::Auth(Auth { reason, props })
        }
        other => return Err(DecodeError::ReservedPacketType(other)),
    };
    if body.has_remaining() {
        return Err(DecodeError::TrailingBytes(body.remaining()));
    }
    Ok(packet)
}

// ---- field readers: each checks the length before touching `Buf` ----

fn read_u8(buf: &mut Bytes) -> Result<u8> {
    if buf.remaining() < 1 {
        return Err(DecodeError::Truncated);
    }
    Ok(buf.get_u8())
}

fn read_u16(buf: &mut Bytes) -> Result<u16> {
    if buf.remaining() < 2 {
        return Err(DecodeError::Truncated);
    }
    Ok(buf.get_u16())
}

fn take(buf: &mut Bytes, n: usize) -> Result<Bytes> {
    if buf.remaining() < n {
        return Err(DecodeError::Truncated);
    }
    Ok(buf.split_to(n))
}

/// A two-byte length followed by that many bytes (1.5.3 / binary fields).
fn read_binary(buf: &mut Bytes) -> Result<Bytes> {
    let len = read_u16(buf)?;
    take(buf, usize::from(len))
}

/// A UTF-8 encoded string ([MQTT-1.5.3-1], [MQTT-1.5.3-2]); zero-copy.
fn read_string(buf: &mut Bytes) -> Result<ByteString> {
    checked_string(read_binary(buf)?)
}

/// `raw` as a string: valid UTF-8 without U+0000 ([MQTT-1.5.3-1], [MQTT-1.5.3-2]).
fn checked_string(raw: Bytes) -> Result<ByteString> {
    if raw.contains(&0) {
        return Err(DecodeError::NullChar);
    }
    ByteString::try_from(raw).map_err(|_| DecodeError::InvalidUtf8)
}

fn packet_id(buf: &mut Bytes) -> Result<PacketId> {
    PacketId::new(read_u16(buf)?).ok_or(DecodeError::ZeroPacketId)
}

fn props(buf: &mut Bytes, v5: bool, allowed: Allowed) -> Result<Props> {
    if v5 {
        Ok(Props::new(Properties::decode(buf, allowed)?))
    } else {
        Ok(Props::default())
    }
}

fn reason(packet_type: u8, code: u8) -> Result<ReasonCode> {
    let r = ReasonCode(code);
    if r.allowed_in(packet_type) {
        Ok(r)
    } else {
        Err(DecodeError::InvalidReasonCode { packet_type, code })
    }
}

/// The optional reason code and properties that end DISCONNECT and AUTH on MQTT 5: an
/// empty body means Success and no properties (3.14.2.1, 3.15.2.1).
fn reason_and_props(
    packet_type: u8,
    buf: &mut Bytes,
    v5: bool,
    allowed: Allowed,
) -> Result<(ReasonCode, Props)> {
    if !v5 || !buf.has_remaining() {
        return Ok((ReasonCode::SUCCESS, Props::default()));
    }
    let code = reason(packet_type, read_u8(buf)?)?;
    let props = if buf.has_remaining() {
        props(buf, true, allowed)?
    } else {
        Props::default()
    };
    Ok((code, props))
}

// ---- per packet ----

fn decode_connect(buf: &mut Bytes) -> Result<Connect> {
    let name = read_binary(buf)?;
    let level = read_u8(buf)?;
    let version = match (&name[..], level) {
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQTT", 4) => ProtocolVersion::V3_1_1,
        (b"MQIsdp", 3) => ProtocolVersion::V3_1,
        (b"MQTT" | b"MQIsdp", other) => {
            // Stop here: the rest may follow another version's layout.
            return Err(DecodeError::UnsupportedProtocolLevel(other));
        }
        _ => return Err(DecodeError::InvalidProtocolName),
    };
    let v5 = version.is_v5();
    let flags = read_u8(buf)?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::ReservedConnectFlag); // [MQTT-3.1.2-3]
    }
    let clean_session = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos_bits = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    let will_qos = if will_flag {
        QoS::from_u8(will_qos_bits).ok_or(DecodeError::InvalidWillQoS)? // [MQTT-3.1.2-14]
    } else if will_qos_bits != 0 || will_retain {
        return Err(DecodeError::WillFieldsWithoutWillFlag); // [MQTT-3.1.2-13], [MQTT-3.1.2-15]
    } else {
        QoS::AtMostOnce
    };
    if password_flag && !username_flag && !v5 {
        // MQTT 5 allows a password without a user name (3.1.2.9).
        return Err(DecodeError::PasswordWithoutUsername); // [MQTT-3.1.2-22]
    }
    let keep_alive_secs = read_u16(buf)?;
    let connect_props = props(buf, v5, Allowed::CONNECT)?;

    let client_id = read_string(buf)?;
    let will = if will_flag {
        let will_props = props(buf, v5, Allowed::WILL)?;
        let topic = TopicName::new(read_string(buf)?)?;
        let payload = read_binary(buf)?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            props: will_props,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(read_string(buf)?)
    } else {
        None
    };
    let password = if password_flag {
        Some(read_binary(buf)?)
    } else {
        None
    };
    Ok(Connect {
        version,
        clean_session,
        keep_alive_secs,
        client_id,
        will,
        username,
        password,
        props: connect_props,
    })
}

fn decode_connack(buf: &mut Bytes, v5: bool) -> Result<ConnAck> {
    let flags = read_u8(buf)?;
    let raw = read_u8(buf)?;
    if flags & !0x01 != 0 {
        return Err(DecodeError::InvalidConnAckFlags(flags)); // 3.2.2.1: bits 7-1 reserved
    }
    let code = if v5 {
        reason(2, raw)?
    } else {
        ReasonCode::from_v3_connack(raw).ok_or(DecodeError::InvalidConnectReturnCode(raw))?
    };
    let session_present = flags & 0x01 != 0;
    if session_present && code != ReasonCode::SUCCESS {
        return Err(DecodeError::InvalidConnAckFlags(flags)); // [MQTT-3.2.2-4]
    }
    Ok(ConnAck {
        session_present,
        code,
        props: props(buf, v5, Allowed::CONNACK)?,
    })
}

fn decode_publish(flags: u8, buf: &mut Bytes, v5: bool) -> Result<Publish> {
    let dup = flags & 0x08 != 0;
    let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::InvalidPublishQoS)?; // [MQTT-3.3.1-4]
    let retain = flags & 0x01 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::DupOnQoS0); // [MQTT-3.3.1-2]
    }
    // Nearly every topic is plain ASCII: one pass proves it a valid topic name. Any
    // other is checked as a string now (its errors come first, as before) and as a
    // topic once the properties tell whether an empty one names an alias.
    let topic = match TopicName::from_plain_ascii(read_binary(buf)?) {
        Ok(topic) => Ok(topic),
        Err(raw) => Err(checked_string(raw)?),
    };
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(packet_id(buf)?)
    };
    let props = props(buf, v5, Allowed::PUBLISH)?;
    let topic = match topic {
        Ok(topic) => topic,
        Err(raw) if v5 && raw.is_empty() => {
            if props.topic_alias.is_none() {
                return Err(DecodeError::EmptyTopicWithoutAlias);
            }
            TopicName::alias_only()
        }
        Err(raw) => TopicName::new(raw)?, // [MQTT-3.3.2-1], [MQTT-3.3.2-2]
    };
    let payload = std::mem::take(buf);
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        payload,
        props,
    })
}

/// A PUBLISH read where it lies: topic and payload borrow the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishRef<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: &'a str,
    pub packet_id: Option<PacketId>,
    pub payload: &'a [u8],
}

/// Reads the PUBLISH at the start of `buf` in place when it has the common shape:
/// whole, at most `max_packet_bytes` long, with a plain ASCII topic name (see
/// [`TopicName::from_plain_ascii`]) and, in MQTT 5, no properties. Returns it and its
/// length on the wire; [`decode_packet_v`] decodes those bytes to the same fields.
///
/// `None` for anything else, well-formed or not: another packet type, an incomplete
/// PUBLISH, one of another shape, a malformed one. The caller then decodes with
/// [`super::decode_one_v`], which also says what is wrong. For readers that look at a
/// message and drop it (the load generator): no reference counts, no [`Packet`].
pub fn peek_plain_publish(
    buf: &[u8],
    max_packet_bytes: usize,
    version: ProtocolVersion,
) -> Option<(PublishRef<'_>, usize)> {
    let frame = check_frame(buf, max_packet_bytes).ok()??;
    if frame.first_byte >> 4 != 3 {
        return None;
    }
    let body = buf.get(frame.header_len..frame.total_len())?;
    let flags = frame.first_byte & 0x0F;
    let qos = QoS::from_u8((flags >> 1) & 0x03)?;
    let dup = flags & 0x08 != 0;
    if dup && qos == QoS::AtMostOnce {
        return None;
    }
    let (len, rest) = body.split_first_chunk::<2>()?;
    let (topic, rest) = rest.split_at_checked(usize::from(u16::from_be_bytes(*len)))?;
    if !is_plain_ascii_name(topic) {
        return None;
    }
    // SAFETY: `is_plain_ascii_name` proved every byte ASCII, so the bytes are UTF-8.
    let topic = unsafe { std::str::from_utf8_unchecked(topic) };
    let (packet_id, rest) = match qos {
        QoS::AtMostOnce => (None, rest),
        _ => {
            let (id, rest) = rest.split_first_chunk::<2>()?;
            (Some(PacketId::new(u16::from_be_bytes(*id))?), rest)
        }
    };
    let payload = match (version.is_v5(), rest.split_first()) {
        (false, _) => rest,
        // A property length of zero: no properties.
        (true, Some((0, payload))) => payload,
        (true, _) => return None,
    };
    let publish = PublishRef {
        dup,
        qos,
        retain: flags & 0x01 != 0,
        topic,
        packet_id,
        payload,
    };
    Some((publish, frame.total_len()))
}

/// Takes the PUBLISH at the start of `buf` off it when [`peek_plain_publish`] reads
/// it: the same [`Publish`] that [`super::decode_one_v`] returns for those bytes, with
/// topic and payload still slices of the buffer, without the generic decoder's
/// second look at the fixed header and its `Packet` and `Result` layers. `None`
/// (and `buf` untouched) for every other packet: decode it with `decode_one_v`.
pub fn take_plain_publish(
    buf: &mut bytes::BytesMut,
    max_packet_bytes: usize,
    version: ProtocolVersion,
) -> Option<Publish> {
    let (p, len) = peek_plain_publish(buf, max_packet_bytes, version)?;
    let (dup, qos, retain, packet_id) = (p.dup, p.qos, p.retain, p.packet_id);
    let topic_len = p.topic.len();
    let payload_len = p.payload.len();
    let mut frame = buf.split_to(len).freeze();
    // Counted back from the end, the frame holds the payload, then (MQTT 5) the zero
    // property length, then (QoS 1 and 2) the packet id, then the topic: so the topic
    // starts here. Every length comes from `peek_plain_publish` reading these same
    // bytes, so the subtractions and the cuts below stay within the frame.
    let topic_at = len
        - payload_len
        - topic_len
        - usize::from(qos != QoS::AtMostOnce) * 2
        - usize::from(version.is_v5());
    debug_assert!(topic_at >= 4 && topic_at <= len);
    frame.advance(topic_at);
    let topic = frame.split_to(topic_len);
    frame.advance(frame.len() - payload_len);
    // SAFETY: `peek_plain_publish` proved these bytes a plain ASCII topic name.
    let topic = unsafe { TopicName::from_plain_ascii_unchecked(topic) };
    Some(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        payload: frame,
        props: Props::default(),
    })
}

/// Takes a PUBACK, PUBREC, PUBREL or PUBCOMP of four bytes (a packet id and nothing
/// else: reason Success and no properties, the common shape in every version) off
/// the front of `buf`: the same packet [`super::decode_one_v`] returns for those
/// bytes, without its generic layers. With QoS 1 and 2 these are as many as the
/// PUBLISHes. `None` (and `buf` untouched) for every other packet, including a zero
/// packet id (the decoder reports it): decode it with `decode_one_v`.
pub fn take_short_ack(buf: &mut bytes::BytesMut, max_packet_bytes: usize) -> Option<Packet> {
    let [first, 2, high, low, ..] = buf[..] else {
        return None;
    };
    if max_packet_bytes < 4 {
        return None;
    }
    let ack = Ack::new(PacketId::new(u16::from_be_bytes([high, low]))?);
    let packet = match first {
        0x40 => Packet::PubAck(ack),
        0x50 => Packet::PubRec(ack),
        0x62 => Packet::PubRel(ack),
        0x70 => Packet::PubComp(ack),
        _ => return None,
    };
    buf.advance(4);
    Some(packet)
}

fn decode_ack(packet_type: u8, buf: &mut Bytes, v5: bool) -> Result<Ack> {
    let packet_id = packet_id(buf)?;
    // 3.4.2.1: a remaining length of 2 means Success and no properties.
    let (reason, props) = reason_and_props(packet_type, buf, v5, Allowed::ACK)?;
    Ok(Ack {
        packet_id,
        reason,
        props,
    })
}

fn decode_subscribe(buf: &mut Bytes, v5: bool) -> Result<Subscribe> {
    let packet_id = packet_id(buf)?;
    let props = props(buf, v5, Allowed::SUBSCRIBE)?;
    let mut filters = Vec::new();
    while buf.has_remaining() {
        let filter = TopicFilter::new(read_string(buf)?)?;
        let options = read_u8(buf)?;
        let bad = || DecodeError::InvalidSubscriptionOptions(options);
        // [MQTT-3.8.3-4] (3.1.1: upper six bits reserved), [MQTT-3.8.3-5] (5: bits 6-7
        // reserved, Retain Handling 3 is a Protocol Error); QoS 3 is malformed in both.
        let reserved = if v5 { 0xC0 } else { 0xFC };
        if options & reserved != 0 {
            return Err(bad());
        }
        let qos = QoS::from_u8(options & 0x03).ok_or_else(bad)?;
        let retain_handling = match (options >> 4) & 0x03 {
            0 => RetainHandling::OnSubscribe,
            1 => RetainHandling::OnNewSubscription,
            2 => RetainHandling::Never,
            _ => return Err(bad()),
        };
        filters.push((
            filter,
            SubOptions {
                qos,
                no_local: options & 0x04 != 0,
                retain_as_published: options & 0x08 != 0,
                retain_handling,
            },
        ));
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters); // [MQTT-3.8.3-3]
    }
    Ok(Subscribe {
        packet_id,
        filters,
        props,
    })
}

fn decode_suback(buf: &mut Bytes, v5: bool) -> Result<SubAck> {
    let packet_id = packet_id(buf)?;
    let props = props(buf, v5, Allowed::ACK)?;
    let mut codes = Vec::with_capacity(buf.remaining());
    while buf.has_remaining() {
        let code = buf.get_u8();
        let ok = if v5 {
            ReasonCode(code).allowed_in(9)
        } else {
            matches!(code, 0 | 1 | 2 | 0x80)
        };
        if !ok {
            return Err(DecodeError::InvalidSubAckCode(code));
        }
        codes.push(ReasonCode(code));
    }
    Ok(SubAck {
        packet_id,
        codes,
        props,
    })
}

fn decode_unsubscribe(buf: &mut Bytes, v5: bool) -> Result<Unsubscribe> {
    let packet_id = packet_id(buf)?;
    let props = props(buf, v5, Allowed::UNSUBSCRIBE)?;
    let mut filters = Vec::new();
    while buf.has_remaining() {
        filters.push(TopicFilter::new(read_string(buf)?)?);
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters); // [MQTT-3.10.3-2]
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        props,
    })
}

fn decode_unsuback(buf: &mut Bytes, v5: bool) -> Result<UnsubAck> {
    let packet_id = packet_id(buf)?;
    if !v5 {
        return Ok(UnsubAck {
            packet_id,
            codes: Vec::new(),
            props: Props::default(),
        });
    }
    let props = props(buf, true, Allowed::ACK)?;
    let mut codes = Vec::with_capacity(buf.remaining());
    while buf.has_remaining() {
        codes.push(reason(11, buf.get_u8())?);
    }
    Ok(UnsubAck {
        packet_id,
        codes,
        props,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::encode_remaining_length;

    /// A frame from its first byte and body.
    fn frame(first: u8, body: &[u8]) -> Bytes {
        let mut v = vec![first];
        encode_remaining_length(body.len(), &mut v);
        v.extend_from_slice(body);
        v.into()
    }

    fn dec(first: u8, body: &[u8]) -> Result<Packet> {
        decode_packet(frame(first, body))
    }

    fn s(v: &mut Vec<u8>, x: &[u8]) {
        v.extend_from_slice(&(x.len() as u16).to_be_bytes());
        v.extend_from_slice(x);
    }

    /// CONNECT body: protocol name, level, flags, keep alive 60, then `payload`.
    fn connect(name: &[u8], level: u8, flags: u8, payload: &[&[u8]]) -> Result<Packet> {
        let mut b = Vec::new();
        s(&mut b, name);
        b.push(level);
        b.push(flags);
        b.extend_from_slice(&60u16.to_be_bytes());
        for p in payload {
            s(&mut b, p);
        }
        dec(0x10, &b)
    }

    fn id(n: u16) -> PacketId {
        PacketId::new(n).unwrap()
    }

    #[test]
    fn reserved_packet_types() {
        // 2.2.1: types 0 and 15 are reserved.
        assert_eq!(dec(0x00, &[]), Err(DecodeError::ReservedPacketType(0)));
        assert_eq!(dec(0xF0, &[]), Err(DecodeError::ReservedPacketType(15)));
    }

    #[test]
    fn reserved_header_flags() {
        // [MQTT-2.2.2-1], [MQTT-2.2.2-2]
        let bad = |first: u8, body: &[u8]| {
            assert_eq!(
                dec(first, body),
                Err(DecodeError::InvalidHeaderFlags {
                    packet_type: first >> 4,
                    flags: first & 0x0F
                }),
                "{first:#04x}"
            );
        };
        bad(0x11, &[]);
        bad(0x28, &[0, 0]);
        bad(0x41, &[0, 1]);
        bad(0x52, &[0, 1]);
        bad(0x60, &[0, 1]); // PUBREL needs 0b0010
        bad(0x63, &[0, 1]);
        bad(0x74, &[0, 1]);
        bad(0x80, &[0, 1, 0, 1, b'a', 0]); // SUBSCRIBE needs 0b0010
        bad(0x8A, &[0, 1, 0, 1, b'a', 0]);
        bad(0x91, &[0, 1, 0]);
        bad(0xA0, &[0, 1, 0, 1, b'a']); // UNSUBSCRIBE needs 0b0010
        bad(0xB2, &[0, 1]);
        bad(0xC1, &[]);
        bad(0xD8, &[]);
        bad(0xE2, &[]);
        assert_eq!(dec(0x62, &[0, 1]), Ok(Packet::pubrel(id(1))));
    }

    #[test]
    fn publish_qos3_is_malformed() {
        // [MQTT-3.3.1-4]
        assert_eq!(
            dec(0x36, &[0, 1, b'a', 0, 1]),
            Err(DecodeError::InvalidPublishQoS)
        );
    }

    #[test]
    fn publish_dup_on_qos0_is_malformed() {
        // [MQTT-3.3.1-2]
        assert_eq!(dec(0x38, &[0, 1, b'a']), Err(DecodeError::DupOnQoS0));
        assert!(dec(0x3A, &[0, 1, b'a', 0, 1]).is_ok());
    }

    #[test]
    fn publish_zero_copy_and_fields() {
        let f = frame(0x35, &[0, 3, b'a', b'/', b'b', 0x12, 0x34, b'x', b'y']);
        let range = f.as_ptr_range();
        let Ok(Packet::Publish(p)) = decode_packet(f) else {
            panic!("not a publish")
        };
        assert_eq!(p.qos, QoS::ExactlyOnce);
        assert!(p.retain && !p.dup);
        assert_eq!(p.topic.as_str(), "a/b");
        assert_eq!(p.packet_id, Some(id(0x1234)));
        assert_eq!(&p.payload[..], b"xy");
        assert!(range.contains(&p.payload.as_ptr()));
        assert!(range.contains(&p.topic.as_str().as_ptr()));
    }

    #[test]
    fn publish_empty_payload_and_topic_rules() {
        assert!(dec(0x30, &[0, 1, b'a']).is_ok());
        // [MQTT-3.3.2-2]: no wildcards in a topic name.
        assert_eq!(
            dec(0x30, &[0, 3, b'a', b'/', b'+']),
            Err(DecodeError::InvalidTopic(TopicError::WildcardInName))
        );
        // [MQTT-4.7.3-1]: topic at least one character.
        assert_eq!(
            dec(0x30, &[0, 0]),
            Err(DecodeError::InvalidTopic(TopicError::Empty))
        );
    }

    #[test]
    fn body_shorter_than_fields() {
        assert_eq!(dec(0x40, &[0]), Err(DecodeError::Truncated));
        assert_eq!(dec(0x30, &[0, 5, b'a']), Err(DecodeError::Truncated));
        assert_eq!(dec(0x32, &[0, 1, b'a', 0]), Err(DecodeError::Truncated));
        assert_eq!(dec(0x20, &[0]), Err(DecodeError::Truncated));
        assert_eq!(dec(0x82, &[0, 1, 0, 1, b'a']), Err(DecodeError::Truncated));
    }

    #[test]
    fn trailing_bytes() {
        assert_eq!(dec(0x40, &[0, 1, 9]), Err(DecodeError::TrailingBytes(1)));
        assert_eq!(dec(0xC0, &[1, 2]), Err(DecodeError::TrailingBytes(2)));
        assert_eq!(dec(0x20, &[0, 0, 0]), Err(DecodeError::TrailingBytes(1)));
        assert_eq!(
            connect(b"MQTT", 4, 0x02, &[b"id", b"extra"]),
            Err(DecodeError::TrailingBytes(7))
        );
    }

    #[test]
    fn frame_length_must_match_header() {
        let mut f = frame(0x40, &[0, 1]).to_vec();
        f.push(0);
        assert_eq!(
            decode_packet(f.into()),
            Err(DecodeError::FrameLengthMismatch {
                expected: 4,
                actual: 5
            })
        );
        assert_eq!(
            decode_packet(Bytes::from_static(&[0x40, 2, 0])),
            Err(DecodeError::FrameLengthMismatch {
                expected: 4,
                actual: 3
            })
        );
        assert_eq!(
            decode_packet(Bytes::new()),
            Err(DecodeError::IncompleteHeader)
        );
        assert_eq!(
            decode_packet(Bytes::from_static(&[0x30, 0x80])),
            Err(DecodeError::IncompleteHeader)
        );
        assert_eq!(
            decode_packet(Bytes::from_static(&[0x30, 0x80, 0x80, 0x80, 0x80, 1])),
            Err(DecodeError::MalformedRemainingLength)
        );
    }

    #[test]
    fn invalid_utf8_and_null() {
        // [MQTT-1.5.3-1]: ill-formed UTF-8, including encoded surrogates.
        assert_eq!(dec(0x30, &[0, 1, 0xFF]), Err(DecodeError::InvalidUtf8));
        assert_eq!(
            dec(0x30, &[0, 3, 0xED, 0xA0, 0x80]),
            Err(DecodeError::InvalidUtf8)
        );
        // [MQTT-1.5.3-2]: U+0000.
        assert_eq!(
            dec(0x30, &[0, 3, b'a', 0, b'b']),
            Err(DecodeError::NullChar)
        );
        assert_eq!(
            connect(b"MQTT", 4, 0x02, &[b"a\0"]),
            Err(DecodeError::NullChar)
        );
        // Non-UTF-8 user name is an error; the password is binary.
        assert_eq!(
            connect(b"MQTT", 4, 0x82, &[b"id", b"\xC3"]),
            Err(DecodeError::InvalidUtf8)
        );
        let Ok(Packet::Connect(c)) = connect(b"MQTT", 4, 0xC2, &[b"id", b"u", b"\xFF\x00"]) else {
            panic!()
        };
        assert_eq!(c.password.as_deref(), Some(&b"\xFF\x00"[..]));
    }

    #[test]
    fn packet_id_zero() {
        // [MQTT-2.3.1-1]
        for first in [0x40, 0x50, 0x62, 0x70, 0xB0] {
            assert_eq!(
                dec(first, &[0, 0]),
                Err(DecodeError::ZeroPacketId),
                "{first:#x}"
            );
        }
        assert_eq!(
            dec(0x32, &[0, 1, b'a', 0, 0]),
            Err(DecodeError::ZeroPacketId)
        );
        assert_eq!(
            dec(0x82, &[0, 0, 0, 1, b'a', 0]),
            Err(DecodeError::ZeroPacketId)
        );
        assert_eq!(
            dec(0xA2, &[0, 0, 0, 1, b'a']),
            Err(DecodeError::ZeroPacketId)
        );
        assert_eq!(dec(0x90, &[0, 0, 0]), Err(DecodeError::ZeroPacketId));
    }

    #[test]
    fn subscribe_without_filters() {
        // [MQTT-3.8.3-3]
        assert_eq!(dec(0x82, &[0, 1]), Err(DecodeError::NoTopicFilters));
    }

    #[test]
    fn unsubscribe_without_filters() {
        // [MQTT-3.10.3-2]
        assert_eq!(dec(0xA2, &[0, 1]), Err(DecodeError::NoTopicFilters));
    }

    #[test]
    fn subscribe_options() {
        // [MQTT-3.8.3-4]: QoS 3 and reserved upper bits are malformed.
        assert_eq!(
            dec(0x82, &[0, 1, 0, 1, b'a', 3]),
            Err(DecodeError::InvalidSubscriptionOptions(3))
        );
        assert_eq!(
            dec(0x82, &[0, 1, 0, 1, b'a', 0x41]),
            Err(DecodeError::InvalidSubscriptionOptions(0x41))
        );
        // [MQTT-4.7.1-2]: filter rules apply.
        assert_eq!(
            dec(0x82, &[0, 1, 0, 2, b'a', b'#', 0]),
            Err(DecodeError::InvalidTopic(TopicError::BadMultiLevelWildcard))
        );
        let Ok(Packet::Subscribe(s)) = dec(0x82, &[0, 7, 0, 1, b'#', 2, 0, 3, b'a', b'/', b'+', 1])
        else {
            panic!()
        };
        assert_eq!(s.packet_id, id(7));
        assert_eq!(s.filters.len(), 2);
        assert_eq!(s.filters[0].0.as_str(), "#");
        assert_eq!(s.filters[0].1.qos, QoS::ExactlyOnce);
        assert_eq!(s.filters[1].1.qos, QoS::AtLeastOnce);
    }

    #[test]
    fn connect_protocol_name_and_level() {
        // [MQTT-3.1.2-1]
        assert_eq!(
            connect(b"MQTX", 4, 0x02, &[b"id"]),
            Err(DecodeError::InvalidProtocolName)
        );
        assert_eq!(
            connect(b"\xFF\xFE", 4, 0x02, &[b"id"]),
            Err(DecodeError::InvalidProtocolName)
        );
        // [MQTT-3.1.2-2]: known name, unsupported level; CONNACK 0x01 follows.
        let e = connect(b"MQTT", 6, 0x02, &[b"id"]).unwrap_err();
        assert_eq!(e, DecodeError::UnsupportedProtocolLevel(6));
        assert!(e.is_unsupported_protocol_level());
        assert_eq!(
            connect(b"MQTT", 3, 0x02, &[b"id"]),
            Err(DecodeError::UnsupportedProtocolLevel(3))
        );
        assert_eq!(
            connect(b"MQIsdp", 4, 0x02, &[b"id"]),
            Err(DecodeError::UnsupportedProtocolLevel(4))
        );
        // An MQTT 5 CONNECT carries properties after the keep alive.
        let mut b = Vec::new();
        s(&mut b, b"MQTT");
        b.extend_from_slice(&[5, 0x02, 0, 60, 0x05, 0x11, 0, 0, 0, 10]);
        s(&mut b, b"id");
        let Ok(Packet::Connect(c)) = dec(0x10, &b) else {
            panic!("MQTT 5 CONNECT")
        };
        assert_eq!(c.version, ProtocolVersion::V5);
        assert_eq!(c.props.session_expiry_interval, Some(10));
        assert!(!DecodeError::InvalidProtocolName.is_unsupported_protocol_level());

        let Ok(Packet::Connect(c)) = connect(b"MQIsdp", 3, 0x02, &[b"id"]) else {
            panic!()
        };
        assert_eq!(c.version, ProtocolVersion::V3_1);
        assert!(c.clean_session);
        assert_eq!(c.keep_alive_secs, 60);
        assert_eq!(&*c.client_id, "id");
    }

    #[test]
    fn connect_reserved_flag() {
        // [MQTT-3.1.2-3]
        assert_eq!(
            connect(b"MQTT", 4, 0x03, &[b"id"]),
            Err(DecodeError::ReservedConnectFlag)
        );
    }

    #[test]
    fn connect_will_qos3() {
        // [MQTT-3.1.2-14]
        assert_eq!(
            connect(b"MQTT", 4, 0x1E, &[b"id", b"t", b"m"]),
            Err(DecodeError::InvalidWillQoS)
        );
    }

    #[test]
    fn connect_will_qos_without_will_flag() {
        // [MQTT-3.1.2-13]
        assert_eq!(
            connect(b"MQTT", 4, 0x0A, &[b"id"]),
            Err(DecodeError::WillFieldsWithoutWillFlag)
        );
    }

    #[test]
    fn connect_will_retain_without_will_flag() {
        // [MQTT-3.1.2-15]
        assert_eq!(
            connect(b"MQTT", 4, 0x22, &[b"id"]),
            Err(DecodeError::WillFieldsWithoutWillFlag)
        );
    }

    #[test]
    fn connect_password_without_username() {
        // [MQTT-3.1.2-22]
        assert_eq!(
            connect(b"MQTT", 4, 0x42, &[b"id", b"pw"]),
            Err(DecodeError::PasswordWithoutUsername)
        );
    }

    #[test]
    fn connect_full() {
        let Ok(Packet::Connect(c)) =
            connect(b"MQTT", 4, 0xF4, &[b"", b"w/t", b"bye", b"user", b"pw"])
        else {
            panic!()
        };
        assert_eq!(c.version, ProtocolVersion::V3_1_1);
        assert!(!c.clean_session);
        assert_eq!(&*c.client_id, ""); // empty client id is the broker's call
        let w = c.will.unwrap();
        assert_eq!(w.topic.as_str(), "w/t");
        assert_eq!(&w.payload[..], b"bye");
        assert_eq!(w.qos, QoS::ExactlyOnce);
        assert!(w.retain);
        assert_eq!(c.username.as_deref(), Some("user"));
        assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
        // 3.1.3.2: the will topic is a topic name.
        assert_eq!(
            connect(b"MQTT", 4, 0x06, &[b"id", b"w/#", b"m"]),
            Err(DecodeError::InvalidTopic(TopicError::WildcardInName))
        );
        // Fields announced by flags but missing.
        assert_eq!(
            connect(b"MQTT", 4, 0x82, &[b"id"]),
            Err(DecodeError::Truncated)
        );
    }

    #[test]
    fn connack() {
        assert_eq!(
            dec(0x20, &[1, 0]),
            Ok(Packet::ConnAck(ConnAck {
                session_present: true,
                code: ReasonCode::SUCCESS,
                props: Default::default(),
            }))
        );
        // 3.2.2.1: bits 7-1 of the acknowledge flags are reserved.
        assert_eq!(dec(0x20, &[2, 0]), Err(DecodeError::InvalidConnAckFlags(2)));
        // [MQTT-3.2.2-4]: session present only with return code 0.
        assert_eq!(dec(0x20, &[1, 5]), Err(DecodeError::InvalidConnAckFlags(1)));
        // 3.2.2.3: codes 6-255 are reserved.
        assert_eq!(
            dec(0x20, &[0, 6]),
            Err(DecodeError::InvalidConnectReturnCode(6))
        );
    }

    #[test]
    fn suback_codes() {
        assert_eq!(
            dec(0x90, &[0, 1, 0, 1, 2, 0x80]),
            Ok(Packet::SubAck(SubAck {
                packet_id: id(1),
                codes: vec![
                    ReasonCode::granted(QoS::AtMostOnce),
                    ReasonCode::granted(QoS::AtLeastOnce),
                    ReasonCode::granted(QoS::ExactlyOnce),
                    ReasonCode::UNSPECIFIED_ERROR
                ],
                props: Default::default(),
            }))
        );
        // [MQTT-3.9.3-2]
        assert_eq!(
            dec(0x90, &[0, 1, 3]),
            Err(DecodeError::InvalidSubAckCode(3))
        );
        assert_eq!(
            dec(0x90, &[0, 1, 0x81]),
            Err(DecodeError::InvalidSubAckCode(0x81))
        );
    }

    #[test]
    fn simple_packets() {
        assert_eq!(dec(0x40, &[0, 1]), Ok(Packet::puback(id(1))));
        assert_eq!(dec(0x50, &[1, 0]), Ok(Packet::pubrec(id(256))));
        assert_eq!(dec(0x70, &[0xFF, 0xFF]), Ok(Packet::pubcomp(id(65535))));
        assert_eq!(dec(0xB0, &[0, 2]), Ok(Packet::unsuback(id(2))));
        assert_eq!(dec(0xC0, &[]), Ok(Packet::PingReq));
        assert_eq!(dec(0xD0, &[]), Ok(Packet::PingResp));
        assert_eq!(dec(0xE0, &[]), Ok(Packet::disconnect()));
        assert_eq!(
            dec(0xA2, &[0, 3, 0, 1, b'+']),
            Ok(Packet::Unsubscribe(Unsubscribe {
                packet_id: id(3),
                filters: vec![TopicFilter::new("+").unwrap()],
                props: Default::default(),
            }))
        );
    }

    #[test]
    fn plain_publishes_are_peeked_in_place_and_the_rest_left_to_the_decoder() {
        use ProtocolVersion::{V3_1_1, V5};
        let peek = |first: u8, body: &[u8], v| {
            let wire = frame(first, body);
            peek_plain_publish(&wire, 1024, v).map(|(p, n)| {
                assert_eq!(n, wire.len());
                (
                    p.qos,
                    p.packet_id.map(u16::from),
                    p.topic.to_owned(),
                    p.payload.to_vec(),
                )
            })
        };
        let id = |v: u16| PacketId::new(v);
        // QoS 0 and QoS 1, 3.1.1.
        assert_eq!(
            peek(0x30, b"\0\x03a/bxy", V3_1_1),
            Some((QoS::AtMostOnce, None, "a/b".to_owned(), b"xy".to_vec()))
        );
        assert_eq!(
            peek(0x3B, b"\0\x01t\0\x07p", V3_1_1),
            Some((
                QoS::AtLeastOnce,
                id(7).map(u16::from),
                "t".to_owned(),
                b"p".to_vec()
            ))
        );
        // MQTT 5: an empty property set is peeked, any property is not.
        assert_eq!(
            peek(0x30, b"\0\x01t\0p", V5),
            Some((QoS::AtMostOnce, None, "t".to_owned(), b"p".to_vec()))
        );
        assert_eq!(peek(0x30, b"\0\x01t\x02\x01\x01p", V5), None);
        // Not plain, or not well-formed: the decoder's business.
        for (first, body) in [
            (0x20, &b"\0\0"[..]),      // CONNACK
            (0x36, b"\0\x01t\0\x01"),  // QoS 3
            (0x38, b"\0\x01t"),        // DUP on QoS 0
            (0x32, b"\0\x01t\0\0"),    // packet id 0
            (0x30, b"\0\x01+"),        // wildcard in a name
            (0x30, b"\0\x02\xC3\xA9"), // valid, but not ASCII
            (0x30, b"\0\0"),           // empty topic
            (0x30, b"\0\x05t"),        // topic longer than the packet
        ] {
            assert_eq!(peek(first, body, V3_1_1), None, "{first:#x} {body:?}");
        }
        // Incomplete, or over the size limit.
        let wire = frame(0x30, b"\0\x01tpayload");
        assert!(peek_plain_publish(&wire[..wire.len() - 1], 1024, V3_1_1).is_none());
        assert!(peek_plain_publish(&wire, wire.len() - 1, V3_1_1).is_none());
        assert!(peek_plain_publish(&wire, wire.len(), V3_1_1).is_some());
    }

    #[test]
    fn short_acks_are_taken_whole_and_the_rest_left_to_the_decoder() {
        let take = |wire: &[u8], max| {
            let mut buf = bytes::BytesMut::from(wire);
            let p = take_short_ack(&mut buf, max);
            (p, buf.to_vec())
        };
        let id = |v: u16| PacketId::new(v).unwrap();
        for (first, want) in [
            (0x40, Packet::puback(id(258))),
            (0x50, Packet::pubrec(id(258))),
            (0x62, Packet::pubrel(id(258))),
            (0x70, Packet::pubcomp(id(258))),
        ] {
            // The next packet's first byte stays in the buffer.
            assert_eq!(
                take(&[first, 2, 1, 2, 0x30], 1024),
                (Some(want), vec![0x30]),
                "{first:#x}"
            );
        }
        for wire in [
            &[0x40, 2, 0, 0][..],   // packet id 0: the decoder's error
            &[0x42, 2, 0, 1],       // PUBACK with flags
            &[0x60, 2, 0, 1],       // PUBREL without its flags
            &[0x40, 3, 0, 1, 0x10], // MQTT 5 reason code
            &[0x40, 2, 0],          // incomplete
            &[0xB0, 2, 0, 1],       // UNSUBACK
            &[0x30, 2, 0, 1],       // PUBLISH
        ] {
            assert_eq!(take(wire, 1024), (None, wire.to_vec()), "{wire:?}");
        }
        assert_eq!(take(&[0x40, 2, 0, 1], 3), (None, vec![0x40, 2, 0, 1]));
    }
}
