//! One worker thread: a `mio` event loop around one [`Shard`].
//!
//! A turn: wait for events (timeout = the shard's next deadline, or zero while
//! busy polling after recent work, see [`BusyPoll`]), drain the mesh
//! inbox, read every readable connection (bounded per connection), fire timers, then
//! carry out the shard's effects: one batch and one wake per destination worker,
//! one write per dirty connection, closes last. Batches also leave mid-turn, when one
//! reaches `MESH_SEND_AT` messages and before every mid-turn write (`flush_slice`):
//! never is a socket written before the mesh messages its turn produced so far.
//!
//! TLS connections take the same path with one step more on each side: ciphertext
//! goes through their [`TlsConn`] into the scratch buffer as plaintext before
//! decoding, and their write buffer goes through it on flush. Their TLS state lives in
//! a side table (`Worker::tls`), so plain connections pay nothing for it.

use super::admission::{self, Admission, Refusal};
use super::busy_poll::BusyPoll;
use super::io::read_into_spare;
use super::tls::TlsConn;
use super::{Control, Envelope, LISTENER_TOKEN_BASE, WAKER_TOKEN};
use crate::broker::mesh::Batch;
use crate::broker::registry::Registry;
use crate::broker::shard::Shard;
use crate::broker::{ConnId, WorkerId};
use crate::config::Config;
use crate::protocol::{decode_one_v, take_plain_publish, take_short_ack, CodecError, Packet};
use bytes::BytesMut;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use rustls::ServerConfig;
use slab::Slab;
use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Per-worker read buffer size; reads land here and whole packets are decoded in place.
const SCRATCH_BYTES: usize = 64 * 1024;

/// Readable sockets read between two flushes within a turn (see `flush_slice`).
const FLUSH_EVERY_READS: usize = 16;

/// A batch that reaches this many messages during a turn's reads is sent at once
/// instead of at the end of the turn, so the receiving worker starts on it while this
/// one reads on. With two workers at full load (`perf/workers.sh`, 100 pairs) turns
/// carry thousands of cross-worker messages each; sending every 1024 raised
/// throughput by 23% and cut CPU per message by 8% (perf/README.md, "Sixth session").
const MESH_SEND_AT: usize = 1024;

/// The largest capacity (in messages) a new cross-worker batch starts with.
const MESH_BATCH_HINT_MAX: usize = 4096;
/// The largest capacity (in messages) of an emptied batch sent back to its origin
/// for reuse; a bigger one (a burst) is freed instead, so a spare holds at most
/// this many `MeshMsg` slots (about 2.7 MB).
const MESH_SPARE_CAPACITY_MAX: usize = 16 * 1024;

/// A read that returns less than it asked for emptied the socket, so the next read
/// would only say WouldBlock: skip it (half the `recv` calls when clients send small
/// packets, as acks are). Safe on Linux because an edge-triggered epoll registration
/// reports every arrival of new data (and the FIN), not only the empty-to-readable
/// transition: whatever comes after this read brings a new event. Other systems'
/// pollers promise less, so they read until WouldBlock.
const DRAINED_ON_SHORT_READ: bool = cfg!(target_os = "linux");
/// Connections accepted per listener per turn, so accepting cannot starve traffic.
const ACCEPT_PER_TURN_MAX: usize = 256;
/// Rounds of effects carried out per turn (each round may cause the next).
const EFFECT_ROUNDS_MAX: usize = 8;
/// How long accepting pauses after an error such as EMFILE.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Batches waiting in one destination's channel before we stop reading sockets.
const MESH_BACKLOG_MAX: usize = 256;
/// The least number of messages on their way to one destination before we stop
/// reading sockets (the bound is `max_queued_messages`, but not below this).
const MESH_BACKLOG_MSGS_MIN: usize = 64;

/// This worker's ends of the channel mesh.
pub(crate) struct Mesh {
    pub rx: Receiver<Envelope>,
    pub peers: Vec<Sender<Envelope>>,
    pub wakers: Vec<Arc<Waker>>,
    /// Messages sent to each worker and not yet taken from its channel, by all
    /// senders: added before sending, subtracted by the receiver.
    pub backlog: Vec<Arc<AtomicUsize>>,
    /// Emptied batches given back by the workers this one sent them to: the next
    /// batches start in them. Without this, each batch is allocated by its sender
    /// and freed by its receiver; glibc gives such memory back to the kernel as it
    /// is freed and the sender faults fresh pages in on the next turn (a tenth of
    /// the broker's CPU with two workers at full load).
    pub spares: Receiver<Batch>,
    /// Where emptied batches go back to, by origin worker (bounded channels: when
    /// one is full the batch is freed).
    pub spare_homes: Vec<Sender<Batch>>,
}

/// The listeners a worker owns (worker 0 all of them, the others none) and the TLS
/// configuration every worker needs to adopt TLS connections.
pub(crate) struct Listeners {
    pub sockets: Vec<TcpListener>,
    /// The first `plain` sockets are plain TCP, the rest TLS.
    pub plain: usize,
    pub tls: Option<Arc<ServerConfig>>,
    /// Open connections of all workers (see `admission.rs`): worker 0 counts them in
    /// at accept, the owning worker counts them out when they end.
    pub open_conns: Arc<AtomicUsize>,
}

/// The IO side of one connection.
struct IoConn {
    stream: TcpStream,
    gen: u32,
    /// A trailing partial packet; None between packets (boxed: most connections
    /// have none, and the slab holds one `IoConn` per connection).
    partial: Option<Box<BytesMut>>,
    paused_until: Option<Instant>,
    /// Data may be waiting that we did not read (budget or pause).
    read_pending: bool,
    /// A TLS connection: its state is in `Worker::tls` under the same slot. (A bool
    /// fits in the padding after `read_pending`; a pointer would grow every entry.)
    tls: bool,
}

pub(crate) struct Worker {
    id: WorkerId,
    cfg: Arc<Config>,
    shutdown: Arc<AtomicBool>,
    poll: Poll,
    mesh: Mesh,
    listeners: Vec<TcpListener>,
    /// Listeners at this index and after are TLS listeners.
    first_tls_listener: usize,
    tls_config: Option<Arc<ServerConfig>>,
    shard: Shard,
    conns: Slab<IoConn>,
    /// The TLS state of TLS connections, by slot.
    tls: HashMap<usize, TlsConn>,
    scratch: BytesMut,
    next_gen: u32,
    next_worker: usize,
    workers: usize,
    /// Slots to read again next turn without waiting for an event.
    pending_reads: Vec<usize>,
    paused: Vec<usize>,
    /// This turn's received batches: (origin turn start, publishes in it).
    remote_publishes: Vec<(Instant, u64)>,
    /// When to try a failed accept again, and on which listener.
    accept_retry: Option<(Instant, usize)>,
    /// The accept gate (used by worker 0, which accepts).
    admission: Admission,
    open_conns: Arc<AtomicUsize>,
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: WorkerId,
        workers: usize,
        cfg: Arc<Config>,
        registry: Arc<Registry>,
        shutdown: Arc<AtomicBool>,
        poll: Poll,
        mesh: Mesh,
        listeners: Listeners,
        auth: Option<Arc<crate::auth::AuthShared>>,
    ) -> io::Result<Worker> {
        let Listeners {
            sockets: mut listeners,
            plain: first_tls_listener,
            tls: tls_config,
            open_conns,
        } = listeners;
        for (i, l) in listeners.iter_mut().enumerate() {
            poll.registry()
                .register(l, Token(LISTENER_TOKEN_BASE - i), Interest::READABLE)?;
        }
        let mut shard = Shard::new(id, workers, cfg.clone(), registry, Instant::now());
        if let Some(auth) = auth {
            shard.set_auth(auth);
        }
        let admission = Admission::new(
            open_conns.clone(),
            cfg.max_connections,
            cfg.max_connections_per_ip_per_sec,
        );
        Ok(Worker {
            id,
            cfg,
            shutdown,
            poll,
            mesh,
            listeners,
            first_tls_listener,
            tls_config,
            shard,
            conns: Slab::new(),
            tls: HashMap::new(),
            scratch: BytesMut::with_capacity(SCRATCH_BYTES),
            next_gen: 0,
            next_worker: 0,
            workers,
            pending_reads: Vec::new(),
            paused: Vec::new(),
            remote_publishes: Vec::new(),
            accept_retry: None,
            admission,
            open_conns,
        })
    }

    pub(crate) fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        let mut ready = Vec::new();
        let mut busy_poll = BusyPoll::new(self.cfg.busy_poll());
        loop {
            let before = Instant::now();
            let timeout = busy_poll.timeout(before, self.poll_timeout(before));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(worker = self.id, error = %e, "poll failed");
                    break;
                }
            }
            if self.shutdown.load(Ordering::Acquire) {
                // MQTT 5 clients are told why (DISCONNECT 0x8B), best effort.
                self.shard.shutting_down();
                self.apply_effects(Instant::now());
                break;
            }
            let now = Instant::now();
            let publishes_before = self.shard.publishes_received();
            self.drain_inbox(now);
            ready.clear();
            for ev in events.iter() {
                let t = ev.token();
                if t == WAKER_TOKEN {
                    continue;
                }
                if t.0 > LISTENER_TOKEN_BASE - self.listeners.len() && t.0 <= LISTENER_TOKEN_BASE {
                    self.accept(now, LISTENER_TOKEN_BASE - t.0);
                    continue;
                }
                if ev.is_writable() {
                    self.flush(t.0);
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    ready.push(t.0);
                }
            }
            if let Some((at, i)) = self.accept_retry.filter(|(at, _)| *at <= now) {
                let _ = at;
                self.accept_retry = None;
                self.accept(now, i);
            }
            ready.append(&mut self.pending_reads);
            self.resume_paused(now, &mut ready);
            let mesh_congested = self.mesh_congested();
            let mut slice = (now, publishes_before);
            for (i, &slot) in ready.iter().enumerate() {
                if mesh_congested {
                    self.mark_read_pending(slot);
                } else {
                    self.read(now, slot);
                    self.send_batches(now, MESH_SEND_AT, true);
                }
                if (i + 1) % FLUSH_EVERY_READS == 0 && !self.shard.effects().dirty.is_empty() {
                    slice = self.flush_slice(slice);
                }
            }
            self.shard.tick(now);
            // Carrying out effects can cause more (a failed write closes a connection
            // and publishes its will): repeat, a bounded number of times, until none
            // is left, so nothing waits for the next wake-up.
            for _ in 0..EFFECT_ROUNDS_MAX {
                self.apply_effects(now);
                if self.shard.effects().is_empty() {
                    break;
                }
            }
            let busy = !ready.is_empty() || !events.is_empty();
            if busy {
                busy_poll.active(now);
            }
            self.record_turn(now, slice, busy);
        }
        tracing::debug!(worker = self.id, "worker stopped");
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.pending_reads.is_empty() {
            // While a peer's channel is congested, reads wait: look again in a
            // millisecond instead of spinning.
            let wait = if self.mesh_congested() {
                Duration::from_millis(1)
            } else {
                Duration::ZERO
            };
            return Some(wait);
        }
        let paused = self
            .paused
            .iter()
            .filter_map(|&s| self.conns.get(s).and_then(|c| c.paused_until))
            .min();
        let retry = self.accept_retry.map(|(at, _)| at);
        let deadline = [self.shard.next_deadline(), paused, retry]
            .into_iter()
            .flatten()
            .min();
        // Round up to the next millisecond so we do not spin just short of a deadline.
        deadline.map(|d| d.saturating_duration_since(now) + Duration::from_micros(500))
    }

    /// Mid-turn: hands what the last `FLUSH_EVERY_READS` reads wrote to the sockets,
    /// so a long turn (a loaded broker reading hundreds of sockets) does not hold the
    /// first messages it decoded until its end. The publishes decoded since the
    /// slice began are recorded as handed over now; returns the next slice's start.
    fn flush_slice(&mut self, (start, publishes_before): (Instant, u64)) -> (Instant, u64) {
        // Batches first, as at the end of a turn: a SUBACK written now must not reach
        // its client before the interest update it implies reaches the other workers.
        self.send_batches(start, 1, true);
        self.flush_dirty();
        self.apply_closes();
        let done = Instant::now();
        let publishes = self.shard.publishes_received();
        let ns = done.saturating_duration_since(start).as_nanos() as u64;
        self.shard
            .latency
            .record_publish(ns, publishes - publishes_before);
        (done, publishes)
    }

    /// One clock read at the end of a turn feeds the latency histograms: the turn's
    /// duration from `start`, and the publishes decoded since the last slice (see
    /// `flush_slice`) as handed over now.
    fn record_turn(&mut self, start: Instant, slice: (Instant, u64), busy: bool) {
        let (slice_start, publishes_before) = slice;
        let local = self.shard.publishes_received() - publishes_before;
        if !busy && local == 0 && self.remote_publishes.is_empty() {
            return;
        }
        let done = Instant::now();
        let ns = |t: Instant| done.saturating_duration_since(t).as_nanos() as u64;
        let lat = &mut self.shard.latency;
        lat.record_turn(ns(start));
        lat.record_publish(ns(slice_start), local);
        for (t, n) in self.remote_publishes.drain(..) {
            lat.record_publish(ns(t), n);
        }
    }

    fn drain_inbox(&mut self, now: Instant) {
        loop {
            match self.mesh.rx.try_recv() {
                Ok(Envelope::Batch {
                    from,
                    created_at,
                    mut batch,
                }) => {
                    self.mesh.backlog[self.id].fetch_sub(batch.len(), Ordering::Relaxed);
                    let delay = now.saturating_duration_since(created_at).as_nanos() as u64;
                    self.shard.latency.record_batch(batch.len() as u64, delay);
                    let publishes = self.shard.mesh(now, from, &mut batch);
                    if publishes > 0 {
                        self.remote_publishes.push((created_at, publishes));
                    }
                    if batch.capacity() <= MESH_SPARE_CAPACITY_MAX {
                        if let Some(home) = self.mesh.spare_homes.get(from) {
                            let _ = home.try_send(batch);
                        }
                    }
                }
                Ok(Envelope::Control(Control::Latency(reply))) => {
                    let _ = reply.send(self.shard.latency.clone());
                }
                Ok(Envelope::Control(Control::ResetLatency)) => self.shard.latency.reset(),
                Ok(Envelope::NewConn { stream, tls }) => self.adopt(now, stream, tls),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
            }
        }
    }

    /// A peer is behind: its channel holds too many batches, or too many messages.
    /// The second bound matters when the peer is starved of CPU (a loaded machine)
    /// while we are not: then no `Pause` comes back from it in time, and 256 batches
    /// of publishes for one of its subscribers (thousands of messages, seen with TLS
    /// on 2 loaded cores) would overflow that subscriber's queue, whose oldest QoS 1
    /// messages are dropped at twice `max_queued_messages`. With at most
    /// `max_queued_messages` on their way, the session's own back-pressure (from a
    /// few windows' worth) acts before that.
    fn mesh_congested(&self) -> bool {
        let max_msgs = self.cfg.max_queued_messages.max(MESH_BACKLOG_MSGS_MIN);
        self.mesh.peers.iter().enumerate().any(|(w, p)| {
            w != self.id
                && (p.len() > MESH_BACKLOG_MAX
                    || self.mesh.backlog[w].load(Ordering::Relaxed) > max_msgs)
        })
    }

    /// Accepts new connections and deals them out round-robin over the workers.
    fn accept(&mut self, now: Instant, i: usize) {
        for _ in 0..ACCEPT_PER_TURN_MAX {
            let Some(l) = self.listeners.get(i) else {
                return;
            };
            match l.accept() {
                Ok((stream, peer)) => {
                    tracing::trace!(%peer, "accepted");
                    if let Err(why) = self.admission.admit(now, peer.ip()) {
                        // Closed at once (dropping the stream), before any read.
                        self.shard.count_refused_connection(why == Refusal::Rate);
                        continue;
                    }
                    let target = self.next_worker % self.workers;
                    self.next_worker = self.next_worker.wrapping_add(1);
                    let tls = i >= self.first_tls_listener;
                    if target == self.id {
                        self.adopt_mio(now, stream, tls);
                    } else {
                        // SAFETY-free conversion: mio's stream wraps the std one.
                        let std_stream: std::net::TcpStream = stream.into();
                        if self.mesh.peers[target]
                            .send(Envelope::NewConn {
                                stream: std_stream,
                                tls,
                            })
                            .is_ok()
                        {
                            let _ = self.mesh.wakers[target].wake();
                        } else {
                            admission::release(&self.open_conns);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // A client that reset before we accepted it, or a signal: next one.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    // Out of descriptors (EMFILE) and the like: the backlog waits; try
                    // again shortly rather than spin.
                    tracing::warn!(error = %e, "accept failed, retrying in 100 ms");
                    self.accept_retry = Some((now + ACCEPT_RETRY, i));
                    return;
                }
            }
        }
        // More may be waiting: the listener is edge-triggered, so poll it again soon.
        self.pending_accept(i);
    }

    fn pending_accept(&mut self, i: usize) {
        // Re-registering re-arms the edge so the backlog is seen next turn.
        if let Some(l) = self.listeners.get_mut(i) {
            let _ = self.poll.registry().reregister(
                l,
                Token(LISTENER_TOKEN_BASE - i),
                Interest::READABLE,
            );
        }
    }

    fn adopt(&mut self, now: Instant, stream: std::net::TcpStream, tls: bool) {
        if let Err(e) = stream.set_nonblocking(true) {
            tracing::warn!(error = %e, "cannot make socket non-blocking");
            admission::release(&self.open_conns);
            return;
        }
        self.adopt_mio(now, TcpStream::from_std(stream), tls);
    }

    fn adopt_mio(&mut self, now: Instant, mut stream: TcpStream, tls: bool) {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let tls_conn = match (tls, &self.tls_config) {
            (false, _) => None,
            (true, Some(config)) => match TlsConn::new(config) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start TLS session");
                    admission::release(&self.open_conns);
                    return;
                }
            },
            (true, None) => {
                debug_assert!(false, "TLS connection without a TLS configuration");
                admission::release(&self.open_conns);
                return;
            }
        };
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!(error = %e, "cannot register connection");
            admission::release(&self.open_conns);
            return;
        }
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        entry.insert(IoConn {
            stream,
            gen,
            partial: None,
            paused_until: None,
            read_pending: false,
            tls,
        });
        if let Some(t) = tls_conn {
            self.tls.insert(slot, t);
        }
        self.shard.open(
            now,
            ConnId {
                slot: slot as u32,
                gen,
            },
        );
        self.tell_peer(slot, gen);
    }

    /// Gives the shard the peer's address when authentication needs it (the
    /// failed-login back-off); one `getpeername` per connection, only then.
    fn tell_peer(&mut self, slot: usize, gen: u32) {
        if !self.shard.wants_peer() {
            return;
        }
        if let Some(Ok(peer)) = self.conns.get(slot).map(|c| c.stream.peer_addr()) {
            let id = ConnId {
                slot: slot as u32,
                gen,
            };
            self.shard.set_peer(id, peer.ip());
        }
    }

    fn mark_read_pending(&mut self, slot: usize) {
        if let Some(c) = self.conns.get_mut(slot) {
            c.read_pending = true;
            self.pending_reads.push(slot);
        }
    }

    fn resume_paused(&mut self, now: Instant, ready: &mut Vec<usize>) {
        let conns = &mut self.conns;
        self.paused.retain(|&slot| {
            let Some(c) = conns.get_mut(slot) else {
                return false;
            };
            match c.paused_until {
                Some(t) if t > now => true,
                _ => {
                    c.paused_until = None;
                    if c.read_pending {
                        ready.push(slot);
                    }
                    false
                }
            }
        });
    }

    /// Reads and decodes one connection until it would block, its budget is spent, or
    /// it is paused or closed.
    fn read(&mut self, now: Instant, slot: usize) {
        let mut budget = self.cfg.read_budget_bytes;
        loop {
            let Some(c) = self.conns.get_mut(slot) else {
                return;
            };
            let id = ConnId {
                slot: slot as u32,
                gen: c.gen,
            };
            if c.paused_until.is_some_and(|t| t > now) {
                c.read_pending = true;
                return;
            }
            if budget == 0 {
                c.read_pending = true;
                self.pending_reads.push(slot);
                return;
            }
            if self.shard.tx_len(id) >= self.cfg.max_outbound_bytes {
                // The client is not reading what we send (acks, deliveries): stop
                // reading from it until its buffer drains, so it cannot make us
                // buffer without bound. `flush` resumes it.
                c.read_pending = true;
                return;
            }
            c.read_pending = false;
            if self.scratch.capacity() - self.scratch.len() < SCRATCH_BYTES / 4 {
                self.scratch.reserve(SCRATCH_BYTES);
            }
            if c.tls {
                match self.read_tls(now, slot, id) {
                    Some(n) => {
                        budget = budget.saturating_sub(n);
                        continue;
                    }
                    None => return,
                }
            }
            let room = self.scratch.capacity() - self.scratch.len();
            match read_into_spare(&c.stream, &mut self.scratch) {
                Ok(0) => {
                    self.shard.closed(now, id);
                    self.remove(slot);
                    return;
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    self.shard.count_rx_bytes(n);
                    let chunk = self.scratch.split();
                    if !self.decode(now, slot, id, chunk) || (DRAINED_ON_SHORT_READ && n < room) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(?id, error = %e, "read failed");
                    self.shard.closed(now, id);
                    self.remove(slot);
                    return;
                }
            }
        }
    }

    /// One read from a TLS connection: ciphertext in, plaintext decoded, handshake
    /// records flushed. The ciphertext bytes read, or None when the connection would
    /// block or is gone.
    fn read_tls(&mut self, now: Instant, slot: usize, id: ConnId) -> Option<usize> {
        let (Some(c), Some(t)) = (self.conns.get_mut(slot), self.tls.get_mut(&slot)) else {
            return None;
        };
        let r = match t.read(&mut c.stream, &mut self.scratch) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) => {
                // A TLS failure queues an alert: send it, best effort, then close.
                tracing::debug!(?id, error = %e, "TLS read failed");
                let _ = t.write_tls(&mut c.stream);
                self.shard.closed(now, id);
                self.remove(slot);
                return None;
            }
        };
        if !t.establish(self.cfg.use_identity_as_username) {
            tracing::debug!(?id, "client certificate has no usable CN; closing");
            self.shard.closed(now, id);
            self.remove(slot);
            return None;
        }
        let handshake_output = t.wants_write();
        if r.plain_bytes > 0 {
            self.shard.count_rx_bytes(r.plain_bytes);
            let chunk = self.scratch.split();
            if !self.decode(now, slot, id, chunk) {
                return None;
            }
        }
        if handshake_output {
            self.flush(slot);
        }
        if r.closed {
            if self.conns.get(slot).is_some_and(|c| c.gen == id.gen) {
                self.shard.closed(now, id);
                self.remove(slot);
            }
            return None;
        }
        Some(r.wire_bytes)
    }

    /// With `use_identity_as_username`, a CONNECT from a TLS connection carries the
    /// client certificate's CN as its user name (whatever the client sent), so the
    /// shard, and authentication, see the certificate's identity.
    fn apply_identity(&mut self, slot: usize, id: ConnId, packet: &mut Packet) {
        if let Some(identity) = self.tls.get(&slot).and_then(|t| t.identity.as_deref()) {
            set_connect_username(packet, identity);
            if matches!(packet, Packet::Connect(_)) {
                // The certificate authenticated this user name: no password check.
                self.shard.set_certified(id);
            }
        }
    }

    /// Decodes every whole packet of `chunk` (after any saved partial one) and keeps
    /// the trailing partial packet. False when the connection is gone.
    fn decode(&mut self, now: Instant, slot: usize, id: ConnId, chunk: BytesMut) -> bool {
        let Some(c) = self.conns.get_mut(slot) else {
            return false;
        };
        let owned = c.partial.is_some();
        let tls = c.tls;
        let mut buf = match c.partial.take() {
            None => chunk,
            Some(p) => {
                let mut p = *p;
                p.extend_from_slice(&chunk);
                p
            }
        };
        loop {
            let max = self.shard.packet_limit(id);
            let version = self.shard.version(id);
            // Most packets are plain PUBLISHes, and with QoS 1 and 2 as many are short
            // acknowledgements: both are taken without the generic decoder's layers
            // (the same packets, see `take_plain_publish` and `take_short_ack`).
            let packet = if let Some(p) = take_plain_publish(&mut buf, max, version) {
                Packet::Publish(p)
            } else if let Some(p) = take_short_ack(&mut buf, max) {
                p
            } else {
                match decode_one_v(&mut buf, max, version) {
                    Ok(Some(mut packet)) => {
                        if tls {
                            self.apply_identity(slot, id, &mut packet);
                        }
                        packet
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.decode_failed(now, id, &e);
                        return false;
                    }
                }
            };
            self.shard.packet(now, id, packet);
            if !self.shard.is_open(id) {
                return false;
            }
        }
        if !buf.is_empty() {
            if let Some(c) = self.conns.get_mut(slot) {
                // Own the partial bytes so an idle connection does not pin the scratch
                // (a buffer that is ours already is kept as it is), and make room for
                // the whole packet once its length is known, so that a large packet
                // arriving in many small reads is not copied again and again.
                let mut partial = if owned { buf } else { BytesMut::from(&buf[..]) };
                let max = self.shard.packet_limit(id);
                if let Ok(Some(frame)) = crate::protocol::check_frame(&partial, max) {
                    partial.reserve(frame.total_len().saturating_sub(partial.len()));
                }
                c.partial = Some(Box::new(partial));
            }
        }
        true
    }

    fn decode_failed(&mut self, now: Instant, id: ConnId, e: &CodecError) {
        self.shard.decode_error(now, id, e);
    }

    /// Writes a connection's buffered bytes until done or the socket is full.
    fn flush(&mut self, slot: usize) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let id = ConnId {
            slot: slot as u32,
            gen: c.gen,
        };
        let Some(tx) = self.shard.tx_mut(id) else {
            return;
        };
        let mut written = 0;
        let mut failed = false;
        if c.tls {
            if let Some(t) = self.tls.get_mut(&slot) {
                (written, failed) = flush_tls(t, &mut c.stream, tx);
            }
        }
        while !c.tls && written < tx.len() {
            match c.stream.write(&tx[written..]) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(?id, error = %e, "write failed");
                    failed = true;
                    break;
                }
            }
        }
        let backlog = tx.len() - written;
        if backlog == 0 {
            // Idle connections own no write buffer: it goes back to the pool.
            self.shard.recycle_tx(id);
        } else {
            tx.drain(..written);
        }
        self.shard.count_tx_bytes(written);
        if c.read_pending && backlog < self.cfg.max_outbound_bytes && c.paused_until.is_none() {
            self.pending_reads.push(slot);
        }
        if failed {
            // The read side will see the error too; close now so nothing piles up.
            self.shard.closed(Instant::now(), id);
            self.apply_closes();
        }
    }

    fn apply_effects(&mut self, now: Instant) {
        // Pauses first: they gate the next turn's reads.
        let pauses = std::mem::take(&mut self.shard.effects().pause);
        // A pause runs from now, when it takes effect, not from the start of this
        // turn: a turn longer than the pause (a loaded machine) would otherwise let it
        // expire before the next turn's reads, which it is meant to stop. One clock
        // read, and only on a turn that pauses someone (congestion is rare).
        let shift = if pauses.is_empty() {
            Duration::ZERO
        } else {
            Instant::now().saturating_duration_since(now)
        };
        for (id, until) in pauses {
            let until = until + shift;
            if let Some(c) = self.conns.get_mut(id.slot as usize) {
                if c.gen == id.gen {
                    if c.paused_until.is_none() {
                        self.paused.push(id.slot as usize);
                    }
                    c.paused_until = Some(c.paused_until.map_or(until, |t| t.max(until)));
                }
            }
        }
        // Resumes after pauses: a subscriber that drained within the turn wins.
        let resumes = std::mem::take(&mut self.shard.effects().resume);
        for id in resumes {
            if let Some(c) = self.conns.get_mut(id.slot as usize) {
                if c.gen == id.gen && c.paused_until.take().is_some() && c.read_pending {
                    self.pending_reads.push(id.slot as usize);
                }
            }
        }
        self.send_batches(now, 1, false);
        self.flush_dirty();
        self.apply_closes();
    }

    /// Sends each destination's batch if it holds at least `at_least` messages (and
    /// at least one): one batch and one wake per destination. `mid_turn`: before the
    /// end of the turn (recorded in `batch_len_mid_turn`).
    fn send_batches(&mut self, now: Instant, at_least: usize, mid_turn: bool) {
        for w in 0..self.workers {
            let slot = &mut self.shard.effects().mesh[w];
            if slot.len() < at_least.max(1) {
                continue;
            }
            // The batch leaves with the message; the next one starts in a spare its
            // receiver gave back, or else at this one's capacity (a high-water mark,
            // capped), so a steady stream allocates nothing per turn.
            let n = slot.len();
            let next =
                self.mesh.spares.try_recv().unwrap_or_else(|_| {
                    Vec::with_capacity(slot.capacity().min(MESH_BATCH_HINT_MAX))
                });
            debug_assert!(next.is_empty());
            let batch = std::mem::replace(slot, next);
            if mid_turn {
                self.shard.latency.record_batch_mid_turn(n as u64);
            }
            // Counted before sending, so that the receiver never subtracts first.
            self.mesh.backlog[w].fetch_add(n, Ordering::Relaxed);
            if self.mesh.peers[w]
                .send(Envelope::Batch {
                    from: self.id,
                    created_at: now,
                    batch,
                })
                .is_ok()
            {
                if let Err(e) = self.mesh.wakers[w].wake() {
                    tracing::warn!(error = %e, "cannot wake worker {w}");
                }
            } else {
                self.mesh.backlog[w].fetch_sub(n, Ordering::Relaxed);
            }
        }
    }

    /// Writes every connection the shard marked dirty.
    fn flush_dirty(&mut self) {
        // Sockets are written only after the mesh messages produced before them have
        // left (a SUBACK after the interest update it implies; see the module docs).
        debug_assert!(self.shard.effects().mesh.iter().all(|b| b.is_empty()));
        let dirty = std::mem::take(&mut self.shard.effects().dirty);
        for id in &dirty {
            if self
                .conns
                .get(id.slot as usize)
                .is_some_and(|c| c.gen == id.gen)
            {
                self.flush(id.slot as usize);
            }
        }
        // Give the vector's capacity back for the next turn.
        let mut dirty = dirty;
        dirty.clear();
        let effects = self.shard.effects();
        if effects.dirty.is_empty() {
            effects.dirty = dirty;
        }
    }

    fn apply_closes(&mut self) {
        let closes = std::mem::take(&mut self.shard.effects().close);
        for (id, tx) in closes {
            let slot = id.slot as usize;
            if self.conns.get(slot).is_none_or(|c| c.gen != id.gen) {
                continue;
            }
            if let Some(c) = self.conns.get_mut(slot) {
                if let Some(t) = self.tls.get_mut(&slot).filter(|_| c.tls) {
                    // Best effort, as below: the last packet, then close_notify.
                    let _ = flush_tls(t, &mut c.stream, &tx);
                    t.send_close_notify();
                    let _ = t.write_tls(&mut c.stream);
                } else if !tx.is_empty() {
                    let _ = c.stream.write(&tx); // best effort: the connection is ending
                }
                let _ = c.stream.shutdown(std::net::Shutdown::Write);
            }
            self.remove(slot);
        }
    }

    fn remove(&mut self, slot: usize) {
        if let Some(mut c) = self.conns.try_remove(slot) {
            admission::release(&self.open_conns);
            let _ = self.poll.registry().deregister(&mut c.stream);
            if c.tls {
                self.tls.remove(&slot);
            }
        }
    }
}

/// Makes `user` the user name of `packet` if it is a CONNECT (the password, if any,
/// is left as the client sent it).
fn set_connect_username(packet: &mut Packet, user: &str) {
    if let Packet::Connect(c) = packet {
        c.username = Some(user.into());
    }
}

/// Writes pending TLS records, then encrypts and writes `tx` until done or the socket
/// is full. Returns (plaintext bytes of `tx` taken, whether the connection failed).
fn flush_tls(t: &mut TlsConn, stream: &mut TcpStream, tx: &[u8]) -> (usize, bool) {
    let mut written = 0;
    loop {
        match t.write_tls(stream) {
            Ok(true) => {}
            Ok(false) => return (written, false),
            Err(e) => {
                tracing::debug!(error = %e, "TLS write failed");
                return (written, true);
            }
        }
        if written == tx.len() || t.is_handshaking() {
            // Nothing left, or not yet: the shard writes nothing before CONNECT, and
            // CONNECT comes after the handshake.
            return (written, false);
        }
        let n = t.write_plain(&tx[written..]);
        if n == 0 {
            return (written, false);
        }
        written += n;
    }
}

#[cfg(test)]
mod tests {
    use crate::protocol::{Connect, Packet, ProtocolVersion};

    #[test]
    fn identity_replaces_the_connect_user_name_only() {
        let mut connect = Packet::Connect(Box::new(Connect {
            version: ProtocolVersion::V3_1_1,
            clean_session: true,
            keep_alive_secs: 0,
            client_id: "c".into(),
            will: None,
            username: Some("claimed".into()),
            password: Some(bytes::Bytes::from_static(b"pw")),
            props: Default::default(),
        }));
        super::set_connect_username(&mut connect, "device-42");
        let Packet::Connect(c) = &connect else {
            panic!("still a CONNECT");
        };
        assert_eq!(c.username.as_deref(), Some("device-42"));
        assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
        let mut other = Packet::PingReq;
        super::set_connect_username(&mut other, "device-42");
        assert!(matches!(other, Packet::PingReq));
    }
}

#[cfg(test)]
mod size_tests {
    /// One `IoConn` per connection lives in the worker's slab.
    #[test]
    fn io_conn_stays_small() {
        let entry = std::mem::size_of::<super::IoConn>();
        assert!(entry <= 48, "{entry}");
        // TLS support adds no byte to a plain connection (its state is in a side table,
        // its flag in padding). Debug builds of mio add a selector id to each stream.
        let release_max = if cfg!(debug_assertions) { 48 } else { 40 };
        assert!(entry <= release_max, "{entry}");
    }
}
