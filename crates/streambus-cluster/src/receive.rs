//! The receiver: the node's interest as NATS subscriptions, and what they bring in.
//!
//! Interest changes come from the bus ([`streambus_core::Federation::interest_changes`]).
//! Plain filters are reduced to those no other held filter covers (see `cover`), each
//! one NATS subscription; each (filter, queue group) is one NATS queue subscription
//! named after the group. A new subscription is made before a covered one is dropped,
//! so a change of interest loses nothing (what comes twice meanwhile is dropped by its
//! run number).
//!
//! Messages are handed to the bus in batches of consecutive messages for the same
//! subscribers, in arrival order, each relay awaited before the next: order per origin
//! and topic is kept, and a full local topic holds the receiver back (NATS then drops
//! for this node past its buffer, which the run numbers turn into gaps).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::FutureExt;
use streambus_core::{InterestChange, Relay};
use streambus_types::{Message, Topic, TopicFilter};
use tokio::sync::watch;
use tokio_stream::{StreamExt, StreamMap};

use crate::track::{Runs, Verdict};
use crate::wire;
use crate::{Shared, cover};

/// Messages the NATS client holds per subscription for the receiver.
pub(crate) const SUBSCRIPTION_CAPACITY: usize = 8192;

/// What one NATS subscription is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Route {
    /// Subscribers outside queue groups, under this filter.
    Plain(TopicFilter),
    /// Members of this queue group, under this filter.
    Group(TopicFilter, Arc<str>),
}

struct Receiver {
    shared: Arc<Shared>,
    /// Plain filters local subscribers hold.
    plain: HashSet<TopicFilter>,
    /// (filter, group) pairs local group members hold.
    groups: HashSet<(TopicFilter, Arc<str>)>,
    /// The NATS subscriptions, merged.
    streams: StreamMap<Route, async_nats::Subscriber>,
    /// Run numbers per (origin, topic), for plain deliveries.
    runs: Runs,
    /// The batch being gathered for one relay.
    pending: Vec<Message>,
    /// Whom `pending` is for.
    pending_relay: Option<Relay>,
    /// Backplane losses, logged every few seconds.
    lost_log: crate::EveryFewSeconds,
    /// The subject parsed last and its topic.
    last_topic: Option<(async_nats::Subject, Topic)>,
}

pub(crate) async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let max = shared.config.max_tracked_topics;
    let mut r = Receiver {
        shared,
        plain: HashSet::new(),
        groups: HashSet::new(),
        streams: StreamMap::new(),
        runs: Runs::new(max),
        pending: Vec::new(),
        pending_relay: None,
        lost_log: crate::EveryFewSeconds::new(
            "cluster: messages lost on the backplane (reported to the subscribers as gaps)",
        ),
        last_topic: None,
    };
    let most = r.shared.batch_limit.clamp(1, 512);
    loop {
        tokio::select! {
            changes = r.shared.federation.interest_changes() => r.follow(changes).await,
            Some(first) = r.streams.next(), if !r.streams.is_empty() => {
                r.take(first).await;
                // Whatever else is already here goes in the same relays.
                for _ in 1..most {
                    match r.streams.next().now_or_never() {
                        Some(Some(next)) => r.take(next).await,
                        _ => break,
                    }
                }
                r.flush().await;
            }
            _ = stop.changed() => break,
        }
    }
    r.flush().await;
}

impl Receiver {
    /// Brings the NATS subscriptions in line with the local interest.
    async fn follow(&mut self, changes: Vec<InterestChange>) {
        let mut dropped_plain = Vec::new();
        for change in changes {
            // System topics (`$dlq.…`, `$chat.…`) stay on their node.
            if change.key.filter.as_str().starts_with('$') {
                continue;
            }
            match (change.key.group, change.held) {
                (None, true) => {
                    self.plain.insert(change.key.filter);
                }
                (None, false) => {
                    self.plain.remove(&change.key.filter);
                    dropped_plain.push(change.key.filter);
                }
                (Some(g), true) => {
                    self.groups.insert((change.key.filter, g));
                }
                (Some(g), false) => {
                    self.groups.remove(&(change.key.filter, g));
                }
            }
        }
        let wanted: HashSet<Route> = cover::uncovered(&self.plain)
            .into_iter()
            .map(Route::Plain)
            .chain(self.groups.iter().map(|(f, g)| Route::Group(f.clone(), g.clone())))
            .collect();
        let prefix = self.shared.config.subject_prefix.clone();
        for route in &wanted {
            if self.streams.contains_key(route) {
                continue;
            }
            let subscribed = match route {
                Route::Plain(f) => self.shared.client.subscribe(wire::filter_subject(&prefix, f)).await,
                Route::Group(f, g) => {
                    self.shared
                        .client
                        .queue_subscribe(wire::filter_subject(&prefix, f), g.to_string())
                        .await
                }
            };
            match subscribed {
                Ok(sub) => {
                    tracing::debug!(?route, "cluster: subscribed on NATS");
                    self.streams.insert(route.clone(), sub);
                }
                Err(e) => tracing::error!(?route, error = %e, "cluster: subscribing on NATS failed"),
            }
        }
        let stale: Vec<Route> = self.streams.keys().filter(|k| !wanted.contains(k)).cloned().collect();
        for route in stale {
            // Dropping the subscriber unsubscribes it.
            self.streams.remove(&route);
            tracing::debug!(?route, "cluster: unsubscribed on NATS");
        }
        for filter in dropped_plain {
            self.runs.forget(&filter);
        }
        let stats = &self.shared.stats;
        stats.subscriptions.store(self.streams.len() as u64, Ordering::Relaxed);
        stats
            .interest
            .store((self.plain.len() + self.groups.len()) as u64, Ordering::Relaxed);
    }

    /// Judges one message from NATS and adds it to the pending relay.
    async fn take(&mut self, (route, message): (Route, async_nats::Message)) {
        let stats = self.shared.stats.clone();
        stats.received.fetch_add(1, Ordering::Relaxed);
        // Messages come in runs of one subject: its topic is parsed once.
        let topic = match &self.last_topic {
            Some((subject, topic)) if *subject == message.subject => topic.clone(),
            _ => {
                let Some(topic) = wire::topic_of(&self.shared.config.subject_prefix, message.subject.as_str()) else {
                    stats.invalid.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(subject = %message.subject, "cluster: a subject that is not a topic");
                    return;
                };
                self.last_topic = Some((message.subject.clone(), topic.clone()));
                topic
            }
        };
        let incoming = match wire::decode(message.headers.as_ref()) {
            Ok(incoming) => incoming,
            Err(e) => {
                stats.invalid.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%topic, error = %e, "cluster: a message with a broken stamp");
                return;
            }
        };
        let relay = match route {
            Route::Plain(_) => {
                if let Some(stamp) = &incoming.stamp {
                    match self.runs.judge(&topic, stamp) {
                        Verdict::Duplicate => {
                            stats.duplicates.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        Verdict::Deliver { lost } if lost > 0 => {
                            stats.gaps.fetch_add(1, Ordering::Relaxed);
                            stats.lost.fetch_add(lost, Ordering::Relaxed);
                            self.lost_log.add(lost, &topic);
                            self.push(
                                Relay::Lost {
                                    count: lost,
                                    group: None,
                                },
                                Message::new(topic.clone(), bytes::Bytes::new()),
                            )
                            .await;
                        }
                        Verdict::Deliver { .. } => {}
                    }
                }
                Relay::Plain
            }
            Route::Group(_, group) => {
                if incoming.served.iter().any(|g| **g == *group) {
                    stats.served_elsewhere.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Relay::Group(group)
            }
        };
        let mut m = Message::new(topic, message.payload.clone()).with_headers(incoming.headers);
        m.retain = incoming.retain;
        self.push(relay, m).await;
    }

    /// Adds a message to the pending relay, sending the pending one first if it is for
    /// other subscribers (or is a gap report, which goes alone) or is full.
    async fn push(&mut self, relay: Relay, message: Message) {
        let alone = matches!(relay, Relay::Lost { .. });
        if self.pending_relay.as_ref() != Some(&relay) || alone || self.pending.len() >= self.shared.batch_limit {
            self.flush().await;
        }
        self.pending.push(message);
        self.pending_relay = Some(relay);
        if alone {
            self.flush().await;
        }
    }

    /// Sends the pending relay.
    async fn flush(&mut self) {
        let Some(relay) = self.pending_relay.take() else {
            return;
        };
        let messages = std::mem::take(&mut self.pending);
        let n = messages.len() as u64;
        let counted = !matches!(relay, Relay::Lost { .. });
        let first: Option<Topic> = messages.first().map(|m| m.topic.clone());
        match self.shared.federation.relay(messages, relay).await {
            Ok(()) if counted => {
                self.shared.stats.relayed.fetch_add(n, Ordering::Relaxed);
            }
            Ok(()) => {}
            Err(e) => {
                self.shared.stats.refused.fetch_add(n, Ordering::Relaxed);
                tracing::error!(topic = ?first, messages = n, error = %e, "cluster: the bus refused messages from another node");
            }
        }
    }
}
