//! The `ternmq` binary: parses the command line, sets up logging, starts the broker
//! and stops it on SIGINT/SIGTERM; or, as `ternmq bench <scenario> ...`, runs the
//! bundled load generator (`ternmq bench plot` plots `.hgrm` files), and as
//! `ternmq stats` prints a broker's `$SYS` values, and `ternmq passwd` edits a
//! password file. SIGHUP reloads the password and ACL files. All logic lives in the
//! library.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use ternmq::config::Config;

/// A thread-per-core MQTT broker.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML config file; command-line options override its values.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Listen address (repeatable). Default 127.0.0.1:1883.
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// TLS listen address (repeatable). Default 127.0.0.1:8883 when --cert and --key
    /// are given, none otherwise.
    #[arg(long)]
    tls_listen: Vec<SocketAddr>,
    /// PEM certificate chain of the TLS listeners (server certificate first).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long)]
    key: Option<PathBuf>,
    /// PEM CA certificates: TLS clients must present a certificate signed by one.
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// Use the client certificate's subject CN as the MQTT user name (needs --client-ca).
    #[arg(long)]
    use_identity_as_username: bool,
    /// Worker threads (0 = one per core). Default 0.
    #[arg(long)]
    workers: Option<usize>,
    /// Do not pin workers to cores.
    #[arg(long)]
    no_pin: bool,
    /// Microseconds a worker keeps polling, without sleeping, after its last activity
    /// (0 = sleep at once). Trades CPU for latency when messages arrive one by one.
    /// Default 0.
    #[arg(long, value_name = "US")]
    busy_poll: Option<u64>,
    /// Largest packet accepted, in bytes. Default 1048576.
    #[arg(long)]
    max_packet_size: Option<usize>,
    /// Unacknowledged QoS 1/2 messages in flight per client. Default 100.
    #[arg(long)]
    max_inflight: Option<usize>,
    /// QoS 1/2 messages queued per session. Default 1000.
    #[arg(long)]
    max_queued_messages: Option<usize>,
    /// Longest keep-alive a client may ask for, in seconds (65535 = no limit). Default
    /// 65535.
    #[arg(long)]
    max_keep_alive: Option<u16>,
    /// How a shared subscription group picks its member. Default round-robin.
    #[arg(long, value_enum)]
    shared_subscription_strategy: Option<ternmq::config::SharedStrategy>,
    /// Seconds a new connection has to send CONNECT. Default 10.
    #[arg(long)]
    connect_timeout: Option<u64>,
    /// Open connections accepted (0 = no limit); beyond, closed at accept. Default 100000.
    #[arg(long)]
    max_connections: Option<usize>,
    /// New connections per IP address per second (0 = no limit). Default 0.
    #[arg(long)]
    max_connections_per_ip_per_sec: Option<u32>,
    /// Bytes of QoS 1/2 messages queued per session (oldest dropped beyond). Default 16777216.
    #[arg(long)]
    max_queued_bytes: Option<usize>,
    /// Subscriptions per session. Default 10000.
    #[arg(long)]
    max_subscriptions: Option<usize>,
    /// Levels of a topic name or filter. Default 128.
    #[arg(long)]
    max_topic_levels: Option<usize>,
    /// Bytes of a topic name or filter. Default 4096.
    #[arg(long)]
    max_topic_bytes: Option<usize>,
    /// Seconds an offline 3.1/3.1.1 persistent session is kept (0 = forever). Default 0.
    #[arg(long)]
    persistent_session_expiry: Option<u64>,
    /// Retained topics kept; new ones beyond are not stored. Default 1000000.
    #[arg(long)]
    max_retained_messages: Option<usize>,
    /// Payload bytes of all retained messages; a retained PUBLISH that would go
    /// beyond is not stored. Default 1073741824.
    #[arg(long)]
    max_retained_bytes: Option<usize>,
    /// Seconds between `$SYS` publications (0 = off). Default 10.
    #[arg(long)]
    sys_interval: Option<u64>,
    /// Log filter when RUST_LOG is unset (error, warn, info, debug, trace). Default info.
    #[arg(long)]
    log_level: Option<String>,
    /// Password file (create users with `ternmq passwd`). Default none.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// ACL file in Mosquitto's format; what it does not grant is denied. Default none.
    #[arg(long)]
    acl_file: Option<PathBuf>,
    /// Accept clients without a user name. Default: true unless a password file is set.
    #[arg(long)]
    allow_anonymous: Option<bool>,
}

/// Subcommands; without one, `ternmq` runs the broker.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Run the load generator against a broker on loopback, or plot .hgrm files.
    Bench(Box<ternmq::bench::cli::BenchCommand>),
    /// Print a broker's $SYS/broker statistics (clients, messages, drops, latency).
    Stats(ternmq::bench::sys_stats::StatsArgs),
    /// Add or update a user in a password file (-D deletes, -c creates the file).
    Passwd(ternmq::auth::cli::PasswdArgs),
}

impl Cli {
    fn into_config(self) -> Result<Config, ternmq::config::ConfigError> {
        let mut cfg = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        self.apply_limits(&mut cfg);
        if !self.listen.is_empty() {
            cfg.listen = self.listen;
        }
        if !self.tls_listen.is_empty() {
            cfg.tls_listen = self.tls_listen;
        }
        if let Some(v) = self.cert {
            cfg.cert_file = Some(v);
        }
        if let Some(v) = self.key {
            cfg.key_file = Some(v);
        }
        if let Some(v) = self.client_ca {
            cfg.client_ca_file = Some(v);
        }
        if self.use_identity_as_username {
            cfg.use_identity_as_username = true;
        }
        if let Some(v) = self.workers {
            cfg.workers = v;
        }
        if self.no_pin {
            cfg.pin_cores = false;
        }
        if let Some(v) = self.busy_poll {
            cfg.busy_poll_us = v;
        }
        if let Some(v) = self.max_packet_size {
            cfg.max_packet_bytes = v;
        }
        if let Some(v) = self.max_inflight {
            cfg.max_inflight = v;
        }
        if let Some(v) = self.max_queued_messages {
            cfg.max_queued_messages = v;
        }
        if let Some(v) = self.max_keep_alive {
            cfg.max_keep_alive_secs = v;
        }
        if let Some(v) = self.shared_subscription_strategy {
            cfg.shared_subscription_strategy = v;
        }
        if let Some(v) = self.connect_timeout {
            cfg.connect_timeout_secs = v;
        }
        if let Some(v) = self.sys_interval {
            cfg.sys_interval_secs = v;
        }
        if let Some(v) = self.log_level {
            cfg.log_level = v;
        }
        if self.password_file.is_some() {
            cfg.password_file = self.password_file;
        }
        if self.acl_file.is_some() {
            cfg.acl_file = self.acl_file;
        }
        if self.allow_anonymous.is_some() {
            cfg.allow_anonymous = self.allow_anonymous;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

impl Cli {
    /// The limits against abuse (issue 5) given on the command line.
    fn apply_limits(&self, cfg: &mut Config) {
        if let Some(v) = self.max_connections {
            cfg.max_connections = v;
        }
        if let Some(v) = self.max_connections_per_ip_per_sec {
            cfg.max_connections_per_ip_per_sec = v;
        }
        if let Some(v) = self.max_queued_bytes {
            cfg.max_queued_bytes = v;
        }
        if let Some(v) = self.max_subscriptions {
            cfg.max_subscriptions_per_session = v;
        }
        if let Some(v) = self.max_topic_levels {
            cfg.max_topic_levels = v;
        }
        if let Some(v) = self.max_topic_bytes {
            cfg.max_topic_bytes = v;
        }
        if let Some(v) = self.persistent_session_expiry {
            cfg.persistent_session_expiry_secs = v;
        }
        if let Some(v) = self.max_retained_messages {
            cfg.max_retained_messages = v;
        }
        if let Some(v) = self.max_retained_bytes {
            cfg.max_retained_bytes = v;
        }
    }
}

fn bench(args: &ternmq::bench::cli::BenchCommand) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match args.execute() {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ternmq bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn stats(args: &ternmq::bench::sys_stats::StatsArgs) -> ExitCode {
    match args.execute() {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ternmq stats: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    match cli.command.take() {
        Some(Command::Bench(args)) => return bench(&args),
        Some(Command::Stats(args)) => return stats(&args),
        Some(Command::Passwd(args)) => {
            return match args.execute() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ternmq passwd: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        None => {}
    }
    let cfg = match cli.into_config() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("ternmq: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
    let mut signals =
        match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGUSR1, SIGUSR2, SIGHUP]) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("ternmq: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
    let broker = match ternmq::runtime::start(cfg) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("ternmq: {e}");
            return ExitCode::FAILURE;
        }
    };
    for sig in signals.forever() {
        match sig {
            // SIGUSR1 prints the merged latency histograms, SIGUSR2 resets them.
            SIGUSR1 => eprint!("{}", broker.latency().report()),
            SIGUSR2 => {
                broker.reset_latency();
                tracing::info!("latency histograms reset");
            }
            // SIGHUP reloads the password and ACL files; connections whose login
            // the new rules refuse are closed.
            SIGHUP => match broker.reload_auth() {
                Ok(()) => tracing::info!("authentication files reloaded"),
                Err(e) => tracing::error!(error = %e, "reload failed, previous rules kept"),
            },
            _ => {
                tracing::info!(signal = sig, "shutting down");
                break;
            }
        }
    }
    broker.stop();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
