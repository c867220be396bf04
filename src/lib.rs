//! ternmq: a thread-per-core MQTT broker.
//!
//! See `ARCHITECTURE.md` for the map. `protocol` is the sans-IO codec, `broker` the
//! sans-IO shard logic, `runtime` the only place that performs IO for the broker;
//! `auth` the password file, ACLs and login back-off; `bench` is the bundled load
//! generator (`ternmq bench`).

pub mod auth;
pub mod bench;
pub mod broker;
pub mod config;
pub mod protocol;
pub mod runtime;
