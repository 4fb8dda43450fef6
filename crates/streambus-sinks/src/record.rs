//! [`Record`]: one message as a sink receives it.
//!
//! A record is a delivery of the bus (topic, per-topic sequence, publish time, headers,
//! payload) plus a message id. The id is the publisher's own when it set the
//! [`MESSAGE_ID_HEADER`] header; otherwise it is derived from the topic, publish time and
//! sequence, which are the same every time the bus hands the same message to a sink
//! again, so a sink can deduplicate redeliveries on it.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use streambus_types::{Delivery, Headers, Topic};

/// The header a publisher sets to give a message its own id (for idempotent sinks).
pub const MESSAGE_ID_HEADER: &str = "msg-id";

/// One message as a sink receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The concrete topic it was published to.
    pub topic: Topic,
    /// Per-topic sequence number.
    pub sequence: u64,
    /// Publish time, nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
    /// The publisher's `msg-id` header, or `topic:timestamp_ns:sequence`.
    pub message_id: String,
    /// Headers, in publish order.
    pub headers: Headers,
    /// The opaque body.
    pub payload: Bytes,
    /// The publisher asked the bus to retain it (see [`Delivery::retain`]).
    pub retain: bool,
}

impl Record {
    /// The record of a delivery.
    pub fn from_delivery(d: &Delivery) -> Record {
        let message_id = match d.headers.get(MESSAGE_ID_HEADER) {
            Some(id) => id.to_owned(),
            None => format!("{}:{}:{}", d.topic, d.timestamp_ns, d.sequence),
        };
        Record {
            topic: d.topic.clone(),
            sequence: d.sequence,
            timestamp_ns: d.timestamp_ns,
            message_id,
            headers: d.headers.clone(),
            payload: d.payload.clone(),
            retain: d.retain,
        }
    }

    /// Bytes the record counts for in batch limits: payload plus headers.
    pub fn byte_len(&self) -> usize {
        self.payload.len() + self.headers.byte_len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(headers: Vec<(String, String)>) -> Delivery {
        Delivery {
            topic: Topic::new("a.b").unwrap(),
            sequence: 7,
            timestamp_ns: 99,
            payload: Bytes::from_static(b"x"),
            headers: headers.into(),
            retained: false,
            retain: false,
            groups_served: None,
        }
    }

    /// The message id is the publisher's header when present, else stable per delivery.
    #[test]
    fn message_id() {
        assert_eq!(Record::from_delivery(&delivery(vec![])).message_id, "a.b:99:7");
        let d = delivery(vec![(MESSAGE_ID_HEADER.into(), "m-1".into())]);
        assert_eq!(Record::from_delivery(&d).message_id, "m-1");
        assert_eq!(Record::from_delivery(&d).byte_len(), 1 + 6 + 3);
    }
}
