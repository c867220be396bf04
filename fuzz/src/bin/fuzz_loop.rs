//! The fuzz targets as a plain bounded loop, for machines without a nightly
//! toolchain or cargo-fuzz: random mutations of the seed corpus (no coverage
//! feedback), each run under `catch_unwind`.
//!
//! `cargo run --release --bin fuzz-loop -- decode|session SECONDS [SEED]`
//! `cargo run --release --bin fuzz-loop -- write-corpus DIR` writes the seeds.
//! A panicking input is written to `artifacts/<target>/crash-<n>` and the run fails.

use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("write-corpus") => {
            let dir = std::path::PathBuf::from(args.get(1).map_or("corpus", |s| s.as_str()));
            write_corpus(&dir).expect("write corpus");
        }
        Some(t @ ("decode" | "session")) => {
            let secs: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
            let seed: u64 = args
                .get(2)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0x9e37_79b9);
            let crashes = run(t, Duration::from_secs(secs), seed);
            if crashes > 0 {
                std::process::exit(1);
            }
        }
        _ => {
            eprintln!("usage: fuzz-loop decode|session SECONDS [SEED] | write-corpus DIR");
            std::process::exit(2);
        }
    }
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    match target {
        "decode" => ternmq_fuzz::seeds()
            .into_iter()
            .map(|(v, bytes)| {
                let sel = if v == ternmq::protocol::ProtocolVersion::V5 {
                    1
                } else {
                    0
                };
                let mut input = vec![sel];
                input.extend(bytes);
                input
            })
            .collect(),
        _ => ternmq_fuzz::session_seeds(),
    }
}

fn write_corpus(dir: &std::path::Path) -> std::io::Result<()> {
    for target in ["decode", "session"] {
        let d = dir.join(target);
        std::fs::create_dir_all(&d)?;
        for (i, input) in corpus(target).iter().enumerate() {
            std::fs::write(d.join(format!("seed-{i:02}")), input)?;
        }
    }
    Ok(())
}

fn run(target: &str, budget: Duration, seed: u64) -> usize {
    let run_one: fn(&[u8]) = match target {
        "decode" => ternmq_fuzz::decode,
        _ => ternmq_fuzz::session,
    };
    let seeds = corpus(target);
    let mut rng = seed | 1;
    let started = Instant::now();
    let (mut execs, mut crashes) = (0u64, 0usize);
    std::panic::set_hook(Box::new(|_| {}));
    while started.elapsed() < budget {
        for _ in 0..256 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let mut input = seeds[(rng as usize) % seeds.len()].clone();
            let other = &seeds[(rng >> 32) as usize % seeds.len()];
            for _ in 0..1 + (rng >> 60) {
                ternmq_fuzz::mutate(&mut rng, &mut input, other);
            }
            execs += 1;
            if std::panic::catch_unwind(|| run_one(&input)).is_err() {
                crashes += 1;
                let dir = std::path::PathBuf::from("artifacts").join(target);
                let _ = std::fs::create_dir_all(&dir);
                let path = dir.join(format!("crash-{crashes}"));
                let _ = std::fs::write(&path, &input);
                eprintln!("crash: {} ({} bytes)", path.display(), input.len());
            }
        }
    }
    println!(
        "{target}: {execs} executions in {:.1} s, {crashes} crashes (seed {seed})",
        started.elapsed().as_secs_f64()
    );
    crashes
}
