//! Seeded deterministic simulation of several shards on one thread and a virtual clock.
//!
//! Random MQTT clients (modelled like real clients: outbound QoS 1/2 kept by packet id
//! and resent with DUP on a resumed session, inbound QoS 2 ids held until PUBREL)
//! connect to random workers, subscribe, publish at every QoS, close abruptly or
//! gracefully, DISCONNECT and take their sessions over from other connections, while
//! cross-worker batches are delivered FIFO per (from, to) channel in random
//! interleavings across channels. After each run the invariants are checked:
//!
//! * every QoS 1/2 message acknowledged to its publisher (PUBACK / PUBREC) reaches every
//!   matching *stable* subscriber (persistent session, subscribed before the first
//!   publish, never unsubscribes) at least once (QoS 1) or exactly once (QoS 2) at the
//!   application level, at min(published, granted) QoS;
//! * no subscriber ever sees a QoS 2 message twice at the application level;
//! * per subscriber session (client epoch), per publisher connection, per topic and QoS,
//!   first deliveries arrive in publish order ([MQTT-4.6.0-6]);
//! * nothing is left behind: no connections, only the stable subscribers' sessions and
//!   subscriptions, no queued messages, the registry knows exactly those client ids and
//!   no worker still forwards to a worker that lost interest;
//! * the broker never closes a well-behaved client's connection on its own and counts
//!   no protocol error.
//!
//! A CONNECT for a client id whose takeover is in flight waits a millisecond and
//! retries; the quiesce phase lets such near timers fire.
//!
//! Environment: `SIM_SEED=<n>` replays one seed (with a trace, `SIM_TRACE=0` to mute),
//! `SIM_RUNS=<n>` runs n seeds (default 200), `SIM_STEPS=<n>` steps per run,
//! `SIM_FIRST_SEED=<n>` shifts the seed range, `SIM_CLEAN_PCT=<n>` sets the percentage
//! of non-stable connects asking for a clean session (default 35; 0 isolates failures
//! that need no clean session).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::cell::Cell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};
use ternmq::broker::mesh::{Batch, MeshMsg};
use ternmq::broker::registry::Registry;
use ternmq::broker::shard::Shard;
use ternmq::broker::ConnId;
use ternmq::config::Config;
use ternmq::protocol::{
    decode_one, Packet, PacketId, ProtocolVersion, Publish, QoS, ReasonCode, Subscribe,
    TopicFilter, TopicName, Unsubscribe,
};

const WORKERS: usize = 3;
const STABLE: usize = 3;
const OTHERS: usize = 5;
const TOPICS: &[&str] = &["t/a", "t/b", "t/c/d", "u/1/x"];
const FILTERS: &[&str] = &["t/a", "t/+", "t/#", "#", "+/+", "u/+/x", "t/c/+", "t/b"];
const MAX_INFLIGHT: usize = 3;

// ---------------------------------------------------------------------------------
// PRNG

/// splitmix64: tiny, fast, good enough to pick actions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `pct` percent.
    fn pct(&mut self, pct: usize) -> bool {
        self.below(100) < pct
    }

    fn pick<T: Copy>(&mut self, v: &[T]) -> Option<T> {
        (!v.is_empty()).then(|| v[self.below(v.len())])
    }

    fn qos(&mut self) -> QoS {
        QoS::from_u8(self.below(3) as u8).unwrap()
    }
}

// ---------------------------------------------------------------------------------
// Model

#[derive(Debug, Clone, Copy)]
struct Opts {
    steps: usize,
    /// Stable subscribers may reconnect on any worker (their sessions move between
    /// workers). When false they always reconnect on the worker that holds their
    /// session, so only the other clients move sessions across workers.
    stable_cross_worker: bool,
}

/// One TCP connection between a client and a worker.
struct Link {
    worker: usize,
    id: ConnId,
    client: usize,
    /// Client to broker, written and not yet read by the broker.
    up: VecDeque<Packet>,
    /// Broker to client, received and not yet processed by the client.
    rx: BytesMut,
    /// The broker closed the connection; `rx` holds its last bytes.
    broker_closed: bool,
    /// The client closed its end. With `fin` the broker still reads what is in `up`,
    /// then sees end of file; without it the connection was reset.
    client_closed: bool,
    fin: bool,
}

#[derive(Debug, Clone)]
struct Out {
    pid: PacketId,
    msg: u64,
    qos: QoS,
    topic: usize,
    /// PUBREC received, PUBREL sent.
    released: bool,
}

struct Client {
    name: String,
    stable: bool,
    /// The current connection; older ones the client walked away from are "zombies".
    link: Option<usize>,
    /// CONNACK received on `link`.
    connected: bool,
    /// `link` was opened with clean session.
    clean: bool,
    /// Incremented whenever the client discards its session state.
    epoch: u64,
    /// A persistent CONNACK was received and no clean CONNECT sent since: the broker
    /// must still hold our session.
    session_known: bool,
    /// The broker may hold a session of ours (a persistent CONNECT was sent and no clean
    /// CONNACK received since).
    session_maybe: bool,
    /// Outbound QoS 1/2 in send order.
    out: Vec<Out>,
    /// SUBSCRIBE / UNSUBSCRIBE ids awaiting their ack.
    ctl: HashMap<u16, Vec<(usize, Option<QoS>)>>,
    next_pid: u16,
    /// Inbound QoS 2 ids received and not yet released.
    held: HashSet<u16>,
    /// Stable subscribers: their filters (index, granted QoS), fixed after the start.
    subs: Vec<(usize, QoS)>,
    subacked: bool,
    /// Stable subscribers in same-worker mode: the worker holding the session.
    home: usize,
}

struct MsgRec {
    publisher: usize,
    topic: usize,
    qos: QoS,
    /// PUBACK (QoS 1) / PUBREC (QoS 2) reached the publisher.
    acked: bool,
}

struct Sim {
    seed: u64,
    rng: Rng,
    opts: Opts,
    now: Instant,
    registry: Arc<Registry>,
    shards: Vec<Shard>,
    /// FIFO of batches per (from, to), index `from * WORKERS + to`.
    chan: Vec<VecDeque<Batch>>,
    links: Vec<Link>,
    by_conn: HashMap<(usize, ConnId), usize>,
    free_slots: Vec<Vec<ConnId>>,
    next_slot: Vec<u32>,
    clients: Vec<Client>,
    msgs: Vec<MsgRec>,
    /// Application-level deliveries per (client, message).
    got: HashMap<(usize, u64), u32>,
    /// Deliveries per (client, client epoch, message), for the exactly-once check.
    got_in_epoch: HashMap<(usize, u64, u64), u32>,
    /// Last first-delivered message per (subscriber, subscriber epoch, publisher link,
    /// topic, 3 * published QoS + delivered QoS).
    order: HashMap<(usize, u64, u32, usize, u8), u64>,
    trace: Option<Vec<String>>,
    cross_worker_connects: usize,
    takeovers: usize,
}

macro_rules! trace {
    ($sim:expr, $($arg:tt)*) => {
        if let Some(t) = $sim.trace.as_mut() {
            t.push(format!($($arg)*));
        }
    };
}

macro_rules! check {
    ($sim:expr, $cond:expr, $($arg:tt)*) => {
        if !$cond {
            $sim.fail(format!($($arg)*));
        }
    };
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

fn payload(msg: u64, link: u32) -> Bytes {
    let mut b = BytesMut::with_capacity(12);
    b.put_u64(msg);
    b.put_u32(link);
    b.freeze()
}

fn parse_payload(mut b: &[u8]) -> Option<(u64, u32)> {
    (b.len() == 12).then(|| (b.get_u64(), b.get_u32()))
}

fn matches(filter: usize, topic: usize) -> bool {
    TopicFilter::new(FILTERS[filter])
        .unwrap()
        .matches(&TopicName::new(TOPICS[topic]).unwrap())
}

/// Long enough that no handover times out during a run.
const HANDOVER_TIMEOUT_MS: u64 = 3_600_000;

fn mesh_summary(b: &Batch) -> String {
    let mut s = String::new();
    for m in b {
        match m {
            MeshMsg::Publish { msg, .. } => {
                let id = parse_payload(&msg.payload).map_or(u64::MAX, |p| p.0);
                let _ = write!(s, "Publish(m{id} {}) ", msg.topic.as_str());
            }
            MeshMsg::Interest { filter, add } => {
                let _ = write!(s, "Interest({} {}) ", filter.as_str(), add);
            }
            MeshMsg::SharedMember { group, add } => {
                let _ = write!(s, "SharedMember({} {} {add}) ", group.0, group.1);
            }
            MeshMsg::Shared { group, msg, .. } => {
                let id = parse_payload(&msg.payload).map_or(u64::MAX, |p| p.0);
                let _ = write!(s, "Shared({} m{id}) ", group.0);
            }
            MeshMsg::Takeover { client_id, to, .. } => {
                let _ = write!(s, "Takeover({client_id} -> {to:?}) ");
            }
            MeshMsg::Handover {
                client_id, session, ..
            } => {
                let _ = write!(
                    s,
                    "Handover({client_id}, session={}) ",
                    session.as_ref().map_or("none".to_string(), |s| format!(
                        "inflight={} queued={}",
                        s.inflight.len(),
                        s.queue.len()
                    ))
                );
            }
            MeshMsg::Forward { client_id, msg, .. } => {
                let id = parse_payload(&msg.payload).map_or(u64::MAX, |p| p.0);
                let _ = write!(s, "Forward({client_id} m{id}) ");
            }
            MeshMsg::Flushed { client_id, move_id } => {
                let _ = write!(s, "Flushed({client_id} #{move_id:x}) ");
            }
            MeshMsg::Spent => s.push_str("Spent "),
            MeshMsg::Done {
                client_id,
                origin,
                move_id,
            } => {
                let _ = write!(s, "Done({client_id} w{origin} #{move_id:x}) ");
            }
            MeshMsg::Ping {
                client_id,
                stub_at,
                move_id,
            } => {
                let _ = write!(s, "Ping({client_id} stub@w{stub_at} #{move_id:x}) ");
            }
            MeshMsg::Pong { client_id, move_id } => {
                let _ = write!(s, "Pong({client_id} #{move_id:x}) ");
            }

            MeshMsg::Pause { .. } => s.push_str("Pause "),
            MeshMsg::Resume { .. } => s.push_str("Resume "),
            MeshMsg::Stats(_) => s.push_str("Stats "),
        }
    }
    s
}

/// The panic of one run, caught so that the seed can be reported.
struct Failed(String);

impl Sim {
    fn new(seed: u64, opts: Opts, traced: bool) -> Sim {
        let cfg = Config {
            sys_interval_secs: 0,
            max_inflight: MAX_INFLIGHT,
            max_queued_messages: 1_000_000,
            connect_timeout_secs: 3600,
            handover_timeout_ms: HANDOVER_TIMEOUT_MS,
            ..Config::default()
        };
        let cfg = Arc::new(cfg);
        let registry = Arc::new(Registry::new());
        let now = Instant::now();
        let mut rng = Rng(seed);
        let mut clients = Vec::new();
        for i in 0..STABLE + OTHERS {
            let stable = i < STABLE;
            let mut subs = Vec::new();
            if stable {
                let n = 1 + rng.below(2);
                while subs.len() < n {
                    let f = rng.below(FILTERS.len());
                    if !subs.iter().any(|&(g, _)| g == f) {
                        subs.push((f, rng.qos()));
                    }
                }
            }
            clients.push(Client {
                name: if stable {
                    format!("s{i}")
                } else {
                    format!("c{i}")
                },
                stable,
                link: None,
                connected: false,
                clean: true,
                epoch: 0,
                session_known: false,
                session_maybe: false,
                out: Vec::new(),
                ctl: HashMap::new(),
                next_pid: 1,
                held: HashSet::new(),
                subs,
                subacked: false,
                home: rng.below(WORKERS),
            });
        }
        Sim {
            seed,
            rng,
            opts,
            now,
            shards: (0..WORKERS)
                .map(|w| Shard::new(w, WORKERS, cfg.clone(), registry.clone(), now))
                .collect(),
            registry,
            chan: (0..WORKERS * WORKERS).map(|_| VecDeque::new()).collect(),
            links: Vec::new(),
            by_conn: HashMap::new(),
            free_slots: vec![Vec::new(); WORKERS],
            next_slot: vec![0; WORKERS],
            clients,
            msgs: Vec::new(),
            got: HashMap::new(),
            got_in_epoch: HashMap::new(),
            order: HashMap::new(),
            trace: traced.then(Vec::new),
            cross_worker_connects: 0,
            takeovers: 0,
        }
    }

    fn fail(&mut self, msg: String) -> ! {
        trace!(self, "FAIL: {msg}");
        std::panic::panic_any(Failed(format!("seed {}: {msg}", self.seed)));
    }

    // ---- broker side ------------------------------------------------------------

    /// Carries out the effects of the last call into shard `w`.
    fn collect(&mut self, w: usize) {
        let fx = self.shards[w].effects();
        fx.dirty.clear();
        fx.pause.clear();
        fx.resume.clear();
        let closes = std::mem::take(&mut fx.close);
        let batches: Vec<Batch> = fx.mesh.iter_mut().map(std::mem::take).collect();
        for (to, batch) in batches.into_iter().enumerate() {
            if !batch.is_empty() {
                self.check_no_self_send(w, to);
                self.chan[w * WORKERS + to].push_back(batch);
            }
        }
        for (id, last) in closes {
            let Some(&l) = self.by_conn.get(&(w, id)) else {
                self.fail(format!("worker {w} closed unknown connection {id:?}"));
            };
            let link = &mut self.links[l];
            if link.broker_closed {
                self.fail(format!("worker {w} closed {id:?} twice"));
            }
            link.broker_closed = true;
            link.rx.extend_from_slice(&last);
            link.up.clear();
            self.by_conn.remove(&(w, id));
            // The runtime frees the slot; the next connection there gets a new generation.
            self.free_slots[w].push(ConnId {
                slot: id.slot,
                gen: id.gen + 1,
            });
            let c = link.client;
            let current = self.clients[c].link == Some(l);
            let by_client = link.client_closed;
            trace!(
                self,
                "w{w} closes L{l} ({}{})",
                self.clients[c].name,
                if current { ", current" } else { "" }
            );
            // The broker may close a connection the client walked away from (takeover)
            // or one the client closed itself, never a well-behaved current one.
            if current && !by_client {
                let name = self.clients[c].name.clone();
                self.fail(format!(
                    "worker {w} closed the current connection L{l} of {name} on its own"
                ));
            }
        }
    }

    fn check_no_self_send(&mut self, from: usize, to: usize) {
        if from == to {
            self.fail(format!("worker {from} sent a batch to itself"));
        }
    }

    fn deliver_mesh(&mut self, ch: usize) {
        let Some(mut batch) = self.chan[ch].pop_front() else {
            return;
        };
        let (from, to) = (ch / WORKERS, ch % WORKERS);
        trace!(self, "mesh w{from}->w{to}: {}", mesh_summary(&batch));
        self.shards[to].mesh(self.now, from, &mut batch);
        self.collect(to);
    }

    /// The broker reads one packet (or the end of file) from link `l`.
    fn broker_read(&mut self, l: usize) {
        let link = &mut self.links[l];
        if link.broker_closed {
            link.up.clear();
            return;
        }
        let (w, id) = (link.worker, link.id);
        match link.up.pop_front() {
            Some(p) => {
                trace!(self, "w{w} reads L{l}: {}", packet_summary(&p));
                self.shards[w].packet(self.now, id, p);
            }
            None if link.client_closed && link.fin => {
                trace!(self, "w{w} reads EOF on L{l}");
                self.shards[w].closed(self.now, id);
            }
            None => return,
        }
        self.collect(w);
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        for w in 0..WORKERS {
            self.shards[w].tick(self.now);
            self.collect(w);
        }
    }

    fn alloc_conn(&mut self, w: usize) -> ConnId {
        if let Some(id) = self.free_slots[w].pop() {
            return id;
        }
        self.next_slot[w] += 1;
        ConnId {
            slot: self.next_slot[w],
            gen: 1,
        }
    }

    // ---- client side ------------------------------------------------------------

    fn send(&mut self, l: usize, p: Packet) {
        self.links[l].up.push_back(p);
    }

    fn alloc_pid(&mut self, c: usize) -> PacketId {
        let cl = &mut self.clients[c];
        loop {
            let n = cl.next_pid;
            cl.next_pid = if n == u16::MAX { 1 } else { n + 1 };
            if n != 0 && !cl.out.iter().any(|o| o.pid.get() == n) && !cl.ctl.contains_key(&n) {
                return pid(n);
            }
        }
    }

    fn connect(&mut self, c: usize, w: usize, clean: bool) {
        if let Some(old) = self.clients[c].link {
            // A connection whose CONNECT the broker has not read yet is abandoned (its
            // socket closed): otherwise that CONNECT, read later, would legitimately
            // take the session back and "current" would be ambiguous. A connection
            // whose CONNECT was read stays open, and the new one takes it over.
            let unread = matches!(self.links[old].up.front(), Some(Packet::Connect(_)));
            if unread {
                self.client_close(old, false);
            } else if !self.links[old].client_closed {
                self.takeovers += 1;
            }
        }
        let owner = self.registry.owner(&self.clients[c].name);
        if owner.is_some_and(|o| o != w) {
            self.cross_worker_connects += 1;
        }
        let id = self.alloc_conn(w);
        let l = self.links.len();
        self.links.push(Link {
            worker: w,
            id,
            client: c,
            up: VecDeque::new(),
            rx: BytesMut::new(),
            broker_closed: false,
            client_closed: false,
            fin: false,
        });
        self.by_conn.insert((w, id), l);
        let cl = &mut self.clients[c];
        trace!(
            self,
            "{} connects L{l} on w{w} clean={clean} (registry owner {owner:?}, previous link {:?})",
            cl.name,
            cl.link
        );
        let cl = &mut self.clients[c];
        let previous_was_clean = cl.clean;
        cl.link = Some(l);
        cl.connected = false;
        cl.clean = clean;
        if clean || previous_was_clean {
            // [MQTT-3.1.2-6]: the client discards its session when it asks for a clean
            // one, and a clean session lasts as long as its network connection.
            // Deliveries from here on are a new exactly-once context (the broker may
            // never read this CONNECT and resume the old session; the client has
            // forgotten what it received in it).
            cl.epoch += 1;
            cl.session_known = false;
            cl.out.clear();
            cl.ctl.clear();
            cl.held.clear();
        }
        if !clean {
            cl.session_maybe = true;
        }
        let connect = ternmq::protocol::Connect {
            version: ProtocolVersion::V3_1_1,
            clean_session: clean,
            keep_alive_secs: 0,
            client_id: cl.name.as_str().into(),
            will: None,
            username: None,
            password: None,
            props: Default::default(),
        };
        self.shards[w].open(self.now, id);
        self.collect(w);
        self.send(l, Packet::Connect(Box::new(connect)));
    }

    /// The client closes link `l`: `fin` lets the broker read what was sent first.
    fn client_close(&mut self, l: usize, fin: bool) {
        let link = &mut self.links[l];
        if link.client_closed {
            return;
        }
        link.client_closed = true;
        link.fin = fin;
        let (w, id, c) = (link.worker, link.id, link.client);
        if self.clients[c].link == Some(l) {
            self.clients[c].link = None;
            self.clients[c].connected = false;
        }
        trace!(
            self,
            "{} closes L{l} ({})",
            self.clients[c].name,
            if fin { "fin" } else { "reset" }
        );
        if !fin && !self.links[l].broker_closed {
            self.links[l].up.clear();
            self.shards[w].closed(self.now, id);
            self.collect(w);
        }
    }

    fn disconnect(&mut self, c: usize) {
        let Some(l) = self.clients[c].link else {
            return;
        };
        if !self.clients[c].connected {
            // No DISCONNECT before CONNACK: a well-behaved client just closes.
            return self.client_close(l, false);
        }
        trace!(self, "{} sends DISCONNECT on L{l}", self.clients[c].name);
        self.send(l, Packet::disconnect());
        self.client_close(l, true);
    }

    fn publish(&mut self, c: usize, topic: usize, qos: QoS) {
        let l = self.clients[c].link.expect("connected");
        let msg = self.msgs.len() as u64;
        self.msgs.push(MsgRec {
            publisher: c,
            topic,
            qos,
            acked: false,
        });
        let packet_id = if qos == QoS::AtMostOnce {
            None
        } else {
            let p = self.alloc_pid(c);
            self.clients[c].out.push(Out {
                pid: p,
                msg,
                qos,
                topic,
                released: false,
            });
            Some(p)
        };
        trace!(
            self,
            "{} publishes m{msg} {} qos{} pid {:?} on L{l}",
            self.clients[c].name,
            TOPICS[topic],
            qos.as_u8(),
            packet_id.map(|p| p.get())
        );
        self.send(
            l,
            Packet::Publish(Publish {
                dup: false,
                qos,
                retain: false,
                topic: TopicName::new(TOPICS[topic]).unwrap(),
                packet_id,
                payload: payload(msg, l as u32),
                props: Default::default(),
            }),
        );
    }

    fn subscribe(&mut self, c: usize, filters: Vec<(usize, QoS)>) {
        let l = self.clients[c].link.expect("connected");
        let p = self.alloc_pid(c);
        self.clients[c].ctl.insert(
            p.get(),
            filters.iter().map(|&(f, q)| (f, Some(q))).collect(),
        );
        trace!(
            self,
            "{} subscribes {filters:?} on L{l}",
            self.clients[c].name
        );
        self.send(
            l,
            Packet::Subscribe(Subscribe {
                packet_id: p,
                filters: filters
                    .iter()
                    .map(|&(f, q)| (TopicFilter::new(FILTERS[f]).unwrap(), q.into()))
                    .collect(),
                props: Default::default(),
            }),
        );
    }

    fn unsubscribe(&mut self, c: usize, filters: Vec<usize>) {
        let l = self.clients[c].link.expect("connected");
        let p = self.alloc_pid(c);
        self.clients[c]
            .ctl
            .insert(p.get(), filters.iter().map(|&f| (f, None)).collect());
        trace!(
            self,
            "{} unsubscribes {filters:?} on L{l}",
            self.clients[c].name
        );
        self.send(
            l,
            Packet::Unsubscribe(Unsubscribe {
                packet_id: p,
                filters: filters
                    .iter()
                    .map(|&f| TopicFilter::new(FILTERS[f]).unwrap())
                    .collect(),
                props: Default::default(),
            }),
        );
    }

    /// Moves bytes the broker wrote to `l` into the client's receive buffer.
    fn pull(&mut self, l: usize) {
        let link = &mut self.links[l];
        if link.broker_closed {
            return;
        }
        if let Some(tx) = self.shards[link.worker].tx_mut(link.id) {
            if !tx.is_empty() {
                link.rx.extend_from_slice(tx);
                tx.clear();
            }
        }
    }

    fn has_pending_bytes(&mut self, l: usize) -> bool {
        self.pull(l);
        let link = &self.links[l];
        !link.rx.is_empty() || (link.broker_closed && self.clients[link.client].link == Some(l))
    }

    /// The client processes up to `max` packets received on link `l`.
    fn client_read(&mut self, l: usize, max: usize) {
        self.pull(l);
        let c = self.links[l].client;
        let current = self.clients[c].link == Some(l) && !self.links[l].client_closed;
        if !current {
            // A connection the client walked away from: nobody reads it any more.
            self.links[l].rx.clear();
            return;
        }
        for _ in 0..max {
            let p = match decode_one(&mut self.links[l].rx, usize::MAX) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => self.fail(format!("L{l}: undecodable bytes from the broker: {e}")),
            };
            trace!(
                self,
                "{} receives on L{l}: {}",
                self.clients[c].name,
                packet_summary(&p)
            );
            self.on_packet(c, l, p);
        }
        let link = &self.links[l];
        if link.rx.is_empty() && link.broker_closed && self.clients[c].link == Some(l) {
            // End of file on the current connection (only legitimate after our own
            // DISCONNECT, which `collect` already checked).
            trace!(self, "{} sees EOF on L{l}", self.clients[c].name);
            self.clients[c].link = None;
            self.clients[c].connected = false;
        }
    }

    fn on_packet(&mut self, c: usize, l: usize, p: Packet) {
        let name = self.clients[c].name.clone();
        if !self.clients[c].connected && !matches!(p, Packet::ConnAck(_)) {
            self.fail(format!("{name}: {} before CONNACK on L{l}", p.name()));
        }
        match p {
            Packet::ConnAck(a) => {
                let cl = &self.clients[c];
                if cl.connected {
                    self.fail(format!("{name}: second CONNACK on L{l}"));
                }
                check!(
                    self,
                    a.code == ReasonCode::SUCCESS,
                    "{name}: CONNACK refused: {a:?}"
                );
                let cl = &mut self.clients[c];
                cl.connected = true;
                if cl.clean {
                    let present = a.session_present;
                    cl.session_maybe = false;
                    check!(
                        self,
                        !present,
                        "{name}: session present on a clean session [MQTT-3.2.2-1]"
                    );
                    return;
                }
                let (known, maybe) = (cl.session_known, cl.session_maybe);
                if known && !a.session_present {
                    self.fail(format!(
                        "{name}: persistent session lost: CONNACK session_present=0 on L{l}"
                    ));
                }
                let cl = &mut self.clients[c];
                let _ = maybe;
                if !a.session_present {
                    // [MQTT-3.2.2-2]/3.1.2.4: the client discards its session state.
                    cl.out.clear();
                    cl.held.clear();
                }
                cl.session_known = true;
                // [MQTT-4.4.0-1]: resend unacknowledged PUBLISH (DUP) and PUBREL in order.
                let resend: Vec<Out> = cl.out.clone();
                for o in resend {
                    let p = if o.released {
                        Packet::pubrel(o.pid)
                    } else {
                        Packet::Publish(Publish {
                            dup: true,
                            qos: o.qos,
                            retain: false,
                            topic: TopicName::new(TOPICS[o.topic]).unwrap(),
                            packet_id: Some(o.pid),
                            payload: payload(o.msg, l as u32),
                            props: Default::default(),
                        })
                    };
                    self.send(l, p);
                }
                // A stable subscriber whose first SUBSCRIBE was lost subscribes again.
                let cl = &self.clients[c];
                if cl.stable && !cl.subacked && cl.ctl.is_empty() {
                    let subs = cl.subs.clone();
                    self.subscribe(c, subs);
                }
            }
            Packet::Publish(p) => self.on_publish(c, l, p),
            Packet::PubAck(ternmq::protocol::Ack { packet_id: id, .. }) => {
                let cl = &mut self.clients[c];
                match cl.out.iter().position(|o| o.pid == id) {
                    Some(i) if cl.out[i].qos == QoS::AtLeastOnce => {
                        let o = cl.out.remove(i);
                        self.msgs[o.msg as usize].acked = true;
                    }
                    _ => self.fail(format!("{name}: PUBACK for unknown id {id}")),
                }
            }
            Packet::PubRec(ternmq::protocol::Ack { packet_id: id, .. }) => {
                let cl = &mut self.clients[c];
                match cl.out.iter_mut().find(|o| o.pid == id) {
                    Some(o) if o.qos == QoS::ExactlyOnce => {
                        o.released = true;
                        let m = o.msg as usize;
                        self.msgs[m].acked = true;
                        self.send(l, Packet::pubrel(id));
                    }
                    _ => self.fail(format!("{name}: PUBREC for unknown id {id}")),
                }
            }
            Packet::PubComp(ternmq::protocol::Ack { packet_id: id, .. }) => {
                let cl = &mut self.clients[c];
                match cl.out.iter().position(|o| o.pid == id) {
                    Some(i) if cl.out[i].released => {
                        cl.out.remove(i);
                    }
                    _ => self.fail(format!("{name}: PUBCOMP for unknown id {id}")),
                }
            }
            Packet::PubRel(ternmq::protocol::Ack { packet_id: id, .. }) => {
                // Method B: the message was delivered on PUBLISH; forget the id now.
                self.clients[c].held.remove(&id.get());
                self.send(l, Packet::pubcomp(id));
            }
            Packet::SubAck(s) => {
                let Some(req) = self.clients[c].ctl.remove(&s.packet_id.get()) else {
                    self.fail(format!("{name}: SUBACK for unknown id {}", s.packet_id));
                };
                let want: Vec<ReasonCode> = req
                    .iter()
                    .map(|&(_, q)| ReasonCode::granted(q.unwrap()))
                    .collect();
                check!(
                    self,
                    s.codes == want,
                    "{name}: SUBACK {:?}, expected {want:?}",
                    s.codes
                );
                if self.clients[c].stable {
                    self.clients[c].subacked = true;
                }
            }
            Packet::UnsubAck(ternmq::protocol::UnsubAck { packet_id: id, .. }) => {
                if self.clients[c].ctl.remove(&id.get()).is_none() {
                    self.fail(format!("{name}: UNSUBACK for unknown id {id}"));
                }
            }
            p => self.fail(format!("{name}: unexpected {} from the broker", p.name())),
        }
    }

    fn on_publish(&mut self, c: usize, l: usize, p: Publish) {
        let name = self.clients[c].name.clone();
        let Some((msg, pub_link)) = parse_payload(&p.payload) else {
            self.fail(format!("{name}: foreign payload {:?}", p.payload));
        };
        let Some(rec) = self.msgs.get(msg as usize) else {
            self.fail(format!("{name}: unknown message m{msg}"));
        };
        let (topic, pub_qos, publisher) = (rec.topic, rec.qos, rec.publisher);
        check!(
            self,
            p.topic.as_str() == TOPICS[topic],
            "{name}: m{msg} arrived on {} instead of {}",
            p.topic.as_str(),
            TOPICS[topic]
        );
        check!(self, !p.retain, "{name}: m{msg} arrived with RETAIN");
        check!(
            self,
            p.qos <= pub_qos,
            "{name}: m{msg} delivered at qos{} above its published qos{}",
            p.qos.as_u8(),
            pub_qos.as_u8()
        );
        if self.clients[c].stable && self.clients[c].subacked {
            let subs = self.clients[c].subs.clone();
            let granted = subs
                .iter()
                .filter(|&&(f, _)| matches(f, topic))
                .map(|&(_, q)| q)
                .max();
            match granted {
                None => self.fail(format!("{name}: m{msg} on {} matches none of its filters", TOPICS[topic])),
                Some(g) => check!(
                    self,
                    p.qos == pub_qos.min(g),
                    "{name}: m{msg} delivered at qos{}, expected min(published {}, granted {}) [MQTT-3.8.4-6]",
                    p.qos.as_u8(),
                    pub_qos.as_u8(),
                    g.as_u8()
                ),
            }
        }
        // What the application sees.
        let fresh = match (p.qos, p.packet_id) {
            (QoS::AtMostOnce, _) => true,
            (QoS::AtLeastOnce, Some(id)) => {
                self.send(l, Packet::puback(id));
                true
            }
            (QoS::ExactlyOnce, Some(id)) => {
                let first = self.clients[c].held.insert(id.get());
                if !first && !p.dup {
                    self.fail(format!(
                        "{name}: new QoS 2 PUBLISH (DUP=0) m{msg} reuses id {id} still awaiting PUBREL"
                    ));
                }
                self.send(l, Packet::pubrec(id));
                first
            }
            _ => self.fail(format!("{name}: QoS>0 PUBLISH without id")),
        };
        if !fresh {
            return;
        }
        let n = self.got.entry((c, msg)).or_insert(0);
        *n += 1;
        let n = *n;
        let epoch = self.clients[c].epoch;
        let in_epoch = self.got_in_epoch.entry((c, epoch, msg)).or_insert(0);
        *in_epoch += 1;
        let in_epoch = *in_epoch;
        if p.qos == QoS::ExactlyOnce && in_epoch > 1 {
            self.fail(format!(
                "{name}: QoS 2 message m{msg} delivered {n} times to the application"
            ));
        }
        if in_epoch == 1 {
            // [MQTT-4.6.0-6]: per topic and QoS, in the order received from one client
            // (here: one publisher connection). Keyed by published and delivered QoS: a
            // subscriber that changes its granted QoS may see a QoS 0 delivery overtake
            // a queued QoS 1 one, which the rule ("same Topic and QoS") allows. And by
            // the subscriber's epoch: a new session (clean start) is a new ordering
            // context, and a message still on its way between workers may reach its
            // new subscription after a later one reached the discarded session.
            let key = (
                c,
                epoch,
                pub_link,
                topic,
                pub_qos.as_u8() * 3 + p.qos.as_u8(),
            );
            if let Some(&prev) = self.order.get(&key) {
                check!(
                    self,
                    prev < msg,
                    "{name}: m{msg} after m{prev}: out of publish order (publisher {}, link L{pub_link}, {}, qos{}) [MQTT-4.6.0-6]",
                    self.clients[publisher].name,
                    TOPICS[topic],
                    pub_qos.as_u8()
                );
            }
            self.order.insert(key, msg);
        }
    }

    // ---- the run ----------------------------------------------------------------

    fn pick_worker(&mut self, c: usize) -> usize {
        let cl = &self.clients[c];
        if cl.stable && !self.opts.stable_cross_worker {
            cl.home
        } else {
            self.rng.below(WORKERS)
        }
    }

    fn random_client_action(&mut self, c: usize) {
        let (link, connected, stable) = {
            let cl = &self.clients[c];
            (cl.link, cl.connected, cl.stable)
        };
        // Now and then the client closes a connection it walked away from.
        if self.rng.pct(10) {
            let zombies: Vec<usize> = (0..self.links.len())
                .filter(|&l| {
                    let k = &self.links[l];
                    k.client == c && !k.client_closed && !k.broker_closed && link != Some(l)
                })
                .collect();
            if let Some(z) = self.rng.pick(&zombies) {
                let fin = self.rng.pct(50);
                self.client_close(z, fin);
                return;
            }
        }
        let Some(l) = link else {
            let w = self.pick_worker(c);
            let clean = !stable && self.rng.pct(clean_pct());
            self.connect(c, w, clean);
            return;
        };
        let r = self.rng.below(100);
        if !connected {
            // Waiting for CONNACK: wait, give up, or try again elsewhere.
            match r {
                0..=3 => self.client_close(l, false),
                4..=6 => {
                    let w = self.pick_worker(c);
                    let clean = !stable && self.rng.pct(clean_pct());
                    self.connect(c, w, clean);
                }
                _ => {}
            }
            return;
        }
        match r {
            0..=54 => {
                let t = self.rng.below(TOPICS.len());
                let q = self.rng.qos();
                self.publish(c, t, q);
            }
            55..=66 if !stable => {
                let f = self.rng.below(FILTERS.len());
                let q = self.rng.qos();
                self.subscribe(c, vec![(f, q)]);
            }
            67..=72 if !stable => {
                let f = self.rng.below(FILTERS.len());
                self.unsubscribe(c, vec![f]);
            }
            73..=78 => self.client_close(l, false),
            79..=82 => self.client_close(l, true),
            83..=88 => self.disconnect(c),
            89..=95 => {
                // Takeover: connect again while this connection is still up.
                let w = self.pick_worker(c);
                let clean = !stable && self.rng.pct(clean_pct());
                self.connect(c, w, clean);
            }
            _ => {}
        }
    }

    fn step(&mut self) {
        match self.rng.below(100) {
            0..=24 => {
                let ready: Vec<usize> = (0..self.chan.len())
                    .filter(|&i| !self.chan[i].is_empty())
                    .collect();
                if let Some(ch) = self.rng.pick(&ready) {
                    self.deliver_mesh(ch);
                }
            }
            25..=49 => {
                let ready: Vec<usize> = (0..self.links.len())
                    .filter(|&l| {
                        let k = &self.links[l];
                        !k.broker_closed && (!k.up.is_empty() || (k.client_closed && k.fin))
                    })
                    .collect();
                if let Some(l) = self.rng.pick(&ready) {
                    self.broker_read(l);
                }
            }
            50..=69 => {
                let c = self.rng.below(self.clients.len());
                if let Some(l) = self.clients[c].link {
                    let n = 1 + self.rng.below(4);
                    self.client_read(l, n);
                }
            }
            70..=96 => {
                let c = self.rng.below(self.clients.len());
                self.random_client_action(c);
            }
            _ => {
                let d = Duration::from_millis(1 + self.rng.below(200) as u64);
                self.advance(d);
            }
        }
    }

    /// Runs every pending flow to completion: mesh batches, packets both ways. With
    /// `reconnect`, clients that should be online (stable subscribers, persistent
    /// clients) connect again.
    fn quiesce(&mut self, reconnect: bool) {
        for round in 0.. {
            if round > 10_000 {
                self.fail("the system does not quiesce".to_string());
            }
            let mut moved = false;
            if reconnect {
                for c in 0..self.clients.len() {
                    let cl = &self.clients[c];
                    if cl.link.is_none() && (cl.stable || cl.session_maybe) {
                        let w = self.pick_worker(c);
                        self.connect(c, w, false);
                        moved = true;
                    }
                }
            }
            for ch in 0..self.chan.len() {
                while !self.chan[ch].is_empty() {
                    self.deliver_mesh(ch);
                    moved = true;
                }
            }
            for l in 0..self.links.len() {
                let k = &self.links[l];
                if !k.broker_closed && (!k.up.is_empty() || (k.client_closed && k.fin)) {
                    while !self.links[l].broker_closed
                        && (!self.links[l].up.is_empty()
                            || (self.links[l].client_closed && self.links[l].fin))
                    {
                        self.broker_read(l);
                    }
                    moved = true;
                }
            }
            for l in 0..self.links.len() {
                if self.has_pending_bytes(l) {
                    self.client_read(l, usize::MAX);
                    moved = true;
                }
            }
            if !moved {
                // A CONNECT waiting for a busy client id is retried a millisecond
                // later: let such near timers fire.
                let soon = self
                    .shards
                    .iter()
                    .filter_map(|s| s.next_deadline())
                    .min()
                    .filter(|&t| t <= self.now + Duration::from_millis(5));
                match soon {
                    Some(t) => {
                        let d = t.saturating_duration_since(self.now);
                        self.advance(d);
                    }
                    None => return,
                }
            }
        }
    }

    fn run(&mut self) {
        // Stable subscribers connect and subscribe first, and everything settles.
        for c in 0..STABLE {
            let w = self.clients[c].home;
            self.connect(c, w, false);
        }
        // (Each subscribes on its first CONNACK.)
        self.quiesce(false);
        for c in 0..STABLE {
            check!(
                self,
                self.clients[c].subacked,
                "{} got no SUBACK",
                self.clients[c].name
            );
        }
        trace!(self, "--- stable subscribers ready; random phase ---");
        for _ in 0..self.opts.steps {
            self.step();
            if !self.opts.stable_cross_worker {
                // Track where each stable session lives, for same-worker reconnects.
                for c in 0..STABLE {
                    if let Some(w) = self.registry.owner(&self.clients[c].name) {
                        self.clients[c].home = w;
                    }
                }
            }
        }
        trace!(self, "--- quiesce ---");
        // Clients close the connections they walked away from, then every client that
        // has (or may have) a session comes back and all flows complete.
        for l in 0..self.links.len() {
            let c = self.links[l].client;
            if self.clients[c].link != Some(l) && !self.links[l].client_closed {
                self.client_close(l, false);
            }
        }
        self.quiesce(true);
        // Sessions that moved recently settle when their old home's forwarding stub
        // expires (the grace period, twice the handover timeout): copies that reached
        // them only directly are delivered then.
        self.advance(Duration::from_millis(2 * HANDOVER_TIMEOUT_MS + 1000));
        self.quiesce(true);
        self.advance(Duration::from_millis(2 * HANDOVER_TIMEOUT_MS + 1000));
        self.quiesce(true);
        for c in 0..self.clients.len() {
            let cl = &self.clients[c];
            if cl.link.is_some() && !cl.connected {
                let name = cl.name.clone();
                self.fail(format!(
                    "{name}: no CONNACK once everything settled (its session handover never completes)"
                ));
            }
        }
        self.check_deliveries();
        self.teardown();
    }

    fn check_deliveries(&mut self) {
        for m in 0..self.msgs.len() {
            let rec = &self.msgs[m];
            if !rec.acked || rec.qos == QoS::AtMostOnce {
                continue;
            }
            let (topic, qos, publisher) = (rec.topic, rec.qos, rec.publisher);
            for s in 0..STABLE {
                let granted = self.clients[s]
                    .subs
                    .iter()
                    .filter(|&&(f, _)| matches(f, topic))
                    .map(|&(_, q)| q)
                    .max();
                let Some(g) = granted else { continue };
                let eff = qos.min(g);
                let n = self.got.get(&(s, m as u64)).copied().unwrap_or(0);
                let ok = match eff {
                    QoS::AtMostOnce => true,
                    QoS::AtLeastOnce => n >= 1,
                    QoS::ExactlyOnce => n == 1,
                };
                check!(
                    self,
                    ok,
                    "acknowledged m{m} ({} qos{} from {}) reached stable subscriber {} {n} times at qos{} (cross-worker connects in run: {}, takeovers: {})",
                    TOPICS[topic],
                    qos.as_u8(),
                    self.clients[publisher].name,
                    self.clients[s].name,
                    eff.as_u8(),
                    self.cross_worker_connects,
                    self.takeovers
                );
            }
        }
    }

    /// Everyone leaves; non-stable persistent sessions are discarded with a clean
    /// connect; then nothing but the stable subscribers' sessions may remain.
    fn teardown(&mut self) {
        for c in 0..self.clients.len() {
            self.disconnect(c);
        }
        self.quiesce(false);
        for c in STABLE..self.clients.len() {
            if self.clients[c].session_maybe {
                let w = self.rng.below(WORKERS);
                self.connect(c, w, true);
                self.quiesce(false);
                self.disconnect(c);
                self.quiesce(false);
            }
        }
        // Past the forwarding stubs' grace period (twice the handover timeout): every
        // stub left by a session move is gone and its interest withdrawn.
        self.advance(Duration::from_millis(2 * HANDOVER_TIMEOUT_MS + 1000));
        self.quiesce(false);

        let mut sessions = 0;
        let mut subscriptions = 0;
        let mut queued = 0;
        for w in 0..WORKERS {
            let st = self.shards[w].stats();
            check!(
                self,
                self.shards[w].conn_count() == 0,
                "worker {w} still has {} connections",
                self.shards[w].conn_count()
            );
            check!(
                self,
                st.protocol_errors == 0,
                "worker {w} counted {} protocol errors",
                st.protocol_errors
            );
            check!(
                self,
                st.dropped_queue_full == 0,
                "worker {w} dropped {} queued messages",
                st.dropped_queue_full
            );
            check!(
                self,
                st.clients_connected == 0,
                "worker {w} still counts {} connected clients",
                st.clients_connected
            );
            sessions += self.shards[w].session_count();
            subscriptions += st.subscriptions;
            queued += st.queued;
        }
        let want_subs: usize = self.clients[..STABLE].iter().map(|c| c.subs.len()).sum();
        check!(
            self,
            sessions == STABLE,
            "{sessions} sessions left, expected the {STABLE} stable subscribers': {:?}",
            self.shards
                .iter()
                .map(|s| s.session_ids())
                .collect::<Vec<_>>()
        );
        check!(
            self,
            subscriptions == want_subs as u64,
            "{subscriptions} subscriptions left, expected {want_subs}"
        );
        check!(self, queued == 0, "{queued} messages still queued");
        check!(
            self,
            self.registry.len() == STABLE,
            "registry knows {} client ids, expected {STABLE}: {:?}",
            self.registry.len(),
            self.registry.entries()
        );
        for c in 0..self.clients.len() {
            let owner = self.registry.owner(&self.clients[c].name);
            check!(
                self,
                owner.is_some() == (c < STABLE),
                "registry owner of {}: {owner:?}",
                self.clients[c].name
            );
        }
        self.check_interest();
    }

    /// Interest must be exact once settled: a publish on each topic from each worker is
    /// forwarded to exactly the workers holding a stable subscriber that matches.
    fn check_interest(&mut self) {
        let prober = self.clients.len() - 1;
        for w in 0..WORKERS {
            self.connect(prober, w, true);
            self.quiesce(false);
            for (t, topic) in TOPICS.iter().enumerate() {
                let mut want = vec![false; WORKERS];
                for s in 0..STABLE {
                    if self.clients[s].subs.iter().any(|&(f, _)| matches(f, t)) {
                        let o = self.registry.owner(&self.clients[s].name).unwrap();
                        want[o] = true;
                    }
                }
                want[w] = false;
                self.publish(prober, t, QoS::AtMostOnce);
                let l = self.clients[prober].link.unwrap();
                self.broker_read(l);
                let got: Vec<bool> = (0..WORKERS)
                    .map(|to| !self.chan[w * WORKERS + to].is_empty())
                    .collect();
                check!(
                    self,
                    got == want,
                    "w{w} forwards {} to workers {got:?}, expected {want:?} (interest index out of date)",
                    topic
                );
                self.quiesce(false);
            }
            self.disconnect(prober);
            self.quiesce(false);
        }
        for w in 0..WORKERS {
            check!(
                self,
                self.shards[w].conn_count() == 0,
                "prober left a connection"
            );
        }
    }
}

fn packet_summary(p: &Packet) -> String {
    match p {
        Packet::Publish(p) => format!(
            "PUBLISH {} qos{} dup={} id={:?} m{}",
            p.topic.as_str(),
            p.qos.as_u8(),
            p.dup,
            p.packet_id.map(|i| i.get()),
            parse_payload(&p.payload).map_or(u64::MAX, |x| x.0)
        ),
        Packet::Connect(c) => format!("CONNECT {} clean={}", c.client_id, c.clean_session),
        Packet::ConnAck(a) => format!("CONNACK present={}", a.session_present),
        Packet::PubAck(ternmq::protocol::Ack { packet_id: i, .. }) => format!("PUBACK {i}"),
        Packet::PubRec(ternmq::protocol::Ack { packet_id: i, .. }) => format!("PUBREC {i}"),
        Packet::PubRel(ternmq::protocol::Ack { packet_id: i, .. }) => format!("PUBREL {i}"),
        Packet::PubComp(ternmq::protocol::Ack { packet_id: i, .. }) => format!("PUBCOMP {i}"),
        p => format!("{p:?}"),
    }
}

// ---------------------------------------------------------------------------------
// Driver

thread_local! {
    static IN_SIM: Cell<bool> = const { Cell::new(false) };
}

/// Keeps the default panic output for everything but the simulation's own failures,
/// which are reported once per seed by the driver.
fn install_quiet_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_SIM.with(|f| f.get()) {
                default(info);
            }
        }));
    });
}

/// Percent of non-stable connects that ask for a clean session (`SIM_CLEAN_PCT`).
fn clean_pct() -> usize {
    thread_local! {
        static PCT: usize = env_u64("SIM_CLEAN_PCT").map_or(35, |v| v as usize);
    }
    PCT.with(|p| *p)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// One seed; `Err` carries the failure message (and the trace when traced).
fn run_seed(seed: u64, opts: Opts, traced: bool) -> Result<(usize, usize), String> {
    let mut sim = Sim::new(seed, opts, traced);
    IN_SIM.with(|f| f.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        sim.run();
    }));
    IN_SIM.with(|f| f.set(false));
    match r {
        Ok(()) => Ok((sim.msgs.len(), sim.cross_worker_connects)),
        Err(e) => {
            let msg = if let Some(Failed(m)) = e.downcast_ref::<Failed>() {
                m.clone()
            } else if let Some(s) = e.downcast_ref::<String>() {
                format!("seed {seed}: panic: {s}")
            } else if let Some(s) = e.downcast_ref::<&str>() {
                format!("seed {seed}: panic: {s}")
            } else {
                format!("seed {seed}: panic")
            };
            if let Some(t) = &sim.trace {
                eprintln!("---- trace of seed {seed} ({} events) ----", t.len());
                for line in t {
                    eprintln!("{line}");
                }
                eprintln!("---- end of trace ----");
            }
            Err(msg)
        }
    }
}

fn simulate(name: &str, opts: Opts) {
    install_quiet_hook();
    let mut opts = opts;
    if let Some(s) = env_u64("SIM_STEPS") {
        opts.steps = s as usize;
    }
    let started = Instant::now();
    if let Some(seed) = env_u64("SIM_SEED") {
        let traced = std::env::var("SIM_TRACE").map_or(true, |v| v != "0");
        match run_seed(seed, opts, traced) {
            Ok((msgs, cross)) => eprintln!(
                "{name}: seed {seed} passed ({msgs} messages, {cross} cross-worker connects)"
            ),
            Err(m) => panic!("{name}: {m}"),
        }
        return;
    }
    let runs = env_u64("SIM_RUNS").unwrap_or(200);
    let first = env_u64("SIM_FIRST_SEED").unwrap_or(1);
    let mut failures = Vec::new();
    let mut msgs = 0;
    for seed in first..first + runs {
        match run_seed(seed, opts, false) {
            Ok((m, _)) => msgs += m,
            Err(m) => {
                eprintln!("{name}: {m}");
                failures.push(m)
            }
        }
    }
    eprintln!(
        "{name}: {runs} seeds, {} failed, {msgs} messages in passing runs, {:.1?}",
        failures.len(),
        started.elapsed()
    );
    if !failures.is_empty() {
        let shown: Vec<&String> = failures.iter().take(10).collect();
        panic!(
            "{name}: {} of {runs} seeds failed; replay one with SIM_SEED=<seed> cargo test --test simulation {name} -- --nocapture\n{}",
            failures.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// Stable subscribers reconnect and take over only on the worker that holds their
/// session; every other client moves freely between workers.
#[test]
fn simulation_stable_sessions_stay_on_their_worker() {
    simulate(
        "simulation_stable_sessions_stay_on_their_worker",
        Opts {
            steps: 600,
            stable_cross_worker: false,
        },
    );
}

/// Everything moves: stable subscribers' sessions are taken over across workers too,
/// with messages in flight to them (forwarding stubs and settling, `shard/moved.rs`).
#[test]
fn simulation_sessions_move_between_workers() {
    simulate(
        "simulation_sessions_move_between_workers",
        Opts {
            steps: 600,
            stable_cross_worker: true,
        },
    );
}
