//! A `timerfd` in the generator thread's epoll set, for waking at the next scheduled
//! send to the nanosecond.
//!
//! `mio::Poll::poll` takes its timeout in whole milliseconds (rounded up), so an open
//! loop that slept until its next send by timeout alone would send up to 1 ms late
//! whenever no socket event happened to wake it first: at 50 k msg/s that is most
//! sends, and the lag goes straight into the measured latency. A `timerfd` is an
//! hrtimer without slack: the thread sleeps in `epoll_wait` and wakes when the first
//! send is due. It is armed relative to a clock reading taken just before, so it never
//! fires before the send is due by the generator's clock; it is re-armed only when
//! the target changes, and never read (`timerfd_settime` clears an expiry, and each
//! new expiry is a new edge for the edge-triggered epoll set).

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Token of each generator thread's timer (the waker has `usize::MAX`).
pub(super) const TIMER: Token = Token(usize::MAX - 1);

/// One thread's send timer.
pub(super) struct Timer {
    fd: OwnedFd,
    /// The send time (generator ns) the timer is set for, if it has not fired yet.
    armed: Option<u64>,
}

impl Timer {
    /// A disarmed timer on `CLOCK_MONOTONIC` (the clock of `Instant`), registered
    /// with `registry` under [`TIMER`].
    pub fn new(registry: &Registry) -> io::Result<Timer> {
        // SAFETY: timerfd_create has no memory preconditions; the descriptor it returns
        // is owned by the OwnedFd below and closed once.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        registry.register(&mut SourceFd(&fd.as_raw_fd()), TIMER, Interest::READABLE)?;
        Ok(Timer { fd, armed: None })
    }

    /// Makes the timer fire `in_ns` from now, for the send due at `target`; nothing
    /// to do if it is already set for that send.
    pub fn arm(&mut self, target: u64, in_ns: u64) -> io::Result<()> {
        if self.armed == Some(target) {
            return Ok(());
        }
        // A zero it_value would disarm the timer.
        let in_ns = in_ns.max(1);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (in_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (in_ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: `spec` is a valid itimerspec; a null old_value is allowed.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        self.armed = Some(target);
        Ok(())
    }

    /// The timer's event was seen: the next [`Timer::arm`] sets it again even for the
    /// same target.
    pub fn fired(&mut self) {
        self.armed = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};
    use std::time::{Duration, Instant};

    #[test]
    fn wakes_poll_at_the_armed_time_not_a_millisecond_later() {
        let mut poll = Poll::new().unwrap();
        let mut t = Timer::new(poll.registry()).unwrap();
        let mut events = Events::with_capacity(4);
        let mut best = Duration::MAX;
        // Best of many tries: a shared machine may deschedule us on any one of them.
        for round in 0..20u64 {
            let start = Instant::now();
            t.arm(round, 200_000).unwrap();
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            let took = start.elapsed();
            assert!(events.iter().any(|e| e.token() == TIMER), "timer event");
            assert!(took >= Duration::from_micros(200), "{took:?}");
            t.fired();
            best = best.min(took);
        }
        // mio alone would round a 200 us timeout up to 1 ms.
        assert!(best < Duration::from_micros(900), "{best:?}");
        // Arming twice for the same send sets the timer once; re-arming moves it.
        t.arm(7, 50_000_000).unwrap();
        t.arm(7, 1).unwrap();
        poll.poll(&mut events, Some(Duration::from_millis(5)))
            .unwrap();
        assert!(events.iter().all(|e| e.token() != TIMER));
        t.arm(8, 1_000).unwrap();
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        assert!(events.iter().any(|e| e.token() == TIMER));
    }
}
