//! The floor: the least an MQTT broker can do per message on this machine.
//!
//! A measuring instrument, not a broker. One thread, one `mio` poll, plain TCP. It
//! answers CONNECT, SUBSCRIBE and PINGREQ, and forwards each QoS 0 PUBLISH as it came,
//! byte for byte, to the connections subscribed to exactly its topic. Writes are
//! collected over one poll turn and handed to each socket once, as a broker does.
//!
//! With `--threads N` it runs N such loops (`--pin`: loop i on core i, as ternmq pins
//! its workers), and deals accepted connections out in turn as ternmq does. A loop that
//! reads a PUBLISH whose subscribers live on another loop copies the frame into that
//! loop's batch (one byte buffer per destination, sent at the end of the turn over a
//! `crossbeam-channel` with one `mio::Waker` wake, and handed back empty for reuse,
//! without a wake, as ternmq's workers hand batches back). That is the least a
//! cross-thread hand-off can cost, the floor for `ternmq --workers 2`.
//!
//! So what is left is the work that no broker can avoid: the kernel's loopback TCP
//! (one `recv` and one `send` per message when messages arrive one by one), the
//! wake-ups, and framing. `perf/compare.sh` and `perf/workers.sh` run `ternmq bench`
//! against it and against ternmq side by side: its CPU per message is the bottom line
//! for ternmq's, and its latency at a fixed rate tells whether a latency target can be
//! met here at all.
//!
//! Must not be mistaken for a broker: MQTT 3.1.1 only, QoS 0 only, exact topic filters
//! only (no wildcards, no retained messages, no will, no sessions, no unsubscribing).
//! Anything else closes the connection that sent it, as do packets over 1 MiB; QoS 0
//! output beyond 16 MiB unsent for one connection is dropped. Interest in a topic,
//! once another loop has it, is never withdrawn, and the channels between loops are
//! unbounded. Loopback listeners only.
//!
//! Run: `cargo run --release --example floor -- 127.0.0.1:18900 [--threads N] [--pin]`

use crossbeam_channel::{Receiver, Sender};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);
/// A batch is sent before the end of the turn once it holds this many bytes.
const BATCH_SEND_AT: usize = 64 * 1024;
/// Largest packet accepted; larger input closes the connection.
const MAX_PACKET: usize = 1 << 20;
const READ_CHUNK: usize = 64 * 1024;
/// Output held for a connection that does not read; QoS 0 beyond it is dropped.
const MAX_OUT: usize = 16 << 20;

struct Conn {
    sock: TcpStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// Bytes of `wbuf` already written.
    sent: usize,
    /// Exact topics this connection subscribed to (to unsubscribe on close).
    topics: Vec<Vec<u8>>,
    dirty: bool,
}

/// One parsed frame: its type nibble, flags, and where its body starts and ends.
struct Frame {
    kind: u8,
    flags: u8,
    body: std::ops::Range<usize>,
}

/// The frame at the start of `buf`: `Ok(None)` if it is not complete yet, `Err` if the
/// remaining length is malformed or over [`MAX_PACKET`].
fn frame(buf: &[u8]) -> Result<Option<Frame>, ()> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut len = 0usize;
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7f) << (7 * (i - 1));
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return Err(());
        }
    }
    if len > MAX_PACKET {
        return Err(());
    }
    if buf.len() < i + len {
        return Ok(None);
    }
    Ok(Some(Frame {
        kind: first >> 4,
        flags: first & 0x0f,
        body: i..i + len,
    }))
}

/// Appends a remaining length (1-4 bytes, 7 bits each, low first).
fn put_length(mut len: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        out.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            return;
        }
    }
}

/// A 2-byte-length-prefixed string at the start of `b`.
fn string(b: &[u8]) -> Option<&[u8]> {
    let n = usize::from(u16::from_be_bytes([*b.first()?, *b.get(1)?]));
    b.get(2..2 + n)
}

/// Appends `bytes` to `slot`'s output and marks it for the end of the turn.
fn queue(conns: &mut [Option<Conn>], dirty: &mut Vec<usize>, slot: usize, bytes: &[u8]) {
    if let Some(c) = conns.get_mut(slot).and_then(Option::as_mut) {
        if c.wbuf.len() - c.sent + bytes.len() > MAX_OUT {
            return;
        }
        if c.sent > MAX_OUT / 2 {
            c.wbuf.drain(..c.sent);
            c.sent = 0;
        }
        c.wbuf.extend_from_slice(bytes);
        if !c.dirty {
            c.dirty = true;
            dirty.push(slot);
        }
    }
}

/// What one loop sends another.
enum Inbound {
    /// An accepted connection dealt to the receiver.
    Conn(TcpStream),
    /// The sender has a first subscriber on this exact topic.
    Interest { topic: Vec<u8>, from: usize },
    /// PUBLISH frames, back to back, for the receiver's subscribers; to be handed
    /// back empty to `from`.
    Batch { frames: Vec<u8>, from: usize },
    /// An emptied batch buffer coming home.
    Spare(Vec<u8>),
}

/// A way into another loop: its inbox and its waker.
struct Peer {
    inbox: Sender<Inbound>,
    waker: Arc<Waker>,
}

impl Peer {
    fn send(&self, m: Inbound) {
        if self.inbox.send(m).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

struct Floor {
    id: usize,
    poll: Poll,
    /// Loop 0 accepts for every loop.
    listener: Option<TcpListener>,
    next: usize,
    peers: Vec<Peer>,
    inbox: Receiver<Inbound>,
    /// Per exact topic, the other loops (bit = id) with subscribers on it.
    remote: HashMap<Vec<u8>, u64>,
    /// Per other loop, the frames to send it at the end of the turn.
    out: Vec<Vec<u8>>,
    spares: Vec<Vec<u8>>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    subs: HashMap<Vec<u8>, Vec<usize>>,
    dirty: Vec<usize>,
    scratch: Vec<u8>,
}

impl Floor {
    fn accept(&mut self) {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((sock, _)) => {
                    let _ = sock.set_nodelay(true);
                    let to = self.next % self.peers.len();
                    self.next = self.next.wrapping_add(1);
                    if to == self.id {
                        self.adopt(sock);
                    } else {
                        self.peers[to].send(Inbound::Conn(sock));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    eprintln!("floor: accept: {e}");
                    return;
                }
            }
        }
    }

    /// Takes a connection into this loop.
    fn adopt(&mut self, mut sock: TcpStream) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        if self
            .poll
            .registry()
            .register(
                &mut sock,
                Token(slot),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            self.free.push(slot);
            return;
        }
        self.conns[slot] = Some(Conn {
            sock,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            sent: 0,
            topics: Vec::new(),
            dirty: false,
        });
    }

    /// Handles what other loops sent.
    fn drain_inbox(&mut self) {
        while let Ok(m) = self.inbox.try_recv() {
            match m {
                Inbound::Conn(sock) => self.adopt(sock),
                Inbound::Interest { topic, from } => {
                    *self.remote.entry(topic).or_default() |= 1u64 << from;
                }
                Inbound::Batch { mut frames, from } => {
                    let mut at = 0;
                    while let Ok(Some(f)) = frame(&frames[at..]) {
                        let whole = at..at + f.body.end;
                        if let Some(topic) = string(&frames[at + f.body.start..whole.end]) {
                            self.deliver(topic, &frames[whole.clone()]);
                        }
                        at = whole.end;
                    }
                    frames.clear();
                    // No wake: the sender finds it at its next turn.
                    let _ = self.peers[from].inbox.send(Inbound::Spare(frames));
                }
                Inbound::Spare(v) => self.spares.push(v),
            }
        }
    }

    /// Sends each other loop its batch if it holds at least `at_least` bytes.
    fn send_batches(&mut self, at_least: usize) {
        for to in 0..self.out.len() {
            if to == self.id || self.out[to].len() < at_least.max(1) {
                continue;
            }
            let next = self
                .spares
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(BATCH_SEND_AT * 2));
            let frames = std::mem::replace(&mut self.out[to], next);
            self.peers[to].send(Inbound::Batch {
                frames,
                from: self.id,
            });
        }
    }

    fn close(&mut self, slot: usize) {
        if let Some(mut c) = self.conns[slot].take() {
            let _ = self.poll.registry().deregister(&mut c.sock);
            for t in c.topics {
                if let Some(v) = self.subs.get_mut(&t) {
                    v.retain(|&s| s != slot);
                    if v.is_empty() {
                        self.subs.remove(&t);
                    }
                }
            }
            self.free.push(slot);
        }
    }

    fn queue(&mut self, slot: usize, bytes: &[u8]) {
        queue(&mut self.conns, &mut self.dirty, slot, bytes);
    }

    /// Queues a PUBLISH frame for this loop's subscribers of exactly `topic`.
    fn deliver(&mut self, topic: &[u8], frame: &[u8]) {
        if let Some(list) = self.subs.get(topic) {
            for &s in list {
                queue(&mut self.conns, &mut self.dirty, s, frame);
            }
        }
    }

    /// Reads what `slot` has and handles every complete frame; false: close it.
    fn read(&mut self, slot: usize) -> bool {
        let Some(c) = self.conns[slot].as_mut() else {
            return true;
        };
        let mut rbuf = std::mem::take(&mut c.rbuf);
        // Each chunk is handled as it arrives, so the buffer holds at most one
        // partial packet.
        let ok = loop {
            let Some(c) = self.conns[slot].as_mut() else {
                return true;
            };
            let n = match c.sock.read(&mut self.scratch) {
                Ok(0) => break false,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break false,
            };
            rbuf.extend_from_slice(&self.scratch[..n]);
            if !self.handle(slot, &mut rbuf) {
                break false;
            }
            if n < self.scratch.len() {
                break true;
            }
        };
        if let Some(c) = self.conns[slot].as_mut() {
            c.rbuf = rbuf;
        }
        ok
    }

    /// Handles every complete packet at the start of `rbuf` and removes them; false:
    /// close the connection.
    fn handle(&mut self, slot: usize, rbuf: &mut Vec<u8>) -> bool {
        let mut at = 0;
        let ok = loop {
            let f = match frame(&rbuf[at..]) {
                Ok(Some(f)) => f,
                Ok(None) => break true,
                Err(()) => break false,
            };
            let whole = at..at + f.body.end;
            let body = &rbuf[at + f.body.start..at + f.body.end];
            let handled = match (f.kind, f.flags) {
                (3, flags) if flags & 0x06 == 0 => {
                    // PUBLISH, QoS 0: forward the frame as it is.
                    if let Some(topic) = string(body) {
                        self.deliver(topic, &rbuf[whole.clone()]);
                        let mut mask = self.remote.get(topic).copied().unwrap_or(0);
                        while mask != 0 {
                            let to = mask.trailing_zeros() as usize;
                            mask &= mask - 1;
                            self.out[to].extend_from_slice(&rbuf[whole.clone()]);
                        }
                    }
                    true
                }
                (1, 0) => {
                    self.queue(slot, &[0x20, 0x02, 0x00, 0x00]);
                    true
                }
                (8, 2) => self.subscribe(slot, body),
                (12, 0) => {
                    self.queue(slot, &[0xd0, 0x00]);
                    true
                }
                _ => false,
            };
            if !handled {
                break false;
            }
            at = whole.end;
        };
        rbuf.drain(..at);
        ok
    }

    /// SUBSCRIBE (3.1.1): packet id, then (filter, options) pairs; answers SUBACK
    /// granting QoS 0 to each.
    fn subscribe(&mut self, slot: usize, body: &[u8]) -> bool {
        let Some(id) = body.get(..2) else {
            return false;
        };
        let mut codes = Vec::new();
        let mut rest = &body[2..];
        while !rest.is_empty() {
            let Some(topic) = string(rest) else {
                return false;
            };
            if topic.iter().any(|&b| b == b'+' || b == b'#') || rest.len() < topic.len() + 3 {
                return false;
            }
            let topic = topic.to_vec();
            rest = &rest[topic.len() + 3..];
            let list = self.subs.entry(topic.clone()).or_default();
            if list.is_empty() {
                for (to, p) in self.peers.iter().enumerate() {
                    if to != self.id {
                        p.send(Inbound::Interest {
                            topic: topic.clone(),
                            from: self.id,
                        });
                    }
                }
            }
            if !list.contains(&slot) {
                list.push(slot);
            }
            if let Some(c) = self.conns[slot].as_mut() {
                if !c.topics.contains(&topic) {
                    c.topics.push(topic);
                }
            }
            codes.push(0);
        }
        if codes.is_empty() {
            return false;
        }
        // SUBACK: fixed header, remaining length (a varint), packet id, return codes.
        let mut ack = vec![0x90];
        put_length(2 + codes.len(), &mut ack);
        ack.extend_from_slice(id);
        ack.extend_from_slice(&codes);
        self.queue(slot, &ack);
        true
    }

    /// Writes what `slot` has queued; false: close it.
    fn flush(&mut self, slot: usize) -> bool {
        let Some(c) = self.conns[slot].as_mut() else {
            return true;
        };
        c.dirty = false;
        while c.sent < c.wbuf.len() {
            match c.sock.write(&c.wbuf[c.sent..]) {
                Ok(0) => return false,
                Ok(n) => c.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        c.wbuf.clear();
        c.sent = 0;
        true
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            if let Err(e) = self.poll.poll(&mut events, None) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.drain_inbox();
            for ev in events.iter() {
                let t = ev.token();
                if t == LISTENER {
                    self.accept();
                    continue;
                }
                if t == WAKER {
                    continue;
                }
                if ev.is_writable() && !self.flush(t.0) {
                    self.close(t.0);
                    continue;
                }
                if (ev.is_readable() || ev.is_read_closed() || ev.is_error()) && !self.read(t.0) {
                    self.close(t.0);
                }
                self.send_batches(BATCH_SEND_AT);
            }
            self.send_batches(1);
            for slot in std::mem::take(&mut self.dirty) {
                if !self.flush(slot) {
                    self.close(slot);
                }
            }
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut addr: SocketAddr = "127.0.0.1:18900".parse()?;
    let mut threads = 1usize;
    let mut pin = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--pin" {
            pin = true;
        } else if a == "--threads" {
            threads = args.next().ok_or("--threads needs a number")?.parse()?;
        } else {
            addr = a.parse()?;
        }
    }
    if !addr.ip().is_loopback() {
        return Err("the floor listens on loopback addresses only".into());
    }
    if !(1..=64).contains(&threads) {
        return Err("--threads: 1 to 64".into());
    }
    let mut polls = Vec::new();
    let mut peers = Vec::new();
    let mut inboxes = Vec::new();
    for _ in 0..threads {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = crossbeam_channel::unbounded();
        polls.push(poll);
        peers.push((tx, waker));
        inboxes.push(rx);
    }
    let mut listener = Some(TcpListener::bind(addr)?);
    eprintln!("floor: listening on {addr}, {threads} thread(s) (QoS 0, exact topics, MQTT 3.1.1)");
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut handles = Vec::new();
    for (id, (poll, inbox)) in polls.into_iter().zip(inboxes).enumerate() {
        let mut listener = listener.take();
        if let Some(l) = listener.as_mut() {
            poll.registry().register(l, LISTENER, Interest::READABLE)?;
        }
        let peers = peers
            .iter()
            .map(|(tx, waker)| Peer {
                inbox: tx.clone(),
                waker: waker.clone(),
            })
            .collect();
        let mut floor = Floor {
            id,
            poll,
            listener,
            next: 0,
            peers,
            inbox,
            remote: HashMap::new(),
            out: vec![Vec::new(); threads],
            spares: Vec::new(),
            conns: Vec::new(),
            free: Vec::new(),
            subs: HashMap::new(),
            dirty: Vec::new(),
            scratch: vec![0; READ_CHUNK],
        };
        let core = pin
            .then(|| cores.get(id % cores.len().max(1)).copied())
            .flatten();
        handles.push(std::thread::spawn(move || {
            if let Some(c) = core {
                core_affinity::set_for_current(c);
            }
            floor.run()
        }));
    }
    for h in handles {
        h.join().map_err(|_| "a floor thread panicked")??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_wait_for_their_bytes_and_refuse_bad_lengths() {
        assert!(matches!(frame(&[]), Ok(None)));
        assert!(matches!(frame(&[0x30]), Ok(None)));
        assert!(matches!(frame(&[0x30, 0x03, 0, 1]), Ok(None)));
        let f = frame(&[0x30, 0x03, 0, 1, b'a', 0xff]).ok().flatten();
        assert_eq!(f.map(|f| (f.kind, f.flags, f.body)), Some((3, 0, 2..5)));
        assert!(frame(&[0x30, 0x80, 0x80, 0x80, 0x80, 0x01]).is_err());
        assert!(frame(&[0x30, 0xff, 0xff, 0x7f]).is_err());
    }

    #[test]
    fn lengths_are_written_as_frames_read_them() {
        for len in [0, 1, 127, 128, 300, 16_383, 16_384, MAX_PACKET] {
            let mut wire = vec![0x90];
            put_length(len, &mut wire);
            let header = wire.len();
            wire.resize(header + len, 0);
            let f = frame(&wire).ok().flatten().map(|f| f.body);
            assert_eq!(f, Some(header..header + len), "{len}");
        }
    }

    #[test]
    fn strings_are_bounded_by_the_input() {
        assert_eq!(string(&[0, 2, b'a', b'b', b'c']), Some(&b"ab"[..]));
        assert_eq!(string(&[0, 4, b'a']), None);
        assert_eq!(string(&[0]), None);
    }
}
