//! End-to-end runs of the load generator (`ternmq::bench::run`) against an
//! in-process broker on an ephemeral loopback port.

use std::time::Duration;
use ternmq::bench::{run, BenchConfig, Load, Scenario};
use ternmq::config::Config;
use ternmq::protocol::QoS;
use ternmq::runtime::{start, BrokerHandle};

fn broker() -> BrokerHandle {
    broker_with(Config::default())
}

/// One unpinned worker on an ephemeral loopback port, no `$SYS`; the rest from `cfg`.
fn broker_with(cfg: Config) -> BrokerHandle {
    broker_on(1, cfg)
}

/// As [`broker_with`], with `workers` workers.
fn broker_on(workers: usize, cfg: Config) -> BrokerHandle {
    start(Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        workers,
        pin_cores: false,
        sys_interval_secs: 0,
        ..cfg
    })
    .expect("broker starts")
}

fn cfg(b: &BrokerHandle, scenario: Scenario, count: usize) -> BenchConfig {
    BenchConfig {
        scenario,
        broker: b.addr(),
        count,
        warmup: Duration::from_millis(200),
        duration: Duration::from_secs(1),
        drain: Duration::from_secs(5),
        ..BenchConfig::default()
    }
}

/// The generator speaks MQTT 5 too (`--mqtt 5`): QoS 2 pairs, nothing lost.
#[test]
fn pairs_over_mqtt5_qos2_loses_nothing() {
    let b = broker();
    let c = BenchConfig {
        qos: QoS::ExactlyOnce,
        inflight: 10,
        version: ternmq::protocol::ProtocolVersion::V5,
        ..cfg(&b, Scenario::Pairs, 4)
    };
    let r = run(&c).expect("run");
    assert!(r.received > 100, "{}", r.table());
    assert_eq!(r.tally.lost, 0, "{}", r.table());
    assert_eq!(r.tally.duplicates, 0);
    assert!(r.drained);
}

#[test]
fn pairs_qos1_loses_nothing() {
    let b = broker();
    let c = BenchConfig {
        qos: QoS::AtLeastOnce,
        inflight: 20,
        broker_pid: Some(std::process::id()),
        ..cfg(&b, Scenario::Pairs, 4)
    };
    let r = run(&c).expect("run");
    assert_eq!(r.connections, 8);
    assert!(r.received > 100, "{}", r.table());
    assert!(r.tally.expected > 0);
    assert_eq!(r.tally.lost, 0, "{}", r.table());
    assert_eq!(r.tally.duplicates, 0);
    assert_eq!(r.tally.received, r.tally.expected);
    assert!(r.drained);
    assert!(!r.latency.is_empty());
    assert!(r.broker_us_per_msg().is_some());
    let j = r.json();
    assert!(j.contains("\"lost\":0"), "{j}");
}

/// Two workers at full load: each publisher's subscriber sits on the other worker, and
/// turns collect enough cross-worker messages that batches leave mid-turn
/// (`MESH_SEND_AT`). Nothing is lost, duplicated or reordered.
#[test]
fn pairs_across_two_workers_at_full_load_keep_order() {
    let b = broker_on(2, Config::default());
    let c = BenchConfig {
        qos: QoS::AtLeastOnce,
        inflight: 100,
        ..cfg(&b, Scenario::Pairs, 40)
    };
    let r = run(&c).expect("run");
    assert!(r.received > 1000, "{}", r.table());
    assert_eq!(r.tally.received, r.tally.expected, "{}", r.table());
    assert_eq!(r.tally.lost, 0, "{}", r.table());
    assert_eq!(r.tally.duplicates, 0, "{}", r.table());
    assert_eq!(r.tally.out_of_order, 0, "{}", r.table());
    assert!(r.drained);
    // The load made workers hand batches over before their turns ended.
    let mid_turn = b.latency().batch_len_mid_turn.len();
    assert!(mid_turn > 0, "no batch left mid-turn");
}

#[test]
fn fanout_open_loop_delivers_to_every_subscriber() {
    let b = broker();
    let c = BenchConfig {
        load: Load::Rate(2000.0),
        threads: 2,
        duration: Duration::from_millis(500),
        ..cfg(&b, Scenario::Fanout, 5)
    };
    let r = run(&c).expect("run");
    assert_eq!(r.subscribers, 5);
    assert!(r.sent_total > 500, "{}", r.table());
    assert_eq!(r.tally.expected, r.sent_total * 5);
    assert_eq!(r.tally.lost, 0, "{}", r.table());
    assert!(r.hgrm().contains("Percentile"));
}

/// Busy polling on both sides (`busy_poll_us`, `--busy-poll`): an open-loop run is
/// delivered whole and in order, and the generator's CPU share leaves out the turns
/// that only polled (at 2,000 msg/s it does little, though it never sleeps).
#[test]
fn busy_polling_on_both_sides_delivers_an_open_loop_run() {
    let b = broker_with(Config {
        busy_poll_us: 200,
        ..Config::default()
    });
    let c = BenchConfig {
        load: Load::Rate(2000.0),
        busy_poll: true,
        duration: Duration::from_millis(500),
        ..cfg(&b, Scenario::Pairs, 4)
    };
    let r = run(&c).expect("run");
    assert!(r.mode.ends_with("busy-poll"), "{}", r.mode);
    assert!(r.sent_total > 500, "{}", r.table());
    assert_eq!(r.tally.received, r.tally.expected, "{}", r.table());
    assert_eq!(r.tally.lost, 0, "{}", r.table());
    assert_eq!(r.tally.out_of_order, 0, "{}", r.table());
    let busiest = r.generator_cpu.iter().cloned().fold(0.0, f64::max);
    assert!(
        busiest < 0.5,
        "generator CPU share {busiest}: idle turns counted"
    );
}

#[test]
fn conns_holds_idle_connections() {
    let b = broker();
    let c = BenchConfig {
        duration: Duration::from_millis(300),
        warmup: Duration::ZERO,
        broker_pid: Some(std::process::id()),
        ..cfg(&b, Scenario::Conns, 200)
    };
    let r = run(&c).expect("run");
    assert_eq!(r.connections, 200);
    assert_eq!(r.disconnects, 0);
    assert!(r.broker_rss_per_conn().is_some());
    assert_eq!(r.sent_total, 0);
}

#[test]
fn a_missing_broker_is_an_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let c = BenchConfig {
        broker: port,
        count: 1,
        ..BenchConfig::default()
    };
    assert!(run(&c).is_err());
}
