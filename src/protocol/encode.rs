//! Encoding: one [`Packet`] (or the parts of a PUBLISH) into bytes appended to a buffer.
//!
//! Owns: the wire layout of all 14 control packets in MQTT 3.1/3.1.1, the exact encoded
//! length of each, and the allocation-free PUBLISH hot path [`encode_publish`].
//!
//! Must not: fail, allocate beyond one `reserve` on the output, or validate policy.
//! The packet model's types already make most invalid values unrepresentable; the rest
//! (strings over 65535 bytes, bodies over [`MAX_REMAINING_LENGTH`], a PUBLISH whose
//! packet id disagrees with its QoS, a password without a user name) are caller bugs
//! caught by `debug_assert!`.

use super::frame::{encode_remaining_length, remaining_length_len, MAX_REMAINING_LENGTH};
use super::{Connect, Packet, PacketId, Properties, ProtocolVersion, QoS, ReasonCode, Will};

const STR_MAX: usize = u16::MAX as usize;

/// [`encode_packet_v`] with the MQTT 3.1.1 layout (a CONNECT uses its own version).
pub fn encode_packet(packet: &Packet, out: &mut Vec<u8>) {
    encode_packet_v(packet, ProtocolVersion::V3_1_1, out);
}

/// Appends the encoding of `packet` as sent on a connection speaking `version`. On 3.x,
/// MQTT 5 fields (properties, reason codes beyond what 3.1.1 can say) are not written;
/// a CONNECT is always encoded as its own `version` says.
pub fn encode_packet_v(packet: &Packet, version: ProtocolVersion, out: &mut Vec<u8>) {
    let v5 = match packet {
        Packet::Connect(c) => c.version.is_v5(),
        _ => version.is_v5(),
    };
    if let Packet::Publish(p) = packet {
        if v5 {
            let extras = PublishExtras {
                props: &p.props,
                ..PublishExtras::default()
            };
            encode_publish_v5(
                out,
                p.dup,
                p.qos,
                p.retain,
                p.topic.as_str(),
                p.packet_id,
                &extras,
                &p.payload,
            );
        } else {
            encode_publish(
                out,
                p.dup,
                p.qos,
                p.retain,
                p.topic.as_str(),
                p.packet_id,
                &p.payload,
            );
        }
        return;
    }
    if let Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) = packet {
        if a.reason == ReasonCode::SUCCESS && a.props.is_empty() {
            // One per QoS 1/2 message each way: the same four bytes in every version
            // (3.4.2.1: MQTT 5 leaves out a Success reason code without properties).
            let [hi, lo] = a.packet_id.get().to_be_bytes();
            out.extend_from_slice(&[first_byte(packet), 2, hi, lo]);
            return;
        }
    }
    let body = body_len(packet, v5);
    start(out, first_byte(packet), body);
    match packet {
        Packet::Connect(c) => write_connect(out, c),
        Packet::ConnAck(c) => {
            out.push(u8::from(c.session_present));
            if v5 {
                out.push(c.code.0);
                c.props.encode(out);
            } else {
                out.push(c.code.to_v3_connack());
            }
        }
        Packet::Publish(_) => {} // handled above
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            write_u16(out, a.packet_id.get());
            if v5 {
                write_reason_and_props(out, a.reason, &a.props);
            }
        }
        Packet::Subscribe(s) => {
            write_u16(out, s.packet_id.get());
            if v5 {
                s.props.encode(out);
            }
            for (filter, opts) in &s.filters {
                write_str(out, filter.as_str());
                out.push(if v5 { opts.as_u8() } else { opts.qos.as_u8() });
            }
        }
        Packet::SubAck(s) => {
            write_u16(out, s.packet_id.get());
            if v5 {
                s.props.encode(out);
                out.extend(s.codes.iter().map(|c| c.0));
            } else {
                out.extend(s.codes.iter().map(|c| c.to_v3_suback()));
            }
        }
        Packet::Unsubscribe(u) => {
            write_u16(out, u.packet_id.get());
            if v5 {
                u.props.encode(out);
            }
            for filter in &u.filters {
                write_str(out, filter.as_str());
            }
        }
        Packet::UnsubAck(u) => {
            write_u16(out, u.packet_id.get());
            if v5 {
                u.props.encode(out);
                out.extend(u.codes.iter().map(|c| c.0));
            }
        }
        Packet::Disconnect(d) => {
            if v5 {
                write_short_reason(out, d.reason, &d.props);
            }
        }
        Packet::Auth(a) => write_short_reason(out, a.reason, &a.props),
        Packet::PingReq | Packet::PingResp => {}
    }
}

/// Length in bytes of [`encode_packet`]'s output for `packet` (MQTT 3.1.1 layout).
pub fn encoded_len(packet: &Packet) -> usize {
    encoded_len_v(packet, ProtocolVersion::V3_1_1)
}

/// Length in bytes of [`encode_packet_v`]'s output for `packet`.
pub fn encoded_len_v(packet: &Packet, version: ProtocolVersion) -> usize {
    let v5 = match packet {
        Packet::Connect(c) => c.version.is_v5(),
        _ => version.is_v5(),
    };
    let body = body_len(packet, v5);
    1 + remaining_length_len(body) + body
}

/// Hot path for the broker: appends a 3.x PUBLISH built from parts without a
/// [`super::Publish`] struct. `packet_id` must be `Some` exactly when `qos` is not 0,
/// and `dup` must be false for QoS 0.
pub fn encode_publish(
    out: &mut Vec<u8>,
    dup: bool,
    qos: QoS,
    retain: bool,
    topic: &str,
    packet_id: Option<PacketId>,
    payload: &[u8],
) {
    check_publish(dup, qos, packet_id);
    let body = publish_body_len(qos, topic, payload);
    start(out, publish_first_byte(dup, qos, retain), body);
    write_str(out, topic);
    if qos != QoS::AtMostOnce {
        write_u16(out, packet_id.map_or(0, PacketId::get));
    }
    out.extend_from_slice(payload);
}

/// The per-delivery parts of an MQTT 5 PUBLISH beside the message's own properties.
/// `props` must not carry a message expiry, topic alias or subscription identifiers:
/// those are per delivery and come from the other fields.
#[derive(Debug, Clone, Copy)]
pub struct PublishExtras<'a> {
    /// The properties forwarded from the publisher (payload format, content type,
    /// response topic, correlation data, user properties).
    pub props: &'a Properties,
    /// Remaining message expiry interval (3.3.2.3.3), if the message expires.
    pub message_expiry: Option<u32>,
    /// Topic alias for this connection, if one is used.
    pub topic_alias: Option<u16>,
    /// Subscription identifiers of the matching subscriptions.
    pub subscription_ids: &'a [u32],
}

impl Default for PublishExtras<'_> {
    fn default() -> Self {
        PublishExtras {
            props: &super::NO_PROPERTIES,
            message_expiry: None,
            topic_alias: None,
            subscription_ids: &[],
        }
    }
}

impl PublishExtras<'_> {
    fn body_len(&self) -> usize {
        self.props.body_len()
            + match (self.message_expiry, self.props.message_expiry_interval) {
                (Some(_), None) => 5,
                _ => 0,
            }
            + self.topic_alias.map_or(0, |_| 3)
            + self
                .subscription_ids
                .iter()
                .map(|&id| 1 + remaining_length_len(id as usize))
                .sum::<usize>()
    }
}

/// Hot path for MQTT 5 subscribers: a PUBLISH with properties. `topic` may be empty
/// when `extras.topic_alias` is set and the client already knows the alias.
#[allow(clippy::too_many_arguments)]
pub fn encode_publish_v5(
    out: &mut Vec<u8>,
    dup: bool,
    qos: QoS,
    retain: bool,
    topic: &str,
    packet_id: Option<PacketId>,
    extras: &PublishExtras<'_>,
    payload: &[u8],
) {
    check_publish(dup, qos, packet_id);
    let props_body = extras.body_len();
    let body =
        publish_body_len(qos, topic, payload) + remaining_length_len(props_body) + props_body;
    start(out, publish_first_byte(dup, qos, retain), body);
    write_str(out, topic);
    if qos != QoS::AtMostOnce {
        write_u16(out, packet_id.map_or(0, PacketId::get));
    }
    encode_remaining_length(props_body, out);
    let p = extras.props;
    if let (Some(expiry), None) = (extras.message_expiry, p.message_expiry_interval) {
        out.push(0x02);
        out.extend_from_slice(&expiry.to_be_bytes());
    }
    p.encode_body(out);
    if let Some(alias) = extras.topic_alias {
        out.push(0x23);
        write_u16(out, alias);
    }
    for &id in extras.subscription_ids {
        out.push(0x0B);
        encode_remaining_length(id as usize, out);
    }
    out.extend_from_slice(payload);
}

fn check_publish(dup: bool, qos: QoS, packet_id: Option<PacketId>) {
    debug_assert_eq!(
        packet_id.is_some(),
        qos != QoS::AtMostOnce,
        "PUBLISH packet id must be present exactly when QoS > 0"
    );
    debug_assert!(
        !(dup && qos == QoS::AtMostOnce),
        "DUP set on QoS 0 [MQTT-3.3.1-2]"
    );
}

fn publish_first_byte(dup: bool, qos: QoS, retain: bool) -> u8 {
    0x30 | (u8::from(dup) << 3) | (qos.as_u8() << 1) | u8::from(retain)
}

// ---- lengths ----

fn publish_body_len(qos: QoS, topic: &str, payload: &[u8]) -> usize {
    let id = if qos == QoS::AtMostOnce { 0 } else { 2 };
    2 + topic.len() + id + payload.len()
}

/// Reason code and properties as acknowledgements write them: omitted entirely when
/// Success without properties (3.4.2.1), the properties omitted when empty.
fn reason_props_len(reason: ReasonCode, props: &Properties) -> usize {
    if props.is_empty() {
        usize::from(reason != ReasonCode::SUCCESS)
    } else {
        1 + props.encoded_len()
    }
}

fn write_reason_and_props(out: &mut Vec<u8>, reason: ReasonCode, props: &Properties) {
    if props.is_empty() {
        if reason != ReasonCode::SUCCESS {
            out.push(reason.0);
        }
    } else {
        out.push(reason.0);
        props.encode(out);
    }
}

fn write_short_reason(out: &mut Vec<u8>, reason: ReasonCode, props: &Properties) {
    write_reason_and_props(out, reason, props);
}

fn body_len(packet: &Packet, v5: bool) -> usize {
    let p5 = |p: &Properties| if v5 { p.encoded_len() } else { 0 };
    match packet {
        Packet::Connect(c) => connect_body_len(c),
        Packet::ConnAck(c) => 2 + p5(&c.props),
        Packet::Publish(p) => publish_body_len(p.qos, p.topic.as_str(), &p.payload) + p5(&p.props),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            2 + if v5 {
                reason_props_len(a.reason, &a.props)
            } else {
                0
            }
        }
        Packet::Subscribe(s) => {
            2 + p5(&s.props)
                + s.filters
                    .iter()
                    .map(|(f, _)| 2 + f.as_str().len() + 1)
                    .sum::<usize>()
        }
        Packet::SubAck(s) => 2 + p5(&s.props) + s.codes.len(),
        Packet::Unsubscribe(u) => {
            2 + p5(&u.props)
                + u.filters
                    .iter()
                    .map(|f| 2 + f.as_str().len())
                    .sum::<usize>()
        }
        Packet::UnsubAck(u) => {
            2 + if v5 {
                u.props.encoded_len() + u.codes.len()
            } else {
                0
            }
        }
        Packet::Disconnect(d) => {
            if v5 {
                reason_props_len(d.reason, &d.props)
            } else {
                0
            }
        }
        Packet::Auth(a) => reason_props_len(a.reason, &a.props),
        Packet::PingReq | Packet::PingResp => 0,
    }
}

fn protocol_name(version: ProtocolVersion) -> &'static str {
    match version {
        ProtocolVersion::V3_1 => "MQIsdp",
        ProtocolVersion::V3_1_1 | ProtocolVersion::V5 => "MQTT",
    }
}

fn will_len(w: &Will, v5: bool) -> usize {
    let props = if v5 { w.props.encoded_len() } else { 0 };
    props + 2 + w.topic.as_str().len() + 2 + w.payload.len()
}

fn connect_body_len(c: &Connect) -> usize {
    let v5 = c.version.is_v5();
    // name, level, flags, keep alive, client id
    let mut n = 2 + protocol_name(c.version).len() + 1 + 1 + 2 + 2 + c.client_id.len();
    if v5 {
        n += c.props.encoded_len();
    }
    if let Some(w) = &c.will {
        n += will_len(w, v5);
    }
    if let Some(u) = &c.username {
        n += 2 + u.len();
    }
    if let Some(p) = &c.password {
        n += 2 + p.len();
    }
    n
}

// ---- writers ----

fn first_byte(packet: &Packet) -> u8 {
    match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => publish_first_byte(p.dup, p.qos, p.retain),
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) => 0xF0,
    }
}

/// Reserves room for the whole packet once and writes its fixed header. Always
/// inlined: LLVM kept it inline in the PUBLISH encoder or not depending on unrelated
/// changes elsewhere, and the call costs ~20 instructions per delivered message.
#[inline(always)]
fn start(out: &mut Vec<u8>, first: u8, body: usize) {
    debug_assert!(
        body <= MAX_REMAINING_LENGTH,
        "packet body of {body} bytes too large"
    );
    out.reserve(1 + remaining_length_len(body) + body);
    out.push(first);
    encode_remaining_length(body, out);
}

fn write_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// A two-byte length then the bytes (1.5.3); also used for binary fields.
fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    debug_assert!(
        b.len() <= STR_MAX,
        "field of {} bytes exceeds 65535",
        b.len()
    );
    write_u16(out, b.len() as u16);
    out.extend_from_slice(b);
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    write_bytes(out, s.as_bytes());
}

fn write_connect(out: &mut Vec<u8>, c: &Connect) {
    let v5 = c.version.is_v5();
    debug_assert!(
        v5 || c.password.is_none() || c.username.is_some(),
        "password without user name [MQTT-3.1.2-22]"
    );
    write_str(out, protocol_name(c.version));
    out.push(c.version.level());
    let mut flags = 0u8;
    if c.clean_session {
        flags |= 0x02;
    }
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos.as_u8() << 3);
        if w.retain {
            flags |= 0x20;
        }
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    out.push(flags);
    write_u16(out, c.keep_alive_secs);
    if v5 {
        c.props.encode(out);
    }
    write_str(out, &c.client_id);
    if let Some(w) = &c.will {
        if v5 {
            w.props.encode(out);
        }
        write_str(out, w.topic.as_str());
        write_bytes(out, &w.payload);
    }
    if let Some(u) = &c.username {
        write_str(out, u);
    }
    if let Some(p) = &c.password {
        write_bytes(out, p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ConnAck, Publish, ReasonCode, TopicName};

    #[test]
    fn known_bytes() {
        let mut out = Vec::new();
        encode_packet(&Packet::PingReq, &mut out);
        assert_eq!(out, [0xC0, 0x00]);
        out.clear();
        encode_packet(
            &Packet::ConnAck(ConnAck {
                session_present: true,
                code: ReasonCode::SUCCESS,
                props: Default::default(),
            }),
            &mut out,
        );
        assert_eq!(out, [0x20, 0x02, 0x01, 0x00]);
        out.clear();
        let id = PacketId::new(10);
        encode_publish(&mut out, true, QoS::AtLeastOnce, true, "a/b", id, b"hi");
        assert_eq!(
            out,
            [0x3B, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'i']
        );
    }

    #[test]
    fn appends_and_reserves_once() {
        let p = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: TopicName::new("t").unwrap(),
            packet_id: None,
            payload: vec![7u8; 300].into(),
            props: Default::default(),
        });
        let mut out = vec![0xAA];
        encode_packet(&p, &mut out);
        assert_eq!(out[0], 0xAA);
        assert_eq!(out.len(), 1 + encoded_len(&p));
        assert_eq!(encoded_len(&p), 1 + 2 + 3 + 300);
    }
}
