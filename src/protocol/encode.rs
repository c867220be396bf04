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
use super::{Connect, Packet, PacketId, ProtocolVersion, QoS, SubAck, Subscribe, Unsubscribe};

const STR_MAX: usize = u16::MAX as usize;

/// Appends the encoding of `packet` to `out`.
pub fn encode_packet(packet: &Packet, out: &mut Vec<u8>) {
    if let Packet::Publish(p) = packet {
        encode_publish(
            out,
            p.dup,
            p.qos,
            p.retain,
            p.topic.as_str(),
            p.packet_id,
            &p.payload,
        );
        return;
    }
    let body = body_len(packet);
    start(out, first_byte(packet), body);
    match packet {
        Packet::Connect(c) => write_connect(out, c),
        Packet::ConnAck(c) => {
            out.push(u8::from(c.session_present));
            out.push(c.code as u8);
        }
        Packet::Publish(_) => {} // handled above
        Packet::PubAck(id)
        | Packet::PubRec(id)
        | Packet::PubRel(id)
        | Packet::PubComp(id)
        | Packet::UnsubAck(id) => write_u16(out, id.get()),
        Packet::Subscribe(s) => {
            write_u16(out, s.packet_id.get());
            for (filter, qos) in &s.filters {
                write_str(out, filter.as_str());
                out.push(qos.as_u8());
            }
        }
        Packet::SubAck(s) => {
            write_u16(out, s.packet_id.get());
            out.extend(s.codes.iter().map(|c| c.as_u8()));
        }
        Packet::Unsubscribe(u) => {
            write_u16(out, u.packet_id.get());
            for filter in &u.filters {
                write_str(out, filter.as_str());
            }
        }
        Packet::PingReq | Packet::PingResp | Packet::Disconnect => {}
    }
}

/// Length in bytes of [`encode_packet`]'s output for `packet`.
pub fn encoded_len(packet: &Packet) -> usize {
    let body = body_len(packet);
    1 + remaining_length_len(body) + body
}

/// Hot path for the broker: appends a PUBLISH built from parts without a [`super::Publish`]
/// struct. `packet_id` must be `Some` exactly when `qos` is not 0, and `dup` must be
/// false for QoS 0.
pub fn encode_publish(
    out: &mut Vec<u8>,
    dup: bool,
    qos: QoS,
    retain: bool,
    topic: &str,
    packet_id: Option<PacketId>,
    payload: &[u8],
) {
    debug_assert_eq!(
        packet_id.is_some(),
        qos != QoS::AtMostOnce,
        "PUBLISH packet id must be present exactly when QoS > 0"
    );
    debug_assert!(
        !(dup && qos == QoS::AtMostOnce),
        "DUP set on QoS 0 [MQTT-3.3.1-2]"
    );
    let body = publish_body_len(qos, topic, payload);
    let first = 0x30 | (u8::from(dup) << 3) | (qos.as_u8() << 1) | u8::from(retain);
    start(out, first, body);
    write_str(out, topic);
    if qos != QoS::AtMostOnce {
        write_u16(out, packet_id.map_or(0, PacketId::get));
    }
    out.extend_from_slice(payload);
}

// ---- lengths ----

fn publish_body_len(qos: QoS, topic: &str, payload: &[u8]) -> usize {
    let id = if qos == QoS::AtMostOnce { 0 } else { 2 };
    2 + topic.len() + id + payload.len()
}

fn body_len(packet: &Packet) -> usize {
    match packet {
        Packet::Connect(c) => connect_body_len(c),
        Packet::ConnAck(_) => 2,
        Packet::Publish(p) => publish_body_len(p.qos, p.topic.as_str(), &p.payload),
        Packet::PubAck(_)
        | Packet::PubRec(_)
        | Packet::PubRel(_)
        | Packet::PubComp(_)
        | Packet::UnsubAck(_) => 2,
        Packet::Subscribe(Subscribe { filters, .. }) => {
            2 + filters
                .iter()
                .map(|(f, _)| 2 + f.as_str().len() + 1)
                .sum::<usize>()
        }
        Packet::SubAck(SubAck { codes, .. }) => 2 + codes.len(),
        Packet::Unsubscribe(Unsubscribe { filters, .. }) => {
            2 + filters.iter().map(|f| 2 + f.as_str().len()).sum::<usize>()
        }
        Packet::PingReq | Packet::PingResp | Packet::Disconnect => 0,
    }
}

fn protocol_name(version: ProtocolVersion) -> &'static str {
    match version {
        ProtocolVersion::V3_1 => "MQIsdp",
        ProtocolVersion::V3_1_1 => "MQTT",
    }
}

fn connect_body_len(c: &Connect) -> usize {
    // name, level, flags, keep alive, client id
    let mut n = 2 + protocol_name(c.version).len() + 1 + 1 + 2 + 2 + c.client_id.len();
    if let Some(w) = &c.will {
        n += 2 + w.topic.as_str().len() + 2 + w.payload.len();
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
        Packet::Publish(p) => {
            0x30 | (u8::from(p.dup) << 3) | (p.qos.as_u8() << 1) | u8::from(p.retain)
        }
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
        Packet::Disconnect => 0xE0,
    }
}

/// Reserves room for the whole packet once and writes its fixed header.
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
    debug_assert!(
        c.password.is_none() || c.username.is_some(),
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
    write_str(out, &c.client_id);
    if let Some(w) = &c.will {
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
    use crate::protocol::{ConnAck, ConnectReturnCode, Publish, TopicName};

    #[test]
    fn known_bytes() {
        let mut out = Vec::new();
        encode_packet(&Packet::PingReq, &mut out);
        assert_eq!(out, [0xC0, 0x00]);
        out.clear();
        encode_packet(
            &Packet::ConnAck(ConnAck {
                session_present: true,
                code: ConnectReturnCode::Accepted,
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
        });
        let mut out = vec![0xAA];
        encode_packet(&p, &mut out);
        assert_eq!(out[0], 0xAA);
        assert_eq!(out.len(), 1 + encoded_len(&p));
        assert_eq!(encoded_len(&p), 1 + 2 + 3 + 300);
    }
}
