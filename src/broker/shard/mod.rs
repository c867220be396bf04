//! The shard: one worker's whole broker state machine, driven by events and `now`.
//!
//! Owns: the connections' protocol state and write buffers, the sessions living on
//! this worker, the local topic index, the remote interest index, the retained store
//! replica and the timers. Inputs are method calls (`open`, `packet`, `closed`,
//! `mesh`, `tick`); outputs are bytes appended to write buffers plus [`Effects`] that
//! the runtime carries out (flush, close, pause, send batches).
//! Must not: perform IO, read the clock, or block. Every input for a connection that
//! no longer exists (a stale [`ConnId`]) is ignored: late events are normal.
//!
//! The submodules split the logic by concern: `connect` (CONNECT, claims, session
//! attach, closing, wills), `takeover` (takeover requests and handovers between
//! workers), `moved` (forwarding stubs and settling while a session moves), `route`
//! (PUBLISH in and out, QoS flows, subscriptions, retained), `sys` (`$SYS` topics and
//! stats).

mod auth;
mod connect;
mod moved;
mod route;
mod shared;
mod sys;
mod takeover;

use super::latency::Latency;
use super::mesh::{Batch, MeshMsg};
use super::registry::Registry;
use super::retained::RetainedStore;
use super::session::{Grant, Session};
use super::stats::Stats;
use super::topic_index::TopicIndex;
use super::{ConnId, FastMap, WorkerId};
use crate::config::Config;
use crate::protocol::{Disconnect, Packet, ProtocolVersion, ReasonCode, TopicName, Will};
use slab::Slab;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use connect::PendingConnect;
pub use shared::GroupKey;

/// What the runtime must do after feeding the shard some events.
#[derive(Debug, Default)]
pub struct Effects {
    /// Connections whose write buffer gained bytes: flush each once.
    pub dirty: Vec<ConnId>,
    /// Connections to close, with their last bytes to write first (best effort).
    pub close: Vec<(ConnId, Vec<u8>)>,
    /// Stop reading from these connections until the given time.
    pub pause: Vec<(ConnId, Instant)>,
    /// Read from these paused connections again now.
    pub resume: Vec<ConnId>,
    /// One batch per destination worker (index = worker id); empty ones are skipped.
    pub mesh: Vec<Batch>,
}

impl Effects {
    /// True when there is nothing for the runtime to do.
    pub fn is_empty(&self) -> bool {
        self.dirty.is_empty()
            && self.close.is_empty()
            && self.pause.is_empty()
            && self.resume.is_empty()
            && self.mesh.iter().all(|b| b.is_empty())
    }
}

/// Where a connection is in its life.
#[derive(Debug)]
pub(crate) enum Phase {
    /// Accepted; CONNECT not yet received.
    AwaitConnect,
    /// CONNECT received while another takeover of the client id was in flight;
    /// retried at `retry_at`, refused after `deadline`.
    /// Boxed so that every connection's `Phase` stays two words.
    AwaitClaim(Box<AwaitClaim>),
    /// CONNECT received; waiting for the session to arrive from another worker.
    AwaitHandover(Box<PendingConnect>),
    /// CONNACK sent; `session` is the key into the shard's session slab.
    Active { session: usize },
}

/// A CONNECT parked while another takeover of its client id is in flight.
#[derive(Debug)]
pub(crate) struct AwaitClaim {
    pub connect: crate::protocol::Connect,
    pub retry_at: Instant,
    pub deadline: Instant,
    /// Its place in the order of CONNECTs for the client id.
    pub ticket: u64,
}

/// One connection's state inside the shard.
#[derive(Debug)]
pub(crate) struct Conn {
    pub gen: u32,
    pub phase: Phase,
    /// Encoded packets not yet handed to the socket.
    pub tx: Vec<u8>,
    pub dirty: bool,
    /// When the last packet arrived; before CONNECT, when the connection opened (a
    /// packet other than CONNECT closes it, so the two never differ then).
    pub last_rx: Instant,
    /// 1.5 x the keep-alive the client asked for; None when it asked for 0.
    pub keep_alive_limit: Option<Duration>,
    pub version: ProtocolVersion,
    /// Published if the connection ends without DISCONNECT. Boxed: most clients have
    /// none, and an inline `Will` would double the size of every `Conn`.
    pub will: Option<Box<Will>>,
    /// The deadline of this connection's one live timer entry.
    pub timer_at: Option<Instant>,
    /// Packets received after CONNECT while the session was not attached yet
    /// (boxed: almost always absent).
    #[allow(clippy::box_collection)]
    pub early: Option<Box<Vec<Packet>>>,
    /// MQTT 5 connection state (boxed: absent on 3.x connections).
    pub v5: Option<Box<ConnV5>>,
    /// With several workers: which workers the connection's last topic goes to
    /// (boxed: allocated on its first PUBLISH).
    pub route: Option<Box<RouteCache>>,
}

/// What the interest index said for a publisher's last topic. Publishers mostly
/// repeat one topic, so `route` then compares the topic instead of walking the index
/// (about 100 instructions fewer per message with two workers, `perf/README.md`).
/// Valid while the interest index is unchanged (`Shard::interest_generation`).
#[derive(Debug, Default)]
pub(crate) struct RouteCache {
    pub generation: u64,
    pub mask: u64,
    pub topic: Vec<u8>,
}

/// Topics longer than this are not kept in a [`RouteCache`].
pub(crate) const ROUTE_CACHE_TOPIC_MAX: usize = 256;

/// What an MQTT 5 connection negotiated in CONNECT, and its topic aliases.
#[derive(Debug, Default)]
pub(crate) struct ConnV5 {
    /// Session Expiry Interval asked for in CONNECT (seconds).
    pub session_expiry: u32,
    /// The client's Receive Maximum (0: the default, 65535).
    pub receive_max: u16,
    /// The client's Maximum Packet Size (0: no limit).
    pub max_packet: u32,
    /// Topic aliases the client set for its PUBLISH packets (index = alias - 1).
    pub aliases_in: Vec<Option<TopicName>>,
    /// Topic aliases the broker set towards the client.
    pub aliases_out: FastMap<TopicName, u16>,
    /// The client's Topic Alias Maximum (aliases the broker may use).
    pub alias_max_out: u16,
    /// The broker assigned the client id (sent back in CONNACK).
    pub assigned_id: bool,
    /// The keep-alive the broker imposes instead of the client's (CONNACK Server Keep
    /// Alive), if it does.
    pub server_keep_alive: Option<u16>,
}

/// The largest CONNECT there can be: fixed header, variable header and five
/// length-prefixed fields of at most 65535 bytes.
const CONNECT_BYTES_MAX: usize = 5 + 10 + 5 * (2 + 65_535);

/// The live connection `id` names in `conns` (a field borrow, so that a caller may
/// hold other fields of the shard at the same time).
fn conn_in(conns: &mut [Option<Conn>], id: ConnId) -> Option<&mut Conn> {
    match conns.get_mut(id.slot as usize) {
        Some(Some(c)) if c.gen == id.gen => Some(c),
        _ => None,
    }
}

/// Packets a client may send after CONNECT before its session is attached.
const EARLY_PACKETS_MAX: usize = 64;

/// One worker's broker.
pub struct Shard {
    pub(crate) id: WorkerId,
    pub(crate) workers: usize,
    pub(crate) cfg: Arc<Config>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) conns: Vec<Option<Conn>>,
    pub(crate) sessions: Slab<Session>,
    pub(crate) by_client: HashMap<Arc<str>, usize>,
    /// Local subscriptions: subscriber id = session key.
    pub(crate) index: TopicIndex<Grant>,
    /// Which workers have a subscriber on each filter: subscriber id = worker id.
    /// Holds this worker's own filters too when there are several workers (see
    /// `broadcast_interest`), so `route` can skip a local lookup that would miss.
    pub(crate) interest: TopicIndex<()>,
    /// Counts changes to `interest`: a [`RouteCache`] of another generation is stale.
    pub(crate) interest_generation: u64,
    /// Shared subscription groups: members here, member counts everywhere.
    pub(crate) shared: shared::SharedGroups,
    pub(crate) retained: RetainedStore,
    /// The version of the last update applied per retained topic (see `route.rs`).
    pub(crate) retained_versions: HashMap<crate::protocol::TopicName, route::RetainVersion>,
    /// Deleted retained topics, oldest first, kept for a grace period.
    pub(crate) tombstones: VecDeque<(Instant, crate::protocol::TopicName)>,
    pub(crate) timers: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    /// Offline sessions' expiry and delayed wills: (due, session key). An entry is
    /// checked against the session's own deadlines when it fires.
    pub(crate) session_timers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Sessions on their way here from another worker, by client id.
    pub(crate) inbound: HashMap<Arc<str>, takeover::Inbound>,
    pub(crate) effects: Effects,
    pub(crate) stats: Stats,
    /// Worker 0 only: the latest counters of every worker.
    pub(crate) worker_stats: Vec<Stats>,
    /// Worker 0 only: the latest histograms of every worker.
    pub(crate) worker_latency: Vec<Latency>,
    /// This worker's histograms, recorded by the runtime.
    pub latency: Latency,
    pub(crate) started_at: Instant,
    pub(crate) next_sys_at: Option<Instant>,
    /// Publishers paused because of each congested session, by session key.
    pub(crate) feeders: FastMap<usize, Vec<super::mesh::Origin>>,
    /// Reused per publish: (session key, subscription options) of local matches.
    pub(crate) matches: Vec<(u32, Grant)>,
    /// Reused per MQTT 5 delivery: the subscription identifiers to send.
    pub(crate) sub_ids: Vec<u32>,
    /// Emptied write buffers kept for the next connection that writes (see
    /// [`Shard::recycle_tx`]): a busy connection gets a buffer of working size at
    /// once instead of growing one from nothing every turn, and an idle one owns none.
    /// Sized to the demand (`tx_pool.rs`).
    pub(crate) tx_pool: crate::broker::tx_pool::TxPool,
    pub(crate) next_auto_id: u64,
    /// Sessions moved away from this worker so far (numbers the moves, `moved.rs`).
    pub(crate) moves_out: u64,
    /// Routing sequence number of this worker's last routed message.
    pub(crate) seq: u64,
    /// The last routing sequence number received from each worker.
    pub(crate) last_seen: Vec<u64>,
    /// Forwarding stubs of sessions that moved away (see `moved.rs`).
    pub(crate) stubs: Slab<moved::Stub>,
    pub(crate) stub_by_client: HashMap<Arc<str>, usize>,
    /// Takeovers of sessions that are still settling after a move, in arrival order.
    pub(crate) deferred: HashMap<Arc<str>, Vec<takeover::Deferred>>,
    /// Clients whose deferred takeovers can be answered now (their session went).
    pub(crate) deferred_ready: Vec<Arc<str>>,
    /// Authentication and ACL state; None when none is configured (see `auth.rs`).
    pub(crate) auth: Option<Box<auth::AuthState>>,
}

impl Shard {
    /// A shard for worker `id` of `workers`.
    pub fn new(
        id: WorkerId,
        workers: usize,
        cfg: Arc<Config>,
        registry: Arc<Registry>,
        now: Instant,
    ) -> Shard {
        assert!((1..=super::WORKERS_MAX).contains(&workers) && id < workers);
        let next_sys_at =
            (cfg.sys_interval_secs > 0).then(|| now + Duration::from_secs(cfg.sys_interval_secs));
        Shard {
            id,
            workers,
            cfg,
            registry,
            conns: Vec::new(),
            sessions: Slab::new(),
            by_client: HashMap::new(),
            index: TopicIndex::new(),
            interest: TopicIndex::new(),
            interest_generation: 0,
            shared: Default::default(),
            retained: RetainedStore::new(),
            retained_versions: HashMap::new(),
            tombstones: VecDeque::new(),
            timers: BinaryHeap::new(),
            session_timers: BinaryHeap::new(),
            inbound: HashMap::new(),
            effects: Effects {
                mesh: (0..workers).map(|_| Vec::new()).collect(),
                ..Effects::default()
            },
            stats: Stats::default(),
            worker_stats: vec![Stats::default(); workers],
            worker_latency: if id == 0 {
                vec![Latency::default(); workers]
            } else {
                Vec::new()
            },
            latency: Latency::default(),
            started_at: now,
            next_sys_at,
            matches: Vec::new(),
            sub_ids: Vec::new(),
            tx_pool: Default::default(),
            feeders: FastMap::default(),
            next_auto_id: 0,
            moves_out: 0,
            seq: 0,
            last_seen: vec![0; workers],
            stubs: Slab::new(),
            stub_by_client: HashMap::new(),
            deferred: HashMap::new(),
            deferred_ready: Vec::new(),
            auth: None,
        }
    }

    pub fn worker_id(&self) -> WorkerId {
        self.id
    }

    /// A new network connection: it has `connect_timeout` to send CONNECT.
    pub fn open(&mut self, now: Instant, id: ConnId) {
        let slot = id.slot as usize;
        if self.conns.len() <= slot {
            self.conns.resize_with(slot + 1, || None);
        }
        debug_assert!(self.conns[slot].is_none(), "slot reused while live");
        self.conns[slot] = Some(Conn {
            gen: id.gen,
            phase: Phase::AwaitConnect,
            tx: Vec::new(),
            dirty: false,
            last_rx: now,
            keep_alive_limit: None,
            version: ProtocolVersion::V3_1_1,
            will: None,
            timer_at: None,
            early: None,
            v5: None,
            route: None,
        });
        self.stats.connections_total += 1;
        self.schedule(id, now + self.cfg.connect_timeout());
    }

    pub(crate) fn conn(&self, id: ConnId) -> Option<&Conn> {
        match self.conns.get(id.slot as usize) {
            Some(Some(c)) if c.gen == id.gen => Some(c),
            _ => None,
        }
    }

    pub(crate) fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        conn_in(&mut self.conns, id)
    }

    /// True while the connection exists in the shard.
    pub fn is_open(&self, id: ConnId) -> bool {
        self.conn(id).is_some()
    }

    /// One decoded packet from a connection.
    pub fn packet(&mut self, now: Instant, id: ConnId, packet: Packet) {
        self.stats.messages_received += 1;
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        conn.last_rx = now;
        match (&conn.phase, packet) {
            (Phase::AwaitConnect, Packet::Connect(c)) => self.on_connect(now, id, *c),
            (Phase::AwaitConnect, p) => {
                // [MQTT-3.1.0-1]: the first packet must be CONNECT.
                self.protocol_error(now, id, p.name(), "first packet is not CONNECT")
            }
            (Phase::AwaitHandover(_) | Phase::AwaitClaim(_), p) => {
                // A client may send packets right after CONNECT without waiting for
                // CONNACK (3.1.4); they wait here until the session is attached.
                let early = conn.early.get_or_insert_with(Default::default);
                if early.len() >= EARLY_PACKETS_MAX {
                    self.protocol_error(now, id, p.name(), "too many packets before CONNACK")
                } else {
                    early.push(p);
                }
            }
            (Phase::Active { session }, p) => {
                let session = *session;
                self.on_active_packet(now, id, session, p)
            }
        }
        self.run_ready_deferred(now);
    }

    pub(crate) fn on_active_packet(
        &mut self,
        now: Instant,
        id: ConnId,
        session: usize,
        packet: Packet,
    ) {
        match packet {
            Packet::Publish(p) => self.on_publish(now, id, session, p),
            Packet::PubAck(a) => {
                if let Some(s) = self.sessions.get_mut(session) {
                    if s.puback(a.packet_id) {
                        self.pump(now, id, session);
                    }
                }
            }
            Packet::PubRec(a) => {
                let Some(s) = self.sessions.get_mut(session) else {
                    return;
                };
                if !a.reason.is_success() {
                    // 4.3.3: a failed PUBREC ends the flow; the id is free again.
                    if s.end_published(a.packet_id) {
                        self.pump(now, id, session);
                    }
                } else if s.pubrec(a.packet_id) {
                    self.write_packet(id, &Packet::pubrel(a.packet_id));
                } else if self.conn(id).is_some_and(|c| c.version.is_v5()) {
                    let mut rel = crate::protocol::Ack::new(a.packet_id);
                    rel.reason = ReasonCode::PACKET_ID_NOT_FOUND;
                    self.write_packet(id, &Packet::PubRel(rel));
                }
            }
            Packet::PubRel(a) => {
                let known = self.sessions.get_mut(session).is_some_and(|s| {
                    let known = s.inbound_qos2_contains(a.packet_id);
                    s.inbound_qos2_remove(a.packet_id);
                    known
                });
                // [MQTT-4.3.3-2]: PUBCOMP with the same id, even if unknown (MQTT 5 says
                // so with reason 0x92).
                let mut comp = crate::protocol::Ack::new(a.packet_id);
                if !known && self.conn(id).is_some_and(|c| c.version.is_v5()) {
                    comp.reason = ReasonCode::PACKET_ID_NOT_FOUND;
                }
                self.write_packet(id, &Packet::PubComp(comp));
            }
            Packet::PubComp(a) => {
                if let Some(s) = self.sessions.get_mut(session) {
                    if s.pubcomp(a.packet_id) {
                        self.pump(now, id, session);
                    }
                }
            }
            Packet::Subscribe(s) => self.on_subscribe(now, id, session, s),
            Packet::Unsubscribe(u) => self.on_unsubscribe(id, session, u),
            Packet::PingReq => self.write_packet(id, &Packet::PingResp), // [MQTT-3.12.4-1]
            Packet::Disconnect(d) => self.on_disconnect(now, id, session, d),
            // No authentication method is supported, so none was agreed in CONNECT, and
            // AUTH is a Protocol Error ([MQTT-3.15.1-1] and 4.12).
            Packet::Auth(_) => self.protocol_error(now, id, "AUTH", "no authentication method"),
            // [MQTT-3.1.0-2]: a second CONNECT is a protocol violation.
            Packet::Connect(_) => self.protocol_error(now, id, "CONNECT", "second CONNECT"),
            p @ (Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp) => {
                self.protocol_error(now, id, p.name(), "server-to-client packet from a client")
            }
        }
    }

    /// The protocol version spoken on a connection (3.1.1 until CONNECT says).
    pub fn version(&self, id: ConnId) -> ProtocolVersion {
        self.conn(id).map_or(ProtocolVersion::V3_1_1, |c| c.version)
    }

    /// The broker is stopping: MQTT 5 clients get DISCONNECT 0x8B (Server shutting
    /// down) in their write buffers before the runtime closes every socket.
    pub fn shutting_down(&mut self) {
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(slot, c)| {
                let c = c.as_ref()?;
                (c.version.is_v5() && matches!(c.phase, Phase::Active { .. })).then_some(ConnId {
                    slot: slot as u32,
                    gen: c.gen,
                })
            })
            .collect();
        for id in ids {
            self.write_packet(
                id,
                &Packet::Disconnect(Disconnect::new(ReasonCode::SERVER_SHUTTING_DOWN)),
            );
        }
    }

    /// Bytes counted by the runtime as read from a connection.
    pub fn count_rx_bytes(&mut self, n: usize) {
        self.stats.bytes_received += n as u64;
    }

    /// The connection's write buffer, for the runtime to flush; clears the dirty mark.
    pub fn tx_mut(&mut self, id: ConnId) -> Option<&mut Vec<u8>> {
        let conn = self.conn_mut(id)?;
        conn.dirty = false;
        Some(&mut conn.tx)
    }

    /// The largest packet to accept next from this connection: until CONNECT, no more
    /// than the largest possible CONNECT, so that unauthenticated sockets cannot make
    /// the broker buffer `max_packet_bytes` each.
    pub fn packet_limit(&self, id: ConnId) -> usize {
        match self.conn(id).map(|c| &c.phase) {
            Some(Phase::AwaitConnect) | None => self.cfg.max_packet_bytes.min(CONNECT_BYTES_MAX),
            Some(_) => self.cfg.max_packet_bytes,
        }
    }

    /// The runtime wrote all of a connection's buffer: it goes back to the pool (if
    /// not oversized), so the idle connection owns no write buffer.
    pub fn recycle_tx(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let tx = std::mem::take(&mut conn.tx);
        self.tx_pool.give(tx);
    }

    /// A connection's write buffer, ready for a packet: an empty one is given a pooled
    /// buffer (or a fresh one of working size) before anything is appended.
    pub(crate) fn tx_buf(&mut self, id: ConnId) -> Option<&mut Conn> {
        let conn = conn_in(&mut self.conns, id)?;
        if conn.tx.capacity() == 0 {
            conn.tx = self.tx_pool.take();
        }
        Some(conn)
    }

    /// Bytes waiting in the connection's write buffer (0 for unknown connections).
    pub fn tx_len(&self, id: ConnId) -> usize {
        self.conn(id).map_or(0, |c| c.tx.len())
    }

    /// Bytes the runtime handed to the kernel.
    pub fn count_tx_bytes(&mut self, n: usize) {
        self.stats.bytes_sent += n as u64;
    }

    /// The runtime's effects; the shard starts collecting anew.
    pub fn effects(&mut self) -> &mut Effects {
        &mut self.effects
    }

    /// Appends an encoded packet to a connection's write buffer, in the layout of the
    /// connection's protocol version.
    pub(crate) fn write_packet(&mut self, id: ConnId, packet: &Packet) {
        let Some(conn) = self.tx_buf(id) else {
            return;
        };
        let before = conn.tx.len();
        crate::protocol::encode_packet_v(packet, conn.version, &mut conn.tx);
        // [MQTT-3.1.2-24]: nothing larger than an MQTT 5 client's Maximum Packet Size.
        // PUBLISH is sized before it is built (route.rs:fits); a SUBACK or UNSUBACK
        // (one code per filter) could still exceed it: it is discarded, not sent.
        let max = conn.v5.as_ref().map_or(0, |v| v.max_packet) as usize;
        if max != 0 && conn.tx.len() - before > max {
            conn.tx.truncate(before);
            self.stats.dropped_too_large += 1;
            return;
        }
        self.stats.messages_sent += 1;
        self.mark_dirty(id);
    }

    pub(crate) fn mark_dirty(&mut self, id: ConnId) {
        if let Some(conn) = self.conn_mut(id) {
            if !conn.dirty {
                conn.dirty = true;
                self.effects.dirty.push(id);
            }
        }
    }

    pub(crate) fn send_mesh(&mut self, to: WorkerId, msg: MeshMsg) {
        self.send_mesh_with(to, || msg);
    }

    /// Appends the message `make` builds to the batch for worker `to`, building it
    /// straight in the batch's free slot, where `push` would build it on the stack and
    /// copy its 168 bytes in (the publish hot path calls this directly).
    #[inline(always)]
    pub(crate) fn send_mesh_with(&mut self, to: WorkerId, make: impl FnOnce() -> MeshMsg) {
        debug_assert!(to != self.id && to < self.workers);
        let batch = &mut self.effects.mesh[to];
        batch.reserve(1);
        let len = batch.len();
        // After `reserve(1)` there is a free slot: index it rather than skip the
        // message if there were none.
        batch.spare_capacity_mut()[0].write(make());
        // SAFETY: the slot at `len` is within the capacity and was just initialized.
        unsafe { batch.set_len(len + 1) };
    }

    /// Arms the connection's timer for `at` if that is earlier than its live entry.
    pub(crate) fn schedule(&mut self, id: ConnId, at: Instant) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.timer_at.is_some_and(|t| t <= at) {
            return;
        }
        conn.timer_at = Some(at);
        self.timers.push(Reverse((at, id.slot, id.gen)));
    }

    /// The earliest time `tick` has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let t = self.timers.peek().map(|Reverse((at, _, _))| *at);
        let grace = self.cfg.handover_timeout() * 2;
        let tomb = self.tombstones.front().map(|(at, _)| *at + grace);
        let session = self.session_timers.peek().map(|Reverse((at, _))| *at);
        let pool = self.tx_pool.next_deadline();
        [t, self.next_sys_at, tomb, session, pool]
            .into_iter()
            .flatten()
            .min()
    }

    /// Fires due timers: CONNECT timeouts, keep-alive expiry, handover deadlines and
    /// the `$SYS` interval. Called once per event-loop turn, it also ends the turn for
    /// the write-buffer pool.
    pub fn tick(&mut self, now: Instant) {
        while let Some(&Reverse((at, slot, gen))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let id = ConnId { slot, gen };
            let Some(conn) = self.conn_mut(id) else {
                continue;
            };
            if conn.timer_at != Some(at) {
                continue; // superseded by an earlier entry
            }
            conn.timer_at = None;
            let due = match &conn.phase {
                Phase::AwaitConnect => Some(conn.last_rx + self.cfg.connect_timeout()),
                Phase::AwaitClaim(a) => Some(a.retry_at),
                Phase::AwaitHandover(p) => Some(p.deadline),
                Phase::Active { .. } => conn.keep_alive_limit.map(|k| conn.last_rx + k),
            };
            match due {
                Some(due) if due > now => self.schedule(id, due),
                Some(_) => self.on_timeout(now, id),
                None => {}
            }
        }
        self.expire_tombstones(now);
        self.session_timers_due(now);
        self.revoke_stale_logins(now);
        self.tx_pool.end_turn(now);
        if self.next_sys_at.is_some_and(|t| t <= now) {
            self.next_sys_at = Some(now + Duration::from_secs(self.cfg.sys_interval_secs));
            self.sys_tick(now);
        }
    }

    /// A batch of messages from another worker. The batch is left empty, with its
    /// capacity, so that the runtime can hand it back to its sender for reuse.
    /// Returns how many client PUBLISHes it carried (they have an origin; `$SYS`
    /// messages and wills do not), counted here so the batch is walked once.
    ///
    /// Publishes, nearly all of a busy batch, are read where they lie: moving each
    /// 168-byte message out of the batch cost a `memcpy` per message. Every other
    /// message is taken out (leaving [`MeshMsg::Spent`]) and handled by value.
    pub fn mesh(&mut self, now: Instant, from: WorkerId, batch: &mut Batch) -> u64 {
        let mut publishes = 0;
        for slot in batch.iter_mut() {
            if let MeshMsg::Publish {
                msg,
                origin,
                stamp,
                at,
            } = slot
            {
                publishes += u64::from(origin.is_some());
                self.on_mesh_publish(now, from, msg, *origin, *stamp, *at);
                continue;
            }
            let msg = std::mem::replace(slot, MeshMsg::Spent);
            publishes += u64::from(matches!(
                msg,
                MeshMsg::Forward {
                    origin: Some(_),
                    ..
                }
            ));
            self.on_mesh(now, from, msg);
        }
        batch.clear();
        self.run_ready_deferred(now);
        publishes
    }

    fn run_ready_deferred(&mut self, now: Instant) {
        while let Some(client_id) = self.deferred_ready.pop() {
            self.run_deferred(now, &client_id);
        }
    }

    /// A snapshot of this worker's counters with the gauges filled in.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        let stubbed: usize = self.stubs.iter().map(|(_, st)| st.filters.len()).sum();
        s.subscriptions = (self.index.subscription_count() - stubbed) as u64;
        s.retained = self.retained.len() as u64;
        s.clients_disconnected = self
            .sessions
            .iter()
            .filter(|(_, s)| s.conn.is_none())
            .count() as u64;
        s.queued = self
            .sessions
            .iter()
            .map(|(_, s)| s.queue.len() as u64)
            .sum();
        s
    }

    /// The runtime closed a connection at accept: `max_connections` were open
    /// (`by_rate` false) or its IP exceeded `max_connections_per_ip_per_sec`.
    pub fn count_refused_connection(&mut self, by_rate: bool) {
        let l = &mut self.stats.limits;
        if by_rate {
            l.connections_refused_rate += 1;
        } else {
            l.connections_refused_max += 1;
        }
    }

    /// PUBLISH packets received from this worker's clients since start.
    pub fn publishes_received(&self) -> u64 {
        self.stats.publish_received
    }

    /// Number of sessions held by this worker (online or not).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Client ids of the sessions held here (for diagnostics and tests).
    pub fn session_ids(&self) -> Vec<Arc<str>> {
        self.sessions
            .iter()
            .map(|(_, s)| s.client_id.clone())
            .collect()
    }

    /// Number of connections this shard knows.
    pub fn conn_count(&self) -> usize {
        self.conns.iter().filter(|c| c.is_some()).count()
    }
}

#[cfg(test)]
mod tests;

/// Per-connection memory: these structures exist once per idle connection (see the
/// Memory section of ARCHITECTURE.md), so growing them shows up in `bench conns`.
#[cfg(test)]
mod size_tests {
    use std::mem::size_of;

    #[test]
    fn per_connection_structures_stay_small() {
        assert!(
            size_of::<super::Phase>() <= 16,
            "{}",
            size_of::<super::Phase>()
        );
        assert!(
            size_of::<Option<super::Conn>>() <= 128,
            "{}",
            size_of::<Option<super::Conn>>()
        );
        assert!(
            size_of::<super::Session>() <= 96,
            "{}",
            size_of::<super::Session>()
        );
    }
}
