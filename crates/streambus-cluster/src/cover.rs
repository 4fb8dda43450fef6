//! Which NATS subscriptions a node needs for its local interest.
//!
//! NATS delivers a message once per matching subscription of a connection, so a node
//! holding `sensors.>` and `sensors.a.temp` would get `sensors.a.temp` twice. The node
//! therefore subscribes only to the filters that no other filter it holds covers.
//! Partial overlaps (`a.*` and `*.b` both match `a.b`) cannot be removed this way;
//! their duplicates are dropped on arrival by the run numbers (see `track`).

use std::collections::HashSet;

use streambus_types::TopicFilter;

/// The filters of `held` that no other filter of `held` covers.
pub(crate) fn uncovered(held: &HashSet<TopicFilter>) -> HashSet<TopicFilter> {
    // Only a wildcard filter can cover another; there are usually few of them.
    let wildcards: Vec<&TopicFilter> = held.iter().filter(|f| f.as_topic().is_none()).collect();
    held.iter()
        .filter(|f| !wildcards.iter().any(|w| *w != *f && w.covers(f)))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(filters: &[&str]) -> HashSet<TopicFilter> {
        filters.iter().map(|f| TopicFilter::new(f).unwrap()).collect()
    }

    #[test]
    fn covered_filters_are_left_out() {
        assert_eq!(uncovered(&set(&["s.>", "s.a.t", "s.*", "x.y"])), set(&["s.>", "x.y"]));
        assert_eq!(uncovered(&set(&["a.*", "*.b"])), set(&["a.*", "*.b"]));
        assert_eq!(uncovered(&set(&[">", "a", "$dlq.x"])), set(&[">", "$dlq.x"]));
        assert!(uncovered(&HashSet::new()).is_empty());
    }

    fn filter() -> impl Strategy<Value = TopicFilter> {
        proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("*")], 1..4).prop_flat_map(|tokens| {
            (Just(tokens), any::<bool>()).prop_map(|(mut t, tail)| {
                if tail {
                    t.push(">");
                }
                TopicFilter::new(&t.join(".")).unwrap()
            })
        })
    }

    proptest! {
        /// Every topic a held filter matches is matched by some subscribed filter, and
        /// no subscribed filter covers another.
        #[test]
        fn nothing_is_lost_and_no_covered_duplicate(held in proptest::collection::hash_set(filter(), 0..8)) {
            let subscribed = uncovered(&held);
            prop_assert!(subscribed.is_subset(&held));
            for topic in ["a", "b", "a.b", "b.a", "a.a.b", "b.b.b.a", "a.b.a.b"] {
                let topic = streambus_types::Topic::new(topic).unwrap();
                let wanted = held.iter().any(|f| f.matches(&topic));
                let got = subscribed.iter().any(|f| f.matches(&topic));
                prop_assert_eq!(wanted, got, "{}", topic);
            }
            for a in &subscribed {
                for b in &subscribed {
                    prop_assert!(a == b || !a.covers(b), "{} covers {}", a, b);
                }
            }
        }
    }
}
