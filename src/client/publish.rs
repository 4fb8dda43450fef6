//! How the SDK cuts a publish batch into frames the server will take: every message
//! within the server's message size, each frame within its batch count and frame size.
//!
//! A pure function of the batch and the server's `welcome` limits, so every edge (one
//! huge message, a batch exactly at a limit) is tested without a server.

use streambus_types::{ErrorCode, Message};

use super::{ClientError, Welcome};
use crate::convert;
use crate::proto::streambus::v1 as pb;

/// Bytes of a publish frame kept for its own fields when the SDK splits batches.
const FRAME_SLACK_BYTES: u64 = 4096;

/// Bytes a message takes in a frame beyond its payload and headers: the topic and
/// protobuf's tags and lengths, generously.
const MESSAGE_OVERHEAD_BYTES: u64 = 16;

/// Cuts `messages` into frames within `limits` (no limits before the first `welcome`),
/// keeping their order; an empty batch is one empty frame. Refuses the whole batch,
/// before anything is sent, if one message is over the server's message size.
///
/// The frames are cut as they are taken, each allocated once at its final length, and
/// the messages' payloads move into them: a publish of one message costs one frame and
/// no copy of its payload.
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
        rest: messages.into_iter(),
        // Leave room for the frame's own fields beside the messages' bytes.
        frame_budget: max_frame.saturating_sub(FRAME_SLACK_BYTES).max(1),
        max_batch,
        started: false,
    })
}

/// The frames of one batch, cut as they are taken (see [`frames`]).
#[derive(Debug)]
pub(super) struct Frames {
    /// The messages not in a frame yet.
    rest: std::vec::IntoIter<Message>,
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
}

impl Iterator for Frames {
    type Item = Vec<pb::PublishMessage>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.started && self.rest.as_slice().is_empty() {
            return None;
        }
        self.started = true;
        // The frame's length is known before anything is moved: one allocation.
        let mut count = 0u64;
        let mut bytes = 0u64;
        for m in self.rest.as_slice() {
            let cost = Frames::cost(m);
            if count > 0 && (count >= self.max_batch || bytes + cost > self.frame_budget) {
                break;
            }
            count += 1;
            bytes += cost;
        }
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        Some(self.rest.by_ref().take(count).map(convert::publish_message).collect())
    }
}

#[cfg(test)]
mod tests {
    use streambus_types::Topic;

    use super::*;

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
        let f: Vec<_> = frames(batch(1000, 100), None).unwrap().collect();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].len(), 1000);
    }

    /// An empty batch is one empty frame (an acked one is how a publisher knows the
    /// server has everything it sent before).
    #[test]
    fn an_empty_batch_is_one_empty_frame() {
        let f: Vec<_> = frames(Vec::new(), Some(&limits(1024, 1 << 20, 4))).unwrap().collect();
        assert_eq!(f, [Vec::<pb::PublishMessage>::new()]);
    }

    /// Payloads move into the frames: the bytes sent are the application's own.
    #[test]
    fn payloads_are_not_copied() {
        let payload = bytes::Bytes::from(vec![7u8; 64]);
        let at = payload.as_ptr();
        let batch = vec![Message::new(Topic::new("a.b").unwrap(), payload)];
        let f: Vec<_> = frames(batch, None).unwrap().collect();
        assert_eq!(f[0][0].payload.as_ptr(), at);
    }

    /// The batch count splits frames, in order.
    #[test]
    fn split_by_count_keeps_order() {
        let f: Vec<_> = frames(batch(10, 1), Some(&limits(1024, 1 << 20, 4))).unwrap().collect();
        let sizes: Vec<usize> = f.iter().map(Vec::len).collect();
        assert_eq!(sizes, [4, 4, 2]);
        let firsts: Vec<u8> = f.iter().flatten().map(|m| m.payload[0]).collect();
        assert_eq!(firsts, (0..10).collect::<Vec<u8>>());
    }

    /// The frame size splits frames; each frame stays within it.
    #[test]
    fn split_by_bytes() {
        let max_frame = FRAME_SLACK_BYTES + 3000;
        let f: Vec<_> = frames(batch(10, 1000), Some(&limits(2000, max_frame, 100)))
            .unwrap()
            .collect();
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
        let f: Vec<_> = frames(batch(3, 5000), Some(&limits(10_000, FRAME_SLACK_BYTES + 100, 8)))
            .unwrap()
            .collect();
        assert_eq!(f.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 1]);
    }
}
