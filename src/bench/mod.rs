//! `ternmq bench`: the bundled MQTT load generator.
//!
//! Owns: the scenarios ([`scenario`]), a small non-blocking MQTT 3.1.1 client on `mio`
//! ([`client`]), one event loop per generator thread ([`worker`]), the open-loop
//! scheduler ([`schedule`]), payload headers ([`payload`]), loss accounting
//! ([`accounting`]), measurements ([`stats`]) and the outputs ([`report`]).
//! [`run`] is the library entry point used by the `bench` subcommand and the tests.
//!
//! Must not: connect anywhere but loopback, run unbounded (every run ends after
//! `warmup + duration + drain`, or earlier), or hide loss: QoS 1/2 loss is reported
//! like any other.
//!
//! The coordinator (the calling thread) spawns the generator threads, waits until
//! every connection is up and subscribed, starts the clock, prints progress, samples
//! the broker process, then drains and merges the threads' results.

pub mod accounting;
pub mod cli;
pub mod client;
pub mod payload;
pub mod plot;
pub mod report;
pub mod scenario;
pub mod schedule;
mod shared;
pub mod stats;
pub mod sys_stats;
mod worker;

pub use report::Report;
pub use scenario::{BenchConfig, Load, Plan, Scenario};

use accounting::Tally;
use mio::{Poll, Waker};
use scenario::{Role, Sources};
use shared::{Phase, Shared, ThreadResult};
use stats::{new_histogram, sample_process, ProcSample};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use worker::Worker;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid settings: {0}")]
    Config(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("client {client}: {source}")]
    Client {
        client: String,
        source: client::ClientError,
    },
    #[error("cannot sample the broker process: {0}")]
    Proc(String),
    #[error("setup: {0}")]
    Setup(String),
    #[error("generator thread {0} panicked")]
    Thread(usize),
}

/// Runs one benchmark and returns its report. Blocks for about
/// `warmup + duration` plus connection setup and at most `drain`.
pub fn run(cfg: &BenchConfig) -> Result<Report, BenchError> {
    cfg.validate()?;
    let plan = Plan::new(cfg);
    let fds = stats::raise_fd_limit();
    // Each client is one socket; a few more for epoll, wakers, /proc and stdio.
    if let Some(limit) = fds {
        let need = plan.clients.len() as u64 + 64;
        if need > limit {
            return Err(BenchError::Config(format!(
                "{} connections need about {need} file descriptors; the limit is {limit} (ulimit -n)",
                plan.clients.len()
            )));
        }
    }
    let threads = cfg.threads;
    let sample = || cfg.broker_pid.map(sample_process).transpose();
    let broker_idle = sample()?;
    let mut polls = Vec::new();
    let mut wakers = Vec::new();
    for _ in 0..threads {
        let poll = Poll::new()?;
        wakers.push(Waker::new(poll.registry(), shared::WAKER)?);
        polls.push(poll);
    }
    let shared = Shared {
        epoch: Instant::now(),
        phase: AtomicU8::new(Phase::Connecting as u8),
        send_start_ns: AtomicU64::new(u64::MAX),
        measure_start_ns: AtomicU64::new(u64::MAX),
        measure_end_ns: AtomicU64::new(u64::MAX),
        ready_threads: AtomicUsize::new(0),
        connected: AtomicI64::new(0),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        expected: AtomicU64::new(0),
        distinct: AtomicU64::new(0),
        unacked: AtomicI64::new(0),
        publishers_done: AtomicUsize::new(0),
        quiet_threads: AtomicUsize::new(0),
        delivered: (0..plan.publishers()).map(|_| AtomicU64::new(0)).collect(),
        wakers,
        p50: (0..threads).map(|_| AtomicU64::new(0)).collect(),
        p99: (0..threads).map(|_| AtomicU64::new(0)).collect(),
        failed: AtomicBool::new(false),
    };
    let (shared, plan) = (&shared, &plan);
    let outcome = std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for (i, poll) in polls.into_iter().enumerate() {
            let core = (!cfg.pin.is_empty()).then(|| cfg.pin[i % cfg.pin.len()]);
            let h = std::thread::Builder::new()
                .name(format!("bench-{i}"))
                .spawn_scoped(scope, move || {
                    if let Some(id) = core {
                        if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
                            tracing::warn!(core = id, "cannot pin generator thread");
                        }
                    }
                    let r = Worker::new(i, cfg, plan, shared, poll).and_then(Worker::run);
                    if r.is_err() {
                        shared.failed.store(true, Ordering::Release);
                    }
                    r
                });
            match h {
                Ok(h) => handles.push(h),
                Err(e) => {
                    // Threads already started stop on Done; the scope joins them.
                    shared.set_phase(Phase::Done);
                    return Err(BenchError::Io(e));
                }
            }
        }
        let coord = coordinate(cfg, plan, shared);
        shared.set_phase(Phase::Done);
        let mut results = Vec::new();
        let mut first_err = None;
        for (i, h) in handles.into_iter().enumerate() {
            match h.join() {
                Ok(Ok(r)) => results.push(r),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(BenchError::Thread(i));
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        coord.map(|c| (c, results))
    });
    let (coord, results) = outcome?;
    Ok(merge(cfg, plan, coord, results, broker_idle))
}

/// What the coordinator measured.
struct Coord {
    measured: Duration,
    broker_start: Option<ProcSample>,
    broker_end: Option<ProcSample>,
    drained: bool,
}

fn coordinate(cfg: &BenchConfig, plan: &Plan, shared: &Shared) -> Result<Coord, BenchError> {
    let sample = || cfg.broker_pid.map(sample_process).transpose();
    let total = plan.clients.len();
    let setup_limit = Duration::from_secs(30)
        + cfg.ramp_per_sec.map_or(Duration::ZERO, |r| {
            Duration::from_secs_f64(total as f64 / r)
        });
    let t0 = Instant::now();
    let mut next_line = t0 + Duration::from_secs(1);
    while shared.ready_threads.load(Ordering::Acquire) < cfg.threads {
        if shared.failed.load(Ordering::Acquire) {
            return Err(BenchError::Setup("a generator thread failed".into()));
        }
        if t0.elapsed() > setup_limit {
            return Err(BenchError::Setup(format!(
                "only {} of {total} connections ready after {:?}",
                shared.connected.load(Ordering::Relaxed),
                setup_limit
            )));
        }
        if cfg.progress && Instant::now() >= next_line {
            next_line += Duration::from_secs(1);
            eprintln!(
                "[connecting] {}/{total} connected",
                shared.connected.load(Ordering::Relaxed)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let now = shared.now_ns();
    let measure_start = now + cfg.warmup.as_nanos() as u64;
    let mut measure_end = measure_start + cfg.duration.as_nanos() as u64;
    shared.send_start_ns.store(now, Ordering::Release);
    shared
        .measure_start_ns
        .store(measure_start, Ordering::Release);
    shared.measure_end_ns.store(measure_end, Ordering::Release);
    shared.set_phase(Phase::Running);

    let mut broker_start = None;
    let mut progress = Progress::new(shared.now_ns());
    loop {
        let now = shared.now_ns();
        if shared.failed.load(Ordering::Acquire) {
            return Err(BenchError::Setup("a generator thread failed".into()));
        }
        if broker_start.is_none() && now >= measure_start {
            broker_start = Some(sample()?);
        }
        if plan.publishers() > 0
            && shared.publishers_done.load(Ordering::Acquire) == plan.publishers()
            && now < measure_end
        {
            measure_end = now.max(measure_start);
            shared.measure_end_ns.store(measure_end, Ordering::Release);
        }
        if now >= measure_end {
            break;
        }
        if cfg.progress {
            progress.tick(now, total, shared);
        }
        let until = measure_end.min(if broker_start.is_none() {
            measure_start
        } else {
            u64::MAX
        });
        let nap = until.saturating_sub(now).min(50_000_000);
        std::thread::sleep(Duration::from_nanos(nap.max(100_000)));
    }
    let broker_end = sample()?;
    let broker_start = broker_start.unwrap_or(sample()?);
    shared.set_phase(Phase::Draining);
    let drain_end = Instant::now() + cfg.drain;
    let drained = loop {
        // A thread may still be in the turn that sent the last messages, with its
        // `expected` not yet added: until every thread is quiet, `got >= expected` could
        // hold with those deliveries still on their way (and then lost to the stop).
        let quiet = shared.quiet_threads.load(Ordering::Acquire) >= cfg.threads;
        let expected = shared.expected.load(Ordering::Acquire);
        let got = shared.distinct.load(Ordering::Acquire);
        let unacked = shared.unacked.load(Ordering::Acquire);
        if quiet && got >= expected && unacked <= 0 {
            break true;
        }
        if Instant::now() >= drain_end || shared.failed.load(Ordering::Acquire) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(Coord {
        measured: Duration::from_nanos(measure_end.saturating_sub(measure_start)),
        broker_start,
        broker_end,
        drained,
    })
}

/// The once-a-second progress line on stderr.
struct Progress {
    start: u64,
    next: u64,
    sent: u64,
    received: u64,
}

impl Progress {
    fn new(now: u64) -> Progress {
        Progress {
            start: now,
            next: now + 1_000_000_000,
            sent: 0,
            received: 0,
        }
    }

    fn tick(&mut self, now: u64, total: usize, shared: &Shared) {
        if now < self.next {
            return;
        }
        self.next += 1_000_000_000;
        let sent = shared.sent.load(Ordering::Relaxed);
        let received = shared.received.load(Ordering::Relaxed);
        let max = |v: &[AtomicU64]| v.iter().map(|a| a.load(Ordering::Relaxed)).max();
        let us = |ns: Option<u64>| ns.map_or(0.0, |n| n as f64 / 1e3);
        let phase = if now < shared.measure_start_ns.load(Ordering::Relaxed) {
            "warmup"
        } else {
            "measure"
        };
        eprintln!(
            "[{:>4}s {phase}] connected {}/{total}  sent/s {}  recv/s {}  p50 {:.1}us  p99 {:.1}us",
            (now - self.start) / 1_000_000_000,
            shared.connected.load(Ordering::Relaxed),
            sent - self.sent,
            received - self.received,
            us(max(&shared.p50)),
            us(max(&shared.p99)),
        );
        self.sent = sent;
        self.received = received;
    }
}

fn merge(
    cfg: &BenchConfig,
    plan: &Plan,
    coord: Coord,
    results: Vec<ThreadResult>,
    broker_idle: Option<ProcSample>,
) -> Report {
    let mut latency = new_histogram();
    let mut lag = new_histogram();
    let mut sent_by = vec![0u64; plan.publishers()];
    let mut report = Report::new(cfg, plan);
    let mut streams = std::collections::HashMap::new();
    for r in results {
        // Both histograms share bounds, so `add` cannot fail.
        let _ = latency.add(&r.latency);
        let _ = lag.add(&r.lag);
        for (p, n) in r.sent_per_publisher {
            sent_by[p as usize] = n;
        }
        streams.extend(r.streams);
        report.sent += r.sent_measured;
        report.received += r.received_measured;
        report.foreign += r.foreign;
        report.disconnects += r.disconnects;
        report.reconnects += r.reconnects;
        report.stalls += r.stalls;
        if r.wall_ns > 0 {
            report
                .generator_cpu
                .push(r.cpu_ns as f64 / r.wall_ns as f64);
            if let Some(wait) = r.wait_ns {
                report.generator_wait.push(wait as f64 / r.wall_ns as f64);
            }
        }
    }
    let mut tally = Tally::default();
    for (ci, spec) in plan.clients.iter().enumerate() {
        let Role::Subscriber { sources, .. } = &spec.role else {
            continue;
        };
        let mine = streams.get(&ci);
        let mut add = |p: u32| tally.add(mine.and_then(|m| m.get(&p)), sent_by[p as usize]);
        match *sources {
            Sources::One(p) => add(p),
            Sources::All => (0..plan.publishers() as u32).for_each(add),
        }
    }
    report.sent_total = sent_by.iter().sum();
    report.tally = tally;
    report.drained = coord.drained;
    report.seconds = coord.measured.as_secs_f64();
    report.latency = latency;
    report.lag = lag;
    if let (Some(idle), Some(a), Some(b)) = (broker_idle, coord.broker_start, coord.broker_end) {
        report.broker = Some(report::BrokerStats {
            cpu_ns: b.cpu_ns.saturating_sub(a.cpu_ns),
            rss_idle: idle.rss_bytes,
            rss_end: b.rss_bytes,
        });
    }
    report.add_warnings(cfg);
    report
}
