//! Subscriptions: the consumer's end of a subscriber buffer.
//!
//! A [`Subscription`] is a [`futures::Stream`] of [`Event`]s: deliveries, gaps, and a
//! final `Closed` when the bus ended it (slow consumer, session failure, shutdown).
//! High-throughput consumers (the gRPC adapter, benchmarks) use
//! [`Subscription::next_batch`] instead, which hands out runs of deliveries that share
//! their allocation with every other subscriber: no per-delivery copy at all.
//!
//! Dropping a subscription unsubscribes it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use ractor::ActorRef;
use serde::Serialize;
use streambus_types::{CloseReason, Event, Gap, TopicFilter};

use crate::actors::session::{SessionId, SessionMessage};
use crate::error::{BusError, answered};
use crate::queue::{DeliveryRun, Popped, QueueSnapshot, SubscriberQueue};

/// Identifies a subscription, unique within a bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SubscriptionId(pub u64);

impl std::fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The routing entry of a subscription: what the index and the topics hold.
#[derive(Debug)]
pub(crate) struct Subscriber {
    /// Unique within the bus; the key of the index and of every topic's subscriber set.
    pub(crate) id: SubscriptionId,
    /// The owning session, for cleaning up all of a session's subscriptions at once.
    pub(crate) session: SessionId,
    /// What it matches.
    pub(crate) filter: TopicFilter,
    /// Its queue group: each message of a topic goes to one member of each group.
    pub(crate) group: Option<Arc<str>>,
    /// The bounded buffer topics push into and the [`Subscription`] pops from; closing
    /// it ends the subscription for everyone.
    pub(crate) queue: Arc<SubscriberQueue>,
    /// The owning session, told when the bus ends the subscription on its own.
    pub(crate) session_ref: ActorRef<SessionMessage>,
    /// A durable sink's subscription: topics give it a share of each durable receipt.
    pub(crate) durable: bool,
    /// Takes only what was published on this node (see
    /// [`streambus_types::SubscriptionOptions::local_only`]).
    pub(crate) local_only: bool,
}

/// A point-in-time view of one subscription.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionSnapshot {
    /// The id.
    pub id: SubscriptionId,
    /// The filter.
    pub filter: TopicFilter,
    /// The queue group, if any.
    pub queue_group: Option<String>,
    /// The buffer.
    #[serde(flatten)]
    pub buffer: QueueSnapshot,
}

impl Subscriber {
    /// Its (filter, group), as the backplane's interest counts it.
    pub(crate) fn interest_key(&self) -> crate::InterestKey {
        crate::InterestKey {
            filter: self.filter.clone(),
            group: self.group.clone(),
        }
    }

    pub(crate) fn snapshot(&self) -> SubscriptionSnapshot {
        SubscriptionSnapshot {
            id: self.id,
            filter: self.filter.clone(),
            queue_group: self.group.as_deref().map(str::to_owned),
            buffer: self.queue.snapshot(),
        }
    }
}

/// What [`Subscription::next_batch`] yields.
#[derive(Debug, Clone)]
pub enum BatchEvent {
    /// A run of deliveries of one topic, in sequence order.
    Deliveries(DeliveryRun),
    /// Messages lost before the next delivery.
    Gap(Gap),
    /// The bus ended the subscription; nothing follows.
    Closed(CloseReason),
}

/// A live subscription: a stream of [`Event`]s.
#[derive(Debug)]
pub struct Subscription {
    /// The subscription's id.
    id: SubscriptionId,
    /// What it matches.
    filter: TopicFilter,
    /// The buffer it pops from, shared with the topics that push into it.
    queue: Arc<SubscriberQueue>,
    /// The owning session; told to forget the subscription when it is dropped.
    session: ActorRef<SessionMessage>,
    /// Deliveries popped but not yet yielded one by one by the `Stream` impl.
    current: Option<DeliveryRun>,
    /// The close reason was handed out: the stream is over.
    done: bool,
    /// Its place in its identity's subscription quota, given back when it is dropped.
    pub(crate) quota_slot: Option<crate::access::QuotaSlot>,
}

impl Subscription {
    pub(crate) fn new(sub: &Subscriber, session: ActorRef<SessionMessage>) -> Self {
        Subscription {
            id: sub.id,
            filter: sub.filter.clone(),
            queue: sub.queue.clone(),
            session,
            current: None,
            done: false,
            quota_slot: None,
        }
    }

    /// The id.
    pub fn id(&self) -> SubscriptionId {
        self.id
    }

    /// The filter.
    pub fn filter(&self) -> &TopicFilter {
        &self.filter
    }

    /// The buffer itself, for observers that outlive this handle's owner.
    pub(crate) fn queue(&self) -> Arc<SubscriberQueue> {
        self.queue.clone()
    }

    /// The buffer's current state.
    pub fn buffer(&self) -> QueueSnapshot {
        self.queue.snapshot()
    }

    /// Polls for the next run of deliveries, gap or close, as [`Self::next_batch`]
    /// waits for it: for a consumer that is itself polled (a response body), which
    /// reads each delivery in place rather than taking a copy of it.
    pub fn poll_batch(&mut self, cx: &mut Context<'_>) -> Poll<Option<BatchEvent>> {
        if let Some(run) = self.current.take().filter(|r| !r.is_empty()) {
            return Poll::Ready(Some(BatchEvent::Deliveries(run)));
        }
        if self.done {
            return Poll::Ready(None);
        }
        match self.queue.poll_pop(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Popped::Deliveries(run))) => Poll::Ready(Some(BatchEvent::Deliveries(run))),
            Poll::Ready(Some(Popped::Gap(g))) => Poll::Ready(Some(BatchEvent::Gap(g))),
            Poll::Ready(Some(Popped::Closed(reason))) => {
                self.done = true;
                match reason {
                    CloseReason::Unsubscribed => Poll::Ready(None),
                    reason => Poll::Ready(Some(BatchEvent::Closed(reason))),
                }
            }
        }
    }

    /// The next run of deliveries, gap or close, without copying deliveries out.
    pub async fn next_batch(&mut self) -> Option<BatchEvent> {
        std::future::poll_fn(|cx| self.poll_batch(cx)).await
    }

    /// Unsubscribes and waits until no topic will push to it any more.
    pub async fn unsubscribe(mut self) -> Result<(), BusError> {
        self.done = true;
        self.queue.detach();
        let id = self.id;
        let result = self
            .session
            .call(|reply| SessionMessage::Unsubscribe { id, reply: Some(reply) }, None)
            .await;
        // A session that is gone took its subscriptions with it.
        answered(result).unwrap_or(Ok(()))
    }
}

impl Stream for Subscription {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let this = self.get_mut();
        loop {
            if let Some(run) = this.current.as_mut()
                && let Some(d) = run.pop_front()
            {
                return Poll::Ready(Some(Event::Delivery(d)));
            }
            this.current = None;
            return match this.poll_batch(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Ready(Some(BatchEvent::Deliveries(run))) => {
                    this.current = Some(run);
                    continue;
                }
                Poll::Ready(Some(BatchEvent::Gap(g))) => Poll::Ready(Some(Event::Gap(g))),
                Poll::Ready(Some(BatchEvent::Closed(r))) => Poll::Ready(Some(Event::Closed(r))),
            };
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.queue.is_detached() {
            self.queue.detach();
            // The session may be gone already, and its subscriptions with it.
            let _ = self.session.cast(SessionMessage::Unsubscribe {
                id: self.id,
                reply: None,
            });
        }
    }
}
