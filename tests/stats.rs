//! `ternmq stats` against an in-process broker publishing `$SYS` every second.

use std::time::Duration;
use ternmq::bench::sys_stats::collect;
use ternmq::bench::{run, BenchConfig, Scenario};
use ternmq::config::Config;
use ternmq::runtime::start;

#[test]
fn stats_reads_counters_and_latency_histograms() {
    let b = start(Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        workers: 2,
        pin_cores: false,
        sys_interval_secs: 1,
        ..Config::default()
    })
    .expect("broker starts");
    // Some traffic, so the publish histogram has values.
    let r = run(&BenchConfig {
        scenario: Scenario::Pairs,
        broker: b.addr(),
        count: 2,
        warmup: Duration::ZERO,
        duration: Duration::from_millis(300),
        progress: false,
        ..BenchConfig::default()
    })
    .expect("bench run");
    assert!(r.received > 0);
    // Let a $SYS tick follow the run, then read.
    std::thread::sleep(Duration::from_millis(1100));
    let s = collect(b.addr(), Duration::from_millis(1500)).expect("collect");
    for key in [
        "clients/connected",
        "messages/received",
        "publish/messages/sent",
        "dropped/qos0_slow_subscriber",
        "dropped/qos0_offline",
        "dropped/queue_full",
    ] {
        assert!(
            s.num(key).is_some(),
            "{key} missing or not a number: {:?}",
            s.values
        );
    }
    assert!(s.values["version"].starts_with("ternmq"));
    // The stats client itself is connected.
    assert!(s.num("clients/connected").unwrap() >= 1);
    assert!(s.num("publish/messages/received").unwrap() >= r.received);
    assert_eq!(s.dropped().len(), 6);
    let lat = s.latency();
    let names: Vec<&str> = lat.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names[0], "publish_ns", "{names:?}");
    for n in ["turn_ns", "batch_len", "batch_delay_ns"] {
        assert!(names.contains(&n), "{names:?}");
    }
    let p = &lat[0];
    assert!(p.count.unwrap() >= r.received, "{p:?}");
    let (p50, p99, max) = (p.p50.unwrap(), p.p99.unwrap(), p.max.unwrap());
    assert!(p50 > 0 && p50 <= p99 && p99 <= max, "{p:?}");
    let t = s.table();
    for word in ["clients/connected", "qos0_offline", "publish", "p99.9"] {
        assert!(t.contains(word), "{word} not in\n{t}");
    }
    b.stop();
}

#[test]
fn stats_without_a_broker_is_an_error() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    assert!(collect(addr, Duration::from_millis(100)).is_err());
}
