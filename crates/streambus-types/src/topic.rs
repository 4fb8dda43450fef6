//! Topic names and subscription filters.
//!
//! streambus topics are NATS-style: dot-separated tokens such as
//! `sensors.dev42.temperature`. A [`TopicFilter`] may use two wildcards, each a whole
//! token: `*` matches exactly one token, `>` matches one or more trailing tokens and may
//! only be the last token. A [`Topic`] is what a message is published to and never
//! contains a wildcard.
//!
//! Topics whose first token starts with `$` (for example `$dlq.postgres`) are system
//! topics. As in MQTT, a filter whose first token is a wildcard does not match them, so a
//! `>` subscriber sees application traffic only; subscribe to `$dlq.>` explicitly.
//!
//! Both types are validated on construction, cheap to clone (an `Arc<str>` inside) and
//! serialize as plain strings.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest topic or filter accepted, in bytes.
pub const MAX_TOPIC_BYTES: usize = 256;
/// Most tokens a topic or filter may have.
pub const MAX_TOPIC_DEPTH: usize = 16;

/// Why a topic or filter string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The string is empty.
    #[error("topic is empty")]
    Empty,
    /// The string is longer than [`MAX_TOPIC_BYTES`].
    #[error("topic is {len} bytes, longer than the limit of {max}")]
    TooLong {
        /// Length of the refused string.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The string has more than [`MAX_TOPIC_DEPTH`] tokens.
    #[error("topic has {depth} tokens, more than the limit of {max}")]
    TooDeep {
        /// Number of tokens in the refused string.
        depth: usize,
        /// The limit.
        max: usize,
    },
    /// Two dots in a row, or a leading or trailing dot.
    #[error("topic has an empty token at position {position}")]
    EmptyToken {
        /// Zero-based index of the empty token.
        position: usize,
    },
    /// A character outside visible ASCII (space, control or non-ASCII).
    #[error("topic contains the invalid character {character:?}")]
    InvalidCharacter {
        /// The refused character.
        character: char,
    },
    /// `*` or `>` used inside a token instead of as a whole token.
    #[error("wildcard characters must be a whole token, found {token:?}")]
    PartialWildcard {
        /// The offending token.
        token: String,
    },
    /// A wildcard in a topic that is published to.
    #[error("cannot publish to a wildcard topic")]
    WildcardInTopic,
    /// `>` somewhere other than the last token of a filter.
    #[error("'>' must be the last token of a filter")]
    TailNotLast,
}

/// What [`check_common`] found in a valid topic or filter string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    /// Number of tokens.
    depth: usize,
    /// Some token is a whole `*` or `>`.
    wildcard: bool,
    /// Some token other than the last is a whole `>`.
    tail_not_last: bool,
}

/// What a byte is to [`check_common`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Visible ASCII other than the three below.
    Plain,
    /// `.`, between tokens.
    Dot,
    /// `*` or `>`.
    Wildcard,
    /// Space, control or non-ASCII.
    Invalid,
}

/// [`Class`] of every byte value.
static CLASSES: [Class; 256] = {
    let mut table = [Class::Invalid; 256];
    let mut b = 0x21;
    while b <= 0x7e {
        table[b] = Class::Plain;
        b += 1;
    }
    table[b'.' as usize] = Class::Dot;
    table[b'*' as usize] = Class::Wildcard;
    table[b'>' as usize] = Class::Wildcard;
    table
};

/// Checks the parts common to topics and filters in one pass over the bytes (every
/// topic and filter is checked on every publish and delivery, so this stays cheap).
///
/// Errors keep their precedence whatever their place in the string: an invalid
/// character first, then the first token that is empty or holds a partial wildcard,
/// then the depth.
fn check_common(s: &str) -> Result<Shape, TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong {
            len: s.len(),
            max: MAX_TOPIC_BYTES,
        });
    }
    let bytes = s.as_bytes();
    let mut shape = Shape {
        depth: 0,
        wildcard: false,
        tail_not_last: false,
    };
    let mut tail_seen = false;
    let mut first_error = None;
    let mut start = 0;
    let mut wildcard_in_token = false;
    // One step past the end closes the last token.
    for i in 0..=bytes.len() {
        let class = bytes.get(i).map_or(Class::Dot, |&b| CLASSES[b as usize]);
        match class {
            Class::Plain => continue,
            Class::Wildcard => {
                wildcard_in_token = true;
                continue;
            }
            Class::Invalid => {
                // Every byte before `i` is ASCII: `i` starts a character.
                let character = s[i..].chars().next().unwrap_or(char::REPLACEMENT_CHARACTER);
                return Err(TopicError::InvalidCharacter { character });
            }
            Class::Dot => {}
        }
        let token = &bytes[start..i];
        let position = shape.depth;
        shape.depth += 1;
        shape.tail_not_last |= tail_seen;
        if first_error.is_none() {
            match token {
                [] => first_error = Some(TopicError::EmptyToken { position }),
                [b'*'] => shape.wildcard = true,
                [b'>'] => {
                    shape.wildcard = true;
                    tail_seen = true;
                }
                _ if wildcard_in_token => {
                    first_error = Some(TopicError::PartialWildcard {
                        token: String::from_utf8_lossy(token).into_owned(),
                    });
                }
                _ => {}
            }
        }
        start = i + 1;
        wildcard_in_token = false;
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    if shape.depth > MAX_TOPIC_DEPTH {
        return Err(TopicError::TooDeep {
            depth: shape.depth,
            max: MAX_TOPIC_DEPTH,
        });
    }
    Ok(shape)
}

/// A concrete, validated topic name: what messages are published to.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Validates `name` as a publish topic.
    pub fn new(name: &str) -> Result<Self, TopicError> {
        if check_common(name)?.wildcard {
            return Err(TopicError::WildcardInTopic);
        }
        Ok(Topic(Arc::from(name)))
    }

    /// The topic as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `other` is this very name (a clone of it, sharing its allocation): a
    /// check that reads neither name. Equal names made apart are not the same.
    pub fn is_same(&self, other: &Topic) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The dot-separated tokens.
    pub fn tokens(&self) -> std::str::Split<'_, char> {
        self.0.split('.')
    }

    /// Whether this is a `$`-prefixed system topic.
    pub fn is_system(&self) -> bool {
        self.0.starts_with('$')
    }
}

/// A validated subscription filter, possibly with `*` and `>` wildcards.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter(Arc<str>);

/// One token of a filter, as the matcher sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterToken<'a> {
    /// Matches this token exactly.
    Literal(&'a str),
    /// `*`: any one token.
    AnyOne,
    /// `>`: one or more trailing tokens.
    Tail,
}

impl TopicFilter {
    /// Validates `filter`.
    pub fn new(filter: &str) -> Result<Self, TopicError> {
        if check_common(filter)?.tail_not_last {
            return Err(TopicError::TailNotLast);
        }
        Ok(TopicFilter(Arc::from(filter)))
    }

    /// The filter as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the filter contains a wildcard token.
    pub fn has_wildcard(&self) -> bool {
        self.tokens().any(|t| !matches!(t, FilterToken::Literal(_)))
    }

    /// The filter's tokens.
    pub fn tokens(&self) -> impl Iterator<Item = FilterToken<'_>> + Clone {
        self.0.split('.').map(|t| match t {
            "*" => FilterToken::AnyOne,
            ">" => FilterToken::Tail,
            lit => FilterToken::Literal(lit),
        })
    }

    /// Whether `topic` matches this filter.
    pub fn matches(&self, topic: &Topic) -> bool {
        let mut filter = self.tokens().peekable();
        if topic.is_system() && !matches!(filter.peek(), Some(FilterToken::Literal(_))) {
            return false;
        }
        let mut topic_tokens = topic.tokens();
        loop {
            match (filter.next(), topic_tokens.next()) {
                (None, None) => return true,
                (Some(FilterToken::Tail), Some(_)) => return true,
                (Some(FilterToken::AnyOne), Some(_)) => {}
                (Some(FilterToken::Literal(f)), Some(t)) if f == t => {}
                _ => return false,
            }
        }
    }

    /// Whether some topic matches both filters (so a subscriber holding both would get
    /// such a message twice).
    pub fn overlaps(&self, other: &TopicFilter) -> bool {
        let (mut a, mut b) = (self.tokens(), other.tokens());
        let system = |f: &TopicFilter| f.as_str().starts_with('$');
        let wild_first = |f: &TopicFilter| !matches!(f.tokens().next(), Some(FilterToken::Literal(_)));
        if (system(self) && wild_first(other)) || (system(other) && wild_first(self)) {
            return false;
        }
        loop {
            match (a.next(), b.next()) {
                (None, None) => return true,
                (Some(FilterToken::Tail), Some(_)) | (Some(_), Some(FilterToken::Tail)) => return true,
                (Some(FilterToken::AnyOne), Some(_)) | (Some(_), Some(FilterToken::AnyOne)) => {}
                (Some(FilterToken::Literal(x)), Some(FilterToken::Literal(y))) if x == y => {}
                _ => return false,
            }
        }
    }

    /// Whether every topic that `other` matches is matched by this filter too (a
    /// permission to subscribe to `self` covers a subscription to `other`).
    pub fn covers(&self, other: &TopicFilter) -> bool {
        let (mut a, mut b) = (self.tokens().peekable(), other.tokens().peekable());
        // System topics are only matched by a filter that names their first token.
        if other.as_str().starts_with('$') && !matches!(a.peek(), Some(FilterToken::Literal(_))) {
            return false;
        }
        loop {
            match (a.next(), b.next()) {
                (None, None) => return true,
                (Some(FilterToken::Tail), Some(_)) => return true,
                (Some(FilterToken::AnyOne), Some(FilterToken::AnyOne | FilterToken::Literal(_))) => {}
                (Some(FilterToken::Literal(x)), Some(FilterToken::Literal(y))) if x == y => {}
                _ => return false,
            }
        }
    }

    /// The filter as a topic, when it has no wildcard.
    pub fn as_topic(&self) -> Option<Topic> {
        (!self.has_wildcard()).then(|| Topic(self.0.clone()))
    }
}

impl From<Topic> for TopicFilter {
    fn from(topic: Topic) -> Self {
        TopicFilter(topic.0)
    }
}

macro_rules! string_like {
    ($ty:ident) => {
        impl FromStr for $ty {
            type Err = TopicError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $ty::new(s)
            }
        }
        impl TryFrom<&str> for $ty {
            type Error = TopicError;
            fn try_from(s: &str) -> Result<Self, Self::Error> {
                $ty::new(s)
            }
        }
        impl TryFrom<String> for $ty {
            type Error = TopicError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                $ty::new(&s)
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $ty::new(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}
string_like!(Topic);
string_like!(TopicFilter);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::new(s).unwrap()
    }
    fn t(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    /// Valid topics are accepted and every class of bad input gets its own error.
    #[test]
    fn topic_validation() {
        assert!(Topic::new("sensors.dev-1.temp_c").is_ok());
        assert_eq!(Topic::new(""), Err(TopicError::Empty));
        assert_eq!(Topic::new("a..b"), Err(TopicError::EmptyToken { position: 1 }));
        assert_eq!(Topic::new(".a"), Err(TopicError::EmptyToken { position: 0 }));
        assert_eq!(Topic::new("a."), Err(TopicError::EmptyToken { position: 1 }));
        assert_eq!(Topic::new("a.*"), Err(TopicError::WildcardInTopic));
        assert_eq!(Topic::new("a.>"), Err(TopicError::WildcardInTopic));
        assert_eq!(Topic::new("a b"), Err(TopicError::InvalidCharacter { character: ' ' }));
        assert_eq!(Topic::new("é"), Err(TopicError::InvalidCharacter { character: 'é' }));
        assert_eq!(
            Topic::new("a.b*"),
            Err(TopicError::PartialWildcard { token: "b*".into() })
        );
        let long = "a".repeat(MAX_TOPIC_BYTES + 1);
        assert_eq!(
            Topic::new(&long),
            Err(TopicError::TooLong {
                len: MAX_TOPIC_BYTES + 1,
                max: MAX_TOPIC_BYTES
            })
        );
        let deep = vec!["a"; MAX_TOPIC_DEPTH + 1].join(".");
        assert_eq!(
            Topic::new(&deep),
            Err(TopicError::TooDeep {
                depth: MAX_TOPIC_DEPTH + 1,
                max: MAX_TOPIC_DEPTH
            })
        );
    }

    /// Filters accept whole-token wildcards, and `>` only last.
    #[test]
    fn filter_validation() {
        assert!(TopicFilter::new("a.*.c").is_ok());
        assert!(TopicFilter::new(">").is_ok());
        assert!(TopicFilter::new("a.>").is_ok());
        assert_eq!(TopicFilter::new("a.>.c"), Err(TopicError::TailNotLast));
        assert_eq!(
            TopicFilter::new("a.*b"),
            Err(TopicError::PartialWildcard { token: "*b".into() })
        );
        assert!(!f("a.b").has_wildcard());
        assert!(f("a.*").has_wildcard());
    }

    /// The matching rules of `*`, `>` and literals, including system topics.
    #[test]
    fn matching() {
        assert!(f("a.b").matches(&t("a.b")));
        assert!(!f("a.b").matches(&t("a.b.c")));
        assert!(f("a.*").matches(&t("a.b")));
        assert!(!f("a.*").matches(&t("a")));
        assert!(!f("a.*").matches(&t("a.b.c")));
        assert!(f("a.>").matches(&t("a.b.c")));
        assert!(!f("a.>").matches(&t("a")));
        assert!(f(">").matches(&t("x")));
        assert!(f("*.*.temp").matches(&t("sensors.d1.temp")));
        assert!(!f(">").matches(&t("$dlq.pg")));
        assert!(!f("*.pg").matches(&t("$dlq.pg")));
        assert!(f("$dlq.>").matches(&t("$dlq.pg")));
    }

    /// Topics round-trip through serde as plain strings and are validated on the way in.
    #[test]
    fn serde_round_trip() {
        let json = serde_json::to_string(&t("a.b")).unwrap();
        assert_eq!(json, "\"a.b\"");
        assert_eq!(serde_json::from_str::<Topic>(&json).unwrap(), t("a.b"));
        assert!(serde_json::from_str::<Topic>("\"a.*\"").is_err());
    }

    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just("$s".to_owned()),
            "[a-c]{1,3}"
        ]
    }

    proptest! {
        /// A topic always matches itself as a filter, and `>` matches every non-system topic.
        #[test]
        fn topic_matches_itself(tokens in prop::collection::vec(token(), 1..6)) {
            let topic = Topic::new(&tokens.join(".")).unwrap();
            prop_assert!(TopicFilter::from(topic.clone()).matches(&topic));
            prop_assert_eq!(f(">").matches(&topic), !topic.is_system());
        }

        /// Replacing any one token by `*`, or any suffix by `>`, still matches (unless the
        /// wildcard lands on the first token of a system topic).
        #[test]
        fn wildcard_substitution_matches(
            tokens in prop::collection::vec(token(), 1..6),
            pick in any::<prop::sample::Index>(),
        ) {
            let topic = Topic::new(&tokens.join(".")).unwrap();
            let i = pick.index(tokens.len());
            let mut star = tokens.clone();
            star[i] = "*".into();
            let mut tail = tokens[..i].to_vec();
            tail.push(">".into());
            let blocked = i == 0 && topic.is_system();
            prop_assert_eq!(f(&star.join(".")).matches(&topic), !blocked);
            prop_assert_eq!(f(&tail.join(".")).matches(&topic), !blocked);
        }

        /// Arbitrary strings never panic the validators.
        #[test]
        fn validators_never_panic(s in ".{0,300}") {
            let _ = Topic::new(&s);
            let _ = TopicFilter::new(&s);
        }

        /// The one-pass validators give exactly the rules' answer, error included, on
        /// strings made of the characters that matter (dots, wildcards, a space, a
        /// non-ASCII letter), up to past both limits.
        #[test]
        fn validators_follow_the_rules(
            s in prop_oneof![
                prop::collection::vec(
                    prop::sample::select(vec!["a", "bc", "$s", "*", ">", "a*", ">b", "", " ", "é"]),
                    1..20,
                ).prop_map(|tokens| tokens.join(".")),
                "[ab.*>$ é]{0,24}",
                "([ab*>]{1,2}\\.){10,20}[ab>]",
                "[a.]{250,260}",
            ]
        ) {
            prop_assert_eq!(Topic::new(&s).map(|t| t.as_str().to_owned()), rules(&s, false));
            prop_assert_eq!(TopicFilter::new(&s).map(|f| f.as_str().to_owned()), rules(&s, true));
        }
    }

    /// The validation rules written out plainly, one check after the other, in the order
    /// their errors take precedence.
    fn rules(s: &str, filter: bool) -> Result<String, TopicError> {
        if s.is_empty() {
            return Err(TopicError::Empty);
        }
        if s.len() > MAX_TOPIC_BYTES {
            return Err(TopicError::TooLong {
                len: s.len(),
                max: MAX_TOPIC_BYTES,
            });
        }
        if let Some(character) = s.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(TopicError::InvalidCharacter { character });
        }
        let tokens: Vec<&str> = s.split('.').collect();
        for (position, token) in tokens.iter().enumerate() {
            if token.is_empty() {
                return Err(TopicError::EmptyToken { position });
            }
            if token.len() > 1 && token.contains(['*', '>']) {
                return Err(TopicError::PartialWildcard {
                    token: token.to_string(),
                });
            }
        }
        if tokens.len() > MAX_TOPIC_DEPTH {
            return Err(TopicError::TooDeep {
                depth: tokens.len(),
                max: MAX_TOPIC_DEPTH,
            });
        }
        let wild = |t: &&str| *t == "*" || *t == ">";
        if !filter && tokens.iter().any(wild) {
            return Err(TopicError::WildcardInTopic);
        }
        if filter && tokens[..tokens.len() - 1].contains(&">") {
            return Err(TopicError::TailNotLast);
        }
        Ok(s.to_owned())
    }

    /// `covers` is exactly "every topic the second matches, the first matches", checked
    /// exhaustively: every filter of up to three tokens over `a`, `b`, `$s`, `*`, `>`
    /// against every topic of up to four tokens over `a`, `b`, `c`, `$s`.
    #[test]
    fn covers_is_exact() {
        fn all(alphabet: &[&str], depth: usize) -> Vec<String> {
            let mut out: Vec<String> = alphabet.iter().map(|t| (*t).to_owned()).collect();
            let mut last = out.clone();
            for _ in 1..depth {
                last = last
                    .iter()
                    .flat_map(|p| alphabet.iter().map(move |t| format!("{p}.{t}")))
                    .collect();
                out.extend(last.iter().cloned());
            }
            out
        }
        let filters: Vec<TopicFilter> = all(&["a", "b", "$s", "*", ">"], 3)
            .iter()
            .filter_map(|s| TopicFilter::new(s).ok())
            .collect();
        let topics: Vec<Topic> = all(&["a", "b", "c", "$s"], 4)
            .iter()
            .map(|s| Topic::new(s).unwrap())
            .collect();
        for x in &filters {
            for y in &filters {
                let brute = topics.iter().all(|t| !y.matches(t) || x.matches(t));
                assert_eq!(x.covers(y), brute, "{x} covers {y}");
            }
        }
    }

    /// Overlap is exactly "some topic matches both", checked against sample topics.
    #[test]
    fn overlaps() {
        let f = |s: &str| TopicFilter::new(s).unwrap();
        let cases = [
            ("a.b", "a.b", true),
            ("a.b", "a.c", false),
            ("a.*", "a.b", true),
            ("a.>", "a", false),
            ("a.>", "a.b.c", true),
            ("*.b", "a.*", true),
            ("a.*", "a.*.c", false),
            (">", "$dlq.x", false),
            ("$dlq.>", "$dlq.pg", true),
            ("*", "a.b", false),
        ];
        for (x, y, want) in cases {
            assert_eq!(f(x).overlaps(&f(y)), want, "{x} vs {y}");
            assert_eq!(f(y).overlaps(&f(x)), want, "{y} vs {x}");
        }
    }
}
