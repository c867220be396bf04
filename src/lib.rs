//! ternmq: a thread-per-core MQTT broker.
//!
//! See `ARCHITECTURE.md` for the map. `protocol` is the sans-IO codec, `broker` the
//! sans-IO shard logic, `runtime` the only place that performs IO for the broker;
//! `bench` is the bundled load generator (`ternmq bench`).

pub mod bench;
pub mod broker;
pub mod config;
pub mod protocol;
pub mod runtime;
