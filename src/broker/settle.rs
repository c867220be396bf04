//! Settling after a move: how a session that has just arrived from another worker
//! takes each copy of a message, so that a message reaching it on two paths (a
//! direct copy, and a forward from its old home's stub) is taken once and in
//! publish order.
//!
//! Owns: the decision per copy (take now, hold, drop) and the bookkeeping behind it.
//! Must not: deliver or send anything; the shard acts on the decisions
//! (`shard/moved.rs` describes the protocol around it).
//!
//! While settling, direct copies are held and forwards are taken at once; a forward
//! releases its held twin and, first, any held copy from the same origin worker with
//! a smaller sequence number (the old home forwards in order, so nothing earlier from
//! that origin is still coming that way). When settling ends every copy still held is
//! taken, in arrival order.

use super::mesh::{Origin, Stamp};
use super::message::Message;
use super::WorkerId;
use crate::protocol::QoS;
use std::collections::{HashSet, VecDeque};

/// A copy waiting for the forwarding path.
#[derive(Debug, Clone)]
pub struct Held {
    pub stamp: Stamp,
    pub msg: Message,
    pub granted: QoS,
    pub origin: Option<Origin>,
}

/// What to do with a direct copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Kept in `held` for later.
    Held,
    /// Already taken, or delivered before the move.
    Drop,
}

/// The settling state of a session that moved here from `from`.
#[derive(Debug, Clone, Default)]
pub struct Settle {
    pub from: WorkerId,
    /// `from`'s routing watermark when the session left it (the last stamp it had
    /// from each worker): a copy `from` also got, at or below it, was delivered there.
    pub departed: Box<[u64]>,
    pub held: VecDeque<Held>,
    /// Stamps taken while settling.
    pub seen: HashSet<(WorkerId, u64)>,
    /// Workers still to confirm, bit per worker: `from` says its stub is gone, every
    /// other worker that everything it routed before learning the new home has
    /// arrived.
    pub waiting: u64,
}

impl Settle {
    fn had_before_move(&self, stamp: &Stamp) -> bool {
        stamp.targets & (1u64 << self.from) != 0
            && self
                .departed
                .get(stamp.worker)
                .is_some_and(|&d| stamp.seq <= d)
    }

    /// A direct copy (routed to this worker by its own index).
    pub fn direct(
        &mut self,
        stamp: Stamp,
        msg: &Message,
        granted: QoS,
        origin: Option<Origin>,
    ) -> Take {
        if self.had_before_move(&stamp) || !self.seen.insert((stamp.worker, stamp.seq)) {
            return Take::Drop;
        }
        self.held.push_back(Held {
            stamp,
            msg: msg.clone(),
            granted,
            origin,
        });
        Take::Held
    }

    /// A forwarded copy. None to drop it (already taken); otherwise the held copies
    /// to take before it.
    pub fn forward(&mut self, stamp: Stamp) -> Option<Vec<Held>> {
        match self.held.iter().position(|h| h.stamp == stamp) {
            Some(i) => {
                self.held.remove(i);
            }
            None if !self.seen.insert((stamp.worker, stamp.seq)) => return None,
            None => {}
        }
        let mut before = Vec::new();
        let mut i = 0;
        while i < self.held.len() {
            let h = &self.held[i];
            if h.stamp.worker == stamp.worker && h.stamp.seq < stamp.seq {
                before.extend(self.held.remove(i));
            } else {
                i += 1;
            }
        }
        Some(before)
    }

    /// Worker `w` has confirmed. Returns the held copies to take if that was the last.
    pub fn confirmed(&mut self, w: WorkerId) -> Option<VecDeque<Held>> {
        self.waiting &= !(1u64 << w);
        (self.waiting == 0).then(|| std::mem::take(&mut self.held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TopicName;
    use bytes::Bytes;

    fn msg() -> Message {
        Message {
            topic: TopicName::new("t").unwrap(),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: false,
        }
    }

    fn stamp(worker: WorkerId, seq: u64, targets: u64) -> Stamp {
        Stamp {
            worker,
            seq,
            targets,
        }
    }

    fn settle() -> Settle {
        Settle {
            from: 0,
            departed: vec![0, 0, 10].into_boxed_slice(),
            waiting: 0b101,
            ..Settle::default()
        }
    }

    #[test]
    fn forward_releases_its_held_twin_once() {
        let mut s = settle();
        let st = stamp(2, 17, 0b111);
        assert_eq!(s.direct(st, &msg(), QoS::AtLeastOnce, None), Take::Held);
        assert!(s.forward(st).is_some_and(|b| b.is_empty()));
        assert!(s.forward(st).is_none(), "a second copy is dropped");
        assert!(s.held.is_empty());
    }

    #[test]
    fn copies_the_old_home_had_before_the_move_are_dropped() {
        let mut s = settle();
        assert_eq!(
            s.direct(stamp(2, 9, 0b101), &msg(), QoS::AtLeastOnce, None),
            Take::Drop
        );
        assert_eq!(
            s.direct(stamp(2, 8, 0b110), &msg(), QoS::AtLeastOnce, None),
            Take::Held
        );
    }

    #[test]
    fn a_forward_releases_earlier_direct_only_copies_first() {
        let mut s = settle();
        assert_eq!(
            s.direct(stamp(2, 15, 0b110), &msg(), QoS::AtLeastOnce, None),
            Take::Held
        );
        assert_eq!(
            s.direct(stamp(2, 16, 0b111), &msg(), QoS::AtLeastOnce, None),
            Take::Held
        );
        assert_eq!(
            s.direct(stamp(1, 1, 0b011), &msg(), QoS::AtLeastOnce, None),
            Take::Held
        );
        let before = s.forward(stamp(2, 16, 0b111)).unwrap();
        assert_eq!(before.len(), 1);
        assert_eq!(before[0].stamp.seq, 15);
        assert_eq!(s.held.len(), 1, "other origins stay held");
    }

    #[test]
    fn settles_when_every_worker_confirmed() {
        let mut s = settle();
        assert_eq!(
            s.direct(stamp(1, 1, 0b010), &msg(), QoS::AtLeastOnce, None),
            Take::Held
        );
        assert!(s.confirmed(2).is_none());
        let held = s.confirmed(0).unwrap();
        assert_eq!(held.len(), 1);
    }
}
