//! The fuzz targets of `fuzz/` (see its README section) as a short bounded loop
//! under `cargo test`: seeds first, then random mutations of them for
//! `TERNMQ_FUZZ_SECS` seconds per target (default 3). No nightly toolchain needed.

#[path = "../fuzz/src/targets.rs"]
mod targets;

use std::time::{Duration, Instant};

fn budget() -> Duration {
    let secs = std::env::var("TERNMQ_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    Duration::from_secs(secs)
}

/// Runs `target` on every seed, then on mutations of them until the budget is spent;
/// a panic fails the test with the input that caused it.
fn fuzz(target: fn(&[u8]), seeds: Vec<Vec<u8>>) -> u64 {
    for s in &seeds {
        target(s);
    }
    let started = Instant::now();
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut execs = 0;
    while started.elapsed() < budget() {
        for _ in 0..64 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let mut input = seeds[(rng as usize) % seeds.len()].clone();
            let other = seeds[(rng >> 32) as usize % seeds.len()].clone();
            for _ in 0..1 + (rng >> 60) {
                targets::mutate(&mut rng, &mut input, &other);
            }
            execs += 1;
            if std::panic::catch_unwind(|| target(&input)).is_err() {
                panic!("fuzz input that panics: {input:?}");
            }
        }
    }
    execs
}

#[test]
fn decoder_round_trips_mutated_packets() {
    let seeds = targets::seeds()
        .into_iter()
        .map(|(v, bytes)| {
            let mut input = vec![u8::from(v == ternmq::protocol::ProtocolVersion::V5)];
            input.extend(bytes);
            input
        })
        .collect();
    let n = fuzz(targets::decode, seeds);
    eprintln!("decode: {n} executions");
}

#[test]
fn session_survives_mutated_scripts() {
    let n = fuzz(targets::session, targets::session_seeds());
    eprintln!("session: {n} executions");
}
