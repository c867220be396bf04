//! `ternmq passwd [-c] [-D] [-i ITERATIONS] FILE USER`: adds, updates or deletes a
//! user in a password file.
//!
//! Owns: the terminal prompt (echo off through termios, asked twice) or the
//! password read from standard input when it is not a terminal, and the atomic
//! rewrite of the file (a temporary file of mode 0600 in the same directory,
//! synced, then renamed over the old one).
//! Must not: be used by the broker; it is an operator tool.

use super::hash::{HashError, PasswordHash, ITERATIONS_DEFAULT};
use super::passwd::{valid_user_name, PasswdError, PasswordFile};
use std::io::{BufRead, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Longest password read (bytes): the MQTT field's limit.
const PASSWORD_BYTES_MAX: usize = 65_535;

/// Arguments of `ternmq passwd`.
#[derive(Debug, clap::Args)]
pub struct PasswdArgs {
    /// Create a new file (an existing one is overwritten).
    #[arg(short = 'c', conflicts_with = "delete")]
    pub create: bool,
    /// Delete the user instead of setting a password.
    #[arg(short = 'D')]
    pub delete: bool,
    /// PBKDF2 iterations of the new hash.
    #[arg(short = 'i', long, default_value_t = ITERATIONS_DEFAULT)]
    pub iterations: u32,
    /// The password file.
    pub file: PathBuf,
    /// The user name.
    pub user: String,
}

/// Why `ternmq passwd` failed.
#[derive(Debug, thiserror::Error)]
pub enum PasswdCliError {
    #[error("invalid user name (empty, too long, or containing ':' or control characters)")]
    UserName,
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}: {1}")]
    Parse(PathBuf, PasswdError),
    #[error("user {0:?} is not in the file")]
    NoSuchUser(String),
    #[error("passwords do not match")]
    Mismatch,
    #[error("empty password")]
    Empty,
    #[error("password longer than {PASSWORD_BYTES_MAX} bytes")]
    TooLong,
    #[error("reading the password: {0}")]
    Read(std::io::Error),
    #[error(transparent)]
    Hash(#[from] HashError),
}

impl PasswdArgs {
    /// Runs the command, reading the password from the terminal or stdin.
    pub fn execute(&self) -> Result<(), PasswdCliError> {
        if !valid_user_name(&self.user) {
            return Err(PasswdCliError::UserName);
        }
        let mut file = if self.create {
            PasswordFile::default()
        } else {
            let text = std::fs::read_to_string(&self.file)
                .map_err(|e| PasswdCliError::Io(self.file.clone(), e))?;
            PasswordFile::parse(&text).map_err(|e| PasswdCliError::Parse(self.file.clone(), e))?
        };
        if self.delete {
            if !file.remove(&self.user) {
                return Err(PasswdCliError::NoSuchUser(self.user.clone()));
            }
        } else {
            let password = read_password()?;
            file.set(&self.user, PasswordHash::new(&password, self.iterations)?);
        }
        write_atomically(&self.file, file.render().as_bytes())
            .map_err(|e| PasswdCliError::Io(self.file.clone(), e))
    }
}

/// Prompts twice with echo off on a terminal; otherwise reads one line of stdin.
fn read_password() -> Result<Vec<u8>, PasswdCliError> {
    let stdin = std::io::stdin();
    // SAFETY: isatty only inspects the descriptor.
    let tty = unsafe { libc::isatty(libc::STDIN_FILENO) } == 1;
    let password = if tty {
        let first = prompt("Password: ")?;
        let second = prompt("Reenter password: ")?;
        if first != second {
            return Err(PasswdCliError::Mismatch);
        }
        first
    } else {
        let mut line = Vec::new();
        stdin
            .lock()
            .take(PASSWORD_BYTES_MAX as u64 + 2)
            .read_until(b'\n', &mut line)
            .map_err(PasswdCliError::Read)?;
        trim_newline(line)
    };
    if password.is_empty() {
        return Err(PasswdCliError::Empty);
    }
    if password.len() > PASSWORD_BYTES_MAX {
        return Err(PasswdCliError::TooLong);
    }
    Ok(password)
}

fn trim_newline(mut line: Vec<u8>) -> Vec<u8> {
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    line
}

/// Reads one line from the terminal on stdin with echo turned off (restored after).
fn prompt(text: &str) -> Result<Vec<u8>, PasswdCliError> {
    eprint!("{text}");
    let _ = std::io::stderr().flush();
    let fd = libc::STDIN_FILENO;
    // SAFETY: termios is plain data; tcgetattr fills it, tcsetattr reads it.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    let have_attrs = unsafe { libc::tcgetattr(fd, &mut saved) } == 0;
    if have_attrs {
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ECHONL;
        // SAFETY: as above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    }
    let mut line = Vec::new();
    let read = std::io::stdin()
        .lock()
        .take(PASSWORD_BYTES_MAX as u64 + 2)
        .read_until(b'\n', &mut line);
    if have_attrs {
        // SAFETY: restores what tcgetattr returned.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    }
    read.map_err(PasswdCliError::Read)?;
    Ok(trim_newline(line))
}

/// Writes `bytes` to `path` through a 0600 temporary file in the same directory
/// and a rename, so readers see the old file or the new one, never a part.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "passwd".into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_replaces_the_file_with_mode_0600() {
        let dir = std::env::temp_dir().join(format!("ternmq-passwd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pw");
        std::fs::write(&path, "old\n").unwrap();
        write_atomically(&path, b"new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let leftovers = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file left");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn newlines_are_trimmed() {
        assert_eq!(trim_newline(b"pw\r\n".to_vec()), b"pw");
        assert_eq!(trim_newline(b"pw\n".to_vec()), b"pw");
        assert_eq!(trim_newline(b"pw".to_vec()), b"pw");
    }
}
