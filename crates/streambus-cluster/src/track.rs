//! Per-origin, per-topic runs: what finds a gap on the backplane, and a duplicate.
//!
//! The origin numbers what it forwards per topic (a generation, then 1, 2, 3… within
//! it). A node that receives topic `t` from origin `o` remembers the last number; the
//! next one tells whether messages were lost in between (NATS is at-most-once: a server
//! that dies, or a slow connection it cuts, loses what it held) or whether this one came
//! twice (two overlapping subscriptions). Both sides bound what they remember; a topic
//! forgotten on either side starts a new run, which is taken as it comes.

use std::collections::HashMap;
use std::sync::Arc;

use streambus_types::{Topic, TopicFilter};

use crate::wire::Stamp;

/// What to do with a stamped message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Deliver it; `lost` messages of its run were never received before it.
    Deliver { lost: u64 },
    /// Already delivered: drop it.
    Duplicate,
}

/// An origin and a topic.
type Pair = (Arc<str>, Topic);
/// A run: its generation and the last sequence seen.
type Run = (u64, u64);

/// The receiving side: the last number seen per (origin, topic).
#[derive(Debug)]
pub(crate) struct Runs {
    last: HashMap<Pair, Run>,
    /// The pair judged last, kept out of the map: messages come in runs of one topic
    /// from one origin, and this spares hashing them one by one.
    hot: Option<(Pair, Run)>,
    max: usize,
}

impl Runs {
    pub(crate) fn new(max: usize) -> Self {
        Runs {
            last: HashMap::new(),
            hot: None,
            max,
        }
    }

    /// Judges the message of `topic` with `stamp`, and remembers it.
    pub(crate) fn judge(&mut self, topic: &Topic, stamp: &Stamp) -> Verdict {
        let is_hot = self
            .hot
            .as_ref()
            .is_some_and(|((origin, t), _)| t == topic && **origin == *stamp.origin);
        if !is_hot {
            if let Some((key, value)) = self.hot.take() {
                self.last.insert(key, value);
            }
            let key = (stamp.origin.clone(), topic.clone());
            let value = match self.last.remove(&key) {
                Some(value) => value,
                None => {
                    if self.last.len() >= self.max {
                        self.last.clear();
                    }
                    self.hot = Some((key, (stamp.generation, stamp.sequence)));
                    return Verdict::Deliver { lost: 0 };
                }
            };
            self.hot = Some((key, value));
        }
        let Some((_, (generation, last))) = self.hot.as_mut() else {
            unreachable!("set above");
        };
        if *generation != stamp.generation {
            // A new run: the origin forgot the topic (or restarted under the same id,
            // which incarnations rule out). Nothing can be said about loss.
            *generation = stamp.generation;
            *last = stamp.sequence;
            return Verdict::Deliver { lost: 0 };
        }
        if stamp.sequence <= *last {
            return Verdict::Duplicate;
        }
        let lost = stamp.sequence - *last - 1;
        *last = stamp.sequence;
        Verdict::Deliver { lost }
    }

    /// Forgets every topic `filter` matches: the node stopped listening to them, so the
    /// next message of such a topic starts a run (what was published meanwhile was not
    /// for this node, and is no gap).
    pub(crate) fn forget(&mut self, filter: &TopicFilter) {
        self.last.retain(|(_, topic), _| !filter.matches(topic));
        if self.hot.as_ref().is_some_and(|((_, topic), _)| filter.matches(topic)) {
            self.hot = None;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.last.len() + usize::from(self.hot.is_some())
    }
}

/// The sending side: the next number per topic.
#[derive(Debug)]
pub(crate) struct Numbering {
    next: HashMap<Topic, (u64, u64)>,
    generation: u64,
    max: usize,
}

impl Numbering {
    pub(crate) fn new(max: usize) -> Self {
        Numbering {
            next: HashMap::new(),
            generation: 0,
            max,
        }
    }

    /// The (generation, sequence) of the next message of `topic`.
    #[cfg(test)]
    pub(crate) fn next(&mut self, topic: &Topic) -> (u64, u64) {
        self.next_run(topic, 1)
    }

    /// The generation and the first sequence of the next `n` messages of `topic`
    /// (numbered `first..first + n`).
    pub(crate) fn next_run(&mut self, topic: &Topic, n: u64) -> (u64, u64) {
        if let Some((generation, seq)) = self.next.get_mut(topic) {
            let first = *seq + 1;
            *seq += n;
            return (*generation, first);
        }
        if self.next.len() >= self.max {
            self.next.clear();
        }
        self.generation += 1;
        self.next.insert(topic.clone(), (self.generation, n));
        (self.generation, 1)
    }

    /// `count` messages of `topic` will never be forwarded (the forwarder lost them):
    /// their numbers are skipped, so receivers see the gap.
    pub(crate) fn skip(&mut self, topic: &Topic, count: u64) {
        if let Some((_, seq)) = self.next.get_mut(topic) {
            *seq += count;
        }
        // A topic not numbered yet: its first forwarded message starts a run, and a
        // run's start says nothing of loss. The forwarder counts these losses itself.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    fn stamp(origin: &str, generation: u64, sequence: u64) -> Stamp {
        Stamp {
            origin: origin.into(),
            generation,
            sequence,
        }
    }

    proptest::proptest! {
        /// The hot pair changes nothing: verdicts are those of a plain map, whatever
        /// the mix of origins, topics, generations, sequences and forgetting.
        #[test]
        fn the_hot_pair_is_only_a_shortcut(
            steps in proptest::collection::vec((0u8..3, 0u8..4, 1u64..3, 1u64..12, proptest::bool::weighted(0.05)), 1..300)
        ) {
            let mut runs = Runs::new(1000);
            let mut model: HashMap<(String, String), (u64, u64)> = HashMap::new();
            for (origin, topic, generation, sequence, forget) in steps {
                let (o, t) = (format!("o{origin}"), format!("t.{topic}"));
                if forget {
                    runs.forget(&TopicFilter::new(&t).unwrap());
                    model.retain(|(_, mt), _| *mt != t);
                    continue;
                }
                let expected = match model.get_mut(&(o.clone(), t.clone())) {
                    Some((g, last)) if *g == generation => {
                        if sequence <= *last {
                            Verdict::Duplicate
                        } else {
                            let lost = sequence - *last - 1;
                            *last = sequence;
                            Verdict::Deliver { lost }
                        }
                    }
                    Some(entry) => {
                        *entry = (generation, sequence);
                        Verdict::Deliver { lost: 0 }
                    }
                    None => {
                        model.insert((o.clone(), t.clone()), (generation, sequence));
                        Verdict::Deliver { lost: 0 }
                    }
                };
                let got = runs.judge(&Topic::new(&t).unwrap(), &stamp(&o, generation, sequence));
                proptest::prop_assert_eq!(got, expected);
            }
        }
    }

    #[test]
    fn in_order_then_a_gap_then_a_duplicate() {
        let mut runs = Runs::new(100);
        let a = t("a");
        assert_eq!(runs.judge(&a, &stamp("o", 1, 1)), Verdict::Deliver { lost: 0 });
        assert_eq!(runs.judge(&a, &stamp("o", 1, 2)), Verdict::Deliver { lost: 0 });
        assert_eq!(runs.judge(&a, &stamp("o", 1, 5)), Verdict::Deliver { lost: 2 });
        assert_eq!(runs.judge(&a, &stamp("o", 1, 5)), Verdict::Duplicate);
        assert_eq!(runs.judge(&a, &stamp("o", 1, 3)), Verdict::Duplicate);
        // Other origins and topics run apart.
        assert_eq!(runs.judge(&a, &stamp("p", 1, 9)), Verdict::Deliver { lost: 0 });
        assert_eq!(runs.judge(&t("b"), &stamp("o", 1, 7)), Verdict::Deliver { lost: 0 });
        // A new generation starts a run.
        assert_eq!(runs.judge(&a, &stamp("o", 2, 1)), Verdict::Deliver { lost: 0 });
        assert_eq!(runs.judge(&a, &stamp("o", 2, 2)), Verdict::Deliver { lost: 0 });
    }

    #[test]
    fn forgetting_a_filter_restarts_its_topics() {
        let mut runs = Runs::new(100);
        runs.judge(&t("s.1"), &stamp("o", 1, 1));
        runs.judge(&t("x.1"), &stamp("o", 1, 1));
        runs.forget(&TopicFilter::new("s.>").unwrap());
        assert_eq!(runs.judge(&t("s.1"), &stamp("o", 1, 10)), Verdict::Deliver { lost: 0 });
        assert_eq!(runs.judge(&t("x.1"), &stamp("o", 1, 10)), Verdict::Deliver { lost: 8 });
    }

    #[test]
    fn both_sides_stay_bounded() {
        let mut runs = Runs::new(10);
        let mut numbering = Numbering::new(10);
        for i in 0..1000 {
            let topic = t(&format!("d.{i}"));
            let (g, s) = numbering.next(&topic);
            assert_eq!(s, 1);
            runs.judge(&topic, &stamp("o", g, s));
            assert!(runs.len() <= 10);
            assert!(numbering.next.len() <= 10);
        }
    }

    #[test]
    fn numbering_counts_per_topic_and_skips_lost_ones() {
        let mut n = Numbering::new(100);
        let (a, b) = (t("a"), t("b"));
        assert_eq!(n.next(&a), (1, 1));
        assert_eq!(n.next(&a), (1, 2));
        assert_eq!(n.next(&b), (2, 1));
        n.skip(&a, 3);
        assert_eq!(n.next(&a), (1, 6));
        assert_eq!(n.next_run(&a, 10), (1, 7));
        assert_eq!(n.next(&a), (1, 17));
        assert_eq!(n.next_run(&t("c"), 5), (3, 1));
        assert_eq!(n.next(&t("c")), (3, 6));
        // Sender and receiver together: the skip is seen as exactly that gap.
        let mut runs = Runs::new(100);
        let mut n = Numbering::new(100);
        for _ in 0..3 {
            let (g, s) = n.next(&a);
            assert_eq!(runs.judge(&a, &stamp("o", g, s)), Verdict::Deliver { lost: 0 });
        }
        n.skip(&a, 4);
        let (g, s) = n.next(&a);
        assert_eq!(runs.judge(&a, &stamp("o", g, s)), Verdict::Deliver { lost: 4 });
    }
}
