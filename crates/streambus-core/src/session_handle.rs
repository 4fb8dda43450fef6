//! [`SessionHandle`]: a client of the bus with its own subscriptions, limits and close,
//! and [`DurableAck`], the answer to a durable publish.
//!
//! ```no_run
//! # async fn demo(bus: streambus_core::Bus) -> Result<(), streambus_core::BusError> {
//! use streambus_core::{ConnectOptions, SubscriptionOptions};
//!
//! let device = bus.connect(ConnectOptions::named("dev42")).await?;
//! let _commands = device.subscribe("commands.dev42", SubscriptionOptions::default()).await?;
//! device.publish("sensors.dev42.temperature", "21.5").await?;
//! device.close().await?;
//! # Ok(()) }
//! ```
//!
//! Publishing is the hot path and goes from the caller's task straight to the topic
//! actors through the bus's router (`router.rs`; no session actor in between). Subscribing,
//! unsubscribing, observing and closing are calls to the session actor, which owns the
//! subscriptions and enforces the per-session limits.
//!
//! # Invariants
//!
//! - A handle never outlives its meaning: once the session is closed, has failed, or the
//!   bus is shutting down, every publish and subscribe fails with [`BusError::Closed`].
//! - [`SessionHandle::close`] returns only after everything the session published has
//!   reached subscriber buffers (or the drain timeout passed, which is logged).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use ractor::{ActorRef, ActorStatus};
use streambus_types::{CloseReason, Message, SubscriptionOptions, Topic, TopicFilter};

use crate::actors::session::{SessionId, SessionMessage, SessionShared, SessionSnapshot};
use crate::directory::{Admit, TopicRoute};
use crate::error::{BusError, answered};
use crate::receipt::Receipt;
use crate::router::Router;
use crate::subscription::Subscription;

/// How long the session actor gets to answer an `Observe`.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The durable acknowledgement of a publish (see [`SessionHandle::publish_durable`]).
#[derive(Debug)]
#[must_use = "a durable ack means nothing until it is waited for"]
pub struct DurableAck(Receipt);

impl DurableAck {
    /// Waits until every matching durable sink has the messages in its buffer.
    ///
    /// Fails with [`BusError::NotDurable`] when a durable sink could not take a message
    /// (its buffer full under `drop_newest`, a disk error, a crash on the way); the
    /// messages were still published to live subscribers.
    pub async fn wait(self) -> Result<(), BusError> {
        if self.0.wait().await {
            Ok(())
        } else {
            Err(BusError::NotDurable)
        }
    }
}

/// A session: a client of the bus with its own subscriptions, limits and close.
///
/// Clones share the session. Publishing goes straight to the topics; subscribing
/// goes through the session actor.
#[derive(Clone)]
pub struct SessionHandle {
    /// The bus's publish path, shared with the bus and every other handle.
    router: Arc<Router>,
    /// The session actor: subscribe, unsubscribe, close and observe are calls to it
    /// (ractor mailbox, unbounded, but each caller waits for its answer, so at most one
    /// request per caller is queued). Dropping the handle does not stop the actor: the
    /// owner closes the session, or the session manager stops it at shutdown.
    actor: ActorRef<SessionMessage>,
    /// Counters and the closed flag, shared with the actor and the session manager.
    shared: Arc<SessionShared>,
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHandle")
            .field("id", &self.shared.id)
            .field("name", &self.shared.name)
            .finish()
    }
}

impl SessionHandle {
    /// A handle on a session the session manager just opened.
    pub(crate) fn new(router: Arc<Router>, actor: ActorRef<SessionMessage>, shared: Arc<SessionShared>) -> Self {
        SessionHandle { router, actor, shared }
    }

    /// The state shared with the actor and the session manager.
    pub(crate) fn shared(&self) -> &Arc<SessionShared> {
        &self.shared
    }

    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.shared.id
    }

    /// Most messages in one publish batch (`limits.max_batch_messages`).
    pub fn batch_limit(&self) -> usize {
        self.router.batch_limit()
    }

    /// Whether the session can still be used.
    pub fn is_open(&self) -> bool {
        !self.shared.closed.load(Ordering::Acquire)
            && !self.router.is_closing()
            && matches!(self.actor.get_status(), ActorStatus::Starting | ActorStatus::Running)
    }

    /// Routes a batch after the open check (see [`Router::route`]).
    async fn route(
        &self,
        messages: Vec<Message>,
        admit: Admit,
        receipt: Option<&Arc<crate::receipt::ReceiptToken>>,
    ) -> Result<(), BusError> {
        self.route_as(messages, admit, receipt, None).await
    }

    /// Routes a batch relayed from another node (see [`crate::Federation::relay`]).
    pub(crate) async fn relay(&self, messages: Vec<Message>, relay: crate::Relay) -> Result<(), BusError> {
        self.route_as(messages, Admit::Wait, None, Some(relay)).await
    }

    /// Routes a batch after the open check (see [`Router::route`]); a relayed one
    /// carries whom it is for.
    async fn route_as(
        &self,
        messages: Vec<Message>,
        admit: Admit,
        receipt: Option<&Arc<crate::receipt::ReceiptToken>>,
        relay: Option<crate::Relay>,
    ) -> Result<(), BusError> {
        let routed = if !self.is_open() {
            Err(BusError::Closed)
        } else if let Some(access) = &self.shared.access {
            match self.admit(access, &messages, admit).await {
                Ok(()) => self.router.route(&self.shared, messages, admit, receipt, relay).await,
                Err(e) => Err(e),
            }
        } else {
            self.router.route(&self.shared, messages, admit, receipt, relay).await
        };
        if let Err(e) = &routed {
            self.note_refusal(e);
        }
        routed
    }

    /// Checks a batch against the session's permissions, then its identity's rate: a
    /// waiting quota holds the publisher back here (a `try_` publish is refused
    /// instead, as it never waits).
    async fn admit(&self, access: &crate::access::Access, messages: &[Message], admit: Admit) -> Result<(), BusError> {
        access.check_publish(messages)?;
        if let Some(quota) = access.quota() {
            let bytes = messages.iter().map(Message::byte_len).sum();
            quota
                .admit(access.identity(), messages.len(), bytes, admit == Admit::Try)
                .await?;
        }
        Ok(())
    }

    /// Counts a request of this session refused with `error` in the bus-wide metrics.
    /// The bus counts its own refusals; a transport calls this for a request it refuses
    /// before the bus sees it (a frame it cannot convert).
    pub fn note_refusal(&self, error: &BusError) {
        self.router.metrics.refused(error.code());
    }

    /// Resolves when an operator asks for this session to close
    /// ([`crate::Bus::close_session`]). A transport that serves the session calls this
    /// once and waits on it: from then on an operator's close is its to carry out (tell
    /// the client, send what is buffered, then close the session). A session nobody
    /// waits for this way is closed by the bus directly.
    pub fn close_requested(&self) -> impl Future<Output = ()> + Send + 'static {
        self.shared.watched.store(true, Ordering::Release);
        let shared = self.shared.clone();
        async move { shared.close_requested.notified().await }
    }

    /// Publishes `payload` to `topic`, waiting while the topic's mailbox is full.
    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>) -> Result<(), BusError> {
        match Topic::new(topic) {
            Ok(topic) => self.publish_message(Message::new(topic, payload)).await,
            Err(e) => {
                let e = BusError::from(e);
                self.note_refusal(&e);
                Err(e)
            }
        }
    }

    /// Publishes a message, waiting while the topic's mailbox is full.
    pub async fn publish_message(&self, message: Message) -> Result<(), BusError> {
        self.route(vec![message], Admit::Wait, None).await
    }

    /// Publishes a message at once if nothing would make it wait, without the
    /// allocation and state of an async call: for a caller that is itself polled (a
    /// response body) and publishes one message at a time.
    ///
    /// `Ok(None)`: published, as [`Self::publish_message`] would have. `Ok(Some(message))`:
    /// publishing it would have to wait (the topic is not started, its mailbox or the
    /// memory budget has no room now, somebody waits before it, or the session's rate
    /// quota applies), so nothing was published and the message comes back: publish it
    /// with [`Self::publish_message`]. `Err`: refused, as [`Self::publish_message`]
    /// would have refused it.
    pub fn publish_now(&self, message: Message) -> Result<Option<Message>, BusError> {
        self.publish_now_on(message, &mut TopicRoute::default())
    }

    /// [`Self::publish_now`] through `route`, the caller's remembered way to the topic
    /// it publishes to most (see [`TopicRoute`]): for a publisher that keeps to one
    /// topic, it skips the directory's lookup.
    pub fn publish_now_on(&self, message: Message, route: &mut TopicRoute) -> Result<Option<Message>, BusError> {
        Ok(self
            .publish_batch_now_on(vec![message], route)?
            .and_then(|mut messages| messages.pop()))
    }

    /// Publishes a batch at once if nothing would make it wait, as [`Self::publish_now`]
    /// does a message: `Ok(Some(messages))` hands the whole batch back, untouched, for
    /// [`Self::publish_batch`] (always so for a batch of several topics).
    pub fn publish_batch_now(&self, messages: Vec<Message>) -> Result<Option<Vec<Message>>, BusError> {
        self.publish_batch_now_on(messages, &mut TopicRoute::default())
    }

    /// [`Self::publish_batch_now`] through `route` (see [`Self::publish_now_on`]).
    pub fn publish_batch_now_on(
        &self,
        messages: Vec<Message>,
        route: &mut TopicRoute,
    ) -> Result<Option<Vec<Message>>, BusError> {
        let now = if !self.is_open() {
            Err(BusError::Closed)
        } else {
            match &self.shared.access {
                Some(access) if access.quota().is_some() => return Ok(Some(messages)),
                Some(access) => access.check_publish(&messages),
                None => Ok(()),
            }
            .and_then(|()| self.router.route_now(&self.shared, messages, route))
        };
        if let Err(e) = &now {
            self.note_refusal(e);
        }
        now
    }

    /// Publishes a batch, waiting while a topic's mailbox is full. Order is kept per topic.
    pub async fn publish_batch(&self, messages: Vec<Message>) -> Result<(), BusError> {
        self.route(messages, Admit::Wait, None).await
    }

    /// Publishes a batch like [`Self::publish_batch`], with a durable acknowledgement:
    /// [`DurableAck::wait`] returns once every durable sink (a sink with a disk buffer)
    /// whose filter matches a message has that message in its buffer, so it survives a
    /// crash of the sink and of the bus.
    ///
    /// This returns as soon as the batch is admitted (order is kept per topic, as for
    /// any publish), so a publisher can pipeline batches and wait for their acks later.
    pub async fn publish_durable(&self, messages: Vec<Message>) -> Result<DurableAck, BusError> {
        let (receipt, token) = Receipt::new();
        let routed = self.route(messages, Admit::Wait, Some(&token)).await;
        if routed.is_ok() {
            token.confirm(1);
        }
        // The receipt completes only when the last token is gone, this one included.
        drop(token);
        routed.map(|()| DurableAck(receipt))
    }

    /// Publishes a message if its topic's mailbox has room now; otherwise fails with
    /// [`BusError::Full`] holding the message.
    pub async fn try_publish(&self, message: Message) -> Result<(), BusError> {
        self.try_publish_batch(vec![message]).await
    }

    /// Publishes a batch as far as topic mailboxes have room now; [`BusError::Full`]
    /// hands back the messages not admitted.
    ///
    /// It never waits for mailbox room; it may wait for a topic's first start.
    pub async fn try_publish_batch(&self, messages: Vec<Message>) -> Result<(), BusError> {
        self.route(messages, Admit::Try, None).await
    }

    /// Opens a subscription.
    ///
    /// When this returns the subscription is in the index and in every live matching
    /// topic: anything published afterwards, from any session, is delivered to it.
    pub async fn subscribe(&self, filter: &str, options: SubscriptionOptions) -> Result<Subscription, BusError> {
        let subscribed = match TopicFilter::new(filter) {
            Ok(filter) => self.subscribe_as(filter, options, false).await,
            Err(e) => Err(e.into()),
        };
        if let Err(e) = &subscribed {
            self.note_refusal(e);
        }
        subscribed
    }

    /// Opens a subscription; a `durable` one (a durable sink's) takes part in durable
    /// receipts.
    pub(crate) async fn subscribe_as(
        &self,
        filter: TopicFilter,
        options: SubscriptionOptions,
        durable: bool,
    ) -> Result<Subscription, BusError> {
        if !self.is_open() {
            return Err(BusError::Closed);
        }
        if !self.shared.internal && self.router.is_draining() {
            return Err(BusError::Draining);
        }
        let mut slot = None;
        if let Some(access) = &self.shared.access {
            access.check_subscribe(&filter, options.queue_group.as_deref())?;
            if let Some(quota) = access.quota() {
                slot = Some(quota.subscribe(access.identity())?);
            }
        }
        let sub = answered(
            self.actor
                .call(
                    |reply| SessionMessage::Subscribe {
                        filter,
                        options,
                        durable,
                        reply,
                    },
                    None,
                )
                .await,
        )??;
        let mut subscription = Subscription::new(&sub, self.actor.clone());
        subscription.quota_slot = slot;
        Ok(subscription)
    }

    /// Closes the session gracefully: refuses new publishes, waits (up to the shutdown
    /// drain timeout) until everything it published is in subscriber buffers, then ends
    /// its subscriptions (their buffered deliveries stay readable) and stops the actor.
    pub async fn close(&self) -> Result<(), BusError> {
        self.close_with(CloseReason::SessionClosed).await
    }

    /// Closes the session as [`Self::close`] does, for `reason`: its subscriptions end
    /// with it, and a [`CloseReason::SlowConsumer`] close (a client that stopped reading)
    /// is counted in the session manager's snapshot.
    pub async fn close_with(&self, reason: CloseReason) -> Result<(), BusError> {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if reason == CloseReason::SlowConsumer {
            self.shared.slow_consumer.store(true, Ordering::Release);
        }
        if !self.shared.inflight.wait_idle(self.router.drain_timeout).await {
            tracing::warn!(
                session = self.shared.id.0,
                "session close timed out waiting for its publishes"
            );
        }
        let _ = self
            .actor
            .call(|reply| SessionMessage::Close { reason, reply }, None)
            .await;
        Ok(())
    }

    /// A snapshot of this session.
    pub async fn snapshot(&self) -> Result<SessionSnapshot, BusError> {
        answered(self.actor.call(SessionMessage::Observe, Some(OBSERVE_TIMEOUT)).await)
    }

    /// Makes the session actor panic, to exercise supervision.
    #[cfg(feature = "testsuite")]
    pub fn inject_panic(&self) {
        let _ = self.actor.cast(SessionMessage::Crash);
    }
}
