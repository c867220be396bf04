//! The sans-IO broker: everything one worker decides, with no sockets, threads,
//! channels or clock reads.
//!
//! Owns: sessions and their QoS state machines, the local topic index, the remote
//! interest index, the retained store and the shard that ties them together.
//! Must not: import `mio`, `std::net`, `crossbeam_channel`, or call `Instant::now()`:
//! time comes in as a `now` argument and every effect goes out as data.

/// The hash map of maps looked up per message (the topic index's levels and exact
/// filters, the congested sessions' feeders on every ack, a connection's outbound topic
/// aliases on every MQTT 5 delivery): foldhash, seeded at random per map, so keys that
/// come from clients cannot be chosen to collide, at a fraction of SipHash's cost.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub mod latency;
pub mod mesh;
pub mod message;
pub mod registry;
pub mod retained;
pub mod session;
pub mod settle;
pub mod shard;
pub mod stats;
pub mod topic_index;
pub(crate) mod tx_pool;

/// Index of a worker (and of its shard), `0..workers`.
pub type WorkerId = usize;

/// Most workers one broker runs: interest sets are 64-bit masks.
pub const WORKERS_MAX: usize = 64;

/// A connection on one worker: the runtime's slot plus a generation, so that an event
/// for a closed connection whose slot was reused is recognised as stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub slot: u32,
    pub gen: u32,
}
