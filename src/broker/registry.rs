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
    shards: Vec<Mutex<HashMap<Arc<str>, Entry>>>,
    hasher: std::collections::hash_map::RandomState,
    /// Source of claim generations: strictly increasing across all claims.
    next_gen: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    worker: WorkerId,
    /// Generation of the latest claim.
    gen: u64,
    /// Generation of the latest claim that asked for a clean session.
    last_clean: u64,
}

/// The result of [`Registry::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// Orders claims of one client id: a later claim has a larger generation, so a
    /// worker can tell a stale takeover request from a current one.
    pub gen: u64,
    /// The worker that owned the id before this claim.
    pub prev: Option<WorkerId>,
    /// Generation of the latest earlier claim that asked for a clean session (0 if
    /// none). A session last attached before it must be discarded even if the claim
    /// that asked never completed: clean starts take effect in claim order.
    pub last_clean: u64,
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

    fn shard(&self, client_id: &str) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Entry>> {
        let i = (self.hasher.hash_one(client_id) as usize) % SHARDS;
        // A poisoned shard only means another worker panicked mid-update of a plain
        // map entry; the map itself is still consistent.
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `worker` the owner of `client_id` for a connection that asked for a
    /// clean session or not.
    pub fn claim(&self, client_id: &Arc<str>, worker: WorkerId, clean: bool) -> Claim {
        let mut shard = self.shard(client_id);
        // Taken under the shard lock, so generations follow the order of claims.
        let gen = self.next_gen.fetch_add(1, Ordering::Relaxed);
        let old = shard.get(client_id).copied();
        let last_clean = old.map_or(0, |e| e.last_clean);
        shard.insert(
            client_id.clone(),
            Entry {
                worker,
                gen,
                last_clean: if clean { gen } else { last_clean },
            },
        );
        Claim {
            gen,
            prev: old.map(|e| e.worker),
            last_clean,
        }
    }

    /// Forgets `client_id` if `worker` still owns it (a session that ended there).
    pub fn release(&self, client_id: &str, worker: WorkerId) -> bool {
        let mut shard = self.shard(client_id);
        if shard.get(client_id).is_some_and(|e| e.worker == worker) {
            shard.remove(client_id);
            true
        } else {
            false
        }
    }

    /// The latest claim of `client_id`: its generation and worker.
    pub fn latest(&self, client_id: &str) -> Option<(u64, WorkerId)> {
        self.shard(client_id)
            .get(client_id)
            .map(|e| (e.gen, e.worker))
    }

    pub fn owner(&self, client_id: &str) -> Option<WorkerId> {
        self.shard(client_id).get(client_id).map(|e| e.worker)
    }

    /// Number of client ids known (sessions, live or persistent).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Every client id known, with its owner (for diagnostics and tests).
    pub fn entries(&self) -> Vec<(Arc<str>, WorkerId)> {
        self.shards
            .iter()
            .flat_map(|s| {
                let s = s.lock().unwrap_or_else(PoisonError::into_inner);
                s.iter()
                    .map(|(k, e)| (k.clone(), e.worker))
                    .collect::<Vec<_>>()
            })
            .collect()
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
        let a = r.claim(&c, 0, true);
        assert_eq!(a.prev, None);
        let b = r.claim(&c, 1, false);
        assert_eq!(b.prev, Some(0));
        assert!(b.gen > a.gen);
        assert_eq!(b.last_clean, a.gen, "the clean claim before it");
        assert!(!r.release("dev-1", 0), "a stale owner cannot release");
        assert_eq!(r.owner("dev-1"), Some(1));
        assert!(r.release("dev-1", 1));
        assert!(r.is_empty());
    }
}
