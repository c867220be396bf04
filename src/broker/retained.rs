//! Retained messages: at most one per topic name, found again by topic filter when a
//! client subscribes.
//!
//! Owns: a trie keyed by topic level (the same level map as the subscription index) whose
//! nodes hold the retained message of the topic that ends there, and the running totals
//! (`len`, `payload_bytes`) used for `$SYS` and memory accounting.
//!
//! Must not: decide retain semantics (an empty payload means "delete": the caller calls
//! [`RetainedStore::remove`]), copy or compact payloads (the caller passes a message
//! detached from its read buffer, see `Message::compacted`), or know about sessions.
//!
//! Invariants:
//! - every node other than the root holds a message or has children (empty nodes are
//!   pruned on remove); the root never holds a message (topic names are non-empty);
//! - `len` is the number of stored messages and `payload_bytes` the sum of their payload
//!   lengths;
//! - a stored message's `topic` is the path of its node;
//! - nothing recurses: topics may have tens of thousands of levels.

use super::message::Message;
use super::topic_index::{Children, ChildrenIter};
use crate::protocol::{TopicFilter, TopicName};

struct Node {
    children: Children<Node>,
    message: Option<Message>,
}

impl Node {
    fn new() -> Self {
        Node {
            children: Children::default(),
            message: None,
        }
    }

    /// A non-root node with no link is garbage.
    fn links(&self) -> usize {
        self.children.len() + usize::from(self.message.is_some())
    }
}

impl Drop for Node {
    /// Iterative, so that dropping a chain of 30k levels cannot overflow the stack.
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let mut stack = Vec::new();
        self.children.drain_into(&mut stack);
        while let Some(mut node) = stack.pop() {
            node.children.drain_into(&mut stack);
        }
    }
}

/// The retained messages of the broker (or of one worker). See the module documentation.
#[derive(Default)]
pub struct RetainedStore {
    root: Node,
    len: usize,
    payload_bytes: usize,
}

impl Default for Node {
    fn default() -> Self {
        Node::new()
    }
}

/// Marks "no level left" in a filter position (distinct from an empty last level).
const END: usize = usize::MAX;

/// The level starting at byte `pos` of `s` and the position of the next one.
fn level_at(s: &str, pos: usize) -> (&str, usize) {
    let rest = s.get(pos..).unwrap_or("");
    match rest.find('/') {
        Some(i) => (&rest[..i], pos + i + 1),
        None => (rest, END),
    }
}

/// Work left in a filter match, kept on an explicit stack (depth, not breadth, of the
/// trie: wide levels are iterated lazily).
enum Frame<'a> {
    /// Match the filter from byte `pos` (or END) at this node.
    Match(&'a Node, usize),
    /// Remaining children to match against the filter from `pos` (after a `+`); `skip_dollar`
    /// at the root, where wildcards must not enter `$...` topics ([MQTT-4.7.2-1]).
    Plus(ChildrenIter<'a, Node>, usize, bool),
    /// Remaining children whose whole subtrees match (after a `#`).
    Subtree(ChildrenIter<'a, Node>, bool),
}

impl RetainedStore {
    pub fn new() -> Self {
        RetainedStore::default()
    }

    /// Stores `msg` under `msg.topic`, replacing and returning any older message there.
    /// (An empty payload is stored like any other: deleting is the caller's decision.)
    pub fn insert(&mut self, msg: Message) -> Option<Message> {
        let mut node = &mut self.root;
        for level in msg.topic.as_str().split('/') {
            node = node.children.get_or_insert_with(level, Node::new);
        }
        self.payload_bytes += msg.payload.len();
        let previous = node.message.replace(msg);
        match &previous {
            Some(old) => self.payload_bytes -= old.payload.len(),
            None => self.len += 1,
        }
        previous
    }

    /// Removes and returns the message retained on `topic`, pruning the nodes it leaves
    /// empty.
    pub fn remove(&mut self, topic: &TopicName) -> Option<Message> {
        let mut node = Some(&mut self.root);
        for level in topic.as_str().split('/') {
            node = node.and_then(|n| n.children.get_mut(level));
        }
        let previous = node?.message.take()?;
        debug_assert!(self.len > 0 && self.payload_bytes >= previous.payload.len());
        self.len -= 1;
        self.payload_bytes -= previous.payload.len();
        self.prune(topic.as_str());
        Some(previous)
    }

    /// Cuts the longest run of nodes at the end of `topic`'s path that exist only to
    /// carry it.
    fn prune(&mut self, topic: &str) {
        let depth = topic.split('/').count();
        let mut cut = None;
        let mut node = &self.root;
        for (edge, level) in topic.split('/').enumerate() {
            let Some(child) = node.children.get(level) else {
                debug_assert!(false, "prune: path vanished");
                return;
            };
            let garbage = if edge + 1 == depth {
                child.links() == 0
            } else {
                child.links() == 1
            };
            if !garbage {
                cut = None;
            } else if cut.is_none() {
                cut = Some(edge);
            }
            node = child;
        }
        let Some(cut) = cut else { return };
        let mut levels = topic.split('/');
        let mut parent = &mut self.root;
        for level in levels.by_ref().take(cut) {
            match parent.children.get_mut(level) {
                Some(next) => parent = next,
                None => return,
            }
        }
        if let Some(level) = levels.next() {
            // Dropped iteratively (see `Drop for Node`).
            drop(parent.children.remove(level));
        }
    }

    pub fn get(&self, topic: &TopicName) -> Option<&Message> {
        let mut node = &self.root;
        for level in topic.as_str().split('/') {
            node = node.children.get(level)?;
        }
        node.message.as_ref()
    }

    /// Calls `f` for every retained message whose topic matches `filter` (`+`, `#`, and
    /// the `$` rule [MQTT-4.7.2-1]). Visits only the branches the filter can match; the
    /// working stack grows with the trie depth, not its width.
    pub fn for_each_match(&self, filter: &TopicFilter, mut f: impl FnMut(&Message)) {
        let filter = filter.as_str();
        let mut stack = vec![Frame::Match(&self.root, 0)];
        while let Some(frame) = stack.pop() {
            match frame {
                Frame::Match(node, pos) => {
                    if pos == END {
                        if let Some(m) = &node.message {
                            f(m);
                        }
                        continue;
                    }
                    // Position 0 is only ever the root.
                    let at_root = pos == 0;
                    match level_at(filter, pos) {
                        ("#", _) => {
                            // `a/#` also matches `a` itself.
                            if let Some(m) = &node.message {
                                f(m);
                            }
                            stack.push(Frame::Subtree(node.children.iter(), at_root));
                        }
                        ("+", next) => stack.push(Frame::Plus(node.children.iter(), next, at_root)),
                        (level, next) => {
                            if let Some(child) = node.children.get(level) {
                                stack.push(Frame::Match(child, next));
                            }
                        }
                    }
                }
                Frame::Plus(mut children, next, skip_dollar) => {
                    if let Some((level, child)) = children.next() {
                        stack.push(Frame::Plus(children, next, skip_dollar));
                        if !(skip_dollar && level.starts_with('$')) {
                            stack.push(Frame::Match(child, next));
                        }
                    }
                }
                Frame::Subtree(mut children, skip_dollar) => {
                    if let Some((level, child)) = children.next() {
                        stack.push(Frame::Subtree(children, skip_dollar));
                        if !(skip_dollar && level.starts_with('$')) {
                            if let Some(m) = &child.message {
                                f(m);
                            }
                            stack.push(Frame::Subtree(child.children.iter(), false));
                        }
                    }
                }
            }
        }
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sum of the retained payload lengths.
    pub fn payload_bytes(&self) -> usize {
        self.payload_bytes
    }

    /// Trie nodes other than the root; also checks the module invariants.
    #[cfg(test)]
    fn node_count(&self) -> usize {
        assert!(self.root.message.is_none());
        let (mut nodes, mut len, mut bytes) = (0, 0, 0);
        let mut stack = vec![(&self.root, String::new())];
        while let Some((node, path)) = stack.pop() {
            if let Some(m) = &node.message {
                assert_eq!(m.topic.as_str(), path);
                len += 1;
                bytes += m.payload.len();
            }
            for (level, child) in node.children.iter() {
                assert!(child.links() > 0, "empty node left in the trie");
                nodes += 1;
                let child_path = if std::ptr::eq(node, &self.root) {
                    level.to_owned()
                } else {
                    format!("{path}/{level}")
                };
                stack.push((child, child_path));
            }
        }
        assert_eq!((len, bytes), (self.len, self.payload_bytes));
        nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::topic::filter_matches;
    use crate::protocol::QoS;
    use bytes::Bytes;

    fn msg(topic: &str, payload: &'static str) -> Message {
        Message::new(
            TopicName::new(topic.to_owned()).expect("valid topic"),
            Bytes::from_static(payload.as_bytes()),
            QoS::AtLeastOnce,
            true,
        )
    }

    fn t(s: &str) -> TopicName {
        TopicName::new(s.to_owned()).expect("valid topic")
    }

    fn matching(store: &RetainedStore, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        let fl = TopicFilter::new(filter.to_owned()).expect("valid filter");
        store.for_each_match(&fl, |m| out.push(m.topic.to_string()));
        out.sort();
        out
    }

    const TOPICS: [&str; 14] = [
        "sport",
        "sport/",
        "sport/tennis",
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport/tennis/player2",
        "sport/golf/player1",
        "/finance",
        "/",
        "a//b",
        "a/",
        "$SYS/broker/uptime",
        "$SYS",
        "a/$SYS",
    ];

    #[test]
    fn filters_against_the_reference_matcher() {
        let mut store = RetainedStore::new();
        for topic in TOPICS {
            assert!(store.insert(msg(topic, "x")).is_none());
        }
        let filters = [
            "#",
            "+",
            "+/+",
            "/+",
            "sport/#",
            "sport/+",
            "sport/tennis/+",
            "sport/+/player1",
            "+/tennis/#",
            "$SYS/#",
            "$SYS/+/uptime",
            "+/broker/#",
            "a/+/b",
            "a/+",
            "/#",
            "sport/tennis/player1",
            "nothing/here",
            "+/$SYS",
        ];
        for filter in filters {
            let mut want: Vec<String> = TOPICS
                .iter()
                .filter(|t| filter_matches(filter, t))
                .map(|t| t.to_string())
                .collect();
            want.sort();
            assert_eq!(matching(&store, filter), want, "filter {filter}");
        }
        assert_eq!(
            matching(&store, "#").len(),
            TOPICS.len() - 2,
            "# skips $SYS topics"
        );
        assert_eq!(
            matching(&store, "sport/#").len(),
            7, // sport, sport/, sport/tennis, 3 players, ranking
            "sport/# includes sport itself"
        );
    }

    #[test]
    fn insert_replace_get_remove() {
        let mut store = RetainedStore::new();
        assert!(store.is_empty());
        assert_eq!(store.insert(msg("a/b", "one")), None);
        assert_eq!(store.insert(msg("a/b", "three")), Some(msg("a/b", "one")));
        assert_eq!(store.insert(msg("a", "22")), None);
        assert_eq!((store.len(), store.payload_bytes()), (2, 7));
        assert_eq!(store.get(&t("a/b")), Some(&msg("a/b", "three")));
        assert_eq!(store.get(&t("a/c")), None);
        assert_eq!(store.remove(&t("a/c")), None);
        assert_eq!(store.remove(&t("a/b/c")), None);
        assert_eq!(store.remove(&t("a")), Some(msg("a", "22")));
        assert_eq!(store.node_count(), 2);
        assert_eq!(store.remove(&t("a/b")), Some(msg("a/b", "three")));
        assert_eq!(store.remove(&t("a/b")), None);
        assert_eq!(
            (store.len(), store.payload_bytes(), store.node_count()),
            (0, 0, 0)
        );
    }

    #[test]
    fn remove_prunes_every_node() {
        let mut store = RetainedStore::new();
        for topic in TOPICS {
            store.insert(msg(topic, "xy"));
        }
        assert_eq!(store.len(), TOPICS.len());
        assert!(store.node_count() > 0);
        for topic in TOPICS.iter().rev() {
            assert!(store.remove(&t(topic)).is_some());
            store.node_count();
        }
        assert_eq!(
            (store.len(), store.payload_bytes(), store.node_count()),
            (0, 0, 0)
        );
    }

    #[test]
    fn wide_levels() {
        let mut store = RetainedStore::new();
        for id in 0..1000 {
            store.insert(msg(&format!("devices/{id}/status"), "on"));
        }
        assert_eq!(
            matching(&store, "devices/42/+"),
            vec!["devices/42/status".to_owned()]
        );
        assert_eq!(matching(&store, "devices/+/status").len(), 1000);
        assert_eq!(matching(&store, "devices/#").len(), 1000);
        for id in 0..1000 {
            store.remove(&t(&format!("devices/{id}/status")));
        }
        assert_eq!(store.node_count(), 0);
    }

    #[test]
    fn deep_topics_do_not_overflow_the_stack() {
        let deep = vec!["a"; 30_000].join("/");
        let mut store = RetainedStore::new();
        store.insert(msg(&deep, "x"));
        store.insert(msg("a", "x"));
        assert_eq!(matching(&store, "#").len(), 2);
        assert_eq!(matching(&store, &deep).len(), 1);
        assert_eq!(matching(&store, &vec!["+"; 30_000].join("/")).len(), 1);
        assert!(store.remove(&t(&deep)).is_some());
        assert_eq!(store.node_count(), 1);
        store.insert(msg(&deep, "x"));
        drop(store);
    }
}
