//! Sessions in motion: forwarding stubs that keep a moving session's messages from
//! falling between workers, without duplicates and in publish order.
//!
//! When a persistent session leaves worker A for worker B (takeover), A keeps the
//! session's filters in its index for a grace period (twice the handover timeout),
//! pointing at a *stub*: workers that have not yet learned of B keep routing to A,
//! and A forwards each match to B ([`MeshMsg::Forward`]) in the order it received
//! them. When the stub expires, A says so ([`MeshMsg::StubGone`]) after its last
//! forward.
//!
//! On B the session *settles* ([`Settle`]): direct copies wait while forwards are
//! delivered, each message once whichever path brings it first; when A's stub is gone
//! the held copies follow. Per publisher this yields the forwarded prefix, then the
//! rest: no loss, no duplicate, no reordering. If the session moves on (B -> C) while
//! settling, the settling state stays with B's stub, which applies the same rules
//! with "forward to C" in place of "deliver" and lives until A's stub is gone; C
//! settles against B, carrying the history of what was taken. The one timing
//! assumption: a message is not delayed in the mesh by more than the grace period
//! (seconds, against microseconds of mesh latency).

use super::Shard;
use crate::broker::mesh::{MeshMsg, Origin, Stamp};
use crate::broker::message::Message;
use crate::broker::session::Session;
use crate::broker::settle::{Settle, Take};
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
    /// The session was still settling (or draining) when it left: the stub goes on
    /// in its place.
    pub settle: Option<Box<Settle>>,
    /// The grace period is over; the stub waits only for its upstream to settle.
    pub expired: bool,
}

impl Stub {
    fn settling(&self) -> bool {
        self.settle
            .as_ref()
            .is_some_and(|s| s.draining_until.is_none())
    }
}

impl Shard {
    fn grace(&self) -> std::time::Duration {
        self.cfg.handover_timeout() * 2
    }

    /// The last routing stamp this worker has received from each worker, itself
    /// included.
    pub(crate) fn watermark(&self) -> Box<[u64]> {
        let mut w = self.last_seen.clone();
        w[self.id] = self.seq;
        w.into_boxed_slice()
    }

    /// Settles a direct copy for a session that moved here recently; false if the
    /// session takes deliveries normally.
    pub(crate) fn hold_if_moving(
        &mut self,
        now: Instant,
        key: usize,
        msg: &Message,
        granted: QoS,
        origin: Option<Origin>,
        stamp: Stamp,
    ) -> bool {
        let Some(session) = self.sessions.get_mut(key) else {
            return false;
        };
        let Some(settle) = session.moved_in.as_mut() else {
            return false;
        };
        if settle.finished(now) {
            session.moved_in = None;
            return false;
        }
        if settle.direct(stamp, msg, granted, origin) == Take::Now {
            self.deliver(now, key, msg, granted, false, origin);
        }
        true
    }

    /// Takes a persistent session off this worker for `to`, leaving a stub behind.
    pub(crate) fn move_out(&mut self, now: Instant, key: usize, to: WorkerId) -> Option<Session> {
        let watermark = self.watermark();
        let mut session = self.sessions.try_remove(key)?;
        let settle = session.moved_in.take().filter(|s| !s.finished(now));
        let onward = match &settle {
            Some(s) => s.onward(self.id, watermark),
            None => Settle {
                from: self.id,
                departed: vec![(self.id, watermark)],
                ..Settle::default()
            },
        };
        session.moved_in = Some(Box::new(onward));
        self.by_client.remove(&session.client_id);
        self.drop_stub_for(&session.client_id);
        let expires_at = now + self.grace();
        let stub_key = self.stubs.insert(Stub {
            client_id: session.client_id.clone(),
            to,
            filters: session.subscriptions.clone(),
            expires_at,
            settle,
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
        // Whatever it still held reached us directly and nowhere upstream.
        if let Some(mut settle) = stub.settle {
            for h in settle.held.drain(..) {
                self.send_forward(stub.to, stub.client_id.clone(), h.msg, h.origin, h.stamp);
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
    /// where the session went. A stub still settling waits for its upstream.
    pub(crate) fn expire_stubs(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.stub_expiry.front() {
            if at > now {
                break;
            }
            self.stub_expiry.pop_front();
            let Some(stub) = self.stubs.get_mut(key).filter(|s| s.expires_at == at) else {
                continue;
            };
            if stub.settling() {
                stub.expired = true;
            } else {
                self.drop_stub(key);
            }
        }
    }

    fn send_forward(
        &mut self,
        to: WorkerId,
        client_id: Arc<str>,
        msg: Message,
        origin: Option<Origin>,
        stamp: Stamp,
    ) {
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

    /// A local match hit a stub: send the message after the session (settling
    /// first if the stub is).
    pub(crate) fn forward_via_stub(
        &mut self,
        sid: u32,
        msg: &Message,
        granted: QoS,
        origin: Option<Origin>,
        stamp: Stamp,
    ) {
        let Some(stub) = self.stubs.get_mut((sid & !STUB_BIT) as usize) else {
            return;
        };
        if let Some(settle) = stub.settle.as_mut() {
            if settle.direct(stamp, msg, granted, origin) != Take::Now {
                return;
            }
        }
        let (to, client_id) = (stub.to, stub.client_id.clone());
        self.send_forward(to, client_id, msg.clone(), origin, stamp);
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
            // Only a session that moved here is owed forwards; a fresh one (clean
            // takeover) does not inherit the old one's messages.
            let Some(settle) = session.moved_in.as_mut() else {
                return;
            };
            let Some(before) = settle.forward(stamp) else {
                return;
            };
            for h in before {
                self.deliver(now, key, &h.msg, h.granted, false, h.origin);
            }
            let Some(session) = self.sessions.get(key) else {
                return;
            };
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
        let Some(stub) = self.stubs.get_mut(stub_key) else {
            return;
        };
        let to = stub.to;
        if let Some(settle) = stub.settle.as_mut() {
            let Some(before) = settle.forward(stamp) else {
                return;
            };
            for h in before {
                self.send_forward(to, client_id.clone(), h.msg, h.origin, h.stamp);
            }
        }
        self.send_forward(to, client_id, msg, origin, stamp);
    }

    /// The stub on worker `from` is gone: nothing more comes that way, so what is
    /// held here is delivered (by a session) or passed on (by a stub).
    pub(crate) fn on_stub_gone(&mut self, now: Instant, from: WorkerId, client_id: &str) {
        // Both a session and a stub of the same client may be settling here (the
        // session left and a new one arrived): each settles against its own upstream.
        let until = now + self.grace();
        if let Some(&key) = self.by_client.get(client_id) {
            let settle = self.sessions.get_mut(key).and_then(|s| s.moved_in.as_mut());
            if let Some(settle) = settle.filter(|m| m.from == from && m.draining_until.is_none()) {
                for h in settle.settled(until) {
                    self.deliver(now, key, &h.msg, h.granted, false, h.origin);
                }
            }
        }
        let Some(&stub_key) = self.stub_by_client.get(client_id) else {
            return;
        };
        let Some(stub) = self.stubs.get_mut(stub_key) else {
            return;
        };
        let Some(settle) = stub.settle.as_mut() else {
            return;
        };
        if settle.from != from || settle.draining_until.is_some() {
            return;
        }
        let held = settle.settled(until);
        let (to, client, expired) = (stub.to, stub.client_id.clone(), stub.expired);
        for h in held {
            self.send_forward(to, client.clone(), h.msg, h.origin, h.stamp);
        }
        if expired {
            self.drop_stub(stub_key);
        }
    }
}
