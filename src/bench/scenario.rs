//! What a run is made of: the scenarios, the run's settings, and the *plan* (every
//! client with its role, topic, generator thread and source address, and who should
//! receive whose messages).
//!
//! The plan is plain data computed before any socket exists, so the expected
//! deliveries of every (publisher, subscriber) stream are known up front and loss can
//! be computed exactly at the end.

use super::BenchError;
use crate::protocol::QoS;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The load shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// N publisher/subscriber pairs, one topic each.
    Pairs,
    /// P publishers to one wildcard subscriber.
    Fanin,
    /// One publisher to S subscribers of one topic.
    Fanout,
    /// C idle connections with one subscription each (memory per connection).
    Conns,
    /// C devices publishing every I seconds to `devices/<id>/telemetry`, B backends on
    /// `devices/+/telemetry`, with optional reconnect churn.
    Fleet,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Pairs => "pairs",
            Scenario::Fanin => "fanin",
            Scenario::Fanout => "fanout",
            Scenario::Conns => "conns",
            Scenario::Fleet => "fleet",
        }
    }
}

/// How publishers pace themselves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Open loop: a fixed total offered rate in msg/s, sends scheduled in advance.
    Rate(f64),
    /// Closed loop: at most `inflight` unacknowledged messages per publisher.
    Max,
}

/// Every setting of a run (the library form of `ternmq bench ...`).
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub scenario: Scenario,
    /// Broker address; must be a loopback address.
    pub broker: SocketAddr,
    pub qos: QoS,
    /// Payload bytes, at least [`super::payload::HEADER_LEN`].
    pub payload_bytes: usize,
    /// Prepended to every topic as `PREFIX/...` when not empty.
    pub topic_prefix: String,
    pub clean_session: bool,
    /// MQTT 3.1.1 or 5.
    pub version: crate::protocol::ProtocolVersion,
    /// New connections per second over the whole run (None = as fast as possible).
    pub ramp_per_sec: Option<f64>,
    /// Local addresses to bind client sockets to, round-robin (empty = kernel's choice).
    pub sources: Vec<IpAddr>,
    pub warmup: Duration,
    pub duration: Duration,
    /// After the last send, how long to wait for stragglers before counting loss.
    pub drain: Duration,
    /// Total messages to publish (None = until the duration ends).
    pub messages: Option<u64>,
    pub threads: usize,
    /// Cores to pin generator threads to, round-robin (empty = no pinning).
    pub pin: Vec<usize>,
    pub load: Load,
    /// Closed loop: unacknowledged messages per publisher. Also caps QoS 1/2 in flight.
    pub inflight: usize,
    /// `pairs`: pairs; `fanin`: publishers; `fanout`: subscribers; `conns`/`fleet`: connections.
    pub count: usize,
    /// `fleet`: backend subscribers.
    pub backends: usize,
    /// `fleet`: seconds between two messages of a device.
    pub interval_secs: f64,
    /// `fleet`: fraction of devices dropped and reconnected per second.
    pub churn: f64,
    /// Keep-alive announced in CONNECT (0 = none). The generator sends no PINGREQ,
    /// so a non-zero value must outlast the run (some brokers, e.g. rumqttd, refuse 0).
    pub keep_alive_secs: u16,
    /// Broker process to sample for CPU and RSS.
    pub broker_pid: Option<u32>,
    /// Print a progress line on stderr every second.
    pub progress: bool,
    /// Generator threads poll without sleeping, so their own wake-up is not part of
    /// the measured latency; their CPU share counts only turns that found work.
    pub busy_poll: bool,
    /// Connect over TLS with this client configuration (None = plain TCP). The
    /// broker's certificate must name its IP address (`broker`'s).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            scenario: Scenario::Pairs,
            broker: SocketAddr::from(([127, 0, 0, 1], 1883)),
            qos: QoS::AtMostOnce,
            payload_bytes: 64,
            topic_prefix: String::new(),
            clean_session: true,
            version: crate::protocol::ProtocolVersion::V3_1_1,
            ramp_per_sec: None,
            sources: Vec::new(),
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(10),
            drain: Duration::from_secs(2),
            messages: None,
            threads: 1,
            pin: Vec::new(),
            load: Load::Max,
            inflight: 100,
            count: 10,
            backends: 1,
            interval_secs: 1.0,
            churn: 0.0,
            keep_alive_secs: 0,
            broker_pid: None,
            progress: false,
            busy_poll: false,
            tls: None,
        }
    }
}

impl BenchConfig {
    /// Checks the settings that would make a run meaningless or leave loopback.
    pub fn validate(&self) -> Result<(), BenchError> {
        let bad = |m: String| Err(BenchError::Config(m));
        if !self.broker.ip().is_loopback() {
            return bad(format!("broker {} is not a loopback address", self.broker));
        }
        if let Some(s) = self.sources.iter().find(|s| !s.is_loopback()) {
            return bad(format!("source {s} is not a loopback address"));
        }
        if self.payload_bytes < super::payload::HEADER_LEN {
            return bad(format!(
                "--payload must be at least {} bytes",
                super::payload::HEADER_LEN
            ));
        }
        if self.threads == 0 || self.threads > 256 {
            return bad("--threads must be 1..=256".into());
        }
        if self.count == 0 || self.count > 1_000_000 {
            return bad("the connection count must be 1..=1000000".into());
        }
        if self.inflight == 0 || self.inflight > 65_535 {
            return bad("--inflight must be 1..=65535".into());
        }
        if let Load::Rate(r) = self.load {
            if !(r > 0.0 && r.is_finite()) {
                return bad("--rate must be positive".into());
            }
        }
        if !(0.0..=1.0).contains(&self.churn) {
            return bad("--churn must be a fraction in 0..=1".into());
        }
        if !(self.interval_secs > 0.0 && self.interval_secs.is_finite()) {
            return bad("--interval must be positive".into());
        }
        if self.duration.is_zero() {
            return bad("--duration must be positive".into());
        }
        if self.duration > Duration::from_secs(24 * 3600) || self.drain > Duration::from_secs(600) {
            return bad("--duration is limited to 24 h and --drain to 600 s".into());
        }
        let run = self.warmup + self.duration + self.drain + Duration::from_secs(60);
        if self.keep_alive_secs != 0 && Duration::from_secs(self.keep_alive_secs.into()) < run {
            return bad(format!(
                "--keep-alive {} s is shorter than the run (about {} s with setup): the generator sends no PINGREQ",
                self.keep_alive_secs,
                run.as_secs()
            ));
        }
        if self.scenario == Scenario::Fleet && self.backends == 0 {
            return bad("fleet needs at least one backend subscriber".into());
        }
        Ok(())
    }

    fn topic(&self, rest: &str) -> String {
        if self.topic_prefix.is_empty() {
            rest.to_string()
        } else {
            format!("{}/{}", self.topic_prefix.trim_end_matches('/'), rest)
        }
    }
}

/// What one client does.
#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    /// Publishes to `topic`; `publisher` indexes [`Plan::fanout`].
    Publisher { publisher: u32, topic: String },
    /// Subscribes to `filter` and expects every message of `sources`.
    Subscriber { filter: String, sources: Sources },
    /// Subscribes and stays idle (`conns`).
    Idle { filter: String },
}

/// The publishers a subscriber expects messages from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sources {
    One(u32),
    All,
}

/// One client of the plan.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub client_id: String,
    pub thread: usize,
    pub source: Option<IpAddr>,
    pub role: Role,
}

/// Every client of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub clients: Vec<ClientSpec>,
    /// Per publisher: how many subscribers receive each of its messages.
    pub fanout: Vec<u32>,
}

impl Plan {
    pub fn publishers(&self) -> usize {
        self.fanout.len()
    }

    /// Builds the plan of `cfg` (validated). Client ids embed the process id so two
    /// runs against one broker do not take over each other's sessions.
    pub fn new(cfg: &BenchConfig) -> Plan {
        let run = std::process::id();
        let n = cfg.count;
        let t = cfg.threads;
        let mut clients = Vec::new();
        let mut fanout = Vec::new();
        let mut add = |kind: &str, i: usize, thread: usize, role: Role| {
            let source = if cfg.sources.is_empty() {
                None
            } else {
                Some(cfg.sources[clients.len() % cfg.sources.len()])
            };
            clients.push(ClientSpec {
                client_id: format!("tmqb-{run}-{kind}{i}"),
                thread: thread % t,
                source,
                role,
            });
        };
        match cfg.scenario {
            Scenario::Pairs => {
                for i in 0..n {
                    let topic = cfg.topic(&format!("pairs/{i}"));
                    let filter = topic.clone();
                    add(
                        "s",
                        i,
                        i,
                        Role::Subscriber {
                            filter,
                            sources: Sources::One(i as u32),
                        },
                    );
                    add(
                        "p",
                        i,
                        i,
                        Role::Publisher {
                            publisher: i as u32,
                            topic,
                        },
                    );
                    fanout.push(1);
                }
            }
            Scenario::Fanin => {
                add(
                    "s",
                    0,
                    0,
                    Role::Subscriber {
                        filter: cfg.topic("fanin/+"),
                        sources: Sources::All,
                    },
                );
                for i in 0..n {
                    let topic = cfg.topic(&format!("fanin/{i}"));
                    add(
                        "p",
                        i,
                        i,
                        Role::Publisher {
                            publisher: i as u32,
                            topic,
                        },
                    );
                    fanout.push(1);
                }
            }
            Scenario::Fanout => {
                let topic = cfg.topic("fanout/0");
                for i in 0..n {
                    add(
                        "s",
                        i,
                        i,
                        Role::Subscriber {
                            filter: topic.clone(),
                            sources: Sources::All,
                        },
                    );
                }
                add(
                    "p",
                    0,
                    0,
                    Role::Publisher {
                        publisher: 0,
                        topic,
                    },
                );
                fanout.push(n as u32);
            }
            Scenario::Conns => {
                for i in 0..n {
                    let filter = cfg.topic(&format!("conns/{i}"));
                    add("c", i, i, Role::Idle { filter });
                }
            }
            Scenario::Fleet => {
                for b in 0..cfg.backends {
                    add(
                        "b",
                        b,
                        b,
                        Role::Subscriber {
                            filter: cfg.topic("devices/+/telemetry"),
                            sources: Sources::All,
                        },
                    );
                }
                for i in 0..n {
                    let topic = cfg.topic(&format!("devices/{i}/telemetry"));
                    add(
                        "d",
                        i,
                        i,
                        Role::Publisher {
                            publisher: i as u32,
                            topic,
                        },
                    );
                    fanout.push(cfg.backends as u32);
                }
            }
        }
        Plan { clients, fanout }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        let mut cfg = BenchConfig {
            scenario: Scenario::Pairs,
            count: 3,
            threads: 2,
            topic_prefix: "x/".into(),
            ..BenchConfig::default()
        };
        let p = Plan::new(&cfg);
        assert_eq!(p.clients.len(), 6);
        assert_eq!(p.fanout, vec![1, 1, 1]);
        assert_eq!(p.clients[5].thread, 0); // pair 2 on thread 0
        assert!(
            matches!(&p.clients[3].role, Role::Publisher { topic, .. } if topic == "x/pairs/1")
        );
        cfg.scenario = Scenario::Fleet;
        cfg.backends = 2;
        cfg.topic_prefix.clear();
        let p = Plan::new(&cfg);
        assert_eq!(p.fanout, vec![2, 2, 2]);
        assert!(matches!(&p.clients[0].role,
            Role::Subscriber { filter, .. } if filter == "devices/+/telemetry"));
        cfg.scenario = Scenario::Fanout;
        assert_eq!(Plan::new(&cfg).fanout, vec![3]);
    }

    #[test]
    fn non_loopback_is_refused() {
        let cfg = BenchConfig {
            broker: "10.0.0.1:1883".parse().unwrap(),
            ..BenchConfig::default()
        };
        assert!(cfg.validate().is_err());
        let cfg = BenchConfig {
            payload_bytes: 8,
            ..BenchConfig::default()
        };
        assert!(cfg.validate().is_err());
        assert!(BenchConfig::default().validate().is_ok());
    }
}
