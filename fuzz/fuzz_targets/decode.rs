//! cargo-fuzz target: the packet decoder, both protocol versions, with a re-encode /
//! decode round trip on every packet it accepts (see `src/targets.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ternmq_fuzz::decode(data));
