//! Per-worker counters, merged off the hot path by the `$SYS` publisher.
//!
//! Owns: the counters and their names. Each worker increments its own plain integers
//! (no atomics shared between cores); worker 0 receives snapshots over the mesh.

/// Counters kept by one worker. Cumulative unless noted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections with an accepted CONNECT right now (gauge).
    pub clients_connected: u64,
    /// Persistent sessions held while their client is away (gauge).
    pub clients_disconnected: u64,
    /// Connections accepted since start.
    pub connections_total: u64,
    pub messages_received: u64,
    pub messages_sent: u64,
    pub publish_received: u64,
    pub publish_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Local subscriptions (gauge).
    pub subscriptions: u64,
    /// Retained messages in this worker's replica (gauge).
    pub retained: u64,
    /// QoS 1/2 messages waiting in session queues (gauge).
    pub queued: u64,
    /// QoS 0 deliveries dropped because the subscriber's write buffer was full.
    pub dropped_qos0_slow: u64,
    /// QoS 0 deliveries not made because the subscriber was offline (never queued).
    pub dropped_qos0_offline: u64,
    /// QoS 1/2 messages dropped from a full session queue (oldest first).
    pub dropped_queue_full: u64,
    /// Connections closed for protocol violations.
    pub protocol_errors: u64,
    /// Publisher pauses ordered because a subscriber's queue was congested.
    pub backpressure_pauses: u64,
    /// CONNECTs refused by authentication (bad credentials, anonymous, back-off).
    pub auth_refused: u64,
    /// Connections closed because a reload of the password file or of
    /// `allow_anonymous` no longer admits their login.
    pub auth_revoked: u64,
    /// PUBLISHes and Wills dropped because the ACL denies writing their topic.
    pub acl_denied_publish: u64,
    /// SUBSCRIBE filters refused (0x80) by the ACL.
    pub acl_denied_subscribe: u64,
    /// Deliveries (retained and queued ones too) not made: the ACL denies reading.
    pub acl_denied_read: u64,
    /// Deliveries not made because the packet exceeded the client's Maximum Packet
    /// Size (MQTT 5, [MQTT-3.1.2-25]).
    pub dropped_too_large: u64,
    /// Messages not delivered because their Message Expiry Interval had passed.
    pub dropped_expired: u64,
    /// Messages for a shared subscription group that had no member left to take them.
    pub dropped_shared_no_member: u64,
    /// Offline MQTT 5 sessions removed when their Session Expiry Interval passed.
    pub sessions_expired: u64,
    /// Limits against abuse: what each refused (`$SYS/broker/limits/...`).
    pub limits: LimitStats,
}

/// How often each limit against abuse was crossed (cumulative).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitStats {
    /// Connections closed at accept: `max_connections` open already.
    pub connections_refused_max: u64,
    /// Connections closed at accept: `max_connections_per_ip_per_sec` exceeded.
    pub connections_refused_rate: u64,
    /// Connections closed because no CONNECT came within `connect_timeout_secs`.
    pub connect_timeouts: u64,
    /// Connections closed for a packet over `max_packet_bytes` (or, before CONNECT,
    /// over the largest possible CONNECT).
    pub packet_too_large: u64,
    /// SUBSCRIBE filters refused at `max_subscriptions_per_session`.
    pub subscriptions_refused: u64,
    /// Topics (PUBLISH, SUBSCRIBE filter, will) over `max_topic_levels`/`max_topic_bytes`.
    pub topics_refused: u64,
    /// Retained messages not stored: `max_retained_messages` or `max_retained_bytes`
    /// reached.
    pub retained_refused: u64,
}

impl LimitStats {
    fn merge(&mut self, o: &LimitStats) {
        self.connections_refused_max += o.connections_refused_max;
        self.connections_refused_rate += o.connections_refused_rate;
        self.connect_timeouts += o.connect_timeouts;
        self.packet_too_large += o.packet_too_large;
        self.subscriptions_refused += o.subscriptions_refused;
        self.topics_refused += o.topics_refused;
        self.retained_refused += o.retained_refused;
    }

    /// `$SYS/broker/limits/<name>` topics and values.
    pub fn topics(&self) -> [(&'static str, u64); 7] {
        [
            (
                "limits/connections_refused_max",
                self.connections_refused_max,
            ),
            (
                "limits/connections_refused_rate",
                self.connections_refused_rate,
            ),
            ("limits/connect_timeouts", self.connect_timeouts),
            ("limits/packet_too_large", self.packet_too_large),
            ("limits/subscriptions_refused", self.subscriptions_refused),
            ("limits/topics_refused", self.topics_refused),
            ("limits/retained_refused", self.retained_refused),
        ]
    }
}

impl Stats {
    /// Adds another worker's counters into this one.
    pub fn merge(&mut self, o: &Stats) {
        self.clients_connected += o.clients_connected;
        self.clients_disconnected += o.clients_disconnected;
        self.connections_total += o.connections_total;
        self.messages_received += o.messages_received;
        self.messages_sent += o.messages_sent;
        self.publish_received += o.publish_received;
        self.publish_sent += o.publish_sent;
        self.bytes_received += o.bytes_received;
        self.bytes_sent += o.bytes_sent;
        self.subscriptions += o.subscriptions;
        self.retained = self.retained.max(o.retained); // replicas: the same store
        self.queued += o.queued;
        self.dropped_qos0_slow += o.dropped_qos0_slow;
        self.dropped_qos0_offline += o.dropped_qos0_offline;
        self.dropped_queue_full += o.dropped_queue_full;
        self.protocol_errors += o.protocol_errors;
        self.backpressure_pauses += o.backpressure_pauses;
        self.auth_refused += o.auth_refused;
        self.auth_revoked += o.auth_revoked;
        self.acl_denied_publish += o.acl_denied_publish;
        self.acl_denied_subscribe += o.acl_denied_subscribe;
        self.acl_denied_read += o.acl_denied_read;
        self.dropped_too_large += o.dropped_too_large;
        self.dropped_expired += o.dropped_expired;
        self.sessions_expired += o.sessions_expired;
        self.dropped_shared_no_member += o.dropped_shared_no_member;
        self.limits.merge(&o.limits);
    }

    /// Total messages dropped for any reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_qos0_slow
            + self.dropped_qos0_offline
            + self.dropped_queue_full
            + self.dropped_too_large
            + self.dropped_expired
            + self.dropped_shared_no_member
    }
}
