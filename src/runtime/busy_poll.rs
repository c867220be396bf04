//! Busy polling: whether an event loop may sleep in its next poll.
//!
//! Owns one decision and nothing else: after a turn that found work, the loop polls
//! with a zero timeout (it returns at once) until `window` has passed without work,
//! and only then sleeps until its next deadline. Knows nothing of sockets or threads;
//! the worker (`worker.rs`) and the load generator ask it for the poll timeout and
//! tell it when a turn was busy.
//!
//! Why: when messages arrive one by one, a sleeping loop is woken for each, and on a
//! virtual machine a wake-up (an inter-processor interrupt, a context switch) costs
//! several microseconds on the sender's side and adds as many to the message's
//! latency. A polling loop is found by the kernel already running. The price is a
//! core kept busy for `window` after each activity, so it is off by default and
//! meant for a worker that owns its core.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub(crate) struct BusyPoll {
    window: Duration,
    last_active: Option<Instant>,
}

impl BusyPoll {
    /// `window` zero turns busy polling off: `timeout` passes every wait through.
    pub(crate) fn new(window: Duration) -> Self {
        BusyPoll {
            window,
            last_active: None,
        }
    }

    /// The turn that started at `at` found work.
    pub(crate) fn active(&mut self, at: Instant) {
        if !self.window.is_zero() {
            self.last_active = Some(at);
        }
    }

    /// The timeout for the next poll: zero while `now` is within the window after the
    /// last busy turn, otherwise `wait` (None: no deadline).
    pub(crate) fn timeout(&self, now: Instant, wait: Option<Duration>) -> Option<Duration> {
        match self.last_active {
            Some(at) if now.saturating_duration_since(at) < self.window => Some(Duration::ZERO),
            _ => wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_zero_window_never_changes_the_wait() {
        let t = Instant::now();
        let mut b = BusyPoll::new(Duration::ZERO);
        b.active(t);
        assert_eq!(b.timeout(t, Some(5 * MS)), Some(5 * MS));
        assert_eq!(b.timeout(t, None), None);
    }

    #[test]
    fn the_loop_polls_within_the_window_after_work_and_sleeps_after_it() {
        let t = Instant::now();
        let mut b = BusyPoll::new(Duration::from_micros(200));
        // Before any work: sleep.
        assert_eq!(b.timeout(t, None), None);
        b.active(t);
        assert_eq!(b.timeout(t, None), Some(Duration::ZERO));
        assert_eq!(
            b.timeout(t + Duration::from_micros(199), Some(10 * MS)),
            Some(Duration::ZERO)
        );
        assert_eq!(b.timeout(t + Duration::from_micros(200), None), None);
        assert_eq!(b.timeout(t + MS, Some(3 * MS)), Some(3 * MS));
        // New work opens a new window.
        b.active(t + MS);
        assert_eq!(b.timeout(t + MS, Some(3 * MS)), Some(Duration::ZERO));
    }

    #[test]
    fn a_zero_wait_stays_zero() {
        let t = Instant::now();
        let b = BusyPoll::new(Duration::from_micros(50));
        assert_eq!(b.timeout(t, Some(Duration::ZERO)), Some(Duration::ZERO));
    }
}
