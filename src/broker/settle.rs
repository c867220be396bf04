//! Settling after a move: how a session that has just arrived from another worker
//! takes each copy of a message, so that every message reaches it exactly once and
//! in publish order, although some come straight from their publisher's worker and
//! some are forwarded by the old home's stub (`shard/moved.rs` has the protocol).
//!
//! Owns: the decision per copy and the bookkeeping behind it.
//! Must not: deliver or send anything; the shard acts on the decisions.
//!
//! The rules, for the session's old home A and new home B, and a copy of message
//! (W, s) (origin worker, its routing sequence number):
//! - A *forward* is taken, unless B received a direct copy after the install (B in
//!   the copy's targets and s above B's install watermark for W): that one counts.
//! - A *direct* copy is dropped if A had it before the session left (A in its
//!   targets and s at or below A's departure watermark for W): delivered there.
//!   Otherwise it is taken, but held until A says that W's forwards are all through
//!   (`done`), so that W's forwarded prefix is delivered before its direct suffix.
//!
//! A message is taken by both paths only if B both did and did not get it after the
//! install, so never; by neither only if A delivered it before the move.

use super::mesh::{Origin, Stamp};
use super::message::Message;
use super::WorkerId;
use crate::protocol::QoS;
use std::collections::VecDeque;

/// A direct copy waiting for its origin's forwards.
#[derive(Debug, Clone)]
pub struct Held {
    pub stamp: Stamp,
    pub msg: Message,
    pub granted: QoS,
    pub origin: Option<Origin>,
}

/// The settling state of a session that moved here from `from`.
#[derive(Debug, Clone, Default)]
pub struct Settle {
    pub from: WorkerId,
    /// `from`'s routing watermark when the session left (last stamp seen per worker).
    pub departed: Box<[u64]>,
    /// This worker's routing watermark when the session was installed here.
    pub installed: Box<[u64]>,
    pub held: VecDeque<Held>,
    /// Origin workers whose forwards may still be coming, bit per worker.
    pub waiting: u64,
    /// Origin workers whose earlier direct copies may still be coming (they say
    /// `Flushed` once they route here), bit per worker.
    pub unflushed: u64,
}

fn at_or_below(watermark: &[u64], stamp: &Stamp) -> bool {
    watermark.get(stamp.worker).is_some_and(|&w| stamp.seq <= w)
}

impl Settle {
    /// A direct copy routed here. True if it is to be delivered now; otherwise it was
    /// dropped or held.
    pub fn direct(
        &mut self,
        stamp: Stamp,
        msg: &Message,
        granted: QoS,
        origin: Option<Origin>,
    ) -> bool {
        if stamp.targets & (1u64 << self.from) != 0 && at_or_below(&self.departed, &stamp) {
            return false; // delivered at the old home before the move
        }
        if self.waiting & (1u64 << stamp.worker) == 0 {
            return true; // that origin's forwards are all through
        }
        self.held.push_back(Held {
            stamp,
            msg: msg.clone(),
            granted,
            origin,
        });
        false
    }

    /// A forward from the old home arriving at worker `here`. Returns the held
    /// copies from the same origin up to its sequence number, which go first (the
    /// forward path is in order, so nothing earlier from that origin is still
    /// coming), and whether to deliver the forward itself after them.
    pub fn forward(&mut self, here: WorkerId, stamp: &Stamp) -> (Vec<Held>, bool) {
        let direct_after_install =
            stamp.targets & (1u64 << here) != 0 && !at_or_below(&self.installed, stamp);
        let (before, keep): (Vec<Held>, Vec<Held>) = self
            .held
            .drain(..)
            .partition(|h| h.stamp.worker == stamp.worker && h.stamp.seq <= stamp.seq);
        self.held = keep.into();
        (before, !direct_after_install)
    }

    /// The old home says origin `w`'s forwards are all through: its held copies, in
    /// arrival order, to deliver now.
    pub fn done(&mut self, w: WorkerId) -> Vec<Held> {
        self.waiting &= !(1u64 << w);
        let (now, keep): (Vec<Held>, Vec<Held>) =
            self.held.drain(..).partition(|h| h.stamp.worker == w);
        self.held = keep.into();
        now
    }

    /// Worker `w` says every direct copy it routed here before it knew of the move
    /// has arrived.
    pub fn flushed(&mut self, w: WorkerId) {
        self.unflushed &= !(1u64 << w);
    }

    /// Nothing more can arrive on a path this state guards: it can go.
    pub fn settled(&self) -> bool {
        self.waiting == 0 && self.unflushed == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TopicName;
    use bytes::Bytes;

    fn msg() -> Message {
        Message::new(
            TopicName::new("t").unwrap(),
            Bytes::from_static(b"x"),
            QoS::AtLeastOnce,
            false,
        )
    }

    fn stamp(worker: WorkerId, seq: u64, targets: u64) -> Stamp {
        Stamp {
            worker,
            seq,
            targets,
        }
    }

    /// Moved from worker 0 to worker 1; worker 2 is a publisher's worker.
    fn settle() -> Settle {
        Settle {
            from: 0,
            departed: vec![0, 0, 10].into_boxed_slice(),
            installed: vec![0, 0, 20].into_boxed_slice(),
            waiting: 0b111,
            unflushed: 0b100,
            ..Settle::default()
        }
    }

    #[test]
    fn each_message_is_taken_once() {
        let mut s = settle();
        // Had by the old home before the move: dropped.
        assert!(!s.direct(stamp(2, 9, 0b101), &msg(), QoS::AtLeastOnce, None));
        assert!(s.held.is_empty());
        // Reached us before the install (<= 20): its forward counts.
        assert!(s.forward(1, &stamp(2, 15, 0b111)).1);
        // Reached us after the install: the direct copy counts, the forward not.
        assert!(!s.direct(stamp(2, 25, 0b111), &msg(), QoS::AtLeastOnce, None));
        assert_eq!(
            s.held.len(),
            1,
            "held until worker 2's forwards are through"
        );
        let (before, take) = s.forward(1, &stamp(2, 25, 0b111));
        assert!(!take);
        assert_eq!(before.len(), 1, "the forward path caught up with it");
        // Never reached us: only the forward.
        assert!(s.forward(1, &stamp(2, 26, 0b101)).1);
    }

    #[test]
    fn a_forward_lets_earlier_held_copies_go_first() {
        let mut s = settle();
        assert!(!s.direct(stamp(2, 30, 0b110), &msg(), QoS::AtLeastOnce, None));
        assert!(!s.direct(stamp(0, 3, 0b011), &msg(), QoS::AtLeastOnce, None));
        // (2, 31) did not reach us directly (interest changed in between).
        let (before, take) = s.forward(1, &stamp(2, 31, 0b101));
        assert!(take);
        assert_eq!(
            before.iter().map(|h| h.stamp.seq).collect::<Vec<_>>(),
            vec![30]
        );
        assert_eq!(s.held.len(), 1, "other origins stay held");
    }

    #[test]
    fn done_releases_one_origin_in_order() {
        let mut s = settle();
        for (w, seq) in [(2, 30), (0, 5), (2, 31)] {
            assert!(!s.direct(
                stamp(w, seq, 0b110 | 1 << w),
                &msg(),
                QoS::AtLeastOnce,
                None
            ));
        }
        let released: Vec<u64> = s.done(2).iter().map(|h| h.stamp.seq).collect();
        assert_eq!(released, vec![30, 31]);
        assert_eq!(s.held.len(), 1);
        assert!(
            s.direct(stamp(2, 32, 0b110), &msg(), QoS::AtLeastOnce, None),
            "2 is through"
        );
        s.done(0);
        s.done(1);
        assert!(!s.settled(), "worker 2 has not flushed yet");
        s.flushed(2);
        assert!(s.settled());
    }
}
