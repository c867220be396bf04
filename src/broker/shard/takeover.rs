//! Session takeover between workers ([MQTT-3.1.4-2]): a CONNECT on one worker for a
//! client whose session lives on another.
//!
//! The registry serializes takeovers of one client id: a claim is refused while
//! another takeover of the id is in flight, and waiting CONNECTs are ordered by
//! arrival (`Registry::claim`). So exactly one request is answered at a time: the
//! owner closes its connection (publishing its will), sends the session
//! (`Handover`) and leaves a forwarding stub (`moved.rs`); the requester installs
//! it, answers CONNACK and finishes the takeover. A session still settling after a
//! move is not moved again until it has settled.

use super::connect::PendingConnect;
use super::{Phase, Shard};
use crate::broker::mesh::MeshMsg;
use crate::broker::session::Session;
use crate::broker::{ConnId, WorkerId};
use std::sync::Arc;
use std::time::Instant;

/// A session on its way to this worker.
#[derive(Debug)]
pub(crate) struct Inbound {
    /// The connection that will get it, while it is still open.
    pub conn: Option<ConnId>,
    pub clean: bool,
}

/// A takeover request for a session that is still settling after a move.
#[derive(Debug)]
pub(crate) struct Deferred {
    pub from: WorkerId,
    pub to: ConnId,
    pub clean: bool,
}

impl Shard {
    /// Puts `id` in the waiting state for the session of `client_id`.
    pub(super) fn await_handover(
        &mut self,
        now: Instant,
        id: ConnId,
        client_id: Arc<str>,
        clean: bool,
    ) {
        let deadline = now + self.cfg.handover_timeout();
        let older = self.inbound.insert(
            client_id.clone(),
            Inbound {
                conn: Some(id),
                clean,
            },
        );
        debug_assert!(older.is_none(), "takeovers of one client are serialized");
        if let Some(conn) = self.conn_mut(id) {
            conn.phase = Phase::AwaitHandover(Box::new(PendingConnect {
                client_id,
                clean,
                deadline,
            }));
        }
        self.schedule(id, deadline);
    }

    /// `Takeover` from worker `from` for its connection `to`.
    pub(super) fn on_takeover(
        &mut self,
        now: Instant,
        from: WorkerId,
        client_id: Arc<str>,
        to: ConnId,
        clean: bool,
    ) {
        if self.settling(&client_id) {
            // Moves do not overlap: answer once the session has settled here.
            self.deferred
                .entry(client_id)
                .or_default()
                .push(Deferred { from, to, clean });
            return;
        }
        // Closes our connection for the client (its will is published; a clean
        // session goes with it), then sends the session or nothing.
        self.detach_local_session(now, &client_id);
        let session = match self.by_client.get(&client_id).copied() {
            Some(key) if !clean => self.move_out(key, from).map(Box::new),
            Some(key) => {
                // A clean start ends the old session: a will still waiting out its
                // delay goes now (3.1.2.5), as on the same-worker path in
                // `activate`. (`remove_session` alone dropped it unpublished.)
                self.discard_session(now, key);
                None
            }
            None => None,
        };
        self.send_mesh(
            from,
            MeshMsg::Handover {
                client_id,
                to,
                session,
            },
        );
    }

    /// A moved session that is not installed here after all (discarded): the workers
    /// are still asked to confirm, so that the old home's stub goes.
    fn drop_moved(&mut self, session: Option<Box<Session>>) {
        if let Some(s) = session {
            if let Some(m) = s.moved_in.as_ref() {
                self.ping_for(&s.client_id, m.from, m.move_id);
            }
        }
    }

    /// Answers the takeovers that waited for `client_id` to settle (or to go).
    pub(crate) fn run_deferred(&mut self, now: Instant, client_id: &str) {
        let Some((client_id, waiting)) = self.deferred.remove_entry(client_id) else {
            return;
        };
        for d in waiting {
            self.on_takeover(now, d.from, client_id.clone(), d.to, d.clean);
        }
    }

    /// `Handover` from the previous owner: finish the waiting CONNECT, and the
    /// takeover with it (new claims of the id may proceed).
    pub(super) fn on_handover(
        &mut self,
        now: Instant,
        client_id: Arc<str>,
        session: Option<Box<Session>>,
    ) {
        let Some(inb) = self.inbound.remove(&client_id) else {
            // After a handover timeout: keep a persistent session only if nothing
            // has replaced it here.
            match session {
                Some(s)
                    if !s.clean
                        && !self.by_client.contains_key(&client_id)
                        && self.registry.owner(&client_id) == Some(self.id) =>
                {
                    self.install_session(*s);
                }
                other => {
                    tracing::debug!(%client_id, "late session handover dropped");
                    self.drop_moved(other);
                }
            }
            return;
        };
        self.registry.finish(&client_id, self.id);
        let waiting = inb.conn.filter(|&c| {
            matches!(self.conn(c).map(|c| &c.phase),
                Some(Phase::AwaitHandover(p)) if p.client_id == client_id)
        });
        let (session, dropped) = match session {
            Some(s) if !inb.clean && !s.clean => (Some(s), None),
            other => (None, other),
        };
        self.drop_moved(dropped);
        match (waiting, session) {
            (Some(conn), session) => {
                let existing = session.map(|s| self.install_session(*s));
                self.activate(now, conn, client_id, inb.clean, existing);
            }
            // The connection left while its session travelled: keep the persistent
            // session here, offline; with none, the id is free.
            (None, Some(s)) => {
                self.install_session(*s);
            }
            (None, None) => {
                self.registry.release(&client_id, self.id);
            }
        }
    }
}
