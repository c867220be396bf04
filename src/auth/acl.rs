//! Access control lists in Mosquitto's `acl_file` format: parsing (with line
//! numbers), compiling the rules that apply to one connection (`%c`/`%u`
//! substituted once), and matching topics and subscription filters against them.
//!
//! Owns: the grammar, the precedence (deny before grant, deny by default), and the
//! per-connection decision cache.
//! Must not: read files, take locks or know about connections beyond their user
//! name and client id. Everything here is plain data owned by one worker, so the
//! publish path shares nothing.
//!
//! Grammar (one rule per line; blank lines and lines starting with `#` are ignored):
//! - `user NAME`: the `topic` lines that follow apply to clients authenticated as
//!   NAME; `topic` lines before the first `user` line apply to anonymous clients.
//! - `topic [read|write|readwrite|deny] TOPIC`: without an access word the rule is
//!   `readwrite` and the rest of the line is the topic (it may contain spaces).
//! - `pattern [read|write|readwrite|deny] TOPIC`: applies to every client wherever it
//!   appears, after substituting `%c` (client id) and `%u` (user name). A pattern
//!   with `%u` never applies to anonymous clients, and a pattern is skipped for a
//!   client whose substituted id or name contains `+`, `#` or `/` (it would reach
//!   into other clients' topics).
//!
//! A topic is allowed for an access if no `deny` rule matches it and some rule
//! granting that access does. SUBSCRIBE is checked on the filter (a granting
//! `read` rule must cover every topic the filter can match, and no `deny` rule may
//! cover the filter), and every delivery is checked again on its topic, so a broad
//! subscription never leaks a topic a `deny` rule or a narrower grant excludes.

use std::collections::HashMap;
use std::sync::Arc;

/// Lines longer than this are refused (a topic is at most 65535 bytes).
const LINE_BYTES_MAX: usize = 65_535 + 64;
/// Decisions cached per connection before the cache is cleared.
pub const DECISIONS_CACHED_MAX: usize = 64;

/// Why an ACL file is invalid; `line` counts from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    #[error("line {line}: unknown directive {word:?} (expected user, topic or pattern)")]
    Directive { line: usize, word: String },
    #[error("line {line}: {what} needs an argument")]
    Missing { line: usize, what: &'static str },
    #[error("line {line}: invalid topic filter {topic:?}")]
    Topic { line: usize, topic: String },
    #[error("line {line}: too long")]
    TooLong { line: usize },
}

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Receive messages (SUBSCRIBE, deliveries, retained messages).
    Read,
    /// Publish (PUBLISH, the Will).
    Write,
}

/// What a rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Grant {
    fn allows(self, access: Access) -> bool {
        matches!(
            (self, access),
            (Grant::ReadWrite, _) | (Grant::Read, Access::Read) | (Grant::Write, Access::Write)
        )
    }
}

/// One level of a rule's filter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(Box<str>),
    /// `+`
    One,
    /// `#` (always last)
    Rest,
}

/// A parsed topic filter.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Filter(Vec<Level>);

impl Filter {
    /// Parses a filter with MQTT's rules for wildcards; None if invalid.
    fn parse(s: &str) -> Option<Filter> {
        if s.is_empty() || s.contains('\0') {
            return None;
        }
        let parts: Vec<&str> = s.split('/').collect();
        let last = parts.len() - 1;
        let mut levels = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            levels.push(match *p {
                "+" => Level::One,
                "#" if i == last => Level::Rest,
                p if p.contains(['+', '#']) => return None,
                p => Level::Literal(p.into()),
            });
        }
        Some(Filter(levels))
    }

    /// True if the filter matches the topic name ([MQTT-4.7.2-1]: a wildcard first
    /// level does not match a topic starting with `$`).
    fn matches(&self, topic: &str) -> bool {
        if topic.starts_with('$') && !matches!(self.0.first(), Some(Level::Literal(_))) {
            return false;
        }
        let mut levels = self.0.iter();
        let mut parts = topic.split('/');
        loop {
            match (levels.next(), parts.next()) {
                (Some(Level::Rest), _) => return true,
                (Some(Level::One), Some(_)) => {}
                (Some(Level::Literal(l)), Some(p)) if **l == *p => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    /// True if every topic `sub` can match is matched by `self`.
    fn covers(&self, sub: &Filter) -> bool {
        // A wildcard-led rule matches no `$` topic, so it covers no `$`-led filter.
        // A wildcard-led filter matches no `$` topic either, so nothing special there.
        let sub_dollar = matches!(sub.0.first(), Some(Level::Literal(l)) if l.starts_with('$'));
        if sub_dollar && !matches!(self.0.first(), Some(Level::Literal(_))) {
            return false;
        }
        let mut mine = self.0.iter();
        let mut theirs = sub.0.iter();
        loop {
            match (mine.next(), theirs.next()) {
                (Some(Level::Rest), _) => return true,
                (Some(Level::One), Some(Level::One | Level::Literal(_))) => {}
                (Some(Level::Literal(a)), Some(Level::Literal(b))) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

/// A rule as written in the file.
#[derive(Debug, Clone)]
struct Rule {
    grant: Grant,
    filter: Filter,
}

/// A `pattern` rule, substituted per connection.
#[derive(Debug, Clone)]
struct Pattern {
    grant: Grant,
    /// The filter text with `%c`/`%u` still in it.
    text: Box<str>,
    uses_user: bool,
}

/// A parsed ACL file.
#[derive(Debug, Clone, Default)]
pub struct AclFile {
    /// `topic` lines before the first `user` line.
    anonymous: Arc<[Rule]>,
    users: HashMap<String, Arc<[Rule]>>,
    patterns: Vec<Pattern>,
}

/// Splits `topic|pattern [ACCESS] TOPIC` arguments.
fn split_access(args: &str) -> (Grant, &str) {
    let (first, rest) = match args.split_once(' ') {
        Some((a, r)) => (a, r.trim_start()),
        None => (args, ""),
    };
    let grant = match first {
        "read" => Grant::Read,
        "write" => Grant::Write,
        "readwrite" => Grant::ReadWrite,
        "deny" => Grant::Deny,
        _ => return (Grant::ReadWrite, args),
    };
    if rest.is_empty() {
        // `topic read` alone: "read" is the topic.
        return (Grant::ReadWrite, args);
    }
    (grant, rest)
}

impl AclFile {
    /// Parses the whole text; the first bad line is the error.
    pub fn parse(text: &str) -> Result<AclFile, AclError> {
        let mut anonymous: Vec<Rule> = Vec::new();
        let mut users: HashMap<String, Vec<Rule>> = HashMap::new();
        let mut patterns = Vec::new();
        let mut current: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            if raw.len() > LINE_BYTES_MAX {
                return Err(AclError::TooLong { line });
            }
            let l = raw.trim_end_matches('\r').trim_start();
            if l.trim_end().is_empty() || l.starts_with('#') {
                continue;
            }
            let (word, args) = match l.split_once([' ', '\t']) {
                Some((w, a)) => (w, a.trim_start().trim_end()),
                None => (l.trim_end(), ""),
            };
            let missing = |what| AclError::Missing { line, what };
            match word {
                "user" => {
                    if args.is_empty() {
                        return Err(missing("user"));
                    }
                    users.entry(args.to_string()).or_default();
                    current = Some(args.to_string());
                }
                "topic" | "pattern" => {
                    if args.is_empty() {
                        return Err(missing(if word == "topic" { "topic" } else { "pattern" }));
                    }
                    let (grant, topic) = split_access(args);
                    let bad = || AclError::Topic {
                        line,
                        topic: topic.to_string(),
                    };
                    if word == "pattern" {
                        // Check the shape with the placeholders standing for a level.
                        let probe = topic.replace("%c", "x").replace("%u", "x");
                        Filter::parse(&probe).ok_or_else(bad)?;
                        patterns.push(Pattern {
                            grant,
                            text: topic.into(),
                            uses_user: topic.contains("%u"),
                        });
                    } else {
                        let filter = Filter::parse(topic).ok_or_else(bad)?;
                        let rule = Rule { grant, filter };
                        match &current {
                            Some(u) => users.entry(u.clone()).or_default().push(rule),
                            None => anonymous.push(rule),
                        }
                    }
                }
                other => {
                    return Err(AclError::Directive {
                        line,
                        word: other.to_string(),
                    })
                }
            }
        }
        Ok(AclFile {
            anonymous: anonymous.into(),
            users: users.into_iter().map(|(u, r)| (u, r.into())).collect(),
            patterns,
        })
    }

    /// The rules of one connection: its user's `topic` rules (or the anonymous
    /// ones) shared with every connection of that user, plus the patterns with
    /// `%c`/`%u` substituted.
    pub fn compile(&self, user: Option<&str>, client_id: &str) -> CompiledAcl {
        let topics = match user {
            Some(u) => self
                .users
                .get(u)
                .cloned()
                .unwrap_or_else(|| Vec::new().into()),
            None => self.anonymous.clone(),
        };
        let unsafe_value = |v: &str| v.contains(['+', '#', '/']);
        let mut patterns = Vec::new();
        for p in &self.patterns {
            if p.uses_user && user.is_none() {
                continue;
            }
            let mut text = p.text.to_string();
            if text.contains("%c") {
                if unsafe_value(client_id) {
                    continue;
                }
                text = text.replace("%c", client_id);
            }
            if let Some(u) = user.filter(|_| p.uses_user) {
                if unsafe_value(u) {
                    continue;
                }
                text = text.replace("%u", u);
            }
            if let Some(filter) = Filter::parse(&text) {
                patterns.push(Rule {
                    grant: p.grant,
                    filter,
                });
            }
        }
        CompiledAcl { topics, patterns }
    }
}

/// The rules that apply to one connection.
#[derive(Debug, Clone)]
pub struct CompiledAcl {
    topics: Arc<[Rule]>,
    patterns: Vec<Rule>,
}

impl CompiledAcl {
    /// No rules: nothing is allowed.
    pub fn deny_all() -> CompiledAcl {
        CompiledAcl {
            topics: Vec::new().into(),
            patterns: Vec::new(),
        }
    }

    fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.topics.iter().chain(&self.patterns)
    }

    /// May the connection read or write this topic name? Deny rules first, then
    /// any grant; nothing matching means no.
    pub fn allows(&self, topic: &str, access: Access) -> bool {
        if self
            .rules()
            .any(|r| r.grant == Grant::Deny && r.filter.matches(topic))
        {
            return false;
        }
        self.rules()
            .any(|r| r.grant.allows(access) && r.filter.matches(topic))
    }

    /// May the connection subscribe to this filter? A read grant must cover it and
    /// no deny rule may; deliveries are still checked one by one.
    pub fn allows_subscribe(&self, filter: &str) -> bool {
        let Some(sub) = Filter::parse(filter) else {
            return false;
        };
        if self
            .rules()
            .any(|r| r.grant == Grant::Deny && r.filter.covers(&sub))
        {
            return false;
        }
        self.rules()
            .any(|r| r.grant.allows(Access::Read) && r.filter.covers(&sub))
    }
}

/// A connection's compiled rules plus a small cache of decisions by topic.
#[derive(Debug, Clone)]
pub struct ConnAcl {
    acl: CompiledAcl,
    /// Topic -> bit 0: read decided, bit 1: read allowed, bit 2: write decided,
    /// bit 3: write allowed. Cleared when full.
    cache: HashMap<Box<str>, u8>,
}

impl ConnAcl {
    pub fn new(acl: CompiledAcl) -> ConnAcl {
        ConnAcl {
            acl,
            cache: HashMap::new(),
        }
    }

    /// [`CompiledAcl::allows`], cached per topic.
    pub fn allows(&mut self, topic: &str, access: Access) -> bool {
        let (decided, allowed) = match access {
            Access::Read => (1u8, 2u8),
            Access::Write => (4u8, 8u8),
        };
        if let Some(bits) = self.cache.get(topic) {
            if bits & decided != 0 {
                return bits & allowed != 0;
            }
        }
        let ok = self.acl.allows(topic, access);
        if self.cache.len() >= DECISIONS_CACHED_MAX && !self.cache.contains_key(topic) {
            self.cache.clear();
        }
        let bits = self.cache.entry(topic.into()).or_insert(0);
        *bits |= decided | if ok { allowed } else { 0 };
        ok
    }

    pub fn allows_subscribe(&self, filter: &str) -> bool {
        self.acl.allows_subscribe(filter)
    }

    /// Decisions currently cached (for tests).
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Access::{Read, Write};

    const FILE: &str = "\
# anonymous clients
topic read public/#
topic deny public/secret

user alice
topic readwrite alice/#
topic write shared/in
topic deny alice/private/#
topic spaced topic name

user bob
topic read #

pattern readwrite devices/%c/#
pattern read users/%u/inbox
";

    fn acl(user: Option<&str>, client: &str) -> CompiledAcl {
        AclFile::parse(FILE).unwrap().compile(user, client)
    }

    #[test]
    fn anonymous_section_applies_to_anonymous_only() {
        let a = acl(None, "c1");
        assert!(a.allows("public/news", Read));
        assert!(!a.allows("public/news", Write));
        assert!(!a.allows("public/secret", Read), "deny wins");
        assert!(!a.allows("alice/x", Read));
        let alice = acl(Some("alice"), "c1");
        assert!(
            !alice.allows("public/news", Read),
            "anonymous rules are not alice's"
        );
    }

    #[test]
    fn user_rules_with_wildcards_and_deny() {
        let a = acl(Some("alice"), "c1");
        assert!(a.allows("alice", Read), "# matches the parent level");
        assert!(a.allows("alice/a/b/c", Write));
        assert!(!a.allows("alice/private/x", Read));
        assert!(!a.allows("alice/private", Write));
        assert!(a.allows("shared/in", Write));
        assert!(!a.allows("shared/in", Read));
        assert!(a.allows("spaced topic name", Read));
        assert!(!a.allows("bob/x", Read), "default deny");
    }

    #[test]
    fn hash_does_not_match_dollar_topics() {
        let bob = acl(Some("bob"), "c1");
        assert!(bob.allows("anything/at/all", Read));
        assert!(!bob.allows("$SYS/broker/uptime", Read));
        assert!(!bob.allows("x", Write));
    }

    #[test]
    fn patterns_substitute_client_id_and_user() {
        let a = acl(Some("alice"), "dev7");
        assert!(a.allows("devices/dev7/telemetry", Write));
        assert!(!a.allows("devices/dev8/telemetry", Write));
        assert!(a.allows("users/alice/inbox", Read));
        assert!(!a.allows("users/bob/inbox", Read));
        // Anonymous: %c patterns apply, %u patterns do not.
        let anon = acl(None, "dev9");
        assert!(anon.allows("devices/dev9/x", Write));
        assert!(!anon.allows("users//inbox", Read));
        // An unknown user gets the patterns only.
        let carol = acl(Some("carol"), "d1");
        assert!(carol.allows("devices/d1/x", Read));
        assert!(!carol.allows("public/news", Read));
    }

    #[test]
    fn patterns_skip_ids_with_wildcards_or_separators() {
        for id in ["a/b", "+", "x#"] {
            let a = acl(None, id);
            assert!(!a.allows(&format!("devices/{id}/t"), Write), "{id}");
            assert!(!a.allows("devices/a/b/t", Write), "{id}");
        }
    }

    #[test]
    fn subscribe_needs_a_covering_read_grant() {
        let a = acl(Some("alice"), "c1");
        assert!(a.allows_subscribe("alice/#"));
        assert!(a.allows_subscribe("alice/+/temp"));
        assert!(!a.allows_subscribe("#"));
        assert!(!a.allows_subscribe("+/x"));
        assert!(!a.allows_subscribe("shared/in"), "write only");
        assert!(!a.allows_subscribe("alice/private/#"), "covered by deny");
        let anon = acl(None, "c1");
        assert!(
            anon.allows_subscribe("public/#"),
            "a narrower deny is checked per delivery"
        );
        let bob = acl(Some("bob"), "c1");
        assert!(bob.allows_subscribe("#"));
        assert!(bob.allows_subscribe("a/+/b"));
        assert!(!bob.allows_subscribe("$SYS/#"));
    }

    #[test]
    fn filter_coverage() {
        let f = |s| Filter::parse(s).unwrap();
        let cases = [
            ("a/#", "a/+", true),
            ("a/#", "a", true),
            ("a/+", "a/#", false),
            ("a/+", "a/b", true),
            ("a/b", "a/+", false),
            ("+/b", "a/b", true),
            ("#", "$SYS/x", false),
            ("$SYS/#", "$SYS/x/+", true),
            ("a/b", "a/b/c", false),
        ];
        for (rule, sub, want) in cases {
            assert_eq!(f(rule).covers(&f(sub)), want, "{rule} covers {sub}");
        }
    }

    #[test]
    fn no_file_rules_means_everything_is_denied() {
        let empty = AclFile::parse("# nothing\n\n").unwrap();
        let a = empty.compile(Some("alice"), "c");
        assert!(!a.allows("x", Read));
        assert!(!a.allows("x", Write));
        assert!(!a.allows_subscribe("#"));
    }

    #[test]
    fn access_word_is_optional() {
        let f = AclFile::parse("topic a/b\ntopic read\ntopic deny c\n").unwrap();
        let a = f.compile(None, "c");
        assert!(a.allows("a/b", Write) && a.allows("a/b", Read));
        assert!(a.allows("read", Read), "a lone access word is the topic");
        assert!(!a.allows("c", Read));
    }

    #[test]
    fn errors_name_their_line() {
        let cases = [
            (
                "topic a\nfoo bar\n",
                AclError::Directive {
                    line: 2,
                    word: "foo".into(),
                },
            ),
            (
                "\n\nuser\n",
                AclError::Missing {
                    line: 3,
                    what: "user",
                },
            ),
            (
                "topic read a/#/b\n",
                AclError::Topic {
                    line: 1,
                    topic: "a/#/b".into(),
                },
            ),
            (
                "pattern write x/%c+\n",
                AclError::Topic {
                    line: 1,
                    topic: "x/%c+".into(),
                },
            ),
            (
                "topic\n",
                AclError::Missing {
                    line: 1,
                    what: "topic",
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(AclFile::parse(text).unwrap_err(), want, "{text}");
        }
    }

    #[test]
    fn decisions_are_cached_and_bounded() {
        let mut c = ConnAcl::new(acl(Some("alice"), "c1"));
        assert!(c.allows("alice/x", Write));
        assert!(c.allows("alice/x", Read));
        assert!(!c.allows("bob/x", Write));
        assert_eq!(c.cached(), 2);
        for i in 0..(DECISIONS_CACHED_MAX * 2) {
            assert!(c.allows(&format!("alice/{i}"), Read));
            assert!(c.cached() <= DECISIONS_CACHED_MAX);
        }
        assert!(!c.allows("alice/private/x", Read));
    }
}
