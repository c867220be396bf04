//! Every tunable of the broker, with its default and unit in its name.
//!
//! Owns: [`Config`], how it is read from a TOML file, and its defaults. The command
//! line (in `main.rs`) overrides file values field by field.
//! Must not: read the network or start anything; it is plain data.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

/// How a shared subscription group picks the member that gets a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SharedStrategy {
    /// Each member in turn.
    RoundRobin,
    /// A member picked at random per message.
    Random,
    /// The same member while it stays connected.
    Sticky,
}

/// The broker's configuration. Field names double as TOML keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// TCP listeners. Default `127.0.0.1:1883`. May be empty when a TLS listener is
    /// configured.
    pub listen: Vec<SocketAddr>,
    /// TLS listeners (MQTT over TLS 1.2/1.3). Default none; when `cert_file` and
    /// `key_file` are set and this is empty, `127.0.0.1:8883`
    /// ([`Config::tls_listeners`]).
    pub tls_listen: Vec<SocketAddr>,
    /// PEM file with the TLS listeners' certificate chain, server certificate first.
    /// Default none (no TLS).
    pub cert_file: Option<PathBuf>,
    /// PEM file with the private key of `cert_file` (PKCS#8, PKCS#1 or SEC1).
    /// Default none.
    pub key_file: Option<PathBuf>,
    /// PEM file of CA certificates. When set, TLS clients must present a certificate
    /// signed by one of them (mutual TLS). Default none (no client certificate asked).
    pub client_ca_file: Option<PathBuf>,
    /// Use the subject CN of the client certificate as the MQTT user name, as
    /// Mosquitto's `use_identity_as_username`; needs `client_ca_file`. Default false.
    pub use_identity_as_username: bool,
    /// Worker threads, one event loop each. 0 means one per core.
    pub workers: usize,
    /// Pin each worker to a core (worker i to core i mod cores).
    pub pin_cores: bool,
    /// Largest packet accepted from a client, fixed header included (bytes). A larger
    /// one closes the connection (MQTT 5: DISCONNECT 0x95 first), counted in
    /// `$SYS/broker/limits/packet_too_large`.
    pub max_packet_bytes: usize,
    /// Open client connections (plain and TLS) the broker accepts; a connection beyond
    /// is closed at accept, before any byte is read, and counted in
    /// `$SYS/broker/limits/connections_refused_max`. 0: no limit but the open-file
    /// limit. Default 100,000.
    pub max_connections: usize,
    /// New connections accepted from one IP address per second (a fixed one-second
    /// window); beyond, they are closed at accept and counted in
    /// `$SYS/broker/limits/connections_refused_rate`. 0 (the default): no limit, since
    /// a fleet behind one NAT address may legitimately reconnect all at once.
    pub max_connections_per_ip_per_sec: u32,
    /// Time a new connection has to send CONNECT (seconds); it is closed after that,
    /// counted in `$SYS/broker/limits/connect_timeouts`.
    pub connect_timeout_secs: u64,
    /// Unacknowledged QoS 1/2 messages in flight to one client (an MQTT 5 client's
    /// Receive Maximum lowers it). Default 100: a window of 20 (Mosquitto's) caps a
    /// subscriber at 20 messages per round trip, and on loopback it doubled the broker's
    /// CPU per QoS 1 message (acks and deliveries in batches of at most 20, and most
    /// messages passing through the queue); see ARCHITECTURE.md, "Flow control".
    pub max_inflight: usize,
    /// QoS 1/2 messages queued per session beyond the in-flight window.
    pub max_queued_messages: usize,
    /// Bytes (topic + payload) of the QoS 1/2 messages queued per session; beyond,
    /// the oldest are dropped (counted in `dropped/queue_full`). A single message
    /// larger than this is still queued alone. Default 16 MiB.
    pub max_queued_bytes: usize,
    /// Subscriptions one session may hold; SUBSCRIBE beyond gets return code 0x80
    /// (MQTT 5: 0x97), counted in `$SYS/broker/limits/subscriptions_refused`.
    pub max_subscriptions_per_session: usize,
    /// Levels of a topic name or filter (`a/b/c` has 3). A PUBLISH beyond closes a
    /// 3.x connection; MQTT 5 gets PUBACK/PUBREC 0x90 (QoS 1/2) or DISCONNECT 0x90
    /// (QoS 0). A SUBSCRIBE filter beyond gets 0x80 (MQTT 5: 0x8F); a will topic beyond
    /// refuses the CONNECT. Counted in `$SYS/broker/limits/topics_refused`. Default 128.
    pub max_topic_levels: usize,
    /// Bytes of a topic name or filter, treated as `max_topic_levels` is. Default 4096.
    pub max_topic_bytes: usize,
    /// Seconds an offline persistent session of a 3.1/3.1.1 client is kept (its MQTT 5
    /// counterpart is the client's own Session Expiry Interval); 0 keeps it forever, as
    /// Mosquitto's `persistent_client_expiration` does by default. Expired sessions are
    /// counted in `$SYS/broker/sessions/expired`. Default 0.
    pub persistent_session_expiry_secs: u64,
    /// Retained topics the broker keeps. A retained PUBLISH on a new topic beyond it is
    /// delivered as a normal message but not stored (replacing or deleting a retained
    /// topic is always allowed); counted in `$SYS/broker/limits/retained_refused`.
    /// Default 1,000,000; each message is at most `max_packet_bytes`.
    pub max_retained_messages: usize,
    /// Payload bytes of all retained messages together (the store is shared by the
    /// workers: each payload is held once). A retained PUBLISH that would take the
    /// total beyond it is delivered but not stored; one that replaces a topic's
    /// message with one no larger, and a deletion, are always allowed. Counted in
    /// `$SYS/broker/limits/retained_refused`. Default 1 GiB.
    pub max_retained_bytes: usize,
    /// Longest keep-alive a client may ask for (seconds); 65535 means no limit. MQTT 5
    /// clients asking for more (or for 0) are given this value (Server Keep Alive);
    /// 3.x clients asking for more are refused with CONNACK 0x02, as in Mosquitto.
    pub max_keep_alive_secs: u16,
    /// Topic aliases an MQTT 5 client may set for its PUBLISH packets (CONNACK Topic
    /// Alias Maximum); 0 disables them.
    pub max_topic_aliases: u16,
    /// Inbound QoS 2 messages one client may have awaiting PUBREL (the Receive Maximum
    /// the broker announces to MQTT 5 clients); an MQTT 5 client beyond it is
    /// disconnected with 0x93.
    pub max_inbound_qos2: usize,
    /// How messages on a shared subscription (`$share/{group}/{filter}`) pick their
    /// member: `round_robin`, `random` or `sticky`.
    pub shared_subscription_strategy: SharedStrategy,
    /// Bytes of encoded packets waiting in one connection's write buffer before QoS 0
    /// deliveries to it are dropped.
    pub max_outbound_bytes: usize,
    /// How long a publisher is paused when a subscriber it feeds has a full queue (ms).
    pub backpressure_pause_ms: u64,
    /// How long a reconnecting client waits for its session to move from another
    /// worker before it gets a fresh session (ms).
    pub handover_timeout_ms: u64,
    /// Interval of the `$SYS/broker/...` publications (seconds); 0 disables them.
    pub sys_interval_secs: u64,
    /// Bytes read from one connection per event-loop turn before moving on.
    pub read_budget_bytes: usize,
    /// Microseconds a worker keeps polling without sleeping after its last activity
    /// (0, the default: it sleeps as soon as nothing is ready). Polling spares the
    /// wake-up of every message when messages arrive one by one (each wake-up is a
    /// few microseconds of CPU and of latency on both sides of the socket), at the
    /// price of a worker busy for this long after each activity; see
    /// ARCHITECTURE.md, "Busy polling". At most 1,000,000.
    pub busy_poll_us: u64,
    /// Log filter (tracing `EnvFilter` syntax) when `RUST_LOG` is unset.
    pub log_level: String,
    /// Password file (`user:hash` lines, see `ternmq passwd`); none by default.
    pub password_file: Option<PathBuf>,
    /// ACL file in Mosquitto's format; none by default (every topic allowed). Once
    /// set, whatever it does not grant is denied.
    pub acl_file: Option<PathBuf>,
    /// Accept clients without a user name. Unset: true unless a password file is
    /// configured (as in Mosquitto 2).
    pub allow_anonymous: Option<bool>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 1883))],
            tls_listen: Vec::new(),
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            use_identity_as_username: false,
            workers: 0,
            pin_cores: true,
            max_packet_bytes: 1024 * 1024,
            max_connections: 100_000,
            max_connections_per_ip_per_sec: 0,
            connect_timeout_secs: 10,
            max_inflight: 100,
            max_queued_messages: 1000,
            max_queued_bytes: 16 * 1024 * 1024,
            max_subscriptions_per_session: 10_000,
            max_topic_levels: 128,
            max_topic_bytes: 4096,
            max_retained_messages: 1_000_000,
            max_retained_bytes: 1 << 30,
            persistent_session_expiry_secs: 0,
            max_keep_alive_secs: u16::MAX,
            max_topic_aliases: 64,
            max_inbound_qos2: 1024,
            shared_subscription_strategy: SharedStrategy::RoundRobin,
            max_outbound_bytes: 1024 * 1024,
            backpressure_pause_ms: 100,
            handover_timeout_ms: 5000,
            sys_interval_secs: 10,
            read_budget_bytes: 256 * 1024,
            busy_poll_us: 0,
            log_level: "info".to_string(),
            password_file: None,
            acl_file: None,
            allow_anonymous: None,
        }
    }
}

impl Config {
    /// Reads a TOML file; keys left out keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source: Box::new(source),
        })?;
        Ok(cfg)
    }

    /// Checks ranges that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.listen.is_empty() && self.tls_listeners().is_empty() {
            return bad("at least one listen or tls_listen address is needed");
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return bad("cert_file and key_file go together");
        }
        if !self.tls_listen.is_empty() && self.cert_file.is_none() {
            return bad("tls_listen needs cert_file and key_file");
        }
        if self.client_ca_file.is_some() && self.cert_file.is_none() {
            return bad("client_ca_file needs cert_file and key_file");
        }
        if self.use_identity_as_username && self.client_ca_file.is_none() {
            return bad("use_identity_as_username needs client_ca_file");
        }
        if self.workers > crate::broker::WORKERS_MAX {
            return bad("workers must be at most 64");
        }
        if !(16..=crate::protocol::MAX_REMAINING_LENGTH + 5).contains(&self.max_packet_bytes) {
            return bad("max_packet_bytes must be between 16 and 268435460");
        }
        if self.max_inflight == 0 {
            return bad("max_inflight must be at least 1");
        }
        if self.max_keep_alive_secs == 0 {
            return bad("max_keep_alive_secs must be between 1 and 65535");
        }
        if !(1..=65_535).contains(&self.max_inbound_qos2) {
            return bad("max_inbound_qos2 must be between 1 and 65535");
        }
        if self.max_queued_messages == 0 {
            return bad("max_queued_messages must be at least 1");
        }
        if self.read_budget_bytes < 4096 {
            return bad("read_budget_bytes must be at least 4096");
        }
        // Durations are added to `Instant`s and doubled: keep them far from overflow.
        const DAY_SECS: u64 = 86_400;
        if self.connect_timeout_secs == 0 || self.connect_timeout_secs > DAY_SECS {
            return bad("connect_timeout_secs must be between 1 and 86400");
        }
        if self.handover_timeout_ms == 0 || self.handover_timeout_ms > DAY_SECS * 1000 {
            return bad("handover_timeout_ms must be between 1 and 86400000");
        }
        if self.backpressure_pause_ms > DAY_SECS * 1000 {
            return bad("backpressure_pause_ms must be at most 86400000");
        }
        if self.sys_interval_secs > DAY_SECS {
            return bad("sys_interval_secs must be at most 86400");
        }
        if self.busy_poll_us > 1_000_000 {
            return bad("busy_poll_us must be at most 1000000");
        }
        if self.max_outbound_bytes < 4096 {
            return bad("max_outbound_bytes must be at least 4096");
        }
        if self.max_inflight > 1024 {
            // An ack that is not for the oldest message in flight (and every PUBREC)
            // finds it by scanning the window: keep it small.
            return bad("max_inflight must be at most 1024");
        }
        if self.max_subscriptions_per_session == 0 {
            return bad("max_subscriptions_per_session must be at least 1");
        }
        if self.max_queued_bytes < 1024 {
            return bad("max_queued_bytes must be at least 1024");
        }
        if self.max_retained_bytes < 1024 {
            return bad("max_retained_bytes must be at least 1024");
        }
        if self.max_topic_levels == 0 {
            return bad("max_topic_levels must be at least 1");
        }
        if !(1..=65_535).contains(&self.max_topic_bytes) {
            return bad("max_topic_bytes must be between 1 and 65535");
        }
        Ok(())
    }

    /// The worker count with 0 resolved to the number of cores.
    pub fn effective_workers(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(crate::broker::WORKERS_MAX)
        } else {
            self.workers
        }
    }

    /// The TLS listener addresses: `tls_listen`, or `127.0.0.1:8883` when only the
    /// certificate and key are given; empty without a certificate.
    pub fn tls_listeners(&self) -> Vec<SocketAddr> {
        match (&self.cert_file, self.tls_listen.is_empty()) {
            (None, _) => Vec::new(),
            (Some(_), true) => vec![SocketAddr::from(([127, 0, 0, 1], 8883))],
            (Some(_), false) => self.tls_listen.clone(),
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    pub fn handover_timeout(&self) -> Duration {
        Duration::from_millis(self.handover_timeout_ms)
    }

    pub fn backpressure_pause(&self) -> Duration {
        Duration::from_millis(self.backpressure_pause_ms)
    }

    pub fn busy_poll(&self) -> Duration {
        Duration::from_micros(self.busy_poll_us)
    }

    /// True when a topic name or filter is within `max_topic_levels` and
    /// `max_topic_bytes`.
    pub fn topic_within_limits(&self, topic: &str) -> bool {
        topic.len() <= self.max_topic_bytes
            && topic.bytes().filter(|&b| b == b'/').count() < self.max_topic_levels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn toml_overrides_some_keys() {
        let cfg: Config =
            toml::from_str("workers = 2\nmax_inflight = 5\nlisten = [\"127.0.0.1:1999\"]").unwrap();
        assert_eq!(cfg.workers, 2);
        assert_eq!(cfg.max_inflight, 5);
        assert_eq!(cfg.listen[0].port(), 1999);
        assert_eq!(cfg.max_queued_messages, 1000);
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let bad = [
            Config {
                connect_timeout_secs: u64::MAX,
                ..Config::default()
            },
            Config {
                handover_timeout_ms: 0,
                ..Config::default()
            },
            Config {
                max_outbound_bytes: 0,
                ..Config::default()
            },
            Config {
                max_inflight: 65_535,
                ..Config::default()
            },
            Config {
                workers: 65,
                ..Config::default()
            },
            Config {
                max_topic_levels: 0,
                ..Config::default()
            },
            Config {
                max_queued_bytes: 0,
                ..Config::default()
            },
            Config {
                max_retained_bytes: 1023,
                ..Config::default()
            },
            Config {
                busy_poll_us: 1_000_001,
                ..Config::default()
            },
        ];
        for cfg in bad {
            assert!(cfg.validate().is_err(), "{cfg:?}");
        }
    }

    #[test]
    fn busy_polling_is_off_by_default_and_read_in_microseconds() {
        assert_eq!(Config::default().busy_poll(), Duration::ZERO);
        let cfg: Config = toml::from_str("busy_poll_us = 200").unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.busy_poll(), Duration::from_micros(200));
    }

    #[test]
    fn auth_keys_are_read() {
        let cfg: Config = toml::from_str(
            "password_file = \"/etc/ternmq/passwd\"\nacl_file = \"acl\"\nallow_anonymous = false",
        )
        .unwrap();
        assert_eq!(cfg.password_file, Some(PathBuf::from("/etc/ternmq/passwd")));
        assert_eq!(cfg.acl_file, Some(PathBuf::from("acl")));
        assert_eq!(cfg.allow_anonymous, Some(false));
        assert_eq!(Config::default().allow_anonymous, None);
    }

    #[test]
    fn tls_settings_are_checked_and_default_to_port_8883() {
        let tls: Config = toml::from_str(
            "cert_file = \"c.pem\"\nkey_file = \"k.pem\"\nclient_ca_file = \"ca.pem\"\nuse_identity_as_username = true",
        )
        .unwrap();
        tls.validate().unwrap();
        assert_eq!(tls.tls_listeners()[0].port(), 8883);
        assert_eq!(tls.listen[0].port(), 1883, "the plain listener stays");
        assert!(Config::default().tls_listeners().is_empty());
        let bad = [
            "tls_listen = [\"127.0.0.1:8883\"]",
            "cert_file = \"c.pem\"",
            "client_ca_file = \"ca.pem\"",
            "cert_file = \"c.pem\"\nkey_file = \"k.pem\"\nuse_identity_as_username = true",
            "listen = []",
        ];
        for text in bad {
            let cfg: Config = toml::from_str(text).unwrap();
            assert!(cfg.validate().is_err(), "{text}");
        }
        let tls_only: Config =
            toml::from_str("listen = []\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"").unwrap();
        tls_only.validate().unwrap();
    }

    #[test]
    fn topic_limits_count_levels_and_bytes() {
        let cfg = Config {
            max_topic_levels: 3,
            max_topic_bytes: 8,
            ..Config::default()
        };
        assert!(cfg.topic_within_limits("a/b/c"));
        assert!(!cfg.topic_within_limits("a/b/c/d"));
        assert!(cfg.topic_within_limits("abcdefgh"));
        assert!(!cfg.topic_within_limits("abcdefghi"));
        assert!(cfg.topic_within_limits("/"), "two empty levels");
    }

    #[test]
    fn unknown_key_is_an_error() {
        assert!(toml::from_str::<Config>("no_such_key = 1").is_err());
    }
}
