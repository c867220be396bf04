//! Settling after a move: how a session that has just arrived from another worker
//! takes each copy of a message, so that every message reaches it exactly once and
//! in publish order, although some come straight from their publisher's worker and
//! some are forwarded by the old home's stub (`shard/moved.rs` has the protocol).
//!
//! Owns: the decision per copy and the bookkeeping behind it.
//! Must not: deliver or send anything; the shard acts on the decisions.
//!
//! # The cut
//!
//! For the session's old home A, new home B and any origin worker W (the worker
//! that routed a message, A and B included), W's routing sequence is cut in two at
//! the moment W learns of B: when it handles B's `Ping` (for W = A; for W = B, when
//! B installs the session, which sends the pings in the same call). W's messages
//! before the cut belong to the *old path* (A's session, then A's stub, which
//! forwards them in W's order); those after the cut to the *new path* (direct copies
//! to B: B's interest reached W ahead of its ping). The cut is never a number that
//! B compares: each side of it is told apart by channel order alone, since every
//! channel is FIFO.
//! - A *forward* of W's message is taken while W's `Done` has not arrived from A:
//!   A sends it when W's `Pong` (sent by W at its cut) reaches it, so exactly W's
//!   forwards from before the cut precede it. Forwards after it are dropped: B gets
//!   those messages directly.
//! - A *direct* copy from W is dropped while W's `Flushed` has not arrived (W sends
//!   it to B at its cut; A's `Done` for itself doubles as its `Flushed`, B's own
//!   copies are all after the cut): it was routed before the cut, so the old path
//!   has it. After `Flushed` it is taken, but held until W's `Done`, so that W's
//!   forwarded prefix is delivered before its direct suffix.
//!
//! **Invariant:** for every origin W, the session takes W's messages that match its
//! filters exactly once, in W's routing order, however many times it moves. A
//! message before the cut reached A (A's interest covers the session's filters from
//! A's own cut until its stub goes, which is after W's pong), and there it was
//! delivered to the session or forwarded; one after it reached B. Neither path is
//! read twice: A's session left only once *it* had settled, so every copy routed to
//! it before its own cut had already arrived (its `Flushed`) and been dropped or
//! taken there, and no forward of an earlier home was still on its way (its
//! `Done`s). That is why moves must not overlap (`shard/takeover.rs` defers a
//! takeover of a settling session), and why nothing here depends on where the
//! session was before A. (An earlier version compared sequence numbers with A's
//! departure watermark: it could not tell that a copy routed before a previous
//! move's cut had already been forwarded to the previous home, and it gave up a
//! forward in favour of a direct copy still in flight, so later forwards overtook it.)

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
    /// Names this move in its `Ping`, `Pong`, `Flushed` and `Done` messages, so that
    /// a late one of another move of the same client is not taken for this one's.
    pub move_id: u64,
    pub held: VecDeque<Held>,
    /// Origin workers whose `Done` has not arrived: their forwards are still taken,
    /// their direct copies held. Bit per worker.
    pub waiting: u64,
    /// Origin workers whose `Flushed` (for `from`: its `Done`) has not arrived:
    /// their direct copies were routed before their cut and are dropped.
    pub unflushed: u64,
}

fn bit(w: WorkerId) -> u64 {
    1u64 << w
}

impl Settle {
    /// The state of a session leaving `from` for `to`, among `all` workers (bit mask).
    pub fn new(from: WorkerId, to: WorkerId, all: u64, move_id: u64) -> Settle {
        Settle {
            from,
            move_id,
            held: VecDeque::new(),
            waiting: all,
            // The new home's own copies are all after its cut.
            unflushed: all & !bit(to),
        }
    }

    /// A direct copy routed here. True if it is to be delivered now; otherwise it was
    /// dropped or held.
    pub fn direct(
        &mut self,
        stamp: Stamp,
        msg: &Message,
        granted: QoS,
        origin: Option<Origin>,
    ) -> bool {
        if self.unflushed & bit(stamp.worker) != 0 {
            return false; // before its origin's cut: the old path has it
        }
        if self.waiting & bit(stamp.worker) == 0 {
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

    /// A forward from the old home: true if it is to be delivered (its origin's
    /// forwards are not all through yet, so it is from before the cut).
    pub fn forward(&self, stamp: &Stamp) -> bool {
        self.waiting & bit(stamp.worker) != 0
    }

    /// The old home says origin `w`'s forwards are all through: its held copies, in
    /// arrival order, to deliver now.
    pub fn done(&mut self, w: WorkerId) -> Vec<Held> {
        self.waiting &= !bit(w);
        if w == self.from {
            // The old home's `Done` for itself follows its direct copies from before
            // its cut on the same channel.
            self.unflushed &= !bit(w);
        }
        let (now, keep): (Vec<Held>, Vec<Held>) =
            self.held.drain(..).partition(|h| h.stamp.worker == w);
        self.held = keep.into();
        now
    }

    /// Worker `w` says every direct copy it routed here before its cut has arrived.
    pub fn flushed(&mut self, w: WorkerId) {
        if w != self.from {
            self.unflushed &= !bit(w);
        }
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

    fn stamp(worker: WorkerId, seq: u64) -> Stamp {
        Stamp { worker, seq }
    }

    fn direct(s: &mut Settle, worker: WorkerId, seq: u64) -> bool {
        s.direct(stamp(worker, seq), &msg(), QoS::AtLeastOnce, None)
    }

    /// Moved from worker 0 to worker 1; worker 2 is a publisher's worker.
    fn settle() -> Settle {
        Settle::new(0, 1, 0b111, 7)
    }

    #[test]
    fn each_message_is_taken_from_one_side_of_the_cut() {
        let mut s = settle();
        // Before worker 2's cut: the forward counts, the direct copy not.
        assert!(!direct(&mut s, 2, 9));
        assert!(s.held.is_empty(), "dropped, not held");
        assert!(s.forward(&stamp(2, 9)));
        s.flushed(2);
        // After it: the direct copy counts (held until the forwards are through)...
        assert!(!direct(&mut s, 2, 25));
        assert_eq!(s.held.len(), 1);
        // ...the forwards still coming are from before the cut,
        assert!(s.forward(&stamp(2, 10)));
        let released: Vec<u64> = s.done(2).iter().map(|h| h.stamp.seq).collect();
        assert_eq!(released, vec![25], "after the forwarded prefix");
        // and after `Done` forwards are of messages taken directly.
        assert!(!s.forward(&stamp(2, 25)));
        assert!(direct(&mut s, 2, 26));
    }

    #[test]
    fn the_old_homes_done_is_its_flushed() {
        let mut s = settle();
        s.flushed(0); // never sent; ignored if it were
        assert!(
            !direct(&mut s, 0, 3),
            "routed by the old home before its cut"
        );
        assert!(s.forward(&stamp(0, 4)));
        assert!(s.done(0).is_empty());
        assert!(!s.forward(&stamp(0, 5)));
        assert!(direct(&mut s, 0, 5));
    }

    #[test]
    fn the_new_homes_own_copies_wait_for_its_done() {
        let mut s = settle();
        assert!(!direct(&mut s, 1, 40));
        assert_eq!(s.held.len(), 1, "after its cut, held");
        assert!(
            s.forward(&stamp(1, 39)),
            "routed to the old home before the install"
        );
        assert_eq!(s.done(1).len(), 1);
    }

    #[test]
    fn done_releases_one_origin_in_order_and_settles_last() {
        let mut s = settle();
        s.flushed(2);
        for (w, seq) in [(2, 30), (1, 5), (2, 31)] {
            assert!(!direct(&mut s, w, seq));
        }
        let released: Vec<u64> = s.done(2).iter().map(|h| h.stamp.seq).collect();
        assert_eq!(released, vec![30, 31]);
        assert_eq!(s.held.len(), 1);
        assert!(direct(&mut s, 2, 32), "2 is through");
        s.done(1);
        assert!(!s.settled(), "the old home is not done");
        s.done(0);
        assert!(s.settled());

        let mut s = settle();
        for w in 0..3 {
            s.done(w);
        }
        assert!(!s.settled(), "worker 2 has not flushed yet");
        s.flushed(2);
        assert!(s.settled());
    }
}
