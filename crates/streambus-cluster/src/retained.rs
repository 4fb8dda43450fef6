//! Retained values across nodes: a JetStream stream keeps the last retained message
//! per subject (`<prefix>-retained.<topic>`), replicated as configured.
//!
//! - The [`Writer`] takes the retained publishes the forwarder sees and writes them,
//!   the newest per topic, pipelined, each until the stream acknowledges it (the
//!   stream may not exist yet while the JetStream cluster elects its leader, or a
//!   server may be failing over): a retained value is not lost to a passing outage.
//!   Only the newest value of a topic is kept waiting, so an older one never lands
//!   after a newer one.
//! - [`run`] follows the stream (from the last value of every subject, then live) and
//!   hands each value another node wrote to the local topic as its retained value, so
//!   that a new subscriber on any node gets the current value.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use streambus_types::Topic;
use tokio::sync::mpsc;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use streambus_core::Relay;
use streambus_types::Message;
use tokio::sync::watch;

use crate::Shared;
use crate::wire;

/// The subject prefix of the retained stream for bus prefix `prefix`.
pub(crate) fn subject_prefix(prefix: &str) -> String {
    format!("{prefix}-retained")
}

/// A retained publish on its way to the stream.
pub(crate) struct Retained {
    pub(crate) topic: Topic,
    pub(crate) headers: HeaderMap,
    pub(crate) payload: Bytes,
}

/// Most retained publishes queued for the writer; past it the forwarder waits.
pub(crate) const QUEUE: usize = 1024;
/// Pause before writing again what the stream did not acknowledge.
const RETRY: Duration = Duration::from_millis(500);

/// Writes retained publishes to the stream (see the module doc). Ends when `rx` closes
/// (the forwarder is done) and everything taken was tried; after `stop`, what fails is
/// not tried again.
pub(crate) async fn write(shared: Arc<Shared>, mut rx: mpsc::Receiver<Retained>, mut stop: watch::Receiver<bool>) {
    let js = jetstream::new(shared.client.clone());
    let prefix = subject_prefix(&shared.config.subject_prefix);
    // The newest value per topic not yet acknowledged.
    let mut waiting: HashMap<Topic, Retained> = HashMap::new();
    let mut leaving = false;
    loop {
        if waiting.is_empty() {
            match rx.recv().await {
                Some(r) => {
                    waiting.insert(r.topic.clone(), r);
                }
                None => return,
            }
        }
        while waiting.len() < QUEUE {
            match rx.try_recv() {
                Ok(r) => {
                    waiting.insert(r.topic.clone(), r);
                }
                Err(_) => break,
            }
        }
        // Publish them all, then collect the acknowledgements; what failed stays.
        let mut acks = Vec::with_capacity(waiting.len());
        for r in waiting.values() {
            let subject = crate::wire::subject(&prefix, r.topic.as_str());
            let sent = js
                .publish_with_headers(subject, r.headers.clone(), r.payload.clone())
                .await;
            acks.push((r.topic.clone(), sent));
        }
        let mut failed = 0;
        for (topic, sent) in acks {
            let result = match sent {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(()) => {
                    shared.stats.retained_written.fetch_add(1, Ordering::Relaxed);
                    waiting.remove(&topic);
                }
                Err(e) => {
                    failed += 1;
                    shared.stats.retained_write_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%topic, error = %e, leaving, "cluster: the retained stream did not take a retained value");
                }
            }
        }
        leaving = leaving || *stop.borrow_and_update();
        if failed > 0 && leaving {
            tracing::error!(
                values = failed,
                "cluster: leaving with retained values the stream did not take"
            );
            waiting.clear();
        } else if failed > 0 {
            tokio::select! {
                _ = tokio::time::sleep(RETRY) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

pub(crate) async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    if shared.config.retained_stream.is_empty() {
        return;
    }
    loop {
        tokio::select! {
            result = follow(&shared) => {
                if let Err(e) = result {
                    tracing::warn!(stream = %shared.config.retained_stream, error = %e, "cluster: retained stream unavailable; retrying");
                }
            }
            _ = stop.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Creates (or finds) the stream and follows it until it fails.
async fn follow(shared: &Shared) -> Result<(), async_nats::Error> {
    let js = jetstream::new(shared.client.clone());
    let prefix = subject_prefix(&shared.config.subject_prefix);
    let stream = js
        .get_or_create_stream(stream::Config {
            name: shared.config.retained_stream.clone(),
            subjects: vec![format!("{prefix}.>")],
            max_messages_per_subject: 1,
            num_replicas: shared.config.retained_replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let mut messages = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: format!("{prefix}.>"),
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await?
        .messages()
        .await?;
    tracing::info!(stream = %shared.config.retained_stream, "cluster: following the retained stream");
    while let Some(message) = messages.next().await {
        let message = message?;
        let Some(topic) = wire::topic_of(&prefix, message.subject.as_str()) else {
            shared.stats.invalid.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let incoming = match wire::decode(message.headers.as_ref()) {
            Ok(incoming) => incoming,
            Err(e) => {
                shared.stats.invalid.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%topic, error = %e, "cluster: a retained value with a broken stamp");
                continue;
            }
        };
        if incoming.stamp.as_ref().is_some_and(|s| s.origin == shared.origin) {
            // Published here: the topic already holds it.
            continue;
        }
        let mut m = Message::new(topic, message.payload.clone()).with_headers(incoming.headers);
        m.retain = true;
        match shared.federation.relay(vec![m], Relay::Retain).await {
            Ok(()) => {
                shared.stats.retained_received.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "cluster: the bus refused a retained value from another node");
            }
        }
    }
    Err("the retained stream's consumer ended".into())
}
