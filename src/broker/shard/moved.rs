//! Sessions in motion: how a persistent session moves from worker A to worker B on
//! takeover without losing, duplicating or reordering the messages in flight.
//!
//! 1. A hands the session over (`Handover`) and keeps its filters in the local index
//!    pointing at a *stub*: workers that have not yet learned of B keep routing to
//!    A, and A forwards every match to B ([`MeshMsg::Forward`]) in the order
//!    received.
//! 2. B installs the session; its interest updates go out first, then, in the same
//!    call, a `Ping` to every other worker, who answers `Pong` to A and `Flushed` to
//!    B: everything it routed before knowing B is ahead of those, and it routes to B
//!    from then on. That moment is the worker's *cut*.
//! 3. A tells B `Done` for each origin worker as its pong arrives (for A and B
//!    themselves when B's ping arrives), after that origin's last forward from before
//!    its cut, and drops the stub when all are in.
//! 4. B settles the session meanwhile ([`Settle`]): per origin, forwards before its
//!    `Done` and direct copies after its `Flushed` are taken, nothing else, and
//!    direct copies wait for the `Done`. `settle.rs` states why that is exactly once
//!    and in order.
//!
//! **Invariant:** moves of one session never overlap. A takeover of a session that
//! is still settling waits until it has settled (`shard/takeover.rs`), and the stub
//! goes before the last `Done` reaches the new home, so when a session leaves a
//! worker no copy routed to it, nor any forward of an earlier move, is still on its
//! way there: each move's settling depends on that move alone. Each move has an id
//! (`move_id`, chosen by the old home) carried by its ping, pongs, `Flushed` and
//! `Done`s, so a late one of an abandoned move of the same client counts for nothing.

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
    /// The move this stub belongs to (see [`Settle::move_id`]).
    pub move_id: u64,
}

impl Shard {
    pub(crate) fn all_workers(&self) -> u64 {
        if self.workers >= 64 {
            u64::MAX
        } else {
            (1u64 << self.workers) - 1
        }
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
        let mut session = self.sessions.try_remove(key)?;
        debug_assert!(session.moved_in.is_none(), "moves must not overlap");
        let others = self.all_workers() & !(1u64 << to);
        self.moves_out += 1;
        let move_id = self.moves_out << 16 | self.id as u64;
        session.moved_in = Some(Box::new(Settle::new(
            self.id,
            to,
            self.all_workers(),
            move_id,
        )));
        self.by_client.remove(&session.client_id);
        self.drop_stub_for(&session.client_id);
        let stub_key = self.stubs.insert(Stub {
            client_id: session.client_id.clone(),
            to,
            filters: session.subscriptions.clone(),
            waiting: others,
            move_id,
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
    pub(crate) fn ping_for(&mut self, client_id: &Arc<str>, stub_at: WorkerId, move_id: u64) {
        let me = self.id;
        for w in (0..self.workers).filter(|&w| w != me) {
            self.send_mesh(
                w,
                MeshMsg::Ping {
                    client_id: client_id.clone(),
                    stub_at,
                    move_id,
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

    /// A forwarded message from worker `from` for a session that moved here.
    pub(crate) fn on_forward(
        &mut self,
        now: Instant,
        from: WorkerId,
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
        let Some(settle) = session.moved_in.as_ref() else {
            return;
        };
        if settle.from != from || !settle.forward(&stamp) {
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
    /// `Ping` from the new home `from` of a session whose stub is at `stub_at`: this
    /// is our cut for the move.
    pub(crate) fn on_ping(
        &mut self,
        from: WorkerId,
        client_id: Arc<str>,
        stub_at: WorkerId,
        move_id: u64,
    ) {
        if stub_at != self.id {
            self.send_mesh(
                stub_at,
                MeshMsg::Pong {
                    client_id: client_id.clone(),
                    move_id,
                },
            );
            return self.send_mesh(from, MeshMsg::Flushed { client_id, move_id });
        }
        // We are the old home. Everything routed here before this ping, by us or by
        // the new home, has been forwarded: both origins are done.
        let me = self.id;
        self.stub_done(&client_id, from, move_id);
        self.stub_done(&client_id, me, move_id);
    }

    /// `Pong` from worker `from`: its messages for the session from before its cut
    /// are all forwarded.
    pub(crate) fn on_pong(&mut self, from: WorkerId, client_id: &str, move_id: u64) {
        self.stub_done(client_id, from, move_id);
    }

    /// Tells the new home that origin `w` is done; drops the stub when all are.
    fn stub_done(&mut self, client_id: &str, w: WorkerId, move_id: u64) {
        let Some(&stub_key) = self.stub_by_client.get(client_id) else {
            return;
        };
        let Some(stub) = self.stubs.get_mut(stub_key) else {
            return;
        };
        if stub.move_id != move_id {
            return; // a late answer about an earlier move of the client
        }
        stub.waiting &= !(1u64 << w);
        let (to, client, finished) = (stub.to, stub.client_id.clone(), stub.waiting == 0);
        self.send_mesh(
            to,
            MeshMsg::Done {
                client_id: client,
                origin: w,
                move_id,
            },
        );
        if finished {
            self.drop_stub(stub_key);
        }
    }

    /// `Flushed` from worker `from`: its direct copies for the session from before
    /// its cut are all here.
    pub(crate) fn on_flushed(
        &mut self,
        now: Instant,
        from: WorkerId,
        client_id: &str,
        move_id: u64,
    ) {
        self.settle_step(now, client_id, move_id, |s| {
            s.flushed(from);
            Vec::new()
        });
    }

    /// `Done` from the old home: origin `w`'s forwards from before its cut are all
    /// here.
    pub(crate) fn on_done(&mut self, now: Instant, client_id: &str, w: WorkerId, move_id: u64) {
        self.settle_step(now, client_id, move_id, |s| s.done(w));
    }

    /// Applies `step` to the settling state of `client_id`'s session (if it is
    /// settling after move `move_id`), delivers what it releases, and ends the state
    /// when settled.
    fn settle_step(
        &mut self,
        now: Instant,
        client_id: &str,
        move_id: u64,
        step: impl FnOnce(&mut Settle) -> Vec<crate::broker::settle::Held>,
    ) {
        let Some(&key) = self.by_client.get(client_id) else {
            return;
        };
        let Some(settle) = self.sessions.get_mut(key).and_then(|s| s.moved_in.as_mut()) else {
            return;
        };
        if settle.move_id != move_id {
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
