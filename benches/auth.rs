//! The cost of authentication: one PBKDF2 verification at the default iteration
//! count (what a first login, or a wrong password, costs a worker), a whole
//! CONNECT through a shard without authentication, with a password verified from
//! the per-worker cache (a reconnecting device), and one ACL decision, cached or not.

use criterion::{criterion_group, criterion_main, Criterion};
use std::sync::Arc;
use std::time::{Duration, Instant};
use ternmq::auth::acl::{Access, AclFile, ConnAcl};
use ternmq::auth::hash::{PasswordHash, ITERATIONS_DEFAULT};
use ternmq::auth::{AuthShared, Rules};
use ternmq::broker::registry::Registry;
use ternmq::broker::shard::Shard;
use ternmq::broker::ConnId;
use ternmq::config::Config;
use ternmq::protocol::*;

fn connect(user: Option<&str>) -> Packet {
    Packet::Connect(Box::new(Connect {
        version: ProtocolVersion::V3_1_1,
        clean_session: true,
        keep_alive_secs: 0,
        client_id: "device-1".into(),
        will: None,
        username: user.map(Into::into),
        password: user.map(|_| bytes::Bytes::from_static(b"device-secret")),
        props: Default::default(),
    }))
}

/// Opens a connection, sends CONNECT, closes it: one login.
fn one_connect(shard: &mut Shard, now: &mut Instant, gen: &mut u32, packet: &Packet) {
    *gen += 1;
    *now += Duration::from_micros(1); // a new turn each time
    let id = ConnId { slot: 0, gen: *gen };
    shard.open(*now, id);
    shard.packet(*now, id, packet.clone());
    assert!(shard.tx_len(id) > 0 || !shard.is_open(id));
    shard.closed(*now, id);
    let fx = shard.effects();
    fx.dirty.clear();
    fx.close.clear();
}

fn bench(c: &mut Criterion) {
    let hash = PasswordHash::new(b"device-secret", ITERATIONS_DEFAULT).unwrap();
    c.bench_function("auth/pbkdf2_verify_default_iterations", |b| {
        b.iter(|| assert!(hash.verify(b"device-secret")))
    });

    let cfg = Arc::new(Config {
        sys_interval_secs: 0,
        ..Config::default()
    });
    let mut now = Instant::now();
    let mut gen = 0;
    let mut plain = Shard::new(0, 1, cfg.clone(), Arc::new(Registry::new()), now);
    let anon = connect(None);
    c.bench_function("auth/connect_no_auth", |b| {
        b.iter(|| one_connect(&mut plain, &mut now, &mut gen, &anon))
    });

    let passwd = format!("dev:{hash}\n");
    let rules = Rules::from_texts(Some(&passwd), None, None).unwrap();
    let mut guarded = Shard::new(0, 1, cfg, Arc::new(Registry::new()), now);
    guarded.set_auth(AuthShared::from_rules(rules));
    let with_pw = connect(Some("dev"));
    one_connect(&mut guarded, &mut now, &mut gen, &with_pw); // fills the cache
    c.bench_function("auth/connect_password_cached", |b| {
        b.iter(|| one_connect(&mut guarded, &mut now, &mut gen, &with_pw))
    });

    let acl = AclFile::parse(
        "user dev\ntopic read cmd/#\ntopic deny cmd/admin/#\npattern write devices/%c/#\npattern read devices/%c/in/#\n",
    )
    .unwrap();
    let compiled = acl.compile(Some("dev"), "device-1");
    c.bench_function("auth/acl_decision_uncached", |b| {
        b.iter(|| assert!(compiled.allows("devices/device-1/telemetry", Access::Write)))
    });
    let mut cached = ConnAcl::new(compiled.clone());
    c.bench_function("auth/acl_decision_cached", |b| {
        b.iter(|| assert!(cached.allows("devices/device-1/telemetry", Access::Write)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
