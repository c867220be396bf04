//! Shared subscriptions (`$share/{group}/{filter}`, MQTT 5 4.8.2; also accepted from
//! 3.1.1 clients, as EMQX and Mosquitto do): each message matching a group's filter
//! goes to one member of the group, wherever the members live.
//!
//! Owns: this worker's replica of every group's membership counts per worker (kept
//! current by `SharedMember` mesh messages, like the interest index), its own local
//! members, the choice of a member (round-robin, random or sticky), and handing a
//! disconnected member's unacknowledged QoS 1 and unsent messages to another member.
//!
//! How a message finds its member: the publishing worker matches the topic against
//! the group filters, picks a *worker* in proportion to its members (by the
//! strategy), and either delivers to one of its own members or sends the message to
//! that worker, which picks one of its members. A worker that has no connected member
//! when the message arrives (the member left meanwhile) passes it on to another
//! worker with members, at most once per worker; when none is left it queues it for
//! an offline member (QoS 1/2) or drops it (counted).
//!
//! Must not: deliver a message to more than one member of a group, or send retained
//! messages on a shared subscription (4.8.2).

use super::Shard;
use crate::broker::mesh::{MeshMsg, Origin};
use crate::broker::message::Message;
use crate::broker::session::Grant;
use crate::broker::topic_index::TopicIndex;
use crate::broker::WorkerId;
use crate::config::SharedStrategy;
use crate::protocol::{QoS, TopicFilter};
use slab::Slab;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// A group's identity: share name and inner filter.
pub type GroupKey = Arc<(Arc<str>, TopicFilter)>;

/// One shared subscription group as this worker sees it.
#[derive(Debug)]
pub(crate) struct Group {
    pub key: GroupKey,
    /// Members per worker (this worker's entry counts `local`).
    pub counts: Vec<u32>,
    /// This worker's members: session key and subscription options.
    pub local: Vec<(usize, Grant)>,
    rr: u64,
    local_rr: usize,
    sticky_worker: Option<WorkerId>,
    sticky_member: Option<usize>,
}

/// Every group known to this worker.
#[derive(Default)]
pub(crate) struct SharedGroups {
    /// Inner filters; subscriber id = group slot.
    index: TopicIndex<()>,
    groups: Slab<Group>,
    by_key: HashMap<(Arc<str>, TopicFilter), usize>,
    rng: u64,
    /// Reused per publish.
    matched: Vec<u32>,
}

impl SharedGroups {
    /// True when this worker knows no shared subscription group (nothing to route).
    pub(crate) fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    fn get_or_create(&mut self, group: &str, filter: &TopicFilter, workers: usize) -> usize {
        if let Some(&g) = self.by_key.get(&(Arc::from(group), filter.clone())) {
            return g;
        }
        let name: Arc<str> = Arc::from(group);
        let filter = filter.compacted();
        let slot = self.groups.insert(Group {
            key: Arc::new((name.clone(), filter.clone())),
            counts: vec![0; workers],
            local: Vec::new(),
            rr: 0,
            local_rr: 0,
            sticky_worker: None,
            sticky_member: None,
        });
        self.index.insert(&filter, slot as u32, ());
        self.by_key.insert((name, filter), slot);
        slot
    }

    /// Forgets a group no worker has members of any more.
    fn drop_if_empty(&mut self, slot: usize) {
        let empty = self
            .groups
            .get(slot)
            .is_some_and(|g| g.counts.iter().all(|&c| c == 0));
        if empty {
            let g = self.groups.remove(slot);
            self.index.remove(&g.key.1, slot as u32);
            self.by_key.remove(&(g.key.0.clone(), g.key.1.clone()));
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: plenty for spreading load; not for anything secret.
        let mut x = self.rng.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

impl Shard {
    /// Adds a local member; true if the session was a member already (replaced).
    pub(crate) fn shared_subscribe(
        &mut self,
        key: usize,
        group: &str,
        filter: &TopicFilter,
        grant: Grant,
    ) -> bool {
        if self.shared.rng == 0 {
            self.shared.rng = 0x9E37_79B9_7F4A_7C15 ^ (self.id as u64 + 1);
        }
        let slot = self.shared.get_or_create(group, filter, self.workers);
        let me = self.id;
        let g = &mut self.shared.groups[slot];
        if let Some(m) = g.local.iter_mut().find(|(k, _)| *k == key) {
            m.1 = grant;
            return true;
        }
        g.local.push((key, grant));
        g.counts[me] += 1;
        let gk = g.key.clone();
        self.broadcast_member(gk, true);
        false
    }

    /// Removes a local member; true if the session was one.
    pub(crate) fn shared_unsubscribe(
        &mut self,
        key: usize,
        group: &str,
        filter: &TopicFilter,
    ) -> bool {
        let Some(&slot) = self.shared.by_key.get(&(Arc::from(group), filter.clone())) else {
            return false;
        };
        let me = self.id;
        let g = &mut self.shared.groups[slot];
        let Some(i) = g.local.iter().position(|(k, _)| *k == key) else {
            return false;
        };
        g.local.remove(i);
        g.counts[me] = g.counts[me].saturating_sub(1);
        if g.sticky_member == Some(key) {
            g.sticky_member = None;
        }
        let gk = g.key.clone();
        self.shared.drop_if_empty(slot);
        self.broadcast_member(gk, false);
        true
    }

    fn broadcast_member(&mut self, group: GroupKey, add: bool) {
        let me = self.id;
        for w in (0..self.workers).filter(|&w| w != me) {
            self.send_mesh(
                w,
                MeshMsg::SharedMember {
                    group: group.clone(),
                    add,
                },
            );
        }
    }

    /// `SharedMember` from another worker.
    pub(crate) fn on_shared_member(&mut self, from: WorkerId, group: GroupKey, add: bool) {
        let slot = self.shared.get_or_create(&group.0, &group.1, self.workers);
        let g = &mut self.shared.groups[slot];
        if add {
            g.counts[from] += 1;
        } else {
            g.counts[from] = g.counts[from].saturating_sub(1);
            if g.sticky_worker == Some(from) && g.counts[from] == 0 {
                g.sticky_worker = None;
            }
            self.shared.drop_if_empty(slot);
        }
    }

    /// Routes a freshly published message to one member of every matching group.
    pub(crate) fn route_shared(&mut self, now: Instant, msg: &Message, origin: Option<Origin>) {
        if self.shared.groups.is_empty() {
            return;
        }
        let mut matched = std::mem::take(&mut self.shared.matched);
        matched.clear();
        self.shared
            .index
            .for_each_match(&msg.topic, |g, ()| matched.push(g));
        for &slot in &matched {
            let Some(key) = self.shared.groups.get(slot as usize).map(|g| g.key.clone()) else {
                continue;
            };
            self.dispatch_shared(now, key, msg.clone(), origin, 0, None);
        }
        self.shared.matched = matched;
    }

    /// Picks a worker for one message of `group` (and delivers or sends it there).
    /// `visited`: workers that had no connected member for it already (bit mask).
    fn dispatch_shared(
        &mut self,
        now: Instant,
        group: GroupKey,
        msg: Message,
        origin: Option<Origin>,
        visited: u64,
        exclude: Option<usize>,
    ) {
        let Some(&slot) = self.shared.by_key.get(&(group.0.clone(), group.1.clone())) else {
            self.stats.dropped_shared_no_member += 1;
            return;
        };
        let strategy = self.cfg.shared_subscription_strategy;
        let random = self.shared.next_random();
        let me = self.id;
        let g = &mut self.shared.groups[slot];
        let eligible = |w: usize, c: u32| c > 0 && visited & (1u64 << w) == 0;
        let total: u64 = g
            .counts
            .iter()
            .enumerate()
            .filter(|&(w, &c)| eligible(w, c))
            .map(|(_, &c)| u64::from(c))
            .sum();
        if total == 0 {
            // Nobody connected anywhere: hold it for an offline member here if any.
            return self.deliver_shared_local(now, slot, msg, origin, visited, exclude, true);
        }
        let pick = match strategy {
            SharedStrategy::Sticky => match g.sticky_worker {
                Some(w) if eligible(w, g.counts[w]) => Some(w),
                _ => None,
            },
            _ => None,
        };
        let worker = pick.unwrap_or_else(|| {
            let mut k = match strategy {
                SharedStrategy::Random => random % total,
                _ => {
                    g.rr = g.rr.wrapping_add(1);
                    g.rr % total
                }
            };
            let mut chosen = me;
            for (w, &c) in g.counts.iter().enumerate() {
                if !eligible(w, c) {
                    continue;
                }
                if k < u64::from(c) {
                    chosen = w;
                    break;
                }
                k -= u64::from(c);
            }
            chosen
        });
        g.sticky_worker = Some(worker);
        if worker == me {
            self.deliver_shared_local(now, slot, msg, origin, visited, exclude, false);
        } else {
            self.send_mesh(
                worker,
                MeshMsg::Shared {
                    group,
                    msg,
                    origin,
                    visited,
                },
            );
        }
    }

    /// `Shared` from another worker: deliver to one local member, or pass it on.
    pub(crate) fn on_shared(
        &mut self,
        now: Instant,
        group: GroupKey,
        msg: Message,
        origin: Option<Origin>,
        visited: u64,
    ) {
        match self
            .shared
            .by_key
            .get(&(group.0.clone(), group.1.clone()))
            .copied()
        {
            Some(slot) => self.deliver_shared_local(now, slot, msg, origin, visited, None, false),
            None => {
                self.dispatch_shared(now, group, msg, origin, visited | (1u64 << self.id), None)
            }
        }
    }

    /// Delivers to one connected local member (not `exclude`); with none, passes
    /// the message to another worker, or (`last_resort`) to an offline member.
    #[allow(clippy::too_many_arguments)]
    fn deliver_shared_local(
        &mut self,
        now: Instant,
        slot: usize,
        mut msg: Message,
        origin: Option<Origin>,
        visited: u64,
        exclude: Option<usize>,
        last_resort: bool,
    ) {
        let strategy = self.cfg.shared_subscription_strategy;
        let random = self.shared.next_random();
        let Some(g) = self.shared.groups.get_mut(slot) else {
            return;
        };
        // Connected members other than `exclude`, picked without collecting them
        // (this runs once per shared delivery).
        let sessions = &self.sessions;
        let connected =
            |k: usize| Some(k) != exclude && sessions.get(k).is_some_and(|s| s.conn.is_some());
        let n = g.local.iter().filter(|(k, _)| connected(*k)).count();
        let group = g.key.clone();
        let chosen = if n == 0 {
            None
        } else {
            let sticky = g
                .sticky_member
                .filter(|&m| connected(m))
                .and_then(|m| g.local.iter().copied().find(|(k, _)| *k == m));
            match (strategy, sticky) {
                (SharedStrategy::Sticky, Some(m)) => Some(m),
                (strategy, _) => {
                    let i = if strategy == SharedStrategy::Random {
                        (random % n as u64) as usize
                    } else {
                        g.local_rr = g.local_rr.wrapping_add(1);
                        g.local_rr % n
                    };
                    g.local
                        .iter()
                        .copied()
                        .filter(|(k, _)| connected(*k))
                        .nth(i)
                }
            }
        };
        if let Some((key, _)) = chosen {
            g.sticky_member = Some(key);
        }
        let offline = g.local.iter().copied().find(|(k, _)| Some(*k) != exclude);
        msg.shared = Some(group.clone());
        match chosen {
            Some((key, grant)) => {
                let retain = msg.retain && grant.retain_as_published();
                self.deliver(now, key, &msg, grant.max_qos(), retain, origin);
            }
            None if !last_resort => self.dispatch_shared(
                now,
                group,
                msg,
                origin,
                visited | (1u64 << self.id),
                exclude,
            ),
            None => match offline {
                Some((key, grant)) if msg.qos.min(grant.max_qos()) != QoS::AtMostOnce => {
                    let retain = msg.retain && grant.retain_as_published();
                    self.deliver(now, key, &msg, grant.max_qos(), retain, origin);
                }
                _ => self.stats.dropped_shared_no_member += 1,
            },
        }
    }

    /// A member's connection ended: its unacknowledged QoS 1 messages and the
    /// messages still queued for it go to other members. QoS 2 messages already sent
    /// stay: MQTT 5 4.8.2 requires their delivery to complete with that client.
    pub(crate) fn redistribute_shared(&mut self, now: Instant, key: usize) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if s.inflight.is_empty() && s.queue.is_empty() {
            return;
        }
        let mut moved = s.take_shared_unacked();
        moved.retain(|m| m.shared.is_some());
        for msg in moved {
            if let Some(group) = msg.shared.clone() {
                self.dispatch_shared(now, group, msg, None, 0, Some(key));
            }
        }
    }
}
