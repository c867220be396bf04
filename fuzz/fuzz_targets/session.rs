//! cargo-fuzz target: arbitrary byte streams, split into packets, through whole
//! sans-IO shards (see `src/targets.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ternmq_fuzz::session(data));
