//! The `ternmq bench` command line: parsing into a [`BenchConfig`], running, and
//! printing the report (table or JSON on stdout, progress on stderr, `.hgrm` file).

use super::plot::{parse_hgrm, plot_files, svg, PlotOptions};
use super::scenario::{BenchConfig, Load, Scenario};
use super::BenchError;
use crate::protocol::{ProtocolVersion, QoS};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Options of `ternmq bench <scenario>`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// What to run.
    #[arg(value_enum, required = true)]
    pub scenario: Option<Scenario>,
    /// Broker host (loopback only).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// QoS of publishes and subscriptions.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload size in bytes (at least 16: timestamp, sequence, publisher id).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Prefix of every topic (`PREFIX/pairs/3`).
    #[arg(long, default_value = "")]
    pub topic_prefix: String,
    /// Clean sessions (the default).
    #[arg(long, conflicts_with = "persistent")]
    pub clean: bool,
    /// Persistent sessions (clean session = 0; MQTT 5: session expiry "never").
    #[arg(long)]
    pub persistent: bool,
    /// Protocol the clients speak: 3.1.1 or 5.
    #[arg(long, default_value = "3.1.1", value_parser = ["3.1.1", "5"])]
    pub mqtt: String,
    /// New connections per second (default: as fast as the broker accepts).
    #[arg(long, value_name = "CONNS_PER_SEC")]
    pub ramp: Option<f64>,
    /// Local source addresses, `127.0.0.2-127.0.0.20` or `A,B,...` (loopback only).
    #[arg(long, value_name = "RANGE")]
    pub source: Option<String>,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    pub warmup: f64,
    /// Seconds measured (`conns`: seconds the connections are held).
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub duration: f64,
    /// Seconds to wait for late messages and acks before counting loss.
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    pub drain: f64,
    /// Stop after this many messages in total.
    #[arg(long, value_name = "N")]
    pub messages: Option<u64>,
    /// Generator threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Pin generator threads to these cores, round-robin.
    #[arg(long, value_delimiter = ',', value_name = "CORE,...")]
    pub pin: Vec<usize>,
    /// Open loop: total offered rate, messages per second.
    #[arg(long, conflicts_with = "max", value_name = "MSGS_PER_SEC")]
    pub rate: Option<f64>,
    /// Closed loop (the default): each publisher keeps `--inflight` messages in flight.
    #[arg(long)]
    pub max: bool,
    /// Unacknowledged messages per publisher (closed loop; QoS 1/2 cap in open loop).
    #[arg(long, default_value_t = 100)]
    pub inflight: usize,
    /// pairs: pairs; fanin: publishers; fanout: subscribers; conns, fleet: connections
    /// or devices. Default 10 (conns, fleet: 1000).
    #[arg(long, short = 'n', visible_aliases = ["pairs", "publishers", "subscribers", "connections", "devices"])]
    pub count: Option<usize>,
    /// fleet: backend subscribers on `devices/+/telemetry`.
    #[arg(long, default_value_t = 1)]
    pub backends: usize,
    /// fleet: seconds between two messages of one device.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    pub interval: f64,
    /// fleet: fraction of devices dropped and reconnected per second.
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    pub churn: f64,
    /// Keep-alive in CONNECT, seconds (0 = none). No PINGREQ is sent, so it must
    /// outlast the run; for brokers that refuse 0 (rumqttd).
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    pub keep_alive: u16,
    /// Broker process id: report its CPU per message and RSS from /proc.
    #[arg(long, value_name = "PID")]
    pub broker_pid: Option<u32>,
    /// Print one JSON line instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write the latency distribution (µs) in .hgrm format to FILE.
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,
    /// Write a latency-by-percentile plot of this run (SVG) to FILE.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Generator threads poll without sleeping: a delivery finds its subscriber
    /// running, so the generator's own wake-up is not in the measured latency. Each
    /// thread keeps its core busy; its CPU share then counts only turns that found work.
    #[arg(long)]
    pub busy_poll: bool,
    /// Connect over TLS (1.2 or 1.3, rustls); needs --cafile. The broker's certificate
    /// must name the --host IP address.
    #[arg(long, requires = "cafile")]
    pub tls: bool,
    /// PEM CA certificates that the broker's TLS certificate is checked against.
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub cafile: Option<PathBuf>,
}

/// `ternmq bench`: a run (`ternmq bench <scenario> ...`) or a helper subcommand.
#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BenchCommand {
    #[command(subcommand)]
    pub sub: Option<BenchSub>,
    #[command(flatten)]
    pub run: BenchArgs,
}

/// Subcommands of `ternmq bench`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchSub {
    /// Plot the latency distributions of `.hgrm` files (labels = file stems) as SVG.
    Plot(PlotArgs),
}

/// Options of `ternmq bench plot`.
#[derive(Debug, Clone, clap::Args)]
pub struct PlotArgs {
    /// Output SVG file.
    #[arg(long, short = 'o', value_name = "FILE.svg")]
    pub out: PathBuf,
    /// Title of the plot.
    #[arg(long, default_value = "Latency by percentile")]
    pub title: String,
    /// Logarithmic latency axis (for curves orders of magnitude apart).
    #[arg(long)]
    pub log_y: bool,
    /// `.hgrm` files written by `ternmq bench --hgrm` (or HdrHistogram).
    #[arg(required = true, value_name = "FILE.hgrm")]
    pub inputs: Vec<PathBuf>,
}

impl PlotArgs {
    pub fn execute(&self) -> Result<(), BenchError> {
        let opts = PlotOptions {
            title: self.title.clone(),
            log_y: self.log_y,
        };
        plot_files(&self.out, &self.inputs, &opts)
    }
}

impl BenchCommand {
    /// Runs the subcommand, or the benchmark.
    pub fn execute(&self) -> Result<(), BenchError> {
        match &self.sub {
            Some(BenchSub::Plot(p)) => p.execute(),
            None => self.run.execute().map(|_| ()),
        }
    }
}

fn secs(v: f64, what: &str) -> Result<Duration, BenchError> {
    Duration::try_from_secs_f64(v).map_err(|_| BenchError::Config(format!("bad {what}: {v}")))
}

/// Parses `A-B` (inclusive IPv4 range) or `A,B,C`.
pub fn parse_sources(s: &str) -> Result<Vec<IpAddr>, BenchError> {
    let bad = || BenchError::Config(format!("bad --source {s}"));
    if let Some((a, b)) = s.split_once('-') {
        let a: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
        let b: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
        let (a, b) = (u32::from(a), u32::from(b));
        if b < a || b - a > 65_535 {
            return Err(bad());
        }
        return Ok((a..=b).map(|v| IpAddr::V4(Ipv4Addr::from(v))).collect());
    }
    s.split(',')
        .map(|p| p.trim().parse::<IpAddr>().map_err(|_| bad()))
        .collect()
}

impl BenchArgs {
    /// The library configuration these options describe.
    pub fn to_config(&self) -> Result<BenchConfig, BenchError> {
        let scenario = self
            .scenario
            .ok_or_else(|| BenchError::Config("no scenario".into()))?;
        let default_count = match scenario {
            Scenario::Conns | Scenario::Fleet => 1000,
            _ => 10,
        };
        let load = match self.rate {
            Some(r) => Load::Rate(r),
            None => Load::Max,
        };
        let cfg = BenchConfig {
            scenario,
            broker: SocketAddr::new(self.host, self.port),
            qos: QoS::from_u8(self.qos).ok_or_else(|| BenchError::Config("bad --qos".into()))?,
            payload_bytes: self.payload,
            topic_prefix: self.topic_prefix.clone(),
            clean_session: !self.persistent,
            version: if self.mqtt == "5" {
                ProtocolVersion::V5
            } else {
                ProtocolVersion::V3_1_1
            },
            ramp_per_sec: self.ramp,
            sources: match &self.source {
                Some(s) => parse_sources(s)?,
                None => Vec::new(),
            },
            warmup: secs(self.warmup, "--warmup")?,
            duration: secs(self.duration, "--duration")?,
            drain: secs(self.drain, "--drain")?,
            messages: self.messages,
            threads: self.threads,
            pin: self.pin.clone(),
            load,
            inflight: self.inflight,
            count: self.count.unwrap_or(default_count),
            backends: self.backends,
            interval_secs: self.interval,
            churn: self.churn,
            keep_alive_secs: self.keep_alive,
            broker_pid: self.broker_pid,
            progress: !self.quiet,
            busy_poll: self.busy_poll,
            tls: match &self.cafile {
                Some(path) if self.tls => Some(tls_client_config(path)?),
                _ => None,
            },
        };
        if let Some(r) = self.ramp {
            if !(r > 0.0 && r.is_finite()) {
                return Err(BenchError::Config("--ramp must be positive".into()));
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Runs the benchmark and prints its report. Returns the report for callers
    /// that want to act on it (exit status).
    pub fn execute(&self) -> Result<super::Report, BenchError> {
        let cfg = self.to_config()?;
        let report = super::run(&cfg)?;
        if self.json {
            println!("{}", report.json());
        } else {
            print!("{}", report.table());
        }
        if let Some(path) = &self.hgrm {
            std::fs::write(path, report.hgrm())?;
        }
        if let Some(path) = &self.plot {
            let label = match &self.hgrm {
                Some(h) => h
                    .file_stem()
                    .map_or_else(String::new, |s| s.to_string_lossy().into_owned()),
                None => format!("{} {}", report.scenario.name(), report.mode),
            };
            let series = parse_hgrm(&label, &report.hgrm())?;
            let opts = PlotOptions {
                title: format!(
                    "{}: {} connections, QoS {}, {}",
                    report.scenario.name(),
                    report.connections,
                    report.qos,
                    report.mode
                ),
                log_y: false,
            };
            std::fs::write(path, svg(&[series], &opts))?;
        }
        Ok(report)
    }
}

/// A rustls client configuration (ring provider, TLS 1.2 and 1.3) trusting the CA
/// certificates of the PEM file `path`.
fn tls_client_config(
    path: &std::path::Path,
) -> Result<std::sync::Arc<rustls::ClientConfig>, BenchError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let bad = |e: String| BenchError::Config(format!("--cafile {}: {e}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no CA certificate".into()));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ranges() {
        let v = parse_sources("127.0.0.2-127.0.0.4").unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[2], "127.0.0.4".parse::<IpAddr>().unwrap());
        assert_eq!(parse_sources("127.0.0.1,::1").unwrap().len(), 2);
        assert!(parse_sources("127.0.0.9-127.0.0.2").is_err());
        assert!(parse_sources("nope").is_err());
    }
}
