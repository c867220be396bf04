//! A client session (3.1.2.4, 4.1): subscriptions, the outbound QoS 1/2 window and
//! queue, and the inbound QoS 2 packet ids awaiting PUBREL.
//!
//! Owns: packet-id allocation, the in-flight window, the offline/overflow queue and
//! their limits; the order in which queued messages leave.
//! Must not: write bytes or know about connections, sockets or workers: it answers
//! "what should be sent now" and the shard encodes it. A session is plain data so that
//! it can move between workers on takeover.

use super::message::Message;
use super::ConnId;
use crate::protocol::{PacketId, QoS, RetainHandling, SubOptions, TopicFilter, Will};
use std::collections::{HashSet, VecDeque};
use std::time::Instant;

/// One subscription's options packed in four bytes (it is stored per subscriber in the
/// topic index): QoS (bits 0-1), No Local (2), Retain As Published (3), and the MQTT 5
/// subscription identifier (bits 4-31, 0 = none; identifiers are at most 2^28 - 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Grant(u32);

impl Grant {
    /// Options with a subscription identifier (`0`: none).
    pub fn new(opts: SubOptions, sub_id: u32) -> Grant {
        debug_assert!(sub_id <= crate::protocol::properties::VARINT_MAX);
        Grant(
            u32::from(opts.qos.as_u8())
                | (u32::from(opts.no_local) << 2)
                | (u32::from(opts.retain_as_published) << 3)
                | (sub_id << 4),
        )
    }

    /// A plain MQTT 3.1.1 subscription.
    pub fn qos(qos: QoS) -> Grant {
        Grant::new(SubOptions::qos(qos), 0)
    }

    pub fn max_qos(self) -> QoS {
        QoS::from_u8((self.0 & 3) as u8).unwrap_or(QoS::AtMostOnce)
    }

    pub fn no_local(self) -> bool {
        self.0 & 4 != 0
    }

    pub fn retain_as_published(self) -> bool {
        self.0 & 8 != 0
    }

    pub fn sub_id(self) -> Option<u32> {
        let id = self.0 >> 4;
        (id != 0).then_some(id)
    }

    /// The options as SUBSCRIBE carries them (retain handling is not stored: it only
    /// matters at subscribe time).
    pub fn options(self) -> SubOptions {
        SubOptions {
            qos: self.max_qos(),
            no_local: self.no_local(),
            retain_as_published: self.retain_as_published(),
            retain_handling: RetainHandling::OnSubscribe,
        }
    }
}

/// What MQTT 5 adds to a session, boxed since 3.1.1 sessions never have it.
#[derive(Debug, Clone, Default)]
pub struct SessionV5 {
    /// Session Expiry Interval (seconds; `u32::MAX`: never) once offline.
    pub expiry_secs: u32,
    /// When the offline session expires.
    pub expires_at: Option<Instant>,
    /// A will waiting out its Will Delay Interval, and when it is due.
    pub pending_will: Option<(Instant, Will)>,
    /// The client's Receive Maximum: QoS 1/2 deliveries in flight at most.
    pub receive_max: u16,
    /// The client's Maximum Packet Size (bytes; 0: no limit of its own).
    pub max_packet: u32,
    /// True when any subscription carries an identifier (deliveries look them up).
    pub has_sub_ids: bool,
}

/// Where an outbound QoS 1/2 message is in its flow (4.3.2, 4.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutState {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// PUBREL sent, waiting for PUBCOMP (QoS 2).
    Released,
}

/// How many in-flight messages ahead of an acknowledged one `complete` prefetches.
const PREFETCH_AHEAD: usize = 8;

/// One unacknowledged outbound message.
#[derive(Debug, Clone)]
pub struct Inflight {
    pub packet_id: PacketId,
    /// Delivery QoS (1 or 2): min(published, granted).
    pub qos: QoS,
    pub msg: Message,
    /// RETAIN flag on the wire (set only for deliveries caused by a new subscription).
    pub retain: bool,
    pub state: OutState,
    /// Not yet resent on the current connection: a resumed session had more in
    /// flight than the client's new Receive Maximum allows (4.9), so the rest waits
    /// for acknowledgements (see `pump`). Fits in padding: no size cost.
    pub held: bool,
    /// How many packet ids the session had tried when this one was allocated (see
    /// [`Session::next_packet_id`]).
    tried: u64,
}

/// A message waiting for room in the in-flight window.
#[derive(Debug, Clone)]
pub struct Queued {
    pub qos: QoS,
    pub msg: Message,
    pub retain: bool,
}

/// What happened when a message was offered to a session's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued, and the queue is below its limit.
    Ok,
    /// Queued, but the queue is at or over its limit: feeders should slow down.
    Congested,
    /// Queued after dropping the oldest queued message.
    DroppedOldest,
}

/// A `VecDeque` whose header is allocated on the first push: most sessions (idle
/// subscribers, QoS 0 traffic) never hold a message, and two inline deques would be 64
/// bytes per session. Reads go through `Deref` (to a shared empty deque while
/// unallocated); the few mutations are methods here. The box also holds a weight the
/// owner keeps (the queue's bytes; the in-flight window's count of packet ids tried),
/// so that counter costs idle sessions nothing.
#[derive(Debug, Clone)]
// Boxed on purpose: one pointer per session instead of a 32-byte header.
#[allow(clippy::box_collection)]
pub struct LazyDeque<T: EmptyDeque>(Option<Box<(VecDeque<T>, usize)>>);

/// Element types of a [`LazyDeque`]: each provides its static empty deque.
pub trait EmptyDeque: Sized + 'static {
    fn empty() -> &'static VecDeque<Self>;
}

impl EmptyDeque for Inflight {
    fn empty() -> &'static VecDeque<Self> {
        static EMPTY: VecDeque<Inflight> = VecDeque::new();
        &EMPTY
    }
}

impl EmptyDeque for Queued {
    fn empty() -> &'static VecDeque<Self> {
        static EMPTY: VecDeque<Queued> = VecDeque::new();
        &EMPTY
    }
}

impl<T: EmptyDeque> Default for LazyDeque<T> {
    fn default() -> Self {
        LazyDeque(None)
    }
}

impl<T: EmptyDeque> std::ops::Deref for LazyDeque<T> {
    type Target = VecDeque<T>;
    fn deref(&self) -> &VecDeque<T> {
        match &self.0 {
            Some(d) => &d.0,
            None => T::empty(),
        }
    }
}

impl<'a, T: EmptyDeque> IntoIterator for &'a LazyDeque<T> {
    type Item = &'a T;
    type IntoIter = std::collections::vec_deque::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        std::ops::Deref::deref(self).iter()
    }
}

impl<T: EmptyDeque> LazyDeque<T> {
    pub fn push_back(&mut self, item: T) {
        self.0
            .get_or_insert_with(Default::default)
            .0
            .push_back(item);
    }

    pub fn pop_front(&mut self) -> Option<T> {
        self.0.as_mut()?.0.pop_front()
    }

    pub fn remove(&mut self, i: usize) -> Option<T> {
        self.0.as_mut()?.0.remove(i)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.0.iter_mut().flat_map(|d| d.0.iter_mut())
    }

    /// The owner's weight (0 until the first push).
    pub fn weight(&self) -> usize {
        self.0.as_ref().map_or(0, |d| d.1)
    }

    /// Adds to the weight; only after a push (the box exists then).
    pub fn add_weight(&mut self, n: usize) {
        debug_assert!(self.0.is_some(), "weight added to an unallocated deque");
        if let Some(d) = &mut self.0 {
            d.1 += n;
        }
    }

    pub fn sub_weight(&mut self, n: usize) {
        if let Some(d) = &mut self.0 {
            debug_assert!(d.1 >= n, "weight below zero");
            d.1 = d.1.saturating_sub(n);
        }
    }
}

/// A client's session state.
#[derive(Debug, Clone)]
pub struct Session {
    pub client_id: std::sync::Arc<str>,
    /// Clean session flag of the connection that owns it (3.1.2.4).
    pub clean: bool,
    /// Subscriptions with their granted options, in subscription order.
    pub subscriptions: Vec<(TopicFilter, Grant)>,
    /// Sent and not yet completed, in send order (which is packet-id allocation
    /// order). Its weight counts the packet ids tried so far (`next_packet_id`);
    /// only `start_inflight` pushes it.
    pub inflight: LazyDeque<Inflight>,
    /// Waiting for the window, in arrival order. Its weight is the bytes
    /// ([`Message::weight_bytes`]) of the messages in it, kept by `enqueue`, `dequeue`
    /// and `take_shared_unacked`; nothing else may push or pop it.
    pub queue: LazyDeque<Queued>,
    /// Inbound QoS 2 packet ids received and not yet released (method B of 4.3.3:
    /// delivered on PUBLISH, duplicates suppressed until PUBREL). Allocated on the first
    /// one and freed when the last is released: most sessions never have any.
    // Boxed on purpose: one pointer per session instead of a 48-byte header.
    #[allow(clippy::box_collection)]
    inbound_qos2: Option<Box<HashSet<PacketId>>>,
    /// The connection attached on this worker, if online. Worker-local: cleared before
    /// the session moves to another worker.
    pub conn: Option<ConnId>,
    /// Set for a while after the session arrived from another worker: see
    /// [`Settle`](crate::broker::settle::Settle).
    pub moved_in: Option<Box<crate::broker::settle::Settle>>,
    /// MQTT 5 session state, if the session was created or resumed by an MQTT 5 client.
    pub v5: Option<Box<SessionV5>>,
    next_packet_id: u16,
}

impl Session {
    pub fn new(client_id: std::sync::Arc<str>, clean: bool) -> Session {
        Session {
            client_id,
            clean,
            subscriptions: Vec::new(),
            inflight: LazyDeque::default(),
            queue: LazyDeque::default(),
            inbound_qos2: None,
            conn: None,
            moved_in: None,
            v5: None,
            next_packet_id: 1,
        }
    }

    /// In-flight window: the broker's limit, or the client's Receive Maximum if lower.
    pub fn window(&self, max_inflight: usize) -> usize {
        match &self.v5 {
            Some(v5) if v5.receive_max > 0 => max_inflight.min(usize::from(v5.receive_max)),
            _ => max_inflight,
        }
    }

    /// The identifiers of this session's subscriptions matching `topic`, in
    /// subscription order (3.3.4: every matching one is sent). A copy delivered
    /// through a shared subscription carries that subscription's identifier only;
    /// any other copy carries those of the non-shared subscriptions ([MQTT-3.3.4-5]).
    pub fn sub_ids_for(
        &self,
        topic: &crate::protocol::TopicName,
        shared: Option<&crate::broker::shard::GroupKey>,
        out: &mut Vec<u32>,
    ) {
        out.clear();
        if !self.v5.as_ref().is_some_and(|v| v.has_sub_ids) {
            return;
        }
        for (f, g) in &self.subscriptions {
            let Some(id) = g.sub_id() else { continue };
            let hit = match (f.shared(), shared) {
                (None, None) => f.matches(topic),
                (Some(Ok((group, inner))), Some(key)) => {
                    *group == *key.0 && inner == key.1 && inner.matches(topic)
                }
                _ => false,
            };
            if hit && !out.contains(&id) {
                out.push(id);
            }
        }
    }

    /// Records a subscription; returns the previous options if it replaced one.
    pub fn add_subscription(&mut self, filter: &TopicFilter, qos: Grant) -> Option<Grant> {
        if let Some(entry) = self.subscriptions.iter_mut().find(|(f, _)| f == filter) {
            let prev = entry.1;
            entry.1 = qos;
            return Some(prev);
        }
        // Owned copy: a filter fresh from SUBSCRIBE shares the worker's read buffer, and
        // a session that keeps it would pin that whole buffer.
        self.subscriptions.push((filter.compacted(), qos));
        None
    }

    /// Forgets a subscription; true if it existed.
    pub fn remove_subscription(&mut self, filter: &TopicFilter) -> bool {
        let before = self.subscriptions.len();
        self.subscriptions.retain(|(f, _)| f != filter);
        self.subscriptions.len() != before
    }

    /// Remembers an inbound QoS 2 packet id until PUBREL; false if it was already
    /// known (a duplicate PUBLISH).
    pub fn inbound_qos2_insert(&mut self, id: PacketId) -> bool {
        self.inbound_qos2
            .get_or_insert_with(Default::default)
            .insert(id)
    }

    /// True while an inbound QoS 2 packet id awaits its PUBREL.
    pub fn inbound_qos2_contains(&self, id: PacketId) -> bool {
        self.inbound_qos2.as_ref().is_some_and(|s| s.contains(&id))
    }

    /// PUBREL: forgets an inbound QoS 2 packet id.
    pub fn inbound_qos2_remove(&mut self, id: PacketId) {
        if let Some(set) = &mut self.inbound_qos2 {
            set.remove(&id);
            if set.is_empty() {
                self.inbound_qos2 = None;
            }
        }
    }

    /// True when the window (see [`Session::window`]) has room for another message.
    pub fn window_open(&self, max_inflight: usize) -> bool {
        self.inflight.len() < self.window(max_inflight)
    }

    /// Removes and returns what a departing shared-subscription member had not
    /// completed: QoS 1 messages in flight and every queued message that came through
    /// a shared subscription. QoS 2 messages in flight stay (MQTT 5 4.8.2).
    pub fn take_shared_unacked(&mut self) -> Vec<Message> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.inflight.len() {
            let m = &self.inflight[i];
            if m.msg.shared.is_some() && m.qos == QoS::AtLeastOnce {
                if let Some(m) = self.inflight.remove(i) {
                    out.push(m.msg);
                }
            } else {
                i += 1;
            }
        }
        let mut i = 0;
        while i < self.queue.len() {
            if self.queue[i].msg.shared.is_some() {
                if let Some(q) = self.queue.remove(i) {
                    self.queue.sub_weight(q.msg.weight_bytes());
                    out.push(q.msg);
                }
            } else {
                i += 1;
            }
        }
        out
    }

    /// Inbound QoS 2 messages received and not yet released.
    pub fn inbound_qos2_len(&self) -> usize {
        self.inbound_qos2.as_ref().map_or(0, |s| s.len())
    }

    /// Allocates the next free packet id, and the try count it was allocated at. The
    /// caller guarantees the window is open and `max_inflight` is below 65535, so a
    /// free id always exists.
    ///
    /// Ids are tried in sequence, and the in-flight list is in allocation order (only
    /// `start_inflight` pushes, at the back), each entry with the number of ids tried
    /// when it got its own (the in-flight deque's weight counts tries). So while the
    /// oldest one in flight got its id fewer than 65,535 tries ago, every id in flight
    /// lies within the last 65,534 tried and the next one is free: no scan of the
    /// window, which would touch one entry (a cache line or two) per message in it.
    /// Only a message stuck in flight for a whole cycle of ids needs the scan.
    fn next_packet_id(&mut self) -> (PacketId, u64) {
        debug_assert!(self.inflight.len() < 65_535);
        let mut tried = self.inflight.weight() as u64;
        loop {
            let candidate = self.next_packet_id;
            self.next_packet_id = if candidate == u16::MAX {
                1
            } else {
                candidate + 1
            };
            tried += 1;
            let Some(id) = PacketId::new(candidate) else {
                continue;
            };
            let in_use = |s: &Self| s.inflight.iter().any(|m| m.packet_id == id);
            let recent = self
                .inflight
                .front()
                .is_none_or(|oldest| tried - oldest.tried < 65_535);
            if recent {
                debug_assert!(!in_use(self), "packet id {id} reused while in flight");
                return (id, tried);
            }
            if !in_use(self) {
                return (id, tried);
            }
        }
    }

    /// Starts the flow of a QoS 1/2 message; the caller encodes the PUBLISH.
    pub fn start_inflight(&mut self, qos: QoS, msg: Message, retain: bool) -> PacketId {
        debug_assert!(qos != QoS::AtMostOnce);
        // Held messages (resent as the window allows) stay a suffix of the list.
        debug_assert!(
            !self.inflight.back().is_some_and(|m| m.held),
            "held messages go out before new ones"
        );
        let before = self.inflight.weight() as u64;
        let (packet_id, tried) = self.next_packet_id();
        self.inflight.push_back(Inflight {
            packet_id,
            qos,
            msg,
            retain,
            state: OutState::Published,
            held: false,
            tried,
        });
        self.inflight.add_weight((tried - before) as usize);
        packet_id
    }

    /// Queues a QoS 1/2 message (the caller passes it compacted, see
    /// [`Message::compacted`]). `limit` is where congestion starts; `hard_limit` is
    /// where the oldest message is dropped to make room, and so is `max_bytes` of
    /// queued messages (a message larger than that is queued alone).
    pub fn enqueue(
        &mut self,
        item: Queued,
        limit: usize,
        hard_limit: usize,
        max_bytes: usize,
    ) -> Enqueued {
        debug_assert!(limit <= hard_limit && hard_limit > 0);
        let mut result = Enqueued::Ok;
        if self.queue.len() >= hard_limit {
            self.dequeue();
            result = Enqueued::DroppedOldest;
        }
        let weight = item.msg.weight_bytes();
        while self.queue.weight() + weight > max_bytes && self.dequeue().is_some() {
            result = Enqueued::DroppedOldest;
        }
        self.queue.push_back(item);
        self.queue.add_weight(weight);
        if result == Enqueued::Ok && self.queue.len() >= limit {
            result = Enqueued::Congested;
        }
        result
    }

    /// Takes the oldest queued message.
    pub fn dequeue(&mut self) -> Option<Queued> {
        let q = self.queue.pop_front()?;
        self.queue.sub_weight(q.msg.weight_bytes());
        Some(q)
    }

    /// Bytes of the queued messages (see [`Message::weight_bytes`]).
    pub fn queued_bytes(&self) -> usize {
        self.queue.weight()
    }

    /// PUBACK: completes a QoS 1 flow. False if no such flow (a stale or bogus ack).
    pub fn puback(&mut self, id: PacketId) -> bool {
        self.complete(id, QoS::AtLeastOnce, OutState::Published)
    }

    /// PUBREC: moves a QoS 2 flow to Released. False if no such flow in Published
    /// state; a PUBREC for an already released id is answered with PUBREL again by
    /// the caller (true is returned then too).
    pub fn pubrec(&mut self, id: PacketId) -> bool {
        match self
            .inflight
            .iter_mut()
            .find(|m| m.packet_id == id && m.qos == QoS::ExactlyOnce)
        {
            Some(m) => {
                m.state = OutState::Released;
                true
            }
            None => false,
        }
    }

    /// PUBCOMP: completes a QoS 2 flow.
    pub fn pubcomp(&mut self, id: PacketId) -> bool {
        self.complete(id, QoS::ExactlyOnce, OutState::Released)
    }

    /// Ends a flow whose PUBLISH is out but not acknowledged, whatever its QoS: the
    /// client refused it (PUBREC >= 0x80, 4.3.3) or it cannot be resent (over the
    /// client's Maximum Packet Size). False if no such flow.
    pub fn end_published(&mut self, id: PacketId) -> bool {
        let qos = match self.inflight.iter().find(|m| m.packet_id == id) {
            Some(m) if m.state == OutState::Published => m.qos,
            _ => return false,
        };
        self.complete(id, qos, OutState::Published)
    }

    fn complete(&mut self, id: PacketId, qos: QoS, state: OutState) -> bool {
        // Acks nearly always arrive in order, so the front is checked first.
        let pos = match self.inflight.front() {
            Some(m) if m.packet_id == id => Some(0),
            _ => self.inflight.iter().position(|m| m.packet_id == id),
        };
        match pos {
            Some(i) if self.inflight[i].qos == qos && self.inflight[i].state == state => {
                self.inflight.remove(i);
                // The messages acknowledged next were sent a window ago, and their
                // memory has long left the cache: start loading the message memory
                // of the one this many acks ahead, so that its drop does not stall
                // (100 pairs, QoS 1, 100 in flight: a tenth of the broker's CPU was
                // the drop's first touch; perf/README.md, "QoS 1: two changes").
                // Prefetching the deque entries themselves as well measured no
                // better.
                if let Some(m) = self.inflight.get(i + PREFETCH_AHEAD) {
                    m.msg.prefetch_for_drop();
                }
                true
            }
            _ => false,
        }
    }

    /// Bytes pinned by queued and in-flight messages.
    pub fn weight_bytes(&self) -> usize {
        self.queue
            .iter()
            .map(|q| q.msg.weight_bytes())
            .sum::<usize>()
            + self
                .inflight
                .iter()
                .map(|q| q.msg.weight_bytes())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TopicName;
    use bytes::Bytes;

    fn msg(n: u8) -> Message {
        Message::new(
            TopicName::new("t").unwrap(),
            Bytes::from(vec![n]),
            QoS::ExactlyOnce,
            false,
        )
    }

    #[test]
    fn packet_ids_skip_zero_and_ids_in_use() {
        let mut s = Session::new("c".into(), false);
        // One message stays in flight while a whole cycle of ids goes by.
        let stuck = s.start_inflight(QoS::AtLeastOnce, msg(1), false);
        assert_eq!(stuck.get(), 1);
        let mut last = stuck;
        for _ in 0..65_533 {
            last = s.start_inflight(QoS::AtLeastOnce, msg(2), false);
            assert!(s.puback(last));
        }
        assert_eq!(last.get(), u16::MAX - 1);
        let a = s.start_inflight(QoS::AtLeastOnce, msg(3), false);
        assert_eq!(a.get(), u16::MAX);
        let b = s.start_inflight(QoS::AtLeastOnce, msg(4), false);
        assert_eq!(
            b.get(),
            2,
            "wraps past 0 [MQTT-2.3.1-1] and skips 1, still in flight [MQTT-2.3.1-2]"
        );
        // Ids after the skip are still allocated in order, and never reused.
        assert!(s.puback(a));
        let c = s.start_inflight(QoS::AtLeastOnce, msg(5), false);
        assert_eq!(c.get(), 3);
        assert!(s.puback(stuck));
        let ids: Vec<u16> = s.inflight.iter().map(|m| m.packet_id.get()).collect();
        assert_eq!(ids, [2, 3]);
    }

    #[test]
    fn qos1_flow() {
        let mut s = Session::new("c".into(), false);
        let id = s.start_inflight(QoS::AtLeastOnce, msg(1), false);
        assert!(!s.pubcomp(id), "PUBCOMP does not complete a QoS 1 flow");
        assert!(s.puback(id));
        assert!(!s.puback(id), "second ack is stale");
        assert!(s.inflight.is_empty());
    }

    #[test]
    fn qos2_flow() {
        let mut s = Session::new("c".into(), false);
        let id = s.start_inflight(QoS::ExactlyOnce, msg(1), false);
        assert!(!s.puback(id), "PUBACK does not complete a QoS 2 flow");
        assert!(!s.pubcomp(id), "PUBCOMP before PUBREC is ignored");
        assert!(s.pubrec(id));
        assert_eq!(s.inflight[0].state, OutState::Released);
        assert!(s.pubrec(id), "a repeated PUBREC is answered again");
        assert!(s.pubcomp(id));
        assert!(s.inflight.is_empty());
    }

    #[test]
    fn out_of_order_acks() {
        let mut s = Session::new("c".into(), false);
        let a = s.start_inflight(QoS::AtLeastOnce, msg(1), false);
        let b = s.start_inflight(QoS::AtLeastOnce, msg(2), false);
        assert!(s.puback(b));
        assert!(s.puback(a));
        assert!(s.inflight.is_empty());
    }

    #[test]
    fn queue_limits() {
        let mut s = Session::new("c".into(), false);
        let q = |n| Queued {
            qos: QoS::AtLeastOnce,
            msg: msg(n),
            retain: false,
        };
        assert_eq!(s.enqueue(q(1), 2, 3, usize::MAX), Enqueued::Ok);
        assert_eq!(s.enqueue(q(2), 2, 3, usize::MAX), Enqueued::Congested);
        assert_eq!(s.enqueue(q(3), 2, 3, usize::MAX), Enqueued::Congested);
        assert_eq!(s.enqueue(q(4), 2, 3, usize::MAX), Enqueued::DroppedOldest);
        assert_eq!(s.queue.len(), 3);
        assert_eq!(s.queue[0].msg.payload[0], 2, "the oldest went first");
    }

    #[test]
    fn queue_bytes_drop_the_oldest() {
        let mut s = Session::new("c".into(), false);
        let q = |n| Queued {
            qos: QoS::AtLeastOnce,
            msg: msg(n),
            retain: false,
        };
        let w = msg(0).weight_bytes();
        for n in 1..=3 {
            assert_eq!(s.enqueue(q(n), 100, 100, 3 * w), Enqueued::Ok);
        }
        assert_eq!(s.queued_bytes(), 3 * w);
        assert_eq!(s.enqueue(q(4), 100, 100, 3 * w), Enqueued::DroppedOldest);
        assert_eq!(s.queue.len(), 3);
        assert_eq!(s.queue[0].msg.payload[0], 2, "the oldest went first");
        assert_eq!(s.queued_bytes(), 3 * w);
        // A message over the whole budget is kept alone.
        let mut big = q(9);
        big.msg.payload = Bytes::from(vec![0u8; 4 * w]);
        assert_eq!(s.enqueue(big, 100, 100, 3 * w), Enqueued::DroppedOldest);
        assert_eq!(s.queue.len(), 1);
        assert!(s.dequeue().is_some());
        assert_eq!(s.queued_bytes(), 0);
    }

    #[test]
    fn subscriptions_replace() {
        let mut s = Session::new("c".into(), false);
        let f = TopicFilter::new("a/+").unwrap();
        assert_eq!(s.add_subscription(&f, Grant::qos(QoS::AtMostOnce)), None);
        assert_eq!(
            s.add_subscription(&f, Grant::qos(QoS::ExactlyOnce)),
            Some(Grant::qos(QoS::AtMostOnce))
        );
        assert_eq!(s.subscriptions.len(), 1);
        assert!(s.remove_subscription(&f));
        assert!(!s.remove_subscription(&f));
    }
}
