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
/// keeping their order. Refuses the whole batch, before anything is sent, if one
/// message is over the server's message size.
pub(super) fn frames(
    messages: &[Message],
    limits: Option<&Welcome>,
) -> Result<Vec<Vec<pb::PublishMessage>>, ClientError> {
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
    // Leave room for the frame's own fields beside the messages' bytes.
    let frame_budget = max_frame.saturating_sub(FRAME_SLACK_BYTES).max(1);
    let mut frames: Vec<Vec<pb::PublishMessage>> = vec![Vec::new()];
    let mut bytes = 0u64;
    for m in messages {
        let cost = (m.byte_len() + m.topic.as_str().len()) as u64 + MESSAGE_OVERHEAD_BYTES;
        let full = frames
            .last()
            .is_some_and(|f| !f.is_empty() && (f.len() as u64 >= max_batch || bytes + cost > frame_budget));
        if full {
            frames.push(Vec::new());
            bytes = 0;
        }
        bytes += cost;
        if let Some(current) = frames.last_mut() {
            current.push(convert::publish_message(m));
        }
    }
    Ok(frames)
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
        let f = frames(&batch(1000, 100), None).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].len(), 1000);
    }

    /// The batch count splits frames, in order.
    #[test]
    fn split_by_count_keeps_order() {
        let f = frames(&batch(10, 1), Some(&limits(1024, 1 << 20, 4))).unwrap();
        let sizes: Vec<usize> = f.iter().map(Vec::len).collect();
        assert_eq!(sizes, [4, 4, 2]);
        let firsts: Vec<u8> = f.iter().flatten().map(|m| m.payload[0]).collect();
        assert_eq!(firsts, (0..10).collect::<Vec<u8>>());
    }

    /// The frame size splits frames; each frame stays within it.
    #[test]
    fn split_by_bytes() {
        let max_frame = FRAME_SLACK_BYTES + 3000;
        let f = frames(&batch(10, 1000), Some(&limits(2000, max_frame, 100))).unwrap();
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
        match frames(&batch(3, 1025), Some(&limits(1024, 1 << 20, 8))) {
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
        let f = frames(&batch(3, 5000), Some(&limits(10_000, FRAME_SLACK_BYTES + 100, 8))).unwrap();
        assert_eq!(f.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 1]);
    }
}
