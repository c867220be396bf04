//! Sessions in motion: how a persistent session moves from worker A to worker B on
//! takeover without losing, duplicating or reordering the messages in flight.
//!
//! 1. A hands the session over (`Handover`, carrying A's routing watermark) and keeps
//!    its filters in the local index pointing at a *stub*: workers that have not yet
//!    learned of B keep routing to A, and A forwards every match to B
//!    ([`MeshMsg::Forward`]) in the order received.
//! 2. B installs the session, noting its own watermark; its interest updates go out
//!    first, then a `Ping` to every other worker, who answers `Pong` to A: everything
//!    it routed before knowing B is ahead of that, and it routes to B from then on.
//! 3. A tells B `Done` for each origin worker as its pong arrives (for A and B
//!    themselves when B's ping arrives), after that origin's last forward, and drops
//!    the stub when all are in.
//! 4. B settles the session meanwhile ([`Settle`]): each message is taken from
//!    exactly one path, and direct copies wait for their origin's `Done`.
//!
//! Settling takes a few mesh hops. A takeover that would move a settling session
//! again waits until it has settled, so moves never overlap.

use super::Shard;
use crate::broker::mesh::{MeshMsg, Origin, Stamp};
use crate::broker::message::Message;
use crate::broker::session::Session;
use crate::broker::settle::Settle;
use crate::broker::WorkerId;
use crate::protocol::{topic::filter_matches, QoS, TopicFilter};
use std::sync::Arc;
use std::time::Instant;

/// Index subscriber ids with this bit set name a stub, not a session.
pub(crate) const STUB_BIT: u32 = 1 << 31;

/// What is left of a session that moved to another worker, until every worker
/// routes to its new home.
#[derive(Debug)]
pub(crate) struct Stub {
    pub client_id: Arc<str>,
    pub to: WorkerId,
    pub filters: Vec<(TopicFilter, crate::broker::session::Grant)>,
    /// Workers whose `Pong` (or, for this worker, the new home's `Ping`) is due.
    pub waiting: u64,
}

impl Shard {
    pub(crate) fn all_workers(&self) -> u64 {
        if self.workers >= 64 {
            u64::MAX
        } else {
            (1u64 << self.workers) - 1
        }
    }

    /// The last routing stamp this worker has received from each worker, itself
    /// included.
    pub(crate) fn watermark(&self) -> Box<[u64]> {
        let mut w = self.last_seen.clone();
        w[self.id] = self.seq;
        w.into_boxed_slice()
    }

    /// Settles a direct copy for a session that moved here and is still settling;
    /// false if it is to be delivered now.
    pub(crate) fn hold_if_moving(
        &mut self,
        key: usize,
        msg: &Message,
        granted: QoS,
        origin: Option<Origin>,
        stamp: Stamp,
    ) -> bool {
        match self.sessions.get_mut(key).and_then(|s| s.moved_in.as_mut()) {
            Some(settle) => !settle.direct(stamp, msg, granted, origin),
            None => false,
        }
    }

    /// True while the session of `client_id` here is settling after a move.
    pub(crate) fn settling(&self, client_id: &str) -> bool {
        self.by_client
            .get(client_id)
            .and_then(|&k| self.sessions.get(k))
            .is_some_and(|s| s.moved_in.is_some())
    }

    /// Takes a persistent session off this worker for `to`, leaving a stub behind.
    /// The session must not be settling (moves do not overlap).
    pub(crate) fn move_out(&mut self, key: usize, to: WorkerId) -> Option<Session> {
        let watermark = self.watermark();
        let mut session = self.sessions.try_remove(key)?;
        debug_assert!(session.moved_in.is_none(), "moves must not overlap");
        let others = self.all_workers() & !(1u64 << to);
        session.moved_in = Some(Box::new(Settle {
            from: self.id,
            departed: watermark,
            waiting: self.all_workers(),
            // The old home's `Done` follows its direct copies on the same channel,
            // and the new home routes to itself: neither sends `Flushed`.
            unflushed: others & !(1u64 << self.id),
            ..Settle::default()
        }));
        self.by_client.remove(&session.client_id);
        self.drop_stub_for(&session.client_id);
        let stub_key = self.stubs.insert(Stub {
            client_id: session.client_id.clone(),
            to,
            filters: session.subscriptions.clone(),
            waiting: others,
        });
        debug_assert!((stub_key as u32) < STUB_BIT && (key as u32) < STUB_BIT);
        let sid = stub_key as u32 | STUB_BIT;
        for (filter, grant) in &session.subscriptions {
            if let Some(shared) = filter.shared() {
                // Group membership leaves with the session and rejoins where it lands.
                if let Ok((group, inner)) = shared {
                    self.shared_unsubscribe(key, group, &inner);
                }
                continue;
            }
            // Insert first so the filter never looks empty: no interest churn.
            self.index.insert(filter, sid, *grant);
            self.index.remove(filter, key as u32);
        }
        self.stub_by_client
            .insert(session.client_id.clone(), stub_key);
        session.conn = None;
        Some(session)
    }

    /// After installing a moved session: ask every worker to confirm it routes here.
    pub(crate) fn ping_for(&mut self, client_id: &Arc<str>, stub_at: WorkerId) {
        let me = self.id;
        for w in (0..self.workers).filter(|&w| w != me) {
            self.send_mesh(
                w,
                MeshMsg::Ping {
                    client_id: client_id.clone(),
                    stub_at,
                },
            );
        }
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

    /// A forwarded message for a session that moved here.
    pub(crate) fn on_forward(
        &mut self,
        now: Instant,
        client_id: Arc<str>,
        msg: Message,
        origin: Option<Origin>,
        stamp: Stamp,
    ) {
        let Some(&key) = self.by_client.get(&client_id) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(key) else {
            return;
        };
        // Only a settling session is owed forwards; a fresh one (clean takeover)
        // does not inherit the old one's messages.
        let Some(settle) = session.moved_in.as_mut() else {
            return;
        };
        let (before, take) = settle.forward(self.id, &stamp);
        for h in before {
            self.deliver(now, key, &h.msg, h.granted, false, h.origin);
        }
        if !take {
            return;
        }
        let Some(session) = self.sessions.get(key) else {
            return;
        };
        let granted = session
            .subscriptions
            .iter()
            .filter(|(f, _)| f.shared().is_none() && filter_matches(f.as_str(), msg.topic.as_str()))
            .map(|(_, g)| g.max_qos())
            .max();
        if let Some(granted) = granted {
            self.deliver(now, key, &msg, granted, false, origin);
        }
    }

    /// `Ping` from the new home `from` of a session whose stub is at `stub_at`.
    pub(crate) fn on_ping(&mut self, from: WorkerId, client_id: Arc<str>, stub_at: WorkerId) {
        if stub_at != self.id {
            self.send_mesh(
                stub_at,
                MeshMsg::Pong {
                    client_id: client_id.clone(),
                },
            );
            return self.send_mesh(from, MeshMsg::Flushed { client_id });
        }
        // We are the old home. Everything routed here before this ping, by us or by
        // the new home, has been forwarded: both origins are done.
        let me = self.id;
        self.stub_done(&client_id, from);
        self.stub_done(&client_id, me);
    }

    /// `Pong` from worker `from`: its messages for the session are all forwarded.
    pub(crate) fn on_pong(&mut self, from: WorkerId, client_id: &str) {
        self.stub_done(client_id, from);
    }

    /// Tells the new home that origin `w` is done; drops the stub when all are.
    fn stub_done(&mut self, client_id: &str, w: WorkerId) {
        let Some(&stub_key) = self.stub_by_client.get(client_id) else {
            return;
        };
        let Some(stub) = self.stubs.get_mut(stub_key) else {
            return;
        };
        stub.waiting &= !(1u64 << w);
        let (to, client, finished) = (stub.to, stub.client_id.clone(), stub.waiting == 0);
        self.send_mesh(
            to,
            MeshMsg::Done {
                client_id: client,
                origin: w,
            },
        );
        if finished {
            self.drop_stub(stub_key);
        }
    }

    /// `Flushed` from worker `from`: its direct copies for the session are all here.
    pub(crate) fn on_flushed(&mut self, now: Instant, from: WorkerId, client_id: &str) {
        self.settle_step(now, client_id, None, |s| {
            s.flushed(from);
            Vec::new()
        });
    }

    /// `Done` from the old home `from`: origin `w`'s forwards are all here.
    pub(crate) fn on_done(&mut self, now: Instant, from: WorkerId, client_id: &str, w: WorkerId) {
        self.settle_step(now, client_id, Some(from), |s| s.done(w));
    }

    /// Applies `step` to the settling state of `client_id`'s session (if it moved
    /// from `from`, when given), delivers what it releases, and ends the state when
    /// settled.
    fn settle_step(
        &mut self,
        now: Instant,
        client_id: &str,
        from: Option<WorkerId>,
        step: impl FnOnce(&mut Settle) -> Vec<crate::broker::settle::Held>,
    ) {
        let Some(&key) = self.by_client.get(client_id) else {
            return;
        };
        let Some(settle) = self.sessions.get_mut(key).and_then(|s| s.moved_in.as_mut()) else {
            return;
        };
        if from.is_some_and(|f| f != settle.from) {
            return;
        }
        let ready = step(settle);
        let settled = settle.settled();
        if settled {
            if let Some(s) = self.sessions.get_mut(key) {
                s.moved_in = None;
            }
        }
        for h in ready {
            self.deliver(now, key, &h.msg, h.granted, false, h.origin);
        }
        if settled {
            self.run_deferred(now, client_id);
        }
    }
}
