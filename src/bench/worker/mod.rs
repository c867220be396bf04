//! One generator thread: a `mio` event loop driving its share of the plan's clients.
//!
//! Each turn: start connections allowed by the ramp, poll, read and handle every
//! readable socket, send what the load mode allows (open loop: every message due by
//! now, timestamped with its *scheduled* time; closed loop: fill each publisher's
//! window), churn devices, then flush each dirty socket with one write. Counters go to
//! [`Shared`] once per turn; the latency histogram stays thread-local and is merged by
//! the caller at the end.
//!
//! A turn costs in proportion to what happened in it, not to the number of clients:
//! open-loop publishers wait in a heap by their next send time ([`publish`]), the poll
//! sleeps until the first of them, woken on time by a `timerfd` ([`timer`]; `mio`'s
//! timeout has millisecond resolution), and a read that returns less than asked for
//! ends that socket's reading (the kernel's receive queue is then empty, and more data
//! is a new edge-triggered event), saving the `recv` that would return `WouldBlock`.
//! With `--busy-poll` the poll never sleeps, and turns that found no work are counted
//! as idle, not as CPU (the saturation warning looks at the rest).
//!
//! The thread stops by itself when the coordinator sets [`Phase::Done`], and the
//! coordinator does so after `warmup + duration + drain` at the latest. In the first
//! turn that sees [`Phase::Draining`] it sends nothing and then counts itself in
//! [`Shared::quiet_threads`]: the coordinator compares deliveries with sends only after
//! every thread has published its last send (see `coordinate` in `bench/mod.rs`).

use super::accounting::{Outcome, Streams};
use super::client::{ClientError, Conn, Incoming, State};
use super::payload;
use super::scenario::{BenchConfig, Load, Plan, Role, Scenario};
use super::stats::{new_histogram, thread_cpu_ns, thread_wait_ns};
use super::BenchError;
use crate::protocol::QoS;
mod publish;
mod timer;

use super::shared::{Phase, Shared, ThreadResult, WAKER};
use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};
use publish::Pub;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use timer::{Timer, TIMER};

/// Handshakes in progress per thread, at most.
const MAX_HANDSHAKES: usize = 256;
/// Messages one publisher may queue in one turn.
const SEND_BURST: u64 = 1024;
/// A publisher stops queueing while its write buffer holds this much.
const MAX_WBUF: usize = 1 << 20;
/// Closed loop QoS 0: a window with no delivery for this long is written off (lost).
const STALL_NS: u64 = 1_000_000_000;

/// One generator thread's event loop.
pub(crate) struct Worker<'a> {
    index: usize,
    cfg: &'a BenchConfig,
    plan: &'a Plan,
    shared: &'a Shared,
    poll: Poll,
    conns: Vec<Conn>,
    queued: Vec<bool>,
    dirty: Vec<usize>,
    /// Connections whose read budget ran out: read again next turn.
    again: Vec<usize>,
    pub_of: Vec<Option<usize>>,
    pubs: Vec<Pub>,
    /// Open loop (`--rate`, fleet): publishers are paced by their schedule.
    scheduled: bool,
    /// Open loop: the schedules are set and `due` filled (first sending turn).
    scheduled_all: bool,
    /// Open loop: (time of the next scheduled send, publisher), earliest first.
    due: BinaryHeap<Reverse<(u64, usize)>>,
    /// Open loop: publishers with a send due that they could not make (retried every turn).
    blocked: Vec<usize>,
    /// Open loop: scratch for publishers that hit the burst cap this turn.
    later: Vec<Reverse<(u64, usize)>>,
    timer: Timer,
    /// Counted in `Shared::quiet_threads`.
    quiet: bool,
    streams: Vec<Option<Streams>>,
    pending: VecDeque<usize>,
    handshakes: usize,
    started: u64,
    ready_once: usize,
    reported_ready: bool,
    scratch: Vec<u8>,
    body: Vec<u8>,
    latency: Histogram<u64>,
    lag: Histogram<u64>,
    wake: Vec<bool>,
    thread_of_pub: Vec<usize>,
    // counters
    sent_turn: u64,
    recv_turn: u64,
    expected_turn: u64,
    distinct_turn: u64,
    unacked_turn: i64,
    connected_turn: i64,
    res: ThreadResult,
    churn_budget: f64,
    churn_cursor: usize,
    churn_last_ns: u64,
    cpu_start: Option<(u64, u64)>,
    /// Run-queue wait when CPU measuring began (`None`: not known).
    wait_start: Option<u64>,
    cpu_done: bool,
    /// Busy polling: nanoseconds of turns that found no work while CPU is measured.
    idle_ns: u64,
}

impl<'a> Worker<'a> {
    pub fn new(
        index: usize,
        cfg: &'a BenchConfig,
        plan: &'a Plan,
        shared: &'a Shared,
        poll: Poll,
    ) -> Result<Worker<'a>, BenchError> {
        let mut conns = Vec::new();
        let mut pub_of = Vec::new();
        let mut pubs = Vec::new();
        let mut streams = Vec::new();
        let npubs = plan.publishers() as u64;
        let mut thread_of_pub = vec![0; plan.publishers()];
        for (spec_i, spec) in plan.clients.iter().enumerate() {
            if let Role::Publisher { publisher, .. } = &spec.role {
                thread_of_pub[*publisher as usize] = spec.thread;
            }
            if spec.thread != index {
                continue;
            }
            let i = conns.len();
            let (filter, p, s) = match &spec.role {
                Role::Publisher { publisher, topic } => {
                    let limit = match cfg.messages {
                        Some(n) => n / npubs + u64::from((*publisher as u64) < n % npubs),
                        None => u64::MAX,
                    };
                    let p = Pub {
                        conn: i,
                        publisher: *publisher,
                        topic: topic.clone(),
                        fanout: plan.fanout[*publisher as usize] as u64,
                        sent: 0,
                        limit,
                        schedule: None,
                        credit: 0,
                        last_delivered: 0,
                        last_progress_ns: 0,
                        done: false,
                    };
                    (None, Some(p), None)
                }
                Role::Subscriber { filter, .. } => {
                    (Some(filter.clone()), None, Some(Streams::default()))
                }
                Role::Idle { filter } => (Some(filter.clone()), None, None),
            };
            conns.push(Conn::new(spec_i, filter));
            pub_of.push(p.map(|p| {
                pubs.push(p);
                pubs.len() - 1
            }));
            streams.push(s);
        }
        let n = conns.len();
        let timer = Timer::new(poll.registry())?;
        Ok(Worker {
            index,
            cfg,
            plan,
            shared,
            poll,
            conns,
            queued: vec![false; n],
            dirty: Vec::new(),
            again: Vec::new(),
            pub_of,
            pubs,
            scheduled: cfg.scenario == Scenario::Fleet || matches!(cfg.load, Load::Rate(_)),
            scheduled_all: false,
            due: BinaryHeap::new(),
            blocked: Vec::new(),
            later: Vec::new(),
            timer,
            quiet: false,
            streams,
            pending: (0..n).collect(),
            handshakes: 0,
            started: 0,
            ready_once: 0,
            reported_ready: false,
            scratch: vec![0; 64 * 1024],
            body: payload::template(cfg.payload_bytes),
            latency: new_histogram(),
            lag: new_histogram(),
            wake: vec![false; cfg.threads],
            thread_of_pub,
            sent_turn: 0,
            recv_turn: 0,
            expected_turn: 0,
            distinct_turn: 0,
            unacked_turn: 0,
            connected_turn: 0,
            res: ThreadResult {
                latency: new_histogram(),
                lag: new_histogram(),
                sent_per_publisher: Vec::new(),
                streams: Vec::new(),
                sent_measured: 0,
                received_measured: 0,
                foreign: 0,
                disconnects: 0,
                reconnects: 0,
                stalls: 0,
                cpu_ns: 0,
                wall_ns: 0,
                wait_ns: None,
            },
            churn_budget: 0.0,
            churn_cursor: 0,
            churn_last_ns: 0,
            cpu_start: None,
            wait_start: None,
            cpu_done: false,
            idle_ns: 0,
        })
    }

    /// Runs until the coordinator says [`Phase::Done`].
    pub fn run(mut self) -> Result<ThreadResult, BenchError> {
        if self.conns.is_empty() {
            self.shared.ready_threads.fetch_add(1, Ordering::AcqRel);
            self.reported_ready = true;
        }
        let mut events = Events::with_capacity(1024);
        let thread_start = self.shared.now_ns();
        let mut last_progress = thread_start;
        loop {
            let phase = self.shared.phase();
            if phase == Phase::Done {
                break;
            }
            let now = self.shared.now_ns();
            let turn_start = now;
            self.start_connections(now, thread_start)?;
            let timeout = self.timeout(now, phase)?;
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(BenchError::Io(e));
                }
            }
            let now = self.shared.now_ns();
            let (m_start, m_end) = self.window();
            for ev in events.iter() {
                if ev.token() == TIMER {
                    self.timer.fired();
                    continue;
                }
                let i = ev.token().0;
                if ev.token() == WAKER || i >= self.conns.len() {
                    continue;
                }
                if ev.is_writable() {
                    self.on_writable(i)?;
                }
                let closed = ev.is_read_closed() || ev.is_error();
                if ev.is_readable() || closed {
                    self.on_readable(i, now, phase, m_start, m_end, closed)?;
                }
            }
            for i in std::mem::take(&mut self.again) {
                if self.conns[i].more_to_read {
                    self.on_readable(i, now, phase, m_start, m_end, false)?;
                }
            }
            // Sends are stamped and their lag measured after the reads, on a fresh clock.
            let now = self.shared.now_ns();
            if phase == Phase::Running && now < m_end {
                self.send(now, m_start);
                if self.cfg.churn > 0.0 {
                    self.churn(now)?;
                }
            }
            self.flush_dirty(phase)?;
            let idle = events.is_empty() && self.sent_turn == 0 && self.again.is_empty();
            if self.cfg.busy_poll && idle && self.cpu_start.is_some() && !self.cpu_done {
                self.idle_ns += self.shared.now_ns().saturating_sub(turn_start);
            }
            self.publish_counters();
            if phase >= Phase::Draining && !self.quiet {
                // Nothing was sent this turn, and every earlier send is counted now.
                self.quiet = true;
                self.shared.quiet_threads.fetch_add(1, Ordering::AcqRel);
            }
            self.measure_cpu(now, m_start, m_end, phase);
            if now.saturating_sub(last_progress) >= 500_000_000 {
                last_progress = now;
                if !self.latency.is_empty() {
                    let p = |q| self.latency.value_at_quantile(q);
                    self.shared.p50[self.index].store(p(0.5), Ordering::Relaxed);
                    self.shared.p99[self.index].store(p(0.99), Ordering::Relaxed);
                }
            }
        }
        self.finish()
    }

    fn window(&self) -> (u64, u64) {
        (
            self.shared.measure_start_ns.load(Ordering::Acquire),
            self.shared.measure_end_ns.load(Ordering::Acquire),
        )
    }

    /// How long the next poll may sleep; arms the timer for the next scheduled send.
    fn timeout(&mut self, now: u64, phase: Phase) -> Result<Duration, BenchError> {
        let mut t = 10_000_000u64;
        if !self.again.is_empty() || self.cfg.busy_poll {
            return Ok(Duration::ZERO);
        }
        let m_end = self.shared.measure_end_ns.load(Ordering::Acquire);
        if phase == Phase::Running && now < m_end {
            if let Some(at) = self.next_due() {
                if at <= now {
                    return Ok(Duration::ZERO);
                }
                self.timer.arm(at, at - now)?;
            }
        }
        if !self.pending.is_empty() {
            t = t.min(1_000_000);
        }
        Ok(Duration::from_nanos(t))
    }

    fn start_connections(&mut self, now: u64, thread_start: u64) -> Result<(), BenchError> {
        while self.handshakes < MAX_HANDSHAKES {
            let Some(&i) = self.pending.front() else {
                break;
            };
            if let Some(ramp) = self.cfg.ramp_per_sec {
                let per_thread = (ramp / self.cfg.threads as f64).max(1e-9);
                let at = thread_start + (self.started as f64 * 1e9 / per_thread) as u64;
                if self.conns[i].state == State::Pending && at > now && self.started > 0 {
                    break;
                }
            }
            self.pending.pop_front();
            let spec = &self.plan.clients[self.conns[i].spec];
            let stream = self.conns[i]
                .start(self.cfg.broker, spec.source)
                .map_err(|e| client_err(&spec.client_id, e))?;
            self.poll.registry().register(
                stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            self.handshakes += 1;
            self.started += 1;
        }
        Ok(())
    }

    fn mark(&mut self, i: usize) {
        if self.conns[i].dirty && !self.queued[i] {
            self.queued[i] = true;
            self.dirty.push(i);
        }
    }

    fn on_writable(&mut self, i: usize) -> Result<(), BenchError> {
        let c = &mut self.conns[i];
        if c.state == State::Connecting {
            let spec = &self.plan.clients[c.spec];
            c.check_connected(
                &spec.client_id,
                self.cfg.clean_session,
                self.cfg.version,
                self.cfg.keep_alive_secs,
                self.cfg.tls.as_ref(),
            )
            .map_err(|e| client_err(&spec.client_id, e))?;
        } else if c.has_output() {
            c.dirty = true;
        }
        self.mark(i);
        Ok(())
    }

    fn on_readable(
        &mut self,
        i: usize,
        now: u64,
        phase: Phase,
        m_start: u64,
        m_end: u64,
        closed: bool,
    ) -> Result<(), BenchError> {
        let c = &mut self.conns[i];
        if c.stream.is_none() || c.state == State::Connecting {
            return Ok(());
        }
        // A FIN or an error comes without new data: read to the end to see it.
        let open = c.read(&mut self.scratch, closed);
        let eof = matches!(open, Ok(false));
        let mut result = open.map(|_| ());
        if result.is_ok() {
            loop {
                match self.conns[i].next_incoming(self.cfg.qos) {
                    Ok(None) => break,
                    Ok(Some(inc)) => self.incoming(i, inc, now, m_start, m_end),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
        }
        self.mark(i);
        if self.conns[i].more_to_read {
            self.again.push(i);
        }
        if let (Ok(()), false) = (&result, eof) {
            return Ok(());
        }
        let err = result.err().unwrap_or(ClientError::Closed);
        let c = &self.conns[i];
        let spec = &self.plan.clients[c.spec];
        if phase == Phase::Connecting {
            return Err(client_err(&spec.client_id, err));
        }
        tracing::warn!(client = %spec.client_id, error = %err, "connection lost");
        self.res.disconnects += 1;
        self.close(i, State::Closed);
        Ok(())
    }

    fn close(&mut self, i: usize, to: State) {
        let c = &mut self.conns[i];
        if c.state == State::Ready {
            self.connected_turn -= 1;
        } else if matches!(
            c.state,
            State::Connecting | State::AwaitConnAck | State::AwaitSubAck
        ) {
            self.handshakes = self.handshakes.saturating_sub(1);
        }
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        self.unacked_turn -= c.ids.in_use as i64;
        c.ids.clear();
        c.state = to;
        c.wbuf.clear();
        c.rbuf.clear();
        c.more_to_read = false;
    }

    fn incoming(&mut self, i: usize, inc: Incoming, now: u64, m_start: u64, m_end: u64) {
        match inc {
            Incoming::Nothing => {}
            Incoming::Ready => {
                self.handshakes = self.handshakes.saturating_sub(1);
                self.connected_turn += 1;
                if self.ready_once < self.conns.len() {
                    self.ready_once += 1;
                    if self.ready_once == self.conns.len() && !self.reported_ready {
                        self.reported_ready = true;
                        self.shared.ready_threads.fetch_add(1, Ordering::AcqRel);
                    }
                }
            }
            Incoming::Acked => {
                self.unacked_turn -= 1;
                if let Some(p) = self.pub_of[i] {
                    self.pubs[p].last_progress_ns = now;
                }
            }
            Incoming::Message(None) => self.res.foreign += 1,
            Incoming::Message(Some(h)) => {
                self.recv_turn += 1;
                if now >= m_start && now < m_end {
                    self.res.received_measured += 1;
                }
                let Some(streams) = &mut self.streams[i] else {
                    self.res.foreign += 1;
                    return;
                };
                let outcome = streams.entry(h.publisher).or_default().record(h.seq);
                if outcome != Outcome::Duplicate {
                    self.distinct_turn += 1;
                    if self.cfg.qos == QoS::AtMostOnce && self.cfg.load == Load::Max {
                        if let Some(d) = self.shared.delivered.get(h.publisher as usize) {
                            d.fetch_add(1, Ordering::Relaxed);
                            let t = self.thread_of_pub[h.publisher as usize];
                            if t != self.index {
                                self.wake[t] = true;
                            }
                        }
                    }
                }
                if h.ts_ns >= m_start && h.ts_ns < m_end && now >= h.ts_ns {
                    self.latency.saturating_record((now - h.ts_ns).max(1));
                }
            }
        }
    }

    fn flush_dirty(&mut self, phase: Phase) -> Result<(), BenchError> {
        let dirty = std::mem::take(&mut self.dirty);
        for &i in &dirty {
            self.queued[i] = false;
            if let Err(e) = self.conns[i].flush() {
                let spec = &self.plan.clients[self.conns[i].spec];
                if phase == Phase::Connecting {
                    return Err(client_err(&spec.client_id, e));
                }
                tracing::warn!(client = %spec.client_id, error = %e, "write failed");
                self.res.disconnects += 1;
                self.close(i, State::Closed);
            }
        }
        let mut dirty = dirty;
        // A write interrupted by a signal asks to be flushed again next turn.
        dirty.retain(|&i| self.conns[i].dirty);
        for &i in &dirty {
            self.queued[i] = true;
        }
        self.dirty = dirty;
        Ok(())
    }

    fn publish_counters(&mut self) {
        let s = self.shared;
        let add = |a: &AtomicU64, v: &mut u64| {
            if *v > 0 {
                a.fetch_add(*v, Ordering::Relaxed);
                *v = 0;
            }
        };
        add(&s.sent, &mut self.sent_turn);
        add(&s.received, &mut self.recv_turn);
        add(&s.expected, &mut self.expected_turn);
        add(&s.distinct, &mut self.distinct_turn);
        if self.unacked_turn != 0 {
            s.unacked.fetch_add(self.unacked_turn, Ordering::Relaxed);
            self.unacked_turn = 0;
        }
        if self.connected_turn != 0 {
            s.connected
                .fetch_add(self.connected_turn, Ordering::Relaxed);
            self.connected_turn = 0;
        }
        for (t, w) in self.wake.iter_mut().enumerate() {
            if std::mem::take(w) {
                let _ = s.wakers[t].wake();
            }
        }
    }

    fn measure_cpu(&mut self, now: u64, m_start: u64, m_end: u64, phase: Phase) {
        if self.cpu_start.is_none() && now >= m_start && phase >= Phase::Running {
            self.cpu_start = Some((thread_cpu_ns(), now));
            self.wait_start = thread_wait_ns();
        }
        if let (Some((cpu0, t0)), false) = (self.cpu_start, self.cpu_done) {
            if now >= m_end || phase >= Phase::Draining {
                self.cpu_done = true;
                // Busy polling: the turns that found nothing were waiting, not work.
                self.res.cpu_ns = thread_cpu_ns()
                    .saturating_sub(cpu0)
                    .saturating_sub(self.idle_ns);
                self.res.wall_ns = now.saturating_sub(t0);
                self.res.wait_ns = self
                    .wait_start
                    .zip(thread_wait_ns())
                    .map(|(a, b)| b.saturating_sub(a));
            }
        }
    }

    fn finish(mut self) -> Result<ThreadResult, BenchError> {
        for i in 0..self.conns.len() {
            if self.conns[i].stream.is_some() && self.conns[i].state == State::Ready {
                self.conns[i].disconnect();
                let _ = self.conns[i].flush();
            }
            self.close(i, State::Closed);
        }
        self.publish_counters();
        if !self.quiet {
            self.quiet = true;
            self.shared.quiet_threads.fetch_add(1, Ordering::AcqRel);
        }
        let mut res = self.res;
        res.latency = self.latency;
        res.lag = self.lag;
        res.sent_per_publisher = self.pubs.iter().map(|p| (p.publisher, p.sent)).collect();
        for (i, s) in self.streams.into_iter().enumerate() {
            if let Some(s) = s {
                res.streams.push((self.conns[i].spec, s));
            }
        }
        Ok(res)
    }
}

fn client_err(client: &str, e: ClientError) -> BenchError {
    BenchError::Client {
        client: client.to_string(),
        source: e,
    }
}
