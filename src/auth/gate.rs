//! One worker's view of authentication and authorization: the login decision, the
//! per-connection compiled ACL, and the caches that keep both cheap.
//!
//! Owns: [`Gate`] (one per worker, never shared: a snapshot of the rules, a cache of
//! successful password verifications, a budget of slow verifications per event-loop
//! turn) and [`ConnAuth`] (one per connection: peer address, identity, compiled
//! ACL with its decision cache).
//! Must not: read the clock or perform IO. The only shared state it touches is
//! [`AuthShared`]: an atomic generation load per check (a read of a cache line that
//! is written only on reload), the rules' lock when that generation changed, and the
//! back-off table's lock on a CONNECT with credentials. Nothing shared is locked per
//! message.

use super::acl::{Access, CompiledAcl, ConnAcl};
use super::hash::{PasswordHash, ITERATIONS_DEFAULT, KEY_BYTES};
use super::{AuthShared, Rules};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha512;
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Instant;
use subtle::ConstantTimeEq;

/// Slow (PBKDF2) verifications one worker runs per event-loop turn; further
/// CONNECTs in that turn wait a millisecond. Bounds the stall a connect storm of
/// first-time logins can cause to the worker's other connections (about 2 x 6.5 ms
/// at the default iteration count).
pub const SLOW_VERIFICATIONS_PER_TURN: u32 = 2;
/// Successful verifications remembered per worker; the cache is cleared when full.
pub const VERIFIED_CACHED_MAX: usize = 65_536;

/// How a CONNECT's credentials were judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// Accepted as this user (None: anonymous).
    Accepted(Option<Arc<str>>),
    Refused(Refusal),
    /// This turn's budget of slow verifications is spent: ask again shortly.
    Later,
}

/// Why a CONNECT was refused. The CONNACK codes (MQTT 3.1.1, 3.2.2.3), as
/// Mosquitto answers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 0x04: a user name with a wrong or missing password, or an unknown user.
    BadCredentials,
    /// 0x05: no user name while anonymous access is off (or no way to verify one).
    NotAuthorized,
    /// 0x03 (server unavailable, try later): the address is backing off after
    /// repeated failures; the password was not looked at.
    BackingOff,
}

/// Authentication state of one connection (boxed in the shard's side table, and
/// only when authentication is configured).
#[derive(Debug, Clone, Default)]
pub struct ConnAuth {
    /// The peer's address, for the back-off; None when the runtime did not say.
    pub peer: Option<IpAddr>,
    /// The runtime vouched for the user name (TLS client certificate).
    pub certified: bool,
    /// Set by a successful login.
    identity: Option<Identity>,
    /// The rules generation `acl` was compiled from.
    generation: u64,
    /// None: no ACL file, everything allowed.
    acl: Option<ConnAcl>,
}

impl ConnAuth {
    /// True once a login was accepted on this connection.
    pub fn admitted(&self) -> bool {
        self.identity.is_some()
    }
}

#[derive(Debug, Clone)]
struct Identity {
    user: Option<Arc<str>>,
    client_id: Arc<str>,
    /// A fingerprint of the stored key the password was verified against at login
    /// ([`key_fingerprint`]); None when no password was verified (anonymous, an
    /// unverified user name, a certificate).
    verified_key: Option<NonZeroU64>,
}

/// One worker's authentication state.
pub struct Gate {
    shared: Arc<AuthShared>,
    generation: u64,
    rules: Arc<Rules>,
    /// User -> (the stored key it was verified against, keyed MAC of the password).
    verified: HashMap<Box<str>, ([u8; KEY_BYTES], [u8; 64])>,
    /// Random per worker: the MACs above mean nothing outside this process.
    mac_key: [u8; 32],
    /// Stands in for an unknown user's hash, so unknown and known users cost the same.
    dummy: PasswordHash,
    /// The turn (its `now`) and the slow verifications run in it.
    budget: (Option<Instant>, u32),
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("generation", &self.generation)
            .field("verified", &self.verified.len())
            .finish_non_exhaustive()
    }
}

/// 64 bits of a stored key, enough to tell whether a user's password file entry
/// changed (a new password or a new salt makes a new key; two keys agreeing on 64
/// bits by chance is as likely as guessing them), at 8 bytes per connection instead
/// of the whole key. Not secret: it never leaves the process and proves nothing.
fn key_fingerprint(key: &[u8; KEY_BYTES]) -> NonZeroU64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&key[..8]);
    NonZeroU64::new(u64::from_le_bytes(first) | 1).unwrap_or(NonZeroU64::MIN)
}

/// Iterations of the stand-in hash for unknown users: as many as a real user's.
fn dummy_iterations(rules: &Rules) -> u32 {
    rules
        .passwords
        .as_ref()
        .and_then(|p| p.typical_iterations())
        .unwrap_or(ITERATIONS_DEFAULT)
}

impl Gate {
    pub fn new(shared: Arc<AuthShared>) -> Gate {
        let (generation, rules) = shared.snapshot();
        let mut mac_key = [0u8; 32];
        // Without OS randomness the key stays fixed: the cache still only holds
        // MACs of correct passwords, and MACs never leave the process.
        if let Err(e) = getrandom::fill(&mut mac_key) {
            tracing::warn!(error = %e, "no OS randomness for the verification cache key");
        }
        let dummy = PasswordHash {
            iterations: dummy_iterations(&rules),
            salt: vec![0x5a; 16],
            key: [0; KEY_BYTES],
            format: super::hash::Format::Phc,
        };
        Gate {
            shared,
            generation,
            rules,
            verified: HashMap::new(),
            mac_key,
            dummy,
            budget: (None, 0),
        }
    }

    /// Picks up reloaded rules (one atomic load when nothing changed).
    fn refresh(&mut self) {
        if self.shared.generation() != self.generation {
            let (generation, rules) = self.shared.snapshot();
            self.generation = generation;
            self.dummy.iterations = dummy_iterations(&rules);
            self.rules = rules;
        }
    }

    /// Judges a CONNECT's credentials at `now` (the turn's time).
    pub fn login(
        &mut self,
        now: Instant,
        peer: Option<IpAddr>,
        user: Option<&str>,
        password: Option<&[u8]>,
    ) -> Login {
        self.refresh();
        let rules = self.rules.clone();
        let Some(user) = user else {
            return if rules.allow_anonymous {
                Login::Accepted(None)
            } else {
                Login::Refused(Refusal::NotAuthorized)
            };
        };
        let Some(passwords) = &rules.passwords else {
            // No password file: a user name is an unverified claim, accepted only
            // where anonymous clients are (as Mosquitto does).
            return if rules.allow_anonymous {
                Login::Accepted(Some(user.into()))
            } else {
                Login::Refused(Refusal::NotAuthorized)
            };
        };
        if peer.is_some_and(|ip| self.shared.backoff_blocked(ip, now)) {
            return Login::Refused(Refusal::BackingOff);
        }
        let stored = passwords.get(user);
        let ok = match (stored, password) {
            (_, None) => false,
            (Some(h), Some(pw)) if self.cached(user, h, pw) => true,
            (stored, Some(pw)) => {
                if !self.take_budget(now) {
                    return Login::Later;
                }
                match stored {
                    Some(h) => {
                        let ok = h.verify(pw);
                        if ok {
                            self.remember(user, h, pw);
                        }
                        ok
                    }
                    None => {
                        // Same cost as a known user, so timing does not tell.
                        let _ = self.dummy.verify(pw);
                        false
                    }
                }
            }
        };
        if ok {
            return Login::Accepted(Some(user.into()));
        }
        if let Some(ip) = peer {
            self.shared.backoff_failure(ip, now);
        }
        Login::Refused(Refusal::BadCredentials)
    }

    fn take_budget(&mut self, now: Instant) -> bool {
        if self.budget.0 != Some(now) {
            self.budget = (Some(now), 0);
        }
        if self.budget.1 >= SLOW_VERIFICATIONS_PER_TURN {
            return false;
        }
        self.budget.1 += 1;
        true
    }

    fn mac(&self, user: &str, password: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        if let Ok(mut m) = <Hmac<Sha512> as KeyInit>::new_from_slice(&self.mac_key) {
            m.update(&(user.len() as u64).to_be_bytes());
            m.update(user.as_bytes());
            m.update(password);
            out.copy_from_slice(&m.finalize().into_bytes());
        }
        out
    }

    /// True if this password was verified before against this very hash.
    fn cached(&self, user: &str, stored: &PasswordHash, password: &[u8]) -> bool {
        let Some((key, mac)) = self.verified.get(user) else {
            return false;
        };
        let same_entry: bool = key.ct_eq(&stored.key).into();
        let same_password: bool = mac.ct_eq(&self.mac(user, password)).into();
        same_entry && same_password
    }

    fn remember(&mut self, user: &str, stored: &PasswordHash, password: &[u8]) {
        if self.verified.len() >= VERIFIED_CACHED_MAX && !self.verified.contains_key(user) {
            self.verified.clear();
        }
        let mac = self.mac(user, password);
        self.verified.insert(user.into(), (stored.key, mac));
    }

    /// The connection's state after an accepted login: its ACL is compiled now
    /// (`%c`/`%u` substituted once).
    pub fn admit(&mut self, conn: &mut ConnAuth, user: Option<Arc<str>>, client_id: Arc<str>) {
        // An accepted user name with a password file in force, not vouched for by a
        // certificate, was verified against its entry: remember which one.
        let verified_key = match (&user, &self.rules.passwords) {
            (Some(u), Some(passwords)) if !conn.certified => {
                passwords.get(u).map(|h| key_fingerprint(&h.key))
            }
            _ => None,
        };
        conn.identity = Some(Identity {
            user,
            client_id,
            verified_key,
        });
        self.compile(conn);
    }

    /// The generation of the rules in force (picking up a reload first).
    pub fn generation(&mut self) -> u64 {
        self.refresh();
        self.generation
    }

    /// Would the rules in force still admit this connection's login? False when its
    /// user was removed from the password file or given another password, or when it
    /// logged in without a verified password (anonymous, or an unverified user name)
    /// and anonymous access is now off. A login vouched for by a certificate, and a
    /// connection not logged in yet, are not judged here.
    pub fn still_admitted(&mut self, conn: &ConnAuth) -> bool {
        self.refresh();
        let Some(id) = &conn.identity else {
            return true;
        };
        if conn.certified {
            return true;
        }
        match (&id.verified_key, &id.user, &self.rules.passwords) {
            (Some(key), Some(user), Some(passwords)) => passwords
                .get(user)
                .is_some_and(|h| key_fingerprint(&h.key) == *key),
            _ => self.rules.allow_anonymous,
        }
    }

    fn compile(&self, conn: &mut ConnAuth) {
        conn.generation = self.generation;
        conn.acl = match (&self.rules.acl, &conn.identity) {
            (None, _) => None,
            (Some(file), Some(id)) => Some(ConnAcl::new(
                file.compile(id.user.as_deref(), &id.client_id),
            )),
            // Not logged in: the empty rule set, nothing allowed.
            (Some(_), None) => Some(ConnAcl::new(CompiledAcl::deny_all())),
        };
    }

    /// Recompiles the connection's rules if they were reloaded since.
    fn current<'a>(&mut self, conn: &'a mut ConnAuth) -> Option<&'a mut ConnAcl> {
        self.refresh();
        if conn.generation != self.generation {
            self.compile(conn);
        }
        conn.acl.as_mut()
    }

    /// May this connection publish to (`Write`) or receive from (`Read`) `topic`?
    pub fn allows(&mut self, conn: &mut ConnAuth, topic: &str, access: Access) -> bool {
        self.current(conn)
            .is_none_or(|acl| acl.allows(topic, access))
    }

    /// May this connection subscribe to `filter`?
    pub fn allows_subscribe(&mut self, conn: &mut ConnAuth, filter: &str) -> bool {
        self.current(conn)
            .is_none_or(|acl| acl.allows_subscribe(filter))
    }

    /// Successful verifications cached (for tests).
    pub fn verified_cached(&self) -> usize {
        self.verified.len()
    }
}

#[cfg(test)]
mod size_tests {
    /// One per connection while authentication is on (see ARCHITECTURE.md, Memory).
    #[test]
    fn conn_auth_stays_small() {
        let n = std::mem::size_of::<super::ConnAuth>();
        assert!(n <= 160, "{n}");
    }
}
