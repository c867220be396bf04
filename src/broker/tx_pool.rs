//! One worker's pool of idle write buffers.
//!
//! Owns the buffers that connections hand back once all their output is written, so
//! that the next packet for any connection starts in warm memory instead of a fresh
//! allocation. Its size follows the demand: when a turn needed more buffers than the
//! pool held, the next review (once a second) raises the pool's limit by what was
//! missing, up to [`TxPool::LIMIT`]; buffers that sat unused through a whole period
//! between reviews are freed, down to [`TxPool::MIN`]. So a fan-out that writes to a
//! thousand subscribers every turn keeps a thousand buffers warm while it lasts, and a
//! quiet worker keeps a few.
//!
//! Why: a turn of `fanout1000` fills about a thousand 4 KiB buffers and empties them
//! again. With a fixed pool of 32 the rest were freed every turn, more than glibc's
//! trim threshold, so the memory went back to the kernel and was faulted in again on
//! the next turn (perf/README.md, "Fan-out and the allocator").
//!
//! The worker calls [`TxPool::end_turn`] from `Shard::tick`, after the turn's reads
//! took their buffers and before its writes give them back, so a review sees the
//! turn's buffers out with their connections.
//!
//! Must not: keep a buffer larger than [`TxPool::BUF_MAX`], more than
//! [`TxPool::LIMIT`] buffers, or beyond [`TxPool::MIN`] buffers more than
//! [`TxPool::BYTES_MAX`] bytes; know of sockets, connections or any clock but the
//! `now` it is given.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct TxPool {
    bufs: Vec<Vec<u8>>,
    /// The capacities of `bufs`, summed.
    bytes: usize,
    /// How many buffers the pool keeps at most, for now.
    cap: usize,
    /// The fewest buffers the pool held just after a take since the last review
    /// (`usize::MAX`: nothing was taken): that many were never needed in the period.
    low: usize,
    /// Buffers asked for in this turn while the pool was empty.
    turn_misses: usize,
    /// The most of those in one turn since the last review.
    peak_misses: usize,
    next_review: Option<Instant>,
}

impl Default for TxPool {
    fn default() -> Self {
        TxPool {
            bufs: Vec::new(),
            bytes: 0,
            cap: Self::MIN,
            low: usize::MAX,
            turn_misses: 0,
            peak_misses: 0,
            next_review: None,
        }
    }
}

impl TxPool {
    /// A fresh buffer's capacity: a turn's worth of small packets for one connection.
    pub(crate) const INITIAL: usize = 4096;
    /// Buffers kept however quiet the worker is.
    pub(crate) const MIN: usize = 32;
    /// Buffers kept at most, however busy.
    pub(crate) const LIMIT: usize = 2048;
    /// Bytes of capacity kept at most once the pool holds [`Self::MIN`] buffers
    /// (2048 buffers of `INITIAL` size).
    pub(crate) const BYTES_MAX: usize = 8 << 20;
    /// The largest capacity a kept buffer may have.
    pub(crate) const BUF_MAX: usize = 64 * 1024;
    /// How often the pool's size is set to the demand.
    pub(crate) const REVIEW: Duration = Duration::from_secs(1);

    /// An empty buffer: a pooled one, or a fresh one of working size.
    pub(crate) fn take(&mut self) -> Vec<u8> {
        match self.bufs.pop() {
            Some(b) => {
                self.bytes -= b.capacity();
                self.low = self.low.min(self.bufs.len());
                debug_assert!(b.is_empty());
                b
            }
            None => {
                self.low = 0;
                self.turn_misses += 1;
                Vec::with_capacity(Self::INITIAL)
            }
        }
    }

    /// Takes back a buffer whose bytes have all been written (freed instead when the
    /// pool is at its limit or its byte budget, or when the buffer has grown past
    /// [`Self::BUF_MAX`]).
    pub(crate) fn give(&mut self, mut buf: Vec<u8>) {
        let size = buf.capacity();
        let room = self.bufs.len() < Self::MIN || self.bytes + size <= Self::BYTES_MAX;
        if size > 0 && size <= Self::BUF_MAX && self.bufs.len() < self.cap && room {
            buf.clear();
            self.bytes += size;
            self.bufs.push(buf);
        }
    }

    /// The end of an event-loop turn; at most once per [`Self::REVIEW`], fits the
    /// pool to the demand of the period that ended.
    pub(crate) fn end_turn(&mut self, now: Instant) {
        self.peak_misses = self.peak_misses.max(self.turn_misses);
        self.turn_misses = 0;
        let Some(at) = self.next_review else {
            // The first period starts now (keeping this turn's misses).
            self.next_review = Some(now + Self::REVIEW);
            return;
        };
        if now < at {
            return;
        }
        if self.peak_misses > 0 {
            self.cap = (self.cap + self.peak_misses).min(Self::LIMIT);
        } else {
            // Buffers out with connections now come back; only those that no turn
            // of the period took are freed, and the limit falls by as many.
            let idle = self.low.min(self.bufs.len().saturating_sub(Self::MIN));
            if idle > 0 {
                for b in self.bufs.drain(self.bufs.len() - idle..) {
                    self.bytes -= b.capacity();
                }
                self.cap = (self.cap - idle).max(Self::MIN);
                self.bufs.shrink_to(self.cap);
            }
        }
        self.low = usize::MAX;
        self.peak_misses = 0;
        self.next_review = Some(now + Self::REVIEW);
    }

    /// When the worker should wake to review the pool although nothing happens: only
    /// while it holds more than [`Self::MIN`] buffers, so a quiet worker sleeps.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.next_review.filter(|_| self.bufs.len() > Self::MIN)
    }

    /// Buffers held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.bufs.len()
    }

    /// The most buffers it would hold now.
    #[cfg(test)]
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One turn as the worker runs it: the reads take `n` buffers at once, the turn
    /// ends (`Shard::tick`), then the writes give them all back.
    fn turn(pool: &mut TxPool, n: usize, now: Instant) {
        let bufs: Vec<_> = (0..n)
            .map(|_| {
                let mut b = pool.take();
                b.extend_from_slice(b"packet");
                b
            })
            .collect();
        pool.end_turn(now);
        for b in bufs {
            pool.give(b);
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_steady_fan_out_is_served_from_the_pool_after_one_review() {
        let t0 = Instant::now();
        let mut pool = TxPool::default();
        turn(&mut pool, 1000, t0);
        assert_eq!(pool.len(), TxPool::MIN, "the limit starts at the minimum");
        turn(&mut pool, 1000, t0 + 500 * MS);
        turn(&mut pool, 1000, t0 + TxPool::REVIEW);
        assert_eq!(
            pool.cap(),
            TxPool::MIN + 1000,
            "raised by what the neediest turn lacked"
        );
        assert_eq!(pool.len(), 1000);
        // From now on no turn misses: nothing is allocated.
        for i in 2..6 {
            let bufs: Vec<_> = (0..1000).map(|_| pool.take()).collect();
            assert_eq!(pool.len(), 0);
            assert!(bufs.iter().all(|b| b.capacity() >= TxPool::INITIAL));
            pool.end_turn(t0 + TxPool::REVIEW * i);
            for b in bufs {
                pool.give(b);
            }
            assert_eq!(pool.len(), 1000);
            assert_eq!(pool.cap(), TxPool::MIN + 1000);
        }
    }

    #[test]
    fn a_smaller_demand_keeps_what_it_uses() {
        let t0 = Instant::now();
        let mut pool = TxPool::default();
        for i in 0..3 {
            turn(&mut pool, 1000, t0 + TxPool::REVIEW * i);
        }
        assert_eq!(pool.len(), 1000);
        // 900 a turn: at the next review the 100 that no turn took go, and the 900
        // out with their connections come back.
        for i in 0..10 {
            turn(&mut pool, 900, t0 + TxPool::REVIEW * 2 + 100 * MS * (i + 1));
        }
        assert!(
            pool.len() >= 900 && pool.len() <= 900 + TxPool::MIN,
            "{}",
            pool.len()
        );
        let len = pool.len();
        for i in 0..20 {
            turn(&mut pool, 900, t0 + TxPool::REVIEW * 3 + 100 * MS * (i + 1));
            assert_eq!(pool.len(), len, "served from the pool, nothing refused");
        }
    }

    #[test]
    fn buffers_unused_for_a_whole_period_are_freed_down_to_the_minimum() {
        let t0 = Instant::now();
        let mut pool = TxPool::default();
        for i in 0..3 {
            turn(&mut pool, 500, t0 + TxPool::REVIEW * i);
        }
        assert_eq!(pool.len(), 500);
        assert!(
            pool.next_deadline().is_some(),
            "a worker holding spares wakes to review"
        );
        // A quiet period: a few buffers in use at a time.
        for i in 1..10 {
            turn(&mut pool, 3, t0 + TxPool::REVIEW * 2 + 10 * MS * i);
        }
        turn(&mut pool, 3, t0 + TxPool::REVIEW * 3);
        assert!(pool.len() <= TxPool::MIN + 3, "{}", pool.len());
        // Then nothing at all: the next review frees the rest above the minimum.
        pool.end_turn(t0 + TxPool::REVIEW * 4);
        assert_eq!(pool.len(), TxPool::MIN);
        assert_eq!(pool.next_deadline(), None, "a quiet worker sleeps");
    }

    #[test]
    fn counts_and_bytes_are_bounded() {
        let t0 = Instant::now();
        let mut pool = TxPool::default();
        for i in 0..10 {
            turn(&mut pool, 3 * TxPool::LIMIT, t0 + TxPool::REVIEW * i);
            assert!(pool.len() <= TxPool::LIMIT && pool.cap() <= TxPool::LIMIT);
        }
        assert_eq!(pool.cap(), TxPool::LIMIT);
        assert_eq!(pool.len(), TxPool::LIMIT);
        // Grown buffers: the byte budget, not the count, stops them.
        let mut pool = TxPool::default();
        for i in 0..4 {
            let bufs: Vec<_> = (0..1000)
                .map(|_| Vec::with_capacity(TxPool::BUF_MAX))
                .collect();
            for _ in 0..1000 {
                drop(pool.take());
            }
            pool.end_turn(t0 + TxPool::REVIEW * i);
            for b in bufs {
                pool.give(b);
            }
            assert!(pool.bytes <= TxPool::BYTES_MAX);
        }
        assert_eq!(pool.bytes, TxPool::BYTES_MAX);
    }

    #[test]
    fn oversized_and_unallocated_buffers_are_not_kept() {
        let mut pool = TxPool::default();
        pool.give(Vec::with_capacity(TxPool::BUF_MAX + 1));
        pool.give(Vec::new());
        assert_eq!(pool.len(), 0);
        pool.give(Vec::with_capacity(TxPool::BUF_MAX));
        assert_eq!(pool.len(), 1);
        assert_eq!(pool.take().capacity(), TxPool::BUF_MAX);
        assert_eq!(pool.bytes, 0);
    }
}
