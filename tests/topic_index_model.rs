//! Model tests: `TopicIndex` and `RetainedStore` driven by random operation sequences in
//! lockstep with naive models built on the reference matcher `filter_matches`.
//!
//! The level alphabet is tiny on purpose ("", "$SYS", "a", "b", plus "+" and a trailing
//! "#" in filters) so that random filters and topics collide and match often, including
//! empty levels and the `$` rule.

use bytes::Bytes;
use proptest::prelude::*;
use ternmq::broker::message::Message;
use ternmq::broker::retained::RetainedStore;
use ternmq::broker::topic_index::{Inserted, Removed, SubscriberId, TopicIndex};
use ternmq::protocol::topic::filter_matches;
use ternmq::protocol::{QoS, TopicFilter, TopicName};

const LEVELS: [&str; 4] = ["", "$SYS", "a", "b"];

fn topic_string() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(&LEVELS[..]), 1..5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("topic names are non-empty", |s| !s.is_empty())
}

fn filter_string() -> impl Strategy<Value = String> {
    let level = prop_oneof![
        3 => prop::sample::select(&LEVELS[..]),
        1 => Just("+"),
    ];
    (prop::collection::vec(level, 0..4), any::<bool>())
        .prop_map(|(mut levels, hash)| {
            if hash || levels.is_empty() {
                levels.push("#");
            }
            levels.join("/")
        })
        .prop_filter("filters are non-empty", |s| !s.is_empty())
}

fn topic(s: &str) -> TopicName {
    TopicName::new(s.to_owned()).expect("generated topics are valid")
}

fn filter(s: &str) -> TopicFilter {
    TopicFilter::new(s.to_owned()).expect("generated filters are valid")
}

#[derive(Debug, Clone)]
enum IndexOp {
    Insert(String, SubscriberId, u8),
    Remove(String, SubscriberId),
    Match(String),
}

fn index_op() -> impl Strategy<Value = IndexOp> {
    prop_oneof![
        4 => (filter_string(), 0..4u32, any::<u8>()).prop_map(|(f, s, v)| IndexOp::Insert(f, s, v)),
        2 => (filter_string(), 0..4u32).prop_map(|(f, s)| IndexOp::Remove(f, s)),
        3 => topic_string().prop_map(IndexOp::Match),
    ]
}

/// The naive index: a list of (filter, subscriber, value).
#[derive(Default)]
struct IndexModel(Vec<(String, SubscriberId, u8)>);

impl IndexModel {
    fn has_filter(&self, f: &str) -> bool {
        self.0.iter().any(|(m, _, _)| m == f)
    }

    fn insert(&mut self, f: &str, sub: SubscriberId, value: u8) -> Inserted<u8> {
        let filter_was_empty = !self.has_filter(f);
        let previous = match self.0.iter_mut().find(|(m, s, _)| m == f && *s == sub) {
            Some(entry) => Some(std::mem::replace(&mut entry.2, value)),
            None => {
                self.0.push((f.to_owned(), sub, value));
                None
            }
        };
        Inserted {
            previous,
            filter_was_empty,
        }
    }

    fn remove(&mut self, f: &str, sub: SubscriberId) -> Removed<u8> {
        let pos = self.0.iter().position(|(m, s, _)| m == f && *s == sub);
        let previous = pos.map(|p| self.0.swap_remove(p).2);
        Removed {
            previous,
            filter_now_empty: !self.has_filter(f),
        }
    }

    fn matches(&self, t: &str) -> Vec<(SubscriberId, u8)> {
        let mut out: Vec<_> = self
            .0
            .iter()
            .filter(|(m, _, _)| filter_matches(m, t))
            .map(|&(_, s, v)| (s, v))
            .collect();
        out.sort_unstable();
        out
    }

    fn filter_count(&self) -> usize {
        let mut filters: Vec<&str> = self.0.iter().map(|(m, _, _)| m.as_str()).collect();
        filters.sort_unstable();
        filters.dedup();
        filters.len()
    }
}

#[derive(Debug, Clone)]
enum RetainedOp {
    Insert(String, u8),
    Remove(String),
    Match(String),
}

fn retained_op() -> impl Strategy<Value = RetainedOp> {
    prop_oneof![
        4 => (topic_string(), 0..4u8).prop_map(|(t, n)| RetainedOp::Insert(t, n)),
        2 => topic_string().prop_map(RetainedOp::Remove),
        3 => filter_string().prop_map(RetainedOp::Match),
    ]
}

fn message(t: &str, payload_len: u8) -> Message {
    Message::new(
        topic(t),
        Bytes::from(vec![b'x'; usize::from(payload_len)]),
        QoS::AtMostOnce,
        true,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn topic_index_matches_the_naive_model(ops in prop::collection::vec(index_op(), 1..80)) {
        let mut index = TopicIndex::new();
        let mut model = IndexModel::default();
        for op in &ops {
            match op {
                IndexOp::Insert(f, s, v) => {
                    prop_assert_eq!(index.insert(&filter(f), *s, *v), model.insert(f, *s, *v), "insert {} {}", f, s);
                }
                IndexOp::Remove(f, s) => {
                    prop_assert_eq!(index.remove(&filter(f), *s), model.remove(f, *s), "remove {} {}", f, s);
                }
                IndexOp::Match(t) => {
                    let mut got = Vec::new();
                    index.for_each_match(&topic(t), |s, v| got.push((s, v)));
                    got.sort_unstable();
                    let want = model.matches(t);
                    prop_assert_eq!(index.has_match(&topic(t)), !want.is_empty(), "has_match {}", t);
                    prop_assert_eq!(got, want, "matches of {}", t);
                }
            }
            prop_assert_eq!(index.subscription_count(), model.0.len());
            prop_assert_eq!(index.filter_count(), model.filter_count());
        }
        // Every topic of the alphabet up to depth 3, against the final state.
        for t in all_topics(3) {
            let mut got = Vec::new();
            index.for_each_match(&topic(&t), |s, v| got.push((s, v)));
            got.sort_unstable();
            prop_assert_eq!(got, model.matches(&t), "final matches of {}", t);
        }
    }

    #[test]
    fn retained_store_matches_a_naive_scan(ops in prop::collection::vec(retained_op(), 1..80)) {
        let mut store = RetainedStore::new();
        let mut model: Vec<Message> = Vec::new();
        for op in &ops {
            match op {
                RetainedOp::Insert(t, n) => {
                    let m = message(t, *n);
                    let want = match model.iter_mut().find(|old| old.topic.as_str() == t) {
                        Some(old) => Some(std::mem::replace(old, m.clone())),
                        None => {
                            model.push(m.clone());
                            None
                        }
                    };
                    prop_assert_eq!(store.insert(m), want, "insert {}", t);
                }
                RetainedOp::Remove(t) => {
                    let want = model.iter().position(|m| m.topic.as_str() == t).map(|p| model.swap_remove(p));
                    prop_assert_eq!(store.remove(&topic(t)), want, "remove {}", t);
                }
                RetainedOp::Match(f) => {
                    let mut got = Vec::new();
                    store.for_each_match(&filter(f), |m| got.push(m.topic.to_string()));
                    got.sort_unstable();
                    let mut want: Vec<String> = model
                        .iter()
                        .filter(|m| filter_matches(f, m.topic.as_str()))
                        .map(|m| m.topic.to_string())
                        .collect();
                    want.sort_unstable();
                    prop_assert_eq!(got, want, "matches of {}", f);
                }
            }
            prop_assert_eq!(store.len(), model.len());
            prop_assert_eq!(store.is_empty(), model.is_empty());
            prop_assert_eq!(store.payload_bytes(), model.iter().map(|m| m.payload.len()).sum::<usize>());
        }
        for m in &model {
            prop_assert_eq!(store.get(&m.topic), Some(m));
        }
    }
}

/// Every topic name over `LEVELS` with 1..=depth levels.
fn all_topics(depth: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut layer: Vec<String> = LEVELS.iter().map(|s| s.to_string()).collect();
    for _ in 0..depth {
        out.extend(layer.iter().filter(|s| !s.is_empty()).cloned());
        layer = layer
            .iter()
            .flat_map(|p| LEVELS.iter().map(move |l| format!("{p}/{l}")))
            .collect();
    }
    out
}

#[test]
fn model_generators_cover_the_interesting_cases() {
    // A cheap sanity check that the alphabet exercises `$`, empty levels and wildcards.
    let topics = all_topics(2);
    assert!(topics.contains(&"$SYS/a".to_owned()));
    assert!(topics.contains(&"/".to_owned()));
    assert!(topics.contains(&"a/".to_owned()));
    assert!(filter_matches("$SYS/#", "$SYS/a") && !filter_matches("#", "$SYS/a"));
}
