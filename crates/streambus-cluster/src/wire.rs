//! How a message travels on NATS: its subject, and the headers that carry its origin,
//! its place in the origin's sequence, the groups already served, and its own headers.
//!
//! The bus's headers are ordered name/value pairs of any text; NATS headers are an
//! unordered map with restricted characters. So a message's own headers travel in one
//! NATS header, form-encoded in order, and come out exactly as they went in. A message
//! published on the prefix by a plain NATS client (no origin header) is taken too: its
//! NATS headers become the message's headers.

use std::sync::Arc;

use async_nats::HeaderMap;
use streambus_types::{Headers, Topic, TopicFilter};

/// The stamp: `<origin> <generation>.<sequence> <flags>[ <served groups>]`, where the
/// origin is the node's id (name and incarnation, no spaces), flags are `r` (retain)
/// or `-`, and the served groups are form-encoded (`g=a&g=b`). One header, so that
/// each message costs NATS and both nodes one header to write and parse.
pub(crate) const STAMP: &str = "Streambus";
/// The message's own headers, form-encoded in order.
pub(crate) const HEADERS: &str = "Streambus-Headers";

/// The NATS subject of `topic` under `prefix`.
pub(crate) fn subject(prefix: &str, topic: &str) -> String {
    format!("{prefix}.{topic}")
}

/// The NATS subject of `filter` under `prefix` (NATS wildcards are the bus's own).
pub(crate) fn filter_subject(prefix: &str, filter: &TopicFilter) -> String {
    format!("{prefix}.{}", filter.as_str())
}

/// The topic of a NATS `subject` under `prefix`, if it is one.
pub(crate) fn topic_of(prefix: &str, subject: &str) -> Option<Topic> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    Topic::new(rest).ok().filter(|t| !t.is_system())
}

/// What the origin says about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// The origin's id.
    pub(crate) origin: Arc<str>,
    /// The origin's run for this topic (a new one after the origin forgot the topic).
    pub(crate) generation: u64,
    /// Position in the run, from 1.
    pub(crate) sequence: u64,
}

/// A message as it came off NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Incoming {
    /// Its origin's stamp; `None` for a message from a plain NATS client.
    pub(crate) stamp: Option<Stamp>,
    /// Queue groups the origin served.
    pub(crate) served: Vec<String>,
    /// The publisher asked for it to be retained.
    pub(crate) retain: bool,
    /// Its own headers.
    pub(crate) headers: Headers,
}

/// The NATS headers of a forwarded message.
pub(crate) fn encode(stamp: &Stamp, served: Option<&[Arc<str>]>, retain: bool, headers: &Headers) -> HeaderMap {
    use std::fmt::Write as _;
    let mut value = String::with_capacity(stamp.origin.len() + 48);
    let _ = write!(
        value,
        "{} {}.{} {}",
        stamp.origin,
        stamp.generation,
        stamp.sequence,
        if retain { 'r' } else { '-' }
    );
    if let Some(groups) = served.filter(|g| !g.is_empty()) {
        value.push(' ');
        let mut form = form_urlencoded::Serializer::new(value);
        for g in groups {
            form.append_pair("g", g);
        }
        value = form.finish();
    }
    let mut map = HeaderMap::new();
    map.insert(STAMP, value.as_str());
    if !headers.is_empty() {
        let mut form = form_urlencoded::Serializer::new(String::new());
        for (name, value) in headers.as_slice() {
            form.append_pair(name, value);
        }
        map.insert(HEADERS, form.finish().as_str());
    }
    map
}

/// Reads what [`encode`] wrote, or a plain NATS client's headers. A stamp that does
/// not parse is an error (the message is counted as invalid, not delivered).
pub(crate) fn decode(map: Option<&HeaderMap>) -> Result<Incoming, String> {
    let Some(map) = map else {
        return Ok(Incoming {
            stamp: None,
            served: Vec::new(),
            retain: false,
            headers: Headers::new(),
        });
    };
    let Some(stamp) = map.get(STAMP).map(|v| v.as_str()) else {
        // A plain NATS client's message: its headers as they are (NATS keeps no order
        // between names, so they are sorted to be deterministic).
        let mut pairs: Vec<(String, String)> = map
            .iter()
            .flat_map(|(name, values)| values.iter().map(move |v| (name.to_string(), v.as_str().to_owned())))
            .collect();
        pairs.sort();
        return Ok(Incoming {
            stamp: None,
            served: Vec::new(),
            retain: false,
            headers: pairs.into(),
        });
    };
    let broken = || format!("{STAMP} {stamp:?} is not `<origin> <generation>.<sequence> <flags>`");
    let mut parts = stamp.splitn(4, ' ');
    let (Some(origin), Some(numbers), Some(flags)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(broken());
    };
    let (generation, sequence) = numbers
        .split_once('.')
        .and_then(|(g, s)| Some((g.parse::<u64>().ok()?, s.parse::<u64>().ok()?)))
        .filter(|&(_, s)| s > 0)
        .ok_or_else(broken)?;
    let retain = match flags {
        "r" => true,
        "-" => false,
        _ => return Err(broken()),
    };
    if origin.is_empty() {
        return Err(broken());
    }
    let served = parts
        .next()
        .map(|v| {
            form_urlencoded::parse(v.as_bytes())
                .filter(|(k, _)| k == "g")
                .map(|(_, v)| v.into_owned())
                .collect()
        })
        .unwrap_or_default();
    let headers: Vec<(String, String)> = map
        .get(HEADERS)
        .map(|v| {
            form_urlencoded::parse(v.as_str().as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    Ok(Incoming {
        stamp: Some(Stamp {
            origin: origin.into(),
            generation,
            sequence,
        }),
        served,
        retain,
        headers: headers.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn subjects_map_both_ways() {
        assert_eq!(subject("sb", "a.b"), "sb.a.b");
        assert_eq!(topic_of("sb", "sb.a.b").unwrap().as_str(), "a.b");
        assert_eq!(topic_of("org.sb", "org.sb.x").unwrap().as_str(), "x");
        assert!(topic_of("sb", "sbx.a").is_none());
        assert!(topic_of("sb", "sb").is_none());
        assert!(
            topic_of("sb", "sb.$dlq.x").is_none(),
            "system topics stay on their node"
        );
        assert_eq!(filter_subject("sb", &TopicFilter::new("a.*.>").unwrap()), "sb.a.*.>");
    }

    #[test]
    fn a_plain_nats_message_is_taken_with_its_headers() {
        let got = decode(None).unwrap();
        assert_eq!(got.stamp, None);
        let mut map = HeaderMap::new();
        map.insert("b", "2");
        map.insert("a", "1");
        let got = decode(Some(&map)).unwrap();
        assert_eq!(got.stamp, None);
        assert_eq!(
            got.headers.as_slice(),
            &[("a".into(), "1".into()), ("b".into(), "2".into())]
        );
    }

    #[test]
    fn a_broken_stamp_is_refused() {
        for stamp in [
            "",
            "n/1",
            "n/1 1.1",
            "n/1 x.1 -",
            "n/1 1.x -",
            "n/1 1.0 -",
            "n/1 -1.2 -",
            "n/1 1.2 q",
            " 1.2 -",
        ] {
            let mut map = HeaderMap::new();
            map.insert(STAMP, stamp);
            assert!(decode(Some(&map)).is_err(), "{stamp:?}");
        }
        let mut map = HeaderMap::new();
        map.insert(STAMP, "n/1 3.4 r");
        let got = decode(Some(&map)).unwrap();
        assert!(got.retain);
        assert_eq!(got.stamp.unwrap().sequence, 4);
    }

    proptest! {
        /// Whatever the headers and groups, they come back exactly, in order.
        #[test]
        fn encode_then_decode_is_exact(
            headers in proptest::collection::vec(("[ -~]{1,12}", "\\PC{0,16}"), 0..6),
            groups in proptest::collection::vec("[!-~]{1,10}", 0..4),
            retain in any::<bool>(),
            generation in 0u64..u64::MAX,
            sequence in 1u64..u64::MAX,
        ) {
            let stamp = Stamp { origin: "node-a/7f".into(), generation, sequence };
            let served: Vec<Arc<str>> = groups.iter().map(|g| Arc::from(g.as_str())).collect();
            let h: Headers = headers.clone().into();
            let map = encode(&stamp, Some(&served), retain, &h);
            let got = decode(Some(&map)).unwrap();
            prop_assert_eq!(got.stamp, Some(stamp));
            prop_assert_eq!(got.served, groups);
            prop_assert_eq!(got.retain, retain);
            prop_assert_eq!(got.headers.as_slice(), h.as_slice());
        }
    }
}
