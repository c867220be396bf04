//! The open-loop scheduler: when each message is *supposed* to be sent.
//!
//! A run offers a fixed total rate `R` msg/s spread evenly over `P` publishers:
//! publisher `i`'s `k`-th message is due at `start + (k * P + i) / R` seconds, so the
//! sends of all publishers interleave at exactly `1/R` spacing. Sends are decided in
//! advance and never wait for replies; a late event loop sends everything that is due
//! at once, and the latency recorded for each message is measured from its scheduled
//! time (the timestamp put in the payload), never from when it actually left. That is
//! what keeps a stalled broker (or generator) from hiding its stalls: coordinated
//! omission. How late sends are (the *lag*) measures the generator's own saturation.
//!
//! Everything here is a pure function of a virtual clock in ns, so it is unit-tested.

/// The schedule of one publisher in an open-loop run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Time of message 0 of publisher 0, ns since the generator epoch.
    pub start_ns: u64,
    /// Publisher index among `publishers`.
    pub index: u32,
    /// Number of publishers sharing the total rate.
    pub publishers: u32,
    /// ns between two messages of the *whole* run (1e9 / total rate).
    pub gap_ns: f64,
}

impl Schedule {
    /// `total_rate` messages per second over `publishers` publishers.
    pub fn new(start_ns: u64, index: u32, publishers: u32, total_rate: f64) -> Schedule {
        let publishers = publishers.max(1);
        let rate = if total_rate > 0.0 { total_rate } else { 1.0 };
        Schedule {
            start_ns,
            index,
            publishers,
            gap_ns: 1e9 / rate,
        }
    }

    /// A schedule where every publisher sends once per `period_secs` (the `fleet`
    /// scenario): the same as a total rate of `publishers / period_secs`.
    pub fn periodic(start_ns: u64, index: u32, publishers: u32, period_secs: f64) -> Schedule {
        let publishers = publishers.max(1);
        Schedule::new(start_ns, index, publishers, publishers as f64 / period_secs)
    }

    /// When this publisher's `k`-th message (from 0) is due.
    pub fn at(&self, k: u64) -> u64 {
        let slot = k as f64 * self.publishers as f64 + self.index as f64;
        self.start_ns + (slot * self.gap_ns) as u64
    }

    /// How many of this publisher's messages are due at `now_ns`, counting from
    /// message `next_k` on, capped at `max`.
    pub fn due(&self, next_k: u64, now_ns: u64, max: u64) -> u64 {
        let mut n = 0;
        while n < max && self.at(next_k + n) <= now_ns {
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_rate_is_spread_evenly() {
        // 1000 msg/s over 4 publishers: one message every 1 ms, round-robin.
        let s: Vec<Schedule> = (0..4).map(|i| Schedule::new(0, i, 4, 1000.0)).collect();
        assert_eq!(s[0].at(0), 0);
        assert_eq!(s[1].at(0), 1_000_000);
        assert_eq!(s[3].at(0), 3_000_000);
        assert_eq!(s[0].at(1), 4_000_000);
        // Over one second of virtual time exactly 1000 messages are due in total.
        let total: u64 = s.iter().map(|p| p.due(0, 999_999_999, u64::MAX)).sum();
        assert_eq!(total, 1000);
    }

    #[test]
    fn a_late_turn_sends_everything_due_with_its_lag() {
        let s = Schedule::new(10_000, 0, 1, 100.0); // every 10 ms from t=10 us
                                                    // The event loop wakes 35 ms late: messages 0..=3 are due.
        let now = 10_000 + 35_000_000;
        assert_eq!(s.due(0, now, u64::MAX), 4);
        let lags: Vec<u64> = (0..4).map(|k| now - s.at(k)).collect();
        assert_eq!(lags, vec![35_000_000, 25_000_000, 15_000_000, 5_000_000]);
        // The cap bounds one turn's work; the rest stay due for the next turn.
        assert_eq!(s.due(0, now, 2), 2);
        assert_eq!(s.due(2, now, u64::MAX), 2);
        // Nothing is due before the start.
        assert_eq!(s.due(0, 9_999, u64::MAX), 0);
    }

    #[test]
    fn periodic_devices() {
        // 10 devices, each every 2 s: device 5 first sends at 1 s, then every 2 s.
        let d = Schedule::periodic(0, 5, 10, 2.0);
        assert_eq!(d.at(0), 1_000_000_000);
        assert_eq!(d.at(1), 3_000_000_000);
        assert_eq!(d.due(0, 4_000_000_000, u64::MAX), 2);
    }
}
