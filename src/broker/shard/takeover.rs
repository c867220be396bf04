//! Session takeover between workers ([MQTT-3.1.4-2]): a CONNECT on one worker for a
//! client whose session lives on another.
//!
//! The registry orders claims of a client id with a generation. The new connection's
//! worker asks the previous owner (`Takeover`, carrying the generation); the owner
//! closes its connection and sends the session (`Handover`), leaving a forwarding stub
//! (`moved.rs`). A request older than the owner's own latest claim is answered
//! `superseded`, and the requester closes its waiting connection: the newest
//! connection always wins, however the messages interleave. A worker that is itself
//! waiting for the session when a newer request reaches it passes the session on
//! when it arrives.

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
    /// Claim generation of the connection that will get it.
    pub gen: u64,
    /// That connection, while it is still open.
    pub conn: Option<ConnId>,
    pub clean: bool,
    /// The latest clean claim before it: an older session that arrives is discarded.
    pub last_clean: u64,
}

/// A takeover request for a session that is still settling after a move.
#[derive(Debug)]
pub(crate) struct Deferred {
    pub from: WorkerId,
    pub gen: u64,
    pub last_clean: u64,
    pub to: ConnId,
    pub clean: bool,
}

/// Where to pass a session on when it arrives.
#[derive(Debug)]
pub(crate) struct Forwarding {
    pub worker: WorkerId,
    pub conn: ConnId,
    pub clean: bool,
    pub gen: u64,
}

impl Shard {
    /// Puts `id` in the waiting state for the session of `client_id`, replacing an
    /// older waiting connection of the same client.
    pub(super) fn await_handover(
        &mut self,
        now: Instant,
        id: ConnId,
        client_id: Arc<str>,
        clean: bool,
        gen: u64,
        last_clean: u64,
    ) {
        let deadline = now + self.cfg.handover_timeout();
        // A connection we promised to pass the session to is older than this one.
        if self
            .forward_handover
            .get(&client_id)
            .is_some_and(|f| f.gen < gen)
        {
            if let Some(f) = self.forward_handover.remove(&client_id) {
                self.superseded(f.worker, client_id.clone(), f.conn, (gen, self.id));
            }
        }
        let older = self
            .inbound
            .insert(
                client_id.clone(),
                Inbound {
                    gen,
                    conn: Some(id),
                    clean,
                    last_clean,
                },
            )
            .and_then(|i| i.conn);
        if let Some(older) = older.filter(|&o| o != id) {
            self.drop_conn(older);
            // drop_conn cleared the entry's connection if it pointed at `older`;
            // make sure it points at the new one.
            if let Some(inb) = self.inbound.get_mut(&client_id) {
                inb.conn = Some(id);
            }
        }
        if let Some(conn) = self.conn_mut(id) {
            conn.phase = Phase::AwaitHandover(Box::new(PendingConnect {
                client_id,
                clean,
                deadline,
            }));
        }
        self.schedule(id, deadline);
    }

    /// Tells a requester its claim lost to claim `by`, held (or awaited) at `holder`.
    fn superseded(
        &mut self,
        to_worker: WorkerId,
        client_id: Arc<str>,
        to: ConnId,
        by: (u64, WorkerId),
    ) {
        self.send_mesh(
            to_worker,
            MeshMsg::Handover {
                client_id,
                to,
                session: None,
                superseded_by: Some(by),
            },
        );
    }

    /// `Takeover` from worker `from` for its connection `to` with claim `gen`.
    pub(super) fn on_takeover(
        &mut self,
        now: Instant,
        from: WorkerId,
        client_id: Arc<str>,
        gen: u64,
        last_clean: u64,
        to: ConnId,
        clean: bool,
    ) {
        if self.settling(&client_id) {
            // Moves do not overlap: answer once the session has settled here.
            self.deferred.entry(client_id).or_default().push(Deferred {
                from,
                gen,
                last_clean,
                to,
                clean,
            });
            return;
        }
        if let Some(&key) = self.by_client.get(&client_id) {
            let ours = self.sessions.get(key).map_or(0, |s| s.claim_gen);
            if ours > gen {
                return self.superseded(from, client_id, to, (ours, self.id));
            }
            let cleaned = ours < last_clean;
            return self.hand_over(now, client_id, from, to, clean || cleaned);
        }
        if let Some(inb) = self.inbound.get_mut(&client_id) {
            if inb.gen > gen {
                let ours = inb.gen;
                return self.superseded(from, client_id, to, (ours, self.id));
            }
            // Our waiting connection loses to the newer one; the session will pass
            // through here.
            let ours = inb.conn.take();
            if let Some(c) = ours {
                self.drop_conn(c);
            }
            let older = self.forward_handover.insert(
                client_id.clone(),
                Forwarding {
                    worker: from,
                    conn: to,
                    clean,
                    gen,
                },
            );
            if let Some(f) = older {
                self.superseded(f.worker, client_id, f.conn, (gen, from));
            }
            return;
        }
        // Nothing here. If a newer connection has claimed the id meanwhile, the
        // session (if any) went its way and the requester has lost; otherwise there
        // is no session and the requester starts afresh.
        if let Some(latest) = self.registry.latest(&client_id).filter(|l| l.0 > gen) {
            return self.superseded(from, client_id, to, latest);
        }
        self.send_mesh(
            from,
            MeshMsg::Handover {
                client_id,
                to,
                session: None,
                superseded_by: None,
            },
        );
    }

    /// Closes our connection for `client_id` (its will is published) and sends the
    /// session to `to_worker`, leaving a forwarding stub; a clean new connection gets
    /// nothing and the old session is discarded.
    pub(super) fn hand_over(
        &mut self,
        now: Instant,
        client_id: Arc<str>,
        to_worker: WorkerId,
        to: ConnId,
        clean: bool,
    ) {
        // A clean session is discarded when its connection closes here.
        self.detach_local_session(now, &client_id);
        let session = match self.by_client.get(&client_id).copied() {
            Some(key) if !clean => self.move_out(key, to_worker).map(Box::new),
            Some(key) => {
                self.remove_session(key);
                None
            }
            None => None,
        };
        self.send_mesh(
            to_worker,
            MeshMsg::Handover {
                client_id,
                to,
                session,
                superseded_by: None,
            },
        );
    }

    /// A moved session that is not installed here after all (discarded): the workers
    /// are still asked to confirm, so that the old home's stub goes.
    fn drop_moved(&mut self, session: Option<Box<Session>>) {
        if let Some(s) = session {
            if let Some(stub_at) = s.moved_in.as_ref().map(|m| m.from) {
                self.ping_for(&s.client_id, stub_at);
            }
        }
    }

    /// Answers the takeovers that waited for `client_id` to settle (or to go).
    pub(crate) fn run_deferred(&mut self, now: Instant, client_id: &str) {
        let Some((client_id, waiting)) = self.deferred.remove_entry(client_id) else {
            return;
        };
        for d in waiting {
            self.on_takeover(
                now,
                d.from,
                client_id.clone(),
                d.gen,
                d.last_clean,
                d.to,
                d.clean,
            );
        }
    }

    /// `Handover` from the previous owner: finish the waiting CONNECT, and the
    /// takeover with it (new claims of the id may proceed).
    pub(super) fn on_handover(
        &mut self,
        now: Instant,
        client_id: Arc<str>,
        session: Option<Box<Session>>,
        superseded_by: Option<(u64, WorkerId)>,
    ) {
        self.handover_inner(now, client_id.clone(), session, superseded_by);
        if !self.inbound.contains_key(&client_id) {
            self.registry.finish(&client_id, self.id);
        }
    }

    fn handover_inner(
        &mut self,
        now: Instant,
        client_id: Arc<str>,
        session: Option<Box<Session>>,
        superseded_by: Option<(u64, WorkerId)>,
    ) {
        if let Some(f) = self.forward_handover.remove(&client_id) {
            self.inbound.remove(&client_id);
            match superseded_by {
                // A claim newer than the requester's exists: it loses too.
                Some(by) if by.0 > f.gen => {
                    return self.superseded(f.worker, client_id, f.conn, by)
                }
                // The requester itself is what superseded us: nobody holds a
                // session (we were each waiting for the other), so it starts afresh.
                Some(_) => {
                    return self.send_mesh(
                        f.worker,
                        MeshMsg::Handover {
                            client_id,
                            to: f.conn,
                            session: None,
                            superseded_by: None,
                        },
                    )
                }
                None => {}
            }
            // Installed here, then passed on once it has settled.
            if let Some(s) = session {
                self.install_session(*s);
            }
            return self.on_takeover(now, f.worker, client_id, f.gen, 0, f.conn, f.clean);
        }
        let Some(inb) = self.inbound.remove(&client_id) else {
            // After a handover timeout: keep a persistent session only if nothing
            // has replaced it here.
            match session {
                Some(s)
                    if superseded_by.is_none()
                        && !s.clean
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
        if let Some((by, holder)) = superseded_by {
            match inb.conn {
                // A connection newer than the superseding claim took over the wait
                // here meanwhile: ask the holder of that claim again, for it.
                Some(conn) if inb.gen > by && holder != self.id => {
                    let (gen, clean, last_clean) = (inb.gen, inb.clean, inb.last_clean);
                    self.inbound.insert(client_id.clone(), inb);
                    return self.send_mesh(
                        holder,
                        MeshMsg::Takeover {
                            client_id,
                            gen,
                            last_clean,
                            to: conn,
                            clean,
                        },
                    );
                }
                // The superseding claim is our own waiting connection: nobody else
                // holds the session, so it starts afresh below.
                Some(_) if inb.gen >= by => {}
                Some(conn) => return self.drop_conn(conn),
                None => return,
            }
        }
        let waiting = inb.conn.filter(|&c| {
            matches!(self.conn(c).map(|c| &c.phase),
                Some(Phase::AwaitHandover(p)) if p.client_id == client_id)
        });
        let (session, dropped) = match session {
            Some(s) if !inb.clean && !s.clean && s.claim_gen >= inb.last_clean => (Some(s), None),
            other => (None, other),
        };
        self.drop_moved(dropped);
        match waiting {
            Some(conn) => {
                let existing = session.map(|s| self.install_session(*s));
                self.activate(now, conn, client_id, inb.clean, existing, inb.gen);
            }
            None => {
                // The connection left while its session travelled: keep the
                // persistent session here, offline; with none, the id is free.
                match session {
                    Some(s) => {
                        let key = self.install_session(*s);
                        if let Some(s) = self.sessions.get_mut(key) {
                            s.claim_gen = inb.gen;
                        }
                    }
                    None => {
                        self.registry.release(&client_id, self.id);
                    }
                }
            }
        }
    }
}
