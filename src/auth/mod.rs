//! Authentication (password file, failed-login back-off) and authorization (ACL
//! file) for the broker.
//!
//! Owns: the password and ACL file formats, password hashing, the rules in force
//! ([`Rules`], swapped whole on reload) and the state the workers share about them
//! ([`AuthShared`]: the current rules behind a lock read only when their generation
//! changes, and the back-off table locked only on a CONNECT with credentials), and
//! each worker's own caches ([`gate::Gate`]).
//! Must not: touch sockets, threads or the clock (`now` is an argument), or put a
//! lock on the publish path. The only IO is reading the two files, at start and on
//! reload ([`AuthShared::reload`]), on the thread that asked for it, never a worker.
//!
//! - `hash`: PBKDF2-HMAC-SHA512 strings (ours and Mosquitto's `$7$`).
//! - `passwd`: the password file.
//! - `acl`: the ACL file, its compilation per connection, matching.
//! - `backoff`: failed logins per address.
//! - `gate`: one worker's login decisions and ACL checks.
//! - `cli`: the `ternmq passwd` subcommand (terminal and file IO).

pub mod acl;
pub mod backoff;
pub mod cli;
pub mod gate;
pub mod hash;
pub mod passwd;

use crate::config::Config;
use acl::{AclError, AclFile};
use backoff::Backoff;
use passwd::{PasswdError, PasswordFile};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

pub use acl::Access;
pub use gate::{ConnAuth, Gate, Login, Refusal};

/// Why the authentication files could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("password file {path}: {source}")]
    Passwd { path: PathBuf, source: PasswdError },
    #[error("ACL file {path}: {source}")]
    Acl { path: PathBuf, source: AclError },
}

/// The rules in force: replaced whole on reload, never edited in place.
#[derive(Debug, Default)]
pub struct Rules {
    /// None: no password file configured.
    pub passwords: Option<PasswordFile>,
    /// None: no ACL file configured, every topic allowed.
    pub acl: Option<AclFile>,
    pub allow_anonymous: bool,
}

impl Rules {
    /// Rules from file contents. `allow_anonymous` unset means: allowed unless a
    /// password file is configured (Mosquitto 2's default).
    pub fn from_texts(
        passwd: Option<&str>,
        acl: Option<&str>,
        allow_anonymous: Option<bool>,
    ) -> Result<Rules, AuthErrorKind> {
        let passwords = passwd
            .map(PasswordFile::parse)
            .transpose()
            .map_err(AuthErrorKind::Passwd)?;
        let acl = acl
            .map(AclFile::parse)
            .transpose()
            .map_err(AuthErrorKind::Acl)?;
        Ok(Rules {
            allow_anonymous: allow_anonymous.unwrap_or(passwords.is_none()),
            passwords,
            acl,
        })
    }
}

/// A parse error without its path (see [`Rules::from_texts`]).
#[derive(Debug)]
pub enum AuthErrorKind {
    Passwd(PasswdError),
    Acl(AclError),
}

/// What the workers share: where the files are, the rules in force, and the
/// back-off table.
#[derive(Debug)]
pub struct AuthShared {
    password_file: Option<PathBuf>,
    acl_file: Option<PathBuf>,
    allow_anonymous: Option<bool>,
    rules: RwLock<Arc<Rules>>,
    /// Bumped after each reload; workers compare it per check (no lock).
    generation: AtomicU64,
    backoff: Mutex<Backoff>,
}

impl AuthShared {
    /// Loads the files the configuration names. None when authentication is not
    /// configured at all (no files, anonymous allowed): the broker then has no
    /// gate and pays nothing per connection.
    pub fn load(cfg: &Config) -> Result<Option<Arc<AuthShared>>, AuthError> {
        if cfg.password_file.is_none()
            && cfg.acl_file.is_none()
            && cfg.allow_anonymous != Some(false)
        {
            return Ok(None);
        }
        let shared = AuthShared {
            password_file: cfg.password_file.clone(),
            acl_file: cfg.acl_file.clone(),
            allow_anonymous: cfg.allow_anonymous,
            rules: RwLock::new(Arc::new(Rules::default())),
            generation: AtomicU64::new(0),
            backoff: Mutex::new(Backoff::default()),
        };
        shared.reload()?;
        Ok(Some(Arc::new(shared)))
    }

    /// Shared state around given rules, with no files behind them (tests and
    /// benches; [`reload`](Self::reload) would replace them with empty rules).
    pub fn from_rules(rules: Rules) -> Arc<AuthShared> {
        Arc::new(AuthShared {
            password_file: None,
            acl_file: None,
            allow_anonymous: Some(rules.allow_anonymous),
            rules: RwLock::new(Arc::new(rules)),
            generation: AtomicU64::new(1),
            backoff: Mutex::new(Backoff::default()),
        })
    }

    /// Reads both files again and, if both are valid, puts them in force: new
    /// CONNECTs use them at once, connected clients from their next check. On any
    /// error the rules in force stay.
    pub fn reload(&self) -> Result<(), AuthError> {
        let read = |p: &Option<PathBuf>| -> Result<Option<String>, AuthError> {
            p.as_deref().map(read_file).transpose()
        };
        let passwd = read(&self.password_file)?;
        let acl = read(&self.acl_file)?;
        let rules = Rules::from_texts(passwd.as_deref(), acl.as_deref(), self.allow_anonymous)
            .map_err(|kind| match kind {
                AuthErrorKind::Passwd(source) => AuthError::Passwd {
                    path: self.password_file.clone().unwrap_or_default(),
                    source,
                },
                AuthErrorKind::Acl(source) => AuthError::Acl {
                    path: self.acl_file.clone().unwrap_or_default(),
                    source,
                },
            })?;
        self.replace(rules);
        Ok(())
    }

    /// Puts `rules` in force (what [`reload`](Self::reload) does after reading).
    pub fn replace(&self, rules: Rules) {
        let users = rules.passwords.as_ref().map_or(0, PasswordFile::len);
        let mut guard = self.rules.write().unwrap_or_else(|e| e.into_inner());
        *guard = Arc::new(rules);
        // Bumped under the lock, so a snapshot's generation names its rules.
        self.generation.fetch_add(1, Ordering::AcqRel);
        drop(guard);
        tracing::info!(users, "authentication rules loaded");
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The generation and the rules in force (read together under the lock).
    pub(crate) fn snapshot(&self) -> (u64, Arc<Rules>) {
        let rules = self.rules.read().unwrap_or_else(|e| e.into_inner());
        (self.generation(), rules.clone())
    }

    fn backoff_blocked(&self, ip: IpAddr, now: Instant) -> bool {
        let table = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        table.blocked(ip, now).is_some()
    }

    fn backoff_failure(&self, ip: IpAddr, now: Instant) {
        let mut table = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(until) = table.failure(ip, now) {
            let secs = until.saturating_duration_since(now).as_secs_f64();
            tracing::warn!(%ip, block_secs = secs, "repeated failed logins, backing off");
        }
    }
}

fn read_file(path: &Path) -> Result<String, AuthError> {
    std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests;
