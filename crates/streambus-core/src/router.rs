//! The publish path: what every [`crate::SessionHandle`] shares to hand batches to topic
//! actors, and the checks a batch passes first.
//!
//! A [`Router`] is made once by [`crate::Bus::start`] and shared (behind an `Arc`) by
//! the bus and every session handle. It holds only what publishing needs: the topic
//! directory, the bus-wide in-flight count that shutdown waits on, the closing flag, and
//! the size limits. Keeping it apart from the bus's own state means the hot path never
//! reaches the actor roots, the sink runtime or the configuration as a whole.
//!
//! A batch is checked (open, count, sizes), split by topic (keeping each topic's order),
//! and each topic's part goes through the [`Directory`]: admission permit, then one
//! actor message. The in-flight guards of the session and of the bus travel inside that
//! message and are dropped when the topic has fanned the batch out.
//!
//! # Invariants
//!
//! - Once `closing` is set it is never cleared; every publish checks it first, so after
//!   [`Router::close`] no new batch enters and `inflight` only falls.
//! - A batch refused by a check publishes nothing; a batch that runs into a full topic
//!   under [`Admit::Try`] publishes exactly its admitted prefix and hands back the rest,
//!   in order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use streambus_types::config::LimitsConfig;
use streambus_types::{Message, Topic};

use crate::actors::session::SessionShared;
use crate::admission::Inflight;
use crate::budget::MemoryBudget;
use crate::directory::{Admit, BatchTags, Directory, TopicRoute};
use crate::error::BusError;
use crate::metrics::BusMetrics;
use crate::receipt::ReceiptToken;

/// The routing state shared by the bus and its session handles.
#[derive(Debug)]
pub(crate) struct Router {
    /// Live topics and the route to the topic supervisor for misses. Written only by the
    /// supervisor; read here on every publish.
    pub(crate) directory: Arc<Directory>,
    /// Publish batches admitted bus-wide and not yet fanned out. Each batch holds one
    /// guard (dropped with its permit); shutdown waits for the count to reach zero.
    pub(crate) inflight: Arc<Inflight>,
    /// Publish calls in progress, from their first check until they return (a call may
    /// wait for admission before it has any batch in flight). The drain waits for them
    /// too, so a publish that passed its check before the drain began is not cut off.
    /// A bare counter, polled by the drain: the hot path pays two atomic operations.
    publishing: AtomicUsize,
    /// `limits.max_memory_bytes`: every admitted batch holds a share of it until fanned
    /// out, whatever its topic.
    pub(crate) budget: Arc<MemoryBudget>,
    /// Set once by shutdown: from then on every publish and subscribe is refused with
    /// [`BusError::Closed`].
    closing: AtomicBool,
    /// Set once when a shutdown drain starts (before `closing`): client sessions may no
    /// longer publish, subscribe or open ([`BusError::Draining`]), while deliveries go
    /// on and the bus's own sessions keep working.
    draining: AtomicBool,
    /// `limits.max_batch_messages`: most messages in one publish batch.
    max_batch_messages: usize,
    /// `limits.max_message_bytes`: largest message, payload plus headers.
    max_message_bytes: usize,
    /// `shutdown.drain_timeout_ms`: how long a closing session waits for its publishes.
    pub(crate) drain_timeout: Duration,
    /// The bus-wide counters: each topic's admitted part of a batch is counted here,
    /// beside the session's own counters (refusals are counted by the session handle).
    pub(crate) metrics: Arc<BusMetrics>,
}

impl Router {
    /// A router over `directory`, with the limits of `limits`.
    pub(crate) fn new(
        directory: Arc<Directory>,
        budget: Arc<MemoryBudget>,
        limits: &LimitsConfig,
        drain_timeout: Duration,
        metrics: Arc<BusMetrics>,
    ) -> Arc<Self> {
        Arc::new(Router {
            directory,
            inflight: Inflight::new(),
            publishing: AtomicUsize::new(0),
            budget,
            closing: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            max_batch_messages: limits.max_batch_messages,
            max_message_bytes: limits.max_message_bytes,
            drain_timeout,
            metrics,
        })
    }

    /// Most messages in one publish batch.
    pub(crate) fn batch_limit(&self) -> usize {
        self.max_batch_messages
    }

    /// Whether the bus is shutting down.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Whether a shutdown drain has started.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Starts the shutdown drain: client sessions' publishes are refused from now on.
    ///
    /// Sequentially consistent with the check in [`Router::route`], which counts its
    /// call in `publishing` before it reads the flag (both `SeqCst`): either the call
    /// sees the flag and is refused, or the drain sees the call and waits for it.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Waits (up to `timeout`) until no publish call is in progress and every admitted
    /// batch is fanned out; returns whether both happened in time.
    pub(crate) async fn wait_quiet(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        // Shutdown only: a short poll keeps the hot path free of any wake-up.
        while self.publishing.load(Ordering::SeqCst) != 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.inflight
            .wait_idle(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
    }

    /// Refuses every publish from now on; returns whether it was already closing.
    pub(crate) fn close(&self) -> bool {
        self.closing.swap(true, Ordering::AcqRel)
    }

    /// The checks every batch passes before anything of it is published.
    fn check(&self, messages: &[Message]) -> Result<(), BusError> {
        if messages.len() > self.max_batch_messages {
            return Err(BusError::BatchTooLarge {
                len: messages.len(),
                max: self.max_batch_messages,
            });
        }
        if let Some(m) = messages.iter().find(|m| m.byte_len() > self.max_message_bytes) {
            return Err(BusError::MessageTooLarge {
                size: m.byte_len(),
                max: self.max_message_bytes,
            });
        }
        Ok(())
    }

    /// Publishes `messages` for `session`: checks them, then hands each topic's part to
    /// its actor, waiting for admission (`Admit::Wait`) or not (`Admit::Try`).
    ///
    /// Counts what was admitted in the session's counters. On [`BusError::Full`] the
    /// messages not admitted come back inside the error, in order.
    pub(crate) async fn route(
        &self,
        session: &Arc<SessionShared>,
        messages: Vec<Message>,
        admit: Admit,
        receipt: Option<&Arc<ReceiptToken>>,
        relay: Option<crate::Relay>,
    ) -> Result<(), BusError> {
        self.publishing.fetch_add(1, Ordering::SeqCst);
        let _publishing = Publishing(&self.publishing);
        if !session.internal && self.is_draining() {
            return Err(BusError::Draining);
        }
        self.check(&messages)?;
        let guards = || [session.inflight.guard(), self.inflight.guard()];
        let mut groups = group_by_topic(messages);
        while let Some((topic, group)) = groups.next() {
            let (count, bytes) = (group.len(), group.iter().map(Message::byte_len).sum::<usize>());
            match self
                .directory
                .send(
                    &topic,
                    group,
                    admit,
                    &self.budget,
                    guards,
                    BatchTags {
                        receipt,
                        relay: relay.as_ref(),
                    },
                )
                .await
            {
                Ok(()) => self.count_published(session, count, bytes),
                Err(BusError::Full(mut rest)) => {
                    let admitted = count - rest.len();
                    let refused_bytes = rest.iter().map(Message::byte_len).sum::<usize>();
                    self.count_published(session, admitted, bytes - refused_bytes);
                    rest.extend(groups.flat_map(|(_, g)| g));
                    return Err(BusError::Full(rest));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Publishes a plain batch for `session` at once if nothing would make it wait (see
    /// [`Directory::send_now`]): `Ok(None)` when published, `Ok(Some(messages))` handed
    /// back untouched when it would have to wait (publish it with [`Router::route`]),
    /// `Err` when refused. A batch of several topics always comes back.
    pub(crate) fn route_now(
        &self,
        session: &Arc<SessionShared>,
        messages: Vec<Message>,
        route: &mut TopicRoute,
    ) -> Result<Option<Vec<Message>>, BusError> {
        self.publishing.fetch_add(1, Ordering::SeqCst);
        let _publishing = Publishing(&self.publishing);
        if !session.internal && self.is_draining() {
            return Err(BusError::Draining);
        }
        self.check(&messages)?;
        // An empty batch is done; one of several topics is split by `route`.
        if one_topic(&messages).is_none() {
            return Ok((!messages.is_empty()).then_some(messages));
        }
        let (count, bytes) = (messages.len(), messages.iter().map(Message::byte_len).sum::<usize>());
        let guards = || [session.inflight.guard(), self.inflight.guard()];
        match self.directory.send_now(messages, &self.budget, guards, route) {
            Ok(()) => {
                self.count_published(session, count, bytes);
                Ok(None)
            }
            Err(back) => Ok(Some(back)),
        }
    }

    /// Counts `count` messages (`bytes` in all) admitted for `session`.
    fn count_published(&self, session: &SessionShared, count: usize, bytes: usize) {
        session.published_messages.fetch_add(count as u64, Ordering::Relaxed);
        session.published_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.metrics.published(count, bytes);
    }
}

/// Counts a publish call out of `Router::publishing` however it ends.
struct Publishing<'a>(&'a AtomicUsize);

impl Drop for Publishing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

/// A batch split by topic, each topic's messages in their order, topics in first-seen
/// order.
enum Groups {
    /// The batch as it came, all of one topic (or nothing).
    One(Option<(Topic, Vec<Message>)>),
    /// Several topics.
    Many(std::vec::IntoIter<(Topic, Vec<Message>)>),
}

impl Iterator for Groups {
    type Item = (Topic, Vec<Message>);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Groups::One(group) => group.take(),
            Groups::Many(groups) => groups.next(),
        }
    }
}

/// The topic of a batch whose messages all have one (`None` for an empty batch).
fn one_topic(messages: &[Message]) -> Option<&Topic> {
    let first = &messages.first()?.topic;
    messages.iter().all(|m| &m.topic == first).then_some(first)
}

/// Splits a batch by topic, keeping each topic's order. Most batches have one topic:
/// then the batch is kept as it is, with no copy and nothing allocated.
fn group_by_topic(messages: Vec<Message>) -> Groups {
    if messages.is_empty() {
        return Groups::One(None);
    }
    if let Some(topic) = one_topic(&messages) {
        return Groups::One(Some((topic.clone(), messages)));
    }
    let mut groups: Vec<(Topic, Vec<Message>)> = Vec::new();
    for m in messages {
        match groups.iter_mut().find(|(t, _)| *t == m.topic) {
            Some((_, g)) => g.push(m),
            None => groups.push((m.topic.clone(), vec![m])),
        }
    }
    Groups::Many(groups.into_iter())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn message(topic: &str, payload: u32) -> Message {
        Message::new(Topic::new(topic).unwrap(), payload.to_le_bytes().to_vec())
    }

    /// One topic stays one group, untouched; several topics keep their first-seen order.
    #[test]
    fn groups_keep_first_seen_order() {
        assert_eq!(group_by_topic(Vec::new()).count(), 0);
        let one: Vec<_> = group_by_topic(vec![message("a", 1), message("a", 2)]).collect();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].1.len(), 2);
        let mixed: Vec<_> = group_by_topic(vec![message("b", 1), message("a", 2), message("b", 3)]).collect();
        let names: Vec<&str> = mixed.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(names, ["b", "a"]);
        assert_eq!(mixed[0].1.len(), 2);
    }

    proptest! {
        /// Grouping loses nothing, adds nothing, and keeps every topic's own order.
        #[test]
        fn grouping_keeps_each_topics_order(picks in proptest::collection::vec(0usize..4, 0..64)) {
            let topics = ["t.a", "t.b", "t.c", "t.d"];
            let messages: Vec<Message> =
                picks.iter().enumerate().map(|(i, &t)| message(topics[t], i as u32)).collect();
            let groups: Vec<_> = group_by_topic(messages.clone()).collect();
            prop_assert_eq!(groups.iter().map(|(_, g)| g.len()).sum::<usize>(), messages.len());
            for (topic, group) in &groups {
                prop_assert!(group.iter().all(|m| &m.topic == topic));
                let expected: Vec<&Message> = messages.iter().filter(|m| &m.topic == topic).collect();
                let got: Vec<&Message> = group.iter().collect();
                prop_assert_eq!(got, expected);
            }
        }
    }
}
