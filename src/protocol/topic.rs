//! Validated topic names and topic filters (4.7).
//!
//! Owns: the only constructors of [`TopicName`] and [`TopicFilter`], so that any value
//! of these types obeys the specification's rules; and the reference matcher
//! [`TopicFilter::matches`] used by tests and cold paths (the broker's hot matcher is
//! the trie in `broker::topic_index`).
//!
//! Must not: know about subscriptions, sessions or IO.

use bytestring::ByteString;
use std::fmt;

/// Longest topic name or filter the broker accepts, in bytes (the UTF-8 string limit).
pub const TOPIC_LEN_MAX: usize = 65_535;

/// True when `raw` is 1 to 65,535 bytes of ASCII without U+0000, `+` or `#`: valid
/// UTF-8 and a valid topic name, proved in one pass (the common case of
/// [`TopicName::new`]).
pub(crate) fn is_plain_ascii_name(raw: &[u8]) -> bool {
    !raw.is_empty()
        && raw.len() <= TOPIC_LEN_MAX
        && raw
            .iter()
            .all(|&b| (1..0x80).contains(&b) && b != b'+' && b != b'#')
}

/// Why a string is not a valid topic name or filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is longer than 65535 bytes")]
    TooLong,
    #[error("topic contains U+0000")]
    NullChar,
    #[error("wildcard in a topic name")]
    WildcardInName,
    #[error("'#' is not alone in the last level of the filter")]
    BadMultiLevelWildcard,
    #[error("'+' does not fill a whole level of the filter")]
    BadSingleLevelWildcard,
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty); // [MQTT-4.7.3-1]
    }
    if s.len() > TOPIC_LEN_MAX {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::NullChar); // [MQTT-4.7.3-2]
    }
    Ok(())
}

/// A topic name as carried by PUBLISH: non-empty, no wildcards, no U+0000.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(ByteString);

impl TopicName {
    /// Validates `s` as a topic name ([MQTT-3.3.2-2], [MQTT-4.7.3-1], [MQTT-4.7.3-2]).
    pub fn new(s: impl Into<ByteString>) -> Result<Self, TopicError> {
        let s = s.into();
        check_common(&s)?;
        if s.bytes().any(|b| b == b'+' || b == b'#') {
            return Err(TopicError::WildcardInName);
        }
        Ok(TopicName(s))
    }

    /// The common case of [`TopicName::new`] in one pass over the bytes: `raw` is
    /// 1 to 65,535 bytes of ASCII without U+0000, `+` or `#`, so it is valid UTF-8
    /// and a valid topic name. Anything else comes back untouched for the caller to
    /// validate the slow way, which also tells what is wrong.
    pub fn from_plain_ascii(raw: bytes::Bytes) -> Result<TopicName, bytes::Bytes> {
        if !is_plain_ascii_name(&raw) {
            return Err(raw);
        }
        // SAFETY: every byte is in 1..0x80, so `raw` is ASCII and thus valid UTF-8.
        Ok(TopicName(unsafe { ByteString::from_bytes_unchecked(raw) }))
    }

    /// [`TopicName::from_plain_ascii`] for bytes already checked.
    ///
    /// # Safety
    /// `raw` must pass [`is_plain_ascii_name`] (then it is ASCII, so UTF-8, and a
    /// valid topic name); debug builds check.
    pub(crate) unsafe fn from_plain_ascii_unchecked(raw: bytes::Bytes) -> TopicName {
        debug_assert!(is_plain_ascii_name(&raw));
        // SAFETY: the caller guarantees ASCII, which is valid UTF-8.
        TopicName(unsafe { ByteString::from_bytes_unchecked(raw) })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_bytestring(&self) -> &ByteString {
        &self.0
    }

    /// A copy that owns its bytes instead of pinning a larger shared buffer.
    pub fn compacted(&self) -> TopicName {
        TopicName(ByteString::from(&*self.0))
    }

    /// Copies this topic and `payload` into one new buffer and returns both as slices
    /// of it: one allocation (and one reference count) where two separate copies need
    /// two of each. For messages held for long (queues, in-flight windows).
    pub fn compacted_with(&self, payload: &[u8]) -> (TopicName, bytes::Bytes) {
        let t = self.0.len();
        let mut all = concat(self.0.as_bytes(), payload);
        let payload = all.split_off(t);
        // SAFETY: the first `t` bytes are a copy of this topic, valid UTF-8.
        let topic = TopicName(unsafe { ByteString::from_bytes_unchecked(all) });
        (topic, payload)
    }

    /// The empty topic of an MQTT 5 PUBLISH that names its topic by alias alone
    /// (3.3.2.3.4). Only the decoder and clients build it; the broker replaces it with
    /// the aliased topic before routing, so no routed message has an empty topic.
    pub fn alias_only() -> TopicName {
        TopicName(ByteString::new())
    }

    /// True only for [`TopicName::alias_only`].
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Topics starting with `$` are reserved for the server ([MQTT-4.7.2-1]).
    pub fn is_dollar(&self) -> bool {
        self.0.starts_with('$')
    }
}

/// `a` then `b` in one new buffer. Up to 255 bytes (small telemetry, the common
/// case) the bytes and their reference count share one allocation
/// ([`Bytes::from_owner`] of an inline array); larger, a `Vec`-backed buffer, whose
/// first split allocates a shared header as well. The inline sizes step by 16 bytes,
/// as the allocator's chunks do, so a small message takes less memory than the two
/// allocations did (each inline size fills its chunk: 8 bytes of reference count, 1
/// of length, `N` of data, 8 of allocator header).
///
/// [`Bytes::from_owner`]: bytes::Bytes::from_owner
fn concat(a: &[u8], b: &[u8]) -> bytes::Bytes {
    macro_rules! by_size {
        ($n:expr; $($max:literal)*) => {
            match $n {
                $(n if n <= $max => Inline::<$max>::concat(a, b),)*
                n => {
                    let mut buf = bytes::BytesMut::with_capacity(n);
                    buf.extend_from_slice(a);
                    buf.extend_from_slice(b);
                    buf.freeze()
                }
            }
        };
    }
    by_size!(a.len() + b.len(); 15 31 47 63 79 95 111 127 143 159 175 191 207 223 239 255)
}

/// Up to `N` (at most 255) bytes stored inline, for [`concat`].
struct Inline<const N: usize> {
    len: u8,
    buf: [u8; N],
}

impl<const N: usize> Inline<N> {
    fn concat(a: &[u8], b: &[u8]) -> bytes::Bytes {
        let len = a.len() + b.len();
        debug_assert!(len <= N && N <= u8::MAX as usize);
        let mut buf = [0u8; N];
        buf[..a.len()].copy_from_slice(a);
        buf[a.len()..len].copy_from_slice(b);
        bytes::Bytes::from_owner(Inline {
            len: len as u8,
            buf,
        })
    }
}

impl<const N: usize> AsRef<[u8]> for Inline<N> {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A topic filter as carried by SUBSCRIBE/UNSUBSCRIBE: non-empty, no U+0000, `#` only
/// as the whole last level, `+` only as a whole level ([MQTT-4.7.1-2], [MQTT-4.7.1-3]).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter(ByteString);

impl TopicFilter {
    /// A copy that owns its bytes instead of pinning a larger shared buffer (the
    /// worker's read buffer, for a filter decoded from SUBSCRIBE).
    pub fn compacted(&self) -> TopicFilter {
        TopicFilter(ByteString::from(&*self.0))
    }

    pub fn new(s: impl Into<ByteString>) -> Result<Self, TopicError> {
        let s = s.into();
        check_common(&s)?;
        let mut levels = s.split('/').peekable();
        while let Some(level) = levels.next() {
            if level.contains('#') && (level != "#" || levels.peek().is_some()) {
                return Err(TopicError::BadMultiLevelWildcard);
            }
            if level.contains('+') && level != "+" {
                return Err(TopicError::BadSingleLevelWildcard);
            }
        }
        Ok(TopicFilter(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_bytestring(&self) -> &ByteString {
        &self.0
    }

    /// A shared subscription `$share/{group}/{filter}` (4.8.2) split into its share
    /// name and inner filter. `None` when the filter does not start with `$share/`;
    /// `Some(Err(()))` when it does but breaks [MQTT-4.8.2-1]/[MQTT-4.8.2-2] (empty
    /// share name, or no `/` and filter after it).
    #[allow(clippy::result_unit_err)]
    pub fn shared(&self) -> Option<Result<(&str, TopicFilter), ()>> {
        let rest = self.0.strip_prefix("$share/")?;
        let Some((group, filter)) = rest.split_once('/') else {
            return Some(Err(()));
        };
        // '+' and '#' in the share name already fail TopicFilter::new unless they fill
        // the level, which a share name may not do either.
        if group.is_empty() || group.contains(['+', '#']) {
            return Some(Err(()));
        }
        match TopicFilter::new(self.0.slice_ref(filter)) {
            Ok(f) => Some(Ok((group, f))),
            Err(_) => Some(Err(())),
        }
    }

    /// True when the filter contains `+` or `#`.
    pub fn has_wildcard(&self) -> bool {
        self.0.bytes().any(|b| b == b'+' || b == b'#')
    }

    /// The reference matcher (4.7): level by level, `+` matches one level, `#` matches
    /// the rest including the parent level (`a/#` matches `a`), and a filter starting
    /// with a wildcard never matches a topic starting with `$` ([MQTT-4.7.2-1]).
    pub fn matches(&self, topic: &TopicName) -> bool {
        filter_matches(self.as_str(), topic.as_str())
    }
}

/// [`TopicFilter::matches`] on plain strings; both must already be valid.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(TopicName::new("a/b").is_ok());
        assert!(TopicName::new("/").is_ok());
        assert_eq!(TopicName::new(""), Err(TopicError::Empty)); // [MQTT-4.7.3-1]
        assert_eq!(TopicName::new("a/+"), Err(TopicError::WildcardInName)); // [MQTT-3.3.2-2]
        assert_eq!(TopicName::new("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(TopicName::new("a\0b"), Err(TopicError::NullChar)); // [MQTT-4.7.3-2]
    }

    #[test]
    fn topic_filters() {
        for ok in ["#", "+", "a/#", "+/+", "a/+/b", "/", "+/", "$SYS/#", "a//b"] {
            assert!(TopicFilter::new(ok).is_ok(), "{ok}");
        }
        // [MQTT-4.7.1-2]
        for bad in ["a#", "a/#/b", "#/", "a/b#"] {
            assert_eq!(
                TopicFilter::new(bad),
                Err(TopicError::BadMultiLevelWildcard),
                "{bad}"
            );
        }
        // [MQTT-4.7.1-3]
        for bad in ["a+", "+a/b", "a/b+"] {
            assert_eq!(
                TopicFilter::new(bad),
                Err(TopicError::BadSingleLevelWildcard),
                "{bad}"
            );
        }
        assert_eq!(TopicFilter::new(""), Err(TopicError::Empty));
    }

    #[test]
    fn plain_ascii_topics_take_the_short_way_and_others_do_not() {
        let ok = TopicName::from_plain_ascii(bytes::Bytes::from_static(b"a/b c/~")).unwrap();
        assert_eq!(ok.as_str(), "a/b c/~");
        for bad in [
            &b""[..],
            b"a/+",
            b"a/#",
            b"a\0b",
            "caf\u{e9}".as_bytes(),
            b"\xff",
        ] {
            let raw = bytes::Bytes::copy_from_slice(bad);
            assert_eq!(TopicName::from_plain_ascii(raw.clone()), Err(raw));
        }
    }

    #[test]
    fn compacting_keeps_every_byte_at_every_size() {
        let t = TopicName::new("d/1").unwrap();
        let data: Vec<u8> = (0..400u32).map(|i| (i * 7 + 3) as u8).collect();
        for n in 0..data.len() {
            let (topic, payload) = t.compacted_with(&data[..n]);
            assert_eq!(topic.as_str(), "d/1", "{n}");
            assert_eq!(&payload[..], &data[..n], "{n}");
            // Clones and slices outlive the original handles.
            let copy = payload.slice(n / 2..);
            drop(payload);
            drop(topic);
            assert_eq!(&copy[..], &data[n / 2..n], "{n}");
        }
    }

    #[test]
    fn compacted_with_shares_one_buffer() {
        let t = TopicName::new("a/b").unwrap();
        let (topic, payload) = t.compacted_with(b"xyz");
        assert_eq!(topic, t);
        assert_eq!(&payload[..], b"xyz");
        let (empty_topic, empty) = t.compacted_with(b"");
        assert_eq!(empty_topic.as_str(), "a/b");
        assert!(empty.is_empty());
    }

    #[test]
    fn shared_filters() {
        let f = TopicFilter::new("$share/g1/a/+").unwrap();
        let (g, inner) = f.shared().unwrap().unwrap();
        assert_eq!((g, inner.as_str()), ("g1", "a/+"));
        assert!(TopicFilter::new("a/b").unwrap().shared().is_none());
        assert!(TopicFilter::new("$sharex/g/a").unwrap().shared().is_none());
        for bad in [
            "$share/g",
            "$share//a",
            "$share/+/a",
            "$share/#",
            "$share/g/",
        ] {
            let Ok(f) = TopicFilter::new(bad) else {
                continue;
            };
            assert_eq!(f.shared(), Some(Err(())), "{bad}");
        }
    }

    #[test]
    fn matching() {
        let cases = [
            ("sport/#", "sport", true),
            ("sport/#", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("#", "a/b/c", true),
            ("#", "$SYS/x", false), // [MQTT-4.7.2-1]
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
        ];
        for (f, t, want) in cases {
            let f = TopicFilter::new(f).unwrap();
            let t = TopicName::new(t).unwrap();
            assert_eq!(f.matches(&t), want, "{f} vs {t}");
        }
    }
}
