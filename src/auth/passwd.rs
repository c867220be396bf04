//! The password file: one `user:hash` line per user, parsed with line numbers and
//! edited in memory for `ternmq passwd`.
//!
//! Owns: the file's grammar (blank lines and `#` comments are kept as they are;
//! every other line is `NAME:HASH` with a hash [`super::hash`] can read) and the
//! lookup by user name.
//! Must not: touch the file system or decide who may connect; reading and the
//! atomic write are in `auth/mod.rs` and `auth/cli.rs`.

use super::hash::{HashError, PasswordHash};
use std::collections::HashMap;

/// Longest user name (the MQTT field's limit).
pub const USER_BYTES_MAX: usize = 65_535;

/// Why a password file is invalid; `line` counts from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswdError {
    #[error("line {line}: expected NAME:HASH")]
    Syntax { line: usize },
    #[error("line {line}: empty user name")]
    EmptyUser { line: usize },
    #[error("line {line}: user {user:?} appears twice")]
    Duplicate { line: usize, user: String },
    #[error(
        "line {line}: not a password hash (plain-text passwords are refused; use `ternmq passwd`)"
    )]
    PlainText { line: usize },
    #[error("line {line}: {source}")]
    Hash { line: usize, source: HashError },
}

/// One line of the file, kept so that an edit rewrites it unchanged otherwise.
#[derive(Debug, Clone)]
enum Line {
    /// A blank or comment line, verbatim.
    Other(String),
    User(String, PasswordHash),
}

/// A parsed password file.
#[derive(Debug, Clone, Default)]
pub struct PasswordFile {
    lines: Vec<Line>,
    /// User name -> index into `lines`.
    by_user: HashMap<String, usize>,
}

impl PasswordFile {
    /// Parses the whole text; the first bad line is the error.
    pub fn parse(text: &str) -> Result<PasswordFile, PasswdError> {
        let mut file = PasswordFile::default();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                file.lines.push(Line::Other(raw.to_string()));
                continue;
            }
            let (user, hash) = trimmed
                .split_once(':')
                .ok_or(PasswdError::Syntax { line })?;
            if user.is_empty() {
                return Err(PasswdError::EmptyUser { line });
            }
            if !hash.starts_with('$') {
                return Err(PasswdError::PlainText { line });
            }
            let hash =
                PasswordHash::parse(hash).map_err(|source| PasswdError::Hash { line, source })?;
            if file.by_user.contains_key(user) {
                return Err(PasswdError::Duplicate {
                    line,
                    user: user.to_string(),
                });
            }
            file.by_user.insert(user.to_string(), file.lines.len());
            file.lines.push(Line::User(user.to_string(), hash));
        }
        Ok(file)
    }

    /// The stored hash of `user`.
    pub fn get(&self, user: &str) -> Option<&PasswordHash> {
        match self.lines.get(*self.by_user.get(user)?) {
            Some(Line::User(_, h)) => Some(h),
            _ => None,
        }
    }

    /// The iteration count of the first user's hash: what a verification costs
    /// here, so that an unknown user can be made to cost the same.
    pub fn typical_iterations(&self) -> Option<u32> {
        self.lines.iter().find_map(|l| match l {
            Line::User(_, h) => Some(h.iterations),
            Line::Other(_) => None,
        })
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.by_user.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_user.is_empty()
    }

    /// Adds `user`, or replaces its hash in place.
    pub fn set(&mut self, user: &str, hash: PasswordHash) {
        match self.by_user.get(user) {
            Some(&i) => {
                if let Some(slot) = self.lines.get_mut(i) {
                    *slot = Line::User(user.to_string(), hash);
                }
            }
            None => {
                self.by_user.insert(user.to_string(), self.lines.len());
                self.lines.push(Line::User(user.to_string(), hash));
            }
        }
    }

    /// Removes `user`; false if it was not there.
    pub fn remove(&mut self, user: &str) -> bool {
        let Some(i) = self.by_user.remove(user) else {
            return false;
        };
        self.lines.remove(i);
        for idx in self.by_user.values_mut() {
            if *idx > i {
                *idx -= 1;
            }
        }
        true
    }

    /// The file's text, one line per line, newline-terminated.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            match line {
                Line::Other(s) => out.push_str(s),
                Line::User(u, h) => {
                    out.push_str(u);
                    out.push(':');
                    out.push_str(&h.to_string());
                }
            }
            out.push('\n');
        }
        out
    }
}

/// Checks a user name given to `ternmq passwd`.
pub fn valid_user_name(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= USER_BYTES_MAX
        && !user.contains(':')
        && !user.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(pw: &str) -> PasswordHash {
        PasswordHash::new(pw.as_bytes(), 10).unwrap()
    }

    #[test]
    fn parse_render_round_trip_keeps_comments() {
        let a = hash("a");
        let b = hash("b");
        let text = format!("# users\nalice:{a}\n\nbob:{b}\n");
        let f = PasswordFile::parse(&text).unwrap();
        assert_eq!(f.len(), 2);
        assert!(f.get("alice").unwrap().verify(b"a"));
        assert!(f.get("bob").unwrap().verify(b"b"));
        assert!(f.get("carol").is_none());
        assert_eq!(f.render(), text);
    }

    #[test]
    fn set_and_remove() {
        let mut f =
            PasswordFile::parse(&format!("alice:{}\nbob:{}\n", hash("a"), hash("b"))).unwrap();
        f.set("alice", hash("new"));
        assert!(f.get("alice").unwrap().verify(b"new"));
        f.set("carol", hash("c"));
        assert!(f.remove("alice"));
        assert!(!f.remove("alice"));
        assert!(f.get("bob").unwrap().verify(b"b"));
        assert!(f.get("carol").unwrap().verify(b"c"));
        let again = PasswordFile::parse(&f.render()).unwrap();
        assert_eq!(again.len(), 2);
        assert!(again.get("carol").unwrap().verify(b"c"));
    }

    #[test]
    fn errors_name_their_line() {
        let good = hash("x").to_string();
        let cases: Vec<(String, PasswdError)> = vec![
            (
                format!("a:{good}\nnocolon\n"),
                PasswdError::Syntax { line: 2 },
            ),
            (format!("\n:{good}\n"), PasswdError::EmptyUser { line: 2 }),
            (
                "#c\n\nalice:secret\n".into(),
                PasswdError::PlainText { line: 3 },
            ),
            (
                format!("a:{good}\na:{good}\n"),
                PasswdError::Duplicate {
                    line: 2,
                    user: "a".into(),
                },
            ),
            (
                "a:$7$0$c2FsdA$AAAA\n".into(),
                PasswdError::Hash {
                    line: 1,
                    source: HashError::Iterations,
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(PasswordFile::parse(&text).unwrap_err(), want, "{text}");
        }
        let msg = PasswordFile::parse("x\n").unwrap_err().to_string();
        assert!(msg.starts_with("line 1:"), "{msg}");
    }

    #[test]
    fn user_names() {
        assert!(valid_user_name("alice"));
        assert!(valid_user_name("dev-1@site"));
        assert!(!valid_user_name(""));
        assert!(!valid_user_name("a:b"));
        assert!(!valid_user_name("a\nb"));
    }
}
