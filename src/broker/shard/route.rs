//! PUBLISH in and out: inbound QoS flows, routing to local sessions and remote
//! workers, outbound QoS windows and queues, SUBSCRIBE/UNSUBSCRIBE and retained
//! delivery. This is the hot path: no allocation per subscriber, one match per publish.

use super::moved::STUB_BIT;
use super::Shard;
use crate::broker::mesh::{MeshMsg, Origin, Stamp};
use crate::broker::message::Message;
use crate::broker::session::{Enqueued, Grant, Queued};
use crate::broker::{ConnId, WorkerId};
use crate::protocol::{
    Ack, Packet, Publish, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, TopicFilter,
    TopicName, UnsubAck, Unsubscribe,
};
use std::collections::HashMap;
use std::time::Instant;

/// Paused publishers remembered per congested session (beyond, they resume when
/// their pause ends).
const FEEDERS_MAX: usize = 64;

/// Orders retained-store updates across replicas: decode time, worker, sequence.
pub(crate) type RetainVersion = (Instant, WorkerId, u64);

/// Records `filter` once in `distinct` (in first-seen order), keeping the last QoS.
fn remember<'a>(
    distinct: &mut Vec<(&'a TopicFilter, QoS)>,
    seen: &mut HashMap<&'a TopicFilter, usize>,
    filter: &'a TopicFilter,
    qos: QoS,
) {
    match seen.get(filter) {
        Some(&i) => distinct[i].1 = qos,
        None => {
            seen.insert(filter, distinct.len());
            distinct.push((filter, qos));
        }
    }
}

/// An MQTT 5 acknowledgement with a reason code.
fn ack(id: crate::protocol::PacketId, reason: ReasonCode) -> Ack {
    let mut a = Ack::new(id);
    a.reason = reason;
    a
}

impl Shard {
    pub(super) fn on_publish(&mut self, now: Instant, id: ConnId, key: usize, mut p: Publish) {
        self.stats.publish_received += 1;
        let v5 = self.conn(id).is_some_and(|c| c.version.is_v5());
        let mut reason = ReasonCode::SUCCESS;
        if v5 {
            // Topic aliases (3.3.2.3.4): an alias with a topic sets the mapping, an
            // alias with an empty topic uses it. Out of range or unknown: 0x94.
            if let Some(alias) = p.props.topic_alias {
                let Some(v) = self.conn_mut(id).and_then(|c| c.v5.as_mut()) else {
                    return;
                };
                let Some(slot) = v.aliases_in.get_mut(usize::from(alias) - 1) else {
                    return self.close_with(now, id, ReasonCode::TOPIC_ALIAS_INVALID);
                };
                if p.topic.is_empty() {
                    match slot {
                        Some(t) => p.topic = t.clone(),
                        None => return self.close_with(now, id, ReasonCode::PROTOCOL_ERROR),
                    }
                } else {
                    *slot = Some(p.topic.compacted());
                }
            }
            if !p.props.subscription_identifiers.is_empty() {
                // [MQTT-3.3.4-6]: a client may not send subscription identifiers.
                return self.close_with(now, id, ReasonCode::PROTOCOL_ERROR);
            }
            if p.props.payload_format_indicator == Some(1)
                && std::str::from_utf8(&p.payload).is_err()
            {
                // 3.3.2.3.2: a payload that says UTF-8 and is not.
                reason = ReasonCode::PAYLOAD_FORMAT_INVALID;
            }
        }
        if !self.cfg.topic_within_limits(p.topic.as_str()) {
            // Over `max_topic_levels`/`max_topic_bytes`: a 3.x client and an MQTT 5
            // QoS 0 publisher are disconnected, MQTT 5 QoS 1/2 gets 0x90 in its ack.
            self.stats.limits.topics_refused += 1;
            tracing::debug!(?id, "topic over the configured limits");
            if !v5 || p.qos == QoS::AtMostOnce {
                self.send_disconnect(id, ReasonCode::TOPIC_NAME_INVALID);
                return self.end_conn(now, id);
            }
            reason = ReasonCode::TOPIC_NAME_INVALID;
        }
        if p.qos == QoS::ExactlyOnce {
            // Inbound QoS 2 ids held until PUBREL are bounded: MQTT 5 announces the
            // bound as Receive Maximum ([MQTT-3.3.4-7]: beyond it, 0x93); a 3.1.1
            // client that exceeds it is closed, as it would grow the set forever.
            let held = self.sessions.get(key).map_or(0, |s| s.inbound_qos2_len());
            let known = p.packet_id.is_some_and(|pid| {
                self.sessions
                    .get(key)
                    .is_some_and(|s| s.inbound_qos2_contains(pid))
            });
            if !known && held >= self.cfg.max_inbound_qos2 {
                return self.close_with(now, id, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
            }
        }
        let props = p.props.take();
        let msg = Message::new(p.topic, p.payload, p.qos, p.retain);
        let msg = match props {
            Some(props) => msg.with_props(now, props),
            None => msg,
        };
        // Clients may not write the broker's own `$SYS` tree; the message is
        // acknowledged as the protocol requires but not forwarded or retained.
        let sys = msg.topic.as_str().starts_with("$SYS");
        if !sys && reason.is_success() && !self.may_write(id, msg.topic.as_str()) {
            // Denied by the ACL: MQTT 5 acknowledges with 0x87, 3.1.1 plainly.
            reason = ReasonCode::NOT_AUTHORIZED;
        }
        let forward = !sys && reason.is_success();
        match (p.qos, p.packet_id) {
            (QoS::AtMostOnce, _) => {
                if forward {
                    self.route(now, msg, Some(id));
                }
            }
            (QoS::AtLeastOnce, Some(pid)) => {
                if forward {
                    self.route(now, msg, Some(id));
                }
                self.write_packet(id, &Packet::PubAck(ack(pid, reason))); // [MQTT-4.3.2-2]
            }
            (QoS::ExactlyOnce, Some(pid)) => {
                // [MQTT-4.3.3-2]: deliver once, remember the id until PUBREL.
                let first = reason.is_success()
                    && self
                        .sessions
                        .get_mut(key)
                        .is_some_and(|s| s.inbound_qos2_insert(pid));
                if first && forward {
                    self.route(now, msg, Some(id));
                }
                self.write_packet(id, &Packet::PubRec(ack(pid, reason)));
            }
            (_, None) => {
                // The decoder guarantees an id for QoS > 0; keep the shard total anyway.
                debug_assert!(false, "QoS > 0 PUBLISH without packet id");
                self.protocol_error(now, id, "PUBLISH", "QoS > 0 without packet id");
            }
        }
    }

    /// Sends a message to every matching subscriber, local and remote. `from` is the
    /// publishing connection on this worker, if any (for back-pressure).
    pub(crate) fn route(&mut self, now: Instant, mut msg: Message, from: Option<ConnId>) {
        if msg.qos != QoS::AtMostOnce || msg.retain {
            // It may be held in queues or the retained store: stop pinning the read buffer.
            msg = msg.compacted();
        }
        if msg.retain && !msg.payload.is_empty() && !self.retained_fits(&msg) {
            // The store is full: the message is delivered but not retained (decided
            // here, at the origin, so every replica applies the same updates and they
            // converge).
            self.stats.limits.retained_refused += 1;
            tracing::debug!(topic = %msg.topic, "retained store full, not stored");
            msg.retain = false;
        }
        let origin = from.map(|conn| Origin {
            worker: self.id,
            conn,
        });
        let mut mask: u64 = 0;
        // Whether the local index may match: with several workers the interest
        // index (which holds this worker too) says so, and a miss saves the local
        // lookup.
        let mut local = true;
        if msg.retain {
            // Every worker keeps a replica of the retained store.
            mask = self.all_workers();
        } else if self.workers > 1 {
            mask = self.interest_mask(&msg.topic, from);
            local = mask & (1u64 << self.id) != 0;
        }
        mask &= !(1u64 << self.id);
        self.seq += 1;
        let stamp = Stamp {
            worker: self.id,
            seq: self.seq,
        };
        if msg.retain {
            self.store_retained(&msg, (now, self.id, self.seq));
        }
        debug_assert!(local || !self.index.has_match(&msg.topic));
        // When nothing on this worker needs the message, the last other worker takes
        // it instead of a copy: two reference counts fewer, on a buffer this worker
        // goes on reading.
        let last = (!local && mask != 0 && self.shared.is_empty())
            .then(|| (u64::BITS - 1 - mask.leading_zeros()) as WorkerId);
        if let Some(w) = last {
            mask &= !(1u64 << w);
        }
        while mask != 0 {
            let w = mask.trailing_zeros() as WorkerId;
            mask &= mask - 1;
            self.send_mesh_with(w, || MeshMsg::Publish {
                msg: msg.clone(),
                origin,
                stamp,
                at: now,
            });
        }
        if let Some(w) = last {
            self.send_mesh_with(w, || MeshMsg::Publish {
                msg,
                origin,
                stamp,
                at: now,
            });
            return;
        }
        if local {
            self.deliver_local(now, &msg, origin, stamp);
        }
        self.route_shared(now, &msg, origin);
    }

    /// The workers with a filter matching `topic` (bit = worker id), from the
    /// publishing connection's [`RouteCache`] when it holds this topic and the
    /// interest index has not changed since, else from the index (and cached).
    fn interest_mask(&mut self, topic: &TopicName, from: Option<ConnId>) -> u64 {
        let generation = self.interest_generation;
        let cached = from
            .and_then(|id| self.conn(id))
            .and_then(|c| c.route.as_deref())
            .filter(|r| r.generation == generation && r.topic == topic.as_str().as_bytes());
        if let Some(r) = cached {
            debug_assert_eq!(r.mask, {
                let mut m = 0u64;
                self.interest.for_each_match(topic, |w, ()| m |= 1u64 << w);
                m
            });
            return r.mask;
        }
        let mut mask = 0u64;
        self.interest
            .for_each_match(topic, |w, ()| mask |= 1u64 << w);
        let bytes = topic.as_str().as_bytes();
        if bytes.len() <= super::ROUTE_CACHE_TOPIC_MAX {
            if let Some(c) = from.and_then(|id| self.conn_mut(id)) {
                let r = c.route.get_or_insert_with(Default::default);
                r.generation = generation;
                r.mask = mask;
                r.topic.clear();
                r.topic.extend_from_slice(bytes);
            }
        }
        mask
    }

    /// May `msg` be stored in the retained store? A new topic needs room under
    /// `max_retained_messages`; a message larger than the one it replaces (or than
    /// nothing) needs room under `max_retained_bytes`. Replacing with a message no
    /// larger is always allowed.
    fn retained_fits(&self, msg: &Message) -> bool {
        let old = self.retained.get(&msg.topic);
        if old.is_none() && self.retained.len() >= self.cfg.max_retained_messages {
            return false;
        }
        let growth = msg
            .payload
            .len()
            .saturating_sub(old.map_or(0, |m| m.payload.len()));
        growth == 0
            || self.retained.payload_bytes().saturating_add(growth) <= self.cfg.max_retained_bytes
    }

    /// Delivers to this worker's matching sessions, once per session at the highest
    /// granted QoS among its matching filters ([MQTT-3.3.5-1]).
    pub(crate) fn deliver_local(
        &mut self,
        now: Instant,
        msg: &Message,
        origin: Option<Origin>,
        stamp: Stamp,
    ) {
        let mut matches = std::mem::take(&mut self.matches);
        matches.clear();
        let mut no_local = false;
        self.index.for_each_match(&msg.topic, |sub, g| {
            no_local |= g.no_local();
            matches.push((sub, g));
        });
        if no_local {
            // No Local (3.8.3.1): not to the publisher's own session, if it lives here.
            let publisher = origin.filter(|o| o.worker == self.id).and_then(|o| {
                match self.conn(o.conn).map(|c| &c.phase) {
                    Some(super::Phase::Active { session }) => Some(*session as u32),
                    _ => None,
                }
            });
            matches.retain(|&(sub, g)| !(g.no_local() && Some(sub) == publisher));
        }
        if matches.len() > 1 {
            // One delivery per session ([MQTT-3.3.4-2]) at the highest QoS, with the
            // RETAIN flag kept if any matching subscription asks for it.
            matches.sort_unstable_by_key(|m| m.0);
            let mut w = 0;
            for r in 0..matches.len() {
                if w > 0 && matches[w - 1].0 == matches[r].0 {
                    let (a, b) = (matches[w - 1].1, matches[r].1);
                    let mut opts = a.options();
                    opts.qos = a.max_qos().max(b.max_qos());
                    opts.retain_as_published |= b.retain_as_published();
                    matches[w - 1].1 = Grant::new(opts, 0);
                } else {
                    matches[w] = matches[r];
                    w += 1;
                }
            }
            matches.truncate(w);
        }
        for &(key, grant) in &matches {
            let granted = grant.max_qos();
            if key & STUB_BIT != 0 {
                self.forward_via_stub(key, msg, origin, stamp);
            } else if !self.hold_if_moving(key as usize, msg, granted, origin, stamp) {
                // [MQTT-3.3.1-9]: RETAIN is cleared on normal forwarding, unless the
                // subscription asked for Retain As Published ([MQTT-3.3.1-12]).
                let retain = msg.retain && grant.retain_as_published();
                self.deliver(now, key as usize, msg, granted, retain, origin);
            }
        }
        self.matches = matches;
    }

    /// One delivery to one session at min(published, granted) QoS ([MQTT-3.8.4-6]).
    pub(crate) fn deliver(
        &mut self,
        now: Instant,
        key: usize,
        msg: &Message,
        granted: QoS,
        retain: bool,
        origin: Option<Origin>,
    ) {
        if !self.may_deliver(key, msg.topic.as_str()) {
            return;
        }
        let qos = msg.qos.min(granted);
        let max_inflight = self.cfg.max_inflight;
        let limit = self.cfg.max_queued_messages;
        let congest = self.congestion_limit();
        if msg.expired(now) {
            self.stats.dropped_expired += 1;
            return;
        }
        let Some(session) = self.sessions.get_mut(key) else {
            return;
        };
        if session.v5.is_some() && !self.fits(key, msg, qos) {
            self.stats.dropped_too_large += 1;
            return;
        }
        let Some(session) = self.sessions.get_mut(key) else {
            return;
        };
        let online = session.conn;
        if qos == QoS::AtMostOnce {
            let Some(cid) = online else {
                self.stats.dropped_qos0_offline += 1;
                return;
            };
            let full = self
                .conn(cid)
                .is_none_or(|c| c.tx.len() >= self.cfg.max_outbound_bytes);
            if full {
                self.stats.dropped_qos0_slow += 1;
                return;
            }
            self.encode_delivery(now, cid, msg, qos, retain, None);
            return;
        }
        match online {
            Some(cid) if session.queue.is_empty() && session.window_open(max_inflight) => {
                let pid = session.start_inflight(qos, msg.clone(), retain);
                self.encode_delivery(now, cid, msg, qos, retain, Some(pid));
            }
            _ => {
                // Online: congestion starts at the limit and back-pressures the
                // publisher; the oldest is dropped only at twice the limit. Offline: the
                // oldest is dropped at the limit.
                let hard = if online.is_some() {
                    limit.saturating_mul(2)
                } else {
                    limit
                };
                let item = Queued {
                    qos,
                    msg: msg.clone(),
                    retain,
                };
                match session.enqueue(item, congest, hard, self.cfg.max_queued_bytes) {
                    Enqueued::Ok => {}
                    Enqueued::Congested => {
                        if online.is_some() {
                            self.backpressure(now, key, origin);
                        }
                    }
                    Enqueued::DroppedOldest => {
                        self.stats.dropped_queue_full += 1;
                        if online.is_some() {
                            self.backpressure(now, key, origin);
                        }
                    }
                }
            }
        }
    }

    /// False when an MQTT 5 client's Maximum Packet Size is below the PUBLISH this
    /// message would need ([MQTT-3.1.2-25]: it is not sent, as if delivered). The
    /// estimate counts a topic alias and every subscription identifier the session
    /// could add, so it errs on the side of not sending.
    pub(crate) fn fits(&self, key: usize, msg: &Message, qos: QoS) -> bool {
        let Some(v5) = self.sessions.get(key).and_then(|s| s.v5.as_ref()) else {
            return true;
        };
        if v5.max_packet == 0 {
            return true;
        }
        let subs = self.sessions.get(key).map_or(0, |s| s.subscriptions.len());
        let props = msg.props.as_ref().map_or(0, |p| p.body_len())
            + 5 // message expiry
            + 3 // topic alias
            + if v5.has_sub_ids { 5 * subs } else { 0 };
        let body = 2
            + msg.topic.as_str().len()
            + if qos == QoS::AtMostOnce { 0 } else { 2 }
            + 4
            + props
            + msg.payload.len();
        1 + 4 + body <= v5.max_packet as usize
    }

    /// Queue length at which an online session back-pressures its publishers: a few
    /// windows' worth, so queues (and the latency they add) stay short; publishers
    /// resume as soon as it halves (`pump`).
    fn congestion_limit(&self) -> usize {
        self.cfg
            .max_queued_messages
            .min(self.cfg.max_inflight.saturating_mul(4))
            .max(2)
    }

    /// Pauses the publisher that fed a congested session, and remembers it so that
    /// it resumes as soon as the session's queue drains.
    fn backpressure(&mut self, now: Instant, key: usize, origin: Option<Origin>) {
        let Some(o) = origin else { return };
        let feeders = self.feeders.entry(key).or_default();
        if feeders.len() < FEEDERS_MAX && !feeders.contains(&o) {
            feeders.push(o);
        }
        let until = now + self.cfg.backpressure_pause();
        self.stats.backpressure_pauses += 1;
        if o.worker == self.id {
            self.effects.pause.push((o.conn, until));
        } else {
            self.send_mesh(
                o.worker,
                MeshMsg::Pause {
                    conn: o.conn,
                    until,
                },
            );
        }
    }

    /// Moves queued messages into the in-flight window while it has room. Queued
    /// messages that expired meanwhile, or that the client's Maximum Packet Size
    /// refuses, are dropped here.
    pub(crate) fn pump(&mut self, now: Instant, id: ConnId, key: usize) {
        let max_inflight = self.cfg.max_inflight;
        let low_water = self.congestion_limit() / 2;
        loop {
            let Some(session) = self.sessions.get_mut(key) else {
                return;
            };
            // First the in-flight messages held back at reconnect (see
            // `resend_inflight`), in order, while fewer than the window are out. Held
            // messages are always a suffix of the in-flight list (they are released
            // in order before anything new starts), so the last one tells whether
            // there are any: the common case costs no scan.
            let window = session.window(max_inflight);
            let any_held = session.inflight.back().is_some_and(|m| m.held);
            if any_held && session.inflight.iter().filter(|m| !m.held).count() < window {
                let next = session.inflight.iter_mut().find(|m| m.held).map(|m| {
                    m.held = false;
                    (m.state, m.qos, m.retain, m.packet_id, m.msg.clone())
                });
                if let Some((state, qos, retain, pid, msg)) = next {
                    self.resend_one(now, id, state, qos, retain, pid, &msg);
                    continue;
                }
            }
            if !session.window_open(max_inflight) {
                return;
            }
            let Some(q) = session.dequeue() else {
                return self.resume_feeders(key);
            };
            let (auth, conns, stats) = (&mut self.auth, &self.conns, &mut self.stats);
            if !super::auth::may_read(auth, conns, stats, id, q.msg.topic.as_str()) {
                continue;
            }
            let drained = session.queue.len() <= low_water;
            if q.msg.expired(now) {
                self.stats.dropped_expired += 1;
                continue;
            }
            if !self.fits(key, &q.msg, q.qos) {
                self.stats.dropped_too_large += 1;
                continue;
            }
            let Some(session) = self.sessions.get_mut(key) else {
                return;
            };
            let pid = session.start_inflight(q.qos, q.msg.clone(), q.retain);
            self.encode_delivery(now, id, &q.msg, q.qos, q.retain, Some(pid));
            if drained {
                self.resume_feeders(key);
            }
        }
    }

    /// The session's queue has drained: its paused publishers may go on now rather
    /// than at the end of their pause.
    fn resume_feeders(&mut self, key: usize) {
        if self.feeders.is_empty() {
            return; // nothing is congested: the common case, called on every ack
        }
        let Some(feeders) = self.feeders.remove(&key) else {
            return;
        };
        for o in feeders {
            if o.worker == self.id {
                self.effects.resume.push(o.conn);
            } else {
                self.send_mesh(o.worker, MeshMsg::Resume { conn: o.conn });
            }
        }
    }

    pub(super) fn on_subscribe(&mut self, now: Instant, id: ConnId, key: usize, sub: Subscribe) {
        let limit = self.cfg.max_subscriptions_per_session;
        let sub_id = sub
            .props
            .subscription_identifiers
            .first()
            .copied()
            .unwrap_or(0);
        let mut codes = Vec::with_capacity(sub.filters.len());
        // Each distinct filter once, in order (the last QoS wins), for retained delivery.
        let mut distinct: Vec<(&TopicFilter, QoS)> = Vec::new();
        let mut seen: HashMap<&TopicFilter, usize> = HashMap::new();
        for (filter, opts) in &sub.filters {
            if !self.may_subscribe(id, filter) {
                codes.push(ReasonCode::NOT_AUTHORIZED); // 0x80 in 3.1.1
                continue;
            }
            let granted = opts.qos; // the broker supports every QoS
            let grant = Grant::new(*opts, sub_id);
            let shared = filter.shared();
            if let Some(shared) = &shared {
                let bad = match shared {
                    Err(()) => Some(ReasonCode::TOPIC_FILTER_INVALID), // [MQTT-4.8.2-1/2]
                    // [MQTT-3.8.3-4]: No Local on a shared subscription.
                    Ok(_) if opts.no_local => {
                        return self.close_with(now, id, ReasonCode::PROTOCOL_ERROR);
                    }
                    Ok(_) => None,
                };
                if let Some(code) = bad {
                    codes.push(code);
                    continue;
                }
            }
            if !self.cfg.topic_within_limits(filter.as_str()) {
                // SUBACK 0x80 (MQTT 5: 0x8F) for this filter; the others go on.
                self.stats.limits.topics_refused += 1;
                codes.push(ReasonCode::TOPIC_FILTER_INVALID);
                continue;
            }
            let Some(count) = self.sessions.get(key).map(|s| s.subscriptions.len()) else {
                return;
            };
            let existed = match &shared {
                Some(Ok((group, inner))) => self.shared_subscribe(key, group, inner, grant),
                _ => self.index_insert(filter, key, grant).is_some(),
            };
            if !existed && count >= limit {
                // At the limit only replacements are accepted.
                match &shared {
                    Some(Ok((group, inner))) => {
                        self.shared_unsubscribe(key, group, inner);
                    }
                    _ => {
                        self.index_remove(filter, key);
                    }
                }
                tracing::debug!(?id, "subscription limit reached");
                self.stats.limits.subscriptions_refused += 1;
                codes.push(ReasonCode::QUOTA_EXCEEDED);
                continue;
            }
            if let Some(s) = self.sessions.get_mut(key) {
                if existed {
                    // [MQTT-3.8.4-3]: a subscription with the same filter is replaced.
                    s.add_subscription(filter, grant);
                } else {
                    // Owned copy: the filter shares the worker's read buffer.
                    s.subscriptions.push((filter.compacted(), grant));
                }
                if sub_id != 0 {
                    s.v5.get_or_insert_with(Default::default).has_sub_ids = true;
                }
            }
            codes.push(ReasonCode::granted(granted));
            // Retained messages: never on a shared subscription ([MQTT-3.8.4-?], 4.8.2),
            // and as Retain Handling says (3.8.3.1).
            let send_retained = filter.shared().is_none()
                && match opts.retain_handling {
                    RetainHandling::OnSubscribe => true,
                    RetainHandling::OnNewSubscription => !existed,
                    RetainHandling::Never => false,
                };
            if send_retained {
                remember(&mut distinct, &mut seen, filter, granted);
            }
        }
        // [MQTT-3.8.4-1], [MQTT-3.8.4-2], [MQTT-3.8.4-5]: one code per filter, in order.
        self.write_packet(
            id,
            &Packet::SubAck(SubAck {
                packet_id: sub.packet_id,
                codes,
                props: Default::default(),
            }),
        );
        // [MQTT-3.3.1-6], [MQTT-3.8.4-3]: retained messages go out with RETAIN set, as
        // long as the session can take them (beyond, they would only be dropped).
        let mut retained = Vec::new();
        for (filter, granted) in distinct {
            retained.clear();
            self.retained
                .for_each_match(filter, |m| retained.push(m.clone()));
            for msg in &retained {
                if !self.has_room(key) {
                    return;
                }
                self.deliver(now, key, msg, granted, true, None);
            }
        }
    }

    /// False when a session can take no more deliveries without dropping: its
    /// connection's write buffer is full and its queue is at the hard limit.
    fn has_room(&self, key: usize) -> bool {
        let Some(s) = self.sessions.get(key) else {
            return false;
        };
        let tx_full = s
            .conn
            .and_then(|c| self.conn(c))
            .is_none_or(|c| c.tx.len() >= self.cfg.max_outbound_bytes);
        !tx_full || s.queue.len() < self.cfg.max_queued_messages.saturating_mul(2)
    }

    pub(super) fn on_unsubscribe(&mut self, id: ConnId, key: usize, unsub: Unsubscribe) {
        let mut codes = Vec::with_capacity(unsub.filters.len());
        for filter in &unsub.filters {
            let removed = match filter.shared() {
                Some(Ok((group, inner))) => self.shared_unsubscribe(key, group, &inner),
                Some(Err(())) => false,
                // The index answers in O(levels) whether the session has this filter;
                // only then is the session's own list searched.
                None => self.index_remove(filter, key),
            };
            if removed {
                if let Some(s) = self.sessions.get_mut(key) {
                    s.remove_subscription(filter);
                }
                codes.push(ReasonCode::SUCCESS);
            } else {
                codes.push(ReasonCode::NO_SUBSCRIPTION_EXISTED);
            }
        }
        // [MQTT-3.10.4-4], [MQTT-3.10.4-5]: UNSUBACK even when nothing matched.
        self.write_packet(
            id,
            &Packet::UnsubAck(UnsubAck {
                packet_id: unsub.packet_id,
                codes,
                props: Default::default(),
            }),
        );
    }

    /// Adds to the local index and tells the other workers about a new filter;
    /// returns the options it replaced, if the session had this filter already.
    pub(crate) fn index_insert(
        &mut self,
        filter: &TopicFilter,
        key: usize,
        qos: Grant,
    ) -> Option<Grant> {
        let r = self.index.insert(filter, key as u32, qos);
        if r.filter_was_empty {
            self.broadcast_interest(filter, true);
        }
        r.previous
    }

    /// Removes from the local index (telling the other workers when the filter goes);
    /// true if the session had it.
    pub(crate) fn index_remove(&mut self, filter: &TopicFilter, key: usize) -> bool {
        let r = self.index.remove(filter, key as u32);
        if r.previous.is_some() && r.filter_now_empty {
            self.broadcast_interest(filter, false);
        }
        r.previous.is_some()
    }

    /// Records in the interest index that `worker` gained (`add`) or lost its interest
    /// in `filter`. Every change goes through here, so every change makes the
    /// publishers' [`RouteCache`](super::RouteCache)s stale.
    fn set_interest(&mut self, filter: &TopicFilter, worker: WorkerId, add: bool) {
        if add {
            self.interest.insert(filter, worker as u32, ());
        } else {
            self.interest.remove(filter, worker as u32);
        }
        self.interest_generation += 1;
    }

    /// Tells every other worker that this one's local index gained its first (`add`)
    /// or lost its last subscriber on `filter`, and records the same in this worker's
    /// own interest index, so that one lookup there tells `route` whether the local
    /// index can match at all (not kept with one worker, which does not look there).
    pub(crate) fn broadcast_interest(&mut self, filter: &TopicFilter, add: bool) {
        let me = self.id;
        if self.workers > 1 {
            self.set_interest(filter, me, add);
        }
        for w in (0..self.workers).filter(|&w| w != me) {
            self.send_mesh(
                w,
                MeshMsg::Interest {
                    filter: filter.clone(),
                    add,
                },
            );
        }
    }

    /// Updates this worker's retained replica: an empty payload deletes
    /// ([MQTT-3.3.1-10]), anything else replaces ([MQTT-3.3.1-5]). Replicas converge:
    /// an update older than the one applied (by decode time, then worker, then
    /// sequence) is ignored, and a delete leaves a tombstone for a grace period so a
    /// late older insert cannot resurrect the topic.
    fn store_retained(&mut self, msg: &Message, version: RetainVersion) {
        if self
            .retained_versions
            .get(&msg.topic)
            .is_some_and(|v| *v >= version)
        {
            return;
        }
        self.retained_versions.insert(msg.topic.clone(), version);
        if msg.payload.is_empty() {
            self.retained.remove(&msg.topic);
            self.tombstones.push_back((version.0, msg.topic.clone()));
        } else {
            self.retained.insert(msg.clone());
        }
    }

    /// Forgets deletions older than the grace period, and versions of topics that
    /// hold no message.
    pub(crate) fn expire_tombstones(&mut self, now: Instant) {
        let grace = self.cfg.handover_timeout() * 2;
        while let Some((at, _)) = self.tombstones.front() {
            if now.saturating_duration_since(*at) < grace {
                break;
            }
            let Some((at, topic)) = self.tombstones.pop_front() else {
                break;
            };
            let deleted = self.retained.get(&topic).is_none();
            if deleted
                && self
                    .retained_versions
                    .get(&topic)
                    .is_some_and(|v| v.0 == at)
            {
                self.retained_versions.remove(&topic);
            }
        }
    }

    /// A publish routed here by worker `from`, read in place in its batch (the batch
    /// drops it afterwards).
    pub(super) fn on_mesh_publish(
        &mut self,
        now: Instant,
        from: WorkerId,
        msg: &Message,
        origin: Option<Origin>,
        stamp: Stamp,
        at: Instant,
    ) {
        debug_assert!(stamp.worker == from && stamp.seq > self.last_seen[from]);
        self.last_seen[from] = stamp.seq;
        if msg.retain {
            self.store_retained(msg, (at, stamp.worker, stamp.seq));
        }
        self.deliver_local(now, msg, origin, stamp);
    }

    pub(super) fn on_mesh(&mut self, now: Instant, from: WorkerId, msg: MeshMsg) {
        match msg {
            MeshMsg::Publish {
                msg,
                origin,
                stamp,
                at,
            } => self.on_mesh_publish(now, from, &msg, origin, stamp, at),
            MeshMsg::Spent => debug_assert!(false, "a spent mesh message was sent"),
            MeshMsg::Forward {
                client_id,
                msg,
                origin,
                stamp,
            } => self.on_forward(now, from, client_id, msg, origin, stamp),
            MeshMsg::Interest { filter, add } => self.set_interest(&filter, from, add),
            MeshMsg::Takeover {
                client_id,
                to,
                clean,
            } => self.on_takeover(now, from, client_id, to, clean),
            MeshMsg::Handover {
                client_id, session, ..
            } => self.on_handover(now, client_id, session),
            MeshMsg::Ping {
                client_id,
                stub_at,
                move_id,
            } => self.on_ping(from, client_id, stub_at, move_id),
            MeshMsg::Pong { client_id, move_id } => self.on_pong(from, &client_id, move_id),
            MeshMsg::Done {
                client_id,
                origin,
                move_id,
            } => self.on_done(now, &client_id, origin, move_id),
            MeshMsg::Flushed { client_id, move_id } => {
                self.on_flushed(now, from, &client_id, move_id)
            }
            MeshMsg::SharedMember { group, add } => self.on_shared_member(from, group, add),
            MeshMsg::Shared {
                group,
                msg,
                origin,
                visited,
            } => self.on_shared(now, group, msg, origin, visited),
            MeshMsg::Resume { conn } => {
                if self.is_open(conn) {
                    self.effects.resume.push(conn);
                }
            }
            MeshMsg::Pause { conn, until } => {
                if self.is_open(conn) {
                    // The pause lasts `backpressure_pause` from its arrival here, not
                    // from the sender's turn start: under load the sender's turn and
                    // the mesh hop can take longer than the pause itself (160-400 ms
                    // seen against 100 ms on a loaded 2-core machine with TLS), and a
                    // pause that has expired on arrival stops nothing. The publisher
                    // then kept publishing, the subscriber's queue grew to twice
                    // `max_queued_messages`, and acknowledged QoS 1 messages were
                    // dropped. A `Resume` still ends it early.
                    let until = until.max(now + self.cfg.backpressure_pause());
                    self.effects.pause.push((conn, until));
                }
            }
            MeshMsg::Stats(report) => {
                let (stats, latency) = *report;
                if let Some(slot) = self.worker_stats.get_mut(from) {
                    *slot = stats;
                }
                if let Some(slot) = self.worker_latency.get_mut(from) {
                    *slot = latency;
                }
            }
        }
    }
}
