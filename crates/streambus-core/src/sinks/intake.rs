//! A sink's intake: its subscriptions' deliveries into its source.
//!
//! One task per sink for the bus's whole life (it outlives restarts of the sink). It
//! ends when every subscription has ended (shutdown), after which the source ends too:
//! the memory channel closes, the disk buffer is closed for appends.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use streambus_sinks::Record;
use tokio::sync::mpsc;

use super::shared::{SinkShared, Source};
use crate::subscription::{BatchEvent, Subscription};

/// Reads `subscriptions` into the sink's source until they all end. `tx` is the memory
/// source's sender (dropped on return, which ends the source).
pub(crate) async fn run(
    shared: Arc<SinkShared>,
    subscriptions: Vec<Subscription>,
    tx: Option<mpsc::Sender<Vec<Record>>>,
) {
    let streams = subscriptions.into_iter().map(|sub| {
        futures::stream::unfold(sub, |mut sub| async move { sub.next_batch().await.map(|e| (e, sub)) }).boxed()
    });
    let mut events = futures::stream::select_all(streams);
    let name = shared.config.name.clone();
    while let Some(event) = events.next().await {
        match event {
            BatchEvent::Deliveries(run) => {
                let records: Vec<Record> = run.iter().map(Record::from_delivery).collect();
                let n = records.len() as u64;
                shared.received.fetch_add(n, Ordering::Relaxed);
                if let Some(tx) = &tx {
                    if tx.send(records).await.is_err() {
                        shared.dropped.fetch_add(n, Ordering::Relaxed);
                        tracing::error!(sink = %name, records = n, "sink source closed; records lost");
                    }
                } else if let Source::Disk(buffer) = &shared.source {
                    match buffer.append(&records).await {
                        Ok(out) if out.dropped == 0 => run.confirm(),
                        Ok(out) => {
                            // The durable publishers of this run are told it is not durable.
                            shared.dropped.fetch_add(out.dropped as u64, Ordering::Relaxed);
                            tracing::error!(sink = %name, records = out.dropped, "sink buffer full (when_full = drop_newest): records dropped");
                        }
                        Err(e) => {
                            shared.dropped.fetch_add(n, Ordering::Relaxed);
                            shared.set_error(e.to_string());
                            tracing::error!(sink = %name, records = n, error = %e, "sink buffer write failed: records lost");
                        }
                    }
                }
            }
            // Counted by the subscription buffer itself (see the sink snapshot).
            BatchEvent::Gap(gap) => {
                tracing::error!(sink = %name, topic = %gap.topic, records = gap.dropped, "sink could not keep up (when_full = drop_newest): records dropped");
            }
            BatchEvent::Closed(reason) => {
                tracing::debug!(sink = %name, reason = reason.as_str(), "sink subscription ended");
            }
        }
    }
    if let Source::Disk(buffer) = &shared.source {
        buffer.close();
    }
}
