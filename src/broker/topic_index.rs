//! The per-worker subscription index: which local subscriptions match a topic name.
//!
//! Owns: a hash map from each wildcard-free filter's text to its subscribers (such a
//! filter matches only the topic spelled the same, so one lookup answers it), and for
//! filters with a wildcard a trie keyed by topic level whose nodes hold the subscribers
//! of the filter that ends there, plus one `+` child and one `#` subscriber set per node.
//! It is the hot path of every PUBLISH, so [`TopicIndex::for_each_match`] and
//! [`TopicIndex::has_match`] do not allocate (up to [`INLINE_BRANCHES`] pending `+`
//! branches, which no real filter set reaches) and cost one lookup plus O(topic depth ×
//! `+` branches taken), independent of how many filters or subscribers the index holds;
//! the trie is not walked while it is empty. Also owns [`Children`], the level map shared
//! with the retained store.
//!
//! Must not: know what a subscriber or its value is (a session id and a `Copy` value,
//! typically the granted QoS), deduplicate overlapping matches (the caller does), or hold
//! anything per message.
//!
//! Invariants:
//! - the map holds only wildcard-free filters, the trie only filters with a wildcard,
//!   and the map never holds an empty subscriber set (its memory is given back as it
//!   empties);
//! - every node other than the root has at least one "link": a subscriber, a `#` set, a
//!   `+` child or an exact child (empty nodes are pruned on remove, so memory returns);
//! - a `#` subscriber set, when present, is never empty;
//! - `subscriptions` is the number of (filter, subscriber) pairs and `filters` the number
//!   of non-empty subscriber sets (node sets plus `#` sets);
//! - no operation recurses: filters and topics may have tens of thousands of levels, so
//!   insert, remove, match and drop walk iteratively and cannot overflow the stack.

use crate::protocol::{TopicFilter, TopicName};
// The wide levels (`devices/<id>`) and exact filters are hashed on every publish.
use super::FastMap as HashMap;
use std::ops::ControlFlow;

/// The caller's handle for a subscriber (a session slot on this worker).
pub type SubscriberId = u32;

/// What [`TopicIndex::insert`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted<V> {
    /// The subscriber's previous value on this exact filter, if it was replaced.
    pub previous: Option<V>,
    /// No subscriber had this exact filter before the insert.
    pub filter_was_empty: bool,
}

/// What [`TopicIndex::remove`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed<V> {
    /// The removed value, or `None` if the subscriber did not have this filter.
    pub previous: Option<V>,
    /// No subscriber has this exact filter after the call (also true when the filter was
    /// never subscribed at all).
    pub filter_now_empty: bool,
}

/// Pending `+` branches a match keeps on the call stack before spilling to the heap.
pub const INLINE_BRANCHES: usize = 32;

/// Exact children stay in a linear `Vec` up to this many entries (one child costs one
/// small allocation instead of a hash table), and move to a `HashMap` above it.
const SMALL_CHILDREN_MAX: usize = 8;
/// A subscriber set builds its position index above this many entries...
const INDEX_ABOVE: usize = 16;
/// ...and drops it again below this many (hysteresis, so a set hovering around the
/// threshold does not rebuild the index on every call).
const INDEX_BELOW: usize = 8;

/// Children of a trie node keyed by one topic level.
///
/// Small sets (the common case: most levels have a handful of children) are a `Vec`
/// scanned linearly with capacity kept exact; large ones (`devices/<id>` with 100k ids)
/// are a boxed `HashMap` (foldhash with a random seed per map: level strings come from
/// clients, so a keyed hash protects against collision flooding).
pub(crate) enum Children<T> {
    Small(Vec<(Box<str>, T)>),
    // Boxed on purpose: keeps every node's `Children` at 24 bytes (a `Vec`) instead of
    // 48 + tag, and only the few wide levels pay the extra pointer.
    #[allow(clippy::box_collection)]
    Large(Box<HashMap<Box<str>, T>>),
}

impl<T> Default for Children<T> {
    fn default() -> Self {
        Children::Small(Vec::new())
    }
}

impl<T> Children<T> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Children::Small(v) => v.len(),
            Children::Large(m) => m.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn get(&self, level: &str) -> Option<&T> {
        match self {
            Children::Small(v) => v.iter().find(|(k, _)| &**k == level).map(|(_, c)| c),
            Children::Large(m) => m.get(level),
        }
    }

    pub(crate) fn get_mut(&mut self, level: &str) -> Option<&mut T> {
        match self {
            Children::Small(v) => v.iter_mut().find(|(k, _)| &**k == level).map(|(_, c)| c),
            Children::Large(m) => m.get_mut(level),
        }
    }

    pub(crate) fn get_or_insert_with(&mut self, level: &str, make: impl FnOnce() -> T) -> &mut T {
        if let Children::Small(v) = self {
            if v.len() >= SMALL_CHILDREN_MAX && !v.iter().any(|(k, _)| &**k == level) {
                let map: HashMap<Box<str>, T> = v.drain(..).collect();
                *self = Children::Large(Box::new(map));
            }
        }
        match self {
            Children::Small(v) => match v.iter().position(|(k, _)| &**k == level) {
                Some(i) => &mut v[i].1,
                None => {
                    v.reserve_exact(1);
                    v.push((Box::from(level), make()));
                    let last = v.len() - 1;
                    &mut v[last].1
                }
            },
            // The key is allocated even when present; inserts are not the hot path.
            Children::Large(m) => m.entry(Box::from(level)).or_insert_with(make),
        }
    }

    pub(crate) fn remove(&mut self, level: &str) -> Option<T> {
        match self {
            Children::Small(v) => {
                let i = v.iter().position(|(k, _)| &**k == level)?;
                let (_, child) = v.swap_remove(i);
                v.shrink_to_fit();
                Some(child)
            }
            Children::Large(m) => {
                let child = m.remove(level)?;
                if m.len() <= SMALL_CHILDREN_MAX / 2 {
                    let small: Vec<(Box<str>, T)> = m.drain().collect();
                    *self = Children::Small(small);
                } else if m.len() * 4 < m.capacity() {
                    m.shrink_to_fit();
                }
                Some(child)
            }
        }
    }

    pub(crate) fn iter(&self) -> ChildrenIter<'_, T> {
        match self {
            Children::Small(v) => ChildrenIter::Small(v.iter()),
            Children::Large(m) => ChildrenIter::Large(m.iter()),
        }
    }

    /// Moves every child into `out` (used by the iterative drops).
    pub(crate) fn drain_into(&mut self, out: &mut Vec<T>) {
        match self {
            Children::Small(v) => out.extend(v.drain(..).map(|(_, c)| c)),
            Children::Large(m) => out.extend(m.drain().map(|(_, c)| c)),
        }
        *self = Children::default();
    }
}

/// Iterator over `(level, child)` pairs of a [`Children`], in no particular order.
pub(crate) enum ChildrenIter<'a, T> {
    Small(std::slice::Iter<'a, (Box<str>, T)>),
    Large(std::collections::hash_map::Iter<'a, Box<str>, T>),
}

impl<'a, T> Iterator for ChildrenIter<'a, T> {
    type Item = (&'a str, &'a T);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            ChildrenIter::Small(it) => it.next().map(|(k, c)| (&**k, c)),
            ChildrenIter::Large(it) => it.next().map(|(k, c)| (&**k, c)),
        }
    }
}

/// A LIFO stack that lives on the call stack up to `N` items and spills to the heap
/// beyond, so hot-path traversals do not allocate in any realistic case and still cannot
/// overflow on pathological input.
pub(crate) struct InlineStack<T: Copy, const N: usize> {
    /// `inline[..len]` are initialised: written by `push`, never read past `len`.
    /// Uninitialised on purpose: a walk per publish would otherwise clear all `N`
    /// slots (a 768-byte memset for 32 of them) before doing anything.
    inline: [std::mem::MaybeUninit<T>; N],
    len: usize,
    spill: Vec<T>,
}

impl<T: Copy, const N: usize> InlineStack<T, N> {
    pub(crate) fn new() -> Self {
        InlineStack {
            inline: [const { std::mem::MaybeUninit::uninit() }; N],
            len: 0,
            spill: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, item: T) {
        match self.inline.get_mut(self.len) {
            Some(slot) => {
                slot.write(item);
                self.len += 1;
            }
            None => self.spill.push(item),
        }
    }

    pub(crate) fn pop(&mut self) -> Option<T> {
        if let Some(item) = self.spill.pop() {
            return Some(item);
        }
        self.len = self.len.checked_sub(1)?;
        let slot = self.inline.get(self.len)?;
        // SAFETY: slots below the old `len` were written by `push` (the spill only
        // fills once all `N` are in use, and empties before they are popped).
        Some(unsafe { slot.assume_init() })
    }
}

/// The subscribers of one exact filter: no allocation for zero or one subscriber, a
/// `Vec` for a few, a `Vec` plus a position index for many (O(1) insert and remove).
enum SubSet<V> {
    Empty,
    One(SubscriberId, V),
    Many(Box<ManySubs<V>>),
}

struct ManySubs<V> {
    entries: Vec<(SubscriberId, V)>,
    /// Position of each subscriber in `entries`; empty unless `entries.len() >
    /// INDEX_ABOVE` (and kept until it drops below `INDEX_BELOW`).
    index: HashMap<SubscriberId, u32>,
}

impl<V: Copy> ManySubs<V> {
    fn indexed(&self) -> bool {
        !self.index.is_empty()
    }

    fn position(&self, sub: SubscriberId) -> Option<usize> {
        if self.indexed() {
            self.index.get(&sub).map(|&i| i as usize)
        } else {
            self.entries.iter().position(|&(s, _)| s == sub)
        }
    }

    fn insert(&mut self, sub: SubscriberId, value: V) -> Option<V> {
        if let Some(i) = self.position(sub) {
            let slot = &mut self.entries[i].1;
            return Some(std::mem::replace(slot, value));
        }
        // Ids are distinct u32s, so a position always fits in u32.
        let pos = self.entries.len() as u32;
        self.entries.push((sub, value));
        if self.indexed() {
            self.index.insert(sub, pos);
        } else if self.entries.len() > INDEX_ABOVE {
            self.index = self
                .entries
                .iter()
                .enumerate()
                .map(|(i, &(s, _))| (s, i as u32))
                .collect();
        }
        debug_assert!(!self.indexed() || self.index.len() == self.entries.len());
        None
    }

    fn remove(&mut self, sub: SubscriberId) -> Option<V> {
        let i = self.position(sub)?;
        let (_, value) = self.entries.swap_remove(i);
        if self.indexed() {
            self.index.remove(&sub);
            if let Some(&(moved, _)) = self.entries.get(i) {
                self.index.insert(moved, i as u32);
            }
            if self.entries.len() < INDEX_BELOW {
                self.index = HashMap::default();
            } else if self.index.len() * 4 < self.index.capacity() {
                self.index.shrink_to_fit();
            }
        }
        if self.entries.len() * 4 < self.entries.capacity() {
            self.entries.shrink_to(self.entries.len() * 2);
        }
        debug_assert!(!self.indexed() || self.index.len() == self.entries.len());
        Some(value)
    }
}

impl<V: Copy> SubSet<V> {
    fn is_empty(&self) -> bool {
        matches!(self, SubSet::Empty)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        match self {
            SubSet::Empty => 0,
            SubSet::One(..) => 1,
            SubSet::Many(m) => m.entries.len(),
        }
    }

    fn insert(&mut self, sub: SubscriberId, value: V) -> Option<V> {
        match self {
            SubSet::Empty => {
                *self = SubSet::One(sub, value);
                None
            }
            SubSet::One(s, v) if *s == sub => Some(std::mem::replace(v, value)),
            SubSet::One(s, v) => {
                let entries = vec![(*s, *v), (sub, value)];
                *self = SubSet::Many(Box::new(ManySubs {
                    entries,
                    index: HashMap::default(),
                }));
                None
            }
            SubSet::Many(m) => m.insert(sub, value),
        }
    }

    fn remove(&mut self, sub: SubscriberId) -> Option<V> {
        match self {
            SubSet::Empty => None,
            SubSet::One(s, v) if *s == sub => {
                let previous = *v;
                *self = SubSet::Empty;
                Some(previous)
            }
            SubSet::One(..) => None,
            SubSet::Many(m) => {
                let previous = m.remove(sub)?;
                match *m.entries {
                    [] => *self = SubSet::Empty,
                    [(s, v)] => *self = SubSet::One(s, v),
                    _ => {}
                }
                Some(previous)
            }
        }
    }

    fn for_each(&self, f: &mut impl FnMut(SubscriberId, V)) {
        match self {
            SubSet::Empty => {}
            SubSet::One(s, v) => f(*s, *v),
            SubSet::Many(m) => m.entries.iter().for_each(|&(s, v)| f(s, v)),
        }
    }
}

struct Node<V> {
    exact: Children<Node<V>>,
    plus: Option<Box<Node<V>>>,
    /// Subscribers of `<path to this node>/#` (which also matches this node's own path).
    hash: Option<Box<SubSet<V>>>,
    /// Subscribers of the filter that ends exactly here.
    subs: SubSet<V>,
}

impl<V> Node<V> {
    fn new() -> Self {
        Node {
            exact: Children::default(),
            plus: None,
            hash: None,
            subs: SubSet::Empty,
        }
    }

    fn has_children(&self) -> bool {
        !self.exact.is_empty() || self.plus.is_some()
    }

    fn take_children_into(&mut self, out: &mut Vec<Node<V>>) {
        self.exact.drain_into(out);
        if let Some(plus) = self.plus.take() {
            out.push(*plus);
        }
    }
}

impl<V: Copy> Node<V> {
    /// Subscribers, `#` set and children: a non-root node with none is garbage.
    fn links(&self) -> usize {
        self.exact.len()
            + usize::from(self.plus.is_some())
            + usize::from(self.hash.is_some())
            + usize::from(!self.subs.is_empty())
    }

    fn step(&self, level: &str) -> Option<&Node<V>> {
        if level == "+" {
            self.plus.as_deref()
        } else {
            self.exact.get(level)
        }
    }

    fn step_mut(&mut self, level: &str) -> Option<&mut Node<V>> {
        if level == "+" {
            self.plus.as_deref_mut()
        } else {
            self.exact.get_mut(level)
        }
    }
}

impl<V> Drop for Node<V> {
    /// Iterative, so that dropping a chain of 30k levels cannot overflow the stack.
    fn drop(&mut self) {
        if !self.has_children() {
            return;
        }
        let mut stack = Vec::new();
        self.take_children_into(&mut stack);
        while let Some(mut node) = stack.pop() {
            node.take_children_into(&mut stack);
            // `node` drops here with no children left: no recursion.
        }
    }
}

/// A filter split into the trie path it walks and whether it ends with `#`.
#[derive(Clone, Copy)]
struct FilterPath<'a> {
    /// The levels before a trailing `#`, or `None` for the filter `#` alone.
    levels: Option<&'a str>,
    hash: bool,
}

impl<'a> FilterPath<'a> {
    fn new(filter: &'a TopicFilter) -> Self {
        let s = filter.as_str();
        if s == "#" {
            FilterPath {
                levels: None,
                hash: true,
            }
        } else if let Some(prefix) = s.strip_suffix("/#") {
            FilterPath {
                levels: Some(prefix),
                hash: true,
            }
        } else {
            FilterPath {
                levels: Some(s),
                hash: false,
            }
        }
    }

    fn levels(self) -> impl Iterator<Item = &'a str> + Clone {
        self.levels.into_iter().flat_map(|p| p.split('/'))
    }

    /// No `+` or `#` level: the filter matches only the topic spelled the same.
    fn is_exact(self) -> bool {
        !self.hash && self.levels().all(|l| l != "+")
    }
}

/// Marks "no level left" in a topic position (distinct from an empty last level).
const END: usize = usize::MAX;

/// The level starting at byte `pos` of `s` and the position of the next one.
fn level_at(s: &str, pos: usize) -> (&str, usize) {
    let rest = s.get(pos..).unwrap_or("");
    // A plain scan: levels are a few bytes long, shorter than a `memchr` call's setup.
    match rest.bytes().position(|b| b == b'/') {
        Some(i) => (&rest[..i], pos + i + 1),
        None => (rest, END),
    }
}

/// The subscription index of one worker. See the module documentation.
pub struct TopicIndex<V> {
    /// Filters without a wildcard, by their whole text: a match is one lookup.
    exact: HashMap<Box<str>, SubSet<V>>,
    /// Filters with a `+` or `#`.
    root: Node<V>,
    subscriptions: usize,
    filters: usize,
}

impl<V: Copy> Default for TopicIndex<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: Copy> TopicIndex<V> {
    pub fn new() -> Self {
        TopicIndex {
            exact: HashMap::default(),
            root: Node::new(),
            subscriptions: 0,
            filters: 0,
        }
    }

    /// Adds or replaces `sub`'s entry on `filter`. `filter_was_empty`: no subscriber had
    /// this exact filter before.
    pub fn insert(&mut self, filter: &TopicFilter, sub: SubscriberId, value: V) -> Inserted<V> {
        let path = FilterPath::new(filter);
        if path.is_exact() {
            let set = match self.exact.get_mut(filter.as_str()) {
                Some(set) => set,
                None => self
                    .exact
                    .entry(Box::from(filter.as_str()))
                    .or_insert(SubSet::Empty),
            };
            let filter_was_empty = set.is_empty();
            let previous = set.insert(sub, value);
            return self.counted_insert(previous, filter_was_empty);
        }
        let mut node = &mut self.root;
        for level in path.levels() {
            node = if level == "+" {
                node.plus.get_or_insert_with(|| Box::new(Node::new()))
            } else {
                node.exact.get_or_insert_with(level, Node::new)
            };
        }
        let set = if path.hash {
            &mut **node.hash.get_or_insert_with(|| Box::new(SubSet::Empty))
        } else {
            &mut node.subs
        };
        let filter_was_empty = set.is_empty();
        let previous = set.insert(sub, value);
        self.counted_insert(previous, filter_was_empty)
    }

    fn counted_insert(&mut self, previous: Option<V>, filter_was_empty: bool) -> Inserted<V> {
        if previous.is_none() {
            self.subscriptions += 1;
        }
        if filter_was_empty {
            self.filters += 1;
        }
        debug_assert!(self.filters <= self.subscriptions);
        Inserted {
            previous,
            filter_was_empty,
        }
    }

    /// Removes `sub`'s entry on `filter` (a no-op returning `previous: None` if absent).
    /// `filter_now_empty`: no subscriber has this exact filter any more. Prunes the trie
    /// nodes left empty, so memory returns.
    pub fn remove(&mut self, filter: &TopicFilter, sub: SubscriberId) -> Removed<V> {
        let path = FilterPath::new(filter);
        if path.is_exact() {
            let Some(set) = self.exact.get_mut(filter.as_str()) else {
                return Removed {
                    previous: None,
                    filter_now_empty: true,
                };
            };
            let previous = set.remove(sub);
            let filter_now_empty = set.is_empty();
            if filter_now_empty {
                self.exact.remove(filter.as_str());
                // Give memory back once the map is mostly empty, as pruning does.
                if self.exact.len() * 4 < self.exact.capacity() {
                    self.exact.shrink_to(self.exact.len() * 2);
                }
            }
            return self.counted_removal(previous, filter_now_empty);
        }
        let mut node = Some(&mut self.root);
        for level in path.levels() {
            node = node.and_then(|n| n.step_mut(level));
        }
        let Some(node) = node else {
            return Removed {
                previous: None,
                filter_now_empty: true,
            };
        };
        let (previous, filter_now_empty) = if path.hash {
            match node.hash.as_deref_mut() {
                None => (None, true),
                Some(set) => {
                    let previous = set.remove(sub);
                    let empty = set.is_empty();
                    if empty {
                        node.hash = None;
                    }
                    (previous, empty)
                }
            }
        } else {
            let previous = node.subs.remove(sub);
            (previous, node.subs.is_empty())
        };
        if previous.is_some() && filter_now_empty {
            self.prune(path);
        }
        self.counted_removal(previous, filter_now_empty)
    }

    /// Updates the counts after one removal (exact map or trie) and reports it.
    fn counted_removal(&mut self, previous: Option<V>, filter_now_empty: bool) -> Removed<V> {
        if previous.is_some() {
            debug_assert!(self.subscriptions > 0);
            self.subscriptions -= 1;
            if filter_now_empty {
                debug_assert!(self.filters > 0);
                self.filters -= 1;
            }
        }
        debug_assert!(self.filters <= self.subscriptions);
        Removed {
            previous,
            filter_now_empty,
        }
    }

    /// Cuts the longest run of nodes at the end of `path` that exist only to carry it.
    fn prune(&mut self, path: FilterPath<'_>) {
        let depth = path.levels().count();
        // First pass (read-only): the edge index where the trailing garbage run starts.
        let mut cut = None;
        let mut node = &self.root;
        for (edge, level) in path.levels().enumerate() {
            let Some(child) = node.step(level) else {
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
        // Second pass: walk to the parent of the run and detach it (dropped iteratively).
        let mut levels = path.levels();
        let mut parent = &mut self.root;
        for level in levels.by_ref().take(cut) {
            match parent.step_mut(level) {
                Some(next) => parent = next,
                None => return,
            }
        }
        match levels.next() {
            Some("+") => drop(parent.plus.take()),
            Some(level) => drop(parent.exact.remove(level)),
            None => {}
        }
    }

    /// Visits every subscriber set whose filter matches `topic`, without allocating (up
    /// to `INLINE_BRANCHES` pending `+` branches).
    fn walk<B>(
        &self,
        topic: &TopicName,
        mut visit: impl FnMut(&SubSet<V>) -> ControlFlow<B>,
    ) -> ControlFlow<B> {
        let topic = topic.as_str();
        // [MQTT-4.7.2-1]: a filter starting with a wildcard does not match `$...`.
        let dollar = topic.starts_with('$');
        let mut pending: InlineStack<(&Node<V>, usize), INLINE_BRANCHES> = InlineStack::new();
        // Position 0 is only ever the root: every other position follows a '/' or is END.
        pending.push((&self.root, 0));
        while let Some((mut node, mut pos)) = pending.pop() {
            loop {
                let wildcards = !(dollar && pos == 0);
                if wildcards {
                    if let Some(hash) = node.hash.as_deref() {
                        visit(hash)?;
                    }
                }
                if pos == END {
                    visit(&node.subs)?;
                    break;
                }
                let (level, next) = level_at(topic, pos);
                if wildcards {
                    if let Some(plus) = node.plus.as_deref() {
                        pending.push((plus, next));
                    }
                }
                match node.exact.get(level) {
                    Some(child) => {
                        node = child;
                        pos = next;
                    }
                    None => break,
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// Calls `f` once per (subscription, value) whose filter matches `topic`; a subscriber
    /// with two matching filters is reported twice (the caller dedups). Does not allocate.
    pub fn for_each_match(&self, topic: &TopicName, mut f: impl FnMut(SubscriberId, V)) {
        if let Some(set) = self.exact_set(topic) {
            set.for_each(&mut f);
        }
        if self.has_wildcards() {
            let _ = self.walk::<()>(topic, |set| {
                set.for_each(&mut f);
                ControlFlow::Continue(())
            });
        }
    }

    /// True if any filter matches `topic` (stops at the first match).
    pub fn has_match(&self, topic: &TopicName) -> bool {
        if self.exact_set(topic).is_some() {
            return true; // the map holds no empty set
        }
        self.has_wildcards()
            && self
                .walk(topic, |set| {
                    if set.is_empty() {
                        ControlFlow::Continue(())
                    } else {
                        ControlFlow::Break(())
                    }
                })
                .is_break()
    }

    /// True when the trie holds a filter (every filter there has a wildcard).
    fn has_wildcards(&self) -> bool {
        self.root.has_children() || self.root.hash.is_some()
    }

    /// The subscribers of the wildcard-free filter spelled as `topic`.
    fn exact_set(&self, topic: &TopicName) -> Option<&SubSet<V>> {
        if self.exact.is_empty() {
            None // no hashing when every filter has a wildcard (fan-in)
        } else {
            self.exact.get(topic.as_str())
        }
    }

    /// Number of (filter, subscriber) pairs.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions
    }

    /// Number of distinct filters with at least one subscriber.
    pub fn filter_count(&self) -> usize {
        self.filters
    }

    /// Trie nodes other than the root, `#` sets and exact filters (each is an
    /// allocation).
    #[cfg(test)]
    fn node_count(&self) -> usize {
        self.check_invariants();
        let mut count = self.exact.len();
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            count += usize::from(node.hash.is_some());
            for (_, child) in node.exact.iter() {
                count += 1;
                stack.push(child);
            }
            if let Some(plus) = node.plus.as_deref() {
                count += 1;
                stack.push(plus);
            }
        }
        count
    }

    /// Recounts everything and checks the module invariants.
    #[cfg(test)]
    fn check_invariants(&self) {
        fn check_set<V: Copy>(set: &SubSet<V>) {
            if let SubSet::Many(m) = set {
                assert!(m.entries.len() >= 2);
                if m.indexed() {
                    assert_eq!(m.index.len(), m.entries.len());
                    for (i, (s, _)) in m.entries.iter().enumerate() {
                        assert_eq!(m.index.get(s), Some(&(i as u32)));
                    }
                } else {
                    assert!(m.entries.len() <= INDEX_ABOVE);
                }
            }
        }
        let (mut subs, mut filters) = (0, 0);
        for (filter, set) in &self.exact {
            assert!(!set.is_empty(), "empty exact set left in the map");
            assert!(
                FilterPath::new(&TopicFilter::new(filter.to_string()).unwrap()).is_exact(),
                "wildcard filter {filter} in the exact map"
            );
            check_set(set);
            subs += set.len();
            filters += 1;
        }
        let mut stack = vec![(&self.root, true)];
        while let Some((node, is_root)) = stack.pop() {
            assert!(
                is_root || node.links() > 0,
                "empty non-root node left in the trie"
            );
            if let Some(hash) = node.hash.as_deref() {
                assert!(!hash.is_empty(), "empty # set left in the trie");
                subs += hash.len();
                filters += 1;
            }
            if !node.subs.is_empty() {
                subs += node.subs.len();
                filters += 1;
            }
            for set in [Some(&node.subs), node.hash.as_deref()]
                .into_iter()
                .flatten()
            {
                check_set(set);
            }
            stack.extend(node.exact.iter().map(|(_, c)| (c, false)));
            stack.extend(node.plus.as_deref().map(|c| (c, false)));
        }
        assert_eq!(subs, self.subscriptions);
        assert_eq!(filters, self.filters);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::topic::filter_matches;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::new(s.to_owned()).expect("valid filter")
    }

    fn t(s: &str) -> TopicName {
        TopicName::new(s.to_owned()).expect("valid topic")
    }

    fn matches(index: &TopicIndex<u8>, topic: &str) -> Vec<(SubscriberId, u8)> {
        let mut out = Vec::new();
        index.for_each_match(&t(topic), |s, v| out.push((s, v)));
        out.sort_unstable();
        assert_eq!(
            index.has_match(&t(topic)),
            !out.is_empty(),
            "has_match vs for_each_match on {topic}"
        );
        out
    }

    /// One subscriber per filter; returns which filters match each topic, by the index
    /// and by the reference matcher.
    fn check_table(filters: &[&str], cases: &[(&str, &[&str])]) {
        let mut index = TopicIndex::new();
        for (i, filter) in filters.iter().enumerate() {
            index.insert(&f(filter), i as u32, 0u8);
        }
        for (topic, want) in cases {
            let got: Vec<&str> = matches(&index, topic)
                .iter()
                .map(|&(s, _)| filters[s as usize])
                .collect();
            let mut want = want.to_vec();
            want.sort_by_key(|w| filters.iter().position(|f| f == w));
            let reference: Vec<&str> = filters
                .iter()
                .copied()
                .filter(|fl| filter_matches(fl, topic))
                .collect();
            assert_eq!(got, want, "topic {topic}");
            assert_eq!(got, reference, "reference matcher disagrees on {topic}");
        }
    }

    #[test]
    fn spec_examples_4_7_1() {
        let filters = [
            "sport/tennis/player1/#",
            "sport/#",
            "sport/tennis/#",
            "sport/tennis/+",
            "sport/+",
            "+/+",
            "/+",
            "+",
            "#",
            "+/tennis/#",
            "sport/+/player1",
        ];
        check_table(
            &filters,
            &[
                (
                    "sport/tennis/player1",
                    &[
                        "sport/tennis/player1/#",
                        "sport/#",
                        "sport/tennis/#",
                        "sport/tennis/+",
                        "#",
                        "+/tennis/#",
                        "sport/+/player1",
                    ],
                ),
                (
                    "sport/tennis/player1/ranking",
                    &[
                        "sport/tennis/player1/#",
                        "sport/#",
                        "sport/tennis/#",
                        "#",
                        "+/tennis/#",
                    ],
                ),
                (
                    "sport/tennis/player1/score/wimbledon",
                    &[
                        "sport/tennis/player1/#",
                        "sport/#",
                        "sport/tennis/#",
                        "#",
                        "+/tennis/#",
                    ],
                ),
                // "sport/#" matches "sport" itself; "sport/+" does not.
                ("sport", &["sport/#", "+", "#"]),
                ("sport/", &["sport/#", "sport/+", "+/+", "#"]),
                ("/finance", &["+/+", "/+", "#"]),
            ],
        );
    }

    #[test]
    fn inline_stack_is_lifo_across_the_spill() {
        let mut st: InlineStack<u32, 3> = InlineStack::new();
        assert_eq!(st.pop(), None);
        for round in 0..2 {
            for i in 0..7 {
                st.push(i + round);
            }
            for i in (0..7).rev() {
                assert_eq!(st.pop(), Some(i + round));
            }
            assert_eq!(st.pop(), None);
        }
        st.push(9);
        st.push(10);
        assert_eq!(st.pop(), Some(10));
        st.push(11);
        assert_eq!((st.pop(), st.pop(), st.pop()), (Some(11), Some(9), None));
    }

    #[test]
    fn dollar_topics() {
        let filters = [
            "#",
            "+/monitor/Clients",
            "$SYS/#",
            "$SYS/monitor/+",
            "+",
            "$SYS",
        ];
        check_table(
            &filters,
            &[
                ("$SYS/monitor/Clients", &["$SYS/#", "$SYS/monitor/+"]),
                ("$SYS", &["$SYS/#", "$SYS"]),
                ("$SYS/x", &["$SYS/#"]),
                ("SYS/monitor/Clients", &["#", "+/monitor/Clients"]),
                // The rule is about the first character of the topic only.
                ("a/$SYS", &["#"]),
                ("a", &["#", "+"]),
            ],
        );
    }

    #[test]
    fn empty_levels() {
        let filters = [
            "a//b", "a/+/b", "/a", "+/a", "a/", "a/+", "+/+", "/", "/#", "a/#", "+",
        ];
        check_table(
            &filters,
            &[
                ("a//b", &["a//b", "a/+/b", "a/#"]),
                ("/a", &["/a", "+/a", "+/+", "/#"]),
                ("a/", &["a/", "a/+", "+/+", "a/#"]),
                ("/", &["+/+", "/", "/#"]),
                ("a", &["+", "a/#"]),
                ("//", &["/#"]),
            ],
        );
    }

    #[test]
    fn insert_replace_and_remove() {
        let mut index = TopicIndex::new();
        let fl = f("a/+/c");
        assert_eq!(
            index.insert(&fl, 7, 1u8),
            Inserted {
                previous: None,
                filter_was_empty: true
            }
        );
        assert_eq!(
            index.insert(&fl, 7, 2),
            Inserted {
                previous: Some(1),
                filter_was_empty: false
            }
        );
        assert_eq!(
            index.insert(&fl, 8, 3),
            Inserted {
                previous: None,
                filter_was_empty: false
            }
        );
        assert_eq!((index.subscription_count(), index.filter_count()), (2, 1));
        assert_eq!(matches(&index, "a/b/c"), vec![(7, 2), (8, 3)]);
        assert_eq!(
            index.remove(&fl, 9),
            Removed {
                previous: None,
                filter_now_empty: false
            }
        );
        assert_eq!(
            index.remove(&f("x/y"), 7),
            Removed {
                previous: None,
                filter_now_empty: true
            }
        );
        assert_eq!(
            index.remove(&fl, 7),
            Removed {
                previous: Some(2),
                filter_now_empty: false
            }
        );
        assert_eq!(
            index.remove(&fl, 8),
            Removed {
                previous: Some(3),
                filter_now_empty: true
            }
        );
        assert_eq!(
            index.remove(&fl, 8),
            Removed {
                previous: None,
                filter_now_empty: true
            }
        );
        assert_eq!(
            (
                index.subscription_count(),
                index.filter_count(),
                index.node_count()
            ),
            (0, 0, 0)
        );
        assert!(!index.has_match(&t("a/b/c")));
    }

    #[test]
    fn a_subscriber_with_two_matching_filters_is_reported_twice() {
        let mut index = TopicIndex::new();
        index.insert(&f("a/#"), 1, 0u8);
        index.insert(&f("a/b"), 1, 1);
        index.insert(&f("#"), 1, 2);
        assert_eq!(matches(&index, "a/b"), vec![(1, 0), (1, 1), (1, 2)]);
    }

    #[test]
    fn remove_prunes_every_node() {
        let mut index = TopicIndex::new();
        let filters = [
            "a/b/c",
            "a/b",
            "a/+/c",
            "a/#",
            "#",
            "+",
            "+/+/+/#",
            "/",
            "//",
            "a//",
            "$SYS/#",
            "a/b/c/d/e/f",
        ];
        for (i, fl) in filters.iter().enumerate() {
            index.insert(&f(fl), i as u32, 0u8);
            index.insert(&f(fl), 100 + i as u32, 0u8);
        }
        assert_eq!(index.filter_count(), filters.len());
        assert!(index.node_count() > 0);
        // Remove in an order that leaves interior nodes shared for a while.
        for fl in filters.iter().rev().chain(filters.iter()) {
            let i = filters.iter().position(|x| x == fl).unwrap_or(0) as u32;
            index.remove(&f(fl), i);
            index.remove(&f(fl), 100 + i);
            index.check_invariants();
        }
        assert_eq!(
            (
                index.subscription_count(),
                index.filter_count(),
                index.node_count()
            ),
            (0, 0, 0)
        );
    }

    #[test]
    fn wide_level_goes_to_a_map_and_back() {
        let mut index = TopicIndex::new();
        // Wildcard filters, so that they live in the trie (exact ones go to the map).
        for id in 0..1000u32 {
            index.insert(&f(&format!("devices/{id}/+")), id, 0u8);
        }
        index.insert(&f("devices/+/telemetry"), 5000, 1u8);
        assert_eq!(
            matches(&index, "devices/17/telemetry"),
            vec![(17, 0), (5000, 1)]
        );
        assert_eq!(matches(&index, "devices/nope/telemetry"), vec![(5000, 1)]);
        assert!(matches!(
            index.root.exact.get("devices").map(|n| &n.exact),
            Some(Children::Large(_))
        ));
        for id in 0..1000u32 {
            index.remove(&f(&format!("devices/{id}/+")), id);
        }
        assert_eq!(index.node_count(), 3); // devices, +, telemetry
        index.remove(&f("devices/+/telemetry"), 5000);
        assert_eq!(index.node_count(), 0);
    }

    #[test]
    fn exact_filters_live_in_the_map_and_wildcards_in_the_trie() {
        let mut index = TopicIndex::new();
        for id in 0..100u32 {
            index.insert(&f(&format!("devices/{id}/telemetry")), id, 0u8);
        }
        index.insert(&f("$SYS/broker/uptime"), 500, 2u8);
        assert_eq!((index.exact.len(), index.root.has_children()), (101, false));
        assert_eq!(matches(&index, "devices/7/telemetry"), vec![(7, 0)]);
        assert_eq!(matches(&index, "devices/7"), vec![]);
        assert_eq!(matches(&index, "$SYS/broker/uptime"), vec![(500, 2)]);
        index.insert(&f("devices/+/telemetry"), 1000, 1u8);
        index.insert(&f("#"), 1001, 1u8);
        assert_eq!(
            matches(&index, "devices/7/telemetry"),
            vec![(7, 0), (1000, 1), (1001, 1)]
        );
        assert_eq!(matches(&index, "$SYS/broker/uptime"), vec![(500, 2)]);
        assert!(index.has_match(&t("devices/8/telemetry")));
        for id in 0..100u32 {
            assert!(
                index
                    .remove(&f(&format!("devices/{id}/telemetry")), id)
                    .filter_now_empty
            );
        }
        index.remove(&f("$SYS/broker/uptime"), 500);
        assert!(index.exact.is_empty());
        assert!(index.exact.capacity() < 100, "the map gave its memory back");
        assert_eq!(index.node_count(), 4); // devices, +, telemetry, the # set
    }

    #[test]
    fn many_subscribers_on_one_filter() {
        let mut index = TopicIndex::new();
        let fl = f("fleet/+/cmd");
        let n = 100_000u32;
        for s in 0..n {
            let r = index.insert(&fl, s, (s % 3) as u8);
            assert_eq!(r.filter_was_empty, s == 0);
        }
        assert_eq!(index.insert(&fl, 5, 9).previous, Some(2));
        index.insert(&fl, 5, 2);
        for s in (0..n).filter(|s| s % 2 == 0) {
            let r = index.remove(&fl, s);
            assert_eq!(r.previous, Some((s % 3) as u8));
            assert!(!r.filter_now_empty);
        }
        index.check_invariants();
        assert_eq!(index.subscription_count(), (n / 2) as usize);
        let got = matches(&index, "fleet/x/cmd");
        let want: Vec<(u32, u8)> = (0..n)
            .filter(|s| s % 2 == 1)
            .map(|s| (s, (s % 3) as u8))
            .collect();
        assert_eq!(got, want);
        for s in (0..n).filter(|s| s % 2 == 1) {
            index.remove(&fl, s);
        }
        assert_eq!(
            (
                index.subscription_count(),
                index.filter_count(),
                index.node_count()
            ),
            (0, 0, 0)
        );
    }

    #[test]
    fn deep_filters_do_not_overflow_the_stack() {
        // 30k levels: recursion in insert, match, remove or drop would overflow.
        let deep_filter = vec!["+"; 30_000].join("/");
        let deep_topic = vec!["a"; 30_000].join("/");
        let deep_exact = deep_topic.clone();
        let mut index = TopicIndex::new();
        index.insert(&f(&deep_filter), 1, 0u8);
        index.insert(&f(&deep_exact), 2, 0u8);
        index.insert(&f(&format!("{deep_exact}/#")), 3, 0u8);
        assert_eq!(matches(&index, &deep_topic), vec![(1, 0), (2, 0), (3, 0)]);
        index.remove(&f(&deep_filter), 1);
        index.remove(&f(&deep_exact), 2);
        assert_eq!(matches(&index, &deep_topic), vec![(3, 0)]);
        let other = TopicIndex::<u8>::new();
        drop(std::mem::replace(&mut index, other));
    }

    #[test]
    fn random_operations_keep_the_invariants() {
        let levels = ["a", "b", "", "$SYS", "+"];
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut index = TopicIndex::new();
        let mut model: Vec<(String, u32, u8)> = Vec::new();
        for _ in 0..5000 {
            let depth = 1 + next(3);
            let mut parts: Vec<&str> = (0..depth).map(|_| levels[next(levels.len())]).collect();
            if next(4) == 0 {
                parts.push("#");
            }
            let filter = parts.join("/");
            let Ok(fl) = TopicFilter::new(filter.clone()) else {
                continue;
            };
            let sub = next(4) as u32;
            if next(3) == 0 {
                let r = index.remove(&fl, sub);
                let pos = model.iter().position(|(m, s, _)| *m == filter && *s == sub);
                assert_eq!(r.previous, pos.map(|p| model.swap_remove(p).2));
            } else {
                let value = next(256) as u8;
                index.insert(&fl, sub, value);
                match model.iter_mut().find(|(m, s, _)| *m == filter && *s == sub) {
                    Some(e) => e.2 = value,
                    None => model.push((filter, sub, value)),
                }
            }
            index.check_invariants();
            assert_eq!(index.subscription_count(), model.len());
        }
    }

    #[test]
    fn sizes() {
        // Documented in the report: what one more filter level costs.
        assert!(std::mem::size_of::<Node<u8>>() <= 56);
        assert!(std::mem::size_of::<SubSet<u8>>() <= 16);
    }
}
