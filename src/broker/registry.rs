//! The client-id registry: which worker holds each client's session.
//!
//! Owns: the one structure shared by all workers, and the serialization of takeovers:
//! each CONNECT takes a ticket on arrival; a claim is refused while another takeover
//! of the same id is in flight (`busy`) and for good once a later CONNECT has tried
//! (`max_ticket`), so the newest connection wins and takeovers never overlap.
//! It is touched only on CONNECT and when a takeover or a session ends, never per
//! message, and is sharded so that a reconnect storm does not serialize on one lock.
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
    /// Source of CONNECT tickets: strictly increasing.
    next_ticket: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The owner's `WorkerId`, narrowed (at most `WORKERS_MAX`): one map entry per
    /// client id, so every byte counts.
    worker: u16,
    /// A takeover from another worker is in flight: new claims wait until the
    /// claimer finishes it, so takeovers of one client never overlap.
    busy: bool,
    /// The newest ticket that tried to claim: older waiting CONNECTs are obsolete.
    max_ticket: u64,
}

fn narrow(worker: WorkerId) -> u16 {
    debug_assert!(worker < super::WORKERS_MAX);
    worker as u16
}

/// Why a claim did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Another takeover of the client id is in flight: try again shortly.
    Busy,
    /// A CONNECT that arrived later has tried to claim the id: this one is obsolete.
    Stale,
}

/// The result of [`Registry::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The worker that owned the id before this claim.
    pub prev: Option<WorkerId>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
            next_ticket: AtomicU64::new(1),
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

    /// A ticket for a CONNECT, taken when it arrives: it orders the claims of one
    /// client id by arrival, even when some have to wait.
    pub fn ticket(&self) -> u64 {
        self.next_ticket.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes `worker` the owner of `client_id` for the CONNECT holding `ticket`. Refused while another takeover of the
    /// id is in flight, or for good if a later CONNECT has tried to claim it since.
    /// Claiming from another owner starts a takeover, which the claimer ends with
    /// [`finish`](Self::finish).
    pub fn claim(
        &self,
        client_id: &Arc<str>,
        worker: WorkerId,
        ticket: u64,
    ) -> Result<Claim, Refused> {
        let mut shard = self.shard(client_id);
        if let Some(e) = shard.get_mut(client_id) {
            if ticket < e.max_ticket {
                return Err(Refused::Stale);
            }
            e.max_ticket = ticket;
            if e.busy {
                return Err(Refused::Busy);
            }
        }
        let prev = shard.get(client_id).map(|e| WorkerId::from(e.worker));
        shard.insert(
            client_id.clone(),
            Entry {
                worker: narrow(worker),
                busy: prev.is_some_and(|p| p != worker),
                max_ticket: ticket,
            },
        );
        Ok(Claim { prev })
    }

    /// The takeover started by `worker`'s claim is over.
    pub fn finish(&self, client_id: &str, worker: WorkerId) {
        if let Some(e) = self.shard(client_id).get_mut(client_id) {
            if WorkerId::from(e.worker) == worker {
                e.busy = false;
            }
        }
    }

    /// Forgets `client_id` if `worker` still owns it (a session that ended there).
    pub fn release(&self, client_id: &str, worker: WorkerId) -> bool {
        let mut shard = self.shard(client_id);
        if shard
            .get(client_id)
            .is_some_and(|e| WorkerId::from(e.worker) == worker)
        {
            shard.remove(client_id);
            true
        } else {
            false
        }
    }

    pub fn owner(&self, client_id: &str) -> Option<WorkerId> {
        self.shard(client_id)
            .get(client_id)
            .map(|e| WorkerId::from(e.worker))
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
                    .map(|(k, e)| (k.clone(), WorkerId::from(e.worker)))
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
        let a = r.claim(&c, 0, r.ticket()).unwrap();
        assert_eq!(a.prev, None);
        let b = r.claim(&c, 1, r.ticket()).unwrap();
        assert_eq!(b.prev, Some(0));
        let (t1, t2) = (r.ticket(), r.ticket());
        assert_eq!(
            r.claim(&c, 0, t1),
            Err(Refused::Busy),
            "worker 1's takeover is in flight"
        );
        assert_eq!(r.claim(&c, 2, t2), Err(Refused::Busy));
        r.finish("dev-1", 0);
        assert_eq!(
            r.claim(&c, 0, t1),
            Err(Refused::Stale),
            "a later CONNECT tried since"
        );
        r.finish("dev-1", 1);
        assert!(r.claim(&c, 2, t2).is_ok(), "the latest arrival wins");
        assert!(!r.release("dev-1", 1), "a stale owner cannot release");
        assert_eq!(r.owner("dev-1"), Some(2));
        assert!(r.release("dev-1", 2));
        assert!(r.is_empty());
    }
}
