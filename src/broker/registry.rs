//! The client-id registry: which worker holds each client's session.
//!
//! Owns: the one structure shared by all workers. It is touched only on CONNECT and
//! when a session ends, never per message, and is sharded so that a reconnect storm
//! does not serialize on one lock.
//! Must not: hold sessions themselves; moving a session is a message between workers.

use super::WorkerId;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

const SHARDS: usize = 32;

/// Client id to owning worker.
#[derive(Debug)]
pub struct Registry {
    shards: Vec<Mutex<HashMap<Arc<str>, WorkerId>>>,
    hasher: std::collections::hash_map::RandomState,
    /// Source of claim generations: strictly increasing across all claims.
    next_gen: AtomicU64,
}

/// The result of [`Registry::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// Orders claims of one client id: a later claim has a larger generation, so a
    /// worker can tell a stale takeover request from a current one.
    pub gen: u64,
    /// The worker that owned the id before this claim.
    pub prev: Option<WorkerId>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
            next_gen: AtomicU64::new(1),
        }
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    fn shard(&self, client_id: &str) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, WorkerId>> {
        let i = (self.hasher.hash_one(client_id) as usize) % SHARDS;
        // A poisoned shard only means another worker panicked mid-update of a plain
        // map entry; the map itself is still consistent.
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `worker` the owner of `client_id`.
    pub fn claim(&self, client_id: &Arc<str>, worker: WorkerId) -> Claim {
        let mut shard = self.shard(client_id);
        // Taken under the shard lock, so generations follow the order of claims.
        let gen = self.next_gen.fetch_add(1, Ordering::Relaxed);
        let prev = shard.insert(client_id.clone(), worker);
        Claim { gen, prev }
    }

    /// Forgets `client_id` if `worker` still owns it (a session that ended there).
    pub fn release(&self, client_id: &str, worker: WorkerId) -> bool {
        let mut shard = self.shard(client_id);
        if shard.get(client_id) == Some(&worker) {
            shard.remove(client_id);
            true
        } else {
            false
        }
    }

    pub fn owner(&self, client_id: &str) -> Option<WorkerId> {
        self.shard(client_id).get(client_id).copied()
    }

    /// Number of client ids known (sessions, live or persistent).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_and_release() {
        let r = Registry::new();
        let c: Arc<str> = "dev-1".into();
        let a = r.claim(&c, 0);
        assert_eq!(a.prev, None);
        let b = r.claim(&c, 1);
        assert_eq!(b.prev, Some(0));
        assert!(b.gen > a.gen);
        assert!(!r.release("dev-1", 0), "a stale owner cannot release");
        assert_eq!(r.owner("dev-1"), Some(1));
        assert!(r.release("dev-1", 1));
        assert!(r.is_empty());
    }
}
