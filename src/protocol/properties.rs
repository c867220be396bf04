//! MQTT 5 properties (2.2.2): the one property set every MQTT 5 packet may carry, its
//! wire form, and which property each packet type allows.
//!
//! Owns: [`Properties`] (every property of the specification as a typed field),
//! decoding with validation (a property not allowed in that packet, a duplicate of a
//! property that may appear once, or a value out of range is an error, never ignored),
//! and the exact encoded length and encoding.
//!
//! Must not: interpret properties (expiry, aliases, flow control live in `broker/`).
//! One struct for all packets keeps the codec small: each packet type has an allow-list
//! ([`Allowed`]) checked while decoding, and encoders only write the fields that are set.

use super::decode::DecodeError;
use super::frame::{encode_remaining_length, remaining_length_len};
use bytes::{Buf, Bytes};
use bytestring::ByteString;

/// The largest Variable Byte Integer (1.5.5), also the largest subscription identifier.
pub const VARINT_MAX: u32 = 268_435_455;

/// Every property of MQTT 5 (2.2.2.2). `None`/empty means absent. User properties keep
/// their order and may repeat ([MQTT-3.1.3-10] and siblings).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// 0x01, PUBLISH/Will: 0 unspecified bytes, 1 UTF-8.
    pub payload_format_indicator: Option<u8>,
    /// 0x02, PUBLISH/Will: seconds until the message expires.
    pub message_expiry_interval: Option<u32>,
    /// 0x03, PUBLISH/Will.
    pub content_type: Option<ByteString>,
    /// 0x08, PUBLISH/Will: a topic name (no wildcards, [MQTT-3.3.2-14]).
    pub response_topic: Option<ByteString>,
    /// 0x09, PUBLISH/Will.
    pub correlation_data: Option<Bytes>,
    /// 0x0B, PUBLISH (server to client, may repeat) and SUBSCRIBE (once): 1..=268435455.
    pub subscription_identifiers: Vec<u32>,
    /// 0x11, CONNECT/CONNACK/DISCONNECT.
    pub session_expiry_interval: Option<u32>,
    /// 0x12, CONNACK.
    pub assigned_client_identifier: Option<ByteString>,
    /// 0x13, CONNACK.
    pub server_keep_alive: Option<u16>,
    /// 0x15, CONNECT/CONNACK/AUTH.
    pub authentication_method: Option<ByteString>,
    /// 0x16, CONNECT/CONNACK/AUTH.
    pub authentication_data: Option<Bytes>,
    /// 0x17, CONNECT: 0 or 1.
    pub request_problem_information: Option<u8>,
    /// 0x18, Will.
    pub will_delay_interval: Option<u32>,
    /// 0x19, CONNECT: 0 or 1.
    pub request_response_information: Option<u8>,
    /// 0x1A, CONNACK.
    pub response_information: Option<ByteString>,
    /// 0x1C, CONNACK/DISCONNECT.
    pub server_reference: Option<ByteString>,
    /// 0x1F, every acknowledgement, DISCONNECT and AUTH.
    pub reason_string: Option<ByteString>,
    /// 0x21, CONNECT/CONNACK: not 0.
    pub receive_maximum: Option<u16>,
    /// 0x22, CONNECT/CONNACK.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23, PUBLISH: not 0.
    pub topic_alias: Option<u16>,
    /// 0x24, CONNACK: 0 or 1.
    pub maximum_qos: Option<u8>,
    /// 0x25, CONNACK: 0 or 1.
    pub retain_available: Option<u8>,
    /// 0x26, every packet with properties; order preserved, repeats allowed.
    pub user_properties: Vec<(ByteString, ByteString)>,
    /// 0x27, CONNECT/CONNACK: not 0.
    pub maximum_packet_size: Option<u32>,
    /// 0x28, CONNACK: 0 or 1.
    pub wildcard_subscription_available: Option<u8>,
    /// 0x29, CONNACK: 0 or 1.
    pub subscription_identifier_available: Option<u8>,
    /// 0x2A, CONNACK: 0 or 1.
    pub shared_subscription_available: Option<u8>,
}

/// Which properties a packet type allows, as a bit mask over property identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed(u64);

const fn mask(ids: &[u8]) -> u64 {
    let mut m = 0u64;
    let mut i = 0;
    while i < ids.len() {
        m |= 1u64 << ids[i];
        i += 1;
    }
    m
}

impl Allowed {
    pub const CONNECT: Allowed = Allowed(mask(&[
        0x11, 0x15, 0x16, 0x17, 0x19, 0x21, 0x22, 0x26, 0x27,
    ]));
    pub const WILL: Allowed = Allowed(mask(&[0x01, 0x02, 0x03, 0x08, 0x09, 0x18, 0x26]));
    pub const CONNACK: Allowed = Allowed(mask(&[
        0x11, 0x12, 0x13, 0x15, 0x16, 0x1A, 0x1C, 0x1F, 0x21, 0x22, 0x24, 0x25, 0x26, 0x27, 0x28,
        0x29, 0x2A,
    ]));
    pub const PUBLISH: Allowed = Allowed(mask(&[0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x23, 0x26]));
    pub const ACK: Allowed = Allowed(mask(&[0x1F, 0x26]));
    pub const SUBSCRIBE: Allowed = Allowed(mask(&[0x0B, 0x26]));
    pub const UNSUBSCRIBE: Allowed = Allowed(mask(&[0x26]));
    pub const DISCONNECT: Allowed = Allowed(mask(&[0x11, 0x1C, 0x1F, 0x26]));
    pub const AUTH: Allowed = Allowed(mask(&[0x15, 0x16, 0x1F, 0x26]));

    fn contains(self, id: u8) -> bool {
        id < 64 && self.0 & (1u64 << id) != 0
    }
}

impl Properties {
    /// True when no property is set (encodes as a single zero length byte).
    pub fn is_empty(&self) -> bool {
        self.body_len() == 0
    }

    /// Length of the encoded properties without their own length prefix.
    pub fn body_len(&self) -> usize {
        let s = |v: &Option<ByteString>| v.as_ref().map_or(0, |x| 3 + x.len());
        let b = |v: &Option<Bytes>| v.as_ref().map_or(0, |x| 3 + x.len());
        let n1 = |v: Option<u8>| v.map_or(0, |_| 2);
        let n2 = |v: Option<u16>| v.map_or(0, |_| 3);
        let n4 = |v: Option<u32>| v.map_or(0, |_| 5);
        n1(self.payload_format_indicator)
            + n4(self.message_expiry_interval)
            + s(&self.content_type)
            + s(&self.response_topic)
            + b(&self.correlation_data)
            + self
                .subscription_identifiers
                .iter()
                .map(|&id| 1 + remaining_length_len(id as usize))
                .sum::<usize>()
            + n4(self.session_expiry_interval)
            + s(&self.assigned_client_identifier)
            + n2(self.server_keep_alive)
            + s(&self.authentication_method)
            + b(&self.authentication_data)
            + n1(self.request_problem_information)
            + n4(self.will_delay_interval)
            + n1(self.request_response_information)
            + s(&self.response_information)
            + s(&self.server_reference)
            + s(&self.reason_string)
            + n2(self.receive_maximum)
            + n2(self.topic_alias_maximum)
            + n2(self.topic_alias)
            + n1(self.maximum_qos)
            + n1(self.retain_available)
            + self
                .user_properties
                .iter()
                .map(|(k, v)| 1 + 2 + k.len() + 2 + v.len())
                .sum::<usize>()
            + n4(self.maximum_packet_size)
            + n1(self.wildcard_subscription_available)
            + n1(self.subscription_identifier_available)
            + n1(self.shared_subscription_available)
    }

    /// Length of the encoded properties including the Variable Byte Integer prefix.
    pub fn encoded_len(&self) -> usize {
        let body = self.body_len();
        remaining_length_len(body) + body
    }

    /// Appends the length prefix and every set property, in identifier order.
    pub fn encode(&self, out: &mut Vec<u8>) {
        encode_remaining_length(self.body_len(), out);
        self.encode_body(out);
    }

    /// Appends every set property without the length prefix.
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        let s = |out: &mut Vec<u8>, id: u8, v: &Option<ByteString>| {
            if let Some(x) = v {
                out.push(id);
                put_bytes(out, x.as_bytes());
            }
        };
        let b = |out: &mut Vec<u8>, id: u8, v: &Option<Bytes>| {
            if let Some(x) = v {
                out.push(id);
                put_bytes(out, x);
            }
        };
        let n1 = |out: &mut Vec<u8>, id: u8, v: Option<u8>| {
            if let Some(x) = v {
                out.extend_from_slice(&[id, x]);
            }
        };
        let n2 = |out: &mut Vec<u8>, id: u8, v: Option<u16>| {
            if let Some(x) = v {
                out.push(id);
                out.extend_from_slice(&x.to_be_bytes());
            }
        };
        let n4 = |out: &mut Vec<u8>, id: u8, v: Option<u32>| {
            if let Some(x) = v {
                out.push(id);
                out.extend_from_slice(&x.to_be_bytes());
            }
        };
        n1(out, 0x01, self.payload_format_indicator);
        n4(out, 0x02, self.message_expiry_interval);
        s(out, 0x03, &self.content_type);
        s(out, 0x08, &self.response_topic);
        b(out, 0x09, &self.correlation_data);
        for &id in &self.subscription_identifiers {
            debug_assert!((1..=VARINT_MAX).contains(&id));
            out.push(0x0B);
            encode_remaining_length(id as usize, out);
        }
        n4(out, 0x11, self.session_expiry_interval);
        s(out, 0x12, &self.assigned_client_identifier);
        n2(out, 0x13, self.server_keep_alive);
        s(out, 0x15, &self.authentication_method);
        b(out, 0x16, &self.authentication_data);
        n1(out, 0x17, self.request_problem_information);
        n4(out, 0x18, self.will_delay_interval);
        n1(out, 0x19, self.request_response_information);
        s(out, 0x1A, &self.response_information);
        s(out, 0x1C, &self.server_reference);
        s(out, 0x1F, &self.reason_string);
        n2(out, 0x21, self.receive_maximum);
        n2(out, 0x22, self.topic_alias_maximum);
        n2(out, 0x23, self.topic_alias);
        n1(out, 0x24, self.maximum_qos);
        n1(out, 0x25, self.retain_available);
        for (k, v) in &self.user_properties {
            out.push(0x26);
            put_bytes(out, k.as_bytes());
            put_bytes(out, v.as_bytes());
        }
        n4(out, 0x27, self.maximum_packet_size);
        n1(out, 0x28, self.wildcard_subscription_available);
        n1(out, 0x29, self.subscription_identifier_available);
        n1(out, 0x2A, self.shared_subscription_available);
    }

    /// Decodes a property block (length prefix first) allowed by `allowed`.
    pub fn decode(buf: &mut Bytes, allowed: Allowed) -> Result<Properties, DecodeError> {
        let len = read_varint(buf)? as usize;
        if buf.remaining() < len {
            return Err(DecodeError::Truncated);
        }
        let mut block = buf.split_to(len);
        let mut p = Properties::default();
        let mut seen = 0u64;
        while block.has_remaining() {
            let id = read_varint(&mut block)?;
            let id = u8::try_from(id).map_err(|_| DecodeError::UnknownProperty(id))?;
            if !(1..=0x2A).contains(&id) || !KNOWN.contains(id) {
                return Err(DecodeError::UnknownProperty(u32::from(id)));
            }
            if !allowed.contains(id) {
                return Err(DecodeError::PropertyNotAllowed(id));
            }
            let repeatable = id == 0x26 || (id == 0x0B && allowed == Allowed::PUBLISH);
            if !repeatable && seen & (1u64 << id) != 0 {
                return Err(DecodeError::DuplicateProperty(id));
            }
            seen |= 1u64 << id;
            let bad = || DecodeError::InvalidPropertyValue(id);
            let flag = |v: u8| if v <= 1 { Ok(v) } else { Err(bad()) };
            let nonzero16 = |v: u16| if v != 0 { Ok(v) } else { Err(bad()) };
            match id {
                0x01 => p.payload_format_indicator = Some(flag(read_u8(&mut block)?)?),
                0x02 => p.message_expiry_interval = Some(read_u32(&mut block)?),
                0x03 => p.content_type = Some(read_string(&mut block)?),
                0x08 => {
                    let t = read_string(&mut block)?;
                    if t.is_empty() || t.contains(['+', '#']) {
                        return Err(bad()); // [MQTT-3.3.2-14]
                    }
                    p.response_topic = Some(t);
                }
                0x09 => p.correlation_data = Some(read_binary(&mut block)?),
                0x0B => {
                    let v = read_varint(&mut block)?;
                    if v == 0 {
                        return Err(bad()); // [MQTT-3.8.2.1.2]: 1 to 268,435,455
                    }
                    p.subscription_identifiers.push(v);
                }
                0x11 => p.session_expiry_interval = Some(read_u32(&mut block)?),
                0x12 => p.assigned_client_identifier = Some(read_string(&mut block)?),
                0x13 => p.server_keep_alive = Some(read_u16(&mut block)?),
                0x15 => p.authentication_method = Some(read_string(&mut block)?),
                0x16 => p.authentication_data = Some(read_binary(&mut block)?),
                0x17 => p.request_problem_information = Some(flag(read_u8(&mut block)?)?),
                0x18 => p.will_delay_interval = Some(read_u32(&mut block)?),
                0x19 => p.request_response_information = Some(flag(read_u8(&mut block)?)?),
                0x1A => p.response_information = Some(read_string(&mut block)?),
                0x1C => p.server_reference = Some(read_string(&mut block)?),
                0x1F => p.reason_string = Some(read_string(&mut block)?),
                0x21 => p.receive_maximum = Some(nonzero16(read_u16(&mut block)?)?),
                0x22 => p.topic_alias_maximum = Some(read_u16(&mut block)?),
                0x23 => p.topic_alias = Some(nonzero16(read_u16(&mut block)?)?),
                0x24 => p.maximum_qos = Some(flag(read_u8(&mut block)?)?),
                0x25 => p.retain_available = Some(flag(read_u8(&mut block)?)?),
                0x26 => {
                    let k = read_string(&mut block)?;
                    let v = read_string(&mut block)?;
                    p.user_properties.push((k, v));
                }
                0x27 => {
                    let v = read_u32(&mut block)?;
                    if v == 0 {
                        return Err(bad());
                    }
                    p.maximum_packet_size = Some(v);
                }
                0x28 => p.wildcard_subscription_available = Some(flag(read_u8(&mut block)?)?),
                0x29 => p.subscription_identifier_available = Some(flag(read_u8(&mut block)?)?),
                0x2A => p.shared_subscription_available = Some(flag(read_u8(&mut block)?)?),
                _ => return Err(DecodeError::UnknownProperty(u32::from(id))),
            }
        }
        if p.authentication_data.is_some() && p.authentication_method.is_none() {
            // [MQTT-3.1.2-...]: data without a method is a protocol error.
            return Err(DecodeError::InvalidPropertyValue(0x16));
        }
        Ok(p)
    }
}

/// The identifiers the specification defines.
const KNOWN: Allowed = Allowed(mask(&[
    0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x11, 0x12, 0x13, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x1C,
    0x1F, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2A,
]));

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    debug_assert!(b.len() <= usize::from(u16::MAX));
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

fn read_u8(buf: &mut Bytes) -> Result<u8, DecodeError> {
    if buf.remaining() < 1 {
        return Err(DecodeError::Truncated);
    }
    Ok(buf.get_u8())
}

fn read_u16(buf: &mut Bytes) -> Result<u16, DecodeError> {
    if buf.remaining() < 2 {
        return Err(DecodeError::Truncated);
    }
    Ok(buf.get_u16())
}

fn read_u32(buf: &mut Bytes) -> Result<u32, DecodeError> {
    if buf.remaining() < 4 {
        return Err(DecodeError::Truncated);
    }
    Ok(buf.get_u32())
}

fn read_binary(buf: &mut Bytes) -> Result<Bytes, DecodeError> {
    let len = usize::from(read_u16(buf)?);
    if buf.remaining() < len {
        return Err(DecodeError::Truncated);
    }
    Ok(buf.split_to(len))
}

fn read_string(buf: &mut Bytes) -> Result<ByteString, DecodeError> {
    let raw = read_binary(buf)?;
    if raw.contains(&0) {
        return Err(DecodeError::NullChar);
    }
    ByteString::try_from(raw).map_err(|_| DecodeError::InvalidUtf8)
}

/// A Variable Byte Integer (1.5.5): at most four bytes, minimal encoding not required.
pub(crate) fn read_varint(buf: &mut Bytes) -> Result<u32, DecodeError> {
    let mut value: u32 = 0;
    for i in 0..4 {
        let byte = read_u8(buf)?;
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DecodeError::MalformedVarint)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(p: &Properties, allowed: Allowed) {
        let mut out = Vec::new();
        p.encode(&mut out);
        assert_eq!(out.len(), p.encoded_len());
        let mut b = Bytes::from(out);
        assert_eq!(Properties::decode(&mut b, allowed).as_ref(), Ok(p));
        assert!(b.is_empty());
    }

    #[test]
    fn every_property_round_trips_where_allowed() {
        let p = Properties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(7),
            content_type: Some("text/plain".into()),
            response_topic: Some("r/t".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            subscription_identifiers: vec![1, 300, VARINT_MAX],
            topic_alias: Some(3),
            user_properties: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
            ..Properties::default()
        };
        roundtrip(&p, Allowed::PUBLISH);
        let c = Properties {
            session_expiry_interval: Some(u32::MAX),
            assigned_client_identifier: Some("id".into()),
            server_keep_alive: Some(30),
            authentication_method: Some("m".into()),
            authentication_data: Some(Bytes::from_static(b"d")),
            response_information: Some("ri".into()),
            server_reference: Some("other".into()),
            reason_string: Some("why".into()),
            receive_maximum: Some(10),
            topic_alias_maximum: Some(0),
            maximum_qos: Some(1),
            retain_available: Some(0),
            maximum_packet_size: Some(1000),
            wildcard_subscription_available: Some(1),
            subscription_identifier_available: Some(1),
            shared_subscription_available: Some(1),
            ..Properties::default()
        };
        roundtrip(&c, Allowed::CONNACK);
        roundtrip(&Properties::default(), Allowed::ACK);
    }

    fn dec(bytes: &[u8], allowed: Allowed) -> Result<Properties, DecodeError> {
        let mut v = Vec::new();
        encode_remaining_length(bytes.len(), &mut v);
        v.extend_from_slice(bytes);
        Properties::decode(&mut Bytes::from(v), allowed)
    }

    /// 3.3.2.3.4: a Topic Alias of 0 is refused, and the client is told 0x94 (Topic
    /// Alias invalid), not a generic Protocol Error.
    #[test]
    fn topic_alias_zero_is_topic_alias_invalid() {
        let err = dec(&[0x23, 0, 0], Allowed::PUBLISH).unwrap_err();
        assert_eq!(err, DecodeError::InvalidPropertyValue(0x23));
        assert_eq!(
            err.reason_code(),
            crate::protocol::ReasonCode::TOPIC_ALIAS_INVALID
        );
    }

    #[test]
    fn rejects_duplicates_disallowed_unknown_and_bad_values() {
        assert_eq!(
            dec(&[0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2], Allowed::PUBLISH),
            Err(DecodeError::DuplicateProperty(0x02))
        );
        assert_eq!(
            dec(&[0x11, 0, 0, 0, 1], Allowed::PUBLISH),
            Err(DecodeError::PropertyNotAllowed(0x11))
        );
        assert_eq!(
            dec(&[0x04, 0], Allowed::PUBLISH),
            Err(DecodeError::UnknownProperty(4))
        );
        assert_eq!(
            dec(&[0x01, 2], Allowed::PUBLISH),
            Err(DecodeError::InvalidPropertyValue(1))
        );
        assert_eq!(
            dec(&[0x21, 0, 0], Allowed::CONNECT),
            Err(DecodeError::InvalidPropertyValue(0x21))
        );
        assert_eq!(
            dec(&[0x0B, 0], Allowed::SUBSCRIBE),
            Err(DecodeError::InvalidPropertyValue(0x0B))
        );
        // A subscription identifier may appear once in SUBSCRIBE, many times in PUBLISH.
        assert_eq!(
            dec(&[0x0B, 1, 0x0B, 2], Allowed::SUBSCRIBE),
            Err(DecodeError::DuplicateProperty(0x0B))
        );
        assert!(dec(&[0x0B, 1, 0x0B, 2], Allowed::PUBLISH).is_ok());
        assert_eq!(
            dec(&[0x16, 0, 0], Allowed::CONNECT),
            Err(DecodeError::InvalidPropertyValue(0x16))
        );
        assert_eq!(
            dec(&[0x08, 0, 1, b'#'], Allowed::PUBLISH),
            Err(DecodeError::InvalidPropertyValue(0x08))
        );
        assert_eq!(
            dec(&[0x02, 0, 0], Allowed::PUBLISH),
            Err(DecodeError::Truncated)
        );
        // A length that promises more than the packet holds.
        assert_eq!(
            Properties::decode(&mut Bytes::from_static(&[5, 1]), Allowed::PUBLISH),
            Err(DecodeError::Truncated)
        );
    }
}
