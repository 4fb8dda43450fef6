//! The pump: moves one subscription's events to its stream's outbound queue.
//!
//! One pump task runs per subscription of a stream. It reads whole runs with
//! [`Subscription::next_batch`] (no per-delivery copy), turns each into delivery batch
//! frames of at most one frame's bytes, and sends them on the stream's bounded outbound
//! queue. For a client that reads each delivery's topic (`Hello.mixed_topics`), the
//! runs already waiting go in the same batch, of whatever topics, up to one frame's
//! bytes: a wildcard subscriber of many quiet topics (devices publishing now and then)
//! gets one frame per wake, not one per message. When that queue is full the pump
//! waits, its subscription's buffer fills, and the subscription's overflow policy
//! decides (gaps are sent as frames like deliveries).
//!
//! # Invariants
//!
//! - With flow control on, every delivery sent takes one credit from the stream's
//!   [`DeliveryCredits`] first: the server never has more deliveries out than the client
//!   granted.
//! - A pump ends when its subscription ends (after sending `subscription_closed` if the
//!   bus ended this subscription alone: a slow consumer), when the client is gone (the outbound queue is
//!   closed), or when it is aborted by an `unsubscribe`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::FutureExt;
use streambus_core::{BatchEvent, Subscription};
use streambus_types::CloseReason;
use tokio::sync::{Semaphore, watch};

use super::outbound::Outbound;
use crate::convert;
use crate::proto::streambus::v1 as pb;
use crate::quiet::Signals;
use pb::server_frame::Frame;

/// Delivery credits granted by a client: one permit per delivery the server may still
/// send. Pumps take permits and forget them; `credit` frames add permits.
#[derive(Debug, Clone)]
pub(crate) struct DeliveryCredits(Arc<Semaphore>);

impl DeliveryCredits {
    pub(crate) fn new(initial: u64) -> Self {
        let credits = DeliveryCredits(Arc::new(Semaphore::new(0)));
        credits.grant(initial);
        credits
    }

    /// Adds `n` credits, saturating at the semaphore's maximum.
    pub(crate) fn grant(&self, n: u64) {
        let room = Semaphore::MAX_PERMITS.saturating_sub(self.0.available_permits());
        let n = usize::try_from(n).unwrap_or(usize::MAX).min(room);
        self.0.add_permits(n);
    }

    /// Waits for at least one credit and takes up to `want` (≥ 1) of those available.
    async fn take(&self, want: usize) -> usize {
        let Ok(first) = self.0.acquire().await else {
            return 0;
        };
        first.forget();
        let extra = (want - 1).min(self.0.available_permits());
        let extra = u32::try_from(extra).unwrap_or(u32::MAX);
        match self.0.try_acquire_many(extra) {
            Ok(permits) if extra > 0 => {
                permits.forget();
                1 + extra as usize
            }
            _ => 1,
        }
    }
}

/// Encoded-size estimate of one delivery in a frame: payload, headers with their
/// framing, its own topic if it names one, and the fixed fields.
fn frame_cost(d: &pb::Delivery) -> usize {
    d.payload.len() + d.topic.len() + d.headers.iter().map(|h| h.key.len() + h.value.len() + 8).sum::<usize>() + 32
}

/// How a pump cuts its delivery batches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Framing {
    /// Largest delivery frame, in bytes (a single larger delivery goes alone).
    pub(crate) max_frame_bytes: usize,
    /// The client reads each delivery's topic: runs of several topics share a batch.
    pub(crate) mixed_topics: bool,
}

/// Runs the pump until its subscription or its stream ends, or until `give_up` turns
/// `true`; returns how many deliveries it leaves undelivered (0 unless it gave up).
pub(crate) async fn run(
    mut subscription: Subscription,
    out: Outbound,
    credits: Option<DeliveryCredits>,
    framing: Framing,
    mut give_up: watch::Receiver<bool>,
) -> u64 {
    // Deliveries taken from the subscription and not yet queued on the stream.
    let in_hand = AtomicU64::new(0);
    let gave_up = {
        let pumped = pump(&mut subscription, &out, credits.as_ref(), framing, &in_hand);
        tokio::select! {
            () = pumped => false,
            _ = give_up.wait_for(|g| *g) => true,
        }
    };
    if !gave_up {
        return 0;
    }
    in_hand.load(Ordering::Relaxed) + subscription.buffer().queued_messages as u64
}

/// Moves the subscription's events to the stream until either ends.
async fn pump(
    subscription: &mut Subscription,
    out: &Outbound,
    credits: Option<&DeliveryCredits>,
    framing: Framing,
    in_hand: &AtomicU64,
) {
    let id = subscription.id();
    // Made once, not once per batch: each would register with the queue's signal and
    // leave it again (see `Signals`).
    let mut gone = Signals::new().quiet(Box::pin(out.closed()));
    // An event taken while gathering runs into a batch, handled next.
    let mut next = None;
    loop {
        let event = match next.take() {
            Some(event) => event,
            None => tokio::select! {
                event = subscription.next_batch() => event,
                () = &mut gone => return,
            },
        };
        let sent = match event {
            None => return,
            Some(BatchEvent::Deliveries(run)) => {
                let mut batch = convert::delivery_batch(id, &run);
                drop(run);
                if framing.mixed_topics {
                    next = gather(subscription, &mut batch, framing.max_frame_bytes);
                }
                in_hand.store(batch.deliveries.len() as u64, Ordering::Relaxed);
                send_batch(batch, out, credits, framing.max_frame_bytes, in_hand).await
            }
            Some(BatchEvent::Gap(gap)) => send(out, Frame::Gap(convert::gap(id, &gap))).await,
            Some(BatchEvent::Closed(reason)) => {
                // Session-wide ends (close, failure, shutdown) are told by the stream's
                // own end; a client that reconnects resubscribes then.
                if reason == CloseReason::SlowConsumer {
                    let closed = pb::SubscriptionClosed {
                        subscription_id: id.0,
                        reason: convert::close_reason(reason) as i32,
                    };
                    let _ = send(out, Frame::SubscriptionClosed(closed)).await;
                }
                return;
            }
        };
        if !sent {
            return;
        }
    }
}

/// Adds to `batch` the runs the subscription holds now, of any topic, until the batch
/// reaches `max_frame_bytes`; returns the first other event taken (a gap, the end),
/// which comes after these deliveries. Never waits.
fn gather(
    subscription: &mut Subscription,
    batch: &mut pb::DeliveryBatch,
    max_frame_bytes: usize,
) -> Option<Option<BatchEvent>> {
    let mut bytes = batch.topic.len() + batch.deliveries.iter().map(frame_cost).sum::<usize>();
    while bytes < max_frame_bytes {
        match subscription.next_batch().now_or_never()? {
            Some(BatchEvent::Deliveries(run)) => {
                let before = batch.deliveries.len();
                convert::append_run(batch, &run);
                bytes += batch.deliveries[before..].iter().map(frame_cost).sum::<usize>();
            }
            other => return Some(other),
        }
    }
    None
}

async fn send(out: &Outbound, frame: Frame) -> bool {
    out.send(Ok(convert::frame(frame))).await.is_ok()
}

/// Queues a frame counted as `bytes` against the stream's byte bound.
async fn send_sized(out: &Outbound, frame: Frame, bytes: usize) -> bool {
    out.send_sized(Ok(convert::frame(frame)), bytes).await.is_ok()
}

/// Sends a batch as frames of at most `max_frame_bytes` and, with flow control, of at
/// most the credits available, keeping `in_hand` at what is not queued yet. Returns
/// false once the client is gone.
async fn send_batch(
    mut batch: pb::DeliveryBatch,
    out: &Outbound,
    credits: Option<&DeliveryCredits>,
    max_frame_bytes: usize,
    in_hand: &AtomicU64,
) -> bool {
    let mut rest = std::mem::take(&mut batch.deliveries);
    while !rest.is_empty() {
        let mut n = 0;
        let mut bytes = batch.topic.len();
        // At least one delivery per frame: a single delivery always fits (messages are
        // limited to the frame size minus its overhead).
        while let Some(cost) = rest.get(n).map(frame_cost) {
            if n > 0 && bytes + cost > max_frame_bytes {
                break;
            }
            bytes += cost;
            n += 1;
        }
        if let Some(credits) = credits {
            n = credits.take(n).await;
            if n == 0 {
                return false;
            }
        }
        let tail = rest.split_off(n);
        let frame = pb::DeliveryBatch {
            subscription_id: batch.subscription_id,
            topic: batch.topic.clone(),
            deliveries: std::mem::replace(&mut rest, tail),
        };
        if !send_sized(out, Frame::Deliveries(frame), bytes).await {
            return false;
        }
        in_hand.store(rest.len() as u64, Ordering::Relaxed);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Delivery credits are never over-taken: takes add up to exactly what was granted.
    #[tokio::test]
    async fn credits_take_at_most_granted() {
        let credits = DeliveryCredits::new(5);
        assert_eq!(credits.take(3).await, 3);
        assert_eq!(credits.take(10).await, 2);
        credits.grant(4);
        assert_eq!(credits.take(1).await, 1);
        assert_eq!(credits.take(100).await, 3);
        // Nothing left: a take waits until the next grant.
        let pending = tokio::time::timeout(std::time::Duration::from_millis(20), credits.take(1)).await;
        assert!(pending.is_err());
        credits.grant(u64::MAX);
        assert!(credits.take(usize::MAX).await >= 1);
    }
}
