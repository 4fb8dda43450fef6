//! Wire ⇄ domain conversion: the one place where generated protobuf types meet the
//! bus's own types.
//!
//! Inbound (client → server) conversions validate: a frame that names an invalid topic or
//! an unknown enum value becomes a typed [`BusError`], never a panic. Outbound
//! conversions cannot fail. The [`ErrorCode`] → gRPC status mapping lives in
//! [`grpc_code`] and is pinned by a test below together with the wire enum.

use bytes::Bytes;
use streambus_core::{BusError, DeliveryRun, SubscriptionId};
use streambus_types::{
    CloseReason, Delivery, ErrorCode, Gap, Headers, Message, OverflowPolicy, SubscriptionOptions, Topic, TopicFilter,
};
use tonic::{Code, Status};

use crate::proto::streambus::v1 as pb;

/// The gRPC status code of an [`ErrorCode`] (the table itself lives in
/// [`ErrorCode::grpc_code`]; this turns its number into tonic's type).
pub fn grpc_code(code: ErrorCode) -> Code {
    Code::from_i32(code.grpc_code())
}

/// The wire enum of an [`ErrorCode`]; its numbers are the gRPC codes.
pub fn wire_code(code: ErrorCode) -> pb::ErrorCode {
    pb::ErrorCode::try_from(code.grpc_code()).unwrap_or(pb::ErrorCode::Internal)
}

/// The [`ErrorCode`] of a wire code, if it is one the protocol defines.
pub fn domain_code(code: pb::ErrorCode) -> Option<ErrorCode> {
    ErrorCode::ALL.into_iter().find(|c| c.grpc_code() == code as i32)
}

/// A gRPC status for an error that ends a call.
pub fn status(error: &BusError) -> Status {
    Status::new(grpc_code(error.code()), error.to_string())
}

/// Wraps one server frame variant.
pub fn frame(frame: pb::server_frame::Frame) -> pb::ServerFrame {
    pb::ServerFrame { frame: Some(frame) }
}

/// The in-band refusal of one frame: it names the frame's request id (0 when the frame
/// had none) and the stream stays open.
pub fn error_frame(request_id: u64, code: ErrorCode, message: &str) -> pb::server_frame::Frame {
    pb::server_frame::Frame::Error(pb::Error {
        request_id,
        code: wire_code(code) as i32,
        message: message.to_owned(),
    })
}

/// [`error_frame`] for a bus error.
pub fn bus_error_frame(request_id: u64, error: &BusError) -> pb::server_frame::Frame {
    error_frame(request_id, error.code(), &error.to_string())
}

/// The refusal of acked publish `publish_id`: nothing of its batch was published.
pub fn refused_frame(publish_id: u64, error: &BusError) -> pb::server_frame::Frame {
    pb::server_frame::Frame::PublishRefused(pb::PublishRefused {
        publish_id,
        code: wire_code(error.code()) as i32,
        message: error.to_string(),
    })
}

// ------------------------------------------------------------------ inbound

fn headers_from_wire(headers: Vec<pb::Header>) -> Headers {
    Headers::from(headers.into_iter().map(|h| (h.key, h.value)).collect::<Vec<_>>())
}

fn headers_to_wire(headers: &Headers) -> Vec<pb::Header> {
    headers
        .as_slice()
        .iter()
        .map(|(key, value)| pb::Header {
            key: key.clone(),
            value: value.clone(),
        })
        .collect()
}

impl TryFrom<pb::PublishMessage> for Message {
    type Error = BusError;

    /// The payload is copied out of the frame: decoded as it arrives, it is a slice of
    /// the stream's read buffer, and a message that waits in a topic's backlog or a
    /// subscriber's buffer would keep that whole buffer (up to a frame's size) alive,
    /// far beyond the bytes the memory budget counts for it.
    fn try_from(m: pb::PublishMessage) -> Result<Self, BusError> {
        message(m, |_| None)
    }
}

/// A message from the wire, its topic taken from `known` (names already checked) when
/// it knows the name, else checked here.
fn message(m: pb::PublishMessage, known: impl Fn(&str) -> Option<Topic>) -> Result<Message, BusError> {
    let topic = match known(&m.topic) {
        Some(topic) => topic,
        None => Topic::new(&m.topic)?,
    };
    let payload = Bytes::copy_from_slice(&m.payload);
    let mut message = Message::new(topic, payload).with_headers(headers_from_wire(m.headers));
    message.retain = m.retain;
    Ok(message)
}

/// The messages of a publish batch; any invalid one refuses the whole batch.
pub fn messages(batch: Vec<pb::PublishMessage>) -> Result<Vec<Message>, BusError> {
    messages_known(batch, |_| None)
}

/// [`messages`], with the topics `known` gives (names a stream already checked) taken
/// as they are: no check and no new allocation for a topic published to again.
pub fn messages_known(
    batch: Vec<pb::PublishMessage>,
    known: impl Fn(&str) -> Option<Topic>,
) -> Result<Vec<Message>, BusError> {
    // A new vector: collected in place, the frame's own (of larger elements) would be
    // shrunk to fit by a realloc that moves it, once per publish.
    let mut messages = Vec::with_capacity(batch.len());
    for m in batch {
        messages.push(message(m, &known)?);
    }
    Ok(messages)
}

/// The overflow policy a subscribe frame asks for; `None` means the server default.
pub fn overflow(value: i32) -> Result<Option<OverflowPolicy>, BusError> {
    match pb::OverflowPolicy::try_from(value) {
        Ok(pb::OverflowPolicy::Unspecified) => Ok(None),
        Ok(pb::OverflowPolicy::Block) => Ok(Some(OverflowPolicy::Block)),
        Ok(pb::OverflowPolicy::DropOldest) => Ok(Some(OverflowPolicy::DropOldest)),
        Ok(pb::OverflowPolicy::DropNewest) => Ok(Some(OverflowPolicy::DropNewest)),
        Ok(pb::OverflowPolicy::Disconnect) => Ok(Some(OverflowPolicy::Disconnect)),
        Err(_) => Err(BusError::InvalidOption(format!("unknown overflow policy {value}"))),
    }
}

/// The filter and options of a subscribe frame.
pub fn subscription(s: &pb::Subscribe) -> Result<(TopicFilter, SubscriptionOptions), BusError> {
    let filter = TopicFilter::new(&s.filter)?;
    let mut options = SubscriptionOptions::default();
    if !s.queue_group.is_empty() {
        options = options.queue_group(s.queue_group.clone());
    }
    if let Some(policy) = overflow(s.overflow)? {
        options = options.overflow(policy);
    }
    if s.buffer_messages > 0 {
        options.buffer_messages = Some(usize::try_from(s.buffer_messages).unwrap_or(usize::MAX));
    }
    if s.buffer_bytes > 0 {
        options.buffer_bytes = Some(usize::try_from(s.buffer_bytes).unwrap_or(usize::MAX));
    }
    Ok((filter, options))
}

// ------------------------------------------------------------------ outbound

impl From<&Delivery> for pb::Delivery {
    fn from(d: &Delivery) -> Self {
        pb::Delivery {
            sequence: d.sequence,
            timestamp_ns: d.timestamp_ns,
            payload: d.payload.clone(),
            headers: headers_to_wire(&d.headers),
            retained: d.retained,
            topic: String::new(),
        }
    }
}

/// Appends a run to a batch of several topics (for a client that reads
/// `Delivery.topic`): its deliveries name their topic when it is not the batch's.
pub fn append_run(batch: &mut pb::DeliveryBatch, run: &DeliveryRun) {
    let own = match run.first() {
        Some(d) if d.topic.as_str() != batch.topic => d.topic.as_str(),
        _ => "",
    };
    batch.deliveries.extend(run.iter().map(|d| pb::Delivery {
        topic: own.to_owned(),
        ..pb::Delivery::from(d)
    }));
}

/// A delivery batch frame for a run (all of one topic).
pub fn delivery_batch(subscription: SubscriptionId, run: &DeliveryRun) -> pb::DeliveryBatch {
    pb::DeliveryBatch {
        subscription_id: subscription.0,
        topic: run.first().map(|d| d.topic.as_str().to_owned()).unwrap_or_default(),
        deliveries: run.iter().map(pb::Delivery::from).collect(),
    }
}

/// A gap frame.
pub fn gap(subscription: SubscriptionId, gap: &Gap) -> pb::Gap {
    pb::Gap {
        subscription_id: subscription.0,
        topic: gap.topic.as_str().to_owned(),
        dropped: gap.dropped,
        first_sequence: gap.first_sequence,
        last_sequence: gap.last_sequence,
    }
}

/// The wire close reason.
pub fn close_reason(reason: CloseReason) -> pb::CloseReason {
    match reason {
        CloseReason::Unsubscribed => pb::CloseReason::Unsubscribed,
        CloseReason::SessionClosed => pb::CloseReason::SessionClosed,
        CloseReason::SessionFailed => pb::CloseReason::SessionFailed,
        CloseReason::SlowConsumer => pb::CloseReason::SlowConsumer,
        CloseReason::Shutdown => pb::CloseReason::Shutdown,
    }
}

/// The wire overflow policy.
pub fn overflow_to_wire(policy: Option<OverflowPolicy>) -> pb::OverflowPolicy {
    match policy {
        None => pb::OverflowPolicy::Unspecified,
        Some(OverflowPolicy::Block) => pb::OverflowPolicy::Block,
        Some(OverflowPolicy::DropOldest) => pb::OverflowPolicy::DropOldest,
        Some(OverflowPolicy::DropNewest) => pb::OverflowPolicy::DropNewest,
        Some(OverflowPolicy::Disconnect) => pb::OverflowPolicy::Disconnect,
    }
}

/// The wire form of a domain message (client side); the payload moves, uncopied.
pub fn publish_message(m: Message) -> pb::PublishMessage {
    pb::PublishMessage {
        topic: m.topic.as_str().to_owned(),
        payload: m.payload,
        headers: headers_to_wire(&m.headers),
        retain: m.retain,
    }
}

// ------------------------------------------------------------------ client side

/// Domain deliveries of a batch received from a server: of the batch's topic, or of
/// their own where they name one (a batch of several topics).
///
/// The server only sends valid topics; a batch with a topic that does not parse is
/// refused rather than trusted.
pub fn deliveries_from_wire(batch: pb::DeliveryBatch) -> Result<Vec<Delivery>, BusError> {
    let topic = Topic::new(&batch.topic)?;
    // Deliveries of one topic come together: each other topic is checked once per run.
    let mut last = topic.clone();
    batch
        .deliveries
        .into_iter()
        .map(|d| {
            let topic = if d.topic.is_empty() {
                topic.clone()
            } else {
                if d.topic != last.as_str() {
                    last = Topic::new(&d.topic)?;
                }
                last.clone()
            };
            Ok(Delivery {
                topic,
                sequence: d.sequence,
                timestamp_ns: d.timestamp_ns,
                payload: d.payload,
                headers: headers_from_wire(d.headers),
                retained: d.retained,
                // The wire does not carry the publish-time flag; a replay was retained.
                retain: d.retained,
                groups_served: None,
            })
        })
        .collect()
}

/// A domain gap received from a server.
pub fn gap_from_wire(g: pb::Gap) -> Result<Gap, BusError> {
    Ok(Gap {
        topic: Topic::new(&g.topic)?,
        dropped: g.dropped,
        first_sequence: g.first_sequence,
        last_sequence: g.last_sequence,
    })
}

/// A domain close reason received from a server (unknown values read as `session_closed`).
pub fn close_reason_from_wire(value: i32) -> CloseReason {
    match pb::CloseReason::try_from(value) {
        Ok(pb::CloseReason::Unsubscribed) => CloseReason::Unsubscribed,
        Ok(pb::CloseReason::SessionFailed) => CloseReason::SessionFailed,
        Ok(pb::CloseReason::SlowConsumer) => CloseReason::SlowConsumer,
        Ok(pb::CloseReason::Shutdown) => CloseReason::Shutdown,
        _ => CloseReason::SessionClosed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A published payload does not keep the frame it came in alive: it is its own copy,
    /// equal in content.
    #[test]
    fn a_published_payload_is_copied_out_of_its_frame() {
        let frame = Bytes::from(vec![7u8; 4096]);
        let payload = frame.slice(100..228);
        let message = Message::try_from(pb::PublishMessage {
            topic: "t.x".into(),
            payload: payload.clone(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(message.payload, payload);
        let within = frame.as_ptr_range();
        assert!(
            !within.contains(&message.payload.as_ptr()),
            "the payload still points into the frame's buffer"
        );
    }

    /// The one table: each error code's gRPC status, wire enum and HTTP status, pinned.
    #[test]
    fn error_code_table_is_pinned() {
        let table = [
            (
                ErrorCode::InvalidArgument,
                Code::InvalidArgument,
                pb::ErrorCode::InvalidArgument,
                400,
            ),
            (ErrorCode::NotFound, Code::NotFound, pb::ErrorCode::NotFound, 404),
            (
                ErrorCode::ResourceExhausted,
                Code::ResourceExhausted,
                pb::ErrorCode::ResourceExhausted,
                429,
            ),
            (
                ErrorCode::Unauthenticated,
                Code::Unauthenticated,
                pb::ErrorCode::Unauthenticated,
                401,
            ),
            (
                ErrorCode::PermissionDenied,
                Code::PermissionDenied,
                pb::ErrorCode::PermissionDenied,
                403,
            ),
            (
                ErrorCode::Unavailable,
                Code::Unavailable,
                pb::ErrorCode::Unavailable,
                503,
            ),
            (ErrorCode::Internal, Code::Internal, pb::ErrorCode::Internal, 500),
        ];
        assert_eq!(table.len(), ErrorCode::ALL.len());
        for (code, grpc, wire, http) in table {
            assert_eq!(grpc_code(code), grpc, "{code:?}");
            assert_eq!(wire_code(code), wire, "{code:?}");
            assert_eq!(domain_code(wire), Some(code), "{code:?}");
            assert_eq!(code.http_status(), http, "{code:?}");
        }
        assert_eq!(domain_code(pb::ErrorCode::Unspecified), None);
    }

    /// A batch's deliveries take the batch's topic unless they name their own, and a
    /// named topic that does not parse (or is a filter) refuses the batch.
    #[test]
    fn deliveries_name_their_topic_or_take_the_batch_s() {
        let d = |topic: &str, sequence| pb::Delivery {
            topic: topic.into(),
            sequence,
            ..Default::default()
        };
        let batch = |deliveries| pb::DeliveryBatch {
            subscription_id: 1,
            topic: "a.b".into(),
            deliveries,
        };
        let got = deliveries_from_wire(batch(vec![d("", 1), d("c.d", 1), d("c.d", 2), d("", 2), d("e", 1)])).unwrap();
        let topics: Vec<(&str, u64)> = got.iter().map(|d| (d.topic.as_str(), d.sequence)).collect();
        assert_eq!(topics, [("a.b", 1), ("c.d", 1), ("c.d", 2), ("a.b", 2), ("e", 1)]);
        for bad in ["c..d", "c.*", " "] {
            assert!(
                deliveries_from_wire(batch(vec![d("", 1), d(bad, 1)])).is_err(),
                "{bad:?}"
            );
        }
    }

    /// Wildcard and malformed publish topics are refused with a typed error.
    #[test]
    fn publish_topics_are_validated() {
        let m = |topic: &str| pb::PublishMessage {
            topic: topic.into(),
            ..Default::default()
        };
        assert!(matches!(Message::try_from(m("a.*")), Err(BusError::InvalidTopic(_))));
        assert!(matches!(Message::try_from(m("")), Err(BusError::InvalidTopic(_))));
        assert!(messages(vec![m("a.b"), m("a..b")]).is_err());
        let ok = Message::try_from(pb::PublishMessage {
            topic: "a.b".into(),
            payload: Bytes::from_static(b"x"),
            headers: vec![pb::Header {
                key: "k".into(),
                value: "v".into(),
            }],
            retain: true,
        })
        .unwrap();
        assert_eq!(ok.headers.get("k"), Some("v"));
        assert!(ok.retain);
    }

    /// Every wire policy maps both ways; unknown numbers are an error, not a default.
    #[test]
    fn overflow_policies_round_trip() {
        for p in [
            None,
            Some(OverflowPolicy::Block),
            Some(OverflowPolicy::DropOldest),
            Some(OverflowPolicy::DropNewest),
            Some(OverflowPolicy::Disconnect),
        ] {
            assert_eq!(overflow(overflow_to_wire(p) as i32).unwrap(), p);
        }
        assert!(matches!(overflow(99), Err(BusError::InvalidOption(_))));
    }
}
