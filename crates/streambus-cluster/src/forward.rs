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
                for d in run.iter() {
                    let (generation, sequence) = numbering.next(&d.topic);
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
                    let sent = connected
                        && matches!(
                            tokio::time::timeout(
                                HANDOFF,
                                shared.client.publish_with_headers(
                                    wire::subject(prefix, d.topic.as_str()),
                                    headers,
                                    d.payload.clone()
                                ),
                            )
                            .await,
                            Ok(Ok(()))
                        );
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
