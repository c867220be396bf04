//! CONNECT (claiming the client id, parking while another takeover of it is in
//! flight, attaching the session, CONNACK), and the end of connections (DISCONNECT,
//! protocol errors, timeouts, socket loss) with their Last Will. Takeovers between
//! workers are in `takeover.rs`.

use super::{AwaitClaim, Conn, ConnV5, Phase, Shard};
use crate::broker::mesh::MeshMsg;
use crate::broker::message::Message;
use crate::broker::registry::Refused;
use crate::broker::session::{OutState, Session, SessionV5};
use crate::broker::ConnId;
use crate::protocol::{
    encode_publish, encode_publish_v5, ConnAck, Connect, Disconnect, Packet, ProtocolVersion,
    PublishExtras, QoS, ReasonCode, Will,
};
use std::cmp::Reverse;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A CONNECT waiting for its session to arrive from another worker.
#[derive(Debug)]
pub struct PendingConnect {
    pub client_id: Arc<str>,
    pub clean: bool,
    pub deadline: Instant,
}

/// How soon a CONNECT for a busy client id is retried.
const CLAIM_RETRY: Duration = Duration::from_millis(1);

/// MQTT 3.1 limits client ids to 23 bytes (3.1.1 lets servers accept more).
const V31_CLIENT_ID_LEN_MAX: usize = 23;

impl Shard {
    pub(super) fn on_connect(&mut self, now: Instant, id: ConnId, c: Connect) {
        let deadline = now + self.cfg.handover_timeout();
        let ticket = self.registry.ticket();
        self.on_connect_until(now, id, c, deadline, ticket);
    }

    /// CONNECT holding `ticket` (its arrival order), refused with 0x03 if its
    /// client id stays busy until `deadline`.
    fn on_connect_until(
        &mut self,
        now: Instant,
        id: ConnId,
        c: Connect,
        deadline: Instant,
        ticket: u64,
    ) {
        let topic_alias_max = self.cfg.max_topic_aliases;
        // The broker's longest keep-alive (`max_keep_alive_secs`, 65535: no limit of its
        // own). An MQTT 5 client asking for longer, or for none, is told the broker's
        // value in CONNACK Server Keep Alive and held to it (3.2.2.3.14); a 3.x client
        // cannot be told, so it is refused with 0x02, as Mosquitto does.
        let max_keep_alive = self.cfg.max_keep_alive_secs;
        let mut keep_alive = c.keep_alive_secs;
        let mut server_keep_alive = None;
        if max_keep_alive < u16::MAX && (keep_alive == 0 || keep_alive > max_keep_alive) {
            if !c.version.is_v5() {
                if let Some(conn) = self.conn_mut(id) {
                    conn.version = c.version;
                }
                return self.refuse(id, ReasonCode::CLIENT_ID_NOT_VALID);
            }
            keep_alive = max_keep_alive;
            server_keep_alive = Some(max_keep_alive);
        }
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        conn.version = c.version;
        conn.keep_alive_limit =
            (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500)); // [MQTT-3.1.2-24]

        // Clients may not write the broker's own `$SYS` tree, not even by will.
        conn.will = c
            .will
            .clone()
            .filter(|w| !w.topic.as_str().starts_with("$SYS"))
            .map(|mut w| {
                w.payload = bytes::Bytes::copy_from_slice(&w.payload);
                w.topic = w.topic.compacted();
                Box::new(w)
            });
        if c.version.is_v5() {
            conn.v5 = Some(Box::new(ConnV5 {
                session_expiry: c.props.session_expiry_interval.unwrap_or(0),
                receive_max: c.props.receive_maximum.unwrap_or(0),
                max_packet: c.props.maximum_packet_size.unwrap_or(0),
                aliases_in: vec![None; usize::from(topic_alias_max)],
                aliases_out: Default::default(),
                alias_max_out: c.props.topic_alias_maximum.unwrap_or(0),
                assigned_id: false,
                server_keep_alive,
            }));
            if c.props.authentication_method.is_some() {
                // 4.12: no enhanced authentication method is supported.
                return self.refuse(id, ReasonCode::BAD_AUTHENTICATION_METHOD);
            }
        }

        if let Some(w) = c.will.as_ref() {
            if !self.cfg.topic_within_limits(w.topic.as_str()) {
                self.stats.limits.topics_refused += 1;
                return self.refuse(id, ReasonCode::TOPIC_NAME_INVALID);
            }
        }

        let client_id: Arc<str> = if c.client_id.is_empty() {
            // [MQTT-3.1.3-8]: a zero-length id with clean session 0 -> 0x02 (3.1.1);
            // MQTT 5 assigns one whatever Clean Start says ([MQTT-3.1.3-6]).
            if (!c.clean_session && !c.version.is_v5()) || c.version == ProtocolVersion::V3_1 {
                return self.refuse(id, ReasonCode::CLIENT_ID_NOT_VALID);
            }
            // [MQTT-3.1.3-6]: assign a unique id, one no client holds ([MQTT-3.2.2-16]).
            if let Some(v5) = self.conn_mut(id).and_then(|c| c.v5.as_mut()) {
                v5.assigned_id = true;
            }
            loop {
                self.next_auto_id += 1;
                let candidate: Arc<str> =
                    format!("ternmq-auto-{}-{}", self.id, self.next_auto_id).into();
                if self.registry.owner(&candidate).is_none() {
                    break candidate;
                }
            }
        } else {
            if c.version == ProtocolVersion::V3_1 && c.client_id.len() > V31_CLIENT_ID_LEN_MAX {
                return self.refuse(id, ReasonCode::CLIENT_ID_NOT_VALID);
            }
            Arc::from(&*c.client_id)
        };

        let Some(c) = self.authenticate(now, id, c, &client_id, deadline, ticket) else {
            return;
        };
        // [MQTT-3.1.4-2]: one connection per client id, wherever it lives.
        let clean = c.clean_session;
        let claim = match self.registry.claim(&client_id, self.id, ticket) {
            Ok(claim) => claim,
            // Another takeover of this id is in flight: try again shortly.
            Err(Refused::Busy) => return self.park_connect(now, id, c, deadline, ticket),
            // A later CONNECT for this id has arrived meanwhile: it wins.
            Err(Refused::Stale) => {
                tracing::debug!(?id, %client_id, "CONNECT overtaken by a later one");
                return self.drop_conn(id);
            }
        };
        if self.by_client.contains_key(&client_id) {
            // The session is here: take it over locally.
            self.detach_local_session(now, &client_id);
            let existing = self.by_client.get(&client_id).copied();
            self.activate(now, id, client_id, clean, existing);
        } else if let Some(owner) = claim.prev.filter(|&w| w != self.id) {
            self.await_handover(now, id, client_id.clone(), clean);
            self.send_mesh(
                owner,
                MeshMsg::Takeover {
                    client_id,
                    to: id,
                    clean,
                },
            );
        } else {
            self.activate(now, id, client_id, clean, None);
        }
    }

    /// Parks a CONNECT whose client id is busy; `tick` retries it.
    pub(super) fn park_connect(
        &mut self,
        now: Instant,
        id: ConnId,
        c: Connect,
        deadline: Instant,
        ticket: u64,
    ) {
        let retry_at = now + CLAIM_RETRY;
        if let Some(conn) = self.conn_mut(id) {
            conn.phase = Phase::AwaitClaim(Box::new(AwaitClaim {
                connect: c,
                retry_at,
                deadline,
                ticket,
            }));
        }
        self.schedule(id, retry_at);
    }

    /// A parked CONNECT's retry time came.
    pub(super) fn retry_connect(&mut self, now: Instant, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let Phase::AwaitClaim(parked) = std::mem::replace(&mut conn.phase, Phase::AwaitConnect)
        else {
            return;
        };
        let AwaitClaim {
            connect,
            deadline,
            ticket,
            ..
        } = *parked;
        if now >= deadline {
            tracing::warn!(?id, "client id stayed busy, refusing");
            return self.refuse(id, ReasonCode::SERVER_UNAVAILABLE);
        }
        // Replays the CONNECT: it claims again, or parks again if still busy.
        self.on_connect_until(now, id, connect, deadline, ticket);
    }

    /// Answers CONNACK with a refusal and closes ([MQTT-3.2.2-5]); a 3.x client gets
    /// the nearest 3.1.1 return code.
    pub(crate) fn refuse(&mut self, id: ConnId, code: ReasonCode) {
        tracing::debug!(?id, %code, "connection refused");
        // [MQTT-3.2.2-4]: Session Present 0 on refusal.
        self.write_packet(id, &Packet::ConnAck(ConnAck::new(false, code)));
        if let Some(conn) = self.conn_mut(id) {
            conn.will = None;
        }
        self.drop_conn(id);
    }

    /// Closes the connection attached to the session of `client_id` here, if any,
    /// publishing its will (it ends without DISCONNECT). A clean session goes with it;
    /// the registry entry stays, since a new connection has claimed the id.
    pub(super) fn detach_local_session(&mut self, now: Instant, client_id: &Arc<str>) {
        let Some(&key) = self.by_client.get(client_id) else {
            return;
        };
        if let Some(old) = self.sessions.get(key).and_then(|s| s.conn) {
            tracing::debug!(?old, %client_id, "session taken over");
            self.send_disconnect(old, ReasonCode::SESSION_TAKEN_OVER); // [MQTT-3.1.4-3]
            self.end_conn_inner(now, old, false);
        }
    }

    /// Writes DISCONNECT with `code` to an accepted MQTT 5 connection (3.x has no
    /// server DISCONNECT; those connections are just closed).
    pub(crate) fn send_disconnect(&mut self, id: ConnId, code: ReasonCode) {
        let v5_active = self
            .conn(id)
            .is_some_and(|c| c.version.is_v5() && matches!(c.phase, Phase::Active { .. }));
        if v5_active {
            self.write_packet(id, &Packet::Disconnect(Disconnect::new(code)));
        }
    }

    /// Removes a session that ends (expired, or replaced by a clean start): a will
    /// still waiting out its delay is published now (3.1.2.5).
    pub(crate) fn discard_session(&mut self, now: Instant, key: usize) -> Option<Session> {
        let will = self
            .sessions
            .get_mut(key)
            .and_then(|s| s.v5.as_mut())
            .and_then(|v| v.pending_will.take());
        let s = self.remove_session(key);
        if let Some((_, w)) = will {
            self.publish_will(now, w);
        }
        s
    }

    /// Routes a will as an application message with its properties.
    pub(crate) fn publish_will(&mut self, now: Instant, w: Will) {
        let msg = Message::new(w.topic, w.payload, w.qos, w.retain);
        let props = (*w.props).clone();
        self.route(now, msg.with_props(now, props), None);
    }

    /// Fires offline sessions' deadlines: delayed wills, then expiry.
    pub(crate) fn session_timers_due(&mut self, now: Instant) {
        while let Some(&Reverse((at, key))) = self.session_timers.peek() {
            if at > now {
                break;
            }
            self.session_timers.pop();
            let Some(s) = self.sessions.get_mut(key) else {
                continue;
            };
            if s.conn.is_some() {
                continue;
            }
            let Some(v5) = s.v5.as_mut() else { continue };
            if v5.pending_will.as_ref().is_some_and(|(due, _)| *due <= now) {
                if let Some((_, w)) = v5.pending_will.take() {
                    self.publish_will(now, w);
                }
            }
            let Some(v5) = self.sessions.get(key).and_then(|s| s.v5.as_ref()) else {
                continue;
            };
            if v5.expires_at.is_some_and(|t| t <= now) {
                self.stats.sessions_expired += 1;
                if let Some(s) = self.discard_session(now, key) {
                    tracing::debug!(client_id = %s.client_id, "session expired");
                    self.registry.release(&s.client_id, self.id);
                }
            }
        }
    }

    /// Removes a session from this worker entirely: its subscriptions leave the index.
    pub(crate) fn remove_session(&mut self, key: usize) -> Option<Session> {
        let session = self.sessions.try_remove(key)?;
        self.by_client.remove(&session.client_id);
        if self.deferred.contains_key(&session.client_id) {
            // Takeovers waited for this session to settle; it is gone instead.
            self.deferred_ready.push(session.client_id.clone());
        }
        for (filter, _) in &session.subscriptions {
            match filter.shared() {
                Some(Ok((group, inner))) => {
                    self.shared_unsubscribe(key, group, &inner);
                }
                Some(Err(())) => {}
                None => {
                    self.index_remove(filter, key);
                }
            }
        }
        Some(session)
    }

    /// Installs a moved session (its subscriptions join the index, then every worker
    /// is asked to confirm it routes here: see `moved.rs`) and returns its key.
    pub(super) fn install_session(&mut self, mut session: Session) -> usize {
        session.conn = None;
        let moved = session.moved_in.as_ref().map(|m| (m.from, m.move_id));
        self.drop_stub_for(&session.client_id);
        let client_id = session.client_id.clone();
        let subs = session.subscriptions.clone();
        let key = self.sessions.insert(session);
        self.by_client.insert(client_id.clone(), key);
        for (filter, grant) in &subs {
            match filter.shared() {
                Some(Ok((group, inner))) => {
                    self.shared_subscribe(key, group, &inner, *grant);
                }
                Some(Err(())) => {}
                None => {
                    self.index_insert(filter, key, *grant);
                }
            }
        }
        self.arm_session_timers(key);
        // The pings go in the same call as the interest updates, with nothing routed
        // in between: this is the new home's cut (see `settle.rs`).
        if let Some((stub_at, move_id)) = moved {
            self.ping_for(&client_id, stub_at, move_id);
        }
        key
    }

    /// CONNACK and attach: `existing` is a session key already on this worker.
    pub(super) fn activate(
        &mut self,
        now: Instant,
        id: ConnId,
        client_id: Arc<str>,
        clean: bool,
        existing: Option<usize>,
    ) {
        // MQTT 5 separates Clean Start (`clean`: discard what exists) from the
        // Session Expiry Interval (0: the session ends with the connection); 3.1.1's
        // clean session flag is both.
        let expiry = match self.conn(id).and_then(|c| c.v5.as_ref()) {
            Some(v5) => v5.session_expiry,
            None if clean => 0,
            None => u32::MAX,
        };
        let key = match existing {
            Some(key) if !clean => key,
            Some(key) => {
                self.discard_session(now, key);
                self.sessions
                    .insert(Session::new(client_id.clone(), expiry == 0))
            }
            None => self
                .sessions
                .insert(Session::new(client_id.clone(), expiry == 0)),
        };
        if let Some(s) = self.sessions.get_mut(key) {
            s.clean = expiry == 0;
            // A new connection to the session: a delayed will is not sent
            // ([MQTT-3.1.3-9]) and the session no longer expires while it is online.
            if let Some(v5) = &mut s.v5 {
                v5.pending_will = None;
                v5.expires_at = None;
            }
        }
        self.by_client.insert(client_id, key);
        let session_present = existing.is_some() && !clean; // [MQTT-3.2.2-1..3]
        self.attach(now, id, key, session_present);
    }

    /// Arms the timers of an offline session (will delay, expiry) if it has any.
    pub(crate) fn arm_session_timers(&mut self, key: usize) {
        let Some(v5) = self.sessions.get(key).and_then(|s| s.v5.as_ref()) else {
            return;
        };
        let will = v5.pending_will.as_ref().map(|(at, _)| *at);
        for at in [will, v5.expires_at].into_iter().flatten() {
            self.session_timers.push(Reverse((at, key)));
        }
    }

    /// The CONNACK properties of an MQTT 5 connection: what the broker supports and
    /// the limits it imposes (3.2.2.3).
    fn connack_props(&self, id: ConnId, client_id: &str) -> crate::protocol::Properties {
        let mut p = crate::protocol::Properties::default();
        let Some(v5) = self.conn(id).and_then(|c| c.v5.as_ref()) else {
            return p;
        };
        if v5.assigned_id {
            p.assigned_client_identifier = Some(client_id.into());
        }
        p.server_keep_alive = v5.server_keep_alive;
        p.receive_maximum = u16::try_from(self.cfg.max_inbound_qos2)
            .ok()
            .filter(|&m| m < u16::MAX);
        p.maximum_packet_size = u32::try_from(self.cfg.max_packet_bytes).ok();
        p.topic_alias_maximum = Some(self.cfg.max_topic_aliases);
        // Retain, wildcard subscriptions, subscription identifiers, shared
        // subscriptions and QoS 2 are all available: their defaults say so.
        p
    }

    fn attach(&mut self, now: Instant, id: ConnId, key: usize, session_present: bool) {
        let persistent_expiry = self.cfg.persistent_session_expiry_secs;
        let Some(conn) = self.conn_mut(id) else {
            // The connection vanished while its session moved here: keep the session
            // if it is persistent, as if the client had disconnected.
            self.session_gone_offline(now, key, true);
            return;
        };
        conn.phase = Phase::Active { session: key };
        let keep_alive = conn.keep_alive_limit;
        let last_rx = conn.last_rx;
        let v5 = conn.v5.as_ref().map(|v| SessionV5 {
            expiry_secs: v.session_expiry,
            receive_max: v.receive_max,
            max_packet: v.max_packet,
            ..SessionV5::default()
        });
        let mut client_id = None;
        if let Some(s) = self.sessions.get_mut(key) {
            s.conn = Some(id);
            client_id = Some(s.client_id.clone());
            match (v5, &mut s.v5) {
                (Some(new), Some(old)) => {
                    old.expiry_secs = new.expiry_secs;
                    old.receive_max = new.receive_max;
                    old.max_packet = new.max_packet;
                }
                (Some(new), slot @ None) => *slot = Some(Box::new(new)),
                (None, slot) => {
                    // A 3.x client: a persistent session expires after
                    // `persistent_session_expiry_secs` offline (0: never). A session an
                    // MQTT 5 client left loses its v5 limits; subscription identifiers
                    // stay with the subscriptions.
                    let expiry = match persistent_expiry {
                        0 => u32::MAX,
                        secs => u32::try_from(secs).unwrap_or(u32::MAX - 1),
                    };
                    if let Some(old) = slot {
                        old.receive_max = 0;
                        old.max_packet = 0;
                        old.expiry_secs = expiry;
                    } else if expiry != u32::MAX {
                        *slot = Some(Box::new(SessionV5 {
                            expiry_secs: expiry,
                            ..SessionV5::default()
                        }));
                    }
                }
            }
        }
        self.stats.clients_connected += 1;
        let mut ack = ConnAck::new(session_present, ReasonCode::SUCCESS);
        if let Some(cid) = client_id {
            ack.props = self.connack_props(id, &cid).into();
        }
        self.write_packet(id, &Packet::ConnAck(ack));
        if let Some(k) = keep_alive {
            self.schedule(id, last_rx + k);
        }
        self.resend_inflight(now, id, key);
        self.pump(now, id, key);
        // Packets the client sent before CONNACK, in order.
        let early = self.conn_mut(id).and_then(|c| c.early.take());
        for p in early.map(|e| *e).unwrap_or_default() {
            if !self.is_open(id) {
                break;
            }
            self.on_active_packet(now, id, key, p);
        }
    }

    /// [MQTT-4.4.0-1]: on a resumed session, unacknowledged PUBLISH (DUP set) and
    /// PUBREL go out again in their original order, but no more than the window
    /// (the client's Receive Maximum on this connection, [MQTT-3.3.4-9]): the rest
    /// are marked `held` and resent by `pump` as acknowledgements free the window.
    fn resend_inflight(&mut self, now: Instant, id: ConnId, key: usize) {
        let max_inflight = self.cfg.max_inflight;
        let Some(session) = self.sessions.get_mut(key) else {
            return;
        };
        if session.inflight.is_empty() {
            return;
        }
        let window = session.window(max_inflight);
        let mut pending = Vec::new();
        for (i, m) in session.inflight.iter_mut().enumerate() {
            m.held = i >= window;
            if !m.held {
                pending.push((m.state, m.qos, m.retain, m.packet_id, m.msg.clone()));
            }
        }
        for (state, qos, retain, pid, msg) in pending {
            self.resend_one(now, id, state, qos, retain, pid, &msg);
        }
        self.mark_dirty(id);
    }

    /// Writes one in-flight message again: the PUBLISH with DUP, or its PUBREL.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn resend_one(
        &mut self,
        now: Instant,
        id: ConnId,
        state: OutState,
        qos: QoS,
        retain: bool,
        pid: crate::protocol::PacketId,
        msg: &Message,
    ) {
        if state == OutState::Published {
            let key = match self.conn(id).map(|c| &c.phase) {
                Some(Phase::Active { session }) => *session,
                _ => return,
            };
            if !self.fits(key, msg, qos) {
                // The new connection's Maximum Packet Size is below it: not sent, and
                // treated as delivered ([MQTT-3.1.2-24]).
                if let Some(s) = self.sessions.get_mut(key) {
                    s.end_published(pid);
                }
                self.stats.dropped_too_large += 1;
                return;
            }
        }
        match state {
            OutState::Published => {
                self.encode_publish_to(now, id, msg, qos, retain, Some(pid), true)
            }
            OutState::Released => self.write_packet(id, &Packet::pubrel(pid)),
        }
    }

    /// DISCONNECT: the will is discarded ([MQTT-3.14.4-3]) unless an MQTT 5 client
    /// asks for it (0x04), the session expiry may be changed, and the connection closes.
    pub(super) fn on_disconnect(&mut self, now: Instant, id: ConnId, key: usize, d: Disconnect) {
        if let Some(expiry) = d.props.session_expiry_interval {
            let was = self
                .conn(id)
                .and_then(|c| c.v5.as_ref())
                .map_or(0, |v| v.session_expiry);
            if was == 0 && expiry != 0 {
                // [MQTT-3.14.2-2]: from 0 to non-zero is a Protocol Error.
                return self.protocol_error(now, id, "DISCONNECT", "session expiry raised from 0");
            }
            if let Some(s) = self.sessions.get_mut(key) {
                s.clean = expiry == 0;
                if let Some(v5) = &mut s.v5 {
                    v5.expiry_secs = expiry;
                }
            }
        }
        if d.reason != ReasonCode::DISCONNECT_WITH_WILL {
            if let Some(conn) = self.conn_mut(id) {
                conn.will = None;
            }
        }
        self.end_conn(now, id);
    }

    /// The connection broke a rule of the protocol: close it, publish its will.
    pub(crate) fn protocol_error(&mut self, now: Instant, id: ConnId, what: &str, why: &str) {
        tracing::debug!(
            ?id,
            packet = what,
            reason = why,
            "protocol violation, closing"
        );
        self.close_with(now, id, ReasonCode::PROTOCOL_ERROR);
    }

    /// Counts a protocol violation, tells an MQTT 5 client why (DISCONNECT `code`)
    /// and closes, publishing the will.
    pub(crate) fn close_with(&mut self, now: Instant, id: ConnId, code: ReasonCode) {
        self.stats.protocol_errors += 1;
        self.send_disconnect(id, code);
        self.end_conn(now, id);
    }

    /// A malformed packet from the decoder. An unsupported protocol level gets
    /// CONNACK 0x01 first ([MQTT-3.1.2-2]); an MQTT 5 client gets DISCONNECT with
    /// the reason (Malformed Packet, Protocol Error, Packet too large); then it closes.
    pub fn decode_error(&mut self, now: Instant, id: ConnId, err: &crate::protocol::CodecError) {
        let awaiting_connect = matches!(self.conn(id).map(|c| &c.phase), Some(Phase::AwaitConnect));
        if awaiting_connect && err.is_unsupported_protocol_level() {
            self.stats.protocol_errors += 1;
            return self.refuse(id, ReasonCode::UNSUPPORTED_PROTOCOL_VERSION);
        }
        tracing::debug!(?id, error = %err, "malformed packet, closing");
        if err.reason_code() == ReasonCode::PACKET_TOO_LARGE {
            self.stats.limits.packet_too_large += 1;
        }
        self.close_with(now, id, err.reason_code());
    }

    /// The runtime saw the socket close or fail. The will is published unless the
    /// client sent DISCONNECT ([MQTT-3.1.2-8]).
    pub fn closed(&mut self, now: Instant, id: ConnId) {
        if self.conn(id).is_some() {
            tracing::debug!(?id, "connection lost");
            self.end_conn(now, id);
        }
    }

    pub(super) fn on_timeout(&mut self, now: Instant, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        match &conn.phase {
            Phase::AwaitConnect => {
                tracing::debug!(?id, "no CONNECT in time, closing");
                self.stats.limits.connect_timeouts += 1;
                self.end_conn(now, id);
            }
            Phase::AwaitClaim(_) => self.retry_connect(now, id),
            Phase::AwaitHandover(p) => {
                // The owner did not answer in time: go on with a fresh session.
                tracing::warn!(?id, client_id = %p.client_id, "session handover timed out");
                let client_id = p.client_id.clone();
                let inbound = self.inbound.remove(&client_id);
                self.registry.finish(&client_id, self.id);
                let clean = inbound.is_none_or(|i| i.clean);
                self.activate(now, id, client_id, clean, None);
            }
            Phase::Active { .. } => {
                // [MQTT-3.1.2-24]: 1.5 x keep-alive without a packet.
                tracing::debug!(?id, "keep-alive expired, closing");
                self.send_disconnect(id, ReasonCode::KEEP_ALIVE_TIMEOUT);
                self.end_conn(now, id);
            }
        }
    }

    /// Ends a connection: publishes its will (if it still has one), detaches or
    /// discards its session, and asks the runtime to close the socket.
    pub(crate) fn end_conn(&mut self, now: Instant, id: ConnId) {
        self.end_conn_inner(now, id, true);
    }

    /// [`end_conn`](Self::end_conn); `release`: give up the registry entry if the
    /// session ends (false when a new connection has just claimed the id).
    pub(super) fn end_conn_inner(&mut self, now: Instant, id: ConnId, release: bool) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let will = conn.will.take();
        let phase = std::mem::replace(&mut conn.phase, Phase::AwaitConnect);
        // Only an accepted connection (CONNACK sent) has a will to publish.
        let will = will.filter(|_| matches!(phase, Phase::Active { .. }));
        let will = will.filter(|w| self.may_write(id, w.topic.as_str()));
        let mut will = will.map(|w| *w);
        if let Phase::Active { session } = phase {
            self.stats.clients_connected = self.stats.clients_connected.saturating_sub(1);
            if let Some(s) = self.sessions.get_mut(session) {
                s.conn = None;
                // MQTT 5 Will Delay Interval: a session that outlives the connection
                // holds the will until the delay or the session ends (3.1.3.2.2).
                let delay = will
                    .as_ref()
                    .and_then(|w| w.props.will_delay_interval)
                    .unwrap_or(0);
                if let (false, true, Some(v5)) = (s.clean, delay > 0, s.v5.as_mut()) {
                    let due = now + Duration::from_secs(u64::from(delay));
                    v5.pending_will = will.take().map(|w| (due, w));
                }
            }
            self.redistribute_shared(now, session);
            self.session_gone_offline(now, session, release);
        }
        self.drop_conn(id);
        if let Some(w) = will {
            self.publish_will(now, w);
        }
    }

    /// A session lost its connection: a clean one (expiry 0) is discarded
    /// ([MQTT-3.1.2-6]) and its id released; a persistent one stays to collect QoS 1/2
    /// messages until its Session Expiry Interval passes.
    pub(crate) fn session_gone_offline(&mut self, now: Instant, key: usize, release: bool) {
        let clean = self.sessions.get(key).is_none_or(|s| s.clean);
        if clean {
            if let Some(s) = self.discard_session(now, key) {
                if release {
                    self.registry.release(&s.client_id, self.id);
                }
            }
            return;
        }
        if let Some(v5) = self.sessions.get_mut(key).and_then(|s| s.v5.as_mut()) {
            if v5.expiry_secs != u32::MAX {
                v5.expires_at = Some(now + Duration::from_secs(u64::from(v5.expiry_secs)));
            }
        }
        self.arm_session_timers(key);
    }

    /// Forgets the connection and hands its unwritten bytes to the runtime to close.
    pub(crate) fn drop_conn(&mut self, id: ConnId) {
        let Some(slot) = self.conns.get_mut(id.slot as usize) else {
            return;
        };
        let Some(conn) = slot.take_if(|c| c.gen == id.gen) else {
            return;
        };
        let Conn { tx, phase, .. } = conn;
        self.forget_auth(id);
        if let Phase::AwaitHandover(p) = &phase {
            // The session is still expected: it will be kept here offline.
            if let Some(inb) = self.inbound.get_mut(&p.client_id) {
                if inb.conn == Some(id) {
                    inb.conn = None;
                }
            }
        }
        if let Phase::Active { session } = phase {
            if let Some(s) = self.sessions.get_mut(session) {
                s.conn = None;
            }
        }
        self.effects.close.push((id, tx));
    }

    /// Appends a PUBLISH for a delivery to the connection's buffer.
    pub(crate) fn encode_delivery(
        &mut self,
        now: Instant,
        id: ConnId,
        msg: &Message,
        qos: QoS,
        retain: bool,
        packet_id: Option<crate::protocol::PacketId>,
    ) {
        self.encode_publish_to(now, id, msg, qos, retain, packet_id, false);
    }

    /// Appends a PUBLISH in the connection's protocol: the 3.x hot path, or MQTT 5 with
    /// the message's properties, its remaining expiry, the subscription identifiers
    /// of the session's matching subscriptions and a topic alias when the client
    /// allows them.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn encode_publish_to(
        &mut self,
        now: Instant,
        id: ConnId,
        msg: &Message,
        qos: QoS,
        retain: bool,
        packet_id: Option<crate::protocol::PacketId>,
        dup: bool,
    ) {
        let Some(conn) = self.tx_buf(id) else {
            return;
        };
        if conn.v5.is_none() {
            encode_publish(
                &mut conn.tx,
                dup,
                qos,
                retain,
                msg.topic.as_str(),
                packet_id,
                &msg.payload,
            );
        } else {
            let phase_session = match conn.phase {
                Phase::Active { session } => Some(session),
                _ => None,
            };
            let mut sub_ids = std::mem::take(&mut self.sub_ids);
            sub_ids.clear();
            if let Some(session) = phase_session {
                if let Some(s) = self.sessions.get(session) {
                    s.sub_ids_for(&msg.topic, msg.shared.as_ref(), &mut sub_ids);
                }
            }
            let Some(conn) = self.conn_mut(id) else {
                return;
            };
            let Some(v5) = conn.v5.as_mut() else { return };
            let (topic, alias) = match v5.aliases_out.get(&msg.topic) {
                Some(&a) => ("", Some(a)),
                None if (v5.aliases_out.len() as u64) < u64::from(v5.alias_max_out) => {
                    let a = v5.aliases_out.len() as u16 + 1;
                    // Owned copy: a QoS 0 message's topic is a slice of the worker's
                    // read buffer, which the map would otherwise pin for the
                    // connection's life.
                    v5.aliases_out.insert(msg.topic.compacted(), a);
                    (msg.topic.as_str(), Some(a))
                }
                None => (msg.topic.as_str(), None),
            };
            let extras = PublishExtras {
                props: msg
                    .props
                    .as_deref()
                    .unwrap_or(&crate::protocol::NO_PROPERTIES),
                message_expiry: msg.remaining_expiry(now),
                topic_alias: alias,
                subscription_ids: &sub_ids,
            };
            encode_publish_v5(
                &mut conn.tx,
                dup,
                qos,
                retain,
                topic,
                packet_id,
                &extras,
                &msg.payload,
            );
            self.sub_ids = sub_ids;
        }
        self.stats.messages_sent += 1;
        self.stats.publish_sent += 1;
        self.mark_dirty(id);
    }
}
