//! Password hashes: PBKDF2-HMAC-SHA512 with a random salt, stored as a
//! self-describing string, and their constant-time verification.
//!
//! Owns: the hash string formats and the base64 they use, salt generation, and the
//! comparison of derived keys.
//! Must not: read files, know users, or decide who may connect; a hash here is a
//! value, [`super::passwd`] owns the file they live in.
//!
//! Two formats are read, one is written:
//! - `$pbkdf2-sha512$i=ITERATIONS$SALT$HASH` (PHC string format, B64 without
//!   padding), written by `ternmq passwd`;
//! - `$7$ITERATIONS$SALT$HASH` (standard base64 with padding), what
//!   `mosquitto_passwd` writes, so Mosquitto password files work unchanged.
//!
//! Both are PBKDF2-HMAC-SHA512; the iteration count is part of the string, so
//! raising the default later leaves existing entries valid.

use sha2::Sha512;
use subtle::ConstantTimeEq;

/// Iterations `ternmq passwd` uses for new hashes (`-i` chooses per user). About
/// 6.5 ms of one core per verification in a release build on the development
/// machine (`cargo bench --bench auth`; ARCHITECTURE.md, "Authentication"): each
/// offline guess against a stolen file costs that much, while a worker admitting a
/// storm of first-time logins stalls at most two verifications per turn, and a
/// reconnecting device is verified from the cache in microseconds.
pub const ITERATIONS_DEFAULT: u32 = 10_000;
/// Fewest iterations accepted in a hash (Mosquitto writes 101).
pub const ITERATIONS_MIN: u32 = 1;
/// Most iterations accepted in a hash: a crafted file cannot stall a worker for
/// minutes per CONNECT.
pub const ITERATIONS_MAX: u32 = 10_000_000;
/// Salt bytes of new hashes.
pub const SALT_BYTES: usize = 16;
/// Bytes of a derived key (SHA-512 output).
pub const KEY_BYTES: usize = 64;
/// Longest salt accepted when reading.
const SALT_BYTES_MAX: usize = 256;

/// Why a hash string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("unknown hash format (expected $pbkdf2-sha512$i=N$SALT$HASH or $7$N$SALT$HASH)")]
    Format,
    #[error("iteration count must be between {ITERATIONS_MIN} and {ITERATIONS_MAX}")]
    Iterations,
    #[error("invalid base64 in salt or hash")]
    Base64,
    #[error("salt must be 1 to {SALT_BYTES_MAX} bytes")]
    Salt,
    #[error("hash must be {KEY_BYTES} bytes")]
    KeyLength,
    #[error("the operating system gave no random bytes: {0}")]
    Random(String),
}

/// Which textual form a hash was read from (it is written back the same way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Phc,
    Mosquitto,
}

/// A parsed PBKDF2-HMAC-SHA512 hash.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub key: [u8; KEY_BYTES],
    pub format: Format,
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys stay out of logs.
        f.debug_struct("PasswordHash")
            .field("iterations", &self.iterations)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl PasswordHash {
    /// Hashes `password` with a fresh random salt.
    pub fn new(password: &[u8], iterations: u32) -> Result<PasswordHash, HashError> {
        if !(ITERATIONS_MIN..=ITERATIONS_MAX).contains(&iterations) {
            return Err(HashError::Iterations);
        }
        let mut salt = vec![0u8; SALT_BYTES];
        getrandom::fill(&mut salt).map_err(|e| HashError::Random(e.to_string()))?;
        let key = derive(password, &salt, iterations);
        Ok(PasswordHash {
            iterations,
            salt,
            key,
            format: Format::Phc,
        })
    }

    /// Parses either format.
    pub fn parse(s: &str) -> Result<PasswordHash, HashError> {
        let parts: Vec<&str> = s.split('$').collect();
        let (format, iterations, salt, key) = match parts.as_slice() {
            ["", "pbkdf2-sha512", i, salt, key] => {
                let i = i.strip_prefix("i=").ok_or(HashError::Format)?;
                (Format::Phc, i, *salt, *key)
            }
            ["", "7", i, salt, key] => (Format::Mosquitto, *i, *salt, *key),
            _ => return Err(HashError::Format),
        };
        let iterations: u32 = iterations.parse().map_err(|_| HashError::Iterations)?;
        if !(ITERATIONS_MIN..=ITERATIONS_MAX).contains(&iterations) {
            return Err(HashError::Iterations);
        }
        let salt = base64_decode(salt).ok_or(HashError::Base64)?;
        if salt.is_empty() || salt.len() > SALT_BYTES_MAX {
            return Err(HashError::Salt);
        }
        let key = base64_decode(key).ok_or(HashError::Base64)?;
        let key: [u8; KEY_BYTES] = key.try_into().map_err(|_| HashError::KeyLength)?;
        Ok(PasswordHash {
            iterations,
            salt,
            key,
            format,
        })
    }

    /// True if `password` derives the stored key; the comparison takes the same
    /// time wherever the keys differ.
    pub fn verify(&self, password: &[u8]) -> bool {
        let derived = derive(password, &self.salt, self.iterations);
        derived.ct_eq(&self.key).into()
    }
}

impl std::fmt::Display for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.format {
            Format::Phc => write!(
                f,
                "$pbkdf2-sha512$i={}${}${}",
                self.iterations,
                base64_encode(&self.salt, false),
                base64_encode(&self.key, false)
            ),
            Format::Mosquitto => write!(
                f,
                "$7${}${}${}",
                self.iterations,
                base64_encode(&self.salt, true),
                base64_encode(&self.key, true)
            ),
        }
    }
}

/// PBKDF2-HMAC-SHA512.
fn derive(password: &[u8], salt: &[u8], iterations: u32) -> [u8; KEY_BYTES] {
    let mut key = [0u8; KEY_BYTES];
    pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut key);
    key
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 (RFC 4648 alphabet), with or without `=` padding.
fn base64_encode(bytes: &[u8], pad: bool) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..4 {
            if i < chars {
                let idx = ((n >> (18 - 6 * i)) & 63) as usize;
                out.push(char::from(ALPHABET[idx]));
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64; trailing `=` padding is optional. None on any other
/// character or an impossible length.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_every_length() {
        for len in 0..40usize {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            for pad in [false, true] {
                let s = base64_encode(&bytes, pad);
                assert_eq!(base64_decode(&s).unwrap(), bytes, "{s}");
            }
        }
        assert_eq!(base64_encode(b"foobar", true), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo", true), "Zm8=");
        assert_eq!(base64_encode(b"fo", false), "Zm8");
        assert!(base64_decode("Zm9v!").is_none());
        assert!(base64_decode("Z").is_none());
    }

    #[test]
    fn hash_verify_round_trip() {
        let h = PasswordHash::new(b"correct horse", 1000).unwrap();
        assert!(h.verify(b"correct horse"));
        assert!(!h.verify(b"correct hors"));
        assert!(!h.verify(b""));
        let text = h.to_string();
        assert!(text.starts_with("$pbkdf2-sha512$i=1000$"), "{text}");
        let back = PasswordHash::parse(&text).unwrap();
        assert_eq!(back, h);
        assert!(back.verify(b"correct horse"));
    }

    #[test]
    fn salts_differ() {
        let a = PasswordHash::new(b"pw", 10).unwrap();
        let b = PasswordHash::new(b"pw", 10).unwrap();
        assert_ne!(a.salt, b.salt);
        assert_ne!(a.key, b.key);
    }

    #[test]
    fn reads_mosquitto_passwd_output() {
        // Written by `mosquitto_passwd -b FILE alice secret` (Mosquitto 2.0.11).
        let line = "$7$101$HRmFHgjiN4IjRYO6$d2F8ZRzUV06q5lEiUdAm72vVj/vr7HzH8UrQTMANF2LwokA8CkT8iC3yI5G3Y9dXt+hNK4b4S/tKzFIMHVvASQ==";
        let h = PasswordHash::parse(line).unwrap();
        assert_eq!(h.iterations, 101);
        assert_eq!(h.format, Format::Mosquitto);
        assert!(h.verify(b"secret"));
        assert!(!h.verify(b"Secret"));
        assert_eq!(h.to_string(), line);
    }

    #[test]
    fn malformed_hashes_are_refused() {
        let key = base64_encode(&[1u8; KEY_BYTES], false);
        let cases: Vec<(String, HashError)> = vec![
            ("plain text".into(), HashError::Format),
            ("$6$rounds=5000$abc$def".into(), HashError::Format),
            (
                format!("$pbkdf2-sha512$100$c2FsdA${key}"),
                HashError::Format,
            ),
            (
                format!("$pbkdf2-sha512$i=0$c2FsdA${key}"),
                HashError::Iterations,
            ),
            (
                format!("$pbkdf2-sha512$i=x$c2FsdA${key}"),
                HashError::Iterations,
            ),
            (
                format!("$7$99999999999$c2FsdA${key}"),
                HashError::Iterations,
            ),
            (format!("$7$10$c2F*dA${key}"), HashError::Base64),
            (format!("$7$10$${key}"), HashError::Salt),
            ("$7$10$c2FsdA$AAAA".into(), HashError::KeyLength),
        ];
        for (s, want) in cases {
            assert_eq!(PasswordHash::parse(&s), Err(want), "{s}");
        }
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let h = PasswordHash::new(b"pw", 10).unwrap();
        let shown = format!("{h:?}");
        assert!(!shown.contains("key"), "{shown}");
    }
}
