//! The subscription index: which subscriptions match a concrete topic.
//!
//! Exact filters live in a hash map; wildcard filters in a trie keyed by token, with a
//! `*` branch and a `>` list at each node, so a lookup costs the topic's depth, not the
//! number of subscriptions. The index is consulted when a topic actor starts (or
//! restarts) to resolve its subscriber set; the hot path never touches it.
//!
//! It is owned by the topic supervisor actor, so it needs no lock.
//!
//! # Invariants
//!
//! - Every entry is reachable from exactly one place (the exact map or one trie node),
//!   recorded by its id in `entries`.
//! - Removing the last entry of a trie node prunes the node, so memory follows the live
//!   subscriptions under any churn.

use std::collections::HashMap;
use std::hash::Hash;

use streambus_types::topic::FilterToken;
use streambus_types::{Topic, TopicFilter};

/// An index from filters to entries of type `T`, keyed by an id of type `K`.
#[derive(Debug)]
pub(crate) struct SubscriptionIndex<K, T> {
    /// Filters without wildcards, by the one topic they match: a hash lookup.
    exact: HashMap<Topic, Vec<(K, T)>>,
    /// Filters with wildcards, token by token: a lookup walks at most the topic's depth
    /// times the wildcard branches, whatever the number of filters.
    trie: Node<K, T>,
    /// Every entry by key, with its filter: what `remove` needs to find it again.
    entries: HashMap<K, (TopicFilter, T)>,
}

/// One token position of the wildcard trie.
#[derive(Debug)]
struct Node<K, T> {
    /// Children by literal token.
    literal: HashMap<Box<str>, Node<K, T>>,
    /// The child for `*` (any one token).
    any_one: Option<Box<Node<K, T>>>,
    /// Entries whose filter ends here.
    here: Vec<(K, T)>,
    /// Entries whose filter ends with `>` after this node.
    tail: Vec<(K, T)>,
}

impl<K, T> Default for Node<K, T> {
    fn default() -> Self {
        Node {
            literal: HashMap::new(),
            any_one: None,
            here: Vec::new(),
            tail: Vec::new(),
        }
    }
}

impl<K, T> Node<K, T> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.any_one.is_none() && self.here.is_empty() && self.tail.is_empty()
    }
}

impl<K: Copy + Eq + Hash, T: Clone> Default for SubscriptionIndex<K, T> {
    fn default() -> Self {
        SubscriptionIndex {
            exact: HashMap::new(),
            trie: Node::default(),
            entries: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + Hash, T: Clone> SubscriptionIndex<K, T> {
    /// Adds an entry. An id already present is replaced.
    pub(crate) fn insert(&mut self, id: K, filter: TopicFilter, entry: T) {
        self.remove(id);
        self.entries.insert(id, (filter.clone(), entry.clone()));
        match filter.as_topic() {
            Some(topic) => self.exact.entry(topic).or_default().push((id, entry)),
            None => {
                let mut node = &mut self.trie;
                for token in filter.tokens() {
                    node = match token {
                        FilterToken::Literal(t) => node.literal.entry(t.into()).or_default(),
                        FilterToken::AnyOne => node.any_one.get_or_insert_with(Default::default),
                        FilterToken::Tail => {
                            node.tail.push((id, entry));
                            return;
                        }
                    };
                }
                node.here.push((id, entry));
            }
        }
    }

    /// Removes an entry by id; returns its filter and value if it was present.
    pub(crate) fn remove(&mut self, id: K) -> Option<(TopicFilter, T)> {
        let (filter, entry) = self.entries.remove(&id)?;
        match filter.as_topic() {
            Some(topic) => {
                if let Some(list) = self.exact.get_mut(&topic) {
                    list.retain(|(k, _)| *k != id);
                    if list.is_empty() {
                        self.exact.remove(&topic);
                    }
                }
            }
            None => {
                let tokens: Vec<_> = filter.tokens().collect();
                remove_from(&mut self.trie, &tokens, id);
            }
        }
        Some((filter, entry))
    }

    /// Every entry, in no particular order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &T> {
        self.entries.values().map(|(_, t)| t)
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Every entry whose filter matches `topic`, appended to `out`.
    pub(crate) fn matches(&self, topic: &Topic, out: &mut Vec<(K, T)>) {
        if let Some(list) = self.exact.get(topic) {
            out.extend(list.iter().cloned());
        }
        let tokens: Vec<&str> = topic.tokens().collect();
        collect(&self.trie, &tokens, topic.is_system(), out);
    }

    /// Whether any entry matches `topic`: the same walk as [`Self::matches`], stopping
    /// at the first match and copying nothing (the idle sweep asks it of every topic).
    pub(crate) fn has_match(&self, topic: &Topic) -> bool {
        if self.exact.get(topic).is_some_and(|list| !list.is_empty()) {
            return true;
        }
        let tokens: Vec<&str> = topic.tokens().collect();
        any_match(&self.trie, &tokens, topic.is_system())
    }
}

fn any_match<K, T>(node: &Node<K, T>, rest: &[&str], at_system_root: bool) -> bool {
    let Some((first, rest_after)) = rest.split_first() else {
        return !node.here.is_empty();
    };
    if !at_system_root
        && (!node.tail.is_empty()
            || node
                .any_one
                .as_ref()
                .is_some_and(|any| any_match(any, rest_after, false)))
    {
        return true;
    }
    node.literal
        .get(*first)
        .is_some_and(|next| any_match(next, rest_after, false))
}

fn collect<K: Copy, T: Clone>(node: &Node<K, T>, rest: &[&str], at_system_root: bool, out: &mut Vec<(K, T)>) {
    let Some((first, rest_after)) = rest.split_first() else {
        out.extend(node.here.iter().cloned());
        return;
    };
    // A wildcard as the first token never matches a `$` system topic.
    if !at_system_root {
        out.extend(node.tail.iter().cloned());
        if let Some(any) = &node.any_one {
            collect(any, rest_after, false, out);
        }
    }
    if let Some(next) = node.literal.get(*first) {
        collect(next, rest_after, false, out);
    }
}

fn remove_from<K: Copy + Eq, T>(node: &mut Node<K, T>, tokens: &[FilterToken<'_>], id: K) {
    match tokens.split_first() {
        None => node.here.retain(|(k, _)| *k != id),
        Some((FilterToken::Tail, _)) => node.tail.retain(|(k, _)| *k != id),
        Some((FilterToken::AnyOne, rest)) => {
            if let Some(any) = node.any_one.as_mut() {
                remove_from(any, rest, id);
                if any.is_empty() {
                    node.any_one = None;
                }
            }
        }
        Some((FilterToken::Literal(t), rest)) => {
            if let Some(next) = node.literal.get_mut(*t) {
                remove_from(next, rest, id);
                if next.is_empty() {
                    node.literal.remove(*t);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::new(s).unwrap()
    }
    fn t(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    fn ids(index: &SubscriptionIndex<u32, ()>, topic: &str) -> BTreeSet<u32> {
        let mut out = Vec::new();
        index.matches(&t(topic), &mut out);
        out.into_iter().map(|(k, _)| k).collect()
    }

    /// Exact and wildcard entries are found, and removal prunes the trie.
    #[test]
    fn lookup_and_remove() {
        let mut index = SubscriptionIndex::default();
        index.insert(1, f("a.b"), ());
        index.insert(2, f("a.*"), ());
        index.insert(3, f("a.>"), ());
        index.insert(4, f(">"), ());
        index.insert(5, f("$sys.>"), ());
        assert_eq!(ids(&index, "a.b"), [1, 2, 3, 4].into());
        assert_eq!(ids(&index, "a.b.c"), [3, 4].into());
        assert_eq!(ids(&index, "a"), [4].into());
        assert_eq!(ids(&index, "$sys.x"), [5].into());
        for id in 1..=5 {
            assert!(index.remove(id).is_some());
        }
        assert!(index.trie.is_empty() && index.exact.is_empty() && index.len() == 0);
    }

    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just("$s".to_owned()),
            Just("c".to_owned())
        ]
    }

    fn filter_token() -> impl Strategy<Value = String> {
        prop_oneof![token(), Just("*".to_owned())]
    }

    fn filter() -> impl Strategy<Value = String> {
        (prop::collection::vec(filter_token(), 1..4), any::<bool>()).prop_map(|(mut toks, tail)| {
            if tail {
                toks.push(">".into());
            }
            toks.join(".")
        })
    }

    proptest! {
        /// The index returns exactly the entries whose filter matches, as the plain
        /// matcher says, through inserts and removals; `has_match` agrees.
        #[test]
        fn index_agrees_with_matcher(
            filters in prop::collection::vec(filter(), 1..30),
            removed in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
            topics in prop::collection::vec(prop::collection::vec(token(), 1..5), 1..20),
        ) {
            let filters: Vec<TopicFilter> = filters.iter().map(|s| f(s)).collect();
            let mut index = SubscriptionIndex::default();
            for (i, filter) in filters.iter().enumerate() {
                index.insert(i as u32, filter.clone(), ());
            }
            let removed: BTreeSet<u32> = removed.iter().map(|r| r.index(filters.len()) as u32).collect();
            for id in &removed {
                index.remove(*id);
            }
            for topic in topics {
                let topic = topic.join(".");
                let expected: BTreeSet<u32> = filters
                    .iter()
                    .enumerate()
                    .filter(|(i, filter)| !removed.contains(&(*i as u32)) && filter.matches(&t(&topic)))
                    .map(|(i, _)| i as u32)
                    .collect();
                prop_assert_eq!(index.has_match(&t(&topic)), !expected.is_empty());
                prop_assert_eq!(ids(&index, &topic), expected);
            }
            for id in 0..filters.len() as u32 {
                index.remove(id);
            }
            prop_assert!(index.trie.is_empty());
        }
    }
}
