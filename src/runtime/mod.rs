//! The runtime: the only code that performs IO, spawns threads or reads the clock.
//!
//! Owns: the worker threads (one core-pinned `mio` event loop each), the listeners
//! (plain and TLS, [`tls`]), the channel mesh between workers with one `Waker` per worker, and the lifecycle
//! ([`start`], [`BrokerHandle::stop`]).
//! Must not: make protocol decisions. It reads bytes, hands decoded packets to its
//! worker's [`Shard`](crate::broker::shard::Shard), and carries out the effects the
//! shard returns.

mod admission;
pub(crate) mod busy_poll;
mod cert_name;
mod io;
pub mod tls;
mod worker;

use crate::broker::latency::Latency;
use crate::broker::mesh::Batch;
use crate::broker::registry::Registry;
use crate::broker::WorkerId;
use crate::config::{Config, ConfigError};
use crossbeam_channel::{unbounded, Receiver, Sender};
use mio::{Poll, Waker};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Token of each worker's waker.
pub(crate) const WAKER_TOKEN: mio::Token = mio::Token(usize::MAX);
/// Listener `i` on worker 0 uses token `LISTENER_TOKEN_BASE - i`.
pub(crate) const LISTENER_TOKEN_BASE: usize = usize::MAX - 1;

/// Emptied cross-worker batches a worker keeps for reuse, at most.
const MESH_SPARES: usize = 8;

/// What travels over the mesh channels.
pub(crate) enum Envelope {
    /// One turn's messages from one worker to another; `created_at` is the start of
    /// the origin's turn that produced them.
    Batch {
        from: WorkerId,
        created_at: std::time::Instant,
        batch: Batch,
    },
    /// An operator request, off the data path.
    Control(Control),
    /// A freshly accepted connection handed to its worker; `tls` when it came from a
    /// TLS listener (the owning worker runs the handshake).
    NewConn {
        stream: std::net::TcpStream,
        tls: bool,
    },
}

/// Operator requests to a worker.
pub(crate) enum Control {
    /// Send a copy of the worker's latency histograms.
    Latency(Sender<Latency>),
    /// Clear the worker's latency histograms.
    ResetLatency,
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot create event loop: {0}")]
    Poll(std::io::Error),
    #[error("cannot spawn worker thread: {0}")]
    Spawn(std::io::Error),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
}

/// A running broker. Dropping it stops the broker and joins its threads.
pub struct BrokerHandle {
    /// Plain listeners first, then TLS listeners.
    addrs: Vec<SocketAddr>,
    /// How many of `addrs` are plain TCP.
    plain_listeners: usize,
    wakers: Vec<Arc<Waker>>,
    senders: Vec<Sender<Envelope>>,
    shutdown: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    auth: Option<Arc<crate::auth::AuthShared>>,
}

impl BrokerHandle {
    /// Reads the password and ACL files again (what SIGHUP does). New CONNECTs use
    /// the new rules, connected clients from their next publish, subscription or
    /// delivery; a connection whose login the new rules would refuse (user removed
    /// or given a new password, anonymous access turned off) is closed at once, its
    /// worker woken to do it. On error the old rules stay in force. Without
    /// authentication configured there is nothing to reload.
    pub fn reload_auth(&self) -> Result<(), crate::auth::AuthError> {
        let Some(auth) = &self.auth else {
            return Ok(());
        };
        auth.reload()?;
        for w in &self.wakers {
            if let Err(e) = w.wake() {
                tracing::warn!(error = %e, "cannot wake worker after reload");
            }
        }
        Ok(())
    }

    /// The bound listener addresses (with the real port when 0 was asked for).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The first listener's address (a plain one if there is any).
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// The bound TLS listener addresses.
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.addrs[self.plain_listeners..]
    }

    /// Every worker's latency histograms, merged (waits up to a second per worker).
    pub fn latency(&self) -> Latency {
        let (tx, rx) = crossbeam_channel::bounded(self.senders.len());
        let mut asked = 0;
        for (s, w) in self.senders.iter().zip(&self.wakers) {
            if s.send(Envelope::Control(Control::Latency(tx.clone())))
                .is_ok()
            {
                asked += 1;
                let _ = w.wake();
            }
        }
        let mut merged = Latency::default();
        for _ in 0..asked {
            match rx.recv_timeout(std::time::Duration::from_secs(1)) {
                Ok(l) => merged.merge(&l),
                Err(_) => break,
            }
        }
        merged
    }

    /// Clears every worker's latency histograms.
    pub fn reset_latency(&self) {
        for (s, w) in self.senders.iter().zip(&self.wakers) {
            if s.send(Envelope::Control(Control::ResetLatency)).is_ok() {
                let _ = w.wake();
            }
        }
    }

    /// Asks every worker to stop; returns at once.
    pub fn request_stop(&self) {
        self.shutdown.store(true, Ordering::Release);
        for w in &self.wakers {
            if let Err(e) = w.wake() {
                tracing::warn!(error = %e, "cannot wake worker for shutdown");
            }
        }
    }

    /// Stops the broker and waits for its workers to finish.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    /// As [`stop`](Self::stop), and says how many worker threads had panicked
    /// (`Err(n)`), for tests that must fail on a panic in a worker.
    pub fn stop_checked(mut self) -> Result<(), usize> {
        match self.stop_inner() {
            0 => Ok(()),
            n => Err(n),
        }
    }

    fn stop_inner(&mut self) -> usize {
        self.request_stop();
        let mut panicked = 0;
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a worker thread panicked");
                panicked += 1;
            }
        }
        panicked
    }

    /// Blocks until every worker has exited (after [`request_stop`](Self::request_stop)).
    pub fn join(mut self) {
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
    }
}

impl Drop for BrokerHandle {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Starts a broker with `cfg` and returns once every listener is bound.
pub fn start(cfg: Config) -> Result<BrokerHandle, StartError> {
    cfg.validate()?;
    let auth = crate::auth::AuthShared::load(&cfg)?;
    raise_fd_limit();
    let workers = cfg.effective_workers();
    let tls_config = tls::server_config(&cfg)?;
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    let plain_listeners = cfg.listen.len();
    for addr in cfg.listen.iter().chain(&cfg.tls_listeners()) {
        let l = io::bind(*addr).map_err(|source| StartError::Listen {
            addr: *addr,
            source,
        })?;
        addrs.push(l.local_addr().map_err(|source| StartError::Listen {
            addr: *addr,
            source,
        })?);
        listeners.push(l);
    }
    let mut polls = Vec::new();
    let mut wakers = Vec::new();
    for _ in 0..workers {
        let poll = Poll::new().map_err(StartError::Poll)?;
        let waker = Waker::new(poll.registry(), WAKER_TOKEN).map_err(StartError::Poll)?;
        polls.push(poll);
        wakers.push(Arc::new(waker));
    }
    let (senders, receivers): (Vec<Sender<Envelope>>, Vec<Receiver<Envelope>>) =
        (0..workers).map(|_| unbounded()).unzip();
    // Spare batches each worker may hold (see `worker::Mesh::spares`): enough for a
    // receiver that falls a few turns behind on a shared core, few enough to bound
    // the memory they keep.
    let (spare_homes, spares): (Vec<Sender<Batch>>, Vec<Receiver<Batch>>) = (0..workers)
        .map(|_| crossbeam_channel::bounded(MESH_SPARES))
        .unzip();
    let backlog: Vec<Arc<std::sync::atomic::AtomicUsize>> = (0..workers)
        .map(|_| Arc::new(std::sync::atomic::AtomicUsize::new(0)))
        .collect();
    let cfg = Arc::new(cfg);
    let registry = Arc::new(Registry::new());
    let shutdown = Arc::new(AtomicBool::new(false));
    let open_conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cores = if cfg.pin_cores {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    for (id, ((poll, rx), spares)) in polls.into_iter().zip(receivers).zip(spares).enumerate() {
        let mesh = worker::Mesh {
            rx,
            peers: senders.clone(),
            wakers: wakers.clone(),
            backlog: backlog.clone(),
            spares,
            spare_homes: spare_homes.clone(),
        };
        let my_listeners = if id == 0 {
            std::mem::take(&mut listeners)
        } else {
            Vec::new()
        };
        let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
        let (cfg, registry, stop) = (cfg.clone(), registry.clone(), shutdown.clone());
        let auth = auth.clone();
        let listeners = worker::Listeners {
            sockets: my_listeners,
            plain: plain_listeners,
            tls: tls_config.clone(),
            open_conns: open_conns.clone(),
        };
        let t = std::thread::Builder::new()
            .name(format!("ternmq-w{id}"))
            .spawn(move || {
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core) {
                        tracing::warn!(worker = id, "cannot pin worker to core {}", core.id);
                    }
                }
                let w = worker::Worker::new(
                    id, workers, cfg, registry, stop, poll, mesh, listeners, auth,
                );
                match w {
                    Ok(mut w) => w.run(),
                    Err(e) => tracing::error!(worker = id, error = %e, "worker failed to start"),
                }
            })
            .map_err(|e| {
                // Stop the workers already running before giving up.
                shutdown.store(true, Ordering::Release);
                for w in &wakers {
                    let _ = w.wake();
                }
                StartError::Spawn(e)
            });
        let t = match t {
            Ok(t) => t,
            Err(e) => {
                for t in threads {
                    let _ = t.join();
                }
                return Err(e);
            }
        };
        threads.push(t);
    }
    tracing::info!(
        plain = ?&addrs[..plain_listeners],
        tls = ?&addrs[plain_listeners..],
        workers,
        "ternmq listening"
    );
    Ok(BrokerHandle {
        addrs,
        plain_listeners,
        wakers,
        senders,
        shutdown,
        threads,
        auth,
    })
}

/// Raises the soft open-file limit to the hard limit, as a broker with many
/// connections needs, and says so.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            let old = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                tracing::info!(from = old, to = lim.rlim_max, "raised open-file limit");
            }
        }
    }
}
