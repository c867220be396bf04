//! The broker's unit of routing: an application message as it travels between
//! sessions, workers, queues and the retained store.
//!
//! Must not: hold anything per subscriber. The topic and payload are reference-counted
//! (`ByteString`/`Bytes`), so cloning a [`Message`] never copies message bytes.

use crate::protocol::{QoS, TopicName};
use bytes::Bytes;

/// An application message: what was published, independent of any packet id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: TopicName,
    pub payload: Bytes,
    /// The QoS it was published with (the upper bound for every delivery).
    pub qos: QoS,
    /// The RETAIN flag as published.
    pub retain: bool,
}

impl Message {
    /// Bytes this message pins in memory, for queue accounting.
    pub fn weight_bytes(&self) -> usize {
        self.topic.as_str().len() + self.payload.len()
    }

    /// Detaches the payload from whatever larger read buffer it was sliced from, so a
    /// message held for long (queues, retained store) pins only its own bytes.
    pub fn compacted(mut self) -> Self {
        self.topic = self.topic.compacted();
        self.payload = Bytes::copy_from_slice(&self.payload);
        self
    }
}
