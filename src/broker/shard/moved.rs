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
//! On B the session is *settling* ([`MovedIn`]) until that message:
//! - a direct copy of a message that an earlier home received before the session left
//!   it (its routing watermark at departure travels with the session) was delivered
//!   there: dropped;
//! - any other direct copy is held;
//! - a forward is delivered at once (once per [`Stamp`], whichever path brings it
//!   first) and drops its held twin;
//! - when the stub is gone, what is still held is delivered, in arrival order.
//!
//! Per publisher this yields the forwarded prefix, then the rest: no loss, no
//! duplicate, no reordering. If the session moves on (B -> C) while still settling,
//! the settling state stays with B's stub, which applies the same rules with
//! "forward to C" in place of "deliver", and lives until A's stub is gone; C settles
//! against B. The one timing assumption: B's interest reaches every worker within
//! the grace period (seconds, against microseconds of mesh latency).

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
    /// The session was still settling when it left: the stub settles in its place.
    pub settle: Option<Box<MovedIn>>,
    /// The grace period is over; the stub waits only for `settle` to end.
    pub expired: bool,
}

/// What a settling session or stub does with a direct copy.
fn settle_direct(
    m: &mut MovedIn,
    stamp: Stamp,
    msg: &Message,
    granted: QoS,
    origin: Option<Origin>,
) {
    let had_it = m.departed.iter().any(|(home, d)| {
        stamp.targets & (1u64 << home) != 0 && d.get(stamp.worker).is_some_and(|&d| stamp.seq <= d)
    });
    let here =
        m.delivered.contains(&(stamp.worker, stamp.seq)) || m.held.iter().any(|h| h.stamp == stamp);
    if !had_it && !here {
        m.held.push_back(Held {
            stamp,
            msg: msg.clone(),
            granted,
            origin,
        });
    }
}

/// What a settling session or stub does with a forward: true to take it.
fn settle_forward(m: &mut MovedIn, stamp: Stamp) -> bool {
    if !m.delivered.insert((stamp.worker, stamp.seq)) {
        return false; // came on another path already
    }
    if let Some(i) = m.held.iter().position(|h| h.stamp == stamp) {
        m.held.remove(i);
    }
    true
}

impl Shard {
    /// The last routing stamp this worker has received from each worker, itself
    /// included.
    pub(crate) fn watermark(&self) -> Box<[u64]> {
        let mut w = self.last_seen.clone();
        w[self.id] = self.seq;
        w.into_boxed_slice()
    }

    /// Holds (or drops) a direct copy for a settling session; false if the session
    /// takes deliveries normally.
    pub(crate) fn hold_if_moving(
        &mut self,
        key: usize,
        msg: &Message,
        granted: QoS,
        origin: Option<Origin>,
        stamp: Stamp,
    ) -> bool {
        match self.sessions.get_mut(key).and_then(|s| s.moved_in.as_mut()) {
            Some(m) => {
                settle_direct(m, stamp, msg, granted, origin);
                true
            }
            None => false,
        }
    }

    /// Takes a persistent session off this worker for `to`, leaving a stub behind.
    pub(crate) fn move_out(&mut self, now: Instant, key: usize, to: WorkerId) -> Option<Session> {
        let departed = self.watermark();
        let mut session = self.sessions.try_remove(key)?;
        let settle = session.moved_in.take();
        let mut homes = vec![(self.id, departed)];
        if let Some(s) = &settle {
            homes.extend(s.departed.iter().cloned());
        }
        session.moved_in = Some(Box::new(MovedIn {
            from: self.id,
            departed: homes,
            ..MovedIn::default()
        }));
        self.by_client.remove(&session.client_id);
        self.drop_stub_for(&session.client_id);
        let expires_at = now + self.cfg.handover_timeout() * 2;
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
        if let Some(settle) = stub.settle {
            for h in settle.held {
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
            if stub.settle.is_some() {
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

    /// A local match hit a stub: send the message after the session (or hold it while
    /// the stub settles).
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
        if let Some(m) = stub.settle.as_mut() {
            settle_direct(m, stamp, msg, granted, origin);
            return;
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
            // Only a settling session is owed forwards; a fresh one (clean takeover)
            // does not inherit the old one's messages.
            let Some(m) = session.moved_in.as_mut() else {
                return;
            };
            if !settle_forward(m, stamp) {
                return;
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
        let Some(stub) = self.stubs.get_mut(stub_key) else {
            return;
        };
        if let Some(m) = stub.settle.as_mut() {
            if !settle_forward(m, stamp) {
                return;
            }
        }
        let to = stub.to;
        self.send_forward(to, client_id, msg, origin, stamp);
    }

    /// The stub on worker `from` is gone: nothing more comes that way, so what is
    /// held here is delivered (by a session) or passed on (by a stub).
    pub(crate) fn on_stub_gone(&mut self, now: Instant, from: WorkerId, client_id: &str) {
        if let Some(&key) = self.by_client.get(client_id) {
            let settling = self.sessions.get(key).and_then(|s| s.moved_in.as_ref());
            if settling.is_some_and(|m| m.from == from) {
                if let Some(m) = self.sessions.get_mut(key).and_then(|s| s.moved_in.take()) {
                    for h in m.held {
                        self.deliver(now, key, &h.msg, h.granted, false, h.origin);
                    }
                }
            }
            return;
        }
        let Some(&stub_key) = self.stub_by_client.get(client_id) else {
            return;
        };
        let Some(stub) = self.stubs.get_mut(stub_key) else {
            return;
        };
        if !stub.settle.as_ref().is_some_and(|m| m.from == from) {
            return;
        }
        let held = stub.settle.take().map(|m| m.held).unwrap_or_default();
        let (to, client, expired) = (stub.to, stub.client_id.clone(), stub.expired);
        for h in held {
            self.send_forward(to, client.clone(), h.msg, h.origin, h.stamp);
        }
        if expired {
            self.drop_stub(stub_key);
        }
    }
}
