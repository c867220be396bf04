//! What the coordinator and the generator threads share: the run's [`Phase`], the
//! measurement window, and progress counters, all as atomics (no lock on any path),
//! plus the per-thread [`ThreadResult`] handed back at the end.

use super::accounting::Streams;
use hdrhistogram::Histogram;
use mio::{Token, Waker};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::time::Instant;

/// Token of each generator thread's waker.
pub(crate) const WAKER: Token = Token(usize::MAX);

/// Where the run is; set by the coordinator only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Phase {
    Connecting = 0,
    Running = 1,
    Draining = 2,
    Done = 3,
}

/// State shared by the coordinator and the generator threads (atomics only).
pub(crate) struct Shared {
    pub epoch: Instant,
    pub phase: AtomicU8,
    pub send_start_ns: AtomicU64,
    pub measure_start_ns: AtomicU64,
    pub measure_end_ns: AtomicU64,
    pub ready_threads: AtomicUsize,
    pub connected: AtomicI64,
    pub sent: AtomicU64,
    pub received: AtomicU64,
    /// Deliveries that should happen: sum over sends of the publisher's fan-out.
    pub expected: AtomicU64,
    /// Distinct deliveries that did happen.
    pub distinct: AtomicU64,
    /// QoS 1/2 publishes not yet acknowledged.
    pub unacked: AtomicI64,
    pub publishers_done: AtomicUsize,
    /// Threads that have seen [`Phase::Draining`] and published their counters after
    /// their last send: `expected` is final once this equals the thread count.
    pub quiet_threads: AtomicUsize,
    /// Per publisher: deliveries received (closed-loop QoS 0 acknowledgement).
    pub delivered: Vec<AtomicU64>,
    pub wakers: Vec<Waker>,
    /// Per thread: latency p50 / p99 so far, ns (for the progress line).
    pub p50: Vec<AtomicU64>,
    pub p99: Vec<AtomicU64>,
    pub failed: AtomicBool,
}

impl Shared {
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Connecting,
            1 => Phase::Running,
            2 => Phase::Draining,
            _ => Phase::Done,
        }
    }

    pub fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Release);
        for w in &self.wakers {
            let _ = w.wake();
        }
    }
}

/// What a thread hands back at the end.
pub(crate) struct ThreadResult {
    pub latency: Histogram<u64>,
    pub lag: Histogram<u64>,
    /// (publisher, messages sent in total).
    pub sent_per_publisher: Vec<(u32, u64)>,
    /// (client index in the plan, its streams by publisher).
    pub streams: Vec<(usize, Streams)>,
    pub sent_measured: u64,
    pub received_measured: u64,
    pub foreign: u64,
    pub disconnects: u64,
    pub reconnects: u64,
    pub stalls: u64,
    pub cpu_ns: u64,
    pub wall_ns: u64,
    /// Time runnable but waiting for a core over the same interval, if known.
    pub wait_ns: Option<u64>,
}
