//! Messages between workers: what one shard tells another.
//!
//! Owns: the vocabulary of the channel mesh. Every cross-worker effect is one of these
//! variants, collected by the sender into one batch per destination per event-loop
//! turn.
//! Must not: carry sockets or anything tied to a thread; the runtime wraps these in its
//! own envelope for that.

use super::latency::Latency;
use super::message::Message;
use super::session::Session;
use super::stats::Stats;
use super::{ConnId, WorkerId};
use crate::protocol::TopicFilter;
use std::sync::Arc;
use std::time::Instant;

/// Where a forwarded publish came from, so back-pressure can find its publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub worker: WorkerId,
    pub conn: ConnId,
}

/// Identifies one routing of a message: the worker that routed it and that
/// worker's routing sequence number (strictly increasing per worker). It orders
/// retained-store updates, and while a session moves its `worker` says which
/// origin's cut a copy is judged by (see `settle.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub worker: WorkerId,
    pub seq: u64,
}

/// One cross-worker message.
#[derive(Debug)]
pub enum MeshMsg {
    /// Deliver to the receiver's matching local subscribers; when `msg.retain` is set
    /// the receiver also updates its replica of the retained store (retained
    /// publishes go to every worker, interested or not).
    Publish {
        msg: Message,
        origin: Option<Origin>,
        stamp: Stamp,
        /// When the origin decoded it (orders retained-store updates).
        at: Instant,
    },
    /// A message that reached a worker a session has just left: deliver it to that
    /// session (or pass it on if the session moved again).
    Forward {
        client_id: Arc<str>,
        msg: Message,
        origin: Option<Origin>,
        stamp: Stamp,
    },
    /// The sender's local index gained its first (`add`) or lost its last subscriber
    /// on `filter`.
    Interest { filter: TopicFilter, add: bool },
    /// A client connected to the sender while the receiver owned its session: close
    /// the old connection and send the session back with [`MeshMsg::Handover`].
    Takeover {
        client_id: Arc<str>,
        /// The new connection on the sending worker.
        to: ConnId,
        /// The new connection asked for a clean session: discard, do not send.
        clean: bool,
    },
    /// Answer to `Takeover`: the session (None when there was none or it was
    /// discarded).
    Handover {
        client_id: Arc<str>,
        to: ConnId,
        session: Option<Box<Session>>,
    },
    /// Sent by a session's new home to every worker after its interest updates:
    /// the receiver replies `Pong` to the old home `stub_at` and `Flushed` to the
    /// sender. `move_id` names the move in all four messages of its protocol.
    Ping {
        client_id: Arc<str>,
        stub_at: WorkerId,
        move_id: u64,
    },
    /// To the old home: everything the sender routed before it knew the new home is
    /// ahead of this message; from now on it routes there.
    Pong { client_id: Arc<str>, move_id: u64 },
    /// To the new home: every direct copy the sender routed there before it knew of
    /// the move is ahead of this message.
    Flushed { client_id: Arc<str>, move_id: u64 },
    /// From the old home to the new: every forward of messages from `origin` that
    /// the new home is to take has been sent.
    Done {
        client_id: Arc<str>,
        origin: WorkerId,
        move_id: u64,
    },
    /// The sender gained (`add`) or lost a member of a shared subscription group.
    SharedMember {
        group: crate::broker::shard::GroupKey,
        add: bool,
    },
    /// Deliver to one local member of a shared subscription group (or pass it on:
    /// `visited` are the workers that had no connected member for it).
    Shared {
        group: crate::broker::shard::GroupKey,
        msg: Message,
        origin: Option<Origin>,
        visited: u64,
    },
    /// Stop reading from `conn` until `until`: a subscriber it feeds is congested.
    Pause { conn: ConnId, until: Instant },
    /// Read from `conn` again: the subscriber that paused it has drained.
    Resume { conn: ConnId },
    /// Periodic counters and histograms for the `$SYS` publisher (worker 0).
    Stats(Box<(Stats, Latency)>),
    /// What the receiver leaves in a batch's slot when it takes a message out to
    /// handle it (`Shard::mesh`); never sent.
    Spent,
}

/// Everything a shard wants sent to one destination worker in one turn.
pub type Batch = Vec<MeshMsg>;
