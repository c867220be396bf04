//! The outputs of a run: the summary table (stdout), one JSON line (`--json`), and the
//! HDR percentile distribution in the standard `.hgrm` text format (`--hgrm FILE`).
//!
//! JSON is written by hand: the report is a flat record of numbers and a few fixed
//! strings, so a serializer dependency would buy nothing.

use super::accounting::Tally;
use super::scenario::{BenchConfig, Load, Plan, Role, Scenario};
use super::stats::new_histogram;
use hdrhistogram::Histogram;
use std::fmt::Write;

/// The broker process's figures over the measured interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerStats {
    /// utime + stime spent during the measured interval, ns.
    pub cpu_ns: u64,
    /// RSS before the generator connected, bytes.
    pub rss_idle: u64,
    /// RSS at the end of the measured interval (connections still open), bytes.
    pub rss_end: u64,
}

/// Everything a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub scenario: Scenario,
    pub connections: usize,
    pub publishers: usize,
    pub subscribers: usize,
    pub qos: u8,
    pub payload_bytes: usize,
    /// "max/inflight=N", "rate=R" or "interval=I".
    pub mode: String,
    /// Length of the measured interval.
    pub seconds: f64,
    /// Messages sent with a (scheduled) send time in the measured interval.
    pub sent: u64,
    /// Deliveries received during the measured interval (duplicates included).
    pub received: u64,
    /// Messages sent over the whole run (warmup and measured).
    pub sent_total: u64,
    /// Loss, duplicates and reordering over the whole run, after the drain.
    pub tally: Tally,
    /// Whether every expected delivery and ack arrived before the drain timeout.
    pub drained: bool,
    /// Messages without our header, or on a connection that expects none.
    pub foreign: u64,
    pub disconnects: u64,
    pub reconnects: u64,
    /// Closed-loop QoS 0 windows written off after a second without deliveries.
    pub stalls: u64,
    /// End-to-end latency, ns.
    pub latency: Histogram<u64>,
    /// Open loop: how late sends left compared with their schedule, ns.
    pub lag: Histogram<u64>,
    /// CPU use of each generator thread over the measured interval (1.0 = one core).
    pub generator_cpu: Vec<f64>,
    /// Share of the same interval each generator thread was runnable but waiting for
    /// a core (empty where the kernel does not say).
    pub generator_wait: Vec<f64>,
    pub broker: Option<BrokerStats>,
    pub warnings: Vec<String>,
}

impl Report {
    pub(crate) fn new(cfg: &BenchConfig, plan: &Plan) -> Report {
        let subscribers = plan
            .clients
            .iter()
            .filter(|c| !matches!(c.role, Role::Publisher { .. }))
            .count();
        let mode = match (cfg.scenario, cfg.load) {
            (Scenario::Conns, _) => "idle".to_string(),
            (Scenario::Fleet, _) => format!("interval={}s churn={}", cfg.interval_secs, cfg.churn),
            (_, Load::Rate(r)) => format!("rate={r}"),
            (_, Load::Max) => format!("max inflight={}", cfg.inflight),
        };
        let mode = if cfg.busy_poll {
            format!("{mode} busy-poll")
        } else {
            mode
        };
        Report {
            scenario: cfg.scenario,
            connections: plan.clients.len(),
            publishers: plan.publishers(),
            subscribers,
            qos: cfg.qos.as_u8(),
            payload_bytes: cfg.payload_bytes,
            mode,
            seconds: 0.0,
            sent: 0,
            received: 0,
            sent_total: 0,
            tally: Tally::default(),
            drained: true,
            foreign: 0,
            disconnects: 0,
            reconnects: 0,
            stalls: 0,
            latency: new_histogram(),
            lag: new_histogram(),
            generator_cpu: Vec::new(),
            generator_wait: Vec::new(),
            broker: None,
            warnings: Vec::new(),
        }
    }

    /// Deliveries per second over the measured interval.
    pub fn msgs_per_sec(&self) -> f64 {
        if self.seconds > 0.0 {
            self.received as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// Broker CPU µs per delivered message.
    pub fn broker_us_per_msg(&self) -> Option<f64> {
        let b = self.broker?;
        (self.received > 0).then(|| b.cpu_ns as f64 / 1e3 / self.received as f64)
    }

    /// Broker RSS growth per connection while connected, bytes.
    pub fn broker_rss_per_conn(&self) -> Option<f64> {
        let b = self.broker?;
        Some((b.rss_end as f64 - b.rss_idle as f64) / self.connections.max(1) as f64)
    }

    fn quantile_us(&self, q: f64) -> f64 {
        if self.latency.is_empty() {
            return 0.0;
        }
        self.latency.value_at_quantile(q) as f64 / 1e3
    }

    fn lag_p99_us(&self) -> f64 {
        if self.lag.is_empty() {
            return 0.0;
        }
        self.lag.value_at_quantile(0.99) as f64 / 1e3
    }

    /// The (CPU, wait) shares of the first generator thread that was runnable more
    /// than 90% of the time without using 90% of a core: saturated, but starved of
    /// its core by another process. Not with busy polling, whose thread is always
    /// runnable by design.
    fn starved_thread(&self, cfg: &BenchConfig) -> Option<(f64, f64)> {
        if cfg.busy_poll {
            return None;
        }
        self.generator_cpu
            .iter()
            .zip(&self.generator_wait)
            .map(|(&cpu, &wait)| (cpu, wait))
            .find(|&(cpu, wait)| cpu <= 0.9 && cpu + wait > 0.9)
    }

    pub(crate) fn add_warnings(&mut self, cfg: &BenchConfig) {
        let open = matches!(cfg.load, Load::Rate(_)) || cfg.scenario == Scenario::Fleet;
        if open && self.lag_p99_us() > 1000.0 {
            self.warnings.push(format!(
                "generator lag p99 {:.0} us > 1 ms: sends left late; the generator, not the broker, may be the bottleneck",
                self.lag_p99_us()
            ));
        }
        if let Some(max) = self.generator_cpu.iter().cloned().reduce(f64::max) {
            if max > 0.9 {
                self.warnings.push(format!(
                    "a generator thread used {:.0}% of a core: the generator may be the bottleneck (try --threads)",
                    max * 100.0
                ));
            } else if let Some((cpu, wait)) = self.starved_thread(cfg) {
                self.warnings.push(format!(
                    "a generator thread was ready to run {:.0}% of the time but ran {:.0}%: it waited for its core, which another busy process shares, so the generator may be the bottleneck",
                    (cpu + wait) * 100.0,
                    cpu * 100.0
                ));
            }
        }
        if self.disconnects > 0 {
            self.warnings.push(format!(
                "{} connections lost during the run",
                self.disconnects
            ));
        }
        if self.stalls > 0 {
            self.warnings.push(format!(
                "{} QoS 0 windows stalled for 1 s and were written off (messages dropped)",
                self.stalls
            ));
        }
        if !self.drained {
            self.warnings
                .push("drain timeout: not every message or ack arrived".to_string());
        }
        if self.foreign > 0 {
            self.warnings.push(format!(
                "{} messages without a benchmark header were received",
                self.foreign
            ));
        }
        if self.latency.is_empty() && self.publishers > 0 {
            self.warnings
                .push("no message was measured (interval too short?)".to_string());
        }
    }

    /// The human-readable summary.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let t = &self.tally;
        let _ = writeln!(
            s,
            "scenario {}  connections {} ({} pub, {} sub)  qos {}  payload {} B  {}  measured {:.2} s",
            self.scenario.name(),
            self.connections,
            self.publishers,
            self.subscribers,
            self.qos,
            self.payload_bytes,
            self.mode,
            self.seconds
        );
        let _ = writeln!(
            s,
            "{:>12} {:>12} {:>12} {:>10} {:>8} {:>8}",
            "sent", "received", "msg/s", "lost", "dup", "ooo"
        );
        let _ = writeln!(
            s,
            "{:>12} {:>12} {:>12.0} {:>10} {:>8} {:>8}",
            self.sent,
            self.received,
            self.msgs_per_sec(),
            t.lost,
            t.duplicates,
            t.out_of_order
        );
        let _ = writeln!(
            s,
            "latency us {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "p50", "p90", "p99", "p99.9", "p99.99", "max"
        );
        let _ = writeln!(
            s,
            "           {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            self.quantile_us(0.5),
            self.quantile_us(0.9),
            self.quantile_us(0.99),
            self.quantile_us(0.999),
            self.quantile_us(0.9999),
            self.latency.max() as f64 / 1e3
        );
        let _ = writeln!(
            s,
            "whole run: sent {}  expected deliveries {}  received {}  lost {} ({:.4}%)",
            self.sent_total,
            t.expected,
            t.received,
            t.lost,
            if t.expected > 0 {
                t.lost as f64 * 100.0 / t.expected as f64
            } else {
                0.0
            }
        );
        let percents = |shares: &[f64]| {
            let p: Vec<String> = shares
                .iter()
                .map(|c| format!("{:.0}%", c * 100.0))
                .collect();
            p.join(" ")
        };
        let _ = writeln!(
            s,
            "generator: cpu per thread [{}]  waiting for a core [{}]  lag p99 {:.1} us  reconnects {}",
            percents(&self.generator_cpu),
            percents(&self.generator_wait),
            self.lag_p99_us(),
            self.reconnects
        );
        if let Some(b) = self.broker {
            let _ = writeln!(
                s,
                "broker: cpu {:.3} s  {:.3} us/msg  rss {:.1} MiB -> {:.1} MiB ({:.0} B/conn)",
                b.cpu_ns as f64 / 1e9,
                self.broker_us_per_msg().unwrap_or(0.0),
                b.rss_idle as f64 / 1048576.0,
                b.rss_end as f64 / 1048576.0,
                self.broker_rss_per_conn().unwrap_or(0.0)
            );
        }
        for w in &self.warnings {
            let _ = writeln!(s, "WARNING: {w}");
        }
        s
    }

    /// One JSON object on one line.
    pub fn json(&self) -> String {
        let t = &self.tally;
        let num = |v: f64| {
            if v.is_finite() {
                format!("{v:.3}")
            } else {
                "null".to_string()
            }
        };
        let opt = |v: Option<f64>| v.map_or("null".to_string(), num);
        let mut s = String::from("{");
        let _ = write!(
            s,
            "\"scenario\":{},\"connections\":{},\"publishers\":{},\"subscribers\":{},\"qos\":{},\"payload_bytes\":{},\"mode\":{},\"seconds\":{},",
            json_str(self.scenario.name()),
            self.connections,
            self.publishers,
            self.subscribers,
            self.qos,
            self.payload_bytes,
            json_str(&self.mode),
            num(self.seconds)
        );
        let _ = write!(
            s,
            "\"sent\":{},\"received\":{},\"msgs_per_sec\":{},\"sent_total\":{},\"expected\":{},\"received_distinct\":{},\"lost\":{},\"duplicates\":{},\"out_of_order\":{},\"drained\":{},\"foreign\":{},\"disconnects\":{},\"reconnects\":{},\"stalls\":{},",
            self.sent,
            self.received,
            num(self.msgs_per_sec()),
            self.sent_total,
            t.expected,
            t.received,
            t.lost,
            t.duplicates,
            t.out_of_order,
            self.drained,
            self.foreign,
            self.disconnects,
            self.reconnects,
            self.stalls
        );
        let _ = write!(
            s,
            "\"latency_us\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"p99_9\":{},\"p99_99\":{},\"max\":{}}},\"lag_p99_us\":{},",
            num(self.quantile_us(0.5)),
            num(self.quantile_us(0.9)),
            num(self.quantile_us(0.99)),
            num(self.quantile_us(0.999)),
            num(self.quantile_us(0.9999)),
            num(self.latency.max() as f64 / 1e3),
            num(self.lag_p99_us())
        );
        let list = |shares: &[f64]| {
            let n: Vec<String> = shares.iter().map(|c| num(*c)).collect();
            n.join(",")
        };
        let _ = write!(s, "\"generator_cpu\":[{}],", list(&self.generator_cpu));
        let _ = write!(s, "\"generator_wait\":[{}],", list(&self.generator_wait));
        match self.broker {
            Some(b) => {
                let _ = write!(
                    s,
                    "\"broker\":{{\"cpu_s\":{},\"us_per_msg\":{},\"rss_idle\":{},\"rss_end\":{},\"rss_per_conn\":{}}},",
                    num(b.cpu_ns as f64 / 1e9),
                    opt(self.broker_us_per_msg()),
                    b.rss_idle,
                    b.rss_end,
                    opt(self.broker_rss_per_conn())
                );
            }
            None => s.push_str("\"broker\":null,"),
        }
        let w: Vec<String> = self.warnings.iter().map(|w| json_str(w)).collect();
        let _ = write!(s, "\"warnings\":[{}]}}", w.join(","));
        s
    }

    /// The latency distribution in the `.hgrm` format of HdrHistogram's
    /// `outputPercentileDistribution`, values in microseconds.
    pub fn hgrm(&self) -> String {
        hgrm(&self.latency, 1000.0)
    }
}

/// `.hgrm` text of `h`, dividing values by `scale` (1000: ns recorded, µs printed).
pub fn hgrm(h: &Histogram<u64>, scale: f64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = h.highest_equivalent(v.value_iterated_to()) as f64 / scale;
            if q < 1.0 {
                let _ = writeln!(
                    s,
                    "{value:12.3} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(s, "{value:12.3} {q:2.12} {total:10}");
            }
        }
    }
    let (mean, sd, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (h.mean() / scale, h.stdev() / scale, h.max() as f64 / scale)
    };
    let _ = writeln!(s, "#[Mean    = {mean:12.3}, StdDeviation   = {sd:12.3}]");
    let _ = writeln!(
        s,
        "#[Max     = {max:12.3}, Total count    = {:12}]",
        h.len()
    );
    let _ = writeln!(
        s,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_buckets(h.sigfig())
    );
    s
}

/// HdrHistogram's sub-bucket count for `sigfig` significant digits: the smallest
/// power of two at least `2 * 10^sigfig`.
fn sub_buckets(sigfig: u8) -> u64 {
    (2 * 10u64.pow(u32::from(sigfig))).next_power_of_two()
}

fn json_str(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hgrm_format() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.saturating_record(v * 1000); // 1..1000 us
        }
        let out = hgrm(&h, 1000.0);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].trim_start().starts_with("Value"));
        assert_eq!(lines[1], "");
        assert!(lines[2].contains("0.000000000000"));
        let last_data = lines[lines.len() - 4];
        assert!(last_data.contains("1.000000000000"), "{last_data}");
        assert!(last_data.trim_end().ends_with("1000"));
        assert!(out.contains("Total count    =         1000"));
        assert!(out.contains("SubBuckets     =         2048"));
    }

    #[test]
    fn json_is_escaped() {
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
        let cfg = BenchConfig::default();
        let r = Report::new(&cfg, &Plan::new(&cfg));
        let j = r.json();
        assert!(j.starts_with("{\"scenario\":\"pairs\""));
        assert!(j.ends_with("\"warnings\":[]}"));
        assert!(!j.contains('\n'));
    }

    /// A thread that ran half the time and waited for its core the other half is
    /// saturated; one that ran half the time and slept the rest is not.
    #[test]
    fn a_generator_waiting_for_its_core_is_reported_saturated() {
        let warned = |cpu: f64, wait: f64, busy_poll: bool| {
            let cfg = BenchConfig {
                busy_poll,
                ..BenchConfig::default()
            };
            let mut r = Report::new(&cfg, &Plan::new(&cfg));
            r.generator_cpu = vec![0.3, cpu];
            r.generator_wait = vec![0.1, wait];
            r.add_warnings(&cfg);
            r.warnings.iter().any(|w| w.contains("waited for its core"))
        };
        assert!(warned(0.52, 0.40, false));
        assert!(!warned(0.52, 0.05, false));
        assert!(!warned(0.52, 0.40, true));
        // Over 90% of a core is the other warning's case.
        assert!(!warned(0.95, 0.04, false));
        let cfg = BenchConfig::default();
        let mut r = Report::new(&cfg, &Plan::new(&cfg));
        r.generator_cpu = vec![0.5];
        r.generator_wait = vec![0.45];
        assert!(
            r.json().contains("\"generator_wait\":[0.45"),
            "{}",
            r.json()
        );
    }
}
