//! The publishing half of a generator thread: pacing each publisher (open-loop
//! schedule, closed-loop window, QoS 1/2 packet-id cap), writing timestamped payloads,
//! and fleet churn.

use super::super::payload::Header;
use super::super::scenario::{Load, Scenario};
use super::super::schedule::Schedule;
use super::{Worker, MAX_WBUF, SEND_BURST, STALL_NS};
use crate::bench::client::State;
use crate::bench::BenchError;
use crate::protocol::QoS;
use std::sync::atomic::Ordering;

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

impl Worker<'_> {
    pub(super) fn send(&mut self, now: u64, m_start: u64) {
        let qos = self.cfg.qos;
        let send_start = self.shared.send_start_ns.load(Ordering::Acquire);
        let npubs = self.plan.publishers() as u32;
        for pi in 0..self.pubs.len() {
            let p = &mut self.pubs[pi];
            let c = &mut self.conns[p.conn];
            if p.done || c.state != State::Ready || c.wbuf.len() >= MAX_WBUF {
                continue;
            }
            let mut n = (p.limit - p.sent).min(SEND_BURST);
            let mut sched = None;
            match (self.cfg.scenario, self.cfg.load) {
                (Scenario::Fleet, _) => {
                    let s = *p.schedule.get_or_insert_with(|| {
                        Schedule::periodic(send_start, p.publisher, npubs, self.cfg.interval_secs)
                    });
                    n = s.due(p.sent, now, n);
                    sched = Some(s);
                }
                (_, Load::Rate(rate)) => {
                    let s = *p
                        .schedule
                        .get_or_insert_with(|| Schedule::new(send_start, p.publisher, npubs, rate));
                    n = s.due(p.sent, now, n);
                    sched = Some(s);
                }
                (_, Load::Max) if qos == QoS::AtMostOnce => {
                    let delivered =
                        self.shared.delivered[p.publisher as usize].load(Ordering::Relaxed);
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
                }
                (_, Load::Max) => {}
            }
            if qos != QoS::AtMostOnce {
                n = n.min((self.cfg.inflight - c.ids.in_use.min(self.cfg.inflight)) as u64);
            }
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
        }
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
