//! The forwarder: what was published on this node, out to NATS.
//!
//! It reads a `local_only` subscription on `>` (system topics stay on their node) and
//! publishes each delivery on `<prefix>.<topic>`, stamped with the node's id and the
//! delivery's number in its topic's run. Its buffer drops the newest when full (NATS
//! down or slower than the publishers): local delivery never waits for the backplane.
//! What it drops is never forwarded, and its numbers are skipped, so the other nodes
//! see exactly that gap.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use streambus_core::{BatchEvent, OverflowPolicy, Subscription, SubscriptionOptions};
use tokio::sync::{mpsc, watch};

use crate::track::Numbering;
use crate::wire::{self, Stamp};
use crate::{Shared, retained};

/// The forwarder's buffer, in messages.
const BUFFER_MESSAGES: usize = 65_536;
/// The forwarder's buffer, in payload and header bytes.
const BUFFER_BYTES: usize = 64 * 1024 * 1024;

/// The forwarder's subscription: a bounded buffer that drops the newest when full, so
/// that a slow or absent backplane never holds back local delivery.
pub(crate) fn options() -> SubscriptionOptions {
    SubscriptionOptions::default()
        .overflow(OverflowPolicy::DropNewest)
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
                    match shared
                        .client
                        .publish_with_headers(wire::subject(prefix, d.topic.as_str()), headers, d.payload.clone())
                        .await
                    {
                        Ok(()) => {
                            stats.forwarded.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            // Only a closed client refuses; the message is lost to the
                            // other nodes and they will see its number missing.
                            stats.forward_lost.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(topic = %d.topic, error = %e, "cluster: forwarding failed");
                        }
                    }
                }
            }
            Some(BatchEvent::Gap(gap)) => {
                numbering.skip(&gap.topic, gap.dropped);
                stats.forward_lost.fetch_add(gap.dropped, Ordering::Relaxed);
                tracing::error!(topic = %gap.topic, lost = gap.dropped, "cluster: the forwarder fell behind; messages not forwarded (the other nodes see a gap)");
            }
            Some(BatchEvent::Closed(_)) | None => break,
        }
    }
}
