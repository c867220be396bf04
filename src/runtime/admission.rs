//! The accept gate: `max_connections` and `max_connections_per_ip_per_sec`.
//!
//! Owns: the count of open connections (one atomic shared by all workers, touched
//! once when a connection is accepted and once when it ends, never per packet) and
//! worker 0's per-IP tables of admitted connections in the current and the previous
//! one-second window.
//! Must not: read sockets or make protocol decisions. A refused connection is closed
//! at accept, before any byte of it is read: no buffer, no TLS handshake and no
//! CONNECT timer is spent on it (a CONNACK 0x03 / 0x97 would need the CONNECT first,
//! which is the very work the limit protects).
//!
//! The rate is a sliding one-second window, estimated from two fixed windows (the
//! previous window's count weighted by how much of it the sliding second still
//! covers, plus the current count), so an address cannot make twice the limit across
//! a window boundary, as a plain fixed window lets it. Only admitted connections
//! count, so an address retrying in a tight loop still gets the limit's worth of
//! connections each second. Each table holds at most
//! [`PER_IP_TABLE_MAX`] addresses and the older one is dropped when a window ends, so
//! memory is bounded whatever the number of peers; an address arriving while the
//! current table is full is admitted untracked (fail open) and logged.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Addresses tracked per one-second window (two windows: about 5 MB at most).
pub(crate) const PER_IP_TABLE_MAX: usize = 65_536;
/// The rate window.
const WINDOW: Duration = Duration::from_secs(1);
/// At most one warning per kind of refusal per this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_connections` connections are open.
    Max,
    /// Its address made `max_connections_per_ip_per_sec` connections this second.
    Rate,
}

/// The accept gate of worker 0.
#[derive(Debug)]
pub(crate) struct Admission {
    open: Arc<AtomicUsize>,
    /// 0: no limit.
    max_open: usize,
    /// 0: no limit.
    per_ip_per_sec: u32,
    window_start: Option<Instant>,
    /// Admitted connections per address in the current window.
    per_ip: HashMap<IpAddr, u32>,
    /// The same for the window before it.
    previous: HashMap<IpAddr, u32>,
    /// When each kind was last logged, and refusals since.
    warned: [(Option<Instant>, u64); 2],
}

impl Admission {
    pub(crate) fn new(open: Arc<AtomicUsize>, max_open: usize, per_ip_per_sec: u32) -> Self {
        Admission {
            open,
            max_open,
            per_ip_per_sec,
            window_start: None,
            per_ip: HashMap::new(),
            previous: HashMap::new(),
            warned: [(None, 0); 2],
        }
    }

    /// Admits a connection from `ip` (counting it open) or says why not.
    pub(crate) fn admit(&mut self, now: Instant, ip: IpAddr) -> Result<(), Refusal> {
        if self.per_ip_per_sec > 0 && !self.within_rate(now, ip.to_canonical()) {
            self.warn(now, Refusal::Rate, ip);
            return Err(Refusal::Rate);
        }
        // Only worker 0 admits, so load-then-add cannot overshoot.
        if self.max_open > 0 && self.open.load(Ordering::Relaxed) >= self.max_open {
            self.warn(now, Refusal::Max, ip);
            return Err(Refusal::Max);
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn within_rate(&mut self, now: Instant, ip: IpAddr) -> bool {
        let start = self.roll(now);
        // How much of the previous window the sliding second ending now covers.
        let covered =
            1.0 - now.saturating_duration_since(start).as_secs_f64() / WINDOW.as_secs_f64();
        let before = f64::from(self.previous.get(&ip).copied().unwrap_or(0)) * covered.max(0.0);
        let current = self.per_ip.get(&ip).copied().unwrap_or(0);
        if before + f64::from(current) + 1.0 > f64::from(self.per_ip_per_sec) {
            return false;
        }
        if current > 0 || self.per_ip.len() < PER_IP_TABLE_MAX {
            self.per_ip.insert(ip, current + 1);
        } else {
            tracing::debug!(%ip, "per-IP table full: admitted untracked");
        }
        true
    }

    /// Starts a new window when the current one is over (the current table becomes
    /// the previous one; after a whole idle window both are dropped) and returns
    /// when the current window started.
    fn roll(&mut self, now: Instant) -> Instant {
        let start = match self.window_start {
            Some(s) if now.saturating_duration_since(s) < WINDOW => return s,
            Some(s) if now.saturating_duration_since(s) < 2 * WINDOW => {
                std::mem::swap(&mut self.previous, &mut self.per_ip);
                s + WINDOW
            }
            _ => {
                self.previous.clear();
                now
            }
        };
        self.per_ip.clear();
        for t in [&mut self.per_ip, &mut self.previous] {
            if t.capacity() > PER_IP_TABLE_MAX {
                t.shrink_to(PER_IP_TABLE_MAX);
            }
        }
        self.window_start = Some(start);
        start
    }

    /// One log line per kind per second, with the count since the last one.
    fn warn(&mut self, now: Instant, kind: Refusal, ip: IpAddr) {
        let (last, count) = &mut self.warned[kind as usize];
        *count += 1;
        if last.is_some_and(|t| now.saturating_duration_since(t) < WARN_INTERVAL) {
            return;
        }
        *last = Some(now);
        let refused = std::mem::take(count);
        match kind {
            Refusal::Max => tracing::warn!(
                %ip, refused, max_connections = self.max_open,
                "connection refused: max_connections open"
            ),
            Refusal::Rate => tracing::warn!(
                %ip, refused, max_connections_per_ip_per_sec = self.per_ip_per_sec,
                "connection refused: per-IP connection rate exceeded"
            ),
        }
    }

    /// Addresses in the current window (for tests).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.per_ip.len()
    }
}

/// A connection counted open has ended (or was never adopted).
pub(crate) fn release(open: &AtomicUsize) {
    let prev = open.fetch_sub(1, Ordering::Relaxed);
    debug_assert!(prev > 0, "open-connection count underflow");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn max_open_counts_releases() {
        let open = Arc::new(AtomicUsize::new(0));
        let mut a = Admission::new(open.clone(), 2, 0);
        let now = Instant::now();
        assert_eq!(a.admit(now, ip(1)), Ok(()));
        assert_eq!(a.admit(now, ip(1)), Ok(()));
        assert_eq!(a.admit(now, ip(2)), Err(Refusal::Max));
        release(&open);
        assert_eq!(a.admit(now, ip(2)), Ok(()));
        assert_eq!(open.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn rate_is_per_address_and_per_window() {
        let open = Arc::new(AtomicUsize::new(0));
        let mut a = Admission::new(open, 0, 2);
        let t0 = Instant::now();
        assert_eq!(a.admit(t0, ip(1)), Ok(()));
        assert_eq!(a.admit(t0, ip(1)), Ok(()));
        assert_eq!(a.admit(t0, ip(1)), Err(Refusal::Rate));
        assert_eq!(
            a.admit(t0, ip(2)),
            Ok(()),
            "another address is not affected"
        );
        let v6 = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(a.admit(t0, v6), Err(Refusal::Rate), "v4-mapped is the same");
        assert_eq!(
            a.admit(t0 + WINDOW, ip(1)),
            Err(Refusal::Rate),
            "the last second still holds two connections"
        );
        let t2 = t0 + 3 * WINDOW;
        assert_eq!(a.admit(t2, ip(1)), Ok(()), "a quiet window later");
        assert_eq!(a.admit(t2, ip(1)), Ok(()));
        assert_eq!(a.admit(t2, ip(1)), Err(Refusal::Rate));
    }

    #[test]
    fn a_window_boundary_does_not_double_the_rate() {
        let open = Arc::new(AtomicUsize::new(0));
        let mut a = Admission::new(open, 0, 2);
        let t0 = Instant::now();
        assert_eq!(a.admit(t0, ip(9)), Ok(()), "starts the window");
        let late = t0 + Duration::from_millis(900);
        assert_eq!(a.admit(late, ip(1)), Ok(()));
        assert_eq!(a.admit(late, ip(1)), Ok(()));
        // A fixed window would admit two more right after its boundary.
        let after = t0 + Duration::from_millis(1001);
        assert_eq!(a.admit(after, ip(1)), Err(Refusal::Rate));
        // 600 ms into the window, 40% of the previous one is still covered:
        // 2 x 0.4 + 1 <= 2 admits one, 2 x 0.4 + 2 > 2 refuses the next.
        let later = t0 + Duration::from_millis(1600);
        assert_eq!(a.admit(later, ip(1)), Ok(()));
        assert_eq!(a.admit(later, ip(1)), Err(Refusal::Rate));
    }

    #[test]
    fn a_client_retrying_in_a_tight_loop_still_gets_in() {
        let open = Arc::new(AtomicUsize::new(0));
        let mut a = Admission::new(open, 0, 10);
        let t0 = Instant::now();
        let mut per_second = [0; 4];
        for ms in (0..4000).step_by(5) {
            let ok = a.admit(t0 + Duration::from_millis(ms), ip(1)).is_ok();
            per_second[ms as usize / 1000] += usize::from(ok);
        }
        // The estimate is conservative (attempts bunch at each window's start, where
        // the previous window still weighs fully): a little under the limit, never
        // over it.
        for n in per_second {
            assert!((8..=10).contains(&n), "{per_second:?}");
        }
    }

    #[test]
    fn the_table_is_bounded() {
        let open = Arc::new(AtomicUsize::new(0));
        let mut a = Admission::new(open, 0, 1);
        let now = Instant::now();
        for n in 0..PER_IP_TABLE_MAX as u32 + 10 {
            assert_eq!(a.admit(now, ip(n)), Ok(()));
        }
        assert_eq!(a.tracked(), PER_IP_TABLE_MAX);
        // The full table becomes the previous window's (ip(1) is still counted
        // there); the new window starts empty.
        assert_eq!(a.admit(now + WINDOW, ip(1)), Err(Refusal::Rate));
        assert_eq!(a.admit(now + WINDOW, ip(0x00ff_ffff)), Ok(()));
        assert_eq!(a.tracked(), 1, "a new window starts empty");
        assert_eq!(a.admit(now + 3 * WINDOW, ip(1)), Ok(()), "both dropped");
        assert_eq!(a.tracked(), 1);
    }
}
