//! The embeddable API: [`Bus`], [`SessionHandle`] and [`BusSnapshot`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), streambus_core::BusError> {
//! use futures::StreamExt;
//! use streambus_core::{Bus, BusConfig, Event, SubscriptionOptions};
//!
//! let bus = Bus::start(BusConfig::default()).await?;
//! let mut sub = bus.subscribe("sensors.*.temperature", SubscriptionOptions::default()).await?;
//! bus.publish("sensors.dev1.temperature", "21.5").await?;
//! if let Some(Event::Delivery(d)) = sub.next().await {
//!     assert_eq!(&d.payload[..], b"21.5");
//! }
//! bus.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! A [`Bus`] is a cheap, clonable handle on the running actor tree. Programs that want
//! their own identity, limits and graceful close per client open a session with
//! [`Bus::connect`]; `Bus::publish` and `Bus::subscribe` use a shared default session.
//!
//! # Shutdown
//!
//! [`Bus::shutdown`] is the one shutdown path: it refuses new work, waits (up to
//! `shutdown.drain_timeout_ms`) for every admitted message to reach subscriber buffers,
//! closes every subscription (what is buffered stays readable, then the stream ends with
//! `Closed(Shutdown)`), and stops the actors.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use ractor::{Actor, ActorRef, ActorStatus};
use serde::Serialize;
use streambus_types::{BusConfig, CloseReason, Message, SubscriptionOptions, Topic, TopicFilter};

use crate::actors::session::{SessionId, SessionMessage, SessionShared, SessionSnapshot};
use crate::actors::session_manager::{
    OpenedSession, SessionManager, SessionManagerArgs, SessionManagerMessage, SessionManagerSnapshot,
};
use crate::actors::topic::{TopicMessage, TopicSnapshot};
use crate::actors::topic_supervisor::{
    TopicSupervisor, TopicSupervisorArgs, TopicSupervisorMessage, TopicSupervisorSnapshot,
};
use crate::admission::Inflight;
use crate::directory::{Admit, Directory};
use crate::error::{BusError, answered};
use crate::subscription::Subscription;

/// How long one actor gets to answer an `Observe` for a snapshot.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Options of a new session.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The client's name, shown in snapshots and logs.
    pub name: String,
}

impl ConnectOptions {
    /// A session called `name`.
    pub fn named(name: impl Into<String>) -> Self {
        ConnectOptions { name: name.into() }
    }
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions::named("anonymous")
    }
}

/// The whole bus, as seen through every actor's `Observe`.
#[derive(Debug, Clone, Serialize)]
pub struct BusSnapshot {
    /// Session manager counters.
    pub session_manager: SessionManagerSnapshot,
    /// Topic supervisor counters.
    pub topic_supervisor: TopicSupervisorSnapshot,
    /// Every live session, by id.
    pub sessions: Vec<SessionSnapshot>,
    /// Every live topic, by name.
    pub topics: Vec<TopicSnapshot>,
    /// Publish batches admitted and not yet fanned out, bus-wide.
    pub inflight_batches: usize,
}

impl BusSnapshot {
    /// The topic called `name`, if it is alive.
    pub fn topic(&self, name: &str) -> Option<&TopicSnapshot> {
        self.topics.iter().find(|t| t.topic.as_str() == name)
    }
}

struct BusInner {
    config: BusConfig,
    directory: Arc<Directory>,
    /// Opens sessions and cleans up after them. Called, never blocked on for long.
    sessions: ActorRef<SessionManagerMessage>,
    /// Owns topics and the subscription index.
    topics: ActorRef<TopicSupervisorMessage>,
    /// Publish batches in flight bus-wide; shutdown waits for it to reach zero.
    inflight: Arc<Inflight>,
    closing: AtomicBool,
    /// The session behind `Bus::publish` and `Bus::subscribe`: opened on first use, and
    /// opened again if it ever failed, so the shorthands never stay broken.
    default_session: tokio::sync::Mutex<Option<OpenedSession>>,
}

/// A running bus. Clones share it.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<BusInner>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("closing", &self.inner.closing.load(Ordering::Relaxed))
            .finish()
    }
}

impl Bus {
    /// Validates `config` and starts the actor tree.
    pub async fn start(config: BusConfig) -> Result<Bus, BusError> {
        config.validate()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let args = TopicSupervisorArgs {
            topics: config.topics.clone(),
            limits: config.limits.clone(),
            directory: tx,
        };
        let (topics, _) = Actor::spawn(None, TopicSupervisor, args)
            .await
            .map_err(|e| BusError::Internal(format!("starting the topic supervisor: {e}")))?;
        let directory = rx
            .await
            .map_err(|_| BusError::Internal("topic supervisor gave no directory".into()))?;
        let args = SessionManagerArgs {
            topics: topics.clone(),
            limits: config.limits.clone(),
            defaults: config.subscriptions.clone(),
        };
        let (sessions, _) = Actor::spawn(None, SessionManager, args)
            .await
            .map_err(|e| BusError::Internal(format!("starting the session manager: {e}")))?;
        tracing::info!("bus started");
        Ok(Bus {
            inner: Arc::new(BusInner {
                config,
                directory,
                sessions,
                topics,
                inflight: Inflight::new(),
                closing: AtomicBool::new(false),
                default_session: tokio::sync::Mutex::new(None),
            }),
        })
    }

    /// The configuration the bus runs with.
    pub fn config(&self) -> &BusConfig {
        &self.inner.config
    }

    async fn open(&self, name: String) -> Result<OpenedSession, BusError> {
        if self.inner.closing.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        answered(
            self.inner
                .sessions
                .call(|reply| SessionManagerMessage::Open { name, reply }, None)
                .await,
        )?
    }

    /// Opens a session.
    pub async fn connect(&self, options: ConnectOptions) -> Result<SessionHandle, BusError> {
        let (actor, shared) = self.open(options.name).await?;
        Ok(SessionHandle {
            bus: self.inner.clone(),
            actor,
            shared,
        })
    }

    /// The session behind [`Bus::publish`] and [`Bus::subscribe`].
    pub async fn default_session(&self) -> Result<SessionHandle, BusError> {
        let mut slot = self.inner.default_session.lock().await;
        if let Some((actor, shared)) = slot.as_ref() {
            let handle = SessionHandle {
                bus: self.inner.clone(),
                actor: actor.clone(),
                shared: shared.clone(),
            };
            if handle.is_open() {
                return Ok(handle);
            }
        }
        let (actor, shared) = self.open("default".into()).await?;
        *slot = Some((actor.clone(), shared.clone()));
        Ok(SessionHandle {
            bus: self.inner.clone(),
            actor,
            shared,
        })
    }

    /// Publishes `payload` to `topic` through the default session.
    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>) -> Result<(), BusError> {
        self.default_session().await?.publish(topic, payload).await
    }

    /// Publishes a message through the default session.
    pub async fn publish_message(&self, message: Message) -> Result<(), BusError> {
        self.default_session().await?.publish_message(message).await
    }

    /// Subscribes through the default session.
    pub async fn subscribe(&self, filter: &str, options: SubscriptionOptions) -> Result<Subscription, BusError> {
        self.default_session().await?.subscribe(filter, options).await
    }

    /// A snapshot of every actor's state.
    pub async fn snapshot(&self) -> Result<BusSnapshot, BusError> {
        let (session_actors, session_manager) = answered(
            self.inner
                .sessions
                .call(SessionManagerMessage::Observe, Some(OBSERVE_TIMEOUT))
                .await,
        )?;
        let (topic_actors, topic_supervisor) = answered(
            self.inner
                .topics
                .call(TopicSupervisorMessage::Observe, Some(OBSERVE_TIMEOUT))
                .await,
        )?;
        let sessions = join_all(
            session_actors
                .iter()
                .map(|a| a.call(SessionMessage::Observe, Some(OBSERVE_TIMEOUT))),
        );
        let topics = join_all(
            topic_actors
                .iter()
                .map(|a| a.call(TopicMessage::Observe, Some(OBSERVE_TIMEOUT))),
        );
        let (sessions, topics) = futures::join!(sessions, topics);
        // An actor that stopped between the two steps simply is not in the snapshot.
        let mut sessions: Vec<SessionSnapshot> = sessions.into_iter().filter_map(|r| answered(r).ok()).collect();
        let mut topics: Vec<TopicSnapshot> = topics.into_iter().filter_map(|r| answered(r).ok()).collect();
        sessions.sort_by_key(|s| s.id);
        topics.sort_by(|a, b| a.topic.cmp(&b.topic));
        Ok(BusSnapshot {
            session_manager,
            topic_supervisor,
            sessions,
            topics,
            inflight_batches: self.inner.inflight.count(),
        })
    }

    /// Drains and stops the bus. Idempotent.
    pub async fn shutdown(&self) {
        if self.inner.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        let timeout = Duration::from_millis(self.inner.config.shutdown.drain_timeout_ms);
        if !self.inner.inflight.wait_idle(timeout).await {
            tracing::error!(
                inflight_batches = self.inner.inflight.count(),
                "shutdown drain timed out (a block subscriber is not reading); the rest is dropped and counted"
            );
        }
        let reason = CloseReason::Shutdown;
        let _ = self
            .inner
            .sessions
            .call(|reply| SessionManagerMessage::CloseAll { reason, reply }, None)
            .await;
        let _ = self
            .inner
            .topics
            .call(|reply| TopicSupervisorMessage::CloseAll { reason, reply }, None)
            .await;
        let _ = self
            .inner
            .sessions
            .stop_and_wait(Some("shutdown".into()), Some(timeout))
            .await;
        let _ = self
            .inner
            .topics
            .stop_and_wait(Some("shutdown".into()), Some(timeout))
            .await;
        tracing::info!("bus stopped");
    }

    /// Makes the actor of `topic` panic, to exercise supervision.
    #[cfg(feature = "testsuite")]
    pub fn inject_topic_panic(&self, topic: &str) -> Result<(), BusError> {
        let topic = Topic::new(topic)?;
        let r = self
            .inner
            .directory
            .topics
            .get(&topic)
            .map(|r| r.actor.clone())
            .ok_or(BusError::Closed)?;
        r.cast(TopicMessage::Crash).map_err(|_| BusError::Closed)
    }
}

/// A session: a client of the bus with its own subscriptions, limits and close.
///
/// Clones share the session. Publishing goes straight to the topic actors; subscribing
/// goes through the session actor.
#[derive(Clone)]
pub struct SessionHandle {
    bus: Arc<BusInner>,
    /// The session actor; subscription requests are calls to it.
    actor: ActorRef<SessionMessage>,
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
    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.shared.id
    }

    /// Whether the session can still be used.
    pub fn is_open(&self) -> bool {
        !self.shared.closed.load(Ordering::Acquire)
            && !self.bus.closing.load(Ordering::Acquire)
            && matches!(self.actor.get_status(), ActorStatus::Starting | ActorStatus::Running)
    }

    fn check(&self, messages: &[Message]) -> Result<(), BusError> {
        if !self.is_open() {
            return Err(BusError::Closed);
        }
        let limits = &self.bus.config.limits;
        if messages.len() > limits.max_batch_messages {
            return Err(BusError::BatchTooLarge {
                len: messages.len(),
                max: limits.max_batch_messages,
            });
        }
        if let Some(m) = messages.iter().find(|m| m.byte_len() > limits.max_message_bytes) {
            return Err(BusError::MessageTooLarge {
                size: m.byte_len(),
                max: limits.max_message_bytes,
            });
        }
        Ok(())
    }

    async fn route(&self, messages: Vec<Message>, admit: Admit) -> Result<(), BusError> {
        self.check(&messages)?;
        let guards = || [self.shared.inflight.guard(), self.bus.inflight.guard()];
        // Group by topic, keeping each topic's order; most batches have one topic.
        let mut groups: Vec<(Topic, Vec<Message>)> = Vec::new();
        for m in messages {
            match groups.iter_mut().find(|(t, _)| *t == m.topic) {
                Some((_, g)) => g.push(m),
                None => groups.push((m.topic.clone(), vec![m])),
            }
        }
        let mut groups = groups.into_iter();
        while let Some((topic, group)) = groups.next() {
            let (count, bytes) = (group.len(), group.iter().map(Message::byte_len).sum::<usize>());
            match self.bus.directory.send(&topic, group, admit, guards).await {
                Ok(()) => {
                    self.shared
                        .published_messages
                        .fetch_add(count as u64, Ordering::Relaxed);
                    self.shared.published_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                }
                Err(BusError::Full(mut rest)) => {
                    let admitted = count - rest.len();
                    self.shared
                        .published_messages
                        .fetch_add(admitted as u64, Ordering::Relaxed);
                    rest.extend(groups.flat_map(|(_, g)| g));
                    return Err(BusError::Full(rest));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Publishes `payload` to `topic`, waiting while the topic's mailbox is full.
    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>) -> Result<(), BusError> {
        self.publish_message(Message::new(Topic::new(topic)?, payload)).await
    }

    /// Publishes a message, waiting while the topic's mailbox is full.
    pub async fn publish_message(&self, message: Message) -> Result<(), BusError> {
        self.route(vec![message], Admit::Wait).await
    }

    /// Publishes a batch, waiting while a topic's mailbox is full. Order is kept per topic.
    pub async fn publish_batch(&self, messages: Vec<Message>) -> Result<(), BusError> {
        self.route(messages, Admit::Wait).await
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
        self.route(messages, Admit::Try).await
    }

    /// Opens a subscription.
    pub async fn subscribe(&self, filter: &str, options: SubscriptionOptions) -> Result<Subscription, BusError> {
        let filter = TopicFilter::new(filter)?;
        if !self.is_open() {
            return Err(BusError::Closed);
        }
        let sub = answered(
            self.actor
                .call(|reply| SessionMessage::Subscribe { filter, options, reply }, None)
                .await,
        )??;
        Ok(Subscription::new(&sub, self.actor.clone()))
    }

    /// Closes the session gracefully: refuses new publishes, waits (up to the shutdown
    /// drain timeout) until everything it published is in subscriber buffers, then ends
    /// its subscriptions (their buffered deliveries stay readable) and stops the actor.
    pub async fn close(&self) -> Result<(), BusError> {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let timeout = Duration::from_millis(self.bus.config.shutdown.drain_timeout_ms);
        if !self.shared.inflight.wait_idle(timeout).await {
            tracing::warn!(
                session = self.shared.id.0,
                "session close timed out waiting for its publishes"
            );
        }
        let reason = CloseReason::SessionClosed;
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
