//! CONNECT (claiming the client id, parking while another takeover of it is in
//! flight, attaching the session, CONNACK), and the end of connections (DISCONNECT,
//! protocol errors, timeouts, socket loss) with their Last Will. Takeovers between
//! workers are in `takeover.rs`.

use super::{AwaitClaim, Conn, Phase, Shard};
use crate::broker::mesh::MeshMsg;
use crate::broker::message::Message;
use crate::broker::registry::Refused;
use crate::broker::session::{OutState, Session};
use crate::broker::ConnId;
use crate::protocol::{
    encode_publish, ConnAck, Connect, ConnectReturnCode, Packet, ProtocolVersion, QoS,
};
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
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        conn.version = c.version;
        conn.keep_alive_limit = (c.keep_alive_secs > 0)
            .then(|| Duration::from_millis(u64::from(c.keep_alive_secs) * 1500)); // [MQTT-3.1.2-24]
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

        let client_id: Arc<str> = if c.client_id.is_empty() {
            if !c.clean_session || c.version == ProtocolVersion::V3_1 {
                // [MQTT-3.1.3-8]: zero-length id with clean session 0 -> 0x02.
                return self.refuse(id, ConnectReturnCode::IdentifierRejected);
            }
            // [MQTT-3.1.3-6]: assign a unique id.
            self.next_auto_id += 1;
            format!("ternmq-auto-{}-{}", self.id, self.next_auto_id).into()
        } else {
            if c.version == ProtocolVersion::V3_1 && c.client_id.len() > V31_CLIENT_ID_LEN_MAX {
                return self.refuse(id, ConnectReturnCode::IdentifierRejected);
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
            return self.refuse(id, ConnectReturnCode::ServerUnavailable);
        }
        // Replays the CONNECT: it claims again, or parks again if still busy.
        self.on_connect_until(now, id, connect, deadline, ticket);
    }

    /// Answers CONNACK with a refusal and closes ([MQTT-3.2.2-5]).
    pub(crate) fn refuse(&mut self, id: ConnId, code: ConnectReturnCode) {
        tracing::debug!(?id, ?code, "connection refused");
        self.write_packet(
            id,
            &Packet::ConnAck(ConnAck {
                session_present: false, // [MQTT-3.2.2-4]
                code,
            }),
        );
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
            self.end_conn_inner(now, old, false);
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
            self.index_remove(filter, key);
        }
        Some(session)
    }

    /// Installs a moved session (its subscriptions join the index, then every worker
    /// is asked to confirm it routes here: see `moved.rs`) and returns its key.
    pub(super) fn install_session(&mut self, mut session: Session) -> usize {
        session.conn = None;
        let watermark = self.watermark();
        let stub_at = session.moved_in.as_mut().map(|m| {
            m.installed = watermark;
            m.from
        });
        self.drop_stub_for(&session.client_id);
        let client_id = session.client_id.clone();
        let subs = session.subscriptions.clone();
        let key = self.sessions.insert(session);
        self.by_client.insert(client_id.clone(), key);
        for (filter, qos) in &subs {
            self.index_insert(filter, key, *qos);
        }
        if let Some(stub_at) = stub_at {
            self.ping_for(&client_id, stub_at);
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
        let key = match existing {
            Some(key) if !clean => {
                if let Some(s) = self.sessions.get_mut(key) {
                    s.clean = false;
                }
                key
            }
            Some(key) => {
                self.remove_session(key);
                self.sessions.insert(Session::new(client_id.clone(), clean))
            }
            None => self.sessions.insert(Session::new(client_id.clone(), clean)),
        };
        self.by_client.insert(client_id, key);
        let session_present = existing.is_some() && !clean; // [MQTT-3.2.2-1..3]
        self.attach(now, id, key, session_present);
    }

    fn attach(&mut self, now: Instant, id: ConnId, key: usize, session_present: bool) {
        let Some(conn) = self.conn_mut(id) else {
            // The connection vanished while its session moved here: keep the session
            // if it is persistent, as if the client had disconnected.
            self.session_gone_offline(key, true);
            return;
        };
        conn.phase = Phase::Active { session: key };
        let keep_alive = conn.keep_alive_limit;
        let last_rx = conn.last_rx;
        if let Some(s) = self.sessions.get_mut(key) {
            s.conn = Some(id);
        }
        self.stats.clients_connected += 1;
        self.write_packet(
            id,
            &Packet::ConnAck(ConnAck {
                session_present,
                code: ConnectReturnCode::Accepted,
            }),
        );
        if let Some(k) = keep_alive {
            self.schedule(id, last_rx + k);
        }
        self.resend_inflight(id, key);
        self.pump(id, key);
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
    /// PUBREL go out again in their original order.
    fn resend_inflight(&mut self, id: ConnId, key: usize) {
        let Some(session) = self.sessions.get(key) else {
            return;
        };
        let Some(Some(conn)) = self.conns.get_mut(id.slot as usize) else {
            return;
        };
        for m in &session.inflight {
            match m.state {
                OutState::Published => encode_publish(
                    &mut conn.tx,
                    true,
                    m.qos,
                    m.retain,
                    m.msg.topic.as_str(),
                    Some(m.packet_id),
                    &m.msg.payload,
                ),
                OutState::Released => {
                    crate::protocol::encode_packet(&Packet::PubRel(m.packet_id), &mut conn.tx)
                }
            }
        }
        if !session.inflight.is_empty() {
            self.mark_dirty(id);
        }
    }

    /// DISCONNECT: the will is discarded ([MQTT-3.14.4-3]) and the connection closed.
    pub(super) fn on_disconnect(&mut self, now: Instant, id: ConnId) {
        if let Some(conn) = self.conn_mut(id) {
            conn.will = None;
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
        self.stats.protocol_errors += 1;
        self.end_conn(now, id);
    }

    /// A malformed packet from the decoder. An unsupported protocol level gets
    /// CONNACK 0x01 first ([MQTT-3.1.2-2]); everything else just closes.
    pub fn decode_error(&mut self, now: Instant, id: ConnId, err: &crate::protocol::CodecError) {
        let awaiting_connect = matches!(self.conn(id).map(|c| &c.phase), Some(Phase::AwaitConnect));
        if awaiting_connect && err.is_unsupported_protocol_level() {
            self.stats.protocol_errors += 1;
            return self.refuse(id, ConnectReturnCode::UnacceptableProtocolVersion);
        }
        tracing::debug!(?id, error = %err, "malformed packet, closing");
        self.stats.protocol_errors += 1;
        self.end_conn(now, id);
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
        if let Phase::Active { session } = phase {
            self.stats.clients_connected = self.stats.clients_connected.saturating_sub(1);
            if let Some(s) = self.sessions.get_mut(session) {
                s.conn = None;
            }
            self.session_gone_offline(session, release);
        }
        self.drop_conn(id);
        if let Some(w) = will {
            let msg = Message {
                topic: w.topic,
                payload: w.payload,
                qos: w.qos,
                retain: w.retain,
            };
            self.route(now, msg, None);
        }
    }

    /// A session lost its connection: a clean one is discarded ([MQTT-3.1.2-6]) and its
    /// id released; a persistent one stays to collect QoS 1/2 messages.
    fn session_gone_offline(&mut self, key: usize, release: bool) {
        let clean = self.sessions.get(key).is_none_or(|s| s.clean);
        if clean {
            if let Some(s) = self.remove_session(key) {
                if release {
                    self.registry.release(&s.client_id, self.id);
                }
            }
        }
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
        id: ConnId,
        msg: &Message,
        qos: QoS,
        retain: bool,
        packet_id: Option<crate::protocol::PacketId>,
    ) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        encode_publish(
            &mut conn.tx,
            false,
            qos,
            retain,
            msg.topic.as_str(),
            packet_id,
            &msg.payload,
        );
        self.stats.messages_sent += 1;
        self.stats.publish_sent += 1;
        self.mark_dirty(id);
    }
}
