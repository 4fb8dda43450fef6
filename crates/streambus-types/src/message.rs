//! Messages as published, and the events a subscriber receives.
//!
//! A [`Message`] is what a publisher hands to the bus. The topic actor stamps it with a
//! per-topic sequence number and a publish time and turns it into a [`Delivery`]. One
//! delivery is shared by every subscriber it fans out to: its payload is a
//! [`bytes::Bytes`] and its headers an `Arc`, so fan-out copies no payload bytes.
//!
//! A subscriber's stream of [`Event`]s carries deliveries, [`Gap`]s (messages the bus
//! had to drop for this subscriber under its overflow policy, reported before the next
//! delivery) and finally, if the subscription ended for a reason other than the
//! subscriber's own request, a [`CloseReason`].

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::topic::Topic;

/// Message headers: ordered name/value pairs, shared between all deliveries of a message.
///
/// The empty set allocates nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Headers(Option<Arc<[(String, String)]>>);

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Headers(None)
    }

    /// The headers as a slice of `(name, value)` pairs.
    pub fn as_slice(&self) -> &[(String, String)] {
        self.0.as_deref().unwrap_or(&[])
    }

    /// The first value of header `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.as_slice().iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// Bytes the headers count for in size limits: names plus values.
    pub fn byte_len(&self) -> usize {
        self.as_slice().iter().map(|(n, v)| n.len() + v.len()).sum()
    }
}

impl From<Vec<(String, String)>> for Headers {
    fn from(pairs: Vec<(String, String)>) -> Self {
        if pairs.is_empty() {
            Headers(None)
        } else {
            Headers(Some(pairs.into()))
        }
    }
}

/// A message as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Where it is published.
    pub topic: Topic,
    /// The opaque body.
    pub payload: Bytes,
    /// Optional headers.
    pub headers: Headers,
    /// Keep this message as the topic's retained value, delivered first to every new
    /// matching subscriber. A retained publish with an empty payload clears the value.
    pub retain: bool,
}

impl Message {
    /// A message with no headers, not retained.
    pub fn new(topic: Topic, payload: impl Into<Bytes>) -> Self {
        Message {
            topic,
            payload: payload.into(),
            headers: Headers::new(),
            retain: false,
        }
    }

    /// Sets the headers.
    pub fn with_headers(mut self, headers: impl Into<Headers>) -> Self {
        self.headers = headers.into();
        self
    }

    /// Marks the message as the topic's retained value.
    pub fn retained(mut self) -> Self {
        self.retain = true;
        self
    }

    /// Bytes the message counts for in size limits and buffers: payload plus headers.
    pub fn byte_len(&self) -> usize {
        self.payload.len() + self.headers.byte_len()
    }
}

/// A message as delivered to a subscriber.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The concrete topic it was published to.
    pub topic: Topic,
    /// Per-topic sequence number, from 1, without holes except those reported by a gap.
    /// A topic reaped for idleness (only possible while nothing subscribes to it) starts
    /// again from 1.
    pub sequence: u64,
    /// Publish time, nanoseconds since the Unix epoch: when the topic took the message,
    /// unique and increasing within a topic (the messages of one publish batch are one
    /// nanosecond apart), so a time-series store can key points on it.
    pub timestamp_ns: u64,
    /// The body, shared with every other subscriber.
    pub payload: Bytes,
    /// The headers, shared with every other subscriber.
    pub headers: Headers,
    /// True when this is the topic's retained value replayed to a new subscriber.
    pub retained: bool,
    /// True when the publisher asked the topic to retain the message (on its live
    /// delivery as on its replays), so that a sink can carry the flag on (an MQTT
    /// broker's retained message).
    pub retain: bool,
    /// On a federated bus, the queue groups this node served the message to (so that
    /// other nodes do not serve those groups again); `None` elsewhere.
    #[serde(skip)]
    pub groups_served: Option<Arc<[Arc<str>]>>,
}

impl Delivery {
    /// Bytes the delivery counts for in subscriber buffers: payload plus headers.
    pub fn byte_len(&self) -> usize {
        self.payload.len() + self.headers.byte_len()
    }
}

/// Messages of one topic that a subscriber lost under its overflow policy (or to a topic
/// crash), reported in-band before its next delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// The topic whose messages were lost.
    pub topic: Topic,
    /// How many messages were lost.
    pub dropped: u64,
    /// Sequence number of the first lost message.
    pub first_sequence: u64,
    /// Sequence number of the last lost message.
    pub last_sequence: u64,
}

/// Why a subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// The subscriber unsubscribed.
    Unsubscribed,
    /// The subscriber's session was closed.
    SessionClosed,
    /// The subscriber's session failed and was removed.
    SessionFailed,
    /// The subscriber could not keep up and its policy is `disconnect`.
    SlowConsumer,
    /// The bus shut down.
    Shutdown,
}

impl CloseReason {
    /// The reason as a stable snake_case string.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Unsubscribed => "unsubscribed",
            CloseReason::SessionClosed => "session_closed",
            CloseReason::SessionFailed => "session_failed",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message.
    Delivery(Delivery),
    /// Messages lost for this subscriber since its previous event.
    Gap(Gap),
    /// The subscription ended; the stream yields nothing after this.
    Closed(CloseReason),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Header-less messages share nothing and allocate nothing; sizes add headers.
    #[test]
    fn sizes_and_headers() {
        let topic = Topic::new("a").unwrap();
        let m = Message::new(topic.clone(), &b"12345"[..]);
        assert_eq!(m.byte_len(), 5);
        assert!(m.headers.is_empty());
        let m = m.with_headers(vec![("k".to_owned(), "vv".to_owned())]).retained();
        assert_eq!(m.byte_len(), 8);
        assert_eq!(m.headers.get("k"), Some("vv"));
        assert_eq!(m.headers.get("x"), None);
        assert!(m.retain);
        assert_eq!(Headers::from(Vec::new()), Headers::new());
    }
}
