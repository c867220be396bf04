//! TLS on the broker's listeners: the rustls server configuration and the TLS state of
//! one connection, driven by the worker that owns the connection.
//!
//! Owns: loading the PEM certificate chain, key and client CA ([`server_config`]);
//! [`TlsConn`], which turns ciphertext read from a socket into plaintext for the
//! worker's decode path and plaintext from the shard's write buffer into records.
//! Must not: block, spawn, or decide anything about MQTT. The handshake is advanced
//! by the same non-blocking reads and writes as the traffic, in the worker's event
//! loop; a handshake that stalls is ended by the shard's CONNECT timeout, which runs
//! from the moment the TCP connection is adopted.

use super::cert_name::subject_common_name;
use crate::config::Config;
use bytes::BytesMut;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, ServerConnection, WebPkiClientVerifier};
use rustls::RootCertStore;
use std::io::{self, BufRead, Read, Write};
use std::path::Path;
use std::sync::Arc;

/// Why the TLS listeners could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("{what} file {path}: no usable PEM item ({detail})")]
    Pem {
        what: &'static str,
        path: String,
        detail: String,
    },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA: {0}")]
    ClientCa(#[from] rustls::server::VerifierBuilderError),
}

/// The crypto provider: ring only (no aws-lc-rs, no OpenSSL).
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// Every certificate of a PEM file; an error if there is none.
pub(crate) fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(what, path)?;
    let pem_err = |detail: String| TlsError::Pem {
        what,
        path: path.display().to_string(),
        detail,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err("no CERTIFICATE section".to_string()));
    }
    Ok(certs)
}

/// The rustls configuration of the TLS listeners, or None when TLS is not configured.
pub(crate) fn server_config(cfg: &Config) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    let (Some(cert_path), Some(key_path)) = (&cfg.cert_file, &cfg.key_file) else {
        return Ok(None);
    };
    let certs = load_certs("certificate", cert_path)?;
    let key_pem = read_file("key", key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        what: "key",
        path: key_path.display().to_string(),
        detail: e.to_string(),
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match &cfg.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for ca in load_certs("client CA", ca_path)? {
                roots.add(ca)?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(certs, key)?;
    Ok(Some(Arc::new(config)))
}

/// What one [`TlsConn::read`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TlsRead {
    /// Ciphertext bytes taken from the socket.
    pub wire_bytes: usize,
    /// Plaintext bytes appended to the output buffer.
    pub plain_bytes: usize,
    /// The peer has closed (end of stream or close_notify).
    pub closed: bool,
}

/// The TLS side of one connection. Lives in the worker's side table, keyed by slot,
/// so a plain connection's `IoConn` carries no TLS field at all.
pub(crate) struct TlsConn {
    conn: ServerConnection,
    /// The client certificate's subject CN, set once the handshake is done when
    /// `use_identity_as_username` is on: the MQTT user name of this connection (the
    /// worker puts it into the CONNECT it hands to the shard).
    pub identity: Option<Arc<str>>,
    /// The handshake has completed and the identity (if wanted) was looked at.
    pub established: bool,
}

impl TlsConn {
    pub(crate) fn new(config: &Arc<ServerConfig>) -> Result<TlsConn, rustls::Error> {
        Ok(TlsConn {
            conn: ServerConnection::new(config.clone())?,
            identity: None,
            established: false,
        })
    }

    /// Reads one chunk of ciphertext from `sock`, processes it, and appends whatever
    /// plaintext it yields to `out`. `Err(WouldBlock)` when the socket had nothing;
    /// `Err(InvalidData)` for a TLS failure (the alert is queued: flush it, then close).
    pub(crate) fn read(&mut self, sock: &mut impl Read, out: &mut BytesMut) -> io::Result<TlsRead> {
        let wire_bytes = loop {
            match self.conn.read_tls(sock) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        let state = self
            .conn
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut left = state.plaintext_bytes_to_read();
        let closed = wire_bytes == 0 || state.peer_has_closed();
        let mut plain_bytes = 0;
        if left > 0 {
            out.reserve(left);
        }
        while left > 0 {
            let mut reader = self.conn.reader();
            let chunk = match reader.fill_buf() {
                Ok(chunk) if !chunk.is_empty() => chunk,
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            let n = chunk.len().min(left);
            out.extend_from_slice(&chunk[..n]);
            reader.consume(n);
            left -= n;
            plain_bytes += n;
        }
        Ok(TlsRead {
            wire_bytes,
            plain_bytes,
            closed,
        })
    }

    /// Records (handshake, alerts, data) are waiting to be written.
    pub(crate) fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    pub(crate) fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Writes waiting records to `sock` until done (`Ok(true)`) or the socket is full
    /// (`Ok(false)`).
    pub(crate) fn write_tls(&mut self, sock: &mut impl Write) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Encrypts as much of `plain` as rustls will buffer (its default limit is 64 KiB
    /// of pending records) and returns how many bytes it took.
    pub(crate) fn write_plain(&mut self, plain: &[u8]) -> usize {
        self.conn.writer().write(plain).unwrap_or(0)
    }

    /// Queues a close_notify alert (the connection is ending).
    pub(crate) fn send_close_notify(&mut self) {
        self.conn.send_close_notify();
    }

    /// Once the handshake is done, reads the client certificate's CN if
    /// `want_identity`. Returns false if the identity is wanted but there is none (the
    /// connection must be closed: it cannot be given a user name).
    pub(crate) fn establish(&mut self, want_identity: bool) -> bool {
        if self.established || self.conn.is_handshaking() {
            return true;
        }
        self.established = true;
        if !want_identity {
            return true;
        }
        self.identity = self
            .conn
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|cert| subject_common_name(cert))
            .map(Arc::from);
        self.identity.is_some()
    }
}
