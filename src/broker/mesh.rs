//! Messages between workers: what one shard tells another.
//!
//! Owns: the vocabulary of the channel mesh. Every cross-worker effect is one of these
//! variants, collected by the sender into one batch per destination per event-loop
//! turn.
//! Must not: carry sockets or anything tied to a thread; the runtime wraps these in its
//! own envelope for that.

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

/// One cross-worker message.
#[derive(Debug)]
pub enum MeshMsg {
    /// Deliver to the receiver's matching local subscribers; when `msg.retain` is set
    /// the receiver also updates its replica of the retained store (retained
    /// publishes go to every worker, interested or not).
    Publish {
        msg: Message,
        origin: Option<Origin>,
        /// When the batch was started, for queueing-delay accounting.
        sent_at: Instant,
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
    /// Answer to `Takeover`: the session (None when there was none or it was discarded).
    Handover {
        client_id: Arc<str>,
        to: ConnId,
        session: Option<Box<Session>>,
    },
    /// Stop reading from `conn` until `until`: a subscriber it feeds is congested.
    Pause { conn: ConnId, until: Instant },
    /// Periodic counters for the `$SYS` publisher (worker 0).
    Stats(Box<Stats>),
}

/// Everything a shard wants sent to one destination worker in one turn.
pub type Batch = Vec<MeshMsg>;
