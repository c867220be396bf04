//! The bodies of ternmq's fuzz targets, shared by the cargo-fuzz binaries
//! (`fuzz_targets/`), the plain loop (`src/bin/fuzz_loop.rs`) and the main crate's
//! bounded test (`tests/fuzz_loop.rs`, which includes `targets.rs` by path).

#[path = "targets.rs"]
mod targets;

pub use targets::{decode, mutate, seeds, session, session_seeds};
