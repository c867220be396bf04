//! The publishing half of a generator thread: pacing each publisher (open-loop
//! schedule, closed-loop window, QoS 1/2 packet-id cap), writing timestamped payloads,
//! and fleet churn.
//!
//! Open loop (`--rate`, and `fleet`) keeps the thread's publishers in a min-heap by the
//! time of their next scheduled message, so a turn touches only the publishers that
//! have something due (O(log n) each) and the poll timeout is the heap's top, instead
//! of two passes over every publisher per turn: with 1000 publishers and one turn per
//! message that scan cost more than the sockets. A publisher that has something due but
//! cannot send (not connected, write buffer full, no packet id free) waits in a
//! `blocked` list, retried every turn, and does not shorten the poll timeout: what
//! unblocks it (CONNACK, writable, PUBACK) is itself a socket event.

use super::super::payload::Header;
use super::super::scenario::{Load, Scenario};
use super::super::schedule::Schedule;
use super::{Worker, MAX_WBUF, SEND_BURST, STALL_NS};
use crate::bench::client::State;
use crate::bench::BenchError;
use crate::protocol::QoS;
use std::cmp::Reverse;
use std::sync::atomic::Ordering;

/// Open loop: publishers served per turn, at most; the rest are still due next turn
/// (the poll does not wait then). A turn reads every ready socket before it sends,
/// so a turn that sends everything due delays the reading of every delivery by the
/// whole send phase. Behind schedule at 50k msg/s over 1000 pairs, those turns grew
/// to ~20 ms and stayed there: the median latency jumped from ~30 µs to 16-26 ms in 6
/// of 33 runs. With a cap (8 to 64) none of 24 runs did; with 16, the worst of 12 was
/// 106 µs (perf/README.md, "Busy polling").
const DUE_PUBLISHERS_PER_TURN: usize = 16;

/// One publisher of this thread.
pub(super) struct Pub {
    pub(super) conn: usize,
    pub(super) publisher: u32,
    pub(super) topic: String,
    pub(super) fanout: u64,
    pub(super) sent: u64,
    pub(super) limit: u64,
    pub(super) schedule: Option<Schedule>,
    pub(super) credit: u64,
    pub(super) last_delivered: u64,
    pub(super) last_progress_ns: u64,
    pub(super) done: bool,
}

/// What one open-loop publisher does next, after a turn's sends.
enum Next {
    /// Sent its last message.
    Done,
    /// Its next message is due at this time (possibly already: the burst cap).
    At(u64),
    /// Has a message due but cannot send it now.
    Blocked,
}

impl Worker<'_> {
    pub(super) fn send(&mut self, now: u64, m_start: u64) {
        if self.scheduled {
            self.send_due(now, m_start);
        } else {
            self.send_window(now, m_start);
        }
    }

    /// The first open-loop turn: every publisher's schedule, into the heap.
    fn schedule_all(&mut self) {
        let send_start = self.shared.send_start_ns.load(Ordering::Acquire);
        let npubs = self.plan.publishers() as u32;
        for (pi, p) in self.pubs.iter_mut().enumerate() {
            let s = match (self.cfg.scenario, self.cfg.load) {
                (Scenario::Fleet, _) => {
                    Schedule::periodic(send_start, p.publisher, npubs, self.cfg.interval_secs)
                }
                (_, Load::Rate(rate)) => Schedule::new(send_start, p.publisher, npubs, rate),
                (_, Load::Max) => unreachable!("closed loop has no schedule"),
            };
            p.schedule = Some(s);
            if !p.done && p.sent < p.limit {
                self.due.push(Reverse((s.at(p.sent), pi)));
            }
        }
        self.scheduled_all = true;
    }

    /// The time of the first scheduled send, if any publisher has one left.
    pub(super) fn next_due(&self) -> Option<u64> {
        self.due.peek().map(|&Reverse((at, _))| at)
    }

    /// Open loop: every message due by `now`, timestamped with its scheduled time.
    fn send_due(&mut self, now: u64, m_start: u64) {
        if !self.scheduled_all {
            self.schedule_all();
        }
        for pi in std::mem::take(&mut self.blocked) {
            let p = &self.pubs[pi];
            if let Some(s) = p.schedule {
                self.due.push(Reverse((s.at(p.sent), pi)));
            }
        }
        let mut later = std::mem::take(&mut self.later);
        let mut served = 0;
        while let Some(&Reverse((at, pi))) = self.due.peek() {
            if at > now || served == DUE_PUBLISHERS_PER_TURN {
                break;
            }
            served += 1;
            self.due.pop();
            match self.send_scheduled(pi, now, m_start) {
                Next::Done => {}
                Next::Blocked => self.blocked.push(pi),
                Next::At(t) if t <= now => later.push(Reverse((t, pi))),
                Next::At(t) => self.due.push(Reverse((t, pi))),
            }
        }
        // Publishers that hit the burst cap go on next turn (the timeout is zero then).
        self.due.extend(later.drain(..));
        self.later = later;
    }

    fn send_scheduled(&mut self, pi: usize, now: u64, m_start: u64) -> Next {
        let p = &self.pubs[pi];
        let c = &self.conns[p.conn];
        if p.done {
            return Next::Done;
        }
        let Some(s) = p.schedule else {
            return Next::Done;
        };
        if c.state != State::Ready || c.wbuf.len() >= MAX_WBUF {
            return Next::Blocked;
        }
        let mut n = s.due(p.sent, now, (p.limit - p.sent).min(SEND_BURST));
        let wanted = n;
        if self.cfg.qos != QoS::AtMostOnce {
            n = n.min((self.cfg.inflight - c.ids.in_use.min(self.cfg.inflight)) as u64);
        }
        let sent = self.emit(pi, n, Some(s), now, m_start);
        let p = &self.pubs[pi];
        if p.done {
            return Next::Done;
        }
        let next = s.at(p.sent);
        if next > now || (sent == wanted && wanted == SEND_BURST) {
            Next::At(next)
        } else {
            Next::Blocked
        }
    }

    /// Closed loop (`--max`): fill each publisher's window.
    fn send_window(&mut self, now: u64, m_start: u64) {
        let qos = self.cfg.qos;
        for pi in 0..self.pubs.len() {
            let p = &mut self.pubs[pi];
            let c = &self.conns[p.conn];
            if p.done || c.state != State::Ready || c.wbuf.len() >= MAX_WBUF {
                continue;
            }
            let mut n = (p.limit - p.sent).min(SEND_BURST);
            if qos == QoS::AtMostOnce {
                let delivered = self.shared.delivered[p.publisher as usize].load(Ordering::Relaxed);
                if delivered != p.last_delivered || p.last_progress_ns == 0 {
                    p.last_delivered = delivered;
                    p.last_progress_ns = now;
                }
                let done = delivered + p.credit;
                let mut outstanding = (p.sent * p.fanout).saturating_sub(done);
                if outstanding > 0 && now - p.last_progress_ns > STALL_NS {
                    p.credit += outstanding;
                    outstanding = 0;
                    p.last_progress_ns = now;
                    self.res.stalls += 1;
                }
                let cap = self.cfg.inflight as u64 * p.fanout;
                n = n.min(cap.saturating_sub(outstanding) / p.fanout);
            } else {
                n = n.min((self.cfg.inflight - c.ids.in_use.min(self.cfg.inflight)) as u64);
            }
            self.emit(pi, n, None, now, m_start);
        }
    }

    /// Appends up to `n` messages of publisher `pi` to its connection's write buffer
    /// (timestamps from `sched`, or `now` in closed loop) and returns how many.
    fn emit(&mut self, pi: usize, n: u64, sched: Option<Schedule>, now: u64, m_start: u64) -> u64 {
        let qos = self.cfg.qos;
        let p = &mut self.pubs[pi];
        let c = &mut self.conns[p.conn];
        let mut sent = 0;
        for _ in 0..n {
            let ts = sched.map_or(now, |s| s.at(p.sent));
            let h = Header {
                ts_ns: ts,
                seq: p.sent as u32,
                publisher: p.publisher,
            };
            let _ = h.write(&mut self.body);
            if c.publish(&p.topic, qos, &self.body).is_none() {
                break;
            }
            if sched.is_some() && ts >= m_start {
                self.lag.saturating_record(now.saturating_sub(ts).max(1));
            }
            if ts >= m_start {
                self.res.sent_measured += 1;
            }
            p.sent += 1;
            sent += 1;
            self.sent_turn += 1;
            self.expected_turn += p.fanout;
            if qos != QoS::AtMostOnce {
                self.unacked_turn += 1;
            }
        }
        if p.sent >= p.limit && !p.done {
            p.done = true;
            self.shared.publishers_done.fetch_add(1, Ordering::AcqRel);
        }
        let ci = p.conn;
        self.mark(ci);
        sent
    }

    /// Drops and reconnects `churn` x devices per second (fleet).
    pub(super) fn churn(&mut self, now: u64) -> Result<(), BenchError> {
        let last = std::mem::replace(&mut self.churn_last_ns, now);
        if last == 0 || self.pubs.is_empty() {
            return Ok(());
        }
        let secs = now.saturating_sub(last) as f64 / 1e9;
        self.churn_budget += self.cfg.churn * self.pubs.len() as f64 * secs;
        let mut tries = self.pubs.len();
        while self.churn_budget >= 1.0 && tries > 0 {
            tries -= 1;
            let pi = self.churn_cursor % self.pubs.len();
            self.churn_cursor += 1;
            let ci = self.pubs[pi].conn;
            let c = &mut self.conns[ci];
            if c.state != State::Ready || !c.wbuf.is_empty() || c.ids.in_use > 0 {
                continue;
            }
            c.disconnect();
            let _ = c.flush();
            self.close(ci, State::Pending);
            self.pending.push_back(ci);
            self.res.reconnects += 1;
            self.churn_budget -= 1.0;
        }
        Ok(())
    }
}
