//! The sans-IO broker: everything one worker decides, with no sockets, threads,
//! channels or clock reads.
//!
//! Owns: sessions and their QoS state machines, the local topic index, the remote
//! interest index, the retained store and the shard that ties them together.
//! Must not: import `mio`, `std::net`, `crossbeam_channel`, or call `Instant::now()`:
//! time comes in as a `now` argument and every effect goes out as data.

pub mod message;
pub mod retained;
pub mod topic_index;
