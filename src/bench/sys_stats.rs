//! `ternmq stats`: reads a broker's `$SYS/broker/...` topics as an ordinary MQTT
//! client and prints them as a table (clients, messages, drops per reason, and
//! ternmq's latency histograms).
//!
//! A blocking client on a std `TcpStream` with a read timeout, using our codec: it
//! connects, subscribes to `$SYS/broker/#`, and collects the retained values (and any
//! live update) for a fixed time. Works against Mosquitto too (no latency section).

use crate::protocol::{
    decode_one, encode_packet, Connect, Packet, PacketId, ProtocolVersion, QoS, SubOptions,
    Subscribe, TopicFilter,
};
use bytes::BytesMut;
use bytestring::ByteString;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Why the values could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("no $SYS/broker values received in {0:?} (is the broker's sys_interval 0?)")]
    Empty(Duration),
}

/// One latency histogram as published under `$SYS/broker/latency/<name>/`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyRow {
    /// `publish_ns`, `turn_ns`, `batch_len`, `batch_delay_ns`.
    pub name: String,
    pub count: Option<u64>,
    pub p50: Option<u64>,
    pub p99: Option<u64>,
    pub p999: Option<u64>,
    pub max: Option<u64>,
}

impl LatencyRow {
    /// Whether the values are nanoseconds (printed as µs) rather than counts.
    pub fn is_ns(&self) -> bool {
        self.name.ends_with("_ns")
    }
}

/// The `$SYS/broker/` values of one broker, by topic suffix (`clients/connected`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SysStats {
    pub values: BTreeMap<String, String>,
}

/// Topics shown in the "clients" and "messages" sections, in this order.
const CLIENTS: [&str; 5] = [
    "clients/connected",
    "clients/disconnected",
    "clients/total",
    "connections/total",
    "subscriptions/count",
];
const MESSAGES: [&str; 16] = [
    "messages/received",
    "messages/sent",
    "publish/messages/received",
    "publish/messages/sent",
    "publish/messages/dropped",
    "bytes/received",
    "bytes/sent",
    "retained messages/count",
    "store/messages/count",
    "protocol_errors",
    "backpressure/pauses",
    "auth/refused",
    "auth/revoked",
    "acl/denied_publish",
    "acl/denied_subscribe",
    "acl/denied_read",
];

impl SysStats {
    /// A value parsed as an integer (Mosquitto's `uptime` is "N seconds": first word).
    pub fn num(&self, key: &str) -> Option<u64> {
        self.values
            .get(key)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// Drops per reason (`dropped/<reason>`).
    pub fn dropped(&self) -> Vec<(String, Option<u64>)> {
        self.values
            .keys()
            .filter_map(|k| k.strip_prefix("dropped/"))
            .map(|r| (r.to_string(), self.num(&format!("dropped/{r}"))))
            .collect()
    }

    /// The latency histograms (`latency/<name>/{count,p50,p99,p999,max}`).
    pub fn latency(&self) -> Vec<LatencyRow> {
        let mut rows: BTreeMap<&str, LatencyRow> = BTreeMap::new();
        for k in self.values.keys() {
            let Some((name, q)) = k.strip_prefix("latency/").and_then(|r| r.split_once('/')) else {
                continue;
            };
            let row = rows.entry(name).or_insert_with(|| LatencyRow {
                name: name.to_string(),
                ..LatencyRow::default()
            });
            let v = self.num(k);
            match q {
                "count" => row.count = v,
                "p50" => row.p50 = v,
                "p99" => row.p99 = v,
                "p999" => row.p999 = v,
                "max" => row.max = v,
                _ => {}
            }
        }
        // publish first: it is the one that matters.
        let mut v: Vec<LatencyRow> = rows.into_values().collect();
        v.sort_by_key(|r| (r.name != "publish_ns", r.name.clone()));
        v
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let get = |k: &str| self.values.get(k).map_or("-", |v| v.as_str()).to_string();
        let _ = writeln!(s, "{}  uptime {}", get("version"), get("uptime"));
        for (title, keys) in [("clients", &CLIENTS[..]), ("messages", &MESSAGES[..])] {
            let _ = writeln!(s, "{title}");
            for k in keys {
                if self.values.contains_key(*k) {
                    let _ = writeln!(s, "  {:<28} {:>16}", k, get(k));
                }
            }
        }
        let dropped = self.dropped();
        if !dropped.is_empty() {
            let _ = writeln!(s, "dropped (per reason)");
            for (r, v) in dropped {
                let v = v.map_or("-".to_string(), |v| v.to_string());
                let _ = writeln!(s, "  {r:<28} {v:>16}");
            }
        }
        let rows = self.latency();
        if !rows.is_empty() {
            let _ = writeln!(
                s,
                "latency (µs; batch_len in messages)  {:>10} {:>10} {:>10} {:>10} {:>10}",
                "count", "p50", "p99", "p99.9", "max"
            );
            for r in rows {
                let f = |v: Option<u64>| match v {
                    None => "-".to_string(),
                    Some(v) if r.is_ns() => format!("{:.1}", v as f64 / 1e3),
                    Some(v) => v.to_string(),
                };
                let _ = writeln!(
                    s,
                    "  {:<34} {:>10} {:>10} {:>10} {:>10} {:>10}",
                    r.name.trim_end_matches("_ns"),
                    r.count.map_or("-".to_string(), |v| v.to_string()),
                    f(r.p50),
                    f(r.p99),
                    f(r.p999),
                    f(r.max)
                );
            }
        }
        let shown = |k: &str| {
            k == "version"
                || k == "uptime"
                || CLIENTS.contains(&k)
                || MESSAGES.contains(&k)
                || k.starts_with("dropped/")
                || k.starts_with("latency/")
        };
        let others: Vec<_> = self.values.iter().filter(|(k, _)| !shown(k)).collect();
        if !others.is_empty() {
            let _ = writeln!(s, "other");
            for (k, v) in others {
                let _ = writeln!(s, "  {k:<28} {v:>16}");
            }
        }
        s
    }
}

fn send(stream: &mut TcpStream, p: &Packet) -> Result<(), StatsError> {
    let mut out = Vec::new();
    encode_packet(p, &mut out);
    stream.write_all(&out)?;
    Ok(())
}

/// Reads into `buf` until `deadline`; returns the decoded packets (none on timeout).
fn read_packets(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    deadline: Instant,
) -> Result<Vec<Packet>, StatsError> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        while let Some(p) =
            decode_one(buf, 1 << 20).map_err(|e| StatsError::Protocol(e.to_string()))?
        {
            out.push(p);
        }
        if !out.is_empty() {
            return Ok(out);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(out);
        }
        stream.set_read_timeout(Some(left.min(Duration::from_millis(100))))?;
        match stream.read(&mut chunk) {
            Ok(0) => {
                return Err(StatsError::Protocol(
                    "connection closed by the broker".into(),
                ))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Connects to `addr`, subscribes to `$SYS/broker/#` and collects values for `wait`.
pub fn collect(addr: SocketAddr, wait: Duration) -> Result<SysStats, StatsError> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(16384);
    let connect = Packet::Connect(Box::new(Connect {
        version: ProtocolVersion::V3_1_1,
        clean_session: true,
        keep_alive_secs: 30,
        client_id: ByteString::from(format!("ternmq-stats-{}", std::process::id())),
        will: None,
        username: None,
        password: None,
        props: Default::default(),
    }));
    send(&mut stream, &connect)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    match read_packets(&mut stream, &mut buf, deadline)?.first() {
        Some(Packet::ConnAck(a)) if a.code.is_success() => {}
        Some(Packet::ConnAck(a)) => {
            return Err(StatsError::Protocol(format!(
                "CONNACK refused: {:?}",
                a.code
            )))
        }
        Some(p) => {
            return Err(StatsError::Protocol(format!(
                "expected CONNACK, got {}",
                p.name()
            )))
        }
        None => return Err(StatsError::Protocol("no CONNACK within 5 s".into())),
    }
    let filter = TopicFilter::new("$SYS/broker/#").expect("constant filter is valid");
    send(
        &mut stream,
        &Packet::Subscribe(Subscribe {
            packet_id: PacketId::new(1).expect("nonzero"),
            filters: vec![(filter, SubOptions::qos(QoS::AtMostOnce))],
            props: Default::default(),
        }),
    )?;
    let mut stats = SysStats::default();
    let end = Instant::now() + wait;
    while Instant::now() < end {
        for p in read_packets(&mut stream, &mut buf, end)? {
            if let Packet::Publish(p) = p {
                if let Some(k) = p.topic.as_str().strip_prefix("$SYS/broker/") {
                    let v = String::from_utf8_lossy(&p.payload).trim().to_string();
                    stats.values.insert(k.to_string(), v);
                }
            }
        }
    }
    let _ = send(&mut stream, &Packet::disconnect());
    if stats.values.is_empty() {
        return Err(StatsError::Empty(wait));
    }
    Ok(stats)
}

/// Options of `ternmq stats`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatsArgs {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// Seconds to collect values for.
    #[arg(long, default_value_t = 1.5, value_name = "SECS")]
    pub wait: f64,
    /// Also print how to dump (SIGUSR1) and reset (SIGUSR2) the broker's histograms.
    #[arg(long)]
    pub reset_hint: bool,
}

/// How to print and reset a ternmq broker's latency histograms.
pub const RESET_HINT: &str = "\
The histograms are cumulative since the broker started or was last reset:
  kill -USR1 $(pidof ternmq)   # the broker prints the merged histograms (ns) on stderr
  kill -USR2 $(pidof ternmq)   # resets them (e.g. between two benchmark runs)
$SYS values are republished every sys_interval (--sys-interval, default 10 s).
";

impl StatsArgs {
    pub fn execute(&self) -> Result<SysStats, StatsError> {
        let wait = Duration::try_from_secs_f64(self.wait)
            .map_err(|_| StatsError::Protocol(format!("bad --wait {}", self.wait)))?;
        let stats = collect(SocketAddr::new(self.host, self.port), wait)?;
        print!("{}", stats.table());
        if self.reset_hint {
            print!("\n{RESET_HINT}");
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        let mut s = SysStats::default();
        for (k, v) in [
            ("version", "ternmq 0.1.0"),
            ("uptime", "12 seconds"),
            ("clients/connected", "3"),
            ("dropped/qos0_offline", "7"),
            ("latency/publish_ns/p50", "12500"),
            ("latency/publish_ns/count", "100"),
            ("latency/batch_len/p50", "4"),
            ("load/bytes/received/1min", "1.5"),
        ] {
            s.values.insert(k.into(), v.into());
        }
        assert_eq!(s.num("uptime"), Some(12));
        assert_eq!(s.dropped(), vec![("qos0_offline".to_string(), Some(7))]);
        let l = s.latency();
        assert_eq!(l[0].name, "publish_ns");
        assert_eq!(l[0].p50, Some(12500));
        assert_eq!(l[1].name, "batch_len");
        let t = s.table();
        assert!(t.contains("12.5"), "{t}");
        assert!(t.contains("qos0_offline"));
        assert!(t.contains("load/bytes/received/1min"));
    }
}
