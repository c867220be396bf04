//! The shard's side of authentication and authorization: thin glue between the
//! connection state and [`crate::auth::Gate`], which decides.
//!
//! Owns: where the checks happen. CONNECT is judged before the client id is
//! claimed (refusals: 0x04 bad credentials, 0x05 not authorized, 0x03 while the
//! address backs off; a CONNECT that finds this turn's budget of slow hash
//! verifications spent is parked like a CONNECT for a busy client id, and
//! retried). PUBLISH and the Will need write access to their topic; SUBSCRIBE
//! needs read access covering the filter (0x80 otherwise); every delivery, queued
//! ones when they leave the queue included, needs read access to its topic.
//! Must not: hold rules of its own, or cost anything when no authentication is
//! configured (`Shard::gate` is None then, and every check is one branch).

use super::{Conn, Shard};
use crate::auth::{Access, AuthShared, ConnAuth, Gate, Login, Refusal};
use crate::broker::stats::Stats;
use crate::broker::ConnId;
use crate::protocol::{Connect, ConnectReturnCode};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// The connection's auth state, if the connection exists (boxed on first use).
fn conn_auth(conns: &mut [Option<Conn>], id: ConnId) -> Option<&mut ConnAuth> {
    match conns.get_mut(id.slot as usize) {
        Some(Some(c)) if c.gen == id.gen => Some(c.auth.get_or_insert_with(Default::default)),
        _ => None,
    }
}

/// Read access of connection `id` to `topic`, counting a denial. A free function
/// so that callers holding a session borrow can use it (disjoint fields).
pub(super) fn may_read(
    gate: &mut Option<Box<Gate>>,
    conns: &mut [Option<Conn>],
    stats: &mut Stats,
    id: ConnId,
    topic: &str,
) -> bool {
    let Some(gate) = gate.as_deref_mut() else {
        return true;
    };
    let Some(auth) = conn_auth(conns, id) else {
        return false;
    };
    let ok = gate.allows(auth, topic, Access::Read);
    if !ok {
        stats.acl_denied_read += 1;
    }
    ok
}

impl Shard {
    /// Turns authentication on for this worker (the runtime calls it once, before
    /// any connection, when the configuration asks for it).
    pub fn set_auth(&mut self, shared: Arc<AuthShared>) {
        self.gate = Some(Box::new(Gate::new(shared)));
    }

    /// True when [`set_peer`](Self::set_peer) is worth calling.
    pub fn wants_peer(&self) -> bool {
        self.gate.is_some()
    }

    /// The peer address of a new connection, for the failed-login back-off.
    pub fn set_peer(&mut self, id: ConnId, ip: IpAddr) {
        if self.gate.is_some() {
            if let Some(auth) = conn_auth(&mut self.conns, id) {
                auth.peer = Some(ip);
            }
        }
    }

    /// Judges a CONNECT's credentials. Returns the CONNECT to go on with, or None
    /// when it was refused or parked until the next turn.
    pub(super) fn authenticate(
        &mut self,
        now: Instant,
        id: ConnId,
        c: Connect,
        client_id: &Arc<str>,
        deadline: Instant,
        ticket: u64,
    ) -> Option<Connect> {
        let Some(gate) = self.gate.as_deref_mut() else {
            return Some(c);
        };
        let auth = conn_auth(&mut self.conns, id)?;
        if auth.admitted() {
            return Some(c); // a parked CONNECT replayed
        }
        let login = gate.login(now, auth.peer, c.username.as_deref(), c.password.as_deref());
        let code = match login {
            Login::Accepted(user) => {
                gate.admit(auth, user, client_id.clone());
                return Some(c);
            }
            Login::Later => {
                self.park_connect(now, id, c, deadline, ticket);
                return None;
            }
            Login::Refused(Refusal::BadCredentials) => ConnectReturnCode::BadUserNameOrPassword,
            Login::Refused(Refusal::NotAuthorized) => ConnectReturnCode::NotAuthorized,
            Login::Refused(Refusal::BackingOff) => ConnectReturnCode::ServerUnavailable,
        };
        tracing::debug!(?id, user = ?c.username, ?code, "login refused");
        self.stats.auth_refused += 1;
        self.refuse(id, code);
        None
    }

    /// May connection `id` publish to `topic` (PUBLISH or its Will)? Counts denials.
    pub(super) fn may_write(&mut self, id: ConnId, topic: &str) -> bool {
        let Some(gate) = self.gate.as_deref_mut() else {
            return true;
        };
        let ok =
            conn_auth(&mut self.conns, id).is_some_and(|a| gate.allows(a, topic, Access::Write));
        if !ok {
            self.stats.acl_denied_publish += 1;
        }
        ok
    }

    /// May connection `id` subscribe to `filter`? Counts denials.
    pub(super) fn may_subscribe(&mut self, id: ConnId, filter: &str) -> bool {
        let Some(gate) = self.gate.as_deref_mut() else {
            return true;
        };
        let ok = conn_auth(&mut self.conns, id).is_some_and(|a| gate.allows_subscribe(a, filter));
        if !ok {
            self.stats.acl_denied_subscribe += 1;
        }
        ok
    }

    /// May the session's connection receive `topic`? An offline session may queue
    /// it: it is checked when it leaves the queue, against the connection then.
    pub(super) fn may_deliver(&mut self, key: usize, topic: &str) -> bool {
        if self.gate.is_none() {
            return true;
        }
        match self.sessions.get(key).and_then(|s| s.conn) {
            Some(id) => may_read(&mut self.gate, &mut self.conns, &mut self.stats, id, topic),
            None => true,
        }
    }
}
