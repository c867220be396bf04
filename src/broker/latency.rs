//! Latency histograms kept by each worker and merged off the hot path.
//!
//! Owns: what is measured and how it is summarised. The runtime records values (it
//! is the only one that reads the clock); worker 0 merges every worker's copy for
//! `$SYS/broker/latency/...`; the binary merges them on SIGUSR1.
//! Must not: read the clock or allocate per record.

use hdrhistogram::Histogram;

/// Highest value tracked (60 s in ns); larger values are clamped.
const HIGHEST_NS: u64 = 60_000_000_000;

/// One worker's latency histograms.
#[derive(Debug, Clone)]
pub struct Latency {
    /// From the start of the turn (or of the turn's 16-socket slice) that decoded a
    /// PUBLISH to the end of the flush that handed this worker's deliveries of it to
    /// the sockets (ns). Cross-worker publishes are measured from the origin's turn to
    /// the destination's flush.
    pub publish_ns: Histogram<u64>,
    /// Duration of event-loop turns that did work (ns).
    pub turn_ns: Histogram<u64>,
    /// Messages per cross-worker batch received.
    pub batch_len: Histogram<u64>,
    /// Messages per cross-worker batch sent before the end of its turn, recorded by
    /// the sender: a batch that reached `MESH_SEND_AT` after a read, or one sent
    /// ahead of a mid-turn write (`flush_slice`). Its count says how often a loaded
    /// worker hands work over early instead of at the end of its turn.
    pub batch_len_mid_turn: Histogram<u64>,
    /// From the origin turn that started a batch to its receipt (ns).
    pub batch_delay_ns: Histogram<u64>,
}

fn hist(high: u64) -> Histogram<u64> {
    // 3 significant digits; the bounds are constants, valid by construction.
    Histogram::new_with_bounds(1, high, 3).expect("constant histogram bounds are valid")
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            publish_ns: hist(HIGHEST_NS),
            turn_ns: hist(HIGHEST_NS),
            batch_len: hist(1 << 24),
            batch_len_mid_turn: hist(1 << 24),
            batch_delay_ns: hist(HIGHEST_NS),
        }
    }
}

/// A summary line of one histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub name: &'static str,
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latency {
    pub fn record_publish(&mut self, ns: u64, count: u64) {
        if count > 0 {
            let _ = self.publish_ns.record_n(ns.clamp(1, HIGHEST_NS), count);
        }
    }

    pub fn record_turn(&mut self, ns: u64) {
        let _ = self.turn_ns.record(ns.clamp(1, HIGHEST_NS));
    }

    pub fn record_batch(&mut self, len: u64, delay_ns: u64) {
        let _ = self.batch_len.record(len.clamp(1, 1 << 24));
        let _ = self.batch_delay_ns.record(delay_ns.clamp(1, HIGHEST_NS));
    }

    pub fn record_batch_mid_turn(&mut self, len: u64) {
        let _ = self.batch_len_mid_turn.record(len.clamp(1, 1 << 24));
    }

    /// Adds another worker's histograms.
    pub fn merge(&mut self, o: &Latency) {
        let _ = self.publish_ns.add(&o.publish_ns);
        let _ = self.turn_ns.add(&o.turn_ns);
        let _ = self.batch_len.add(&o.batch_len);
        let _ = self.batch_len_mid_turn.add(&o.batch_len_mid_turn);
        let _ = self.batch_delay_ns.add(&o.batch_delay_ns);
    }

    pub fn reset(&mut self) {
        self.publish_ns.reset();
        self.turn_ns.reset();
        self.batch_len.reset();
        self.batch_len_mid_turn.reset();
        self.batch_delay_ns.reset();
    }

    /// One summary per histogram, named as under `$SYS/broker/latency/`.
    pub fn summaries(&self) -> [Summary; 5] {
        let s = |name, h: &Histogram<u64>| Summary {
            name,
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        };
        [
            s("publish_ns", &self.publish_ns),
            s("turn_ns", &self.turn_ns),
            s("batch_len", &self.batch_len),
            s("batch_len_mid_turn", &self.batch_len_mid_turn),
            s("batch_delay_ns", &self.batch_delay_ns),
        ]
    }

    /// A multi-line human-readable report.
    pub fn report(&self) -> String {
        let mut out = String::from(
            "metric                 count        p50        p99      p99.9        max\n",
        );
        for s in self.summaries() {
            out.push_str(&format!(
                "{:<18} {:>9} {:>10} {:>10} {:>10} {:>10}\n",
                s.name, s.count, s.p50, s.p99, s.p999, s.max
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_merge_reset() {
        let mut a = Latency::default();
        a.record_publish(1_000, 3);
        a.record_publish(5_000, 0);
        let mut b = Latency::default();
        b.record_publish(2_000_000, 1);
        b.record_batch(10, 500);
        b.record_batch_mid_turn(1024);
        a.merge(&b);
        let [p, _, bl, bm, bd] = a.summaries();
        assert_eq!(p.count, 4);
        assert!(p.p50 >= 999 && p.p50 <= 1_001);
        assert!(p.max >= 1_999_000);
        assert_eq!(bl.count, 1);
        assert_eq!(bd.count, 1);
        assert_eq!(bm.count, 1);
        assert!(bm.p50 >= 1023 && bm.p50 <= 1025);
        a.reset();
        assert_eq!(a.summaries()[0].count, 0);
        assert!(a.report().contains("publish_ns"));
    }
}
