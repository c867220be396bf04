//! Settling after a move: how a session that has just arrived from another worker
//! (or the stub it left behind when it moved on again) takes each copy of a message,
//! so that a message reaching it on several paths is taken once, in publish order.
//!
//! Owns: the decision per copy (take now, hold, drop) and the bookkeeping behind it.
//! Must not: deliver or send anything; the shard acts on the decisions
//! (`shard/moved.rs` describes the protocol around it).
//!
//! Two phases. *Settling*, until the previous home's stub is gone: direct copies are
//! held and forwards are taken at once (a forward releases its held twin). *Draining*,
//! for a grace period after that: nothing is held, but a copy whose stamp was already
//! taken, or that an earlier home had before the session left it, is dropped, because
//! a late twin may still arrive on the other path.

use super::mesh::{Origin, Stamp};
use super::message::Message;
use super::WorkerId;
use crate::protocol::QoS;
use std::collections::{HashSet, VecDeque};
use std::time::Instant;

/// A copy waiting for the forwarding path to settle.
#[derive(Debug, Clone)]
pub struct Held {
    pub stamp: Stamp,
    pub msg: Message,
    pub granted: QoS,
    pub origin: Option<Origin>,
}

/// What to do with a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Deliver (or pass on) now.
    Now,
    /// Kept in `held` for later.
    Held,
    /// Already taken, or delivered before the move.
    Drop,
}

/// The settling state of a session that moved here from `from`.
#[derive(Debug, Clone, Default)]
pub struct Settle {
    pub from: WorkerId,
    /// Each earlier home, newest first, with its routing watermark when the session
    /// left it (the last stamp it had from each worker): a copy that home also got,
    /// at or below the watermark, was delivered there before the move.
    pub departed: Vec<(WorkerId, Box<[u64]>)>,
    pub held: VecDeque<Held>,
    /// Stamps taken since the first move still in its window.
    pub seen: HashSet<(WorkerId, u64)>,
    /// None while settling; then the end of the draining period.
    pub draining_until: Option<Instant>,
}

impl Settle {
    fn had_before_move(&self, stamp: &Stamp) -> bool {
        self.departed.iter().any(|(home, d)| {
            stamp.targets & (1u64 << home) != 0
                && d.get(stamp.worker).is_some_and(|&d| stamp.seq <= d)
        })
    }

    /// True once the draining period is over: the state can be dropped.
    pub fn finished(&self, now: Instant) -> bool {
        self.draining_until.is_some_and(|t| now >= t)
    }

    /// A direct copy (routed to this worker by its own index).
    pub fn direct(
        &mut self,
        stamp: Stamp,
        msg: &Message,
        granted: QoS,
        origin: Option<Origin>,
    ) -> Take {
        let key = (stamp.worker, stamp.seq);
        if self.had_before_move(&stamp) || self.seen.contains(&key) {
            return Take::Drop;
        }
        if self.draining_until.is_some() {
            // Nothing arrives twice any more: the upstream stub is gone and a worker
            // gets one direct copy per message. So nothing new is remembered.
            return Take::Now;
        }
        self.seen.insert(key);
        self.held.push_back(Held {
            stamp,
            msg: msg.clone(),
            granted,
            origin,
        });
        Take::Held
    }

    /// A forwarded copy: taken now unless already taken. (Stubs forward only what
    /// reached them after the session left, so the departure watermarks do not
    /// apply: a copy an earlier home had may have been held there, not delivered.)
    ///
    /// Returns None to drop it, or the held copies to deliver before it: earlier
    /// messages of the same publisher's worker that reached only us directly (the
    /// old home forwards in order, so nothing earlier from there is still coming).
    pub fn forward(&mut self, stamp: Stamp) -> Option<Vec<Held>> {
        let twin = self.held.iter().position(|h| h.stamp == stamp);
        match twin {
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

    /// The previous home's stub is gone: everything held is taken now, and the state
    /// drains until `until`.
    pub fn settled(&mut self, until: Instant) -> VecDeque<Held> {
        self.draining_until = Some(until);
        std::mem::take(&mut self.held)
    }

    /// The state the session carries to its next home `next`, leaving this worker
    /// with `watermark`.
    pub fn onward(&self, here: WorkerId, watermark: Box<[u64]>) -> Settle {
        let mut departed = vec![(here, watermark)];
        departed.extend(self.departed.iter().cloned());
        // What is held here was not delivered: the stub left here passes it on.
        let held: HashSet<(WorkerId, u64)> = self
            .held
            .iter()
            .map(|h| (h.stamp.worker, h.stamp.seq))
            .collect();
        Settle {
            from: here,
            departed,
            held: VecDeque::new(),
            seen: self.seen.difference(&held).copied().collect(),
            draining_until: None,
        }
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

    #[test]
    fn forward_releases_its_held_twin_once() {
        let mut s = Settle {
            from: 0,
            ..Settle::default()
        };
        let st = stamp(2, 7, 0b111);
        assert_eq!(s.direct(st, &msg(), QoS::AtLeastOnce, None), Take::Held);
        assert!(s.forward(st).is_some_and(|b| b.is_empty()));
        assert!(s.forward(st).is_none(), "a second path brings it again");
        assert!(s.held.is_empty());
    }

    #[test]
    fn copies_the_old_home_had_before_the_move_are_dropped() {
        let mut s = Settle {
            from: 0,
            departed: vec![(0, vec![0, 0, 10].into_boxed_slice())],
            ..Settle::default()
        };
        // Worker 0 got stamp (2, 9) before the session left: delivered there.
        assert_eq!(
            s.direct(stamp(2, 9, 0b101), &msg(), QoS::AtLeastOnce, None),
            Take::Drop
        );
        // Worker 0 did not get (2, 8): not covered by its watermark.
        assert_eq!(
            s.direct(stamp(2, 8, 0b110), &msg(), QoS::AtLeastOnce, None),
            Take::Held
        );
        // (2, 11) came after the move: held until its forward or the stub is gone.
        assert_eq!(
            s.direct(stamp(2, 11, 0b101), &msg(), QoS::AtLeastOnce, None),
            Take::Held
        );
        let now = Instant::now();
        let released = s.settled(now);
        assert_eq!(released.len(), 2);
        // Draining: a late forward of something already taken is dropped.
        assert!(s.forward(stamp(2, 11, 0b101)).is_none());
        assert_eq!(
            s.direct(stamp(2, 12, 0b100), &msg(), QoS::AtLeastOnce, None),
            Take::Now
        );
        assert!(s.finished(now));
    }

    #[test]
    fn onward_does_not_count_held_copies_as_taken() {
        let mut s = Settle {
            from: 0,
            ..Settle::default()
        };
        let held = stamp(1, 4, 0b011);
        assert_eq!(s.direct(held, &msg(), QoS::AtLeastOnce, None), Take::Held);
        let mut next = s.onward(1, vec![0, 9, 0].into_boxed_slice());
        assert!(
            next.forward(held).is_some(),
            "its forward must still be taken"
        );
    }

    #[test]
    fn a_forward_releases_earlier_direct_only_copies_first() {
        let mut s = Settle {
            from: 0,
            ..Settle::default()
        };
        // (2, 5) went only to us; (2, 6) to both: its forward must not overtake (2, 5).
        assert_eq!(
            s.direct(stamp(2, 5, 0b110), &msg(), QoS::AtLeastOnce, None),
            Take::Held
        );
        assert_eq!(
            s.direct(stamp(2, 6, 0b111), &msg(), QoS::AtLeastOnce, None),
            Take::Held
        );
        assert_eq!(
            s.direct(stamp(3, 1, 0b1010), &msg(), QoS::AtLeastOnce, None),
            Take::Held
        );
        let before = s.forward(stamp(2, 6, 0b111)).unwrap();
        assert_eq!(before.len(), 1);
        assert_eq!(before[0].stamp.seq, 5);
        assert_eq!(s.held.len(), 1, "other publishers' copies stay held");
    }

    #[test]
    fn onward_carries_history() {
        let mut s = Settle {
            from: 0,
            ..Settle::default()
        };
        assert!(s.forward(stamp(1, 3, 0b011)).is_some());
        let next = s.onward(2, vec![0, 5, 9].into_boxed_slice());
        assert_eq!(next.from, 2);
        assert_eq!(next.departed.len(), 1);
        assert!(next.seen.contains(&(1, 3)));
    }
}
