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
        return true; // a stale id: the caller's own checks handle it
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

#[cfg(test)]
mod tests {
    //! One shard with authentication on a virtual clock: the budget of slow
    //! verifications parks CONNECTs to the next turn, and denials are counted.

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
            shard.set_auth(AuthShared::from_rules(rules));
            H {
                shard,
                now,
                slot: 0,
            }
        }

        fn connect(&mut self, client: &str, user: &str, pass: &str) -> ConnId {
            self.slot += 1;
            let id = ConnId {
                slot: self.slot,
                gen: 1,
            };
            self.shard.open(self.now, id);
            self.shard.set_peer(id, "127.0.0.9".parse().unwrap());
            let c = Connect {
                version: ProtocolVersion::V3_1_1,
                clean_session: true,
                keep_alive_secs: 0,
                client_id: client.into(),
                will: None,
                username: Some(user.into()),
                password: Some(Bytes::copy_from_slice(pass.as_bytes())),
            };
            self.shard.packet(self.now, id, Packet::Connect(c));
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
            while let Some(p) = decode_one(&mut buf, usize::MAX).unwrap() {
                out.push(p);
            }
            out
        }

        fn connack(&mut self, id: ConnId) -> Option<ConnectReturnCode> {
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
                .filter(|c| **c == Some(ConnectReturnCode::Accepted))
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
            assert_eq!(h.connack(id), Some(ConnectReturnCode::Accepted));
        }
    }

    #[test]
    fn refusals_and_denials_are_counted() {
        let pw = passwd(&[("a", "1")]);
        let mut h = H::new(&pw, "user a\ntopic readwrite a/#\n");
        let bad = h.connect("x", "a", "wrong");
        assert_eq!(
            h.connack(bad),
            Some(ConnectReturnCode::BadUserNameOrPassword)
        );
        h.now += Duration::from_millis(1);
        let id = h.connect("ca", "a", "1");
        assert_eq!(h.connack(id), Some(ConnectReturnCode::Accepted));
        let f = |s: &str| TopicFilter::new(s).unwrap();
        let sub = Subscribe {
            packet_id: PacketId::new(1).unwrap(),
            filters: vec![(f("a/#"), QoS::AtMostOnce), (f("b/#"), QoS::AtMostOnce)],
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
                SubAckCode::Granted(QoS::AtMostOnce),
                SubAckCode::Failure
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
}
