//! `$SYS/broker/...`: each worker sends its counters to worker 0 every interval;
//! worker 0 merges them and publishes retained messages under Mosquitto's names.

use super::Shard;
use crate::broker::latency::Latency;
use crate::broker::mesh::MeshMsg;
use crate::broker::message::Message;
use crate::broker::stats::Stats;
use crate::protocol::{QoS, TopicName};
use bytes::Bytes;
use std::time::Instant;

impl Shard {
    pub(super) fn sys_tick(&mut self, now: Instant) {
        let mine = self.stats();
        if self.id != 0 {
            let report = Box::new((mine, self.latency.clone()));
            self.send_mesh(0, MeshMsg::Stats(report));
            return;
        }
        self.worker_stats[0] = mine;
        self.worker_latency[0] = self.latency.clone();
        let mut total = Stats::default();
        for s in &self.worker_stats {
            total.merge(s);
        }
        let mut latency = Latency::default();
        for l in &self.worker_latency {
            latency.merge(l);
        }
        let uptime = now.saturating_duration_since(self.started_at).as_secs();
        let topics: [(&str, String); 30] = [
            ("version", format!("ternmq {}", env!("CARGO_PKG_VERSION"))),
            ("uptime", format!("{uptime} seconds")),
            ("clients/connected", total.clients_connected.to_string()),
            (
                "clients/disconnected",
                total.clients_disconnected.to_string(),
            ),
            (
                "clients/total",
                (total.clients_connected + total.clients_disconnected).to_string(),
            ),
            ("connections/total", total.connections_total.to_string()),
            ("messages/received", total.messages_received.to_string()),
            ("messages/sent", total.messages_sent.to_string()),
            (
                "publish/messages/received",
                total.publish_received.to_string(),
            ),
            ("publish/messages/sent", total.publish_sent.to_string()),
            ("publish/messages/dropped", total.dropped().to_string()),
            ("bytes/received", total.bytes_received.to_string()),
            ("bytes/sent", total.bytes_sent.to_string()),
            ("subscriptions/count", total.subscriptions.to_string()),
            ("retained messages/count", total.retained.to_string()),
            ("store/messages/count", total.queued.to_string()),
            (
                "dropped/qos0_slow_subscriber",
                total.dropped_qos0_slow.to_string(),
            ),
            (
                "dropped/qos0_offline",
                total.dropped_qos0_offline.to_string(),
            ),
            ("dropped/queue_full", total.dropped_queue_full.to_string()),
            ("dropped/too_large", total.dropped_too_large.to_string()),
            ("dropped/expired", total.dropped_expired.to_string()),
            (
                "dropped/shared_no_member",
                total.dropped_shared_no_member.to_string(),
            ),
            ("sessions/expired", total.sessions_expired.to_string()),
            ("protocol_errors", total.protocol_errors.to_string()),
            ("backpressure/pauses", total.backpressure_pauses.to_string()),
            ("auth/refused", total.auth_refused.to_string()),
            ("auth/revoked", total.auth_revoked.to_string()),
            ("acl/denied_publish", total.acl_denied_publish.to_string()),
            (
                "acl/denied_subscribe",
                total.acl_denied_subscribe.to_string(),
            ),
            ("acl/denied_read", total.acl_denied_read.to_string()),
        ];
        let mut topics: Vec<(String, String)> = topics
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .collect();
        topics.extend(
            total
                .limits
                .topics()
                .map(|(n, v)| (n.to_string(), v.to_string())),
        );
        for s in latency.summaries() {
            for (q, v) in [
                ("count", s.count),
                ("p50", s.p50),
                ("p99", s.p99),
                ("p999", s.p999),
                ("max", s.max),
            ] {
                topics.push((format!("latency/{}/{q}", s.name), v.to_string()));
            }
        }
        for (name, value) in topics {
            let Ok(topic) = TopicName::new(format!("$SYS/broker/{name}")) else {
                debug_assert!(false, "bad $SYS topic {name}");
                continue;
            };
            let msg = Message::new(topic, Bytes::from(value), QoS::AtMostOnce, true);
            self.route(now, msg, None);
        }
    }
}
