//! Sessions in motion: forwarding stubs that keep a moving session's messages from
//! falling between two workers, without duplicates and in order.
//!
//! When a persistent session leaves worker A for worker B (takeover), A keeps its
//! filters in the local index for a grace period (twice the handover timeout),
//! pointing at a *stub*: other workers keep routing to A until they learn of B, and A
//! forwards every match to B ([`MeshMsg::Forward`]) in the order it received them.
//! When the stub expires, A tells B ([`MeshMsg::StubGone`]) after its last forward.
//!
//! On B the session is marked [`MovedIn`] until that message. Meanwhile a *direct*
//! copy of a message that A also received is dropped if A had it before the session
//! left (A's routing watermark at departure travels with the session: per-channel
//! FIFO makes "had it" exact), and otherwise held; a forward is delivered at once and
//! drops its held twin (same [`Stamp`]). What is still held when the stub goes
//! reached B directly but not A's stub, and is delivered then. So each message
//! arrives once, and per publisher in order: first the forwarded prefix, then the
//! rest. The one timing assumption is that B's interest reaches every worker within
//! the grace period (seconds, against microseconds of mesh latency).
//!
//! A session that moves again while still settling (A -> B -> C within the grace
//! period) takes its held copies along; B's stub relays A's forwards and A's
//! stub-gone message to C and lives until it has done so, so C settles only when
//! everything upstream has arrived.

use super::Shard;
use crate::broker::mesh::{MeshMsg, Origin, Stamp};
use crate::broker::message::Message;
use crate::broker::session::{Held, MovedIn, Session};
use crate::broker::WorkerId;
use crate::protocol::{topic::filter_matches, QoS, TopicFilter};
use std::sync::Arc;
use std::time::Instant;

/// Index subscriber ids with this bit set name a stub, not a session.
pub(crate) const STUB_BIT: u32 = 1 << 31;

/// What is left of a session that moved to another worker.
#[derive(Debug)]
pub(crate) struct Stub {
    pub client_id: Arc<str>,
    pub to: WorkerId,
    pub filters: Vec<(TopicFilter, QoS)>,
    pub expires_at: Instant,
    /// The session was still settling from this worker when it left: forwards and
    /// the stub-gone message from there pass through this stub, so it lives at least
    /// until that message arrives.
    pub upstream: Option<WorkerId>,
    /// The grace period is over; the stub waits only for `upstream`.
    pub expired: bool,
}

impl Shard {
    /// Holds a direct copy for a session that is still settling after a move; false
    /// if the session takes deliveries normally.
    pub(crate) fn hold_if_moving(
        &mut self,
        key: usize,
        msg: &Message,
        granted: QoS,
        origin: Option<Origin>,
        stamp: Stamp,
    ) -> bool {
        let Some(m) = self.sessions.get_mut(key).and_then(|s| s.moved_in.as_mut()) else {
            return false;
        };
        let key_of = (stamp.worker, stamp.seq);
        let had_it = m.departed.iter().any(|(home, d)| {
            stamp.targets & (1u64 << home) != 0
                && d.get(stamp.worker).is_some_and(|&d| stamp.seq <= d)
        });
        if had_it || m.delivered.contains(&key_of) || m.held.iter().any(|h| h.stamp == stamp) {
            // An earlier home had it before the session left, or it is already here.
            return true;
        }
        m.held.push_back(Held {
            stamp,
            msg: msg.clone(),
            granted,
            origin,
        });
        true
    }

    /// The last routing stamp this worker has received from each worker, itself
    /// included.
    pub(crate) fn watermark(&self) -> Box<[u64]> {
        let mut w = self.last_seen.clone();
        w[self.id] = self.seq;
        w.into_boxed_slice()
    }

    /// Delivers everything a session holds and ends its settling state.
    fn release_held(&mut self, now: Instant, key: usize) {
        let Some(m) = self.sessions.get_mut(key).and_then(|s| s.moved_in.take()) else {
            return;
        };
        for h in m.held {
            if !m.delivered.contains(&(h.stamp.worker, h.stamp.seq)) {
                self.deliver(now, key, &h.msg, h.granted, false, h.origin);
            }
        }
    }

    /// Takes a persistent session off this worker for `to`, leaving a stub behind.
    pub(crate) fn move_out(&mut self, now: Instant, key: usize, to: WorkerId) -> Option<Session> {
        let departed = self.watermark();
        let mut session = self.sessions.try_remove(key)?;
        // Copies held here travel on: their forwarded twins will pass through the
        // stub left here.
        let settling = session.moved_in.take();
        let upstream = settling.as_ref().map(|m| m.from);
        let settling = settling.map(|m| *m).unwrap_or_default();
        let mut homes = vec![(self.id, departed)];
        homes.extend(settling.departed);
        session.moved_in = Some(Box::new(MovedIn {
            from: self.id,
            departed: homes,
            held: settling.held,
            delivered: settling.delivered,
        }));
        self.by_client.remove(&session.client_id);
        self.drop_stub_for(&session.client_id);
        let expires_at = now + self.cfg.handover_timeout() * 2;
        let stub_key = self.stubs.insert(Stub {
            client_id: session.client_id.clone(),
            to,
            filters: session.subscriptions.clone(),
            expires_at,
            upstream,
            expired: false,
        });
        debug_assert!((stub_key as u32) < STUB_BIT && (key as u32) < STUB_BIT);
        let sid = stub_key as u32 | STUB_BIT;
        for (filter, qos) in &session.subscriptions {
            // Insert first so the filter never looks empty: no interest churn.
            self.index.insert(filter, sid, *qos);
            self.index.remove(filter, key as u32);
        }
        self.stub_by_client
            .insert(session.client_id.clone(), stub_key);
        self.stub_expiry.push_back((expires_at, stub_key));
        session.conn = None;
        Some(session)
    }

    /// Removes this worker's stub for `client_id`, if any.
    pub(crate) fn drop_stub_for(&mut self, client_id: &str) {
        if let Some(stub_key) = self.stub_by_client.remove(client_id) {
            self.drop_stub(stub_key);
        }
    }

    fn drop_stub(&mut self, stub_key: usize) {
        let Some(stub) = self.stubs.try_remove(stub_key) else {
            return;
        };
        if self.stub_by_client.get(&stub.client_id) == Some(&stub_key) {
            self.stub_by_client.remove(&stub.client_id);
        }
        let sid = stub_key as u32 | STUB_BIT;
        for (filter, _) in &stub.filters {
            let r = self.index.remove(filter, sid);
            if r.previous.is_some() && r.filter_now_empty {
                self.broadcast_interest(filter, false);
            }
        }
        self.send_mesh(
            stub.to,
            MeshMsg::StubGone {
                client_id: stub.client_id,
            },
        );
    }

    /// Drops stubs whose grace period is over: by then every worker has long learned
    /// where the session went.
    pub(crate) fn expire_stubs(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.stub_expiry.front() {
            if at > now {
                break;
            }
            self.stub_expiry.pop_front();
            let Some(stub) = self.stubs.get_mut(key).filter(|s| s.expires_at == at) else {
                continue;
            };
            if stub.upstream.is_some() {
                stub.expired = true;
            } else {
                self.drop_stub(key);
            }
        }
    }

    /// A local match hit a stub: send the message after the session.
    pub(crate) fn forward_via_stub(
        &mut self,
        sid: u32,
        msg: &Message,
        origin: Option<Origin>,
        stamp: Stamp,
    ) {
        let Some(stub) = self.stubs.get((sid & !STUB_BIT) as usize) else {
            return;
        };
        let (to, client_id) = (stub.to, stub.client_id.clone());
        self.send_mesh(
            to,
            MeshMsg::Forward {
                client_id,
                msg: msg.clone(),
                origin,
                stamp,
            },
        );
    }

    /// A forwarded message for a session that moved here (or through here).
    pub(crate) fn on_forward(
        &mut self,
        now: Instant,
        client_id: Arc<str>,
        msg: Message,
        origin: Option<Origin>,
        stamp: Stamp,
    ) {
        if let Some(&key) = self.by_client.get(&client_id) {
            let Some(session) = self.sessions.get_mut(key) else {
                return;
            };
            // Only a settling session is owed forwards; a fresh one (clean takeover)
            // does not inherit the old one's messages.
            let Some(m) = session.moved_in.as_mut() else {
                return;
            };
            if !m.delivered.insert((stamp.worker, stamp.seq)) {
                return; // came on another path already
            }
            if let Some(i) = m.held.iter().position(|h| h.stamp == stamp) {
                m.held.remove(i);
            }
            let granted = session
                .subscriptions
                .iter()
                .filter(|(f, _)| filter_matches(f.as_str(), msg.topic.as_str()))
                .map(|(_, q)| *q)
                .max();
            if let Some(granted) = granted {
                self.deliver(now, key, &msg, granted, false, origin);
            }
            return;
        }
        let Some(&stub_key) = self.stub_by_client.get(&client_id) else {
            return;
        };
        let Some(stub) = self.stubs.get(stub_key) else {
            return;
        };
        let to = stub.to;
        self.send_mesh(
            to,
            MeshMsg::Forward {
                client_id,
                msg,
                origin,
                stamp,
            },
        );
    }

    /// The stub on worker `from` is gone: the session here has all its forwards, or
    /// our own stub has passed on all of them.
    pub(crate) fn on_stub_gone(&mut self, now: Instant, from: WorkerId, client_id: &str) {
        let Some(&key) = self.by_client.get(client_id) else {
            let Some(&stub_key) = self.stub_by_client.get(client_id) else {
                return;
            };
            let Some(stub) = self.stubs.get_mut(stub_key) else {
                return;
            };
            if stub.upstream == Some(from) {
                stub.upstream = None;
                if stub.expired {
                    self.drop_stub(stub_key);
                }
            }
            return;
        };
        let settling_from = self
            .sessions
            .get(key)
            .and_then(|s| s.moved_in.as_ref())
            .map(|m| m.from);
        if settling_from == Some(from) {
            self.release_held(now, key);
        }
    }
}
