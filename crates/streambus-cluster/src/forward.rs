//! The forwarder: what was published on this node, out to NATS.
//!
//! It reads a `local_only` subscription on `>` (system topics stay on their node) and
//! publishes each delivery on `<prefix>.<topic>`, stamped with the node's id and the
//! delivery's number in its topic's run.
//!
//! Its subscription's policy is `block`: while NATS takes what it is given, the
//! forwarder is one more subscriber the publishers are paced by, and nothing is lost
//! on the way out. While the connection is down (or a publish cannot be handed to the
//! client within [`HANDOFF`]), it does not wait: it lets those messages go, skips their
//! numbers so that the other nodes see exactly that gap, and local delivery carries on.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use streambus_core::{BatchEvent, OverflowPolicy, Subscription, SubscriptionOptions};
use tokio::sync::{mpsc, watch};

use crate::track::Numbering;
use crate::wire::{self, Stamp};
use crate::{Shared, retained};

/// The forwarder's buffer, in messages.
const BUFFER_MESSAGES: usize = 8192;
/// The forwarder's buffer, in payload and header bytes.
const BUFFER_BYTES: usize = 16 * 1024 * 1024;
/// Longest wait for the NATS client to take one message while connected.
const HANDOFF: std::time::Duration = std::time::Duration::from_secs(1);

/// The forwarder's subscription: `block` (see the module doc), bounded.
pub(crate) fn options() -> SubscriptionOptions {
    SubscriptionOptions::default()
        .overflow(OverflowPolicy::Block)
        .buffer(BUFFER_MESSAGES, BUFFER_BYTES)
}

/// Forwards until `stop`, then forwards what is already buffered and returns. Retained
/// publishes also go to `retained` (the retained stream's writer), when replicated.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut sub: Subscription,
    retained: Option<mpsc::Sender<retained::Retained>>,
    mut stop: watch::Receiver<bool>,
) {
    let prefix = shared.config.subject_prefix.as_str();
    let mut numbering = Numbering::new(shared.config.max_tracked_topics);
    let mut lost_log = crate::EveryFewSeconds::new(
        "cluster: messages published here not forwarded (NATS unreachable or not taking them); the other nodes see a gap",
    );
    let stats = &shared.stats;
    let mut leaving = false;
    loop {
        let event = if leaving {
            // Leaving: forward what is already buffered, then stop.
            match futures::FutureExt::now_or_never(sub.next_batch()) {
                Some(event) => event,
                None => break,
            }
        } else {
            tokio::select! {
                event = sub.next_batch() => event,
                _ = stop.changed() => {
                    leaving = true;
                    continue;
                }
            }
        };
        match event {
            Some(BatchEvent::Deliveries(run)) => {
                // A run is one topic: its subject and its numbers are found once.
                let Some(topic) = run.first().map(|d| d.topic.clone()) else {
                    continue;
                };
                let subject = async_nats::Subject::from(wire::subject(prefix, topic.as_str()));
                let (generation, first) = numbering.next_run(&topic, run.len() as u64);
                for (d, sequence) in run.iter().zip(first..) {
                    let stamp = Stamp {
                        origin: shared.origin.clone(),
                        generation,
                        sequence,
                    };
                    let headers = wire::encode(&stamp, d.groups_served.as_deref(), d.retain, &d.headers);
                    if let Some(retained) = retained.as_ref().filter(|_| d.retain) {
                        let r = retained::Retained {
                            topic: d.topic.clone(),
                            headers: headers.clone(),
                            payload: d.payload.clone(),
                        };
                        if retained.send(r).await.is_err() {
                            tracing::error!(topic = %d.topic, "cluster: the retained writer is gone; value not replicated");
                        }
                    }
                    let connected = shared.client.connection_state() == async_nats::connection::State::Connected;
                    let sent = connected && hand_off(&shared.client, subject.clone(), headers, d.payload.clone()).await;
                    if sent {
                        stats.forwarded.fetch_add(1, Ordering::Relaxed);
                    } else {
                        // Its number is spent: the other nodes see it missing.
                        stats.forward_lost.fetch_add(1, Ordering::Relaxed);
                        lost_log.add(1, &d.topic);
                    }
                }
            }
            Some(BatchEvent::Gap(gap)) => {
                numbering.skip(&gap.topic, gap.dropped);
                stats.forward_lost.fetch_add(gap.dropped, Ordering::Relaxed);
                lost_log.add(gap.dropped, &gap.topic);
            }
            Some(BatchEvent::Closed(_)) | None => break,
        }
    }
}

/// Hands one message to the NATS client: at once when its queue has room (the usual
/// case, with no timer), else waiting up to [`HANDOFF`]. False if it was not taken.
async fn hand_off(
    client: &async_nats::Client,
    subject: async_nats::Subject,
    headers: async_nats::HeaderMap,
    payload: bytes::Bytes,
) -> bool {
    let mut publish = std::pin::pin!(client.publish_with_headers(subject, headers, payload));
    if let std::task::Poll::Ready(result) = futures::poll!(publish.as_mut()) {
        return result.is_ok();
    }
    matches!(tokio::time::timeout(HANDOFF, publish).await, Ok(Ok(())))
}
