//! Sessions in motion: forwarding stubs that keep a moving session's messages from
//! falling between two workers.
//!
//! When a persistent session leaves this worker (takeover from another worker), its
//! subscriptions stay in the local index for a grace period, pointing at a *stub*
//! instead of the session. Every message that still reaches this worker for those
//! filters — routed by a worker that has not yet learned the session's new home — is
//! forwarded to the new worker as [`MeshMsg::Forward`] with its routing [`Stamp`].
//! The new worker delivers a forwarded copy only if the direct path did not (see
//! [`Stamp::handled_directly`]), so QoS 2 stays exactly-once across the move.

use super::Shard;
use crate::broker::mesh::{MeshMsg, Origin, Stamp};
use crate::broker::message::Message;
use crate::broker::session::Session;
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
    /// The session's install watermark on this worker (None if it was created here).
    pub watermark: Option<Box<[u64]>>,
    pub filters: Vec<(TopicFilter, QoS)>,
    pub expires_at: Instant,
}

impl Shard {
    /// The highest routing stamp this worker has seen from each worker (itself included).
    pub(crate) fn watermark(&self) -> Box<[u64]> {
        let mut w = self.last_seen.clone();
        w[self.id] = self.seq;
        w.into_boxed_slice()
    }

    /// Takes a persistent session off this worker for `to`, leaving a stub behind.
    pub(crate) fn move_out(&mut self, now: Instant, key: usize, to: WorkerId) -> Option<Session> {
        let mut session = self.sessions.try_remove(key)?;
        self.by_client.remove(&session.client_id);
        self.drop_stub_for(&session.client_id);
        let stub_key = self.stubs.insert(Stub {
            client_id: session.client_id.clone(),
            to,
            watermark: session.moved_in.take(),
            filters: session.subscriptions.clone(),
            expires_at: now + self.cfg.handover_timeout() * 2,
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
        self.stub_expiry
            .push_back((now + self.cfg.handover_timeout() * 2, stub_key));
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
    }

    /// Drops stubs whose grace period is over: by then every worker has long learned
    /// where the session went.
    pub(crate) fn expire_stubs(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.stub_expiry.front() {
            if at > now {
                break;
            }
            self.stub_expiry.pop_front();
            if self.stubs.get(key).is_some_and(|s| s.expires_at == at) {
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
            let Some(session) = self.sessions.get(key) else {
                return;
            };
            // Only a session that moved in can be owed forwarded messages; a fresh
            // session (clean takeover) discarded the old one's.
            let Some(wm) = &session.moved_in else { return };
            if stamp.handled_directly(self.id, wm) {
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
        let Some(stub) = self.stubs.get(stub_key) else {
            return;
        };
        let handled = stub
            .watermark
            .as_deref()
            .is_some_and(|wm| stamp.handled_directly(self.id, wm));
        if !handled {
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
    }
}
