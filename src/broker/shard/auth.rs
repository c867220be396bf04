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
//! After a reload, connections whose login the new rules would refuse are closed
//! (DISCONNECT 0x98 to MQTT 5 clients; the will is published if the ACL allows).
//! Must not: hold rules of its own, or cost anything when no authentication is
//! configured (`Shard::auth` is None then, and every check is one branch).

use super::{Conn, Shard};
use crate::auth::{Access, AuthShared, ConnAuth, Gate, Login, Refusal};
use crate::broker::stats::Stats;
use crate::broker::ConnId;
use crate::protocol::{Connect, ReasonCode, TopicFilter};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// The worker's gate and each connection's auth state. The state lives in this
/// side table by slot, not in `Conn`, so that connections stay small when
/// authentication is off; an entry is replaced when its slot is reused by a newer
/// generation and freed when its connection is dropped.
#[derive(Debug)]
pub(crate) struct AuthState {
    gate: Gate,
    conns: Vec<Option<(u32, Box<ConnAuth>)>>,
    /// The rules generation the connections were last judged against.
    judged: u64,
}

impl AuthState {
    /// The gate and the state of connection `id` (fresh for a new generation).
    fn conn(&mut self, id: ConnId) -> (&mut Gate, &mut ConnAuth) {
        let slot = id.slot as usize;
        if self.conns.len() <= slot {
            self.conns.resize_with(slot + 1, || None);
        }
        let entry = &mut self.conns[slot];
        if entry.as_ref().is_some_and(|(gen, _)| *gen != id.gen) {
            *entry = None;
        }
        let (_, auth) = entry.get_or_insert_with(|| (id.gen, Box::default()));
        (&mut self.gate, auth)
    }
}

/// True if the connection exists (the id is not stale).
fn live(conns: &[Option<Conn>], id: ConnId) -> bool {
    matches!(conns.get(id.slot as usize), Some(Some(c)) if c.gen == id.gen)
}

/// Read access of connection `id` to `topic`, counting a denial. A free function
/// so that callers holding a session borrow can use it (disjoint fields).
pub(super) fn may_read(
    auth: &mut Option<Box<AuthState>>,
    conns: &[Option<Conn>],
    stats: &mut Stats,
    id: ConnId,
    topic: &str,
) -> bool {
    let Some(state) = auth.as_deref_mut() else {
        return true;
    };
    if !live(conns, id) {
        return true; // a stale id: the caller's own checks handle it
    }
    let (gate, conn) = state.conn(id);
    let ok = gate.allows(conn, topic, Access::Read);
    if !ok {
        stats.acl_denied_read += 1;
    }
    ok
}

impl Shard {
    /// Turns authentication on for this worker (the runtime calls it once, before
    /// any connection, when the configuration asks for it).
    pub fn set_auth(&mut self, shared: Arc<AuthShared>) {
        let mut gate = Gate::new(shared);
        let judged = gate.generation();
        self.auth = Some(Box::new(AuthState {
            gate,
            conns: Vec::new(),
            judged,
        }));
    }

    /// True when [`set_peer`](Self::set_peer) is worth calling.
    pub fn wants_peer(&self) -> bool {
        self.auth.is_some()
    }

    /// The live connection's auth state, if authentication is on.
    fn auth_of(&mut self, id: ConnId) -> Option<(&mut Gate, &mut ConnAuth)> {
        let state = self.auth.as_deref_mut()?;
        live(&self.conns, id).then(|| state.conn(id))
    }

    /// The peer address of a new connection, for the failed-login back-off.
    pub fn set_peer(&mut self, id: ConnId, ip: IpAddr) {
        if let Some((_, auth)) = self.auth_of(id) {
            auth.peer = Some(ip);
        }
    }

    /// The runtime vouches for the connection's user name (a TLS client certificate
    /// with `use_identity_as_username`): its CONNECT skips the password check.
    pub fn set_certified(&mut self, id: ConnId) {
        if let Some((_, auth)) = self.auth_of(id) {
            auth.certified = true;
        }
    }

    /// Frees a dropped connection's auth state.
    pub(super) fn forget_auth(&mut self, id: ConnId) {
        if let Some(state) = self.auth.as_deref_mut() {
            if let Some(entry) = state.conns.get_mut(id.slot as usize) {
                if entry.as_ref().is_some_and(|(gen, _)| *gen == id.gen) {
                    *entry = None;
                }
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
        if self.auth.is_none() {
            return Some(c);
        }
        let (gate, auth) = self.auth_of(id)?;
        if auth.admitted() {
            return Some(c); // a parked CONNECT replayed
        }
        let login = match c.username.as_deref() {
            Some(user) if auth.certified => Login::Accepted(Some(user.into())),
            user => gate.login(now, auth.peer, user, c.password.as_deref()),
        };
        let code = match login {
            Login::Accepted(user) => {
                gate.admit(auth, user, client_id.clone());
                return Some(c);
            }
            Login::Later => {
                self.park_connect(now, id, c, deadline, ticket);
                return None;
            }
            Login::Refused(Refusal::BadCredentials) => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            Login::Refused(Refusal::NotAuthorized) => ReasonCode::NOT_AUTHORIZED,
            // 3.1.1: 0x03 server unavailable.
            Login::Refused(Refusal::BackingOff) => ReasonCode::CONNECTION_RATE_EXCEEDED,
        };
        tracing::debug!(?id, user = ?c.username, %code, "login refused");
        self.stats.auth_refused += 1;
        self.refuse(id, code);
        None
    }

    /// After a reload (a new rules generation), closes every connection whose login
    /// the new rules would refuse: its user was removed from the password file or
    /// given a new password, or it has no verified password and anonymous access is
    /// off now (Mosquitto does the same on SIGHUP). MQTT 5 clients are told why
    /// (DISCONNECT 0x98, administrative action); the will is published if the ACL in
    /// force lets the client write its topic. One atomic load when nothing changed.
    pub(super) fn revoke_stale_logins(&mut self, now: Instant) {
        let Some(state) = self.auth.as_deref_mut() else {
            return;
        };
        let generation = state.gate.generation();
        if generation == state.judged {
            return;
        }
        state.judged = generation;
        let mut revoked = Vec::new();
        for (slot, entry) in state.conns.iter().enumerate() {
            let Some((gen, auth)) = entry else {
                continue;
            };
            let id = ConnId {
                slot: slot as u32,
                gen: *gen,
            };
            if auth.admitted() && live(&self.conns, id) && !state.gate.still_admitted(auth) {
                revoked.push(id);
            }
        }
        for id in revoked {
            tracing::info!(?id, "login no longer admitted after reload, closing");
            self.stats.auth_revoked += 1;
            self.send_disconnect(id, ReasonCode::ADMINISTRATIVE_ACTION);
            self.end_conn(now, id);
        }
    }

    /// May connection `id` publish to `topic` (PUBLISH or its Will)? Counts denials.
    pub(super) fn may_write(&mut self, id: ConnId, topic: &str) -> bool {
        if self.auth.is_none() {
            return true;
        }
        let ok = self
            .auth_of(id)
            .is_some_and(|(gate, a)| gate.allows(a, topic, Access::Write));
        if !ok {
            self.stats.acl_denied_publish += 1;
        }
        ok
    }

    /// May connection `id` subscribe to `filter`? A shared subscription
    /// (`$share/GROUP/FILTER`) is judged by its FILTER. Counts denials.
    pub(super) fn may_subscribe(&mut self, id: ConnId, filter: &TopicFilter) -> bool {
        if self.auth.is_none() {
            return true;
        }
        let inner = match filter.shared() {
            Some(Ok((_, inner))) => inner,
            _ => filter.clone(),
        };
        let ok = self
            .auth_of(id)
            .is_some_and(|(gate, a)| gate.allows_subscribe(a, inner.as_str()));
        if !ok {
            self.stats.acl_denied_subscribe += 1;
        }
        ok
    }

    /// May the session's connection receive `topic`? An offline session may queue
    /// it: it is checked when it leaves the queue, against the connection then.
    pub(super) fn may_deliver(&mut self, key: usize, topic: &str) -> bool {
        if self.auth.is_none() {
            return true;
        }
        match self.sessions.get(key).and_then(|s| s.conn) {
            Some(id) => may_read(&mut self.auth, &self.conns, &mut self.stats, id, topic),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    //! One shard with authentication on a virtual clock: the budget of slow
    //! verifications parks CONNECTs to the next turn, denials are counted, and a
    //! reload closes the logins it no longer admits.

    use super::Shard;
    use crate::auth::hash::PasswordHash;
    use crate::auth::{AuthShared, Rules};
    use crate::broker::registry::Registry;
    use crate::broker::ConnId;
    use crate::config::Config;
    use crate::protocol::*;
    use bytes::{Bytes, BytesMut};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    struct H {
        shard: Shard,
        now: Instant,
        slot: u32,
        /// How `recv` decodes what the shard wrote.
        version: ProtocolVersion,
        /// The rules the shard's gate reads (replace them to reload).
        shared: Arc<AuthShared>,
    }

    impl H {
        fn new(passwd: &str, acl: &str) -> H {
            let cfg = Arc::new(Config {
                sys_interval_secs: 0,
                ..Config::default()
            });
            let now = Instant::now();
            let mut shard = Shard::new(0, 1, cfg, Arc::new(Registry::new()), now);
            let rules = Rules::from_texts(Some(passwd), Some(acl), None).unwrap();
            let shared = AuthShared::from_rules(rules);
            shard.set_auth(shared.clone());
            H {
                shard,
                now,
                slot: 0,
                version: ProtocolVersion::V3_1_1,
                shared,
            }
        }

        fn connect(&mut self, client: &str, user: &str, pass: &str) -> ConnId {
            self.connect_v(client, user, pass, ProtocolVersion::V3_1_1)
        }

        fn connect_v(
            &mut self,
            client: &str,
            user: &str,
            pass: &str,
            version: ProtocolVersion,
        ) -> ConnId {
            self.slot += 1;
            let id = ConnId {
                slot: self.slot,
                gen: 1,
            };
            self.shard.open(self.now, id);
            self.shard.set_peer(id, "127.0.0.9".parse().unwrap());
            let c = Connect {
                version,
                clean_session: true,
                keep_alive_secs: 0,
                client_id: client.into(),
                will: None,
                username: Some(user.into()),
                password: Some(Bytes::copy_from_slice(pass.as_bytes())),
                props: Default::default(),
            };
            self.shard
                .packet(self.now, id, Packet::Connect(Box::new(c)));
            id
        }

        fn recv(&mut self, id: ConnId) -> Vec<Packet> {
            let tx = match self.shard.tx_mut(id) {
                Some(tx) => std::mem::take(tx),
                None => {
                    let close = &mut self.shard.effects().close;
                    match close.iter().position(|(c, _)| *c == id) {
                        Some(i) => close.remove(i).1,
                        None => Vec::new(),
                    }
                }
            };
            let mut buf = BytesMut::from(&tx[..]);
            let mut out = Vec::new();
            let version = self.version;
            while let Some(p) = decode_one_v(&mut buf, usize::MAX, version).unwrap() {
                out.push(p);
            }
            out
        }

        fn connack(&mut self, id: ConnId) -> Option<ReasonCode> {
            self.recv(id).into_iter().find_map(|p| match p {
                Packet::ConnAck(a) => Some(a.code),
                _ => None,
            })
        }
    }

    fn passwd(users: &[(&str, &str)]) -> String {
        users
            .iter()
            .map(|(u, p)| format!("{u}:{}\n", PasswordHash::new(p.as_bytes(), 10).unwrap()))
            .collect()
    }

    #[test]
    fn connects_beyond_the_turns_budget_wait_for_the_next_turn() {
        let pw = passwd(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let mut h = H::new(&pw, "pattern readwrite %c/#\n");
        let ids = [
            h.connect("ca", "a", "1"),
            h.connect("cb", "b", "2"),
            h.connect("cc", "c", "3"),
        ];
        let first: Vec<_> = ids.iter().map(|&id| h.connack(id)).collect();
        let budget = crate::auth::gate::SLOW_VERIFICATIONS_PER_TURN as usize;
        assert_eq!(
            first
                .iter()
                .filter(|c| **c == Some(ReasonCode::SUCCESS))
                .count(),
            budget
        );
        assert_eq!(first.iter().filter(|c| c.is_none()).count(), 3 - budget);
        h.now += Duration::from_millis(2);
        h.shard.tick(h.now);
        let late: Vec<ConnId> = ids
            .iter()
            .zip(&first)
            .filter(|(_, code)| code.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            assert_eq!(h.connack(id), Some(ReasonCode::SUCCESS));
        }
    }

    #[test]
    fn a_reload_closes_the_logins_it_no_longer_admits() {
        let pw = passwd(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let acl = "pattern readwrite %c/#\n";
        let mut h = H::new(&pw, acl);
        h.version = ProtocolVersion::V5;
        let a = h.connect_v("ca", "a", "1", ProtocolVersion::V5);
        let b = h.connect_v("cb", "b", "2", ProtocolVersion::V5);
        assert_eq!(h.connack(a), Some(ReasonCode::SUCCESS));
        assert_eq!(h.connack(b), Some(ReasonCode::SUCCESS));
        h.now += Duration::from_millis(1);
        let c = h.connect_v("cc", "c", "3", ProtocolVersion::V5);
        assert_eq!(h.connack(c), Some(ReasonCode::SUCCESS));
        // Nothing changed: a tick closes nothing.
        h.shard.tick(h.now);
        assert!(h.shard.effects().close.is_empty());
        // a is removed, b gets a new password, c's line stays as it was (the gate
        // keeps no password, so even a new hash of the same password would count as
        // a new password).
        let c_line = pw.lines().find(|l| l.starts_with("c:")).unwrap();
        let new = format!("{}{c_line}\n", passwd(&[("b", "new")]));
        let rules = Rules::from_texts(Some(&new), Some(acl), None).unwrap();
        h.shared.replace(rules);
        h.shard.tick(h.now);
        for id in [a, b] {
            let got = h.recv(id);
            assert_eq!(
                got,
                vec![Packet::Disconnect(Disconnect::new(
                    ReasonCode::ADMINISTRATIVE_ACTION
                ))]
            );
        }
        assert!(h.shard.tx_mut(c).is_some(), "c stays connected");
        assert_eq!(h.shard.stats().auth_revoked, 2);
        assert_eq!(h.shard.stats().clients_connected, 1);
        // Judged once per reload: the next tick closes nothing more.
        h.shard.tick(h.now);
        assert_eq!(h.shard.stats().auth_revoked, 2);
        // Turning anonymous access on does not admit what the password file refuses.
        let rules = Rules::from_texts(Some(c_line), Some(acl), Some(true)).unwrap();
        h.shared.replace(rules);
        h.shard.tick(h.now);
        assert!(h.shard.tx_mut(c).is_some());
    }

    #[test]
    fn refusals_and_denials_are_counted() {
        let pw = passwd(&[("a", "1")]);
        let mut h = H::new(&pw, "user a\ntopic readwrite a/#\n");
        let bad = h.connect("x", "a", "wrong");
        assert_eq!(h.connack(bad), Some(ReasonCode::BAD_USER_NAME_OR_PASSWORD));
        h.now += Duration::from_millis(1);
        let id = h.connect("ca", "a", "1");
        assert_eq!(h.connack(id), Some(ReasonCode::SUCCESS));
        let f = |s: &str| TopicFilter::new(s).unwrap();
        let sub = Subscribe {
            packet_id: PacketId::new(1).unwrap(),
            filters: vec![
                (f("a/#"), QoS::AtMostOnce.into()),
                (f("b/#"), QoS::AtMostOnce.into()),
            ],
            props: Default::default(),
        };
        h.shard.packet(h.now, id, Packet::Subscribe(sub));
        let publish = |t: &str| {
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: TopicName::new(t).unwrap(),
                packet_id: PacketId::new(2),
                payload: Bytes::from_static(b"x"),
                props: Default::default(),
            })
        };
        h.shard.packet(h.now, id, publish("b/1"));
        h.shard.packet(h.now, id, publish("a/1"));
        let got = h.recv(id);
        let codes = got.iter().find_map(|p| match p {
            Packet::SubAck(s) => Some(s.codes.clone()),
            _ => None,
        });
        assert_eq!(
            codes,
            Some(vec![
                ReasonCode::granted(QoS::AtMostOnce),
                ReasonCode::UNSPECIFIED_ERROR
            ])
        );
        let topics: Vec<&str> = got
            .iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p.topic.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(topics, ["a/1"]);
        let acks = got
            .iter()
            .filter(|p| matches!(p, Packet::PubAck(_)))
            .count();
        assert_eq!(acks, 2, "the denied publish is acknowledged too");
        let s = h.shard.stats();
        assert_eq!(s.auth_refused, 1);
        assert_eq!(s.acl_denied_subscribe, 1);
        assert_eq!(s.acl_denied_publish, 1);
    }

    #[test]
    fn mqtt5_clients_get_reason_codes() {
        let pw = passwd(&[("a", "1")]);
        let mut h = H::new(&pw, "user a\ntopic readwrite a/#\n");
        h.version = ProtocolVersion::V5;
        let bad = h.connect_v("x", "a", "wrong", ProtocolVersion::V5);
        assert_eq!(h.connack(bad), Some(ReasonCode::BAD_USER_NAME_OR_PASSWORD));
        h.now += Duration::from_millis(1);
        let id = h.connect_v("ca", "a", "1", ProtocolVersion::V5);
        assert_eq!(h.connack(id), Some(ReasonCode::SUCCESS));
        let f = |s: &str| TopicFilter::new(s).unwrap();
        let sub = Subscribe {
            packet_id: PacketId::new(1).unwrap(),
            filters: vec![
                (f("$share/g/a/#"), QoS::AtMostOnce.into()),
                (f("b/#"), QoS::AtMostOnce.into()),
            ],
            props: Default::default(),
        };
        h.shard.packet(h.now, id, Packet::Subscribe(sub));
        h.shard.packet(
            h.now,
            id,
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: TopicName::new("b/1").unwrap(),
                packet_id: PacketId::new(2),
                payload: Bytes::from_static(b"x"),
                props: Default::default(),
            }),
        );
        let got = h.recv(id);
        let codes = got.iter().find_map(|p| match p {
            Packet::SubAck(s) => Some(s.codes.clone()),
            _ => None,
        });
        assert_eq!(
            codes,
            Some(vec![
                ReasonCode::granted(QoS::AtMostOnce),
                ReasonCode::NOT_AUTHORIZED
            ]),
            "a shared subscription is judged by its inner filter"
        );
        let ack = got.iter().find_map(|p| match p {
            Packet::PubAck(a) => Some(a.reason),
            _ => None,
        });
        assert_eq!(ack, Some(ReasonCode::NOT_AUTHORIZED));
    }
}
