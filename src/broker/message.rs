//! The broker's unit of routing: an application message as it travels between
//! sessions, workers, queues and the retained store.
//!
//! Must not: hold anything per subscriber. The topic and payload are reference-counted
//! (`ByteString`/`Bytes`), so cloning a [`Message`] never copies message bytes.

use crate::protocol::{Properties, QoS, TopicName};
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An application message: what was published, independent of any packet id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: TopicName,
    pub payload: Bytes,
    /// The QoS it was published with (the upper bound for every delivery).
    pub qos: QoS,
    /// The RETAIN flag as published.
    pub retain: bool,
    /// MQTT 5 properties forwarded to subscribers unchanged (payload format, content
    /// type, response topic, correlation data, user properties, in order). Never a
    /// topic alias, subscription identifier or expiry: those are per delivery.
    pub props: Option<Arc<Properties>>,
    /// When the message expires (MQTT 5 Message Expiry Interval); `None`: never.
    pub expires_at: Option<Instant>,
    /// The shared subscription group it was delivered through, if any (so that a
    /// departing member's unacknowledged copy can go to another member).
    pub shared: Option<crate::broker::shard::GroupKey>,
}

impl Message {
    /// A message without MQTT 5 properties that never expires.
    pub fn new(topic: TopicName, payload: Bytes, qos: QoS, retain: bool) -> Message {
        Message {
            topic,
            payload,
            qos,
            retain,
            props: None,
            expires_at: None,
            shared: None,
        }
    }

    /// Takes the forwardable properties out of a PUBLISH's (or will's) property set:
    /// the expiry becomes a deadline, and the per-hop ones (topic alias, subscription
    /// identifiers) are dropped ([MQTT-3.3.2-7], [MQTT-3.3.4-6]).
    pub fn with_props(mut self, now: Instant, mut props: Properties) -> Message {
        self.expires_at = props
            .message_expiry_interval
            .take()
            .map(|s| now + Duration::from_secs(u64::from(s)));
        props.topic_alias = None;
        props.subscription_identifiers.clear();
        props.will_delay_interval = None;
        self.props = (!props.is_empty()).then(|| Arc::new(props));
        self
    }

    /// True once the message's expiry interval has passed (3.3.2.3.3).
    pub fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// The expiry interval left at `now`, rounded up, for the PUBLISH to a subscriber.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|t| {
            let left = t.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }

    /// Asks the CPU to start loading the memory that dropping this message will
    /// touch (the topic's buffer, whose reference count and allocator header sit
    /// just before the bytes of a compacted message), so that a drop some time later
    /// does not wait for it. A hint only: no effect on what the program does.
    #[inline]
    pub fn prefetch_for_drop(&self) {
        let p = self.topic.as_str().as_ptr();
        prefetch(p.wrapping_sub(32));
        prefetch(p);
    }

    /// Bytes this message pins in memory, for queue accounting.
    pub fn weight_bytes(&self) -> usize {
        self.topic.as_str().len() + self.payload.len()
    }

    /// Detaches the payload from whatever larger read buffer it was sliced from, so a
    /// message held for long (queues, retained store) pins only its own bytes.
    pub fn compacted(mut self) -> Self {
        let (topic, payload) = self.topic.compacted_with(&self.payload);
        self.topic = topic;
        self.payload = payload;
        self
    }
}

/// Asks the CPU to start loading the cache line at `p` (a hint: never faults, reads
/// nothing into the program, whatever the address; nothing where unsupported).
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` has no memory-safety preconditions: it does not fault and
    // its result is not observable by the program.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetching_is_harmless_whatever_the_message() {
        // A hint only: it must not fault on any topic buffer, including the static
        // empty one (a dangling pointer) and one of a single byte.
        let t = |s: &str| TopicName::new(s).unwrap();
        let msgs = [
            Message::new(t("a/b"), Bytes::from_static(b"x"), QoS::AtLeastOnce, false),
            Message::new(t("a"), Bytes::new(), QoS::AtMostOnce, false).compacted(),
            Message::new(
                TopicName::alias_only(),
                Bytes::new(),
                QoS::AtMostOnce,
                false,
            ),
        ];
        for m in &msgs {
            m.prefetch_for_drop();
        }
        prefetch(std::ptr::null::<u8>());
        assert_eq!(msgs[1].topic.as_str(), "a");
    }
}
