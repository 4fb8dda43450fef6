//! How the SDK cuts a publish batch into frames the server will take: every message
//! within the server's message size, each frame within its batch count and frame size;
//! and how it encodes a frame.
//!
//! Both are pure functions of the batch and the server's `welcome` limits, so every
//! edge (one huge message, a batch exactly at a limit) is tested without a server.
//!
//! A publish frame is encoded straight from the application's messages into one buffer
//! of its final length, in gRPC's framing: the request queue and the socket take it as
//! it is. Building prost's `PublishBatch` first would allocate a copy of every topic and
//! a vector of messages per frame, and free them again once encoded. The bytes are what
//! prost writes for the same `ClientFrame` (tested), so the server reads them as any
//! other client's.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use streambus_types::{ErrorCode, Message};

use super::call::{FRAME_HEADER_BYTES, put_header};
use super::{ClientError, Welcome};

/// Bytes of a publish frame kept for its own fields when the SDK splits batches.
const FRAME_SLACK_BYTES: u64 = 4096;

/// Bytes a message takes in a frame beyond its payload and headers: the topic and
/// protobuf's tags and lengths, generously.
const MESSAGE_OVERHEAD_BYTES: u64 = 16;

/// Field numbers, as in `streambus.proto`: `ClientFrame.publish`.
const FRAME_PUBLISH: u32 = 4;
/// `PublishBatch`'s fields.
const BATCH_PUBLISH_ID: u32 = 1;
const BATCH_MESSAGES: u32 = 2;
const BATCH_DURABLE: u32 = 3;
/// `PublishMessage`'s fields.
const MESSAGE_TOPIC: u32 = 1;
const MESSAGE_PAYLOAD: u32 = 2;
const MESSAGE_HEADERS: u32 = 3;
const MESSAGE_RETAIN: u32 = 4;
/// `Header`'s fields.
const HEADER_KEY: u32 = 1;
const HEADER_VALUE: u32 = 2;

/// Cuts `messages` into frames within `limits` (no limits before the first `welcome`),
/// keeping their order; an empty batch is one empty frame. Refuses the whole batch,
/// before anything is sent, if one message is over the server's message size.
pub(super) fn frames(messages: Vec<Message>, limits: Option<&Welcome>) -> Result<Frames, ClientError> {
    let (max_message, max_frame, max_batch) = limits.map_or((u64::MAX, u64::MAX, u64::MAX), |w| {
        (w.max_message_bytes, w.max_frame_bytes, w.max_batch_messages.max(1))
    });
    if let Some(m) = messages.iter().find(|m| m.byte_len() as u64 > max_message) {
        return Err(ClientError::Refused {
            code: ErrorCode::ResourceExhausted,
            message: format!(
                "message of {} bytes exceeds the server's limit of {max_message} bytes",
                m.byte_len()
            ),
        });
    }
    Ok(Frames {
        messages,
        next: 0,
        // Leave room for the frame's own fields beside the messages' bytes.
        frame_budget: max_frame.saturating_sub(FRAME_SLACK_BYTES).max(1),
        max_batch,
        started: false,
    })
}

/// The frames of one batch, cut as they are taken (see [`frames`]): each item is the
/// range of the batch's messages that go in the next frame, which [`Frames::encode`]
/// encodes.
#[derive(Debug)]
pub(super) struct Frames {
    /// The batch.
    messages: Vec<Message>,
    /// The first message not in a frame yet.
    next: usize,
    /// Most bytes of messages per frame (a single larger message goes alone).
    frame_budget: u64,
    /// Most messages per frame.
    max_batch: u64,
    /// A frame was taken (an empty batch still makes one).
    started: bool,
}

impl Frames {
    /// What a message costs in a frame, as the split counts it.
    fn cost(m: &Message) -> u64 {
        (m.byte_len() + m.topic.as_str().len()) as u64 + MESSAGE_OVERHEAD_BYTES
    }

    /// The frame of the messages in `range` (an item of this iterator), in gRPC's
    /// framing: a `ClientFrame` holding a `PublishBatch` with `publish_id` and
    /// `durable`.
    pub(super) fn encode(&self, range: Range<usize>, publish_id: Option<u64>, durable: bool) -> Bytes {
        encode_publish(&self.messages[range], publish_id, durable)
    }
}

impl Iterator for Frames {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        if self.started && self.next == self.messages.len() {
            return None;
        }
        self.started = true;
        let start = self.next;
        let mut bytes = 0u64;
        for m in &self.messages[start..] {
            let count = (self.next - start) as u64;
            let cost = Frames::cost(m);
            if count > 0 && (count >= self.max_batch || bytes + cost > self.frame_budget) {
                break;
            }
            self.next += 1;
            bytes += cost;
        }
        Some(start..self.next)
    }
}

/// Bytes of a length-delimited field holding `len` bytes, key included.
fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// Bytes of a `string` or `bytes` field of `len` bytes: none when empty (proto3 leaves
/// default values out).
fn scalar_len(tag: u32, len: usize) -> usize {
    if len == 0 { 0 } else { delimited_len(tag, len) }
}

/// Appends a `string` or `bytes` field, left out when empty.
fn put_scalar(tag: u32, value: &[u8], out: &mut BytesMut) {
    if value.is_empty() {
        return;
    }
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(value.len() as u64, out);
    out.put_slice(value);
}

/// Appends the key and length of an embedded message of `len` bytes.
fn put_message_start(tag: u32, len: usize, out: &mut BytesMut) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
}

/// Appends a `true` bool field (a `false` one is left out).
fn put_true(tag: u32, out: &mut BytesMut) {
    encode_key(tag, WireType::Varint, out);
    encode_varint(1, out);
}

/// Bytes of a `Header` message.
fn header_len(key: &str, value: &str) -> usize {
    scalar_len(HEADER_KEY, key.len()) + scalar_len(HEADER_VALUE, value.len())
}

/// Bytes of `m` as a `PublishMessage`.
fn message_len(m: &Message) -> usize {
    let headers: usize = m
        .headers
        .as_slice()
        .iter()
        .map(|(k, v)| delimited_len(MESSAGE_HEADERS, header_len(k, v)))
        .sum();
    scalar_len(MESSAGE_TOPIC, m.topic.as_str().len())
        + scalar_len(MESSAGE_PAYLOAD, m.payload.len())
        + headers
        + if m.retain { key_len(MESSAGE_RETAIN) + 1 } else { 0 }
}

/// `messages` as one publish frame in gRPC's framing, in a buffer of exactly its length.
fn encode_publish(messages: &[Message], publish_id: Option<u64>, durable: bool) -> Bytes {
    let batch_len = publish_id.map_or(0, |id| key_len(BATCH_PUBLISH_ID) + encoded_len_varint(id))
        + messages
            .iter()
            .map(|m| delimited_len(BATCH_MESSAGES, message_len(m)))
            .sum::<usize>()
        + if durable { key_len(BATCH_DURABLE) + 1 } else { 0 };
    let frame_len = delimited_len(FRAME_PUBLISH, batch_len);
    let mut out = BytesMut::with_capacity(FRAME_HEADER_BYTES + frame_len);
    put_header(frame_len, &mut out);
    put_message_start(FRAME_PUBLISH, batch_len, &mut out);
    if let Some(id) = publish_id {
        encode_key(BATCH_PUBLISH_ID, WireType::Varint, &mut out);
        encode_varint(id, &mut out);
    }
    for m in messages {
        put_message_start(BATCH_MESSAGES, message_len(m), &mut out);
        put_scalar(MESSAGE_TOPIC, m.topic.as_str().as_bytes(), &mut out);
        put_scalar(MESSAGE_PAYLOAD, &m.payload, &mut out);
        for (key, value) in m.headers.as_slice() {
            put_message_start(MESSAGE_HEADERS, header_len(key, value), &mut out);
            put_scalar(HEADER_KEY, key.as_bytes(), &mut out);
            put_scalar(HEADER_VALUE, value.as_bytes(), &mut out);
        }
        if m.retain {
            put_true(MESSAGE_RETAIN, &mut out);
        }
    }
    if durable {
        put_true(BATCH_DURABLE, &mut out);
    }
    debug_assert_eq!(out.len(), FRAME_HEADER_BYTES + frame_len);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use streambus_types::Topic;

    use super::*;
    use crate::client::call::unframed;
    use crate::convert;
    use crate::proto::streambus::v1 as pb;
    use pb::client_frame::Frame as Out;

    /// Every frame of `frames`, encoded without a publish id and read back.
    fn cut(mut frames: Frames) -> Vec<Vec<pb::PublishMessage>> {
        let mut out = Vec::new();
        while let Some(range) = frames.next() {
            match unframed(frames.encode(range, None, false)) {
                Out::Publish(batch) => out.push(batch.messages),
                other => panic!("expected a publish frame, got {other:?}"),
            }
        }
        out
    }

    fn limits(max_message: u64, max_frame: u64, max_batch: u64) -> Welcome {
        Welcome {
            session_id: 1,
            max_message_bytes: max_message,
            max_frame_bytes: max_frame,
            max_batch_messages: max_batch,
            max_subscriptions_per_session: 8,
        }
    }

    fn batch(n: usize, size: usize) -> Vec<Message> {
        (0..n)
            .map(|i| Message::new(Topic::new("a.b").unwrap(), vec![i as u8; size]))
            .collect()
    }

    /// Before a welcome there are no limits: one frame.
    #[test]
    fn no_limits_one_frame() {
        let f = cut(frames(batch(1000, 100), None).unwrap());
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].len(), 1000);
    }

    /// An empty batch is one empty frame (an acked one is how a publisher knows the
    /// server has everything it sent before).
    #[test]
    fn an_empty_batch_is_one_empty_frame() {
        let f = cut(frames(Vec::new(), Some(&limits(1024, 1 << 20, 4))).unwrap());
        assert_eq!(f, [Vec::<pb::PublishMessage>::new()]);
    }

    /// The batch count splits frames, in order.
    #[test]
    fn split_by_count_keeps_order() {
        let f = cut(frames(batch(10, 1), Some(&limits(1024, 1 << 20, 4))).unwrap());
        let sizes: Vec<usize> = f.iter().map(Vec::len).collect();
        assert_eq!(sizes, [4, 4, 2]);
        let firsts: Vec<u8> = f.iter().flatten().map(|m| m.payload[0]).collect();
        assert_eq!(firsts, (0..10).collect::<Vec<u8>>());
    }

    /// The frame size splits frames; each frame stays within it.
    #[test]
    fn split_by_bytes() {
        let max_frame = FRAME_SLACK_BYTES + 3000;
        let f = cut(frames(batch(10, 1000), Some(&limits(2000, max_frame, 100))).unwrap());
        assert!(f.len() >= 4, "{} frames", f.len());
        for frame in &f {
            let bytes: usize = frame.iter().map(|m| m.payload.len() + m.topic.len()).sum();
            assert!(bytes as u64 <= max_frame - FRAME_SLACK_BYTES, "{bytes}");
        }
        assert_eq!(f.iter().map(Vec::len).sum::<usize>(), 10);
    }

    /// One message over the server's size refuses the whole batch, as a limit.
    #[test]
    fn oversize_message_is_refused() {
        match frames(batch(3, 1025), Some(&limits(1024, 1 << 20, 8))) {
            Err(ClientError::Refused { code, message }) => {
                assert_eq!(code, ErrorCode::ResourceExhausted);
                assert!(message.contains("1024"), "{message}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// A single message larger than the frame budget still goes, alone in its frame.
    #[test]
    fn a_large_message_gets_its_own_frame() {
        let f = cut(frames(batch(3, 5000), Some(&limits(10_000, FRAME_SLACK_BYTES + 100, 8))).unwrap());
        assert_eq!(f.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 1]);
    }

    /// What prost writes for the same frame, built from its messages.
    fn prost_frame(messages: &[Message], publish_id: Option<u64>, durable: bool) -> Vec<u8> {
        let frame = pb::ClientFrame {
            frame: Some(Out::Publish(pb::PublishBatch {
                publish_id,
                messages: messages.iter().cloned().map(convert::publish_message).collect(),
                durable,
            })),
        };
        let body = prost::Message::encode_to_vec(&frame);
        let mut framed = vec![0];
        framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
        framed.extend_from_slice(&body);
        framed
    }

    proptest::proptest! {
        /// A publish frame is byte for byte what prost encodes for the same
        /// `ClientFrame`: any topic, payload (empty or long enough for a multi-byte
        /// length), headers (empty names and values too), retain flag, publish id and
        /// durability.
        #[test]
        fn publish_frames_are_what_prost_encodes(
            messages in proptest::collection::vec(
                (
                    "[a-z]{1,8}(\\.[a-z0-9_]{1,8}){0,3}",
                    proptest::collection::vec(proptest::num::u8::ANY, 0..300),
                    proptest::collection::vec(("[a-z\\-]{0,6}", "\\PC{0,12}"), 0..3),
                    proptest::bool::ANY,
                ),
                0..5,
            ),
            publish_id in proptest::option::of(proptest::num::u64::ANY),
            durable in proptest::bool::ANY,
        ) {
            let messages: Vec<Message> = messages
                .into_iter()
                .map(|(topic, payload, headers, retain)| {
                    let mut m = Message::new(Topic::new(&topic).unwrap(), payload).with_headers(headers);
                    m.retain = retain;
                    m
                })
                .collect();
            let ours = encode_publish(&messages, publish_id, durable);
            proptest::prop_assert_eq!(&ours[..], &prost_frame(&messages, publish_id, durable)[..]);
        }
    }
}
