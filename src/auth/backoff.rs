//! Per-address back-off of failed logins, so that guessing passwords is slow.
//!
//! Owns: a bounded table of failure counts by client address (IPv4 address, or the
//! /64 prefix of an IPv6 address: one host usually holds a whole /64), on an
//! explicit `now`.
//! Must not: read the clock, or grow without bound however many addresses fail.
//!
//! Rule: the first [`FREE_FAILURES`] failures from an address cost nothing; after
//! that each failure blocks the address for [`BLOCK_BASE`] x 2^(failures - free),
//! at most [`BLOCK_MAX`]. While blocked, CONNECTs from the address are refused
//! without looking at the password. An entry is forgotten [`FORGET_AFTER`] after
//! its last failure (or its block, whichever ends later). A successful login does
//! not clear the count, so one valid account cannot reset the count while guessing
//! another's password.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failures from one address before it is blocked.
pub const FREE_FAILURES: u32 = 5;
/// The first block.
pub const BLOCK_BASE: Duration = Duration::from_secs(1);
/// The longest block.
pub const BLOCK_MAX: Duration = Duration::from_secs(300);
/// Quiet time after which an address starts afresh.
pub const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Addresses tracked at once; beyond, the oldest entries are dropped.
pub const ADDRESSES_MAX: usize = 65_536;

/// The table key: an IPv4 address or an IPv6 /64 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    V4(u32),
    V6(u64),
}

impl From<IpAddr> for Key {
    fn from(ip: IpAddr) -> Key {
        match ip {
            IpAddr::V4(a) => Key::V4(u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Key::V4(u32::from(v4)),
                None => Key::V6((u128::from(a) >> 64) as u64),
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    blocked_until: Instant,
}

impl Entry {
    fn forget_at(&self) -> Instant {
        (self.last_failure + FORGET_AFTER).max(self.blocked_until)
    }
}

/// Failed logins by address.
#[derive(Debug, Default)]
pub struct Backoff {
    entries: HashMap<Key, Entry>,
}

impl Backoff {
    /// Until when the address is blocked, if it is at `now`.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Instant> {
        self.entries
            .get(&Key::from(ip))
            .map(|e| e.blocked_until)
            .filter(|&t| t > now)
    }

    /// Records a failed login; returns the block it caused, if any.
    pub fn failure(&mut self, ip: IpAddr, now: Instant) -> Option<Instant> {
        let key = Key::from(ip);
        if !self.entries.contains_key(&key) && self.entries.len() >= ADDRESSES_MAX {
            self.make_room(now);
        }
        let e = self.entries.entry(key).or_insert(Entry {
            failures: 0,
            last_failure: now,
            blocked_until: now,
        });
        if e.forget_at() <= now {
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        e.last_failure = now;
        if e.failures <= FREE_FAILURES {
            return None;
        }
        let exp = (e.failures - FREE_FAILURES - 1).min(16);
        let block = BLOCK_BASE.saturating_mul(1 << exp).min(BLOCK_MAX);
        e.blocked_until = now + block;
        Some(e.blocked_until)
    }

    /// Addresses tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops forgotten entries, then, if the table is still full, the eighth with
    /// the oldest failures (a scan, at most once per [`ADDRESSES_MAX`] / 8 new
    /// addresses).
    fn make_room(&mut self, now: Instant) {
        self.entries.retain(|_, e| e.forget_at() > now);
        if self.entries.len() < ADDRESSES_MAX {
            return;
        }
        let mut ages: Vec<Instant> = self.entries.values().map(|e| e.last_failure).collect();
        let cut = ages.len() / 8;
        ages.select_nth_unstable(cut);
        let Some(&threshold) = ages.get(cut) else {
            return;
        };
        self.entries.retain(|_, e| e.last_failure > threshold);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_grow_exponentially_after_the_free_failures() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        let a = ip("127.0.0.2");
        for _ in 0..FREE_FAILURES {
            assert_eq!(b.failure(a, t0), None);
            assert_eq!(b.blocked(a, t0), None);
        }
        assert_eq!(b.failure(a, t0), Some(t0 + BLOCK_BASE));
        assert_eq!(b.blocked(a, t0), Some(t0 + BLOCK_BASE));
        assert_eq!(b.blocked(a, t0 + BLOCK_BASE), None);
        let t1 = t0 + BLOCK_BASE;
        assert_eq!(b.failure(a, t1), Some(t1 + BLOCK_BASE * 2));
        let t2 = t1 + BLOCK_BASE * 2;
        assert_eq!(b.failure(a, t2), Some(t2 + BLOCK_BASE * 4));
        // Capped.
        let mut t = t2;
        for _ in 0..40 {
            t += BLOCK_MAX;
            b.failure(a, t);
        }
        assert_eq!(b.blocked(a, t), Some(t + BLOCK_MAX));
        // Another address is unaffected.
        assert_eq!(b.blocked(ip("127.0.0.3"), t), None);
    }

    #[test]
    fn quiet_addresses_start_afresh() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        let a = ip("10.0.0.1");
        for _ in 0..FREE_FAILURES {
            b.failure(a, t0);
        }
        let later = t0 + FORGET_AFTER;
        assert_eq!(b.failure(a, later), None, "count restarted");
    }

    #[test]
    fn ipv6_is_keyed_by_its_64_prefix_and_mapped_v4_by_address() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        for i in 0..=FREE_FAILURES {
            b.failure(ip(&format!("2001:db8::{i}")), t0);
        }
        assert!(b.blocked(ip("2001:db8::ffff"), t0).is_some());
        assert!(b.blocked(ip("2001:db8:0:1::1"), t0).is_none());
        for _ in 0..=FREE_FAILURES {
            b.failure(ip("::ffff:192.0.2.1"), t0);
        }
        assert!(b.blocked(ip("192.0.2.1"), t0).is_some());
    }

    #[test]
    fn the_table_is_bounded() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        for i in 0..(ADDRESSES_MAX as u32 + 1000) {
            let at = t0 + Duration::from_micros(u64::from(i));
            b.failure(IpAddr::from(i.to_be_bytes()), at);
            assert!(b.len() <= ADDRESSES_MAX);
        }
        // The newest survive.
        let newest = IpAddr::from((ADDRESSES_MAX as u32 + 999).to_be_bytes());
        assert!(b.entries.contains_key(&Key::from(newest)));
    }
}
